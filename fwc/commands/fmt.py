"""`fwc fmt [--check] FILE...`: rewrite policy files in the canonical layout.

Each file is formatted on its own (includes are not followed). A file that does
not parse is left alone and its syntax errors are printed. With `--check`
nothing is written: the files that would change are listed and the exit status
is 1 if there is any. Exit 1 too when a file cannot be read or parsed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fwc.commands.common import print_diagnostics
from fwc.diagnostics import error
from fwc.formatting import FormatError, format_text
from fwc.parse import parse_text


def _format_file(path: Path) -> tuple[str, str] | None:
    """(old, new) text, or None after printing why the file cannot be formatted."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        print_diagnostics([error("FWC002", f"cannot read '{path}': {reason}")], {})
        return None
    _, diagnostics = parse_text(text, str(path))
    if diagnostics:
        print_diagnostics(diagnostics, {str(path): text})
        return None
    try:
        return text, format_text(text)
    except FormatError as exc:
        print(f"fwc fmt: {path}: {exc}", file=sys.stderr)
        return None


def run(args: argparse.Namespace) -> int:
    status = 0
    for name in args.files:
        path = Path(name)
        result = _format_file(path)
        if result is None:
            status = 1
            continue
        old, new = result
        if old == new:
            continue
        if args.check:
            print(name)
            status = 1
            continue
        try:
            path.write_text(new, encoding="utf-8")
        except OSError as exc:
            print(f"fwc fmt: cannot write '{name}': {exc.strerror or exc}", file=sys.stderr)
            status = 1
            continue
        print(f"formatted {name}", file=sys.stderr)
    return status
