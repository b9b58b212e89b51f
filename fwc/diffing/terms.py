"""Policy statements as the reviewer wrote them: rules and NAT in policy terms."""

from __future__ import annotations

from fwc import model


def rule_text(rule: model.Rule) -> str:
    """`accept from desktops to any service web, dns in lan` (no line numbers)."""
    parts = [rule.action, "from", rule.source.label or "any", "to",
             rule.destination.label or "any"]
    if rule.service_labels:
        parts += ["service", ", ".join(rule.service_labels)]
    if rule.in_interface:
        parts += ["in", rule.in_interface]
    if rule.out_interface:
        parts += ["out", rule.out_interface]
    if rule.only:
        parts += ["only", rule.only]
    if rule.target is not None:
        target = rule.target.label + (f":{rule.target.port}" if rule.target.port else "")
        parts += ["->", target]
    if rule.log:
        parts += ["log"] + ([f'"{rule.log_prefix}"'] if rule.log_prefix else [])
    return " ".join(parts)

