"""`fwc export ansible` run by a real ansible-playbook against two clusters of namespaces.

Four network namespaces this test creates are the members of two clusters
(policies/edge.fw: fw1, fw2; policies/branch.fw: bfw1, bfw2), each with the
policy's devices (veth pairs between the two members) and addresses and its own
/etc/netns/NAME/{fwc, keepalived, conntrackd, sysctl.d, systemd}. The inventory line `MEMBER x
netns=NAME` makes the tree run Ansible's modules inside the member through
`ip netns exec` (a python interpreter wrapper: docs/ansible.md "Members that are
namespaces"). No daemons run (as in test_install_netns.py): keepalived's reload
finds none, conntrackd's restart is skipped because the nodes share /run.

Proves: a rollout leaves no drift on any member (`fwc diff --installed`), a
second run changes nothing, and a broken file on the first member of a cluster
rolls that member back and leaves the cluster's other member untouched.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import REPO, cannot_run, compile_to, sh
from test_install_netns import _kill_namespace_processes, host_etc_lock

from fwc.cli import main
from fwc.diffing.rulesets import normalised
from fwc.install.paths import NETNS_PRIVATE_DIRS

pytestmark = pytest.mark.root

# member -> (cluster, [(device, addresses)]) as in policies/edge.fw and policies/branch.fw
MEMBERS = {
    "fw1": ("edge", [("eth0", ("192.0.2.1/24", "2001:db8:1::1/64")),
                     ("eth1", ("198.51.100.1/24",)), ("eth2", ("203.0.113.1/24",))]),
    "fw2": ("edge", [("eth0", ("192.0.2.2/24", "2001:db8:1::2/64")),
                     ("eth1", ("198.51.100.2/24",)), ("eth2", ("203.0.113.2/24",))]),
    "bfw1": ("branch", [("ens1", ("198.19.20.2/24", "2001:db8:120::2/64")),
                        ("ens2", ("198.19.1.11/24",)), ("ens3", ("198.19.255.1/29",))]),
    "bfw2": ("branch", [("ens1", ("198.19.20.3/24", "2001:db8:120::3/64")),
                        ("ens2", ("198.19.1.12/24",)), ("ens3", ("198.19.255.2/29",))]),
}
OLD_RULES = "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD DROP [0:0]\n:OUTPUT ACCEPT [0:0]\n" \
            "-A INPUT -s 198.51.100.99/32 -p tcp -m tcp --dport 22 -j ACCEPT\nCOMMIT\n"
SECRETS = "fwc_vrrp_passwords:\n  edge: s3cret\n  branch: br4nch\n"


@dataclass
class Fleet:
    ns: dict[str, str]
    policies: Path
    tree: Path
    tmp: Path

    def exec(self, member: str, command: str, check: bool = True) -> str:
        return sh("ip", "netns", "exec", self.ns[member], "sh", "-c", command, check=check)

    def rules(self, member: str) -> list[str]:
        return normalised(self.exec(member, "iptables-save"))

    def policy(self, cluster: str) -> Path:
        return self.policies / f"{cluster}.fw"


def ansible_playbook() -> str:
    found = shutil.which("ansible-playbook") or str(Path(sys.executable).parent /
                                                    "ansible-playbook")
    if not Path(found).exists():
        cannot_run("ansible-playbook is not installed (pip install ansible-core)")
    return found


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    ansible_playbook()
    with host_etc_lock():
        yield from _fleet(tmp_path)


def _fleet(tmp_path: Path) -> Iterator[Fleet]:
    prefix = f"fwca{os.getpid() % 100000}"
    ns = {member: f"{prefix}-{member}" for member in MEMBERS}
    created_etc = [d for d in NETNS_PRIVATE_DIRS if not (Path("/etc") / d).exists()]
    created_netns_dir = not Path("/etc/netns").exists()
    policies = tmp_path / "policies"
    shutil.copytree(REPO / "policies", policies)
    try:
        for name in created_etc:
            (Path("/etc") / name).mkdir()
        for member in MEMBERS:
            for name in NETNS_PRIVATE_DIRS:
                (Path("/etc/netns") / ns[member] / name).mkdir(parents=True)
            sh("ip", "netns", "add", ns[member])
            sh("ip", "-n", ns[member], "link", "set", "lo", "up")
        for first, second in (("fw1", "fw2"), ("bfw1", "bfw2")):
            # The two members' devices are the two ends of veth pairs.
            for device, _ in MEMBERS[first][1]:
                sh("ip", "-n", ns[first], "link", "add", device, "type", "veth", "peer",
                   "name", device, "netns", ns[second])
        for member, (_, links) in MEMBERS.items():
            for device, addresses in links:
                for address in addresses:
                    sh("ip", "-n", ns[member], "addr", "add", address, "dev", device, "nodad")
                sh("ip", "-n", ns[member], "link", "set", device, "up")
            sh("ip", "netns", "exec", ns[member], "iptables-restore", input=OLD_RULES)
        yield Fleet(ns, policies, tmp_path / "tree", tmp_path)
    finally:
        for member in MEMBERS:
            if Path(f"/run/netns/{ns[member]}").exists():
                _kill_namespace_processes(ns[member])
                sh("ip", "netns", "del", ns[member], check=False)
            shutil.rmtree(Path("/etc/netns") / ns[member], ignore_errors=True)
        for name in created_etc:
            with contextlib.suppress(OSError):
                (Path("/etc") / name).rmdir()
        if created_netns_dir:
            with contextlib.suppress(OSError):
                Path("/etc/netns").rmdir()


def export(fleet: Fleet) -> None:
    inventory = fleet.tmp / "ansible-inventory"
    inventory.write_text("".join(f"{m} x netns={n}\n" for m, n in fleet.ns.items()))
    assert main(["export", "ansible", str(fleet.policy("edge")), str(fleet.policy("branch")),
                 "-o", str(fleet.tree), "--redact-secrets", "--inventory", str(inventory)]) == 0


def playbook(fleet: Fleet, *extra: str) -> subprocess.CompletedProcess[str]:
    secrets = fleet.tmp / "secrets.yml"
    secrets.write_text(SECRETS)
    env = {**os.environ, "ANSIBLE_CONFIG": str(fleet.tree / "ansible.cfg"),
           "ANSIBLE_NOCOLOR": "1", "ANSIBLE_LOCAL_TEMP": str(fleet.tmp / "ansible-local"),
           "ANSIBLE_REMOTE_TEMP": str(fleet.tmp / "ansible-remote"),
           "ANSIBLE_HOME": str(fleet.tmp / "ansible-home")}
    return subprocess.run([ansible_playbook(), "site.yml", "-e", f"@{secrets}", *extra],
                          cwd=fleet.tree, env=env, capture_output=True, text=True, timeout=180)


def recap(output: str) -> dict[str, dict[str, int]]:
    """PLAY RECAP lines: {host: {ok: n, changed: n, failed: n, ...}}."""
    out: dict[str, dict[str, int]] = {}
    for host, counts in re.findall(r"^(\S+)\s+:\s+(ok=.*)$", output, re.M):
        out[host] = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", counts)}
    return out


def diff_installed(fleet: Fleet, member: str, capsys: pytest.CaptureFixture[str]) \
        -> tuple[int, str]:
    inventory = fleet.tmp / "install-inventory"
    inventory.write_text("".join(f"{m} {n}\n" for m, n in fleet.ns.items()))
    secrets = fleet.tmp / "install-secrets"
    secrets.write_text("edge.vrrp_password = s3cret\nbranch.vrrp_password = br4nch\n")
    capsys.readouterr()
    code = main(["diff", "--no-color", "--installed", member, "--transport", "netns",
                 "--inventory", str(inventory), "--secrets", str(secrets),
                 str(fleet.policy(MEMBERS[member][0]))])
    return code, capsys.readouterr().out


def status(fleet: Fleet, cluster: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    inventory = fleet.tmp / "install-inventory"
    inventory.write_text("".join(f"{m} {n}\n" for m, n in fleet.ns.items()))
    capsys.readouterr()
    code = main(["status", "--transport", "netns", "--inventory", str(inventory), "-o",
                 str(fleet.tmp / "out"), str(fleet.policy(cluster))])
    return code, capsys.readouterr().out


def test_fleet_rollout_idempotence_and_rollback(fleet: Fleet,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    export(fleet)
    syntax = playbook(fleet, "--syntax-check")
    assert syntax.returncode == 0, syntax.stdout + syntax.stderr

    first = playbook(fleet)
    assert first.returncode == 0, first.stdout[-4000:] + first.stderr[-2000:]
    counts = recap(first.stdout)
    assert set(counts) == set(MEMBERS)
    assert all(c["changed"] > 0 and c["failed"] == 0 for c in counts.values()), counts
    # One member at a time, backups before the master, cluster by cluster.
    order = re.findall(r"^TASK \[fwc : Put the files in place.*?\n(?:.*\n)*?"
                       r"changed: \[(\S+)\]", first.stdout, re.M)
    assert order == ["fw2", "fw1", "bfw2", "bfw1"], order
    for member in MEMBERS:
        code, out = diff_installed(fleet, member, capsys)
        assert code == 0, f"{member} drifted:\n{out}"
        assert "(secret" not in fleet.exec(member, "cat /etc/keepalived/keepalived.conf")
        assert "@FWCPW@" not in fleet.exec(member, "cat /etc/keepalived/keepalived.conf")
    # Each member holds fwc install's record of what runs there, which `fwc status` reads:
    # the role wrote none, so status said "no install record" (or named an earlier one).
    for cluster in ("edge", "branch"):
        assert compile_to(fleet.policy(cluster), fleet.tmp / "out", "--redact-secrets") == 0
        code, out = status(fleet, cluster, capsys)
        assert code == 0, out
        assert out.count("(fwc export ansible) from ") == 2, out
        assert "MANIFEST matches" in out and "@FWCAT@" not in out, out

    second = playbook(fleet)
    assert second.returncode == 0, second.stdout[-4000:]
    assert all(c["changed"] == 0 and c["failed"] == 0
               for c in recap(second.stdout).values()), recap(second.stdout)

    # A new version of branch.fw, and a broken forwarding.conf for bfw2 (the backup,
    # installed first): its apply fails after its rules loaded, so it must roll back,
    # and bfw1 must not be touched.
    branch = fleet.policy("branch")
    branch.write_text(branch.read_text().replace(
        "policy branch {",
        "policy branch {\n    accept from any to printer service web in uplink"))
    before = {m: fleet.rules(m) for m in ("bfw1", "bfw2")}
    files_before = fleet.exec("bfw1", "cat /etc/fwc/iptables.rules")
    export(fleet)
    broken = fleet.tree / "roles/fwc/files/branch/bfw2/forwarding.conf"
    broken.write_text(broken.read_text() + "net.ipv4.fwc_no_such_key = 1\n")
    third = playbook(fleet)
    assert third.returncode != 0
    counts = recap(third.stdout)
    assert counts["bfw2"]["failed"] == 1 and counts["bfw2"]["rescued"] == 1, counts
    assert "the previous configuration was restored" in third.stdout
    assert fleet.rules("bfw2") == before["bfw2"]
    assert fleet.exec("bfw2", "[ -e /etc/fwc/snapshot/rolled-back ] && echo yes") == "yes\n"
    assert fleet.rules("bfw1") == before["bfw1"]
    assert fleet.exec("bfw1", "cat /etc/fwc/iptables.rules") == files_before
    assert "bfw1" not in counts or counts["bfw1"]["changed"] == 0, counts
    # The rolled-back member runs the previous version: no drift against the old policy.
    branch.write_text((REPO / "policies/branch.fw").read_text())
    code, out = diff_installed(fleet, "bfw2", capsys)
    assert code == 0, out


def test_check_mode_changes_nothing_and_the_install_retires_nftables(
        fleet: Fleet, capsys: pytest.CaptureFixture[str]) -> None:
    """`--check` reported `changed=0` on nodes where every file would change (each step is
    a command, which check mode skips), so a reviewer saw nothing to do. And the role never
    wrote retire.sh: after a switch from fwc's nftables install, the old `inet fwc` table
    kept filtering next to the new iptables rules with the old policy."""
    export(fleet)
    # fw2 runs fwc's earlier nftables install (as `fwc install` of a nftables tree leaves it).
    fleet.exec("fw2", "nft add table inet fwc && nft add chain inet fwc input "
                      "'{ type filter hook input priority 0; policy accept; }' && "
                      "mkdir -p /etc/fwc && printf '# Generated by fwc\\n' "
                      "> /etc/fwc/nftables.nft")
    state = ("ls /etc/fwc /etc/keepalived /etc/sysctl.d; iptables-save | grep -v '^#'; "
             "nft list tables; cat /etc/fwc/install.owner 2>/dev/null; :")
    before = {m: fleet.exec(m, state) for m in ("fw1", "fw2")}

    check = playbook(fleet, "--check", "--limit", "fwc_edge")
    assert check.returncode == 0, check.stdout[-4000:] + check.stderr[-2000:]
    counts = recap(check.stdout)
    assert all(counts[m]["changed"] > 0 for m in ("fw1", "fw2")), counts
    assert re.search(r"fw2 would change: iptables\.rules, .*keepalived\.conf.*; "
                     r"would reload: .*keepalived", check.stdout), check.stdout
    assert {m: fleet.exec(m, state) for m in ("fw1", "fw2")} == before

    first = playbook(fleet, "--limit", "fwc_edge")
    assert first.returncode == 0, first.stdout[-4000:] + first.stderr[-2000:]
    # The confirmation removed what fwc's nftables install ran, as fwc install's does.
    assert "table inet fwc" not in fleet.exec("fw2", "nft list tables")
    assert fleet.exec("fw2", "[ -e /etc/fwc/nftables.nft ] || echo gone") == "gone\n"

    again = playbook(fleet, "--check", "--limit", "fwc_edge")
    assert again.returncode == 0, again.stdout[-4000:]
    assert all(c["changed"] == 0 for c in recap(again.stdout).values()), recap(again.stdout)
    assert "would change: " not in again.stdout
