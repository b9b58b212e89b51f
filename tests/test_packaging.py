"""A plain (non-editable) install carries the grammar and works from any directory."""

from __future__ import annotations

import subprocess
import sys
import zipfile

import pytest

from tests.conftest import REPO


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(REPO)],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    wheels = list(out.glob("fwc-*.whl"))
    assert len(wheels) == 1
    return wheels[0]


def test_wheel_contains_grammar_and_templates(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert "fwc/grammar/fwc.lark" in names
    grammar = zipfile.ZipFile(wheel).read("fwc/grammar/fwc.lark").decode()
    assert grammar == (REPO / "grammar" / "fwc.lark").read_text()


def test_installed_wheel_checks_policy_from_another_directory(wheel, tmp_path):
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target",
                    str(target), str(wheel)], check=True, capture_output=True, timeout=300)
    work = tmp_path / "elsewhere"
    work.mkdir()
    policy = work / "edge.fw"
    policy.write_text((REPO / "policies" / "edge.fw").read_text())
    env = {"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"}
    result = subprocess.run([sys.executable, "-c", "import fwc, sys; from fwc.cli import main; "
                             "sys.exit(main(['check', 'edge.fw']))"],
                            cwd=work, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    located = subprocess.run([sys.executable, "-c", "import fwc; print(fwc.__file__)"],
                             cwd=work, env=env, capture_output=True, text=True, timeout=60)
    assert located.stdout.startswith(str(target))
