"""The render targets, one module each, and which generated files a member gets.

A target turns the backend-neutral input of one member (`MemberBuild`: the
model and the lowered rulesets) into the text of the generated files whose row
in `fwc.backend.files.FILES` names it. Adding a backend (nftables, issue 13) is
one module with a `render_file` function, one entry in TARGETS and its rows in
the table of generated files (with a `When` if it exists only sometimes).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator
from types import MappingProxyType

from fwc.backend.files import FILES, GeneratedFile, When
from fwc.backend.render import (
    conntrackd,
    ipset,
    iptables,
    keepalived,
    nftables,
    notify,
    routes,
    sysctl,
    systemd,
    uplinks,
)
from fwc.backend.render.context import MemberBuild
from fwc.model.records import dataclass


def _never(build: MemberBuild) -> bool:
    return False


@dataclass(frozen=True, slots=True)
class Target:
    name: str
    # The file's text, or its UTF-8 bytes (a large file is built as bytes: never twice).
    render: Callable[[MemberBuild, GeneratedFile], str | bytes]
    # Whether the member's files of this target carry a real secret (they get mode 0600).
    holds_secret: Callable[[MemberBuild], bool] = _never
    # The same bytes as `render`, in pieces as they are rendered (None: not offered), for
    # files too large to hold whole (a 100,000-rule member's iptables.rules is 135 MB).
    stream: Callable[[MemberBuild, GeneratedFile], Iterable[bytes]] | None = None


TARGETS = MappingProxyType({t.name: t for t in (
    Target("iptables", iptables.render_file, stream=iptables.stream_file),
    Target("nftables", nftables.render_file, stream=nftables.stream_file),
    Target("ipset", ipset.render_file),
    Target("keepalived", keepalived.render_file, keepalived.holds_secret),
    Target("conntrackd", conntrackd.render_file),
    Target("notify", notify.render_file),
    Target("sysctl", sysctl.render_file),
    Target("systemd", systemd.render_file),
    Target("routes", routes.render_file),
    Target("uplinks", uplinks.render_file),
)})

# When a row's file exists for a member.
CONDITIONS: MappingProxyType[When, Callable[[MemberBuild], bool]] = MappingProxyType({
    When.ALWAYS: lambda build: True,
    When.IPSETS: lambda build: bool(build.optimised()[1]),
    When.SYNC: conntrackd.synced,
    When.ROUTES: routes.has_routes,
    When.UPLINKS: uplinks.has_uplinks,
})


def member_files(build: MemberBuild) -> tuple[GeneratedFile, ...]:
    """The rows of the generated files BUILD's member gets, in table order: a ruleset of
    each family its rules cover (`MemberBuild.families`)."""
    return tuple(f for f in FILES if f.backend in (None, build.backend)
                 and (f.family is None or f.family in build.families)
                 and CONDITIONS[f.when](build))


class Chunks:
    """A file's bytes as its target renders them, read once (by the writer of `fwc
    compile`, so that a large file is never whole in memory); its SHA-256 and size are
    known once it has been read to the end. Each piece is hashed before it is yielded
    (unless the digest is given)."""

    __slots__ = ("_known", "_pieces", "_sha", "size", "_state")

    def __init__(self, pieces: Iterable[bytes], sha256: str | None = None) -> None:
        self._pieces = pieces
        # SHA256: the pieces' digest when the caller knows it already (a patch compile
        # made it while planning, fwc.backend.patch); they are then not hashed again
        self._sha = hashlib.sha256() if sha256 is None else None
        self._known = sha256
        self.size = 0
        self._state = "new"  # new, reading, read

    def __iter__(self) -> Iterator[bytes]:
        if self._state != "new":
            raise RuntimeError("a file's chunks can be read only once")
        self._state = "reading"
        sha = self._sha
        for piece in self._pieces:
            if sha is not None:
                sha.update(piece)
            self.size += len(piece)
            yield piece
        self._pieces = ()
        self._state = "read"

    def sha256(self) -> str:
        if self._state != "read":
            raise RuntimeError("a file's digest is known once it has been read (and hashed)")
        return self._sha.hexdigest() if self._sha is not None else str(self._known)


@dataclass(frozen=True, slots=True)
class Rendered:
    file: GeneratedFile
    content: bytes  # UTF-8 (empty when `chunks` carries it)
    mode: int  # in output/: the row's mode, 0644 for a secret file without a secret
    chunks: Chunks | None = None  # the content in pieces, for a target that streams


def render_member(build: MemberBuild, chunked: bool = False) -> Iterator[Rendered]:
    """Every generated file of BUILD's member, rendered by its target, one at a time.

    A generator so that a caller can write (or hash) each text and let it go before
    the next is rendered: at 100,000 rules one member's files are hundreds of MB.
    CHUNKED: a target that streams (Target.stream) gives its files as `Chunks`, to be
    read before the next file is asked for.
    """
    build.files = member_files(build)
    for file in build.files:
        target = TARGETS[file.target]
        mode = file.output_mode(target.holds_secret(build))
        if chunked and target.stream is not None:
            yield Rendered(file, b"", mode, Chunks(target.stream(build, file)))
            continue
        text = target.render(build, file)
        yield Rendered(file, text if isinstance(text, bytes) else text.encode(), mode)
        del text  # not kept while the next file is rendered
