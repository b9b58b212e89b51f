"""`fwc compile FILE [-o DIR]`: per-node files for every cluster of a checked policy."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fwc.backend.output import (
    OutputError,
    relative_source,
    source_root,
    stream_policy,
    write_output,
)
from fwc.checks import capability
from fwc.commands.common import report, without_cycle_collection
from fwc.diagnostics import Progress, error, failed
from fwc.model.vocabulary import Backend
from fwc.pipeline import analyse


def run(args: argparse.Namespace) -> int:
    with without_cycle_collection():
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    progress = Progress.for_terminal(sys.stderr, args.format == "text")
    try:
        return _compile(args, progress)
    finally:
        progress.done()


def _compile(args: argparse.Namespace, progress: Progress) -> int:
    # Shares of the whole compile, as measured on large policies (docs/performance.md).
    analysis = analyse(args.file, include_path=args.include_path,
                       progress=progress.within(0.0, 0.55))
    diagnostics = list(analysis.diagnostics)
    policy = analysis.policy
    backend = Backend(args.backend) if args.backend else None
    if policy is not None and backend is not None:
        # The checks ran for each cluster's own backend: what --backend cannot express.
        known = {(d.code, d.span, d.message) for d in diagnostics}
        diagnostics += [d for d in capability.problems(policy, backend)
                        if (d.code, d.span, d.message) not in known]
        diagnostics.sort(key=lambda d: d.sort_key())
    if policy is None or failed(diagnostics, args.strict):
        progress.done()
        report(diagnostics, analysis.program.texts, args.format)
        print("fwc: nothing written: fix the errors above first", file=sys.stderr)
        return 1
    # Each file is written to the staging copy as soon as it is built (a large
    # policy's output is never held at once), so a compile failure surfaces here too.
    clusters = stream_policy(policy, redact=args.redact_secrets,
                             progress=progress.within(0.55, 0.95), backend=backend)
    try:
        removed = write_output(Path(args.output), relative_source(policy.root,
                                                                  source_root(policy)), clusters,
                               force=args.force)
    except OutputError as exc:
        progress.done()
        diagnostics.append(error(exc.code, str(exc),
                                 hint="nothing under the output directory was changed"))
        report(diagnostics, analysis.program.texts, args.format)
        return 1
    except Exception as exc:  # noqa: BLE001 - a compiler bug must end in a diagnostic
        progress.done()
        diagnostics.append(error("FWC900", f"internal error while compiling: "
                                 f"{type(exc).__name__}: {exc}",
                                 hint="please report this with the policy; nothing was "
                                 "written"))
        report(diagnostics, analysis.program.texts, args.format)
        return 1
    progress.done()
    report(diagnostics, analysis.program.texts, args.format)
    if args.format == "text":
        for cluster in clusters:
            for member, names in cluster.members().items():
                print(f"{args.output}/{cluster.name}/{member}: {' '.join(names)}")
        for name in removed:
            print(f"{args.output}/{name}: removed (no longer in {args.file})")
    return 0
