"""Cluster checks (FWC2xx): each triggered once, and silent on the example policies."""

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

from fwc.checks import load_registry
from fwc.diagnostics import Severity

E, W = Severity.ERROR, Severity.WARNING

FW2_BLOCK = """    member fw2 priority 100 {
        lan    eth0 192.0.2.2/24, 2001:db8:1::2/64
        uplink eth1 198.51.100.2/24
        sync   eth2 203.0.113.2/24
    }
"""


def test_base_policy_is_clean(tmp_path):
    assert run(tmp_path, BASE).diagnostics == ()


def test_fwc201_one_member(tmp_path):
    text = mutate((FW2_BLOCK, ""))
    analysis = run(tmp_path, text)
    assert_diagnostic(analysis, "FWC201", E, line_of(text, "cluster edge"), "1 member",
                      "at least two")


def test_fwc202_member_misses_an_interface(tmp_path):
    text = mutate(("        uplink eth1 198.51.100.2/24\n", ""))
    analysis = run(tmp_path, text)
    d = assert_diagnostic(analysis, "FWC202", E, line_of(text, "member fw2"),
                          "'fw2' does not map interface 'uplink'")
    assert d.hint and "uplink DEVICE" in d.hint


def test_fwc202_two_interfaces_on_one_device(tmp_path):
    text = mutate(("uplink eth1 198.51.100.2/24", "uplink eth0 198.51.100.2/24"))
    analysis = run(tmp_path, text)
    assert_diagnostic(analysis, "FWC202", E, line_of(text, "uplink eth0 198.51.100.2"),
                      "same device 'eth0'")


def test_fwc203_member_outside_segment(tmp_path):
    text = mutate(("uplink eth1 198.51.100.2/24", "uplink eth1 198.51.101.2/24"))
    analysis = run(tmp_path, text)
    d = assert_diagnostic(analysis, "FWC203", E, line_of(text, "198.51.101.2/24"),
                          "198.51.101.2/24", "198.51.100.0/24")
    assert d.span is not None and d.span.column == text.splitlines()[d.span.line - 1].index(
        "198.51.101.2") + 1


def test_fwc203_member_without_address_of_vip_family(tmp_path):
    text = mutate(("lan    eth0 192.0.2.2/24, 2001:db8:1::2/64", "lan    eth0 192.0.2.2/24"))
    analysis = run(tmp_path, text)
    assert_diagnostic(analysis, "FWC203", E, line_of(text, "lan    eth0 192.0.2.2/24"),
                      "no IPv6 address on 'lan'")


def test_fwc204_vrid_out_of_range_from_resolver(tmp_path):
    text = mutate(("vrid 52", "vrid 256"))
    analysis = run(tmp_path, text)
    assert_diagnostic(analysis, "FWC204", E, line_of(text, "vrid 256"), "VRID 256",
                      "1-255")


def test_fwc205_duplicate_member_address(tmp_path):
    text = mutate(("uplink eth1 198.51.100.2/24", "uplink eth1 198.51.100.1/24"))
    analysis = run(tmp_path, text)
    fw2_uplink = line_of(text, "member fw2") + 2
    d = assert_diagnostic(analysis, "FWC205", E, fw2_uplink, "198.51.100.1", "'fw1'")
    assert d.related[0].span.line == line_of(text, "member fw1") + 2


def test_fwc206_vip_without_prefix_from_resolver(tmp_path):
    text = mutate(("vip 198.51.100.254/24", "vip 198.51.100.254"))
    analysis = run(tmp_path, text)
    assert_diagnostic(analysis, "FWC206", E, line_of(text, "vip 198.51.100.254"),
                      "no prefix length")


@pytest.mark.parametrize(("vip", "phrase"), [
    ("198.51.101.254/24", "outside the segment's subnet"),
    ("198.51.100.254/25", "prefix /25"),
    ("198.51.100.255/24", "broadcast address"),
    ("198.51.100.0/24", "network address"),
])
def test_fwc207_vip_not_usable(tmp_path, vip, phrase):
    text = mutate(("vip 198.51.100.254/24", f"vip {vip}"))
    analysis = run(tmp_path, text)
    assert_diagnostic(analysis, "FWC207", E, line_of(text, f"vip {vip}"), phrase)


def test_fwc208_vip_equals_member_address(tmp_path):
    text = mutate(("vip 198.51.100.254/24", "vip 198.51.100.2/24"))
    analysis = run(tmp_path, text)
    d = assert_diagnostic(analysis, "FWC208", E, line_of(text, "vip 198.51.100.2/24"),
                          "198.51.100.2", "member 'fw2'")
    assert d.related[0].span.line == line_of(text, "uplink eth1 198.51.100.2/24")


def test_fwc209_equal_priority_out_of_range_from_resolver(tmp_path):
    text = mutate(("member fw2 priority 100", "member fw2 priority 255"))
    analysis = run(tmp_path, text)
    assert_diagnostic(analysis, "FWC209", E, line_of(text, "priority 255"), "priority 255")


def test_fwc210_vrid_shared_by_two_interfaces(tmp_path):
    text = mutate(("vip 198.51.100.254/24  vrid 52", "vip 198.51.100.254/24"))
    analysis = run(tmp_path, text)
    d = assert_diagnostic(analysis, "FWC210", E, line_of(text, "interface uplink"),
                          "'lan' and 'uplink' both use VRID 51 for IPv4")
    assert d.hint and "own 'vrid N'" in d.hint


def test_fwc210_v4_and_v6_instance_of_one_interface_share_a_vrid(tmp_path):
    # lan has an IPv4 and an IPv6 VIP with the cluster VRID 51: not an error.
    assert with_code(run(tmp_path, BASE), "FWC210") == []


def test_fwc211_equal_priorities(tmp_path):
    text = mutate(("member fw2 priority 100", "member fw2 priority 150"))
    analysis = run(tmp_path, text)
    d = assert_diagnostic(analysis, "FWC211", E, line_of(text, "member fw2"),
                          "'fw1' and 'fw2' both have priority 150")
    assert d.related[0].span.line == line_of(text, "member fw1")


def test_fwc212_password_of_nine_characters(tmp_path):
    text = mutate(('password "s3cret"', 'password "123456789"'))
    analysis = run(tmp_path, text)
    assert_diagnostic(analysis, "FWC212", E, line_of(text, "123456789"), "9 characters",
                      "first 8")


def test_fwc212_eight_characters_are_fine(tmp_path):
    text = mutate(('password "s3cret"', 'password "12345678"'))
    assert with_code(run(tmp_path, text), "FWC212") == []


def test_fwc213_password_with_version_3(tmp_path):
    text = mutate(("advert 1s", "advert 1s  version 3"))
    analysis = run(tmp_path, text)
    assert_diagnostic(analysis, "FWC213", E, line_of(text, "version 3"),
                      "version 3 has no authentication")


def test_fwc213_auth_without_password(tmp_path):
    text = mutate(('password "s3cret"', "auth pass"))
    analysis = run(tmp_path, text)
    assert_diagnostic(analysis, "FWC213", E, line_of(text, "auth pass"),
                      "'auth pass' without a password")


def test_fwc213_empty_password(tmp_path):
    # keepalived: "Authentication specified but no password given. Ignoring"
    text = mutate(('password "s3cret"', 'password ""'))
    assert_diagnostic(run(tmp_path, text), "FWC213", E, line_of(text, 'password ""'),
                      "empty VRRP password")


def test_fwc213_ipv6_vip_with_v2_password_is_not_an_error(tmp_path):
    # lan has an IPv6 VIP (own v3 instance without auth) next to a v2 password.
    analysis = run(tmp_path, BASE)
    assert with_code(analysis, "FWC213") == [] and with_code(analysis, "FWC214") == []


@pytest.mark.parametrize(("vrrp", "phrase"), [
    ('password "s3cret"  advert 100ms  vrid 51', "version 2"),
    ('password "s3cret"  advert 1500ms  vrid 51', "version 2"),
    ('password "s3cret"  advert 256s  vrid 51', "version 2"),
    ("advert 15ms  version 3  vrid 51", "version 3"),
    ("advert 41s  version 3  vrid 51", "version 3"),
])
def test_fwc214_advert_invalid_for_version(tmp_path, vrrp, phrase):
    text = mutate(('password "s3cret"  advert 1s  vrid 51', vrrp))
    analysis = run(tmp_path, text)
    d = assert_diagnostic(analysis, "FWC214", E, line_of(text, "vrrp {"), phrase)
    if "100ms" in vrrp:
        assert d.hint and "version 3" in d.hint


def test_fwc214_sub_second_with_version_3_is_fine(tmp_path):
    text = mutate(('password "s3cret"  advert 1s', "advert 100ms  version 3"))
    assert run(tmp_path, text).diagnostics == ()


def test_fwc215_mark_bit_from_resolver(tmp_path):
    text = mutate(("port 3780 }", "port 3780  mark-bit 32 }"))
    analysis = run(tmp_path, text)
    assert_diagnostic(analysis, "FWC215", E, line_of(text, "mark-bit 32"), "mark bit 32")


def test_fwc216_no_sync_link(tmp_path):
    text = mutate(("link sync  ", ""))
    analysis = run(tmp_path, text)
    assert_diagnostic(analysis, "FWC216", E, line_of(text, "sync {"), "no sync link")


def test_fwc216_sync_link_is_not_an_interface(tmp_path):
    text = mutate(("link sync  ", "link hasync  "))
    analysis = run(tmp_path, text)
    d = assert_diagnostic(analysis, "FWC216", E, line_of(text, "link hasync"),
                          "'hasync' is not an interface")
    line = text.splitlines()[d.span.line - 1]
    assert line.index("link hasync") < d.span.column <= line.index("hasync") + 1


def test_fwc216_member_without_address_on_the_sync_link(tmp_path):
    text = mutate(("sync   eth2 203.0.113.2/24", "sync   eth2"))
    analysis = run(tmp_path, text)
    fw2_sync = line_of(text, "member fw2") + 3
    assert text.splitlines()[fw2_sync - 1].strip() == "sync   eth2"
    assert_diagnostic(analysis, "FWC216", E, fw2_sync,
                      "'fw2' has no IPv4 address on the sync link")


def test_fwc217_vip_on_the_sync_link(tmp_path):
    text = mutate(("    interface sync\n", "    interface sync vip 203.0.113.254/24 vrid 53\n"))
    analysis = run(tmp_path, text)
    assert_diagnostic(analysis, "FWC217", E, line_of(text, "interface sync"),
                      "sync link 'sync' carries a VIP")


@pytest.mark.parametrize("option", ["in sync", "out sync"])
def test_fwc218_rule_on_the_sync_link(tmp_path, option):
    text = mutate(("accept from server to client   service tcp/5001",
                   f"accept from server to client   service tcp/5001 {option}"))
    analysis = run(tmp_path, text)
    assert_diagnostic(analysis, "FWC218", E, line_of(text, option), f"'{option}'")


@pytest.mark.parametrize(("group", "phrase"), [
    ("192.0.2.50", "not a multicast address"),
    ("224.0.0.50", "link-local"),
])
def test_fwc219_bad_sync_group(tmp_path, group, phrase):
    text = mutate(("multicast 225.0.0.50", f"multicast {group}"))
    analysis = run(tmp_path, text)
    assert_diagnostic(analysis, "FWC219", E, line_of(text, group), phrase)


def test_fwc220_unicast_with_three_members(tmp_path):
    third = FW2_BLOCK.replace("fw2", "fw3").replace("100", "50").replace(".2/", ".3/") \
        .replace("::2/", "::3/")
    text = mutate(("multicast 225.0.0.50 port 3780", "unicast"), (FW2_BLOCK, FW2_BLOCK + third))
    analysis = run(tmp_path, text)
    assert_diagnostic(analysis, "FWC220", E, line_of(text, "unicast"), "3 members")


THIRD_BLOCK = FW2_BLOCK.replace("fw2", "fw3").replace("priority 100", "priority 50") \
    .replace(".2/", ".3/").replace("::2/", "::3/")


def test_fwc224_ftfw_with_three_members(tmp_path):
    # conntrackd's FTFW tracks one peer's sequence numbers: a third member drops a
    # sender's states (measured in tests/test_conntrackd_members.py)
    text = mutate((FW2_BLOCK, FW2_BLOCK + THIRD_BLOCK))
    analysis = run(tmp_path, text)
    d = assert_diagnostic(analysis, "FWC224", E, line_of(text, "mode ftfw"), "3 members")
    assert d.span is not None and d.span.column == text.splitlines()[d.span.line - 1].index(
        "ftfw") + 1
    assert d.hint and "mode notrack" in d.hint
    # the default mode is FTFW too: the diagnostic is at the sync link then
    default = mutate((FW2_BLOCK, FW2_BLOCK + THIRD_BLOCK), ("  mode ftfw", ""))
    assert_diagnostic(run(tmp_path, default), "FWC224", E, line_of(default, "sync {"))


# A second pair on edge's lan segment (192.0.2.0/24) with a transit link of its own.
CORE = """
cluster core {
    vrrp { password "c0re"  vrid 51 }
    sync { link sync }
    interface lan     vip 192.0.2.253/24
    interface transit vip 198.18.0.254/24  vrid 52
    interface sync
    member core1 priority 150 { lan eth0 192.0.2.11/24  transit eth1 198.18.0.1/24
                                sync eth2 198.18.1.1/24 }
    member core2 priority 100 { lan eth0 192.0.2.12/24  transit eth1 198.18.0.2/24
                                sync eth2 198.18.1.2/24 }
}

policy core {
    accept from lan to any service tcp/443
}
"""


def test_fwc210_two_clusters_with_one_vrid_on_a_shared_segment(tmp_path):
    # keepalived 2.2.7, two pairs on one bridge with one VRID: each backup took the VIPs
    # for a moment every few seconds (the other pair's adverts shorten its wait)
    text = BASE + CORE
    analysis = run(tmp_path, text)
    d = assert_diagnostic(analysis, "FWC210", E, line_of(text, "vip 192.0.2.253/24"),
                          "'lan' of cluster 'core' uses VRID 51 for IPv4 on 192.0.2.0/24",
                          "'lan' of cluster 'edge'")
    assert d.related[0].span.line == line_of(text, "interface lan    vip 192.0.2.254/24")
    # transit reuses uplink's VRID 52, on a segment of its own: fine
    assert "uplink" not in d.message


@pytest.mark.parametrize("change", [("vrid 51 }\n    sync { link sync }\n",
                                     "vrid 61 }\n    sync { link sync }\n"),
                                    ('"c0re"  vrid 51', '"c0re"  vrid 51  unicast'),
                                    ("    vrrp { password \"s3cret\"  advert 1s  vrid 51 }",
                                     "    vrrp { password \"s3cret\"  advert 1s  vrid 51  "
                                     "unicast }")])
def test_clusters_apart_on_a_shared_segment_are_fine(tmp_path, change):
    # another VRID, or unicast adverts in either cluster (they reach its own members only)
    text = (BASE + CORE).replace(*change)
    assert change[1] in text
    assert run(tmp_path, text).diagnostics == ()


# core on edge's sync segment (203.0.113.0/24), with a VRID of its own on lan
CORE_ON_EDGE_SYNC = CORE.replace("vrid 51", "vrid 61").replace("198.18.1.", "203.0.113.1")


def test_fwc225_two_clusters_sync_on_one_group_of_one_segment(tmp_path):
    text = BASE + CORE_ON_EDGE_SYNC
    analysis = run(tmp_path, text)
    d = assert_diagnostic(analysis, "FWC225", E, line_of(text, "sync { link sync }"),
                          "'sync' of cluster 'core' uses group 225.0.0.50 port 3780 on "
                          "203.0.113.0/24", "cluster 'edge'")
    assert d.related[0].span.line == line_of(text, "sync { link sync  mode ftfw")
    assert d.hint and "multicast GROUP port N" in d.hint


@pytest.mark.parametrize("sync", ["sync { link sync  multicast 225.0.0.51 }",
                                  "sync { link sync  port 3790 }"])
def test_clusters_on_one_sync_segment_with_their_own_group_or_port_are_fine(tmp_path, sync):
    text = BASE + CORE_ON_EDGE_SYNC.replace("sync { link sync }", sync)
    assert run(tmp_path, text).diagnostics == ()


def _link_local_sync(text: str, prefix: str) -> str:
    """TEXT with each member's sync address under PREFIX: 169.254.1.1/30, .2/30."""
    for old, new in (("203.0.113.1/24", "1/30"), ("203.0.113.2/24", "2/30"),
                     ("198.18.1.1/24", "1/30"), ("198.18.1.2/24", "2/30")):
        text = text.replace(old, prefix + new)
    return text


def test_two_pairs_each_on_its_own_link_local_sync_cable_are_fine(tmp_path):
    """Each pair numbers its back-to-back sync cable 169.254.1.0/30 and keeps conntrackd's
    default group and port: the subnets are every link's own (as FWC288 reads their
    addresses), no shared segment, and no FWC225."""
    text = _link_local_sync(BASE + CORE.replace("192.0.2.1", "198.18.2.1")
                            .replace("192.0.2.25", "198.18.2.25"), "169.254.1.")
    assert text.count("169.254.1.1/30") == 2 and "225.0.0.50 port 3780" in text
    assert run(tmp_path, text).diagnostics == ()
    # the same plan on routable addresses is one segment (and one address, FWC288)
    shared = _link_local_sync(BASE + CORE.replace("192.0.2.1", "198.18.2.1")
                              .replace("192.0.2.25", "198.18.2.25"), "198.19.1.")
    assert {"FWC225", "FWC288"} <= {d.code for d in run(tmp_path, shared).diagnostics}


def test_one_vrid_with_link_local_vips_on_separate_segments_is_fine(tmp_path):
    """The gateway of each IPv6 segment at fe80::fe, a link-local VIP (hosts learn their
    prefix from router advertisements): every link is on fe80::/64, so two clusters on
    segments of their own may give it one VRID (FWC210 is about one segment)."""
    core = CORE.replace("192.0.2.1", "198.18.2.1").replace("192.0.2.253/24",
                                                           "198.18.2.253/24, fe80::fe/64")
    core = core.replace("198.18.2.11/24", "198.18.2.11/24, fe80::11/64").replace(
        "198.18.2.12/24", "198.18.2.12/24, fe80::12/64")
    edge = BASE.replace("2001:db8:1::", "fe80::").replace("network lan6     fe80::/64\n", "")
    edge = edge.replace("    accept from lan6   to any      service tcp/80,443\n", "")
    text = edge + core
    assert "vrid 51" in core and text.count("fe80::fe/64") == 2
    assert run(tmp_path, text).diagnostics == ()


# Static IPv6 link-local addresses: fw1 fe80::1 and fw2 fe80::2 on every link (lan and
# uplink), next to the lan's global addresses. Link-local addresses are per link.
LINK_LOCAL = (("lan    eth0 192.0.2.1/24, 2001:db8:1::1/64",
               "lan    eth0 192.0.2.1/24, 2001:db8:1::1/64, fe80::1/64"),
              ("uplink eth1 198.51.100.1/24", "uplink eth1 198.51.100.1/24, fe80::1/64"),
              ("lan    eth0 192.0.2.2/24, 2001:db8:1::2/64",
               "lan    eth0 192.0.2.2/24, 2001:db8:1::2/64, fe80::2/64"),
              ("uplink eth1 198.51.100.2/24", "uplink eth1 198.51.100.2/24, fe80::2/64"))


def test_one_link_local_address_on_every_link_of_a_member_is_fine(tmp_path):
    """fe80::1 on lan and on uplink of one member are two addresses (fe80::1%eth0 and
    fe80::1%eth1), and fe80::1/64 next to 2001:db8:1::1/64 is every IPv6 link's plan: no
    FWC205, no FWC203 (measured before the fix: both fired)."""
    assert run(tmp_path, mutate(*LINK_LOCAL)).diagnostics == ()


def test_link_local_vip_first_next_to_a_global_vip_is_fine(tmp_path):
    """VRRPv3 wants the virtual link-local address first (RFC 5798 5.2.9): fe80::fe/64
    is in the lan's link-local subnet, not outside its 2001:db8:1::/64 (FWC207)."""
    text = mutate(*LINK_LOCAL, ("vip 192.0.2.254/24, 2001:db8:1::fe/64",
                                "vip 192.0.2.254/24, fe80::fe/64, 2001:db8:1::fe/64"))
    assert run(tmp_path, text).diagnostics == ()


def test_link_local_addresses_still_clash_on_one_segment(tmp_path):
    """Scope tells links apart, not members: two members with one link-local address on
    one segment (FWC205), a link-local VIP that is a member's link-local address there
    (FWC208) and one outside the segment's link-local subnet (FWC207) are refused."""
    twice = mutate(*LINK_LOCAL, ("2001:db8:1::2/64, fe80::2/64", "2001:db8:1::2/64, fe80::1/64"))
    assert_diagnostic(run(tmp_path, twice), "FWC205", E,
                      line_of(twice, "2001:db8:1::2/64, fe80::1/64"), "fe80::1", "'fw1' on 'lan'")
    owned = mutate(*LINK_LOCAL, ("vip 192.0.2.254/24, 2001:db8:1::fe/64",
                                 "vip 192.0.2.254/24, fe80::2/64, 2001:db8:1::fe/64"))
    assert_diagnostic(run(tmp_path, owned), "FWC208", E, line_of(owned, "fe80::2/64, 2001"),
                      "fe80::2", "member 'fw2'")
    outside = mutate(*LINK_LOCAL, ("vip 192.0.2.254/24, 2001:db8:1::fe/64",
                                   "vip 192.0.2.254/24, fe80:1::fe/64, 2001:db8:1::fe/64"))
    assert_diagnostic(run(tmp_path, outside), "FWC207", E, line_of(outside, "fe80:1::fe"),
                      "fe80:1::fe/64", "fe80::/64")


def test_link_local_vip_equal_to_a_member_address_of_another_link_is_fine(tmp_path):
    """fw2's fe80::2 on uplink is another address than a lan VIP fe80::2 (no FWC208)."""
    fw2_lan_global_only = (LINK_LOCAL[0], LINK_LOCAL[1], LINK_LOCAL[3])
    text = mutate(*fw2_lan_global_only, ("vip 192.0.2.254/24, 2001:db8:1::fe/64",
                                              "vip 192.0.2.254/24, fe80::2/64, "
                                              "2001:db8:1::fe/64"))
    assert run(tmp_path, text).diagnostics == ()


@pytest.mark.parametrize(("dev", "clash"), [("uplink", False), ("lan", True)])
def test_fwc245_link_local_gateway_is_the_clusters_only_on_its_link(tmp_path, dev, clash):
    """The provider's router at fe80::1 on the uplink while fw1 is fe80::1 on the lan
    only: another address (FWC245 fired before the fix); on the lan it is fw1's own."""
    fw1_uplink_without = (LINK_LOCAL[0], LINK_LOCAL[2], LINK_LOCAL[3])
    text = mutate(*fw1_uplink_without, ("    member fw1", "    route default via fe80::1 dev "
                                        f"{dev}\n    member fw1"))
    assert "uplink eth1 198.51.100.1/24\n" in text
    codes = [d.code for d in run(tmp_path, text).diagnostics]
    assert codes == (["FWC245"] if clash else [])


ROUTER_SOLICITATIONS = ("    accept from client to firewall service tcp/22\n",
                        "    accept from client to firewall service tcp/22\n"
                        "    accept from any to firewall service icmpv6/router-solicitation"
                        " in lan\n")


def test_fwc226_router_discovery_without_a_virtual_link_local_vip(tmp_path):
    """The policy accepts router solicitations on the lan (the members run radvd) while
    the lan's IPv6 VIPs have no link-local address: hosts would route through a member's
    own link-local address, not the VIP. The hint names the VRID's address (51 = 0x33)."""
    text = mutate(ROUTER_SOLICITATIONS)
    d = assert_diagnostic(run(tmp_path, text), "FWC226", W, line_of(text, "interface lan"),
                          "'lan'", "no link-local")
    assert d.hint is not None and "vip fe80::200:5eff:fe00:233/64" in d.hint
    assert d.related[0].span.line == line_of(text, "router-solicitation")


def test_fwc226_names_the_first_rule_written_for_the_interface(tmp_path):
    """The rules are read once for every interface (issue 12: twelve interfaces read
    20,000 rules twelve times): the related rule is still the first one that accepts
    router discovery on that interface, not the first one on any."""
    text = mutate(ROUTER_SOLICITATIONS, (
        "    accept from any to firewall service icmpv6/router-solicitation in lan\n",
        "    accept from any to firewall service icmpv6/router-advertisement in uplink\n"
        "    accept from any to firewall service icmpv6/router-solicitation in lan\n"))
    d = assert_diagnostic(run(tmp_path, text), "FWC226", W, line_of(text, "interface lan"),
                          "'lan'", "no link-local")
    assert d.related[0].span.line == line_of(text, "router-solicitation in lan")


@pytest.mark.parametrize("change", [
    ("vip 192.0.2.254/24, 2001:db8:1::fe/64",
     "vip 192.0.2.254/24, fe80::200:5eff:fe00:233/64, 2001:db8:1::fe/64"),
    ("router-solicitation in lan", "router-solicitation in uplink"),
])
def test_fwc226_silent_with_a_link_local_vip_or_router_discovery_elsewhere(tmp_path, change):
    assert not with_code(run(tmp_path, mutate(ROUTER_SOLICITATIONS, change)), "FWC226")


def test_keepalived_puts_the_link_local_vip_first(tmp_path):
    """VRRPv3 takes the first address as the virtual router's link-local one (RFC 5798
    5.2.9): written after the global VIP, it is still the instance's first address."""
    text = mutate(*LINK_LOCAL, ("vip 192.0.2.254/24, 2001:db8:1::fe/64",
                                "vip 192.0.2.254/24, 2001:db8:1::fe/64, fe80::fe/64"))
    conf = compiled_files(tmp_path, text)["fw1/keepalived.conf"]
    instance = conf[conf.index("vrrp_instance VI_lan_v6"):]
    block = instance[instance.index("virtual_ipaddress {"):instance.index("}")]
    assert block.split("\n")[1:3] == ["        fe80::fe/64 dev eth0",
                                       "        2001:db8:1::fe/64 dev eth0"]


@pytest.mark.parametrize("mode", ["notrack", "alarm"])
def test_three_members_with_a_mode_that_takes_every_sender_are_fine(tmp_path, mode):
    text = mutate((FW2_BLOCK, FW2_BLOCK + THIRD_BLOCK), ("mode ftfw", f"mode {mode}"))
    assert run(tmp_path, text).diagnostics == ()


def test_unicast_with_two_members_is_fine(tmp_path):
    text = mutate(("multicast 225.0.0.50 port 3780", "unicast"))
    assert run(tmp_path, text).diagnostics == ()


CLUSTER_CODES = [f"FWC2{n:02d}" for n in range(1, 23)]


def test_every_cluster_code_is_registered():
    registry = load_registry()
    missing = [c for c in CLUSTER_CODES if c not in registry]
    assert missing == []
    assert all(registry[c].rationale for c in CLUSTER_CODES)


@pytest.mark.parametrize("policy", EXAMPLES, ids=lambda p: p.name)
def test_cluster_checks_silent_on_examples(examples, policy):
    analysis = examples[policy.name].analysis
    assert [d for d in analysis.diagnostics if d.code in CLUSTER_CODES] == []


@pytest.mark.parametrize("delay, phrase", [
    ("0s", "before conntrackd has resynchronised"),
    ("4s", "preempt-delay 4 s"),
    ("500ms", "preempt-delay 0 s"),
    ("1001s", "maximum of 1000 s"),
])
def test_fwc221_preempt_delay_out_of_range(tmp_path, delay, phrase):
    text = mutate(("advert 1s", f"advert 1s  preempt-delay {delay}"))
    analysis = run(tmp_path, text)
    assert_diagnostic(analysis, "FWC221", E, line_of(text, "preempt-delay"), phrase)


@pytest.mark.parametrize("option", ["preempt-delay 5s", "preempt-delay 30s", "preempt off",
                                    "preempt off  preempt-delay 0s"])
def test_fwc221_silent_for_a_long_enough_delay_or_nopreempt(tmp_path, option):
    text = mutate(("advert 1s", f"advert 1s  {option}"))
    assert with_code(run(tmp_path, text), "FWC221") == []


SNAT = "    snat from lan to any out uplink -> uplink.vip\n"


@pytest.mark.parametrize(("changes", "line", "phrase"), [
    # the peer's adverts to 224.0.0.18 are sent to the portal: both members master
    (((SNAT, SNAT + "    dnat from lan to any in lan -> web\n"),), "dnat from lan",
     "'fw1' receives (192.0.2.2 -> 224.0.0.18, 'fwc auto: vrrp eth0')"),
    # no `in`: the sync link's traffic too
    (((SNAT, SNAT + "    dnat from any to any service udp -> web\n"),), "udp -> web",
     "'fwc auto: conntrackd sync eth2'"),
    # unicast sync: the peer accepts the state only from the member's sync address (a
    # network around it translates it; `any` leaves the firewall out)
    ((("multicast 225.0.0.50 port 3780", "unicast"),
      (SNAT, "    snat from 203.0.113.0/24 to any -> uplink.vip\n")), "snat from 203",
     "'fw1' sends (203.0.113.1 -> 203.0.113.2, 'fwc auto: conntrackd sync eth2')"),
    # unicast VRRP: the peer accepts adverts only from the member's address
    ((("vrid 51 }", "vrid 51  unicast }"), (SNAT, "    snat from firewall to any out uplink "
                                                  "-> uplink.vip\n")), "snat from firewall",
     "(198.51.100.1 -> 198.51.100.2, 'fwc auto: vrrp eth1')"),
    # multicast VRRPv2: the peer takes adverts from the member's address only
    (((SNAT, SNAT + "    snat from lan to 224.0.0.0/4 out lan -> lan.vip\n"),), "out lan",
     "'fw1' sends (192.0.2.1 -> 224.0.0.18, 'fwc auto: vrrp eth0')"),
    # multicast sync: the peer takes states from the member's sync address only
    (((SNAT, "    snat from 203.0.113.0/24 to 225.0.0.0/8 -> uplink.vip\n"),), "snat from 203",
     "'fw1' sends (203.0.113.1 -> 225.0.0.50, 'fwc auto: conntrackd sync eth2')"),
    # IPv6 adverts are VRRPv3, whose checksum covers the (link-local) source
    (((SNAT, SNAT + "    snat from any to any out lan -> lan.vip\n"),), "out lan",
     "(fe80::1 -> ff02::12, 'fwc auto: vrrp eth0')"),
])
def test_fwc222_nat_translates_ha_traffic(tmp_path, changes, line, phrase):
    text = mutate(*changes)
    assert_diagnostic(run(tmp_path, text), "FWC222", E, line_of(text, line), phrase)


@pytest.mark.parametrize("nat", [
    # a nonat for the VRRP group first
    "    nonat from any to 224.0.0.0/4 in lan\n    dnat from lan to any in lan -> web\n",
    # a service leaves VRRP out
    "    dnat from lan to any service tcp/80 in lan -> web\n",
    # `any` leaves the members' own adverts out; masquerade keeps the source they have
    "    snat from any to any out uplink -> uplink.vip\n    masquerade from any to any out lan\n",
])
def test_fwc222_silent_when_the_plumbing_is_left_alone(tmp_path, nat):
    text = mutate((SNAT, nat))
    assert with_code(run(tmp_path, text), "FWC222") == []


@pytest.mark.parametrize("source", ["any", "any, !lan"])
def test_fwc222_silent_when_the_rule_does_not_name_the_firewall(tmp_path, source):
    # Unicast sync and VRRP come from the members' own addresses; `any` does not name the
    # firewall: the compiled snat RETURNs its own traffic first (fwc.backend.lower,
    # `nat_firewall_left_out`), as `fwc query` reads it.
    text = mutate(("multicast 225.0.0.50 port 3780", "unicast"),
                  ("vrid 51 }", "vrid 51  unicast }"),
                  (SNAT, f"    snat from {source} to any -> uplink.vip\n"))
    assert with_code(run(tmp_path, text), "FWC222") == []


def test_fwc223_interface_named_like_another_interfaces_ipv6_instance(tmp_path):
    # `uplink` renamed `lan_v6`: its IPv4 instance would be VI_lan_v6, the name of lan's
    # IPv6 instance; keepalived refuses the second ("vrrp instance VI_lan_v6 already
    # defined") and ignores the sync group.
    text = BASE.replace("uplink", "lan_v6")
    d = assert_diagnostic(run(tmp_path, text), "FWC223", E, line_of(text, "interface lan_v6"),
                          "IPv4 VIPs of 'lan_v6'", "IPv6 VIPs of 'lan'", "VI_lan_v6")
    assert d.related[0].span.line == line_of(text, "interface lan ")


def test_fwc223_distinct_instance_names_are_fine(tmp_path):
    text = BASE.replace("uplink", "lan_v4")
    assert with_code(run(tmp_path, text), "FWC223") == []
