"""Text and JSON renderings of a lab run."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from fwc.lab.results import LabReport, RebootResult, spread


def to_dict(report: LabReport) -> dict[str, Any]:
    data = {
        "ok": report.ok,
        "cluster": report.cluster,
        "prefix": report.prefix,
        "logdir": report.logdir,
        "duration_s": report.duration_s,
        "remap": report.remap,
        "topology": report.topology,
        "election": report.election,
        "waits": report.waits,
        "expectations": [asdict(r) for r in report.expectations],
        "failover": [f.as_dict() for f in report.failover],
        "control": report.control.as_dict() if report.control else None,
        "reboot": report.reboot.as_dict() if report.reboot else None,
        "gaps": gap_table(report),
        "timing": [series.as_dict() for series in report.timing],
        "gateway": [g.as_dict() for g in report.gateway],
        "active_active": [a.as_dict() for a in report.active_active],
        "active_active_control": (report.active_active_control.as_dict()
                                  if report.active_active_control else None),
        "uplinks": [u.to_dict() for u in report.uplinks],
        "warnings": report.warnings,
        "failures": report.failures,
        "error": report.error,
        "kept": report.kept,
    }
    return data


def gap_table(report: LabReport) -> list[dict[str, Any]]:
    """Per mode, its runs by advert interval (the policy's, one per lab run)."""
    rows: dict[str, dict[str, Any]] = {}
    for fo in report.failover:
        row = rows.setdefault(fo.mode, {"mode": fo.mode})
        row[fo.advert] = {
            "takeover_s": fo.takeover_s,
            "failover_gap_s": fo.failover_gap_s,
            "failback_gap_s": fo.failback_gap_s,
            "survived": fo.ok,
            # issue 4's goal for sub-second adverts: no loss and a gap under 1 s
            "under_1s": fo.ok and fo.failover_gap_s is not None and fo.failover_gap_s < 1.0,
        }
    return list(rows.values())


def write_json(report: LabReport, path: Path) -> None:
    path.write_text(json.dumps(to_dict(report), indent=2) + "\n")


def _s(val: float | None) -> str:
    return "-" if val is None else f"{val:.2f}s"


def _n(val: int | None) -> str:
    return "-" if val is None else str(val)


def render_text(report: LabReport) -> str:
    out: list[str] = []
    status = "PASS" if report.ok else "FAIL"
    out.append(
        f"fwc lab {report.cluster}: {status} in {report.duration_s:.0f} s "
        f"(prefix {report.prefix}, logs in {report.logdir})"
    )
    for line in report.remap:
        out.append(f"  remapped {line}")
    if report.election and "masters" in report.election:  # vrrp-groups
        out.append("  election: " + "; ".join(
            f"{member} holds {', '.join(vips) or 'no VIP'}"
            for member, vips in report.election["masters"].items())
            + f" after {report.election['seconds']:.2f} s")
    elif report.election:
        out.append(
            f"  election: {report.election['master']} master after "
            f"{report.election['seconds']:.2f} s"
        )
    if report.waits:
        out.append(f"  waits: {report.waits}")
    if report.expectations:
        out.append("  expectations (drill 1):")
        for r in report.expectations:
            mark = {True: "ok", False: "MISMATCH", None: "skipped"}[r.agrees]
            via = f"handled by {r.handled_by}" if r.handled_by else f"via {r.via}"
            out.append(
                f"    {mark:8} {r.phase:6} {via}: {r.label} -> kernel "
                f"{r.kernel} ({r.how})"
            )
    if report.failover or report.control:
        out.append("  failover (drill 2):")
        out.append(
            f"    {'run':18} {'result':9} {'takeover':>9} {'gap':>7} {'failback':>9} "
            f"{'fb gap':>7} {'longest':>8} {'ext cache':>9} {'committed':>9} {'echoes':>7}"
        )
        runs = [*report.failover, *([report.control] if report.control else [])]
        for fo in runs:
            if fo.expect == "survive":
                result = "SURVIVED" if fo.ok else "LOST"
            else:
                result = "DIED ok" if fo.ok else "SURVIVED!"
            out.append(
                f"    {fo.label:18} {result:9} {_s(fo.takeover_s):>9} "
                f"{_s(fo.failover_gap_s):>7} {_s(fo.failback_s):>9} "
                f"{_s(fo.failback_gap_s):>7} {_s(fo.longest_gap_s):>8} "
                f"{fo.external_flows_before:>9} {_n(fo.committed_entries):>9} {fo.echoes:>7}"
            )
            for note in fo.notes:
                out.append(f"      note: {note}")
    out += _reboot_text(report)
    table = gap_table(report)
    if table:
        out.append("  failover gap by advert interval:")
        for row in table:
            cells = [
                f"{k}: gap {_s(v['failover_gap_s'])} takeover {_s(v['takeover_s'])}"
                + (" (< 1 s)" if v["under_1s"] else "")
                for k, v in row.items()
                if k != "mode"
            ]
            out.append(f"    {row['mode']:7} " + " | ".join(cells))
    out += timing_text(report)
    out += gateway_text(report)
    out += active_active_text(report)
    for u in report.uplinks:
        out.append(f"  {u.summary()}")
        out += [f"    note: {n}" for n in u.notes]
    for w in report.warnings:
        out.append(f"  warning: {w}")
    for f in report.failures:
        out.append(f"  FAILED: {f}")
    if report.error:
        out.append(f"  ERROR: {report.error}")
    if report.kept:
        out.append(f"  lab kept running: tear down with `fwc lab --teardown {report.prefix}`")
    return "\n".join(out)


def active_active_text(report: LabReport) -> list[str]:
    """Each member's crash with a connection through every vrrp-group."""
    out = []
    for aa in report.active_active:
        out.append(f"  active-active {aa.label}: {aa.crashed} crashed, {aa.survivor or 'nobody'} "
                   f"took every group in {_s(aa.takeover_s)}, groups back on their masters "
                   f"after {_s(aa.failback_s)} -> {'ok' if aa.ok else 'FAILED'}")
        for f in aa.flows:
            out.append(f"    {f.group} ({f.flow}): echo gap {_s(f.failover_gap_s)}, "
                       f"failover {'survived' if f.survived_failover else 'LOST'}, "
                       f"failback {'survived' if f.survived_failback else 'LOST'}")
        out += [f"    note: {n}" for n in aa.notes]
    control = report.active_active_control
    if control is not None:
        verdict = "as expected" if control.ok else "NOT AS EXPECTED: the drills prove nothing"
        out.append(f"  active-active control {control.label} (no state sync): {control.crashed} "
                   f"crashed, {control.survivor or 'nobody'} took every group in "
                   f"{_s(control.takeover_s)} -> {verdict}")
        for f in control.flows:
            if f.survived_failover:
                result = "survived" if f.expect == "survive" else "SURVIVED!"
            else:
                result = "died" if f.expect == "die" else "DIED!"
            out.append(f"    {f.group} ({f.flow}): expected to {f.expect}, {result} "
                       f"(echo gap {_s(f.failover_gap_s)}, survivor's conntrack entries "
                       f"{_n(f.survivor_entries)})")
        out += [f"    note: {n}" for n in control.notes]
    return out


def gateway_text(report: LabReport) -> list[str]:
    """The gateway drill: takeover on a silent gateway, then the preemption behaviour."""
    out = []
    for gw in report.gateway:
        back = (f"VIPs back on {gw.master} after {_s(gw.returned_s)} (preempt delay "
                f"{gw.preempt_delay_s:.0f}s)" if gw.preempt
                else f"VIPs stayed on {gw.backup} (preempt off): {gw.stayed}")
        out.append(f"  gateway drill {gw.label}: {gw.gateway} silent for {gw.master} -> "
                   f"{gw.backup} took over in {_s(gw.takeover_s)}, echo gap "
                   f"{_s(gw.failover_gap_s)}; {back}; connection "
                   f"{'survived' if gw.survived_takeover and gw.survived_return else 'LOST'}"
                   f" -> {'ok' if gw.ok else 'FAILED'}")
        out += [f"    note: {n}" for n in gw.notes]
    return out


def timing_text(report: LabReport) -> list[str]:
    """The crash series per advert profile: min/median/max of takeover and echo gap."""
    if not report.timing:
        return []
    width = max(7, *(len(series.mode) for series in report.timing))
    out = ["  failover times over repeated crashes (min / median / max):",
           f"    {'advert':7} {'mode':{width}} {'runs':>4} {'survived':>8}  "
           f"{'takeover':^22}  {'echo gap':^22}"]
    for series in report.timing:
        def cell(values: list[float]) -> str:
            got = spread(values)
            return "-" if got is None else \
                f"{got['min']:.2f} / {got['median']:.2f} / {got['max']:.2f}"
        out.append(f"    {series.advert:7} {series.mode:{width}} {series.runs:>4} "
                   f"{series.survived:>8}  {cell(series.takeover_s):^22}  "
                   f"{cell(series.failover_gap_s):^22}")
    return out


def _reboot_text(report: LabReport) -> list[str]:
    rb = report.reboot
    if rb is None:
        return []
    if rb.skipped:
        return [f"  reboot (drill 3): skipped: {rb.skipped}"]
    b = rb.boot
    fwd = ", ".join(f"IPv{k} {_ms(v)}" for k, v in sorted(b.forwarding_on_s.items())) or "-"
    out = [
        f"  reboot (drill 3): {rb.label} {'HELD' if rb.ok else 'FAILED'}",
        f"    power loss on {rb.master}: wiped {_wiped(rb.wiped)}; {rb.backup} took over in "
        f"{_s(rb.takeover_s)}, echo gap {_s(rb.failover_gap_s)}, connection "
        f"{'survived' if rb.survived_failover else 'LOST'}",
        f"    boot script rc {b.rc} in {_ms(b.script_s)}: rules loaded at "
        f"{_ms(b.rules_loaded_s)}, forwarding on at {fwd} ({b.samples} samples, off before)",
        f"    probe SYNs through {rb.master}: {b.syns_sent} sent ({b.syns_sent_before_rules} "
        f"before the rules), forwarded {b.forwarded_before_rules} before the rules, "
        f"{b.forwarded_after_rules} after (first at {_ms(b.first_forwarded_s)})",
        *_rejoin_text(rb),
    ]
    out += [f"      note: {note}" for note in rb.notes]
    return out


def _rejoin_text(rb: RebootResult) -> list[str]:
    held = "yes" if rb.backup_held_vips else "NO"
    resync = "yes" if rb.resync_requested else "no"
    survived = (f"{'survived' if rb.survived_failback else 'LOST'} ({rb.echoes} echoes, "
                f"{rb.order_errors} out of order)")
    if not rb.preempt:
        return [f"    rejoin as backup (from keepalived's start, preempt off): flow in "
                f"{rb.master}'s {rb.cache or '?'} cache at {_s(rb.cache_s)}, VIPs taken: "
                f"{'none' if rb.first_vip_s is None else f'first at {_s(rb.first_vip_s)}'}; "
                f"{rb.backup} held them throughout: {held}; resync requested: {resync}",
                f"    connection through {rb.backup} after the return {survived}"]
    return [f"    rejoin (from keepalived's start, preempt delay {rb.preempt_delay_s:g}s): flow "
            f"in {rb.master}'s {rb.cache or '?'} cache at {_s(rb.cache_s)}, first VIP at "
            f"{_s(rb.first_vip_s)}, all at {_s(rb.failback_s)}; {rb.backup} held them until "
            f"then: {held}; resync requested: {resync}",
            f"    failback echo gap {_s(rb.failback_gap_s)}, connection {survived}"]


def _ms(val: float | None) -> str:
    # Boot steps are milliseconds apart: seconds with two decimals would hide the order.
    return "-" if val is None else f"{val * 1000:.1f}ms"


def _wiped(w: dict[str, Any]) -> str:
    if not w:
        return "-"
    fwd = "/".join(str(v) for v in w.get("forwarding", {}).values())
    return (
        f"{w.get('processes')} processes, {len(w.get('vips', []))} VIPs, {w.get('rules')} rules, "
        f"{w.get('ipsets')} ipsets, {w.get('conntrack_entries')} conntrack entries, "
        f"forwarding {fwd}"
    )
