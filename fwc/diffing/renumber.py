"""Names the compiler derives from a rule's position, followed from one side to the other.

A rule's own chain (`fwc-pN-CHAIN`, `fwc-nN-CHAIN`) and its rate buckets
(`--hashlimit-name fwc-pN`, `fwc-sN`) carry the rule's number in its block
(docs/compile.md). Inserting one rule renumbers every later one, so comparing the
compiled rulesets by name showed every later rule's chain removed and added again,
and every jump to it changed. The reviewer asked what one rule does: `fwc diff`
compares the old side under the new side's numbers.

The numbers are aligned along a longest common subsequence of the rules' texts (as
difflib pairs them: a rule that moved, or the first of a duplicated pair, counts as
removed and added, where the summary's policy rule list calls it moved); a rule
changed in place (replaced by a rule at the same place) keeps its number, as it did
before this alignment. A rule removed from the old side gets a name no new rule has,
so its chain is reported removed.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from difflib import SequenceMatcher

from fwc import model
from fwc.model.records import dataclass

# the kinds of fwc.backend.lower: p and s for filter rules, n for NAT rules; in a rule
# line only where a name stands (a jump, a goto, a rate bucket), never in a log prefix
# or a comment that happens to read alike
_CHAIN = re.compile(r"^fwc-([psn])([0-9]+)(?=-)")
# (the name alone, found by its literal start; what stands before it is asked after: a
# pattern that starts with look-behinds tried every position of the text, 3x slower)
_NAME = re.compile(r"fwc-([psn])([0-9]+)\b")
_BEFORE_A_NAME = ("-j ", "-g ", "--hashlimit-name ")
_LONGEST_BEFORE = max(len(before) for before in _BEFORE_A_NAME)


@dataclass(frozen=True, slots=True)
class Renumbering:
    """Old rule numbers (1-based, as in the names) to new ones, per block."""

    rules: dict[int, int]
    nat: dict[int, int]

    @classmethod
    def between(cls, old: model.Cluster | None, new: model.Cluster | None) \
            -> Renumbering | None:
        """How OLD's rule numbers read on NEW's side; None when every number stays."""
        if old is None or new is None:
            return None
        rules = _aligned([r.text() for r in old.rules], [r.text() for r in new.rules])
        nat = _aligned([r.text() for r in old.nat], [r.text() for r in new.nat])
        if _identity(rules, len(old.rules)) and _identity(nat, len(old.nat)):
            return None
        return cls(rules, nat)

    def _replace_name(self, found: re.Match[str]) -> str:
        text, start = found.string, found.start()
        if not text.endswith(_BEFORE_A_NAME, max(0, start - _LONGEST_BEFORE), start):
            return found.group(0)
        line = text.rfind("\n", 0, start) + 1
        if (text.count('"', line, start) - text.count('\\"', line, start)) % 2:
            return found.group(0)  # inside a quoted log prefix or comment: text
        return self._replace(found)

    def _replace(self, found: re.Match[str]) -> str:
        kind, number = found.group(1), int(found.group(2))
        new = (self.nat if kind == "n" else self.rules).get(number)
        # '~' is in no name fwc writes: a removed rule's names meet nothing on the new side
        return f"fwc-{kind}{new}" if new is not None else f"fwc-{kind}~{number}"

    def name(self, chain: str) -> str:
        """An old side's chain name as the new side would name that rule's chain."""
        return _CHAIN.sub(self._replace, chain)

    def lines(self, rules: Sequence[str]) -> list[str]:
        """An old side's rule lines (jump targets, bucket names) in the new side's numbers."""
        if not rules:
            return []
        return _NAME.sub(self._replace_name, "\n".join(rules)).split("\n")


def _aligned(old: list[str], new: list[str]) -> dict[int, int]:
    """Old position -> new position (1-based) of the rules kept, or changed in place."""
    out: dict[int, int] = {}
    matcher = SequenceMatcher(None, old, new, autojunk=False)
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag in ("equal", "replace"):
            # a replaced stretch pairs its rules in order (the longer side's rest is new
            # or removed)
            pairs = min(i2 - i1, j2 - j1)
            out.update((i1 + k + 1, j1 + k + 1) for k in range(pairs))
    return out


def _identity(numbers: dict[int, int], count: int) -> bool:
    return len(numbers) == count and all(old == new for old, new in numbers.items())
