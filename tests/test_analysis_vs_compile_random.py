"""The engine and `fwc compile` agree on small random policies, not only on the examples.

tests/test_analysis_vs_compile.py walks the compiled chains of the example policies;
here the policies are drawn (hypothesis, derandomised) from a vocabulary the examples
do not all use: `only`, reject, log and limits, negation, mixed-family and IPv6-only
objects, VIPs and `firewall` as sides, port ranges and ICMP types, `in`/`out`, default
policies, dnat with ports and load sharing, snat to pools, masquerade, nonat with and
without interfaces, on a single-master and an active-active cluster. On every member
and family the engine's verdict, DNAT and SNAT must be what the compiled iptables
chains (read back and walked by `fwc.analysis.evaluate.Evaluator`) do.

The regression tests below are what the random policies found.
"""

from __future__ import annotations

import ipaddress
import random
from pathlib import Path

from conftest import REPO
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from test_analysis_vs_compile import (
    SERVICES,
    Node,
    Packet,
    _agree,
    _candidate_addresses,
    _inside_rules,
    _ip,
    _service,
    _single,
    parse_rules,
)

from fwc.analysis.engine import MemberView, TrafficClass, classify
from fwc.analysis.evaluate import PORT_PROTOCOL_NUMBERS, Evaluator
from fwc.backend.output import compile_policy
from fwc.model.vocabulary import NatAction
from fwc.model.vocabulary import Table as TableName
from fwc.pipeline import analyse

_HEAD = """\
network lan      192.0.2.0/24
network lan6     2001:db8:1::/64
network dmz      203.0.113.0/25
host    client   192.0.2.10, 2001:db8:1::10
host    web      203.0.113.80, 2001:db8:2::80
host    web4     203.0.113.81
host    ext      198.18.0.5, 2001:db8:ff::5
host    fw1lan   192.0.2.1
group   mixed    client, web4, 192.0.2.1
group   only6    2001:db8:2::80, 2001:db8:1::10
range   rng      192.0.2.8-192.0.2.20
service ssh  tcp/22
service web  tcp/80,443
service high tcp/1000-2000
service dns  udp/53, tcp/53
service ping icmp/echo-request, icmpv6/echo-request
service tun  gre

cluster edge {{
    vrrp {{ password "s3cret"  advert 1s  vrid 51 }}
    sync {{ link sync }}
    {defaults}
    interface lan    vip 192.0.2.254/24, 2001:db8:1::fe/64
    interface dmz    vip 203.0.113.126/25, 2001:db8:2::fe/64  vrid 53
    interface uplink vip 198.51.100.254/24  vrid 52
    interface sync
    {groups}
    member fw1 priority 150 {{
        lan    eth0 192.0.2.1/24, 2001:db8:1::1/64
        dmz    eth1 203.0.113.1/25, 2001:db8:2::1/64
        uplink eth2 198.51.100.1/24
        sync   eth3 198.18.1.1/24
    }}
    member fw2 priority 100 {{
        lan    eth0 192.0.2.2/24, 2001:db8:1::2/64
        dmz    eth1 203.0.113.2/25, 2001:db8:2::2/64
        uplink eth2 198.51.100.2/24
        sync   eth3 198.18.1.2/24
    }}
    route default via 198.51.100.9
}}
"""
_GROUPS = ("", "vrrp-group blue { interface lan, uplink  master fw1 }\n"
           "    vrrp-group red { interface dmz  master fw2 }")
_DEFAULTS = ("", "default { input reject  output drop }", "default { output reject }")
_SIDES = ("any", "firewall", "lan", "lan6", "dmz", "client", "web", "web4", "ext", "fw1lan",
          "mixed", "only6", "rng", "lan.vip", "dmz.vip", "uplink.vip", "lan, !client",
          "!client", "any, !web", "mixed, !fw1lan", "192.0.2.0/25", "firewall, !lan.vip")
_SERVICES = ("", " service ssh", " service web, dns", " service high", " service ping",
             " service tun", " service tcp/20-25", " service icmp/any",
             " service icmpv6/echo-reply", " service udp")
_SCOPES = ("", " in lan", " out uplink", " in dmz out lan", " only fw1", " only fw2",
           " in uplink")
_EXTRAS = ("", " log", ' log "x"', " limit 5/second", " connlimit 3")
# NAT sources and destinations may be networks around firewall addresses (`lan`, `dmz`):
# after routing such a source is written as it is, and the engine reads it so (the
# firewall's own packets from its lan address are translated); before routing such a
# destination leaves them out
_NAT_SOURCES = ("any", "client", "web", "!client", "ext", "rng", "lan", "dmz",
                "lan, !client", "mixed, !fw1lan")
_NAT_DESTINATIONS = ("any", "uplink.vip", "ext", "web", "lan.vip", "firewall", "lan", "dmz")
_NAT = ("dnat from any to uplink.vip service web in uplink -> web",
        "dnat from any to {d} service ssh in {i} -> client",
        "dnat from {s} to any service tcp/8080 -> web:80",
        "dnat from {s} to {d} service tcp/8000-8010 in {i} -> web:80-90",
        "dnat from any to dmz.vip service web -> web4, client",
        "snat from {s} to any out uplink -> uplink.vip",
        "snat from {s} to any out uplink -> 198.51.100.250-198.51.100.253:1024-65535",
        "snat from {s} to {d} -> 198.51.100.254",
        "masquerade from {s} to any out uplink",
        "nonat from {s} to {d}",
        "nonat from {s} to {d} in {i}",
        "nonat from {s} to {d} out uplink")
_EXTRA_SERVICES = [(6, 1500), (6, 20), (6, 8080), (6, 8005), (17, 999), (51, 0)]


def _policy_text(groups: str, defaults: str, rules: list[tuple[str, ...]],
                 nats: list[tuple[str, str, str, str]]) -> str:
    lines = [f"    {action} from {src} to {dst}{svc}{scope}{extra}"
             for action, src, dst, svc, scope, extra in rules]
    nat = [f"    {form.format(s=s, d=d, i=i)}" for form, s, d, i in nats]
    return (_HEAD.format(defaults=defaults, groups=groups)
            + "policy edge {\n" + "\n".join(lines) + "\n}\n"
            + ("nat edge {\n" + "\n".join(nat) + "\n}\n" if nat else ""))


def compiled_nodes(path: Path) -> list[Node]:
    """Every member of the policy at PATH, compiled (whatever the checks say) and read
    back from its iptables-restore and ipset files."""
    analysis = analyse(path, run_checks=False)
    assert analysis.policy is not None, analysis.diagnostics
    nodes = []
    for cluster, output in zip(analysis.policy.clusters, compile_policy(analysis.policy),
                               strict=True):
        files = {f.path: f.content.decode() for f in output.files}
        for member in cluster.members:
            rulesets = {4: parse_rules(files[f"{member.name}/iptables.rules"], 4),
                        6: parse_rules(files.get(f"{member.name}/ip6tables.rules", ""), 6)}
            sets: dict[str, list[str]] = {}
            for line in files.get(f"{member.name}/ipsets.rules", "").splitlines():
                words = line.split()
                if len(words) >= 3 and words[0] == "add":
                    sets.setdefault(words[1].removesuffix(".new"), []).append(words[2])
            nodes.append(Node(cluster, member, rulesets, MemberView(cluster, member).local,
                              {name: tuple(blocks) for name, blocks in sets.items()}))
    return nodes


def _snat_agree(node: Node, view: MemberView, family: int, src: int, dst: int,
                protocol: int, port: int, in_iface: str, out_iface: str) -> bool:
    """The engine's snat stage and the compiled nat POSTROUTING translate an accepted
    forwarded (or the firewall's own) packet alike (False: nothing to compare)."""
    from_fw = node.firewall.contains_address(_ip(family, src))
    to_fw = node.firewall.contains_address(_ip(family, dst))
    if to_fw:
        return False
    traffic = TrafficClass(_single(family, src), _single(family, dst),
                           (_service(protocol, port),), None if from_fw else in_iface,
                           out_iface)
    pieces = classify(view, traffic)
    if len(pieces) != 1 or not pieces[0].accepted or pieces[0].chain == "input":
        return False
    piece = pieces[0]
    if piece.dnat is not None and piece.dnat.address is not None:
        dst = int(ipaddress.ip_address(piece.dnat.address))
        if piece.dnat.port is not None and protocol in PORT_PROTOCOL_NUMBERS:
            port = piece.dnat.port
    packet = Packet(family, src, dst, protocol, port, None if from_fw else node.device(in_iface),
                    node.device(next(iter(sorted(piece.box.out_ifaces)))))
    decided = Evaluator(node.rulesets[family], node.sets, table=TableName.NAT).decide(
        packet.as_evaluated(), "POSTROUTING")
    compiled: str | None = None
    if decided.verdict == "SNAT":
        target = dict(decided.options)["to-source"]
        compiled = target.strip("[").split("]")[0] if family == 6 else target.split(":")[0]
        compiled = compiled.split("-")[0]
    elif decided.verdict == "MASQUERADE":
        compiled = "masquerade"
    engine: str | None = None
    if piece.snat is not None and piece.snat.address is not None:
        engine = "masquerade" if piece.snat.kind is NatAction.MASQUERADE \
            else piece.snat.address.split("-")[0]
    assert engine == compiled, (
        f"{node.member.name}: {_ip(family, src)} -> {_ip(family, dst)} proto {protocol}/{port}"
        f" in {in_iface} out {out_iface}: engine {piece.snat}, compiled {decided.verdict} "
        f"{decided.options}")
    return True


def agree_everywhere(path: Path, rng: random.Random, samples: int = 60) -> int:
    """Engine == compiled rules (verdict, DNAT, SNAT) on packets drawn at random and from
    inside every rule, on every member and family; how many packets were compared."""
    checked = 0
    for node in compiled_nodes(path):
        view = MemberView(node.cluster, node.member)
        interfaces = [link.interface for link in node.member.links]
        for family in (4, 6):
            if node.rulesets[family].table("filter") is None:
                continue
            addresses = _candidate_addresses(node, family, rng)
            services = SERVICES + _EXTRA_SERVICES + (
                [(1, 8), (1, 0), (1, 3)] if family == 4 else [(58, 128), (58, 129), (58, 1)])
            drawn = [(rng.choice(addresses), rng.choice(addresses), *rng.choice(services),
                      rng.choice(interfaces), rng.choice(interfaces)) for _ in range(samples)]
            drawn += _inside_rules(view, family, interfaces, rng)
            # to every firewall address: what a NAT rule's side must leave alone
            drawn += [(rng.choice(addresses), own, *rng.choice(services),
                       rng.choice(interfaces), rng.choice(interfaces))
                      for own, _ in node.firewall.family(family) for _ in range(4)]
            for sample in drawn:
                checked += _agree(node, view, family, *sample)
                _snat_agree(node, view, family, *sample)
    return checked


@settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=[
    HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(st.sampled_from(_GROUPS), st.sampled_from(_DEFAULTS),
       st.lists(st.tuples(st.sampled_from(("accept", "accept", "drop", "reject")),
                          st.sampled_from(_SIDES), st.sampled_from(_SIDES),
                          st.sampled_from(_SERVICES), st.sampled_from(_SCOPES),
                          st.sampled_from(_EXTRAS)), min_size=1, max_size=7),
       st.lists(st.tuples(st.sampled_from(_NAT), st.sampled_from(_NAT_SOURCES),
                          st.sampled_from(_NAT_DESTINATIONS),
                          st.sampled_from(("lan", "uplink", "dmz"))), max_size=3),
       st.randoms(use_true_random=False))
def test_engine_and_compiled_rules_agree_on_random_policies(tmp_path, groups, defaults,
                                                           rules, nats, rng):
    path = tmp_path / "random.fw"
    path.write_text(_policy_text(groups, defaults, rules, nats), encoding="utf-8")
    assume(analyse(path, run_checks=False).policy is not None)
    assert agree_everywhere(path, rng) > 50


# -- what the random policies found ---------------------------------------------------------
EDGE = (REPO / "policies" / "edge.fw").read_text(encoding="utf-8")
EDGE_DNAT = "    dnat from any to uplink.vip service web in uplink -> web\n"
EDGE_SNAT = "    snat from lan to any out uplink -> uplink.vip\n"


def _edge(tmp_path: Path, *replacements: tuple[str, str]) -> Path:
    text = EDGE
    for old, new in replacements:
        assert old in text, old
        text = text.replace(old, new, 1)
    path = tmp_path / "edge.fw"
    path.write_text(text, encoding="utf-8")
    return path


def _codes(path: Path) -> list[str]:
    return sorted(d.code for d in analyse(path).diagnostics)


def test_a_nonat_to_any_leaves_the_firewalls_addresses_to_a_later_dnat(tmp_path):
    """`nonat from server to any` exempted server's connections to uplink.vip from the
    dnat after it, which names that VIP: the kernel took them in (INPUT: dropped) while
    `fwc query` said they went to web and were accepted. `any` leaves the firewall out
    in a nonat too."""
    path = _edge(tmp_path, (EDGE_DNAT, "    nonat from server to any\n" + EDGE_DNAT))
    server, vip = int(ipaddress.ip_address("198.51.100.10")), \
        int(ipaddress.ip_address("198.51.100.254"))
    for node in compiled_nodes(path):
        view = MemberView(node.cluster, node.member)
        packet = Packet(4, server, vip, 6, 80, "eth1", None)
        assert node.evaluate(packet) == ("accept", "192.0.2.80"), node.member.name
        assert _agree(node, view, 4, server, vip, 6, 80, "uplink", "lan")
        # the nonat still exempts what it names: server's connections to anything else
        nat = Evaluator(node.rulesets[4], table=TableName.NAT)
        elsewhere = Packet(4, server, int(ipaddress.ip_address("192.0.2.10")), 6, 80,
                           "eth1", "eth0").as_evaluated()
        assert nat.decide(elsewhere, "PREROUTING").verdict == "ACCEPT"
    assert agree_everywhere(path, random.Random(1)) > 100


def test_a_nonat_from_any_leaves_the_firewalls_own_packets_to_a_later_snat(tmp_path):
    """The same in POSTROUTING: `nonat from any to server` kept the firewall's own packets
    to server from `snat from firewall ... -> uplink.vip`, which the query reported."""
    path = _edge(tmp_path, (EDGE_SNAT, "    nonat from any to server\n"
                            "    snat from firewall to any out uplink -> uplink.vip\n"))
    server = int(ipaddress.ip_address("198.51.100.10"))
    for node in compiled_nodes(path):
        own = int(ipaddress.ip_address("192.0.2.1" if node.member.name == "fw1"
                                       else "192.0.2.2"))
        nat = Evaluator(node.rulesets[4], table=TableName.NAT)
        packet = Packet(4, own, server, 6, 80, None, "eth1").as_evaluated()
        assert nat.decide(packet, "POSTROUTING").verdict == "SNAT", node.member.name
        assert _snat_agree(node, MemberView(node.cluster, node.member), 4, own, server, 6, 80,
                           "lan", "uplink")


def test_a_dnat_pool_whose_first_backend_lacks_the_family_compiles(tmp_path):
    """`dnat ... -> web, web6` with web IPv4-only: the IPv6 rule was lowered with the
    first backend, which has no IPv6 address: an AssertionError (FWC900 from the checks,
    a traceback from compile) instead of a DNAT to web6."""
    path = _edge(tmp_path,
                 ("host    web      192.0.2.80\n",
                  "host    web      192.0.2.80\nhost    web6     192.0.2.81, 2001:db8:1::81\n"),
                 (EDGE_DNAT, "    dnat from any to lan.vip service web in lan -> web, web6\n"))
    assert "FWC900" not in _codes(path)
    for node in compiled_nodes(path):
        nat = node.rulesets[6].table("nat")
        assert nat is not None
        (dnat,) = [r for c in nat.chains for r in c.rules if r.target == "DNAT"]
        assert dict(dnat.target_options)["to-destination"] == "2001:db8:1::81"
        view = MemberView(node.cluster, node.member)
        client = int(ipaddress.ip_address("2001:db8:1::10"))
        vip = int(ipaddress.ip_address("2001:db8:1::fe"))
        assert _agree(node, view, 6, client, vip, 6, 80, "lan", "lan")
    assert agree_everywhere(path, random.Random(2)) > 100


def test_a_snat_without_an_address_of_the_family_translates_nothing_there(tmp_path):
    """`snat from lan, lan6 ... -> uplink.vip` (IPv4 only) has no IPv6 kernel rule, so a
    later masquerade decides lan6's traffic. The engine reported the snat to uplink.vip
    for it, and FWC401 called the masquerade a rule that can never match (an error that
    stopped the compile)."""
    path = _edge(tmp_path,
                 ("policy edge {\n", "policy edge {\n    accept from lan6 to any service web\n"),
                 (EDGE_SNAT, "    snat from lan, lan6 to any out uplink -> uplink.vip\n"
                             "    masquerade from lan6 to any out uplink\n"))
    assert "FWC401" not in _codes(path)
    outside = int(ipaddress.ip_address("2001:db8:ff::1"))
    inside = int(ipaddress.ip_address("2001:db8:1::10"))
    for node in compiled_nodes(path):
        view = MemberView(node.cluster, node.member)
        assert _snat_agree(node, view, 6, inside, outside, 6, 80, "lan", "uplink")
        (piece,) = classify(view, TrafficClass(_single(6, inside), _single(6, outside),
                                               (_service(6, 80),), "lan", "uplink"))
        assert piece.snat is not None and piece.snat.kind is NatAction.MASQUERADE
    assert agree_everywhere(path, random.Random(3)) > 100


def test_a_nonat_to_a_network_around_a_vip_leaves_the_vip_to_a_later_dnat(tmp_path):
    """`nonat from lan to uplink` (the uplink network holds uplink.vip and the members'
    uplink addresses) exempted lan's connections to uplink.vip from the hairpin dnat
    after it: taken in and dropped, while `fwc query` said web accepted them, since a
    network does not name the firewall's addresses in it. Before routing the compiled
    rule now leaves them out, as for `any`."""
    path = _edge(tmp_path, (EDGE_DNAT, "    nonat from lan to uplink\n"
                            "    dnat from any to uplink.vip service web -> web\n"))
    client, vip = int(ipaddress.ip_address("192.0.2.10")), \
        int(ipaddress.ip_address("198.51.100.254"))
    for node in compiled_nodes(path):
        assert node.evaluate(Packet(4, client, vip, 6, 80, "eth0", None)) == \
            ("accept", "192.0.2.80"), node.member.name
        assert _agree(node, MemberView(node.cluster, node.member), 4, client, vip, 6, 80,
                      "lan", "lan")
        # the rest of the uplink network is still exempted (the other member's address
        # included: forwarded traffic there)
        nat = Evaluator(node.rulesets[4], table=TableName.NAT)
        for other in ("198.51.100.10", "198.51.100.2" if node.member.name == "fw1"
                      else "198.51.100.1"):
            packet = Packet(4, client, int(ipaddress.ip_address(other)), 6, 80, "eth0",
                            "eth1").as_evaluated()
            assert nat.decide(packet, "PREROUTING").verdict == "ACCEPT", other
    assert agree_everywhere(path, random.Random(4)) > 100
