"""The ipsets pass reuses the previous member's result for an equal chain (issue 12).

`use_ipsets(..., memo=cluster.memo)` gives a chain whose rules equal the previous
member's same chain (the same objects from the shared lowering, or equal rules from
the same policy rules) the previous result, when no set name it chose depended on
the sets named before it. These tests hold that equal to running the pass on each
member alone, and check that the reuse happens and that a taken name stops it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.generate import build_site, fwc_policy
from fwc.backend.ipsets import IpSet, _Namer, use_ipsets
from fwc.backend.lower import lower, options_for
from fwc.model import Policy
from fwc.model.vocabulary import BuiltinChain
from fwc.model.vocabulary import Table as TableName
from fwc.pipeline import analyse


@pytest.fixture(scope="module")
def groups(tmp_path_factory: pytest.TempPathFactory) -> Policy:
    path: Path = tmp_path_factory.mktemp("ipsets") / "groups.fw"
    path.write_text(fwc_policy(build_site(400, shape="groups")), encoding="utf-8")
    policy = analyse(path).policy
    assert policy is not None
    return policy


def test_reused_chains_equal_the_pass_on_each_member_alone(groups):
    cluster = groups.clusters[0]
    options = options_for(groups)
    forward = []
    for member in cluster.members:
        for family in sorted(cluster.families):
            ruleset = lower(cluster, member, family, options)
            shared, shared_sets = use_ipsets(ruleset, memo=cluster.memo)
            alone, alone_sets = use_ipsets(ruleset)
            assert shared == alone, (member.name, family)
            assert shared_sets == alone_sets
            if family == 4:
                chain = shared.chain(TableName.FILTER, BuiltinChain.FORWARD)
                assert chain is not None
                forward.append(chain.rules)
    first, second = forward
    assert any(rule.match.source.set_name or rule.match.destination.set_name
               for rule in first)  # the shape uses sets in FORWARD
    # the second member got the first member's rewritten rules: the same objects
    assert len(first) == len(second) and all(a is b for a, b in zip(first, second, strict=True))


def test_a_name_taken_by_other_addresses_is_not_reused():
    namer = _Namer(4, threshold=2)
    mine = IpSet("fwc4-partners", 4, ("192.0.2.0/25", "192.0.2.128/26"))
    assert namer.fits([mine])
    namer.sets["fwc4-partners"] = IpSet("fwc4-partners", 4, ("198.51.100.0/24",))
    assert not namer.fits([mine])  # naming again would choose the content's name
    namer.sets["fwc4-partners"] = mine
    assert namer.fits([mine])


def test_two_lists_whose_content_names_collide_stay_two_sets(monkeypatch):
    # the content name is a 48-bit hash: two address lists made to collide shared one
    # set, so the second rule matched the first list's addresses
    monkeypatch.setattr("fwc.backend.ipsets._hash", lambda text, length=10: "c" * length)
    namer = _Namer(4, threshold=2)
    first = ("192.0.2.1/32", "192.0.2.3/32", "192.0.2.5/32")
    second = ("198.51.100.1/32", "198.51.100.3/32", "198.51.100.5/32")
    a = namer.name_for(first, ())
    b = namer.name_for(second, ())
    assert a != b
    assert (namer.sets[a].cidrs, namer.sets[b].cidrs) == (first, second)
    assert namer.name_for(second, ()) == b and namer.collided  # the same list: its set
