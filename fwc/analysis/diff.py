"""Traffic newly allowed and newly denied between two versions of a cluster.

`traffic_changes(old, new)` is what `fwc diff` calls for its semantic summary.
It is exact (first match, NAT, defaults), and it only looks where something
changed: per member, family and chain, the old and new rule lists are aligned
(longest common subsequence over the rules' boxes); a packet matched by no
unaligned rule in either version meets the same rules in the same order, so
its fate cannot differ. The boxes of unaligned rules (and of changed DNAT
rules) form the region that is classified under both versions, the new
partition being re-partitioned by the old one. If the member's firewall
addresses or interfaces changed, the whole traffic space is compared.

Results are stated in policy terms (`describe.Vocabulary`), one line per
distinct change, merged across members when all members agree.

When the firewall's addresses, interfaces or subnets change, chains and
inferred interfaces differ between the versions: the region then also holds
the packets whose chain changed and those touching a changed subnet, and each
new piece is re-entered into the old version (`_reenter`) before comparing.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import field
from difflib import SequenceMatcher

from fwc.analysis.describe import Vocabulary, describe_box
from fwc.analysis.engine import CHAINS, FAMILIES, MemberView, Piece, classify_box, merge_routed
from fwc.analysis.index import RuleList
from fwc.analysis.space import ALL_SERVICES, LOCAL, Box, full_addresses
from fwc.model import Cluster, NatTarget
from fwc.model.addresses import AddressSet
from fwc.model.intervals import contains
from fwc.model.records import dataclass

# A region assembled from more changed rules than this is compared whole, chain by chain.
MAX_REGION_BOXES = 2000


@dataclass(frozen=True)
class TrafficChange:
    """One statement for the reviewer: this traffic is now allowed (or denied)."""

    verdict: str  # "allowed" or "denied": what this traffic newly is
    text: str  # in policy terms: from OBJECT to OBJECT service SERVICE
    where: str  # what decides it now: file:line of the rule, or the default policy
    member: str | None = None  # None when every member agrees
    boxes: tuple[Box, ...] = field(default=(), compare=False, repr=False)

    def __str__(self) -> str:
        only = f" (only {self.member})" if self.member else ""
        at = f"  [{self.where}]" if self.where else ""
        return f"{self.text}{only}{at}"


def _keys(rules: RuleList) -> list[tuple[object, ...]]:
    out: list[tuple[object, ...]] = []
    for entry in rules.rules:
        target = entry.rule.target
        out.append((entry.rule.action, entry.box,
                    None if target is None else (target.addresses, target.port)))
    return out


def _unaligned(old: RuleList, new: RuleList) -> list[Box]:
    """Boxes of rules that are not in the common subsequence of both lists."""
    old_keys, new_keys = _keys(old), _keys(new)
    matcher = SequenceMatcher(None, old_keys, new_keys, autojunk=False)
    out: list[Box] = []
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag == "equal":
            continue
        out.extend(old.rules[i].box for i in range(i1, i2))
        out.extend(new.rules[j].box for j in range(j1, j2))
    return out


def _minus(box: Box, other: Box) -> list[Box]:
    common = box.intersect(other)
    return [box] if common is None else box.minus(common)


def _disjoint(boxes: Iterable[Box]) -> list[Box]:
    out: list[Box] = []
    for box in boxes:
        pieces = [box]
        for seen in out:
            pieces = [rest for piece in pieces for rest in _minus(piece, seen)]
            if not pieces:
                break
        out.extend(pieces)
    return out


def _translated_into(old: MemberView, new: MemberView, family: int,
                     boxes: list[Box]) -> list[Box]:
    """The boxes of the dnat rules (of either version) that translate packets into the
    destinations of BOXES. The filter sees a dnat's packets with their new destination,
    so a changed filter rule for a dnat target (`accept from any to web` behind `dnat
    ... uplink.vip ... -> web`) changes packets whose own destination, the VIP, lies
    outside its box: without these, only the direct traffic to web was reported."""
    if not boxes:
        return []
    out: list[Box] = []
    for view in (old, new):
        for entry in view.dnat[family].rules:
            targets = [t.addresses.family(family)[0][0]
                       for t in entry.rule.targets_in(family)] if entry.rule.targets else []
            if any(contains(box.dst, target) for box in boxes for target in targets):
                out.append(entry.box)
    return out


def _subnet_changes(old: MemberView, new: MemberView, family: int) -> list[Box]:
    """Where routing (and so the inferred interfaces) differs: subnets added or dropped,
    routes and policy-routing rules changed (their destinations and selectors)."""
    before = set(old.connected.get(family, ()))
    after = set(new.connected.get(family, ()))
    everything = full_addresses(family)
    every_iface = new.all_in | old.all_in
    changed = [subnet for _, subnet in before ^ after]
    old_routing, new_routing = old.routing[family], new.routing[family]
    if old_routing.fallback != new_routing.fallback:
        changed.append(everything)
    routes = {(None, r) for r in old_routing.main} ^ {(None, r) for r in new_routing.main}
    for number, table in (*old_routing.tables, *new_routing.tables):
        routes ^= {(number, r) for r in table}
    changed += [AddressSet.of(r.destination).family(family) for _, r in routes]
    out: list[Box] = []
    for rule in set(old_routing.rules) ^ set(new_routing.rules):
        sources = AddressSet.of(*rule.sources).family(family) if rule.sources else everything
        destinations = AddressSet.of(*rule.destinations).family(family) \
            if rule.destinations else everything
        out.append(Box(family, sources, destinations, ALL_SERVICES, every_iface, every_iface))
        out.append(Box(family, destinations, sources, ALL_SERVICES, every_iface, every_iface))
    for subnet in changed:
        out.append(Box(family, subnet, everything, ALL_SERVICES, every_iface, every_iface))
        out.append(Box(family, everything, subnet, ALL_SERVICES, every_iface, every_iface))
    return out


def _same_shape(old: MemberView, new: MemberView) -> bool:
    """Chains, interfaces and routing alike: a packet enters both versions alike."""
    return (old.regions == new.regions and old.connected == new.connected
            and old.routing == new.routing and old.unseen == new.unseen)


def _auto_changes(old: MemberView, new: MemberView, family: int) -> list[Box]:
    """Boxes of automatic rules (VRRP, sync, IGMP, NDP) that differ between the versions."""
    out: list[Box] = []
    for chain in ("input", "output"):
        before = {(e.rule.label, e.box) for e in old.auto[(family, chain)].rules}
        after = {(e.rule.label, e.box) for e in new.auto[(family, chain)].rules}
        out += [box for _, box in before ^ after]
    before = {(e.rule.label, e.box) for e in old.local_groups[family].rules}
    after = {(e.rule.label, e.box) for e in new.local_groups[family].rules}
    out += [box.with_(out_ifaces=old.all_in | new.all_in) for _, box in before ^ after]
    return out


def changed_regions(old: MemberView, new: MemberView, *, whole: bool = False) \
        -> list[tuple[Box, str]]:
    """(box, chain) pairs, in the new version's chains, outside which nothing changed.

    `whole` compares the entire traffic space instead (slow; the tests use it
    as the reference the narrowed comparison must equal).
    """
    out: list[tuple[Box, str]] = []
    same_shape = _same_shape(old, new)
    for family in FAMILIES:
        candidates = _unaligned(old.filter[(family, "forward")],
                                new.filter[(family, "forward")])
        if old.elsewhere or new.elsewhere:
            # another member's VIPs read per chain: INPUT/OUTPUT have a list of their own
            candidates += _unaligned(old.filter[(family, "input")],
                                     new.filter[(family, "input")])
        candidates += _translated_into(old, new, family, candidates)
        candidates += _unaligned(old.dnat[family], new.dnat[family])
        candidates += _auto_changes(old, new, family)
        if not same_shape:
            candidates += _subnet_changes(old, new, family)
        # The member's own traffic to itself is always accepted; it changes only when
        # an address became the member's (a VIP it now holds: loopback, not OUTPUT).
        for chain in CHAINS if same_shape else (*CHAINS, "local"):
            region = new.regions[(family, chain)]
            chain_candidates = list(candidates)
            if not same_shape:
                # packets that changed chain, or arrive on an interface that is new
                chain_candidates += _minus(region, old.regions[(family, chain)])
            if whole or old.cluster.defaults.of(chain) != new.cluster.defaults.of(chain):
                # a changed default decides anything no rule does: the whole chain
                chain_candidates = [region]
            parts = [p for c in chain_candidates if (p := c.intersect(region)) is not None]
            if len(parts) > MAX_REGION_BOXES:
                parts = [region]
            for box in _disjoint(parts):
                out.extend((routed, chain) for seen in new.seen(box)
                           for routed in new.route_box(seen, chain))
    return out


def _reenter(view: MemberView, box: Box) -> list[tuple[Box, str]]:
    """A piece of the other version's traffic as this version's entry boxes.

    Chains and inferred interfaces depend on the version (its firewall
    addresses and subnets), so they are derived again; an interface the
    packet really arrived on is kept.
    """
    out: list[tuple[Box, str]] = []
    keeps_in = LOCAL not in box.in_ifaces
    base = box.with_(in_ifaces=box.in_ifaces if keeps_in else view.all_in,
                     out_ifaces=view.all_in)
    for chain in (*CHAINS, "local"):
        part = base.intersect(view.regions[(box.family, chain)])
        if part is None:
            continue
        for routed in (r for seen in view.seen(part)
                       for r in view.route_box(seen, chain, route_in=not keeps_in,
                                               route_out=True)):
            # Where this version may send the packets by the interfaces the piece names
            # (several are possible: no route, multicast), those are the packets meant.
            if box.out_ifaces <= routed.out_ifaces:
                routed = routed.with_(out_ifaces=box.out_ifaces)
            out.append((routed, chain))
    return out


def member_changes(old: MemberView, new: MemberView, *, whole: bool = False) \
        -> list[tuple[str, Piece, Box]]:
    """(allowed|denied, the piece under the new version, the box that changed)."""
    out: list[tuple[str, Piece, Box]] = []
    same_shape = _same_shape(old, new)
    for box, chain in changed_regions(old, new, whole=whole):
        for now in classify_box(new, box, chain, entry_terms=True):
            entries = [(now.box, chain)] if same_shape else _reenter(old, now.box)
            for entry, old_chain in entries:
                for before in classify_box(old, entry, old_chain, entry_terms=True):
                    verdict = _changed(now, before)
                    if verdict is None:
                        continue
                    changed = now.box.with_(src=before.box.src, dst=before.box.dst,
                                            services=before.box.services)
                    out.append((verdict, now, changed))
    return out


def _backend(piece: Piece) -> tuple[str, int | None] | None:
    """Where the dnat stage sends the piece's packets (None: nowhere else)."""
    step = piece.dnat
    return None if step is None or step.address is None else (step.address, step.port)


def _other_backend(now: Piece, before: Piece) -> bool:
    """NOW and BEFORE are different backends of a pool that the other version's pool
    also has: each is compared with its own (a dnat that shares load yields one piece
    per backend for the same packets, and backend A now against backend B then was a
    change that did not happen)."""
    ours, theirs = _backend(now), _backend(before)
    if ours is None or theirs is None or ours == theirs:
        return False
    assert now.dnat is not None and before.dnat is not None
    family = now.box.family
    return (any(_is(target, ours, family) for target in before.dnat.rule.targets_in(family))
            or any(_is(target, theirs, family)
                   for target in now.dnat.rule.targets_in(family)))


def _is(target: NatTarget, backend: tuple[str, int | None], family: int) -> bool:
    first = target.addresses.family(family)[0][0]
    make = ipaddress.IPv4Address if family == 4 else ipaddress.IPv6Address
    return (str(make(first)), target.port) == backend


def _changed(now: Piece, before: Piece) -> str | None:
    """What the packets of both pieces newly are: "allowed", "denied", "redirected" (accepted
    both ways, but the dnat now sends them elsewhere) or None (nothing changed)."""
    if _other_backend(now, before):
        return None
    if now.accepted != before.accepted:
        return "allowed" if now.accepted else "denied"
    if now.accepted and _backend(now) != _backend(before):
        return "redirected"
    return None


def _where(piece: Piece) -> str:
    return piece.rule.location if piece.rule is not None else piece.decided_by


def _reported(verdict: str, piece: Piece) -> tuple[str, str, str]:
    """(allowed|denied, where, a note to the text): traffic a dnat now sends elsewhere is
    newly allowed to go there, and says where (`(now dnat to 192.0.2.81)`)."""
    if verdict != "redirected":
        return verdict, _where(piece), ""
    now = piece.dnat if piece.dnat is not None and piece.dnat.address is not None else None
    return "allowed", _where(piece), f" (now {now})" if now else " (now not translated)"


def traffic_changes(old: Cluster | None, new: Cluster | None,
                    vocabulary: Vocabulary | None = None, *,
                    whole: bool = False) -> list[TrafficChange]:
    """Newly allowed and newly denied traffic, per member, in policy terms.

    Members present in only one version are not compared (the member itself
    is the change). `vocabulary` defaults to the names the rules of both
    versions use, plus every `IFACE.vip`.
    """
    if old is None or new is None:
        return []
    if vocabulary is None:
        vocabulary = Vocabulary.of_clusters(new, old)
    vocabulary = vocabulary.with_cluster(new)
    per_member: dict[tuple[str, str, str], list[str]] = {}
    boxes: dict[tuple[str, str, str], dict[str, list[Box]]] = {}
    members: list[str] = []
    for member in new.members:
        before = old.member(member.name)
        if before is None:
            continue
        members.append(member.name)
        old_view, new_view = MemberView(old, before), MemberView(new, member)
        grouped: dict[tuple[str, str, str], list[Box]] = {}
        for verdict, piece, box in member_changes(old_view, new_view, whole=whole):
            grouped.setdefault(_reported(verdict, piece), []).append(box)
        for (verdict, where, note), group in grouped.items():
            for box in merge_routed(group):
                text = describe_box(box, vocabulary, new_view.firewall, new_view.interfaces)
                key = (verdict, text + note, where)
                if member.name not in per_member.get(key, ()):
                    per_member.setdefault(key, []).append(member.name)
                boxes.setdefault(key, {}).setdefault(member.name, []).append(box)
    out: list[TrafficChange] = []
    for key, names in per_member.items():
        by_member = boxes[key]
        if len(names) == len(members):
            out.append(TrafficChange(*key, None, tuple(b for name in names
                                                       for b in by_member[name])))
        else:
            out.extend(TrafficChange(*key, name, tuple(by_member[name])) for name in names)
    out.sort(key=lambda c: (c.verdict, c.text, c.member or ""))
    return out
