"""`fwc query`: per member, what happens to a set of packets and which line decides it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from checkkit import mutate
from conftest import EDGE as EDGE_PATH
from conftest import REPO, run_fwc

from fwc.cli import main

EDGE = str(EDGE_PATH)


def query(capsys, *args: str) -> tuple[int, str, str]:
    status = main(["query", EDGE, *args])
    out, err = capsys.readouterr()
    return status, out, err


def test_single_packet_answer_per_member(capsys):
    status, out, _ = query(capsys, "--from", "192.0.2.10", "--to", "198.51.100.10",
                           "--service", "tcp/5001")
    assert status == 0
    lines = out.splitlines()
    assert lines[1] == "edge/fw1: accept (FORWARD)"
    assert any(line.strip().startswith("decided by") and "edge.fw:41" in line
               and "accept from desktops to any service web, dns, ping, echo" in line
               for line in lines)
    assert any("snat to 198.51.100.254" in line and "edge.fw:50" in line for line in lines)
    assert "edge/fw2: accept (FORWARD)" in lines


def test_default_policy_is_named(capsys):
    status, out, _ = query(capsys, "--from", "guests", "--to", "firewall", "--service", "ssh")
    assert status == 0
    assert "edge/fw1: drop (INPUT)" in out
    assert "decided by the default policy of INPUT (drop)" in out


def test_parts_with_different_outcomes_are_listed(capsys):
    status, out, _ = query(capsys, "--from", "client", "--to", "firewall")
    assert status == 0
    assert "edge/fw1: 2 parts with different outcomes" in out
    assert "from client to firewall service ssh in lan" in out
    assert "from client to firewall, any service except ssh in lan" in out


def test_dnat_and_interface(capsys):
    status, out, _ = query(capsys, "--from", "203.0.113.50", "--to", "uplink.vip",
                           "--service", "tcp/443", "--in", "uplink")
    assert status == 0
    assert "dnat to 192.0.2.80 by" in out and "edge.fw:51" in out
    assert "edge.fw:44" in out


def test_json_format(capsys):
    status, out, _ = query(capsys, "--from", "monitor", "--to", "192.0.2.254",
                           "--service", "snmp", "--format", "json")
    assert status == 0
    report = json.loads(out)
    by_member = {m["member"]: m["pieces"] for m in report["members"]}
    fw1, fw2 = by_member["fw1"], by_member["fw2"]
    assert len(fw1) == 1 and len(fw2) == 1
    assert fw1[0]["verdict"] == "accept" and fw1[0]["rule"]["line"] == 43
    assert fw1[0]["chain"] == "input" and fw1[0]["from"] == ["192.0.2.20"]
    assert fw2[0]["verdict"] == "drop" and fw2[0]["rule"] is None
    assert fw2[0]["decided_by"].startswith("default policy of INPUT")


def test_ranges_negation_and_lists(capsys):
    status, out, _ = query(capsys, "--from", "192.0.2.100-192.0.2.150, !192.0.2.120",
                           "--to", "198.51.100.0/24", "--service", "tcp/80,443")
    assert status == 0
    assert "accept (FORWARD)" in out


@pytest.mark.parametrize("args, where, message", [
    (("--from", "192.0.2.300", "--to", "any"), "--from:1:1: error[FWC106]",
     "malformed address '192.0.2.300'"),
    (("--from", "192.0.2.1/24", "--to", "any"), "--from:1:1: error[FWC106]", "host bits set"),
    (("--from", "nosuchobject", "--to", "any"), "--from:1:1: error[FWC101]",
     "undefined object 'nosuchobject'"),
    (("--from", "any", "--to", "nope.vip"), "--to:1:1: error[FWC101]",
     "undefined interface 'nope' in 'nope.vip'"),
    (("--from", "any", "--to", "any", "--service", "tcp/99999"),
     "--service:1:1: error[FWC107]", "invalid port '99999'"),
    (("--from", "any", "--to", "any", "--service", "nosuch"), "--service:1:1: error[FWC101]",
     "undefined service 'nosuch'"),
    (("--from", "192.0.2.9-192.0.2.1", "--to", "any"), "--from:1:1: error[FWC106]",
     "ends before it starts"),
    # the column is that of the bad item inside the argument
    (("--from", "client, !nosuch", "--to", "any"), "--from:1:9: error[FWC101]",
     "undefined object 'nosuch'"),
    (("--from", "any", "--to", "any", "--service", "ssh, tcp/0-99999"),
     "--service:1:6: error[FWC107]", "invalid port '0-99999'"),
])
def test_bad_values_are_diagnostics_pointing_into_the_argument(capsys, args, where, message):
    status, out, err = query(capsys, *args)
    assert status == 2 and out == ""
    assert "Traceback" not in err
    first = err.splitlines()[0]
    assert first.startswith(where) and message in first, err


def test_unknown_interface_is_a_usage_error_in_one_line(capsys):
    status, _, err = query(capsys, "--from", "any", "--to", "any", "--in", "wan")
    assert status == 2
    assert "no interface 'wan'" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("args, where, message, hint", [
    # a second parser split on commas: `client server` was looked up as one name
    (("--from", "client server", "--to", "any"), "--from:1:8: error[FWC001]",
     "unexpected 'server'", "expected ','"),
    (("--from", "client,,server", "--to", "any"), "--from:1:8: error[FWC001]",
     "unexpected ','", "a name"),
    (("--from", "any", "--to", "192.0.2.1,"), "--to:1:11: error[FWC001]", "--to ends too early",
     "an IPv4 address"),
    # a rule cannot write `tcp/80, 443` either: the port list is one token, `tcp/80,443`
    (("--from", "any", "--to", "any", "--service", "tcp/80, 443"),
     "--service:1:9: error[FWC001]", "unexpected '443'", "a service such as tcp/22"),
])
def test_values_are_parsed_by_the_policy_grammar(capsys, args, where, message, hint):
    status, _, err = query(capsys, *args)
    assert status == 2, err
    lines = err.splitlines()
    assert lines[0].startswith(where) and message in lines[0], err
    assert any("hint:" in line and hint in line for line in lines), err
    assert "Traceback" not in err


def test_values_are_resolved_by_the_policy_resolver(capsys):
    # the resolver's hints know the policy's names (a dummy resolver knew none)
    status, _, err = query(capsys, "--from", "clinet", "--to", "any")
    assert status == 2
    assert "did you mean 'client'?" in err
    status, _, err = query(capsys, "--from", "any", "--to", "any", "--service", "webb")
    assert status == 2
    assert "did you mean 'web'?" in err
    status, _, err = query(capsys, "--from", "any", "--to", "any", "--service", "desktops")
    assert status == 2 and "'desktops' is an address object, not a service" in err


def test_fragments_are_the_nodes_a_rule_builds():
    from fwc.frontend.parse import parse_fragment, parse_text

    written = "client, !192.0.2.7, 192.0.2.3-192.0.2.9, lan.vip, any, firewall, 2001:db8::/64"
    services = "ssh, tcp/80,443, icmp/echo-request, proto/47"
    source, diagnostics = parse_text(f"policy c {{\n accept from {written} to any "
                                     f"service {services}\n}}\n", "p.fw")
    assert not diagnostics
    rule = source.statements[0].rules[0]
    endpoints, problems = parse_fragment(written, "--from", "endpoints_fragment")
    refs, more = parse_fragment(services, "--service", "services_fragment")
    assert not problems and not more
    assert [e[:3] for e in endpoints] == [e[:3] for e in rule.sources]
    assert [r[:2] for r in refs] == [r[:2] for r in rule.services]
    assert endpoints[1].span.file == "--from" and endpoints[1].span.column == 9


def test_policy_errors_exit_1(tmp_path, capsys):
    bad = tmp_path / "bad.fw"
    bad.write_text("host a 192.0.2.1\npolicy nowhere {\n}\n", encoding="utf-8")
    status = main(["query", str(bad), "--from", "any", "--to", "any"])
    _, err = capsys.readouterr()
    assert status == 1
    assert "FWC101" in err


def test_cli_subprocess_round_trip():
    result = run_fwc("query", EDGE, "--from", "server", "--to", "client", "--service", "echo",
                     cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert "edge/fw1: drop (FORWARD)" in result.stdout
    assert "edge.fw:46" in result.stdout


def test_several_clusters_skip_those_without_the_interface(tmp_path, capsys):
    second = """
cluster branch {
    vrrp { password "other"  vrid 61 }
    interface inside vip 198.18.0.254/24
    member b1 priority 150 {
        inside eth0 198.18.0.1/24
    }
    member b2 priority 100 {
        inside eth0 198.18.0.2/24
    }
}
policy branch {
    accept from any to any service ssh
}
"""
    path = tmp_path / "two.fw"
    path.write_text(Path(EDGE).read_text(encoding="utf-8") + second, encoding="utf-8")
    status = main(["query", str(path), "--from", "client", "--to", "server", "--service", "ssh",
                   "--in", "lan"])
    out, err = capsys.readouterr()
    assert status == 0
    assert "edge/fw1: drop (FORWARD)" in out and "branch/" not in out
    assert "skipped: cluster 'branch' has no interface 'lan'" in err
    status = main(["query", str(path), "--from", "client", "--to", "server", "--service", "ssh"])
    out, _ = capsys.readouterr()
    assert status == 0 and "branch/b1: accept (FORWARD)" in out
    assert main(["query", str(path), "--from", "any", "--to", "any", "--in", "wan"]) == 2


def test_parts_split_only_by_routing_are_shown_together(capsys):
    status, out, _ = query(capsys, "--from", "any", "--to", "uplink.vip", "--service", "web")
    assert status == 0
    assert "edge/fw1: 2 parts with different outcomes" in out
    assert "from any except uplink to uplink.vip service web in lan, sync" in out
    status, out, _ = query(capsys, "--from", "any", "--to", "any")
    assert status == 0
    assert "  - from any to any service ident\n    reject (FORWARD)" in out


# -- who handles it: the master of the arrival interface's VRRP group (issue 14) ---------
LOADSHARE = str(REPO / "policies" / "loadshare.fw")


def test_active_active_names_the_group_master_and_the_takeover(capsys):
    """loadshare.fw: blue (lan, uplink) is fw1's, red (dmz, uplink2) fw2's."""
    assert main(["query", LOADSHARE, "--from", "client", "--to", "server",
                 "--service", "echo"]) == 0
    out = capsys.readouterr().out
    assert "who handles it in loadshare (by the interface it arrives on):" in out
    assert ("  in lan: fw1 (accept), master of vrrp-group blue; after a failover of fw1: "
            "fw2 (accept)") in out.splitlines()
    assert main(["query", LOADSHARE, "--from", "web", "--to", "partner",
                 "--service", "echo"]) == 0
    out = capsys.readouterr().out
    assert ("  in dmz: fw2 (accept), master of vrrp-group red; after a failover of fw2: "
            "fw1 (accept)") in out.splitlines()


def test_the_arrival_interface_decides_not_the_source(capsys):
    """The same source arriving on red's interface is fw2's (query --in)."""
    assert main(["query", LOADSHARE, "--from", "server", "--to", "client",
                 "--service", "echo"]) == 0
    out = capsys.readouterr().out
    assert "  in uplink: fw1 (drop), master of vrrp-group blue" in out
    assert main(["query", LOADSHARE, "--from", "198.51.100.140", "--to", "web",
                 "--service", "echo", "--in", "uplink2"]) == 0
    out = capsys.readouterr().out
    assert "  in uplink2: fw2 (drop), master of vrrp-group red" in out


def test_handling_in_json_and_for_interfaces_without_vips(capsys):
    assert main(["query", LOADSHARE, "--from", "any", "--to", "server",
                 "--service", "echo", "--format", "json"]) == 0
    handled = {h["in"]: h for h in json.loads(capsys.readouterr().out)["handling"]}
    assert list(handled) == ["lan", "uplink", "dmz", "uplink2", "sync"]
    assert handled["lan"] == {"cluster": "loadshare", "in": "lan", "group": "blue",
                              "normal": "fw1", "after_failover": "fw2",
                              "order": ["fw1", "fw2"],
                              "verdicts": {"fw1": ["drop", "accept"],
                                           "fw2": ["drop", "accept"]},
                              "replies": [], "vips_held_elsewhere": []}
    assert handled["dmz"]["normal"] == "fw2" and handled["dmz"]["group"] == "red"
    assert handled["sync"]["normal"] is None and handled["sync"]["order"] == []


def test_a_single_master_cluster_is_handled_by_its_master(capsys):
    status, out, _ = query(capsys, "--from", "192.0.2.10", "--to", "198.51.100.10",
                           "--service", "tcp/5001")
    assert status == 0
    assert ("  in lan: fw1 (accept), the VRRP master; after a failover of fw1: fw2 (accept)"
            in out.splitlines())
    status, out, _ = query(capsys, "--from", "firewall", "--to", "198.51.100.10")
    assert "  from the firewall: each member for itself" in out


def test_replies_through_another_groups_master_are_named(tmp_path, capsys):
    """lan (blue, fw1) out dmz (red, fw2): the replies reach fw2 (asymmetric, FWC266)."""
    text = Path(LOADSHARE).read_text(encoding="utf-8")
    ssh = "    accept from client to firewall service ssh        in lan\n"
    assert text.count(ssh) == 1
    path = tmp_path / "asym.fw"
    path.write_text(text.replace(ssh, ssh + "    accept from lan to web service echo in lan "
                                 "out dmz\n"), encoding="utf-8")
    assert main(["query", str(path), "--from", "client", "--to", "web", "--service", "echo",
                 "--format", "json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)["handling"]
    assert (row["in"], row["normal"]) == ("lan", "fw1")
    assert row["replies"] == [{"out": "dmz", "group": "red", "member": "fw2"}]
    assert main(["query", str(path), "--from", "client", "--to", "web",
                 "--service", "echo"]) == 0
    assert ("its replies reach fw2 (out dmz: master of vrrp-group red), which holds no "
            "state for it (FWC266)") in capsys.readouterr().out
    # inside one group nothing is said about replies
    assert main(["query", LOADSHARE, "--from", "client", "--to", "server", "--service", "echo",
                 "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["handling"][0]["replies"] == []


def test_a_vip_the_other_member_holds_is_flagged(capsys):
    """client -> uplink2.vip arrives at fw1 (blue), but fw2 holds red's VIPs: fw1 routes
    it on (its answer is FORWARD), and query says whose VIP it is."""
    assert main(["query", LOADSHARE, "--from", "client", "--to", "uplink2.vip",
                 "--service", "ssh", "--format", "json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)["handling"]
    assert row["vips_held_elsewhere"] == [{"interface": "uplink2", "group": "red",
                                           "member": "fw2"}]
    assert main(["query", LOADSHARE, "--from", "client", "--to", "firewall",
                 "--service", "ssh"]) == 0
    out = capsys.readouterr().out
    assert ("dmz.vip and uplink2.vip are fw2's (master of vrrp-group red): fw1 routes such "
            "packets on to fw2 (FORWARD above) instead of taking them in") in out
    # its own group's VIP is fw1's: nothing to flag
    assert main(["query", LOADSHARE, "--from", "client", "--to", "lan.vip", "--service", "ssh",
                 "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["handling"][0]["vips_held_elsewhere"] == []


def test_the_deciding_line_is_shown_as_the_parser_counts_it_and_never_raw(tmp_path, capsys):
    """A comment held a U+2028 (str.splitlines ends a line there: the answer showed
    the line after the deciding one, an accept rule for a drop) and an escape sequence
    (it reached the reviewer's terminal as it was, and could rewrite the screen). Both
    are refused now (FWC006): query answers nothing and names them escaped; CR LF line
    ends are line ends, and no CR reaches the answer."""
    text = mutate(("    accept from lan    to any      service tcp/80,443\n",
                   "    # moved\u2028 here\n"
                   "    accept from lan    to any      service tcp/80,443  # \x1b[2J\x1b[31mok\n"))
    policy = tmp_path / "p.fw"
    policy.write_text(text, encoding="utf-8")
    assert main(["query", str(policy), "--from", "192.0.2.10", "--to", "198.51.100.99",
                 "--service", "tcp/80"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "error[FWC006]: U+2028 (LINE SEPARATOR)" in captured.err
    assert "# \\x1b[2J\\x1b[31mok" in captured.err and "# moved\\u2028 here" in captured.err
    assert "\x1b" not in captured.err and "\u2028" not in captured.err
    policy.write_bytes(mutate(("    accept from lan    to any      service tcp/80,443\n",
                               "    # moved here\n"
                               "    accept from lan    to any      service tcp/80,443  # ok\n"))
                       .replace("\n", "\r\n").encode())
    assert main(["query", str(policy), "--from", "192.0.2.10", "--to", "198.51.100.99",
                 "--service", "tcp/80"]) == 0
    out = capsys.readouterr().out
    assert "p.fw:29: accept from lan to any service tcp/80,443 # ok\n" in out and "\r" not in out
    assert main(["query", str(policy), "--from", "192.0.2.10", "--to", "198.51.100.99",
                 "--service", "tcp/22"]) == 0
    assert "decided by " + str(policy) + ":34: drop from any to any\n" in capsys.readouterr().out


def test_the_firewalls_own_packets_from_a_snat_source_network_are_translated(capsys):
    """`snat from lan` is written as it is after routing (docs/language.md, "NAT rules"):
    the kernel translates fw1's own packets from its lan address 192.0.2.1, which lies
    in lan, and query says so. It said they left untranslated (the engine read the
    source as a policy rule's, without the firewall's addresses); the kernel oracle on
    the optimised output found it (tests/test_kernel_oracle_optimised.py)."""
    status, out, _ = query(capsys, "--from", "192.0.2.1", "--to", "198.51.100.10",
                           "--service", "tcp/443")
    assert status == 0
    fw1 = out.split("edge/fw2:")[0]
    assert "edge/fw1: accept (OUTPUT)" in fw1
    assert "snat to 198.51.100.254 by" in fw1 and "edge.fw:50" in fw1
    # a source the rule does not name stays as it is: fw1's uplink address
    status, out, _ = query(capsys, "--from", "198.51.100.1", "--to", "198.51.100.10",
                           "--service", "tcp/443")
    assert status == 0 and "snat" not in out.split("edge/fw2:")[0]
