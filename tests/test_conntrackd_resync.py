"""A restarted conntrackd gets its peer's states back on its own, and a hung one cannot
hold the notify script (root; runs in CI).

Two network namespaces joined on the sync link (eth2, 203.0.113.1 and .2, as in
policies/edge.fw), each running the real conntrackd with the compiled
conntrackd.conf of its member (lock file and control socket moved into the test's
directory: the defaults are shared by every namespace). A connection is put into
fw1's kernel table; fw2's external cache holds it. fw2's daemon is then restarted,
as `Restart=on-failure` or a package upgrade would: with `StartupResync On` it asks
fw1 for every state and holds the connection again without anyone running
`conntrackd -n` (without it: 0 entries three seconds later, measured). The
namespaces and both daemons (by their PIDs) are gone at the end.

The notify test stops fw1's daemon (SIGSTOP): its client then waits for ever, and the
generated fwc-notify.sh must still end, its steps skipped and said in its log.

The crash tests kill fw1's daemon with SIGKILL (the OOM killer, a segfault) and start it
again as its systemd unit would, the commands of the compiled conntrackd drop-in
(ExecStartPre, ExecStartPost) run around the start: the lock file a killed daemon
leaves must not keep it from coming back, and what it finds in the kernel table at its
start must reach the peer.
"""

from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from conftest import REPO, skip_or_fail_without_root

from fwc import protocols as proto
from fwc.backend.output import compile_policy
from fwc.pipeline import analyse

FLOW = ["-p", "tcp", "-s", "198.18.20.50", "-d", "198.18.21.80", "--sport", "40000",
        "--dport", "443"]
# A connection made while fw1's daemon was dead.
LATE_FLOW = ["-p", "tcp", "-s", "198.18.20.51", "-d", "198.18.21.80", "--sport", "40001",
             "--dport", "443"]


@contextmanager
def pair(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """fw1 and fw2's namespaces, eth2 between them with the sync addresses."""
    prefix = f"fwcrs{os.getpid()}"
    names = (f"{prefix}a", f"{prefix}b")
    try:
        for name in names:
            subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
        subprocess.run(["ip", "link", "add", "eth2", "netns", names[0], "type", "veth",
                        "peer", "name", "eth2", "netns", names[1]], check=True,
                       capture_output=True)
        for name, address in zip(names, ("203.0.113.1/24", "203.0.113.2/24"), strict=True):
            for argv in (["addr", "add", address, "dev", "eth2"],
                         ["link", "set", "eth2", "up"], ["link", "set", "lo", "up"]):
                subprocess.run(["ip", "-n", name, *argv], check=True, capture_output=True)
        yield names
    finally:
        for name in names:
            subprocess.run(["ip", "netns", "del", name], capture_output=True)


def _in(ns: str, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", "netns", "exec", ns, *argv], capture_output=True,
                          text=True, timeout=30)


def _start(ns: str, config: Path) -> int:
    """conntrackd in NS, in the foreground of a child we keep: its PID."""
    proc = subprocess.Popen(["ip", "netns", "exec", ns, "conntrackd", "-C", str(config)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while _in(ns, "conntrackd", "-C", str(config), "-s").returncode != 0:
        assert proc.poll() is None, "conntrackd did not start"
        assert time.monotonic() < deadline, "conntrackd did not answer"
        time.sleep(0.1)
    return proc.pid


def _stop(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGCONT)  # a stopped daemon acts on SIGTERM only once resumed
        os.kill(pid, signal.SIGTERM)
        os.waitpid(pid, 0)
    except (ProcessLookupError, ChildProcessError):
        pass


def _kill(pid: int) -> None:
    """SIGKILL: the daemon gets no chance to clean up, as after a crash or the OOM killer."""
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)


def _external(ns: str, config: Path, flow: list[str] = FLOW) -> int:
    listed = _in(ns, "conntrackd", "-C", str(config), "-e").stdout
    return listed.count(f"src={flow[flow.index('-s') + 1]} ")


def _wait_for(ns: str, config: Path, want: int, seconds: float,
              flow: list[str] = FLOW) -> int:
    deadline = time.monotonic() + seconds
    got = _external(ns, config, flow)
    while got != want and time.monotonic() < deadline:
        time.sleep(0.2)
        got = _external(ns, config, flow)
    return got


def _add(ns: str, flow: list[str]) -> None:
    added = _in(ns, "conntrack", "-I", *flow, "--state", "ESTABLISHED", "-t", "3600", "-u",
                "SEEN_REPLY,ASSURED")
    assert added.returncode == 0, added.stderr


def test_a_restarted_conntrackd_asks_its_peer_for_every_state(tmp_path):
    skip_or_fail_without_root()
    files, configs = _configs(tmp_path)
    assert all("StartupResync On" in files[f"{m}/conntrackd.conf"] for m in ("fw1", "fw2"))
    pids: list[int] = []
    with pair(tmp_path) as (fw1, fw2):
        try:
            pids.append(_start(fw1, configs[0]))
            pids.append(_start(fw2, configs[1]))
            _add(fw1, FLOW)
            assert _wait_for(fw2, configs[1], 1, 10) == 1  # replicated as it was made
            _stop(pids.pop())
            pids.append(_start(fw2, configs[1]))
            # Nothing changes on fw1 from here on: only the start-up resync brings it.
            assert _wait_for(fw2, configs[1], 1, 10) == 1
        finally:
            for pid in pids:
                _stop(pid)


def _configs(tmp_path: Path, sync_tuning: str = "",
             purge_timeout: int | None = None) -> tuple[dict[str, str], list[Path]]:
    """The compiled files of policies/edge.fw (SYNC_TUNING added to its sync block), and
    each member's conntrackd.conf with its lock file and control socket in the test's
    directory (and PURGE_TIMEOUT, when given, as its PurgeTimeout)."""
    path = REPO / "policies" / "edge.fw"
    if sync_tuning:
        text = path.read_text()
        assert text.count("port 3780 }") == 1
        path = tmp_path / "edge.fw"
        path.write_text(text.replace("port 3780 }", f"port 3780  {sync_tuning} }}"))
    policy = analyse(path).policy
    assert policy is not None
    files = {f.path: f.content.decode() for f in compile_policy(policy)[0].files}
    configs = []
    purge = f"PurgeTimeout {proto.CONNTRACKD_PURGE_TIMEOUT}"
    for member in ("fw1", "fw2"):
        own = tmp_path / member
        own.mkdir()
        text = (files[f"{member}/conntrackd.conf"]
                .replace("/var/lock/conntrackd.lock", str(own / "lock"))
                .replace("/var/run/conntrackd.ctl", str(own / "ctl")))
        if purge_timeout is not None:
            assert purge in text
            text = text.replace(purge, f"PurgeTimeout {purge_timeout}")
        (own / "conntrackd.conf").write_text(text)
        configs.append(own / "conntrackd.conf")
    return files, configs


def _notify_script(tmp_path: Path, files: dict[str, str], member: str, config: Path,
                   timeout_s: int = proto.NOTIFY_CONNTRACKD_TIMEOUT_S) \
        -> tuple[Path, dict[str, str], Path]:
    """MEMBER's compiled fwc-notify.sh aimed at CONFIG (its conntrack calls waiting at
    most TIMEOUT_S), the environment to run it in (its logger writes to a file, not to
    the host's log) and that file."""
    script = files[f"{member}/fwc-notify.sh"]
    log = tmp_path / f"{member}-notify.log"
    bin_dir = tmp_path / f"{member}-bin"
    bin_dir.mkdir()
    (bin_dir / "logger").write_text(f'#!/bin/sh\necho "$*" >> {log}\n')
    (bin_dir / "logger").chmod(0o755)
    limit = f"CT_TIMEOUT={proto.NOTIFY_CONNTRACKD_TIMEOUT_S}\n"
    assert limit in script
    text = (script.replace("CONFIG=/etc/conntrackd/conntrackd.conf", f"CONFIG={config}")
            .replace("/run/fwc-notify.lock", str(tmp_path / f"{member}-notify.lock"))
            .replace("/run/systemd/system", str(tmp_path / "no-systemd"))
            .replace("LOCKFILE=/var/lock/conntrackd.lock", f"LOCKFILE={config.parent}/lock")
            .replace(limit, f"CT_TIMEOUT={timeout_s}\n"))
    path = tmp_path / f"{member}-fwc-notify.sh"
    path.write_text(text)
    return path, {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}, log


def test_a_stopped_conntrackd_cannot_hold_the_notify_script(tmp_path):
    skip_or_fail_without_root()
    files, configs = _configs(tmp_path)
    script, env, log = _notify_script(tmp_path, files, "fw1", configs[0], timeout_s=2)
    with pair(tmp_path) as (fw1, _fw2):
        pid = _start(fw1, configs[0])
        try:
            os.kill(pid, signal.SIGSTOP)
            # the real client of a stopped daemon: connected, and no answer ever
            with pytest.raises(subprocess.TimeoutExpired):
                subprocess.run(["ip", "netns", "exec", fw1, "conntrackd", "-C",
                                str(configs[0]), "-s"], capture_output=True, timeout=3)
            start = time.monotonic()
            done = subprocess.run(["ip", "netns", "exec", fw1, "sh",
                                   str(script), "primary"], env=env,
                                  capture_output=True, text=True, timeout=60)
            took = time.monotonic() - start
        finally:
            _stop(pid)
    assert done.returncode == 0, done.stderr
    assert took < 15, took
    logged = log.read_text()
    assert "conntrackd did not answer within 2 s" in logged
    assert "conntrackd -c skipped" in logged and "conntrackd -B skipped" in logged


def _unit_commands(files: dict[str, str], member: str, config: Path,
                   key: str) -> list[list[str]]:
    """The KEY= commands (ExecStartPre, ExecStartPost) of MEMBER's compiled conntrackd
    drop-in, aimed at the test's config and lock file; systemd's `-` (a failure is
    ignored) dropped."""
    text = (files[f"{member}/conntrackd-systemd.conf"]
            .replace("/etc/conntrackd/conntrackd.conf", str(config))
            .replace(proto.NODE_CONNTRACKD_LOCK, str(config.parent / "lock")))
    return [shlex.split(line.partition("=")[2].lstrip("-"))
            for line in text.splitlines() if line.startswith(f"{key}=")]


def _start_as_unit(ns: str, files: dict[str, str], member: str, config: Path) -> int:
    """Start conntrackd in NS as systemd starts its unit: ExecStartPre, ExecStart (the
    daemon answering, as Type=notify waits for), ExecStartPost. The daemon's PID."""
    for argv in _unit_commands(files, member, config, "ExecStartPre"):
        _in(ns, *argv)
    pid = _start(ns, config)
    for argv in _unit_commands(files, member, config, "ExecStartPost"):
        _in(ns, *argv)
    return pid


def test_a_killed_conntrackd_starts_again_under_its_unit(tmp_path):
    """A daemon killed with SIGKILL leaves its lock file; a new one then refuses to start
    ("lockfile ... exists"), so Debian's Restart=on-failure, and the notify script's
    `systemctl start conntrackd`, failed until the next reboot: no replication, and every
    connection lost at the next failover."""
    skip_or_fail_without_root()
    files, configs = _configs(tmp_path)
    with pair(tmp_path) as (fw1, _fw2):
        pids = [_start(fw1, configs[0])]
        try:
            _kill(pids.pop())
            assert (configs[0].parent / "lock").exists()  # what the killed daemon left
            pids.append(_start_as_unit(fw1, files, "fw1", configs[0]))
        finally:
            for pid in pids:
                _stop(pid)


def test_a_restarted_conntrackd_gives_its_peer_what_it_found_in_the_kernel(tmp_path):
    """The master's daemon restarted (after a crash): at its start it reads the kernel
    table, connections made while it was down included, but sends them to nobody
    (StartupResync only asks the peer for *its* states), so the backup never learnt of
    them and lost them at the next failover (measured: none after 4 s)."""
    skip_or_fail_without_root()
    files, configs = _configs(tmp_path)
    pids: list[int] = []
    with pair(tmp_path) as (fw1, fw2):
        try:
            pids.append(_start(fw1, configs[0]))
            pids.append(_start(fw2, configs[1]))
            _add(fw1, FLOW)
            assert _wait_for(fw2, configs[1], 1, 10) == 1
            _kill(pids.pop(0))
            _add(fw1, LATE_FLOW)
            pids.append(_start_as_unit(fw1, files, "fw1", configs[0]))
            assert _wait_for(fw2, configs[1], 1, 10, LATE_FLOW) == 1
            assert _external(fw2, configs[1]) == 1  # and the old one is still there
        finally:
            for pid in pids:
                _stop(pid)


def _watchdog_pings(sock: socket.socket, seconds: float) -> int:
    """WATCHDOG=1 messages SOCK (a daemon's NOTIFY_SOCKET) gets within SECONDS."""
    pings = 0
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            message = sock.recv(4096)
        except TimeoutError:
            break
        pings += b"WATCHDOG=1" in message.split(b"\n")
    return pings


def test_a_hung_conntrackd_stops_pinging_its_watchdog(tmp_path):
    """What the drop-in's WatchdogSec relies on: the real daemon, given systemd's
    watchdog variables and a notify socket of the test's own, pings while its event
    loop runs and stops when the daemon hangs (SIGSTOP), so systemd would kill it and
    Restart= bring it back; it pings again once resumed."""
    skip_or_fail_without_root()
    _, configs = _configs(tmp_path)
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock, pair(tmp_path) as (fw1, _):
        sock.bind(str(path))
        # WATCHDOG_PID must be the daemon's: the shell's, which `exec` hands on.
        script = (f"export NOTIFY_SOCKET={shlex.quote(str(path))} WATCHDOG_USEC=1000000 "
                  f"WATCHDOG_PID=$$; exec conntrackd -C {shlex.quote(str(configs[0]))}")
        proc = subprocess.Popen(["ip", "netns", "exec", fw1, "sh", "-c", script],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            alive = _watchdog_pings(sock, 3.0)
            os.kill(proc.pid, signal.SIGSTOP)
            _watchdog_pings(sock, 0.2)  # (a ping sent as it stopped)
            hung = _watchdog_pings(sock, 3.0)
            os.kill(proc.pid, signal.SIGCONT)
            resumed = _watchdog_pings(sock, 3.0)
        finally:
            _stop(proc.pid)
    assert alive >= 2, alive
    assert hung == 0, hung
    assert resumed >= 1, resumed


def _in_kernel(ns: str, flow: list[str] = FLOW) -> int:
    """How many entries of FLOW NS's kernel table holds."""
    source = flow[flow.index("-s") + 1]
    listed = _in(ns, "conntrack", "-L", "-s", source)
    return sum(f"src={source} " in line for line in listed.stdout.splitlines())


def test_external_cache_off_keeps_the_replica_in_the_backups_kernel(tmp_path):
    """`external-cache off` (DisableExternalCache On): conntrackd writes the peer's states
    into the backup's kernel table, which is then the only replica. The notify script's
    `backup` step ran `conntrackd -t` as primary-backup.sh does, and PurgeTimeout later
    conntrackd deleted every entry its filter replicates, the peer's too: the backup's
    kernel held none, and the failover after that lost every connection older than the
    purge (measured with the compiled PurgeTimeout 60: 1 entry before, 0 after, 0 after
    the `primary` step). The purge waits 2 s here instead of 60."""
    skip_or_fail_without_root()
    files, configs = _configs(tmp_path, "external-cache off", purge_timeout=2)
    assert all("DisableExternalCache On" in files[f"{m}/conntrackd.conf"]
               for m in ("fw1", "fw2"))
    script, env, log = _notify_script(tmp_path, files, "fw2", configs[1])
    pids: list[int] = []
    with pair(tmp_path) as (fw1, fw2):
        try:
            pids.append(_start(fw1, configs[0]))
            pids.append(_start(fw2, configs[1]))
            for state in ("backup", "fault", "backup"):  # keepalived's start, a link flap
                ran = _in(fw2, "env", f"PATH={env['PATH']}", "sh", str(script), state)
                assert ran.returncode == 0, ran.stderr
            _add(fw1, FLOW)
            deadline = time.monotonic() + 10
            while _in_kernel(fw2) != 1 and time.monotonic() < deadline:
                time.sleep(0.2)
            assert _in_kernel(fw2) == 1  # injected as it was made
            time.sleep(2 + 3)  # PurgeTimeout, and the flush's time
            assert _in_kernel(fw2) == 1, log.read_text()
            ran = _in(fw2, "env", f"PATH={env['PATH']}", "sh", str(script), "primary")
            assert ran.returncode == 0, ran.stderr
            assert _in_kernel(fw2) == 1, log.read_text()  # what the new master forwards with
        finally:
            for pid in pids:
                _stop(pid)
    assert "conntrackd -t" not in log.read_text()


def _busy_states() -> str:
    """The `states` line of policies/busy.fw, the example that tunes them."""
    text = (REPO / "policies" / "busy.fw").read_text()
    return next(line.strip() for line in text.splitlines() if line.strip().startswith("states "))


def _left_after_a_reset(tmp_path: Path, states: str) -> tuple[int, list[str]]:
    """Replicate FLOW with STATES, reset it (CLOSE, as an RST does) and destroy it on fw1:
    how many entries of it fw2's external cache still holds, and FWC280's findings."""
    files, configs = _configs(tmp_path, f"protocols tcp  {states}")
    policy = analyse(tmp_path / "edge.fw")
    pids: list[int] = []
    with pair(tmp_path) as (fw1, fw2):
        try:
            pids.append(_start(fw1, configs[0]))
            pids.append(_start(fw2, configs[1]))
            _add(fw1, FLOW)
            assert _wait_for(fw2, configs[1], 1, 10) == 1
            for argv in (["-U", *FLOW, "--state", "CLOSE"], ["-D", *FLOW]):
                done = _in(fw1, "conntrack", *argv)
                assert done.returncode == 0, done.stderr
            return (_wait_for(fw2, configs[1], 0, 5),
                    [d.message for d in policy.diagnostics if d.code == "FWC280"])
        finally:
            for pid in pids:
                _stop(pid)


def test_replicated_states_keep_the_end_of_a_connection(tmp_path):
    """With `states` the end of a connection is replicated only when the state it ends in
    is listed: busy.fw left `close` out, so every reset connection stayed in the peer's
    external cache (FTFW's has no timeout) and was committed at the next failover as a
    live ESTABLISHED connection with its replicated timeout (measured). FWC280 says so;
    busy.fw's list now ends the connection on the peer too."""
    skip_or_fail_without_root()
    assert _busy_states().endswith(", close")
    (tmp_path / "busy").mkdir()
    left, found = _left_after_a_reset(tmp_path / "busy", _busy_states())
    assert (left, found) == (0, [])
    (tmp_path / "open").mkdir()
    left, found = _left_after_a_reset(tmp_path / "open", _busy_states().removesuffix(", close"))
    assert left == 1  # what FWC280 warns of
    assert len(found) == 1 and "leaves out close" in found[0]
