"""What a policy means: resolved, typed and immutable.

Built by `fwc.frontend.resolve` from the syntax tree; read by checks, lowering and the
analysis engine. Nothing here refers back to syntax nodes except through spans.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterator
from dataclasses import field
from functools import cached_property
from itertools import chain
from types import MappingProxyType
from typing import NamedTuple, TypeVar

from fwc import protocols as proto
from fwc.diagnostics import NO_OPTION_SPANS, OptionSpans, Span
from fwc.model.addresses import AddressSet
from fwc.model.records import dataclass
from fwc.model.vocabulary import Action, Backend, FilterAction, NatAction, NatStage, Verdict
from fwc.text import encode_literal

IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
T = TypeVar("T")


class Memo:
    """What later stages derive from one immutable model value, computed once per run.

    Lives on the value it derives from (see `Cluster.memo`), so one run's results die
    with that run's model: two analyses of the same file in one process never share a
    result, and nothing is keyed by id() (ids are reused once an object is freed).
    """

    __slots__ = ("_values",)

    def __init__(self) -> None:
        self._values: dict[object, object] = {}

    def get(self, key: object, make: Callable[[], T]) -> T:
        if key in self._values:
            return self._values[key]  # type: ignore[return-value]
        value = self._values[key] = make()
        return value

    def drop(self, key: object) -> None:
        """Forget KEY's value (a later `get` computes it again): for large values that
        a stage is done with, so that they do not stay alive to the end of the run."""
        self._values.pop(key, None)

    def drop_kind(self, kind: object) -> None:
        """Forget every value whose key is a tuple starting with KIND (e.g. a check's
        side tables, one per firewall address set, once every check has run)."""
        for key in [k for k in self._values if type(k) is tuple and k and k[0] == kind]:
            del self._values[key]


@dataclass(frozen=True, slots=True)
class AddressObject:
    """A host, network, range or group, flattened to an address set."""

    name: str
    kind: str  # host, network, range, group
    addresses: AddressSet
    members: tuple[str, ...]  # for groups: direct member names or literals as written
    span: Span


class PortRange(NamedTuple):
    low: int
    high: int

    def __str__(self) -> str:
        return str(self.low) if self.low == self.high else f"{self.low}-{self.high}"


# `ServiceMatch.family` by protocol name: ICMP is IPv4's, ICMPv6 IPv6's, and what IPv6
# carries as an extension header (AH) can be matched in IPv4 only. One dict, not one per
# call (fwc.checks.rules reads it as a table on its hot path).
PROTOCOL_FAMILY = MappingProxyType({
    "icmp": 4, "icmpv6": 6,
    **{proto.protocol_name(n): 4 for n in sorted(proto.IPV6_EXTENSION_HEADERS)}})


class ServiceMatch(NamedTuple):
    """One protocol with its ports or ICMP type; empty `ports` means every port.

    NamedTuples (here and PortRange) because a large policy holds tens of thousands.
    """

    protocol: str  # tcp, udp, sctp, dccp, icmp, icmpv6 or another IP protocol name
    number: int  # IP protocol number
    ports: tuple[PortRange, ...] = ()
    icmp_type: int | None = None
    icmp_name: str | None = None
    helper: str | None = None

    @property
    def family(self) -> int | None:
        """4 or 6 for ICMP flavours (4 for IPv6 extension headers such as AH), None when
        the match works in both families."""
        return PROTOCOL_FAMILY.get(self.protocol)

    def __str__(self) -> str:
        if self.ports:
            return f"{self.protocol}/{','.join(str(p) for p in self.ports)}"
        if self.icmp_name is not None:
            return f"{self.protocol}/{self.icmp_name}"
        return self.protocol


@dataclass(frozen=True, slots=True)
class Service:
    name: str
    matches: tuple[ServiceMatch, ...]
    helper: str | None
    span: Span


@dataclass(frozen=True, slots=True)
class EndpointItem:
    """One item of a from/to list, resolved. kind: object, literal, vip, any, firewall."""

    kind: str
    label: str  # as written, without the `!`
    addresses: AddressSet  # empty for any/firewall (they depend on the member)
    negated: bool
    object_name: str | None  # the named object, for ipsets and reports
    # (no span: where it was written is its rule's, `item_span`, so rules that write the
    # same list share one Endpoint)


@dataclass(frozen=True)
class Endpoint:
    """A from/to side: (any | firewall | addresses) minus the negated items."""

    items: tuple[EndpointItem, ...]

    @cached_property
    def is_any(self) -> bool:
        positives = [i for i in self.items if not i.negated]
        return not positives or any(i.kind == "any" for i in positives)

    @cached_property
    def firewall(self) -> bool:
        return any(i.kind == "firewall" and not i.negated for i in self.items)

    @cached_property
    def excludes_firewall(self) -> bool:
        return any(i.kind == "firewall" and i.negated for i in self.items)

    @cached_property
    def addresses(self) -> AddressSet:
        """Positive literal and object addresses (not any, not firewall)."""
        out = AddressSet()
        for item in self.items:
            if not item.negated:
                out = out | item.addresses
        return out

    @cached_property
    def excluded(self) -> AddressSet:
        out = AddressSet()
        for item in self.items:
            if item.negated:
                out = out | item.addresses
        return out

    @property
    def label(self) -> str:
        return ", ".join(("!" if i.negated else "") + i.label for i in self.items)


class Rate(NamedTuple):
    """COUNT/UNIT, as written: `10/second`."""

    count: int
    unit: str  # second, minute, hour, day (protocols.RATE_UNITS)

    def __str__(self) -> str:
        return f"{self.count}/{self.unit}"


@dataclass(frozen=True, slots=True)
class Limit:
    """`limit RATE [burst N] [per-source]` or `syn-limit RATE [burst N]` of a rule."""

    rate: Rate
    burst: int | None = None
    per_source: bool = False

    def __str__(self) -> str:
        burst = f" burst {self.burst}" if self.burst is not None else ""
        return f"{self.rate}{burst}{' per-source' if self.per_source else ''}"


@dataclass(frozen=True, slots=True)
class LogOptions:
    """A rule's `log` parameters; None: the cluster's `log { }` default."""

    level: str | None = None
    rate: Rate | None = None
    burst: int | None = None
    group: int | None = None  # NFLOG group (ulogd) instead of the kernel log

    def text(self) -> str:
        parts = []
        if self.level is not None:
            parts += ["level", self.level]
        if self.rate is not None:
            parts += ["rate", str(self.rate)]
        if self.burst is not None:
            parts += ["burst", str(self.burst)]
        if self.group is not None:
            parts += ["group", str(self.group)]
        return " ".join(parts)


NO_LOG_OPTIONS = LogOptions()


@dataclass(frozen=True, slots=True)
class Logging:
    """The cluster's `log { }`: defaults of every logging rule, and the default drops."""

    level: str = proto.DEFAULT_LOG_LEVEL
    rate: Rate = Rate(int(proto.LOG_RATE.partition("/")[0]), proto.LOG_RATE.partition("/")[2])
    burst: int = proto.LOG_BURST
    group: int | None = None
    drops: bool = False  # log what the default policies drop (or reject)
    drops_prefix: str | None = None
    span: Span | None = None
    option_spans: OptionSpans = NO_OPTION_SPANS

    def span_of(self, key: str) -> Span | None:
        return _option_span(self.option_spans, key, self.span)

    def effective(self, options: LogOptions) -> LogOptions:
        """A rule's log parameters with every unset one taken from these defaults."""
        return LogOptions(options.level or self.level, options.rate or self.rate,
                          options.burst if options.burst is not None else self.burst,
                          options.group if options.group is not None else self.group)


@dataclass(frozen=True, slots=True)
class Defaults:
    """`default { input ... forward ... output ... }`: traffic no rule decides."""

    input: FilterAction = FilterAction.DROP
    forward: FilterAction = FilterAction.DROP
    output: FilterAction = FilterAction.ACCEPT
    span: Span | None = None
    option_spans: OptionSpans = NO_OPTION_SPANS

    def of(self, chain: str) -> FilterAction:
        """The default of a filter chain by its lower-case name (input, forward, output)."""
        return {"input": self.input, "forward": self.forward,
                "output": self.output}.get(chain, FilterAction.ACCEPT)

    def span_of(self, key: str) -> Span | None:
        return _option_span(self.option_spans, key, self.span)


@dataclass(frozen=True, slots=True)
class NatTarget:
    kind: str  # object, literal, vip, range
    label: str
    addresses: AddressSet  # one address per family at most, or a range (kind range)
    port: int | None
    interface: str | None  # the interface whose VIP this is, for `IFACE.vip`
    span: Span
    port_high: int | None = None  # `:LOW-HIGH`: a port range

    def address_text(self, family: int) -> str | None:
        """The target's address(es) of FAMILY as iptables writes them: `A` or `A-B`."""
        intervals = self.addresses.family(family)
        if not intervals:
            return None
        low, high = intervals[0][0], intervals[-1][1]
        make = ipaddress.IPv4Address if family == 4 else ipaddress.IPv6Address
        return str(make(low)) if low == high else f"{make(low)}-{make(high)}"

    @property
    def port_text(self) -> str | None:
        if self.port is None:
            return None
        return str(self.port) if self.port_high is None else f"{self.port}-{self.port_high}"


@dataclass(frozen=True, slots=True)
class BaseRule:
    """What filter and NAT rules share; a rule is a `FilterRule` or a `NatRule`."""

    index: int  # position in its block, 0-based; first match wins
    action: Action
    source: Endpoint
    destination: Endpoint
    services: tuple[ServiceMatch, ...]  # empty: every protocol
    service_labels: tuple[str, ...]
    in_interface: str | None
    out_interface: str | None
    log: bool
    log_prefix: str | None
    only: str | None  # member name for a member-scoped rule
    span: Span
    # The vocabulary of issue 15; keyword-only so that subclasses keep their positions.
    log_options: LogOptions = field(default=NO_LOG_OPTIONS, kw_only=True)
    limit: Limit | None = field(default=None, kw_only=True)  # the rule matches up to a rate
    connlimit: int | None = field(default=None, kw_only=True)  # up to N connections/source
    syn_limit: Limit | None = field(default=None, kw_only=True)  # SYNs beyond it dropped
    reject_with: str | None = field(default=None, kw_only=True)  # protocols.REJECT_TYPES
    notrack: bool = field(default=False, kw_only=True)  # not tracked (raw table)
    option_spans: OptionSpans = field(default=NO_OPTION_SPANS, kw_only=True)

    def span_of(self, key: str) -> Span:
        """Where an option of the rule was written, else the rule."""
        return _option_span(self.option_spans, key, self.span) or self.span

    def item_span(self, side: str, index: int) -> Span:
        """Where item INDEX of the rule's SIDE (`from`, `to`) was written, else the rule."""
        return self.span_of(item_key(side, index))

    @property
    def conditional(self) -> bool:
        """The rule does not match every packet it describes: beyond a rate or connection
        limit the packets go on to the rules after it."""
        return self.limit is not None or self.connlimit is not None

    @property
    def location(self) -> str:
        return f"{self.span.file}:{self.span.line}"

    def text(self) -> str:
        """The rule as the policy language writes it, canonically spaced (no location)."""
        target: NatTarget | None = self.target  # type: ignore[attr-defined]
        parts = [self.action, "from", self.source.label, "to", self.destination.label]
        if self.service_labels:
            parts += ["service", ", ".join(self.service_labels)]
        if self.in_interface:
            parts += ["in", self.in_interface]
        if self.out_interface:
            parts += ["out", self.out_interface]
        if self.log:
            # As the language writes it: `log "say \"hi\""` reads back as the same rule.
            parts.append("log" + (f" {encode_literal(self.log_prefix)}" if self.log_prefix
                                  else ""))
            if self.log_options.text():
                parts.append(self.log_options.text())
        if self.only:
            parts += ["only", self.only]
        if self.reject_with:
            parts += ["with", self.reject_with]
        if self.limit is not None:
            parts += ["limit", str(self.limit)]
        if self.connlimit is not None:
            parts += ["connlimit", str(self.connlimit)]
        if self.syn_limit is not None:
            parts += ["syn-limit", str(self.syn_limit)]
        if self.notrack:
            parts.append("notrack")
        if target is not None:
            targets = [target, *getattr(self, "pool", ())]
            parts += ["->", ", ".join(t.label + (f":{t.port_text}" if t.port is not None
                                                 else "") for t in targets)]
        return " ".join(parts)


@dataclass(frozen=True, slots=True)
class FilterRule(BaseRule):
    """A rule of a `rules` block: accept, drop or reject."""

    action: FilterAction

    @property
    def target(self) -> None:
        """Filter rules translate nothing (NatRule.target's counterpart)."""
        return None


@dataclass(frozen=True, slots=True)
class NatRule(BaseRule):
    """A rule of a `nat` block: snat/dnat (with a target), masquerade or nonat."""

    action: NatAction
    target: NatTarget | None  # set exactly when action.has_target
    # dnat load sharing: the backends after the first (`-> web1, web2, web3`)
    pool: tuple[NatTarget, ...] = field(default=(), kw_only=True)

    @property
    def targets(self) -> tuple[NatTarget, ...]:
        """Every address the rule translates to: the target and the rest of its pool."""
        return () if self.target is None else (self.target, *self.pool)

    def targets_in(self, family: int) -> tuple[NatTarget, ...]:
        """The targets with an address of FAMILY, in order."""
        return tuple(t for t in self.targets if t.addresses.family(family))

    def works_in(self, family: int) -> bool:
        """Whether the rule exists in FAMILY: a snat or dnat whose targets have no address
        of it has no kernel rule there (lowering), so it translates nothing and shadows
        no later NAT rule (the analysis)."""
        return not self.action.has_target or bool(self.targets_in(family))

    @property
    def stages(self) -> tuple[NatStage, ...]:
        return self.action.stages(self.in_interface, self.out_interface)


Rule = FilterRule | NatRule


@dataclass(frozen=True, slots=True)
class Expectation:
    verdict: Verdict
    source: Endpoint
    destination: Endpoint
    services: tuple[ServiceMatch, ...]
    service_labels: tuple[str, ...]
    in_interface: str | None
    span: Span
    # `via M`: the member that handles this traffic in normal operation (FWC286)
    via: str | None = None
    via_span: Span | None = None
    option_spans: OptionSpans = NO_OPTION_SPANS  # its items' (`item_key`)

    def item_span(self, side: str, index: int) -> Span:
        """Where item INDEX of SIDE (`from`, `to`) was written, else the expectation."""
        return _option_span(self.option_spans, item_key(side, index), self.span) or self.span


def item_key(side: str, index: int) -> str:
    """The key of a from/to item's span among its rule's option spans: `from.0`, `to.1`
    (no option is named so). One string per key and run, not one per rule that has it
    (200,000 of them at 100,000 rules were 11 MB)."""
    keys = _ITEM_KEYS.get(side)
    return keys[index] if keys is not None and index < len(keys) else f"{side}.{index}"


_ITEM_KEYS = {side: tuple(f"{side}.{index}" for index in range(64)) for side in ("from", "to")}


def _option_span(spans: OptionSpans, key: str, block: Span | None) -> Span | None:
    """Where an option of a declaration was written, else the declaration itself."""
    found = spans.get(key)
    return block if found is None else found


@dataclass(frozen=True, slots=True)
class Vrrp:
    password: str | None
    password_file: str | None  # path as resolved on the compiling machine
    auth: str | None  # pass, ah or None
    advert_ms: int
    version: int
    preempt: bool
    preempt_delay_s: int | None
    vrid: int | None  # cluster-wide default
    garp_refresh_s: int | None
    span: Span | None
    option_spans: OptionSpans = NO_OPTION_SPANS
    # `unicast`: adverts go to each peer's address on the segment (unicast_peer), not
    # to the VRRP multicast group.
    unicast: bool = False

    def span_of(self, key: str) -> Span | None:
        return _option_span(self.option_spans, key, self.span)

    @property
    def master_down_bound_s(self) -> float:
        """The longest a backup hears no advert it accepts before it takes the VIPs, in
        seconds: three adverts plus a skew below one (the master-down interval). What
        the lab's and the install's waits for keepalived are measured against."""
        return proto.MASTER_DOWN_ADVERTS * self.advert_ms / 1000.0


@dataclass(frozen=True, slots=True)
class Sync:
    link: str | None
    mode: str
    transport: str  # multicast or unicast
    group: ipaddress.IPv4Address
    port: int
    mark_bit: int
    span: Span | None
    option_spans: OptionSpans = NO_OPTION_SPANS
    # `allow SERVICES`: management between the members' sync addresses (ssh, ntp, ...).
    allow: tuple[ServiceMatch, ...] = ()
    allow_labels: tuple[str, ...] = ()
    # conntrackd tuning (docs/language.md "sync { }"); None/empty: conntrackd's defaults.
    backup_link: str | None = None  # a second dedicated link (conntrackd fails over to it)
    backup_port: int | None = None  # its UDP port (default: port + 1)
    commit_timeout_s: int | None = None
    external_cache: bool = True  # `external-cache off`: DisableExternalCache on
    protocols: tuple[str, ...] = ()  # policy names (tcp, udp, ...); empty: every one
    states: tuple[str, ...] = ()  # TCP states replicated; empty: every state
    conntrack_max: int | None = None
    hash_size: int | None = None

    def span_of(self, key: str) -> Span | None:
        return _option_span(self.option_spans, key, self.span)

    @property
    def links(self) -> tuple[str, ...]:
        """The dedicated links, the default one first."""
        return tuple(name for name in (self.link, self.backup_link) if name is not None)

    def port_of(self, link: str) -> int:
        """The UDP port conntrackd uses on LINK (the backup link's own one)."""
        if link == self.backup_link and link != self.link:
            return self.backup_port if self.backup_port is not None else self.port + 1
        return self.port


@dataclass(frozen=True, slots=True)
class Track:
    """One `track { }` item: what else than a dead member moves the VIPs.

    kind: interface (a logical interface: each member's device), ping (an address
    on a segment), process (a process name) or script (a command line). Without a
    weight a failure puts the member in FAULT; with one, the member's priority
    moves by it (a negative weight is subtracted on failure, a positive one added
    while the check is good), as keepalived's track_* weights do.
    """

    kind: str
    target: str
    weight: int | None
    interval_s: int
    fall: int
    rise: int
    span: Span
    option_spans: OptionSpans = NO_OPTION_SPANS

    def span_of(self, key: str) -> Span:
        return _option_span(self.option_spans, key, self.span) or self.span


@dataclass(frozen=True, slots=True)
class NotifyAction:
    """`notify { master "CMD" }`: the admin's command for one state, run by the notify
    script after fwc's own conntrackd steps (state: master, backup or fault)."""

    state: str
    command: str
    span: Span


@dataclass(frozen=True, slots=True)
class VrrpGroup:
    """`vrrp-group NAME { interface A, B  master M }`: active-active VRRP.

    The VIPs of its interfaces are one keepalived sync group of their own, with the
    notify script called for this group; `master` is the member that holds them while
    every member is well (`Cluster.group_priority` orders the members for it).
    Names are as written: the checks (FWC261-FWC269) say what they must refer to.
    """

    name: str
    interfaces: tuple[str, ...]
    master: str | None
    span: Span
    interface_spans: tuple[Span, ...] = ()
    master_span: Span | None = None

    def span_of_interface(self, name: str) -> Span:
        for iface, span in zip(self.interfaces, self.interface_spans, strict=False):
            if iface == name:
                return span
        return self.span


@dataclass(frozen=True, slots=True)
class Interface:
    name: str
    vips: tuple[IPInterface, ...]
    vrid: int | None  # its own or the cluster default; None when no VIP
    span: Span
    vip_spans: tuple[Span, ...] = ()
    # Per VIP, the name `vip NAME ADDR/PREFIX` gives it (None: unnamed); `IFACE.vip.NAME`.
    vip_names: tuple[str | None, ...] = ()
    mss: int | str | None = None  # TCP MSS clamping: a size, or "pmtu" (to the path MTU)
    mss_span: Span | None = None

    def vips_of(self, family: int) -> tuple[IPInterface, ...]:
        return tuple(v for v in self.vips if v.version == family)

    def name_of(self, vip: IPInterface) -> str | None:
        """The name the policy gave VIP, if any."""
        for address, name in zip(self.vips, self.vip_names, strict=False):
            if address == vip:
                return name
        return None

    def named_vip(self, name: str) -> IPInterface | None:
        for address, vip_name in zip(self.vips, self.vip_names, strict=False):
            if vip_name == name:
                return address
        return None

    @property
    def ambiguous_families(self) -> tuple[int, ...]:
        """Families with more than one VIP: `IFACE.vip` cannot stand for one address there."""
        return tuple(f for f in (4, 6) if len(self.vips_of(f)) > 1)


@dataclass(frozen=True, slots=True)
class MemberLink:
    interface: str
    device: str
    addresses: tuple[IPInterface, ...]
    span: Span
    address_spans: tuple[Span, ...] = ()


@dataclass(frozen=True, slots=True)
class Member:
    name: str
    priority: int
    master: bool
    ssh: str | None
    links: tuple[MemberLink, ...]
    span: Span
    priority_span: Span | None = None

    def link(self, interface: str) -> MemberLink | None:
        for link in self.links:
            if link.interface == interface:
                return link
        return None

    def device(self, interface: str) -> str | None:
        link = self.link(interface)
        return link.device if link else None

    def link_on(self, address: IPAddress) -> MemberLink | None:
        """The first link whose subnet holds ADDRESS (a gateway on a segment), if any."""
        return next(iter(self.links_on(address)), None)

    def links_on(self, address: IPAddress) -> tuple[MemberLink, ...]:
        """Every link whose subnet holds ADDRESS: one for a routable address in a sane
        address plan, every link with a link-local address for an IPv6 link-local one."""
        return tuple(link for link in self.links if any(
            address in a.network for a in link.addresses if a.version == address.version))

    @property
    def addresses(self) -> AddressSet:
        return AddressSet.of(*(a.ip for link in self.links for a in link.addresses))


IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class RouteProbe:
    """`route ... probe TARGET [interval D] [fall N] [rise N]`: the uplink monitor's check.

    The member's monitor (fwc-uplinks.sh) pings TARGET through the route's gateway
    every `interval_ms`; after `fall` unanswered probes in a row it removes the
    route (the next route to the destination, with a higher metric, carries the
    traffic), after `rise` answered ones it puts it back (docs/language.md,
    "Uplink failover").
    """

    target: IPAddress
    interval_ms: int
    fall: int
    rise: int
    span: Span

    @property
    def detection_ms(self) -> int:
        """The longest time from the last answer to the route's removal."""
        return self.interval_ms * (self.fall + 1)

    def text(self) -> str:
        return (f"probe {self.target} interval {self.interval_ms}ms fall {self.fall} "
                f"rise {self.rise}")


@dataclass(frozen=True, slots=True)
class Route:
    """`route DEST via GW ...` in a cluster: on every member, or on `only` one.

    `interface` is the logical interface written with `dev`; without it, each
    member reaches the gateway through the interface whose subnet holds it
    (`fwc.model.topology`). `table` None is the main table. `follow` routes are
    keepalived's `virtual_routes`: present only on the current master.
    """

    destination: IPNetwork
    gateway: IPAddress | None
    interface: str | None
    table: int | None
    source: IPAddress | None  # preferred source (`src`), e.g. a VIP
    source_label: str | None  # as written: an address or IFACE.vip
    metric: int | None
    follow: bool
    only: str | None
    span: Span
    probe: RouteProbe | None = None  # the uplink monitor removes the route while it fails

    @property
    def family(self) -> int:
        return self.destination.version

    @property
    def is_default(self) -> bool:
        return self.destination.prefixlen == 0

    def text(self) -> str:
        """The route as the language writes it (canonical spacing, no location)."""
        parts = ["route", "default" if self.is_default else str(self.destination)]
        if self.gateway is not None:
            parts += ["via", str(self.gateway)]
        if self.interface is not None:
            parts += ["dev", self.interface]
        if self.table is not None:
            parts += ["table", str(self.table)]
        if self.source_label is not None:
            parts += ["src", self.source_label]
        if self.metric is not None:
            parts += ["metric", str(self.metric)]
        if self.follow:
            parts += ["follow", "master"]
        if self.only is not None:
            parts += ["only", self.only]
        if self.probe is not None:
            parts.append(self.probe.text())
        return " ".join(parts)


@dataclass(frozen=True, slots=True)
class RouteRule:
    """`route-rule ... table N`: a policy-routing rule (iproute2's `ip rule`).

    Sources and destinations are CIDR networks of one family (empty: any);
    `mark` is (value, mask) of the packet's firewall mark.
    """

    family: int
    sources: tuple[IPNetwork, ...]
    destinations: tuple[IPNetwork, ...]
    in_interface: str | None
    mark: tuple[int, int] | None
    table: int
    priority: int  # iproute2's preference: lower is looked at first
    follow: bool
    only: str | None
    span: Span


@dataclass(frozen=True)
class Cluster:
    """One cluster. Not slotted: what is derived from it (firewall address sets, the
    lowered rulesets) is memoised on the value itself, so that it lives and dies with
    this run's model and never with a process-wide table."""

    name: str
    vrrp: Vrrp
    sync: Sync
    interfaces: tuple[Interface, ...]
    members: tuple[Member, ...]
    rules: tuple[FilterRule, ...]
    nat: tuple[NatRule, ...]
    expectations: tuple[Expectation, ...]
    span: Span
    # The packet filter the rules are written for; `fwc compile --backend` overrides it.
    backend: Backend = Backend.IPTABLES
    tracks: tuple[Track, ...] = ()
    notify_actions: tuple[NotifyAction, ...] = ()
    # `route` and `route-rule` lines (docs/language.md, "Routes"), in source order.
    routes: tuple[Route, ...] = ()
    route_rules: tuple[RouteRule, ...] = ()
    # `vrrp-group` blocks (active-active); empty: one sync group for every VIP.
    groups: tuple[VrrpGroup, ...] = ()
    logging: Logging = Logging()
    defaults: Defaults = Defaults()

    def interface(self, name: str) -> Interface | None:
        for iface in self.interfaces:
            if iface.name == name:
                return iface
        return None

    def member(self, name: str) -> Member | None:
        for member in self.members:
            if member.name == name:
                return member
        return None

    def group_of(self, interface: str) -> VrrpGroup | None:
        """The `vrrp-group` INTERFACE belongs to (the first, if written in two: FWC261)."""
        return next((g for g in self.groups if interface in g.interfaces), None)

    def group_priority(self, group: VrrpGroup | None, member: Member) -> int:
        """MEMBER's VRRP priority in GROUP: the group's master gets the cluster's highest
        priority, the other members follow in their own order with the remaining values
        (so the priorities stay distinct and keep their gaps). No group, or a group
        without a valid master: the member's own priority."""
        if group is None or group.master is None or self.member(group.master) is None:
            return member.priority
        values = sorted((m.priority for m in self.members), reverse=True)
        order = sorted(self.members, key=lambda m: (m.name != group.master, -m.priority))
        return values[[m.name for m in order].index(member.name)]

    def vrrp_order(self, interface: str) -> tuple[Member, ...]:
        """The members in the order they hold INTERFACE's VIPs: the first while every
        member is well (its vrrp-group's master, or the cluster's highest priority),
        the next when that one fails, and so on (VRRP elects the highest priority
        alive). Empty for an interface without VIPs: no VRRP decides who gets its
        traffic."""
        iface = self.interface(interface)
        if iface is None or not iface.vips:
            return ()
        group = self.group_of(interface)
        return tuple(sorted(self.members, key=lambda m: -self.group_priority(group, m)))

    @property
    def vrrp_interfaces(self) -> tuple[Interface, ...]:
        return tuple(i for i in self.interfaces if i.vips)

    @cached_property
    def vips(self) -> AddressSet:
        # Asked per rule by checks (`firewall` endpoints); built from ipaddress objects.
        return AddressSet.of(*(v.ip for i in self.interfaces for v in i.vips))

    @cached_property
    def memo(self) -> Memo:
        """This run's values derived from the cluster (lowered rulesets, check flows)."""
        return Memo()

    def owns(self, member: Member) -> bool:
        """True for one of this cluster's own members (memo keys use member names)."""
        return self.member(member.name) is member

    def firewall_addresses(self, member: Member) -> AddressSet:
        """What `firewall` means on this member: its own addresses plus every VIP."""
        # Memoised: lowering and several checks ask once per rule, and building the set
        # from ipaddress objects each time was a top entry of the 20,000-rule profile.
        if not self.owns(member):
            return member.addresses | self.vips
        return self.memo.get(("firewall", member.name), lambda: member.addresses | self.vips)

    @property
    def all_member_addresses(self) -> AddressSet:
        out = AddressSet()
        for m in self.members:
            out = out | m.addresses
        return out

    @cached_property
    def families(self) -> frozenset[int]:
        """Address families the cluster carries (from interfaces, VIPs and rules)."""
        return frozenset(a.version for m in self.members for link in m.links
                         for a in link.addresses)

    def all_rules(self) -> Iterator[Rule]:
        """The policy rules, then the NAT rules (a chain: walked in C, where a generator
        resumed its frame for every rule, several times per rule in the checks)."""
        return chain(self.rules, self.nat)


@dataclass(frozen=True, slots=True)
class SourceInfo:
    path: str  # as the load named it (diagnostics)
    sha256: str
    # What the generated files call it (MANIFEST, rule comments), when the loader says:
    # fwc.frontend.loader's `_Disk.name`; None: its path relative to the root's directory.
    name: str | None = None


@dataclass(frozen=True, slots=True)
class Policy:
    """A whole program: every file read, every object, every cluster."""

    root: str
    sources: tuple[SourceInfo, ...]
    objects: dict[str, AddressObject]
    services: dict[str, Service]
    clusters: tuple[Cluster, ...]

    def cluster(self, name: str) -> Cluster | None:
        for c in self.clusters:
            if c.name == name:
                return c
        return None
