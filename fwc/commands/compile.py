"""`fwc compile FILE [-o DIR]`: per-node files for every cluster of a checked policy."""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from fwc import parallel
from fwc.backend import patch
from fwc.backend.output import (
    ClusterStream,
    FileStream,
    OutputError,
    creation_context,
    policy_name,
    stream_policy,
    write_output,
)
from fwc.backend.record import (
    OutputRecord,
    RecordedCluster,
    Recorder,
    unchanged_output,
)
from fwc.cache import ResultCache, code_digest
from fwc.checks import capability
from fwc.commands.common import (
    keep_until_exit,
    report,
    result_cache,
    without_cycle_collection,
)
from fwc.diagnostics import SILENT, Diagnostic, Progress, Reporter, error, failed
from fwc.model import Policy
from fwc.model.vocabulary import Backend
from fwc.parallel import jobs_from
from fwc.pipeline import (
    FORK_RULES,
    Modelled,
    cached_analysis,
    checked,
    checks_in_worker,
    decoded_diagnostics,
    model,
    rule_count,
)


def run(args: argparse.Namespace) -> int:
    with without_cycle_collection(args):
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    progress = Progress.for_terminal(sys.stderr, args.format == "text")
    try:
        return _compile(args, progress)
    finally:
        progress.done()


def _output_key(analysis_key: str, args: argparse.Namespace) -> str:
    """The cache entry of the files: the analysis' content key and what shapes the files
    (options; the umask, user and group they are created with)."""
    what = [analysis_key, bool(args.redact_secrets), args.backend or "", *creation_context()]
    return hashlib.sha256(json.dumps(what).encode()).hexdigest()


def _base_key(args: argparse.Namespace) -> str:
    """The cache entry of what the output directory was compiled from (patch.PatchBase):
    the directory and the policy, with what shapes the files."""
    # (fwc's own code too: another version may arrange the same rules otherwise)
    return patch.base_key(Path(args.output), [
        code_digest(), os.getcwd(), str(Path(args.file).absolute()),
        [str(p) for p in args.include_path], bool(args.redact_secrets), args.backend or "",
        *creation_context()])


def _line_key(cache: ResultCache) -> bytes:
    """The key of a patch base's line digests (patch.line_digests): the cache's own."""
    mac = cache.secret_hash()
    mac.update(b"\0policy lines\0")
    return mac.digest()[:32]


def _patched(args: argparse.Namespace, policy: Policy, lines: dict[str, str],
             backend: Backend | None, cache: ResultCache) -> patch.Patch | None:
    """A patch compile of an edit of one rule over the output directory's previous
    compile (fwc.backend.patch; LINES: the policy's, patch.line_digests), or None:
    compile in full."""
    base = patch.PatchBase.of_json(cache.get_json(patch.KIND, _base_key(args)))
    if base is None:
        return None
    # (the tree only: the patch checks each file's bytes as it reads them)
    if not unchanged_output(Path(args.output), base.record, cache.secret_hash, args.force,
                            contents=False):
        return None
    try:
        return patch.patch(policy, lines, base, Path(args.output), backend, cache.secret_hash)
    except patch.Refused:
        return None


def _compile(args: argparse.Namespace, progress: Progress) -> int:
    cache = result_cache(args)
    hit = cached_analysis(args.file, args.include_path, cache)
    if hit is not None and cache is not None:
        # The same content was compiled before with these options: nothing to write when
        # the output directory still holds exactly what that compile wrote (verified).
        diagnostics, texts, key = hit
        verdict = Verdict.known(list(diagnostics), args.strict)
        # (a failed check is answered from the cache only without --backend, whose
        # capability diagnostics need the model)
        if verdict.failed():
            if not args.backend:
                return _refuse(args, progress, verdict.diagnostics(), texts)
        else:
            record = OutputRecord.of_json(cache.get_json("out", _output_key(key, args)))
            if record is not None and unchanged_output(Path(args.output), record,
                                                       cache.secret_hash, args.force):
                return _written(args, progress, verdict, texts, record.clusters, [])
    backend = Backend(args.backend) if args.backend else None
    jobs = jobs_from(getattr(args, "jobs", None))
    # Shares of the whole compile, as measured on large policies (docs/performance.md).
    front = model(args.file, include_path=args.include_path,
                  progress=progress.within(0.0, 0.55), cache=cache, keep_syntax=False)
    keep_until_exit(args, front)
    if isinstance(front, Modelled) and not failed(list(front.diagnostics), args.strict) \
            and parallel.wanted(jobs, rule_count(front.policy), FORK_RULES):
        worker = parallel.start(checks_in_worker(front.policy))
        if worker is not None:
            try:  # entered with no call in between: an interrupt finds a worker to close
                return _compile_beside_checks(args, progress, front, cache, backend, worker)
            finally:
                worker.close()
        jobs = 1  # the fork failed: `checked` would only try it again
    if isinstance(front, Modelled):
        analysis = front.finish_with(
            lambda: checked(front.policy, progress.within(0.22, 0.55), jobs))
    else:
        analysis = front
    keep_until_exit(args, analysis)
    policy = analysis.policy
    verdict = Verdict.known(_with_backend(list(analysis.diagnostics), policy, backend),
                            args.strict)
    if policy is None or verdict.failed():
        return _write(args, progress, verdict, analysis.program.texts, "", [])
    return _build_and_write(args, progress.within(0.55, 0.95), progress, verdict, policy,
                            analysis.program.texts, backend, cache, analysis.cache_key)


def _compile_beside_checks(args: argparse.Namespace, progress: Progress, front: Modelled,
                           cache: ResultCache | None, backend: Backend | None,
                           worker: parallel.Worker) -> int:
    """The files built and staged here while WORKER runs the checks; they are swapped in
    only when the checks pass (fwc.parallel); the caller closes WORKER."""
    verdict = Verdict.pending(worker, front, backend, args.strict, progress.within(0.95, 0.95))
    return _build_and_write(args, progress.within(0.25, 0.95), progress, verdict,
                            front.policy, front.program.texts, backend, cache, front.key)


def _build_and_write(args: argparse.Namespace, building: Reporter, progress: Progress,
                     verdict: Verdict, policy: Policy, texts: dict[str, str],
                     backend: Backend | None, cache: ResultCache | None,
                     key: str | None) -> int:
    """POLICY's files built and written (and stored in CACHE under KEY, if both).

    Each file is written to the staging copy as soon as it is built (a large policy's
    output is never held at once), so a compile failure surfaces here too."""
    name = policy_name(policy)
    if cache is None or key is None:
        return _write(args, progress, verdict, texts, name, _streams(args, policy, building,
                                                                     backend))
    # What the next compile into this directory may patch (fwc.backend.patch: iptables
    # files only), and what this one may patch.
    lines = patch.line_digests(texts, _line_key(cache)) if all(
        (backend or c.backend) is Backend.IPTABLES for c in policy.clusters) else None
    patched = _patched(args, policy, lines, backend, cache) if lines is not None else None
    if patched is not None:
        try:
            status, record = _write_and_store(args, progress, verdict, texts, name,
                                              patched.streams, cache, _output_key(key, args))
        except patch.Refused:
            # A file of the previous output changed while it was read again to be written
            # (another compile swapped it in): nothing was written; compiled in full below.
            pass
        else:
            if record is not None:
                _keep_base(args, cache, replace(patched.base, record=record))
            return status
    streams = _streams(args, policy, building, backend)
    status, record = _write_and_store(args, progress, verdict, texts, name, streams, cache,
                                      _output_key(key, args))
    if record is not None and lines is not None:
        _keep_base(args, cache, patch.PatchBase(
            record, lines, patch.forward_splits({s.name: s.splits for s in streams}),
            patch.rule_spans(policy)))
    return status


def _streams(args: argparse.Namespace, policy: Policy, building: Reporter,
             backend: Backend | None) -> list[ClusterStream]:
    # Chain texts kept for the next member spill to the output's disk (the directory that
    # holds the output directory and its staging copy), not to a temporary directory
    # that may be memory.
    streams = stream_policy(
        policy, redact=args.redact_secrets, progress=building, backend=backend,
        chunked=True, spill_dir=str(Path(args.output).parent))
    keep_until_exit(args, streams)
    return streams


def _keep_base(args: argparse.Namespace, cache: ResultCache, base: patch.PatchBase) -> None:
    """BASE, what the next compile into this output directory may patch."""
    with contextlib.suppress(OSError):  # (an error only loses the base for next time)
        cache.put_json(patch.KIND, _base_key(args), base.as_json())


def _with_backend(diagnostics: list[Diagnostic], policy: Policy | None,
                  backend: Backend | None) -> list[Diagnostic]:
    """DIAGNOSTICS and, with `--backend`, what that backend cannot express."""
    if policy is None or backend is None:
        return diagnostics
    # The checks ran for each cluster's own backend: what --backend cannot express.
    known = {(d.code, d.span, d.message) for d in diagnostics}
    diagnostics += [d for d in capability.problems(policy, backend)
                    if (d.code, d.span, d.message) not in known]
    diagnostics.sort(key=lambda d: d.sort_key())
    return diagnostics


class ChecksFailed(Exception):
    """The checks of a worker failed the compile after the files were staged."""


class Verdict:
    """The diagnostics of a compile: known before the files are built, or pending in
    a worker process until the staging copy is complete (`gate`)."""

    def __init__(self, strict: bool, diagnostics: list[Diagnostic] | None = None,
                 worker: parallel.Worker | None = None, front: Modelled | None = None,
                 backend: Backend | None = None, progress: Reporter = SILENT) -> None:
        self._strict = strict
        self._diagnostics = diagnostics
        self._worker = worker
        self._front = front
        self._backend = backend
        self._progress = progress
        self._stored = diagnostics is not None  # known: stored by analyse when cached

    @classmethod
    def known(cls, diagnostics: list[Diagnostic], strict: bool) -> Verdict:
        return cls(strict, diagnostics)

    @classmethod
    def pending(cls, worker: parallel.Worker, front: Modelled, backend: Backend | None,
                strict: bool, progress: Reporter) -> Verdict:
        return cls(strict, worker=worker, front=front, backend=backend, progress=progress)

    @property
    def ready(self) -> bool:
        return self._diagnostics is not None

    def diagnostics(self) -> list[Diagnostic]:
        """Every diagnostic of the compile (waits for the worker's checks)."""
        if self._diagnostics is None:
            assert self._worker is not None and self._front is not None
            self._progress.phase("checking", 1.0)
            worker = self._worker
            analysis = self._front.finish_with(
                lambda: decoded_diagnostics(worker.result()))
            self._stored = analysis.cache_key is not None
            self._diagnostics = _with_backend(list(analysis.diagnostics), analysis.policy,
                                              self._backend)
        return self._diagnostics

    def failed(self) -> bool:
        return failed(self.diagnostics(), self._strict)

    def stored(self) -> bool:
        """Whether the analysis is in the result cache (the files may join it)."""
        self.diagnostics()
        return self._stored

    def gate(self) -> None:
        """Before the staged files are swapped in: ChecksFailed when the checks fail."""
        if self.failed():
            raise ChecksFailed


def _write_and_store(args: argparse.Namespace, progress: Progress, verdict: Verdict,
                     texts: dict[str, str], policy_name: str,
                     streams: Sequence[FileStream], cache: ResultCache,
                     key: str) -> tuple[int, OutputRecord | None]:
    """Write the files and record them in the cache entry KEY (only if all went well):
    the exit status and the record stored (None: none)."""
    recorder = Recorder(streams, cache.secret_hash)
    status = _write(args, progress, verdict, texts, policy_name, recorder.streams, recorder)
    record = recorder.record(policy_name) if status == 0 else None
    if record is None or not verdict.stored():
        return status, None
    # The output is written; an error here only loses the record for next time.
    with contextlib.suppress(OSError):
        cache.put_json("out", key, record.as_json())
    return status, record


def _write_failure(exc: Exception) -> Diagnostic:
    """What a failed write says: the output directory's own error, or a compiler bug."""
    if isinstance(exc, OutputError):
        return error(exc.code, str(exc), hint="nothing under the output directory was changed")
    return error("FWC900", f"internal error while compiling: {type(exc).__name__}: {exc}",
                 hint="please report this with the policy; nothing was written")


def _write(args: argparse.Namespace, progress: Progress, verdict: Verdict,
           texts: dict[str, str], policy_name: str, clusters: Sequence[FileStream],
           recorder: Recorder | None = None) -> int:
    """Print the diagnostics and, unless they fail the compile, write CLUSTERS (noting
    what was written in RECORDER)."""
    if not policy_name or (verdict.ready and verdict.failed()):
        return _refuse(args, progress, verdict.diagnostics(), texts)
    try:
        removed = write_output(Path(args.output), policy_name, clusters, force=args.force,
                               before_swap=verdict.gate,
                               after_cluster=recorder and recorder.after_cluster,
                               after_swap=recorder and recorder.after_swap)
    except ChecksFailed:
        return _refuse(args, progress, verdict.diagnostics(), texts)
    except patch.Refused:
        raise  # a patch's file changed meanwhile: nothing written, the caller compiles
    except Exception as exc:  # noqa: BLE001 - a compiler bug must end in a diagnostic
        if verdict.failed():  # the checks come first, as without a worker
            return _refuse(args, progress, verdict.diagnostics(), texts)
        progress.done()
        diagnostics = verdict.diagnostics()
        diagnostics.append(_write_failure(exc))
        report(diagnostics, texts, args.format)
        return 1
    return _written(args, progress, verdict, texts, clusters, removed)


def _written(args: argparse.Namespace, progress: Progress, verdict: Verdict,
             texts: dict[str, str], clusters: Sequence[FileStream | RecordedCluster],
             removed: list[str]) -> int:
    """What a successful compile says: the diagnostics, then each member's files."""
    progress.done()
    report(verdict.diagnostics(), texts, args.format)
    if args.format == "text":
        for cluster in clusters:
            for member, names in cluster.members().items():
                print(f"{args.output}/{cluster.name}/{member}: {' '.join(names)}")
        for name in removed:
            print(f"{args.output}/{name}: removed (no longer in {args.file})")
    return 0


def _refuse(args: argparse.Namespace, progress: Progress, diagnostics: list[Diagnostic],
            texts: dict[str, str]) -> int:
    progress.done()
    report(diagnostics, texts, args.format)
    print("fwc: nothing written: fix the errors above first", file=sys.stderr)
    return 1
