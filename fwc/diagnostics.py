"""Diagnostics: what every stage reports instead of raising.

A diagnostic carries a stable code, a one-line message, a source span and an
optional hint. Rendering is compiler style so that editors can jump to it.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import NamedTuple, TextIO

from fwc.text import escape_hidden


class Severity(StrEnum):
    ERROR = "error"
    WARNING = "warning"
    NOTE = "note"


class Span(NamedTuple):
    """Where something was written: 1-based line and column, end column exclusive.

    A NamedTuple rather than a dataclass: a large policy creates hundreds of
    thousands of spans, and tuples are several times cheaper to build.
    """

    file: str
    line: int
    column: int
    end_line: int
    end_column: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}"


class OptionSpans(tuple):  # type: ignore[type-arg]  # flat: see the docstring
    """Where each part of a declaration was written, by its key: its options (a rule's
    `service`, `in`, `log`; a block's `priority`) and, for rules and expectations, first
    the items of their from/to lists (`from.0`, `to.1`: fwc.model.item_key). `get(key)`
    is its Span, None when it was not written. One flat tuple per declaration, (file,
    key, line, column, end_line, end_column, key, line, ...), rather than a (key, Span)
    pair and a Span per part: a 100,000-rule policy writes about 250,000 options, 35 MB
    as pairs, 10 MB flat (and its 200,000 items, which had a Span each). A declaration
    is in one file."""

    __slots__ = ()

    @classmethod
    def of(cls, pairs: Iterable[tuple[str, Span]]) -> OptionSpans:
        flat: list[object] = []
        for key, span in pairs:
            if not flat:
                flat.append(span.file)
            elif span.file != flat[0]:
                raise ValueError(f"option '{key}' is in {span.file}, not in {flat[0]}")
            flat += (key, span.line, span.column, span.end_line, span.end_column)
        return cls(flat) if flat else NO_OPTION_SPANS

    def get(self, key: str) -> Span | None:
        for at in range(1, len(self), 5):
            if self[at] == key:
                return Span(self[0], *self[at + 1:at + 5])
        return None

    def keys(self) -> tuple[str, ...]:
        return self[1::5]

    def pairs(self) -> list[tuple[str, Span]]:
        return [(key, span) for key in self.keys()
                for span in (self.get(key),) if span is not None]


NO_OPTION_SPANS = OptionSpans()


@dataclass(frozen=True, slots=True)
class Related:
    span: Span
    message: str


@dataclass(frozen=True, slots=True)
class Diagnostic:
    code: str
    severity: Severity
    message: str
    span: Span | None = None
    hint: str | None = None
    related: tuple[Related, ...] = field(default=())

    @property
    def is_error(self) -> bool:
        return self.severity is Severity.ERROR

    def sort_key(self) -> tuple[str, int, int, str]:
        if self.span is None:
            return ("", 0, 0, self.code)
        return (self.span.file, self.span.line, self.span.column, self.code)

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {
            "code": self.code,
            "severity": str(self.severity),
            "message": self.message,
        }
        if self.span is not None:
            out.update(
                file=self.span.file,
                line=self.span.line,
                column=self.span.column,
                end_line=self.span.end_line,
                end_column=self.span.end_column,
            )
        if self.hint:
            out["hint"] = self.hint
        if self.related:
            out["related"] = [
                {"file": r.span.file, "line": r.span.line, "column": r.span.column,
                 "message": r.message}
                for r in self.related
            ]
        return out


def error(code: str, message: str, span: Span | None = None, hint: str | None = None,
          related: Iterable[Related] = ()) -> Diagnostic:
    return Diagnostic(code, Severity.ERROR, message, span, hint, tuple(related))


def warning(code: str, message: str, span: Span | None = None, hint: str | None = None,
            related: Iterable[Related] = ()) -> Diagnostic:
    return Diagnostic(code, Severity.WARNING, message, span, hint, tuple(related))


def has_errors(diagnostics: Iterable[Diagnostic]) -> bool:
    return any(d.is_error for d in diagnostics)


def shown_text(line: str) -> str:
    """LINE with each character a reader cannot see as it is (fwc.text.HIDDEN_CATEGORIES:
    controls, line separators, format characters) as its escape, `\\u202e`: an escape
    sequence in a comment, or in the name of a file a pull request adds, could erase the
    diagnostics above it on a terminal, a bidirectional override reorders what is shown,
    and the escape names the character where a placeholder would not."""
    return escape_hidden(line)


def _excerpt(span: Span, sources: Mapping[str, str],
             split: dict[str, list[str]] | None = None) -> list[str]:
    text = sources.get(span.file)
    if text is None:
        return []
    # Split each file once per report: a 20,000-rule file split again for every
    # diagnostic took half a second of `fwc check` for a hundred warnings.
    # Lines end at "\n", as the parser counts them: str.splitlines also ends one at a
    # U+2028, a form feed, a lone "\r" ..., which a comment may hold, and every excerpt
    # after it showed the line before the one reported.
    if split is None:
        lines = text.split("\n")
    elif span.file in split:
        lines = split[span.file]
    else:
        lines = split[span.file] = text.split("\n")
    if not 1 <= span.line <= len(lines):
        return []
    raw = lines[span.line - 1].removesuffix("\r").expandtabs(1)
    end = span.column
    if span.end_line == span.line and span.end_column > span.column:
        end = span.end_column - 1
    # Columns as shown: an escape is wider than the character it stands for.
    start = len(shown_text(raw[:span.column - 1]))
    width = max(1, len(shown_text(raw[span.column - 1:end])))
    gutter = f"{span.line:>4} | "
    return [gutter + shown_text(raw), " " * (len(gutter) + start) + "^" + "~" * (width - 1)]


def render_text(diagnostics: Iterable[Diagnostic], sources: Mapping[str, str]) -> str:
    out: list[str] = []
    split: dict[str, list[str]] = {}
    for d in diagnostics:
        # (a message and a span name files, whose names a repository under review decides)
        where = f"{d.span}: " if d.span else "fwc: "
        out.append(shown_text(f"{where}{d.severity}[{d.code}]: {d.message}"))
        if d.span:
            out.extend(_excerpt(d.span, sources, split))
        for r in d.related:
            out.append(shown_text(f"{r.span}: note: {r.message}"))
            out.extend(_excerpt(r.span, sources, split))
        if d.hint:
            out.append(shown_text(f"     = hint: {d.hint}"))
    return "\n".join(out) + ("\n" if out else "")


def render_json(diagnostics: Iterable[Diagnostic]) -> str:
    items = [d.to_json() for d in diagnostics]
    summary = {
        "errors": sum(1 for i in items if i["severity"] == "error"),
        "warnings": sum(1 for i in items if i["severity"] == "warning"),
    }
    return json.dumps({"diagnostics": items, **summary}, indent=2) + "\n"


# GitHub Actions workflow commands: `::error file=F,line=L,...::message`. A value may not
# carry a newline (it would end the command), and a property value may not carry `,` or
# `:` either; the runner decodes these escapes.
_GITHUB_DATA = {"%": "%25", "\r": "%0D", "\n": "%0A"}
_GITHUB_PROPERTY = {**_GITHUB_DATA, ":": "%3A", ",": "%2C"}
_GITHUB_COMMAND = {Severity.ERROR: "error", Severity.WARNING: "warning",
                   Severity.NOTE: "notice"}


def _github_escape(text: str, table: Mapping[str, str]) -> str:
    return "".join(table.get(char, char) for char in text)


def render_github(diagnostics: Iterable[Diagnostic]) -> str:
    """One workflow annotation per diagnostic (`fwc check --format github`)."""
    out: list[str] = []
    for d in diagnostics:
        props: list[tuple[str, object]] = []
        if d.span is not None:
            props += [("file", d.span.file), ("line", d.span.line), ("col", d.span.column)]
            if d.span.end_line >= d.span.line:
                props.append(("endLine", d.span.end_line))
                if d.span.end_line == d.span.line and d.span.end_column > d.span.column:
                    props.append(("endColumn", d.span.end_column))
        props.append(("title", f"fwc {d.code}"))
        message = d.message + (f"\nhint: {d.hint}" if d.hint else "")
        for r in d.related:
            message += f"\n{r.span}: {r.message}"
        head = ",".join(f"{k}={_github_escape(str(v), _GITHUB_PROPERTY)}" for k, v in props)
        out.append(f"::{_GITHUB_COMMAND[d.severity]} {head}::"
                   f"{_github_escape(message, _GITHUB_DATA)}")
    return "".join(line + "\n" for line in out)


# The formats every command that reports diagnostics offers (`--format`); `sarif` is
# rendered by fwc.checks.sarif (it needs the registry's rule descriptions).
DIAGNOSTIC_FORMATS = ("text", "json", "sarif", "github")


def print_diagnostics(diagnostics: Iterable[Diagnostic], texts: dict[str, str],
                      fmt: str = "text", stream=None) -> None:
    out = stream or sys.stderr
    diags = list(diagnostics)
    if fmt == "json":
        sys.stdout.write(render_json(diags))
        return
    if fmt == "github":
        sys.stdout.write(render_github(diags))
        return
    if fmt == "sarif":
        raise ValueError("SARIF needs the check registry: use fwc.checks.sarif.render_sarif")
    out.write(render_text(diags, texts))
    errors = sum(1 for d in diags if d.severity is Severity.ERROR)
    warnings = sum(1 for d in diags if d.severity is Severity.WARNING)
    if errors or warnings:
        out.write(f"{errors} error(s), {warnings} warning(s)\n")


def failed(diagnostics: Iterable[Diagnostic], strict: bool) -> bool:
    return any(d.severity is Severity.ERROR or (strict and d.severity is Severity.WARNING)
               for d in diagnostics)


# -- progress ----------------------------------------------------------------------------
# A 100,000-rule policy takes seconds per phase; a person at a terminal should see
# that fwc works and how far it is. Nothing is written unless the stream is a
# terminal: pipes, files, CI logs and `--format json` get exactly what they got
# before. One line is rewritten in place (carriage return) and erased before the
# diagnostics and the summary are printed.

# Seconds between two redraws of the same phase: redrawing per check or member is
# cheap, but a terminal over ssh should not receive thousands of lines.
REDRAW = 0.1


class Progress:
    """`phase(name, share)`: what runs now and the share of the whole work already done."""

    __slots__ = ("_last", "_name", "_shown", "stream")

    def __init__(self, stream: TextIO | None) -> None:
        self.stream = stream
        self._shown = ""
        self._name = ""
        self._last = 0.0

    @classmethod
    def for_terminal(cls, stream: TextIO, enabled: bool = True) -> Progress:
        """Progress on `stream` when it is a terminal (and `enabled`), else silent."""
        try:
            live = enabled and stream.isatty()
        except (AttributeError, ValueError):  # a closed or unusual stream: stay silent
            live = False
        return cls(stream if live else None)

    @property
    def live(self) -> bool:
        return self.stream is not None

    def phase(self, name: str, share: float) -> None:
        if self.stream is None:
            return
        now = time.monotonic()
        percent = max(0, min(100, int(share * 100)))
        text = f"fwc: {name} {percent:3d}%"
        if name == self._name and (text == self._shown or now - self._last < REDRAW):
            return
        self.stream.write("\r" + text.ljust(len(self._shown)))
        self.stream.flush()
        self._shown, self._name, self._last = text, name, now

    def done(self) -> None:
        """Erase the line, so that whatever is printed next starts clean."""
        if self.stream is None or not self._shown:
            return
        self.stream.write("\r" + " " * len(self._shown) + "\r")
        self.stream.flush()
        self._shown = self._name = ""

    def within(self, start: float, end: float) -> Part:
        """A view that maps 0..1 onto start..end of this progress."""
        return Part(self, start, end)


class Part:
    """A stretch of a `Progress`: the analysis reports 0..1, the compile places it."""

    __slots__ = ("end", "outer", "start")

    def __init__(self, outer: Progress | Part, start: float, end: float) -> None:
        self.outer, self.start, self.end = outer, start, end

    def phase(self, name: str, share: float) -> None:
        self.outer.phase(name, self.start + (self.end - self.start) * share)

    def within(self, start: float, end: float) -> Part:
        return Part(self, start, end)


Reporter = Progress | Part
SILENT = Progress(None)
