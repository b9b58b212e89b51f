"""`fwc.backend.arrange._port_cuts` (the port buckets' bounds, counted per distinct low)
equals the plain rule it replaced: the sorted lows of every place, cut at i * n / buckets."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from fwc.backend.arrange import _port_cuts
from fwc.model import PortRange


def _plain(ports_of: list[tuple[PortRange, ...]], buckets: int) -> list[int]:
    lows = sorted([p[0] for dports in ports_of for p in dports])
    return sorted({lows[(i * len(lows)) // buckets] for i in range(1, buckets)} - {0})


_RANGE = st.tuples(st.integers(0, 70), st.integers(0, 5)).map(
    lambda t: PortRange(t[0], t[0] + t[1]))
# a chain's port lists: a few distinct lists, copied (places share the same list), or none
_LISTS = st.lists(st.lists(_RANGE, max_size=4).map(tuple), min_size=1, max_size=6)


@settings(max_examples=400, deadline=None)
@given(_LISTS, st.lists(st.integers(0, 5), min_size=1, max_size=60), st.integers(2, 12))
def test_port_cuts_equal_the_sorted_lows_cut(lists, picks, buckets):
    ports_of = [lists[i % len(lists)] for i in picks]
    if not any(ports_of):
        ports_of.append((PortRange(80, 80),))  # split_ports asks only with ports present
    assert _port_cuts(ports_of, buckets) == _plain(ports_of, buckets)


def test_port_cuts_of_copies():
    web, dns = (PortRange(80, 80), PortRange(443, 443)), (PortRange(53, 53),)
    ports_of = [web] * 10 + [(), dns] * 5
    assert _port_cuts(ports_of, 3) == _plain(ports_of, 3) == [80, 443]
