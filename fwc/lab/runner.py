"""Bring the lab up, run the drills, and always tear it down.

Teardown runs on success, on failure, on an exception and on Ctrl-C or
SIGTERM (the handler turns the signal into an exception so the ``finally``
runs); only ``--keep`` skips it, and then the teardown command is printed.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from fwc.lab import drills
from fwc.lab.daemons import Node
from fwc.lab.netns import LabError, new_prefix, teardown
from fwc.lab.reboot import reboot_drill
from fwc.lab.results import LabReport, TimingSeries, spread
from fwc.lab.running import Lab, advert_label
from fwc.lab.topology import (
    LabCluster,
    Remap,
    describe,
    doc_range_violations,
    plan,
    plan_remap,
    remap_cluster,
)


class LabRefused(LabError):
    """The policy cannot be run in the lab as given (e.g. non-documentation ranges)."""


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
    # member -> keepalived.conf for the 100 ms runs, as fwc generates it; without
    # it the compiled file is rewritten (VRRPv3, advert_int 0.1, no auth).
    fast_keepalived: dict[str, str] | None = None
    # Issue 14: N crash runs per advert profile (0: none), reported as min/median/max;
    # the profiles (seconds) and, per profile, fwc's keepalived.conf per member.
    timing_runs: int = 0
    timing_adverts: tuple[float, ...] = (0.1, 0.05)
    timing_keepalived: dict[float, dict[str, str]] | None = None


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


def _stderr_progress(start: float) -> Callable[[str], None]:
    def emit(msg: str) -> None:
        print(f"[lab {time.monotonic() - start:6.1f}s] {msg}", file=sys.stderr, flush=True)

    return emit


def run_lab_cluster(cluster: LabCluster, compiled: Path, options: LabOptions) -> LabReport:
    """Run the whole lab for CLUSTER using the compiled files in COMPILED/<member>/."""
    t0 = time.monotonic()
    progress = options.progress or _stderr_progress(t0)
    prefix = options.prefix or new_prefix()
    logdir = options.logdir or Path(f"/tmp/fwc-lab-{prefix}")
    logdir.mkdir(parents=True, exist_ok=True)
    report = LabReport(cluster.name, prefix, str(logdir))
    remap: Remap | None = None
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
        cluster = remap_cluster(cluster, remap)
        report.remap = [f"{old} -> {new}" for old, new in remap.pairs]
        for line in report.remap:
            progress(f"remapped {line}")
    lab_plan = plan(cluster, prefix)
    report.topology = list(describe(lab_plan))
    for line in report.topology:
        progress(line)
    lab = Lab(lab_plan, compiled, logdir, remap, progress)
    lab.report = report
    try:
        with _signals_raise():
            _run(lab, report, options)
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
        report.duration_s = round(time.monotonic() - t0, 1)
    return report


def _run(lab: Lab, report: LabReport, options: LabOptions) -> None:
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
        _failover_drills(lab, report, options, on_backup)
    if options.keep and (lab.flow is not None or report.fast_config):
        master = lab.back_to_compiled()
        lab.progress(f"lab back to the compiled configuration, {master.name} is master")
    if lab.plan.probes and not any(r.phase == "backup" for r in report.expectations):
        # No drill reached the backup (none possible, or the first one failed):
        # the expectations must still be checked through it.
        lab.progress("failing the master once more to probe the expectations through the backup")
        drills.failover_for_probes(lab, on_backup)
    _judge(report)


FAST_ADVERT = 0.1


def failover_runs(advert: float, modes: list[str], quick: bool) -> list[tuple[float, str]]:
    """(advert, mode) per failover drill: the policy's interval, then 100 ms side by side."""
    runs: list[tuple[float, str]] = []
    if not quick:
        runs += [(advert, m) for m in modes]
    if quick or advert > FAST_ADVERT:
        runs += [(FAST_ADVERT, m) for m in (modes[-1:] if quick else modes)]
    return runs


def _failover_drills(
    lab: Lab, report: LabReport, options: LabOptions, on_backup: Callable[[Node], None]
) -> None:
    # The SNAT mode only makes sense for a flow the policy translates.
    modes = ["routed", "snat"] if "snat" in lab.flows else ["routed"]
    if "snat" not in lab.flows:
        report.warnings.append(
            "no expected TCP flow between two VIP segments is SNATed to a VIP by the policy "
            "(checked in the master's conntrack table): SNAT drills skipped"
        )
    runs = failover_runs(lab.plan.cluster.advert, modes, options.quick)
    first = True
    # The reboot drill boots the node with its compiled configuration, so it
    # runs after the policy's own advert runs and before the 100 ms switch.
    reboot_at = sum(advert == lab.plan.cluster.advert for advert, _ in runs)
    for i, (advert, mode) in enumerate([*runs, (0.0, "")]):
        if i == reboot_at and not options.quick:
            _reboot(lab, report, modes[-1])
        if not mode:
            break
        if advert != lab.plan.cluster.advert and lab.advert_label != advert_label(advert):
            source = lab.switch_advert(advert, options.fast_keepalived)
            lab.progress(
                f"switched every member to VRRPv3 with advert {advert_label(advert)} "
                f"(keepalived.conf {source})"
            )
            report.fast_config = source
            lab.wait_master()
        label = f"{mode}-{lab.advert_label}"
        report.failover.append(
            drills.failover_drill(lab, label, mode, while_on_backup=on_backup if first else None)
        )
        first = False
    if options.timing_runs > 0:
        _timing_series(lab, report, options, modes[-1])
    lab.progress("control: conntrackd off on every member, nf_conntrack_tcp_loose=0")
    for node in lab.nodes:
        lab.saved_sysctls[node.name] = node.exec(
            ["sysctl", "-n", "net.netfilter.nf_conntrack_tcp_loose"], check=False
        ).stdout.strip()
        node.disable_conntrackd()
        node.sysctl("net.netfilter.nf_conntrack_tcp_loose", "0")
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


def _timing_series(lab: Lab, report: LabReport, options: LabOptions, mode: str) -> None:
    """The crash drill N times per advert profile, for the failover time spread."""
    generated = options.timing_keepalived or {}
    for advert in options.timing_adverts:
        if lab.advert_label != advert_label(advert):
            confs = generated.get(advert) or (
                options.fast_keepalived if advert == FAST_ADVERT else None)
            source = lab.switch_advert(advert, confs)
            lab.progress(f"timing: every member on VRRPv3 advert {advert_label(advert)} "
                         f"(keepalived.conf {source})")
            lab.wait_master()
        series = TimingSeries(lab.advert_label, mode, options.timing_runs)
        for n in range(options.timing_runs):
            label = f"t-{mode}-{lab.advert_label}-{n + 1}"
            res = drills.failover_drill(lab, label, mode)
            series.labels.append(label)
            if res.ok:
                series.survived += 1
            if res.takeover_s is not None:
                series.takeover_s.append(res.takeover_s)
            if res.failover_gap_s is not None:
                series.failover_gap_s.append(res.failover_gap_s)
        report.timing.append(series)
        lab.progress(f"timing {series.advert}: {series.survived}/{series.runs} survived, "
                     f"takeover {spread(series.takeover_s)}, gap {spread(series.failover_gap_s)}")


def _reboot(lab: Lab, report: LabReport, mode: str) -> None:
    lab.progress(f"reboot: power loss on the master, then the boot sequence ({mode})")
    result = reboot_drill(lab, mode)
    report.reboot = result
    if result.skipped:
        report.warnings.append(f"reboot drill skipped: {result.skipped}")
        return
    lab.progress(f"reboot: {'held' if result.ok else 'FAILED'}")


def _judge(report: LabReport) -> None:
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
    rb = report.reboot
    if rb is not None and not rb.skipped and not rb.ok:
        report.failures.append(f"reboot drill {rb.label}: " + "; ".join(rb.notes))
    phases = {r.phase for r in report.expectations if r.agrees is not None}
    if report.expectations and "backup" not in phases and report.failover:
        report.failures.append("expectations were not probed through the backup")
