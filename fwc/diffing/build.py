"""Compile both sides of a diff (two revisions, or one and the working tree) into scratch
directories.

Each side is analysed and compiled as `fwc compile` would (secrets redacted: diffs end
up in logs), each file written as it is rendered. A side that does not compile stops
the diff with its diagnostics, the old side's first. For a large policy the checks of
both sides run in one forked worker (fwc.parallel) while this process builds both
sides' files, as `fwc compile` does; nothing is compared before both verdicts are in,
so a failing side says exactly what it says when everything runs in turn (a
worker that dies only costs time: the checks then run here).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from fwc import parallel
from fwc.diagnostics import Diagnostic, has_errors
from fwc.diffing.git import Side, normalise
from fwc.diffing.project import IncludePaths
from fwc.frontend.sources import secret_reader
from fwc.model import Policy
from fwc.model.records import dataclass
from fwc.model.vocabulary import Backend
from fwc.pipeline import (
    DIFF_FORK_RULES,
    Analysis,
    Modelled,
    checked,
    checks_in_worker,
    decoded_diagnostics,
    model,
    rule_count,
)


@dataclass
class Build:
    side: Side
    path: str  # repository-relative policy path
    policy: Policy | None  # None when the file does not exist on this side
    outdir: Path | None  # holds <cluster>/... when compiled
    texts: dict[str, str]
    # parsed and resolved, its checks still to run (None: no file, or checked)
    modelled: Modelled | None = None
    backend: Backend | None = None  # the side's fwc.toml's (None: each cluster's own)


class BuildError(Exception):
    """The policy does not compile at this side; carries its diagnostics."""

    def __init__(self, build: Build, diagnostics: tuple[Diagnostic, ...]) -> None:
        super().__init__(f"{build.path} at {build.side.label} does not compile")
        self.build = build
        self.diagnostics = diagnostics


def compile_sides(old: Side, new: Side, rel: str, old_dir: Path, new_dir: Path,
                  include_path: IncludePaths | None = None, jobs: int = parallel.AUTO) \
        -> tuple[Build, Build]:
    """REL as it is on OLD and on NEW, analysed and compiled into OLD_DIR and NEW_DIR;
    BuildError for the first side (old, then new) that does not compile.

    INCLUDE_PATH: each side's repository-relative directories (the command line's, or
    that side's fwc.toml's), read on each side like the policy.
    JOBS (fwc.parallel): whether the checks may run in a worker process."""
    paths = include_path or IncludePaths(())
    before = _front(old, rel, paths.of(old, rel))
    try:
        after = _front(new, rel, paths.of(new, rel))
    except BuildError:
        _accept(before, checked)  # the old side's errors come first
        raise
    before.backend, after.backend = paths.backend(old, rel), paths.backend(new, rel)
    sides = [(before, old_dir), (after, new_dir)]
    fronts = [b.modelled for b, _ in sides if b.modelled is not None]
    # The worker holds both sides' check tables: the fork bound counts both policies.
    # A side whose parse or resolve already failed is not built next to its checks.
    rules = sum(rule_count(m.policy) for m in fronts)
    worker = parallel.start(_checks_task(fronts)) \
        if fronts and not any(has_errors(m.diagnostics) for m in fronts) \
        and parallel.wanted(jobs, rules, DIFF_FORK_RULES) else None
    if worker is None:
        for build, directory in sides:
            _accept(build, checked)
            _write(build, directory)
        return before, after
    with contextlib.closing(worker):
        answers = _Answers(worker, len(fronts))
        try:
            for build, directory in sides:
                _write(build, directory)
        except Exception:
            # The checks come first, as without a worker: a policy with errors may not
            # build at all.
            for build, _ in sides:
                _accept(build, answers.next)
            raise
        for build, _ in sides:
            _accept(build, answers.next)
    return before, after


def _front(side: Side, rel: str, include_path: Sequence[Path]) -> Build:
    """SIDE's REL parsed and resolved; BuildError when it does not parse or resolve."""
    build = Build(side, rel, None, None, {})
    if not side.exists(rel):
        return build
    front = model(Path(rel), reader=side.read, read_secret=_secret_reader(side),
                  include_path=include_path, keep_syntax=False)
    build.texts = front.program.texts
    if isinstance(front, Analysis):  # with a reader: only when it does not parse
        if not front.ok or front.policy is None:
            raise BuildError(build, front.diagnostics)
        build.policy = front.policy
        return build
    build.policy = front.policy
    build.modelled = front
    return build


def _accept(build: Build, checks: Callable[[Policy], Sequence[Diagnostic]]) -> None:
    """Finish BUILD's analysis with CHECKS' diagnostics; BuildError if it fails."""
    modelled = build.modelled
    if modelled is None:
        return
    build.modelled = None
    analysis = modelled.finish_with(lambda: checks(modelled.policy))
    if not analysis.ok or analysis.policy is None:
        raise BuildError(build, analysis.diagnostics)


def _checks_task(fronts: Sequence[Modelled]) -> Callable[[], Any]:
    """A worker's task: the encoded diagnostics of every check, for each of FRONTS."""
    tasks = [checks_in_worker(front.policy) for front in fronts]
    return lambda: [task() for task in tasks]


class _Answers:
    """The worker's diagnostics, handed out side by side (`next`, one call per side).

    A worker that does not deliver them (killed, or an answer that does not decode)
    costs time, not the diff: each side is then checked in this process, and says
    what it says without a worker. (`fwc compile` fails instead, because there the
    files would be installed; a diff only reads them.)"""

    def __init__(self, worker: parallel.Worker, count: int) -> None:
        self._worker = worker
        self._count = count
        self._got: list[list[Diagnostic]] | None = None
        self._failed = False
        self._given = 0

    def next(self, policy: Policy) -> list[Diagnostic]:
        """The next side's diagnostics (POLICY: that side's, checked here if need be)."""
        if self._got is None and not self._failed:
            try:
                value = self._worker.result()
                if not isinstance(value, list) or len(value) != self._count:
                    raise parallel.WorkerFailed("the worker did not answer for every side")
                self._got = [decoded_diagnostics(item) for item in value]
            except parallel.WorkerFailed:
                self._failed = True
        self._given += 1
        if self._got is None:
            return checked(policy)
        return self._got[self._given - 1]


def _write(build: Build, directory: Path) -> None:
    """BUILD's files written into DIRECTORY as `fwc compile` writes them (each file
    rendered while it is written: a large policy's output is never held at once)."""
    if build.policy is None:
        return
    from fwc.backend.output import stream_policy, write_output

    directory.mkdir(parents=True, exist_ok=True)
    # (chain texts kept for the next member spill beside the directory, as in compile)
    write_output(directory, build.path, stream_policy(
        build.policy, redact=True, backend=build.backend, chunked=True,
        spill_dir=str(directory.parent)))
    build.outdir = directory


def _secret_reader(side: Side):  # type: ignore[no-untyped-def]
    """Password files are read from the same side as the policy when tracked there, else
    from the working tree, under the same rules as any password file (inside the
    repository, regular, small): a policy under review must not read the reviewer's files."""
    on_disk = secret_reader(side.repo / "policy.fw")

    def read(path: Path) -> str:
        try:
            return side.read(path)
        except FileNotFoundError:  # not tracked (password files rarely are)
            return on_disk(side.repo / normalise(path))
    return read
