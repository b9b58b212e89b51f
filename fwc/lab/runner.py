"""Bring the lab up, run the drills, and always tear it down.

Teardown runs on success, on failure, on an exception and on Ctrl-C or
SIGTERM (the handler turns the signal into an exception so the ``finally``
runs); only ``--keep`` skips it, and then the teardown command is printed.
"""

from __future__ import annotations

import contextlib
import os
import signal
import stat
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import TextIO

from fwc.lab import drills, waits
from fwc.lab.adapter import LabSource, advert_variant
from fwc.lab.daemons import Node
from fwc.lab.netns import LabError, LabRefused, new_prefix, teardown
from fwc.lab.reboot import reboot_drill
from fwc.lab.results import Flow, LabReport, TimingSeries, spread
from fwc.lab.running import Lab
from fwc.lab.topology import (
    Remap,
    describe,
    doc_range_violations,
    plan,
    plan_remap,
    tracked_gateways,
)
from fwc.lab.uplinks import run_uplink_drill
from fwc.model import Cluster
from fwc.model.records import dataclass
from fwc.model.uplinks import uplinks

__all__ = ["LabInterrupted", "LabOptions", "LabRefused", "run_lab"]


class LabInterrupted(LabError):
    pass


@dataclass
class LabOptions:
    keep: bool = False
    remap: bool = False
    quick: bool = False
    logdir: Path | None = None
    prefix: str | None = None
    progress: Callable[[str], None] | None = None
    # N crash runs per advert profile (0: none), reported as min/median/max. Each
    # profile (seconds) is a VRRPv3 variant of the policy's model, compiled and
    # installed like the policy itself (fwc.lab.adapter.advert_variant).
    timing_runs: int = 0
    timing_adverts: tuple[float, ...] = (0.1, 0.05)
    # `ip route ... rto_min N ms` on every test host's routes (None: the kernel's 200 ms)
    rto_min_ms: int | None = None


@contextmanager
def _signals_raise() -> Iterator[None]:
    """Turn SIGTERM/SIGINT/SIGHUP into an exception so teardown always runs."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise LabInterrupted(f"interrupted by signal {signal.Signals(signum).name}")

    old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _stderr_progress(start: float, stream: TextIO | None = None) -> Callable[[str], None]:
    """Timed progress lines on stderr when it is a terminal; nothing in pipes, files or
    CI logs (the report, the JSON and the lab's log directory have everything)."""
    out = sys.stderr if stream is None else stream
    try:
        live = out.isatty()
    except (AttributeError, ValueError):
        live = False

    def emit(msg: str) -> None:
        if live:
            print(f"[lab {time.monotonic() - start:6.1f}s] {msg}", file=out, flush=True)

    return emit


def lab_logdir(given: Path | None, prefix: str) -> Path:
    """Where the lab's logs go: GIVEN (`--logdir`), made 0700 when missing, or else a new
    directory of its own in the temporary directory (0700, a name nobody can guess).

    The lab runs as root and writes scripts there that it then runs (the uplink drill's
    fwc-routes.sh): in a directory another user owns or may write to, that user could
    swap the script, or plant links that root's log writes follow. A fixed name under
    /tmp (`/tmp/fwc-lab-<prefix>`, before) let anyone make that directory first."""
    if given is None:
        return Path(tempfile.mkdtemp(prefix=f"fwc-lab-{prefix}-"))
    with contextlib.suppress(FileExistsError):
        given.mkdir(mode=0o700, parents=True)
    try:
        info = given.stat()
    except OSError as exc:
        raise LabRefused(f"--logdir {given}: {exc.strerror or exc}") from exc
    if not stat.S_ISDIR(info.st_mode):
        raise LabRefused(f"--logdir {given} is not a directory")
    if info.st_uid != os.geteuid() or info.st_mode & 0o022:
        raise LabRefused(
            f"--logdir {given} is owned by uid {info.st_uid} with mode "
            f"{stat.S_IMODE(info.st_mode):04o}: the lab runs scripts it writes there, so "
            "it must be yours and writable by you alone (give a directory of your own, "
            "or leave --logdir out for a new private one)")
    return given


def run_lab(source: LabSource, options: LabOptions) -> LabReport:
    """Run the whole lab for SOURCE's cluster with its compiled files."""
    t0 = time.monotonic()
    progress = options.progress or _stderr_progress(t0)
    prefix = options.prefix or new_prefix()
    cluster = source.cluster
    remap = Remap()
    violations = doc_range_violations(cluster)
    if violations:
        if not options.remap:
            raise LabRefused(
                "fwc lab only puts documentation/benchmark ranges on the wire "
                "(192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24, 198.18.0.0/15, 2001:db8::/32); "
                "this policy uses: " + "; ".join(violations) + ". Re-run with --remap to map "
                "its subnets onto documentation ranges."
            )
        remap = plan_remap(cluster)
    # Every advert profile is checked and compiled before anything starts: a profile
    # the policy cannot take is refused here, not after minutes of drills.
    variants = ([advert_variant(source, advert) for advert in options.timing_adverts]
                if options.timing_runs > 0 else [])
    logdir = lab_logdir(options.logdir, prefix)
    report = LabReport(cluster.name, prefix, str(logdir))
    report.remap = [f"{old} -> {new}" for old, new in remap.pairs]
    report.warnings.extend(source.notes)
    for line in report.remap:
        progress(f"remapped {line}")
    progress(f"cluster {cluster.name} of {source.policy.root}, files {source.origin}")
    for variant in variants:
        progress(f"advert profile: {variant.origin}")
    lab_plan = plan(source.policy, cluster, prefix, remap)
    report.topology = list(describe(lab_plan))
    for line in report.topology:
        progress(line)
    lab = Lab(lab_plan, source.files, logdir, progress)
    lab.rto_min_ms = options.rto_min_ms
    lab.report = report
    if waits.lengthened(lab_plan):
        # A slow advert makes the drills wait longer: the report says which advert and
        # how long, so a failure reads against the timers it ran with.
        report.waits = waits.describe(lab_plan, lab.advert_label)
        progress(report.waits)
    try:
        with _signals_raise():
            _run(lab, report, options, variants)
    except LabError as exc:
        report.error = str(exc)
        progress(f"ERROR: {exc}")
    except Exception as exc:  # noqa: BLE001 - report, then still tear down
        report.error = f"{type(exc).__name__}: {exc}"
        progress(f"ERROR: {report.error}")
    finally:
        for node in lab.nodes:
            # Logs are best effort: a dead node must not stop the teardown.
            with contextlib.suppress(Exception):
                node.save_logs()
        if options.keep and report.error is None:
            report.kept = True
            progress(f"lab left running; tear down with: fwc lab --teardown {prefix}")
        else:
            report.teardown = teardown(prefix)
            progress(f"torn down ({len(report.teardown)} steps)")
    if report.error is None and not report.kept and _has_uplinks(cluster):
        _uplink_drill(source, report, f"{prefix}u", logdir / "uplinks", progress)
    report.duration_s = round(time.monotonic() - t0, 1)
    return report


def _has_uplinks(cluster: Cluster) -> bool:
    return any(uplinks(cluster, member) for member in cluster.members)


def _uplink_drill(source: LabSource, report: LabReport, prefix: str, work: Path,
                  progress: Callable[[str], None]) -> None:
    """The uplink drill in namespaces of its own, after the cluster's lab is torn down."""
    progress("uplinks: the first gateway of a probed route stops answering (no VRRP "
             "failover: one member, two routers)")
    try:
        result = run_uplink_drill(source, prefix, work)
    except LabRefused as exc:
        report.warnings.append(f"uplink drill skipped: {exc}")
        return
    except LabError as exc:
        report.error = f"uplink drill: {exc}"
        progress(f"ERROR: {report.error}")
        return
    report.uplinks.append(result)
    progress(result.summary())
    if not result.ok:
        report.failures.append(result.summary() + (
            f"; {'; '.join(result.notes)}" if result.notes else ""))


def _run(lab: Lab, report: LabReport, options: LabOptions,
         variants: Sequence[LabSource] = ()) -> None:
    if lab.plan.active_active:
        _run_active_active(lab, report, options, variants)
        return
    lab.build()
    lab.start_members()
    lab.start_listeners()
    master, took = lab.wait_master()
    report.election = {"master": master.name, "seconds": round(took, 2)}
    lab.progress(
        f"{master.name} is master holding {', '.join(sorted(lab.vip_set))} after {took:.2f} s"
    )
    if lab.flow is None:
        report.warnings.append(
            "no allowed TCP expectation between two VIP segments: failover drills skipped"
        )

    report.expectations += drills.probe_expectations(lab, "master", master)
    snat_flow = lab.classify_snat(master)
    if snat_flow is not None:
        lab.flows["snat"] = snat_flow

    def on_backup(node: Node) -> None:
        report.expectations.extend(drills.probe_expectations(lab, "backup", node))

    if lab.flow is not None:
        _failover_drills(lab, report, options, on_backup, variants)
    if options.keep and lab.flow is not None:
        lab.progress(f"lab back to the compiled configuration, {lab.back_to_compiled()}")
    if lab.plan.probes and not any(r.phase == "backup" for r in report.expectations):
        # No drill reached the backup (none possible, or the first one failed):
        # the expectations must still be checked through it.
        lab.progress("failing the master once more to probe the expectations through the backup")
        drills.failover_for_probes(lab, on_backup)
    _judge(report)


def _run_active_active(lab: Lab, report: LabReport, options: LabOptions,
                       variants: Sequence[LabSource] = ()) -> None:
    """vrrp-groups with different masters: expectations through the split cluster, then
    each member crashed in turn with a connection running through every group."""
    lab.build()
    lab.start_members()
    lab.start_listeners()
    took = lab.wait_groups()
    expected = lab.plan.expected_vips()
    report.election = {"masters": {m: sorted(v) for m, v in expected.items()},
                       "seconds": round(took, 2)}
    lab.progress("vrrp-groups on their masters after "
                 f"{took:.2f} s: " + "; ".join(f"{m} holds {', '.join(sorted(v)) or 'no VIP'}"
                                               for m, v in expected.items()))
    # Probes from `firewall` go through the first member; the others cross the split
    # cluster as the test hosts' routes send them (each segment to its group's master),
    # and each allowed one must have crossed the member fwc query names.
    report.expectations += drills.probe_expectations(lab, "groups", lab.nodes[0],
                                                     handlers=True)
    flows = lab.group_flows()
    missing = [g.name for g in lab.plan.cluster.groups if g.name not in flows]
    if missing:
        report.warnings.append("no allowed TCP expectation between two segments of "
                               f"vrrp-group {', '.join(missing)}: its connection is not drilled")
    if not flows:
        # Nothing to drill, but the expectations probed above are still the verdict's:
        # a MISMATCH among them fails the lab like any other.
        _judge(report)
        return
    for node in list(lab.nodes):
        label = f"aa-{node.name}-{lab.advert_label}"
        lab.progress(f"active-active: {node.name} crashes with a connection through each group")
        result = drills.active_active_drill(lab, label, node, flows)
        report.active_active.append(result)
        lab.progress(f"active-active: {'held' if result.ok else 'FAILED'}")
    if variants:
        _active_active_timing(lab, report, options.timing_runs, variants, flows)
    # The control: the same crash without state sync must lose the crashed member's
    # groups' connections (and keep the survivor's), or the drills above prove nothing.
    _without_sync(lab)
    crashed = lab.nodes[0]
    control = drills.active_active_drill(
        lab, f"aa-control-{crashed.name}-{lab.advert_label}", crashed, flows, sync=False)
    report.active_active_control = control
    lab.progress(f"active-active control: {'as expected' if control.ok else 'NOT AS EXPECTED'}")
    if options.keep:
        lab.progress(f"lab back to the compiled configuration, {lab.back_to_compiled()}")
    _judge(report)


def drill_modes(modes: list[str], quick: bool) -> list[str]:
    """The failover drills to run: every mode, or with --quick the last (SNAT if any)."""
    return modes[-1:] if quick else list(modes)


def _failover_drills(
    lab: Lab, report: LabReport, options: LabOptions, on_backup: Callable[[Node], None],
    variants: Sequence[LabSource] = (),
) -> None:
    # The SNAT mode only makes sense for a flow the policy translates.
    modes = ["routed", "snat"] if "snat" in lab.flows else ["routed"]
    if "snat" not in lab.flows:
        report.warnings.append(
            "no expected TCP flow between two VIP segments is SNATed to a VIP by the policy "
            "(checked in the master's conntrack table): SNAT drills skipped"
        )
    # Every drill runs with the policy's own VRRP settings (the compiled files); a
    # faster advert interval is a policy of its own, or a --runs advert profile (a
    # variant of the model, compiled and installed like the policy: docs/lab.md).
    for i, mode in enumerate(drill_modes(modes, options.quick)):
        label = f"{mode}-{lab.advert_label}"
        report.failover.append(
            drills.failover_drill(lab, label, mode, while_on_backup=on_backup if i == 0 else None)
        )
    if not options.quick:
        _reboot(lab, report, modes[-1])
    _gateway(lab, report, modes[-1])
    if variants:
        _failover_timing(lab, report, options.timing_runs, variants, modes[-1])
    _without_sync(lab)
    mode = modes[-1]
    report.control = drills.failover_drill(
        lab,
        f"control-{mode}-{lab.advert_label}",
        mode,
        expect="die",
        failback=False,
        restore=False,
    )
    verdict = "died as expected" if report.control.ok else "DID NOT DIE"
    lab.progress(f"control: connection {verdict}")


def _without_sync(lab: Lab) -> None:
    """The control runs' set-up: conntrackd stopped (and kept from starting) on every
    member, and nf_conntrack_tcp_loose=0 so that no member picks up a connection it
    has no state for (the saved values come back with `Lab.back_to_compiled`)."""
    lab.progress("control: conntrackd off on every member, nf_conntrack_tcp_loose=0")
    for node in lab.nodes:
        lab.saved_sysctls[node.name] = node.exec(
            ["sysctl", "-n", "net.netfilter.nf_conntrack_tcp_loose"], check=False
        ).stdout.strip()
        node.disable_conntrackd()
        node.sysctl("net.netfilter.nf_conntrack_tcp_loose", "0")


TimingRun = tuple[str, bool, float | None, float | None]  # label, survived, takeover, gap


def _timing_series(lab: Lab, report: LabReport, runs: int, variants: Sequence[LabSource],
                   mode: str, run_one: Callable[[int], TimingRun],
                   settle: Callable[[], str], ready: Callable[[], None] = lambda: None) -> None:
    """A crash drill RUNS times per advert profile, for the failover time spread.

    Each profile's variant of the model is installed by `fwc install` (keepalived
    reloads, as on a real node) before its runs; afterwards the policy's own files
    go back the same way, so the control run and a kept lab are the policy as compiled.
    After each install SETTLE waits for the masters (and says who they are), READY
    for whatever else the runs need; RUN_ONE(n) is the n-th run of MODE's drill.
    """
    for variant in variants:
        lab.install_variant(variant)
        lab.progress(f"timing: {variant.origin}, installed by fwc install on every member")
        settle()
        ready()
        series = TimingSeries(lab.advert_label, mode, runs)
        for n in range(runs):
            label, survived, takeover_s, gap_s = run_one(n)
            series.labels.append(label)
            series.survived += survived
            if takeover_s is not None:
                series.takeover_s.append(takeover_s)
            if gap_s is not None:
                series.failover_gap_s.append(gap_s)
        report.timing.append(series)
        kind = " (active-active)" if mode == ACTIVE_ACTIVE_MODE else ""
        lab.progress(f"timing {series.advert}{kind}: {series.survived}/{series.runs} survived, "
                     f"takeover {spread(series.takeover_s)}, gap {spread(series.failover_gap_s)}")
    if variants:
        lab.install_variant(None)
        lab.progress(f"timing: the policy's own files installed again, {settle()}")
        ready()


def _failover_timing(lab: Lab, report: LabReport, runs: int, variants: Sequence[LabSource],
                     mode: str) -> None:
    """The failover drill in MODE as a timing series (`_timing_series`)."""

    def run_one(n: int) -> TimingRun:
        label = f"t-{mode}-{lab.advert_label}-{n + 1}"
        res = drills.failover_drill(lab, label, mode)
        return label, res.ok, res.takeover_s, res.failover_gap_s

    def settle() -> str:
        master, _ = lab.wait_master()
        return f"{master.name} is master"

    _timing_series(lab, report, runs, variants, mode, run_one, settle)


ACTIVE_ACTIVE_MODE = "active-active"  # a timing series' mode: the active-active drill


def _active_active_timing(lab: Lab, report: LabReport, runs: int,
                          variants: Sequence[LabSource], flows: dict[str, Flow]) -> None:
    """The active-active crash drill as a timing series (mode `active-active`).

    The members crash in turn (run n crashes member n mod count), each run with a
    connection through every vrrp-group and the failback after it. A run's takeover is
    until the survivor held every VIP, its gap the longest echo gap of its connections
    (the worst one); it survives when every connection survived the crash and the
    failback. After each install a connection through every group must work again."""

    def run_one(n: int) -> TimingRun:
        crashed = lab.nodes[n % len(lab.nodes)]
        label = f"t-aa-{crashed.name}-{lab.advert_label}-{n + 1}"
        res = drills.active_active_drill(lab, label, crashed, flows)
        gaps = [f.failover_gap_s for f in res.flows]
        worst = max(g for g in gaps if g is not None) if gaps and None not in gaps else None
        return label, res.ok, res.takeover_s, worst

    def settle() -> str:
        return f"groups on their masters after {lab.wait_groups():.2f} s"

    _timing_series(lab, report, runs, variants, ACTIVE_ACTIVE_MODE, run_one, settle,
                   lambda: _reachable_after_install(lab, report, flows))


def _reachable_after_install(lab: Lab, report: LabReport, flows: dict[str, Flow]) -> None:
    """Wait until a connection through every group works after a profile's install
    (`drills.groups_reachable`); a wait longer than one attempt is a warning that says
    how long the rolling reload kept a group unreachable."""
    took = drills.groups_reachable(lab, f"t-aa-reach-{lab.advert_label}", flows)
    if took is None:
        report.warnings.append(
            f"after installing the {lab.advert_label} profile no connection through every "
            f"vrrp-group worked within {waits.reachable_s(lab.plan):g} s: its timing runs "
            "may fail for that reason")
    elif took > 3.0:
        report.warnings.append(
            f"after installing the {lab.advert_label} profile the vrrp-groups carried new "
            f"connections again only after {took:.1f} s (during a rolling reload that "
            "changes the advert interval a member can briefly master the other's group: "
            "docs/lab.md, \"Failover times\")")
    lab.progress("timing: connections through every group "
                 + ("do not work" if took is None else f"work ({took:.1f} s)"))


def _gateway(lab: Lab, report: LabReport, mode: str) -> None:
    """The gateway drill for the first gateway a `track { ping }` watches (if any)."""
    for gateway, track in tracked_gateways(lab.plan.cluster, lab.plan.remap):
        if lab.plan.router_host(gateway) is None:
            # Said, not dropped: a run without its gateway drill must not read as one
            # whose gateway failover held.
            report.warnings.append(f"gateway drill for {gateway} skipped: no test host "
                                   "holds it (it lies on no segment of the lab)")
            continue
        lab.progress(f"gateway: {gateway} stops answering the master ({mode})")
        result = drills.gateway_drill(lab, f"gateway-{mode}-{lab.advert_label}", mode,
                                      gateway, track)
        report.gateway.append(result)
        lab.progress(f"gateway: {'held' if result.ok else 'FAILED'}")
        return


def _reboot(lab: Lab, report: LabReport, mode: str) -> None:
    lab.progress(f"reboot: power loss on the master, then the boot sequence ({mode})")
    result = reboot_drill(lab, mode)
    report.reboot = result
    if result.skipped:
        report.warnings.append(f"reboot drill skipped: {result.skipped}")
        return
    lab.progress(f"reboot: {'held' if result.ok else 'FAILED'}")


def _judge(report: LabReport) -> None:
    skipped = sorted({res.label for res in report.expectations if res.agrees is None})
    if skipped:
        # Not failures (the lab cannot send them), but not passes either: the verdict
        # line says PASS, so the report says which expectations it did not check.
        report.warnings.append(f"{len(skipped)} expectation probe(s) not checked (skipped): "
                               + "; ".join(skipped))
    for res in report.expectations:
        if res.agrees is False:
            report.failures.append(
                f"expectation '{res.label}' via {res.phase} {res.via}: "
                f"kernel {res.kernel} ({res.how})"
            )
    for fo in report.failover:
        if not fo.ok:
            report.failures.append(
                f"failover drill {fo.label}: connection did not survive "
                f"(failover {fo.survived_failover}, failback {fo.survived_failback})"
                + (f"; {'; '.join(fo.notes)}" if fo.notes else "")
            )
    if report.control is not None and not report.control.connected:
        report.failures.append(
            "control run: the connection could not be set up"
            + (f" ({'; '.join(report.control.notes)})" if report.control.notes else "")
        )
    elif report.control is not None and not report.control.ok:
        report.failures.append(
            "control run: the connection survived without conntrackd "
            "(the drill would not prove state sync)"
        )
    for series in report.timing:
        if not series.ok:
            report.failures.append(
                f"timing series {series.mode}-{series.advert}: {series.survived} of "
                f"{series.runs} crash runs kept the connection")
    aa_control = report.active_active_control
    if aa_control is not None and not aa_control.ok:
        report.failures.append(
            f"active-active control run {aa_control.label} (no state sync): " + "; ".join(
                f"{f.group} connected {f.connected}, failover {f.survived_failover} "
                f"(expected to {f.expect})" for f in aa_control.flows)
            + (f"; {'; '.join(aa_control.notes)}" if aa_control.notes else "")
            + ": the active-active drills do not prove state sync")
    for aa in report.active_active:
        if not aa.ok:
            report.failures.append(
                f"active-active drill {aa.label}: " + "; ".join(
                    f"{f.group} connected {f.connected}, failover {f.survived_failover}, "
                    f"failback {f.survived_failback}" for f in aa.flows)
                + (f"; {'; '.join(aa.notes)}" if aa.notes else ""))
    for gw in report.gateway:
        if not gw.ok:
            expected = (f"VIPs back after the preempt delay ({gw.preempt_delay_s:.0f} s)"
                        if gw.preempt else "VIPs staying on the backup (preempt off)")
            report.failures.append(
                f"gateway drill {gw.label}: takeover {gw.takeover_s}, connection "
                f"{gw.survived_takeover}/{gw.survived_return}, expected {expected}"
                + (f"; {'; '.join(gw.notes)}" if gw.notes else ""))
    rb = report.reboot
    if rb is not None and not rb.skipped and not rb.ok:
        report.failures.append(f"reboot drill {rb.label}: " + "; ".join(rb.notes))
    # Probed through the master, so through the backup too: whether a failover drill
    # or `drills.failover_for_probes` got there (its takeover can fail as well).
    phases = {r.phase for r in report.expectations if r.agrees is not None}
    if "master" in phases and "backup" not in phases:
        report.failures.append("expectations were not probed through the backup")
