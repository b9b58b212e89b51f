"""Address sets: one interval set (`fwc.model.intervals`) per family.

Every analysis (shadowing, parity, expectations, query) works on these, so set
operations cost O(n) in the number of intervals, never per address.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Iterable, Iterator

from fwc.model.intervals import Interval, contains, covers, intersect, normalise, subtract
from fwc.model.records import dataclass, hash_once
from fwc.model.vocabulary import FAMILIES

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

FAMILY_BITS = {family: family.bits for family in FAMILIES}


def address_text(value: int, family: int) -> str:
    """An address of FAMILY as ipaddress writes it (IPv6 compressed)."""
    if family == 4:
        return f"{value >> 24}.{(value >> 16) & 255}.{(value >> 8) & 255}.{value & 255}"
    return str(ipaddress.IPv6Address(value))


@functools.lru_cache(maxsize=65536)
def _cidr_texts(intervals: tuple[Interval, ...], family: int) -> tuple[str, ...]:
    # Integer arithmetic instead of ipaddress.summarize_address_range: lowering asks for
    # the CIDRs of the same objects once per rule, member and family, and the ipaddress
    # objects made this the top of the compile profile at 20,000 rules (docs/performance.md).
    bits = FAMILY_BITS[family]
    out: list[str] = []
    for lo, hi in intervals:
        while lo <= hi:
            aligned = (lo & -lo).bit_length() - 1 if lo else bits
            fits = (hi - lo + 1).bit_length() - 1
            block = min(aligned, fits)
            text = address_text(lo, family)
            out.append(text if block == 0 else f"{text}/{bits - block}")
            lo += 1 << block
    return hash_once(tuple(out))  # (a group's list is a memo key for every rule naming it)


_OCTET = "(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"  # 0-255, no leading zero
# (`(?:/N|)` rather than `(?:/N)?`: a branch, not a repeat with its context, as PLAIN_RULE)
_PLAIN_IPV4 = re.compile(rf"{_OCTET}\.{_OCTET}\.{_OCTET}\.{_OCTET}(?:/([0-9]++)|)")
_OCTETS = {str(n): n for n in range(256)}  # what _OCTET reads: a lookup, cheaper than int()


def plain_ipv4(text: str) -> tuple[int, int] | None:
    """(address, prefix length or -1) of an IPv4 address written as ipaddress accepts it
    (four decimal octets without leading zeros, an optional /N up to 32), else None.

    Resolving 20,000 rules parses tens of thousands of addresses, and the nftables target
    reads every address of every list it writes; ipaddress objects were most of that
    time. Anything else (IPv6, a malformed address) takes the ipaddress path, which also
    words every error. One regular expression reads the octets (ASCII digits only, as
    `ipaddress` wants).
    """
    match = _PLAIN_IPV4.fullmatch(text)
    if match is None:
        return None
    a, b, c, d, length = match.groups()
    octets = _OCTETS
    number = octets[a] << 24 | octets[b] << 16 | octets[c] << 8 | octets[d]
    if length is None:
        return number, -1
    bits = int(length)
    return (number, bits) if bits <= 32 else None


def cidr_span(text: str) -> tuple[int, int, int]:
    """(family, lowest address, highest address) of a network or address as
    `ipaddress.ip_network(text, strict=False)` reads it (host bits ignored); its
    ValueError for anything else. Plain IPv4 (what the lowering writes) is read by
    `plain_ipv4`, without ipaddress objects."""
    plain = plain_ipv4(text)
    if plain is not None:
        number, length = plain
        size = 0 if length < 0 else 32 - length
        low = number >> size << size
        return 4, low, low | ((1 << size) - 1)
    net = ipaddress.ip_network(text, strict=False)
    return net.version, int(net.network_address), int(net.broadcast_address)


# `AddressSet.families` by (has IPv4, has IPv6): one frozenset each, not one per call.
_FAMILIES = {(v4, v6): frozenset(f for f, has in ((4, v4), (6, v6)) if has)
             for v4 in (False, True) for v6 in (False, True)}


@dataclass(frozen=True, slots=True)
class AddressSet:
    v4: tuple[Interval, ...] = ()
    v6: tuple[Interval, ...] = ()

    @staticmethod
    def of(*items: IPNetwork | IPAddress | str) -> AddressSet:
        v4: list[Interval] = []
        v6: list[Interval] = []
        for item in items:
            net = ipaddress.ip_network(item, strict=False) if isinstance(item, str) else item
            if isinstance(net, ipaddress.IPv4Address | ipaddress.IPv6Address):
                net = ipaddress.ip_network(net)
            span = (int(net.network_address), int(net.broadcast_address))
            (v4 if net.version == 4 else v6).append(span)
        return AddressSet(normalise(v4), normalise(v6))

    @staticmethod
    def union(sets: Iterable[AddressSet]) -> AddressSet:
        """All of `sets` in one normalisation (a | b | c ... re-sorts the growing set)."""
        v4: list[Interval] = []
        v6: list[Interval] = []
        for one in sets:
            v4.extend(one.v4)
            v6.extend(one.v6)
        return AddressSet(normalise(v4), normalise(v6))

    @staticmethod
    def from_range(first: IPAddress, last: IPAddress) -> AddressSet:
        span = (int(first), int(last))
        return AddressSet((span,), ()) if first.version == 4 else AddressSet((), (span,))

    @staticmethod
    def everything(families: Iterable[int] = (4, 6)) -> AddressSet:
        fams = set(families)
        return AddressSet(
            ((0, 2**32 - 1),) if 4 in fams else (),
            ((0, 2**128 - 1),) if 6 in fams else (),
        )

    def family(self, family: int) -> tuple[Interval, ...]:
        return self.v4 if family == 4 else self.v6

    def only(self, family: int) -> AddressSet:
        # A set of that family alone is its own answer (sets are immutable).
        if family == 4:
            return self if not self.v6 else AddressSet(self.v4, ())
        return self if not self.v4 else AddressSet((), self.v6)

    @property
    def families(self) -> frozenset[int]:
        return _FAMILIES[bool(self.v4), bool(self.v6)]

    def is_empty(self) -> bool:
        return not self.v4 and not self.v6

    def __bool__(self) -> bool:
        return bool(self.v4 or self.v6)

    # The shortcuts below return an operand unchanged (sets are immutable): lowering and
    # the checks combine with empty sets (no exclusions, no firewall address) all the
    # time, and re-normalising those was a visible part of the 20,000-rule profile.
    def __or__(self, other: AddressSet) -> AddressSet:
        if not other.v4 and not other.v6:
            return self
        if not self.v4 and not self.v6:
            return other
        return AddressSet(normalise(self.v4 + other.v4) if other.v4 and self.v4
                          else self.v4 or other.v4,
                          normalise(self.v6 + other.v6) if other.v6 and self.v6
                          else self.v6 or other.v6)

    def __and__(self, other: AddressSet) -> AddressSet:
        if not self.v4 and not self.v6:
            return self
        if not other.v4 and not other.v6:
            return other
        return AddressSet(intersect(self.v4, other.v4), intersect(self.v6, other.v6))

    def __sub__(self, other: AddressSet) -> AddressSet:
        if (not other.v4 and not other.v6) or (not self.v4 and not self.v6):
            return self
        return AddressSet(subtract(self.v4, other.v4) if other.v4 else self.v4,
                          subtract(self.v6, other.v6) if other.v6 else self.v6)

    def covers(self, other: AddressSet) -> bool:
        return covers(self.v4, other.v4) and covers(self.v6, other.v6)

    def overlaps(self, other: AddressSet) -> bool:
        return bool(intersect(self.v4, other.v4) or intersect(self.v6, other.v6))

    def contains_address(self, address: IPAddress) -> bool:
        return contains(self.family(address.version), int(address))

    def is_everything(self, family: int) -> bool:
        return self.family(family) == ((0, 2 ** FAMILY_BITS[family] - 1),)

    def count(self, family: int) -> int:
        return sum(hi - lo + 1 for lo, hi in self.family(family))

    def networks(self, family: int) -> Iterator[IPNetwork]:
        """The minimal list of CIDR blocks covering exactly this set."""
        make = ipaddress.IPv4Address if family == 4 else ipaddress.IPv6Address
        for lo, hi in self.family(family):
            yield from ipaddress.summarize_address_range(make(lo), make(hi))

    def cidrs(self, family: int) -> list[str]:
        """The minimal CIDR list as text (a host without /32 or /128), like `networks`."""
        return list(_cidr_texts(self.family(family), family))

    def cidr_tuple(self, family: int) -> tuple[str, ...]:
        """`cidrs` as a tuple, shared between equal sets: the lowering's form."""
        return _cidr_texts(self.v4 if family == 4 else self.v6, family)

    def hull(self, family: int) -> IPNetwork | None:
        """The smallest CIDR block containing the whole set (for indexing)."""
        intervals = self.family(family)
        if not intervals:
            return None
        lo, hi = intervals[0][0], intervals[-1][1]
        bits = FAMILY_BITS[family]
        prefix = bits - (lo ^ hi).bit_length()
        make = ipaddress.IPv4Network if family == 4 else ipaddress.IPv6Network
        return make((lo >> (bits - prefix) << (bits - prefix) if prefix < bits else lo, prefix))

    def __str__(self) -> str:
        parts = self.cidrs(4) + self.cidrs(6)
        return ", ".join(parts) if parts else "(empty)"
