"""`fwc diff [REV | A..B] [FILE...]`: what a change does, then the generated files' diff.

Exit status like `git diff --exit-code`: 0 nothing changed, 1 something did,
2 usage errors (not a repository, unknown revision, a policy that does not
compile at one side).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from fwc.commands.common import without_cycle_collection
from fwc.diagnostics import print_diagnostics
from fwc.diffing import files as filediff
from fwc.diffing.build import Build, BuildError, compile_sides
from fwc.diffing.colour import Palette, wants_colour
from fwc.diffing.discover import changed_policies
from fwc.diffing.git import GitError, is_rev, parse_range, repo_root
from fwc.diffing.report import render_summary, summary_json
from fwc.diffing.semantic import ClusterSummary, summarise_models, with_chain_changes
from fwc.parallel import jobs_from

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
    # Both sides are read from git, so a search directory must be part of the repository.
    searched = [Path(_include_dir(repo, d)) for d in getattr(args, "include_path", [])]
    old, new = parse_range(repo, spec)
    policies = ([repo_relative(repo, f) for f in file_args]
                or changed_policies(old, new, searched))
    for rel in policies:
        if not old.exists(rel) and not new.exists(rel):
            raise UsageError(f"'{rel}' exists neither in {old.label} nor in the {new.label}")

    palette = Palette(wants_colour(args.color, sys.stdout))
    summaries: list[tuple[str, list[ClusterSummary]]] = []
    patches: list[filediff.FileDiff] = []
    with tempfile.TemporaryDirectory(prefix="fwc-diff-") as scratch:
        for number, rel in enumerate(policies):
            try:
                before, after = compile_sides(old, new, rel, Path(scratch) / f"{number}-old",
                                              Path(scratch) / f"{number}-new", searched,
                                              jobs_from(None))
            except BuildError as exc:
                _report_broken(exc)
                return EXIT_USAGE
            found = summarise_models(before.policy, after.policy)
            # Both models are done with: the rest reads the compiled files, whose rule
            # files alone are about 100 MB a member at 100,000 rules.
            before.policy = after.policy = None
            summaries.append((rel, with_chain_changes(found, before.outdir, after.outdir)))
            patches.extend(filediff.diff_trees(before.outdir, after.outdir))
        changed = bool(patches) or any(s for _, group in summaries for s in group)
        _print(args, palette, summaries, patches)
    return EXIT_CHANGED if changed else EXIT_SAME


def _report_broken(exc: BuildError) -> None:
    build: Build = exc.build
    print(f"fwc diff: {build.path} does not compile at {build.side.label}:", file=sys.stderr)
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
        out.write(filediff.render_patch(patches, palette))



def diff_json(summaries: list[tuple[str, list[ClusterSummary]]],
              patches: list[filediff.FileDiff]) -> dict[str, object]:
    """`fwc diff --format json`: the semantic summary per policy and the changed files."""
    return {
        "changed": bool(patches) or any(s for _, group in summaries for s in group),
        "policies": [summary_json(rel, group) for rel, group in summaries],
        "files": [{"path": p.path, "status": p.status, "insertions": p.insertions,
                   "deletions": p.deletions} for p in patches],
    }
