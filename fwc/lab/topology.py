"""Plan the lab from the model: segments, member ports, test hosts and probes.

Everything here is derived from one cluster of a resolved `fwc.model.Policy`
(its interfaces, members' links, VIPs, sync link, SNAT rules, expectations and
the policy's address objects); the lab keeps no description of a cluster of
its own. The plan is what the lab builds: namespaces, bridges, veth ports,
test hosts with their addresses, and the packets that probe each expectation.
With `--remap` every address the plan takes from the model goes through the
`Remap` first, so the plan only ever holds addresses that may reach the wire.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Sequence
from dataclasses import field

from fwc import protocols as proto
from fwc.backend.render.keepalived import preempt_delay
from fwc.model import Cluster, Endpoint, Member, Policy, PortRange, Track
from fwc.model.addresses import AddressSet
from fwc.model.records import dataclass
from fwc.model.topology import link_scoped
from fwc.model.vocabulary import NatAction

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface

# Only these may carry packets in the lab (RFC 5737, RFC 2544, RFC 3849).
DOC_RANGES: tuple[IPNetwork, ...] = tuple(
    ipaddress.ip_network(n)
    for n in ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "198.18.0.0/15", "2001:db8::/32")
)
# Where --remap puts subnets that are not documentation ranges.
REMAP_POOL_V4 = ipaddress.ip_network("198.18.0.0/15")
REMAP_POOL_V6 = ipaddress.ip_network("2001:db8:ff00::/40")

# Probes per service match of an expectation (docs/lab.md, "Drill 1"): every port up
# to this many; beyond it the ends of every range, then ports spread evenly over the
# rest. Each probe costs up to two 1.5 s timeouts per phase, so `tcp/1024-65535` must
# not become 64512 of them.
MAX_PROBED_PORTS = 16
PROBED_PROTOCOLS = ("tcp", "udp", "icmp")
# What a service without ports (`tcp` alone: every port) is probed on: port 0 can be
# neither listened on nor connected to, so its probe was refused by the destination's
# own kernel, which a `deny` took for the firewall's answer (and an `allow` never got).
EVERY_PORT = (PortRange(1, 65535),)
# The ICMP types the probe sends: echo requests (ICMP 8, ICMPv6 128). None is every type.
PROBED_ICMP_TYPES = (None, 8, 128)


# --------------------------------------------------------------------------
# The plan
# --------------------------------------------------------------------------
@dataclass(frozen=True)
class Probe:
    """One packet kind the lab sends for an expectation: one port of one service match.

    SRC and DST name what the expectation's endpoints name: an address object, a
    literal (`literal:LABEL`) or `firewall`.
    """

    text: str  # the expectation as written, for the report
    verdict: str  # "allow" | "deny"
    src: str
    dst: str
    service: str
    proto: str  # tcp, udp, icmp (icmpv6 is icmp with family 6), or a protocol not probed
    port: int | None
    family: int | None = None  # 4 or 6 for icmp/icmpv6 matches, None: either
    in_segment: str | None = None  # `in IFACE`: the packet must arrive there
    icmp_type: int | None = None  # the match's ICMP type (None: every type)


@dataclass
class SegmentPlan:
    name: str
    bridge: str
    subnets: list[IPNetwork]
    vips: list[IPInterface]
    is_sync: bool


@dataclass
class HostPlan:
    """One test-host namespace per segment, holding every test address there."""

    segment: str
    ns: str
    device: str
    addresses: list[IPInterface]
    gateways: list[IPAddress]  # the segment's VIPs, one per family
    names: dict[str, IPAddress] = field(default_factory=dict)  # object -> first address
    by_family: dict[str, dict[int, IPAddress]] = field(default_factory=dict)
    # Stand-ins for policy hosts beyond every segment (the Internet), as /32 or
    # /128 on the host of the outside segment, which the members route to.
    outside: list[IPInterface] = field(default_factory=list)
    # The policy's route gateways on this segment: the test host holds them, so the
    # routes fwc install puts on the members lead somewhere.
    routers: list[IPAddress] = field(default_factory=list)


@dataclass
class PortPlan:
    ns: str  # member or host namespace
    device: str
    segment: str
    port: str  # bridge port name in the switch namespace
    member: str | None = None  # the member it belongs to (None: a test host)
    addresses: tuple[IPInterface, ...] = ()  # a member's addresses on it, as compiled


@dataclass
class EndpointPlan:
    """Where a probe starts or ends: a test host address, or 'the firewall'."""

    name: str
    address: IPAddress | None  # None for "firewall" as a source
    host_ns: str | None  # test-host namespace, None when it is the firewall
    segment: str | None


@dataclass
class ProbePlan:
    probe: Probe
    src: EndpointPlan | None
    dst: EndpointPlan | None
    skip: str | None = None


@dataclass
class LabPlan:
    prefix: str
    cluster: Cluster  # the model's cluster the plan was derived from
    sw_ns: str
    member_ns: dict[str, str]
    segments: list[SegmentPlan]
    hosts: list[HostPlan]
    ports: list[PortPlan]
    probes: list[ProbePlan]
    snat_out: tuple[str, ...] = ()  # segments the policy SNATs out of
    # family -> the outside test host's address the members use as default route
    upstream: dict[int, IPAddress] = field(default_factory=dict)
    upstream_segment: str | None = None
    # family -> the gateway of the policy's own default route (main table), remapped:
    # the members get that route from the policy (fwc-routes.sh, installed by fwc
    # install, or keepalived's virtual_routes), so the lab adds none of its own.
    policy_default: dict[int, IPAddress] = field(default_factory=dict)
    remap: Remap = field(default_factory=lambda: Remap())  # identity unless --remap

    def host(self, segment: str) -> HostPlan | None:
        return next((h for h in self.hosts if h.segment == segment), None)

    def router_host(self, address: IPAddress) -> HostPlan | None:
        """The test host that holds ADDRESS as one of the policy's gateways."""
        return next((h for h in self.hosts if address in h.routers), None)

    def member_ports(self, member: str) -> list[PortPlan]:
        return [p for p in self.ports if p.member == member]

    @property
    def advert(self) -> float:
        """The policy's VRRP advert interval in seconds (what keepalived.conf says)."""
        return self.cluster.vrrp.advert_ms / 1000.0

    @property
    def master_down_bound(self) -> float:
        """The longest a backup keepalived hears no advert it accepts before it takes the
        VIPs, in seconds (`Vrrp.master_down_bound_s`, at this plan's advert)."""
        return proto.MASTER_DOWN_ADVERTS * self.advert

    @property
    def preempt(self) -> bool:
        return self.cluster.vrrp.preempt

    @property
    def preempt_delay(self) -> float:
        """keepalived's preempt_delay as compiled: a returning master waits this long."""
        return float(preempt_delay(self.cluster.vrrp)) if self.cluster.vrrp.preempt else 0.0

    @property
    def active_active(self) -> bool:
        """vrrp-groups mastered by different members: the VIPs are split while all is well."""
        return len({g.master for g in self.cluster.groups}) > 1

    def expected_vips(self) -> dict[str, set[str]]:
        """Member -> the VIPs (as on the wire) it holds while every member is well: its
        groups' with vrrp-groups, else every VIP on the highest priority."""
        out: dict[str, set[str]] = {m.name: set() for m in self.cluster.members}
        for iface in self.cluster.vrrp_interfaces:
            holder = self.cluster.vrrp_order(iface.name)[0].name
            out.setdefault(holder, set()).update(
                str(self.remap.interface(v).ip) for v in iface.vips)
        return out

    def priority(self, member: str) -> int:
        found = self.cluster.member(member)
        return found.priority if found is not None else 0


# --------------------------------------------------------------------------
# Address helpers
# --------------------------------------------------------------------------
def in_doc_ranges(net: IPNetwork | IPAddress) -> bool:
    if isinstance(net, ipaddress.IPv4Address | ipaddress.IPv6Address):
        return any(net in d for d in DOC_RANGES if d.version == net.version)
    return any(net.version == d.version and net.subnet_of(d) for d in DOC_RANGES)  # type: ignore[arg-type]


def member_subnets(cluster: Cluster, segment: str) -> list[IPNetwork]:
    """The subnets the members' addresses on SEGMENT lie in, in member order."""
    nets: list[IPNetwork] = []
    for member in cluster.members:
        link = member.link(segment)
        for addr in link.addresses if link else ():
            if addr.network not in nets:
                nets.append(addr.network)
    return nets


def _on_the_wire(net: IPNetwork) -> bool:
    """Whether NET's traffic could leave the lab's links: every range but the
    documentation ones and IPv6 link-local (fe80::/10), which no router forwards (a
    VRRPv3 virtual link-local VIP, members' static link-local addresses)."""
    return not in_doc_ranges(net) and not link_scoped(net.network_address)


def doc_range_violations(cluster: Cluster) -> list[str]:
    """Segments or VIPs outside the documentation ranges (link-local ones aside)."""
    problems: list[str] = []
    for iface in cluster.interfaces:
        for net in member_subnets(cluster, iface.name):
            if _on_the_wire(net):
                problems.append(f"segment {iface.name}: subnet {net}")
        for vip in iface.vips:
            if _on_the_wire(vip.network):
                problems.append(f"segment {iface.name}: VIP {vip}")
    return problems


def representatives(kind: str, addresses: AddressSet) -> list[IPAddress | IPNetwork]:
    """What stands for an address set in the lab: addresses, or networks.

    A network object is its networks (a probe then uses the segment's test
    address inside it); otherwise each single address is itself and each range
    its first address, or its first host when it is a whole subnet (groups
    flatten to ranges, and a probe from a network address would be odd).
    """
    out: list[IPAddress | IPNetwork] = []
    for family in (4, 6):
        if kind == "network":
            for net in addresses.networks(family):
                out.append(net.network_address if net.prefixlen == net.max_prefixlen else net)
            continue
        for lo, hi in addresses.family(family):
            first = ipaddress.ip_address(lo) if family == 4 else ipaddress.IPv6Address(lo)
            out.append(first if lo == hi else _range_representative(first, hi - lo + 1))
    return out


def _range_representative(first: IPAddress, size: int) -> IPAddress:
    if size >= 4 and size & (size - 1) == 0 and int(first) % size == 0:
        return first + 1
    return first


def probe_ports(ranges: Sequence[PortRange], cap: int = MAX_PROBED_PORTS) -> tuple[int, ...]:
    """The ports to probe for RANGES, sorted: all of them, or at most CAP.

    Over the cap, the ends of each range come first (an off-by-one in a rule shows
    there), then evenly spaced ports of the whole set fill up to CAP. Deterministic:
    the same policy probes the same ports on every run.
    """
    every: set[int] = set()
    for r in ranges:
        every.update(range(r.low, r.high + 1))
    if len(every) <= cap:
        return tuple(sorted(every))
    edges = sorted({end for r in ranges for end in (r.low, r.high)})
    if len(edges) >= cap:  # many ranges: their ends, evenly spaced, first and last kept
        return tuple(edges[k * (len(edges) - 1) // (cap - 1)] for k in range(cap))
    # Interior points spaced evenly over the ports that are not an end; the spacing is
    # at least one port, so the floor division never picks one twice.
    rest = sorted(every.difference(edges))
    m = cap - len(edges)
    sample = [rest[(k + 1) * (len(rest) + 1) // (m + 1) - 1] for k in range(m)]
    return tuple(sorted([*edges, *sample]))


# --------------------------------------------------------------------------
# Remapping onto documentation ranges
# --------------------------------------------------------------------------
@dataclass
class Remap:
    """A consistent mapping of non-documentation subnets onto documentation ranges."""

    pairs: list[tuple[IPNetwork, IPNetwork]] = field(default_factory=list)

    def address(self, addr: IPAddress) -> IPAddress:
        for old, new in self.pairs:
            if addr.version == old.version and addr in old:
                offset = int(addr) - int(old.network_address)
                return ipaddress.ip_address(int(new.network_address) + offset)
        return addr

    def interface(self, iface: IPInterface) -> IPInterface:
        return ipaddress.ip_interface(f"{self.address(iface.ip)}/{iface.network.prefixlen}")

    def network(self, net: IPNetwork) -> IPNetwork:
        return ipaddress.ip_network(f"{self.address(net.network_address)}/{net.prefixlen}",
                                    strict=False)

    def rewrite(self, content: str) -> str:
        """Rewrite every mapped address that appears in a config file's text."""
        if not self.pairs:
            return content

        def sub(match: re.Match[str]) -> str:
            token = match.group(0)
            try:
                addr = ipaddress.ip_address(token)
            except ValueError:
                return token
            mapped = self.address(addr)
            return str(mapped) if mapped != addr else token

        content = _V4_TOKEN.sub(sub, content)
        return _V6_TOKEN.sub(sub, content)

    def leftovers(self, content: str) -> list[str]:
        """Addresses of a remapped subnet still present (they must not reach the wire)."""
        found = []
        for token in _V4_TOKEN.findall(content) + _V6_TOKEN.findall(content):
            try:
                addr = ipaddress.ip_address(token)
            except ValueError:
                continue
            if any(addr.version == old.version and addr in old for old, _ in self.pairs):
                found.append(token)
        return found


_V4_TOKEN = re.compile(r"(?<![\w.:])(?:\d{1,3}\.){3}\d{1,3}(?![\w:]|\.\d)")
_V6_TOKEN = re.compile(r"(?<![\w:.])(?:[0-9a-fA-F]{0,4}:){2,7}[0-9a-fA-F]{0,4}(?![\w:])")


def plan_remap(cluster: Cluster) -> Remap:
    """Map every non-documentation segment subnet onto 198.18/15 or 2001:db8:ff00::/40."""
    remap = Remap()
    next_v4 = int(REMAP_POOL_V4.network_address)
    next_v6 = int(REMAP_POOL_V6.network_address)
    seen: list[IPNetwork] = []
    for iface in cluster.interfaces:
        for net in member_subnets(cluster, iface.name):
            if in_doc_ranges(net) or net in seen:
                continue
            seen.append(net)
            size = net.num_addresses
            if net.version == 4:
                start = -(-next_v4 // size) * size  # align to the block size
                new = ipaddress.ip_network((start, net.prefixlen))
                if not new.subnet_of(REMAP_POOL_V4):  # type: ignore[arg-type]
                    raise ValueError(f"cannot remap {net}: 198.18.0.0/15 exhausted")
                next_v4 = start + size
            else:
                if net.prefixlen < 48:
                    raise ValueError(f"cannot remap {net}: IPv6 prefixes shorter than /48")
                size = 1 << (128 - 48)  # one /48 per subnet keeps offsets intact
                start = -(-next_v6 // size) * size
                new = ipaddress.ip_network((start, net.prefixlen))
                next_v6 = start + size
            remap.pairs.append((net, new))
    return remap


# --------------------------------------------------------------------------
# From the model
# --------------------------------------------------------------------------
def _endpoint_names(endpoint: Endpoint, literals: dict[str, AddressSet]) -> list[str]:
    names: list[str] = []
    for item in endpoint.items:
        if item.negated:
            continue
        if item.kind == "firewall":
            names.append("firewall")
        elif item.kind == "object" and item.object_name:
            names.append(item.object_name)
        elif item.kind in ("literal", "vip"):
            label = f"literal:{item.label}"
            literals.setdefault(label, item.addresses)
            names.append(label)
    return names


def probes_of(cluster: Cluster) -> tuple[tuple[Probe, ...], dict[str, AddressSet]]:
    """Every probe of the cluster's expectations, and the literals they name.

    One probe per source, destination, service match and port (`probe_ports`); an
    endpoint `any` is not probed (it names no test address).
    """
    literals: dict[str, AddressSet] = {}
    probes: list[Probe] = []
    for exp in cluster.expectations:
        services = ", ".join(exp.service_labels)
        text = f"{exp.verdict} {exp.source.label} -> {exp.destination.label} service {services}"
        if exp.in_interface:
            text += f" in {exp.in_interface}"
        if exp.via:
            text += f" via {exp.via}"
        for src in _endpoint_names(exp.source, literals):
            for dst in _endpoint_names(exp.destination, literals):
                for match in exp.services:
                    proto = {"icmpv6": "icmp"}.get(match.protocol, match.protocol)
                    ports: tuple[int | None, ...] = _probed_ports(proto, match.ports)
                    probes.extend(
                        Probe(text, str(exp.verdict), src, dst, services, proto, port,
                              match.family, exp.in_interface, match.icmp_type)
                        for port in ports
                    )
    return tuple(probes), literals


def _probed_ports(proto: str, ports: Sequence[PortRange]) -> tuple[int | None, ...]:
    """The ports probed for one service match: none (None) for a protocol without
    ports; every port of TCP or UDP (no ports given) sampled like any wide range."""
    if proto in ("tcp", "udp"):
        return probe_ports(ports or EVERY_PORT)
    return (None,)


def snat_segments(cluster: Cluster) -> tuple[str, ...]:
    """The interfaces the policy SNATs out of (to an address: the VIP, for HA)."""
    out: list[str] = []
    for rule in cluster.nat:
        if (rule.action is NatAction.SNAT and rule.target is not None and rule.out_interface
                and rule.out_interface not in out):
            out.append(rule.out_interface)
    return tuple(out)


def plan(policy: Policy, cluster: Cluster, prefix: str, remap: Remap | None = None) -> LabPlan:
    """Lay out namespaces, bridges, ports, test hosts and probes for CLUSTER of POLICY."""
    remap = remap or Remap()
    sw_ns = f"{prefix}-sw"
    member_ns = {m.name: f"{prefix}-{m.name}" for m in cluster.members}
    probes, literals = probes_of(cluster)
    named: list[tuple[str, list[IPAddress | IPNetwork]]] = [
        (name, _mapped(representatives(obj.kind, obj.addresses), remap))
        for name, obj in policy.objects.items()
    ]
    named += [(label, _mapped(representatives("literal", addresses), remap))
              for label, addresses in literals.items()]
    segments: list[SegmentPlan] = []
    ports: list[PortPlan] = []
    hosts: list[HostPlan] = []
    for i, iface in enumerate(cluster.interfaces):
        # Bridge and port names are limited to 15 characters: keep them short.
        bridge = f"br{i}"
        subnets = [remap.network(n) for n in member_subnets(cluster, iface.name)]
        vips = [remap.interface(v) for v in iface.vips]
        # A family whose members hold only link-local addresses (IPv6: legal, FWC203)
        # still has its VIPs' subnet: the test host needs an address there to reach
        # its gateway, the VIP.
        subnets += [v.network for v in vips if not link_scoped(v.ip)
                    and not any(v.ip in n for n in subnets)]
        is_sync = iface.name == cluster.sync.link
        segments.append(SegmentPlan(iface.name, bridge, subnets, vips, is_sync))
        for j, member in enumerate(cluster.members):
            link = member.link(iface.name)
            if link is not None:
                ports.append(PortPlan(member_ns[member.name], link.device, iface.name,
                                      f"m{j}s{i}", member.name,
                                      tuple(remap.interface(a) for a in link.addresses)))
        if is_sync or not subnets:
            continue
        used = _used_addresses(cluster.members, iface.name, vips, remap)
        host = _plan_host(iface.name, subnets, vips, used, named, f"{prefix}-h{i}")
        _hold_routers(host, subnets, [*route_gateways(cluster, remap),
                                      *(gw for gw, _ in tracked_gateways(cluster, remap))], used)
        hosts.append(host)
        ports.append(PortPlan(host.ns, host.device, iface.name, f"h{i}"))
    lab = LabPlan(prefix, cluster, sw_ns, member_ns, segments, hosts, ports, [],
                  snat_segments(cluster), remap=remap,
                  policy_default=policy_defaults(cluster, remap))
    _place_outside(lab, named)
    lab.probes = [_plan_probe(lab, p) for p in probes]
    return lab


def _mapped(items: list[IPAddress | IPNetwork], remap: Remap) -> list[IPAddress | IPNetwork]:
    return [remap.address(i) if isinstance(i, ipaddress.IPv4Address | ipaddress.IPv6Address)
            else remap.network(i) for i in items]


def _used_addresses(members: Iterable[Member], segment: str, vips: list[IPInterface],
                    remap: Remap) -> set[IPAddress]:
    used = {v.ip for v in vips}
    for m in members:
        link = m.link(segment)
        if link:
            used.update(remap.address(a.ip) for a in link.addresses)
    return used


def _plan_host(
    segment: str,
    subnets: list[IPNetwork],
    vips: list[IPInterface],
    used: set[IPAddress],
    named: list[tuple[str, list[IPAddress | IPNetwork]]],
    ns: str,
) -> HostPlan:
    host = HostPlan(segment, ns, "eth0", [], [])
    for name, items in named:
        for item in items:
            if not isinstance(item, ipaddress.IPv4Address | ipaddress.IPv6Address):
                continue
            net = next((n for n in subnets if n.version == item.version and item in n), None)
            if net is None or item in used or item.version in host.by_family.get(name, {}):
                continue
            _name(host, name, item)
            iface = ipaddress.ip_interface(f"{item}/{net.prefixlen}")
            if iface not in host.addresses:
                host.addresses.append(iface)
    # Every family present on the segment gets at least one test address.
    for net in subnets:
        if not any(a.version == net.version and a.ip in net for a in host.addresses):
            free = _first_free(net, used | {a.ip for a in host.addresses})
            host.addresses.append(ipaddress.ip_interface(f"{free}/{net.prefixlen}"))
    # Network objects covering the segment resolve to its first test address.
    for name, items in named:
        for item in items:
            if isinstance(item, ipaddress.IPv4Network | ipaddress.IPv6Network):
                hit = next(
                    (a.ip for a in host.addresses if a.version == item.version and a.ip in item),
                    None,
                )
                if hit is not None and item.version not in host.by_family.get(name, {}):
                    _name(host, name, hit)
    for vip in vips:
        if not any(g.version == vip.version for g in host.gateways):
            host.gateways.append(vip.ip)
    return host


def route_gateways(cluster: Cluster, remap: Remap) -> list[IPAddress]:
    """Every gateway the cluster's routes name, remapped, in source order."""
    out: list[IPAddress] = []
    for route in cluster.routes:
        if route.gateway is not None and remap.address(route.gateway) not in out:
            out.append(remap.address(route.gateway))
    return out


def tracked_gateways(cluster: Cluster, remap: Remap) -> list[tuple[IPAddress, Track]]:
    """The addresses `track { ping ... }` items watch, remapped, with their track: the
    test host of their segment holds them (the gateway drill silences them there)."""
    out: list[tuple[IPAddress, Track]] = []
    for track in cluster.tracks:
        if track.kind != "ping":
            continue
        address = remap.address(ipaddress.ip_address(track.target))
        if all(address != gw for gw, _ in out):
            out.append((address, track))
    return out


def policy_defaults(cluster: Cluster, remap: Remap) -> dict[int, IPAddress]:
    """Family -> gateway of the cluster's first main-table default route."""
    out: dict[int, IPAddress] = {}
    for route in cluster.routes:
        if (route.destination.prefixlen == 0 and route.table is None
                and route.gateway is not None):
            out.setdefault(route.gateway.version, remap.address(route.gateway))
    return out


def _hold_routers(host: HostPlan, subnets: list[IPNetwork], gateways: list[IPAddress],
                  used: set[IPAddress]) -> None:
    """The policy's gateways on HOST's segment become addresses of its test host."""
    for gw in gateways:
        net = next((n for n in subnets if n.version == gw.version and gw in n), None)
        if net is None or gw in used or gw in host.routers:
            continue
        host.routers.append(gw)
        iface = ipaddress.ip_interface(f"{gw}/{net.prefixlen}")
        if iface not in host.addresses:
            host.addresses.append(iface)


def _name(host: HostPlan, name: str, addr: IPAddress) -> None:
    host.names.setdefault(name, addr)
    host.by_family.setdefault(name, {}).setdefault(addr.version, addr)


def _place_outside(lab: LabPlan, named: list[tuple[str, list[IPAddress | IPNetwork]]]) -> None:
    """Put policy hosts that lie beyond every segment on the outside segment's host.

    The outside segment is where the policy SNATs to (the uplink); its test
    host plays the upstream router: it holds those addresses, and every member
    gets a default route to it, as a real deployment has one to its ISP.
    Only documentation addresses are placed (they are the only ones allowed
    on the wire).
    """
    outside = next((lab.host(s) for s in lab.snat_out if lab.host(s)), None)
    if outside is None:
        return
    nets = [n for s in lab.segments for n in s.subnets]
    taken = {a.ip for h in lab.hosts for a in h.addresses}
    for name, items in named:
        if any(name in h.names for h in lab.hosts):
            continue
        for item in items:
            if not isinstance(item, ipaddress.IPv4Address | ipaddress.IPv6Address):
                continue
            if any(item.version == n.version and item in n for n in nets):
                continue
            if not in_doc_ranges(item) or item in taken:
                continue
            if item.version in outside.by_family.get(name, {}):
                continue
            _name(outside, name, item)
            outside.outside.append(ipaddress.ip_interface(f"{item}/{item.max_prefixlen}"))
            taken.add(item)
    if outside.outside:
        lab.upstream_segment = outside.segment
        for fam in sorted({a.version for a in outside.outside}):
            # The policy's own gateway when this host holds it, else its first address.
            policy_gw = lab.policy_default.get(fam)
            own = policy_gw if policy_gw in outside.routers else next(
                (a.ip for a in outside.addresses if a.version == fam), None)
            if own is not None:
                lab.upstream[fam] = own


def _first_free(net: IPNetwork, used: set[IPAddress]) -> IPAddress:
    for count, addr in enumerate(net.hosts()):
        if addr not in used:
            return addr
        if count > 65536:
            break
    raise ValueError(f"no free address in {net}")


def resolve_endpoint(lab: LabPlan, name: str, family: int | None = None) -> EndpointPlan | None:
    if name == "firewall":
        return EndpointPlan("firewall", None, None, None)
    for host in lab.hosts:
        if family is None and name in host.names:
            return EndpointPlan(name, host.names[name], host.ns, host.segment)
        addr = host.by_family.get(name, {}).get(family or 0)
        if addr is not None:
            return EndpointPlan(name, addr, host.ns, host.segment)
    return None


def _plan_probe(lab: LabPlan, probe: Probe) -> ProbePlan:
    family = probe.family
    src = resolve_endpoint(lab, probe.src, family)
    if family is None and src is not None and src.address is not None:
        family = src.address.version  # both ends in the same family
    dst = resolve_endpoint(lab, probe.dst, family)
    if dst is None and probe.family is None and src is not None and src.address is not None:
        # e.g. `admins -> web6`: try the source's other family
        other = 10 - src.address.version
        alt_src, alt_dst = (
            resolve_endpoint(lab, probe.src, other),
            resolve_endpoint(lab, probe.dst, other),
        )
        if alt_src is not None and alt_dst is not None:
            src, dst = alt_src, alt_dst
    fam = f" with an IPv{family} address" if family else ""
    skip = None
    if src is None:
        skip = f"source {probe.src!r} has no test address{fam} (not in a lab segment)"
    elif dst is None:
        skip = f"destination {probe.dst!r} has no test address{fam} (not in a lab segment)"
    elif probe.in_segment and src.address is not None and src.segment != probe.in_segment:
        skip = (
            f"source {probe.src!r} sits on {src.segment}, but the expectation is "
            f"about packets arriving on {probe.in_segment}"
        )
    elif src.address is None and dst.address is None:
        skip = "firewall to firewall is not probed"
    elif src.host_ns is not None and src.host_ns == dst.host_ns:
        # Delivered inside one test host: the packet never meets the rules, so
        # whatever it does says nothing about them.
        skip = (f"source {probe.src!r} and destination {probe.dst!r} are both on the "
                f"test host of {src.segment}: the packet would not cross the firewall")
    elif probe.proto not in PROBED_PROTOCOLS:
        skip = f"protocol {probe.proto} is not probed"
    elif probe.proto == "icmp" and probe.icmp_type not in PROBED_ICMP_TYPES:
        # The probe sends an echo request: whether it passes says nothing about
        # another type, and a `deny` of that type would pass on the echo's drop.
        skip = f"ICMP type {probe.icmp_type} is not probed (the lab sends echo requests only)"
    return ProbePlan(probe, src, dst, skip)


def vip_for(lab: LabPlan, segment: str, version: int) -> IPAddress | None:
    seg = next(s for s in lab.segments if s.name == segment)
    return next((v.ip for v in seg.vips if v.version == version), None)


def all_vips(lab: LabPlan) -> list[IPInterface]:
    return [v for s in lab.segments for v in s.vips]


def describe(lab: LabPlan) -> Iterable[str]:
    for seg in lab.segments:
        kind = "sync" if seg.is_sync else "segment"
        nets = ", ".join(str(n) for n in seg.subnets)
        vips = ", ".join(str(v) for v in seg.vips) or "-"
        yield f"{kind} {seg.name}: bridge {seg.bridge} in {lab.sw_ns}, {nets}, VIPs {vips}"
    for host in lab.hosts:
        addrs = ", ".join(str(a) for a in host.addresses)
        gws = ", ".join(str(g) for g in host.gateways) or "none"
        yield f"test host {host.ns} on {host.segment}: {addrs} (default via {gws})"
        if host.outside:
            outs = ", ".join(str(a) for a in host.outside)
            yield f"  {host.ns} also stands in for hosts beyond the segments: {outs}"
        if host.routers:
            yield f"  {host.ns} holds the policy's route gateways: " + ", ".join(
                str(r) for r in host.routers)
    for fam, addr in sorted(lab.upstream.items()):
        whose = ("the policy's route, installed by fwc install"
                 if lab.policy_default.get(fam) == addr else "added by the lab")
        yield (f"members: IPv{fam} default route via {addr} (the {lab.upstream_segment} "
               f"test host; {whose})")
    for fam, gw in sorted(lab.policy_default.items()):
        if lab.upstream.get(fam) != gw:
            yield f"members: IPv{fam} default route via {gw} (the policy's route)"
