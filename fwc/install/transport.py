"""How fwc reaches a node: ssh, the local machine, or a network namespace.

Every node step is one POSIX shell command run as root on the node; files
travel on that command's stdin (`cat > path`), so no transport needs scp and
a dry run can print exactly what would run.
"""

from __future__ import annotations

import os
import shlex
import stat
import subprocess
from collections.abc import Sequence
from dataclasses import field
from pathlib import Path
from typing import TextIO

from fwc.install.paths import NETNS_PRIVATE_DIRS
from fwc.model.records import dataclass
from fwc.model.ssh import SSH_TARGET_FORM, ssh_target_problem


class TransportError(Exception):
    """A node could not be reached or a command could not be started."""


class InventoryError(Exception):
    """A member's target is unknown or not acceptable (nothing was run)."""


@dataclass(frozen=True)
class Result:
    returncode: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def reason(self) -> str:
        text = (self.stderr.strip() or self.stdout.strip()).splitlines()
        return text[-1] if text else f"exit status {self.returncode}"


class Transport:
    """Runs shell commands on one node."""

    dry_run = False
    # False when the node shares /run with others (ip netns exec without a mount
    # namespace): conntrackd's socket and lock are then not the node's own.
    private_run = True

    def __init__(self, member: str, target: str) -> None:
        self.member = member
        self.target = target

    def argv(self, command: str) -> list[str]:
        raise NotImplementedError

    def describe(self) -> str:
        return f"{self.member} ({self.target})"

    def preflight(self) -> str | None:
        """Why this transport must not be used as configured, or None."""
        return None

    def fresh(self) -> Transport:
        """The same node over a new connection (proves new connections still work)."""
        return self

    def run(self, command: str, *, input: str | None = None, timeout: float = 60.0) -> Result:
        argv = self.argv(command)
        try:
            proc = subprocess.run(argv, input=input, capture_output=True, text=True,
                                  timeout=timeout, stdin=None if input is not None
                                  else subprocess.DEVNULL)
        except FileNotFoundError as exc:
            raise TransportError(f"{self.member}: cannot run {argv[0]!r}: not installed") from exc
        except subprocess.TimeoutExpired as exc:
            raise TransportError(f"{self.member}: no answer within {timeout:.0f} s "
                                 f"({shlex.join(argv[:3])} ...)") from exc
        return Result(proc.returncode, proc.stdout, proc.stderr)


class SshTransport(Transport):
    def __init__(self, member: str, target: str, ssh: str = "ssh") -> None:
        problem = ssh_target_problem(target)
        if problem:
            # The policy check (FWC520) catches this too; an inventory line does not pass it.
            raise InventoryError(f"ssh target of member {member} {problem}: "
                                 f"write {SSH_TARGET_FORM}")
        super().__init__(member, target)
        self.ssh = shlex.split(ssh) or ["ssh"]

    def argv(self, command: str) -> list[str]:
        # `--` ends ssh's options: the target can never be read as one. The remote
        # login shell may not be POSIX: hand it one quoted `sh -c`.
        return [*self.ssh, "--", self.target, "sh -c " + shlex.quote(command)]

    def fresh(self) -> Transport:
        # A multiplexed ssh (ControlMaster) would ride the old, ESTABLISHED
        # connection, which any ruleset lets through.
        return SshTransport(self.member, self.target,
                            shlex.join([*self.ssh, "-o", "ControlPath=none"]))


class LocalTransport(Transport):
    def __init__(self, member: str) -> None:
        super().__init__(member, "local")

    def argv(self, command: str) -> list[str]:
        return ["sh", "-c", command]


class NetnsTransport(Transport):
    """`ip netns exec NAME`: /etc/netns/NAME/* is bind-mounted over /etc/* (iproute2).

    `ip netns exec` forgets mounts between calls (docs/ha-pitfalls.md), so a
    namespace whose private /etc and /run live in a persistent mount
    namespace (the lab's) is entered with nsenter on that mount file instead.
    """

    def __init__(self, member: str, target: str, mount: str | None = None) -> None:
        if "/" in target or target in ("", ".", ".."):
            # (as iproute2 names them: one entry of /run/netns, which only root fills;
            # `../../proc/self/ns/net` was this machine's own network namespace)
            raise InventoryError(f"netns target of member {member} {target!r} is not a "
                                 "network namespace name (a name under /run/netns)")
        super().__init__(member, target)
        self.mount = mount
        self.private_run = mount is not None

    def enter(self, argv: Sequence[str]) -> list[str]:
        """ARGV run inside the node without a shell (the lab starts its daemons so)."""
        if self.mount:
            return ["nsenter", f"--mount={self.mount}", f"--net=/run/netns/{self.target}",
                    "--", *argv]
        return ["ip", "netns", "exec", self.target, *argv]

    def argv(self, command: str) -> list[str]:
        return self.enter(["sh", "-c", command])

    def describe(self) -> str:
        return f"{self.member} (netns {self.target})"

    def _mount_problem(self, mount: str) -> str | None:
        """Why MOUNT cannot be the node's mount namespace. An inventory names it (and
        fwc.toml may name the inventory): this machine's own would make the install a
        local one, writing its /etc, and another process's under /proc runs the node's
        commands as root with that process's files (its /bin/sh), or another process's
        once its PID is reused. A persistent one (`unshare --mount=FILE`, the lab's) is
        a file of its own."""
        try:
            theirs, mine = os.stat(mount), os.stat("/proc/self/ns/mnt")
        except FileNotFoundError:
            return f"{self.member}: mount namespace file {mount} does not exist"
        except OSError as exc:
            return f"{self.member}: mount namespace file {mount}: {exc.strerror or exc}"
        if (theirs.st_dev, theirs.st_ino) == (mine.st_dev, mine.st_ino):
            return (f"{self.member}: {mount} is this machine's own mount namespace: the "
                    "install would write this machine's /etc (--transport local does that)")
        if Path(os.path.realpath(mount)).is_relative_to("/proc"):
            return (f"{self.member}: {mount} is a process's namespace under /proc, not a "
                    "persistent one: bind it to a file of its own (unshare --mount=FILE) "
                    "and give that file")
        return None

    def preflight(self) -> str | None:
        """Refuse to write the host's /etc through a namespace without private dirs."""
        if self.mount:
            return self._mount_problem(self.mount)
        if not Path(f"/run/netns/{self.target}").exists():
            return f"{self.member}: no network namespace '{self.target}'"
        for name in NETNS_PRIVATE_DIRS:
            private, shared = Path("/etc/netns") / self.target / name, Path("/etc") / name
            if not private.is_dir() or not shared.is_dir():
                return (f"{self.member}: {private} and {shared} must both be directories, or "
                        f"'ip netns exec {self.target}' would write the host's {shared} "
                        "(or give mount=FILE in the inventory)")
        return None


@dataclass
class DryRun(Transport):
    """Prints what the real transport would run; every command 'succeeds' silently."""

    real: Transport
    stream: TextIO
    printed: list[str] = field(default_factory=list)
    dry_run = True

    def __post_init__(self) -> None:
        self.member = self.real.member
        self.target = self.real.target
        self.private_run = self.real.private_run

    def argv(self, command: str) -> list[str]:
        return self.real.argv(command)

    def describe(self) -> str:
        return self.real.describe()

    def run(self, command: str, *, input: str | None = None, timeout: float = 60.0) -> Result:
        argv = self.argv(command)
        line = shlex.join(argv)
        size = None if input is None else len(input.encode())
        if size is not None:
            line += f"  <<< ({size} bytes)"
        self.printed.append(line)
        if isinstance(self.stream, PlanRecorder):
            self.stream.command(self.member, argv, command, size)
        else:
            self.stream.write(line + "\n")
        return Result(0, "", "")


class PlanRecorder:
    """The dry run as data (`fwc install --dry-run --format json`).

    Given as the DryRun's stream and as the install's output, it receives both the
    commands (`command`) and the notes the install says (`# member: text` lines), in
    the order they would happen. Only sizes of what travels on stdin are kept: the
    files may hold secrets.
    """

    def __init__(self) -> None:
        self.steps: dict[str, list[dict[str, object]]] = {}
        self.notes: list[str] = []
        self._partial = ""

    def command(self, member: str, argv: list[str], command: str, size: int | None) -> None:
        step: dict[str, object] = {"run": argv, "script": command}
        if size is not None:
            step["stdin_bytes"] = size
        self.steps.setdefault(member, []).append(step)

    def write(self, text: str) -> int:
        self._partial += text
        *lines, self._partial = self._partial.split("\n")
        for line in lines:
            note = line.removeprefix("# ")
            who, sep, what = note.partition(": ")
            if sep and not who.startswith("cluster ") and " " not in who:
                self.steps.setdefault(who, []).append({"note": what})
            elif note:
                self.notes.append(note)
        return len(text)

    def flush(self) -> None:
        pass


# An inventory holds a line per member: this stops `--inventory /dev/zero` long before
# the memory runs out (read whole, it ended in a MemoryError traceback).
MAX_INVENTORY_BYTES = 1024 * 1024


@dataclass(frozen=True)
class InventoryEntry:
    target: str
    options: dict[str, str]


def read_inventory(path: Path) -> dict[str, InventoryEntry]:
    """`MEMBER TARGET [key=value...]` per line; `#` starts a comment.

    TARGET is an ssh destination (user@host) or, for the netns transport, a
    namespace name; `mount=FILE` names a persistent mount namespace for it.
    """
    try:
        with path.open("rb") as stream:
            info = os.fstat(stream.fileno())
            data = stream.read(MAX_INVENTORY_BYTES + 1)
    except OSError as exc:
        raise InventoryError(f"cannot read inventory {path}: {exc.strerror}") from exc
    # It says where install sends the files (and the VRRP password) and, for netns,
    # which mount namespace the commands run in as root: as for fwc.toml (FWC033),
    # another user must not be able to choose that.
    if info.st_uid not in (0, os.geteuid()):
        raise InventoryError(f"inventory {path} is owned by another user: own it yourself "
                             "(or root)")
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise InventoryError(f"inventory {path} may be written by other users (group or "
                             "world writable): chmod go-w it")
    if len(data) > MAX_INVENTORY_BYTES:
        raise InventoryError(f"inventory {path} is larger than "
                             f"{MAX_INVENTORY_BYTES // 1024 // 1024} MiB")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InventoryError(f"cannot read inventory {path}: not UTF-8") from exc
    entries: dict[str, InventoryEntry] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        words = raw.split("#", 1)[0].split()
        if not words:
            continue
        if len(words) < 2:
            raise InventoryError(f"{path}:{number}: expected 'MEMBER TARGET [key=value...]'")
        options: dict[str, str] = {}
        for word in words[2:]:
            key, sep, value = word.partition("=")
            if not sep or not value:
                raise InventoryError(f"{path}:{number}: expected key=value, got {word!r}")
            options[key] = value
        if words[0] in entries:
            raise InventoryError(f"{path}:{number}: member {words[0]!r} listed twice")
        entries[words[0]] = InventoryEntry(words[1], options)
    return entries


def make_transport(kind: str, member: str, *, ssh_target: str | None,
                   inventory: dict[str, InventoryEntry], ssh: str = "ssh") -> Transport:
    """The transport for MEMBER; raises InventoryError when its target is unknown."""
    entry = inventory.get(member)
    if kind == "local":
        return LocalTransport(member)
    if kind == "netns":
        target = entry.target if entry else member
        return NetnsTransport(member, target, entry.options.get("mount") if entry else None)
    target = entry.target if entry else ssh_target
    if not target:
        raise InventoryError(
            f"no ssh host for member {member}: add ssh \"root@host\" to the member "
            "or a line to --inventory")
    return SshTransport(member, target, ssh)
