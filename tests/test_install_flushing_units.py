"""`fwc install` says when the node runs a unit that would flush fwc's rules.

nftables.service (`flush ruleset` in Debian's /etc/nftables.conf) and
netfilter-persistent flush the whole ruleset when they start, reload or stop; on a
forwarding node that leaves it forwarding unfiltered, and fwc cannot order a runtime
reload. The preflight's warning runs here for real (POSIX sh) against a stand-in
systemctl, with the systemd marker pointed at a temporary directory.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from conftest import REPO

from fwc import protocols as proto
from fwc.backend.files import FILES
from fwc.backend.output import compile_policy
from fwc.install import scripts
from fwc.pipeline import analyse


def _warnings(tmp_path: Path, enabled: str, active: str, systemd: bool = True) -> str:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    fake = bin_dir / "systemctl"
    fake.write_text("#!/bin/sh\n"
                    f'case "$2 $3" in "is-enabled {enabled}"|"is-active {active}") exit 0 ;; '
                    "esac\nexit 1\n")
    fake.chmod(0o755)
    marker = tmp_path / "systemd"
    if systemd:
        marker.mkdir(exist_ok=True)
    script = scripts.flushing_units_warning().replace("/run/systemd/system", str(marker))
    done = subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=30,
                          env={"PATH": f"{bin_dir}:/usr/bin:/bin"})
    assert done.returncode == 0 and done.stdout == ""
    return done.stderr


def test_an_enabled_or_running_flushing_unit_is_said(tmp_path):
    said = _warnings(tmp_path, "nftables.service", "netfilter-persistent.service")
    lines = said.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("warning: nftables.service is enabled or running")
    assert "systemctl disable --now nftables.service" in lines[0]
    assert lines[1].startswith("warning: netfilter-persistent.service is enabled or running")


def test_a_packet_filter_with_a_policy_of_its_own_is_said(tmp_path):
    """firewalld or ufw next to fwc: a packet must pass both, and their default policy
    drops VRRP and conntrackd sync (split brain); firewalld's iptables backend also
    flushes every table at its start and reload."""
    said = _warnings(tmp_path / "a", "firewalld.service", "none")
    assert said.startswith("warning: firewalld.service is enabled or running on this node: "
                           "its own policy filters next to fwc's")
    assert "VRRP" in said and "flush fwc's rules" in said
    assert said.rstrip().endswith("systemctl disable --now firewalld.service")
    said = _warnings(tmp_path / "b", "none", "ufw.service")
    assert said.startswith("warning: ufw.service is enabled or running on this node:")
    assert "VRRP" in said and said.count("\n") == 1


def test_nothing_is_said_when_neither_runs_or_without_systemd(tmp_path):
    assert _warnings(tmp_path / "a", "none", "none") == ""
    assert _warnings(tmp_path / "b", "nftables.service", "none", systemd=False) == ""


def test_every_install_asks_and_the_boot_unit_is_ordered_after_the_same_units():
    assert scripts.flushing_units_warning() in scripts.preflight(list(FILES))
    policy = analyse(REPO / "policies" / "edge.fw").policy
    assert policy is not None
    (cluster,) = compile_policy(policy)
    unit = next(f for f in cluster.files if f.path == "fw1/fwc-firewall.service")
    after = next(line for line in unit.content.decode().splitlines()
                 if line.startswith("After="))
    assert after.split()[-2:] == list(proto.FLUSHING_FIREWALL_UNITS)
