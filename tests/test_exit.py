"""The `fwc` command ends with os._exit (fwc.cli.console, issue 12): nothing is lost.

Each case runs the same command twice in a child process: the ordinary way
(`sys.exit(fwc.cli.main())`, a normal interpreter exit) and through the console entry
point (`python -m fwc`), with block-buffered stdout (PYTHONUNBUFFERED removed) so that a
buffer left unflushed would show. Exit status, stdout and stderr must be the same,
through a pipe and into a file; a compile with a worker process and the result cache
leaves every file, every cache entry, no temporary file and no child process behind.
"""

from __future__ import annotations

import gc
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, file_tree, leftovers

from bench.generate import build_site, fwc_policy
from fwc.cli import main

ORDINARY = [sys.executable, "-c", "import sys; from fwc.cli import main; sys.exit(main())"]
CONSOLE = [sys.executable, "-m", "fwc"]

# The console entry point, with a look at the process just before it leaves: are all
# its children reaped? (Only in the parent: the forked worker leaves with os._exit too.)
PROBED_CONSOLE = [sys.executable, "-c", """
import os, sys
from fwc import cli
parent, leave = os.getpid(), os._exit
def probed_exit(code):
    if os.getpid() == parent:
        try:
            os.waitpid(-1, os.WNOHANG)
            sys.stderr.write("exit-probe: a child is left\\n")
        except ChildProcessError:
            sys.stderr.write("exit-probe: no child left\\n")
        sys.stderr.flush()
    leave(code)
os._exit = probed_exit
cli.console()
"""]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    return {**env, "PYTHONPATH": str(REPO), "FWC_NO_CACHE": "1", **extra}


def _run(how: list[str], *argv: str, stdin: str | None = None, cwd: Path | None = None,
         env: dict[str, str] | None = None) -> tuple[int, bytes, bytes]:
    proc = subprocess.run([*how, *argv], input=None if stdin is None else stdin.encode(),
                          capture_output=True, cwd=cwd, env=env or _env(), timeout=300)
    return proc.returncode, proc.stdout, proc.stderr


def _run_into_files(how: list[str], *argv: str, stdin: Path, directory: Path) \
        -> tuple[int, bytes, bytes]:
    """As _run, stdout and stderr written to files (block buffering as for a pipe)."""
    out, err = directory / "stdout", directory / "stderr"
    with open(stdin, "rb") as source, open(out, "wb") as o, open(err, "wb") as e:
        code = subprocess.run([*how, *argv], stdin=source, stdout=o, stderr=e, env=_env(),
                              timeout=300).returncode
    return code, out.read_bytes(), err.read_bytes()


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A generated policy of 700 rules: its formatted text is about 140 kB."""
    path = tmp_path_factory.mktemp("exit") / "site.fw"
    path.write_text(fwc_policy(build_site(700)), encoding="utf-8")
    return path


def test_a_large_output_is_complete_through_a_pipe_and_into_a_file(site: Path,
                                                                   tmp_path: Path) -> None:
    text = site.read_text(encoding="utf-8")
    ordinary = _run(ORDINARY, "fmt", "-", stdin=text)
    console = _run(CONSOLE, "fmt", "-", stdin=text)
    assert ordinary[0] == 0 and len(ordinary[1]) > 100_000
    assert console == ordinary
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    assert _run_into_files(CONSOLE, "fmt", "-", stdin=site, directory=tmp_path / "a") \
        == _run_into_files(ORDINARY, "fmt", "-", stdin=site, directory=tmp_path / "b") \
        == ordinary


@pytest.fixture(scope="module")
def noisy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """policies/edge.fw with 400 copies of one rule: 400 warnings (shadowed rules)."""
    rule = "    accept from client   to firewall service ssh\n"
    text = (REPO / "policies" / "edge.fw").read_text(encoding="utf-8")
    path = tmp_path_factory.mktemp("exit") / "noisy.fw"
    path.write_text(text.replace(rule, rule * 400), encoding="utf-8")
    return path


@pytest.mark.parametrize("fmt", ["text", "json", "sarif"])
def test_a_check_reports_the_same_either_way(noisy: Path, fmt: str) -> None:
    ordinary = _run(ORDINARY, "check", "--jobs", "2", "--format", fmt, str(noisy))
    assert ordinary[0] == 0
    assert len(ordinary[1] if fmt != "text" else ordinary[2]) > 50_000
    assert _run(CONSOLE, "check", "--jobs", "2", "--format", fmt, str(noisy)) == ordinary
    if fmt == "text":  # warnings that fail: exit status 1, the same report
        strict = _run(ORDINARY, "check", "--strict", str(noisy))
        assert strict[0] == 1
        assert _run(CONSOLE, "check", "--strict", str(noisy)) == strict


def test_exit_codes_are_the_same_either_way(tmp_path: Path, policies: Path) -> None:
    broken = tmp_path / "broken.fw"
    broken.write_text("cluster c {\n  member a { address 192.0.2.1 }\n", encoding="utf-8")
    cases = {("--version",): 0, (): 2, ("check",): 2, ("explain", "FWC201"): 0,
             ("check", str(broken)): 1, ("check", str(policies / "edge.fw")): 0}
    for argv, code in cases.items():
        ordinary = _run(ORDINARY, *argv)
        assert ordinary[0] == code, (argv, ordinary)
        assert _run(CONSOLE, *argv) == ordinary, argv


def test_a_compile_with_a_worker_and_the_cache_leaves_all_written_and_nothing_else(
        site: Path, tmp_path: Path, cache_home: Path) -> None:
    env = _env(XDG_CACHE_HOME=str(cache_home), FWC_NO_CACHE="")
    code, out, err = _run(PROBED_CONSOLE, "compile", "--jobs", "2", "-o",
                          str(tmp_path / "console"), str(site), env=env)
    assert code == 0, err
    assert b"exit-probe: no child left" in err  # the worker was reaped before the exit
    entries = sorted(p.name for p in cache_home.rglob("*") if p.is_file())
    assert entries and not [name for name in entries if name.startswith("tmp-")]
    ordinary = _run(ORDINARY, "compile", "--jobs", "2", "--no-cache", "-o",
                    str(tmp_path / "ordinary"), str(site))
    assert ordinary[0] == 0
    assert out.replace(b"/console/", b"/ordinary/") == ordinary[1]
    assert file_tree(tmp_path / "console") == file_tree(tmp_path / "ordinary")
    assert leftovers(tmp_path) == []
    # a second compile answers from the record the first one wrote before leaving: the
    # output directory holds what it says, so nothing is written again
    written = {p: p.stat().st_ino for p in (tmp_path / "console").rglob("*")}
    again = _run(CONSOLE, "compile", "-o", str(tmp_path / "console"), str(site), env=env)
    assert again[0] == 0 and again[1] == out
    assert {p: p.stat().st_ino for p in (tmp_path / "console").rglob("*")} == written
    assert file_tree(tmp_path / "console") == file_tree(tmp_path / "ordinary")


def test_a_broken_pipe_ends_as_before(site: Path) -> None:
    """The reader goes away before fwc writes: small output (the final flush fails) and
    large output (a write in the command fails)."""
    for argv in (("explain", "FWC201"), ("fmt", "-")):
        results = []
        for how in (ORDINARY, CONSOLE):
            with open(site, "rb") as source:
                child = subprocess.Popen([*how, *argv], stdin=source, stdout=subprocess.PIPE,
                                         stderr=subprocess.PIPE, env=_env())
            assert child.stdout is not None and child.stderr is not None
            child.stdout.close()  # before the child has even imported fwc
            results.append((child.wait(timeout=120), child.stderr.read()))
            child.stderr.close()
        assert results[0] == results[1], argv
        assert results[0][0] != 0 and b"Traceback" not in results[0][1]


INTERRUPTED = """
import sys
import fwc.commands.explain as command
from fwc import cli
def interrupted(args):
    raise {error}
command.run = interrupted
{call}
"""


@pytest.mark.parametrize(("error", "code"), [("KeyboardInterrupt", 130),
                                             ("BrokenPipeError", 1)])
def test_an_interrupt_ends_as_before(error: str, code: int) -> None:
    results = [_run([sys.executable, "-c", INTERRUPTED.format(error=error, call=call)],
                    "explain")
               for call in ("sys.exit(cli.main())", "cli.console()")]
    assert results[0] == results[1]
    assert results[0][0] == code
    assert (b"fwc: interrupted" in results[0][2]) == (code == 130)


def test_in_process_main_frees_everything_and_keeps_the_collector(policies: Path) -> None:
    assert gc.isenabled()
    assert main(["check", "--no-cache", str(policies / "edge.fw")]) == 0
    assert gc.isenabled()  # enabled again for an in-process caller
    kept: list[object] = []
    try:
        assert main(["check", "--no-cache", str(policies / "edge.fw")], kept=kept) == 0
        assert kept  # handed to the caller that ends the process
        assert not gc.isenabled()  # left off: the process ends next
    finally:
        gc.enable()


INTERRUPTED_BEFORE = """
import sys
from fwc import cli
def interrupted(*args, **kwargs):
    raise KeyboardInterrupt
cli.build_parser = interrupted  # Ctrl-C while the arguments are parsed
cli.console()
"""


def test_an_interrupt_before_the_command_runs_is_one_line_too() -> None:
    # (it was a traceback through argparse, fwc.toml or an import: helper review)
    code, _, err = _run([sys.executable, "-c", INTERRUPTED_BEFORE], "explain")
    assert code == 130 and err.strip() == b"fwc: interrupted", err


INTERRUPTED_IMPORT = """
import sys


class Interrupting:
    '''A Ctrl-C while fwc.cli's imports run (before any of fwc's code can catch it).'''

    def find_spec(self, name, path=None, target=None):
        if name == "fwc.cli":
            raise KeyboardInterrupt
        return None


sys.meta_path.insert(0, Interrupting())
from fwc.__main__ import console  # the `fwc` command's entry point (pyproject.toml)
console()
"""


def test_an_interrupt_while_fwc_is_imported_is_one_line_too() -> None:
    code, out, err = _run([sys.executable, "-c", INTERRUPTED_IMPORT], "--version")
    assert (code, out, err.strip()) == (130, b"", b"fwc: interrupted"), err
    # and the same entry point runs the command when nothing interrupts it
    code, out, _ = _run([sys.executable, "-c", "from fwc.__main__ import console; console()"],
                        "--version")
    assert code == 0 and out.startswith(b"fwc ")
