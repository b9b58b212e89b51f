"""The engine and `fwc compile` agree: packets through a tiny iptables evaluator.

The test reads the compiled iptables-restore files back into the lowered rule
model and walks nat PREROUTING and the filter chains for one NEW packet with
the project's one packet evaluator, `fwc.analysis.evaluate.Evaluator` (jumps, RETURN,
non-terminal LOG/CONNMARK, chain policies). For sampled
packets on every member of every example policy, its verdict and DNAT must be
the engine's. This is what makes `expect` and `fwc query` answers about the
compiled rules, not only about the policy text.
"""

from __future__ import annotations

import ipaddress
import random
import shlex
from dataclasses import dataclass

import pytest
from conftest import EXAMPLE_NAMES, POLICIES, CompiledExample, Examples

from fwc import protocols as proto
from fwc.analysis.engine import MemberView, TrafficClass, classify
from fwc.analysis.evaluate import PORT_PROTOCOL_NUMBERS, Evaluator
from fwc.analysis.evaluate import Packet as EvalPacket
from fwc.analysis.nftread import read as read_nft
from fwc.backend.lower import (
    AddressMatch,
    Chain,
    FilterRule,
    Match,
    NatRule,
    NodeRuleset,
    Origin,
    Rule,
    Table,
)
from fwc.backend.lower.ruleset import ConnLimit, HashLimit, target_of
from fwc.model import Cluster, Member, PortRange, ServiceMatch
from fwc.model.addresses import AddressSet
from fwc.model.vocabulary import Table as TableName
from fwc.model.vocabulary import Target

PROTOCOL_NAMES = {"tcp": 6, "udp": 17, "icmp": 1, "ipv6-icmp": 58, "icmpv6": 58, "sctp": 132,
                  "dccp": 33, "gre": 47, "esp": 50, "ah": 51}


@dataclass
class Packet:
    family: int
    src: int
    dst: int
    protocol: int
    port: int  # destination port or ICMP type
    in_dev: str | None
    out_dev: str | None

    def as_evaluated(self) -> EvalPacket:
        """The packet as `fwc.analysis.evaluate` takes it: a NEW connection's first packet."""
        icmp = self.protocol in (1, 58)
        return EvalPacket(self.family, self.src, self.dst, self.protocol,
                          self.port if self.protocol in PORT_PROTOCOL_NUMBERS else None,
                          self.port if icmp else None, self.in_dev, self.out_dev)


def _icmp_type(spec: str, family: int) -> int:
    value = spec.split("/")[0]
    if value.isdigit():
        return int(value)
    table = proto.ICMP_TYPES if family == 4 else proto.ICMPV6_TYPES
    return table[value]


def _port_ranges(spec: str) -> tuple[PortRange, ...]:
    out = []
    for part in spec.split(","):
        low, _, high = part.partition(":")
        out.append(PortRange(int(low), int(high or low)))
    return tuple(out)


def _range_cidrs(spec: str) -> tuple[str, ...]:
    first, last = (ipaddress.ip_address(a) for a in spec.split("-"))
    return tuple(str(n) for n in ipaddress.summarize_address_range(first, last))


def read_match(words: list[str], family: int) -> Match:
    """The words of a rendered rule (between the chain and -j) as the lowered model.

    Written independently of the renderer, so that the rendered text, not the
    model it came from, is what gets evaluated.
    """
    fields: dict[str, object] = {}
    i = 0
    while i < len(words):
        negate = words[i] == "!"
        if negate:
            i += 1
        option = words[i]
        value = words[i + 1] if i + 1 < len(words) else ""
        step = 2
        if option in ("-s", "-d", "--src-range", "--dst-range"):
            cidrs = _range_cidrs(value) if option.endswith("range") else (value,)
            key = "source" if option in ("-s", "--src-range") else "destination"
            fields[key] = AddressMatch(cidrs, negated=negate)
        elif option in ("-i", "-o"):
            assert not negate, words
            fields["in_device" if option == "-i" else "out_device"] = value
        elif option == "-p":
            fields["protocol"] = int(value) if value.isdigit() else PROTOCOL_NAMES[value]
        elif option in ("--dport", "--dports"):
            fields["dports"] = _port_ranges(value)
        elif option in ("--icmp-type", "--icmpv6-type"):
            fields["icmp_type"] = _icmp_type(value, family)
        elif option == "--ctstate":
            fields["ctstate"] = tuple(value.split(","))
        elif option == "--tcp-flags" and not negate:
            fields["tcp_flags"] = (words[i + 1], words[i + 2])  # syn-limit, mss
            step = 3
        elif option == "--tcp-flags":
            # `! --tcp-flags FIN,SYN,RST,ACK SYN` is what `! --syn` renders as
            assert negate and words[i + 1:i + 3] == ["FIN,SYN,RST,ACK", "SYN"], words
            fields["tcp_not_syn"] = True
            step = 3
        elif option == "--match-set":
            # -m set [!] --match-set NAME src|dst: an ipset (its blocks come with the caller)
            key = "source" if words[i + 2] == "src" else "destination"
            fields[key] = AddressMatch((), value, negated=negate)
            step = 3
        elif option == "--hashlimit-above":
            fields["hashlimit"] = HashLimit(value, 0, "")  # beyond a rule's limit
        elif option == "--connlimit-above":
            fields["connlimit"] = ConnLimit(int(value), 0)
        elif option == "--every":
            fields["statistic"] = (int(value), int(words[i + 3]))  # --every N --packet P
            step = 4
        elif option in ("--hashlimit-burst", "--hashlimit-mode", "--hashlimit-name",
                        "--connlimit-mask", "--mode"):
            pass  # details of the limit matches above
        elif option == "--connlimit-saddr":
            step = 1
        elif option == "--hl-eq":
            fields["hop_limit"] = int(value)
        elif option == "--ttl-eq":
            fields["ttl"] = int(value)
        elif option == "-m":
            pass  # the options that follow say what the module matches
        elif option in ("--comment", "--limit", "--limit-burst"):
            pass  # no effect on which packets match (limits are on LOG rules only)
        else:
            raise AssertionError(f"evaluator does not know {option}")
        i += step
    return Match(**fields)  # type: ignore[arg-type]


def _target_options(words: list[str]) -> tuple[tuple[str, str], ...]:
    """`--option value` pairs; an option followed by another (or by nothing) is a flag
    with the value "" (`CT --notrack`, `TCPMSS --clamp-mss-to-pmtu`)."""
    out: list[tuple[str, str]] = []
    k = 0
    while k < len(words):
        if not words[k].startswith("--"):
            k += 1
            continue
        if k + 1 == len(words) or words[k + 1].startswith("--"):
            out.append((words[k][2:], ""))
            k += 1
        else:
            out.append((words[k][2:], words[k + 1]))
            k += 2
    return tuple(out)


def _policy(word: str | None) -> Target | None:
    return None if word is None else Target(word)


def parse_rules(text: str, family: int) -> NodeRuleset:
    """iptables-restore text -> the lowered model, for `fwc.analysis.evaluate.Evaluator`."""
    policies: dict[str, dict[str, str | None]] = {}
    rules: dict[str, dict[str, list[Rule]]] = {}
    current = ""
    for line in text.splitlines():
        if line.startswith("*"):
            current = line[1:]
            policies[current], rules[current] = {}, {}
        elif line.startswith(":") and current:
            name, policy = line[1:].split()[:2]
            policies[current][name] = None if policy == "-" else policy
            rules[current].setdefault(name, [])
        elif line.startswith("-A") and current:
            words = shlex.split(line)
            j = words.index("-j")
            make = NatRule if current == TableName.NAT else FilterRule
            rules[current].setdefault(words[1], []).append(
                make(read_match(words[2:j], family), target_of(words[j + 1]),
                     Origin("auto", line), _target_options(words[j + 2:])))
    tables = tuple(Table(TableName(name), tuple(Chain(chain, _policy(policies[name].get(chain)),
                                                      tuple(rules[name][chain]))
                                                for chain in rules[name]))
                   for name in rules)
    return NodeRuleset("", "", family, tables)


@dataclass
class Node:
    cluster: Cluster
    member: Member
    rulesets: dict[int, NodeRuleset]
    firewall: AddressSet  # the member's own addresses and the VIPs it holds (view.local)
    sets: dict[str, tuple[str, ...]] | None = None  # named address sets (nftables.nft)

    def device(self, interface: str | None) -> str | None:
        return self.member.device(interface) if interface else None

    def evaluate(self, packet: Packet) -> tuple[str, str | None]:
        """(verdict, dnat address) as the compiled rules decide a NEW packet."""
        ruleset = self.rulesets[packet.family]
        dnat = None
        if not self.firewall.contains_address(_ip(packet.family, packet.src)):
            decided = Evaluator(ruleset, self.sets, table="nat").decide(packet.as_evaluated(),
                                                                        "PREROUTING")
            if decided.verdict == "DNAT":
                host, port = _dnat_target(dict(decided.options)["to-destination"])
                dnat = host
                if port is None or packet.protocol not in PORT_PROTOCOL_NUMBERS:
                    port = packet.port
                packet = Packet(packet.family, packet.src, int(ipaddress.ip_address(host)),
                                packet.protocol, port, packet.in_dev, packet.out_dev)
        if self.firewall.contains_address(_ip(packet.family, packet.dst)):
            chain = "INPUT"
            packet.out_dev = None
        elif self.firewall.contains_address(_ip(packet.family, packet.src)):
            chain = "OUTPUT"
        else:
            chain = "FORWARD"
        decided = Evaluator(ruleset, self.sets).decide(packet.as_evaluated(), chain)
        return decided.verdict.lower(), dnat


def _dnat_target(target: str) -> tuple[str, int | None]:
    """`--to-destination` as (address, first port or None): `192.0.2.80`, `192.0.2.80:80`,
    `[2001:db8::80]:80-81`, `2001:db8::80`. The filter sees the translated port."""
    if target.startswith("["):
        host, _, rest = target[1:].partition("]")
        port = rest.removeprefix(":")
    elif target.count(":") == 1:
        host, _, port = target.partition(":")
    else:
        host, port = target, ""
    return host, int(port.split("-")[0]) if port else None


def _ip(family: int, value: int) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.IPv4Address(value) if family == 4 else ipaddress.IPv6Address(value)


def _nodes(example: CompiledExample) -> list[Node]:
    nodes = []
    for cluster, output in zip(example.policy.clusters, example.clusters, strict=True):
        files = {f.path: f.content.decode() for f in output.files}
        for member in cluster.members:
            nft = files.get(f"{member.name}/nftables.nft")
            if nft is not None:  # backend nftables: the nft output, read back
                rules = read_nft(nft)
                nodes.append(Node(cluster, member, rules.rulesets,
                                  MemberView(cluster, member).local, rules.sets))
                continue
            rulesets = {4: parse_rules(files[f"{member.name}/iptables.rules"], 4),
                        6: parse_rules(files.get(f"{member.name}/ip6tables.rules", ""), 6)}
            nodes.append(Node(cluster, member, rulesets, MemberView(cluster, member).local))
    return nodes


def _candidate_addresses(node: Node, family: int, rng: random.Random) -> list[int]:
    policy_sets = [AddressSet.of(*(a.ip for link in m.links for a in link.addresses))
                   for m in node.cluster.members]
    policy_sets.append(node.cluster.vips)
    for rule in node.cluster.all_rules():
        for item in rule.source.items + rule.destination.items:
            policy_sets.append(item.addresses)
    out: set[int] = set()
    for addresses in policy_sets:
        for lo, hi in addresses.family(family):
            out.update({lo, hi, rng.randint(lo, hi)})
    for link in node.member.links:
        for address in link.addresses:
            if address.version == family:
                net = address.network
                out.add(rng.randint(int(net.network_address) + 1, int(net.broadcast_address) - 1))
    out.add(int(ipaddress.ip_address("198.51.100.77" if family == 4 else "2001:db8:ffff::7")))
    return sorted(out)


SERVICES = [(6, 22), (6, 80), (6, 443), (6, 53), (6, 113), (6, 5001), (6, 25), (6, 21),
            (6, 587), (6, 993), (6, 3306), (17, 53), (17, 161), (17, 123), (47, 0)]


def _service(protocol: int, port: int) -> ServiceMatch:
    if protocol in (1, 58):
        return ServiceMatch("icmp" if protocol == 1 else "icmpv6", protocol, (), port, None)
    name = {6: "tcp", 17: "udp", 132: "sctp", 33: "dccp"}.get(protocol, f"proto/{protocol}")
    # one packet: a port protocol's port too (sctp/5 is not all of sctp)
    ports = (PortRange(port, port),) if protocol in PORT_PROTOCOL_NUMBERS else ()
    return ServiceMatch(name, protocol, ports)


@pytest.mark.parametrize("name", EXAMPLE_NAMES)
def test_engine_and_compiled_rules_agree(examples: Examples, name: str):
    rng = random.Random(name)
    checked = 0
    for node in _nodes(examples[name]):
        view = MemberView(node.cluster, node.member)
        interfaces = [link.interface for link in node.member.links]
        for family in (4, 6):
            if node.rulesets[family].table("filter") is None:
                continue
            addresses = _candidate_addresses(node, family, rng)
            services = SERVICES + ([(1, 8), (1, 0)] if family == 4 else [(58, 128), (58, 129)])
            samples = [(rng.choice(addresses), rng.choice(addresses), *rng.choice(services),
                        rng.choice(interfaces), rng.choice(interfaces)) for _ in range(300)]
            samples += _inside_rules(view, family, interfaces, rng)
            for sample in samples:
                checked += _agree(node, view, family, *sample)
    assert checked > 500


def _agree(node: Node, view: MemberView, family: int, src: int, dst: int, protocol: int,
           port: int, in_iface: str, out_iface: str) -> bool:
    """Engine and compiled rules decide one packet alike (False: nothing to compare)."""
    from_fw = node.firewall.contains_address(_ip(family, src))
    to_fw = node.firewall.contains_address(_ip(family, dst))
    if from_fw and to_fw:
        return False  # loopback
    packet = Packet(family, src, dst, protocol, port,
                    None if from_fw else node.device(in_iface),
                    None if to_fw else node.device(out_iface))
    traffic = TrafficClass(_single(family, src), _single(family, dst),
                           (_service(protocol, port),),
                           None if from_fw else in_iface,
                           None if to_fw else out_iface)
    pieces = classify(view, traffic)
    if not pieces:
        return False  # the member never meets it (a VIP another member holds)
    # DNAT re-routes: the compiled FORWARD sees the out device routing picks
    piece = pieces[0]
    if piece.dnat is not None and piece.dnat.address is not None:
        packet.out_dev = node.device(next(iter(sorted(piece.box.out_ifaces)), None))
    # a dnat that shares load answers for each backend; the compiled rules
    # send the first connection (the one evaluated) to the first backend
    shared = piece.dnat is not None and len(piece.dnat.rule.targets) > 1
    assert len(pieces) == 1 or shared, [p.decided_by for p in pieces]
    verdict, dnat = node.evaluate(packet)
    engine_dnat = piece.dnat.address if piece.dnat and piece.dnat.address else None
    where = (f"{node.member.name}: {_ip(family, src)} -> {_ip(family, dst)} "
             f"proto {protocol}/{port} in {in_iface} out {out_iface}")
    assert (piece.verdict, engine_dnat) == (verdict, dnat), \
        f"{where}: engine {piece.verdict} by {piece.decided_by}, compiled {verdict}"
    return True


def test_vips_another_member_holds_agree_with_the_compiled_rules(examples: Examples):
    """Active-active: on each member the other groups' VIPs are routed, not taken in.
    Every packet to or from them that the member meets is decided as its compiled
    FORWARD (or OUTPUT) chain decides it, for rules with `any`, networks around the
    VIPs and the VIPs themselves (policies/loadshare.fw plus rules naming them)."""
    checked = 0
    for node in _nodes(examples["loadshare.fw"]):
        view = MemberView(node.cluster, node.member)
        assert view.elsewhere, node.member.name  # each member holds one group's VIPs
        interfaces = [link.interface for link in node.member.links]
        others = [lo for lo, _ in view.elsewhere.family(4)]
        outside = [int(ipaddress.ip_address(a)) for a in ("192.0.2.10", "203.0.113.80",
                                                          "198.51.100.10")]
        own = [lo for lo, _ in node.firewall.family(4)]
        for dst in others:
            for src in outside + own:
                for protocol, port in SERVICES:
                    for in_iface in interfaces:
                        for out_iface in interfaces:
                            checked += _agree(node, view, 4, src, dst, protocol, port,
                                              in_iface, out_iface)
    assert checked > 500


def _point(intervals, rng: random.Random) -> int:
    lo, hi = rng.choice(intervals)
    return rng.choice((lo, hi, rng.randint(lo, hi)))


def _inside_rules(view: MemberView, family: int, interfaces: list[str], rng: random.Random) \
        -> list[tuple[int, int, int, int, str, str]]:
    """Packets drawn from inside every rule's box, so accepts, NAT and INPUT are exercised."""
    out = []
    rule_lists = [view.filter[(family, "forward")], view.dnat[family], view.snat[family]]
    for rules in rule_lists:
        for entry in rules.rules:
            box = entry.box
            for _ in range(4):
                value = _point(box.services, rng)
                protocol, port = value >> 16, value & 0xFFFF
                if protocol not in (1, 6, 17, 47, 58):
                    protocol, port = 6, 80
                if protocol == 47:
                    port = 0
                real = [i for i in interfaces if i in box.in_ifaces] or interfaces
                out_real = [i for i in interfaces if i in box.out_ifaces] or interfaces
                out.append((_point(box.src, rng), _point(box.dst, rng), protocol, port,
                            rng.choice(real), rng.choice(out_real)))
    return out


def _single(family: int, value: int) -> AddressSet:
    return AddressSet(((value, value),), ()) if family == 4 else AddressSet((), ((value, value),))


def test_nat_any_leaves_the_firewall_out_as_the_compiled_rules_do(tmp_path):
    """`dnat ... to any` and `snat ... from any` leave the firewall's own addresses alone
    (fwc.backend.lower, `nat_firewall_left_out`), the VIPs another member holds
    included: every packet to or from them is decided, and translated or not, as the
    compiled rules do (policies/loadshare.fw, active-active, plus two such rules)."""
    anchor = "    snat from dmz to any out uplink2 -> uplink2.vip\n"
    text = (POLICIES / "loadshare.fw").read_text(encoding="utf-8")
    assert anchor in text
    path = tmp_path / "loadshare.fw"
    path.write_text(text.replace(anchor, "    dnat from any to any service ssh in lan -> web\n"
                                 + anchor + "    snat from any to any out uplink -> "
                                 "uplink.vip\n"), encoding="utf-8")
    compiled = Examples(tmp_path / "out")._compile(path)
    outside = [int(ipaddress.ip_address(a)) for a in ("192.0.2.10", "203.0.113.80",
                                                      "198.51.100.10", "198.18.1.1")]
    checked = 0
    for node in _nodes(compiled):
        view = MemberView(node.cluster, node.member)
        interfaces = [link.interface for link in node.member.links]
        own = [lo for lo, _ in node.firewall.family(4)]
        held = [lo for lo, _ in view.elsewhere.family(4)]
        assert held, node.member.name
        for src, dst in [(s, d) for s in outside for d in own + held + outside] \
                + [(s, d) for s in own for d in outside]:
            for protocol, port in ((6, 22), (6, 80)):
                for in_iface in interfaces:
                    for out_iface in interfaces:
                        checked += _agree(node, view, 4, src, dst, protocol, port,
                                          in_iface, out_iface)
    assert checked > 500
