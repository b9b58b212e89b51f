"""Is the cluster settled? Exactly one master holding every VIP, conntrackd answering.

The check is a plain function of the members' transports so that an install
can be tested without daemons (a fake check) and with them (the real one).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from fwc.install.paths import CONNTRACKD
from fwc.install.transport import Transport, TransportError
from fwc.model import Cluster


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
    all_vips = {str(v.ip) for i in cluster.interfaces for v in i.vips}
    holders: dict[str, set[str]] = {}
    for name, transport in transports.items():
        held = held_vips(cluster, transport)
        if held is None:
            return ClusterState(False, None, f"{name} does not answer")
        if held:
            holders[name] = held
    full = [name for name, held in holders.items() if held == all_vips]
    if len(holders) != 1 or len(full) != 1:
        who = ", ".join(f"{n} holds {len(h)}/{len(all_vips)} VIPs"
                        for n, h in sorted(holders.items())) or "no member holds the VIPs"
        return ClusterState(False, None, who)
    if cluster.sync.link is not None:
        silent = [n for n, t in transports.items() if not conntrackd_answers(t)]
        if silent:
            return ClusterState(False, full[0], f"conntrackd does not answer -s on "
                                                f"{', '.join(silent)}")
    return ClusterState(True, full[0], f"{full[0]} is master")


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
