"""Sets of integers as sorted, disjoint, non-adjacent closed intervals.

The one implementation behind every set fwc computes with: addresses (one
interval tuple per family in `fwc.model.addresses.AddressSet`), ports
(`IntervalSet`, e.g. for the shadowing check) and the service axis and packet
boxes of the analysis engine (`fwc.analysis.space`). Every operation is linear in
the number of intervals, never per value. The functions work on plain tuples
because the engine's boxes hold tens of thousands of them; `IntervalSet` is the
same as a value with operators.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable
from itertools import islice

from fwc.model.records import dataclass

Interval = tuple[int, int]
Intervals = tuple[Interval, ...]

_INFINITY = 2 ** 129  # above every address and service value


def normalise(intervals: Iterable[Interval]) -> Intervals:
    """Sorted, with overlapping and adjacent intervals merged."""
    ordered = sorted(intervals)
    if not ordered:
        return ()
    # The interval being merged is kept in two locals and stored as a tuple once it is
    # complete (not as a [lo, hi] list changed in place and converted at the end: most
    # inputs merge little, and this runs for every group and every set operation).
    merged: list[Interval] = []
    lo, hi = ordered[0]
    for next_lo, next_hi in islice(ordered, 1, None):
        if next_lo > hi + 1:
            merged.append((lo, hi))
            lo, hi = next_lo, next_hi
        elif next_hi > hi:
            hi = next_hi
    merged.append((lo, hi))
    return tuple(merged)


def _intersect_merge(a: Intervals, b: Intervals) -> Intervals:
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


def intersect(a: Intervals, b: Intervals) -> Intervals:
    """a ∩ b; by binary search when one side is much shorter (a host against a big group)."""
    if len(a) > len(b):
        a, b = b, a
    if not a:
        return ()
    if len(b) < 8 * len(a):
        return _intersect_merge(a, b)
    out: list[Interval] = []
    for lo, hi in a:
        k = bisect_right(b, (lo, _INFINITY)) - 1
        if k < 0:
            k = 0
        while k < len(b) and b[k][0] <= hi:
            start, end = max(lo, b[k][0]), min(hi, b[k][1])
            if start <= end:
                out.append((start, end))
            k += 1
    return tuple(out)


def subtract(a: Intervals, b: Intervals) -> Intervals:
    """a minus b."""
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


def union(a: Intervals, b: Intervals) -> Intervals:
    return normalise(a + b)


def covers(outer: Intervals, inner: Intervals) -> bool:
    """True when every value of inner lies in outer (both normalised).

    Each interval of inner must lie in one interval of outer (outer's are not
    adjacent): by binary search when outer is much longer (a host against a group
    or the firewall addresses of a cluster with many interfaces), else by a merge.
    """
    if len(outer) > 8 * len(inner):
        for lo, hi in inner:
            k = bisect_right(outer, (lo, _INFINITY)) - 1
            if k < 0 or outer[k][1] < hi:
                return False
        return True
    j = 0
    for lo, hi in inner:
        while j < len(outer) and outer[j][1] < lo:
            j += 1
        if j == len(outer) or outer[j][0] > lo or outer[j][1] < hi:
            return False
    return True


def contains(intervals: Intervals, value: int) -> bool:
    """value in the set; `intervals` sorted and disjoint."""
    k = bisect_right(intervals, (value, _INFINITY)) - 1
    return k >= 0 and intervals[k][1] >= value


@dataclass(frozen=True, slots=True)
class IntervalSet:
    """A set of integers (ports, protocol numbers, ...) as a value with set operators."""

    spans: Intervals = ()

    @staticmethod
    def of(ranges: Iterable[tuple[int, int]]) -> IntervalSet:
        """From (low, high) pairs in any order, overlapping or not (a PortRange is one)."""
        return IntervalSet(normalise((low, high) for low, high in ranges))

    def __bool__(self) -> bool:
        return bool(self.spans)

    def __or__(self, other: IntervalSet) -> IntervalSet:
        return IntervalSet(union(self.spans, other.spans))

    def __and__(self, other: IntervalSet) -> IntervalSet:
        return IntervalSet(intersect(self.spans, other.spans))

    def __sub__(self, other: IntervalSet) -> IntervalSet:
        return IntervalSet(subtract(self.spans, other.spans))

    def __contains__(self, value: int) -> bool:
        return contains(self.spans, value)

    def covers(self, other: IntervalSet) -> bool:
        return covers(self.spans, other.spans)

    def overlaps(self, other: IntervalSet) -> bool:
        return bool(intersect(self.spans, other.spans))

    def count(self) -> int:
        return sum(hi - lo + 1 for lo, hi in self.spans)
