"""Parse `*.fw` text into the syntax tree (`fwc.frontend.syntax`) with lark.

Syntax errors become diagnostics. After an error the offending line is blanked
and parsing resumes, so one run reports the syntax errors of several lines.
"""

from __future__ import annotations

import contextlib
import functools
import re
from collections.abc import Iterator
from typing import NamedTuple

from fwc.diagnostics import Diagnostic, Span, error
from fwc.frontend import close_matches
from fwc.frontend import syntax as s
from fwc.frontend.fastpath import (
    ACTIONS,
    ENDPOINT_KINDS,
    STATEMENT_KEYWORDS,
    FastPath,
    join_spans,
)
from fwc.frontend.hidden import hidden_character_diagnostics
from fwc.frontend.larkimport import (
    Lark,
    Token,
    Transformer,
    UnexpectedCharacters,
    UnexpectedEOF,
    UnexpectedInput,
    UnexpectedToken,
)
from fwc.frontend.tables import Tables, grammar_text
from fwc.frontend.tables import load as load_tables
from fwc.text import LiteralError, decode_literal, hidden_in_source

MAX_SYNTAX_ERRORS = 10

_TERMINAL_NAMES = {
    "NAME": "a name", "DEVICE": "a device name", "VIP_REF": "IFACE.vip",
    "VIP_NAMED_REF": "IFACE.vip.NAME",
    "IPV4": "an IPv4 address", "IPV6": "an IPv6 address", "ADDR_RANGE": "an address range",
    "SVC_SPEC": "a service such as tcp/22", "DURATION": "a duration such as 1s or 100ms",
    "INT": "a number", "STRING": "a quoted string", "ACTION": "accept, drop or reject",
    "NAT_KIND": "snat, dnat, masquerade or nonat", "VERDICT": "allow or deny",
    "ADDRESS_KIND": "host or network", "NEGATE": "!", "ANY": "any", "FIREWALL": "firewall",
    "KW_INCLUDE": "include", "KW_RANGE": "range", "KW_GROUP": "group",
    "KW_SERVICE": "service", "KW_CLUSTER": "cluster", "KW_POLICY": "policy", "KW_NAT": "nat",
    "KW_EXPECT": "expect", "UNICAST": "unicast", "MASTER": "master", "LINK_IPV4": "an IPv4 address",
    "SIGNED_INT": "a number such as -60",
    "LINK_IPV6": "an IPv6 address", "ROUTE_DEFAULT": "default", "KW_ROUTE": "route",
    "KW_ROUTE_RULE": "route-rule", "KW_VRRP_GROUP": "vrrp-group",
    "ROUTE_MARK": "a mark such as 0x10 or 0x10/0xff",
    "LOG": "log", "RATE": "a rate such as 10/second", "PER_SOURCE": "per-source",
    "NOTRACK": "notrack", "$END": "end of file", "LBRACE": "'{'", "RBRACE": "'}'", "COMMA": "','",
    "SEMICOLON": "';'", "COLON": "':'", "LSQB": "'['", "RSQB": "']'",
}


def _plugins() -> dict[str, object]:
    # lark-cython, when installed (extra `fast`), parses about 20% faster (1.75 -> 1.38 s for
    # 20,000 rules with this inline transformer); pure lark is the fallback.
    try:
        import lark_cython
    except ImportError:
        return {}
    return {"_plugins": lark_cython.plugins}


@functools.cache
def _tables() -> Tables:
    """The analysed grammar (LALR tables, terminals, rules) as plain data, once per process.

    Shipped with the package (`fwc.frontend.tables`: analysed at development time, loaded
    when made from this grammar and this lark, else analysed in memory). Never lark's
    `cache=True`: that option loads whatever pickle sits at a predictable name in the
    shared temp directory, so any local user could run code as whoever runs fwc. The
    result is only read afterwards (every parser deserialises its own objects from it).
    """
    return load_tables(grammar_text())


class PolicyParser:
    """A parser that builds the syntax tree while parsing, with spans naming the parsed file.

    The tree is built by an inline transformer (no intermediate lark tree), which is
    what makes 20,000-rule policies parse fast; spans come from tokens because lark's
    propagate_positions costs more than the parse itself. The transformer is this
    object's own, so a run (one `fwc.frontend.loader.load`) owns its parser and the path it sets
    for each parse can never leak into another run's spans. Not for use by two threads
    at once.
    """

    def __init__(self, keep_tokens: bool = False) -> None:
        self._builder = _Builder("<policy>")
        tables = _tables()
        # Comments reach the lexer callback although the grammar ignores them: the one
        # lexer that parses a file also finds its comments (`fwc fmt` keeps them). Only
        # comments call back, so a parse for `fwc check` pays nothing per token.
        self.comments: list[s.Lexeme] = []
        self.tokens: list[s.Lexeme] = []
        self.keep_tokens = keep_tokens
        callbacks = {"COMMENT": self._comment}
        if keep_tokens:
            callbacks |= {name: self._token for name in tables.terminals}
        # ~6 ms: the tables are analysed once per process, only the objects are per parser.
        self._lark = Lark._load_from_dict(tables.data, tables.memo, transformer=self._builder,
                                          lexer_callbacks=callbacks, **_plugins())

    def _comment(self, token: Token) -> Token:
        value = token.value.rstrip()
        # an ignored token carries no end position; a comment never spans lines
        self.comments.append(s.Lexeme(token.type, value, token.start_pos,
                                      token.start_pos + len(token.value), token.line,
                                      token.column, token.line, token.column + len(value)))
        return token

    def _token(self, token: Token) -> Token:
        # No terminal spans lines; the ends are computed because a callback may run
        # before the lexer (lark-cython) has filled them in.
        width = len(token.value)
        self.tokens.append(s.Lexeme(token.type, token.value, token.start_pos,
                                    token.start_pos + width, token.line, token.column,
                                    token.line, token.column + width))
        return token

    def parse(self, text: str, path: str, start: str = "start"):
        self._builder.path = path
        self.comments = []
        self.tokens = []
        return self._lark.parse(text, start=start)

    def _forget(self) -> None:
        """Let go of what the last parse left here (its comments, its tokens: a whole
        file's for `fwc fmt`), so that an idle parser holds nothing of a run."""
        self._builder.path = "<policy>"
        self.comments = []
        self.tokens = []


# Parsers that no run holds, by keep_tokens, for the next run of this process. Building
# a parser turns lark's tables into fresh objects (20-30 ms, most of `fwc check` on a
# small policy); a process that analyses many texts (`fwc diff`'s two revisions, a
# program that embeds fwc, the test suite: a third of its property tests' time) takes
# one from here instead. A parser is held by one run at a time and `parse` sets all a
# parse depends on, so a borrowed parser behaves exactly as a new one
# (tests/test_parser_construction.py). A list's pop and append are atomic: threads
# need no lock, and a forked child never finds one held.
_IDLE: dict[bool, list[PolicyParser]] = {False: [], True: []}
IDLE_MAX = 4  # per kind (threads may pass it briefly): more idle than concurrent runs is memory


@contextlib.contextmanager
def borrowed_parser(keep_tokens: bool = False) -> Iterator[PolicyParser]:
    """A parser for the duration of one run (one load, one format, one query): an idle
    one when there is, else a new one; idle again afterwards, holding nothing of the run.

    A parser binds its transformer and lexer callbacks when it is built: code that patches
    PolicyParser, _Builder or the tables (a test) empties `_IDLE` first, or it may be lent
    a parser built before the patch."""
    idle = _IDLE[keep_tokens]
    try:
        parser = idle.pop()
    except IndexError:
        parser = PolicyParser(keep_tokens)
    try:
        yield parser
    finally:
        parser._forget()
        if len(idle) < IDLE_MAX:
            idle.append(parser)


def _describe(terminal: str) -> str:
    if terminal in _TERMINAL_NAMES:
        return _TERMINAL_NAMES[terminal]
    return f'"{terminal.lower().replace("_", "-")}"' if terminal.isupper() else terminal


def _syntax_diagnostic(path: str, exc: UnexpectedInput, text: str,
                       fragment: frozenset[str] | None = None) -> Diagnostic:
    """FWC001 for EXC; FRAGMENT: the terminals of the fragment that was parsed, if any."""
    line = getattr(exc, "line", 0) or 0
    column = getattr(exc, "column", 0) or 0
    at_end = isinstance(exc, UnexpectedToken) and exc.token.type == "$END"
    if isinstance(exc, UnexpectedEOF) or line <= 0 or at_end:
        lines = text.splitlines() or [""]
        line, column = len(lines), len(lines[-1]) + 1
        end = Span(path, line, column, line, column)
        if fragment is not None:
            expected = sorted({_describe(t) for t in getattr(exc, "expected", ())
                               if t in fragment})
            return error("FWC001", f"{path} ends too early", end,
                         hint=f"expected {', '.join(expected[:8])}" if expected else None)
        return error("FWC001", "unexpected end of file", end,
                     hint="a block is not closed: check that every '{' has its '}'")
    expected: set[str] = set()
    found = ""
    width = 1
    if isinstance(exc, UnexpectedToken):
        expected = {t for t in exc.expected if not t.startswith("__")}
        found = f"'{exc.token}'" if exc.token.type != "$END" else "end of file"
        width = max(1, len(str(exc.token)))
    elif isinstance(exc, UnexpectedCharacters):
        expected = {t for t in (exc.allowed or ()) if not t.startswith("__")}
        found = f"character {text[exc.pos_in_stream]!r}" if exc.pos_in_stream < len(text) else ""
    if fragment is not None:
        expected &= fragment
    if isinstance(exc, UnexpectedToken):
        pos = exc.token.start_pos
    else:
        pos = getattr(exc, "pos_in_stream", None)
    if pos is not None and fragment is None:
        suggested = _suggestion(text, pos, expected)
        if suggested is not None:
            code, message, hint = suggested
            word, _ = _words_around(text, pos)
            span = Span(path, line, column, line, column + max(1, len(word)))
            return error(code, message, span, hint=hint)
    names = sorted({_describe(t) for t in expected})
    hint = None
    if names:
        shown = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
        hint = f"expected {shown}"
    span = Span(path, line, column, line, column + width)
    return error("FWC001", f"syntax error: unexpected {found}".rstrip(), span, hint=hint)


# Words admins reach for that the language spells otherwise, per terminal expected.
SYNONYMS = {
    "ACTION": {"allow": "accept", "permit": "accept", "pass": "accept", "deny": "drop",
               "block": "drop", "refuse": "reject"},
    "VERDICT": {"accept": "allow", "permit": "allow", "pass": "allow", "drop": "deny",
                "reject": "deny", "block": "deny"},
    "NAT_KIND": {"masq": "masquerade", "no-nat": "nonat", "source-nat": "snat",
                 "destination-nat": "dnat"},
}
# Keyword terminals by their spelling, for "did you mean" on a near miss.
_SPELLINGS = {
    "ACTION": ("accept", "drop", "reject"), "VERDICT": ("allow", "deny"),
    "NAT_KIND": ("snat", "dnat", "masquerade", "nonat"), "LOG": ("log",),
    "KW_SERVICE": ("service",), "NOTRACK": ("notrack",), "PER_SOURCE": ("per-source",),
}
_WORD = re.compile(r"[A-Za-z0-9_./:-]+")


def _words_around(text: str, pos: int) -> tuple[str, str]:
    """The word at POS and the word before it (on the same line)."""
    match = _WORD.match(text, pos)
    word = match.group(0) if match else ""
    line_start = text.rfind("\n", 0, pos) + 1
    before = _WORD.findall(text[line_start:pos])
    return word, before[-1] if before else ""


def _suggestion(text: str, pos: int, expected: set[str]) -> tuple[str, str, str] | None:
    """(code, message, hint) for a mistake fwc recognises at POS, else None."""
    word, before = _words_around(text, pos)
    if not word:
        return None
    protocols = ("tcp", "udp", "sctp", "dccp", "icmp", "icmpv6")
    if before in protocols and re.fullmatch(r"[0-9A-Za-z-]+(?:,[0-9A-Za-z-]+)*", word) \
            and (word[0].isdigit() or before.startswith("icmp")):
        return ("FWC020", f"'{before} {word}': a service is written protocol/port",
                f"did you mean {before}/{word}?")
    lower = word.lower()
    for terminal, table in SYNONYMS.items():
        if terminal in expected and lower in table:
            return ("FWC021", f"unknown keyword '{word}'",
                    f"did you mean '{table[lower]}'? (expected {_expected_text(expected)})")
    spellings = [s for t in expected for s in _SPELLINGS.get(t, ())]
    spellings += [t.strip('"') for t in (_describe(t) for t in expected)
                  if t.startswith('"') and t.endswith('"')]
    close = close_matches(lower, spellings, n=1, cutoff=0.75)
    if close and close[0] != lower:
        return ("FWC021", f"unknown keyword '{word}'",
                f"did you mean '{close[0]}'? (expected {_expected_text(expected)})")
    return None


def _expected_text(expected: set[str]) -> str:
    names = sorted({_describe(t) for t in expected})
    return ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")


def _blank_line(text: str, line: int) -> str:
    lines = text.split("\n")
    if 1 <= line <= len(lines):
        lines[line - 1] = " " * len(lines[line - 1])
    return "\n".join(lines)


def _blank_characters(text: str, hidden: list[tuple[int, str]]) -> str:
    if not hidden:
        return text
    chars = list(text)
    for index, _char in hidden:
        chars[index] = " "
    return "".join(chars)


class BadLiteral(Exception):  # noqa: N818 - a syntax error, like lark's
    """Raised by the tree builder for a string literal that cannot be decoded."""

    def __init__(self, diagnostic: Diagnostic) -> None:
        super().__init__(diagnostic.message)
        self.diagnostic = diagnostic


def parse_text(text: str, path: str, parser: PolicyParser | None = None,
               fast: bool = True, lines: bool = False) -> tuple[s.SourceFile, list[Diagnostic]]:
    """Parse TEXT, spans naming PATH; PARSER is reused across the files of one run.

    The plain lines go through the fast path (`_parse_fast`); whenever it is not sure, and
    whenever the text has an error, lark parses the whole text, so the diagnostics are
    always lark's. FAST=False: lark parses every line (the tests compare both ways).
    LINES (with FAST): most plain rule lines of a `policy` block become s.RuleLine records
    instead of RuleDecl, for a caller that only resolves the tree (`fwc.frontend.loader.load`).
    """
    if parser is None:
        with borrowed_parser() as own:
            return parse_text(text, path, own, fast, lines)
    hidden = hidden_in_source(text)
    if fast and not parser.keep_tokens and not hidden:
        got = _parse_fast(text, path, parser, lines)
        if got is not None:
            return got, []
    diagnostics = hidden_character_diagnostics(text, path, hidden)
    # Each one a blank for the parser (one character for one: the columns stay), so that
    # the syntax errors of the same text are found in the same run.
    attempt = _blank_characters(text, hidden)
    tree: list | None = None
    seen_lines: set[int] = set()
    while tree is None:
        try:
            tree = parser.parse(attempt, path)
        except BadLiteral as bad:
            # Like a syntax error: report it, blank its line and look for more.
            diagnostics.append(bad.diagnostic)
            line = bad.diagnostic.span.line if bad.diagnostic.span else 0
            if line <= 0 or line in seen_lines or len(diagnostics) >= MAX_SYNTAX_ERRORS:
                return s.SourceFile(path, text, ()), diagnostics
            seen_lines.add(line)
            attempt = _blank_line(attempt, line)
        except UnexpectedInput as exc:
            diagnostics.append(_syntax_diagnostic(path, exc, attempt))
            line = getattr(exc, "line", 0) or 0
            at_end = isinstance(exc, UnexpectedToken) and exc.token.type == "$END"
            if (isinstance(exc, UnexpectedEOF) or at_end or line <= 0 or line in seen_lines
                    or len(diagnostics) >= MAX_SYNTAX_ERRORS):
                return s.SourceFile(path, text, ()), diagnostics
            seen_lines.add(line)
            attempt = _blank_line(attempt, line)
    if diagnostics:
        # The tree of a repaired text would hide what was removed; keep only errors.
        return s.SourceFile(path, text, ()), diagnostics
    return s.SourceFile(path, text, tuple(tree), tuple(parser.comments)), diagnostics


# What may follow the last line of a run (see `_parse_fast`): the next significant line
# must start with a token that can only begin the next rule (or close the block), or the
# next top-level statement (or the file ends).
# The keywords are the fast path's (an action starts a rule, STATEMENT_KEYWORDS a statement).
_AFTER_RULES = re.compile(r"[ \t\r\f]*(?:\}|(?:" + "|".join(sorted(ACTIONS))
                          + r")(?:[ \t\r\f]|$))")
_AFTER_DEFINITIONS = re.compile(r"[ \t\r\f]*(?:" + "|".join(sorted(STATEMENT_KEYWORDS))
                                + r")(?:[ \t\r\f]|$)")


class _Run(NamedTuple):
    """Consecutive fast lines of one kind (only blank and comment lines between them)."""

    rules: bool  # rules of a policy block, else top-level definitions
    first_line: int  # 1-based; lark parses this line, the others are blanked
    first: object  # the fast path's node for the first line
    rest: list  # the fast path's nodes for the others, in order
    rest_lines: list[int]  # their 0-based line indexes


def _runs(lines: list[str], fast: FastPath, plain: bool = False) -> list[_Run]:
    """The runs of fast lines, each ended where the next significant line cannot continue
    its last statement (a last line that fails this goes back to lark)."""
    runs: list[_Run] = []
    current: _Run | None = None

    def close(run: _Run, following: str | None) -> None:
        after = _AFTER_RULES if run.rules else _AFTER_DEFINITIONS
        if following is not None and not after.match(following) and run.rest:
            run.rest.pop()
            run.rest_lines.pop()
        if run.rest:
            runs.append(run)

    plain_rule = fast.plain_rule
    reading_lines = False  # PLAIN and in a run of rules (`current.rules`)
    add_node = add_index = [].append  # the current run's `rest` and `rest_lines` (below)
    for index, line in enumerate(lines):
        if reading_lines:
            # PLAIN: after a run's first rule (a RuleDecl, compared with lark's), a plain
            # rule line is kept as it matched (s.RuleLine), read into the model later.
            node: object = plain_rule(line, index + 1)
            if node is not None:
                add_node(node)
                add_index(index)
                continue
        stripped = line.strip(" \t\r\f")
        if not stripped or stripped[0] == "#":
            continue
        rules = stripped[0] in "adr"  # accept, drop, reject; else host, network, group, service
        node = fast.rule(line, index + 1) if rules else fast.definition(line, index + 1)
        if current is not None and node is not None and current.rules == rules:
            current.rest.append(node)
            current.rest_lines.append(index)
            continue
        if current is not None:
            close(current, line)
        current = _Run(rules, index + 1, node, [], []) if node is not None else None
        reading_lines = plain and current is not None and rules
        if current is not None:
            add_node, add_index = current.rest.append, current.rest_lines.append
    if current is not None:
        close(current, None)
    return runs


def _parse_fast(text: str, path: str, parser: PolicyParser,
                plain: bool = False) -> s.SourceFile | None:
    """TEXT parsed with the fast path for its plain lines, or None: lark must parse it all.

    Every run of consecutive fast lines keeps its first line; the others are emptied (the
    line breaks stay, so lark's lines and columns are those of TEXT; the offsets of the
    comments lark reads are moved back to TEXT's) and lark parses the rest. Lark's node
    for a run's first line must equal the fast path's (a rule of a `policy` block, or a
    top-level definition): then lark stood at a statement boundary before it and the next
    significant line did not continue it, so the emptied lines after it, each a complete
    statement of the same kind starting with a keyword that cannot continue the one
    before, are what lark would have parsed there. Any syntax error, or any doubt, and the
    caller parses the whole text with lark.
    PLAIN: the plain rule lines after a run's first are s.RuleLine records (see `parse_text`).
    """
    lines = text.split("\n")
    runs = _runs(lines, FastPath(_tables().patterns, path), plain)
    if not runs:
        return None
    blanked = list(lines)
    for run in runs:
        for index in run.rest_lines:
            blanked[index] = ""  # (lark skipped ~1.6 MB of spaces in a 20,000-rule policy)
    try:
        tree = parser.parse("\n".join(blanked), path)
    except (UnexpectedInput, BadLiteral):
        return None
    statements: list = list(tree)
    top: dict[int, int] = {}  # first line -> index of the top-level statement
    rules: dict[int, tuple[int, int]] = {}  # first line -> (policy block, rule) indexes
    for k, statement in enumerate(statements):
        top.setdefault(statement.span.line, k)
        if isinstance(statement, s.BlockDecl) and statement.kind == "policy":
            for j, rule in enumerate(statement.rules):
                rules.setdefault(rule.span.line, (k, j))
    after_statement: dict[int, list] = {}
    after_rule: dict[tuple[int, int], list] = {}
    for run in runs:
        if run.rules:
            where = rules.get(run.first_line)
            if where is None or statements[where[0]].rules[where[1]] != run.first:
                return None
            after_rule[where] = run.rest
        else:
            k = top.get(run.first_line)
            if k is None or statements[k] != run.first:
                return None
            after_statement[k] = run.rest
    merged: list = []
    blocks_with_runs = {k for k, _ in after_rule}
    for k, statement in enumerate(statements):
        if isinstance(statement, s.BlockDecl) and k in blocks_with_runs:
            block_rules: list = []
            for j, rule in enumerate(statement.rules):
                block_rules.append(rule)
                block_rules.extend(after_rule.get((k, j), ()))
            statement = s.BlockDecl(statement.kind, statement.name, tuple(block_rules),
                                    join_spans(statement.name.span, block_rules[-1].span))
        merged.append(statement)
        merged.extend(after_statement.get(k, ()))
    return s.SourceFile(path, text, tuple(merged), _in_text(parser.comments, lines))


def _in_text(comments: list[s.Lexeme], lines: list[str]) -> tuple[s.Lexeme, ...]:
    """COMMENTS lark read in a text whose lines are LINES but some emptied (`_parse_fast`),
    with their offsets in the whole text (lines and columns are the same in both)."""
    if not comments:
        return ()
    starts = [0]
    for line in lines[:max(c.line for c in comments)]:  # (where the last comment is)
        starts.append(starts[-1] + len(line) + 1)
    return tuple(c._replace(start=starts[c.line - 1] + c.column - 1,
                            end=starts[c.line - 1] + c.column - 1 + c.end - c.start)
                 for c in comments)


def parse_fragment(text: str, what: str, start: str, parser: PolicyParser | None = None) \
        -> tuple[object, list[Diagnostic]]:
    """Parse TEXT, the value of command-line argument WHAT, from the grammar rule START.

    Spans name WHAT (`--from:1:5`), so a diagnostic points into the argument. The
    value is what the tree builder makes of that rule (None after an error).
    """
    if parser is None:
        with borrowed_parser() as own:
            return parse_fragment(text, what, start, own)
    try:
        return parser.parse(text, what, start), []
    except BadLiteral as bad:
        return None, [bad.diagnostic]
    except UnexpectedInput as exc:
        terminals = _tables().fragment_terminals[start]
        return None, [_syntax_diagnostic(what, exc, text, fragment=terminals)]


def _route_valued(key: str):
    """A `route`/`route-rule` option: (key, the value word), spanning the value."""
    def build(self: _Builder, children: list) -> s.Option:
        value = self.word(children[-1])
        return s.Option(key, value, value.span)
    return build


class _Builder(Transformer):
    """Builds `fwc.frontend.syntax` nodes during the LALR parse (one method per grammar rule).

    Children arrive already transformed: tokens for terminals, syntax nodes or
    (key, value, span) triples for the rules below.
    """

    def __init__(self, path: str) -> None:
        super().__init__(visit_tokens=False)
        self.path = path

    def span(self, token: Token) -> Span:
        return Span(self.path, token.line, token.column, token.end_line, token.end_column)

    def word(self, token: Token) -> s.Word:
        text = token.value
        if token.type == "STRING":
            text = self.string(token)
        return s.Word(text, self.span(token))

    def string(self, token: Token) -> str:
        """A literal's value as docs/language.md defines it; FWC004 at the offending character."""
        try:
            return decode_literal(token.value[1:-1])
        except LiteralError as exc:
            # A STRING token never spans lines; +1 skips the opening quote.
            column = token.column + 1 + exc.offset
            span = Span(self.path, token.line, column, token.line, column + 1)
            raise BadLiteral(error("FWC004", exc.message, span, hint=exc.hint)) from None

    def endpoint_of(self, token: Token, negated: bool, span: Span | None = None) -> s.Endpoint:
        kind = ENDPOINT_KINDS[token.type]
        text = token.value[: -len(".vip")] if kind == "vip" else token.value
        return s.Endpoint(kind, text, negated, span or self.span(token))

    def service_ref(self, token: Token) -> s.ServiceRef:
        return s.ServiceRef("spec" if token.type == "SVC_SPEC" else "name", token.value,
                            self.span(token))

    # -- top level ---------------------------------------------------------------
    def start(self, children: list) -> list:
        return children

    def endpoints_fragment(self, children: list) -> tuple[s.Endpoint, ...]:
        return children[0]

    def services_fragment(self, children: list) -> tuple[s.ServiceRef, ...]:
        return tuple(self.service_ref(c) for c in children)

    def include(self, children: list) -> s.Include:
        _keyword, path_token = children
        if path_token.type == "LIBRARY_FILE":
            path = s.Word(path_token.value[1:-1], self.span(path_token))
            return s.Include(path, path.span, library=True)
        path = self.word(path_token)
        return s.Include(path, path.span)

    def address_def(self, children: list) -> s.AddressDef:
        kind, name, *values = children
        words = tuple(self.word(v) for v in values)
        return s.AddressDef(kind.value, self.word(name), words,
                            join_spans(self.span(kind), words[-1].span))

    def range_def(self, children: list) -> s.AddressDef:
        _keyword, name, value = children
        value_word = self.word(value)
        return s.AddressDef("range", self.word(name), (value_word,),
                            join_spans(self.word(name).span, value_word.span))

    def group_def(self, children: list) -> s.GroupDef:
        _keyword, name, *items = children
        name_word = self.word(name)
        members = tuple(self.endpoint_of(i, False) for i in items)
        last = members[-1].span if members else name_word.span
        return s.GroupDef(name_word, members, join_spans(name_word.span, last))

    def helper(self, children: list) -> tuple[str, s.Word]:
        return ("helper", self.word(children[0]))

    def service_def(self, children: list) -> s.ServiceDef:
        _keyword, name, *rest = children
        helper = None
        if rest and isinstance(rest[-1], tuple):
            helper = rest.pop()[1]
        items = tuple(self.service_ref(i) for i in rest)
        name_word = self.word(name)
        last = helper.span if helper else items[-1].span
        return s.ServiceDef(name_word, items, helper, join_spans(name_word.span, last))

    # -- options: (key, value word or None, span) ----------------------------------------
    def _valued(key: str):  # noqa: N805 - a factory used in the class body
        def build(self: _Builder, children: list) -> s.Option:
            value = self.word(children[-1])
            return s.Option(key, value, value.span)
        return build

    password = _valued("password")
    password_file = _valued("password-file")
    auth = _valued("auth")
    advert = _valued("advert")
    version = _valued("version")
    preempt = _valued("preempt")
    preempt_delay = _valued("preempt-delay")
    vrid = _valued("vrid")
    garp_refresh = _valued("garp-refresh")
    sync_link = _valued("sync-link")
    sync_mode = _valued("sync-mode")
    sync_port = _valued("port")
    mark_bit = _valued("mark-bit")
    priority = _valued("priority")
    ssh = _valued("ssh")
    opt_in = _valued("in")
    opt_out = _valued("out")
    opt_only = _valued("only")
    unicast = _valued("unicast")
    master = _valued("master")
    backend = _valued("backend")
    log_level = _valued("log-level")
    log_rate = _valued("log-rate")
    log_burst = _valued("log-burst")
    log_group = _valued("log-group")
    default_input = _valued("input")
    default_forward = _valued("forward")
    default_output = _valued("output")
    commit_timeout = _valued("commit-timeout")
    external_cache = _valued("external-cache")
    conntrack_max = _valued("conntrack-max")
    hash_size = _valued("hash-size")
    opt_with = _valued("with")
    opt_connlimit = _valued("connlimit")
    vrrp_unicast = _valued("unicast")
    track_weight = _valued("weight")
    track_interval = _valued("interval")
    track_fall = _valued("fall")
    track_rise = _valued("rise")
    del _valued

    def log_drops(self, children: list) -> s.Option:
        keyword = self.span(children[0])
        if len(children) > 1:
            value = self.word(children[1])
            return s.Option("log-drops", value, join_spans(keyword, value.span))
        return s.Option("log-drops", None, keyword)

    def _listed(self, key: str, children: list) -> s.Option:
        """`protocols tcp, udp`: one option whose value is the list joined by commas."""
        words = [self.word(c) for c in children]
        span = join_spans(words[0].span, words[-1].span)
        return s.Option(key, s.Word(",".join(w.text for w in words), span), span)

    def sync_protocols(self, children: list) -> s.Option:
        return self._listed("protocols", children)

    def sync_states(self, children: list) -> s.Option:
        return self._listed("states", children)

    def backup_link(self, children: list) -> list[s.Option]:
        link = self.word(children[0])
        out = [s.Option("backup-link", link, link.span)]
        if len(children) > 1:
            port = self.word(children[1])
            out.append(s.Option("backup-port", port, port.span))
        return out

    def mss(self, children: list) -> s.Option:
        value = self.word(children[0])
        return s.Option("mss", value, value.span)

    @staticmethod
    def _clause(options: list[s.Option]) -> list[s.Option]:
        """A rule option with parameters (`limit 10/second burst 20`): every part's span ends
        where the clause ends, so that `fwc fmt` keeps it on one cell; each value keeps its
        own span for diagnostics."""
        spans = [o.value.span if o.value is not None else o.span for o in options]
        whole = join_spans(spans[0], max(spans, key=lambda sp: (sp.end_line, sp.end_column)))
        return [s.Option(o.key, o.value, whole) for o in options]

    def opt_limit(self, children: list) -> list[s.Option]:
        rate = self.word(children[0])
        options = [s.Option("limit", rate, rate.span)]
        for token in children[1:]:
            word = self.word(token)
            key = "per-source" if token.type == "PER_SOURCE" else "limit-burst"
            options.append(s.Option(key, word, word.span))
        return self._clause(options)

    def opt_syn_limit(self, children: list) -> list[s.Option]:
        rate = self.word(children[0])
        options = [s.Option("syn-limit", rate, rate.span)]
        if len(children) > 1:
            burst = self.word(children[1])
            options.append(s.Option("syn-limit-burst", burst, burst.span))
        return self._clause(options)

    def opt_notrack(self, children: list) -> s.Option:
        return s.Option("notrack", None, self.span(children[0]))


    def sync_allow(self, children: list) -> s.ServicesOption:
        services = tuple(self.service_ref(c) for c in children)
        return s.ServicesOption("allow", None, join_spans(services[0].span, services[-1].span),
                                services)

    def _make_track(self, kind: str, children: list) -> s.TrackDecl:
        target, *options = children
        target_word = self.word(target)
        # The keyword is an anonymous token without a position: the item's span starts
        # at its target (`ping 198.51.100.9 ...` is reported at the address).
        last = options[-1].span if options else target_word.span
        return s.TrackDecl(s.Word(kind, target_word.span), target_word, tuple(options),
                           join_spans(target_word.span, last))

    def track_interface(self, children: list) -> s.TrackDecl:
        return self._make_track("interface", children)

    def track_ping(self, children: list) -> s.TrackDecl:
        return self._make_track("ping", children)

    def track_process(self, children: list) -> s.TrackDecl:
        return self._make_track("process", children)

    def track_script(self, children: list) -> s.TrackDecl:
        return self._make_track("script", children)

    def track(self, children: list) -> tuple[str, tuple[s.TrackDecl, ...]]:
        return ("track", tuple(children))

    def notify_action(self, children: list) -> s.Option:
        state, command = children
        state_word, command_word = self.word(state), self.word(command)
        return s.Option(state_word.text, command_word,
                        join_spans(state_word.span, command_word.span))

    def vrrp_group_interfaces(self, children: list) -> tuple[str, tuple[s.Word, ...]]:
        return ("interface", tuple(self.word(c) for c in children))

    def vrrp_group_master(self, children: list) -> tuple[str, tuple[s.Word, ...]]:
        return ("master", (self.word(children[-1]),))

    def vrrp_group(self, children: list) -> s.VrrpGroupDecl:
        keyword, name, *items = children
        first, name_word = self.word(keyword), self.word(name)
        interfaces = tuple(w for kind, words in items if kind == "interface" for w in words)
        masters = tuple(w for kind, words in items if kind == "master" for w in words)
        last = max((w.span for w in (name_word, *interfaces, *masters)),
                   key=lambda sp: (sp.end_line, sp.end_column))
        return s.VrrpGroupDecl(name_word, interfaces, masters, join_spans(first.span, last))

    def notify(self, children: list) -> tuple[str, tuple[s.Option, ...]]:
        return ("notify", tuple(children))

    def multicast(self, children: list) -> list[s.Option]:
        group = self.word(children[0])
        out = [s.Option("multicast", group, group.span)]
        if len(children) > 1:
            port = self.word(children[1])
            out.append(s.Option("port", port, port.span))
        return out

    def _options_block(self, kind: str, children: list) -> tuple[str, tuple[s.Option, ...]]:
        flat: list[s.Option] = []
        for child in children:
            flat.extend(child if isinstance(child, list) else [child])
        return (kind, tuple(flat))

    def vrrp(self, children: list) -> tuple[str, tuple[s.Option, ...]]:
        return self._options_block("vrrp", children)

    def sync(self, children: list) -> tuple[str, tuple[s.Option, ...]]:
        return self._options_block("sync", children)

    def log_defaults(self, children: list) -> tuple[str, tuple[s.Option, ...]]:
        return self._options_block("log", children[1:])  # after the `log` keyword

    def defaults(self, children: list) -> tuple[str, tuple[s.Option, ...]]:
        return self._options_block("default", children)

    def named_vip(self, children: list) -> tuple[s.Word, s.Word]:
        name, address = children
        return (self.word(name), self.word(address))

    def vips(self, children: list) -> tuple[str, tuple[tuple[s.Word | None, s.Word], ...]]:
        return ("vips", tuple(c if isinstance(c, tuple) else (None, self.word(c))
                              for c in children))

    def interface(self, children: list) -> s.InterfaceDecl:
        name, *opts = children
        vips: list[s.Word] = []
        names: list[s.Word | None] = []
        vrid = None
        mss = None
        for opt in opts:
            if isinstance(opt, s.Option):
                if opt.key == "mss":
                    mss = opt.value
                else:
                    vrid = opt.value
            else:
                for vip_name, address in opt[1]:
                    names.append(vip_name)
                    vips.append(address)
        name_word = self.word(name)
        last = max([name_word.span, *(v.span for v in vips), *([vrid.span] if vrid else []),
                    *([mss.span] if mss else [])],
                   key=lambda sp: (sp.end_line, sp.end_column))
        return s.InterfaceDecl(name_word, tuple(vips), vrid, join_spans(name_word.span, last),
                               tuple(names), mss)

    def member_link(self, children: list) -> s.MemberLink:
        iface, device, *addresses = children
        words = tuple(self.word(a) for a in addresses)
        iface_word = self.word(iface)
        device_word = self.word(device)
        return s.MemberLink(iface_word, device_word, words,
                            join_spans(iface_word.span, (words[-1] if words else device_word).span))

    def member(self, children: list) -> s.MemberDecl:
        name, *rest = children
        options = tuple(c for c in rest if isinstance(c, s.Option))
        links = tuple(c for c in rest if isinstance(c, s.MemberLink))
        name_word = self.word(name)
        last = links[-1].span if links else (options[-1].span if options else name_word.span)
        return s.MemberDecl(name_word, options, links, join_spans(name_word.span, last))

    def cluster(self, children: list) -> s.ClusterDecl:
        _keyword, name, *items = children
        blocks: dict[str, list] = {"vrrp": [], "sync": [], "track": [], "notify": [], "log": [],
                                   "default": []}
        block_spans: dict[str, Span | None] = dict.fromkeys(blocks)
        interfaces = tuple(i for i in items if isinstance(i, s.InterfaceDecl))
        members = tuple(i for i in items if isinstance(i, s.MemberDecl))
        routes = tuple(i for i in items if isinstance(i, s.RouteDecl | s.RouteRuleDecl))
        groups = tuple(i for i in items if isinstance(i, s.VrrpGroupDecl))
        backend = tuple(i for i in items if isinstance(i, s.Option))
        for item in items:
            if not isinstance(item, tuple) or isinstance(item, s.Option):
                continue
            kind, options = item
            blocks[kind].extend(options)
            if options:
                block_spans[kind] = block_spans[kind] or join_spans(options[0].span,
                                                               options[-1].span)
        name_word = self.word(name)
        spans = [name_word.span, *(i.span for i in interfaces), *(m.span for m in members),
                 *(r.span for r in routes), *(g.span for g in groups)]
        last = max(spans, key=lambda sp: (sp.end_line, sp.end_column))
        return s.ClusterDecl(name_word, tuple(blocks["vrrp"]), block_spans["vrrp"],
                             tuple(blocks["sync"]), block_spans["sync"], interfaces, members,
                             join_spans(name_word.span, last), backend, tuple(blocks["track"]),
                             block_spans["track"], tuple(blocks["notify"]),
                             block_spans["notify"], routes, groups=groups, log=tuple(blocks["log"]),
                             log_span=block_spans["log"], defaults=tuple(blocks["default"]),
                             defaults_span=block_spans["default"])

    # -- routing (`route`, `route-rule`) ------------------------------------------------
    route_via = _route_valued("via")
    route_dev = _route_valued("dev")
    route_table = _route_valued("table")
    route_src = _route_valued("src")
    route_metric = _route_valued("metric")
    route_follow = _route_valued("follow")
    route_only = _route_valued("only")
    route_in = _route_valued("in")
    route_mark = _route_valued("mark")
    route_priority = _route_valued("priority")
    route_probe = _route_valued("probe")
    route_interval = _route_valued("interval")
    route_fall = _route_valued("fall")
    route_rise = _route_valued("rise")

    def route_from(self, children: list) -> tuple[str, tuple[s.Word, ...]]:
        return ("from", tuple(self.word(c) for c in children))

    def route_to(self, children: list) -> tuple[str, tuple[s.Word, ...]]:
        return ("to", tuple(self.word(c) for c in children))

    def route(self, children: list) -> s.RouteDecl:
        keyword, destination_token, *options = children
        destination = self.word(destination_token)
        last = options[-1].span if options else destination.span
        return s.RouteDecl(destination, tuple(options), join_spans(self.span(keyword), last))

    def route_rule(self, children: list) -> s.RouteRuleDecl:
        keyword, *rest = children
        sources: list[s.Word] = []
        destinations: list[s.Word] = []
        options: list[s.Option] = []
        spans: list[Span] = [self.span(keyword)]
        for child in rest:
            if isinstance(child, s.Option):
                options.append(child)
                spans.append(child.span)
            else:
                kind, words = child
                (sources if kind == "from" else destinations).extend(words)
                spans.extend(w.span for w in words)
        last = max(spans, key=lambda sp: (sp.end_line, sp.end_column))
        return s.RouteRuleDecl(tuple(sources), tuple(destinations), tuple(options),
                               join_spans(spans[0], last))

    # -- rules ----------------------------------------------------------------------
    def endpoints(self, children: list) -> tuple[s.Endpoint, ...]:
        return tuple(children)

    def endpoint(self, children: list) -> s.Endpoint:
        if len(children) == 1:
            return self.endpoint_of(children[0], False)
        bang, token = children
        return self.endpoint_of(token, True, join_spans(self.span(bang), self.span(token)))

    def opt_service(self, children: list) -> tuple[s.ServiceRef, ...]:
        return tuple(self.service_ref(c) for c in children[1:])  # after the keyword

    def opt_log(self, children: list) -> s.Option | list[s.Option]:
        keyword = self.span(children[0])
        rest = children[1:]
        prefix = None
        if rest and not isinstance(rest[0], s.Option):
            prefix = self.word(rest.pop(0))
        params = [p for p in rest if isinstance(p, s.Option)]
        last = max([keyword, *([prefix.span] if prefix else []), *(p.span for p in params)],
                   key=lambda sp: (sp.end_line, sp.end_column))
        whole = join_spans(keyword, last)
        log = s.Option("log", prefix, whole)
        if not params:
            return log
        # every part spans the whole clause (fwc fmt keeps it together); values keep theirs
        return [log, *(s.Option(p.key, p.value, whole) for p in params)]

    def nat_target(self, children: list) -> s.NatTargetDecl:
        what = children[0]
        port = self.word(children[1]) if len(children) > 1 else None
        port_high = self.word(children[2]) if len(children) > 2 else None
        kind = {"NAME": "name", "VIP_REF": "vip", "VIP_NAMED_REF": "named_vip",
                "ADDR_RANGE": "range"}.get(what.type, "address")
        text = what.value[: -len(".vip")] if kind == "vip" else what.value
        span = self.span(what)
        end = port_high or port
        return s.NatTargetDecl(kind, text, port, join_spans(span, end.span) if end else span,
                               port_high)

    def rule(self, children: list) -> s.RuleDecl:
        action, sources, destinations, *rest = children
        options: list[s.Option] = []
        services: tuple[s.ServiceRef, ...] = ()
        targets: list[s.NatTargetDecl] = []
        last = destinations[-1].span
        for child in rest:
            if isinstance(child, s.Option):
                options.append(child)
                last = child.span
            elif isinstance(child, list):  # an option with parameters
                options.extend(child)
                last = child[-1].span
            elif isinstance(child, s.NatTargetDecl):
                targets.append(child)
                last = child.span
            else:
                services = services + child
                options.append(s.Option("service", None, join_spans(child[0].span, child[-1].span)))
                last = child[-1].span
        action_word = self.word(action)
        return s.RuleDecl(action_word, sources, destinations, tuple(options), services,
                          targets[0] if targets else None, join_spans(action_word.span, last),
                          tuple(targets[1:]))

    nat_rule = rule

    def expect_in(self, children: list) -> s.Option:
        value = self.word(children[0])
        return s.Option("in", value, value.span)

    def expect_via(self, children: list) -> s.Option:
        value = self.word(children[0])
        return s.Option("via", value, value.span)

    def expectation(self, children: list) -> s.RuleDecl:
        verdict, sources, destinations, *rest = children
        options = tuple(c for c in rest if isinstance(c, s.Option))
        services = tuple(self.service_ref(c) for c in rest
                         if not isinstance(c, s.Option) and c.type != "KW_SERVICE")
        verdict_word = self.word(verdict)
        spans = [destinations[-1].span, *(o.span for o in options), *(x.span for x in services)]
        last = max(spans, key=lambda sp: (sp.end_line, sp.end_column))
        return s.RuleDecl(verdict_word, sources, destinations, options, services, None,
                          join_spans(verdict_word.span, last))

    def _block(self, kind: str, children: list) -> s.BlockDecl:
        _keyword, name, *rules = children
        name_word = self.word(name)
        last = rules[-1].span if rules else name_word.span
        return s.BlockDecl(kind, name_word, tuple(rules), join_spans(name_word.span, last))

    def policy(self, children: list) -> s.BlockDecl:
        return self._block("policy", children)

    def nat(self, children: list) -> s.BlockDecl:
        return self._block("nat", children)

    def expect(self, children: list) -> s.BlockDecl:
        return self._block("expect", children)
