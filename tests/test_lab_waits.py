"""The lab's waits follow the policy's VRRP timers (fwc.lab.waits).

Every wait that depends on what keepalived does (a takeover after a crash, an
election, a returning master, a tracked gateway's takeover, the echo after a
takeover, the control run's silence, the drill connection's lifetime) was a fixed
time measured at `advert 1s`: a correct policy with `advert 5s` or slower failed
`fwc lab` ("never took over"), and its control run judged a connection dead before
its next TCP retransmission could have come. Each test here runs the wait's own code
on a fake clock against a keepalived that behaves as its timers say (RFC 3768/5798:
master-down interval = 3 adverts + (256 - priority) / 256 of one), with the slack a
loaded machine needs, and checks that the floors keep the `advert 1s` lab as it was.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO

import fwc.lab.drills as drills
import fwc.lab.reboot as reboot
import fwc.lab.results as results
import fwc.lab.running as running
from fwc.diagnostics import Span
from fwc.lab import waits
from fwc.lab.adapter import load_source
from fwc.lab.report import render_text, to_dict
from fwc.lab.results import LabReport, RebootResult
from fwc.lab.topology import LabPlan, plan
from fwc.model import Track

SLOW = (5.0, 10.0)  # advert intervals (s) a correct policy may have
LOAD_S = 2.0  # how late keepalived may act on a loaded 2-core machine
VIPS = {"192.0.2.254", "2001:db8:1::fe", "198.51.100.254"}


def edge_plan(advert_s: float) -> LabPlan:
    """The lab plan of policies/edge.fw (preempt, preempt delay 10 s) at ADVERT_S."""
    source = load_source(REPO / "policies" / "edge.fw")
    cluster = source.cluster
    slow = replace(cluster, vrrp=replace(cluster.vrrp, advert_ms=round(advert_s * 1000)))
    return plan(source.policy, slow, "fwcw")


def master_down_s(lab_plan: LabPlan, member: str) -> float:
    """keepalived's master-down interval for MEMBER: 3 adverts and its skew."""
    skew = (256 - lab_plan.priority(member)) / 256 * lab_plan.advert
    return 3 * lab_plan.advert + skew


class Clock:
    """time.monotonic and time.sleep of a wait that takes no real time."""

    def __init__(self) -> None:
        self.now = 0.0

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    for module in (results, running, reboot, drills):
        monkeypatch.setattr(module, "time", fake)
    return fake


class Member:
    """A member that holds every VIP from AT seconds of CLOCK on (None: never)."""

    def __init__(self, name: str, clock: Clock, at: float | None) -> None:
        self.name, self.clock, self.at = name, clock, at

    def vips_held(self) -> set[str]:
        return set(VIPS) if self.at is not None and self.clock.now >= self.at else set()

    def crash(self) -> float:
        return self.clock.now

    def ct(self, args: list[str], check: bool = False) -> Any:
        class Done:
            stdout = "sport=1 dport=2\n"
        return Done()


class FakeLab:
    def __init__(self, lab_plan: LabPlan, nodes: list[Member]) -> None:
        self.plan = lab_plan
        self.nodes = nodes
        self.vip_set = set(VIPS)
        self.advert_label = f"{lab_plan.advert:g}s"
        self.logdir = Path("/nonexistent")

    def expected_master(self) -> str | None:
        return running.Lab.expected_master(self)  # type: ignore[arg-type]


@pytest.mark.parametrize("advert_s", SLOW)
def test_a_takeover_after_a_crash_is_awaited_past_the_master_down_interval(
        clock: Clock, advert_s: float) -> None:
    # The backup (fw2, priority 100) takes the VIPs a master-down interval after the
    # last advert it heard: up to that long after the crash, plus a loaded machine.
    # The wait was 20 s: at `advert 5s` (18.05 s) a late keepalived was "never took over".
    lab_plan = edge_plan(advert_s)
    at = master_down_s(lab_plan, "fw2") + LOAD_S
    crashed, backup = Member("fw1", clock, 0.0), Member("fw2", clock, at)
    _, took, holder = drills.crash_until_taken_over(FakeLab(lab_plan, [crashed, backup]),
                                                    crashed, [backup])  # type: ignore[arg-type]
    assert took is not None and took >= at, took
    assert holder == [backup]


@pytest.mark.parametrize("advert_s", SLOW)
def test_the_election_waits_out_the_preempt_delay_and_a_master_down_interval(
        clock: Clock, advert_s: float) -> None:
    # fw1 (preferred) returns: it waits its preempt delay, then a master-down interval.
    lab_plan = edge_plan(advert_s)
    at = lab_plan.preempt_delay + master_down_s(lab_plan, "fw1") + LOAD_S
    fw1, fw2 = Member("fw1", clock, at), Member("fw2", clock, None)
    master, took = running.Lab.wait_master(FakeLab(lab_plan, [fw1, fw2]))  # type: ignore[arg-type]
    assert master is fw1 and took >= at


@pytest.mark.parametrize("advert_s", SLOW)
def test_a_rebooted_master_is_watched_until_it_takes_the_vips_back(
        clock: Clock, advert_s: float) -> None:
    lab_plan = edge_plan(advert_s)
    at = lab_plan.preempt_delay + master_down_s(lab_plan, "fw1") + LOAD_S
    res = RebootResult("reboot-snat", "snat", "5s", "fw1", "fw2", lab_plan.preempt_delay,
                       connected=True)
    fw1, fw2 = Member("fw1", clock, at), Member("fw2", clock, 0.0)
    reboot._rejoin(FakeLab(lab_plan, [fw1, fw2]), res, fw1, fw2,  # type: ignore[arg-type]
                   lambda lines: True, clock.monotonic())
    assert res.failback_s is not None and res.failback_s >= at, res


def retransmissions(rto0: float = 0.2, until: float = 300.0) -> list[float]:
    """When Linux retransmits an unacknowledged segment: the RTO doubles each time."""
    times, rto, t = [], rto0, 0.0
    while t < until:
        t += rto
        times.append(t)
        rto *= 2
    return times


@pytest.mark.parametrize("advert_s", (1.0, *SLOW))
def test_the_echo_and_control_windows_cover_the_next_retransmission(advert_s: float) -> None:
    # The drill's client last got through at the crash; the VIPs are back after an
    # outage; its next retransmission (exponential backoff) is the first packet that
    # can echo. A window shorter than that loses a surviving connection, and the
    # control run (10 s) counted a connection dead that had not yet had its chance.
    lab_plan = edge_plan(advert_s)
    worst = 0.0
    for outage in (o / 10 for o in range(10, round(10 * (master_down_s(lab_plan, "fw2")
                                                         + LOAD_S)) + 1)):
        after = min(t for t in retransmissions() if t > outage) - outage
        worst = max(worst, after)
    assert drills.after_takeover_s(lab_plan, "survive") > worst
    assert drills.after_takeover_s(lab_plan, "die") > worst


def ping_track(weight: int | None) -> Track:
    """`track { ping 198.51.100.200 }`: interval 1 s, fall 2, rise 2 (branch's)."""
    return Track(kind="ping", target="198.51.100.200", weight=weight, interval_s=1, fall=2,
                 rise=2, span=Span("x.fw", 1, 1, 1, 1))


@pytest.mark.parametrize("advert_s", SLOW)
def test_the_gateway_takeover_is_awaited_past_the_master_down_interval(advert_s: float) -> None:
    # A weighted track lowers the master's priority; the backup takes the VIPs when its
    # master-down timer runs out (it ignores the lower priority's adverts).
    lab_plan = edge_plan(advert_s)
    track = ping_track(weight=-60)
    checks = track.interval_s * (track.fall + 1) + (track.interval_s + 1) * track.fall
    assert drills.detect_s(track, lab_plan) > checks + master_down_s(lab_plan, "fw2") + LOAD_S


@pytest.mark.parametrize("advert_s", SLOW)
def test_the_drill_connection_outlives_the_drill(advert_s: float) -> None:
    # The stream helper ends itself after --duration: a drill whose waits were
    # lengthened must not outlive its connection (the failback then read as a loss).
    lab_plan = edge_plan(advert_s)
    connect, after_failback = 6.0, waits.ECHO_FLOOR_S
    drill = (connect + waits.takeover_s(lab_plan) + waits.echo_s(lab_plan)
             + waits.election_s(lab_plan) + after_failback)
    assert waits.stream_s(lab_plan) > drill
    assert waits.reachable_s(lab_plan) > waits.takeover_s(lab_plan)


@pytest.mark.parametrize("advert_s", (0.05, 0.1, 1.0))
def test_fast_adverts_wait_as_long_as_before(advert_s: float) -> None:
    # The floors are the values measured on a loaded machine: not one wait is longer
    # (or shorter) than before for the default advert and the sub-second ones.
    lab_plan = edge_plan(advert_s)
    assert waits.takeover_s(lab_plan) == 20.0
    assert waits.election_s(lab_plan) == 20.0 + lab_plan.preempt_delay
    assert drills.after_takeover_s(lab_plan, "survive") == 15.0
    assert drills.after_takeover_s(lab_plan, "die") == 10.0
    track = ping_track(weight=None)
    assert drills.detect_s(track, lab_plan) == 1 * 3 + 2 * 2 + 15.0
    assert waits.reachable_s(lab_plan) == 40.0
    assert waits.stream_s(lab_plan) == 90.0
    assert not waits.lengthened(lab_plan)


def test_the_report_states_the_advert_when_a_wait_was_lengthened() -> None:
    lab_plan = edge_plan(5.0)
    assert waits.lengthened(lab_plan)
    report = LabReport("edge", "fwc1", "/tmp/x")
    report.waits = waits.describe(lab_plan, "5s")
    text = render_text(report)
    assert "  waits: VRRP advert 5s (master-down interval up to 20 s): waits lengthened " \
           "to takeover 26 s, election 36 s, echo 26 s, control 26 s" in text, text
    assert to_dict(report)["waits"] == report.waits
    assert "waits:" not in render_text(LabReport("edge", "fwc1", "/tmp/x"))


def test_the_waits_follow_an_installed_advert_profile() -> None:
    # --runs installs variants of the policy at other adverts: the waits must follow
    # the variant on the members, not the policy's interval.
    lab_plan = edge_plan(1.0)
    slow = edge_plan(10.0)

    class Installing:
        plan = lab_plan
        policy_plan = lab_plan
        advert_label = "1s"

        def install_members(self, variant: Any) -> None:
            pass

    class Variant:
        cluster = slow.cluster

    lab = Installing()
    running.Lab.install_variant(lab, Variant())  # type: ignore[arg-type]
    assert lab.plan.advert == 10.0 and lab.advert_label == "10s"
    assert waits.takeover_s(lab.plan) == waits.takeover_s(slow)
    running.Lab.install_variant(lab, None)  # type: ignore[arg-type]
    assert lab.plan is lab_plan and lab.advert_label == "1s"
