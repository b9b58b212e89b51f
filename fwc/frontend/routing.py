"""Resolve a cluster's `route` and `route-rule` lines into `fwc.model.Route`/`RouteRule`.

Kept apart from `fwc.frontend.resolve` (which calls `resolve_routing`) so that the
routing language is one module: what each option accepts, and the resolver-stage
diagnostics (FWC101/106/109/110, FWC247 for table numbers, FWC249 for priorities).
Everything that depends on a member's addresses (which interface reaches a
gateway, whether it is on a subnet at all) is a check (`fwc.checks.routing`).
"""

from __future__ import annotations

import ipaddress
from typing import Any

from fwc import model as m
from fwc import protocols as proto
from fwc.diagnostics import Related
from fwc.frontend import close_matches
from fwc.frontend import syntax as s
from fwc.frontend.uplinks import PROBE_KEYS, resolve_probe
from fwc.model.addresses import AddressSet

# The resolver (fwc.frontend.resolve.Resolver) calls in here; it is not imported back,
# so that the two modules form no cycle.
Resolver = Any

_ROUTE_KEYS = ("via", "dev", "table", "src", "metric", "follow", "only", *PROBE_KEYS)


def _table(resolver: Resolver, opt: s.Option | None) -> int | None:
    if opt is None or opt.value is None:
        return None
    word = opt.value
    try:
        value = int(word.text)
    except ValueError:
        resolver.err("FWC109", f"table must be a number, got '{word.text}'", word.span)
        return None
    low, high = proto.ROUTE_TABLE_RANGE
    if not low <= value <= high:
        resolver.err("FWC247", f"routing table {value} is not one fwc may use", word.span,
                     hint=f"use {low}-{high}; leave 'table' out for the main table "
                     "(253-255 are the kernel's default, main and local tables)")
        return None
    return value


def _host(resolver: Resolver, word: s.Word, what: str) -> m.IPAddress | None:
    if "/" in word.text:
        resolver.err("FWC106", f"{what} '{word.text}' must be a single address", word.span,
                     hint=f"write it without a prefix: {word.text.split('/')[0]}")
        return None
    try:
        return ipaddress.ip_address(word.text)
    except ValueError:
        resolver.err("FWC106", f"malformed address '{word.text}'", word.span)
        return None


def _member(resolver: Resolver, opt: s.Option | None, members: set[str]) -> str | None:
    if opt is None or opt.value is None:
        return None
    name = opt.value.text
    if name not in members:
        close = close_matches(name, sorted(members), n=1)
        resolver.err("FWC101", f"undefined member '{name}'", opt.value.span,
                     hint=f"did you mean '{close[0]}'?" if close
                     else "name a member of this cluster")
        return None
    return name


def _interface(resolver: Resolver, opt: s.Option | None,
               ifaces: dict[str, m.Interface]) -> str | None:
    if opt is None or opt.value is None:
        return None
    return resolver.interface_ref(opt, ifaces)


def resolve_route(resolver: Resolver, decl: s.RouteDecl, ifaces: dict[str, m.Interface],
                  members: set[str]) -> m.Route | None:
    opts = resolver.unique_options(decl.options)
    ok = True
    gateway = None
    if "via" in opts and opts["via"].value is not None:
        gateway = _host(resolver, opts["via"].value, "gateway")
        ok = ok and gateway is not None
    word = decl.destination
    destination: m.IPNetwork | None = None
    if word.text == "default":
        if gateway is None:
            if ok:
                resolver.err("FWC109", "'route default' needs 'via GATEWAY'", word.span,
                             hint="the gateway's address family says which default route "
                             "this is: write 'route default via 198.51.100.1'")
            return None
        destination = ipaddress.ip_network("0.0.0.0/0" if gateway.version == 4 else "::/0")
    else:
        got = resolver.parse_address(word, want="any")
        if got is None:
            return None
        cidrs = got.cidrs(4) + got.cidrs(6)
        destination = ipaddress.ip_network(cidrs[0])
    if gateway is not None and gateway.version != destination.version:
        resolver.err("FWC106", f"route to {word.text} (IPv{destination.version}) via an "
                     f"IPv{gateway.version} gateway", opts["via"].span,
                     hint="a route and its gateway are of one address family")
        ok = False
    interface = _interface(resolver, opts.get("dev"), ifaces)
    if "dev" in opts and interface is None:
        ok = False
    if gateway is None and interface is None and "dev" not in opts:
        resolver.err("FWC109", f"route to {word.text} needs 'via GATEWAY' or 'dev IFACE'",
                     word.span, hint="name the next hop, or the interface the destination "
                     "is directly on")
        ok = False
    if gateway is not None and gateway.is_link_local and interface is None and ok:
        resolver.err("FWC109", f"link-local gateway {gateway} needs 'dev IFACE'",
                     opts["via"].span, hint="a link-local address is on every link: name "
                     "the interface it is reached on")
        ok = False
    table = _table(resolver, opts.get("table"))
    if "table" in opts and table is None:
        ok = False
    source = label = None
    if "src" in opts and opts["src"].value is not None:
        src = opts["src"].value
        if src.text.endswith(".vip"):
            name = src.text[: -len(".vip")]
            iface = ifaces.get(name)
            vips = iface.vips_of(destination.version) if iface is not None else ()
            if iface is None or not iface.vips:
                resolver.bad_vip_ref(name, src.span, ifaces)
                ok = False
            elif len(vips) != 1:
                resolver.err("FWC109", f"'{src.text}' has {len(vips)} IPv"
                             f"{destination.version} VIPs: a route source is one address",
                             src.span, hint="write the address itself")
                ok = False
            else:
                source, label = vips[0].ip, src.text
        else:
            source = _host(resolver, src, "route source")
            label = src.text
            ok = ok and source is not None
        if source is not None and source.version != destination.version:
            resolver.err("FWC106", f"route source {source} is not IPv{destination.version}",
                         src.span)
            ok = False
    metric = None
    if "metric" in opts and opts["metric"].value is not None:
        metric = resolver.integer(opts["metric"].value, "metric", 0, 2**32 - 1, "FWC109")
        ok = ok and metric is not None
    only = _member(resolver, opts.get("only"), members)
    if "only" in opts and only is None:
        ok = False
    probed, probe = resolve_probe(resolver, opts, destination.version, "follow" in opts)
    if not ok or not probed:
        return None
    return m.Route(destination, gateway, interface, table, source, label, metric,
                   "follow" in opts, only, decl.span, probe)


def _networks(resolver: Resolver, words: tuple[s.Word, ...]) -> AddressSet | None:
    out = AddressSet()
    ok = True
    for word in words:
        if word.text[:1].isdigit() or ":" in word.text:
            got = resolver.parse_address(word, want="any")
        else:
            resolver.used.add(word.text)
            obj = resolver.objects.get(word.text)
            if obj is None and word.text not in resolver.object_decls:
                resolver.undefined_object(word)
            got = obj.addresses if obj is not None else None
        if got is None:
            ok = False
            continue
        out = out | got
    return out if ok else None


def _mark(resolver: Resolver, word: s.Word) -> tuple[int, int] | None:
    value_text, _, mask_text = word.text.partition("/")
    value = int(value_text, 0)
    mask = int(mask_text, 0) if mask_text else 0xFFFFFFFF
    if value > 0xFFFFFFFF or mask > 0xFFFFFFFF or value & ~mask:
        resolver.err("FWC109", f"mark '{word.text}' is not a 32-bit value inside its mask",
                     word.span, hint="write VALUE or VALUE/MASK, e.g. 0x10 or 0x10/0xf0")
        return None
    return value, mask


def resolve_route_rule(resolver: Resolver, decl: s.RouteRuleDecl, position: int,
                       ifaces: dict[str, m.Interface], members: set[str],
                       route_families: dict[int | None, set[int]]) -> list[m.RouteRule]:
    """One RouteRule per address family the rule's addresses (or its table's routes) use."""
    opts = resolver.unique_options(decl.options)
    ok = True
    sources = _networks(resolver, decl.sources)
    destinations = _networks(resolver, decl.destinations)
    ok = sources is not None and destinations is not None
    in_iface = _interface(resolver, opts.get("in"), ifaces)
    if "in" in opts and in_iface is None:
        ok = False
    mark = _mark(resolver, opts["mark"].value) if "mark" in opts and opts["mark"].value \
        else None
    if "mark" in opts and mark is None:
        ok = False
    table = _table(resolver, opts.get("table"))
    if "table" not in opts and ok:
        resolver.err("FWC109", "a route-rule needs 'table N'", decl.span,
                     hint="the table whose routes the matching traffic uses")
    if table is None:
        ok = False
    priority = proto.ROUTE_RULE_FIRST_PRIORITY + proto.ROUTE_RULE_PRIORITY_STEP * position
    if "priority" in opts and opts["priority"].value is not None:
        low, high = proto.ROUTE_RULE_PRIORITY_RANGE
        got = resolver.integer(opts["priority"].value, "route-rule priority", low, high,
                               "FWC249")
        ok = ok and got is not None
        priority = got if got is not None else priority
    only = _member(resolver, opts.get("only"), members)
    if "only" in opts and only is None:
        ok = False
    if not ok or sources is None or destinations is None or table is None:
        return []
    if not decl.sources and not decl.destinations and mark is None and in_iface is None:
        resolver.err("FWC109", "a route-rule needs a selector: from, to, in or mark",
                     decl.span, hint="a rule without one sends all traffic to the table; "
                     "put those routes in the main table instead")
        return []
    families = {f for f in (4, 6) if sources.family(f) or destinations.family(f)}
    if not families:
        families = route_families.get(table) or {4}
    out = []
    for family in sorted(families):
        if (decl.sources and not sources.family(family)) or \
                (decl.destinations and not destinations.family(family)):
            continue  # e.g. from an IPv4 network to anything: no IPv6 rule
        out.append(m.RouteRule(
            family, tuple(ipaddress.ip_network(c) for c in sources.cidrs(family)),
            tuple(ipaddress.ip_network(c) for c in destinations.cidrs(family)),
            in_iface, mark, table, priority, "follow" in opts, only, decl.span))
    return out


def resolve_routing(resolver: Resolver, decl: s.ClusterDecl, interfaces: tuple[m.Interface, ...],
                    members: tuple[m.Member, ...]) \
        -> tuple[tuple[m.Route, ...], tuple[m.RouteRule, ...]]:
    ifaces = {i.name: i for i in interfaces}
    names = {mb.name for mb in members}
    routes: list[m.Route] = []
    for item in decl.routes:
        if isinstance(item, s.RouteDecl):
            route = resolve_route(resolver, item, ifaces, names)
            if route is not None:
                routes.append(route)
    families: dict[int | None, set[int]] = {}
    for route in routes:
        families.setdefault(route.table, set()).add(route.family)
    rules: list[m.RouteRule] = []
    seen: dict[tuple[int, int], m.RouteRule] = {}
    position = 0
    for item in decl.routes:
        if not isinstance(item, s.RouteRuleDecl):
            continue
        for rule in resolve_route_rule(resolver, item, position, ifaces, names, families):
            key = (rule.family, rule.priority)
            first = seen.get(key)
            same_member = first is not None and (
                first.only is None or rule.only is None or first.only == rule.only)
            if first is not None and first.span != rule.span and same_member:
                resolver.err("FWC249", f"route-rule priority {rule.priority} is used twice",
                             rule.span, hint="iproute2 would order them by the moment they "
                             "were added; give each rule its own priority",
                             related=[Related(first.span, "first used here")])
                continue
            seen.setdefault(key, rule)
            rules.append(rule)
        position += 1
    return tuple(routes), tuple(rules)
