"""Help that teaches: every option has help, every sub-command's --help ends with two or
three examples that parse, compile --help names the default output directory, and the
man page fwc(1) is generated from the same parser (docs/fwc.1, current)."""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess

import pytest
from conftest import REPO

from fwc.cli import build_parser
from fwc.commands.manpage import MAN_PAGE, render
from fwc.commands.teach import EXAMPLES, subcommands

PARSER = build_parser()
SUBS = subcommands(PARSER)


@pytest.mark.parametrize("name", list(SUBS))
def test_every_option_has_help(name):
    for action in SUBS[name]._actions:
        if isinstance(action, argparse._HelpAction) or action.help == argparse.SUPPRESS:
            continue
        assert action.help and len(action.help) > 8, f"fwc {name} {action.dest}: no help"


@pytest.mark.parametrize("name", list(SUBS))
def test_help_ends_with_examples_that_parse(name):
    text = SUBS[name].format_help()
    assert 2 <= len(EXAMPLES[name]) <= 3
    tail = text[text.rindex("examples:"):]
    for command, what in EXAMPLES[name]:
        assert command in tail and what in tail
        line = command.removeprefix("source <(").removesuffix(")").removeprefix("sudo ")
        words = shlex.split(line.split(" > ")[0].split(" < ")[0])
        assert words[0] == "fwc" and words[1] == name
        try:
            PARSER.parse_known_args(words[1:])  # the example is a valid command line
        except SystemExit as exc:  # pragma: no cover - the failure message is the point
            pytest.fail(f"example does not parse: {command} ({exc})")


def test_compile_help_states_the_default_output_directory():
    assert "default: ./output" in " ".join(SUBS["compile"].format_help().split())


def test_man_page_is_current_and_renders_cleanly():
    page = render(PARSER)
    path = REPO / MAN_PAGE
    if os.environ.get("FWC_UPDATE_GOLDEN"):
        path.write_text(page, encoding="utf-8")
    assert path.read_text(encoding="utf-8") == page, (
        f"{MAN_PAGE} is stale: FWC_UPDATE_GOLDEN=1 pytest tests/test_help.py")
    for name in SUBS:
        assert f".SS fwc {name}" in page
    done = subprocess.run(["groff", "-man", "-Tutf8", "-ww", "-z", str(path)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    shown = subprocess.run(["man", "-l", str(path)], capture_output=True, text=True,
                           timeout=60, env={**os.environ, "MANPAGER": "cat", "COLUMNS": "100"})
    assert "fwc compile" in shown.stdout and "--redact-secrets" in shown.stdout
