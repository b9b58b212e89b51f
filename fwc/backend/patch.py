"""A patch compile: the files of an in-place edit of one policy rule, spliced into the
files the previous compile wrote into the same output directory (issue 12).

A one-line edit of a large policy changes a few lines of its output (the arrangement
cuts ports by halving and names its chains by content, fwc.backend.arrange), yet a
full compile lowers, arranges and renders every rule again. This module writes the
same bytes from the previous files, or refuses (`Refused`, with why) and the caller
compiles in full. It takes an edit only when it can show the full compile would
decide everything as before:

- exactly one line of one policy file changed, and that line is the whole of one
  policy filter rule in the old and the new text, at the same position (so every
  other rule, object and cluster is the same text, and every chain name that holds a
  rule's number is the same);
- the old rule and the new one, lowered alone on every member and family
  (fwc.backend.lower.build.lower_rule, the lowering's own function), add lines to the
  filter table's FORWARD chain only: no conntrack helper, no raw line, no chain of
  their own, no INPUT or OUTPUT line (the fail-closed rules are INPUT's and OUTPUT's,
  and stay as they are); the same number of lines, each pair with the same devices and
  protocol (a rule of one line may move to another protocol's chain of the same split)
  and both with or both without ports; no RETURN (the arrangement rewrites it); each
  one iptables line (a rule of several is held and may get a chain of its own,
  share_expansions), with the sets `use_ipsets` would name for it already in the old
  ipsets.rules with the same addresses, and every set the old lines named still named
  by another line;
- the backend is iptables.

Then the arrangement decides as before: its splits by device count rules per value,
and the edited lines have the same devices; a protocol split's chains (ProtocolChild)
and their port splits (PortNode) are decided again here from the counts and port lows
the previous compile recorded, with the arranger's own `port_buckets` and cut rule
(PORT_CUT_RULE): a moved cut is a refusal. A line of the rule in a chain without a
protocol split is replaced in place by its new line; in a protocol split's chain (or
its buckets) the old lines go and the new ones go where their protocol and ports reach
(`_buckets`, the arranger's), in policy order.

What the previous compile was is its record in the result cache (`PatchBase`, under
the output directory's key: a keyed digest of each line of the policy, a digest of its
rules' spans and the protocol splits), and that the directory still holds exactly what
it wrote is `fwc.backend.record.unchanged_output` (its tree); every file read back is
checked against its recorded digest when first read (a rules file once its edits are
known: the new file's digest is made with that check).
tests/test_patch.py compares patched output with full compiles, byte for byte, over
random policies and edits, and makes every refusal happen.
"""

from __future__ import annotations

import contextlib
import hashlib
import mmap
import os
import re
import stat
import threading
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from fwc.backend.arrange import (
    PORT_CUT_RULE,
    PORT_MAX,
    PORT_PROTOCOLS,
    SPLIT_MIN_RULES,
    PortNode,
    ProtocolChild,
    Splits,
    _buckets,
    low_counts,
    port_buckets,
)
from fwc.backend.files import BY_NAME, FILES, Reload
from fwc.backend.ipsets import IpSet, with_sets_alone
from fwc.backend.lower import LowerOptions, options_for
from fwc.backend.lower.build import lower_rule
from fwc.backend.lower.ruleset import FilterRule, rendered_lines
from fwc.backend.manifest import NAME as MANIFEST
from fwc.backend.manifest import Entry
from fwc.backend.output import OutputFile, _manifest, members_of
from fwc.backend.record import Hash, OutputRecord, RecordedCluster, hash_of, plain
from fwc.backend.render import conntrackd, escape
from fwc.backend.render.context import MemberBuild
from fwc.backend.render.ipset import set_lines
from fwc.backend.render.iptables import rule_bodies
from fwc.backend.render.registry import Chunks
from fwc.model import Cluster, Member, Policy, PortRange
from fwc.model.records import dataclass
from fwc.model.vocabulary import Backend, BuiltinChain, Target

KIND = "patch"  # the result cache's kind of a PatchBase entry
# A member's protocol splits of FORWARD, per family (of arrange's Splits)
Forward = dict[int, tuple[ProtocolChild, ...]]
# A previous rules file's bytes: mapped when large (`_Reader.text`); read with find,
# rfind, slices and regular expressions only, which both kinds have.
Text = bytes | mmap.mmap
# bytes: a previous file this large is mapped rather than copied (`_Reader.text`), and
# digested in a thread beside the patch's planning (hashlib lets the GIL go)
LARGE = 1 << 20
Edits = list[tuple[int, int, bytes]]  # (start, end, new bytes) of a file, one per chain
Lines = list[tuple[int, int, bytes]]  # a chain's lines of a rule: (start, end, body)
_FORWARD = str(BuiltinChain.FORWARD)


class Refused(Exception):  # noqa: N818 - a reason, shown in tests and traces
    """Why this compile cannot be a patch: the caller compiles in full."""


@dataclass(frozen=True, slots=True)
class PatchBase:
    """What a patch starts from: what the compile that wrote the output directory wrote
    (its OutputRecord: an entry of its own per directory, as the content's entry "out"
    is the last directory's that content was compiled into), the lines of the policy it
    compiled (`line_digests`), its rules' spans, and per cluster, member and family the
    protocol splits of the iptables arrangement's FORWARD chain."""

    record: OutputRecord
    lines: dict[str, str]  # per policy file, the digests of its lines (line_digests)
    splits: dict[str, dict[str, Forward]]  # per cluster and member
    spans: str  # rule_spans: where every filter rule was

    def as_json(self) -> dict[str, Any]:
        return {"record": self.record.as_json(), "lines": self.lines,
                "spans": self.spans,
                "splits": {cluster: {member: {str(family): [_child_json(c) for c in children]
                                              for family, children in families.items()}
                                     for member, families in members.items()}
                           for cluster, members in self.splits.items()}}

    @classmethod
    def of_json(cls, value: Any) -> PatchBase | None:
        """The base a cache entry holds; None when it is not one (entries are
        authenticated: only another fwc version's could fail here)."""
        try:
            record, lines, spans = (OutputRecord.of_json(value["record"]), value["lines"],
                                    value["spans"])
            splits = {cluster: {member: {int(family): tuple(_child(c) for c in listed)
                                         for family, listed in families.items()}
                                for member, families in members.items()}
                      for cluster, members in value["splits"].items()}
        except (TypeError, KeyError, ValueError, AttributeError):
            return None
        if record is None or not isinstance(lines, dict) or not all(
                isinstance(k, str) and isinstance(v, str) and len(v) % _DIGEST_CHARS == 0
                for k, v in lines.items()) or not isinstance(spans, str):
            return None
        return cls(record, lines, splits, spans)


_DIGEST_CHARS = 32  # of a line's digest (hex of 16 bytes: no collision to hide an edit)


def line_digests(texts: Mapping[str, str], key: bytes) -> dict[str, str]:
    """Per policy file, the keyed digests of its lines, joined: what a patch compares the
    next texts with. Keyed (KEY: the result cache's, `ResultCache.secret_hash`), as a line
    may be `password "..."`: a plain digest of a short line is undone by a search."""
    return {name: "".join(hashlib.blake2b(line.encode(), key=key, digest_size=16).hexdigest()
                          for line in text.split("\n"))
            for name, text in texts.items()}


def rule_spans(policy: Policy) -> str:
    """A digest of each cluster's filter rules as (file, first line, last line): equal
    for two texts that differ in one line only when that line is one whole rule in both,
    at the same position (a PatchBase's; only ever compared)."""
    spans = [(cluster.name, [(r.span.file, r.span.line, r.span.end_line)
                             for r in cluster.rules]) for cluster in policy.clusters]
    return hashlib.sha256(repr(spans).encode()).hexdigest()


def _child_json(child: ProtocolChild) -> list[Any]:
    port = child.port
    return [child.parent, child.protocol, child.chain, child.rules, child.with_ports,
            child.named, None if port is None else [
                port.target, list(port.bounds), list(port.buckets),
                [x for pair in port.lows for x in pair]]]


def _child(value: Any) -> ProtocolChild:
    parent, protocol, chain, rules, with_ports, named, port = value
    if not isinstance(parent, str) or not isinstance(chain, str) or not all(
            type(n) is int for n in (protocol, rules, with_ports, named)):
        raise ValueError("not a protocol split's chain")
    return ProtocolChild(parent, protocol, chain, rules, with_ports, named,
                         None if port is None else _node(port))


def _node(value: Any) -> PortNode:
    target, bounds, buckets, flat = value
    numbers = [target, *bounds, *flat]
    if not all(type(n) is int for n in numbers) or len(flat) % 2 \
            or len(buckets) + 1 != len(bounds) or not all(isinstance(b, str) for b in buckets):
        raise ValueError("not a port node")
    return PortNode(target, tuple(bounds), tuple(buckets),
                    tuple(zip(flat[::2], flat[1::2], strict=True)))


def forward_splits(splits: Mapping[str, Mapping[str, Splits]]) -> dict[str, dict[str, Forward]]:
    """The FORWARD protocol splits of ClusterStream.splits, per cluster (a PatchBase's)."""
    return {cluster: {member: {family: chains.get(_FORWARD, ())
                               for family, chains in families.items()}
                      for member, families in members.items()}
            for cluster, members in splits.items()}


@dataclass(frozen=True, slots=True)
class _Edit:
    shown: str  # the policy file, as its texts and spans name it
    line: int  # 1-based


def _edited_line(old: Mapping[str, str], new: Mapping[str, str]) -> _Edit:
    """The one line in which the digests NEW differ from OLD (line_digests)."""
    if old.keys() != new.keys():
        raise Refused("the policy reads other files")
    changed = [name for name in new if old[name] != new[name]]
    if len(changed) != 1:
        raise Refused("not one file changed" if changed else "no policy text changed")
    [shown] = changed
    before, after = old[shown], new[shown]
    if len(before) != len(after):
        raise Refused("lines inserted or deleted")
    size = _DIGEST_CHARS
    lines = [i // size for i in range(0, len(after), size)
             if before[i:i + size] != after[i:i + size]]
    if len(lines) != 1:
        raise Refused("more than one line changed")
    return _Edit(shown, lines[0] + 1)


def _rule_at(policy: Policy, edit: _Edit) -> dict[str, int]:
    """The position of the edited rule in each cluster's rules that has it; Refused when
    the line holds anything else (a NAT rule, a rule of several lines or on a line with
    another rule)."""
    found: dict[str, int] = {}
    for cluster in policy.clusters:
        for position, rule in enumerate(cluster.rules):
            span = rule.span
            if span.file == edit.shown and span.line <= edit.line <= span.end_line:
                if span.line != span.end_line or cluster.name in found:
                    raise Refused("the line is not one whole rule")
                found[cluster.name] = position
        for nat in cluster.nat:
            span = nat.span
            if span.file == edit.shown and span.line <= edit.line <= span.end_line:
                raise Refused("a NAT rule")
    if not found:
        raise Refused("the line holds no policy rule")
    return found


def _rules_file(family: int) -> str:
    return next(f.name for f in FILES if f.target == "iptables" and f.reload is Reload.RULES
                and f.family == family)


def _forward_lines(cluster: Cluster, member: Member, family: int, options: LowerOptions,
                   position: int) -> list[FilterRule]:
    """The rule's lines on the member, which must all be FORWARD's (see the module)."""
    lowered = lower_rule(cluster, member, family, options, position)
    forward: list[FilterRule] = []
    for table, chains in lowered.items():
        for chain, rules in chains.items():
            if not rules:
                continue
            if table != "filter" or chain != BuiltinChain.FORWARD:
                raise Refused(f"the rule has lines in {table} {chain}")
            forward = [r for r in rules if isinstance(r, FilterRule)]
            if len(forward) != len(rules):
                raise Refused("the rule has a line of another kind")
    return forward


def _lines_each_one(rules: list[FilterRule], family: int) \
        -> tuple[list[FilterRule], dict[str, IpSet]]:
    """The rule's FORWARD lines, each one iptables line, with the sets use_ipsets names."""
    with_sets, sets = with_sets_alone(tuple(rules), family)
    lines = [r for r in with_sets if isinstance(r, FilterRule)]
    if len(lines) != len(with_sets) or len(with_sets) != len(rules):
        raise Refused("the rule's lines merge")
    for line in lines:
        if rendered_lines(line.match) != 1:
            raise Refused("the rule is several iptables lines")
        if line.target is Target.RETURN:
            raise Refused("a RETURN line (the arrangement rewrites it)")
    return lines, sets


@dataclass(frozen=True, slots=True)
class _Read:
    """What the arrangement reads of one rules-file line (before its comment): its
    devices and protocol as written, its destination ports, and the sets it names."""

    places: tuple[bytes | None, bytes | None, bytes | None]  # -i, -o, -p
    ports: tuple[PortRange, ...]
    sets: tuple[str, ...]


_COMMENT_WORD = b" -m comment --comment "


def _read(body: bytes) -> _Read:
    """A line's words as the iptables renderer writes them (rule_bodies); Refused for
    anything this reading would not be sure of."""
    end = body.find(_COMMENT_WORD)
    if end < 0 or b'"' in body[:end]:
        raise Refused("a line this patch cannot read")
    words = body[:end].split(b" ")
    places: dict[bytes, bytes] = {}
    ports: tuple[PortRange, ...] = ()
    sets: list[str] = []
    for i, word in enumerate(words[:-1]):
        negated = i > 0 and words[i - 1] == b"!"
        if word in (b"-i", b"-o", b"-p", b"--dport", b"--dports"):
            if negated or word in places:
                raise Refused("a line this patch cannot read")
            places[word] = words[i + 1]
        elif word == b"--match-set":
            sets.append(words[i + 1].decode())
    text = places.pop(b"--dport", None) or places.pop(b"--dports", None)
    if text is not None:
        try:
            ports = tuple(PortRange(*(int(n) for n in (p.split(b":") * 2)[:2]))
                          for p in text.split(b","))
        except (TypeError, ValueError):
            raise Refused("a line this patch cannot read") from None
    return _Read((places.get(b"-i"), places.get(b"-o"), places.get(b"-p")), ports,
                 tuple(sets))


@dataclass(frozen=True, slots=True)
class _Pair:
    """A line of the rule before the edit and the line taking its place."""

    old: bytes  # its body, as the previous file has it after `-A CHAIN `
    read: _Read  # of the old body
    new: bytes
    ports: tuple[PortRange, ...]  # the new line's
    protocol: int | None  # the new line's


def _pairs(olds: list[bytes], news: list[FilterRule]) -> list[_Pair]:
    """The old lines paired with the new ones (in the new order): the one with the one,
    else by devices and protocol (each pair then in the same chains)."""
    old_reads = [_read(body) for body in olds]
    new_bodies = [rule_bodies(r)[0].encode() for r in news]
    new_reads = [_read(body) for body in new_bodies]
    if len(set(new_bodies)) != len(new_bodies):
        raise Refused("two lines of the rule are the same")
    for rule, seen in zip(news, new_reads, strict=True):
        if seen.ports != rule.match.dports:
            raise Refused("a line this patch cannot read")
    if len(olds) == 1 and len(news) == 1:
        old, now = old_reads[0], new_reads[0]
        if old.places[:2] != now.places[:2]:
            raise Refused("the rule moves to another device")
        if old.places[2] != now.places[2] and not (old.ports and now.ports):
            raise Refused("the rule moves to another protocol, or from one without ports")
        order = [0]
    else:
        by_place = {r.places: k for k, r in enumerate(old_reads)}
        if len(olds) != len(news):
            raise Refused("the rule gains or loses lines")
        if len(by_place) != len(olds) or len({r.places for r in new_reads}) != len(news):
            raise Refused("two lines of the rule go to the same chains")
        if by_place.keys() != {r.places for r in new_reads}:
            raise Refused("the rule's lines move to other devices or protocols")
        order = [by_place[r.places] for r in new_reads]
    pairs = []
    for k, (rule, body, now) in enumerate(zip(news, new_bodies, new_reads, strict=True)):
        old = old_reads[order[k]]
        if bool(old.ports) != bool(now.ports):
            raise Refused("the rule gains or loses its ports")
        pairs.append(_Pair(olds[order[k]], old, body, rule.match.dports, rule.match.protocol))
    return pairs


def _splice(text: Text, token: bytes, news: list[FilterRule],
            children: tuple[ProtocolChild, ...], order: Callable[[str], int | None],
            position: int) \
        -> tuple[Edits, tuple[ProtocolChild, ...], set[str]]:
    """The edits (start, end, new bytes) that make TEXT's rules file the new rule's (whose
    lines carry TOKEN, ` --comment "LABEL"`), the protocol splits' chains after them, and
    the sets the old lines named."""
    filter_at = text.find(b"\n*filter\n")
    first = text.find(token)
    if filter_at < 0 or 0 <= first < filter_at:
        raise Refused("the rule had lines outside the filter table")
    # (a rule with a chain of its own, share_expansions', has its lines there: fwc-pN-,
    # refused below with any chain outside FORWARD's tree)
    # the rule's lines by chain, in file order: (start, end, body)
    by_chain: dict[bytes, Lines] = {}
    olds: dict[bytes, None] = {}
    at = first
    while at >= 0:
        start, end = _line_bounds(text, at)
        chain = _chain_of(text[start:end])
        if chain != b"FORWARD" and not chain.startswith(b"fwd-"):
            raise Refused("the rule had lines outside FORWARD")
        body = text[start + 4 + len(chain):end - 1]
        lines = by_chain.setdefault(chain, [])
        if lines and (lines[-1][1] != start or any(body == b for _, _, b in lines)):
            raise Refused("the rule's lines in a chain are apart, or the same")
        lines.append((start, end, body))
        olds[body] = None
        at = text.find(token, end)
    if not by_chain:
        raise Refused("the rule had no line here")
    pairs = _pairs(list(olds), news)
    by_old = {pair.old: pair for pair in pairs}
    # Where the old lines are: a protocol split's chain (its buckets), or a chain whose
    # rules were not split by protocol, where the new lines take their places.
    chain_of = {c.chain.encode(): i for i, c in enumerate(children)}
    bucket_of = {name.encode(): (i, b) for i, c in enumerate(children) if c.port is not None
                 for b, name in enumerate(c.port.buckets)}
    edits: Edits = []
    held: dict[int, dict[int, Lines]] = {}  # child, bucket (-1: itself)
    for chain, lines in by_chain.items():
        if chain in bucket_of:
            i, b = bucket_of[chain]
            held.setdefault(i, {})[b] = lines
        elif chain in chain_of:
            if children[chain_of[chain]].port is not None:
                raise Refused("a line in a chain of port jumps")
            held.setdefault(chain_of[chain], {})[-1] = lines
        else:
            there = {body for _, _, body in lines}
            edits.append((lines[0][0], lines[-1][1], b"".join(
                b"-A " + chain + b" " + pair.new + b"\n" for pair in pairs
                if pair.old in there)))
    after = list(children)
    sibling = {(c.parent, c.protocol): i for i, c in enumerate(children)}
    for i, places in held.items():
        movers = [by_old[body] for body in dict.fromkeys(
            body for lines in places.values() for _, _, body in lines)]
        protocols = {pair.protocol for pair in movers}
        if len(protocols) != 1 or None in protocols:
            raise Refused("lines of several protocols in one protocol's chain")
        j = sibling.get((children[i].parent, protocols.pop()), -1)  # type: ignore[arg-type]
        if j < 0:
            raise Refused("no chain of the new protocol where the rule was")
        if j != i and len(movers) != 1:
            raise Refused("several lines move to another protocol's chain")
        _moved(text, children, after, i, j, places, movers, pairs, order, position, edits)
    return edits, tuple(after), {name for pair in pairs for name in pair.read.sets}


def _decided(child: ProtocolChild, rules: int, with_ports: int,
             lows: Counter[int]) -> tuple[int, list[int]] | None:
    """What the arranger makes of protocol split chain CHILD with RULES rules, WITH_PORTS
    of them with ports of these LOWS (arrange.arrange, split_ports): its port split's
    target and bounds, or None when its rules stay in it."""
    if rules < SPLIT_MIN_RULES or child.protocol not in PORT_PROTOCOLS:
        return None
    target = port_buckets(rules, with_ports)
    if target is None:
        return None
    return target, [0, *PORT_CUT_RULE(+lows, target), PORT_MAX + 1]


def _same_split(child: ProtocolChild, decided: tuple[int, list[int]] | None) -> bool:
    """Whether DECIDED splits CHILD's rules as the previous compile did: the same bounds
    (the bucket count asked for may differ, as round(sqrt(n)) moves, when the cuts do
    not: they are what the output is made of)."""
    if child.port is None or decided is None:
        return child.port is None and decided is None
    return decided[1] == list(child.port.bounds)


def _lows(child: ProtocolChild, out: list[tuple[PortRange, ...]] | None = None,
          into: list[tuple[PortRange, ...]] | None = None) -> Counter[int]:
    """CHILD's port lows with the ports OUT taken out and INTO put in. A chain without a
    port split has none recorded (its decision does not read them: too few rules, or
    too few with ports, which the counts tell)."""
    if child.port is None:
        return Counter()
    lows = Counter(dict(child.port.lows))
    lows.subtract(low_counts(out or []))
    lows.update(low_counts(into or []))
    if any(n < 0 for n in lows.values()):
        raise Refused("the recorded split does not count the rule")
    return lows


def _moved(text: Text, children: tuple[ProtocolChild, ...], after: list[ProtocolChild],
           i: int, j: int, places: dict[int, Lines],
           movers: list[_Pair], pairs: list[_Pair], order: Callable[[str], int | None],
           position: int, edits: Edits) -> None:
    """The edits of the rule's lines MOVERS leaving protocol chain I (PLACES: its lines by
    bucket, -1 for the chain itself) for chain J of the same split (I itself when the
    protocol stays; else one line), with the chains' decisions taken again; AFTER gets
    both chains as they are then. PAIRS: all the rule's lines, in the new order."""
    source, target = children[i], children[j]
    everywhere = set(range(len(source.port.buckets))) if source.port is not None else {-1}
    for pair in movers:
        held = {b for b, lines in places.items() if any(body == pair.old for _, _, body in lines)}
        ports = pair.read.ports
        if held != (set(_buckets(list(source.port.bounds), ports))
                    if source.port is not None and ports else everywhere):
            raise Refused("the recorded split does not hold the rule as recorded")
    old_ports = [pair.read.ports for pair in movers if pair.read.ports]
    new_ports = [pair.ports for pair in movers if pair.ports]
    if i == j:
        lows = _lows(source, old_ports, new_ports)
        decided = _decided(source, source.rules, source.with_ports, lows)
        if not _same_split(source, decided):
            raise Refused("a port cut moves")
        after[i] = _with_lows(source, 0, 0, lows, decided)
    else:
        if source.named < 2:
            raise Refused("the rule was the last of its protocol there")
        has_ports = len(old_ports)
        lows_out, lows_in = _lows(source, old_ports), _lows(target, into=new_ports)
        out = _decided(source, source.rules - 1, source.with_ports - has_ports, lows_out)
        into = _decided(target, target.rules + 1, target.with_ports + has_ports, lows_in)
        if not _same_split(source, out) or not _same_split(target, into):
            raise Refused("a split of a protocol's chain changes")
        after[i] = _with_lows(source, -1, -has_ports, lows_out, out)
        after[j] = _with_lows(target, 1, has_ports, lows_in, into)
    names = {-1: target.chain} if target.port is None else dict(enumerate(target.port.buckets))
    moving = {pair.old for pair in movers}
    goes: dict[int, list[bytes]] = {}
    for pair in pairs:  # (in the new order: a bucket's lines of the rule are in it)
        if pair.old not in moving:
            continue
        reach = [-1] if target.port is None else (
            _buckets(list(target.port.bounds), pair.ports) if pair.ports
            else range(len(target.port.buckets)))
        for b in reach:
            goes.setdefault(b, []).append(pair.new)
    if i != j:
        for lines in places.values():
            edits.append((lines[0][0], lines[-1][1], b""))
        places = {}
    for b in sorted(places.keys() | goes.keys()):
        prefix = b"-A " + names[b].encode() + b" "
        block = b"".join(prefix + body + b"\n" for body in goes.get(b, ()))
        lines = places.get(b)
        if lines is not None:
            edits.append((lines[0][0], lines[-1][1], block))
        else:
            at = _insertion(text, prefix, order, position)
            edits.append((at, at, block))


def _with_lows(child: ProtocolChild, rules: int, with_ports: int, lows: Counter[int],
               decided: tuple[int, list[int]] | None) -> ProtocolChild:
    port = child.port
    if port is not None and decided is not None:
        port = PortNode(decided[0], port.bounds, port.buckets,
                        tuple(sorted((+lows).items())))
    named = child.named + rules  # (only a rule naming the protocol moves between chains)
    return ProtocolChild(child.parent, child.protocol, child.chain, child.rules + rules,
                         child.with_ports + with_ports, named, port)


def _line_bounds(text: Text, at: int) -> tuple[int, int]:
    start = text.rfind(b"\n", 0, at) + 1
    end = text.find(b"\n", at)
    if end < 0:
        raise Refused("a line without its end")
    return start, end + 1


def _chain_of(line: bytes) -> bytes:
    if not line.startswith(b"-A "):
        raise Refused("the rule's label outside a rule line")
    return line[3:line.index(b" ", 3)]


_COMMENT = re.compile(rb' --comment "((?:fwc arrange: )?)([^"\\]*)"')


def _insertion(text: Text, prefix: bytes, order: Callable[[str], int | None],
               position: int) -> int:
    """Where the rule at POSITION goes in the bucket chain of PREFIX: before its first
    line of a later rule, else before its last line (the chain's policy)."""
    start = text.find(b"\n" + prefix)
    if start < 0:
        raise Refused("a bucket chain without lines")
    at = start + 1
    while text[at:at + len(prefix)] == prefix:
        end = text.find(b"\n", at) + 1
        if end == 0:
            raise Refused("a line without its end")
        found = _COMMENT.search(text, at, end)
        if text[end:end + len(prefix)] != prefix:  # the last line: the chain's policy
            if found is None or found[1] != b"fwc arrange: " \
                    or not found[2].endswith(b" policy"):
                raise Refused("a bucket chain not ending in its policy")
            return at
        rank = None if found is None else order(found[2].decode())
        if rank is None:
            raise Refused("a line of no single policy rule in a bucket chain")
        if rank > position:
            return at
        if rank == position:
            raise Refused("the rule is in the bucket already")
        at = end
    raise Refused("a bucket chain without its policy")


def _policy_order(cluster: Cluster, options: LowerOptions) -> Callable[[str], int | None]:
    """A rule label's position in the cluster's rules (None: no rule's, or several's)."""
    names: dict[str, str] = {}
    positions: dict[str, int | None] = {}
    for position, rule in enumerate(cluster.rules):
        file = rule.span.file
        name = names.get(file)
        if name is None:
            name = names[file] = options.source_name(file)
        label = f"{name}:{rule.span.line}"
        positions[label] = None if label in positions else position
    return lambda label: positions.get(label)


def _sets_known(ipsets: bytes | None, sets: Mapping[str, IpSet]) -> None:
    for s in sets.values():
        block = ("\n".join(set_lines(s)) + "\n").encode()
        if ipsets is None or (not ipsets.startswith(block) and b"\n" + block not in ipsets):
            raise Refused("the rule names a set the previous files do not have as it is")


def _count(text: Text, word: bytes, start: int, end: int) -> int:
    """How often WORD is in TEXT[START:END] (a mapped file has no count)."""
    count, at = 0, text.find(word, start, end)
    while at >= 0:
        count += 1
        at = text.find(word, at + len(word), end)
    return count


def _sets_still_named(texts: list[Text], edits: Mapping[int, Edits],
                      names: set[str]) -> None:
    """Every set of NAMES (the rule's old lines named them, its new ones do not) is still
    named by a line of another rule."""
    for name in sorted(names):
        word = b"--match-set " + escape.iptables_word(name).encode() + b" "
        for index, text in enumerate(texts):
            removed = sum(_count(text, word, start, end) for start, end, _ in edits[index])
            if _count(text, word, 0, len(text)) > removed:
                break
        else:
            raise Refused("a set would no longer be named")


def _only_ours(info: os.stat_result) -> bool:
    """Whether no one but this process's user (and root) may write to the file INFO
    describes."""
    return info.st_uid == os.geteuid() and not info.st_mode & 0o022


class _Reader:
    """The previous output's files, each checked against the record of the compile that
    wrote it when first read: its bytes' digest, and on every read the same inode, size,
    link count, owner, mode and change time (`unchanged_output` compared the tree).

    What a file written from a previous one will digest to is known here too (`digest`):
    a copy's is the record's, and an edited rules file's is made with its check, from
    the digest of the bytes before the first edit (SHA-256 reads in order, so the two
    differ only from there): the patch's write hashes nothing again."""

    def __init__(self, directory: Path, cluster: RecordedCluster,
                 secret_hash: Callable[[], Hash]) -> None:
        self.directory = directory
        self.nodes = {path: node for path, node in cluster.tree.items() if node[0] == "f"}
        self.digests = {f.path: f.sha256 for f in cluster.files}
        self.secret_hash = secret_hash
        self.checked: set[str] = set()
        self._unchecked: dict[str, Text] = {}  # texts whose edits are not known yet
        self._made: dict[str, str] = {}  # edited files: what they will digest to
        self._digesting: list[_Digesting] | None = None

    def read(self, path: str) -> bytes:
        data = self._open(path, mapped=False)
        assert isinstance(data, bytes)
        if path not in self.checked:
            self._check(path, data, [])
        return data

    def text(self, path: str) -> Text:
        """The bytes of PATH (a file that cannot hold a secret), mapped when large instead
        of copied: a copy would be fresh memory for every file, twice (planned, then
        written), and the mapping shares the page cache's. Only a file that no one but
        fwc's own user may write to is mapped: cut short by a process while it is mapped,
        it would end fwc with SIGBUS, which that user can do as well with a signal (the
        output directory keeps its previous tree, and the next compile removes the
        staging copy).
        Checked once its edits are known (`edited`), or when `verifying` ends."""
        data = self._open(path, mapped=True)
        if path not in self.checked:
            self._unchecked[path] = data
        return data

    def edited(self, path: str, edits: Edits) -> None:
        """PATH, read with `text`, is to be written with EDITS: checked now, its new
        digest made with the check."""
        if edits and not plain(path):
            raise Refused(f"{path} can hold a secret")  # (no rules file does)
        self._check(path, self._unchecked.pop(path), edits)

    def check_all(self, paths: list[str]) -> None:
        """Every one of PATHS checked (read, or as `text` read it)."""
        for path in paths:
            if path in self._unchecked:
                self.edited(path, [])
            elif path not in self.checked:
                self.read(path)

    def digest(self, path: str) -> str | None:
        """The SHA-256 of PATH as the patch writes it (checked; its edits given), or None
        for a file whose record digest is keyed (one that can hold a secret)."""
        if not plain(path):
            return None
        return self._made.get(path, self.digests[path])

    def still_as_written(self, path: str) -> None:
        """Refused when PATH changed since it was read (its change time moved): a
        mapped file's bytes may have changed under the patch, which read them."""
        info = os.stat(self.directory / path, follow_symlinks=False)
        if not self._as_recorded(path, info):
            raise Refused(f"{path} changed while it was read")

    def _as_recorded(self, path: str, info: os.stat_result) -> bool:
        node = self.nodes[path]
        seen = (stat.S_IMODE(info.st_mode), info.st_uid, info.st_gid, info.st_nlink,
                info.st_size, info.st_ino, info.st_ctime_ns)
        return stat.S_ISREG(info.st_mode) and seen == (*node[1:4], *node[5:])

    def _open(self, path: str, mapped: bool) -> Text:
        if path not in self.nodes:
            raise Refused(f"the previous output has no {path}")
        fd = os.open(self.directory / path, os.O_RDONLY | os.O_NOFOLLOW)
        with os.fdopen(fd, "rb") as stream:
            info = os.fstat(stream.fileno())
            if not self._as_recorded(path, info):
                raise Refused(f"{path} changed since it was written")
            data: Text
            if mapped and info.st_size >= LARGE and _only_ours(info):
                data = mmap.mmap(stream.fileno(), 0, access=mmap.ACCESS_READ)
            else:
                data = stream.read()
            after = os.fstat(stream.fileno())
        if after.st_ctime_ns != info.st_ctime_ns or len(data) != info.st_size:
            raise Refused(f"{path} changed since it was written")
        return data

    def _check(self, path: str, data: Text, edits: Edits) -> None:
        self.checked.add(path)
        # (`edited` refuses edits of a file whose record digest is keyed)
        digesting = _Digesting(path, data, edits, hash_of(path, self.secret_hash),
                               with_new=bool(edits))
        if self._digesting is None or len(data) < LARGE:
            digesting.run()
            self._settle(digesting)
        else:
            digesting.start()
            self._digesting.append(digesting)

    def _settle(self, digesting: _Digesting) -> None:
        if digesting.failed is not None:
            raise digesting.failed
        if digesting.old.hexdigest() != self.digests.get(digesting.path):
            raise Refused(f"{digesting.path} is not what was written")
        if digesting.new is not None:
            self._made[digesting.path] = digesting.new.hexdigest()

    @contextlib.contextmanager
    def verifying(self) -> Iterator[None]:
        """The block's reads digest a large file in a thread, beside the block's own
        work (hashlib lets the GIL go; at 20,000 rules on many interfaces that work is
        most of a patch compile's planning); on the way out a text whose edits were not
        given is checked as it is, every thread is awaited, and a file that is not what
        was written is Refused, unless the block raised."""
        self._digesting = []
        try:
            yield
            self.check_all(list(self._unchecked))
        finally:
            digesting, self._digesting = self._digesting, None
            self._unchecked.clear()
            for each in digesting:
                each.join()
        for each in digesting:
            self._settle(each)


class _Digesting:
    """The check of one previous file against its record (OLD: the digest the record
    holds, HASH_OF's), and with WITH_NEW the SHA-256 of the file its EDITS make of it
    (NEW), sharing the digest of the bytes before the first edit, which is the plain
    SHA-256 the record holds. Run here or in a thread of its own."""

    def __init__(self, path: str, data: Text, edits: Edits, old: Hash, with_new: bool) -> None:
        self.path = path
        self._data = data
        self._edits = edits
        self.old = old
        self.new: Any = None  # hashlib's sha256, with WITH_NEW
        self._with_new = with_new
        self.failed: BaseException | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run)
        self._thread.start()

    def join(self) -> None:
        if self._thread is not None:
            self._thread.join()

    def run(self) -> None:
        try:
            view = memoryview(self._data)
            if not self._with_new:
                self.old.update(view)
                return
            pieces = _pieces(self._data, self._edits)
            head = next(pieces)  # the bytes before the first edit
            self.old.update(head)
            self.new = self.old.copy()  # type: ignore[attr-defined]  # (sha256: plain)
            self.old.update(view[len(head):])
            for piece in pieces:
                self.new.update(piece)
        except BaseException as exc:  # noqa: BLE001 - raised again by the reader
            self.failed = exc
        finally:
            self._data = b""  # a mapping let go once digested: not every member's at once
            self._edits = []


class PatchedCluster:
    """One cluster's files as the patch makes them (a FileStream for write_output):
    each member's files read back from the previous output, the rules files spliced,
    and the MANIFEST made anew (its sources' digests are the new policy's)."""

    def __init__(self, policy: Policy, cluster: Cluster, backend: Backend,
                 reader: _Reader, spliced: dict[str, Edits],
                 paths: list[str]) -> None:
        self.name = cluster.name
        self._policy = policy
        self._cluster = cluster
        self._backend = backend
        self._reader = reader
        self._spliced = spliced
        self._paths = paths

    def files(self) -> Iterator[OutputFile]:
        entries: list[Entry] = []
        for path in self._paths:
            if path == MANIFEST:
                continue
            mode = self._reader.nodes[path][1]
            digest = self._reader.digest(path)
            if digest is None:  # a file that can hold a secret (small; never edited)
                content = self._reader.read(path)
                entries.append(Entry.of(path, content))
                yield OutputFile(path, content, mode)
                continue
            # read again (a large file mapped): only one previous file is held at a time;
            # its digest is known (checked or made while planning), not made again
            chunks = Chunks(_pieces(self._reader.text(path), self._spliced.get(path, [])),
                            sha256=digest)
            yield OutputFile(path, b"", mode, chunks)
            self._reader.still_as_written(path)
            entries.append(Entry.of_digest(path, digest))
        yield OutputFile(MANIFEST, _manifest(self._policy, self._cluster, entries,
                                             self._backend), self._reader.nodes[MANIFEST][1])

    def members(self) -> dict[str, list[str]]:
        return members_of(self._paths)


def _pieces(text: Text, edits: Edits) -> Iterator[bytes]:
    view = memoryview(text)
    at = 0
    for start, end, replacement in sorted(edits, key=lambda e: (e[0], e[1])):
        if start < at:
            raise RuntimeError("overlapping edits of a patch")  # never: one per chain
        yield view[at:start]  # type: ignore[misc]  # (written and hashed as it is)
        yield replacement
        at = end
    yield view[at:]  # type: ignore[misc]


@dataclass(frozen=True, slots=True)
class Patch:
    streams: list[PatchedCluster]
    base: PatchBase  # for the next compile, once these files are written


def patch(policy: Policy, lines: dict[str, str], base: PatchBase, output_dir: Path,
          backend: Backend | None, secret_hash: Callable[[], Hash]) -> Patch:
    """The streams of a patch compile of POLICY (whose lines are LINES, line_digests) over
    the output directory BASE describes (the caller checked it still holds exactly what
    BASE.record says),
    and the next base; Refused when the edit is not one this module takes (the module's
    doc)."""
    record = base.record
    edit = _edited_line(base.lines, lines)
    positions = _rule_at(policy, edit)
    # The previous text differs in the edited line only, and its rules were where these
    # are: that line held one whole rule at the same position, and every other rule is
    # the same text.
    if rule_spans(policy) != base.spans:
        raise Refused("the rules are not where they were")
    if [c.name for c in record.clusters] != [c.name for c in policy.clusters]:
        raise Refused("the previous output has other clusters")
    options = options_for(policy)
    streams: list[PatchedCluster] = []
    splits_after: dict[str, dict[str, Forward]] = {
        c: {m: dict(f) for m, f in ms.items()} for c, ms in base.splits.items()}
    for cluster, recorded in zip(policy.clusters, record.clusters, strict=True):
        writes_for = backend or cluster.backend
        if writes_for is not Backend.IPTABLES:
            raise Refused(f"backend {writes_for}")
        reader = _Reader(output_dir / cluster.name, recorded, secret_hash)
        with reader.verifying():
            spliced: dict[str, Edits] = {}
            position = positions.get(cluster.name)
            if position is not None:
                order = _policy_order(cluster, options)
                rule = cluster.rules[position]
                label = f"{options.source_name(rule.span.file)}:{rule.span.line}"
                for member in cluster.members:
                    splits = base.splits.get(cluster.name, {}).get(member.name)
                    if splits is None:
                        raise Refused(f"no record of member {member.name}'s arrangement")
                    spliced.update(_member_edits(
                        cluster, member, position, label, options, reader, splits,
                        splits_after[cluster.name][member.name], order))
            paths = [f.path for f in recorded.files]
            _conntrackd_unchanged(cluster, options, writes_for, reader, paths)
            reader.check_all(paths)  # every file's bytes now, not while it is written
        streams.append(PatchedCluster(policy, cluster, writes_for, reader, spliced, paths))
    return Patch(streams, PatchBase(base.record, lines, splits_after, base.spans))


def _conntrackd_unchanged(cluster: Cluster, options: LowerOptions, backend: Backend,
                          reader: _Reader, paths: list[str]) -> None:
    """Refused when a file the patch copies would change: conntrackd.conf reads whether
    any rule of the cluster names a service with a conntrack helper (ExpectationSync),
    whatever its action or lines; rendered again (it is small) and compared."""
    for path in paths:
        member_name, _, name = path.partition("/")
        row = BY_NAME.get(name)
        if row is None or row.target != "conntrackd":
            continue
        member = next(m for m in cluster.members if m.name == member_name)
        build = MemberBuild(cluster, member, options, backend=backend)
        fresh = conntrackd.render_file(build, row).encode()
        if fresh != reader.read(path):
            raise Refused(f"{path} changes")


def _member_edits(cluster: Cluster, member: Member, position: int, label: str,
                  options: LowerOptions, reader: _Reader,
                  splits: Forward, splits_after: Forward,
                  order: Callable[[str], int | None]) \
        -> dict[str, Edits]:
    """The member's rules files that change, with their edits."""
    out: dict[str, Edits] = {}
    ipsets_path = f"{member.name}/ipsets.rules"
    ipsets = reader.read(ipsets_path) if ipsets_path in reader.nodes else None
    old_sets: set[str] = set()
    new_sets: set[str] = set()
    texts: list[Text] = []
    all_edits: dict[int, Edits] = {}
    token = b" --comment " + escape.iptables_comment(label).encode()
    for family in (4, 6):
        lines = _forward_lines(cluster, member, family, options, position)
        path = f"{member.name}/{_rules_file(family)}"
        text = reader.text(path)
        if not lines:
            if text.find(token) >= 0:
                raise Refused("the rule's lines go")
            continue
        news, sets = _lines_each_one(lines, family)
        if any(new.comment != label for new in news):
            raise Refused("the rule's line carries another label")
        _sets_known(ipsets, sets)
        new_sets.update(sets)
        children = splits.get(family)
        if children is None:
            raise Refused(f"no record of member {member.name}'s IPv{family} arrangement")
        edits, after, named = _splice(text, token, news, children, order, position)
        reader.edited(path, edits)
        old_sets.update(named)
        splits_after[family] = after
        out[path] = edits
        all_edits[len(texts)] = edits
        texts.append(text)
    _sets_still_named(texts, all_edits, old_sets - new_sets)
    return out


def base_key(output_dir: Path, what: list[object]) -> str:
    """The cache key of the PatchBase of OUTPUT_DIR (absolute) compiled with WHAT (the
    options that shape the files)."""
    text = repr([str(output_dir.absolute()), *what])
    return hashlib.sha256(text.encode()).hexdigest()
