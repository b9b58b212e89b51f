"""An `iptables-save` ruleset as a readable fwc policy (docs/migration.md).

User chains are inlined where they are jumped to, LOG rules become the `log` of
the rule after them, fwc's automatic rules (replies, invalid packets, TCP
without SYN, loopback, VRRP and conntrackd sync, the replication mark) are left
to fwc, and every other rule becomes one policy or NAT line under a comment that
quotes the original. What cannot be expressed stays as a comment with a warning
(FWC700-FWC719), never silently.

The cluster block is a skeleton the user completes: one logical interface per
device the rules name, member fw1 holding the addresses the rules treat as the
firewall's own (INPUT destinations, OUTPUT sources), member fw2 and the sync
link with placeholder addresses from 198.18.0.0/15, each marked `TODO(import)`.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import field, fields, replace

from fwc import protocols as proto
from fwc.backend.lower.ruleset import ANY, AddressMatch, Match
from fwc.diagnostics import Diagnostic, Span, warning
from fwc.importing.saved import (
    PROTOCOL_NAMES,
    Decoded,
    Saved,
    SavedRule,
    Untranslatable,
    decode,
    read_saved,
    set_members,
)
from fwc.model.records import dataclass
from fwc.text import (
    describe_character,
    encode_literal,
    escape_hidden,
    unsafe_character,
    utf8_length,
)

ICMP_NAMES = {number: name for name, number in proto.ICMP_TYPES.items()}
MAX_DEPTH = 8
FILTER_CHAINS = ("INPUT", "FORWARD", "OUTPUT")
DEFAULT_POLICY = {"INPUT": "DROP", "FORWARD": "DROP", "OUTPUT": "ACCEPT"}
PLACEHOLDER_NET = ipaddress.ip_network("198.18.0.0/16")
SYNC_NET = ipaddress.ip_network("198.18.255.0/24")
# A device name the policy accepts (FWC114: conntrackd's lexer reads no more).
DEVICE = re.compile(r"[A-Za-z][A-Za-z0-9._-]*")


@dataclass(frozen=True, slots=True)
class Flat:
    """One rule of a built-in chain after inlining: its match, target and the path to it."""

    decoded: Decoded
    rule: SavedRule
    via: tuple[SavedRule, ...]  # the jumps that led here


@dataclass
class Import:
    text: str
    diagnostics: list[Diagnostic] = field(default_factory=list)
    translated: int = 0
    kept_as_comments: int = 0


class _Writer:
    def __init__(self, path: str, cluster: str) -> None:
        self.path = path
        self.cluster = cluster
        self.objects: dict[str, str] = {}  # name -> definition line
        self.services: dict[str, str] = {}
        self.devices: list[str] = []
        self.own: dict[str, list[str]] = {}  # device ('' unknown) -> firewall addresses
        # address -> the device a NAT rule ties it to (SNAT's to-source by `-o`, DNAT's
        # destination by `-i`): where the skeleton puts that address's /24 (_placement)
        self.homes: dict[str, str] = {}
        self.diagnostics: list[Diagnostic] = []
        self.translated = 0
        self.comments = 0

    def span(self, line: int) -> Span:
        return Span(self.path, line, 1, line, 2)

    def warn(self, code: str, line: int, message: str, hint: str | None = None) -> None:
        self.diagnostics.append(warning(code, message, self.span(line), hint))

    # -- names ----------------------------------------------------------------------------
    def device(self, name: str | None) -> str | None:
        if name is None:
            return None
        # The member links name the device as it is (`lan eth0 ...`): a name the policy
        # cannot hold (`eth#0`, which Linux allows) would read as another device and a
        # comment there, the link's address commented out.
        if not DEVICE.fullmatch(name) or utf8_length(name) > proto.DEVICE_NAME_MAX:
            raise Untranslatable(f"device name {name!r} (fwc's device names are at most "
                                 f"{proto.DEVICE_NAME_MAX} letters, digits, '.', '_', '-')")
        if name not in self.devices:
            self.devices.append(name)
        return interface_name(name)

    def address(self, match: AddressMatch, saved: Saved | None, line: int) -> str:
        if match.set_name is not None:
            members = set_members(saved, match.set_name) if saved is not None else []
            if not members:
                raise Untranslatable(f"ipset {match.set_name!r} without its members "
                                     "(add `ipset save` output to the input)")
            name = "set-" + _name(match.set_name)
            items = ", ".join(_address_text(m) for m in members)
            self.objects.setdefault(name, f"group   {name} {items}")
            text = name
        else:
            names = []
            for cidr in match.cidrs:
                net = ipaddress.ip_network(cidr)
                if net.prefixlen == 32:
                    name = "host-" + str(net.network_address).replace(".", "-")
                    self.objects.setdefault(name, f"host    {name} {net.network_address}")
                elif net.prefixlen == 0:
                    raise Untranslatable("0.0.0.0/0 written out (write no address instead)")
                else:
                    name = "net-" + str(net).replace(".", "-").replace("/", "-")
                    self.objects.setdefault(name, f"network {name} {net}")
                names.append(name)
            text = ", ".join(names)
        return f"!{text}" if match.negated else text

    def service(self, match: Match) -> str | None:
        if match.protocol is None:
            return None
        name_of = PROTOCOL_NAMES.get(match.protocol, str(match.protocol))
        if match.dports:
            ports = ",".join(str(p) for p in match.dports)
            name = f"{name_of}-" + "-".join(str(p).replace("-", "to") for p in match.dports)
            spec = f"{name_of}/{ports}"
        elif match.icmp_type is not None:
            icmp = ICMP_NAMES.get(match.icmp_type)
            if icmp is None:
                raise Untranslatable(f"icmp type {match.icmp_type}")
            name, spec = f"icmp-{icmp}", f"icmp/{icmp}"
        else:
            name, spec = f"proto-{name_of}", f"proto/{name_of}"
        self.services.setdefault(name, f"service {name} {spec}")
        return name


def interface_name(device: str) -> str:
    return _name(device)


def _name(text: str) -> str:
    name = re.sub(r"[^A-Za-z0-9_-]", "_", text).strip("-")
    if not name or not (name[0].isalpha() or name[0] == "_"):
        name = "x" + name
    return name.rstrip("-") or "x"


def _address_text(item: str) -> str:
    """An `ipset save` member as the policy writes it (`add NAME foo` is not one)."""
    try:
        net = ipaddress.ip_network(item, strict=False)
    except ValueError:
        raise Untranslatable(f"ipset member {item!r} (an address or network is "
                             "imported)") from None
    return str(net.network_address) if net.prefixlen == net.max_prefixlen else str(net)


# -- inlining ------------------------------------------------------------------------------------

def conjunction(outer: Match, inner: Match) -> Match:
    """A packet matching both OUTER (the jump) and INNER (a rule of the chain)."""
    values = {}
    for f in fields(Match):
        a, b = getattr(outer, f.name), getattr(inner, f.name)
        default = getattr(Match(), f.name)
        if a in (default, b):
            values[f.name] = b
        elif b == default:
            values[f.name] = a
        else:
            raise Untranslatable(f"the jump and a rule of the chain both match {f.name}")
    return Match(**values)


EVERYTHING = Match()
REPLIES = frozenset({"RELATED", "ESTABLISHED"})  # what fwc's established rule accepts


def flatten(saved: Saved, table: str, chain: str, outer: Match = EVERYTHING,
            via: tuple[SavedRule, ...] = (), depth: int = 0) -> list[Flat | tuple[SavedRule, str]]:
    """The rules a packet entering CHAIN meets, jumps inlined; (rule, why) when not."""
    if depth > MAX_DEPTH:
        raise Untranslatable("user chains nested too deep")
    out: list[Flat | tuple[SavedRule, str]] = []
    rules = saved.tables[table].chain_rules(chain)
    for index, rule in enumerate(rules):
        try:
            d = decode(rule.text)
            d = replace(d, match=conjunction(outer, d.match))
        except Untranslatable as exc:
            out.append((rule, str(exc)))
            continue
        if d.goto:
            out.append((rule, "-g (goto)"))
            continue
        if d.target == "RETURN" and depth == 0:
            out.append(Flat(d, rule, via))  # in a built-in chain: the chain's policy
            continue
        if d.target == "RETURN":
            if index == len(rules) - 1 and d.match == outer:
                continue  # an unconditional RETURN at the end changes nothing
            out.append((rule, "RETURN (a conditional return from a chain)"))
            continue
        if d.target in saved.tables[table].policies and \
                saved.tables[table].policies[d.target] is None:
            try:
                out += flatten(saved, table, d.target, d.match, (*via, rule), depth + 1)
            except Untranslatable as exc:
                out.append((rule, str(exc)))
            continue
        out.append(Flat(d, rule, via))
    return out


# -- automatic rules ---------------------------------------------------------------------------

def automatic(d: Decoded, chain: str) -> str | None:
    """Why fwc writes this rule itself (None: it does not)."""
    m = d.match
    bare = replace(m, ctstate=(), tcp_not_syn=False, protocol=None, limit=None)
    if d.comment and d.comment.startswith("fwc auto") and not (
            d.comment == "fwc auto: replicated mark" and d.target == "ACCEPT"):
        return d.comment
    # fwc accepts both states, unlimited: a rule accepting one of them (`--ctstate
    # ESTABLISHED`, which leaves RELATED ICMP errors and helper connections to the
    # policy's DROP) or a limited number is not the one fwc writes
    if set(m.ctstate) == REPLIES and d.target == "ACCEPT" and bare == Match() \
            and m.protocol is None and m.limit is None:
        return "replies of accepted connections are accepted (stateful)"
    if m.ctstate == ("INVALID",) and d.target == "DROP" and bare == Match() \
            and m.protocol is None:
        return "invalid packets are dropped"
    if m.tcp_not_syn and d.target == "DROP" and bare == Match() and m.protocol == 6:
        return "a new TCP connection without SYN is dropped"
    if chain == "INPUT" and m.in_device == "lo" and d.target == "ACCEPT" \
            and replace(m, in_device=None) == Match():
        return "loopback is accepted"
    return None


# -- the policy text ---------------------------------------------------------------------------

def import_saved(text: str, path: str, cluster: str) -> Import:
    saved = read_saved(text)
    w = _Writer(path, cluster)
    for line, content, why in saved.skipped:
        w.warn("FWC701", line, f"not imported: {why}", hint=content[:80])
    policy_lines: list[str | OwnRule] = []
    nat_lines: list[str] = []
    if "filter" in saved.tables:
        for chain in FILTER_CHAINS:
            policy_lines += _filter_chain(w, saved, chain)
    if "nat" in saved.tables:
        nat_lines = _nat(w, saved)
    for table in saved.tables.values():
        reached = _reached(saved, table.name)
        for chain, policy in table.policies.items():
            if policy is None and chain not in reached and table.chain_rules(chain):
                first = table.chain_rules(chain)[0]
                w.warn("FWC703", first.line, f"chain {chain} of table {table.name} is never "
                       "jumped to: its rules are not imported")
    return Import(_assemble(w, policy_lines, nat_lines, path), w.diagnostics, w.translated,
                  w.comments)


def _reached(saved: Saved, table: str) -> set[str]:
    out: set[str] = set()
    todo = [c for c, p in saved.tables[table].policies.items() if p is not None]
    while todo:
        chain = todo.pop()
        for rule in saved.tables[table].chain_rules(chain):
            words = rule.text.split()
            for flag in ("-j", "-g"):
                if flag in words[:-1]:
                    target = words[words.index(flag) + 1]
                    if target not in out and saved.tables[table].policies.get(target, 1) is None:
                        out.add(target)
                        todo.append(target)
    return out


def _quote(rule: SavedRule, via: tuple[SavedRule, ...]) -> str:
    path = "".join(f" (via line {v.line})" for v in via)
    return f"# line {rule.line}{path}: {_quoted(rule)}"


def _quoted(rule: SavedRule) -> str:
    """The original line for a comment of the policy: a hidden character (a quoted
    comment's bidirectional control, U+2028, an escape character) escaped, as the policy
    may not hold it even in a comment (FWC006)."""
    return escape_hidden(rule.text)


def _comment_out(w: _Writer, rule: SavedRule, why: str) -> list[str]:
    w.comments += 1
    w.warn("FWC700", rule.line, f"not translated: {why}",
           hint="kept as a comment in the policy; write it by hand or drop it")
    return [f"# line {rule.line}: NOT IMPORTED ({why}): {_quoted(rule)}"]


@dataclass
class OwnRule:
    """A rule to (INPUT) or from (OUTPUT) some of the firewall's own addresses.

    Consecutive ones that differ only in those addresses are one rule; rendered once
    every own address is placed: the addresses, `only fw1` when one is a member's own
    (not a VIP). Never `firewall`, even when the list holds every own address the rules
    name: the cluster block is a skeleton whose members carry more addresses (the
    placeholder devices, the sync link; the real ones once filled in), so `firewall`
    would accept on addresses the original rule did not.
    """

    key: tuple[str, ...]  # action, chain, other side, service, in, out, log
    own: list[str]
    quotes: list[str] = field(default_factory=list)

    def render(self, w: _Writer, member: set[str]) -> str:
        action, chain, other, *rest = self.key
        side = ", ".join(w.address(AddressMatch((f"{a}/32",)), None, 0) for a in self.own)
        source, destination = (other, side) if chain == "INPUT" else (side, other)
        only = ["only", "fw1"] if set(self.own) & member else []
        tail = [word for word in rest if word]
        return "\n".join([*self.quotes, " ".join(["   ", action, "from", source, "to",
                                                  destination, *tail, *only])])


def _filter_chain(w: _Writer, saved: Saved, chain: str) -> list[str | OwnRule]:
    table = saved.tables["filter"]
    out: list[str | OwnRule] = []
    flat = flatten(saved, "filter", chain) if chain in table.policies else []
    pending_log: Flat | None = None
    for item in flat:
        if isinstance(item, tuple):
            out += _comment_out(w, *item)
            continue
        d = item.decoded
        why = automatic(d, chain)
        if why is not None:
            out.append(f"{_quote(item.rule, item.via)}\n# (fwc writes this itself: {why})")
            continue
        if d.target == "LOG":
            if pending_log is not None:
                out += _comment_out(w, pending_log.rule, "LOG not followed by a rule with "
                                    "the same match")
            pending_log = item
            continue
        log = None
        if pending_log is not None:
            if replace(pending_log.decoded.match, limit=None) == replace(d.match, limit=None):
                log = dict(pending_log.decoded.options).get("log-prefix", "").rstrip()
                out.append(_quote(pending_log.rule, pending_log.via))
            else:
                out += _comment_out(w, pending_log.rule, "LOG not followed by a rule with "
                                    "the same match")
            pending_log = None
        try:
            line = _filter_line(w, saved, chain, d, log)
            previous = out[-1] if out else None
            if isinstance(previous, OwnRule) and isinstance(line, OwnRule) \
                    and previous.key == line.key:
                previous.quotes.append(_quote(item.rule, item.via))
                previous.own += [a for a in line.own if a not in previous.own]
            elif isinstance(line, OwnRule):
                line.quotes.append(_quote(item.rule, item.via))
                out.append(line)
            else:
                out += [_quote(item.rule, item.via), line]
            w.translated += 1
        except Untranslatable as exc:
            out += _comment_out(w, item.rule, str(exc))
    if pending_log is not None:
        out += _comment_out(w, pending_log.rule, "LOG at the end of a chain")
    policy = table.policies.get(chain) or DEFAULT_POLICY[chain]
    if policy != DEFAULT_POLICY[chain]:
        action = {"ACCEPT": "accept", "DROP": "drop"}.get(policy)
        ends = {"INPUT": "from any to firewall", "FORWARD": "from any to any",
                "OUTPUT": "from firewall to any"}[chain]
        if action is None:
            w.warn("FWC702", 1, f"chain {chain} policy {policy} is not imported")
        else:
            out += [f"# chain {chain} policy {policy} (fwc's default is "
                    f"{DEFAULT_POLICY[chain]})", f"{action} {ends}"]
    return out


ACTIONS = {"ACCEPT": "accept", "DROP": "drop", "REJECT": "reject"}


def _filter_line(w: _Writer, saved: Saved, chain: str, d: Decoded, log: str | None) \
        -> str | OwnRule:
    m = d.match
    target = d.target
    if target == "RETURN":  # in a built-in chain: its policy decides
        target = saved.tables["filter"].policies.get(chain) or DEFAULT_POLICY[chain]
    action = ACTIONS.get(target)
    if action is None:
        raise Untranslatable(f"target {d.target}")
    hidden = unsafe_character(log) if log else None
    if hidden is not None:  # a policy string may not hold it (FWC004, FWC006)
        raise Untranslatable(f"a log prefix holding {describe_character(hidden[1])}")
    if m.ctstate and set(m.ctstate) <= REPLIES and action == "accept":
        raise Untranslatable(f"an accept of conntrack state {','.join(m.ctstate)} (fwc "
                             "accepts RELATED and ESTABLISHED itself, every one)")
    if m.ctstate and "NEW" not in m.ctstate:
        raise Untranslatable(f"conntrack state {','.join(m.ctstate)} without NEW")
    if m.tcp_not_syn:
        raise Untranslatable("! --syn on a rule fwc does not write itself")
    if m.limit is not None:
        raise Untranslatable("a rate limit on a deciding rule")
    if m.ttl is not None:
        raise Untranslatable("a TTL match (fwc writes one on its own VRRP rules only)")
    source = w.address(m.source, saved, 0) if not m.source.is_any else "any"
    destination = w.address(m.destination, saved, 0) if not m.destination.is_any \
        else "any"
    own: list[str] = []
    if chain == "INPUT":
        destination, own = _own(w, m.destination, m.in_device)
    elif chain == "OUTPUT":
        source, own = _own(w, m.source, m.out_device)
    service = w.service(m)
    tail = [*(["service", service] if service else []),
            *(["in", w.device(m.in_device) or ""] if m.in_device else []),
            *(["out", w.device(m.out_device) or ""] if m.out_device else []),
            *((["log", encode_literal(log)] if log else ["log"]) if log is not None else [])]
    if own:
        other = source if chain == "INPUT" else destination
        return OwnRule((action, chain, other, " ".join(tail)), own)
    return "    " + " ".join([action, "from", source, "to", destination, *tail])


def _own(w: _Writer, match: AddressMatch, device: str | None) -> tuple[str, list[str]]:
    """The firewall side of an INPUT or OUTPUT rule: `firewall`, or its own addresses."""
    if match.is_any:
        return "firewall", []
    if match.negated or match.set_name is not None or any(
            ipaddress.ip_network(c).prefixlen != 32 for c in match.cidrs):
        raise Untranslatable("the firewall's side names more than its own addresses")
    w.device(device)  # (before an address is kept for a device that cannot be written)
    addresses = []
    for cidr in match.cidrs:
        address = str(ipaddress.ip_network(cidr).network_address)
        where = w.own.setdefault(device or "", [])
        if address not in where and not any(address in v for v in w.own.values()):
            where.append(address)
        addresses.append(address)
    return "", addresses


def _nat(w: _Writer, saved: Saved) -> list[str]:
    table = saved.tables["nat"]
    out: list[str] = []
    for chain in ("PREROUTING", "POSTROUTING", "INPUT", "OUTPUT"):
        if chain not in table.policies:
            continue
        for item in flatten(saved, "nat", chain):
            if isinstance(item, tuple):
                out += _comment_out(w, *item)
                continue
            try:
                out += [_quote(item.rule, item.via), _nat_line(w, saved, chain, item.decoded)]
                w.translated += 1
            except Untranslatable as exc:
                out += _comment_out(w, item.rule, str(exc))
    return out


def _nat_line(w: _Writer, saved: Saved, chain: str, d: Decoded) -> str:
    m = d.match
    if chain not in ("PREROUTING", "POSTROUTING"):
        raise Untranslatable(f"a rule in the nat table's {chain} chain")
    if m.ctstate or m.tcp_not_syn or m.limit or m.ttl is not None:
        raise Untranslatable("a state, limit or TTL match in the nat table")
    options = dict(d.options)
    source = w.address(m.source, saved, 0) if not m.source.is_any else "any"
    destination = _before_routing(m.destination) if chain == "PREROUTING" else None
    if destination is None:
        destination = w.address(m.destination, saved, 0) if not m.destination.is_any \
            else "any"
    service = w.service(m)
    where = []
    if chain == "PREROUTING" and d.target == "DNAT":
        action, target = "dnat", options.get("to-destination", "")
        if not target or "-" in target or set(options) - {"to-destination"}:
            raise Untranslatable("DNAT to a range or with options")
        target = _nat_target(target, port=True)
        if m.in_device and len(m.destination.cidrs) == 1 and not m.destination.negated:
            w.homes.setdefault(str(ipaddress.ip_network(m.destination.cidrs[0]).network_address),
                               m.in_device)
    elif chain == "POSTROUTING" and d.target == "SNAT":
        action, target = "snat", options.get("to-source", "")
        if not target or "-" in target or ":" in target or set(options) - {"to-source"}:
            raise Untranslatable("SNAT to a range, a port or with options")
        if m.out_device:
            w.homes.setdefault(target, m.out_device)
        target = _nat_target(target, port=False)
    elif chain == "POSTROUTING" and d.target == "MASQUERADE":
        if not m.out_device or options:
            raise Untranslatable("MASQUERADE without -o or with options")
        action, target = "masquerade", ""
    elif d.target in ("ACCEPT", "RETURN"):
        device = m.in_device if chain == "PREROUTING" else m.out_device
        if not device:
            raise Untranslatable(f"a NAT exemption in {chain} without "
                                 f"{'-i' if chain == 'PREROUTING' else '-o'}")
        action, target = "nonat", ""
    else:
        raise Untranslatable(f"{d.target} in nat {chain}")
    if chain == "PREROUTING" and m.out_device or chain == "POSTROUTING" and m.in_device:
        raise Untranslatable(f"an interface {chain} cannot see")
    if m.in_device:
        where += ["in", w.device(m.in_device) or ""]
    if m.out_device:
        where += ["out", w.device(m.out_device) or ""]
    parts = [action, "from", source, "to", destination]
    if service:
        parts += ["service", service]
    parts += where
    if target:
        parts += ["->", target]
    return "    " + " ".join(parts)


def _before_routing(match: AddressMatch) -> str | None:
    """The destination of a PREROUTING rule where fwc's reading differs (None: it does not).

    Before routing fwc's `any` leaves connections to the firewall's own addresses alone
    (docs/language.md, "NAT rules"); a rule without `-d` translates them too: a port
    forward on the uplink's address (`-A PREROUTING -i eth1 -p tcp --dport 80 -j DNAT`)
    came out as a dnat that never translated a connection to the firewall, and a
    `-j RETURN` in front of it exempted nothing of the firewall's. `any, firewall` is
    everything. A negated destination (`! -d NET`) is fwc's `any` minus NET, without
    the firewall's addresses outside NET, which no list says.
    """
    if match.is_any:
        return "any, firewall"
    if match.negated:
        raise Untranslatable("a negated destination before routing (fwc's '!' leaves "
                             "the firewall's own addresses out, the rule translated them)")
    return None


def _nat_target(text: str, port: bool) -> str:
    """`ADDR` or `ADDR:PORT` (PORT: DNAT only) as the policy writes it after `->`.

    The value is the input's word as shlex split it: quoted, it may hold blanks, `#`
    or `}`, and written as it is it would end the rule and add statements of its own.
    Only an IPv4 address and a port number are written, rebuilt from their values.
    """
    address, colon, number = text.partition(":")
    try:
        written = str(ipaddress.IPv4Address(address))
    except ValueError:
        raise Untranslatable(f"NAT target {text!r} (an IPv4 address"
                             f"{' and a port' if port else ''} is imported)") from None
    if not colon:
        return written
    if not (port and number.isascii() and number.isdigit() and len(number) <= 5
            and int(number) <= 65535):
        raise Untranslatable(f"NAT target {text!r} (a port is a number 0-65535)")
    return f"{written}:{int(number)}"


def _assemble(w: _Writer, policy_lines: list[str | OwnRule], nat_lines: list[str],
              path: str) -> str:
    w.warn("FWC704", 1, f"the cluster block of '{w.cluster}' is a skeleton: fill in the "
           "members' addresses, the sync link and the VRRP password (TODO(import))")
    # The input's name ends a comment line: a newline in it would start a statement.
    shown = path if unsafe_character(path) is None else \
        path.encode("unicode_escape").decode("ascii")
    lines = [f"# Imported by `fwc import iptables-save` from {shown}.",
             "# Every rule quotes the line it comes from; lines marked NOT IMPORTED need a",
             "# decision. The cluster block is a skeleton: complete every TODO(import).", ""]
    cluster = _cluster(w)
    devices, own = _placement(w)
    member = {held[0] for held in own.values() if held}
    rendered = [line.render(w, member) if isinstance(line, OwnRule) else line
                for line in policy_lines]
    # Objects named by the rendering above are defined before the cluster block.
    head = lines[:4]
    head += sorted(w.objects.values()) + [""] if w.objects else []
    head += sorted(w.services.values()) + [""] if w.services else []
    lines = head + cluster + [""]
    lines.append(f"policy {w.cluster} {{")
    lines += [_indent(line) for line in rendered]
    lines.append("}")
    if nat_lines:
        lines += ["", f"nat {w.cluster} {{"] + [_indent(line) for line in nat_lines] + ["}"]
    return "\n".join(lines) + "\n"


def _indent(line: str) -> str:
    return "\n".join(part if part.startswith("    ") else "    " + part
                     for part in line.split("\n"))


def _placement(w: _Writer) -> tuple[list[str], dict[str, list[str]]]:
    """Devices, and the firewall addresses each carries (fw1's, then VIPs): one /24 each.

    An address whose /24 a NAT rule ties to a device (`w.homes`: an SNAT address is on
    the device it leaves by, a DNAT address on the one it arrives by) goes there; one
    a rule names with its device stays there, unless a NAT rule ties that device to
    another /24; any other goes to a device already holding its /24, else to the first
    device without addresses no NAT rule ties, else to a new placeholder device. A
    member's adverts leave from its address on the device: on the wrong device, a snat
    of the device's network would translate them in the skeleton (FWC222).
    """
    devices = list(w.devices) or ["eth0"]
    own: dict[str, list[str]] = {d: [] for d in devices}

    def net(address: str) -> ipaddress.IPv4Network:
        return ipaddress.ip_network(f"{address}/24", strict=False)

    def takes(device: str, address: str) -> bool:
        held = own[device]
        return net(held[0]) == net(address) if held else \
            tying.get(device, net(address)) == net(address)

    tied = {net(a): d for a, d in w.homes.items() if d in own}
    tying = {d: n for n, d in tied.items()}
    pending = [(d, a) for d in devices for a in w.own.get(d, [])]
    pending += [("", a) for a in w.own.get("", [])]
    for device, address in pending:
        if any(address in held for held in own.values()):
            continue
        home = tied.get(net(address))
        if home is None or not takes(home, address):
            home = device if device and takes(device, address) else None
        if home is None:
            home = next((d for d in own if own[d] and takes(d, address)), None) or \
                next((d for d in own if not own[d] and d not in tying), None)
        if home is None:
            home = f"fwcimp{len(own)}"
            own[home] = []
        own[home].append(address)
    return list(own), own


def _cluster(w: _Writer) -> list[str]:
    devices, own = _placement(w)
    lines = ["# TODO(import): a skeleton. fw1 holds the addresses the rules treat as the",
             "# firewall's own (each on a /24: check the prefixes and the devices); everything",
             "# from 198.18.0.0/15 is a placeholder.",
             f"cluster {w.cluster} {{",
             "    vrrp { password \"TODO-imp\"  advert 1s  vrid 51 }  # TODO(import)",
             "    sync { link sync  mode ftfw }",
             ]
    first: dict[str, tuple[str, str]] = {}
    placeholders = iter(PLACEHOLDER_NET.subnets(new_prefix=24))
    vrid = 51
    for device in devices:
        name = interface_name(device)
        addresses = own[device]
        if addresses:
            net = ipaddress.ip_network(f"{addresses[0]}/24", strict=False)
            taken = set(addresses)
            spare = next(str(h) for h in net.hosts() if str(h) not in taken)
            first[device] = (f"{addresses[0]}/24", f"{spare}/24")
            vips = [f"{a}/24" for a in addresses[1:]]
        else:
            hosts = list(next(placeholders).hosts())
            first[device] = (f"{hosts[0]}/24", f"{hosts[1]}/24")
            vips = []
        vip = ""
        if vips:
            vrid += 1
            vip = f" vip {', '.join(vips)}  vrid {vrid}"
        lines.append(f"    interface {name}{vip}")
    lines.append("    interface sync  # TODO(import): the link between the two members")
    sync = list(SYNC_NET.hosts())
    for member, priority, column in (("fw1", 150, 0), ("fw2", 100, 1)):
        lines.append(f"    member {member} priority {priority} {{  # TODO(import)")
        for device in devices:
            lines.append(f"        {interface_name(device)} {device} {first[device][column]}")
        lines.append(f"        sync fwcsync {sync[column]}/24")
        lines.append("    }")
    lines.append("}")
    return lines


def import_file(text: str, path: str, cluster: str) -> Import:
    """The policy text and the diagnostics of importing TEXT (read from PATH)."""
    return import_saved(text, path, cluster)


__all__ = ["ANY", "Import", "import_file", "read_saved"]
