"""Where policy files may come from and how they are read (docs/language.md, "Includes").

A policy names its includes itself, so a policy from review, a template or a
colleague decides which files fwc opens. These rules keep that harmless:

- includes stay inside the policy repository: the git work tree that holds the
  top file, or its directory outside git; `--include-path DIR` adds directories;
- only regular files are read (a FIFO would block forever, `/dev/zero` never
  ends), at most `MAX_FILE_BYTES` each and `MAX_TOTAL_BYTES` per policy;
- include chains are at most `MAX_INCLUDE_DEPTH` deep;
- password files follow the same rules (inside the repository or an include-path
  directory, regular, at most `MAX_SECRET_BYTES`): the password ends up in
  keepalived.conf, so a policy must not be able to copy any file of the machine there.

No diagnostic about a refused file echoes anything of its content.

The one exception to "inside the repository": `include <NAME>` may read fwc's own
library (`LIBRARY_ROOT`, package data installed with fwc, read-only), and a file of
it may include only other files of it (fwc.frontend.loader).

Imported by the command line, so no heavy imports here.
"""

from __future__ import annotations

import argparse
import os
import stat
from collections.abc import Iterable
from pathlib import Path

MIB = 1024 * 1024
# A 20,000-rule policy is about 1.6 MiB; the limits leave room for that and stop a
# runaway file long before it hurts the machine.
MAX_FILE_BYTES = 8 * MIB
MAX_TOTAL_BYTES = 32 * MIB
# Real include trees are two or three levels deep; a long chain is generated or hostile.
MAX_INCLUDE_DEPTH = 32
# A VRRP password file holds one short line.
MAX_SECRET_BYTES = 4096

# The standard object library shipped with fwc (docs/library.md).
LIBRARY_ROOT = Path(__file__).resolve().parent.parent / "library"

_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
          (stat.S_ISSOCK, "a socket"))


class Refused(OSError):
    """A file fwc will not read; `code` is the diagnostic to report (FWC010-FWC013).

    An OSError, so that a caller that only knows "cannot read" still reports it.
    """

    def __init__(self, code: str, message: str, hint: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.hint = hint


def _kind(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def not_regular(shown: str, mode: int) -> Refused:
    return Refused("FWC011", f"'{shown}' is {_kind(mode)}, not a regular file",
                   "only regular files are read as policies")


def too_large(shown: str, limit: int = MAX_FILE_BYTES) -> Refused:
    return Refused("FWC012", f"'{shown}' is larger than {limit // MIB} MiB",
                   f"a policy file may hold at most {MAX_FILE_BYTES // MIB} MiB and a "
                   f"policy with its includes {MAX_TOTAL_BYTES // MIB} MiB")


def read_regular(path: Path, shown: str, limit: int = MAX_FILE_BYTES) -> bytes:
    """The bytes of PATH if it is a regular file of at most LIMIT bytes, else Refused.

    Checked before opening (a device is never opened) and again on the open file
    (the path may have changed in between); O_NONBLOCK so that even a FIFO swapped in
    at that moment cannot block the open. PATH is resolved by the caller (containment is
    checked on it), so a symbolic link appearing there later is refused (O_NOFOLLOW).
    """
    mode = os.stat(path).st_mode
    if not stat.S_ISREG(mode):
        raise not_regular(shown, mode)
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(path, flags)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise not_regular(shown, info.st_mode)
        if info.st_size > limit:
            raise too_large(shown, limit)
        chunks: list[bytes] = []
        size = 0
        while size <= limit:  # the file may grow after fstat
            chunk = os.read(fd, min(MIB, limit + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > limit:
            raise too_large(shown, limit)
        return b"".join(chunks)
    finally:
        os.close(fd)


def library_name_problem(name: str) -> str | None:
    """Why NAME cannot name a library file (`include <NAME>`), or None."""
    parts = name.split("/")
    if name.startswith("/") or any(p in ("", ".", "..") for p in parts):
        return "must be a relative path without '.', '..' or empty parts"
    if any(not ch.isalnum() and ch not in "_.-/" for ch in name):
        return "may hold only letters, digits, '_', '.', '-' and '/'"
    if not name.endswith(".fw"):
        return "must name a .fw file"
    return None


def repository_root(top: Path) -> Path:
    """The git work tree holding TOP (a file), or TOP's directory outside git (resolved)."""
    directory = resolved(top.absolute().parent)
    for candidate in (directory, *directory.parents):
        if (candidate / ".git").exists():
            return candidate
    return directory


def resolved(path: Path) -> Path:
    """PATH absolute with every symbolic link followed, as `Path.resolve()` does, except
    that a link loop stays as it is (opening it then fails with ELOOP, which the readers
    report as any unreadable file) where Python before 3.13 raised RuntimeError: a
    traceback for `fwc check p.fw` with p.fw a link to itself."""
    return Path(os.path.realpath(path))


def inside(path: Path, roots: Iterable[Path]) -> bool:
    return any(path == root or path.is_relative_to(root) for root in roots)


def include_dir(text: str) -> Path:
    """argparse type of `--include-path`: an existing directory."""
    path = Path(text)
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"'{text}' is not a directory")
    return path


def add_include_path_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--include-path", dest="include_path", action="append", type=include_dir, default=[],
        metavar="DIR",
        help="also allow includes from DIR, and look up relative includes not found next to "
             "the including file there (repeatable, searched in order)")


def secret_reader(top: Path, include_path: Iterable[Path] = ()):  # type: ignore[no-untyped-def]
    """`read(path) -> str` for the password files of the policy TOP: inside its repository
    (or an include-path directory), regular, small; Refused otherwise (echoing nothing)."""
    roots = (repository_root(Path(top)), *(resolved(Path(d)) for d in include_path))

    def read(path: Path) -> str:
        target = resolved(Path(path).absolute())
        if not inside(target, roots):
            raise Refused("FWC010", f"password file '{path}' is outside the policy repository "
                          f"{roots[0]}",
                          "keep the password file inside the repository (and out of git: "
                          "list it in .gitignore), or allow its directory with --include-path")
        return read_regular(target, str(path), MAX_SECRET_BYTES).decode("utf-8")

    return read
