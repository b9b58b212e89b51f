"""Name and endpoint checks (FWC1xx) the resolver cannot do alone.

The resolver already reports undefined, duplicate, unused and malformed names
(see codes.py). What needs the resolved model: address families that cannot
meet, and from/to lists whose negations make no sense.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable, Iterator, Sequence
from itertools import islice
from operator import attrgetter

from fwc import protocols as proto
from fwc.checks import SIDES_MEMO, check
from fwc.checks.sides import RuleSides, rule_sides, service_numbers, side_numbers
from fwc.diagnostics import Diagnostic, Severity, error, warning
from fwc.model import Cluster, Endpoint, Expectation, Policy, Rule, ServiceMatch
from fwc.model.addresses import AddressSet
from fwc.model.records import dataclass

BOTH = frozenset({4, 6})


def family_label(families: Iterable[int]) -> str:
    names = [f"IPv{f}" for f in sorted(families)]
    return " and ".join(names) if names else "no family"


def firewall_families(cluster: Cluster) -> frozenset[int]:
    return cluster.families | cluster.vips.families


@dataclass(frozen=True, slots=True)
class SideFacts:
    """What the name checks ask of a from/to list, from one pass over its items.

    `Endpoint`'s cached properties mean the same; walking the items once here is a
    fraction of their cost when every rule of a large policy is asked.
    """

    is_any: bool  # `any`, or only negated items
    firewall: bool  # names `firewall`
    positive: tuple[AddressSet, ...]  # positive items' addresses (none for any/firewall)
    negated: tuple[AddressSet, ...]  # negated items' addresses
    negated_any: bool  # `!any`
    broken: bool  # an address item without addresses (malformed or empty: reported)

    @staticmethod
    def of(endpoint: Endpoint) -> SideFacts:
        positive: list[AddressSet] = []
        negated: list[AddressSet] = []
        has_positive = has_any = firewall = negated_any = broken = False
        for item in endpoint.items:
            kind = item.kind
            if kind not in ("any", "firewall") and not item.addresses:
                broken = True
            if item.negated:
                negated_any = negated_any or kind == "any"
                negated.append(item.addresses)
                continue
            has_positive = True
            has_any = has_any or kind == "any"
            firewall = firewall or kind == "firewall"
            positive.append(item.addresses)
        return SideFacts(has_any or not has_positive, firewall, tuple(positive),
                         tuple(negated), negated_any, broken)

    def remaining(self) -> AddressSet:
        """The positive items' addresses minus the negated items' (`Endpoint`'s
        `addresses - excluded`)."""
        kept = AddressSet.union(self.positive)
        return kept - AddressSet.union(self.negated) if self.negated else kept

    def matches_no_address(self) -> bool:
        """Nothing remains of the positive items' addresses after the negated ones."""
        if not any(self.negated):
            return not any(self.positive)
        return not self.remaining()


def side_families(facts: SideFacts, cluster: Cluster) -> frozenset[int]:
    """The address families an endpoint (its FACTS) can match in this cluster."""
    if facts.is_any:
        return BOTH
    if any(facts.negated):
        families = set(facts.remaining().families)
    else:  # nothing subtracted: the families of the items
        families = {f for a in facts.positive for f, iv in ((4, a.v4), (6, a.v6)) if iv}
    if facts.firewall:
        families |= firewall_families(cluster)
    return frozenset(families)


def service_families(services: tuple[ServiceMatch, ...]) -> frozenset[int]:
    """Families the services can match in: ICMP is IPv4 only, ICMPv6 IPv6 only."""
    if not services:
        return BOTH
    out: set[int] = set()
    for match in services:
        out |= BOTH if match.family is None else {match.family}
    return frozenset(out)


Matcher = Rule | Expectation


@dataclass(frozen=True, slots=True)
class Sides:
    """The cluster's matchers by side number, and the facts of each number, once per run
    (the three checks below ask the same).

    Equal side numbers mean equal items (kind, negation, addresses: `fwc.checks.sides`),
    which is all `SideFacts` reads: the facts of a number are made once, from any side
    of that number, and what a check derives from them is found per number, not per
    rule. A rule is looked at by itself only when one of its numbers is reported.
    """

    facts: dict[int, SideFacts]  # by side number
    filters: RuleSides  # of `cluster.rules`, by position
    nats: RuleSides  # of `cluster.nat`
    expectations: RuleSides  # of `cluster.expectations`

    def blocks(self, cluster: Cluster) -> Iterator[tuple[str, Sequence[Matcher], RuleSides]]:
        """(what, matchers, their side numbers) of each block, in the order reported."""
        yield "rule", cluster.rules, self.filters
        yield "NAT rule", cluster.nat, self.nats
        yield "expectation", cluster.expectations, self.expectations

    def numbered(self, cluster: Cluster, wanted: set[int]) \
            -> Iterator[tuple[str, Matcher, SideFacts, SideFacts]]:
        """(what, matcher, source facts, destination facts) of every matcher with a side
        numbered in WANTED, in order; nothing to walk when WANTED is empty (the usual)."""
        if not wanted:
            return
        facts = self.facts
        for what, matchers, numbers in self.blocks(cluster):
            if wanted.isdisjoint(numbers.source) and wanted.isdisjoint(numbers.destination):
                continue
            for item, source, destination in zip(matchers, numbers.source,
                                                 numbers.destination, strict=True):
                if source in wanted or destination in wanted:
                    yield what, item, facts[source], facts[destination]


_SOURCE = attrgetter("source")
_DESTINATION = attrgetter("destination")


def _sides(cluster: Cluster) -> Sides:
    def build() -> Sides:
        numbers = side_numbers(cluster)
        filters, nats = rule_sides(cluster)  # numbered first, as the other checks do
        expectations = RuleSides(
            array("l", [numbers.number(e.source) for e in cluster.expectations]),
            array("l", [numbers.number(e.destination) for e in cluster.expectations]))
        # One side of each number (the last one written; any would do): in C, per rule.
        ends: dict[int, Endpoint] = {}
        for matchers, sides in ((cluster.rules, filters), (cluster.nat, nats),
                                (cluster.expectations, expectations)):
            ends.update(zip(sides.source, map(_SOURCE, matchers), strict=True))
            ends.update(zip(sides.destination, map(_DESTINATION, matchers), strict=True))
        facts = {number: SideFacts.of(end) for number, end in sorted(ends.items())}
        return Sides(facts, filters, nats, expectations)

    return cluster.memo.get((SIDES_MEMO,), build)


def _family_finding(what: str, item: Matcher, source: frozenset[int],
                    destination: frozenset[int]) -> Diagnostic | None:
    """FWC105 of one matcher whose sides have the families SOURCE and DESTINATION."""
    if not source or not destination:
        return None  # matches nothing at all: FWC112
    common = source & destination
    if not common:
        return error("FWC105", f"{what} source is {family_label(source)} only, "
                     f"destination {family_label(destination)} only: it can never "
                     "match", item.item_span("to", 0),
                     hint="source and destination must share an address family")
    # a service list always names a family: it can only miss a one-family pair
    services = service_families(item.services) if common != BOTH else None
    if services is not None and not services & common:
        return error("FWC105", f"{what} service {', '.join(item.service_labels)} is "
                     f"{family_label(services)} only, the endpoints are "
                     f"{family_label(common)}", item.span, hint=_family_hint(item.services))
    target = getattr(item, "target", None)
    if target is not None and target.addresses:
        if services is None:
            services = service_families(item.services)
        traffic = common & services
        if not traffic & target.addresses.families:
            return error("FWC105", f"{item.action} target '{target.label}' is "
                         f"{family_label(target.addresses.families)}, the traffic is "
                         f"{family_label(traffic)}", target.span,
                         hint="NAT cannot change the address family; use a target "
                         "of the traffic's family")
    return None


def _family_hint(services: tuple[ServiceMatch, ...]) -> str:
    if any(m.number in proto.IPV6_EXTENSION_HEADERS for m in services):
        return ("IPv6 carries AH (and protocols 0, 43, 44, 59, 60) as an extension header, "
                "and ip6tables and nft match the protocol after it: name that protocol")
    return "use icmp/ for IPv4 and icmpv6/ for IPv6, or a service with both"


def _mask(families: frozenset[int]) -> int:
    """FAMILIES as bits (1: IPv4, 2: IPv6), for a test per rule without a set."""
    return (4 in families) | (6 in families) << 1


@check("FWC105", "address family mismatch", Severity.ERROR, """
IPv4 and IPv6 are separate worlds: a packet has one family, and iptables and
ip6tables are separate rule sets. A rule whose source and destination share no
family (an IPv6 network to an IPv4 host) can never match; a service that exists
only in the other family (`icmp/...` between IPv6 endpoints, `icmpv6/...`
between IPv4 ones) never matches either; a NAT rule cannot translate to a
target of the other family (snat of IPv6 sources to an IPv4-only VIP, dnat of
IPv4 traffic to an IPv6 host). Mixed lists are fine as long as each family has
something to match: a service `ping` with both `icmp/echo-request` and
`icmpv6/echo-request` between IPv4 endpoints is not reported. AH (and protocols 0,
43, 44, 59, 60) exists in IPv4 only: IPv6 carries it as an extension header, which
ip6tables' `-p` and nft's `meta l4proto` look past (AH-protected TCP is TCP to them),
so an IPv6 rule for it would match nothing.""")
def family_mismatch(policy: Policy) -> Iterable[Diagnostic]:
    for cluster in policy.clusters:
        sides = _sides(cluster)
        families = {n: side_families(f, cluster) for n, f in sides.facts.items()}
        # Filter rules (the most, and no NAT target): by bits per side number and per
        # service list number; a rule is looked at only when its bits say it is reported.
        masks = [0] * (max(families, default=-1) + 1)
        for number, got in families.items():
            masks[number] = _mask(got)
        lists, listed = service_numbers(cluster)
        service_masks = [_mask(service_families(services)) for services in lists.lists]
        for rule, src, dst, services in zip(cluster.rules, sides.filters.source,
                                            sides.filters.destination,
                                            listed[:len(cluster.rules)], strict=True):
            source, destination = masks[src], masks[dst]
            common = source & destination
            if common == 3 or (common and service_masks[services] & common) \
                    or not source or not destination:
                continue  # nothing for _family_finding to find in a filter rule, in bits
            found = _family_finding("rule", rule, families[src], families[dst])
            if found is not None:
                yield found
        for what, matchers, numbers in islice(sides.blocks(cluster), 1, None):  # not rules
            for item, src, dst in zip(matchers, numbers.source, numbers.destination,
                                      strict=True):
                found = _family_finding(what, item, families[src], families[dst])
                if found is not None:
                    yield found


def _matches_nothing(facts: SideFacts) -> bool:
    """FWC112's side: it negates `any`, or its negations remove every address it names (an
    item without addresses was malformed or empty: already reported)."""
    return facts.negated_any or (not facts.is_any and not facts.firewall
                                 and not facts.broken and facts.matches_no_address())


def _negates(facts: SideFacts) -> bool:
    """FWC113's side: an address list with negated items (not `any`, not `firewall`)."""
    return not (facts.is_any or facts.firewall or not facts.negated)


@check("FWC112", "endpoint that matches nothing", Severity.ERROR, """
A from/to list means its positive items minus its negated (`!`) items; with only
negated items it means `any` minus them. A list whose negations remove
everything, or that negates `any`, matches no address, so the rule or
expectation is dead. This is almost always a typo in the list.""")
def empty_endpoint(policy: Policy) -> Iterable[Diagnostic]:
    for cluster in policy.clusters:
        sides = _sides(cluster)
        empty = {number for number, facts in sides.facts.items() if _matches_nothing(facts)}
        for what, item, source, destination in sides.numbered(cluster, empty):
            for side_name, key, side, facts in (
                    ("source", "from", item.source, source),
                    ("destination", "to", item.destination, destination)):
                if _matches_nothing(facts):
                    yield error("FWC112", f"{what} {side_name} '{side.label}' matches no "
                                "address", item.item_span(key, 0),
                                hint="the negated items remove everything the list names")


@check("FWC113", "negation that excludes nothing", Severity.WARNING, """
A negated item (`!x`) that does not overlap the positive items of its list
changes nothing: `from lan, !server` with `server` outside `lan` is just
`from lan`. Usually the wrong object was negated.""")
def useless_negation(policy: Policy) -> Iterable[Diagnostic]:
    for cluster in policy.clusters:
        sides = _sides(cluster)
        negating = {number for number, facts in sides.facts.items() if _negates(facts)}
        for what, item, source, destination in sides.numbered(cluster, negating):
            for key, side, facts in (("from", item.source, source),
                                     ("to", item.destination, destination)):
                if not _negates(facts):
                    continue
                positives = AddressSet.union(facts.positive)
                for index, negated in enumerate(side.items):
                    if not negated.negated or negated.kind in ("any", "firewall"):
                        continue
                    if not negated.addresses.overlaps(positives):
                        yield warning("FWC113", f"'!{negated.label}' excludes nothing from "
                                      f"this {what}'s list", item.item_span(key, index),
                                      hint=f"'{negated.label}' does not overlap "
                                      f"{_positive_labels(side)}")


def _positive_labels(side: Endpoint) -> str:
    labels = [i.label for i in side.items if not i.negated]
    return ", ".join(labels) if labels else str(AddressSet())
