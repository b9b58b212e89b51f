"""Canonical layout of `*.fw` text (`fwc fmt`), from the syntax tree.

The text is parsed once, by the policy parser (`fwc.frontend.parse`), asked to
keep every token and comment its lexer read (lexer callbacks; comments are
ignored by the grammar, never lost). Lines and cells come from the syntax
nodes: each statement, rule, option and link is the run of tokens its node
spans, and each comment is placed with the line it belongs to, as the walk
reaches it. Statements are laid out one per line and aligned in columns:

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

from array import array
from bisect import bisect_left
from collections.abc import Iterable, Iterator
from dataclasses import field

from fwc.diagnostics import Span
from fwc.frontend import syntax as s
from fwc.frontend.larkimport import UnexpectedInput
from fwc.frontend.parse import BadLiteral, borrowed_parser
from fwc.model.records import dataclass
from fwc.text import hidden_in_source

INDENT = "    "
OPTION_GAP = "  "
COMMENT_GAP = "  "
# A cell longer than the next widest by more than this overflows instead of widening its column.
OUTLIER_SLACK = 6


class FormatError(Exception):
    """The text does not parse; `fwc check` reports why."""


@dataclass(frozen=True, slots=True)
class Comment:
    start: int
    end: int
    line: int
    text: str


def parse_for_layout(text: str) -> tuple[tuple[s.Statement, ...], list[s.Lexeme],
                                           list[Comment]]:
    """The statements of TEXT, every token as the parser lexed it, and every comment."""
    # The error is raised after the parser is idle again, and from no lark exception
    # (`from None` still keeps it as __context__): lark's exception holds the parse state,
    # which leads back to the parser, idle and lent to the next run.
    problem = ""
    with borrowed_parser(keep_tokens=True) as parser:
        try:
            statements = parser.parse(text, "<fmt>")
        except BadLiteral as exc:
            problem = exc.diagnostic.message
        except UnexpectedInput as exc:
            # str() of lark-cython's exceptions can fail; `fwc check` gives the full
            # diagnostic
            line = getattr(exc, "line", 0) or 0
            problem = f"syntax error on line {line}" if line > 0 else "syntax error"
        else:
            comments = [Comment(c.start, c.end, c.line, c.value) for c in parser.comments]
            return tuple(statements), parser.tokens, comments
    raise FormatError(problem)


def tokenize(text: str) -> tuple[list[s.Lexeme], list[Comment]]:
    """Every token as the parser lexed it, and every comment, in order."""
    _, tokens, comments = parse_for_layout(text)
    return tokens, comments


def join(tokens: Iterable[s.Lexeme]) -> str:
    """Tokens with canonical spacing: `a, b`, `!x`, `web:8080`, `[2001:db8::1]:80`."""
    out = ""
    previous: str | None = None
    for token in tokens:
        value = token.value
        if value == ";":
            continue
        if previous is None:
            out = value
        elif value in (",", ":", "]", "-") or previous in ("!", "[", ":", "-"):
            out += value
        else:
            out += " " + value
        previous = value
    return out


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
    rendered: str | None = None  # the aligned text, once its run is known
    comment_column: int = 0  # where a trailing comment starts, shared by its run

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


def _line_starts(text: str) -> Iterator[int]:
    """The offset of each line of TEXT (lines end at "\\n", as lark counts them)."""
    yield 0
    at = text.find("\n")
    while at >= 0:
        yield at + 1
        at = text.find("\n", at + 1)


class _Layout:
    """Walks the syntax tree once, producing lines; comments are placed as it goes.

    A line is a run of tokens (indices into the lexed tokens) that a syntax node
    spans; its cells are those tokens joined with canonical spacing.
    """

    def __init__(self, text: str, statements: tuple[s.Statement, ...], tokens: list[s.Lexeme],
                 comments: list[Comment]) -> None:
        self.text = text
        self.statements = statements
        self.tokens = tokens
        self.comments = comments
        self.next_comment = 0
        self.last_end = 0  # source offset of the last token or comment placed
        self.items: list[Item] = []
        self.at_block_start = True
        # Where each token starts and ends, as offsets in TEXT (positions map to them
        # in order), for a binary search: two dictionaries by (line, column) were 58 MB
        # at 20,000 rules, a third of what the formatter holds.
        lines = self._line_starts = array("q", _line_starts(text))
        self._starts = array("q", [lines[t.line - 1] + t.column - 1 for t in tokens])
        self._ends = array("q", [lines[t.end_line - 1] + t.end_column - 1 for t in tokens])

    def _offset(self, line: int, column: int) -> int:
        # (a position outside the text is no token's, as a missing key was)
        if not 1 <= line <= len(self._line_starts) or column < 1:
            raise KeyError((line, column))
        offset = self._line_starts[line - 1] + column - 1
        if line < len(self._line_starts) and offset >= self._line_starts[line]:
            raise KeyError((line, column))
        return offset

    @staticmethod
    def _index(offsets: array[int], offset: int) -> int:
        found = bisect_left(offsets, offset)
        if found == len(offsets) or offsets[found] != offset:
            raise KeyError(offset)
        return found

    def first_of(self, span: Span) -> int:
        """The index of the token a node's span starts with."""
        return self._index(self._starts, self._offset(span.line, span.column))

    def last_of(self, span: Span) -> int:
        """The index of the token a node's span ends with."""
        return self._index(self._ends, self._offset(span.end_line, span.end_column))

    def groups(self, start: int, end: int, cuts: Iterable[int]) -> list[list[int]]:
        """Tokens start..end-1 (without `;`) cut after each index in CUTS: one list per option.

        Tokens after the last cut are left out: the caller knows what they are.
        """
        out: list[list[int]] = []
        current: list[int] = []
        wanted = set(cuts)
        for n in range(start, end):
            if self.tokens[n].value != ";":
                current.append(n)
            if n in wanted and current:
                out.append(current)
                current = []
        return out

    def texts(self, groups: list[list[int]]) -> list[str]:
        return [join(self.tokens[k] for k in group) for group in groups]

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
        self._comments_before(first.start, line.indent)
        self._place_blank(first.start)
        self._comments_before(last.end, line.indent, hoisted=True)
        self.last_end = max(self.last_end, last.end)
        following = self.tokens[line.last + 1].start if line.last + 1 < len(self.tokens) \
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
        self._comments_before(self.tokens[index].start, indent + 1)
        self.at_block_start = True  # no blank line right before `}`
        self.emit(Line(indent, index, index, text="}"))

    def open_block(self, line: Line) -> None:
        self.emit(line)
        self.at_block_start = True

    # -- statements -------------------------------------------------------------------
    def run(self) -> list[Item]:
        i = 0  # a statement's keyword is the token after the previous statement
        tokens = self.tokens
        for statement in self.statements:
            if isinstance(statement, s.ClusterDecl | s.BlockDecl):
                i = self.block(i, 0, statement)
                continue
            end = self.last_of(statement.span) + 1
            if isinstance(statement, s.AddressDef | s.GroupDef | s.ServiceDef):
                self.emit(Line(0, i, end - 1, cells=[t.value for t in tokens[i:i + 2]],
                               tail=join(tokens[i + 2:end]), kind="definition"))
            else:
                self.emit(Line(0, i, end - 1, text=join(tokens[i:end])))
            i = end
        self._comments_before(len(self.text) + 1, 0)
        return self.items

    def _matching_brace(self, open_index: int) -> int:
        depth = 0
        for j in range(open_index, len(self.tokens)):
            value = self.tokens[j].value
            if value == "{":
                depth += 1
            elif value == "}":
                depth -= 1
                if depth == 0:
                    return j
        return len(self.tokens) - 1

    def _brace_after(self, index: int) -> int:
        j = index
        while self.tokens[j].value != "{":
            j += 1
        return j

    def block(self, i: int, indent: int, decl: s.ClusterDecl | s.BlockDecl) -> int:
        """A `cluster`, `policy`, `nat` or `expect` block starting at tokens[i]."""
        brace = self._brace_after(i)
        close = self._matching_brace(brace)
        self.open_block(Line(indent, i, brace, text=join(self.tokens[i:brace + 1])))
        if isinstance(decl, s.ClusterDecl):
            self.cluster_body(brace + 1, close, indent + 1, decl)
        else:
            self.rules(close, indent + 1, decl)
        self.close_block(close, indent)
        return close + 1

    def rules(self, close: int, indent: int, block: s.BlockDecl) -> None:
        starts = [self.first_of(rule.span) for rule in block.rules]
        # a rule runs up to the next one: its span may stop short of a NAT target's `]`
        for rule, first, end in zip(block.rules, starts, [*starts[1:], close], strict=True):
            self.emit(self.rule_line(first, end, indent, block.kind, rule))

    def rule_line(self, i: int, end: int, indent: int, block: str, rule: s.RuleDecl) -> Line:
        tokens = self.tokens
        arrow_or_to = self.last_of(rule.sources[-1].span) + 1
        after = self.last_of(rule.destinations[-1].span) + 1
        source = join(tokens[i + 1:arrow_or_to]) if block == "expect" \
            else join(tokens[i + 2:arrow_or_to])
        destination = join(tokens[arrow_or_to + 1:after])
        cuts = [self.last_of(option.span) for option in rule.options]
        if block == "expect" and rule.services:
            cuts.append(self.last_of(rule.services[-1].span))
        groups = self.groups(after, end, cuts)
        options = self.texts(groups)
        first, tail = options[:1], OPTION_GAP.join(options[1:])
        if block == "expect":
            # the empty cell leaves two spaces before the arrow: `client  -> server`
            cells = [tokens[i].value, source, "", "->", destination, *first]
            return Line(indent, i, end - 1, cells=cells, tail=tail, tail_gap=OPTION_GAP,
                        kind="expect")
        target_start = groups[-1][-1] + 1 if groups else after
        cells = [tokens[i].value, tokens[i + 1].value, source, tokens[arrow_or_to].value,
                 destination, *first]
        return Line(indent, i, end - 1, cells=cells, tail=tail, tail_gap=OPTION_GAP,
                    suffix=join(tokens[target_start:end]), kind=block)

    def cluster_body(self, start: int, end: int, indent: int, cluster: s.ClusterDecl) -> None:
        # an interface or member starts with its keyword, just before its name
        interfaces = {self.first_of(i.name.span) - 1: i for i in cluster.interfaces}
        members = {self.first_of(m.name.span) - 1: m for m in cluster.members}
        # a route or route-rule's span starts at its keyword
        routes = {self.first_of(r.span): r for r in cluster.routes}
        # a vrrp-group's span starts at its keyword too
        groups = {self.first_of(g.span): g for g in cluster.groups}
        options = (*cluster.vrrp, *cluster.sync, *cluster.track, *cluster.notify,
                   *cluster.log, *cluster.defaults)
        i = start
        while i < end:
            if i in members:
                i = self.member(i, indent, members[i])
            elif i in groups:
                i = self.vrrp_group(i, indent, groups[i])
            elif i in routes:
                last = self.last_of(routes[i].span)
                self.emit(Line(indent, i, last, text=join(self.tokens[i:last + 1])))
                i = last + 1
            elif i in interfaces:
                i = self.interface(i, indent, interfaces[i])
            elif self.tokens[i].value == "backend":  # `backend NAME`, one line
                self.emit(Line(indent, i, i + 1, text=f"backend {self.tokens[i + 1].value}"))
                i += 2
            else:  # `vrrp { ... }` or `sync { ... }`
                i = self.option_block(i, indent, options)

    def vrrp_group(self, i: int, indent: int, decl: s.VrrpGroupDecl) -> int:
        """`vrrp-group NAME { interface A, B  master M }` on one line, options two apart."""
        tokens = self.tokens
        close = self.last_of(decl.span) + 1
        while tokens[close].value != "}":
            close += 1
        parts: list[list[s.Lexeme]] = [list(tokens[i:i + 3])]  # keyword, name, {
        for token in tokens[i + 3:close]:
            if token.value in ("interface", "master") or len(parts) == 1:
                parts.append([])
            parts[-1].append(token)
        text = join(parts[0]) + " " + OPTION_GAP.join(join(p) for p in parts[1:] if p) + " }"
        self.emit(Line(indent, i, close, text=text.replace("{  }", "{ }")))
        return close + 1

    def interface(self, i: int, indent: int, decl: s.InterfaceDecl) -> int:
        tokens = self.tokens
        j = self.last_of(decl.span) + 1
        # a `vip` list ends at an address not followed by a comma
        values = [self.last_of(w.span) for w in (*decl.vips, *([decl.vrid] if decl.vrid else []),
                                                  *([decl.mss] if decl.mss else []))]
        cuts = [n for n in values if n + 1 >= j or tokens[n + 1].value != ","]
        tail = OPTION_GAP.join(self.texts(self.groups(i + 2, j, cuts)))
        self.emit(Line(indent, i, j - 1, cells=[t.value for t in tokens[i:i + 2]], tail=tail,
                       kind="interface"))
        return j

    def option_cuts(self, options: Iterable[s.Option]) -> list[int]:
        """Where the options end; `multicast GROUP port N` is one option."""
        ordered = sorted(options, key=lambda o: (o.span.line, o.span.column))
        cuts = []
        for n, option in enumerate(ordered):
            last = self.last_of(option.span)
            following = ordered[n + 1] if n + 1 < len(ordered) else None
            if option.key in ("multicast", "backup-link") and following is not None \
                    and following.key in ("port", "backup-port") \
                    and self.first_of(following.span) == last + 2:
                continue
            cuts.append(last)
        return cuts

    def option_block(self, i: int, indent: int, options: tuple[s.Option, ...]) -> int:
        close = self._matching_brace(i + 1)
        inside = [o for o in options if i + 1 < self.first_of(o.span) < close]
        groups = self.groups(i + 2, close, self.option_cuts(inside))
        one_line = self.tokens[i].line == self.tokens[close].line
        name = self.tokens[i].value
        if one_line:
            inner = OPTION_GAP.join(self.texts(groups))
            text = f"{name} {{ {inner} }}" if inner else f"{name} {{ }}"
            self.emit(Line(indent, i, close, text=text))
            return close + 1
        self.open_block(Line(indent, i, i + 1, text=f"{name} {{"))
        for group in groups:
            self.emit(Line(indent + 1, group[0], group[-1],
                           text=join(self.tokens[group[0]:group[-1] + 1])))
        self.close_block(close, indent)
        return close + 1

    def member(self, i: int, indent: int, decl: s.MemberDecl) -> int:
        tokens = self.tokens
        brace = self._brace_after(i)
        close = self._matching_brace(brace)
        self.open_block(Line(indent, i, brace, text=join(tokens[i:brace + 1])))
        for link in decl.links:
            start, last = self.first_of(link.span), self.last_of(link.span)
            self.emit(Line(indent + 1, start, last,
                           cells=[tokens[start].value, tokens[start + 1].value],
                           tail=join(tokens[start + 2:last + 1]), kind="link"))
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
    for run in _runs(items):
        # a cell at the end of its line needs no padding, so it does not widen its column
        widths = [_column_width([len(line.cells[n]) for line in run
                                 if n < len(line.cells) and line.followed(n)])
                  for n in range(max(len(line.cells) for line in run))]
        for line in run:
            line.rendered = _render_cells(line, widths)
        column = max((len(line.rendered) for line in run if line.comment and line.rendered),
                     default=0)
        for line in run:
            line.comment_column = column
    out: list[str] = []
    for item in items:
        if isinstance(item, Blank):
            out.append("")
        elif isinstance(item, OwnComment):
            out.append(INDENT * item.indent + item.text)
        else:
            text = item.text if item.rendered is None else item.rendered
            if item.comment:
                column = item.comment_column if item.rendered is not None else len(text)
                text = text.ljust(column) + COMMENT_GAP + item.comment
            out.append(INDENT * item.indent + text)
    while out and out[-1] == "":
        out.pop()
    return "\n".join(out) + "\n" if out else ""


def format_text(text: str) -> str:
    """The canonical layout of a policy text; raises FormatError when it does not parse
    or holds a character a reviewer cannot see (FWC006: the layout would carry it on,
    and a comment's line-break look-alike would come out as a comment and a live rule
    once an editor or a later fmt broke the line there)."""
    if hidden_in_source(text):
        raise FormatError("the text holds a character a reviewer cannot see (FWC006)")
    statements, tokens, comments = parse_for_layout(text)
    return render(_Layout(text, statements, tokens, comments).run())
