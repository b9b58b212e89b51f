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
    """(what, where) for each use of something the nftables backend does not write yet.

    Rate and connection limits, `syn-limit`, `notrack`, MSS clamping and DNAT load
    sharing are written (`fwc.backend.render.nftables`); load sharing only between
    single addresses, all with a single port or all without: nft's `numgen` map
    takes no ranges, and cannot keep the port for some backends only.
    """
    for nat in cluster.nat:
        if nat.action is not NatAction.DNAT:
            continue
        for family in (4, 6):
            pool = [t for t in nat.targets if t.addresses.family(family)]
            if len(pool) < 2:
                continue  # one backend of this family: a plain dnat
            ranges = [t for t in pool if t.port_high is not None or any(
                low != high for low, high in t.addresses.family(family))]
            if ranges:
                yield "dnat load sharing to an address or port range", ranges[0].span
                break
            if len({t.port is None for t in pool}) > 1:
                yield ("dnat load sharing between targets with and without a port",
                       pool[0].span)
                break
