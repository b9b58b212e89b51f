"""The syntax tree: what was written, with positions, before any meaning.

The small, numerous nodes (words, endpoints, options) are NamedTuples because a
20,000-rule policy builds hundreds of thousands of them.

Produced by `fwc.frontend.parse`, consumed by `fwc.frontend.resolve`. Values are kept as text
so that the resolver can report a malformed address or port at its position.
"""

from __future__ import annotations

from typing import NamedTuple

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


@dataclass(frozen=True, slots=True)
class BlockDecl:
    """A `policy`, `nat` or `expect` block; `name` names the cluster it applies to."""

    kind: str
    name: Word
    rules: tuple[RuleDecl, ...]
    span: Span


Statement = Include | AddressDef | GroupDef | ServiceDef | ClusterDecl | BlockDecl


@dataclass(frozen=True, slots=True)
class SourceFile:
    path: str
    text: str
    statements: tuple[Statement, ...]
    comments: tuple[Lexeme, ...] = ()  # in order; the parser skips them, `fwc fmt` keeps them
