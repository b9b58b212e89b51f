"""Large address lists become named ipsets instead of one iptables rule per CIDR.

A lowered rule whose source or destination holds more than IPSET_THRESHOLD
CIDRs is rendered by `fwc.backend.render.iptables` as one line per CIDR (and per CIDR
of the other side: a cross product). This pass replaces such a list by a
`hash:net` set (and, when both sides are shorter but their cross product is
longer than the threshold, the longer side), one per object and family,
shared by every rule that uses the object, and returns the sets so that
`fwc.backend.render.ipset` can write `ipsets.rules`.

Names are deterministic: `fwc4-OBJECT` / `fwc6-OBJECT` when the list is exactly
a named object's addresses in that family (the usual case), otherwise
`fwc4.HASH` from the content (an address list written inline, or an object
minus the firewall's own addresses). '.' cannot appear in an object name, so
the two kinds never collide. Names fit ipset's 31 characters, and stay under
27 so that the loader's temporary `NAME.new` fits too.

Loading order (docs/contracts.md): `ipset restore < ipsets.rules` before
`iptables-restore`, because a rule naming a missing set is refused. Each set
is filled in a temporary set and swapped in, so a reload never leaves a rule
looking at a half-filled set.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import replace
from itertools import compress, count, islice
from operator import attrgetter, eq, is_, mul, or_

from fwc import protocols as proto
from fwc.backend.lower.ruleset import (
    TERMINAL,
    AddressMatch,
    Chain,
    NodeRuleset,
    Rule,
    Table,
    address_width,
    with_match,
    with_sides,
)
from fwc.model import AddressSet, Endpoint, Memo
from fwc.model.records import dataclass
from fwc.model.vocabulary import Target

SET_NAME_MAX = 27  # ipset allows 31; ".new" is appended while loading
SWAP_SUFFIX = ".new"


@dataclass(frozen=True, slots=True)
class IpSet:
    name: str
    family: int
    cidrs: tuple[str, ...]


def _hash(text: str, length: int = 10) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def _object_set_name(obj: str, family: int) -> str:
    name = f"fwc{family}-{obj}"
    if len(name) <= SET_NAME_MAX:
        return name
    return f"fwc{family}-{obj[:SET_NAME_MAX - 12]}-{_hash(obj, 6)}"


def content_name(prefix: str, elements: tuple[str, ...]) -> str:
    """PREFIX.HASH: a set named by its elements (48 bits of their digest), so the name
    does not depend on what else the file holds. The ipsets of address lists here, and
    the nft file's address and port sets (fwc.backend.render.nftnames)."""
    return f"{prefix}.{_hash(' '.join(elements), 12)}"


def _content_set_name(cidrs: tuple[str, ...], family: int) -> str:
    return content_name(f"fwc{family}", cidrs)


def _object_of(endpoint: Endpoint, cidrs: tuple[str, ...], family: int,
               known: dict[str, tuple[AddressSet, tuple[str, ...]]] | None = None) -> str | None:
    """The named object (positive, or negated for an exclusion) this list is exactly.

    KNOWN: each object's addresses and their CIDRs in this family, made once per object
    (by name; its entry is used only for the very AddressSet it was made from). A group
    of a few hundred prefixes is used by thousands of rules: its CIDRs were the largest
    cost of the pass."""
    for item in endpoint.items:
        name = item.object_name
        if not name:
            continue
        addresses = item.addresses
        got = known.get(name) if known is not None else None
        if got is None or got[0] is not addresses:
            got = (addresses, addresses.cidr_tuple(family))
            if known is not None:
                known[name] = got
        if got[1] is cidrs or got[1] == cidrs:
            return name
    return None


class _Namer:
    def __init__(self, family: int, threshold: int) -> None:
        self.family = family
        self.threshold = threshold
        self.sets: dict[str, IpSet] = {}
        # The sets named since `watch()`, and whether a name was decided by what had been
        # named before (an object's name taken by other addresses): see _Reused.
        self.used: dict[str, IpSet] = {}
        self.collided = False
        self.objects: dict[str, tuple[AddressSet, tuple[str, ...]]] = {}  # see _object_of

    def watch(self) -> None:
        self.used = {}
        self.collided = False

    def name_for(self, cidrs: tuple[str, ...], endpoints: Iterable[Endpoint]) -> str:
        name = None
        for endpoint in endpoints:
            obj = _object_of(endpoint, cidrs, self.family, self.objects)
            if obj is not None:
                name = _object_set_name(obj, self.family)
                break
        if name is None or (name in self.sets and self.sets[name].cidrs != cidrs):
            self.collided = self.collided or name is not None
            name = self._content_name(cidrs)
        made = self.sets.get(name)
        if made is None:  # (a set is named by thousands of rules: one IpSet per name)
            made = self.sets[name] = IpSet(name, self.family, cidrs)
        if name not in self.used:
            self.used[name] = made
        return name

    def _content_name(self, cidrs: tuple[str, ...]) -> str:
        """The content's name, numbered on when other addresses hold it: a 48-bit hash
        can be made to collide, and two lists under one name were one set (the second
        rule matched the first one's addresses)."""
        base = name = _content_set_name(cidrs, self.family)
        number = 1
        while name in self.sets and self.sets[name].cidrs != cidrs:
            self.collided = True  # (the name depends on what was named before)
            number += 1
            name = f"{base}-{number}"
        return name

    def fits(self, used: Iterable[IpSet]) -> bool:
        """No set of USED has its name taken by other addresses here."""
        sets = self.sets
        return all(sets.get(s.name, s).cidrs == s.cidrs for s in used)

    def add(self, used: Iterable[IpSet]) -> None:
        for one in used:
            self.sets.setdefault(one.name, one)

    def address(self, match: AddressMatch, rule: Rule, side: str,
                force: bool = False) -> AddressMatch:
        """MATCH (RULE's SIDE) as a set when its list is long enough (FORCE: two or more);
        the policy endpoints that may name the set are looked up only then."""
        if match.set_name is not None or len(match.cidrs) <= (1 if force else self.threshold):
            return match
        return AddressMatch((), self.name_for(match.cidrs, _endpoints_for(rule, side)),
                            match.negated)


def _mergeable(a: Rule, b: Rule) -> str | None:
    """'source'/'destination' when b differs from a only by that side's CIDRs."""
    origin, other_origin = a.origin, b.origin
    if origin is not other_origin and (origin.label != other_origin.label
                                       or origin != other_origin):
        return None  # (lines of different rules: the usual case, told by the label)
    if a.target != b.target or a.target_options != b.target_options:
        return None
    if a.target not in TERMINAL and a.target is not Target.RETURN:
        return None  # a LOG or a jump must keep firing once per line it had
    ma, mb = a.match, b.match
    for side, other in (("source", "destination"), ("destination", "source")):
        sa, sb = getattr(ma, side), getattr(mb, side)
        if sa.set_name or sb.set_name or sa.negated or sb.negated or not sa.cidrs \
                or not sb.cidrs:
            continue
        if replace(ma, **{side: sb}) == mb and getattr(ma, other) == getattr(mb, other):
            return side
    return None


_LABEL = attrgetter("origin.label")


def _merge_runs(rules: tuple[Rule, ...], threshold: int) -> tuple[Rule, ...]:
    """Consecutive rules differing only in one side's CIDRs (the RETURN lines of an
    exclusion, one per CIDR) become one rule with the CIDR list, when the run is long
    enough for a set. First match is kept: the lines of a run share their verdict."""
    # Only lines of one policy rule merge (`_mergeable` wants equal origins, so equal
    # labels): a run can start only where a rule's label equals the next one's. Those
    # places are found in one C-level pass; every other rule is copied as a slice
    # (a chain of 27,000 rules has a few hundred such places, mostly none).
    labels = list(map(_LABEL, rules))
    starts = compress(count(), map(eq, labels, islice(labels, 1, None)))
    out: list[Rule] = []
    i = 0
    for start in starts:
        if start < i:
            continue  # inside the run merged last
        out.extend(rules[i:start])
        i = _merge_run(rules, start, threshold, out)
    if i == 0:
        return rules
    out.extend(rules[i:])
    return tuple(out)


def _merge_run(rules: tuple[Rule, ...], i: int, threshold: int, out: list[Rule]) -> int:
    """The run of mergeable rules from position I added to OUT (merged, or as they are
    when too short for a set); the position after it."""
    j = i + 1
    side = None
    while j < len(rules):
        got = _mergeable(rules[i], rules[j])
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
        merged = replace(run[0].match, **{side: AddressMatch(tuple(dict.fromkeys(cidrs)))})
        out.append(replace(run[0], match=merged))
    else:
        out.extend(run)
    return j


def _endpoints_for(rule: Rule, side: str) -> list[Endpoint]:
    policy_rule = rule.origin.rule
    if policy_rule is None:
        return []
    return [policy_rule.source if side == "source" else policy_rule.destination]


@dataclass(slots=True)
class _Reused:
    """One chain's result in the previous member's use_ipsets of this run (per family,
    table, chain and threshold): the next member's chain is usually the same rules (the
    same objects, fwc.backend.lower.build.SharedLowering), and then gets the same rules.

    Exact: the rules are equal (`_same_rules`), and no name it chose depended on the
    sets named before (`collided`): each name is the object's or the content's. Reused
    only when none of the names it used is taken by other addresses in the new ruleset's
    sets so far, so that naming them again gives the same names; its sets are then
    added."""

    rules: tuple[Rule, ...] = ()
    result: tuple[Rule, ...] = ()
    used: tuple[IpSet, ...] = ()
    collided: bool = True


def use_ipsets(ruleset: NodeRuleset, threshold: int = proto.IPSET_THRESHOLD,
               memo: Memo | None = None) -> tuple[NodeRuleset, tuple[IpSet, ...]]:
    """The ruleset with every address list longer than `threshold` in a set, and the sets.

    MEMO (the cluster's per-run memo): a chain equal to the previous member's same chain
    gets the previous result (`_Reused`)."""
    namer = _Namer(ruleset.family, threshold)
    tables: list[Table] = []
    for table in ruleset.tables:
        chains: list[Chain] = []
        for chain in table.chains:
            reused = memo.get(("ipsets", ruleset.family, table.name, chain.name, threshold),
                              _Reused) if memo is not None else None
            if reused is not None and not reused.collided \
                    and _same_rules(reused.rules, chain.rules) and namer.fits(reused.used):
                namer.add(reused.used)
                chains.append(replace(chain, rules=reused.result))
                continue
            namer.watch()
            new_rules = tuple(_with_sets(chain.rules, namer, threshold))
            if reused is not None:
                reused.rules, reused.result = chain.rules, new_rules
                reused.used, reused.collided = tuple(namer.used.values()), namer.collided
            chains.append(replace(chain, rules=new_rules))
        tables.append(replace(table, chains=tuple(chains)))
    sets = tuple(sorted(namer.sets.values(), key=lambda s: s.name))
    return replace(ruleset, tables=tuple(tables)), sets


def _same_rules(a: tuple[Rule, ...], b: tuple[Rule, ...]) -> bool:
    """Equal rules, each from the same policy rule (a set's name comes from the policy
    rule behind a rule, which the rule's value does not compare). Mostly the very same
    objects (shared lowering): compared by identity first."""
    if len(a) != len(b):
        return False
    if all(map(is_, a, b)):  # (one C-level pass: the usual answer)
        return True
    return all(x is y or (x == y and x.origin.rule is y.origin.rule)
               for x, y in zip(a, b, strict=True))


def _with_sets(chain_rules: tuple[Rule, ...], namer: _Namer, threshold: int) -> list[Rule]:
    """A chain's rules with their long address lists in sets (named by NAMER)."""
    rules = _merge_runs(chain_rules, threshold)
    # Most rules have short lists on both sides: nothing to do. Only the rules with a
    # list longer than the threshold, or whose lines (the product of the two lengths,
    # each at least one) are more, are visited: found in C-level passes (an empty side
    # is one line, so then the other list alone decides).
    sources = list(map(len, map(_SOURCE_CIDRS, rules)))
    destinations = list(map(len, map(_DESTINATION_CIDRS, rules)))
    over = threshold.__lt__
    wide = map(or_, map(or_, map(over, sources), map(over, destinations)),
               map(over, map(mul, sources, destinations)))
    new_rules = list(rules)
    for position in compress(count(), wide):
        new_rules[position] = _rule_with_sets(rules[position], namer, threshold)
    return new_rules


def _rule_with_sets(rule: Rule, namer: _Namer, threshold: int) -> Rule:
    """RULE with its long address lists in sets (named by NAMER)."""
    m = rule.match
    source = namer.address(m.source, rule, "source")
    destination = namer.address(m.destination, rule, "destination")
    # Two lists each under the threshold still render as their cross product
    # (15 x 15 = 225 lines): the longer one becomes a set as well.
    if address_width(source) * address_width(destination) > threshold:
        if address_width(source) >= address_width(destination):
            source = namer.address(m.source, rule, "source", force=True)
        else:
            destination = namer.address(m.destination, rule, "destination", force=True)
    if source is not m.source or destination is not m.destination:
        return with_match(rule, with_sides(m, source, destination))
    return rule


_SOURCE_CIDRS = attrgetter("match.source.cidrs")
_DESTINATION_CIDRS = attrgetter("match.destination.cidrs")


def set_contents(sets: Iterable[IpSet]) -> dict[str, tuple[str, ...]]:
    return {s.name: s.cidrs for s in sets}


def with_sets_alone(rules: tuple[Rule, ...], family: int,
                    threshold: int = proto.IPSET_THRESHOLD) -> tuple[list[Rule], dict[str, IpSet]]:
    """RULES (one policy rule's lines of one chain) with their long address lists in sets
    as `use_ipsets` makes them when no other list took a set's name (`_Namer`), and the
    sets they name. A patch compile (fwc.backend.patch) checks those sets against the
    previous compile's: a name it finds with other addresses there is a collision, which
    the whole ruleset's naming would have numbered."""
    namer = _Namer(family, threshold)
    namer.watch()
    out = _with_sets(rules, namer, threshold)
    return out, dict(namer.used)
