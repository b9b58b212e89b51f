"""Does the imported policy do what the original ruleset did? Packet class by packet class.

Both sides are read by the same reader (`fwc.importing.saved`): the original
`iptables-save` text and the `iptables.rules` fwc compiles for member fw1 of the
imported policy. The packet classes are the corner packets of both rulesets
(`fwc.analysis.evaluate.corner_packets`: every rule's edges and the packets just
outside them, each with every device, state and another protocol), walked
through the filter chains and the nat table's PREROUTING and POSTROUTING by the
one packet evaluator. A class decided differently (verdict, NAT address) is a
difference. Left out, because fwc writes them itself on every cluster (docs/
migration.md): packets in state INVALID, new TCP packets without SYN, loopback,
VRRP, packets one of fwc's automatic rules decides (`fwc auto: ...`: conntrackd
sync, `sync { allow }`; they follow the cluster block, which the import only
sketches), and packets to or from the firewall whose address is not one the
original rules name (INPUT and OUTPUT see only the node's own addresses).
"""

from __future__ import annotations

import ipaddress
from dataclasses import replace

from fwc import protocols as proto
from fwc.analysis.evaluate import Evaluator, Packet, corner_packets
from fwc.backend.lower.ruleset import NodeRuleset
from fwc.importing.saved import Saved, read_saved, ruleset
from fwc.model.intervals import Intervals, contains
from fwc.model.records import dataclass
from fwc.model.vocabulary import BuiltinChain
from fwc.model.vocabulary import Table as TableName

# The labels of fwc's automatic rules that follow from the cluster block.
CLUSTER_RULES = tuple(f"fwc auto: {kind} " for kind in
                      ("vrrp", "conntrackd sync", "igmp", "mld", "sync allow",
                       "track ping", "uplink probe"))


@dataclass(frozen=True, slots=True)
class Difference:
    packet: str
    where: str  # filter or nat hook
    original: str
    compiled: str


def _verdict(decision_verdict: str, options: tuple[tuple[str, str], ...]) -> str:
    if decision_verdict == "REJECT":
        return "REJECT"  # fwc chooses tcp-reset / port unreachable by protocol
    keep = [f"{k} {v}" for k, v in options if k in ("to-destination", "to-source")]
    return " ".join([decision_verdict, *keep])


def _nat_cases(packet: Packet, own: set[int], firewall: Intervals, own_default: int) \
        -> list[tuple[BuiltinChain, Packet]]:
    """The NAT hooks a new connection of PACKET meets, each with the packet it sees there.

    A connection to the firewall meets PREROUTING too (a DNAT or RETURN without `-d`
    translates it; fwc's `any` does not): so does the forwarded packet's connection
    aimed at the firewall instead. A forwarded packet never carries one of the
    firewall's addresses as its source (the kernel drops it as martian): its
    POSTROUTING is not compared (`snat from any` leaves the firewall's own packets
    alone, which leave through OUTPUT).
    """
    if packet.ctstate != "NEW" or packet.in_device is None:
        return []
    if packet.out_device is None:
        return [(BuiltinChain.PREROUTING, packet)]
    cases = [(BuiltinChain.PREROUTING, packet),
             (BuiltinChain.PREROUTING, replace(packet, destination=own_default,
                                               out_device=None))]
    if packet.source not in own and not contains(firewall, packet.source):
        cases.append((BuiltinChain.POSTROUTING, packet))
    return cases


def _own_addresses(rules: NodeRuleset) -> set[int]:
    out: set[int] = set()
    for _, chain, rule in rules.rules():
        side = rule.match.destination if chain == BuiltinChain.INPUT else \
            rule.match.source if chain == BuiltinChain.OUTPUT else None
        if side is not None and not side.negated:
            for cidr in side.cidrs:
                net = ipaddress.ip_network(cidr)
                if net.prefixlen == 32:
                    out.add(int(net.network_address))
    return out


def compare(original: NodeRuleset, compiled: NodeRuleset,
            sets: tuple[dict[str, list[str]], dict[str, list[str]]] = ({}, {}),
            firewall: Intervals = ()) -> tuple[int, list[Difference]]:
    """(packet classes compared, every difference); FIREWALL: the IPv4 addresses of the
    compiled member (its own and the VIPs), besides those the original rules name."""
    addresses = _own_addresses(original)
    own = addresses | {0xC6120001}
    own_default = min(addresses or {0xC6120001})
    a_sets = {k: tuple(v) for k, v in sets[0].items()}
    b_sets = {k: tuple(v) for k, v in sets[1].items()}
    packets = dict.fromkeys([*corner_packets(original, a_sets),
                             *corner_packets(compiled, b_sets),
                             *corner_packets(original, a_sets, table_name=TableName.NAT),
                             *corner_packets(compiled, b_sets, table_name=TableName.NAT)])
    # a RELATED packet (an ICMP error, a helper's connection) where a later one of the
    # connection is sampled: a ruleset accepting ESTABLISHED alone leaves it to the policy
    packets.update(dict.fromkeys(replace(p, ctstate="RELATED") for p in list(packets)
                                 if p.ctstate == "ESTABLISHED"))
    filters = (Evaluator(original, a_sets), Evaluator(compiled, b_sets))
    nats = (Evaluator(original, a_sets, table=TableName.NAT),
            Evaluator(compiled, b_sets, table=TableName.NAT))
    # fwc's automatic rules (VRRP, conntrackd sync and what `sync { allow }` lets through)
    # follow the cluster block, which the import only sketches: a packet one of them
    # decides is the cluster part's business, not a difference of the rules. Not every
    # `fwc auto` rule: the established one decided every later packet of a connection,
    # and an early DROP of the original before its established rule was never compared.
    auto = [(chain, rule.match) for ruleset_ in (original, compiled)
            for table, chain, rule in ruleset_.rules()
            if table == TableName.FILTER and rule.origin.label.startswith(CLUSTER_RULES)]
    differences: list[Difference] = []
    compared = 0
    for packet in packets:
        if packet.ctstate == "INVALID" or packet.protocol == proto.VRRP_PROTOCOL or "lo" in (
                packet.in_device, packet.out_device) or (packet.protocol == 6 and not packet.syn
                                                         and packet.ctstate == "NEW"):
            continue
        hook = packet.hook
        if hook == BuiltinChain.INPUT and packet.destination not in own:
            packet = replace(packet, destination=own_default)
        if hook == BuiltinChain.OUTPUT and packet.source not in own:
            packet = replace(packet, source=own_default)
        compared += 1
        a, b = (f.decide(packet) for f in filters)
        if _verdict(a.verdict, a.options) != _verdict(b.verdict, b.options) and not any(
                chain == hook and filters[0].matches(match, packet) for chain, match in auto):
            differences.append(Difference(packet.describe(), f"filter {hook}",
                                          _verdict(a.verdict, a.options),
                                          _verdict(b.verdict, b.options)))
        for nat_hook, seen in _nat_cases(packet, own, firewall, own_default):
            a, b = (n.decide(seen, nat_hook) for n in nats)
            va, vb = _verdict(a.verdict, a.options), _verdict(b.verdict, b.options)
            # ACCEPT and RETURN at the end of a nat chain both mean: not translated.
            va, vb = ("none" if v in ("ACCEPT", "RETURN") else v for v in (va, vb))
            if va != vb:
                differences.append(Difference(seen.describe(), f"nat {nat_hook}", va, vb))
    return compared, sorted(set(differences), key=lambda d: (d.where, d.packet))


def compare_texts(original: str, compiled: str, firewall: Intervals = ()) \
        -> tuple[int, list[Difference]]:
    """COMPILED may carry the ipset restore lines of ipsets.rules before its rules."""
    a: Saved = read_saved(original)
    b: Saved = read_saved(compiled)
    return compare(ruleset(a, "original"), ruleset(b, "compiled"), (a.sets, b.sets),
                   firewall)
