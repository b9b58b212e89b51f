"""Read a policy file and everything it includes, in order, with cycle detection.

Which files an include may name, and how they are read, is `fwc.frontend.sources`' business:
inside the policy repository or an `--include-path` directory, regular files only,
bounded in size and in depth.

`include <NAME>` names a library file: NAME is looked up in each `--include-path`
directory, then in the library shipped with fwc (`fwc/library`, package data). The
shipped library is the one place outside the policy tree fwc reads, read-only, and
only through `<...>`: a quoted include can never reach it, and nothing a library file
includes may leave it (sources.LIBRARY_ROOT).
"""

from __future__ import annotations

import hashlib
import os
import posixpath
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

from fwc.diagnostics import Diagnostic, Related, error
from fwc.frontend import syntax as s
from fwc.frontend.parse import PolicyParser, borrowed_parser, parse_text
from fwc.frontend.sources import (
    LIBRARY_ROOT,
    MAX_FILE_BYTES,
    MAX_INCLUDE_DEPTH,
    MAX_TOTAL_BYTES,
    MIB,
    Refused,
    inside,
    library_name_problem,
    read_regular,
    repository_root,
    resolved,
    too_large,
)
from fwc.model.records import dataclass

Reader = Callable[[Path], str]


@dataclass(frozen=True, slots=True)
class LoadedProgram:
    root: str
    files: tuple[s.SourceFile, ...]
    hashes: tuple[tuple[str, str], ...]  # (path, sha256) of every file read
    # Files read through `include <NAME>` (and what they include): definitions offered
    # to the policy, so an unused one is not a finding (FWC103).
    libraries: frozenset[str] = frozenset()
    # (path as named, the file it resolved to) of the policy and every include target,
    # read or not (a cycle): which files a load reads is these and the files' content,
    # so the result cache keys on both (a link retargeted since reads another file).
    links: tuple[tuple[str, str], ...] = ()
    # (path as read, name) of the files whose name in the generated files (MANIFEST, rule
    # comments) is not their path as read relative to the root's directory (`_Disk.name`).
    source_names: tuple[tuple[str, str], ...] = ()

    @property
    def texts(self) -> dict[str, str]:
        return {f.path: f.text for f in self.files}

    def without_syntax(self) -> LoadedProgram:
        """The same files without their syntax trees (statements and comments): what a
        caller that only prints diagnostics keeps once the model is resolved (the trees
        of a 100,000-rule policy are about 200 MB)."""
        return replace(self, files=tuple(replace(f, statements=(), comments=())
                                         for f in self.files))


def display_path(path: Path) -> str:
    """A path as the user should see it: relative to the working directory if inside it."""
    try:
        return str(resolved(path).relative_to(resolved(Path.cwd())))
    except ValueError:
        return str(path)


class _Disk:
    """Files on disk. Keys are resolved paths; includes stay under the roots."""

    def __init__(self, top: Path, include_path: Sequence[Path]) -> None:
        self.search = tuple(resolved(Path(d)) for d in include_path)
        self.repository = repository_root(top)
        self.roots = (self.repository, *self.search)
        self.top = top
        self.top_directory = resolved(top.absolute().parent)

    def key(self, file: Path) -> Path:
        return resolved(file)

    def shown(self, file: Path) -> str:
        return display_path(file)

    def exists(self, file: Path) -> bool:
        return os.path.lexists(file)

    def refuse(self, target: Path, name: str) -> Refused | None:
        """Why TARGET (named NAME in an include) may not be read, or None."""
        if inside(resolved(target), self.roots):
            return None
        where = f"the policy repository {self.repository}"
        hint = ("keep included files inside the repository, or allow their directory "
                "with --include-path DIR")
        if inside(Path(os.path.normpath(target.absolute())), self.roots):
            return Refused("FWC010", f"include '{name}' leads outside {where} through a "
                           "symbolic link", hint)
        return Refused("FWC010", f"include '{name}' is outside {where}", hint)

    def read(self, file: Path, shown: str) -> bytes:
        return read_regular(resolved(file), shown)

    def name(self, file: Path) -> str:
        """What the generated files call FILE, the same from every working directory (its
        shown path is relative to it, or as written): the root policy as named; a file
        outside the repository that an `--include-path` directory holds `<NAME>`, its path
        below the first such directory, as `include <NAME>` names it (where that
        directory lies differs from machine to machine: `../../home/alice/...`); any
        other its path from the root policy's directory to the file the kernel opened
        (a linked directory's `..` is its target's parent)."""
        if file == self.top:
            return file.name
        real = resolved(file)
        if not inside(real, (self.repository,)):
            for directory in self.search:
                if inside(real, (directory,)):
                    return f"<{real.relative_to(directory).as_posix()}>"
        return Path(os.path.relpath(real, self.top_directory)).as_posix()


class _Through:
    """Files through a reader (`fwc diff`: a git revision or the work tree).

    Paths are repository-relative and normalised here, so `lib/../edge.fw` is the same
    file as `edge.fw` (cycle detection) and nothing climbs out of the repository.
    """

    def __init__(self, reader: Reader, include_path: Sequence[Path]) -> None:
        self.reader = reader
        self.search = tuple(Path(posixpath.normpath(Path(d).as_posix())) for d in include_path)

    def key(self, file: Path) -> Path:
        return Path(posixpath.normpath(file.as_posix()))

    def shown(self, file: Path) -> str:
        return str(self.key(file))

    def exists(self, file: Path) -> bool:
        if self.refuse(file, "") is not None:
            return False  # never even opened
        try:
            self.reader(self.key(file))
        except FileNotFoundError:
            return False
        except (OSError, UnicodeDecodeError, Refused):
            return True  # it is there; reading it again reports the problem
        return True

    def refuse(self, target: Path, name: str) -> Refused | None:
        rel = posixpath.normpath(target.as_posix())
        if os.path.isabs(rel) or rel == ".." or rel.startswith("../"):
            return Refused("FWC010", f"include '{name}' is outside the repository",
                           "keep included files inside the repository")
        return None

    def read(self, file: Path, shown: str) -> bytes:
        data = self.reader(self.key(file)).encode("utf-8")
        if len(data) > MAX_FILE_BYTES:
            raise too_large(shown)
        return data

    def name(self, file: Path) -> str | None:
        return None  # repository paths, normalised: relative to the root's directory


class _Library:
    """The library shipped with fwc (package data): `include <std/services.fw>`.

    Read from disk whatever the policy is read from (`fwc diff` reads the policy from
    git, the library from the installed fwc), named `<std/services.fw>` in diagnostics
    and the MANIFEST so that the name does not depend on where fwc is installed.
    """

    search: tuple[Path, ...] = ()

    def __init__(self, root: Path) -> None:
        self.root = resolved(root)

    def key(self, file: Path) -> Path:
        return resolved(file)

    def shown(self, file: Path) -> str:
        return f"<{resolved(file).relative_to(self.root).as_posix()}>"

    def exists(self, file: Path) -> bool:
        return os.path.lexists(file)

    def refuse(self, target: Path, name: str) -> Refused | None:
        if inside(resolved(target), (self.root,)):
            return None
        return Refused("FWC010", f"include '{name}' leads outside fwc's library",
                       "a library file may include only other files of the library")

    def read(self, file: Path, shown: str) -> bytes:
        return read_regular(resolved(file), shown)

    def name(self, file: Path) -> str | None:
        return None  # shown as `<std/services.fw>`, its name everywhere


def load(path: str | Path, reader: Reader | None = None,
         include_path: Sequence[Path] = (), lines: bool = False) \
        -> tuple[LoadedProgram, list[Diagnostic]]:
    """Load `path` and its includes. `reader(Path) -> str` lets `fwc diff` read from git.

    INCLUDE_PATH: directories includes may also come from; a relative include not
    found next to the including file is looked up in them, in order.
    LINES: plain rule lines of `policy` blocks may be s.RuleLine records instead of
    RuleDecl (`fwc.frontend.parse.parse_text`): for a caller that resolves the program and
    then drops its syntax trees, nothing else (`fwc.pipeline.model` without keep_syntax).
    """
    # One parser for this load: it names each file in its spans, and no other load holds it
    # meanwhile.
    with borrowed_parser() as policy_parser:
        return _load(Path(path), reader, include_path, lines, policy_parser)


def _load(root: Path, reader: Reader | None, include_path: Sequence[Path], lines: bool,
          policy_parser: PolicyParser) -> tuple[LoadedProgram, list[Diagnostic]]:
    where = _Disk(root, include_path) if reader is None else _Through(reader, include_path)
    library = _Library(LIBRARY_ROOT)
    libraries: set[str] = set()
    diagnostics: list[Diagnostic] = []
    files: list[s.SourceFile] = []
    hashes: list[tuple[str, str]] = []
    loaded: set[Path] = set()
    links: dict[tuple[str, str], None] = {}  # ordered, without repeats
    source_names: list[tuple[str, str]] = []
    total = 0

    def visit(file: Path, stack: list[tuple[Path, s.Include | None]],
              origin: _Disk | _Through | _Library, in_library: bool = False) -> None:
        nonlocal total
        key = origin.key(file)
        shown = origin.shown(file)
        if in_library:
            libraries.add(shown)
        if key in loaded:
            return
        include = stack[-1][1] if stack else None
        span = include.span if include else None
        try:
            data = origin.read(file, shown)
            total += len(data)
            if total > MAX_TOTAL_BYTES:
                raise Refused("FWC012", f"'{shown}' takes the policy and its includes over "
                              f"{MAX_TOTAL_BYTES // MIB} MiB",
                              "split the policy, or include fewer or smaller files")
            text = data.decode("utf-8")
        except Refused as exc:
            diagnostics.append(error(exc.code, exc.message, span, hint=exc.hint))
            return
        except (OSError, UnicodeDecodeError, KeyError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            diagnostics.append(error(
                "FWC002", f"cannot read '{shown}': {reason}", span,
                hint="include paths are relative to the including file" if include else None))
            return
        loaded.add(key)
        hashes.append((shown, hashlib.sha256(text.encode()).hexdigest()))
        name = origin.name(file)
        if name is not None:
            source_names.append((shown, name))
        source, diags = parse_text(text, shown, policy_parser, lines=lines)
        diagnostics.extend(diags)
        files.append(source)
        for statement in source.statements:
            if not isinstance(statement, s.Include):
                continue
            name = statement.path.text
            target_source = origin
            try:
                if statement.library:
                    found = _locate_library(where, library, name)
                    if isinstance(found, Diagnostic):
                        diagnostics.append(replace(found, span=statement.span))
                        continue
                    target, target_source = found
                else:
                    target = _locate(origin, file, name)
                target_key = target_source.key(target)
                links[str(target), str(target_key)] = None
            except ValueError as exc:  # a name the OS cannot take (an embedded NUL byte)
                diagnostics.append(error("FWC002", f"cannot read {name!r}: {exc}",
                                         statement.span))
                continue
            chain = [p for p, _ in stack] + [key]
            if target_key in chain:
                cycle = " -> ".join(
                    [display_path(p) for p in chain[chain.index(target_key):]]
                    + [display_path(target_key)])
                diagnostics.append(error(
                    "FWC003", f"include cycle: {cycle}", statement.span,
                    hint="remove one of the includes in the cycle",
                    related=[Related(inc.span, "included here")
                             for _, inc in stack[1:] if inc is not None]))
                continue
            if len(chain) >= MAX_INCLUDE_DEPTH:
                diagnostics.append(error(
                    "FWC013", f"includes nested more than {MAX_INCLUDE_DEPTH} files deep",
                    statement.span, hint="include the shared files from fewer levels"))
                continue
            refused = target_source.refuse(target, name)
            if refused is not None:
                diagnostics.append(error(refused.code, refused.message, statement.span,
                                         hint=refused.hint))
                continue
            # (ruff takes the `del visit` below for an unbound name here: F821)
            visit(target, [*stack, (key, statement)], target_source,  # noqa: F821
                  in_library or statement.library)

    links[str(root), str(where.key(root))] = None
    visit(root, [], where)
    program = LoadedProgram(where.shown(root) if reader is not None else display_path(root),
                            tuple(files), tuple(hashes), frozenset(libraries),
                            tuple(links), tuple(source_names))
    # `visit` refers to itself through its closure, a cycle that would outlive this call
    # when the cyclic collector is off (as the CLI runs), holding every syntax tree, the
    # parser and the hashes to the end of the run: deleted, its cell no longer does.
    del visit
    return program, diagnostics


def _locate_library(where: _Disk | _Through, library: _Library, name: str) \
        -> tuple[Path, _Disk | _Through | _Library] | Diagnostic:
    """`include <NAME>`: the first `--include-path` directory holding NAME, else fwc's
    own library; a diagnostic (without a span yet) when NAME is malformed or nowhere."""
    problem = library_name_problem(name)
    if problem:
        return error("FWC035", f"library name <{name}> {problem}",
                     hint="write a relative path below a library directory, e.g. "
                          "<std/services.fw>")
    for directory in where.search:
        candidate = directory / name
        if where.exists(candidate):
            return candidate, where
    candidate = library.root / name
    if library.exists(candidate):
        return candidate, library
    searched = [str(d) for d in where.search] + [f"fwc's library ({library.root})"]
    return error("FWC036", f"no library file <{name}>",
                 hint=f"searched: {', '.join(searched)}; the shipped files are listed in "
                      "docs/library.md")


def _locate(where: _Disk | _Through, including: Path, name: str) -> Path:
    """The file an include names: next to the including file, else in the include path."""
    here = including.parent / name
    if Path(name).is_absolute() or not where.search or where.exists(here):
        return here
    for directory in where.search:
        candidate = directory / name
        if where.exists(candidate):
            return candidate
    return here
