"""What every render target receives for one member: the backend-neutral input.

`MemberBuild` carries the model (cluster, member), the lowering options, whether
secrets are redacted, the generated files this member gets (so that a file can
name the others it depends on) and the lowered rulesets, the backend-neutral
form of the policy (`fwc.backend.lower`). A target derives its own forms from
these (the speed passes, `optimised`) and keeps them in `memo`, which
lives as long as this one compile of this one member.
"""

from __future__ import annotations

import codecs
import contextlib
import os
import tempfile
from collections.abc import Callable, Hashable, Iterator
from dataclasses import field

from fwc.backend.arrange import Splits, optimise
from fwc.backend.files import GeneratedFile
from fwc.backend.ipsets import IpSet
from fwc.backend.lower import LowerOptions, NodeRuleset, lower
from fwc.model import Cluster, Member
from fwc.model.records import dataclass
from fwc.model.vocabulary import Backend

# The families every member's rules cover (`MemberBuild.families`).
FILTERED_FAMILIES = (4, 6)
# Bytes of text a SharedTexts spills to its temporary files for the next member (the
# texts beyond SHARED_RAW_BUDGET): a bound on disk, not on memory.
SHARED_TEXT_BUDGET = 1024 ** 3
# Characters of text a SharedTexts keeps in memory as they are; the rest of a text goes
# to an unlinked temporary file (`_Spill`) and is read back by the next member. Writing
# and reading it back cost little against rendering the chains they save, and they grow
# with the text, where zlib, before, cost 0.27 s to compress and 0.16 s to expand 27 MB
# and made the render pass grow 3.9x from 50,000 to 100,000 rules (docs/performance.md).
# In memory, the text is on the peak: at 100,000 rules 48 M characters cost 40 MB.
SHARED_RAW_BUDGET = 16 * 1024 * 1024
# Bytes of spilled text read back at a time when a kept text is handed back.
_EXPAND_CHUNK = 4 * 1024 * 1024
# `KeptText.size` of a text that could not be spilled: more than any budget.
GAVE_UP = 1 << 62


class _Spill:
    """An unlinked temporary file (0600, no name: `tempfile.TemporaryFile`) in DIRECTORY
    (`fwc compile`: the directory that holds the output directory, so that the texts go
    to the disk the output goes to, not to a temporary directory that may be memory) that
    texts are appended to; closed when the last `Spilled` of it is let go."""

    __slots__ = ("end", "file")

    def __init__(self, directory: str | None = None) -> None:
        self.file = tempfile.TemporaryFile(buffering=0, dir=directory)  # noqa: SIM115
        self.end = 0

    def __del__(self) -> None:
        self.file.close()

    def append(self, data: bytes) -> None:
        """DATA at the end; on an error (OSError), the end stays where it was."""
        fd, view, at = self.file.fileno(), memoryview(data), self.end
        while view:
            written = os.pwrite(fd, view, at)
            view, at = view[written:], at + written
        self.end = at

    def cut(self, end: int) -> None:
        """Forget what follows END (a text given up while it was the last one)."""
        os.ftruncate(self.file.fileno(), end)
        self.end = end


class Spilled:
    """A kept text in a `_Spill`: LENGTH bytes (UTF-8) at OFFSET."""

    __slots__ = ("length", "offset", "spill")

    def __init__(self, spill: _Spill, offset: int, length: int) -> None:
        self.spill, self.offset, self.length = spill, offset, length


# A kept text: its pieces as they are, or spilled (`KeptText`).
Kept = tuple[str, ...] | Spilled


class KeptText:
    """One part's text being kept while it is rendered: pieces in, kept as they are while
    they fit RAW_ROOM characters, else (all of them) appended to the file SPILL_OF gives
    (the member's, `SharedTexts`: no file is made for texts that stay in memory). When
    the file cannot be made or written (a full disk), the text is given up (`size` above
    any budget): the next member renders that part again, the compile goes on."""

    __slots__ = ("_raw", "_spill", "_spill_of", "_start", "chars", "raw_room", "size")

    def __init__(self, raw_room: int = 0,
                 spill_of: Callable[[], _Spill] = lambda: _Spill()) -> None:
        self._raw: list[str] = []
        self._spill: _Spill | None = None
        self._spill_of = spill_of  # the file to spill to, asked for when it is needed
        self._start = -1  # where this text starts in the spill, once it spills
        self.raw_room = raw_room
        self.chars = 0  # characters kept as they are
        self.size = 0  # bytes spilled so far (what the budget counts)

    def add(self, piece: str) -> None:
        if self.size == GAVE_UP:
            return
        try:
            if self._start < 0:
                if self.chars + len(piece) <= self.raw_room:
                    self._raw.append(piece)
                    self.chars += len(piece)
                    return
                self._spill = self._spill_of()
                self._start = self._spill.end
                raw, self._raw, self.chars = self._raw, [], 0
                for one in raw:
                    self._append(one)
            self._append(piece)
        except OSError:
            self.drop()
            self.size = GAVE_UP

    def _append(self, piece: str) -> None:
        assert self._spill is not None
        data = piece.encode()
        self._spill.append(data)
        self.size += len(data)

    def drop(self) -> None:
        """This text is not kept: its spilled bytes go when they are the file's last."""
        spill, self._raw = self._spill, []
        if spill is not None and self._start >= 0 and spill.end == self._start + self.size:
            with contextlib.suppress(OSError):  # else they stay, unreferenced, till closed
                spill.cut(self._start)

    def done(self) -> Kept:
        if self._start < 0:
            raw, self._raw = tuple(self._raw), []
            return raw
        assert self._spill is not None
        return Spilled(self._spill, self._start, self.size)


def expanded(kept: Spilled) -> Iterator[str]:
    """A spilled text's pieces again (at most _EXPAND_CHUNK bytes each)."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    fd = kept.spill.file.fileno()
    at, end = kept.offset, kept.offset + kept.length
    while at < end:
        data = os.pread(fd, min(_EXPAND_CHUNK, end - at), at)
        if not data:
            raise OSError(f"a kept text's temporary file ended early ({at} of {end})")
        at += len(data)
        yield decoder.decode(data)
    rest = decoder.decode(b"", final=True)
    if rest:
        yield rest


@dataclass(slots=True)
class SharedTexts:
    """Text rendered for one member that the next member of the cluster may reuse.

    Members mostly get equal parts (the FORWARD chains of every member): a target
    offers each part's text under a key (file, table, chain) with the value it was
    rendered from, and the next member takes it back when its own value is equal
    (==: equal values render to equal text). Per cluster and per compile, created
    by the caller (fwc.backend.output.ClusterStream), never global: it holds the
    texts of the member being rendered and of the one before: up to `raw_budget`
    characters as they are, the rest in unlinked temporary files (see `KeptText`), at
    most `budget` bytes there.
    """

    budget: int = SHARED_TEXT_BUDGET
    keep: bool = True  # False for the cluster's last member: nobody comes after it
    raw_budget: int = 0  # characters kept in memory (SHARED_RAW_BUDGET in a compile)
    # key -> (value, text, characters of a text kept as it is: counted once, when offered)
    _previous: dict[Hashable, tuple[object, Kept, int]] = field(default_factory=dict)
    _current: dict[Hashable, tuple[object, Kept, int]] = field(default_factory=dict)
    _used: int = 0
    _raw_used: int = 0
    spill_dir: str | None = None  # where spill files are made (None: tempfile's choice)
    _spill: _Spill | None = None  # where the current member's texts spill

    def keeper(self) -> KeptText | None:
        """A KeptText for one part of the member being rendered, or None when nothing
        more is kept."""
        return KeptText(self.raw_room(), self._spill_file) if self.room() > 0 else None

    def _spill_file(self) -> _Spill:
        if self._spill is None:
            self._spill = _Spill(self.spill_dir)
        return self._spill

    def get(self, key: Hashable, value: object) -> Iterator[str] | None:
        """The pieces of the text offered under KEY by the previous member if its value
        equals VALUE (offered again to the next member)."""
        got = self._previous.get(key)
        if got is None or got[0] != value:
            return None
        self._take(key, value, got[1], got[2])
        kept = got[1]
        return iter(kept) if isinstance(kept, tuple) else expanded(kept)

    def room(self) -> int:
        """Spilled bytes that an offer may still hold (0 when nothing is kept)."""
        return self.budget - self._used if self.keep else 0

    def raw_room(self) -> int:
        """Characters an offer may still keep as they are."""
        return self.raw_budget - self._raw_used if self.keep else 0

    def offer(self, key: Hashable, value: object, text: KeptText) -> None:
        """TEXT was rendered for VALUE, under KEY."""
        if self.keep and text.size != GAVE_UP \
                and not self._take(key, value, text.done(), text.chars):  # (0 once spilled)
            text.drop()

    def _take(self, key: Hashable, value: object, data: Kept, chars: int) -> bool:
        """Keep DATA (CHARS characters when it is kept as it is) for the next member;
        whether it was."""
        if not self.keep:
            return False
        if isinstance(data, tuple):
            if self._raw_used + chars > self.raw_budget:
                return False
            self._current[key] = (value, data, chars)
            self._raw_used += chars
        else:
            if self._used + data.length > self.budget:
                return False
            self._current[key] = (value, data, 0)
            self._used += data.length
        return True

    def next_member(self, last: bool = False) -> None:
        """The member is done: its texts are offered to the next one (LAST: the next is
        the cluster's last member, which keeps nothing)."""
        self._previous, self._current, self._used, self._raw_used = \
            self._current, {}, 0, 0
        # the next member spills to a file of its own: this one's stays while a text
        # kept in it is (`Spilled`), also when a taker offers it on
        self._spill = None
        self.keep = not last


@dataclass(slots=True)
class MemberBuild:
    cluster: Cluster
    member: Member
    options: LowerOptions
    redact: bool = False
    # The files this member gets, in table order (fwc.backend.render.registry.member_files).
    files: tuple[GeneratedFile, ...] = ()
    memo: dict[str, object] = field(default_factory=dict)
    # The packet filter written for: the cluster's `backend` unless `fwc compile --backend`.
    backend: Backend | None = None
    # Texts of the cluster's previous member (by default none, and none kept).
    texts: SharedTexts = field(default_factory=lambda: SharedTexts(keep=False))
    # The protocol splits of the iptables arrangement, per family and built-in chain,
    # once `optimised` made it: what a later patch compile decides with
    # (fwc.backend.patch).
    splits: Splits = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.backend is None:
            self.backend = self.cluster.backend

    @property
    def families(self) -> tuple[int, ...]:
        """The address families the member's rules cover (the one answer: its rulesets,
        the rows with a `family`): both, always. A family the cluster has no address of
        is not left open on the node (the kernel gives itself IPv6 addresses: link-local,
        and from router advertisements while forwarding is off); its lowered ruleset drops
        what reaches the node. Forwarding stays per `Cluster.families` (sysctl target)."""
        return FILTERED_FAMILIES

    def lowered(self, family: int) -> NodeRuleset:
        """The member's ruleset for FAMILY before any backend pass."""
        return lower(self.cluster, self.member, family, self.options)

    def optimised(self, clip_ports: bool = False) \
            -> tuple[dict[int, NodeRuleset], tuple[IpSet, ...]]:
        """The rulesets after the speed passes (fwc.backend.arrange.optimise: long address
        lists as sets, long chains as per-interface chains; CLIP_PORTS: port buckets cut
        to their range, as nftables maps need), and the sets; built once per target."""
        key = f"optimised clip={clip_ports}"
        if key not in self.memo:
            self.memo[key] = optimise(self.member, {f: self.lowered(f) for f in self.families},
                                      clip_ports=clip_ports, memo=self.cluster.memo,
                                      splits=None if clip_ports else self.splits)
        return self.memo[key]  # type: ignore[return-value]

    def has(self, name: str) -> bool:
        return any(f.name == name for f in self.files)
