"""What each backend can write of the rule vocabulary.

The one statement of it: the check FWC429 reports a cluster with `backend nftables`
that uses what `gaps` lists, `fwc compile --backend nftables` refuses the same
before writing, and `fwc.backend.render.nftables` raises on a lowered rule it has
no statement for, so a feature is never dropped silently.
"""

from __future__ import annotations

from collections.abc import Iterator

from fwc.diagnostics import Span
from fwc.model import Cluster
from fwc.model.vocabulary import NatAction


def nftables_gaps(cluster: Cluster) -> Iterator[tuple[str, Span]]:
    """(what, where) for each use of something the nftables backend does not write yet."""
    for rule in cluster.rules:
        if rule.limit is not None and rule.limit.per_source:
            yield "a per-source 'limit'", rule.span_of("limit")
        elif rule.limit is not None:
            yield "'limit'", rule.span_of("limit")
        if rule.connlimit is not None:
            yield "'connlimit'", rule.span_of("connlimit")
        if rule.syn_limit is not None:
            yield "'syn-limit'", rule.span_of("syn-limit")
        if rule.notrack:
            yield "'notrack'", rule.span_of("notrack")
    for nat in cluster.nat:
        if nat.action is NatAction.DNAT and nat.pool:
            yield "dnat load sharing between several targets", nat.pool[0].span
    for iface in cluster.interfaces:
        if iface.mss is not None:
            yield "MSS clamping ('mss')", iface.mss_span or iface.span
