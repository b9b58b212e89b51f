"""Which member handles traffic: the VRRP master of the interface it arrives on.

A sender reaches the cluster through a VIP (its gateway, or the address it talks
to), so the member holding the VIPs of the arrival interface is the one whose
rules decide: in a single-master cluster the master for everything, with
`vrrp-group`s (active-active) the master of the arrival interface's group. When
that member fails, the next in `Cluster.vrrp_order` takes the group over and its
rules decide. Traffic arriving on an interface without VIPs goes to a member's
own address (no VRRP decides which), and traffic from the firewall is each
member's own.

`handling(cluster, interfaces)` answers per arrival interface; `fwc query` prints
it beside the per-member answers and `expect ... via MEMBER` checks it.
"""

from __future__ import annotations

from collections.abc import Iterable

from fwc.analysis.space import LOCAL
from fwc.model import Cluster
from fwc.model.addresses import AddressSet
from fwc.model.intervals import Intervals, intersect
from fwc.model.records import dataclass


@dataclass(frozen=True, slots=True)
class Handling:
    """Who handles the traffic that arrives on `interface`.

    `order` lists the members in the order they take the interface's VIPs: the first
    handles it while every member is well, the second after the first fails. Empty:
    the interface has no VIP (or the traffic is the firewall's own), so the sender
    picks the member by its address and every member answers for itself.
    """

    interface: str
    group: str | None  # the vrrp-group; None without groups or without VIPs
    order: tuple[str, ...]

    @property
    def normal(self) -> str | None:
        return self.order[0] if self.order else None

    @property
    def after_failover(self) -> str | None:
        """Who takes over when the normal handler fails (None: nobody, one member)."""
        return self.order[1] if len(self.order) > 1 else None

    def why(self) -> str:
        """Why `normal` handles it (or why no one member does), in policy terms."""
        if self.interface == LOCAL:
            return "each member for itself"
        if not self.order:
            return (f"no VIP on {self.interface}: the member whose own address the "
                    "sender uses")
        if self.group is not None:
            return f"master of vrrp-group {self.group}"
        return "the VRRP master"


def interface_handling(cluster: Cluster, interface: str) -> Handling:
    """Handling of traffic arriving on INTERFACE (a logical interface, or LOCAL)."""
    if interface == LOCAL:
        return Handling(LOCAL, None, ())
    group = cluster.group_of(interface)
    order = tuple(m.name for m in cluster.vrrp_order(interface))
    return Handling(interface, group.name if group is not None and order else None, order)


def handling(cluster: Cluster, interfaces: Iterable[str]) -> list[Handling]:
    """Per arrival interface of INTERFACES (deduplicated, in cluster order, LOCAL last)."""
    wanted = set(interfaces)
    names = [i.name for i in cluster.interfaces if i.name in wanted]
    names += sorted(wanted - set(names) - {LOCAL})
    if LOCAL in wanted:
        names.append(LOCAL)
    return [interface_handling(cluster, name) for name in names]


def vips_elsewhere(cluster: Cluster, member: str) -> tuple[tuple[str, AddressSet], ...]:
    """The VIP interfaces whose VIPs MEMBER does not hold in normal operation, each with
    its VIPs: the other vrrp-groups' (active-active). A member that holds no VIP while
    every member is well (the backup of a single-master cluster) meets VIP traffic only
    after it takes over, so it is answered as then, holding every VIP: empty."""
    items = [(iface, interface_handling(cluster, iface.name)) for iface in cluster.vrrp_interfaces]
    if not any(item.normal == member for _, item in items):
        return ()
    return tuple((iface.name, AddressSet.of(*(v.ip for v in iface.vips)))
                 for iface, item in items if item.normal != member)


def vips_held_elsewhere(cluster: Cluster, member: str, family: int,
                        addresses: Intervals) -> list[Handling]:
    """The VIP interfaces whose VIPs (of FAMILY) ADDRESSES touch and that another member
    than MEMBER holds in normal operation: MEMBER routes packets for them on to their
    holder (its answer for them is FORWARD: docs/analysis.md)."""
    out = []
    for iface in cluster.vrrp_interfaces:
        item = interface_handling(cluster, iface.name)
        if item.normal in (None, member):
            continue
        if intersect(AddressSet.of(*(v.ip for v in iface.vips)).family(family), addresses):
            out.append(item)
    return out
