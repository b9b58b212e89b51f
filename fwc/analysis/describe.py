"""Pieces of traffic in policy terms: object and service names where they fit.

An address set is named by the object whose addresses it is exactly, else as
CIDRs with the smallest object containing them ("192.0.2.11 (in lan)"); `any`
and `firewall` are recognised per member. A service set is named by the
service that is exactly it, else written as specs (tcp/22, icmp/echo-request).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import field
from functools import cached_property

from fwc import protocols as proto
from fwc.analysis.space import (
    ALL_SERVICES,
    ICMP_NUMBERS,
    LOCAL,
    PORT_PROTOCOL_NUMBERS,
    PORT_SHIFT,
    Box,
    full_addresses,
    protocol_block,
    service_intervals,
)
from fwc.model import Cluster, Policy, ServiceMatch
from fwc.model.addresses import AddressSet
from fwc.model.intervals import Intervals, covers, intersect, normalise, subtract
from fwc.model.records import dataclass

MAX_CIDRS = 4
_KIND_ORDER = {"host": 0, "network": 1, "range": 2, "group": 3, "vip": 4}
_PROTOCOL_NAMES = {number: name for name, number in reversed(proto.IP_PROTOCOLS.items())}


@dataclass(frozen=True)
class Vocabulary:
    """The names a report may use: address objects and services with their sets."""

    objects: Mapping[str, tuple[str, AddressSet]] = field(default_factory=dict)  # name -> kind, set
    services: Mapping[str, tuple[ServiceMatch, ...]] = field(default_factory=dict)

    @cached_property
    def _tables(self) -> dict[int, tuple[dict[Intervals, list[tuple[int, str]]],
                                         list[tuple[int, int, int, int, str, Intervals]]]]:
        """Per family: exact sets -> names, and (hull, size, kind order, name, set) rows."""
        tables: dict[int, tuple[dict[Intervals, list[tuple[int, str]]],
                                list[tuple[int, int, int, int, str, Intervals]]]] = {}
        for family in (4, 6):
            exact: dict[Intervals, list[tuple[int, str]]] = {}
            rows: list[tuple[int, int, int, int, str, Intervals]] = []
            for name, (kind, addresses) in self.objects.items():
                own = addresses.family(family)
                if not own:
                    continue
                order = _KIND_ORDER.get(kind, 9)
                exact.setdefault(own, []).append((order, name))
                rows.append((own[0][0], own[-1][1], addresses.count(family), order, name, own))
            tables[family] = (exact, rows)
        return tables

    def _exact(self, family: int) -> dict[Intervals, list[tuple[int, str]]]:
        return self._tables[family][0]

    def _by_family(self, family: int) -> list[tuple[int, int, int, int, str, Intervals]]:
        return self._tables[family][1]

    @classmethod
    def of_policy(cls, policy: Policy) -> Vocabulary:
        return cls({n: (o.kind, o.addresses) for n, o in policy.objects.items()},
                   {n: s.matches for n, s in policy.services.items()})

    @classmethod
    def of_clusters(cls, *clusters: Cluster | None) -> Vocabulary:
        """Names harvested from rules (for callers that have clusters, not a policy)."""
        objects: dict[str, tuple[str, AddressSet]] = {}
        services: dict[str, tuple[ServiceMatch, ...]] = {}
        for cluster in clusters:
            if cluster is None:
                continue
            for rule in cluster.all_rules():
                for item in rule.source.items + rule.destination.items:
                    if item.object_name:
                        objects.setdefault(item.object_name, ("group", item.addresses))
                if len(rule.service_labels) == 1 and "/" not in rule.service_labels[0]:
                    services.setdefault(rule.service_labels[0], rule.services)
        return cls(objects, services)

    def with_cluster(self, cluster: Cluster) -> Vocabulary:
        """Also name each interface's VIPs `IFACE.vip`, as the policy writes them."""
        objects = dict(self.objects)
        for iface in cluster.interfaces:
            if iface.vips:
                objects.setdefault(f"{iface.name}.vip",
                                   ("vip", AddressSet.of(*(v.ip for v in iface.vips))))
        return Vocabulary(objects, self.services)

    def name_addresses(self, intervals: Intervals, family: int, firewall: AddressSet,
                       nested: bool = False) -> str:
        """A name for the set; `nested` (inside another name) allows only exact names."""
        fw = firewall.family(family)
        everything = full_addresses(family)
        if intervals == everything:
            return "any address (firewall included)"
        if intervals == subtract(everything, fw):
            return "any"
        if fw and intervals == fw:
            return "firewall"
        exact = self._exact(family).get(intervals, [])
        containing: list[tuple[int, int, str]] = []
        if not exact and not nested:
            lo, hi = intervals[0][0], intervals[-1][1]
            for own_lo, own_hi, size, order, name, own in self._by_family(family):
                if own_lo <= lo and hi <= own_hi and covers(own, intervals):
                    containing.append((size, order, name))
        if exact:
            return min(exact)[1]
        if nested:
            return cidr_text(intervals, family)
        no_fw = AddressSet()
        for _, _, name in sorted(containing)[:1]:
            missing = subtract(self.objects[name][1].family(family), intervals)
            if covers(fw, missing):
                return f"{name} except firewall"
            missing = subtract(missing, fw)
            if _blocks(missing, family) <= 2:
                return f"{name} except {self.name_addresses(missing, family, no_fw, True)}"
        text = cidr_text(intervals, family)
        if covers(fw, intervals):
            return f"{text} (firewall)"
        # The shortest of: as is, with the firewall's holes filled, or as `any except`.
        plain = f"{text} (in {min(containing)[2]})" if containing else text
        options = [(_blocks(intervals, family), 0, plain)]
        with_fw = _absorb(intervals, fw)
        if with_fw != intervals:
            options.append((_blocks(with_fw, family), 1,
                            f"{self.name_addresses(with_fw, family, no_fw, True)} except firewall"))
        missing = _absorb(subtract(subtract(everything, fw), intervals), fw)
        if missing:
            options.append((_blocks(missing, family), 2,
                            f"any except {self.name_addresses(missing, family, no_fw, True)}"))
        return min(options)[2]

    def name_services(self, intervals: Intervals, family: int) -> str:
        if intervals == ALL_SERVICES:
            return "any service"
        for name, matches in sorted(self.services.items()):
            if service_intervals(matches, family) == intervals:
                return name
        missing = subtract(ALL_SERVICES, intervals)
        if len(missing) < len(intervals):
            return f"any service except {self.name_services(missing, family)}"
        return service_text(intervals)


def _absorb(intervals: Intervals, firewall: Intervals) -> Intervals:
    """Fill the holes that firewall addresses make (they are never `any` anyway)."""
    return tuple(iv for iv in normalise(intervals + firewall) if intersect((iv,), intervals))


def _blocks(intervals: Intervals, family: int) -> int:
    """How many items it takes to write the set (CIDRs or ranges)."""
    return len(intervals)


def cidr_list(intervals: Intervals, family: int) -> list[str]:
    return AddressSet(intervals, ()).cidrs(4) if family == 4 \
        else AddressSet((), intervals).cidrs(6)


def cidr_text(intervals: Intervals, family: int) -> str:
    """Addresses as written in a policy: a CIDR where one fits, else FIRST-LAST."""
    parts: list[str] = []
    for lo, hi in intervals:
        blocks = cidr_list(((lo, hi),), family)
        if len(blocks) == 1:
            parts.append(blocks[0])
        else:
            first = cidr_list(((lo, lo),), family)[0]
            last = cidr_list(((hi, hi),), family)[0]
            parts.append(f"{first}-{last}")
    if len(parts) > MAX_CIDRS:
        return ", ".join(parts[:MAX_CIDRS]) + f" and {len(parts) - MAX_CIDRS} more"
    return ", ".join(parts)


def _icmp_name(number: int, value: int) -> str:
    table = proto.ICMP_TYPES if number == proto.IP_PROTOCOLS["icmp"] else proto.ICMPV6_TYPES
    for name, code in table.items():
        if code == value:
            return name
    return str(value)


def service_text(intervals: Intervals) -> str:
    """Service-axis intervals as specs: tcp/22,80-90, udp, icmp/echo-request, gre."""
    by_protocol: dict[int, list[tuple[int, int]]] = {}
    for lo, hi in intervals:
        while lo <= hi:
            number = lo >> PORT_SHIFT
            end = min(hi, (number << PORT_SHIFT) | 0xFFFF)
            by_protocol.setdefault(number, []).append((lo & 0xFFFF, end & 0xFFFF))
            lo = end + 1
    parts: list[str] = []
    for number, ranges in by_protocol.items():
        name = _PROTOCOL_NAMES.get(number, f"proto/{number}")
        block_lo, block_hi = protocol_block(number)
        whole = ranges == [(block_lo & 0xFFFF, block_hi & 0xFFFF)]
        if whole or (number not in PORT_PROTOCOL_NUMBERS and number not in ICMP_NUMBERS):
            parts.append(name)
        elif number in ICMP_NUMBERS:
            parts.extend(f"{name}/{_icmp_name(number, v)}"
                         for lo, hi in ranges for v in range(lo, hi + 1))
        else:
            parts.append(name + "/" + ",".join(str(lo) if lo == hi else f"{lo}-{hi}"
                                              for lo, hi in ranges))
    if len(parts) > 2 * MAX_CIDRS:
        return ", ".join(parts[:2 * MAX_CIDRS]) + f" and {len(parts) - 2 * MAX_CIDRS} more"
    return ", ".join(parts)


def interface_text(ifaces: Iterable[str], all_ifaces: frozenset[str]) -> str | None:
    names = sorted(i for i in ifaces if i != LOCAL)
    if not names or frozenset(names) >= all_ifaces:
        return None
    return ", ".join(names)


def describe_box(box: Box, vocabulary: Vocabulary, firewall: AddressSet,
                 interfaces: frozenset[str]) -> str:
    """`from A to B service S [in I] [out O]` for one box."""
    text = (f"from {vocabulary.name_addresses(box.src, box.family, firewall)} "
            f"to {vocabulary.name_addresses(box.dst, box.family, firewall)}")
    services = vocabulary.name_services(box.services, box.family)
    if services.startswith("any service except"):
        text += f", {services}"
    elif services != "any service":
        text += f" service {services}"
    in_text = interface_text(box.in_ifaces, interfaces)
    if in_text:
        text += f" in {in_text}"
    out_text = interface_text(box.out_ifaces, interfaces)
    if out_text:
        text += f" out {out_text}"
    return text


