"""Parity: every member must treat forwarded and NATed traffic the same way.

After a failover the other member decides what the network allows; if the two
rulesets differ for traffic through the cluster, a failover silently changes
policy. The check compares the lowered rulesets (what the kernels get) after
replacing each member's own devices and addresses by placeholders.

Lowering every member's whole ruleset for this was most of `fwc check` on large
policies. Most rules cannot differ between members, and that is decided on the
model (`Neutrality`, `member_dependent`): the lowering's only member-dependent
inputs are `only`, the devices, and the firewall addresses (the member's own plus
the VIPs) that split each side; the comparison's only member-dependent step is the
placeholder for a member's own address where it stands alone in a CIDR list. A rule
whose interfaces, items and NAT targets are alike in those respects for every member
lowers to the same normalised forwarded and NAT rules on every member. Only the other
rules (and the automatic ones) are lowered and compared, in a copy of the cluster
without the neutral rules: a rule's lowering does not depend on the other rules. A
scoped rule that touches forwarded traffic (an error) needs the rules after it (what
decides that traffic on the other members): then the whole cluster is lowered and
compared, as before. tests/test_parity_oracle.py keeps both ways equal.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Iterator
from dataclasses import replace

from fwc.backend.lower import (
    MARK_ACCEPT_CHAIN,
    AddressMatch,
    LowerOptions,
    NodeRuleset,
    Rule,
    lower,
    options_for,
)
from fwc.checks import check, describe
from fwc.checks.sides import all_rule_sides
from fwc.diagnostics import Diagnostic, Related, Severity, error
from fwc.model import Cluster, Endpoint, EndpointItem, Member, NatRule, Policy
from fwc.model import Rule as PolicyRule
from fwc.model.addresses import AddressSet
from fwc.model.intervals import IntervalSet
from fwc.model.records import dataclass

describe("FWC302", "members differ for forwarded or NATed traffic", Severity.ERROR, """
After the substitution of each member's own devices and addresses, the members'
FORWARD and NAT rules must be identical: after a failover the other member
decides, so any difference changes what the network allows the moment the VIPs
move. Typically a rule names one member's own address (it is INPUT on that
member but FORWARD on the others). The diagnostic names the differing rules.""", "check")


@dataclass(frozen=True, slots=True)
class NormalRule:
    """A lowered rule with member-specific values replaced: comparable across members."""

    table: str
    chain: str
    source: tuple[str, ...]
    destination: tuple[str, ...]
    in_interface: str | None
    out_interface: str | None
    protocol: int | None
    ports: tuple[tuple[int, int], ...]
    icmp_type: int | None
    target: str
    options: tuple[tuple[str, str], ...]


def _devices(member: Member) -> dict[str, str]:
    """MEMBER's devices -> the interface each stands for (the comparison's placeholder)."""
    return {link.device: link.interface for link in member.links}


def _substitutions(cluster: Cluster, member: Member) -> tuple[dict[str, str], dict[str, str]]:
    devices = _devices(member)
    addresses: dict[str, str] = {}
    for link in member.links:
        for address in link.addresses:
            placeholder = f"<{link.interface} address>"
            addresses[str(address.ip)] = placeholder
            addresses[f"{address.ip}/{address.max_prefixlen}"] = placeholder
    return devices, addresses


def _addresses(match: AddressMatch, addresses: dict[str, str],
               seen: dict[tuple[str, ...], tuple[str, ...]]) -> tuple[str, ...]:
    if match.set_name is not None:
        return (f"set:{match.set_name}",)
    # A group of several hundred prefixes is named by many rules: substitute each
    # distinct list once per member, not once per rule.
    found = seen.get(match.cidrs)
    if found is None:
        found = seen[match.cidrs] = tuple(addresses.get(c, c) for c in match.cidrs)
    return found


def _normal(table: str, chain: str, rule: Rule, devices: dict[str, str],
            addresses: dict[str, str], seen: dict[tuple[str, ...], tuple[str, ...]]) \
        -> NormalRule:
    m = rule.match
    options = tuple((k, addresses.get(v, v)) for k, v in rule.target_options)
    return NormalRule(table, chain, _addresses(m.source, addresses, seen),
                      _addresses(m.destination, addresses, seen),
                      devices.get(m.in_device, m.in_device) if m.in_device else None,
                      devices.get(m.out_device, m.out_device) if m.out_device else None,
                      m.protocol, tuple((p.low, p.high) for p in m.dports), m.icmp_type,
                      rule.target, options)


def _forwarding_rules(ruleset: NodeRuleset) -> Iterator[tuple[str, str, Rule]]:
    """FORWARD, the chains it jumps to, and every NAT chain: traffic through the cluster."""
    filter_table = ruleset.table("filter")
    if filter_table is not None:
        reachable = {"FORWARD"}
        # by name once: Table.chain walks the chains, and there is one per rule with
        # exclusions or long lists, so a lookup per rule grew with the square
        names = {chain.name for chain in filter_table.chains}
        for chain in filter_table.chains:
            if chain.name not in reachable:
                continue
            for rule in chain.rules:
                yield "filter", chain.name, rule
                if rule.target != MARK_ACCEPT_CHAIN and rule.target in names:
                    reachable.add(rule.target)
    nat = ruleset.table("nat")
    if nat is not None:
        for chain in nat.chains:
            for rule in chain.rules:
                yield "nat", chain.name, rule


@dataclass
class _MemberView:
    member: Member
    # origin label -> normalised rules, in order; auto rules are keyed by their label too
    by_origin: dict[str, list[NormalRule]]
    origins: dict[str, PolicyRule | None]
    ordered: list[tuple[str, NormalRule, PolicyRule | None]]


def _view(cluster: Cluster, member: Member, family: int, options: LowerOptions) -> _MemberView:
    devices, addresses = _substitutions(cluster, member)
    view = _MemberView(member, {}, {}, [])
    seen: dict[tuple[str, ...], tuple[str, ...]] = {}
    for table, chain, rule in _forwarding_rules(lower(cluster, member, family, options)):
        normal = _normal(table, chain, rule, devices, addresses, seen)
        key = rule.origin.label
        view.by_origin.setdefault(key, []).append(normal)
        view.origins.setdefault(key, rule.origin.rule)
        view.ordered.append((key, normal, rule.origin.rule))
    return view


def _overlap(a: tuple[str, ...], b: tuple[str, ...]) -> bool:
    if not a or not b:
        return True
    try:
        return AddressSet.of(*a).overlaps(AddressSet.of(*b))
    except ValueError:  # a placeholder or a set name: cannot tell, assume it may overlap
        return True


def _ports_overlap(a: tuple[tuple[int, int], ...], b: tuple[tuple[int, int], ...]) -> bool:
    if not a or not b:
        return True
    return IntervalSet.of(a).overlaps(IntervalSet.of(b))


def may_overlap(a: NormalRule, b: NormalRule) -> bool:
    """Could one packet match both rules? (conservative: True when unsure)"""
    return (a.table == b.table
            and (a.protocol is None or b.protocol is None or a.protocol == b.protocol)
            and (a.in_interface is None or b.in_interface is None
                 or a.in_interface == b.in_interface)
            and (a.out_interface is None or b.out_interface is None
                 or a.out_interface == b.out_interface)
            and (a.icmp_type is None or b.icmp_type is None or a.icmp_type == b.icmp_type)
            and _ports_overlap(a.ports, b.ports)
            and _overlap(a.source, b.source) and _overlap(a.destination, b.destination))


def _decider(view: _MemberView, scoped: PolicyRule, sample: NormalRule) \
        -> tuple[PolicyRule | None, str]:
    """The rule that decides `sample`'s traffic on another member (None: the chain default)."""
    kind = "nat" if sample.table == "nat" else "policy"
    for _, normal, origin in view.ordered:
        if origin is None or origin.index <= scoped.index or origin.only is not None:
            continue
        if _is_nat(origin) != (kind == "nat"):
            continue
        if normal.chain.startswith("fwc-") and normal.table == "filter":
            continue
        if may_overlap(sample, normal):
            return origin, f"on {view.member.name} this traffic (or part of it) is decided here"
    default = "the FORWARD policy (DROP)" if kind == "policy" \
        else "no NAT rule (addresses stay as they are)"
    return None, f"on {view.member.name} this traffic meets {default}"


def _is_nat(rule: PolicyRule) -> bool:
    return isinstance(rule, NatRule)


def _describe_rule(rule: PolicyRule) -> str:
    return f"'{rule.action} from {rule.source.label} to {rule.destination.label}'"


def _interface_placeholder(member: Member, devices: dict[str, str], interface: str) -> str:
    """What the comparison turns the device of INTERFACE on MEMBER into (`_normal`);
    DEVICES is `_devices(member)`."""
    device = member.device(interface) or interface
    return devices.get(device, device)


class Neutrality:
    """Which rules of a cluster lower to the same forwarded and NAT rules on every member.

    Decided on the model, per rule (see the module doc). The lowering depends on the
    member through `only`, the devices, and the firewall addresses (its own plus the
    VIPs) that `side_of` splits each item by; the comparison replaces a member's own
    address where it stands alone in a CIDR list. So a rule is neutral when it has no
    `only`, interfaces whose device turns into the same placeholder
    on every member, no `firewall` item in a NAT rule and no `!firewall`, and every
    item and NAT target either holds no member's own address
    or (positive items only) holds each such address with its neighbour in the same
    /31 (/127), so that no CIDR list built from it names the address alone, and falls
    on the same side of the firewall split on every member.
    """

    def __init__(self, cluster: Cluster) -> None:
        # every member's own addresses, sorted per family
        self.own = {family: sorted({int(a.ip) for m in cluster.members for link in m.links
                                    for a in link.addresses if a.version == family})
                    for family in (4, 6)}
        self.firewalls = [cluster.firewall_addresses(m) for m in cluster.members]
        self.items: dict[tuple[AddressSet, bool], bool] = {}
        # (kind, label, negation) -> (the item's set, answer): hashing a group's intervals
        # per use cost more than the answer; taken only for the very same set object
        self.written: dict[tuple[str, str, bool], tuple[AddressSet, bool]] = {}
        # side number * 2 + (NAT rule) -> neutral
        self.sides: dict[int, bool] = {}
        names = {i.name for i in cluster.interfaces}
        names |= {link.interface for m in cluster.members for link in m.links}
        self.same_interfaces: set[str | None] = {None}
        devices = [(m, _devices(m)) for m in cluster.members]  # once per member
        for name in names:
            if len({_interface_placeholder(m, devs, name) for m, devs in devices}) == 1:
                self.same_interfaces.add(name)

    def _own_in(self, addresses: AddressSet) -> list[tuple[int, int]]:
        """(family, address) of the members' own addresses in ADDRESSES."""
        out: list[tuple[int, int]] = []
        for family in (4, 6):
            intervals = addresses.family(family)
            if not intervals:
                continue
            values = self.own[family]
            # only the own addresses within the set's hull can be in it
            first = bisect.bisect_left(values, intervals[0][0])
            last = bisect.bisect_right(values, intervals[-1][1])
            out.extend((family, value) for value in values[first:last]
                       if _contains(intervals, value))
        return out

    def _item_neutral(self, item: EndpointItem) -> bool:
        # the same objects and groups recur in thousands of rules: answered once each
        addresses, negated = item.addresses, item.negated
        text = (item.kind, item.label, negated)
        seen = self.written.get(text)
        if seen is not None and seen[0] is addresses:
            return seen[1]
        key = (addresses, negated)
        got = self.items.get(key)
        if got is None:
            got = self.items[key] = self._item_neutral_now(addresses, negated)
        self.written[text] = (addresses, got)
        return got

    def _item_neutral_now(self, addresses: AddressSet, negated: bool) -> bool:
        held = self._own_in(addresses)
        if not held:
            return True
        if negated or any(not _contains(addresses.family(f), v ^ 1) for f, v in held):
            return False
        split = {tuple(fw.only(f).covers(addresses.only(f)) for f in (4, 6)
                       if addresses.family(f)) for fw in self.firewalls}
        return len(split) == 1

    def _side_neutral(self, side: Endpoint, nat: bool) -> bool:
        for item in side.items:
            if item.kind == "firewall":
                # The filter's FORWARD part leaves what `firewall` names out (it goes
                # to INPUT/OUTPUT); NAT matches it, and `!firewall` is an exclusion.
                if nat or item.negated:
                    return False
            elif not self._item_neutral(item):
                return False
        return True

    def neutral(self, rule: PolicyRule, sides: tuple[int, int] | None = None) -> bool:
        """SIDES: the numbers of RULE's sides (`rule_sides`): a side's answer is then
        found by its number (it depends on its items only)."""
        if rule.only is not None or rule.in_interface not in self.same_interfaces \
                or rule.out_interface not in self.same_interfaces:
            return False
        nat = _is_nat(rule)
        if sides is None:
            if not (self._side_neutral(rule.source, nat)
                    and self._side_neutral(rule.destination, nat)):
                return False
        else:
            known = self.sides
            for number, side in zip(sides, (rule.source, rule.destination), strict=True):
                key = number * 2 + nat  # (side number, NAT rule)
                got = known.get(key)
                if got is None:
                    got = known[key] = self._side_neutral(side, nat)
                if not got:
                    return False
        if not isinstance(rule, NatRule):  # no targets
            return True
        return not any(self._own_in(t.addresses) for t in rule.targets)


def _contains(intervals: tuple[tuple[int, int], ...], value: int) -> bool:
    at = bisect.bisect_right(intervals, (value, _INFINITY)) - 1
    return at >= 0 and intervals[at][0] <= value <= intervals[at][1]


_INFINITY = 1 << 129


def member_dependent(cluster: Cluster) -> Cluster:
    """CLUSTER with only the rules that may lower differently on its members.

    Rules written on one line share the line's origin label (the key the comparison
    groups by): if one of them is kept, all of them are.
    """
    neutrality = Neutrality(cluster)
    kept = {(r.span.file, r.span.line)
            for r, sides in zip(cluster.all_rules(), all_rule_sides(cluster), strict=True)
            if not neutrality.neutral(r, sides)}
    return replace(cluster, rules=tuple(r for r in cluster.rules
                                        if (r.span.file, r.span.line) in kept),
                   nat=tuple(r for r in cluster.nat if (r.span.file, r.span.line) in kept))


def cluster_parity(cluster: Cluster, options: LowerOptions) -> Iterable[Diagnostic]:
    """FWC301/FWC302 of CLUSTER, lowering only the rules that may differ (module doc)."""
    if len(cluster.members) < 2:
        return
    views = _views(member_dependent(cluster), options)
    if any(origin is not None and origin.only is not None
           for family_views in views for view in family_views
           for origin in view.origins.values()):
        # A scoped rule touches forwarded traffic: what decides that traffic on the
        # other members is any later rule, neutral or not.
        views = _views(cluster, options)
    yield from _compared(views)


def compared_parity(cluster: Cluster, options: LowerOptions) -> Iterable[Diagnostic]:
    """FWC301/FWC302 by lowering every rule of CLUSTER for every member and comparing."""
    if len(cluster.members) < 2:
        return
    yield from _compared(_views(cluster, options))


def _views(cluster: Cluster, options: LowerOptions) -> list[list[_MemberView]]:
    """Per family, every member's forwarded and NAT rules, normalised."""
    return [[_view(cluster, m, family, options) for m in cluster.members]
            for family in sorted(cluster.families)]


def _compared(by_family: list[list[_MemberView]]) -> Iterator[Diagnostic]:
    reported: set[str] = set()
    for views in by_family:
        keys: dict[str, None] = {}
        for view in views:
            keys.update(dict.fromkeys(view.by_origin))
        for key in keys:
            if key in reported:
                continue
            origin = next((v.origins[key] for v in views if v.origins.get(key)), None)
            present = [v for v in views if key in v.by_origin]
            if origin is not None and origin.only is not None:
                reported.add(key)
                yield _scoped_rule_error(origin, present[0].by_origin[key][0], views)
                continue
            variants = {tuple(v.by_origin.get(key, ())) for v in views}
            if len(variants) == 1:
                continue
            reported.add(key)
            yield _difference_error(key, origin, views)


def _scoped_rule_error(rule: PolicyRule, sample: NormalRule,
                       views: list[_MemberView]) -> Diagnostic:
    related: list[Related] = []
    notes: list[str] = []
    for view in views:
        if view.member.name == rule.only:
            continue
        decider, note = _decider(view, rule, sample)
        if decider is not None:
            related.append(Related(decider.span, note))
        else:
            notes.append(note)
    what = "NATed" if _is_nat(rule) else "forwarded"
    message = (f"rule {_describe_rule(rule)} is only for {rule.only} but touches {what} "
               f"traffic: after a failover the other member treats that traffic differently")
    if notes:
        message += " (" + "; ".join(notes) + ")"
    return error("FWC301", message, rule.span,
                 hint="make the rule cluster-wide, or limit it to traffic to or from the "
                 "firewall itself", related=related)


def _difference_error(key: str, origin: PolicyRule | None, views: list[_MemberView]) \
        -> Diagnostic:
    counts = ", ".join(f"{len(v.by_origin.get(key, ()))} on {v.member.name}" for v in views)
    if origin is None:
        return error("FWC302", f"automatic rules '{key}' differ between members ({counts})")
    return error("FWC302", f"rule {_describe_rule(origin)} lowers differently on the members "
                 f"(forwarded/NAT kernel rules: {counts})", origin.span,
                 hint="a rule that names one member's own address is INPUT/OUTPUT there but "
                 "FORWARD on the others: name 'firewall' or a VIP instead")


@check("FWC301", "member-scoped rule touches forwarded or NATed traffic", Severity.ERROR, """
A rule limited to one member with `only` is fine for traffic to or from that
firewall itself (management access, monitoring of the node). For traffic
through the cluster it is not: after a failover the other member decides that
traffic, so the network's behaviour changes with the VRRP state. The
diagnostic names the rule and what decides the same traffic on the other
member(s).""")
def parity(policy: Policy) -> Iterable[Diagnostic]:
    for cluster in policy.clusters:
        yield from cluster_parity(cluster, options_for(policy))
