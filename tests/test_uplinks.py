"""Uplink failover (issue 14): `route ... probe`, checks FWC276-FWC279, the generated
monitor and its unit, install's handling, and the lab drill on a real kernel."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from checkkit import BASE, assert_diagnostic, line_of, mutate, run, second_uplink, with_code
from conftest import POLICIES, cannot_run, skip_or_fail_without_root

from fwc.backend.files import BY_NAME, Reload
from fwc.backend.output import compile_policy
from fwc.diagnostics import Severity
from fwc.install import scripts
from fwc.lab.adapter import load_source
from fwc.lab.netns import lab_namespaces
from fwc.lab.results import UplinkResult
from fwc.lab.uplinks import _rulesets, drill_plan, run_uplink_drill
from fwc.protocols import IPSET_THRESHOLD

EXAMPLE = POLICIES / "uplinks.fw"
PROBED = "    route default via 198.51.100.9 probe 198.51.100.9 interval 500ms fall 3 rise 2\n"
FALLBACK = "    route default via 198.18.0.9 metric 100\n"
# BASE with a second uplink (isp2), a probed default route through the first and a
# floating one through the second, source NAT per uplink.
TWO = mutate(
    *second_uplink(PROBED + FALLBACK),
    ("    snat from lan to any out uplink -> uplink.vip\n",
     "    snat from lan to any out uplink -> uplink.vip\n"
     "    snat from lan to any out isp2 -> isp2.vip\n"))


def _clean(tmp_path: Path, text: str):
    analysis = run(tmp_path, text)
    assert [d for d in analysis.diagnostics if d.severity is not Severity.NOTE
            and d.code.startswith("FWC27")] == [], analysis.diagnostics
    assert not [d for d in analysis.diagnostics if d.is_error], analysis.diagnostics
    return analysis


# -- language --------------------------------------------------------------------------------

def test_a_probed_route_resolves_with_its_timing_and_defaults(tmp_path):
    analysis = _clean(tmp_path, TWO.replace(" interval 500ms fall 3 rise 2", "")
                      .replace("probe 198.51.100.9", "probe 198.51.100.9 rise 4"))
    [probed, floating] = analysis.policy.clusters[0].routes
    assert probed.probe is not None and floating.probe is None
    assert (str(probed.probe.target), probed.probe.interval_ms, probed.probe.fall,
            probed.probe.rise) == ("198.51.100.9", 1000, 3, 4)
    assert probed.probe.detection_ms == 4000
    assert probed.text() == ("route default via 198.51.100.9 probe 198.51.100.9 "
                             "interval 1000ms fall 3 rise 4")


@pytest.mark.parametrize(("old", "new", "code", "phrase"), [
    ("interval 500ms", "interval 50ms", "FWC279", "out of range"),
    ("fall 3", "fall 1", "FWC279", "one lost echo"),
    ("interval 500ms fall 3", "interval 30s fall 3", "FWC279", "only after 120 s"),
    ("fall 3", "fall 0", "FWC279", "out of range"),
    ("probe 198.51.100.9 ", "", "FWC279", "without 'probe TARGET'"),
    ("probe 198.51.100.9", "probe 2001:db8::9", "FWC106", "not IPv4"),
    ("probe 198.51.100.9", "probe 198.51.100.0/24", "FWC106", "must be one address"),
    ("rise 2", "rise 2 follow master", "FWC109", "cannot be probed"),
])
def test_bad_probe_options_are_diagnosed_at_their_line(tmp_path, old, new, code, phrase):
    text = TWO.replace(PROBED, PROBED.replace(old, new))
    assert text != TWO
    analysis = run(tmp_path, text)
    found = with_code(analysis, code)
    assert found and phrase in found[0].message, analysis.diagnostics
    assert found[0].span.line == line_of(text, "route default via 198.51.100.9")


# -- checks ----------------------------------------------------------------------------------

def test_the_example_and_the_two_uplink_policy_are_clean(tmp_path):
    _clean(tmp_path, TWO)
    _clean(tmp_path, EXAMPLE.read_text(encoding="utf-8"))


@pytest.mark.parametrize(("target", "phrase"), [
    ("192.0.2.77", "is on interface 'lan'"),  # would leave by the LAN
    ("192.0.2.254", "address of the cluster"),  # the LAN VIP
    ("198.18.0.77", "is on interface 'isp2'"),  # the other uplink's segment
])
def test_fwc276_probe_target_not_behind_its_uplink(tmp_path, target, phrase):
    text = TWO.replace("probe 198.51.100.9", f"probe {target}")
    d = assert_diagnostic(run(tmp_path, text), "FWC276", Severity.ERROR,
                          line_of(text, "route default via 198.51.100.9"), phrase)
    assert d.span.column == text.splitlines()[d.span.line - 1].index(target) + 1


def test_fwc276_one_target_probed_through_two_gateways(tmp_path):
    text = TWO.replace(FALLBACK, "    route default via 198.18.0.9 metric 100 probe 198.19.0.1\n"
                       "    route default via 198.51.100.8 metric 200\n") \
        .replace("probe 198.51.100.9", "probe 198.19.0.1")
    analysis = run(tmp_path, text)
    assert_diagnostic(analysis, "FWC276", Severity.ERROR,
                      line_of(text, "via 198.18.0.9 metric 100"), "through 198.51.100.9 and "
                      "198.18.0.9")


def test_fwc276_silent_for_the_gateway_and_a_host_beyond_it(tmp_path):
    _clean(tmp_path, TWO)
    _clean(tmp_path, TWO.replace("probe 198.51.100.9", "probe 198.19.0.1"))


def test_fwc277_probed_route_without_a_fallback(tmp_path):
    text = TWO.replace(FALLBACK, "")
    assert_diagnostic(run(tmp_path, text), "FWC277", Severity.WARNING,
                      line_of(text, "route default via 198.51.100.9"), "no route with a higher")
    # A fallback with a lower metric does not take over: still reported.
    text = TWO.replace("metric 100", "metric 0").replace(
        "probe 198.51.100.9", "metric 10 probe 198.51.100.9")
    assert with_code(run(tmp_path, text), "FWC277")


def test_fwc277_silent_with_a_fallback_or_in_a_table_of_its_own(tmp_path):
    _clean(tmp_path, TWO)
    # policy routing: the probed route is table 102's; while it is out, the lookup goes on
    # to the main table and its default route through isp2
    text = TWO.replace(FALLBACK, "    route default via 198.18.0.9\n"
                       "    route-rule from lan table 102\n").replace(
        "probe 198.51.100.9", "table 102 probe 198.51.100.9")
    analysis = run(tmp_path, text)
    assert not with_code(analysis, "FWC277"), analysis.diagnostics


def test_fwc278_snat_that_does_not_follow_the_switch(tmp_path):
    # one snat for every exit, to the first uplink's VIP
    text = TWO.replace("    snat from lan to any out uplink -> uplink.vip\n"
                       "    snat from lan to any out isp2 -> isp2.vip\n",
                       "    snat from lan to any -> uplink.vip\n")
    d = assert_diagnostic(run(tmp_path, text), "FWC278", Severity.WARNING,
                          line_of(text, "snat from lan to any -> uplink.vip"),
                          "also applies after a switch to 'isp2'")
    assert d.related and d.related[0].span.line == line_of(text, "probe 198.51.100.9")
    # snat out uplink only: the traffic would leave isp2 untranslated
    text = TWO.replace("    snat from lan to any out isp2 -> isp2.vip\n", "")
    assert_diagnostic(run(tmp_path, text), "FWC278", Severity.WARNING,
                      line_of(text, "snat from lan to any out uplink"), "leaves untranslated")


def test_fwc278_silent_for_nat_of_the_other_family(tmp_path):
    """An IPv6 probed route switches IPv6 traffic only: the IPv4 snat out uplink without
    a counterpart for isp2 was reported as if the IPv4 traffic moved too."""
    text = TWO.replace(PROBED + FALLBACK,
                       "    route default via fe80::1 dev uplink probe fe80::1\n"
                       "    route default via fe80::2 dev isp2 metric 2000\n") \
        .replace("    snat from lan to any out isp2 -> isp2.vip\n", "")
    assert with_code(run(tmp_path, text), "FWC278") == []
    # the same NAT with an IPv4 probed route is reported (test above)
    assert with_code(run(tmp_path, TWO.replace("    snat from lan to any out isp2 -> isp2.vip\n",
                                               "")), "FWC278")


def test_fwc278_silent_with_nat_per_uplink_and_without_probes(tmp_path):
    _clean(tmp_path, TWO)
    assert not with_code(run(tmp_path, BASE), "FWC278")


# -- generated files -------------------------------------------------------------------------

def _files(tmp_path: Path, text: str) -> dict[str, bytes]:
    analysis = _clean(tmp_path, text)
    [cluster] = compile_policy(analysis.policy)
    return {f.path: f.content for f in cluster.files}


def test_the_monitor_and_its_unit_exist_only_with_probed_routes(tmp_path):
    files = _files(tmp_path, TWO)
    for member in ("fw1", "fw2"):
        assert f"{member}/fwc-uplinks.sh" in files and f"{member}/fwc-uplinks.service" in files
    plain = _files(tmp_path, TWO.replace(PROBED, PROBED.split(" probe")[0] + "\n"))
    assert not [p for p in plain if "fwc-uplinks" in p]
    manifest = files["MANIFEST"].decode()
    assert "fw1/fwc-uplinks.sh" in manifest and "fw1/fwc-uplinks.service" in manifest


def test_the_monitor_watches_the_route_as_the_routes_script_installs_it(tmp_path):
    files = _files(tmp_path, TWO.replace("probe 198.51.100.9", "probe 198.19.0.1"))
    script = files["fw1/fwc-uplinks.sh"].decode()
    routes = files["fw1/fwc-routes.sh"].decode()
    assert "route replace default via 198.51.100.9 dev eth1 proto 94" in routes
    assert "route replace default via 198.18.0.9 dev eth3 metric 100 proto 94" in routes
    line = next(x for x in script.splitlines() if x.startswith("monitor "))
    # name, family, target, device, interval (s), timeout guard, fall, rise, host route,
    # selectors,
    # then the route's words exactly as fwc-routes.sh writes them
    assert line == ("monitor 'uplink via 198.51.100.9' 4 198.19.0.1 eth1 0.5 2 3 2 "
                    "'198.19.0.1 via 198.51.100.9 dev eth1' "
                    "'table main exact 0.0.0.0/0 via 198.51.100.9 dev eth1' "
                    "default via 198.51.100.9 dev eth1 &")
    # the gateway itself is on the link: no host route
    gateway = _files(tmp_path, TWO)["fw1/fwc-uplinks.sh"].decode()
    assert "4 198.51.100.9 eth1 0.5 2 3 2 '' 'table main" in gateway
    # fail closed: the monitor never touches the packet filter
    for word in ("iptables", "nft ", "ip6tables", "sysctl"):
        assert word not in script.split("PATH=", 1)[1], word
    # deterministic
    again = _files(tmp_path, TWO.replace("probe 198.51.100.9", "probe 198.19.0.1"))
    assert again["fw1/fwc-uplinks.sh"] == files["fw1/fwc-uplinks.sh"]


# The member's own health pings with `output drop`: an IPv4 uplink probe beyond its
# gateway, an IPv6 one on the lan, a keepalived ping track of the uplink gateway.
PINGS = mutate(
    ("    interface sync\n", "    interface sync\n    default { output drop }\n"
     "    track { ping 198.51.100.9 weight -60 }\n"
     "    route 2001:db8:99::/48 via 2001:db8:1::99 probe 2001:db8:1::99\n"
     "    route 2001:db8:99::/48 via 2001:db8:1::98 metric 2000\n"),
    base=TWO.replace("probe 198.51.100.9", "probe 198.19.0.1"))


def test_output_drop_lets_each_health_ping_out_and_nothing_more(tmp_path, capsys):
    """With OUTPUT filtered, the probes' and the ping track's echo requests were dropped:
    every member judged its uplink dead for good (the probed route out) or went to FAULT.
    Each gets exactly its echo request to its target by its device, and `fwc query`
    says so as the compiled chain does."""
    from fwc.cli import main
    files = _files(tmp_path, PINGS)
    v4, v6 = files["fw1/iptables.rules"].decode(), files["fw1/ip6tables.rules"].decode()
    assert [x for x in v4.splitlines() if "probe" in x or "ping" in x] == [
        '-A OUTPUT -d 198.51.100.9/32 -o eth1 -p icmp -m icmp --icmp-type 8 '
        '-m comment --comment "fwc auto: track ping eth1" -j ACCEPT',
        '-A OUTPUT -d 198.19.0.1/32 -o eth1 -p icmp -m icmp --icmp-type 8 '
        '-m comment --comment "fwc auto: uplink probe eth1" -j ACCEPT']
    assert [x for x in v6.splitlines() if "probe" in x or "ping" in x] == [
        '-A OUTPUT -d 2001:db8:1::99/128 -o eth0 -p ipv6-icmp -m icmp6 --icmpv6-type 128 '
        '-m comment --comment "fwc auto: uplink probe eth0" -j ACCEPT']
    # the fail-closed ruleset keeps them: the monitor goes on judging the uplink
    assert "fwc auto: uplink probe eth1" in files["fw1/failsafe.rules"].decode()
    path = tmp_path / "pings.fw"
    path.write_text(PINGS, encoding="utf-8")
    assert main(["query", str(path), "--from", "firewall", "--to", "198.19.0.1",
                 "--service", "icmp/echo-request"]) == 0
    assert "edge/fw1: accept (OUTPUT)\n    decided by the automatic rule 'fwc auto: uplink " \
        "probe eth1'" in capsys.readouterr().out
    for to, service in (("198.19.0.2", "icmp/echo-request"), ("198.19.0.1", "tcp/80")):
        assert main(["query", str(path), "--from", "firewall", "--to", to,
                     "--service", service]) == 0
        assert "edge/fw1: drop (OUTPUT)" in capsys.readouterr().out, (to, service)
    # with OUTPUT accepting, the rulesets are as before: no rule for the pings
    accepting = _files(tmp_path, PINGS.replace("    default { output drop }\n", ""))
    assert "ping" not in accepting["fw1/iptables.rules"].decode()
    assert "probe" not in accepting["fw1/ip6tables.rules"].decode()


def test_the_monitor_parses_and_runs_its_loop_against_fake_tools(tmp_path):
    """sh -n, and one bounded run with `ip` and `ping` replaced by recorders: the route is
    removed after FALL failed probes and restored after RISE answered ones."""
    script = _files(tmp_path, TWO.replace("interval 500ms", "interval 200ms")
                    .replace("fall 3", "fall 2"))["fw1/fwc-uplinks.sh"].decode()
    path = tmp_path / "fwc-uplinks.sh"
    path.write_text(script, encoding="utf-8")
    assert subprocess.run(["sh", "-n", str(path)], capture_output=True).returncode == 0
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "calls"
    # ping fails for probes 1-3 and answers from the 4th on (a counter file)
    (bin_dir / "ping").write_text(
        f"#!/bin/sh\nn=$(cat {tmp_path}/n 2>/dev/null || echo 0); n=$((n+1)); "
        f"echo $n > {tmp_path}/n; [ $n -gt 3 ]\n")
    (bin_dir / "ip").write_text(f"#!/bin/sh\necho \"ip $*\" >> {log}\n"
                                "case \"$*\" in *'route show'*) echo default;; esac\n")
    (bin_dir / "logger").write_text("#!/bin/sh\n")
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    patched = script.replace("PATH=/usr/sbin:/usr/bin:/sbin:/bin", f"PATH={bin_dir}:/usr/bin:/bin")
    path.write_text(patched, encoding="utf-8")
    proc = subprocess.Popen(["sh", str(path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        _, err = proc.communicate(timeout=2.5)
    except subprocess.TimeoutExpired:
        proc.terminate()
        _, err = proc.communicate(timeout=5)
    text = err.decode()
    assert "did not answer 2 times: route removed" in text, text
    assert "answered 2 times: route restored" in text, text
    calls = log.read_text().splitlines()
    first_del = next(i for i, c in enumerate(calls) if " route del default via" in c)
    assert any(" route replace default via 198.51.100.9 dev eth1 proto 94" in c
               for c in calls[first_del:]), calls


def test_a_link_local_probe_target_is_a_neighbour_pinged_by_its_device(tmp_path):
    """`probe fe80::1`: an unscoped link-local ping goes by whichever link the kernel
    picks (two providers' routers are often both fe80::1), and the host route 'fe80::1
    via fe80::1' pinned nothing. The target is on the link: no host route, `-I eth1`."""
    text = TWO.replace(PROBED + FALLBACK,
                       "    route default via fe80::1 dev uplink probe fe80::1\n"
                       "    route default via fe80::2 dev isp2 metric 2000\n")
    script = _files(tmp_path, text)["fw1/fwc-uplinks.sh"].decode()
    assert "monitor 'uplink via fe80::1' 6 fe80::1 eth1 1 2 3 3 '' " in script, script


def _fake_tools(tmp_path: Path, ping: str, ip: str) -> Path:
    """A bin directory whose ping and ip run the sh bodies PING and IP (logger: silent)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "ping").write_text(f"#!/bin/sh\n{ping}\n")
    (bin_dir / "ip").write_text(f"#!/bin/sh\n{ip}\n")
    (bin_dir / "logger").write_text("#!/bin/sh\n")
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    return bin_dir


def _run_monitor(script: str, bin_dir: Path, seconds: float) -> str:
    """SCRIPT run with BIN_DIR first on its PATH for SECONDS, then stopped: its stderr."""
    path = bin_dir.parent / "fwc-uplinks.sh"
    path.write_text(script.replace("PATH=/usr/sbin:/usr/bin:/sbin:/bin",
                                   f"PATH={bin_dir}:/usr/bin:/bin"), encoding="utf-8")
    proc = subprocess.Popen(["sh", str(path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        _, err = proc.communicate(timeout=seconds)
    except subprocess.TimeoutExpired:
        proc.terminate()
        _, err = proc.communicate(timeout=5)
    return err.decode()


def test_the_monitor_logs_a_route_it_cannot_restore_once_and_pings_by_its_device(tmp_path):
    """A route the kernel refuses (its device deconfigured) while the probe answers was
    logged every interval for as long as it lasted: 5 lines a second, for ever. And the
    probe left by whatever route the target had, the other uplink's too."""
    script = _files(tmp_path, TWO.replace("interval 500ms", "interval 200ms")
                    .replace("fall 3", "fall 2"))["fw1/fwc-uplinks.sh"].decode()
    pings = tmp_path / "pings"
    bin_dir = _fake_tools(tmp_path, f'echo "$*" >> {pings}',
                          "case \"$*\" in *'route show'*) echo default;; "
                          "*'route replace default'*) exit 2;; esac")
    text = _run_monitor(script, bin_dir, 1.6)
    assert text.count("could not restore the route") == 1, text
    calls = pings.read_text().splitlines()
    assert len(calls) >= 4 and all("-I eth1 198.51.100.9" in c for c in calls), calls


def test_systemd_analyze_verify_accepts_the_monitor_unit(tmp_path):
    tool = shutil.which("systemd-analyze")
    if tool is None:
        cannot_run("systemd-analyze is missing (tests/run.sh installs the systemd package)")
    files = _files(tmp_path, TWO)
    root = tmp_path / "root"
    for name in ("fwc-uplinks.service", "fwc-uplinks.sh", "fwc-routes.service",
                 "fwc-routes.sh", "fwc-firewall.service", "fwc-firewall.sh"):
        target = root / BY_NAME[name].path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(files[f"fw1/{name}"])
        target.chmod(BY_NAME[name].mode)
    units = root / "lib/systemd/system"
    units.mkdir(parents=True)
    for directory in (Path("/lib/systemd/system"), Path("/usr/lib/systemd/system")):
        for unit in directory.glob("*.target") if directory.is_dir() else ():
            if not (units / unit.name).exists():
                shutil.copy(unit, units, follow_symlinks=True)
    proc = subprocess.run([tool, "verify", f"--root={root}", "fwc-uplinks.service"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stderr.strip() == "", proc.stderr


def test_install_tests_restarts_and_enables_the_monitor():
    files = [BY_NAME["fwc-uplinks.sh"], BY_NAME["fwc-uplinks.service"]]
    assert f"sh -n {scripts.STAGING}/fwc-uplinks.sh" in scripts.test_ruleset(files)
    daemon, command = scripts.reload_command(Reload.UPLINKS, True, True, None, "master")
    assert daemon == "fwc-uplinks"
    assert "systemctl restart fwc-uplinks.service" in command
    assert "systemctl stop fwc-uplinks.service" in command  # a rollback that removed it
    assert "systemctl enable -q fwc-uplinks.service" in scripts.reload_systemd_units()
    _, plain = scripts.reload_command(Reload.UPLINKS, False, True, None, "master")
    assert "warning" in plain


# -- the lab drill -----------------------------------------------------------------------------

def test_the_drill_plans_the_example():
    plan = drill_plan(load_source(EXAMPLE))
    assert plan.member.name == "fw1" and plan.first.interface == "uplink"
    assert plan.second_interface == "uplink2" and str(plan.second_gateway) == "203.0.113.1"
    assert plan.first.pin is not None  # the probe target is beyond the gateway
    assert str(plan.client_gateway) == "192.0.2.254"


def _drill(tmp_path: Path, policy: Path, prefix: str, tool: str) -> UplinkResult:
    """The uplink drill run as root on POLICY; every namespace it made is gone after."""
    skip_or_fail_without_root()
    if shutil.which(tool) is None:
        cannot_run(f"{tool} is missing (tests/run.sh installs it)")
    result = run_uplink_drill(load_source(policy), prefix, tmp_path / "work")
    assert not lab_namespaces(prefix)  # every namespace is gone
    return result


@pytest.mark.root
def test_uplink_drill_switches_and_returns_within_the_detection_time(tmp_path):
    result = _drill(tmp_path, EXAMPLE, "fwcupl", "iptables")
    assert result.baseline.startswith("198.51.100."), result.notes
    assert result.route_removed and result.route_back, result.notes
    # fwc-routes.sh re-added the route during the outage: out again within two rounds
    assert result.reapplied_s is not None and result.reapplied_s <= 2 * 0.25 + 1.0, result.notes
    assert result.switch_s is not None and result.return_s is not None, result.notes
    # within the probe's detection time (0.75 s here) plus one second of margin
    assert 0 <= result.switch_s <= result.detection_s + 1.0, result.summary()
    assert 0 <= result.return_s <= result.restore_s + 1.0, result.summary()
    assert result.ok, result.summary()
    print(result.summary())


def _with_ipsets(tmp_path: Path) -> Path:
    """The example with a drop to a group too long for a plain rule: an ipset."""
    hosts = ", ".join(f"198.19.100.{2 * i + 1}" for i in range(IPSET_THRESHOLD + 4))
    text = EXAMPLE.read_text(encoding="utf-8")
    text = text.replace("service web    tcp/80,443\n",
                        f"service web    tcp/80,443\ngroup   blocked {hosts}\n")
    text = text.replace("policy uplinks {\n", "policy uplinks {\n    drop   from lan to blocked\n")
    path = tmp_path / "uplinks-sets.fw"
    path.write_text(text, encoding="utf-8")
    return path


def test_the_drill_loads_the_sets_before_the_rules_as_install_does(tmp_path):
    files = load_source(_with_ipsets(tmp_path)).files["fw1"]
    # (uplinks.fw has no IPv6 address: its members filter IPv6 all the same)
    assert [f.name for f in _rulesets(files)] == ["ipsets.rules", "iptables.rules",
                                                  "ip6tables.rules"]
    assert [f.name for f in _rulesets(load_source(EXAMPLE).files["fw1"])] == [
        "iptables.rules", "ip6tables.rules"]


@pytest.mark.root
def test_uplink_drill_with_output_drop_switches_and_returns(tmp_path):
    """`default { output drop }`: the probe's echo request must still leave, or the
    monitor removes the route at once and never puts it back."""
    path = tmp_path / "uplinks-output-drop.fw"
    path.write_text(EXAMPLE.read_text(encoding="utf-8").replace(
        "cluster uplinks {\n", "cluster uplinks {\n    default { output drop }\n"),
        encoding="utf-8")
    result = _drill(tmp_path, path, "fwcuplo", "iptables")
    assert result.route_removed and result.route_back, result.notes
    assert result.ok, result.summary()


def _namespaces(prefix: str) -> None:
    """fw1 of the example between two routers that both reach the probe target (as two
    providers reach a host on the internet), r1 by eth1, r2 by eth3."""
    def ip(*argv: str) -> None:
        subprocess.run(["ip", *argv], check=True, capture_output=True, timeout=30)
    for name in ("fw", "r1", "r2"):
        ip("netns", "add", prefix + name)
        ip("-n", prefix + name, "link", "set", "lo", "up")
    for device, router, peer, own, gateway in (("eth1", "r1", "p1", "198.51.100.2/24",
                                                "198.51.100.1"),
                                               ("eth3", "r2", "p2", "203.0.113.2/24",
                                                "203.0.113.1")):
        ip("-n", prefix + "fw", "link", "add", device, "type", "veth", "peer", "name", peer,
           "netns", prefix + router)
        ip("-n", prefix + "fw", "addr", "add", own, "dev", device)
        ip("-n", prefix + router, "addr", "add", f"{gateway}/24", "dev", peer)
        ip("-n", prefix + router, "addr", "add", "198.19.0.1/32", "dev", "lo")
        ip("-n", prefix + "fw", "link", "set", device, "up")
        ip("-n", prefix + router, "link", "set", peer, "up")
        ip("-n", prefix + router, "route", "add", "default", "via", own.split("/")[0])
        # the target is beyond the router, not a neighbour on the uplink: no ARP answer
        ip("netns", "exec", prefix + router, "sysctl", "-qw",
           "net.ipv4.conf.all.arp_ignore=1")


@pytest.mark.root
def test_a_deconfigured_uplink_is_judged_down_not_probed_through_the_other(tmp_path):
    """eth1 loses its address (a network manager deconfigures it): the probe's host route
    and the probed route cannot be added. The probe then went out by the second uplink,
    answered, and the monitor kept the first uplink 'up', logging every interval that
    it could not restore its route. Now the probe leaves by eth1 or not at all."""
    skip_or_fail_without_root()
    prefix = f"fwcupd{os.getpid() % 100000}"
    files = load_source(EXAMPLE).files["fw1"]
    for name in ("fwc-routes.sh", "fwc-uplinks.sh"):
        (tmp_path / name).write_text(files[name], encoding="utf-8")
    proc, err = None, b""
    try:
        _namespaces(prefix)
        netns = ["ip", "netns", "exec", prefix + "fw", "sh"]
        subprocess.run([*netns, str(tmp_path / "fwc-routes.sh")], check=True,
                       capture_output=True, timeout=30)
        proc = subprocess.Popen([*netns, str(tmp_path / "fwc-uplinks.sh")],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                start_new_session=True)
        time.sleep(1.0)
        subprocess.run(["ip", "-n", prefix + "fw", "addr", "flush", "dev", "eth1"],
                       check=True, capture_output=True, timeout=30)
        time.sleep(3.0)  # twelve rounds of 250 ms
    finally:
        if proc is not None:
            os.killpg(proc.pid, signal.SIGTERM)
            _, err = proc.communicate(timeout=10)
        for name in ("fw", "r1", "r2"):
            subprocess.run(["ip", "netns", "del", prefix + name], capture_output=True)
    text = err.decode()
    assert "198.19.0.1 did not answer 2 times: route removed" in text, text
    assert text.count("could not restore the route") <= 1, text
    left = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=30)
    assert prefix not in left.stdout  # every namespace is gone


@pytest.mark.root
def test_uplink_drill_on_a_policy_with_ipsets(tmp_path):
    result = _drill(tmp_path, _with_ipsets(tmp_path), "fwcupls", "ipset")
    assert result.ok, result.summary()


def test_an_uplink_result_is_ok_only_within_the_detection_time_and_with_the_route_moved():
    from fwc.lab.report import render_text, to_dict
    from fwc.lab.results import LabReport

    def result(**kw: object) -> UplinkResult:
        base: dict[str, object] = dict(member="fw1", first="uplink via 198.51.100.1",
                                       second="uplink2 via 203.0.113.1", detection_s=0.75,
                                       restore_s=0.75, switch_s=0.8, return_s=0.7,
                                       route_removed=True, route_back=True, reapplied_s=0.3)
        return UplinkResult(**{**base, **kw})  # type: ignore[arg-type]

    assert result().ok
    assert not result(switch_s=None).ok  # never switched
    assert not result(switch_s=2.0).ok  # beyond detection + margin
    assert not result(switch_s=-0.1).ok  # a connection from before the failure
    assert not result(route_back=False).ok
    assert not result(reapplied_s=None).ok  # fwc-routes.sh put the dead route back for good
    assert "FAILED" in result(return_s=None).summary()
    report = LabReport("uplinks", "fwcx", "/tmp/x")
    report.uplinks.append(result())
    assert "uplink drill on fw1" in render_text(report)
    assert to_dict(report)["uplinks"][0]["ok"] is True


def test_fwc_graph_labels_the_probed_route(capsys):
    from fwc.cli import main

    assert main(["graph", str(EXAMPLE)]) == 0
    out = capsys.readouterr().out
    assert '"uplinks/gateway:198.51.100.1" -> "uplinks/destination:main:0.0.0.0/0" ' \
        '[label="probe 198.19.0.1"];' in out
    assert '[label="metric 100"]' in out


def test_install_dry_run_stages_tests_and_snapshots_the_monitor(tmp_path, capsys, monkeypatch):
    from fwc.cli import main
    from fwc.install import transport as transport_module

    policy = tmp_path / "uplinks.fw"
    policy.write_text(EXAMPLE.read_text(encoding="utf-8").replace(
        "member fw1 priority 150 {", 'member fw1 priority 150 ssh "root@192.0.2.1" {').replace(
        "member fw2 priority 100 {", 'member fw2 priority 100 ssh "root@192.0.2.2" {'),
        encoding="utf-8")
    assert main(["compile", str(policy), "-o", str(tmp_path / "output")]) == 0

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"a command ran: {args}")
    monkeypatch.setattr(transport_module.subprocess, "run", refuse)
    capsys.readouterr()
    assert main(["install", "-o", str(tmp_path / "output"), "--member", "fw1", "--dry-run",
                 "--ssh", "ssh -F /dev/null", str(policy)]) == 0
    out = capsys.readouterr().out
    for step in ("ping (for fwc-uplinks.sh)", "timeout (for fwc-uplinks.sh)",  # preflight
                 "cat > /etc/fwc/staging/fwc-uplinks.sh && chmod 755",
                 "sh -n /etc/fwc/staging/fwc-uplinks.sh",
                 "echo changed fwc-uplinks.sh",
                 "mv -f /etc/fwc/fwc-uplinks.sh.fwc-new /etc/fwc/fwc-uplinks.sh",
                 "mv -f /etc/systemd/system/fwc-uplinks.service.fwc-new "
                 "/etc/systemd/system/fwc-uplinks.service"):
        assert step in out, step
