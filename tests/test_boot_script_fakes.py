"""fwc-firewall.sh fails closed, run for real (POSIX sh) against stand-in commands.

The stand-ins (sysctl, iptables-restore, nft, ...) come first in PATH and record what
they are asked; sysctl writes a fake /proc/sys tree and the rules files are copies in a
temporary directory, so the test touches neither the host's firewall nor its sysctls.
A stand-in restore behaves as the real one does where it matters here: an empty input
loads nothing and exits 0 (`iptables-restore --test < /dev/null`, `nft -c -f
/dev/null`), an input holding FAIL exits 1.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import BOOT_ID, REPO, watchdog_record

from fwc.backend.files import BY_NAME, FILES
from fwc.backend.output import compile_policy
from fwc.install import scripts
from fwc.pipeline import analyse

SHELLS = [s for s in ("sh", "dash") if shutil.which(s)]
EARLIER_BOOT = "0b0a4c5e-6d1e-4f3a-9e7d-2c1b0a998877"


def _member_files(policy: str) -> dict[str, str]:
    analysis = analyse(REPO / "policies" / policy)
    assert analysis.policy is not None
    (cluster,) = compile_policy(analysis.policy)
    first = min(f.path for f in cluster.files if f.path.endswith("/fwc-firewall.sh"))
    first = first.split("/")[0]
    return {f.path.split("/", 1)[1]: f.content.decode() for f in cluster.files
            if f.path.startswith(first + "/")}


@pytest.fixture(scope="module", params=["edge.fw", "shop.fw"])
def member(request) -> dict[str, str]:
    """The files of a member: edge is iptables, shop is nftables."""
    return _member_files(request.param)


def _fake(bin_dir: Path, name: str, body: str) -> None:
    path = bin_dir / name
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)


def localise(text: str, tmp: Path) -> str:
    """TEXT (a script of the node) with its paths in TMP: /etc/fwc/NAME is tmp/etc/NAME (as
    _run writes the files), sysctl.conf tmp/etc/sysctl.conf, any other /etc path under
    tmp/other-etc, /proc/sys the fake tree; the node has no systemd."""
    paths = {"PATH=/usr/sbin:/usr/bin:/sbin:/bin": f"PATH={tmp / 'bin'}",
             "/etc/fwc/": f"{tmp / 'etc'}/",
             "/etc/sysctl.d/90-fwc.conf": f"{tmp / 'etc'}/sysctl.conf",
             "/etc/": f"{tmp / 'other-etc'}/",
             "/proc/sys/": f"{tmp / 'proc'}/",
             "/run/systemd/system": f"{tmp / 'no-systemd'}"}
    # one pass, the longest first: a path put in must not be read again
    pattern = "|".join(re.escape(k) for k in sorted(paths, key=len, reverse=True))
    return re.sub(pattern, lambda m: paths[m.group(0)], text)


def _run(files: dict[str, str], tmp: Path, shell: str, *,
         contents: dict[str, str] | None = None, ipv6: bool = True,
         prepare: Callable[[Path], None] | None = None) -> tuple[int, str, str]:
    """Run the boot script; CONTENTS replaces files by name; IPV6 False: a kernel booted
    with ipv6.disable=1 (no fake /proc/sys/net/ipv6, and ip6tables-restore fails as the
    real one does there); PREPARE(tmp) runs once the node is laid out. (status, fake
    /proc/sys ip_forward afterwards, what the restores loaded and the DROP fallback
    calls); tmp/called lists the restores run, in order, tmp/stderr the script's."""
    bin_dir, etc, proc = tmp / "bin", tmp / "etc", tmp / "proc"
    for d in (bin_dir, etc, proc / "net/ipv4", *([proc / "net/ipv6/conf/all"] if ipv6 else [])):
        d.mkdir(parents=True, exist_ok=True)
    (proc / "net/ipv4/ip_forward").write_text("1\n")  # on, as a sysctl.d file may leave it
    (proc / "kernel/random").mkdir(parents=True, exist_ok=True)
    (proc / "kernel/random/boot_id").write_text(BOOT_ID + "\n")
    if ipv6:
        (proc / "net/ipv6/conf/all/forwarding").write_text("1\n")
    for name, text in {**files, **(contents or {})}.items():
        (etc / name).write_text(text)
    loaded = tmp / "loaded"
    loaded.write_text("")
    _fake(bin_dir, "sysctl", f"""set_key() {{
    p={proc}/$(echo "${{1%%=*}}" | tr . /); [ -e "$p" ] || return 1; echo "${{1#*=}}" > "$p"
}}
if [ "$1" = -n ]; then p={proc}/$(echo "$2" | tr . /); [ -e "$p" ] || exit 1; exec cat "$p"; fi
case "$2" in
    -w) set_key "$3" ;;
    -p) rc=0
        while read -r k eq v; do
            case "$k" in ''|\\#*) continue ;; esac
            set_key "$k=$v" || rc=1
        done < "$3" || exit 1
        exit $rc ;;
esac""")
    restore = f"""in=$(cat "${{1:--}}")
case "$in" in *FAIL*) exit 1 ;; '') exit 0 ;; esac
printf '%s\\n' "$in" \\
    | sed -n '1s/^# \\([A-Za-z-]*\\).*/loaded \\1/p;1s/^table .*/loaded table/p' >> {loaded}"""
    called = tmp / "called"
    called.write_text("")
    for name in ("iptables-restore", "ip6tables-restore"):
        # ip6tables-restore on a kernel without IPv6: "Address family not supported"
        kernel = f"[ -d {proc}/net/ipv6 ] || exit 1\n" if name.startswith("ip6") else ""
        _fake(bin_dir, name, f"echo {name} >> {called}\n{kernel}{restore}")
    _fake(bin_dir, "nft", f'[ "$1" = -f ] && shift\n{restore}')
    for name in ("iptables", "ip6tables"):
        _fake(bin_dir, name, f'echo "{name} $*" >> {loaded}')
    for name in ("iptables-save", "ip6tables-save", "ipset", "logger"):
        _fake(bin_dir, name, ":")
    # (what a rollback at boot runs too; `sh` is the shell under test)
    for name in ("cat", "tr", "sed", "grep", "cp", "mv", "rm", "touch", "mkdir", "ln",
                 "awk", "flock", "sleep"):
        (bin_dir / name).symlink_to(shutil.which(name))
    (bin_dir / "sh").symlink_to(shutil.which(shell))
    script = localise(files["fwc-firewall.sh"], tmp)
    # (the only /proc paths left: the processes the script looks at, read only)
    assert str(tmp / "other-etc") not in script and "/proc/" not in script.replace(
        str(proc), "").replace("/proc/$", "")
    path = tmp / "fwc-firewall.sh"
    path.write_text(script)
    if prepare is not None:
        prepare(tmp)
    env = {k: v for k, v in os.environ.items()
           if k not in ("FWC_RULES_LOADED_BY_INSTALL", "FWC_ROLLING_BACK_AT_BOOT")}
    result = subprocess.run([shell, str(path)], env=env, capture_output=True, text=True,
                            timeout=30)
    (tmp / "stderr").write_text(result.stderr)
    return (result.returncode, (proc / "net/ipv4/ip_forward").read_text().strip(),
            loaded.read_text())


def _rules(files: dict[str, str]) -> str:
    return "nftables.nft" if "nftables.nft" in files else "iptables.rules"


@pytest.mark.parametrize("shell", SHELLS)
def test_rules_load_and_forwarding_comes_on(member, tmp_path, shell):
    status, forwarding, loaded = _run(member, tmp_path, shell)
    assert (status, forwarding) == (0, "1")
    assert "loaded Fail-closed" not in loaded and "loaded " in loaded


@pytest.mark.parametrize("shell", SHELLS)
def test_an_empty_rules_file_is_a_failed_load(member, tmp_path, shell):
    """A restore of an empty file exits 0 having loaded nothing: forwarding must stay off."""
    status, forwarding, loaded = _run(member, tmp_path, shell,
                                      contents={_rules(member): ""})
    assert (status, forwarding) == (1, "0")
    assert "loaded Fail-closed" in loaded  # the fail-closed ruleset went in


@pytest.mark.parametrize("shell", SHELLS)
def test_an_empty_failsafe_file_falls_back_to_drop_policies(member, tmp_path, shell):
    rules, failsafe = ((_rules(member), "failsafe.nft") if "nftables.nft" in member
                       else (_rules(member), "failsafe.rules"))
    status, forwarding, loaded = _run(member, tmp_path, shell,
                                      contents={rules: "FAIL\n", failsafe: ""})
    assert (status, forwarding) == (1, "0")
    if failsafe == "failsafe.nft":  # the DROP-only table of the script itself
        assert loaded == "loaded table\n"
    else:
        assert "iptables -w -P FORWARD DROP" in loaded


def _cut_where_a_table_ends(text: str, nft: bool) -> str:
    """TEXT cut off where a table ends, before the one that filters: an iptables file after
    the first COMMIT (the filter table comes last), an nft file after fwc's `delete`."""
    lines = text.splitlines(keepends=True)
    if nft:
        end = next(i for i, line in enumerate(lines) if line.startswith("delete table"))
    else:
        end = next(i for i, line in enumerate(lines) if line == "COMMIT\n")
    cut = "".join(lines[:end + 1])
    assert "*filter" not in cut and "table inet fwc {\n" not in cut
    return cut


@pytest.mark.parametrize("shell", SHELLS)
def test_a_rules_file_cut_where_a_table_ends_is_a_failed_load(member, tmp_path, shell):
    """Such a file loads what it holds and exits 0 (`printf '*nat\\nCOMMIT\\n' |
    iptables-restore --test`): without the filter table, or without fwc's nft table after
    its `delete`, forwarding must stay off."""
    rules = _rules(member)
    cut = _cut_where_a_table_ends(member[rules], rules == "nftables.nft")
    status, forwarding, loaded = _run(member, tmp_path, shell, contents={rules: cut})
    assert (status, forwarding) == (1, "0")
    assert "loaded Fail-closed" in loaded


def _ipv4_only_member() -> dict[str, str]:
    """A member of loadshare.fw: iptables, no IPv6 address in the cluster."""
    return _member_files("loadshare.fw")


@pytest.mark.parametrize("shell", SHELLS)
def test_an_ipv4_only_cluster_loads_its_ipv6_rules_where_the_kernel_has_ipv6(tmp_path, shell):
    files = _ipv4_only_member()
    status, forwarding, loaded = _run(files, tmp_path, shell)
    assert (status, forwarding) == (0, "1")
    assert (tmp_path / "called").read_text().split() == ["iptables-restore",
                                                         "ip6tables-restore"]
    assert loaded.count("loaded ") == 2 and "Fail-closed" not in loaded


@pytest.mark.parametrize("shell", SHELLS)
def test_an_ipv4_only_cluster_boots_on_a_kernel_without_ipv6(tmp_path, shell):
    """ipv6.disable=1: no /proc/sys/net/ipv6, ip6tables-restore fails. A cluster without
    IPv6 addresses skips its IPv6 rules there (nothing to filter) and forwards IPv4."""
    files = _ipv4_only_member()
    status, forwarding, loaded = _run(files, tmp_path, shell, ipv6=False)
    assert (status, forwarding) == (0, "1")
    assert (tmp_path / "called").read_text().split() == ["iptables-restore"]
    assert loaded == "loaded iptables-restore\n"


@pytest.mark.parametrize("shell", SHELLS)
def test_an_ipv4_only_cluster_fails_closed_on_a_kernel_without_ipv6(tmp_path, shell):
    """Its fallback skips the IPv6 file too: the IPv4 one loads, forwarding stays off."""
    files = _ipv4_only_member()
    status, forwarding, loaded = _run(files, tmp_path, shell, ipv6=False,
                                      contents={"iptables.rules": "*filter\nFAIL\n"})
    assert (status, forwarding) == (1, "0")
    assert (tmp_path / "called").read_text().split() == ["iptables-restore"] * 2
    assert loaded == "loaded Fail-closed\n"  # failsafe.rules; no ip6tables DROP calls


@pytest.mark.parametrize("shell", SHELLS)
def test_a_cluster_with_ipv6_fails_closed_on_a_kernel_without_ipv6(tmp_path, shell):
    """edge.fw has IPv6 addresses: without IPv6 in the kernel its rules cannot load, and
    the node does not forward (as before)."""
    files = _member_files("edge.fw")
    status, forwarding, loaded = _run(files, tmp_path, shell, ipv6=False)
    assert (status, forwarding) == (1, "0")
    assert "ip6tables-restore" in (tmp_path / "called").read_text().split()
    assert "loaded Fail-closed" in loaded and "ip6tables -w -P FORWARD DROP" in loaded


# -- an install the node rebooted with before it was confirmed ----------------------------

def _old(files: dict[str, str]) -> dict[str, str]:
    """FILES as an earlier install left them: each rules file's first comment word starts
    with OLD- (the stand-in restores log it: `loaded OLD-iptables-restore`)."""
    return {name: text.replace("# ", "# OLD-", 1) if name.endswith((".rules", ".nft"))
            else text for name, text in files.items()}


def _on_probation(new: dict[str, str], old: dict[str, str], *, marker: str | None = None,
                  watchdog: str = "dead", broken: str | None = None,
                  saved: str | None = None) -> Callable[[Path], None]:
    """Lays out the node an unconfirmed install of NEW over OLD left (no systemd): NEW's
    files at their node paths (OLD's other ones stay there), the snapshot of OLD as fwc
    install takes it (files the install replaced or removed, sysctl values, rollback.sh)
    and watchdog.pid. MARKER:
    `confirmed` or `rolled-back` made; WATCHDOG: `dead` (a PID no process has), `reused`
    (a live process that is not the watchdog, as after a reboot), `running` (one that is
    its watchdog); BROKEN: a file the snapshot cannot give back; SAVED: the iptables.save
    of the snapshot."""
    rows = [f for f in FILES if f.name in new]
    gone = scripts.stale_rows(rows)

    def prepare(tmp: Path) -> None:
        snap = tmp / "etc" / "snapshot"
        snap.mkdir()
        for row in rows:
            node = Path(localise(row.path, tmp))
            node.parent.mkdir(parents=True, exist_ok=True)
            node.write_text(localise(new[row.name], tmp))
        for prefix, table in (("file", rows), ("gone", gone)):
            for index, row in enumerate(table):
                if row.name in old:
                    (snap / f"{prefix}.{index}").write_text(localise(old[row.name], tmp))
                    Path(localise(row.path, tmp)).parent.mkdir(parents=True, exist_ok=True)
        # what the install neither replaced nor removed (another packet filter's files)
        touched = {r.name for r in (*rows, *gone)}
        for name, text in old.items():
            if name not in touched:
                Path(localise(BY_NAME[name].path, tmp)).write_text(localise(text, tmp))
        if saved is not None:
            (snap / "iptables.save").write_text(saved)
        if broken is not None:  # a copy that fails: cp of a directory
            index = [r.name for r in rows].index(broken)
            (snap / f"file.{index}").unlink()
            (snap / f"file.{index}").mkdir()
        # forwarding was off before the install, rp_filter 2; net.netfilter.* are not there
        # before the rules load nf_conntrack
        (tmp / "proc/net/ipv4/conf/all").mkdir(parents=True)
        (tmp / "proc/net/ipv4/conf/all/rp_filter").write_text("1\n")
        (snap / "sysctl.save").write_text("net.ipv4.ip_forward=0\nnet.ipv4.conf.all.rp_filter=2\n"
                                          "net.netfilter.nf_conntrack_events=1\n")
        (snap / "rollback.sh").write_text(
            localise(scripts.rollback_script(rows, [], token="t1"), tmp))
        # (a reused PID: a live process holds the PID the watchdog had in an earlier boot)
        record = {"dead": f"999999999 {BOOT_ID} 1\n",
                  "reused": watchdog_record(os.getpid(), EARLIER_BOOT)}.get(watchdog)
        if record is None:
            proc = subprocess.Popen(["sh", "-c", f"sleep 30; sh {snap}/rollback.sh"])
            (tmp / "watchdog").write_text(str(proc.pid))
            record = watchdog_record(proc.pid)
        (snap / "watchdog.pid").write_text(record)
        if marker is not None:
            (snap / marker).touch()
    return prepare


def _stop_watchdog(tmp: Path) -> None:
    if (tmp / "watchdog").exists():
        pid = int((tmp / "watchdog").read_text())
        os.kill(pid, 9)
        os.waitpid(pid, 0)


def _node_file(tmp: Path, name: str) -> Path:
    return Path(localise(BY_NAME[name].path, tmp))


def _refusal(tmp: Path, shell: str) -> subprocess.CompletedProcess[str]:
    """What the next `fwc install` finds on this node (its stage step)."""
    return subprocess.run([str(shutil.which(shell)), "-c",
                           localise(scripts.refuse_if_pending(), tmp)],
                          capture_output=True, text=True, timeout=30,
                          env={**os.environ, "PATH": str(tmp / "bin")})


@pytest.mark.parametrize("shell", SHELLS)
@pytest.mark.parametrize("watchdog", ["dead", "reused"])
def test_a_reboot_on_probation_rolls_back_and_loads_the_old_rules(member, tmp_path, shell,
                                                                 watchdog):
    """The node went down before the install was confirmed (its watchdog with it; after
    the reboot its PID may be another process's): the boot puts the old files and sysctl
    values back, loads the OLD rules with the old boot script, forwarding on as that
    script says, and marks the install rolled back."""
    old = _old(member)
    status, forwarding, loaded = _run(member, tmp_path, shell,
                                      prepare=_on_probation(member, old, watchdog=watchdog))
    stderr = (tmp_path / "stderr").read_text()
    assert (status, forwarding) == (0, "1"), stderr
    assert "loaded OLD-" in loaded and "loaded Fail-closed" not in loaded
    assert loaded.replace("loaded OLD-", "").count("loaded ") == 0  # nothing new loaded
    assert "was never confirmed: rolling it back" in stderr and "rolled back at boot" in stderr
    assert (tmp_path / "etc/snapshot/rolled-back").exists()
    rules = _rules(member)
    assert _node_file(tmp_path, rules).read_text() == old[rules]
    assert (tmp_path / "proc/net/ipv4/conf/all/rp_filter").read_text().strip() == "2"
    assert _refusal(tmp_path, shell).returncode == 0  # the next install may go ahead


@pytest.mark.parametrize("shell", SHELLS)
def test_a_reboot_on_probation_of_a_backend_switch_boots_the_old_backend(tmp_path, shell):
    """nftables installed over iptables, unconfirmed: the running boot script is the nft
    one, the restored one the iptables one; only the old iptables rules load, and the
    nftables files go (they did not exist before)."""
    new, old = _member_files("shop.fw"), _old(_member_files("edge.fw"))
    status, forwarding, loaded = _run(new, tmp_path, shell, prepare=_on_probation(new, old))
    assert (status, forwarding) == (0, "1"), (tmp_path / "stderr").read_text()
    assert (tmp_path / "called").read_text().split() == ["iptables-restore",
                                                         "ip6tables-restore"]
    assert loaded.count("loaded OLD-") == 2 and "loaded nft" not in loaded
    assert not _node_file(tmp_path, "nftables.nft").exists()
    assert _node_file(tmp_path, "fwc-firewall.sh").read_text() == localise(
        old["fwc-firewall.sh"], tmp_path)
    assert (tmp_path / "etc/snapshot/rolled-back").exists()


@pytest.mark.parametrize("shell", SHELLS)
@pytest.mark.parametrize("state", ["confirmed", "rolled-back", "watchdog running"])
def test_an_install_confirmed_rolled_back_or_still_watched_is_not_rolled_back_at_boot(
        member, tmp_path, shell, state):
    """Confirmed or already rolled back: the boot loads what the node paths hold and
    leaves the snapshot alone; its watchdog still running (the unit started by hand during
    the probation): the watchdog decides. Without that, the same node rolls back."""
    old = _old(member)
    marker = state if state != "watchdog running" else None
    watchdog = "running" if marker is None else "dead"
    try:
        status, forwarding, loaded = _run(member, tmp_path / "kept", shell, prepare=_on_probation(
            member, old, marker=marker, watchdog=watchdog))
    finally:
        _stop_watchdog(tmp_path / "kept")
    assert (status, forwarding) == (0, "1")
    assert "loaded OLD-" not in loaded and "loaded " in loaded
    assert "rolling it back" not in (tmp_path / "kept/stderr").read_text()
    assert not (tmp_path / "kept/etc/snapshot" / (
        "confirmed" if state == "rolled-back" else "rolled-back")).exists()
    rules = _rules(member)
    assert _node_file(tmp_path / "kept", rules).read_text() == localise(member[rules],
                                                                        tmp_path / "kept")
    # the same node, its watchdog gone and neither marker made: rolled back
    status, forwarding, loaded = _run(member, tmp_path / "gone", shell,
                                      prepare=_on_probation(member, old))
    assert status == 0 and "loaded OLD-" in loaded


@pytest.mark.parametrize("shell", SHELLS)
def test_a_rollback_at_boot_that_fails_still_filters_and_the_next_install_refuses(
        member, tmp_path, shell):
    """A file the snapshot cannot give back: the node does not boot a mix of old and new
    files, it loads the fail-closed ruleset with forwarding off (keepalived and conntrackd
    do not start), and the install stays unconfirmed: the next install refuses, the
    admin decides."""
    old = _old(member)
    rules = _rules(member)
    status, forwarding, loaded = _run(member, tmp_path, shell,
                                      prepare=_on_probation(member, old, broken=rules))
    stderr = (tmp_path / "stderr").read_text()
    assert (status, forwarding) == (1, "0"), stderr
    assert "Fail-closed" in loaded and "loaded OLD-iptables-restore" not in loaded
    assert "the rollback at boot failed: fail-closed ruleset loaded" in stderr
    assert not (tmp_path / "etc/snapshot/rolled-back").exists()
    refused = _refusal(tmp_path, shell)
    assert refused.returncode == 3
    assert "neither confirmed nor rolled back" in refused.stderr
    assert "rollback.sh restores what ran before it" in refused.stderr


@pytest.mark.parametrize("shell", SHELLS)
def test_a_rollback_at_boot_whose_old_rules_fail_keeps_their_own_fallback(tmp_path, shell):
    """The old files are back but the old rules do not load: the old boot script's own
    fail-closed ruleset (iptables, with its management access) stays the only one; the
    running nft script must not add its DROP-everything table on top."""
    new, old = _member_files("shop.fw"), _old(_member_files("edge.fw"))
    old["iptables.rules"] = "*filter\nFAIL\n"
    status, forwarding, loaded = _run(new, tmp_path, shell, prepare=_on_probation(new, old))
    stderr = (tmp_path / "stderr").read_text()
    assert (status, forwarding) == (1, "0"), stderr
    assert loaded == "loaded OLD-Fail-closed\nloaded OLD-Fail-closed\n"  # failsafe(6).rules
    assert "the rules from before the unconfirmed install did not load" in stderr
    assert not (tmp_path / "etc/snapshot/rolled-back").exists()
    assert _refusal(tmp_path, shell).returncode == 3


@pytest.mark.parametrize("shell", SHELLS)
def test_a_reboot_on_probation_of_a_first_install_restores_what_ran_before_fwc(tmp_path,
                                                                              shell):
    """fwc's first install on the node, unconfirmed: no old boot script comes back, so
    the rollback at boot restores the rules the snapshot saved (what ran before fwc) and
    then forwarding as it was; fwc's files go."""
    new = _member_files("edge.fw")
    saved = "# ADMIN-rules of the node before fwc\n*filter\n:INPUT ACCEPT [0:0]\nCOMMIT\n"
    status, forwarding, loaded = _run(new, tmp_path, shell,
                                      prepare=_on_probation(new, {}, saved=saved))
    assert status == 0, (tmp_path / "stderr").read_text()
    assert loaded == "loaded ADMIN-rules\n"  # not fwc's rules, not its fail-closed ones
    assert forwarding == "0"  # sysctl.save: it did not forward before the install
    assert not _node_file(tmp_path, "iptables.rules").exists()
    assert not _node_file(tmp_path, "fwc-firewall.sh").exists()
    assert (tmp_path / "etc/snapshot/rolled-back").exists()


@pytest.mark.parametrize("shell", SHELLS)
def test_a_rollback_script_a_crash_left_empty_is_no_rollback_at_boot(member, tmp_path, shell):
    """The node lost power before the snapshot reached the disk: its rollback.sh is empty,
    and `sh` of an empty file exits 0 having done nothing. The boot must not take that for
    a rollback (no rules loaded, exit 0: keepalived and conntrackd would start on a node
    that filters nothing); it fails closed, and the next install refuses."""
    prepare = _on_probation(member, _old(member))

    def crashed(tmp: Path) -> None:
        prepare(tmp)
        (tmp / "etc/snapshot/rollback.sh").write_text("")

    status, forwarding, loaded = _run(member, tmp_path, shell, prepare=crashed)
    stderr = (tmp_path / "stderr").read_text()
    assert (status, forwarding) == (1, "0"), stderr
    assert "loaded Fail-closed" in loaded
    assert "the rollback at boot failed" in stderr and "rolled back at boot:" not in stderr
    assert _refusal(tmp_path, shell).returncode == 3


def _durability(tmp: Path, script: str) -> list[str]:
    """Run SCRIPT (an install step, its paths localised into TMP) with a `sync` that
    records, each time it is called, which of the snapshot's files exist non-empty then."""
    snap = tmp / "etc/snapshot"
    bin_dir = tmp / "bin"
    bin_dir.mkdir(exist_ok=True)
    _fake(bin_dir, "sync", f"cd {snap} && echo \"sync $(for f in rollback.sh watchdog.pid "
                           f"confirmed; do [ -e $f ] && printf ' %s' $f; done)\" >> {tmp}/syncs")
    subprocess.run(["sh", "-c", localise(script, tmp)], check=True, timeout=30,
                   env={**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"})
    return (tmp / "syncs").read_text().splitlines()


def test_the_probation_is_on_disk_before_the_apply_and_so_is_its_confirmation(tmp_path):
    """A power loss during the probation is what the rollback at boot is for: the snapshot
    must be on disk before the watchdog.pid that makes a boot use it, both before the apply
    changes anything, and a confirmation before fwc reports it (else the boot rolls back
    what was confirmed)."""
    snap = tmp_path / "etc/snapshot"
    snap.mkdir(parents=True)
    (snap / "rollback.sh").write_text(": rollback\n")
    holder = subprocess.Popen(["sleep", "30"])  # the install lock's holder
    try:
        (tmp_path / "etc/install.owner").write_text(
            f"{holder.pid} t1 {int(time.time())}\n")
        assert _durability(tmp_path, scripts.arm_watchdog(30, token="t1")) == [
            "sync  rollback.sh", "sync  rollback.sh watchdog.pid"]
        (tmp_path / "syncs").unlink()
        assert _durability(tmp_path, scripts.confirm(token="t1")) == [
            "sync  rollback.sh watchdog.pid confirmed"]
    finally:
        holder.kill()
        holder.wait()
        _stop_watchdog_of(snap)


def _stop_watchdog_of(snap: Path) -> None:
    """Kill the watchdog arm_watchdog started (one a failed assertion left running)."""
    record = (snap / "watchdog.pid").read_text().split() if (snap / "watchdog.pid").exists() \
        else []
    if record:
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(record[0]), 9)


@pytest.mark.parametrize("shell", SHELLS)
def test_a_rollback_at_boot_kills_no_process_of_this_boot(member, tmp_path, shell):
    """The install lock's holder (a `sleep` of fwc install) died with the node: after the
    reboot its PID in install.owner may be any process's, a `sleep` of some unit's script
    too. The rollback at boot lets go of the lock without killing that process."""
    prepare = _on_probation(member, _old(member))
    stranger = subprocess.Popen(["sleep", "30"])  # the PID, reused by this boot

    def owner_of_the_earlier_boot(tmp: Path) -> None:
        prepare(tmp)
        (tmp / "etc/install.owner").write_text(f"{stranger.pid} t1 1700000000\n")

    try:
        status, _, loaded = _run(member, tmp_path, shell, prepare=owner_of_the_earlier_boot)
        assert status == 0 and "loaded OLD-" in loaded, (tmp_path / "stderr").read_text()
        assert stranger.poll() is None  # still running
        assert not (tmp_path / "etc/install.owner").exists()  # the lock is let go
    finally:
        stranger.kill()
        stranger.wait()
