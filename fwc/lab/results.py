"""What the lab measures and reports, and the one polling helper its drills share.

Kept apart from the drills and the runner so that both import it and neither
imports the other for a type: the lab's modules point one way (runner ->
drills/reboot -> running -> results), with no cycle to hide under TYPE_CHECKING.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, field
from typing import Any

from fwc.lab.topology import IPAddress
from fwc.model.records import dataclass

POLL = 0.05  # VIP polling period (a takeover is timed to within one poll)


def wait_for(pred: Callable[[], bool], timeout: float, period: float = POLL) -> float | None:
    """Poll PRED until true; seconds taken, or None after TIMEOUT."""
    start = time.monotonic()
    for _ in range(int(timeout / period) + 2):
        if pred():
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            break
        time.sleep(period)
    return None


@dataclass
class ProbeResult:
    expectation: str
    verdict: str
    phase: str
    via: str
    src: str
    dst: str
    proto: str
    port: int | None
    kernel: str  # "allowed" | "blocked" | "skipped"
    how: str
    agrees: bool | None
    # Active-active: the member whose conntrack table holds the allowed probe, and the
    # one fwc's analysis says handles it (fwc.analysis.handling); they must agree.
    handled_by: str | None = None
    handler_expected: str | None = None

    @property
    def label(self) -> str:
        """The expectation and the port probed: one expectation probes several ports."""
        return self.expectation if self.port is None else \
            f"{self.expectation} ({self.proto}/{self.port})"


@dataclass
class FailoverResult:
    label: str
    mode: str  # "routed" | "snat"
    advert: str
    sync: bool
    expect: str  # "survive" | "die"
    master: str = ""
    backup: str = ""
    connected: bool = False
    flow_via_master: int = 0
    # The master's kernel entry of the connection had its source translated (None:
    # no entry read). Routed: must be False (the exemption held); SNAT: True.
    translated: bool | None = None
    external_cache_before: dict[str, int] = field(default_factory=dict)
    external_flows_before: int = 0
    takeover_s: float | None = None
    failover_gap_s: float | None = None
    survived_failover: bool = False
    backup_kernel_flows_after: int = 0
    committed_entries: int | None = None
    notify_after_failover: list[str] = field(default_factory=list)
    failback_s: float | None = None
    failback_gap_s: float | None = None
    survived_failback: bool | None = None
    failback_committed: int | None = None
    longest_gap_s: float | None = None
    echoes: int = 0
    sent: int = 0
    order_errors: int = 0
    end: str = ""
    ok: bool = False
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class GatewayResult:
    """The gateway drill (issue 14): the master's tracked gateway stops answering it.

    `preempt` is the policy's: with it the VIPs must go back to the old master once
    the gateway answers again, no sooner than `preempt_delay_s` after its track is
    good (keepalived's preempt_delay); without it they must stay on the backup.
    """

    label: str
    gateway: str
    weight: int | None
    master: str = ""
    backup: str = ""
    connected: bool = False
    takeover_s: float | None = None  # from the gateway's silence to the backup's VIPs
    failover_gap_s: float | None = None
    survived_takeover: bool = False
    preempt: bool = True
    preempt_delay_s: float = 0.0
    returned_s: float | None = None  # from the gateway's return to the old master's VIPs
    stayed: bool | None = None  # preempt off: the VIPs stayed on the backup
    survived_return: bool | None = None
    ok: bool = False
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class GroupFlow:
    """One vrrp-group's connection in the active-active drill."""

    group: str
    flow: str  # src -> dst:port
    connected: bool = False
    survived_failover: bool = False
    failover_gap_s: float | None = None
    survived_failback: bool = False
    # "survive", or "die": in the no-sync control run, the crashed member's groups
    expect: str = "survive"
    # the survivor's conntrack entries of this connection after the takeover
    survivor_entries: int | None = None


@dataclass
class ActiveActiveResult:
    """Active-active (issue 14): one member crashes while a connection runs through
    each vrrp-group; the survivor takes every group, and when the member returns each
    group goes back to its own master. Every connection must survive both moves.

    The control run (`sync` False: conntrackd off, nf_conntrack_tcp_loose=0, no
    restore) must lose the connections of the crashed member's groups and keep the
    survivor's own: state sync, not the lab, is what saves them."""

    label: str
    crashed: str
    survivor: str = ""
    takeover_s: float | None = None  # until the survivor held every VIP
    failback_s: float | None = None  # until every group was on its own master again
    flows: list[GroupFlow] = field(default_factory=list)
    ok: bool = False
    notes: list[str] = field(default_factory=list)
    sync: bool = True

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class BootWatch:
    """What the node did while its boot script ran (wall-clock seconds, CLOCK_REALTIME)."""

    rc: int | None = None
    script_s: float | None = None
    stderr: list[str] = field(default_factory=list)
    forwarding_before: dict[str, str] = field(default_factory=dict)  # family -> value
    rules_before: dict[str, str] = field(default_factory=dict)  # family -> FORWARD listing
    rules_loaded_s: float | None = None  # the script's "rules loaded", from its start
    forwarding_on_log_s: float | None = None  # the script's "forwarding on"
    forwarding_on_s: dict[str, float] = field(default_factory=dict)  # sampled, per family
    forwarding_off_until_s: dict[str, float] = field(default_factory=dict)
    chain_absent_at_s: dict[str, float] = field(default_factory=dict)
    chain_in_by_s: dict[str, float] = field(default_factory=dict)
    samples: int = 0
    syns_sent: int = 0
    syns_sent_before_rules: int = 0
    forwarded_before_rules: int = 0
    forwarded_after_rules: int = 0
    first_forwarded_s: float | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass
class RebootResult:
    label: str
    mode: str
    advert: str
    master: str = ""
    backup: str = ""
    preempt_delay_s: float = 0.0
    connected: bool = False
    # `preempt off`: the returning node stays backup (watched stay_watch_s), no failback
    preempt: bool = True
    external_flows_before: int = 0
    wiped: dict[str, Any] = field(default_factory=dict)
    takeover_s: float | None = None
    failover_gap_s: float | None = None
    survived_failover: bool = False
    committed_entries: int | None = None
    boot: BootWatch = field(default_factory=BootWatch)
    conntrackd_up_s: float | None = None
    # from keepalived's start on the returning node:
    cache_s: float | None = None
    cache: str = ""  # "external" | "internal": where its conntrackd had the flow first
    first_vip_s: float | None = None
    failback_s: float | None = None
    backup_held_vips: bool = False  # every sample before the first VIP moved
    resync_requested: bool = False  # the notify hook's `conntrackd -n` ran
    failback_gap_s: float | None = None
    survived_failback: bool | None = None
    failback_committed: int | None = None
    echoes: int = 0
    order_errors: int = 0
    end: str = ""
    ok: bool = False
    skipped: str = ""
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["boot"]["ok"] = self.boot.ok
        return data


@dataclass
class Flow:
    src: IPAddress
    src_ns: str
    dst: IPAddress
    dst_ns: str
    dst_segment: str
    port: int


def spread(values: list[float]) -> dict[str, float] | None:
    """min/median/max of a series (None when it is empty)."""
    if not values:
        return None
    ordered = sorted(values)
    mid = len(ordered) // 2
    median = ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2
    return {"min": round(ordered[0], 3), "median": round(median, 3),
            "max": round(ordered[-1], 3)}


@dataclass
class TimingSeries:
    """N crash runs of one advert profile (issue 14): takeover and echo gap spread."""

    advert: str
    mode: str
    runs: int
    survived: int = 0
    takeover_s: list[float] = field(default_factory=list)
    failover_gap_s: list[float] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.runs > 0 and self.survived == self.runs

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok, "takeover": spread(self.takeover_s),
                "gap": spread(self.failover_gap_s)}


# A switch may take this much longer than the probe's detection time: the last probe's
# round, the client's attempt period and a connection attempt's timeout.
SWITCH_MARGIN = 1.0


@dataclass
class UplinkResult:
    """What the uplink drill measured (seconds; None: it did not happen in time)."""

    member: str
    first: str  # "uplink via gateway"
    second: str
    detection_s: float  # interval x (fall + 1): what the policy allows for the switch
    restore_s: float  # interval x (rise + 1)
    baseline: str = ""  # the address the server saw before the failure
    switch_s: float | None = None
    return_s: float | None = None
    failed_connections: int = 0  # attempts between the failure and the switch
    route_removed: bool = False
    # fwc-routes.sh run again while the gateway is silent (an install, a boot): the monitor
    # took the re-added route out again within this many seconds (None: it did not)
    reapplied_s: float | None = None
    route_back: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return (self.switch_s is not None and self.return_s is not None
                and self.route_removed and self.route_back and self.reapplied_s is not None
                and 0 <= self.switch_s <= self.detection_s + SWITCH_MARGIN
                and 0 <= self.return_s <= self.restore_s + SWITCH_MARGIN)

    def summary(self) -> str:
        def fmt(v: float | None) -> str:
            return "never" if v is None else f"{v:.2f}s"
        return (f"uplink drill on {self.member}: {self.first} silent -> new connections via "
                f"{self.second} after {fmt(self.switch_s)} (detection {self.detection_s:g}s, "
                f"{self.failed_connections} failed attempts), back after "
                f"{fmt(self.return_s)} (restore {self.restore_s:g}s); re-added by "
                f"fwc-routes.sh, out again after {fmt(self.reapplied_s)}: "
                f"{'ok' if self.ok else 'FAILED'}")

    def to_dict(self) -> dict[str, object]:
        return {**asdict(self), "ok": self.ok}


@dataclass
class LabReport:
    cluster: str
    prefix: str
    logdir: str
    started: float = field(default_factory=time.time)
    duration_s: float = 0.0
    remap: list[str] = field(default_factory=list)
    topology: list[str] = field(default_factory=list)
    election: dict[str, Any] = field(default_factory=dict)
    expectations: list[ProbeResult] = field(default_factory=list)
    failover: list[FailoverResult] = field(default_factory=list)
    control: FailoverResult | None = None
    reboot: RebootResult | None = None
    warnings: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    error: str | None = None
    kept: bool = False
    teardown: list[str] = field(default_factory=list)
    timing: list[TimingSeries] = field(default_factory=list)
    gateway: list[GatewayResult] = field(default_factory=list)
    active_active: list[ActiveActiveResult] = field(default_factory=list)
    active_active_control: ActiveActiveResult | None = None
    uplinks: list[UplinkResult] = field(default_factory=list)
    # The advert the drills' waits were derived from, when it lengthened them beyond
    # their floors (fwc.lab.waits.describe); None: every wait as at `advert 1s`.
    waits: str | None = None

    @property
    def ok(self) -> bool:
        return not self.failures and self.error is None
