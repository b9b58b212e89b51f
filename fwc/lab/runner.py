"""Bring the lab up, run the drills, and always tear it down.

Teardown runs on success, on failure, on an exception and on Ctrl-C or
SIGTERM (the handler turns the signal into an exception so the ``finally``
runs); only ``--keep`` skips it, and then the teardown command is printed.
"""

from __future__ import annotations

import contextlib
import ipaddress
import signal
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from fwc.lab import drills
from fwc.lab.daemons import KEEPALIVED_CONF, Node, fast_keepalived
from fwc.lab.netns import PYTHON, LabError, LabState, new_prefix, run, teardown
from fwc.lab.reboot import RebootResult, reboot_drill
from fwc.lab.topology import (
    HostPlan,
    IPAddress,
    LabCluster,
    LabPlan,
    Remap,
    all_vips,
    describe,
    doc_range_violations,
    plan,
    plan_remap,
    remap_cluster,
)

PROBE_PY = Path(__file__).with_name("probe.py")


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


@dataclass
class Flow:
    src: IPAddress
    src_ns: str
    dst: IPAddress
    dst_ns: str
    dst_segment: str
    port: int


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
    expectations: list[drills.ProbeResult] = field(default_factory=list)
    failover: list[drills.FailoverResult] = field(default_factory=list)
    control: drills.FailoverResult | None = None
    reboot: RebootResult | None = None
    warnings: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    error: str | None = None
    kept: bool = False
    fast_config: str = ""
    teardown: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures and self.error is None


class Lab:
    """The running lab: plan, state, member nodes and test hosts."""

    def __init__(
        self,
        plan_: LabPlan,
        compiled: Path,
        logdir: Path,
        remap: Remap | None,
        progress: Callable[[str], None],
    ) -> None:
        self.plan = plan_
        self.compiled = compiled
        self.logdir = logdir
        self.remap = remap
        self.progress = progress
        self.state = LabState(plan_.prefix)
        self.probe_py = PROBE_PY
        self.vip_set = {str(v.ip) for v in all_vips(plan_)}
        self.advert_label = advert_label(plan_.cluster.advert)
        self.nodes: list[Node] = []
        self.candidates = self._candidate_flows()
        self.flow = self.candidates[0] if self.candidates else None
        # mode -> the connection its failover drill uses ("snat" once classified)
        self.flows: dict[str, Flow] = {"routed": self.flow} if self.flow else {}
        self.listen: dict[str, tuple[set[int], set[int]]] = {}
        # Routes the lab adds to members (to the upstream host); a member
        # restored after a crash gets them back, as a rebooted node would.
        self.member_routes: dict[str, list[list[str]]] = {}
        self.saved_sysctls: dict[str, str] = {}  # tcp_loose before the control run
        # Callers that drive the lab step by step (tests, fwc install) get a
        # report to collect warnings in without building one themselves.
        self.report = LabReport(plan_.cluster.name, plan_.prefix, str(logdir))
        self.host_procs: dict[str, Any] = {}

    # ------------------------------------------------------------ helpers
    def host_argv(self, ns: str, argv: Sequence[str]) -> list[str]:
        # Test hosts need no mount namespace: only their network is private.
        return ["nsenter", f"--net=/run/netns/{ns}", "--", *argv]

    def node(self, name: str) -> Node:
        return next(n for n in self.nodes if n.name == name)

    def current_master(self) -> Node:
        for node in self.nodes:
            if node.vips_held() == self.vip_set:
                return node
        raise LabError("no member holds all VIPs")

    def listener_for(self, node: Node) -> tuple[Sequence[int], Sequence[int], Path]:
        """What NODE listens on for `-> firewall` probes (the same on every member)."""
        tcp, udp = self.listen.get("firewall", (set(), set()))
        return sorted(tcp), sorted(udp), self.probe_py

    def _candidate_flows(self) -> list[Flow]:
        """Drill-2 connections: allowed TCP expectations between two VIP segments (IPv4)."""
        vip_segments = {s.name for s in self.plan.segments if s.vips and not s.is_sync}
        snat_out = {s.out_segment for s in self.plan.cluster.snat}
        candidates = []
        for probe in self.plan.probes:
            e = probe.expectation
            if probe.skip or e.verdict != "allow" or e.proto != "tcp" or not e.port:
                continue
            s, d = probe.src, probe.dst
            if s is None or d is None or s.address is None or d.address is None:
                continue
            if s.segment == d.segment or not {s.segment, d.segment} <= vip_segments:
                continue
            if s.address.version != 4:
                continue
            candidates.append(
                Flow(
                    s.address, s.host_ns or "", d.address, d.host_ns or "", d.segment or "", e.port
                )
            )
        candidates.sort(key=lambda f: f.dst_segment not in snat_out)
        return candidates

    def classify_snat(self, master: Node) -> Flow | None:
        """The first candidate the policy really SNATs to a VIP.

        Read from the master's conntrack entries left by the expectation
        probes: a flow is translated when its reply goes to a VIP. Asking the
        kernel avoids re-implementing the policy's nonat/snat ordering here.
        """
        vips = {str(v.ip) for v in all_vips(self.plan)}
        for flow in self.candidates:
            proc = master.exec(
                [
                    "conntrack",
                    "-L",
                    "-p",
                    "tcp",
                    "-s",
                    str(flow.src),
                    "-d",
                    str(flow.dst),
                    "--dport",
                    str(flow.port),
                ],
                check=False,
            )
            for line in proc.stdout.splitlines():
                dsts = [f.split("=", 1)[1] for f in line.split() if f.startswith("dst=")]
                if len(dsts) >= 2 and dsts[1] in vips:
                    return flow
        return None

    # ------------------------------------------------------------ bring-up
    def build(self) -> None:
        p = self.plan
        self.state.create()
        self.state.add_netns(p.sw_ns)
        for seg in p.segments:
            self.state.add_bridge(p.sw_ns, seg.bridge)
        for ns in [*p.member_ns.values(), *(h.ns for h in p.hosts)]:
            self.state.add_netns(ns)
        bridges = {s.name: s.bridge for s in p.segments}
        for port in p.ports:
            self.state.add_port(p.sw_ns, bridges[port.segment], port.port, port.ns, port.device)
        for member in p.cluster.members:
            ns = p.member_ns[member.name]
            for link in member.links.values():
                for addr in link.addresses:
                    extra = ["nodad"] if ipaddress.ip_interface(addr).version == 6 else []
                    run(["ip", "-n", ns, "addr", "add", addr, "dev", link.device, *extra])
        for host in p.hosts:
            self._address_host(host)
        if p.upstream_segment is not None:
            for member in p.cluster.members:
                link = member.links.get(p.upstream_segment)
                if link is None:
                    continue
                for fam, via in p.upstream.items():
                    route = [f"-{fam}", "route", "replace", "default", "via", str(via)]
                    route += ["dev", link.device]
                    self.member_routes.setdefault(member.name, []).append(route)
                    run(["ip", "-n", p.member_ns[member.name], *route])
        self.progress(
            f"built {len(p.member_ns)} members, {len(p.hosts)} test hosts, "
            f"{len(p.segments)} segments (prefix {p.prefix})"
        )

    def _address_host(self, host: HostPlan) -> None:
        for addr in [*host.addresses, *host.outside]:
            extra = ["nodad"] if addr.version == 6 else []
            run(["ip", "-n", host.ns, "addr", "add", str(addr), "dev", host.device, *extra])
        self.set_default_routes(host, True)

    def set_default_routes(self, host: HostPlan, present: bool) -> None:
        for gw in host.gateways:
            fam = "-6" if gw.version == 6 else "-4"
            if present:
                run(["ip", fam, "-n", host.ns, "route", "replace", "default", "via", str(gw)])
            else:
                run(["ip", fam, "-n", host.ns, "route", "del", "default"], check=False)

    def start_members(self) -> None:
        p = self.plan
        vips = all_vips(p)
        for member in p.cluster.members:
            node = Node(
                self.state,
                member.name,
                p.member_ns[member.name],
                self.compiled / member.name,
                [lk.device for lk in member.links.values()],
                vips,
                self.logdir,
                self.remap,
            )
            node.routes = self.member_routes.get(member.name, [])
            node.link_addresses = {lk.device: list(lk.addresses) for lk in member.links.values()}
            self.nodes.append(node)
            node.create_mount_ns()
            installed = node.install()
            self.report.warnings.extend(node.load_firewall())
            problem = node.config_test()
            if problem:
                self.report.warnings.append(f"{member.name}: {problem}")
            self.progress(
                f"{member.name}: installed {', '.join(installed)}; rules and sysctls loaded"
            )
        for node in self.nodes:
            node.start_conntrackd()
        for node in self.nodes:
            node.start_keepalived()

    def start_listeners(self) -> None:
        for probe in self.plan.probes:
            e, d = probe.expectation, probe.dst
            if probe.skip or d is None or e.proto == "icmp" or not e.port:
                continue
            key = d.host_ns if d.address is not None else "firewall"
            tcp, udp = self.listen.setdefault(key or "", (set(), set()))
            (tcp if e.proto == "tcp" else udp).add(e.port)
        for flow in self.candidates:
            self.listen.setdefault(flow.dst_ns, (set(), set()))[0].add(flow.port)
        for ns, (tcp, udp) in self.listen.items():
            if ns == "firewall":
                for node in self.nodes:
                    node.start_listener(sorted(tcp), sorted(udp), self.probe_py)
                continue
            argv = [
                PYTHON,
                str(self.probe_py),
                "serve",
                "--tcp",
                *map(str, sorted(tcp)),
                "--udp",
                *map(str, sorted(udp)),
            ]
            self.state.spawn(
                f"{ns}/listener",
                self.host_argv(ns, argv),
                self.logdir / f"{ns.removeprefix(self.plan.prefix + '-')}-listener.log",
            )

    def expected_master(self) -> str | None:
        """With preemption the highest priority member must end up master."""
        if not self.plan.cluster.preempt:
            return None
        return max(self.plan.cluster.members, key=lambda m: m.priority).name

    def wait_master(self, timeout: float | None = None) -> tuple[Node, float]:
        """Exactly one member holding every VIP, the others none, and settled.

        Right after a restart a lower priority member can win briefly before
        the preferred one preempts; returning then would fail the wrong node
        in the next drill. So wait for the expected master (with preemption),
        or for one sole master that stays put for a second (without).
        """
        # The preferred master only preempts once its preempt_delay has passed.
        timeout = timeout if timeout is not None else 20.0 + self.plan.cluster.preempt_delay
        expected = self.expected_master()
        found: list[Node] = []
        since: list[float] = []

        def converged() -> bool:
            held = {n.name: n.vips_held() for n in self.nodes}
            masters = [n for n in self.nodes if held[n.name] == self.vip_set]
            others = [n for n in self.nodes if n not in masters]
            sole = len(masters) == 1 and all(not held[n.name] for n in others)
            if not sole or (expected is not None and masters[0].name != expected):
                since.clear()
                return False
            if not found or found[0] is not masters[0]:
                found[:] = masters
                since[:] = [time.monotonic()]
            return expected is not None or time.monotonic() - since[0] >= 1.0

        took = drills.wait_for(converged, timeout)
        if took is None:
            held = {n.name: sorted(n.vips_held()) for n in self.nodes}
            want = f"{expected} as the only master" if expected else "a single master"
            raise LabError(
                f"no {want} within {timeout:.0f} s (VIPs held: {held}); "
                f"see {self.logdir}/*-keepalived.log"
            )
        return found[0], took

    # ------------------------------------------------------------ drill set-up
    def prepare_mode(self, mode: str) -> Callable[[], None]:
        """Routed: exempt the drill flow from SNAT. SNAT: the far host loses its way back."""
        flow = self.flows[mode]
        if mode == "routed":
            rule = ["-s", f"{flow.src}/32", "-d", f"{flow.dst}/32", "-j", "ACCEPT"]
            for node in self.nodes:
                node.exec(["iptables", "-t", "nat", "-I", "POSTROUTING", "1", *rule])

            def undo_routed() -> None:
                for node in self.nodes:
                    node.exec(["iptables", "-t", "nat", "-D", "POSTROUTING", *rule], check=False)

            return undo_routed
        host = next(h for h in self.plan.hosts if h.ns == flow.dst_ns)
        self.set_default_routes(host, False)
        return lambda: self.set_default_routes(host, True)

    def back_to_compiled(self) -> Node:
        """After the drills, for --keep: every member as compiled, synced, one master.

        Undoes the control run (conntrackd masked, tcp_loose=0, old master
        down) and the 100 ms keepalived, so the kept lab is the cluster as
        compiled rather than the last drill's wreckage.
        """
        for node in self.nodes:
            node.stop_keepalived()
            node.enable_conntrackd()
            loose = self.saved_sysctls.get(node.name)
            if loose:
                node.sysctl("net.netfilter.nf_conntrack_tcp_loose", loose)
            node.reinstall_keepalived()
        for node in self.nodes:
            if "conntrackd" in node.daemons:
                node.start_keepalived()
            else:  # crashed in the control run, or conntrackd stopped
                node.stop_conntrackd()
                node.restore(self.listener_for(node) if not node.helpers else None)
        self.advert_label = advert_label(self.plan.cluster.advert)
        master, _ = self.wait_master()
        return master

    def switch_advert(self, advert: float, generated: dict[str, str] | None = None) -> str:
        """Restart keepalived on every member with ADVERT seconds (VRRPv3).

        GENERATED (member -> keepalived.conf) is used when given; otherwise the
        compiled file is rewritten. Returns where the configs came from.
        """
        for node in self.nodes:
            node.stop_keepalived()
        source = "generated by fwc" if generated else "rewritten from the compiled file"
        for node in self.nodes:
            if generated and node.name in generated:
                text = generated[node.name]
                if self.remap is not None:
                    text = self.remap.rewrite(text)
            else:
                text = fast_keepalived(node.exec(["cat", KEEPALIVED_CONF]).stdout, advert)
                source = "rewritten from the compiled file"
            node.write(KEEPALIVED_CONF, text, 0o644)
        for node in self.nodes:
            node.start_keepalived()
        self.advert_label = advert_label(advert)
        return source


def advert_label(seconds: float) -> str:
    return f"{seconds * 1000:g}ms" if seconds < 1 else f"{seconds:g}s"


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
                f"expectation '{res.expectation}' via {res.phase} {res.via}: "
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
    rb = report.reboot
    if rb is not None and not rb.skipped and not rb.ok:
        report.failures.append(f"reboot drill {rb.label}: " + "; ".join(rb.notes))
    phases = {r.phase for r in report.expectations if r.agrees is not None}
    if report.expectations and "backup" not in phases and report.failover:
        report.failures.append("expectations were not probed through the backup")
