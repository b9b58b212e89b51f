"""The typed vocabulary (fwc.model.vocabulary) and the one interval set (fwc.model.intervals)."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from fwc.model.addresses import AddressSet
from fwc.model.intervals import IntervalSet
from fwc.model.vocabulary import (
    BuiltinChain,
    Family,
    FilterAction,
    NatAction,
    NatStage,
    Verdict,
)

PRE, POST = NatStage.PREROUTING, NatStage.POSTROUTING


def test_the_nat_stage_of_every_action():
    assert NatAction.DNAT.stages() == (PRE,)
    assert NatAction.DNAT.stages("uplink", None) == (PRE,)
    assert NatAction.SNAT.stages(None, "uplink") == (POST,)
    assert NatAction.MASQUERADE.stages(None, "uplink") == (POST,)
    assert NatAction.NONAT.stages() == (PRE, POST)
    assert NatAction.NONAT.stages("lan", None) == (PRE,)
    assert NatAction.NONAT.stages(None, "uplink") == (POST,)
    assert NatAction.NONAT.stages("lan", "uplink") == (PRE, POST)
    # a stage sees the interface its hook knows, and is named like its nat chain
    assert (PRE.sees_in, PRE.sees_out, POST.sees_in, POST.sees_out) == (True, False, False, True)
    assert PRE.chain is BuiltinChain.PREROUTING and POST.chain is BuiltinChain.POSTROUTING


def test_members_write_exactly_the_text_they_replace():
    # Output and diagnostics stay byte-identical only because of this.
    for member, text in ((FilterAction.ACCEPT, "accept"), (NatAction.MASQUERADE, "masquerade"),
                         (Verdict.DENY, "deny"), (BuiltinChain.FORWARD, "FORWARD")):
        assert member == text and str(member) == text and f"{member}" == text
        assert hash(member) == hash(text) and json.dumps(member) == json.dumps(text)
    assert Family.V6 == 6 and f"{Family.V6}" == "6" and json.dumps(Family.V4) == "4"
    assert (Family.V4.bits, Family.V6.bits) == (32, 128)
    assert NatAction.SNAT.has_target and NatAction.DNAT.has_target
    assert not NatAction.NONAT.has_target and not NatAction.MASQUERADE.has_target


@given(a=st.lists(st.tuples(st.integers(0, 300), st.integers(0, 20)), max_size=6),
       b=st.lists(st.tuples(st.integers(0, 300), st.integers(0, 20)), max_size=6),
       probe=st.integers(-1, 330))
def test_interval_set_agrees_with_python_sets(a, b, probe):
    """The one interval-set implementation (addresses, ports, the engine's axes)."""
    def values(pairs):
        return {v for lo, width in pairs for v in range(lo, lo + width + 1)}

    left = IntervalSet.of((lo, lo + width) for lo, width in a)
    right = IntervalSet.of((lo, lo + width) for lo, width in b)
    for got, want in ((left | right, values(a) | values(b)), (left & right, values(a) & values(b)),
                      (left - right, values(a) - values(b))):
        assert {v for lo, hi in got.spans for v in range(lo, hi + 1)} == want
        assert got.count() == len(want) and (probe in got) == (probe in want)
        pairs = zip(got.spans, got.spans[1:], strict=False)
        assert all(hi + 1 < lo2 for (_, hi), (lo2, _) in pairs)  # disjoint, not adjacent
    assert left.covers(right) == (values(b) <= values(a))
    assert left.overlaps(right) == bool(values(a) & values(b))
    # the address sets are the same intervals, per family
    assert AddressSet(left.spans).covers(AddressSet(right.spans)) == left.covers(right)
