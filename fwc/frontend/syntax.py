"""The syntax tree: what was written, with positions, before any meaning.

The small, numerous nodes (words, endpoints, options) are NamedTuples because a
20,000-rule policy builds hundreds of thousands of them.

Produced by `fwc.frontend.parse`, consumed by `fwc.frontend.resolve`. Values are kept as text
so that the resolver can report a malformed address or port at its position.
"""

from __future__ import annotations

import re
from typing import Any, NamedTuple

from fwc.diagnostics import Span
from fwc.model.records import dataclass


class Lexeme(NamedTuple):
    """A token or comment as the lexer read it: terminal, text, offsets and positions.

    Comments are kept on the parsed file for `fwc fmt`; the formatter also asks
    the parser for every token (`PolicyParser(keep_tokens=True)`).
    """

    type: str
    value: str
    start: int
    end: int
    line: int
    column: int
    end_line: int
    end_column: int

    def __str__(self) -> str:
        return self.value


class Word(NamedTuple):
    """A token as written: a name, an address, a number, a string's contents."""

    text: str
    span: Span


class Endpoint(NamedTuple):
    """One item of a from/to list: kind is name, vip, named_vip, address, range, any or
    firewall. A `vip` is IFACE (written IFACE.vip), a `named_vip` is IFACE.vip.NAME."""

    kind: str
    text: str
    negated: bool
    span: Span


class ServiceRef(NamedTuple):
    """A service in a list: kind is spec (tcp/22 written inline) or name."""

    kind: str
    text: str
    span: Span


class Option(NamedTuple):
    """A keyword option of a vrrp/sync block, interface, member or rule."""

    key: str
    value: Word | None
    span: Span


class ServicesOption(NamedTuple):
    """An option whose value is a list of services (`sync { allow ssh, ntp }`)."""

    key: str
    value: Word | None
    span: Span
    services: tuple[ServiceRef, ...]


@dataclass(frozen=True, slots=True)
class TrackDecl:
    """One item of `track { }`: kind is interface, ping, process or script."""

    kind: Word
    target: Word
    options: tuple[Option, ...]
    span: Span

    @property
    def key(self) -> str:  # laid out like a block option by `fwc fmt`
        return "track"


@dataclass(frozen=True, slots=True)
class VrrpGroupDecl:
    """`vrrp-group NAME { interface A, B  master M }` in a cluster (active-active)."""

    name: Word
    interfaces: tuple[Word, ...]
    masters: tuple[Word, ...]  # as written: more than one is an error (FWC263)
    span: Span  # from the keyword to the last word


@dataclass(frozen=True, slots=True)
class Include:
    path: Word
    span: Span
    library: bool = False  # `include <name>`: looked up in the library search path


@dataclass(frozen=True, slots=True)
class AddressDef:
    kind: str  # host, network, range
    name: Word
    values: tuple[Word, ...]
    span: Span


@dataclass(frozen=True, slots=True)
class GroupDef:
    name: Word
    members: tuple[Endpoint, ...]
    span: Span


@dataclass(frozen=True, slots=True)
class ServiceDef:
    name: Word
    items: tuple[ServiceRef, ...]
    helper: Word | None
    span: Span


@dataclass(frozen=True, slots=True)
class InterfaceDecl:
    name: Word
    vips: tuple[Word, ...]
    vrid: Word | None
    span: Span
    vip_names: tuple[Word | None, ...] = ()  # per VIP: `vip NAME ADDR` names it
    mss: Word | None = None  # `mss N` or `mss pmtu`


@dataclass(frozen=True, slots=True)
class MemberLink:
    interface: Word
    device: Word
    addresses: tuple[Word, ...]
    span: Span


@dataclass(frozen=True, slots=True)
class MemberDecl:
    name: Word
    options: tuple[Option, ...]
    links: tuple[MemberLink, ...]
    span: Span


@dataclass(frozen=True, slots=True)
class ClusterDecl:
    name: Word
    vrrp: tuple[Option, ...]
    vrrp_span: Span | None
    sync: tuple[Option, ...]
    sync_span: Span | None
    interfaces: tuple[InterfaceDecl, ...]
    members: tuple[MemberDecl, ...]
    span: Span
    backend: tuple[Option, ...] = ()  # `backend NAME` (given twice: FWC110)
    track: tuple[TrackDecl, ...] = ()
    track_span: Span | None = None
    notify: tuple[Option, ...] = ()  # `notify { master "..." }`: key is the state as written
    notify_span: Span | None = None
    routes: tuple[RouteDecl | RouteRuleDecl, ...] = ()  # `route` and `route-rule` lines
    groups: tuple[VrrpGroupDecl, ...] = ()  # `vrrp-group NAME { ... }`
    log: tuple[Option, ...] = ()  # `log { }`: the cluster's logging defaults
    log_span: Span | None = None
    defaults: tuple[Option, ...] = ()  # `default { }`: the filter chains' defaults
    defaults_span: Span | None = None


@dataclass(frozen=True, slots=True)
class RouteDecl:
    """`route DEST ...`: DEST is `default` or an address; options keyed by their keyword."""

    destination: Word
    options: tuple[Option, ...]  # via, dev, table, src, metric, follow, only
    span: Span


@dataclass(frozen=True, slots=True)
class RouteRuleDecl:
    """`route-rule ...`: a policy-routing rule; from/to carry their address words."""

    sources: tuple[Word, ...]
    destinations: tuple[Word, ...]
    options: tuple[Option, ...]  # in, mark, table, priority, follow, only
    span: Span


@dataclass(frozen=True, slots=True)
class NatTargetDecl:
    kind: str  # name, vip (IFACE), named_vip (IFACE.vip.NAME), address
    kind: str  # name, vip, address, range
    text: str
    port: Word | None
    span: Span
    port_high: Word | None = None  # `:LOW-HIGH`


@dataclass(frozen=True, slots=True)
class RuleDecl:
    action: Word  # accept/drop/reject, or snat/dnat/masquerade/nonat in a nat block
    sources: tuple[Endpoint, ...]
    destinations: tuple[Endpoint, ...]
    options: tuple[Option, ...]
    services: tuple[ServiceRef, ...]
    target: NatTargetDecl | None
    span: Span
    pool: tuple[NatTargetDecl, ...] = ()  # dnat to several backends: the ones after `target`


class RuleLine(NamedTuple):
    """A plain rule line of a `policy` block, kept as the fast path matched it: the resolver
    reads it straight into the model (`fwc.frontend.resolve.Resolver.line_rule`) without a
    RuleDecl and its words, options and spans in between.

    Only in a program loaded with `lines=True` (`fwc.frontend.loader.load`), for a caller
    that drops the syntax trees once the model is resolved (`fwc check`, `fwc compile`).
    `decl()` is the RuleDecl the fast path makes of the same line (the resolver's way for
    anything it does not take as it is: every diagnostic comes from there).
    """

    reader: Any  # the fwc.frontend.fastpath.FastPath of its file (path, word caches)
    number: int  # 1-based line number
    match: re.Match[str]  # fwc.frontend.fastpath.PLAIN_RULE over the whole line
    parts: tuple[str | None, ...]  # match.groups(), as the parser read them

    @property
    def span(self) -> Span:
        start, end = self.match.span(1)
        return Span(self.reader.path, self.number, start + 1, self.number, end + 1)

    def decl(self) -> RuleDecl:
        got = self.reader.rule(self.match.string, self.number)
        if got is None:  # PLAIN_RULE reads a subset of what the fast path reads
            raise AssertionError(f"line {self.number}: a plain rule line the fast path refuses")
        return got


@dataclass(frozen=True, slots=True)
class BlockDecl:
    """A `policy`, `nat` or `expect` block; `name` names the cluster it applies to.
    RULES holds RuleLine records only in a program loaded with `lines=True`."""

    kind: str
    name: Word
    rules: tuple[RuleDecl | RuleLine, ...]
    span: Span


Statement = Include | AddressDef | GroupDef | ServiceDef | ClusterDecl | BlockDecl


@dataclass(frozen=True, slots=True)
class SourceFile:
    path: str
    text: str
    statements: tuple[Statement, ...]
    comments: tuple[Lexeme, ...] = ()  # in order; the parser skips them, `fwc fmt` keeps them
