"""Checks about what compiling a rule gives: log prefixes, NAT chains, empty rules.

They run with every `fwc check` too, so that a policy that checks clean
compiles without surprises.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Iterator
from dataclasses import replace

from fwc import protocols as proto
from fwc.analysis.evaluate import Evaluator, Packet
from fwc.backend.lower import Chain, NatRule, automatic_rules, lower, options_for
from fwc.backend.lower.build import (
    ICMPV6,
    IGMP,
    drops_prefix,
    log_prefix,
    may_apply,
)
from fwc.checks import check, describe
from fwc.checks.names import service_families
from fwc.checks.sides import all_rule_sides, service_numbers, side_numbers
from fwc.diagnostics import Diagnostic, Severity, error, warning
from fwc.model import Cluster, Endpoint, FilterRule, Member, Policy, Rule
from fwc.model.passwords import password_problems, unwritable
from fwc.model.records import dataclass
from fwc.model.semantics import Reach, filter_chains, nat_reaches, reach, side_of
from fwc.model.vocabulary import BuiltinChain, NatAction, Target
from fwc.model.vocabulary import Table as TableName

describe("FWC510", "output directory cannot be written", Severity.ERROR, """
`fwc compile` writes into a staging copy of the output directory and swaps it in
only when everything succeeded. It refuses to overwrite a cluster directory that
another policy's MANIFEST claims, or one that fwc did not write (no MANIFEST);
file system errors end up here too. Nothing under the output directory changes.
An output path that is a symbolic link stands for the directory it points to;
a link to anything else is refused.""",
         "compile")

describe("FWC511", "output directory holds files fwc did not write", Severity.ERROR, """
`fwc compile -o DIR` replaces DIR as a whole (a staging copy swapped in), and
the cluster directories it owns inside it. A mistyped `-o` (a home directory,
/etc, a checkout) or a file dropped into a cluster directory would be rewritten
or lost without a word, so a DIR holding anything without an fwc MANIFEST, or
files a MANIFEST does not list, is refused. `--force` writes anyway: other
content is kept, apart from what sits at or inside the cluster directories that
the compile replaces.""",
         "compile")


@check("FWC501", "log prefix longer than the kernel allows", Severity.ERROR, f"""
The kernel's LOG target keeps at most {proto.LOG_PREFIX_MAX} bytes of prefix, NFLOG
(`group N`) {proto.NFLOG_PREFIX_MAX}; iptables refuses longer ones, and a character
outside ASCII takes two to four bytes in UTF-8. fwc writes the prefix followed by a
space; a longer prefix would have to be cut, and log lines that no longer say what
was written are worse than none: shorten it.""")
def log_prefix_cut(policy: Policy) -> Iterable[Diagnostic]:
    for cluster in policy.clusters:
        for rule in cluster.all_rules():
            if not rule.log:
                continue
            nflog = cluster.logging.effective(rule.log_options).group is not None
            limit = proto.NFLOG_PREFIX_MAX if nflog else proto.LOG_PREFIX_MAX
            prefix, cut = log_prefix(rule, nflog)
            if cut:
                yield error("FWC501", f"log prefix \"{rule.log_prefix}\" is longer than "
                            f"{limit} bytes (the kernel would keep \"{prefix.rstrip()}\")",
                            rule.span, hint=f"use at most {limit - 1} bytes (ASCII "
                            "characters are one byte each)")
        logging = cluster.logging
        if logging.drops and logging.drops_prefix is not None:
            limit = proto.NFLOG_PREFIX_MAX if logging.group is not None \
                else proto.LOG_PREFIX_MAX
            _, cut = drops_prefix(logging, "FORWARD")
            if cut:
                yield error("FWC501", f"log prefix \"{logging.drops_prefix}\" is longer "
                            f"than {limit} bytes", logging.span_of("log-drops"),
                            hint=f"use at most {limit - 1} bytes")


@check("FWC502", "NAT rule names an interface its chain cannot see", Severity.ERROR, """
dnat happens in nat PREROUTING, before routing: the outgoing interface is not
known yet, so `out` cannot be matched. snat and masquerade happen in
POSTROUTING, where the incoming interface is no longer matchable, so `in`
cannot be used there. fwc would have to drop the condition and translate more
traffic than written, so the rule is refused.""")
def nat_interfaces(policy: Policy) -> Iterable[Diagnostic]:
    for cluster in policy.clusters:
        for rule in cluster.nat:
            if rule.action is NatAction.NONAT:
                continue  # its stages follow its interfaces (FWC503 for both)
            stages = rule.stages
            if rule.out_interface is not None and not any(s.sees_out for s in stages):
                yield error("FWC502", f"{rule.action} cannot match 'out': the outgoing "
                            "interface is not known before routing", rule.span,
                            hint="remove 'out', or match the destination address instead")
            if rule.in_interface is not None and not any(s.sees_in for s in stages):
                yield error("FWC502", f"{rule.action} cannot match 'in': POSTROUTING does not "
                            "see the incoming interface", rule.span,
                            hint="remove 'in', or match the source address instead")


@check("FWC503", "nonat with both in and out", Severity.WARNING, """
A nonat exception exempts traffic from the NAT rules after it: from dnat in
PREROUTING (which can only match `in`) and from snat/masquerade in POSTROUTING
(which can only match `out`). With both, each chain can only apply half of
the condition, so the exception is wider than written. Give only `in` (to
exempt from dnat) or only `out` (to exempt from snat).""")
def nonat_both_interfaces(policy: Policy) -> Iterable[Diagnostic]:
    for cluster in policy.clusters:
        for rule in cluster.nat:
            if rule.action is NatAction.NONAT and rule.in_interface and rule.out_interface:
                yield warning("FWC503", "nonat with both 'in' and 'out': PREROUTING matches "
                              "only 'in', POSTROUTING only 'out'", rule.span,
                              hint="split it into one nonat with 'in' and one with 'out'")


@dataclass(frozen=True, slots=True)
class _SideShape:
    """What lowering asks of one side on one member and family."""

    applies: bool  # `may_apply`: the side can match in this family at all
    reach: Reach  # which chains it can fill (`filter_chains`, `nat_reaches`)


class _Shapes:
    """Side shapes per (side, member, family), each computed once, when first asked: a
    policy of 20,000 rules has a few thousand distinct sides (`SideNumbers`)."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.members = [(m.name, cluster.firewall_addresses(m)) for m in cluster.members]
        self.numbers = side_numbers(cluster)
        # side number -> its shape per member and family (at 2 * member + (family == 6))
        self.known: dict[int, list[_SideShape | None]] = {}
        # service list number (`ServiceNumbers`) -> the families it finds something in
        self.lists, _ = service_numbers(cluster)
        self.families: dict[int, tuple[int, ...]] = {}

    def service_families(self, number: int) -> tuple[int, ...]:
        """The families in which service list NUMBER gives `service_matches` (a list
        finds matches in exactly its `names.service_families`: a test keeps them equal;
        building the matches to see whether there are any was a tenth of the checks)."""
        got = self.families.get(number)
        if got is None:
            families = service_families(self.lists.lists[number])
            got = self.families[number] = tuple(f for f in (4, 6) if f in families)
        return got

    def of(self, endpoint: Endpoint, number: int, member: int, family: int) -> _SideShape:
        shapes = self.known.get(number)
        if shapes is None:
            shapes = self.known[number] = [None] * (2 * len(self.members))
        at = 2 * member + (family == 6)
        got = shapes[at]
        if got is None:
            firewall = self.members[member][1].only(family)
            got = shapes[at] = _SideShape(may_apply(endpoint, family),
                                          reach(side_of(endpoint, firewall, family)))
        return got

    def produces_something(self, rule: Rule, sides: tuple[int, int] | None = None,
                           services: int = -1) -> bool:
        """Does RULE give a kernel rule on some member? The lowering's own predicates
        (`filter_chains`, `nat_reaches`) on memoised side shapes; a test keeps this
        equal to calling `filter_parts`/`nat_part` per rule. SIDES: the numbers of
        RULE's sides (`rule_sides`), SERVICES the number of its service list
        (`service_numbers`), if known."""
        families = self.service_families(self.lists.number(rule) if services < 0
                                          else services)
        target = rule.target
        if target is not None:
            families = tuple(f for f in families if target.addresses.family(f))
        if not families:
            return False
        if sides is None:
            sides = (self.numbers.number(rule.source), self.numbers.number(rule.destination))
        is_filter = isinstance(rule, FilterRule)
        incoming, outgoing = rule.in_interface is not None, rule.out_interface is not None
        only = rule.only
        for at, (name, _) in enumerate(self.members):
            if only is not None and only != name:
                continue
            for family in families:
                src = self.of(rule.source, sides[0], at, family)
                dst = self.of(rule.destination, sides[1], at, family)
                if not (src.applies and dst.applies):
                    continue
                if not is_filter:
                    if nat_reaches(src.reach, dst.reach):
                        return True
                elif any(filter_chains(src.reach, dst.reach, incoming, outgoing)):
                    return True
        return False


@check("FWC504", "rule gives no kernel rule", Severity.WARNING, """
Some rules cannot match anything once placed in a chain: INPUT (to the
firewall) has no outgoing interface and OUTPUT (from the firewall) no incoming
one, so `accept from any to firewall out lan` is dropped; a rule whose
addresses and services have no address family in common gives nothing either.
Such a rule does nothing at all on any member, which is almost always a
mistake.""")
def rule_gives_nothing(policy: Policy) -> Iterable[Diagnostic]:
    for cluster in policy.clusters:
        shapes = _Shapes(cluster)
        _, services = service_numbers(cluster)
        for rule, sides, listed in zip(cluster.all_rules(), all_rule_sides(cluster), services,
                                       strict=True):
            if not shapes.produces_something(rule, sides, listed):
                yield warning("FWC504", f"'{rule.action}' rule gives no iptables rule on any "
                              "member", rule.span,
                              hint="traffic to the firewall has no 'out' interface and "
                              "traffic from it no 'in' interface; check the families too")


@check("FWC505", "text a generated file cannot hold", Severity.ERROR, """
Some values are copied into the generated files as quoted strings. keepalived
has no escape for a double quote inside `auth_pass "..."` and replaces `$NAME` and
`${NAME}` there with its own values (`${_PWD}`: the config's directory), reads a
backslash before the closing quote as escaping it (a password ending in `\\` is
"Unterminated quote") and a value that is only `}` as the end of the block
(`auth_pass "}"` closes `authentication`, the VIPs become unknown keywords), and a control
character (a newline from a password file, a tab, C1 controls such as U+0085),
a line separator or a bidirectional formatting character in a password or a log
prefix would break the line it is written on: the daemon would then read a
different password than the other member, or reject the file. Such values are
refused before anything is written.""")
def unwritable_text(policy: Policy) -> Iterable[Diagnostic]:
    for cluster in policy.clusters:
        password = cluster.vrrp.password
        for bad in password_problems(password) if password is not None else ():
            if bad.code == "FWC505":
                yield error("FWC505", bad.message, cluster.vrrp.span_of("password"),
                            hint=bad.hint)
        for rule in cluster.all_rules():
            if rule.log_prefix is not None:
                problem = unwritable(rule.log_prefix, quote_ok=True)
                if problem is not None:
                    yield error("FWC505", f"the log prefix contains {problem}", rule.span,
                                hint="use printable characters only")


_TRANSLATING = frozenset({Target.DNAT, Target.SNAT})  # MASQUERADE: the source it has


def _translated_by(nat: Evaluator, chain: Chain, packet: Packet) -> tuple[bool, NatRule | None]:
    """(whether CHAIN decides PACKET, the rule translating it) as the kernel walks the
    nat chain: a nonat (ACCEPT, RETURN at the top) ends it untranslated, a RETURN in a
    negation chain goes on after the jump."""
    for rule in chain.rules:
        if not nat.matches(rule.match, packet):
            continue
        target = rule.target
        if target in _TRANSLATING:
            return True, rule  # type: ignore[return-value]
        if target in (Target.ACCEPT, Target.MASQUERADE):
            return True, None
        if target is Target.RETURN:
            return False, None
        sub = nat.chains.get(target)
        if sub is not None:
            decided, found = _translated_by(nat, sub, packet)
            if decided:
                return True, found
    return False, None


def _plumbing(cluster: Cluster, member: Member, family: int) \
        -> Iterator[tuple[str, BuiltinChain, Packet]]:
    """(automatic rule, nat hook, packet) for the first packet of each flow of the member's
    automatic rules (VRRP, AH, conntrackd sync, IGMP, `sync { allow }`) that a translation
    breaks: every one it receives (a dnat takes it away from the rule), and every one it
    sends but IGMP (a snat changes its source): the peers' automatic rules accept adverts
    and states only from the member's addresses (in IPv6 multicast, a link-local one), AH
    authenticates the source and VRRPv3 (always for IPv6) covers it with its checksum,
    which the kernel does not fix for protocol 112."""
    make = ipaddress.IPv4Address if family == 4 else ipaddress.IPv6Address

    def on(device: str | None, whose: Iterable[Member]) -> list[int]:
        return [int(a.ip) for m in whose for link in m.links if link.device == device
                for a in link.addresses if a.version == family] if device else []

    peers = [m for m in cluster.members if m.name != member.name]
    for auto in automatic_rules(cluster, member, family):
        match = auto.match
        if match.protocol == ICMPV6 or not match.destination.cidrs:
            continue  # NDP and MLD are never tracked, so never translated
        incoming = auto.chain == "input"
        if not incoming and match.protocol == IGMP:
            continue  # a snooping switch takes a report from any source
        device = match.in_device if incoming else match.out_device
        # the peers send to this member; it sends from its primary address
        sources = on(device, peers) if incoming else on(device, [member])[:1]
        if match.source.cidrs:
            sources = [int(ipaddress.ip_network(c).network_address) for c in match.source.cidrs]
        if family == 6 and auto.multicast:
            # (its rule takes fe80::/10: a link-local address stands for the member's)
            sources = [int(make(proto.VRRP_V6_LINK_LOCAL_SOURCE))]
        hook = BuiltinChain.PREROUTING if incoming else BuiltinChain.POSTROUTING
        for source in sources:
            for cidr in match.destination.cidrs:
                yield auto.label, hook, Packet(
                    family, source, int(ipaddress.ip_network(cidr).network_address),
                    match.protocol or 0, dport=match.dports[0].low if match.dports else None,
                    icmp_type=match.icmp_type, in_device=device if incoming else None,
                    out_device=None if incoming else device)


@check("FWC222", "NAT rule translates VRRP or sync traffic", Severity.ERROR, """
fwc accepts the HA plumbing with automatic rules at the top of INPUT and OUTPUT:
VRRP (and AH) adverts to 224.0.0.18 / ff02::12 or between the members' addresses,
conntrackd's sync traffic and IGMP on the sync link. NAT comes before INPUT (dnat,
PREROUTING) and after OUTPUT (snat, POSTROUTING), and the kernel tracks and
translates VRRP and the sync flows like any other connection. A dnat rule without
a service that matches the peer's adverts (`dnat from lan to any in lan -> portal`,
a `dnat` without `in` on the sync link) sends them elsewhere: each member stops
hearing the other and both become master, or the state replication stops without
a word. A snat rule that matches the node's own adverts or sync traffic (a source
network around the members' sync addresses; `snat from any to any out lan ->
lan.vip` for IPv6, whose adverts leave from a link-local address, which `any` does
not leave out as it does the firewall's declared addresses and VIPs) changes their
source, which the peer's automatic rules (they take adverts and states from the
members' addresses only, docs/ha-pitfalls.md), AH authentication and VRRPv3's
checksum (always used for IPv6) all refuse: `snat from lan to 224.0.0.0/4 out lan ->
lan.vip` makes the peer drop every advert and take the VIPs. Narrow the rule (a service, `in`/`out`,
a source without the members), or put a `nonat` before it.""")
def nat_translates_plumbing(policy: Policy) -> Iterable[Diagnostic]:
    options = options_for(policy)
    for cluster in policy.clusters:
        if not cluster.nat:
            continue
        # The nat table does not depend on the filter rules: lower the NAT rules only.
        nat_only = replace(cluster, rules=())
        reported: set[tuple[str, int, BuiltinChain]] = set()
        for member in nat_only.members:
            for family in sorted(cluster.families):
                nat = Evaluator(lower(nat_only, member, family, options), table=TableName.NAT)
                make = ipaddress.IPv4Address if family == 4 else ipaddress.IPv6Address
                for label, hook, packet in _plumbing(nat_only, member, family):
                    chain = nat.chains.get(hook)
                    found = _translated_by(nat, chain, packet)[1] if chain else None
                    if found is None or found.origin.rule is None:
                        continue
                    rule = found.origin.rule
                    key = (rule.span.file, rule.span.line, hook)
                    if key in reported:
                        continue
                    reported.add(key)
                    what = "receives" if hook is BuiltinChain.PREROUTING else "sends"
                    yield error("FWC222", f"{rule.action} rule translates HA traffic member "
                                f"'{member.name}' {what} ({make(packet.source)} -> "
                                f"{make(packet.destination)}, '{label}')", rule.span,
                                hint="narrow the rule (a service, 'in'/'out', a source "
                                "without the members), or put a 'nonat' before it")
