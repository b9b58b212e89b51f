"""Address sets as sorted, disjoint integer intervals per family.

Every analysis (shadowing, parity, expectations, query) works on these, so set
operations cost O(n) in the number of intervals, never per address.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

Interval = tuple[int, int]
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

FAMILY_BITS = {4: 32, 6: 128}


def _normalise(intervals: Iterable[Interval]) -> tuple[Interval, ...]:
    merged: list[list[int]] = []
    for lo, hi in sorted(intervals):
        if merged and lo <= merged[-1][1] + 1:
            if hi > merged[-1][1]:
                merged[-1][1] = hi
        else:
            merged.append([lo, hi])
    return tuple((lo, hi) for lo, hi in merged)


def _intersect(a: tuple[Interval, ...], b: tuple[Interval, ...]) -> tuple[Interval, ...]:
    out: list[Interval] = []
    i = j = 0
    while i < len(a) and j < len(b):
        lo = max(a[i][0], b[j][0])
        hi = min(a[i][1], b[j][1])
        if lo <= hi:
            out.append((lo, hi))
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return tuple(out)


def _subtract(a: tuple[Interval, ...], b: tuple[Interval, ...]) -> tuple[Interval, ...]:
    out: list[Interval] = []
    j = 0
    for lo, hi in a:
        cur = lo
        while j < len(b) and b[j][1] < cur:
            j += 1
        k = j
        while k < len(b) and b[k][0] <= hi:
            if b[k][0] > cur:
                out.append((cur, b[k][0] - 1))
            cur = max(cur, b[k][1] + 1)
            k += 1
        if cur <= hi:
            out.append((cur, hi))
    return tuple(out)


def _covers(outer: tuple[Interval, ...], inner: tuple[Interval, ...]) -> bool:
    """True when every interval of inner lies inside one interval of outer."""
    j = 0
    for lo, hi in inner:
        while j < len(outer) and outer[j][1] < lo:
            j += 1
        if j == len(outer) or outer[j][0] > lo or outer[j][1] < hi:
            return False
    return True


def _address_text(value: int, family: int) -> str:
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
            text = _address_text(lo, family)
            out.append(text if block == 0 else f"{text}/{bits - block}")
            lo += 1 << block
    return tuple(out)


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
        return AddressSet(_normalise(v4), _normalise(v6))

    @staticmethod
    def union(sets: Iterable[AddressSet]) -> AddressSet:
        """All of `sets` in one normalisation (a | b | c ... re-sorts the growing set)."""
        v4: list[Interval] = []
        v6: list[Interval] = []
        for one in sets:
            v4.extend(one.v4)
            v6.extend(one.v6)
        return AddressSet(_normalise(v4), _normalise(v6))

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
        return AddressSet(self.v4, ()) if family == 4 else AddressSet((), self.v6)

    @property
    def families(self) -> frozenset[int]:
        return frozenset(f for f, iv in ((4, self.v4), (6, self.v6)) if iv)

    def is_empty(self) -> bool:
        return not self.v4 and not self.v6

    def __bool__(self) -> bool:
        return not self.is_empty()

    # The shortcuts below return an operand unchanged (sets are immutable): lowering and
    # the checks combine with empty sets (no exclusions, no firewall address) all the
    # time, and re-normalising those was a visible part of the 20,000-rule profile.
    def __or__(self, other: AddressSet) -> AddressSet:
        if not other.v4 and not other.v6:
            return self
        if not self.v4 and not self.v6:
            return other
        return AddressSet(_normalise(self.v4 + other.v4) if other.v4 and self.v4
                          else self.v4 or other.v4,
                          _normalise(self.v6 + other.v6) if other.v6 and self.v6
                          else self.v6 or other.v6)

    def __and__(self, other: AddressSet) -> AddressSet:
        if not self.v4 and not self.v6:
            return self
        if not other.v4 and not other.v6:
            return other
        return AddressSet(_intersect(self.v4, other.v4), _intersect(self.v6, other.v6))

    def __sub__(self, other: AddressSet) -> AddressSet:
        if (not other.v4 and not other.v6) or (not self.v4 and not self.v6):
            return self
        return AddressSet(_subtract(self.v4, other.v4) if other.v4 else self.v4,
                          _subtract(self.v6, other.v6) if other.v6 else self.v6)

    def covers(self, other: AddressSet) -> bool:
        return _covers(self.v4, other.v4) and _covers(self.v6, other.v6)

    def overlaps(self, other: AddressSet) -> bool:
        return bool(_intersect(self.v4, other.v4) or _intersect(self.v6, other.v6))

    def contains_address(self, address: IPAddress) -> bool:
        value = int(address)
        return any(lo <= value <= hi for lo, hi in self.family(address.version))

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
