"""`fwc fmt [--check] FILE...`: rewrite policy files in the canonical layout.

Each file is formatted on its own (includes are not followed). A file that does
not parse is left alone and its syntax errors are printed. With `--check`
nothing is written: the files that would change are listed and the exit status
is 1 if there is any. Exit 1 too when a file cannot be read or parsed.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import stat
import sys
import tempfile
from pathlib import Path

from fwc.diagnostics import error, print_diagnostics
from fwc.frontend.formatting import FormatError, format_text
from fwc.frontend.parse import parse_text


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


def replace_file(path: Path, text: str) -> None:
    """Write TEXT to PATH all or nothing: a full disk or a crash leaves the old file.

    Writing in place truncates first, so a failed write lost the end of the
    policy. The new text goes to a temporary file next to the real one (a
    symbolic link keeps pointing at it), with its mode and, where allowed, its
    owner, is flushed to disk, and only then renamed over it.
    """
    target = Path(os.path.realpath(path))
    old = os.stat(target)
    fd, temporary = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".fwc-fmt",
                                     dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            os.fchmod(out.fileno(), stat.S_IMODE(old.st_mode))
            with contextlib.suppress(PermissionError):
                os.fchown(out.fileno(), old.st_uid, old.st_gid)
            out.write(text.encode("utf-8"))
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    # The rename itself must reach the disk too, or a crash could bring back the old name.
    with contextlib.suppress(OSError):
        directory = os.open(target.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)


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
            replace_file(path, new)
        except OSError as exc:
            print(f"fwc fmt: cannot write '{name}': {exc.strerror or exc}; the file is "
                  "unchanged", file=sys.stderr)
            status = 1
            continue
        print(f"formatted {name}", file=sys.stderr)
    return status
