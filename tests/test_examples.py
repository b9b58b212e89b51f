"""Every example policy in policies/ checks clean (even --strict) and compiles."""

from __future__ import annotations

import pytest
from checkkit import EXAMPLES
from conftest import REPO, run_fwc

from fwc.pipeline import analyse


def test_the_examples_are_there():
    assert {p.name for p in EXAMPLES} >= {"edge.fw", "dmz.fw", "branch.fw"}


@pytest.mark.parametrize("policy", EXAMPLES, ids=lambda p: p.name)
def test_example_checks_clean_and_compiles(examples, policy):
    example = examples[policy.name]
    analysis = example.analysis
    assert analysis.policy is not None
    assert [f"{d.code} {d.span}: {d.message}" for d in analysis.diagnostics] == []
    for cluster in analysis.policy.clusters:
        assert len(cluster.members) >= 2 and cluster.expectations
    check = run_fwc("check", "--strict", str(policy), cwd=REPO)
    assert check.returncode == 0, check.stderr
    # the session's compile (tests/conftest.py), byte for byte output/ (test_compile_golden)
    for cluster in analysis.policy.clusters:
        for member in cluster.members:
            assert (example.out / cluster.name / member.name / "keepalived.conf").is_file()


def test_dmz_has_three_vip_segments_ipv6_nat_and_member_rules():
    policy = analyse(REPO / "policies" / "dmz.fw").policy
    assert policy is not None
    cluster = policy.cluster("dmz")
    assert cluster is not None
    assert [i.name for i in cluster.vrrp_interfaces] == ["lan", "dmz", "uplink"]
    assert 6 in cluster.vips.families
    assert {r.action for r in cluster.nat} == {"nonat", "snat", "dnat"}
    assert {r.only for r in cluster.rules if r.only} == {"fw-a", "fw-b"}
    assert all(r.destination.firewall or r.source.firewall for r in cluster.rules if r.only)


def test_branch_takes_shared_objects_from_lib():
    analysis = analyse(REPO / "policies" / "branch.fw")
    files = [f.path for f in analysis.program.files]
    assert [f.rsplit("/", 2)[-2:] for f in files] == [
        ["policies", "branch.fw"], ["lib", "hq.fw"], ["lib", "services.fw"]]
    assert analysis.policy is not None
    hq_web = analysis.policy.objects["hq-web"]
    assert hq_web.span.file.endswith("lib/hq.fw")
    # lib/ holds includes only: no cluster, so no policy of its own
    assert not (REPO / "policies" / "hq.fw").exists()
    for lib in (REPO / "policies" / "lib").glob("*.fw"):
        lines = lib.read_text(encoding="utf-8").splitlines()
        assert not [line for line in lines if line.startswith("cluster ")]
