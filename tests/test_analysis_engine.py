"""The analysis engine implements the project's packet semantics (issue 5, decided by the lead)."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest
from conftest import EDGE
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fwc.analysis.engine import MemberView, Piece, TrafficClass, classify
from fwc.backend.lower import lower
from fwc.model import Cluster, Endpoint, Policy, PortRange, Rule, ServiceMatch
from fwc.model.addresses import AddressSet
from fwc.pipeline import analyse

TCP = 6


def _policy(path: Path) -> Policy:
    analysis = analyse(path, run_checks=False)
    assert analysis.ok, [d.message for d in analysis.diagnostics if d.is_error]
    assert analysis.policy is not None
    return analysis.policy


@pytest.fixture(scope="module")
def edge() -> tuple[Policy, Cluster, dict[str, MemberView]]:
    policy = _policy(EDGE)
    cluster = policy.clusters[0]
    return policy, cluster, {m.name: MemberView(cluster, m) for m in cluster.members}


def tcp(port: int) -> tuple[ServiceMatch, ...]:
    return (ServiceMatch("tcp", TCP, (PortRange(port, port),)),)


def hosts(*addresses: str) -> AddressSet:
    return AddressSet.of(*addresses)


def only_piece(pieces: list[Piece]) -> Piece:
    assert len(pieces) == 1, [(p.verdict, p.rule and p.rule.location) for p in pieces]
    return pieces[0]


def line_of(piece: Piece) -> int | None:
    return piece.rule.span.line if piece.rule else None


def test_forward_accept_with_snat(edge):
    _, _, views = edge
    for view in views.values():
        piece = only_piece(classify(view, TrafficClass(hosts("192.0.2.10"),
                                                       hosts("198.51.100.10"), tcp(5001))))
        assert (piece.chain, piece.verdict, line_of(piece)) == ("forward", "accept", 41)
        assert piece.snat is not None and piece.snat.address == "198.51.100.254"
        assert piece.box.in_ifaces == {"lan"} and piece.box.out_ifaces == {"uplink"}


def test_any_to_any_never_decides_traffic_to_the_firewall(edge):
    _, _, views = edge
    piece = only_piece(classify(views["fw1"], TrafficClass(hosts("192.0.2.120"),
                                                           hosts("192.0.2.1"), tcp(22))))
    assert (piece.chain, piece.verdict, piece.rule) == ("input", "drop", None)
    assert "INPUT" in piece.decided_by
    # the same traffic through the firewall is decided by the last rule
    piece = only_piece(classify(views["fw1"], TrafficClass(hosts("192.0.2.120"),
                                                           hosts("198.51.100.10"), tcp(22))))
    assert (piece.chain, piece.verdict, line_of(piece)) == ("forward", "drop", 46)


def test_output_default_accepts(edge):
    _, _, views = edge
    piece = only_piece(classify(views["fw2"], TrafficClass(hosts("198.51.100.2"),
                                                           hosts("198.51.100.10"), tcp(443))))
    assert (piece.chain, piece.verdict, piece.rule) == ("output", "accept", None)


def test_firewall_endpoint_includes_every_vip_and_own_addresses_only(edge):
    _, _, views = edge
    fw1 = views["fw1"]
    # fw2's own address is not `firewall` on fw1: client -> 192.0.2.2 ssh is forwarded
    piece = only_piece(classify(fw1, TrafficClass(hosts("192.0.2.10"), hosts("192.0.2.2"),
                                                  tcp(22))))
    assert piece.chain == "forward" and piece.verdict == "drop"
    for vip in ("192.0.2.254", "198.51.100.254"):
        piece = only_piece(classify(fw1, TrafficClass(hosts("192.0.2.10"), hosts(vip),
                                                      tcp(22))))
        assert (piece.chain, piece.verdict, line_of(piece)) == ("input", "accept", 42)


def test_only_member_rules_exist_on_that_member(edge):
    policy, _, views = edge
    snmp = policy.services["snmp"].matches
    traffic = TrafficClass(policy.objects["monitor"].addresses, hosts("192.0.2.254"), snmp)
    on_fw1 = only_piece(classify(views["fw1"], traffic))
    on_fw2 = only_piece(classify(views["fw2"], traffic))
    assert (on_fw1.verdict, line_of(on_fw1)) == ("accept", 43)
    assert (on_fw2.verdict, on_fw2.rule) == ("drop", None)


def test_reject_is_its_own_verdict(edge):
    _, _, views = edge
    piece = only_piece(classify(views["fw1"], TrafficClass(hosts("198.51.100.10"),
                                                           hosts("192.0.2.10"), tcp(113))))
    assert (piece.verdict, line_of(piece)) == ("reject", 45)


def test_dnat_then_filter_sees_the_translated_destination(edge):
    policy, _, views = edge
    web = policy.services["web"].matches
    traffic = TrafficClass(hosts("203.0.113.77"), hosts("198.51.100.254"), web, "uplink")
    piece = only_piece(classify(views["fw1"], traffic))
    assert (piece.chain, piece.verdict, line_of(piece)) == ("forward", "accept", 44)
    assert piece.dnat is not None and piece.dnat.address == "192.0.2.80"
    assert piece.dnat.rule.span.line == 51
    # reported in the original packet's terms
    assert piece.box.dst == hosts("198.51.100.254").v4
    assert piece.box.out_ifaces == {"lan"}
    # without `in uplink` the dnat rule does not apply: the VIP is the firewall
    lan_side = classify(views["fw1"], TrafficClass(hosts("192.0.2.10"), hosts("198.51.100.254"),
                                                   web))
    assert {(p.chain, p.verdict, p.dnat) for p in lan_side} == {("input", "drop", None)}


def test_pieces_partition_the_query_and_split_where_rules_differ(edge):
    policy, _, views = edge
    traffic = TrafficClass(policy.objects["lan"].addresses, hosts("198.51.100.10"), ())
    pieces = classify(views["fw1"], traffic)
    outcomes = {(p.verdict, line_of(p)) for p in pieces}
    assert ("accept", 41) in outcomes and ("drop", 46) in outcomes and ("reject", 45) in outcomes
    # the firewall's own lan addresses are OUTPUT, accepted by default
    assert any(p.chain == "output" and p.rule is None for p in pieces)
    for a in pieces:
        for b in pieces:
            if a is not b:
                assert a.box.intersect(b.box) is None


def test_routing_infers_interfaces_unless_given(edge):
    _, _, views = edge
    inferred = only_piece(classify(views["fw1"], TrafficClass(hosts("192.0.2.10"),
                                                              hosts("192.0.2.1"), tcp(22))))
    assert inferred.box.in_ifaces == {"lan"}
    spoofed = only_piece(classify(views["fw1"], TrafficClass(hosts("192.0.2.10"),
                                                             hosts("192.0.2.1"), tcp(22),
                                                             "uplink")))
    assert spoofed.box.in_ifaces == {"uplink"}
    assert spoofed.verdict == "accept"  # rule 42 names no interface


def test_negation_and_only_negated_items(tmp_path):
    text = EDGE.read_text(encoding="utf-8")
    start = text.index("policy edge {")
    end = text.index("}", start)
    rules = """policy edge {
    accept from lan, !guests to server service echo
    accept from !client      to server service ssh
    drop   from any          to any
"""
    path = tmp_path / "neg.fw"
    path.write_text(text[:start] + rules + text[end:], encoding="utf-8")
    policy = _policy(path)
    cluster = policy.clusters[0]
    view = MemberView(cluster, cluster.members[0])
    server = hosts("198.51.100.10")
    guest = only_piece(classify(view, TrafficClass(hosts("192.0.2.120"), server, tcp(5001))))
    assert guest.verdict == "drop"
    client = only_piece(classify(view, TrafficClass(hosts("192.0.2.10"), server, tcp(5001))))
    assert client.verdict == "accept"
    ssh_client = only_piece(classify(view, TrafficClass(hosts("192.0.2.10"), server, tcp(22))))
    assert ssh_client.verdict == "drop"
    ssh_other = only_piece(classify(view, TrafficClass(hosts("203.0.113.9"), server, tcp(22))))
    assert ssh_other.verdict == "accept"
    # `!client` alone is `any` minus client: it never includes the firewall
    from_fw = only_piece(classify(view, TrafficClass(hosts("198.51.100.1"), server, tcp(22))))
    assert (from_fw.chain, from_fw.rule) == ("output", None)


def test_endpoint_any_excludes_firewall(edge):
    _, cluster, views = edge
    view = views["fw1"]
    any_side = Endpoint(cluster.rules[-1].source.items)  # `any`
    pieces = classify(view, TrafficClass(any_side, hosts("198.51.100.10"), tcp(22)))
    assert all(p.chain == "forward" for p in pieces)


# -- a packet-by-packet oracle over random policies ----------------------------------------
HEADER = EDGE.read_text(encoding="utf-8").split("policy edge {")[0]
OBJECTS = ("lan", "uplink", "client", "monitor", "web", "server", "guests", "desktops")
ADDRESSES = ("192.0.2.10", "192.0.2.20", "192.0.2.80", "192.0.2.120", "192.0.2.1",
             "192.0.2.254", "198.51.100.10", "198.51.100.1", "198.51.100.2", "203.0.113.5",
             "198.51.100.254")
SERVICES = ("ssh", "web", "dns", "ident", "tcp/20-25", "udp/53", "icmp/echo-request")


@st.composite
def endpoint_text(draw) -> str:
    items = draw(st.lists(st.sampled_from(("any", "firewall", *OBJECTS, "uplink.vip")),
                          min_size=1, max_size=2, unique=True))
    return ", ".join(("!" if draw(st.booleans()) and i not in ("any",) else "") + i
                     for i in items)


@st.composite
def rule_text(draw) -> str:
    parts = [draw(st.sampled_from(("accept", "drop", "reject"))), "from", draw(endpoint_text()),
             "to", draw(endpoint_text())]
    if draw(st.booleans()):
        parts += ["service", draw(st.sampled_from(SERVICES))]
    if draw(st.integers(0, 3)) == 0:
        parts += ["in", draw(st.sampled_from(("lan", "uplink")))]
    if draw(st.integers(0, 3)) == 0:
        parts += ["out", draw(st.sampled_from(("lan", "uplink")))]
    if draw(st.integers(0, 4)) == 0:
        parts += ["only", draw(st.sampled_from(("fw1", "fw2")))]
    return " ".join(parts)


def _in_endpoint(endpoint: Endpoint, address: ipaddress.IPv4Address, firewall: AddressSet) -> bool:
    """The lead's endpoint semantics, one address at a time."""
    is_fw = firewall.contains_address(address)

    def item_has(item) -> bool:
        if item.kind == "any":
            return not is_fw
        if item.kind == "firewall":
            return is_fw
        if not item.addresses.contains_address(address):
            return False
        # an item made only of firewall addresses names the firewall; `lan` does not
        return item.negated or not is_fw or firewall.covers(item.addresses.only(4))

    positives = [i for i in endpoint.items if not i.negated]
    negatives = [i for i in endpoint.items if i.negated]
    inside = any(item_has(i) for i in positives) if positives else not is_fw
    return inside and not any(item_has(i) for i in negatives)


def _in_services(rule: Rule, protocol: int, port: int) -> bool:
    if not rule.services:
        return True
    for match in rule.services:
        if match.family == 6 or match.number != protocol:
            continue
        if match.ports and not any(p.low <= port <= p.high for p in match.ports):
            continue
        if match.icmp_type is not None and match.icmp_type != port:
            continue
        return True
    return False


def oracle(cluster: Cluster, member_name: str, src: str, dst: str, protocol: int, port: int,
           in_iface: str, out_iface: str) -> tuple[str, int | None]:
    member = cluster.member(member_name)
    assert member is not None
    firewall = cluster.firewall_addresses(member)
    s, d = ipaddress.IPv4Address(src), ipaddress.IPv4Address(dst)
    if firewall.contains_address(d):
        chain, out_iface = "input", "<local>"
    elif firewall.contains_address(s):
        chain, in_iface = "output", "<local>"
    else:
        chain = "forward"
    for rule in cluster.rules:
        if rule.only not in (None, member_name):
            continue
        if (_in_endpoint(rule.source, s, firewall) and _in_endpoint(rule.destination, d, firewall)
                and _in_services(rule, protocol, port)
                and rule.in_interface in (None, in_iface)
                and rule.out_interface in (None, out_iface)):
            return rule.action, rule.span.line
    return {"input": "drop", "forward": "drop", "output": "accept"}[chain], None


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(rules=st.lists(rule_text(), min_size=1, max_size=6), data=st.data())
def test_engine_agrees_with_packet_oracle(tmp_path_factory, rules, data):
    path = tmp_path_factory.mktemp("oracle") / "p.fw"
    path.write_text(HEADER + "policy edge {\n" + "\n".join(f"    {r}" for r in rules) + "\n}\n",
                    encoding="utf-8")
    analysis = analyse(path, run_checks=False)
    if not analysis.ok:  # e.g. an endpoint that is empty by construction
        return
    assert analysis.policy is not None
    cluster = analysis.policy.clusters[0]
    views = {m.name: MemberView(cluster, m) for m in cluster.members}
    for _ in range(12):
        member = data.draw(st.sampled_from(("fw1", "fw2")))
        src = data.draw(st.sampled_from(ADDRESSES))
        dst = data.draw(st.sampled_from(ADDRESSES))
        protocol, port = data.draw(st.sampled_from(((6, 22), (6, 80), (6, 113), (17, 53),
                                                    (1, 8), (1, 0), (47, 0))))
        in_iface = data.draw(st.sampled_from(("lan", "uplink", "sync")))
        out_iface = data.draw(st.sampled_from(("lan", "uplink", "sync")))
        if protocol in (6, 17):
            service = ServiceMatch("tcp" if protocol == 6 else "udp", protocol,
                                   (PortRange(port, port),))
        elif protocol == 1:
            service = ServiceMatch("icmp", 1, (), port, None)
        else:
            service = ServiceMatch("gre", 47)
        firewall = views[member].firewall
        to_fw = firewall.contains_address(ipaddress.ip_address(dst))
        from_fw = firewall.contains_address(ipaddress.ip_address(src))
        if to_fw and from_fw:
            continue  # loopback: always accepted, outside the oracle
        # INPUT traffic has no out interface, OUTPUT traffic no in interface
        traffic = TrafficClass(hosts(src), hosts(dst), (service,),
                               None if from_fw else in_iface, None if to_fw else out_iface)
        expected = oracle(cluster, member, src, dst, protocol, port, in_iface, out_iface)
        piece = only_piece(classify(views[member], traffic))
        assert (piece.verdict, line_of(piece)) == expected, (rules, member, src, dst, protocol,
                                                              port, in_iface, out_iface)


def test_only_items_made_of_firewall_addresses_name_the_firewall(tmp_path):
    text = EDGE.read_text(encoding="utf-8")
    start = text.index("policy edge {")
    end = text.index("}", start)
    rules = """policy edge {
    accept from any to lan         service ssh
    accept from any to 192.0.2.1   service tcp/2222
    drop   from any to any
"""
    path = tmp_path / "fwaddr.fw"
    path.write_text(text[:start] + rules + text[end:], encoding="utf-8")
    policy = _policy(path)
    cluster = policy.clusters[0]
    fw1, fw2 = (MemberView(cluster, m) for m in cluster.members)
    client = hosts("192.0.2.10")
    # `lan` contains 192.0.2.1 but names forwarded traffic only (docs/language.md)
    to_node = only_piece(classify(fw1, TrafficClass(client, hosts("192.0.2.1"), tcp(22))))
    assert (to_node.chain, to_node.verdict, to_node.rule) == ("input", "drop", None)
    to_host = only_piece(classify(fw1, TrafficClass(client, hosts("192.0.2.50"), tcp(22))))
    assert (to_host.chain, to_host.verdict, line_of(to_host)) == ("forward", "accept", 41)
    # a member's own address is the firewall on that member only
    on_fw1 = only_piece(classify(fw1, TrafficClass(client, hosts("192.0.2.1"), tcp(2222))))
    assert (on_fw1.chain, on_fw1.verdict, line_of(on_fw1)) == ("input", "accept", 42)
    on_fw2 = only_piece(classify(fw2, TrafficClass(client, hosts("192.0.2.1"), tcp(2222))))
    assert (on_fw2.chain, on_fw2.verdict, line_of(on_fw2)) == ("forward", "accept", 42)


def test_every_arrival_interface_when_routing_is_off(edge):
    policy, _, views = edge
    web = policy.services["web"].matches
    traffic = TrafficClass(hosts("203.0.113.77"), hosts("198.51.100.254"), web, route_in=False)
    pieces = classify(views["fw1"], traffic)
    by_in = {frozenset(p.box.in_ifaces): p for p in pieces}
    assert by_in[frozenset({"uplink"})].verdict == "accept"
    assert all(p.verdict == "drop" for k, p in by_in.items() if "uplink" not in k)


def test_nonat_works_only_in_the_stage_its_interfaces_name(tmp_path):
    """A nonat with only `in` exempts from dnat alone: the compiler puts it in PREROUTING
    only, so the snat after it still translates. The engine used to exempt in both stages
    and told `fwc query` the traffic left untranslated."""
    text = EDGE.read_text(encoding="utf-8")
    path = tmp_path / "nonat.fw"
    exemption = "nat edge {\n    nonat from lan to server in lan\n"
    path.write_text(text.replace("nat edge {\n", exemption), encoding="utf-8")
    policy = _policy(path)
    cluster = policy.clusters[0]
    nonat = cluster.nat[0]
    assert nonat.action == "nonat" and nonat.in_interface == "lan"
    for member in cluster.members:
        rules = lower(cluster, member, 4)
        # the compiled side: the exemption sits in nat PREROUTING and not in POSTROUTING
        placed = {chain for table, chain, rule in rules.rules()
                  if table == "nat" and rule.origin.rule is nonat}
        assert placed == {"PREROUTING"}
        piece = only_piece(classify(MemberView(cluster, member),
                                    TrafficClass(hosts("192.0.2.10"), hosts("198.51.100.10"),
                                                 tcp(5001))))
        assert piece.dnat is not None and piece.dnat.address is None  # exempt from dnat
        assert piece.snat is not None and piece.snat.kind == "snat"
        assert piece.snat.address == "198.51.100.254"


@pytest.mark.parametrize("name", ["edge.fw", "busy.fw", "branch.fw", "loadshare.fw"])
def test_a_view_built_on_demand_answers_as_the_whole_view(name):
    """`fwc query` builds a member's family only when the question has traffic of it: the
    answers are the whole view's, and an IPv4 question leaves the IPv6 tables unbuilt."""
    policy = _policy(EDGE.parent / name)
    questions = [
        TrafficClass(hosts("192.0.2.10"), hosts("198.51.100.10"), tcp(443)),
        TrafficClass(hosts("2001:db8::10"), hosts("2001:db8:ffff::10"), tcp(22)),
        TrafficClass(hosts("0.0.0.0/0", "::/0"), hosts("0.0.0.0/0", "::/0")),
    ]
    for cluster in policy.clusters:
        for member in cluster.members:
            whole = MemberView(cluster, member)
            for question in questions:
                lazy = MemberView(cluster, member, on_demand=True)
                assert classify(lazy, question) == classify(whole, question)
            lazy = MemberView(cluster, member, on_demand=True)
            classify(lazy, questions[0])
            assert {family for family, _ in lazy.filter} == {4}
