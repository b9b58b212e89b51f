"""Lowering: the policy model -> one structured ruleset per member and address family."""

from fwc.backend.lower.build import (
    MARK_ACCEPT_CHAIN,
    LowerOptions,
    forget_lowered,
    log_prefix,
    lower,
    options_for,
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
    "ANY", "MARK_ACCEPT_CHAIN", "AddressMatch", "Chain", "FilterRule", "LowerOptions", "Match",
    "NatRule", "NodeRuleset", "Origin", "RateLimit", "Rule", "Table", "forget_lowered",
    "log_prefix", "lower", "options_for", "source_label",
]
