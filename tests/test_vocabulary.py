"""The typed vocabulary (fwc.model.vocabulary): one statement of each word's meaning."""

from __future__ import annotations

import json

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
