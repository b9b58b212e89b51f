"""The front half of every command: load -> parse -> resolve -> check."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from fwc.diagnostics import SILENT, Diagnostic, Reporter, has_errors, print_diagnostics
from fwc.frontend.loader import LoadedProgram, load
from fwc.model import Policy


@dataclass(frozen=True)
class Analysis:
    program: LoadedProgram
    policy: Policy | None  # None when the files could not be parsed
    diagnostics: tuple[Diagnostic, ...]

    @property
    def ok(self) -> bool:
        return self.policy is not None and not has_errors(self.diagnostics)


def analyse(path: str | Path, *, run_checks: bool = True, reader=None,
            read_secret=None, include_path: Sequence[Path] = (),
            progress: Reporter = SILENT) -> Analysis:
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
    if read_secret is None and reader is None:
        from fwc.frontend.sources import secret_reader

        read_secret = secret_reader(Path(path), include_path)
    policy, resolved = resolve(program, read_secret)
    diagnostics.extend(resolved)
    if run_checks:
        from fwc.checks import run_checks as run

        diagnostics.extend(run(policy, progress.within(0.4, 1.0)))
    unique = list(dict.fromkeys(diagnostics))
    return Analysis(program, policy, tuple(sorted(unique, key=Diagnostic.sort_key)))


def clean_policy(path: str, include_path: Sequence[Path] = ()) -> Policy | None:
    """The policy when it checks clean; otherwise None, after printing why."""
    analysis = analyse(path, include_path=include_path)
    if analysis.ok and analysis.policy is not None:
        return analysis.policy
    print_diagnostics(analysis.diagnostics, analysis.program.texts)
    return None
