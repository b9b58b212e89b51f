"""The rule vocabulary of issue 15: language, checks, lowering, analysis, real tools.

Every check has a test that triggers it and one that stays silent; the generated
rules are loaded by iptables-restore/ip6tables-restore (and read back), conntrackd
parses the tuned configuration, nft checks what the nftables backend writes.
"""

from __future__ import annotations

import ipaddress
import shutil
import subprocess
from pathlib import Path

import pytest
from checkkit import BASE, line_of, mutate, run, with_code
from conftest import cannot_run
from test_realtools import PARSE_FAILURES, load_and_compare

from fwc.analysis import TrafficClass, classify
from fwc.analysis.engine import MemberView
from fwc.analysis.evaluate import Evaluator, Packet
from fwc.backend.lower import lower
from fwc.backend.output import compile_policy
from fwc.backend.render.iptables import render
from fwc.cli import main
from fwc.frontend.formatting import format_text
from fwc.model.addresses import AddressSet
from fwc.model.vocabulary import Backend, FilterAction

LAST = "    drop   from any    to any\n"
SERVER = "accept from server to client   service tcp/5001"
DEVICES = ("eth0", "eth1", "eth2")


def rules(*lines: str) -> str:
    """BASE with LINES before its final drop."""
    return mutate((LAST, "".join(f"    {line}\n" for line in lines) + LAST))


def cluster_items(*items: str, text: str = BASE) -> str:
    return mutate(("    interface sync\n", "    interface sync\n" + "".join(
        f"    {item}\n" for item in items)), base=text)


def codes(tmp_path: Path, text: str) -> list[str]:
    return sorted(d.code for d in run(tmp_path, text).diagnostics)


def compiled(tmp_path: Path, text: str) -> dict[str, str]:
    analysis = run(tmp_path, text)
    assert analysis.policy is not None and analysis.ok, [
        f"{d.code} {d.message}" for d in analysis.diagnostics]
    return {f"{c.name}/{f.path}": f.content.decode()
            for c in compile_policy(analysis.policy) for f in c.files}


def one(tmp_path: Path, text: str, code: str, needle: str):
    found = with_code(run(tmp_path, text), code)
    assert len(found) == 1, found
    assert found[0].span.line == line_of(text, needle)
    return found[0]


# -- the language -----------------------------------------------------------------------

VOCAB = rules(
    'accept from lan to firewall service tcp/2222 connlimit 3 log "ssh" level notice',
    "accept from any to web service tcp/80 syn-limit 100/second burst 200 "
    "limit 50/second burst 100 per-source",
    "reject from any to any service tcp/113 with tcp-reset",
    "reject from lan6 to any service udp/500 with host-unreachable",
    'accept from lan to any service tcp/8080 log "out" group 5',
)


def test_fmt_keeps_every_new_word_and_is_idempotent():
    text = cluster_items('log { level info  rate 10/second  burst 20  drops "d" }',
                         "default { output drop }", text=VOCAB)
    text = text.replace("interface uplink vip 198.51.100.254/24  vrid 52",
                        "interface uplink vip 198.51.100.254/24  vrid 52  mss 1452")
    text = text.replace("-> web", "-> web, 192.0.2.81:80-81")
    once = format_text(text)
    assert format_text(once) == once
    for word in ("connlimit 3", 'log "ssh" level notice', "syn-limit 100/second burst 200",
                 "limit 50/second burst 100 per-source", "with tcp-reset", "group 5",
                 "mss 1452", "192.0.2.81:80-81", "level info  rate 10/second",
                 "default { output drop }"):
        assert word in once, word


def test_the_vocabulary_checks_clean(tmp_path):
    assert codes(tmp_path, VOCAB) == []


def test_rule_text_writes_the_options_back(tmp_path):
    policy = run(tmp_path, VOCAB).policy
    assert policy is not None
    texts = [r.text() for r in policy.clusters[0].rules]
    assert any("limit 50/second burst 100 per-source" in t and "syn-limit 100/second burst 200"
               in t for t in texts)
    assert any(t.endswith("with tcp-reset") for t in texts)


# -- diagnostics that teach -----------------------------------------------------------------

def test_fwc020_service_written_apart(tmp_path):
    text = "service ssh tcp 22\n" + BASE
    (d,) = run(tmp_path, text).diagnostics
    assert d.code == "FWC020" and d.hint == "did you mean tcp/22?"


def test_fwc021_foreign_keyword_and_silent_for_the_right_one(tmp_path):
    bad = mutate((SERVER, "allow from server to client   service tcp/5001"))
    (d,) = run(tmp_path, bad).diagnostics
    assert d.code == "FWC021" and "did you mean 'accept'?" in d.hint
    assert d.span.line == line_of(bad, "allow from server")
    assert codes(tmp_path, BASE) == []


def test_no_follow_on_error_after_a_bad_vip(tmp_path):
    text = mutate(("interface uplink vip 198.51.100.254/24", "interface uplink vip 198.51.100.254"))
    found = codes(tmp_path, text)
    assert found == ["FWC206"], found  # not also "interface 'uplink' has no VIP"


def test_options_are_named_as_written(tmp_path):
    text = mutate(("sync { link sync", "sync { link sync  link sync"))
    (d,) = with_code(run(tmp_path, text), "FWC110")
    assert d.message == "'link' is given twice"


def test_fwc404_on_a_dynamic_uplink_proposes_no_vip(tmp_path):
    text = mutate(("interface uplink vip 198.51.100.254/24  vrid 52", "interface uplink"),
                  ("        uplink eth1 198.51.100.1/24", "        uplink ppp0"),
                  ("        uplink eth1 198.51.100.2/24", "        uplink ppp0"),
                  ("snat from lan to any out uplink -> uplink.vip",
                   "masquerade from lan to any out uplink"),
                  ("    dnat from any to uplink.vip service tcp/80 in uplink -> web\n", ""))
    (d,) = with_code(run(tmp_path, text), "FWC404")
    assert "VIP" in d.hint and "no static address" in d.hint
    assert "giving interface" not in d.hint


# -- rule checks ----------------------------------------------------------------------------

@pytest.mark.parametrize(("code", "line", "needle"), [
    ("FWC405", "accept from client to server service tcp/80 with tcp-reset", "with tcp"),
    ("FWC406", "reject from client to server with tcp-reset", "with tcp"),
    ("FWC407", 'accept from client to server service tcp/81 log group 3 level info', "group 3"),
    ("FWC408", "drop from client to server service tcp/82 connlimit 5", "connlimit 5"),
    ("FWC409", "accept from client to server service udp/83 syn-limit 10/second", "syn-limit"),
    ("FWC410", "drop from client to server service udp/84 notrack", "notrack"),
    ("FWC411", "accept from client to server service udp/85 out uplink notrack", "notrack"),
    ("FWC413", "accept from client to server service udp/86 notrack", "notrack"),
])
def test_rule_check_triggers_at_its_line(tmp_path, code, line, needle):
    text = rules(line)
    d = one(tmp_path, text, code, line)
    # at the option that is wrong, not at the start of the rule
    written = text.splitlines()[d.span.line - 1]
    assert written.index(needle) < d.span.column <= len(written)


@pytest.mark.parametrize("line", [
    "reject from client to server service tcp/9999 with tcp-reset",
    "reject from client to server service udp/80 with admin-prohibited",
    'accept from client to server service tcp/81 log group 3',
    "accept from client to server service tcp/82 connlimit 5",
    "accept from client to server service tcp/83 syn-limit 10/second",
    "accept from client to web service udp/86 notrack\n"
    "    accept from web to client service udp/1024-65535 notrack",
])
def test_rule_checks_stay_silent_on_good_use(tmp_path, line):
    text = rules(line)
    assert codes(tmp_path, text) == []


def test_fwc412_notrack_on_translated_traffic(tmp_path):
    text = rules("accept from lan to any service udp/53 notrack",
                 "accept from any to lan service udp notrack")
    d = one(tmp_path, text, "FWC412", "accept from lan to any service udp/53 notrack")
    assert d.related[0].span.line == line_of(text, "snat from lan")


def test_fwc414_nat_port_needs_port_protocols_and_silent_with_them(tmp_path):
    bad = mutate(("-> uplink.vip", "-> uplink.vip:1024-65535"))
    assert "FWC414" in codes(tmp_path, bad)
    good = mutate(("snat from lan to any out uplink -> uplink.vip",
                   "snat from lan to any service tcp, udp out uplink -> uplink.vip:1024-65535"))
    assert "FWC414" not in codes(tmp_path, good)


def test_fwc415_dnat_target_not_reachable_and_fwc416_snat_not_a_vip(tmp_path):
    text = mutate(("-> web", "-> web, 198.18.0.99"), ("-> uplink.vip", "-> 198.51.100.77"))
    found = codes(tmp_path, text)
    assert "FWC415" in found and "FWC416" in found
    assert "FWC415" not in codes(tmp_path, BASE) and "FWC416" not in codes(tmp_path, BASE)


def test_fwc416_snat_pool_of_vips_is_silent(tmp_path):
    text = mutate(("interface uplink vip 198.51.100.254/24",
                   "interface uplink vip 198.51.100.254/24, 198.51.100.253/24"),
                  ("-> uplink.vip", "-> 198.51.100.253-198.51.100.254"))
    assert codes(tmp_path, text) == []


def test_fwc501_nflog_allows_63_bytes_and_log_29(tmp_path):
    fits = rules(f'accept from client to server service tcp/90 log "{"n" * 60}" group 2')
    assert codes(tmp_path, fits) == []
    long = rules(f'accept from client to server service tcp/90 log "{"n" * 60}"')
    assert codes(tmp_path, long) == ["FWC501"]


def test_a_limited_rule_shadows_nothing(tmp_path):
    limited = rules("accept from client to server service tcp/9999 limit 10/second",
                    "drop from client to server service tcp/9999")
    assert "FWC401" not in codes(tmp_path, limited)
    plain = rules("accept from client to server service tcp/9999",
                  "drop from client to server service tcp/9999")
    assert "FWC401" in codes(tmp_path, plain)


MIXED_POOL = (("host    web      192.0.2.80\n",
               "host    web      192.0.2.80\nhost    web2     192.0.2.81\n"),
              ("-> web", "-> web:8080, web2"),
              ("accept from any    to web      service tcp/80 in uplink",
               "accept from any    to web, web2 service tcp/80, tcp/8080 in uplink"))


def test_fwc429_nftables_refuses_what_it_cannot_write(tmp_path):
    # nft's numgen map cannot keep the port for some backends and change it for others
    nft = ("cluster edge {\n", "cluster edge {\n    backend nftables\n")
    d = one(tmp_path, mutate(nft, *MIXED_POOL), "FWC429", "-> web:8080, web2")
    assert "not yet supported by the nftables backend" in d.message
    assert "with and without a port" in d.message
    assert "FWC429" not in codes(tmp_path, mutate(*MIXED_POOL))  # iptables writes it
    assert codes(tmp_path, mutate(nft)) == []
    # the rest of the vocabulary is written for nft: limits, connlimit, syn-limit, mss
    vocab = VOCAB.replace("cluster edge {\n", "cluster edge {\n    backend nftables\n")
    assert "FWC429" not in codes(tmp_path, vocab.replace(
        "vrid 52", "vrid 52  mss 1452", 1))
    pool = mutate(nft, *MIXED_POOL[:1], ("-> web", "-> web, web2"), *MIXED_POOL[2:])
    assert "FWC429" not in codes(tmp_path, pool)


def test_compile_backend_override_refuses_too(tmp_path, capsys):
    path = tmp_path / "p.fw"
    path.write_text(mutate(*MIXED_POOL))
    out = tmp_path / "out"
    assert main(["compile", "--backend", "nftables", str(path), "-o", str(out)]) == 1
    captured = capsys.readouterr()
    assert "FWC429" in captured.out + captured.err and not out.exists()


# -- conntrackd checks ----------------------------------------------------------------------

BACKUP = (("    interface sync\n", "    interface sync\n    interface sync2\n"),
          ("        sync   eth2 203.0.113.1/24\n",
           "        sync   eth2 203.0.113.1/24\n        sync2  eth3 198.51.100.129/25\n"),
          ("        sync   eth2 203.0.113.2/24\n",
           "        sync   eth2 203.0.113.2/24\n        sync2  eth3 198.51.100.130/25\n"),
          ("198.51.100.1/24", "198.51.100.1/25"), ("198.51.100.2/24", "198.51.100.2/25"),
          ("198.51.100.254/24", "198.51.100.126/25"), ("host    server   198.51.100.10\n",
                                                       "host    server   198.51.100.10\n"))


def sync_text(options: str, *extra: tuple[str, str]) -> str:
    tuned = ("sync { link sync  mode ftfw", f"sync {{ link sync  {options}  mode ftfw")
    return mutate(*BACKUP, tuned, *extra)


def test_tuned_sync_checks_clean(tmp_path):
    text = sync_text("backup-link sync2  commit-timeout 180  external-cache off  "
                     "protocols tcp, udp, icmp, icmpv6  "
                     "states established, fin-wait, close-wait, last-ack, time-wait, close  "
                     "conntrack-max 524288  hash-size 65536")
    assert codes(tmp_path, text) == []


@pytest.mark.parametrize(("options", "code"), [
    ("backup-link sync", "FWC270"),
    ("backup-link nowhere", "FWC270"),
    ("backup-link sync2 port 3780", "FWC271"),
    ("protocols udp  states established", "FWC273"),
    ("protocols udp", "FWC274"),
    # a connection reset (close) or timed out after its FINs (time-wait) is never removed
    ("states established, time-wait", "FWC280"),
    ("states syn-sent, syn-recv, established, fin-wait, close-wait, last-ack, time-wait",
     "FWC280"),
    ("hash-size 1048576", "FWC275"),
])
def test_sync_tuning_checks(tmp_path, options, code):
    assert code in codes(tmp_path, sync_text(options))


def test_fwc271_backup_port_past_the_last_port(tmp_path):
    # sync port 65535: the backup link's port + 1 would be `Group 65536`, which conntrackd
    # stores in an unsigned short (port 0) without a word
    text = sync_text("backup-link sync2", ("port 3780", "port 65535"))
    found = [d for d in run(tmp_path, text).diagnostics if d.code == "FWC271"]
    assert len(found) == 1 and "65536, which is no port" in found[0].message
    assert found[0].span.line == line_of(text, "backup-link sync2")
    own = sync_text("backup-link sync2 port 65534", ("port 3780", "port 65535"))
    assert "FWC271" not in codes(tmp_path, own)


@pytest.mark.parametrize("duration", ["500ms", "1.5s", "0s"])
def test_seconds_keepalived_and_conntrackd_count_whole_are_never_rounded(tmp_path, duration):
    # garp_master_refresh and CommitTimeout are whole seconds: 100ms became 1s, 0s (no
    # refresh to keepalived) a refresh every second, 1.5s one second
    garp = mutate(("advert 1s", f"advert 1s  garp-refresh {duration}"))
    found = [d for d in run(tmp_path, garp).diagnostics if d.code == "FWC109"]
    assert len(found) == 1 and "garp refresh is counted in whole seconds" in found[0].message
    commit = sync_text(f"commit-timeout {duration}")
    found = [d for d in run(tmp_path, commit).diagnostics if d.code == "FWC109"]
    assert len(found) == 1 and "commit timeout is counted in whole seconds" in found[0].message


def test_whole_seconds_are_written_as_given(tmp_path):
    text = mutate(("advert 1s", "advert 1s  garp-refresh 2000ms"))
    assert codes(tmp_path, text) == []
    policy = run(tmp_path, text).policy
    assert policy is not None and policy.clusters[0].vrrp.garp_refresh_s == 2


def test_fwc280_names_the_states_after_the_first_that_are_left_out(tmp_path):
    text = sync_text("states established, fin-wait, time-wait")
    found = [d for d in run(tmp_path, text).diagnostics if d.code == "FWC280"]
    assert len(found) == 1
    assert "leaves out close-wait, last-ack, close:" in found[0].message
    assert found[0].span.line == line_of(text, "states established")
    # the first states left out: a lazier replica, never a connection left behind
    lazy = sync_text("states established, fin-wait, close-wait, last-ack, time-wait, close")
    assert "FWC280" not in codes(tmp_path, lazy)


def test_fwc281_pptp_tunnels_do_not_survive_a_failover(tmp_path):
    """conntrackd has no builder for GRE: the pptp helper's data connections are never
    replicated, and the new master drops them (no longer RELATED)."""
    def policy(service: str) -> str:
        return mutate(("host    server   198.51.100.10\n",
                       f"host    server   198.51.100.10\nservice vpn {service}\n"),
                      base=rules("accept from lan to any service vpn"))

    text = policy("tcp/1723 helper pptp")
    found = [d for d in run(tmp_path, text).diagnostics if d.code == "FWC281"]
    assert len(found) == 1, [d.code for d in run(tmp_path, text).diagnostics]
    assert "GRE data connections of its tunnels (helper pptp)" in found[0].message
    assert found[0].span.line == line_of(text, "accept from lan to any service vpn")
    # ftp's data connections are TCP: replicated (with ExpectationSync)
    assert "FWC281" not in codes(tmp_path, policy("tcp/21 helper ftp"))


def test_fwc272_external_cache_off_in_alarm_mode(tmp_path):
    text = sync_text("external-cache off", ("mode ftfw", "mode alarm"))
    assert "FWC272" in codes(tmp_path, text)


# -- lowering -------------------------------------------------------------------------------

def _lines(tmp_path: Path, text: str, member: str = "fw1", family: int = 4) -> list[str]:
    policy = run(tmp_path, text).policy
    assert policy is not None
    cluster = policy.clusters[0]
    node = cluster.member(member)
    assert node is not None
    return render(lower(cluster, node, family)).splitlines()


def test_filtered_output_keeps_the_ha_plumbing_first(tmp_path):
    text = cluster_items("default { output drop }",
                         text=rules("accept from firewall to server service udp/53"))
    lines = [line for line in _lines(tmp_path, text) if line.startswith("-A OUTPUT")]
    assert ":OUTPUT DROP [0:0]" in _lines(tmp_path, text)
    auto = [n for n, line in enumerate(lines) if "fwc auto:" in line]
    policy = [n for n, line in enumerate(lines) if "p.fw:" in line]
    assert policy and auto and max(auto) < min(policy)
    for label in ("loopback", "vrrp eth0", "vrrp eth1", "conntrackd sync eth2", "igmp eth2",
                  "established"):
        assert any(f"fwc auto: {label}" in line for line in lines), label
    v6 = [line for line in _lines(tmp_path, text, family=6) if line.startswith("-A OUTPUT")]
    assert any("--icmpv6-type 135" in line for line in v6)  # neighbour solicitations
    assert any("--icmpv6-type 143" in line for line in v6)  # MLDv2 reports


def test_filtered_output_passes_vrrp_sync_and_igmp_and_drops_the_rest(tmp_path):
    text = cluster_items("default { output drop }")
    policy = run(tmp_path, text).policy
    assert policy is not None
    cluster = policy.clusters[0]
    member = cluster.member("fw1")
    assert member is not None
    evaluator = Evaluator(lower(cluster, member, 4))

    def verdict(destination: str, protocol: int, device: str, dport: int | None = None) -> str:
        packet = Packet(4, int(ipaddress.ip_address("192.0.2.1")),
                        int(ipaddress.ip_address(destination)), protocol, dport=dport,
                        in_device=None, out_device=device)
        return str(evaluator.decide(packet).verdict)

    assert verdict("224.0.0.18", 112, "eth0") == "ACCEPT"  # VRRP adverts
    assert verdict("225.0.0.50", 17, "eth2", 3780) == "ACCEPT"  # conntrackd
    assert verdict("224.0.0.22", 2, "eth2") == "ACCEPT"  # IGMP membership reports
    assert verdict("198.51.100.10", 6, "eth1", 443) == "DROP"  # the node's own https


def test_default_reject_and_drop_logging_end_the_chains(tmp_path):
    text = cluster_items('log { level info  drops "fwc drop" }', "default { input reject }")
    lines = _lines(tmp_path, text)
    inputs = [line for line in lines if line.startswith("-A INPUT")]
    assert "--log-prefix \"fwc drop \" --log-level 6" in inputs[-3]
    assert inputs[-2].endswith("-j REJECT --reject-with tcp-reset")
    assert inputs[-1].endswith("-j REJECT --reject-with icmp-port-unreachable")
    assert ":INPUT DROP [0:0]" in lines


def test_analysis_reports_the_cluster_defaults(tmp_path):
    text = cluster_items("default { input reject  output drop }")
    policy = run(tmp_path, text).policy
    assert policy is not None
    cluster = policy.clusters[0]
    view = MemberView.build(cluster, cluster.members[0])
    to_fw = TrafficClass(AddressSet.of(ipaddress.ip_network("198.51.100.10/32")),
                         AddressSet.of(ipaddress.ip_network("192.0.2.1/32")))
    pieces = list(classify(view, to_fw))
    assert {p.verdict for p in pieces} == {FilterAction.REJECT}
    assert "default policy of INPUT (reject)" in pieces[0].decided_by


def test_dnat_pool_answers_for_every_backend(tmp_path):
    text = mutate(("host    web      192.0.2.80\n",
                   "host    web      192.0.2.80\nhost    web2     192.0.2.81\n"),
                  ("-> web", "-> web, web2"),
                  ("accept from any    to web      service tcp/80 in uplink",
                   "accept from any    to web, web2 service tcp/80 in uplink"))
    policy = run(tmp_path, text).policy
    assert policy is not None
    cluster = policy.clusters[0]
    view = MemberView.build(cluster, cluster.members[0])
    traffic = TrafficClass(AddressSet.of(ipaddress.ip_network("203.0.113.7/32")),
                           AddressSet.of(ipaddress.ip_network("198.51.100.254/32")),
                           in_interface="uplink")
    pieces = [p for p in classify(view, traffic) if p.dnat is not None]
    assert {p.dnat.address for p in pieces} == {"192.0.2.80", "192.0.2.81"}
    assert all(p.accepted for p in pieces)


# -- real tools -----------------------------------------------------------------------------

TOOLED = cluster_items(
    'log { level info  rate 10/second  burst 20  drops "fwc drop" }',
    "default { input reject  output drop }",
    text=rules(
        'accept from lan to firewall service tcp/2222 connlimit 3 log "ssh" level notice',
        "accept from any to web service tcp/80 syn-limit 100/second burst 200 "
        "limit 50/second burst 100 per-source",
        "reject from any to any service tcp/113 with tcp-reset",
        "reject from lan6 to any service udp/500 with host-unreachable",
        "reject from lan6 to any service udp/501 with net-unreachable",
        "reject from lan to any service udp/502 with admin-prohibited",
        'accept from lan to any service tcp/8080 log "out" group 5',
        "accept from client to web service udp/53 notrack",
        "accept from web to client service udp notrack",
    ).replace("interface uplink vip 198.51.100.254/24  vrid 52",
              "interface uplink vip 198.51.100.254/24, 198.51.100.253/24  vrid 52  mss 1452")
    .replace("-> uplink.vip", "-> 198.51.100.253-198.51.100.254"))


@pytest.mark.root
def test_vocabulary_loads_into_iptables_and_ip6tables(tmp_path):
    files = compiled(tmp_path, TOOLED)
    for member in ("fw1", "fw2"):
        directory = tmp_path / "out" / member
        directory.mkdir(parents=True)
        for name in ("iptables.rules", "ip6tables.rules"):
            (directory / name).write_text(files[f"edge/{member}/{name}"])
        load_and_compare(directory, DEVICES)
    text = files["edge/fw1/ip6tables.rules"]
    assert "--reject-with icmp6-addr-unreachable" in text
    assert "--reject-with icmp6-no-route" in text


@pytest.mark.parametrize("mode", ["ftfw", "notrack", "alarm"])
def test_conntrackd_parses_the_tuned_configuration(tmp_path, mode):
    cache = "" if mode == "alarm" else "external-cache off  "
    text = sync_text(f"backup-link sync2  commit-timeout 120  {cache}"
                     "protocols tcp, udp  states established, time-wait  "
                     "conntrack-max 131072  hash-size 32768", ("mode ftfw", f"mode {mode}"))
    conf = compiled(tmp_path, text)["edge/fw1/conntrackd.conf"]
    assert "CommitTimeout 120" in conf and "Multicast Default {" in conf
    assert ("StartupResync On" in conf) == (mode != "alarm")  # (not in ALARM's grammar)
    assert conf.count("Multicast") == 2 and "Group 3781" in conf
    assert "ESTABLISHED TIME_WAIT for TCP" in conf and "HashLimit 262144" in conf
    path = tmp_path / "conntrackd.conf"
    path.write_text(conf)
    result = subprocess.run(["conntrackd", "-C", str(path), "-s"], capture_output=True,
                            text=True, timeout=30)
    output = (result.stdout + result.stderr).strip().splitlines()
    assert not [line for line in output if any(f in line for f in PARSE_FAILURES)], output


def test_unicast_backup_link_gets_its_own_udp_block(tmp_path):
    text = sync_text("backup-link sync2", ("multicast 225.0.0.50 port 3780", "unicast"))
    conf = compiled(tmp_path, text)["edge/fw1/conntrackd.conf"]
    assert "UDP Default {" in conf and "IPv4_Destination_Address 198.51.100.130" in conf
    sysctl = compiled(tmp_path, sync_text("conntrack-max 131072  hash-size 32768"))[
        "edge/fw1/sysctl.conf"]
    assert "net.netfilter.nf_conntrack_max = 131072" in sysctl
    assert "net.netfilter.nf_conntrack_buckets = 32768" in sysctl


def test_nft_writes_reject_types_log_levels_and_nflog(tmp_path):
    text = mutate(("cluster edge {\n", "cluster edge {\n    backend nftables\n"
                   '    log { level info  drops "fwc drop" }\n'
                   "    default { input reject  output drop }\n"),
                  (LAST, "    reject from lan6 to any service udp/500 with host-unreachable\n"
                   "    reject from lan to any service udp/501 with admin-prohibited\n"
                   '    accept from lan to any service tcp/8080 log "out" level info\n'
                   '    accept from lan to any service tcp/8081 log "grp" group 4\n' + LAST))
    nft_text = compiled(tmp_path, text)["edge/fw1/nftables.nft"]
    assert "reject with icmpv6 type addr-unreachable" in nft_text
    assert 'log prefix "out " level info' in nft_text
    assert 'log prefix "grp " group 4' in nft_text
    assert 'log prefix "fwc drop " level info' in nft_text  # the default drop, logged
    assert "hook output priority 0; policy drop;" in nft_text
    nft = shutil.which("nft")
    if not nft:
        cannot_run("nft is not installed")
    path = tmp_path / "nftables.nft"
    path.write_text(nft_text)
    checked = subprocess.run([nft, "-c", "-f", str(path)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr


def test_nftables_backend_is_the_iptables_rulesets_default(tmp_path):
    policy = run(tmp_path, BASE).policy
    assert policy is not None and policy.clusters[0].backend is Backend.IPTABLES
