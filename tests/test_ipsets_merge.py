"""`_merge_runs` and `_with_sets` find the rules to visit in C-level passes: the same
result as the plain walks they replaced, on random chains of lines of a few policy rules
(`_merge_runs` looks for runs only where a rule's label equals the next one's and copies
the rest as slices; `_with_sets` visits only the rules with a long list or product)."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from fwc.backend import ipsets
from fwc.backend.lower.ruleset import (
    AddressMatch,
    FilterRule,
    Match,
    Origin,
    Rule,
    address_width,
    with_match,
    with_sides,
)
from fwc.model.vocabulary import Target


def _walk(rules: tuple[Rule, ...], threshold: int) -> tuple[Rule, ...]:
    """The walk `_merge_runs` replaced: `_mergeable` of every rule and its neighbours."""
    out: list[Rule] = []
    i = 0
    while i < len(rules):
        j = i + 1
        side = None
        while j < len(rules):
            got = ipsets._mergeable(rules[i], rules[j])
            if got is None or (side is not None and got != side):
                break
            side = got
            j += 1
        run = rules[i:j]
        cidr_count = sum(len(getattr(r.match, side).cidrs) for r in run) if side else 0
        if side is not None and cidr_count > threshold:
            cidrs: list[str] = []
            for r in run:
                cidrs.extend(getattr(r.match, side).cidrs)
            merged = replace(run[0].match,
                             **{side: AddressMatch(tuple(dict.fromkeys(cidrs)))})
            out.append(replace(run[0], match=merged))
        else:
            out.extend(run)
        i = j
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
    """`_with_sets` as a walk over every rule (what the C-level passes replaced)."""
    out: list[Rule] = []
    for rule in ipsets._merge_runs(rules, threshold):
        m = rule.match
        sources, destinations = len(m.source.cidrs), len(m.destination.cidrs)
        if sources <= threshold and destinations <= threshold \
                and max(1, sources) * max(1, destinations) <= threshold:
            out.append(rule)
            continue
        source = namer.address(m.source, rule, "source")
        destination = namer.address(m.destination, rule, "destination")
        if address_width(source) * address_width(destination) > threshold:
            if address_width(source) >= address_width(destination):
                source = namer.address(m.source, rule, "source", force=True)
            else:
                destination = namer.address(m.destination, rule, "destination", force=True)
        if source is not m.source or destination is not m.destination:
            rule = with_match(rule, with_sides(m, source, destination))
        out.append(rule)
    return out


@settings(max_examples=300, deadline=None)
@given(st.lists(_line, max_size=14).map(tuple), st.integers(0, 4))
def test_with_sets_visits_the_rules_the_walk_changes(rules: tuple[Rule, ...],
                                                     threshold: int) -> None:
    plain, fast = ipsets._Namer(4, threshold), ipsets._Namer(4, threshold)
    assert ipsets._with_sets(rules, fast, threshold) == \
        _plain_with_sets(rules, plain, threshold)
    assert fast.sets == plain.sets
