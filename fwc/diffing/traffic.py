"""Traffic newly allowed or denied by a change, in policy terms.

The analysis engine answers this exactly (first match, NAT, defaults, per
member); this module only adapts it to the summary.
"""

from __future__ import annotations

from fwc import model
from fwc.analysis.describe import Vocabulary
from fwc.analysis.diff import TrafficChange
from fwc.analysis.diff import traffic_changes as engine_changes


def traffic_changes(old: model.Cluster | None, new: model.Cluster | None,
                    vocabulary: Vocabulary | None = None) \
        -> tuple[list[TrafficChange], list[TrafficChange]]:
    """(newly allowed, newly denied) for one cluster present on both sides.

    `vocabulary`: the names the report may use (every object of the policy, not
    only those its rules use), so that a widened object is named even when it is new.
    """
    if old is None or new is None:
        return [], []
    changes = engine_changes(old, new, vocabulary)
    return ([c for c in changes if c.verdict == "allowed"],
            [c for c in changes if c.verdict == "denied"])
