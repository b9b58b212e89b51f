"""nftables.nft text -> the lowered rule model, for the one packet evaluator.

`read(text)` turns the file `fwc compile` writes for the nftables backend back
into one `NodeRuleset` per address family, in the form `fwc.analysis.evaluate`
already walks (tables of chains of lowered rules), so that the nft output is
evaluated by the same evaluator as the iptables output, not by a second one.
It is written from nft's syntax, independently of the renderer: what is
evaluated is the text the node loads.

How the nft constructs become lowered rules:

- A base chain (`type filter hook forward ...; policy drop;`) becomes the
  built-in chain of its hook (FORWARD) in every family's ruleset, with that
  policy; its `meta nfproto ipv4` rules go to the IPv4 ruleset only. Every other
  chain is a user chain under its nft name. The table a chain belongs to is the
  word before the first '-' of its name (filter, nat, raw, mangle), which the
  base chain's type and hook must agree with.
- A verdict-map lookup (`iifname vmap @m`) becomes one rule per map element,
  in order: `iifname "eth0" jump x`, ... Exact, because the keys are distinct
  (the reader refuses overlapping port ranges), so at most one matches and a
  packet matching none goes on after them, as with the map.
- A lookup in a set of concatenations (`ip saddr . tcp dport @s`) becomes one
  rule per element, each with the element's comment as its origin. Exact for
  the verdicts fwc writes there (accept, drop, reject, or a jump to a chain that
  always ends in one: `never_returns`); the reader refuses any other. A verdict
  map of concatenations (`ip saddr . tcp dport vmap @m`) the same, each rule
  with its element's verdict; the reader refuses a map whose elements overlap
  (the kernel accepts them; which one a lookup finds is not defined).
- A chain that only packets of some destination ports reach (every jump to it
  tests a protocol and ports: a port bucket) keeps, of a set it looks up, the
  elements of those ports: the others can never match there (the renderer
  shares one map across the bucket chains of a dispatch). The ports are read
  from the jumps (`_envelopes`), not assumed.
- `th dport` without a protocol (the renderer writes it in a chain that only
  packets of one protocol reach) is a port test of that protocol, read from the
  jumps to the chain (`_given_protocols`); where packets of several protocols
  arrive it is refused. A chain's rules may also leave out a device or
  protocol test that every packet reaching them passes: read as written, they
  decide the same, as the evaluator walks the packet from its hook.
- A rule's own limits, which match beyond the limit as iptables' do: a named
  `limit` object (`rate over R burst N packets`, `limit name "x"`) is the
  hashlimit bucket of that name; `update @m { ip saddr limit rate over ... }`
  a per-source one; `add @m { ip saddr ct count over N }` a connlimit. The
  evaluator treats them as iptables' (a single packet is within every limit).
- `notrack` is `CT --notrack`, `tcp option maxseg size set N|rt mtu` is TCPMSS
  (`--set-mss N`, `--clamp-mss-to-pmtu`); a raw base chain `raw-HOOK-notrack`
  runs before the raw chain of the same hook (priority raw, before conntrack),
  so its rules come first in the one built-in chain of that hook.
- `dnat ip to numgen inc mod N map { 0 : a, 1 : b, ... }` becomes the N lines
  of `-m statistic --mode nth --every N-k --packet 0` the iptables output has,
  the last without the match (load sharing: connection k of N goes to backend k).
- A set of addresses stays a named set (`AddressMatch.set_name`, its blocks in
  `NftRules.sets`); a set of ports becomes the rule's port list.

`NftRules.costs` says what testing each lowered rule costs in nft terms: 1 for
the first rule of each nft rule and 0 for the rest of an expanded lookup, so a
map or set lookup counts as one evaluation (`evaluations`, for the benchmark).
"""

from __future__ import annotations

import ipaddress
import shlex
from collections.abc import Iterable, Sequence
from dataclasses import field

from fwc import protocols as proto
from fwc.analysis.evaluate import Evaluator, Packet
from fwc.backend.lower.ruleset import (
    VERDICTS,
    AddressMatch,
    Chain,
    ConnLimit,
    FilterRule,
    HashLimit,
    Match,
    NatRule,
    NodeRuleset,
    Origin,
    RateLimit,
    Rule,
    Table,
)
from fwc.model import PortRange
from fwc.model.records import dataclass
from fwc.model.vocabulary import BuiltinChain, Target
from fwc.model.vocabulary import Table as TableName

FAMILIES = {"ipv4": 4, "ipv6": 6}
ADDRESS_WORDS = {"ip": 4, "ip6": 6}
PROTOCOLS = dict(proto.IP_PROTOCOLS)
STATES = {"invalid": "INVALID", "new": "NEW", "related": "RELATED",
          "established": "ESTABLISHED", "untracked": "UNTRACKED"}
REJECTS = {("tcp", "reset"): proto.REJECT_TCP,
           ("icmp", "port-unreachable"): proto.REJECT_OTHER[4],
           ("icmpv6", "port-unreachable"): proto.REJECT_OTHER[6],
           # `reject ... with TYPE` as iptables' --reject-with names them
           ("icmp", "host-unreachable"): "icmp-host-unreachable",
           ("icmp", "net-unreachable"): "icmp-net-unreachable",
           ("icmp", "admin-prohibited"): "icmp-admin-prohibited",
           ("icmpv6", "addr-unreachable"): "icmp6-addr-unreachable",
           ("icmpv6", "no-route"): "icmp6-no-route",
           ("icmpv6", "admin-prohibited"): "icmp6-adm-prohibited"}
MARK_BITS = 0xFFFFFFFF
# Only these key words (a selector) are read; anything else in a rule is refused.
SELECTORS = ("saddr", "daddr", "dport", "l4proto", "iifname", "oifname")
LOG_LEVELS = ("emerg", "alert", "crit", "err", "warn", "notice", "info", "debug")
TCP_FLAGS = ("fin", "syn", "rst", "psh", "ack", "urg", "ecn", "cwr")
# A raw base chain with this suffix holds the `notrack` rules, at priority raw: it runs
# before the plain one of its hook (whose `ct helper` rules need conntrack).
NOTRACK_SUFFIX = "-notrack"


class NftReadError(ValueError):
    """Text this reader does not understand (never silently skipped)."""


@dataclass(frozen=True, slots=True)
class NftSet:
    key: tuple[str, ...]  # the key types, e.g. ("ipv4_addr", "inet_service")
    elements: tuple[tuple[tuple[str, ...], str | None], ...]  # (values, comment)
    verdicts: tuple[str, ...] = ()  # a verdict map: each element's verdict
    dynamic: bool = False  # filled by the rules (`add`/`update @set`), never listed


@dataclass
class NftRules:
    """What one nftables.nft file does, as lowered rulesets per family."""

    rulesets: dict[int, NodeRuleset]
    sets: dict[str, tuple[str, ...]]  # address sets by name: their blocks
    # family -> table -> chain -> cost per rule: per table, since the tables' built-in
    # chains share names (raw, nat and filter all have a PREROUTING or an INPUT)
    costs: dict[int, dict[TableName, dict[str, tuple[int, ...]]]] = \
        field(default_factory=dict)

    def evaluator(self, family: int, table: TableName = TableName.FILTER) -> Evaluator:
        return Evaluator(self.rulesets[family], self.sets, table,
                         costs=self.costs.get(family, {}).get(table, {}))


def _tokens(line: str) -> list[str]:
    lexer = shlex.shlex(line, posix=True)
    lexer.whitespace_split = True
    lexer.commenters = ""
    try:
        return list(lexer)
    except ValueError as exc:
        raise NftReadError(f"{line.strip()}: {exc}") from None


def _blocks(text: str) -> str:
    """An address or prefix as the CIDR the lowered model writes."""
    try:
        return str(ipaddress.ip_network(text, strict=False))
    except ValueError:
        raise NftReadError(f"not an address: {text}") from None


def _port_range(text: str) -> PortRange:
    low, _, high = text.partition("-")
    if not low.isdigit() or (high and not high.isdigit()):
        raise NftReadError(f"not a port: {text}")
    return PortRange(int(low), int(high or low))


def _protocol(text: str) -> int:
    if text.isdigit():
        return int(text)
    if text not in PROTOCOLS:
        raise NftReadError(f"unknown protocol {text}")
    return PROTOCOLS[text]


@dataclass
class _Parsed:
    """One rule as read: its fields, an optional expansion (a lookup), and its verdict."""

    fields: dict[str, object] = field(default_factory=dict)
    family: int | None = None  # meta nfproto
    lookup: tuple[tuple[str, ...], str, bool] | None = None  # (selectors, set, is map)
    target: object = None
    options: tuple[tuple[str, str], ...] = ()
    comment: str = ""
    # one rule per entry: (fields, target options) added to the rule's own (numgen maps)
    variants: tuple[tuple[dict[str, object], tuple[tuple[str, str], ...]], ...] = ()


class _Reader:
    def __init__(self, text: str) -> None:
        self.lines = text.splitlines()
        self.sets: dict[str, NftSet] = {}
        self.helpers: dict[str, str] = {}
        self.limits: dict[str, tuple[str, int]] = {}  # limit objects: (rate, burst)
        self.chains: dict[str, tuple[tuple[str, str, str] | None, list[_Parsed]]] = {}
        self.element_memo: dict[tuple[str, tuple[str, ...]], list[dict[str, object]]] = {}
        self.disjoint_maps: set[tuple[str, tuple[str, ...]]] = set()

    # -- the file's blocks -----------------------------------------------------------
    def read(self) -> None:
        depth = 0
        i = 0
        while i < len(self.lines):
            line = self.lines[i].strip()
            i += 1
            if not line or line.startswith("#"):
                continue
            words = _tokens(line)
            if depth == 0:
                if words[:3] == ["table", "inet", "fwc"] and words[3:] == ["{}"]:
                    continue
                if words == ["delete", "table", "inet", "fwc"]:
                    continue
                if words == ["table", "inet", "fwc", "{"]:
                    depth = 1
                    continue
                raise NftReadError(f"outside fwc's table: {line}")
            if words == ["}"]:
                depth = 0
                continue
            if words[0] in ("set", "map") and words[-1] == "{":
                i = self._set(words[1], words[0] == "map", i)
            elif words[:2] == ["ct", "helper"] and words[-1] == "{":
                i = self._helper(words[2], i)
            elif words[0] == "limit" and len(words) == 3 and words[-1] == "{":
                i = self._limit(words[1], i)
            elif words[0] == "chain" and words[-1] == "{":
                i = self._chain(words[1], i)
            else:
                raise NftReadError(f"unknown statement in the table: {line}")

    def _block(self, start: int) -> tuple[list[str], int]:
        out: list[str] = []
        i = start
        while i < len(self.lines):
            line = self.lines[i].strip()
            i += 1
            if line == "}":
                return out, i
            out.append(line)
        raise NftReadError("a block is not closed")

    def _helper(self, name: str, start: int) -> int:
        lines, end = self._block(start)
        for line in lines:
            words = _tokens(line)
            if words[0] == "type":
                self.helpers[name] = words[1]
        return end

    def _limit(self, name: str, start: int) -> int:
        lines, end = self._block(start)
        words = _tokens(" ".join(lines))
        if len(words) != 6 or words[:2] != ["rate", "over"] or words[3] != "burst" \
                or words[5] != "packets" or not words[4].isdigit():
            raise NftReadError(f"limit {name}: only `rate over R burst N packets` is read")
        self.limits[name] = (words[2], int(words[4]))
        return end

    def _set(self, name: str, is_map: bool, start: int) -> int:
        key: tuple[str, ...] = ()
        elements: list[tuple[tuple[str, ...], str | None]] = []
        verdicts: list[str] = []
        dynamic = False
        i = start
        inside = False
        while i < len(self.lines):
            line = self.lines[i].strip()
            i += 1
            if inside:
                if line == "}":
                    inside = False
                    continue
                words = _tokens(line.rstrip(","))
                comment = None
                if "counter" in words:  # a per-element counter (`counter` in a set)
                    at = words.index("counter")
                    words = words[:at] + words[at + 1:]
                if "comment" in words:  # `KEY comment "c"` or `KEY comment "c" : VERDICT`
                    at = words.index("comment")
                    comment, words = words[at + 1], words[:at] + words[at + 2:]
                if is_map:
                    at = words.index(":")
                    verdicts.append(" ".join(words[at + 1:]))
                    words = words[:at]
                elements.append((tuple(w for w in words if w != "."), comment))
                continue
            if line == "}":
                break
            words = _tokens(line)
            if words[0] == "type":
                types = words[1:words.index(":")] if is_map else words[1:]
                key = tuple(w for w in types if w != ".")
            elif words[:3] == ["elements", "=", "{"]:
                inside = True
            elif words[0] == "flags":
                dynamic = "dynamic" in words[1].split(",")
            elif words[0] not in ("size", "timeout", "counter"):
                raise NftReadError(f"set {name}: unknown line {line}")
        if dynamic and (elements or is_map):
            raise NftReadError(f"set {name}: a dynamic set with elements")
        self.sets[name] = NftSet(key, tuple(elements), tuple(verdicts), dynamic)
        return i

    def _chain(self, name: str, start: int) -> int:
        lines, end = self._block(start)
        hook: tuple[str, str, str] | None = None
        rules: list[_Parsed] = []
        for line in lines:
            words = _tokens(line)
            if words[0] == "type":
                # type filter hook forward priority 0; policy drop;
                text = " ".join(words).replace(";", " ").split()
                policy = text[text.index("policy") + 1] if "policy" in text else "accept"
                hook = (text[1], text[3], policy)
            else:
                rules.append(self._rule(words, line))
        self.chains[name] = (hook, rules)
        return end

    # -- one rule --------------------------------------------------------------------
    def _rule(self, words: list[str], line: str) -> _Parsed:
        rule = _Parsed()
        i = 0

        def need(n: int) -> list[str]:
            if i + n > len(words):
                raise NftReadError(f"rule ends early: {line}")
            return words[i:i + n]

        while i < len(words):
            word = words[i]
            if word == "counter":
                i += 1
            elif word == "comment":
                rule.comment = need(2)[1]
                i += 2
            elif word == "meta" and need(2)[1] == "nfproto":
                rule.family = FAMILIES[need(3)[2]]
                i += 3
            elif word in ("icmp", "icmpv6") and need(2)[1] == "type":
                rule.fields["protocol"] = PROTOCOLS[word]
                rule.fields["icmp_type"] = int(need(3)[2])
                i += 3
            elif word == "ip6" and need(2)[1] == "hoplimit":
                rule.fields["hop_limit"] = int(need(3)[2])
                i += 3
            elif word == "ip" and need(2)[1] == "ttl":
                rule.fields["ttl"] = int(need(3)[2])
                i += 3
            elif word == "tcp" and need(2)[1] == "flags":
                i = self._tcp_flags(words, i, rule, line)
            elif word == "tcp" and need(2)[1] == "option":
                # tcp option maxseg size set N | tcp option maxseg size set rt mtu
                got = need(6)
                if got[2:5] != ["maxseg", "size", "set"]:
                    raise NftReadError(f"unknown tcp option statement: {line}")
                rule.target = Target.TCPMSS
                if got[5] == "rt" and need(7)[6] == "mtu":
                    rule.options = (("clamp-mss-to-pmtu", ""),)
                    i += 7
                elif got[5].isdigit():
                    rule.options = (("set-mss", got[5]),)
                    i += 6
                else:
                    raise NftReadError(f"unknown maxseg value: {line}")
            elif word == "notrack":
                rule.target = Target.CT
                rule.options = (("notrack", ""),)
                i += 1
            elif word in ("add", "update") and need(2)[1].startswith("@"):
                i = self._meter(words, i, rule, line)
            elif word == "ct" and need(2)[1] == "state":
                states = need(3)[2].split(",")
                rule.fields["ctstate"] = tuple(STATES[s] for s in states)
                i += 3
            elif word == "ct" and need(2)[1] == "mark":
                # ct mark set ct mark or V | ct mark set ct mark and A xor V
                got = need(7)
                if got[2:5] != ["set", "ct", "mark"]:
                    raise NftReadError(f"unknown ct mark statement: {line}")
                if got[5] == "or":
                    value = int(got[6], 0)
                    mask = value
                    i += 7
                else:
                    keep, value = int(got[6], 0), int(need(9)[8], 0)
                    mask = MARK_BITS & ~keep
                    i += 9
                rule.target = Target.CONNMARK
                rule.options = (("set-xmark", f"{value:#x}/{mask:#x}"),)
            elif word == "ct" and need(2)[1] == "helper":
                name = need(4)[3]
                if name not in self.helpers:
                    raise NftReadError(f"unknown ct helper {name}: {line}")
                rule.target = Target.CT
                rule.options = (("helper", self.helpers[name]),)
                i += 4
            elif word == "limit" and need(2)[1] == "name":
                name = need(3)[2]
                if name not in self.limits:
                    raise NftReadError(f"unknown limit object {name}: {line}")
                rate, burst = self.limits[name]
                rule.fields["hashlimit"] = HashLimit(rate, burst, name)
                i += 3
            elif word == "limit":
                got = need(6)
                if got[1] != "rate" or got[3] != "burst" or got[5] != "packets":
                    raise NftReadError(f"unknown limit: {line}")
                rule.fields["limit"] = RateLimit(got[2], int(got[4]))
                i += 6
            elif word in ("accept", "drop", "return", "masquerade"):
                rule.target = Target(word.upper())
                i += 1
            elif word == "jump":
                rule.target = need(2)[1]
                i += 2
            elif word == "reject":
                got = need(4)
                # reject with tcp reset | reject with icmp(v6) type port-unreachable
                how = (got[2], got[3]) if got[2] == "tcp" else (got[2], need(5)[4])
                if got[1] != "with" or how not in REJECTS:
                    raise NftReadError(f"unknown reject: {line}")
                rule.target = Target.REJECT
                rule.options = (("reject-with", REJECTS[how]),)
                i += 4 if got[2] == "tcp" else 5
            elif word == "log":
                # log prefix P [level L] (LOG) | log prefix P group N (NFLOG)
                prefix = need(3)[2]
                i += 3
                rule.target = Target.LOG
                rule.options = (("log-prefix", prefix),)
                if i + 1 < len(words) and words[i] == "level":
                    if words[i + 1] not in LOG_LEVELS:
                        raise NftReadError(f"unknown log level: {line}")
                    rule.options += (("log-level", str(LOG_LEVELS.index(words[i + 1]))),)
                    i += 2
                elif i + 1 < len(words) and words[i] == "group":
                    rule.target = Target.NFLOG
                    rule.options = (("nflog-prefix", prefix),
                                    ("nflog-group", str(int(words[i + 1]))))
                    i += 2
            elif word == "dnat" and "numgen" in words[i:i + 8]:
                i = self._numgen(words, i, rule, line)
            elif word in ("snat", "dnat"):
                got = need(4)
                rule.target = Target.SNAT if word == "snat" else Target.DNAT
                option = "to-source" if word == "snat" else "to-destination"
                rule.options = ((option, got[3]),)
                i += 4
            else:
                i = self._expression(words, i, rule, line)
        return rule

    def _tcp_flags(self, words: list[str], i: int, rule: _Parsed, line: str) -> int:
        """`tcp flags & (fin | syn | rst | ack) != syn` (not a SYN: `! --syn`) or
        `tcp flags & (syn | rst) == syn` (`--tcp-flags SYN,RST SYN`)."""
        if words[i + 2:i + 3] != ["&"] or not words[i + 3].startswith("("):
            raise NftReadError(f"unknown tcp flags test: {line}")
        mask: list[str] = []
        j = i + 3
        while j < len(words):
            word = words[j]
            mask += [w for w in word.strip("()").split("|") if w]
            j += 1
            if word.endswith(")"):
                break
        if j + 2 > len(words) or words[j] not in ("==", "!=") or \
                any(w not in TCP_FLAGS for w in (*mask, words[j + 1])):
            raise NftReadError(f"unknown tcp flags test: {line}")
        op, wanted = words[j], words[j + 1]
        rule.fields["protocol"] = PROTOCOLS["tcp"]
        if op == "!=":
            if sorted(mask) != sorted(("fin", "syn", "rst", "ack")) or wanted != "syn":
                raise NftReadError(f"unknown tcp flags test: {line}")
            rule.fields["tcp_not_syn"] = True
        else:
            rule.fields["tcp_flags"] = (",".join(w.upper() for w in mask), wanted.upper())
        return j + 2

    def _meter(self, words: list[str], i: int, rule: _Parsed, line: str) -> int:
        """`update @m { ip saddr limit rate over R burst N packets }` (a per-source
        hashlimit) or `add @m { ip saddr ct count over N }` (connlimit)."""
        name = words[i + 1][1:]
        found = self.sets.get(name)
        if found is None or not found.dynamic:
            raise NftReadError(f"@{name} is not a dynamic set: {line}")
        try:
            end = words.index("}", i)
        except ValueError:
            raise NftReadError(f"a set statement without its end: {line}") from None
        inner = words[i + 2:end]
        if inner[:1] != ["{"] or len(inner) < 3 or inner[1] not in ADDRESS_WORDS \
                or inner[2] != "saddr":
            raise NftReadError(f"only sets keyed on the source address are read: {line}")
        family = ADDRESS_WORDS[inner[1]]
        what = inner[3:]
        if words[i] == "update" and len(what) == 7 and what[:3] == ["limit", "rate", "over"] \
                and what[4] == "burst" and what[6] == "packets":
            rule.fields["hashlimit"] = HashLimit(what[3], int(what[5]), name, per_source=True)
        elif words[i] == "add" and len(what) == 4 and what[:3] == ["ct", "count", "over"]:
            rule.fields["connlimit"] = ConnLimit(int(what[3]), 32 if family == 4 else 128)
        else:
            raise NftReadError(f"unknown set statement: {line}")
        return end + 1

    def _numgen(self, words: list[str], i: int, rule: _Parsed, line: str) -> int:
        """`dnat ip [addr . port] to numgen inc mod N map { 0 : a [. p], ... }`."""
        with_port = words[i + 2:i + 5] == ["addr", ".", "port"]
        at = i + (5 if with_port else 2)
        if words[i + 1] not in ADDRESS_WORDS or words[at:at + 4] != ["to", "numgen", "inc",
                                                                     "mod"] \
                or not words[at + 4].isdigit() or words[at + 5:at + 7] != ["map", "{"]:
            raise NftReadError(f"unknown dnat map: {line}")
        family = ADDRESS_WORDS[words[i + 1]]
        count = int(words[at + 4])
        try:
            end = words.index("}", at + 7)
        except ValueError:
            raise NftReadError(f"a map without its end: {line}") from None
        entries = " ".join(words[at + 7:end]).split(",")
        targets: list[str] = []
        for n, entry in enumerate(e for e in entries if e.strip()):
            key, _, value = entry.partition(":")
            if key.strip() != str(n):
                raise NftReadError(f"numgen map keys must be 0..N-1 in order: {line}")
            parts = [w.strip() for w in value.split(" . ")]
            if len(parts) != (2 if with_port else 1):
                raise NftReadError(f"unknown dnat map value {value!r}: {line}")
            address = str(ipaddress.ip_address(parts[0]))
            if with_port:
                address = (f"[{address}]" if family == 6 else address) + \
                    f":{_port_range(parts[1]).low}"
            targets.append(address)
        if len(targets) != count or count < 2:
            raise NftReadError(f"numgen mod {count} with {len(targets)} targets: {line}")
        rule.target = Target.DNAT
        rule.variants = tuple(
            ({"statistic": (count - n, 0)} if n < count - 1 else {},
             (("to-destination", target),)) for n, target in enumerate(targets))
        return end + 1

    def _expression(self, words: list[str], i: int, rule: _Parsed, line: str) -> int:
        """Selectors joined by '.', then a value, `!=` value, `@set` or `vmap @map`."""
        selectors: list[str] = []
        while True:
            word = words[i]
            if word in ("iifname", "oifname"):
                selectors.append(word)
                i += 1
            elif word in ("ip", "ip6", "tcp", "udp", "th", "meta") and i + 1 < len(words):
                selectors.append(f"{word} {words[i + 1]}")
                i += 2
            else:
                raise NftReadError(f"unknown expression at {word!r}: {line}")
            if i < len(words) and words[i] == ".":
                i += 1
                continue
            break
        for selector in selectors:
            if selector.split()[-1] not in SELECTORS:
                raise NftReadError(f"unknown selector {selector}: {line}")
        if i >= len(words):
            raise NftReadError(f"expression without a value: {line}")
        negated = words[i] == "!="
        if negated:
            i += 1
        if words[i] == "vmap":
            if negated or not words[i + 1].startswith("@"):
                raise NftReadError(f"only named verdict maps are read: {line}")
            rule.lookup = (tuple(selectors), words[i + 1][1:], True)
            return i + 2
        value = words[i]
        i += 1
        if value == "{":
            end = words.index("}", i)
            values = [w.rstrip(",") for w in words[i:end] if w.rstrip(",")]
            i = end + 1
        else:
            values = [value]
        if len(selectors) > 1 or (value.startswith("@") and self._set_is_lookup(
                value[1:], selectors)):
            if negated or not value.startswith("@"):
                raise NftReadError(f"only named sets of concatenations are read: {line}")
            rule.lookup = (tuple(selectors), value[1:], False)
            return i
        self._apply(rule.fields, selectors[0], values, negated, line)
        return i

    def _set_is_lookup(self, name: str, selectors: list[str]) -> bool:
        """A set of ports is expanded into the rule's port list; only addresses stay sets."""
        found = self.sets.get(name)
        if found is None:
            raise NftReadError(f"unknown set @{name}")
        return selectors[0].split()[-1] not in ("saddr", "daddr", "dport")

    def _apply(self, fields: dict[str, object], selector: str, values: Sequence[str],
               negated: bool, line: str) -> None:
        kind = selector.split()[-1]
        if kind in ("iifname", "oifname"):
            if negated or len(values) != 1:
                raise NftReadError(f"one device only: {line}")
            fields["in_device" if kind == "iifname" else "out_device"] = values[0]
        elif kind in ("saddr", "daddr"):
            side = "source" if kind == "saddr" else "destination"
            if values[0].startswith("@"):
                name = values[0][1:]
                if name not in self.sets:
                    raise NftReadError(f"unknown set @{name}: {line}")
                fields[side] = AddressMatch((), name, negated)
            else:
                fields[side] = AddressMatch(tuple(_blocks(v) for v in values), None, negated)
        elif kind == "dport":
            if negated:
                raise NftReadError(f"a negated port list: {line}")
            word = selector.split()[0]
            if word in ("tcp", "udp"):
                fields["protocol"] = PROTOCOLS[word]
            if values[0].startswith("@"):
                found = self.sets.get(values[0][1:])
                if found is None:
                    raise NftReadError(f"unknown set {values[0]}: {line}")
                values = [v[0] for v, _ in found.elements]
            fields["dports"] = tuple(_port_range(v) for v in values)
        elif kind == "l4proto":
            if negated or len(values) != 1:
                raise NftReadError(f"one protocol only: {line}")
            fields["protocol"] = _protocol(values[0])
        else:
            raise NftReadError(f"unknown selector {selector}: {line}")

    # -- lowered rules -----------------------------------------------------------------
    def _element_fields(self, name: str, selectors: tuple[str, ...]) -> list[dict[str, object]]:
        """Each element of set NAME as the fields its values set (read once per set)."""
        key = (name, selectors)
        found = self.element_memo.get(key)
        if found is None:
            found = []
            for values, _ in self.sets[name].elements:
                fields: dict[str, object] = {}
                for selector, value in zip(selectors, values, strict=True):
                    self._apply(fields, selector, [value], False, f"@{name}")
                found.append(fields)
            self.element_memo[key] = found
        return found

    def _disjoint(self, name: str, selectors: tuple[str, ...]) -> None:
        """A verdict map's elements must not overlap: which of two overlapping elements
        the kernel finds is not defined (it accepts them), so one rule per element would
        be a guess. Checked once per map, by a sweep over one field's intervals."""
        if (name, selectors) in self.disjoint_maps:
            return
        boxes: list[tuple[tuple[int, int], ...]] = []
        for fields in self._element_fields(name, selectors):
            box: list[tuple[int, int]] = []
            for selector in selectors:
                kind = selector.split()[-1]
                if kind in ("iifname", "oifname"):
                    device = str(fields["in_device" if kind == "iifname" else "out_device"])
                    value = int.from_bytes(device.encode()[:16].ljust(16, b"\0"), "big")
                    box.append((value, value))
                elif kind in ("saddr", "daddr"):
                    side = fields["source" if kind == "saddr" else "destination"]
                    assert isinstance(side, AddressMatch)
                    net = ipaddress.ip_network(side.cidrs[0])
                    box.append((int(net.network_address), int(net.broadcast_address)))
                elif kind == "dport":
                    ports = fields["dports"]
                    assert isinstance(ports, tuple)
                    box.append((ports[0].low, ports[0].high))
                else:  # l4proto
                    protocol = fields["protocol"]
                    assert isinstance(protocol, int)
                    box.append((protocol, protocol))
            boxes.append(tuple(box))
        # sweep on the field with the most distinct starts (the fewest boxes open at once)
        axis = max(range(len(selectors)), key=lambda k: len({b[k][0] for b in boxes}))
        open_: list[tuple[tuple[int, int], ...]] = []
        for box in sorted(boxes, key=lambda b: b[axis]):
            open_ = [o for o in open_ if o[axis][1] >= box[axis][0]]
            for other in open_:
                if all(x[0] <= y[1] and y[0] <= x[1] for x, y in zip(box, other, strict=True)):
                    raise NftReadError(f"@{name}: overlapping elements in a verdict map")
            open_.append(box)
        self.disjoint_maps.add((name, selectors))

    def _jumps(self, rule: _Parsed) -> list[tuple[str, dict[str, object]]]:
        """(chain, the fields of the packets sent there) for each jump RULE makes."""
        if rule.lookup is not None and rule.lookup[2]:
            selectors, name, _ = rule.lookup
            found = self.sets.get(name)
            if found is None or len(found.key) != len(selectors):
                return []  # expanded() says what is wrong
            out = []
            for verdict, fields in zip(found.verdicts,
                                       self._element_fields(name, selectors), strict=True):
                words = verdict.split()
                if words[0] == "jump":
                    out.append((words[1], {**rule.fields, **fields}))
            return out
        if type(rule.target) is str:
            return [(rule.target, rule.fields)]
        return []

    def _given_protocols(self) -> None:
        """A port test without a protocol, `th dport` (the renderer writes it in a chain
        that only packets of one protocol reach, saving the `meta l4proto` test), gets
        the protocol of the chain's packets: read from the jumps to the chain, each
        testing the protocol itself (`meta l4proto vmap`) or coming from a chain where it
        is known. A chain starts unknown and becomes known only once every jump to it
        agrees, so a cycle or a chain nobody jumps to stays unknown; a `th dport`
        without a protocol there is refused (it would match every protocol's ports).
        The renderer decides what a chain knows the same way (fwc.backend.render.nftables,
        `entry_matches`): a new kind of jump updates both."""
        callers: dict[str, list[tuple[str, dict[str, object]]]] = {}
        for name, (_, parsed) in self.chains.items():
            for rule in parsed:
                for target, fields in self._jumps(rule):
                    callers.setdefault(target, []).append((name, fields))
        known: dict[str, object] = {}
        grew = True
        while grew:
            grew = False
            for name, (hook, _) in self.chains.items():
                if hook is not None or name not in callers or name in known:
                    continue
                values = {fields.get("protocol", known.get(caller))
                          for caller, fields in callers[name]}
                value = values.pop() if len(values) == 1 else None
                if isinstance(value, int):
                    known[name] = value
                    grew = True
        for name, (_, parsed) in self.chains.items():
            for rule in parsed:
                if "protocol" in rule.fields or not (
                        "dports" in rule.fields or
                        (rule.lookup is not None and "th dport" in rule.lookup[0])):
                    continue
                if name not in known:
                    raise NftReadError(f"chain {name}: ports without a protocol, and the "
                                       f"chain's packets are not all of one ({rule.comment})")
                rule.fields["protocol"] = known[name]

    def _envelopes(self) -> dict[str, list[tuple[int, PortRange]]]:
        """User chains that only packets of some destination ports reach: every jump to
        one tests a protocol and port ranges (a port dispatch's buckets). Such a chain may
        look up a set shared by several buckets (the renderer shares one set across the
        bucket chains of a dispatch): an element whose port is out of the chain's
        envelope can never match there, and `expanded` leaves it out. Exact, not an
        assumption: the envelope is read from the jumps themselves."""
        out: dict[str, list[tuple[int, PortRange]] | None] = {}
        for _, parsed in self.chains.values():
            for rule in parsed:
                for target, fields in self._jumps(rule):
                    protocol, ports = fields.get("protocol"), fields.get("dports")
                    if not isinstance(protocol, int) or not isinstance(ports, tuple) \
                            or not ports or out.get(target, []) is None:
                        out[target] = None
                        continue
                    got = out.setdefault(target, [])
                    assert got is not None
                    got.extend((protocol, p) for p in ports)
        return {name: ranges for name, ranges in out.items() if ranges is not None}

    def expanded(self, rule: _Parsed, table: TableName, never_returns: frozenset[str],
                 envelope: list[tuple[int, PortRange]] | None = None) -> list[Rule]:
        make = NatRule if table is TableName.NAT else FilterRule
        if rule.target is None and (rule.lookup is None or not rule.lookup[2]):
            raise NftReadError(f"a rule without a verdict ({rule.comment})")
        base = dict(rule.fields)
        if rule.variants:
            if rule.lookup is not None:
                raise NftReadError(f"a numgen map in a set lookup ({rule.comment})")
            return [make(Match(**base, **extra), rule.target, Origin("nft", rule.comment),  # type: ignore[arg-type]
                         options) for extra, options in rule.variants]
        if rule.lookup is None:
            return [make(Match(**base), rule.target, Origin("nft", rule.comment),  # type: ignore[arg-type]
                         rule.options)]
        selectors, name, is_map = rule.lookup
        found = self.sets.get(name)
        if found is None:
            raise NftReadError(f"unknown set @{name}")
        if len(found.key) != len(selectors):
            raise NftReadError(f"@{name} has {len(found.key)} fields, the rule {len(selectors)}")
        if not is_map and not (rule.target in VERDICTS
                               or rule.target in never_returns):
            raise NftReadError(f"@{name}: a set lookup that jumps to a chain that may return "
                               "is not one rule per element")
        out: list[Rule] = []
        every = self._element_fields(name, selectors)
        if is_map:
            self._disjoint(name, selectors)
        for index, (_, comment) in enumerate(found.elements):
            fields = {**base, **every[index]}
            ports = fields.get("dports")
            if envelope is not None and isinstance(ports, tuple) and ports and not any(
                    protocol == fields.get("protocol") and bucket.low <= port.high and
                    port.low <= bucket.high for port in ports for protocol, bucket in envelope):
                continue  # no packet reaching this chain has this port (`_envelopes`)
            target: object = rule.target
            options = rule.options
            if is_map:
                verdict = found.verdicts[index].split()
                target = verdict[1] if verdict[0] == "jump" else Target(verdict[0].upper())
                options = ()
            out.append(make(Match(**fields), target, Origin("nft", comment or rule.comment),  # type: ignore[arg-type]
                            options))
        return out

    def rules(self) -> NftRules:
        tables: dict[int, dict[TableName, list[Chain]]] = {4: {}, 6: {}}
        costs: dict[int, dict[TableName, dict[str, tuple[int, ...]]]] = {4: {}, 6: {}}
        by_table: dict[TableName, list[str]] = {}
        for name, (hook, _) in self.chains.items():
            word = name.split("-", 1)[0]
            try:
                table = TableName(word)
            except ValueError:
                raise NftReadError(f"chain {name}: no table {word}") from None
            if hook is not None:
                kind = "nat" if table is TableName.NAT else "filter"
                own = f"{word}-{hook[1].upper()}"
                if hook[0] != kind or name not in (own, *(
                        [own + NOTRACK_SUFFIX] if table is TableName.RAW else [])):
                    raise NftReadError(f"chain {name}: hook {hook[1]} of type {hook[0]}")
            by_table.setdefault(table, []).append(name)
        for names in by_table.values():
            # the notrack base chain of a hook runs first (priority raw)
            names.sort(key=lambda n: not n.endswith(NOTRACK_SUFFIX)
                       or self.chains[n][0] is None)
        self._given_protocols()
        envelopes = self._envelopes()
        for table, names in by_table.items():
            # A user chain that ends in an unconditional verdict (or a jump to such a
            # chain) and never returns early: before it, only logs and marks.
            never: set[str] = set()
            grew = True
            while grew:
                grew = False
                for name in names:
                    hook, parsed = self.chains[name]
                    if name in never or hook is not None or not parsed:
                        continue
                    last = parsed[-1]
                    if not last.fields and last.lookup is None and not last.variants and (
                            last.target in VERDICTS
                            or last.target in never) and all(
                            p.target in (Target.LOG, Target.NFLOG, Target.CONNMARK)
                            for p in parsed[:-1]):
                        never.add(name)
                        grew = True
            for family in (4, 6):
                chains: dict[str, Chain] = {}
                weights_of: dict[str, tuple[int, ...]] = {}
                for name in names:
                    hook, parsed = self.chains[name]
                    lowered: list[Rule] = []
                    weights: list[int] = []
                    for rule in parsed:
                        if rule.family is not None and rule.family != family:
                            continue
                        got = self.expanded(rule, table, frozenset(never),
                                            envelopes.get(name))
                        lowered += got
                        weights += [1] + [0] * (len(got) - 1) if got else []
                    chain_name = BuiltinChain(hook[1].upper()) if hook is not None else name
                    policy = Target(hook[2].upper()) if hook is not None else None
                    earlier = chains.get(chain_name)
                    if earlier is not None:
                        # the hook's second base chain (after its notrack one)
                        if earlier.policy is not policy or policy is not Target.ACCEPT:
                            raise NftReadError(f"chain {name}: two base chains of "
                                               f"{chain_name} that decide")
                        lowered = [*earlier.rules, *lowered]
                        weights = [*weights_of[chain_name], *weights]
                    chains[chain_name] = Chain(chain_name, policy, tuple(lowered))
                    weights_of[chain_name] = tuple(weights)
                # A family's ruleset holds the chains its hooks reach (the other family's
                # chains test the other family's addresses).
                reached = [n for n, c in chains.items() if c.builtin]
                seen = set(reached)
                while reached:
                    for rule in chains[reached.pop()].rules:
                        if type(rule.target) is str and rule.target not in seen:
                            if rule.target not in chains:
                                raise NftReadError(f"jump to unknown chain {rule.target}")
                            seen.add(rule.target)
                            reached.append(rule.target)
                tables[family][table] = [c for n, c in chains.items() if n in seen]
                costs[family][table] = {n: w for n, w in weights_of.items() if n in seen}
        address_sets = {name: tuple(_blocks(v[0]) for v, _ in s.elements)
                        for name, s in self.sets.items()
                        if len(s.key) == 1 and s.key[0] in ("ipv4_addr", "ipv6_addr")
                        and not s.verdicts and not s.dynamic}
        rulesets = {family: NodeRuleset("", "", family, tuple(
            Table(name, tuple(chains)) for name, chains in per_table.items()))
            for family, per_table in tables.items()}
        return NftRules(rulesets, address_sets, costs)


def read(text: str) -> NftRules:
    """The nft file as lowered rulesets (raises NftReadError on anything it cannot read)."""
    reader = _Reader(text)
    reader.read()
    return reader.rules()


def evaluations(rules: NftRules, family: int, packets: Iterable[Packet]) -> tuple[int, float]:
    """(worst, mean) nft rules evaluated by PACKETS in the filter table, a lookup counting 1."""
    evaluator = rules.evaluator(family)
    counts = [evaluator.decide(p).traversed for p in packets]
    if not counts:
        return 0, 0.0
    return max(counts), sum(counts) / len(counts)
