"""The real programs accept every generated file (docs/ha-pitfalls.md, validating).

For every example policy and every member: iptables-restore/ip6tables-restore
--test in a fresh network namespace, the rules loaded for real and listed back
by iptables-save, keepalived -t in a namespace where the member's devices exist,
and conntrackd's parse-only check. Every namespace is created with a unique name
and removed in a finally block.
"""

from __future__ import annotations

import os
import shlex
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from conftest import REPO, Examples

from fwc.cli import main as fwc_main
from fwc.pipeline import analyse

POLICY_FILES = sorted((REPO / "policies").glob("*.fw"))

pytestmark = pytest.mark.root


def _members() -> list[tuple[str, str, str, tuple[str, ...]]]:
    """(policy stem, cluster, member, devices) for every member of every example policy."""
    out = []
    for path in POLICY_FILES:
        analysis = analyse(path, run_checks=False)
        if analysis.policy is None:
            continue
        for cluster in analysis.policy.clusters:
            for member in cluster.members:
                out.append((path.stem, cluster.name, member.name,
                            tuple(link.device for link in member.links)))
    return out


MEMBERS = _members()
IDS = [f"{p}-{c}-{m}" for p, c, m, _ in MEMBERS]


def _nft_clusters() -> set[tuple[str, str]]:
    """(policy stem, cluster) of the examples compiled for nftables (no iptables files)."""
    out = set()
    for path in POLICY_FILES:
        analysis = analyse(path, run_checks=False)
        for cluster in analysis.policy.clusters if analysis.policy else ():
            if cluster.backend == "nftables":
                out.add((path.stem, cluster.name))
    return out


NFT_CLUSTERS = _nft_clusters()


def load_nft(directory: Path, devices: tuple[str, ...]) -> None:
    """nftables.nft loads for real in a namespace with the member's devices."""
    with namespace(devices) as ns:
        loaded = in_ns(ns, "nft", "-f", str(directory / "nftables.nft"))
        assert loaded.returncode == 0, loaded.stderr
        listed = in_ns(ns, "nft", "list", "table", "inet", "fwc")
    assert listed.returncode == 0 and "hook forward" in listed.stdout, listed.stderr


@pytest.fixture(scope="module")
def compiled(examples: Examples) -> dict[str, Path]:
    """The session's compile of every example (read only: the tools only read the files)."""
    return {path.stem: examples[path.name].out for path in POLICY_FILES}


_counter = iter(range(1_000_000))


@contextmanager
def namespace(devices: tuple[str, ...] = ()) -> Iterator[str]:
    name = f"fwct{os.getpid()}x{next(_counter)}"
    subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True,
                       capture_output=True)
        for index, device in enumerate(devices):
            # veth pairs: the dummy type is not available on every kernel.
            subprocess.run(["ip", "-n", name, "link", "add", device, "type", "veth", "peer",
                            "name", f"fwcpeer{index}"], check=True, capture_output=True)
            subprocess.run(["ip", "-n", name, "link", "set", device, "up"], check=True,
                           capture_output=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


def in_ns(ns: str, *argv: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", "netns", "exec", ns, *argv], input=stdin,
                          capture_output=True, text=True, timeout=60)


def _protocol_names() -> dict[str, str]:
    names = {}
    for line in Path("/etc/protocols").read_text().splitlines():
        words = line.split("#")[0].split()
        if len(words) >= 2:
            names.setdefault(words[1], words[0])
    return names


PROTOCOL_NAMES = _protocol_names() if Path("/etc/protocols").exists() else {}


def normalise(line: str) -> tuple[str, ...]:
    """A rule line as iptables-save prints it: protocol names, no quoting differences."""
    words = shlex.split(line)
    for i, word in enumerate(words[:-1]):
        if word == "-p" and words[i + 1].isdigit():
            words[i + 1] = PROTOCOL_NAMES.get(words[i + 1], words[i + 1])
    return tuple(words)


def rules_by_table(text: str) -> dict[str, list[tuple[str, ...]]]:
    tables: dict[str, list[tuple[str, ...]]] = {}
    current = None
    for line in text.splitlines():
        if line.startswith("*"):
            current = line[1:]
            tables[current] = []
        elif line.startswith((":", "-A")) and current is not None:
            tables[current].append(normalise(line) if line.startswith("-A")
                                   else tuple(line.split()[:2]))
    return tables


def restore_sets(ns: str, directory: Path) -> None:
    """Rules naming an ipset are refused until the set exists: load ipsets.rules first."""
    sets = directory / "ipsets.rules"
    if sets.exists():
        loaded = in_ns(ns, "ipset", "restore", stdin=sets.read_text())
        assert loaded.returncode == 0, f"{sets}: {loaded.stderr}"


def load_and_compare(directory: Path, devices: tuple[str, ...]) -> None:
    """--test in a fresh namespace, then load for real and compare with iptables-save."""
    for filename, tool in rule_files(directory):
        text = (directory / filename).read_text()
        with namespace() as ns:
            restore_sets(ns, directory)
            tested = in_ns(ns, f"{tool}-restore", "--test", stdin=text)
            assert tested.returncode == 0, f"{filename}: {tested.stderr}"
        with namespace(devices) as ns:
            restore_sets(ns, directory)
            loaded = in_ns(ns, f"{tool}-restore", stdin=text)
            assert loaded.returncode == 0, f"{filename}: {loaded.stderr}"
            saved = in_ns(ns, f"{tool}-save")
            assert saved.returncode == 0, saved.stderr
        expected = rules_by_table(text)
        actual = rules_by_table(saved.stdout)
        for table, lines in expected.items():
            assert actual.get(table) == lines, f"{filename} table {table} differs after loading"
        assert sum(len(v) for v in expected.values()) > 0


def rule_files(directory: Path) -> list[tuple[str, str]]:
    files = [("iptables.rules", "iptables")]
    if (directory / "ip6tables.rules").exists():
        files.append(("ip6tables.rules", "ip6tables"))
    return files


@pytest.mark.parametrize(("policy", "cluster", "member", "devices"), MEMBERS, ids=IDS)
def test_iptables_restore_accepts_and_loads_every_rule(compiled, policy, cluster, member,
                                                       devices):
    if (policy, cluster) in NFT_CLUSTERS:  # its rules are nftables.nft: loaded with nft
        load_nft(compiled[policy] / cluster / member, devices)
        return
    load_and_compare(compiled[policy] / cluster / member, devices)


@pytest.mark.parametrize(("policy", "cluster", "member", "devices"), MEMBERS, ids=IDS)
def test_keepalived_config_test_is_clean(compiled, policy, cluster, member, devices):
    conf = compiled[policy] / cluster / member / "keepalived.conf"
    with namespace(devices) as ns:
        result = in_ns(ns, "keepalived", "-t", "-e", "-f", str(conf))
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""


PARSE_FAILURES = ("parsing config file", "cannot use", "not a valid", "cannot find protocol")


@pytest.mark.parametrize(("policy", "cluster", "member", "devices"), MEMBERS, ids=IDS)
def test_conntrackd_parses_the_config(compiled, policy, cluster, member, devices):
    conf = compiled[policy] / cluster / member / "conntrackd.conf"
    result = subprocess.run(["conntrackd", "-C", str(conf), "-s"], capture_output=True,
                            text=True, timeout=30)
    output = (result.stdout + result.stderr).strip().splitlines()
    bad = [line for line in output if any(f in line for f in PARSE_FAILURES)]
    assert not bad, "\n".join(output)
    # conntrackd has no config test: a parsed file ends in the failed connect to the
    # (absent) daemon; a running daemon would answer with statistics and exit 0.
    assert result.returncode == 0 or "can't connect" in output[-1], "\n".join(output)


def _check_directory(directory: Path, devices: tuple[str, ...]) -> None:
    load_and_compare(directory, devices)
    with namespace(devices) as ns:
        result = in_ns(ns, "keepalived", "-t", "-e", "-f", str(directory / "keepalived.conf"))
    assert result.returncode == 0 and result.stderr == "", result.stderr
    parsed = subprocess.run(["conntrackd", "-C", str(directory / "conntrackd.conf"), "-s"],
                            capture_output=True, text=True, timeout=30)
    output = (parsed.stdout + parsed.stderr).strip().splitlines()
    assert not [line for line in output if any(f in line for f in PARSE_FAILURES)], output


def large_policy(base: str) -> str:
    """Big enough for the speed passes: a 40-host group (an ipset) and 200 rules (arranged)."""
    hosts = [f"host h{i} 198.18.{i}.7" for i in range(40)]  # 40 CIDRs: no aggregation
    group = "group many " + ", ".join(f"h{i}" for i in range(40))
    rules = []
    for i in range(200):
        side = ("in lan out uplink", "in uplink out lan", "in lan")[i % 3]
        rules.append(f"    accept from many to 198.19.{i // 250}.{i % 250 + 1} "
                     f"service tcp/{1000 + i} {side}")
    head, _, tail = base.partition("policy edge {\n")
    return ("\n".join(hosts) + "\n" + group + "\n" + head + "policy edge {\n"
            + "\n".join(rules) + "\n" + tail)


# One VRRP instance: keepalived warns about a sync group of one, so none is written.
SINGLE_INSTANCE = """\
network lan 192.0.2.0/24
cluster solo {
    vrrp { password "s3cret"  vrid 7 }
    sync { link sync }
    interface lan    vip 192.0.2.254/24
    interface uplink
    interface sync
    member a priority 150 {
        lan    eth0 192.0.2.1/24
        uplink eth1 198.51.100.1/24
        sync   eth2 203.0.113.1/24
    }
    member b priority 100 {
        lan    eth0 192.0.2.2/24
        uplink eth1 198.51.100.2/24
        sync   eth2 203.0.113.2/24
    }
}
policy solo {
    accept from lan to any out uplink
}
"""


# Issue 14: tracking of every kind on the sync group, unicast VRRP with AH, the sync-link
# allowance and notify actions, on one policy (the script must exist for keepalived -t).
TRACKING = """\
    track {
        interface uplink weight -60
        ping 198.51.100.9 weight -60 interval 2s fall 3 rise 2
        process haproxy weight -60
        script "/usr/bin/true --check" weight 60 interval 5s
    }
    notify { master "/usr/bin/logger up"  backup "/usr/bin/logger 'it''s down'" }
"""


def tracking_policy() -> str:
    from tests.test_compile_rules import POLICY

    text = POLICY.replace("auth ah  advert 1s  vrid 51", "auth ah  advert 1s  vrid 51  unicast")
    text = text.replace("mark-bit 20 }", "mark-bit 20  allow tcp/22, udp/123, "
                        "icmp/echo-request }")
    return text.replace("    interface lan ", TRACKING + "    interface lan ", 1)


def single_instance_tracking() -> str:
    return SINGLE_INSTANCE.replace("    interface lan ", "    track {\n        interface "
                                   "uplink\n        ping 198.51.100.9 weight -60\n    }\n"
                                   "    interface lan ", 1).replace(
        'vrrp { password "s3cret"  vrid 7 }', 'vrrp { password "s3cret"  vrid 7  unicast }')


def link_local_policy(base: str) -> str:
    """BASE with VRRPv3's virtual link-local VIP (written last: keepalived.conf puts it
    first) and one static link-local address per member on every link (fe80::1 twice on
    fw1, once per link)."""
    text = base.replace("vip 192.0.2.254/24, 2001:db8:1::fe/64",
                        "vip 192.0.2.254/24, 2001:db8:1::fe/64, fe80::200:5eff:fe00:233/64")
    for member, devices in (("1", ("eth0", "eth1")), ("2", ("lan0", "wan0"))):
        for device in devices:
            line = next(x for x in text.splitlines() if f" {device} " in x)
            text = text.replace(line, f"{line}, fe80::{member}/64")
    return text


@pytest.mark.parametrize("variant", ["multicast-ah", "unicast", "notrack", "alarm-v3",
                                     "nopreempt", "delay-garp", "single-instance",
                                     "large", "tracking-unicast-vrrp",
                                     "single-instance-tracking", "fast-50ms",
                                     "link-local-vip"])
def test_rule_by_rule_policy_variants_pass_the_real_tools(tmp_path, variant):
    """The feature-rich policy of test_compile_rules: AH, IPv6 NAT, RETURN chains, modes."""
    from tests.test_compile_rules import POLICY, UNICAST

    text = {
        "multicast-ah": POLICY,
        "unicast": UNICAST,
        "notrack": POLICY.replace("mode ftfw", "mode notrack"),
        "alarm-v3": POLICY.replace("mode ftfw", "mode alarm").replace(
            'password "s3cret"  auth ah  advert 1s', "advert 100ms  version 3"),
        "nopreempt": POLICY.replace("auth ah  advert 1s", "advert 1s  preempt off"),
        "delay-garp": POLICY.replace("auth ah  advert 1s",
                                     "advert 2s  preempt-delay 30s  garp-refresh 60s"),
        "single-instance": SINGLE_INSTANCE,
        "large": large_policy(POLICY),
        "tracking-unicast-vrrp": tracking_policy(),
        "single-instance-tracking": single_instance_tracking(),
        "fast-50ms": POLICY.replace('password "s3cret"  auth ah  advert 1s',
                                    "advert 50ms  version 3"),
        "link-local-vip": link_local_policy(POLICY),
    }[variant]
    path = tmp_path / "rules.fw"
    path.write_text(text)
    assert fwc_main(["compile", str(path), "-o", str(tmp_path / "out")]) == 0
    analysis = analyse(path, run_checks=False)
    assert analysis.policy is not None
    for cluster in analysis.policy.clusters:
        for member in cluster.members:
            _check_directory(tmp_path / "out" / cluster.name / member.name,
                             tuple(link.device for link in member.links))


def test_a_named_set_renders_the_way_iptables_save_prints_it(tmp_path):
    """Later passes replace CIDR lists by ipsets: the renderer's set syntax must load."""
    from dataclasses import replace

    from fwc.backend.lower import AddressMatch, lower
    from fwc.backend.render.iptables import render

    analysis = analyse(REPO / "policies" / "edge.fw")
    assert analysis.policy is not None
    cluster = analysis.policy.clusters[0]
    ruleset = lower(cluster, cluster.members[0], 4)
    table = ruleset.table("filter")
    forward = table.chain("FORWARD")
    rules = tuple(
        replace(r, match=replace(r.match, source=AddressMatch(set_name="fwc-desktops")))
        if r.match.source.cidrs else r for r in forward.rules)
    chains = tuple(replace(c, rules=rules) if c.name == "FORWARD" else c for c in table.chains)
    text = render(ruleset.with_table(replace(table, chains=chains)))
    assert "-m set --match-set fwc-desktops src" in text
    with namespace() as ns:
        made = in_ns(ns, "ipset", "create", "fwc-desktops", "hash:net")
        assert made.returncode == 0, made.stderr
        loaded = in_ns(ns, "iptables-restore", stdin=text)
        assert loaded.returncode == 0, loaded.stderr
        saved = in_ns(ns, "iptables-save").stdout
    assert rules_by_table(text)["filter"] == rules_by_table(saved)["filter"]


@pytest.mark.parametrize(("policy", "cluster", "member", "devices"), MEMBERS, ids=IDS)
def test_sysctl_conf_applies(compiled, policy, cluster, member, devices):
    directory = compiled[policy] / cluster / member
    conf, forwarding = directory / "sysctl.conf", directory / "forwarding.conf"

    def keys_of(path: Path) -> list[str]:
        return [line.split("=")[0].strip() for line in path.read_text().splitlines()
                if line.strip() and not line.startswith("#")]

    keys = keys_of(conf) + keys_of(forwarding)
    # Forwarding is switched on by the boot script after the rules, never by sysctl.d.
    assert "net.ipv4.ip_forward" in keys_of(forwarding)
    assert "net.ipv4.ip_forward" not in keys_of(conf)
    assert "net.netfilter.nf_conntrack_events" in keys_of(conf)
    with namespace() as ns:
        # loading a conntrack rule loads nf_conntrack, whose keys sysctl.conf sets
        if (policy, cluster) in NFT_CLUSTERS:
            rules = (directory / "nftables.nft").read_text()
            assert in_ns(ns, "nft", "-f", "-", stdin=rules).returncode == 0
        else:
            rules = (directory / "iptables.rules").read_text()
            assert in_ns(ns, "iptables-restore", stdin=rules).returncode == 0
        result = in_ns(ns, "sysctl", "-p", str(conf), "-p", str(forwarding))
    errors = [line for line in result.stderr.splitlines()
              # nf_conntrack_max and _buckets are global: only the initial namespace sets them
              if "nf_conntrack_max" not in line and "nf_conntrack_buckets" not in line]
    assert errors == [], result.stderr
    for key in keys:
        assert Path("/proc/sys", *key.split(".")).exists(), key
