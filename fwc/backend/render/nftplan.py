"""Which rules of a chain become one nft lookup: the plan of the nftables backend.

A chain's rules become items (`plan`): a run of jumps that each test one distinct value
of one field is a `Dispatch` (one verdict-map lookup); rules that differ only in
devices, addresses, ports and verdict are a `Concat` (one lookup in a concatenated set
or verdict map), moved next to each other only past rules no packet of theirs can match
(`_grouped`); DNAT load-sharing lines are a `Share`; every other rule stays itself.
Each is an exact rewrite: fwc.analysis.nftread expands the file back, and
tests/test_nft_equivalence.py proves both decide every sampled packet alike. How the
items are written is fwc.backend.render.nftables'.
"""

from __future__ import annotations

import itertools
import operator
from bisect import bisect_left
from collections.abc import Iterable
from dataclasses import fields as dataclass_fields
from dataclasses import replace
from typing import Any, cast

from fwc import protocols as proto
from fwc.backend.lower.ruleset import AddressMatch, FilterRule, Match, NatRule, Rule
from fwc.backend.render.nftnames import NftUnsupported
from fwc.model import PortRange
from fwc.model.addresses import FAMILY_BITS, cidr_span
from fwc.model.intervals import normalise
from fwc.model.records import dataclass
from fwc.model.semantics import cidr_blocks
from fwc.model.vocabulary import Target

# The protocols whose ports nft tests by name (`tcp dport`), each with that name.
PROTOCOL_WORDS = {proto.IP_PROTOCOLS["tcp"]: "tcp", proto.IP_PROTOCOLS["udp"]: "udp"}
@dataclass(frozen=True, slots=True)
class Dispatch:
    """Consecutive jumps, each testing one distinct value of one field: one map lookup.

    `field` is a DISPATCH_TYPES key; `protocol` the protocol of a port dispatch;
    `entries` the (value, rule) pairs in order: a device name, a protocol number or a
    PortRange. Exact: the values are distinct (port buckets disjoint), so at most one
    of the rules can match a packet, and a packet matching none goes on after them.
    """

    field: str
    protocol: int | None
    entries: tuple[tuple[object, Rule], ...]


@dataclass(frozen=True, slots=True)
class Concat:
    """Rules that differ only in addresses and ports: one lookup in a concatenated set.

    `fields` names the key (a subset of "iifname", "oifname", "saddr", "daddr", "dport",
    in that order); each rule gives its elements (its devices x source blocks x
    destination blocks x port ranges).
    Exact: the rules share everything else (devices, protocol, states, the target,
    which is terminal or a chain that never returns), their elements are disjoint
    (the kernel refuses overlaps), and the rules moved next to each other only moved
    past rules no packet of theirs can match (`plan`).
    """

    fields: tuple[str, ...]
    rules: tuple[Rule, ...]
    key: object = None  # the shape the rules share (`Shapes.shape`)
    verdicts: bool = False  # a verdict map: each element carries its rule's verdict


@dataclass(frozen=True, slots=True)
class Share:
    """DNAT load sharing: the lines `-m statistic --mode nth --every N --packet 0`,
    `--every N-1`, ..., `--every 2` and a last one without, each to its own backend,
    as one `dnat to numgen inc mod N map { 0 : a, 1 : b, ... }`. Both send connection
    k of every N to backend k (round robin); `rule` is the first line without its
    statistic match, `targets` each line's `--to-destination`.
    """

    rule: Rule
    targets: tuple[str, ...]


Item = Rule | Dispatch | Concat | Share
# Bytes of a concatenated set key per field and family (each field padded to 4 bytes):
# nft loads the whole key into its registers, 16 x 32 bits.
KEY_BYTES = {(f, family): size for family, address in ((4, 4), (6, 16)) for f, size in (
    ("iifname", 16), ("oifname", 16), ("saddr", address), ("daddr", address), ("dport", 4))}
KEY_BYTES_MAX = 64
# The Match fields a concatenated set's rules must share besides the devices: all but
# the ones a key holds (`Shapes.shape`).
MATCH_DEFAULTS = tuple((f.name, getattr(Match(), f.name)) for f in dataclass_fields(Match))
REST_FIELDS = tuple(f.name for f in dataclass_fields(Match) if f.name not in (
    "source", "destination", "dports", "in_device", "out_device"))
MIN_CONCAT = 4  # fewer rules stay rules: a small policy reads rule by rule
WINDOW = 32  # how many items back a rule may move to join its kind (bounds the work)
GROUP_MAX = 256  # rules per set (bounds the overlap checks: a rule is compared to each)
ELEMENTS_MAX = 1  # a rule with a larger cross product stays a rule (named sets instead)


def _dispatch_key(rule: Rule) -> tuple[str, int | None, object] | None:
    """(field, protocol, value) when RULE is a jump testing one value and nothing else."""
    target = rule.target
    if not (isinstance(target, str) and not isinstance(target, Target)) \
            and target not in (Target.ACCEPT, Target.DROP):
        return None
    if rule.target_options:
        return None
    m = rule.match
    source, destination = m.source, m.destination
    # (most rules test an address: then no key, without walking every field of the match)
    if source.cidrs or source.set_name is not None or source.negated or \
            destination.cidrs or destination.set_name is not None or destination.negated:
        return None
    present = tuple(name for name, default in MATCH_DEFAULTS if getattr(m, name) != default)
    if present == ("in_device",):
        return "iifname", None, m.in_device
    if present == ("out_device",):
        return "oifname", None, m.out_device
    if present == ("protocol",):
        return "meta l4proto", None, m.protocol
    if present == ("protocol", "dports") and m.protocol in PROTOCOL_WORDS and \
            len(m.dports) == 1:
        return "dport", m.protocol, m.dports[0]
    return None


def _disjoint(values: list[object], value: object) -> bool:
    if isinstance(value, PortRange):
        return all(isinstance(v, PortRange) and (v.high < value.low or v.low > value.high)
                   for v in values)
    return value not in values



def _collapsed_blocks(cidrs: tuple[str, ...]) -> tuple[tuple[int, int], ...]:
    """The blocks `ipaddress.collapse_addresses` makes of CIDRS (of one family), as
    sorted (lowest, highest) pairs: the union's intervals cut into their largest
    aligned blocks, which is the one smallest cover by networks."""
    if not cidrs:
        return ()
    spans = [cidr_span(c) for c in cidrs]
    family = spans[0][0]
    if any(f != family for f, _, _ in spans):
        raise TypeError(f"addresses of two families in one list: {cidrs[:4]}")
    bits = FAMILY_BITS[family]
    return tuple((network, network + (1 << (bits - length)) - 1)
                 for low, high in normalise([(lo, hi) for _, lo, hi in spans])
                 for length, network in cidr_blocks(low, high, family))


class Shapes:
    """Per chain: which rules may join a concatenated set, and which are disjoint."""

    def __init__(self, ipsets: dict[str, tuple[str, ...]],
                 never_return: frozenset[str], family: int = 4,
                 blocks: dict[tuple[str, ...], tuple[tuple[int, int], ...]] | None = None) \
            -> None:
        self.ipsets = ipsets
        self.never_return = never_return
        self.family = family
        # cidrs -> blocks: a function of the cidrs alone, so shared by every table and
        # member of a run (`render` passes the memo kept under BLOCKS_MEMO)
        self.memo: dict[tuple[str, ...], tuple[tuple[int, int], ...]] = \
            {} if blocks is None else blocks
        self.spans: dict[object, Span | None] = {}  # an address match or ports -> span

    def blocks(self, address: AddressMatch) -> tuple[tuple[int, int], ...] | None:
        """The address side as sorted disjoint intervals (None: every address)."""
        if address.is_any or address.negated:
            return None
        cidrs = self.ipsets.get(address.set_name, ()) if address.set_name else address.cidrs
        found = self.memo.get(cidrs)
        if found is None:
            found = self.memo[cidrs] = _collapsed_blocks(cidrs)
        return found

    def verdict(self, rule: Rule) -> bool:
        """True when RULE's target can be a verdict-map value: accept, drop, or a jump to
        a chain every packet leaves with a final verdict."""
        target = rule.target
        return target in (Target.ACCEPT, Target.DROP) or \
            (type(target) is str and target in self.never_return)

    def shape(self, rule: Rule) -> tuple[tuple[object, ...], tuple[str, ...]] | None:
        """(what the rules of one set share, the key fields), or None: stays a rule.
        Rules whose targets are verdicts share a verdict map whatever their verdicts;
        the others (reject) a set per target."""
        target = rule.target
        is_verdict = self.verdict(rule)
        if target is not Target.REJECT and not is_verdict:
            return None
        m = rule.match
        source, destination = m.source, m.destination
        if source.negated or destination.negated or source.set_name or destination.set_name:
            return None
        if len(source.cidrs) > ELEMENTS_MAX or len(destination.cidrs) > ELEMENTS_MAX or \
                len(m.dports) > ELEMENTS_MAX or \
                max(1, len(source.cidrs)) * max(1, len(destination.cidrs)) * \
                max(1, len(m.dports)) > ELEMENTS_MAX:
            return None
        # The devices a rule names join the key too (while it fits: `_KEYS`): rules that
        # differ only in their devices share one set (the kernel finds a set by name in a
        # list of them).
        in_device, out_device = m.in_device, m.out_device
        keyed = _KEYS[self.family][bool(source.cidrs), bool(destination.cidrs),
                                   bool(m.dports), in_device is not None,
                                   out_device is not None]
        if keyed is None:
            return None
        fields, in_keyed, out_keyed = keyed
        # the rest of the match: every field but the key's (addresses and ports go to
        # the key whole; a rule with a set or a negation returned None above)
        rest = (None if in_keyed else in_device, None if out_keyed else out_device,
                *_REST_OF(m))
        if is_verdict and not rule.target_options:
            return (rest, "vmap", fields), fields
        return (rest, target, rule.target_options, fields), fields

    def signature(self, rule: Rule) -> Signature:
        """What `_apart_from_all` compares, computed once per rule: the devices, protocol
        and ICMP type, then the ports, sources and destinations each as `_span`."""
        m = rule.match
        spans = self.spans
        ports, source, destination = m.dports, m.source, m.destination
        port_span = spans.get(ports, _UNSEEN)
        if port_span is _UNSEEN:
            port_span = self.port_span(ports)
        source_span = spans.get(source, _UNSEEN)
        if source_span is _UNSEEN:
            source_span = self.address_span(source)
        destination_span = spans.get(destination, _UNSEEN)
        if destination_span is _UNSEEN:
            destination_span = self.address_span(destination)
        return (m.in_device, m.out_device, m.protocol, m.icmp_type, port_span, source_span,
                destination_span)

    def address_span(self, address: AddressMatch) -> Span | None:
        """ADDRESS's `_span`, kept in `spans` (where `signature` looks first)."""
        found = self.spans[address] = _span(self.blocks(address))
        return found

    def port_span(self, ports: tuple[PortRange, ...]) -> Span | None:
        """PORTS' `_span`, kept in `spans` (where `signature` looks first)."""
        found = self.spans[ports] = _span(tuple(sorted((p.low, p.high) for p in ports)) or None)
        return found


_UNSEEN = object()  # not in `Shapes.spans` yet (None is a span: every value)
_REST_OF = operator.attrgetter(*REST_FIELDS)


def _key_fields(family: int, source: bool, destination: bool, ports: bool, in_device: bool,
                out_device: bool) -> tuple[tuple[str, ...], bool, bool] | None:
    """The key of a concatenated set for a rule with these fields (`Shapes.shape`): its
    fields, and whether each device is in it; None when the rule has none to key on."""
    fields = tuple(name for name, present in (
        ("saddr", source), ("daddr", destination), ("dport", ports)) if present)
    if not fields:
        return None
    devices = tuple(name for name, present in (
        ("iifname", in_device), ("oifname", out_device)) if present)
    if sum(KEY_BYTES[f, family] for f in devices + fields) > KEY_BYTES_MAX:
        devices = ()  # the key would not fit nft's registers: the devices stay in the rule
    return devices + fields, "iifname" in devices, "oifname" in devices


# per family: (source, destination, ports, input device, output device present) -> key
_KEYS = {family: {flags: _key_fields(family, *flags)
                  for flags in itertools.product((False, True), repeat=5)}
         for family in (4, 6)}


# A set of values as (lowest, highest, the sorted disjoint intervals or None when it is the
# one interval lowest-highest); None for every value.
Span = tuple[int, int, tuple[tuple[int, int], ...] | None]
# (in device, out device, protocol, ICMP type, ports, sources, destinations): Any, as
# `_apart_from_all` unpacks it in its hottest loop (a `cast` there is a call per rule)
Signature = tuple[Any, ...]


def _span(intervals: tuple[tuple[int, int], ...] | None) -> Span | None:
    if intervals is None:
        return None
    if not intervals:  # no value at all (an empty set): meets nothing
        return (1, 0, ())
    return (intervals[0][0], max(hi for _, hi in intervals),
            intervals if len(intervals) > 1 else None)


def _walk_meets(x: Span, y: Span) -> bool:
    """Whether two spans whose bounds overlap, one at least with its own intervals,
    share a value: the walk `_apart_from_all` leaves to the end."""
    xs, ys = x[2], y[2]
    return _intervals_meet(((x[0], x[1]),) if xs is None else xs,
                           ((y[0], y[1]),) if ys is None else ys)


def _apart_from_all(a: Signature, others: Iterable[Signature]) -> bool:
    """True only when no packet can match rule A and any of OTHERS (False when unsure):
    each of OTHERS differs from A in a device, the protocol or the ICMP type, or its
    ports, sources or destinations do not meet A's. The fields most often apart first;
    two spans that do not overlap are apart without a walk of their intervals.

    The span test is written out for each of the three fields: the hottest loop of the
    nftables backend, and a function call per field made it 18% slower (site20k)."""
    a0, a1, a2, a3, a4, a5, a6 = a
    for b0, b1, b2, b3, b4, b5, b6 in others:
        if a6 is not None and b6 is not None and (
                a6[1] < b6[0] or b6[1] < a6[0] or
                ((a6[2] is not None or b6[2] is not None) and not _walk_meets(a6, b6))):
            continue
        if a5 is not None and b5 is not None and (
                a5[1] < b5[0] or b5[1] < a5[0] or
                ((a5[2] is not None or b5[2] is not None) and not _walk_meets(a5, b5))):
            continue
        if a4 is not None and b4 is not None and (
                a4[1] < b4[0] or b4[1] < a4[0] or
                ((a4[2] is not None or b4[2] is not None) and not _walk_meets(a4, b4))):
            continue
        if (a0 is not None and b0 is not None and a0 != b0) or \
                (a1 is not None and b1 is not None and a1 != b1) or \
                (a2 is not None and b2 is not None and a2 != b2) or \
                (a3 is not None and b3 is not None and a3 != b3):
            continue
        return False
    return True


def _intervals_meet(xs: tuple[tuple[int, int], ...], ys: tuple[tuple[int, int], ...]) -> bool:
    """Whether two lists of sorted disjoint intervals share a value: each interval of a
    short list looked up in a long one (a host against a group of hundreds of prefixes),
    else one walk of both."""
    if len(xs) > len(ys):
        xs, ys = ys, xs
    if len(xs) * 8 < len(ys):
        for low, high in xs:
            at = bisect_left(ys, (low,))  # the first interval starting at LOW or later
            if (at and ys[at - 1][1] >= low) or (at < len(ys) and ys[at][0] <= high):
                return True
        return False
    i = j = 0
    while i < len(xs) and j < len(ys):
        if xs[i][1] < ys[j][0]:
            i += 1
        elif ys[j][1] < xs[i][0]:
            j += 1
        else:
            return True
    return False


def _grouped(rules: tuple[Rule, ...], shapes: Shapes, min_concat: int) -> list[Item]:
    """Rules of one shape brought together where that is exact, and joined into sets."""
    # Each entry: (shape key or None, fields, rules, their signatures); a rule joins the
    # latest entry of its shape when it is disjoint from every rule it moves past and from
    # the entry's rules.
    entries: list[tuple[object, tuple[str, ...], list[Rule], list[Signature]]] = []
    latest: dict[object, int] = {}  # shape key -> index of its latest entry
    chain_lists = itertools.chain.from_iterable
    for rule in rules:
        got = shapes.shape(rule)
        if got is None:
            entries.append((None, (), [rule], [shapes.signature(rule)]))
            continue
        key, fields = got
        mine = shapes.signature(rule)
        # The latest entry of this shape, if within reach and not full: the rule joins it
        # when apart from its rules and from every rule after it (the rules it moves past).
        at = latest.get(key, -1)
        # (one call for all of them: a call per entry passed was a third of the plan)
        if at >= 0 and at >= len(entries) - WINDOW and len(entries[at][2]) < GROUP_MAX and \
                _apart_from_all(mine, chain_lists(entry[3] for entry in entries[at:])):
            entries[at][2].append(rule)
            entries[at][3].append(mine)
            continue
        latest[key] = len(entries)
        entries.append((key, fields, [rule], [mine]))
    out: list[Item] = []
    for key, fields, members, _ in entries:
        if key is not None and len(members) >= min_concat:
            verdicts = cast("tuple[object, ...]", key)[1] == "vmap"
            out.append(Concat(fields, tuple(members), key, verdicts))
        else:
            out.extend(members)
    return out


def plan(rules: tuple[Rule, ...], shapes: Shapes | None = None,
         min_concat: int = MIN_CONCAT) -> list[Item]:
    """A chain's rules as nft items: dispatch runs and concatenations, the rest as is."""
    out: list[Item] = []
    i = 0
    items = _grouped(rules, shapes, min_concat) if shapes is not None else list(rules)
    while i < len(items):
        first = items[i]
        key = _dispatch_key(first) if not isinstance(first, Concat) else None
        if key is not None:
            values = [key[2]]
            j = i + 1
            while j < len(items):
                item = items[j]
                nxt = _dispatch_key(item) if not isinstance(item, Concat) else None
                if nxt is None or nxt[:2] != key[:2] or not _disjoint(values, nxt[2]):
                    break
                values.append(nxt[2])
                j += 1
            if j - i >= 2:
                run = cast("list[Rule]", items[i:j])
                out.append(Dispatch(key[0], key[1], tuple(zip(values, run, strict=True))))
                i = j
                continue
        out.append(first)
        i += 1
    return out


def shared(items: list[Item]) -> list[Item]:
    """Runs of DNAT load-sharing lines (`Share`) joined; every other item as it is."""
    out: list[Item] = []
    i = 0
    while i < len(items):
        first = items[i]
        stat = first.match.statistic if isinstance(first, (FilterRule, NatRule)) else None
        if stat is None or stat[1] != 0 or first.target is not Target.DNAT:
            out.append(first)
            i += 1
            continue
        count = stat[0]
        run = items[i:i + count]
        base = replace(first.match, statistic=None)
        expected = [(count - k, 0) if k < count - 1 else None for k in range(count)]
        if len(run) != count or any(
                not isinstance(r, NatRule) or r.target is not Target.DNAT
                or r.match.statistic != want or replace(r.match, statistic=None) != base
                or [k for k, _ in r.target_options] != ["to-destination"]
                for r, want in zip(run, expected, strict=True)):
            raise NftUnsupported("statistic lines that are not DNAT load sharing")
        rules = cast("list[NatRule]", run)
        out.append(Share(replace(first, match=base),
                         tuple(r.target_options[0][1] for r in rules)))
        i += count
    return out

