"""A translating NAT rule leaves the firewall's own traffic alone unless it names the firewall.

`any` does not name the firewall (docs/language.md; fwc.model.semantics), and `fwc query`
and `expect` read NAT rules so.
The compiled rules did not: `dnat from lan to any service ssh in lan -> web` sent the
admin's ssh to the firewall's own addresses to `web`, while `fwc query` said the
firewall accepted it; `snat from any to any out uplink -> uplink.vip` put the VIP on a
backup's own packets (helper review). The compiled nat chains, walked as the kernel walks
them (fwc.analysis.evaluate), now say what the query says.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

from conftest import REPO

from fwc.analysis.evaluate import Evaluator, Packet
from fwc.backend.lower import lower, options_for
from fwc.model.vocabulary import Table, Target
from fwc.pipeline import analyse

TCP = 6
DNAT_LINE = "    dnat from any to uplink.vip service web in uplink -> web\n"


def _policy(tmp_path: Path, nat: str) -> Path:
    text = (REPO / "policies" / "edge.fw").read_text(encoding="utf-8")
    assert DNAT_LINE in text
    path = tmp_path / "edge.fw"
    path.write_text(text.replace(DNAT_LINE, DNAT_LINE + nat), encoding="utf-8")
    return path


def _nat(path: Path, member: str = "fw1") -> Evaluator:
    analysis = analyse(path, run_checks=False)
    policy = analysis.policy
    assert policy is not None, analysis.diagnostics
    (cluster,) = policy.clusters
    ruleset = lower(cluster, cluster.member(member), 4, options_for(policy))
    return Evaluator(ruleset, table=Table.NAT)


def _ip(text: str) -> int:
    return int(ipaddress.ip_address(text))


def test_a_dnat_to_any_leaves_the_firewalls_own_addresses_alone(tmp_path):
    path = _policy(tmp_path, "    dnat from lan to any service ssh in lan -> web\n")
    nat = _nat(path)

    def to(destination: str) -> str:
        packet = Packet(4, _ip("192.0.2.10"), _ip(destination), TCP, dport=22,
                        in_device="eth0")
        return nat.decide(packet, "PREROUTING").verdict

    # the member's own addresses and every VIP: the firewall's ssh stays the firewall's
    for firewall in ("192.0.2.1", "198.51.100.1", "203.0.113.1", "192.0.2.254",
                     "198.51.100.254"):
        assert to(firewall) != Target.DNAT, firewall
    assert to("198.18.1.1") == Target.DNAT  # everything else is translated
    # and the analysis agrees: edge.fw's `expect allow client -> firewall service ssh`
    # holds (FWC601 would say where the ssh went)
    assert [d.code for d in analyse(path).diagnostics if d.code == "FWC601"] == []


def test_a_rule_that_names_the_firewall_still_translates_it(tmp_path):
    path = _policy(tmp_path, "    dnat from lan to lan.vip service ssh in lan -> web\n")
    packet = Packet(4, _ip("192.0.2.10"), _ip("192.0.2.254"), TCP, dport=22, in_device="eth0")
    assert _nat(path).decide(packet, "PREROUTING").verdict == Target.DNAT
    # which the analysis reads the same way: the expectation of ssh to the firewall fails
    assert [d.code for d in analyse(path).diagnostics if d.code == "FWC601"] == ["FWC601"]


def test_a_snat_from_any_leaves_the_members_own_packets_alone(tmp_path):
    path = _policy(tmp_path, "    snat from any to any out uplink -> uplink.vip\n")
    for member, own in (("fw1", "198.51.100.1"), ("fw2", "198.51.100.2")):
        nat = _nat(path, member)

        def sent_from(source: str, nat: Evaluator = nat) -> str:
            packet = Packet(4, _ip(source), _ip("198.18.1.1"), TCP, dport=443,
                            in_device=None, out_device="eth1")
            return nat.decide(packet, "POSTROUTING").verdict

        # (a backup's own packets with the VIP it does not hold: answered to the master)
        assert sent_from(own) != Target.SNAT
        # (its sync address: edge.fw's own `snat from lan` comes first and, naming a
        # network, still translates the member's lan address)
        assert sent_from("203.0.113.1" if member == "fw1" else "203.0.113.2") != Target.SNAT
        assert sent_from("198.18.7.7") == Target.SNAT  # forwarded traffic is translated
