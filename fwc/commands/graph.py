"""`fwc graph FILE [-o FILE] [--format dot|svg]`: the clusters' topology, drawn.

The drawing is the topology graph the analysis routes by (`fwc.model.topology`):
members, their devices, the networks they are on (the sync link's dashed),
the VIPs, the gateways and the routes' destinations (a default route makes its
interface an uplink, drawn bold). DOT text is written deterministically (nodes
and edges sorted), so the same policy always gives the same bytes; SVG is the
DOT text laid out by Graphviz's `dot`, which must be installed for it.

Exit 0 when written, 1 when the policy has errors, 2 on a usage error (an
unknown format, `dot` missing for SVG, an output file that cannot be written).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

from fwc.backend.render.escape import dot_label, dot_string
from fwc.commands.common import resolved, without_cycle_collection, write_file
from fwc.model import Cluster, Policy
from fwc.model.topology import topology

EXIT_OK, EXIT_POLICY, EXIT_USAGE = 0, 1, 2
DOT_TIMEOUT_S = 60

_NODE_STYLE = {
    "member": 'shape=box3d, style=filled, fillcolor="#dde8f5"',
    "device": "shape=box",
    "network": "shape=ellipse",
    "vip": 'shape=diamond, style=filled, fillcolor="#fff2cc"',
    "gateway": "shape=circle",
    "destination": "shape=note",
}
_EDGE_STYLE = {
    "has": "arrowhead=none",
    "on": "arrowhead=none",
    "holds": "style=dotted, arrowhead=none",
    "next-hop": "",
    "direct": "",
    "route": "",
}


def _label(data: dict[str, object]) -> list[str]:
    kind = data["kind"]
    label = str(data["label"])
    if kind == "member":
        return [label, f"priority {data['priority']}"]
    if kind == "device":
        return [f"{data['interface']}: {label}"]
    if kind == "network":
        return [label, f"{data['interface']}" + (" (sync link)" if data.get("sync") else "")]
    if kind == "vip":
        return [f"VIP {label}", str(data["interface"])]
    if kind == "gateway":
        return [f"gw {label}"]
    if kind == "destination":
        table = "main" if data.get("table") is None else f"table {data['table']}"
        return ["default" if data.get("default") else label, table]
    return [label]


def cluster_dot(cluster: Cluster, indent: str = "    ") -> list[str]:
    graph = topology(cluster)
    uplinks = set()
    for source, _, data in graph.edges(data=True):
        route = data.get("route")
        if data["kind"] in ("next-hop", "direct") and route is not None and route.is_default:
            uplinks.add(source)
    lines = [f"{indent}subgraph {dot_string('cluster_' + cluster.name)} {{",
             f"{indent}    label={dot_string('cluster ' + cluster.name)};"]
    for node in sorted(graph.nodes):
        data = graph.nodes[node]
        style = _NODE_STYLE.get(str(data["kind"]), "")
        extra = []
        if data.get("sync"):
            extra.append('style=dashed, color="#c00000"')
        if node in uplinks:
            extra.append("penwidth=2.5")
        attributes = ", ".join(a for a in (f"label={dot_label(_label(data))}", style, *extra)
                               if a)
        lines.append(f"{indent}    {dot_string(cluster.name + '/' + node)} [{attributes}];")
    edges = []
    for source, target, data in graph.edges(data=True):
        route = data.get("route")
        attributes = [_EDGE_STYLE.get(str(data["kind"]), "")]
        if data["kind"] == "on" and data.get("address"):
            attributes.append(f"label={dot_string(data['address'])}")
        if route is not None and data["kind"] in ("route", "direct"):
            words = []
            if route.metric is not None:
                words.append(f"metric {route.metric}")
            if route.follow:
                words.append("master only")
            if route.only:
                words.append(f"only {route.only}")
            if route.probe is not None:
                words.append(f"probe {route.probe.target}")  # out while it does not answer
            if words:
                attributes.append(f"label={dot_string(', '.join(words))}")
            if route.follow:
                attributes.append("style=dashed")
        text = ", ".join(a for a in attributes if a)
        edges.append(f"{indent}    {dot_string(cluster.name + '/' + source)} -> "
                     f"{dot_string(cluster.name + '/' + target)}" + (f" [{text}]" if text else "")
                     + ";")
    lines += sorted(set(edges))
    lines.append(f"{indent}}}")
    return lines


def policy_dot(policy: Policy) -> str:
    """Every cluster of POLICY as one DOT digraph (deterministic text)."""
    lines = ["// fwc graph: the topology of the policy's clusters (docs/analysis.md, \"Routing\").",
             "digraph fwc {", "    rankdir=LR;", '    node [fontname="Helvetica"];',
             '    edge [fontname="Helvetica", fontsize=10];']
    for cluster in policy.clusters:
        lines += cluster_dot(cluster)
    lines.append("}")
    return "\n".join(lines) + "\n"


def svg(dot: str) -> str:
    """DOT laid out as SVG by Graphviz's `dot` (UsageError when it is missing or fails)."""
    tool = shutil.which("dot")
    if tool is None:
        raise UsageError("SVG needs Graphviz's `dot`, which is not installed "
                         "(apt install graphviz), or write DOT with --format dot")
    try:
        result = subprocess.run([tool, "-Tsvg"], input=dot, capture_output=True, text=True,
                                timeout=DOT_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        raise UsageError(f"dot did not finish within {DOT_TIMEOUT_S} s") from None
    if result.returncode != 0:
        raise UsageError(f"dot failed: {result.stderr.strip()}")
    return result.stdout


class UsageError(Exception):
    """Reported in one line, exit status 2."""


def _format(args: argparse.Namespace) -> str:
    if args.format is not None:
        return str(args.format)
    if args.output and args.output.endswith(".svg"):
        return "svg"
    return "dot"


def run(args: argparse.Namespace) -> int:
    with without_cycle_collection(args):
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    analysis = resolved(args)
    if analysis is None or analysis.policy is None:
        return EXIT_POLICY
    if not analysis.policy.clusters:
        print("fwc graph: error: the policy defines no cluster", file=sys.stderr)
        return EXIT_POLICY
    dot = policy_dot(analysis.policy)
    try:
        text = svg(dot) if _format(args) == "svg" else dot
        if args.output is None or args.output == "-":
            sys.stdout.write(text)
        else:
            write_file(Path(args.output), text)
    except UsageError as exc:
        print(f"fwc graph: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:
        print(f"fwc graph: error: cannot write {args.output or 'standard output'}: "
              f"{exc.strerror or exc}",
              file=sys.stderr)
        return EXIT_USAGE
    return EXIT_OK
