"""Three members on one sync link: after the master dies, the third member holds the
connections the new master opens, with the mode FWC224 leaves to a cluster of three
(root; runs in CI).

Four network namespaces: a bridge and three members on it (eth2, 203.0.113.1-.3), each
running the real conntrackd with its compiled conntrackd.conf (lock file and control
socket moved into the test's directory). fw1, the master, replicates a burst of
connections; its daemon is then killed, and fw2, the next master, opens connections of
its own. fw3 must receive them: it would be the master after fw2's failure.

The control is the FTFW mode that FWC224 refuses with three members: conntrackd keeps
one expected sequence number for every sender, so fw3, whose number is still fw1's
(fw1 had sent the most), drops every message of fw2 as a replay and holds none of its
connections. It proves that the drill sees what the check is about. The namespaces and
the daemons (by their PIDs) are gone at the end.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from conftest import skip_or_fail_without_root

from fwc.backend.output import compile_policy
from fwc.pipeline import analyse

MEMBERS = ("fw1", "fw2", "fw3")

POLICY = """\
network lan 192.0.2.0/24

cluster tri {
    vrrp { password "s3cret"  vrid 51 }
    sync { link sync  mode MODE }
    interface lan  vip 192.0.2.254/24
    interface sync
    member fw1 priority 150 { lan eth0 192.0.2.1/24  sync eth2 203.0.113.1/24 }
    member fw2 priority 100 { lan eth0 192.0.2.2/24  sync eth2 203.0.113.2/24 }
    member fw3 priority 50  { lan eth0 192.0.2.3/24  sync eth2 203.0.113.3/24 }
}

policy tri {
    accept from lan to any service tcp/443
}
"""

# fw1's burst: enough messages to put its sequence numbers well ahead of fw2's (about
# one a second while idle), so that the FTFW control fails the same way every run.
BURST = 60
OPENED = 10


@contextmanager
def segment() -> Iterator[tuple[str, ...]]:
    """The three members' namespaces, their eth2 on one bridge (a switch namespace)."""
    prefix = f"fwccm{os.getpid()}"
    switch = f"{prefix}s"
    names = tuple(f"{prefix}{m}" for m in MEMBERS)
    made: list[str] = []
    try:
        for name in (switch, *names):
            subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
            made.append(name)
        for argv in (["link", "add", "br0", "type", "bridge"], ["link", "set", "br0", "up"]):
            subprocess.run(["ip", "-n", switch, *argv], check=True, capture_output=True)
        for index, name in enumerate(names, 1):
            port = f"p{index}"
            subprocess.run(["ip", "link", "add", "eth2", "netns", name, "type", "veth", "peer",
                            "name", port, "netns", switch], check=True, capture_output=True)
            for ns, argv in ((switch, ["link", "set", port, "master", "br0"]),
                             (switch, ["link", "set", port, "up"]),
                             (name, ["addr", "add", f"203.0.113.{index}/24", "dev", "eth2"]),
                             (name, ["link", "set", "eth2", "up"]),
                             (name, ["link", "set", "lo", "up"])):
                subprocess.run(["ip", "-n", ns, *argv], check=True, capture_output=True)
        yield names
    finally:
        for name in made:
            subprocess.run(["ip", "netns", "del", name], capture_output=True)


def _in(ns: str, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", "netns", "exec", ns, *argv], capture_output=True,
                          text=True, timeout=30)


def _configs(tmp_path: Path, mode: str) -> list[Path]:
    """Each member's compiled conntrackd.conf, its lock file and socket in TMP_PATH."""
    path = tmp_path / "tri.fw"
    path.write_text(POLICY.replace("MODE", mode))
    policy = analyse(path).policy
    assert policy is not None
    files = {f.path: f.content.decode() for f in compile_policy(policy)[0].files}
    configs = []
    for member in MEMBERS:
        own = tmp_path / member
        own.mkdir()
        text = files[f"{member}/conntrackd.conf"]
        assert f"Mode {mode.upper()} " in text
        (own / "conntrackd.conf").write_text(
            text.replace("/var/lock/conntrackd.lock", str(own / "lock"))
            .replace("/var/run/conntrackd.ctl", str(own / "ctl")))
        configs.append(own / "conntrackd.conf")
    return configs


def _start(ns: str, config: Path) -> int:
    proc = subprocess.Popen(["ip", "netns", "exec", ns, "conntrackd", "-C", str(config)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while _in(ns, "conntrackd", "-C", str(config), "-s").returncode != 0:
        assert proc.poll() is None, "conntrackd did not start"
        assert time.monotonic() < deadline, "conntrackd did not answer"
        time.sleep(0.1)
    return proc.pid


def _stop(pid: int, sig: int = signal.SIGTERM) -> None:
    try:
        os.kill(pid, sig)
        os.waitpid(pid, 0)
    except (ProcessLookupError, ChildProcessError):
        pass


def _open(ns: str, source: str) -> None:
    added = _in(ns, "conntrack", "-I", "-p", "tcp", "-s", source, "-d", "198.18.21.80",
                "--sport", "40000", "--dport", "443", "--state", "ESTABLISHED", "-t", "3600",
                "-u", "SEEN_REPLY,ASSURED")
    assert added.returncode == 0, added.stderr


def _held(ns: str, config: Path, prefix: str) -> int:
    """How many connections from PREFIX* NS's conntrackd holds in its external cache."""
    return _in(ns, "conntrackd", "-C", str(config), "-e").stdout.count(f"src={prefix}")


def _wait_for(ns: str, config: Path, prefix: str, want: int, seconds: float) -> int:
    deadline = time.monotonic() + seconds
    got = _held(ns, config, prefix)
    while got != want and time.monotonic() < deadline:
        time.sleep(0.2)
        got = _held(ns, config, prefix)
    return got


@pytest.mark.parametrize(("mode", "held"), [("notrack", OPENED), ("alarm", OPENED),
                                            ("ftfw", 0)])
def test_the_third_member_holds_what_the_next_master_opens(tmp_path, mode, held):
    skip_or_fail_without_root()
    configs = _configs(tmp_path, mode)
    pids: list[int] = []
    with segment() as (fw1, fw2, fw3):
        try:
            pids = [_start(ns, config) for ns, config in zip((fw1, fw2, fw3), configs,
                                                             strict=True)]
            for n in range(BURST):
                _open(fw1, f"198.18.30.{n + 1}")
            assert _wait_for(fw3, configs[2], "198.18.30.", BURST, 10) == BURST
            _stop(pids[0], signal.SIGKILL)  # the master dies
            for n in range(OPENED):
                _open(fw2, f"198.18.20.{n + 1}")
            # fw2 holds them in its own table; fw2's peers get them within seconds
            assert _wait_for(fw3, configs[2], "198.18.20.", held, 6) == held
            if held == 0:
                time.sleep(2)  # the control: still none, not merely late
                assert _held(fw3, configs[2], "198.18.20.") == 0
        finally:
            for pid in pids:
                _stop(pid)
