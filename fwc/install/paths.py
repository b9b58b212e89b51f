"""fwc's own state on a node (docs/contracts.md); the compiled files: fwc.backend.files."""

from __future__ import annotations

from pathlib import PurePosixPath

from fwc.backend.files import FILES, path_of

# The state an install on probation leaves, which the boot script reads too: named in
# fwc.backend.probation (the back end may not import fwc.install).
from fwc.backend.probation import (  # noqa: F401 - re-exported
    CONFIRMED,
    ROLLBACK_SCRIPT,
    ROLLED_BACK,
    SNAPSHOT,
    STATE_DIR,
    WATCHDOG_PID,
)

STAGING = f"{STATE_DIR}/staging"
# Run once the install is confirmed: removes what fwc's earlier install of another
# backend still runs (a switch from iptables to nftables, or back).
RETIRE_SCRIPT = f"{SNAPSHOT}/retire.sh"
RETIRED = f"{SNAPSHOT}/retired"
# conntrackd answered when the snapshot was taken (`systemd` when it ran as the unit,
# `plain` otherwise): a rollback starts it again if the install's restart left it down.
CONNTRACKD_RAN = f"{SNAPSHOT}/conntrackd.ran"
# One install at a time per node: flock on INSTALL_LOCK, held from before
# staging until the install is confirmed or rolled back (scripts.take_lock).
INSTALL_LOCK = f"{STATE_DIR}/install.lock"
LOCK_OWNER = f"{STATE_DIR}/install.owner"

# Directories `ip netns exec NAME` must find under /etc/netns/NAME so that a
# namespace node has its own copies rather than the host's.
# Derived from the node files, so that a new compiled file can never land in the
# host's /etc through a namespace that lacks a private copy of its directory.
NETNS_PRIVATE_DIRS = tuple(sorted({PurePosixPath(f.path).parts[2] for f in FILES
                                   if f.path.startswith("/etc/")} | {"fwc"}))

CONNTRACKD = f"conntrackd -C {path_of('conntrackd.conf')}"
