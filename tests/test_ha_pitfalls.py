"""Pitfalls of keepalived/conntrackd HA pairs (docs/ha-pitfalls.md) that the generated
files must avoid whatever the policy says: each test compiles a policy that would run
into one and reads the file the daemon gets."""

from __future__ import annotations

import ipaddress
import re

from checkkit import BASE, compiled_files, mutate

IgnoreEntry = ipaddress.IPv4Network | ipaddress.IPv6Network


def ignore_list(conntrackd_conf: str) -> list[IgnoreEntry]:
    """The entries of conntrackd.conf's `Address Ignore { }` block."""
    block = re.search(r"Address Ignore \{\n(.*?)\n\s*\}", conntrackd_conf, re.S)
    assert block is not None, conntrackd_conf
    return [ipaddress.ip_network(line.split()[1], strict=False)
            for line in block.group(1).splitlines()]


def test_conntrackd_ignores_no_forwarded_host_inside_the_sync_subnet(tmp_path):
    # P13: conntrackd skips a connection whose original or reply source is in Address
    # Ignore. With the sync link's subnet listed, a sync link numbered 192.0.0.0/16
    # covered the whole LAN 192.0.2.0/24: no LAN connection reached the peer, and
    # every one of them died at the failover, with nothing reported.
    text = mutate(("sync   eth2 203.0.113.1/24", "sync   eth2 192.0.0.1/16"),
                  ("sync   eth2 203.0.113.2/24", "sync   eth2 192.0.0.2/16"))
    files = compiled_files(tmp_path, text)
    lan_host, server = ipaddress.ip_address("192.0.2.10"), ipaddress.ip_address("192.0.2.80")
    for member in ("fw1", "fw2"):
        entries = ignore_list(files[f"{member}/conntrackd.conf"])
        assert not [e for e in entries if lan_host in e or server in e], entries
        # the members' own sync addresses stay ignored: their traffic is local
        assert {ipaddress.ip_network("192.0.0.1/32"),
                ipaddress.ip_network("192.0.0.2/32")} <= set(entries)


def test_conntrackd_ignores_single_addresses_of_the_cluster_only(tmp_path):
    # Whatever the numbering, nothing but loopback, the members' addresses and the VIPs
    # (one address each) is left out of the replication.
    files = compiled_files(tmp_path, BASE)
    own = {ipaddress.ip_network(a) for a in (
        "127.0.0.1", "::1", "192.0.2.1", "192.0.2.2", "2001:db8:1::1", "2001:db8:1::2",
        "198.51.100.1", "198.51.100.2", "203.0.113.1", "203.0.113.2", "192.0.2.254",
        "2001:db8:1::fe", "198.51.100.254")}
    for member in ("fw1", "fw2"):
        assert set(ignore_list(files[f"{member}/conntrackd.conf"])) == own
