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
  OUTPUT accept. In active-active a member holds only its groups' VIPs in normal
  operation (`MemberView.local`): another group's VIP is a routed address there,
  and VIP traffic on that group's interfaces is not met at all (`MemberView.seen`;
  docs/analysis.md, "VIPs held by the other member").
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

from fwc import protocols as proto
from fwc.analysis.handling import vips_elsewhere
from fwc.analysis.index import RuleBox, RuleList
from fwc.analysis.space import (
    ALL_SERVICES,
    LOCAL,
    PORT_PROTOCOL_NUMBERS,
    PORT_SHIFT,
    Box,
    coalesce,
    full_addresses,
    protocol_block,
    service_intervals,
)
from fwc.backend.lower import MULTICAST, AutoRule, automatic_rules
from fwc.model import (
    Cluster,
    Endpoint,
    FilterRule,
    IPNetwork,
    Member,
    NatRule,
    NatTarget,
    Rule,
    ServiceMatch,
)
from fwc.model.addresses import AddressSet
from fwc.model.intervals import Intervals, contains, intersect, normalise, subtract, union
from fwc.model.records import dataclass
from fwc.model.semantics import (
    endpoint_intervals,
    firewall_kept,
    firewall_left_out,
    firewall_traffic_side,
    side_of,
)
from fwc.model.topology import MemberRouting, TableRoute, member_routing, subnets
from fwc.model.vocabulary import FilterAction, NatAction, NatStage

FAMILIES = (4, 6)
CHAINS = ("input", "forward", "output")

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
    auto: str | None = None  # the automatic rule that decides (its comment), if one does

    @property
    def accepted(self) -> bool:
        return self.verdict is FilterAction.ACCEPT

    @property
    def decided_by(self) -> str:
        """The rule's location, or which automatic rule or default decides."""
        if self.rule is not None and self.rule.conditional:
            # fwc answers for traffic within the limit; beyond it the later rules decide
            return f"{self.rule.location} (within its limit)"
        if self.rule is not None:
            return self.rule.location
        if self.auto is not None:
            return f"automatic rule '{self.auto}'"
        if self.chain == "local":
            return "automatic loopback rule (always accepted)"
        return f"default policy of {self.chain.upper()} ({self.verdict})"

    def outcome(self) -> tuple[object, ...]:
        """Everything but the box: pieces with equal outcomes may be merged."""
        return (self.chain, self.verdict, self.rule, self.dnat, self.snat, self.auto)

    def with_box(self, box: Box) -> Piece:
        return Piece(box, self.chain, self.verdict, self.rule, self.dnat, self.snat, self.auto)


class MemberView:
    """One member's rules, compiled once into indexed boxes; read-only afterwards.

    With ON_DEMAND a family is compiled when `entry_boxes` first meets traffic of it: a
    question about IPv4 addresses never builds the IPv6 rule boxes (`fwc query` of a
    large policy, expectations). Only readers that go through `entry_boxes` (`classify`,
    and what they then read of a piece's own family) may use it; readers of the
    per-family tables themselves (the comparison of two versions) build the view whole,
    the default."""

    def __init__(self, cluster: Cluster, member: Member, *, takeover: bool = False,
                 on_demand: bool = False) -> None:
        self.cluster = cluster
        self.member = member
        # `firewall` as the policy means it (the member's addresses plus every VIP), and
        # what the member's kernel holds in normal operation: its addresses and the VIPs
        # of the interfaces it is the normal handler of (fwc.analysis.handling). With
        # TAKEOVER, or on a member that holds no VIP while all are well (the backup of a
        # single-master cluster), it holds every VIP: the state after a failover.
        self.firewall = cluster.firewall_addresses(member)
        self.takeover = takeover
        self.elsewhere_vips = () if takeover else vips_elsewhere(cluster, member.name)
        self.elsewhere = AddressSet.union(a for _, a in self.elsewhere_vips)
        self.local = self.firewall - self.elsewhere if self.elsewhere else self.firewall
        self.unseen: dict[int, list[Box]] = {}
        self.interfaces = frozenset(link.interface for link in member.links)
        self.all_in = self.interfaces | {LOCAL}
        self._one_interface: dict[str, frozenset[str]] = {}
        self.regions: dict[tuple[int, str], Box] = {}
        self.filter: dict[tuple[int, str], RuleList] = {}
        self.dnat: dict[int, RuleList] = {}
        self.snat: dict[int, RuleList] = {}
        self.connected: dict[int, list[tuple[str, Intervals]]] = {}
        self.routing: dict[int, MemberRouting] = {}
        self.lookups: dict[int, _Lookups] = {}
        # The automatic rules the compiled ruleset puts before the policy's (fwc.backend.lower:
        # one source): per family, those of INPUT and OUTPUT, and those of INPUT for
        # multicast groups, whose packets the node takes in although no `firewall`
        # address is their destination.
        self.auto: dict[tuple[int, str], RuleList] = {}
        self.local_groups: dict[int, RuleList] = {}
        # The adverts and states for a group the node joins on a device (keepalived's,
        # conntrackd's: a rule for one group address), from any sender: the kernel takes
        # them in (INPUT) whether the automatic rule accepts them or not, so those it
        # leaves (another sender than a peer) meet INPUT's default, never FORWARD's.
        # (Other protocols to the group are modelled as forwarded, as before.)
        self.joined_groups: dict[int, RuleList] = {}
        self._rules = [r for r in cluster.rules if r.only in (None, member.name)]
        self._nat = [r for r in cluster.nat if r.only in (None, member.name)]
        self._built: set[int] = set()
        if not on_demand:
            for family in FAMILIES:
                self._ensure(family)

    @classmethod
    def build(cls, cluster: Cluster, member: Member, *, takeover: bool = False) -> MemberView:
        return cls(cluster, member, takeover=takeover)

    # -- construction ------------------------------------------------------------
    def _regions(self, family: int) -> dict[str, Box]:
        fw = self.local.family(family)
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
                 memo: dict[tuple[object, ...], Intervals] | None = None, *,
                 need_addresses: bool = True) -> Box | None:
        """The packets a rule matches on this member in one family (None: none).

        Without NEED_ADDRESSES both sides are every address (the caller sets them)."""
        if need_addresses:
            src = self._endpoint(rule.source, family, memo)
            dst = self._endpoint(rule.destination, family, memo)
        else:
            src = dst = full_addresses(family)
        if memo is None:
            services = service_intervals(rule.services, family)
        else:
            key = ("services", rule.services)
            services = memo.get(key)
            if services is None:
                services = memo[key] = service_intervals(rule.services, family)
        in_ifaces = self._only(rule.in_interface) if rule.in_interface else self.all_in
        out_ifaces = self._only(rule.out_interface) if rule.out_interface else self.all_in
        box = Box(family, src, dst, services, in_ifaces, out_ifaces)
        return None if box.is_empty() else box

    def _only(self, interface: str) -> frozenset[str]:
        """{INTERFACE}, one set per interface for every rule naming it (a set of its own
        per rule was a third of a view's memory on the benchmark's interfaces shape)."""
        found = self._one_interface.get(interface)
        if found is None:
            found = self._one_interface[interface] = frozenset((interface,))
        return found

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

    def _elsewhere_box(self, box: Box | None, rule: Rule, family: int, forward: bool) \
            -> Box | None:
        """BOX with the VIPs this member does not hold resolved as its compiled chains see
        them: plain addresses the kernel routes on (docs/analysis.md, "VIPs held by the
        other member"). In FORWARD a rule matches such a VIP when `any` or a non-firewall
        item (a network around it) covers it; in INPUT's source, OUTPUT's destination and
        NAT, where the compiler writes the named firewall part too, when that names it."""
        held = self.elsewhere.family(family)
        # A NAT rule leaves the firewall out where its hook sees it (its destination
        # before routing, its source after): held VIPs included (fwc.backend.lower,
        # `nat_firewall_left_out`).
        stages = {firewall_traffic_side(stage): stage for stage in rule.stages} \
            if isinstance(rule, NatRule) else {}
        src = _elsewhere_side(rule.source, box.src if box else (), self.firewall, held,
                              family, forward, stages.get("source"))
        dst = _elsewhere_side(rule.destination, box.dst if box else (), self.firewall, held,
                              family, forward, stages.get("destination"))
        if box is None:
            if not (src and dst):
                return None
            base = self.rule_box(rule, family, None, need_addresses=False)
            return None if base is None else base.with_(src=src, dst=dst)
        out = box.with_(src=src, dst=dst)
        return None if out.is_empty() else out

    def _after_routing(self, rule: NatRule, box: Box, family: int) -> Box:
        """BOX (RULE's packets as the policy reads its sides) as its POSTROUTING rule
        matches them: with the firewall addresses its source covers without naming them
        (`firewall_kept`: the compiled rule translates the firewall's own packets from
        an address inside a network it names)."""
        fw = self.firewall.only(family)
        kept = firewall_kept(side_of(rule.source, fw, family), fw, NatStage.POSTROUTING)
        if not kept:
            return box
        return box.with_(src=union(box.src, kept.family(family)))

    def _ensure(self, family: int) -> None:
        if family in self._built:
            return
        self._built.add(family)
        self._build_family(family, self._rules, self._nat)

    def _build_family(self, family: int, rules: list[FilterRule], nat: list[NatRule]) -> None:
        for chain, region in self._regions(family).items():
            self.regions[(family, chain)] = region
        memo: dict[tuple[object, ...], Intervals] = {}
        boxes = [(r, self.rule_box(r, family, memo)) for r in rules]
        entries = [(r, box) for r, box in boxes if box]
        # One list serves every chain: a query box lies inside one chain's region, so
        # rules outside it never match, and the address index keeps them out of the way.
        shared = RuleList(family, entries)
        for chain in CHAINS:
            self.filter[(family, chain)] = shared
        if self.elsewhere.family(family):
            # VIPs another member holds lie outside INPUT here and read differently per
            # chain (see _elsewhere_box): FORWARD gets a list of its own.
            forward = [(r, b) for r, box in boxes
                       if (b := self._elsewhere_box(box, r, family, True))]
            other = [(r, b) for r, box in boxes
                     if (b := self._elsewhere_box(box, r, family, False))]
            self.filter[(family, "forward")] = RuleList(family, forward)
            self.filter[(family, "input")] = self.filter[(family, "output")] = \
                RuleList(family, other)
            self.unseen[family] = self._unseen(family)
        dnat, snat = [], []
        for rule in nat:
            if not rule.works_in(family):
                continue  # no address to translate to in this family: no kernel rule
            box = self.rule_box(rule, family, memo)
            if self.elsewhere.family(family):
                box = self._elsewhere_box(box, rule, family, False)
            if box is None:
                continue
            # The stages the compiler puts the rule in (a nonat with only `in` or only
            # `out` works in one stage, like its kernel rule).
            stages = rule.stages
            if NatStage.PREROUTING in stages:
                dnat.append((rule, box))
            if NatStage.POSTROUTING in stages:
                snat.append((rule, self._after_routing(rule, box, family)))
        self.dnat[family] = RuleList(family, dnat)
        self.snat[family] = RuleList(family, snat)
        routing = self.routing[family] = member_routing(self.cluster, self.member, family)
        self.lookups[family] = _Lookups.of(routing, family, self.interfaces)
        self.connected[family] = [(name, _intervals(net, family))
                                  for name, net in subnets(self.cluster, self.member, family)]
        self._build_auto(family)

    def _build_auto(self, family: int) -> None:
        by_chain: dict[str, list[tuple[AutoRule, Box]]] = {"input": [], "output": []}
        groups: list[tuple[AutoRule, Box]] = []
        joined: list[tuple[AutoRule, Box]] = []
        devices = {link.device: link.interface for link in self.member.links}
        host = 32 if family == 4 else 128
        for auto in automatic_rules(self.cluster, self.member, family):
            box = _auto_box(auto, family, devices, self.all_in)
            if box is None:
                continue
            by_chain[auto.chain].append((auto, box))
            if auto.chain == "input" and auto.multicast:
                groups.append((auto, box.with_(out_ifaces=self.all_in)))
                if all(ipaddress.ip_network(c).prefixlen == host
                       for c in auto.match.destination.cidrs):
                    joined.append((auto, box.with_(src=full_addresses(family),
                                                   out_ifaces=self.all_in)))
        for chain, entries in by_chain.items():
            self.auto[(family, chain)] = RuleList(family, entries)  # type: ignore[arg-type]
        self.local_groups[family] = RuleList(family, groups)  # type: ignore[arg-type]
        self.joined_groups[family] = RuleList(family, joined)  # type: ignore[arg-type]

    # -- routing -------------------------------------------------------------------
    def route(self, addresses: Intervals, family: int) -> list[tuple[Intervals, frozenset[str]]]:
        """Split source addresses by the interfaces they may arrive on (reverse routing).

        A source arrives where the member routes it back to: its connected subnet, or
        the interface of its routes (every table's, so an address two uplinks'
        defaults cover may arrive on either); others by the fallback interfaces.
        """
        return self.lookups[family].reverse(addresses)

    def route_out(self, box: Box) -> list[tuple[Box, frozenset[str]]]:
        """Split a box by the interface the member sends each part by (docs/analysis.md)."""
        return self.lookups[box.family].forward(box)

    def entry_boxes(self, traffic: TrafficClass) -> Iterator[tuple[Box, str]]:
        """The traffic class as boxes, each inside one chain region, interfaces resolved."""
        for family in FAMILIES:
            src = endpoint_intervals(traffic.source, self.firewall, family)
            dst = endpoint_intervals(traffic.destination, self.firewall, family)
            services = service_intervals(traffic.services, family)
            if not (src and dst and services):
                continue
            self._ensure(family)
            in_ifaces = frozenset({traffic.in_interface}) if traffic.in_interface \
                else self.all_in
            out_ifaces = frozenset({traffic.out_interface}) if traffic.out_interface \
                else self.all_in
            query = Box(family, src, dst, services, in_ifaces, out_ifaces)
            for chain in (*CHAINS, "local"):
                part = query.intersect(self.regions[(family, chain)])
                if part is None:
                    continue
                for seen in self.seen(part):
                    yield from ((routed, chain) for routed in self.route_box(
                        seen, chain, route_in=traffic.route_in and traffic.in_interface is None,
                        route_out=traffic.route_out and traffic.out_interface is None))

    def _unseen(self, family: int) -> list[Box]:
        """What this member never meets in normal operation: packets for a VIP that
        arrive on an interface another member holds the VIPs of (senders there reach
        every VIP through that member: on the link, or through their gateway, its VIP),
        and packets from a VIP it does not hold (the holder's own traffic)."""
        every = full_addresses(family)
        vips = self.cluster.vips.family(family)
        foreign = frozenset(name for name, _ in self.elsewhere_vips) & self.interfaces
        out = [Box(family, every, vips, ALL_SERVICES, foreign, self.all_in)] \
            if vips and foreign else []
        out.append(Box(family, self.elsewhere.family(family), every, ALL_SERVICES,
                       self.all_in, self.all_in))
        return out

    def seen(self, box: Box) -> list[Box]:
        """BOX without the part this member never meets in normal operation (`_unseen`)."""
        parts = [box]
        for unseen in self.unseen.get(box.family, ()):
            parts = [rest for part in parts for rest in part.minus(unseen)]
        return parts

    def route_box(self, box: Box, chain: str, *, route_in: bool = True,
                  route_out: bool = True) -> list[Box]:
        """Narrow a box's interfaces to those its addresses are reached by."""
        boxes = [box]
        if route_in and chain in ("input", "forward"):
            boxes = [b.with_(src=part, in_ifaces=ifaces & b.in_ifaces)
                     for b in boxes for part, ifaces in self.route(b.src, b.family)]
        if route_out and chain in ("forward", "output"):
            boxes = [part.with_(out_ifaces=ifaces & part.out_ifaces)
                     for b in boxes for part, ifaces in self.route_out(b)]
        return [b for b in boxes if not b.is_empty()]

    def chain_of(self, family: int, destination: int) -> str:
        return "input" if contains(self.local.family(family), destination) else "forward"


def _elsewhere_side(endpoint: Endpoint, resolved: Intervals, firewall: AddressSet,
                    held: Intervals, family: int, forward: bool,
                    nat_stage: NatStage | None = None) -> Intervals:
    """RESOLVED (a side as `endpoint_intervals` gives it) with its part among HELD (VIPs
    another member holds) replaced by what the compiled chain matches there: `any` or
    the non-firewall items (FORWARD), those and the named firewall part (elsewhere);
    NAT_STAGE: the side of a NAT rule on which that stage's hook meets the firewall's
    traffic, whose compiled rule RETURNs the firewall addresses it does not name
    (`fwc.model.semantics.firewall_left_out`)."""
    fw = firewall.only(family)
    side = side_of(endpoint, fw, family)
    if side.unbounded:
        names = full_addresses(family)
    else:
        names = (side.other if forward else side.named).family(family)
    if nat_stage is not None:
        names = subtract(names, firewall_left_out(side, fw, nat_stage).family(family))
    if side.excluded:
        names = subtract(names, side.excluded.family(family))
    return union(subtract(resolved, held), intersect(names, held))


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
        # The union over the parts policy routing may split the sources into.
        routed = view.route_out(box.with_(dst=((target, target),)))
        out_ifaces = frozenset().union(*(ifaces for _, ifaces in routed)) or view.interfaces
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
        for target in nat.rule.targets_in(family):
            translated, new_chain, step, back = _translate(view, part, nat.rule, forced_out,
                                                           entry_terms, target)
            yield from _filter(view, translated, new_chain, step, back)


def _automatic(view: MemberView, box: Box, chain: str, dnat: NatStep | None,
               back: Callable[[Box], Box], rest: list[Box]) -> Iterator[Piece]:
    """Pieces the automatic rules decide (they come first in the compiled chains); REST
    receives the parts they leave to the policy's rules."""
    if chain == "forward":
        # A multicast group the node joins is taken in (INPUT), though no firewall
        # address is its destination: only automatic rules ever accept it.
        for part, hit in first_match(view.local_groups[box.family], box):
            if hit is None:
                # (taken in first: a group's packets from a link-local source are the
                # members' own IPv6 adverts; what is left is forwarded, if anything)
                forwarded: list[Box] = []
                yield from _joined(view, part, dnat, back, forwarded)
                for left in forwarded:
                    yield from _not_forwarded(left, dnat, back, rest)
                continue
            auto: AutoRule = hit.rule  # type: ignore[assignment]
            yield Piece(back(part.with_(out_ifaces=frozenset({LOCAL}))), "input",
                        auto.verdict, None, dnat, None, auto.label)
        return
    rules = view.auto.get((box.family, chain))
    if rules is None:
        rest.append(box)
        return
    for part, hit in first_match(rules, box):
        if hit is None:
            rest.append(part)
            continue
        auto = hit.rule  # type: ignore[assignment]
        yield Piece(back(part), chain, auto.verdict, None, dnat, None, auto.label)


def _joined(view: MemberView, box: Box, dnat: NatStep | None, back: Callable[[Box], Box],
            rest: list[Box]) -> Iterator[Piece]:
    """Pieces of BOX (no automatic rule accepts them) sent to a group the node joins on
    their device: taken in, they pass INPUT's policy rules, none of which names a group
    (the compiled INPUT rules test the firewall's addresses), to its default. REST
    receives the other parts, which FORWARD decides."""
    for part, hit in first_match(view.joined_groups[box.family], box):
        if hit is None:
            rest.append(part)
            continue
        yield Piece(back(part.with_(out_ifaces=frozenset({LOCAL}))), "input",
                    view.cluster.defaults.of("input"), None, dnat, None)


# IPv6 link-local sources (fe80::/10), which no router forwards (RFC 4291 2.5.6).
_LINK_LOCAL_V6 = AddressSet.of(ipaddress.IPv6Network(proto.IPV6_LINK_LOCAL)).family(6)
NOT_FORWARDED = "kernel: nothing is forwarded from a link-local source"


def _not_forwarded(box: Box, dnat: NatStep | None, back: Callable[[Box], Box],
                   rest: list[Box]) -> Iterator[Piece]:
    """A piece dropped for the part of forwarded BOX from an IPv6 link-local source:
    Linux drops it in ip6_forward before the FORWARD hook and answers 'beyond scope'
    (measured: an accepting FORWARD rule's counter stayed 0, Ip6InAddrErrors counted
    it), so no rule decides it. REST receives the other part. The packets keep their
    chain, so every packet still has one (`fwc diff` compares chain by chain)."""
    if box.family != 6:
        rest.append(box)
        return
    dropped, kept = intersect(box.src, _LINK_LOCAL_V6), subtract(box.src, _LINK_LOCAL_V6)
    if kept:
        rest.append(box.with_(src=kept))
    if dropped:
        yield Piece(back(box.with_(src=dropped)), "forward", FilterAction.DROP, None, dnat,
                    None, NOT_FORWARDED)


def _filter(view: MemberView, box: Box, chain: str, dnat: NatStep | None,
            back: Callable[[Box], Box]) -> Iterator[Piece]:
    rest: list[Box] = []
    yield from _automatic(view, box, chain, dnat, back, rest)
    for remaining in rest:
        yield from _policy_filter(view, remaining, chain, dnat, back)


def _policy_filter(view: MemberView, box: Box, chain: str, dnat: NatStep | None,
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
        out.extend(first.with_box(box) for box in merge_routed(p.box for p in group))
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
            out.append(first.with_box(box))
    return out


def classify(view: MemberView, traffic: TrafficClass, *, merge: bool = True) -> list[Piece]:
    """Every packet of `traffic` on this member, partitioned by outcome."""
    pieces: list[Piece] = []
    for box, chain in view.entry_boxes(traffic):
        pieces.extend(classify_box(view, box, chain, traffic.out_interface))
    return merge_pieces(pieces) if merge else pieces


def member_views(cluster: Cluster) -> list[MemberView]:
    return [MemberView(cluster, member) for member in cluster.members]


# -- routing lookups ---------------------------------------------------------------------
def _intervals(network: IPNetwork, family: int) -> Intervals:
    return AddressSet.of(network).family(family)


Table = tuple[tuple[Intervals, frozenset[str]], ...]


def _table(routes: Iterable[TableRoute], family: int) -> Table:
    """One table as (destination intervals, interfaces), longest prefix first; of routes
    to one destination the lowest metric wins (equal metrics: any of their interfaces)."""
    best: dict[IPNetwork, tuple[int, set[str]]] = {}
    for route in routes:
        seen = best.get(route.destination)
        if seen is None or route.metric < seen[0]:
            best[route.destination] = (route.metric, {route.interface})
        elif route.metric == seen[0]:
            seen[1].add(route.interface)
    ordered = sorted(best.items(), key=lambda item: -item[0].prefixlen)
    return tuple((_intervals(net, family), frozenset(ifaces)) for net, (_, ifaces) in ordered)


def _split(table: Table, addresses: Intervals) \
        -> tuple[list[tuple[Intervals, frozenset[str]]], Intervals]:
    """ADDRESSES by the table's routes, and the part no route covers."""
    out: list[tuple[Intervals, frozenset[str]]] = []
    rest = addresses
    for destination, ifaces in table:
        if not rest:
            break
        part = intersect(rest, destination)
        if part:
            out.append((part, ifaces))
            rest = subtract(rest, destination)
    return out, rest


@dataclass(frozen=True, slots=True)
class _Rule:
    priority: int
    sources: Intervals
    destinations: Intervals
    in_interface: str | None
    marked: bool
    table: Table


@dataclass(frozen=True, slots=True)
class _Lookups:
    """A member's routing for one family as interval tables (built once per view)."""

    family: int
    main: Table  # every main route, connected subnets included
    main_specific: Table  # main without default routes (`suppress_prefixlength 0`)
    main_default: Table
    tables: tuple[Table, ...]  # every numbered table (reverse routing only)
    rules: tuple[_Rule, ...]
    fallback: frozenset[str]
    every: frozenset[str]  # every interface of the member
    multicast: Intervals

    @classmethod
    def of(cls, routing: MemberRouting, family: int, every: frozenset[str]) -> _Lookups:
        full = full_addresses(family)

        def networks(nets: tuple[IPNetwork, ...]) -> Intervals:
            return AddressSet.of(*nets).family(family) if nets else full

        rules = tuple(_Rule(r.priority, networks(r.sources), networks(r.destinations),
                            r.in_interface,
                            r.marked, _table(routing.table(r.table), family))
                      for r in routing.rules)
        return cls(family, _table(routing.main, family),
                   _table((r for r in routing.main if r.destination.prefixlen), family),
                   _table((r for r in routing.main if not r.destination.prefixlen), family),
                   tuple(_table(routes, family) for _, routes in routing.tables), rules,
                   routing.fallback, every, _intervals(MULTICAST[family], family))

    def reverse(self, addresses: Intervals) -> list[tuple[Intervals, frozenset[str]]]:
        parts: list[tuple[Intervals, frozenset[str]]] = [(addresses, frozenset())]
        for table in (self.main, *self.tables):
            refined: list[tuple[Intervals, frozenset[str]]] = []
            for part, ifaces in parts:
                found, rest = _split(table, part)
                refined.extend((p, ifaces | more) for p, more in found)
                if rest:
                    refined.append((rest, ifaces))
            parts = refined
        return [(p, ifaces or self.fallback) for p, ifaces in parts if ifaces or self.fallback]

    def forward(self, box: Box) -> list[tuple[Box, frozenset[str]]]:
        # (part, interfaces, priority of the lookup that decided it): a mark rule can only
        # change what lookups after it decided.
        done: list[tuple[Box, frozenset[str], float]] = []

        def lookup(table: Table, boxes: list[Box], priority: float) -> list[Box]:
            left: list[Box] = []
            for b in boxes:
                found, rest = _split(table, b.dst)
                done.extend((b.with_(dst=part), ifaces, priority) for part, ifaces in found)
                if rest:
                    left.append(b.with_(dst=rest))
            return left

        pending = [box]
        groups = intersect(box.dst, self.multicast)
        if groups:
            # The sending program names a multicast packet's interface (conntrackd its
            # sync link, keepalived each VRRP interface), not the routing table.
            done.append((box.with_(dst=groups), self.every, -1))
            rest = subtract(box.dst, self.multicast)
            pending = [box.with_(dst=rest)] if rest else []
        last = float("inf")
        if not self.rules:
            pending = lookup(self.main, pending, last)
        else:
            # `lookup main suppress_prefixlength 0` comes before every rule
            pending = lookup(self.main_specific, pending, -1)
            for rule in self.rules:
                if rule.marked:
                    continue
                nxt: list[Box] = []
                for b in pending:
                    hit = b.intersect(self._selector(rule, b))
                    if hit is None:
                        nxt.append(b)
                        continue
                    nxt.extend(b.minus(hit))
                    # a miss goes on to the next rule
                    nxt.extend(lookup(rule.table, [hit], rule.priority))
                pending = nxt
            pending = lookup(self.main_default, pending, last)
        done.extend((b, self.fallback, last) for b in pending if self.fallback)
        for rule in self.rules:
            if not rule.marked:
                continue
            # Marks are no field of the analysis' packets: marked traffic may take the
            # rule's table, unmarked traffic the way above, so both interfaces count.
            widened: list[tuple[Box, frozenset[str], float]] = []
            for b, ifaces, decided in done:
                hit = b.intersect(self._selector(rule, b)) if decided > rule.priority else None
                if hit is None:
                    widened.append((b, ifaces, decided))
                    continue
                widened.extend((rest, ifaces, decided) for rest in b.minus(hit))
                found, miss = _split(rule.table, hit.dst)
                widened.extend((hit.with_(dst=part), ifaces | more, decided)
                               for part, more in found)
                if miss:
                    widened.append((hit.with_(dst=miss), ifaces, decided))
            done = widened
        return [(b, ifaces) for b, ifaces, _ in done]

    @staticmethod
    def _selector(rule: _Rule, box: Box) -> Box:
        in_ifaces = frozenset({rule.in_interface}) if rule.in_interface else box.in_ifaces
        return Box(box.family, rule.sources, rule.destinations, ALL_SERVICES, in_ifaces,
                   box.out_ifaces)


def _address_intervals(match_cidrs: tuple[str, ...], family: int) -> Intervals:
    if not match_cidrs:
        return full_addresses(family)
    return AddressSet.of(*(ipaddress.ip_network(c) for c in match_cidrs)).family(family)


def _auto_box(auto: AutoRule, family: int, devices: dict[str, str],
              every: frozenset[str]) -> Box | None:
    """The packets an automatic rule matches, in the engine's terms (None: no NEW ones)."""
    match = auto.match
    services = ALL_SERVICES
    if match.protocol is not None:
        base = match.protocol << PORT_SHIFT
        if match.dports:
            services = normalise((base | p.low, base | p.high) for p in match.dports)
        elif match.icmp_type is not None:
            services = ((base | match.icmp_type, base | match.icmp_type),)
        else:
            services = (protocol_block(match.protocol),)
    in_ifaces = every if match.in_device is None else \
        frozenset({devices[match.in_device]}) if match.in_device in devices else frozenset()
    out_ifaces = every if match.out_device is None else \
        frozenset({devices[match.out_device]}) if match.out_device in devices else frozenset()
    if auto.chain == "input":
        out_ifaces = frozenset({LOCAL})
    else:
        in_ifaces = frozenset({LOCAL})
    box = Box(family, _address_intervals(match.source.cidrs, family),
              _address_intervals(match.destination.cidrs, family), services, in_ifaces,
              out_ifaces)
    return None if box.is_empty() else box
