"""The named objects of one nft file (sets, verdict maps, conntrack helpers, limits,
meters), and a record of what one chain's texts asked of them.

Each object is named by what it holds or where it stands, never by a count over the
file: an address or port set by a digest of its elements (`fwc4.HASH`, `ports.HASH`), a
rule map by the chain whose rules fill it (`filter-fwd-tcp-1024-v4-rules1`), so an edit
of one rule renames nothing of the others' (users review `git diff output/`, issue 12).
A name that meets one taken by other content gets the next free `-2`, `-3`
(`arrange.next_free`): then, and only then, it depends on what the file declared before.
A chain whose texts another member's file already wrote can take them as they are only
when the same questions get the same answers in this file: a `Journal` keeps one chain's
questions and answers, `Writer.replayed` asks them again and keeps the declarations only
if every answer is the same (fwc.backend.render.nftables `render_pieces`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from operator import attrgetter
from typing import Any

from fwc.backend.arrange import next_free
from fwc.backend.ipsets import IpSet, content_name
from fwc.backend.render import escape
from fwc.model.addresses import FAMILY_BITS, address_text, cidr_span
from fwc.model.records import hash_once

# The longest name of a set, map or chain nft loads (NFT_NAME_MAXLEN 256 with the NUL).
NFT_NAME_MAX = 255


class NftUnsupported(ValueError):
    """A lowered rule that this target has no nft form for (a bug: lowering made it)."""


# A journal's calls, flat (a tuple per call was a third of their memory at 100,000
# rules): what was asked, with what, the answer, and again; IPSET: an ipset was read.
Calls = tuple[Any, ...]
IPSET = "ipset"
# What gives the same answer when asked again with the same arguments: one of each is
# kept per journal (`connlimit` and `verdict_map` declare something new each time).
_IDEMPOTENT = frozenset({IPSET, "named_set", "limit", "meter", "helper_name"})


class Writer:
    """The named objects of one file, each declared once, in the order first used."""

    __slots__ = ("sets", "maps", "helpers", "limits", "meters", "collapsed_memo",
                 "by_content", "counts", "counted", "objects")

    def __init__(self, collapsed_memo: dict[tuple[str, ...], tuple[str, ...]] | None = None,
                 ipsets: Iterable[IpSet] = ()) -> None:
        # name -> (key type, flags, elements as written), in the order first used
        self.sets: dict[str, tuple[str, str, tuple[str, ...]]] = {}
        self.maps: dict[str, tuple[str, str, tuple[str, ...]]] = {}
        self.helpers: dict[tuple[str, int], str] = {}
        # named `limit` objects: name -> "rate over R burst N packets" (one bucket per rule)
        self.limits: dict[str, str] = {}
        # dynamic sets (meters): name -> (key type, with a timeout)
        self.meters: dict[str, tuple[str, bool]] = {}
        self.collapsed_memo = {} if collapsed_memo is None else collapsed_memo
        self.by_content: dict[tuple[str, str, tuple[str, ...], str | None], str] = {}
        self.counts: dict[str, int] = {}
        # maps counting per element; a dict, ordered, so `_undo` can drop the newest
        self.counted: dict[str, None] = {}
        # (key type, addresses) -> the ipset holding them (`named_set`): the least name
        # when several do
        self.objects: dict[tuple[str, tuple[str, ...]], str] = {}
        for one in sorted(ipsets, key=attrgetter("name")):
            key_type = "ipv4_addr" if one.family == 4 else "ipv6_addr"
            self.objects.setdefault((key_type, self.collapsed(one.cidrs)), one.name)

    def collapsed(self, cidrs: tuple[str, ...]) -> tuple[str, ...]:
        found = self.collapsed_memo.get(cidrs)
        if found is None:
            found = self.collapsed_memo[cidrs] = collapsed(cidrs)
        return found

    def ipset(self, ipsets: Mapping[str, tuple[str, ...]], name: str) \
            -> tuple[str, ...] | None:
        """The addresses of the ipset NAME (None: no such set)."""
        return ipsets.get(name)

    def named_set(self, prefix: str, key_type: str, elements: tuple[str, ...],
                  preferred: str | None = None) -> str:
        """The set holding ELEMENTS, declared once: named PREFERRED (an ipset's name, a
        rule set's chain), else after the ipset of the member holding just these
        addresses (`fwc4-partners`), else PREFIX.HASH of ELEMENTS. A list and an ipset
        of one content took the name of whichever came first: an edit of the rule first
        naming it renamed the set in every rule (and other members named it otherwise)."""
        if preferred is None:
            preferred = self.objects.get((key_type, elements))
        key = (prefix, key_type, elements, preferred)
        found = self.by_content.get(key)
        if found is not None:
            return found
        name = self._free(escape.nft_identifier(
            content_name(prefix, elements) if preferred is None else preferred))
        self.sets[name] = (key_type, "interval", elements)
        self.by_content[key] = name
        return name

    def verdict_map(self, name: str, key_type: str, elements: tuple[str, ...],
                    interval: bool = False, counted: bool = False) -> str:
        """A verdict map named NAME (the next free NAME-2, ... when taken); INTERVAL for
        ranges and prefixes in the key. COUNTED: the rule maps (`_concat`), which count
        per element (`counter`): each element is a rule of the policy."""
        name = self._free(escape.nft_identifier(name))
        flags = "interval" if interval or (not counted and key_type == "inet_service") else ""
        self.maps[name] = (key_type, flags, elements)
        if counted:
            self.counted[name] = None
        return name

    def _free(self, name: str) -> str:
        """NAME or its next free variant: sets, maps and meters share one namespace."""
        return next_free(name, _Taken(self), NFT_NAME_MAX)

    def limit(self, name: str, family: int, rate: str, burst: int) -> str:
        """The `limit` object of hashlimit bucket NAME in FAMILY (iptables keeps one table
        per name and family), declared once and shared by every line naming it."""
        found = escape.nft_identifier(f"{name}-v{family}")
        spec = f"rate over {rate} burst {burst} packets"
        if self.limits.setdefault(found, spec) != spec:
            raise NftUnsupported(f"hashlimit {name} with two rates")
        return found

    def meter(self, name: str, family: int, timeout: bool) -> str:
        """A dynamic set keyed on the source address: per-source buckets or counts."""
        found = escape.nft_identifier(f"{name}-v{family}")
        key = ("ipv4_addr" if family == 4 else "ipv6_addr", timeout)
        if self.meters.setdefault(found, key) != key:
            raise NftUnsupported(f"meter {name} used two ways")
        return found

    def connlimit(self, family: int) -> str:
        """A fresh connection-count set: iptables counts per connlimit line."""
        self.counts["connlimit"] = self.counts.get("connlimit", 0) + 1
        return self.meter(f"connlimit-{self.counts['connlimit']}", family, False)

    def helper_name(self, helper: str, protocol: int) -> str:
        key = (helper, protocol)
        if key not in self.helpers:
            self.helpers[key] = escape.nft_identifier(f"helper-{helper}-{protocol}")
        return self.helpers[key]

    def replayed(self, calls: Calls, ipsets: Mapping[str, tuple[str, ...]]) -> bool:
        """Whether CALLS (`Journal.kept`, from another file) get the same answers here,
        with the same ipset contents read; if so they are made here (the same
        declarations, in the same order), else this writer is left as it was."""
        lengths = self._lengths()
        counts = dict(self.counts)
        flat = iter(calls)
        for method, arguments, answer in zip(flat, flat, flat, strict=True):
            if method == IPSET:
                same = ipsets.get(arguments[0]) == answer
            else:
                try:
                    same = getattr(self, method)(*arguments) == answer
                except NftUnsupported:
                    same = False
            if not same:
                self._undo(lengths, counts)
                return False
        return True

    def _tables(self) -> tuple[dict[Any, Any], ...]:
        return (self.sets, self.maps, self.helpers, self.limits, self.meters,
                self.by_content, self.counted)

    def _lengths(self) -> tuple[int, ...]:
        return tuple(len(table) for table in self._tables())

    def _undo(self, lengths: tuple[int, ...], counts: dict[str, int]) -> None:
        # Every call only adds names (none is ever declared twice or changed), and a
        # dict keeps its order: dropping the keys past the old length restores it.
        for table, length in zip(self._tables(), lengths, strict=True):
            for _ in range(len(table) - length):
                table.popitem()  # the newest first (a copy of the keys per table was
                # the square of the chains once every later chain's numbers shifted)
        self.counts = counts


class _Taken:
    """The names a writer declared in nft's one namespace of sets (maps and meters are
    sets too), for `next_free`."""

    __slots__ = ("writer",)

    def __init__(self, writer: Writer) -> None:
        self.writer = writer

    def __contains__(self, name: object) -> bool:
        w = self.writer
        return name in w.sets or name in w.maps or name in w.meters


class Journal:
    """A `Writer` as one chain's texts see it: it answers as the writer does, and keeps
    each question with its answer (and each ipset read) for `Writer.replayed`."""

    __slots__ = ("writer", "calls", "asked", "collapsed")

    def __init__(self, writer: Writer) -> None:
        self.writer = writer
        # a pure function of its argument (the same in every file): not journaled
        self.collapsed: Callable[[tuple[str, ...]], tuple[str, ...]] = writer.collapsed
        self.calls: list[object] = []  # flat: method, arguments, answer, ...
        self.asked: dict[tuple[str, tuple[object, ...]], object] = {}  # _IDEMPOTENT's

    def kept(self) -> Calls:
        """The calls, as `Writer.replayed` takes them."""
        return tuple(self.calls)

    def ipset(self, ipsets: Mapping[str, tuple[str, ...]], name: str) \
            -> tuple[str, ...] | None:
        found = ipsets.get(name)
        self._keep(IPSET, (name,), found)
        return found

    def named_set(self, prefix: str, key_type: str, elements: tuple[str, ...],
                  preferred: str | None = None) -> str:
        return self._kept("named_set", (prefix, key_type, elements, preferred))

    def verdict_map(self, name: str, key_type: str, elements: tuple[str, ...],
                    interval: bool = False, counted: bool = False) -> str:
        return self._kept("verdict_map", (name, key_type, elements, interval, counted))

    def limit(self, name: str, family: int, rate: str, burst: int) -> str:
        return self._kept("limit", (name, family, rate, burst))

    def meter(self, name: str, family: int, timeout: bool) -> str:
        return self._kept("meter", (name, family, timeout))

    def connlimit(self, family: int) -> str:
        return self._kept("connlimit", (family,))

    def helper_name(self, helper: str, protocol: int) -> str:
        return self._kept("helper_name", (helper, protocol))

    def _kept(self, method: str, arguments: tuple[object, ...]) -> str:
        answer = getattr(self.writer, method)(*arguments)
        self._keep(method, arguments, answer)
        return answer

    def _keep(self, method: str, arguments: tuple[object, ...], answer: object) -> None:
        if method in _IDEMPOTENT:
            if (method, arguments) in self.asked:
                return  # asked again, the same answer: once is enough to replay
            self.asked[method, arguments] = answer
        self.calls += (method, arguments, answer)


# What the texts of a chain ask: the file's writer, or a journal in front of it.
Names = Writer | Journal


def collapsed(cidrs: tuple[str, ...]) -> tuple[str, ...]:
    """CIDRS as the elements of an interval set: the blocks inside another dropped."""
    # An interval set refuses overlapping elements. Two blocks overlap only when one
    # holds the other, so dropping the held ones matches exactly the same addresses;
    # adjacent blocks stay as written (each member lists its own addresses alike).
    # (the blocks of one address larger first: a held one comes after its holder)
    spans = sorted({cidr_span(c) for c in cidrs}, key=lambda s: (s[0], s[1], s[1] - s[2]))
    out: list[str] = []
    kept: tuple[int, int, int] | None = None
    for family, low, high in spans:
        if kept is not None and kept[0] == family and high <= kept[2]:
            continue  # inside the previous block
        kept = (family, low, high)
        length = FAMILY_BITS[family] - (high - low + 1).bit_length() + 1
        out.append(f"{address_text(low, family)}/{length}")
    return hash_once(tuple(out))  # (a key of the writer's set names, `Writer.named_set`)
