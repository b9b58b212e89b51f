"""Service lists numbered by meaning, for every pass that keys work by a rule's services.

The checks (`fwc.checks.sides.service_numbers`) and the lowering
(`fwc.backend.lower.build.RuleKeys`) both compute things once per distinct service list
and find them again by a small integer.
"""

from __future__ import annotations

from fwc.model import Rule, ServiceMatch


class ServiceNumbers:
    """The distinct service lists of a cluster's rules numbered: equal lists, equal number.

    Hashing a list hashes every match and port range again (tuples keep no hash). A
    list is first looked up by the labels the rule wrote (strings keep their hash), and
    that answer stands when the list equals the one first numbered under those labels,
    which compares the very same match objects (the resolver shares a service's matches
    among its uses); otherwise the list itself decides.
    """

    __slots__ = ("_by_labels", "_by_value", "lists")

    def __init__(self) -> None:
        self._by_labels: dict[tuple[str, ...], int] = {}
        self._by_value: dict[tuple[ServiceMatch, ...], int] = {}
        self.lists: list[tuple[ServiceMatch, ...]] = []  # one list of each number

    def number(self, rule: Rule) -> int:
        matches = rule.services
        got = self._by_labels.get(rule.service_labels)
        if got is not None and self.lists[got] == matches:
            return got
        number = self._by_value.get(matches)
        if number is None:
            number = self._by_value[matches] = len(self.lists)
            self.lists.append(matches)
        self._by_labels[rule.service_labels] = number
        return number
