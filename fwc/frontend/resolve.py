"""Resolve names and values: syntax tree -> `fwc.model.Policy`.

Every problem becomes a diagnostic with the span of what was written; the
resolver goes on after an error so that one run reports as much as it can.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Iterator
from pathlib import Path

from fwc import model as m
from fwc import protocols as proto
from fwc.diagnostics import Diagnostic, OptionSpans, Related, Span, error, warning
from fwc.frontend import close_matches
from fwc.frontend import syntax as s
from fwc.frontend.fastpath import PLAIN_ENDPOINTS, PLAIN_WORD, _new
from fwc.frontend.loader import LoadedProgram
from fwc.frontend.routing import resolve_routing
from fwc.frontend.sources import Refused
from fwc.model import item_key
from fwc.model.addresses import AddressSet
from fwc.model.addresses import plain_ipv4 as _plain_ipv4  # (tests patch it here)
from fwc.model.intervals import normalise
from fwc.model.records import maker
from fwc.model.ssh import SSH_TARGET_FORM, ssh_target_problem
from fwc.model.vocabulary import Backend, FilterAction, NatAction, Verdict
from fwc.text import decode_literal

IPV4_BITS, IPV6_BITS = 32, 128
_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")  # IPv4-mapped IPv6 addresses (RFC 4291)
# What the endpoint keywords mean (docs/language.md, "Endpoints"), for the diagnostics
# of an object named like one.
_KEYWORD_MEANING = {"any": "every address but the firewall's own",
                    "firewall": "the cluster members' own addresses and VIPs"}


def _small_int(digits: str) -> int:
    """int() of a digit string, saturated: int() refuses more than 4300 digits."""
    return int(digits) if len(digits) <= 10 else 10**10


def flat_order(members: dict[str, list[str]]) -> list[str] | None:
    """Members before their containers, when no definition contains one with members of
    its own; None when definitions nest (then the order needs the graph).

    The order is the one of networkx's topological sort of the same graph, reversed, so
    that a policy resolves alike whichever way it takes: first everything nothing
    contains, in definition order, then each contained name once its last container is
    passed (tests/test_resolve_order.py holds the two together).
    """
    contained = {name: dict.fromkeys(n for n in names if n in members) if names else {}
                 for name, names in members.items()}  # (most names: hosts, no members)
    containers: dict[str, int] = {}
    for children in contained.values():
        for child in children:
            if contained[child]:
                return None
            containers[child] = containers.get(child, 0) + 1
    top = [name for name in members if name not in containers]
    below: list[str] = []
    for name in top:
        for child in contained[name]:
            containers[child] -= 1
            if containers[child] == 0:
                below.append(child)
    return list(reversed(top + below))


# Option keys of the syntax tree that the language spells differently: messages name
# an option the way the user wrote it.
WRITTEN = {"sync-link": "link", "sync-mode": "mode", "password-file": "password file",
           "backup-port": "port", "limit-burst": "burst", "syn-limit-burst": "burst",
           "log-level": "level", "log-rate": "rate", "log-burst": "burst",
           "log-group": "group", "log-drops": "drops"}


def written(key: str) -> str:
    """An option key as the policy writes it (`sync-link` is written `link`)."""
    return WRITTEN.get(key, key)


def _did_you_mean(name: str, known: Iterable[str]) -> str | None:
    close = close_matches(name, list(known), n=1)
    return f"did you mean '{close[0]}'?" if close else None



def _plain_address(text: str, want: str = "any") -> AddressSet | None:
    """What `Resolver.parse_address(word, want=WANT)` makes of a plain IPv4 address or
    network without host bits (`_plain_ipv4`), without a Word or ipaddress objects; None
    for anything else (that way words it, or its error)."""
    plain = _plain_ipv4(text)
    if plain is None or (want == "network" and plain[1] < 0) \
            or (want == "host" and plain[1] not in (-1, 32)):
        return None
    interval = _ipv4_interval(*plain)
    return None if interval is None else _ADDRESS_SET((interval,), ())


def _plain_interval(text: str) -> tuple[int, int] | None:
    """The one IPv4 interval of `_plain_address(TEXT)` (want "any"), or None when that is
    None: a group's literal members go straight into its interval list."""
    plain = _plain_ipv4(text)
    return None if plain is None else _ipv4_interval(*plain)


def _ipv4_interval(number: int, prefix: int) -> tuple[int, int] | None:
    """The interval of a `_plain_ipv4` answer; None for a network with host bits set."""
    if prefix < 0:
        return number, number
    host = (1 << (32 - prefix)) - 1
    if prefix == 32 or not number & host:
        return number, number | host
    return None


_NOTHING = AddressSet()  # any/firewall items: their addresses depend on the member
_NO_LOG_OPTIONS = m.LogOptions()  # most rules: the cluster's log defaults
_FILTER_ACTIONS = {a.value: a for a in FilterAction}  # a dict lookup, not Enum's __call__
# The records made per plain rule line, built from every field in order without an
# __init__ call (fwc.model.records.maker).
_FILTER_RULE = maker(m.FilterRule)
_ENDPOINT = maker(m.Endpoint)
_ENDPOINT_ITEM = maker(m.EndpointItem)
_ADDRESS_OBJECT = maker(m.AddressObject)
_ADDRESS_SET = maker(AddressSet)
# Rule options that `Resolver.rule_extras` has nothing to do for (read by resolve_rule).
_PLAIN_OPTIONS = frozenset({"service", "in", "out", "only", "log"})
_FIRST_ITEM_KEYS = {side: item_key(side, 0) for side in ("from", "to")}  # most lists' one


def _item_spans(rd: s.RuleDecl) -> list[tuple[str, Span]]:
    """Where each from/to item of RD was written, under its `item_key` (first among the
    rule's option spans, as `Resolver.line_rule` puts them)."""
    return [(item_key(side, index), item.span)
            for side, items in (("from", rd.sources), ("to", rd.destinations))
            for index, item in enumerate(items)]


def _option_spans(opts: dict[str, s.Option], at_value: bool = False) \
        -> Iterator[tuple[str, Span]]:
    """Where each option of OPTS was written (AT_VALUE: at its value, where it has one),
    by its key: what `OptionSpans.of` takes."""
    for key, option in opts.items():
        yield key, option.value.span if at_value and option.value is not None else option.span


def _rule_spans(rd: s.RuleDecl, opts: dict[str, s.Option]) -> OptionSpans:
    """A rule's option spans: its items' (`_item_spans`), then each option's, at its
    value where it has one."""
    return OptionSpans.of([*_item_spans(rd), *_option_spans(opts, at_value=True)])


class Resolver:
    def __init__(self, program: LoadedProgram, read_secret=None) -> None:
        self.program = program
        self.diagnostics: list[Diagnostic] = []
        self.used: set[str] = set()
        self.used_services: set[str] = set()
        self.read_secret = read_secret or (lambda p: p.read_text(encoding="utf-8"))
        self.object_decls: dict[str, s.AddressDef | s.GroupDef] = {}
        self.service_decls: dict[str, s.ServiceDef] = {}
        self.objects: dict[str, m.AddressObject] = {}
        self.services: dict[str, m.Service] = {}
        self.broken_vips: set[str] = set()  # interfaces whose VIP did not resolve
        self.refused_keywords: set[str] = set()  # objects named `any`/`firewall` (FWC102)
        # An inline service (`tcp/443`) means the same wherever it is written: resolved
        # once per run and text (only when it resolved without a diagnostic).
        self.service_specs: dict[str, m.ServiceMatch] = {}
        # What the words and service lists of plain rule lines resolve to (`line_rule`).
        self._line_words: dict[str, m.EndpointItem] = {}
        self._line_sides: dict[str, m.Endpoint] = {}  # a RuleLine's from/to list text -> it
        self._line_services: dict[str, tuple[tuple[m.ServiceMatch, ...],
                                              tuple[str, ...]] | tuple[()]] = {}

    # -- helpers ---------------------------------------------------------------
    def err(self, code: str, message: str, span: Span | None, hint: str | None = None,
            related: Iterable[Related] = ()) -> None:
        self.diagnostics.append(error(code, message, span, hint, related))

    def warn(self, code: str, message: str, span: Span | None, hint: str | None = None) -> None:
        self.diagnostics.append(warning(code, message, span, hint))

    def parse_address(self, word: s.Word, *, want: str) -> AddressSet | None:
        """want: 'host' (no prefix or full prefix), 'network' (prefix, no host bits), 'any'."""
        text = word.text
        plain = _plain_address(text, want)
        if plain is not None:  # the common case; errors and the rest below
            return plain
        try:
            if "/" in text:
                net = ipaddress.ip_network(text, strict=False)
                if want == "host" and net.prefixlen != net.max_prefixlen:
                    self.err("FWC106", f"a host address cannot have a prefix: '{text}'",
                             word.span, hint=f"use 'network' for {net}, or write "
                             f"{text.split('/')[0]}")
                    return None
                if net.network_address != ipaddress.ip_interface(text).ip \
                        and net.prefixlen != net.max_prefixlen:
                    self.err("FWC106", f"'{text}' has host bits set", word.span,
                             hint=f"the network is {net}")
                    return None
                if self.ipv4_mapped(word, net):
                    return None
                return AddressSet.of(net)
            addr = ipaddress.ip_address(text)
            if self.ipv4_mapped(word, ipaddress.ip_network(addr)):
                return None
            if want == "network":
                self.err("FWC106", f"a network needs a prefix length: '{text}'", word.span,
                         hint=f"write {text}/{addr.max_prefixlen} or declare a 'host'")
                return None
            return AddressSet.of(addr)
        except ValueError:
            self.err("FWC106", f"malformed address '{text}'", word.span,
                     hint="write an IPv4 (192.0.2.1, 192.0.2.0/24) or IPv6 (2001:db8::1) "
                     "address")
            return None

    def ipv4_mapped(self, word: s.Word, net: ipaddress.IPv4Network | ipaddress.IPv6Network) \
            -> bool:
        """FWC106 when NET is IPv4 written as IPv4-mapped IPv6 (`::ffff:192.0.2.10`): it goes
        into the IPv6 rules, which IPv4 packets never meet (and Linux drops IPv6 packets
        from such a source), so a `drop` of it never dropped 192.0.2.10. The whole block
        (`::ffff:0:0/96`, a bogon) is an address like any other."""
        if not isinstance(net, ipaddress.IPv6Network) or net.prefixlen <= _MAPPED.prefixlen \
                or not net.subnet_of(_MAPPED):
            return False
        v4 = ipaddress.ip_network((net.network_address.ipv4_mapped,
                                   net.prefixlen - _MAPPED.prefixlen))
        self.err("FWC106", f"'{word.text}' is IPv4 written as IPv4-mapped IPv6: only the IPv6 "
                 "rules get it, so it never matches IPv4 traffic", word.span,
                 hint=f"write {v4.network_address if v4.prefixlen == 32 else v4}")
        return True

    def parse_range(self, word: s.Word) -> AddressSet | None:
        first_text, _, last_text = word.text.partition("-")
        try:
            first = ipaddress.ip_address(first_text)
            last = ipaddress.ip_address(last_text)
        except ValueError:
            self.err("FWC106", f"malformed address range '{word.text}'", word.span,
                     hint="write FIRST-LAST, e.g. 192.0.2.100-192.0.2.150")
            return None
        if first.version != last.version:
            self.err("FWC106", f"range '{word.text}' mixes IPv4 and IPv6", word.span)
            return None
        if int(last) < int(first):
            self.err("FWC106", f"range '{word.text}' ends before it starts", word.span,
                     hint=f"write {last}-{first}")
            return None
        if isinstance(first, ipaddress.IPv6Address) and first.ipv4_mapped is not None \
                and last.ipv4_mapped is not None:
            self.err("FWC106", f"'{word.text}' is IPv4 written as IPv4-mapped IPv6: only "
                     "the IPv6 rules get it, so it never matches IPv4 traffic", word.span,
                     hint=f"write {first.ipv4_mapped}-{last.ipv4_mapped}")
            return None
        return AddressSet.from_range(first, last)

    def parse_interface_address(self, word: s.Word, what: str) -> m.IPInterface | None:
        if "/" not in word.text:
            self.err("FWC206", f"{what} '{word.text}' has no prefix length", word.span,
                     hint="write it with the interface's prefix, e.g. 192.0.2.1/24 "
                     "(keepalived would default a VIP to /32)")
            return None
        try:
            return ipaddress.ip_interface(word.text)
        except ValueError:
            self.err("FWC106", f"malformed address '{word.text}'", word.span)
            return None

    def integer(self, word: s.Word, what: str, low: int, high: int, code: str) -> int | None:
        try:
            value = int(word.text)
        except ValueError:
            self.err("FWC109", f"{what} must be a number, got '{word.text}'", word.span)
            return None
        if not low <= value <= high:
            self.err(code, f"{what} {value} is out of range {low}-{high}", word.span)
            return None
        return value

    def fall_rise(self, opts: dict[str, s.Option], what: str, defaults: tuple[int, int],
                  bounds: tuple[int, int], code: str) -> tuple[dict[str, int], bool]:
        """The `fall` and `rise` counts of a track or an uplink probe (failures in a row
        before down, successes before up), DEFAULTS where not written; False after an
        error (reported)."""
        counts = {"fall": defaults[0], "rise": defaults[1]}
        ok = True
        for key in counts:
            if key in opts and opts[key].value is not None:
                value = self.integer(opts[key].value, f"{what} {key}", *bounds, code)
                if value is None:
                    ok = False
                else:
                    counts[key] = value
        return counts, ok

    def duration_ms(self, word: s.Word, what: str) -> int | None:
        text = word.text
        try:
            if text.endswith("ms"):
                return round(float(text[:-2]))
            if text.endswith("s"):
                return round(float(text[:-1]) * 1000)
            return int(text) * 1000
        except (ValueError, OverflowError):  # float('9' * 400) is inf
            self.err("FWC109", f"malformed {what} '{text}'", word.span,
                     hint="write a duration such as 1s or 100ms")
            return None

    def rate(self, word: s.Word, what: str) -> m.Rate | None:
        """COUNT/UNIT; the grammar allows only the units of protocols.RATE_UNITS."""
        count_text, _, unit = word.text.partition("/")
        count = _small_int(count_text)
        if count < 1:
            self.err("FWC109", f"{what} {word.text} is zero", word.span,
                     hint="write at least 1 per unit, e.g. 1/minute")
            return None
        per_second = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}[unit]
        if count / per_second > proto.LIMIT_RATE_MAX_PER_SECOND:
            self.err("FWC109", f"{what} {word.text} is faster than the kernel can limit",
                     word.span, hint=f"at most {proto.LIMIT_RATE_MAX_PER_SECOND}/second")
            return None
        return m.Rate(count, unit)

    def burst(self, word: s.Word) -> int | None:
        return self.integer(word, "burst", 1, proto.LIMIT_BURST_MAX, "FWC109")

    def choice(self, word: s.Word, what: str, options: Iterable[str]) -> str | None:
        opts = tuple(options)
        if word.text in opts:
            return word.text
        close = close_matches(word.text, opts, n=1)
        hint = f"expected one of: {', '.join(opts)}"
        self.err("FWC109", f"unknown {what} '{word.text}'", word.span,
                 hint=f"did you mean '{close[0]}'? ({hint})" if close else hint)
        return None

    # -- objects -------------------------------------------------------------------
    def declare(self, statements: list[s.Statement]) -> None:
        objects = s.AddressDef | s.GroupDef  # (made once, not per statement)
        for st in statements:
            if isinstance(st, objects):
                table, name = self.object_decls, st.name
            elif isinstance(st, s.ServiceDef):
                table, name = self.service_decls, st.name
                self.not_any(name, "service", "service any", "protocol")
            else:
                continue
            previous = table.get(name.text)
            if table is self.object_decls and name.text in PLAIN_ENDPOINTS:
                # A rule's `any`/`firewall` is the keyword, a group's the object: one name
                # with two meanings, and `to firewall` opened the nodes, not the host.
                self.err("FWC102", f"'{name.text}' is defined by the language: in a rule "
                         f"'{name.text}' means {_KEYWORD_MEANING[name.text]}, never this "
                         "object", name.span, hint=f"rename the object, e.g. '{name.text}-host'")
                self.refused_keywords.add(name.text)
                continue
            if previous is not None:
                self.err("FWC102", f"'{name.text}' is defined twice", name.span,
                         hint="rename one of them",
                         related=[Related(previous.name.span, "first defined here")])
                continue
            table[name.text] = st  # type: ignore[assignment]

    def not_any(self, name: s.Word, kind: str, written: str, every: str) -> None:
        """FWC102 for a service, interface or member named `any`: a rule's WRITTEN
        (`service any`, `in any`, `only any`) reads as every EVERY and meant this one
        alone (`drop ... service any` dropped only what the service lists)."""
        if name.text == "any":
            self.err("FWC102", f"{kind} named 'any': a rule's '{written}' reads as every "
                     f"{every}, and would mean this {kind} alone", name.span,
                     hint=f"rename the {kind}" + (
                         "; a rule without 'service' matches every protocol"
                         if kind == "service" else ""))

    def definition_order(self, kind: str, members: dict[str, list[str]],
                         spans: dict[str, Span]) -> list[str]:
        """Names in an order where members come before what contains them.

        Names on a cycle are reported (the cycle path is printed) and left out.
        """
        flat = flat_order(members)
        if flat is not None:
            return flat
        # Nested groups or services (or a cycle) are a graph; networkx costs ~80 ms to
        # import, which `fwc --version` and policies without nesting do not pay.
        import networkx as nx

        graph: nx.DiGraph = nx.DiGraph()
        for name, contained in members.items():
            graph.add_node(name)
            graph.add_edges_from((name, other) for other in contained if other in members)
        cyclic: set[str] = set()
        for component in nx.strongly_connected_components(graph):
            if len(component) > 1 or any(graph.has_edge(n, n) for n in component):
                start = min(component)
                cycle = nx.find_cycle(graph, start)
                path = " -> ".join([a for a, _ in cycle] + [cycle[0][0]])
                self.err("FWC108", f"{kind} cycle: {path}", spans[start],
                         hint=f"a {kind} cannot contain itself, directly or through others")
                cyclic |= component
        acyclic = graph.subgraph([n for n in graph if n not in cyclic])
        return list(reversed(list(nx.topological_sort(acyclic))))

    def resolve_objects(self) -> None:
        members = {
            name: [i.text for i in decl.members if i.kind == "name"]
            if isinstance(decl, s.GroupDef) else []
            for name, decl in self.object_decls.items()}
        spans = {name: decl.name.span for name, decl in self.object_decls.items()}
        for name in self.definition_order("group", members, spans):
            self.objects[name] = self.build_object(self.object_decls[name])

    def build_object(self, decl: s.AddressDef | s.GroupDef) -> m.AddressObject:
        if isinstance(decl, s.AddressDef):
            values = decl.values
            if len(values) == 1 and decl.kind != "range":  # most: one address
                got = self.parse_address(values[0], want=decl.kind)
                return _ADDRESS_OBJECT(decl.name.text, decl.kind,
                                       _NOTHING if got is None else got, (), decl.span)
            addresses = AddressSet()
            for word in decl.values:
                if decl.kind == "range":
                    got = self.parse_range(word)
                else:
                    got = self.parse_address(word, want=decl.kind)
                if got is not None:
                    addresses = addresses | got
            return m.AddressObject(decl.name.text, decl.kind, addresses, (), decl.span)
        # One union at the end: adding members one by one re-sorted the growing set
        # (quadratic in the group size; a 500-prefix group was visible in the profile).
        # The members' intervals are gathered as `AddressSet.union` gathers them, a plain
        # IPv4 member's straight from its text (no AddressSet for each).
        v4: list[tuple[int, int]] = []
        v6: list[tuple[int, int]] = []
        for item in decl.members:
            kind = item.kind
            if kind == "name":
                self.used.add(item.text)
                member = self.objects.get(item.text)
                if member is None:
                    if item.text not in self.object_decls:
                        self.undefined_object(item)
                    continue
                got = member.addresses
            elif kind == "address":
                interval = _plain_interval(item.text)  # most members of large groups
                if interval is not None:
                    v4.append(interval)
                    continue
                got = self.parse_address(s.Word(item.text, item.span), want="any")
            elif kind == "range":
                got = self.parse_range(s.Word(item.text, item.span))
            else:
                continue
            if got is not None:
                v4.extend(got.v4)
                v6.extend(got.v6)
        addresses = _ADDRESS_SET(normalise(v4), normalise(v6))
        if not decl.members:
            self.err("FWC104", f"group '{decl.name.text}' is empty", decl.name.span,
                     hint="add members, or remove the group")
        return m.AddressObject(decl.name.text, "group", addresses,
                               tuple(i.text for i in decl.members), decl.span)

    def undefined_object(self, item: s.Endpoint | s.Word) -> None:
        name = item.text
        if name in PLAIN_ENDPOINTS:  # (a group's or a route-rule's member: a plain name)
            if name not in self.refused_keywords:  # (its definition was reported)
                self.err("FWC101", f"'{name}' is no object: it means "
                         f"{_KEYWORD_MEANING[name]} in a rule's source or destination only",
                         item.span, hint="write the addresses (0.0.0.0/0, ::/0) here, or "
                         "'any' in the rule" if name == "any" else "name 'firewall' in the rule")
            return
        hint = _did_you_mean(name, self.object_decls)
        if hint is None and name in self.service_decls:
            hint = f"'{name}' is a service, not an address object"
        self.err("FWC101", f"undefined object '{name}'", item.span,
                 hint=hint or "define it with host, network, range or group")

    # -- services --------------------------------------------------------------------
    def resolve_services(self) -> None:
        members = {name: [i.text for i in decl.items if i.kind == "name"]
                   for name, decl in self.service_decls.items()}
        spans = {name: decl.name.span for name, decl in self.service_decls.items()}
        for name in self.definition_order("service", members, spans):
            decl = self.service_decls[name]
            helper = None
            if decl.helper is not None:
                helper = self.choice(decl.helper, "conntrack helper", proto.CONNTRACK_HELPERS)
            matches: list[m.ServiceMatch] = []
            for item in decl.items:
                matches.extend(self.service_item(item))
            if helper:
                matches = [m.ServiceMatch(x.protocol, x.number, x.ports, x.icmp_type,
                                          x.icmp_name, helper) for x in matches]
            self.protocol_named(decl, matches)
            self.services[name] = m.Service(name, tuple(matches), helper, decl.span)

    def protocol_named(self, decl: s.ServiceDef, matches: list[m.ServiceMatch]) -> None:
        """FWC102 when service DECL takes the name of a protocol (`gre`, `tcp`) for something
        else: a rule's bare `gre` is that service, so `service gre tcp/1-65535` opened
        every TCP port under a name that reads as GRE. Exactly the protocol is fine
        (`service gre proto/gre`, as the library writes it)."""
        name = decl.name.text
        number = proto.IP_PROTOCOLS.get(name)
        if number is None or matches == [m.ServiceMatch(name, number)]:
            return
        self.err("FWC102", f"service '{name}' takes the name of the {name} protocol "
                 f"(proto/{number}) for something else: a rule's 'service {name}' reads as "
                 "the whole protocol", decl.name.span,
                 hint=f"rename the service, e.g. '{name}-custom', or define it as "
                 f"'proto/{name}'")

    def service_item(self, item: s.ServiceRef) -> tuple[m.ServiceMatch, ...]:
        """What ITEM matches (a named service: its matches, shared); () when undefined."""
        if item.kind == "spec":
            got = self.service_specs.get(item.text)
            if got is None:
                reported = len(self.diagnostics)
                got = self.parse_service_spec(item)
                if got is not None and len(self.diagnostics) == reported:
                    self.service_specs[item.text] = got
            return (got,) if got else ()
        if item.text in self.service_decls:
            self.used_services.add(item.text)
            svc = self.services.get(item.text)
            return svc.matches if svc else ()
        if item.text in proto.IP_PROTOCOLS:
            return (m.ServiceMatch(item.text, proto.IP_PROTOCOLS[item.text]),)
        hint = _did_you_mean(item.text, list(self.service_decls) + list(proto.IP_PROTOCOLS))
        if hint is None and item.text in self.object_decls:
            hint = f"'{item.text}' is an address object, not a service"
        self.err("FWC101", f"undefined service '{item.text}'", item.span,
                 hint=hint or "define it with 'service NAME tcp/PORT', or write tcp/PORT inline")
        return ()

    def parse_service_spec(self, item: s.ServiceRef) -> m.ServiceMatch | None:
        protocol, _, rest = item.text.partition("/")
        if protocol in proto.PORT_PROTOCOLS:
            ports: list[m.PortRange] = []
            for part in rest.split(","):
                low_text, dash, high_text = part.partition("-")
                if not low_text.isdigit() or (dash and not high_text.isdigit()):
                    self.err("FWC107", f"malformed port '{part}' in '{item.text}'", item.span,
                             hint="ports are numbers 0-65535; ranges are written LOW-HIGH")
                    return None
                low = _small_int(low_text)
                high = _small_int(high_text) if dash else low
                if high > 65535 or low > high:
                    self.err("FWC107", f"invalid port '{part}' in '{item.text}'", item.span,
                             hint="ports are 0-65535 and a range is LOW-HIGH with LOW <= HIGH")
                    return None
                ports.append(m.PortRange(low, high))
            ports.sort(key=lambda p: (p.low, p.high))
            return m.ServiceMatch(protocol, proto.IP_PROTOCOLS[protocol], tuple(ports))
        if protocol in ("icmp", "icmpv6"):
            table = proto.ICMP_TYPES if protocol == "icmp" else proto.ICMPV6_TYPES
            if rest.isdigit() and _small_int(rest) <= 255:
                if protocol == "icmp" and _small_int(rest) == proto.IPTABLES_ANY_ICMP_TYPE:
                    self.err("FWC107", f"ICMP type {rest} in '{item.text}' would match every "
                             "ICMP type in iptables", item.span,
                             hint="write icmp/any for every type; ICMP types are 0-254")
                    return None
                names = [k for k, v in table.items() if v == int(rest)]
                return m.ServiceMatch(protocol, proto.IP_PROTOCOLS[protocol], (), int(rest),
                                      names[0] if names else rest)
            if rest in table:
                return m.ServiceMatch(protocol, proto.IP_PROTOCOLS[protocol], (), table[rest], rest)
            if rest == "any":
                return m.ServiceMatch(protocol, proto.IP_PROTOCOLS[protocol])
            self.err("FWC107", f"unknown {protocol} type '{rest}'", item.span,
                     hint=_did_you_mean(rest, table) or f"known types: {', '.join(table)}")
            return None
        # proto/NUMBER or proto/NAME
        if rest.isdigit():
            number = _small_int(rest)
            if number > 255:
                self.err("FWC107", f"IP protocol {number} is out of range 1-255", item.span)
                return None
            if number == proto.IPTABLES_ANY_PROTOCOL:
                self.err("FWC107", f"IP protocol 0 in '{item.text}' would match every "
                         "protocol in iptables", item.span,
                         hint="leave out 'service' to match every protocol; IP protocols "
                              "are 1-255")
                return None
            names = [k for k, v in proto.IP_PROTOCOLS.items() if v == number]
            return m.ServiceMatch(names[0] if names else str(number), number)
        if rest in proto.IP_PROTOCOLS:
            return m.ServiceMatch(rest, proto.IP_PROTOCOLS[rest])
        self.err("FWC107", f"unknown IP protocol '{rest}'", item.span,
                 hint=_did_you_mean(rest, proto.IP_PROTOCOLS) or "write proto/NUMBER")
        return None

    # -- clusters ------------------------------------------------------------------------
    def resolve_cluster(self, decl: s.ClusterDecl, blocks: list[s.BlockDecl]) -> m.Cluster:
        vrrp = self.resolve_vrrp(decl)
        sync = self.resolve_sync(decl)
        interfaces = self.resolve_interfaces(decl, vrrp)
        members = self.resolve_members(decl, {i.name for i in interfaces})
        iface_names = {i.name: i for i in interfaces}
        member_names = {mb.name for mb in members}
        rules: list[m.FilterRule] = []
        nat: list[m.NatRule] = []
        expectations: list[m.Expectation] = []
        line_rule, rule_line, add_rule = self.line_rule, s.RuleLine, rules.append
        for block in blocks:
            policy = block.kind == "policy"
            for rd in block.rules:
                if type(rd) is rule_line:  # a plain rule line (only in policy blocks)
                    rule = line_rule(rd, len(rules), iface_names, member_names) \
                        if policy else None
                    if rule is not None:
                        add_rule(rule)
                        continue
                    rd = rd.decl()
                if block.kind == "policy":
                    rule = self.resolve_rule(rd, len(rules), iface_names, member_names, False)
                    if isinstance(rule, m.FilterRule):
                        rules.append(rule)
                elif block.kind == "nat":
                    rule = self.resolve_rule(rd, len(nat), iface_names, member_names, True)
                    if isinstance(rule, m.NatRule):
                        nat.append(rule)
                else:
                    exp = self.resolve_expectation(rd, iface_names)
                    if exp:
                        expectations.append(exp)
        routes, route_rules = resolve_routing(self, decl, interfaces, members)
        return m.Cluster(decl.name.text, vrrp, sync, interfaces, members, tuple(rules),
                         tuple(nat), tuple(expectations), decl.span,
                         self.resolve_backend(decl), self.resolve_tracks(decl),
                         self.resolve_notify(decl), routes, route_rules,
                         groups=self.resolve_groups(decl), logging=self.resolve_logging(decl),
                         defaults=self.resolve_defaults(decl))

    def resolve_tracks(self, decl: s.ClusterDecl) -> tuple[m.Track, ...]:
        out: list[m.Track] = []
        for item in decl.track:
            opts = self.unique_options(item.options)
            kind, target = item.kind.text, item.target.text
            ok = True
            if kind == "ping":
                got = self.parse_address(item.target, want="host")
                if got is None:
                    continue
            weight = None
            if "weight" in opts and opts["weight"].value is not None:
                weight = self.integer(opts["weight"].value, "track weight",
                                     *proto.TRACK_WEIGHT_RANGE, "FWC256")
                ok = ok and weight is not None
            interval = proto.DEFAULT_TRACK_INTERVAL_S
            if "interval" in opts and opts["interval"].value is not None:
                word = opts["interval"].value
                ms = self.duration_ms(word, "track interval")
                low, high = proto.TRACK_INTERVAL_RANGE_S
                if ms is None:
                    ok = False
                elif ms % 1000 or not low <= ms // 1000 <= high:
                    self.err("FWC256", f"track interval {word.text} is not whole seconds "
                             f"{low}-{high}", word.span,
                             hint="keepalived runs track scripts every N whole seconds")
                    ok = False
                else:
                    interval = ms // 1000
            counts, counted = self.fall_rise(opts, "track",
                                             (proto.DEFAULT_TRACK_FALL, proto.DEFAULT_TRACK_RISE),
                                             proto.TRACK_COUNT_RANGE, "FWC256")
            ok = ok and counted
            if kind == "interface" and ("interval" in opts or "fall" in opts
                                        or "rise" in opts):
                extra = next(k for k in ("interval", "fall", "rise") if k in opts)
                self.err("FWC109", f"'{extra}' does not apply to a tracked interface",
                         opts[extra].span, hint="keepalived follows the link state itself; "
                         "only 'weight' applies")
                ok = False
            if ok:
                spans = OptionSpans.of(_option_spans(opts))
                out.append(m.Track(kind, target, weight, interval, counts["fall"],
                                   counts["rise"], item.span, spans))
        return tuple(out)

    def resolve_groups(self, decl: s.ClusterDecl) -> tuple[m.VrrpGroup, ...]:
        """`vrrp-group` blocks as written; what the names refer to is checked later."""
        out: list[m.VrrpGroup] = []
        seen: set[str] = set()
        for group in decl.groups:
            name = group.name.text
            if name in seen:
                self.err("FWC263", f"vrrp-group '{name}' is declared twice", group.name.span)
                continue
            seen.add(name)
            if len(group.masters) > 1:
                self.err("FWC263", f"vrrp-group '{name}' names more than one master",
                         group.masters[1].span, hint="one member masters a group")
            master = group.masters[0] if group.masters else None
            out.append(m.VrrpGroup(name, tuple(w.text for w in group.interfaces),
                                   master.text if master else None, group.span,
                                   tuple(w.span for w in group.interfaces),
                                   master.span if master else None))
        return tuple(out)

    def resolve_notify(self, decl: s.ClusterDecl) -> tuple[m.NotifyAction, ...]:
        out: list[m.NotifyAction] = []
        for key, opt in self.unique_options(decl.notify).items():
            state = self.choice(s.Word(key, opt.span), "notify state", proto.NOTIFY_STATES)
            if state is not None and opt.value is not None:
                out.append(m.NotifyAction(state, opt.value.text, opt.span))
        return tuple(out)

    def resolve_backend(self, decl: s.ClusterDecl) -> Backend:
        opts = self.unique_options(decl.backend)
        word = opts["backend"].value if "backend" in opts else None
        if word is None:
            return Backend.IPTABLES
        name = self.choice(word, "backend", (b.value for b in Backend))
        return Backend.IPTABLES if name is None else Backend(name)

    def unique_options(self, options: Iterable[s.Option]) -> dict[str, s.Option]:
        seen: dict[str, s.Option] = {}
        for opt in options:
            key = "password" if opt.key == "password-file" else opt.key
            if key in seen:
                self.err("FWC110", f"'{written(opt.key)}' is given twice",
                         opt.value.span if opt.value is not None else opt.span,
                         related=[Related(seen[key].span, "first given here")])
                continue
            seen[key] = opt
        return seen

    def resolve_vrrp(self, decl: s.ClusterDecl) -> m.Vrrp:
        opts = self.unique_options(decl.vrrp)
        password = password_file = None
        if "password" in opts:
            opt = opts["password"]
            assert opt.value is not None
            if opt.key == "password-file":
                path = Path(opt.span.file).parent / opt.value.text
                password_file = str(path)
                try:
                    password = self.read_secret(path).strip()
                except Refused as exc:
                    self.err(exc.code, exc.message, opt.value.span, hint=exc.hint)
                except OSError as exc:
                    self.err("FWC002", f"cannot read password file '{opt.value.text}': "
                             f"{exc.strerror or exc}", opt.value.span,
                             hint="the path is relative to the policy file")
                except UnicodeDecodeError:
                    self.err("FWC002", f"password file '{opt.value.text}' is not UTF-8 text",
                             opt.value.span, hint="write the password as UTF-8 text")
            else:
                password = opt.value.text
        auth = None
        if "auth" in opts and opts["auth"].value is not None:
            auth = self.choice(opts["auth"].value, "VRRP authentication", ("pass", "ah"))
        elif password is not None:
            auth = "pass"
        advert = proto.DEFAULT_ADVERT_MS
        if "advert" in opts and opts["advert"].value is not None:
            advert = self.duration_ms(opts["advert"].value, "advert interval") or advert
        version = proto.DEFAULT_VRRP_VERSION
        if "version" in opts and opts["version"].value is not None:
            version = self.integer(opts["version"].value, "VRRP version", 2, 3, "FWC109") \
                or version
        preempt = True
        if "preempt" in opts and opts["preempt"].value is not None:
            preempt = self.choice(opts["preempt"].value, "preempt value", ("on", "off")) != "off"
        delay = None
        if "preempt-delay" in opts and opts["preempt-delay"].value is not None:
            ms = self.duration_ms(opts["preempt-delay"].value, "preempt delay")
            delay = None if ms is None else ms // 1000
        vrid = None
        if "vrid" in opts and opts["vrid"].value is not None:
            vrid = self.integer(opts["vrid"].value, "VRID", *proto.VRID_RANGE, "FWC204")
        garp = None
        if "garp-refresh" in opts and opts["garp-refresh"].value is not None:
            ms = self.duration_ms(opts["garp-refresh"].value, "garp refresh")
            if ms is not None and (ms < 1000 or ms % 1000):
                # keepalived's garp_master_refresh is whole seconds, and 0 turns it off
                self.err("FWC109", "the garp refresh is counted in whole seconds",
                         opts["garp-refresh"].value.span, hint="write at least 1s, in whole "
                         "seconds (without garp-refresh there is no refresh)")
            elif ms is not None:
                garp = ms // 1000
        spans = OptionSpans.of(_option_spans(opts))
        return m.Vrrp(password, password_file, auth, advert, version, preempt, delay, vrid,
                      garp, decl.vrrp_span, spans, "unicast" in opts)

    def resolve_sync(self, decl: s.ClusterDecl) -> m.Sync:
        opts = self.unique_options(decl.sync)
        link = opts["sync-link"].value.text if "sync-link" in opts and opts["sync-link"].value \
            else None
        mode = proto.DEFAULT_SYNC_MODE
        if "sync-mode" in opts and opts["sync-mode"].value is not None:
            mode = self.choice(opts["sync-mode"].value, "sync mode", proto.SYNC_MODES) or mode
        transport = "unicast" if "unicast" in opts else "multicast"
        if "unicast" in opts and "multicast" in opts:
            self.err("FWC110", "sync cannot be both multicast and unicast",
                     opts["unicast"].span, hint="conntrackd cannot mix dedicated-link protocols")
        group = ipaddress.IPv4Address(proto.DEFAULT_SYNC_GROUP)
        if "multicast" in opts and opts["multicast"].value is not None:
            word = opts["multicast"].value
            try:
                group = ipaddress.IPv4Address(word.text)
            except ValueError:
                self.err("FWC106", f"the sync group must be an IPv4 address, got '{word.text}'",
                         word.span, hint="conntrackd's multicast transport is IPv4; "
                         f"the default is {proto.DEFAULT_SYNC_GROUP}")
        port = proto.DEFAULT_SYNC_PORT
        if "port" in opts and opts["port"].value is not None:
            port = self.integer(opts["port"].value, "sync port", 1, 65535, "FWC107") or port
        mark_bit = proto.DEFAULT_MARK_BIT
        if "mark-bit" in opts and opts["mark-bit"].value is not None:
            value = self.integer(opts["mark-bit"].value, "mark bit", 0, 31, "FWC215")
            mark_bit = mark_bit if value is None else value
        allow: tuple[m.ServiceMatch, ...] = ()
        labels: tuple[str, ...] = ()
        if "allow" in opts:
            option = opts["allow"]
            assert isinstance(option, s.ServicesOption)
            allow, labels, _ok = self.services_of(option.services)
        spans = OptionSpans.of(_option_spans(opts))
        value = {k: o.value for k, o in opts.items() if o.value is not None}
        tuning: dict[str, object] = {}
        if "backup-link" in value:
            tuning["backup_link"] = value["backup-link"].text
        if "backup-port" in value:
            tuning["backup_port"] = self.integer(value["backup-port"], "backup link port", 1,
                                                 65535, "FWC107")
        if "commit-timeout" in value:
            ms = self.duration_ms(value["commit-timeout"], "commit timeout")
            if ms is not None and (ms < 1000 or ms % 1000):
                self.err("FWC109", "the commit timeout is counted in whole seconds",
                         value["commit-timeout"].span, hint="write at least 1s, in whole "
                         "seconds")
            elif ms is not None:
                tuning["commit_timeout_s"] = ms // 1000
        if "external-cache" in value:
            cache = self.choice(value["external-cache"], "external-cache value", ("on", "off"))
            tuning["external_cache"] = cache != "off"
        if "protocols" in value:
            tuning["protocols"] = self.listed(value["protocols"], "sync protocol",
                                              proto.SYNC_PROTOCOL_NAMES)
        if "states" in value:
            tuning["states"] = self.listed(value["states"], "TCP state", proto.SYNC_TCP_STATES)
        if "conntrack-max" in value:
            tuning["conntrack_max"] = self.integer(value["conntrack-max"], "conntrack-max",
                                                   *proto.CONNTRACK_MAX_RANGE, "FWC109")
        if "hash-size" in value:
            tuning["hash_size"] = self.integer(value["hash-size"], "hash-size",
                                               *proto.HASH_SIZE_RANGE, "FWC109")
        return m.Sync(link, mode, transport, group, port, mark_bit, decl.sync_span, spans,
                      allow, labels, **{k: v for k, v in tuning.items() if v is not None})

    def listed(self, word: s.Word, what: str, known: Iterable[str]) -> tuple[str, ...]:
        """A comma list of names (`protocols tcp, udp`), each one of KNOWN, once."""
        names = tuple(word.text.split(","))
        good = tuple(n for n in names if self.choice(s.Word(n, word.span), what, known))
        for name in dict.fromkeys(n for n in names if names.count(n) > 1):
            self.err("FWC110", f"{what} '{name}' is listed twice", word.span)
        return tuple(dict.fromkeys(good))

    def resolve_interfaces(self, decl: s.ClusterDecl, vrrp: m.Vrrp) -> tuple[m.Interface, ...]:
        out: list[m.Interface] = []
        seen: dict[str, s.InterfaceDecl] = {}
        for idecl in decl.interfaces:
            if idecl.name.text in seen:
                self.err("FWC102", f"interface '{idecl.name.text}' is declared twice",
                         idecl.name.span,
                         related=[Related(seen[idecl.name.text].span, "first declared here")])
                continue
            seen[idecl.name.text] = idecl
            self.not_any(idecl.name, "interface", "in any", "interface")
            vips: list[m.IPInterface] = []
            spans: list[Span] = []
            names: list[str | None] = []
            named: dict[str, s.Word] = {}
            vip_names = idecl.vip_names or (None,) * len(idecl.vips)
            for word, name in zip(idecl.vips, vip_names, strict=True):
                if name is not None:
                    if name.text in named:
                        self.err("FWC119", f"VIP name '{name.text}' is given twice on interface "
                                 f"'{idecl.name.text}'", name.span,
                                 hint="give each VIP of an interface its own name",
                                 related=[Related(named[name.text].span, "first named here")])
                    named.setdefault(name.text, name)
                vip = self.parse_interface_address(word, "VIP")
                if vip is not None:
                    vips.append(vip)
                    spans.append(word.span)
                    names.append(name.text if name is not None and named[name.text] is name
                                 else None)
            vrid = vrrp.vrid
            if idecl.vrid is not None:
                vrid = self.integer(idecl.vrid, "VRID", *proto.VRID_RANGE, "FWC204")
            if idecl.vips and vrid is None and idecl.vrid is None:
                self.err("FWC204", f"interface '{idecl.name.text}' has VIPs but no VRID",
                         idecl.name.span,
                         hint="set 'vrid N' on the interface or a cluster-wide 'vrid' in vrrp { }")
            if len(vips) < len(idecl.vips):
                # reported at the VIP: a later `IFACE.vip` must not add "has no VIP"
                self.broken_vips.add(idecl.name.text)
            mss: int | str | None = None
            if idecl.mss is not None:
                if idecl.mss.text.isdigit():
                    mss = self.integer(idecl.mss, "MSS", *proto.MSS_RANGE, "FWC109")
                else:
                    mss = self.choice(idecl.mss, "MSS clamping", ("pmtu",))
            out.append(m.Interface(idecl.name.text, tuple(vips), vrid if idecl.vips else None,
                                   idecl.span, tuple(spans), tuple(names), mss,
                                   idecl.mss.span if idecl.mss is not None else None))
        return tuple(out)

    def resolve_logging(self, decl: s.ClusterDecl) -> m.Logging:
        opts = self.unique_options(decl.log)
        value = {k: o.value for k, o in opts.items() if o.value is not None}
        default = m.Logging()
        level = default.level
        if "log-level" in value:
            level = self.choice(value["log-level"], "log level", proto.LOG_LEVELS) or level
        rate = default.rate
        if "log-rate" in value:
            rate = self.rate(value["log-rate"], "log rate") or rate
        burst = default.burst
        if "log-burst" in value:
            burst = self.burst(value["log-burst"]) or burst
        group = None
        if "log-group" in value:
            group = self.integer(value["log-group"], "NFLOG group", 0, proto.NFLOG_GROUP_MAX,
                                 "FWC109")
        drops = "log-drops" in opts
        prefix = value["log-drops"].text if "log-drops" in value else None
        spans = OptionSpans.of(_option_spans(opts, at_value=True))
        return m.Logging(level, rate, burst, group, drops, prefix, decl.log_span, spans)

    def resolve_defaults(self, decl: s.ClusterDecl) -> m.Defaults:
        opts = self.unique_options(decl.defaults)
        chosen: dict[str, FilterAction] = {}
        # The firewall's own output may be accepted; what arrives or passes through never
        # is by default (a firewall that accepts what no rule names is not one).
        allowed = {"input": ("drop", "reject"), "forward": ("drop", "reject"),
                   "output": ("accept", "drop", "reject")}
        for key, choices in allowed.items():
            if key in opts and opts[key].value is not None:
                word = opts[key].value
                if word.text == "accept" and key != "output":
                    self.err("FWC109", f"the {key} default cannot be 'accept'", word.span,
                             hint="a firewall drops what no rule accepts: write 'accept' "
                             f"rules for the {key} traffic you want, or 'reject' to answer "
                             "the rest")
                    continue
                got = self.choice(word, f"{key} default", choices)
                if got is not None:
                    chosen[key] = FilterAction(got)
        spans = OptionSpans.of(_option_spans(opts, at_value=True))
        return m.Defaults(span=decl.defaults_span, option_spans=spans, **chosen)

    def resolve_members(self, decl: s.ClusterDecl, interfaces: set[str]) -> tuple[m.Member, ...]:
        raw: list[tuple[s.MemberDecl, int | None, bool, str | None, Span | None]] = []
        seen: dict[str, s.MemberDecl] = {}
        for mdecl in decl.members:
            if mdecl.name.text in seen:
                self.err("FWC102", f"member '{mdecl.name.text}' is declared twice",
                         mdecl.name.span,
                         related=[Related(seen[mdecl.name.text].span, "first declared here")])
                continue
            seen[mdecl.name.text] = mdecl
            self.not_any(mdecl.name, "member", "only any", "member")
            opts = self.unique_options(mdecl.options)
            priority = None
            pspan = None
            if "priority" in opts and opts["priority"].value is not None:
                pspan = opts["priority"].value.span
                priority = self.integer(opts["priority"].value, "priority",
                                        *proto.PRIORITY_RANGE, "FWC209")
            master = "master" in opts
            ssh = opts["ssh"].value.text if "ssh" in opts and opts["ssh"].value else None
            if ssh is not None:
                problem = ssh_target_problem(ssh)
                if problem:
                    self.err("FWC520", f"ssh target of member '{mdecl.name.text}' {problem}",
                             opts["ssh"].value.span, hint=f"write {SSH_TARGET_FORM}; ssh options "
                             "belong in fwc install --ssh \"ssh -o ...\" or ~/.ssh/config")
                    ssh = None
            if priority is None and not master and "priority" not in opts:
                self.err("FWC209", f"member '{mdecl.name.text}' has no priority",
                         mdecl.name.span, hint="write 'priority N' (1-254) or 'master'")
            raw.append((mdecl, priority, master, ssh, pspan))
        masters = [r for r in raw if r[2]]
        for extra in masters[1:]:
            self.err("FWC209", f"member '{extra[0].name.text}' is the second 'master'",
                     extra[0].name.span, hint="only one member can be the preferred master",
                     related=[Related(masters[0][0].name.span, "first master here")])
        explicit = [r[1] for r in raw if r[1] is not None and not r[2]]
        master_priority = min(proto.PRIORITY_RANGE[1],
                              max(explicit, default=100) + proto.MASTER_PRIORITY_STEP)
        out: list[m.Member] = []
        for mdecl, priority, master, ssh, pspan in raw:
            if priority is None:
                priority = master_priority if master else 0
            links: list[m.MemberLink] = []
            linked: dict[str, s.MemberLink] = {}
            for link in mdecl.links:
                name = link.interface.text
                if name not in interfaces:
                    self.err("FWC101", f"undefined interface '{name}' in member "
                             f"'{mdecl.name.text}'", link.interface.span,
                             hint=_did_you_mean(name, interfaces)
                             or "declare it with 'interface NAME' in the cluster")
                    continue
                if name in linked:
                    self.err("FWC102", f"interface '{name}' is mapped twice in member "
                             f"'{mdecl.name.text}'", link.interface.span,
                             related=[Related(linked[name].span, "first mapped here")])
                    continue
                linked[name] = link
                addrs: list[m.IPInterface] = []
                spans: list[Span] = []
                for word in link.addresses:
                    got = self.parse_interface_address(word, "member address")
                    if got is not None:
                        addrs.append(got)
                        spans.append(word.span)
                links.append(m.MemberLink(name, link.device.text, tuple(addrs), link.span,
                                          tuple(spans)))
            out.append(m.Member(mdecl.name.text, priority, master, ssh, tuple(links),
                                mdecl.span, pspan))
        return tuple(out)

    # -- rules -------------------------------------------------------------------------------
    def endpoint(self, items: tuple[s.Endpoint, ...], ifaces: dict[str, m.Interface]) \
            -> m.Endpoint | None:
        out: list[m.EndpointItem] = []
        ok = True
        make = m.EndpointItem
        objects = self.objects
        for item in items:
            kind = item.kind
            if kind == "name":  # most items
                text = item.text
                self.used.add(text)
                obj = objects.get(text)
                if obj is None:
                    if text not in self.object_decls:
                        self.undefined_object(item)
                    ok = False
                    continue
                out.append(make("object", text, obj.addresses, item.negated, text))
            elif kind == "any" or kind == "firewall":
                out.append(make(kind, item.text, _NOTHING, item.negated, None))
            elif item.kind == "vip":
                iface = ifaces.get(item.text)
                if iface is None or not iface.vips:
                    self.bad_vip_ref(item.text, item.span, ifaces)
                    ok = False
                    continue
                out.append(m.EndpointItem("vip", f"{item.text}.vip",
                                          AddressSet.of(*(v.ip for v in iface.vips)),
                                          item.negated, None))
            elif item.kind == "named_vip":
                vip = self.named_vip_ref(item.text, item.span, ifaces)
                if vip is None:
                    ok = False
                    continue
                out.append(m.EndpointItem("vip", item.text, AddressSet.of(vip.ip),
                                          item.negated, None))
            else:
                word = s.Word(item.text, item.span)
                got = self.parse_range(word) if item.kind == "range" \
                    else self.parse_address(word, want="any")
                if got is None:
                    ok = False
                    continue
                out.append(m.EndpointItem("literal", item.text, got, item.negated, None))
        return m.Endpoint(tuple(out)) if ok else None

    def named_vip_ref(self, text: str, span: Span, ifaces: dict[str, m.Interface]) \
            -> m.IPInterface | None:
        """`IFACE.vip.NAME`: the one VIP of IFACE that `vip NAME ADDR` named."""
        iface_name, _, vip_name = text.partition(".vip.")
        iface = ifaces.get(iface_name)
        if iface is None or not iface.vips:
            self.bad_vip_ref(iface_name, span, ifaces)
            return None
        vip = iface.named_vip(vip_name)
        if vip is None:
            known = [n for n in iface.vip_names if n is not None]
            choices = ", ".join(f"{iface_name}.vip.{n}" for n in known)
            self.err("FWC118", f"interface '{iface_name}' has no VIP named '{vip_name}'", span,
                     hint=(_did_you_mean(vip_name, known) or f"its named VIPs: {choices}")
                     if known else f"name it in the interface: 'interface {iface_name} vip "
                     f"{vip_name} ADDRESS/PREFIX'")
        return vip

    def ambiguous_vip(self, iface: m.Interface, span: Span) -> None:
        """FWC117: `IFACE.vip` where one address is needed and IFACE has several of a family."""
        families = iface.ambiguous_families
        listed = []
        for vip in (v for v in iface.vips if v.version in families):
            name = iface.name_of(vip)
            listed.append(f"{iface.name}.vip.{name} ({vip})" if name else f"{vip} (unnamed)")
        unnamed = [v for v in iface.vips if v.version in families and iface.name_of(v) is None]
        hint = (f"name each VIP ('interface {iface.name} vip NAME {unnamed[0]}, ...') and "
                f"write '{iface.name}.vip.NAME'") if unnamed \
            else f"write one of {', '.join(f'{iface.name}.vip.{n}' for n in iface.vip_names if n)}"
        kinds = " and ".join("IPv4" if f == 4 else "IPv6" for f in families)
        self.err("FWC117", f"'{iface.name}.vip' is ambiguous here: interface '{iface.name}' has "
                 f"several {kinds} VIPs: {', '.join(listed)}", span, hint=hint)

    def bad_vip_ref(self, name: str, span: Span, ifaces: dict[str, m.Interface]) -> None:
        if name in self.broken_vips:
            return  # its VIP was reported where it is declared: no follow-on error
        if name in ifaces:
            self.err("FWC101", f"interface '{name}' has no VIP", span,
                     hint=f"add 'vip ADDRESS/PREFIX' to 'interface {name}'")
        else:
            self.err("FWC101", f"undefined interface '{name}' in '{name}.vip'", span,
                     hint=_did_you_mean(name, ifaces) or "use a cluster interface name")

    def interface_ref(self, opt: s.Option, ifaces: dict[str, m.Interface]) -> str | None:
        assert opt.value is not None
        name = opt.value.text
        if name not in ifaces:
            self.err("FWC101", f"undefined interface '{name}'", opt.value.span,
                     hint=_did_you_mean(name, ifaces) or "use a cluster interface name")
            return None
        return name

    def services_of(self, refs: tuple[s.ServiceRef, ...]) -> tuple[tuple[m.ServiceMatch, ...],
                                                                  tuple[str, ...], bool]:
        if len(refs) == 1:  # most rules: one service, its matches as they are
            got = self.service_item(refs[0])
            return got, (refs[0].text,), bool(got)
        matches: list[m.ServiceMatch] = []
        ok = True
        for ref in refs:
            got = self.service_item(ref)
            if not got:
                ok = False
            matches.extend(got)
        return tuple(matches), tuple(r.text for r in refs), ok

    def resolve_rule(self, rd: s.RuleDecl, index: int, ifaces: dict[str, m.Interface],
                     members: set[str], is_nat: bool) -> m.Rule | None:
        opts = self.unique_options(rd.options)
        source = self.endpoint(rd.sources, ifaces)
        destination = self.endpoint(rd.destinations, ifaces)
        services, labels, services_ok = self.services_of(rd.services)
        in_iface = self.interface_ref(opts["in"], ifaces) if "in" in opts else None
        out_iface = self.interface_ref(opts["out"], ifaces) if "out" in opts else None
        log = "log" in opts
        prefix = opts["log"].value.text if log and opts["log"].value else None
        only = None
        if "only" in opts and opts["only"].value is not None:
            only = opts["only"].value.text
            if only not in members:
                self.err("FWC101", f"undefined member '{only}'", opts["only"].value.span,
                         hint=_did_you_mean(only, members) or "use a member of this cluster")
                return None
        extras = self.rule_extras(opts, rd, is_nat)
        if not is_nat:
            if source is None or destination is None or not services_ok or extras is None:
                return None
            action = _FILTER_ACTIONS.get(rd.action.text) or FilterAction(rd.action.text)
            return m.FilterRule(index, action, source, destination,
                                services, labels, in_iface, out_iface, log, prefix, only,
                                rd.span, **extras)
        action = NatAction(rd.action.text)
        target = self.nat_target(rd, action, ifaces, out_iface)
        pool = tuple(self.nat_target_of(t, action, ifaces) for t in rd.pool)
        if action.has_target and target is None:
            return None
        if rd.pool and action is not NatAction.DNAT:
            self.err("FWC111", f"only dnat shares load between several targets; '{action}' "
                     "translates to one", rd.pool[0].span,
                     hint="snat to several addresses: write a range, e.g. "
                     "'-> 198.51.100.250-198.51.100.253'")
            return None
        if source is None or destination is None or not services_ok or extras is None \
                or any(p is None for p in pool):
            return None
        return m.NatRule(index, action, source, destination, services, labels, in_iface,
                         out_iface, log, prefix, only, rd.span, target,
                         pool=tuple(p for p in pool if p is not None), **extras)

    def line_rule(self, line: s.RuleLine, index: int, ifaces: dict[str, m.Interface],
                  members: set[str]) -> m.FilterRule | None:
        """The rule of a plain rule line, read straight from its match: what `resolve_rule`
        makes of `line.decl()` when every name in it is defined and usable. None when
        anything is not (an undefined or unusable name, a service without matches): the
        caller resolves `line.decl()` then, which reports it. Nothing is reported here, and
        what is recorded before giving up (names used) the ordinary way records too."""
        fast, number, match, parts = line
        path = fast.path
        # (the parser's strings: their hashes are known from its own lookups)
        _, action, sources, destinations, services, in_, out, log, prefix, only = parts
        span_of = match.span  # only of the groups there: `regs` builds a tuple for each
        spans: list[object] = [path]  # OptionSpans' flat layout: the items', the options'
        source = self._line_endpoint(sources, "from", match.start(3), match.string, number,
                                     spans)
        if source is None:
            return None
        destination = self._line_endpoint(destinations, "to", match.start(4), match.string,
                                          number, spans)
        if destination is None:
            return None
        matches: tuple[m.ServiceMatch, ...] = ()
        labels: tuple[str, ...] = ()
        if services is not None:
            line_services = self._line_services
            got = line_services.get(services)
            if got is None:
                got = line_services[services] = self._line_services_of(
                    services, fast.service_labels(services))
            if not got:
                return None
            matches, labels = got
            start, end = span_of(5)
            spans += ("service", number, start + 1, number, end + 1)
        if in_ is not None:
            if in_ not in ifaces:
                return None
            start, end = span_of(6)
            spans += ("in", number, start + 1, number, end + 1)
        if out is not None:
            if out not in ifaces:
                return None
            start, end = span_of(7)
            spans += ("out", number, start + 1, number, end + 1)
        if log is not None:
            start, end = span_of(8 if prefix is None else 9)
            spans += ("log", number, start + 1, number, end + 1)
            if prefix is not None:
                prefix = decode_literal(prefix[1:-1])  # it decodes: FastPath.plain_rule
        if only is not None:
            if only not in members:
                return None
            start, end = span_of(10)
            spans += ("only", number, start + 1, number, end + 1)
        start, end = span_of(1)
        return _FILTER_RULE(index, _FILTER_ACTIONS[action], source, destination, matches,
                            labels, in_, out, log is not None, prefix, only,
                            _new(Span, (path, number, start + 1, number, end + 1)),
                            _NO_LOG_OPTIONS, None, None, None, None, False,
                            OptionSpans(spans))

    def _line_item(self, word: str) -> m.EndpointItem | None:
        """The endpoint item of WORD (a name, `any` or `firewall`) of a RuleLine, as
        `endpoint` makes it; None when WORD names no object (`endpoint` reports it).
        Made once per word and run (the objects are resolved before any rule), and the
        first look records the name used, as `endpoint` does."""
        item = self._line_words.get(word)
        if item is None:
            if word in PLAIN_ENDPOINTS:
                item = _ENDPOINT_ITEM(word, word, _NOTHING, False, None)
            else:
                self.used.add(word)
                obj = self.objects.get(word)
                if obj is None:
                    return None  # not remembered: `endpoint` reports it, once per rule
                item = _ENDPOINT_ITEM("object", word, obj.addresses, False, word)
            self._line_words[word] = item
        return item

    def _line_services_of(self, services: str, labels: tuple[str, ...]) \
            -> tuple[tuple[m.ServiceMatch, ...], tuple[str, ...]] | None:
        """(matches, labels) of the service list of a RuleLine (SERVICES as matched, LABELS
        its names as the parser cut them), as `services_of` resolves it; () when a name is
        not a service with matches. Asked once per list text and run (the services are
        resolved before any rule)."""
        known = self.services
        if len(labels) == 1:
            svc = known.get(services)
            if svc is None or not svc.matches:
                return ()
            self.used_services.add(services)
            return svc.matches, labels
        found: list[m.ServiceMatch] = []
        for name in labels:
            svc = known.get(name)
            if svc is None or not svc.matches:
                return ()
            self.used_services.add(name)
            found.extend(svc.matches)
        return tuple(found), labels

    def _line_endpoint(self, words: str, side: str, start: int, text: str, number: int,
                       spans: list[object]) -> m.Endpoint | None:
        """A from/to list of a RuleLine (names, `any`, `firewall`; at START of TEXT) as
        `endpoint` resolves it, one Endpoint per list text and run; None when a name is
        not an object (`endpoint` reports it). Where each item was written goes to SPANS
        (OptionSpans' flat layout, under `item_key`)."""
        if "," not in words:  # most lists: one item
            spans += (_FIRST_ITEM_KEYS[side], number, start + 1, number,
                      start + len(words) + 1)
        else:
            for index, w in enumerate(PLAIN_WORD.finditer(text, start, start + len(words))):
                at = w.start()
                spans += (item_key(side, index), number, at + 1, number, w.end() + 1)
        endpoint = self._line_sides.get(words)
        if endpoint is None:
            items: list[m.EndpointItem] = []
            for word in (words,) if "," not in words else PLAIN_WORD.findall(words):
                item = self._line_item(word)
                if item is None:
                    return None
                items.append(item)
            endpoint = self._line_sides[words] = _ENDPOINT(tuple(items))
        return endpoint

    def rule_extras(self, opts: dict[str, s.Option], rd: s.RuleDecl, is_nat: bool) \
            -> dict[str, object] | None:
        """The options of issue 15's vocabulary, as keyword arguments of the rule; None
        after an error (reported)."""
        if opts.keys() <= _PLAIN_OPTIONS:  # most rules: none of the options below
            return {"log_options": _NO_LOG_OPTIONS, "notrack": False,
                    "option_spans": _rule_spans(rd, opts)}
        ok = True
        out: dict[str, object] = {}
        value = {k: o.value for k, o in opts.items() if o.value is not None}
        level = rate = burst = group = None
        if "log-level" in value:
            level = self.choice(value["log-level"], "log level", proto.LOG_LEVELS)
            ok &= level is not None
        if "log-rate" in value:
            rate = self.rate(value["log-rate"], "log rate")
            ok &= rate is not None
        if "log-burst" in value:
            burst = self.burst(value["log-burst"])
            ok &= burst is not None
        if "log-group" in value:
            group = self.integer(value["log-group"], "NFLOG group", 0, proto.NFLOG_GROUP_MAX,
                                 "FWC109")
            ok &= group is not None
        out["log_options"] = _NO_LOG_OPTIONS if level is rate is burst is group is None \
            else m.LogOptions(level, rate, burst, group)
        for key, field_ in (("limit", "limit"), ("syn-limit", "syn_limit")):
            if key not in value:
                continue
            limit_rate = self.rate(value[key], f"{key} rate")
            limit_burst = None
            if f"{key}-burst" in value:
                limit_burst = self.burst(value[f"{key}-burst"])
                ok &= limit_burst is not None
            if limit_rate is None:
                ok = False
                continue
            out[field_] = m.Limit(limit_rate, limit_burst, key == "limit" and "per-source" in opts)
        if "connlimit" in value:
            out["connlimit"] = self.integer(value["connlimit"], "connlimit", 1,
                                            proto.CONNLIMIT_MAX, "FWC109")
            ok &= out["connlimit"] is not None
        if "with" in value:
            out["reject_with"] = self.choice(value["with"], "reject type", proto.REJECT_TYPES)
            ok &= out["reject_with"] is not None
        out["notrack"] = "notrack" in opts
        out["option_spans"] = _rule_spans(rd, opts)
        if is_nat:
            # NAT rules take none of these: they translate, the filter rules decide.
            for key in ("with", "limit", "connlimit", "syn-limit", "notrack", "log-level",
                        "log-rate", "log-burst", "log-group"):
                if key in opts:
                    word = opts[key].value
                    self.err("FWC109", f"'{written(key)}' is an option of policy rules, "
                             "not of NAT rules", word.span if word else opts[key].span,
                             hint="put it on the policy rule that accepts this traffic")
                    ok = False
        return out if ok else None

    def nat_target(self, rd: s.RuleDecl, action: NatAction, ifaces: dict[str, m.Interface],
                   out_iface: str | None) -> m.NatTarget | None:
        t = rd.target
        if not action.has_target:
            if t is not None or rd.pool:
                self.err("FWC111", f"'{action}' takes no '-> ADDRESS'", t.span,
                         hint="remove the target" if action is NatAction.NONAT
                         else "masquerade uses the outgoing interface's own address")
            if action is NatAction.MASQUERADE and out_iface is None:
                self.err("FWC111", "masquerade needs 'out INTERFACE'", rd.span)
            return None
        if t is None:
            self.err("FWC111", f"'{action}' needs a target: '-> ADDRESS'", rd.span,
                     hint="e.g. '-> uplink.vip' for snat, '-> web' or '-> 192.0.2.80:8080' "
                     "for dnat")
            return None
        return self.nat_target_of(t, action, ifaces)

    def nat_target_of(self, t: s.NatTargetDecl, action: NatAction,
                      ifaces: dict[str, m.Interface]) -> m.NatTarget | None:
        port = port_high = None
        if t.port is not None:
            port = self.integer(t.port, "port", 1, 65535, "FWC107")
            if port is None:
                return None
        if t.port_high is not None:
            port_high = self.integer(t.port_high, "port", 1, 65535, "FWC107")
            if port_high is None:
                return None
            if port is not None and port_high < port:
                self.err("FWC107", f"port range {port}-{port_high} ends before it starts",
                         t.port_high.span, hint=f"write {port_high}-{port}")
                return None
        if t.kind == "range":
            got = self.parse_range(s.Word(t.text, t.span))
            if got is None:
                return None
            return m.NatTarget("range", t.text, got, port, None, t.span, port_high)
        if t.kind == "vip":
            iface = ifaces.get(t.text)
            if iface is None or not iface.vips:
                self.bad_vip_ref(t.text, t.span, ifaces)
                return None
            if iface.ambiguous_families:
                self.ambiguous_vip(iface, t.span)
                return None
            return m.NatTarget("vip", f"{t.text}.vip", AddressSet.of(*(v.ip for v in iface.vips)),
                               port, t.text, t.span, port_high)
        if t.kind == "named_vip":
            vip = self.named_vip_ref(t.text, t.span, ifaces)
            if vip is None:
                return None
            return m.NatTarget("vip", t.text, AddressSet.of(vip.ip), port,
                               t.text.partition(".vip.")[0], t.span, port_high)
        if t.kind == "name":
            self.used.add(t.text)
            obj = self.objects.get(t.text)
            if obj is None:
                if t.text not in self.object_decls:
                    self.undefined_object(s.Word(t.text, t.span))
                return None
            addresses, label, kind = obj.addresses, t.text, "object"
        else:
            got = self.parse_address(s.Word(t.text, t.span), want="host")
            if got is None:
                return None
            addresses, label, kind = got, t.text, "literal"
        for family in (4, 6):
            if addresses.count(family) > 1:
                self.err("FWC111", f"NAT target '{label}' is not a single address", t.span,
                         hint="translate to one host address (or to IFACE.vip)")
                return None
        return m.NatTarget(kind, label, addresses, port, None, t.span, port_high)

    def resolve_expectation(self, rd: s.RuleDecl, ifaces: dict[str, m.Interface]) \
            -> m.Expectation | None:
        opts = self.unique_options(rd.options)
        source = self.endpoint(rd.sources, ifaces)
        destination = self.endpoint(rd.destinations, ifaces)
        services, labels, ok = self.services_of(rd.services)
        in_iface = self.interface_ref(opts["in"], ifaces) if "in" in opts else None
        via = opts["via"].value if "via" in opts else None
        if source is None or destination is None or not ok:
            return None
        return m.Expectation(Verdict(rd.action.text), source, destination, services, labels,
                             in_iface, rd.span, via.text if via is not None else None,
                             via.span if via is not None else None,
                             OptionSpans.of(_item_spans(rd)))

    @staticmethod
    def segment_networks(clusters: Iterable[m.Cluster]) -> set[AddressSet]:
        """The subnets of every cluster interface: objects naming them document the topology.
        A set: every object is looked up in it (a list was objects x links comparisons)."""
        out = set()
        for cluster in clusters:
            for member in cluster.members:
                for link in member.links:
                    out.update(AddressSet.of(a.network) for a in link.addresses)
        return out

    # -- whole program -------------------------------------------------------------------
    def run(self) -> m.Policy:
        statements = [st for f in self.program.files for st in f.statements]
        self.declare(statements)
        self.resolve_objects()
        self.resolve_services()
        clusters_decl: dict[str, s.ClusterDecl] = {}
        for st in statements:
            if isinstance(st, s.ClusterDecl):
                if st.name.text in clusters_decl:
                    self.err("FWC102", f"cluster '{st.name.text}' is defined twice",
                             st.name.span,
                             related=[Related(clusters_decl[st.name.text].span,
                                              "first defined here")])
                    continue
                clusters_decl[st.name.text] = st
        blocks: dict[str, list[s.BlockDecl]] = {name: [] for name in clusters_decl}
        for st in statements:
            if isinstance(st, s.BlockDecl):
                if st.name.text not in clusters_decl:
                    self.err("FWC101", f"{st.kind} '{st.name.text}' names no cluster",
                             st.name.span,
                             hint=_did_you_mean(st.name.text, clusters_decl)
                             or f"a {st.kind} block applies to the cluster of the same name")
                    continue
                blocks[st.name.text].append(st)
        # policy blocks first, then nat, then expect, each in source order
        order = {"policy": 0, "nat": 1, "expect": 2}
        clusters = tuple(
            self.resolve_cluster(decl, sorted(blocks[name], key=lambda b: order[b.kind]))
            for name, decl in clusters_decl.items())
        segments = self.segment_networks(clusters)
        used = self.used
        for name, decl in self.object_decls.items():
            if name in used:  # most: the segment test below hashes the object's whole set
                continue
            obj = self.objects.get(name)
            documents_segment = obj is not None and obj.addresses in segments
            offered = decl.name.span.file in self.program.libraries
            if not documents_segment and not offered:
                self.warn("FWC103", f"object '{name}' is never used", decl.name.span,
                          hint="remove it, or use it in a rule")
        for name, sdecl in self.service_decls.items():
            if name not in self.used_services \
                    and sdecl.name.span.file not in self.program.libraries:
                self.warn("FWC103", f"service '{name}' is never used", sdecl.name.span,
                          hint="remove it, or use it in a rule")
        names = dict(self.program.source_names)
        sources = tuple(m.SourceInfo(p, h, names.get(p)) for p, h in self.program.hashes)
        return m.Policy(self.program.root, sources, self.objects, self.services, clusters)


def resolve(program: LoadedProgram, read_secret=None) -> tuple[m.Policy, list[Diagnostic]]:
    resolver = Resolver(program, read_secret)
    policy = resolver.run()
    return policy, resolver.diagnostics


class FragmentResolver:
    """Resolves fragments of a rule written outside the policy (`fwc query --from/--service`).

    They mean what they would mean in a rule of POLICY: its objects, services and a
    cluster's interfaces, with the resolver's own diagnostics (spans name the
    fragment, e.g. `--from:1:5`). Built from the resolved policy, so nothing is
    resolved twice; PROGRAM supplies the declarations behind the hints.
    """

    def __init__(self, program: LoadedProgram, policy: m.Policy) -> None:
        self._resolver = Resolver(program)
        self._resolver.declare([st for f in program.files for st in f.statements])
        self._resolver.objects = dict(policy.objects)
        self._resolver.services = dict(policy.services)

    def _collect(self) -> list[Diagnostic]:
        out = self._resolver.diagnostics
        self._resolver.diagnostics = []
        return out

    def endpoint(self, items: tuple[s.Endpoint, ...], cluster: m.Cluster) \
            -> tuple[m.Endpoint | None, list[Diagnostic]]:
        got = self._resolver.endpoint(items, {i.name: i for i in cluster.interfaces})
        return got, self._collect()

    def services(self, refs: tuple[s.ServiceRef, ...]) \
            -> tuple[tuple[m.ServiceMatch, ...], list[Diagnostic]]:
        matches, _labels, _ok = self._resolver.services_of(refs)
        return matches, self._collect()
