"""Progress on stderr: on a terminal only, never in pipes or --format json (issue 12)."""

from __future__ import annotations

import io
import os
import subprocess
import sys

from conftest import EDGE, REPO, run_on_terminal

from fwc.diagnostics import Progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_silent_unless_a_terminal():
    pipe = io.StringIO()
    progress = Progress.for_terminal(pipe)
    progress.phase("parsing", 0.0)
    progress.within(0.5, 1.0).phase("checking (FWC401)", 0.5)
    progress.done()
    assert pipe.getvalue() == ""
    assert not progress.live


def test_phases_and_shares_on_a_terminal_then_erased():
    screen = Terminal()
    progress = Progress.for_terminal(screen)
    progress.phase("parsing", 0.0)
    progress.within(0.4, 1.0).within(0.0, 0.5).phase("checking (FWC401)", 0.5)
    progress.done()
    text = screen.getvalue()
    assert "fwc: parsing   0%" in text
    assert "fwc: checking (FWC401)  55%" in text
    assert text.endswith("\r")  # the line is blanked and the cursor back at its start
    assert Progress.for_terminal(Terminal(), enabled=False).live is False


def test_check_and_compile_show_progress_on_a_terminal(tmp_path):
    code, _, screen = run_on_terminal("check", str(EDGE), cwd=tmp_path)
    assert code == 0
    assert "fwc: parsing" in screen and "fwc: checking (FWC" in screen
    code, out, screen = run_on_terminal("compile", str(EDGE), "-o", str(tmp_path / "out"),
                                         cwd=tmp_path)
    assert code == 0, screen
    assert "fwc: compiling edge/fw1" in screen and "fwc: writing  95%" in screen
    assert "edge/fw1:" in out  # the summary still goes to stdout


def test_no_progress_in_pipes_or_json(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    piped = subprocess.run([sys.executable, "-m", "fwc", "check", str(EDGE)], env=env,
                           capture_output=True, text=True, cwd=tmp_path)
    assert piped.returncode == 0
    assert "fwc: parsing" not in piped.stderr and "\r" not in piped.stderr
    code, out, screen = run_on_terminal("check", "--format", "json", str(EDGE), cwd=tmp_path)
    assert code == 0 and '"errors": 0' in out
    assert "fwc:" not in screen


class _Stream(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


def test_lab_progress_only_on_a_terminal():
    from fwc.lab.runner import _stderr_progress

    terminal, pipe = _Stream(True), _Stream(False)
    for stream in (terminal, pipe):
        emit = _stderr_progress(0.0, stream)
        emit("electing a master")
        emit("failover drill")
    lines = terminal.getvalue().splitlines()
    assert len(lines) == 2 and lines[0].startswith("[lab ") and "electing" in lines[0]
    assert pipe.getvalue() == ""


def test_no_progress_with_sarif_or_github_on_a_terminal(tmp_path):
    for fmt in ("sarif", "github"):
        code, out, screen = run_on_terminal("check", "--format", fmt, str(EDGE), cwd=tmp_path)
        assert code == 0
        assert "fwc:" not in screen
        assert out or fmt == "github"
