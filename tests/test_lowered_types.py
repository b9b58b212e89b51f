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
