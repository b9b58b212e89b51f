"""Lowered rulesets -> one `nft -f` file per member: the table `inet fwc`, and nothing else.

The file first creates the table empty (a no-op when it exists), deletes it and
declares it whole again: `nft -f` runs the three in one transaction, so the node
switches from the old table to the new one atomically, and the tables of other
programs (container runtimes, libvirt, fail2ban) are never touched. Never
`flush ruleset`.

The decisions stay the compiler's: the IPv4 and IPv6 rulesets after the speed
passes of `fwc.backend.arrange.optimise` (the ones the iptables target writes,
with port buckets clipped to their range) are written rule for rule, each
family's chains under their own names (`filter-FORWARD-v4`), and one base chain
per netfilter hook dispatches on `meta nfproto` to them. So every rule, RETURN
and policy keeps the meaning it has in iptables. Both families are always
written, as with iptables (ip6tables.rules for every member): a family the
cluster has no address of still reaches the node's own services, and its
lowered ruleset drops that.

What nftables adds, each an exact rewrite of the rules it replaces (the nft
reader in `fwc.analysis.nftread` expands them back, and tests/test_nft_equivalence.py
proves the two outputs decide every sampled packet alike):

- a run of jumps that each test one distinct value (the input or output device,
  the protocol, a destination-port bucket: arrange's jump ladders) becomes one
  lookup in a named verdict map (`iifname vmap @...`);
- rules that differ only in devices, addresses, ports and verdict become one
  lookup in a verdict map keyed on them (`iifname . oifname . ip saddr ... vmap
  @CHAIN-rulesN`, the devices only while the key fits nft's 64 bytes of registers;
  each element a rule, with its comment and its own counter; the elements of exact
  keys, host addresses and single ports, in a map of their own without `flags
  interval`, a hash table the kernel fills cheaply); rejecting rules
  share a set per target (`... @CHAIN-rulesN reject ...`). A logged rule (LOG line
  and verdict) joins them as a jump to a chain of the two (`fold_logs`), and the
  bucket chains of one port dispatch share their maps (`_bucket_sharing`): fewer
  sets load faster, as the kernel finds each set by name in a list;
- inside a chain that only packets of one input device or one protocol reach
  (below arrange's dispatch on them, `entry_matches`), a rule does not test
  that device again, and its ports are `th dport` without the protocol test
  (`drop_known_devices`, `_protocol`): fewer kernel expressions to load;
- every address or port list of more than one element is a named set with
  `flags interval`, one per distinct content and shared by every rule naming it.
  No anonymous sets: the kernel creates and looks them up in time that grows
  with the square of their number (minutes for tens of thousands), a named set
  once.

Every set and map is named by its content or its place (fwc.backend.render.nftnames),
never counted over the file: users review the diff of output/, and one map more
renumbered every map after it (issue 12).

The rule vocabulary, statement for statement (docs/compile.md): a rule's rate
limit is a named `limit` object (`rate over`, one per hashlimit name and family),
per source a dynamic set (`update @s { ip saddr limit rate over ... }`); a
connection limit `add @s { ip saddr ct count over N }`; `notrack` a base chain per
hook at priority raw (`_hook_parts`); TCPMSS `tcp option maxseg size set N|rt mtu`;
DNAT load sharing one `numgen inc mod N` map (`Share`).

Every rule counts (`counter`) and carries its policy line as the comment.
"""

from __future__ import annotations

import bisect
import functools
import ipaddress
import itertools
import operator
import re
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any, TypeVar, cast

from fwc import protocols as proto
from fwc.backend.arrange import halved
from fwc.backend.files import GeneratedFile, Reload, path_of
from fwc.backend.ipsets import IpSet
from fwc.backend.lower.failsafe import failsafe
from fwc.backend.lower.ruleset import (
    VERDICTS,
    AddressMatch,
    Chain,
    FilterRule,
    Match,
    NatRule,
    NodeRuleset,
    Rule,
    Table,
    never_returning,
)
from fwc.backend.render import escape
from fwc.backend.render.context import MemberBuild
from fwc.backend.render.nftnames import Calls, Journal, Names, NftUnsupported, Writer
from fwc.backend.render.nftplan import (
    MIN_CONCAT,
    PROTOCOL_WORDS,
    Concat,
    Dispatch,
    Item,
    Shapes,
    Share,
    plan,
    shared,
)
from fwc.model import Memo, PortRange
from fwc.model.records import dataclass, replacer
from fwc.model.vocabulary import BuiltinChain, Target
from fwc.model.vocabulary import Table as TableName

T = TypeVar("T")
# Nothing yet, equal to no value: a `_Previous` before its first computation, a field's
# agreement in `entry_matches` before its first caller.
_UNSEEN = object()
TABLE = "fwc"
TCP = proto.IP_PROTOCOLS["tcp"]
UDP = proto.IP_PROTOCOLS["udp"]
ICMP = proto.IP_PROTOCOLS["icmp"]
ICMPV6 = proto.IP_PROTOCOLS["icmpv6"]
FAMILY_WORDS = {4: ("ip", "ipv4"), 6: ("ip6", "ipv6")}

# (chain type, priority) per iptables table. The helpers of the raw table are set
# with `ct helper set`, which needs the conntrack entry: after conntrack (-200),
# still before DNAT (-100) as the raw table is, so the helper sees the same packet.
TABLE_HOOKS = {
    TableName.RAW: ("filter", "-150"),
    TableName.MANGLE: ("filter", "-150"),
    TableName.NAT: ("nat", None),
    TableName.FILTER: ("filter", "0"),
}
# The nat priorities iptables' nat chains have (dstnat -100, srcnat 100).
NAT_PRIORITIES = {
    BuiltinChain.PREROUTING: "-100",
    BuiltinChain.INPUT: "100",
    BuiltinChain.OUTPUT: "-100",
    BuiltinChain.POSTROUTING: "100",
}
CHAIN_ORDER = tuple(BuiltinChain)
# Where the raw table's `notrack` rules go: a base chain of their own per hook, at
# priority raw (-300), before conntrack (-200) sees the packet; the helper rules stay
# at TABLE_HOOKS' -150 (`ct helper set` needs the conntrack entry).
NOTRACK_PRIORITY = "raw"
NOTRACK_SUFFIX = "notrack"
# Per-source rate buckets and connection counts live in dynamic sets keyed on the
# source address: as many sources as hashlimit keeps by default, each forgotten when
# it has sent nothing for hashlimit's default expiry (--hashlimit-htable-expire 10 s).
METER_SIZE = 65536
METER_TIMEOUT = "10s"
# `--tcp-flags MASK SET` as nft's `tcp flags & (mask) == set`.
TCP_FLAG_WORDS = ("fin", "syn", "rst", "psh", "ack", "urg", "ecn", "cwr")
STATES = {"INVALID": "invalid", "NEW": "new", "RELATED": "related",
          "ESTABLISHED": "established", "UNTRACKED": "untracked"}
REJECTS = {
    proto.REJECT_TCP: "reject with tcp reset",
    proto.REJECT_OTHER[4]: "reject with icmp type port-unreachable",
    proto.REJECT_OTHER[6]: "reject with icmpv6 type port-unreachable",
    # `reject ... with TYPE` (protocols.REJECT_TYPES)
    "icmp-host-unreachable": "reject with icmp type host-unreachable",
    "icmp6-addr-unreachable": "reject with icmpv6 type addr-unreachable",
    "icmp-net-unreachable": "reject with icmp type net-unreachable",
    "icmp6-no-route": "reject with icmpv6 type no-route",
    "icmp-admin-prohibited": "reject with icmp type admin-prohibited",
    "icmp6-adm-prohibited": "reject with icmpv6 type admin-prohibited",
}
# `--log-level N` as nft's `log level` names it.
LOG_LEVELS = ("emerg", "alert", "crit", "err", "warn", "notice", "info", "debug")
MARK_BITS = 0xFFFFFFFF
# The verdict-map keys: what a dispatch rule tests, and the map's key type.
DISPATCH_TYPES = {"iifname": "ifname", "oifname": "ifname", "meta l4proto": "inet_proto",
                  "dport": "inet_service"}
SET_REFERENCE = re.compile(r"@([A-Za-z][A-Za-z0-9_.-]*)")  # a rule naming a set or map


def _planned(rules: tuple[Rule, ...], shapes: Shapes | None, min_concat: int) \
        -> tuple[Item, ...]:
    return tuple(shared(plan(rules, shapes, min_concat)))


def _outside(references: tuple[frozenset[str], tuple[str, ...]], shapes: Shapes | None,
             ipsets: dict[str, tuple[str, ...]], memo: Memo | None = None) -> object:
    """All that planning rules with SHAPES reads besides them (REFERENCES: theirs,
    `_references`): which chains they jump to never return (verdict maps), and the
    addresses of the sets they name (disjointness); None without shapes (nothing is
    joined)."""
    if shapes is None:
        return None
    targets, named = references
    return (_one_of(memo, targets & shapes.never_return),
            tuple((name, ipsets.get(name)) for name in named))


def _references(rules: tuple[Rule, ...], memo: Memo | None = None) \
        -> tuple[frozenset[str], tuple[str, ...]]:
    """The chains RULES jump to (`_one_of` the run's sets), and the sets they name
    (sorted)."""
    targets = _one_of(memo, frozenset(r.target for r in rules if type(r.target) is str))
    named = {name for r in rules for name in (r.match.source.set_name,
                                                r.match.destination.set_name) if name}
    return targets, tuple(sorted(named))


def _referenced(memo: Memo | None, where: tuple[object, ...], rules: tuple[Rule, ...]) \
        -> tuple[frozenset[str], tuple[str, ...]]:
    """`_references` of RULES, the chain at WHERE (its file, family, table and name, and
    for the plan its variant, for the fold a mark of its own), as the previous member
    found them when its chain there had the same rules (`_reused`)."""
    return _reused(memo, (REFS_MEMO, *where), rules,
                   functools.partial(_references, rules, memo))


def _share(item: Share, family: int, writer: Names, chain_names: dict[str, str],
           ipsets: dict[str, tuple[str, ...]]) -> str:
    """`dnat ip to numgen inc mod N map { 0 : a, ... }` (with ports: `addr . port`)."""
    word = FAMILY_WORDS[family][0]
    pairs: list[tuple[str, str | None]] = []
    for text in item.targets:
        if family == 6 and text.startswith("["):
            address, _, port = text[1:].partition("]:")
            pairs.append((address, port))
        elif family == 4 and ":" in text:
            address, _, port = text.partition(":")
            pairs.append((address, port))
        else:
            pairs.append((text, None))
    with_port = {port is not None for _, port in pairs}
    if len(with_port) != 1 or any("-" in a or (p is not None and not p.isdigit())
                                  for a, p in pairs):
        raise NftUnsupported("dnat load sharing to ranges, or with and without a port")
    if True in with_port and item.rule.match.protocol is None:
        raise NftUnsupported("dnat load sharing to ports without a protocol")
    for address, _ in pairs:
        ipaddress.ip_address(address)  # an address, nothing else reaches the file
    values = [escape.line_text(a if p is None else f"{a} . {p}") for a, p in pairs]
    elements = ", ".join(f"{n} : {v}" for n, v in enumerate(values))
    what = "addr . port " if True in with_port else ""
    statement = f"dnat {word} {what}to numgen inc mod {len(values)} map {{ {elements} }}"
    return _rule(item.rule, family, writer, chain_names, ipsets, statement=statement)


DEVICE_FIELDS = ("in_device", "out_device")
ENTRY_FIELDS = (*DEVICE_FIELDS, "protocol")
_PROTOCOL_AT = ENTRY_FIELDS.index("protocol")
_ENTRY_OF = operator.attrgetter(*ENTRY_FIELDS)  # what a match tests of them: its Entry
Entry = tuple[object, ...]  # a chain's (input device, output device, protocol), None: any


def entry_matches(table: Table) -> dict[str, Entry]:
    """User chain -> the (input device, output device, protocol) every packet entering
    it has, each None where that is not one known value. A chain's value is known when
    every jump to it tests that value itself or comes from a chain where it is known
    (arrange's dispatch on the input device, `-i eth1 -j fwd-dmz`, then on the
    protocol, and every chain below them). Sound by construction: a chain starts
    unknown and becomes known only once all its callers agree, so a chain nobody jumps
    to, or a cycle, stays unknown. The nft reader finds a chain's protocol the same way
    (fwc.analysis.nftread, `_given_protocols`): a new kind of jump updates both."""
    # per chain jumped to: the calling chain and the jump's match (what it tests itself),
    # in rule order, flat: [caller, match, caller, match, ...]. A tuple per jump was the
    # compile's peak of memory at 100,000 rules.
    callers: dict[str, list[Any]] = {}
    for chain in table.chains:
        for rule in chain.rules:
            if type(rule.target) is str:
                calls = callers.get(rule.target)
                if calls is None:
                    callers[rule.target] = [chain.name, rule.match]
                else:
                    calls += (chain.name, rule.match)
    unknown: Entry = (None,) * len(ENTRY_FIELDS)
    known: dict[str, Entry] = {}
    # Each field of a chain's value, once known, never changes (all its callers agreed
    # on that known value, which never changes either), so the rounds reach the same
    # values in any order: the chains in the order the jumps from the built-in chains
    # reach them (callers before the chains below them), then any other; rounds over the
    # table in its own order took one per level of arrange's tree.
    users = {c.name for c in table.chains if not c.builtin}
    below: dict[str, list[str]] = {}
    for target, calls in callers.items():
        if target in users:  # (a jump to a chain not in the table gets no value)
            for caller in calls[::2]:
                below.setdefault(caller, []).append(target)
    order = [c.name for c in table.chains if c.builtin]
    reached = set(order)
    for name in order:  # grows while it is walked: a breadth-first walk
        for target in below.get(name, ()):
            if target not in reached:
                reached.add(target)
                order.append(target)
    order += (c.name for c in table.chains if c.name not in reached)
    entered = [(name, callers[name]) for name in order if name in users and name in callers]
    grew = True
    while grew:  # rounds over the chains, until a round changes nothing
        grew = False
        for name, calls in entered:
            if len(calls) == 2:  # most chains: one jump, from their dispatch
                caller, m = calls
                own = _ENTRY_OF(m)
                given = known.get(caller, unknown)
                now = tuple(own[at] if own[at] is not None else given[at]
                            for at in range(len(ENTRY_FIELDS)))
            else:  # the one known value all callers agree on, else None (unknown)
                got: list[object] = []
                for at, field_name in enumerate(ENTRY_FIELDS):
                    agreed: object = _UNSEEN
                    for caller, m in zip(calls[::2], calls[1::2], strict=True):
                        value = getattr(m, field_name)
                        if value is None:
                            value = known.get(caller, unknown)[at]
                        if value is None or (agreed is not _UNSEEN and value != agreed):
                            agreed = None  # one unknown or two values: unknown
                            break
                        agreed = value
                    got.append(agreed)
                now = tuple(got)
            if now != known.get(name, unknown):
                known[name] = now
                grew = True
    return known


def drop_known_devices(table: Table, memo: Memo | None = None, scope: object = None,
                       known: dict[str, Entry] | None = None) -> Table:
    """Each rule's test of a device its chain's packets all have (`entry_matches`)
    dropped: `iifname "eth1"` inside the chains reached only through the input-device
    dispatch on eth1. Exact: in that chain the test is true for every packet. Each test
    is two kernel expressions and parser work, and a rule map of such a chain keys on
    one device less (rules that differed only in naming it now share a map).
    MEMO (the cluster's per-run memo; SCOPE the file and family): a chain the previous
    member had, with the same devices, gets that member's result (`_reused`). KNOWN:
    `entry_matches(table)`, when the caller has it."""
    if known is None:
        known = entry_matches(table)
    chains: list[Chain] = []
    for chain in table.chains:
        devices = known.get(chain.name, (None, None))[:len(DEVICE_FIELDS)]
        if devices == (None, None):
            chains.append(chain)
            continue
        chains.append(_reused(memo, (DEVICES_MEMO, scope, table.name, chain.name),
                              (chain, devices), functools.partial(_without, chain, devices)))
    return replace(table, chains=tuple(chains))


def _without(chain: Chain, devices: tuple[object, ...]) -> Chain:
    """CHAIN with each rule's test of DEVICES (in, out; None: not known) dropped."""
    rules: list[Rule] = []
    known_in, known_out = devices
    for rule in chain.rules:
        m = rule.match
        drop_in = known_in is not None and m.in_device == known_in
        drop_out = known_out is not None and m.out_device == known_out
        if drop_in or drop_out:
            m = _WITHOUT_IN_OUT(m, None, None) if drop_in and drop_out else \
                _WITHOUT_IN_OUT(m, None, m.out_device) if drop_in else \
                _WITHOUT_IN_OUT(m, m.in_device, None)
            rule = _WITH_MATCH[type(rule)](rule, m)
        rules.append(rule)
    return replace(chain, rules=tuple(rules))


def entries_after_fold(known: dict[str, Entry], folded: dict[str, tuple[Rule, Rule]]) \
        -> dict[str, Entry]:
    """`entry_matches` of a table after `drop_known_devices` and `fold_logs`, from KNOWN
    (its value before both) and the log chains FOLDED made. A folded pair's jump tests
    what its verdict rule tested, to a chain whose only rule that jumps on tests nothing:
    the chains there before keep their values, and each log chain gets the one jump to
    it: its own tests, else its chain's value. The protocols are exact always (the drop
    touches no protocol test, and each field is worked out on its own); the devices when
    no jumps form a cycle (arrange's tables never do), since a dropped device test was the
    value its chain's packets all have, but a cycle that only its own dropped tests held
    to one device is unknown in `entry_matches`. The renderer reads the protocols only."""
    unknown: Entry = (None,) * len(ENTRY_FIELDS)
    out = dict(known)
    for name, (_, verdict) in folded.items():
        caller = known.get(name.rpartition(LOG_CHAIN)[0], unknown)
        m = verdict.match
        own = (m.in_device, m.out_device, m.protocol)
        value = tuple(own[at] if own[at] is not None else caller[at]
                      for at in range(len(ENTRY_FIELDS)))
        if value != unknown:
            out[name] = value
    return out


_WITHOUT_IN_OUT = replacer(Match, *DEVICE_FIELDS)
_WITH_MATCH = {cls: replacer(cls, "match") for cls in (FilterRule, NatRule)}


# Keys of the cluster's per-run memo (fwc.model.Memo) this renderer uses: per chain,
# the previous member's results (`_reused`); per run, results of cidrs alone.
DEVICES_MEMO = "nft devices"
FOLD_MEMO = "nft fold"
ELEMENTS_MEMO = "nft elements"
PLAN_MEMO = "nft plan"
TEXTS_MEMO = "nft texts"
SHARING_MEMO = "nft sharing"
REFS_MEMO = "nft references"
REUSED_KINDS = (DEVICES_MEMO, FOLD_MEMO, PLAN_MEMO, ELEMENTS_MEMO, TEXTS_MEMO, SHARING_MEMO,
                REFS_MEMO)
BLOCKS_MEMO = ("nft blocks",)
COLLAPSED_MEMO = ("nft collapsed",)
CHAIN_SETS_MEMO = ("nft chain sets",)


def _one_of(memo: Memo | None, chains: frozenset[str]) -> frozenset[str]:
    """CHAINS, or the equal set of chain names met before in this run: the reuse entries
    of every chain keep one (most of them `{fwc-accept}` or none: 1,257 distinct among
    9,744 at interfaces 20k)."""
    if memo is None:
        return chains
    return memo.get(CHAIN_SETS_MEMO, dict).setdefault(chains, chains)


class _Previous:
    """What the previous member's file computed from one chain, and from what (`given`
    is `_UNSEEN`, equal to nothing, until a member computed it)."""

    __slots__ = ("given", "value")

    def __init__(self) -> None:
        self.given: object = _UNSEEN
        self.value: Any = None


def _reused(memo: Memo | None, key: tuple[object, ...], given: object,
            compute: Callable[[], T]) -> T:
    """COMPUTE(), or what it gave for the cluster's previous member when GIVEN (all that
    COMPUTE reads) is equal. Members mostly share their arranged chains, the very
    objects (`fwc.backend.arrange`), so the comparison costs little and the second
    member's file is not planned again: same input, same items, same bytes."""
    if memo is None:
        return compute()
    previous = memo.get(key, _Previous)
    if previous.given == given:
        return cast("T", previous.value)
    previous.given, previous.value = given, compute()
    return cast("T", previous.value)


# The chain of one logged rule (`fold_logs`): the name of the chain the rule is in, this,
# and a number counting the folds of that chain. Named per chain, not per table, so a
# chain the members share folds to the same names on each (and a rule inserted in one
# chain renames no other chain's); no chain fwc makes has a dot in its name otherwise.
LOG_CHAIN = ".log"


def fold_logs(table: Table, memo: Memo | None = None, scope: object = None) \
        -> tuple[Table, dict[str, tuple[Rule, Rule]]]:
    """Each LOG (or NFLOG) rule followed by its verdict rule, with the same match but the
    log's own rate limit, as one jump to a chain of their own: [the log with its limit,
    the verdict]. Exact: the chain runs the same two statements for the same packets
    (and keeps the rule's own limit bucket), and never returns. The jump is a verdict,
    so the logged rule joins its neighbours' verdict map instead of splitting them.
    Returns the table and each new chain's (log, verdict) pair (`unfold_logs`).
    MEMO (the cluster's per-run memo; SCOPE the file and family): a chain the previous
    member had is folded as it was there (`_reused`)."""
    if table.name is not TableName.FILTER:
        return table, {}
    never = never_returning(table.chains)
    # names a fold may not take (`_folded`): only a chain named with a dot could hold one
    dotted = frozenset(c.name for c in table.chains if "." in c.name)
    chains: list[Chain] = []
    extra: list[Chain] = []
    pairs: dict[str, tuple[Rule, Rule]] = {}
    for chain in table.chains:
        rules, made = _reused(memo, (FOLD_MEMO, scope, table.name, chain.name),
                              (chain.rules, _one_of(memo, _referenced(
                                  memo, (scope, "fold", table.name, chain.name),
                                  chain.rules)[0] & never), dotted),
                              functools.partial(_folded, chain, never, dotted))
        chains.append(replace(chain, rules=rules) if made else chain)
        for log_chain, pair in made:
            extra.append(log_chain)
            pairs[log_chain.name] = pair
    return (replace(table, chains=(*chains, *extra)) if extra else table), pairs


def _folded(chain: Chain, never: frozenset[str], dotted: frozenset[str]) \
        -> tuple[tuple[Rule, ...], tuple[tuple[Chain, tuple[Rule, Rule]], ...]]:
    """CHAIN's rules with each logged rule folded (`fold_logs`), and the chains made
    ([the log, with the rule's own limit and no other match; the verdict]), each with
    the two rules it replaces."""
    rules = chain.rules
    out: list[Rule] = []
    made: list[tuple[Chain, tuple[Rule, Rule]]] = []
    i = 0
    while i < len(rules):
        log = rules[i]
        after = rules[i + 1] if i + 1 < len(rules) else None
        if after is not None and isinstance(log, FilterRule) and \
                isinstance(after, FilterRule) and \
                log.target in (Target.LOG, Target.NFLOG) and \
                after.match.limit is None and \
                replace(log.match, limit=None) == after.match and \
                (after.target in VERDICTS
                 or (type(after.target) is str and after.target in never)):
            name = f"{chain.name}{LOG_CHAIN}{len(made) + 1}"
            if name not in dotted:  # (never: no chain but these has a dot in its name)
                made.append((Chain(name, None, (
                    replace(log, match=Match(limit=log.match.limit)),
                    replace(after, match=Match()))), (log, after)))
                out.append(FilterRule(after.match, name, after.origin))
                i += 2
                continue
        out.append(log)
        i += 1
    return (tuple(out), tuple(made)) if made else (rules, ())


def unfold_logs(parts: list[tuple[Chain, str | None]], planned: list[list[Item]],
                pairs: dict[str, tuple[Rule, Rule]]) \
        -> tuple[list[tuple[Chain, str | None]], list[list[Item]]]:
    """The folds that bought nothing undone: a logged rule that joined no set or map
    (nor a dispatch) is written as its two rules again, in its place (rules that join
    nothing never move), and its chain goes. Small policies read as before."""
    used = {r.target for items in planned for item in items if isinstance(item, Concat)
            for r in item.rules} | {r.target for items in planned for item in items
                                    if isinstance(item, Dispatch) for _, r in item.entries}
    out_parts: list[tuple[Chain, str | None]] = []
    out_planned: list[list[Item]] = []
    for (chain, variant), items in zip(parts, planned, strict=True):
        if chain.name in pairs and chain.name not in used:
            continue
        rules: list[Item] = []
        for item in items:
            target = item.target if isinstance(item, (FilterRule, NatRule)) else None
            if type(target) is str and target in pairs and target not in used:
                rules.extend(pairs[target])
            else:
                rules.append(item)
        out_parts.append((chain, variant))
        out_planned.append(rules)
    return out_parts, out_planned


def _address_set(family: int, cidrs: tuple[str, ...], writer: Names,
                 preferred: str | None = None) -> str:
    key_type = "ipv4_addr" if family == 4 else "ipv6_addr"
    return writer.named_set(f"fwc{family}", key_type, writer.collapsed(cidrs), preferred)


def _addresses(direction: str, match: AddressMatch, family: int, writer: Names,
               ipsets: dict[str, tuple[str, ...]]) -> str:
    if match.is_any:
        return ""
    field_ = f"{FAMILY_WORDS[family][0]} {direction}"
    op = "!= " if match.negated else ""
    if match.set_name is not None:
        addresses = writer.ipset(ipsets, match.set_name)
        if addresses is None:
            raise NftUnsupported(f"set {match.set_name} without its addresses")
        name = _address_set(family, addresses, writer, escape.nft_identifier(match.set_name))
        return f"{field_} {op}@{name}"
    cidrs = writer.collapsed(match.cidrs)
    if len(cidrs) == 1:
        return f"{field_} {op}{cidrs[0]}"
    return f"{field_} {op}@{_address_set(family, cidrs, writer)}"


def _merged_ports(ports: tuple[PortRange, ...]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for low, high in sorted((p.low, p.high) for p in ports):
        if out and low <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], high))
        else:
            out.append((low, high))
    return out


def _port_text(low: int, high: int) -> str:
    return str(low) if low == high else f"{low}-{high}"


def _ports(ports: tuple[PortRange, ...], writer: Names) -> str:
    texts = tuple(_port_text(lo, hi) for lo, hi in _merged_ports(ports))
    if len(texts) == 1:
        return texts[0]
    return "@" + writer.named_set("ports", "inet_service", texts)


def _protocol_word(protocol: int) -> str:
    return PROTOCOL_WORDS.get(protocol, str(protocol))


def _protocol(match: Match, writer: Names, known: object = None) -> list[str]:
    """The protocol part of MATCH. KNOWN is the protocol every packet of the rule's chain
    has (`entry_matches`): its ports are then `th dport` and a bare protocol test goes,
    no `meta l4proto` test (2 kernel expressions) that is true for every packet there."""
    if match.protocol is None:
        if match.dports or match.icmp_type is not None or match.tcp_not_syn:
            raise NftUnsupported("ports, ICMP types or TCP flags without a protocol")
        return []
    out: list[str] = []
    name = PROTOCOL_WORDS.get(match.protocol)
    given = name is not None and known == match.protocol
    if match.dports:
        if given:
            out.append(f"th dport {_ports(match.dports, writer)}")
        elif name is not None:
            out.append(f"{name} dport {_ports(match.dports, writer)}")
        else:
            out.append(f"meta l4proto {match.protocol} th dport "
                       f"{_ports(match.dports, writer)}")
    elif match.icmp_type is not None:
        if match.protocol not in (ICMP, ICMPV6):
            raise NftUnsupported(f"an ICMP type on protocol {match.protocol}")
        word = "icmp" if match.protocol == ICMP else "icmpv6"
        out.append(f"{word} type {match.icmp_type}")
    elif not match.tcp_not_syn and not given:
        out.append(f"meta l4proto {match.protocol}")
    if match.tcp_not_syn:
        if match.protocol != TCP:
            raise NftUnsupported("TCP flags on a protocol other than TCP")
        out.append("tcp flags & (fin | syn | rst | ack) != syn")
    return out


def _tcp_flags(flags: tuple[str, str]) -> str:
    """`--tcp-flags SYN,RST SYN` as `tcp flags & (syn | rst) == syn`."""
    mask, wanted = ([w.lower() for w in part.split(",") if w] for part in flags)
    unknown = [w for w in (*mask, *wanted) if w not in TCP_FLAG_WORDS]
    if unknown or not mask or len(wanted) != 1 or wanted[0] not in mask:
        raise NftUnsupported(f"--tcp-flags {' '.join(flags)}")
    return f"tcp flags & ({' | '.join(mask)}) == {wanted[0]}"


def _limits(match: Match, family: int, writer: Names) -> list[str]:
    """A rule's own rate and connection limits, which match beyond the limit (`over`)."""
    out: list[str] = []
    word = FAMILY_WORDS[family][0]
    if match.hashlimit is not None:
        limit = match.hashlimit
        rate = f"rate over {limit.rate} burst {limit.burst} packets"
        if limit.per_source:
            name = writer.meter(limit.name, family, True)
            out.append(f"update @{name} {{ {word} saddr limit {rate} }}")
        else:
            out.append(f'limit name "{writer.limit(limit.name, family, limit.rate, limit.burst)}"')
    if match.connlimit is not None:
        if match.connlimit.mask != (32 if family == 4 else 128):
            raise NftUnsupported(f"connlimit mask {match.connlimit.mask}")
        out.append(f"add @{writer.connlimit(family)} {{ {word} saddr ct count over "
                   f"{match.connlimit.above} }}")
    return out


def _verdict(rule: Rule, chain_names: dict[str, str]) -> str:
    """The verdict of a dispatch entry: a jump or a plain verdict (`_dispatch_key`)."""
    if rule.target is Target.ACCEPT:
        return "accept"
    if rule.target is Target.DROP:
        return "drop"
    return f"jump {chain_names[cast('str', rule.target)]}"


# The target options each statement writes: a lowered rule carrying any other one
# is refused (NftUnsupported), never written without it.
TARGET_OPTIONS: dict[Target | str, frozenset[str]] = {
    Target.REJECT: frozenset({"reject-with"}),
    Target.LOG: frozenset({"log-prefix", "log-level"}),
    Target.NFLOG: frozenset({"nflog-prefix", "nflog-group"}),
    Target.SNAT: frozenset({"to-source"}), Target.DNAT: frozenset({"to-destination"}),
    Target.CONNMARK: frozenset({"set-xmark"}), Target.CT: frozenset({"helper", "notrack"}),
    Target.TCPMSS: frozenset({"set-mss", "clamp-mss-to-pmtu"}),
}


def _statement(rule: Rule, family: int, writer: Names, chain_names: dict[str, str]) -> str:
    target = rule.target
    options: dict[str, str] = {}
    if rule.target_options:  # (most rules have none: no option can be left unwritten)
        options = dict(rule.target_options)
        unwritten = set(options) - TARGET_OPTIONS.get(target, frozenset())
        if unwritten:
            raise NftUnsupported(f"{target} option {sorted(unwritten)[0]}")
    if target is Target.ACCEPT:
        return "accept"
    if target is Target.DROP:
        return "drop"
    if target is Target.RETURN:
        return "return"
    if target is Target.REJECT:
        how = options.get("reject-with")
        if how not in REJECTS:
            raise NftUnsupported(f"REJECT --reject-with {how}")
        return REJECTS[how]
    if target is Target.LOG:
        level = options.get("log-level")
        suffix = f" level {LOG_LEVELS[int(level)]}" if level is not None else ""
        return f"log prefix {escape.nft_log_prefix(options['log-prefix'])}{suffix}"
    if target is Target.NFLOG:
        return (f"log prefix {escape.nft_log_prefix(options['nflog-prefix'])} "
                f"group {int(options['nflog-group'])}")
    if target is Target.MASQUERADE:
        return "masquerade"
    if target is Target.SNAT:
        return f"snat {FAMILY_WORDS[family][0]} to {escape.line_text(options['to-source'])}"
    if target is Target.DNAT:
        to = escape.line_text(options["to-destination"])
        return f"dnat {FAMILY_WORDS[family][0]} to {to}"
    if target is Target.CONNMARK:
        value_text, _, mask_text = options["set-xmark"].partition("/")
        value = int(value_text, 0)
        mask = int(mask_text, 0) if mask_text else MARK_BITS
        if value == mask:
            return f"ct mark set ct mark or {value:#010x}"
        return f"ct mark set ct mark and {MARK_BITS & ~mask:#010x} xor {value:#010x}"
    if target is Target.CT and set(options) == {"notrack"}:
        return "notrack"
    if target is Target.TCPMSS:
        if rule.match.protocol != TCP or len(options) != 1:
            raise NftUnsupported(f"TCPMSS {rule.target_options} without -p tcp")
        if "clamp-mss-to-pmtu" in options:
            return "tcp option maxseg size set rt mtu"
        return f"tcp option maxseg size set {int(options['set-mss'])}"
    if target is Target.CT:
        if set(options) != {"helper"} or rule.match.protocol is None:
            raise NftUnsupported(f"CT {rule.target_options} without a protocol")
        return f'ct helper set "{writer.helper_name(options["helper"], rule.match.protocol)}"'
    if isinstance(target, str) and target in chain_names:
        return f"jump {chain_names[target]}"
    raise NftUnsupported(f"target {target}")


def _maps_port(rule: Rule) -> bool:
    """RULE translates to a port (`DNAT --to-destination 203.0.113.5:53`, `[2001:db8::5]:53`,
    `SNAT --to-source ADDR:1024-65535`). nft refuses `dnat ip to ADDR:PORT` in a rule that
    does not test the transport protocol itself ("transport protocol mapping is only
    valid after transport protocol match"), even in a chain whose packets all have it."""
    if rule.target not in (Target.DNAT, Target.SNAT):
        return False
    options = dict(rule.target_options)
    to = options.get("to-destination") or options.get("to-source") or ""
    return "]:" in to or ("[" not in to and to.count(":") == 1)


def _rule(rule: Rule, family: int, writer: Names, chain_names: dict[str, str],
          ipsets: dict[str, tuple[str, ...]], protocol_part: list[str] | None = None,
          statement: str | None = None, comment: str | None = None,
          counter: bool = True, known_protocol: object = None) -> str:
    match = rule.match
    # Never drop a condition silently (fwc.backend.capabilities lists what is refused);
    # the nth lines of load sharing are written as one `Share`.
    if match.statistic is not None:
        raise NftUnsupported("a statistic match outside DNAT load sharing")
    parts: list[str] = []
    if match.in_device:
        parts.append(f"iifname {escape.nft_device(match.in_device)}")
    if match.out_device:
        parts.append(f"oifname {escape.nft_device(match.out_device)}")
    parts.append(_addresses("saddr", match.source, family, writer, ipsets))
    parts.append(_addresses("daddr", match.destination, family, writer, ipsets))
    if _maps_port(rule):
        known_protocol = None  # nft needs the protocol test in the translating rule
    parts += _protocol(match, writer, known_protocol) if protocol_part is None \
        else protocol_part
    if match.tcp_flags is not None:
        if match.protocol != TCP:
            raise NftUnsupported("TCP flags on a protocol other than TCP")
        parts.append(_tcp_flags(match.tcp_flags))
    if match.hop_limit is not None:
        parts.append(f"ip6 hoplimit {match.hop_limit}")
    if match.ttl is not None:
        parts.append(f"ip ttl {match.ttl}")
    if match.ctstate:
        unknown = [s for s in match.ctstate if s not in STATES]
        if unknown:
            raise NftUnsupported(f"conntrack state {unknown[0]}")
        parts.append("ct state " + ",".join(STATES[s] for s in match.ctstate))
    if match.limit is not None:
        parts.append(f"limit rate {match.limit.rate} burst {match.limit.burst} packets")
    parts += _limits(match, family, writer)
    if counter:  # a verdict map's elements count, not its lookup
        parts.append("counter")
    parts.append(statement or _statement(rule, family, writer, chain_names))
    parts.append(f"comment {escape.nft_comment(rule.comment if comment is None else comment)}")
    return " ".join(p for p in parts if p)


def _dispatch(item: Dispatch, chain: str, writer: Names, chain_names: dict[str, str],
              known_protocol: object = None) -> str:
    elements: list[str] = []
    for value, rule in item.entries:
        if isinstance(value, PortRange):
            key = _port_text(value.low, value.high)
        elif isinstance(value, int):
            key = _protocol_word(value)
        else:
            key = escape.nft_device(str(value))
        elements.append(f"{key} : {_verdict(rule, chain_names)}")
    suffix = {"iifname": "in", "oifname": "out", "meta l4proto": "protocol",
              "dport": "ports"}[item.field]
    name = writer.verdict_map(f"{chain}-{suffix}", DISPATCH_TYPES[item.field], tuple(elements))
    if item.field != "dport":
        lookup = item.field
    elif known_protocol == item.protocol and item.protocol in PROTOCOL_WORDS:
        lookup = "th dport"  # the chain's packets all have the protocol (`_protocol`)
    else:
        lookup = f"{_protocol_word(cast('int', item.protocol))} dport"
    return f"{lookup} vmap @{name} comment {escape.nft_comment('fwc arrange: dispatch')}"


def _exact(field_: str, value: str, family: int) -> str | None:
    """VALUE (an element's text for one key field) as an exact key, or None when it is a
    range: a prefix shorter than a host or a port range. Devices are always exact."""
    if field_ in ("saddr", "daddr"):
        host = "/32" if family == 4 else "/128"
        return value[:-len(host)] if value.endswith(host) else None
    if field_ == "dport":
        return None if "-" in value else value
    return value


def _concat(item: Concat, family: int, writer: Names, chain_names: dict[str, str],
            ipsets: dict[str, tuple[str, ...]], base: str,
            members: tuple[Rule, ...] | None = None, names: tuple[str, ...] | None = None,
            known_protocol: object = None, memo: Memo | None = None,
            where: tuple[object, ...] = ()) -> tuple[str, tuple[str, ...]]:
    """(the lookup rules, their sets' names). BASE names the sets (`_rules_name`: the
    chain and the item's place in it, nothing of the rest of the file). MEMBERS are the
    rules whose elements fill the sets (the item's own, or those of every port bucket
    sharing them, `_bucket_sharing`); NAMES the sets when they are declared already.
    MEMO, WHERE (the memo key of the item's place, its table and family among them): the
    elements the previous member wrote for the same rules there (`_reused`).

    A verdict map is written as two: the elements whose every field is one value (a
    host address, one port) in a map of exact keys, the others in a map with `flags
    interval`, looked up one after the other. Exact: the elements are disjoint (no
    packet matches two of them), so which map is asked first changes no decision; a
    map of exact keys is a hash table, which the kernel fills without the interval
    set's per-element work (pipapo), and nft writes its keys without ranges."""
    first = item.rules[0]
    word = FAMILY_WORDS[family][0]
    address_type = "ipv4_addr" if family == 4 else "ipv6_addr"
    protocol = first.match.protocol
    port_word = f"{PROTOCOL_WORDS[protocol]} dport" if protocol in PROTOCOL_WORDS and \
        known_protocol != protocol else "th dport"  # `_protocol`
    expressions = {"iifname": "iifname", "oifname": "oifname", "saddr": f"{word} saddr",
                   "daddr": f"{word} daddr", "dport": port_word}
    types = {"iifname": "ifname", "oifname": "ifname", "saddr": address_type,
             "daddr": address_type, "dport": "inet_service"}
    if names is None:
        rules = members or item.rules
        # the verdicts name chains by table and family, which WHERE holds
        exact, ranged = _reused(memo, where, (rules, item.fields, item.verdicts),
                                functools.partial(_concat_elements, rules, item.fields,
                                                  item.verdicts, family, writer, chain_names))
        key_type = " . ".join(types[f] for f in item.fields)
        if item.verdicts:  # (each named apart: either may be missing)
            names = tuple(writer.verdict_map(name, key_type, tuple(elements),
                                             interval=interval, counted=True)
                          for name, elements, interval in ((base, exact, False),
                                                           (f"{base}-ranges", ranged, True))
                          if elements)
        else:
            names = (writer.named_set(base, key_type, tuple(ranged), base),)
    lookup = replace(first, match=replace(
        first.match, source=AddressMatch(), destination=AddressMatch(), dports=(),
        in_device=None if "iifname" in item.fields else first.match.in_device,
        out_device=None if "oifname" in item.fields else first.match.out_device))
    texts: list[str] = []
    for name in names:
        key = f"{' . '.join(expressions[f] for f in item.fields)}"
        key += f" vmap @{name}" if item.verdicts else f" @{name}"
        # a verdict map's lookup is the rule's verdict: it goes last, as the statement
        lookup_part = [] if item.verdicts else [key]
        if "dport" in item.fields:
            # `tcp dport` implies the protocol; any other port protocol is named first
            parts = ([] if protocol in PROTOCOL_WORDS else [f"meta l4proto {protocol}"]) + \
                lookup_part
            if first.match.tcp_not_syn:
                parts.append("tcp flags & (fin | syn | rst | ack) != syn")
        else:
            parts = [*lookup_part, *_protocol(lookup.match, writer, known_protocol)]
        # (not how many: one rule joining or leaving the set changed the line of every
        # chain looking it up; nor the set's name, which the line holds already)
        comment = f"{first.comment} and more rules"
        texts.append(_rule(lookup, family, writer, chain_names, ipsets, parts,
                           statement=key if item.verdicts else None, comment=comment,
                           counter=not item.verdicts))
    return "\n\t\t".join(texts), names


def _port_texts(m: Match) -> tuple[str, ...]:
    """M's destination ports as set elements (one range: nothing to merge)."""
    ports = m.dports
    if len(ports) == 1:
        return (_port_text(ports[0].low, ports[0].high),)
    return tuple(_port_text(lo, hi) for lo, hi in _merged_ports(ports))


def _concat_elements(rules: tuple[Rule, ...], fields: tuple[str, ...], verdicts: bool,
                     family: int, writer: Names, chain_names: dict[str, str]) \
        -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The elements of RULES under the key FIELDS (with their verdicts: a map): those of
    exact keys, and the others (`_concat`)."""
    exact: list[str] = []
    ranged: list[str] = []
    collapsed = writer.collapsed
    device = escape.nft_device
    # per field of the key: its values for a rule's match
    readers: dict[str, Callable[[Match], tuple[str, ...]]] = {
        "iifname": lambda m: (device(m.in_device or ""),),
        "oifname": lambda m: (device(m.out_device or ""),),
        "saddr": lambda m: collapsed(m.source.cidrs),
        "daddr": lambda m: collapsed(m.destination.cidrs),
        "dport": _port_texts}
    read = [readers[f] for f in fields]
    for rule in rules:
        m = rule.match
        tail = f" comment {escape.nft_comment(rule.comment)}"
        if verdicts:
            tail += f" : {_verdict(rule, chain_names)}"
        for values in itertools.product(*(reader(m) for reader in read)):
            if verdicts:  # only a map splits exact keys from ranges
                keys = [_exact(f, v, family) for f, v in zip(fields, values, strict=True)]
                if None not in keys:
                    exact.append(f"{' . '.join(cast('list[str]', keys))}{tail}")
                    continue
            ranged.append(f"{' . '.join(values)}{tail}")
    return tuple(exact), tuple(ranged)


def _family_chain(table: TableName, chain: str, family: int) -> str:
    return escape.nft_identifier(f"{table}-{chain}-v{family}")


def _base_chain(table: TableName, chain: BuiltinChain, variant: str = "") -> str:
    return escape.nft_identifier(f"{table}-{chain}" + (f"-{variant}" if variant else ""))


def _hook_parts(table: Table) -> list[tuple[Chain, str | None]]:
    """The table's chains, each built-in one with its variant ("" or NOTRACK_SUFFIX), user
    chains with None. The raw table's `notrack` rules (and the jumps to their chains) get
    a base chain of their own before conntrack; its helper rules stay where they were.
    CT never ends a packet's walk, so splitting a chain keeps what each rule does."""
    out: list[tuple[Chain, str | None]] = []
    for chain in table.chains:
        if not chain.builtin:
            continue
        if table.name is not TableName.RAW:
            out.append((chain, ""))
            continue
        helpers = tuple(r for r in chain.rules if r.target is Target.CT
                        and "helper" in dict(r.target_options))
        rest = tuple(r for r in chain.rules if r not in helpers)
        if rest:
            out.append((replace(chain, rules=rest), NOTRACK_SUFFIX))
        if helpers or not rest:
            out.append((replace(chain, rules=helpers), ""))
    users = sorted((c for c in table.chains if not c.builtin), key=lambda c: c.name.encode())
    return out + [(c, None) for c in users]


# (chain, dispatch item, set shape, n-th of that shape in a bucket, part): one shared set
Slot = tuple[int, int, object, int, int]
# Elements per shared set: the kernel's set of concatenated ranges (pipapo) checks each
# new element against the set so far, so one huge set costs the square of its size; sets
# of this size keep both that and the walk of the table's list of sets small.
SHARED_MAX = 1024


def _elements(rule: Rule, fields: tuple[str, ...]) -> int:
    """How many set elements RULE becomes under the key FIELDS."""
    m = rule.match
    sizes = {"saddr": len(m.source.cidrs), "daddr": len(m.destination.cidrs),
             "dport": len(m.dports)}
    out = 1
    for f in fields:
        out *= max(1, sizes.get(f, 1))
    return out


def _bucket_elements(item: Concat, protocol: int | None, ports: PortRange) -> int | None:
    """How many elements ITEM (a concatenation of a bucket chain) has, when every rule of
    it is of PROTOCOL and its ports are all within PORTS (the bucket's); else None."""
    low, high = ports.low, ports.high
    if not all(r.match.protocol == protocol and all(low <= p.low and p.high <= high
                                                    for p in r.match.dports)
               for r in item.rules):
        return None
    return sum(_elements(r, item.fields) for r in item.rules)


def _bucket_sharing(parts: list[tuple[Chain, str | None]], planned: list[list[Item]],
                    memo: Memo | None = None, where: tuple[object, ...] = ()) \
        -> tuple[dict[tuple[int, int], Slot], dict[Slot, tuple[Rule, ...]]]:
    """Which concatenated sets of port-bucket chains share one set or map.

    A port dispatch (`tcp dport vmap @...`) sends each packet to at most one bucket
    chain, by its destination port. When a bucket chain is reached from that entry
    only, and a set of its rules holds only ports of its own bucket range, the n-th
    set of one shape in each bucket chain of the dispatch can be one set: in bucket k
    an element of bucket j's rules never matches (its port is out of k's range), so
    each chain's lookup decides as its own set did. Fewer sets load faster (the kernel
    finds each set by name in a list). Returns (chain index, item index) -> slot, and
    each slot's rules in dispatch order. MEMO, WHERE (the file and table): each bucket's
    sets measured as the previous member measured them (`_reused`).

    Which buckets share is decided as the arranger cuts ports (`arrange.halved`): the
    port space halved while a half's buckets hold more than SHARED_MAX elements, so a
    rule joining or leaving a bucket moves a boundary only when a half crosses that
    bound. Filling each set up to SHARED_MAX in dispatch order, as before, moved every
    later boundary (and the lines of the buckets beside it) with one element more."""
    refs: dict[str, int] = {}
    for chain, _ in parts:
        for rule in chain.rules:
            if type(rule.target) is str:
                refs[rule.target] = refs.get(rule.target, 0) + 1
    user = {chain.name: at for at, (chain, variant) in enumerate(parts) if variant is None}
    # per kind of set (dispatch, set shape, n-th of it in a bucket): each bucket's
    # (lowest port, chain index, item index, elements), in dispatch order
    kinds: dict[tuple[int, int, object, int], list[tuple[int, int, int, int]]] = {}
    for at, items in enumerate(planned):
        for index, item in enumerate(items):
            if not isinstance(item, Dispatch) or item.field != "dport":
                continue
            for value, rule in item.entries:
                target = rule.target
                if type(target) is not str or refs.get(target) != 1 or target not in user \
                        or not isinstance(value, PortRange):
                    continue
                bucket = user[target]
                seen: dict[object, int] = {}
                for inner, got in enumerate(planned[bucket]):
                    if not isinstance(got, Concat) or "dport" not in got.fields:
                        continue
                    n = seen[got.key] = seen.get(got.key, 0) + 1
                    size = _reused(memo, (SHARING_MEMO, *where, target, inner),
                                   (got, item.protocol, value),
                                   functools.partial(_bucket_elements, got, item.protocol,
                                                     value))
                    if size is not None:
                        kinds.setdefault((at, index, got.key, n), []).append(
                            (value.low, bucket, inner, size))
    slots: dict[tuple[int, int], Slot] = {}
    members: dict[Slot, list[Rule]] = {}
    for kind, buckets in kinds.items():
        times = Counter({low: size for low, _, _, size in buckets})
        cuts = halved(times, SHARED_MAX)
        for low, bucket, inner, _ in buckets:
            slot = (*kind, bisect.bisect_right(cuts, low))
            slots[bucket, inner] = slot
            members.setdefault(slot, []).extend(cast("Concat", planned[bucket][inner]).rules)
    return slots, {slot: tuple(rules) for slot, rules in members.items()}


@dataclass(frozen=True, slots=True)
class _Texts:
    """One chain's lines in a file (one text: a member that takes them shares it, and a
    string per line cost a third more memory at 100,000 rules), the sets and maps they
    name (each with how often), what they asked of the file's writer (`Journal`), and
    the sets or maps they declared for shared slots, by item index."""

    text: str
    uses: Counter[str]
    calls: Calls
    made: tuple[tuple[int, tuple[str, ...]], ...]
    targets: frozenset[str]  # the chains the lines jump to (a table without one: rendered)


def _chain_texts(items: list[Item], name: str, family: int, writer: Writer,
                 names: dict[str, str], ipsets: dict[str, tuple[str, ...]], known: object,
                 shared_sets: dict[int, tuple[tuple[Rule, ...] | None, tuple[str, ...] | None]],
                 memo: Memo | None, where: tuple[object, ...], journal: bool) -> _Texts:
    """The lines of the chain NAME holding ITEMS. SHARED_SETS: per concatenation that
    shares its sets with other chains (`_bucket_sharing`), by item index, the rules filling
    them and their names when declared already. With JOURNAL the writer's answers are
    kept, for the next member's file (`Writer.replayed`)."""
    asked: Names = Journal(writer) if journal else writer
    lines = [f"\tchain {name} {{"]
    made: list[tuple[int, tuple[str, ...]]] = []
    concats = 0
    for index, item in enumerate(items):
        if isinstance(item, Dispatch):
            text = _dispatch(item, name, asked, names, known)
        elif isinstance(item, Concat):
            concats += 1
            rules, declared = shared_sets.get(index, (None, None))
            text, sets = _concat(item, family, asked, names, ipsets,
                                 _rules_name(name, concats), rules, declared, known, memo,
                                 (ELEMENTS_MEMO, *where, index))
            if index in shared_sets:
                made.append((index, sets))
        elif isinstance(item, Share):
            text = _share(item, family, asked, names, ipsets)
        else:
            text = _rule(item, family, asked, names, ipsets, known_protocol=known)
        lines.append(f"\t\t{text}")
    lines.append("\t}")
    text = "\n".join(lines)
    calls = asked.kept() if isinstance(asked, Journal) else ()
    return _Texts(text, Counter(SET_REFERENCE.findall(text)), calls, tuple(made),
                  _one_of(memo, _targets(items)) if journal else frozenset())


def _rules_name(chain: str, nth: int) -> str:
    """The sets or maps of the NTH concatenation of CHAIN (`CHAIN-rulesN`; the interval
    map of a pair `-ranges` after it): named where they stand, so a rule that joins or
    leaves another chain's set renames none of them (numbered over the file, one map
    more renumbered every map after it). Shared by port buckets (`_bucket_sharing`),
    they are named by the first chain that looks them up."""
    return f"{chain}-rules{nth}"


def _targets(items: list[Item]) -> frozenset[str]:
    """The chains ITEMS jump to (each rule of a set, dispatch or load sharing too)."""
    rules: list[Rule] = []
    for item in items:
        if isinstance(item, Concat):
            rules.extend(item.rules)
        elif isinstance(item, Dispatch):
            rules.extend(rule for _, rule in item.entries)
        elif isinstance(item, Share):
            rules.append(item.rule)
        else:
            rules.append(item)
    return frozenset(r.target for r in rules if type(r.target) is str)


def render(rulesets: list[NodeRuleset], header: str, sets: tuple[IpSet, ...] = (), *,
           concat: bool = True, min_concat: int = MIN_CONCAT, memo: Memo | None = None,
           scope: str = "", last: bool = False) -> str:
    """RULESETS (one per family, lowered, possibly arranged) and the ipsets their rules
    name as one `nft -f` file; `concat` joins rules into concatenated sets (`plan`).
    MEMO: the cluster's per-run memo, shared by its members' files (`_reused`), where
    SCOPE (the file's name) tells apart the files a member gets; after the LAST member's
    file the previous member's results go (what is kept for reuse is one member's)."""
    return "".join(render_pieces(rulesets, header, sets, concat=concat,
                                 min_concat=min_concat, memo=memo, scope=scope, last=last))


# Characters per piece of a streamed file (`render_pieces`).
PIECE_CHARS = 1 << 20


def render_pieces(rulesets: list[NodeRuleset], header: str, sets: tuple[IpSet, ...] = (),
                  *, concat: bool = True, min_concat: int = MIN_CONCAT,
                  memo: Memo | None = None, scope: str = "", last: bool = False) \
        -> Iterator[str]:
    """`render`'s text in pieces of whole lines, about PIECE_CHARS each: the rules are
    worked out first (the sets they name are declared before them), then the file is
    written out piece by piece, never whole (at 100,000 rules it is 30 MB, and its joined
    text and bytes were two more copies at once)."""
    blocks = None if memo is None else memo.get(BLOCKS_MEMO, dict)
    ipsets = {s.name: s.cidrs for s in sets}
    writer = Writer(None if memo is None else memo.get(COLLAPSED_MEMO, dict), sets)
    # (table, builtin chain, variant) -> family -> its chain; plus every family's user chains.
    builtins: dict[tuple[TableName, BuiltinChain, str], dict[int, Chain]] = {}
    body: list[str] = []  # each chain's lines, as one text
    uses: Counter[str] = Counter()  # how often the lines name each set or map
    for ruleset in rulesets:
        family = ruleset.family
        for table in ruleset.tables:
            entries: dict[str, Entry] = {}
            if concat:
                entries = entry_matches(table)
                table = drop_known_devices(table, memo, (scope, family), entries)
            table, folded = fold_logs(table, memo, (scope, family)) if concat else (table, {})
            if folded:  # the log chains it made know what their rules' chains know
                entries = entries_after_fold(entries, folded)
            names = {c.name: _family_chain(table.name, c.name, family) for c in table.chains}
            shapes = Shapes(ipsets, never_returning(table.chains), family, blocks) \
                if concat else None
            parts = _hook_parts(table)
            planned = [list(_reused(memo, (PLAN_MEMO, scope, family, table.name, chain.name,
                                           variant),
                                    (chain.rules, _outside(_referenced(
                                        memo, (scope, family, table.name, chain.name,
                                               variant), chain.rules), shapes, ipsets, memo),
                                     family, min_concat),
                                    functools.partial(_planned, chain.rules, shapes, min_concat)))
                       for chain, variant in parts]
            parts, planned = unfold_logs(parts, planned, folded)
            slots, members = _bucket_sharing(parts, planned, memo, (scope, family, table.name)) \
                if concat else ({}, {})
            declared: dict[object, tuple[str, ...]] = {}  # slot -> its sets or maps
            for at, ((chain, variant), items) in enumerate(zip(parts, planned, strict=True)):
                name = names[chain.name]
                if variant is not None:
                    builtins.setdefault((table.name, BuiltinChain(chain.name), variant),
                                        {})[family] = chain
                    name = _family_chain(table.name, f"{chain.name}-{variant}" if variant
                                         else chain.name, family)
                known = entries.get(chain.name, (None,) * len(ENTRY_FIELDS))[_PROTOCOL_AT]
                # per concatenation sharing its sets (`_bucket_sharing`): the rules filling
                # them, and their names when an earlier chain declared them
                shared_sets = {index: (members.get(slot), declared.get(slot))
                               for index, item in enumerate(items) if type(item) is Concat
                               for slot in (slots.get((at, index)),) if slot is not None}
                previous = None if memo is None else memo.get(
                    (TEXTS_MEMO, scope, family, table.name, chain.name, variant), _Previous)
                given = (items, name, known, shared_sets)
                # (a chain they jump to missing here: rendering says so, NftUnsupported)
                if previous is not None and previous.given == given and \
                        previous.value.targets <= names.keys() and \
                        writer.replayed(previous.value.calls, ipsets):
                    texts: _Texts = previous.value
                else:
                    texts = _chain_texts(items, name, family, writer, names, ipsets, known,
                                         shared_sets, memo, (scope, family, table.name, chain.name,
                                                        variant),
                                         journal=previous is not None and not last)
                    if previous is not None and not last:
                        previous.given, previous.value = given, texts
                if previous is not None and last:  # no member after this one: it goes now
                    previous.given, previous.value = _UNSEEN, None
                body.append(texts.text)
                uses.update(texts.uses)
                for index, made in texts.made:
                    declared[slots[at, index]] = made
    base: list[str] = []
    order = sorted(builtins, key=lambda k: (list(TableName).index(k[0]),
                                            CHAIN_ORDER.index(k[1]), k[2] != NOTRACK_SUFFIX))
    for table_name, chain_name, variant in order:
        per_family = builtins[(table_name, chain_name, variant)]
        kind, priority = TABLE_HOOKS[table_name]
        if variant == NOTRACK_SUFFIX:
            priority = NOTRACK_PRIORITY
        elif priority is None:
            priority = NAT_PRIORITIES[chain_name]
        policies = {c.policy for c in per_family.values()}
        # One policy for the hook; a family whose own policy is laxer ends with it.
        policy = Target.DROP if Target.DROP in policies else Target.ACCEPT
        base.append(f"\tchain {_base_chain(table_name, chain_name, variant)} {{")
        base.append(f"\t\ttype {kind} hook {chain_name.lower()} priority {priority}; "
                    f"policy {policy.lower()};")
        # (a family without a ruleset here has nothing to jump to: the hook's policy
        # decides its packets, never an accept of fwc's)
        for family in (4, 6):
            nfproto = FAMILY_WORDS[family][1]
            chain = per_family.get(family)
            if chain is None:
                continue
            own = f"{chain_name}-{variant}" if variant else chain_name
            base.append(f"\t\tmeta nfproto {nfproto} jump "
                        f"{_family_chain(table_name, own, family)}")
            if chain.policy is not policy:
                base.append(f"\t\tmeta nfproto {nfproto} counter {str(chain.policy).lower()} "
                            'comment "fwc auto: policy"')
        base.append("\t}")
    if memo is not None and last:
        for kind in REUSED_KINDS:
            memo.drop_kind(kind)
        memo.drop(CHAIN_SETS_MEMO)  # what the reuse entries kept: none is left
    for helper, protocol in writer.helpers:
        if protocol not in PROTOCOL_WORDS:
            raise NftUnsupported(f"helper {helper} on protocol {protocol}")
    # The sets and maps most often named by rules first: the kernel finds each set a rule
    # names by walking the table's list of sets in the order they were declared. By the
    # power of two of their uses, in the order of first use within one: sorted by the
    # count itself, a set one rule more or fewer names moved past the sets of its count
    # (hundreds of lines of a diff for an edit of one rule); the walk is 4-5 % longer
    # (20k benchmark, docs/performance.md: nftables maps named by content).
    listed = sorted(((kind, name, spec) for kind, table in (("set", writer.sets),
                                                            ("map", writer.maps))
                     for name, spec in table.items()),
                    key=lambda d: -uses[d[1]].bit_length())

    def lines() -> Iterator[str]:
        yield from (f"# {escape.comment(line)}" for line in header.splitlines())
        yield from (f"table inet {TABLE} {{}}", f"delete table inet {TABLE}",
                    f"table inet {TABLE} {{")
        for (helper, protocol), name in writer.helpers.items():
            yield from (f"\tct helper {name} {{",
                        f"\t\ttype {escape.nft_string(helper)} protocol "
                        f"{PROTOCOL_WORDS[protocol]}", "\t\tl3proto inet", "\t}")
        for name, spec in writer.limits.items():
            yield from (f"\tlimit {name} {{", f"\t\t{spec}", "\t}")
        for name, (key_type, timeout) in writer.meters.items():
            yield from (f"\tset {name} {{", f"\t\ttype {key_type}", f"\t\tsize {METER_SIZE}",
                        f"\t\tflags dynamic{',timeout' if timeout else ''}")
            if timeout:
                yield f"\t\ttimeout {METER_TIMEOUT}"
            yield "\t}"
        for kind, name, (key_type, flags, elements) in listed:
            value = " : verdict" if kind == "map" else ""
            yield from (f"\t{kind} {name} {{", f"\t\ttype {key_type}{value}")
            if flags:
                yield f"\t\tflags {flags}"
            if name in writer.counted:
                yield "\t\tcounter"
            yield "\t\telements = {"
            yield from (f"\t\t\t{e}," for e in elements)
            yield from ("\t\t}", "\t}")
        yield from base
        yield from body
        yield "}"

    batch: list[str] = []
    size = 0
    for line in lines():
        batch.append(line)
        size += len(line) + 1
        if size >= PIECE_CHARS:
            yield "\n".join(batch) + "\n"
            batch, size = [], 0
    if batch:
        yield "\n".join(batch) + "\n"


def render_file(build: MemberBuild, file: GeneratedFile) -> str:
    return "".join(_file_pieces(build, file))


def stream_file(build: MemberBuild, file: GeneratedFile) -> Iterator[bytes]:
    """The same bytes as `render_file`, in pieces (`fwc compile` writes them as they
    come: the file's text is never whole in memory)."""
    for piece in _file_pieces(build, file):
        yield piece.encode()


def _file_pieces(build: MemberBuild, file: GeneratedFile) -> Iterator[str]:
    where = f"member {build.member.name} of cluster {build.cluster.name}"
    if file.reload is Reload.FAILSAFE:
        # From the lowered rulesets: the fallback shares nothing with what failed but
        # the table's name, and replaces it whole like the real one.
        return render_pieces([failsafe(build.lowered(f)) for f in build.families],
                      f"Fail-closed nft table for {where}: loaded by "
                      f"{path_of('fwc-firewall.sh')} only when {path_of('nftables.nft')} "
                      "fails to load.\nGenerated by fwc: edit the policy, not this file.",
                      memo=build.cluster.memo, scope=file.name, last=not build.texts.keep)
    rulesets, sets = build.optimised(clip_ports=True)
    return render_pieces([rulesets[f] for f in build.families],
                  f"nft -f input for {where}: replaces only the table inet {TABLE}, "
                  "atomically;\nother tables stay. Generated by fwc: edit the policy, "
                  "not this file.", sets, memo=build.cluster.memo, scope=file.name,
                  last=not build.texts.keep)
