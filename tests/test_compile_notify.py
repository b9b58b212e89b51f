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
import time
from pathlib import Path

import pytest
from conftest import REPO

from fwc import protocols as proto
from fwc.backend.output import compile_policy
from fwc.pipeline import analyse
from fwc.text import encode_literal

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
        systemd: bool = True, lock_exists: bool = False, shell: str = "sh",
        hangs_on: str = "", start_hangs: bool = False) -> list[str]:
    """The calls the script made; HANGS_ON: the conntrackd option (-s, -c, ...) that never
    answers, as a client of a stopped or hung daemon waits; START_HANGS: `systemctl start`
    never returns, as for a unit systemd keeps starting again."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    calls = tmp_path / "calls"
    calls.write_text("")
    status = 0 if daemon_up else 1
    hang = f'case "$*" in *" {hangs_on}") exec sleep 20 ;; esac\n' if hangs_on else ""
    fake(bin_dir, "conntrackd", f'echo "conntrackd $*" >> {calls}\n{hang}'
         f'case "$*" in *" -s") exit {status} ;; esac\nexit 0')
    fake(bin_dir, "logger", f'echo "logger $*" >> {calls}')
    wait = 'case "$*" in *" start "*) exec sleep 20 ;; esac\n' if start_hangs else ""
    fake(bin_dir, "systemctl", f'echo "systemctl $*" >> {calls}\n{wait}')
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
    result = subprocess.run([shell, str(path), state], env=env, capture_output=True, text=True,
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
    assert conntrackd_calls(calls) == [f"{CONFIG} {op}"
                                       for op in ("-s", "-c", "-f", "-R", "-B")]
    assert not [c for c in calls if c.startswith("systemctl")]
    assert any("logger -t fwc-notify" in c and "transition to primary" in c for c in calls)


def test_primary_starts_a_missing_daemon_before_its_steps(script, tmp_path):
    # conntrackd gave up at boot (no sync address yet): a master without it would
    # replicate nothing (issue 12 session's HA review)
    calls = run(script, tmp_path, "primary", daemon_up=False)
    assert calls.index("systemctl --job-mode=ignore-requirements start conntrackd") < \
        calls.index(f"conntrackd {CONFIG} -c")


def test_backup_checks_the_daemon_requests_resync_and_schedules_purge(script, tmp_path):
    calls = run(script, tmp_path, "backup")
    assert conntrackd_calls(calls) == [f"{CONFIG} {op}" for op in ("-s", "-n", "-t")]
    assert not [c for c in calls if c.startswith("systemctl")]


def test_backup_starts_a_missing_daemon_through_systemd(script, tmp_path):
    calls = run(script, tmp_path, "backup", daemon_up=False)
    # never the boot unit conntrackd requires: on a live node it would load the rules again
    assert "systemctl --job-mode=ignore-requirements start conntrackd" in calls
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


def _quick(script: str) -> str:
    """SCRIPT waiting 1 s for conntrackd instead of NOTIFY_CONNTRACKD_TIMEOUT_S."""
    limit = f"CT_TIMEOUT={proto.NOTIFY_CONNTRACKD_TIMEOUT_S}\n"
    assert limit in script
    return script.replace(limit, "CT_TIMEOUT=1\n")


def test_a_hung_daemon_cannot_hold_the_notify_script(script, tmp_path):
    # A stopped or hung daemon accepts the client's request and never answers: without a
    # time limit the script held its lock, and every later transition, for ever.
    start = time.monotonic()
    calls = run(_quick(script), tmp_path, "primary", hangs_on="-s")
    assert time.monotonic() - start < 10
    # the daemon is alive: neither a second one started nor each step waited for
    assert conntrackd_calls(calls) == [f"{CONFIG} -s"]
    assert not [c for c in calls if c.startswith("systemctl")]
    logged = [c for c in calls if c.startswith("logger")]
    assert any("did not answer within 1 s" in c for c in logged)
    assert sum("skipped: the daemon did not answer" in c for c in logged) == 4


def test_a_start_of_a_daemon_that_keeps_failing_cannot_hold_the_notify_script(script,
                                                                              tmp_path):
    # conntrackd without its sync address fails, and systemd starts it again without end
    # (conntrackd-systemd.conf): `systemctl start` waits for that start job. Without a
    # time limit the script held its lock, and the next transition's commit, as long.
    start = time.monotonic()
    calls = run(_quick(script), tmp_path, "primary", daemon_up=False, start_hangs=True)
    assert time.monotonic() - start < 10
    assert conntrackd_calls(calls) == [f"{CONFIG} {op}"
                                       for op in ("-s", "-c", "-f", "-R", "-B")]
    assert any("conntrackd did not start within 1 s (systemd goes on trying)" in c
               for c in calls if c.startswith("logger"))


def test_a_commit_that_outlasts_the_limit_lets_the_other_steps_run(script, tmp_path):
    # cutting the client off stops only the waiting: the daemon goes on committing (and
    # ignores the flush meanwhile, conntrack-tools' sync-mode.c)
    start = time.monotonic()
    calls = run(_quick(script), tmp_path, "primary", hangs_on="-c")
    assert time.monotonic() - start < 10
    assert conntrackd_calls(calls) == [f"{CONFIG} {op}"
                                       for op in ("-s", "-c", "-f", "-R", "-B")]
    assert any("conntrackd -c gave no answer within 1 s" in c for c in calls)


def test_every_conntrackd_call_has_the_time_limit(script):
    body = script.split("\nct() {", 1)[1]
    plain = [line for line in body.splitlines()
             if "conntrackd -C" in line and "timeout" not in line]
    # the only one without: starting a daemon without systemd (it forks and returns)
    assert [line.strip() for line in plain] == [
        'conntrackd -C "$CONFIG" -d || log "conntrackd -d failed"']


def test_fault_schedules_the_purge(script, tmp_path):
    assert conntrackd_calls(run(script, tmp_path, "fault")) == [f"{CONFIG} -t"]


def test_unknown_argument_fails_and_does_nothing(script, tmp_path):
    assert conntrackd_calls(run(script, tmp_path, "bogus")) == []


def test_compiled_script_is_executable(tmp_path):
    from fwc.cli import main

    assert main(["compile", str(REPO / "policies" / "edge.fw"), "-o", str(tmp_path)]) == 0
    mode = stat.S_IMODE((tmp_path / "edge" / "fw1" / "fwc-notify.sh").stat().st_mode)
    assert mode == 0o755


# -- notify { } actions (issue 14) --------------------------------------------------------

# Quotes, $, backticks, ; a glob and a backslash: each must reach `sh -c` exactly as
# written. (The command as the admin means it; the policy writes it as a literal.)
NASTY = "echo \"it's $HOME `id` ; *\" > /dev/null; printf '%s\\n' \"a b\" >> ACTIONS"


def _with_actions(tmp_path: Path, actions: str) -> str:
    text = (REPO / "policies" / "edge.fw").read_text()
    text = text.replace("    interface lan ", f"    notify {{ {actions} }}\n    interface lan ", 1)
    path = tmp_path / "edge.fw"
    path.write_text(text)
    analysis = analyse(path)
    assert analysis.policy is not None, analysis.diagnostics
    assert not [d for d in analysis.diagnostics if d.severity.name == "ERROR"]
    (cluster,) = compile_policy(analysis.policy)
    (found,) = [f for f in cluster.files if f.path == "fw1/fwc-notify.sh"]
    return found.content.decode()


def _recorded(tmp_path: Path, marker: str) -> str:
    """An action that appends MARKER to the calls file, as the fakes do."""
    return f'echo "action {marker}" >> {tmp_path / "calls"}'


@pytest.mark.parametrize("shell", ["sh", "bash"])
def test_each_action_runs_after_the_conntrackd_steps_of_its_state(tmp_path, shell):
    actions = " ".join(f"{state} {encode_literal(_recorded(tmp_path, state))}"
                       for state in ("master", "backup", "fault"))
    script = _with_actions(tmp_path, actions)
    assert subprocess.run([shell, "-n"], input=script, text=True).returncode == 0
    expected = {"primary": ("master", ["-s", "-c", "-f", "-R", "-B"]),
                "backup": ("backup", ["-s", "-n", "-t"]), "fault": ("fault", ["-t"])}
    for state, (action, steps) in expected.items():
        calls = run(script, tmp_path, state, shell=shell)
        done = [c for c in calls if c.startswith(("conntrackd ", "action "))]
        # fwc's own steps first, all of them, then exactly this state's action
        assert done == [f"conntrackd {CONFIG} {op}" for op in steps] + [f"action {action}"]
        assert any(f"action for {action} ok" in c for c in calls if c.startswith("logger"))


@pytest.mark.parametrize("shell", ["sh", "bash"])
def test_an_action_is_one_shell_word_whatever_it_holds(tmp_path, shell):
    out = tmp_path / "ACTIONS"
    command = NASTY.replace("ACTIONS", str(out))
    script = _with_actions(tmp_path, f"master {encode_literal(command)}")
    run(script, tmp_path, "primary", shell=shell)
    # the command ran as written: its own quoting, no expansion by the notify script
    assert out.read_text() == "a b\n"
    # and what the script hands `sh -c` is the policy's text, unchanged
    line = next(line for line in script.splitlines() if line.strip().startswith("action master"))
    word = subprocess.run([shell, "-c", f"printf %s {line.strip().split(' ', 2)[2]}"],
                          capture_output=True, text=True).stdout
    assert word == command


def test_a_failing_action_is_logged_and_changes_nothing_else(tmp_path):
    script = _with_actions(tmp_path, 'backup "exit 3"')
    calls = run(script, tmp_path, "backup")
    assert conntrackd_calls(calls) == [f"{CONFIG} {op}" for op in ("-s", "-n", "-t")]
    assert any("action for backup failed (exit 3)" in c for c in calls)


def test_a_hung_action_is_cut_off_by_the_time_limit(tmp_path):
    import time

    script = _with_actions(tmp_path, 'fault "sleep 20"')
    assert "timeout 30 sh -c" in script
    start = time.monotonic()
    calls = run(script.replace("timeout 30 sh -c", "timeout 1 sh -c"), tmp_path, "fault")
    assert time.monotonic() - start < 10
    assert conntrackd_calls(calls) == [f"{CONFIG} -t"]
    assert any("action for fault failed (exit 124)" in c for c in calls)


def test_no_actions_no_action_code(script):
    assert "action" not in script.split("case \"$1\" in")[1]
    assert "sh -c" not in script and "action()" not in script
