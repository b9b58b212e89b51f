"""Golden files: the compiled output of every example policy, byte for byte.

An intended change to the generated files is recorded with

    FWC_UPDATE_GOLDEN=1 python3 -m pytest tests/test_compile_golden.py

and reviewed in the diff of tests/golden/. The committed output/ tree must be a
fresh compile of policies/*.fw too (`fwc compile policies/X.fw` for each).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from fwc.cli import main as fwc_main

REPO = Path(__file__).resolve().parent.parent
POLICY_FILES = sorted((REPO / "policies").glob("*.fw"))
GOLDEN = Path(__file__).resolve().parent / "golden"
UPDATE = os.environ.get("FWC_UPDATE_GOLDEN") == "1"


def tree(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes()
            for p in sorted(directory.rglob("*")) if p.is_file()}


def compile_into(path: Path, out: Path) -> None:
    assert fwc_main(["compile", str(path), "-o", str(out)]) == 0, path


@pytest.mark.parametrize("path", POLICY_FILES, ids=[p.stem for p in POLICY_FILES])
def test_output_matches_the_golden_files(path: Path, tmp_path: Path):
    compile_into(path, tmp_path / "out")
    fresh = tree(tmp_path / "out")
    golden_dir = GOLDEN / path.stem
    if UPDATE:
        shutil.rmtree(golden_dir, ignore_errors=True)
        shutil.copytree(tmp_path / "out", golden_dir)
    assert golden_dir.is_dir(), f"no golden files for {path.name}: run with FWC_UPDATE_GOLDEN=1"
    golden = tree(golden_dir)
    assert sorted(fresh) == sorted(golden), "files differ; FWC_UPDATE_GOLDEN=1 records them"
    for name, content in fresh.items():
        assert content == golden[name], f"{name} differs from tests/golden/{path.stem}/{name}"


def test_every_golden_directory_has_a_policy():
    if not GOLDEN.is_dir():
        pytest.fail("tests/golden is missing: run with FWC_UPDATE_GOLDEN=1")
    stale = sorted({p.name for p in GOLDEN.iterdir()} - {p.stem for p in POLICY_FILES})
    if UPDATE:
        for name in stale:
            shutil.rmtree(GOLDEN / name)
        stale = []
    assert stale == [], "golden files of policies that no longer exist"


def test_committed_output_is_a_fresh_compile_of_the_examples(tmp_path: Path):
    for path in POLICY_FILES:
        compile_into(path, tmp_path / "out")
    fresh = tree(tmp_path / "out")
    committed = tree(REPO / "output") if (REPO / "output").is_dir() else {}
    committed = {k: v for k, v in committed.items() if not k.endswith(".gitkeep")}
    assert sorted(committed) == sorted(fresh), \
        "output/ is stale: run fwc compile policies/X.fw for every example and commit output/"
    for name, content in fresh.items():
        assert committed[name] == content, f"output/{name} is stale"
