"""What the policy's words mean for packets, defined once.

Lowering (`fwc.backend.lower`), the rule checks (shadowing, DNAT), the analysis engine
(`expect`, `fwc query`, `fwc diff`) and the tests all take their meaning of
`from X to Y` from here, and their CIDR-hull index too.

Endpoints (docs/language.md): on a member whose firewall addresses are its own
addresses plus every VIP,

- `firewall` names the firewall addresses; an item made only of firewall
  addresses (a VIP, a member's address) names the firewall too;
- any other item (`lan`) names its addresses as forwarded traffic: a network
  that merely contains a firewall address does not name the firewall;
- `any` is every address, but never the firewall itself;
- negated items are subtracted; a list of only negated items is `any` minus them.

`side_of` classifies the items of one side once. Its three readings differ
only in how much of that classification the reader needs:

- lowering places the named firewall part in INPUT/OUTPUT and the rest in
  FORWARD, where the kernel never sees firewall addresses anyway, so it keeps
  `other` as written (exclusions become a RETURN chain);
- the rule checks compare rules chain by chain (`forwarded_and_local`);
- the engine needs the exact address set (`endpoint_intervals`).

First match: rules are tried in order and the first that matches decides;
`fwc.analysis.engine.first_match` does this for packet sets (a packet is a
one-point box) and `fwc.analysis.evaluate.Evaluator` for one packet through the lowered,
rendered chains (jumps, RETURN, policies).
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterable, Iterator
from typing import Generic, NamedTuple, TypeVar

from fwc.model import Endpoint
from fwc.model.addresses import FAMILY_BITS, AddressSet
from fwc.model.intervals import covers
from fwc.model.records import dataclass
from fwc.model.vocabulary import NatStage

FAMILIES = (4, 6)
_EMPTY = AddressSet()
_EVERYTHING = {family: AddressSet.everything((family,)) for family in FAMILIES}

Intervals = tuple[tuple[int, int], ...]


# -- endpoints ------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Side:
    """One side (from/to) of a rule, for one member (its firewall set) and one family."""

    unbounded: bool  # `any`, or only negated items: every address
    other: AddressSet  # named non-firewall items, as written
    firewall: AddressSet  # firewall addresses named (the keyword or one of its addresses)
    excluded: AddressSet  # negated items (the firewall's addresses for `!firewall`)
    negated: AddressSet  # negated items' own addresses (not `!firewall`)

    @property
    def named(self) -> AddressSet:
        return self.other | self.firewall


def side_of(endpoint: Endpoint, fw: AddressSet, family: int) -> Side:
    """Split a side into what names the firewall and what does not (see the module doc).

    `fw` is the firewall's addresses in this family. One pass over the items, and no
    `Endpoint` properties: this runs per rule, member and family in the lowering.
    """
    other = named_fw = excluded = negated = _EMPTY
    has_positive = has_any = names_firewall = excludes_firewall = False
    opposite = 6 if family == 4 else 4
    for item in endpoint.items:
        kind = item.kind
        if item.negated:
            if kind == "firewall":
                excludes_firewall = True
                continue
            if kind == "any":
                # `!any` removes everything (the checks refuse it: FWC112).
                excluded = negated = _EVERYTHING[family]
                continue
        else:
            has_positive = True
            if kind == "any":
                has_any = True
                continue
            if kind == "firewall":
                names_firewall = True
                continue
        addresses = item.addresses
        if not addresses.family(family):
            continue
        if addresses.family(opposite):
            addresses = addresses.only(family)
        if item.negated:
            excluded = excluded | addresses if excluded else addresses
            negated = negated | addresses if negated else addresses
        elif fw.covers(addresses):
            named_fw = named_fw | addresses if named_fw else addresses
        else:
            other = other | addresses if other else addresses
    if names_firewall:
        named_fw = fw | named_fw if named_fw else fw
    if excludes_firewall:
        excluded = excluded | fw if excluded else fw
    if excluded and named_fw:
        named_fw = named_fw - excluded
    # `any`, or only negated items: every address (Endpoint.is_any)
    return Side(has_any or not has_positive, other, named_fw, excluded, negated)


class Reach(NamedTuple):
    """What is left of one side once its exclusions are taken off: which chains it can fill.

    The one meaning of "this rule produces nothing" (FWC504) and of which chains lowering
    fills; `Side.firewall` has its exclusions taken off already (`side_of`). A
    NamedTuple: lowering makes two per rule, member and family.
    """

    firewall: bool  # it names firewall addresses (INPUT as destination, OUTPUT as source)
    named: bool  # `named - excluded` is not empty, or unbounded: INPUT/OUTPUT, NAT
    other: bool  # `other - excluded` is not empty, or unbounded: FORWARD


def reach(side: Side) -> Reach:
    if side.unbounded:
        return Reach(bool(side.firewall), True, True)
    other = bool(side.other - side.excluded) if side.excluded else bool(side.other)
    return Reach(bool(side.firewall), other or bool(side.firewall), other)


def filter_chains(src: Reach, dst: Reach, in_interface: bool, out_interface: bool) \
        -> tuple[bool, bool, bool]:
    """Whether a filter rule gives a kernel rule in (INPUT, OUTPUT, FORWARD).

    INPUT (to the firewall) has no outgoing interface and OUTPUT (from it) no incoming
    one, so a rule with `out` (`in`) gives nothing there.
    """
    return (dst.firewall and not out_interface and src.named,
            src.firewall and not in_interface and dst.named,
            src.other and dst.other)


def nat_reaches(src: Reach, dst: Reach) -> bool:
    """Whether a NAT rule gives a kernel rule: both sides name something."""
    return src.named and dst.named


def firewall_traffic_side(stage: NatStage) -> str:
    """The side ("source" or "destination") of a NAT rule working at STAGE on which the
    kernel meets the firewall's own traffic: where the rule's `any` must leave the
    firewall out.

    PREROUTING sees what is sent to the firewall, POSTROUTING what it sends; the other
    side never holds a firewall address at that hook. Every NAT action needs it: a
    translating rule would translate the firewall's traffic, and a nonat would exempt it
    from a later rule that names the firewall (`nonat from peer to any` before `dnat ...
    to uplink.vip`). Lowering RETURNs the firewall's addresses on that side
    (`nat_firewall_left_out`); the engine reads VIPs another member holds the same way."""
    return "source" if stage is NatStage.POSTROUTING else "destination"


def firewall_left_out(side: Side, fw: AddressSet, stage: NatStage) -> AddressSet:
    """The firewall addresses (FW, one family) that a NAT rule working at STAGE leaves
    alone on SIDE, its side where the hook meets the firewall's traffic
    (`firewall_traffic_side`): those the side covers without naming them.

    `any` covers every one. A network around one (`lan` holds the member's lan address
    and lan.vip) covers them before routing, where clients' traffic to the firewall
    passes; after routing it is written as it is (docs/language.md, "NAT rules": only
    the firewall's own packets carry such a source, and leaving them out would put a
    RETURN chain under nearly every snat)."""
    if side.unbounded:
        covered = fw
    elif stage is NatStage.PREROUTING and side.other:
        covered = side.other & fw
    else:
        return _EMPTY
    return covered - side.firewall - side.excluded


def firewall_kept(side: Side, fw: AddressSet, stage: NatStage) -> AddressSet:
    """The firewall addresses (FW, one family) that a NAT rule working at STAGE matches on
    SIDE, its side where the hook meets the firewall's traffic (`firewall_traffic_side`),
    though the side does not name them: those it covers and does not leave alone
    (`firewall_left_out`). After routing, a network around one is written as it is, so
    `snat from lan` translates the firewall's own packets from its lan address; the
    engine must read it so, or `fwc query` says they leave untranslated."""
    if side.unbounded or stage is not NatStage.POSTROUTING or not side.other:
        return _EMPTY
    return (side.other & fw) - side.firewall - side.excluded - \
        firewall_left_out(side, fw, stage)


def reads_firewall(endpoint: Endpoint, firewalls: AddressSet, family: int) -> bool:
    """False when `side_of(endpoint, fw, family)` is the same for every `fw` inside
    `firewalls` (the union of every member's firewall addresses in this family).

    The side then names no firewall address on any member: no `firewall` item, no
    positive item made only of firewall addresses. Its firewall part is empty and
    its other, exclusions and negations are the items as written, whoever reads it;
    so lowering does a rule with two such sides once for all members.
    """
    fw = firewalls.family(family)
    for item in endpoint.items:
        kind = item.kind
        if kind == "firewall":
            return True
        if item.negated or kind == "any":
            continue
        inside = item.addresses.family(family)
        # fw_m inside firewalls: an item that firewalls does not cover, no member's does
        if inside and covers(fw, inside):
            return True
    return False


def forwarded_and_local(endpoint: Endpoint, firewall: AddressSet) \
        -> tuple[AddressSet, AddressSet]:
    """(forwarded addresses, firewall addresses) a side matches, both families.

    For comparing rules chain by chain: the forwarded part is every address for
    `any`, else the non-firewall items, minus the negated items; the firewall
    part is what `side_of` names.
    """
    net = local = _EMPTY
    for family in FAMILIES:
        side = side_of(endpoint, firewall.only(family), family)
        base = _EVERYTHING[family] if side.unbounded else side.other
        if side.negated:
            base = base - side.negated
        net = net | base
        local = local | side.firewall
    return net, local


def endpoint_intervals(spec: Endpoint | AddressSet | None, firewall: AddressSet,
                       family: int) -> Intervals:
    """The exact addresses a side stands for on a member with these firewall addresses.

    `any` and non-firewall items lose the firewall's addresses, the named
    firewall part is kept, and the exclusions go. A plain address set is
    itself; None is every address.
    """
    if spec is None:
        return _EVERYTHING[family].family(family)
    if isinstance(spec, AddressSet):
        return spec.family(family)
    fw = firewall.only(family)
    side = side_of(spec, fw, family)
    base = _EVERYTHING[family] if side.unbounded else side.other
    out = (base - fw) | side.firewall
    return (out - side.excluded if side.excluded else out).family(family)


# -- the CIDR-hull index ---------------------------------------------------------------------

Block = tuple[int, int]  # a CIDR block as (prefix length, network as an integer)
V = TypeVar("V")


def hull_block(low: int, high: int, family: int) -> Block:
    """The smallest CIDR block holding [low, high]."""
    bits = FAMILY_BITS[family]
    length = bits - (low ^ high).bit_length()
    shift = bits - length
    return length, low >> shift << shift


def hull(addresses: AddressSet | Intervals, family: int) -> Block:
    """The smallest CIDR block holding the addresses (in one family; not empty)."""
    intervals = addresses.family(family) if isinstance(addresses, AddressSet) else addresses
    return hull_block(intervals[0][0], intervals[-1][1], family)


class PrefixIndex(Generic[V]):
    """Values stored under CIDR blocks, found by the blocks that contain or meet a query.

    Rules are indexed by the hull of their addresses: a rule can only cover a
    query whose hull lies inside its own (`containing`), and only match part of
    one whose hull meets its own (`overlapping`). Both look only at the prefix
    lengths in use.
    """

    __slots__ = ("_levels", "bits", "by_length")

    def __init__(self, family: int) -> None:
        self.bits = FAMILY_BITS[family]
        self.by_length: dict[int, dict[int, V]] = {}
        self._levels: list[tuple[int, list[int], list[V], list[int]]] | None = None

    def slot(self, block: Block, make: Callable[[], V]) -> V:
        """The value stored under `block`, made first when there is none."""
        length, network = block
        table = self.by_length.get(length)
        if table is None:
            table = self.by_length[length] = {}
        found = table.get(network)
        if found is None:
            found = table[network] = make()
            self._levels = None
        return found

    def containing(self, block: Block) -> Iterator[V]:
        """Values under blocks that contain `block` (its ancestors, itself included)."""
        length, network = block
        for candidate, table in self.by_length.items():
            if candidate > length:
                continue
            shift = self.bits - candidate
            found = table.get(network >> shift << shift)
            if found is not None:
                yield found

    def overlapping(self, low: int, high: int) -> tuple[int, list[V]]:
        """(total size, values) under blocks that meet [low, high]; values must be sized.

        One binary search per prefix length in use; the running totals make the
        size free, so a caller can choose the smaller of two indexes before reading.
        """
        if self._levels is None:
            self._levels = []
            for length, table in sorted(self.by_length.items()):
                keys = sorted(table)
                values = [table[k] for k in keys]
                totals = [0]
                for value in values:
                    totals.append(totals[-1] + len(value))  # type: ignore[arg-type]
                self._levels.append((self.bits - length, keys, values, totals))
        count = 0
        found: list[V] = []
        for shift, keys, values, totals in self._levels:
            # keys are network addresses: the query's ends as blocks of this length
            first = bisect_left(keys, low >> shift << shift)
            last = bisect_right(keys, high >> shift << shift)
            if first < last:
                count += totals[last] - totals[first]
                found.extend(values[first:last])
        return count, found


def contains(outer: Intervals, starts: list[int], inner: Intervals) -> bool:
    """True when `outer` (sorted disjoint intervals, `starts` their lows) holds `inner`.

    One binary search per interval of `inner`: testing a host against a group of
    several hundred prefixes costs a few steps, not a walk over the group.
    """
    for low, high in inner:
        at = bisect_right(starts, low) - 1
        if at < 0 or outer[at][1] < high:
            return False
    return True


def cidr_blocks(low: int, high: int, family: int) -> Iterator[Block]:
    """The CIDR blocks that tile [low, high], largest first from the left."""
    bits = FAMILY_BITS[family]
    while low <= high:
        aligned = (low & -low).bit_length() - 1 if low else bits
        size = min(aligned, (high - low + 1).bit_length() - 1)
        yield bits - size, low
        low += 1 << size


class SupersetIndex:
    """Distinct address sets of one family, each with the registered sets that contain it.

    The rule checks ask "which earlier rules' sources contain this source?": a CIDR hull
    cannot tell apart groups of scattered prefixes that share one hull (forty partner
    groups inside one /19), so rules are keyed by the identity of their address set and
    the question becomes "which registered sets contain this one". That answer depends on
    the objects, not on the rules: it is computed once per distinct set, and then each
    rule costs a few dictionary lookups however many rules share its sets.

    A set containing another contains its lowest address: every registered set is
    tiled into CIDR blocks (one entry per block, its intervals are disjoint), and the
    sets holding that address are found with one probe per prefix length in use. Only
    those few are tested in full (`contains`), not every set whose hull contains the
    query's hull (forty scattered groups inside one /19 all do, and most of them fail
    the test: that was most of the check's time on policies of large groups).
    """

    __slots__ = ("_answers", "_highs", "_points", "_starts", "bits", "family", "ids", "sets")

    def __init__(self, family: int) -> None:
        self.family = family
        self.bits = FAMILY_BITS[family]
        self.ids: dict[Intervals, int] = {}
        self.sets: list[Intervals] = []
        self._starts: list[list[int]] = []
        self._highs: list[int] = []  # each set's highest address
        # per prefix length in use: (shift, network -> ids of the sets holding that block)
        self._points: list[tuple[int, dict[int, list[int]]]] | None = None
        self._answers: dict[int, frozenset[int]] = {}

    def add(self, intervals: Intervals) -> int:
        """The id of this set (the same for equal sets); not empty."""
        found = self.ids.get(intervals)
        if found is None:
            found = self.ids[intervals] = len(self.sets)
            self.sets.append(intervals)
            self._starts.append([low for low, _ in intervals])
            self._highs.append(intervals[-1][1])
            self._points = None
            self._answers = {}
        return found

    def _tiles(self) -> list[tuple[int, dict[int, list[int]]]]:
        points: dict[int, dict[int, list[int]]] = {}
        bits, family = self.bits, self.family
        for ident, intervals in enumerate(self.sets):
            for low, high in intervals:
                size = high - low + 1
                # most intervals are one CIDR block (a prefix, a host): no generator
                blocks: Iterable[Block] = ((bits + 1 - size.bit_length(), low),) \
                    if not (size & (size - 1) or low & (size - 1)) \
                    else cidr_blocks(low, high, family)
                for length, network in blocks:
                    table = points.get(length)
                    if table is None:
                        table = points[length] = {}
                    bucket = table.get(network)
                    if bucket is None:
                        table[network] = [ident]
                    else:
                        bucket.append(ident)
        # per prefix length in use: the shift that makes an address its block's network
        return [(bits - length, table) for length, table in points.items()]

    def supersets(self, ident: int) -> frozenset[int]:
        """Ids of the registered sets that contain set `ident` (itself included)."""
        found = self._answers.get(ident)
        if found is not None:
            return found
        points = self._points
        if points is None:
            points = self._points = self._tiles()
        inner = self.sets[ident]
        point, high = inner[0][0], inner[-1][1]
        sets, starts, highs = self.sets, self._starts, self._highs
        out: list[int] = []
        for shift, table in points:
            bucket = table.get(point >> shift << shift)
            if bucket is not None:
                # a set holds the point in one block only: no id comes twice; a set
                # ending below the query's end cannot hold it; one interval holding the
                # point and the query's end holds the query (a network, a range, `any`)
                for other in bucket:
                    if other == ident or (highs[other] >= high
                                          and (len(sets[other]) == 1
                                               or contains(sets[other], starts[other],
                                                           inner))):
                        out.append(other)
        found = self._answers[ident] = frozenset(out)
        return found


__all__ = ["FAMILIES", "Block", "PrefixIndex", "Side", "SupersetIndex", "cidr_blocks", "contains",
           "endpoint_intervals",
           "forwarded_and_local", "hull", "hull_block", "reads_firewall", "side_of"]
