"""Resolve a route's `probe TARGET [interval D] [fall N] [rise N]` into `RouteProbe`.

The uplink monitor's language (docs/language.md, "Uplink failover") is these four
options on a `route` line; `fwc.frontend.routing` calls `resolve_probe` for each
route. Ranges are resolver-stage errors (FWC279); what depends on the topology
(where the target is, which route takes over, NAT) is `fwc.checks.uplinks`.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from fwc import model as m
from fwc import protocols as proto
from fwc.frontend import syntax as s

Resolver = Any  # fwc.frontend.resolve.Resolver (not imported: no cycle)

PROBE_KEYS = ("probe", "interval", "fall", "rise")


def resolve_probe(resolver: Resolver, opts: dict[str, s.Option], family: int,
                  follow: bool) -> tuple[bool, m.RouteProbe | None]:
    """(ok, the probe or None). OPTS are the route's options by key."""
    given = [k for k in PROBE_KEYS if k in opts]
    if not given:
        return True, None
    if "probe" not in opts or opts["probe"].value is None:
        resolver.err("FWC279", f"'{given[0]}' without 'probe TARGET'", opts[given[0]].span,
                     hint="interval, fall and rise time the uplink probe: write "
                     "'probe ADDRESS' (e.g. the gateway) first")
        return False, None
    ok = True
    word = opts["probe"].value
    target: m.IPAddress | None = None
    try:
        target = ipaddress.ip_address(word.text)
    except ValueError:
        resolver.err("FWC106", f"probe target '{word.text}' must be one address", word.span,
                     hint="write the address the monitor pings, e.g. the gateway's")
        ok = False
    if target is not None and target.version != family:
        resolver.err("FWC106", f"probe target {target} is not IPv{family} like its route",
                     word.span, hint="the monitor probes the uplink of this route's family")
        ok = False
    if follow:
        resolver.err("FWC109", "a 'follow master' route cannot be probed", opts["probe"].span,
                     hint="keepalived adds and removes master routes; the uplink monitor "
                     "would fight it. Probe a route every member has")
        ok = False
    interval = proto.DEFAULT_UPLINK_INTERVAL_MS
    if "interval" in opts and opts["interval"].value is not None:
        iword = opts["interval"].value
        ms = resolver.duration_ms(iword, "probe interval")
        low, high = proto.UPLINK_INTERVAL_RANGE_MS
        if ms is None:
            ok = False
        elif not low <= ms <= high:
            resolver.err("FWC279", f"probe interval {iword.text} is out of range "
                         f"{low}ms-{high // 1000}s", iword.span,
                         hint="faster probes are lost to ordinary jitter; slower ones "
                         "leave the uplink dead for minutes")
            ok = False
        else:
            interval = ms
    counts, counted = resolver.fall_rise(opts, "probe",
                                         (proto.DEFAULT_UPLINK_FALL, proto.DEFAULT_UPLINK_RISE),
                                         proto.UPLINK_COUNT_RANGE, "FWC279")
    ok = ok and counted
    if ok and counts["fall"] < proto.UPLINK_MIN_SAFE_FALL:
        resolver.err("FWC279", f"probe fall {counts['fall']} switches uplinks on one lost echo",
                     opts["fall"].span, hint=f"use fall {proto.UPLINK_MIN_SAFE_FALL} or more "
                     "with a shorter interval for a fast switch")
        ok = False
    detection = interval * (counts["fall"] + 1)
    if ok and detection > proto.UPLINK_SLOW_DETECTION_MS:
        resolver.err("FWC279", f"probe notices a dead gateway only after {detection / 1000:g} s "
                     "(interval x (fall + 1))", opts["probe"].span,
                     hint=f"keep it under {proto.UPLINK_SLOW_DETECTION_MS // 1000} s: a shorter "
                     "interval or a smaller fall")
        ok = False
    if not ok or target is None:
        return False, None
    return True, m.RouteProbe(target, interval, counts["fall"], counts["rise"],
                              opts["probe"].span)
