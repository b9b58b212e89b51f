"""`iptables-save` text read into fwc's lowered rule model (`fwc.backend.lower.ruleset`).

The same reader serves the import (each rule decoded into a `Match`, a target and
its options, or the reason it cannot be) and the fidelity proof (the original and
the compiled rulesets as `NodeRuleset`s for `fwc.analysis.evaluate`). `ipset save`
lines in the same input (`create NAME ...`, `add NAME ADDR`) give the members of
the sets `-m set` names.
"""

from __future__ import annotations

import functools
import ipaddress
import re
import shlex
from dataclasses import field

from fwc import protocols as proto
from fwc.backend.lower.ruleset import (
    AddressMatch,
    Chain,
    FilterRule,
    Match,
    NatRule,
    NodeRuleset,
    Origin,
    RateLimit,
    Table,
    target_of,
)
from fwc.model import PortRange
from fwc.model.records import dataclass
from fwc.model.vocabulary import Table as TableName

BUILTIN = {"filter": ("INPUT", "FORWARD", "OUTPUT"),
           "nat": ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING")}
PROTOCOL_NAMES = {number: name for name, number in proto.IP_PROTOCOLS.items()}
STATES = frozenset(proto.CTSTATE_ORDER)
# Options that do not change what a rule matches or does (kept out of the decision).
IGNORED_TARGET_OPTIONS = {"log-level", "log-tcp-sequence", "log-tcp-options", "log-ip-options",
                          "log-uid"}


class Untranslatable(Exception):
    """A rule (or line) the import cannot express; the message says what."""

    def __init__(self, message: str, line: int = 0) -> None:
        super().__init__(message)
        self.line = line  # in the input, where the caller does not know it (0: unknown)


@dataclass(frozen=True, slots=True)
class SavedRule:
    table: str
    chain: str
    line: int  # in the input
    text: str  # the rule as written (`-A CHAIN ...`)


@dataclass
class SavedTable:
    name: str
    policies: dict[str, str | None] = field(default_factory=dict)  # None: a user chain
    rules: list[SavedRule] = field(default_factory=list)
    # each chain's rules in order, kept with RULES (`add`): a ruleset of thousands of
    # chains asked each chain's rules by scanning every rule (82,000 rules in 4,344
    # chains: about 10 s)
    by_chain: dict[str, list[SavedRule]] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        for rule in self.rules:
            self.by_chain.setdefault(rule.chain, []).append(rule)

    def add(self, rule: SavedRule) -> None:
        self.rules.append(rule)
        self.by_chain.setdefault(rule.chain, []).append(rule)

    def chain_rules(self, chain: str) -> list[SavedRule]:
        return list(self.by_chain.get(chain, ()))


@dataclass
class Saved:
    tables: dict[str, SavedTable] = field(default_factory=dict)
    sets: dict[str, list[str]] = field(default_factory=dict)
    # (line, text, why) of lines that are not rules of a table the import reads.
    skipped: list[tuple[int, str, str]] = field(default_factory=list)


def read_saved(text: str) -> Saved:
    out = Saved()
    table: SavedTable | None = None
    # Lines end at "\n" only, as iptables-restore reads them: str.splitlines also ends
    # one at U+2028, U+0085, "\r" ..., which a quoted comment may hold, and the rest
    # of the comment would be read as a rule of its own.
    for number, raw in enumerate(text.split("\n"), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("*"):
            name = line[1:].strip()
            table = SavedTable(name)
            if name in BUILTIN:
                out.tables[name] = table
            else:
                out.skipped.append((number, line, f"the {name} table is not imported"))
            continue
        if line == "COMMIT":
            table = None
            continue
        words = line.split()
        if words[0] in ("create", "add") and len(words) >= 3 and table is None:
            members = out.sets.setdefault(words[1], [])
            if words[0] == "add":
                members.append(words[2])
            continue
        if table is None:
            out.skipped.append((number, line, "outside a table"))
            continue
        if table.name not in BUILTIN:
            continue
        if line.startswith(":"):
            name, policy = words[0][1:], words[1] if len(words) > 1 else "-"
            table.policies[name] = None if policy == "-" else policy
        elif words[0] == "-A" and len(words) >= 2:
            table.add(SavedRule(table.name, words[1], number, line))
        else:
            out.skipped.append((number, line, "not a rule (-A) or chain (:) line"))
    return out


@dataclass(frozen=True, slots=True)
class Decoded:
    match: Match
    target: str  # a kernel target or a user chain
    options: tuple[tuple[str, str], ...]
    comment: str | None
    goto: bool = False


# (rules repeat the same few thousand addresses: ipaddress parses each in Python)
@functools.lru_cache(maxsize=1 << 16)
def _addresses(value: str) -> tuple[str, ...]:
    out = []
    for item in value.split(","):
        try:
            net = ipaddress.ip_network(item, strict=False)
        except ValueError as exc:
            raise Untranslatable(f"address {item!r} (host names are not imported)") from exc
        if net.version != 4:
            raise Untranslatable("IPv6 address in an IPv4 ruleset")
        out.append(str(net))
    return tuple(out)


def _is_number(value: str) -> bool:
    """Whether VALUE is a decimal number `int` takes: ASCII digits (str.isdigit is also
    true of '²', which int refuses), few enough (int refuses more than 4300)."""
    return value.isascii() and value.isdigit() and len(value) <= 10


def _number(value: str, what: str) -> int:
    if not _is_number(value):
        raise Untranslatable(f"{what} {value!r} (not a number)")
    return int(value)


def _ports(value: str) -> tuple[PortRange, ...]:
    out = []
    for item in value.split(","):
        low, _, high = item.partition(":")
        if not _is_number(low) or (high and not _is_number(high)):
            raise Untranslatable(f"port {item!r} (service names are not imported)")
        out.append(PortRange(int(low), int(high or low)))
    return tuple(out)


def _protocol(value: str) -> int | None:
    """The protocol `-p VALUE` matches; None for every protocol (iptables reads `-p 0`
    and `-p all` so; `proto/0` would be refused by fwc, FWC107)."""
    if value == "all" or (_is_number(value) and int(value) == 0):
        return None
    if _is_number(value):
        return int(value)
    if value in proto.IP_PROTOCOLS:
        return proto.IP_PROTOCOLS[value]
    raise Untranslatable(f"protocol {value!r}")


def _icmp_type(value: str) -> int:
    if _is_number(value):
        return int(value)
    if value in proto.ICMP_TYPES:
        return proto.ICMP_TYPES[value]
    raise Untranslatable(f"icmp type {value!r} (a type with a code is not imported)")


# shlex's word splitting (posix mode) for a line with no single quote and no backslash:
# words split at its whitespace, double-quoted parts taken as they are (iptables-save
# quotes comments and log prefixes so). shlex reads a character at a time in Python,
# about 0.1 ms per rule line; a line it would read otherwise still goes to it.
_ESCAPING = re.compile(r"['\\]")
_SHLEX_WORD = re.compile(r'(?:[^ \t\r\n"]+|"[^"]*")+')


def _words(text: str) -> list[str]:
    """`shlex.split(TEXT)`, cheaper where nothing is escaped or single-quoted."""
    if _ESCAPING.search(text) or text.count('"') % 2:
        return shlex.split(text)
    return [word.replace('"', "") for word in _SHLEX_WORD.findall(text)]


def decode(text: str) -> Decoded:
    """The rule `-A CHAIN ...` as a Match and a target; Untranslatable says why not."""
    try:
        words = _words(text)
    except ValueError as exc:
        raise Untranslatable(f"cannot split the line: {exc}") from exc
    words = words[2:]  # -A CHAIN
    fields: dict[str, object] = {}
    source = destination = AddressMatch()
    target, goto, comment = "", False, None
    options: list[tuple[str, str]] = []
    modules: set[str] = set()
    i = 0

    def value() -> str:
        nonlocal i
        if i + 1 >= len(words):
            raise Untranslatable(f"{words[i]} without a value")
        i += 1
        return words[i]

    while i < len(words):
        word = words[i]
        negated = word == "!"
        if negated:
            i += 1
            if i >= len(words):
                raise Untranslatable("a lone '!'")
            word = words[i]
        if word in ("-s", "--source", "-d", "--destination"):
            address = AddressMatch(_addresses(value()), negated=negated)
            if word in ("-s", "--source"):
                source = address
            else:
                destination = address
        elif negated and word not in ("--tcp-flags", "--syn"):
            raise Untranslatable(f"negated {word}")
        elif word in ("-i", "--in-interface", "-o", "--out-interface"):
            device = value()
            if device.endswith("+"):
                raise Untranslatable(f"interface wildcard {device!r}")
            fields["in_device" if word in ("-i", "--in-interface") else "out_device"] = device
        elif word in ("-p", "--protocol"):
            fields["protocol"] = _protocol(value())
        elif word in ("-m", "--match"):
            module = value()
            if module not in ("tcp", "udp", "multiport", "conntrack", "state", "icmp",
                              "comment", "set", "limit"):
                raise Untranslatable(f"match module {module!r}")
            modules.add(module)
        elif word in ("--dport", "--destination-port", "--dports", "--destination-ports"):
            fields["dports"] = _ports(value())
        elif word in ("--sport", "--source-port", "--sports", "--source-ports", "--ports"):
            raise Untranslatable(f"{word} (fwc matches destination ports only)")
        elif word in ("--ctstate", "--state"):
            states = tuple(value().split(","))
            if not set(states) <= STATES:
                raise Untranslatable(f"conntrack state {','.join(states)}")
            fields["ctstate"] = tuple(s for s in proto.CTSTATE_ORDER if s in states)
        elif word == "--icmp-type":
            fields["icmp_type"] = _icmp_type(value())
        elif word == "--tcp-flags":
            mask, flags = value(), value()
            if not (negated and set(mask.split(",")) == {"FIN", "SYN", "RST", "ACK"}
                    and flags == "SYN"):
                raise Untranslatable("--tcp-flags other than ! FIN,SYN,RST,ACK SYN")
            fields["tcp_not_syn"] = True
        elif word == "--syn":
            if not negated:
                raise Untranslatable("--syn (only ! --syn is imported)")
            fields["tcp_not_syn"] = True
        elif word == "--comment":
            comment = value()
        elif word == "--match-set":
            name, direction = value(), value()
            if direction not in ("src", "dst"):
                raise Untranslatable(f"--match-set {name} {direction}")
            address = AddressMatch(set_name=name, negated=negated)
            if direction == "src":
                source = address
            else:
                destination = address
        elif word == "--limit":
            fields["limit"] = RateLimit(value(), 5)
        elif word == "--limit-burst":
            limit = fields.get("limit")
            burst = _number(value(), "--limit-burst")
            fields["limit"] = RateLimit(limit.rate if isinstance(limit, RateLimit)
                                        else "3/hour", burst)
        elif word in ("-j", "--jump", "-g", "--goto"):
            target = value()
            goto = word in ("-g", "--goto")
        elif word.startswith("--") and target:
            key = word[2:]
            if key not in IGNORED_TARGET_OPTIONS:
                options.append((key, value()))
            elif i + 1 < len(words) and not words[i + 1].startswith("-"):
                value()
        else:
            raise Untranslatable(f"option {word!r}")
        i += 1
    if not target:
        raise Untranslatable("a rule without a target (-j)")
    protocol = fields.get("protocol")
    if "dports" in fields and protocol not in (6, 17, 132, 33):
        raise Untranslatable("ports without tcp or udp")
    if "icmp_type" in fields and protocol != 1:
        raise Untranslatable("an icmp type without -p icmp")
    match = Match(source=source, destination=destination, **fields)  # type: ignore[arg-type]
    return Decoded(match, target, tuple(options), comment, goto)


def ruleset(saved: Saved, member: str = "original") -> NodeRuleset:
    """The filter and nat tables as a lowered ruleset (for the evaluator).

    A rule that cannot be decoded raises Untranslatable, with its line: the fidelity
    proof needs the whole ruleset.
    """
    tables = []
    for name, kind in (("nat", NatRule), ("filter", FilterRule)):
        table = saved.tables.get(name)
        if table is None:
            continue
        chains = []
        for chain, policy in table.policies.items():
            rules = []
            for rule in table.chain_rules(chain):
                try:
                    rules.append(_lowered(kind, rule, saved.sets))
                except Untranslatable as exc:
                    raise Untranslatable(str(exc), rule.line) from None
            chains.append(Chain(chain, target_of(policy) if policy else None,  # type: ignore
                                tuple(rules)))
        tables.append(Table(TableName(name), tuple(chains)))
    return NodeRuleset("imported", member, 4, tuple(tables))


def _lowered(kind: type[FilterRule] | type[NatRule], rule: SavedRule,
             sets: dict[str, list[str]]) -> FilterRule | NatRule:
    """RULE as the evaluator reads it; Untranslatable where it cannot."""
    d = decode(rule.text)
    if d.goto:
        raise Untranslatable("-g (goto)")
    # the evaluator reads every member of a set a rule names as an address
    for side in (d.match.source, d.match.destination):
        for member in sets.get(side.set_name, ()) if side.set_name is not None else ():
            _addresses(member)
    origin = Origin("policy", d.comment or f"line {rule.line}")
    try:
        return kind(d.match, target_of(d.target), origin, d.options)
    except ValueError as exc:  # a kernel target the table has not (DNAT in filter)
        raise Untranslatable(str(exc)) from None
