"""Packaging: a plain (non-editable) install carries the grammar and works from any
directory; the license, classifiers and supported Python range agree; the sdist carries
what a distribution packager needs to run the suite from it."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from pathlib import Path

import pytest
from conftest import IN_CI, REPO, cannot_run


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
    # the analysed grammar (fwc.frontend.tables): without it every process analyses
    tables = zipfile.ZipFile(wheel).read("fwc/frontend/tables.json").decode()
    assert tables == (REPO / "fwc" / "frontend" / "tables.json").read_text()
    # the templates' generated code (fwc.backend.render.templates)
    code = zipfile.ZipFile(wheel).read("fwc/backend/render/templates.json").decode()
    assert code == (REPO / "fwc" / "backend" / "render" / "templates.json").read_text()


def test_the_fwc_command_is_the_console_entry_point(wheel):
    """`fwc` runs fwc.__main__.console, which imports fwc.cli only where an interrupt is
    caught, and then fwc.cli.console (it ends the process with os._exit,
    tests/test_exit.py), not fwc.cli.main (which tests call in-process)."""
    archive = zipfile.ZipFile(wheel)
    [entry_points] = [n for n in archive.namelist() if n.endswith("entry_points.txt")]
    lines = archive.read(entry_points).decode().splitlines()
    assert "fwc = fwc.__main__:console" in [line.strip() for line in lines]


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


# -- metadata, license, sdist, supported Pythons (issue 17) --------------------------------

PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
TESTED_RANGE = [c.rsplit(" ", 1)[1] for c in PROJECT["classifiers"]
                if re.fullmatch(r"Programming Language :: Python :: 3\.\d+", c)]


def test_license_file_matches_the_metadata(wheel):
    text = (REPO / "LICENSE").read_text()
    assert PROJECT["license"] == {"text": "MIT"}
    assert text.startswith("MIT License\n") and "Permission is hereby granted" in text
    assert "License :: OSI Approved :: MIT License" in PROJECT["classifiers"]
    names = zipfile.ZipFile(wheel).namelist()
    assert any(n.endswith(".dist-info/licenses/LICENSE") or n.endswith(".dist-info/LICENSE")
               for n in names)
    assert any(n.startswith("fwc/library/std/") for n in names)  # the object library


def test_supported_python_range_is_stated_consistently():
    floor = PROJECT["requires-python"].removeprefix(">=")
    ordered = sorted(TESTED_RANGE, key=lambda v: int(v[2:]))
    assert TESTED_RANGE[0] == floor and ordered == TESTED_RANGE
    ruff = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["ruff"]
    assert ruff["target-version"] == "py" + floor.replace(".", "")
    assert (3, int(floor[2:])) <= sys.version_info[:2]


def _interpreter(version: str) -> str | None:
    """A python of VERSION that runs here: on PATH, or one pyenv installed (its shims on
    PATH do not run without `pyenv global`)."""
    found = [shutil.which(f"python{version}"),
             *sorted(str(p) for p in Path.home().glob(f".pyenv/versions/{version}.*/bin/python3"))]
    for candidate in found:
        if candidate and subprocess.run([candidate, "-c", "pass"], capture_output=True,
                                        timeout=60).returncode == 0:
            return candidate
    return None


# The stated versions this machine has (CI's machine: 3.11 as python3, 3.12 and 3.13
# from pyenv); a version without an interpreter here is not collected, never skipped.
FOUND_PYTHONS = {v: path for v in TESTED_RANGE if (path := _interpreter(v)) is not None}


def test_the_running_python_is_in_the_stated_range():
    assert f"{sys.version_info[0]}.{sys.version_info[1]}" in FOUND_PYTHONS
    if IN_CI:  # CI's machine has every stated version: none may go missing unnoticed
        assert sorted(FOUND_PYTHONS) == sorted(TESTED_RANGE), FOUND_PYTHONS


@pytest.mark.parametrize("version", sorted(FOUND_PYTHONS, key=lambda v: int(v[2:])))
def test_every_supported_python_found_here_runs_fwc(version, tmp_path):
    """fwc checks and compiles an example under each stated Python found here, with its
    runtime dependencies installed for that interpreter alone (pip --target)."""
    interpreter = FOUND_PYTHONS[version]
    path = [str(REPO)]
    has_deps = subprocess.run([interpreter, "-c", "import lark, jinja2, networkx"],
                              capture_output=True, timeout=60).returncode == 0
    if not has_deps:
        deps = tmp_path / "deps"
        wanted = [d for d in PROJECT["dependencies"]]
        got = subprocess.run([interpreter, "-m", "pip", "install", "-q",
                              "--disable-pip-version-check", "--target", str(deps), *wanted],
                             capture_output=True, text=True, timeout=600)
        assert got.returncode == 0, got.stderr
        path.append(str(deps))
    env = {"PYTHONPATH": ":".join(path), "PATH": "/usr/bin:/bin", "FWC_NO_CACHE": "1"}
    done = subprocess.run([interpreter, "-m", "fwc", "check", "policies/edge.fw"], cwd=REPO,
                          capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    out = tmp_path / "out"
    done = subprocess.run([interpreter, "-m", "fwc", "compile", "policies/edge.fw", "-o",
                           str(out)], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env=env)
    assert done.returncode == 0, done.stderr
    golden = REPO / "output" / "edge" / "fw1" / "iptables.rules"
    assert (out / "edge" / "fw1" / "iptables.rules").read_bytes() == golden.read_bytes()


@pytest.fixture(scope="module")
def sdist(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sdist")
    result = subprocess.run([sys.executable, "-m", "build", "--sdist", "--outdir", str(out),
                             str(REPO)], capture_output=True, text=True, timeout=600)
    if result.returncode != 0 and "No module named build" in result.stderr:
        cannot_run("python -m build is missing: pip install '.[test]'")
    assert result.returncode == 0, result.stderr
    [archive] = out.glob("fwc-*.tar.gz")
    with tarfile.open(archive) as tar:
        tar.extractall(out / "x", filter="data")
    [root] = (out / "x").iterdir()
    return root


def test_sdist_carries_what_the_suite_needs(sdist):
    for needed in ("LICENSE", "README.md", "pyproject.toml", ".pre-commit-hooks.yaml",
                   "grammar/fwc.lark", "docs/fwc.1", "docs/ci.md", "docs/checks.md",
                   "tests/conftest.py", "tests/run.sh", "tests/bad",
                   "tests/data/sarif/sarif-schema-2.1.0.json", "tests/data/sarif/NOTICE.md",
                   "policies/edge.fw", "policies/lib", "output/edge/MANIFEST",
                   "fwc/library/std/services.fw", "bench"):
        assert (sdist / needed).exists(), needed
    assert not list(sdist.rglob("__pycache__"))


def test_suite_runs_from_the_unpacked_sdist(sdist):
    """A packager's check: a part of the suite, from the sdist alone (its own tree)."""
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "tests/test_smoke.py", "tests/test_library.py",
                           "tests/test_compile_golden.py", "tests/test_help.py"],
                          cwd=sdist, capture_output=True, text=True, timeout=600,
                          env={"PYTHONPATH": str(sdist), "PATH": "/usr/bin:/bin",
                               "HOME": str(sdist)})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert " passed" in done.stdout
