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
from dataclasses import dataclass, field

from fwc.backend.arrange import optimise
from fwc.backend.files import GeneratedFile
from fwc.backend.ipsets import IpSet
from fwc.backend.lower import LowerOptions, NodeRuleset, lower
from fwc.model import Cluster, Member
from fwc.model.vocabulary import Backend

# Bytes of compressed text a SharedTexts keeps for the next member. The texts are kept
# zlib-compressed (iptables text shrinks about 12x, at about 0.6 s per 100 MB to compress
# and 0.4 s to expand, against several seconds to render it): 16 MB hold the whole FORWARD
# bulk of a 100,000-rule member, which kept as text cost 64 MB of the peak for a part of it.
SHARED_TEXT_BUDGET = 16 * 1024 * 1024
# Characters of text expanded at a time when a kept text is handed back.
_EXPAND_CHUNK = 4 * 1024 * 1024


class KeptText:
    """One part's text being kept while it is rendered: pieces in, compressed."""

    __slots__ = ("_compressor", "_out", "size")

    def __init__(self) -> None:
        self._compressor = zlib.compressobj(1)
        self._out: list[bytes] = []
        self.size = 0  # compressed bytes so far (what the budget counts)

    def add(self, piece: str) -> None:
        data = self._compressor.compress(piece.encode())
        if data:
            self._out.append(data)
            self.size += len(data)

    def done(self) -> bytes:
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
    texts of the member being rendered and of the one before, zlib-compressed (see
    `KeptText`), at most `budget` compressed bytes each.
    """

    budget: int = SHARED_TEXT_BUDGET
    keep: bool = True  # False for the cluster's last member: nobody comes after it
    _previous: dict[Hashable, tuple[object, bytes]] = field(default_factory=dict)
    _current: dict[Hashable, tuple[object, bytes]] = field(default_factory=dict)
    _used: int = 0

    def get(self, key: Hashable, value: object) -> Iterator[str] | None:
        """The pieces of the text offered under KEY by the previous member if its value
        equals VALUE (offered again to the next member)."""
        got = self._previous.get(key)
        if got is None or got[0] != value:
            return None
        self._take(key, value, got[1])
        return expanded(got[1])

    def room(self) -> int:
        """Compressed bytes that an offer may still hold (0 when nothing is kept)."""
        return self.budget - self._used if self.keep else 0

    def offer(self, key: Hashable, value: object, text: KeptText) -> None:
        """TEXT was rendered for VALUE, under KEY."""
        if self.keep:
            self._take(key, value, text.done())

    def _take(self, key: Hashable, value: object, data: bytes) -> None:
        if self.keep and self._used + len(data) <= self.budget:
            self._current[key] = (value, data)
            self._used += len(data)

    def next_member(self, last: bool = False) -> None:
        """The member is done: its texts are offered to the next one (LAST: the next is
        the cluster's last member, which keeps nothing)."""
        self._previous, self._current, self._used = self._current, {}, 0
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
