"""Is the cluster settled? Exactly one master holding every VIP, conntrackd answering.

With `vrrp-group`s (active-active) settled means each group's VIPs are all on one
member and on no other: the group's master (`Cluster.vrrp_order`) when VRRP
preempts, since the VIPs move back to it, else whichever member holds them.

The check is a plain function of the members' transports so that an install
can be tested without daemons (a fake check) and with them (the real one); the
VIP part (`vip_state`) is a pure function of the VIPs each member holds.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping, Set

from fwc.install.paths import CONNTRACKD
from fwc.install.transport import Transport, TransportError
from fwc.model import Cluster
from fwc.model.records import dataclass


@dataclass(frozen=True)
class ClusterState:
    settled: bool
    master: str | None  # the member holding the VIPs, when exactly one does
    detail: str  # why it is not settled, for the user


SettleCheck = Callable[[Cluster, Mapping[str, Transport]], ClusterState]

_INET = re.compile(r"\binet6?\s+([0-9a-fA-F:.]+)/\d+")


def held_vips(cluster: Cluster, transport: Transport) -> set[str] | None:
    """VIPs configured on the node's interfaces; None when the node cannot be asked."""
    try:
        result = transport.run("ip -o addr show", timeout=15)
    except TransportError:
        return None
    if not result.ok:
        return None
    present = set(_INET.findall(result.stdout))
    return {str(v.ip) for i in cluster.interfaces for v in i.vips} & present


def conntrackd_answers(transport: Transport) -> bool:
    try:
        return transport.run(f"{CONNTRACKD} -s >/dev/null 2>&1", timeout=15).ok
    except TransportError:
        return False


def check_cluster(cluster: Cluster, transports: Mapping[str, Transport]) -> ClusterState:
    held: dict[str, set[str]] = {}
    for name, transport in transports.items():
        vips = held_vips(cluster, transport)
        if vips is None:
            return ClusterState(False, None, f"{name} does not answer")
        held[name] = vips
    state = vip_state(cluster, held)
    if not state.settled:
        return state
    if cluster.sync.link is not None:
        silent = [n for n, t in transports.items() if not conntrackd_answers(t)]
        if silent:
            return ClusterState(False, state.master, f"conntrackd does not answer -s on "
                                                     f"{', '.join(silent)}")
    return state


def vip_state(cluster: Cluster, held: Mapping[str, Set[str]]) -> ClusterState:
    """Settled or not by the VIPs each member holds (HELD: member -> VIP addresses as
    `held_vips` gives them); conntrackd is not asked."""
    if cluster.groups:
        return _groups_state(cluster, held)
    all_vips = {str(v.ip) for i in cluster.interfaces for v in i.vips}
    holders = {name: set(vips) for name, vips in held.items() if vips}
    full = [name for name, vips in holders.items() if vips == all_vips]
    if len(holders) != 1 or len(full) != 1:
        who = ", ".join(f"{n} holds {len(h)}/{len(all_vips)} VIPs"
                        for n, h in sorted(holders.items())) or "no member holds the VIPs"
        return ClusterState(False, None, who)
    return ClusterState(True, full[0], f"{full[0]} is master")


def _groups_state(cluster: Cluster, held: Mapping[str, Set[str]]) -> ClusterState:
    """Active-active: each vrrp-group's VIPs on one member (its master when VRRP
    preempts). `master` is None: no one member holds every VIP."""
    units: dict[str, tuple[set[str], str]] = {}  # label -> (VIPs, normal holder)
    for iface in cluster.vrrp_interfaces:
        group = cluster.group_of(iface.name)
        label = f"vrrp-group {group.name}" if group is not None else "the VIPs in no vrrp-group"
        vips, _ = units.setdefault(label, (set(), cluster.vrrp_order(iface.name)[0].name))
        vips.update(str(v.ip) for v in iface.vips)
    problems: list[str] = []
    masters: list[str] = []
    for label, (vips, normal) in units.items():
        holders = {name: vips & set(got) for name, got in sorted(held.items())
                   if vips & set(got)}
        if not holders:
            problems.append(f"no member holds the VIPs of {label}")
        elif len(holders) > 1 or next(iter(holders.values())) != vips:
            problems.append(f"{label} split: " + ", ".join(
                f"{n} holds {len(h)}/{len(vips)}" for n, h in holders.items()))
        else:
            (holder,) = holders
            if cluster.vrrp.preempt and holder != normal:
                problems.append(f"{label} is on {holder}, not yet back on its master {normal}")
            else:
                masters.append(f"{holder} masters {label.removeprefix('vrrp-group ')}")
    if problems:
        return ClusterState(False, None, "; ".join(problems))
    return ClusterState(True, None, ", ".join(masters))


def wait_settled(check: SettleCheck, cluster: Cluster, transports: Mapping[str, Transport],
                 timeout: float, interval: float = 0.5,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> ClusterState:
    """Poll CHECK until settled or TIMEOUT seconds passed (the last state either way)."""
    deadline = clock() + timeout
    state = check(cluster, transports)
    while not state.settled and clock() < deadline:
        sleep(interval)
        state = check(cluster, transports)
    return state
