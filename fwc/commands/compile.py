"""`fwc compile FILE [-o DIR]`: per-node files for every cluster of a checked policy."""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from fwc.backend.output import (
    FileStream,
    OutputError,
    RecordedStream,
    recorded_index,
    relative_source,
    source_root,
    stored_clusters,
    stream_policy,
    write_output,
)
from fwc.cache import ResultCache
from fwc.checks import capability
from fwc.commands.common import report, result_cache, without_cycle_collection
from fwc.diagnostics import Diagnostic, Progress, error, failed
from fwc.model.vocabulary import Backend
from fwc.pipeline import analyse, cached_analysis


def run(args: argparse.Namespace) -> int:
    with without_cycle_collection():
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    progress = Progress.for_terminal(sys.stderr, args.format == "text")
    try:
        return _compile(args, progress)
    finally:
        progress.done()


def _output_key(analysis_key: str, args: argparse.Namespace) -> str:
    """The cache entry of the files: the analysis' content key and what shapes the files."""
    what = [analysis_key, bool(args.redact_secrets), args.backend or ""]
    return hashlib.sha256(json.dumps(what).encode()).hexdigest()


def _compile(args: argparse.Namespace, progress: Progress) -> int:
    cache = result_cache(args)
    hit = cached_analysis(args.file, args.include_path, cache)
    if hit is not None and cache is not None:
        # The same content was compiled before with these options: its files come from
        # the cache (verified), written exactly as a compile writes them.
        diagnostics, texts, key = hit
        with cache.blob_reader("out", _output_key(key, args)) as reader:
            stored = stored_clusters(reader) if reader is not None else None
            # (a failed check is answered from the cache only without --backend, whose
            # capability diagnostics need the model)
            if stored is not None or (failed(list(diagnostics), args.strict)
                                      and not args.backend):
                policy_name, clusters = stored if stored is not None else ("", [])
                return _write(args, progress, list(diagnostics), texts, policy_name, clusters)
    # Shares of the whole compile, as measured on large policies (docs/performance.md).
    analysis = analyse(args.file, include_path=args.include_path, keep_syntax=False,
                       progress=progress.within(0.0, 0.55), cache=cache)
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
        return _write(args, progress, diagnostics, analysis.program.texts, "", [])
    # Each file is written to the staging copy as soon as it is built (a large
    # policy's output is never held at once), so a compile failure surfaces here too.
    streams: Sequence[FileStream] = stream_policy(
        policy, redact=args.redact_secrets, progress=progress.within(0.55, 0.95),
        backend=backend, chunked=True)
    policy_name = relative_source(policy.root, source_root(policy))
    if cache is None or analysis.cache_key is None:
        return _write(args, progress, diagnostics, analysis.program.texts, policy_name, streams)
    return _write_and_store(args, progress, diagnostics, analysis.program.texts, policy_name,
                            streams, cache, _output_key(analysis.cache_key, args))


def _write_and_store(args: argparse.Namespace, progress: Progress,
                     diagnostics: list[Diagnostic], texts: dict[str, str], policy_name: str,
                     streams: Sequence[FileStream], cache: ResultCache, key: str) -> int:
    """Write the files and keep a copy in the cache entry KEY (only if all went well)."""
    try:
        writer = cache.blob_writer("out", key)
    except OSError:
        return _write(args, progress, diagnostics, texts, policy_name, streams)
    with writer:
        recorded = [RecordedStream(stream, writer) for stream in streams]
        status = _write(args, progress, diagnostics, texts, policy_name, recorded)
        if status == 0:
            # The output is written; an error here only loses the copy for next time.
            with contextlib.suppress(OSError):
                writer.commit(recorded_index(policy_name, recorded))
    return status


def _write(args: argparse.Namespace, progress: Progress, diagnostics: list[Diagnostic],
           texts: dict[str, str], policy_name: str, clusters: Sequence[FileStream]) -> int:
    """Print the diagnostics and, unless they fail the compile, write CLUSTERS."""
    if not policy_name or failed(diagnostics, args.strict):
        progress.done()
        report(diagnostics, texts, args.format)
        print("fwc: nothing written: fix the errors above first", file=sys.stderr)
        return 1
    try:
        removed = write_output(Path(args.output), policy_name, clusters, force=args.force)
    except OutputError as exc:
        progress.done()
        diagnostics.append(error(exc.code, str(exc),
                                 hint="nothing under the output directory was changed"))
        report(diagnostics, texts, args.format)
        return 1
    except Exception as exc:  # noqa: BLE001 - a compiler bug must end in a diagnostic
        progress.done()
        diagnostics.append(error("FWC900", f"internal error while compiling: "
                                 f"{type(exc).__name__}: {exc}",
                                 hint="please report this with the policy; nothing was "
                                 "written"))
        report(diagnostics, texts, args.format)
        return 1
    progress.done()
    report(diagnostics, texts, args.format)
    if args.format == "text":
        for cluster in clusters:
            for member, names in cluster.members().items():
                print(f"{args.output}/{cluster.name}/{member}: {' '.join(names)}")
        for name in removed:
            print(f"{args.output}/{name}: removed (no longer in {args.file})")
    return 0
