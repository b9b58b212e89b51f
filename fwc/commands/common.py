"""What several commands share: the diagnostics report in every `--format`, and a
command runs without the cyclic garbage collector."""

from __future__ import annotations

import gc
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from fwc.diagnostics import Diagnostic, print_diagnostics


def report(diagnostics: Iterable[Diagnostic], texts: dict[str, str], fmt: str = "text") -> None:
    """Print DIAGNOSTICS as FMT: text (stderr), json, sarif or github (stdout)."""
    if fmt == "sarif":
        import sys

        from fwc.checks.sarif import render_sarif

        sys.stdout.write(render_sarif(list(diagnostics)))
        return
    print_diagnostics(diagnostics, texts, fmt)


@contextmanager
def without_cycle_collection() -> Iterator[None]:
    """Pause Python's cyclic garbage collector for one short-lived command.

    Analysing and compiling a large policy allocates millions of objects that all stay
    alive until the command ends, and almost none of them form cycles: every automatic
    collection traverses the whole growing heap for nothing (about 2 s of 8 s at 20,000
    rules, under 10 MB of garbage left to the end). Reference counting still frees
    everything else; collection is enabled again for in-process callers (tests).

    Nothing is frozen (`gc.freeze`) at the end: what a run derives (lowered rulesets,
    check flows) is memoised on that run's model (`model.Memo`), so it is freed with the
    model when the command returns instead of outliving it in a process-wide cache.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
