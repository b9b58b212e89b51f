"""Rule by rule: what each kind of policy rule becomes in iptables-restore text.

One policy exercises every chain (INPUT/OUTPUT/FORWARD), each NAT kind, IPv6,
logging (with a prefix that is cut and warned about), the automatic HA rules
and the replicated mark bit; a second one switches sync to unicast.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from fwc.backend.lower import LowerOptions, lower
from fwc.backend.lower.failsafe import failsafe
from fwc.backend.render.iptables import render
from fwc.pipeline import analyse

POLICY = """\
network lan      192.0.2.0/24
network lan6     2001:db8:1::/64
network uplink   198.51.100.0/24
host    client   192.0.2.10
host    web      192.0.2.80
host    web6     2001:db8:1::80
host    ntp      198.51.100.123
range   guests   192.0.2.100-192.0.2.103
service ssh      tcp/22
service web      tcp/80,443
service ntp      udp/123
service ping     icmp/echo-request, icmpv6/echo-request
service ftp      tcp/21 helper ftp

cluster edge {
    vrrp { password "s3cret"  auth ah  advert 1s  vrid 51 }
    sync { link sync  mode ftfw  multicast 225.0.0.50 port 3780  mark-bit 20 }
    interface lan    vip 192.0.2.254/24, 2001:db8:1::fe/64
    interface uplink vip 198.51.100.254/24  vrid 52
    interface sync
    member fw1 priority 150 {
        lan    eth0 192.0.2.1/24, 2001:db8:1::1/64
        uplink eth1 198.51.100.1/24
        sync   eth2 203.0.113.1/24
    }
    member fw2 priority 100 {
        lan    lan0 192.0.2.2/24, 2001:db8:1::2/64
        uplink wan0 198.51.100.2/24
        sync   eth9 203.0.113.2/24
    }
}

policy edge {
    accept from client   to firewall service ssh in lan
    accept from firewall to ntp      service ntp
    accept from lan, !guests to any  service web out uplink
    accept from lan6     to web6     service web
    accept from any      to firewall, web service ping
    accept from !client  to uplink.vip service ssh only fw1
    accept from lan      to uplink   service ftp
    reject from any, !lan to any     service ssh log "this prefix is much too long"
    drop   from any      to any      log
}

nat edge {
    nonat from client to 198.18.0.0/15
    nonat from lan to uplink out uplink
    masquerade from guests to any out uplink
    snat from lan to any out uplink -> uplink.vip
    dnat from any to uplink.vip service web in uplink -> web:8080
    dnat from any to 2001:db8:1::fe service web in lan -> web6
    nonat from !client to 198.18.0.0/15
}
"""

COMMENT = '-m comment --comment "rules.fw:{}"'


def line_of(text: str, needle: str) -> int:
    """The 1-based line number of the policy line containing `needle`."""
    for number, line in enumerate(POLICY.splitlines(), 1):
        if needle in line:
            return number
    raise AssertionError(needle)


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory):
    path = tmp_path_factory.mktemp("rules") / "rules.fw"
    path.write_text(POLICY)
    analysis = analyse(path)
    assert analysis.policy is not None
    cluster = analysis.policy.clusters[0]
    options = LowerOptions(str(path.parent))

    def lines(member: str, family: int) -> list[str]:
        node = cluster.member(member)
        assert node is not None
        return render(lower(cluster, node, family, options)).splitlines()

    return analysis, lines


def c(needle: str) -> str:
    return COMMENT.format(line_of(POLICY, needle))


def test_policy_checks_with_only_the_expected_warnings(compiled):
    analysis, _ = compiled
    codes = sorted(d.code for d in analysis.diagnostics)
    # the log prefix takes the kernel's 29 bytes to the last one (with its space): no FWC501
    assert "FWC501" not in codes
    assert not [d for d in analysis.diagnostics if d.is_error]


def test_input_rule_to_firewall_names_every_own_address_and_vip(compiled):
    _, lines = compiled
    rule = c("client   to firewall")
    got = [line for line in lines("fw1", 4) if rule in line]
    targets = sorted(line.split(" -d ")[1].split()[0] for line in got)
    assert targets == sorted(["192.0.2.1/32", "192.0.2.254/32", "198.51.100.1/32",
                              "198.51.100.254/32", "203.0.113.1/32"])
    assert all(line.startswith("-A INPUT -s 192.0.2.10/32 -d ") for line in got)
    assert all("-i eth0 -p tcp -m tcp --dport 22" in line for line in got)
    # fw2 uses its own device and addresses
    fw2 = [line for line in lines("fw2", 4) if rule in line]
    assert any("-d 192.0.2.2/32 -i lan0" in line for line in fw2)
    assert not any("192.0.2.1/32" in line for line in fw2)


def test_output_rule_from_firewall(compiled):
    _, lines = compiled
    got = [line for line in lines("fw1", 4) if c("firewall to ntp") in line]
    assert got and all(line.startswith("-A OUTPUT -s ") for line in got)
    assert "-A OUTPUT -s 198.51.100.254/32 -d 198.51.100.123/32 -p udp -m udp --dport 123 " \
        f"{c('firewall to ntp')} -j fwc-accept" in got


def test_forward_rule_with_negation_uses_a_return_chain(compiled):
    _, lines = compiled
    fw1 = lines("fw1", 4)
    rule = c("lan, !guests")
    assert f"-A FORWARD -s 192.0.2.0/24 -o eth1 -p tcp -m multiport --dports 80,443 {rule} " \
        "-j fwc-p3-FORWARD" in fw1
    assert f"-A fwc-p3-FORWARD -s 192.0.2.100/30 {rule} -j RETURN" in fw1
    assert f"-A fwc-p3-FORWARD {rule} -j fwc-accept" in fw1
    # `lan` contains the node's addresses but does not name the firewall: no INPUT/OUTPUT part
    assert not [line for line in fw1 if rule in line and line.startswith(("-A INPUT",
                                                                          "-A OUTPUT"))]


def test_destination_list_splits_between_input_and_forward(compiled):
    _, lines = compiled
    fw1 = lines("fw1", 4)
    rule = c("to firewall, web")
    assert f"-A FORWARD -d 192.0.2.80/32 -p icmp -m icmp --icmp-type 8 {rule} -j fwc-accept" \
        in fw1
    assert f"-A INPUT -d 192.0.2.254/32 -p icmp -m icmp --icmp-type 8 {rule} -j fwc-accept" \
        in fw1


def test_only_rule_to_a_vip_lands_on_its_member_only(compiled):
    _, lines = compiled
    rule = c("only fw1")
    fw1 = lines("fw1", 4)
    assert f"-A INPUT -d 198.51.100.254/32 -p tcp -m tcp --dport 22 {rule} -j fwc-p6-INPUT" \
        in fw1
    assert f"-A fwc-p6-INPUT -s 192.0.2.10/32 {rule} -j RETURN" in fw1
    # member-scoped accepts do not set the replicated mark
    assert f"-A fwc-p6-INPUT {rule} -j ACCEPT" in fw1
    assert not [line for line in lines("fw2", 4) if rule in line]


def test_drop_any_to_any_lands_in_forward_only(compiled):
    _, lines = compiled
    rule = c("drop   from any")
    got = [line for line in lines("fw1", 4) if rule in line]
    assert got == [
        f"-A FORWARD {rule} -m limit --limit 5/sec --limit-burst 10 -j LOG "
        '--log-prefix "fwc DROP "',
        f"-A FORWARD {rule} -j DROP",
    ]


def test_reject_logs_with_a_29_byte_prefix_and_resets_tcp(compiled):
    analysis, lines = compiled
    rule = c("reject from any")
    fw1 = lines("fw1", 4)
    prefix = '"this prefix is much too long "'
    assert len(prefix) - 2 == 29
    assert f"-A fwc-p8-FORWARD {rule} -m limit --limit 5/sec --limit-burst 10 -j LOG " \
        f"--log-prefix {prefix}" in fw1
    assert f"-A fwc-p8-FORWARD -p tcp {rule} -j REJECT --reject-with tcp-reset" in fw1
    assert f"-A fwc-p8-FORWARD -s 192.0.2.0/24 {rule} -j RETURN" in fw1
    assert not [d for d in analysis.diagnostics if d.code == "FWC501"]  # 28 bytes + space
    # IPv6: nothing is excluded there, so no chain is needed
    fw1v6 = lines("fw1", 6)
    assert f"-A FORWARD -p tcp -m tcp --dport 22 {rule} -j REJECT --reject-with tcp-reset" \
        in fw1v6


def test_stateful_core_comes_right_after_the_automatic_rules(compiled):
    _, lines = compiled
    fw1 = lines("fw1", 4)
    forward = [line for line in fw1 if line.startswith("-A FORWARD")]
    assert forward[:3] == [
        '-A FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -m comment --comment '
        '"fwc auto: established" -j ACCEPT',
        '-A FORWARD -m conntrack --ctstate INVALID -m comment --comment "fwc auto: invalid" '
        '-j DROP',
        '-A FORWARD -p tcp -m tcp ! --tcp-flags FIN,SYN,RST,ACK SYN -m conntrack --ctstate NEW '
        '-m comment --comment "fwc auto: new tcp without syn" -j DROP',
    ]
    assert ":INPUT DROP [0:0]" in fw1 and ":FORWARD DROP [0:0]" in fw1
    assert ":OUTPUT ACCEPT [0:0]" in fw1
    assert not [line for line in fw1 if "REJECT" in line and "auto" in line]


def test_automatic_ha_rules_come_first_vrrp_with_ah_and_sync(compiled):
    _, lines = compiled
    fw2 = [line for line in lines("fw2", 4) if line.startswith("-A INPUT")]
    assert fw2[:6] == [
        '-A INPUT -i lo -m comment --comment "fwc auto: loopback" -j ACCEPT',
        # only the peer's adverts, and only as sent on the link (TTL 255)
        '-A INPUT -s 192.0.2.1/32 -d 224.0.0.18/32 -i lan0 -p 112 -m ttl --ttl-eq 255 '
        '-m comment --comment "fwc auto: vrrp lan0" -j ACCEPT',
        '-A INPUT -s 192.0.2.1/32 -d 224.0.0.18/32 -i lan0 -p 51 -m ttl --ttl-eq 255 '
        '-m comment --comment "fwc auto: vrrp-ah lan0" -j ACCEPT',
        '-A INPUT -s 198.51.100.1/32 -d 224.0.0.18/32 -i wan0 -p 112 -m ttl --ttl-eq 255 '
        '-m comment --comment "fwc auto: vrrp wan0" -j ACCEPT',
        '-A INPUT -s 198.51.100.1/32 -d 224.0.0.18/32 -i wan0 -p 51 -m ttl --ttl-eq 255 '
        '-m comment --comment "fwc auto: vrrp-ah wan0" -j ACCEPT',
        # only the peer's states
        '-A INPUT -s 203.0.113.1/32 -d 225.0.0.50/32 -i eth9 -p udp -m udp --dport 3780 '
        '-m comment --comment "fwc auto: conntrackd sync eth9" -j ACCEPT',
    ]
    output = [line for line in lines("fw2", 4) if line.startswith("-A OUTPUT") and "auto" in line]
    assert '-A OUTPUT -d 225.0.0.50/32 -o eth9 -p udp -m udp --dport 3780 -m comment ' \
        '--comment "fwc auto: conntrackd sync eth9" -j ACCEPT' in output
    assert '-A OUTPUT -d 224.0.0.18/32 -o wan0 -p 51 -m comment --comment ' \
        '"fwc auto: vrrp-ah wan0" -j ACCEPT' in output
    # nothing more open than that: every automatic INPUT accept names a device or a state
    for line in fw2:
        if "fwc auto" in line and line.endswith("-j ACCEPT"):
            assert " -i " in line or "--ctstate" in line


def test_ipv6_vrrp_and_neighbour_discovery(compiled):
    _, lines = compiled
    fw1 = lines("fw1", 6)
    # adverts come from a link-local address (RFC 5798 5.1.2.1) with hop limit 255
    assert '-A INPUT -s fe80::/10 -d ff02::12/128 -i eth0 -p 112 -m hl --hl-eq 255 ' \
        '-m comment --comment "fwc auto: vrrp eth0" -j ACCEPT' in fw1
    assert '-A OUTPUT -d ff02::12/128 -o eth0 -p 112 -m comment --comment ' \
        '"fwc auto: vrrp eth0" -j ACCEPT' in fw1
    # no AH in IPv6 (VRRPv3 has no authentication), no conntrackd sync (IPv4 only)
    assert not [line for line in fw1 if "-p 51" in line or "3780" in line]
    ndp = [line for line in fw1 if "fwc auto: ndp" in line]
    assert len(ndp) == 2 and all("--hl-eq 255" in line for line in ndp)
    invalid = fw1.index('-A INPUT -m conntrack --ctstate INVALID -m comment --comment '
                        '"fwc auto: invalid" -j DROP')
    assert all(fw1.index(line) < invalid for line in ndp)


def test_mld_queries_are_taken_in_and_answered_even_by_the_failsafe(compiled):
    # A snooping switch forwards ff02::12 and the VIP's solicited-node group only to a
    # node that answers its queries (tests/test_mld_netns.py proves it on a bridge).
    _, lines = compiled
    fw1 = lines("fw1", 6)
    query = '-A INPUT -s fe80::/10 -p ipv6-icmp -m icmp6 --icmpv6-type 130 -m hl --hl-eq 1 ' \
        '-m comment --comment "fwc auto: mld query" -j ACCEPT'
    assert query in fw1
    assert [line for line in fw1 if "--icmpv6-type 130" in line] == [query]
    assert query not in lines("fw1", 4)
    cluster = compiled[0].policy.clusters[0]
    node = cluster.member("fw1")
    assert node is not None
    kept = render(failsafe(lower(cluster, node, 6))).splitlines()
    assert query in kept
    # its OUTPUT is DROP whatever the policy's: the answers go out by their own rules
    for icmp_type in (131, 132, 143):
        assert f'-A OUTPUT -p ipv6-icmp -m icmp6 --icmpv6-type {icmp_type} -m hl --hl-eq 1 ' \
            '-m comment --comment "fwc failsafe: mld" -j ACCEPT' in kept


def test_a_filtered_output_lets_mld_reports_out_of_every_device_once(tmp_path):
    # Not only the VRRP devices: the node answers the queries for its addresses'
    # solicited-node groups wherever it has IPv6 (tests/test_mld_netns.py).
    path = tmp_path / "out.fw"
    path.write_text(POLICY.replace("cluster edge {", "cluster edge {\n    default { output drop }"))
    cluster = analyse(path).policy.clusters[0]
    node = cluster.member("fw1")
    assert node is not None
    ruleset = lower(cluster, node, 6, LowerOptions(str(tmp_path)))
    for text in (render(ruleset), render(failsafe(ruleset))):
        mld = [line for line in text.splitlines() if line.startswith("-A OUTPUT")
               and any(f"--icmpv6-type {t} " in line for t in (131, 132, 143))]
        assert [line.split(" -m comment")[0] for line in mld] == [
            f"-A OUTPUT -p ipv6-icmp -m icmp6 --icmpv6-type {t} -m hl --hl-eq 1"
            for t in (131, 132, 143)]


def test_ipv6_forward_and_dnat(compiled):
    _, lines = compiled
    fw1 = lines("fw1", 6)
    assert f"-A FORWARD -s 2001:db8:1::/64 -d 2001:db8:1::80/128 -p tcp -m multiport " \
        f"--dports 80,443 {c('from lan6')} -j fwc-accept" in fw1
    assert f"-A PREROUTING -d 2001:db8:1::fe/128 -i eth0 -p tcp -m multiport --dports 80,443 " \
        f"{c('-> web6')} -j DNAT --to-destination 2001:db8:1::80" in fw1
    # IPv4-only rules leave no trace in ip6tables
    assert not [line for line in fw1 if c("firewall to ntp") in line]


def test_nat_kinds_in_order(compiled):
    _, lines = compiled
    fw1 = lines("fw1", 4)
    post = [line for line in fw1 if line.startswith("-A POSTROUTING")]
    assert post[:4] == [
        f"-A POSTROUTING -s 192.0.2.10/32 -d 198.18.0.0/15 {c('nonat from client')} -j RETURN",
        f"-A POSTROUTING -s 192.0.2.0/24 -d 198.51.100.0/24 -o eth1 {c('nonat from lan')} "
        "-j RETURN",
        f"-A POSTROUTING -s 192.0.2.100/30 -o eth1 {c('masquerade')} -j MASQUERADE",
        f"-A POSTROUTING -s 192.0.2.0/24 -o eth1 {c('snat')} -j SNAT --to-source 198.51.100.254",
    ]
    nat = fw1[fw1.index("*nat"):fw1.index("*filter")]
    pre = [line for line in nat if line.startswith("-A PREROUTING")]
    # a nonat without in/out exempts from dnat too; one with `out` only from snat
    assert pre == [
        f"-A PREROUTING -s 192.0.2.10/32 -d 198.18.0.0/15 {c('nonat from client')} -j RETURN",
        f"-A PREROUTING -d 198.51.100.254/32 -i eth1 -p tcp -m multiport --dports 80,443 "
        f"{c('-> web:8080')} -j DNAT --to-destination 192.0.2.80:8080",
        f"-A PREROUTING -d 198.18.0.0/15 {c('nonat from !client')} -j fwc-n7-PREROUTING",
    ]
    assert fw1.index("*nat") < fw1.index("*filter")
    assert fw1.count("COMMIT") == 3  # raw (the ftp helper), nat, filter


def test_mark_bit_is_set_by_cluster_wide_accepts(compiled):
    _, lines = compiled
    fw1 = lines("fw1", 4)
    assert ":fwc-accept - [0:0]" in fw1
    assert '-A fwc-accept -m comment --comment "fwc auto: replicated mark" -j CONNMARK ' \
        '--set-xmark 0x100000/0x100000' in fw1
    assert fw1.index('-A fwc-accept -m comment --comment "fwc auto: replicated mark" '
                     '-j ACCEPT') > fw1.index('-A fwc-accept -m comment --comment '
                                              '"fwc auto: replicated mark" -j CONNMARK '
                                              '--set-xmark 0x100000/0x100000')
    filter_table = fw1[fw1.index("*filter"):]
    user_accepts = [line for line in filter_table
                    if "rules.fw" in line and line.endswith("-j ACCEPT")]
    assert all(c("only fw1") in line for line in user_accepts)


def test_every_rule_carries_a_comment(compiled):
    _, lines = compiled
    for member in ("fw1", "fw2"):
        for family in (4, 6):
            for line in lines(member, family):
                if line.startswith("-A "):
                    assert '-m comment --comment "' in line, line


UNICAST = POLICY.replace("mode ftfw  multicast 225.0.0.50 port 3780", "unicast port 3790")


def test_unicast_sync_rules_name_the_peer(tmp_path: Path):
    path = tmp_path / "uni.fw"
    path.write_text(UNICAST)
    analysis = analyse(path)
    assert analysis.policy is not None, analysis.diagnostics
    cluster = analysis.policy.clusters[0]
    fw1 = render(lower(cluster, cluster.members[0], 4)).splitlines()
    assert '-A INPUT -s 203.0.113.2/32 -d 203.0.113.1/32 -i eth2 -p udp -m udp --dport 3790 ' \
        '-m comment --comment "fwc auto: conntrackd sync eth2" -j ACCEPT' in fw1
    assert '-A OUTPUT -s 203.0.113.1/32 -d 203.0.113.2/32 -o eth2 -p udp -m udp --dport 3790 ' \
        '-m comment --comment "fwc auto: conntrackd sync eth2" -j ACCEPT' in fw1
    assert not [line for line in fw1 if "225.0.0.50" in line]


def test_conntrack_helpers_are_assigned_explicitly_in_raw(compiled):
    _, lines = compiled
    fw1 = lines("fw1", 4)
    rule = c("to uplink   service ftp")
    assert fw1.index("*raw") < fw1.index("*nat") < fw1.index("*filter")
    assert f"-A PREROUTING -p tcp -m tcp --dport 21 {rule} -j CT --helper ftp" in fw1
    assert f"-A FORWARD -s 192.0.2.0/24 -d 198.51.100.0/24 -p tcp -m tcp --dport 21 {rule} " \
        "-j fwc-accept" in fw1
    # the rule's addresses are IPv4 only: no helper in ip6tables either
    assert "*raw" not in lines("fw1", 6)


def test_nonat_with_exclusions_ends_the_nat_chain_with_accept(compiled):
    _, lines = compiled
    fw1 = lines("fw1", 4)
    rule = c("nonat from !client")
    # `!client` is `any` minus client: in POSTROUTING, where the firewall's own packets
    # pass, its `any` leaves the firewall's addresses to the NAT rules after it (VIPs
    # included), as in `fwc query`; PREROUTING sees them on the destination side only
    firewall = ("192.0.2.1", "198.51.100.1", "203.0.113.1", "192.0.2.254", "198.51.100.254")
    left_out = {"PREROUTING": [],
                "POSTROUTING": [f"-A fwc-n7-POSTROUTING -s {a}/32 {rule} -j RETURN"
                                for a in firewall]}
    for chain in ("PREROUTING", "POSTROUTING"):
        sub = f"fwc-n7-{chain}"
        assert f"-A {chain} -d 198.18.0.0/15 {rule} -j {sub}" in fw1
        # RETURN leaves only the sub-chain; ACCEPT ends the built-in nat chain like
        # RETURN does there, so the NAT rules after the exception are skipped
        assert [line for line in fw1 if line.startswith(f"-A {sub}")] == [
            *left_out[chain],
            f"-A {sub} -s 192.0.2.10/32 {rule} -j RETURN",
            f"-A {sub} {rule} -j ACCEPT",
        ]


def test_in_and_out_drop_the_parts_their_chain_cannot_match(tmp_path: Path):
    """INPUT has no outgoing device, OUTPUT no incoming one: those parts are left out."""
    head, _, _ = POLICY.partition("policy edge {")
    path = tmp_path / "io.fw"
    path.write_text(head + "policy edge {\n"
                    "    accept from client to firewall, web service ssh out uplink\n"
                    "    accept from firewall, lan to ntp service ntp in lan\n"
                    "}\n")
    analysis = analyse(path)
    assert analysis.policy is not None
    cluster = analysis.policy.clusters[0]
    rules = render(lower(cluster, cluster.members[0], 4, LowerOptions(str(tmp_path)))) \
        .splitlines()
    first = [line for line in rules if '"io.fw:' in line and "--dport 22" in line]
    assert first == ['-A FORWARD -s 192.0.2.10/32 -d 192.0.2.80/32 -o eth1 -p tcp -m tcp '
                     f'--dport 22 -m comment --comment "io.fw:{head.count(chr(10)) + 2}" '
                     '-j fwc-accept']
    second = [line for line in rules if '"io.fw:' in line and "--dport 123" in line]
    assert len(second) == 1 and second[0].startswith("-A FORWARD -s 192.0.2.0/24 "
                                                     "-d 198.51.100.123/32 -i eth0 ")
