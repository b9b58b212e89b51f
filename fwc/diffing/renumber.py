"""What the compiler derives from a rule's position, followed from one side to the other.

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

A rule's policy line is the other thing its position decides: each compiled rule names
it in a comment (`--comment "edge.fw:46"`), so an inserted line changes the comment of
every rule below it. `without_locations` compares rules without it; `comparable` does
both for a whole compiled rules file, line for line, for the review's patch.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Sequence
from difflib import SequenceMatcher

from fwc import model
from fwc.model.records import dataclass

# the kinds of fwc.backend.lower: p and s for filter rules, n for NAT rules (and f for the
# failsafe's factored chains, fwc.backend.lower.failsafe, numbered like p); in a rule
# line only where a name stands (a jump, a goto, a rate bucket), never in a log prefix
# or a comment that happens to read alike
_CHAIN = re.compile(r"^fwc-([psn])([0-9]+)(?=-)")
# (the name alone, found by its literal start; what stands before it is asked after: a
# pattern that starts with look-behinds tried every position of the text, 3x slower)
_NAME = re.compile(r"fwc-([psnf])([0-9]+)\b")
_BEFORE_A_NAME = ("-j ", "-g ", "--hashlimit-name ")
_LONGEST_BEFORE = max(len(before) for before in _BEFORE_A_NAME)
# In a whole iptables-restore file a rule's chain is also declared (":NAME - [0:0]") and
# filled ("-A NAME ..."), at a line's start. In an nftables file the names are a chain's
# (`chain filter-fwc-p4-FORWARD-v4 {`, `jump ...`, `goto ...`: TABLE-NAME-vFAMILY), a
# rate limit's (`limit fwc-s4-v4 {`, `limit name "fwc-s4-v4"`) and a source meter's
# (`set fwc-p4-v4 {`, `update @fwc-p4-v4 ...`) (fwc.backend.render.nftables).
_DECLARED_AT_START = (":", "-A ")
_NFT_BEFORE_A_NAME = tuple(f"{verb} {table}-" for verb in ("jump", "goto", "chain")
                           for table in ("raw", "mangle", "filter", "nat")) \
    + ("limit ", "set ", "@")
_NFT_QUOTED_BEFORE = 'limit name "'
_LONGEST_NFT_BEFORE = max(len(before) for before in _NFT_BEFORE_A_NAME)
# (`[^":\n]`: a match stays inside one rule of the joined text)
# (the arrangement's comments name the rule they copy: "fwc arrange: FILE:LINE", and before
# issue 12's twenty-sixth session ", in N chains" after it: outputs of older versions)
_LOCATION = re.compile(r'(--comment "(?:fwc arrange: )?[^":\n]+):\d+(?=(?:, in \d+ chains?)?")')
# (a C-level callable: a template like r"\1" is expanded by Python code at each match,
# 3 us each, 1.5 s for the rules files of one member pair at 20,000 rules)
_FIRST_GROUP = operator.methodcaller("group", 1)
# nftables': a comment ends its rule's line, or stands in a map's or set's element
# before its " : verdict" or ","; a lookup's comment names its first rule's line, "and
# more rules" (fwc.backend.render.nftables; before issue 12's twenty-seventh session how
# many more, and the map or set: outputs of older versions)
_NFT_LOCATION = re.compile(
    r'( comment "(?:fwc arrange: )?[^":\n]+):\d+'
    r'(?=(?:, in \d+ chains?| and more rules| and \d+ more rules? \((?:map|set) [^"()\n]+\))?'
    r'"(?:$| :|,))',
    re.MULTILINE)


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
        return self._replace_after(found, _BEFORE_A_NAME, _LONGEST_BEFORE)

    def _replace_in_file(self, found: re.Match[str]) -> str:
        text, start = found.string, found.start()
        line = text.rfind("\n", 0, start) + 1
        if text[line:start] in _DECLARED_AT_START:
            return self._replace(found)
        return self._replace_name(found)

    def _replace_in_nft(self, found: re.Match[str]) -> str:
        text, start = found.string, found.start()
        if text.endswith(_NFT_QUOTED_BEFORE, max(0, start - len(_NFT_QUOTED_BEFORE)), start):
            return self._replace(found)
        return self._replace_after(found, _NFT_BEFORE_A_NAME, _LONGEST_NFT_BEFORE)

    def _replace_after(self, found: re.Match[str], before: tuple[str, ...],
                       longest: int) -> str:
        """FOUND renumbered where one of BEFORE stands just before it, outside quotes."""
        text, start = found.string, found.start()
        if not text.endswith(before, max(0, start - longest), start):
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


def without_locations(rules: Sequence[str]) -> list[str]:
    """RULES without the policy line each came from, in one pass over them all:
    `--comment "edge.fw:46"` -> `--comment "edge.fw"` (and in the arrangement's copies,
    `"fwc arrange: edge.fw:46, in 2 chains"` -> `"fwc arrange: edge.fw, in 2 chains"`), so
    that a rule is the same rule when only lines above it were inserted."""
    if not rules:
        return []
    return _LOCATION.sub(_FIRST_GROUP, "\n".join(rules)).split("\n")


def comparable(text: str, nft: bool, renumbering: Renumbering | None = None) -> str:
    """TEXT, a compiled rules file (nftables' if NFT, else iptables-restore's), without
    what only its rules' positions decide: the policy line each names, and, with
    RENUMBERING (on the old side), the rule numbers in the names derived from them, read
    in the new side's numbers. Line for line: no line is joined, split or dropped, so a
    line of the result stands for the line of TEXT at the same place."""
    text = (_NFT_LOCATION if nft else _LOCATION).sub(_FIRST_GROUP, text)
    if renumbering is None:
        return text
    return _NAME.sub(renumbering._replace_in_nft if nft else renumbering._replace_in_file,
                     text)


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
