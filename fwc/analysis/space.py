"""Packet sets as unions of boxes over the packet fields.

A packet is (family, source, destination, protocol + port/ICMP type, in
interface, out interface). A `Box` is a product of one set per field; every
set is a tuple of sorted, disjoint integer intervals (addresses, services) or
a frozenset (interfaces). A rule's match is one box, so first-match
partitioning only needs box intersection and box difference, both linear in
the number of intervals and never per packet.

Services are one integer axis: `protocol << 16 | port`. A port protocol owns
the block `[p<<16, p<<16 | 65535]`, ICMP flavours `[p<<16, p<<16 | 255]` (the
type) and every other protocol the single point `p<<16`. The universe of
services is the union of those blocks, so a complement never invents packets
that cannot exist (an ICMP type 300, a port on GRE).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from fwc import protocols as proto
from fwc.model import ServiceMatch
from fwc.model.addresses import FAMILY_BITS
from fwc.model.intervals import Intervals, covers, intersect, normalise, subtract, union
from fwc.model.records import dataclass

PORT_SHIFT = 16
PORT_PROTOCOL_NUMBERS = frozenset(proto.IP_PROTOCOLS[name] for name in proto.PORT_PROTOCOLS)
ICMP_NUMBERS = frozenset({proto.IP_PROTOCOLS["icmp"], proto.IP_PROTOCOLS["icmpv6"]})

# The pseudo-interface of traffic that starts or ends on the firewall itself:
# the in interface of OUTPUT traffic and the out interface of INPUT traffic.
LOCAL = "<local>"


def full_addresses(family: int) -> Intervals:
    return ((0, 2 ** FAMILY_BITS[family] - 1),)


def protocol_block(number: int) -> tuple[int, int]:
    """Every packet of one IP protocol on the service axis."""
    base = number << PORT_SHIFT
    if number in PORT_PROTOCOL_NUMBERS:
        return (base, base | 0xFFFF)
    if number in ICMP_NUMBERS:
        return (base, base | 0xFF)
    return (base, base)


ALL_SERVICES: Intervals = normalise(protocol_block(n) for n in range(256))


def service_intervals(matches: Sequence[ServiceMatch], family: int) -> Intervals:
    """The service axis set of a rule's service list in one family.

    An empty list means every protocol. A match of the other family's ICMP
    flavour contributes nothing: ip6tables never sees `icmp`, iptables never
    sees `icmpv6`.
    """
    if not matches:
        return ALL_SERVICES
    out: list[tuple[int, int]] = []
    for match in matches:
        if match.family is not None and match.family != family:
            continue
        base = match.number << PORT_SHIFT
        if match.ports:
            out.extend((base | p.low, base | p.high) for p in match.ports)
        elif match.icmp_type is not None:
            out.append((base | match.icmp_type, base | match.icmp_type))
        else:
            out.append(protocol_block(match.number))
    return normalise(out)


@dataclass(frozen=True, slots=True)
class Box:
    """A product of per-field sets: every packet whose fields all lie in them."""

    family: int
    src: Intervals
    dst: Intervals
    services: Intervals
    in_ifaces: frozenset[str]
    out_ifaces: frozenset[str]

    def is_empty(self) -> bool:
        return not (self.src and self.dst and self.services and self.in_ifaces
                    and self.out_ifaces)

    def intersect(self, other: Box) -> Box | None:
        """The common part, or None when there is none (cheapest tests first)."""
        if self.family != other.family:
            return None
        in_ifaces = self.in_ifaces & other.in_ifaces
        if not in_ifaces:
            return None
        out_ifaces = self.out_ifaces & other.out_ifaces
        if not out_ifaces:
            return None
        a, b = self.dst, other.dst
        if not a or not b or a[0][0] > b[-1][1] or b[0][0] > a[-1][1]:
            return None  # hulls apart: the common case when scanning rules
        a, b = self.src, other.src
        if not a or not b or a[0][0] > b[-1][1] or b[0][0] > a[-1][1]:
            return None
        services = intersect(self.services, other.services)
        if not services:
            return None
        dst = intersect(self.dst, other.dst)
        if not dst:
            return None
        src = intersect(self.src, other.src)
        if not src:
            return None
        return Box(self.family, src, dst, services, in_ifaces, out_ifaces)

    def minus(self, other: Box) -> list[Box]:
        """self - other as disjoint boxes (at most one per field).

        Slicing field by field: the first box keeps what lies outside other's
        source set, the next keeps the common source part but lies outside its
        destination set, and so on. Callers pass other = self ∩ rule, so every
        field of other is a subset of self's.
        """
        if other.family != self.family:
            return [self]
        out: list[Box] = []
        rest = self
        src_out = subtract(rest.src, other.src)
        if src_out:
            out.append(Box(self.family, src_out, rest.dst, rest.services, rest.in_ifaces,
                           rest.out_ifaces))
            rest = Box(self.family, intersect(rest.src, other.src), rest.dst, rest.services,
                       rest.in_ifaces, rest.out_ifaces)
        dst_out = subtract(rest.dst, other.dst)
        if dst_out:
            out.append(Box(self.family, rest.src, dst_out, rest.services, rest.in_ifaces,
                           rest.out_ifaces))
            rest = Box(self.family, rest.src, intersect(rest.dst, other.dst), rest.services,
                       rest.in_ifaces, rest.out_ifaces)
        services_out = subtract(rest.services, other.services)
        if services_out:
            out.append(Box(self.family, rest.src, rest.dst, services_out, rest.in_ifaces,
                           rest.out_ifaces))
            rest = Box(self.family, rest.src, rest.dst, intersect(rest.services, other.services),
                       rest.in_ifaces, rest.out_ifaces)
        in_out = rest.in_ifaces - other.in_ifaces
        if in_out:
            out.append(Box(self.family, rest.src, rest.dst, rest.services, in_out,
                           rest.out_ifaces))
            rest = Box(self.family, rest.src, rest.dst, rest.services,
                       rest.in_ifaces & other.in_ifaces, rest.out_ifaces)
        out_out = rest.out_ifaces - other.out_ifaces
        if out_out:
            out.append(Box(self.family, rest.src, rest.dst, rest.services, rest.in_ifaces,
                           out_out))
        return out

    def covers(self, other: Box) -> bool:
        return (self.family == other.family and covers(self.src, other.src)
                and covers(self.dst, other.dst) and covers(self.services, other.services)
                and other.in_ifaces <= self.in_ifaces and other.out_ifaces <= self.out_ifaces)

    def with_(self, **changes: object) -> Box:
        fields = {"family": self.family, "src": self.src, "dst": self.dst,
                  "services": self.services, "in_ifaces": self.in_ifaces,
                  "out_ifaces": self.out_ifaces}
        fields.update(changes)
        return Box(**fields)  # type: ignore[arg-type]


def _merge_key(box: Box, skip: int) -> tuple[object, ...]:
    fields: tuple[object, ...] = (box.family, box.src, box.dst, box.services, box.in_ifaces,
                                  box.out_ifaces)
    return fields[:skip] + fields[skip + 1:]


def coalesce(boxes: Iterable[Box]) -> list[Box]:
    """Merge boxes that differ in one field only; the union is unchanged.

    First-match partitioning slices a query into many boxes; the pieces with
    the same outcome usually glue back into few. Linear per pass (hashing).
    """
    current = list(boxes)
    changed = True
    while changed and len(current) > 1:
        changed = False
        for field in (1, 2, 3, 4, 5):
            groups: dict[tuple[object, ...], Box] = {}
            for box in current:
                key = _merge_key(box, field)
                seen = groups.get(key)
                if seen is None:
                    groups[key] = box
                    continue
                changed = True
                if field == 1:
                    groups[key] = seen.with_(src=union(seen.src, box.src))
                elif field == 2:
                    groups[key] = seen.with_(dst=union(seen.dst, box.dst))
                elif field == 3:
                    groups[key] = seen.with_(services=union(seen.services, box.services))
                elif field == 4:
                    groups[key] = seen.with_(in_ifaces=seen.in_ifaces | box.in_ifaces)
                else:
                    groups[key] = seen.with_(out_ifaces=seen.out_ifaces | box.out_ifaces)
            current = list(groups.values())
    return current
