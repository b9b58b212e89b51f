"""Expectation probes cover every port of an expectation, bounded (issue 11).

Before, the lab probed only the first port of each service match: an
expectation `service web` (tcp/80,443) never tried 443.
"""

from __future__ import annotations

from conftest import REPO

from fwc.lab.results import ProbeResult
from fwc.lab.topology import MAX_PROBED_PORTS, probe_ports, probes_of
from fwc.model import PortRange
from fwc.pipeline import analyse


def test_every_port_up_to_the_cap_is_probed() -> None:
    assert probe_ports([PortRange(80, 80), PortRange(443, 443)]) == (80, 443)
    assert probe_ports([PortRange(1, 16)]) == tuple(range(1, 17))
    assert probe_ports([PortRange(53, 53), PortRange(53, 53)]) == (53,)
    assert probe_ports(()) == ()


def test_a_wide_range_is_sampled_with_its_ends() -> None:
    ports = probe_ports([PortRange(1024, 65535)])
    assert len(ports) == MAX_PROBED_PORTS
    assert ports == tuple(sorted(set(ports)))
    assert ports[0] == 1024 and ports[-1] == 65535
    assert all(1024 <= p <= 65535 for p in ports)
    # spread out, not bunched at one end
    assert max(b - a for a, b in zip(ports, ports[1:], strict=False)) < 2 * (64511 // 15)
    assert probe_ports([PortRange(1024, 65535)]) == ports  # the same every run


def test_every_range_end_is_probed_when_they_fit() -> None:
    ranges = [PortRange(1, 1), PortRange(5000, 5100), PortRange(6000, 6003)]
    ports = probe_ports(ranges)
    assert len(ports) == MAX_PROBED_PORTS
    assert {1, 5000, 5100, 6000, 6003} <= set(ports)
    assert all(any(r.low <= p <= r.high for r in ranges) for p in ports)


def test_more_range_ends_than_the_cap_keep_the_first_and_the_last() -> None:
    ranges = [PortRange(i * 100, i * 100 + 5) for i in range(1, 12)]
    ports = probe_ports(ranges)
    assert len(ports) == MAX_PROBED_PORTS == len(set(ports))
    assert ports[0] == 100 and ports[-1] == 1105
    ends = {end for r in ranges for end in (r.low, r.high)}
    assert set(ports) <= ends
    assert probe_ports(ranges, cap=4) == (100, 405, 800, 1105)  # ends 0, 7, 14, 21 of 22


def test_the_plan_probes_each_port_of_a_multi_port_service() -> None:
    analysis = analyse(REPO / "policies" / "dmz.fw", run_checks=False)
    assert analysis.policy is not None
    probes, _ = probes_of(analysis.policy.clusters[0])
    web = [p for p in probes if p.text == "allow outsider -> web service web in uplink"]
    assert sorted(p.port for p in web) == [80, 443]  # service web is tcp/80,443
    assert {(p.proto, p.verdict, p.in_segment) for p in web} == {("tcp", "allow", "uplink")}


def test_a_result_names_its_port() -> None:
    res = ProbeResult("allow a -> b service web", "allow", "master", "fw1", "a", "b",
                      "tcp", 443, "allowed", "connected", True)
    assert res.label == "allow a -> b service web (tcp/443)"
    icmp = ProbeResult("allow a -> b service ping", "allow", "master", "fw1", "a", "b",
                       "icmp", None, "allowed", "echo reply", True)
    assert icmp.label == "allow a -> b service ping"
