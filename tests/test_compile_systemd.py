"""Boot and daemon ordering: the systemd units fwc generates per member.

keepalived starts after conntrackd (docs/ha-pitfalls.md); both require the boot unit
fwc-firewall.service, which loads the rules before the network is up and only
then switches forwarding on (issue 10: a rebooted node never forwards unfiltered).
"""

from __future__ import annotations

import configparser
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from conftest import Examples, cannot_run

from fwc import protocols as proto
from fwc.backend.files import BY_NAME, FILES, LOADED_BY_INSTALL
from fwc.install import scripts
from fwc.install.node import NodeInstall


def _files(examples: Examples, name: str = "edge.fw") -> dict[str, bytes]:
    return examples[name].files()


def _unit(text: bytes) -> configparser.ConfigParser:
    unit = configparser.ConfigParser(strict=False)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read_string(text.decode())
    return unit


def test_every_member_gets_the_ordering_dropins(examples):
    files = _files(examples)
    for member in ("fw1", "fw2"):
        keepalived = _unit(files[f"{member}/keepalived-systemd.conf"])["Unit"]
        assert keepalived["After"].split() == ["fwc-firewall.service", "conntrackd.service"]
        assert keepalived["Wants"] == "conntrackd.service"
        assert keepalived["Requires"] == "fwc-firewall.service"
        conntrackd = _unit(files[f"{member}/conntrackd-systemd.conf"])["Unit"]
        assert conntrackd["Requires"] == "fwc-firewall.service"
        # its own address on the sync link too: started before it, conntrackd gives up
        assert conntrackd["After"].split() == ["fwc-firewall.service", "network-online.target"]
        assert conntrackd["Wants"] == "network-online.target"
    assert BY_NAME["keepalived-systemd.conf"].path == \
        "/etc/systemd/system/keepalived.service.d/fwc.conf"
    assert BY_NAME["conntrackd-systemd.conf"].path == \
        "/etc/systemd/system/conntrackd.service.d/fwc.conf"


def test_conntrackd_starts_over_a_crash_and_tells_its_peer(examples):
    """The lock file a killed daemon leaves goes before a start, and the started daemon
    sends its peer what it found in the kernel (tests/test_conntrackd_resync.py runs both
    with the real daemon); either failing must not fail the unit (`-`)."""
    for member in ("fw1", "fw2"):
        service = _unit(_files(examples)[f"{member}/conntrackd-systemd.conf"])["Service"]
        assert service["ExecStartPre"] == f"-/bin/rm -f {proto.NODE_CONNTRACKD_LOCK}"
        assert service["ExecStartPost"] == \
            f"-/usr/sbin/conntrackd -C {BY_NAME['conntrackd.conf'].path} -B"


def test_conntrackd_is_started_again_until_it_runs(examples):
    """Without its sync address conntrackd exits at once; systemd's default start limit
    (5 in 10 s) is spent in half a second and the unit stayed failed: keepalived, ordered
    after it only, started without it (a master replicating nothing, with nothing to
    commit), and the notify script's start was refused while the limit held. The drop-in
    lifts the limit and spaces the starts, so conntrackd runs once the address is there,
    and keepalived's start waits for it."""
    for member in ("fw1", "fw2"):
        unit = _unit(_files(examples)[f"{member}/conntrackd-systemd.conf"])
        assert unit["Unit"]["StartLimitIntervalSec"] == "0"
        assert unit["Service"]["Restart"] == "on-failure"
        assert unit["Service"]["RestartSec"] == f"{proto.CONNTRACKD_RESTART_S}s"
        assert proto.CONNTRACKD_RESTART_S >= 1  # not systemd's 100 ms: a loop, not a storm


def test_a_hung_conntrackd_is_restarted_by_its_watchdog(examples):
    """A stopped or stuck daemon replicates nothing and tells nobody; its systemd
    watchdog (conntrackd pings it from its event loop: tests/test_conntrackd_resync.py
    shows the pings stop when it hangs) kills it and Restart= starts it again."""
    for member in ("fw1", "fw2"):
        service = _unit(_files(examples)[f"{member}/conntrackd-systemd.conf"])["Service"]
        assert service["WatchdogSec"] == f"{proto.CONNTRACKD_WATCHDOG_S}s"
        assert service["Restart"] == "on-failure"


def test_the_boot_unit_runs_before_the_network_and_stays_active(examples):
    files = _files(examples)
    unit = _unit(files["fw1/fwc-firewall.service"])
    assert unit["Unit"]["DefaultDependencies"] == "no"
    assert "network-pre.target" in unit["Unit"]["Before"].split()
    assert unit["Unit"]["Wants"] == "network-pre.target"
    # the distribution's firewall units flush the ruleset when they start: never after ours
    assert {"nftables.service", "netfilter-persistent.service"} <= \
        set(unit["Unit"]["After"].split())
    assert unit["Service"]["Type"] == "oneshot"
    assert unit["Service"]["RemainAfterExit"] == "yes"
    assert unit["Service"]["ExecStart"] == BY_NAME["fwc-firewall.sh"].path
    assert BY_NAME["fwc-firewall.sh"].mode == 0o755
    assert BY_NAME["fwc-firewall.service"].path == \
        "/etc/systemd/system/fwc-firewall.service"


def test_sysctl_d_no_longer_switches_forwarding_on(examples):
    """systemd-sysctl applies /etc/sysctl.d before any rule is loaded."""
    for name in ("edge.fw", "dmz.fw", "branch.fw"):
        files = _files(examples, name)
        for path, content in files.items():
            if path.endswith("/sysctl.conf"):
                assert b"forward" not in content, path
        forwarding = files["fw1/forwarding.conf"].decode() if "fw1/forwarding.conf" in files \
            else next(c for p, c in files.items() if p.endswith("/forwarding.conf")).decode()
        assert "net.ipv4.ip_forward = 1" in forwarding
    assert BY_NAME["forwarding.conf"].path.startswith("/etc/fwc/")


def _node(*changed: str) -> NodeInstall:
    """A systemd backup node whose install changes CHANGED (only reload_commands runs)."""
    node = NodeInstall.__new__(NodeInstall)
    node.files = list(FILES)  # a member that gets every row (none is stale)
    node.systemd = True
    node.role = "backup"

    class Result:
        pass

    class Transport:
        private_run = True

    node.result, node.transport = Result(), Transport()
    node.result.changed = list(changed)
    return node


def test_install_reloads_systemd_units_before_keepalived_when_the_dropin_changed():
    node = _node("keepalived-systemd.conf", "keepalived.conf")
    daemons = [daemon for daemon, _ in node.reload_commands(old_config=None)]
    assert daemons == ["systemd", "keepalived"]
    node.systemd = False
    assert [d for d, _ in node.reload_commands(old_config=None)] == ["keepalived"]


def test_install_enables_the_boot_unit_when_it_changes():
    commands = dict(_node("fwc-firewall.service").reload_commands(old_config=None))
    assert "systemctl daemon-reload" in commands["systemd"]
    assert "systemctl enable -q fwc-firewall.service" in commands["systemd"]
    # then marked active without a second load (the boot script's LOADED_BY_INSTALL
    # exit): left inactive, the next restart of a daemon requiring it would run the
    # whole load on this live node
    assert ("! systemctl -q is-active fwc-firewall.service; then systemctl "
            f"set-environment {LOADED_BY_INSTALL}=1 && {{ systemctl start "
            "fwc-firewall.service; rc=$?; systemctl unset-environment "
            f"{LOADED_BY_INSTALL}; [ $rc -eq 0 ]; }}") in commands["systemd"]


def test_install_restarts_conntrackd_without_starting_the_boot_unit():
    commands = dict(_node("conntrackd.conf").reload_commands(old_config=None))
    assert "systemctl --job-mode=ignore-requirements restart conntrackd" in \
        commands["conntrackd"]
    assert "systemctl restart conntrackd" not in commands["conntrackd"]


def test_the_install_does_not_wait_for_ever_on_a_conntrackd_that_cannot_start(tmp_path,
                                                                              monkeypatch):
    """conntrackd's drop-in has systemd start a failing daemon again without end, and
    `systemctl restart` waits for that start job: with a new conntrackd.conf the daemon
    cannot start with, the install's restart must fail (and the install roll back), not
    wait until the watchdog's deadline. Run with a systemctl that never returns."""
    monkeypatch.setattr(scripts, "CONNTRACKD_RESTART_WAIT_S", 1, raising=False)
    command = dict(_node("conntrackd.conf").reload_commands(old_config=None))["conntrackd"]
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in (("systemctl", 'case "$*" in *restart*) exec sleep 20 ;; esac'),
                       ("conntrackd", "exit 1")):
        (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / name).chmod(0o755)
    (tmp_path / "systemd").mkdir()
    command = command.replace("/run/systemd/system", str(tmp_path / "systemd"))
    start = time.monotonic()
    result = subprocess.run(["sh", "-c", command], capture_output=True, text=True, timeout=60,
                            env={**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"})
    assert time.monotonic() - start < 10
    assert result.returncode != 0


def _systemd_analyze() -> str:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        cannot_run("systemd-analyze is missing (tests/run.sh installs the systemd package)")
    return tool


UNIT_DIRS = (Path("/lib/systemd/system"), Path("/usr/lib/systemd/system"))


def _stock_unit(name: str) -> Path:
    for directory in UNIT_DIRS:
        if (directory / name).exists():
            return directory / name
    cannot_run(f"{name} is missing (tests/run.sh installs it)")


@pytest.mark.parametrize("name", ["edge.fw", "dmz.fw", "branch.fw"])
def test_systemd_analyze_verify_accepts_the_generated_units(examples, tmp_path, name):
    """The units and drop-ins as installed, next to Debian's keepalived/conntrackd units.

    A root directory stands in for the node: the generated files at their node
    paths, the stock units and targets, and the executables the units name.
    """
    tool = _systemd_analyze()
    root = tmp_path / "root"
    units = root / "lib/systemd/system"
    units.mkdir(parents=True)
    for stock in ("keepalived.service", "conntrackd.service"):
        shutil.copy(_stock_unit(stock), units)
    for directory in UNIT_DIRS:
        for target in directory.glob("*.target") if directory.is_dir() else ():
            if not (units / target.name).exists():
                shutil.copy(target, units, follow_symlinks=True)
    for binary in ("usr/sbin/keepalived", "usr/sbin/conntrackd", "bin/kill", "usr/bin/kill"):
        path = root / binary
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("#!/bin/sh\n")
        path.chmod(0o755)
    files = _files(examples, name)
    member = sorted(p.split("/")[0] for p in files if p.endswith("/fwc-firewall.service"))[0]
    for path, content in files.items():
        owner, _, fname = path.partition("/")
        if owner != member or fname not in BY_NAME:
            continue
        node = BY_NAME[fname]
        target = root / node.path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content)
        target.chmod(node.mode)
    # the routes unit exists where the policy has routes (dmz.fw)
    routes = ["fwc-routes.service"] if f"{member}/fwc-routes.service" in files else []
    assert bool(routes) == (name == "dmz.fw")
    proc = subprocess.run([tool, "verify", f"--root={root}", "fwc-firewall.service",
                           "keepalived.service", "conntrackd.service", *routes],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    # Warnings (an unknown key in a drop-in, an ordering cycle) do not change the exit code.
    assert proc.stderr.strip() == "", proc.stderr


def test_systemd_analyze_verify_catches_a_broken_dropin(examples, tmp_path):
    """The verification above is not vacuous: a misspelt key in a drop-in is reported."""
    tool = _systemd_analyze()
    root = tmp_path / "root"
    dropin = root / "etc/systemd/system/fwc-firewall.service"
    dropin.parent.mkdir(parents=True)
    dropin.write_bytes(_files(examples)["fw1/fwc-firewall.service"].replace(
        b"RemainAfterExit", b"RemainAfterExi"))
    script = root / "etc/fwc/fwc-firewall.sh"
    script.parent.mkdir(parents=True)
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    proc = subprocess.run([tool, "verify", f"--root={root}", "fwc-firewall.service"],
                          capture_output=True, text=True, timeout=60)
    assert "RemainAfterExi" in proc.stderr
