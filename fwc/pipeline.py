"""The front half of every command: load -> parse -> resolve -> check.

With a result cache (fwc.cache; `fwc check` and `fwc compile` unless `--no-cache`), the
diagnostics of a policy are kept under a key made of the content hashes of every file
it read (the policy, its includes, its password files), the fwc code (`code_digest`)
and where it was read from (working directory, policy path, repository root):
`cached_analysis` answers without parsing when none of them changed, and `analyse`
with a cache skips the checks then (parse and resolve still build the model).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fwc.cache import ResultCache, code_digest
from fwc.diagnostics import (
    SILENT,
    Diagnostic,
    Related,
    Reporter,
    Severity,
    Span,
    has_errors,
    print_diagnostics,
)
from fwc.frontend.loader import LoadedProgram, load
from fwc.frontend.sources import LIBRARY_ROOT, Refused, repository_root
from fwc.model import Policy

# Outcomes that depend on the file system beyond the content of the files read (a
# missing include appearing, a repository or size limit): never cached.
UNCACHED_CODES = frozenset({"FWC002", "FWC010", "FWC011", "FWC012", "FWC013"})


@dataclass(frozen=True)
class Analysis:
    program: LoadedProgram
    policy: Policy | None  # None when the files could not be parsed
    diagnostics: tuple[Diagnostic, ...]
    cache_key: str | None = None  # the content key of this analysis (with a cache only)

    @property
    def ok(self) -> bool:
        return self.policy is not None and not has_errors(self.diagnostics)


def analyse(path: str | Path, *, run_checks: bool = True, reader=None,
            read_secret=None, include_path: Sequence[Path] = (),
            progress: Reporter = SILENT, cache: ResultCache | None = None,
            keep_syntax: bool = True) -> Analysis:
    """Load, parse, resolve and (RUN_CHECKS) check the policy at PATH.

    KEEP_SYNTAX False: the program returned (and held during the checks) has no syntax
    trees, only its texts (`LoadedProgram.without_syntax`; check and compile).

    CACHE: when the same content was analysed before, its diagnostics come from the
    cache and the checks are not run again; otherwise they are stored there. The cache
    is not used for a READER (another revision), nor with an include path (which file
    an include names then depends on which files exist, not only on content).
    """
    place = _Place.of(path, include_path, cache) if reader is None and read_secret is None \
        else None
    # Shares of the whole analysis, as measured on large policies (docs/performance.md).
    progress.phase("parsing", 0.0)
    program, diagnostics = load(path, reader, include_path)
    from fwc.checks.strings import file_name_diagnostics

    # A file name no generated file can carry is the only thing worth saying: every
    # other diagnostic would print that name.
    bad_names = file_name_diagnostics(program)
    if bad_names:
        return Analysis(program, None, tuple(bad_names))
    if has_errors(diagnostics):
        return Analysis(program, None, tuple(sorted(diagnostics, key=Diagnostic.sort_key)))
    from fwc.frontend.resolve import resolve

    progress.phase("resolving", 0.3)
    secrets_read: list[tuple[str, str]] = []
    if read_secret is None and reader is None:
        from fwc.frontend.sources import secret_reader

        read_secret = _recording(secret_reader(Path(path), include_path), secrets_read)
    policy, resolved = resolve(program, read_secret)
    diagnostics.extend(resolved)
    if not keep_syntax:
        program = program.without_syntax()
    key = place.key(program.hashes, secrets_read) if place is not None else None
    if run_checks and key is not None and place is not None:
        cached = place.diagnostics(key)
        if cached is not None:
            progress.phase("checked before (cache)", 1.0)
            return Analysis(program, policy, cached, key)
    if run_checks:
        from fwc.checks import run_checks as run

        diagnostics.extend(run(policy, progress.within(0.4, 1.0)))
    unique = list(dict.fromkeys(diagnostics))
    result = tuple(sorted(unique, key=Diagnostic.sort_key))
    if run_checks and key is not None and place is not None \
            and place.store(key, program.hashes, secrets_read, result):
        return Analysis(program, policy, result, key)
    return Analysis(program, policy, result)


def cached_analysis(path: str | Path, include_path: Sequence[Path],
                    cache: ResultCache | None) -> tuple[tuple[Diagnostic, ...], dict[str, str],
                                                       str] | None:
    """(diagnostics, source texts, key) of an unchanged policy, without parsing; or None."""
    place = _Place.of(path, include_path, cache)
    return place.lookup() if place is not None else None


def _recording(read: Callable[[Path], str], into: list[tuple[str, str]]) \
        -> Callable[[Path], str]:
    def recorded(file: Path) -> str:
        text = read(file)
        into.append((str(file), _sha(text.encode())))
        return text

    return recorded


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _source_path(shown: str) -> Path:
    """Where a file named SHOWN in a load is: `<std/services.fw>` is fwc's library
    (no --include-path may shadow it when the cache is used), the rest a path."""
    if shown.startswith("<") and shown.endswith(">"):
        return LIBRARY_ROOT / shown[1:-1]
    return Path(shown)


class _Place:
    """Where a policy is read from, as a cache key, and its analysis entries."""

    def __init__(self, cache: ResultCache, path: Path, name: str) -> None:
        self.cache = cache
        self.path = path
        self.name = name  # key of the "src" entry: which files this policy read last time

    @classmethod
    def of(cls, path: str | Path, include_path: Sequence[Path],
           cache: ResultCache | None) -> _Place | None:
        if cache is None or include_path:
            return None
        path = Path(path)
        where = json.dumps([code_digest(), os.getcwd(), str(path), str(path.absolute()),
                            str(repository_root(path))])
        return cls(cache, path, _sha(where.encode()))

    def key(self, files: Sequence[tuple[str, str]], secrets: Sequence[tuple[str, str]]) -> str:
        return _sha(json.dumps([self.name, list(files), list(secrets)]).encode())

    def diagnostics(self, key: str) -> tuple[Diagnostic, ...] | None:
        got = self.cache.get_json("analysis", key)
        if not isinstance(got, list):
            return None
        try:
            return tuple(_diagnostic(item) for item in got)
        except (TypeError, ValueError, KeyError, IndexError):
            return None

    def store(self, key: str, files: Sequence[tuple[str, str]],
              secrets: Sequence[tuple[str, str]], diagnostics: Sequence[Diagnostic]) -> bool:
        if any(d.code in UNCACHED_CODES for d in diagnostics):
            return False
        try:
            self.cache.put_json("analysis", key, [_encoded(d) for d in diagnostics])
            self.cache.put_json("src", self.name, {"files": list(files),
                                                   "secrets": list(secrets)})
        except OSError:
            return False
        return True

    def lookup(self) -> tuple[tuple[Diagnostic, ...], dict[str, str], str] | None:
        read = self.cache.get_json("src", self.name)
        if not isinstance(read, dict):
            return None
        texts: dict[str, str] = {}
        try:
            files = [(str(p), str(h)) for p, h in read["files"]]
            secrets = [(str(p), str(h)) for p, h in read["secrets"]]
            for shown, sha in files:
                data = _source_path(shown).read_bytes()
                if _sha(data) != sha:
                    return None
                texts[shown] = data.decode("utf-8")
            if secrets:
                from fwc.frontend.sources import secret_reader

                read_secret = secret_reader(self.path, ())
                if any(_sha(read_secret(Path(p)).encode()) != sha for p, sha in secrets):
                    return None
        except (OSError, ValueError, TypeError, KeyError, UnicodeDecodeError, Refused):
            return None
        key = self.key(files, secrets)
        diagnostics = self.diagnostics(key)
        return None if diagnostics is None else (diagnostics, texts, key)


def _span(span: Span | None) -> list[Any] | None:
    return None if span is None else list(span)


def _encoded(d: Diagnostic) -> list[Any]:
    return [d.code, str(d.severity), d.message, _span(d.span), d.hint,
            [[_span(r.span), r.message] for r in d.related]]


def _span_of(value: Any) -> Span | None:
    if value is None:
        return None
    file, line, column, end_line, end_column = value
    return Span(str(file), int(line), int(column), int(end_line), int(end_column))


def _diagnostic(item: Any) -> Diagnostic:
    code, severity, message, span, hint, related = item
    spans = tuple(Related(_span_of(s), str(m)) for s, m in related)  # type: ignore[arg-type]
    return Diagnostic(str(code), Severity(severity), str(message), _span_of(span),
                      None if hint is None else str(hint), spans)


def clean_policy(path: str, include_path: Sequence[Path] = ()) -> Policy | None:
    """The policy when it checks clean; otherwise None, after printing why."""
    analysis = analyse(path, include_path=include_path)
    if analysis.ok and analysis.policy is not None:
        return analysis.policy
    print_diagnostics(analysis.diagnostics, analysis.program.texts)
    return None
