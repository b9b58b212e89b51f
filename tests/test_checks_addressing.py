"""Address plan checks (FWC288-FWC292, FWC248's part of a connected subnet): each
triggered, its correct neighbour silent, and the kernel facts the errors rest on
reproduced in a network namespace."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from checkkit import BASE, assert_diagnostic, line_of, mutate, run, with_code

from fwc.diagnostics import Severity

E, W = Severity.ERROR, Severity.WARNING

# A second cluster on edge's lan segment (its own VIP, VRIDs, sync group and addresses):
# the stacked design the cross-cluster checks are about. Clean next to BASE.
INNER = """
cluster inner {
    vrrp { password "s3cret"  advert 1s  vrid 61 }
    sync { link sync  mode ftfw  multicast 225.0.0.51 port 3781 }

    interface lan    vip 192.0.2.253/24
    interface dmz    vip 198.18.1.254/24  vrid 62
    interface sync

    member in1 priority 150 {
        lan    eth0 192.0.2.11/24
        dmz    eth1 198.18.1.1/24
        sync   eth2 198.18.2.1/24
    }
    member in2 priority 100 {
        lan    eth0 192.0.2.12/24
        dmz    eth1 198.18.1.2/24
        sync   eth2 198.18.2.2/24
    }
}
"""
TWO_CLUSTERS = BASE + INNER


def codes(text: str, tmp_path, *wanted: str) -> list[str]:
    return [f"{d.code} {d.message}" for d in run(tmp_path, text).diagnostics
            if d.code in wanted]


def test_two_clusters_on_one_segment_are_clean(tmp_path):
    assert [f"{d.code} {d.message}" for d in run(tmp_path, TWO_CLUSTERS).diagnostics] == []


# -- FWC288: one address in two clusters ------------------------------------------------------

@pytest.mark.parametrize(("old", "new", "phrase"), [
    ("lan    eth0 192.0.2.12/24", "lan    eth0 192.0.2.2/24",
     "192.0.2.2 (member 'in2' on 'lan') of cluster 'inner' is also used by cluster 'edge' "
     "(member 'fw2' on 'lan')"),
    ("interface lan    vip 192.0.2.253/24", "interface lan    vip 192.0.2.254/24",
     "192.0.2.254 (a VIP of 'lan') of cluster 'inner' is also used by cluster 'edge' "
     "(a VIP of 'lan')"),
    ("interface lan    vip 192.0.2.253/24", "interface lan    vip 192.0.2.1/24",
     "(member 'fw1' on 'lan')"),
])
def test_fwc288_address_of_two_clusters(tmp_path, old, new, phrase):
    inner = INNER.replace(old, new)
    text = BASE + inner
    line = len(BASE.splitlines()) + line_of(inner, new.strip())
    d = assert_diagnostic(run(tmp_path, text), "FWC288", E, line, phrase)
    assert d.related and d.related[0].span.line < line_of(text, "cluster inner")


def test_fwc288_leaves_link_local_sync_addresses_alone(tmp_path):
    text = (BASE.replace("203.0.113.1/24", "169.254.0.1/30")
            .replace("203.0.113.2/24", "169.254.0.2/30")
            + INNER.replace("198.18.2.1/24", "169.254.0.1/30")
            .replace("198.18.2.2/24", "169.254.0.2/30"))
    assert codes(text, tmp_path, "FWC288", "FWC205") == []


# -- FWC289 and FWC290: overlapping subnets of one member -------------------------------------

def _uplink_on(fw1: str, fw2: str, vip: str) -> str:
    return mutate(("uplink eth1 198.51.100.1/24", f"uplink eth1 {fw1}"),
                  ("uplink eth1 198.51.100.2/24", f"uplink eth1 {fw2}"),
                  ("vip 198.51.100.254/24", f"vip {vip}"))


def test_fwc289_the_same_subnet_on_two_interfaces(tmp_path):
    text = _uplink_on("192.0.2.101/24", "192.0.2.102/24", "192.0.2.103/24")
    found = with_code(run(tmp_path, text), "FWC289")
    assert [(d.span.line, d.severity) for d in found] == [
        (line_of(text, "192.0.2.101/24"), E), (line_of(text, "192.0.2.102/24"), E)]
    assert "is on 192.0.2.0/24 by both 'lan' and 'uplink'" in found[0].message
    assert found[0].related[0].span.line == line_of(text, "lan    eth0 192.0.2.1/24")
    assert not with_code(run(tmp_path, text), "FWC290")


def test_fwc289_a_member_address_inside_the_other_subnet(tmp_path):
    # lan 192.0.2.0/24 and uplink 192.0.2.0/26: the members' lan addresses are in the /26
    text = _uplink_on("192.0.2.61/26", "192.0.2.62/26", "192.0.2.60/26")
    found = with_code(run(tmp_path, text), "FWC289")
    assert [d.message for d in found] == [
        "192.0.2.2 (member 'fw2' on 'lan') lies in 192.0.2.0/26 of 'uplink': member 'fw1' "
        "sends to it by 'uplink'",
        "192.0.2.1 (member 'fw1' on 'lan') lies in 192.0.2.0/26 of 'uplink': member 'fw2' "
        "sends to it by 'uplink'"]


def test_fwc290_a_subnet_nested_in_an_unused_part(tmp_path):
    # the sync link 192.0.0.0/16 around the lan 192.0.2.0/24; no address of the cluster
    # in the overlap, so it works (a warning)
    text = mutate(("sync   eth2 203.0.113.1/24", "sync   eth2 192.0.0.1/16"),
                  ("sync   eth2 203.0.113.2/24", "sync   eth2 192.0.0.2/16"))
    found = with_code(run(tmp_path, text), "FWC290")
    assert [(d.span.line, d.severity) for d in found] == [
        (line_of(text, "192.0.0.1/16"), W), (line_of(text, "192.0.0.2/16"), W)]
    assert "192.0.2.0/24 of 'lan' lies inside 192.0.0.0/16 of 'sync'" in found[0].message
    assert not with_code(run(tmp_path, text), "FWC289")


def test_ipv6_link_local_addresses_on_every_link_do_not_overlap(tmp_path):
    text = mutate(("uplink eth1 198.51.100.1/24", "uplink eth1 198.51.100.1/24, fe80::1/64"),
                  ("uplink eth1 198.51.100.2/24", "uplink eth1 198.51.100.2/24, fe80::2/64"),
                  ("sync   eth2 203.0.113.1/24", "sync   eth2 203.0.113.1/24, fe80::11/64"),
                  ("sync   eth2 203.0.113.2/24", "sync   eth2 203.0.113.2/24, fe80::12/64"))
    assert [f"{d.code} {d.message}" for d in run(tmp_path, text).diagnostics] == []


# -- FWC291 and FWC292: addresses that are not a host's ----------------------------------------

ROUTE_AT = "    interface sync\n"


def _with(line: str) -> str:
    return mutate((ROUTE_AT, f"{ROUTE_AT}    {line}\n"))


@pytest.mark.parametrize(("text", "where", "phrase"), [
    (mutate(("2001:db8:1::1/64", "ff05::1/64"), ("2001:db8:1::2/64", "ff05::2/64"),
            ("2001:db8:1::fe/64", "ff05::fe/64")), "vip 192.0.2.254/24, ff05::fe/64",
     "VIP ff05::fe/64 of 'lan' is a multicast address"),
    (mutate(("uplink eth1 198.51.100.1/24", "uplink eth1 127.1.0.1/24"),
            ("uplink eth1 198.51.100.2/24", "uplink eth1 127.1.0.2/24"),
            ("vip 198.51.100.254/24", "vip 127.1.0.254/24")), "127.1.0.1/24",
     "address 127.1.0.1/24 of member 'fw1' on 'uplink' is a loopback address"),
    (mutate(("uplink eth1 198.51.100.2/24", "uplink eth1 198.51.100.255/24")),
     "198.51.100.255/24", "is the broadcast address of its subnet"),
    (_with("route default via 198.51.100.255"), "via 198.51.100.255",
     "gateway 198.51.100.255 is the broadcast address of 198.51.100.0/24"),
    (_with("track { ping 198.51.100.255 weight -60 }"), "ping 198.51.100.255",
     "ping target 198.51.100.255 is the broadcast"),
    (_with("route default via 198.51.100.9 probe 198.51.100.255\n"
           "    route default via 198.51.100.8 metric 100"), "probe 198.51.100.255",
     "probe target 198.51.100.255 is the broadcast"),
], ids=["ipv6-multicast-vip", "loopback-member", "broadcast-member", "broadcast-gateway",
        "broadcast-ping", "broadcast-probe"])
def test_fwc291_not_a_unicast_host_address(tmp_path, text, where, phrase):
    found = [d for d in with_code(run(tmp_path, text), "FWC291") if phrase in d.message]
    assert [(d.span.line, d.severity) for d in found] == [(line_of(text, where), E)]


def test_fwc291_multicast_member_addresses_each_reported(tmp_path):
    text = mutate(("2001:db8:1::1/64", "ff05::1/64"), ("2001:db8:1::2/64", "ff05::2/64"),
                  ("2001:db8:1::fe/64", "ff05::fe/64"))
    assert sorted(d.message for d in with_code(run(tmp_path, text), "FWC291")) == [
        "VIP ff05::fe/64 of 'lan' is a multicast address",
        "address ff05::1/64 of member 'fw1' on 'lan' is a multicast address",
        "address ff05::2/64 of member 'fw2' on 'lan' is a multicast address"]


@pytest.mark.parametrize(("text", "where", "phrase"), [
    (mutate(("uplink eth1 198.51.100.2/24", "uplink eth1 198.51.100.0/24")),
     "198.51.100.0/24", "address 198.51.100.0/24 of member 'fw2' on 'uplink' is the network "
     "address of its subnet"),
    (_with("route default via 198.51.100.0"), "via 198.51.100.0",
     "gateway 198.51.100.0 is the network address of 198.51.100.0/24"),
    (_with("track { ping 198.51.100.0 weight -60 }"), "ping 198.51.100.0",
     "ping target 198.51.100.0 is the network address"),
], ids=["member", "gateway", "ping"])
def test_fwc292_network_address_as_a_host(tmp_path, text, where, phrase):
    d = assert_diagnostic(run(tmp_path, text), "FWC292", W, line_of(text, where), phrase)
    assert d.hint
    assert not with_code(run(tmp_path, text), "FWC291")


@pytest.mark.parametrize("line", [
    "route default via 198.51.100.9",
    "track { ping 198.51.100.9 weight -60 }",
    "route 2001:db8:99::/48 via 2001:db8:1::99",
])
def test_a_neighbour_s_host_address_passes(tmp_path, line):
    assert codes(_with(line), tmp_path, "FWC291", "FWC292") == []


def test_point_to_point_subnets_have_no_network_or_broadcast_address(tmp_path):
    text = mutate(("uplink eth1 198.51.100.1/24", "uplink eth1 198.51.100.0/31"),
                  ("uplink eth1 198.51.100.2/24", "uplink eth1 198.51.100.1/31"),
                  ("interface uplink vip 198.51.100.254/24  vrid 52", "interface uplink"),
                  ("-> uplink.vip", "-> 192.0.2.254"),
                  ("to uplink.vip service tcp/80 in uplink", "to 198.51.100.0 service tcp/80 "
                                                             "in uplink"))
    assert codes(text, tmp_path, "FWC291", "FWC292") == []


# -- FWC248: a route to part of a connected subnet --------------------------------------------

def test_fwc248_route_to_part_of_a_connected_subnet(tmp_path):
    text = _with("route 192.0.2.128/25 via 198.51.100.9")
    assert_diagnostic(run(tmp_path, text), "FWC248", W, line_of(text, "192.0.2.128/25"),
                      "route to 192.0.2.128/25, inside 192.0.2.0/24, which member 'fw1' is "
                      "directly on")


def test_fwc248_leaves_a_summary_route_alone(tmp_path):
    assert codes(_with("route 192.0.0.0/16 via 198.51.100.9"), tmp_path, "FWC248") == []


# -- the IPv6 Subnet-Router anycast address: the members' own ------------------------------

@pytest.mark.parametrize(("line", "code", "phrase"), [
    ("route 2001:db8:99::/48 via 2001:db8:1::", "FWC245",
     "gateway 2001:db8:1:: is the subnet-router anycast address of 2001:db8:1::/64"),
    ("track { ping 2001:db8:1:: weight -60 }", "FWC255",
     "ping target 2001:db8:1:: is the firewall's own address"),
    ("route default via 2001:db8:1::99 probe 2001:db8:1::\n"
     "    route default via 2001:db8:1::98 metric 100", "FWC276",
     "probe target 2001:db8:1:: is an address of the cluster"),
], ids=["gateway", "ping", "probe"])
def test_the_subnet_router_anycast_address_is_the_firewall_s_own(tmp_path, line, code,
                                                                   phrase):
    text = _with(line)
    where = line.split("\n")[0].strip()
    assert_diagnostic(run(tmp_path, text), code, E, line_of(text, where), phrase)


def test_a_router_s_own_ipv6_address_is_a_gateway(tmp_path):
    assert codes(_with("route 2001:db8:99::/48 via 2001:db8:1::99"), tmp_path, "FWC245") == []


# -- the kernel facts -------------------------------------------------------------------------

@contextmanager
def _namespace() -> Iterator[tuple[str, str]]:
    """A namespace with two veth devices, lan and uplink (their peers stay inside)."""
    name = f"fwcaddr{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
    try:
        for device, peer in (("lan", "lanp"), ("uplink", "uplinkp")):
            _ip(name, "link", "add", device, "type", "veth", "peer", "name", peer)
            for up in (device, peer):
                _ip(name, "link", "set", up, "up")
        yield name, "lan"
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


def _ip(ns: str, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", "-n", ns, *argv], check=check, capture_output=True,
                          text=True, timeout=30)


@pytest.mark.root
def test_the_kernel_refuses_or_misroutes_what_the_errors_name(needs_root):
    with _namespace() as (ns, _):
        # FWC291: IPv6 multicast and loopback addresses are refused, and so is a route
        # via a subnet's broadcast address
        assert _ip(ns, "-6", "addr", "add", "ff05::1/64", "dev", "lan",
                   check=False).returncode != 0
        assert _ip(ns, "-6", "addr", "add", "::1/64", "dev", "lan", check=False).returncode != 0
        _ip(ns, "addr", "add", "198.51.100.1/24", "dev", "uplink")
        refused = _ip(ns, "route", "add", "198.18.1.0/24", "via", "198.51.100.255", check=False)
        assert refused.returncode != 0 and "invalid gateway" in refused.stderr
        # FWC292: the network address is taken as an ordinary neighbour (a warning)
        _ip(ns, "route", "add", "198.18.2.0/24", "via", "198.51.100.0")
        # FWC289: with lan 192.0.2.0/24 and uplink 192.0.2.0/26, lan's 192.0.2.2 (the
        # peer) is sent by uplink
        _ip(ns, "addr", "add", "192.0.2.1/24", "dev", "lan")
        _ip(ns, "addr", "add", "192.0.2.61/26", "dev", "uplink")
        assert " dev uplink " in _ip(ns, "route", "get", "192.0.2.2").stdout
        assert " dev lan " in _ip(ns, "route", "get", "192.0.2.100").stdout
        # FWC245/FWC255/FWC276: a forwarding node holds its IPv6 subnets' Subnet-Router
        # anycast address itself
        subprocess.run(["ip", "netns", "exec", ns, "sysctl", "-qw",
                        "net.ipv6.conf.all.forwarding=1"], check=True, capture_output=True)
        _ip(ns, "-6", "addr", "add", "2001:db8:ff::1/64", "dev", "lan", "nodad")
        assert "anycast 2001:db8:ff:: dev lan" in _ip(ns, "-6", "route", "show", "table",
                                                       "local").stdout
