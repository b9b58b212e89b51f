"""Active-active VRRP groups (issue 14): `vrrp-group NAME { interface ...  master M }`.

Language and model (per-group priorities), the checks FWC261-FWC269 (each triggered
and silent on policies/loadshare.fw), keepalived.conf (one sync group per
vrrp-group, the notify script told the group; `keepalived -t` in a namespace is
tests/test_realtools.py's, which covers every example), and the notify script's
per-group semantics run for real with a fake conntrackd.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from checkkit import assert_diagnostic, run, with_code
from conftest import REPO

from fwc.backend.output import compile_policy
from fwc.diagnostics import Severity
from fwc.frontend.formatting import format_text
from fwc.pipeline import analyse

LOADSHARE = (REPO / "policies" / "loadshare.fw").read_text(encoding="utf-8")
E, W = Severity.ERROR, Severity.WARNING


def variant(*replacements: tuple[str, str]) -> str:
    text = LOADSHARE
    for old, new in replacements:
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    return text


BLUE = "vrrp-group blue { interface lan, uplink  master fw1 }"
RED = "vrrp-group red { interface dmz, uplink2  master fw2 }"


@pytest.fixture(scope="module")
def files() -> dict[str, str]:
    analysis = analyse(REPO / "policies" / "loadshare.fw")
    assert analysis.policy is not None and not analysis.diagnostics, analysis.diagnostics
    (cluster,) = compile_policy(analysis.policy)
    return {f.path: f.content.decode() for f in cluster.files}


# -- language and model ------------------------------------------------------------------------

def test_groups_and_their_priorities() -> None:
    analysis = analyse(REPO / "policies" / "loadshare.fw")
    assert analysis.policy is not None
    (cluster,) = analysis.policy.clusters
    blue, red = cluster.groups
    assert (blue.name, blue.interfaces, blue.master) == ("blue", ("lan", "uplink"), "fw1")
    assert (red.name, red.interfaces, red.master) == ("red", ("dmz", "uplink2"), "fw2")
    fw1, fw2 = cluster.members
    assert [cluster.group_priority(blue, m) for m in (fw1, fw2)] == [150, 100]
    assert [cluster.group_priority(red, m) for m in (fw1, fw2)] == [100, 150]
    assert cluster.group_of("uplink2") is red and cluster.group_of("sync") is None
    assert cluster.group_priority(None, fw2) == 100


def test_three_members_keep_their_values_and_order_below_the_master(tmp_path: Path) -> None:
    text = variant(("    member fw2 priority 100 {", "    member fw3 priority 50 {\n"
                    "        lan eth0 192.0.2.3/24\n        uplink eth1 198.51.100.3/25\n"
                    "        dmz eth2 203.0.113.3/25\n        uplink2 eth3 198.51.100.131/25\n"
                    "        sync eth4 203.0.113.131/29\n    }\n"
                    "    member fw2 priority 100 {"))
    analysis = run(tmp_path, text)
    assert analysis.policy is not None
    (cluster,) = analysis.policy.clusters
    red = cluster.groups[1]
    assert {m.name: cluster.group_priority(red, m) for m in cluster.members} == {
        "fw1": 100, "fw2": 150, "fw3": 50}
    # who holds each interface's VIPs, then who takes them over (fwc query's handling)
    assert [m.name for m in cluster.vrrp_order("dmz")] == ["fw2", "fw1", "fw3"]
    assert [m.name for m in cluster.vrrp_order("uplink")] == ["fw1", "fw2", "fw3"]
    assert cluster.vrrp_order("sync") == () and cluster.vrrp_order("nope") == ()


def test_fmt_keeps_groups() -> None:
    assert format_text(LOADSHARE) == LOADSHARE
    messy = LOADSHARE.replace(BLUE, "vrrp-group   blue {interface lan,uplink;master fw1}")
    assert format_text(messy) == LOADSHARE


# -- generated files ---------------------------------------------------------------------------

def test_keepalived_one_sync_group_per_vrrp_group(files: dict[str, str]) -> None:
    for member, (blue, red) in (("fw1", (150, 100)), ("fw2", (100, 150))):
        conf = files[f"{member}/keepalived.conf"]
        assert "vrrp_sync_group VG_loadshare_blue {\n    group {\n        VI_lan\n" \
               "        VI_uplink\n    }" in conf
        assert "vrrp_sync_group VG_loadshare_red {\n    group {\n        VI_dmz\n" \
               "        VI_uplink2\n    }" in conf
        assert 'notify_master "/etc/fwc/fwc-notify.sh primary blue"' in conf
        assert 'notify_backup "/etc/fwc/fwc-notify.sh backup red"' in conf
        for name, priority in (("VI_lan", blue), ("VI_uplink", blue), ("VI_dmz", red),
                               ("VI_uplink2", red)):
            block = conf.split(f"vrrp_instance {name} {{", 1)[1].split("\n}", 1)[0]
            assert f"    priority {priority}\n" in block, (member, name)
        assert "VG_loadshare {" not in conf


def test_a_group_of_one_instance_carries_its_notify_lines(tmp_path: Path) -> None:
    text = variant((BLUE, "vrrp-group blue { interface lan  master fw1 }"),
                   (RED, "vrrp-group red { interface dmz, uplink2, uplink  master fw2 }"))
    analysis = run(tmp_path, text)
    assert analysis.policy is not None
    (cluster,) = compile_policy(analysis.policy)
    conf = next(f.content.decode() for f in cluster.files if f.path == "fw1/keepalived.conf")
    assert "VG_loadshare_blue" not in conf
    lan = conf.split("vrrp_instance VI_lan {", 1)[1].split("\n}", 1)[0]
    assert 'notify_master "/etc/fwc/fwc-notify.sh primary blue"' in lan


def test_without_groups_nothing_changes() -> None:
    analysis = analyse(REPO / "policies" / "edge.fw")
    assert analysis.policy is not None
    (cluster,) = compile_policy(analysis.policy)
    conf = next(f.content.decode() for f in cluster.files if f.path == "fw1/keepalived.conf")
    assert 'notify_master "/etc/fwc/fwc-notify.sh primary"\n' in conf
    script = next(f.content.decode() for f in cluster.files if f.path == "fw1/fwc-notify.sh")
    assert "GROUP" not in script and "/run/fwc-vrrp" not in script


# -- the notify script, per group --------------------------------------------------------------

def notify(script: str, tmp_path: Path, *args: str) -> tuple[int, list[str]]:
    """Run SCRIPT with a fake conntrackd/logger; the state dir and locks under TMP_PATH."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    calls = tmp_path / "calls"
    calls.write_text("")
    for name, body in (("conntrackd", f'echo "conntrackd $*" >> {calls}\nexit 0'),
                       ("logger", f'echo "logger $*" >> {calls}'),
                       ("systemctl", f'echo "systemctl $*" >> {calls}')):
        (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / name).chmod(0o755)
    text = (script.replace("/run/fwc-notify.lock", str(tmp_path / "notify.lock"))
            .replace("STATE_DIR=/run/fwc-vrrp", f"STATE_DIR={tmp_path / 'state'}")
            .replace("/run/systemd/system", str(tmp_path / "systemd")))
    path = tmp_path / "fwc-notify.sh"
    path.write_text(text)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    result = subprocess.run(["sh", str(path), *args], env=env, capture_output=True,
                            text=True, timeout=30)
    steps = [c.split(" -C /etc/conntrackd/conntrackd.conf ", 1)[1]
             for c in calls.read_text().splitlines() if c.startswith("conntrackd ")]
    return result.returncode, [s for s in steps if s != "-s"]


def test_notify_per_group_never_acts_the_wrong_way(files: dict[str, str],
                                                   tmp_path: Path) -> None:
    script = files["fw1/fwc-notify.sh"]
    # start-up: both groups BACKUP; nothing mastered yet, the purge is harmless
    assert notify(script, tmp_path, "backup", "blue") == (0, ["-n", "-t"])
    assert notify(script, tmp_path, "backup", "red") == (0, ["-n", "-t"])
    # fw1 masters blue while fw2 masters red: commit, but keep the external cache
    # (it holds fw2's red connections, needed if fw2 fails)
    assert notify(script, tmp_path, "primary", "blue") == (0, ["-c", "-R", "-B"])
    # fw2 fails: fw1 masters everything, the upstream steps
    assert notify(script, tmp_path, "primary", "red") == (0, ["-c", "-f", "-R", "-B"])
    # fw2 is back and takes red again: fw1 still forwards blue, no kernel purge
    assert notify(script, tmp_path, "backup", "red") == (0, ["-n"])
    # a fault of blue while red is backed up: nothing is mastered any more, purge
    assert notify(script, tmp_path, "fault", "blue") == (0, ["-t"])
    assert (tmp_path / "state" / "blue").read_text() == "fault\n"


def test_notify_refuses_an_unknown_group(files: dict[str, str], tmp_path: Path) -> None:
    script = files["fw2/fwc-notify.sh"]
    assert notify(script, tmp_path, "primary", "green") == (1, [])
    assert notify(script, tmp_path, "primary") == (1, [])
    assert not (tmp_path / "state").exists()


# -- checks ------------------------------------------------------------------------------------

def test_the_example_is_clean(tmp_path: Path) -> None:
    analysis = run(tmp_path, LOADSHARE)
    assert [d.code for d in analysis.diagnostics] == []


def test_fwc261_interface_in_two_groups(tmp_path: Path) -> None:
    text = variant((RED, "vrrp-group red { interface dmz, uplink2, lan  master fw2 }"))
    assert_diagnostic(run(tmp_path, text), "FWC261", E, 21, "'lan'", "'blue'", "'red'")


def test_fwc262_vip_interface_in_no_group(tmp_path: Path) -> None:
    text = variant((BLUE, "vrrp-group blue { interface lan  master fw1 }"))
    assert_diagnostic(run(tmp_path, text), "FWC262", E, 24, "'uplink'")


def test_fwc263_group_twice_or_two_masters(tmp_path: Path) -> None:
    text = variant((RED, "vrrp-group red { interface dmz, uplink2  master fw2  master fw1 }"))
    assert_diagnostic(run(tmp_path, text), "FWC263", E, 21, "more than one master")
    text = variant((RED, RED + "\n    vrrp-group red { interface dmz  master fw2 }"))
    assert_diagnostic(run(tmp_path, text), "FWC263", E, 22, "declared twice")


def test_fwc264_no_master_or_not_a_member(tmp_path: Path) -> None:
    text = variant((RED, "vrrp-group red { interface dmz, uplink2 }"))
    assert_diagnostic(run(tmp_path, text), "FWC264", E, 21, "names no master")
    text = variant((RED, "vrrp-group red { interface dmz, uplink2  master fw9 }"))
    assert_diagnostic(run(tmp_path, text), "FWC264", E, 21, "'fw9' is not a member")


def test_fwc265_interface_without_vips(tmp_path: Path) -> None:
    text = variant((RED, "vrrp-group red { interface dmz, uplink2, sync  master fw2 }"))
    assert_diagnostic(run(tmp_path, text), "FWC265", E, 21, "the sync link", "'sync'")
    text = variant((RED, "vrrp-group red { interface dmz, uplink2, wan  master fw2 }"))
    assert_diagnostic(run(tmp_path, text), "FWC265", E, 21, "unknown interface 'wan'")


def test_fwc266_a_rule_across_groups_with_different_masters(tmp_path: Path) -> None:
    text = variant(("    drop   from any    to any      log \"default\"",
                    "    accept from lan    to dmz      service web  in lan  out dmz\n"
                    "    drop   from any    to any      log \"default\""))
    found = assert_diagnostic(run(tmp_path, text), "FWC266", W, 49, "crosses two members")
    assert "master fw1" in found.message and "master fw2" in found.message
    # the same rule is silent when one member masters both groups
    text = text.replace("master fw2", "master fw1")
    assert with_code(run(tmp_path, text), "FWC266") == []


def test_fwc266_a_rule_whose_addresses_put_it_across_groups(tmp_path: Path) -> None:
    # Without `in`/`out` the rule's networks name its segments: client (lan, blue, fw1)
    # to web (dmz, red, fw2) crosses the members all the same, and fwc query says its
    # replies reach fw2 (FWC266); the check was silent, and `fwc lab` saw every such
    # connection dropped.
    text = variant(("    drop   from any    to any      log \"default\"",
                    "    accept from client to web      service web\n"
                    "    drop   from any    to any      log \"default\""))
    found = assert_diagnostic(run(tmp_path, text), "FWC266", W, 49, "crosses two members")
    assert "from 'lan' (vrrp-group 'blue', master fw1) to 'dmz' (vrrp-group 'red', " \
        "master fw2)" in found.message
    # any (no one segment), the firewall, a VIP, a member's address: nothing to say
    for rule in ("from client to any  service web", "from client to firewall service web",
                 "from client to dmz.vip service web",
                 "from client to 203.0.113.1 service web"):
        text = variant(("    drop   from any    to any      log \"default\"",
                        f"    accept {rule}\n    drop   from any    to any      log "
                        "\"default\""))
        assert with_code(run(tmp_path, text), "FWC266") == [], rule


def test_fwc267_and_fwc268(tmp_path: Path) -> None:
    text = variant(("vrrp { advert 1s  version 3  vrid 71 }",
                    "vrrp { advert 1s  version 3  vrid 71  preempt off }"))
    assert_diagnostic(run(tmp_path, text), "FWC267", W, 16, "preempt off")
    text = variant((RED, RED.replace("master fw2", "master fw1")))
    assert_diagnostic(run(tmp_path, text), "FWC268", W, 20, "mastered by fw1")


def test_fwc269_follow_master_rule_follows_one_group(tmp_path: Path) -> None:
    text = variant((RED, RED + "\n    route-rule from 203.0.113.0/25 table 10 follow master\n"
                    "    route default via 198.51.100.200 table 10"))
    assert_diagnostic(run(tmp_path, text), "FWC269", W, 22, "'blue' (fw1)")
