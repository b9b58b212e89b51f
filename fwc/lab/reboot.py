"""Drill 3, reboot: the master loses power and boots again through the unit order.

The master is wiped as at power loss (daemons SIGKILLed by PID, links down,
VIPs, conntrack table, rules, ipsets and /run gone, forwarding at the kernel
default 0) while a TCP connection runs through it. The backup takes over.
Then the node boots as fwc-firewall.service orders it: the compiled boot
script, then conntrackd, then keepalived. Three things are measured:

(a) no packet is forwarded before the rules are in: SYNs of the drill's
    allowed flow are steered through the booting node's own address all the
    time it boots (its links are up *before* the boot script, which is worse
    than a real boot), a capture on the far host stamps every one that gets
    through, and a sampler in the node reads forwarding every millisecond and
    lists the FORWARD chains;
(b) the node rejoins without stealing the VIPs before conntrackd has
    resynchronised: the backup holds them for the preempt delay and the
    returning node's conntrackd lists the connection before it takes one; with
    `preempt off` it takes none at all (watched `stay_watch_s`) and its conntrackd
    lists the connection, ready for the next failover;
(c) the connection survives the fall and the return.
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

from fwc.lab import waits
from fwc.lab.daemons import BOOT_SCRIPT
from fwc.lab.drills import (
    _committed,
    _longest_gap,
    record_stream,
    start_stream,
    stop_proc,
)
from fwc.lab.netns import PYTHON, LabError, Proc, run
from fwc.lab.results import BootWatch, Flow, RebootResult, wait_for

if TYPE_CHECKING:
    from fwc.lab.daemons import Node
    from fwc.lab.running import Lab
    from fwc.lab.topology import LabPlan

SPORT_BASE = 61000  # above the ephemeral range (32768-60999): never the drill's own stream
SPORTS = 1000
ROUTE_TABLE = "197"  # a policy routing table in the test host only
SYN_INTERVAL = 0.005
AFTER_BOOT = 0.6  # keep probing this long after the boot script: the positive control
# `preempt off`: how long the returning node is watched staying backup, at least. A
# keepalived that preempts all the same takes the VIPs when its master-down timer runs
# out, so the watch outlasts that at the policy's advert interval (`stay_watch_s`).
STAY_WATCH_S = 8.0
# beyond the master-down interval: keepalived's start and the last reading
STAY_MARGIN_S = 2.0


def judge_boot(
    watch: dict[str, Any],
    syns: list[list[Any]],
    log: list[tuple[float, str]],
    t0: float,
    rc: int,
    *,
    forward_wiped: str,
) -> BootWatch:
    """Read the sampler, the capture and the boot script's log into a verdict.

    WATCH is the sampler's JSON plus `syns_sent` (the sender's send times; None
    when the sender printed no summary),
    SYNS the capture's [time, src, sport] list,
    LOG the boot script's (time, message) lines and T0 its start; all on
    CLOCK_REALTIME. FORWARD_WIPED is what the watcher's listing of the forward
    hook shows on a wiped node (the packet filter's, fwc/lab/filters.py). Every
    problem found is a sentence in `problems`.
    """
    bw = BootWatch(rc=rc)

    def rel(t: float | None) -> float | None:
        return None if t is None else round(t - t0, 4)

    bw.forwarding_before = dict(watch.get("first", {}))
    bw.samples = int(watch.get("samples", 0))
    chains = watch.get("chains", {})
    bw.rules_before = {fam: str(c.get("wiped", "")).strip() for fam, c in chains.items()}
    stamps = {msg: t for t, msg in log}
    t_rules = stamps.get("rules loaded")
    bw.rules_loaded_s = rel(t_rules)
    bw.forwarding_on_log_s = rel(stamps.get("forwarding on"))
    for fam, val in bw.forwarding_before.items():
        if val != "0":
            bw.problems.append(f"IPv{fam} forwarding was {val} before the boot script, not 0")
    for fam, text in bw.rules_before.items():
        if text != forward_wiped:
            bw.problems.append(f"IPv{fam} FORWARD was not wiped before the boot: {text!r}")
    if rc != 0:
        bw.problems.append(f"the boot script failed (rc {rc})")
    if t_rules is None:
        bw.problems.append("the boot script did not log 'rules loaded'")
    if bw.samples < 50:
        bw.problems.append(f"only {bw.samples} forwarding samples: the sampler did not run")
    first_on: dict[str, float] = {}
    for fam, val, t in watch.get("changes", []):
        if val == "1" and fam not in first_on:
            first_on[fam] = float(t)
    for fam, t in first_on.items():
        bw.forwarding_on_s[fam] = rel(t) or 0.0
        absent = chains.get(fam, {}).get("absent_at")
        if absent is not None:
            bw.chain_absent_at_s[fam] = rel(float(absent)) or 0.0
        in_by = chains.get(fam, {}).get("in_by")
        if in_by is not None:
            bw.chain_in_by_s[fam] = rel(float(in_by)) or 0.0
        off = watch.get("last_off", {}).get(fam)
        if off is not None:
            bw.forwarding_off_until_s[fam] = rel(float(off)) or 0.0
        if t_rules is not None and t <= t_rules:
            bw.problems.append(
                f"IPv{fam} forwarding came on {t - t0:.4f} s into the boot, before the "
                f"script's 'rules loaded' ({t_rules - t0:.4f} s)"
            )
        if absent is not None and t < float(absent):
            # The chain was listed as still wiped after forwarding was seen on.
            bw.problems.append(
                f"IPv{fam} forwarding was on at {t - t0:.4f} s while FORWARD was still "
                f"empty at {float(absent) - t0:.4f} s"
            )
        if in_by is None:
            bw.problems.append(f"IPv{fam} forwarding came on but no FORWARD rules were seen")
    if "4" not in first_on and rc == 0:
        bw.problems.append("IPv4 forwarding never came on after the boot script")
    summary = watch.get("syns_sent")
    sent = [float(t) for t in summary or []]
    bw.syns_sent = len(sent)
    limit = t_rules if t_rules is not None else float("inf")
    bw.syns_sent_before_rules = sum(t < limit for t in sent)
    times = sorted(float(s[0]) for s in syns)
    bw.forwarded_before_rules = sum(t < limit for t in times)
    bw.forwarded_after_rules = sum(t >= limit for t in times)
    bw.first_forwarded_s = rel(times[0]) if times else None
    if bw.forwarded_before_rules:
        bw.problems.append(
            f"{bw.forwarded_before_rules} probe SYNs were forwarded before the rules were "
            f"loaded (first at {bw.first_forwarded_s:.4f} s)"
        )
    if summary is None:
        bw.problems.append("the probe sender printed no summary: when it sent is unknown")
    elif not bw.syns_sent_before_rules:
        bw.problems.append("no probe SYN was sent before the rules loaded: nothing was tested")
    if not bw.forwarded_after_rules and rc == 0:
        bw.problems.append(
            "no probe SYN got through after the boot: the probe did not reach the node, "
            "so it proves nothing"
        )
    return bw


def boot_log(node: Node, since: float) -> list[tuple[float, str]]:
    """The boot script's logger lines (`fwc-firewall: MSG`) stamped after SINCE."""
    out = []
    for line in node.syslog().splitlines():
        stamp, _, rest = line.partition(" ")
        tag, _, msg = rest.partition(": ")
        try:
            t = float(stamp)
        except ValueError:
            continue
        if tag == "fwc-firewall" and t >= since:
            out.append((t, msg.strip()))
    return out


def _json_tail(proc: Proc) -> dict[str, Any]:
    try:
        lines = proc.log.read_text().splitlines() if proc.log else []
    except OSError:
        return {}
    for line in reversed(lines):
        if line.startswith("{"):
            try:
                data: dict[str, Any] = json.loads(line)
            except json.JSONDecodeError:
                return {}
            return data
    return {}


def _ready(proc: Proc, timeout: float = 8.0) -> bool:
    def seen() -> bool:
        try:
            return proc.log is not None and "READY" in proc.log.read_text()
        except OSError:
            return False

    return wait_for(seen, timeout, 0.05) is not None


def boot_and_watch(lab: Lab, node: Node, flow: Flow, label: str) -> BootWatch:
    """Links up, watchers on, the boot script, watchers off: the verdict for (a)."""
    host = next(h for h in lab.plan.hosts if h.ns == flow.src_ns)
    dst_host = next(h for h in lab.plan.hosts if h.ns == flow.dst_ns)
    via = next((str(a.ip) for port in lab.plan.member_ports(node.name)
                if port.segment == host.segment for a in port.addresses if a.version == 4), None)
    if via is None:
        raise LabError(f"{node.name} has no IPv4 address on {host.segment} to route probes via")
    node.network_up()
    # Only the probe's source ports take the booting node; the drill's own
    # connection and everything else still goes through the VIP.
    rule = [
        "from", f"{flow.src}/32", "to", f"{flow.dst}/32", "ipproto", "tcp",
        "sport", f"{SPORT_BASE}-{SPORT_BASE + SPORTS - 1}", "lookup", ROUTE_TABLE,
    ]
    route = ["default", "via", via, "dev", host.device, "table", ROUTE_TABLE]
    run(["ip", "-n", host.ns, "route", "replace", *route])
    run(["ip", "-n", host.ns, "rule", "add", "priority", "97", *rule])
    helpers: list[Proc] = []
    try:
        watcher = lab.state.spawn(
            f"{node.name}/watch",
            node.argv([PYTHON, str(lab.probe_py), "watch", "--duration", "40", "--listers",
                       json.dumps({fam: list(argv) for fam, argv
                                   in lab.packet_filter.forward.items()})]),
            lab.logdir / f"{label}-watch.log",
        )
        helpers.append(watcher)
        capture = lab.state.spawn(
            f"{dst_host.ns}/capture",
            lab.host_argv(dst_host.ns, [
                PYTHON, str(lab.probe_py), "capture", "--device", dst_host.device,
                "--dst", str(flow.dst), "--port", str(flow.port), "--duration", "40",
            ]),
            lab.logdir / f"{label}-capture.log",
        )
        helpers.append(capture)
        if not (_ready(watcher) and _ready(capture)):
            raise LabError(f"the boot watchers did not start; see {lab.logdir}/{label}-*.log")
        sender = lab.state.spawn(
            f"{host.ns}/syns",
            lab.host_argv(host.ns, [
                PYTHON, str(lab.probe_py), "syns", "--src", str(flow.src), "--dst",
                str(flow.dst), "--port", str(flow.port), "--sport-base", str(SPORT_BASE),
                "--sports", str(SPORTS), "--interval", str(SYN_INTERVAL), "--duration", "30",
            ]),
            lab.logdir / f"{label}-syns.log",
        )
        helpers.append(sender)
        # Probes are already knocking while the node is still wiped: from the sender's
        # READY (its interpreter can take longer than that to start on a loaded box).
        if not _ready(sender):
            raise LabError(f"the probe sender did not start; see {lab.logdir}/{label}-syns.log")
        time.sleep(0.3)
        rc, stderr, t0, t1 = node.boot()
        time.sleep(AFTER_BOOT)
        for proc in (sender, capture, watcher):
            stop_proc(lab, proc, grace=8.0)
        helpers.clear()
        watch = _json_tail(watcher)
        syns = _json_tail(capture).get("syns", [])
        watch["syns_sent"] = _json_tail(sender).get("times")
        bw = judge_boot(watch, syns, boot_log(node, t0 - 1.0), t0, rc,
                        forward_wiped=lab.packet_filter.forward_wiped)
        bw.script_s = round(t1 - t0, 4)
        bw.stderr = [ln for ln in stderr.splitlines() if ln.strip()][-5:]
        return bw
    finally:
        for proc in helpers:
            stop_proc(lab, proc, grace=1.0)
        run(["ip", "-n", host.ns, "rule", "del", "priority", "97", *rule], check=False)
        run(["ip", "-n", host.ns, "route", "del", *route], check=False)


def reboot_drill(lab: Lab, mode: str) -> RebootResult:
    """Drill 3 (see the module docstring). MODE is the failover drill mode it runs in."""
    flow = lab.flows.get(mode)
    master, _ = lab.wait_master()
    others = sorted((n for n in lab.nodes if n is not master),
                    key=lambda n: -lab.plan.priority(n.name))
    backup = others[0]
    res = RebootResult(
        f"reboot-{mode}-{lab.advert_label}",
        mode,
        lab.advert_label,
        master.name,
        backup.name,
        lab.plan.preempt_delay,
        preempt=lab.plan.preempt,
    )
    if BOOT_SCRIPT.name not in lab.files.get(master.name, {}):
        res.skipped = f"the compiled output has no boot script ({BOOT_SCRIPT.name})"
        return res
    if flow is None:
        res.skipped = "no allowed TCP flow between two VIP segments"
        return res
    undo = lab.prepare_mode(mode)
    stream_proc = None
    log = lab.logdir / f"{res.label}-stream.log"
    try:
        stream_proc, stream = start_stream(lab, res.label, flow)
        if wait_for(lambda: len(stream.parse()[0]) >= 10, 6.0, 0.1) is None:
            res.notes.append(f"connection did not establish or echo: {stream.parse()[1]}")
            return res
        res.connected = True
        sport = stream.parse()[1].get("sport", "")

        def has_flow(lines: list[str]) -> bool:
            return any(f"sport={sport}" in ln and f"dport={flow.port}" in ln for ln in lines)

        wait_for(lambda: has_flow(backup.external_flows(flow.port)), 3.0, 0.1)
        res.external_flows_before = sum(
            f"sport={sport}" in ln for ln in backup.external_flows(flow.port)
        )
        ct_log = lab.logdir / f"{backup.name}-conntrackd.log"
        ct_offset = ct_log.stat().st_size if ct_log.exists() else 0
        lab.progress(
            f"  [{res.label}] flow {flow.src} -> {flow.dst}:{flow.port} via {master.name}; "
            f"power loss on {master.name}"
        )
        t_fail = master.crash()
        res.wiped = master.wipe()

        def taken_over() -> bool:
            return backup.vips_held() == lab.vip_set

        res.takeover_s = wait_for(taken_over, waits.takeover_s(lab.plan))
        t_taken = time.monotonic() if res.takeover_s is not None else float("inf")
        wait_for(lambda: bool(stream.echoes_after(t_taken)), waits.echo_s(lab.plan), 0.1)
        recv, info = stream.parse()
        res.survived_failover = bool(stream.echoes_after(t_taken)) and "end" not in info
        if res.survived_failover:
            res.failover_gap_s = _longest_gap(recv, t_fail - 1.0, stream.echoes_after(t_taken)[0])
        res.committed_entries = _committed(ct_log, ct_offset)
        lab.progress(
            f"  [{res.label}] wiped {res.wiped}; {backup.name} took over in "
            f"{_fmt(res.takeover_s)}, connection survived: {res.survived_failover}"
        )
        if not res.survived_failover:
            res.notes.append("the connection did not survive the power loss")
        # Boot: the unit order, fwc-firewall.service first.
        res.boot = boot_and_watch(lab, master, flow, res.label)
        lab.progress(
            f"  [{res.label}] boot script rc {res.boot.rc} in {_fmt(res.boot.script_s)}: "
            f"rules loaded at {_fmt(res.boot.rules_loaded_s)}, forwarding on at "
            f"{res.boot.forwarding_on_s}; probe SYNs forwarded before the rules "
            f"{res.boot.forwarded_before_rules}, after {res.boot.forwarded_after_rules}"
        )
        if res.boot.rc != 0:
            # The unit failed: conntrackd and keepalived must not start (Requires=).
            raise LabError(
                f"{master.name}: the boot script failed in the reboot drill (rc "
                f"{res.boot.rc}): {'; '.join(res.boot.stderr)}"
            )
        old_log = lab.logdir / f"{master.name}-conntrackd.log"
        old_offset = old_log.stat().st_size if old_log.exists() else 0
        t_ct = time.monotonic()
        master.start_conntrackd()
        res.conntrackd_up_s = round(time.monotonic() - t_ct, 3)
        t_ka_wall = time.time()
        t_ka = time.monotonic()
        master.start_keepalived()
        _rejoin(lab, res, master, backup, has_flow, t_ka)
        res.resync_requested = any(
            "conntrackd -n ok" in ln
            for ln in master.syslog().splitlines()
            if _stamp(ln) >= t_ka_wall
        )
        lab.progress(
            f"  [{res.label}] {master.name}'s conntrackd had the flow ({res.cache}) at "
            f"{_fmt(res.cache_s)}, first VIP at {_fmt(res.first_vip_s)}, all VIPs at "
            f"{_fmt(res.failback_s)} after keepalived's start (preempt delay "
            f"{res.preempt_delay_s:g} s); {backup.name} held them throughout: "
            f"{res.backup_held_vips}"
        )
        if not res.preempt and res.survived_failover:
            t_after = time.monotonic()  # the return is over: the backup still carries it
            wait_for(lambda: bool(stream.echoes_after(t_after)), 15.0, 0.1)
            res.survived_failback = bool(stream.echoes_after(t_after)) and (
                "end" not in stream.parse()[1])
        elif res.failback_s is not None and res.survived_failover:
            t_switch = time.monotonic()
            wait_for(lambda: bool(stream.echoes_after(t_switch + 1.0)), 15.0, 0.1)
            recv, info = stream.parse()
            window = [r for r in recv if r > t_ka + res.failback_s - 0.5]
            gaps = [b - a for a, b in zip(window, window[1:], strict=False)]
            res.failback_gap_s = round(max(gaps), 3) if gaps else None
            res.survived_failback = bool(stream.echoes_after(t_switch + 1.0)) and (
                "end" not in info
            )
            res.failback_committed = _committed(old_log, old_offset)
        master.start_listener(*lab.listener_for(master))
    finally:
        if stream_proc is not None:
            stop_proc(lab, stream_proc)
        undo()
    record_stream(res, log)
    for key in ("takeover_s", "failover_gap_s"):
        val = getattr(res, key)
        if val is not None:
            setattr(res, key, round(val, 3))
    res.ok = judge_reboot(res)
    return res


def judge_reboot(res: RebootResult) -> bool:
    """(a), (b) and (c) all held; the reasons otherwise go to res.notes."""
    why = [f"boot: {p}" for p in res.boot.problems]
    if res.cache_s is None:
        why.append("the returning node's conntrackd never listed the connection")
    elif res.first_vip_s is not None and res.cache_s >= res.first_vip_s:
        why.append(
            f"a VIP moved at {res.first_vip_s:.2f} s, before conntrackd had the flow "
            f"({res.cache_s:.2f} s)"
        )
    if not res.preempt:
        if res.first_vip_s is not None:
            why.append(f"the returning node took a VIP {res.first_vip_s:.2f} s after "
                       "keepalived's start, although preemption is off")
    elif res.first_vip_s is None:
        why.append("the returning node never took the VIPs back")
    elif res.first_vip_s < res.preempt_delay_s:
        why.append(
            f"a VIP moved {res.first_vip_s:.2f} s after keepalived's start, within the "
            f"preempt delay of {res.preempt_delay_s:g} s"
        )
    if not res.backup_held_vips:
        why.append("the backup did not hold every VIP until the returning node took them"
                   if res.preempt else "the backup did not hold every VIP while the node "
                   "returned")
    if not res.survived_failover:
        why.append("the connection did not survive the power loss")
    elif not res.survived_failback:
        why.append("the connection did not survive the return")
    for reason in why:
        if reason not in res.notes:
            res.notes.append(reason)
    return res.connected and not why


def stay_watch_s(plan: LabPlan) -> float:
    """How long a returning node of PLAN (`preempt off`) is watched staying backup: a
    fixed 8 s covered the master-down interval up to `advert 2s` only (at `advert 3s`
    keepalived took the VIPs after 9.56 s, unwatched)."""
    return max(STAY_WATCH_S, plan.master_down_bound + STAY_MARGIN_S)


def _rejoin(
    lab: Lab, res: RebootResult, master: Node, backup: Node, has_flow: Any, t_ka: float
) -> None:
    """Poll until MASTER holds every VIP (with `preempt off`: for `stay_watch_s`, and it
    must take none): when its cache has the flow, who holds the VIPs."""
    held_throughout = True
    # With preemption: `waits.election_s`, with the preempt delay the drill ran with.
    watch = (waits.takeover_s(lab.plan) + res.preempt_delay_s if res.preempt
             else stay_watch_s(lab.plan))
    deadline = t_ka + watch
    for _ in range(int(watch / 0.05) + 2):
        now = time.monotonic()
        if now > deadline:
            break
        mine = master.vips_held()
        if mine and res.first_vip_s is None:
            res.first_vip_s = round(now - t_ka, 3)
        if mine == lab.vip_set and res.preempt:
            res.failback_s = round(now - t_ka, 3)
            break
        # Read the master again after the backup: between the two reads the master may
        # have taken the VIPs and the backup released them (a handover, not a gap). Only
        # a VIP that neither holds at the backup's reading is one the cluster dropped.
        if not mine and backup.vips_held() != lab.vip_set and not master.vips_held():
            held_throughout = False
        if res.cache_s is None:
            for kind, flag in (("external", "-e"), ("internal", "-i")):
                lines = master.ct([flag], check=False).stdout.splitlines()
                if has_flow(lines):
                    res.cache_s, res.cache = round(time.monotonic() - t_ka, 3), kind
                    break
        time.sleep(0.05)
    # (preempt off: the backup holds every VIP at every reading, the returning node none)
    res.backup_held_vips = held_throughout and (res.first_vip_s is not None if res.preempt
                                                else res.first_vip_s is None)


def _stamp(line: str) -> float:
    try:
        return float(line.split()[0])
    except (IndexError, ValueError):
        return 0.0


def _fmt(val: float | None) -> str:
    return "n/a" if val is None else f"{val:.2f} s"
