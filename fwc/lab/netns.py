"""Namespace, link and process primitives for the lab, with PID-tracked cleanup.

Everything the lab creates is written to a state file *before* it is created,
so that a crash at any point (or a second process running
``fwc lab --teardown PREFIX``) can undo it. Processes are remembered by PID
plus their kernel start time, so a recycled PID is never killed by mistake.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import field
from pathlib import Path

from fwc.lab.arguments import PREFIX_RE
from fwc.model.records import dataclass

STATE_ROOT = Path("/run/fwc-lab")
# Probes run with this interpreter (not whatever `python3` is on PATH in a
# namespace): the same one, and no shim start-up cost per probe.
PYTHON = sys.executable or "python3"


class LabError(RuntimeError):
    """A lab step failed; the message says which and why."""


class LabRefused(LabError):
    """The policy cannot be run in the lab as given (e.g. non-documentation ranges)."""


def run(
    argv: Sequence[str],
    *,
    check: bool = True,
    input: str | None = None,
    timeout: float = 30.0,
) -> subprocess.CompletedProcess[str]:
    """Run a command with a hard timeout: no lab step may hang forever."""
    try:
        proc = subprocess.run(
            list(argv), input=input, capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired as exc:
        raise LabError(f"timed out after {timeout:.0f} s: {' '.join(argv)}") from exc
    if check and proc.returncode != 0:
        raise LabError(
            f"command failed (rc {proc.returncode}): {' '.join(argv)}\n"
            f"{proc.stderr.strip() or proc.stdout.strip()}"
        )
    return proc


def proc_start_time(pid: int) -> str | None:
    """Kernel start time of a PID (field 22 of /proc/PID/stat), None if gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name may contain spaces or ')' so split after the last ')'.
    fields = raw[raw.rindex(")") + 2 :].split()
    return fields[19]


def netns_pids(ns: str) -> list[int]:
    """PIDs living in a named network namespace (all of them are the lab's)."""
    proc = run(["ip", "netns", "pids", ns], check=False, timeout=10)
    return [int(p) for p in proc.stdout.split() if p.isdigit()]


@dataclass
class Proc:
    """A process the lab started; killed only if PID and start time still match."""

    name: str
    pid: int
    start: str
    log: Path | None = None
    popen: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def alive(self) -> bool:
        if self.popen is not None and self.popen.poll() is not None:
            return False
        return proc_start_time(self.pid) == self.start

    def signal(self, sig: int) -> None:
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def reap(self, timeout: float = 2.0) -> None:
        if self.popen is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout=timeout)


def log_size(log: Path) -> int:
    """Where a process appended to LOG will start writing (0 for a new log)."""
    try:
        return log.stat().st_size
    except OSError:
        return 0


def await_line(proc: Proc, marker: str, offset: int, timeout: float = 15.0) -> None:
    """Wait until PROC's log has a line starting with MARKER after OFFSET (bounded).

    A helper that says it is ready only once it is (the probes' echo server prints
    `serving` after binding every port): a `deny` probe's reset or port-unreachable
    then can only come from the firewall, never from a destination with nothing
    listening yet, or nothing at all because a bind failed."""
    assert proc.log is not None
    deadline = time.monotonic() + timeout
    while True:
        try:
            with open(proc.log, "rb") as fh:
                fh.seek(offset)
                text = fh.read().decode(errors="replace")
        except OSError:
            text = ""
        if any(line.startswith(marker) for line in text.splitlines()):
            return
        if not proc.alive() or time.monotonic() >= deadline:
            why = "exited" if not proc.alive() else f"was not ready within {timeout:.0f} s"
            tail = " | ".join(text.strip().splitlines()[-3:])
            raise LabError(f"{proc.name} {why}" + (f": {tail}" if tail else "")
                           + f"; see {proc.log}")
        time.sleep(0.05)


class LabState:
    """The on-disk record of one lab run: namespaces, mounts and processes."""

    def __init__(self, prefix: str) -> None:
        if not PREFIX_RE.fullmatch(prefix):
            raise LabError(f"invalid lab prefix {prefix!r} (expected fwc<letters/digits>)")
        self.prefix = prefix
        self.dir = STATE_ROOT / prefix
        self.file = self.dir / "state.json"
        self.namespaces: list[str] = []
        self.ns_mounts: list[str] = []
        self.bind_mounts: list[str] = []
        self.procs: list[Proc] = []

    # -- persistence -------------------------------------------------------
    def create(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.dir, 0o700)
        self.save()

    def save(self) -> None:
        data = {
            "prefix": self.prefix,
            "namespaces": self.namespaces,
            "ns_mounts": self.ns_mounts,
            "bind_mounts": self.bind_mounts,
            "procs": [{"name": p.name, "pid": p.pid, "start": p.start} for p in self.procs],
        }
        tmp = self.file.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=1))
        tmp.replace(self.file)

    @classmethod
    def load(cls, prefix: str) -> LabState:
        state = cls(prefix)
        if state.file.exists():
            data = json.loads(state.file.read_text())
            state.namespaces = list(data.get("namespaces", []))
            state.ns_mounts = list(data.get("ns_mounts", []))
            state.bind_mounts = list(data.get("bind_mounts", []))
            state.procs = [Proc(p["name"], p["pid"], p["start"]) for p in data.get("procs", [])]
        return state

    # -- namespaces and links ---------------------------------------------
    def ns(self, short: str) -> str:
        return f"{self.prefix}-{short}"

    def add_netns(self, name: str) -> None:
        self.namespaces.append(name)
        self.save()
        run(["ip", "netns", "add", name])
        run(["ip", "-n", name, "link", "set", "lo", "up"])
        # DAD would leave fresh IPv6 addresses tentative for ~1 s; the lab
        # has no duplicates by construction, so skip it to keep start-up fast.
        for knob in ("default", "all"):
            run(
                [
                    "ip",
                    "netns",
                    "exec",
                    name,
                    "sysctl",
                    "-qw",
                    f"net.ipv6.conf.{knob}.accept_dad=0",
                ],
                check=False,
            )

    def add_bridge(self, ns: str, name: str) -> None:
        # Snooping off: conntrackd's 225.0.0.50 must be flooded without IGMP.
        run(["ip", "-n", ns, "link", "add", name, "type", "bridge", "mcast_snooping", "0"])
        run(["ip", "-n", ns, "link", "set", name, "up"])

    def add_port(self, sw_ns: str, bridge: str, port: str, ns: str, device: str) -> None:
        """A veth whose one end is DEVICE in NS and the other a port of BRIDGE.

        Both ends are created directly in their namespaces, so nothing ever
        appears in the root namespace (and names cannot clash there).
        """
        run(
            [
                "ip",
                "-n",
                sw_ns,
                "link",
                "add",
                port,
                "type",
                "veth",
                "peer",
                "name",
                device,
                "netns",
                ns,
            ]
        )
        run(["ip", "-n", sw_ns, "link", "set", port, "master", bridge])
        run(["ip", "-n", sw_ns, "link", "set", port, "up"])
        run(["ip", "-n", ns, "link", "set", device, "up"])

    # -- processes -----------------------------------------------------------
    def spawn(
        self, name: str, argv: Sequence[str], log: Path, env: dict[str, str] | None = None
    ) -> Proc:
        """Start a process in its own session, logging to LOG, and record its PID."""
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as out:
            popen = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=env,
            )
        start = proc_start_time(popen.pid) or "?"
        proc = Proc(name, popen.pid, start, log, popen)
        self.procs.append(proc)
        self.save()
        return proc

    def forget(self, proc: Proc) -> None:
        if proc in self.procs:
            self.procs.remove(proc)
            self.save()


def kill_ns_processes(ns: str, sig: int = signal.SIGKILL) -> list[int]:
    """Signal every process in one of the lab's own namespaces, by PID."""
    pids = netns_pids(ns)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
    return pids


def lab_namespaces(prefix: str) -> list[str]:
    proc = run(["ip", "netns", "list"], check=False, timeout=10)
    names = [line.split()[0] for line in proc.stdout.splitlines() if line.strip()]
    return [n for n in names if n.startswith(prefix + "-")]


def teardown(prefix: str, log: list[str] | None = None) -> list[str]:
    """Undo everything recorded for PREFIX. Idempotent; never raises for leftovers."""
    notes: list[str] = [] if log is None else log
    state = LabState.load(prefix)
    # 1. Processes we started (PID + start time must match), then anything
    #    still living in our namespaces (keepalived children, notify hooks).
    for proc in state.procs:
        if proc_start_time(proc.pid) == proc.start:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
            notes.append(f"killed {proc.name} pid {proc.pid}")
    namespaces = list(dict.fromkeys(state.namespaces + lab_namespaces(prefix)))
    for _ in range(20):
        leftover = [pid for ns in namespaces for pid in kill_ns_processes(ns)]
        if not leftover:
            break
        time.sleep(0.05)
    for proc in state.procs:
        if proc.popen is not None:
            proc.reap(1.0)
    # 2. Namespaces (this removes every veth and bridge inside them).
    for ns in namespaces:
        if Path(f"/run/netns/{ns}").exists():
            run(["ip", "netns", "del", ns], check=False, timeout=10)
            notes.append(f"deleted netns {ns}")
    # 3. Persistent mount namespaces, then the private bind mount holding them.
    for mnt in state.ns_mounts:
        if os.path.ismount(mnt) or _is_mounted(mnt):
            run(["umount", "-l", mnt], check=False, timeout=10)
            notes.append(f"unmounted {mnt}")
    for mnt in reversed(state.bind_mounts):
        if _is_mounted(mnt):
            run(["umount", "-l", mnt], check=False, timeout=10)
            notes.append(f"unmounted {mnt}")
    if state.dir.exists():
        shutil.rmtree(state.dir, ignore_errors=True)
    state.procs = []
    return notes


def _is_mounted(path: str) -> bool:
    try:
        mounts = Path("/proc/self/mountinfo").read_text()
    except OSError:
        return False
    return any(line.split()[4] == path for line in mounts.splitlines())


def leftover_labs() -> list[str]:
    """Prefixes of labs still recorded whose owning process is gone (--keep or killed)."""
    out = []
    if not STATE_ROOT.is_dir():
        return out
    for entry in sorted(STATE_ROOT.iterdir()):
        m = re.match(r"^fwc(\d+)", entry.name)
        if m and not Path(f"/proc/{m.group(1)}").exists():
            out.append(entry.name)
    return out


def new_prefix() -> str:
    return f"fwc{os.getpid()}"


def require_root() -> str | None:
    """Why the lab cannot run here, or None when it can."""
    if os.geteuid() != 0:
        return "fwc lab needs root (network and mount namespaces)"
    # The packet filter's own tools depend on the cluster's backend: Lab checks them.
    for tool in ("ip", "nsenter", "unshare", "keepalived", "conntrackd"):
        if shutil.which(tool) is None:
            return f"fwc lab needs {tool!r} on PATH"
    return None
