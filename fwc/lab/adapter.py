"""fwc's policy model -> LabCluster, and the compiled output the lab runs.

Kept thin on purpose: the lab itself only knows LabCluster, so changes to the
model touch this file alone.
"""

from __future__ import annotations

import ipaddress
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from fwc.backend.files import backend_refusal
from fwc.backend.render import keepalived
from fwc.lab.netns import LabError
from fwc.lab.topology import (
    LabCluster,
    LabExpectation,
    LabLink,
    LabMember,
    LabObject,
    LabSegment,
    LabSnat,
)
from fwc.model.vocabulary import NatAction

if TYPE_CHECKING:
    from fwc.model import AddressObject, Cluster, Endpoint, Policy, PortRange
    from fwc.model.addresses import AddressSet

# Probes per service match of an expectation (docs/lab.md, "Drill 1"): every port up
# to this many; beyond it the ends of every range, then ports spread evenly over the
# rest. Each probe costs up to two 1.5 s timeouts per phase, so `tcp/1024-65535` must
# not become 64512 of them.
MAX_PROBED_PORTS = 16


def probe_ports(ranges: Sequence[PortRange], cap: int = MAX_PROBED_PORTS) -> tuple[int, ...]:
    """The ports to probe for RANGES, sorted: all of them, or at most CAP.

    Over the cap, the ends of each range come first (an off-by-one in a rule shows
    there), then evenly spaced ports of the whole set fill up to CAP. Deterministic:
    the same policy probes the same ports on every run.
    """
    every: set[int] = set()
    for r in ranges:
        every.update(range(r.low, r.high + 1))
    if len(every) <= cap:
        return tuple(sorted(every))
    edges = sorted({end for r in ranges for end in (r.low, r.high)})
    if len(edges) >= cap:  # many ranges: their ends, evenly spaced, first and last kept
        return tuple(edges[k * (len(edges) - 1) // (cap - 1)] for k in range(cap))
    # Interior points spaced evenly over the ports that are not an end; the spacing is
    # at least one port, so the floor division never picks one twice.
    rest = sorted(every.difference(edges))
    m = cap - len(edges)
    sample = [rest[(k + 1) * (len(rest) + 1) // (m + 1) - 1] for k in range(m)]
    return tuple(sorted([*edges, *sample]))


def _items(obj: AddressObject | _Literal) -> tuple[str, ...]:
    """An AddressObject as lab items: CIDRs for networks, addresses or a-b ranges otherwise."""
    out: list[str] = []
    for family in (4, 6):
        if obj.kind == "network":
            out.extend(obj.addresses.cidrs(family))
            continue
        for lo, hi in obj.addresses.family(family):
            if family == 6:
                first, last = ipaddress.IPv6Address(lo), ipaddress.IPv6Address(hi)
            else:
                first, last = ipaddress.IPv4Address(lo), ipaddress.IPv4Address(hi)
            out.append(str(first) if lo == hi else f"{first}-{last}")
    return tuple(out)


def _endpoint_names(endpoint: Endpoint, literals: dict[str, LabObject]) -> list[str]:
    names: list[str] = []
    for item in endpoint.items:
        if item.negated:
            continue
        if item.kind == "firewall":
            names.append("firewall")
        elif item.kind == "object" and item.object_name:
            names.append(item.object_name)
        elif item.kind in ("literal", "vip"):
            label = f"literal:{item.label}"
            literals.setdefault(label, LabObject(label, _items(_Literal(item.addresses))))
            names.append(label)
    return names


class _Literal:
    """Just enough of an AddressObject for `_items`."""

    kind = "literal"

    def __init__(self, addresses: AddressSet) -> None:
        self.addresses = addresses


def cluster_from_model(policy: Policy, cluster: Cluster) -> LabCluster:
    """Build the LabCluster for one cluster of a resolved fwc.model.Policy."""
    members = tuple(
        LabMember(
            m.name,
            m.priority,
            {
                ln.interface: LabLink(ln.device, tuple(str(a) for a in ln.addresses))
                for ln in m.links
            },
        )
        for m in cluster.members
    )
    segments = tuple(
        LabSegment(i.name, tuple(str(v) for v in i.vips), i.vrid) for i in cluster.interfaces
    )
    objects = [LabObject(name, _items(obj)) for name, obj in policy.objects.items()]
    literals: dict[str, LabObject] = {}
    expectations: list[LabExpectation] = []
    for exp in cluster.expectations:
        services = ", ".join(exp.service_labels)
        text = f"{exp.verdict} {exp.source.label} -> {exp.destination.label} service {services}"
        if exp.in_interface:
            text += f" in {exp.in_interface}"
        for src in _endpoint_names(exp.source, literals):
            for dst in _endpoint_names(exp.destination, literals):
                for match in exp.services:
                    proto = {"icmpv6": "icmp"}.get(match.protocol, match.protocol)
                    ports: tuple[int | None, ...] = probe_ports(match.ports) or (None,)
                    expectations.extend(
                        LabExpectation(
                            exp.verdict,
                            src,
                            dst,
                            services,
                            proto,
                            port,
                            text,
                            match.family,
                            exp.in_interface,
                        )
                        for port in ports
                    )
    snat = tuple(
        LabSnat(rule.source.label, rule.out_interface or "", str(_first(rule.target.addresses)))
        for rule in cluster.nat
        if rule.action is NatAction.SNAT and rule.target is not None and rule.out_interface
    )
    return LabCluster(
        name=cluster.name,
        members=members,
        segments=segments,
        sync=cluster.sync.link,
        objects=tuple(objects) + tuple(literals.values()),
        expectations=tuple(expectations),
        snat=snat,
        advert=cluster.vrrp.advert_ms / 1000.0,
        preempt=cluster.vrrp.preempt,
        preempt_delay=(float(keepalived.preempt_delay(cluster.vrrp)) if cluster.vrrp.preempt
                       else 0.0),
    )


def _first(addresses: AddressSet) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    for family in (4, 6):
        for lo, _hi in addresses.family(family):
            return ipaddress.IPv4Address(lo) if family == 4 else ipaddress.IPv6Address(lo)
    raise LabError("SNAT target without an address")


def load_policy_cluster(
    policy_file: Path,
    compiled: Path | None,
    tmp: Path,
    cluster_name: str | None = None,
    include_path: Sequence[Path] = (),
) -> tuple[LabCluster, Path]:
    """Analyse POLICY_FILE, compile it (unless COMPILED is given) and pick one cluster."""
    from fwc.pipeline import analyse

    analysis = analyse(policy_file, include_path=include_path)
    if not analysis.ok or analysis.policy is None:
        msgs = "; ".join(d.message for d in analysis.diagnostics[:5])
        raise LabError(f"{policy_file} does not check cleanly: {msgs}")
    policy = analysis.policy
    if not policy.clusters:
        raise LabError(f"{policy_file} defines no cluster")
    cluster = policy.cluster(cluster_name) if cluster_name else policy.clusters[0]
    if cluster is None:
        raise LabError(f"no cluster {cluster_name!r} in {policy_file}")
    refusal = backend_refusal(cluster.name, cluster.backend, "fwc lab")
    if refusal is not None:
        from fwc.lab.runner import LabRefused

        raise LabRefused(refusal)
    if compiled is None:
        compiled = tmp / "compiled"
        _compile(policy_file, compiled, include_path)
    out = compiled / cluster.name
    if not out.is_dir():
        raise LabError(f"no compiled output for cluster {cluster.name} in {compiled}")
    return cluster_from_model(policy, cluster), out


def fast_keepalived_confs(
    policy_file: Path,
    advert_ms: int = 100,
    cluster_name: str | None = None,
    include_path: Sequence[Path] = (),
) -> dict[str, str]:
    """keepalived.conf per member as fwc generates it for `vrrp { advert 100ms version 3 }`.

    The fast-failover drill should exercise fwc's own sub-second output, not a
    text rewrite of the slow one; the policy's other VRRP settings are kept,
    only authentication goes (VRRPv3 has none).
    """
    from dataclasses import replace

    from fwc.backend.render.keepalived import keepalived_conf
    from fwc.pipeline import analyse

    analysis = analyse(policy_file, run_checks=False, include_path=include_path)
    if analysis.policy is None:
        return {}
    cluster = analysis.policy.cluster(cluster_name) if cluster_name else analysis.policy.clusters[0]
    if cluster is None:
        return {}
    vrrp = replace(
        cluster.vrrp, advert_ms=advert_ms, version=3, password=None, password_file=None, auth=None
    )
    fast = replace(cluster, vrrp=vrrp)
    return {m.name: keepalived_conf(fast, m) for m in fast.members}


def _compile(policy_file: Path, outdir: Path, include_path: Sequence[Path] = ()) -> None:
    """Compile the policy into OUTDIR with the product's own stages (as `fwc compile`)."""
    from fwc.backend.output import (
        OutputError,
        compile_policy,
        relative_source,
        source_root,
        write_output,
    )
    from fwc.diagnostics import render_text
    from fwc.pipeline import analyse

    analysis = analyse(policy_file, include_path=include_path)
    policy = analysis.policy
    problem = ""
    if policy is None or not analysis.ok:
        problem = render_text([d for d in analysis.diagnostics if d.is_error],
                              analysis.program.texts)
    else:
        try:
            write_output(outdir, relative_source(policy.root, source_root(policy)),
                         compile_policy(policy))
        except OutputError as exc:
            problem = str(exc)
    if problem or not outdir.is_dir():
        shutil.rmtree(outdir, ignore_errors=True)
        raise LabError(
            f"fwc compile {policy_file} failed: {problem.strip()[:500]} "
            "(use --compiled DIR to run the lab on existing output)"
        )
