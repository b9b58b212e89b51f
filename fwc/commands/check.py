"""`fwc check FILE...`: every problem in one run, compiler style."""

from __future__ import annotations

import argparse
import sys

from fwc.commands.common import (
    keep_until_exit,
    report,
    result_cache,
    without_cycle_collection,
)
from fwc.diagnostics import Diagnostic, Progress, failed
from fwc.parallel import jobs_from
from fwc.pipeline import Analysis, analyse, cached_analysis


def run(args: argparse.Namespace) -> int:
    with without_cycle_collection(args):
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    diagnostics: list[Diagnostic] = []
    texts: dict[str, str] = {}
    progress = Progress.for_terminal(sys.stderr, args.format == "text")
    cache = result_cache(args)
    jobs = jobs_from(getattr(args, "jobs", None))
    analysis: Analysis | None = None
    for done, path in enumerate(args.files):
        hit = cached_analysis(path, args.include_path, cache)
        if hit is not None:  # the same content was checked before: nothing is parsed
            diagnostics.extend(hit[0])
            texts.update(hit[1])
            continue
        share = progress.within(done / len(args.files), (done + 1) / len(args.files))
        analysis = analyse(path, include_path=args.include_path, progress=share, cache=cache,
                           jobs=jobs, keep_syntax=False)
        diagnostics.extend(analysis.diagnostics)
        texts.update(analysis.program.texts)
    # the last file's model is left to the process' end (each earlier one was freed
    # when the next replaced it: a long list of files never holds every model at once)
    keep_until_exit(args, analysis)
    progress.done()
    report(diagnostics, texts, args.format)
    return 1 if failed(diagnostics, args.strict) else 0
