"""The port buckets' bounds, counted per distinct low (fwc.backend.arrange), equal the plain
rules: `quantile_cuts` (the former rule) the sorted lows of every place cut at i * n /
buckets, and `PORT_CUT_RULE` (`halving_cuts`, the rule split_ports cuts with since issue 12's
twenty-sixth session) the port space halved while a half holds more lows than the power
of two nearest n / buckets, and two distinct ones."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from fwc.backend.arrange import PORT_CUT_RULE, PORT_MAX, low_counts, quantile_cuts
from fwc.model import PortRange


def _plain(ports_of: list[tuple[PortRange, ...]], buckets: int) -> list[int]:
    lows = sorted([p[0] for dports in ports_of for p in dports])
    return sorted({lows[(i * len(lows)) // buckets] for i in range(1, buckets)} - {0})


def _plain_halving(ports_of: list[tuple[PortRange, ...]], buckets: int) -> list[int]:
    lows = sorted([p[0] for dports in ports_of for p in dports])
    most = 2 ** round(math.log2(max(1, len(lows) / buckets)))

    def cuts(low: int, high: int) -> list[int]:
        inside = [x for x in lows if low <= x <= high]
        if len(inside) <= most or len(set(inside)) < 2:
            return []
        middle = (low + high + 1) // 2
        return [middle, *cuts(low, middle - 1), *cuts(middle, high)]

    return sorted(cuts(0, PORT_MAX))


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
    assert quantile_cuts(low_counts(ports_of), buckets) == _plain(ports_of, buckets)
    assert PORT_CUT_RULE(low_counts(ports_of), buckets) == _plain_halving(ports_of, buckets)


def test_port_cuts_of_copies():
    web, dns = (PortRange(80, 80), PortRange(443, 443)), (PortRange(53, 53),)
    ports_of = [web] * 10 + [(), dns] * 5
    assert quantile_cuts(low_counts(ports_of), 3) == _plain(ports_of, 3) == [80, 443]
    # 25 lows, most 8: halved until 53 | 80 | 443 are apart (each one port: not halved
    # on); the halves without lows stay buckets of their own (a rule arriving there
    # changes no cut)
    assert PORT_CUT_RULE(low_counts(ports_of), 3) == _plain_halving(ports_of, 3) == [
        64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768]
