"""Reading a policy as it was at a git revision, for `fwc diff`.

Both sides of a diff name their files by repository-relative paths, read
through a reader function (the working tree side too): spans, comments and
MANIFEST hashes in the compiled output then differ only where the policy
really changed, never because one side said `/abs/path` and the other `path`.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path, PurePosixPath

from fwc.frontend.sources import MAX_FILE_BYTES, Refused, inside, read_regular, too_large
from fwc.model.records import dataclass

WORKTREE = None  # the `rev` of a Side that reads the working tree

Reader = Callable[[Path], str]


class GitError(Exception):
    """A git problem the user must fix (not a repository, unknown revision...)."""


def git(repo: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    try:
        proc = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True,
                              timeout=60)
    except FileNotFoundError as exc:
        raise GitError("git is not installed") from exc
    except subprocess.TimeoutExpired as exc:
        raise GitError(f"git {' '.join(args)} timed out") from exc
    if check and proc.returncode != 0:
        first = (proc.stderr.strip() or proc.stdout.strip()).splitlines()
        raise GitError(first[0] if first else f"git {' '.join(args)} failed")
    return proc


def _utf8_name(raw: bytes) -> str | None:
    """RAW as text; None for a name that is not UTF-8 and no policy (fails closed on those)."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        if raw.endswith(b".fw"):
            shown = raw.decode("utf-8", "backslashreplace")
            raise GitError(f"'{shown}': the file name is not valid UTF-8, so fwc cannot "
                           "name or read it: rename it (git mv) to a UTF-8 name") from None
        return None  # not a policy: nothing fwc reads can name it


def git_paths(repo: Path, *args: str, check: bool = True) -> list[str] | None:
    """The NUL-separated (-z) path list a git command prints; None when it failed.

    Without -z git quotes any path with non-ASCII bytes ("caf\\303\\251.fw"), which
    then matches no file: a new policy would silently not be compared.
    """
    try:
        proc = subprocess.run(["git", "-C", str(repo), *args], capture_output=True,
                              timeout=60)
    except FileNotFoundError as exc:
        raise GitError("git is not installed") from exc
    except subprocess.TimeoutExpired as exc:
        raise GitError(f"git {' '.join(args)} timed out") from exc
    if proc.returncode != 0:
        if not check:
            return None
        first = proc.stderr.decode("utf-8", "replace").strip().splitlines()
        raise GitError(first[0] if first else f"git {' '.join(args)} failed")
    names = (_utf8_name(raw) for raw in proc.stdout.split(b"\0") if raw)
    return [name for name in names if name is not None]


def worktree_name(name: str) -> str | None:
    """A file name read from the disk (surrogate-escaped bytes) checked like git's."""
    return _utf8_name(os.fsencode(name))


def _git_blob(repo: Path, spec: str, limit: int) -> bytes | None:
    """At most LIMIT + 1 bytes of the blob SPEC (None when it is not a blob), never more
    in memory however large the blob is."""
    try:
        proc = subprocess.Popen(["git", "-C", str(repo), "cat-file", "blob", spec],
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    except FileNotFoundError as exc:
        raise GitError("git is not installed") from exc
    assert proc.stdout is not None
    with proc.stdout:
        data = proc.stdout.read(limit + 1)
    if len(data) > limit:
        proc.kill()
    try:
        status = proc.wait(timeout=60)
    except subprocess.TimeoutExpired as exc:
        proc.kill()
        proc.wait()
        raise GitError(f"git cat-file blob {spec} timed out") from exc
    if len(data) > limit:
        return data
    return data if status == 0 else None


def repo_root(start: Path) -> Path:
    proc = git(start, "rev-parse", "--show-toplevel", check=False)
    if proc.returncode != 0:
        raise GitError(f"not a git repository: {start.resolve()}")
    return Path(proc.stdout.strip())


def resolve_rev(repo: Path, rev: str) -> str:
    """Full commit id of REV, or GitError naming the bad revision."""
    proc = git(repo, "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}", check=False)
    if proc.returncode != 0 or not proc.stdout.strip():
        raise GitError(f"unknown revision '{rev}'")
    return proc.stdout.strip()


def is_rev(repo: Path, text: str) -> bool:
    try:
        resolve_rev(repo, text)
    except GitError:
        return False
    return True


def normalise(path: PurePosixPath | Path | str) -> str:
    """A repository-relative path with `a/../b` folded (includes may climb)."""
    return os.path.normpath(str(path)).replace(os.sep, "/")


@dataclass(frozen=True)
class Side:
    """One side of a diff: a commit, or the working tree when `rev` is None."""

    repo: Path
    rev: str | None
    label: str  # what the user typed, for messages: HEAD, abc123, "working tree"

    def read(self, path: Path) -> str:
        """REL's text on this side: a regular file inside the repository, bounded in size."""
        rel = normalise(path)
        if self.rev is WORKTREE:
            repo = self.repo.resolve()
            target = (repo / rel).resolve()
            if not inside(target, [repo]):
                raise Refused("FWC010", f"'{rel}' leads outside the repository",
                              "keep policy files inside the repository")
            return read_regular(target, rel).decode("utf-8")
        data = _git_blob(self.repo, f"{self.rev}:{rel}", MAX_FILE_BYTES)
        if data is None:
            raise FileNotFoundError(2, f"not in {self.label}", rel)
        if self._is_symlink(rel):
            # Its blob is the target's name: read as a policy it failed to parse, so the
            # policy looked unchanged on both sides and a change to the target was not
            # compared at all.
            raise Refused("FWC011", f"'{rel}' is a symbolic link in {self.label}, not a "
                          "regular file",
                          "fwc diff reads each side from git, which keeps a link's target "
                          "name, not the file: name or include the file itself")
        if len(data) > MAX_FILE_BYTES:
            raise too_large(rel)
        return data.decode("utf-8")

    def _is_symlink(self, rel: str) -> bool:
        """Whether REL is a symbolic link in this side's commit (its mode is 120000)."""
        listed = subprocess.run(["git", "-C", str(self.repo), "--literal-pathspecs", "ls-tree",
                                 "-z", str(self.rev), "--", rel], capture_output=True,
                                timeout=60).stdout
        return listed.startswith(b"120000 ")

    def exists(self, rel: str) -> bool:
        if self.rev is WORKTREE:
            return (self.repo / rel).is_file()
        return git(self.repo, "cat-file", "-e", f"{self.rev}:{rel}", check=False).returncode == 0

    def is_dir(self, rel: str | None) -> bool:
        """Whether REL (repository-relative, None: outside) is a directory on this side."""
        if rel is None:
            return False
        if self.rev is WORKTREE:
            return (self.repo / rel).is_dir()
        spec = f"{self.rev}:" if rel in ("", ".") else f"{self.rev}:{rel}"
        found = git(self.repo, "cat-file", "-t", spec, check=False)
        return found.returncode == 0 and found.stdout.strip() == "tree"

    def list_fw(self, directory: str) -> list[str]:
        """Repository-relative `*.fw` files directly inside DIRECTORY ("" = top)."""
        if self.rev is WORKTREE:
            base = self.repo / directory if directory else self.repo
            if not base.is_dir():
                return []
            on_disk = [worktree_name(p.name) for p in base.glob("*.fw") if p.is_file()]
            return sorted(normalise(Path(directory) / n) if directory else n
                          for n in on_disk if n is not None)
        spec = f"{self.rev}:{directory}" if directory else f"{self.rev}:"
        listed = git_paths(self.repo, "ls-tree", "-z", "--name-only", spec, check=False)
        names = [n for n in listed or [] if n.endswith(".fw")]
        return sorted(normalise(Path(directory) / n) if directory else n for n in names)


def changed_paths(old: Side, new: Side) -> set[str]:
    """Repository-relative paths that differ between the two sides."""
    diff = ["diff", "-z", "--name-only", "--no-renames", old.rev or "HEAD"]
    if new.rev is WORKTREE:
        untracked = git_paths(old.repo, "ls-files", "-z", "--others", "--exclude-standard")
        return set(git_paths(old.repo, *diff) or []) | set(untracked or [])
    return set(git_paths(old.repo, *diff, new.rev) or [])


def parse_range(repo: Path, text: str) -> tuple[Side, Side]:
    """`A..B` -> two commit sides; `REV` -> REV against the working tree."""
    if ".." in text:
        left, _, right = text.partition("..")
        left = left or "HEAD"
        right = right or "HEAD"
        return (Side(repo, resolve_rev(repo, left), left),
                Side(repo, resolve_rev(repo, right), right))
    return Side(repo, resolve_rev(repo, text), text), Side(repo, WORKTREE, "working tree")
