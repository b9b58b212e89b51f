"""Installing a cluster: which nodes, in which order, and stopping at the first failure.

Backups go first and the master last, so the VIPs move at most once, and
only to a node that already runs the new configuration. Between nodes the
cluster must settle again (one master holding every VIP, or each vrrp-group's on
its master: fwc.install.settle; conntrackd answering), when it was settled before
the install began.
"""

from __future__ import annotations

import select
import sys
import time
from collections.abc import Mapping
from typing import TextIO

from fwc.backend.render.keepalived import preempt_delay
from fwc.install.node import Confirmer, NodeInstall, NodeResult, wait_for_marker
from fwc.install.record import InstallRecord
from fwc.install.settle import ClusterState, SettleCheck, check_cluster, wait_settled
from fwc.install.transport import Transport
from fwc.model import Cluster, Member
from fwc.model.records import dataclass

DEFAULT_SETTLE_TIMEOUT = 30.0
# beyond a master-down interval and the preempt delay: keepalived's start, the last poll
SETTLE_SLACK_S = 6.0


@dataclass
class InstallOptions:
    confirm_timeout: float = 60.0
    # None: settle_timeout_for the cluster; a value (tests, with fake daemons): exactly it
    settle_timeout: float | None = None
    systemd: bool = True  # False when nodes are namespaces on this host (no own systemd)
    out: TextIO = sys.stdout
    record: InstallRecord | None = None  # written to each node once confirmed


def settle_timeout_for(cluster: Cluster, floor: float) -> float:
    """How long the install waits for CLUSTER to settle after a node: FLOOR (the option,
    enough for fast adverts on a loaded node), and at least what keepalived itself takes
    to hand the VIPs back: a master-down interval, then the preempt delay. At `advert 5s`
    that is 36 s, and a fixed 30 s failed (and rolled back) the install of a healthy
    cluster."""
    vrrp = cluster.vrrp
    delay = preempt_delay(vrrp) if vrrp.preempt else 0
    return max(floor, vrrp.master_down_bound_s + delay + SETTLE_SLACK_S)


def order(cluster: Cluster, chosen: list[Member], state: ClusterState | None) -> list[Member]:
    """Backups first (lowest priority first), the current or configured master last."""
    def rank(member: Member) -> tuple[int, int, int]:
        is_master = state is not None and state.master == member.name
        return (int(is_master), int(member.master), member.priority)
    return sorted(chosen, key=rank)


def role_of(member: Member, cluster: Cluster) -> str:
    highest = max(cluster.members, key=lambda m: (m.master, m.priority))
    return "master" if member.name == highest.name else "backup"


def install_cluster(cluster: Cluster, chosen: list[Member], files: Mapping[str, dict[str, str]],
                    transports: Mapping[str, Transport], options: InstallOptions,
                    confirmer: Confirmer, check: SettleCheck = check_cluster,
                    dry_run: bool = False) -> list[NodeResult]:
    """Install CHOSEN members one by one; stop after the first one that fails."""
    out = options.out
    before = None if dry_run else check(cluster, transports)
    if before is not None and not before.settled:
        out.write(f"cluster {cluster.name}: not settled before the install ({before.detail}); "
                  "not waiting for it between nodes\n")
    ordered = order(cluster, chosen, before)
    out.write(f"{'# ' if dry_run else ''}cluster {cluster.name}: installing "
              f"{', '.join(m.name for m in ordered)} in this order\n")
    results: list[NodeResult] = []
    settle_timeout = settle_timeout_for(cluster, DEFAULT_SETTLE_TIMEOUT) \
        if options.settle_timeout is None else options.settle_timeout
    for member in ordered:
        def settle() -> tuple[bool, str]:
            if before is None or not before.settled:
                return True, "not checked (was not settled before)"
            state = wait_settled(check, cluster, transports, settle_timeout)
            return state.settled, state.detail

        # (the node's watchdog outlasts the confirmation and this wait: NodeInstall)
        node = NodeInstall(transports[member.name], files[member.name],
                           role=role_of(member, cluster), systemd=options.systemd,
                           confirm_timeout=options.confirm_timeout,
                           settle_timeout=settle_timeout,
                           confirmer=confirmer, settle=settle, out=out,
                           record=options.record, families=cluster.families)
        result = node.run()
        results.append(result)
        if not result.ok:
            rest = [m.name for m in ordered[len(results):]]
            if rest:
                out.write(f"cluster {cluster.name}: stopping after {member.name} failed; "
                          f"not touched: {', '.join(rest)}\n")
            break
    return results


def automatic_confirmer(node: NodeInstall, seconds: float) -> bool:
    """--confirm: a fresh connection to the node after the change proves it reachable."""
    reachable = node.probe("true", fresh=True)
    if not reachable:
        node.say("unreachable after the change: not confirming")
    return reachable


def terminal_confirmer(stdin: TextIO, out: TextIO) -> Confirmer:
    """Ask on the terminal, like ferm --interactive: no answer in time means no."""

    def ask(node: NodeInstall, seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                out.write("\n")
                return node.confirmed_elsewhere()
            out.write(f"{node.member}: keep the new configuration? "
                      f"type 'yes' within {left:.0f} s: ")
            out.flush()
            ready, _, _ = select.select([stdin], [], [], left)
            if not ready:
                continue
            answer = stdin.readline()
            if not answer:  # end of input: nobody is there to confirm
                return False
            if answer.strip().lower() in ("y", "yes"):
                return True
            if answer.strip().lower() in ("n", "no"):
                return False
    return ask


def waiting_confirmer(node: NodeInstall, seconds: float) -> bool:
    """No terminal and no --confirm: only a confirmation made on the node counts."""
    node.say(f"waiting {seconds:.0f} s for a confirmation (fwc install --confirm, or "
             "'touch /etc/fwc/snapshot/confirmed' on the node)")
    return wait_for_marker(node, seconds)
