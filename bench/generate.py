"""Deterministic synthetic policies for the benchmark, for fwc and for Aerleon.

One abstract site (objects, services, rules) is drawn from a seeded RNG and
written twice: as a `*.fw` policy and as the equivalent Aerleon policy with its
`.net`/`.svc` definitions, so that both tools compile the same rule set.

Only documentation and benchmark ranges are used (198.18.0.0/15 for IPv4,
2001:db8::/32 for IPv6) so that nothing looks like a real network.
"""

from __future__ import annotations

import ipaddress
import random
from dataclasses import dataclass, field
from pathlib import Path

SEED = 20261121

# Zones: the network behind each cluster interface (all inside 198.18.0.0/15).
ZONE_V4 = {
    "lan": ipaddress.IPv4Network("198.18.0.0/16"),
    "dmz": ipaddress.IPv4Network("198.19.0.0/17"),
    "uplink": ipaddress.IPv4Network("198.19.128.0/18"),
}
# Hosts "on the internet" are still benchmark addresses, routed via uplink.
EXTERNAL_V4 = ipaddress.IPv4Network("198.19.192.0/19")
SYNC_V4 = ipaddress.IPv4Network("198.19.254.0/24")
ZONE_V6 = {
    "lan": ipaddress.IPv6Network("2001:db8:10::/64"),
    "dmz": ipaddress.IPv6Network("2001:db8:20::/64"),
    "uplink": ipaddress.IPv6Network("2001:db8:30::/64"),
}
INTERFACES = ("lan", "dmz", "uplink")

OBJECT_COUNT = 3000
BIG_GROUPS = 4
BIG_GROUP_SIZE = 500
SERVICE_COUNT = 200
DENY_SERVICES = 30
DNAT_COUNT = 20
SMALL_GROUP_SIZE = (5, 15)  # stays under IPSET_THRESHOLD: plain rules


@dataclass(frozen=True)
class Shape:
    """How a synthetic policy looks; the benchmark runs every pass on each shape.

    - `site`: the original generator (3 interfaces, 2 members, 4 groups of 500
      prefixes used by 2% of the rules, most rules pinned to `in`/`out`);
    - `groups`: 40 groups of 300 prefixes, used by about half of the rules as source
      or destination, and no `in`/`out` on the policy rules (a flat policy);
    - `interfaces`: 12 traffic interfaces and 4 members, rules pinned to them.
    """

    name: str
    zones: tuple[str, ...]  # traffic interfaces; "dmz" and "uplink" always among them
    members: int
    big_groups: int
    big_group_size: int
    big_source: float  # share of the rules whose source is a big group
    big_destination: float  # share of the rules whose destination is a big group
    pinned: bool  # rules carry `in`/`out` from their zones


SHAPES = {
    "site": Shape("site", INTERFACES, 2, BIG_GROUPS, BIG_GROUP_SIZE, 0.02, 0.0, True),
    "groups": Shape("groups", INTERFACES, 2, 40, 300, 0.35, 0.25, False),
    "interfaces": Shape("interfaces", tuple(f"lan{i}" for i in range(10)) + ("dmz", "uplink"),
                        4, BIG_GROUPS, BIG_GROUP_SIZE, 0.02, 0.0, True),
}


def zone_v4(zone: str) -> ipaddress.IPv4Network:
    """The IPv4 network behind an interface: lanN are /20s of 198.18.0.0/16."""
    if zone in ZONE_V4:
        return ZONE_V4[zone]
    return ipaddress.IPv4Network((int(ZONE_V4["lan"].network_address) + (int(zone[3:]) << 12),
                                  20))


def zone_v6(zone: str) -> ipaddress.IPv6Network:
    if zone in ZONE_V6:
        return ZONE_V6[zone]
    return ipaddress.IPv6Network(f"2001:db8:1{int(zone[3:]):x}::/64")


def member_address(network: ipaddress._BaseNetwork, member: int) -> ipaddress._BaseAddress:
    return network.network_address + member + 1


def vip_address(network: ipaddress._BaseNetwork) -> ipaddress._BaseAddress:
    return network.network_address + 254


@dataclass(frozen=True)
class AddressObject:
    name: str
    kind: str  # host, network, group
    zone: str  # lan, dmz, uplink (the interface it lives behind)
    family: int
    values: tuple[str, ...]  # addresses, or member names for groups


@dataclass(frozen=True)
class ServiceDef:
    name: str
    protocol: str  # tcp or udp
    ports: tuple[str, ...]  # "80" or "1024-2047"


@dataclass(frozen=True)
class RuleDef:
    action: str
    source: str  # object name, "any" or "firewall"
    destination: str
    services: tuple[str, ...]
    in_interface: str | None
    out_interface: str | None
    log: bool
    only: str | None


@dataclass(frozen=True)
class NatDef:
    kind: str
    source: str
    destination: str
    service: str | None
    in_interface: str | None
    out_interface: str | None
    target: str | None


@dataclass
class Site:
    rule_count: int
    shape: Shape = SHAPES["site"]
    objects: list[AddressObject] = field(default_factory=list)
    services: list[ServiceDef] = field(default_factory=list)
    rules: list[RuleDef] = field(default_factory=list)
    nat: list[NatDef] = field(default_factory=list)

    def object(self, name: str) -> AddressObject:
        return self._by_name[name]

    def index(self) -> None:
        self._by_name = {o.name: o for o in self.objects}


def _unique_hosts(rng: random.Random, net: ipaddress._BaseNetwork, count: int,
                  taken: set[int]) -> list[ipaddress._BaseAddress]:
    out = []
    base = int(net.network_address)
    size = net.num_addresses
    while len(out) < count:
        value = base + rng.randrange(2, min(size, 2**20) - 2)
        if value not in taken:
            taken.add(value)
            out.append(ipaddress.ip_address(value))
    return out


def build_site(rule_count: int, seed: int = SEED, shape: str = "site") -> Site:
    rng = random.Random(seed)
    form = SHAPES[shape]
    site = Site(rule_count, form)
    taken: set[int] = set()
    if form.name != "site":  # (the original shape stays byte-identical to earlier runs)
        for zone in form.zones:
            for net in (zone_v4(zone), zone_v6(zone)):
                taken.add(int(vip_address(net)))
                taken.update(int(member_address(net, m)) for m in range(form.members))

    # ~3,000 hosts and networks, mostly IPv4, spread over the zones.
    lans = [z for z in form.zones if z not in ("dmz", "uplink")]
    plan = [(z, 4, 900 // len(lans)) for z in lans] + [("dmz", 4, 500), ("uplink", 4, 500)] \
        + [(z, 6, 120 // len(lans)) for z in lans] + [("dmz", 6, 80)]
    for zone, family, count in plan:
        if family == 4:
            pool = EXTERNAL_V4 if zone == "uplink" else zone_v4(zone)
        else:
            pool = zone_v6(zone)
        for i, address in enumerate(_unique_hosts(rng, pool, count, taken)):
            site.objects.append(AddressObject(f"h{family}-{zone}-{i}", "host", zone, family,
                                              (str(address),)))
    net_plan = [(z, 500 // len(lans)) for z in lans] + [("dmz", 200), ("uplink", 200)]
    for zone, count in net_plan:
        pool = EXTERNAL_V4 if zone == "uplink" else zone_v4(zone)
        seen: set[str] = set()
        while len(seen) < count:
            prefix = rng.choice((24, 26, 27, 28, 29) if pool.prefixlen < 20 else (26, 27, 28, 29)) \
                if zone != "uplink" \
                else rng.choice((27, 28, 29))
            offset = rng.randrange(0, pool.num_addresses >> (32 - prefix)) << (32 - prefix)
            net = ipaddress.IPv4Network((int(pool.network_address) + offset, prefix))
            if str(net) in seen:
                continue
            seen.add(str(net))
            site.objects.append(AddressObject(f"n4-{zone}-{len(seen) - 1}", "network", zone,
                                              4, (str(net),)))

    # Every host and network sits in one small group, so none is left unused.
    by_zone: dict[tuple[str, int], list[AddressObject]] = {}
    for obj in site.objects:
        by_zone.setdefault((obj.zone, obj.family), []).append(obj)
    groups: list[AddressObject] = []
    for (zone, family), members in sorted(by_zone.items()):
        members = list(members)
        rng.shuffle(members)
        while members:
            size = rng.randint(*SMALL_GROUP_SIZE)
            chunk, members = members[:size], members[size:]
            groups.append(AddressObject(f"g{family}-{zone}-{len(groups)}", "group", zone,
                                        family, tuple(o.name for o in chunk)))
    site.objects.extend(groups)

    # A few big groups of 500 prefixes (partner networks, blocklists): ipset material.
    for g in range(form.big_groups):
        prefixes: set[str] = set()
        while len(prefixes) < form.big_group_size:
            prefix = rng.choice((28, 29, 30, 32))
            offset = rng.randrange(0, EXTERNAL_V4.num_addresses >> (32 - prefix)) \
                << (32 - prefix)
            net = ipaddress.IPv4Network((int(EXTERNAL_V4.network_address) + offset, prefix))
            prefixes.add(str(net.network_address) if prefix == 32 else str(net))
        site.objects.append(AddressObject(f"partners-{g}", "group", "uplink", 4,
                                          tuple(sorted(prefixes))))
    site.index()

    # 200 services. Deny rules get their own ports (10000-10999, never inside an accept
    # service's range) so that no drop/reject rule can shadow an accept rule or the
    # reverse: that would be an error (FWC401), and real policies compile clean.
    ports_seen: set[tuple[str, tuple[str, ...]]] = set()
    while len(site.services) < SERVICE_COUNT:
        deny = len(site.services) >= SERVICE_COUNT - DENY_SERVICES
        protocol = "tcp" if rng.random() < 0.75 else "udp"
        if deny:
            ports: tuple[str, ...] = (str(rng.randrange(10000, 11000)),)
        elif rng.random() < 0.1:
            low = rng.randrange(20000, 60000)
            ports = (f"{low}-{low + rng.randrange(1, 500)}",)
        else:
            ports = tuple(sorted({str(rng.randrange(1, 10000))
                                  for _ in range(rng.choice((1, 1, 1, 2, 3)))}, key=int))
        if (protocol, ports) in ports_seen:
            continue
        ports_seen.add((protocol, ports))
        # dsvc: drop rules only, rsvc: reject rules only (a drop must not shadow a reject)
        prefix = "svc" if not deny else \
            ("dsvc" if len(site.services) < SERVICE_COUNT - DENY_SERVICES // 2 else "rsvc")
        site.services.append(ServiceDef(f"{prefix}{len(site.services)}", protocol, ports))

    _draw_rules(rng, site)
    _draw_nat(rng, site)
    return site


def _draw_rules(rng: random.Random, site: Site) -> None:
    form = site.shape
    small = [o for o in site.objects if o.kind == "group" and not o.name.startswith("partners")]
    big = [o for o in site.objects if o.name.startswith("partners")]
    plain = [o for o in site.objects if o.kind != "group"]
    v4 = [o for o in small + plain if o.family == 4]
    v6 = [o for o in small + plain if o.family == 6]
    allow_services = [s.name for s in site.services if s.name.startswith("svc")]
    drop_services = [s.name for s in site.services if s.name.startswith("dsvc")]
    reject_services = [s.name for s in site.services if s.name.startswith("rsvc")]
    # The first rules walk every group and service once: nothing stays unused.
    must_use = [g.name for g in small] + [b.name for b in big]
    allow_cycle = list(allow_services)
    drop_cycle = list(drop_services)
    reject_cycle = list(reject_services)
    # the last rule is the default drop; the DNAT accept rules are added first later
    body = site.rule_count - 1 - DNAT_COUNT
    for i in range(body):
        roll = rng.random()
        if i < len(must_use):
            src = site.object(must_use[i])
        elif roll < form.big_source:
            src = rng.choice(big)
        elif roll < 0.10:
            src = rng.choice(v6)
        else:
            src = rng.choice(v4)
        to_firewall = rng.random() < 0.04
        if to_firewall:
            dst_name, dst_zone = "firewall", None
        elif src.family == 6:
            candidates = [o for o in rng.sample(v6, 8) if o.zone != src.zone]
            dst = candidates[0] if candidates else rng.choice(v6)
            dst_name, dst_zone = dst.name, dst.zone
        elif rng.random() < 0.05:
            dst_name, dst_zone = "any", None
        elif form.big_destination and rng.random() < form.big_destination:
            dst = rng.choice(big)
            dst_name, dst_zone = dst.name, dst.zone
        else:
            dst = rng.choice(v4)
            while dst.zone == src.zone:
                dst = rng.choice(v4)
            dst_name, dst_zone = dst.name, dst.zone
        action = rng.choices(("accept", "drop", "reject"), (80, 12, 8))[0]
        pool, cycle = {"accept": (allow_services, allow_cycle),
                       "drop": (drop_services, drop_cycle),
                       "reject": (reject_services, reject_cycle)}[action]
        if cycle and rng.random() < 0.5:
            svc: tuple[str, ...] = (cycle.pop(),)
        else:
            svc = tuple(sorted(set(rng.sample(pool, rng.choice((1, 1, 1, 2, 3))))))
        pin = rng.random() if form.pinned else 1.0
        in_iface = src.zone if pin < 0.85 else None
        out_iface = dst_zone if pin < 0.6 and dst_zone else None
        site.rules.append(RuleDef(action, src.name, dst_name, svc, in_iface, out_iface,
                                  rng.random() < 0.05,
                                  # member-scoped rules only for the node itself (parity)
                                  "fw1" if to_firewall and rng.random() < 0.2 else None))
    site.rules.append(RuleDef("drop", "any", "any", (), None, None, True, None))


def _draw_nat(rng: random.Random, site: Site) -> None:
    dmz_hosts = [o for o in site.objects if o.kind == "host" and o.zone == "dmz"
                 and o.family == 4]
    lan_nets = [o for o in site.objects if o.kind == "network" and o.zone.startswith("lan")]
    tcp = [s for s in site.services if s.protocol == "tcp" and "-" not in s.ports[0]
           and s.name.startswith("svc")]
    for svc in rng.sample(tcp, DNAT_COUNT):
        host = rng.choice(dmz_hosts)
        site.nat.append(NatDef("dnat", "any", "uplink.vip", svc.name, "uplink", None, host.name))
        # the forwarded traffic after DNAT needs its accept rule (else FWC403)
        site.rules.insert(0, RuleDef("accept", "any", host.name, (svc.name,), "uplink", "dmz",
                                     False, None))
    site.nat.append(NatDef("nonat", "lan", "dmz", None, None, "dmz", None))
    for net in rng.sample(lan_nets, 10):
        site.nat.append(NatDef("snat", net.name, "any", None, None, "uplink", "uplink.vip"))


# --- fwc ---------------------------------------------------------------------------------

def fwc_policy(site: Site) -> str:
    out = [f"# synthetic benchmark policy: {site.rule_count} rules (bench/generate.py)"]
    out.append("network lan 198.18.0.0/16")
    out.append("network dmz 198.19.0.0/17")
    for obj in site.objects:
        if obj.kind == "group":
            out.append(f"group {obj.name} {', '.join(obj.values)}")
        else:
            out.append(f"{obj.kind} {obj.name} {', '.join(obj.values)}")
    for svc in site.services:
        out.append(f"service {svc.name} {svc.protocol}/{','.join(svc.ports)}")
    out.append(_cluster(site.shape))
    out.append("policy bench {")
    for r in site.rules:
        line = f"    {r.action} from {r.source} to {r.destination}"
        if r.services:
            line += f" service {', '.join(r.services)}"
        if r.in_interface:
            line += f" in {r.in_interface}"
        if r.out_interface:
            line += f" out {r.out_interface}"
        if r.log:
            line += ' log "bench"'
        if r.only:
            line += f" only {r.only}"
        out.append(line)
    out.append("}\n")
    out.append("nat bench {")
    for n in site.nat:
        line = f"    {n.kind} from {n.source} to {n.destination}"
        if n.service:
            line += f" service {n.service}"
        if n.in_interface:
            line += f" in {n.in_interface}"
        if n.out_interface:
            line += f" out {n.out_interface}"
        if n.target:
            line += f" -> {n.target}"
        out.append(line)
    out.append("}\n")
    return "\n".join(out)


def _cluster(form: Shape) -> str:
    if form.name == "site":  # written out as before, so that its output stays comparable
        return """
cluster bench {
    vrrp { password "bench" advert 1s vrid 61 }
    sync { link sync mode ftfw multicast 225.0.0.50 port 3780 }

    interface lan    vip 198.18.0.254/16, 2001:db8:10::fe/64
    interface dmz    vip 198.19.0.254/17, 2001:db8:20::fe/64  vrid 62
    interface uplink vip 198.19.128.254/18, 2001:db8:30::fe/64 vrid 63
    interface sync

    member fw1 priority 150 {
        lan    eth0 198.18.0.1/16, 2001:db8:10::1/64
        dmz    eth1 198.19.0.1/17, 2001:db8:20::1/64
        uplink eth2 198.19.128.1/18, 2001:db8:30::1/64
        sync   eth3 198.19.254.1/24
    }
    member fw2 priority 100 {
        lan    eth0 198.18.0.2/16, 2001:db8:10::2/64
        dmz    eth1 198.19.0.2/17, 2001:db8:20::2/64
        uplink eth2 198.19.128.2/18, 2001:db8:30::2/64
        sync   eth3 198.19.254.2/24
    }
}
"""
    # conntrackd's FTFW is for pairs (FWC224): more members replicate with NOTRACK
    mode = "ftfw" if form.members <= 2 else "notrack"
    lines = ["", "cluster bench {", '    vrrp { password "bench" advert 1s vrid 61 }',
             f"    sync {{ link sync mode {mode} multicast 225.0.0.50 port 3780 }}", ""]
    for i, zone in enumerate(form.zones):
        v4, v6 = zone_v4(zone), zone_v6(zone)
        vrid = f" vrid {61 + i}" if i else ""
        lines.append(f"    interface {zone} vip {vip_address(v4)}/{v4.prefixlen}, "
                     f"{vip_address(v6)}/{v6.prefixlen}{vrid}")
    lines.append("    interface sync")
    for m in range(form.members):
        lines.append(f"    member fw{m + 1} priority {150 - 10 * m} {{")
        for i, zone in enumerate(form.zones):
            v4, v6 = zone_v4(zone), zone_v6(zone)
            lines.append(f"        {zone} eth{i} {member_address(v4, m)}/{v4.prefixlen}, "
                         f"{member_address(v6, m)}/{v6.prefixlen}")
        lines.append(f"        sync eth{len(form.zones)} {member_address(SYNC_V4, m)}/24")
        lines.append("    }")
    lines.append("}\n")
    return "\n".join(lines)


# --- Aerleon -------------------------------------------------------------------------------

AERLEON_ACTIONS = {"accept": "accept", "drop": "deny", "reject": "reject"}


def _aerleon_name(name: str) -> str:
    return name.upper().replace("-", "_")


def write_aerleon(site: Site, root: Path) -> None:
    """Aerleon's classic layout: def/*.net, def/*.svc and policies/pol/*.pol.

    Interfaces have no portable equivalent in an Aerleon term, so the
    comparison is on the address, service and action matching (the expensive
    part of both compilers); NAT is not generated (Aerleon has no iptables NAT).
    """
    (root / "def").mkdir(parents=True, exist_ok=True)
    (root / "policies" / "pol").mkdir(parents=True, exist_ok=True)
    net_lines: list[str] = []
    by_name = {o.name: o for o in site.objects}
    for obj in site.objects:
        if obj.kind == "group" and not obj.name.startswith("partners"):
            values = [_aerleon_name(v) for v in obj.values]
        else:
            values = list(obj.values)
            values = [v if "/" in v else f"{v}/{32 if ':' not in v else 128}" for v in values]
        net_lines.append(f"{_aerleon_name(obj.name)} = {values[0]}")
        net_lines.extend(f"    {v}" for v in values[1:])
    (root / "def" / "NETWORK.net").write_text("\n".join(net_lines) + "\n")
    svc_lines: list[str] = []
    for svc in site.services:
        values = [f"{p}/{svc.protocol}" for p in svc.ports]
        svc_lines.append(f"{_aerleon_name(svc.name)} = {values[0]}")
        svc_lines.extend(f"    {v}" for v in values[1:])
    (root / "def" / "SERVICES.svc").write_text("\n".join(svc_lines) + "\n")
    services = {s.name: s for s in site.services}
    terms: list[str] = ["header {\n  target:: iptables FORWARD DROP\n}"]
    for i, rule in enumerate(site.rules):
        lines = [f"term t{i} {{"]
        for side, value in (("source-address", rule.source),
                            ("destination-address", rule.destination)):
            if value not in ("any", "firewall"):
                lines.append(f"  {side}:: {_aerleon_name(value)}")
        family = by_name[rule.source].family if rule.source in by_name else 4
        protocols = sorted({services[s].protocol for s in rule.services})
        if protocols:
            lines.append(f"  protocol:: {' '.join(protocols)}")
            names = " ".join(_aerleon_name(s) for s in rule.services)
            lines.append(f"  destination-port:: {names}")
        del family
        lines.append(f"  action:: {AERLEON_ACTIONS[rule.action]}")
        lines.append("}")
        terms.append("\n".join(lines))
    (root / "policies" / "pol" / "bench.pol").write_text("\n\n".join(terms) + "\n")
