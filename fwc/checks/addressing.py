"""Address plan checks (FWC288-FWC292): addresses the members' kernels and neighbours
cannot use as written.

fwc does not configure the members' addresses (the node's own network configuration
does), so a wrong address plan shows nowhere in the compiled files: the kernel
refuses the address or a route at boot, or takes it and routes part of a segment out
of the wrong device. Each check here says what the kernel does with it; the
measurements are Linux 6.18 in network namespaces (tests/test_checks_addressing.py
repeats the ones the errors rest on).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Iterator

from fwc.checks import check
from fwc.checks.cluster import address_spans, vip_spans
from fwc.diagnostics import Diagnostic, Related, Severity, Span, error, warning
from fwc.model import Cluster, IPAddress, IPInterface, IPNetwork, Member, Policy
from fwc.model.topology import holding_subnet, subnet_role

E, W = Severity.ERROR, Severity.WARNING

LIMITED_BROADCAST = ipaddress.IPv4Address("255.255.255.255")


def _cluster_addresses(cluster: Cluster) -> Iterator[tuple[IPAddress, str, Span]]:
    """Every address a node of CLUSTER holds: (address, what it is, where it is written)."""
    for member in cluster.members:
        for link in member.links:
            for address, span in address_spans(member, link.interface):
                yield address.ip, f"member '{member.name}' on '{link.interface}'", span
    for iface in cluster.interfaces:
        for vip, span in vip_spans(iface):
            yield vip.ip, f"a VIP of '{iface.name}'", span


@check("FWC288", "address used by two clusters", E, """
A member address or VIP of one cluster that is also a member address or VIP of
another cluster of the policy. Both subnets then hold the address, so the two
clusters share that segment (as FWC210 and FWC225 read overlapping subnets), and two
nodes answer ARP (neighbour discovery) for one address: hosts reach whichever answered
last, and a VIP that is also the other cluster's VIP or node address moves between
nodes that never agreed on it (different VRIDs do not help: each master claims the
address with its own gratuitous ARP). FWC205 and FWC208 catch this inside one cluster.
Link-local addresses (169.254.0.0/16, fe80::/10) are left alone: they are meaningful
on their link only, and two clusters may each use fe80::1 on their own links.""")
def addresses_across_clusters(policy: Policy) -> Iterable[Diagnostic]:
    claimed: dict[IPAddress, tuple[str, str, Span]] = {}
    for cluster in policy.clusters:
        own: dict[IPAddress, tuple[str, Span]] = {}
        for address, what, span in _cluster_addresses(cluster):
            if address.is_link_local or address in own:
                continue  # inside one cluster: FWC205, FWC208
            own[address] = (what, span)
            first = claimed.get(address)
            if first is not None:
                yield error("FWC288", f"address {address} ({what}) of cluster "
                            f"'{cluster.name}' is also used by cluster '{first[0]}' "
                            f"({first[1]})", span,
                            hint="one address belongs to one node or VIP of a segment: "
                            "renumber one of them",
                            related=[Related(first[2], f"used by cluster '{first[0]}' here")])
        for address, (what, span) in own.items():
            claimed.setdefault(address, (cluster.name, what, span))


Placed = tuple[str, IPInterface, Span]  # (interface, member address, where written)


def _placed(member: Member, family: int) -> list[Placed]:
    """MEMBER's addresses of FAMILY with their interfaces. IPv6 link-local addresses are
    left out: every link is on fe80::/64, and the zone (the device) tells them apart."""
    return [(link.interface, address, span) for link in member.links
            for address, span in address_spans(member, link.interface)
            if address.version == family and not (family == 6 and address.ip.is_link_local)]


def _overlaps(member: Member) -> Iterator[tuple[Placed, Placed]]:
    """Pairs of MEMBER's addresses on different interfaces whose subnets overlap."""
    for family in (4, 6):
        placed = _placed(member, family)
        for index, later in enumerate(placed):
            for earlier in placed[:index]:
                if earlier[0] != later[0] and earlier[1].network.overlaps(later[1].network):
                    yield earlier, later


def _segment_addresses(cluster: Cluster, viewer: Member, interface: str, family: int) \
        -> Iterator[tuple[IPAddress, str]]:
    """The addresses the cluster holds on INTERFACE that VIEWER sends to: the other
    members' and the VIPs (its own addresses are local to it, whatever the routes)."""
    for member in cluster.members:
        for address, _ in address_spans(member, interface) if member is not viewer else ():
            if address.version == family:
                yield address.ip, f"member '{member.name}'"
    iface = cluster.interface(interface)
    for vip in iface.vips_of(family) if iface is not None else ():
        yield vip.ip, "a VIP"


def _stranded(cluster: Cluster, member: Member, wide: Placed, narrow: Placed) \
        -> tuple[IPAddress, str] | None:
    """An address the cluster holds on WIDE's segment that lies in NARROW's subnet: the
    member routes to it by NARROW's interface."""
    return next(((address, what) for address, what in _segment_addresses(
        cluster, member, wide[0], wide[1].version) if address in narrow[1].network), None)


def _unreachable(cluster: Cluster, member: Member, earlier: Placed, later: Placed) \
        -> str | None:
    """Why an overlap leaves an address of the cluster unreachable, or None."""
    if earlier[1].network == later[1].network:
        return (f"member '{member.name}' is on {later[1].network} by both '{earlier[0]}' and "
                f"'{later[0]}': the kernel sends the whole subnet out of one of them")
    wide, narrow = sorted((earlier, later), key=lambda p: p[1].network.prefixlen)
    stranded = _stranded(cluster, member, wide, narrow)
    if stranded is None:
        return None
    return (f"{stranded[0]} ({stranded[1]} on '{wide[0]}') lies in {narrow[1].network} of "
            f"'{narrow[0]}': member '{member.name}' sends to it by '{narrow[0]}'")


@check("FWC289", "overlapping subnets leave an address of the cluster unreachable", E, """
Two interfaces of one member on overlapping subnets, where the kernel cannot reach an
address the policy puts on one of them. The kernel routes by the longest prefix, and
among connected routes of one prefix by the first one: with the same subnet on two
interfaces (lan 192.0.2.0/24 and uplink 192.0.2.0/24) everything in it leaves by one
device and the other segment is unreachable as a whole; with one subnet inside the
other (lan 192.0.2.0/24 and uplink 192.0.2.128/26) the addresses of the wider segment
inside the narrower subnet leave by the narrower one's device. Measured with Linux
6.18: a host at 192.0.2.130 on the lan answered no ping from the node, whose route to
it was `dev uplink`. When such an address is another member's or a VIP, the part of
the segment the cluster itself uses is unreachable from the member: its unicast to the
peer (unicast VRRP, conntrackd's unicast sync, `sync { allow }` management) and its
replies to the hosts there leave by the wrong device, so it cannot work. Routers such
as Cisco IOS refuse overlapping interface subnets outright ("overlaps with"). Give each
interface its own subnet (a nested one without such an address is FWC290).""")
def overlapping_unreachable(policy: Policy) -> Iterable[Diagnostic]:
    for cluster in policy.clusters:
        for member in cluster.members:
            for earlier, later in _overlaps(member):
                reason = _unreachable(cluster, member, earlier, later)
                if reason is not None:
                    yield error("FWC289", reason, later[2],
                                hint="give each interface a subnet of its own",
                                related=[Related(earlier[2], f"'{earlier[0]}' here")])


@check("FWC290", "subnet inside another subnet of the member", W, """
One interface of a member is on a subnet inside the subnet of another of its
interfaces (a sync link 192.0.2.0/29 carved out of a lan 192.0.2.0/24, a lan
192.0.2.0/24 inside a sync link 192.0.0.0/16). The kernel routes the narrower subnet
out of its own device, so hosts of the wider segment with addresses inside it are
unreachable from the member, and hosts there that see the whole wider subnet as
on-link cannot reach the narrower segment. It is a warning, not an error, because
it works as long as nothing on the wider segment uses the overlap (measured with Linux
6.18: the member reached hosts of both segments outside it), and carving a small
subnet out of a large segment's unused range is done; an address of the cluster in
the overlap is FWC289. Give the interfaces disjoint subnets.""")
def nested_subnets(policy: Policy) -> Iterable[Diagnostic]:
    for cluster in policy.clusters:
        for member in cluster.members:
            for earlier, later in _overlaps(member):
                if _unreachable(cluster, member, earlier, later) is not None:
                    continue  # FWC289
                wide, narrow = sorted((earlier, later), key=lambda p: p[1].network.prefixlen)
                yield warning("FWC290", f"member '{member.name}': {narrow[1].network} of "
                              f"'{narrow[0]}' lies inside {wide[1].network} of '{wide[0]}'; "
                              f"hosts of '{wide[0]}' in it are unreachable", later[2],
                              hint="give each interface a subnet of its own",
                              related=[Related(earlier[2], f"'{earlier[0]}' here")])


def not_unicast(address: IPAddress) -> str | None:
    """What ADDRESS is when no interface can use it as its own or a neighbour's."""
    if address.is_unspecified:
        return "the unspecified address"
    if address.is_loopback:
        return "a loopback address"
    if address.is_multicast:
        return "a multicast address"
    if address == LIMITED_BROADCAST:
        return "the limited broadcast address"
    return None


def _neighbours(cluster: Cluster) -> Iterator[tuple[str, IPAddress, Span]]:
    """The neighbours the members send to by address: route gateways, `track { ping }`
    targets and uplink probe targets, as (what it is, address, where written)."""
    for route in cluster.routes:
        if route.gateway is not None:
            yield "gateway", route.gateway, route.span
        if route.probe is not None:
            yield "probe target", route.probe.target, route.probe.span
    for track in cluster.tracks:
        if track.kind == "ping":
            yield "ping target", ipaddress.ip_address(track.target), track.span


def _neighbour_role(cluster: Cluster, address: IPAddress) -> tuple[str, IPNetwork] | None:
    """The role (network, broadcast) ADDRESS has in a subnet a member is on, with it."""
    for member in cluster.members:
        subnet = holding_subnet(cluster, member, address)
        role = subnet_role(address, subnet) if subnet is not None else None
        if role is not None and subnet is not None:
            return role, subnet
    return None


@check("FWC291", "address that is not a unicast host address", E, """
A member address or VIP that is the unspecified, a loopback or a multicast address,
or a member address, route gateway, `track { ping }` target or uplink probe target that
is the (IPv4) broadcast address of its subnet. None of them can work. Linux refuses the
IPv6 ones as interface addresses ("Cannot assign multicast address", "Cannot assign
loopback address on this device", "Invalid address"). It takes the IPv4 ones, but a
node with a multicast address finds no route to its peers ("Network is unreachable")
and one with a loopback address cannot send at all ("Invalid argument"). Its neighbours
treat a broadcast address as every host of the segment: ping refuses it without `-b`
(so a tracked ping or an uplink probe always fails, and the cluster goes to FAULT or
takes the route out for good), TCP cannot connect to it, and the kernel refuses a route
via it ("Nexthop has invalid gateway"). Measured with Linux 6.18 in namespaces. A VIP
that is its subnet's broadcast address is FWC207, a gateway that is no neighbour at all
FWC240.""")
def unicast_addresses(policy: Policy) -> Iterable[Diagnostic]:
    for cluster in policy.clusters:
        for member in cluster.members:
            for link in member.links:
                for address, span in address_spans(member, link.interface):
                    what = not_unicast(address.ip) or _own_role(address, "broadcast")
                    if what is not None:
                        yield error("FWC291", f"address {address} of member '{member.name}' "
                                    f"on '{link.interface}' is {what}", span,
                                    hint="give the member a host address of the segment")
        for iface in cluster.interfaces:
            for vip, span in vip_spans(iface):
                what = not_unicast(vip.ip)
                if what is not None:
                    yield error("FWC291", f"VIP {vip} of '{iface.name}' is {what}", span,
                                hint="pick a host address of the segment")
        for kind, address, span in _neighbours(cluster):
            found = _neighbour_role(cluster, address)
            if found is not None and found[0] == "broadcast":
                yield error("FWC291", f"{kind} {address} is the broadcast address of "
                            f"{found[1]}", span, hint=f"name the neighbour's own address "
                            f"in {found[1]}")


def _own_role(address: IPInterface, role: str) -> str | None:
    """'the ROLE address of its subnet' when an IPv4 member ADDRESS is that address."""
    if address.version == 4 and subnet_role(address.ip, address.network) == role:
        return f"the {role} address of its subnet"
    return None


@check("FWC292", "IPv4 network address used as a host", W, """
A member address, route gateway, `track { ping }` target or uplink probe target that
is the network address of its IPv4 subnet (192.0.2.0 in 192.0.2.0/24; a /31 or /32
has none). RFC 1122 (3.2.1.3) does not permit a host number of all zeros (older BSD
systems took it as the broadcast address), so systems that follow it may refuse the
address or never send to it. Linux 6.18 treats it as an ordinary address (measured:
a node at 192.0.2.0/24 answered its neighbour's ping, and a route via 192.0.2.0 was
accepted), so it can work between Linux nodes and is a warning. A VIP there is FWC207:
hosts use the VIP as their gateway. In IPv6 the all-zeros address is the Subnet-Router
anycast address (RFC 4291), which the members hold themselves as routers: a gateway,
ping or probe target there is FWC245, FWC255 or FWC276.""")
def network_addresses(policy: Policy) -> Iterable[Diagnostic]:
    for cluster in policy.clusters:
        for member in cluster.members:
            for link in member.links:
                for address, span in address_spans(member, link.interface):
                    what = _own_role(address, "network")
                    if what is not None and not_unicast(address.ip) is None:
                        yield warning("FWC292", f"address {address} of member "
                                      f"'{member.name}' on '{link.interface}' is {what}",
                                      span, hint="give the member a host address of the "
                                      "segment")
        for kind, address, span in _neighbours(cluster):
            found = _neighbour_role(cluster, address)
            if found is not None and found[0] == "network" and address.version == 4:
                yield warning("FWC292", f"{kind} {address} is the network address of "
                              f"{found[1]}", span, hint=f"name the neighbour's own address "
                              f"in {found[1]}")
