"""Added, removed and moved items between two ordered lists (rules in a chain)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Hashable, Sequence
from dataclasses import field
from difflib import SequenceMatcher
from typing import Generic, TypeVar

from fwc.model.records import dataclass

T = TypeVar("T", bound=Hashable)


@dataclass
class ListChange(Generic[T]):
    added: list[T] = field(default_factory=list)
    removed: list[T] = field(default_factory=list)
    moved: list[T] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.moved)


def compare(old: Sequence[T], new: Sequence[T],
            keys: Callable[[Sequence[T]], Sequence[Hashable]] | None = None) -> ListChange[T]:
    """Order matters (first match wins), so a rule that changed place is `moved`.

    Items present on both sides (with multiplicity) are kept in their relative
    order along a longest common subsequence; the rest of them moved. With
    KEYS (the key of each item of a list, in order), items are compared by key (a
    rule whose only change is the policy line it came from is the same rule) and
    reported as the side shows them.
    """
    if keys is not None:
        return compare_keyed(old, new, list(keys(old)), list(keys(new)))
    old_count, new_count = Counter(old), Counter(new)
    change: ListChange[T] = ListChange()
    change.removed = _take_surplus(old, old_count - new_count)
    change.added = _take_surplus(new, new_count - old_count)
    kept = old_count & new_count
    old_common = _keep(old, kept)
    new_common = _keep(new, kept)
    matcher = SequenceMatcher(None, old_common, new_common, autojunk=False)
    in_place = [False] * len(new_common)
    for block in matcher.get_matching_blocks():
        for k in range(block.size):
            in_place[block.b + k] = True
    change.moved = [item for item, ok in zip(new_common, in_place, strict=True) if not ok]
    return change


def compare_keyed(old: Sequence[T], new: Sequence[T], old_keys: list[Hashable],
                  new_keys: list[Hashable]) -> ListChange[T]:
    """`compare` of the items by their keys (OLD_KEYS: one per item of OLD, in order),
    reported as each side shows them."""
    keyed = compare(old_keys, new_keys)
    return ListChange(_show(keyed.added, new_keys, new),
                      _show(keyed.removed, old_keys, old),
                      _show(keyed.moved, new_keys, new))


def _show(keys: list[Hashable], all_keys: list[Hashable], items: Sequence[T]) -> list[T]:
    """Map picked keys back to items, each occurrence once, in list order."""
    wanted = Counter(keys)
    out: list[T] = []
    for k, item in zip(all_keys, items, strict=True):
        if wanted[k] > 0:
            wanted[k] -= 1
            out.append(item)
    return out


def _take_surplus(items: Sequence[T], surplus: Counter[T]) -> list[T]:
    """The last `surplus[x]` occurrences of each x, in list order."""
    remaining = Counter(surplus)
    picked: list[T] = []
    for item in reversed(items):
        if remaining[item] > 0:
            remaining[item] -= 1
            picked.append(item)
    return picked[::-1]


def _keep(items: Sequence[T], budget: Counter[T]) -> list[T]:
    remaining = Counter(budget)
    out: list[T] = []
    for item in items:
        if remaining[item] > 0:
            remaining[item] -= 1
            out.append(item)
    return out
