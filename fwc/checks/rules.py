"""Rule checks (FWC4xx): shadowed and redundant rules, DNAT without an accept, masquerade.

Shadowing is the expensive one: a policy of 100,000 rules must not compare every
pair. Each rule is normalised into a `Flow` (what it matches, per chain and
address family, with the endpoint meaning of `fwc.model.semantics`), and earlier flows
are indexed by protocol/port and by the identity of their source and destination
sets (`fwc.model.semantics.SupersetIndex`). A rule can only be covered by a rule whose
sets contain its own; which sets contain a set is answered once per distinct set
(over the sets whose CIDR hull contains its hull), so a lookup costs a few probes
per rule, not a walk over every earlier rule that shares a hull. Covered rules stay
out of the index (coverage is transitive), so repeated rules cost nothing extra.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable, Iterator
from dataclasses import field, replace
from itertools import repeat

from fwc.checks import FLOWS_MEMO, SPENT_INDEXES, check, describe
from fwc.checks.sides import SideNumbers, rule_sides, service_numbers, side_numbers
from fwc.diagnostics import Diagnostic, Related, Severity, warning
from fwc.diagnostics import error as error_diag
from fwc.model import (
    PROTOCOL_FAMILY,  # ServiceMatch.family as a table lookup: per rule on the hot path
    Cluster,
    Endpoint,
    FilterRule,
    NatRule,
    NatTarget,
    Policy,
    PortRange,
    Rule,
    ServiceMatch,
)
from fwc.model.addresses import AddressSet
from fwc.model.intervals import IntervalSet, normalise
from fwc.model.records import dataclass
from fwc.model.semantics import (
    Block,
    PrefixIndex,
    SupersetIndex,
    forwarded_and_local,
    hull,
)
from fwc.model.vocabulary import Action, FilterAction, NatAction

FAMILIES = (4, 6)
PORT_INFINITY = 1 << 17  # above every port

# Where a rule's traffic is matched: forwarded, to the firewall, from it, or both.
FORWARD, INPUT, OUTPUT, LOCAL = "forward", "input", "output", "local"

# Where a rule works: the filter hooks, or the NAT stages of `NatRule.stages`.
FILTER_HOOKS: frozenset[str] = frozenset({"filter"})

Key = Block  # a CIDR hull as (prefix length, network as an integer)


@dataclass(frozen=True, slots=True)
class Part:
    kind: str  # FORWARD, INPUT, OUTPUT or LOCAL
    family: int
    source: AddressSet  # one family; firewall addresses for INPUT/OUTPUT/LOCAL sides
    destination: AddressSet
    source_key: Key
    destination_key: Key
    # kind and family as one small number (`_slot`): the `CoverIndex` tables of the part
    slot: int = field(compare=False)
    # Numbers of the two sets, equal for equal sets of one `PartsMemo` (-1: not numbered),
    # so that `CoverIndex` hashes a group's intervals once per distinct side, not per rule.
    source_ref: int = field(default=-1, compare=False)
    destination_ref: int = field(default=-1, compare=False)


@dataclass(frozen=True, slots=True)
class Flow:
    """What a rule matches, normalised for coverage tests."""

    position: int
    action: Action
    hooks: frozenset[str]
    parts: tuple[Part, ...]
    services: tuple[ServiceMatch, ...]  # empty: every protocol
    summary: Services = field(compare=False)  # the same list, for the search
    in_interface: str | None
    out_interface: str | None
    only: str | None
    outcome: tuple[object, ...]  # action plus NAT target: equal outcome means redundant
    rule: Rule | None = field(default=None, compare=False)


# the three answers of `_live_families`, shared (one per distinct service list otherwise)
_LIVE = {frozenset(f): frozenset(f) for f in ((4,), (6,), FAMILIES)}


def _live_families(services: tuple[ServiceMatch, ...]) -> frozenset[int]:
    if not services:
        return _LIVE[frozenset(FAMILIES)]
    out: set[int] = set()
    for match in services:
        family = PROTOCOL_FAMILY.get(match.protocol)
        out |= set(FAMILIES) if family is None else {family}
    return _LIVE.get(frozenset(out)) or frozenset(out)


def _working_families(rule: Rule, families: frozenset[int]) -> frozenset[int]:
    """FAMILIES without those a snat or dnat has no target address in: it has no kernel
    rule there (`NatRule.works_in`), so it covers nothing of a later rule in them."""
    if type(rule) is FilterRule:
        return families
    kept = frozenset(f for f in families if rule.works_in(f))
    return _LIVE.get(kept) or kept


# One family of a side: its non-empty halves in this order: the forwarded addresses,
# then the firewall addresses, each as (is the firewall half, addresses, hull, number).
# Numbers as `Part.source_ref`.
Half = tuple[bool, AddressSet, Key, int]
Split = dict[int, tuple[Half, ...]]
# the chain of a part by (source is the firewall half, destination is the firewall half)
_KINDS = ((FORWARD, INPUT), (OUTPUT, LOCAL))
_KIND_NUMBERS = {FORWARD: 0, INPUT: 1, OUTPUT: 2, LOCAL: 3}
SLOTS = 8  # (part kind, family) pairs


def _slot(kind: str, family: int) -> int:
    """A part's kind and family as a number below SLOTS."""
    return _KIND_NUMBERS[kind] * 2 + (family == 6)


# Per (source is the firewall half, destination is the firewall half) and family: the
# part's kind and slot, or None where the rule's interfaces leave no such part (traffic
# to the firewall has no outgoing interface, traffic from it no incoming one: the
# compiler drops those parts, and so does the comparison). Indexed by
# [outgoing][incoming][source half][destination half][family == 6].
_PLACES = tuple(tuple(
    tuple(tuple(
        tuple(None if (outgoing and kind not in (FORWARD, OUTPUT))
              or (incoming and kind not in (FORWARD, INPUT))
              else (kind, _slot(kind, family)) for family in FAMILIES)
        for kind in kinds) for kinds in _KINDS)
    for incoming in (False, True)) for outgoing in (False, True))


def _split(side: tuple[AddressSet, AddressSet], number: int = -1) -> Split:
    """A side's (forwarded, firewall) addresses per family, each with its hull; NUMBER
    (the side's, or -1) gives each half a number of its own."""
    out: Split = {}
    for family in FAMILIES:
        net, fw = side[0].only(family), side[1].only(family)
        base = -1 if number < 0 else number * 4 + (family == 6) * 2
        halves: list[Half] = []
        if net:
            halves.append((False, net, hull(net, family), base))
        if fw:
            halves.append((True, fw, hull(fw, family), -1 if base < 0 else base + 1))
        out[family] = tuple(halves)
    return out


def _parts(source: tuple[AddressSet, AddressSet], destination: tuple[AddressSet, AddressSet],
           families: frozenset[int]) -> tuple[Part, ...]:
    return _combined(_split(source), _split(destination), families)


def _combined(source: Split, destination: Split, families: frozenset[int],
              outgoing: bool = False, incoming: bool = False) -> tuple[Part, ...]:
    """Per family, each pair of halves: FORWARD, INPUT, OUTPUT, LOCAL in this order;
    OUTGOING (INCOMING): the rule names an outgoing (incoming) interface, which leaves
    out the parts to (from) the firewall."""
    out: list[Part] = []
    places = _PLACES[outgoing][incoming]
    for family in FAMILIES:
        if family not in families:
            continue
        targets = destination[family]
        six = family == 6
        for src_fw, src, src_key, src_ref in source[family]:
            kinds = places[src_fw]
            for dst_fw, dst, dst_key, dst_ref in targets:
                place = kinds[dst_fw][six]
                if place is not None:
                    out.append(Part(place[0], family, src, dst, src_key, dst_key,
                                    place[1], src_ref, dst_ref))
    return tuple(out)


def _target_outcome(target: NatTarget | None) -> tuple[object, ...]:
    if target is None:
        return ()
    return (target.addresses, target.port)


def _nat_hooks(rule: NatRule) -> frozenset[str]:
    return frozenset(rule.stages)


class PartsMemo:
    """Each distinct side of one block's rules split once (`forwarded_and_local`, per
    family, with hulls): a rule's parts are then only combined. Each distinct service
    list is summarised once (`Services`)."""

    def __init__(self, firewall: AddressSet, numbers: SideNumbers | None = None) -> None:
        self.firewall = firewall
        self.numbers = SideNumbers() if numbers is None else numbers
        self.sides: dict[int, Split] = {}
        self.lists: dict[tuple[ServiceMatch, ...], Services] = {}
        # service list number (`fwc.checks.sides.ServiceNumbers`) -> its summary
        self.numbered: dict[int, Services] = {}

    def services(self, matches: tuple[ServiceMatch, ...], number: int = -1) -> Services:
        """One `Services` per distinct list, shared by the flows with that list; NUMBER:
        the list's (`service_numbers`), if known (hashing a list hashes every match and
        port range again)."""
        if number >= 0:
            got = self.numbered.get(number)
            if got is None:
                # a number not seen before is a list not seen before (`ServiceNumbers`:
                # equal numbers exactly for equal lists): its matches are not hashed
                got = self.numbered[number] = Services(matches)
            return got
        got = self.lists.get(matches)
        if got is None:
            got = self.lists[matches] = Services(matches)
        return got

    def side(self, endpoint: Endpoint, number: int) -> Split:
        got = self.sides.get(number)
        if got is None:
            got = self.sides[number] = _split(forwarded_and_local(endpoint, self.firewall),
                                              number)
        return got

    def of(self, rule: Rule, families: frozenset[int], sides: tuple[int, int] | None = None,
           outgoing: bool = False, incoming: bool = False) -> tuple[Part, ...]:
        """RULE's parts in FAMILIES (`_combined`); SIDES are the numbers of its sides, if
        known."""
        if sides is None:
            sides = (self.numbers.number(rule.source), self.numbers.number(rule.destination))
        return _combined(self.side(rule.source, sides[0]),
                         self.side(rule.destination, sides[1]), families, outgoing, incoming)

    def flows(self, rules: Iterable[Rule], hooks: Iterable[frozenset[str]],
              sides: Iterable[tuple[int, int]], listed: Iterable[int]) -> list[Flow]:
        """`flow_of` of each rule of RULES with its HOOKS, the numbers of its SIDES and of
        its service list (LISTED) in one loop: what `flow_of`, `services`, `of` and
        `side` look up is bound once, and the split of a side or the summary of a list
        seen before is taken straight from its table (this runs once per rule)."""
        out: list[Flow] = []
        append = out.append
        numbered, split_sides = self.numbered, self.sides
        outcomes: dict[tuple[object, object], tuple[object, ...]] = {}
        for rule, hook, (source, destination), number in zip(rules, hooks, sides, listed,
                                                              strict=True):
            summary = numbered.get(number) if number >= 0 else None
            if summary is None:
                summary = self.services(rule.services, number)
            src = split_sides.get(source)
            if src is None:
                src = self.side(rule.source, source)
            dst = split_sides.get(destination)
            if dst is None:
                dst = self.side(rule.destination, destination)
            in_interface, out_interface = rule.in_interface, rule.out_interface
            # interfaces restrict the filter's chains
            if hook is FILTER_HOOKS or hook == FILTER_HOOKS:
                parts = _combined(src, dst, summary.families, out_interface is not None,
                                  in_interface is not None)
            else:
                parts = _combined(src, dst, _working_families(rule, summary.families))
            if type(rule) is FilterRule:  # no target, no pool: one outcome per action
                key = (rule.action, rule.reject_with)
                outcome = outcomes.get(key)
                if outcome is None:
                    outcome = outcomes[key] = (*key, ())
            else:
                outcome = (rule.action, rule.reject_with, *_target_outcome(rule.target),
                           tuple(_target_outcome(t) for t in getattr(rule, "pool", ())))
            append(Flow(rule.index, rule.action, hook, parts, rule.services, summary,
                        in_interface, out_interface, rule.only, outcome, rule))
        return out


def flow_of(rule: Rule, hooks: frozenset[str], firewall: AddressSet,
            memo: PartsMemo | None = None, sides: tuple[int, int] | None = None,
            listed: int = -1) -> Flow:
    """RULE's flow; MEMO (for FIREWALL) shares the parts of rules with equal sides (SIDES:
    the numbers of RULE's sides in MEMO's `SideNumbers`, if known) and the summaries of
    equal service lists (LISTED: the number of RULE's, `service_numbers`, if known)."""
    filtering = hooks == FILTER_HOOKS  # interfaces restrict the filter's chains
    outgoing = filtering and rule.out_interface is not None
    incoming = filtering and rule.in_interface is not None
    if memo is not None:
        summary = memo.services(rule.services, listed)
        parts = memo.of(rule, _working_families(rule, summary.families), sides, outgoing,
                        incoming)
    else:
        summary = Services(rule.services)
        parts = _combined(_split(forwarded_and_local(rule.source, firewall)),
                          _split(forwarded_and_local(rule.destination, firewall)),
                          _working_families(rule, summary.families), outgoing, incoming)
    if type(rule) is FilterRule:  # no target, no pool
        outcome: tuple[object, ...] = (rule.action, rule.reject_with, ())
    else:
        outcome = (rule.action, rule.reject_with, *_target_outcome(rule.target),
                   tuple(_target_outcome(t) for t in getattr(rule, "pool", ())))
    return Flow(rule.index, rule.action, hooks, parts, rule.services, summary,
                rule.in_interface, rule.out_interface, rule.only, outcome, rule)


# -- coverage -----------------------------------------------------------------------------
def _whole_protocol(match: ServiceMatch) -> bool:
    return not match.ports and match.icmp_type is None


def _in_family(services: tuple[ServiceMatch, ...], family: int) -> tuple[ServiceMatch, ...]:
    return tuple(m for m in services if PROTOCOL_FAMILY.get(m.protocol, family) == family)


# What one protocol of a service list offers a coverage test: the whole protocol, these
# ICMP types, these ports (normalised intervals).
Offer = tuple[bool, frozenset[int], tuple[tuple[int, int], ...]]
# A service list's matches in one family, its index keys and its probe keys there.
FamilyKeys = tuple[tuple[ServiceMatch, ...], tuple[int, ...], tuple[int, ...]]


class Services:
    """A rule's service list with what the shadowing search asks of it: its live
    families, and per protocol what it offers a coverage test (made once per distinct
    list, shared by the rules with that list through `PartsMemo`).

    The meaning (`covers`): a list covers another in a family when each of the other's
    matches in that family is covered by the matches of this list with its protocol
    number (and its conntrack helper, if it names one): one of them is the whole
    protocol, or one has its ICMP type, or their ports together hold its ports. An
    empty list is every protocol. A test keeps this equal to the plain definition.
    """

    __slots__ = ("_four", "_offers", "_six", "families", "matches")

    def __init__(self, matches: tuple[ServiceMatch, ...]) -> None:
        self.matches = matches
        self.families = _live_families(matches)  # the families it can match in
        # per (protocol number, helper), made when this list is first the outer one of a
        # coverage test (few are: a 100,000-rule policy has some 27,000 lists)
        self._offers: dict[tuple[int, str | None], Offer] | None = None
        # per family, when first asked: its matches in the family, index and probe keys
        self._four: FamilyKeys | None = None
        self._six: FamilyKeys | None = None

    def keys(self, family: int) -> FamilyKeys:
        """(matches in FAMILY, the keys of the `CoverIndex` tables a flow part of this
        list is stored in (`_service_keys`), the keys a flow covering its first match must
        be stored in (`_probe_keys`)) in FAMILY, made once."""
        got = self._six if family == 6 else self._four
        if got is None:
            matches = self.matches  # one tuple, not two equal ones, when all are in FAMILY
            for match in matches:
                if match.protocol in PROTOCOL_FAMILY:  # ICMP or AH: only one family
                    matches = _in_family(matches, family)
                    if matches == self.matches:
                        matches = self.matches
                    break
            got = (matches, tuple(sorted(_service_keys(self.matches, family, matches))),
                   _probe_keys(self.matches, family, matches))
            if family == 6:
                self._six = got
            else:
                self._four = got
        return got

    def _offer(self, number: int, helper: str | None) -> Offer:
        offers = self._offers
        if offers is None:
            offers = self._offers = {}
        got = offers.get((number, helper))
        if got is None:
            same = [o for o in self.matches
                    if o.number == number and (helper is None or o.helper == helper)]
            got = offers[(number, helper)] = (
                any(_whole_protocol(o) for o in same),
                frozenset(o.icmp_type for o in same if o.icmp_type is not None),
                normalise([(p.low, p.high) for o in same for p in o.ports]))
        return got

    def covers(self, inner: Services, family: int) -> bool:
        """Every packet of INNER's list in FAMILY is matched by this list."""
        if not self.matches:
            return True
        if not inner.matches:
            return False
        got = inner._six if family == 6 else inner._four
        offers = self._offers
        for match in (got or inner.keys(family))[0]:  # INNER's matches in FAMILY
            # `_offer` for an offer made before (most calls: about 1,000 candidates on
            # 20,000 rules, most of them failing here, on the list's second match)
            offer = None if offers is None else offers.get((match.number, match.helper))
            whole, types, ports = offer or self._offer(match.number, match.helper)
            if whole:
                continue
            if match.icmp_type is not None:
                if match.icmp_type not in types:
                    return False
            elif not match.ports or not all(_ports_inside(ports, low, high)
                                            for low, high in match.ports):
                return False
        return True


def _ports_inside(spans: tuple[tuple[int, int], ...], low: int, high: int) -> bool:
    """[low, high] lies in one interval of SPANS (normalised: none are adjacent)."""
    at = bisect_right(spans, (low, PORT_INFINITY)) - 1
    return at >= 0 and spans[at][1] >= high


def _scope_covers(outer: Flow, inner: Flow) -> bool:
    """OUTER's hooks, `only` and interfaces hold INNER's."""
    return (outer.hooks >= inner.hooks
            and (outer.only is None or outer.only == inner.only)
            and (outer.in_interface is None or outer.in_interface == inner.in_interface)
            and (outer.out_interface is None or outer.out_interface == inner.out_interface))


def covers(outer: Flow, inner: Flow) -> bool:
    """True when every packet `inner` matches is matched by `outer` (one rule, not a union)."""
    # the scope first: the cheapest test (`CoverIndex.scan` calls this for the candidates
    # of flows of several parts, and the oracle tests for every pair)
    if not _scope_covers(outer, inner):
        return False
    outer_services, inner_services = outer.summary, inner.summary
    for part in inner.parts:
        slot = part.slot  # kind and family
        for o in outer.parts:
            # services first: the cheapest test, and the one that tells apart the
            # rules an index lookup finds with containing addresses
            if o.slot == slot and outer_services.covers(inner_services, part.family) \
                    and o.source.covers(part.source) \
                    and o.destination.covers(part.destination):
                break
        else:
            return False
    return True


def _port_set(ranges: Iterable[PortRange]) -> IntervalSet:
    return IntervalSet.of(ranges)


def _services_overlap(a: tuple[ServiceMatch, ...], b: tuple[ServiceMatch, ...],
                      family: int) -> bool:
    if not a or not b:
        return True
    for x in _in_family(a, family):
        for y in _in_family(b, family):
            if x.number != y.number:
                continue
            if x.icmp_type is not None and y.icmp_type is not None \
                    and x.icmp_type != y.icmp_type:
                continue
            if x.ports and y.ports and not _port_set(x.ports).overlaps(_port_set(y.ports)):
                continue
            return True
    return False


def overlaps(a: Flow, b: Flow) -> bool:
    """True when some packet is matched by both (scope, parts and services)."""
    if not a.hooks & b.hooks:
        return False
    for x, y in ((a.only, b.only), (a.in_interface, b.in_interface),
                 (a.out_interface, b.out_interface)):
        if x is not None and y is not None and x != y:
            return False
    return any(
        p.kind == q.kind and p.family == q.family
        and p.source.overlaps(q.source)
        and p.destination.overlaps(q.destination)
        and _services_overlap(a.services, b.services, p.family)
        for p in a.parts for q in b.parts)


# -- index --------------------------------------------------------------------------------
# The service keys of the index as integers: every protocol, a whole protocol, a single
# port, a block of ports a range touches, an ICMP type (hashing an int is free, a tuple is
# not).
ALL_SERVICES = -1
# Ranges are keyed by the blocks of 1,024 ports they touch, not by one key per protocol:
# with one key, every rule of a protocol met every earlier uncovered range (on 100,000
# rules with scattered ranges, 174,000 failing coverage tests, 1.9 per rule and growing).
# A range touching more than WIDE_SPAN blocks is keyed once, under WIDE_ANY, which every
# probe with ports asks too.
WIDE_BITS = 10
WIDE_SPAN = 4
WIDE_ANY = 1 << 16  # above every block number (< 1 << 6)


def _protocol_key(number: int) -> int:
    return number << 19


def _port_key(number: int, port: int) -> int:
    return number << 19 | 1 << 17 | port  # port < 1 << 16


def _wide_key(number: int, block: int) -> int:
    return number << 19 | 1 << 18 | block  # block < 1 << 17


def _wide_keys(number: int, low: int, high: int) -> list[int]:
    """The keys a range [low, high] of protocol NUMBER is stored under."""
    first, last = low >> WIDE_BITS, high >> WIDE_BITS
    if last - first >= WIDE_SPAN:
        return [_wide_key(number, WIDE_ANY)]
    return [_wide_key(number, block) for block in range(first, last + 1)]


def _type_key(number: int, icmp_type: int) -> int:
    return number << 19 | 3 << 17 | icmp_type  # type < 256


def _service_keys(services: tuple[ServiceMatch, ...], family: int,
                  matches: tuple[ServiceMatch, ...] | None = None) -> set[int]:
    """Index keys of a flow's services in one family: whole protocols, single ports, port
    blocks of ranges, types (MATCHES: the services in FAMILY, if known)."""
    if not services:
        return {ALL_SERVICES}
    keys: set[int] = set()
    # `_protocol_key`, `_type_key`, `_port_key` and a one-block `_wide_keys` written out
    # (once per distinct list and family, but a few calls per port)
    for match in _in_family(services, family) if matches is None else matches:
        number = match.number << 19
        if match.icmp_type is not None:
            keys.add(number | 3 << 17 | match.icmp_type)
        elif not match.ports:  # the whole protocol
            keys.add(number)
        else:
            for low, high in match.ports:
                if low == high:
                    keys.add(number | 1 << 17 | low)
                elif low >> WIDE_BITS == high >> WIDE_BITS:  # the usual range: one block
                    keys.add(number | 1 << 18 | low >> WIDE_BITS)
                else:
                    keys.update(_wide_keys(match.number, low, high))
    return keys


def _probe_keys(services: tuple[ServiceMatch, ...], family: int,
                matches: tuple[ServiceMatch, ...] | None = None) -> tuple[int, ...]:
    """The index keys under which a rule covering these services must be stored
    (MATCHES: the services in FAMILY, if known).

    A covering list holds the first match's lowest port in one of its own matches: the
    whole protocol, that single port, or a range stored under that port's block or
    under WIDE_ANY. (Single ports that together hold a range count: `covers` joins
    them, so the single port is asked for ranges too.)"""
    keys = [ALL_SERVICES]
    if matches is None:
        matches = _in_family(services, family)
    if not matches:
        return tuple(keys)
    first = matches[0]
    keys.append(_protocol_key(first.number))
    if first.icmp_type is not None:
        keys.append(_type_key(first.number, first.icmp_type))
    elif first.ports:
        low = first.ports[0].low
        keys.append(_wide_key(first.number, WIDE_ANY))
        keys.append(_wide_key(first.number, low >> WIDE_BITS))
        keys.append(_port_key(first.number, low))
    return tuple(keys)


PartKeys = tuple[tuple[int, int], ...]  # per part of a flow: (source id, destination id)
# A source's flows by destination id (`CoverIndex.tables`): a dict, or while it has one
# destination the pair (destination id, its flow, or its flows when several)
Destinations = dict[int, list[Flow]] | tuple[int, Flow | list[Flow]]


class CoverIndex:
    """Earlier flows, found by (part kind, family, service key, source set, destination set).

    Address sets are keyed by identity (`SupersetIndex`): a flow can only be covered by
    one whose source and destination contain its own, and the sets containing a set are
    known per distinct set, so a lookup costs a few dictionary probes per set that
    contains the flow's sets, however many rules share them. Every flow of the block is
    registered up front (`keys`) so that the answers never change during the scan.
    """

    def __init__(self, flows: list[Flow]) -> None:
        self.sources = {family: SupersetIndex(family) for family in FAMILIES}
        self.destinations = {family: SupersetIndex(family) for family in FAMILIES}
        # set number (`Part.source_ref`) -> (the set, its id): a group's intervals are
        # hashed once per distinct side, not per rule; the number is trusted only for
        # the very set it was first seen with
        source_ids: dict[int, tuple[AddressSet, int]] = {}
        destination_ids: dict[int, tuple[AddressSet, int]] = {}

        def ident(ids: dict[int, tuple[AddressSet, int]], index: dict[int, SupersetIndex],
                  ref: int, addresses: AddressSet, family: int) -> int:
            if ref >= 0:
                seen = ids.get(ref)
                if seen is not None and seen[0] is addresses:
                    return seen[1]
            found = index[family].add(addresses.family(family))
            if ref >= 0:
                ids[ref] = (addresses, found)
            return found

        self.keys: list[PartKeys] = []
        append = self.keys.append
        for flow in flows:
            keys = []
            for p in flow.parts:  # mostly one
                # `ident` written out for a number seen before (most rules' sets)
                seen = source_ids.get(p.source_ref)
                src = seen[1] if seen is not None and seen[0] is p.source else \
                    ident(source_ids, self.sources, p.source_ref, p.source, p.family)
                seen = destination_ids.get(p.destination_ref)
                dst = seen[1] if seen is not None and seen[0] is p.destination else \
                    ident(destination_ids, self.destinations, p.destination_ref,
                          p.destination, p.family)
                keys.append((src, dst))
            append(tuple(keys))
        # per part slot (`_slot`: kind and family): service key -> source id ->
        # destination id -> flows, where a source with a single destination so far holds
        # the pair (destination id, flow) instead of a dict and a list: nine in ten do,
        # and a dict per source was a quarter of the check's memory at 100,000 rules
        self.tables: list[dict[int, dict[int, Destinations]]] = [{} for _ in range(SLOTS)]

    def scan(self, flows: list[Flow]) -> Iterator[tuple[Flow, Flow]]:
        """`shadowing` of FLOWS (the flows this index was made for): for each flow in
        order, the first earlier flow that covers it, else the flow is added to the
        tables. One loop, with what it looks up bound once: this runs once per rule, and
        calls per candidate search and per addition were a third of the scan's time."""
        tables = self.tables
        superset_of = {family: (self.sources[family].supersets,
                                self.destinations[family].supersets) for family in FAMILIES}
        for flow, keys in zip(flows, self.keys, strict=True):
            parts = flow.parts
            if not parts:
                continue
            summary = flow.summary
            # the earlier flows that may cover it, found by its first part
            part = parts[0]
            slot = tables[part.slot]
            buckets: list[list[Flow]] = []
            singles: list[Flow] = []  # the flows held alone in a pair (`tables`)
            if slot:
                family = part.family
                src, dst = keys[0]
                sources: frozenset[int] | None = None
                destinations: frozenset[int] | None = None
                got = summary._six if family == 6 else summary._four
                if got is None:
                    got = summary.keys(family)
                for key in got[2]:  # the probe keys
                    table = slot.get(key)
                    if table is None:
                        continue
                    if sources is None:
                        sources = superset_of[family][0](src)
                    if len(table) <= len(sources):
                        inners = [value for key, value in table.items() if key in sources]
                    else:
                        inners = []
                        for key in sources:
                            value = table.get(key)
                            if value is not None:
                                inners.append(value)
                    for inner in inners:
                        if destinations is None:
                            destinations = superset_of[family][1](dst)
                        if type(inner) is tuple:  # one destination (`tables`)
                            if inner[0] in destinations:
                                held = inner[1]
                                if type(held) is list:
                                    buckets.append(held)
                                else:
                                    singles.append(held)
                        elif len(inner) <= len(destinations):
                            for key, bucket in inner.items():
                                if key in destinations:
                                    buckets.append(bucket)
                        else:
                            for key in destinations:
                                bucket = inner.get(key)
                                if bucket is not None:
                                    buckets.append(bucket)
            if buckets or singles:
                if not singles and len(buckets) == 1:  # one bucket is in rule order
                    candidates = buckets[0]
                elif not buckets and len(singles) == 1:
                    candidates = singles
                else:
                    found = {candidate.position: candidate
                             for bucket in buckets for candidate in bucket}
                    for candidate in singles:
                        found[candidate.position] = candidate
                    candidates = [found[k] for k in sorted(found)]
                if len(parts) == 1:
                    # every candidate has a part of this slot whose source and
                    # destination hold the flow's (its bucket says so): `covers` less the
                    # address tests, which cost ~40 us each on large groups
                    family = part.family
                    covering = next((earlier for earlier in candidates
                                     if _scope_covers(earlier, flow)
                                     and earlier.summary.covers(summary, family)), None)
                else:
                    covering = next((earlier for earlier in candidates
                                     if covers(earlier, flow)), None)
                if covering is not None:
                    yield flow, covering
                    continue
            # A rule with a rate or connection limit lets the traffic beyond the limit on
            # to the rules after it: it covers nothing (it can itself be covered).
            rule = flow.rule
            if rule is not None and rule.conditional:
                continue
            # uncovered: stored under every part
            for part, (src, dst) in zip(parts, keys, strict=True):
                family = part.family
                got = summary._six if family == 6 else summary._four
                if got is None:
                    got = summary.keys(family)
                tables_of_slot = tables[part.slot]
                for key in got[1]:  # the index keys
                    table = tables_of_slot.get(key)
                    if table is None:
                        table = tables_of_slot[key] = {}
                    inner = table.get(src)
                    if inner is None:
                        table[src] = (dst, flow)
                    elif type(inner) is tuple:
                        held = inner[1]
                        if inner[0] != dst:
                            table[src] = {inner[0]: held if type(held) is list else [held],
                                          dst: [flow]}
                        elif type(held) is list:
                            if held[-1] is not flow:
                                held.append(flow)
                        elif held is not flow:
                            table[src] = (dst, [held, flow])
                    else:
                        bucket = inner.get(dst)
                        if bucket is None:
                            inner[dst] = [flow]
                        elif bucket[-1] is not flow:
                            bucket.append(flow)



def _firewall(cluster: Cluster) -> AddressSet:
    return cluster.all_member_addresses | cluster.vips


def shadowing(flows: list[Flow]) -> Iterator[tuple[Flow, Flow]]:
    """(shadowed, first earlier covering) pairs; each flow is tested against few candidates.

    A covered flow is left out of the index: coverage is transitive, so whatever it
    covers, the earlier flow covering it covers too and comes first. Repeated rules
    then cost one candidate each instead of one per repetition.
    """
    return CoverIndex(flows).scan(flows)


def _filter_flows(cluster: Cluster, firewall: AddressSet) -> list[Flow]:
    # The shadowing and the DNAT checks both need the filter flows of a cluster; building
    # them twice was 1.5 s of `fwc check` at 20,000 rules: memoised for this run.
    def build() -> list[Flow]:
        memo = PartsMemo(firewall, side_numbers(cluster))
        _, services = service_numbers(cluster)
        return memo.flows(cluster.rules, repeat(FILTER_HOOKS, len(cluster.rules)),
                          rule_sides(cluster)[0].pairs(), services[:len(cluster.rules)])

    return cluster.memo.get((FLOWS_MEMO, firewall), build)


def _nat_flows(cluster: Cluster, firewall: AddressSet) -> list[Flow]:
    memo = PartsMemo(firewall, side_numbers(cluster))
    _, services = service_numbers(cluster)
    return memo.flows(cluster.nat, [_nat_hooks(r) for r in cluster.nat],
                      rule_sides(cluster)[1].pairs(), services[len(cluster.rules):])


def _shadow_findings(policy: Policy) -> Iterator[tuple[Flow, Flow]]:
    for cluster in policy.clusters:
        firewall = _firewall(cluster)
        # Kept for whoever frees them (SPENT_INDEXES): freeing the index of 20,000 rules
        # (then some 60,000 dicts and lists) took ~0.05 s of the check.
        spent: list[CoverIndex] = cluster.memo.get(SPENT_INDEXES, list)
        for flows in (_filter_flows(cluster, firewall), _nat_flows(cluster, firewall)):
            index = CoverIndex(flows)
            yield from index.scan(flows)
            spent.append(index)


def _describe_rule(flow: Flow) -> str:
    rule = flow.rule
    assert rule is not None
    return f"line {rule.span.line} ({rule.action})"


SHADOW_RATIONALE = """
Rules match first-to-last and the first match wins, so a rule whose every
packet an earlier rule already matches can never take effect. fwc tests each
rule against every earlier rule of its block (the policy rules, and separately
the NAT rules, where dnat and snat work in different hooks and only nonat
spans both) and reports it when a single earlier rule covers it: the earlier
rule's sources, destinations, services (protocol, port intervals, ICMP type),
`in`/`out` interfaces and `only` scope all contain the later rule's. Traffic is
split as the compiler places it: `any` never includes the firewall itself, while
`firewall` and any item made only of firewall addresses (a VIP, `IFACE.vip`)
are traffic to or from the firewall (INPUT/OUTPUT), which a forwarding rule
never covers. Coverage by the union of several earlier rules is
not detected. The search uses an index of earlier rules by protocol and by the
address sets (objects, groups) that contain the rule's own, so large policies
stay fast however their groups are shaped."""


# Both codes come from one pass over the rules: FWC402 is registered with
# `describe` and emitted by the FWC401 check, so shadowing is computed once.
describe("FWC402", "redundant rule", Severity.WARNING, SHADOW_RATIONALE + """

When the earlier rule has the same action (and NAT target), the later rule is
merely redundant: a warning, since removing it changes nothing. A `notrack` rule
covered by a rule without `notrack` is not reported: its exemption from connection
tracking works in the raw table, before the filter rules and whatever their order,
so removing it would change what is tracked and replicated.""", stage="check")


@check("FWC401", "shadowed rule with a different action", Severity.ERROR, SHADOW_RATIONALE + """

When the earlier rule's action (or NAT target) differs, the later rule states an
intent the firewall will never carry out: an error. (The same pass reports
FWC402 for redundant rules.)""")
def shadowed_rules(policy: Policy) -> Iterable[Diagnostic]:
    for flow, earlier in _shadow_findings(policy):
        assert flow.rule is not None and earlier.rule is not None
        related = [Related(earlier.rule.span, "covered by this rule")]
        if flow.outcome == earlier.outcome:
            if _own_notrack(flow.rule, earlier.rule):
                continue  # removing it would change what is tracked: not redundant
            yield warning("FWC402", "rule is redundant: the rule at "
                          f"{_describe_rule(earlier)} already matches all its traffic with the "
                          "same action", flow.rule.span, hint="remove it", related=related)
        else:
            yield error_diag("FWC401", "rule can never match: the rule at "
                             f"{_describe_rule(earlier)} matches all its traffic first",
                             flow.rule.span,
                             hint="move it above that rule, or narrow the earlier rule",
                             related=related)


def _own_notrack(rule: Rule, earlier: Rule) -> bool:
    """RULE untracks its traffic and EARLIER does not. `notrack` works in the raw table,
    before any filter rule and whatever their order: a notrack rule an earlier accept
    covers still exempts its traffic from conntrack (and conntrackd), so removing it
    is no "changes nothing"."""
    return bool(getattr(rule, "notrack", False)) and not getattr(earlier, "notrack", False)


def _translated_flow(rule: NatRule, firewall: AddressSet) -> Flow | None:
    """The traffic a dnat rule hands to the filter: its destination is the target."""
    target = rule.target
    if target is None or not target.addresses:
        return None
    services = rule.services
    if target.port is not None:
        services = tuple(ServiceMatch(m.protocol, m.number, (PortRange(target.port, target.port),)
                                      if m.ports else m.ports, m.icmp_type, m.icmp_name, m.helper)
                         for m in services)
    to_firewall = firewall.covers(target.addresses)
    destination = (AddressSet(), target.addresses) if to_firewall \
        else (target.addresses, AddressSet())
    families = _live_families(services) & target.addresses.families
    parts = _parts(forwarded_and_local(rule.source, firewall), destination, families)
    return Flow(rule.index, FilterAction.ACCEPT, FILTER_HOOKS, parts, services,
                Services(services), rule.in_interface, None, rule.only,
                (FilterAction.ACCEPT,), rule)


class DestinationIndex:
    """Filter flows by (part kind, family) and destination hull, for DNAT targets."""

    def __init__(self, flows: list[Flow]) -> None:
        self.tables: dict[tuple[str, int], PrefixIndex[list[Flow]]] = {}
        for flow in flows:
            for part in flow.parts:
                table = self.tables.get((part.kind, part.family))
                if table is None:
                    table = self.tables[(part.kind, part.family)] = PrefixIndex(part.family)
                bucket = table.slot(part.destination_key, list)
                if not bucket or bucket[-1] is not flow:
                    bucket.append(flow)

    def candidates(self, flow: Flow) -> list[Flow]:
        found: dict[int, Flow] = {}
        for part in flow.parts:
            table = self.tables.get((part.kind, part.family))
            if table is None:
                continue
            for bucket in table.containing(part.destination_key):
                for candidate in bucket:
                    found[candidate.position] = candidate
        return [found[k] for k in sorted(found)]


@check("FWC403", "DNAT without an accept rule", Severity.WARNING, """
DNAT happens before filtering: the filter rules see the translated destination
(and port). A dnat rule whose translated traffic no policy rule accepts is
dropped right after being translated; the service looks published but is not.
fwc takes the first policy rule that matches part of the translated traffic: if
it accepts, fine; if it drops or rejects all of it, or no rule accepts any of
it, the dnat rule is reported.""")
def dnat_without_accept(policy: Policy) -> Iterable[Diagnostic]:
    for cluster in policy.clusters:
        dnats = [r for r in cluster.nat if r.action is NatAction.DNAT]
        if not dnats:
            continue
        firewall = _firewall(cluster)
        index = DestinationIndex(_filter_flows(cluster, firewall))
        # a dnat that shares load is checked for each of its backends
        for rule in [replace(r, target=t, pool=()) for r in dnats for t in r.targets]:
            translated = _translated_flow(rule, firewall)
            if translated is None or not translated.parts:
                continue
            blocker: Flow | None = None
            accepted = False
            for candidate in index.candidates(translated):
                if not overlaps(candidate, translated):
                    continue
                if candidate.action is FilterAction.ACCEPT:
                    accepted = True
                    break
                if covers(candidate, translated):
                    blocker = candidate
                    break
            if accepted:
                continue
            assert rule.target is not None
            if blocker is not None and blocker.rule is not None:
                yield warning("FWC403", f"traffic translated to '{rule.target.label}' is "
                              f"dropped by the rule at {_describe_rule(blocker)}", rule.span,
                              hint="add an accept rule for the translated destination above it",
                              related=[Related(blocker.rule.span, "drops it here")])
            else:
                yield warning("FWC403", f"no policy rule accepts the traffic translated to "
                              f"'{rule.target.label}'", rule.span,
                              hint=f"add 'accept from ... to {rule.target.label} service ...' "
                              "(filter rules see the translated destination)")


def _dynamic_uplink(cluster: Cluster, name: str | None) -> bool:
    """The interface gets its address at run time (DHCP, PPP): no member gives it one."""
    if name is None:
        return False
    links = [m.link(name) for m in cluster.members]
    return bool(links) and all(link is not None and not link.addresses for link in links)


@check("FWC404", "masquerade in a cluster", Severity.WARNING, """
MASQUERADE translates to the outgoing interface's own address, which differs
per member, and the kernel deletes masqueraded connections when that interface
goes down. After a failover the peer has no usable state for them: every
masqueraded session dies. SNAT to the interface's VIP moves with the VIP and
survives (conntrackd replicates the NAT mapping).""")
def masquerade_in_cluster(policy: Policy) -> Iterable[Diagnostic]:
    for cluster in policy.clusters:
        for rule in cluster.nat:
            if rule.action is not NatAction.MASQUERADE:
                continue
            iface = rule.out_interface or "IFACE"
            has_vip = bool(cluster.interface(iface) and cluster.interface(iface).vips)  # type: ignore[union-attr]
            fix = (f"write 'snat from {rule.source.label} to {rule.destination.label} "
                   f"out {iface} -> {iface}.vip'")
            if not has_vip and _dynamic_uplink(cluster, rule.out_interface):
                # A DHCP or PPP uplink has no address of its own in the policy: there is no
                # VIP to give it, so the hint must not propose one.
                fix = (f"'{iface}' has no static address (DHCP, PPP): no VIP can move "
                       "with a failover, so masquerade is the only choice there; expect the "
                       "sessions through it to be re-established after a failover")
            elif not has_vip:
                fix += f" after giving interface '{iface}' a VIP"
            yield warning("FWC404", "masquerade loses every translated session on failover",
                          rule.span, hint=fix)
