"""The fail-closed ruleset a node loads at boot when its real rules do not load.

A node whose rules failed must neither route nor lock its administrators out,
and must not cut the HA plumbing: it keeps the compiled INPUT chain (loopback,
VRRP/AH, conntrackd sync, NDP, the stateful core and the policy's rules aimed
at the firewall itself, i.e. the management access the policy allows) and
OUTPUT's automatic rules, with DROP as every built-in chain's policy. FORWARD
is empty. No nat, raw or ipset: the failure may be an ipset or a NAT module,
and anything the fallback shares with the ruleset that failed could fail too.
"""

from __future__ import annotations

from dataclasses import replace

from fwc import protocols as proto
from fwc.backend.lower.ruleset import (
    Chain,
    ChainName,
    FilterRule,
    Match,
    NodeRuleset,
    Origin,
    Rule,
    Table,
)
from fwc.model.vocabulary import BuiltinChain, Target
from fwc.model.vocabulary import Table as TableName

FAILSAFE_CHAINS = (BuiltinChain.INPUT, BuiltinChain.FORWARD, BuiltinChain.OUTPUT)
ICMPV6 = proto.IP_PROTOCOLS["icmpv6"]


def _jumps(rules: tuple[Rule, ...], chains: dict[ChainName, Chain]) -> set[ChainName]:
    return {r.target for r in rules if r.target in chains}


def _auto(match: Match, label: str) -> FilterRule:
    return FilterRule(match, Target.ACCEPT, Origin("auto", f"fwc failsafe: {label}"))


def failsafe(ruleset: NodeRuleset) -> NodeRuleset:
    """RULESET (lowered, before ipsets) reduced to what a node may do after a failed load."""
    table = ruleset.table(TableName.FILTER)
    assert table is not None  # lowering always builds a filter table
    chains = {c.name: c for c in table.chains}
    output = [_auto(Match(out_device="lo"), "loopback")]
    if ruleset.family == 6:
        # Without neighbour discovery out, the node answers nobody over IPv6.
        output += [_auto(Match(protocol=ICMPV6, icmp_type=t, hop_limit=proto.NDP_HOP_LIMIT),
                         "ndp") for t in proto.NDP_ICMPV6_TYPES]
    # OUTPUT keeps only fwc's own rules (established, VRRP, sync): the policy's
    # OUTPUT rules open the node's outbound traffic, which a failed node does not need.
    output += [r for r in chains[BuiltinChain.OUTPUT].rules if r.origin.kind == "auto"]
    kept: dict[ChainName, tuple[Rule, ...]] = {
        BuiltinChain.INPUT: chains[BuiltinChain.INPUT].rules,
        BuiltinChain.FORWARD: (),
        BuiltinChain.OUTPUT: tuple(output),
    }
    # User chains the kept rules jump to (fwc-accept, negation and log chains).
    todo = set().union(*(_jumps(rules, chains) for rules in kept.values())) - set(kept)
    while todo:
        name = todo.pop()
        kept[name] = chains[name].rules
        todo |= _jumps(chains[name].rules, chains) - set(kept)
    new_chains = [Chain(name, Target.DROP, kept[name]) for name in FAILSAFE_CHAINS]
    new_chains += [Chain(name, None, kept[name]) for name in sorted(kept)
                   if name not in FAILSAFE_CHAINS]
    return replace(ruleset, tables=(Table(TableName.FILTER, tuple(new_chains)),))
