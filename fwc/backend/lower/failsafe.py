"""The fail-closed ruleset a node loads at boot when its real rules do not load.

A node whose rules failed must neither route nor lock its administrators out,
and must not cut the HA plumbing: it keeps the compiled INPUT chain (loopback,
VRRP/AH, conntrackd sync, NDP, the stateful core and the policy's rules aimed
at the firewall itself, i.e. the management access the policy allows) and
OUTPUT's automatic rules, with DROP as every built-in chain's policy. FORWARD
is empty. No nat, raw or ipset: the failure may be an ipset or a NAT module,
and anything the fallback shares with the ruleset that failed could fail too.

Without ipsets, iptables writes a rule as one line per source CIDR x destination CIDR
x multiport group: a rule from a 250-prefix group to the firewall's 7 addresses is
1,750 lines. `factored` (for the iptables failsafe: nft matches address lists with sets
already) writes such a rule as a jump on one of its dimensions to a chain of its
own holding the product of the others (250 + 7 lines), where that is provably the
same decision: the rule's target is a verdict or a chain that always ends in one
(`never_returning`), and the rule has no rate, connection or nth limit.
"""

from __future__ import annotations

from dataclasses import replace

from fwc import protocols as proto
from fwc.backend.lower.build import MLD_REPORTS
from fwc.backend.lower.ruleset import (
    ANY,
    VERDICTS,
    Chain,
    ChainName,
    FilterRule,
    Match,
    NodeRuleset,
    Origin,
    Rule,
    Table,
    address_width,
    never_returning,
    port_groups,
    rendered_lines,
)
from fwc.model.vocabulary import BuiltinChain, Target
from fwc.model.vocabulary import Table as TableName

FAILSAFE_CHAINS = (BuiltinChain.INPUT, BuiltinChain.FORWARD, BuiltinChain.OUTPUT)
ICMPV6 = proto.IP_PROTOCOLS["icmpv6"]
FACTOR_PREFIX = "fwc-f"  # + the policy rule's number (`_name` skips any name already taken)


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
        # The answers to the MLD queries INPUT takes in: without them a snooping switch
        # stops forwarding ff02::12 and the solicited-node groups to the node, which
        # then hears no advert (and takes the VIPs) and no solicitation. (A filtered
        # OUTPUT has them among fwc's own rules, kept below.)
        compiled = {r.match for r in chains[BuiltinChain.OUTPUT].rules if r.origin.kind == "auto"}
        output += [_auto(match, "mld") for match in MLD_REPORTS if match not in compiled]
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


# -- factored products (the iptables failsafe) -------------------------------------------

def _port_width(match: Match) -> int:
    """Multiport groups the renderer splits MATCH's ports into (one line each)."""
    return len(port_groups(match.dports)) if match.dports else 1


def _split(match: Match) -> tuple[Match, Match] | None:
    """(outer, inner) for a rule with MATCH whose product is worth a chain, else None.

    Each of the three dimensions (sources, destinations, port groups) with one value
    stays in the outer rule with every single-valued match; of the others, the one
    whose lines plus the inner product are the fewest goes outside too (sources first
    on a tie: an INPUT packet is always for one of the firewall's own addresses, so
    sources outside send almost no packet into the chain). The inner rules hold the
    rest: destinations and/or ports, with the protocol (a port match needs it, and so
    does `REJECT --reject-with tcp-reset`).
    """
    widths = {"source": address_width(match.source),
              "destination": address_width(match.destination), "ports": _port_width(match)}
    many = [name for name, width in widths.items() if width > 1]
    if len(many) < 2:
        return None
    total = widths["source"] * widths["destination"] * widths["ports"]
    best = min(many, key=lambda name: widths[name] + total // widths[name])
    lines = widths[best] + total // widths[best] + 1  # + 1: the jump chain itself
    if lines >= total:
        return None
    inside = [name for name in many if name != best]
    ports_inside = "ports" in inside
    outer = replace(match, source=ANY if "source" in inside else match.source,
                    destination=ANY if "destination" in inside else match.destination,
                    dports=() if ports_inside else match.dports)
    inner = Match(source=match.source if "source" in inside else ANY,
                  destination=match.destination if "destination" in inside else ANY,
                  # always: REJECT --reject-with tcp-reset needs `-p tcp` on its own
                  # line (the kernel refuses it otherwise; `--test` does not notice)
                  protocol=match.protocol,
                  dports=match.dports if ports_inside else ())
    return outer, inner


def _factorable(rule: Rule, decides: frozenset[str]) -> bool:
    """Whether RULE's lines may be split without changing any decision or effect: its
    target ends the packet's walk wherever it jumps from (so which of its lines matched,
    and how many, makes no difference), and no match of it counts packets or keeps state.
    Negated sides stay: iptables writes `! -s` once per CIDR."""
    match = rule.match
    return (rule.target in VERDICTS or (type(rule.target) is str and rule.target in decides)) \
        and match.limit is None and match.hashlimit is None and match.connlimit is None \
        and match.statistic is None and match.source.set_name is None \
        and match.destination.set_name is None \
        and not match.source.negated and not match.destination.negated


def _name(rule: Rule, taken: set[str], last: dict[str, int]) -> str:
    """`fwc-f<policy rule number>`, then `-2`, `-3`... for the policy rule's other lowered
    rules (`fwc-fa` for a rule fwc made); never one of TAKEN (then the next number)."""
    policy = rule.origin.rule
    base = f"{FACTOR_PREFIX}{policy.index + 1}" if policy is not None else f"{FACTOR_PREFIX}a"
    count = last.get(base, 0)
    while True:
        count += 1
        name = base if count == 1 else f"{base}-{count}"
        if name not in taken:
            last[base] = count
            taken.add(name)
            return name


def _outer_key(rule: Rule) -> tuple[object, ...]:
    """What the rules of one policy rule's run must share to have one outer part: the
    origin, the sources and the matches that do not depend on the protocol."""
    m = rule.match
    return (rule.origin, m.source, m.in_device, m.out_device, m.ctstate, m.hop_limit, m.ttl)


def _lines(rule: Rule) -> int:
    """Lines of RULE alone: its product, or its factored form (`_split`)."""
    split = _split(rule.match)
    if split is None:
        return rendered_lines(rule.match)
    outer, inner = split
    return rendered_lines(outer) + rendered_lines(inner) + 1


def _run(rules: tuple[Rule, ...], start: int, decides: frozenset[str]) -> int:
    """The end of the run of rules from START that share one outer part: the lowered
    rules of one policy rule (one per service) from the same sources, each factorable."""
    key = _outer_key(rules[start])
    end = start + 1
    while end < len(rules) and _factorable(rules[end], decides) \
            and _outer_key(rules[end]) == key:
        end += 1
    return end


def factored(ruleset: NodeRuleset) -> NodeRuleset:
    """RULESET's filter table with each large product written as a jump to a chain of its
    own (see the module docstring): fewer lines, the same decision for every packet.

    A policy rule with several services is several lowered rules with the same sources,
    one after the other: when one jump per source to a chain holding all of them (each
    without its sources) is fewer lines than each rule on its own, they share it. That
    decides the same: all of them end the packet's walk, so the first of them that
    matches decides, in the chain as in the run."""
    table = ruleset.table(TableName.FILTER)
    if table is None:
        return ruleset
    decides = never_returning(table.chains)
    taken = {str(c.name) for c in table.chains}
    last: dict[str, int] = {}
    chains: list[Chain] = []
    made: list[Chain] = []
    for chain in table.chains:
        rules: list[Rule] = []
        index = 0
        count = len(chain.rules)
        while index < count:
            rule = chain.rules[index]
            m = rule.match
            wide = len(m.source.cidrs) > 1
            # Most rules have one multi-valued dimension at most: a quick no first.
            if not wide and (len(m.destination.cidrs) < 2
                             or 2 * len(m.dports) <= proto.MULTIPORT_MAX) \
                    or not _factorable(rule, decides):
                rules.append(rule)
                index += 1
                continue
            end = _run(chain.rules, index, decides) if wide else index + 1
            if end - index > 1:
                run = chain.rules[index:end]
                inner = [replace(r.match, source=ANY, in_device=None, out_device=None,
                                 ctstate=(), hop_limit=None, ttl=None) for r in run]
                if len(m.source.cidrs) + sum(map(rendered_lines, inner)) + 1 \
                        < sum(map(_lines, run)):
                    name = _name(rule, taken, last)
                    rules.append(FilterRule(Match(m.source, in_device=m.in_device,
                                                  out_device=m.out_device, ctstate=m.ctstate,
                                                  hop_limit=m.hop_limit, ttl=m.ttl),
                                            name, rule.origin))
                    made.append(Chain(name, None, tuple(
                        FilterRule(match, r.target, r.origin, r.target_options)
                        for match, r in zip(inner, run, strict=True))))
                    index = end
                    continue
            index += 1
            split = _split(m)
            if split is None:
                rules.append(rule)
                continue
            outer, inner_match = split
            name = _name(rule, taken, last)
            rules.append(FilterRule(outer, name, rule.origin))
            made.append(Chain(name, None, (FilterRule(inner_match, rule.target, rule.origin,
                                                      rule.target_options),)))
        chains.append(replace(chain, rules=tuple(rules)))
    if not made:
        return ruleset
    return ruleset.with_table(Table(TableName.FILTER, (*chains, *made)))


def iptables_failsafe(ruleset: NodeRuleset) -> NodeRuleset:
    """The failsafe as iptables writes it: `failsafe`, its products `factored`."""
    return factored(failsafe(ruleset))
