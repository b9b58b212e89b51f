"""How long the drills wait for what keepalived does, derived from the policy's VRRP timers.

A backup keepalived takes the VIPs when it has heard no advert it accepts for its
master-down interval (`LabPlan.master_down_bound`: at most four adverts), and a
returning master with preemption takes them back after its preempt delay and such an
interval. A fixed wait covers that only up to some advert interval: with `advert 5s`
the master-down interval alone is about 18 s, and a 20 s wait for the takeover failed a
correct policy ("never took over"). Each wait here is therefore the longer of the value
it always had (the floor: measured with the default `advert 1s` on a loaded 2-core
machine, so a fast advert waits exactly as long as before) and the plan's
master-down interval plus `VRRP_SLACK_S`.

The waits that depend on the adverts only indirectly are derived too: a connection's
TCP retransmissions back off exponentially while the VIPs are nowhere, so the next one
after the takeover comes up to about one outage later; the drill's connection must
wait that long for its echo (and the control run must give a connection that would
survive that long, or "died" proves nothing).
"""

from __future__ import annotations

from typing import Protocol

# Beyond the master-down interval: keepalived's scheduling and gratuitous ARPs, the
# lab's 50 ms VIP polling and a loaded machine (the gateway drill's return uses it too).
VRRP_SLACK_S = 6.0
# The floors: what each wait was before it was derived (docs/lab.md).
TAKEOVER_FLOOR_S = 20.0  # a crash until a backup holds every VIP; the election
ECHO_FLOOR_S = 15.0  # the takeover until the drill's connection echoes again
DEATH_FLOOR_S = 10.0  # the control run: the takeover until the connection counts as dead
GATEWAY_VRRP_FLOOR_S = 15.0  # the gateway drill: a failed track until the takeover
STREAM_FLOOR_S = 90.0  # the drill connection's own lifetime
# active-active timing: beyond the groups' election, new connections failed for about
# 15 s after a rolling reload that changed the advert (docs/lab.md, "Failover times")
REACHABLE_BEYOND_ELECTION_S = 20.0


class VrrpTimers(Protocol):
    """What the waits need of a lab plan (`fwc.lab.topology.LabPlan`)."""

    @property
    def advert(self) -> float: ...

    @property
    def master_down_bound(self) -> float: ...

    @property
    def preempt_delay(self) -> float: ...


def outage_s(plan: VrrpTimers) -> float:
    """The longest the VIPs may be nowhere after a hard crash at PLAN's advert."""
    return plan.master_down_bound + VRRP_SLACK_S


def takeover_s(plan: VrrpTimers) -> float:
    """A crashed master until a backup holds every VIP."""
    return max(TAKEOVER_FLOOR_S, outage_s(plan))


def election_s(plan: VrrpTimers) -> float:
    """Members (re)started until the expected master holds every VIP: a returning master
    with preemption waits out its preempt delay, then a master-down interval."""
    return takeover_s(plan) + plan.preempt_delay


def echo_s(plan: VrrpTimers) -> float:
    """The takeover until the drill's connection must echo again: its next TCP
    retransmission comes up to about one outage after the takeover."""
    return max(ECHO_FLOOR_S, outage_s(plan))


def death_s(plan: VrrpTimers) -> float:
    """The control run: how long after the takeover a connection that would survive
    could still echo, so silence for that long means it died."""
    return max(DEATH_FLOOR_S, outage_s(plan))


def gateway_vrrp_s(plan: VrrpTimers) -> float:
    """The gateway drill, once the master's track has failed: its lower priority (or
    FAULT) until the backup holds every VIP, a master-down interval at most."""
    return max(GATEWAY_VRRP_FLOOR_S, outage_s(plan))


def reachable_s(plan: VrrpTimers) -> float:
    """After an advert profile's install: until a connection through every vrrp-group
    must work again (the groups' election, then the failed-connection period)."""
    return takeover_s(plan) + REACHABLE_BEYOND_ELECTION_S


def stream_s(plan: VrrpTimers) -> float:
    """The drill connection's lifetime: what it always had, plus what PLAN's advert
    lengthens the waits of one drill by (the takeover, the echo after it, and the old
    master's return, an election); the drill stops it when it is done."""
    return (STREAM_FLOOR_S + 2 * (takeover_s(plan) - TAKEOVER_FLOOR_S)
            + echo_s(plan) - ECHO_FLOOR_S)


def lengthened(plan: VrrpTimers) -> bool:
    """Whether PLAN's adverts lengthen any wait beyond its floor."""
    return outage_s(plan) > min(DEATH_FLOOR_S, ECHO_FLOOR_S, TAKEOVER_FLOOR_S,
                                GATEWAY_VRRP_FLOOR_S)


def describe(plan: VrrpTimers, label: str) -> str:
    """One line for the report: the advert the waits were derived from, and the waits."""
    return (f"VRRP advert {label} (master-down interval up to {plan.master_down_bound:g} s): "
            f"waits lengthened to takeover {takeover_s(plan):g} s, election "
            f"{election_s(plan):g} s, echo {echo_s(plan):g} s, control {death_s(plan):g} s")
