"""The install record a node keeps: what fwc installed there, from which revision, by
whom and when (`fwc status`, `fwc diff --installed`).

After a confirmed install the node holds `/etc/fwc/installed/record` (KEY VALUE lines)
and `/etc/fwc/installed/MANIFEST` (the compiled cluster's MANIFEST as installed), and
`logger -t fwc` puts one line into the node's system log. The record holds no secret:
the MANIFEST hashes a private keepalived.conf without its password.
"""

from __future__ import annotations

import getpass
import os
import shlex
import socket
import subprocess
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path

from fwc import __version__
from fwc.install.paths import STATE_DIR
from fwc.model.records import dataclass

RECORD_DIR = f"{STATE_DIR}/installed"
RECORD = f"{RECORD_DIR}/record"
RECORD_MANIFEST = f"{RECORD_DIR}/MANIFEST"
FIELDS = ("cluster", "member", "policy", "revision", "by", "at", "fwc")
# A status query prints this line between the record and the MANIFEST.
_SEPARATOR = "--- MANIFEST"


@dataclass(frozen=True)
class InstallRecord:
    cluster: str
    policy: str  # the policy file as named on the command line
    revision: str  # git commit of the policy's repository, "+dirty" when it had changes
    by: str  # user@host that ran fwc install
    at: str  # UTC, ISO 8601
    manifest: str  # the cluster's MANIFEST text as installed
    fwc: str = __version__

    def text(self, member: str) -> str:
        values = {"cluster": self.cluster, "member": member, "policy": self.policy,
                  "revision": self.revision, "by": self.by, "at": self.at, "fwc": self.fwc}
        return "# fwc install record\n" + "".join(
            f"{key} {_one_line(values[key])}\n" for key in FIELDS)

    def log_message(self, member: str) -> str:
        return (f"fwc install: {self.cluster}/{member} from {self.policy} revision "
                f"{self.revision} by {self.by}")


def _one_line(value: str) -> str:
    return " ".join(value.split()) or "-"


def git_revision(policy: Path) -> str:
    """The commit of the repository holding POLICY (+dirty with uncommitted changes);
    "unknown" outside git."""
    where = str(policy.absolute().parent)
    try:
        head = subprocess.run(["git", "-C", where, "rev-parse", "HEAD"], capture_output=True,
                              text=True, timeout=30)
        if head.returncode != 0:
            return "unknown"
        dirty = subprocess.run(["git", "-C", where, "status", "--porcelain",
                                "--untracked-files=no"], capture_output=True, text=True,
                               timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def who() -> str:
    """The person behind this install: the sudo caller when run through sudo."""
    user = os.environ.get("SUDO_USER") or getpass.getuser()
    return f"{user}@{socket.gethostname()}"


def make_record(cluster: str, policy: str, manifest: str, now: datetime | None = None,
                dry_run: bool = False) -> InstallRecord:
    """The record of installing CLUSTER now; a dry run runs no command, git included."""
    when = (now or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%SZ")
    revision = "(read at install time)" if dry_run else git_revision(Path(policy))
    return InstallRecord(cluster, policy, revision, who(), when, manifest)


def record_input(record: InstallRecord, member: str) -> str:
    return f"{record.text(member)}{_SEPARATOR}\n{record.manifest}"


def store_command(record: InstallRecord, member: str) -> str:
    """Node command: write stdin (record_input) to RECORD and RECORD_MANIFEST, each
    replaced in one rename, then log one line (where the node has `logger`)."""
    tmp = f"{RECORD}.fwc-new"
    tmp_manifest = f"{RECORD_MANIFEST}.fwc-new"
    return (f"mkdir -p -m 0755 {RECORD_DIR} && cat > {tmp} && "
            f"sed -n '1,/^{_SEPARATOR}$/p' {tmp} | sed '$d' > {RECORD}.part && "
            f"sed '1,/^{_SEPARATOR}$/d' {tmp} > {tmp_manifest} && "
            f"mv -f {tmp_manifest} {RECORD_MANIFEST} && mv -f {RECORD}.part {RECORD} && "
            f"rm -f {tmp} && "
            f"{{ logger -t fwc -- {shlex.quote(record.log_message(member))} 2>/dev/null "
            "|| true; }")


def read_command() -> str:
    """Node command: print RECORD, the separator and RECORD_MANIFEST (nothing without)."""
    return (f"if [ -f {RECORD} ]; then cat {RECORD}; echo '{_SEPARATOR}'; "
            f"cat {RECORD_MANIFEST} 2>/dev/null; fi")


def describe(record: Mapping[str, str]) -> str:
    """A parsed record for people (`fwc status`, `fwc diff --installed`): when, by whom,
    from which policy and revision; `?` for a field the node's record lacks."""
    return (f"installed {record.get('at', '?')} by {record.get('by', '?')} from "
            f"{record.get('policy', '?')} at revision {record.get('revision', '?')}")


def parse_record(text: str) -> dict[str, str] | None:
    """The fields of a record as read_command prints it (and 'manifest'); None if empty."""
    if not text.strip():
        return None
    head, _, manifest = text.partition(f"{_SEPARATOR}\n")
    out: dict[str, str] = {}
    for line in head.splitlines():
        if not line or line.startswith("#"):
            continue
        key, _, value = line.partition(" ")
        if key in FIELDS:
            out[key] = value
    out["manifest"] = manifest
    return out
