"""The from/to lists of a cluster's rules numbered for the checks: equal meaning, equal number.

A policy of 20,000 rules has a few thousand distinct sides. What the checks derive
from a side (its facts for the name checks, its split for the shadowing, its shapes
for FWC504) is computed once per number and found by a small integer, not by hashing
the side's address sets again per rule.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable, Iterator
from typing import NamedTuple

from fwc.checks import NUMBERS_MEMO
from fwc.model import Cluster, Endpoint, Rule
from fwc.model.addresses import AddressSet
from fwc.model.numbering import ServiceNumbers

EndpointKey = tuple[tuple[str, bool, AddressSet], ...]


def endpoint_key(endpoint: Endpoint) -> EndpointKey:
    """What a from/to list means, without where it was written: equal keys, equal sides.

    `side_of` reads only each item's kind, negation and addresses.
    """
    return tuple((item.kind, item.negated, item.addresses) for item in endpoint.items)


class SideNumbers:
    """The distinct sides of a cluster's rules numbered: equal `endpoint_key`, equal number.

    Hashing an `endpoint_key` hashes every interval of every group the side names, on
    every lookup (tuples do not keep their hash): with groups of hundreds of prefixes
    that was a tenth of the checks' time at 20,000 rules. A side is first looked up by
    what was written (each item's kind, negation and label: strings keep their hash),
    and that answer stands when its items hold the very address sets, the same objects,
    of the side first numbered under that text (the resolver shares an object's set
    among all its uses); otherwise the full key decides. Equal numbers therefore always
    mean equal keys, and the full key is hashed about once per distinct side.
    (`fwc.backend.lower.build.RuleKeys` numbers the policy rules' sides for the lowering
    the same way.)
    """

    __slots__ = ("_by_text", "_by_value")

    def __init__(self) -> None:
        self._by_text: dict[object, tuple[tuple[AddressSet, ...], int]] = {}
        self._by_value: dict[EndpointKey, int] = {}

    def number(self, endpoint: Endpoint) -> int:
        items = endpoint.items
        text: object
        if len(items) == 1:  # the usual side (a 3-tuple: never equal to a tuple of them)
            one = items[0]
            text = (one.kind, one.negated, one.label)
            got = self._by_text.get(text)
            if got is not None and got[0][0] is one.addresses:
                return got[1]
        else:
            text = tuple([(i.kind, i.negated, i.label) for i in items])
            got = self._by_text.get(text)
            if got is not None and all(
                    a is i.addresses for a, i in zip(got[0], items, strict=True)):
                return got[1]
        key = endpoint_key(endpoint)
        number = self._by_value.get(key)
        if number is None:
            number = self._by_value[key] = len(self._by_value)
        self._by_text[text] = (tuple([i.addresses for i in items]), number)
        return number


def side_numbers(cluster: Cluster) -> SideNumbers:
    """The cluster's `SideNumbers` for this run of the checks (dropped after them)."""
    return cluster.memo.get((NUMBERS_MEMO,), SideNumbers)


class RuleSides(NamedTuple):
    """The side numbers of a block of rules by position, as machine integers (a tuple
    per rule cost about 6 MB at 100,000 rules)."""

    source: array[int]
    destination: array[int]

    def pairs(self) -> Iterator[tuple[int, int]]:
        """(source number, destination number) of each rule, in order."""
        return zip(self.source, self.destination, strict=True)


def rule_sides(cluster: Cluster) -> tuple[RuleSides, RuleSides]:
    """The side numbers of `cluster.rules` and of `cluster.nat`, by position: each rule is
    numbered once per run, however many checks ask."""
    def numbered(rules: Iterable[Rule]) -> RuleSides:
        number = side_numbers(cluster).number
        out = RuleSides(array("l"), array("l"))
        for rule in rules:
            out.source.append(number(rule.source))
            out.destination.append(number(rule.destination))
        return out

    return cluster.memo.get((NUMBERS_MEMO, "rules"),
                            lambda: (numbered(cluster.rules), numbered(cluster.nat)))


def all_rule_sides(cluster: Cluster) -> Iterator[tuple[int, int]]:
    """`rule_sides` in the order of `cluster.all_rules()` (the policy rules, then NAT)."""
    filters, nats = rule_sides(cluster)
    yield from filters.pairs()
    yield from nats.pairs()


def service_numbers(cluster: Cluster) -> tuple[ServiceNumbers, array[int]]:
    """The cluster's `ServiceNumbers` for this run of the checks, and the numbers of the
    service lists of `cluster.all_rules()` by position (dropped after the checks)."""
    def numbered() -> tuple[ServiceNumbers, array[int]]:
        numbers = ServiceNumbers()
        return numbers, array("l", [numbers.number(rule) for rule in cluster.all_rules()])

    return cluster.memo.get((NUMBERS_MEMO, "services"), numbered)
