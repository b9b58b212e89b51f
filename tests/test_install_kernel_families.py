"""`fwc install` and the Ansible role on a kernel without IPv6 (booted with ipv6.disable=1).

Every member gets IPv6 rules, also of a cluster without IPv6 addresses (they drop what
reaches the node's own services over the addresses the kernel gives itself). Where the
kernel has no IPv6, /proc/sys/net/ipv6 does not exist and ip6tables-restore and
ip6tables-save fail: a cluster without IPv6 addresses must still install there (its
IPv6 files are not tested, loaded, saved or emptied), a cluster with them must not
(`fwc.backend.files.kernel_guard`).

The step scripts run for real (POSIX sh) against stand-ins first in PATH, every node
path moved under a temporary directory (as tests/test_boot_script_fakes.py does for
the boot script): the stand-in ip6tables tools fail unless the fake /proc/sys/net/ipv6
exists, as the real ones do on such a kernel.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from conftest import REPO, file_tree

from fwc.backend.files import FILES
from fwc.backend.output import compile_policy
from fwc.cli import main
from fwc.install import scripts
from fwc.model import Cluster
from fwc.model.vocabulary import Backend
from fwc.pipeline import analyse

IPV6_DIR = "/proc/sys/net/ipv6"  # (fwc.backend.files.KERNEL_FAMILY_PATHS[6])
TOOLS = ("iptables-restore", "ip6tables-restore", "iptables-save", "ip6tables-save")


def _member(policy: str) -> tuple[Cluster, dict[str, str]]:
    """The cluster of example POLICY and its first member's compiled files."""
    analysis = analyse(REPO / "policies" / policy)
    assert analysis.policy is not None
    [cluster] = analysis.policy.clusters
    [output] = compile_policy(analysis.policy)
    member = cluster.members[0].name
    return cluster, {f.path.split("/", 1)[1]: f.content.decode() for f in output.files
                     if f.path.startswith(member + "/")}


class Node:
    """A stand-in node under ROOT: /etc and /proc/sys/net/ipv6 moved there, the packet
    filter's tools, sysctl, keepalived and ipset stand-ins first in PATH."""

    def __init__(self, root: Path, *, ipv6: bool) -> None:
        self.root, self.called = root, root / "called"
        bin_dir = root / "bin"
        for d in (bin_dir, root / "etc/fwc/snapshot", root / "etc/fwc/staging"):
            d.mkdir(parents=True)
        if ipv6:
            (root / IPV6_DIR.lstrip("/")).mkdir(parents=True)
        self.called.write_text("")
        for tool in TOOLS:
            kernel = f"[ -d {root}{IPV6_DIR} ] || exit 1\n" if tool.startswith("ip6") else ""
            body = "cat >/dev/null\n" if tool.endswith("-restore") else "echo '*filter'\n"
            self._fake(bin_dir, tool, f"echo {tool} \"$@\" >> {self.called}\n{kernel}{body}")
        for tool in ("sysctl", "keepalived", "ipset", "logger"):
            self._fake(bin_dir, tool, "exit 0")
        self.env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}

    @staticmethod
    def _fake(bin_dir: Path, name: str, body: str) -> None:
        path = bin_dir / name
        path.write_text(f"#!/bin/sh\n{body}\n")
        path.chmod(0o755)

    def stage(self, files: dict[str, str]) -> None:
        for name, text in files.items():
            (self.root / scripts.STAGING.lstrip("/") / name).write_text(text)

    def run(self, script: str) -> subprocess.CompletedProcess[str]:
        text = script.replace("/etc/", f"{self.root}/etc/").replace(IPV6_DIR,
                                                                     f"{self.root}{IPV6_DIR}")
        return subprocess.run(["sh", "-c", text], capture_output=True, text=True,
                              env=self.env, timeout=60, check=False)

    def tools(self) -> list[str]:
        return [line.split()[0] for line in self.called.read_text().splitlines()]


def _rows(files: dict[str, str]):
    return [f for f in FILES if f.name in files]


@pytest.mark.parametrize("ipv6", [True, False], ids=["ipv6", "no-ipv6"])
def test_an_ipv4_only_cluster_tests_and_applies_where_the_kernel_has_no_ipv6(tmp_path, ipv6):
    cluster, files = _member("loadshare.fw")
    assert cluster.families == frozenset({4}) and "ip6tables.rules" in files
    node = Node(tmp_path, ipv6=ipv6)
    node.stage(files)
    rows = _rows(files)
    tested = node.run(scripts.test_ruleset(rows, cluster.families))
    assert tested.returncode == 0, tested.stderr
    assert node.run(scripts.snapshot(rows, [])).returncode == 0
    applied = node.run(scripts.apply(rows, cluster.families))
    assert applied.returncode == 0, applied.stderr
    six = [tool for tool in node.tools() if tool.startswith("ip6")]
    saved = (tmp_path / "etc/fwc/snapshot/ip6tables.save").exists()
    if ipv6:  # tested (ip6tables.rules, failsafe6.rules), saved, loaded
        assert six == ["ip6tables-restore", "ip6tables-restore", "ip6tables-save",
                       "ip6tables-restore"] and saved
    else:
        assert six == [] and not saved
        assert f"{IPV6_DIR}: ip6tables.rules not loaded" in applied.stderr
    assert (tmp_path / "etc/fwc/ip6tables.rules").read_text() == files["ip6tables.rules"]
    assert node.tools().count("iptables-restore") == 3  # test x2 (rules, failsafe), load


def test_a_cluster_with_ipv6_is_refused_where_the_kernel_has_no_ipv6(tmp_path):
    """Its IPv6 rules are not optional: the test step fails, nothing is applied."""
    cluster, files = _member("edge.fw")
    assert 6 in cluster.families
    node = Node(tmp_path, ipv6=False)
    node.stage(files)
    assert node.run(scripts.test_ruleset(_rows(files), cluster.families)).returncode != 0
    # and so does the apply of a node that got past it (set -e: the load fails)
    assert node.run(scripts.apply(_rows(files), cluster.families)).returncode != 0


def test_retiring_iptables_where_the_kernel_has_no_ipv6_empties_what_it_can(tmp_path):
    """A switch to nftables retires fwc's iptables files: on a kernel without IPv6 there is
    no IPv6 table to empty (ip6tables-restore fails there), and the files still go."""
    node = Node(tmp_path, ipv6=False)
    etc = tmp_path / "etc/fwc"
    for name in ("iptables.rules", "ip6tables.rules", "failsafe.rules", "failsafe6.rules"):
        (etc / name).write_text("*filter\nCOMMIT\n")
    retire = node.run(scripts.retire_script([f for f in FILES
                                             if f.backend in (None, Backend.NFTABLES)]))
    assert retire.returncode == 0, retire.stderr
    assert not any((etc / name).exists() for name in ("iptables.rules", "ip6tables.rules"))
    assert "ip6tables-restore" not in node.tools() and "iptables-restore" in node.tools()


def test_install_and_the_ansible_role_skip_by_the_cluster_s_families(tmp_path, capsys):
    """`fwc install` (its dry run prints the steps) and the exported role's step scripts
    guard the IPv6 files of a cluster without IPv6 addresses, and only those."""
    text = (REPO / "policies" / "loadshare.fw").read_text(encoding="utf-8")
    text = text.replace("member fw1 priority 150 {", 'member fw1 priority 150 ssh "192.0.2.1" {')
    text = text.replace("member fw2 priority 100 {", 'member fw2 priority 100 ssh "192.0.2.2" {')
    policy = tmp_path / "loadshare.fw"
    policy.write_text(text, encoding="utf-8")
    assert main(["compile", str(policy), "-o", str(tmp_path / "output")]) == 0
    capsys.readouterr()
    assert main(["install", "-o", str(tmp_path / "output"), "--member", "fw1", "--dry-run",
                 "--ssh", "ssh -F /dev/null", str(policy)]) == 0
    out = capsys.readouterr().out
    for line in (f"if [ -d {IPV6_DIR} ]; then ip6tables-restore --test < "
                 f"{scripts.STAGING}/ip6tables.rules; else",
                 f"if [ -d {IPV6_DIR} ]; then ip6tables-restore --test < "
                 f"{scripts.STAGING}/failsafe6.rules; else",
                 f"if [ -d {IPV6_DIR} ]; then ip6tables-restore < /etc/fwc/ip6tables.rules; "
                 "else"):
        assert line in out, line
    assert "iptables-restore < /etc/fwc/iptables.rules\n" in out  # IPv4: always
    assert main(["export", "ansible", str(policy), str(REPO / "policies" / "branch.fw"),
                 "-o", str(tmp_path / "tree"), "--redact-secrets", "--inventory",
                 str(_inventory(tmp_path))]) == 0
    tree = file_tree(tmp_path / "tree")
    for name, guarded in (("loadshare/fw1", True), ("branch/bfw1", False)):
        steps = {step: tree[f"roles/fwc/files/{name}/steps/{step}"][0].decode()
                 for step in ("test.sh", "apply.sh")}
        for step, body in steps.items():
            assert (f"if [ -d {IPV6_DIR} ]" in body) is guarded, (name, step)
            assert "ip6tables-restore" in body, (name, step)


def _inventory(tmp_path: Path) -> Path:
    path = tmp_path / "inventory"  # (branch.fw has IPv6 addresses)
    path.write_text("fw1 192.0.2.1\nfw2 192.0.2.2\nbfw1 192.0.2.11\nbfw2 192.0.2.12\n")
    return path


def test_the_guard_is_the_one_answer_of_the_files_table():
    """Only the IPv6 rows of a cluster without IPv6 addresses are skipped; never an IPv4
    or nftables row (IPv4 is in every kernel, and the inet table loads without IPv6)."""
    from fwc.backend.files import KERNEL_FAMILY_PATHS, kernel_guard

    assert KERNEL_FAMILY_PATHS[6] == IPV6_DIR
    assert {f.name for f in FILES if kernel_guard(f, {4})} == {"ip6tables.rules",
                                                                 "failsafe6.rules"}
    assert not [f for f in FILES if kernel_guard(f, {4, 6})]


class _DiffNode:
    """`fwc diff --installed`'s view of a node that runs what was compiled for it (IPv4),
    and IPv6 rules only where its kernel has IPv6 (IPV6)."""

    member = "fw1"

    def __init__(self, compiled: dict[str, str], *, ipv6: bool) -> None:
        self.compiled, self.ipv6 = compiled, ipv6

    def run(self, command: str, input: str | None = None, timeout: float = 60):
        from fwc.backend.files import BY_NAME
        from fwc.install.transport import Result

        words = command.split()
        if words[0] == "[":  # the kernel test
            return Result(0 if self.ipv6 or words[2] != IPV6_DIR else 1, "", "")
        if words[0] == "cat":
            by_path = {BY_NAME[name].path: text for name, text in self.compiled.items()}
            return Result(0, by_path.get(words[1], "(fwc: absent)\n"), "")
        if words[0] == "unshare":
            return Result(0, "", "")  # no canonical form here: compared as compiled
        if words[0].startswith("ip6tables"):
            return Result(0, self.compiled["ip6tables.rules"] if self.ipv6 else "", "")
        if words[0].startswith("iptables"):
            return Result(0, self.compiled["iptables.rules"], "")
        return Result(0, "", "")


def test_diff_installed_expects_no_ipv6_rules_where_the_kernel_has_no_ipv6():
    from fwc.diffing import installed

    cluster, files = _member("loadshare.fw")
    assert installed.compare(_DiffNode(files, ipv6=True), files, families=cluster.families) \
        == []
    assert installed.compare(_DiffNode(files, ipv6=False), files,
                             families=cluster.families) == []
    # a cluster with IPv6 addresses needs them: their absence is drift
    drift = installed.compare(_DiffNode(files, ipv6=False), files, families={4, 6})
    assert [title for title, _ in drift] == ["live ip6tables rules"]
