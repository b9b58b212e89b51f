"""A small evaluator of the lowered rule model: what a ruleset does with one packet.

Used to prove that the passes which rewrite a ruleset for speed (`fwc.backend.ipsets`,
`fwc.backend.arrange`) keep its meaning, and by the benchmark to count how many rules a
new connection traverses. It follows netfilter's semantics for the matches fwc
generates: first match wins in a chain, a jump to a user chain returns to the
next rule when that chain ends or says RETURN, LOG and CONNMARK go on, the
built-in chain's policy applies at its end. A LOG rate limit always matches (LOG
never decides); a rule's own rate or connection limit (`--hashlimit-above`,
`--connlimit-above`: beyond the limit) never does, so one packet is within every
limit.

"Rules traversed" counts iptables rules as rendered: a lowered rule with k
source CIDRs, l destination CIDRs and m multiport groups is k*l*m lines in the
kernel, each tested in turn when the packet does not match.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Mapping
from dataclasses import replace

from fwc import protocols as proto
from fwc.backend.lower.ruleset import (
    TERMINAL,
    AddressMatch,
    Chain,
    Match,
    NodeRuleset,
    Table,
    rendered_lines,
)
from fwc.model.intervals import Intervals, contains, normalise
from fwc.model.records import dataclass
from fwc.model.vocabulary import BuiltinChain, Target
from fwc.model.vocabulary import Table as TableName

TCP = proto.IP_PROTOCOLS["tcp"]
GOES_ON = frozenset({Target.LOG, Target.NFLOG, Target.CONNMARK, Target.CT, Target.TCPMSS})
MAX_DEPTH = 16  # iptables' own limit is larger; fwc never nests deeper than 3


@dataclass(frozen=True, slots=True)
class Packet:
    """The first packet of a connection (or a later one, by ctstate), as a hook sees it."""

    family: int
    source: int
    destination: int
    protocol: int
    dport: int | None = None
    icmp_type: int | None = None
    in_device: str | None = None  # None: sent by the node itself (OUTPUT)
    out_device: str | None = None  # None: for the node itself (INPUT)
    ctstate: str = "NEW"
    syn: bool = True  # TCP: the packet opens a connection (SYN without ACK)
    hop_limit: int = 64  # the IPv6 hop limit, or the IPv4 TTL

    @property
    def hook(self) -> BuiltinChain:
        if self.in_device is None:
            return BuiltinChain.OUTPUT
        return BuiltinChain.INPUT if self.out_device is None else BuiltinChain.FORWARD

    def describe(self) -> str:
        make = ipaddress.IPv4Address if self.family == 4 else ipaddress.IPv6Address
        port = f":{self.dport}" if self.dport is not None else ""
        return (f"{make(self.source)} -> {make(self.destination)}{port} proto {self.protocol} "
                f"in {self.in_device} out {self.out_device} {self.ctstate}"
                f"{'' if self.syn else ' !syn'}")


@dataclass(frozen=True, slots=True)
class Decision:
    """What happened: the final verdict with its options and every effect on the way."""

    verdict: str  # ACCEPT, DROP, REJECT, DNAT, ... or the built-in policy
    options: tuple[tuple[str, str], ...]
    effects: tuple[tuple[str, tuple[tuple[str, str], ...]], ...]  # LOG/CONNMARK in order
    traversed: int  # kernel rules tested

    @property
    def meaning(self) -> tuple[object, ...]:
        """What must stay the same when a ruleset is rearranged (not the traversal count)."""
        return (self.verdict, self.options, self.effects)


@functools.lru_cache(maxsize=65536)
def _intervals(cidrs: tuple[str, ...]) -> Intervals:
    out = []
    for cidr in cidrs:
        net = ipaddress.ip_network(cidr, strict=False)
        out.append((int(net.network_address), int(net.broadcast_address)))
    return normalise(out)


class Evaluator:
    """Evaluates packets against one table of a ruleset; `sets` maps ipset names to CIDRs.

    `costs` (chain name -> one number per rule) replaces the iptables count of
    "rules traversed" with the cost of testing each rule, matched or not: the nft
    reader (`fwc.analysis.nftread`) gives 1 to the first rule of each nft rule and 0
    to the rest of an expanded map or set lookup, so a lookup counts once.
    """

    def __init__(self, ruleset: NodeRuleset, sets: Mapping[str, tuple[str, ...]] | None = None,
                 table: TableName = TableName.FILTER,
                 costs: Mapping[str, tuple[int, ...]] | None = None) -> None:
        found = ruleset.table(table)
        self.table: Table = found if found is not None else Table(table, ())
        self.chains: dict[str, Chain] = {c.name: c for c in self.table.chains}
        self.sets = dict(sets or {})
        self.costs = dict(costs or {})

    def _address(self, address: AddressMatch, value: int) -> bool:
        if address.set_name is not None:
            inside = contains(_intervals(tuple(self.sets[address.set_name])), value)
        elif address.cidrs:
            inside = contains(_intervals(address.cidrs), value)
        else:
            return True
        return inside != address.negated

    def matches(self, match: Match, packet: Packet) -> bool:
        if match.in_device is not None and match.in_device != packet.in_device:
            return False
        if match.out_device is not None and match.out_device != packet.out_device:
            return False
        if match.protocol is not None and match.protocol != packet.protocol:
            return False
        if match.dports and (packet.dport is None or not any(
                p.low <= packet.dport <= p.high for p in match.dports)):
            return False
        if match.icmp_type is not None and match.icmp_type != packet.icmp_type:
            return False
        if match.tcp_not_syn and (packet.protocol != TCP or packet.syn):
            return False
        if match.ctstate and packet.ctstate not in match.ctstate:
            return False
        if match.hop_limit is not None and match.hop_limit != packet.hop_limit:
            return False
        if match.ttl is not None and match.ttl != packet.hop_limit:
            return False
        if match.tcp_flags is not None and (packet.protocol != TCP or not packet.syn):
            return False  # fwc's flag matches select a connection's first packet (SYN)
        if match.hashlimit is not None or match.connlimit is not None:
            return False  # "beyond the limit": a single packet is within every limit
        if match.statistic is not None and match.statistic[1] != 0:
            return False  # the nth match takes the first of every N: this packet
        return self._address(match.source, packet.source) and \
            self._address(match.destination, packet.destination)

    def decide(self, packet: Packet, chain: str | None = None) -> Decision:
        start = chain or packet.hook
        builtin = self.chains.get(start)
        if builtin is None:
            return Decision(Target.ACCEPT, (), (), 0)
        effects: list[tuple[str, tuple[tuple[str, str], ...]]] = []
        counter = [0]
        result = self._walk(builtin, packet, effects, counter, 0)
        if result is None:
            return Decision(builtin.policy or Target.ACCEPT, (), tuple(effects), counter[0])
        return Decision(result[0], result[1], tuple(effects), counter[0])

    def _walk(self, chain: Chain, packet: Packet,
              effects: list[tuple[str, tuple[tuple[str, str], ...]]], counter: list[int],
              depth: int) -> tuple[str, tuple[tuple[str, str], ...]] | None:
        if depth > MAX_DEPTH:
            raise RecursionError(f"chain nesting deeper than {MAX_DEPTH} at {chain.name}")
        costs = self.costs.get(chain.name)
        for index, rule in enumerate(chain.rules):
            if not self.matches(rule.match, packet):
                counter[0] += rendered_lines(rule.match) if costs is None else costs[index]
                continue
            counter[0] += 1 if costs is None else costs[index]
            target = rule.target
            if target in TERMINAL:
                return target, rule.target_options
            if target in GOES_ON:
                effects.append((target, rule.target_options))
                continue
            if target is Target.RETURN:
                return None if depth > 0 else (chain.policy or Target.ACCEPT, ())
            sub = self.chains.get(target)
            if sub is None:
                raise KeyError(f"jump to unknown chain {target}")
            got = self._walk(sub, packet, effects, counter, depth + 1)
            if got is not None:
                return got
        return None


# -- samples ---------------------------------------------------------------------------------

SAMPLE_PROTOCOLS = (TCP, proto.IP_PROTOCOLS["udp"], proto.IP_PROTOCOLS["icmp"])
UNKNOWN_DEVICE = "fwcx9"  # a device no rule names: the "any other interface" path
DEFAULT_PORT = 443
PORT_PROTOCOL_NUMBERS = frozenset(proto.IP_PROTOCOLS[p] for p in proto.PORT_PROTOCOLS)


def _edges(address: AddressMatch, sets: Mapping[str, tuple[str, ...]], family: int,
           fallback: int) -> list[int]:
    """The first and last address of the first and last block, and one just outside each."""
    cidrs = tuple(sets[address.set_name]) if address.set_name is not None else address.cidrs
    if not cidrs:
        return [fallback]
    top = 2 ** (32 if family == 4 else 128) - 1
    blocks = _intervals(cidrs)
    out: list[int] = []
    for lo, hi in (blocks[0], blocks[-1]):
        out.extend(v for v in (lo, hi, lo - 1, hi + 1) if 0 <= v <= top)
    return list(dict.fromkeys(out))


def _ports(match: Match) -> list[int | None]:
    if not match.dports:
        return [DEFAULT_PORT]
    out: list[int | None] = []
    for p in (match.dports[0], match.dports[-1]):
        out.extend(v for v in (p.low, p.high, p.low - 1, p.high + 1) if 0 <= v <= 65535)
    return list(dict.fromkeys(out))


def corner_packets(ruleset: NodeRuleset, sets: Mapping[str, tuple[str, ...]] | None = None,
                   fallback: tuple[int, int] | None = None,
                   table_name: TableName = TableName.FILTER) -> list[Packet]:
    """A deterministic sample: for every filter rule, packets on and just off its corners.

    Each rule gives a packet that hits it (first/last address of its first/last block on
    both sides, its lowest/highest port, its devices), then variations that change one
    thing: an address one below or above a block, a port just outside, another or an
    unknown device, another protocol, a later packet of the connection, a TCP packet
    without SYN. Packets go through the chain the rule is in (or every hook, for user
    chains). The rules sampled are those of TABLE_NAME (the filter table by default).
    """
    sets = dict(sets or {})
    table = ruleset.table(table_name)
    if table is None:
        return []
    family = ruleset.family
    if fallback is None:
        fallback = (0xC6120001, 0xC6130001) if family == 4 else \
            (0x20010DB8 << 96 | 1, 0x20010DB8 << 96 | 2)
    devices = sorted({d for _, _, r in ruleset.rules()
                      for d in (r.match.in_device, r.match.out_device) if d and d != "lo"})
    devices = devices or ["eth0", "eth1"]
    packets: dict[Packet, None] = {}
    counter = 0
    for chain in table.chains:
        hooks = [chain.name] if chain.builtin else \
            [BuiltinChain.FORWARD, BuiltinChain.INPUT, BuiltinChain.OUTPUT]
        for rule in chain.rules:
            m = rule.match
            counter += 1
            sources = _edges(m.source, sets, family, fallback[0])
            destinations = _edges(m.destination, sets, family, fallback[1])
            protocols = [m.protocol] if m.protocol is not None else \
                [SAMPLE_PROTOCOLS[counter % len(SAMPLE_PROTOCOLS)]]
            ports = _ports(m)
            for hook in hooks:
                in_dev = m.in_device or devices[counter % len(devices)]
                out_dev = m.out_device or devices[(counter + 1) % len(devices)]
                if hook == BuiltinChain.INPUT:
                    out_dev = None
                elif hook == BuiltinChain.OUTPUT:
                    in_dev = None
                if hook == BuiltinChain.OUTPUT and m.in_device is not None:
                    continue
                if hook == BuiltinChain.INPUT and m.out_device is not None:
                    continue
                icmp = m.icmp_type if m.icmp_type is not None else 8
                for protocol in protocols:
                    base = Packet(family, sources[0], destinations[0], protocol,
                                  ports[0] if protocol in PORT_PROTOCOL_NUMBERS else None,
                                  icmp if protocol in (1, 58) else None, in_dev, out_dev,
                                  hop_limit=m.hop_limit or m.ttl or 64)
                    variants = [base]
                    variants += [replace(base, source=s) for s in sources[1:]]
                    variants += [replace(base, destination=d) for d in destinations[1:]]
                    if base.dport is not None:
                        variants += [replace(base, dport=p) for p in ports[1:]]
                    variants.append(replace(base, ctstate="ESTABLISHED"))
                    variants.append(replace(base, ctstate="INVALID"))
                    if protocol == TCP:
                        variants.append(replace(base, syn=False))
                    other = [p for p in SAMPLE_PROTOCOLS if p != protocol][0]
                    # a TCP or UDP packet always has a port; an ICMP one never has
                    variants.append(replace(base, protocol=other,
                                            dport=None if other == 1
                                            else DEFAULT_PORT if base.dport is None
                                            else base.dport,
                                            icmp_type=8 if other == 1 else None))
                    if in_dev is not None:
                        for dev in (*devices, UNKNOWN_DEVICE):
                            if dev != in_dev:
                                variants.append(replace(base, in_device=dev))
                    if out_dev is not None:
                        for dev in (*devices, UNKNOWN_DEVICE):
                            if dev != out_dev:
                                variants.append(replace(base, out_device=dev))
                    for packet in variants:
                        packets[packet] = None
    return list(packets)
