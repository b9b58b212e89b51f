"""Includes (issue 10): confined to the policy repository, regular files only, bounded.

FWC010 outside the repository, FWC011 not a regular file, FWC012 too large,
FWC013 nested too deep; the same limits in `fwc diff`, which reads through git.
Commands that could hang or eat memory run as subprocesses with a timeout and an
address-space limit, so a regression fails instead of stalling the suite.
"""

from __future__ import annotations

import os
import resource
import subprocess
from functools import partial
from pathlib import Path

import pytest
from checkkit import BASE
from conftest import git, run_fwc

from fwc.frontend import loader
from fwc.frontend.loader import load
from fwc.frontend.sources import MAX_FILE_BYTES, MAX_INCLUDE_DEPTH, Refused, read_regular
from fwc.pipeline import analyse

SECRET = "TOPSECRET-3f1c9a"
SHARED = "network shared_net 203.0.113.0/24\n"


def errors(diagnostics) -> list[tuple[str, str, int, int]]:  # type: ignore[no-untyped-def]
    return [(d.code, d.span.file if d.span else "", d.span.line if d.span else 0,
             d.span.column if d.span else 0) for d in diagnostics if d.is_error]


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """tmp/repo (a git work tree: it holds .git) next to tmp/outside/secret.fw."""
    repo = tmp_path / "repo"
    (repo / ".git").mkdir(parents=True)
    (repo / "lib").mkdir()
    (repo / "lib" / "shared.fw").write_text(SHARED, encoding="utf-8")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.fw").write_text(f"# {SECRET}\nhost {SECRET} 192.0.2.1\n",
                                       encoding="utf-8")
    return repo


def _limits() -> None:  # runs in the child: a /dev/zero regression hits this, not the machine
    resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))


fwc = partial(run_fwc, preexec_fn=_limits)


def policy(repo: Path, include: str, name: str = "p.fw") -> Path:
    path = repo / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f'include "{include}"\n' + BASE, encoding="utf-8")
    return path


# -- FWC010: inside the repository ---------------------------------------------------

@pytest.mark.parametrize("how", ["absolute", "dotdot", "symlink", "symlinked-dir"])
def test_fwc010_include_outside_the_repository_echoes_nothing(tree: Path, how: str):
    secret = tree.parent / "outside" / "secret.fw"
    include = {"absolute": str(secret), "dotdot": "../outside/secret.fw",
               "symlink": "lib/link.fw", "symlinked-dir": "out/secret.fw"}[how]
    if how == "symlink":
        (tree / "lib" / "link.fw").symlink_to(secret)
    if how == "symlinked-dir":
        (tree / "out").symlink_to(secret.parent)
    policy(tree, include)
    result = fwc("check", "p.fw", cwd=tree)
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "p.fw:1:9: error[FWC010]" in output, output
    assert SECRET not in output
    assert "Traceback" not in output
    if how.startswith("symlink"):
        assert "through a symbolic link" in output
    # nothing of it reached the program either (JSON output, texts)
    analysis = analyse(tree / "p.fw")
    assert all(SECRET not in text for text in analysis.program.texts.values())


def test_fwc010_says_nothing_about_whether_the_file_exists(tree: Path):
    policy(tree, "../outside/does-not-exist.fw")
    analysis = analyse(tree / "p.fw")
    assert [(d.code, d.message) for d in analysis.diagnostics if d.is_error] == [
        ("FWC010", f"include '../outside/does-not-exist.fw' is outside the policy "
                   f"repository {tree.resolve()}")]


def test_fwc010_silent_inside_the_repository(tree: Path):
    """`..` that stays inside, a symlink inside the tree, and a file in a subdirectory."""
    (tree / "lib" / "alias.fw").symlink_to(tree / "lib" / "shared.fw")
    (tree / "sites").mkdir()
    (tree / "sites" / "p.fw").write_text(
        'include "../lib/shared.fw"\ninclude "../lib/alias.fw"\n' + BASE, encoding="utf-8")
    analysis = analyse(tree / "sites" / "p.fw")
    assert errors(analysis.diagnostics) == []
    assert analysis.ok
    assert len(analysis.program.files) == 2  # the alias is the same file, read once


def test_top_directory_is_the_repository_outside_git(tmp_path: Path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b.fw").write_text(SHARED, encoding="utf-8")
    policy(tmp_path / "a", "../b.fw")
    analysis = analyse(tmp_path / "a" / "p.fw")
    assert [d.code for d in analysis.diagnostics if d.is_error] == ["FWC010"]


# -- --include-path ---------------------------------------------------------------

def test_include_path_allows_a_directory_and_searches_it(tree: Path):
    shared = tree.parent / "outside" / "shared"
    shared.mkdir()
    (shared / "objects.fw").write_text(SHARED, encoding="utf-8")
    policy(tree, "objects.fw")  # not next to p.fw: found through the search path
    refused = fwc("check", "p.fw", cwd=tree)
    assert refused.returncode == 1
    assert "p.fw:1:9: error[FWC002]" in refused.stderr, refused.stderr
    for command in (["check", "p.fw"], ["query", "p.fw", "--from", "192.0.2.10", "--to",
                                        "198.51.100.10", "--service", "tcp/5001"],
                    ["compile", "p.fw", "-o", str(tree.parent / "out")]):
        result = fwc(*command, "--include-path", str(shared), cwd=tree)
        assert result.returncode == 0, result.stderr
        assert "FWC0" not in result.stderr, result.stderr
    # by absolute name too, but a file beside the allowed directory stays refused
    policy(tree, str(shared / "objects.fw"))
    assert fwc("check", "p.fw", "--include-path", str(shared), cwd=tree).returncode == 0
    policy(tree, str(tree.parent / "outside" / "secret.fw"))
    result = fwc("check", "p.fw", "--include-path", str(shared), cwd=tree)
    assert "error[FWC010]" in result.stderr and SECRET not in result.stderr


def test_include_path_must_be_a_directory(tree: Path):
    policy(tree, "lib/shared.fw")
    for command in ("check", "compile", "query", "install", "lab", "diff"):
        result = fwc(command, "p.fw", "--include-path", str(tree / "nope"), cwd=tree)
        assert result.returncode == 2, (command, result.stderr)
        assert "--include-path: '" in result.stderr and "is not a directory" in result.stderr


def test_include_path_of_diff_must_be_inside_the_repository(tmp_path: Path):
    repo = tmp_path / "fw"
    repo.mkdir()
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    result = fwc("diff", "--include-path", str(tmp_path), cwd=repo)
    assert result.returncode == 2
    assert "is outside the repository" in result.stderr
    assert "fwc diff reads both sides from git" in result.stderr


# -- FWC011: regular files only ---------------------------------------------------------

def test_fwc011_dev_zero_is_refused_quickly(tree: Path):
    """Today `include "/dev/zero"` grows memory without bound: now refused before opening."""
    policy(tree, "/dev/zero")
    result = fwc("check", "p.fw", "--include-path", "/dev", timeout=30, cwd=tree)
    assert result.returncode == 1, result.stderr
    assert "p.fw:1:9: error[FWC011]: '/dev/zero' is a character device" in result.stderr
    top = fwc("check", "/dev/zero", timeout=30, cwd=tree)
    assert top.returncode == 1
    assert "error[FWC011]" in top.stderr and "Traceback" not in top.stderr


def test_fwc011_fifo_does_not_hang(tree: Path):
    os.mkfifo(tree / "lib" / "pipe.fw")
    policy(tree, "lib/pipe.fw")
    result = fwc("check", "p.fw", timeout=30, cwd=tree)
    assert result.returncode == 1, result.stderr
    assert "p.fw:1:9: error[FWC011]: 'lib/pipe.fw' is a FIFO" in result.stderr
    top = fwc("check", "lib/pipe.fw", timeout=30, cwd=tree)
    assert top.returncode == 1 and "error[FWC011]" in top.stderr


def test_fwc011_directory(tree: Path):
    policy(tree, "lib")
    assert [d.code for d in analyse(tree / "p.fw").diagnostics if d.is_error] == ["FWC011"]


@pytest.mark.parametrize("command", ["check", "compile"])
def test_fwc002_a_symbolic_link_loop_is_a_diagnostic_not_a_traceback(tree: Path, command: str):
    """A policy or an include that is a link to itself: Python before 3.13 raised
    RuntimeError from Path.resolve (a traceback); it is a file that cannot be read."""
    os.symlink("loop.fw", tree / "loop.fw")
    policy(tree, "loop.fw")
    extra = ["-o", "out"] if command == "compile" else []
    for args, where in ((["p.fw"], "p.fw:1:9: error[FWC002]: cannot read 'loop.fw'"),
                        (["loop.fw"], "error[FWC002]: cannot read 'loop.fw'")):
        result = fwc(command, "--no-cache", *args, *extra, timeout=30, cwd=tree)
        assert result.returncode == 1, result.stderr
        assert "Traceback" not in result.stderr
        assert where in result.stderr and "symbolic links" in result.stderr
    assert not (tree / "out").exists()


# -- FWC012: size limits ---------------------------------------------------------------

def test_fwc012_file_too_large(tree: Path):
    with open(tree / "lib" / "huge.fw", "wb") as f:
        f.truncate(MAX_FILE_BYTES + 1)  # sparse: refused by its size, never read
    policy(tree, "lib/huge.fw")
    result = fwc("check", "p.fw", timeout=30, cwd=tree)
    assert result.returncode == 1
    assert "p.fw:1:9: error[FWC012]: 'lib/huge.fw' is larger than 8 MiB" in result.stderr


def test_fwc012_file_that_grows_after_the_size_check(tmp_path: Path):
    path = tmp_path / "f.fw"
    path.write_bytes(b"x" * 100)
    with pytest.raises(Refused) as exc:
        read_regular(path, "f.fw", limit=99)
    assert exc.value.code == "FWC012"
    assert read_regular(path, "f.fw", limit=100) == b"x" * 100


def test_fwc012_total_of_the_includes(tree: Path, monkeypatch: pytest.MonkeyPatch):
    top = 'include "lib/shared.fw"\ninclude "lib/more.fw"\n' + BASE
    monkeypatch.setattr(loader, "MAX_TOTAL_BYTES", len(top) + len(SHARED) + 10)
    (tree / "lib" / "more.fw").write_text("# " + "x" * 70 + "\n", encoding="utf-8")
    (tree / "p.fw").write_text(top, encoding="utf-8")
    bad = [d for d in analyse(tree / "p.fw").diagnostics if d.is_error]
    assert [(d.code, d.span.line if d.span else 0) for d in bad] == [("FWC012", 2)]
    assert "takes the policy and its includes over" in bad[0].message


# -- FWC013: depth ---------------------------------------------------------------------

def chain(repo: Path, length: int) -> Path:
    """p.fw -> c1.fw -> ... -> cLENGTH.fw, LENGTH + 1 files in all."""
    for n in range(1, length + 1):
        nxt = f'include "c{n + 1}.fw"\n' if n < length else ""
        (repo / f"c{n}.fw").write_text(nxt + f"network n{n} 198.18.{n}.0/24\n",
                                       encoding="utf-8")
    return policy(repo, "c1.fw")


def test_fwc013_deep_chain_ends_in_a_diagnostic(tree: Path):
    chain(tree, 2000)  # deeper than Python's recursion limit
    diagnostics = [d for d in load(tree / "p.fw")[1] if d.is_error]
    assert [(d.code, Path(d.span.file).name if d.span else "") for d in diagnostics] == [
        ("FWC013", f"c{MAX_INCLUDE_DEPTH - 1}.fw")]


def test_fwc013_silent_at_the_limit(tree: Path):
    chain(tree, MAX_INCLUDE_DEPTH - 1)  # p.fw and 31 more: 32 files deep
    program, diagnostics = load(tree / "p.fw")
    assert errors(diagnostics) == []
    assert len(program.files) == MAX_INCLUDE_DEPTH


# -- fwc diff: reading through git --------------------------------------------------

def through(files: dict[str, str]):  # type: ignore[no-untyped-def]
    """A reader like fwc.diffing's: repository-relative paths, KeyError-free."""
    seen: list[str] = []

    def read(path: Path) -> str:
        seen.append(str(path))
        if str(path) not in files:
            raise FileNotFoundError(2, "not in HEAD", str(path))
        return files[str(path)]
    return read, seen


def test_reader_normalises_so_the_cycle_is_found():
    read, seen = through({"edge.fw": 'include "lib/../edge.fw"\n' + BASE})
    program, diagnostics = load(Path("edge.fw"), reader=read)
    assert [d.code for d in diagnostics if d.is_error] == ["FWC003"]
    assert seen == ["edge.fw"]


def test_reader_refuses_paths_out_of_the_repository():
    read, seen = through({"edge.fw": 'include "../../etc/passwd"\ninclude "/etc/passwd"\n'
                          + BASE})
    _, diagnostics = load(Path("edge.fw"), reader=read)
    assert [(d.code, d.span.line if d.span else 0) for d in diagnostics if d.is_error] == [
        ("FWC010", 1), ("FWC010", 2)]
    assert seen == ["edge.fw"]


@pytest.fixture
def gitrepo(repo: Path) -> Path:
    """conftest's scratch repository (policies/edge.fw committed) with policies/lib."""
    (repo / "policies" / "lib").mkdir()
    return repo


def test_diff_include_climbing_back_is_a_cycle_not_a_recursion_error(gitrepo: Path):
    edge = gitrepo / "policies" / "edge.fw"
    edge.write_text('include "lib/../edge.fw"\n' + edge.read_text(encoding="utf-8"),
                    encoding="utf-8")
    result = fwc("diff", "policies/edge.fw", timeout=60, cwd=gitrepo)
    assert result.returncode == 2, result.stderr
    assert "policies/edge.fw:1:9: error[FWC003]: include cycle" in result.stderr
    assert "RecursionError" not in result.stderr and "Traceback" not in result.stderr


def test_diff_deep_chain_ends_in_a_diagnostic(gitrepo: Path):
    chain(gitrepo / "policies", 200)
    (gitrepo / "policies" / "p.fw").unlink()
    edge = gitrepo / "policies" / "edge.fw"
    edge.write_text('include "c1.fw"\n' + edge.read_text(encoding="utf-8"), encoding="utf-8")
    result = fwc("diff", "policies/edge.fw", timeout=120, cwd=gitrepo)
    assert result.returncode == 2, result.stderr
    assert f"policies/c{MAX_INCLUDE_DEPTH - 1}.fw:1:9: error[FWC013]" in result.stderr


def test_diff_worktree_symlink_out_of_the_repository(gitrepo: Path, tree: Path):
    secret = tree.parent / "outside" / "secret.fw"
    (gitrepo / "policies" / "lib" / "link.fw").symlink_to(secret)
    edge = gitrepo / "policies" / "edge.fw"
    edge.write_text('include "lib/link.fw"\n' + edge.read_text(encoding="utf-8"),
                    encoding="utf-8")
    result = fwc("diff", "policies/edge.fw", cwd=gitrepo)
    assert result.returncode == 2, result.stderr
    assert "policies/edge.fw:1:9: error[FWC010]" in result.stderr
    assert SECRET not in result.stderr + result.stdout


def test_diff_committed_blob_too_large(gitrepo: Path):
    with open(gitrepo / "policies" / "lib" / "huge.fw", "wb") as f:
        f.write(b"#" * (MAX_FILE_BYTES + 1))
    edge = gitrepo / "policies" / "edge.fw"
    edge.write_text('include "lib/huge.fw"\n' + edge.read_text(encoding="utf-8"),
                    encoding="utf-8")
    git(gitrepo, "add", "-A")
    git(gitrepo, "commit", "-q", "-m", "huge")
    (gitrepo / "policies" / "lib" / "huge.fw").write_text("", encoding="utf-8")
    result = fwc("diff", "HEAD", "policies/edge.fw", timeout=60, cwd=gitrepo)
    assert result.returncode == 2, result.stderr
    assert "does not compile at HEAD" in result.stderr
    assert "policies/edge.fw:1:9: error[FWC012]" in result.stderr


def test_diff_include_path_inside_the_repository_is_searched(gitrepo: Path):
    monitor = "host    monitor  192.0.2.20\n"
    (gitrepo / "shared").mkdir()
    (gitrepo / "shared" / "objects.fw").write_text(monitor, encoding="utf-8")
    edge = gitrepo / "policies" / "edge.fw"
    text = edge.read_text(encoding="utf-8")
    assert monitor in text
    edge.write_text('include "objects.fw"\n' + text.replace(monitor, ""), encoding="utf-8")
    git(gitrepo, "add", "-A")
    git(gitrepo, "commit", "-q", "-m", "shared objects")
    (gitrepo / "shared" / "objects.fw").write_text(monitor.replace(".20", ".21"),
                                                   encoding="utf-8")
    result = fwc("diff", "--no-color", "--include-path", "shared", cwd=gitrepo)
    # the searched file's change is found (discovery) and compiled at both sides
    assert result.returncode == 1, result.stderr
    assert "192.0.2.21" in result.stdout and "192.0.2.20" in result.stdout
    refused = fwc("diff", "--no-color", "policies/edge.fw", cwd=gitrepo)
    assert refused.returncode == 2 and "error[FWC002]" in refused.stderr


def test_a_name_the_os_cannot_take_is_a_diagnostic(tree: Path):
    # A raw NUL byte in the name: refused at the character, as every control character
    # of a policy is (FWC006), before the string is decoded or a file opened.
    (tree / "p.fw").write_text('include "a\x00b.fw"\n' + BASE, encoding="utf-8")
    result = fwc("check", "p.fw", cwd=tree)
    assert result.returncode == 1
    assert "p.fw:1:11: error[FWC006]: control character U+0000 (NUL)" in result.stderr, \
        result.stderr
    assert "Traceback" not in result.stderr


# -- password files: the same confinement (their content reaches keepalived.conf) ----------

def password_policy(repo: Path, password_file: str) -> Path:
    path = repo / "p.fw"
    text = BASE.replace('password "s3cret"', f'password file "{password_file}"')
    assert text != BASE
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize("where", ["absolute", "dotdot", "symlink"])
def test_password_file_outside_the_repository_is_refused(tree: Path, where: str):
    secret = tree.parent / "outside" / "pw"
    secret.write_text(SECRET + "\n", encoding="utf-8")
    name = {"absolute": str(secret), "dotdot": "../outside/pw", "symlink": "lib/pw"}[where]
    if where == "symlink":
        (tree / "lib" / "pw").symlink_to(secret)
    password_policy(tree, name)
    result = fwc("check", "p.fw", cwd=tree)
    assert result.returncode == 1, result.stderr
    assert "error[FWC010]: password file" in result.stderr, result.stderr
    assert SECRET not in result.stdout + result.stderr
    compiled = fwc("compile", "p.fw", "-o", "out", cwd=tree)
    assert compiled.returncode == 1 and not (tree / "out").exists()


def test_password_file_fifo_and_device_do_not_hang(tree: Path):
    os.mkfifo(tree / "lib" / "pw")
    password_policy(tree, "lib/pw")
    result = fwc("check", "p.fw", timeout=30, cwd=tree)
    assert result.returncode == 1 and "error[FWC011]: 'lib/pw' is a FIFO" in result.stderr
    password_policy(tree, "/dev/zero")
    assert "error[FWC010]" in fwc("check", "p.fw", timeout=30, cwd=tree).stderr


def test_password_file_inside_the_repository_or_include_path_is_read(tree: Path):
    (tree / "lib" / "pw").write_text("s3cret\n", encoding="utf-8")
    password_policy(tree, "lib/pw")
    assert fwc("check", "p.fw", cwd=tree).returncode == 0
    outside = tree.parent / "outside"
    (outside / "pw").write_text("s3cret\n", encoding="utf-8")
    password_policy(tree, str(outside / "pw"))
    allowed = fwc("check", "--include-path", str(outside), "p.fw", cwd=tree)
    assert allowed.returncode == 0, allowed.stderr


def test_diff_does_not_read_a_password_file_outside_the_repository(tree: Path):
    repo = tree
    subprocess.run(["rm", "-rf", str(repo / ".git")], check=True)
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    (repo / "p.fw").write_text(BASE, encoding="utf-8")
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.org"]
    subprocess.run([*git, "add", "p.fw"], check=True)
    subprocess.run([*git, "commit", "-qm", "base"], check=True)
    secret = tree.parent / "outside" / "pw"
    secret.write_text("abcdefghijklmnopq\n", encoding="utf-8")  # FWC212 would count it
    password_policy(repo, str(secret))
    result = fwc("diff", "--no-color", cwd=repo)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "error[FWC010]" in result.stderr, result.stderr
    assert "FWC212" not in result.stderr
