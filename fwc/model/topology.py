"""The topology of a cluster as a graph: members, devices, networks, VIPs, gateways, routes.

One meaning of "where does a member send this": `member_routing` walks the graph
from the member through its devices to the networks they are on (connected
routes) and to the gateways and destinations of the `route` lines that apply to
it, and gives the ordered lookups the kernel makes (policy rules, tables, the
main table). The analysis engine asks it for the out interface of a packet
(`fwc query`, `expect`, `fwc diff`), the routing checks ask which interface
reaches a gateway, and `fwc graph` draws the same graph.

The graph is a networkx MultiDiGraph, imported on first use (commands that never
route do not pay for it), built once per cluster and run (`Cluster.memo`).

Nodes (ids are strings, so that drawings are deterministic):

    member:M            a member
    device:M:IFACE      its device on a logical interface (attribute `device`)
    network:CIDR        a subnet some member is on (`sync`: the sync link's)
    vip:ADDRESS         a VIP (attribute `interface`)
    gateway:ADDRESS     a next hop of some route
    destination:T:CIDR  a route's destination in table T (`main` or a number)

Edges (attribute `kind`): member -has-> device, device -on-> network (the
member's address), vip -on-> network, device -holds-> vip (while master),
device -next-hop-> gateway (one per member and route, attribute `route`),
gateway -route-> destination, device -direct-> destination (a route without a
gateway).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fwc.model import Cluster, IPAddress, IPNetwork, Member, Route, RouteRule
from fwc.model.records import dataclass

if TYPE_CHECKING:
    import networkx

MAIN = "main"


def member_node(member: str) -> str:
    return f"member:{member}"


def device_node(member: str, interface: str) -> str:
    return f"device:{member}:{interface}"


def network_node(network: IPNetwork) -> str:
    return f"network:{network}"


def destination_node(route: Route) -> str:
    return f"destination:{MAIN if route.table is None else route.table}:{route.destination}"


def applies(route: Route | RouteRule, member: Member) -> bool:
    return route.only is None or route.only == member.name


def subnets(cluster: Cluster, member: Member, family: int) -> list[tuple[str, IPNetwork]]:
    """(interface, subnet) the member is directly on, longest prefix first.

    A member's link addresses and its interfaces' VIP subnets: the VIP's subnet is
    connected on the master, and a member holds no other route to it.
    """
    out: list[tuple[str, IPNetwork]] = []
    for link in member.links:
        nets = [a.network for a in link.addresses if a.version == family]
        iface = cluster.interface(link.interface)
        if iface is not None:
            nets += [v.network for v in iface.vips_of(family)]
        out.extend((link.interface, net) for net in dict.fromkeys(nets))
    out.sort(key=lambda item: -item[1].prefixlen)  # stable: declaration order on ties
    return out


def subnet_role(address: IPAddress, network: IPNetwork) -> str | None:
    """"network" or "broadcast" when ADDRESS is that address of NETWORK, else None.

    Only where the subnet has them: a /31 or /32 (/127, /128) has no network or
    broadcast address (RFC 3021), and IPv6 has no broadcast.
    """
    if address not in network or network.prefixlen >= network.max_prefixlen - 1:
        return None
    if address == network.network_address:
        return "network"
    if address.version == 4 and address == network.broadcast_address:
        return "broadcast"
    return None


def holding_subnet(cluster: Cluster, member: Member, address: IPAddress) -> IPNetwork | None:
    """The most specific subnet MEMBER is directly on that holds ADDRESS (a neighbour's)."""
    return next((net for _, net in subnets(cluster, member, address.version)
                 if address in net), None)


def link_scoped(address: IPAddress) -> bool:
    """Whether ADDRESS means something only together with its link: an IPv6 link-local
    address (fe80::/10). The kernel keeps those per device (the zone of `fe80::1%eth0`),
    every IPv6 link is on fe80::/64, and one node may use the same one on every link.
    IPv4's 169.254.0.0/16 has no zone: Linux holds an IPv4 address for the whole node,
    so one of those on two devices is one address twice."""
    return address.version == 6 and address.is_link_local


AddressPlace = tuple[IPAddress, str | None]


def address_place(address: IPAddress, interface: str | None) -> AddressPlace:
    """What tells ADDRESS, written on the logical INTERFACE, apart from every other
    address of the cluster: the address, and for a link-scoped one also its interface
    (every member's device on INTERFACE is on one link, the segment, where a second
    holder of the address is a real clash; on another link it is another address)."""
    return address, interface if link_scoped(address) else None


def cluster_places(cluster: Cluster) -> frozenset[AddressPlace]:
    """The places of every address a node of CLUSTER holds: members' and VIPs."""
    def build() -> frozenset[AddressPlace]:
        places = {address_place(a.ip, link.interface) for m in cluster.members
                  for link in m.links for a in link.addresses}
        places.update(address_place(v.ip, i.name) for i in cluster.interfaces for v in i.vips)
        return frozenset(places)
    return cluster.memo.get(("places",), build)


def held_by_cluster(cluster: Cluster, address: IPAddress, interface: str | None) -> bool:
    """Whether a node of CLUSTER holds ADDRESS as seen on INTERFACE (a neighbour's
    address written with `dev INTERFACE`; None: not tied to a link, which a link-scoped
    address without its link never matches)."""
    return address_place(address, interface) in cluster_places(cluster)


def one_segment(a: IPNetwork, b: IPNetwork) -> bool:
    """Whether subnets A and B, of two clusters, put them on one segment: the address
    plan is the only evidence of that, so they must overlap, and neither may be
    link-local (169.254.0.0/16, fe80::/10), which every link may use on its own: each
    IPv6 link is on fe80::/64, and two pairs each on its own back-to-back sync cable may
    both number it 169.254.1.0/30 (FWC288 leaves such addresses alone for that reason)."""
    return a.version == b.version and a.overlaps(b) \
        and not a.is_link_local and not b.is_link_local


def subnet_router_anycast(cluster: Cluster, address: IPAddress) -> IPNetwork | None:
    """The IPv6 subnet of a member whose Subnet-Router anycast address ADDRESS is (its
    all-zeros address, RFC 4291 2.6.1), or None. Every member is a router there and
    holds it: the kernel delivers it locally and answers neighbour solicitations for it."""
    if address.version != 6:
        return None
    for member in cluster.members:
        subnet = holding_subnet(cluster, member, address)
        if subnet is not None and subnet_role(address, subnet) == "network":
            return subnet
    return None


def route_interface(cluster: Cluster, member: Member, route: Route) -> str | None:
    """The logical interface by which MEMBER sends ROUTE's traffic (None: it has none).

    `dev IFACE` when written (and mapped by the member), else the interface whose
    subnet holds the gateway, longest prefix first.
    """
    if route.interface is not None:
        return route.interface if member.link(route.interface) is not None else None
    if route.gateway is None:
        return None
    for name, net in subnets(cluster, member, route.gateway.version):
        if route.gateway in net:
            return name
    return None


def _build(cluster: Cluster) -> networkx.MultiDiGraph:
    import networkx as nx  # lazily: only commands that route or draw need it

    graph = nx.MultiDiGraph(name=cluster.name)
    sync = cluster.sync.link
    for iface in cluster.interfaces:
        for vip in iface.vips:
            graph.add_node(f"vip:{vip.ip}", kind="vip", label=str(vip), interface=iface.name)
            graph.add_node(network_node(vip.network), kind="network", label=str(vip.network),
                           interface=iface.name, sync=iface.name == sync)
            graph.add_edge(f"vip:{vip.ip}", network_node(vip.network), kind="on")
    for member in cluster.members:
        graph.add_node(member_node(member.name), kind="member", label=member.name,
                       priority=member.priority)
        for link in member.links:
            node = device_node(member.name, link.interface)
            graph.add_node(node, kind="device", label=link.device, member=member.name,
                           interface=link.interface, sync=link.interface == sync)
            graph.add_edge(member_node(member.name), node, kind="has")
            for address in link.addresses:
                net = network_node(address.network)
                graph.add_node(net, kind="network", label=str(address.network),
                               interface=link.interface, sync=link.interface == sync)
                graph.add_edge(node, net, kind="on", address=str(address.ip))
            iface = cluster.interface(link.interface)
            for vip in iface.vips if iface is not None else ():
                graph.add_edge(node, f"vip:{vip.ip}", kind="holds")
    for route in cluster.routes:
        dest = destination_node(route)
        graph.add_node(dest, kind="destination", label=str(route.destination),
                       table=route.table, default=route.is_default)
        if route.gateway is not None:
            gateway = f"gateway:{route.gateway}"
            graph.add_node(gateway, kind="gateway", label=str(route.gateway))
            graph.add_edge(gateway, dest, kind="route", route=route)
        for member in cluster.members:
            if not applies(route, member):
                continue
            name = route_interface(cluster, member, route)
            if name is None:
                continue
            device = device_node(member.name, name)
            if route.gateway is not None:
                graph.add_edge(device, f"gateway:{route.gateway}", kind="next-hop", route=route)
            else:
                graph.add_edge(device, dest, kind="direct", route=route)
    return graph


def topology(cluster: Cluster) -> networkx.MultiDiGraph:
    """The cluster's graph, built once per run (read only: callers must not change it)."""
    return cluster.memo.get(("topology",), lambda: _build(cluster))


# -- what the kernel looks up --------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class TableRoute:
    """One route of one table on one member: destination, the interface it leaves by."""

    destination: IPNetwork
    interface: str
    metric: int


@dataclass(frozen=True, slots=True)
class RuleLookup:
    """A policy-routing rule as the analysis sees it (addresses as networks)."""

    priority: int
    sources: tuple[IPNetwork, ...]  # empty: any
    destinations: tuple[IPNetwork, ...]
    in_interface: str | None
    marked: bool  # a mark selector: the analysis cannot see marks (both ways possible)
    table: int


@dataclass(frozen=True, slots=True)
class MemberRouting:
    """How one member routes one family: equal values route alike (`fwc diff` compares them).

    `main` holds the connected subnets and the main table's routes, `tables` the
    numbered tables, longest prefix first; `rules` the policy rules by priority.
    With rules, fwc puts `lookup main suppress_prefixlength 0` first: connected
    and specific main routes win over the tables, whose defaults win over main's.
    `fallback`: where a destination no route covers may leave (docs/analysis.md).
    """

    family: int
    main: tuple[TableRoute, ...]
    tables: tuple[tuple[int, tuple[TableRoute, ...]], ...]
    rules: tuple[RuleLookup, ...]
    fallback: frozenset[str]

    def table(self, number: int) -> tuple[TableRoute, ...]:
        return next((routes for n, routes in self.tables if n == number), ())


def _sorted(routes: list[TableRoute]) -> tuple[TableRoute, ...]:
    # Longest prefix first, then the lowest metric, like the kernel's choice.
    return tuple(sorted(routes, key=lambda r: (-r.destination.prefixlen, r.metric)))


def member_routing(cluster: Cluster, member: Member, family: int) -> MemberRouting:
    """MEMBER's lookups for FAMILY, read off the topology graph."""
    def make() -> MemberRouting:
        # Without routes the graph would hold nothing the lookups read: a flat policy's
        # check never pays for importing networkx.
        graph = topology(cluster) if cluster.routes else None
        main: list[TableRoute] = []
        tables: dict[int, list[TableRoute]] = {}
        for name, net in subnets(cluster, member, family):
            main.append(TableRoute(net, name, 0))
        for _, device, data in graph.out_edges(member_node(member.name), data=True) \
                if graph is not None else ():
            if data["kind"] != "has":
                continue
            interface = graph.nodes[device]["interface"]
            for _, _, edge in graph.out_edges(device, data=True):
                route: Route | None = edge.get("route")
                if route is None or route.family != family:
                    continue
                entry = TableRoute(route.destination, interface,
                                   route.metric if route.metric is not None else 0)
                if route.table is None:
                    main.append(entry)
                else:
                    tables.setdefault(route.table, []).append(entry)
        rules = tuple(sorted((
            RuleLookup(rule.priority, rule.sources, rule.destinations, rule.in_interface,
                       rule.mark is not None, rule.table)
            for rule in cluster.route_rules if rule.family == family and applies(rule, member)),
            key=lambda r: r.priority))
        # Nothing but the members' own sync addresses lies beyond the sync link (a route
        # over it is FWC241): traffic no route covers may leave by any other interface.
        sync = cluster.sync.link
        fallback = frozenset(link.interface for link in member.links
                             if link.interface != sync)
        return MemberRouting(family, _sorted(main),
                             tuple((n, _sorted(r)) for n, r in sorted(tables.items())),
                             rules, fallback)

    if not cluster.owns(member):
        return make()
    return cluster.memo.get(("routing", member.name, family), make)


def has_default(routing: MemberRouting) -> bool:
    return any(r.destination.prefixlen == 0 for r in routing.main)

