"""Arrange FORWARD and INPUT so that a packet is not tested against every rule.

A flat FORWARD chain makes every new connection walk the rules in order until
one matches: with 20,000 rules that is thousands of tests per connection. This
pass turns the chain into a dispatch tree without changing what any packet
gets:

    FORWARD   head (rules for every packet: established, invalid, ...)
              -i eth0 -j fwd-lan          one jump per input device
              ...
              rules without an input device (packets from other devices)
    fwd-lan   -o eth1 -j fwd-lan-dmz      one jump per output device
              ...
              rules of input lan with no output device
              -j DROP                     the built-in chain's policy
    fwd-lan-dmz
              -p tcp -j fwd-lan-dmz-tcp   per protocol, when the chain is long
              ...
    fwd-lan-dmz-tcp
              -p tcp --dport 0:1023 -j fwd-lan-dmz-tcp-0       per port bucket, when long
              -p tcp --dport 1024:2047 -j fwd-lan-dmz-tcp-1024 (named by its lowest port)
              ...

Why it is exact: a sub-chain for value v of one dimension (input device,
output device, protocol, destination-port bucket) receives, in their original
order, every rule that can match a packet with that value (the rules naming v
and the rules not constrained in that dimension), and nothing else; only
packets with value v enter it, and it ends with the built-in chain's policy,
so such a packet never returns to rules it has already passed. Packets with
any other value skip the jumps and meet exactly the unconstrained rules.
First match is therefore preserved for every packet. tests/test_arrange.py
checks this with the evaluator of `fwc.analysis.evaluate` on every rule's corner
packets.

Short chains are left flat (ARRANGE_MIN_RULES): a small policy stays readable
rule by rule, and a jump costs as much as a rule.

Copies cost lines: a rule is copied into every sub-chain a packet it matches may
enter. A copied rule that iptables writes as several lines (a cross product of
short address lists, more ports than one multiport line) is written once, in a
chain of its own (fwc-p42-fwd-0: rule 42's, see _source), and each copy becomes one jump there
whose match is the rule's devices, protocol and ports (share_expansions); the
jump returns when the rule does not decide, so first match holds. This keeps
the arranged output of the benchmark's policies at 0.6-0.8x the lines it had
and lowers the rules a connection tests (docs/performance.md). nftables tests
an address list as one set lookup: its flavour (clip_ports) shares nothing.

In nftables most of a chain's rules are looked up in verdict maps, so a longer
chain costs a packet little, while every copy is one more rule or map element
for `nft -f` to load. Its flavour therefore splits by input or output device
only when the copies of the rules without that device add at most a quarter of
the chain's rules (COPIES_MAX_SHARE); protocol and port buckets still apply.
"""

from __future__ import annotations

import bisect
import hashlib
import math
import re
from collections import Counter
from collections.abc import Callable, Container, Hashable, Mapping
from dataclasses import replace
from itertools import accumulate, compress
from itertools import chain as chain_all
from itertools import count as counting
from operator import attrgetter, itemgetter, or_
from typing import cast

from fwc import protocols as proto
from fwc.backend.ipsets import IpSet, use_ipsets
from fwc.backend.lower.ruleset import (
    ANY,
    Chain,
    FilterRule,
    Match,
    NodeRuleset,
    Origin,
    Table,
    address_width,
    port_groups,
    rendered_lines,
)
from fwc.model import Member, Memo, PortRange
from fwc.model.records import dataclass, replacer
from fwc.model.vocabulary import BuiltinChain, Target
from fwc.model.vocabulary import Table as TableName

ARRANGE_MIN_RULES = 64  # below this a chain stays flat
SPLIT_MIN_RULES = 32  # a sub-chain shorter than this is not split further
# nftables: a device split may add copies of at most 1/COPIES_MAX_SHARE of its rules
COPIES_MAX_SHARE = 4
SHARE_MIN_SAVING = 2  # lines a chain of one copied rule must save (see share_expansions)
PORT_PROTOCOLS = frozenset(proto.IP_PROTOCOLS[p] for p in proto.PORT_PROTOCOLS)
CHAINS = ((BuiltinChain.FORWARD, "fwd"), (BuiltinChain.INPUT, "in"))
PROTOCOL_NAMES = {number: name for name, number in proto.IP_PROTOCOLS.items()}
PORT_MAX = 65535


@dataclass(frozen=True, slots=True)
class PortNode:
    """One split by destination-port buckets, as split_ports decided it: what a patch
    compile (fwc.backend.patch) needs to decide again whether an edit of one rule moves
    a cut. Packets jump to BUCKETS (the chains' names, in port order; BOUNDS: each
    bucket's lowest port, then PORT_MAX + 1); TARGET is the bucket count the cut rule was
    asked for and LOWS the lows it cut (low_counts, as sorted (port, count))."""

    target: int
    bounds: tuple[int, ...]
    buckets: tuple[str, ...]
    lows: tuple[tuple[int, int], ...]


@dataclass(frozen=True, slots=True)
class ProtocolChild:
    """One chain of a split by protocol, and what the arranger made of it: a patch
    compile (fwc.backend.patch) moves a rule between two of these and decides their
    port splits again (split_min, port_buckets, the cut rule). PARENT names the split
    node by its path; RULES and WITH_PORTS count the chain's rules (those with
    destination ports); PORT is its port split, None when its rules stay in CHAIN."""

    parent: str
    protocol: int
    chain: str
    rules: int
    with_ports: int
    named: int  # the rules that name PROTOCOL (the others name none, copied into each)
    port: PortNode | None


# A member's protocol splits (ProtocolChild) per family and built-in chain: what the
# arrangement records for a patch compile (optimise's SPLITS).
Splits = dict[int, dict[str, tuple[ProtocolChild, ...]]]


@dataclass(frozen=True, slots=True)
class _Dimension:
    """One way of splitting: the value a rule constrains, and the jump for a value.

    Rules keep their own `-i`/`-o`/`-p` inside a sub-chain: the test is free in the
    kernel (every iptables entry compares its interfaces anyway), the lines still
    read as written, and a rule copied into several chains stays one object that is
    rendered once.
    """

    name: str
    value: Callable[[FilterRule], Hashable | None]  # of the rule's match
    jump: Callable[[Hashable], Match]
    label: Callable[[Hashable], str]


def _device_label(names: Mapping[str, str]) -> Callable[[Hashable], str]:
    return lambda device: names.get(str(device), str(device))


def _dimensions(names: Mapping[str, str]) -> dict[str, _Dimension]:
    return {
        "in": _Dimension("in", attrgetter("match.in_device"),
                         lambda v: Match(in_device=str(v)), _device_label(names)),
        "out": _Dimension("out", attrgetter("match.out_device"),
                          lambda v: Match(out_device=str(v)), _device_label(names)),
        "protocol": _Dimension("protocol", attrgetter("match.protocol"),
                               lambda v: Match(protocol=int(v)),  # type: ignore[call-overload]
                               lambda v: PROTOCOL_NAMES.get(int(v), str(v))),  # type: ignore
    }


_NAME_CHARS = re.compile(r"[^A-Za-z0-9_-]")


def arrange_label(what: str) -> str:
    """The comment of the arrangement's own lines: `fwc arrange: in lan` on a jump by
    interface, `fwc arrange: edge.fw:12` on a jump to a rule's shared chain. Longer than
    WHAT: the check of comment lengths (FWC116) counts it for the labels and interface
    names that end up here, so that no such comment is over iptables' limit."""
    return f"fwc arrange: {what}"


def jump_label(dimension: str, value: str) -> str:
    """The comment of a jump by DIMENSION (in, out, protocol) to VALUE's chain (a logical
    interface's name for a device: `fwc arrange: out dmz`)."""
    return arrange_label(f"{dimension} {value}")


class _Arranger:
    def __init__(self, builtin: str, prefix: str, policy: Target, names: Mapping[str, str],
                 taken: set[str], split_min: int, clip_ports: bool = False,
                 copies_max_share: int = 0) -> None:
        self.builtin = builtin
        self.split_min = split_min
        self.clip_ports = clip_ports
        self.copies_max_share = copies_max_share  # 0: a split copies without a bound
        self.prefix = prefix
        self.policy = policy
        self.dimensions = _dimensions(names)
        self.chains: list[Chain] = []
        self.port_nodes: list[PortNode] = []  # split_ports' decisions, in the order made
        self.children: list[ProtocolChild] = []  # the chains of protocol splits
        self.taken = taken
        self.collided = False  # a name was taken already (the result depends on `taken`)

    def chain_name(self, parts: list[str]) -> str:
        return self.unique(_NAME_CHARS.sub("_", "-".join([self.prefix, *parts])))

    def shared_chain_name(self, key: str) -> str:
        """The chain of held rule KEY (hold_expansions: `p12-0`, policy rule 12's first held
        rule; `_1a2b3c-0`, by a digest of its label): `fwc-p12-fwd-0` beside the rule's own
        chains (`fwc-p12-FORWARD`, which `fwc diff` renumbers alike), `fwd-_1a2b3c-0`."""
        source, count = key.rsplit("-", 1)
        if source.startswith("_"):
            return self.chain_name([f"{source}-{count}"])
        return self.unique(f"fwc-{source}-{self.prefix}-{count}")

    def unique(self, name: str) -> str:
        """NAME within CHAIN_NAME_MAX (a longer one cut and ended by a digest of it), or
        the next free numbered variant when the table has it already."""
        base = name
        if len(name) > proto.CHAIN_NAME_MAX:
            digest = hashlib.sha256(name.encode()).hexdigest()[:6]
            name = base = f"{name[:proto.CHAIN_NAME_MAX - 7]}-{digest}"
        # Interface names hold '-', the separator: `lan` split by `out dmx` and an
        # interface `lan-dmx` both make `fwd-lan-dmx`. The next free number keeps the
        # names unique.
        name = next_free(base, self.taken, proto.CHAIN_NAME_MAX)
        self.collided = self.collided or name != base
        self.taken.add(name)
        return name

    def origin(self, what: str) -> Origin:
        return Origin("auto", arrange_label(what))

    def as_moved(self, rule: FilterRule) -> FilterRule:
        # RETURN in a built-in chain applies its policy; inside a sub-chain it must too.
        if rule.target is Target.RETURN:
            return replace(rule, target=self.policy, target_options=())
        return rule

    def arrange(self, rules: list[FilterRule], order: list[str], path: list[str],
                protocol: int | None = None) -> list[FilterRule]:
        """Rules for a chain whose packets all share the values on `path` (and `protocol`,
        when the chain is only entered through a `-p` jump)."""
        while order:
            dimension, order = order[0], order[1:]
            if len(rules) < self.split_min:
                return rules
            if dimension == "ports":
                if protocol in PORT_PROTOCOLS:
                    return self.split_ports(rules, path, protocol)
                continue
            got = self.split(rules, self.dimensions[dimension], order, path, protocol)
            if got is not None:
                return got
        return rules

    def split(self, rules: list[FilterRule], dim: _Dimension, order: list[str],
              path: list[str], protocol: int | None) -> list[FilterRule] | None:
        # One pass, in order: each rule goes to its value's list, or to every list.
        kinds: list[Hashable | None] = list(map(dim.value, rules))
        by_value: dict[Hashable, list[FilterRule]] = dict.fromkeys(kinds)  # type: ignore[arg-type]
        by_value.pop(None, None)
        for value in by_value:
            by_value[value] = []
        unconstrained = [rule for rule, value in zip(rules, kinds, strict=True) if value is None]
        # Splitting pays when most rules name a value: the others are copied everywhere.
        if not by_value or len(unconstrained) * 2 > len(rules):
            return None
        # (a rule without a value goes into every value's chain and stays on the
        # "other" path too: len(by_value) copies more of it)
        if self.copies_max_share and dim.name != "protocol" and len(unconstrained) \
                * len(by_value) * self.copies_max_share > len(rules):
            # nftables looks most of a chain's rules up in maps, so a longer chain costs
            # little per packet, but every copy is more to load (docs/performance.md)
            return None
        subsets = list(by_value.values())
        for rule, value in zip(rules, kinds, strict=True):
            if value is None:
                for subset in subsets:
                    subset.append(rule)
            else:
                by_value[value].append(rule)
        out: list[FilterRule] = []
        for value in sorted(by_value, key=str):
            label = dim.label(value)
            name = self.chain_name([*path, label])
            made = len(self.port_nodes)
            body = self.arrange(by_value[value], order, [*path, label],
                                int(value) if dim.name == "protocol" else protocol)  # type: ignore[call-overload]
            if dim.name == "protocol":
                rules_of = by_value[value]
                self.children.append(ProtocolChild(
                    "/".join(path), int(value), name, len(rules_of),  # type: ignore[call-overload]
                    len(rules_of) - list(map(_DPORTS, rules_of)).count(()),
                    len(rules_of) - len(unconstrained),
                    self.port_nodes[-1] if len(self.port_nodes) > made else None))
            self.chains.append(Chain(name, None, tuple(
                [*body, FilterRule(Match(), self.policy,
                                   self.origin(f"{self.builtin} policy"))])))
            out.append(FilterRule(dim.jump(value), name,
                                  Origin("auto", jump_label(dim.name, label))))
        out.extend(self.arrange(unconstrained, order, [*path, "other"],
                                None if dim.name == "protocol" else protocol))
        return out

    @staticmethod
    def clipped_ports(dports: tuple[PortRange, ...], low: int, high: int) \
            -> tuple[PortRange, ...]:
        """DPORTS inside a bucket chain that only packets with ports LOW-HIGH enter: its
        ports outside the bucket can never match there, so they go (a short list)."""
        return tuple(PortRange(max(p.low, low), min(p.high, high)) for p in dports
                     if p.low <= high and p.high >= low)

    def split_ports(self, rules: list[FilterRule], path: list[str],
                    protocol: int) -> list[FilterRule]:
        """Destination-port buckets covering 0-65535, about sqrt(n) of them, cut by
        halving (halving_cuts: a cut stays where it is when an edit changes one rule)."""
        ports_of = list(map(_DPORTS, rules))
        buckets = port_buckets(len(rules), len(rules) - ports_of.count(()))
        if buckets is None or not {None, protocol}.issuperset(map(_PROTOCOL, rules)):
            return rules
        lows = low_counts(ports_of)
        bounds = [0, *PORT_CUT_RULE(lows, buckets), PORT_MAX + 1]
        members: list[list[FilterRule]] = [[] for _ in bounds[:-1]]
        # the buckets of a port list, once per distinct list (rules share services)
        buckets_of: dict[tuple[PortRange, ...], tuple[int, ...]] = {}
        # and its ports in each of them (clip_ports), once per list and bucket: the
        # rules of one service share them
        clipped_of: dict[tuple[tuple[PortRange, ...], int], tuple[PortRange, ...]] = {}
        clip = self.clip_ports
        for rule, dports in zip(rules, ports_of, strict=True):
            if not dports:
                for bucket in members:
                    bucket.append(rule)
                continue
            indexes = buckets_of.get(dports)
            if indexes is None:
                indexes = buckets_of[dports] = _buckets(bounds, dports)
            if len(indexes) == 1 and not clip:  # the usual rule: one bucket
                members[indexes[0]].append(rule)
            elif clip:
                for index in indexes:
                    inside = clipped_of.get((dports, index))
                    if inside is None:
                        inside = clipped_of[dports, index] = self.clipped_ports(
                            dports, bounds[index], bounds[index + 1] - 1)
                    # (an equal list of another rule may be the key: compare values)
                    members[index].append(rule if inside == dports else
                                          _WITH_MATCH(rule, _WITH_DPORTS(rule.match, inside)))
            else:
                for index in indexes:
                    members[index].append(rule)
        out: list[FilterRule] = []
        names: list[str] = []
        for index, (low, next_low) in enumerate(zip(bounds, bounds[1:], strict=False)):
            # named by its lowest port, not its index: a bucket added or removed elsewhere
            # in the node leaves the others' names (and the lines jumping to them) alone
            name = self.chain_name([*path, str(low)])
            names.append(name)
            self.chains.append(Chain(name, None, tuple(
                [*members[index],
                 FilterRule(Match(), self.policy, self.origin(f"{self.builtin} policy"))])))
            out.append(FilterRule(Match(protocol=protocol,
                                        dports=(PortRange(low, next_low - 1),)),
                                  name, self.origin(f"ports {low}-{next_low - 1}")))
        self.port_nodes.append(PortNode(buckets, tuple(bounds), tuple(names),
                                        tuple(sorted(lows.items()))))
        # Only packets of `protocol` enter this chain, and every one of them takes a bucket;
        # the protocol-free rules follow anyway, so the chain is right on its own too.
        out.extend(r for r in rules if r.match.protocol is None)
        return out


_DPORTS = attrgetter("match.dports")
_WITH_MATCH = replacer(FilterRule, "match")
_WITH_DPORTS = replacer(Match, "dports")
_TARGET = attrgetter("target")
_PROTOCOL = attrgetter("match.protocol")
_LOW = itemgetter(0)  # of a PortRange


def next_free(base: str, taken: Container[str], most: int) -> str:
    """BASE, or else the first of BASE-2, BASE-3, ... that is not TAKEN, each cut to MOST
    characters: how a name derived from content that meets another stays unique (the
    arranger's chains, nft's sets and maps, fwc.backend.render.nftnames). It always finds
    one (each try is a name not tried before), and the same one for the same TAKEN."""
    name, number = base, 1
    while name in taken:
        number += 1
        suffix = f"-{number}"
        name = base[:most - len(suffix)] + suffix
    return name


def port_buckets(rules: int, with_ports: int) -> int | None:
    """How many buckets split_ports asks the cut rule for, for RULES rules of which
    WITH_PORTS have destination ports; None: no port split (most rules have none)."""
    if with_ports * 2 < rules:
        return None
    # About sqrt(n) buckets balance the jumps against the bucket length, but every
    # port-less rule is copied into every bucket: keep those copies under half of
    # the rules with ports, so the output grows by a bounded factor.
    return max(2, min(round(math.sqrt(rules)), with_ports // max(1, 2 * (rules - with_ports))))


def low_counts(ports_of: list[tuple[PortRange, ...]]) -> Counter[int]:
    """How many ranges of the lists in PORTS_OF start at each port (with multiplicity).
    Most places of a chain are copies of a few thousand rules: counted in C."""
    return Counter(map(_LOW, chain_all.from_iterable(ports_of)))


def halving_cuts(times: Mapping[int, int], buckets: int) -> list[int]:
    """The arranger's cut rule: the lowest ports of the buckets after the first, for port
    lows counted in TIMES (low_counts) and about BUCKETS buckets. The port space is halved,
    and a half halved again while it holds more lows than `most` (the power of two nearest
    total / BUCKETS) and at least two distinct lows (a half of one distinct low gains
    nothing from a cut: each of its rules would land in one side anyway).

    Why halving: a cut sits at a fixed port (a midpoint of a halving), so one edit that
    adds, removes or swaps a low moves a cut only where it makes one half's count cross
    `most` (or moves `most` itself, rarely: a power of two). Equal-count quantiles
    (quantile_cuts) moved a cut in 52-78 % of single changes, and with it the contents
    of the buckets beside it, so a one-line edit rewrote lines far from its rule
    (docs/performance.md, issue 12, twenty-sixth session)."""
    total = sum(n for n in times.values() if n)
    return halved(times, 2 ** round(math.log2(max(1.0, total / max(1, buckets)))))


def halved(times: Mapping[int, int], most: int) -> list[int]:
    """The cuts of halving the port space, and each half again while it holds more than
    MOST of the lows counted in TIMES at two distinct ports or more (halving_cuts; the
    nft port buckets' shared maps, fwc.backend.render.nftables `_bucket_sharing`)."""
    lows = sorted(low for low, n in times.items() if n)
    if not lows:
        return []
    ends = [0, *accumulate(times[low] for low in lows)]  # lows before each position
    cuts: list[int] = []
    halves = [(0, PORT_MAX)]
    while halves:
        low, high = halves.pop()
        first, past = bisect.bisect_left(lows, low), bisect.bisect_right(lows, high)
        if past - first > 1 and ends[past] - ends[first] > most:
            middle = (low + high + 1) // 2
            cuts.append(middle)
            halves += [(low, middle - 1), (middle, high)]
    return sorted(cuts)


def quantile_cuts(times: Mapping[int, int], buckets: int) -> list[int]:
    """The former cut rule, kept for comparison (bench/patchfloor.py --quantiles): the
    lows counted in TIMES cut into BUCKETS parts of about equal size, i.e.
    `sorted({lows[(i * len(lows)) // buckets] for i in range(1, buckets)} - {0})` of the
    sorted lows with multiplicity. Balanced, but one change of one low shifts every
    quantile after it (see halving_cuts)."""
    lows = sorted(low for low, n in times.items() if n)
    if not lows:
        return []
    ends = list(accumulate(map(times.__getitem__, lows)))  # sorted positions past each
    total = ends[-1]
    # (the low at position k of the sorted lows is the one whose run ends past k)
    return sorted({lows[bisect.bisect_right(ends, (i * total) // buckets)]
                   for i in range(1, buckets)} - {0})


# The rule split_ports cuts with (one place: bench/patchfloor.py swaps it to compare).
PORT_CUT_RULE: Callable[[Mapping[int, int], int], list[int]] = halving_cuts


def _buckets(bounds: list[int], dports: tuple[PortRange, ...]) -> tuple[int, ...]:
    """The indexes of the buckets (BOUNDS: each bucket's lowest port, then one past the
    highest port) that ports DPORTS touch, in order."""
    touched: list[int] = []
    for low, high in dports:
        first = bisect.bisect_right(bounds, low) - 1
        if high < bounds[first + 1]:  # the usual port or range: inside one bucket
            touched.append(first)
        else:
            touched.extend(range(first, bisect.bisect_right(bounds, high)))
    return (touched[0],) if len(touched) == 1 else tuple(sorted(set(touched)))


def _entry(match: Match) -> Match:
    """The part of MATCH that one iptables line can test, and that has no state: the
    devices, protocol, ports (one multiport line), states, ICMP type, and each address
    side that is one CIDR or a set. Every packet MATCH matches, it matches too."""
    # (built directly, field by field as Match declares them: dataclasses.replace cost
    # more than the rest of share_expansions' work on a copied rule)
    return Match(match.source if address_width(match.source) == 1 else ANY,
                 match.destination if address_width(match.destination) == 1 else ANY,
                 match.in_device, match.out_device, match.protocol,
                 match.dports if len(port_groups(match.dports)) == 1 else (),
                 match.icmp_type, match.tcp_not_syn, match.ctstate, match.hop_limit,
                 None, match.tcp_flags, None, None, None, match.ttl)


_HELD = "\x00held-"  # a placeholder target: never a chain name (see hold_expansions)


def hold_expansions(rules: list[FilterRule]) -> tuple[list[FilterRule], dict[str, FilterRule]]:
    """RULES with each rule of several iptables lines replaced by a placeholder (the same
    match, a placeholder target) for the arrangement, and the rule behind each placeholder.
    share_expansions then counts a rule's copies by its placeholder's name."""
    held: dict[str, FilterRule] = {}
    per_source: Counter[str] = Counter()  # held rules so far per source (see _source)
    out = list(rules)
    # Only a rule with a list of two addresses or more on a side, or more ports than one
    # multiport line holds (2 * ports > MULTIPORT_MAX), may be several lines: those are
    # found in C-level passes, and only they are visited (most rules are one line).
    several = _ONE.__lt__
    wide = map(or_, map(several, map(len, map(_SOURCE_CIDRS, rules))),
               map(several, map(len, map(_DESTINATION_CIDRS, rules))))
    many_ports = map(_HALF_MULTIPORT.__lt__, map(len, map(_DPORTS, rules)))
    for position in compress(counting(), map(or_, wide, many_ports)):
        rule = rules[position]
        if rendered_lines(rule.match) < 2:
            continue  # one line after all
        source = _source(rule.origin)
        name = f"{_HELD}{source}-{per_source[source]}"
        per_source[source] += 1
        held[name] = rule
        out[position] = FilterRule(rule.match, name, rule.origin)
    return out, held


def _source(origin: Origin) -> str:
    """A short name of ORIGIN's source: its policy rule's number ("p12", as the rule's own
    chains and rate buckets carry it, fwc.backend.lower.build), else a digest of its
    label. A held rule is called by it and its count among the held rules of that
    source before it (hold_expansions), so its chain's name depends on its own rule
    only: an edit elsewhere cannot rename it (a global running number did: one moved
    port cut renumbered every shared chain after it), and `fwc diff` reads an inserted
    rule's renumbering of it as of the rule's own chains (fwc.diffing.renumber)."""
    if origin.kind == "policy" and origin.rule is not None:
        return f"p{origin.rule.index + 1}"
    return "_" + hashlib.sha256(origin.label.encode()).hexdigest()[:6]


_ONE = 1
_HALF_MULTIPORT = proto.MULTIPORT_MAX // 2  # 2 * n > MULTIPORT_MAX: n > this
_SOURCE_CIDRS = attrgetter("match.source.cidrs")
_DESTINATION_CIDRS = attrgetter("match.destination.cidrs")


def share_expansions(body: list[FilterRule], chains: list[Chain], held: Mapping[str, FilterRule],
                     chain_name: Callable[[str], str],
                     origin: Callable[[str], Origin]) -> tuple[list[FilterRule], list[Chain]]:
    """An arrangement (BODY, CHAINS) of placeholders (hold_expansions) with each HELD rule
    that the arrangement copied into several chains moved into a chain of its own, once,
    and every copy made one jump there; the other placeholders become their rule again.
    s copies of an m-line rule (a cross product of short address lists, or more ports
    than one multiport line takes) cost s * m lines; shared m + s and the chain.

    Same decisions: the jump tests a part of the rule's match (_entry), so every packet
    the rule matches enters the chain, where the whole rule decides (or logs, marks)
    exactly as in place; a packet it does not match returns from the chain (a user chain
    without a verdict returns) to the rule after the jump. Stateful matches (limit,
    statistic, connlimit, hashlimit) stay on the rule only, so they count each packet
    once. Fewer rule tests too: a packet that the jump's devices, protocol, ports or
    single address exclude tests one line, not m.

    A chain is named by its held rule's source and count (hold_expansions, CHAIN_NAME:
    `fwc-p42-fwd-0`, policy rule 42's first held rule), never by a running number:
    deterministic, and renamed only by an edit of its own rule (or, as the rule's own
    chains are, by a rule inserted before it).
    """
    count: dict[str, int] = {}  # copies per placeholder
    # where the placeholders are: (chain index, -1 for the body; positions in it)
    places: list[tuple[int, list[int]]] = []
    placeholders = held.keys()
    for index, rules in enumerate((body, *(c.rules for c in chains)), -1):
        # (most chains hold no placeholder: told by one C-level pass over their targets)
        if placeholders.isdisjoint(map(_TARGET, rules)):
            continue
        # (a kernel target is a str too, never a placeholder's name: one C-level pass)
        positions = list(compress(counting(), map(held.__contains__, map(_TARGET, rules))))
        if not positions:
            continue
        places.append((index, positions))
        for i in positions:
            target = rules[i].target  # (a placeholder: a str)
            count[target] = count.get(target, 0) + 1  # type: ignore[index]
    final: dict[str, FilterRule] = {}
    made: list[Chain] = []
    # (in the held rules' order, the flat chain's: where a shared chain is declared does
    # not depend on which copy of it the tree meets first)
    for placeholder in filter(count.__contains__, held):
        copies, whole = count[placeholder], held[placeholder]
        lines = rendered_lines(whole.match)
        if copies * lines - (copies + lines + 1) < SHARE_MIN_SAVING:
            final[placeholder] = whole
            continue
        name = chain_name(placeholder.removeprefix(_HELD))
        made.append(Chain(name, None, (whole,)))
        # (the jump names its rule, not how many copies it has: that count changes with
        # the tree's shape, and with it every jump's line, after an edit of another rule)
        final[placeholder] = FilterRule(_entry(whole.match), name, origin(whole.origin.label))
    new_body, out = body, list(chains)
    for index, positions in places:
        rules = list(body if index < 0 else out[index].rules)
        for i in positions:
            rules[i] = final[rules[i].target]  # type: ignore[index]
        if index < 0:
            new_body = rules
        else:
            out[index] = Chain(out[index].name, out[index].policy, tuple(rules))
    return new_body, out + made


def arrange_chain(chain: Chain, prefix: str, names: Mapping[str, str], taken: set[str],
                  order: tuple[str, ...], min_rules: int, split_min: int,
                  clip_ports: bool, copies_max_share: int = 0) \
        -> tuple[Chain, list[Chain], bool, tuple[ProtocolChild, ...]]:
    """CHAIN arranged (and the chains it jumps to), whether a chain name it wanted
    was in `taken` already, and its protocol splits' chains. Without clip_ports, copied
    multi-line rules get a chain of their own (share_expansions)."""
    rules = cast("list[FilterRule]", list(chain.rules))  # arrange sees the filter table only
    # The head stays first and flat: the automatic rules every packet meets (established,
    # invalid, ...). Policy rules never belong to it, with or without devices: a policy
    # whose rules name no `in`/`out` is split by protocol and ports instead.
    head_end = 0
    while head_end < len(rules) and rules[head_end].origin.kind == "auto" \
            and rules[head_end].match.in_device is None \
            and rules[head_end].match.out_device is None:
        head_end += 1
    head, rest = rules[:head_end], rules[head_end:]
    if len(rest) < min_rules or chain.policy is None:
        return chain, [], False, ()
    arranger = _Arranger(chain.name, prefix, chain.policy, names, taken, split_min, clip_ports,
                         copies_max_share)
    moved = [arranger.as_moved(r) for r in rest]
    # nftables (clip_ports) tests an address list as one set lookup: nothing to share
    held: dict[str, FilterRule] = {}
    if not clip_ports:
        moved, held = hold_expansions(moved)
    body = arranger.arrange(moved, list(order), [])
    if body == moved:
        return chain, [], arranger.collided, ()
    chains = arranger.chains
    if held:
        body, chains = share_expansions(body, chains, held, arranger.shared_chain_name,
                                        arranger.origin)
    return (replace(chain, rules=tuple(head + body)), chains, arranger.collided,
            tuple(arranger.children))


@dataclass(slots=True)
class _Previous:
    """The last arrangement of one built-in chain in a run (per family and clip_ports):
    the next member's chain is usually equal (its rules the same objects, see
    fwc.backend.lower.build.SharedLowering), and then gets the same chains."""

    key: tuple[object, ...] | None = None
    chain: Chain | None = None
    result: tuple[Chain, tuple[Chain, ...], tuple[ProtocolChild, ...]] = (Chain("", None), (), ())
    named: frozenset[str] = frozenset()  # the chain names it took
    # A name it wanted was taken: the names depend on the table's other chains.
    collided: bool = True


def _arranged(memo: Memo | None, family: int, chain: Chain, prefix: str,
              names: dict[str, str], taken: set[str], order: tuple[str, ...], min_rules: int,
              split_min: int, clip_ports: bool, copies_max_share: int) \
        -> tuple[Chain, list[Chain], tuple[ProtocolChild, ...]]:
    """arrange_chain, or the previous member's result when everything it reads is equal."""
    if memo is None:
        new, extra, _, nodes = arrange_chain(chain, prefix, names, taken, order, min_rules,
                                             split_min, clip_ports, copies_max_share)
        return new, extra, nodes
    previous = memo.get(("arranged", family, chain.name, clip_ports), _Previous)
    key = (prefix, tuple(sorted(names.items())), order, min_rules, split_min, copies_max_share)
    # The table's other chains (`taken`) only matter when a name collides: reused when
    # none did then, and none of the names it took is taken here.
    if previous.key == key and not previous.collided and previous.chain == chain \
            and previous.named.isdisjoint(taken):
        taken |= previous.named
        return previous.result[0], list(previous.result[1]), previous.result[2]
    before = set(taken)
    new, extra, collided, nodes = arrange_chain(chain, prefix, names, taken, order, min_rules,
                                                split_min, clip_ports, copies_max_share)
    previous.key, previous.chain, previous.collided = key, chain, collided
    previous.result, previous.named = (new, tuple(extra), nodes), frozenset(taken - before)
    return new, extra, nodes


def arrange(ruleset: NodeRuleset, device_names: Mapping[str, str] | None = None, *,
            min_rules: int = ARRANGE_MIN_RULES, split_min: int = SPLIT_MIN_RULES,
            clip_ports: bool = False, memo: Memo | None = None,
            copies_max_share: int | None = None,
            splits: dict[str, tuple[ProtocolChild, ...]] | None = None) -> NodeRuleset:
    """FORWARD and INPUT of the filter table as dispatch trees; everything else unchanged.

    device_names maps a member's devices to logical interface names, so that chains
    are called fwd-lan-dmz on every member whatever the devices are called. With
    clip_ports a rule copied into a port bucket keeps only its ports inside the
    bucket (nftables: a short list needs no set; iptables keeps one shared rule).
    MEMO (the cluster's per-run memo): a chain equal to the one the previous member had
    in this run, with the same device names, is not arranged again. Without clip_ports
    (iptables) a rule of several lines copied into several chains is written once, in a
    chain of its own, when that saves SHARE_MIN_SAVING lines (share_expansions).
    copies_max_share: a split by device is left out when its copies would add more than
    1/copies_max_share of the rules (0: no bound); by default COPIES_MAX_SHARE with
    clip_ports (nftables), no bound without (iptables). SPLITS, when given, gets each
    arranged built-in chain's protocol splits (ProtocolChild) by the chain's name.
    """
    if copies_max_share is None:
        copies_max_share = COPIES_MAX_SHARE if clip_ports else 0
    table = ruleset.table(TableName.FILTER)
    if table is None:
        return ruleset
    names = dict(device_names or {})
    taken = {c.name for c in table.chains}
    chains = list(table.chains)
    added: list[Chain] = []
    orders = {BuiltinChain.FORWARD: ("in", "out", "protocol", "ports"),
              BuiltinChain.INPUT: ("in", "protocol", "ports")}
    for builtin, prefix in CHAINS:
        current = table.chain(builtin)
        if current is None:
            continue
        new, extra, nodes = _arranged(memo, ruleset.family, current, prefix, names, taken,
                                      orders[builtin], min_rules, split_min, clip_ports,
                                      copies_max_share)
        if splits is not None:
            splits[str(builtin)] = nodes
        chains = [new if c.name == builtin else c for c in chains]
        added.extend(extra)
    if not added:
        return ruleset
    return ruleset.with_table(Table(table.name, tuple(chains + added)))


def optimise(member: Member, rulesets: Mapping[int, NodeRuleset], *,
             clip_ports: bool = False, memo: Memo | None = None,
             ipset_threshold: int = proto.IPSET_THRESHOLD, min_rules: int = ARRANGE_MIN_RULES,
             split_min: int = SPLIT_MIN_RULES, copies_max_share: int | None = None,
             splits: Splits | None = None) \
        -> tuple[dict[int, NodeRuleset], tuple[IpSet, ...]]:
    """The default speed passes for one member: ipsets for long address lists, then the
    arranged FORWARD/INPUT chains. Returns the rulesets per family and every set.
    MEMO: the cluster's per-run memo, to reuse the previous member's arrangement of an
    equal chain (arrange). The thresholds are the passes' own (use_ipsets, arrange); tests
    lower them to give small policies sets and arranged chains. SPLITS, when given,
    gets the protocol splits (ProtocolChild) per family and built-in chain (arrange)."""
    names = {link.device: link.interface for link in member.links}
    out: dict[int, NodeRuleset] = {}
    sets: list[IpSet] = []
    for family, ruleset in sorted(rulesets.items()):
        with_sets, made = use_ipsets(ruleset, ipset_threshold, memo=memo)
        sets.extend(made)
        nodes: dict[str, tuple[ProtocolChild, ...]] | None = None
        if splits is not None:
            nodes = splits[family] = {}
        out[family] = arrange(with_sets, names, clip_ports=clip_ports, memo=memo,
                              min_rules=min_rules, split_min=split_min,
                              copies_max_share=copies_max_share, splits=nodes)
    return out, tuple(sets)
