"""The semantic summary as text: what a reviewer reads before the patch."""

from __future__ import annotations

from fwc.analysis.diff import TrafficChange
from fwc.diffing.colour import Palette
from fwc.diffing.semantic import ChainChange, ClusterSummary
from fwc.diffing.sequences import ListChange

# A widened object can touch hundreds of rules; the patch below has them all.
MAX_RULES_SHOWN = 12


def render_summary(policy: str, summaries: list[ClusterSummary], palette: Palette) -> str:
    out: list[str] = []
    for summary in summaries:
        out.append(palette.bold(f"cluster {summary.name} ({policy})")
                   + ("" if summary.status == "changed" else f": {summary.status}"))
        out.extend(f"  {line}" for line in summary.settings)
        _list_change(out, "policy", summary.rules, palette)
        _list_change(out, "nat", summary.nat, palette)
        if summary.allowed or summary.denied:
            out.append("  traffic:")
            out.extend("    " + palette.green(f"newly allowed: {c}") for c in summary.allowed)
            out.extend("    " + palette.red(f"newly denied:  {c}") for c in summary.denied)
        for member in summary.members:
            if not member:
                continue
            head = f"  member {member.name}"
            if member.status != "changed":
                head += f": {member.status}"
            out.append(palette.bold(head))
            out.extend(f"    {line}" for line in member.settings)
            for chain in member.chains:
                out.extend(_chain(chain, palette))
        out.append("")
    return "\n".join(out) + ("\n" if out else "")


def _list_change(out: list[str], title: str, change: ListChange[str], palette: Palette) -> None:
    if not change:
        return
    out.append(f"  {title} rules: {_counts(change)}")
    out.extend("    " + palette.green(f"+ {text}") for text in change.added)
    out.extend("    " + palette.red(f"- {text}") for text in change.removed)
    out.extend("    " + palette.yellow(f"~ {text}") for text in change.moved)


def _counts(change: ListChange[str]) -> str:
    parts = [f"{len(items)} {word}" for word, items in (
        ("added", change.added), ("removed", change.removed), ("moved", change.moved)) if items]
    return ", ".join(parts)


def _chain(chain: ChainChange, palette: Palette) -> list[str]:
    head = f"    {chain.family} {chain.table}/{chain.chain}"
    if chain.change:
        head += f": {_counts(chain.change)}"
    lines = [head]
    if chain.policy is not None:
        lines.append(f"      policy {chain.policy[0]} -> {chain.policy[1]}")
    for mark, paint, rules in (("+", palette.green, chain.change.added),
                               ("-", palette.red, chain.change.removed),
                               ("~", palette.yellow, chain.change.moved)):
        lines.extend("      " + paint(f"{mark} {r}") for r in rules[:MAX_RULES_SHOWN])
        if len(rules) > MAX_RULES_SHOWN:
            lines.append(f"      ... and {len(rules) - MAX_RULES_SHOWN} more ({mark})")
    return lines


# -- JSON (`fwc diff --format json`) ------------------------------------------------------

def _list_json(change: ListChange[str]) -> dict[str, list[str]]:
    return {"added": list(change.added), "removed": list(change.removed),
            "moved": list(change.moved)}


def _traffic_json(change: TrafficChange) -> dict[str, object]:
    return {"traffic": change.text, "decided_by": change.where or None,
            "only_member": change.member}


def summary_json(policy: str, summaries: list[ClusterSummary]) -> dict[str, object]:
    """The semantic summary of one policy as plain data: the text report's content,
    every rule (the text caps each chain at MAX_RULES_SHOWN)."""
    return {
        "policy": policy,
        "clusters": [{
            "name": s.name,
            "status": s.status,
            "settings": list(s.settings),
            "policy_rules": _list_json(s.rules),
            "nat_rules": _list_json(s.nat),
            "newly_allowed": [_traffic_json(c) for c in s.allowed],
            "newly_denied": [_traffic_json(c) for c in s.denied],
            "members": [{
                "name": m.name,
                "status": m.status,
                "settings": list(m.settings),
                "chains": [{
                    "family": c.family, "table": c.table, "chain": c.chain,
                    "policy": None if c.policy is None else {"old": c.policy[0],
                                                             "new": c.policy[1]},
                    **_list_json(c.change)}
                    for c in m.chains],
            } for m in s.members if m],
        } for s in summaries],
    }
