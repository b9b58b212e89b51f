"""The generated boot script on a real kernel (root; runs in CI).

Each case runs fwc-firewall.sh in a fresh network namespace with a private
mount namespace whose /etc is an overlay holding the member's compiled files at
their node paths (the namespace vanishes with the process: nothing to clean).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from conftest import skip_or_fail_without_root

from fwc.backend.files import BY_NAME, LOADED_BY_INSTALL
from fwc.backend.output import compile_policy
from fwc.pipeline import analyse

RUN = """set -e
mount -t overlay overlay -o lowerdir=/etc,upperdir={upper},workdir={work} /etc
mount --bind /bin/true /usr/bin/logger
{before}
set +e
sh /etc/fwc/fwc-firewall.sh 2>/tmp/fwc-boot-$$.err
echo "rc=$?"
echo "forward4=$(sysctl -n net.ipv4.ip_forward)"
echo "forward6=$(sysctl -n net.ipv6.conf.all.forwarding)"
echo "--- stderr"; cat /tmp/fwc-boot-$$.err; rm -f /tmp/fwc-boot-$$.err
echo "--- iptables"; iptables-save
echo "--- ip6tables"; ip6tables-save
"""


def boot(tmp_path: Path, policies: Path, before: str = "",
         change: dict[str, str] | None = None, name: str = "edge.fw") -> dict[str, str]:
    skip_or_fail_without_root()
    policy = analyse(policies / name).policy
    assert policy is not None
    upper, work = tmp_path / "upper", tmp_path / "work"
    work.mkdir()
    for f in compile_policy(policy)[0].files:
        member, _, name = f.path.partition("/")
        if member != "fw1" or name not in BY_NAME:
            continue
        node = BY_NAME[name]
        target = upper / node.path.removeprefix("/etc/")
        target.parent.mkdir(parents=True, exist_ok=True)
        content = f.content.decode()
        for old, new in (change or {}).get(name, {}).items():  # type: ignore[attr-defined]
            content = content.replace(old, new)
        target.write_text(content)
        target.chmod(node.mode)
    proc = subprocess.run(
        ["unshare", "--net", "--mount", "--propagation", "private", "sh", "-c",
         RUN.format(upper=upper, work=work, before=before)],
        capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    out: dict[str, str] = {}
    section = "head"
    for line in proc.stdout.splitlines():
        if line.startswith("--- "):
            section = line[4:]
            continue
        if section == "head" and "=" in line:
            key, _, value = line.partition("=")
            out[key] = value
        else:
            out[section] = out.get(section, "") + line + "\n"
    return out


def test_boot_loads_the_rules_then_switches_forwarding_on(tmp_path, policies):
    out = boot(tmp_path, policies)
    assert out["rc"] == "0", out
    assert out["forward4"] == "1" and out["forward6"] == "1"
    assert '--comment "edge.fw:41"' in out["iptables"]  # a FORWARD rule of the policy
    assert ":FORWARD DROP" in out["iptables"] and ":FORWARD DROP" in out["ip6tables"]
    assert "-j DNAT" in out["iptables"]


def test_boot_of_an_ipv4_only_cluster_filters_ipv6_and_forwards_ipv4_only(tmp_path, policies):
    """loadshare.fw has no IPv6 address: its IPv6 rules go in all the same (DROP on INPUT
    and FORWARD), IPv6 forwarding stays off even when something had switched it on."""
    out = boot(tmp_path, policies, before="sysctl -qw net.ipv6.conf.all.forwarding=1",
               name="loadshare.fw")
    assert out["rc"] == "0", out
    assert out["forward4"] == "1" and out["forward6"] == "0"
    assert '--comment "loadshare.fw:47"' in out["iptables"]  # the policy's ssh access
    six = out.get("ip6tables", "")  # (no IPv6 table loaded: ip6tables-save prints nothing)
    for chain in ("INPUT", "FORWARD"):
        assert f":{chain} DROP" in six, six
    assert '"fwc auto: ndp"' in six and "--dport 22" not in six


def test_boot_started_by_install_on_a_live_node_loads_nothing(tmp_path, policies):
    # fwc install loaded the rules itself and starts the unit only so that it counts as
    # active (fwc.install.scripts.reload_systemd_units): forwarding is not switched off
    # and nothing is loaded again; the variable comes from systemd's environment
    out = boot(tmp_path, policies, before=f"sysctl -q -w net.ipv4.ip_forward=1\n"
               f"export {LOADED_BY_INSTALL}=1")
    assert out["rc"] == "0", out
    assert out["forward4"] == "1" and out["forward6"] == "0"  # as they were
    assert "edge.fw" not in out.get("iptables", "")  # (nothing loaded: nothing listed)
    assert "rules loaded by fwc install" in out["stderr"]


def test_boot_ignores_any_other_value_of_the_install_variable(tmp_path, policies):
    out = boot(tmp_path, policies, before=f"export {LOADED_BY_INSTALL}=yes")
    assert out["rc"] == "0", out
    assert out["forward4"] == "1" and '--comment "edge.fw:41"' in out["iptables"]


@pytest.mark.parametrize("broken", ["iptables.rules", "ip6tables.rules"])
def test_boot_fails_closed_when_the_rules_do_not_load(tmp_path, policies, broken):
    """Forwarding was on (an old sysctl.d file): it goes off and stays off."""
    out = boot(tmp_path, policies,
               before="sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1",
               change={broken: {"COMMIT": "-A FORWARD -j NO-SUCH-TARGET\nCOMMIT"}})
    assert out["rc"] == "1", out
    assert out["forward4"] == "0" and out["forward6"] == "0"
    assert "rules did not load" in out["stderr"]
    for family in ("iptables", "ip6tables"):
        text = out[family]
        for chain in ("INPUT", "FORWARD", "OUTPUT"):
            assert f":{chain} DROP" in text, (family, text)
        assert "-A FORWARD" not in text
        assert "-j DNAT" not in text and "-j SNAT" not in text  # nat emptied too
        assert '"fwc auto: established"' in text
    # The HA plumbing and the management access the policy allows to the firewall.
    text = out["iptables"]
    assert "-d 224.0.0.18/32 -i eth0 -p vrrp" in text
    assert "-d 225.0.0.50/32 -i eth2 -p udp -m udp --dport 3780" in text
    assert "-s 192.0.2.10/32 -d 192.0.2.1/32 -p tcp -m tcp --dport 22" in text
    assert "-d 225.0.0.50/32 -o eth2 -p udp -m udp --dport 3780" in text


def test_boot_fails_closed_even_when_the_failsafe_rules_do_not_load(tmp_path, policies):
    out = boot(tmp_path, policies, change={
        "iptables.rules": {"COMMIT": "-A FORWARD -j NO-SUCH-TARGET\nCOMMIT"},
        "failsafe.rules": {"COMMIT": "-A FORWARD -j NO-SUCH-TARGET\nCOMMIT"}})
    assert out["rc"] == "1"
    assert out["forward4"] == "0"
    for chain in ("INPUT", "FORWARD", "OUTPUT"):
        assert f":{chain} DROP" in out["iptables"]


def test_boot_fails_when_forwarding_cannot_be_switched_on(tmp_path, policies):
    out = boot(tmp_path, policies,
               change={"forwarding.conf": {"net.ipv4.ip_forward = 1": "net.ipv4.no_such = 1"}})
    assert out["rc"] == "1"
    assert out["forward4"] == "0"
