"""fwc-firewall.sh fails closed, run for real (POSIX sh) against stand-in commands.

The stand-ins (sysctl, iptables-restore, nft, ...) come first in PATH and record what
they are asked; sysctl writes a fake /proc/sys tree and the rules files are copies in a
temporary directory, so the test touches neither the host's firewall nor its sysctls.
A stand-in restore behaves as the real one does where it matters here: an empty input
loads nothing and exits 0 (`iptables-restore --test < /dev/null`, `nft -c -f
/dev/null`), an input holding FAIL exits 1.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import REPO

from fwc.backend.output import compile_policy
from fwc.pipeline import analyse

SHELLS = [s for s in ("sh", "dash") if shutil.which(s)]


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


def _run(files: dict[str, str], tmp: Path, shell: str, *,
         contents: dict[str, str] | None = None, ipv6: bool = True) -> tuple[int, str, str]:
    """Run the boot script; CONTENTS replaces files by name; IPV6 False: a kernel booted
    with ipv6.disable=1 (no fake /proc/sys/net/ipv6, and ip6tables-restore fails as the
    real one does there). (status, fake /proc/sys ip_forward afterwards, what the restores
    loaded and the DROP fallback calls); tmp/called lists the restores run, in order."""
    bin_dir, etc, proc = tmp / "bin", tmp / "etc", tmp / "proc"
    for d in (bin_dir, etc, proc / "net/ipv4", *([proc / "net/ipv6/conf/all"] if ipv6 else [])):
        d.mkdir(parents=True, exist_ok=True)
    (proc / "net/ipv4/ip_forward").write_text("1\n")  # on, as a sysctl.d file may leave it
    if ipv6:
        (proc / "net/ipv6/conf/all/forwarding").write_text("1\n")
    for name, text in {**files, **(contents or {})}.items():
        (etc / name).write_text(text)
    loaded = tmp / "loaded"
    loaded.write_text("")
    _fake(bin_dir, "sysctl", f"""set_key() {{
    p={proc}/$(echo "${{1%%=*}}" | tr . /); [ -e "$p" ] || return 1; echo "${{1#*=}}" > "$p"
}}
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
    for name in ("cat", "tr", "sed", "grep"):
        (bin_dir / name).symlink_to(shutil.which(name))
    script = (files["fwc-firewall.sh"]
              .replace("PATH=/usr/sbin:/usr/bin:/sbin:/bin", f"PATH={bin_dir}")
              .replace("/etc/fwc/", f"{etc}/")
              .replace("/etc/sysctl.d/90-fwc.conf", f"{etc}/sysctl.conf")
              .replace("/proc/sys/", f"{proc}/"))
    assert "/etc/" not in script.replace(str(etc), "") and "/proc/" not in script.replace(
        str(proc), "")
    path = tmp / "fwc-firewall.sh"
    path.write_text(script)
    env = {k: v for k, v in os.environ.items() if k != "FWC_RULES_LOADED_BY_INSTALL"}
    result = subprocess.run([shell, str(path)], env=env, capture_output=True, text=True,
                            timeout=30)
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
