"""The output directory (issue 10): private staging copies, `-o` through a symbolic link,
content fwc did not write (FWC511, `--force`), leftovers of a killed compile."""

from __future__ import annotations

import os
import stat
import sys

import pytest
from conftest import EDGE as EDGE_FILE
from conftest import EDGE_TEXT as EDGE
from conftest import compile_to, file_tree, leftovers

from fwc.cli import main


class CreationWatch:
    """Every file created under a staging copy, with the copy's mode at that moment.

    An audit hook sees each open() before the file exists (hooks cannot be
    removed, so it goes quiet after the test).
    """

    def __init__(self) -> None:
        self.active = False
        self.seen: list[tuple[str, int]] = []
        sys.addaudithook(self.hook)

    def hook(self, event: str, args: tuple) -> None:
        if not self.active or event != "open":
            return
        path, _, flags = args
        if not isinstance(path, str | os.PathLike) or not isinstance(flags, int) \
                or not flags & os.O_CREAT:
            return
        text = os.fspath(path)
        marker = text.find(".fwc-staging-")
        if marker < 0:
            return
        root = text[:text.index("/", marker)] if "/" in text[marker:] else text
        self.seen.append((text, stat.S_IMODE(os.stat(root).st_mode)))

    def compile(self, policy, out) -> None:  # type: ignore[no-untyped-def]
        """`fwc compile POLICY -o OUT` (it must pass) with `seen` holding its creations."""
        self.seen.clear()
        self.active = True
        try:
            assert compile_to(policy, out) == 0
        finally:
            self.active = False


WATCH = CreationWatch()


def _other_policy(edge):  # type: ignore[no-untyped-def]
    """other.fw next to EDGE: the same policy as cluster `branch`."""
    other = edge.parent / "other.fw"
    other.write_text(EDGE.replace("cluster edge", "cluster branch").replace(
        "policy edge", "policy branch").replace("nat edge", "nat branch").replace(
        "expect edge", "expect branch"), encoding="utf-8")
    return other


def test_staging_copy_is_private_until_it_is_swapped_in(edge, tmp_path):
    out = tmp_path / "out"
    assert compile_to(edge, out) == 0
    os.chmod(out, 0o750)
    before = file_tree(out)
    assert before["edge/fw1/keepalived.conf"][1] == 0o600
    WATCH.compile(edge, out)
    copied = [path for path, _ in WATCH.seen]
    assert any(p.endswith("edge/fw1/keepalived.conf") for p in copied)
    assert [(p, oct(mode)) for p, mode in WATCH.seen if mode & 0o077] == []
    # once swapped in, every mode is the final one again
    assert stat.S_IMODE(out.stat().st_mode) == 0o750
    assert file_tree(out) == before


def test_a_recompile_writes_each_file_once_and_keeps_other_policies_clusters(edge, tmp_path):
    # The staging copy takes the directory's other content only: the clusters this
    # compile replaces are written once, never copied first and then deleted.
    out = tmp_path / "out"
    other = _other_policy(edge)
    assert compile_to(other, out) == 0
    assert compile_to(edge, out) == 0
    branch_before = {k: v for k, v in file_tree(out).items() if k.startswith("branch/")}
    WATCH.compile(edge, out)
    created = [path.split(".fwc-staging-", 1)[1].split("/", 1)[1] for path, _ in WATCH.seen]
    edge_files = sorted(p for p in created if p.startswith("edge/"))
    assert edge_files == sorted(set(edge_files))  # no file of edge made twice
    assert "edge/fw1/iptables.rules" in edge_files
    assert sorted(p for p in created if p.startswith("branch/")) == sorted(branch_before)
    after = file_tree(out)
    assert {k: v for k, v in after.items() if k.startswith("branch/")} == branch_before
    assert leftovers(tmp_path) == []


def test_output_through_a_symbolic_link_writes_into_its_target(edge, tmp_path):
    real = tmp_path / "real" / "compiled"
    real.mkdir(parents=True)
    link = tmp_path / "out"
    link.symlink_to(real)
    for _ in range(2):  # the first compile creates, the second swaps
        assert compile_to(edge, link) == 0
        assert link.is_symlink() and os.readlink(link) == str(real)
        assert (real / "edge" / "fw1" / "iptables.rules").is_file()
        assert leftovers(tmp_path, real.parent) == []


@pytest.mark.parametrize("target", ["missing", "file"])
def test_a_link_to_no_directory_is_refused_and_left_alone(edge, tmp_path, capsys, target):
    pointed = tmp_path / target
    if target == "file":
        pointed.write_text("not a directory\n")
    link = tmp_path / "out"
    link.symlink_to(pointed)
    assert compile_to(edge, link) == 1
    err = capsys.readouterr().err
    assert "error[FWC510]" in err and "is a symbolic link to" in err
    assert "which is not an existing directory" in err
    assert link.is_symlink() and os.readlink(link) == str(pointed)
    assert (pointed.read_text() == "not a directory\n") if target == "file" \
        else not pointed.exists()
    assert leftovers(tmp_path) == []


def test_foreign_files_are_refused_unless_forced(edge, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine\n")
    assert compile_to(edge, out) == 1
    err = capsys.readouterr().err
    assert "error[FWC511]" in err and "notes.txt" in err and "--force" in err
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    assert compile_to(edge, out, "--force") == 0
    assert (out / "notes.txt").read_text() == "mine\n"
    assert (out / "edge" / "MANIFEST").is_file()


def test_a_link_named_like_a_cluster_is_foreign_and_forced_replaced(edge, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (out / "edge").symlink_to(elsewhere)
    assert compile_to(edge, out) == 1
    assert "error[FWC511]" in capsys.readouterr().err
    assert compile_to(edge, out, "--force") == 0
    assert not (out / "edge").is_symlink() and (out / "edge" / "MANIFEST").is_file()
    assert list(elsewhere.iterdir()) == []


def test_a_file_named_like_a_cluster_is_foreign_and_forced_replaced(edge, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "edge").write_text("not fwc's\n")
    (out / "notes.txt").write_text("mine\n")
    assert compile_to(edge, out) == 1
    assert "error[FWC511]" in capsys.readouterr().err
    assert (out / "edge").read_text() == "not fwc's\n"
    assert compile_to(edge, out, "--force") == 0
    assert (out / "edge" / "MANIFEST").is_file()
    assert (out / "notes.txt").read_text() == "mine\n"
    assert leftovers(tmp_path) == []


def test_an_unlisted_file_in_a_cluster_directory_is_foreign(edge, tmp_path, capsys):
    out = tmp_path / "out"
    assert compile_to(edge, out) == 0
    (out / "edge" / "fw1" / "local.rules").write_text("# hand-made\n")
    before = file_tree(out)
    assert compile_to(edge, out) == 1
    assert "edge/fw1/local.rules" in capsys.readouterr().err
    assert file_tree(out) == before
    assert compile_to(edge, out, "--force") == 0
    assert not (out / "edge" / "fw1" / "local.rules").exists()


def test_fwc_own_output_and_an_empty_directory_need_no_force(edge, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    assert compile_to(edge, out) == 0
    other = _other_policy(edge)
    assert compile_to(other, out) == 0
    assert compile_to(edge, out) == 0
    assert "FWC511" not in capsys.readouterr().err


def test_leftovers_of_a_killed_compile_are_removed(edge, tmp_path):
    out = tmp_path / "out"
    assert compile_to(edge, out) == 0
    staging = tmp_path / ".out.fwc-staging-999999"
    (staging / "edge").mkdir(parents=True)
    (staging / "edge" / "keepalived.conf").write_text('auth_pass "s3cret"\n')
    (tmp_path / ".out.fwc-old-4242").mkdir()
    (tmp_path / f".out.fwc-staging-{os.getpid() + 1}").symlink_to(out)  # a stale link
    unrelated = [tmp_path / ".other.fwc-staging-12", tmp_path / ".out.fwc-staging-x1"]
    for path in unrelated:
        path.mkdir()
    assert compile_to(edge, out) == 0
    assert leftovers(tmp_path) == sorted(p.name for p in unrelated)
    assert (out / "edge" / "MANIFEST").is_file()


# -- what another user, or a mount, could do to the output directory (helper review) --

@pytest.mark.parametrize("which", ["parent", "output"])
def test_a_directory_every_user_may_write_to_is_refused(edge, tmp_path, capsys, which):
    # Anyone could rename the staging copy (or a directory in it) away and put a link
    # in its place between fwc's steps: fwc would write, or copy, elsewhere.
    parent = tmp_path / "shared"
    out = parent / "out"
    out.mkdir(parents=True)
    (parent if which == "parent" else out).chmod(0o777)
    assert compile_to(edge, out) == 1
    err = capsys.readouterr().err
    assert "error[FWC510]" in err and "is writable by every user" in err
    assert list(out.iterdir()) == [] and leftovers(parent) == []


def test_a_shared_directory_with_the_sticky_bit_is_fine(edge, tmp_path):
    parent = tmp_path / "shared"
    parent.mkdir()
    parent.chmod(0o1777)  # as /tmp: nobody may rename another user's entries
    assert compile_to(edge, parent / "out") == 0


def test_a_mount_inside_the_output_directory_is_refused_and_kept(edge, tmp_path):
    # The previous tree is deleted after the swap: with a bind mount in it, that
    # deleted the files of the mounted directory, outside the output directory.
    import subprocess

    from conftest import REPO, skip_or_fail_without_root

    skip_or_fail_without_root()
    out = tmp_path / "out"
    assert compile_to(edge, out) == 0
    source = tmp_path / "elsewhere"
    source.mkdir()
    (source / "keep.txt").write_text("mine\n")
    (out / "mounted").mkdir()
    script = (f"mount --bind {source} {out / 'mounted'} && "
              f"{sys.executable} -m fwc compile --no-cache {edge} -o {out} --force; "
              "echo rc=$?")
    proc = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                           script], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert "rc=1" in proc.stdout, proc.stdout + proc.stderr
    assert "is a mount point inside the output directory" in proc.stderr
    assert (source / "keep.txt").read_text() == "mine\n"


def test_a_fifo_named_manifest_does_not_block_a_compile(edge, tmp_path, capsys):
    out = tmp_path / "out"
    (out / "x").mkdir(parents=True)
    os.mkfifo(out / "x" / "MANIFEST")
    assert compile_to(edge, out) == 1  # (it would block for ever in the read)
    assert "error[FWC511]" in capsys.readouterr().err


def test_an_entry_replaced_by_a_link_while_copied_is_never_followed(tmp_path, monkeypatch):
    from fwc.backend import output

    source = tmp_path / "source"
    source.mkdir()
    secret = tmp_path / "secret"
    secret.write_text("root only\n")
    secret.chmod(0o600)
    (source / "z").symlink_to(secret)
    real_stat = os.stat

    def listed_as_a_file(path, *args, **kwargs):  # type: ignore[no-untyped-def]
        info = real_stat(path, *args, **kwargs)
        if path == "z":  # what the listing saw before the link was put there
            return os.stat_result((stat.S_IFREG | 0o644, *tuple(info)[1:]))
        return info

    monkeypatch.setattr(output.os, "stat", listed_as_a_file)
    with pytest.raises(OSError):
        output._copy_tree(source, tmp_path / "copy")
    assert not (tmp_path / "copy" / "z").exists()


def test_an_interrupt_between_the_two_renames_keeps_the_previous_output(edge, tmp_path,
                                                                        monkeypatch):
    # Where the file system has no RENAME_EXCHANGE the swap is two renames; the
    # previous tree was deleted when an interrupt came between them.
    from pathlib import Path

    from fwc.backend import output

    out = tmp_path / "out"
    assert compile_to(edge, out) == 0
    before = file_tree(out)
    monkeypatch.setattr(output, "_exchange", lambda a, b: False)
    real_rename = Path.rename

    def rename(self, target):  # type: ignore[no-untyped-def]
        if ".fwc-staging-" in self.name:
            raise KeyboardInterrupt
        return real_rename(self, target)

    monkeypatch.setattr(Path, "rename", rename)
    assert compile_to(edge, out, "--no-cache") == 130
    monkeypatch.undo()
    assert file_tree(out) == before and leftovers(tmp_path) == []


# -- the umask decides no more than it takes away (rev25b) --

def _modes(root):  # type: ignore[no-untyped-def]
    """{relative path: mode} of ROOT and everything below it."""
    return {str(p.relative_to(root)): stat.S_IMODE(p.stat().st_mode)
            for p in [root, *sorted(root.rglob("*"))]}


@pytest.mark.parametrize("umask", [0o000, 0o002])
def test_no_directory_fwc_creates_is_writable_by_others_whatever_the_umask(edge, tmp_path,
                                                                           umask):
    """Under umask 000 (some CI runners) the output directory, its new parent and every
    cluster and member directory were created 0777: anyone could swap keepalived.conf
    before `fwc install` read it, and the next compile refused the directory fwc had
    made itself (FWC510, "writable by every user"). Directories are 0755 less the umask,
    as the files' modes are fixed."""
    out = tmp_path / "new" / "out"
    before = os.umask(umask)
    try:
        assert compile_to(edge, out) == 0
        assert compile_to(edge, out, "--no-cache") == 0  # its own directory is accepted
    finally:
        os.umask(before)
    modes = _modes(tmp_path / "new")
    assert {m for p, m in modes.items() if (tmp_path / "new" / p).is_dir()} == {0o755}
    assert modes["out/edge/fw1/fwc-notify.sh"] == 0o755
    assert modes["out/edge/fw1/iptables.rules"] == 0o644


def test_the_exported_ansible_tree_is_not_writable_by_others_under_umask_000(tmp_path,
                                                                           capsys):
    """`fwc export ansible` writes through the same function: its role's task and
    template directories were 0777 under umask 000 (anyone could change what the
    playbook runs as root on every node)."""
    inventory = tmp_path / "hosts"
    inventory.write_text("fw1 a\nfw2 b\n")
    before = os.umask(0)
    try:
        assert main(["export", "ansible", str(EDGE_FILE), "-o", str(tmp_path / "tree"),
                     "--redact-secrets", "--inventory", str(inventory)]) == 0
    finally:
        os.umask(before)
    capsys.readouterr()
    writable = [p for p, m in _modes(tmp_path / "tree").items() if m & 0o022]
    assert writable == []
