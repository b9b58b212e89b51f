"""`_merge_runs` and `_with_sets` find the rules to visit in C-level passes: the same
result as the plain walks they replaced, on random chains of lines of a few policy rules
(`_merge_runs` looks for runs only where a rule's label equals the next one's and copies
the rest as slices; `_with_sets` visits only the rules with a long list or product)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from fwc.backend import ipsets
from fwc.backend.lower.ruleset import (
    AddressMatch,
    FilterRule,
    Match,
    Origin,
    Rule,
)
from fwc.model.vocabulary import Target


def _walk(rules: tuple[Rule, ...], threshold: int) -> tuple[Rule, ...]:
    """The walk `_merge_runs` replaced: a run tried from every position, not only where
    a rule's label equals the next one's."""
    out: list[Rule] = []
    i = 0
    while i < len(rules):
        i = ipsets._merge_run(rules, i, threshold, out)
    return tuple(out)


ORIGINS = [Origin("policy", f"p.fw:{n}") for n in range(3)]
CIDRS = [f"192.0.2.{n}" for n in range(6)]
_line = st.builds(
    lambda origin, source, destination, target, port: FilterRule(
        Match(AddressMatch(source), AddressMatch(destination), protocol=6 if port else None,
              dports=()), target, origin),
    st.sampled_from(ORIGINS),
    st.lists(st.sampled_from(CIDRS), max_size=2, unique=True).map(tuple),
    st.lists(st.sampled_from(CIDRS), max_size=2, unique=True).map(tuple),
    st.sampled_from([Target.ACCEPT, Target.RETURN, Target.LOG]),
    st.booleans())


@settings(max_examples=300, deadline=None)
@given(st.lists(_line, max_size=14).map(tuple), st.integers(0, 4))
def test_merge_runs_is_the_walk(rules: tuple[Rule, ...], threshold: int) -> None:
    assert ipsets._merge_runs(rules, threshold) == _walk(rules, threshold)


def test_merge_runs_merges_a_run_of_one_rule_lines() -> None:
    origin = ORIGINS[0]
    run = tuple(FilterRule(Match(AddressMatch((c,)), AddressMatch(("198.51.100.1",))),
                           Target.RETURN, origin) for c in CIDRS)
    other = FilterRule(Match(), Target.ACCEPT, ORIGINS[1])
    got = ipsets._merge_runs((other, *run, other), 3)
    assert len(got) == 3
    assert got[1].match.source.cidrs == tuple(CIDRS)
    assert got == _walk((other, *run, other), 3)


def _plain_with_sets(rules: tuple[Rule, ...], namer: ipsets._Namer,
                     threshold: int) -> list[Rule]:
    """`_with_sets` as a walk over every rule with the plain test of which to visit (what
    the C-level passes replaced)."""
    out: list[Rule] = []
    for rule in ipsets._merge_runs(rules, threshold):
        sources, destinations = len(rule.match.source.cidrs), len(rule.match.destination.cidrs)
        if sources <= threshold and destinations <= threshold \
                and max(1, sources) * max(1, destinations) <= threshold:
            out.append(rule)
        else:
            out.append(ipsets._rule_with_sets(rule, namer, threshold))
    return out


@settings(max_examples=300, deadline=None)
@given(st.lists(_line, max_size=14).map(tuple), st.integers(0, 4))
def test_with_sets_visits_the_rules_the_walk_changes(rules: tuple[Rule, ...],
                                                     threshold: int) -> None:
    plain, fast = ipsets._Namer(4, threshold), ipsets._Namer(4, threshold)
    assert ipsets._with_sets(rules, fast, threshold) == \
        _plain_with_sets(rules, plain, threshold)
    assert fast.sets == plain.sets
