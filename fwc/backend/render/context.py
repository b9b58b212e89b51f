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
import zlib
from collections.abc import Hashable, Iterator
from dataclasses import field

from fwc.backend.arrange import optimise
from fwc.backend.files import GeneratedFile
from fwc.backend.ipsets import IpSet
from fwc.backend.lower import LowerOptions, NodeRuleset, lower
from fwc.model import Cluster, Member
from fwc.model.records import dataclass
from fwc.model.vocabulary import Backend

# Bytes of compressed text a SharedTexts keeps for the next member. The texts are kept
# zlib-compressed (iptables text shrinks about 12x, at about 0.6 s per 100 MB to compress
# and 0.4 s to expand, against several seconds to render it): 16 MB hold the whole FORWARD
# bulk of a 100,000-rule member, which kept as text cost 64 MB of the peak for a part of it.
SHARED_TEXT_BUDGET = 16 * 1024 * 1024
# Characters of text a SharedTexts may keep as they are, before compressing: expanding and
# compressing are about a third of rendering the chains they save (0.27 s to compress and
# 0.16 s to expand 27 MB, each member after the first). At every size: at 100,000 rules
# they cost the peak about 45 MB (403 -> 448 MB, under the 500 MB target) and save about
# 1.2 s of compression; kept for clusters of up to 50,000 rules only, they made the
# render pass grow 3.9x from 50,000 to 100,000 rules (docs/performance.md).
SHARED_RAW_BUDGET = 48 * 1024 * 1024
# Characters of text expanded at a time when a kept text is handed back.
_EXPAND_CHUNK = 4 * 1024 * 1024


# A kept text: its pieces as they are, or compressed (`KeptText`).
Kept = tuple[str, ...] | bytes


class KeptText:
    """One part's text being kept while it is rendered: pieces in, kept as they are while
    they fit RAW_ROOM characters, else compressed (all of them)."""

    __slots__ = ("_compressor", "_out", "_raw", "chars", "raw_room", "size")

    def __init__(self, raw_room: int = 0) -> None:
        self._compressor: zlib._Compress | None = None
        self._out: list[bytes] = []
        self._raw: list[str] = []
        self.raw_room = raw_room
        self.chars = 0  # characters kept as they are
        self.size = 0  # compressed bytes so far (what the budget counts)

    def add(self, piece: str) -> None:
        if self._compressor is None:
            if self.chars + len(piece) <= self.raw_room:
                self._raw.append(piece)
                self.chars += len(piece)
                return
            self._compressor = zlib.compressobj(1)
            raw, self._raw, self.chars = self._raw, [], 0
            for one in raw:
                self._compress(one)
        self._compress(piece)

    def _compress(self, piece: str) -> None:
        assert self._compressor is not None
        data = self._compressor.compress(piece.encode())
        if data:
            self._out.append(data)
            self.size += len(data)

    def done(self) -> Kept:
        if self._compressor is None:
            raw, self._raw = tuple(self._raw), []
            return raw
        self._out.append(self._compressor.flush())
        data = b"".join(self._out)
        self._out = []
        return data


def expanded(data: bytes) -> Iterator[str]:
    """A kept text's pieces again (at most _EXPAND_CHUNK bytes each)."""
    expander = zlib.decompressobj()
    decoder = codecs.getincrementaldecoder("utf-8")()
    while data:
        piece = expander.decompress(data, _EXPAND_CHUNK)
        data = expander.unconsumed_tail
        yield decoder.decode(piece)
    rest = decoder.decode(expander.flush(), final=True)
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
    characters as they are, the rest zlib-compressed (see `KeptText`), at most `budget`
    compressed bytes.
    """

    budget: int = SHARED_TEXT_BUDGET
    keep: bool = True  # False for the cluster's last member: nobody comes after it
    raw_budget: int = 0  # characters kept uncompressed (SHARED_RAW_BUDGET in a compile)
    # key -> (value, text, characters of a text kept as it is: counted once, when offered)
    _previous: dict[Hashable, tuple[object, Kept, int]] = field(default_factory=dict)
    _current: dict[Hashable, tuple[object, Kept, int]] = field(default_factory=dict)
    _used: int = 0
    _raw_used: int = 0

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
        """Compressed bytes that an offer may still hold (0 when nothing is kept)."""
        return self.budget - self._used if self.keep else 0

    def raw_room(self) -> int:
        """Characters an offer may still keep as they are."""
        return self.raw_budget - self._raw_used if self.keep else 0

    def offer(self, key: Hashable, value: object, text: KeptText) -> None:
        """TEXT was rendered for VALUE, under KEY."""
        if self.keep:
            data = text.done()
            self._take(key, value, data, sum(map(len, data)) if isinstance(data, tuple) else 0)

    def _take(self, key: Hashable, value: object, data: Kept, chars: int) -> None:
        """Keep DATA (CHARS characters when it is kept as it is) for the next member."""
        if not self.keep:
            return
        if isinstance(data, tuple):
            if self._raw_used + chars <= self.raw_budget:
                self._current[key] = (value, data, chars)
                self._raw_used += chars
        elif self._used + len(data) <= self.budget:
            self._current[key] = (value, data, 0)
            self._used += len(data)

    def next_member(self, last: bool = False) -> None:
        """The member is done: its texts are offered to the next one (LAST: the next is
        the cluster's last member, which keeps nothing)."""
        self._previous, self._current, self._used, self._raw_used = \
            self._current, {}, 0, 0
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

    def __post_init__(self) -> None:
        if self.backend is None:
            self.backend = self.cluster.backend

    @property
    def families(self) -> tuple[int, ...]:
        return (4, 6) if 6 in self.cluster.families else (4,)

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
                                      clip_ports=clip_ports, memo=self.cluster.memo)
        return self.memo[key]  # type: ignore[return-value]

    def has(self, name: str) -> bool:
        return any(f.name == name for f in self.files)
