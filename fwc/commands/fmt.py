"""`fwc fmt [--check | --diff] FILE... | -`: rewrite policy files in the canonical layout.

Each file is formatted on its own (includes are not followed). A file that does
not parse is left alone and its syntax errors are printed. With `--check`
nothing is written: the files that would change are listed and the exit status
is 1 if there is any. `--diff` writes nothing either and prints a unified diff of
what would change (exit 1 when there is any). `-` formats standard input to standard
output (editors, `fwc fmt - < x.fw`); on a syntax error nothing is printed to stdout.
Exit 1 too when a file cannot be read or parsed.
"""

from __future__ import annotations

import argparse
import difflib
import os
import sys
from pathlib import Path

from fwc.commands.common import without_cycle_collection, write_file
from fwc.diagnostics import error, print_diagnostics, shown_text
from fwc.frontend.formatting import FormatError, format_text
from fwc.frontend.parse import parse_text
from fwc.frontend.sources import Refused, read_regular

STDIN = "-"
STDIN_NAME = "<stdin>"


def _format_file(path: Path) -> tuple[str, str] | None:
    """(old, new) text, or None after printing why the file cannot be formatted."""
    try:
        # Bytes, decoded, as `fwc check` reads a policy: a text-mode read turns a lone "\r"
        # into a line break, and a comment holding one (`# off\raccept from any to any`,
        # to the parser one comment) came out of fmt as a comment and a live rule.
        # Only a regular file, as `fwc check` reads one: a FIFO blocked fmt for ever,
        # /dev/zero ran it out of memory, and the rename would replace either.
        text = read_regular(Path(os.path.realpath(path)), str(path)).decode("utf-8")
    except Refused as exc:
        print_diagnostics([error(exc.code, exc.message, hint=exc.hint)], {})
        return None
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        print_diagnostics([error("FWC002", f"cannot read '{path}': {reason}")], {})
        return None
    return _format_text(text, str(path))


def _format_text(text: str, name: str) -> tuple[str, str] | None:
    # The layout's parse is lark's over the whole text, as `parse_text` falls back to on
    # any doubt: the text is formatted exactly when it has no syntax error, so the
    # diagnostics' parse runs only for a text that fails (every text was parsed twice).
    try:
        return text, format_text(text)
    except FormatError as exc:
        _, diagnostics = parse_text(text, name)
        if diagnostics:
            print_diagnostics(diagnostics, {name: text})
        else:
            print(shown_text(f"fwc fmt: {name}: {exc}"), file=sys.stderr)
        return None


def _read_stdin() -> str | None:
    try:
        return sys.stdin.buffer.read().decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        print_diagnostics([error("FWC002", f"cannot read standard input: {reason}")], {})
        return None


def unified(old: str, new: str, name: str) -> str:
    """The diff `fwc fmt --diff` prints: a/NAME -> b/NAME, like git."""
    shown = shown_text(name)
    lines = difflib.unified_diff(old.splitlines(keepends=True), new.splitlines(keepends=True),
                                 f"a/{shown}", f"b/{shown}")
    return "".join(line if line.endswith("\n") else line + "\n\\ No newline at end of file\n"
                   for line in lines)


def run(args: argparse.Namespace) -> int:
    with without_cycle_collection(args):
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    if STDIN in args.files and len(args.files) > 1:
        print("fwc fmt: '-' (standard input) cannot be combined with files", file=sys.stderr)
        return 2
    show_diff = getattr(args, "diff", False)
    if args.files == [STDIN]:
        text = _read_stdin()
        result = None if text is None else _format_text(text, STDIN_NAME)
        if result is None:
            return 1
        old, new = result
        if args.check or show_diff:
            if show_diff:
                sys.stdout.write(unified(old, new, STDIN_NAME))
            elif old != new:
                print(STDIN)
            return 1 if old != new else 0
        sys.stdout.write(new)
        return 0
    status = 0
    for name in args.files:
        path = Path(name)
        # A file name comes from a glob over a repository under review: one holding an
        # escape sequence or a bidirectional control is printed escaped (fwc.text).
        shown = shown_text(name)
        result = _format_file(path)
        if result is None:
            status = 1
            continue
        old, new = result
        if old == new:
            continue
        if show_diff:
            sys.stdout.write(unified(old, new, name))
            status = 1
            continue
        if args.check:
            print(shown)
            status = 1
            continue
        try:
            write_file(path, new)
        except OSError as exc:
            print(f"fwc fmt: cannot write '{shown}': {exc.strerror or exc}; the file is "
                  "unchanged", file=sys.stderr)
            status = 1
            continue
        print(f"formatted {shown}", file=sys.stderr)
    return status
