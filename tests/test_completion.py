"""`fwc completion bash|zsh|fish`: the bash script run in a real bash, the fish script
asked by fish itself (`complete -C`), the zsh script syntax-checked by zsh."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, cannot_run

from fwc.checks import load_registry
from fwc.cli import build_parser
from fwc.commands import completion


@pytest.fixture(scope="module")
def shim(tmp_path_factory) -> Path:
    """A directory with an `fwc` on PATH running this checkout."""
    bindir = tmp_path_factory.mktemp("bin")
    script = bindir / "fwc"
    script.write_text(f'#!/bin/sh\nPYTHONPATH={REPO} exec {sys.executable} -m fwc "$@"\n')
    script.chmod(0o755)
    return bindir


def script(shell: str) -> str:
    return getattr(completion, shell)(build_parser())


def bash_complete(shim: Path, line: str) -> list[str]:
    """COMPREPLY for LINE (completing its last word; a trailing space starts a new one)."""
    words = line.split()
    if line.endswith(" "):
        words.append("")
    program = (script("bash") + "\nCOMP_WORDS=(" + " ".join(f"'{w}'" for w in words)
               + f")\nCOMP_CWORD={len(words) - 1}\n_fwc\nprintf '%s\\n' \"${{COMPREPLY[@]}}\"\n")
    done = subprocess.run(["bash", "--norc", "--noprofile", "-c", program], cwd=REPO,
                          capture_output=True, text=True, timeout=60,
                          env={"PATH": f"{shim}:/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    return [w for w in done.stdout.splitlines() if w]


def test_bash_completes_commands_options_values_members_codes_and_files(shim):
    commands = bash_complete(shim, "fwc ")
    assert {"check", "compile", "install", "status", "completion", "--version"} <= set(
        commands)
    assert bash_complete(shim, "fwc comp") == ["compile", "completion"]
    assert "--format" in bash_complete(shim, "fwc check --f")
    assert bash_complete(shim, "fwc check --format ") == ["text", "json", "sarif", "github"]
    assert bash_complete(shim, "fwc install policies/edge.fw --member ") == ["fw1", "fw2"]
    assert bash_complete(shim, "fwc diff --installed fw") == []  # no policy named yet
    assert bash_complete(shim, "fwc diff policies/edge.fw --installed fw") == ["fw1", "fw2"]
    codes = bash_complete(shim, "fwc explain FWC2")
    assert codes == sorted(c for c in load_registry() if c.startswith("FWC2"))
    assert "policies/edge.fw" in bash_complete(shim, "fwc compile policies/e")
    assert "policies" in bash_complete(shim, "fwc check pol")  # readline adds the /
    assert "README.md" not in bash_complete(shim, "fwc check READ")  # policies only
    assert bash_complete(shim, "fwc completion ") == ["bash", "zsh", "fish"]


def test_fish_completes_through_fish_itself(shim):
    if shutil.which("fish") is None:
        cannot_run("fish is not installed (tests/run.sh installs it)")
    path = shim / "fwc.fish"
    path.write_text(script("fish"))
    assert subprocess.run(["fish", "--no-execute", str(path)], capture_output=True,
                          timeout=60).returncode == 0

    def ask(line: str) -> list[str]:
        done = subprocess.run(["fish", "--no-config", "-c",
                               f"source {path}; complete -C '{line}'"], cwd=REPO,
                              capture_output=True, text=True, timeout=60,
                              env={"PATH": f"{shim}:/usr/bin:/bin", "HOME": str(shim)})
        assert done.returncode == 0, done.stderr
        return [w.split("\t")[0] for w in done.stdout.splitlines()]

    assert {"check", "compile", "status"} <= set(ask("fwc "))
    assert {"text", "json", "sarif", "github"} == set(ask("fwc check --format "))
    assert {"fw1", "fw2"} == set(ask("fwc install policies/edge.fw --member "))
    assert "--redact-secrets" in ask("fwc compile --")


def test_zsh_script_is_valid_zsh(shim):
    if shutil.which("zsh") is None:
        cannot_run("zsh is not installed (tests/run.sh installs it)")
    path = shim / "_fwc"
    path.write_text(script("zsh"))
    done = subprocess.run(["zsh", "-n", str(path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    text = path.read_text()
    assert text.startswith("#compdef fwc")
    assert "'--format=" not in text and "(text json sarif github)" in text


def test_completion_command(capsys):
    from fwc.cli import main

    assert main(["completion", "bash"]) == 0
    assert "complete -o filenames -F _fwc fwc" in capsys.readouterr().out
    assert main(["completion"]) == 2
    assert main(["completion", "--members", str(REPO / "policies" / "edge.fw")]) == 0
    assert capsys.readouterr().out == "fw1\nfw2\n"
    assert main(["completion", "--members", "/nonexistent.fw"]) == 0
    assert capsys.readouterr().out == ""
