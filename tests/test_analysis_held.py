"""The per-member answers count only the VIPs a member holds in normal operation
(issue 14): in policies/loadshare.fw fw1 holds blue's VIPs (lan, uplink), fw2 red's
(dmz, uplink2); a packet for the other group's VIP is routed (FORWARD) or never met.
A single-master cluster (policies/edge.fw) keeps its answers: the master holds every
VIP, and the backup is answered as after it takes over. The compiled rules' view of
the same packets is tests/test_analysis_vs_compile.py's."""

from __future__ import annotations

from pathlib import Path

from checkkit import run
from conftest import EDGE, REPO

from fwc.analysis.diff import traffic_changes
from fwc.analysis.engine import MemberView, Piece, TrafficClass, classify
from fwc.analysis.handling import vips_elsewhere
from fwc.model import Cluster, PortRange, ServiceMatch
from fwc.model.addresses import AddressSet
from fwc.model.vocabulary import FilterAction
from fwc.pipeline import analyse

LOADSHARE = (REPO / "policies" / "loadshare.fw").read_text(encoding="utf-8")
SSH = "    accept from client to firewall service ssh        in lan\n"


def cluster_of(tmp_path: Path, text: str, *, ok: bool = True) -> Cluster:
    analysis = run(tmp_path, text)
    assert analysis.policy is not None and (analysis.ok or not ok), analysis.diagnostics
    return analysis.policy.clusters[0]


def loadshare() -> Cluster:
    analysis = analyse(REPO / "policies" / "loadshare.fw")
    assert analysis.policy is not None and analysis.ok, analysis.diagnostics
    return analysis.policy.clusters[0]


def ask(cluster: Cluster, member: str, dst: str, service: str, in_iface: str | None,
        *, takeover: bool = False) -> list[tuple[str, FilterAction, int | None]]:
    """(chain, verdict, deciding line) per piece of client -> DST on MEMBER."""
    port = {"ssh": 22, "web": 80}[service]
    match = ServiceMatch("tcp", 6, (PortRange(port, port),))
    view = MemberView(cluster, cluster.member(member), takeover=takeover)  # type: ignore[arg-type]
    traffic = TrafficClass(AddressSet.of("192.0.2.10"), AddressSet.of(dst), (match,), in_iface)
    return [_outcome(p) for p in classify(view, traffic)]


def _outcome(piece: Piece) -> tuple[str, FilterAction, int | None]:
    return (piece.chain, piece.verdict, piece.rule.span.line if piece.rule else None)


def test_each_member_holds_its_groups_vips() -> None:
    cluster = loadshare()
    assert [name for name, _ in vips_elsewhere(cluster, "fw1")] == ["dmz", "uplink2"]
    assert [name for name, _ in vips_elsewhere(cluster, "fw2")] == ["lan", "uplink"]
    fw1 = MemberView(cluster, cluster.member("fw1"))  # type: ignore[arg-type]
    assert fw1.local == fw1.firewall - AddressSet.of("203.0.113.126", "198.51.100.254")
    assert MemberView(cluster, cluster.member("fw1"),  # type: ignore[arg-type]
                      takeover=True).local == fw1.firewall


def test_the_other_groups_vip_is_forwarded_not_taken_in() -> None:
    cluster = loadshare()
    # client (lan, fw1's) -> uplink2.vip (red, fw2's): fw1 routes it out uplink2, where no
    # rule accepts ssh; the INPUT rule for `firewall` is not in FORWARD
    assert ask(cluster, "fw1", "198.51.100.254", "ssh", "lan") == [
        ("forward", FilterAction.DROP, 49)]
    # after fw2 fails, fw1 holds it: today's answer, the INPUT rule for `firewall`
    assert ask(cluster, "fw1", "198.51.100.254", "ssh", "lan", takeover=True) == [
        ("input", FilterAction.ACCEPT, 48)]
    # its own group's VIP stays INPUT
    assert ask(cluster, "fw1", "192.0.2.254", "ssh", "lan") == [
        ("input", FilterAction.ACCEPT, 48)]


def test_a_member_never_meets_vip_traffic_on_the_other_groups_interfaces() -> None:
    cluster = loadshare()
    # lan is fw1's: a lan host reaches every VIP through fw1, so fw2 meets none of it
    assert ask(cluster, "fw2", "198.51.100.254", "ssh", "lan") == []
    assert ask(cluster, "fw2", "192.0.2.254", "ssh", "lan") == []
    # ... but fw2's own address on lan is fw2's
    assert ask(cluster, "fw2", "192.0.2.2", "ssh", "lan") == [("input", FilterAction.ACCEPT, 48)]
    # on its own group's interface fw2 takes its VIP in (the rule names `in lan`: dropped)
    assert ask(cluster, "fw2", "198.51.100.254", "ssh", "dmz") == [
        ("input", FilterAction.DROP, None)]


def test_any_and_networks_match_the_other_groups_vip_in_forward(tmp_path: Path) -> None:
    """In FORWARD the compiled rules match a non-held VIP where `any` or a network
    around it does (FORWARD has no firewall exclusion: the kernel never routes a
    held address), so the engine does too."""
    text = LOADSHARE.replace(SSH, SSH + "    accept from lan to dmz service ssh in lan\n"
                                        "    accept from lan to any service web in lan "
                                        "out uplink2\n")
    cluster = cluster_of(tmp_path, text)
    assert ask(cluster, "fw1", "203.0.113.126", "ssh", "lan") == [
        ("forward", FilterAction.ACCEPT, 49)]
    assert ask(cluster, "fw1", "198.51.100.254", "web", "lan") == [
        ("forward", FilterAction.ACCEPT, 50)]
    # on fw2, which holds them, they are the firewall: `dmz` and `any` do not name it
    assert ask(cluster, "fw2", "203.0.113.126", "ssh", "dmz") == [
        ("input", FilterAction.DROP, None)]


def test_single_master_cluster_answers_as_before() -> None:
    """edge.fw: the master holds every VIP, the backup is answered as after it takes
    over (it meets VIP traffic only then): both as with every VIP local."""
    analysis = analyse(EDGE)
    assert analysis.policy is not None
    for cluster in analysis.policy.clusters:
        for member in cluster.members:
            assert vips_elsewhere(cluster, member.name) == ()
            normal = MemberView(cluster, member)
            after = MemberView(cluster, member, takeover=True)
            assert normal.local == after.local == normal.firewall
            traffic = TrafficClass(None, cluster.vips, ())
            assert classify(normal, traffic) == classify(after, traffic)
            assert classify(normal, traffic)


def test_diff_sees_a_vip_move_to_another_member(tmp_path: Path) -> None:
    """Red mastered by fw1 too: fw1 now takes client's ssh to red's VIPs in (newly
    allowed on fw1), where it forwarded and dropped it."""
    old = loadshare()
    new = cluster_of(tmp_path, LOADSHARE.replace("interface dmz, uplink2  master fw2",
                                       "interface dmz, uplink2  master fw1"), ok=False)
    changes = traffic_changes(old, new)
    allowed = [c for c in changes if c.verdict == "allowed" and c.member == "fw1"]
    text = " ".join(c.text for c in allowed)
    assert "ssh" in text and "client" in text, changes
    assert "dmz.vip" in text or "203.0.113.126" in text, changes
