"""Health tracking, unicast VRRP, the sync-link allowance and advert timing (issue 14).

Language -> checks (FWC250-FWC260, each triggered and silent), keepalived.conf and
the automatic rules; test_realtools.py has them pass keepalived -t and
iptables-restore in a namespace.
"""

from __future__ import annotations

import pytest
from checkkit import (
    BASE,
    EXAMPLES,
    assert_diagnostic,
    compiled_files,
    line_of,
    mutate,
    run,
    with_code,
)

from fwc.diagnostics import Severity
from fwc.pipeline import Analysis, analyse

E, W = Severity.ERROR, Severity.WARNING
CODES = [f"FWC{n}" for n in range(250, 261) if n != 256] + ["FWC256"]
ANCHOR = "    interface lan    vip"


def tracked(items: str, *more: tuple[str, str]) -> str:
    """BASE with a track block (and further replacements)."""
    return mutate((ANCHOR, f"    track {{\n{items}\n    }}\n{ANCHOR}"), *more)


GOOD = """\
        interface uplink weight -60
        ping 198.51.100.9 weight -60 interval 2s fall 3 rise 2
        process haproxy weight -60
        script "/usr/bin/true --check" weight +60 interval 5s"""


def test_good_tracking_is_silent(tmp_path):
    analysis = run(tmp_path, tracked(GOOD))
    assert analysis.diagnostics == ()


@pytest.fixture(scope="module")
def silent_policies(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Analysis]:
    """BASE and every example policy, each analysed once for all the codes below."""
    analyses = {"BASE": run(tmp_path_factory.mktemp("base"), BASE)}
    analyses.update((path.name, analyse(path)) for path in EXAMPLES)
    return analyses


@pytest.mark.parametrize("code", CODES)
def test_examples_and_base_are_silent(silent_policies, code):
    assert len(silent_policies) == 1 + len(EXAMPLES)
    for name, analysis in silent_policies.items():
        assert analysis.policy is not None, name
        assert not with_code(analysis, code), name


def test_keepalived_tracks_on_the_sync_group(tmp_path):
    conf = compiled_files(tmp_path, tracked(GOOD))["fw1/keepalived.conf"]
    group = conf[conf.index("vrrp_sync_group"):conf.index("vrrp_instance")]
    assert "    track_interface {\n        eth1 weight -60\n    }" in group
    assert "        fwc_ping_1 weight -60\n        fwc_script_1 weight 60\n" in group
    assert "    track_process {\n        fwc_process_1 weight -60\n    }" in group
    assert ('vrrp_script fwc_ping_1 {\n    script "/usr/bin/ping -c 1 -W 1 -n -I eth1 '
            '198.51.100.9"\n    interval 2\n    timeout 3\n    fall 3\n    rise 2\n}') in conf
    assert 'script "/usr/bin/true --check"\n    interval 5\n' in conf
    assert 'vrrp_track_process fwc_process_1 {\n    process "haproxy"\n    quorum 1\n}' in conf
    # the tracked VRRP device is tracked by the group only
    uplink = conf[conf.index("vrrp_instance VI_uplink"):]
    assert "dont_track_primary" in uplink
    lan = conf[conf.index("vrrp_instance VI_lan "):conf.index("vrrp_instance VI_lan_v6")]
    assert "dont_track_primary" not in lan
    # script security is always on: keepalived refuses scripts others could change
    assert "    enable_script_security\n    script_user root\n" in conf


def test_each_member_pings_from_its_own_device(tmp_path):
    text = tracked("        ping 198.51.100.9 weight -60",
                   ("uplink eth1 198.51.100.2/24", "uplink eth7 198.51.100.2/24"))
    out = compiled_files(tmp_path, text)
    assert "-I eth1 198.51.100.9" in out["fw1/keepalived.conf"]
    assert "-I eth7 198.51.100.9" in out["fw2/keepalived.conf"]


def test_single_instance_tracks_on_the_instance(tmp_path):
    text = mutate(("interface lan    vip 192.0.2.254/24, 2001:db8:1::fe/64", "interface lan"),
                  ("    accept from lan6   to any      service tcp/80,443\n", ""),
                  ("network lan6     2001:db8:1::/64\n", ""))
    text = text.replace(ANCHOR.replace("    vip", ""), "    track {\n        interface lan\n"
                        "    }\n" + ANCHOR.replace("    vip", ""), 1)
    conf = compiled_files(tmp_path, text)["fw1/keepalived.conf"]
    assert "vrrp_sync_group" not in conf
    instance = conf[conf.index("vrrp_instance VI_uplink"):]
    assert "    track_interface {\n        eth0\n    }\n    notify_master" in instance


def test_fwc250_weight_smaller_than_the_priority_gap(tmp_path):
    text = tracked("        interface uplink weight -50")
    d = assert_diagnostic(run(tmp_path, text), "FWC250", E, line_of(text, "weight -50"),
                          "'fw1'", "priority 100", "'fw2' 100")
    assert d.hint and "beyond -50" in d.hint
    text = tracked("        process haproxy weight 40")
    assert_diagnostic(run(tmp_path, text), "FWC250", E, line_of(text, "weight 40"),
                      "'fw1' with the check failed has priority 150", "'fw2' 140")
    assert not with_code(run(tmp_path, tracked("        process haproxy weight 51")), "FWC250")


def test_fwc250_priorities_are_capped_as_keepalived_caps_them(tmp_path):
    # 254 and 204: +60 would lift fw2 to 264, keepalived keeps 254 = a tie, no move
    text = tracked("        process haproxy weight 60", ("fw1 priority 150", "fw1 priority 254"),
                   ("fw2 priority 100", "fw2 priority 204"))
    assert_diagnostic(run(tmp_path, text), "FWC250", E, line_of(text, "weight 60"), "254")


def test_fwc251_weights_need_preemption(tmp_path):
    text = tracked("        interface uplink weight -60",
                   ("advert 1s  vrid 51", "advert 1s  vrid 51  preempt off"))
    d = assert_diagnostic(run(tmp_path, text), "FWC251", E, line_of(text, "weight -60"),
                          "preempt off")
    assert d.related and d.related[0].span.line == line_of(text, "preempt off")
    unweighted = tracked("        interface uplink",
                         ("advert 1s  vrid 51", "advert 1s  vrid 51  preempt off"))
    assert not with_code(run(tmp_path, unweighted), "FWC251")


@pytest.mark.parametrize(("command", "phrase"), [
    ("check-vpn --quick", "absolute path"),
    ("/etc/fwc/check.sh", "does not exist in the compiled tree"),
    ("/etc/fwc/fwc-firewall.sh", "a file fwc generates"),
    ('/usr/bin/x \\"y\\"', "double quote"),
    # keepalived expands '$' inside quotes (2.2: `${_RANDOM}` a number, a long one an
    # unterminated quote that turns the rest of the block into unknown keywords)
    ("/bin/true ${_RANDOM} x", "a '$'"),
    ("/bin/check $HOME", "a '$'"),
    # `fwc install` fills the redacted password wherever the placeholder stands
    ("/usr/bin/logger leak=@FWCPW@", "placeholder fwc install replaces"),
    # keepalived splits the words itself: an unpaired quote drops the script ("No script
    # set"), a backslash is an escape (`\t` a tab), a last one escapes the closing quote
    ("/usr/local/sbin/check it's", "unpaired single quote"),
    ("/usr/local/sbin/check a\\\\tb", "a backslash"),
    ("/usr/local/sbin/check a\\\\", "a backslash at its end"),
])
def test_fwc252_script_not_runnable(tmp_path, command, phrase):
    text = tracked(f'        script "{command}" weight -60')
    assert_diagnostic(run(tmp_path, text), "FWC252", E, line_of(text, "script \""), phrase)


def test_fwc253_device_instead_of_interface(tmp_path):
    text = tracked("        interface eth1 weight -60")
    d = assert_diagnostic(run(tmp_path, text), "FWC253", E, line_of(text, "interface eth1"),
                          "'eth1' is not an interface")
    assert d.hint and "'uplink' on fw1" in d.hint and "write 'interface uplink'" in d.hint


def test_fwc254_sync_link_tracked(tmp_path):
    text = tracked("        interface sync")
    assert_diagnostic(run(tmp_path, text), "FWC254", E, line_of(text, "        interface sync"),
                      "every member in FAULT")
    text = tracked("        interface sync weight -60")
    assert_diagnostic(run(tmp_path, text), "FWC254", E, line_of(text, "interface sync weight"),
                      "lowers every member alike")


def test_fwc254_backup_sync_link_tracked(tmp_path):
    """The backup link is a dedicated sync link too: its cut cable is down everywhere."""
    text = tracked("        interface sync2",
                   ("sync { link sync ", "sync { link sync  backup-link sync2 "),
                   ("    interface sync\n", "    interface sync\n    interface sync2\n"),
                   ("        sync   eth2 203.0.113.1/24\n",
                    "        sync   eth2 203.0.113.1/24\n        sync2  eth3 198.18.0.1/24\n"),
                   ("        sync   eth2 203.0.113.2/24\n",
                    "        sync   eth2 203.0.113.2/24\n        sync2  eth3 198.18.0.2/24\n"))
    assert_diagnostic(run(tmp_path, text), "FWC254", E, line_of(text, "        interface sync2"),
                      "tracking the sync link 'sync2'")


def test_fwc255_ping_target_off_segment_or_own(tmp_path):
    text = tracked("        ping 198.18.0.1 weight -60")
    assert_diagnostic(run(tmp_path, text), "FWC255", E, line_of(text, "ping 198.18"),
                      "on no segment of member 'fw1'")
    text = tracked("        ping 198.51.100.254 weight -60")
    assert_diagnostic(run(tmp_path, text), "FWC255", E, line_of(text, "ping 198.51"),
                      "firewall's own address")


# fw1 fe80::1 and fw2 fe80::2 on the uplink; with ON_LAN_TOO also on the lan.
UPLINK_LINK_LOCAL = (("uplink eth1 198.51.100.1/24", "uplink eth1 198.51.100.1/24, fe80::1/64"),
                     ("uplink eth1 198.51.100.2/24", "uplink eth1 198.51.100.2/24, fe80::2/64"))
ON_LAN_TOO = (("lan    eth0 192.0.2.1/24, 2001:db8:1::1/64",
               "lan    eth0 192.0.2.1/24, 2001:db8:1::1/64, fe80::1/64"),
              ("lan    eth0 192.0.2.2/24, 2001:db8:1::2/64",
               "lan    eth0 192.0.2.2/24, 2001:db8:1::2/64, fe80::2/64"))


def test_a_link_local_ping_target_needs_one_link(tmp_path):
    """The provider's router at fe80::99 on the uplink: with link-local addresses on the
    uplink only, that is the ping's device; with them on the lan too, fwc pinged it from
    the lan's device (the first), silently measuring nothing: refused. fe80::1 pinged
    on the uplink is fw1's own address there."""
    alone = tracked("        ping fe80::99 weight -60", *UPLINK_LINK_LOCAL)
    assert run(tmp_path, alone).diagnostics == ()
    conf = compiled_files(tmp_path, alone)["fw2/keepalived.conf"]
    assert "-I eth1 fe80::99" in conf
    both = tracked("        ping fe80::99 weight -60", *UPLINK_LINK_LOCAL, *ON_LAN_TOO)
    assert_diagnostic(run(tmp_path, both), "FWC255", E, line_of(both, "ping fe80::99"),
                      "link-local", "'lan' and 'uplink'")
    own = tracked("        ping fe80::1 weight -60", *UPLINK_LINK_LOCAL)
    assert_diagnostic(run(tmp_path, own), "FWC255", E, line_of(own, "ping fe80::1"),
                      "firewall's own address")


@pytest.mark.parametrize(("option", "phrase"), [
    ("weight -254", "out of range -253-253"), ("interval 500ms", "whole seconds"),
    ("interval 2.5s", "whole seconds"), ("fall 0", "out of range 1-255"),
])
def test_fwc256_ranges(tmp_path, option, phrase):
    text = tracked(f"        ping 198.51.100.9 {option}")
    assert_diagnostic(run(tmp_path, text), "FWC256", E, line_of(text, option), phrase)


def test_fwc257_unweighted_ping_warns(tmp_path):
    text = tracked("        ping 198.51.100.9")
    assert_diagnostic(run(tmp_path, text), "FWC257", W, line_of(text, "ping 198"),
                      "every member goes to FAULT")


def test_fwc258_empty_action_and_unknown_state(tmp_path):
    text = mutate((ANCHOR, f'    notify {{ master ""  start "x" }}\n{ANCHOR}'))
    analysis = run(tmp_path, text)
    assert_diagnostic(analysis, "FWC258", E, line_of(text, "notify"), "'master' is empty")
    assert any("unknown notify state 'start'" in d.message for d in with_code(analysis, "FWC109"))


# -- unicast VRRP ----------------------------------------------------------------------------

UNICAST = ("advert 1s  vrid 51", "advert 1s  vrid 51  unicast")


def test_unicast_vrrp_keepalived_and_rules(tmp_path):
    out = compiled_files(tmp_path, mutate(UNICAST))
    conf = out["fw1/keepalived.conf"]
    lan = conf[conf.index("vrrp_instance VI_lan "):conf.index("vrrp_instance VI_lan_v6")]
    assert "    unicast_src_ip 192.0.2.1\n    unicast_ttl 255\n    unicast_peer {\n" \
        "        192.0.2.2\n    }" in lan
    v6 = conf[conf.index("vrrp_instance VI_lan_v6"):conf.index("vrrp_instance VI_uplink")]
    assert "unicast_src_ip 2001:db8:1::1" in v6 and "        2001:db8:1::2\n" in v6
    # keepalived leaves IPv6 unicast adverts at the kernel's hop limit (64) unless told:
    # the rules take them with 255 only
    assert "    unicast_ttl 255\n" in v6
    assert "unicast_src_ip 192.0.2.2" in out["fw2/keepalived.conf"]
    rules = out["fw1/iptables.rules"]
    assert ("-A INPUT -s 192.0.2.2/32 -d 192.0.2.1/32 -i eth0 -p 112 -m ttl --ttl-eq 255 "
            '-m comment --comment "fwc auto: vrrp eth0" -j ACCEPT') in rules
    assert ("-A OUTPUT -s 198.51.100.1/32 -d 198.51.100.2/32 -o eth1 -p 112") in rules
    assert "224.0.0.18" not in rules
    six = out["fw1/ip6tables.rules"]
    assert "-A INPUT -s 2001:db8:1::2/128 -d 2001:db8:1::1/128 -i eth0 -p 112 -m hl --hl-eq 255" \
        in six
    assert "ff02::12" not in six
    # the fail-closed rules keep VRRP from the peer (a failed node must not split the brain)
    assert "-s 192.0.2.2/32 -d 192.0.2.1/32 -i eth0 -p 112" in out["fw1/failsafe.rules"]


def test_unicast_vrrp_with_ah_opens_ah_from_the_peer(tmp_path):
    text = mutate(("advert 1s  vrid 51", "advert 1s  vrid 51  unicast  auth ah"))
    out = compiled_files(tmp_path, text)
    assert "-A INPUT -s 192.0.2.2/32 -d 192.0.2.1/32 -i eth0 -p 51" in out["fw1/iptables.rules"]


def test_multicast_vrrp_stays_the_default(tmp_path):
    out = compiled_files(tmp_path, BASE)
    assert "unicast" not in out["fw1/keepalived.conf"]
    assert "-d 224.0.0.18/32 -i eth0 -p 112" in out["fw1/iptables.rules"]


# -- sync { allow } ----------------------------------------------------------------------------

def test_sync_allow_opens_services_between_sync_addresses_only(tmp_path):
    text = mutate(("sync { link sync  mode ftfw", "sync { link sync  allow tcp/22, udp/123, "
                   "icmp/echo-request  mode ftfw"))
    analysis = run(tmp_path, text)
    assert analysis.diagnostics == ()
    rules = compiled_files(tmp_path, text)["fw2/iptables.rules"]
    label = '"fwc auto: sync allow tcp/22, udp/123, icmp/echo-request"'
    assert (f"-A INPUT -s 203.0.113.1/32 -d 203.0.113.2/32 -i eth2 -p tcp -m tcp --dport 22 "
            f"-m comment --comment {label} -j ACCEPT") in rules
    assert (f"-A OUTPUT -s 203.0.113.2/32 -d 203.0.113.1/32 -o eth2 -p udp -m udp --dport 123 "
            f"-m comment --comment {label} -j ACCEPT") in rules
    assert "-s 203.0.113.1/32 -d 203.0.113.2/32 -i eth2 -p icmp -m icmp --icmp-type 8" in rules


def test_fwc259_sync_allow_must_be_bounded(tmp_path):
    text = mutate(("sync { link sync  mode ftfw",
                   "sync { link sync  allow tcp, udp/123  mode ftfw"))
    assert_diagnostic(run(tmp_path, text), "FWC259", E, line_of(text, "allow tcp"),
                      "'tcp' opens all of tcp")


def test_fwc218_points_at_the_allowance(tmp_path):
    text = mutate(("    drop   from any    to any\n",
                   "    accept from any to firewall service tcp/22 in sync\n"
                   "    drop   from any    to any\n"))
    d = with_code(run(tmp_path, text), "FWC218")[0]
    assert d.hint and "sync { allow ssh" in d.hint


# -- fast failover -----------------------------------------------------------------------------

def test_fwc260_adverts_below_the_safe_interval_warn(tmp_path):
    text = mutate(("advert 1s", "advert 30ms  version 3"), ('password "s3cret"  ', ""))
    assert_diagnostic(run(tmp_path, text), "FWC260", W, line_of(text, "advert 30ms"),
                      "30 ms", "90 ms")
    text = mutate(("advert 1s", "advert 50ms  version 3"), ('password "s3cret"  ', ""))
    assert not with_code(run(tmp_path, text), "FWC260")
    conf = compiled_files(tmp_path, text)["fw1/keepalived.conf"]
    assert "    advert_int 0.05\n    version 3\n" in conf


def test_fwc252_an_empty_process_name_is_refused(tmp_path):
    # keepalived -t accepts it, and the process is never found: every member in FAULT
    text = tracked('        process "" weight -60')
    assert_diagnostic(run(tmp_path, text), "FWC252", E, line_of(text, 'process ""'),
                      "names no process")


def test_fwc252_a_track_text_longer_than_a_keepalived_line_is_refused(tmp_path):
    # (it ended in FWC900, an internal error, when keepalived.conf was written)
    long = "/bin/true " + "x" * 1100
    text = tracked(f'        script "{long}" weight -60')
    assert_diagnostic(run(tmp_path, text), "FWC252", E, line_of(text, "script \""),
                      "keepalived reads lines of at most 1023 bytes")
    fits = "/bin/true " + "x" * 990
    assert not with_code(run(tmp_path, tracked(f'        script "{fits}" weight -60')),
                         "FWC252")


def test_fwc252_a_process_name_ending_in_a_backslash_is_refused(tmp_path):
    # `process "a\"` is "Unterminated quote" to keepalived
    text = tracked('        process "haproxy\\\\" weight -60')
    assert_diagnostic(run(tmp_path, text), "FWC252", E, line_of(text, "process \""),
                      "a backslash at its end")


def test_fwc252_paired_quotes_and_two_closing_backslashes_are_fine(tmp_path):
    text = tracked("        script \"/usr/local/sbin/check --name 'my vpn'\" weight -60")
    assert not with_code(run(tmp_path, text), "FWC252")
    text = tracked('        process "haproxy\\\\\\\\" weight -60')  # two: the quote stands
    assert not with_code(run(tmp_path, text), "FWC252")



def test_fwc252_a_process_name_longer_than_the_kernels_is_refused(tmp_path):
    # keepalived compares the name with /proc/PID/comm, which holds 15 bytes of it: a
    # longer name never matches, and every member stays in FAULT (keepalived -t is silent)
    text = tracked('        process "haproxy-frontend" weight -60')
    found = assert_diagnostic(run(tmp_path, text), "FWC252", E, line_of(text, 'process "'),
                              "16 bytes", "15")
    assert 'process "haproxy-fronten"' in (found.hint or "")
    text = tracked('        process "ééééééé日" weight -60')  # 17 bytes in 8 characters
    found = assert_diagnostic(run(tmp_path, text), "FWC252", E, line_of(text, 'process "'),
                              "17 bytes")
    assert 'process "ééééééé"' in (found.hint or "")  # never half a character
    for fits in ("haproxy-fronten", "a b", "ééééééé"):  # 15, 3 and 14 bytes
        assert not with_code(run(tmp_path, tracked(f'        process "{fits}" weight -60')),
                             "FWC252")


def test_fwc252_a_process_name_that_is_a_closing_brace_is_refused(tmp_path):
    # keepalived ends the vrrp_track_process block at it: "Unknown keyword 'quorum'"
    text = tracked('        process "}" weight -60')
    assert_diagnostic(run(tmp_path, text), "FWC252", E, line_of(text, 'process "}"'),
                      "end of the block")
