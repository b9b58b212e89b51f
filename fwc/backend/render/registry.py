"""The render targets, one module each, and which generated files a member gets.

A target turns the backend-neutral input of one member (`MemberBuild`: the
model and the lowered rulesets) into the text of the generated files whose row
in `fwc.backend.files.FILES` names it. Adding a backend (nftables, issue 13) is
one module with a `render_file` function, one entry in TARGETS and its rows in
the table of generated files (with a `When` if it exists only sometimes).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
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


def _never(build: MemberBuild) -> bool:
    return False


@dataclass(frozen=True, slots=True)
class Target:
    name: str
    # The file's text, or its UTF-8 bytes (a large file is built as bytes: never twice).
    render: Callable[[MemberBuild, GeneratedFile], str | bytes]
    # Whether the member's files of this target carry a real secret (they get mode 0600).
    holds_secret: Callable[[MemberBuild], bool] = _never


TARGETS = MappingProxyType({t.name: t for t in (
    Target("iptables", iptables.render_file),
    Target("nftables", nftables.render_file),
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
    When.IPV6: lambda build: 6 in build.families,
    When.IPSETS: lambda build: bool(build.optimised()[1]),
    When.SYNC: conntrackd.synced,
    When.ROUTES: routes.has_routes,
    When.UPLINKS: uplinks.has_uplinks,
})


def member_files(build: MemberBuild) -> tuple[GeneratedFile, ...]:
    """The rows of the generated files BUILD's member gets, in table order."""
    return tuple(f for f in FILES if f.backend in (None, build.backend)
                 and CONDITIONS[f.when](build))


@dataclass(frozen=True, slots=True)
class Rendered:
    file: GeneratedFile
    content: bytes  # UTF-8
    mode: int  # in output/: the row's mode, 0644 for a secret file without a secret


def render_member(build: MemberBuild) -> Iterator[Rendered]:
    """Every generated file of BUILD's member, rendered by its target, one at a time.

    A generator so that a caller can write (or hash) each text and let it go before
    the next is rendered: at 100,000 rules one member's files are hundreds of MB.
    """
    build.files = member_files(build)
    for file in build.files:
        target = TARGETS[file.target]
        text = target.render(build, file)
        yield Rendered(file, text if isinstance(text, bytes) else text.encode(),
                       file.output_mode(target.holds_secret(build)))
        del text  # not kept while the next file is rendered
