"""The running lab: its plan, state, member nodes and test hosts.

What the drills act on. It imports none of the drills nor the runner, which
drives it (see fwc/lab/results.py for why the direction matters). The
compiled files reach the members through `fwc install` itself
(`fwc.install.plan.install_cluster` over each member's `NetnsTransport`):
staged, tested, snapshotted, applied and loaded in the order of the table of
generated files, then confirmed, exactly as on a real node.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from fwc.backend.files import BY_NAME
from fwc.install.plan import InstallOptions, automatic_confirmer, install_cluster
from fwc.lab import waits
from fwc.lab.adapter import LabSource, advert_label
from fwc.lab.daemons import CONNTRACKD_CONF, KEEPALIVED_CONF, Node
from fwc.lab.filters import PacketFilter, packet_filter
from fwc.lab.netns import (
    PYTHON,
    LabError,
    LabRefused,
    LabState,
    Proc,
    await_line,
    log_size,
    run,
)
from fwc.lab.results import Flow, LabReport, wait_for
from fwc.lab.topology import HostPlan, LabPlan, all_vips
from fwc.model.topology import link_scoped

# The daemons the drills run: a member without their files cannot be drilled.
NEEDED = tuple(name for name, f in BY_NAME.items()
               if f.path in (KEEPALIVED_CONF, CONNTRACKD_CONF))

PROBE_PY = Path(__file__).with_name("probe.py")


class Lab:
    """The running lab: plan, state, member nodes and test hosts."""

    def __init__(
        self,
        plan_: LabPlan,
        files: Mapping[str, Mapping[str, str]],
        logdir: Path,
        progress: Callable[[str], None],
    ) -> None:
        # The plan of what runs on the members: the policy's (`policy_plan`), or while an
        # advert profile is installed its variant's, whose VRRP timers the waits follow.
        self.plan = plan_
        self.policy_plan = plan_
        self.files = files  # member -> file name -> text, as compiled (before --remap)
        self.logdir = logdir
        self.progress = progress
        self.state = LabState(plan_.prefix)
        self.probe_py = PROBE_PY
        known = packet_filter(plan_.cluster.backend)
        if known is None:
            raise LabRefused(f"the drills do not know the {plan_.cluster.backend} packet "
                             "filter; nothing was started")
        missing = [tool for tool in known.tools if shutil.which(tool) is None]
        if missing:
            raise LabRefused(f"fwc lab needs {', '.join(missing)} on PATH for a cluster "
                             f"compiled for {plan_.cluster.backend}; nothing was started")
        # What the drills run on the members' packet filter (fwc.lab.filters).
        self.packet_filter: PacketFilter = known
        self.vip_set = {str(v.ip) for v in all_vips(plan_)}
        self.advert_label = advert_label(plan_.advert)
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
        # `rto_min` on the test hosts' routes (ms; None: the kernel's 200 ms minimum)
        self.rto_min_ms: int | None = None

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
        snat_out = set(self.plan.snat_out)
        candidates = []
        for probe in self.plan.probes:
            e = probe.probe
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
        for port in p.ports:
            for addr in port.addresses:  # a member's, as compiled
                extra = ["nodad"] if addr.version == 6 else []
                run(["ip", "-n", port.ns, "addr", "add", str(addr), "dev", port.device, *extra])
        for host in p.hosts:
            self._address_host(host)
        if p.upstream_segment is not None:
            for member in p.cluster.members:
                link = member.link(p.upstream_segment)
                if link is None:
                    continue
                for fam, via in p.upstream.items():
                    if fam in p.policy_default:
                        continue  # the policy's default route: fwc install puts it there
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
        if self.rto_min_ms is not None:
            # the on-link routes too: a server answers a SNATed client's VIP on-link
            for fam in ("-4", "-6"):
                listed = run(["ip", fam, "-n", host.ns, "-o", "route", "show"], check=False)
                for line in listed.stdout.splitlines():
                    if line.startswith("default"):
                        continue
                    words = line.split("\\")[0].split()
                    run(["ip", fam, "-n", host.ns, "route", "change", *words,
                         *self._rto_words()], check=False)

    def _rto_words(self) -> list[str]:
        return [] if self.rto_min_ms is None else ["rto_min", f"{self.rto_min_ms}ms"]

    def set_default_routes(self, host: HostPlan, present: bool) -> None:
        for gw in host.gateways:
            fam = "-6" if gw.version == 6 else "-4"
            if present:
                # A link-local gateway (a VRRPv3 virtual link-local VIP, what hosts
                # following router advertisements use) is reached on the host's device.
                dev = ["dev", host.device] if link_scoped(gw) else []
                run(["ip", fam, "-n", host.ns, "route", "replace", "default", "via", str(gw),
                     *dev, *self._rto_words()])
            else:
                run(["ip", fam, "-n", host.ns, "route", "del", "default"], check=False)

    def start_members(self) -> None:
        """Mount namespaces, then `fwc install` of the compiled files, then the daemons."""
        p = self.plan
        vips = all_vips(p)
        for member in p.cluster.members:
            ports = p.member_ports(member.name)
            node = Node(self.state, member.name, p.member_ns[member.name],
                        [pt.device for pt in ports], vips, self.logdir, self.packet_filter)
            node.routes = self.member_routes.get(member.name, [])
            node.link_addresses = {pt.device: [str(a) for a in pt.addresses] for pt in ports}
            self.nodes.append(node)
            node.create_mount_ns()
        self.install_members()
        for node in self.nodes:
            node.start_conntrackd()
        for node in self.nodes:
            node.start_keepalived()

    def member_files(self, member: str,
                     compiled: Mapping[str, Mapping[str, str]] | None = None) -> dict[str, str]:
        """MEMBER's compiled files (COMPILED, else the policy's) as they go onto the node
        (with --remap: rewritten)."""
        files = dict((self.files if compiled is None else compiled).get(member, {}))
        missing = [name for name in NEEDED if name not in files]
        if missing:
            raise LabRefused(f"{member}: the compiled files lack {', '.join(missing)}: the "
                             "drills need keepalived and conntrackd (a sync link)")
        remap = self.plan.remap
        if not remap.pairs:
            return files
        for name, text in files.items():
            files[name] = remap.rewrite(text)
            left = remap.leftovers(files[name])
            if left:
                raise LabError(f"{member}/{name}: --remap left {', '.join(left[:5])}")
        return files

    def install_members(self, variant: LabSource | None = None) -> None:
        """Every member's files with `fwc install --all --confirm --transport netns`.

        The install code's own steps (backups first; stage, test, snapshot, apply
        and load in the table's order, confirm) over each member's
        `NetnsTransport`. At bring-up keepalived and conntrackd are not running
        yet, so their reloads say so and the lab starts them afterwards, as a
        booting node's units would; a VARIANT (an advert profile's model and files)
        installed later reloads the running keepalived, as on a live cluster.
        Its output goes to LOGDIR/install.log.
        """
        cluster = self.policy_plan.cluster if variant is None else variant.cluster
        compiled = None if variant is None else variant.files
        files = {m.name: self.member_files(m.name, compiled) for m in cluster.members}
        transports = {n.name: n.transport for n in self.nodes}
        log = self.logdir / "install.log"
        offset = log.stat().st_size if log.exists() else 0
        with open(log, "a", encoding="utf-8") as out:
            options = InstallOptions(systemd=False, out=out)
            results = install_cluster(cluster, list(cluster.members),
                                      files, transports, options, automatic_confirmer)
        failed = [r for r in results if not r.ok]
        if failed or len(results) != len(self.nodes):
            why = "; ".join(f"{r.member}: {r.stage} failed: {r.message}" for r in failed)
            raise LabError(f"fwc install into the lab failed ({why or 'not every member'}); "
                           f"see {log}")
        warnings = apply_warnings(log.read_bytes()[offset:].decode("utf-8", "replace"))
        self.report.warnings.extend(w for w in warnings if w not in self.report.warnings)
        for r in results:
            self.progress(f"{r.member}: fwc install put {len(files[r.member])} files in place "
                          "and loaded them (confirmed)")

    def install_variant(self, variant: LabSource | None) -> None:
        """VARIANT's files (an advert profile) onto every member by `fwc install`, or
        with None the policy's own again; the drills' labels and waits follow its interval."""
        self.install_members(variant)
        self.plan = self.policy_plan if variant is None else replace(
            self.policy_plan, cluster=variant.cluster)
        self.advert_label = advert_label(self.plan.advert)

    def start_listeners(self) -> None:
        for probe in self.plan.probes:
            e, d = probe.probe, probe.dst
            if probe.skip or d is None or e.proto == "icmp" or not e.port:
                continue
            key = d.host_ns if d.address is not None else "firewall"
            tcp, udp = self.listen.setdefault(key or "", (set(), set()))
            (tcp if e.proto == "tcp" else udp).add(e.port)
        for flow in self.candidates:
            self.listen.setdefault(flow.dst_ns, (set(), set()))[0].add(flow.port)
        started: list[tuple[Proc, int]] = []
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
            log = self.logdir / f"{ns.removeprefix(self.plan.prefix + '-')}-listener.log"
            # (measured before the spawn: a listener quick to say `serving` would
            # otherwise have said it before the offset, and never be seen ready)
            offset = log_size(log)
            started.append((self.state.spawn(f"{ns}/listener", self.host_argv(ns, argv), log),
                            offset))
        # Every port bound before any probe: a `deny` probe's refusal must come from
        # the firewall, not from a destination where nothing listens (yet).
        for proc, offset in started:
            await_line(proc, "serving", offset)

    def expected_master(self) -> str | None:
        """With preemption the highest priority member must end up master."""
        if not self.plan.preempt:
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
        timeout = timeout if timeout is not None else waits.election_s(self.plan)
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

        took = wait_for(converged, timeout)
        if took is None:
            held = {n.name: sorted(n.vips_held()) for n in self.nodes}
            want = f"{expected} as the only master" if expected else "a single master"
            raise LabError(
                f"no {want} within {timeout:.0f} s at advert {self.advert_label} (VIPs "
                f"held: {held}); "
                f"see {self.logdir}/*-keepalived.log"
            )
        return found[0], took

    def wait_groups(self, timeout: float | None = None) -> float:
        """Active-active: every member holds exactly its own groups' VIPs."""
        timeout = timeout if timeout is not None else waits.election_s(self.plan)
        expected = self.plan.expected_vips()
        took = wait_for(lambda: all(n.vips_held() == expected[n.name] for n in self.nodes),
                        timeout)
        if took is None:
            held = {n.name: sorted(n.vips_held()) for n in self.nodes}
            raise LabError(f"the vrrp-groups did not settle on their masters within "
                           f"{timeout:.0f} s at advert {self.advert_label} (VIPs held: "
                           f"{held}); see "
                           f"{self.logdir}/*-keepalived.log")
        return took

    def group_flows(self) -> dict[str, Flow]:
        """Per vrrp-group, the first drill connection whose two segments are its own."""
        out: dict[str, Flow] = {}
        for group in self.plan.cluster.groups:
            for flow in self.candidates:
                src = next((h.segment for h in self.plan.hosts if h.ns == flow.src_ns), None)
                if src in group.interfaces and flow.dst_segment in group.interfaces:
                    out[group.name] = flow
                    break
        return out

    # ------------------------------------------------------------ drill set-up
    def prepare_mode(self, mode: str) -> Callable[[], None]:
        """Routed: exempt the drill flow from SNAT. SNAT: the far host loses its way back."""
        flow = self.flows[mode]
        if mode == "routed":
            add, remove = self.packet_filter.exempt(flow.src, flow.dst)
            for node in self.nodes:
                for argv, stdin in add:
                    node.exec(list(argv), input=stdin)

            def undo_routed() -> None:
                # A member wiped meanwhile (the reboot drill) has no exemption left.
                for node in self.nodes:
                    for argv, stdin in remove:
                        node.exec(list(argv), input=stdin, check=False)

            return undo_routed
        host = next(h for h in self.plan.hosts if h.ns == flow.dst_ns)
        self.set_default_routes(host, False)
        return lambda: self.set_default_routes(host, True)

    def back_to_compiled(self) -> str:
        """After the drills, for --keep: every member as compiled, synced, one master (with
        vrrp-groups: each group on its master). Returns what holds the VIPs now.

        Undoes the control run (conntrackd masked, tcp_loose=0, old master
        down), so the kept lab is the cluster as compiled rather than the last
        drill's wreckage. The files on the members were never changed.
        """
        for node in self.nodes:
            node.stop_keepalived()
            node.enable_conntrackd()
            loose = self.saved_sysctls.get(node.name)
            if loose:
                node.sysctl("net.netfilter.nf_conntrack_tcp_loose", loose)
        for node in self.nodes:
            if "conntrackd" in node.daemons:
                node.start_keepalived()
            else:  # crashed in the control run, or conntrackd stopped
                node.stop_conntrackd()
                node.restore(self.listener_for(node) if not node.helpers else None)
        if self.plan.active_active:
            self.wait_groups()
            return "every vrrp-group on its master"
        master, _ = self.wait_master()
        return f"{master.name} is master"


def apply_warnings(install_log: str) -> list[str]:
    """What the install's apply step printed (e.g. sysctl keys the kernel refuses inside a
    network namespace, such as the global nf_conntrack_max): report warnings."""
    out: list[str] = []
    applying: set[str] = set()
    for line in install_log.splitlines():
        member, sep, text = line.partition(": ")
        if not sep:
            continue
        if text == "applying":
            applying.add(member)
        elif text.startswith(("reloading ", "cluster settled", "confirmed")):
            applying.discard(member)
        elif member in applying:
            out.append(f"{member}: {text} (while loading; not settable per namespace?)")
    return out
