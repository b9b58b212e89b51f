"""The lowered rule model's vocabulary: filter and NAT rules are distinct types, kernel
targets, tables and built-in chains are the enums of fwc.model.vocabulary."""

from __future__ import annotations

import pytest
from conftest import EXAMPLE_NAMES, Examples

from fwc.backend.lower import lower, options_for


def test_lowered_tables_hold_their_own_rule_type(examples: Examples):
    """The nat table holds NatRules, every other table FilterRules, every kernel target is
    a Target member and every built-in chain a BuiltinChain (fwc.model.vocabulary)."""
    from fwc.backend.lower import FilterRule, NatRule
    from fwc.model.vocabulary import BuiltinChain, Target
    from fwc.model.vocabulary import Table as TableName

    seen_nat = False
    for name in EXAMPLE_NAMES:
        policy = examples[name].policy
        for cluster in policy.clusters:
            for member in cluster.members:
                for family in (4, 6):
                    ruleset = lower(cluster, member, family, options_for(policy))
                    for table in ruleset.tables:
                        assert type(table.name) is TableName
                        for chain in table.chains:
                            assert chain.builtin == (type(chain.name) is BuiltinChain)
                            for rule in chain.rules:
                                kind = NatRule if table.name is TableName.NAT else FilterRule
                                assert type(rule) is kind, (table.name, chain.name, rule)
                                assert isinstance(rule.target, Target) or \
                                    table.chain(rule.target) is not None, rule.target
                                seen_nat |= kind is NatRule
    assert seen_nat, "no example has a nat table: the test proves nothing about NatRule"


def test_lowered_rule_types_refuse_the_other_tables_targets():
    from fwc.backend.lower import Chain, FilterRule, Match, NatRule, Origin, Table
    from fwc.model.vocabulary import Table as TableName
    from fwc.model.vocabulary import Target

    origin = Origin("auto", "test")
    for target in (Target.DNAT, Target.SNAT, Target.MASQUERADE):
        with pytest.raises(ValueError, match="FilterRule cannot jump to"):
            FilterRule(Match(), target, origin)
    for target in (Target.DROP, Target.REJECT, Target.CT):
        with pytest.raises(ValueError, match="NatRule cannot jump to"):
            NatRule(Match(), target, origin)
    with pytest.raises(TypeError, match="must be Target.ACCEPT"):
        FilterRule(Match(), "ACCEPT", origin)
    assert FilterRule(Match(), "fwc-accept", origin).target == "fwc-accept"  # a user chain
    accept_nat = NatRule(Match(), Target.ACCEPT, origin)
    with pytest.raises(TypeError, match="NatRule in the filter table"):
        Table(TableName.FILTER, (Chain("FORWARD", Target.DROP, (accept_nat,)),))
    with pytest.raises(TypeError, match="FilterRule in the nat table"):
        Table(TableName.NAT, (Chain("PREROUTING", Target.ACCEPT,
                                    (FilterRule(Match(), Target.ACCEPT, origin),)),))


def test_no_module_looks_anything_up_by_id():
    """Not even within one call (the shared structure tool's rule): fwc.backend.render.iptables
    once kept a per-render dict keyed by id(rule)."""
    import re
    from pathlib import Path

    package = Path(__file__).resolve().parent.parent / "fwc"
    pattern = re.compile(r"\[\s*id\(|\bid\([^)]*\)\s*(in|not in)\b|\.get\(\s*id\(|\{\s*id\(")
    found = [f"{path.relative_to(package)}:{number}"
             for path in sorted(package.rglob("*.py"))
             for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
             if pattern.search(line)]
    assert found == []


def test_a_rule_shared_by_chains_and_renders_renders_the_same_everywhere():
    """The renderer renders a rule object once per call (arrange copies rules into several
    chains); what it remembers on the rule must never leak into another render."""
    from dataclasses import replace

    from fwc.backend.lower import AddressMatch, Chain, FilterRule, Match, NodeRuleset, Origin
    from fwc.backend.lower import Table as LoweredTable
    from fwc.backend.render.iptables import render
    from fwc.model.vocabulary import Table as TableName
    from fwc.model.vocabulary import Target

    def rule(n: int, target: Target = Target.ACCEPT) -> FilterRule:
        return FilterRule(Match(source=AddressMatch((f"198.18.0.{n}",))), target,
                          Origin("auto", f"rule {n}"))

    shared = [rule(n) for n in range(4)]

    def ruleset(chains: dict[str, list[FilterRule]]) -> NodeRuleset:
        table = LoweredTable(TableName.FILTER, tuple(
            Chain(name, Target.DROP if name.isupper() else None, tuple(rules))
            for name, rules in chains.items()))
        return NodeRuleset("c", "fw1", 4, (table,))

    def fresh(chains: dict[str, list[FilterRule]]) -> str:
        # equal rules, new objects: nothing remembered from an earlier render
        return render(ruleset({name: [replace(r) for r in rules]
                               for name, rules in chains.items()}))

    first = {"FORWARD": shared, "fwd-a": [shared[3], shared[1]], "fwd-b": shared[::-1]}
    second = {"INPUT": [rule(9, Target.DROP), shared[2], shared[0]], "in-x": [shared[2]]}
    for chains in (first, second, first, second):
        text = render(ruleset(chains))
        assert text == fresh(chains)
        for name, rules in chains.items():
            lines = [line for line in text.splitlines() if line.startswith(f"-A {name} ")]
            assert [line.split("--comment ")[1].split(" -j")[0].strip('"') for line in lines] \
                == [r.origin.label for r in rules]
