"""Canonical layout of `*.fw` text (`fwc fmt`), from the token stream.

The text is parsed once with the real grammar (so only valid policies are
formatted) keeping every token; comments are recovered from the gaps between
tokens, so none is lost. Statements are then found from token types (not from
the tree's shape), laid out one per line, and aligned in columns:

- top level: runs of object and service definitions (`host`, `network`,
  `range`, `group`, `service`) align keyword and name, across blank lines and
  comments, until another kind of statement;
- `policy`/`nat` rules align action, source, destination and their first
  option; `expect` lines align verdict, source, destination and first option;
  further options follow two spaces apart (`service snmp  only fw1`), a NAT
  target one space after (`out uplink -> uplink.vip`);
- a cell at the end of its line is not padded and does not widen its column;
- cluster `interface` lines align their names, member links their interface
  and device; `vrrp { }` and `sync { }` stay on one line when written so.

Blank lines between statements are kept (runs collapse to one); a comment on
its own line stays on its own line before the same statement, re-indented; a
comment after a statement stays after it (aligned within its group); a
comment inside a multi-line statement moves to its own line just before it.
Idempotent: `format_text(format_text(x)) == format_text(x)`.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator
from dataclasses import dataclass, field

from lark import Lark, Token, Tree
from lark.exceptions import UnexpectedInput

from fwc.frontend.parse import grammar_text

INDENT = "    "
OPTION_GAP = "  "
COMMENT_GAP = "  "
# A cell longer than the next widest by more than this overflows instead of widening its column.
OUTLIER_SLACK = 6

# Token roles come from the text of keyword tokens, never from terminal names (which
# the grammar is free to rename): a token is a keyword when its terminal is a fixed
# word (or a choice of fixed words); everything else (names, addresses, numbers,
# strings) is a value.
TOP_KEYWORDS = frozenset({"include", "host", "network", "range", "group", "service", "cluster",
                          "policy", "nat", "expect"})
DEFINITIONS = frozenset({"host", "network", "range", "group", "service"})
BLOCKS = frozenset({"cluster", "policy", "nat", "expect"})
CLUSTER_ITEMS = frozenset({"vrrp", "sync", "interface", "member"})
RULE_STARTS = frozenset({"accept", "drop", "reject", "snat", "dnat", "masquerade", "nonat",
                         "allow", "deny"})
ENDPOINT_WORDS = frozenset({",", "!", "any", "firewall"})
PUNCTUATION = frozenset({",", "!", ";", ":", "[", "]", "{", "}", "->"})
_COMMENT = re.compile(r"#[^\n]*")
# A keyword terminal: one word or (?:a|b), optionally ending at a word boundary
# (keywords that outrank NAME carry a negative lookahead so `anycast` stays a name).
_FIXED_WORDS = re.compile(
    r"(?:\(\?:[A-Za-z-]+(?:\|[A-Za-z-]+)*\)|[A-Za-z-]+)(?:\(\?!\[A-Za-z0-9_-\]\))?")


class FormatError(Exception):
    """The text does not parse; `fwc check` reports why."""


@functools.cache
def _token_parser() -> Lark:
    return Lark(grammar_text(), parser="lalr", keep_all_tokens=True, maybe_placeholders=False)


@functools.cache
def _keyword_terminals() -> frozenset[str]:
    """Terminals that are fixed words or punctuation (from the grammar itself)."""
    out = set()
    for terminal in _token_parser().terminals:
        pattern = terminal.pattern
        if type(pattern).__name__ == "PatternStr" or _FIXED_WORDS.fullmatch(pattern.value):
            out.add(terminal.name)
    return frozenset(out)


@dataclass(frozen=True, slots=True)
class Comment:
    start: int
    end: int
    line: int
    text: str


def _leaves(node: Tree | Token) -> Iterator[Token]:
    if isinstance(node, Token):
        yield node
        return
    for child in node.children:
        yield from _leaves(child)


def tokenize(text: str) -> tuple[list[Token], list[Comment]]:
    """Every token as the parser lexed it, and every comment, in order."""
    try:
        tree = _token_parser().parse(text)
    except UnexpectedInput as exc:
        raise FormatError(str(exc).splitlines()[0] if str(exc) else "syntax error") from None
    tokens = sorted(_leaves(tree), key=lambda t: t.start_pos)
    comments: list[Comment] = []
    previous_end = 0
    for token in [*tokens, None]:
        gap_end = token.start_pos if token is not None else len(text)
        for match in _COMMENT.finditer(text, previous_end, gap_end):
            line = text.count("\n", 0, match.start()) + 1
            comments.append(Comment(match.start(), match.end(), line, match.group().rstrip()))
        if token is not None:
            previous_end = token.end_pos
    return tokens, comments


def _is_value(token: Token) -> bool:
    return token.type not in _keyword_terminals()


def _is_keyword(token: Token, words: frozenset[str]) -> bool:
    return str(token) in words and not _is_value(token)


def _in_endpoint(token: Token) -> bool:
    return _is_value(token) or str(token) in ENDPOINT_WORDS


def join(tokens: list[Token]) -> str:
    """Tokens with canonical spacing: `a, b`, `!x`, `web:8080`, `[2001:db8::1]:80`."""
    out = ""
    previous: str | None = None
    for token in tokens:
        value = str(token)
        if value == ";":
            continue
        if previous is None:
            out = value
        elif value in (",", ":", "]") or previous in ("!", "[", ":"):
            out += value
        else:
            out += " " + value
        previous = value
    return out


def _option_groups(tokens: list[Token]) -> list[list[int]]:
    """Cut a token run at each keyword that is not punctuation: one index list per option."""
    groups: list[list[int]] = []
    for n, token in enumerate(tokens):
        value = str(token)
        if value == ";":
            continue
        starts = not _is_value(token) and value not in PUNCTUATION
        words = [str(tokens[k]) for k in groups[-1]] if groups else []
        if value == "port" and len(words) == 2 and words[0] == "multicast":
            starts = False  # `multicast GROUP port N` is one option
        if value == "file" and words == ["password"]:
            starts = False  # `password file "path"`
        if starts or not groups:
            groups.append([n])
        else:
            groups[-1].append(n)
    return groups


def _split_options(tokens: list[Token]) -> list[list[Token]]:
    return [[tokens[k] for k in group] for group in _option_groups(tokens)]


def _first_option(tokens: list[Token]) -> tuple[list[str], str]:
    """A rule's options as (first option as a column cell, the others two spaces apart)."""
    options = [join(g) for g in _split_options(tokens)]
    if not options:
        return [], ""
    return [options[0]], OPTION_GAP.join(options[1:])


# -- layout items --------------------------------------------------------------------------
@dataclass
class Line:
    indent: int
    first: int  # token indices covered
    last: int
    text: str = ""  # for unaligned lines
    cells: list[str] = field(default_factory=list)
    tail: str = ""
    tail_gap: str = " "  # between the last cell and the tail
    suffix: str = ""  # after everything, one space apart, never aligned (`-> target`)
    kind: str | None = None  # lines of one kind in a run align their cells
    comment: str | None = None

    def followed(self, n: int) -> bool:
        """Whether anything but the suffix comes after cell n (only then is it padded)."""
        return bool(self.tail) or any(self.cells[n + 1:])


@dataclass
class OwnComment:
    indent: int
    text: str


@dataclass
class Blank:
    pass


Item = Line | OwnComment | Blank


class _Layout:
    """Walks the tokens once, producing lines; comments are placed as it goes."""

    def __init__(self, text: str, tokens: list[Token], comments: list[Comment]) -> None:
        self.text = text
        self.tokens = tokens
        self.comments = comments
        self.next_comment = 0
        self.last_end = 0  # source offset of the last token or comment placed
        self.items: list[Item] = []
        self.at_block_start = True

    # -- comments and blank lines ------------------------------------------------------
    def _blank_before(self, start: int) -> bool:
        return self.text.count("\n", self.last_end, start) >= 2

    def _place_blank(self, start: int) -> None:
        if self._blank_before(start) and not self.at_block_start and self.items \
                and not isinstance(self.items[-1], Blank):
            self.items.append(Blank())

    def _comments_before(self, offset: int, indent: int, hoisted: bool = False) -> None:
        while self.next_comment < len(self.comments) \
                and self.comments[self.next_comment].start < offset:
            comment = self.comments[self.next_comment]
            if not hoisted:
                self._place_blank(comment.start)
            self.items.append(OwnComment(indent, comment.text))
            self.at_block_start = False
            self.last_end = max(self.last_end, comment.end)
            self.next_comment += 1

    def emit(self, line: Line) -> None:
        first, last = self.tokens[line.first], self.tokens[line.last]
        self._comments_before(first.start_pos, line.indent)
        self._place_blank(first.start_pos)
        self._comments_before(last.end_pos, line.indent, hoisted=True)
        self.last_end = max(self.last_end, last.end_pos)
        following = self.tokens[line.last + 1].start_pos if line.last + 1 < len(self.tokens) \
            else len(self.text) + 1
        if self.next_comment < len(self.comments):
            comment = self.comments[self.next_comment]
            if comment.line == last.end_line and comment.start < following:
                line.comment = comment.text
                self.last_end = comment.end
                self.next_comment += 1
        self.items.append(line)
        self.at_block_start = False

    def close_block(self, index: int, indent: int) -> None:
        """The `}` at tokens[index]: comments before it stay inside the block."""
        self._comments_before(self.tokens[index].start_pos, indent + 1)
        self.at_block_start = True  # no blank line right before `}`
        self.emit(Line(indent, index, index, text="}"))

    def open_block(self, line: Line) -> None:
        self.emit(line)
        self.at_block_start = True

    # -- statements -------------------------------------------------------------------
    def run(self) -> list[Item]:
        i = 0
        tokens = self.tokens
        while i < len(tokens):
            if _is_keyword(tokens[i], BLOCKS):
                i = self.block(i, 0)
                continue
            end = i + 1
            while end < len(tokens) and not _is_keyword(tokens[end], TOP_KEYWORDS):
                end += 1
            if _is_keyword(tokens[i], DEFINITIONS):
                head = tokens[i:i + 2]
                self.emit(Line(0, i, end - 1, cells=[str(t) for t in head],
                               tail=join(tokens[i + 2:end]), kind="definition"))
            else:
                self.emit(Line(0, i, end - 1, text=join(tokens[i:end])))
            i = end
        self._comments_before(len(self.text) + 1, 0)
        return self.items

    def _matching_brace(self, open_index: int) -> int:
        depth = 0
        for j in range(open_index, len(self.tokens)):
            value = str(self.tokens[j])
            if value == "{":
                depth += 1
            elif value == "}":
                depth -= 1
                if depth == 0:
                    return j
        return len(self.tokens) - 1

    def _brace_after(self, index: int) -> int:
        j = index
        while str(self.tokens[j]) != "{":
            j += 1
        return j

    def block(self, i: int, indent: int) -> int:
        """A `cluster`, `policy`, `nat` or `expect` block starting at tokens[i]."""
        brace = self._brace_after(i)
        close = self._matching_brace(brace)
        self.open_block(Line(indent, i, brace, text=join(self.tokens[i:brace + 1])))
        kind = str(self.tokens[i])
        if kind == "cluster":
            self.cluster_body(brace + 1, close, indent + 1)
        else:
            self.rules(brace + 1, close, indent + 1, kind)
        self.close_block(close, indent)
        return close + 1

    def rules(self, start: int, end: int, indent: int, block: str) -> None:
        tokens = self.tokens
        i = start
        while i < end:
            j = i + 1
            while j < end and not _is_keyword(tokens[j], RULE_STARTS):
                j += 1
            self.emit(self.rule_line(i, j, indent, block))
            i = j

    def rule_line(self, i: int, end: int, indent: int, block: str) -> Line:
        tokens = self.tokens[i:end]
        if block == "expect":
            separator = next(k for k, t in enumerate(tokens) if str(t) == "->")
            source = tokens[1:separator]
            k = separator + 1
            while k < len(tokens) and _in_endpoint(tokens[k]):
                k += 1
            destination = tokens[separator + 1:k]
            first, tail = _first_option(tokens[k:])
            # the empty cell leaves two spaces before the arrow: `client  -> server`
            cells = [str(tokens[0]), join(source), "", "->", join(destination), *first]
            return Line(indent, i, end - 1, cells=cells, tail=tail, tail_gap=OPTION_GAP,
                        kind="expect")
        to = next(k for k, t in enumerate(tokens) if _is_keyword(t, frozenset({"to"})))
        k = to + 1
        while k < len(tokens) and _in_endpoint(tokens[k]):
            k += 1
        rest = tokens[k:]
        arrow = next((n for n, t in enumerate(rest) if str(t) == "->"), None)
        options, target = (rest, []) if arrow is None else (rest[:arrow], rest[arrow:])
        first, tail = _first_option(options)
        cells = [str(tokens[0]), "from", join(tokens[2:to]), "to", join(tokens[to + 1:k]),
                 *first]
        return Line(indent, i, end - 1, cells=cells, tail=tail, tail_gap=OPTION_GAP,
                    suffix=join(target), kind=block)

    def cluster_body(self, start: int, end: int, indent: int) -> None:
        tokens = self.tokens
        i = start
        while i < end:
            word = str(tokens[i]) if not _is_value(tokens[i]) else ""
            if word in ("vrrp", "sync") and i + 1 < end and str(tokens[i + 1]) == "{":
                i = self.option_block(i, indent)
            elif word == "member":
                i = self.member(i, indent)
            else:
                j = i + 1
                while j < end and not _is_keyword(tokens[j], CLUSTER_ITEMS):
                    j += 1
                head, rest = tokens[i:i + 2], tokens[i + 2:j]
                tail = OPTION_GAP.join(join(g) for g in _split_options(rest))
                self.emit(Line(indent, i, j - 1, cells=[str(t) for t in head], tail=tail,
                               kind="interface"))
                i = j

    def option_block(self, i: int, indent: int) -> int:
        close = self._matching_brace(i + 1)
        options = _split_options(self.tokens[i + 2:close])
        one_line = self.tokens[i].line == self.tokens[close].line
        name = str(self.tokens[i])
        if one_line:
            inner = OPTION_GAP.join(join(g) for g in options)
            text = f"{name} {{ {inner} }}" if inner else f"{name} {{ }}"
            self.emit(Line(indent, i, close, text=text))
            return close + 1
        self.open_block(Line(indent, i, i + 1, text=f"{name} {{"))
        for group in _option_groups(self.tokens[i + 2:close]):
            first, last = i + 2 + group[0], i + 2 + group[-1]
            self.emit(Line(indent + 1, first, last, text=join(self.tokens[first:last + 1])))
        self.close_block(close, indent)
        return close + 1

    def member(self, i: int, indent: int) -> int:
        tokens = self.tokens
        brace = self._brace_after(i)
        close = self._matching_brace(brace)
        self.open_block(Line(indent, i, brace, text=join(tokens[i:brace + 1])))
        j = brace + 1
        while j < close:
            start = j
            j += 2  # interface name, device
            while j < close and (str(tokens[j]) == "," or (
                    _is_value(tokens[j]) and (str(tokens[j])[:1].isdigit() or ":" in tokens[j]))):
                j += 1
            cells = [str(tokens[start]), str(tokens[start + 1])] if start + 1 < close \
                else [str(tokens[start])]
            self.emit(Line(indent + 1, start, min(j, close) - 1, cells=cells,
                           tail=join(tokens[start + 2:j]), kind="link"))
        self.close_block(close, indent)
        return close + 1


# -- rendering ---------------------------------------------------------------------------
def _runs(items: list[Item]) -> Iterator[list[Line]]:
    """Lines that align together: same kind and indent, with only comments or blanks between."""
    run: list[Line] = []
    for item in items:
        if isinstance(item, Line):
            if run and (item.kind is None or item.kind != run[0].kind
                        or item.indent != run[0].indent):
                yield run
                run = []
            if item.kind is not None:
                run.append(item)
            elif run:
                yield run
                run = []
    if run:
        yield run


def _column_width(lengths: list[int]) -> int:
    """The widest cell, unless it sticks out: one long list should not push a whole block."""
    ordered = sorted(set(lengths), reverse=True)
    while len(ordered) > 1 and ordered[0] > ordered[1] + OUTLIER_SLACK:
        ordered.pop(0)
    return ordered[0] if ordered else 0


def _render_cells(line: Line, widths: list[int]) -> str:
    parts = [cell.ljust(widths[n]) if line.followed(n) else cell
             for n, cell in enumerate(line.cells)]
    text = " ".join(parts)
    if line.tail:
        text = f"{text}{line.tail_gap}{line.tail}"
    text = text.rstrip()
    if line.suffix:
        text = f"{text} {line.suffix}"
    return text


def render(items: list[Item]) -> str:
    rendered: dict[int, str] = {}
    comment_column: dict[int, int] = {}
    for run in _runs(items):
        # a cell at the end of its line needs no padding, so it does not widen its column
        widths = [_column_width([len(line.cells[n]) for line in run
                                 if n < len(line.cells) and line.followed(n)])
                  for n in range(max(len(line.cells) for line in run))]
        texts = {id(line): _render_cells(line, widths) for line in run}
        rendered.update(texts)
        with_comment = [len(texts[id(line)]) for line in run if line.comment]
        column = max(with_comment, default=0)
        for line in run:
            comment_column[id(line)] = column
    out: list[str] = []
    for item in items:
        if isinstance(item, Blank):
            out.append("")
        elif isinstance(item, OwnComment):
            out.append(INDENT * item.indent + item.text)
        else:
            text = rendered.get(id(item), item.text)
            if item.comment:
                text = text.ljust(comment_column.get(id(item), len(text))) + COMMENT_GAP \
                    + item.comment
            out.append(INDENT * item.indent + text)
    while out and out[-1] == "":
        out.pop()
    return "\n".join(out) + "\n" if out else ""


def format_text(text: str) -> str:
    """The canonical layout of a policy text; raises FormatError when it does not parse."""
    tokens, comments = tokenize(text)
    return render(_Layout(text, tokens, comments).run())
