"""The analysis engine: what a policy does to sets of packets, on intervals.

One engine answers `expect` (fwc check), `fwc query` and the semantic part of
`fwc diff`. It never enumerates packets: traffic is a union of boxes over the
packet fields (see `space`), rules are boxes, and first-match evaluation
partitions a query box into pieces with one outcome each (see `engine`).

Public API:

- `MemberView(cluster, member)` — a member's rules compiled once into indexed
  box lists (`index`); build one per member and reuse it for every question.
- `TrafficClass(source, destination, services, in_interface, out_interface)`
  — what to ask about; sources/destinations are policy `Endpoint`s (any and
  firewall resolved per member), `AddressSet`s, or None for everything.
- `classify(view, traffic) -> list[Piece]` — the partition; a `Piece` has the
  box (original packet terms), chain, verdict, deciding rule (None: default
  policy or loopback) and the dnat/snat `NatStep`s applied.
- `describe.Vocabulary` / `describe_box` — pieces in policy terms (`model.Rule.text()` for rules).
- `changes.traffic_changes(old, new)` — traffic newly allowed and newly denied
  between two versions of a cluster, per member, in policy terms (for diff).

Design notes and complexity: docs/analysis.md.
"""

from fwc.analysis.engine import (
    MemberView,
    NatStep,
    Piece,
    TrafficClass,
    classify,
    member_views,
)

__all__ = ["MemberView", "NatStep", "Piece", "TrafficClass", "classify",
           "member_views"]
