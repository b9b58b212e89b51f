"""Who handles traffic in a cluster (issue 14): `fwc.analysis.handling`, and the
expectation form `... via MEMBER` (FWC286, FWC287) on policies/loadshare.fw, where
vrrp-group blue (lan, uplink) is mastered by fw1 and red (dmz, uplink2) by fw2.
`fwc query`'s handling lines are tests/test_query.py's."""

from __future__ import annotations

from pathlib import Path

from checkkit import assert_diagnostic, run, with_code

from fwc.analysis.handling import (
    Handling,
    handling,
    interface_handling,
    vips_held_elsewhere,
)
from fwc.analysis.space import LOCAL
from fwc.diagnostics import Severity
from fwc.frontend.formatting import format_text
from fwc.model import Cluster
from fwc.model.addresses import AddressSet
from fwc.pipeline import analyse

REPO = Path(__file__).resolve().parent.parent
LOADSHARE = (REPO / "policies" / "loadshare.fw").read_text(encoding="utf-8")
CLIENT = "    allow client  -> server  service echo  in lan  via fw1\n"
E = Severity.ERROR


def variant(old: str, new: str) -> str:
    assert LOADSHARE.count(old) == 1, old
    return LOADSHARE.replace(old, new)


def line_of(text: str, needle: str) -> int:
    return next(n for n, line in enumerate(text.splitlines(), 1) if needle in line)


def test_each_interface_is_handled_by_its_groups_master() -> None:
    analysis = analyse(REPO / "policies" / "loadshare.fw")
    assert analysis.policy is not None and not analysis.diagnostics, analysis.diagnostics
    (cluster,) = analysis.policy.clusters
    assert interface_handling(cluster, "lan") == Handling("lan", "blue", ("fw1", "fw2"))
    red = interface_handling(cluster, "uplink2")
    assert (red.normal, red.after_failover, red.why()) == ("fw2", "fw1",
                                                          "master of vrrp-group red")
    assert interface_handling(cluster, "sync") == Handling("sync", None, ())
    assert [h.interface for h in handling(cluster, {LOCAL, "dmz", "lan"})] == [
        "lan", "dmz", LOCAL]
    assert handling(cluster, {LOCAL})[0].why() == "each member for itself"


def test_vips_held_elsewhere() -> None:
    analysis = analyse(REPO / "policies" / "loadshare.fw")
    assert analysis.policy is not None
    (cluster,) = analysis.policy.clusters
    every = AddressSet.of("0.0.0.0/0").family(4)
    assert [h.interface for h in vips_held_elsewhere(cluster, "fw1", 4, every)] == [
        "dmz", "uplink2"]
    assert [h.interface for h in vips_held_elsewhere(cluster, "fw2", 4, every)] == [
        "lan", "uplink"]
    lan_vip = AddressSet.of("192.0.2.254").family(4)
    assert vips_held_elsewhere(cluster, "fw1", 4, lan_vip) == []
    assert vips_held_elsewhere(cluster, "fw1", 6, AddressSet.of("::/0").family(6)) == []


def test_single_master_cluster_is_handled_by_its_highest_priority() -> None:
    analysis = analyse(REPO / "policies" / "edge.fw")
    assert analysis.policy is not None
    (cluster,) = analysis.policy.clusters
    lan = interface_handling(cluster, "lan")
    assert (lan.group, lan.order, lan.why()) == (None, ("fw1", "fw2"), "the VRRP master")


def test_via_the_groups_master_is_silent() -> None:
    assert "via fw1" in LOADSHARE and "via fw2" in LOADSHARE
    analysis = analyse(REPO / "policies" / "loadshare.fw")
    assert not with_code(analysis, "FWC286") and not with_code(analysis, "FWC287")
    (cluster,) = analysis.policy.clusters  # type: ignore[union-attr]
    assert [e.via for e in cluster.expectations] == ["fw1", "fw2", "fw1", None]


def test_via_the_other_groups_master_fails(tmp_path: Path) -> None:
    text = variant(CLIENT, CLIENT.replace("via fw1", "via fw2"))
    found = assert_diagnostic(run(tmp_path, text), "FWC286", E, line_of(text, "client  -> server"),
                              "via fw2", "arriving on lan is handled by fw1",
                              "master of vrrp-group blue", "only after a failover")
    assert found.span is not None and found.span.column == CLIENT.index("fw1") + 1


def test_via_without_in_takes_the_arrival_from_routing(tmp_path: Path) -> None:
    # server is on uplink's subnet: it arrives there, in blue, which fw2 does not master
    deny = "    deny  server  -> client  service echo  in uplink\n"
    text = variant(deny, "    deny  server  -> client  service echo  via fw2\n")
    assert_diagnostic(run(tmp_path, text), "FWC286", E, line_of(text, "server  -> client"),
                      "arriving on uplink is handled by fw1")
    text = variant(deny, "    deny  server  -> client  service echo  via fw1\n")
    assert not with_code(run(tmp_path, text), "FWC286")


def test_via_where_no_vip_decides(tmp_path: Path) -> None:
    ssh = ("    allow client  -> firewall, !dmz.vip, !uplink2.vip service ssh   in lan  "
           "via fw1\n")
    text = variant(ssh, "    deny  client  -> firewall service ssh   in sync  via fw1\n")
    assert_diagnostic(run(tmp_path, text), "FWC286", E, line_of(text, "in sync"),
                      "no VRRP master handles traffic arriving on sync", "no VIP on sync")
    text = variant(ssh, "    allow firewall -> server  service ssh  via fw1\n")
    assert_diagnostic(run(tmp_path, text), "FWC286", E, line_of(text, "firewall ->"),
                      "traffic from the firewall", "each member for itself")


def test_via_an_unknown_member(tmp_path: Path) -> None:
    text = variant(CLIENT, CLIENT.replace("via fw1", "via fw3"))
    assert_diagnostic(run(tmp_path, text), "FWC287", E, line_of(text, "via fw3"),
                      "no member 'fw3'")
    assert not with_code(run(tmp_path, text), "FWC286")


def test_fmt_keeps_via() -> None:
    assert format_text(LOADSHARE) == LOADSHARE
    messy = LOADSHARE.replace(CLIENT, "  allow client -> server service echo in lan via  fw1\n")
    assert format_text(messy) == LOADSHARE


def test_diff_names_a_group_that_changed_hands(tmp_path: Path) -> None:
    from fwc.diffing.semantic import cluster_settings

    def cluster_of(text: str) -> Cluster:
        analysis = run(tmp_path, text)
        assert analysis.policy is not None
        return analysis.policy.clusters[0]

    old = cluster_of(LOADSHARE)
    red = "vrrp-group red { interface dmz, uplink2  master fw2 }"
    moved = cluster_of(variant(red, red.replace("master fw2", "master fw1")))
    lines = cluster_settings(old, moved)
    assert ("interface dmz: traffic handled by fw2 (master of vrrp-group red) -> "
            "fw1 (master of vrrp-group red)") in lines
    assert not [line for line in lines if line.startswith(("interface lan", "interface sync"))]
    assert cluster_settings(old, cluster_of(LOADSHARE)) == []


# -- expectations in both states: normal operation and after a takeover ---------------
DENY = "    deny  server  -> client  service echo  in uplink\n"


def with_expectation(line: str) -> str:
    return variant(DENY, DENY + line)


def test_expectation_broken_only_after_takeover_is_reported(tmp_path: Path) -> None:
    # While the groups are split, fw1 forwards ssh for red's dmz.vip (dropped) and fw2
    # never meets lan traffic; once either holds every VIP, the ssh rule accepts it.
    line = "    deny  client -> dmz.vip service ssh  in lan\n"
    text = with_expectation(line)
    found = assert_diagnostic(run(tmp_path, text), "FWC602", E, line_of(text, line.strip()),
                              "fails on members fw1 (after takeover), fw2 (after takeover)",
                              "from client to dmz.vip service ssh in lan is accepted by rule")
    assert found.hint is not None and "after takeover" in found.hint
    assert not with_code(run(tmp_path, text), "FWC603")


def test_expectation_failing_in_normal_operation_names_no_state(tmp_path: Path) -> None:
    line = "    allow client -> firewall service ssh  in lan\n"
    text = with_expectation(line)
    found = assert_diagnostic(run(tmp_path, text), "FWC601", E, line_of(text, line.strip()),
                              "fails on member fw1: from client to ")
    assert "after takeover" not in found.message and found.hint is not None
    assert "after takeover" not in found.hint


def test_expectation_holding_in_both_states_is_silent(tmp_path: Path) -> None:
    # fw2 meets ssh to lan.vip only after it takes over blue: proved there, no FWC603
    line = "    allow client -> lan.vip service ssh  in lan  via fw1\n"
    analysis = run(tmp_path, with_expectation(line))
    assert analysis.policy is not None
    assert [d.code for d in analysis.diagnostics] == []


def test_expectation_a_member_never_meets_draws_fwc603(tmp_path: Path) -> None:
    # fw1 holds lan.vip in both states: its own packets to it never leave it; fw2's go
    # to fw1 while the groups are split (traffic, not reported)
    line = "    allow firewall -> lan.vip service ssh\n"
    text = with_expectation(line)
    found = assert_diagnostic(run(tmp_path, text), "FWC603", Severity.WARNING,
                              line_of(text, line.strip()))
    assert found.message == "expectation describes no traffic on fw1"
