"""Active-active VRRP groups (FWC261-FWC269): `vrrp-group NAME { interface ...  master M }`.

Each guards against a group layout keepalived accepts and that then splits the
cluster in a way nobody meant: a VIP that belongs to no group or to two, a group
that nobody masters, or traffic whose two directions cross members (the state of
a connection lives on the member that saw it; its reply through the other member
is a packet without state).
"""

from __future__ import annotations

from collections.abc import Iterable

from fwc.checks import check, describe
from fwc.diagnostics import Diagnostic, Related, Severity, error, warning
from fwc.model import Cluster, Endpoint, Policy, Rule, VrrpGroup
from fwc.model.addresses import AddressSet
from fwc.model.topology import link_scoped, subnets

E, W = Severity.ERROR, Severity.WARNING

describe("FWC263", "vrrp-group declared twice or with two masters", E, """
A `vrrp-group` is one keepalived sync group with one preferred master: two
blocks of one name, or two `master` lines in one block, leave it open which
member holds the group's VIPs while both are well.""")


def _grouped(policy: Policy) -> Iterable[Cluster]:
    return (c for c in policy.clusters if c.groups)


@check("FWC261", "interface in two vrrp-groups", E, """
An interface's VIPs are one VRRP instance, and keepalived puts an instance in at
most one sync group ("is already a member of sync group" and it is dropped from
the second). The interface must be named by one `vrrp-group` only; which member
holds its VIPs is that group's master.""")
def interface_in_two_groups(policy: Policy) -> Iterable[Diagnostic]:
    for cluster in _grouped(policy):
        first: dict[str, VrrpGroup] = {}
        for group in cluster.groups:
            for name in group.interfaces:
                if name in first and first[name] is not group:
                    yield error("FWC261", f"interface '{name}' is in vrrp-group "
                                f"'{first[name].name}' and in '{group.name}'",
                                group.span_of_interface(name),
                                related=[Related(first[name].span_of_interface(name),
                                                 "first named here")])
                first.setdefault(name, group)


@check("FWC262", "VIP interface in no vrrp-group", E, """
With `vrrp-group` blocks every VIP belongs to a group: a VIP interface left out
would be an instance of its own, with no sync group (it would not move together
with anything) and no master order of its own. Name it in the group whose
traffic uses it.""")
def interface_in_no_group(policy: Policy) -> Iterable[Diagnostic]:
    for cluster in _grouped(policy):
        for iface in cluster.vrrp_interfaces:
            if cluster.group_of(iface.name) is None:
                yield error("FWC262", f"interface '{iface.name}' has VIPs but is in no "
                            "vrrp-group", iface.span,
                            hint="add it to the vrrp-group whose master should hold it")


@check("FWC264", "vrrp-group without a master member", E, """
A `vrrp-group` says which member holds its VIPs while every member is well
(`master M`): fwc gives that member the cluster's highest VRRP priority for the
group's instances and the others their own order below it. Without a master, or
with a name that is not a member of the cluster, the group has no preferred
master and active-active is whatever the election happens to give.""")
def group_without_master(policy: Policy) -> Iterable[Diagnostic]:
    for cluster in _grouped(policy):
        names = [m.name for m in cluster.members]
        for group in cluster.groups:
            if group.master is None:
                yield error("FWC264", f"vrrp-group '{group.name}' names no master",
                            group.span, hint=f"add 'master M' with M one of: {', '.join(names)}")
            elif cluster.member(group.master) is None:
                yield error("FWC264", f"vrrp-group '{group.name}': master "
                            f"'{group.master}' is not a member of cluster '{cluster.name}'",
                            group.master_span or group.span,
                            hint=f"members: {', '.join(names)}")


@check("FWC265", "vrrp-group names an interface without VIPs", E, """
A `vrrp-group` groups VRRP instances, and only an interface with VIPs has one:
an unknown name, the sync link or an interface without `vip` would be a group
member keepalived cannot find ("specified in sync group ... doesn't exist").
A group also needs at least one VIP interface to move anything.""")
def group_interface_without_vips(policy: Policy) -> Iterable[Diagnostic]:
    for cluster in _grouped(policy):
        for group in cluster.groups:
            for name in group.interfaces:
                iface = cluster.interface(name)
                if iface is None:
                    yield error("FWC265", f"vrrp-group '{group.name}' names unknown "
                                f"interface '{name}'", group.span_of_interface(name))
                elif not iface.vips:
                    what = "the sync link" if name == cluster.sync.link else "an interface"
                    yield error("FWC265", f"vrrp-group '{group.name}' names {what} without "
                                f"VIPs: '{name}'", group.span_of_interface(name))
            if not group.interfaces:
                yield error("FWC265", f"vrrp-group '{group.name}' names no interface",
                            group.span)


def _segment(cluster: Cluster, side: Endpoint) -> str | None:
    """The one interface whose segment holds every address SIDE of a rule lists (a
    network or host on it): the traffic comes from (goes to) there, so it arrives on
    (leaves by) that interface. None for any, the firewall, a VIP (traffic to the
    firewall, not through it), the members' own addresses and addresses on no single
    segment (beyond a router: no route is guessed)."""
    addresses = side.addresses
    if side.is_any or side.firewall or not addresses \
            or any(item.kind == "vip" for item in side.items):
        return None
    if AddressSet.union(m.addresses for m in cluster.members).covers(addresses):
        return None
    held: dict[str, AddressSet] = {}
    for member in cluster.members:
        for family in addresses.families:
            for name, net in subnets(cluster, member, family):
                if not link_scoped(net.network_address):
                    held[name] = held.get(name, AddressSet()) | AddressSet.of(net)
    holders = [name for name, nets in held.items() if nets.covers(addresses)]
    return holders[0] if len(holders) == 1 else None


def _masters(cluster: Cluster, rule: Rule) \
        -> tuple[tuple[str, VrrpGroup], tuple[str, VrrpGroup]] | None:
    """RULE's (in interface, its group) and (out interface, its group), when the groups'
    masters differ. A rule without `in` (`out`) arrives on (leaves by) the segment its
    sources (destinations) are on: `accept from lan to dmz` crosses the groups of lan
    and dmz as much as `accept from any to any in lan out dmz` does, and `fwc query`
    says so."""
    arrives = rule.in_interface or _segment(cluster, rule.source)
    leaves = rule.out_interface or _segment(cluster, rule.destination)
    if arrives is None or leaves is None:
        return None
    a, b = cluster.group_of(arrives), cluster.group_of(leaves)
    if a is None or b is None or a is b or a.master == b.master:
        return None
    return (arrives, a), (leaves, b)


@check("FWC266", "rule path crosses vrrp-groups with different masters", W, """
A connection that enters through one group's VIP and leaves through another's
whose master is a different member is routed asymmetrically: the clients send
to one member, the replies come back through the other. The conntrack state of
the connection lives on the member that saw its first packet; the other sees
the replies without state (INVALID, dropped by the automatic rules, or NEW
without SYN), and conntrackd replicates state for failover, not for packets
that arrive on the other member meanwhile. A rule without `in` (`out`) is placed
on the one segment that holds all its sources (destinations): `accept from lan
to dmz` crosses as `in lan out dmz` does. Put both interfaces of such traffic
in one group, or give the two groups the same master.""")
def asymmetric_path(policy: Policy) -> Iterable[Diagnostic]:
    for cluster in _grouped(policy):
        for rule in cluster.all_rules():
            found = _masters(cluster, rule)
            if found is None:
                continue
            (arrives, a), (leaves, b) = found
            yield warning("FWC266", f"traffic from '{arrives}' (vrrp-group "
                          f"'{a.name}', master {a.master}) to '{leaves}' "
                          f"(vrrp-group '{b.name}', master {b.master}) crosses two members",
                          rule.span, hint="its replies reach the other member, which holds "
                          "no state for the connection: put both interfaces in one group",
                          related=[Related(a.span, f"'{a.name}' mastered by {a.master}"),
                                   Related(b.span, f"'{b.name}' mastered by {b.master}")])


@check("FWC267", "vrrp-groups with preempt off", W, """
Load sharing needs each group back on its own master after a failure: with
`preempt off` a returning member never takes its group back, so after the first
failover both groups stay on one member (active-passive) until someone restarts
keepalived there. Intended for a cluster that must not move twice, hence a
warning.""")
def groups_without_preempt(policy: Policy) -> Iterable[Diagnostic]:
    for cluster in _grouped(policy):
        if cluster.vrrp.preempt:
            continue
        yield warning("FWC267", f"cluster '{cluster.name}' has vrrp-groups but 'preempt off': "
                      "after a failover every group stays on one member",
                      cluster.vrrp.span_of("preempt") or cluster.span,
                      hint="remove 'preempt off' so that each group returns to its master")


@check("FWC268", "vrrp-groups all mastered by one member", W, """
`vrrp-group` is for active-active: groups mastered by different members. When
every group names the same master, the cluster is active-passive with several
sync groups, which keepalived then moves independently (a failure in one group
moves only that group): one group without `vrrp-group` is the simpler and
safer way to write that.""")
def one_master_for_all(policy: Policy) -> Iterable[Diagnostic]:
    for cluster in _grouped(policy):
        masters = {g.master for g in cluster.groups if g.master is not None}
        if len(cluster.groups) > 1 and len(masters) == 1:
            yield warning("FWC268", f"every vrrp-group of cluster '{cluster.name}' is "
                          f"mastered by {masters.pop()}", cluster.groups[0].span,
                          hint="give a group another master, or drop the vrrp-group blocks")


@check("FWC269", "route-rule follows one of several vrrp-groups", W, """
A `follow master` route follows the VRRP instance of its own interface, so with
`vrrp-group` blocks it follows that interface's group. A `follow master`
route-rule has no interface: keepalived carries it on the cluster's first VRRP
instance of its family, so it follows that instance's group only, and while the
other group's master differs, the rule is on one member and the traffic it
steers may be on the other. Use a per-member rule (`only M`) or a route with
`dev IFACE` where that matters.""")
def rule_follows_one_group(policy: Policy) -> Iterable[Diagnostic]:
    for cluster in _grouped(policy):
        masters = {g.master for g in cluster.groups}
        if len(masters) < 2:
            continue
        for rule in cluster.route_rules:
            if not rule.follow:
                continue
            first = next((i for i in cluster.vrrp_interfaces if i.vips_of(rule.family)), None)
            group = cluster.group_of(first.name) if first is not None else None
            if group is None:
                continue
            yield warning("FWC269", f"this route-rule follows the master of vrrp-group "
                          f"'{group.name}' ({group.master}) only", rule.span,
                          hint="the other groups' masters do not carry it")
