"""Checks of the rule vocabulary (issue 15): reject types, logging, limits, notrack, NAT
pools, MSS and conntrackd tuning (what the nftables backend cannot write yet, FWC429,
is with the other backend capabilities in fwc.checks.capability).

Rules FWC405-FWC429, conntrackd and cluster FWC270-FWC281. Each check is small and
reports at the option that is wrong (`BaseRule.span_of`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from fwc import protocols as proto
from fwc.backend.lower.build import filter_parts
from fwc.checks import check
from fwc.checks.rules import FILTER_HOOKS, flow_of, overlaps
from fwc.diagnostics import Diagnostic, Related, Severity, error, warning
from fwc.model import Cluster, Endpoint, FilterRule, NatRule, Policy
from fwc.model.addresses import AddressSet
from fwc.model.vocabulary import BuiltinChain, FilterAction, NatAction

E, W = Severity.ERROR, Severity.WARNING
PORT_PROTOCOLS = frozenset(proto.IP_PROTOCOLS[p] for p in proto.PORT_PROTOCOLS)
TCP = proto.IP_PROTOCOLS["tcp"]


def _filter_rules(policy: Policy) -> Iterator[tuple[Cluster, FilterRule]]:
    for cluster in policy.clusters:
        for rule in cluster.rules:
            yield cluster, rule


def _chains(cluster: Cluster, rule: FilterRule) -> set[str]:
    """The filter chains the rule's traffic is placed in, on any member, in any family."""
    out: set[str] = set()
    for member in cluster.members:
        if rule.only is not None and rule.only != member.name:
            continue
        fw = cluster.firewall_addresses(member)
        for family in (4, 6):
            out |= {str(p.chain) for p in filter_parts(rule, fw.only(family), family)}
    return out


# -- reject types -----------------------------------------------------------------------
@check("FWC405", "reject type on a rule that does not reject", E, """
`with TYPE` chooses how a `reject` rule answers (a TCP reset, an ICMP unreachable
code). On an accept or drop rule nothing is answered, so the option would be
silently meaningless: it is refused.""")
def reject_type_without_reject(policy: Policy) -> Iterable[Diagnostic]:
    for _cluster, rule in _filter_rules(policy):
        if rule.reject_with is not None and rule.action is not FilterAction.REJECT:
            yield error("FWC405", f"'with {rule.reject_with}' on a '{rule.action}' rule",
                        rule.span_of("with"), hint="write 'reject ... with TYPE', or remove "
                        "'with'")


@check("FWC406", "tcp-reset for traffic that is not TCP", E, """
A TCP reset answers TCP only: iptables refuses `--reject-with tcp-reset` without
`-p tcp`, and there is nothing to reset in UDP or ICMP. Without `with`, fwc already
answers TCP with a reset and every other protocol with an ICMP port unreachable;
`with tcp-reset` therefore needs a rule whose services are all TCP.""")
def tcp_reset_only_tcp(policy: Policy) -> Iterable[Diagnostic]:
    for _cluster, rule in _filter_rules(policy):
        if rule.reject_with != proto.REJECT_TCP:
            continue
        if not rule.services or any(s.number != TCP for s in rule.services):
            yield error("FWC406", "'with tcp-reset' on a rule that also matches other "
                        "protocols than TCP", rule.span_of("with"),
                        hint="remove 'with' (TCP gets a reset, the rest port unreachable), "
                        "or restrict the rule to TCP services")


# -- logging ---------------------------------------------------------------------------
@check("FWC407", "log level with an NFLOG group", E, """
`group N` sends the logged packets to userspace (ulogd) through NFLOG, which has
no syslog level: the level would be silently ignored. Set the level where the
messages are written (ulogd's configuration), or log to the kernel log without
`group`.""")
def log_level_with_group(policy: Policy) -> Iterable[Diagnostic]:
    for cluster, rule in _filter_rules(policy):
        if not rule.log or rule.log_options.level is None:
            continue
        if cluster.logging.effective(rule.log_options).group is not None:
            yield error("FWC407", f"log level '{rule.log_options.level}' has no meaning with "
                        "an NFLOG group", rule.span_of("log-level"),
                        hint="remove 'level', or log without 'group'")
    for cluster in policy.clusters:
        if cluster.logging.group is not None and cluster.logging.option_spans.get(
                "log-level") is not None:
            yield error("FWC407", "the log level has no meaning with an NFLOG group",
                        cluster.logging.span_of("log-level"),
                        hint="remove 'level', or remove 'group'")


# -- limits ------------------------------------------------------------------------------
@check("FWC408", "limit on a rule that does not accept", W, """
`limit` and `connlimit` make a rule apply only up to the limit; beyond it, the
packets go on to the rules after it. On a drop or reject rule that means the
traffic is dropped while it is slow and passed on when it floods, which is
rarely meant. Accept up to the limit instead and let a later rule drop the rest:
`accept ... connlimit 10` followed by `drop ...`.""")
def limit_on_non_accept(policy: Policy) -> Iterable[Diagnostic]:
    for _cluster, rule in _filter_rules(policy):
        if rule.conditional and rule.action is not FilterAction.ACCEPT:
            key = "limit" if rule.limit is not None else "connlimit"
            yield warning("FWC408", f"'{key}' on a '{rule.action}' rule: it {rule.action}s "
                          "only up to the limit, the rest goes on to the later rules",
                          rule.span_of(key), hint=f"write 'accept ... {key} ...' and "
                          f"{rule.action} what is beyond it in a later rule")


@check("FWC409", "syn-limit without accepted TCP", E, """
`syn-limit RATE` protects a service against SYN floods: connection attempts
beyond the rate are dropped before the rule accepts them. It only means
something on an accept rule whose services include TCP.""")
def syn_limit_needs_tcp(policy: Policy) -> Iterable[Diagnostic]:
    for _cluster, rule in _filter_rules(policy):
        if rule.syn_limit is None:
            continue
        if rule.action is not FilterAction.ACCEPT:
            yield error("FWC409", f"'syn-limit' on a '{rule.action}' rule",
                        rule.span_of("syn-limit"), hint="put it on the accept rule of the "
                        "service it protects")
        elif rule.services and not any(s.number == TCP for s in rule.services):
            yield error("FWC409", "'syn-limit' on a rule without TCP services",
                        rule.span_of("syn-limit"), hint="SYN floods are TCP: remove it, or "
                        "use 'limit' for other protocols")


# -- notrack -----------------------------------------------------------------------------
@check("FWC410", "notrack on a rule that does not accept", E, """
`notrack` exempts an accepted flow from connection tracking (the raw table):
every packet of it, in both directions, is then decided by the rules alone. On
a drop or reject rule it would only cost conntrack's bookkeeping for nothing and
make the dropped packets invisible to `conntrack -E`: refused.""")
def notrack_only_accept(policy: Policy) -> Iterable[Diagnostic]:
    for _cluster, rule in _filter_rules(policy):
        if rule.notrack and rule.action is not FilterAction.ACCEPT:
            yield error("FWC410", f"'notrack' on a '{rule.action}' rule",
                        rule.span_of("notrack"), hint="remove it: only accepted traffic is "
                        "worth exempting from tracking")


@check("FWC411", "notrack cannot see the outgoing interface", E, """
The raw table where `notrack` works sees forwarded and incoming packets before
routing (PREROUTING): the outgoing interface is not known yet. fwc would have to
drop `out IFACE` and exempt more traffic than written. Match the destination
address instead.""")
def notrack_out_interface(policy: Policy) -> Iterable[Diagnostic]:
    for cluster, rule in _filter_rules(policy):
        if rule.notrack and rule.out_interface is not None \
                and str(BuiltinChain.FORWARD) in _chains(cluster, rule):
            yield error("FWC411", "'notrack' with 'out': the raw table does not know the "
                        "outgoing interface of forwarded traffic", rule.span_of("notrack"),
                        hint="remove 'out' and match the destination addresses instead")


def _notrack_flows(cluster: Cluster) -> list[tuple[FilterRule, object]]:
    firewall = cluster.all_member_addresses | cluster.vips
    return [(r, flow_of(r, FILTER_HOOKS, firewall)) for r in cluster.rules if r.notrack]


def _segments_except(cluster: Cluster, interface: str) -> AddressSet:
    return AddressSet.union([AddressSet.of(a.network) for m in cluster.members
                             for link in m.links if link.interface != interface
                             for a in link.addresses])


def _routed_elsewhere(cluster: Cluster, rule: FilterRule, nat: NatRule) -> bool:
    """RULE's traffic never crosses NAT's interface: its destination (for `out`) or
    source (for `in`) lies on the segments of other interfaces."""
    for iface, side in ((nat.out_interface, rule.destination), (nat.in_interface, rule.source)):
        if iface is None or side.is_any or side.firewall:
            continue
        if not side.addresses - _segments_except(cluster, iface):
            return True
    return False


@check("FWC412", "notrack on translated traffic", E, """
NAT works on tracked connections only: the kernel translates the first packet of
a connection and applies the mapping to the rest from the conntrack entry. An
untracked packet is never translated, so a dnat or snat rule that covers
`notrack` traffic silently stops working for it.""")
def notrack_nat(policy: Policy) -> Iterable[Diagnostic]:
    for cluster in policy.clusters:
        notracked = _notrack_flows(cluster)
        if not notracked:
            continue
        firewall = cluster.all_member_addresses | cluster.vips
        for nat in cluster.nat:
            if nat.action is NatAction.NONAT:
                continue
            flow = flow_of(nat, FILTER_HOOKS, firewall)
            for rule, notrack_flow in notracked:
                if _routed_elsewhere(cluster, rule, nat):
                    continue
                if overlaps(flow, notrack_flow):  # type: ignore[arg-type]
                    yield error("FWC412", f"'notrack' traffic is also translated by the "
                                f"{nat.action} rule at line {nat.span.line}: untracked "
                                "packets are never translated", rule.span_of("notrack"),
                                hint="remove 'notrack', or exempt the traffic from NAT with "
                                "'nonat'", related=[Related(nat.span, "translates it here")])
                    break


@check("FWC413", "notrack on forwarded traffic the sync would cover", W, """
conntrackd replicates tracked connections only. Forwarded traffic exempted with
`notrack` has no state to replicate, so after a failover it survives only if the
rules accept every packet of it statelessly: the replies need an accept rule of
their own (with `notrack` too). That is right for stateless protocols (DNS to a
busy resolver, NTP); for TCP it loses the protections of tracking.""")
def notrack_forwarded(policy: Policy) -> Iterable[Diagnostic]:
    for cluster, rule in _filter_rules(policy):
        if not rule.notrack or cluster.sync.link is None:
            continue
        if str(BuiltinChain.FORWARD) not in _chains(cluster, rule):
            continue
        if not rule.services or any(s.number == TCP for s in rule.services):
            yield warning("FWC413", "'notrack' on forwarded TCP: conntrackd cannot replicate "
                          "it, and the rules lose the connection state", rule.span_of("notrack"),
                          hint="keep TCP tracked; notrack suits stateless protocols (DNS, NTP)")
        elif not any(_replies(other, rule) for other in cluster.rules if other.notrack
                     and other.action is FilterAction.ACCEPT):
            yield warning("FWC413", "'notrack' on forwarded traffic whose replies no "
                          "'notrack' accept rule covers: they are not ESTABLISHED and are "
                          "dropped", rule.span_of("notrack"),
                          hint=f"add 'accept from {rule.destination.label} to "
                          f"{rule.source.label} notrack' for the replies")


def _meets(a: Endpoint, b: Endpoint) -> bool:
    return a.is_any or b.is_any or bool(a.addresses & b.addresses)


def _replies(other: FilterRule, rule: FilterRule) -> bool:
    """OTHER accepts (some of) the replies of RULE's traffic: the sides swapped."""
    return other is not rule and _meets(other.source, rule.destination) \
        and _meets(other.destination, rule.source)


# -- NAT pools and ports --------------------------------------------------------------------
@check("FWC414", "NAT port without a port protocol", E, """
Translating a port (`-> ADDRESS:PORT`, `-> ADDRESS:LOW-HIGH`) works for TCP, UDP,
SCTP and DCCP only: iptables refuses a port in SNAT or DNAT unless the rule
matches one of them (`-p tcp`), and other protocols have no port. Restrict the
NAT rule to such services.""")
def nat_port_protocol(policy: Policy) -> Iterable[Diagnostic]:
    for cluster in policy.clusters:
        for rule in cluster.nat:
            ported = [t for t in rule.targets if t.port is not None]
            if not ported:
                continue
            if not rule.services or any(s.number not in PORT_PROTOCOLS for s in rule.services):
                yield error("FWC414", "a NAT port needs TCP, UDP, SCTP or DCCP services",
                            ported[0].span, hint="add 'service tcp/PORT' (or udp, ...) to the "
                            "rule")


def _reachable(cluster: Cluster, addresses: AddressSet) -> bool:
    """Every address is a VIP or inside a subnet some member is connected to."""
    connected = [AddressSet.of(a.network) for m in cluster.members for link in m.links
                 for a in link.addresses]
    connected += [AddressSet.of(v.network) for i in cluster.interfaces for v in i.vips]
    rest = addresses - cluster.vips
    for net in connected:
        rest = rest - net
    return not rest


@check("FWC415", "DNAT target neither a VIP nor on a connected segment", W, """
A dnat target (a backend) should be a VIP or an address on one of the cluster's
segments. Anything else is reached through a router the policy does not
describe: fwc cannot tell whether both members reach it, and a typo in a backend
address is not caught.""")
def dnat_target_reachable(policy: Policy) -> Iterable[Diagnostic]:
    for cluster in policy.clusters:
        for rule in cluster.nat:
            if rule.action is not NatAction.DNAT:
                continue
            for target in rule.targets:
                if not _reachable(cluster, target.addresses):
                    yield warning("FWC415", f"dnat target '{target.label}' is neither a VIP "
                                  "nor on a segment of the cluster", target.span,
                                  hint="check the address; a backend behind a router must be "
                                  "reachable from both members")


@check("FWC416", "SNAT address that is not a VIP", W, """
The addresses a snat rule translates to must move with a failover: the peer
replicates the translated connections, and only answers for them when it holds
the address. A member's own address, or any address that is not a VIP, stays
behind, and every translated session dies on failover. Translate to VIPs (a
range of VIPs for a pool).""")
def snat_to_vip(policy: Policy) -> Iterable[Diagnostic]:
    for cluster in policy.clusters:
        for rule in cluster.nat:
            if rule.action is not NatAction.SNAT or rule.target is None:
                continue
            rest = rule.target.addresses - cluster.vips
            if rest:
                yield warning("FWC416", f"snat to '{rule.target.label}': "
                              f"{rest.cidrs(rest.families and min(rest.families) or 4)[0]} is "
                              "not a VIP and does not move on failover", rule.target.span,
                              hint="translate to IFACE.vip, or declare the pool's addresses "
                              "as VIPs of the outgoing interface")


# -- conntrackd ---------------------------------------------------------------------------
@check("FWC270", "backup sync link unusable", E, """
`backup-link IFACE` gives conntrackd a second dedicated link to fail over to when
the first one fails. It must be another declared interface, dedicated like the
sync link (no VIP, named by no rule: conntrackd has no authentication), on which
every member has an IPv4 address.""")
def backup_link(policy: Policy) -> Iterable[Diagnostic]:
    for cluster in policy.clusters:
        sync = cluster.sync
        name = sync.backup_link
        if name is None:
            continue
        span = sync.span_of("backup-link") or cluster.span
        iface = cluster.interface(name)
        if name == sync.link:
            yield error("FWC270", f"backup link '{name}' is the sync link itself", span,
                        hint="name a second dedicated interface")
        elif iface is None:
            yield error("FWC270", f"backup link '{name}' is not an interface of cluster "
                        f"'{cluster.name}'", span, hint=f"declare 'interface {name}'")
        elif iface.vips:
            yield error("FWC270", f"backup link '{name}' carries a VIP", iface.span,
                        hint="the sync links are dedicated: move the VIP")
        elif sync.link is None:
            yield error("FWC270", "a backup link without a sync link", span,
                        hint="write 'link IFACE' first")
        else:
            for rule in cluster.all_rules():
                if name in (rule.in_interface, rule.out_interface):
                    yield error("FWC270", f"rule uses the backup sync link '{name}'", rule.span,
                                hint="the sync links are reserved for conntrackd")
            for member in cluster.members:
                link = member.link(name)
                if link is not None and not any(a.version == 4 for a in link.addresses):
                    yield error("FWC270", f"member '{member.name}' has no IPv4 address on the "
                                f"backup link '{name}'", link.span,
                                hint="conntrackd binds to an IPv4 address on each link")


@check("FWC271", "backup link on the sync link's port", E, """
conntrackd wants each dedicated link on its own multicast group or port
(several links on one group and port would receive each other's messages). The
backup link uses the sync port + 1 unless `port N` follows it; it must differ
from the sync link's port, and with the sync port 65535 the backup link needs its
own `port N`: conntrackd reads `Group 65536` without complaint and uses another
port than the one written.""")
def backup_port(policy: Policy) -> Iterable[Diagnostic]:
    for cluster in policy.clusters:
        sync = cluster.sync
        if sync.backup_link is None:
            continue
        port = sync.port_of(sync.backup_link)
        if port == sync.port:
            yield error("FWC271", f"backup link port {sync.port} is the sync port",
                        sync.span_of("backup-port") or sync.span or cluster.span,
                        hint=f"use another port, e.g. 'port {sync.port + 1}'")
        elif port > proto.PORT_MAX:
            yield error("FWC271", f"the backup link's port would be the sync port + 1, "
                        f"{port}, which is no port", sync.span_of("backup-link") or sync.span
                        or cluster.span,
                        hint=f"give the backup link its own port: 'backup-link "
                        f"{sync.backup_link} port N', N at most {proto.PORT_MAX}")


@check("FWC272", "external-cache off in alarm mode", E, """
conntrackd's ALARM mode has no `DisableExternalCache` clause: its parser
refuses the file ("symbol 'DisableExternalCache': syntax error") and the daemon
does not start. `external-cache off` works with `mode ftfw` and `mode notrack`.""")
def external_cache_mode(policy: Policy) -> Iterable[Diagnostic]:
    for cluster in policy.clusters:
        sync = cluster.sync
        if not sync.external_cache and sync.mode == "alarm":
            yield error("FWC272", "'external-cache off' with 'mode alarm': conntrackd refuses "
                        "it", sync.span_of("external-cache") or cluster.span,
                        hint="remove it, or use 'mode ftfw'")


@check("FWC273", "TCP states filtered without TCP", W, """
`states ...` keeps conntrackd to TCP connections in those states (`State Accept {
... for TCP }`). When `protocols` leaves TCP out, no TCP connection is replicated
at all and the state filter means nothing.""")
def states_need_tcp(policy: Policy) -> Iterable[Diagnostic]:
    for cluster in policy.clusters:
        sync = cluster.sync
        if sync.states and sync.protocols and "tcp" not in sync.protocols:
            yield warning("FWC273", "'states' filters TCP, but 'protocols' leaves TCP out",
                          sync.span_of("states") or cluster.span,
                          hint="add tcp to 'protocols', or remove 'states'")


@check("FWC280", "TCP states filtered without the end of a connection", W, """
`states ...` replicates TCP connections only in those states, their end included:
a connection that is closed or times out in a state left out is never removed from
the peer's conntrackd external cache, which has no timeout of its own (FTFW). Such
connections pile up there (every reset one, with `close` left out) until the cache
is full and new ones are no longer replicated, and the peer's next failover commits
them all into its kernel table as live connections, where they take slots for their
whole replicated timeout (measured with two conntrackd: a reset and destroyed
connection stayed in the peer's cache and was committed ESTABLISHED). So once a
state is replicated, every state a connection can reach after it must be too: from
the first state listed, all of `syn-sent, syn-recv, established, fin-wait,
close-wait, last-ack, time-wait, close` after it (leaving out the first ones, for a
lazier replica, is safe).""")
def states_keep_the_end(policy: Policy) -> Iterable[Diagnostic]:
    for cluster in policy.clusters:
        sync = cluster.sync
        order = proto.SYNC_TCP_STATE_ORDER
        listed = [order.index(s) for s in sync.states if s in order]
        if not listed:
            continue
        missing = [s for s in order[min(listed):] if s not in sync.states]
        if missing:
            yield warning("FWC280", f"'states' leaves out {', '.join(missing)}: a replicated "
                          "connection that ends there stays in the peer's external cache and "
                          "is committed as live at its next failover",
                          sync.span_of("states") or cluster.span,
                          hint=f"add {', '.join(missing)} to 'states'")


@check("FWC281", "helper whose related connections are not replicated", W, """
conntrackd replicates TCP, UDP, UDP-Lite, SCTP, DCCP, ICMP and ICMPv6 connections
(conntrack-tools' payload builders), nothing else. The `pptp` helper's tunnels carry
their data as GRE connections related to the control connection: the control
connection is replicated, the GRE is not, so after a failover the new master has no
state for the tunnel's GRE, it is no longer RELATED, and the default drop takes it:
every PPTP tunnel through the cluster breaks at a failover, while `check` and the
replicated control connection suggest otherwise. A rule of its own that accepts GRE
between the same endpoints lets the new master take that GRE as new connections
(without NAT of the tunnel).""")
def helper_data_replicated(policy: Policy) -> Iterable[Diagnostic]:
    for cluster in policy.clusters:
        if cluster.sync.link is None:
            continue
        for rule in cluster.rules:
            if rule.action is not FilterAction.ACCEPT or rule.notrack:
                continue
            helpers = sorted({s.helper for s in rule.services
                              if s.helper in proto.UNREPLICATED_HELPER_DATA})
            if not helpers or str(BuiltinChain.FORWARD) not in _chains(cluster, rule):
                continue
            for helper in helpers:
                yield warning("FWC281", f"conntrackd does not replicate "
                              f"{proto.UNREPLICATED_HELPER_DATA[helper]} (helper {helper}): "
                              "they are dropped by the new master at a failover", rule.span,
                              hint="accept GRE between the same endpoints with a rule of its "
                              "own, so that the new master takes it as new connections")


@check("FWC274", "forwarded protocol not replicated", W, """
`protocols ...` limits what conntrackd replicates. A protocol the policy accepts
for forwarding that is left out keeps no state across a failover: its
connections are dropped by the new master (they are not ESTABLISHED there).""")
def protocols_cover_policy(policy: Policy) -> Iterable[Diagnostic]:
    for cluster in policy.clusters:
        kept = set(cluster.sync.protocols)
        if not kept:
            continue
        names = {v: k for k, v in proto.IP_PROTOCOLS.items()}
        for rule in cluster.rules:
            if rule.action is not FilterAction.ACCEPT or rule.notrack:
                continue
            if str(BuiltinChain.FORWARD) not in _chains(cluster, rule):
                continue
            numbers = {s.number for s in rule.services} if rule.services else \
                {proto.IP_PROTOCOLS[p] for p in proto.SYNC_PROTOCOL_NAMES}
            missing = sorted(names[n] for n in numbers
                             if names.get(n) in proto.SYNC_PROTOCOL_NAMES and names[n] not in kept)
            if missing:
                yield warning("FWC274", f"{', '.join(missing)} forwarded here is not in the "
                              "sync 'protocols': its connections do not survive a failover",
                              rule.span, hint=f"add {', '.join(missing)} to 'protocols'",
                              related=[Related(cluster.sync.span_of("protocols")
                                               or cluster.span, "protocols listed here")])
                break


@check("FWC275", "more hash buckets than connections", W, """
`hash-size` sets the connection table's hash buckets (and conntrackd's HashSize),
`conntrack-max` its entries. More buckets than entries only costs memory; the
kernel's own default is one bucket per several entries.""")
def hash_size_vs_max(policy: Policy) -> Iterable[Diagnostic]:
    for cluster in policy.clusters:
        sync = cluster.sync
        maximum = sync.conntrack_max or proto.NF_CONNTRACK_MAX
        if sync.hash_size is not None and sync.hash_size > maximum:
            yield warning("FWC275", f"hash-size {sync.hash_size} is larger than conntrack-max "
                          f"{maximum}", sync.span_of("hash-size") or cluster.span,
                          hint="use at most conntrack-max buckets, e.g. a quarter of it")

