"""The gateway drill (issue 14): the master's tracked gateway stops answering it.

A policy variant of edge with a default route via an uplink gateway and a weighted
`track { ping GATEWAY }`: the lab's uplink test host holds the gateway, drops the
master's pings to it with its own iptables, and the drill checks the takeover, the
live connection, and the preemption behaviour once the gateway answers again.
"""

from __future__ import annotations

import ipaddress
import os
import sys
from pathlib import Path

import pytest

from fwc.lab.adapter import load_source
from fwc.lab.netns import lab_namespaces, teardown
from fwc.lab.report import render_text, to_dict
from fwc.lab.results import GatewayResult, LabReport
from fwc.lab.runner import LabOptions, _judge, run_lab
from fwc.lab.topology import plan, tracked_gateways
from tests.test_lab import fast_variant

GATEWAY = "198.51.100.200"


def gateway_variant(tmp: Path, preempt: bool = True) -> Path:
    """edge at 100 ms adverts, a default route via GATEWAY and a ping track of it."""
    path = fast_variant("edge", tmp)
    text = path.read_text(encoding="utf-8")
    vrrp = "vrrp { advert 100ms  version 3 "
    extra = "preempt-delay 5s " if preempt else "preempt off "
    text = text.replace(vrrp, vrrp + extra, 1)
    weight = " weight -60" if preempt else ""  # preempt off: FAULT, not a weight (FWC251)
    text = text.replace(
        "    interface lan ",
        f"    route default via {GATEWAY}\n"
        f"    track {{ ping {GATEWAY}{weight} }}\n\n    interface lan ", 1)
    path.write_text(text, encoding="utf-8")
    return path


def test_the_uplink_host_holds_the_tracked_gateway(tmp_path: Path) -> None:
    source = load_source(gateway_variant(tmp_path))
    cluster = source.cluster
    ((address, track),) = tracked_gateways(cluster, plan(source.policy, cluster, "fwcg").remap)
    assert str(address) == GATEWAY and track.weight == -60
    lab_plan = plan(source.policy, cluster, "fwcg")
    host = lab_plan.router_host(ipaddress.ip_address(GATEWAY))
    assert host is not None and host.segment == "uplink"
    assert ipaddress.ip_interface(f"{GATEWAY}/24") in host.addresses
    conf = source.files["fw1"]["keepalived.conf"]
    assert f"/usr/bin/ping -c 1 -W 1 -n -I eth1 {GATEWAY}" in conf
    assert "fwc_ping_1 weight -60" in conf


def test_a_gateway_drill_that_did_not_move_back_fails_the_lab() -> None:
    report = LabReport("edge", "p", "/tmp/x")
    report.gateway.append(GatewayResult(
        "gateway-routed-100ms", GATEWAY, -60, "fw1", "fw2", connected=True,
        takeover_s=2.1, survived_takeover=True, preempt=True, preempt_delay_s=5.0,
        returned_s=None, survived_return=True, ok=False, notes=["fw1 did not take the VIPs back"]))
    _judge(report)
    assert not report.ok
    assert "gateway drill gateway-routed-100ms" in report.failures[0]
    assert "preempt delay (5 s)" in report.failures[0]
    assert "did not take the VIPs back" in render_text(report)
    assert to_dict(report)["gateway"][0]["returned_s"] is None


@pytest.mark.lab
@pytest.mark.parametrize("preempt", [True, False], ids=["preempt-delay", "preempt-off"])
def test_lab_gateway_drill(preempt: bool, tmp_path: Path) -> None:
    """The master's gateway goes silent: the backup takes the VIPs, the connection
    survives; when it answers again the VIPs go back after preempt_delay (preempt on)
    or stay (preempt off)."""
    source = load_source(gateway_variant(tmp_path, preempt))
    prefix = f"fwc{os.getpid()}g{int(preempt)}"
    try:
        report = run_lab(source, LabOptions(quick=True, prefix=prefix,
                                            logdir=tmp_path / "logs"))
        print(render_text(report), file=sys.stderr)
        assert report.ok, (report.error, report.failures)
        (gw,) = report.gateway
        assert gw.ok and {gw.master, gw.backup} == {"fw1", "fw2"}, gw
        assert gw.survived_takeover and gw.survived_return
        # a ping every second (up to 2 s each), fall 2: seconds, more on a loaded box
        assert gw.takeover_s is not None and gw.takeover_s < 22.0, gw
        if preempt:
            assert gw.returned_s is not None and gw.returned_s >= 5.0, gw
            assert gw.stayed is None
        else:
            assert gw.stayed is True and gw.returned_s is None, gw
    finally:
        teardown(prefix)
    assert lab_namespaces(prefix) == []


def test_rto_min_argument() -> None:
    import argparse

    from fwc.lab.arguments import rto_min
    assert rto_min("50ms") == 50
    for bad in ("0ms", "201ms", "0.05s", "50"):
        with pytest.raises(argparse.ArgumentTypeError):
            rto_min(bad)


def test_the_return_is_watched_past_a_master_down_interval(tmp_path: Path) -> None:
    # Once the gateway answers again the old master's track needs `rise` good runs;
    # then a keepalived that preempts (with `preempt off` it must not) takes the VIPs
    # when its master-down timer runs out: three adverts plus a skew of up to one
    # ((256 - priority) / 256 adverts). The window was a fixed 10 s beyond the runs,
    # shorter than that from `advert 4s` on: a node that took the VIPs back passed.
    from dataclasses import replace

    from fwc.lab.drills import return_window_s

    source = load_source(gateway_variant(tmp_path, preempt=False))
    cluster = source.cluster
    ((_, track),) = tracked_gateways(cluster, plan(source.policy, cluster, "fwcg").remap)
    for advert_s in (1, 4, 10):
        slow = replace(cluster, vrrp=replace(cluster.vrrp, advert_ms=advert_s * 1000,
                                             version=2))
        lab_plan = plan(source.policy, slow, "fwcg")
        longest = track.interval_s * track.rise + 3 * advert_s + advert_s * 255 / 256
        assert return_window_s(track, lab_plan) > longest + 1.0, advert_s
