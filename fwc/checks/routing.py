"""Routing checks (FWC240-FWC249): `route` and `route-rule` lines against the topology.

Each guards against a route that the kernel refuses when the routes script or
keepalived installs it (a gateway on no subnet of the node, a source address the
node does not hold), one that sends user traffic where it must never go (the
sync link), or one whose effect is not what was written (two routes to one
destination, a rule whose table is empty on a member).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from fwc.checks import check, describe
from fwc.diagnostics import Diagnostic, Related, Severity, error, warning
from fwc.model import Cluster, IPNetwork, Member, Policy, Route
from fwc.model.topology import (
    applies,
    held_by_cluster,
    route_interface,
    subnet_router_anycast,
    subnets,
)

E, W = Severity.ERROR, Severity.WARNING

describe("FWC247", "routing table number reserved or out of range", E, """
A `route ... table N` or `route-rule ... table N` names a table 1-252. Table 0 is
unspecified, 253, 254 and 255 are the kernel's `default`, `main` and `local`
tables: fwc's routes go to main when no table is written, and the local table
belongs to the kernel (a route there makes an address local).""")
describe("FWC249", "route-rule priority used twice or out of range", E, """
A `route-rule ... priority N` is 1-32765 (0 is the rule of the local table,
32766 and 32767 those of main and default) and unique among the rules that
reach one member: iproute2 accepts two rules with one priority and orders them by
the moment they were added, which a reboot can change. Rules without a written
priority get 1000, 1010, 1020, ... in the order they are written.""")


def _routes(cluster: Cluster, member: Member) -> Iterator[Route]:
    return (r for r in cluster.routes if applies(r, member))


def _members(cluster: Cluster, route: Route) -> list[Member]:
    return [m for m in cluster.members if applies(route, m)]


@check("FWC240", "route gateway on no network of the member", E, """
A gateway must lie inside a subnet the member is directly on (one of its link
addresses' networks, or an interface's VIP subnet): the kernel refuses a route
whose next hop is not on a connected network ("Nexthop has invalid gateway"), so
the routes script would fail at boot. The check runs per member, because members
have their own addresses; `dev IFACE` names the interface when the gateway is
link-local. A `dev` interface the member does not map is reported here too.""")
def gateway_on_network(policy: Policy) -> Iterable[Diagnostic]:
    for cluster in policy.clusters:
        for route in cluster.routes:
            for member in _members(cluster, route):
                if route.interface is not None and member.link(route.interface) is None:
                    yield error("FWC240", f"route to {route.destination} uses interface "
                                f"'{route.interface}', which member '{member.name}' does not "
                                "map", route.span,
                                hint=f"map '{route.interface}' in member '{member.name}', or "
                                f"write 'only' for the members that have it")
                    continue
                if route.gateway is None or route.gateway.is_link_local:
                    continue
                name = route_interface(cluster, member, route)
                if name is None:
                    nets = ", ".join(str(n) for _, n in subnets(cluster, member,
                                                               route.gateway.version))
                    yield error("FWC240", f"gateway {route.gateway} is on no network of member "
                                f"'{member.name}'", route.span,
                                hint=f"its networks: {nets or 'none of this family'}; a "
                                "gateway is a neighbour on one of them")
                elif route.interface is not None and not any(
                        route.gateway in net for n, net in subnets(
                            cluster, member, route.gateway.version) if n == route.interface):
                    yield error("FWC240", f"gateway {route.gateway} is not on interface "
                                f"'{route.interface}' of member '{member.name}'", route.span,
                                hint="leave 'dev' out: fwc finds the interface whose subnet "
                                "holds the gateway")


@check("FWC241", "route over the sync link", E, """
The sync link is dedicated to conntrackd's state replication between the
members (FWC218 keeps the policy's rules off it): it carries no user traffic,
has no router behind it, and fwc's analysis never sends traffic out by it. A route
or a route-rule on it would put user traffic on the link whose saturation delays
the state a failover needs.""")
def route_not_via_sync(policy: Policy) -> Iterable[Diagnostic]:
    for cluster in policy.clusters:
        sync = cluster.sync.link
        if sync is None:
            continue
        for route in cluster.routes:
            if any(route_interface(cluster, m, route) == sync for m in _members(cluster, route)):
                yield error("FWC241", f"route to {route.destination} goes over the sync link "
                            f"'{sync}'", route.span,
                            hint="the sync link carries only conntrackd's traffic; route by a "
                            "user-facing interface")
        for rule in cluster.route_rules:
            if rule.in_interface == sync:
                yield error("FWC241", f"route-rule matches traffic arriving on the sync link "
                            f"'{sync}'", rule.span,
                            hint="no user traffic arrives on the sync link")


@check("FWC242", "two routes to one destination", E, """
Two `route` lines for the same destination in the same table on one member:
the routes script installs one after the other with `ip route replace`, so the
second silently replaces the first (with equal metrics), or one of them is a
standby route nobody can see in the policy. Two uplinks each with a default
route is the classic case: give the second one its own table and a `route-rule`
(policy routing), or a different `metric` for an explicit standby route.""")
def duplicate_destination(policy: Policy) -> Iterable[Diagnostic]:
    for cluster in policy.clusters:
        for member in cluster.members:
            seen: dict[tuple[object, ...], Route] = {}
            for route in _routes(cluster, member):
                key = (route.table, route.destination, route.metric)
                first = seen.get(key)
                if first is None:
                    seen[key] = route
                    continue
                table = "the main table" if route.table is None else f"table {route.table}"
                yield error("FWC242", f"second route to {route.destination} in {table} on "
                            f"member '{member.name}'", route.span,
                            hint="a second uplink needs its own table and a route-rule, or a "
                            "different metric",
                            related=[Related(first.span, "first route here")])


@check("FWC243", "master-only route without a VRRP instance there", E, """
A `follow master` route or rule becomes keepalived `virtual_routes` /
`virtual_rules` of the VRRP instance of its interface and family: keepalived
adds it when that instance becomes master and removes it on the backup. An
interface without a VIP of the route's family has no instance, so nothing
would ever install the route. Rules follow the cluster's first instance of
their family (every instance is in one sync group and moves together).""")
def follow_needs_vip(policy: Policy) -> Iterable[Diagnostic]:
    for cluster in policy.clusters:
        for route in cluster.routes:
            if not route.follow:
                continue
            for member in _members(cluster, route):
                name = route_interface(cluster, member, route)
                iface = cluster.interface(name) if name else None
                if name is not None and (iface is None or not iface.vips_of(route.family)):
                    yield error("FWC243", f"route to {route.destination} follows the master, "
                                f"but interface '{name}' has no IPv{route.family} VIP",
                                route.span, hint="add a VIP to the interface, or drop "
                                "'follow master' to install the route on every member")
                    break
        for rule in cluster.route_rules:
            if rule.follow and not any(i.vips_of(rule.family) for i in cluster.interfaces):
                yield error("FWC243", f"route-rule follows the master, but no interface has "
                            f"an IPv{rule.family} VIP", rule.span,
                            hint="drop 'follow master', or add a VIP")


@check("FWC244", "route source address not on the node", E, """
A route's `src` is the address the node gives the traffic it originates on that
route, and the kernel refuses a source the node does not hold ("Invalid
prefsrc"). A VIP is held only by the master: a route with a VIP source must
`follow master` (keepalived installs it with the VIP), and any other source must
be an address of every member the route is on.""")
def route_source_on_node(policy: Policy) -> Iterable[Diagnostic]:
    for cluster in policy.clusters:
        for route in cluster.routes:
            if route.source is None:
                continue
            if cluster.vips.contains_address(route.source):
                if not route.follow:
                    yield error("FWC244", f"route to {route.destination} uses VIP "
                                f"{route.source} as source but does not follow the master",
                                route.span, hint="add 'follow master': the backup does not "
                                "hold the VIP, and the kernel refuses the route there")
                continue
            lacking = [m.name for m in _members(cluster, route)
                       if not m.addresses.contains_address(route.source)]
            if lacking:
                yield error("FWC244", f"route source {route.source} is not an address of "
                            f"member{'s' if len(lacking) > 1 else ''} {', '.join(lacking)}",
                            route.span, hint="use a VIP with 'follow master', or 'only' "
                            "for the member that holds the address")


@check("FWC245", "route via the firewall itself", E, """
A gateway that is one of the cluster's own addresses (a member's or a VIP)
sends the traffic to a firewall node: to itself (the kernel refuses it), to the
peer (which routes it back by the same route, a loop) or to whichever node
holds the VIP. So does the Subnet-Router anycast address of a member's IPv6 subnet
(2001:db8:1:: in 2001:db8:1::/64, RFC 4291): the members forward, so each holds it,
and the first router to answer the neighbour solicitation gets the traffic. Measured
with Linux 6.18 and two forwarding members and a router on one link: the peer member
answered in three runs of five. An IPv6 link-local gateway (`via fe80::1 dev uplink`)
is the cluster's own only when a member or VIP has it on that link: the routers of
other links may use the same link-local address.""")
def gateway_not_firewall(policy: Policy) -> Iterable[Diagnostic]:
    for cluster in policy.clusters:
        for route in cluster.routes:
            if route.gateway is not None and held_by_cluster(cluster, route.gateway,
                                                             route.interface):
                yield error("FWC245", f"gateway {route.gateway} is an address of the "
                            "firewall cluster", route.span,
                            hint="the gateway is the next router beyond the firewall")
            elif route.gateway is not None and (
                    subnet := subnet_router_anycast(cluster, route.gateway)) is not None:
                yield error("FWC245", f"gateway {route.gateway} is the subnet-router anycast "
                            f"address of {subnet}, which the members hold themselves",
                            route.span, hint="name the router's own address")


@check("FWC246", "route-rule sends traffic to an empty table", W, """
A `route-rule` whose table holds no route of its family on a member does
nothing there: the lookup misses and the kernel goes on with the next rule. It
is almost always a table number written wrong, or the table's routes limited
with `only` to another member.""")
def rule_table_has_routes(policy: Policy) -> Iterable[Diagnostic]:
    for cluster in policy.clusters:
        for rule in cluster.route_rules:
            empty = [m.name for m in cluster.members if applies(rule, m) and not any(
                r.table == rule.table and r.family == rule.family for r in _routes(cluster, m))]
            if empty:
                yield warning("FWC246", f"route-rule uses table {rule.table}, which has no "
                              f"IPv{rule.family} route on {', '.join(empty)}", rule.span,
                              hint=f"add 'route ... table {rule.table}', or correct the table")


@check("FWC248", "route to a network the member is on", W, """
A route whose destination is one of the member's own subnets in the main table
competes with the kernel's connected route to it (same prefix): with a gateway,
traffic for hosts on the segment goes to the router instead of straight to
them, or the route is simply redundant. A route to a part of such a subnet
(192.0.2.128/25 while the member is on 192.0.2.0/24) wins over the connected route
by its longer prefix: the member sends the traffic for that part to the gateway
instead of the segment, while the segment's own hosts still see it as on-link.
It stays a warning because a host route to a machine on the segment that is reached
through another router there is a design that exists.""")
def route_to_connected(policy: Policy) -> Iterable[Diagnostic]:
    for cluster in policy.clusters:
        for route in cluster.routes:
            if route.table is not None:
                continue
            for member in _members(cluster, route):
                net = _connected_holding(cluster, member, route)
                if net is None:
                    continue
                whole = net == route.destination
                where = "," if whole else f", inside {net},"
                yield warning("FWC248", f"route to {route.destination}{where} which member "
                              f"'{member.name}' is directly on", route.span,
                              hint="remove the route: the kernel reaches the segment directly"
                              if whole else "give the hosts behind the route a subnet of "
                              "their own, or remove the route")
                break


def _connected_holding(cluster: Cluster, member: Member, route: Route) -> IPNetwork | None:
    """The subnet MEMBER is directly on that holds ROUTE's whole destination, if any."""
    return next((net for _, net in subnets(cluster, member, route.family)
                 if route.destination.subnet_of(net)), None)  # type: ignore[arg-type]
