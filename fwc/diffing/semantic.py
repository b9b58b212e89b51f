"""The reviewer's summary of a change, per cluster and member.

Cluster settings (VIPs, VRIDs, priorities, sync) and policy statements come
from the resolved models of both sides; per-chain rule changes from the
compiled rulesets, because that is what the kernel will run.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import field
from pathlib import Path
from typing import Any, Protocol, TypeVar

from fwc import model
from fwc.analysis.describe import Vocabulary
from fwc.analysis.diff import TrafficChange
from fwc.analysis.handling import Handling, interface_handling
from fwc.backend.files import FILES
from fwc.diffing import rulesets
from fwc.diffing.files import Review
from fwc.diffing.renumber import Renumbering, comparable, without_locations
from fwc.diffing.sequences import ListChange, compare, compare_keyed
from fwc.diffing.traffic import traffic_changes
from fwc.model.records import dataclass


class _HasName(Protocol):
    @property
    def name(self) -> str: ...


_Named = TypeVar("_Named", bound=_HasName)

RULE_FILES = (("iptables.rules", "IPv4"), ("ip6tables.rules", "IPv6"))
# the render targets whose files hold policy rules (fwc.backend.files `GeneratedFile.target`)
RULE_FORMS = ("iptables", "nftables")


@dataclass
class ChainChange:
    family: str  # IPv4 / IPv6
    table: str
    chain: str
    change: ListChange[str]
    policy: tuple[str, str] | None = None  # (old, new) default policy when it changed


@dataclass
class MemberSummary:
    name: str
    status: str  # added, removed, changed
    settings: list[str] = field(default_factory=list)
    chains: list[ChainChange] = field(default_factory=list)

    def __bool__(self) -> bool:
        return self.status != "changed" or bool(self.settings or self.chains)


@dataclass
class ClusterSummary:
    name: str
    status: str  # added, removed, changed
    settings: list[str] = field(default_factory=list)
    rules: ListChange[str] = field(default_factory=ListChange)
    nat: ListChange[str] = field(default_factory=ListChange)
    allowed: list[TrafficChange] = field(default_factory=list)
    denied: list[TrafficChange] = field(default_factory=list)
    members: list[MemberSummary] = field(default_factory=list)

    def __bool__(self) -> bool:
        return self.status != "changed" or bool(
            self.settings or self.rules or self.nat or self.allowed or self.denied
            or any(self.members))


def _paired(old: Iterable[_Named], new: Iterable[_Named]) \
        -> list[tuple[_Named | None, _Named | None]]:
    """Every item on either side by name, (old, new), in the new side's order."""
    old_items = {item.name: item for item in old}
    new_items = {item.name: item for item in new}
    names = list(new_items) + [n for n in old_items if n not in new_items]
    return [(old_items.get(name), new_items.get(name)) for name in names]


def _clusters(old: model.Policy | None, new: model.Policy | None) \
        -> list[tuple[model.Cluster | None, model.Cluster | None]]:
    return _paired(old.clusters if old else (), new.clusters if new else ())


def _members(old: model.Cluster | None, new: model.Cluster | None) \
        -> list[tuple[model.Member | None, model.Member | None]]:
    return _paired(old.members if old else (), new.members if new else ())


# (cluster, member, whether it is on the old side, whether on the new)
MemberPlace = tuple[str, str, bool, bool]


def members_compared(old: model.Policy | None,
                     new: model.Policy | None) -> list[MemberPlace]:
    """Every member of every cluster on either side: whose compiled files to compare."""
    return [((new_c or old_c).name, (after or before).name,  # type: ignore[union-attr]
             before is not None, after is not None)
            for old_c, new_c in _clusters(old, new) for before, after in _members(old_c, new_c)]


def renumberings(old: model.Policy | None,
                 new: model.Policy | None) -> dict[str, Renumbering]:
    """Per cluster on both sides whose rule numbers change: how the old ones read on the
    new side (for `compiled_chain_changes`)."""
    out: dict[str, Renumbering] = {}
    for old_c, new_c in _clusters(old, new):
        found = Renumbering.between(old_c, new_c)
        if found is not None and new_c is not None:
            out[new_c.name] = found
    return out


def review_of(renumbered: dict[str, Renumbering]) -> Review:
    """How `fwc diff` compares each compiled file for review: a rules file (iptables-restore
    or nftables, fwc.backend.files) without the policy lines its rules name, the old side
    also in the new side's rule numbers (RENUMBERED: `renumberings`); any other file as
    it is."""
    forms = {f.name: f.target == "nftables" for f in FILES if f.target in RULE_FORMS}

    def review(rel: str) -> tuple[Callable[[str], str], Callable[[str], str]] | None:
        parts = rel.split("/")  # <cluster>/<member>/<file>
        nft = forms.get(parts[-1]) if len(parts) == 3 else None
        if nft is None:
            return None
        renumbering = renumbered.get(parts[0])
        return (lambda text: comparable(text, nft, renumbering),
                lambda text: comparable(text, nft))

    return review


def compiled_chain_changes(members: list[MemberPlace], old_out: Path | None,
                           new_out: Path | None,
                           renumbered: dict[str, Renumbering] | None = None) \
        -> dict[tuple[str, str], list[ChainChange]]:
    """Each member's chain changes, read from the compiled files under OLD_OUT and NEW_OUT
    (no model is needed: `fwc diff` reads them in a worker process); RENUMBERED: the
    clusters whose rule numbers changed (`renumberings`)."""
    out: dict[tuple[str, str], list[ChainChange]] = {}
    for cluster, member, on_old, on_new in members:
        out[(cluster, member)] = chain_changes(
            old_out / cluster / member if old_out and on_old else None,
            new_out / cluster / member if new_out and on_new else None,
            (renumbered or {}).get(cluster))
    return out


def summarise_models(old: model.Policy | None,
                     new: model.Policy | None) -> list[ClusterSummary]:
    """What the models of both sides tell, for every cluster on either side (changed or
    not), in the new side's order; the members' chain changes come from the compiled
    files (`with_chain_changes`)."""
    # Name traffic with every object of the new side, used by a rule or not.
    vocabulary = Vocabulary.of_policy(new or old)  # type: ignore[arg-type]
    return [summarise_cluster(old_c, new_c, vocabulary) for old_c, new_c in _clusters(old, new)]


def with_chain_changes(summaries: list[ClusterSummary],
                       chains: dict[tuple[str, str], list[ChainChange]]) \
        -> list[ClusterSummary]:
    """SUMMARIES with each member's CHAINS (`compiled_chain_changes`); only the clusters
    that changed."""
    for summary in summaries:
        for member in summary.members:
            member.chains = chains[(summary.name, member.name)]
    return [summary for summary in summaries if summary]


def summarise_cluster(old: model.Cluster | None, new: model.Cluster | None,
                      vocabulary: Vocabulary | None = None) -> ClusterSummary:
    """One cluster's summary from the models (its members' chains: `with_chain_changes`)."""
    assert old is not None or new is not None
    name = (new or old).name  # type: ignore[union-attr]
    status = "added" if old is None else "removed" if new is None else "changed"
    summary = ClusterSummary(name, status)
    if old is not None and new is not None:
        summary.settings = cluster_settings(old, new)
    summary.rules = compare([r.text() for r in (old.rules if old else ())],
                            [r.text() for r in (new.rules if new else ())])
    summary.nat = compare([r.text() for r in (old.nat if old else ())],
                          [r.text() for r in (new.nat if new else ())])
    summary.allowed, summary.denied = traffic_changes(old, new, vocabulary)
    for before, after in _members(old, new):
        msum = MemberSummary((after or before).name,  # type: ignore[union-attr]
                             "added" if before is None else
                             "removed" if after is None else "changed")
        if before is not None and after is not None:
            msum.settings = member_settings(before, after)
        summary.members.append(msum)
    return summary


def chain_changes_json(chains: dict[tuple[str, str], list[ChainChange]]) -> list[Any]:
    """CHAINS as JSON data (a worker's answer; `chain_changes_of` reads it back)."""
    return [[cluster, member, [[c.family, c.table, c.chain, c.change.added, c.change.removed,
                                c.change.moved, list(c.policy) if c.policy else None]
                               for c in changes]]
            for (cluster, member), changes in chains.items()]


def chain_changes_of(value: Any) -> dict[tuple[str, str], list[ChainChange]]:
    """`chain_changes_json`'s data as chain changes; ValueError when it is not that."""
    try:
        out: dict[tuple[str, str], list[ChainChange]] = {}
        for cluster, member, changes in _list(value):
            out[(_string(cluster), _string(member))] = [
                ChainChange(_string(family), _string(table), _string(chain),
                            ListChange(_strings(added), _strings(removed), _strings(moved)),
                            None if policy is None else _pair(policy))
                for family, table, chain, added, removed, moved, policy in _list(changes)]
        if len(out) != len(_list(value)):
            raise ValueError("a member twice")
        return out
    except (TypeError, ValueError, IndexError) as exc:
        raise ValueError(f"not chain changes: {exc}") from None


def _string(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{value!r} is not a string")
    return value


def _list(value: Any) -> list[Any]:
    if not isinstance(value, list):
        raise TypeError(f"{value!r} is not a list")
    return value


def _strings(value: Any) -> list[str]:
    return [_string(v) for v in _list(value)]


def _pair(value: Any) -> tuple[str, str]:
    first, second = _strings(value)
    return first, second


def chain_changes(old_dir: Path | None, new_dir: Path | None,
                  renumbering: Renumbering | None = None) -> list[ChainChange]:
    """The rule changes of each chain of a member's compiled rulesets. With RENUMBERING
    the old side is read in the new side's rule numbers (fwc.diffing.renumber): a
    chain is reported under the name of the side that has it, the new one's first."""
    out: list[ChainChange] = []
    for fname, family in RULE_FILES:
        old_text = _text(old_dir / fname if old_dir else None)
        new_text = _text(new_dir / fname if new_dir else None)
        if old_text == new_text:  # most files of a small change: nothing to parse
            continue
        # (each text let go once parsed: at 100,000 rules one is about 100 MB)
        old = rulesets.parse(old_text)
        del old_text
        new = rulesets.parse(new_text)
        del new_text
        for table in sorted(set(old.tables) | set(new.tables)):
            old_t = old.tables.get(table, rulesets.Table(table))
            new_t = new.tables.get(table, rulesets.Table(table))
            # old chain by the name the new side gives it
            old_names = {renumbering.name(c) if renumbering else c: c for c in old_t.policies}
            chains = list(new_t.policies) + [c for c in old_names if c not in new_t.policies]
            for chain in chains:
                old_name = old_names.get(chain)
                old_rules = old_t.rules.get(old_name, []) if old_name is not None else []
                new_rules = new_t.rules.get(chain, [])
                change = _rule_changes(old_rules, new_rules, renumbering)
                before = old_t.policies.get(old_name) if old_name is not None else None
                after = new_t.policies.get(chain)
                if chain not in new_t.policies and old_name is not None:
                    chain = old_name  # only on the old side: its own name
                policy = (before or "none", after or "none") if before != after else None
                if change or policy:
                    out.append(ChainChange(family, table, chain, change, policy))
    return out


def _rule_changes(old: list[str], new: list[str],
                  renumbering: Renumbering | None) -> ListChange[str]:
    if renumbering is None and old == new:  # most chains of a small change
        return ListChange()
    old_keys = without_locations(old)
    if renumbering is not None:
        old_keys = renumbering.lines(old_keys)
    new_keys = without_locations(new)
    return compare_keyed(old, new, old_keys, new_keys) if old_keys != new_keys \
        else ListChange()


def _text(path: Path | None) -> str:
    if path is None or not path.is_file():
        return ""
    return path.read_text(encoding="utf-8")


def cluster_settings(old: model.Cluster, new: model.Cluster) -> list[str]:
    """VIP, VRID, VRRP, sync and default policy changes, one line each."""
    out: list[str] = []
    old_ifs = {i.name: i for i in old.interfaces}
    new_ifs = {i.name: i for i in new.interfaces}
    for name in list(new_ifs) + [n for n in old_ifs if n not in new_ifs]:
        before, after = old_ifs.get(name), new_ifs.get(name)
        if before is None:
            out.append(f"interface {name} added" + _vip_list(after))
            continue
        if after is None:
            out.append(f"interface {name} removed" + _vip_list(before))
            continue
        old_vips, new_vips = set(map(str, before.vips)), set(map(str, after.vips))
        for vip in sorted(new_vips - old_vips):
            out.append(f"interface {name}: VIP {vip} added")
        for vip in sorted(old_vips - new_vips):
            out.append(f"interface {name}: VIP {vip} removed")
        if before.vrid != after.vrid:
            out.append(f"interface {name}: VRID {before.vrid} -> {after.vrid}")
        out.extend(handling_change(old, new, name))
    out.extend(_fields("vrrp", old.vrrp, new.vrrp, (
        "advert_ms", "version", "auth", "preempt", "preempt_delay_s", "vrid",
        "garp_refresh_s", "unicast")))
    if (old.vrrp.password, old.vrrp.password_file) != (new.vrrp.password,
                                                       new.vrrp.password_file):
        out.append("vrrp: password changed")
    out.extend(_fields("sync", old.sync, new.sync,
                       ("link", "mode", "transport", "group", "port", "mark_bit",
                        "backup_link", "backup_port", "allow_labels")))
    out.extend(_fields("default", old.defaults, new.defaults, ("input", "forward", "output")))
    # Routes and route-rules by what they say (a moved line is no change).
    old_routes = [r.text() for r in old.routes]
    new_routes = [r.text() for r in new.routes]
    out += [f"{text} added" for text in new_routes if text not in old_routes]
    out += [f"{text} removed" for text in old_routes if text not in new_routes]
    old_rules = [_rule_text(r) for r in old.route_rules]
    new_rules = [_rule_text(r) for r in new.route_rules]
    out += [f"{text} added" for text in new_rules if text not in old_rules]
    out += [f"{text} removed" for text in old_rules if text not in new_rules]
    for member in old.members:
        if new.member(member.name) is None:
            out.append(f"member {member.name} removed")
    for member in new.members:
        if old.member(member.name) is None:
            out.append(f"member {member.name} added (priority {member.priority})")
    return out


def handling_change(old: model.Cluster, new: model.Cluster, interface: str) -> list[str]:
    """Who handles the traffic arriving on INTERFACE, and who takes it over, when that
    changed (a group's master, an interface moved between groups, priorities)."""
    before, after = interface_handling(old, interface), interface_handling(new, interface)
    if before.order == after.order:
        return []
    if before.normal != after.normal:
        def who(item: Handling) -> str:
            return f"{item.normal} ({item.why()})" if item.normal else f"nobody ({item.why()})"

        return [f"interface {interface}: traffic handled by {who(before)} -> {who(after)}"]
    return [f"interface {interface}: takeover order {', '.join(before.order)} -> "
            f"{', '.join(after.order)}"]


def _rule_text(rule: model.RouteRule) -> str:
    words = ["route-rule"]
    if rule.sources:
        words += ["from", ", ".join(map(str, rule.sources))]
    if rule.destinations:
        words += ["to", ", ".join(map(str, rule.destinations))]
    if rule.in_interface:
        words += ["in", rule.in_interface]
    if rule.mark is not None:
        words += ["mark", f"{rule.mark[0]:#x}/{rule.mark[1]:#x}"]
    words += ["table", str(rule.table), "priority", str(rule.priority)]
    if rule.follow:
        words += ["follow", "master"]
    if rule.only:
        words += ["only", rule.only]
    return " ".join(words)


def member_settings(old: model.Member, new: model.Member) -> list[str]:
    out: list[str] = []
    if old.priority != new.priority:
        out.append(f"priority {old.priority} -> {new.priority}")
    if old.master != new.master:
        out.append(f"master {'on' if new.master else 'off'}")
    if old.ssh != new.ssh:
        out.append(f"ssh {old.ssh or '-'} -> {new.ssh or '-'}")
    old_links = {link.interface: link for link in old.links}
    new_links = {link.interface: link for link in new.links}
    for iface in list(new_links) + [i for i in old_links if i not in new_links]:
        before, after = old_links.get(iface), new_links.get(iface)
        if before is None or after is None:
            link = after or before
            assert link is not None
            out.append(f"link {iface} ({link.device}) {'added' if before is None else 'removed'}")
            continue
        if before.device != after.device:
            out.append(f"link {iface}: device {before.device} -> {after.device}")
        if set(before.addresses) != set(after.addresses):
            out.append(f"link {iface}: addresses {_addrs(before.addresses)} -> "
                       f"{_addrs(after.addresses)}")
    return out


def _addrs(addresses: tuple[model.IPInterface, ...]) -> str:
    return ", ".join(map(str, addresses)) or "none"


def _vip_list(iface: model.Interface | None) -> str:
    if iface is None or not iface.vips:
        return ""
    return f" (VIP {', '.join(map(str, iface.vips))})"


def _fields(prefix: str, old: object, new: object, names: tuple[str, ...]) -> list[str]:
    out: list[str] = []
    for name in names:
        before, after = getattr(old, name), getattr(new, name)
        if before != after:
            label = name.removesuffix("_labels").replace("_", " ")
            out.append(f"{prefix}: {label} {_show(before)} -> {_show(after)}")
    return out


def _show(value: object) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, tuple):
        return ", ".join(map(str, value)) or "none"
    return str(value)
