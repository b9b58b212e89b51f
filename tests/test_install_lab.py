"""`fwc install` into the lab's running cluster: real keepalived and conntrackd.

The lab (fwc.lab) brings edge (and loadshare, active-active) up in namespaces
with private mount namespaces; install reaches each member through them (`mount=`
in the inventory), checks the real cluster state (one master holding every VIP,
or each vrrp-group's VIPs on its master; conntrackd answering) before and between
nodes, and reloads keepalived where its config changed.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from conftest import EDGE_TEXT as EDGE
from conftest import REPO

from fwc.cli import main
from fwc.lab.adapter import LabSource, load_source
from fwc.lab.netns import teardown
from fwc.lab.results import LabReport
from fwc.lab.running import Lab
from fwc.lab.topology import plan

pytestmark = pytest.mark.lab


def _lab(tmp_path: Path, source: LabSource, prefix: str) -> Lab:
    """The lab of SOURCE's cluster under PREFIX, logging into tmp_path/logs (not built)."""
    (tmp_path / "logs").mkdir()
    lab = Lab(plan(source.policy, source.cluster, prefix), source.files, tmp_path / "logs",
              lambda _: None)
    lab.report = LabReport(source.cluster.name, prefix, str(tmp_path / "logs"))
    return lab


def test_install_into_the_running_lab(tmp_path, capsys):
    first = tmp_path / "v1" / "edge.fw"
    first.parent.mkdir()
    first.write_text(EDGE, encoding="utf-8")
    assert main(["compile", str(first), "-o", str(tmp_path / "v1" / "output")]) == 0
    source = load_source(first, tmp_path / "v1" / "output")

    second = tmp_path / "v2" / "edge.fw"
    second.parent.mkdir()
    second.write_text(EDGE.replace(
        "    reject from any      to any      service ident",
        "    accept from server   to monitor  service ssh\n"
        "    reject from any      to any      service ident").replace(
        "member fw2 priority 100", "member fw2 priority 90").replace(
        "multicast 225.0.0.50 port 3780", "multicast 225.0.0.50 port 3781"),
        encoding="utf-8")
    assert main(["compile", str(second), "-o", str(tmp_path / "v2" / "output"),
                 "--redact-secrets"]) == 0
    (tmp_path / "secrets").write_text("vrrp_password = s3cret\n")
    capsys.readouterr()

    prefix = f"fwcin{os.getpid() % 100000}"
    lab = _lab(tmp_path, source, prefix)
    try:
        lab.build()
        lab.start_members()
        master, _ = lab.wait_master()
        assert master.name == "fw1"
        inventory = tmp_path / "inventory"
        inventory.write_text("".join(
            f"{node.name} {node.ns} mount={node.mntfile}\n" for node in lab.nodes))
        code = main(["install", "--all", "--confirm", "--transport", "netns",
                     "--inventory", str(inventory), "-o", str(tmp_path / "v2" / "output"),
                     "--secrets", str(tmp_path / "secrets"), str(second)])
        out = capsys.readouterr().out
        assert code == 0, out
        assert "installing fw2, fw1 in this order" in out
        assert "not settled" not in out
        # real cluster state, checked after each node
        assert len(re.findall(r"cluster settled: fw1 is master", out)) == 2
        # keepalived.conf changed on fw2 only (its priority): reloaded there only
        assert "fw2: reloading keepalived" in out
        assert "fw1: reloading keepalived" not in out
        # the sync port changed everywhere: conntrackd restarted on both, and answers
        assert "fw2: reloading conntrackd" in out and "fw1: reloading conntrackd" in out
        for node in lab.nodes:
            assert node.ct(["-s"], check=False).returncode == 0
            assert "Group 3781" in node.exec(["cat", "/etc/conntrackd/conntrackd.conf"]).stdout
        fw1 = lab.node("fw1")
        rules = fw1.exec(["iptables-save"]).stdout
        assert "-s 198.51.100.10/32 -d 192.0.2.20/32" in rules
        assert "priority 90" in lab.node("fw2").exec(
            ["cat", "/etc/keepalived/keepalived.conf"]).stdout
        assert lab.current_master().name == "fw1"
        for node in lab.nodes:
            assert main(["diff", "--installed", node.name, "--transport", "netns",
                         "--inventory", str(inventory), str(second)]) == 0
        capsys.readouterr()
    finally:
        teardown(prefix)


def test_install_into_the_running_active_active_lab(tmp_path, capsys):
    """loadshare, each vrrp-group on its own master: settled before and between nodes."""
    text = (REPO / "policies" / "loadshare.fw").read_text(encoding="utf-8")
    assert text.count("advert 1s") == 1
    first = tmp_path / "v1" / "loadshare.fw"
    first.parent.mkdir()
    first.write_text(text.replace("advert 1s", "advert 100ms"), encoding="utf-8")
    assert main(["compile", str(first), "-o", str(tmp_path / "v1" / "output")]) == 0
    source = load_source(first, tmp_path / "v1" / "output")
    second = tmp_path / "v2" / "loadshare.fw"
    second.parent.mkdir()
    rule = "    accept from client to firewall service ssh        in lan\n"
    assert first.read_text(encoding="utf-8").count(rule) == 1
    second.write_text(first.read_text(encoding="utf-8").replace(
        rule, rule + "    accept from web    to partner  service ssh        in dmz\n"),
        encoding="utf-8")
    assert main(["compile", str(second), "-o", str(tmp_path / "v2" / "output")]) == 0
    capsys.readouterr()

    prefix = f"fwcia{os.getpid() % 100000}"
    lab = _lab(tmp_path, source, prefix)
    try:
        lab.build()
        lab.start_members()
        lab.wait_groups()
        inventory = tmp_path / "inventory"
        inventory.write_text("".join(
            f"{node.name} {node.ns} mount={node.mntfile}\n" for node in lab.nodes))
        code = main(["install", "--all", "--confirm", "--transport", "netns",
                     "--inventory", str(inventory), "-o", str(tmp_path / "v2" / "output"),
                     str(second)])
        out = capsys.readouterr().out
        assert code == 0, out
        assert "not settled" not in out, out
        # the real state, checked after each node: each group on its own master
        assert len(re.findall(r"cluster settled: fw1 masters blue, fw2 masters red",
                              out)) == 2, out
        assert "-s 203.0.113.80/32 -d 198.51.100.140/32" in lab.node("fw2").exec(
            ["iptables-save"]).stdout
        assert {n.name: n.vips_held() for n in lab.nodes} == lab.plan.expected_vips()
    finally:
        teardown(prefix)


def test_a_conntrackd_that_fails_to_restart_is_running_again_after_the_rollback(
        tmp_path, capsys):
    """The new conntrackd.conf names a sync device fw2 does not have (nothing tests a
    conntrackd.conf before it runs): the restart fails, the install rolls back, and the
    old conntrackd, which the restart had stopped, must run again: a node whose
    rollback "restored the previous configuration" without state sync loses every
    connection at its next failover."""
    first = tmp_path / "v1" / "edge.fw"
    first.parent.mkdir()
    first.write_text(EDGE, encoding="utf-8")
    assert main(["compile", str(first), "-o", str(tmp_path / "v1" / "output")]) == 0
    source = load_source(first, tmp_path / "v1" / "output")
    second = tmp_path / "v2" / "edge.fw"
    second.parent.mkdir()
    moved = EDGE.replace("sync   eth2 203.0.113.2/24", "sync   eth7 203.0.113.2/24")
    assert moved != EDGE
    second.write_text(moved, encoding="utf-8")
    assert main(["compile", str(second), "-o", str(tmp_path / "v2" / "output")]) == 0
    capsys.readouterr()

    prefix = f"fwcic{os.getpid() % 100000}"
    lab = _lab(tmp_path, source, prefix)
    try:
        lab.build()
        lab.start_members()
        master, _ = lab.wait_master()
        fw2 = lab.node("fw2")
        assert fw2.ct(["-s"], check=False).returncode == 0
        old_conf = fw2.exec(["cat", "/etc/conntrackd/conntrackd.conf"]).stdout
        inventory = tmp_path / "inventory"
        inventory.write_text("".join(
            f"{node.name} {node.ns} mount={node.mntfile}\n" for node in lab.nodes))
        code = main(["install", "--member", "fw2", "--confirm", "--transport", "netns",
                     "--inventory", str(inventory), "-o", str(tmp_path / "v2" / "output"),
                     str(second)])
        out = capsys.readouterr().out
        assert code == 1, out
        assert "fw2: reloading conntrackd" in out
        assert "fw2: previous configuration restored" in out, out
        assert fw2.exec(["cat", "/etc/conntrackd/conntrackd.conf"]).stdout == old_conf
        # conntrackd runs again, with the old configuration
        assert fw2.ct(["-s"], check=False).returncode == 0, out
    finally:
        teardown(prefix)
