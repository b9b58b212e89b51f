"""NodeRuleset -> iptables-restore text.

Lines are written the way iptables-save prints them back (option order, states,
`! --tcp-flags` for `! --syn`), so that what is loaded can be compared with what
was generated line by line. Protocols are numbers unless a match module needs the
name: numbers do not depend on the node's /etc/protocols.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Iterator

from fwc import protocols as proto
from fwc.backend.files import GeneratedFile, Reload, path_of
from fwc.backend.lower.failsafe import iptables_failsafe
from fwc.backend.lower.ruleset import AddressMatch, Chain, Match, NodeRuleset, Rule, port_groups
from fwc.backend.render import escape
from fwc.backend.render.context import KeptText, MemberBuild, SharedTexts
from fwc.model import PortRange
from fwc.model.vocabulary import Table as TableName

TABLE_ORDER = tuple(TableName)
TCP = proto.IP_PROTOCOLS["tcp"]
ICMP = proto.IP_PROTOCOLS["icmp"]
ICMPV6 = proto.IP_PROTOCOLS["icmpv6"]
BLOCK_LINES = 4096
RATE_UNITS = {"second": "sec", "minute": "min", "hour": "hour", "day": "day"}


def _set_match(direction: str, match: AddressMatch) -> list[str]:
    if match.set_name is None:
        return []
    neg = ["!"] if match.negated else []
    return ["-m", "set", *neg, "--match-set", escape.iptables_word(match.set_name), direction]


def _addresses(flag: str, match: AddressMatch) -> list[str]:
    """The `-s`/`-d` words of each of a match's lines: one per CIDR (iptables expands a
    CIDR list into one rule per address anyway), or one empty text for none."""
    if match.set_name is not None or not match.cidrs:
        return [""]
    words = ("! " + flag + " ") if match.negated else (flag + " ")
    return [words + c + _host_suffix(c) for c in match.cidrs]


def _port_text(port: PortRange) -> str:
    return str(port.low) if port.low == port.high else f"{port.low}:{port.high}"


def _protocol_name(number: int) -> str:
    return proto.IPTABLES_PROTOCOL_NAMES.get(number, str(number))


def _protocol_options(match: Match, ports: tuple[PortRange, ...]) -> list[str]:
    if match.protocol is None:
        return []
    name = _protocol_name(match.protocol)
    out: list[str] = []
    if match.tcp_not_syn:
        out += ["-m", "tcp", "!", "--tcp-flags", "FIN,SYN,RST,ACK", "SYN"]
    if len(ports) == 1:
        out += ["-m", name, "--dport", _port_text(ports[0])]
    elif ports:
        out += ["-m", "multiport", "--dports", ",".join(_port_text(p) for p in ports)]
    if match.tcp_flags is not None:
        out += ["-m", "tcp", "--tcp-flags", *match.tcp_flags]
    if match.icmp_type is not None:
        if match.protocol == ICMP:
            out += ["-m", "icmp", "--icmp-type", str(match.icmp_type)]
        elif match.protocol == ICMPV6:
            out += ["-m", "icmp6", "--icmpv6-type", str(match.icmp_type)]
    return out


# (protocol, ports, tcp_not_syn, icmp_type, tcp_flags) -> the protocol options of each
# port group as text. A large policy uses a few hundred port lists in tens of thousands of
# rules; one memo per rendered file, never shared between runs.
ProtocolTexts = dict[tuple[int | None, tuple[PortRange, ...], bool, int | None,
                          tuple[str, str] | None], list[str]]


def _protocol_texts(match: Match, memo: ProtocolTexts) -> list[str]:
    key = (match.protocol, match.dports, match.tcp_not_syn, match.icmp_type, match.tcp_flags)
    texts = memo.get(key)
    if texts is None:
        groups = port_groups(match.dports) if match.dports else [()]
        texts = memo[key] = [" ".join(_protocol_options(match, ports)) for ports in groups]
    return texts


def _rate(rate: str) -> str:
    amount, _, unit = rate.partition("/")
    return f"{amount}/{RATE_UNITS.get(unit, unit)}"


def _limit_options(match: Match) -> list[str]:
    """statistic, connlimit and hashlimit, in the order iptables-save prints them back."""
    out: list[str] = []
    if match.statistic is not None:
        every, packet = match.statistic
        out += ["-m", "statistic", "--mode", "nth", "--every", str(every), "--packet",
                str(packet)]
    if match.connlimit is not None:
        out += ["-m", "connlimit", "--connlimit-above", str(match.connlimit.above),
                "--connlimit-mask", str(match.connlimit.mask), "--connlimit-saddr"]
    if match.hashlimit is not None:
        limit = match.hashlimit
        out += ["-m", "hashlimit", "--hashlimit-above", _rate(limit.rate),
                "--hashlimit-burst", str(limit.burst)]
        if limit.per_source:
            out += ["--hashlimit-mode", "srcip"]
        out += ["--hashlimit-name", escape.iptables_word(limit.name)]
    return out


def rule_bodies(rule: Rule, protocol_texts: ProtocolTexts | None = None,
                shapes: ShapeTexts | None = None) -> list[str]:
    """A rule's lines without the leading `-A CHAIN ` (render adds it for every chain)."""
    match = rule.match
    if len(match.source.cidrs) < 2 and len(match.destination.cidrs) < 2 \
            and shapes is not None and protocol_texts is not None:
        line = _one_line(rule, match, match.source, match.destination, protocol_texts, shapes)
        if line is not None:
            return [line]
    sources, ends = rule_pieces(rule, protocol_texts, shapes)
    if sources is None:
        return ends
    return [source + " " + end for source in sources for end in ends]


def _rule_lines(rule: Rule, protocol_texts: ProtocolTexts | None, between: str,
                shapes: ShapeTexts | None) -> tuple[str, int]:
    """RULE's lines joined by BETWEEN (a newline and the `-A CHAIN ` prefix), without
    the prefix of the first line, and how many: `rule_bodies` as one text, built with a
    join per source instead of a concatenation per line (the failsafe's groups make
    hundreds of lines of one rule). `_chain_blocks` adds the prefix once per block."""
    match = rule.match
    source, destination = match.source, match.destination
    if len(source.cidrs) < 2 and len(destination.cidrs) < 2 and shapes is not None \
            and protocol_texts is not None:
        line = _one_line(rule, match, source, destination, protocol_texts, shapes)
        if line is not None:
            return line, 1
    sources, ends = rule_pieces(rule, protocol_texts, shapes)
    if sources is None:
        return (ends[0] if len(ends) == 1 else between.join(ends)), len(ends)
    if len(ends) == 1:
        end = " " + ends[0]
        return (end + between).join(sources) + end, len(sources)
    return between.join(source + " " + (between + source + " ").join(ends)
                        for source in sources), len(sources) * len(ends)


# A rule's words but its addresses, protocol options and comment, by everything else
# they are made of: (the text before the protocol options, with its space; the text
# from the protocol options to the comment; the text after the comment). Thousands of
# rules differ only in their addresses, ports and comment; one memo per file (the ports'
# words have their own, ProtocolTexts). It also holds each address list's words, by
# (flag, negated, CIDRs): ([words], "", ""). At most SHAPES_MAX entries (emptied when
# full): at 100,000 rules an unbounded memo held about 25 MB through each rule file.
Shape = tuple[str, str, str]
ShapeTexts = dict[tuple[object, ...], Shape | tuple[list[str], str, str]]
SHAPES_MAX = 8192


def _remember(shapes: ShapeTexts, key: tuple[object, ...],
              value: Shape | tuple[list[str], str, str]) -> None:
    if len(shapes) >= SHAPES_MAX:
        shapes.clear()
    shapes[key] = value


def _shape_in(shapes: ShapeTexts, rule: Rule, match: Match) -> Shape:
    """`_shape` of RULE, once per SHAPES entry: the key is every field `_shape` reads
    but the comment (the one key of `rule_pieces` and `_one_line`)."""
    source, destination = match.source, match.destination
    key = (match.in_device, match.out_device, match.protocol, source.set_name,
           source.negated, destination.set_name, destination.negated, match.hop_limit,
           match.ttl, match.ctstate, match.statistic, match.connlimit, match.hashlimit,
           match.limit, rule.target, rule.target_options)
    shape = shapes.get(key)
    if shape is None:
        shape = _shape(rule)
        _remember(shapes, key, shape)
    return shape  # type: ignore[return-value]


def rule_pieces(rule: Rule, protocol_texts: ProtocolTexts | None = None,
                shapes: ShapeTexts | None = None) -> tuple[list[str] | None, list[str]]:
    """(sources, ends): a rule's lines are `source + " " + end` for each source (outer)
    and end, or the ends alone when SOURCES is None (no `-s`).

    Each line is the words below joined by single spaces, in this order; only the
    addresses and the port group differ between a rule's lines, so the rest is built
    once per rule (once per SHAPES entry, the comment aside), and each line is one
    concatenation (rendering is a visible part of compiling a large policy; the
    unarranged failsafe expands groups into every line).
    """
    match = rule.match
    source, destination = match.source, match.destination
    lead, mid, after = _shape(rule) if shapes is None else _shape_in(shapes, rule, match)
    comment = escape.iptables_comment(rule.comment)
    if match.protocol is None and not match.dports:  # no protocol options, one line
        ends = [lead + mid + comment + after]
    else:
        ends = [lead + protocol + " " + mid + comment + after if protocol
                else lead + mid + comment + after
                for protocol in _protocol_texts(match, {} if protocol_texts is None
                                                else protocol_texts)]
    if destination.cidrs and destination.set_name is None:
        destinations = _address_words("-d", destination, shapes)
        ends = [destination + " " + end for destination in destinations for end in ends]
    if not source.cidrs or source.set_name is not None:
        return None, ends
    return _address_words("-s", source, shapes), ends


def _one_line(rule: Rule, match: Match, source: AddressMatch, destination: AddressMatch,
              protocol_texts: ProtocolTexts, shapes: ShapeTexts) -> str | None:
    """The line of a rule of at most one CIDR a side and one port group, as
    `rule_pieces` makes it (without its lists and address memo: most rules of a large
    policy are such a line); None for a rule of several lines. tests/test_render_fast.py
    keeps it equal to `rule_bodies`. The line is one f-string of its parts: a
    concatenation per part made a new string of the growing line each time."""
    lead, mid, after = _shape_in(shapes, rule, match)
    if match.protocol is None and not match.dports:
        protocol = ""
    else:
        protocols = _protocol_texts(match, protocol_texts)
        if len(protocols) != 1:
            return None
        protocol = protocols[0]
    # (each address word as `_addresses` makes it, and its space)
    if source.cidrs and source.set_name is None:
        [cidr] = source.cidrs
        s = f"{'! -s ' if source.negated else '-s '}{cidr}{_host_suffix(cidr)} "
    else:
        s = ""
    if destination.cidrs and destination.set_name is None:
        [cidr] = destination.cidrs
        d = f"{'! -d ' if destination.negated else '-d '}{cidr}{_host_suffix(cidr)} "
    else:
        d = ""
    return f"{s}{d}{lead}{protocol}{' ' if protocol else ''}{mid}" \
        f"{escape.iptables_comment(rule.comment)}{after}"


def _host_suffix(cidr: str) -> str:
    """What `_addresses` appends to a CIDR text: nothing to a prefix, /32 or /128 to an
    address."""
    return "" if "/" in cidr else ("/128" if ":" in cidr else "/32")


def _address_words(flag: str, match: AddressMatch, shapes: ShapeTexts | None) -> list[str]:
    """`_addresses` of a side with CIDRs, once per file (in SHAPES) for each list."""
    if shapes is None:
        return _addresses(flag, match)
    key = (flag, match.negated, match.cidrs)
    got = shapes.get(key)
    if got is None:
        got = (_addresses(flag, match), "", "")
        _remember(shapes, key, got)
    return got[0]  # type: ignore[return-value]


def _shape(rule: Rule) -> Shape:
    """(lead, mid, after): each port group's line is `lead`, its protocol options and a
    space (if it has any), `mid`, the comment and `after`, without the addresses (see
    `rule_pieces`)."""
    match = rule.match
    # iptables-save prints -s -d -i -o -p first, then the match modules in the order
    # they were given: sets, protocol, hop limit (TTL), state, comment.
    lead: list[str] = []
    if match.in_device:
        lead += ["-i", escape.iptables_word(match.in_device)]
    if match.out_device:
        lead += ["-o", escape.iptables_word(match.out_device)]
    if match.protocol is not None:
        lead += ["-p", _protocol_name(match.protocol)]
    if match.source.set_name is not None:
        lead += _set_match("src", match.source)
    if match.destination.set_name is not None:
        lead += _set_match("dst", match.destination)
    mid: list[str] = []
    if match.hop_limit is not None:
        mid += ["-m", "hl", "--hl-eq", str(match.hop_limit)]
    if match.ttl is not None:
        mid += ["-m", "ttl", "--ttl-eq", str(match.ttl)]
    if match.ctstate:
        states = sorted(match.ctstate, key=proto.CTSTATE_ORDER.index)
        mid += ["-m", "conntrack", "--ctstate", ",".join(states)]
    if match.statistic is not None or match.connlimit is not None \
            or match.hashlimit is not None:
        mid += _limit_options(match)
    mid += ["-m", "comment", "--comment"]
    after: list[str] = []
    if match.limit is not None:
        after += ["-m", "limit", "--limit", _rate(match.limit.rate),
                  "--limit-burst", str(match.limit.burst)]
    after += ["-j", escape.iptables_word(rule.target)]
    for option, value in rule.target_options:
        after.append(f"--{option}")
        if option in ("log-prefix", "nflog-prefix"):
            after.append(escape.iptables_log_prefix(value, option == "nflog-prefix"))
        elif value:  # an empty value is a flag (--notrack, --clamp-mss-to-pmtu)
            after.append(escape.iptables_word(value))
    # Joining non-empty groups of words joins exactly the same words as one list would;
    # the part after the protocol options is never empty (it holds `--comment`), nor is
    # the tail (the target).
    return (" ".join(lead) + " " if lead else "", " ".join(mid) + " ", " " + " ".join(after))


def blocks(ruleset: NodeRuleset, header: str | None = None, texts: SharedTexts | None = None,
           file: str = "") -> Iterator[str]:
    """The iptables-restore text in pieces, each a run of whole lines with their newlines;
    HEADER replaces the first comment line (the failsafe's).

    TEXTS: the cluster's texts (fwc.backend.render.context.SharedTexts), under FILE:
    a chain whose rules equal the previous member's same chain is that chain's text.
    """
    family = "iptables" if ruleset.family == 4 else "ip6tables"
    if header is None:
        header = escape.comment(
            f"# {family}-restore rules for member {ruleset.member} of cluster "
            f"{ruleset.cluster}. Generated by fwc: edit the policy, not this file.")
    # Lines are joined BLOCK_LINES at a time: a line is its own object (about 50 bytes
    # over its text), and holding every line of a 300,000-line file until one final
    # join cost more memory than the text itself. The last line of a block is empty, so
    # that the block ends with its newline.
    out = [header]
    tables = sorted(ruleset.tables, key=lambda t: TABLE_ORDER.index(t.name))
    protocol_texts: ProtocolTexts = {}
    shapes: ShapeTexts = {}
    for table in tables:
        out.append(f"*{table.name}")
        # iptables-save lists built-in chains first, then user chains by name: the
        # same order here makes a loaded ruleset read back line for line.
        chains = [c for c in table.chains if c.builtin] + sorted(
            (c for c in table.chains if not c.builtin), key=lambda c: c.name.encode())
        for chain in chains:
            out.append(f":{escape.iptables_word(chain.name)} {chain.policy or '-'} [0:0]")
        shared = [texts.get((file, table.name, chain.name), chain.rules)
                  if texts is not None and chain.rules else None for chain in chains]
        # fwc.backend.arrange puts the same rule object in several chains (a rule without
        # `in`/`out` is copied into every interface-pair chain): render it once. Each rule
        # seen gets its index in this call's own list; an index is trusted only when that
        # list holds this very rule at it, so a slot left by another call (or table) is
        # rendered afresh. Hashing rules by value instead costs about 12% of the render.
        # A first walk finds the rules that occur more than once: only their lines are
        # kept for reuse (keeping every rule's, as large as the text, doubled the peak of
        # the unarranged failsafe rules).
        seen: list[Rule] = []
        repeated: list[bool] = []
        count = 0  # len(seen)
        set_slot = object.__setattr__  # frozen: scratch only
        append_seen, append_repeated = seen.append, repeated.append
        for chain, text in zip(chains, shared, strict=True):
            if text is not None:
                continue
            for rule in chain.rules:
                slot = rule.render_slot
                if 0 <= slot < count and seen[slot] is rule:
                    repeated[slot] = True
                else:
                    set_slot(rule, "render_slot", count)
                    append_seen(rule)
                    append_repeated(False)
                    count += 1
        bodies_of: list[str | list[str] | None] = [None] * len(seen)
        for chain, text in zip(chains, shared, strict=True):
            if not chain.rules:
                continue
            out.append("")
            yield "\n".join(out)  # a chain's text starts a block
            out.clear()
            if text is not None:
                yield from text
                continue
            pieces = _chain_blocks(chain, bodies_of, repeated, protocol_texts, shapes)
            if texts is None:
                yield from pieces
                continue
            # Kept (as it is or spilled) for the next member while it fits SharedTexts'
            # budgets; yielded as it is rendered either way (a chain can be nearly the
            # whole file).
            kept: KeptText | None = texts.keeper()
            for piece in pieces:
                yield piece
                if kept is not None:
                    kept.add(piece)
                    if kept.size > texts.room():
                        kept.drop()
                        kept = None
            if kept is not None:
                texts.offer((file, table.name, chain.name), chain.rules, kept)
        out.append("COMMIT")
    out.append("")
    yield "\n".join(out)


def _chain_blocks(chain: Chain, bodies_of: list[str | list[str] | None],
                  repeated: list[bool], protocol_texts: ProtocolTexts,
                  shapes: ShapeTexts) -> Iterator[str]:
    """The lines of CHAIN's rules, in blocks (see `blocks`). OUT holds each rule's lines
    without the leading `-A CHAIN ` (its lines joined by a newline and that prefix): a
    block is the prefix and OUT joined by a newline and the prefix, so a copied rule
    (most places of an arranged chain) costs an append, not a concatenation per place."""
    prefix = f"-A {chain.name} "
    between = "\n" + prefix
    out: list[str] = []
    lines = 0  # in `out`
    for rule in chain.rules:
        slot = rule.render_slot
        bodies = bodies_of[slot]
        if bodies is None:
            if not repeated[slot]:
                # One text per rule (its lines joined): an entry per line cost more.
                text, count = _rule_lines(rule, protocol_texts, between, shapes)
                out.append(text)
                lines += count
                if lines >= BLOCK_LINES:
                    yield _block(prefix, between, out)
                    out.clear()
                    lines = 0
                continue
            # kept for the rule's other chains: the line itself when it is one (usual)
            made = rule_bodies(rule, protocol_texts, shapes)
            bodies = bodies_of[slot] = made[0] if len(made) == 1 else made
        if type(bodies) is str:
            out.append(bodies)
            lines += 1
        else:
            out.append(between.join(bodies))
            lines += len(bodies)
        if lines >= BLOCK_LINES:
            yield _block(prefix, between, out)
            out.clear()
            lines = 0
    if out:
        yield _block(prefix, between, out)


def _block(prefix: str, between: str, texts: list[str]) -> str:
    """PREFIX, TEXTS joined by BETWEEN, and a newline: one join, the prefix and the newline
    added to the first and last texts (a block is about 400 KB: adding them to the joined
    text would copy it once more)."""
    texts[0] = prefix + texts[0]
    texts[-1] += "\n"
    return between.join(texts)


def render(ruleset: NodeRuleset, header: str | None = None) -> str:
    """The iptables-restore text; HEADER replaces the first comment line (the failsafe's)."""
    return "".join(blocks(ruleset, header))


def _encoded(pieces: Iterable[str]) -> bytes:
    """PIECES as one UTF-8 text, without ever holding it twice: BytesIO grows in place and
    hands its buffer over (a 100,000-rule member's iptables.rules is about 150 MB)."""
    buffer = io.BytesIO()
    for piece in pieces:
        buffer.write(piece.encode())
    return buffer.getvalue()


# -- the iptables target (fwc.backend.render.registry) ------------------------------------

def _failsafe_header(ruleset: NodeRuleset) -> str:
    family = "iptables" if ruleset.family == 4 else "ip6tables"
    return (f"# Fail-closed {family}-restore rules for member {ruleset.member} of cluster "
            f"{ruleset.cluster}: loaded by {path_of('fwc-firewall.sh')} only when the real "
            "rules fail to load.\n# Generated by fwc: edit the policy, not this file.")


def _file_blocks(build: MemberBuild, file: GeneratedFile) -> Iterator[str]:
    assert file.family is not None, file.name
    if file.reload is Reload.FAILSAFE:
        # From the lowered ruleset before the speed passes: the fallback names no ipset
        # (its large address products factored into chains instead).
        # Not shared: its INPUT chain (nearly all of it) names the member's own addresses,
        # so offering it to the next member only held its text (40 MB at 20,000 rules).
        ruleset = iptables_failsafe(build.lowered(file.family))
        yield from blocks(ruleset, _failsafe_header(ruleset))
        return
    rulesets, _ = build.optimised()
    yield from blocks(rulesets[file.family], None, build.texts, file.name)


def render_file(build: MemberBuild, file: GeneratedFile) -> bytes:
    """The file's UTF-8 text (built as bytes: see `_encoded`)."""
    return _encoded(_file_blocks(build, file))


def stream_file(build: MemberBuild, file: GeneratedFile) -> Iterator[bytes]:
    """The same bytes as `render_file`, in pieces as they are rendered (`fwc compile`
    writes them as they come: the file is never whole in memory)."""
    for piece in _file_blocks(build, file):
        yield piece.encode()
