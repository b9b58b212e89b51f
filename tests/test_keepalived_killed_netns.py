"""A keepalived killed on the master leaves no VIPs behind (root; runs in CI).

keepalived removes its VIPs when it stops. Killed with SIGKILL (`systemctl kill -s
KILL`, the OOM killer taking the whole unit) it cannot: the addresses stay on the
interfaces, the backup takes them over three adverts later, and both nodes answer
ARP and neighbour solicitations for the same VIPs for as long as keepalived stays
dead (Debian's unit does not restart it). The compiled keepalived drop-in therefore
removes the member's VIPs when the unit stops (ExecStopPost) and restarts keepalived
(Restart=on-failure; a starting keepalived removes leftover VIPs itself).

One network namespace holds fw1's devices of policies/edge.fw (eth0 with an IPv4
and an IPv6 VIP, eth1) and the real keepalived with fw1's compiled keepalived.conf
(its notify script replaced by /bin/true: this test is about the addresses). Alone
on its segments it becomes master; both its processes are then killed with SIGKILL,
and the drop-in's ExecStopPost commands are run as systemd runs them. The daemon (by
its PIDs) and the namespace are gone at the end.
"""

from __future__ import annotations

import configparser
import os
import shlex
import signal
import subprocess
import time

from conftest import edge_files, node_namespace, skip_or_fail_without_root

ADDRESSES = {"eth0": ("192.0.2.1/24", "2001:db8:1::1/64"), "eth1": ("198.51.100.1/24",)}
VIPS = {"192.0.2.254/24", "2001:db8:1::fe/64", "198.51.100.254/24"}


def _addresses(ns: str) -> set[str]:
    shown = subprocess.run(["ip", "-n", ns, "-o", "addr", "show"], check=True,
                           capture_output=True, text=True).stdout
    return {line.split()[3] for line in shown.splitlines()
            if line.split()[2] in ("inet", "inet6")}


def _wait(ns: str, want: bool, seconds: float) -> set[str]:
    """The namespace's addresses once every VIP is there (WANT) or none is."""
    deadline = time.monotonic() + seconds
    while True:
        held = _addresses(ns)
        if (held >= VIPS if want else not VIPS & held) or time.monotonic() > deadline:
            return held
        time.sleep(0.1)


def _kill(pids: list[int]) -> None:
    """SIGKILL both processes: the parent stopped first, so that it neither respawns the
    VRRP child nor, dying, has it shut down cleanly (the child's parent-death signal)."""
    os.kill(pids[0], signal.SIGSTOP)
    for pid in reversed(pids):
        os.kill(pid, signal.SIGKILL)
    os.waitpid(pids[0], 0)


def _stop_post(dropin: str) -> list[list[str]]:
    """The drop-in's ExecStopPost commands, systemd's `-` (failure ignored) dropped."""
    return [shlex.split(line.partition("=")[2].lstrip("-"))
            for line in dropin.splitlines() if line.startswith("ExecStopPost=")]


def test_a_killed_keepalived_leaves_no_vips_behind(tmp_path):
    skip_or_fail_without_root()
    files = edge_files()
    config = tmp_path / "keepalived.conf"
    config.write_text(files["fw1/keepalived.conf"].replace("/etc/fwc/fwc-notify.sh",
                                                            "/bin/true"))
    dropin = files["fw1/keepalived-systemd.conf"]
    with node_namespace("fwcka", ADDRESSES) as ns:
        proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, "keepalived", "-n", "-l", "-D", "-f", str(config),
             "-p", str(tmp_path / "keepalived.pid"), "-r", str(tmp_path / "vrrp.pid"),
             "-c", str(tmp_path / "checkers.pid")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        pids = [proc.pid]
        try:
            assert _wait(ns, True, 20) >= VIPS, "keepalived did not become master"
            pids.append(int((tmp_path / "vrrp.pid").read_text()))
            _kill(pids)
            pids = []
            assert _addresses(ns) >= VIPS  # what a killed keepalived leaves
            for argv in _stop_post(dropin):
                subprocess.run(["ip", "netns", "exec", ns, *argv], capture_output=True,
                               timeout=30)
            held = _wait(ns, False, 2)
            assert not VIPS & held, f"left on the interfaces: {sorted(VIPS & held)}"
            # the node's own addresses stay
            assert {a for addresses in ADDRESSES.values() for a in addresses} <= held
        finally:
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGCONT)
                    os.kill(pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
            proc.wait(timeout=30)


def test_keepalived_is_restarted_after_a_failure():
    """A restarted keepalived starts as BACKUP and removes the VIPs it finds left first
    (keepalived 2.2.7 logs "removing VIPs" at its start): the member rejoins the pair."""
    for member in ("fw1", "fw2"):
        unit = configparser.ConfigParser(strict=False)
        unit.read_string(edge_files()[f"{member}/keepalived-systemd.conf"])
        assert unit["Service"]["Restart"] == "on-failure"
