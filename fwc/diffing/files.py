"""Unified diffs of two compiled output trees, with git's --stat and --name-only.

For review, a compiled rules file is compared without what only its rules' positions
decide (fwc.diffing.renumber `comparable`): one rule inserted near the top of a
20,000-rule policy changes the policy line named by every rule below it, in every rule
file of every member (about 375,000 changed lines at 20,000 rules, against the 2 that
are the new rule). Those lines are counted (`FileDiff.renumbered`) and left out of the
patch; `fwc diff --exact` shows the byte-exact patch.
"""

from __future__ import annotations

import difflib
import itertools
import operator
import os
import subprocess
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TextIO

from fwc.diffing.colour import Palette
from fwc.model.records import dataclass

STATUSES = ("added", "removed", "modified")


@dataclass(frozen=True)
class FileDiff:
    """One changed file. Its unified diff body stays on disk, in SPOOL (one line per line,
    without the trailing newlines; `lines` reads it): the patch of one inserted rule at
    20,000 rules is about 870,000 lines, which `fwc diff` used to hold, pass from its
    worker as JSON and join before printing."""

    path: str  # relative to the output root: <cluster>/<member>/<file>
    status: str  # one of STATUSES
    insertions: int
    deletions: int
    spool: Path
    # lines left out of the patch: they differ only in the policy line or rule number
    # they name (a review patch, `Review`); the patch's context shows them as they are now
    renumbered: int = 0

    def lines(self) -> Iterator[str]:
        # (only "\n" ends a line: the lines come from splitlines, so they hold no other
        # line break, and none is translated)
        with open(self.spool, encoding="utf-8", newline="\n") as body:
            for line in body:
                yield line[:-1] if line.endswith("\n") else line


# For review: a rules file's (old side's, new side's) text as compared, for the file at
# a relative path <cluster>/<member>/<file>; None for a file compared as it is.
Review = Callable[[str], tuple[Callable[[str], str], Callable[[str], str]] | None]


def tree_files(root: Path | None) -> dict[str, Path]:
    if root is None or not root.is_dir():
        return {}
    return {p.relative_to(root).as_posix(): p for p in sorted(root.rglob("*")) if p.is_file()}


def diff_trees(old_root: Path | None, new_root: Path | None, spool: Path,
               review: Review | None = None) -> list[FileDiff]:
    """Each changed file's diff, its body written under SPOOL (a new directory); with
    REVIEW, the files it names compared as it says (`_reviewed`)."""
    old_files, new_files = tree_files(old_root), tree_files(new_root)
    out: list[FileDiff] = []
    spool.mkdir(parents=True)
    for rel in sorted(set(old_files) | set(new_files)):
        old, new = _bytes(old_files.get(rel)), _bytes(new_files.get(rel))
        if old == new:
            continue
        status = "added" if rel not in old_files else "removed" if rel not in new_files \
            else "modified"
        head = [f"--- {'/dev/null' if status == 'added' else f'a/{rel}'}",
                f"+++ {'/dev/null' if status == 'removed' else f'b/{rel}'}"]
        body = spool / f"{len(out)}.patch"
        if status == "modified":
            del old, new  # git reads the files itself (a review, in blocks)
            sides = review(rel) if review is not None else None
            reviewed = _reviewed(rel, old_files[rel], new_files[rel], sides, body) \
                if sides is not None else None
            if reviewed is not None:
                out.append(reviewed)
                continue
            try:
                # git's lines go to the body as git writes them: a file's patch is never
                # held (a rules file of 100,000 rules is about 100 MB on each side)
                out.append(_spooled(rel, status, itertools.chain(
                    head, _git_hunks(old_files[rel], new_files[rel])), body))
                continue
            except _NoGit:  # difflib's, below (over what git began to write)
                old, new = _bytes(old_files[rel]), _bytes(new_files[rel])
        lines = difflib.unified_diff(_lines(old), _lines(new), head[0][4:], head[1][4:],
                                     lineterm="")
        out.append(_spooled(rel, status, lines, body))
    return out


def _reviewed(rel: str, old: Path, new: Path,
              sides: tuple[Callable[[str], str], Callable[[str], str]], body: Path) \
        -> FileDiff | None:
    """The diff of OLD and NEW as SIDES compare them, shown in their own lines; None when
    a side's comparable text does not keep its file's lines (then the file is compared
    as it is).

    Each side's comparable text (line for line the file's: fwc.diffing.renumber
    `comparable`) is written beside BODY and diffed like any file; each line of the
    hunks is then replaced by the line at its place in the file itself (a context line
    by the new side's), read in step with the hunks, and the lines the comparison paired
    but that differ are counted."""
    compared = [body.with_suffix(".old"), body.with_suffix(".new")]
    try:
        if not all(_comparable_copy(path, side, target)
                   for path, side, target in zip((old, new), sides, compared, strict=True)):
            return None
        try:
            return _spooled_review(rel, old, new, _git_hunks(compared[0], compared[1]), body)
        except _NoGit:  # difflib's, over what git began to write
            with_difflib = _difflib_hunks(_split(_text_of(compared[0])),
                                          _split(_text_of(compared[1])))
            return _spooled_review(rel, old, new, with_difflib, body)
    finally:
        for target in compared:
            target.unlink(missing_ok=True)


# Text made comparable a block of whole lines at a time: a rules file can be 100 MB,
# and its text, the substitutions' copies and the encoded result were ~4.5x that at once.
_BLOCK = 1 << 23


def _comparable_copy(path: Path, side: Callable[[str], str], target: Path) -> bool:
    """PATH's text as SIDE makes it comparable, written to TARGET; False when SIDE did not
    keep the number of lines (the line-for-line mapping back would be wrong). Bytes that
    are not UTF-8 stay as they are (surrogateescape), so two different ones never read
    alike."""
    with open(path, "rb") as source, open(target, "wb") as copy:
        while block := source.readlines(_BLOCK):
            text = b"".join(block).decode("utf-8", errors="surrogateescape")
            made = side(text)
            if made.count("\n") != text.count("\n"):
                return False
            copy.write(made.encode("utf-8", errors="surrogateescape"))
    return True


def _spooled_review(rel: str, old: Path, new: Path, hunks: Iterable[str],
                    body: Path) -> FileDiff:
    counted = [0]
    head = [f"--- a/{rel}", f"+++ b/{rel}"]
    with open(old, "rb") as old_lines, open(new, "rb") as new_lines:
        lines = _in_place(hunks, old_lines, new_lines, counted)
        first = next(lines, None)
        found = _spooled(rel, "modified", itertools.chain(head, [first], lines)
                         if first is not None else [], body)
    return FileDiff(found.path, found.status, found.insertions, found.deletions, body,
                    counted[0])


def _in_place(hunks: Iterable[str], old: Iterator[bytes], new: Iterator[bytes],
              renumbered: list[int]) -> Iterator[str]:
    """HUNKS (of two texts line for line like OLD's and NEW's lines) with each line
    replaced by OLD's or NEW's at its place; RENUMBERED[0] counts the lines paired as
    equal that differ in OLD and NEW (between the hunks, and as context). Only the lines
    shown are decoded: between hunks the raw lines are compared as they are read."""
    done_old = done_new = 0
    for line in hunks:
        if line.startswith("@@ "):
            old_start, new_start = _hunk_starts(line)
            # the lines before a hunk pair up in order, as equal
            renumbered[0] += sum(map(operator.ne, itertools.islice(old, old_start - done_old),
                                     itertools.islice(new, new_start - done_new)))
            done_old, done_new = old_start, new_start
            yield line
        elif line.startswith("-"):
            done_old += 1
            yield "-" + _decoded_line(next(old))
        elif line.startswith("+"):
            done_new += 1
            yield "+" + _decoded_line(next(new))
        else:
            done_old += 1
            done_new += 1
            was, now = next(old), next(new)
            renumbered[0] += was != now
            yield " " + _decoded_line(now)
    renumbered[0] += sum(map(operator.ne, old, new))


def _hunk_starts(header: str) -> tuple[int, int]:
    """The lines before a hunk on each side: "@@ -A,B +C,D @@" starts after line A-1 (or
    after line A when B is 0: the hunk adds there)."""
    old_range, new_range = header.split(" ")[1:3]

    def before(spec: str) -> int:
        start, _, count = spec[1:].partition(",")
        return int(start) - (0 if count == "0" else 1)

    return before(old_range), before(new_range)


def _decoded_line(raw: bytes) -> str:
    """A file's line as git splits them (at "\\n" only), without its end."""
    return (raw[:-1] if raw.endswith(b"\n") else raw).decode("utf-8", errors="replace")


def _split(text: str) -> list[str]:
    """TEXT's lines as `_decoded_line` reads them, a last line without its end marked so
    that it differs from the same line with one (git says "\\ No newline")."""
    lines = text.split("\n")
    if lines[-1] == "":
        return lines[:-1]
    lines[-1] += "\0no newline"
    return lines


def _text_of(path: Path) -> str:
    return path.read_bytes().decode("utf-8", errors="surrogateescape")


def _difflib_hunks(old: list[str], new: list[str]) -> Iterator[str]:
    """difflib's hunks of OLD and NEW, in git's format (no file header)."""
    for index, line in enumerate(difflib.unified_diff(old, new, lineterm="")):
        if index >= 2:  # ("---" and "+++" come first)
            yield line


def _spooled(rel: str, status: str, lines: Iterable[str], path: Path) -> FileDiff:
    insertions = deletions = 0
    with open(path, "w", encoding="utf-8", newline="\n") as body:
        for line in lines:
            if line[:1] == "+" and line[:3] != "+++":
                insertions += 1
            elif line[:1] == "-" and line[:3] != "---":
                deletions += 1
            body.write(line + "\n")
    return FileDiff(rel, status, insertions, deletions, path)


# git's own diff, whatever the user's configuration and environment say: no external or
# textconv programs, no colour, the default algorithm and heuristics, three lines of
# context and no hunks joined across more, a blank context line still " " (as difflib
# writes it). The options are given on the command line (they rank above configuration
# and attributes); the configuration is pinned too, for a git that knows no option.
_GIT_DIFF = ("git", "-c", "diff.algorithm=myers", "-c", "diff.indentHeuristic=true",
             "-c", "diff.interHunkContext=0", "-c", "diff.suppressBlankEmpty=false",
             "-c", "core.autocrlf=false", "-c", f"core.attributesFile={os.devnull}",
             "diff", "--no-index", "--no-color", "--no-ext-diff", "--no-textconv", "--text",
             "--diff-algorithm=myers", "--indent-heuristic", "--inter-hunk-context=0", "-U3")


def _git_environment(beside: Path) -> dict[str, str]:
    """The environment without anything of git's (GIT_DIFF_OPTS overrides -U, GIT_CONFIG_*
    adds settings), no system or global configuration, and no repository found above
    BESIDE (a scratch directory under a checkout would lend its configuration)."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    environment.update(GIT_CONFIG_NOSYSTEM="1", GIT_CONFIG_GLOBAL=os.devnull,
                       GIT_CEILING_DIRECTORIES=str(beside.parent))
    return environment


class _NoGit(Exception):
    """git could not diff the two files (not installed, or it failed)."""


def _git_hunks(old: Path, new: Path) -> Iterator[str]:
    """The hunks of OLD against NEW as git computes them, line by line as git writes
    them; _NoGit (before the first line, or after the last) when git cannot say.

    difflib's matcher takes about 8.7 s for the rules files of one inserted rule at
    20,000 rules (every later rule's policy line changes, so few lines match), git about
    2 s for the same hunks in the same format (3.2 s for `diff_trees` in all). `fwc diff`
    runs where git is; without it the patch comes from difflib. Hunk headers lose git's
    function context (difflib has none), and files always end in a newline (no
    "\\ No newline" marker kept)."""
    beside = old.resolve().parent
    try:
        git = subprocess.Popen([*_GIT_DIFF, "--", str(old.resolve()), str(new.resolve())],
                               cwd=beside, env=_git_environment(beside),
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    except OSError as exc:
        raise _NoGit from exc
    with git:
        assert git.stdout is not None
        in_hunks = False
        # (git ends a line at "\n" only, as iterating over bytes does: a line may hold
        # another line break character)
        for raw in git.stdout:
            line = _decoded_line(raw)
            if line.startswith("@@ "):
                in_hunks = True
                end = line.find(" @@", 3)
                line = line[:end + 3] if end >= 0 else line
            elif not in_hunks or line.startswith("\\"):
                continue
            yield line
    if git.returncode not in (0, 1):
        raise _NoGit


def _bytes(path: Path | None) -> bytes:
    return b"" if path is None else path.read_bytes()


def _lines(data: bytes) -> list[str]:
    return data.decode("utf-8", errors="replace").splitlines()


def write_patch(diffs: list[FileDiff], palette: Palette, stream: TextIO) -> None:
    """The patch of DIFFS to STREAM, line by line as each file's body is read back (the
    patch of an inserted rule at 20,000 rules is about 870,000 lines)."""
    for diff in diffs:
        stream.writelines(line + "\n" for line in _patch_lines(diff, palette))


def _patch_lines(diff: FileDiff, palette: Palette) -> Iterator[str]:
    yield palette.bold(f"diff --fwc a/{diff.path} b/{diff.path}")
    if diff.renumbered:
        yield f"fwc: {_renumbered(diff.renumbered)}, not shown (--exact shows them)"
    if diff.status != "modified":
        yield palette.bold(f"{'new' if diff.status == 'added' else 'deleted'} file")
    for line in diff.lines():
        if line.startswith(("---", "+++")):
            yield palette.bold(line)
        elif line.startswith("@@"):
            yield palette.cyan(line)
        elif line.startswith("+"):
            yield palette.green(line)
        elif line.startswith("-"):
            yield palette.red(line)
        else:
            yield line


def render_stat(diffs: list[FileDiff], palette: Palette, width: int = 60) -> str:
    if not diffs:
        return ""
    name_width = max(len(d.path) for d in diffs)
    counts = [d.insertions + d.deletions for d in diffs]
    biggest = max(counts) or 1
    bar_room = max(10, width - name_width - 10)
    lines: list[str] = []
    for diff, count in zip(diffs, counts, strict=True):
        scale = min(1.0, bar_room / biggest)
        plus = round(diff.insertions * scale) or (1 if diff.insertions else 0)
        minus = round(diff.deletions * scale) or (1 if diff.deletions else 0)
        bar = palette.green("+" * plus) + palette.red("-" * minus) if plus or minus else ""
        shown = " ".join(part for part in (f"{count:>4}", bar) if part)
        note = f" ({_renumbered(diff.renumbered)})" if diff.renumbered else ""
        lines.append(f" {diff.path.ljust(name_width)} | {shown}{note}")
    ins = sum(d.insertions for d in diffs)
    dels = sum(d.deletions for d in diffs)
    renumbered = sum(d.renumbered for d in diffs)
    lines.append(f" {len(diffs)} file{'s' if len(diffs) != 1 else ''} changed, "
                 f"{ins} insertion{'s' if ins != 1 else ''}(+), "
                 f"{dels} deletion{'s' if dels != 1 else ''}(-)"
                 + (f"; {_renumbered(renumbered)}" if renumbered else ""))
    return "\n".join(lines) + "\n"


def _renumbered(count: int) -> str:
    lines = "line differs" if count == 1 else "lines differ"
    return f"{count} {lines} only in the policy line or rule number named"


def render_names(diffs: list[FileDiff]) -> str:
    return "".join(f"{d.path}\n" for d in diffs)
