"""Cluster checks (FWC2xx): members, segments, VIPs, VRRP and conntrackd sync.

Each one guards against a way an HA pair silently fails: both nodes master, a
VIP nobody can reach, a state sync that never happens (docs/ha-pitfalls.md explains
the failures; each check's rationale says which one it prevents).
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from collections.abc import Iterable, Iterator

from fwc import protocols as proto
from fwc.backend.render.keepalived import instance_name
from fwc.checks import check, describe
from fwc.diagnostics import Diagnostic, Related, Severity, Span, error, warning
from fwc.model import Cluster, Interface, IPInterface, Member, Policy
from fwc.model.passwords import password_problems
from fwc.model.topology import AddressPlace, address_place, link_scoped, one_segment, subnet_role
from fwc.model.vocabulary import FilterAction

E, W = Severity.ERROR, Severity.WARNING

# Codes emitted by the resolver; registered here because they are cluster codes.
describe("FWC204", "VRID out of range or missing", E, """
A VRRP virtual router id is 1-255 (RFC 3768/5798), and an interface with VIPs
needs one: its own `vrid N` or the cluster-wide `vrid` in `vrrp { }`.""")
describe("FWC206", "address without prefix length", E, """
A VIP or member address written without a prefix. keepalived installs a VIP
without a prefix as a /32 (or /128), so hosts on the segment lose the on-link
route to it; members need the prefix to define the segment's subnet.""")
describe("FWC209", "priority out of range, missing or two masters", E, """
Every member needs a priority 1-254 (255 means "address owner" to VRRP and is
avoided) or `master`, which is the highest other priority + 50, capped at 254.
Only one member can be `master`.""")
describe("FWC215", "sync mark bit out of range", E, """
The conntrack mark bit fwc reserves for its own bookkeeping is one of the 32 bits
of the mark (0-31). ct marks are replicated by conntrackd, so the bit means the
same thing on every member.""")
describe("FWC520", "ssh target is not a plain [user@]host", E, """
`fwc install` and `fwc diff --installed` hand a member's `ssh "..."` target to
ssh. A target such as "-oProxyCommand=..." would be read as an ssh option and
run a command on the machine running fwc, so only a user name and a host name,
ssh alias or IP address are accepted (and the transport passes it after `--`).
ssh options belong in `--ssh "ssh -o ..."` or ~/.ssh/config.""")


def _clusters(policy: Policy) -> Iterator[Cluster]:
    yield from policy.clusters


def address_spans(member: Member, interface: str) -> list[tuple[IPInterface, Span]]:
    link = member.link(interface)
    if link is None:
        return []
    spans = list(link.address_spans) + [link.span] * (len(link.addresses) - len(link.address_spans))
    return list(zip(link.addresses, spans, strict=True))


def vip_spans(iface: Interface) -> list[tuple[IPInterface, Span]]:
    spans = list(iface.vip_spans) + [iface.span] * (len(iface.vips) - len(iface.vip_spans))
    return list(zip(iface.vips, spans, strict=True))


def _family_name(family: int) -> str:
    return "IPv4" if family == 4 else "IPv6"


@check("FWC201", "fewer than two members", E, """
A cluster exists to survive the loss of a node: with one member there is nothing
to fail over to, and VRRP and conntrackd are configured for nothing. Declare at
least two `member` blocks.""")
def too_few_members(policy: Policy) -> Iterable[Diagnostic]:
    for cluster in _clusters(policy):
        if len(cluster.members) < 2:
            yield error("FWC201", f"cluster '{cluster.name}' has {len(cluster.members)} "
                        "member(s); an HA cluster needs at least two", cluster.span,
                        hint="add a second 'member NAME priority N { ... }'")


@check("FWC202", "interface not mapped by every member", E, """
Every member must map every logical interface of the cluster to one of its
devices: a rule `in lan` or a VIP on `lan` means nothing on a member without a
`lan` device, and a failover to it would lose that segment. Two logical
interfaces mapped to one device of a member are also refused: their rules and
VRRP instances would collide on that device.""")
def unmapped_interfaces(policy: Policy) -> Iterable[Diagnostic]:
    for cluster in _clusters(policy):
        for member in cluster.members:
            for iface in cluster.interfaces:
                if member.link(iface.name) is None:
                    yield error("FWC202", f"member '{member.name}' does not map interface "
                                f"'{iface.name}'", member.span,
                                hint=f"add '{iface.name} DEVICE ADDRESS/PREFIX' to member "
                                f"'{member.name}'",
                                related=[Related(iface.span, "interface declared here")])
            devices: dict[str, str] = {}
            for link in member.links:
                if link.device in devices:
                    yield error("FWC202", f"member '{member.name}' maps interfaces "
                                f"'{devices[link.device]}' and '{link.interface}' to the same "
                                f"device '{link.device}'", link.span,
                                hint="give each logical interface its own device (or VLAN)")
                else:
                    devices[link.device] = link.interface


def segment_subnet(cluster: Cluster, iface: Interface, family: int,
                   link_local: bool = False) \
        -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    """The subnet of a segment in one family: the one most of its members and VIPs are in.

    LINK_LOCAL picks the IPv6 link-local addresses (fe80::/10) instead of the others:
    a link has both, each its own subnet, and neither is wrong for being outside the
    other's. Ties go to the VIP, then to the first member, so that one wrong address
    is reported as wrong instead of making every other address look wrong.
    """
    votes: Counter[ipaddress.IPv4Network | ipaddress.IPv6Network] = Counter()
    order: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
    candidates: list[IPInterface] = list(iface.vips_of(family))
    for member in cluster.members:
        candidates += [a for a, _ in address_spans(member, iface.name) if a.version == family]
    for network in (a.network for a in candidates if link_scoped(a.ip) == link_local):
        votes[network] += 1
        if network not in order:
            order.append(network)
    if not order:
        return None
    return max(order, key=lambda n: (votes[n], -order.index(n)))


def subnet_of(cluster: Cluster, iface: Interface, address: IPInterface) \
        -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    """The segment's subnet ADDRESS (a member's or a VIP on IFACE) must be in: the
    link-local one for an IPv6 link-local address, the other one for the rest."""
    return segment_subnet(cluster, iface, address.version, link_scoped(address.ip))


@check("FWC203", "member address outside its segment's subnet", E, """
All members on a segment must have an address in the same subnet. The segment's
subnet is the one most of its member addresses and VIPs agree on (ties go to the
VIP, then to the first member), so that one wrong address is the one reported.
A member outside it cannot exchange VRRP adverts with the others (they are sent
from the primary address, TTL 255, to a link-local group) and cannot reach the
hosts behind the VIP after a failover. A member also needs an address of each family
its interface has a VIP in, for the VRRP instance of that family. IPv6 link-local
addresses and VIPs (fe80::/10) are held to the segment's link-local subnet (fe80::/64)
and the others to the other one: every IPv6 link has both.""")
def member_subnets(policy: Policy) -> Iterable[Diagnostic]:
    for cluster in _clusters(policy):
        for iface in cluster.interfaces:
            for family in (4, 6):
                network = segment_subnet(cluster, iface, family) \
                    or segment_subnet(cluster, iface, family, link_local=True)
                if network is None:
                    continue
                for member in cluster.members:
                    if member.link(iface.name) is None:
                        continue  # FWC202
                    own = [(a, sp) for a, sp in address_spans(member, iface.name)
                           if a.version == family]
                    if not own and iface.vips_of(family):
                        yield error("FWC203", f"member '{member.name}' has no "
                                    f"{_family_name(family)} address on '{iface.name}', which "
                                    f"has a {_family_name(family)} VIP",
                                    member.link(iface.name).span,  # type: ignore[union-attr]
                                    hint=f"add an address in {network}")
                    for address, span in own:
                        subnet = subnet_of(cluster, iface, address)
                        if subnet is not None and address.network != subnet:
                            yield error("FWC203", f"member '{member.name}' address {address} "
                                        f"on '{iface.name}' is not in the segment's subnet "
                                        f"{subnet}", span,
                                        hint=f"use an address in {subnet} with prefix "
                                        f"/{subnet.prefixlen}")


@check("FWC205", "address used twice", E, """
Member addresses must be distinct: two members with the same address on a
segment answer ARP for each other, and VRRP sees its own adverts as a peer's.
An address of one member is also never reused on another interface. IPv6
link-local addresses (fe80::/10) are distinct per link: the same fe80::1 on two
interfaces is two addresses (the kernel tells them apart by the device, the zone
of `fe80::1%eth0`), and only two members with one of them on one segment clash.""")
def duplicate_member_addresses(policy: Policy) -> Iterable[Diagnostic]:
    for cluster in _clusters(policy):
        seen: dict[AddressPlace, tuple[str, str, Span]] = {}
        for member in cluster.members:
            for link in member.links:
                for address, span in address_spans(member, link.interface):
                    place = address_place(address.ip, link.interface)
                    first = seen.get(place)
                    if first is None:
                        seen[place] = (member.name, link.interface, span)
                        continue
                    yield error("FWC205", f"address {address.ip} of member '{member.name}' "
                                f"is already used by member '{first[0]}' on '{first[1]}'",
                                span, hint="every member needs its own address",
                                related=[Related(first[2], "first used here")])


@check("FWC207", "VIP not a usable address of its segment", E, """
A VIP must lie inside the subnet of the members' addresses on its interface,
with the same prefix length, and must not be the network or broadcast address of
it (a link-local IPv6 VIP, which VRRPv3 wants first, inside the segment's
link-local subnet). keepalived accepts a VIP outside the subnet without complaint, but clients
cannot reach it; a wrong prefix installs a wrong on-link route on the master.""")
def vip_in_subnet(policy: Policy) -> Iterable[Diagnostic]:
    for cluster in _clusters(policy):
        for iface in cluster.interfaces:
            for vip, span in vip_spans(iface):
                subnet = subnet_of(cluster, iface, vip)
                if subnet is None:
                    continue
                if vip.ip not in subnet:
                    yield error("FWC207", f"VIP {vip} of '{iface.name}' is outside the "
                                f"segment's subnet {subnet}", span,
                                hint=f"pick a free address in {subnet}")
                elif vip.network.prefixlen != subnet.prefixlen:
                    yield error("FWC207", f"VIP {vip} of '{iface.name}' has prefix "
                                f"/{vip.network.prefixlen}, the segment's is /{subnet.prefixlen}",
                                span, hint=f"write {vip.ip}/{subnet.prefixlen}")
                elif (which := subnet_role(vip.ip, subnet)) is not None:
                    yield error("FWC207", f"VIP {vip} of '{iface.name}' is the {which} "
                                "address of its subnet", span,
                                hint="pick a host address of the subnet")


@check("FWC208", "VIP equal to a member address", E, """
A VIP moves between members; a member's own address does not. If they are equal,
the backup still answers for the address (its own), and the master's VRRP
instance would become the address owner: both nodes claim it. An IPv6 link-local
VIP clashes only with a member's link-local address on the same segment.""")
def vip_is_member_address(policy: Policy) -> Iterable[Diagnostic]:
    for cluster in _clusters(policy):
        owners: dict[AddressPlace, tuple[str, Span]] = {}
        for member in cluster.members:
            for link in member.links:
                for address, span in address_spans(member, link.interface):
                    owners.setdefault(address_place(address.ip, link.interface),
                                      (member.name, span))
        for iface in cluster.interfaces:
            for vip, span in vip_spans(iface):
                owner = owners.get(address_place(vip.ip, iface.name))
                if owner is not None:
                    yield error("FWC208", f"VIP {vip.ip} of '{iface.name}' is also the address "
                                f"of member '{owner[0]}'", span,
                                hint="give the VIP an address no member uses",
                                related=[Related(owner[1], "member address here")])


@check("FWC210", "VRID reused in one address family", E, """
Each VRRP instance needs a VRID that no other instance of the same address family
uses: keepalived refuses two instances with one VRID and family on an interface,
and on separate interfaces the virtual MAC (00:00:5e:00:01:VRID) is the same, so
two segments that end up on one switch or VLAN fight over it. fwc therefore
requires the VRID to be unique per family across the whole cluster. The IPv4
and the IPv6 instance of one interface may share a VRID (their virtual MACs
differ). A cluster-wide `vrid` in `vrrp { }` can therefore serve only one
interface; give the others their own `vrid N`.

Two clusters of one policy whose interfaces are on one segment (their subnets
overlap) need different VRIDs there too, as VRRP wants a VRID unique per LAN, when
both advertise by multicast: each cluster's members then hear the other's adverts
for the VRID and discard them (other VIPs, another password), and a discarded
advert shortens the backup's wait for its own master. Measured with keepalived
2.2.7 and two such pairs on one bridge: each backup took its cluster's VIPs for a
moment every three to four seconds, claiming them on the segment while its master
still held them. With `vrrp { unicast }` in either cluster the adverts of each go
to its own members only, and its rules take VRRP from them only. Link-local subnets
(fe80::/64, 169.254.0.0/16) are every link's own: an overlap there is no shared
segment.""")
def vrid_unique(policy: Policy) -> Iterable[Diagnostic]:
    for cluster in _clusters(policy):
        for family in (4, 6):
            seen: dict[int, Interface] = {}
            for iface in cluster.interfaces:
                if iface.vrid is None or not iface.vips_of(family):
                    continue
                first = seen.get(iface.vrid)
                if first is None:
                    seen[iface.vrid] = iface
                    continue
                yield error("FWC210", f"interfaces '{first.name}' and '{iface.name}' both use "
                            f"VRID {iface.vrid} for {_family_name(family)}", iface.span,
                            hint=f"give '{iface.name}' its own 'vrid N'",
                            related=[Related(first.span, f"'{first.name}' declared here")])
    yield from _vrids_shared_across_clusters(policy)


def virtual_link_local(vrid: int) -> ipaddress.IPv6Address:
    """The link-local address a device with VRRP's IPv6 virtual MAC 00:00:5e:00:02:VRID
    derives (modified EUI-64): one per VRID, and no member's own unless it uses that MAC."""
    return ipaddress.IPv6Address(f"fe80::200:5eff:fe00:2{vrid:02x}")


_ROUTER_DISCOVERY = frozenset((proto.ICMPV6_TYPES["router-solicitation"],
                               proto.ICMPV6_TYPES["router-advertisement"]))


def _router_discovery_rules(cluster: Cluster) -> list[tuple[frozenset[str], Span]]:
    """Where the policy accepts router solicitations or advertisements (ICMPv6 133, 134,
    named), in policy order, with the interfaces each rule is written for (none: every
    interface): the sign that the members advertise themselves as the segment's router
    (radvd) to hosts that take their default router from it. One pass over the rules,
    whatever the number of interfaces asked about."""
    found = []
    for rule in cluster.rules:
        if rule.action != FilterAction.ACCEPT or rule.only is not None:
            continue
        if any(s.protocol == "icmpv6" and s.icmp_type in _ROUTER_DISCOVERY
               for s in rule.services):
            sides = frozenset({rule.in_interface, rule.out_interface} - {None})
            found.append((sides, rule.span))
    return found


@check("FWC226", "router advertisements without a virtual link-local address", W, """
Hosts that take their default router from router advertisements (SLAAC, the default
of every IPv6 host) route through the advertisement's source, a link-local address,
never through a global VIP. When the members advertise (radvd) from their own
link-local addresses, each host picks one member and keeps it: traffic through the
backup is forwarded where no state is, its replies come back through the master, and
a failed master stays the hosts' router until their neighbour discovery gives up on
it. VRRPv3 (RFC 5798 5.2.9) therefore puts a virtual link-local address first in each
IPv6 instance; the master holds it and advertises from it, and it moves with the other
VIPs (keepalived logs "the first IPv6 VIP address should be link local" without one).
This check fires on an interface with IPv6 VIPs but no link-local one where the policy
accepts router solicitations or advertisements, the sign that the members advertise.
Put `fe80::200:5eff:fe00:2XX/64` first (XX the VRID in hex: the address VRRP's virtual
MAC would derive, which no member uses) and have only the master advertise, from it
(radvd's `AdvRASrcAddress`, started and stopped by the notify hook; docs/ha-pitfalls.md
"IPv6 hosts and the virtual link-local address").""")
def router_advertisements_without_virtual_link_local(policy: Policy) -> Iterable[Diagnostic]:
    for cluster in _clusters(policy):
        discovery: list[tuple[frozenset[str], Span]] | None = None
        for iface in cluster.vrrp_interfaces:
            vips = iface.vips_of(6)
            if not vips or iface.vrid is None or any(link_scoped(v.ip) for v in vips):
                continue
            if discovery is None:
                discovery = _router_discovery_rules(cluster)
            rule = next((span for sides, span in discovery
                         if not sides or iface.name in sides), None)
            if rule is None:
                continue
            suggested = virtual_link_local(iface.vrid)
            yield warning("FWC226", f"the IPv6 VIPs of '{iface.name}' have no link-local "
                          "address, but the policy accepts router discovery there: hosts "
                          "that follow the advertisements route through a member, not the "
                          "VIPs, and keep a failed master as their router", iface.span,
                          hint=f"write 'vip {suggested}/64' before {vips[0]} and advertise "
                          "from it on the master only (radvd AdvRASrcAddress)",
                          related=[Related(rule, "router discovery accepted here")])


def _vrrp_segments(cluster: Cluster, family: int) \
        -> Iterator[tuple[Interface, ipaddress.IPv4Network | ipaddress.IPv6Network]]:
    """Each interface with VIPs of FAMILY and a VRID, with its segment's subnet."""
    for iface in cluster.vrrp_interfaces:
        subnet = segment_subnet(cluster, iface, family) if iface.vips_of(family) else None
        if iface.vrid is not None and subnet is not None:
            yield iface, subnet


def _vrids_shared_across_clusters(policy: Policy) -> Iterator[Diagnostic]:
    """FWC210 between clusters: one VRID of one family on a segment they share."""
    multicast = [c for c in policy.clusters if not c.vrrp.unicast]
    for index, cluster in enumerate(multicast):
        for earlier in multicast[:index]:
            for family in (4, 6):
                theirs = list(_vrrp_segments(earlier, family))
                for iface, subnet in _vrrp_segments(cluster, family):
                    for first, other in theirs:
                        if first.vrid != iface.vrid or not one_segment(subnet, other):
                            continue
                        yield error("FWC210", f"interface '{iface.name}' of cluster "
                                    f"'{cluster.name}' uses VRID {iface.vrid} for "
                                    f"{_family_name(family)} on {subnet}, as does interface "
                                    f"'{first.name}' of cluster '{earlier.name}' on that "
                                    "segment", iface.span,
                                    hint=f"give '{iface.name}' a VRID no other cluster uses "
                                    "on the segment ('vrid N')",
                                    related=[Related(first.span, f"'{first.name}' of "
                                                     f"'{earlier.name}' declared here")])


@check("FWC211", "equal member priorities", E, """
VRRP elects the member with the highest priority; with equal priorities the
higher primary address wins, which nobody reading the policy expects, and
keepalived recommends against it. Priorities are per member in fwc, so the order
of the members is the same on every interface (a sync group with instances in
different orders re-elects constantly); this check makes the order strict.""")
def distinct_priorities(policy: Policy) -> Iterable[Diagnostic]:
    for cluster in _clusters(policy):
        seen: dict[int, Member] = {}
        for member in cluster.members:
            if member.priority < 1:
                continue  # missing or invalid: FWC209
            first = seen.get(member.priority)
            if first is None:
                seen[member.priority] = member
                continue
            yield error("FWC211", f"members '{first.name}' and '{member.name}' both have "
                        f"priority {member.priority}", member.priority_span or member.span,
                        hint="give each member a distinct priority (a gap of 50 is customary)",
                        related=[Related(first.priority_span or first.span,
                                         f"'{first.name}' priority here")])


@check("FWC212", "VRRP password longer than 8 bytes", E, """
VRRP simple-password authentication carries 8 bytes: keepalived copies at most
8 bytes of `auth_pass` (its `auth_data[8]`, counted with strlen) and silently
drops the rest, so "papas_con_tomate" and "papas_co" are the same password, and
the text suggests more secrecy than there is. keepalived logs "Truncating
auth_pass to 8 characters", but it counts bytes, not characters: "ééééé" is 10
bytes in UTF-8 and would be cut inside the fifth letter.""")
def password_length(policy: Policy) -> Iterable[Diagnostic]:
    for cluster in _clusters(policy):
        password = cluster.vrrp.password
        for problem in password_problems(password) if password is not None else ():
            if problem.code == "FWC212":
                yield error("FWC212", problem.message, cluster.vrrp.span_of("password"),
                            hint=problem.hint)


@check("FWC213", "VRRP authentication that cannot work", E, """
VRRP version 3 has no authentication: keepalived ignores `authentication` in a
v3 instance, so a password with `version 3` protects nothing. `auth pass` needs
a password, and an empty password is none: keepalived logs "Authentication
specified but no password given. Ignoring" and runs the instance without
authentication. (IPv6 VIPs always get their own version 3 instance without
authentication even when the IPv4 instances use a password; that is not an
error. AH authentication is IPv4-only and applies to the IPv4 instances.)""")
def vrrp_auth(policy: Policy) -> Iterable[Diagnostic]:
    for cluster in _clusters(policy):
        vrrp = cluster.vrrp
        if vrrp.version == 3 and (vrrp.password is not None or vrrp.auth is not None):
            span = vrrp.span_of("password") if vrrp.password is not None \
                else vrrp.span_of("auth")
            yield error("FWC213", "VRRP version 3 has no authentication; the password would "
                        "be ignored", span,
                        hint="remove the password and auth, or use version 2")
        elif vrrp.password is not None:
            for problem in password_problems(vrrp.password):
                if problem.code == "FWC213":
                    yield error("FWC213", problem.message, vrrp.span_of("password"),
                                hint=problem.hint)
        elif vrrp.auth is not None and vrrp.password is None:
            yield error("FWC213", f"'auth {vrrp.auth}' without a password", vrrp.span_of("auth"),
                        hint="add 'password \"...\"' (at most 8 bytes) or remove 'auth'")


@check("FWC214", "advert interval invalid for the VRRP version", E, """
VRRP version 2 advertises in whole seconds, 1-255 (keepalived rounds anything
else with an error, and members with different intervals drop each other's
packets: split brain). Version 3 takes 10 ms to 40.95 s in 10 ms steps. A
sub-second advert therefore needs `version 3`. IPv6 instances are always
version 3, so only the IPv4 instances are held to the version 2 limits.""")
def advert_interval(policy: Policy) -> Iterable[Diagnostic]:
    for cluster in _clusters(policy):
        vrrp = cluster.vrrp
        advert = vrrp.advert_ms
        span = vrrp.span_of("advert")
        v2_instances = vrrp.version == 2 and any(i.vips_of(4) for i in cluster.interfaces)
        v3_instances = vrrp.version == 3 or any(i.vips_of(6) for i in cluster.interfaces)
        low2, high2 = proto.VRRP_V2_ADVERT_RANGE_S
        low3, high3 = proto.VRRP_V3_ADVERT_RANGE_MS
        if v2_instances and (advert % 1000 or not low2 <= advert // 1000 <= high2):
            sub_second = advert < 1000 or advert % 1000
            yield error("FWC214", f"advert {advert} ms is not valid for VRRP version 2 "
                        f"(whole seconds {low2}-{high2})", span,
                        hint="add 'version 3' to the vrrp block for sub-second adverts"
                        if sub_second else f"use whole seconds {low2}-{high2}")
        elif v3_instances and (advert % 10 or not low3 <= advert <= high3):
            yield error("FWC214", f"advert {advert} ms is not valid for VRRP version 3 "
                        f"({low3} ms-{high3} ms in 10 ms steps)", span,
                        hint="round it to a multiple of 10 ms")


def _sync_span(cluster: Cluster, key: str) -> Span:
    return cluster.sync.span_of(key) or cluster.span


@check("FWC216", "sync link missing or not an interface", E, """
conntrackd replicates connection state over a dedicated link; without it a
failover drops every established connection. A cluster of two or more members
needs `sync { link IFACE }`, and IFACE must be one of the cluster's interfaces,
on which every member has an IPv4 address: conntrackd's multicast and UDP
transports bind to it.""")
def sync_link_declared(policy: Policy) -> Iterable[Diagnostic]:
    for cluster in _clusters(policy):
        link = cluster.sync.link
        if link is None:
            if len(cluster.members) >= 2:
                yield error("FWC216", f"cluster '{cluster.name}' has no sync link",
                            cluster.sync.span or cluster.span,
                            hint="add 'interface sync' and 'sync { link sync }', and map it "
                            "on every member")
        elif cluster.interface(link) is None:
            names = ", ".join(i.name for i in cluster.interfaces) or "none"
            yield error("FWC216", f"sync link '{link}' is not an interface of cluster "
                        f"'{cluster.name}'", _sync_span(cluster, "sync-link"),
                        hint=f"declare 'interface {link}' (interfaces: {names})")
        else:
            for member in cluster.members:
                mapped = member.link(link)
                if mapped is not None and not any(a.version == 4 for a in mapped.addresses):
                    yield error("FWC216", f"member '{member.name}' has no IPv4 address on the "
                                f"sync link '{link}'", mapped.span,
                                hint="conntrackd sends and receives the state over IPv4: give "
                                "the sync device an address, e.g. 203.0.113.1/29")


@check("FWC217", "sync link carries a VIP", E, """
The sync link must be dedicated: conntrackd has no authentication, so anybody on
a shared link can inject connection state, and its traffic competes with user
traffic. A VIP on the sync interface means it is a user-facing segment.""")
def sync_link_without_vip(policy: Policy) -> Iterable[Diagnostic]:
    for cluster in _clusters(policy):
        iface = cluster.interface(cluster.sync.link) if cluster.sync.link else None
        if iface is not None and iface.vips:
            yield error("FWC217", f"sync link '{iface.name}' carries a VIP", iface.span,
                        hint="move the VIP to a user-facing interface; the sync link is "
                        "dedicated", related=[Related(_sync_span(cluster, "sync-link"),
                                                      "declared the sync link here")])


@check("FWC218", "sync link used by a rule", E, """
Policy and NAT rules must not name the sync link in `in` or `out`: it is a
dedicated link between the members, carrying only conntrackd's own traffic, which
fwc allows itself. A rule on it means user traffic is expected there. Management
between the members themselves (ssh, ntp, a heartbeat ping) is allowed with
`sync { allow SERVICES }`, which opens exactly those services between the
members' sync addresses.""")
def sync_link_not_policy(policy: Policy) -> Iterable[Diagnostic]:
    for cluster in _clusters(policy):
        link = cluster.sync.link
        if link is None:
            continue
        for rule in cluster.all_rules():
            for direction, name in (("in", rule.in_interface), ("out", rule.out_interface)):
                if name == link:
                    yield error("FWC218", f"rule uses the sync link '{link}' ('{direction} "
                                f"{link}')", rule.span,
                                hint="the sync link is reserved for conntrackd; for "
                                "management between the members write 'sync { allow ssh, "
                                "ntp }'")


@check("FWC219", "sync group not a usable multicast address", E, """
conntrackd's multicast transport needs a multicast group (224.0.0.0/4) outside
the link-local control block 224.0.0.0/24, which routers and switches treat
specially (VRRP itself uses 224.0.0.18). conntrackd accepts a unicast address
here and then simply never syncs.""")
def sync_multicast_group(policy: Policy) -> Iterable[Diagnostic]:
    for cluster in _clusters(policy):
        sync = cluster.sync
        if sync.transport != "multicast":
            continue
        group = sync.group
        if not group.is_multicast:
            yield error("FWC219", f"sync group {group} is not a multicast address",
                        _sync_span(cluster, "multicast"),
                        hint=f"use a group in 224.0.0.0/4, e.g. {proto.DEFAULT_SYNC_GROUP}")
        elif group in ipaddress.IPv4Network("224.0.0.0/24"):
            yield error("FWC219", f"sync group {group} is in the link-local control block "
                        "224.0.0.0/24", _sync_span(cluster, "multicast"),
                        hint=f"use e.g. {proto.DEFAULT_SYNC_GROUP}")


@check("FWC220", "unicast sync with more than two members", E, """
conntrackd's UDP (unicast) transport sends to one peer per link. With three or
more members some of them never receive the state; use multicast.""")
def unicast_two_members(policy: Policy) -> Iterable[Diagnostic]:
    for cluster in _clusters(policy):
        if cluster.sync.transport == "unicast" and len(cluster.members) > 2:
            yield error("FWC220", f"unicast sync with {len(cluster.members)} members; "
                        "conntrackd unicast reaches one peer", _sync_span(cluster, "unicast"),
                        hint="use 'multicast GROUP port PORT' (the default)")


@check("FWC224", "FTFW sync with more than two members", E, """
conntrackd's FTFW mode is a reliable protocol between two peers: every member
keeps one expected sequence number for everything it receives, drops a message
numbered below it as a replay, and takes an acknowledgement of a range of numbers
as one for its own messages of that range. With three members on the multicast
group the numbers of two senders interleave, and a member silently drops the
states of the peer whose counter is behind. Measured with conntrackd 1.4.7: when
the master died, the third member took none of the 20 connections the new master
opened (the old master's counter was ahead); with two active masters a member took
none of the 20 of the quieter one. The next failover to that member loses them.
NOTRACK and ALARM accept every sender's messages (the same runs: 20 of 20).""")
def ftfw_two_members(policy: Policy) -> Iterable[Diagnostic]:
    for cluster in _clusters(policy):
        sync = cluster.sync
        # unicast with three members is FWC220 (it reaches one peer whatever the mode)
        if sync.link is None or sync.mode != "ftfw" or sync.transport != "multicast" \
                or len(cluster.members) <= 2:
            continue
        yield error("FWC224", f"conntrackd's FTFW mode with {len(cluster.members)} members: "
                    "it tracks one peer's sequence numbers, so members drop the states of "
                    "all but one sender", sync.span_of("sync-mode") or _sync_span(cluster,
                                                                                "sync-link"),
                    hint="write 'mode notrack' or 'mode alarm' in the sync block (every "
                    "member then takes every member's states), or split the cluster into "
                    "pairs")


@check("FWC225", "two clusters' state sync on one group of one segment", E, """
conntrackd's messages name no cluster: a daemon takes the states of every sender on
its multicast group and port. Two clusters of one policy whose sync links (or backup
links) are on one segment (overlapping subnets) with the same group and port would
each fill their external caches with the other cluster's connections, commit them
into their kernel tables at a failover, and their senders' sequence numbers would
interleave, so FTFW drops states (FWC224). A different group or port per cluster
keeps them apart: a member joins only its own group, and its rules take only its own
group and port on the link. Link-local sync subnets (169.254.0.0/16) are every link's
own: two pairs may each number their back-to-back sync cable alike.""")
def sync_shared_across_clusters(policy: Policy) -> Iterable[Diagnostic]:
    multicast = [c for c in policy.clusters if c.sync.transport == "multicast"]
    for index, cluster in enumerate(multicast):
        for earlier in multicast[:index]:
            if cluster.sync.group != earlier.sync.group:
                continue
            theirs = list(_sync_segments(earlier))
            for name, port, subnet in _sync_segments(cluster):
                for other, other_port, other_subnet in theirs:
                    if port != other_port or not one_segment(subnet, other_subnet):
                        continue
                    yield error("FWC225", f"sync link '{name}' of cluster '{cluster.name}' "
                                f"uses group {cluster.sync.group} port {port} on {subnet}, as "
                                f"does sync link '{other}' of cluster '{earlier.name}': each "
                                "would take the other's connections", _sync_span(
                                    cluster, "multicast" if cluster.sync.span_of("multicast")
                                    else "sync-link"),
                                hint="give one cluster its own 'multicast GROUP port N', or "
                                "its own sync segment",
                                related=[Related(_sync_span(earlier, "sync-link"),
                                                 f"'{earlier.name}' syncs here")])


def _sync_segments(cluster: Cluster) -> Iterator[tuple[str, int, ipaddress.IPv4Network]]:
    """(link, UDP port, IPv4 subnet) of each dedicated sync link of CLUSTER."""
    for name in cluster.sync.links:
        iface = cluster.interface(name)
        subnet = segment_subnet(cluster, iface, 4) if iface is not None else None
        if isinstance(subnet, ipaddress.IPv4Network):
            yield name, cluster.sync.port_of(name), subnet


@check("FWC221", "preempt delay too short for conntrackd to resynchronise", E, f"""
A master that comes back (reboot, restart) has an empty connection table. Its
conntrackd asks the peer for a full resync only once keepalived has started in
BACKUP state; if keepalived preempts before that transfer has finished, the node
takes the VIPs with the replicated connections missing and every one of them is
dropped as INVALID. keepalived's `preempt_delay` holds preemption back after its
start: fwc writes {proto.DEFAULT_PREEMPT_DELAY_S} s when the policy says nothing, and an
explicit `preempt-delay` must be at least {proto.MIN_PREEMPT_DELAY_S} s (the time a
bulk resync of a full table over the sync link and the links' own bring-up take)
and at most keepalived's {proto.KEEPALIVED_PREEMPT_DELAY_MAX_S} s. `preempt off` (nopreempt)
never takes the VIPs back and needs no delay.""")
def preempt_delay(policy: Policy) -> Iterable[Diagnostic]:
    low, high = proto.MIN_PREEMPT_DELAY_S, proto.KEEPALIVED_PREEMPT_DELAY_MAX_S
    for cluster in _clusters(policy):
        vrrp = cluster.vrrp
        delay = vrrp.preempt_delay_s
        if not vrrp.preempt or delay is None or low <= delay <= high:
            continue
        if delay < low:
            yield error("FWC221", f"preempt-delay {delay} s lets a returning master take the "
                        "VIPs before conntrackd has resynchronised", vrrp.span_of("preempt-delay"),
                        hint=f"use at least {low}s (without preempt-delay fwc writes "
                        f"{proto.DEFAULT_PREEMPT_DELAY_S}s), or 'preempt off'")
        else:
            yield error("FWC221", f"preempt-delay {delay} s is more than keepalived's "
                        f"maximum of {high} s", vrrp.span_of("preempt-delay"),
                        hint=f"use {low}s to {high}s, or 'preempt off'")


@check("FWC223", "two VRRP instances with one keepalived name", E, """
Each interface with VIPs becomes a keepalived `vrrp_instance` per address family,
named after the interface: `VI_lan` for its IPv4 VIPs and `VI_lan_v6` for its IPv6
VIPs. An interface named `lan_v6` with IPv4 VIPs next to an interface `lan` with
IPv6 VIPs gives two instances of one name, which keepalived refuses ("vrrp instance
VI_lan_v6 already defined", and `keepalived -t` fails); the sync group then names
that instance twice, and keepalived ignores the whole group, so the VIPs no longer
fail over together. Rename one of the interfaces.""")
def instance_names_unique(policy: Policy) -> Iterable[Diagnostic]:
    for cluster in _clusters(policy):
        seen: dict[str, tuple[Interface, int]] = {}
        for iface in cluster.vrrp_interfaces:
            for family in (4, 6):
                if not iface.vips_of(family):
                    continue
                name = instance_name(iface.name, family)
                first, first_family = seen.setdefault(name, (iface, family))
                if first is iface:
                    continue
                yield error("FWC223", f"the {_family_name(family)} VIPs of '{iface.name}' and "
                            f"the {_family_name(first_family)} VIPs of '{first.name}' would "
                            f"both be the keepalived instance {name}", iface.span,
                            hint=f"rename '{iface.name}' or '{first.name}' (an interface "
                            "name ending in '_v6' is the name of another's IPv6 instance)",
                            related=[Related(first.span, f"'{first.name}' declared here")])
