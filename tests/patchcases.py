"""Random policies and random in-place edits: the cases of a patch compile's property test.

Issue 12's patch compile (docs/performance.md, "Issue 12, twenty-sixth session", items
3-5) would compile an in-place edit of one policy rule by splicing the rule's new lines
into the previous output. Its proof is a property: for random policies and random
in-place edits, `fwc compile` (which may take the patch path) writes byte for byte what
`fwc compile --no-cache` writes. This module makes the cases; tests/test_patchcases.py
runs them.

- `random_policy`: a two-member cluster whose FORWARD chain the arrangement splits down
  to port buckets (fwc.backend.arrange: ARRANGE_MIN_RULES, SPLIT_MIN_RULES), with the
  rules a patch has to treat specially (log, reject types, limits, `only`, INPUT and
  OUTPUT rules, notrack, a conntrack helper, IPv6, big groups that become ipsets, a rule
  on two lines, two rules on one line, an included file, NAT);
- `random_in_place_edit`: one line of the policy changed in place (the same number of
  lines, so every other rule keeps its `p.fw:LINE` label), of a kind in EDIT_KINDS: the
  single-rule edits a patch would take, and the edits it must fall back on;
- `compile_tree`: `fwc compile` in a child process, the written files by path.

Addresses are from the documentation and benchmark ranges only (203.0.113.0/24,
198.18.0.0/15, 2001:db8::/32).
"""

from __future__ import annotations

import ipaddress
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from conftest import file_tree, run_fwc

from fwc import protocols as proto

POLICY = "p.fw"  # the top file's name: its rules' labels are `p.fw:LINE`
INCLUDED = "shared.fw"  # the included file (objects the edits never touch)

# The traffic interfaces: (IPv4 segment, IPv6 segment, device, VRRP id). Each segment
# is a /20 so that every rule can have a destination of its own (see `_Drawer`).
ZONES = {
    "lan": ("198.18.0.0/20", "2001:db8:1::/64", "eth0", 71),
    "dmz": ("198.18.16.0/20", "2001:db8:2::/64", "eth1", 72),
    "lab": ("198.18.32.0/20", "2001:db8:3::/64", "eth2", 73),
    "uplink": ("203.0.113.0/26", "2001:db8:4::/64", "eth3", 74),
}
SYNC = ("203.0.113.64/28", "eth4")
# "The internet": the addresses behind the uplink.
EXTERNAL_V4 = ipaddress.IPv4Network("198.19.0.0/16")
EXTERNAL_V6 = ipaddress.IPv6Network("2001:db8:ff::/48")
INTERFACES = tuple(ZONES)
# Where a zone's objects sit (offsets into its network): shared hosts, networks and the
# range in disjoint parts, every rule's own destination above them. Every host is at an
# even offset: the object edit moves one to the odd address after it, which no other
# object holds.
_SHARED_HOSTS, _NETWORKS, _RANGE, _OWN_HOSTS, _OWN_GROUPS = 16, 1024, 1536, 2048, 3072

# Rule options that end a rule's endpoint and service lists (the grammar's rule_opt).
_OPTIONS = ("service", "in", "out", "only", "log", "with", "limit", "connlimit", "syn-limit",
            "notrack")
_ACTIONS = ("accept", "drop", "reject")
OWN = "d-"  # the prefix of a destination of one rule (and of the spare ones)

# Services every policy defines: name -> specification. Single ports, lists, ranges,
# portless protocols, both ICMPs, and a conntrack helper.
FIXED_SERVICES = {
    "ssh": "tcp/22", "smtp": "tcp/25", "web": "tcp/80,443", "https": "tcp/443",
    "dns": "udp/53, tcp/53", "ntp": "udp/123", "imap": "tcp/143,993", "ldap": "tcp/389",
    "snmp": "udp/161", "syslog": "udp/514", "mysql": "tcp/3306", "pgsql": "tcp/5432",
    "rdp": "tcp/3389", "alt-web": "tcp/8000-8099", "high-udp": "udp/32768-60999",
    "ident": "tcp/113", "ping": "icmp/echo-request, icmpv6/echo-request",
    "ping4": "icmp/echo-request", "ping6": "icmpv6/echo-request", "tunnel": "gre",
    "all-tcp": "tcp", "ftp": "tcp/21  helper ftp",
}

EDIT_KINDS = (
    # one rule's line changed, the rule stays one rule (what a patch would take)
    "service", "port", "source", "destination", "action", "device", "log",
    "group-for-host", "host-for-group",
    # a line of rules that are not one rule on one line
    "two-rule line", "continuation",
    # not a single-rule edit (fallbacks)
    "object", "comment", "comment-out",
    # a deliberate mistake: fails with a diagnostic
    "invalid",
)
SINGLE_RULE_KINDS = EDIT_KINDS[:9]
INVALID_KINDS = ("invalid",)


# --- the policy ---------------------------------------------------------------------------

def _zone_v4(zone: str) -> ipaddress.IPv4Network:
    return EXTERNAL_V4 if zone == "uplink" else ipaddress.IPv4Network(ZONES[zone][0])


def _zone_v6(zone: str) -> ipaddress.IPv6Network:
    return EXTERNAL_V6 if zone == "uplink" else ipaddress.IPv6Network(ZONES[zone][1])


def _at(network: ipaddress._BaseNetwork, offset: int) -> ipaddress._BaseAddress:
    return network.network_address + offset


@dataclass
class _Objects:
    """The address objects of one random policy. Sources come from shared pools per
    zone (hosts, networks, ranges, groups, big groups that become ipsets, IPv6); every
    destination is the rule's own object (OWN), defined when the rule is drawn."""

    lines: list[str] = field(default_factory=list)
    v4: dict[str, list[str]] = field(default_factory=dict)  # zone -> IPv4 sources
    v6: dict[str, list[str]] = field(default_factory=dict)  # zone -> IPv6 sources
    big: list[str] = field(default_factory=list)  # IPv4 groups past IPSET_THRESHOLD
    own: dict[tuple[str, int], int] = field(default_factory=dict)  # (zone, family) -> count
    own_groups: int = 0

    def own_host(self, zone: str, family: int) -> str:
        count = self.own.get((zone, family), 0)
        self.own[(zone, family)] = count + 1
        name = f"{OWN}{zone}{'' if family == 4 else '6'}-{count}"
        network = _zone_v4(zone) if family == 4 else _zone_v6(zone)
        self.lines.append(f"host {name} {_at(network, _OWN_HOSTS + 2 * count)}")
        return name

    def own_group(self, zone: str) -> str:
        """A group of three addresses no other object holds (IPv4)."""
        count = self.own_groups
        self.own_groups += 1
        base = _OWN_GROUPS + 8 * count
        members = ", ".join(str(_at(_zone_v4(zone), base + 2 * i)) for i in range(3))
        self.lines.append(f"group {OWN}g-{count} {members}")
        return f"{OWN}g-{count}"


def _objects(rng: random.Random) -> _Objects:
    """The shared source objects, per zone."""
    found = _Objects()
    for zone in INTERFACES:
        net4, net6 = _zone_v4(zone), _zone_v6(zone)
        names4: list[str] = []
        for i in range(12):
            offset = _SHARED_HOSTS + 2 * i
            if i < 2:  # dual-stack hosts: an object with an address in each family
                found.lines.append(f"host h-{zone}-{i} {_at(net4, offset)}, "
                                   f"{_at(net6, 0x1000 + offset)}")
            else:
                found.lines.append(f"host h-{zone}-{i} {_at(net4, offset)}")
            names4.append(f"h-{zone}-{i}")
        for i in range(3):
            found.lines.append(f"network n-{zone}-{i} {_at(net4, _NETWORKS + 16 * i)}/28")
            names4.append(f"n-{zone}-{i}")
        found.lines.append(f"range r-{zone} {_at(net4, _RANGE)}-{_at(net4, _RANGE + 9)}")
        names4.append(f"r-{zone}")
        members = rng.sample([n for n in names4 if n.startswith("h-")], 3)
        found.lines.append(f"group g-{zone} {', '.join(members)}")
        names4.append(f"g-{zone}")
        found.v4[zone] = names4
        found.v6[zone] = []
        for i in range(4):
            found.lines.append(f"host h6-{zone}-{i} {_at(net6, _SHARED_HOSTS + 2 * i)}")
            found.v6[zone].append(f"h6-{zone}-{i}")
        found.lines.append(f"network n6-{zone} {_at(net6, 0xab << 48)}/80")
        found.v6[zone].append(f"n6-{zone}")
    for i in range(3):  # big groups: ipsets (more than IPSET_THRESHOLD addresses)
        size = proto.IPSET_THRESHOLD + rng.randrange(2, 12)
        blocks = sorted(rng.sample(range(200 << 5, 250 << 5), size))  # /29s of .200-.249
        members = ", ".join(f"{_at(EXTERNAL_V4, block << 3)}/29" for block in blocks)
        found.lines.append(f"group big-{i} {members}")
        found.big.append(f"big-{i}")
    return found


def _services(rng: random.Random) -> dict[str, str]:
    """FIXED_SERVICES and random ones over the whole port space, so that the port
    buckets' halving cuts have lows everywhere."""
    services = dict(FIXED_SERVICES)
    for i in range(24):
        low = rng.randrange(1, 65000)
        shape = i % 4
        if shape == 0:
            spec = f"tcp/{low}"
        elif shape == 1:
            spec = f"udp/{low}"
        elif shape == 2:
            spec = f"tcp/{low},{low + rng.randrange(2, 400)}"
        else:
            spec = f"tcp/{low}-{low + rng.randrange(1, 300)}"
        services[f"svc-{i}"] = spec
    return services


def _service_families(spec: str, services: dict[str, str]) -> set[int]:
    """The address families a service specification (or a service list) can match in."""
    families: set[int] = set()
    for item in (part.strip() for part in spec.split("  helper")[0].split(",")):
        if not item:
            continue
        if item.startswith("icmpv6/"):
            families.add(6)
        elif item.startswith("icmp/"):
            families.add(4)
        elif item in services:
            families |= _service_families(services[item], services)
        else:  # a port protocol, its ports (after a comma) or a bare protocol
            families |= {4, 6}
    return families


@dataclass
class _Drawer:
    """Draws the random rules of one policy.

    Every rule's destination is an object of its own, so no rule covers another (FWC401
    needs an earlier destination that holds the later one's): whatever an edit does to
    a rule's source, services, devices or action, the policy stays valid."""

    rng: random.Random
    objects: _Objects
    services: dict[str, str]

    def service_for(self, family: int, tcp_only: bool = False) -> tuple[str, ...]:
        """A service list for a rule of FAMILY: named services, or inline specifications
        (single ports, lists, ranges) that the port edits change."""
        rng = self.rng
        if rng.random() < 0.3:
            low = rng.randrange(1, 65535)
            protocol = "tcp" if tcp_only or rng.random() < 0.7 else "udp"
            shape = rng.random()
            if shape < 0.6:
                return (f"{protocol}/{low}",)
            if shape < 0.8:
                return (f"{protocol}/{low},{min(low + rng.randrange(1, 900), 65535)}",)
            return (f"{protocol}/{low}-{min(low + rng.randrange(1, 200), 65535)}",)
        usable = [name for name, spec in self.services.items()
                  if family in _service_families(spec, self.services) and name != "ftp"
                  and (not tcp_only or spec.startswith("tcp/"))]
        return tuple(rng.sample(usable, rng.choice((1, 1, 1, 2))))

    def endpoints(self) -> tuple[int, str, str, str, str]:
        """(family, source zone, destination zone, source, destination) of a forwarded
        rule; the destination is defined for it alone."""
        rng = self.rng
        src_zone, dst_zone = rng.sample(INTERFACES, 2)
        if rng.random() < 0.12:
            return 6, src_zone, dst_zone, rng.choice(self.objects.v6[src_zone]), \
                self.objects.own_host(dst_zone, 6)
        pick = rng.random()
        if pick < 0.06:
            src, src_zone = rng.choice(self.objects.big), "uplink"
            dst_zone = rng.choice([z for z in INTERFACES if z != "uplink"])
        elif pick < 0.09:
            src = "any"
        else:
            src = rng.choice(self.objects.v4[src_zone])
        dst = self.objects.own_group(dst_zone) if rng.random() < 0.1 \
            else self.objects.own_host(dst_zone, 4)
        return 4, src_zone, dst_zone, src, dst

    def forwarded(self, index: int) -> str:
        rng = self.rng
        family, src_zone, dst_zone, src, dst = self.endpoints()
        action = rng.choices(_ACTIONS, (75, 15, 10))[0]
        with_reset = action == "reject" and rng.random() < 0.4
        services: tuple[str, ...] = ()
        if rng.random() < 0.9:
            services = self.service_for(family, tcp_only=with_reset)
        pin = rng.random()
        options: list[str] = []
        if rng.random() < 0.06:
            options.append(f'log "pc-{index}"' + (" level notice" if rng.random() < 0.3 else ""))
        if with_reset and services:  # (tcp-reset needs TCP services)
            options.append("with tcp-reset")
        elif action == "reject" and rng.random() < 0.3:
            options.append("with admin-prohibited")
        if action == "accept" and rng.random() < 0.04:
            options.append(rng.choice(("limit 50/second burst 100", "connlimit 20",
                                       "limit 10/second per-source")))
        return Rule("", action, (src,), (dst,), services, src_zone if pin < 0.7 else None,
                    dst_zone if pin < 0.4 else None, tuple(options)).text()


def _fixed_head() -> list[str]:
    """The rules every policy has first: traffic to and from the firewall itself (INPUT,
    OUTPUT, `only`), notrack for a resolver in both directions, SYN flood protection,
    an NFLOG group, the accept rule of the dnat."""
    return [
        'accept from h-lan-2 to firewall service ssh  log "pc-ssh" level notice',
        "accept from n-lan-0 to firewall service ping, snmp  connlimit 8",
        "accept from firewall to admin-ntp service ntp  only fw1",
        "accept from firewall to admin-ntp2 service ntp  only fw2",
        "accept from firewall to resolver service dns",
        "accept from n-lan-1 to resolver service udp/53  notrack",
        "accept from resolver to n-lan-1 service udp/1024-65535  notrack",
        "accept from any to web-farm service web  in uplink  syn-limit 200/second burst 400",
        'accept from n6-lan to n6-dmz service ping6, ssh  log "pc-v6" group 5',
        "accept from any to web-real service web  in uplink",
    ]


def _fixed_tail() -> list[str]:
    """The broad rules (`any`, a conntrack helper): after every specific one, which
    they could cover otherwise."""
    return [
        "accept from h-lan-3, h-lan-4 to any service ftp  out uplink",
        "accept from lan-net to any service web  out uplink",
        "reject from any to any service ident  with tcp-reset",
        "reject from lan-net to any service smtp  with admin-prohibited",
        'drop from any to any  log "pc-drop"',
    ]


def _cluster(nftables: bool) -> list[str]:
    backend = ["    backend nftables"] if nftables else []
    lines = ["cluster pc {", *backend,
             '    vrrp { password "pc-pass"  advert 1s  vrid 70 }',
             "    sync { link sync }"]
    for zone, (v4, v6, _, vrid) in ZONES.items():
        net4, net6 = ipaddress.IPv4Network(v4), ipaddress.IPv6Network(v6)
        lines.append(f"    interface {zone} vip {net4.broadcast_address - 1}/{net4.prefixlen}, "
                     f"{net6.network_address + 0xfe}/{net6.prefixlen}  vrid {vrid}")
    lines.append("    interface sync")
    for number, priority in ((1, 150), (2, 100)):
        lines.append(f"    member fw{number} priority {priority} {{")
        for zone, (v4, v6, device, _) in ZONES.items():
            net4, net6 = ipaddress.IPv4Network(v4), ipaddress.IPv6Network(v6)
            lines.append(f"        {zone} {device} {net4.network_address + number}/"
                         f"{net4.prefixlen}, {net6.network_address + number}/{net6.prefixlen}")
        sync = ipaddress.IPv4Network(SYNC[0])
        lines.append(f"        sync {SYNC[1]} {sync.network_address + number}/{sync.prefixlen}")
        lines.append("    }")
    lines.append("}")
    return lines


def included_text() -> str:
    """The included file: objects only the fixed rules use (never edited)."""
    return "\n".join([
        "# shared objects (tests/patchcases.py)",
        "host admin-ntp 198.19.1.122",
        "host admin-ntp2 198.19.1.124",
        "host resolver 198.18.16.52",
        "host web-real 198.18.16.80",
        "host web-farm 198.18.16.82",
        "network lan-net 198.18.0.0/20",
        "",
    ])


def _spares(objects: _Objects) -> None:
    """Destinations no rule uses, for the destination edits to move a rule to (each
    also a warning, FWC103)."""
    for zone in INTERFACES:
        objects.own_host(zone, 4)
    objects.own_host("dmz", 6)
    objects.own_group("lab")


def random_policy(seed: int, rules: int = 400, nftables: bool = False) -> str:
    """A valid policy (the top file, POLICY; it includes INCLUDED, `included_text`) of
    the two-member cluster `pc` with about RULES policy rules; NFTABLES: compiled for
    nftables (`backend nftables`). Deterministic in SEED."""
    rng = random.Random(seed)
    objects = _objects(rng)
    services = _services(rng)
    drawer = _Drawer(rng, objects, services)
    body: list[str] = []
    count = max(rules - len(_fixed_head()) - len(_fixed_tail()), 0)
    index = 0
    while index < count:
        if index % 40 == 0:
            body.append(f"    # section {index // 40}")
        rule = drawer.forwarded(index)
        roll = rng.random()
        if roll < 0.02 and index + 1 < count:  # two rules on one line
            body.append(f"    {rule}  {drawer.forwarded(index + 1)}")
            index += 2
            continue
        if roll < 0.04 and " service " in rule:  # one rule on two lines
            head, tail = rule.split(" service ", 1)
            body += [f"    {head}", f"        service {tail}"]
        else:
            body.append(f"    {rule}")
        index += 1
    _spares(objects)
    out = [f"# random policy {seed} (tests/patchcases.py)", f'include "{INCLUDED}"', ""]
    out += objects.lines
    out.append("")
    out += [f"service {name:<9} {spec}" for name, spec in services.items()]
    out.append("")
    out += _cluster(nftables)
    out += ["", "policy pc {", "    # the firewall itself, notrack, helpers"]
    out += [f"    {rule}" for rule in _fixed_head()]
    out += body
    out.append("    # the broad rules last")
    out += [f"    {rule}" for rule in _fixed_tail()]
    out += ["}", "", "nat pc {",
            "    snat from lan-net to any  out uplink -> uplink.vip",
            "    dnat from any to uplink.vip service web  in uplink -> web-real",
            "}", ""]
    return "\n".join(out)


def write_policy(directory: Path, text: str) -> Path:
    """TEXT as DIRECTORY/POLICY beside its included file; the policy's path."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / INCLUDED).write_text(included_text(), encoding="utf-8")
    path = directory / POLICY
    path.write_text(text, encoding="utf-8")
    return path


# --- reading a rule line --------------------------------------------------------------------

@dataclass(frozen=True)
class Rule:
    """One policy rule written on one line in the generator's canonical form."""

    indent: str
    action: str
    sources: tuple[str, ...]
    destinations: tuple[str, ...]
    services: tuple[str, ...]
    in_interface: str | None
    out_interface: str | None
    options: tuple[str, ...]  # the other options as written (`log "x" level notice`)

    def text(self) -> str:
        line = (f"{self.indent}{self.action} from {', '.join(self.sources)} "
                f"to {', '.join(self.destinations)}")
        if self.services:
            line += f" service {', '.join(self.services)}"
        if self.in_interface:
            line += f" in {self.in_interface}"
        if self.out_interface:
            line += f" out {self.out_interface}"
        return "".join([line, *(f"  {option}" for option in self.options)])

    def option(self, keyword: str) -> str | None:
        return next((o for o in self.options if o.split()[0] == keyword), None)


def _items(words: list[str]) -> tuple[str, ...]:
    """A list's items: separated by ", " (`tcp/80,443` is one item)."""
    return tuple(item for item in " ".join(words).split(", ") if item)


def parse_rule(line: str) -> Rule | None:
    """LINE as one rule, or None when it is not exactly one rule written in the
    canonical form (a comment, a rule continued on the next line, two rules)."""
    match = re.match(r"^( +)(accept|drop|reject) from (.+?) to (.+)$", line)
    if match is None or re.search(r"\s(?:accept|drop|reject) from ", match[4]):
        return None
    words = match[4].split()
    clauses: list[list[str]] = [[]]  # the destination, then one clause per option
    in_string = False
    for word in words:
        if not in_string and word in _OPTIONS and clauses[-1]:
            clauses.append([word])
        else:
            clauses[-1].append(word)
        in_string ^= word.count('"') % 2 == 1
    fields: dict[str, list[str]] = {}
    options = []
    for clause in clauses[1:]:
        if clause[0] in ("service", "in", "out") and not options:
            fields[clause[0]] = clause[1:]
        else:
            options.append(" ".join(clause))
    rule = Rule(match[1], match[2], _items(match[3].split()), _items(clauses[0]),
                _items(fields.get("service", [])),
                (fields.get("in") or [None])[0], (fields.get("out") or [None])[0],
                tuple(options))
    return rule if rule.text() == line else None


# --- what the policy defines ----------------------------------------------------------------

@dataclass(frozen=True)
class _Definitions:
    families: dict[str, frozenset[int]]  # address object -> its families
    kinds: dict[str, str]  # address object -> host, network, range, group
    services: dict[str, str]  # service -> specification
    object_lines: tuple[int, ...]  # indexes of `host` lines (the object edit's targets)
    used: frozenset[str]  # the words of the policy's rules (the objects they name)


def _families_of(values: str, families: dict[str, frozenset[int]]) -> frozenset[int]:
    found: set[int] = set()
    for value in (v.strip() for v in values.split(",")):
        if value in families:
            found |= families[value]
        elif value:
            found.add(6 if ":" in value else 4)
    return frozenset(found)


def _definitions(lines: Sequence[str]) -> _Definitions:
    families: dict[str, frozenset[int]] = {}
    kinds: dict[str, str] = {}
    services: dict[str, str] = {}
    object_lines = []
    for index, line in enumerate(lines):
        words = line.split(None, 2)
        if len(words) < 3 or line[0].isspace():  # (a rule's `service` is no definition)
            continue
        if words[0] in ("host", "network", "range", "group"):
            families[words[1]] = _families_of(words[2], families)
            kinds[words[1]] = words[0]
            if words[0] == "host":
                object_lines.append(index)
        elif words[0] == "service":
            services[words[1]] = words[2]
    used = {word for i in _policy_lines(lines) for word in lines[i].replace(",", " ").split()}
    return _Definitions(families, kinds, services, tuple(object_lines), frozenset(used))


def _rule_family(rule: Rule, defs: _Definitions) -> frozenset[int]:
    found = frozenset({4, 6})
    for item in (*rule.sources, *rule.destinations):
        if item in defs.families:
            found &= defs.families[item]
    return found


# --- the edits ----------------------------------------------------------------------------

_SPECIAL = ("with", "syn-limit", "notrack", "limit", "connlimit", "only")


def _plain(rule: Rule) -> bool:
    """A rule whose action, services and devices any edit may change without making it
    invalid: no option that needs a particular action or protocol."""
    return not any(rule.option(keyword) for keyword in _SPECIAL)


def _object_swap(rule: Rule, side: str, defs: _Definitions, rng: random.Random,
                 want: tuple[str, ...]) -> Rule | None:
    """RULE with its one SIDE object swapped for another of a kind in WANT and the same
    families (so the rule keeps its family): a source for another shared object, a
    destination (the rule's own object, OWN) for a spare one no rule names, so that no
    rule comes to cover another."""
    items = getattr(rule, side)
    if len(items) != 1 or items[0] not in defs.kinds:
        return None
    mine = items[0]
    own = side == "destinations"
    if mine.startswith(OWN) != own:
        return None
    choices = [name for name, kind in defs.kinds.items()
               if kind in want and name.startswith(OWN) == own
               and defs.families[name] == defs.families[mine]
               and name not in (*rule.sources, *rule.destinations)
               and not (own and name in defs.used)]
    if not choices:
        return None
    return replace(rule, **{side: (rng.choice(sorted(choices)),)})


def _edit_rule(kind: str, rule: Rule, defs: _Definitions, rng: random.Random) -> Rule | None:
    """RULE after an edit of KIND, or None when KIND does not apply to it."""
    if kind == "action":
        if not _plain(rule):
            return None
        return replace(rule, action=rng.choice([a for a in _ACTIONS if a != rule.action]))
    if kind == "service":
        if not _plain(rule) or not rule.services:
            return None
        family = _rule_family(rule, defs)
        usable = sorted(name for name, spec in defs.services.items()
                        if family & _service_families(spec, defs.services) == family
                        and name not in rule.services and "helper" not in spec)
        return replace(rule, services=(rng.choice(usable),)) if usable else None
    if kind == "port":
        singles = [i for i, s in enumerate(rule.services)
                   if re.fullmatch(r"(tcp|udp)/\d+", s)]
        if not _plain(rule) or not singles:
            return None
        at = rng.choice(singles)
        protocol, port = rule.services[at].split("/")
        # the other half of the port space: the halving cuts' first cut is 32768, so
        # the rule lands in another bucket of every node split by port
        moved = int(port) ^ 0x8000 or 1
        services = list(rule.services)
        services[at] = f"{protocol}/{moved}"
        return replace(rule, services=tuple(services))
    if kind in ("source", "destination"):
        return _object_swap(rule, f"{kind}s", defs, rng, ("host", "network", "range"))
    if kind == "group-for-host":
        side = rng.choice(("sources", "destinations"))
        items = getattr(rule, side)
        if len(items) != 1 or defs.kinds.get(items[0]) != "group":
            return None
        return _object_swap(rule, side, defs, rng, ("host",))
    if kind == "host-for-group":
        side = rng.choice(("sources", "destinations"))
        items = getattr(rule, side)
        if len(items) != 1 or defs.kinds.get(items[0]) != "host":
            return None
        return _object_swap(rule, side, defs, rng, ("group",))
    if kind == "device":
        return _device_edit(rule, rng)
    if kind == "log":
        logged = rule.option("log")
        if logged:
            return replace(rule, options=tuple(o for o in rule.options if o != logged))
        return replace(rule, options=(*rule.options, 'log "pc-edit"'))
    return None


def _device_edit(rule: Rule, rng: random.Random) -> Rule | None:
    """`in` or `out` changed to another interface or removed."""
    if rule.option("notrack") or rule.option("syn-limit"):
        return None  # (notrack with `out` is FWC411; the head's rules stay as they are)
    sides = [s for s in ("in_interface", "out_interface") if getattr(rule, s)]
    if not sides:
        return None
    side = rng.choice(sides)
    current = getattr(rule, side)
    other = rule.out_interface if side == "in_interface" else rule.in_interface
    choices = [None] + [i for i in INTERFACES if i not in (current, other)]
    return replace(rule, **{side: rng.choice(choices)})


_SECOND_RULE = re.compile(r"(?<=\S)\s+(?=(?:accept|drop|reject) from )")


def _policy_lines(lines: Sequence[str]) -> range:
    start = next((i for i, line in enumerate(lines) if line.startswith("policy ")), len(lines))
    end = next((i for i in range(start, len(lines)) if lines[i] == "}"), len(lines))
    return range(start + 1, end)


def _line_edit(kind: str, lines: list[str], defs: _Definitions,
               rng: random.Random) -> tuple[int, str] | None:
    """(index, new text) of one line changed by an edit of KIND, or None."""
    body = _policy_lines(lines)
    if kind in SINGLE_RULE_KINDS or kind in ("comment-out", "invalid"):
        singles = [(i, rule) for i in body
                   if (rule := parse_rule(lines[i])) is not None
                   and not (i + 1 < len(lines) and lines[i + 1].startswith("        "))]
        if not singles:
            return None
        for index, rule in rng.sample(singles, len(singles)):  # one the kind applies to
            if kind == "comment-out":
                return index, f"{rule.indent}# {rule.text().strip()}"
            if kind == "invalid":
                if not rule.services:
                    continue
                return index, replace(rule, services=("no-such-service",)).text()
            edited = _edit_rule(kind, rule, defs, rng)
            if edited is not None and edited != rule:
                return index, edited.text()
        return None
    if kind == "two-rule line":
        return _two_rule_edit(lines, body, defs, rng)
    if kind == "continuation":
        second = [i for i in body if lines[i].startswith("        service ")]
        for index in rng.sample(second, len(second)):
            rule = parse_rule(lines[index - 1] + " " + lines[index].strip())
            edited = _edit_rule("service", rule, defs, rng) if rule else None
            if edited is not None:
                return index, f"        service {edited.text().split(' service ', 1)[1]}"
        return None
    if kind == "object":
        index = rng.choice(defs.object_lines)
        words = lines[index].split()  # host NAME ADDRESS[, ADDRESS]
        address = ipaddress.ip_address(words[2].rstrip(","))
        moved = address + 1  # (every object's address is even: no other holds this one)
        return index, lines[index].replace(words[2].rstrip(","), str(moved), 1)
    if kind == "comment":
        comments = [i for i in body if lines[i].strip().startswith("#")]
        if not comments:
            return None
        index = rng.choice(comments)
        return index, f"{lines[index]} (edited)"
    return None


def _two_rule_edit(lines: list[str], body: range, defs: _Definitions,
                   rng: random.Random) -> tuple[int, str] | None:
    """A line holding two rules with one of them edited (its action or its log)."""
    both = [i for i in body if len(_SECOND_RULE.findall(lines[i])) == 1]
    for index in rng.sample(both, len(both)):
        line = lines[index]
        split = _SECOND_RULE.search(line)
        assert split is not None
        indent = line[:len(line) - len(line.lstrip())]
        halves = [line[:split.start()], indent + line[split.end():]]
        which = rng.randrange(2)
        rule = parse_rule(halves[which])
        edited = _edit_rule(rng.choice(("action", "log")), rule, defs, rng) if rule else None
        if edited is not None:
            halves[which] = edited.text()
            return index, f"{halves[0]}{split[0]}{halves[1].lstrip()}"
    return None


def random_in_place_edit(text: str, rng: random.Random,
                         kinds: Sequence[str] = EDIT_KINDS) -> tuple[str, str] | None:
    """TEXT with exactly one line changed in place (the same number of lines), and the
    edit's kind (one of KINDS, drawn by RNG); None when none of KINDS applies to TEXT.
    Every kind but "invalid" keeps a policy of `random_policy` valid."""
    lines = text.split("\n")
    defs = _definitions(lines)
    order = list(kinds)
    rng.shuffle(order)
    for kind in order:
        edit = _line_edit(kind, lines, defs, rng)
        if edit is None:
            continue
        index, new = edit
        assert "\n" not in new and new != lines[index], (kind, new)
        return "\n".join([*lines[:index], new, *lines[index + 1:]]), kind
    return None


def edited_line(before: str, after: str) -> int:
    """The 1-based number of the one line AFTER changed (the label of its rules)."""
    pairs = zip(before.split("\n"), after.split("\n"), strict=True)
    return next(number for number, (old, new) in enumerate(pairs, 1) if old != new)


def rule_line(text: str, line: int) -> int:
    """The 1-based line where the statement holding LINE of TEXT starts: its rules'
    label (`p.fw:LINE`) names that line, not a continuation line after it."""
    lines = text.split("\n")
    while line > 1 and lines[line - 1].startswith("        "):
        line -= 1
    return line


# --- compiling ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Compiled:
    returncode: int
    stderr: str
    files: dict[str, bytes]  # every file under the output directory by relative path


def compile_run(policy_dir: Path, out: str, *extra: str) -> Compiled:
    """`python3 -m fwc compile p.fw -o OUT EXTRA...` in POLICY_DIR, a whole process of this
    checkout with this process's environment (the tests' private XDG_CACHE_HOME: fwc
    refuses a cache in the shared temporary directory); its exit code, stderr and files."""
    proc = run_fwc("compile", POLICY, "-o", out, *extra, cwd=policy_dir, timeout=120)
    assert "Traceback" not in proc.stderr, proc.stderr
    root = policy_dir / out
    files = {name: data for name, (data, _) in file_tree(root).items()} if root.is_dir() else {}
    return Compiled(proc.returncode, proc.stderr, files)


def compile_tree(policy_dir: Path, out: str, *extra: str) -> dict[str, bytes]:
    """Every file `fwc compile p.fw -o OUT EXTRA...` writes in POLICY_DIR (a child
    process, see `compile_run`) by relative path; the compile must succeed."""
    got = compile_run(policy_dir, out, *extra)
    assert got.returncode == 0, got.stderr
    return got.files
