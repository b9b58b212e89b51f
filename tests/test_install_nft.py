"""`fwc install` and `fwc diff --installed` for `backend nftables`, in namespaces (root).

The two-member namespace lab of test_install_netns.py (its nodes start with
someone else's iptables rules, OLD_RULES); each test also loads a foreign
nftables table, `table inet other`, which no install, rollback or confirmation
may touch. fwc's part of the node is the table `inet fwc` and its files.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import compile_to, sh
from test_install_netns import (
    OLD_KEEPALIVED,
    OLD_RULES,
    POLICY,
    FakeSettle,
    Lab,
    Node,
    _lab,
    blocked_policy,
    host_etc_lock,
)

from fwc.backend.files import FILES
from fwc.cli import build_parser, main
from fwc.commands import install as install_command
from fwc.install import scripts
from fwc.install.paths import RETIRED

pytestmark = pytest.mark.root

FOREIGN = "table inet other {\n\tchain input {\n\t\ttype filter hook input priority 10; " \
          "policy accept;\n\t\tip saddr 198.51.100.77 counter\n\t}\n}\n"
_COUNTER = re.compile(r"counter packets \d+ bytes \d+")


def with_backend(text: str, word: str = "nftables") -> str:
    brace = text.index("{", text.index("\ncluster ") + 1)
    return text[:brace + 1] + f"\n    backend {word}" + text[brace + 1:]


def compiled(policy: Path, output: Path, *extra: str) -> Path:
    """OUTPUT, once `fwc compile POLICY -o OUTPUT EXTRA...` succeeded there."""
    assert compile_to(policy, output, *extra) == 0
    return output


@pytest.fixture(scope="module")
def nft_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """edge.fw with `backend nftables`, and its compiled tree next to it (out/)."""
    base = tmp_path_factory.mktemp("edge-nft")
    policy = base / "src" / "edge.fw"
    policy.parent.mkdir()
    policy.write_text(with_backend(POLICY.read_text()))
    compiled(policy, base / "out", "--redact-secrets")
    return policy


@pytest.fixture
def lab(tmp_path: Path, nft_source: Path) -> Iterator[Lab]:
    with host_etc_lock():
        for lab in _lab(tmp_path, nft_source.parent.parent / "out"):
            for node in lab.nodes.values():
                node.exec("nft -f -", input=FOREIGN)
            yield lab


def install(lab: Lab, policy: Path, *extra: str, output: Path | None = None) -> int:
    args = build_parser().parse_args([
        "install", "--transport", "netns", "--inventory", str(lab.inventory),
        "-o", str(output or lab.output), "--secrets", str(lab.secrets), *extra, str(policy)])
    return install_command.run(args, check=FakeSettle())


def diff_installed(lab: Lab, policy: Path, member: str) -> int:
    return main(["diff", "--no-color", "--installed", member, "--transport", "netns",
                 "--inventory", str(lab.inventory), "--secrets", str(lab.secrets),
                 str(policy)])


def fwc_table(node: Node) -> str:
    """fwc's table as the node lists it, without counter values ("" when absent)."""
    return _COUNTER.sub("counter", node.exec(scripts.nft_list_table()))


def other_table(node: Node) -> str:
    return node.exec("nft list table inet other")


def test_nft_install_replaces_only_fwcs_table_and_diff_installed_sees_only_it(
        lab, nft_source, capsys):
    fw2 = lab.nodes["fw2"]
    iptables_before, other_before = fw2.rules(), other_table(fw2)
    assert fwc_table(fw2) == ""
    assert install(lab, nft_source, "--member", "fw2", "--confirm") == 0
    out = capsys.readouterr().out
    assert "fw2: confirmed" in out
    listed = fwc_table(fw2)
    assert "chain filter-INPUT-v4 {" in listed and 'comment "fwc auto: established"' in listed
    assert (fw2.etc / "fwc" / "nftables.nft").read_text() == \
        (lab.output / "edge" / "fw2" / "nftables.nft").read_text()
    assert (fw2.etc / "fwc" / "failsafe.nft").exists()
    assert not (fw2.etc / "fwc" / "iptables.rules").exists()
    # Someone else's iptables rules and nftables table: untouched.
    assert fw2.rules() == iptables_before and "old-chain" in "\n".join(fw2.rules())
    assert other_table(fw2) == other_before
    # There was no table before: the snapshot says so by having none.
    assert not (fw2.etc / "fwc" / "snapshot" / "nft.save").exists()
    assert 'auth_pass "s3cret"' in (fw2.etc / "keepalived" / "keepalived.conf").read_text()
    assert sh("ip", "netns", "pids", fw2.ns).split() == []

    assert diff_installed(lab, nft_source, "fw2") == 0, capsys.readouterr().out
    capsys.readouterr()
    # Another program changes its own table or the iptables rules: not fwc's drift.
    fw2.exec("nft add rule inet other input ip saddr 198.51.100.78 counter drop")
    fw2.exec("iptables -A INPUT -s 198.51.100.79/32 -j DROP")
    assert diff_installed(lab, nft_source, "fw2") == 0, capsys.readouterr().out
    capsys.readouterr()
    # A rule added by hand to fwc's own table is.
    fw2.exec("nft insert rule inet fwc filter-INPUT-v4 ip saddr 192.0.2.99 tcp dport 2222 "
             "accept")
    assert diff_installed(lab, nft_source, "fw2") == 1
    out = capsys.readouterr().out
    assert "drift: live nftables table inet fwc" in out
    assert "+\t\tip saddr 192.0.2.99 tcp dport 2222 accept" in out
    assert "s3cret" not in out
    # fw1 has nothing of fwc's yet: its whole table is missing.
    assert diff_installed(lab, nft_source, "fw1") == 1
    out = capsys.readouterr().out
    assert "drift: live nftables table inet fwc" in out and "-table inet fwc {" in out


def test_nft_rollback_deletes_a_new_table_and_restores_a_previous_one(
        lab, nft_source, tmp_path, capsys):
    fw2 = lab.nodes["fw2"]
    other_before, iptables_before = other_table(fw2), fw2.rules()
    # Not confirmed on a node without fwc's table: the table goes again.
    assert install(lab, nft_source, "--member", "fw2", "--confirm-timeout", "1") == 1
    assert "previous configuration restored" in capsys.readouterr().out
    assert fwc_table(fw2) == ""
    assert not (fw2.etc / "fwc" / "nftables.nft").exists()
    assert (fw2.etc / "keepalived" / "keepalived.conf").read_text() == OLD_KEEPALIVED
    assert other_table(fw2) == other_before and fw2.rules() == iptables_before

    # Confirmed, then a changed policy that is not confirmed: the first table is back.
    assert install(lab, nft_source, "--member", "fw2", "--confirm") == 0
    first = fwc_table(fw2)
    changed = tmp_path / "changed" / "edge.fw"
    changed.parent.mkdir()
    changed.write_text(nft_source.read_text().replace(
        "policy edge {\n", "policy edge {\n    drop   from 198.51.100.66 to any\n"))
    output = compiled(changed, tmp_path / "changed-out")
    capsys.readouterr()
    assert install(lab, changed, "--member", "fw2", "--confirm-timeout", "1",
                   output=output) == 1
    assert "previous configuration restored" in capsys.readouterr().out
    assert (fw2.etc / "fwc" / "snapshot" / "nft.save").exists()
    assert fwc_table(fw2) == first
    assert "198.51.100.66" not in first
    assert other_table(fw2) == other_before and fw2.rules() == iptables_before


def test_nft_install_refused_before_anything_changes_without_nft(lab, nft_source, capsys,
                                                                 monkeypatch):
    # A PATH holding every program of this machine except nft.
    bin_dir = lab.tmp / "no-nft"
    bin_dir.mkdir()
    for directory in os.environ["PATH"].split(os.pathsep):
        if not Path(directory).is_dir():
            continue
        for program in Path(directory).iterdir():
            target = bin_dir / program.name
            if program.name != "nft" and not target.exists() and os.access(program, os.X_OK):
                target.symlink_to(program)
    fw2 = lab.nodes["fw2"]
    before = other_table(fw2)
    monkeypatch.setenv("PATH", str(bin_dir))
    assert shutil.which("nft") is None
    assert install(lab, nft_source, "--member", "fw2", "--confirm") == 1
    captured = capsys.readouterr()
    assert "fw2: preflight failed: not installed on this node: nft (for nftables.nft): " \
        "install them first (not changed)" in captured.err
    assert "fw2: copying" not in captured.out
    monkeypatch.undo()
    assert fwc_table(fw2) == "" and other_table(fw2) == before
    assert sorted(p.name for p in (fw2.etc / "fwc").iterdir()) == []
    assert (fw2.etc / "keepalived" / "keepalived.conf").read_text() == OLD_KEEPALIVED


def test_switch_from_iptables_keeps_the_old_rules_until_the_nft_table_is_confirmed(
        lab, nft_source, tmp_path, capsys, monkeypatch):
    """iptables (with ipsets) -> nftables: old rules stay through a rollback and while
    the new table is on probation; the confirmation empties fwc's old tables."""
    fw1 = lab.nodes["fw1"]
    policy = blocked_policy(tmp_path)  # edge plus a group that becomes an ipset
    iptables_out = compiled(policy, tmp_path / "ipt")
    assert install(lab, policy, "--member", "fw1", "--confirm", output=iptables_out) == 0
    fwc_rules = fw1.rules()
    assert "--match-set fwc4-blocked src" in "\n".join(fwc_rules)
    assert fw1.exec("ipset list -n").split() == ["fwc4-blocked"]
    other_before = other_table(fw1)

    nft_out = compiled(policy, tmp_path / "nft", "--backend", "nftables")
    capsys.readouterr()
    assert install(lab, policy, "--member", "fw1", "--confirm-timeout", "1",
                   output=nft_out) == 1
    captured = capsys.readouterr()
    assert "installing the nftables files" in captured.err  # --backend, not the policy's
    assert "previous configuration restored" in captured.out
    assert fw1.rules() == fwc_rules and fwc_table(fw1) == ""
    assert (fw1.etc / "fwc" / "iptables.rules").exists()

    seen: dict[str, object] = {}

    def confirm_after_looking(node: object, seconds: float) -> bool:
        seen["iptables"], seen["nft"] = fw1.rules(), fwc_table(fw1)
        return True

    monkeypatch.setattr(install_command, "automatic_confirmer", confirm_after_looking)
    assert install(lab, policy, "--member", "fw1", "--confirm", output=nft_out) == 0
    out = capsys.readouterr().out
    # On probation both ran: the old iptables rules and the new table.
    assert seen["iptables"] == fwc_rules and "@fwc4." in str(seen["nft"])
    # Confirmed: fwc's old tables are empty, its sets and iptables files gone.
    assert "iptables: emptied the tables of fwc's previous iptables install: " in out
    # (normalised: a table with no rule and ACCEPT policies is as if never loaded)
    assert fw1.rules() == [] and fw1.rules("ip6tables-save") == []
    assert "-A " not in fw1.exec("iptables-save") and ":FORWARD ACCEPT" in \
        fw1.exec("iptables-save")
    assert fw1.exec("ipset list -n").split() == []
    assert not any((fw1.etc / "fwc" / name).exists() for name in (
        "iptables.rules", "ip6tables.rules", "ipsets.rules", "failsafe.rules",
        "failsafe6.rules"))
    assert "@fwc4." in fwc_table(fw1)
    assert other_table(fw1) == other_before
    assert (fw1.etc / "fwc" / "snapshot" / "retired").exists()
    assert sh("ip", "netns", "pids", fw1.ns).split() == []


def test_switch_back_to_iptables_deletes_fwcs_table_once_confirmed(lab, nft_source, tmp_path,
                                                                   capsys):
    fw1 = lab.nodes["fw1"]
    other_before = other_table(fw1)
    assert install(lab, nft_source, "--member", "fw1", "--confirm") == 0
    assert fwc_table(fw1) != ""
    iptables_out = compiled(nft_source, tmp_path / "ipt", "--backend", "iptables")
    capsys.readouterr()
    assert install(lab, nft_source, "--member", "fw1", "--confirm-timeout", "1",
                   output=iptables_out) == 1
    assert fwc_table(fw1) != "" and (fw1.etc / "fwc" / "nftables.nft").exists()
    assert install(lab, nft_source, "--member", "fw1", "--confirm", output=iptables_out) == 0
    assert "nft: deleted the table inet fwc of fwc's previous nftables install" in \
        capsys.readouterr().out
    assert fwc_table(fw1) == "" and other_table(fw1) == other_before
    assert "fwc auto: established" in "\n".join(fw1.rules())
    assert not (fw1.etc / "fwc" / "nftables.nft").exists()
    assert not (fw1.etc / "fwc" / "failsafe.nft").exists()


def test_confirmation_by_hand_on_the_node_retires_the_old_backend_too(lab, nft_source,
                                                                      tmp_path):
    """`touch /etc/fwc/snapshot/confirmed` on the node: the watchdog does what fwc's
    confirmation would have done (the node steps of an install, run by hand)."""
    fw2 = lab.nodes["fw2"]
    iptables_out = compiled(nft_source, tmp_path / "ipt", "--backend", "iptables")
    assert install(lab, nft_source, "--member", "fw2", "--confirm", output=iptables_out) == 0
    assert "-A " in "\n".join(fw2.rules())
    files = [f for f in FILES if f.name == "nftables.nft"]
    fw2.exec(scripts.take_lock("t1", 60))
    fw2.exec(scripts.refuse_if_pending())
    fw2.exec(scripts.stage(files[0]),
             input=(lab.output / "edge" / "fw2" / "nftables.nft").read_text())
    fw2.exec(scripts.snapshot(files, []))
    fw2.exec(scripts.write(scripts.ROLLBACK_SCRIPT, 0o700),
             input=scripts.rollback_script(files, [], token="t1"))
    fw2.exec(scripts.write(scripts.RETIRE_SCRIPT, 0o700), input=scripts.retire_script(files))
    fw2.exec(scripts.arm_watchdog(30, token="t1"))
    fw2.exec(scripts.apply(files))
    assert "-A " in "\n".join(fw2.rules()) and fwc_table(fw2) != ""
    fw2.exec(f"touch {scripts.CONFIRMED}")
    fw2.exec(f"i=0; while [ ! -e {RETIRED} ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done")
    assert (fw2.etc / "fwc" / "snapshot" / "retired").exists()
    assert "-A " not in "\n".join(fw2.rules())
    assert fwc_table(fw2) != ""
    assert not (fw2.etc / "fwc" / "iptables.rules").exists()
    # The watchdog ended and gave the node lock back.
    deadline = time.monotonic() + 10
    while sh("ip", "netns", "pids", fw2.ns).split() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert sh("ip", "netns", "pids", fw2.ns).split() == []
    assert not (fw2.etc / "fwc" / "install.owner").exists()
    fw2.exec("flock -n /etc/fwc/install.lock true")


def test_boot_script_of_an_nft_install_loads_the_table(lab, nft_source, capsys):
    fw1 = lab.nodes["fw1"]
    assert install(lab, nft_source, "--member", "fw1", "--confirm") == 0
    installed = fwc_table(fw1)
    fw1.exec(scripts.nft_drop_table())
    fw1.exec("sysctl -q -w net.ipv4.ip_forward=0")
    assert fwc_table(fw1) == ""
    fw1.exec("sh /etc/fwc/fwc-firewall.sh")
    assert fwc_table(fw1) == installed
    assert fw1.exec("sysctl -n net.ipv4.ip_forward").strip() == "1"
    assert "hook input" in other_table(fw1)


def reboot(node: Node) -> None:
    """What a reboot does to a namespace node: its processes (the watchdog, the lock
    holder) are gone, the kernel starts without rules, sets or forwarding, the other
    programs' rules come back (their iptables rules, their table), and fwc's boot
    script runs."""
    for pid in sh("ip", "netns", "pids", node.ns).split():
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(pid), signal.SIGKILL)
    node.exec("nft flush ruleset && ipset destroy && sysctl -q -w net.ipv4.ip_forward=0")
    node.exec("iptables-restore", input=OLD_RULES)
    node.exec("nft -f -", input=FOREIGN)
    node.exec("sh /etc/fwc/fwc-firewall.sh")


@pytest.mark.parametrize("first, then", [("iptables", "nftables"), ("nftables", "iptables")])
def test_a_switch_rolled_back_after_a_reboot_on_probation_loads_the_old_rules_again(
        lab, nft_source, tmp_path, capsys, monkeypatch, first, then):
    """The node reboots while a switch of backend is on probation: the boot script (the
    new backend's) rolls the switch back, and the old backend's boot script loads the
    old rules, never the new ones. fwc's own rollback after that finds it done, and
    what the next boot loads is the old backend's again."""
    fw1 = lab.nodes["fw1"]
    policy = blocked_policy(tmp_path)
    old_out = compiled(policy, tmp_path / first, "--backend", first)
    new_out = compiled(policy, tmp_path / then, "--backend", then)
    assert install(lab, policy, "--member", "fw1", "--confirm", output=old_out) == 0
    old_rules, old_table = fw1.rules(), fwc_table(fw1)
    old_ip6 = fw1.rules("ip6tables-save")
    old_sets = sorted(fw1.exec("ipset list -n").split())
    assert "fwc auto: established" in "\n".join(old_rules) + old_table

    after_boot: list[object] = []

    def reboot_on_probation(node: object, seconds: float) -> bool:
        reboot(fw1)
        after_boot.extend([fw1.rules(), fwc_table(fw1),
                           (fw1.etc / "fwc" / "snapshot" / "rolled-back").exists()])
        return False  # never confirmed: rollback.sh runs, as the admin would run it

    monkeypatch.setattr(install_command, "automatic_confirmer", reboot_on_probation)
    capsys.readouterr()
    assert install(lab, policy, "--member", "fw1", "--confirm", output=new_out) == 1
    assert "previous configuration restored" in capsys.readouterr().out
    assert after_boot == [old_rules, old_table, True]  # the boot rolled it back
    assert fw1.rules() == old_rules and fw1.rules("ip6tables-save") == old_ip6
    assert fwc_table(fw1) == old_table
    assert sorted(fw1.exec("ipset list -n").split()) == old_sets
    # ... and what the next boot loads is the old backend's again.
    reboot(fw1)
    assert fw1.rules() == old_rules and fwc_table(fw1) == old_table
    assert fw1.exec("sysctl -n net.ipv4.ip_forward").strip() == "1"


def test_a_confirmation_by_hand_that_comes_while_fwc_rolls_back_retires_nothing(
        lab, nft_source, tmp_path):
    """fwc rolls a switch back (no confirmation in time) and, while it does, someone
    touches the confirmation marker on the node: the watchdog, seeing it, must not
    retire the old backend that the rollback just put back (that leaves neither)."""
    fw2 = lab.nodes["fw2"]
    iptables_out = compiled(nft_source, tmp_path / "ipt", "--backend", "iptables")
    assert install(lab, nft_source, "--member", "fw2", "--confirm", output=iptables_out) == 0
    old_rules = fw2.rules()
    files = [f for f in FILES if f.name == "nftables.nft"]
    fw2.exec(scripts.take_lock("t1", 60))
    fw2.exec(scripts.refuse_if_pending())
    fw2.exec(scripts.stage(files[0]),
             input=(lab.output / "edge" / "fw2" / "nftables.nft").read_text())
    fw2.exec(scripts.snapshot(files, []))
    fw2.exec(scripts.write(scripts.ROLLBACK_SCRIPT, 0o700),
             input=scripts.rollback_script(files, [], token="t1"))
    fw2.exec(scripts.write(scripts.RETIRE_SCRIPT, 0o700), input=scripts.retire_script(files))
    fw2.exec(scripts.arm_watchdog(30, token="t1"))
    fw2.exec(scripts.apply(files))
    watchdog = int((fw2.etc / "fwc" / "snapshot" / "watchdog.pid").read_text().split()[0])
    # The watchdog polls between the rollback's end and the touch (made certain here).
    os.kill(watchdog, signal.SIGSTOP)
    try:
        fw2.exec(f"sh {scripts.ROLLBACK_SCRIPT} && touch {scripts.CONFIRMED}")
    finally:
        os.kill(watchdog, signal.SIGCONT)
    deadline = time.monotonic() + 10
    while Path(f"/proc/{watchdog}").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not Path(f"/proc/{watchdog}").exists()
    assert fw2.rules() == old_rules and fwc_table(fw2) == ""
    assert (fw2.etc / "fwc" / "iptables.rules").exists()
    assert not (fw2.etc / "fwc" / "snapshot" / "retired").exists()
