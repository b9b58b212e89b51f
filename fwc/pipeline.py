"""The front half of every command: load -> parse -> resolve -> check.

With a result cache (fwc.cache; `fwc check` and `fwc compile` unless `--no-cache`), the
diagnostics of a policy are kept under a key made of the content hashes of every file
it read (the policy, its includes, its password files: keyed, `ResultCache.secret_hash`),
the file each include led to (`LoadedProgram.links`), the fwc code (`code_digest`)
and where it was read from (working directory, policy path, repository root):
`cached_analysis` answers without parsing when none of them changed, and `analyse`
with a cache skips the checks then (parse and resolve still build the model).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from fwc import parallel
from fwc.cache import ResultCache, code_digest
from fwc.diagnostics import (
    SILENT,
    Diagnostic,
    Related,
    Reporter,
    Severity,
    Span,
    error,
    has_errors,
    print_diagnostics,
)
from fwc.frontend.loader import LoadedProgram, load
from fwc.frontend.sources import (
    LIBRARY_ROOT,
    Refused,
    inside,
    read_regular,
    repository_root,
)
from fwc.model import Policy
from fwc.model.records import dataclass

# Outcomes that depend on the file system beyond the content of the files read (a
# missing include appearing, a repository or size limit), and a check that crashed
# (FWC900: a MemoryError of a busy machine or a memory limit says nothing about the
# content, and cached it failed every later run of that content): never cached.
UNCACHED_CODES = frozenset({"FWC002", "FWC010", "FWC011", "FWC012", "FWC013", "FWC900"})


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
            jobs: int = 1, keep_syntax: bool = True) -> Analysis:
    """Load, parse, resolve and (RUN_CHECKS) check the policy at PATH.

    KEEP_SYNTAX False: the program returned (and held during the checks) has no syntax
    trees, only its texts (`LoadedProgram.without_syntax`; check and compile).

    CACHE: when the same content was analysed before, its diagnostics come from the
    cache and the checks are not run again; otherwise they are stored there. The cache
    is not used for a READER (another revision), nor with an include path (which file
    an include names then depends on which files exist, not only on content).
    JOBS (fwc.parallel): with a worker process, the checks are shared between it and
    this process (`checked`); 1 (the default) runs them all here.
    """
    front = model(path, reader=reader, read_secret=read_secret, include_path=include_path,
                  progress=progress, cache=cache if run_checks else None,
                  keep_syntax=keep_syntax)
    if isinstance(front, Analysis):
        return front
    if not run_checks:
        return front.finish(())
    return front.finish_with(lambda: checked(front.policy, progress.within(0.4, 1.0), jobs))


@dataclass(frozen=True)
class Modelled:
    """A policy parsed and resolved whose checks are still to run: the first half of
    `analyse`, for a caller that runs the checks next to other work (`fwc compile`
    with a worker process, fwc.parallel). `finish` is the second half."""

    program: LoadedProgram
    policy: Policy
    diagnostics: tuple[Diagnostic, ...]  # of parse and resolve, in their order
    key: str | None
    place: _Place | None
    secrets_read: tuple[tuple[str, str], ...]

    def finish_with(self, checks: Callable[[], Sequence[Diagnostic]]) -> Analysis:
        """`finish` with what CHECKS returns; when a worker process it waits for failed
        (WorkerFailed), with the error that says so instead, not stored."""
        try:
            return self.finish(checks())
        except parallel.WorkerFailed as exc:
            return self.finish([worker_failure(exc)], store=False)

    def finish(self, checks: Sequence[Diagnostic], store: bool = True) -> Analysis:
        """The analysis with the checks' diagnostics, stored in the cache if there is one
        (unless not STORE: a worker that failed says nothing about the content)."""
        unique = list(dict.fromkeys([*self.diagnostics, *checks]))
        result = tuple(sorted(unique, key=Diagnostic.sort_key))
        if store and self.key is not None and self.place is not None \
                and self.place.store(self.key, self.program, self.secrets_read, result):
            return Analysis(self.program, self.policy, result, self.key)
        return Analysis(self.program, self.policy, result)


def model(path: str | Path, *, reader=None, read_secret=None,
          include_path: Sequence[Path] = (), progress: Reporter = SILENT,
          cache: ResultCache | None = None, keep_syntax: bool = True) -> Analysis | Modelled:
    """Load, parse and resolve: a finished Analysis when nothing is left to check (the
    files do not parse, or the cache knows this content's diagnostics), else Modelled."""
    place = _Place.of(path, include_path, cache) if reader is None and read_secret is None \
        else None
    # Shares of the whole analysis, as measured on large policies (docs/performance.md).
    progress.phase("parsing", 0.0)
    # Without KEEP_SYNTAX the trees are only resolved, then dropped: plain rule lines may
    # stay as their matches (s.RuleLine) and go straight into the model.
    program, diagnostics = load(path, reader, include_path, lines=not keep_syntax)
    from fwc.checks.strings import file_name_diagnostics

    # A file name no generated file can carry is the only thing worth saying: every
    # other diagnostic would print that name.
    bad_names = file_name_diagnostics(program)
    if bad_names or has_errors(diagnostics):
        if not keep_syntax:
            program = program.without_syntax()
        return Analysis(program, None, tuple(bad_names) if bad_names
                        else tuple(sorted(diagnostics, key=Diagnostic.sort_key)))
    from fwc.frontend.resolve import resolve

    progress.phase("resolving", 0.3)
    secrets_read: list[tuple[str, str]] = []
    if read_secret is None and reader is None:
        from fwc.frontend.sources import secret_reader

        # (only the cache uses what is recorded: without one nothing is)
        read_secret = _recording(secret_reader(Path(path), include_path), secrets_read,
                                 place.secret_digest if place is not None else _sha)
    policy, resolved = resolve(program, read_secret)
    diagnostics.extend(resolved)
    if not keep_syntax:
        program = program.without_syntax()
    key = place.key(program.hashes, program.links, secrets_read) if place is not None \
        else None
    if key is not None and place is not None:
        cached = place.diagnostics(key)
        if cached is not None:
            progress.phase("checked before (cache)", 1.0)
            # content checked before, but not last: the next lookup of this path must
            # find these files (else it parses again although nothing changed)
            place.remember(program, secrets_read)
            return Analysis(program, policy, cached, key)
    return Modelled(program, policy, tuple(diagnostics), key, place, tuple(secrets_read))


# `fwc check` with a worker: this process runs these checks, the worker all others.
# The shadowing check is about 60 % of the checks' time on every benchmark shape at
# 20,000 rules; FWC403 reads the same per-run filter flows (fwc.checks.rules
# `_filter_flows`, on the cluster's memo), which cost it ~0.65 s of its own in another
# process. The others, about a third, share nothing with them (docs/performance.md,
# "Two cores").
PARENT_CHECKS = frozenset({"FWC401", "FWC403"})
# `--jobs auto` forks a worker for this many rules (filter and NAT). Below, the checks
# take under 0.3 s CPU (half of it imports) and the whole compile about a second: a
# fork (10-45 ms) saves little there and only adds CPU on a busy machine. The worker's
# memory counts against the 500 MB target of 100,000 rules: copies of the model pages its
# checks touch, and what they build. Forked at 100,031 rules, a compile held 420-477 MB
# summed over both processes with nftables (424-434 MB iptables), against 393-405 MB
# (299-306 MB) in one, and took 2-4 s less (docs/performance.md, "Issue 12, twentieth
# session"): the bound is where the sum would reach the target, about 4.7 KB per rule.
FORK_RULES = range(1_000, 105_001)
# `fwc diff` forks for this many rules in both sides together: it holds both sides'
# models and builds both: forked, a diff of two sides of 50,000 rules held 632 MB summed
# against 501 MB in one process (twentieth session), so it keeps the bound it had.
DIFF_FORK_RULES = range(1_000, 50_001)


def rule_count(policy: Policy) -> int:
    return sum(len(c.rules) + len(c.nat) for c in policy.clusters)


def checked(policy: Policy, progress: Reporter = SILENT, jobs: int = 1) -> list[Diagnostic]:
    """Every check's diagnostics, in `run_checks` order; with a worker (JOBS,
    fwc.parallel.wanted) the checks of PARENT_CHECKS run here and the others there
    (WorkerFailed when it did not answer)."""
    from fwc.checks import check_functions, run_check, run_checks

    if not parallel.wanted(jobs, rule_count(policy), FORK_RULES):
        return run_checks(policy, progress)
    checks = check_functions()
    mine = [info for info in checks if info.code in PARENT_CHECKS]
    theirs = [info for info in checks if info.code not in PARENT_CHECKS]
    worker = parallel.start(
        lambda: {info.code: [_encoded(d) for d in run_check(info, policy)] for info in theirs})
    if worker is None:
        return run_checks(policy, progress)
    try:
        got: dict[str, list[Diagnostic]] = {}
        for done, info in enumerate(mine):
            progress.phase(f"checking ({info.code})", done / len(mine))
            got[info.code] = run_check(info, policy)
        # The side tables (flows, the spent shadowing indexes) are not dropped here as
        # `run_checks` does: this process's checks are done with them, but freeing them
        # was ~0.08 s at 20,000 rules on the longer of the two processes, and `fwc
        # check` ends right after (they go with the model, fwc.commands.common
        # `keep_until_exit`; an in-process caller frees them with the policy).
        progress.phase("checking (the other checks)", 1.0)
        got.update(decoded_checks(worker.result(), [info.code for info in theirs]))
    finally:
        worker.close()
    return [d for info in checks for d in got[info.code]]


def checks_in_worker(policy: Policy) -> Callable[[], Any]:
    """The task of a worker that runs every check (`fwc compile`): its JSON answer."""
    from fwc.checks import run_checks

    return lambda: [_encoded(d) for d in run_checks(policy)]


def decoded_diagnostics(value: Any) -> list[Diagnostic]:
    """A worker's list of encoded diagnostics; WorkerFailed when it is not one."""
    try:
        if not isinstance(value, list):
            raise TypeError("not a list")
        return [_diagnostic(item) for item in value]
    except (TypeError, ValueError, KeyError, IndexError) as exc:
        raise parallel.WorkerFailed(f"the worker's diagnostics do not decode: {exc}") from None


def decoded_checks(value: Any, codes: Sequence[str]) -> dict[str, list[Diagnostic]]:
    """A worker's {check code: encoded diagnostics} for exactly CODES."""
    if not isinstance(value, dict) or sorted(value) != sorted(codes):
        raise parallel.WorkerFailed("the worker did not answer for the checks it was given")
    return {code: decoded_diagnostics(value[code]) for code in codes}


def worker_failure(exc: parallel.WorkerFailed) -> Diagnostic:
    """The error that replaces a worker's diagnostics: the checks did not all run."""
    return error("FWC900", f"internal error: the checks did not complete: {exc}",
                 hint="please report this with the policy; `--jobs 1` runs the checks in "
                 "one process")


def cached_analysis(path: str | Path, include_path: Sequence[Path],
                    cache: ResultCache | None) -> tuple[tuple[Diagnostic, ...], dict[str, str],
                                                       str] | None:
    """(diagnostics, source texts, key) of an unchanged policy, without parsing; or None."""
    place = _Place.of(path, include_path, cache)
    return place.lookup() if place is not None else None


def _recording(read: Callable[[Path], str], into: list[tuple[str, str]],
               digest: Callable[[bytes], str]) -> Callable[[Path], str]:
    def recorded(file: Path) -> str:
        text = read(file)
        into.append((str(file), digest(text.encode())))
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

    def secret_digest(self, data: bytes) -> str:
        """What the entries keep of a password file: keyed, not its plain sha256."""
        digest = self.cache.secret_hash()
        digest.update(data)
        return str(digest.hexdigest())

    def key(self, files: Sequence[tuple[str, str]], links: Sequence[tuple[str, str]],
            secrets: Sequence[tuple[str, str]]) -> str:
        """The analysis' content key: FILES (path, sha256) read, the LINKS (path as named,
        file it resolved to) that decided which files those are, and the SECRETS read."""
        return _sha(json.dumps([self.name, list(files), list(links), list(secrets)]).encode())

    def diagnostics(self, key: str) -> tuple[Diagnostic, ...] | None:
        got = self.cache.get_json("analysis", key)
        if not isinstance(got, list):
            return None
        try:
            return tuple(_diagnostic(item) for item in got)
        except (TypeError, ValueError, KeyError, IndexError):
            return None

    def store(self, key: str, program: LoadedProgram, secrets: Sequence[tuple[str, str]],
              diagnostics: Sequence[Diagnostic]) -> bool:
        if any(d.code in UNCACHED_CODES for d in diagnostics):
            return False
        try:
            self.cache.put_json("analysis", key, [_encoded(d) for d in diagnostics])
        except OSError:
            return False
        return self.remember(program, secrets)

    def remember(self, program: LoadedProgram, secrets: Sequence[tuple[str, str]]) -> bool:
        """Record PROGRAM's files (path, sha256) and links, and SECRETS (path,
        `secret_digest`), as what this policy read last."""
        try:
            self.cache.put_json("src", self.name, {"files": list(program.hashes),
                                                   "links": list(program.links),
                                                   "secrets": list(secrets)})
        except OSError:
            return False
        return True

    def lookup(self) -> tuple[tuple[Diagnostic, ...], dict[str, str], str] | None:
        read = self.cache.get_json("src", self.name)
        if not isinstance(read, dict):
            return None
        texts: dict[str, str] = {}
        # read as the loader reads (regular files of bounded size, never a FIFO or a
        # device, no link followed at the last moment), and only inside the repository
        # or fwc's library: anything else is not this shortcut's to judge (a full run
        # says what is wrong with it)
        roots = (repository_root(self.path), LIBRARY_ROOT.resolve())
        try:
            files = [(str(p), str(h)) for p, h in read["files"]]
            links = [(str(p), str(r)) for p, r in read["links"]]
            secrets = [(str(p), str(h)) for p, h in read["secrets"]]
            # the policy and each include still lead to the files they led to: a link
            # retargeted since (`current.fw -> v2.fw`) makes a load read other files
            if any(str(Path(named).resolve()) != target for named, target in links):
                return None
            for shown, sha in files:
                path = _source_path(shown).resolve()
                if not inside(path, roots):
                    return None
                data = read_regular(path, shown)
                if _sha(data) != sha:
                    return None
                texts[shown] = data.decode("utf-8")
            if secrets:
                from fwc.frontend.sources import secret_reader

                read_secret = secret_reader(self.path, ())
                if any(self.secret_digest(read_secret(Path(p)).encode()) != digest
                       for p, digest in secrets):
                    return None
        except (OSError, RuntimeError, ValueError, TypeError, KeyError, UnicodeDecodeError,
                Refused):  # (RuntimeError: Path.resolve of a link loop, Python < 3.13)
            return None
        key = self.key(files, links, secrets)
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
