"""The lab's drills: expectation probes and the failover/failback drill.

Every wait here is bounded in time and in iterations; a drill that cannot
make progress reports what it saw instead of hanging.
"""

from __future__ import annotations

import json
import re
import signal
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fwc.analysis.handling import interface_handling
from fwc.lab import waits
from fwc.lab.netns import PYTHON, LabError, Proc, run
from fwc.lab.results import (
    ActiveActiveResult,
    FailoverResult,
    Flow,
    GatewayResult,
    GroupFlow,
    ProbeResult,
    RebootResult,
    wait_for,
)
from fwc.lab.topology import EndpointPlan, LabPlan, ProbePlan, vip_for

if TYPE_CHECKING:
    from fwc.lab.daemons import Node
    from fwc.lab.running import Lab
    from fwc.model import IPAddress, Track


# ------------------------------------------------------------ drill 1
def _probe_dst(lab: Lab, probe: ProbePlan) -> str | None:
    assert probe.src is not None and probe.dst is not None
    if probe.dst.address is not None:
        return str(probe.dst.address)
    # "firewall": the VIP of the source's segment, as a client would use it.
    assert probe.src.segment is not None and probe.src.address is not None
    vip = vip_for(lab.plan, probe.src.segment, probe.src.address.version)
    return str(vip) if vip else None


def run_probe(
    lab: Lab, probe: ProbePlan, phase: str, via: Node, timeout: float = 1.5
) -> ProbeResult:
    exp = probe.probe
    base = dict(
        expectation=exp.text or f"{exp.verdict} {exp.src} -> {exp.dst} service {exp.service}",
        verdict=exp.verdict,
        phase=phase,
        via=via.name,
        proto=exp.proto,
        port=exp.port,
    )
    if probe.skip:
        return ProbeResult(
            **base, src=exp.src, dst=exp.dst, kernel="skipped", how=probe.skip, agrees=None
        )
    src: EndpointPlan = probe.src  # type: ignore[assignment]
    dst = _probe_dst(lab, probe)
    if dst is None:
        return ProbeResult(
            **base,
            src=exp.src,
            dst=exp.dst,
            kernel="skipped",
            how="no VIP in the source's family",
            agrees=None,
        )
    argv = [
        PYTHON,
        str(lab.probe_py),
        "probe",
        "--src",
        str(src.address or ""),
        "--dst",
        dst,
        "--proto",
        exp.proto,
        "--port",
        str(exp.port or 0),
        "--timeout",
        str(timeout),
    ]
    full = via.argv(argv) if src.address is None else lab.host_argv(src.host_ns or "", argv)
    if src.address is not None:
        # A missing route would look like "blocked": that must be a lab error, not a pass.
        missing = _no_route(src.host_ns or "", dst, str(src.address))
        if missing:
            return ProbeResult(
                **base,
                src=exp.src,
                dst=exp.dst,
                kernel="error",
                how=f"no route on the test host: {missing}",
                agrees=False,
            )
    out = _probe_once(full, timeout)
    if exp.verdict == "allow" and probe_kernel(out) == "blocked" \
            and str(out.get("how", "")).startswith("timeout"):
        # A first packet on a cold path (neighbour discovery, a fresh takeover)
        # can be lost; an allowed flow must get one more chance, a denied one
        # needs none (it failed already).
        out = _probe_once(full, timeout)
    kernel = probe_kernel(out)
    target = probe.dst
    if (kernel == "blocked" and str(out.get("how", "")).startswith("timeout")
            and src.address is not None and target is not None and target.host_ns):
        # A timeout is the firewall's drop only if an answer could have come back: a
        # destination host without a route to the source (a segment without a VIP of
        # that family has no default route) drops its own reply, whatever the rules did.
        # Then the lab cannot tell, and says so rather than agree with a `deny`.
        missing = _no_route(target.host_ns, str(src.address), dst)
        if missing:
            kernel = "skipped"
            out["how"] = (f"not checked: {out.get('how')}, but the destination's test host "
                          f"has no route back to {src.address} ({missing}), so the timeout "
                          "proves nothing")
    # A probe that failed by itself decided nothing: never an agreement, not even
    # with a `deny`, which every failure to get through would otherwise confirm.
    agrees: bool | None = (None if kernel == "skipped" else False if kernel == "error"
                           else (kernel == "allowed") == (exp.verdict == "allow"))
    return ProbeResult(
        **base,
        src=f"{exp.src} ({src.address or via.name})",
        dst=f"{exp.dst} ({dst})",
        kernel=kernel,
        how=str(out.get("how")),
        agrees=agrees,
    )


def _no_route(ns: str, dst: str, src: str) -> str:
    """Why test host NS has no route to DST from SRC ("" when it has one)."""
    route = run(["ip", "-n", ns, "route", "get", dst, "from", src], check=False, timeout=5)
    return "" if route.returncode == 0 else (route.stderr.strip() or f"rc {route.returncode}")


def probe_kernel(out: dict[str, Any]) -> str:
    """What the kernel did to a probe (its JSON): "allowed", "blocked" or "error".

    Only a probe's own verdict counts (fwc/lab/probe.py): a connection that got
    through without an echo was allowed, and a probe that crashed, printed nothing or
    failed for a reason of its own (an address it could not bind, say) is an error,
    not a block."""
    verdict = out.get("verdict")
    return verdict if verdict in ("allowed", "blocked") else "error"


def _probe_once(argv: list[str], timeout: float) -> dict[str, Any]:
    proc = run(argv, check=False, timeout=timeout + 10)
    try:
        out: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        out = {"passed": False, "verdict": "error",
               "how": f"probe failed: {proc.stderr.strip()[:200]}"}
    return out


def handled_by(lab: Lab, src: str, dst: str, proto: str, port: int | None) -> str | None:
    """The members whose conntrack table holds a connection SRC -> DST (PROTO, PORT):
    the one that forwarded or took in the probe (conntrackd keeps the peer's states in
    its external cache, not in the kernel). None when no member has it."""
    names = []
    for node in lab.nodes:
        argv = ["conntrack", "-L", "-s", src, "-d", dst]
        if proto in ("tcp", "udp"):
            argv += ["-p", proto] + (["--dport", str(port)] if port else [])
        listing = node.exec(argv, check=False).stdout
        if any(line.strip() and not line.startswith("conntrack") for line in
               listing.splitlines()):
            names.append(node.name)
    return "+".join(names) or None


def check_handler(lab: Lab, probe: ProbePlan, res: ProbeResult) -> None:
    """Active-active: an allowed probe from a test host must have crossed the member
    that `fwc query` says handles traffic arriving on the host's segment."""
    src = probe.src
    if res.kernel != "allowed" or src is None or src.address is None or src.segment is None:
        return
    res.handler_expected = interface_handling(lab.plan.cluster, src.segment).normal
    if res.handler_expected is None:
        return
    dst = _probe_dst(lab, probe)
    if dst is None:
        return
    res.handled_by = handled_by(lab, str(src.address), dst, probe.probe.proto, probe.probe.port)
    if res.handled_by != res.handler_expected:
        res.agrees = False
        res.how += (f"; crossed {res.handled_by or 'no member'}, but fwc's analysis says "
                    f"{res.handler_expected} handles traffic arriving on {src.segment}")


def probe_expectations(lab: Lab, phase: str, via: Node, *,
                       handlers: bool = False) -> list[ProbeResult]:
    """Every probe of the plan through VIA (sources on test hosts use their routes);
    with HANDLERS (active-active) each allowed probe's member is checked too."""
    results = []
    for probe in lab.plan.probes:
        res = run_probe(lab, probe, phase, via)
        if handlers:
            check_handler(lab, probe, res)
        mark = {True: "ok", False: "MISMATCH", None: "skipped"}[res.agrees]
        lab.progress(f"  [{phase}] {res.label}: kernel {res.kernel} ({res.how}) -> {mark}")
        results.append(res)
    return results


# ------------------------------------------------------------ drill 2
class Stream:
    """The long-lived TCP probe, read back from its log file."""

    def __init__(self, log: Path) -> None:
        self.log = log

    def parse(self) -> tuple[list[float], dict[str, str]]:
        recv: list[float] = []
        info: dict[str, str] = {}
        try:
            lines = self.log.read_text().splitlines()
        except OSError:
            return recv, info
        for line in lines:
            parts = line.split()
            if not parts:
                continue
            if parts[0] == "E" and len(parts) == 4:
                recv.append(float(parts[3]))
            elif parts[0] == "CONNECTED":
                info["sport"] = parts[2]
            elif parts[0] == "END":
                info["end"] = " ".join(parts[1:])
            elif parts[0] == "ORDER":
                info["order"] = str(int(info.get("order", "0")) + 1)
        return recv, info

    def echoes_after(self, t: float) -> list[float]:
        return [r for r in self.parse()[0] if r > t]


def record_stream(res: FailoverResult | RebootResult, log: Path) -> list[float]:
    """Fill RES's echo count, end marker and order errors from the stream's LOG; the echo
    times, for the gaps the caller measures."""
    recv, info = Stream(log).parse()
    res.echoes = len(recv)
    res.end = info.get("end", "")
    res.order_errors = int(info.get("order", "0"))
    return recv


def start_stream(lab: Lab, label: str, flow: Flow) -> tuple[Proc, Stream]:
    """The long-lived TCP connection of a drill, logging to LOGDIR/LABEL-stream.log."""
    log = lab.logdir / f"{label}-stream.log"
    log.unlink(missing_ok=True)
    argv = [
        PYTHON,
        str(lab.probe_py),
        "stream",
        "--src",
        str(flow.src),
        "--dst",
        str(flow.dst),
        "--port",
        str(flow.port),
        "--interval",
        "0.1",
        "--duration",
        f"{waits.stream_s(lab.plan):g}",
    ]
    proc = lab.state.spawn(f"stream/{label}", lab.host_argv(flow.src_ns, argv), log)
    return proc, Stream(log)


def stop_proc(lab: Lab, proc: Proc, grace: float = 3.0) -> None:
    """SIGTERM (so the helper prints its summary), SIGKILL after GRACE, and forget it."""
    proc.signal(signal.SIGTERM)
    proc.reap(grace)
    proc.signal(signal.SIGKILL)
    proc.reap(1.0)
    lab.state.forget(proc)


def crash_until_taken_over(lab: Lab, crashed: Node, others: Sequence[Node]) \
        -> tuple[float, float | None, list[Node]]:
    """Crash CRASHED hard; wait (`waits.takeover_s`) until one of OTHERS holds every VIP.
    Returns the crash time, the takeover time (None: nobody took over) and the holder."""
    t_fail = crashed.crash()
    holder: list[Node] = []

    def taken() -> bool:
        holder[:] = [n for n in others if n.vips_held() == lab.vip_set]
        return bool(holder)

    return t_fail, wait_for(taken, waits.takeover_s(lab.plan)), holder


def _longest_gap(recv: list[float], start: float, end: float) -> float | None:
    """Longest interval between consecutive echoes received in [START, END]."""
    window = [r for r in recv if start <= r <= end]
    gaps = [b - a for a, b in zip(window, window[1:], strict=False)]
    return max(gaps) if gaps else None


def failover_drill(
    lab: Lab,
    label: str,
    mode: str,
    *,
    expect: str = "survive",
    failback: bool = True,
    while_on_backup: Callable[[Node], None] | None = None,
    survive_window: float | None = None,
    restore: bool = True,
) -> FailoverResult:
    flow = lab.flows.get(mode)
    master, _ = lab.wait_master()  # settled, and the expected node
    # With more than two members the next master is the highest remaining priority.
    others = sorted((n for n in lab.nodes if n is not master),
                    key=lambda n: -lab.plan.priority(n.name))
    backup = others[0]
    res = FailoverResult(
        label,
        mode,
        lab.advert_label,
        all(n.conntrackd_enabled for n in lab.nodes),
        expect,
        master.name,
        backup.name,
    )
    if flow is None:
        res.notes.append("no allowed TCP flow between two VIP segments: drill skipped")
        return res
    undo = lab.prepare_mode(mode)
    stream_proc = None
    log = lab.logdir / f"{label}-stream.log"
    try:
        stream_proc, stream = start_stream(lab, label, flow)
        if wait_for(lambda: len(stream.parse()[0]) >= 10, 6.0, 0.1) is None:
            res.notes.append(f"connection did not establish or echo: {stream.parse()[1]}")
            return res
        res.connected = True
        sport = stream.parse()[1].get("sport", "")
        entries = [ln for ln in master.kernel_flows(flow.port) if f"sport={sport}" in ln]
        res.flow_via_master = len(entries)
        res.translated = source_translated(entries, str(flow.src))
        if res.translated is not None and res.translated != (mode == "snat"):
            res.notes.append(f"the {mode} drill's connection was "
                             f"{'' if res.translated else 'not '}source-translated on "
                             f"{master.name}: {entries[0].strip()}")

        def mine() -> list[str]:
            return [ln for ln in backup.external_flows(flow.port) if f"sport={sport}" in ln]

        if res.sync:
            wait_for(lambda: bool(mine()), 3.0, 0.1)
            res.external_cache_before = backup.cache_counts()
            res.external_flows_before = len(mine())
        ct_log = backup.daemons["conntrackd"].log if "conntrackd" in backup.daemons else None
        ct_offset = ct_log.stat().st_size if ct_log and ct_log.exists() else 0
        lab.progress(
            f"  [{label}] flow {flow.src} -> {flow.dst}:{flow.port} via {master.name} "
            f"(kernel entries on master: {res.flow_via_master}, backup external "
            f"cache: {res.external_flows_before}); failing {master.name} hard"
        )
        t_fail, res.takeover_s, new_master = crash_until_taken_over(lab, master, others)
        if new_master and new_master[0] is not backup:
            res.notes.append(f"{new_master[0].name} took over, not {backup.name}")
            backup = new_master[0]
            res.backup = backup.name
        # An echo already in flight can still cross the old master in the few
        # ms before its links are down; only echoes after the takeover prove
        # the connection moved to the backup.
        t_taken = time.monotonic() if res.takeover_s is not None else float("inf")
        window = after_takeover_s(lab.plan, expect, survive_window)
        wait_for(lambda: bool(stream.echoes_after(t_taken)), window, 0.1)
        recv, info = stream.parse()
        res.survived_failover = bool(stream.echoes_after(t_taken)) and "end" not in info
        if res.survived_failover:
            res.failover_gap_s = _longest_gap(recv, t_fail - 1.0, stream.echoes_after(t_taken)[0])
        res.backup_kernel_flows_after = sum(
            f"sport={sport}" in ln for ln in backup.kernel_flows(flow.port)
        )
        if expect == "survive" and res.survived_failover and not res.backup_kernel_flows_after:
            res.notes.append(
                f"{backup.name}'s conntrack table does not list the flow (sport {sport}) "
                "although it survived"
            )
        res.notify_after_failover = _recent(backup.syslog(), 30.0)
        if ct_log is not None:
            res.committed_entries = _committed(ct_log, ct_offset)
        lab.progress(
            f"  [{label}] takeover {_fmt(res.takeover_s)}, echo gap "
            f"{_fmt(res.failover_gap_s)}, survived: {res.survived_failover}"
        )
        if res.survived_failover and while_on_backup is not None:
            # Probes need the normal routes and NAT back; the running flow keeps
            # the NAT decision conntrack already made, so this does not touch it.
            undo()
            undo = _noop
            while_on_backup(backup)
        if restore:
            # The old master comes back (as after a reboot) and preempts.
            t_back = time.monotonic()
            old_log = lab.logdir / f"{master.name}-conntrackd.log"
            old_offset = old_log.stat().st_size if old_log.exists() else 0
            master.restore(lab.listener_for(master))
            res.failback_s = wait_for(lambda: master.vips_held() == lab.vip_set,
                                      waits.election_s(lab.plan))
            if failback and res.survived_failover:
                # The connection ran on through the backup: the handover is the only gap.
                t_switch = time.monotonic()
                wait_for(lambda: bool(stream.echoes_after(t_switch + 1.0)),
                         waits.ECHO_FLOOR_S if survive_window is None else survive_window, 0.1)
                recv, info = stream.parse()
                window = [r for r in recv if r > t_back - 0.5]
                gaps = [b - a for a, b in zip(window, window[1:], strict=False)]
                res.failback_gap_s = max(gaps) if gaps else None
                res.failback_committed = _committed(old_log, old_offset)
                res.survived_failback = (
                    bool([r for r in recv if r > t_switch + 1.0]) and "end" not in info
                )
                lab.progress(
                    f"  [{label}] failback to {master.name} {_fmt(res.failback_s)}, echo gap "
                    f"{_fmt(res.failback_gap_s)}, survived: {res.survived_failback}"
                )
            elif res.failback_s is None and lab.plan.preempt:
                res.notes.append(f"{master.name} did not take the VIPs back after restore")
    finally:
        if stream_proc is not None:
            stop_proc(lab, stream_proc)
        undo()
    recv = record_stream(res, log)
    gaps = [b - a for a, b in zip(recv, recv[1:], strict=False)]
    res.longest_gap_s = round(max(gaps), 3) if gaps else None
    for key in ("takeover_s", "failover_gap_s", "failback_s", "failback_gap_s"):
        val = getattr(res, key)
        if val is not None:
            setattr(res, key, round(val, 3))
    res.ok = judge_failover(res, failback=failback,
                            failback_due=restore and lab.plan.preempt)
    return res


def after_takeover_s(plan: LabPlan, expect: str, survive_window: float | None = None) -> float:
    """How long after the takeover the drill's connection is given to echo: SURVIVE_WINDOW
    when the caller set one, else `waits.echo_s` (EXPECT "survive") or `waits.death_s`
    (the control: silence that long is a death)."""
    if expect != "survive":
        return waits.death_s(plan)
    return survive_window if survive_window is not None else waits.echo_s(plan)


def judge_failover(res: FailoverResult, *, failback: bool, failback_due: bool) -> bool:
    """RES's verdict (its notes say why not): FAILBACK, whether the connection had to
    survive the old master's return; FAILBACK_DUE, whether the old master was brought
    back under preemption and so had to take the VIPs back."""
    # A routed drill whose connection was SNATed (or the reverse) drilled another mode.
    as_mode = res.translated is None or res.translated == (res.mode == "snat")
    # The drill's connection crossed the member it failed: its conntrack table had it.
    # Without that, whatever happened to the connection says nothing about a failover.
    crossed = res.flow_via_master > 0
    if res.connected and not crossed:
        res.notes.append(f"{res.master}'s conntrack table did not list the connection: it "
                         "did not cross the member that was failed")
    if res.expect != "survive":
        return (as_mode and crossed and res.connected and not res.survived_failover
                and res.takeover_s is not None)
    # Without the old master taking the VIPs back, "survived the failback" only means the
    # connection went on through the backup, where it had been all along.
    came_back = not (failback and failback_due) or res.failback_s is not None
    if failback and failback_due and res.survived_failover and res.failback_s is None:
        note = f"{res.master} did not take the VIPs back after restore"
        if note not in res.notes:
            res.notes.append(note)
    return (as_mode and crossed and res.connected and res.survived_failover
            and (not failback or bool(res.survived_failback)) and came_back)


def source_translated(entries: Sequence[str], src: str) -> bool | None:
    """Whether the first of ENTRIES (`conntrack -L` lines of one connection from SRC)
    has its source translated: its reply goes to another address than SRC."""
    for line in entries:
        dsts = re.findall(r"\bdst=(\S+)", line)
        if len(dsts) >= 2:
            return dsts[1] != src
    return None


def failover_for_probes(lab: Lab, on_backup: Callable[[Node], None]) -> None:
    """Fail the master hard, run ON_BACKUP on the new master, bring the old one back."""
    master, _ = lab.wait_master()
    others = [n for n in lab.nodes if n is not master]
    master.crash()
    taken: list[Node] = []

    def taken_over() -> bool:
        taken[:] = [n for n in others if n.vips_held() == lab.vip_set]
        return bool(taken)

    bound = waits.takeover_s(lab.plan)
    if wait_for(taken_over, bound) is not None:
        on_backup(taken[0])
    else:  # the judge then fails the run: the expectations were not probed through it
        lab.report.warnings.append(f"no member took every VIP within {bound:g} s of "
                                   f"{master.name}'s crash (advert {lab.advert_label}): the "
                                   "expectations could not be probed through the backup")
    master.restore(lab.listener_for(master))
    lab.wait_master()


def _noop() -> None:
    pass


def _committed(log: Path, offset: int) -> int | None:
    """The backup's conntrackd 'Committed N new entries' since OFFSET of its log."""
    try:
        with open(log, "rb") as fh:
            fh.seek(offset)
            text = fh.read().decode(errors="replace")
    except OSError:
        return None
    found = re.findall(r"Committed (\d+) new entries", text)
    return int(found[0]) if found else None


def _recent(log: str, seconds: float) -> list[str]:
    """Notify-log lines (wall-clock stamped by the logger shim) from the last SECONDS."""
    out = []
    for line in log.splitlines():
        try:
            stamp = float(line.split()[0])
        except (IndexError, ValueError):
            continue
        if stamp > time.time() - seconds:
            out.append(line)
    return out[-12:]


def _fmt(val: float | None) -> str:
    return "n/a" if val is None else f"{val:.2f} s"


# ------------------------------------------------------------ gateway drill
# beyond `rise` good runs: at least this long (a loaded machine), and at least a
# master-down interval and RETURN_SLACK_S
RETURN_WATCH_S = 10.0
RETURN_SLACK_S = waits.VRRP_SLACK_S


def return_window_s(track: Track, plan: LabPlan) -> float:
    """How long the VIPs are watched once the gateway answers again: TRACK's `rise` good
    runs, then at least a master-down interval at PLAN's advert, after which a keepalived
    that preempts takes the VIPs (with `preempt off` it must not: a fixed 10 s did not
    outlast that from `advert 4s` on, and the drill passed a node that took them)."""
    return track.interval_s * (track.rise + 1) + max(
        RETURN_WATCH_S, plan.master_down_bound + RETURN_SLACK_S)


def detect_s(track: Track, plan: LabPlan) -> float:
    """How long the backup is given to hold every VIP once the gateway stops answering
    the master: TRACK's `fall` failed runs, then VRRP (`waits.gateway_vrrp_s`)."""
    checks = track.interval_s * (track.fall + 1) + (track.interval_s + 1) * track.fall
    return checks + waits.gateway_vrrp_s(plan)


def gateway_drill(lab: Lab, label: str, mode: str, gateway: IPAddress,
                  track: Track) -> GatewayResult:
    """The master's tracked gateway stops answering it; the backup takes over.

    The test host that holds GATEWAY drops the master's pings to it (its own
    iptables, only from the master's addresses on that segment: the backup still
    reaches it, as when the master's uplink path is broken). A live connection must
    survive the takeover; once the gateway answers again, the policy's preemption
    decides: with `preempt on` the VIPs go back after `preempt_delay`, with
    `preempt off` they stay on the backup. The drop rule is removed in every case.
    """
    plan = lab.plan
    res = GatewayResult(label, str(gateway), track.weight, preempt=plan.preempt,
                        preempt_delay_s=plan.preempt_delay)
    host = plan.router_host(gateway)
    flow = lab.flows.get(mode)
    if host is None or flow is None:
        res.notes.append("no test host holds the gateway" if host is None
                         else "no allowed TCP flow between two VIP segments")
        return res
    master, _ = lab.wait_master()
    others = sorted((n for n in lab.nodes if n is not master),
                    key=lambda n: -plan.priority(n.name))
    backup = others[0]
    res.master, res.backup = master.name, backup.name
    sources = [a.ip for p in plan.member_ports(master.name) if p.segment == host.segment
               for a in p.addresses if a.version == gateway.version]
    tool = "iptables" if gateway.version == 4 else "ip6tables"
    icmp = ["-p", "icmp"] if gateway.version == 4 else ["-p", "ipv6-icmp"]
    rules = [["-s", str(src), "-d", str(gateway), *icmp, "-j", "DROP"] for src in sources]
    # A check fails after `fall` failed runs `interval` apart, each waiting up to its
    # timeout (interval + 1 s); then VRRP needs a few adverts. Bounded generously: a
    # loaded 2-core box measured 12.8 s for interval 1, fall 2 (branch).
    detect = detect_s(track, plan)
    recover = return_window_s(track, plan)
    undo = lab.prepare_mode(mode)
    stream_proc = None
    blocked = False

    def unblock() -> None:
        for rule in rules:
            run(lab.host_argv(host.ns, [tool, "-D", "INPUT", *rule]), check=False)

    try:
        stream_proc, stream = start_stream(lab, label, flow)
        if wait_for(lambda: len(stream.parse()[0]) >= 10, 6.0, 0.1) is None:
            res.notes.append(f"connection did not establish or echo: {stream.parse()[1]}")
            return res
        res.connected = True
        lab.progress(f"  [{label}] {host.ns} stops answering {master.name}'s pings to "
                     f"{gateway} (track weight {track.weight})")
        for rule in rules:
            run(lab.host_argv(host.ns, [tool, "-I", "INPUT", "1", *rule]))
        blocked = True
        t_block = time.monotonic()

        def moved() -> bool:
            return backup.vips_held() == lab.vip_set and not master.vips_held()

        res.takeover_s = wait_for(moved, detect)
        t_taken = time.monotonic() if res.takeover_s is not None else float("inf")
        if res.takeover_s is None:
            res.notes.append(f"{backup.name} did not take the VIPs within {detect:.0f} s "
                             f"(advert {lab.advert_label})")
        else:
            wait_for(lambda: bool(stream.echoes_after(t_taken)), 15.0, 0.1)
            recv, info = stream.parse()
            after = stream.echoes_after(t_taken)
            res.survived_takeover = bool(after) and "end" not in info
            if after:
                res.failover_gap_s = _longest_gap(recv, t_block, after[0])
        lab.progress(f"  [{label}] takeover by {backup.name} {_fmt(res.takeover_s)}, echo gap "
                     f"{_fmt(res.failover_gap_s)}, survived: {res.survived_takeover}")
        unblock()
        blocked = False
        t_back = time.monotonic()
        if res.takeover_s is not None:
            if plan.preempt:
                res.returned_s = wait_for(
                    lambda: master.vips_held() == lab.vip_set and not backup.vips_held(),
                    recover + plan.preempt_delay)
                if res.returned_s is None:
                    res.notes.append(f"{master.name} did not take the VIPs back")
                elif res.returned_s < plan.preempt_delay:
                    res.notes.append(f"VIPs back after {res.returned_s:.2f} s, before the "
                                     f"preempt delay of {plan.preempt_delay:.0f} s")
            else:
                # preempt off: the old master's track is good again; it must stay backup.
                left = wait_for(lambda: bool(master.vips_held()), recover, 0.1)
                res.stayed = left is None and backup.vips_held() == lab.vip_set
            t_settled = time.monotonic()
            wait_for(lambda: bool(stream.echoes_after(t_settled + 1.0)), 15.0, 0.1)
            recv, info = stream.parse()
            res.survived_return = (bool([r for r in recv if r > t_settled + 1.0])
                                   and "end" not in info)
            lab.progress(
                f"  [{label}] gateway answers again: "
                + (f"VIPs back on {master.name} after {_fmt(res.returned_s)} "
                   f"(preempt delay {plan.preempt_delay:.0f} s)" if plan.preempt
                   else f"VIPs stayed on {backup.name}: {res.stayed}")
                + f", connection survived: {res.survived_return} "
                f"({time.monotonic() - t_back:.1f} s)")
    finally:
        if blocked:
            unblock()
        if stream_proc is not None:
            stop_proc(lab, stream_proc)
        undo()
    for key in ("takeover_s", "failover_gap_s", "returned_s"):
        val = getattr(res, key)
        if val is not None:
            setattr(res, key, round(val, 3))
    moved_back = (res.returned_s is not None and res.returned_s >= plan.preempt_delay
                  if plan.preempt else bool(res.stayed))
    res.ok = (res.connected and res.survived_takeover and moved_back
              and bool(res.survived_return))
    return res


# ------------------------------------------------------------ active-active drill
def groups_reachable(lab: Lab, label: str, flows: dict[str, Flow],
                     timeout: float | None = None) -> float | None:
    """Seconds until a fresh connection through every group echoes (None: not in TIMEOUT).

    After `fwc install` changes the advert interval the members reload one after the
    other: for a moment the first runs the new, shorter interval against the other's
    old one, times out on its adverts, takes the other's groups and hands them back
    at the next advert; new connections through them failed for about 15 s after
    that in the lab (docs/lab.md, "Failover times"). The timing runs measure
    crashes, so they start when the groups carry connections again; the caller
    reports how long that took."""
    timeout = timeout if timeout is not None else waits.reachable_s(lab.plan)
    t0 = time.monotonic()
    attempt = 0
    while time.monotonic() - t0 < timeout:
        attempt += 1
        started = [start_stream(lab, f"{label}-{attempt}-{group}", flow)
                   for group, flow in flows.items()]

        streams = [stream for _, stream in started]
        try:
            wait_for(lambda streams=streams: all(len(s.parse()[0]) >= 3 or "end" in s.parse()[1]
                                                 for s in streams), 8.0, 0.1)
            ok = all(len(s.parse()[0]) >= 3 for _, s in started)
        finally:
            for proc, _ in started:
                stop_proc(lab, proc)
        if ok:
            return time.monotonic() - t0
    return None


def active_active_drill(lab: Lab, label: str, crashed: Node,
                        flows: dict[str, Flow], *, sync: bool = True) -> ActiveActiveResult:
    """A connection through each vrrp-group; CRASHED fails hard and comes back.

    The survivor must hold every VIP and every connection must go on through it
    (its conntrackd committed the crashed member's states); after the restore each
    group must be back on its own master (after the preempt delay) and every
    connection must still echo.

    Without SYNC (the control run: the caller has stopped conntrackd and set
    nf_conntrack_tcp_loose=0) the connections of CRASHED's groups must die, since
    the survivor has no state for them, and the survivor's own must go on; CRASHED
    stays down.
    """
    res = ActiveActiveResult(label, crashed.name, sync=sync)
    lab.wait_groups()
    survivors = [n for n in lab.nodes if n is not crashed]
    masters = {g.name: g.master for g in lab.plan.cluster.groups}
    procs: list[Proc] = []
    streams: dict[str, Stream] = {}
    try:
        for group, flow in flows.items():
            proc, stream = start_stream(lab, f"{label}-{group}", flow)
            procs.append(proc)
            streams[group] = stream
            expect = "die" if not sync and masters.get(group) == crashed.name else "survive"
            res.flows.append(GroupFlow(group, f"{flow.src} -> {flow.dst}:{flow.port}",
                                       expect=expect))
        for item in res.flows:
            stream = streams[item.group]
            item.connected = wait_for(lambda s=stream: len(s.parse()[0]) >= 10,
                                      6.0, 0.1) is not None
        if not all(f.connected for f in res.flows):
            res.notes.append("a group's connection did not establish or echo")
            return res
        lab.progress(f"  [{label}] connections through "
                     + ", ".join(f"{f.group} ({f.flow})" for f in res.flows)
                     + f"; failing {crashed.name} hard"
                     + ("" if sync else " (no state sync)"))
        t_fail, res.takeover_s, holder = crash_until_taken_over(lab, crashed, survivors)
        if res.takeover_s is None:
            res.notes.append("no surviving member took every VIP")
        else:
            res.survivor = holder[0].name
            t_taken = time.monotonic()
            for item in res.flows:
                stream = streams[item.group]
                # A connection expected to die gets the control window of failover_drill.
                window = after_takeover_s(lab.plan, item.expect)
                wait_for(lambda s=stream: bool(s.echoes_after(t_taken)), window, 0.1)
                recv, info = stream.parse()
                after = stream.echoes_after(t_taken)
                item.survived_failover = bool(after) and "end" not in info
                if after:
                    gap = _longest_gap(recv, t_fail - 1.0, after[0])
                    item.failover_gap_s = round(gap, 3) if gap is not None else None
                sport = info.get("sport", "")
                flow = flows[item.group]
                item.survivor_entries = sum(f"sport={sport}" in ln
                                            for ln in holder[0].kernel_flows(flow.port))
        lab.progress(f"  [{label}] takeover by {res.survivor or 'nobody'} "
                     f"{_fmt(res.takeover_s)}; "
                     + ", ".join(f"{f.group}: gap {_fmt(f.failover_gap_s)} survived "
                                 f"{f.survived_failover} (expected to {f.expect})"
                                 for f in res.flows))
        if sync:
            _active_active_failback(lab, label, crashed, res, streams)
    finally:
        for proc in procs:
            stop_proc(lab, proc)
    if res.takeover_s is not None:
        res.takeover_s = round(res.takeover_s, 3)
    connected = bool(res.flows) and all(f.connected for f in res.flows)
    if sync:
        res.ok = (connected and res.takeover_s is not None and res.failback_s is not None
                  and all(f.survived_failover and f.survived_failback for f in res.flows))
    else:
        # The proof needs a connection that died and one that lived: without the
        # second, a broken lab would look like a lost state.
        res.ok = (connected and res.takeover_s is not None
                  and any(f.expect == "die" for f in res.flows)
                  and all(f.survived_failover == (f.expect == "survive") for f in res.flows))
    return res


def _active_active_failback(lab: Lab, label: str, crashed: Node, res: ActiveActiveResult,
                            streams: dict[str, Stream]) -> None:
    """CRASHED comes back: every group must return to its master, every connection live."""
    crashed.restore(lab.listener_for(crashed))
    t_back = time.monotonic()
    try:
        lab.wait_groups()
        res.failback_s = round(time.monotonic() - t_back, 3)
    except LabError as exc:
        res.notes.append(str(exc))
    t_settled = time.monotonic()
    for item in res.flows:
        stream = streams[item.group]
        wait_for(lambda s=stream: bool(s.echoes_after(t_settled + 1.0)), 15.0, 0.1)
        recv, info = stream.parse()
        item.survived_failback = (bool([r for r in recv if r > t_settled + 1.0])
                                  and "end" not in info)
    lab.progress(f"  [{label}] groups back on their masters after {_fmt(res.failback_s)}; "
                 + ", ".join(f"{f.group} survived {f.survived_failback}"
                             for f in res.flows))
