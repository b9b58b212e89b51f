"""Target routes: the routes script of one member and the routes keepalived moves.

Routes go to the node two ways (docs/compile.md, "Routes"):

- `fwc-routes.sh`, run by `fwc-routes.service` once the network is up and by
  `fwc install`: per family one `ip -batch` that removes fwc's own routes and
  rules (protocol 94) and adds the policy's again, so that a route taken out of
  the policy leaves the node too and nothing else on the node is touched;
- `follow master` routes and rules: keepalived's `virtual_routes` and
  `virtual_rules` (`vrrp_routing`, used by the keepalived target), present only
  while the member is master.

With route-rules, a `lookup main suppress_prefixlength 0` rule comes first: the
connected networks and the main table's specific routes win over the tables,
whose default routes win over main's (the way fwc's analysis routes, too). The
routes script installs it, on every member and before the `follow master` rules
as well, which keepalived adds without one.
"""

from __future__ import annotations

from collections.abc import Iterator

from fwc import protocols as proto
from fwc.backend.files import BOOT_UNIT, GeneratedFile, path_of, unit_name
from fwc.backend.render.context import MemberBuild
from fwc.backend.render.templates import render_template
from fwc.model import Cluster, Member, Route, RouteRule
from fwc.model.records import dataclass
from fwc.model.topology import applies, route_interface


def route_words(cluster: Cluster, member: Member, route: Route) -> list[str] | None:
    """ROUTE as iproute2 (and keepalived's virtual_routes) write it; None: not here."""
    interface = route_interface(cluster, member, route)
    device = member.device(interface) if interface is not None else None
    if device is None:
        return None  # FWC240 stops the compile before this
    words = ["default" if route.is_default else str(route.destination)]
    if route.gateway is not None:
        words += ["via", str(route.gateway)]
    words += ["dev", device]
    if route.table is not None:
        words += ["table", str(route.table)]
    if route.source is not None:
        words += ["src", str(route.source)]
    if route.metric is not None:
        words += ["metric", str(route.metric)]
    return words


# For the uplink monitor (fwc.backend.render.uplinks): the same words for the same route.


def _rule_words(member: Member, rule: RouteRule) -> Iterator[list[str]]:
    """One `ip rule` selector per source x destination network (no priority, no table)."""
    for source in rule.sources or (None,):
        for destination in rule.destinations or (None,):
            words: list[str] = []
            if source is not None:
                words += ["from", str(source)]
            if destination is not None:
                words += ["to", str(destination)]
            if rule.in_interface is not None:
                words += ["iif", member.device(rule.in_interface) or rule.in_interface]
            if rule.mark is not None:
                value, mask = rule.mark
                words += ["fwmark", f"{value:#x}/{mask:#x}"]
            yield words


@dataclass(frozen=True, slots=True)
class FamilyBatch:
    family: int
    routes: tuple[tuple[str, ...], ...]  # `route replace ...` words, proto included
    rules: tuple[tuple[str, ...], ...]  # `rule add ...` words


def batches(cluster: Cluster, member: Member) -> list[FamilyBatch]:
    """What the routes script installs on MEMBER, per family (routes that do not follow)."""
    out: list[FamilyBatch] = []
    protocol = str(proto.ROUTE_PROTOCOL)
    for family in (4, 6):
        routes = []
        for route in cluster.routes:
            if route.family != family or route.follow or not applies(route, member):
                continue
            words = route_words(cluster, member, route)
            if words is not None:
                routes.append(("route", "replace", *words, "proto", protocol))
        here = [r for r in cluster.route_rules if r.family == family and applies(r, member)]
        own = [r for r in here if not r.follow]
        rules = []
        if here:
            # Before every rule of the member, keepalived's `follow master` ones too
            # (keepalived writes none of its own): otherwise their tables would win
            # over the connected networks on the master, the VIPs' own replies too.
            first = min(r.priority for r in here) - 1
            rules.append(("rule", "add", "pref", str(first), "lookup", "main",
                          "suppress_prefixlength", "0", "protocol", protocol))
        for rule in sorted(own, key=lambda r: r.priority):
            for words in _rule_words(member, rule):
                rules.append(("rule", "add", "pref", str(rule.priority), *words, "lookup",
                              str(rule.table), "protocol", protocol))
        if routes or rules:
            out.append(FamilyBatch(family, tuple(routes), tuple(rules)))
    return out


def member_batches(build: MemberBuild) -> tuple[FamilyBatch, ...]:
    """`batches` of BUILD's member, computed once per member build: whether the member
    gets the routes files (asked once per file row) and the script share them."""
    key = "routes batches"
    if key not in build.memo:
        build.memo[key] = tuple(batches(build.cluster, build.member))
    return build.memo[key]  # type: ignore[return-value]


def has_routes(build: MemberBuild) -> bool:
    """When the member gets the routes script and its unit (the files table's When.ROUTES)."""
    return bool(member_batches(build))


@dataclass(frozen=True, slots=True)
class VirtualRouting:
    """keepalived's `virtual_routes` and `virtual_rules` of one VRRP instance."""

    routes: tuple[tuple[str, ...], ...]
    rules: tuple[tuple[str, ...], ...]


def vrrp_routing(cluster: Cluster, member: Member, interface: str, family: int,
                 first_of_family: bool) -> VirtualRouting:
    """The `follow master` routes of INTERFACE (and, for the cluster's first instance of
    FAMILY, the `follow master` rules) for MEMBER's instance there."""
    routes = []
    for route in cluster.routes:
        if route.family != family or not route.follow or not applies(route, member):
            continue
        if route_interface(cluster, member, route) != interface:
            continue
        words = route_words(cluster, member, route)
        if words is not None:
            routes.append(tuple(words))
    rules = []
    if first_of_family:
        for rule in sorted(cluster.route_rules, key=lambda r: r.priority):
            if rule.family != family or not rule.follow or not applies(rule, member):
                continue
            for words in _rule_words(member, rule):
                rules.append((*words, "table", str(rule.table), "priority",
                              str(rule.priority)))
    return VirtualRouting(tuple(routes), tuple(rules))


def route_script_context(cluster: Cluster, member: Member, unit: str, log_tag: str) \
        -> dict[str, object]:
    """What a script of MEMBER that installs routes names (the routes script, the uplink
    monitor): its member and cluster, the unit file UNIT that runs it, the route protocol
    that marks fwc's routes and the syslog tag it logs with."""
    return {
        "cluster": cluster.name,
        "member": member.name,
        "unit": unit_name(unit),
        "protocol": proto.ROUTE_PROTOCOL,
        "log_tag": log_tag,
    }


def routes_script(cluster: Cluster, member: Member,
                  family_batches: tuple[FamilyBatch, ...]) -> str:
    """The routes script of MEMBER, installing FAMILY_BATCHES (`member_batches`)."""
    installed = {batch.family for batch in family_batches}
    return render_template("fwc-routes.sh.j2", {
        **route_script_context(cluster, member, "fwc-routes.service", proto.ROUTES_LOG_TAG),
        "batches": family_batches,
        # a family the policy no longer routes: its old routes and rules go all the same
        "flushed": [family for family in (4, 6) if family not in installed],
    })


def routes_unit(cluster: Cluster, member: Member) -> str:
    return render_template("fwc-routes.service.j2", {
        "cluster": cluster.name,
        "member": member.name,
        "path": path_of("fwc-routes.service"),
        "script": path_of("fwc-routes.sh"),
        "boot_unit": BOOT_UNIT,
    })


def render_file(build: MemberBuild, file: GeneratedFile) -> str:
    if file.name == "fwc-routes.service":
        return routes_unit(build.cluster, build.member)
    return routes_script(build.cluster, build.member, member_batches(build))
