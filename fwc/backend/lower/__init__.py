"""Lowering: the policy model -> one structured ruleset per member and address family."""

from fwc.backend.lower.build import (
    MARK_ACCEPT_CHAIN,
    MULTICAST,
    AutoRule,
    LowerOptions,
    automatic_rules,
    forget_lowered,
    log_prefix,
    lower,
    options_for,
    relative_source,
    source_label,
)
from fwc.backend.lower.ruleset import (
    ANY,
    AddressMatch,
    Chain,
    FilterRule,
    Match,
    NatRule,
    NodeRuleset,
    Origin,
    RateLimit,
    Rule,
    Table,
)

__all__ = [
    "ANY", "MARK_ACCEPT_CHAIN", "MULTICAST", "AddressMatch", "AutoRule", "Chain", "FilterRule",
    "LowerOptions", "Match", "NatRule", "NodeRuleset", "Origin", "RateLimit", "Rule", "Table",
    "automatic_rules", "forget_lowered", "log_prefix", "lower", "options_for",
    "relative_source", "source_label",
]
