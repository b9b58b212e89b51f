"""An MLD-snooping switch keeps forwarding the VIP's solicitations to the master (root).

A switch with MLD snooping forwards an IPv6 multicast group (ff02::12, and the
solicited-node group ff02::1:ffXX:XXXX a neighbour's solicitation for an address goes
to) only to the ports whose host answers its queries; the node's first, unsolicited
report holds only until the membership times out. An INPUT chain that drops the
queries (ICMPv6 130, untracked like NDP) takes the master out of its VIP's
solicited-node group: the neighbours can no longer resolve the VIP.

Here a Linux bridge with MLD snooping is the querier, with timers of seconds instead
of minutes; member fw1 of policies/edge.fw loads its compiled rules (each backend's,
as `fwc install` does) and holds the lan VIP 2001:db8:1::fe the way keepalived adds it
(`nodad`). After several membership intervals a client on the bridge must still
resolve the VIP. With `output drop` the answers leave by fwc's own OUTPUT rules, from
every device: a member's own address on a segment without an IPv6 VIP is resolved
through its solicited-node group as well. Namespaces are unique and deleted in finally
blocks (test_realtools `namespace`); every ping is one bounded attempt.
"""

from __future__ import annotations

import ipaddress
import subprocess
import time
from pathlib import Path

import pytest
from conftest import REPO
from test_realtools import in_ns, namespace

from fwc.backend.files import FILES, Reload
from fwc.backend.output import compile_policy
from fwc.install.scripts import in_load_order, ruleset_loader
from fwc.model.vocabulary import Backend
from fwc.pipeline import analyse

pytestmark = pytest.mark.root

VIP = "2001:db8:1::fe"
# The bridge's MLD timers in centiseconds: a query every 3 s, memberships of 8 s.
SNOOPING = ("mcast_snooping", "1", "mcast_querier", "1", "mcast_mld_version", "2",
            "mcast_query_interval", "300", "mcast_query_response_interval", "100",
            "mcast_membership_interval", "800", "mcast_startup_query_count", "1",
            "mcast_last_member_count", "1")


# A filtered OUTPUT, and IPv6 on lan without an IPv6 VIP: fw1's own address is what
# the neighbours resolve there, and its reports must leave by a device without VRRP.
FILTERED_OUTPUT = """
network lan  192.0.2.0/24
network lan6 2001:db8:1::/64
cluster c {
    vrrp { password "s3cret"  vrid 51 }
    sync { link sync }
    default { output drop }
    interface lan vip 192.0.2.254/24
    interface sync
    member fw1 priority 150 {
        lan  eth0 192.0.2.1/24, 2001:db8:1::1/64
        sync eth1 203.0.113.1/24
    }
    member fw2 priority 100 {
        lan  eth0 192.0.2.2/24, 2001:db8:1::2/64
        sync eth1 203.0.113.2/24
    }
}
policy c {
    drop from any to any
}
"""


def _rulesets(path: Path, backend: Backend) -> list[tuple[list[str], str]]:
    """(loader argv, text) of every ruleset member fw1 of PATH gets for BACKEND."""
    policy = analyse(path).policy
    assert policy is not None
    [output] = compile_policy(policy, backend=backend)
    files = {f.path.split("/", 1)[1]: f.content.decode() for f in output.files
             if f.path.startswith("fw1/")}
    return [(ruleset_loader(row), files[row.name])
            for row in in_load_order(f for f in FILES if f.name in files)
            if row.reload in (Reload.IPSETS, Reload.RULES)]


def _ip(*argv: str) -> None:
    subprocess.run(["ip", *argv], check=True, capture_output=True, timeout=30)


def _no_dad(ns: str) -> None:
    # the link-local addresses usable at once: MLD reports and queries come from them
    for key in ("default", "all"):
        in_ns(ns, "sysctl", "-qw", f"net.ipv6.conf.{key}.accept_dad=0")


def _resolves(client: str, address: str) -> bool:
    """One echo request to ADDRESS (fw1's rules may drop it): did the client learn its
    link-layer address, i.e. did the solicitation reach fw1 and the answer come?"""
    in_ns(client, "ip", "-6", "neigh", "flush", "dev", "eth0")
    in_ns(client, "ping", "-6", "-c", "1", "-W", "2", address)
    shown = in_ns(client, "ip", "-6", "neigh", "show", address, "dev", "eth0").stdout
    return "lladdr" in shown


def _still_resolved(rulesets: list[tuple[list[str], str]], vip: str | None,
                    target: str) -> None:
    """fw1 (with VIP, added as keepalived does) behind a snooping bridge: after several
    membership intervals a client must still resolve TARGET."""
    with namespace() as switch, namespace() as fw, namespace() as client:
        for ns in (switch, fw, client):
            _no_dad(ns)
        _ip("-n", switch, "link", "add", "br0", "type", "bridge")
        _ip("-n", switch, "link", "set", "br0", "type", "bridge", *SNOOPING)
        _ip("-n", switch, "link", "set", "br0", "up")
        for index, (ns, address) in enumerate(((fw, "2001:db8:1::1/64"),
                                               (client, "2001:db8:1::10/64"))):
            _ip("link", "add", "eth0", "netns", ns, "type", "veth", "peer", "name",
                f"port{index}", "netns", switch)
            _ip("-n", switch, "link", "set", f"port{index}", "master", "br0", "up")
            _ip("-n", ns, "address", "add", address, "dev", "eth0", "nodad")
            _ip("-n", ns, "link", "set", "eth0", "up")
        for argv, text in rulesets:
            loaded = in_ns(fw, *argv, stdin=text)
            assert loaded.returncode == 0, f"{argv}: {loaded.stderr}"
        if vip is not None:
            _ip("-n", fw, "address", "add", f"{vip}/64", "dev", "eth0", "nodad")
        # the unsolicited reports of the joins hold 8 s; only answered queries renew them
        time.sleep(12)
        groups = in_ns(switch, "bridge", "mdb", "show").stdout
        assert _resolves(client, target), \
            f"the client cannot resolve {target} through the snooping bridge:\n{groups}"
        group = ipaddress.ip_address(target).packed[-3:].hex()
        assert f"port0 grp ff02::1:ff{group[:2]}:{int(group[2:], 16):x}" in groups


@pytest.mark.parametrize("backend", [Backend.IPTABLES, Backend.NFTABLES], ids=str)
def test_the_master_answers_mld_queries_and_keeps_its_vip_reachable(backend):
    _still_resolved(_rulesets(REPO / "policies" / "edge.fw", backend), VIP, VIP)


@pytest.mark.parametrize("backend", [Backend.IPTABLES, Backend.NFTABLES], ids=str)
def test_a_filtered_output_answers_on_a_device_without_vrrp(backend, tmp_path):
    path = tmp_path / "c.fw"
    path.write_text(FILTERED_OUTPUT)
    _still_resolved(_rulesets(path, backend), None, "2001:db8:1::1")
