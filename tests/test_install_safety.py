"""Install and diff safety (issue 10): ssh targets, policy paths git would quote, an
earlier install that never ended."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from checkkit import BASE, EXAMPLES, assert_diagnostic, line_of, mutate, run, with_code
from conftest import EDGE_TEXT as EDGE
from conftest import cannot_run, fwc_diff, git, watchdog_record

from fwc.diagnostics import Severity
from fwc.install import scripts
from fwc.install.transport import InventoryError, SshTransport, make_transport
from fwc.model.ssh import ssh_target_problem

E = Severity.ERROR
HOSTILE = ["-oProxyCommand=touch /tmp/pwned", "-F/tmp/evil", "root@host -oX=y",
           "root@fw1\n-oProxyCommand=x", "", "@host", "root@", "-root@host", "ro ot@host",
           "root@-host", "root@host;reboot", "root@$(id)", "ssh://root@host",
           # an IPv6 zone: Python's ip_address takes anything after the '%'
           "root@fe80::1%$(id)", "fe80::1%;reboot", "root@fe80::1%`id`",
           "root@fe80::1%{{lookup('pipe','id')}}", "root@fe80::1%", "root@fe80::1%a%b"]
PLAIN = ["fw1", "root@fw1", "root@fw1.example.org", "admin_2@192.0.2.1", "root@2001:db8::1",
         "fw1-mgmt", "root@fw1.example.org.", "root@fe80::1%eth0", "fe80::1%bond0.12"]


@pytest.mark.parametrize("target", HOSTILE)
def test_hostile_ssh_targets_are_refused(target):
    assert ssh_target_problem(target) is not None


@pytest.mark.parametrize("target", PLAIN)
def test_plain_ssh_targets_are_accepted(target):
    assert ssh_target_problem(target) is None


def test_fwc520_ssh_target_read_as_an_option(tmp_path):
    text = mutate(("member fw2 priority 100 {",
                   'member fw2 priority 100 ssh "-oProxyCommand=touch /tmp/x" {'))
    analysis = run(tmp_path, text)
    d = assert_diagnostic(analysis, "FWC520", E, line_of(text, "member fw2"),
                          "ssh target of member 'fw2'", "read it as an option")
    # pointed at the target itself, not just the member
    assert d.span.column == text.splitlines()[d.span.line - 1].index('"-o') + 1
    assert d.hint and "user@host" in d.hint


def test_fwc520_an_ipv6_zone_holding_shell_text(tmp_path):
    """A zone is a device name: anything else (a command substitution, an Ansible
    template) would reach ssh's ProxyCommand %h and the exported inventory as it is."""
    text = mutate(("member fw2 priority 100 {",
                   'member fw2 priority 100 ssh "root@fe80::1%$(reboot)" {'))
    assert_diagnostic(run(tmp_path, text), "FWC520", E, line_of(text, "member fw2"),
                      "ssh target of member 'fw2'", "zone")


def test_fwc520_silent_on_plain_targets(tmp_path):
    text = mutate(
        ("member fw1 priority 150 {", 'member fw1 priority 150 ssh "root@192.0.2.1" {'),
        ("member fw2 priority 100 {", 'member fw2 priority 100 ssh "admin@fw2.example" {'))
    assert run(tmp_path, text).diagnostics == ()
    assert with_code(run(tmp_path, BASE), "FWC520") == []


@pytest.mark.parametrize("policy", EXAMPLES, ids=lambda p: p.name)
def test_fwc520_silent_on_examples(examples, policy):
    assert [d for d in examples[policy.name].analysis.diagnostics if d.code == "FWC520"] == []


def test_ssh_transport_passes_the_target_after_double_dash():
    argv = SshTransport("fw1", "root@fw1", "ssh -p 2222").argv("true")
    assert argv[:5] == ["ssh", "-p", "2222", "--", "root@fw1"]
    fresh = SshTransport("fw1", "root@fw1", "ssh").fresh().argv("true")
    assert fresh[:5] == ["ssh", "-o", "ControlPath=none", "--", "root@fw1"]


@pytest.mark.parametrize("target", ["-oProxyCommand=touch /tmp/x", "root@fw1 -v"])
def test_ssh_transport_refuses_an_option_as_target(target):
    # an inventory line or a policy checked by an older fwc can still carry one
    with pytest.raises(InventoryError, match="ssh target of member fw1"):
        SshTransport("fw1", target)
    with pytest.raises(InventoryError, match="ssh target of member fw1"):
        make_transport("ssh", "fw1", ssh_target=target, inventory={})


# -- fwc diff: policy paths git would quote --------------------------------------------------

OTHER = (EDGE.replace("cluster edge", "cluster other").replace("policy edge", "policy other")
         .replace("nat edge", "nat other").replace("expect edge", "expect other"))


def test_diff_shows_a_new_policy_with_a_non_ascii_name(repo, capsys):
    (repo / "policies" / "café.fw").write_text(OTHER, encoding="utf-8")
    # git quotes this name ("policies/caf\303\251.fw") unless asked for -z output
    assert '"' in git(repo, "ls-files", "--others")
    code, out, err = fwc_diff(capsys)
    assert (code, err) == (1, "")
    assert "cluster other (policies/café.fw)" in out
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "café")
    code, out, err = fwc_diff(capsys, "HEAD~1..HEAD")
    assert (code, err) == (1, "")
    assert "cluster other (policies/café.fw)" in out
    assert "cluster edge" not in out
    # and it is read from git on both sides once it exists there
    (repo / "policies" / "café.fw").write_text(
        OTHER.replace("member fw2 priority 100", "member fw2 priority 90"), encoding="utf-8")
    code, out, _ = fwc_diff(capsys)
    assert code == 1 and "priority 100 -> 90" in out


def test_diff_reports_a_policy_name_that_is_not_utf8(repo, capsys):
    name = os.fsdecode(b"caf\xe9.fw")
    (repo / "policies" / name).write_text(OTHER, encoding="utf-8")
    code, out, err = fwc_diff(capsys)
    assert code == 2 and out == ""
    assert "fwc diff: 'policies/caf\\xe9.fw': the file name is not valid UTF-8" in err
    assert "rename it" in err and "Traceback" not in err
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "latin-1 name")
    code, out, err = fwc_diff(capsys, "HEAD~1..HEAD")
    assert code == 2 and "'policies/caf\\xe9.fw': the file name is not valid UTF-8" in err


def test_diff_ignores_non_utf8_names_that_are_not_policies(repo, capsys):
    (repo / os.fsdecode(b"notes-\xe9.txt")).write_text("x\n", encoding="utf-8")
    (repo / "policies" / "other.fw").write_text(OTHER, encoding="utf-8")
    code, out, err = fwc_diff(capsys)
    assert (code, err) == (1, "") and "cluster other (policies/other.fw)" in out


def _refusal(state: Path) -> subprocess.CompletedProcess[str]:
    """The stage step's check on a node whose /etc/fwc is STATE."""
    return subprocess.run(["sh", "-c", scripts.refuse_if_pending().replace(
        "/etc/fwc/", f"{state}/")], capture_output=True, text=True, timeout=30)


def _armed_and_gone(state: Path) -> int:
    """Arm a watchdog as fwc install does on a node whose /etc/fwc is STATE, then kill it
    (the OOM killer, an admin's kill): the install is unconfirmed, its watchdog gone.
    Returns the PID it had."""
    (state / "snapshot").mkdir(parents=True, exist_ok=True)
    (state / "snapshot" / "rollback.sh").write_text(": rollback\n")
    holder = subprocess.Popen(["sleep", "30"])  # the install lock's holder
    try:
        (state / "install.owner").write_text(f"{holder.pid} t1 {int(time.time())}\n")
        subprocess.run(["sh", "-c", scripts.arm_watchdog(30, token="t1").replace(
            "/etc/fwc/", f"{state}/")], check=True, timeout=30)
    finally:
        holder.kill()
        holder.wait()
    pid = int((state / "snapshot" / "watchdog.pid").read_text().split()[0])
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not Path(f"/proc/{pid}").exists()
    return pid


def test_the_check_is_not_taken_for_the_watchdog_whose_pid_it_got(tmp_path, needs_root):
    """The watchdog died without a marker, and its PID went to another process (PIDs
    wrap; after a reboot they start again): here to the shell that runs the next install's
    check, whose own command line names rollback.sh. A fresh PID namespace hands that PID
    out on purpose. The check must still see the watchdog gone and say how to recover,
    not tell the admin to wait for a confirmation that nothing waits for."""
    if shutil.which("unshare") is None:
        cannot_run("no unshare(1) to give the check the watchdog's PID")
    pid = _armed_and_gone(tmp_path)
    check = scripts.refuse_if_pending().replace("/etc/fwc/", f"{tmp_path}/")
    # (not the last command, so that no shell execs it in place of a fork)
    hand_out = f"echo {pid - 1} > /proc/sys/kernel/ns_last_pid && sh -c \"$1\"; exit $?"
    refused = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "sh", "-c",
                              hand_out, "sh", check], capture_output=True, text=True,
                             timeout=30)
    assert refused.returncode == 3, refused.stderr
    assert "neither confirmed nor rolled back" in refused.stderr, refused.stderr
    assert "still waiting" not in refused.stderr


def test_a_pid_of_another_process_in_watchdog_pid_is_no_waiting_install(tmp_path):
    """After a reboot the watchdog's PID may be any other process's: the node must not
    be told to wait for a confirmation no watchdog waits for (forever, while that
    process lives), but that the install was neither confirmed nor rolled back."""
    snapshot = tmp_path / "snapshot"
    snapshot.mkdir()
    # alive, not a watchdog: the PID a watchdog of an earlier boot had, and one of this
    # boot that a process with that PID had before this one
    pid, boot, started = watchdog_record(os.getpid()).split()
    for record in (f"{pid} 0b0a4c5e-6d1e-4f3a-9e7d-2c1b0a998877 {started}",
                   f"{pid} {boot} {int(started) - 1}"):
        (snapshot / "watchdog.pid").write_text(record + "\n")
        refused = _refusal(tmp_path)
        assert refused.returncode == 3
        assert "neither confirmed nor rolled back" in refused.stderr, refused.stderr
    # its real watchdog (a command that runs rollback.sh) still waits
    watchdog = subprocess.Popen(["sh", "-c", f"sleep 30; sh {snapshot}/rollback.sh"])
    try:
        (snapshot / "watchdog.pid").write_text(watchdog_record(watchdog.pid))
        refused = _refusal(tmp_path)
    finally:
        watchdog.kill()
        watchdog.wait()
    assert refused.returncode == 3
    assert "still waiting for its confirmation" in refused.stderr
    (snapshot / "confirmed").touch()
    assert _refusal(tmp_path).returncode == 0
