"""What `fwc compile` records of the files it wrote (fwc.backend.record), and when the
record answers: unchanged content whose output directory is still exactly what that
compile left writes nothing; any other directory ends exactly as a --no-cache compile
leaves it (exit code, report, every path with its mode, owner, group, links and
extended attributes). Each test has its own private cache directory (`cache_home`).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import EDGE, cannot_run, compile_to, file_tree, with_core_cluster

import fwc.backend.record
import fwc.cache
import fwc.commands.compile
from fwc.backend.record import OutputRecord, unchanged_output
from fwc.cli import main


def _policy(tmp_path: Path, clusters: int = 1) -> Path:
    work = tmp_path / "repo"
    work.mkdir(exist_ok=True)
    (work / ".git").mkdir(exist_ok=True)  # the repository the policy lives in
    text = EDGE.read_text(encoding="utf-8")
    if clusters == 2:  # a second cluster, as tests/test_compile_output.py makes one
        text = with_core_cluster(text)
    path = work / "edge.fw"
    path.write_text(text, encoding="utf-8")
    return path


def _plain_tree(policy: Path, where: Path) -> dict[str, tuple[bytes, int]]:
    where.mkdir()
    assert compile_to(policy, where / "plain", "--no-cache") == 0
    return file_tree(where / "plain")


def _inodes(directory: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(directory)): (p.stat().st_ino, p.stat().st_mtime_ns)
            for p in sorted(directory.rglob("*"))}


def _no_build(*args, **kwargs):
    raise AssertionError("the files were built again")


@pytest.fixture
def umask_022():
    """The umask these tests reason with, whatever the caller's."""
    before = os.umask(0o022)
    yield
    os.umask(before)


@pytest.mark.parametrize("where", ["one cluster", "two clusters", "setgid parent"])
def test_an_unchanged_compile_writes_nothing(cache_home, tmp_path, capsys, monkeypatch,
                                             umask_022, where):
    policy = _policy(tmp_path, clusters=2 if where == "two clusters" else 1)
    if where == "setgid parent":  # new directories inherit the group and the S_ISGID bit
        (tmp_path / "shared").mkdir()
        (tmp_path / "shared").chmod(0o2775)
        out = tmp_path / "shared" / "out"
    else:
        out = tmp_path / "out"
    assert compile_to(policy, out) == 0
    first_print = capsys.readouterr().out
    before = _inodes(out)
    with monkeypatch.context() as patch:
        patch.setattr(fwc.commands.compile, "stream_policy", _no_build)
        assert compile_to(policy, out) == 0
    assert capsys.readouterr().out == first_print  # the same lines, in the same order
    assert _inodes(out) == before  # not a file or directory replaced
    assert file_tree(out) == _plain_tree(policy, tmp_path / "fresh")


def _flip_a_byte(out: Path) -> None:
    path = out / "edge" / "fw1" / "iptables.rules"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x20  # same size, other bytes
    path.write_bytes(bytes(data))


def _replace_by_a_link(out: Path) -> None:
    path = out / "edge" / "fw2" / "sysctl.conf"
    copy = out.parent / f"{out.name}-sysctl.copy"
    copy.write_bytes(path.read_bytes())
    copy.chmod(path.stat().st_mode)
    path.unlink()
    path.symlink_to(copy)


def _link_elsewhere(out: Path) -> None:
    # a snapshot tool's hard link: writing through it would change the compiled file
    os.link(out / "edge" / "fw1" / "iptables.rules", out.parent / f"{out.name}-snapshot")


def _replace_by_a_copy(out: Path) -> None:
    # the same bytes and mode, another file (an editor's save, a restore from a backup)
    shutil.copy2(out / "edge" / "MANIFEST", out / "MANIFEST.tmp")
    os.replace(out / "MANIFEST.tmp", out / "edge" / "MANIFEST")


def _leave_a_stale_cluster(out: Path) -> None:
    # what a compile of this policy left when it still had a cluster called "old"
    (out / "old").mkdir()
    (out / "old" / "MANIFEST").write_bytes((out / "edge" / "MANIFEST").read_bytes())


def _as_root(change: Callable[[Path], None]) -> Callable[[Path], None]:
    def changed(out: Path) -> None:
        if os.geteuid() != 0:
            cannot_run("needs root to give a file to another owner or group")
        change(out)
    return changed


def _set_xattr(path: Path) -> None:
    """An extended attribute on PATH: a user one, else (tmpfs before Linux 6.6 has no
    user attributes) a trusted one, which root may set on every Linux file system."""
    problems = []
    for name in ("user.fwc-test", "trusted.fwc-test"):
        try:
            os.setxattr(path, name, b"kept?", follow_symlinks=False)
            return
        except OSError as exc:
            problems.append(f"{name}: {exc}")
    cannot_run(f"no extended attribute can be set here ({'; '.join(problems)})")


def _set_an_attribute(out: Path, where: Path | None = None) -> None:
    _set_xattr(where or out / "edge" / "fw1" / "sysctl.conf")


def _setgid_parent(out: Path) -> None:
    # new directories and files take the parent's group from now on
    os.chown(out.parent, -1, 65534)
    out.parent.chmod(0o2755)


# change -> (what it does to a compiled directory, the compile's extra arguments)
CHANGES: dict[str, tuple[Callable[[Path], None], tuple[str, ...]]] = {
    "a byte": (_flip_a_byte, ()),
    "a mode": (lambda out: (out / "edge" / "fw1" / "sysctl.conf").chmod(0o600), ()),
    "a file added": (lambda out: (out / "edge" / "fw1" / "extra.conf").write_text("x\n"), ()),
    "a file added, --force": (
        lambda out: (out / "edge" / "fw1" / "extra.conf").write_text("x\n"), ("--force",)),
    "a file removed": (lambda out: (out / "edge" / "fw2" / "keepalived.conf").unlink(), ()),
    "the manifest removed": (lambda out: (out / "edge" / "MANIFEST").unlink(), ()),
    "an empty directory added": (lambda out: (out / "edge" / "fw1" / "spare").mkdir(), ()),
    "a directory's mode": (lambda out: (out / "edge" / "fw1").chmod(0o700), ()),
    "a file replaced by a link": (_replace_by_a_link, ()),
    "a file linked elsewhere": (_link_elsewhere, ()),
    "a file replaced by a copy": (_replace_by_a_copy, ()),
    "a member removed": (lambda out: shutil.rmtree(out / "edge" / "fw2"), ()),
    "a cluster to remove": (_leave_a_stale_cluster, ()),
    "an owner": (_as_root(lambda out: os.chown(out / "edge" / "fw1" / "sysctl.conf",
                                               65534, -1)), ()),
    "a group": (_as_root(lambda out: os.chown(out / "edge" / "fw2", -1, 65534)), ()),
    "an extended attribute": (_set_an_attribute, ()),
    "the output directory's owner": (_as_root(lambda out: os.chown(out, 65534, 65534)), ()),
    "the parent's group, setgid": (_as_root(_setgid_parent), ()),
    "an attribute of the output directory": (
        lambda out: _set_an_attribute(out, out), ()),
}
REFUSED = {"a file added", "the manifest removed"}  # content fwc did not (knowingly) write


def _paths(directory: Path) -> list[tuple[object, ...]]:
    """DIRECTORY and everything under it (directories and links too): mode, links,
    owner, group, extended attributes."""
    out: list[tuple[object, ...]] = []
    for path in [directory, *sorted(directory.rglob("*"))]:
        info = path.lstat()
        names = [] if path.is_symlink() else sorted(os.listxattr(path))
        out.append((str(path.relative_to(directory)), info.st_mode,
                    0 if path.is_dir() else info.st_nlink,
                    info.st_uid, info.st_gid, names))
    return out


@pytest.mark.parametrize("change", list(CHANGES))
def test_an_output_changed_since_gets_what_a_compile_gives(cache_home, tmp_path, capsys,
                                                           umask_022, change):
    """The same change to two copies of a compiled directory: compiled again with the
    cache and with --no-cache, they end the same."""
    policy = _policy(tmp_path)
    cached, plain = tmp_path / "cached", tmp_path / "plain"
    assert compile_to(policy, cached) == 0
    shutil.copytree(cached, plain, symlinks=True)
    make_change, extra = CHANGES[change]
    results = []
    for out, more in ((cached, ()), (plain, ("--no-cache",))):
        make_change(out)
        capsys.readouterr()
        status = compile_to(policy, out, *extra, *more)
        printed = capsys.readouterr()
        results.append((status, printed.out.replace(str(out), "OUT"),
                        printed.err.replace(str(out), "OUT"), file_tree(out), _paths(out)))
    assert results[0] == results[1]
    status, printed, _, tree, paths = results[0]
    if change in REFUSED:
        assert status == 1
        return
    assert status == 0 and tree == _plain_tree(policy, tmp_path / "fresh")
    assert all(nlink == 1 for _, mode, nlink, *_ in paths if mode & 0o100000)
    if change == "a cluster to remove":
        assert "OUT/old: removed" in printed and not (cached / "old").exists()


def test_another_umask_gets_what_a_compile_gives(cache_home, tmp_path, capsys):
    """The umask (like the user and group) decides the new directories' modes: a
    compile under another one is not answered by a record made under the first."""
    policy = _policy(tmp_path)
    cached, plain = tmp_path / "cached", tmp_path / "plain"
    before = os.umask(0o022)
    try:
        assert compile_to(policy, cached) == 0
        shutil.copytree(cached, plain, symlinks=True)
        os.umask(0o077)
        assert compile_to(policy, cached) == 0
        assert compile_to(policy, plain, "--no-cache") == 0
    finally:
        os.umask(before)
    assert _paths(cached) == _paths(plain)
    assert (cached / "edge" / "fw1").stat().st_mode & 0o777 == 0o700


def _changing_before(method: str, change: Callable[[Path], None]):
    """RecordedStream.METHOD, after CHANGE to the directory it notes (another process
    at work in the staging copy or the output directory at that moment)."""
    original = getattr(fwc.backend.record.RecordedStream, method)

    def noted(self, directory: Path) -> None:
        where = directory if method == "note_written" else directory / self.name
        change(where)
        original(self, directory)
    return noted


@pytest.mark.parametrize("method, change", [
    ("note_swapped", lambda cluster: (cluster / "fw1" / "spare").mkdir()),
    ("note_swapped", lambda cluster: (cluster / "fw2").chmod(0o700)),
    ("note_swapped", lambda cluster: _set_xattr(cluster / "MANIFEST")),
    ("note_written", lambda cluster: os.link(cluster / "fw1" / "sysctl.conf",
                                             cluster.parent.parent / "snapshot")),
    ("note_written", lambda cluster: (cluster / "fw1" / "sysctl.conf").chmod(0o600)),
], ids=["a directory added after the swap", "a mode changed after the swap",
        "an attribute set after the swap", "a file linked in the staging copy",
        "a mode changed in the staging copy"])
def test_a_directory_changed_while_it_is_noted_is_not_recorded(
        cache_home, tmp_path, monkeypatch, umask_022, method, change):
    policy = _policy(tmp_path)
    out = tmp_path / "out"
    with monkeypatch.context() as patch:
        patch.setattr(fwc.backend.record.RecordedStream, method,
                      _changing_before(method, change))
        assert compile_to(policy, out) == 0
    before = _inodes(out)
    assert compile_to(policy, out) == 0  # no record answered: compiled again
    assert _inodes(out) != before
    assert _paths(out) == _paths_of_plain(policy, tmp_path / "fresh")
    again = _inodes(out)
    assert compile_to(policy, out) == 0  # and that compile's record answers
    assert _inodes(out) == again


def _paths_of_plain(policy: Path, where: Path) -> list[tuple[object, ...]]:
    _plain_tree(policy, where)
    return _paths(where / "plain")


def test_an_output_path_through_a_link_and_up_is_where_the_kernel_says(cache_home,
                                                                        tmp_path,
                                                                        monkeypatch):
    policy = _policy(tmp_path)
    (tmp_path / "real" / "a" / "b").mkdir(parents=True)
    (tmp_path / "link").symlink_to(tmp_path / "real" / "a" / "b")
    monkeypatch.chdir(tmp_path)
    assert main(["compile", str(policy), "-o", "link/../out3"]) == 0
    assert (tmp_path / "real" / "a" / "out3" / "edge" / "MANIFEST").is_file()
    assert not (tmp_path / "out3").exists()


def test_a_link_to_nothing_on_the_output_path_is_refused(cache_home, tmp_path, capsys):
    policy = _policy(tmp_path)
    (tmp_path / "dangling").symlink_to(tmp_path / "missing" / "t")
    assert compile_to(policy, tmp_path / "dangling" / "out") == 1
    assert "is a symbolic link to" in capsys.readouterr().err
    assert not (tmp_path / "missing").exists()  # nothing created where it points


def test_a_removed_current_directory_is_said_in_one_line(tmp_path, monkeypatch, capsys):
    """After `fwc compile -o .` the shell is in the swapped-out copy, which is gone."""
    gone = tmp_path / "gone"
    gone.mkdir()
    monkeypatch.chdir(gone)
    gone.rmdir()
    assert main(["check", str(EDGE)]) == 2
    assert capsys.readouterr().err == ("fwc: the current directory no longer exists (it was "
                                       "removed or replaced): cd into it again\n")


def test_an_unchanged_compile_refuses_what_a_compile_refuses(cache_home, tmp_path, capsys):
    policy = _policy(tmp_path)
    out = tmp_path / "out"
    assert compile_to(policy, out) == 0
    (out / "notes.txt").write_text("mine\n", encoding="utf-8")
    capsys.readouterr()
    assert compile_to(policy, out) == 1
    cached = capsys.readouterr()
    assert compile_to(policy, out, "--no-cache") == 1
    assert capsys.readouterr() == cached
    assert "FWC511" in cached.out + cached.err
    assert compile_to(policy, out, "--force") == 0  # kept, and the rest is unchanged
    assert (out / "notes.txt").read_text(encoding="utf-8") == "mine\n"


def test_an_error_while_comparing_means_a_compile(cache_home, tmp_path, monkeypatch):
    policy = _policy(tmp_path)
    out = tmp_path / "out"
    assert compile_to(policy, out) == 0
    before = _inodes(out)

    def broken(*args, **kwargs):
        raise RecursionError("a directory too deep, say")

    monkeypatch.setattr(fwc.backend.record, "tree_of", broken)
    assert compile_to(policy, out) == 0
    assert _inodes(out) != before  # compiled and swapped in again
    assert file_tree(out) == _plain_tree(policy, tmp_path / "fresh")
    # that compile could not note its tree: the record of the first compile stays, and
    # no longer answers (the files are others now)
    monkeypatch.undo()
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache_home))
    monkeypatch.delenv("FWC_NO_CACHE", raising=False)
    again = _inodes(out)
    assert compile_to(policy, out) == 0
    assert _inodes(out) != again
    last = _inodes(out)
    assert compile_to(policy, out) == 0  # and this one's record answers
    assert _inodes(out) == last


def test_the_comparison_waits_for_a_compile_in_progress(cache_home, tmp_path):
    """Under the lock `write_output` holds while it swaps: never a half-swapped tree."""
    policy = _policy(tmp_path)
    out = tmp_path / "out"
    assert compile_to(policy, out) == 0
    store = fwc.cache.open_cache(os.environ)
    [entry] = sorted((store.directory).glob("out-*"))
    record = OutputRecord.of_json(store.get_json("out", entry.name[4:]))
    assert record is not None
    answers: list[bool] = []
    lock = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)  # as another compile into `out` would hold it
        comparing = threading.Thread(target=lambda: answers.append(
            unchanged_output(out, record, store.secret_hash)))
        comparing.start()
        comparing.join(0.5)
        assert comparing.is_alive() and answers == []  # waiting
    finally:
        os.close(lock)  # releases the lock
    comparing.join(30)
    assert answers == [True]


def test_a_dot_output_directory_is_its_own_parent_no_more(cache_home, tmp_path, monkeypatch):
    """`-o .` from inside the output directory: the staging copy goes next to it, as
    with its absolute path (it went inside it, and copied itself into itself)."""
    policy = _policy(tmp_path)
    out = tmp_path / "out"
    assert compile_to(policy, out) == 0
    monkeypatch.chdir(out)
    assert main(["compile", str(policy), "-o", ".", "--no-cache"]) == 0
    monkeypatch.chdir(tmp_path)
    assert file_tree(out) == _plain_tree(policy, tmp_path / "fresh")
    assert sorted(p.name for p in tmp_path.iterdir() if ".fwc-" in p.name) == []


def _a_record(files: list[list[object]], tree: list[list[object]],
              name: str = "edge") -> dict[str, object]:
    top = ["d", 0o755, 0, 0, "", 0, 0, 7, 1]
    return {"policy": "edge.fw", "top": top, "parent": [0o755, 0, ""],
            "clusters": [{"name": name, "files": files, "tree": tree}]}


def test_a_record_is_data_that_names_nothing_outside_its_directory():
    digest = hashlib.sha256(b"abc").hexdigest()
    tree = [["", "d", 0o755, 0, 0, "", 0, 0, 40, 5], ["fw1", "d", 0o755, 0, 0, "", 0, 0, 41, 5],
            ["fw1/a.conf", "f", 0o644, 0, 0, "", 1, 3, 42, 5]]
    good = _a_record([["fw1/a.conf", digest]], tree)
    record = OutputRecord.of_json(good)
    assert record is not None and record.as_json() == good
    for path in ("../a", "/etc/passwd", "fw1//a", "fw1/./a", "fw1/a\0", ""):
        bad_tree = [*tree[:2], [path, *tree[2][1:]]]
        assert OutputRecord.of_json(_a_record([[path, digest]], bad_tree)) is None, path
    for name in ("..", "a/b", "", "."):
        assert OutputRecord.of_json(_a_record([["fw1/a.conf", digest]], tree, name)) is None
    odd_nodes = [["fw1/a.conf", "f", float("inf"), 0, 0, "", 1, 3, 42, 5],
                 ["fw1/a.conf", "f", True, 0, 0, "", 1, 3, 42, 5],
                 ["fw1/a.conf", "l", 0o644, 0, 0, "", 1, 3, 42, 5],
                 ["fw1/a.conf", "f", 0o644, 0, 0, None, 1, 3, 42, 5],
                 ["fw1/a.conf", "f", 0o644, 0, 0, "", 1, 3, 42],
                 ["fw1/a.conf", "f", 0o644, 0, 0, "", 1, 3, 42, 5, 6]]
    for node in odd_nodes:
        assert OutputRecord.of_json(_a_record([["fw1/a.conf", digest]],
                                              [*tree[:2], node])) is None, node
    # files and the tree's files must be the same paths
    assert OutputRecord.of_json(_a_record([["fw1/b.conf", digest]], tree)) is None
    twice = dict(good, clusters=good["clusters"] * 2)  # type: ignore[operator]
    assert OutputRecord.of_json(twice) is None
    assert OutputRecord.of_json(dict(good, top=["f", 0o644, 0, 0, "", 1, 3, 7, 1])) is None
    for broken in (None, [], {"policy": "p"}, {"policy": 3, "clusters": []},
                   {"policy": "p", "clusters": [{"name": "c"}]}, dict(good, top=None)):
        assert OutputRecord.of_json(broken) is None
