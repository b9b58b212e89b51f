"""fwc-notify.sh does what primary-backup.sh does, with fake conntrackd/logger/systemctl.

The script is run for real (POSIX sh) with stand-ins first in PATH that record
their arguments; the lock file and the systemd marker are pointed at a temporary
directory so that the test touches nothing on the host.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from fwc.backend.output import compile_policy
from fwc.pipeline import analyse

REPO = Path(__file__).resolve().parent.parent
CONFIG = "-C /etc/conntrackd/conntrackd.conf"


@pytest.fixture(scope="module")
def script() -> str:
    analysis = analyse(REPO / "policies" / "edge.fw")
    assert analysis.policy is not None
    (cluster,) = compile_policy(analysis.policy)
    (found,) = [f for f in cluster.files if f.path == "fw1/fwc-notify.sh"]
    assert found.mode == 0o755
    return found.content.decode()


def fake(bin_dir: Path, name: str, body: str) -> None:
    path = bin_dir / name
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)


def run(script: str, tmp_path: Path, state: str, *, daemon_up: bool = True,
        systemd: bool = True, lock_exists: bool = False) -> list[str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    calls = tmp_path / "calls"
    calls.write_text("")
    status = 0 if daemon_up else 1
    fake(bin_dir, "conntrackd", f'echo "conntrackd $*" >> {calls}\n'
         f'case "$*" in *" -s") exit {status} ;; esac\nexit 0')
    fake(bin_dir, "logger", f'echo "logger $*" >> {calls}')
    fake(bin_dir, "systemctl", f'echo "systemctl $*" >> {calls}')
    systemd_dir = tmp_path / "systemd"
    if systemd:
        systemd_dir.mkdir(exist_ok=True)
    elif systemd_dir.exists():
        shutil.rmtree(systemd_dir)
    lock = tmp_path / "conntrackd.lock"
    if lock_exists:
        lock.write_text("")
    text = (script.replace("/run/fwc-notify.lock", str(tmp_path / "notify.lock"))
            .replace("/run/systemd/system", str(systemd_dir))
            .replace("LOCKFILE=/var/lock/conntrackd.lock", f"LOCKFILE={lock}"))
    path = tmp_path / "fwc-notify.sh"
    path.write_text(text)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    result = subprocess.run(["sh", str(path), state], env=env, capture_output=True, text=True,
                            timeout=30)
    assert result.returncode == (1 if state == "bogus" else 0), result.stderr
    return [line for line in calls.read_text().splitlines()]


def conntrackd_calls(calls: list[str]) -> list[str]:
    return [c.removeprefix("conntrackd ") for c in calls if c.startswith("conntrackd ")]


def test_script_is_posix_sh_and_uses_the_generated_paths(script):
    assert script.startswith("#!/bin/sh\n")
    assert subprocess.run(["sh", "-n"], input=script, text=True).returncode == 0
    assert "CONFIG=/etc/conntrackd/conntrackd.conf" in script
    assert "exec 9>/run/fwc-notify.lock" in script and "flock 9" in script
    assert "LOCKFILE=/var/lock/conntrackd.lock" in script


def test_primary_commits_flushes_resyncs_and_sends(script, tmp_path):
    calls = run(script, tmp_path, "primary")
    assert conntrackd_calls(calls) == [f"{CONFIG} {op}" for op in ("-c", "-f", "-R", "-B")]
    assert any("logger -t fwc-notify" in c and "transition to primary" in c for c in calls)


def test_backup_checks_the_daemon_requests_resync_and_schedules_purge(script, tmp_path):
    calls = run(script, tmp_path, "backup")
    assert conntrackd_calls(calls) == [f"{CONFIG} {op}" for op in ("-s", "-n", "-t")]
    assert not [c for c in calls if c.startswith("systemctl")]


def test_backup_starts_a_missing_daemon_through_systemd(script, tmp_path):
    calls = run(script, tmp_path, "backup", daemon_up=False)
    assert "systemctl start conntrackd" in calls
    assert f"{CONFIG} -d" not in conntrackd_calls(calls)
    assert any("conntrackd is not running" in c for c in calls if c.startswith("logger"))


def test_backup_without_systemd_never_starts_a_second_daemon(script, tmp_path):
    calls = run(script, tmp_path, "backup", daemon_up=False, systemd=False, lock_exists=True)
    assert f"{CONFIG} -d" not in conntrackd_calls(calls)
    # no lock file: nothing runs, so starting one is safe
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    calls = run(script, fresh, "backup", daemon_up=False, systemd=False)
    assert f"{CONFIG} -d" in conntrackd_calls(calls)


def test_fault_schedules_the_purge(script, tmp_path):
    assert conntrackd_calls(run(script, tmp_path, "fault")) == [f"{CONFIG} -t"]


def test_unknown_argument_fails_and_does_nothing(script, tmp_path):
    assert conntrackd_calls(run(script, tmp_path, "bogus")) == []


def test_compiled_script_is_executable(tmp_path):
    from fwc.cli import main

    assert main(["compile", str(REPO / "policies" / "edge.fw"), "-o", str(tmp_path)]) == 0
    mode = stat.S_IMODE((tmp_path / "edge" / "fw1" / "fwc-notify.sh").stat().st_mode)
    assert mode == 0o755
