"""Uplink failover: which routes a member's monitor watches and which take over.

The one meaning of a probed route (`route ... probe TARGET`) for the checks
(`fwc.checks.uplinks`), the monitor script (`fwc.backend.render.uplinks`) and the
lab: a probed route is removed while its probe fails; the routes that then
carry its traffic are its *fallbacks*, the other routes of the member to the
same destination in the same table with a higher metric (a floating static
route). A route in a table of its own also falls back to the lookups after its
table's rule (policy routing: the main table).
"""

from __future__ import annotations

from fwc.model import Cluster, IPAddress, Member, Route
from fwc.model.records import dataclass
from fwc.model.topology import applies, route_interface, subnets


def metric_of(route: Route) -> int:
    """The kernel's metric of ROUTE (none written: 0 for IPv4, 1024 for IPv6)."""
    if route.metric is not None:
        return route.metric
    return 0 if route.family == 4 else 1024


@dataclass(frozen=True, slots=True)
class Uplink:
    """A probed route as one member installs it."""

    route: Route
    interface: str  # the logical interface by which the member reaches the gateway
    pin: IPAddress | None  # the gateway that a host route to the probe target goes through
    fallbacks: tuple[Route, ...]  # what carries the traffic while the route is removed


def fallbacks(cluster: Cluster, member: Member, route: Route) -> tuple[Route, ...]:
    return tuple(r for r in cluster.routes if r is not route and applies(r, member)
                 and not r.follow and r.table == route.table
                 and r.destination == route.destination and metric_of(r) > metric_of(route))


def on_link(cluster: Cluster, member: Member, interface: str, target: IPAddress) -> bool:
    """TARGET is on a subnet of INTERFACE, or link-local (on every link; the monitor pings
    it by INTERFACE's device): a neighbour, pinged without a gateway."""
    return target.is_link_local or any(name == interface and target in net
                                       for name, net in subnets(cluster, member,
                                                                target.version))


def uplinks(cluster: Cluster, member: Member) -> tuple[Uplink, ...]:
    """MEMBER's probed routes, in policy order (routes it cannot install are left out:
    FWC240 stops the compile for those)."""
    out = []
    for route in cluster.routes:
        if route.probe is None or route.follow or not applies(route, member):
            continue
        interface = route_interface(cluster, member, route)
        if interface is None:
            continue
        target = route.probe.target
        pin = None if on_link(cluster, member, interface, target) else route.gateway
        out.append(Uplink(route, interface, pin, fallbacks(cluster, member, route)))
    return tuple(out)
