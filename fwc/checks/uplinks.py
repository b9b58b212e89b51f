"""Uplink failover checks (FWC276-FWC279): probed routes (`route ... probe TARGET`).

A member with two uplinks switches its own routes when a gateway stops
answering (docs/language.md, "Uplink failover"). Each check guards against a
monitor that cannot tell a dead uplink from a live one (the probe goes another
way), a switch that leaves the traffic nowhere to go, a switch that breaks the
traffic it moves (source NAT bound to the failed uplink) or a timing that flaps
or notices nothing.
"""

from __future__ import annotations

from collections.abc import Iterable

from fwc import protocols as proto
from fwc.checks import check, describe
from fwc.diagnostics import Diagnostic, Related, Severity, Span, error, warning
from fwc.model import Cluster, IPAddress, IPNetwork, Member, NatRule, Policy
from fwc.model.addresses import AddressSet
from fwc.model.topology import route_interface, subnet_router_anycast, subnets
from fwc.model.uplinks import Uplink, on_link, uplinks
from fwc.model.vocabulary import NatAction

E, W = Severity.ERROR, Severity.WARNING

describe("FWC279", "uplink probe timing out of range", E, f"""
`probe TARGET interval D fall N rise N` on a route: the monitor pings every
interval ({proto.UPLINK_INTERVAL_RANGE_MS[0]} ms to
{proto.UPLINK_INTERVAL_RANGE_MS[1] // 1000} s; a ping waits at most one interval),
removes the route after `fall` misses in a row and restores it after `rise`
answers ({proto.UPLINK_COUNT_RANGE[0]}-{proto.UPLINK_COUNT_RANGE[1]}). `fall` below
{proto.UPLINK_MIN_SAFE_FALL} switches uplinks on a single lost echo (the routes flap
with ordinary loss), and a detection time (interval x (fall + 1)) above
{proto.UPLINK_SLOW_DETECTION_MS // 1000} s is an outage, not a failover. Also: the timing
options without `probe`.""")


Subnets = dict[int, list[tuple[str, IPNetwork]]]  # family -> `subnets` of a member


def _members(cluster: Cluster) -> Iterable[tuple[Member, tuple[Uplink, ...]]]:
    for member in cluster.members:
        found = uplinks(cluster, member)
        if found:
            yield member, found


def _subnets(cluster: Cluster, member: Member) -> Subnets:
    """MEMBER's `subnets` per family, computed once per member for all its uplinks."""
    return {family: subnets(cluster, member, family) for family in (4, 6)}


@check("FWC276", "uplink probe target not reachable through its uplink", E, """
The monitor decides whether an uplink works by pinging the probe target through
that uplink's gateway: a target on the uplink's own subnet (the gateway itself)
is a neighbour there, any other target gets a host route via the gateway, so
that the probe keeps going that way while the route is removed. A target that
is an address of the cluster (the Subnet-Router anycast address of a member's IPv6
subnet too: the member answers it itself), that lies on another interface's subnet of the
member (the ping would leave by that interface and say nothing about the
uplink), that two probed routes reach by different gateways (one host route
cannot go both ways), or that is off the subnet of a route without a gateway
(no host route can be pinned) measures something else than the uplink.""")
def probe_target_reachable(policy: Policy) -> Iterable[Diagnostic]:
    for cluster in policy.clusters:
        own = cluster.all_member_addresses | cluster.vips
        reported: set[Span] = set()
        for member, found in _members(cluster):
            nets = _subnets(cluster, member)
            pinned: dict[IPAddress, Uplink] = {}
            for uplink in found:
                route, probe = uplink.route, uplink.route.probe
                assert probe is not None
                key = route.span
                problem = None
                if own.contains_address(probe.target) or subnet_router_anycast(
                        cluster, probe.target) is not None:
                    problem = f"probe target {probe.target} is an address of the cluster"
                else:
                    other = next((name for name, net in nets[route.family]
                                  if probe.target in net and name != uplink.interface), None)
                    if other is not None:
                        problem = (f"probe target {probe.target} is on interface '{other}' of "
                                   f"member '{member.name}', not behind uplink "
                                   f"'{uplink.interface}'")
                    elif uplink.pin is None and route.gateway is None and not on_link(
                            cluster, member, uplink.interface, probe.target):
                        problem = (f"probe target {probe.target} is off the subnet of "
                                   f"'{uplink.interface}' and the route has no gateway")
                if problem is not None:
                    if key not in reported:
                        reported.add(key)
                        yield error("FWC276", problem, probe.span,
                                    hint="probe the gateway itself or a host beyond it that "
                                    "only this uplink reaches")
                    continue
                if uplink.pin is None:
                    continue
                first = pinned.get(probe.target)
                if first is not None and first.pin != uplink.pin and key not in reported:
                    reported.add(key)
                    yield error("FWC276", f"probe target {probe.target} is probed through "
                                f"{first.pin} and {uplink.pin} on member '{member.name}'",
                                probe.span, hint="one host route reaches the target: give each "
                                "uplink its own probe target",
                                related=[Related(first.route.span, "first probed here")])
                pinned.setdefault(probe.target, uplink)


@check("FWC277", "uplink failover with no route to fail over to", W, """
The monitor removes a probed route while its probe fails; the member's other
routes to the same destination in the same table with a higher metric (a
floating static route, usually through the second uplink) then carry the
traffic. A probed route in the main table without such a route leaves the member
without a route to the destination while the gateway is down: traffic is
refused ("network unreachable") rather than moved. (A probed route in a table of
its own falls back to the rules after that table's rule, normally the main
table: policy-routed traffic then takes the main uplink.) Add
`route DEST via OTHER-GATEWAY metric N` with N above the probed route's metric.""")
def uplink_has_fallback(policy: Policy) -> Iterable[Diagnostic]:
    for cluster in policy.clusters:
        reported: set[Span] = set()
        for member, found in _members(cluster):
            for uplink in found:
                route = uplink.route
                if uplink.fallbacks or route.table is not None or route.span in reported:
                    continue
                reported.add(route.span)
                yield warning("FWC277", f"probed route to {route.destination} has no route "
                              f"with a higher metric to take over on member '{member.name}'",
                              route.span, hint="add a route to the same destination via the "
                              "other uplink with a higher metric, e.g. 'metric 100'")


def _translates_to(rule: NatRule, nets: Subnets, interface: str) -> bool:
    """RULE's snat target is an address on INTERFACE's subnets (its VIP or another);
    NETS is the member's `_subnets`."""
    target = rule.target
    if target is None:
        return False
    if target.interface is not None:
        return target.interface == interface
    return any(target.addresses.overlaps(AddressSet.of(net))
               for family in (4, 6) for name, net in nets[family] if name == interface)


def _fallback_interfaces(cluster: Cluster, member: Member, uplink: Uplink) -> set[str]:
    out = set()
    for route in uplink.fallbacks:
        name = route_interface(cluster, member, route)
        if name is not None and name != uplink.interface:
            out.add(name)
    return out


def _translates_family(rule: NatRule, family: int) -> bool:
    """RULE can translate traffic of FAMILY: the switch of a probed route of one family
    moves only that family's traffic, which another family's NAT never saw."""
    source = rule.source
    return rule.works_in(family) and (source.is_any or source.firewall
                                      or source.addresses.family(family))


@check("FWC278", "source NAT does not follow an uplink switch", W, """
Source NAT is bound to an uplink: its address belongs to that provider, whose
upstream is the only one that routes the replies back. After the monitor moves
the traffic to the second uplink, an `snat ... -> uplink.vip` without `out
uplink` translates it to the first uplink's address on the second link (the
second provider drops it or the replies come back by the dead first uplink), and
an `snat ... out uplink` has no counterpart for the second uplink (the traffic
leaves untranslated). Write one rule per uplink, `snat ... out uplink ->
uplink.vip` and `snat ... out uplink2 -> uplink2.vip` (or masquerade with `out`).
Connections already translated to the first uplink's address cannot survive
the switch in any case: they break and are opened again through the second.""")
def snat_follows_uplink(policy: Policy) -> Iterable[Diagnostic]:
    for cluster in policy.clusters:
        reported: set[tuple[Span, str]] = set()
        for member, found in _members(cluster):
            nets = _subnets(cluster, member)
            for uplink in found:
                others = _fallback_interfaces(cluster, member, uplink)
                if not others:
                    continue
                family = uplink.route.family
                snats = [r for r in cluster.nat if r.action is NatAction.SNAT
                         and _translates_family(r, family)]
                translating = [r for r in cluster.nat
                               if r.action in (NatAction.SNAT, NatAction.MASQUERADE)
                               and _translates_family(r, family)]
                for rule in snats:
                    if not _translates_to(rule, nets, uplink.interface):
                        continue
                    if rule.out_interface is None or rule.out_interface in others:
                        key = (rule.span, uplink.interface)
                        if key not in reported:
                            reported.add(key)
                            yield warning(
                                "FWC278", f"snat to an address of uplink '{uplink.interface}' "
                                f"also applies after a switch to "
                                f"'{sorted(others)[0]}'", rule.span,
                                hint=f"add 'out {uplink.interface}' to this rule and write "
                                f"one for '{sorted(others)[0]}' with its own address",
                                related=[Related(uplink.route.span, "the probed route")])
                for rule in translating:
                    if rule.out_interface != uplink.interface:
                        continue
                    for other in sorted(others):
                        if any(r.out_interface == other and r.source.label == rule.source.label
                               for r in translating):
                            continue
                        key = (rule.span, other)
                        if key in reported:
                            continue
                        reported.add(key)
                        yield warning(
                            "FWC278", f"source NAT 'out {uplink.interface}' has no rule for "
                            f"'{other}': after a switch the traffic leaves untranslated",
                            rule.span, hint=f"add the same rule with 'out {other}' and "
                            f"'{other}'s address (sessions translated to "
                            f"'{uplink.interface}' break at the switch either way)",
                            related=[Related(uplink.route.span, "the probed route")])
