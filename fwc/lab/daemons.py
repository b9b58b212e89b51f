"""One firewall member in the lab: private mount namespace, rules, daemons.

The compiled configs refer to stock node paths (docs/contracts.md). Every
member therefore gets a *persistent* private mount namespace (docs/ha-pitfalls.md,
"Several daemons on one machine": ``ip netns exec`` would forget mounts between calls) in which /etc
is an overlay with a per-node upper directory and /run is a private tmpfs.
keepalived's pid files, conntrackd's lock file and UNIX socket and the notify
lock then cannot collide between members (same page), and the generated
files run unchanged. The member is reached through the install code's
`NetnsTransport` on that mount namespace: `fwc install` puts the files in
place (fwc/lab/running.py), and every command the lab runs in the member
enters it the same way.
"""

from __future__ import annotations

import ipaddress
import json
import re
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from fwc.backend.files import FILES, Reload, path_of
from fwc.install import scripts
from fwc.install.transport import NetnsTransport
from fwc.lab.filters import PacketFilter
from fwc.lab.netns import (
    PYTHON,
    LabError,
    LabState,
    Proc,
    await_line,
    log_size,
    netns_pids,
    run,
)
from fwc.lab.topology import IPInterface

# Where the daemons' configurations and the boot script live on a node: the table
# of generated files says (the boot script is the row read only at boot).
KEEPALIVED_CONF = path_of("keepalived.conf")
CONNTRACKD_CONF = path_of("conntrackd.conf")
BOOT_SCRIPT = next(f for f in FILES if f.reload is Reload.BOOT)
# The policy's routes: its unit runs the script once the network is up.
ROUTES_SCRIPT = next(f for f in FILES if f.reload is Reload.ROUTES)
SYSLOG = "/run/fwc-lab/syslog.log"
FORWARDING_KEYS = ("net.ipv4.ip_forward", "net.ipv6.conf.all.forwarding")

# There is no /dev/log in the lab, so `logger` in the notify hook would lose
# its lines. Inside each member this stand-in is bind-mounted over
# /usr/bin/logger and appends to a per-node file the lab can read back.
LOGGER_SHIM = """#!/bin/sh
tag=logger
while [ $# -gt 0 ]; do
    case "$1" in
        -t) tag=$2; shift 2 ;;
        -p|-n|-P|-u) shift 2 ;;
        --) shift; break ;;
        -*) shift ;;
        *) break ;;
    esac
done
printf '%s %s: %s\\n' "$(date +%s.%N)" "$tag" "$*" >> /run/fwc-lab/syslog.log
"""
# For the control run: conntrackd must not be restartable by a notify hook.
CONNTRACKD_STUB = """#!/bin/sh
echo "conntrackd disabled by the fwc lab control run" >&2
exit 1
"""


class Node:
    """A member namespace plus its persistent mount namespace and daemons."""

    def __init__(
        self,
        state: LabState,
        name: str,
        ns: str,
        devices: Sequence[str],
        vips: Sequence[IPInterface],
        logdir: Path,
        packet_filter: PacketFilter,
    ) -> None:
        self.state = state
        # How the drills wipe, list and change this member's packet filter (its backend).
        self.packet_filter = packet_filter
        self.name = name
        self.ns = ns
        self.devices = list(devices)
        self.vips = list(vips)
        self.logdir = logdir
        self.root = state.dir / "nodes" / name
        self.mntfile = state.dir / "mnt" / name
        # How fwc install (and every command of the lab) reaches this member.
        self.transport = NetnsTransport(name, ns, mount=str(self.mntfile))
        self.daemons: dict[str, Proc] = {}
        self.helpers: list[Proc] = []
        self.conntrackd_enabled = True
        self.last_conntrack = ""
        self.routes: list[list[str]] = []  # `ip` route arguments to restore after a crash
        # device -> addresses as compiled; IPv6 ones vanish when a link goes down
        # (keep_addr_on_down=0), so a restored member gets them back.
        self.link_addresses: dict[str, list[str]] = {}

    # ------------------------------------------------------------ execution
    def argv(self, cmd: Sequence[str]) -> list[str]:
        return self.transport.enter(cmd)

    def exec(
        self,
        cmd: Sequence[str],
        *,
        check: bool = True,
        input: str | None = None,
        timeout: float = 30,
    ) -> subprocess.CompletedProcess[str]:
        return run(self.argv(cmd), check=check, input=input, timeout=timeout)

    def write(self, path: str, content: str, mode: int) -> None:
        """PATH on the node, written as fwc install writes a file (through the transport)."""
        result = self.transport.run(scripts.write(path, mode), input=content, timeout=30)
        if not result.ok:
            raise LabError(f"{self.name}: cannot write {path}: {result.reason()}")

    # ------------------------------------------------------------ set-up
    def create_mount_ns(self) -> None:
        """Persistent private mount namespace with private /etc overlay, /run and /sys."""
        mnt_dir = self.state.dir / "mnt"
        if str(mnt_dir) not in self.state.bind_mounts:
            mnt_dir.mkdir(parents=True, exist_ok=True)
            # unshare --mount=FILE needs FILE on a private mount.
            self.state.bind_mounts.append(str(mnt_dir))
            self.state.save()
            run(["mount", "--bind", str(mnt_dir), str(mnt_dir)])
            run(["mount", "--make-private", str(mnt_dir)])
        upper, work = self.root / "upper", self.root / "work"
        upper.mkdir(parents=True, exist_ok=True)
        work.mkdir(parents=True, exist_ok=True)
        self.mntfile.touch()
        self.state.ns_mounts.append(str(self.mntfile))
        self.state.save()
        run(["unshare", f"--mount={self.mntfile}", "--propagation", "private", "true"])
        # nsenter --net alone keeps the host's /sys: mount one for this netns.
        script = (
            "set -e; mount -t sysfs sysfs /sys; "
            f"mount -t overlay overlay -o lowerdir=/etc,upperdir={upper},workdir={work} /etc; "
            "mount -t tmpfs -o mode=0755 tmpfs /run; mkdir -p /run/lock /run/fwc-lab"
        )
        self.exec(["sh", "-c", script])
        self.write("/etc/fwc-lab/logger", LOGGER_SHIM, 0o755)
        self.write("/etc/fwc-lab/conntrackd-off", CONNTRACKD_STUB, 0o755)
        self.exec(["mount", "--bind", "/etc/fwc-lab/logger", "/usr/bin/logger"])

    def sysctl(self, key: str, value: str) -> None:
        self.exec(["sysctl", "-qw", f"{key}={value}"])

    # ------------------------------------------------------------ daemons
    def _conntrackd_paths(self) -> tuple[str, str]:
        text = self.exec(["cat", CONNTRACKD_CONF]).stdout
        lock = re.search(r"^\s*LockFile\s+(\S+)", text, re.M)
        sock = re.search(r"UNIX\s*\{[^}]*?Path\s+(\S+)", text, re.S)
        return (
            lock.group(1) if lock else "/var/lock/conntrackd.lock",
            sock.group(1) if sock else "",
        )

    def start_conntrackd(self, timeout: float = 8.0) -> None:
        if not self.conntrackd_enabled:
            return
        log = self.logdir / f"{self.name}-conntrackd.log"
        self.daemons["conntrackd"] = self.state.spawn(
            f"{self.name}/conntrackd", self.argv(["conntrackd", "-C", CONNTRACKD_CONF]), log
        )
        # keepalived's first notify needs the UNIX socket (docs/ha-pitfalls.md).
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.ct(["-s"], check=False).returncode == 0:
                return
            if not self.daemons["conntrackd"].alive():
                break
            time.sleep(0.1)
        raise LabError(f"{self.name}: conntrackd did not come up; see {log}")

    def start_keepalived(self) -> None:
        log = self.logdir / f"{self.name}-keepalived.log"
        self.daemons["keepalived"] = self.state.spawn(
            f"{self.name}/keepalived",
            self.argv(["keepalived", "-n", "-l", "-D", "-f", KEEPALIVED_CONF]),
            log,
        )

    def start_listener(self, tcp: Sequence[int], udp: Sequence[int], probe_py: Path) -> None:
        if not tcp and not udp:
            return
        argv = [PYTHON, str(probe_py), "serve", "--tcp", *map(str, tcp), "--udp", *map(str, udp)]
        log = self.logdir / f"{self.name}-listener.log"
        offset = log_size(log)
        proc = self.state.spawn(f"{self.name}/listener", self.argv(argv), log)
        self.helpers.append(proc)
        await_line(proc, "serving", offset)

    def start(self) -> None:
        self.start_conntrackd()
        self.start_keepalived()

    def ct(self, args: Sequence[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.exec(["conntrackd", "-C", CONNTRACKD_CONF, *args], check=check, timeout=10)

    def stop_keepalived(self, timeout: float = 6.0) -> None:
        """Graceful stop (the peer takes over at once), SIGKILL if it hangs."""
        proc = self.daemons.pop("keepalived", None)
        if proc is None:
            return
        proc.signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while proc.alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        proc.signal(signal.SIGKILL)
        proc.reap()
        self.state.forget(proc)
        self.drop_vips()

    def stop_conntrackd(self) -> None:
        proc = self.daemons.pop("conntrackd", None)
        if proc is not None:
            proc.signal(signal.SIGKILL)
            proc.reap()
            self.state.forget(proc)
        self._clean_run_files()

    def disable_conntrackd(self) -> None:
        """Control run: no state sync, and nothing may start conntrackd again."""
        self.stop_conntrackd()
        self.conntrackd_enabled = False
        self.exec(["mount", "--bind", "/etc/fwc-lab/conntrackd-off", "/usr/sbin/conntrackd"])

    def enable_conntrackd(self) -> None:
        """Undo disable_conntrackd (the daemon itself is started by the caller)."""
        if not self.conntrackd_enabled:
            self.exec(["umount", "/usr/sbin/conntrackd"], check=False)
            self.conntrackd_enabled = True

    def crash(self) -> float:
        """Fail hard, like a crash: SIGSTOP, links down, SIGKILL. Returns the time."""
        pids = netns_pids(self.ns)
        for pid in pids:
            _kill(pid, signal.SIGSTOP)
        t_fail = time.monotonic()
        for dev in self.devices:
            run(["ip", "-n", self.ns, "link", "set", dev, "down"])
        for pid in pids:
            _kill(pid, signal.SIGKILL)
        for proc in [*self.daemons.values(), *self.helpers]:
            proc.reap(1.0)
            self.state.forget(proc)
        self.daemons.clear()
        self.helpers.clear()
        return t_fail

    def restore(self, listener: tuple[Sequence[int], Sequence[int], Path] | None = None) -> None:
        """Bring a crashed member back as if rebooted: no VIPs, empty tables, fresh /run."""
        self.drop_vips()
        self.exec(["conntrack", "-F"], check=False)
        self._clean_run_files()
        self.network_up()
        self.start()
        if listener is not None:
            self.start_listener(*listener)

    def network_up(self) -> None:
        """Links up with the compiled addresses and the routes, as the network brings them."""
        for dev in self.devices:
            run(["ip", "-n", self.ns, "link", "set", dev, "up"])
        for dev, addrs in self.link_addresses.items():
            for addr in addrs:
                extra = ["nodad"] if ":" in addr else []
                run(["ip", "-n", self.ns, "addr", "replace", addr, "dev", dev, *extra], check=False)
        # Link-down dropped the static routes through those links: the lab's come
        # back, and the policy's by its routes script, as its unit runs it once the
        # network is up (a member without routes has no script).
        for route in self.routes:
            run(["ip", "-n", self.ns, *route], check=False)
        path = ROUTES_SCRIPT.path
        self.exec(["sh", "-c", f"[ ! -e {path} ] || sh {path}"], check=False)

    def wipe(self) -> dict[str, object]:
        """After crash(): what a power loss leaves. Returns the state as measured afterwards.

        A fresh kernel has no VIPs, an empty conntrack table, no rules or
        ipsets (every chain ACCEPT), forwarding off (the kernel default) and
        an empty /run; the daemons died with crash().
        """
        self.drop_vips()
        self.exec(["conntrack", "-F"], check=False)
        self.exec(["conntrack", "-F", "expect"], check=False)
        for argv, stdin in self.packet_filter.wipe(self._listing):
            self.exec(list(argv), input=stdin)
        self.exec(["ipset", "destroy"], check=False)
        for key in FORWARDING_KEYS:
            self.exec(["sysctl", "-qw", f"{key}=0"], check=False)
        self._clean_run_files()
        self.exec(["rm", "-f", "/run/fwc-notify.lock"], check=False)
        rules = self.packet_filter.rules_left(self._listing)
        entries = self.exec(["conntrack", "-C"], check=False).stdout.strip()
        return {
            "processes": len(netns_pids(self.ns)),
            "vips": sorted(self.vips_held()),
            "rules": rules,
            "ipsets": len(self.exec(["ipset", "list", "-n"], check=False).stdout.split()),
            "conntrack_entries": int(entries) if entries.isdigit() else entries,
            "forwarding": {
                key: self.exec(["sysctl", "-n", key], check=False).stdout.strip()
                for key in FORWARDING_KEYS
            },
        }

    def _listing(self, cmd: Sequence[str]) -> str:
        return self.exec(cmd, check=False).stdout

    def boot(self) -> tuple[int, str, float, float]:
        """The compiled boot script, as fwc-firewall.service runs it: rc, stderr, wall times."""
        t0 = time.time()
        proc = self.exec(["sh", BOOT_SCRIPT.path], check=False)
        return proc.returncode, proc.stderr or "", t0, time.time()

    def _clean_run_files(self) -> None:
        lock, sock = self._conntrackd_paths()
        files = ["/run/keepalived.pid", "/run/vrrp.pid", "/run/checkers.pid", lock]
        if sock:
            files.append(sock)
        self.exec(["rm", "-f", *files], check=False)

    def drop_vips(self) -> None:
        held = self.addresses()
        for vip in self.vips:
            for dev, addrs in held.items():
                if vip.ip in {a.ip for a in addrs}:
                    run(["ip", "-n", self.ns, "addr", "del", str(vip), "dev", dev], check=False)

    # ------------------------------------------------------------ queries
    def addresses(self) -> dict[str, list[IPInterface]]:
        proc = run(["ip", "-n", self.ns, "-j", "addr", "show"], timeout=5)
        out: dict[str, list[IPInterface]] = {}
        for link in json.loads(proc.stdout or "[]"):
            out[link["ifname"]] = [
                ipaddress.ip_interface(f"{a['local']}/{a['prefixlen']}")
                for a in link.get("addr_info", [])
            ]
        return out

    def vips_held(self) -> set[str]:
        held = {a.ip for addrs in self.addresses().values() for a in addrs}
        return {str(v.ip) for v in self.vips if v.ip in held}

    def cache_counts(self) -> dict[str, int]:
        """conntrackd -s: current active connections in the internal/external cache."""
        proc = self.ct(["-s"], check=False)
        counts: dict[str, int] = {}
        section = ""
        for line in proc.stdout.splitlines():
            m = re.match(r"cache (internal|external):", line.strip())
            if m:
                section = m.group(1)
                continue
            m = re.search(r"current active connections:\s+(\d+)", line)
            if m and section and section not in counts:
                counts[section] = int(m.group(1))
        return counts

    def external_flows(self, port: int | None = None) -> list[str]:
        proc = self.ct(["-e"], check=False)
        lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
        if port is not None:
            lines = [ln for ln in lines if f"dport={port}" in ln]
        return lines

    def kernel_flows(self, port: int) -> list[str]:
        proc = self.exec(["conntrack", "-L", "-p", "tcp", "--dport", str(port)], check=False)
        self.last_conntrack = (proc.stdout + proc.stderr)[-600:]
        return [ln for ln in proc.stdout.splitlines() if ln.startswith("tcp")]

    def syslog(self) -> str:
        return self.exec(["cat", SYSLOG], check=False).stdout

    def save_logs(self) -> None:
        (self.logdir / f"{self.name}-notify.log").write_text(self.syslog())


def _kill(pid: int, sig: int) -> None:
    import contextlib
    import os

    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)

