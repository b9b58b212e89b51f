"""Lowering: (cluster, member, family) -> NodeRuleset.

Chain placement (docs/compile.md): the part of a rule whose destination is the
firewall (the member's own addresses plus every VIP) goes to INPUT, the part
whose source is the firewall goes to OUTPUT, the rest (any or non-firewall
addresses on both sides) goes to FORWARD. `any` never implies the firewall.
What a side names is `fwc.model.semantics.side_of`, shared with the checks and the
analysis engine.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
from array import array
from collections.abc import Iterable, Iterator
from dataclasses import field, fields, replace
from typing import NamedTuple

from fwc import protocols as proto
from fwc.backend.lower.ruleset import (
    ANY,
    AddressMatch,
    Chain,
    ChainName,
    ConnLimit,
    FilterRule,
    HashLimit,
    JumpTarget,
    Match,
    NatRule,
    NodeRuleset,
    Origin,
    RateLimit,
    Rule,
    Table,
    with_limit,
)
from fwc.model import (
    NO_LOG_OPTIONS,
    BaseRule,
    Cluster,
    Endpoint,
    IPAddress,
    Limit,
    Logging,
    LogOptions,
    Member,
    NatTarget,
    Policy,
    PortRange,
    ServiceMatch,
    Sync,
)
from fwc.model import FilterRule as PolicyFilterRule
from fwc.model import NatRule as PolicyNatRule
from fwc.model.addresses import AddressSet
from fwc.model.numbering import ServiceNumbers
from fwc.model.records import dataclass, maker
from fwc.model.semantics import (
    Reach,
    Side,
    filter_chains,
    firewall_left_out,
    firewall_traffic_side,
    nat_reaches,
    reach,
    reads_firewall,
    side_of,
)
from fwc.model.uplinks import uplinks
from fwc.model.vocabulary import BuiltinChain, FilterAction, NatAction, NatStage, Target
from fwc.model.vocabulary import Table as TableName
from fwc.text import cut_utf8, utf8_length

MARK_ACCEPT_CHAIN = "fwc-accept"
_EMPTY = AddressSet()
FILTER_POLICIES = ((BuiltinChain.INPUT, Target.DROP), (BuiltinChain.FORWARD, Target.DROP),
                   (BuiltinChain.OUTPUT, Target.ACCEPT))
NAT_CHAINS = (BuiltinChain.PREROUTING, BuiltinChain.INPUT, BuiltinChain.OUTPUT,
              BuiltinChain.POSTROUTING)
RAW_CHAINS = (BuiltinChain.PREROUTING, BuiltinChain.OUTPUT)
MANGLE_CHAINS = (BuiltinChain.PREROUTING, BuiltinChain.INPUT, BuiltinChain.FORWARD,
                 BuiltinChain.OUTPUT, BuiltinChain.POSTROUTING)
# The filter chains by the name the model's defaults use.
DEFAULT_OF = {BuiltinChain.INPUT: "input", BuiltinChain.FORWARD: "forward",
              BuiltinChain.OUTPUT: "output"}
TCP_SYN = ("FIN,SYN,RST,ACK", "SYN")  # a TCP packet that opens a connection
MSS_SYN = ("SYN,RST", "SYN")  # the SYN and SYN/ACK whose MSS option is clamped
IGMP = proto.IP_PROTOCOLS["igmp"]
TCP = proto.IP_PROTOCOLS["tcp"]
UDP = proto.IP_PROTOCOLS["udp"]
ICMPV6 = proto.IP_PROTOCOLS["icmpv6"]
ICMP = proto.IP_PROTOCOLS["icmp"]
# The echo request of the member's own health pings (`track { ping }`, `route ... probe`).
ECHO_REQUEST = {4: (ICMP, proto.ICMP_TYPES["echo-request"]),
                6: (ICMPV6, proto.ICMPV6_TYPES["echo-request"])}
# An MLD query (protocols.py): a node that drops it is left out of every group it joined
# (the VRRP group, its addresses' and the VIPs' solicited-node groups) by a snooping
# switch once the membership times out, and then hears no advert and no solicitation.
MLD_QUERY = Match(source=AddressMatch((proto.IPV6_LINK_LOCAL,)), protocol=ICMPV6,
                  icmp_type=proto.MLD_QUERY_ICMPV6_TYPE, hop_limit=proto.MLD_HOP_LIMIT)
# The node's MLD reports and done messages (always with hop limit 1), its answers to
# those queries: what a filtered OUTPUT, and the failsafe's, let out of every device.
MLD_REPORTS = tuple(Match(protocol=ICMPV6, icmp_type=icmp_type, hop_limit=proto.MLD_HOP_LIMIT)
                    for icmp_type in proto.MLD_REPORT_ICMPV6_TYPES)
# Multicast destinations: a packet to a group the node joined is taken in (INPUT).
MULTICAST = {4: ipaddress.ip_network("224.0.0.0/4"), 6: ipaddress.ip_network("ff00::/8")}


def relative_source(path: str, root: str) -> str:
    """PATH as the generated files name it, relative to ROOT (the root policy's directory):
    the same wherever the repository is and whichever the working directory. A name of
    fwc's library (`<std/services.fw>`) stays as it is."""
    if path.startswith("<"):
        return path
    return os.path.relpath(os.path.abspath(path), os.path.abspath(root))


@dataclass(frozen=True, slots=True)
class LowerOptions:
    """How the generated files (rule comments, MANIFEST) name the policy's files.

    names: (path as loaded, name) of the files the loader named (`SourceInfo.name`: the
    same from every working directory); any other file is named relative to
    source_root, the root policy's directory (a policy read through git).
    """

    source_root: str = "."
    names: tuple[tuple[str, str], ...] = ()

    def source_name(self, file: str) -> str:
        for path, name in self.names:
            if path == file:
                return name
        return relative_source(file, self.source_root)


def options_for(policy: Policy) -> LowerOptions:
    """How POLICY's files are named in its generated files."""
    return LowerOptions(os.path.dirname(policy.root) or ".",
                        tuple((s.path, s.name) for s in policy.sources if s.name is not None))


def source_label(file: str, line: int, options: LowerOptions) -> str:
    """`edge.fw:42`: the comment naming a rule's line (LowerOptions.source_name)."""
    return f"{options.source_name(file)}:{line}"


def log_prefix(rule: BaseRule, nflog: bool = False) -> tuple[str, bool]:
    """The LOG (NFLOG) prefix for a rule and whether the user's text had to be cut."""
    text = f"{rule.log_prefix} " if rule.log_prefix is not None \
        else f"fwc {rule.action.upper()} "
    return cut_prefix(text, proto.NFLOG_PREFIX_MAX if nflog else proto.LOG_PREFIX_MAX)


def cut_prefix(text: str, limit: int) -> tuple[str, bool]:
    """TEXT (ending in a space) within LIMIT bytes, and whether the text itself was cut."""
    if utf8_length(text) <= limit:
        return text, False
    # Only the user's own text can be too long; the trailing space goes first. The
    # kernel counts bytes: the cut never splits a UTF-8 character.
    return cut_utf8(text, limit), utf8_length(text.rstrip()) > limit


def drops_prefix(logging: Logging, chain: str) -> tuple[str, bool]:
    """The prefix of the default drop's log line in CHAIN, and whether it was cut."""
    text = f"{logging.drops_prefix} " if logging.drops_prefix is not None \
        else f"fwc {chain} default "
    nflog = logging.group is not None
    return cut_prefix(text, proto.NFLOG_PREFIX_MAX if nflog else proto.LOG_PREFIX_MAX)


def auto_label(label: str) -> str:
    """The comment of an automatic rule (`fwc auto: vrrp eth0`). The labels made of the
    policy's names (`mss_label`, `sync_allow_label`) are counted by FWC116, so that no
    such comment is over iptables' limit."""
    return f"fwc auto: {label}"


def mss_label(interface: str) -> str:
    """The label of INTERFACE's MSS clamping rules."""
    return f"mss {interface}"


def sync_allow_label(sync: Sync) -> str:
    """The label of the rules of `sync { allow ... }`: the services as written."""
    return f"sync allow {', '.join(sync.allow_labels)}"


def burst_of(limit: Limit) -> int:
    """A limit's burst as the kernel gets it (iptables' default when none is written)."""
    return limit.burst if limit.burst is not None else proto.LIMIT_BURST_DEFAULT


def plain_verdict(rule: BaseRule) -> bool:
    """Whether RULE's lines are its verdict alone, one per service and address pair: no
    notrack, log, SYN limit, rate or connection limit, or reject answer. The shortcuts of
    `_Lowering.rule_lowering` and `emit` make such a rule's lines without `final`; a new
    rule option that `final` handles must make this false (tests/test_lower_shared.py
    lowers every example with and without the shortcuts)."""
    return type(rule) is PolicyFilterRule and not rule.notrack and not rule.log \
        and rule.syn_limit is None and rule.limit is None and rule.connlimit is None \
        and rule.action is not FilterAction.REJECT


def plain_reject(rule: BaseRule) -> bool:
    """Whether RULE is a reject whose lines are its verdict alone once every service line
    names its protocol: as `plain_verdict` but for the action (`final` adds a TCP reset line
    only to a line without a protocol). The verdict's options follow each line's protocol
    (`_Lowering.action`). tests/test_lower_shared.py lowers every example with and without
    this shortcut too."""
    return type(rule) is PolicyFilterRule and rule.action is FilterAction.REJECT \
        and not rule.notrack and not rule.log and rule.syn_limit is None \
        and rule.limit is None and rule.connlimit is None


def hashlimit_name(kind: str, rule: BaseRule, limit: Limit, per_source: bool) -> str:
    """The kernel's name of a rule's rate bucket: one per rule, shared by its lines, and
    new whenever its rate, burst or mode changes. iptables keeps a hashlimit table while
    any rule names it, with the rate, burst and mode it was made with: a reload's rule of
    the same name takes the running rule's table (iptables-restore checks the new rules
    while the old ones still hold it), so a changed limit, or another rule's limit after
    an inserted rule moved the numbers, would keep the old one until the next boot. nft
    replaces its named limits with the table, so both backends take the same names."""
    base = f"fwc-{kind}{rule.index + 1}"
    room = proto.HASHLIMIT_NAME_MAX - len(base) - 1
    if room < 1:
        return base[:proto.HASHLIMIT_NAME_MAX]
    config = f"{limit.rate} {burst_of(limit)} {'srcip' if per_source else 'all'}"
    return f"{base}-{hashlib.sha256(config.encode()).hexdigest()[:min(4, room)]}"


def mark_value(bit: int) -> str:
    """value/mask for CONNMARK, written the way iptables-save prints it (no padding)."""
    value = f"{1 << bit:#x}"
    return f"{value}/{value}"


# -- endpoints ------------------------------------------------------------------------------

def addresses_match(addresses: AddressSet, family: int) -> AddressMatch:
    if addresses.is_everything(family):
        return ANY
    return AddressMatch(addresses.cidr_tuple(family))


@dataclass(frozen=True, slots=True)
class Part:
    """A rule's share of one chain: bounded address sets, or any minus exclusions."""

    chain: ChainName
    source: AddressMatch
    destination: AddressMatch
    source_excluded: AddressSet
    destination_excluded: AddressSet


def _bounded(side: Side, addresses: AddressSet, family: int) \
        -> tuple[AddressMatch, AddressSet]:
    """A side as (match, exclusions left for a RETURN chain); only for a side whose
    `reach` says it is not empty there (`filter_chains`, `nat_reaches`)."""
    if side.unbounded:
        return ANY, side.excluded
    return addresses_match(addresses, family), side.excluded & addresses


def may_apply(endpoint: Endpoint, family: int) -> bool:
    """Cheap test first: a side that names only addresses of the other family matches nothing.

    (`Endpoint.is_any or .firewall or .addresses.family(family)`, item by item: those
    cached properties cost more to make than this loop, once per rule.)
    """
    positive = False
    for item in endpoint.items:
        if item.negated:
            continue
        if item.kind == "any" or item.kind == "firewall" or item.addresses.family(family):
            return True
        positive = True
    return not positive


def firewall_match(addresses: AddressSet, family: int, order: tuple[IPAddress, ...]) \
        -> AddressMatch:
    """Firewall addresses one by one, in a member-independent order (own, then VIPs).

    Aggregating them would merge a VIP with a neighbouring node address into one
    CIDR on one member but not on the other: the files would differ in shape.
    """
    if not order:
        return addresses_match(addresses, family)
    return AddressMatch(tuple(str(a) for a in order if addresses.contains_address(a)))


def firewall_order(cluster: Cluster, member: Member, family: int) -> tuple[IPAddress, ...]:
    own = [a.ip for link in member.links for a in link.addresses if a.version == family]
    vips = [v.ip for iface in cluster.interfaces for v in iface.vips if v.version == family]
    return tuple(dict.fromkeys(own + vips))


@dataclass(frozen=True, slots=True)
class SideParts:
    """What a filter rule's parts take from one side (for one firewall set, family and
    address order): made once per distinct side (`_SideKey`), not once per
    rule. Each share is there only when `reach` says the side fills its chains."""

    applies: bool  # `may_apply`: false, and nothing below is known
    reach: Reach
    named: tuple[AddressMatch, AddressSet] | None  # `_bounded` of the named part: INPUT/OUTPUT
    other: tuple[AddressMatch, AddressSet] | None  # `_bounded` of the other part: FORWARD
    firewall: AddressMatch | None  # `firewall_match` of the firewall part
    # The match of `named` / `other` when that share has no exclusions, else None: what
    # the usual rule's direct path takes (`_Lowering.rule_lowering`), known per side.
    named_exact: AddressMatch | None = None
    other_exact: AddressMatch | None = None


_NOT_HERE = SideParts(False, Reach(False, False, False), None, None, None)


def side_parts(endpoint: Endpoint, fw: AddressSet, family: int,
               order: tuple[IPAddress, ...] = ()) -> SideParts:
    if not may_apply(endpoint, family):
        return _NOT_HERE
    side = side_of(endpoint, fw, family)
    reached = reach(side)
    named = _bounded(side, side.named, family) if reached.named else None
    other = _bounded(side, side.other, family) if reached.other else None
    return SideParts(True, reached, named, other,
                     firewall_match(side.firewall, family, order) if reached.firewall
                     else None,
                     named[0] if named is not None and not named[1] else None,
                     other[0] if other is not None and not other[1] else None)


def parts_of(src: SideParts, dst: SideParts, in_interface: bool, out_interface: bool) \
        -> list[Part]:
    """A filter rule's parts from its two sides (`filter_parts`)."""
    if not (src.applies and dst.applies):
        return []
    to_fw, from_fw, through = filter_chains(src.reach, dst.reach, in_interface, out_interface)
    parts: list[Part] = []
    # INPUT: to the firewall; a packet for the node has no output device.
    if to_fw:
        got = src.named
        assert got is not None and dst.firewall is not None
        parts.append(Part(BuiltinChain.INPUT, got[0], dst.firewall, got[1], _EMPTY))
    # OUTPUT: from the firewall; a packet the node sends has no input device.
    if from_fw:
        got = dst.named
        assert got is not None and src.firewall is not None
        parts.append(Part(BuiltinChain.OUTPUT, src.firewall, got[0], _EMPTY, got[1]))
    # FORWARD: through the firewall.
    if through:
        s, d = src.other, dst.other
        assert s is not None and d is not None
        parts.append(Part(BuiltinChain.FORWARD, s[0], d[0], s[1], d[1]))
    return parts


def filter_parts(rule: PolicyFilterRule, fw: AddressSet, family: int,
                 order: tuple[IPAddress, ...] = ()) -> list[Part]:
    return parts_of(side_parts(rule.source, fw, family, order),
                    side_parts(rule.destination, fw, family, order),
                    rule.in_interface is not None, rule.out_interface is not None)


def nat_part(rule: PolicyNatRule, fw: AddressSet, family: int, chain: ChainName) \
        -> Part | None:
    if not (may_apply(rule.source, family) and may_apply(rule.destination, family)):
        return None
    src = side_of(rule.source, fw, family)
    dst = side_of(rule.destination, fw, family)
    if not nat_reaches(reach(src), reach(dst)):
        return None
    s = _bounded(src, src.named, family)
    d = _bounded(dst, dst.named, family)
    return Part(chain, s[0], d[0], s[1], d[1])


# A rule line's Match, built without `__init__` (`records.maker`, every field in order):
# `_MATCH(source, destination, in_device, out_device, protocol, dports, icmp_type,
# *_LINE_REST)`, the defaults of the other fields.
_MATCH = maker(Match)
_LINE_REST = tuple(f.default for f in fields(Match)[7:])

# A protocol not seen yet in `service_matches` (whose merge holds None or a non-empty tuple)
_UNSEEN: tuple[PortRange, ...] = ()


def service_matches(services: Iterable[ServiceMatch], family: int) -> list[Match] | None:
    """One Match per service of this family; [Match()] for every protocol; None: none here."""
    services = tuple(services)
    if not services:
        return [Match()]
    if len(services) == 1:  # the usual list: nothing to merge (as below, positionally)
        [one] = services
        if one.family not in (None, family):
            return None
        return [_MATCH(ANY, ANY, None, None, one.number, tuple(one.ports), one.icmp_type,
                       *_LINE_REST)]
    # Services of one rule share its verdict, so the ports of one protocol can be merged
    # into one (multiport) match; a protocol named without ports means all of its ports.
    merged: dict[tuple[int, int | None], tuple[PortRange, ...] | None] = {}
    for s in services:
        if s.family not in (None, family):
            continue
        key = (s.number, s.icmp_type)
        got = merged.get(key, _UNSEEN)
        if got is _UNSEEN:
            merged[key] = tuple(s.ports) if s.ports else None
        elif got is not None:
            # (a PortRange is the tuple (low, high): sorted in C, without a key call each)
            merged[key] = tuple(sorted({*got, *s.ports})) if s.ports else None
    out = [_MATCH(ANY, ANY, None, None, number, ports or (), icmp_type, *_LINE_REST)
           for (number, icmp_type), ports in merged.items()]
    return out or None


# -- the builder ---------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class AutoRule:
    """An automatic filter rule that can decide the first packet of a connection.

    What `fwc query`, `expect` and `fwc diff` model of the HA plumbing (VRRP, AH,
    conntrackd sync, IGMP, NDP): the same rules the compiled INPUT and OUTPUT
    chains start with, read from the lowering (`automatic_rules`), never restated.
    """

    chain: str  # input or output
    match: Match
    verdict: FilterAction
    label: str  # the rule's comment, e.g. "fwc auto: conntrackd sync eth2"
    multicast: bool  # every destination is a multicast group the node takes in


_VERDICTS = {Target.ACCEPT: FilterAction.ACCEPT, Target.DROP: FilterAction.DROP,
             Target.REJECT: FilterAction.REJECT}


def health_pings(cluster: Cluster, member: Member, family: int) \
        -> Iterator[tuple[IPAddress, str, str]]:
    """(target, device, label) of each ping MEMBER sends to judge a gateway in FAMILY:
    keepalived's `track { ping }` (from the device of the segment holding the target,
    as `ping -I` in keepalived.conf) and the uplink monitor's probes (by the probed
    route's device). A target with no device (FWC240, FWC255) stops the compile."""
    for track in cluster.tracks:
        if track.kind != "ping":
            continue
        address = ipaddress.ip_address(track.target)
        link = member.link_on(address) if address.version == family else None
        if link is not None:
            yield address, link.device, "track ping"
    for uplink in uplinks(cluster, member):
        device = member.device(uplink.interface)
        probe = uplink.route.probe
        if probe is not None and device is not None and uplink.route.family == family:
            yield probe.target, device, "uplink probe"


def automatic_rules(cluster: Cluster, member: Member, family: int) -> tuple[AutoRule, ...]:
    """The member's automatic INPUT/OUTPUT rules that a NEW packet can meet, in order.

    Left out: loopback (the analysis' `local` chain), and the stateful core, which
    decides only established, invalid and SYN-less packets. The NDP rules also
    require hop limit 255, which the analysis' packets do not carry: every genuine
    neighbour discovery packet has it.
    """
    lowering = _Lowering(cluster, member, family, LowerOptions())
    lowering.automatic_rules()
    out: list[AutoRule] = []
    for chain, name in ((BuiltinChain.INPUT, "input"), (BuiltinChain.OUTPUT, "output")):
        for rule in lowering.tables.filter[chain]:
            match = rule.match
            verdict = _VERDICTS.get(rule.target)  # type: ignore[call-overload]
            if verdict is None or "lo" in (match.in_device, match.out_device):
                continue
            if match.tcp_not_syn or (match.ctstate and "NEW" not in match.ctstate):
                continue
            groups = match.destination.cidrs
            multicast = bool(groups) and all(
                ipaddress.ip_network(c).subnet_of(MULTICAST[family])  # type: ignore[arg-type]
                for c in groups)
            out.append(AutoRule(name, match, verdict, rule.origin.label, multicast))
    return tuple(out)


@dataclass
class _Tables:
    filter: dict[ChainName, list[Rule]] = field(
        default_factory=lambda: {name: [] for name, _ in FILTER_POLICIES})
    nat: dict[ChainName, list[Rule]] = field(default_factory=lambda: {n: [] for n in NAT_CHAINS})
    raw: dict[ChainName, list[Rule]] = field(default_factory=lambda: {n: [] for n in RAW_CHAINS})
    raw_seen: set[tuple[ChainName, Match, str]] = field(default_factory=set)
    raw_user: dict[ChainName, list[Rule]] = field(default_factory=dict)
    filter_user: dict[ChainName, list[Rule]] = field(default_factory=dict)
    nat_user: dict[ChainName, list[Rule]] = field(default_factory=dict)


# What one policy rule adds to the tables of a member, as (table attribute of _Tables,
# ((chain, lines), ...)), in the order the lowering made them.
Appends = tuple[tuple[str, tuple[tuple[ChainName, tuple[Rule, ...]], ...]], ...]


@dataclass(frozen=True, slots=True)
class RuleLowering:
    """A policy rule's lowering on one member: its origin, the chains of its parts (the
    conntrack helpers depend on them) and the lines it adds."""

    origin: Origin
    chains: frozenset[ChainName]
    appends: Appends
    helpers: bool = False  # an accept with a conntrack helper (raw lines per member)


_ANY_MATCH = Match()
# Built without `__init__` (`records.maker`): one of each per policy rule lowered.
_ORIGIN = maker(Origin)
_RULE_LOWERING = maker(RuleLowering)
_ONE_CHAIN = {chain: frozenset((chain,)) for chain in BuiltinChain}  # RuleLowering.chains
_NOTHING = RuleLowering(Origin("policy", ""), frozenset(), ())  # a rule with no line here


class _SideKey:
    """A side as `RuleKeys` numbers it: each item's kind, negation, label and addresses.

    What the lowering reads of a side is its items' kind, negation and addresses
    (as `fwc.checks.sides.endpoint_key` reads it for the checks); the label only splits
    equal sides written differently.
    Hashed by kind, negation and label: hashing a group's few hundred intervals per rule
    cost more than the lookups it serves. Equal keys mostly share their AddressSet
    objects (an object's addresses are resolved once), so comparing them is quick too.
    """

    __slots__ = ("_hash", "items")

    def __init__(self, endpoint: Endpoint) -> None:
        items = endpoint.items
        if len(items) == 1:  # the usual side: its item's fields (never equal to a tuple of them)
            one = items[0]
            self.items: tuple[object, ...] = (one.kind, one.negated, one.label, one.addresses)
            self._hash = hash((one.kind, one.negated, one.label))
        else:
            self.items = tuple([(i.kind, i.negated, i.label, i.addresses) for i in items])
            self._hash = hash(tuple([(i.kind, i.negated, i.label) for i in items]))

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _SideKey) and self.items == other.items


class RuleNumbers(NamedTuple):
    """RuleKeys' numbers of the rules, by position in cluster.rules."""

    source: array[int]
    destination: array[int]
    services: array[int]


class RuleKeys:
    """Each policy rule's sides and service list as small numbers, the same for every
    member and family: equal sides (`_SideKey`) and equal service lists get one number,
    so what the lowering derives from them is made once per number and then found by
    index, not hashed again per rule, member and family. On the cluster's per-run Memo."""

    __slots__ = ("helped", "interfaces", "rules", "services", "sides")

    def __init__(self, cluster: Cluster) -> None:
        # every interface a rule names (`in`, `out`), sorted: the devices a member's rules
        # depend on (`Replay`), the same in both families
        self.interfaces = sorted({name for rule in cluster.rules
                                  for name in (rule.in_interface, rule.out_interface)
                                  if name is not None})
        side_numbers: dict[_SideKey, int] = {}  # sides of several items
        # Sides of one item (nearly all): by its kind, negation and label (strings keep
        # their hash; no key object per side), then its addresses, compared as `_SideKey`
        # compares them (mostly the same object). The numbers are `_SideKey`'s: a side of
        # one item never equals one of several, and each number is given at first sight.
        singles: dict[tuple[str, bool, str], list[tuple[AddressSet, int]]] = {}
        service_numbers = ServiceNumbers()
        self.sides: list[Endpoint] = []  # one endpoint of each number
        self.services: list[tuple[ServiceMatch, ...]] = service_numbers.lists
        # by services number: a service of the list names a conntrack helper
        self.helped: list[bool] = []
        # by position in cluster.rules: (source number, destination number, services number),
        # as three arrays of machine integers (a tuple per rule cost 12 MB at 100,000 rules)
        self.rules = RuleNumbers(array("l"), array("l"), array("l"))
        sides = self.sides
        for rule in cluster.rules:
            numbers = []
            for endpoint in (rule.source, rule.destination):
                items = endpoint.items
                if len(items) == 1:
                    one = items[0]
                    addresses = one.addresses
                    label = (one.kind, one.negated, one.label)
                    known = singles.get(label)
                    if known is None:
                        known = singles[label] = []
                    number = -1
                    for seen, seen_number in known:
                        if seen is addresses or seen == addresses:
                            number = seen_number
                            break
                    if number < 0:
                        number = len(sides)
                        sides.append(endpoint)
                        known.append((addresses, number))
                else:
                    key = _SideKey(endpoint)
                    number = side_numbers.get(key)  # type: ignore[assignment]
                    if number is None:
                        number = side_numbers[key] = len(sides)
                        sides.append(endpoint)
                numbers.append(number)
            number = service_numbers.number(rule)
            if number == len(self.helped):  # a list not seen before
                self.helped.append(any(s.helper is not None for s in rule.services))
            self.rules.source.append(numbers[0])
            self.rules.destination.append(numbers[1])
            self.rules.services.append(number)


def rule_keys(cluster: Cluster) -> RuleKeys:
    return cluster.memo.get(("lower-keys",), lambda: RuleKeys(cluster))


def present_rules(keys: RuleKeys, family: int) -> list[int]:
    """The positions of the rules both of whose sides may name addresses of FAMILY
    (`may_apply`, once per side number): the others have no line in it on any member
    (`side_parts` is `_NOT_HERE`, so `rule_lowering` gives `_NOTHING`). Most rules of a
    policy name one family only: the lowering of the other skips them without a call."""
    applies = [may_apply(endpoint, family) for endpoint in keys.sides]
    return [position for position, (source, destination)
            in enumerate(zip(keys.rules.source, keys.rules.destination, strict=True))
            if applies[source] and applies[destination]]


class _Unknown:
    """Not computed yet (None is an answer: a service list with nothing in this family)."""


_UNKNOWN = _Unknown()


class SharedLowering:
    """Rule lowerings that are the same on several members of a cluster, per family.

    Most rules name no firewall address (`semantics.reads_firewall` is false for both
    sides against the union of all members' firewall addresses): their lowering then
    depends on the member only through the devices of its `in`/`out` interfaces, so it
    is made once per (rule, devices) and reused, the *same* Rule objects, by every
    other member (the parity check and renderers compare them by identity first).
    Lives on the cluster's per-run Memo, one per (family, options).
    """

    __slots__ = ("interfaces", "keys", "lowered", "nothing", "per_member", "present", "reads",
                 "replays", "services", "sides")

    def __init__(self, cluster: Cluster, family: int, keys: RuleKeys | None = None) -> None:
        self.keys = keys if keys is not None else RuleKeys(cluster)
        firewalls = AddressSet.union(
            cluster.firewall_addresses(m) for m in cluster.members).only(family)
        # by side number: the side names a firewall address of some member
        self.reads = reads = [reads_firewall(endpoint, firewalls, family)
                              for endpoint in self.keys.sides]
        # by position in cluster.rules: the rule reads a member's firewall addresses
        self.per_member = [reads[source] or reads[destination]
                           for source, destination in zip(self.keys.rules.source,
                                                          self.keys.rules.destination,
                                                          strict=True)]
        self.present = present_rules(self.keys, family)  # the rules that may have lines
        # every interface a rule names, and per member devices of them: Replay
        self.interfaces = self.keys.interfaces
        self.replays: dict[tuple[str | None, ...], Replay] = {}
        # (position, in device, out device) -> the rule's lowering on such members
        self.lowered: dict[tuple[int, str | None, str | None], RuleLowering] = {}
        # by position: the rule has no line in this family on any member (found once)
        self.nothing = [False] * len(self.keys.rules.source)
        # by services number: service_matches(), the same on every member (_UNKNOWN: not
        # made yet)
        self.services: list[list[Match] | None | _Unknown] = \
            [_UNKNOWN] * len(self.keys.services)
        # by side number: side_parts() without firewall addresses, the same on every member
        self.sides: list[SideParts | None] = [None] * len(self.keys.sides)


@dataclass(slots=True)
class Replay:
    """What the shared rules add to a member's tables, for every member with the same
    devices (the device of each interface the rules name): in order, each rule that is
    lowered per member (its position: firewall addresses, `only`, conntrack helpers) and
    between them the shared lines as (table, chain, lines), in the order each chain was
    first added to. Appending a chain's lines of a run at once gives each chain the same
    lines in the same order, and creates the chains in the same order, as appending
    them rule by rule (tests/test_lower_shared.py compares with each member lowered
    alone)."""

    steps: list[int | tuple[tuple[str, ChainName, tuple[Rule, ...]], ...]] = \
        field(default_factory=list)


class _Devices(dict[str | None, str | None]):
    """A member's device for an interface name (the name itself when the member has no
    such link; None for None), looked up once per name."""

    def __init__(self, member: Member) -> None:
        super().__init__({None: None})
        self.member = member

    def __missing__(self, interface: str | None) -> str | None:
        assert interface is not None
        found = self[interface] = self.member.device(interface) or interface
        return found


class _Lowering:
    def __init__(self, cluster: Cluster, member: Member, family: int,
                 options: LowerOptions, shared: SharedLowering | None = None) -> None:
        self.cluster = cluster
        self.member = member
        self.family = family
        self.options = options
        self.fw = cluster.firewall_addresses(member).only(family)
        self.fw_order = firewall_order(cluster, member, family)
        self.devices = _Devices(member)
        # The rules' numbers (RuleKeys), and by number: service_matches() (thousands of
        # rules name the same services; the lists are shared between rules and only ever
        # read) and side_parts() with this member's firewall addresses. Made on first use.
        self._keys: RuleKeys | None = shared.keys if shared is not None else None
        self.service_memo: list[list[Match] | None | _Unknown] = \
            shared.services if shared is not None else []
        self.sides: list[SideParts | None] = []
        self.helped: list[bool] = []  # RuleKeys.helped, by services number
        self.relative: dict[str, str] = {}
        self.tables = _Tables()
        self.shared = shared
        self.mark = mark_value(cluster.sync.mark_bit)
        self.defaults = cluster.defaults
        self.filtered_output = cluster.defaults.output is not FilterAction.ACCEPT

    def device(self, interface: str | None) -> str | None:
        return self.devices[interface]

    def origin(self, rule: BaseRule, kind: str) -> Origin:
        # Per lowering, not process-wide: the relative path depends on the current
        # directory, which may differ between runs in one process.
        relative = self.relative.get(rule.span.file)
        if relative is None:
            relative = self.relative[rule.span.file] = self.options.source_name(
                rule.span.file)
        return _ORIGIN(kind, f"{relative}:{rule.span.line}", rule)

    # -- automatic rules ---------------------------------------------------------
    def auto(self, chain: BuiltinChain, match: Match, label: str,
             target: Target = Target.ACCEPT) -> None:
        self.tables.filter[chain].append(FilterRule(match, target,
                                                    Origin("auto", auto_label(label))))

    def automatic_rules(self) -> None:
        self.auto(BuiltinChain.INPUT, Match(in_device="lo"), "loopback")
        if self.filtered_output:
            # The node's own traffic is filtered: what the HA plumbing sends goes first,
            # before any policy rule (docs/language.md "default { }").
            self.auto(BuiltinChain.OUTPUT, Match(out_device="lo"), "loopback")
            self.output_plumbing()
            self.health_pings()
        group = proto.VRRP_GROUP_V4 if self.family == 4 else proto.VRRP_GROUP_V6
        protocols = [proto.VRRP_PROTOCOL]
        if self.family == 4 and self.cluster.vrrp.auth == "ah":
            protocols.append(proto.AH_PROTOCOL)
        for iface in self.cluster.vrrp_interfaces:
            if not iface.vips_of(self.family):
                continue
            dev = self.device(iface.name)
            own, peers = self.segment_peers(iface.name)
            if not own or not peers:
                continue  # FWC201, FWC203: no member to hear, or none to send from
            incoming, outgoing = self.vrrp_matches(group, own, peers)
            for number in protocols:
                label = f"vrrp {dev}" if number == proto.VRRP_PROTOCOL else f"vrrp-ah {dev}"
                self.auto(BuiltinChain.INPUT,
                          replace(incoming, in_device=dev, protocol=number), label)
                self.auto(BuiltinChain.OUTPUT,
                          replace(outgoing, out_device=dev, protocol=number), label)
        if self.family == 4:
            self.sync_rules()
        else:
            for icmp_type in proto.NDP_ICMPV6_TYPES:
                self.auto(BuiltinChain.INPUT, Match(protocol=ICMPV6, icmp_type=icmp_type,
                                                    hop_limit=proto.NDP_HOP_LIMIT), "ndp")
            self.auto(BuiltinChain.INPUT, MLD_QUERY, "mld query")
        self.sync_allowance()

    def vrrp_matches(self, group: str, own: tuple[str, ...],
                     peers: tuple[str, ...]) -> tuple[Match, Match]:
        """(incoming, outgoing) VRRP (or AH) adverts on a segment where this member has
        the addresses OWN and the other members PEERS.

        Only the peers' adverts come in, and only with TTL (hop limit) 255, which every
        advert leaves with and no router forwards: anyone else on the segment would
        take the VIPs with priority 255, and a packet from off the link could do it
        with a spoofed peer address (RFC 5798 5.1.1.3, docs/ha-pitfalls.md). keepalived
        sends from the device's primary IPv4 address, one of the peer's on the segment,
        and in IPv6 multicast from its link-local address, which no policy declares.
        Unicast adverts go to this member's first address (keepalived's
        `unicast_src_ip`) from the peers' and back.
        """
        on_link = Match(ttl=proto.VRRP_TTL) if self.family == 4 \
            else Match(hop_limit=proto.VRRP_TTL)
        if self.cluster.vrrp.unicast:
            incoming = replace(on_link, source=AddressMatch(peers),
                               destination=AddressMatch(own[:1]))
            return incoming, Match(source=AddressMatch(own[:1]),
                                   destination=AddressMatch(peers))
        senders = peers if self.family == 4 else (proto.IPV6_LINK_LOCAL,)
        to_group = AddressMatch((group,))
        incoming = replace(on_link, source=AddressMatch(senders), destination=to_group)
        return incoming, Match(destination=to_group)

    def segment_peers(self, interface: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """(this member's addresses, every other member's) on INTERFACE in this family."""
        def addresses(member: Member) -> list[str]:
            link = member.link(interface)
            return [str(a.ip) for a in link.addresses if a.version == self.family] \
                if link is not None else []
        peers = [a for m in self.cluster.members if m.name != self.member.name
                 for a in addresses(m)]
        return tuple(addresses(self.member)), tuple(peers)

    def sync_allowance(self) -> None:
        """`sync { allow ssh, ntp }`: those services between the members' sync addresses,
        either way (replies are the established rule's)."""
        sync = self.cluster.sync
        if not sync.allow or sync.link is None:
            return
        dev = self.device(sync.link)
        own, peers = self.segment_peers(sync.link)
        matches = service_matches(sync.allow, self.family)
        if not own or not peers or matches is None:
            return
        label = sync_allow_label(sync)
        for match in matches:
            self.auto(BuiltinChain.INPUT,
                      replace(match, source=AddressMatch(peers), destination=AddressMatch(own),
                              in_device=dev), label)
            self.auto(BuiltinChain.OUTPUT,
                      replace(match, source=AddressMatch(own), destination=AddressMatch(peers),
                              out_device=dev), label)

    def output_plumbing(self) -> None:
        """With OUTPUT filtered: the multicast joins and, for IPv6, neighbour discovery.

        keepalived joins 224.0.0.18 / ff02::12 and conntrackd its sync group: the
        kernel announces that with IGMP (IPv4) or MLD (IPv6) reports, which a switch
        with IGMP/MLD snooping needs to keep forwarding the group. In IPv6 the node
        also joins the solicited-node group of each of its addresses on every device,
        where its neighbours' solicitations go, and answers the queries INPUT takes in
        from every device: its MLD reports go out of every device. Neighbour
        solicitations and advertisements are not tracked (no ESTABLISHED to match).
        """
        if self.family == 6:
            for match in MLD_REPORTS:
                self.auto(BuiltinChain.OUTPUT, match, "mld")
            for icmp_type in proto.NDP_ICMPV6_TYPES:
                self.auto(BuiltinChain.OUTPUT, Match(protocol=ICMPV6, icmp_type=icmp_type,
                                                     hop_limit=proto.NDP_HOP_LIMIT), "ndp")
            return
        devices: list[str] = []
        for iface in self.cluster.vrrp_interfaces:
            if iface.vips_of(self.family):
                devices.append(self.device(iface.name) or iface.name)
        # the multicast sync links have their IGMP rules already (igmp_rules)
        synced = {link.device for name in self.cluster.sync.links
                  for link in [self.member.link(name)] if link is not None} \
            if self.cluster.sync.transport == "multicast" else set()
        for dev in dict.fromkeys(d for d in devices if d not in synced):
            self.auto(BuiltinChain.OUTPUT, Match(out_device=dev, protocol=IGMP), f"igmp {dev}")

    def health_pings(self) -> None:
        """With OUTPUT filtered: the echo requests of the member's own health checks.

        keepalived's `track { ping }` and the uplink monitor's probes judge a gateway
        dead when no echo reply comes: an echo request that OUTPUT drops would take
        every member to FAULT, or every probed route out for good. Each may send exactly
        its echo request to its target by its device (the replies are the established
        rule's), and nothing else.
        """
        protocol, echo = ECHO_REQUEST[self.family]
        for target, device, label in health_pings(self.cluster, self.member, self.family):
            self.auto(BuiltinChain.OUTPUT,
                      Match(destination=AddressMatch((str(target),)), out_device=device,
                            protocol=protocol, icmp_type=echo), f"{label} {device}")

    def default_rules(self) -> None:
        """The end of each filter chain: log what its default drops, reject if asked."""
        logging = self.cluster.logging
        for chain, name in DEFAULT_OF.items():
            default = self.defaults.of(name)
            if default is FilterAction.ACCEPT:
                continue
            if logging.drops:
                prefix, _ = drops_prefix(logging, chain)
                self.tables.filter[chain].append(self.log_rule(
                    FilterRule, Match(), Origin("auto", f"fwc auto: log {name} default"),
                    prefix, logging.effective(NO_LOG_OPTIONS)))
            if default is FilterAction.REJECT:
                origin = Origin("auto", f"fwc auto: {name} default")
                self.tables.filter[chain].append(FilterRule(
                    Match(protocol=TCP), Target.REJECT, origin, (("reject-with",
                                                                  proto.REJECT_TCP),)))
                self.tables.filter[chain].append(FilterRule(
                    Match(), Target.REJECT, origin,
                    (("reject-with", proto.REJECT_OTHER[self.family]),)))

    def log_rule(self, make: type[FilterRule] | type[NatRule], match: Match, origin: Origin,
                 prefix: str, options: LogOptions) -> Rule:
        """LOG (or NFLOG with a group) with the effective level, rate and burst."""
        assert options.rate is not None and options.burst is not None
        limited = with_limit(match, RateLimit(str(options.rate), options.burst))
        if options.group is not None:
            return make(limited, Target.NFLOG, origin, (("nflog-prefix", prefix),
                                                        ("nflog-group", str(options.group))))
        level = options.level or proto.DEFAULT_LOG_LEVEL
        target_options: tuple[tuple[str, str], ...] = (("log-prefix", prefix),)
        if level != proto.DEFAULT_LOG_LEVEL:
            target_options += (("log-level", str(proto.LOG_LEVELS[level])),)
        return make(limited, Target.LOG, origin, target_options)

    def mss_rules(self) -> list[Rule]:
        """TCP MSS clamping (`mss` on an interface) in mangle FORWARD, both directions for a
        fixed size; towards the interface for `pmtu` (the path MTU of the route out)."""
        out: list[Rule] = []
        for iface in self.cluster.interfaces:
            if iface.mss is None:
                continue
            dev = self.device(iface.name) or iface.name
            origin = Origin("auto", auto_label(mss_label(iface.name)))
            syn = Match(protocol=TCP, tcp_flags=MSS_SYN)
            if iface.mss == "pmtu":
                out.append(FilterRule(replace(syn, out_device=dev), Target.TCPMSS, origin,
                                      (("clamp-mss-to-pmtu", ""),)))
                continue
            for match in (replace(syn, in_device=dev), replace(syn, out_device=dev)):
                out.append(FilterRule(match, Target.TCPMSS, origin,
                                      (("set-mss", str(iface.mss)),)))
        return out

    def sync_rules(self) -> None:
        for name in self.cluster.sync.links:
            self.sync_link_rules(name)

    def sync_link_rules(self, name: str) -> None:
        sync = self.cluster.sync
        link = self.member.link(name)
        if link is None:
            return
        dev = link.device
        port = (PortRange(sync.port_of(name), sync.port_of(name)),)
        label = f"conntrackd sync {dev}"
        own, peers = self.segment_peers(name)
        if not own or not peers:
            return  # FWC201, FWC203: no member to replicate with
        # Only the peers' states come in: a state injected by another host on the link
        # passes as ESTABLISHED once this member commits it at a failover. Multicast:
        # conntrackd sends from its `IPv4_interface`, the member's first sync address.
        # UDP: its client socket is not bound (only the server binds `IPv4_address`),
        # so the kernel picks the source, the device's primary address in the peer's
        # subnet: the policy's, unless the device got another address in that subnet
        # first (docs/ha-pitfalls.md).
        theirs = AddressMatch(peers)
        if sync.transport == "multicast":
            group = AddressMatch((str(sync.group),))
            self.auto(BuiltinChain.INPUT, Match(source=theirs, destination=group,
                                                in_device=dev, protocol=UDP, dports=port),
                      label)
            self.auto(BuiltinChain.OUTPUT, Match(destination=group, out_device=dev,
                                                 protocol=UDP, dports=port), label)
            self.igmp_rules(dev)
            return
        mine = AddressMatch(own[:1])
        self.auto(BuiltinChain.INPUT,
                  Match(source=theirs, destination=mine, in_device=dev, protocol=UDP,
                        dports=port), label)
        self.auto(BuiltinChain.OUTPUT,
                  Match(source=mine, destination=theirs, out_device=dev, protocol=UDP,
                        dports=port), label)

    def igmp_rules(self, dev: str) -> None:
        # IGMP on the sync link with multicast sync: a snooping switch forwards
        # conntrackd's group only to ports whose host answered its queries with
        # membership reports (docs/ha-pitfalls.md, "Automatic rules for the HA plumbing").
        groups = AddressMatch((str(MULTICAST[4]),))
        self.auto(BuiltinChain.INPUT, Match(destination=groups, in_device=dev,
                                            protocol=IGMP), f"igmp {dev}")
        self.auto(BuiltinChain.OUTPUT, Match(destination=groups, out_device=dev,
                                             protocol=IGMP), f"igmp {dev}")

    def stateful_core(self) -> None:
        established = Match(ctstate=("RELATED", "ESTABLISHED"))
        for chain, _ in FILTER_POLICIES:
            self.auto(chain, established, "established")
        for chain in (BuiltinChain.INPUT, BuiltinChain.FORWARD):
            # DROP, never REJECT: right after a failover, packets of flows the notify
            # script has not committed yet must be retransmitted, not reset (docs/ha-pitfalls.md).
            self.auto(chain, Match(ctstate=("INVALID",)), "invalid", Target.DROP)
            self.auto(chain, Match(protocol=TCP, tcp_not_syn=True, ctstate=("NEW",)),
                      "new tcp without syn", Target.DROP)

    def chain_policy(self, chain: ChainName, fallback: Target) -> Target:
        return chain_policy_of(self.cluster, chain, fallback)

    # -- policy rules ------------------------------------------------------------------
    def applies(self, rule: BaseRule) -> bool:
        return rule.only is None or rule.only == self.member.name

    def keys(self) -> RuleKeys:
        if self._keys is None:
            self._keys = rule_keys(self.cluster) if self.cluster.owns(self.member) \
                else RuleKeys(self.cluster)
        if not self.sides:
            self.sides = [None] * len(self._keys.sides)
        self.helped = self._keys.helped
        if not self.service_memo:
            self.service_memo = [_UNKNOWN] * len(self._keys.services)
        return self._keys

    def filter_rules(self) -> None:
        """Lower every policy rule that applies to this member, in order: once for every
        member that reads it alike (SharedLowering), else for this member alone.

        A member whose devices are those of a member lowered before (the same device
        for every interface the rules name: `Replay`) takes that member's shared lines
        chain by chain, a run of rules at a time; only the rules that differ between
        members (firewall addresses, `only`, conntrack helpers) are visited one by one."""
        keys = self.keys()
        shared = self.shared
        tables = self.tables
        by_name = {"raw": tables.raw, "raw_user": tables.raw_user, "filter": tables.filter,
                   "filter_user": tables.filter_user}
        if shared is None:
            for position in present_rules(keys, self.family):
                self.one_rule(position, by_name)
            return
        devices = self.devices
        signature = tuple([devices[name] for name in shared.interfaces])
        replay = shared.replays.get(signature)
        if replay is not None:
            for step in replay.steps:
                if type(step) is int:
                    self.one_rule(step, by_name)
                    continue
                for name, chain, lines in step:  # type: ignore[union-attr]
                    target = by_name[name]
                    got = target.get(chain)
                    if got is None:
                        target[chain] = list(lines)
                    else:
                        got.extend(lines)
            return
        # kept for the next member of these devices only once it is complete
        replay = Replay()
        steps = replay.steps
        run: dict[tuple[str, ChainName], list[Rule]] = {}  # the shared lines since the last step
        numbers_of = keys.rules
        sources, destinations, services = numbers_of
        rules = self.cluster.rules
        per_member, nothing, made = shared.per_member, shared.nothing, shared.lowered
        for position in shared.present:
            rule = rules[position]
            if rule.only is not None or per_member[position]:
                if run:
                    steps.append(tuple([(name, chain, tuple(lines))
                                        for (name, chain), lines in run.items()]))
                    run = {}
                steps.append(position)
                self.one_rule(position, by_name)
                continue
            if nothing[position]:
                continue
            key = (position, devices[rule.in_interface], devices[rule.out_interface])
            lowered = made.get(key)
            if lowered is None:
                lowered = made[key] = self.rule_lowering(
                    rule, _EMPTY, shared.sides,
                    (sources[position], destinations[position], services[position]))
                nothing[position] = lowered is _NOTHING
            if lowered is _NOTHING:
                continue
            if lowered.helpers:
                if run:
                    steps.append(tuple([(name, chain, tuple(lines))
                                        for (name, chain), lines in run.items()]))
                    run = {}
                steps.append(position)
                self.add_lowered(rule, lowered, by_name)
                continue
            self.add_lowered(rule, lowered, by_name, run)
        if run:
            steps.append(tuple([(name, chain, tuple(lines))
                                for (name, chain), lines in run.items()]))
        shared.replays[signature] = replay

    def one_rule(self, position: int, by_name: dict[str, dict[ChainName, list[Rule]]]) -> None:
        """The policy rule at POSITION lowered for this member and added to its tables."""
        rule = self.cluster.rules[position]
        if rule.only is not None and rule.only != self.member.name:
            return
        shared = self.shared
        numbers_of = self._keys.rules  # type: ignore[union-attr]
        numbers = (numbers_of.source[position], numbers_of.destination[position],
                   numbers_of.services[position])
        if shared is None or shared.per_member[position]:
            lowered = self.rule_lowering(rule, self.fw, self.sides, numbers)
        elif shared.nothing[position]:
            return
        else:
            devices = self.devices
            key = (position, devices[rule.in_interface], devices[rule.out_interface])
            lowered = shared.lowered.get(key)  # type: ignore[assignment]
            if lowered is None:
                # the rule names no firewall address of any member: no member's reading
                # differs from one without firewall addresses (reads_firewall)
                lowered = shared.lowered[key] = self.rule_lowering(
                    rule, _EMPTY, shared.sides, numbers)
                # whether a rule has lines depends on whether it has devices, never on
                # which: nothing here is nothing on every member
                shared.nothing[position] = lowered is _NOTHING
        if lowered is not _NOTHING:
            self.add_lowered(rule, lowered, by_name)

    def add_lowered(self, rule: PolicyFilterRule, lowered: RuleLowering,
                    by_name: dict[str, dict[ChainName, list[Rule]]],
                    run: dict[tuple[str, ChainName], list[Rule]] | None = None) -> None:
        """LOWERED's lines added to the member's tables BY_NAME and, while a Replay is
        recorded, to its RUN in the same walk."""
        if lowered.helpers:
            # member-specific (deduplicated over the member's rules): before the rule's
            # own raw lines, as the kernel must assign the helper first
            self.helpers(rule, lowered.origin, lowered.chains)
        for name, chains in lowered.appends:
            target = by_name[name]
            for chain, lines in chains:
                got = target.get(chain)
                if got is None:
                    target[chain] = list(lines)
                else:
                    got.extend(lines)
                if run is not None:
                    kept = run.get((name, chain))
                    if kept is None:
                        run[(name, chain)] = list(lines)
                    else:
                        kept.extend(lines)

    def side(self, endpoint: Endpoint, fw: AddressSet, sides: list[SideParts | None],
             number: int) -> SideParts:
        """`side_parts` of ENDPOINT (side NUMBER) against FW, made once in SIDES."""
        got = sides[number]
        if got is None:
            shared = self.shared
            if shared is not None and sides is not shared.sides and not shared.reads[number]:
                # A side that names no member's firewall address reads alike against any
                # of them and against none (`reads_firewall`): the member's own rules (the
                # other side names the firewall) take the shared side, made once.
                got = shared.sides[number]
                if got is None:
                    got = shared.sides[number] = side_parts(endpoint, _EMPTY, self.family,
                                                            self.fw_order)
            else:
                got = side_parts(endpoint, fw, self.family, self.fw_order)
            sides[number] = got
        return got

    def rule_lowering(self, rule: PolicyFilterRule, fw: AddressSet,
                      sides: list[SideParts | None], numbers: tuple[int, int, int]) \
            -> RuleLowering:
        """The rule's lines on this member (raw for notrack, filter), helpers aside;
        FW: the firewall addresses it reads; SIDES: its sides against FW, by number;
        NUMBERS: the rule's (RuleKeys.rules)."""
        # (most rules name the addresses of one family only: no parts in the other)
        src = sides[numbers[0]]
        if src is None:
            src = self.side(rule.source, fw, sides, numbers[0])
        if not src.applies:
            return _NOTHING
        dst = sides[numbers[1]]
        if dst is None:
            dst = self.side(rule.destination, fw, sides, numbers[1])
        if not dst.applies:
            return _NOTHING
        has_in, has_out = rule.in_interface is not None, rule.out_interface is not None
        to_fw, from_fw, through = filter_chains(src.reach, dst.reach, has_in, has_out)
        if not (to_fw or from_fw or through):
            return _NOTHING  # (parts_of gives no part)
        services = self.service_memo[numbers[2]]
        if services is _UNKNOWN:
            services = self.service_memo[numbers[2]] = service_matches(rule.services,
                                                                       self.family)
        if services is None:
            return _NOTHING
        assert not isinstance(services, _Unknown)
        origin = self.origin(rule, "policy")
        helpers = rule.action is FilterAction.ACCEPT and self.helped[numbers[2]]
        plain = plain_verdict(rule)
        if to_fw + from_fw + through == 1 and (plain or (plain_reject(rule) and all(
                [service.protocol is not None for service in services]))):
            # The usual rule: a verdict in one built-in chain, a line per service (what
            # parts_of, emit and final make of it, without their general cases or a Part).
            # (None: that side has exclusions, for a RETURN chain: the general path)
            if to_fw:
                chain: BuiltinChain = BuiltinChain.INPUT
                source, destination = src.named_exact, dst.firewall
            elif from_fw:
                chain = BuiltinChain.OUTPUT
                source, destination = src.firewall, dst.named_exact
            else:
                chain = BuiltinChain.FORWARD
                source, destination = src.other_exact, dst.other_exact
            if source is not None and destination is not None:
                in_device = self.devices[rule.in_interface] \
                    if chain != BuiltinChain.OUTPUT else None
                out_device = self.devices[rule.out_interface] \
                    if chain != BuiltinChain.INPUT else None
                if plain:  # one verdict for every line
                    target, options = self.action(rule, _ANY_MATCH, False)
                    lines: tuple[Rule, ...] = tuple([
                        FilterRule(_MATCH(source, destination, in_device, out_device,
                                          service.protocol, service.dports,
                                          service.icmp_type, *_LINE_REST),
                                   target, origin, options)
                        for service in services])
                else:  # a reject: its answer follows each line's protocol
                    answered: list[Rule] = []
                    for service in services:
                        match = _MATCH(source, destination, in_device, out_device,
                                       service.protocol, service.dports, service.icmp_type,
                                       *_LINE_REST)
                        target, options = self.action(rule, match, False)
                        answered.append(FilterRule(match, target, origin, options))
                    lines = tuple(answered)
                return _RULE_LOWERING(origin, _ONE_CHAIN[chain],
                                      (("filter", ((chain, lines),)),), helpers)
        parts = parts_of(src, dst, has_in, has_out)
        raw: dict[ChainName, list[Rule]] = {}
        raw_user: dict[ChainName, list[Rule]] = {}
        if rule.action is FilterAction.ACCEPT and rule.notrack:
            self.notrack(raw, raw_user, rule, origin, parts, services)
        in_device, out_device = self.devices[rule.in_interface], \
            self.devices[rule.out_interface]
        filter_: dict[ChainName, list[Rule]] = {}
        filter_user: dict[ChainName, list[Rule]] = {}
        for part in parts:
            self.emit(filter_, filter_user, FilterRule, rule, origin, part,
                      in_device if part.chain != BuiltinChain.OUTPUT else None,
                      out_device if part.chain != BuiltinChain.INPUT else None,
                      services, "p")
        if raw or raw_user or filter_user or len(filter_) != 1:
            appends = tuple((name, tuple((chain, tuple(lines)) for chain, lines in made.items()))
                            for name, made in (("raw", raw), ("raw_user", raw_user),
                                               ("filter", filter_),
                                               ("filter_user", filter_user)) if made)
        else:  # the usual rule: lines in one built-in chain
            [(chain, made)] = filter_.items()
            appends = (("filter", ((chain, tuple(made)),)),)
        return _RULE_LOWERING(origin, frozenset([p.chain for p in parts]), appends, helpers)

    def notrack(self, raw: dict[ChainName, list[Rule]], raw_user: dict[ChainName, list[Rule]],
                rule: PolicyFilterRule, origin: Origin, parts: list[Part],
                services: list[Match]) -> None:
        """`notrack`: the raw table exempts the rule's traffic from connection tracking.

        raw works before routing (PREROUTING, for INPUT and FORWARD traffic: the
        incoming device is known, the outgoing one not yet; the checks refuse `out`
        there) and for the node's own packets in OUTPUT.
        """
        for part in parts:
            chain = BuiltinChain.OUTPUT if part.chain == BuiltinChain.OUTPUT \
                else BuiltinChain.PREROUTING
            kind = "ri" if part.chain == BuiltinChain.INPUT else "r"
            self.emit(raw, raw_user, FilterRule, rule, origin, replace(part, chain=chain),
                      self.device(rule.in_interface) if chain is BuiltinChain.PREROUTING
                      else None,
                      self.device(rule.out_interface) if chain is BuiltinChain.OUTPUT
                      else None,
                      services, kind, notrack=True)

    def helpers(self, rule: PolicyFilterRule, origin: Origin,
                chains: frozenset[ChainName]) -> None:
        """Assign conntrack helpers explicitly in raw (the kernel no longer does it).

        The raw table sees packets before DNAT and routing, so the helper is chosen by
        protocol, port and incoming device only; a helper on a connection the filter
        then drops never sees its payload.
        """
        raw_chains = []
        if chains & {BuiltinChain.INPUT, BuiltinChain.FORWARD}:
            raw_chains.append(BuiltinChain.PREROUTING)
        if BuiltinChain.OUTPUT in chains:
            raw_chains.append(BuiltinChain.OUTPUT)
        for service in rule.services:
            if service.helper is None or service.family not in (None, self.family):
                continue
            for chain in raw_chains:
                match = Match(in_device=self.device(rule.in_interface)
                              if chain is BuiltinChain.PREROUTING else None,
                              protocol=service.number, dports=service.ports)
                key = (chain, match, service.helper)
                if key not in self.tables.raw_seen:
                    self.tables.raw_seen.add(key)
                    # The kernel's name (h323 is Q.931 or RAS); a pair it lacks is FWC231.
                    kernel = proto.CONNTRACK_HELPER_KERNEL_NAMES.get(
                        (service.helper, service.protocol), service.helper)
                    self.tables.raw[chain].append(
                        FilterRule(match, Target.CT, origin, (("helper", kernel),)))

    def action(self, rule: PolicyFilterRule | PolicyNatRule, match: Match, inside_chain: bool) \
            -> tuple[JumpTarget, tuple[tuple[str, str], ...]]:
        if rule.action is FilterAction.ACCEPT:
            return (Target.ACCEPT if rule.only else MARK_ACCEPT_CHAIN), ()
        if rule.action is FilterAction.DROP:
            return Target.DROP, ()
        if rule.action is FilterAction.REJECT:
            if rule.reject_with is not None:
                how = proto.REJECT_TYPES[rule.reject_with][self.family]
            else:
                how = proto.REJECT_TCP if match.protocol == TCP \
                    else proto.REJECT_OTHER[self.family]
            return Target.REJECT, (("reject-with", how),)
        if rule.action is NatAction.NONAT:
            # Inside a RETURN chain, RETURN would only leave that chain; ACCEPT ends the
            # built-in nat chain exactly like RETURN does there.
            return (Target.ACCEPT if inside_chain else Target.RETURN), ()
        if rule.action is NatAction.MASQUERADE:
            return Target.MASQUERADE, ()
        # The first target with an address of this family: a dnat pool's first backend
        # may have none (`-> web4, web` in IPv6), and `nat_rule` lowers no rule without one.
        pool = self.pool(rule)
        assert pool
        return self.translation(rule.action, pool[0])

    def translation(self, action: NatAction, target: NatTarget) \
            -> tuple[JumpTarget, tuple[tuple[str, str], ...]]:
        """SNAT/DNAT to TARGET's address (or range) of this family, with its port(s)."""
        address = target.address_text(self.family)
        assert address is not None
        port = target.port_text
        if port is not None:
            address = (f"[{address}]" if self.family == 6 else address) + f":{port}"
        if action is NatAction.SNAT:
            return Target.SNAT, (("to-source", address),)
        return Target.DNAT, (("to-destination", address),)

    def pool(self, rule: PolicyNatRule) -> tuple[NatTarget, ...]:
        """The translation targets that have an address of this family."""
        return rule.targets_in(self.family)

    def emit(self, builtin: dict[ChainName, list[Rule]], user: dict[ChainName, list[Rule]],
             make: type[FilterRule] | type[NatRule], rule: PolicyFilterRule | PolicyNatRule,
             origin: Origin, part: Part, in_device: str | None, out_device: str | None,
             services: list[Match], kind: str, notrack: bool = False,
             firewall_excluded: tuple[bool, AddressMatch] | None = None) -> None:
        """FIREWALL_EXCLUDED: (on the source side, addresses) RETURNed before the rule's
        own exclusions (`nat_firewall_left_out`)."""
        source, destination = part.source, part.destination
        lines = len(services) * (len(source.cidrs) or 1) * (len(destination.cidrs) or 1)
        # A RETURN chain for exclusions; for a logged rule on several lines, one chain keeps
        # the LOG and the verdict together instead of doubling every line. A rule with a
        # rate or connection limit always gets one: beyond the limit its packets RETURN to
        # the rules after it, once per packet (one bucket however many lines jump there).
        needs_chain = bool(part.source_excluded or part.destination_excluded
                           or firewall_excluded) \
            or (not notrack and ((rule.log and lines > 1) or rule.conditional
                                 or len(getattr(rule, "pool", ())) > 0 and lines > 1))
        target_rules = builtin.get(part.chain)
        if target_rules is None:
            target_rules = builtin[part.chain] = []
        if needs_chain:
            sub_name = f"fwc-{kind}{rule.index + 1}-{part.chain}"[:proto.CHAIN_NAME_MAX]
            sub = user.setdefault(sub_name, [])
            if firewall_excluded is not None:
                on_source, addresses = firewall_excluded
                sub.append(make(Match(source=addresses) if on_source
                                else Match(destination=addresses), Target.RETURN, origin))
            if part.source_excluded:
                sub.append(make(Match(source=addresses_match(part.source_excluded,
                                                             self.family)), Target.RETURN, origin))
            if part.destination_excluded:
                sub.append(make(Match(destination=addresses_match(part.destination_excluded,
                                                                  self.family)),
                                Target.RETURN, origin))
            for service in services:
                target_rules.append(make(Match(source, destination, in_device, out_device,
                                               service.protocol, service.dports,
                                               service.icmp_type), sub_name, origin))
            self.final(user[sub_name], make, rule, origin, Match(), inside_chain=True,
                       protocols={s.protocol for s in services}, notrack=notrack)
            return
        # The usual rule (a verdict, nothing logged or limited) takes its lines directly.
        plain = not notrack and plain_verdict(rule)
        if plain:
            target, options = self.action(rule, _ANY_MATCH, False)
        for service in services:
            match = Match(source, destination, in_device, out_device, service.protocol,
                          service.dports, service.icmp_type)
            if plain:
                target_rules.append(make(match, target, origin, options))
            else:
                self.final(target_rules, make, rule, origin, match, inside_chain=False,
                           notrack=notrack)

    def final(self, rules: list[Rule], make: type[FilterRule] | type[NatRule],
              rule: PolicyFilterRule | PolicyNatRule, origin: Origin, match: Match,
              inside_chain: bool, protocols: set[int | None] | None = None,
              notrack: bool = False) -> None:
        if notrack:
            rules.append(make(match, Target.CT, origin, (("notrack", ""),)))
            return
        if isinstance(rule, PolicyNatRule) and match.protocol is None and protocols \
                and None not in protocols and any(t.port is not None for t in rule.targets):
            # A NAT port needs `-p` on its own line (iptables: "Need TCP, UDP, SCTP or
            # DCCP with port specification"), also inside a chain all protocols share.
            for number in sorted(p for p in protocols if p is not None):
                self.final(rules, make, rule, origin, replace(match, protocol=number),
                           inside_chain, notrack=notrack)
            return
        tcp_here = match.protocol == TCP or (match.protocol is None and (
            protocols is None or TCP in protocols or None in protocols))
        if inside_chain and rule.limit is not None:
            rules.append(make(replace(match, hashlimit=HashLimit(
                str(rule.limit.rate), burst_of(rule.limit),
                hashlimit_name("p", rule, rule.limit, rule.limit.per_source),
                rule.limit.per_source)), Target.RETURN, origin))
        if inside_chain and rule.connlimit is not None:
            rules.append(make(replace(match, connlimit=ConnLimit(
                rule.connlimit, 32 if self.family == 4 else 128)), Target.RETURN, origin))
        if rule.syn_limit is not None and tcp_here:
            # SYN flood protection: new connections beyond the rate are dropped here.
            rules.append(make(replace(match, protocol=TCP, tcp_flags=TCP_SYN,
                                      hashlimit=HashLimit(str(rule.syn_limit.rate),
                                                          burst_of(rule.syn_limit),
                                                          hashlimit_name("s", rule,
                                                                         rule.syn_limit,
                                                                         False))),
                              Target.DROP, origin))
        if rule.log:
            effective = self.cluster.logging.effective(rule.log_options)
            prefix, _ = log_prefix(rule, nflog=effective.group is not None)
            rules.append(self.log_rule(make, match, origin, prefix, effective))
        if rule.action is FilterAction.REJECT and rule.reject_with is None \
                and match.protocol is None and tcp_here:
            # An RST needs -p tcp: answer TCP with a reset, everything else unreachable.
            rules.append(make(replace(match, protocol=TCP), Target.REJECT, origin,
                              (("reject-with", proto.REJECT_TCP),)))
        if rule.action is FilterAction.REJECT and rule.reject_with == proto.REJECT_TCP \
                and match.protocol is None:
            # tcp-reset answers TCP only (the checks keep other protocols out of the rule)
            rules.append(make(replace(match, protocol=TCP), Target.REJECT, origin,
                              (("reject-with", proto.REJECT_TCP),)))
            return
        if isinstance(rule, PolicyNatRule) and rule.action is NatAction.DNAT \
                and len(self.pool(rule)) > 1:
            # Load sharing: connection n goes to backend n mod N (the nat table sees the
            # first packet of each connection only); each line takes 1/remaining.
            backends = self.pool(rule)
            for n, backend in enumerate(backends):
                left = len(backends) - n
                line = replace(match, statistic=(left, 0)) if left > 1 else match
                target, options = self.translation(rule.action, backend)
                rules.append(make(line, target, origin, options))
            return
        target, options = self.action(rule, match, inside_chain)
        rules.append(make(match, target, origin, options))

    # -- NAT ------------------------------------------------------------------------------
    def nat_rule(self, rule: PolicyNatRule) -> None:
        if not rule.works_in(self.family):
            return
        services = service_matches(rule.services, self.family)
        if services is None:
            return
        origin = self.origin(rule, "nat")
        for stage in rule.stages:
            part = nat_part(rule, self.fw, self.family, stage.chain)
            if part is None:
                continue
            self.emit(self.tables.nat, self.tables.nat_user, NatRule, rule, origin, part,
                      self.device(rule.in_interface) if stage.sees_in else None,
                      self.device(rule.out_interface) if stage.sees_out else None,
                      services, "n", firewall_excluded=self.nat_firewall_left_out(rule, stage))

    def nat_firewall_left_out(self, rule: PolicyNatRule, stage: NatStage) \
            -> tuple[bool, AddressMatch] | None:
        """(whether on the source side, the addresses) of the firewall a NAT rule must
        leave alone at STAGE: every one, when that side is `any`.

        `any` is every address but the firewall's (fwc.model.semantics; `fwc query` and
        `expect` read NAT so). A filter rule gets that from its chain; a NAT hook sees
        the firewall's own traffic too: PREROUTING what is sent to it (`dnat from lan to
        any service ssh` took the admin's ssh to the firewall elsewhere), POSTROUTING what
        it sends (`snat from any out uplink -> uplink.vip` put the VIP on a backup's own
        packets, whose answers then went to the master). A nonat leaves them alone too:
        it exempts from the NAT rules after it, and `nonat from peer to any` kept the
        peer's connections to uplink.vip from a later dnat that names that VIP. The other
        side never holds a firewall address at that hook. Left out as a RETURN per address, in the
        member-independent order of `firewall_match` (the members' chains keep one shape).

        A network around a firewall address (`lan` holds the member's lan address and
        lan.vip) does not name it either. Before routing it is left out too: that is what
        clients send to the firewall (`nonat from lan to uplink` kept lan's connections to
        uplink.vip from a later dnat to that VIP, `dnat ... to lan` took them to the
        firewall's own lan address). After routing it is written as it is: leaving it out
        would put a RETURN chain under nearly every snat (`from lan`), which `fwc import`
        cannot read back yet, and the firewall's own packets rarely carry such a source
        (docs/language.md, "NAT")."""
        on_source = firewall_traffic_side(stage) == "source"
        side = side_of(rule.source if on_source else rule.destination, self.fw, self.family)
        left_out = firewall_left_out(side, self.fw, stage)
        if not left_out:
            return None
        return on_source, firewall_match(left_out, self.family, self.fw_order)

    # -- assembly ------------------------------------------------------------------------
    def build(self) -> NodeRuleset:
        self.automatic_rules()
        self.stateful_core()
        self.filter_rules()
        for rule in self.cluster.nat:
            if self.applies(rule):
                self.nat_rule(rule)
        self.default_rules()
        t = self.tables
        filter_chains = [Chain(name, self.chain_policy(name, policy), tuple(t.filter[name]))
                         for name, policy in FILTER_POLICIES]
        mark_chain = Chain(MARK_ACCEPT_CHAIN, None, (
            FilterRule(Match(), Target.CONNMARK, Origin("auto", "fwc auto: replicated mark"),
                       (("set-xmark", self.mark),)),
            FilterRule(Match(), Target.ACCEPT, Origin("auto", "fwc auto: replicated mark")),
        ))
        filter_chains.append(mark_chain)
        filter_chains.extend(Chain(name, None, tuple(rules))
                             for name, rules in t.filter_user.items())
        tables = []
        if any(t.raw.values()):
            raw_chains = [Chain(name, Target.ACCEPT, tuple(t.raw[name])) for name in RAW_CHAINS]
            raw_chains.extend(Chain(name, None, tuple(rules)) for name, rules in t.raw_user.items())
            tables.append(Table(TableName.RAW, tuple(raw_chains)))
        mss = self.mss_rules()
        if mss:
            tables.append(Table(TableName.MANGLE, tuple(
                Chain(name, Target.ACCEPT, tuple(mss) if name is BuiltinChain.FORWARD else ())
                for name in MANGLE_CHAINS)))
        if any(t.nat.values()):
            nat_chains = [Chain(name, Target.ACCEPT, tuple(t.nat[name])) for name in NAT_CHAINS]
            nat_chains.extend(Chain(name, None, tuple(rules)) for name, rules in t.nat_user.items())
            tables.append(Table(TableName.NAT, tuple(nat_chains)))
        tables.append(Table(TableName.FILTER, tuple(filter_chains)))
        return NodeRuleset(self.cluster.name, self.member.name, self.family, tuple(tables))


def chain_policy_of(cluster: Cluster, chain: ChainName, fallback: Target) -> Target:
    """A filter chain's kernel policy: DROP unless its default accepts (reject: DROP,
    after the REJECT rules at its end)."""
    name = DEFAULT_OF.get(chain)  # type: ignore[call-overload]
    if name is None:
        return fallback
    return Target.ACCEPT if cluster.defaults.of(name) is FilterAction.ACCEPT else Target.DROP


def lower(cluster: Cluster, member: Member, family: int,
          options: LowerOptions | None = None) -> NodeRuleset:
    """The member's ruleset for one address family. Pure: same input, same output."""
    options = options or LowerOptions()
    if not cluster.owns(member):
        return _Lowering(cluster, member, family, options).build()
    # Checks (parity) and the compiler lower the same clusters in one run: the result is
    # memoised on the cluster, so it is shared within the run and dies with its model;
    # so are the rule lowerings its members share.
    shared = cluster.memo.get(("lower-shared", family, options),
                              lambda: SharedLowering(cluster, family, rule_keys(cluster)))
    return cluster.memo.get(_memo_key(member, family, options),
                            lambda: _Lowering(cluster, member, family, options, shared).build())


def lower_rule(cluster: Cluster, member: Member, family: int, options: LowerOptions,
               position: int) -> dict[str, dict[ChainName, list[Rule]]]:
    """The lines the policy rule at POSITION of cluster.rules adds to the member's ruleset
    of FAMILY, by table (`_Tables` attribute: raw, raw_user, filter, filter_user) and chain,
    its conntrack helpers included: what `filter_rules` adds for it (`one_rule`), lowered
    alone (a patch compile of an edit of that rule, fwc.backend.patch). Only the rule's
    own sides and services are numbered (0, 1 and 0), so nothing is made for the others."""
    lowering = _Lowering(cluster, member, family, options)
    rule = cluster.rules[position]
    by_name = {"raw": lowering.tables.raw, "raw_user": lowering.tables.raw_user,
               "filter": lowering.tables.filter, "filter_user": lowering.tables.filter_user}
    if rule.only is not None and rule.only != member.name:
        return by_name
    lowering.sides = [None, None]
    lowering.service_memo = [_UNKNOWN]
    lowering.helped = [any(s.helper is not None for s in rule.services)]
    lowered = lowering.rule_lowering(rule, lowering.fw, lowering.sides, (0, 1, 0))
    if lowered is not _NOTHING:
        lowering.add_lowered(rule, lowered, by_name)
    return by_name


def _memo_key(member: Member, family: int, options: LowerOptions) -> tuple[object, ...]:
    return ("lower", member.name, family, options)


def forget_lowered(cluster: Cluster, member: Member, options: LowerOptions | None = None) -> None:
    """Drop the member's memoised rulesets once its files are built: a 100,000-rule policy
    would otherwise keep every member's rulesets alive until the compile ends."""
    options = options or LowerOptions()
    for family in (4, 6):
        cluster.memo.drop(_memo_key(member, family, options))
