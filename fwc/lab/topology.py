"""Plan the lab: segments, member links, test hosts and their addresses.

The planner works on :class:`LabCluster`, a small plain description of what
the lab needs from a policy. Keeping it independent of ``fwc.model`` lets the
lab be tested with hand-written clusters; ``fwc.lab.adapter`` turns a compiled
policy into one.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass, field, replace

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


# --------------------------------------------------------------------------
# Input: what the lab needs to know about a cluster
# --------------------------------------------------------------------------
@dataclass(frozen=True)
class LabLink:
    """One member's device on one logical interface, addresses as compiled."""

    device: str
    addresses: tuple[str, ...]  # CIDR, e.g. "192.0.2.1/24"


@dataclass(frozen=True)
class LabMember:
    name: str
    priority: int
    links: dict[str, LabLink]  # logical interface -> device + addresses


@dataclass(frozen=True)
class LabSegment:
    """A logical interface: one L2 segment shared by every member."""

    name: str
    vips: tuple[str, ...] = ()  # CIDR
    vrid: int | None = None


@dataclass(frozen=True)
class LabObject:
    """A policy host/network/range object; items are addresses, CIDRs or a-b ranges."""

    name: str
    items: tuple[str, ...]


@dataclass(frozen=True)
class LabExpectation:
    verdict: str  # "allow" | "deny"
    src: str  # object name or "firewall"
    dst: str
    service: str
    proto: str  # "tcp" | "udp" | "icmp"
    port: int | None
    text: str = ""
    family: int | None = None  # 4 or 6 for icmp/icmpv6 matches, None: either
    in_segment: str | None = None  # `in IFACE`: the packet must arrive there


@dataclass(frozen=True)
class LabSnat:
    from_segment: str
    out_segment: str
    to_address: str


@dataclass(frozen=True)
class LabCluster:
    name: str
    members: tuple[LabMember, ...]
    segments: tuple[LabSegment, ...]
    sync: str | None
    objects: tuple[LabObject, ...] = ()
    expectations: tuple[LabExpectation, ...] = ()
    snat: tuple[LabSnat, ...] = ()
    advert: float = 1.0
    preempt: bool = True  # keepalived default: the highest priority always ends up master
    # keepalived's preempt_delay as compiled: a returning master waits this long (FWC221).
    preempt_delay: float = 0.0

    def segment(self, name: str) -> LabSegment:
        for seg in self.segments:
            if seg.name == name:
                return seg
        raise KeyError(name)


# --------------------------------------------------------------------------
# Output: the plan
# --------------------------------------------------------------------------
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


@dataclass
class PortPlan:
    ns: str  # member or host namespace
    device: str
    segment: str
    port: str  # bridge port name in the switch namespace


@dataclass
class Endpoint:
    """Where a probe starts or ends: a test host address, or 'the firewall'."""

    name: str
    address: IPAddress | None  # None for "firewall" as a source
    host_ns: str | None  # test-host namespace, None when it is the firewall
    segment: str | None


@dataclass
class ProbePlan:
    expectation: LabExpectation
    src: Endpoint | None
    dst: Endpoint | None
    skip: str | None = None


@dataclass
class LabPlan:
    prefix: str
    cluster: LabCluster
    sw_ns: str
    member_ns: dict[str, str]
    segments: list[SegmentPlan]
    hosts: list[HostPlan]
    ports: list[PortPlan]
    probes: list[ProbePlan]
    # family -> the outside test host's address the members use as default route
    upstream: dict[int, IPAddress] = field(default_factory=dict)
    upstream_segment: str | None = None

    def host(self, segment: str) -> HostPlan | None:
        return next((h for h in self.hosts if h.segment == segment), None)


# --------------------------------------------------------------------------
# Address helpers
# --------------------------------------------------------------------------
def in_doc_ranges(net: IPNetwork | IPAddress) -> bool:
    if isinstance(net, ipaddress.IPv4Address | ipaddress.IPv6Address):
        return any(net in d for d in DOC_RANGES if d.version == net.version)
    return any(net.version == d.version and net.subnet_of(d) for d in DOC_RANGES)  # type: ignore[arg-type]


def segment_subnets(cluster: LabCluster, segment: str) -> list[IPNetwork]:
    nets: list[IPNetwork] = []
    for member in cluster.members:
        link = member.links.get(segment)
        if link is None:
            continue
        for addr in link.addresses:
            net = ipaddress.ip_interface(addr).network
            if net not in nets:
                nets.append(net)
    return nets


def doc_range_violations(cluster: LabCluster) -> list[str]:
    """Segments, VIPs or member addresses outside the documentation ranges."""
    problems: list[str] = []
    for seg in cluster.segments:
        for net in segment_subnets(cluster, seg.name):
            if not in_doc_ranges(net):
                problems.append(f"segment {seg.name}: subnet {net}")
        for vip in seg.vips:
            if not in_doc_ranges(ipaddress.ip_interface(vip).network):
                problems.append(f"segment {seg.name}: VIP {vip}")
    return problems


def object_addresses(obj: LabObject) -> list[IPAddress | IPNetwork]:
    """Parse an object's items; ranges are represented by their first address."""
    out: list[IPAddress | IPNetwork] = []
    for item in obj.items:
        if "-" in item and "/" not in item:
            first, last = (ipaddress.ip_address(x.strip()) for x in item.split("-", 1))
            out.append(_range_representative(first, last))
        elif "/" in item:
            net = ipaddress.ip_network(item, strict=False)
            out.append(net.network_address if net.prefixlen == net.max_prefixlen else net)
        else:
            out.append(ipaddress.ip_address(item))
    return out


def _range_representative(first: IPAddress, last: IPAddress) -> IPAddress:
    """A range's first address, unless the range is a whole subnet: then its first host.

    Groups flatten to ranges, so a group holding 192.0.2.0/24 arrives as
    192.0.2.0-192.0.2.255; a probe from the network address would be odd.
    """
    size = int(last) - int(first) + 1
    if size >= 4 and size & (size - 1) == 0 and int(first) % size == 0:
        return ipaddress.ip_address(int(first) + 1)
    return first


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

    def text(self, value: str) -> str:
        """Map one address, CIDR, range or interface string."""
        if "-" in value and "/" not in value:
            a, b = value.split("-", 1)
            return f"{self.text(a.strip())}-{self.text(b.strip())}"
        if "/" in value:
            iface = ipaddress.ip_interface(value)
            return f"{self.address(iface.ip)}/{iface.network.prefixlen}"
        return str(self.address(ipaddress.ip_address(value)))

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


def plan_remap(cluster: LabCluster) -> Remap:
    """Map every non-documentation segment subnet onto 198.18/15 or 2001:db8:ff00::/40."""
    remap = Remap()
    next_v4 = int(REMAP_POOL_V4.network_address)
    next_v6 = int(REMAP_POOL_V6.network_address)
    seen: list[IPNetwork] = []
    for seg in cluster.segments:
        for net in segment_subnets(cluster, seg.name):
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


def remap_cluster(cluster: LabCluster, remap: Remap) -> LabCluster:
    members = tuple(
        replace(
            m,
            links={
                k: replace(v, addresses=tuple(remap.text(a) for a in v.addresses))
                for k, v in m.links.items()
            },
        )
        for m in cluster.members
    )
    segments = tuple(
        replace(s, vips=tuple(remap.text(v) for v in s.vips)) for s in cluster.segments
    )
    objects = tuple(
        replace(o, items=tuple(remap.text(i) for i in o.items)) for o in cluster.objects
    )
    snat = tuple(replace(s, to_address=remap.text(s.to_address)) for s in cluster.snat)
    return replace(cluster, members=members, segments=segments, objects=objects, snat=snat)


# --------------------------------------------------------------------------
# Planning
# --------------------------------------------------------------------------
def plan(cluster: LabCluster, prefix: str) -> LabPlan:
    """Lay out namespaces, bridges, ports and test hosts for CLUSTER."""
    sw_ns = f"{prefix}-sw"
    member_ns = {m.name: f"{prefix}-{m.name}" for m in cluster.members}
    segments: list[SegmentPlan] = []
    ports: list[PortPlan] = []
    hosts: list[HostPlan] = []
    for i, seg in enumerate(cluster.segments):
        # Bridge and port names are limited to 15 characters: keep them short.
        bridge = f"br{i}"
        subnets = segment_subnets(cluster, seg.name)
        vips = [ipaddress.ip_interface(v) for v in seg.vips]
        is_sync = seg.name == cluster.sync
        segments.append(SegmentPlan(seg.name, bridge, subnets, vips, is_sync))
        for j, member in enumerate(cluster.members):
            link = member.links.get(seg.name)
            if link is not None:
                ports.append(PortPlan(member_ns[member.name], link.device, seg.name, f"m{j}s{i}"))
        if is_sync or not subnets:
            continue
        host = _plan_host(cluster, seg, subnets, vips, f"{prefix}-h{i}")
        hosts.append(host)
        ports.append(PortPlan(host.ns, host.device, seg.name, f"h{i}"))
    lab = LabPlan(prefix, cluster, sw_ns, member_ns, segments, hosts, ports, [])
    _place_outside(lab)
    lab.probes = [_plan_probe(lab, e) for e in cluster.expectations]
    return lab


def _used_addresses(cluster: LabCluster, segment: LabSegment) -> set[IPAddress]:
    used = {ipaddress.ip_interface(v).ip for v in segment.vips}
    for m in cluster.members:
        link = m.links.get(segment.name)
        if link:
            used.update(ipaddress.ip_interface(a).ip for a in link.addresses)
    return used


def _plan_host(
    cluster: LabCluster,
    seg: LabSegment,
    subnets: list[IPNetwork],
    vips: list[IPInterface],
    ns: str,
) -> HostPlan:
    used = _used_addresses(cluster, seg)
    host = HostPlan(seg.name, ns, "eth0", [], [])
    for obj in cluster.objects:
        for item in object_addresses(obj):
            if not isinstance(item, ipaddress.IPv4Address | ipaddress.IPv6Address):
                continue
            net = next((n for n in subnets if n.version == item.version and item in n), None)
            if net is None or item in used or item.version in host.by_family.get(obj.name, {}):
                continue
            _name(host, obj.name, item)
            iface = ipaddress.ip_interface(f"{item}/{net.prefixlen}")
            if iface not in host.addresses:
                host.addresses.append(iface)
    # Every family present on the segment gets at least one test address.
    for net in subnets:
        if not any(a.version == net.version and a.ip in net for a in host.addresses):
            free = _first_free(net, used | {a.ip for a in host.addresses})
            host.addresses.append(ipaddress.ip_interface(f"{free}/{net.prefixlen}"))
    # Network objects covering the segment resolve to its first test address.
    for obj in cluster.objects:
        for item in object_addresses(obj):
            if isinstance(item, ipaddress.IPv4Network | ipaddress.IPv6Network):
                hit = next(
                    (a.ip for a in host.addresses if a.version == item.version and a.ip in item),
                    None,
                )
                if hit is not None and item.version not in host.by_family.get(obj.name, {}):
                    _name(host, obj.name, hit)
    for vip in vips:
        if not any(g.version == vip.version for g in host.gateways):
            host.gateways.append(vip.ip)
    return host


def _name(host: HostPlan, name: str, addr: IPAddress) -> None:
    host.names.setdefault(name, addr)
    host.by_family.setdefault(name, {}).setdefault(addr.version, addr)


def _place_outside(lab: LabPlan) -> None:
    """Put policy hosts that lie beyond every segment on the outside segment's host.

    The outside segment is where the policy SNATs to (the uplink); its test
    host plays the upstream router: it holds those addresses, and every member
    gets a default route to it, as a real deployment has one to its ISP.
    Only documentation addresses are placed (they are the only ones allowed
    on the wire).
    """
    outside = next(
        (lab.host(s.out_segment) for s in lab.cluster.snat if lab.host(s.out_segment)), None
    )
    if outside is None:
        return
    nets = [n for s in lab.segments for n in s.subnets]
    taken = {a.ip for h in lab.hosts for a in h.addresses}
    for obj in lab.cluster.objects:
        if any(obj.name in h.names for h in lab.hosts):
            continue
        for item in object_addresses(obj):
            if not isinstance(item, ipaddress.IPv4Address | ipaddress.IPv6Address):
                continue
            if any(item.version == n.version and item in n for n in nets):
                continue
            if not in_doc_ranges(item) or item in taken:
                continue
            if item.version in outside.by_family.get(obj.name, {}):
                continue
            _name(outside, obj.name, item)
            outside.outside.append(ipaddress.ip_interface(f"{item}/{item.max_prefixlen}"))
            taken.add(item)
    if outside.outside:
        lab.upstream_segment = outside.segment
        for fam in sorted({a.version for a in outside.outside}):
            own = next((a.ip for a in outside.addresses if a.version == fam), None)
            if own is not None:
                lab.upstream[fam] = own


def _first_free(net: IPNetwork, used: set[IPAddress]) -> IPAddress:
    for count, addr in enumerate(net.hosts()):
        if addr not in used:
            return addr
        if count > 65536:
            break
    raise ValueError(f"no free address in {net}")


def resolve_endpoint(lab: LabPlan, name: str, family: int | None = None) -> Endpoint | None:
    if name == "firewall":
        return Endpoint("firewall", None, None, None)
    for host in lab.hosts:
        if family is None and name in host.names:
            return Endpoint(name, host.names[name], host.ns, host.segment)
        addr = host.by_family.get(name, {}).get(family or 0)
        if addr is not None:
            return Endpoint(name, addr, host.ns, host.segment)
    return None


def _plan_probe(lab: LabPlan, exp: LabExpectation) -> ProbePlan:
    family = exp.family
    src = resolve_endpoint(lab, exp.src, family)
    if family is None and src is not None and src.address is not None:
        family = src.address.version  # both ends in the same family
    dst = resolve_endpoint(lab, exp.dst, family)
    if dst is None and exp.family is None and src is not None and src.address is not None:
        # e.g. `admins -> web6`: try the source's other family
        other = 10 - src.address.version
        alt_src, alt_dst = (
            resolve_endpoint(lab, exp.src, other),
            resolve_endpoint(lab, exp.dst, other),
        )
        if alt_src is not None and alt_dst is not None:
            src, dst = alt_src, alt_dst
    fam = f" with an IPv{family} address" if family else ""
    skip = None
    if src is None:
        skip = f"source {exp.src!r} has no test address{fam} (not in a lab segment)"
    elif dst is None:
        skip = f"destination {exp.dst!r} has no test address{fam} (not in a lab segment)"
    elif exp.in_segment and src.address is not None and src.segment != exp.in_segment:
        skip = (
            f"source {exp.src!r} sits on {src.segment}, but the expectation is "
            f"about packets arriving on {exp.in_segment}"
        )
    elif src.address is None and dst.address is None:
        skip = "firewall to firewall is not probed"
    elif exp.proto not in ("tcp", "udp", "icmp"):
        skip = f"protocol {exp.proto} is not probed"
    return ProbePlan(exp, src, dst, skip)


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
    for fam, addr in sorted(lab.upstream.items()):
        yield f"members: IPv{fam} default route via {addr} (the {lab.upstream_segment} test host)"
