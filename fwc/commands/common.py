"""What several commands share: analysing files and printing diagnostics."""

from __future__ import annotations

import sys
from collections.abc import Iterable

from fwc.diagnostics import Diagnostic, Severity, render_json, render_text
from fwc.pipeline import Analysis, analyse


def print_diagnostics(diagnostics: Iterable[Diagnostic], texts: dict[str, str],
                      fmt: str = "text", stream=None) -> None:
    out = stream or sys.stderr
    diags = list(diagnostics)
    if fmt == "json":
        sys.stdout.write(render_json(diags))
        return
    out.write(render_text(diags, texts))
    errors = sum(1 for d in diags if d.severity is Severity.ERROR)
    warnings = sum(1 for d in diags if d.severity is Severity.WARNING)
    if errors or warnings:
        out.write(f"{errors} error(s), {warnings} warning(s)\n")


def failed(diagnostics: Iterable[Diagnostic], strict: bool) -> bool:
    return any(d.severity is Severity.ERROR or (strict and d.severity is Severity.WARNING)
               for d in diagnostics)


def analyse_and_report(path: str, fmt: str = "text", strict: bool = False) \
        -> tuple[Analysis, bool]:
    """Analyse one file and print its diagnostics; returns (analysis, ok)."""
    analysis = analyse(path)
    print_diagnostics(analysis.diagnostics, analysis.program.texts, fmt)
    ok = analysis.policy is not None and not failed(analysis.diagnostics, strict)
    return analysis, ok
