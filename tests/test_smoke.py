"""The reference policy parses, resolves and checks clean."""

from fwc.pipeline import analyse


def test_reference_policy_checks_clean(policies):
    analysis = analyse(policies / "edge.fw")
    assert analysis.policy is not None
    assert [d.message for d in analysis.diagnostics] == []
    cluster = analysis.policy.cluster("edge")
    assert cluster is not None
    assert [m.name for m in cluster.members] == ["fw1", "fw2"]
    assert len(cluster.rules) == 6 and len(cluster.nat) == 2 and len(cluster.expectations) == 4
