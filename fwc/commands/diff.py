"""`fwc diff [REV | A..B] [FILE...]`: what a change does, then the generated files' diff.

Exit status like `git diff --exit-code`: 0 nothing changed, 1 something did,
2 usage errors (not a repository, unknown revision, a policy that does not
compile at one side).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
from pathlib import Path

from fwc import parallel
from fwc.commands.common import without_cycle_collection
from fwc.diagnostics import print_diagnostics, shown_text
from fwc.diffing import files as filediff
from fwc.diffing.build import Build, BuildError, compile_sides
from fwc.diffing.colour import Palette, wants_colour
from fwc.diffing.discover import changed_policies
from fwc.diffing.git import GitError, is_rev, parse_range, repo_root
from fwc.diffing.project import IncludePaths
from fwc.diffing.report import render_summary, summary_json
from fwc.diffing.semantic import (
    ChainChange,
    ClusterSummary,
    MemberPlace,
    chain_changes_json,
    chain_changes_of,
    compiled_chain_changes,
    members_compared,
    renumberings,
    review_of,
    summarise_models,
    with_chain_changes,
)
from fwc.parallel import jobs_from
from fwc.pipeline import DIFF_FORK_RULES, rule_count

EXIT_SAME, EXIT_CHANGED, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    pass


def run(args: argparse.Namespace) -> int:
    if getattr(args, "installed", None):
        if getattr(args, "format", "text") != "text":
            print("fwc diff: --format json is not available with --installed", file=sys.stderr)
            return EXIT_USAGE
        from fwc.diffing.installed import run_installed

        return run_installed(args)
    try:
        with without_cycle_collection(args):
            return _run(args)
    except (GitError, UsageError) as exc:
        print(f"fwc diff: {exc}", file=sys.stderr)
        return EXIT_USAGE


def split_args(repo: Path, words: list[str]) -> tuple[str, list[str]]:
    """(revision spec, files): the first word is a revision unless it names a file."""
    if not words:
        return "HEAD", []
    first, rest = words[0], words[1:]
    if Path(first).exists() or first.endswith(".fw"):
        return "HEAD", words
    if ".." in first or is_rev(repo, first):
        return first, rest
    raise UsageError(f"unknown revision or path '{first}'")


def repo_relative(repo: Path, path: str) -> str:
    absolute = Path(os.path.abspath(path))
    try:
        return absolute.relative_to(repo.resolve()).as_posix()
    except ValueError:
        try:
            return absolute.resolve().relative_to(repo.resolve()).as_posix()
        except ValueError:
            raise UsageError(f"'{path}' is outside the repository {repo}") from None


def _include_dir(repo: Path, directory: Path) -> str:
    try:
        return repo_relative(repo, str(directory))
    except UsageError:
        raise UsageError(f"--include-path '{directory}' is outside the repository {repo}: "
                         "fwc diff reads both sides from git") from None


def _run(args: argparse.Namespace) -> int:
    words = [w for w in args.args if w != "--"]
    first_file = next((w for w in words if Path(w).exists()), None)
    repo = repo_root(Path(first_file).parent if first_file else Path.cwd())
    spec, file_args = split_args(repo, words)
    # Both sides are read from git, so a search directory must be part of the repository;
    # without one on the command line, each side's fwc.toml says (fwc.diffing.project).
    given = [] if getattr(args, "include_path_from_config", False) \
        else getattr(args, "include_path", [])
    searched = IncludePaths([Path(_include_dir(repo, d)) for d in given] if given else None)
    old, new = parse_range(repo, spec)
    policies = ([repo_relative(repo, f) for f in file_args]
                or changed_policies(old, new, searched))
    for rel in policies:
        if not old.exists(rel) and not new.exists(rel):
            raise UsageError(f"'{rel}' exists neither in {old.label} nor in the {new.label}")

    palette = Palette(wants_colour(args.color, sys.stdout))
    summaries: list[tuple[str, list[ClusterSummary]]] = []
    patches: list[filediff.FileDiff] = []
    jobs = jobs_from(getattr(args, "jobs", None))
    with tempfile.TemporaryDirectory(prefix="fwc-diff-") as scratch:
        for number, rel in enumerate(policies):
            try:
                before, after = compile_sides(old, new, rel, Path(scratch) / f"{number}-old",
                                              Path(scratch) / f"{number}-new", searched,
                                              jobs)
            except BuildError as exc:
                _report_broken(exc)
                return EXIT_USAGE
            summary, files = _compare(before, after, jobs, Path(scratch) / f"{number}-patch",
                                      getattr(args, "exact", False))
            summaries.append((rel, summary))
            patches.extend(files)
        changed = bool(patches) or any(s for _, group in summaries for s in group)
        _print(args, palette, summaries, patches)
    return EXIT_CHANGED if changed else EXIT_SAME


def _compare(before: Build, after: Build, jobs: int, spool: Path, exact: bool = False) \
        -> tuple[list[ClusterSummary], list[filediff.FileDiff]]:
    """The summary of both sides and their files' patch. For a large policy each member's
    chain changes are read from the compiled files in a worker process (fwc.parallel)
    while this one compares the models, then writes the patch (its bodies under SPOOL,
    fwc.diffing.files.FileDiff): the two halves take about as long. The models go before
    the files are read here (without a worker: at 100,000 rules a member's rule file
    alone is about 100 MB). Unless EXACT, the rules files are compared for review
    (fwc.diffing.files `Review`)."""
    members = members_compared(before.policy, after.policy)
    renumbered = renumberings(before.policy, after.policy)
    rules = sum(rule_count(b.policy) for b in (before, after) if b.policy)
    worker = parallel.start(lambda: chain_changes_json(compiled_chain_changes(
        members, before.outdir, after.outdir, renumbered))) \
        if parallel.wanted(jobs, rules, DIFF_FORK_RULES) else None
    with contextlib.closing(worker) if worker else contextlib.nullcontext():
        found = summarise_models(before.policy, after.policy)
        before.policy = after.policy = None
        files = filediff.diff_trees(before.outdir, after.outdir, spool,
                                    None if exact else review_of(renumbered))
        chains = _chains_answer(worker, members) if worker else None
    if chains is None:  # no worker, or it failed: the same, read here
        chains = compiled_chain_changes(members, before.outdir, after.outdir, renumbered)
    return with_chain_changes(found, chains), files


def _chains_answer(worker: parallel.Worker, members: list[MemberPlace]) \
        -> dict[tuple[str, str], list[ChainChange]] | None:
    """The worker's chain changes, for exactly MEMBERS; None when it did not deliver them
    (they are then read again in this process: the worker only saves time, never
    decides)."""
    try:
        chains = chain_changes_of(worker.result())
        if sorted(chains) != sorted((cluster, member) for cluster, member, _, _ in members):
            raise ValueError("not the members asked for")
        return chains
    except (parallel.WorkerFailed, ValueError):
        return None


def _report_broken(exc: BuildError) -> None:
    build: Build = exc.build
    # (the path is a file name from the repository under review: no escape sequence of it
    # reaches the terminal)
    print(shown_text(f"fwc diff: {build.path} does not compile at {build.side.label}:"),
          file=sys.stderr)
    print_diagnostics(exc.diagnostics, build.texts)


def _print(args: argparse.Namespace, palette: Palette,
           summaries: list[tuple[str, list[ClusterSummary]]],
           patches: list[filediff.FileDiff]) -> None:
    out = sys.stdout
    if getattr(args, "format", "text") == "json":
        out.write(json.dumps(diff_json(summaries, patches), indent=2) + "\n")
        return
    if args.name_only:
        out.write(filediff.render_names(patches))
        return
    for rel, group in summaries:
        out.write(render_summary(rel, group, palette))
    if args.stat:
        out.write(filediff.render_stat(patches, palette))
    else:
        filediff.write_patch(patches, palette, out)



def diff_json(summaries: list[tuple[str, list[ClusterSummary]]],
              patches: list[filediff.FileDiff]) -> dict[str, object]:
    """`fwc diff --format json`: the semantic summary per policy and the changed files."""
    return {
        "changed": bool(patches) or any(s for _, group in summaries for s in group),
        "policies": [summary_json(rel, group) for rel, group in summaries],
        "files": [{"path": p.path, "status": p.status, "insertions": p.insertions,
                   "deletions": p.deletions, "renumbered": p.renumbered} for p in patches],
    }
