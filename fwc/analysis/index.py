"""Ordered rule lists with an address index, so a query touches few rules.

Each rule box's source and destination sets are summarised by their hull
(the smallest CIDR block containing them). Hulls of the same prefix length are
aligned blocks, so per prefix length a sorted list of block numbers maps to
rule positions. A query box finds, per populated prefix length, the blocks its
own hull touches by binary search: a host query costs one search per prefix
length in use.
Both the source and the destination index are consulted; the smaller answer
is used (it is a superset of the rules that can match, in rule order).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from fwc.analysis.space import Box
from fwc.model import Rule
from fwc.model.intervals import Intervals
from fwc.model.records import dataclass
from fwc.model.semantics import PrefixIndex, hull_block


@dataclass(frozen=True, slots=True)
class RuleBox:
    """One rule as the box of packets it matches on one member, in one family and chain."""

    position: int  # in the rule list: first match wins
    rule: Rule
    box: Box


def _hull(intervals: Intervals) -> tuple[int, int]:
    return intervals[0][0], intervals[-1][1]


def _index(family: int, hulls: Sequence[tuple[int, int]]) -> PrefixIndex[list[int]]:
    """Rule positions by the CIDR hull of one address field."""
    index: PrefixIndex[list[int]] = PrefixIndex(family)
    for position, (lo, hi) in enumerate(hulls):
        index.slot(hull_block(lo, hi, family), list).append(position)
    return index


class RuleList:
    """An ordered, indexed list of rule boxes (one family, one chain or NAT stage)."""

    def __init__(self, family: int, entries: Sequence[tuple[Rule, Box]]) -> None:
        self.family = family
        self.rules: tuple[RuleBox, ...] = tuple(
            RuleBox(i, rule, box) for i, (rule, box) in enumerate(entries))
        self._src = _index(family, [_hull(r.box.src) for r in self.rules])
        self._dst = _index(family, [_hull(r.box.dst) for r in self.rules])

    def __len__(self) -> int:
        return len(self.rules)

    def candidates(self, box: Box, start: int = 0) -> Iterator[RuleBox]:
        """Rules at `start` or later that may match part of `box`, in order.

        A superset of those that do: the caller tests each against the box.
        """
        if start >= len(self.rules) or box.family != self.family or box.is_empty():
            return iter(())
        dst_count, by_dst = self._dst.overlapping(*_hull(box.dst))
        src_count, by_src = self._src.overlapping(*_hull(box.src))
        if min(dst_count, src_count) * 2 >= len(self.rules) - start:
            rules = self.rules  # lazily: a wide box often stops at the first candidate
            return (rules[p] for p in range(start, len(rules)))
        chosen = by_dst if dst_count <= src_count else by_src
        positions = sorted({p for bucket in chosen for p in bucket if p >= start})
        return (self.rules[p] for p in positions)
