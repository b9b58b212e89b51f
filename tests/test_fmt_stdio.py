"""`fwc fmt -` (stdin to stdout), `fwc fmt --diff`, and the pre-commit hooks that run them."""

from __future__ import annotations

import shlex
import subprocess
from functools import partial

import yaml
from conftest import REPO, run_fwc

from fwc.cli import build_parser

UGLY = "host   web    192.0.2.80\nhost a 192.0.2.1\n\n\n\nservice   http tcp/80\n"
PRETTY = "host    web  192.0.2.80\nhost    a    192.0.2.1\n\nservice http tcp/80\n"


# The checkout's fwc in a clean environment (PATH=/usr/bin:/bin only).
fwc = partial(run_fwc, cwd=REPO, clean_env=True)


def test_fmt_stdin_to_stdout():
    result = fwc("fmt", "-", stdin=UGLY)
    assert result.returncode == 0, result.stderr
    assert result.stdout == PRETTY
    assert fwc("fmt", "-", stdin=PRETTY).stdout == PRETTY  # idempotent


def test_fmt_stdin_syntax_error_prints_nothing_on_stdout():
    result = fwc("fmt", "-", stdin="host web {\n")
    assert result.returncode == 1
    assert result.stdout == ""
    assert "<stdin>:1:" in result.stderr and "error[FWC001]" in result.stderr


def test_fmt_stdin_check_and_diff():
    assert fwc("fmt", "--check", "-", stdin=PRETTY).returncode == 0
    checked = fwc("fmt", "--check", "-", stdin=UGLY)
    assert (checked.returncode, checked.stdout) == (1, "-\n")
    diff = fwc("fmt", "--diff", "-", stdin=UGLY)
    assert diff.returncode == 1
    assert diff.stdout.startswith("--- a/<stdin>\n+++ b/<stdin>\n@@")
    assert "-host   web    192.0.2.80\n-host a 192.0.2.1\n" in diff.stdout


def test_fmt_diff_writes_nothing_and_applies_as_a_patch(tmp_path):
    policy = tmp_path / "p.fw"
    policy.write_text(UGLY)
    tidy = tmp_path / "tidy.fw"
    tidy.write_text(PRETTY)
    result = fwc("fmt", "--diff", "p.fw", "tidy.fw", cwd=tmp_path)
    assert result.returncode == 1
    assert policy.read_text() == UGLY
    assert "tidy.fw" not in result.stdout
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    applied = subprocess.run(["git", "apply", "-"], input=result.stdout, text=True,
                             cwd=tmp_path, capture_output=True)
    assert applied.returncode == 0, applied.stderr
    assert policy.read_text() == PRETTY
    assert fwc("fmt", "--diff", "p.fw", cwd=tmp_path).returncode == 0


def test_fmt_stdin_cannot_mix_with_files():
    assert fwc("fmt", "-", "policies/edge.fw", stdin="").returncode == 2
    assert fwc("fmt", "--check", "--diff", "policies/edge.fw").returncode == 2


def test_pre_commit_hooks_run_real_fwc_commands(tmp_path):
    hooks = yaml.safe_load((REPO / ".pre-commit-hooks.yaml").read_text())
    ids = {h["id"] for h in hooks}
    assert {"fwc-fmt", "fwc-check"} <= ids
    good = tmp_path / "edge.fw"
    good.write_text((REPO / "policies" / "edge.fw").read_text())
    bad = tmp_path / "bad.fw"
    bad.write_text(UGLY)
    for hook in hooks:
        assert set(hook) >= {"id", "name", "entry", "language", "files"}
        assert hook["language"] == "python" and hook["files"] == r"\.fw$"
        words = shlex.split(hook["entry"])
        assert words[0] == "fwc"
        build_parser().parse_args([*words[1:], "x.fw"])  # the entry is a valid command line
        # pre-commit appends the staged file names to the entry
        clean = fwc(*words[1:], "edge.fw", cwd=tmp_path)
        assert clean.returncode == 0, (hook["id"], clean.stderr)
    assert fwc("fmt", "--check", "bad.fw", cwd=tmp_path).returncode == 1
