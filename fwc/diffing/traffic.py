"""Traffic newly allowed or denied by a change, in policy terms.

The analysis engine (fwc.analysis) answers this exactly, on intervals over the
packet fields, taking first-match order into account. Until a build has it,
`rule_deltas` gives the reviewer the same kind of statement from the changed
rules themselves: which objects and services a rule now covers that it did not
(it cannot see that an earlier rule shadows the change; it says so).
"""

from __future__ import annotations

from dataclasses import dataclass

from fwc import model
from fwc.addresses import AddressSet
from fwc.diffing.terms import rule_text

ALLOWING = {"accept"}


@dataclass(frozen=True)
class TrafficChange:
    verdict: str  # "allowed" or "denied": what this traffic newly is
    text: str  # in policy terms: from OBJECT to OBJECT service SERVICE
    where: str  # policy location deciding it (file:line), or ""
    member: str | None = None  # for member-scoped changes

    def __str__(self) -> str:
        only = f" (only {self.member})" if self.member else ""
        at = f"  [{self.where}]" if self.where else ""
        return f"{self.text}{only}{at}"


def traffic_changes(old: model.Cluster | None, new: model.Cluster | None) -> \
        tuple[list[TrafficChange], bool]:
    """(changes, exact): exact is False when only the rule-delta estimate was possible."""
    engine = _engine()
    if engine is not None and old is not None and new is not None:
        return engine(old, new), True
    return rule_deltas(old.rules if old else (), new.rules if new else ()), False


def _engine():  # type: ignore[no-untyped-def]
    """The analysis engine's cluster comparison, when this build has one."""
    try:
        from fwc.analysis import diff as analysis_diff  # type: ignore[attr-defined]
    except ImportError:
        return None
    return getattr(analysis_diff, "traffic_changes", None)


def _services(rule: model.Rule) -> set[str]:
    return {str(s) for s in rule.services} or {"any"}


def _addresses(endpoint: model.Endpoint) -> AddressSet:
    return AddressSet.everything() if endpoint.is_any else endpoint.addresses


def _same_except(a: model.Rule, b: model.Rule) -> str | None:
    """Which single dimension (source, destination, services) differs, if only one does."""
    if (a.action, a.in_interface, a.out_interface, a.only) != \
            (b.action, b.in_interface, b.out_interface, b.only):
        return None
    differs = [name for name, same in (
        ("source", a.source.label == b.source.label
         and _addresses(a.source) == _addresses(b.source)),
        ("destination", a.destination.label == b.destination.label
         and _addresses(a.destination) == _addresses(b.destination)),
        ("services", _services(a) == _services(b)),
    ) if not same]
    return differs[0] if len(differs) == 1 else ("" if not differs else None)


def _grew(verdict_if_grown: str, shrunk: str, rule: model.Rule, old: model.Rule) \
        -> list[TrafficChange]:
    """Statements for a rule that kept its place but covers more or less."""
    out: list[TrafficChange] = []
    dimension = _same_except(old, rule)
    if dimension is None or dimension == "":
        return out
    base = {"source": rule.source.label, "destination": rule.destination.label,
            "services": ", ".join(rule.service_labels) or "any"}
    if dimension == "services":
        gained = sorted(_services(rule) - _services(old))
        lost = sorted(_services(old) - _services(rule))
        for verdict, items in ((verdict_if_grown, gained), (shrunk, lost)):
            if items:
                out.append(TrafficChange(verdict, _phrase(
                    base["source"], base["destination"], ", ".join(items)),
                    rule.location, rule.only))
        return out
    side_new = getattr(rule, dimension)
    side_old = getattr(old, dimension)
    gained_set = _addresses(side_new) - _addresses(side_old)
    lost_set = _addresses(side_old) - _addresses(side_new)
    for verdict, delta, label in ((verdict_if_grown, gained_set, side_new.label),
                                  (shrunk, lost_set, side_old.label)):
        if not delta:
            continue
        named = f"{label} ({'now also' if delta is gained_set else 'no longer'} {delta})"
        src = named if dimension == "source" else base["source"]
        dst = named if dimension == "destination" else base["destination"]
        out.append(TrafficChange(verdict, _phrase(src, dst, base["services"]),
                                 rule.location, rule.only))
    return out


def _phrase(source: str, destination: str, services: str) -> str:
    return f"from {source} to {destination} service {services}"


def _whole(rule: model.Rule, verdict: str) -> TrafficChange:
    return TrafficChange(verdict, _phrase(rule.source.label, rule.destination.label,
                                          ", ".join(rule.service_labels) or "any")
                         + _scope(rule), rule.location, rule.only)


def _scope(rule: model.Rule) -> str:
    parts = []
    if rule.in_interface:
        parts.append(f" in {rule.in_interface}")
    if rule.out_interface:
        parts.append(f" out {rule.out_interface}")
    return "".join(parts)


def rule_deltas(old_rules: tuple[model.Rule, ...] | list[model.Rule],
                new_rules: tuple[model.Rule, ...] | list[model.Rule]) -> list[TrafficChange]:
    """What each changed filter rule newly covers, ignoring earlier rules' shadows."""
    old_left = list(old_rules)
    changes: list[TrafficChange] = []
    unmatched_new: list[model.Rule] = []
    for rule in new_rules:
        twin = next((o for o in old_left if rule_text(o) == rule_text(rule)), None)
        if twin is None:
            unmatched_new.append(rule)
            continue
        old_left.remove(twin)
        changes.extend(_delta(twin, rule))
    for rule in unmatched_new:
        partner = next((o for o in old_left if _same_except(o, rule)), None)
        if partner is not None:
            old_left.remove(partner)
            changes.extend(_delta(partner, rule))
            continue
        changes.append(_whole(rule, "allowed" if rule.action in ALLOWING else "denied"))
    for rule in old_left:
        changes.append(_whole(rule, "denied" if rule.action in ALLOWING else "allowed"))
    return changes


def _delta(old: model.Rule, new: model.Rule) -> list[TrafficChange]:
    if new.action in ALLOWING:
        return _grew("allowed", "denied", new, old)
    return _grew("denied", "allowed", new, old)
