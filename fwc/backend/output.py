"""From a checked policy to files on disk: build the files, then swap them in.

Layout (docs/contracts.md): DIR/<cluster>/MANIFEST and DIR/<cluster>/<member>/<file>.
The output directory is replaced as a whole: a staging copy next to it receives
the new clusters, and only when all of it was written is it exchanged with the
old one, so a failure (of the writing or of the compile) leaves every file under
DIR as it was.

`compile_policy` builds every file in memory (for the commands that compare
them); `fwc compile` passes `stream_policy` to `write_output` instead, which
renders each file while the staging copy is written and keeps only its MANIFEST
entry: the output of a large policy (about 300 MB at 20,000 rules on four
members) is never held at once.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import fcntl
import os
import re
import shutil
import stat
from collections.abc import Callable, Iterable, Iterator, Sequence, Set
from pathlib import Path
from typing import Protocol

from fwc.backend.arrange import Splits
from fwc.backend.files import MODE_FILE
from fwc.backend.lower import LowerOptions, forget_lowered, options_for
from fwc.backend.manifest import NAME as MANIFEST
from fwc.backend.manifest import Entry, Manifest, ManifestError
from fwc.backend.render.context import (
    SHARED_RAW_BUDGET,
    MemberBuild,
    SharedTexts,
)
from fwc.backend.render.registry import Chunks, render_member
from fwc.diagnostics import SILENT, Reporter
from fwc.model import Cluster, Member, Policy
from fwc.model.records import dataclass
from fwc.model.vocabulary import Backend


class OutputError(Exception):
    """The output directory cannot be written as asked; the message says why."""

    code = "FWC510"


class ForeignContent(OutputError):
    """The output directory holds files fwc did not write (and --force was not given)."""

    code = "FWC511"


@dataclass(frozen=True, slots=True)
class OutputFile:
    path: str  # relative to the cluster directory: <member>/<name>, or MANIFEST
    content: bytes  # empty when `chunks` carries it
    mode: int
    # A large file's bytes in pieces as they are rendered, read once by `write_file`
    # (`stream_policy(chunked=True)`, as `fwc compile` writes); None: `content` is all.
    chunks: Chunks | None = None


@dataclass(frozen=True, slots=True)
class ClusterOutput:
    name: str
    files: tuple[OutputFile, ...]

    def members(self) -> dict[str, list[str]]:
        return members_of(f.path for f in self.files)


def policy_name(policy: Policy) -> str:
    """The root policy file as its MANIFEST's `policy` line names it."""
    return options_for(policy).source_name(policy.root)


def member_files(cluster: Cluster, member: Member, options: LowerOptions,
                 redact: bool, backend: Backend | None = None,
                 texts: SharedTexts | None = None, chunked: bool = False,
                 splits: dict[str, Splits] | None = None) -> Iterator[OutputFile]:
    """The member's generated files, as the table of generated files (fwc.backend.files)
    says, one at a time (each is let go before the next is rendered).

    BACKEND: the packet filter to write for (None: the cluster's `backend`). TEXTS: what
    the cluster's previous member rendered (see SharedTexts; None: nothing). CHUNKED:
    large files come as `OutputFile.chunks`, each to be read before the next file.
    SPLITS, when given, gets the member's protocol splits (MemberBuild.splits) once its
    files are made.
    """
    build = MemberBuild(cluster, member, options, redact, backend=backend,
                        texts=SharedTexts(keep=False) if texts is None else texts)
    for r in render_member(build, chunked=chunked):
        f = OutputFile(f"{member.name}/{r.file.name}", r.content, r.mode, r.chunks)
        del r
        yield f
        # A loop variable stays bound until the next value is made: without this, the
        # file just written (150 MB at 100,000 rules) lived while the next was rendered.
        del f
    if splits is not None:
        splits[member.name] = build.splits


def manifest_sources(policy: Policy) -> list[tuple[str, str]]:
    """(name, sha256) of every file POLICY read, as its MANIFEST lists them."""
    options = options_for(policy)
    return [(options.source_name(s.path), s.sha256) for s in policy.sources]


def _manifest(policy: Policy, cluster: Cluster, entries: Iterable[Entry],
              backend: Backend) -> bytes:
    return Manifest.of_entries(cluster.name, policy_name(policy), manifest_sources(policy),
                               entries, backend).render()


class ClusterStream:
    """One cluster's files, built member by member while `write_output` writes them.

    Each file is yielded once and only its MANIFEST entry is kept, so what is alive
    at a time is one member's build (its rulesets and the file being written).
    `members()` answers like ClusterOutput's once the files have been written.
    """

    def __init__(self, policy: Policy, cluster: Cluster, options: LowerOptions, redact: bool,
                 progress: Reporter, first: int, total: int,
                 backend: Backend | None = None, chunked: bool = False,
                 spill_dir: str | None = None) -> None:
        self.name = cluster.name
        self._policy = policy
        self._cluster = cluster
        self._options = options
        self._redact = redact
        self._progress = progress
        self._first = first  # members of the clusters before this one, for the progress
        self._total = total
        self._written: list[str] = []
        self._backend = backend
        self._chunked = chunked
        self._spill_dir = spill_dir
        # per member, once its files are written: the iptables arrangement's protocol splits
        self.splits: dict[str, Splits] = {}

    def files(self) -> Iterator[OutputFile]:
        cluster = self._cluster
        entries: list[Entry] = []
        # Chains equal to the previous member's are not rendered again: one per cluster
        # and compile, bounded (fwc.backend.render.context.SharedTexts).
        count = len(cluster.members)
        texts = SharedTexts(keep=count > 1, raw_budget=SHARED_RAW_BUDGET,
                            spill_dir=self._spill_dir)
        for index, member in enumerate(cluster.members):
            done = self._first + index
            self._progress.phase(f"compiling {cluster.name}/{member.name}", done / self._total)
            for f in member_files(cluster, member, self._options, self._redact,
                                  self._backend, texts, self._chunked, self.splits):
                if f.chunks is None:
                    entries.append(Entry.of(f.path, f.content))
                self._written.append(f.path)
                yield f
                if f.chunks is not None:  # hashed while it was written
                    entries.append(Entry.of_digest(f.path, f.chunks.sha256()))
                del f  # written: not kept while the next file is rendered
            forget_lowered(cluster, member, self._options)
            texts.next_member(last=index + 2 >= count)
        # What is left of the cluster is its MANIFEST (and, after the last cluster,
        # write_output's swap).
        self._progress.phase("writing", (self._first + len(cluster.members)) / self._total)
        self._written.append(MANIFEST)
        yield OutputFile(MANIFEST, _manifest(self._policy, cluster, entries,
                                             self._backend or cluster.backend), MODE_FILE)

    def members(self) -> dict[str, list[str]]:
        return members_of(self._written)


def stream_policy(policy: Policy, redact: bool = False, progress: Reporter = SILENT,
                  backend: Backend | None = None, chunked: bool = False,
                  spill_dir: str | None = None) -> list[ClusterStream]:
    """Every cluster, to be built while `write_output` writes it (nothing is built yet).

    BACKEND (`fwc compile --backend`) overrides every cluster's `backend`. CHUNKED: the
    large files (iptables rules) are written as they are rendered, never whole in memory
    (`OutputFile.chunks`: only `write_output` reads those, and
    `fwc.backend.record.RecordedStream` records their digests as they pass).
    SPILL_DIR: where chain texts kept for the next member go when they outgrow memory
    (fwc.backend.render.context.SharedTexts; None: the temporary directory).
    """
    options = options_for(policy)
    total = sum(len(cluster.members) for cluster in policy.clusters) or 1
    out: list[ClusterStream] = []
    first = 0
    for cluster in policy.clusters:
        out.append(ClusterStream(policy, cluster, options, redact, progress, first, total,
                                 backend, chunked, spill_dir))
        first += len(cluster.members)
    return out


def compile_policy(policy: Policy, redact: bool = False,
                   progress: Reporter = SILENT,
                   backend: Backend | None = None) -> list[ClusterOutput]:
    """Every file of every cluster, in memory. Pure: no file system access.

    BACKEND (`fwc compile --backend`) overrides every cluster's `backend`.
    """
    return [ClusterOutput(stream.name, tuple(stream.files()))
            for stream in stream_policy(policy, redact, progress, backend)]


class FileStream(Protocol):
    """A cluster whose files are produced while `write_output` writes them."""

    name: str

    def files(self) -> Iterator[OutputFile]: ...

    def members(self) -> dict[str, list[str]]: ...


def members_of(paths: Iterable[str]) -> dict[str, list[str]]:
    """The file names of each member, from a cluster's paths (<member>/<name>, MANIFEST)."""
    out: dict[str, list[str]] = {}
    for path in paths:
        member, _, name = path.partition("/")
        if name:
            out.setdefault(member, []).append(name)
    return out


# -- writing -----------------------------------------------------------------------------

def manifest_owner(cluster_dir: Path) -> str | None:
    """The root policy named by a cluster directory's MANIFEST (None: not fwc's)."""
    try:
        return Manifest.read(cluster_dir).policy
    except ManifestError:
        return None


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two directories (renameat2 RENAME_EXCHANGE); False if unsupported."""
    libc_name = ctypes.util.find_library("c")
    if libc_name is None:
        return False
    libc = ctypes.CDLL(libc_name, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    result = renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange)
    return result == 0


# The mode of every directory fwc creates, less the umask: write access for group or
# others would let them swap a generated file (none of which gives it) before `fwc
# install` reads it, and under umask 000 (some CI runners) the next compile refused the
# directory it had made itself (FWC510).
MODE_DIRECTORY = 0o755


def make_directories(path: Path) -> None:
    """PATH and every missing directory above it, each created MODE_DIRECTORY (less the
    umask): `Path.mkdir(parents=True)` gives the parents the umask's 0777. A file on the
    way fails the next step (ENOTDIR), as with mkdir -p."""
    missing: list[Path] = []
    while not os.path.isdir(path) and path.parent != path:
        missing.append(path)
        path = path.parent
    for directory in reversed(missing):
        with contextlib.suppress(FileExistsError):  # made meanwhile, or not a directory
            os.mkdir(directory, MODE_DIRECTORY)


def _write_cluster(directory: Path, cluster: ClusterOutput | FileStream) -> None:
    os.mkdir(directory, MODE_DIRECTORY)
    for f in cluster.files if isinstance(cluster, ClusterOutput) else cluster.files():
        write_file(directory, f)
        del f  # a stream's file is let go before the next one is rendered


def write_file(directory: Path, f: OutputFile) -> None:
    path = directory / f.path
    make_directories(path.parent)
    # Create with the final mode so a secret is never readable, not even briefly.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, f.mode)
    with os.fdopen(fd, "wb") as stream:
        if f.chunks is None:
            stream.write(f.content)
        else:
            for piece in f.chunks:
                stream.write(piece)
    os.chmod(path, f.mode)  # the umask may have removed bits


def write_output(output_dir: Path, policy_name: str,
                 clusters: Sequence[ClusterOutput | FileStream],
                 force: bool = False,
                 before_swap: Callable[[], None] | None = None,
                 after_cluster: Callable[[str, Path], None] | None = None,
                 after_swap: Callable[[Path], None] | None = None) -> list[str]:
    """Replace this policy's clusters under output_dir; returns the removed cluster names.

    A ClusterStream is built while it is written: an exception of the compile then
    comes out of here, with nothing under output_dir changed.

    Clusters whose MANIFEST names another policy are kept; a cluster of this
    policy that another policy's MANIFEST already claims is an error. Content
    fwc did not write is refused (ForeignContent) unless FORCE.

    BEFORE_SWAP runs once the staging copy is complete, before it replaces anything
    (`fwc compile` waits there for the checks of its worker process): an exception
    from it comes out of here with nothing under output_dir changed. AFTER_CLUSTER gets
    each cluster's name and staged directory once its files are written; AFTER_SWAP the
    output directory once the new clusters are in, still under the lock (`fwc compile`
    records what it wrote: fwc.backend.record).
    """
    with locked_output(output_dir) as (output_dir, parent):
        removed = _write_locked(output_dir, parent, policy_name, clusters, force, before_swap,
                                after_cluster)
        if after_swap is not None:
            after_swap(output_dir)
        return removed


@contextlib.contextmanager
def locked_output(output_dir: Path) -> Iterator[tuple[Path, Path]]:
    """(the output directory, its parent), with the parent locked against other compiles
    while inside and the leftovers of killed compiles removed."""
    output_dir = _follow_link(_absolute(Path(output_dir)))
    parent = output_dir.parent
    try:
        make_directories(parent)
        lock = os.open(parent, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as exc:
        raise OutputError(f"cannot use '{parent}': {exc.strerror or exc}") from exc
    try:
        # Two compiles into one output directory would each swap in their own copy
        # and lose the other's clusters: serialise them on the parent directory.
        fcntl.flock(lock, fcntl.LOCK_EX)
        _remove_leftovers(parent, output_dir.name)
        yield output_dir, parent
    finally:
        os.close(lock)


def _absolute(output_dir: Path) -> Path:
    """OUTPUT_DIR from the root, its parent as the kernel resolves it (`link/../out` is
    next to the link's target's parent, not here). The staging copy goes next to the
    output directory: for `-o .` or `-o ..` that is beside it, never inside it. A link
    on the way to nothing is refused, as `mkdir -p` refuses it (never the directories it
    points to created)."""
    existing = output_dir.parent
    while not os.path.lexists(existing) and existing != existing.parent:
        existing = existing.parent
    if os.path.islink(existing) and not os.path.exists(existing):
        raise OutputError(f"'{existing}' is a symbolic link to '{os.readlink(existing)}', "
                          "which does not exist: create that directory, or remove the link")
    if output_dir.name in ("", ".."):
        return Path(os.path.realpath(output_dir))
    return Path(os.path.realpath(output_dir.parent)) / output_dir.name


def creation_context() -> tuple[int, int, int]:
    """What decides the modes, owner and group of the directories and files a write
    creates, besides the files' own modes: (umask, euid, egid)."""
    return _umask(), os.geteuid(), os.getegid()


def _follow_link(output_dir: Path) -> Path:
    """An output path that is a symbolic link means its target directory.

    Swapping the staging copy with the link itself would replace the link by a
    directory (and leave the old target unchanged), so the link is resolved
    once, here, and everything below works on the real directory.
    """
    if not output_dir.is_symlink():
        return output_dir
    target = Path(os.path.realpath(output_dir))
    if not target.is_dir():
        raise OutputError(f"'{output_dir}' is a symbolic link to '{target}', which is not an "
                          "existing directory: fwc writes into the directory a link points "
                          "to; create that directory or give -o a directory")
    return target


def _is_leftover(name: str, output_name: str) -> bool:
    for kind in ("staging", "old"):
        prefix = f".{output_name}.fwc-{kind}-"
        if name.startswith(prefix) and name[len(prefix):].isdigit():
            return True
    return False


def _remove_leftovers(parent: Path, output_name: str) -> None:
    """Staging and old copies a killed compile left next to the output directory.

    Called under the parent's lock, which every compile into this output
    directory holds while its own copies exist: any copy found now belongs to a
    process that died (its PID may already be reused, so the PID is not asked).
    """
    try:
        entries = sorted(os.scandir(parent), key=lambda e: e.name)
    except OSError:
        return
    for entry in entries:
        if not _is_leftover(entry.name, output_name):
            continue
        with contextlib.suppress(OSError):
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)


def foreign_content(output_dir: Path) -> list[str]:
    """Paths under OUTPUT_DIR that fwc did not write (relative, sorted).

    A directory with an fwc MANIFEST is fwc's, apart from files its MANIFEST
    does not list; empty directories hold nothing to lose.
    """
    out: list[str] = []
    for entry in sorted(output_dir.iterdir()):
        if entry.is_symlink() or not entry.is_dir():
            out.append(entry.name)
            continue
        try:
            listed = {e.path for e in Manifest.read(entry).files} | {MANIFEST}
        except ManifestError:
            listed = set()
        for path in sorted(entry.rglob("*")):
            if path.is_symlink() or not path.is_dir():
                rel = str(path.relative_to(entry))
                if rel not in listed:
                    out.append(f"{entry.name}/{rel}")
    return out


def survey(output_dir: Path, policy_name: str, new_names: Set[str], force: bool) -> list[str]:
    """The clusters of POLICY_NAME under OUTPUT_DIR that writing NEW_NAMES removes; an
    OutputError (ForeignContent) when the write must be refused."""
    removed: list[str] = []
    if output_dir.is_symlink() or (output_dir.exists() and not output_dir.is_dir()):
        raise OutputError(f"'{output_dir}' exists and is not a directory")
    for directory in (output_dir.parent, output_dir):
        _refuse_shared(directory)
    if output_dir.exists():
        _refuse_mounts(output_dir)
        for entry in sorted(output_dir.iterdir()):
            if not entry.is_dir() or entry.is_symlink():
                continue
            owner = manifest_owner(entry)
            if entry.name in new_names and owner is not None and owner != policy_name:
                raise OutputError(f"'{entry}' belongs to policy '{owner}' (its MANIFEST says so),"
                                  f" not to '{policy_name}'; rename one of the clusters or "
                                  "remove that directory")
            if entry.name in new_names and owner is None and any(entry.iterdir()):
                raise OutputError(f"'{entry}' exists but was not written by fwc (no MANIFEST); "
                                  "remove it or choose another output directory")
            if entry.name not in new_names and owner == policy_name:
                removed.append(entry.name)
        foreign = foreign_content(output_dir)
        if foreign and not force:
            shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more"
                                             if len(foreign) > 5 else "")
            raise ForeignContent(f"'{output_dir}' holds files fwc did not write ({shown}); "
                                 "choose another output directory, remove them, or give "
                                 "--force to write anyway (they are kept, apart from those at "
                                 "or inside the cluster directories fwc replaces)")
    return removed


def _refuse_shared(directory: Path) -> None:
    """OutputError when any user may rename or replace what is in DIRECTORY (writable
    by others, without the sticky bit /tmp has): between fwc's steps they could swap
    the staging copy or a directory in it for a link, and fwc would write elsewhere."""
    try:
        mode = os.lstat(directory).st_mode
    except FileNotFoundError:
        return
    if mode & stat.S_IWOTH and not mode & stat.S_ISVTX:
        raise OutputError(f"'{directory}' is writable by every user (mode "
                          f"{stat.S_IMODE(mode):04o}, no sticky bit): another user could "
                          "redirect the files fwc writes there; remove that permission "
                          "(chmod o-w) or choose another output directory")


def _refuse_mounts(output_dir: Path) -> None:
    """OutputError when a file system is mounted inside OUTPUT_DIR: the directory is
    replaced whole and the previous one deleted, with what is mounted in it (a bind
    mount of a directory of the same file system has the same device number: the
    kernel's list of mounts says it)."""
    top = os.path.realpath(output_dir)
    for point in _mount_points():
        if point.startswith(top + "/"):
            raise OutputError(f"'{point}' is a mount point inside the output directory: "
                              "fwc replaces that directory whole and would delete what is "
                              "mounted there; unmount it or choose another output "
                              "directory")


def _mount_points() -> list[str]:
    """Where something is mounted in this process's mount namespace (/proc/self/mountinfo,
    the fifth field, with its octal escapes); empty where it cannot be read."""
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as info:
            fields = [line.split(" ") for line in info]
    except OSError:
        return []
    return [re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), f[4])
            for f in fields if len(f) > 4]


def _write_locked(output_dir: Path, parent: Path, policy_name: str,
                  clusters: Sequence[ClusterOutput | FileStream], force: bool,
                  before_swap: Callable[[], None] | None,
                  after_cluster: Callable[[str, Path], None] | None) -> list[str]:
    new_names = {c.name for c in clusters}
    removed = survey(output_dir, policy_name, new_names, force)
    staging = parent / f".{output_dir.name}.fwc-staging-{os.getpid()}"
    old = parent / f".{output_dir.name}.fwc-old-{os.getpid()}"
    try:
        if output_dir.exists():
            # What is at or inside the clusters written or removed now is not copied:
            # it would be deleted from the copy right away (a recompile of 100,000 rules
            # copied its previous 644 MB first). Everything else is kept as it is.
            _copy_tree(output_dir, staging, leave_out=new_names | set(removed))
            final_mode = stat.S_IMODE(output_dir.stat().st_mode)
        else:
            os.mkdir(staging, 0o700)
            final_mode = MODE_DIRECTORY & ~_umask()
        for cluster in clusters:
            _write_cluster(staging / cluster.name, cluster)
            if after_cluster is not None:
                after_cluster(cluster.name, staging / cluster.name)
        os.chmod(staging, final_mode)
        if before_swap is not None:
            before_swap()
        if not output_dir.exists():
            staging.rename(output_dir)
        elif _exchange(staging, output_dir):
            shutil.rmtree(staging)  # now holds the previous tree
        else:
            output_dir.rename(old)
            try:
                staging.rename(output_dir)
            except OSError:
                old.rename(output_dir)
                raise
            shutil.rmtree(old)
    except OSError as exc:
        raise OutputError(f"cannot write '{output_dir}': {exc.strerror or exc}") from exc
    finally:
        if old.is_dir() and not old.is_symlink() and not output_dir.exists():
            # interrupted between the two renames: the previous tree is the only copy
            with contextlib.suppress(OSError):
                old.rename(output_dir)
        for leftover in (staging, old):
            if leftover.is_symlink():
                leftover.unlink()
            elif leftover.exists():
                shutil.rmtree(leftover, ignore_errors=True)
    return removed


def _umask() -> int:
    """The process's umask, read where Linux shows it (setting it to read it back would
    change it for a moment for every thread)."""
    with contextlib.suppress(OSError, ValueError), \
            open("/proc/self/status", encoding="ascii", errors="replace") as status:
        for line in status:
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


def _copy_tree(source: Path, target: Path, leave_out: Set[str] = frozenset()) -> None:
    """shutil.copytree(symlinks=True) without its moment of exposure, less the entries
    of SOURCE itself named in LEAVE_OUT.

    copytree creates each file with the default mode and sets the source's mode
    only after the data is in, and creates directories readable by others: a
    0600 keepalived.conf was briefly world-readable. Here every directory is
    0700 until its content is complete (TARGET itself until the caller swaps it
    in), and every file is created with its final mode.

    Each entry is opened through its directory's descriptor without following a link,
    and its type and mode are read from the open descriptor: an entry replaced by a
    link after it was listed is an error, never followed (it would copy the file the
    link names, with the link's mode 0777).
    """
    fd = os.open(source, _DIRECTORY_FLAGS)
    try:
        _copy_directory(fd, str(source), target, leave_out)
    finally:
        os.close(fd)


_DIRECTORY_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


def _copy_directory(source_fd: int, shown: str, target: Path, leave_out: Set[str]) -> None:
    os.mkdir(target, 0o700)
    for name in sorted(os.listdir(source_fd)):
        if name in leave_out:
            continue
        destination = target / name
        kind = os.stat(name, dir_fd=source_fd, follow_symlinks=False).st_mode
        if stat.S_ISLNK(kind):
            os.symlink(os.readlink(name, dir_fd=source_fd), destination)
            continue
        if not (stat.S_ISDIR(kind) or stat.S_ISREG(kind)):
            raise OSError(f"'{shown}/{name}' is not a regular file, directory or link")
        fd = os.open(name, _DIRECTORY_FLAGS if stat.S_ISDIR(kind) else _FILE_FLAGS,
                     dir_fd=source_fd)
        try:
            info = os.fstat(fd)
            mode = stat.S_IMODE(info.st_mode)
            if stat.S_ISDIR(info.st_mode):
                _copy_directory(fd, f"{shown}/{name}", destination, frozenset())
                os.chmod(destination, mode)
                continue
            if not stat.S_ISREG(info.st_mode):
                raise OSError(f"'{shown}/{name}' changed while it was copied")
            out = os.open(destination, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW,
                          mode)
            with os.fdopen(out, "wb") as stream, os.fdopen(os.dup(fd), "rb") as source:
                shutil.copyfileobj(source, stream)
                os.fchmod(stream.fileno(), mode)  # the umask may have removed bits
        finally:
            os.close(fd)
