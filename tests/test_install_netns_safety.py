"""`fwc install` safety on real namespaces (issue 10): one install at a time per node,
no install on a node that lacks its daemons, rollback restores sysctl values.

Uses the two-member namespace lab of test_install_netns.py.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import REPO, sh
from test_install_netns import (
    OLD_KEEPALIVED,
    POLICY,
    FakeSettle,
    Lab,
    Node,
    _kill_namespace_processes,
    _lab,
    blocked_policy,
    host_etc_lock,
    install,
)

from fwc import protocols as proto
from fwc.cli import build_parser, main
from fwc.commands import install as install_command
from fwc.diffing.rulesets import normalised
from fwc.install import scripts

pytestmark = pytest.mark.root

SYSCTL_KEYS = ("net.ipv4.ip_forward", "net.ipv6.conf.all.forwarding",
               "net.netfilter.nf_conntrack_events")


@pytest.fixture(scope="module")
def edge_output(tmp_path_factory: pytest.TempPathFactory) -> Path:
    output = tmp_path_factory.mktemp("edge") / "output"
    assert main(["compile", str(POLICY), "-o", str(output), "--redact-secrets"]) == 0
    return output


@pytest.fixture
def nodes(tmp_path: Path, edge_output: Path) -> Iterator[Lab]:
    """fw1 and fw2 as namespaces, as test_install_netns.py's `lab` fixture builds them."""
    with host_etc_lock():
        yield from _lab(tmp_path, edge_output)


def fwc_install_process(lab: Lab, *extra: str) -> subprocess.Popen[str]:
    """`fwc install` as its own process (two of them race for one node)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-m", "fwc", "install", "--transport", "netns",
         "--inventory", str(lab.inventory), "-o", str(lab.output),
         "--secrets", str(lab.secrets), *extra, str(POLICY)],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, env=env, cwd=str(lab.tmp))


def no_staging_or_lock_left(lab: Lab, member: str) -> None:
    etc = lab.nodes[member].etc / "fwc"
    assert not (etc / "staging").exists()
    assert not (etc / "install.owner").exists()
    lab.nodes[member].exec("flock -n /etc/fwc/install.lock true")  # the lock is free


def test_two_installs_at_once_one_refuses_and_the_snapshot_stays_intact(nodes):
    fw2 = nodes.nodes["fw2"]
    before, before6 = fw2.rules(), fw2.rules("ip6tables-save")
    # Neither is confirmed: the winner holds the node for its 6 s window, then
    # rolls back to its snapshot, which must be what ran before either started.
    runs = [fwc_install_process(nodes, "--member", "fw2", "--confirm-timeout", "6")
            for _ in range(2)]
    try:
        results = [(run.wait(timeout=120), *run.communicate()) for run in runs]
    finally:
        for run in runs:
            if run.poll() is None:
                run.kill()
    refused = [r for r in results if "another fwc install is running on this node" in r[2]]
    winners = [r for r in results if r not in refused]
    assert len(refused) == 1 and len(winners) == 1, results
    code, out, err = refused[0]
    assert code == 1
    assert "fw2: lock failed: another fwc install is running on this node" in err
    assert "(not changed)" in err and "fw2: applying" not in out
    code, out, err = winners[0]
    assert code == 1, (out, err)
    assert "fw2: applying" in out and "previous configuration restored" in out
    assert "fw2: confirm failed: not confirmed in time (rolled back)" in err
    # the snapshot the winner took is the original, and that is what runs again
    saved = (fw2.etc / "fwc" / "snapshot" / "iptables.save").read_text()
    assert normalised(saved) == before
    assert fw2.rules() == before and fw2.rules("ip6tables-save") == before6
    assert (fw2.etc / "keepalived" / "keepalived.conf").read_text() == OLD_KEEPALIVED
    no_staging_or_lock_left(nodes, "fw2")
    assert sh("ip", "netns", "pids", fw2.ns).split() == []


def test_a_held_lock_refuses_without_touching_the_other_install(nodes, capsys):
    fw2 = nodes.nodes["fw2"]
    before = fw2.rules()
    # another install is in its staging phase on fw2
    fw2.exec(scripts.take_lock("other-run", 60))
    fw2.exec("mkdir -p /etc/fwc/staging && echo theirs > /etc/fwc/staging/iptables.rules")
    assert install(nodes, "--member", "fw2", "--confirm") == 1
    captured = capsys.readouterr()
    assert "fw2: lock failed: another fwc install is running on this node" in captured.err
    assert "install other-run" in captured.err and "(not changed)" in captured.err
    assert fw2.rules() == before
    assert (fw2.etc / "fwc" / "staging" / "iptables.rules").read_text() == "theirs\n"
    assert not (fw2.etc / "fwc" / "snapshot").exists()
    # the lock dies with its holder (an fwc that vanished leaves no stale lock)
    holder = (fw2.etc / "fwc" / "install.owner").read_text().split()[0]
    fw2.exec(f"kill {holder}")
    fw2.exec(f"while [ -e /proc/{holder}/status ] && ! grep -q '^State:.*Z' "
             f"/proc/{holder}/status; do sleep 0.05; done")
    assert install(nodes, "--member", "fw2", "--confirm") == 0
    assert "fwc auto: established" in "\n".join(fw2.rules())
    assert not (fw2.etc / "fwc" / "install.owner").exists()
    fw2.exec("flock -n /etc/fwc/install.lock true")


@pytest.mark.parametrize("missing", ["keepalived", "conntrackd"])
def test_node_without_a_daemon_is_refused_before_anything_changes(nodes, capsys, monkeypatch,
                                                                  missing):
    # A PATH holding every program of this machine except the missing daemon.
    bin_dir = nodes.tmp / f"no-{missing}"
    bin_dir.mkdir()
    for directory in os.environ["PATH"].split(os.pathsep):
        if not Path(directory).is_dir():
            continue
        for program in Path(directory).iterdir():
            target = bin_dir / program.name
            if program.name != missing and not target.exists() and os.access(program, os.X_OK):
                target.symlink_to(program)
    monkeypatch.setenv("PATH", str(bin_dir))
    assert shutil.which(missing) is None and shutil.which("iptables-restore")
    fw2 = nodes.nodes["fw2"]
    before = fw2.rules()
    assert install(nodes, "--member", "fw2", "--confirm") == 1
    captured = capsys.readouterr()
    assert f"fw2: preflight failed: not installed on this node: {missing} " \
        f"(for {missing}.conf): install them first (not changed)" in captured.err
    assert "nothing was changed" in captured.out and "fw2: copying" not in captured.out
    assert fw2.rules() == before
    assert (fw2.etc / "keepalived" / "keepalived.conf").read_text() == OLD_KEEPALIVED
    assert sorted(p.name for p in (fw2.etc / "fwc").iterdir()) == []


def sysctls(lab: Lab, member: str) -> dict[str, str]:
    node = lab.nodes[member]
    return {key: node.exec(f"sysctl -n {key}").strip() for key in SYSCTL_KEYS}


def test_rollback_restores_sysctl_values(nodes, capsys):
    fw2 = nodes.nodes["fw2"]
    # a node that does not forward (a fresh namespace's default) and has events off
    fw2.exec("sysctl -q -w net.ipv4.ip_forward=0 net.netfilter.nf_conntrack_events=0")
    before = sysctls(nodes, "fw2")
    assert before["net.ipv4.ip_forward"] == "0"
    assert install(nodes, "--member", "fw2", "--confirm-timeout", "1") == 1
    assert "previous configuration restored" in capsys.readouterr().out
    assert sysctls(nodes, "fw2") == before
    saved = (fw2.etc / "fwc" / "snapshot" / "sysctl.save").read_text().splitlines()
    assert "net.ipv4.ip_forward=0" in saved and "net.netfilter.nf_conntrack_events=0" in saved
    assert not (fw2.etc / "sysctl.d" / "90-fwc.conf").exists()
    # the same install, confirmed, does set them (so the rollback really undid something)
    assert install(nodes, "--member", "fw2", "--confirm") == 0
    after = sysctls(nodes, "fw2")
    assert after["net.ipv4.ip_forward"] == "1" and after["net.netfilter.nf_conntrack_events"] == "1"


def test_sysctl_keys_of_a_conf():
    conf = ("# comment\n; also a comment\nnet.ipv4.ip_forward = 1\n"
            "-net.netfilter.nf_conntrack_max=262144\n\nnet.ipv4.ip_forward = 1\n")
    assert scripts.sysctl_keys(conf) == ["net.ipv4.ip_forward", "net.netfilter.nf_conntrack_max"]


def test_a_file_that_cannot_be_put_in_place_fails_the_apply(nodes, capsys, monkeypatch):
    """A full disk on the node: the copy of keepalived.conf into place fails. The apply
    must fail and roll back, not go on loading a mix of new and old files."""
    fake = nodes.tmp / "bin"
    fake.mkdir()
    real = shutil.which("cp")
    fw2 = nodes.nodes["fw2"]
    (fake / "cp").write_text(
        "#!/bin/sh\n"
        'for last; do :; done\n'
        f'if [ "$(ip netns identify $$)" = "{fw2.ns}" ] '
        '&& [ "$last" = /etc/keepalived/keepalived.conf.fwc-new ]; then\n'
        '    echo "cp: error writing \'$last\': No space left on device" >&2; exit 1\nfi\n'
        f'exec {real} "$@"\n')
    (fake / "cp").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}:{os.environ['PATH']}")
    before = fw2.rules()
    assert install(nodes, "--member", "fw2", "--confirm") == 1
    captured = capsys.readouterr()
    assert "fw2: apply failed: restoring the previous configuration" in captured.out
    assert "No space left on device (rolled back)" in captured.err
    assert fw2.rules() == before
    assert (fw2.etc / "keepalived" / "keepalived.conf").read_text() == OLD_KEEPALIVED
    assert not (fw2.etc / "fwc" / "iptables.rules").exists()
    assert not (fw2.etc / "fwc" / "installed").exists()


def test_a_dropped_connection_during_the_apply_never_outlives_the_rollback(nodes, capsys,
                                                                          monkeypatch):
    """ssh drops while the apply runs; sshd does not stop a command without a terminal,
    so the apply goes on on the node while fwc, reconnected, rolls back. The rollback
    must wait for it: otherwise the apply finishes after it, and the node runs the new,
    unconfirmed rules with no watchdog left and fwc saying it was restored."""
    fw2 = nodes.nodes["fw2"]
    fake = nodes.tmp / "bin"
    fake.mkdir()
    fake_ssh = fake / "fake-ssh"
    fake_ssh.write_text(
        "#!/bin/sh\n"
        'while [ "$1" = -o ]; do shift 2; done\n'
        '[ "$1" = -- ] && shift\n'
        "host=$1; shift\n"
        'case "$*" in *"mv -f /etc/fwc/iptables.rules.fwc-new"*)\n'
        '    ip netns exec "$host" sh -c "$*" </dev/null >/dev/null 2>&1 &\n'
        '    echo "Connection to $host closed by remote host." >&2; exit 255;;\n'
        "esac\n"
        'exec ip netns exec "$host" sh -c "$*"\n')
    real_cp = shutil.which("cp")
    # the apply's first copy is slow (a loaded node): the rollback arrives meanwhile
    (fake / "cp").write_text(
        "#!/bin/sh\n"
        "for last; do :; done\n"
        f'if [ "$(ip netns identify $$)" = "{fw2.ns}" ] '
        '&& [ "$last" = /etc/fwc/iptables.rules.fwc-new ]; then sleep 2; fi\n'
        f'exec {real_cp} "$@"\n')
    for program in ("fake-ssh", "cp"):
        (fake / program).chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}:{os.environ['PATH']}")
    before = fw2.rules()
    assert install(nodes, "--member", "fw2", "--confirm", "--transport", "ssh",
                   "--ssh", str(fake_ssh)) == 1
    captured = capsys.readouterr()
    assert "fw2: apply failed: restoring the previous configuration" in captured.out
    assert "closed by remote host. (rolled back)" in captured.err
    # whatever the node still runs of the apply has ended (the watchdog went too)
    for _ in range(100):
        if not sh("ip", "netns", "pids", fw2.ns).split():
            break
        time.sleep(0.1)
    assert fw2.rules() == before
    assert not (fw2.etc / "fwc" / "iptables.rules").exists()
    assert (fw2.etc / "keepalived" / "keepalived.conf").read_text() == OLD_KEEPALIVED
    assert (fw2.etc / "fwc" / "snapshot" / "rolled-back").exists()


def test_an_install_left_unconfirmed_by_a_reboot_keeps_its_snapshot(nodes, capsys):
    """The node rebooted (its watchdog died) while an install waited for its
    confirmation: it runs rules nobody confirmed, and the snapshot is the only copy of
    what ran before. The next install must not replace that snapshot: its own rollback
    would then come back to the unconfirmed rules."""
    from fwc.backend.files import FILES

    fw2 = nodes.nodes["fw2"]
    before = fw2.rules()
    files = [f for f in FILES if f.name == "iptables.rules"]
    fw2.exec(scripts.take_lock("t1", 60))
    fw2.exec(scripts.refuse_if_pending())
    fw2.exec(scripts.stage(files[0]),
             input=(nodes.output / "edge" / "fw2" / "iptables.rules").read_text())
    fw2.exec(scripts.snapshot(files, []))
    fw2.exec(scripts.write(scripts.ROLLBACK_SCRIPT, 0o700),
             input=scripts.rollback_script(files, [], token="t1"))
    fw2.exec(scripts.arm_watchdog(60, token="t1"))
    fw2.exec(scripts.apply(files))
    unconfirmed = fw2.rules()
    assert unconfirmed != before
    _kill_namespace_processes(fw2.ns)  # the power went: watchdog and lock holder too
    assert install(nodes, "--member", "fw2", "--confirm-timeout", "1") == 1
    captured = capsys.readouterr()
    assert "fw2: stage failed: an earlier fwc install was neither confirmed nor rolled " \
        "back" in captured.err and "(not changed)" in captured.err
    assert "fw2: applying" not in captured.out
    assert fw2.rules() == unconfirmed
    no_staging_or_lock_left(nodes, "fw2")
    # what ran before is still there to go back to, as the message says
    fw2.exec(f"sh {scripts.ROLLBACK_SCRIPT}")
    assert fw2.rules() == before
    assert install(nodes, "--member", "fw2", "--confirm") == 0


def routed_policy(directory: Path) -> Path:
    """edge with a static route: fwc-routes.sh and fwc-routes.service for every member."""
    text = POLICY.read_text(encoding="utf-8").replace(
        "    interface sync\n", "    interface sync\n    route 198.18.50.0/24 via 198.51.100.9\n")
    path = directory / "routed" / "edge.fw"
    path.parent.mkdir()
    path.write_text(text, encoding="utf-8")
    return path


def test_files_the_policy_no_longer_has_leave_the_node_and_a_rollback_brings_them_back(
        nodes, capsys):
    # The install wrote only the files the member gets now: a routes unit left behind
    # from an earlier install added the old routes again at every boot, and `fwc diff
    # --installed` reported drift right after a confirmed install (helper review).
    routed = routed_policy(nodes.tmp)
    routed_output = nodes.tmp / "routed-output"
    assert main(["compile", str(routed), "-o", str(routed_output), "--redact-secrets"]) == 0
    fw1 = nodes.nodes["fw1"]
    script = fw1.etc / "fwc" / "fwc-routes.sh"
    unit = fw1.etc / "systemd" / "system" / "fwc-routes.service"

    def install_from(policy: Path, output: Path, *extra: str) -> int:
        args = build_parser().parse_args([
            "install", "--member", "fw1", "--transport", "netns", "--inventory",
            str(nodes.inventory), "-o", str(output), "--secrets", str(nodes.secrets),
            *extra, str(policy)])
        return install_command.run(args, check=FakeSettle())

    def routes() -> str:
        return fw1.exec(f"ip route show proto {proto.ROUTE_PROTOCOL}")

    assert install_from(routed, routed_output, "--confirm") == 0
    assert script.exists() and unit.exists() and "198.18.50.0/24" in routes()
    routed_script = script.read_text()
    # Without the route and not confirmed: rolled back, the files and the route again.
    assert install_from(POLICY, nodes.output, "--confirm-timeout", "0.5") == 1
    assert "previous configuration restored" in capsys.readouterr().out
    assert script.read_text() == routed_script and unit.exists()
    assert "198.18.50.0/24" in routes()
    # Confirmed: the files and fwc's route are gone, the node is what the compile says;
    # a file at a row's path that fwc did not write (no header of fwc's) stays.
    theirs = fw1.etc / "systemd" / "system" / "fwc-uplinks.service"
    theirs.write_text("[Unit]\nDescription=the admin's own unit at this path\n")
    assert install_from(POLICY, nodes.output, "--confirm") == 0
    assert not script.exists() and not unit.exists()
    assert theirs.read_text().startswith("[Unit]\nDescription=the admin's own")
    theirs.unlink()  # (`fwc diff --installed` would rightly show it as drift)
    assert routes().strip() == ""
    capsys.readouterr()
    assert main(["diff", "--installed", "fw1", "--transport", "netns", "--inventory",
                 str(nodes.inventory), str(POLICY)]) == 0, capsys.readouterr().out


def fresh_kernel(node: Node) -> None:
    """What a reboot leaves a namespace node: its processes (the watchdog, the lock holder)
    gone, no rules, sets or forwarding. Its files stay."""
    _kill_namespace_processes(node.ns)
    node.exec("for c in iptables ip6tables; do for t in $($c-save | sed -n 's/^\\*//p'); do "
              "$c -t $t -F; $c -t $t -X; for ch in $($c -t $t -S | sed -n "
              "'s/^-P \\([^ ]*\\) .*/\\1/p'); do $c -t $t -P $ch ACCEPT; done; done; done; "
              "ipset destroy; sysctl -q -w net.ipv4.ip_forward=0 "
              "net.ipv6.conf.all.forwarding=0")


def test_a_reboot_on_probation_boots_the_install_before_it(nodes, capsys, monkeypatch):
    """fw1 runs a confirmed install of edge.fw; an install of a changed policy (an ipset,
    other rules) is applied and the node reboots before anyone confirms it (the power
    went, or an admin it locked out power-cycled it): its boot script rolls it back, so
    the node comes back with edge.fw's rules and files and forwards, the install is
    marked rolled back, `fwc diff --installed` and `fwc status` report edge.fw's install,
    and the next install goes ahead."""
    fw1 = nodes.nodes["fw1"]
    assert install(nodes, "--member", "fw1", "--confirm") == 0
    confirmed = {"rules": fw1.rules(), "rules6": fw1.rules("ip6tables-save"),
                 "sets": "", "forward": "1\n", "rolled back": True,
                 "iptables.rules": (fw1.etc / "fwc" / "iptables.rules").read_text()}
    policy = blocked_policy(nodes.tmp)
    output = nodes.tmp / "blocked"
    assert main(["compile", str(policy), "-o", str(output)]) == 0
    seen: dict[str, object] = {}

    def reboot_on_probation(node: object, seconds: float) -> bool:
        assert "--match-set fwc4-blocked src" in "\n".join(fw1.rules())  # the new rules run
        fresh_kernel(fw1)
        boot = subprocess.run(["ip", "netns", "exec", fw1.ns, "sh", "/etc/fwc/fwc-firewall.sh"],
                              capture_output=True, text=True, timeout=60)
        seen.update({"rules": fw1.rules(), "rules6": fw1.rules("ip6tables-save"),
                     "sets": fw1.exec("ipset list -n"),
                     "forward": fw1.exec("sysctl -n net.ipv4.ip_forward"),
                     "rolled back": (fw1.etc / "fwc/snapshot/rolled-back").exists(),
                     "iptables.rules": (fw1.etc / "fwc" / "iptables.rules").read_text()})
        seen["boot"] = (boot.returncode, boot.stderr)
        return False  # never confirmed: fwc's own rollback then finds nothing to do

    monkeypatch.setattr(install_command, "automatic_confirmer", reboot_on_probation)
    capsys.readouterr()
    blocked = ["install", "--member", "fw1", "--transport", "netns", "--inventory",
               str(nodes.inventory), "-o", str(output)]
    assert install_command.run(build_parser().parse_args([*blocked, "--confirm",
                                                          str(policy)]),
                               check=FakeSettle()) == 1
    code, said = seen.pop("boot")  # type: ignore[misc]
    assert code == 0, said
    assert "never confirmed: rolling it back" in said and "rolled back at boot" in said
    assert seen == confirmed
    assert "previous configuration restored" in capsys.readouterr().out
    assert main(["diff", "--no-color", "--installed", "fw1", "--transport", "netns",
                 "--inventory", str(nodes.inventory), "--secrets", str(nodes.secrets),
                 str(POLICY)]) == 0, capsys.readouterr().out
    assert capsys.readouterr().out.endswith(f"fw1: runs what {POLICY} compiles to\n")
    assert main(["status", "--member", "fw1", "--transport", "netns", "--inventory",
                 str(nodes.inventory), "-o", str(nodes.output), str(POLICY)]) == 0
    assert f"from {POLICY}" in capsys.readouterr().out
    monkeypatch.undo()  # confirmed this time
    assert install_command.run(build_parser().parse_args([*blocked, "--confirm",
                                                          str(policy)]),
                               check=FakeSettle()) == 0
