"""Routes (issue 14): language, checks FWC240-FWC249, generated files, the real `ip` and
keepalived, and the analysis routing by them (query, expect, diff)."""

from __future__ import annotations

import ipaddress
import os
import subprocess
from pathlib import Path

import pytest
from checkkit import (
    BASE,
    assert_diagnostic,
    compiled_files,
    line_of,
    mutate,
    run,
    second_uplink,
    with_code,
)
from conftest import REPO

from fwc.analysis.diff import traffic_changes
from fwc.analysis.engine import MemberView, TrafficClass, classify
from fwc.cli import main
from fwc.diagnostics import Severity
from fwc.model import PortRange, ServiceMatch
from fwc.model.addresses import AddressSet
from fwc.pipeline import analyse

ROUTES = """\
    route default via 198.51.100.9
    route default via 2001:db8:1::99
    route 198.18.20.0/24 via 192.0.2.99
    route 198.18.30.0/24 via 192.0.2.98 src lan.vip follow master
"""
ROUTED = mutate(("    interface sync\n", "    interface sync\n" + ROUTES))
# A second uplink chosen by source (policy routing), and a mark-based rule.
TWO_UPLINKS = mutate(
    *second_uplink(ROUTES + "    route default via 198.18.0.9 table 102\n"
                            "    route-rule from 192.0.2.128/25 table 102\n"
                            "    route-rule mark 0x10/0xf0 table 102 priority 500\n"
                            "    route-rule to 198.18.40.0/24 table 102 follow master\n"),
    ("    accept from lan    to any      service tcp/80,443\n",
     "    accept from lan    to any      service tcp/80,443 out uplink\n"
     "    accept from lan    to any      service tcp/80,443 out isp2\n"))


def _cluster(tmp_path: Path, text: str):
    analysis = run(tmp_path, text)
    assert [d for d in analysis.diagnostics if d.is_error] == [], analysis.diagnostics
    return analysis.policy.clusters[0]


# -- language --------------------------------------------------------------------------------

def test_routes_and_rules_resolve(tmp_path):
    cluster = _cluster(tmp_path, TWO_UPLINKS)
    texts = [r.text() for r in cluster.routes]
    assert texts[:4] == ["route default via 198.51.100.9", "route default via 2001:db8:1::99",
                         "route 198.18.20.0/24 via 192.0.2.99",
                         "route 198.18.30.0/24 via 192.0.2.98 src lan.vip follow master"]
    assert cluster.routes[3].source is not None and str(cluster.routes[3].source) == "192.0.2.254"
    rules = cluster.route_rules
    assert [(r.family, r.priority, r.table, r.mark) for r in rules] == [
        (4, 1000, 102, None), (4, 500, 102, (0x10, 0xF0)), (4, 1020, 102, None)]
    assert rules[2].follow and str(rules[2].destinations[0]) == "198.18.40.0/24"


@pytest.mark.parametrize(("line", "code", "phrase"), [
    ("route default dev uplink", "FWC109", "needs 'via GATEWAY'"),
    ("route 198.18.20.0/24 via fe80::1", "FWC106", "via an IPv6 gateway"),
    ("route 2001:db8:9::/48 via fe80::1", "FWC109", "needs 'dev IFACE'"),
    ("route 198.18.20.0/24 via 192.0.2.99 table 254", "FWC247", "table 254"),
    ("route 198.18.20.0/24 via 192.0.2.99 dev nowhere", "FWC101", "undefined interface"),
    ("route 198.18.20.0/24 via 192.0.2.99 only fw9", "FWC101", "undefined member"),
    ("route-rule from nowhere table 5", "FWC101", "undefined object"),
    ("route-rule table 5", "FWC109", "needs a selector"),
    ("route-rule from lan priority 7", "FWC109", "needs 'table N'"),
])
def test_bad_route_lines_are_diagnosed_at_their_line(tmp_path, line, code, phrase):
    text = mutate(("    interface sync\n", f"    interface sync\n    {line}\n"))
    assert_diagnostic(run(tmp_path, text), code, Severity.ERROR, line_of(text, line), phrase)


def test_a_priority_used_twice_is_fwc249(tmp_path):
    text = mutate(("    interface sync\n", "    interface sync\n"
                   "    route default via 198.51.100.9 table 7\n"
                   "    route-rule from lan table 7 priority 100\n"
                   "    route-rule to lan table 7 priority 100\n"))
    assert_diagnostic(run(tmp_path, text), "FWC249", Severity.ERROR,
                      line_of(text, "to lan table 7"), "priority 100 is used twice")


def test_an_object_may_still_be_called_route(tmp_path):
    text = mutate(("host    client   192.0.2.10\n", "host    client   192.0.2.10\n"
                   "host    route    192.0.2.11\n"),
                  ("    accept from server to client   service tcp/5001\n",
                   "    accept from server to client, route service tcp/5001\n"))
    assert [d for d in run(tmp_path, text).diagnostics if d.is_error] == []


# -- checks -----------------------------------------------------------------------------------

@pytest.mark.parametrize(("line", "code", "severity", "phrase"), [
    ("route 198.18.20.0/24 via 198.18.77.1", "FWC240", Severity.ERROR, "on no network"),
    ("route 198.18.20.0/24 via 203.0.113.9", "FWC241", Severity.ERROR, "over the sync link"),
    ("route 198.18.20.0/24 via 198.51.100.9 follow master", "FWC243", Severity.ERROR,
     "no IPv4 VIP"),
    ("route 198.18.20.0/24 via 192.0.2.99 src lan.vip", "FWC244", Severity.ERROR,
     "does not follow the master"),
    ("route 198.18.20.0/24 via 192.0.2.99 src 192.0.2.1", "FWC244", Severity.ERROR,
     "not an address of member fw2"),
    ("route 198.18.20.0/24 via 192.0.2.2", "FWC245", Severity.ERROR, "address of the firewall"),
    ("route-rule from lan table 9", "FWC246", Severity.WARNING, "no IPv4 route"),
    ("route 192.0.2.0/24 via 192.0.2.99", "FWC248", Severity.WARNING, "directly on"),
])
def test_each_routing_check_fires_once_at_its_line(tmp_path, line, code, severity, phrase):
    text = mutate(("    interface sync\n", f"    interface sync\n    {line}\n"),
                  ("        uplink eth1 198.51.100.1/24\n",
                   "        uplink eth1 198.51.100.1/24\n"),
                  base=BASE.replace("uplink vip 198.51.100.254/24  vrid 52",
                                    "uplink"))
    if code == "FWC240":
        found = with_code(run(tmp_path, text), code)
        assert {d.span.line for d in found} == {line_of(text, line)}
        assert sorted(d.message.split("'")[1] for d in found) == ["fw1", "fw2"]
        return
    if code == "FWC241":
        assert_diagnostic(run(tmp_path, text), code, severity, line_of(text, line), phrase)
        return
    analysis = run(tmp_path, text)
    assert_diagnostic(analysis, code, severity, line_of(text, line), phrase)


def test_two_default_routes_in_one_table_are_fwc242(tmp_path):
    text = mutate(("    interface sync\n", "    interface sync\n"
                   "    route default via 198.51.100.9\n    route default via 198.51.100.8\n"))
    found = with_code(run(tmp_path, text), "FWC242")
    assert {d.span.line for d in found} == {line_of(text, "via 198.51.100.8")}
    assert "own table and a route-rule" in (found[0].hint or "")


def test_the_routed_policies_and_the_examples_are_clean(tmp_path):
    for text in (ROUTED, TWO_UPLINKS):
        analysis = run(tmp_path, text)
        assert [f"{d.code} {d.message}" for d in analysis.diagnostics
                if d.code.startswith("FWC24")] == []
    dmz = analyse(REPO / "policies" / "dmz.fw")
    assert list(dmz.diagnostics) == [] and dmz.policy.clusters[0].routes


# -- generated files ----------------------------------------------------------------------

def test_routes_script_replaces_fwcs_own_routes_per_family(tmp_path):
    files = compiled_files(tmp_path, TWO_UPLINKS)
    script = files["fw1/fwc-routes.sh"]
    v4 = script.split("ip -force -4 -batch - <<'FWC_ROUTES'")[1].split("\nFWC_ROUTES")[0]
    assert v4.splitlines()[1:] == [
        "route flush table all proto 94",
        "rule flush protocol 94",
        "route replace default via 198.51.100.9 dev eth1 proto 94",
        "route replace 198.18.20.0/24 via 192.0.2.99 dev eth0 proto 94",
        "route replace default via 198.18.0.9 dev eth3 table 102 proto 94",
        "rule add pref 499 lookup main suppress_prefixlength 0 protocol 94",
        "rule add pref 500 fwmark 0x10/0xf0 lookup 102 protocol 94",
        "rule add pref 1000 from 192.0.2.128/25 lookup 102 protocol 94",
    ]
    assert "route replace default via 2001:db8:1::99 dev eth0 proto 94" in script
    assert "198.18.30.0/24" not in script  # follows the master: keepalived's
    keepalived = files["fw1/keepalived.conf"]
    lan = keepalived.split("vrrp_instance VI_lan {")[1].split("\n}")[0]
    assert "virtual_routes {\n        198.18.30.0/24 via 192.0.2.98 dev eth0 src 192.0.2.254\n" \
        in lan
    assert "virtual_rules {\n        to 198.18.40.0/24 table 102 priority 1020\n" in lan
    assert "virtual_routes" not in keepalived.split("vrrp_instance VI_uplink {")[1]
    unit = files["fw1/fwc-routes.service"]
    assert "After=network-online.target fwc-firewall.service" in unit
    assert "ExecStart=/etc/fwc/fwc-routes.sh" in unit
    assert compiled_files(tmp_path, TWO_UPLINKS) == files  # deterministic


# Rules that follow the master only, and one before the member's own: keepalived adds
# its virtual_rules without a `suppress_prefixlength 0` rule of its own.
FOLLOWING = mutate(*second_uplink("    route default via 198.18.0.9 table 102\n"
                                  "    route-rule from 192.0.2.128/25 table 102 follow master\n"))


def test_the_suppress_rule_comes_before_the_rules_that_follow_the_master(tmp_path):
    """With `follow master` rules only, no `lookup main suppress_prefixlength 0` rule
    was written anywhere: on the master the table's default route won over the
    connected networks (the VIP's replies to the lan left by the second uplink),
    while fwc query routed them to the lan."""
    script = compiled_files(tmp_path, FOLLOWING)["fw1/fwc-routes.sh"]
    assert "rule add pref 999 lookup main suppress_prefixlength 0 protocol 94\n" in script
    assert "from 192.0.2.128/25" not in script  # keepalived's
    earlier = mutate(*second_uplink(
        "    route default via 198.18.0.9 table 102\n"
        "    route-rule from 192.0.2.128/25 table 102 priority 300 follow master\n"
        "    route-rule mark 0x10/0xf0 table 102 priority 500\n"))
    script = compiled_files(tmp_path, earlier)["fw1/fwc-routes.sh"]
    assert "rule add pref 299 lookup main suppress_prefixlength 0 protocol 94\n" in script
    assert "rule add pref 500 fwmark 0x10/0xf0 lookup 102 protocol 94\n" in script


def test_a_member_without_routes_gets_no_routes_files(tmp_path):
    files = compiled_files(tmp_path, mutate(("    interface sync\n", "    interface sync\n"
                                     "    route 198.18.20.0/24 via 192.0.2.99 only fw2\n")))
    assert "fw1/fwc-routes.sh" not in files and "fw1/fwc-routes.service" not in files
    assert "fw2/fwc-routes.sh" in files and "fw2/fwc-routes.service" in files
    assert not any(p.endswith("fwc-routes.sh") for p in compiled_files(tmp_path, BASE))


def test_the_routes_batches_are_computed_once_per_member(tmp_path, monkeypatch):
    from fwc.backend.render import routes

    calls: list[str] = []
    batches = routes.batches

    def counted(cluster, member):
        calls.append(member.name)
        return batches(cluster, member)

    monkeypatch.setattr(routes, "batches", counted)
    files = compiled_files(tmp_path, TWO_UPLINKS)
    assert "fw1/fwc-routes.sh" in files and "fw2/fwc-routes.service" in files
    # the files table asks once per routes file, the script renders them: one computation
    assert sorted(calls) == ["fw1", "fw2"]


def test_sync_link_igmp_is_accepted_in_and_out(tmp_path):
    files = compiled_files(tmp_path, BASE)
    for name in ("fw1/iptables.rules", "fw1/failsafe.rules"):
        rules = files[name]
        assert '-A INPUT -d 224.0.0.0/4 -i eth2 -p 2 -m comment --comment "fwc auto: igmp ' \
            'eth2" -j ACCEPT' in rules, name
        assert '-A OUTPUT -d 224.0.0.0/4 -o eth2 -p 2 -m comment --comment "fwc auto: igmp ' \
            'eth2" -j ACCEPT' in rules, name
        assert "-p 2 " not in rules.replace("-i eth2 -p 2", "").replace("-o eth2 -p 2", "")


# -- the real programs ------------------------------------------------------------------------

def _netns(devices: dict[str, list[str]]) -> str:
    name = f"fwcroutes{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
    try:
        for index, (device, addresses) in enumerate(devices.items()):
            subprocess.run(["ip", "-n", name, "link", "add", device, "type", "veth", "peer",
                            "name", f"fwcrp{index}"], check=True, capture_output=True)
            subprocess.run(["ip", "-n", name, "link", "set", device, "up"], check=True,
                           capture_output=True)
            for address in addresses:
                subprocess.run(["ip", "-n", name, "addr", "add", address, "dev", device,
                                "nodad"] if ":" in address else
                               ["ip", "-n", name, "addr", "add", address, "dev", device],
                               check=True, capture_output=True)
    except BaseException:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)
        raise
    return name


def _ip(ns: str, *argv: str) -> str:
    return subprocess.run(["ip", "-n", ns, *argv], check=True, capture_output=True, text=True,
                          timeout=30).stdout


@pytest.mark.root
def test_routes_script_and_keepalived_accept_the_routes_in_a_namespace(tmp_path):
    files = compiled_files(tmp_path, TWO_UPLINKS)
    (tmp_path / "fwc-routes.sh").write_text(files["fw1/fwc-routes.sh"])
    (tmp_path / "keepalived.conf").write_text(files["fw1/keepalived.conf"])
    ns = _netns({"eth0": ["192.0.2.1/24", "2001:db8:1::1/64"], "eth1": ["198.51.100.1/24"],
                 "eth2": ["203.0.113.1/24"], "eth3": ["198.18.0.1/24"]})
    try:
        _ip(ns, "route", "add", "198.18.99.0/24", "via", "192.0.2.77")  # not fwc's: stays
        for _ in range(2):  # twice: the script replaces, it never adds twice
            done = subprocess.run(["ip", "netns", "exec", ns, "sh",
                                   str(tmp_path / "fwc-routes.sh")],
                                  capture_output=True, text=True, timeout=30)
            assert done.returncode == 0, done.stderr
        routes = _ip(ns, "-4", "route", "show", "table", "all", "proto", "94").splitlines()
        assert sorted(r.split(" linkdown")[0].strip() for r in routes) == [
            "198.18.20.0/24 via 192.0.2.99 dev eth0",
            "default via 198.18.0.9 dev eth3 table 102",
            "default via 198.51.100.9 dev eth1"]
        assert "default via 2001:db8:1::99 dev eth0" in _ip(ns, "-6", "route", "show",
                                                            "proto", "94")
        rules = _ip(ns, "-4", "rule", "show")
        assert "499:\tfrom all lookup main suppress_prefixlength 0 proto 94" in rules
        assert "1000:\tfrom 192.0.2.128/25 lookup 102 proto 94" in rules
        assert rules.count("lookup 102") == 2
        assert "198.18.99.0/24 via 192.0.2.77" in _ip(ns, "-4", "route", "show")
        # A route taken out of the policy leaves the node when the new script runs.
        script = compiled_files(tmp_path, ROUTED)["fw1/fwc-routes.sh"]
        (tmp_path / "fwc-routes.sh").write_text(script)
        subprocess.run(["ip", "netns", "exec", ns, "sh", str(tmp_path / "fwc-routes.sh")],
                       check=True, capture_output=True, timeout=30)
        assert "table 102" not in _ip(ns, "-4", "route", "show", "table", "all", "proto", "94")
        assert "lookup 102" not in _ip(ns, "-4", "rule", "show")
        checked = subprocess.run(["ip", "netns", "exec", ns, "keepalived", "-t", "-e", "-f",
                                  str(tmp_path / "keepalived.conf")],
                                 capture_output=True, text=True, timeout=60)
        assert checked.returncode == 0 and checked.stderr == "", checked.stderr
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


@pytest.mark.root
def test_the_masters_vip_replies_stay_on_the_lan_with_a_following_rule(tmp_path):
    """The routes script, then the rule keepalived adds on becoming master: the VIP's
    replies to a lan host stay on the lan (connected), the rest of the source's traffic
    takes the table."""
    files = compiled_files(tmp_path, FOLLOWING)
    assert "virtual_rules {\n        from 192.0.2.128/25 table 102 priority 1000\n" \
        in files["fw1/keepalived.conf"]
    (tmp_path / "fwc-routes.sh").write_text(files["fw1/fwc-routes.sh"])
    ns = _netns({"eth0": ["192.0.2.1/24", "192.0.2.254/24"], "eth1": ["198.51.100.1/24"],
                 "eth2": ["203.0.113.1/24"], "eth3": ["198.18.0.1/24"]})
    try:
        subprocess.run(["ip", "netns", "exec", ns, "sh", str(tmp_path / "fwc-routes.sh")],
                       check=True, capture_output=True, timeout=30)
        _ip(ns, "rule", "add", "from", "192.0.2.128/25", "table", "102", "priority", "1000")
        assert "dev eth0" in _ip(ns, "route", "get", "192.0.2.10", "from", "192.0.2.254")
        assert "via 198.18.0.9 dev eth3" in _ip(ns, "route", "get", "198.19.0.1", "from",
                                                "192.0.2.254")
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


@pytest.mark.root
def test_a_family_taken_out_of_the_policy_leaves_the_node(tmp_path):
    """The script flushed fwc's routes only of the families it installed: with the IPv6
    routes taken out of the policy, the old IPv6 default route stayed on the node."""
    v4 = mutate(("    interface sync\n",
                 "    interface sync\n    route default via 198.51.100.9\n"))
    ns = _netns({"eth0": ["192.0.2.1/24", "2001:db8:1::1/64"], "eth1": ["198.51.100.1/24"]})
    try:
        for text in (ROUTED, v4):
            (tmp_path / "fwc-routes.sh").write_text(compiled_files(tmp_path, text)
                                                    ["fw1/fwc-routes.sh"])
            done = subprocess.run(["ip", "netns", "exec", ns, "sh",
                                   str(tmp_path / "fwc-routes.sh")],
                                  capture_output=True, text=True, timeout=30)
            assert done.returncode == 0, done.stderr
            if text is ROUTED:
                assert "default via 2001:db8:1::99" in _ip(ns, "-6", "route", "show", "proto",
                                                           "94")
        assert _ip(ns, "-6", "route", "show", "table", "all", "proto", "94") == ""
        assert "default via 198.51.100.9 dev eth1" in _ip(ns, "-4", "route", "show", "proto",
                                                          "94")
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


# -- the analysis routes by them ------------------------------------------------------------

def _out(view: MemberView, source: str, destination: str) -> set[tuple[str, frozenset[str]]]:
    """(verdict, every out interface with that verdict) for tcp/80 from SOURCE to DESTINATION."""
    traffic = TrafficClass(AddressSet.of(ipaddress.ip_address(source)),
                           AddressSet.of(ipaddress.ip_address(destination)),
                           (ServiceMatch("tcp", 6, (PortRange(80, 80),)),))
    by_verdict: dict[str, frozenset[str]] = {}
    for piece in classify(view, traffic):
        by_verdict[str(piece.verdict)] = by_verdict.get(str(piece.verdict), frozenset()) \
            | piece.box.out_ifaces
    return set(by_verdict.items())


def test_the_default_route_decides_the_exit_and_the_sync_link_never_is(tmp_path):
    unrouted = _cluster(tmp_path, BASE)
    view = MemberView(unrouted, unrouted.members[0])
    assert _out(view, "192.0.2.10", "198.18.99.9") == {("accept", frozenset({"lan", "uplink"}))}
    routed = _cluster(tmp_path, ROUTED)
    view = MemberView(routed, routed.members[0])
    assert _out(view, "192.0.2.10", "198.18.99.9") == {("accept", frozenset({"uplink"}))}
    assert _out(view, "192.0.2.10", "198.18.20.5") == {("accept", frozenset({"lan"}))}


def test_policy_routing_sends_a_source_to_its_table_and_a_mark_counts_both_ways(tmp_path):
    cluster = _cluster(tmp_path, TWO_UPLINKS)
    view = MemberView(cluster, cluster.members[0])
    # 192.0.2.130 matches `from 192.0.2.128/25 table 102` (default via isp2); the mark
    # rule (priority 500, before it) might send marked traffic there too.
    assert _out(view, "192.0.2.130", "198.18.99.9") == {("accept", frozenset({"isp2"}))}
    assert _out(view, "192.0.2.10", "198.18.99.9") == {("accept", frozenset({"uplink", "isp2"}))}
    # connected and specific main routes win over the table (suppress_prefixlength 0)
    assert _out(view, "192.0.2.130", "198.51.100.10") == {("accept", frozenset({"uplink"}))}
    # (the policy accepts lan's web traffic only out by the uplinks)
    assert _out(view, "192.0.2.130", "198.18.20.5") == {("drop", frozenset({"lan"}))}


def test_fwc601_no_longer_tries_the_sync_link_as_exit_of_internet_traffic(tmp_path):
    """Issue 14: an allow expectation for internet-bound traffic accepted by a rule with
    `out uplink` failed (FWC601) because the sync link was tried as an exit."""
    text = mutate(("    accept from lan    to any      service tcp/80,443\n",
                   "    accept from lan    to any      service tcp/80,443 out uplink\n"),
                  ("host    server   198.51.100.10\n",
                   "host    server   198.51.100.10\nhost    internet 198.18.99.9\n"))
    text += "\nexpect edge {\n    allow client -> internet service tcp/80\n}\n"
    routed = text.replace("    interface sync\n",
                          "    interface sync\n    route default via 198.51.100.9\n")
    assert with_code(run(tmp_path, routed), "FWC601") == []
    unrouted = with_code(run(tmp_path, text), "FWC601")
    assert unrouted and all("sync" not in d.message for d in unrouted)
    assert "'route default via GATEWAY'" in (unrouted[0].hint or "")


def test_diff_sees_a_route_change(tmp_path):
    """A network moved from behind an inside router to the uplink: the rule with
    `out uplink` now accepts traffic to it (and only to it)."""
    old = mutate(("    accept from lan    to any      service tcp/80,443\n",
                  "    accept from lan    to any      service tcp/80,443 out uplink\n"),
                 ("    interface sync\n",
                  "    interface sync\n    route 198.18.20.0/24 via 192.0.2.99\n"))
    new = old.replace("route 198.18.20.0/24 via 192.0.2.99", "route 198.18.20.0/24 via "
                      "198.51.100.9")
    before, after = _cluster(tmp_path, old), _cluster(tmp_path, new)
    changes = traffic_changes(before, after)
    assert [(c.verdict, c.text) for c in changes] == [
        ("allowed", "from lan except firewall to 198.18.20.0/24 service tcp/80,443 in lan "
                    "out uplink")]
    assert {str(c) for c in changes} == {str(c) for c in traffic_changes(before, after,
                                                                           whole=True)}
    assert traffic_changes(after, after) == []


# -- fwc graph ------------------------------------------------------------------------------------

def test_graph_dot_is_deterministic_and_shows_the_topology(tmp_path, capsys):
    path = tmp_path / "p.fw"
    path.write_text(ROUTED)
    assert main(["graph", str(path)]) == 0
    dot = capsys.readouterr().out
    assert main(["graph", str(path)]) == 0
    assert capsys.readouterr().out == dot
    for needle in ('"edge/member:fw1" [label="fw1\\npriority 150"',
                   '"edge/device:fw1:uplink" [label="uplink: eth1", shape=box, penwidth=2.5]',
                   '"edge/network:203.0.113.0/24" [label="203.0.113.0/24\\nsync (sync link)"',
                   '"edge/vip:198.51.100.254"', '"edge/gateway:198.51.100.9"',
                   '"edge/destination:main:0.0.0.0/0"',
                   '"edge/device:fw1:uplink" -> "edge/gateway:198.51.100.9";',
                   '"edge/gateway:192.0.2.98" -> "edge/destination:main:198.18.30.0/24" '
                   '[label="master only", style=dashed];'):
        assert needle in dot, needle
    out = tmp_path / "t.dot"
    assert main(["graph", str(path), "-o", str(out)]) == 0 and out.read_text() == dot


def test_graph_svg_by_the_real_dot(tmp_path):
    import shutil

    from conftest import cannot_run
    if shutil.which("dot") is None:
        cannot_run("Graphviz's dot is not installed (tests/run.sh installs graphviz)")
    path = tmp_path / "p.fw"
    path.write_text(ROUTED)
    out = tmp_path / "t.svg"
    assert main(["graph", str(path), "-o", str(out)]) == 0
    svg = out.read_text()
    assert svg.lstrip().startswith("<?xml") and "<svg" in svg
    assert "gw 198.51.100.9" in svg and "sync (sync link)" in svg


def test_graph_without_dot_is_a_usage_error_and_writes_nothing(tmp_path, capsys, monkeypatch):
    path = tmp_path / "p.fw"
    path.write_text(BASE)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    out = tmp_path / "t.svg"
    assert main(["graph", str(path), "-o", str(out)]) == 2
    assert "not installed" in capsys.readouterr().err and not out.exists()
    bad = tmp_path / "bad.fw"
    bad.write_text("cluster {")
    assert main(["graph", str(bad)]) == 1


# -- the automatic HA rules in query, expect and diff (issue 14, bug) -----------------------

def test_query_accepts_the_peers_sync_packets_as_the_compiled_input_does(capsys):
    edge = str(REPO / "policies" / "edge.fw")
    assert main(["query", edge, "--from", "203.0.113.2", "--to", "225.0.0.50",
                 "--service", "udp/3780"]) == 0
    out = capsys.readouterr().out
    assert "edge/fw1: accept (INPUT)\n    decided by the automatic rule 'fwc auto: " \
        "conntrackd sync eth2'" in out
    assert "from 203.0.113.2 (firewall) to 225.0.0.50 service udp/3780 out sync\n" \
        "    accept (OUTPUT)\n      decided by the automatic rule 'fwc auto: conntrackd sync " \
        "eth2'" in out
    assert main(["query", edge, "--from", "203.0.113.9", "--to", "224.0.0.1",
                 "--service", "proto/igmp"]) == 0
    assert "edge/fw1: accept (INPUT)\n    decided by the automatic rule 'fwc auto: igmp eth2'" \
        in capsys.readouterr().out


def _evaluated(cluster, member, family, packet) -> str:
    from fwc.analysis.evaluate import Evaluator
    from fwc.backend.lower import lower
    return Evaluator(lower(cluster, member, family)).decide(packet, packet.hook).verdict.lower()


@pytest.mark.parametrize("unicast", [False, True])
def test_engine_and_compiled_chains_agree_on_ha_traffic(tmp_path, unicast):
    from fwc.analysis.evaluate import Packet
    text = BASE.replace("multicast 225.0.0.50 port 3780", "unicast port 3780") if unicast \
        else BASE
    cluster = _cluster(tmp_path, text)
    fw1, fw2 = cluster.members
    view = MemberView(cluster, fw1)
    group = "203.0.113.1" if unicast else "225.0.0.50"
    cases = [  # (source, destination, protocol, port, in interface)
        ("203.0.113.2", group, 17, 3780, "sync"), ("203.0.113.2", group, 17, 3781, "sync"),
        ("192.0.2.2", "224.0.0.18", 112, None, "lan"),
        ("198.51.100.2", "224.0.0.18", 112, None, "uplink"),
        ("192.0.2.2", "224.0.0.18", 112, None, "sync"),
        ("203.0.113.9", "224.0.0.1", 2, None, "sync"), ("203.0.113.9", "224.0.0.22", 2, None,
                                                         "sync"),
        ("192.0.2.9", "224.0.0.1", 2, None, "lan"),
        # another host on the segment: its adverts and states are taken in and dropped
        ("192.0.2.9", "224.0.0.18", 112, None, "lan"),
        ("198.51.100.9", "224.0.0.18", 112, None, "uplink"),
        ("203.0.113.9", group, 17, 3780, "sync")]
    checked = 0
    for source, destination, protocol, port, iface in cases:
        services = (ServiceMatch("udp", 17, (PortRange(port, port),)),) if port else \
            (ServiceMatch("proto", protocol),)
        traffic = TrafficClass(AddressSet.of(ipaddress.ip_address(source)),
                               AddressSet.of(ipaddress.ip_address(destination)), services, iface)
        pieces = classify(view, traffic)
        assert len(pieces) <= 1, [p.decided_by for p in pieces]
        device = fw1.device(iface)
        local = pieces and pieces[0].chain == "input"
        # a genuine advert has TTL 255 (the analysis answers for those)
        packet = Packet(4, int(ipaddress.ip_address(source)),
                        int(ipaddress.ip_address(destination)), protocol, port,
                        in_device=device, out_device=None if local else "eth1",
                        hop_limit=255 if protocol == 112 else 64)
        compiled = _evaluated(cluster, fw1, 4, packet)
        engine = str(pieces[0].verdict) if pieces else "drop"
        assert engine == compiled, (source, destination, protocol, port, iface,
                                    [p.decided_by for p in pieces])
        checked += 1
    assert checked == len(cases)
    # what fw2 sends is accepted by an automatic OUTPUT rule on the right device only
    out = classify(MemberView(cluster, fw2), TrafficClass(
        AddressSet.of(ipaddress.ip_address("203.0.113.2")),
        AddressSet.of(ipaddress.ip_address(group)),
        (ServiceMatch("udp", 17, (PortRange(3780, 3780),)),), out_interface="sync"))
    assert [(p.chain, p.auto) for p in out] == [("output", "fwc auto: conntrackd sync eth2")]


def test_diff_reports_traffic_the_ha_rules_now_accept(tmp_path):
    before = _cluster(tmp_path, BASE)
    after = _cluster(tmp_path, BASE.replace("multicast 225.0.0.50", "multicast 225.0.0.51"))
    changes = [(c.verdict, c.text, c.where) for c in traffic_changes(before, after)]
    # each member takes the group's states from its peer's sync address only
    rule = "automatic rule 'fwc auto: conntrackd sync eth2'"
    assert changes[:2] == [
        ("allowed", f"from 203.0.113.{peer} to 225.0.0.51 service udp/3780 in sync", rule)
        for peer in (1, 2)]
    assert [c[:2] for c in changes[2:]] == [
        ("denied", f"from 203.0.113.{peer} to 225.0.0.50 service udp/3780 in sync")
        for peer in (1, 2)]


def test_fmt_keeps_routes_and_their_comments(tmp_path):
    from fwc.frontend.formatting import format_text
    messy = TWO_UPLINKS.replace("    route default via 198.51.100.9\n",
                                "  route   default   via 198.51.100.9   # the provider\n")
    formatted = format_text(messy)
    assert "\n    route default via 198.51.100.9  # the provider\n" in formatted
    assert "\n    route-rule mark 0x10/0xf0 table 102 priority 500\n" in formatted
    assert format_text(formatted) == formatted
    dmz = (REPO / "policies" / "dmz.fw").read_text()
    assert format_text(dmz) == dmz


def test_a_strangers_advert_meets_input_not_forward(tmp_path):
    # 224.0.0.18 is joined on lan: the kernel takes a stranger's advert in, where no
    # automatic rule accepts it and INPUT's default drops it; FORWARD's `accept from lan
    # to any` never sees it (fwc query said "accept (FORWARD)")
    from fwc.analysis.evaluate import Packet
    text = BASE.replace("    accept from lan    to any      service tcp/80,443\n",
                        "    accept from lan    to any\n")
    cluster = _cluster(tmp_path, text)
    fw1 = cluster.members[0]
    stranger, group = ipaddress.ip_address("192.0.2.9"), ipaddress.ip_address("224.0.0.18")
    pieces = classify(MemberView(cluster, fw1), TrafficClass(
        AddressSet.of(stranger), AddressSet.of(group), (ServiceMatch("proto", 112),), "lan"))
    assert [(p.chain, str(p.verdict), p.rule) for p in pieces] == [("input", "drop", None)]
    packet = Packet(4, int(stranger), int(group), 112, in_device="eth0", hop_limit=255)
    assert _evaluated(cluster, fw1, 4, packet) == "drop"
