"""First-match classification of packet sets, per cluster member.

`MemberView.build(cluster, member)` compiles the member's rules once into
indexed box lists (per family: one per filter chain, one per NAT stage).
`classify(view, traffic)` partitions a `TrafficClass` into `Piece`s, each a
box of packets with one outcome: chain, verdict, deciding rule (None for the
chain's default policy or the automatic loopback rule) and the NAT applied.

Semantics (decided for the whole project; `fwc compile` emits the same):

- Chains: traffic to a firewall address (the member's own addresses or any
  VIP) is INPUT, traffic from one is OUTPUT, the rest FORWARD; firewall to
  firewall is loopback, always accepted. Defaults: INPUT drop, FORWARD drop,
  OUTPUT accept.
- Endpoints: as `fwc.model.semantics` defines them for the compiler and the checks
  (`endpoint_intervals`): `firewall` is the member's addresses plus every VIP;
  `any` is every address except those; an item made only of firewall
  addresses (a VIP, a member's address) stands for them, any other item
  (`lan`) for its addresses that are not the firewall's; negated items are
  subtracted; a list of only negated items means `any` minus them.
- `only M` rules exist on M only. `in`/`out` name logical interfaces.
- Only NEW connections are classified (established/related is always
  accepted).
- NAT: traffic arriving from outside first meets the dnat stage (dnat and
  nonat rules in nat order, first match; nonat exempts). The filter sees the
  translated destination and port, and the chain and out interface follow the
  translated destination. Accepted FORWARD and OUTPUT traffic then meets the
  snat stage (snat, masquerade, nonat; first match), which changes the reported
  NAT but never the verdict.
- Interfaces: a traffic class that names no `in`/`out` interface gets them
  from the member's connected subnets (a source inside a subnet arrives on
  that interface, a destination inside one leaves by it; addresses outside
  every subnet may use any interface), unless it asks for every interface
  (`route_in=False`: expectations without `in` hold for any arrival
  interface, as docs/language.md says).

Pieces are reported in the original packet's terms (before DNAT), so that a
query for `uplink.vip:80` answers about `uplink.vip:80`.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from fwc.analysis.index import RuleBox, RuleList
from fwc.analysis.space import (
    ALL_SERVICES,
    LOCAL,
    PORT_PROTOCOL_NUMBERS,
    PORT_SHIFT,
    Box,
    coalesce,
    full_addresses,
    service_intervals,
)
from fwc.model import (
    Cluster,
    Endpoint,
    FilterRule,
    Member,
    NatRule,
    NatTarget,
    Rule,
    ServiceMatch,
)
from fwc.model.addresses import AddressSet
from fwc.model.intervals import Intervals, contains, intersect, normalise, subtract, union
from fwc.model.semantics import endpoint_intervals
from fwc.model.vocabulary import FilterAction, NatAction, NatStage

FAMILIES = (4, 6)
CHAINS = ("input", "forward", "output")
# The defaults without a `default { }` block; a cluster's own are `Cluster.defaults`.
DEFAULT_POLICY = {"input": FilterAction.DROP, "forward": FilterAction.DROP,
                  "output": FilterAction.ACCEPT, "local": FilterAction.ACCEPT}

# What a traffic class's address side may be: a policy endpoint (any/firewall
# resolved per member), a plain address set, or None for every address.
AddressSpec = Endpoint | AddressSet | None


@dataclass(frozen=True, slots=True)
class TrafficClass:
    """A set of packets described in member-independent terms."""

    source: AddressSpec
    destination: AddressSpec
    services: tuple[ServiceMatch, ...] = ()  # empty: every protocol
    in_interface: str | None = None  # None: from routing (connected subnets)
    out_interface: str | None = None
    route_in: bool = True  # False: no in_interface means every interface, spoofing included
    route_out: bool = True


@dataclass(frozen=True, slots=True)
class NatStep:
    """The NAT rule that decided a piece in one stage, and what it translates to."""

    rule: NatRule
    address: str | None  # None for nonat
    port: int | None

    @property
    def kind(self) -> NatAction:
        return self.rule.action

    def __str__(self) -> str:
        if self.address is None:
            return "no NAT (nonat)"
        port = f":{self.port}" if self.port is not None else ""
        address = f"[{self.address}]" if ":" in self.address and port else self.address
        return f"{self.kind} to {address}{port}"


@dataclass(frozen=True, slots=True)
class Piece:
    """Packets with one outcome. `rule` is None when the default policy decides."""

    box: Box  # in the original packet's terms
    chain: str  # input, forward, output or local
    verdict: FilterAction
    rule: FilterRule | None
    dnat: NatStep | None = None
    snat: NatStep | None = None

    @property
    def accepted(self) -> bool:
        return self.verdict is FilterAction.ACCEPT

    @property
    def decided_by(self) -> str:
        """The rule's location, or which default decides."""
        if self.rule is not None and self.rule.conditional:
            # fwc answers for traffic within the limit; beyond it the later rules decide
            return f"{self.rule.location} (within its limit)"
        if self.rule is not None:
            return self.rule.location
        if self.chain == "local":
            return "automatic loopback rule (always accepted)"
        return f"default policy of {self.chain.upper()} ({self.verdict})"

    def outcome(self) -> tuple[object, ...]:
        """Everything but the box: pieces with equal outcomes may be merged."""
        return (self.chain, self.verdict, self.rule, self.dnat, self.snat)


class MemberView:
    """One member's rules, compiled once into indexed boxes; read-only afterwards."""

    def __init__(self, cluster: Cluster, member: Member) -> None:
        self.cluster = cluster
        self.member = member
        self.firewall = cluster.firewall_addresses(member)
        self.interfaces = frozenset(link.interface for link in member.links)
        self.all_in = self.interfaces | {LOCAL}
        self.regions: dict[tuple[int, str], Box] = {}
        self.filter: dict[tuple[int, str], RuleList] = {}
        self.dnat: dict[int, RuleList] = {}
        self.snat: dict[int, RuleList] = {}
        self.connected: dict[int, list[tuple[str, Intervals]]] = {}
        rules = [r for r in cluster.rules if r.only in (None, member.name)]
        nat = [r for r in cluster.nat if r.only in (None, member.name)]
        for family in FAMILIES:
            self._build_family(family, rules, nat)

    @classmethod
    def build(cls, cluster: Cluster, member: Member) -> MemberView:
        return cls(cluster, member)

    # -- construction ------------------------------------------------------------
    def _regions(self, family: int) -> dict[str, Box]:
        fw = self.firewall.family(family)
        outside = subtract(full_addresses(family), fw)
        local = frozenset({LOCAL})
        ifaces = self.interfaces
        return {
            "input": Box(family, outside, fw, ALL_SERVICES, ifaces, local),
            "forward": Box(family, outside, outside, ALL_SERVICES, ifaces, ifaces),
            "output": Box(family, fw, outside, ALL_SERVICES, local, ifaces),
            "local": Box(family, fw, fw, ALL_SERVICES, local, local),
        }

    def rule_box(self, rule: Rule, family: int,
                 memo: dict[tuple[object, ...], Intervals] | None = None) -> Box | None:
        """The packets a rule matches on this member in one family (None: none)."""
        src = self._endpoint(rule.source, family, memo)
        dst = self._endpoint(rule.destination, family, memo)
        if memo is None:
            services = service_intervals(rule.services, family)
        else:
            key = ("services", rule.services)
            services = memo.get(key)
            if services is None:
                services = memo[key] = service_intervals(rule.services, family)
        in_ifaces = frozenset({rule.in_interface}) if rule.in_interface else self.all_in
        out_ifaces = frozenset({rule.out_interface}) if rule.out_interface else self.all_in
        box = Box(family, src, dst, services, in_ifaces, out_ifaces)
        return None if box.is_empty() else box

    def _endpoint(self, endpoint: Endpoint, family: int,
                  memo: dict[tuple[object, ...], Intervals] | None) -> Intervals:
        if memo is None:
            return endpoint_intervals(endpoint, self.firewall, family)
        # Rules reuse the same few thousand objects: resolve each combination once.
        key = tuple((i.kind, i.negated, i.object_name or i.label) for i in endpoint.items)
        found = memo.get(key)
        if found is None:
            found = memo[key] = endpoint_intervals(endpoint, self.firewall, family)
        return found

    def _build_family(self, family: int, rules: list[FilterRule], nat: list[NatRule]) -> None:
        for chain, region in self._regions(family).items():
            self.regions[(family, chain)] = region
        memo: dict[tuple[object, ...], Intervals] = {}
        entries = [(r, box) for r in rules if (box := self.rule_box(r, family, memo))]
        # One list serves every chain: a query box lies inside one chain's region, so
        # rules outside it never match, and the address index keeps them out of the way.
        shared = RuleList(family, entries)
        for chain in CHAINS:
            self.filter[(family, chain)] = shared
        dnat, snat = [], []
        for rule in nat:
            if rule.action is NatAction.DNAT and not any(
                    t.addresses.family(family) for t in rule.targets):
                continue  # no address to translate to in this family
            box = self.rule_box(rule, family, memo)
            if box is None:
                continue
            # The stages the compiler puts the rule in (a nonat with only `in` or only
            # `out` works in one stage, like its kernel rule).
            stages = rule.stages
            if NatStage.PREROUTING in stages:
                dnat.append((rule, box))
            if NatStage.POSTROUTING in stages:
                snat.append((rule, box))
        self.dnat[family] = RuleList(family, dnat)
        self.snat[family] = RuleList(family, snat)
        connected: list[tuple[str, Intervals, int]] = []
        for link in self.member.links:
            nets = [a.network for a in link.addresses if a.version == family]
            iface = self.cluster.interface(link.interface)
            if iface is not None:
                nets += [v.network for v in iface.vips_of(family)]
            for net in nets:
                connected.append((link.interface, AddressSet.of(net).family(family),
                                  net.prefixlen))
        connected.sort(key=lambda c: -c[2])  # longest prefix first, like the kernel
        self.connected[family] = [(name, ivs) for name, ivs, _ in connected]

    # -- routing -------------------------------------------------------------------
    def route(self, addresses: Intervals, family: int) -> list[tuple[Intervals, frozenset[str]]]:
        """Split addresses by the interface that reaches them (connected subnets)."""
        out: list[tuple[Intervals, frozenset[str]]] = []
        rest = addresses
        for name, subnet in self.connected.get(family, ()):
            if not rest:
                break
            part = intersect(rest, subnet)
            if part:
                out.append((part, frozenset({name}) & self.interfaces))
                rest = subtract(rest, subnet)
        if rest:
            out.append((rest, self.interfaces))
        return [(a, i) for a, i in out if i]

    def entry_boxes(self, traffic: TrafficClass) -> Iterator[tuple[Box, str]]:
        """The traffic class as boxes, each inside one chain region, interfaces resolved."""
        for family in FAMILIES:
            src = endpoint_intervals(traffic.source, self.firewall, family)
            dst = endpoint_intervals(traffic.destination, self.firewall, family)
            services = service_intervals(traffic.services, family)
            if not (src and dst and services):
                continue
            in_ifaces = frozenset({traffic.in_interface}) if traffic.in_interface \
                else self.all_in
            out_ifaces = frozenset({traffic.out_interface}) if traffic.out_interface \
                else self.all_in
            query = Box(family, src, dst, services, in_ifaces, out_ifaces)
            for chain in (*CHAINS, "local"):
                part = query.intersect(self.regions[(family, chain)])
                if part is None:
                    continue
                yield from ((routed, chain) for routed in self.route_box(
                    part, chain, route_in=traffic.route_in and traffic.in_interface is None,
                    route_out=traffic.route_out and traffic.out_interface is None))

    def route_box(self, box: Box, chain: str, *, route_in: bool = True,
                  route_out: bool = True) -> list[Box]:
        """Narrow a box's interfaces to those its addresses are reached by."""
        boxes = [box]
        if route_in and chain in ("input", "forward"):
            boxes = [b.with_(src=part, in_ifaces=ifaces & b.in_ifaces)
                     for b in boxes for part, ifaces in self.route(b.src, b.family)]
        if route_out and chain in ("forward", "output"):
            boxes = [b.with_(dst=part, out_ifaces=ifaces & b.out_ifaces)
                     for b in boxes for part, ifaces in self.route(b.dst, b.family)]
        return [b for b in boxes if not b.is_empty()]

    def chain_of(self, family: int, destination: int) -> str:
        return "input" if contains(self.firewall.family(family), destination) else "forward"


# -- first match -------------------------------------------------------------------
def first_match(rules: RuleList, box: Box) -> Iterator[tuple[Box, RuleBox | None]]:
    """Partition `box` by the first rule of `rules` each packet matches (None: no rule).

    Output-sensitive: each part remembers the position after the rule that
    carved it, since no earlier rule can match it (they missed its parent), and
    asks the index only for its own candidates. The cost is about the number
    of parts times the rules skipped per part, not rules times parts.
    """
    stack: list[tuple[Box, int]] = [(box, 0)]
    while stack:
        part, start = stack.pop()
        decided = None
        hit = None
        for candidate in rules.candidates(part, start):
            hit = part.intersect(candidate.box)
            if hit is not None:
                decided = candidate
                break
        if decided is None or hit is None:
            yield part, None
            continue
        yield hit, decided
        following = decided.position + 1
        stack.extend((rest, following) for rest in reversed(part.minus(hit)))


def _per_protocol(services: Intervals) -> dict[int, Intervals]:
    """Split the service axis by protocol (adjacent blocks merge in normal form)."""
    out: dict[int, list[tuple[int, int]]] = {}
    for lo, hi in services:
        while lo <= hi:
            number = lo >> PORT_SHIFT
            end = min(hi, (number << PORT_SHIFT) | 0xFFFF)
            out.setdefault(number, []).append((lo, end))
            lo = end + 1
    return {n: tuple(v) for n, v in out.items()}


def _translate(view: MemberView, box: Box, step: NatRule, forced_out: str | None,
               entry_terms: bool, to: NatTarget | None = None) \
        -> tuple[Box, str, NatStep, Callable[[Box], Box]]:
    """The box as the filter sees it after DNAT to TO (default: the rule's target), its
    chain, and the way back. A range or port range is represented by its first address
    and port (the kernel picks one per connection)."""
    to = to or step.target
    assert to is not None
    family = box.family
    target = to.addresses.family(family)[0][0]
    port = to.port
    services = box.services
    if port is not None:
        mapped: list[tuple[int, int]] = []
        for number, intervals in _per_protocol(box.services).items():
            if number in PORT_PROTOCOL_NUMBERS:
                point = (number << PORT_SHIFT) | port
                mapped.append((point, point))
            else:
                mapped.extend(intervals)
        services = normalise(mapped)
    chain = view.chain_of(family, target)
    if chain == "input":
        out_ifaces = frozenset({LOCAL})
    elif forced_out is not None:
        out_ifaces = frozenset({forced_out})
    else:
        routes = view.route(((target, target),), family)
        out_ifaces = routes[0][1] if routes else view.interfaces
    translated = box.with_(dst=((target, target),), services=services, out_ifaces=out_ifaces)
    original = box

    def back(part: Box) -> Box:
        restored = original.services
        if port is not None:
            by_protocol = _per_protocol(original.services)
            kept: list[tuple[int, int]] = []
            for number, intervals in _per_protocol(part.services).items():
                kept.extend(by_protocol.get(number, intervals) if number in PORT_PROTOCOL_NUMBERS
                            else intervals)
            restored = normalise(kept)
        else:
            restored = part.services
        if entry_terms:
            return part.with_(dst=original.dst, services=restored,
                              out_ifaces=original.out_ifaces)
        return part.with_(dst=original.dst, services=restored)

    address = str(ipaddress.ip_address(target) if family == 4
                  else ipaddress.IPv6Address(target))
    return translated, chain, NatStep(step, address, port), back


def _snat_step(view: MemberView, rule: NatRule, family: int, out_ifaces: frozenset[str]) \
        -> NatStep:
    if rule.action is NatAction.NONAT:
        return NatStep(rule, None, None)
    if rule.action is NatAction.MASQUERADE:
        names = sorted(out_ifaces) if rule.out_interface is None else [rule.out_interface]
        for name in names:
            link = view.member.link(name)
            for address in link.addresses if link else ():
                if address.version == family:
                    return NatStep(rule, str(address.ip), None)
        return NatStep(rule, f"address of {', '.join(names)}", None)
    assert rule.target is not None
    return NatStep(rule, rule.target.address_text(family) or rule.target.label, None)


def classify_box(view: MemberView, box: Box, chain: str, forced_out: str | None = None,
                 *, entry_terms: bool = False) -> Iterator[Piece]:
    """Pieces of one box that lies inside one chain region (see `MemberView.entry_boxes`).

    Pieces keep the original packet's fields, except that after DNAT their out
    interface is the one routing picks for the new destination; with
    `entry_terms` they keep the original out interface too, so that every piece
    is a sub-box of `box` (what comparing two policies needs).
    """
    if chain == "local":
        yield Piece(box, "local", FilterAction.ACCEPT, None)
        return
    family = box.family
    if chain in ("input", "forward"):
        stages = first_match(view.dnat[family], box)
    else:
        stages = iter([(box, None)])
    for part, nat in stages:
        if nat is None or nat.rule.action is NatAction.NONAT:
            dnat = NatStep(nat.rule, None, None) if nat is not None else None
            yield from _filter(view, part, chain, dnat, lambda b: b)
            continue
        # A dnat that shares load sends each connection to one of its backends: every
        # backend's outcome is a possible one (pieces of the same packets, one per backend).
        for target in nat.rule.targets:
            if not target.addresses.family(family):
                continue
            translated, new_chain, step, back = _translate(view, part, nat.rule, forced_out,
                                                           entry_terms, target)
            yield from _filter(view, translated, new_chain, step, back)


def _filter(view: MemberView, box: Box, chain: str, dnat: NatStep | None,
            back: Callable[[Box], Box]) -> Iterator[Piece]:
    for part, decided in first_match(view.filter[(box.family, chain)], box):
        rule = decided.rule if decided is not None else None
        verdict = rule.action if rule is not None else view.cluster.defaults.of(chain)
        if verdict is not FilterAction.ACCEPT or chain == "input":
            yield Piece(back(part), chain, verdict, rule, dnat, None)
            continue
        for nat_part, nat in first_match(view.snat[box.family], part):
            snat = _snat_step(view, nat.rule, box.family, nat_part.out_ifaces) \
                if nat is not None else None
            yield Piece(back(nat_part), chain, verdict, rule, dnat, snat)


def merge_routed(boxes: Iterable[Box]) -> list[Box]:
    """Boxes for reading: glue parts that routing split by interface.

    Interfaces not given by the user come from the connected subnets (a source
    arrives on the interface of its subnet), so `from lan in lan` and `from
    any-other in any` read better as `from any`. The union of products may
    also contain spoofed combinations, which is why `TrafficChange.boxes`
    keeps the exact boxes.
    """
    current = coalesce(boxes)
    by_destination: dict[tuple[object, ...], Box] = {}
    for box in current:
        key = (box.family, box.dst, box.services, box.out_ifaces)
        seen = by_destination.get(key)
        by_destination[key] = box if seen is None else seen.with_(
            src=union(seen.src, box.src), in_ifaces=seen.in_ifaces | box.in_ifaces)
    by_source: dict[tuple[object, ...], Box] = {}
    for box in by_destination.values():
        key = (box.family, box.src, box.services, box.in_ifaces)
        seen = by_source.get(key)
        by_source[key] = box if seen is None else seen.with_(
            dst=union(seen.dst, box.dst), out_ifaces=seen.out_ifaces | box.out_ifaces)
    return coalesce(by_source.values())


def merge_routed_pieces(pieces: list[Piece]) -> list[Piece]:
    """`merge_routed` per outcome: one piece per outcome and readable box."""
    groups: dict[tuple[object, ...], list[Piece]] = {}
    for piece in pieces:
        groups.setdefault((piece.box.family, *piece.outcome()), []).append(piece)
    out: list[Piece] = []
    for group in groups.values():
        first = group[0]
        out.extend(Piece(box, first.chain, first.verdict, first.rule, first.dnat, first.snat)
                   for box in merge_routed(p.box for p in group))
    return out


def merge_pieces(pieces: list[Piece]) -> list[Piece]:
    """Glue pieces with the same outcome back together, keeping first-seen order."""
    groups: dict[tuple[object, ...], list[Piece]] = {}
    for piece in pieces:
        groups.setdefault((piece.box.family, *piece.outcome()), []).append(piece)
    out: list[Piece] = []
    for group in groups.values():
        first = group[0]
        for box in coalesce(p.box for p in group):
            out.append(Piece(box, first.chain, first.verdict, first.rule, first.dnat,
                             first.snat))
    return out


def classify(view: MemberView, traffic: TrafficClass, *, merge: bool = True) -> list[Piece]:
    """Every packet of `traffic` on this member, partitioned by outcome."""
    pieces: list[Piece] = []
    for box, chain in view.entry_boxes(traffic):
        pieces.extend(classify_box(view, box, chain, traffic.out_interface))
    return merge_pieces(pieces) if merge else pieces


def member_views(cluster: Cluster) -> list[MemberView]:
    return [MemberView(cluster, member) for member in cluster.members]
