"""The parser's fast path: the plain one-line statements that make up most of a large policy.

A 20,000-rule policy is almost all lines like `accept from a, b to c service s in x out y`,
`host NAME ADDR`, `group NAME a, b` or `service NAME tcp/22`. Lark spends most of its time
on them (tokens, LALR steps, tree-builder callbacks); this module reads such a line itself
and builds the same syntax nodes, with the same spans, as the tree builder of
`fwc.frontend.parse` would. It answers None for any line it is not sure of, and
`parse.parse_text` hands those lines to lark.

It cannot read a line otherwise than lark because it lexes as lark's contextual lexer
does: the line is cut into words, commas, bangs and strings, and each word is read, in
the parser state the fast path is in, by the terminals lark accepts in that state, tried
in lark's own order (priority, then width: the first alternative that matches wins) with
the grammar's own regular expressions (`Patterns`, taken from the analysed grammar); the
terminal must take the whole word (a word ends at a space, a comma or the end of the
line). Anything else (a comment, a string it cannot decode, an option it does not read, a
keyword where lark would start the next statement) defers the line. Whether a line stands
where such a statement may start, and ends where it must end, is decided by
`parse.parse_text` with lark's help (see `parse._parse_fast`).
tests/test_parse_fastpath.py compares both ways on every policy of the repository, the
bench shapes, and random and mutated lines.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import NamedTuple

from fwc.diagnostics import Span
from fwc.frontend import syntax as s
from fwc.model.records import maker
from fwc.text import LiteralError, decode_literal

# The terminals lark's lexer tries in the states the fast path reads (NEGATE, COMMA and the
# keywords are written out below: nothing else they compete with can match there).
_ENDPOINT = ("ADDR_RANGE", "VIP_NAMED_REF", "VIP_REF", "IPV4", "IPV6", "ANY", "FIREWALL",
             "NAME")
_ADDRESS = ("IPV4", "IPV6")
_GROUP_ITEM = ("NAME", "IPV4", "IPV6", "ADDR_RANGE")
_SERVICE_ITEM = ("SVC_SPEC", "NAME")
_LEXED = frozenset(_ENDPOINT + _GROUP_ITEM + _SERVICE_ITEM + ("STRING",))
# After `group NAME` the next statement may start: its keyword outranks a member's name.
STATEMENT_KEYWORDS = frozenset({"include", "host", "network", "range", "group", "service",
                                "cluster", "policy", "nat", "expect"})

ENDPOINT_KINDS = {"NAME": "name", "VIP_REF": "vip", "VIP_NAMED_REF": "named_vip",
                  "IPV4": "address", "IPV6": "address", "ADDR_RANGE": "range",
                  "ANY": "any", "FIREWALL": "firewall"}

_SPACE = " \t\r\f"  # what lark ignores, but \n: a line holds none
ACTIONS = frozenset({"accept", "drop", "reject"})
_DEFINITIONS = frozenset({"host", "network", "group", "service"})
_NAMED_OPTIONS = frozenset({"in", "out", "only"})

# A plain rule line (`fwc.frontend.syntax.RuleLine`): the usual options, each at most once and
# in this order, endpoints and services without `!`, strings other than a plain log prefix,
# or inline services (no `/`). A word is what `FastPath._tokens` cuts (it ends at a space or
# a comma); `FastPath.plain_rule` asks the fast path's own word checks of each, so a line
# it takes is one `FastPath.rule` reads into the same statement. Group 1 is the rule (its
# span), then one group per part: 2 action, 3 sources, 4 destinations, 5 services, 6 in,
# 7 out, 8 log, 9 its prefix, 10 only (`Resolver.line_rule` reads them by number).
#
# Written for Python's regular expression engine, which made this match about a tenth of
# the serial front (12k instructions a line): every quantifier is possessive (`*+`, `++`:
# no state kept to give characters back; none could help, as a word never continues with
# a space, a comma or a keyword) and each optional part is an alternation with the empty
# string (`(?:X|)`, a BRANCH, instead of `(?:X)?`, a REPEAT that allocates its context and
# copies the group marks). It matches what its plain writing (greedy quantifiers, optional
# groups: `_reference_plain_rule` in tests/test_parse_fastpath.py) matches, with the same
# groups; the tests compare both.
_S = r"[ \t\r\f]"
_W = r'[^ \t\r\f,!"#]++'
_LIST = f"{_W}(?:{_S}*+,{_S}*+{_W})*+"
_NAMES = r'[^ \t\r\f,!"#/]++' + f"(?:{_S}*+,{_S}*+" + r'[^ \t\r\f,!"#/]++)*+'
PLAIN_RULE = re.compile(
    f"{_S}*+((" + "|".join(sorted(ACTIONS)) + f"){_S}++from{_S}++({_LIST}){_S}++to{_S}++({_LIST})"
    f"(?:{_S}++service{_S}++({_NAMES})|)(?:{_S}++in{_S}++({_W})|)(?:{_S}++out{_S}++({_W})|)"
    f'(?:{_S}++(log)(?:{_S}++("[^"\\\\#\n]*+")|)|)(?:{_S}++only{_S}++({_W})|)){_S}*+')


PLAIN_WORD = re.compile(_W)  # an item of a list of PLAIN_RULE
# The endpoint kinds a RuleLine holds: a word is an object's name unless it is one of these.
PLAIN_ENDPOINTS = frozenset({"any", "firewall"})
# A plain definition line: `host|network NAME ADDR` (one value) or `group NAME A, B, ...`,
# words only (no `!`, string, comment or trailing comma). `FastPath.definition` reads such
# a line from the match (groups 1 keyword, 2 name, 3 the value or the members) without
# cutting it into tokens first, and builds what `FastPath._definition` builds of it; any
# word its lexing refuses, and the line goes that way (which answers for it).
PLAIN_ADDRESS = re.compile(f"{_S}*+(host|network){_S}++({_W}){_S}++({_W}){_S}*+")
PLAIN_GROUP = re.compile(f"{_S}*+(group){_S}++({_W})(?:{_S}++({_LIST})|){_S}*+")


class TerminalInfo(NamedTuple):
    """What lark's lexer knows of a terminal: its regular expression and its sort key."""

    name: str
    regexp: str
    priority: int
    max_width: int
    value_length: int


class Patterns:
    """The grammar's terminals as the fast path lexes them, built once from lark's analysis."""

    def __init__(self, terminals: tuple[TerminalInfo, ...]) -> None:
        known = {t.name: t for t in terminals}
        missing = _LEXED - known.keys()
        if missing:  # the grammar changed under the fast path
            raise ValueError(f"grammar lacks terminals {sorted(missing)}")
        self._known = known
        self.endpoint = self._alternation(_ENDPOINT)
        self.address = self._alternation(_ADDRESS)
        self.group_item = self._alternation(_GROUP_ITEM)
        self.name = self._alternation(("NAME",))
        self.service_spec = re.compile(known["SVC_SPEC"].regexp)
        # A line as (spaces, token) pairs: words, commas, bangs and strings (lark's STRING).
        # A word ends at a space, a comma or the end of the line: a word right before `!`
        # or `"` (`glued`), and a `#` (a comment, or in a string), defer the line.
        string = known["STRING"].regexp
        self.tokens = re.compile(f'([ \\t\\r\\f]*)([^ \\t\\r\\f,!"#]+|[,!]|{string}|["#])')
        self.glued = re.compile(f'{string}|(?P<glued>[^ \\t\\r\\f,!"]["!])')

    def _alternation(self, names: tuple[str, ...]) -> re.Pattern[str]:
        """The terminals NAMES as lark's lexer tries them in one parser state: sorted as lark
        sorts them, each a group named after it; the first alternative that matches wins."""
        ordered = sorted((self._known[n] for n in names),
                         key=lambda t: (-t.priority, -t.max_width, -t.value_length, t.name))
        return re.compile("|".join(f"(?P<{t.name}>{t.regexp})" for t in ordered))


# The syntax tree's small nodes are NamedTuples; building them through tuple.__new__ skips
# a Python-level __new__ per node (hundreds of thousands in a large policy).
_new = tuple.__new__


_RULE_LINE = s.RuleLine
_ADDRESS_DEF = maker(s.AddressDef)
_GROUP_DEF = maker(s.GroupDef)


def join_spans(first: Span, last: Span) -> Span:
    """From the start of FIRST to the end of LAST (the parser's and the fast path's)."""
    return _new(Span, (first.file, first.line, first.column, last.end_line, last.end_column))


def _terminal(pattern: re.Pattern[str], word: str) -> str | None:
    """The terminal lark's lexer reads WORD as in the state of PATTERN, if it reads the
    whole word (a word ends where no terminal of these states can go on)."""
    match = pattern.match(word)
    return match.lastgroup if match is not None and match.end() == len(word) else None


class _Defer(Exception):  # noqa: N818 - control flow inside the reader, never escapes it
    """The line is not one the fast path is sure of: lark reads it."""


class FastPath:
    """Reads the plain lines of one file; each method answers None for a line it leaves to
    lark. Made per parse (it remembers how each word lexes, for that file only)."""

    def __init__(self, patterns: Patterns, path: str) -> None:
        self.p = patterns
        self.path = path
        # word -> the terminal `_lex` read it as, per pattern (`_address_words` for
        # address values, `_group_words` for group members)
        self._address_words: dict[str, str | None] = {}
        self._group_words: dict[str, str | None] = {}
        # word -> (kind, text) of the endpoint it is, or None
        self._endpoint_words: dict[str, tuple[str, str] | None] = {}
        # word -> whether NAME reads it whole (`_terminal(self.p.name, word)`, per name)
        self._name_words: dict[str, bool] = {}
        # a from/to list (services list) as matched -> whether a RuleLine may hold it
        # (`plain_rule`; a list is checked word by word once per file)
        self._plain_lists: dict[str, bool] = {}
        self._plain_services: dict[str, tuple[str, ...]] = {}  # list -> its names, or ()

    def _is_name(self, word: str) -> bool:
        known = self._name_words.get(word)
        if known is None:
            known = self._name_words[word] = _terminal(self.p.name, word) is not None
        return known

    @staticmethod
    def _lex(known: dict[str, str | None], pattern: re.Pattern[str], word: str) -> str | None:
        """`_terminal`, remembered in KNOWN (the memo of PATTERN's words)."""
        if word in known:
            return known[word]
        kind = known[word] = _terminal(pattern, word)
        return kind

    def _endpoint(self, word: str) -> tuple[str, str]:
        """(kind, text) of the endpoint WORD; _Defer if it is none."""
        got = self._endpoint_words.get(word)
        if got is None:
            if word in self._endpoint_words:
                raise _Defer
            terminal = _terminal(self.p.endpoint, word)  # remembered as the endpoint
            if terminal is not None:
                kind = ENDPOINT_KINDS[terminal]
                got = (kind, word[:-4] if kind == "vip" else word)
            self._endpoint_words[word] = got
            if got is None:
                raise _Defer
        return got

    def plain_rule(self, text: str, number: int) -> s.RuleLine | None:
        """TEXT as a RuleLine, if it is a plain rule line (PLAIN_RULE) whose every word the
        fast path reads as `rule` would: endpoints that are names, `any` or `firewall`,
        services, interfaces and members that NAME reads, a prefix that decodes."""
        match = PLAIN_RULE.fullmatch(text)
        if match is None:
            return None
        parts = match.groups()
        _, _, sources, destinations, services, in_, out, _, prefix, only = parts
        # (each list, word and service list is checked once per file; most lines are
        # made of ones checked before: a dict probe each)
        lists = self._plain_lists
        if not (lists.get(sources) and lists.get(destinations)) and not (
                self._plain_endpoints(sources) and self._plain_endpoints(destinations)):
            return None
        if services is not None:
            labels = self._plain_services.get(services)
            if labels is None:
                labels = self._plain_services[services] = self._service_labels(services)
            if not labels:
                return None
        names = self._name_words
        if in_ is not None and not (names.get(in_) or self._is_name(in_)):
            return None
        if out is not None and not (names.get(out) or self._is_name(out)):
            return None
        if only is not None and not (names.get(only) or self._is_name(only)):
            return None
        if prefix is not None:
            try:
                decode_literal(prefix[1:-1])
            except LiteralError:
                return None
        return _new(_RULE_LINE, (self, number, match, parts))

    def _service_labels(self, services: str) -> tuple[str, ...]:
        """The names of the service list SERVICES (as PLAIN_RULE matched it), or () when
        NAME does not read one of them."""
        labels = tuple(PLAIN_WORD.findall(services))
        names = self._name_words
        for word in labels:
            if not (names.get(word) or self._is_name(word)):
                return ()
        return labels

    def service_labels(self, services: str) -> tuple[str, ...]:
        """The names of the service list of a RuleLine this reader made (cut once, here:
        the resolver takes them from here)."""
        return self._plain_services[services]

    def _plain_endpoints(self, words: str) -> bool:
        """Whether a RuleLine may hold the from/to list WORDS (remembered per list)."""
        ok = self._plain_lists.get(words)
        if ok is None:
            ok = self._plain_lists[words] = self._plain_endpoint_word(words) \
                if "," not in words else self._plain_list(words, self._plain_endpoint_word)
        return ok

    @staticmethod
    def _plain_list(words: str, plain: Callable[[str], bool]) -> bool:
        """Whether every item of the list WORDS (as PLAIN_RULE matched it) is PLAIN."""
        return all(plain(word) for word in PLAIN_WORD.findall(words))

    def _plain_endpoint_word(self, word: str) -> bool:
        try:
            kind, _ = self._endpoint(word)
        except _Defer:
            return False
        if word in PLAIN_ENDPOINTS:
            return kind == word  # `any` is ANY, not a name
        return kind == "name"

    def _tokens(self, text: str) -> list[tuple[str, str]]:
        """The (spaces, token) pairs of TEXT; _Defer for a comment or a word glued to the next."""
        if "#" in text or (("!" in text or '"' in text) and
                           any(m.lastgroup == "glued" for m in self.p.glued.finditer(text))):
            raise _Defer
        return self.p.tokens.findall(text)

    def _span(self, number: int, start: int, end: int) -> Span:
        return _new(Span, (self.path, number, start + 1, number, end + 1))

    def _endpoints(self, pairs: list, i: int, pos: int,
                   number: int) -> tuple[list[s.Endpoint], int, int]:
        """The endpoint list at PAIRS[I] (POS: where that pair starts); where it ends."""
        out: list[s.Endpoint] = []
        endpoint = self._endpoint
        path = self.path
        size = len(pairs)
        while True:
            space, value = pairs[i]
            start = pos = pos + len(space)
            pos += len(value)
            negated = value == "!"
            if negated:
                i += 1
                space, value = pairs[i]
                pos += len(space) + len(value)
            kind, text = endpoint(value)
            out.append(_new(s.Endpoint, (kind, text, negated,
                                         _new(Span, (path, number, start + 1, number, pos + 1)))))
            i += 1
            if i == size or pairs[i][1] != ",":
                return out, i, pos
            pos += len(pairs[i][0]) + 1
            i += 1

    def _services(self, text: str, pairs: list, i: int, pos: int,
                  number: int) -> tuple[list[s.ServiceRef], int, int]:
        out: list[s.ServiceRef] = []
        names = self._name_words
        path = self.path
        while True:
            space, value = pairs[i]
            start = pos = pos + len(space)
            if "/" not in value and names.get(value):  # a known name: the common case
                pos += len(value)
                out.append(_new(s.ServiceRef, ("name", value, _new(Span, (
                    path, number, start + 1, number, pos + 1)))))
                i += 1
                if i == len(pairs) or pairs[i][1] != ",":
                    return out, i, pos
                pos += len(pairs[i][0]) + 1
                i += 1
                continue
            spec = self.p.service_spec.match(text, start) if "/" in value else None
            if spec is not None:  # SVC_SPEC outranks NAME; it may hold commas
                end = spec.end()
                if end < len(text) and text[end] not in _SPACE and text[end] != ",":
                    raise _Defer
                pos += len(value)
                i += 1
                while pos < end:  # the commas and words the spec took in
                    space, value = pairs[i]
                    pos += len(space) + len(value)
                    i += 1
                if pos != end:
                    raise _Defer
                out.append(_new(s.ServiceRef, ("spec", spec.group(),
                                               self._span(number, start, end))))
            else:
                if not self._is_name(value):
                    raise _Defer
                pos += len(value)
                out.append(_new(s.ServiceRef, ("name", value, self._span(number, start, pos))))
                i += 1
            if i == len(pairs) or pairs[i][1] != ",":
                return out, i, pos
            pos += len(pairs[i][0]) + 1
            i += 1

    def _name(self, pairs: list, i: int, pos: int, number: int) -> tuple[s.Word, int]:
        space, value = pairs[i]
        if not (self._name_words.get(value) or self._is_name(value)):
            raise _Defer
        start = pos + len(space)
        end = start + len(value)
        return _new(s.Word, (value, _new(Span, (self.path, number, start + 1, number,
                                                end + 1)))), end

    def rule(self, text: str, number: int) -> s.RuleDecl | None:
        """`accept|drop|reject from E, ... to E, ... [service S, ...] [in X] [out Y]
        [only M] [log ["prefix"]]` on one line, as `parse._Builder.rule` builds it."""
        try:
            return self._rule(text, number)
        except (_Defer, IndexError):
            return None

    def _rule(self, text: str, number: int) -> s.RuleDecl | None:
        pairs = self._tokens(text)
        if len(pairs) < 5 or pairs[0][1] not in ACTIONS or pairs[1][1] != "from":
            return None
        start = len(pairs[0][0])
        pos = start + len(pairs[0][1])
        action = _new(s.Word, (pairs[0][1], self._span(number, start, pos)))
        pos += len(pairs[1][0]) + 4
        sources, i, pos = self._endpoints(pairs, 2, pos, number)
        if pairs[i][1] != "to":
            return None
        pos += len(pairs[i][0]) + 2
        destinations, i, pos = self._endpoints(pairs, i + 1, pos, number)
        options: list[s.Option] = []
        services: tuple[s.ServiceRef, ...] = ()
        last = destinations[-1].span
        names = self._name_words
        path = self.path
        size = len(pairs)
        while i < size:
            space, keyword = pairs[i]
            start = pos + len(space)
            pos = start + len(keyword)
            if keyword in _NAMED_OPTIONS:
                space, word = pairs[i + 1]
                if not (names.get(word) or self._is_name(word)):
                    raise _Defer
                start = pos + len(space)
                pos = start + len(word)
                last = _new(Span, (path, number, start + 1, number, pos + 1))
                options.append(_new(s.Option, (keyword, _new(s.Word, (word, last)), last)))
                i += 2
            elif keyword == "service":
                refs, i, pos = self._services(text, pairs, i + 1, pos, number)
                services = services + tuple(refs) if services else tuple(refs)
                last = refs[-1].span
                options.append(_new(s.Option, ("service", None, join_spans(refs[0].span, last))))
            elif keyword == "log":
                last = self._span(number, start, pos)
                prefix = None
                i += 1
                if i < len(pairs) and pairs[i][1][0] == '"':
                    space, literal = pairs[i]
                    start = pos + len(space)
                    pos = start + len(literal)
                    if len(literal) < 2 or literal[-1] != '"' or \
                            (pos < len(text) and text[pos] not in _SPACE):
                        return None
                    try:
                        decoded = decode_literal(literal[1:-1])
                    except LiteralError:
                        return None  # lark reports it (FWC004)
                    prefix = _new(s.Word, (decoded, self._span(number, start, pos)))
                    last = join_spans(last, prefix.span)
                    i += 1
                options.append(_new(s.Option, ("log", prefix, last)))
            else:
                return None
        return s.RuleDecl(action, tuple(sources), tuple(destinations), tuple(options),
                          services, None, _new(Span, (path, number, action.span.column,
                                                      last.end_line, last.end_column)), ())

    def definition(self, text: str, number: int) -> s.AddressDef | s.GroupDef | s.ServiceDef | None:
        """`host|network NAME ADDR, ...`, `group NAME [ITEM, ...]` or `service NAME ITEM, ...`
        (without `helper`) on one line, as `parse._Builder` builds them."""
        try:
            plain = self._plain_definition(text, number)
            return plain if plain is not None else self._definition(text, number)
        except (_Defer, IndexError):
            return None

    def _plain_definition(self, text: str, number: int) -> s.AddressDef | s.GroupDef | None:
        """A PLAIN_ADDRESS or PLAIN_GROUP line as `_definition` reads it, straight from the
        match; None when it is neither, or a word does not lex as `_definition` wants (then
        `_definition` answers). About 2.5x cheaper for a `host` line: no token pairs."""
        match = PLAIN_ADDRESS.fullmatch(text)  # (refuses any other line at its keyword)
        if match is not None:
            keyword, name, value = match.groups()
            lexed = self._address_words
            if not (self._name_words.get(name) or self._is_name(name)) or not (
                    lexed.get(value) or self._lex(lexed, self.p.address, value)):
                return None
            path = self.path
            start, end = match.span(1)
            kind_span = _new(Span, (path, number, start + 1, number, end + 1))
            start, end = match.span(2)
            word = _new(s.Word, (name, _new(Span, (path, number, start + 1, number, end + 1))))
            start, end = match.span(3)
            span = _new(Span, (path, number, start + 1, number, end + 1))
            return _ADDRESS_DEF(keyword, word, (_new(s.Word, (value, span)),),
                                join_spans(kind_span, span))
        match = PLAIN_GROUP.fullmatch(text)
        if match is None:
            return None
        _, name, words = match.groups()
        if not (self._name_words.get(name) or self._is_name(name)):
            return None
        path = self.path
        start, end = match.span(2)
        word = _new(s.Word, (name, _new(Span, (path, number, start + 1, number, end + 1))))
        if words is None:
            return _GROUP_DEF(word, (), word.span)
        lexed = self._group_words
        pattern = self.p.group_item
        kinds = ENDPOINT_KINDS
        members: list[s.Endpoint] = []
        for w in PLAIN_WORD.finditer(text, match.start(3), match.end(3)):
            value = w.group()
            kind = lexed.get(value) or self._lex(lexed, pattern, value)
            if kind is None:
                return None
            start, end = w.span()
            members.append(_new(s.Endpoint, (kinds[kind], value, False, _new(Span, (
                path, number, start + 1, number, end + 1)))))
        if members[0].text in STATEMENT_KEYWORDS:
            return None  # lark reads the next statement there
        return _GROUP_DEF(word, tuple(members), join_spans(word.span, members[-1].span))

    def _definition(self, text: str,
                    number: int) -> s.AddressDef | s.GroupDef | s.ServiceDef | None:
        pairs = self._tokens(text)
        if len(pairs) < 2 or pairs[0][1] not in _DEFINITIONS:
            return None
        keyword = pairs[0][1]
        kind_start = len(pairs[0][0])
        pos = kind_start + len(keyword)
        name, pos = self._name(pairs, 1, pos, number)
        if keyword == "service":
            items, i, pos = self._services(text, pairs, 2, pos, number)
            if i != len(pairs):
                return None
            return s.ServiceDef(name, tuple(items), None, join_spans(name.span, items[-1].span))
        pattern = self.p.group_item if keyword == "group" else self.p.address
        lexed = self._group_words if keyword == "group" else self._address_words
        values: list[tuple[str, str, Span]] = []
        path = self.path
        size = len(pairs)
        i = 2
        while i < size:
            space, value = pairs[i]
            kind = lexed.get(value) or self._lex(lexed, pattern, value)
            if kind is None:
                return None
            start = pos + len(space)
            pos = start + len(value)
            values.append((kind, value, _new(Span, (path, number, start + 1, number, pos + 1))))
            i += 1
            if i < size:
                if pairs[i][1] != "," or i + 1 == size:
                    return None
                pos += len(pairs[i][0]) + 1
                i += 1
        if keyword == "group":
            if values and values[0][1] in STATEMENT_KEYWORDS:
                return None  # lark reads the next statement there
            members = tuple(_new(s.Endpoint, (ENDPOINT_KINDS[k], v, False, sp))
                            for k, v, sp in values)
            return s.GroupDef(name, members, join_spans(name.span, (members[-1] if members
                                                               else name).span))
        if not values:
            return None
        words = tuple(_new(s.Word, (v, sp)) for _, v, sp in values)
        kind_span = self._span(number, kind_start, kind_start + len(keyword))
        return s.AddressDef(keyword, name, words, join_spans(kind_span, words[-1].span))
