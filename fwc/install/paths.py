"""Where compiled files live on a node (docs/contracts.md) and fwc's own node state."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class NodeFile:
    name: str  # file name in output/<cluster>/<member>/
    path: str  # where it goes on the node
    mode: int


NODE_FILES: tuple[NodeFile, ...] = (
    NodeFile("iptables.rules", "/etc/fwc/iptables.rules", 0o644),
    NodeFile("ip6tables.rules", "/etc/fwc/ip6tables.rules", 0o644),
    NodeFile("ipsets.rules", "/etc/fwc/ipsets.rules", 0o644),
    # It holds the VRRP password whenever authentication is on.
    NodeFile("keepalived.conf", "/etc/keepalived/keepalived.conf", 0o600),
    NodeFile("conntrackd.conf", "/etc/conntrackd/conntrackd.conf", 0o644),
    NodeFile("fwc-notify.sh", "/etc/fwc/fwc-notify.sh", 0o755),
    NodeFile("sysctl.conf", "/etc/sysctl.d/90-fwc.conf", 0o644),
)
BY_NAME = {f.name: f for f in NODE_FILES}

# fwc's state on the node lives under /etc/fwc, which the lab (and any node)
# keeps private per member; /var/lib would be shared between lab namespaces.
STATE_DIR = "/etc/fwc"
STAGING = f"{STATE_DIR}/staging"
SNAPSHOT = f"{STATE_DIR}/snapshot"
ROLLBACK_SCRIPT = f"{SNAPSHOT}/rollback.sh"
CONFIRMED = f"{SNAPSHOT}/confirmed"
ROLLED_BACK = f"{SNAPSHOT}/rolled-back"
WATCHDOG_PID = f"{SNAPSHOT}/watchdog.pid"

# Directories `ip netns exec NAME` must find under /etc/netns/NAME so that a
# namespace node has its own copies rather than the host's.
NETNS_PRIVATE_DIRS = ("fwc", "keepalived", "conntrackd", "sysctl.d")

CONNTRACKD = "conntrackd -C /etc/conntrackd/conntrackd.conf"
