"""The committed output/ is the golden: a fresh compile of every example, byte for byte.

output/ is what `fwc compile policies/X.fw` writes for each example, and it is the
one record of the generated files (reviewed in its git diff). After an intended
change to the generated files, record it with

    FWC_UPDATE_GOLDEN=1 python3 -m pytest tests/test_compile_golden.py

which rewrites output/ from this session's compile (README.md, "Tests").
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from conftest import REPO, Examples

OUTPUT = REPO / "output"
UPDATE = os.environ.get("FWC_UPDATE_GOLDEN") == "1"
KEEP = ".gitkeep"


def committed_tree() -> dict[str, bytes]:
    if not OUTPUT.is_dir():
        return {}
    return {str(p.relative_to(OUTPUT)): p.read_bytes() for p in sorted(OUTPUT.rglob("*"))
            if p.is_file() and p.name != KEEP}


def record(examples: Examples) -> None:
    """Replace output/ by this session's compile of the examples."""
    fresh_clusters = set()
    for example in examples.all():
        for cluster in example.clusters:
            fresh_clusters.add(cluster.name)
            shutil.rmtree(OUTPUT / cluster.name, ignore_errors=True)
            shutil.copytree(example.out / cluster.name, OUTPUT / cluster.name)
    for stale in sorted(OUTPUT.iterdir()):
        if stale.is_dir() and stale.name not in fresh_clusters:
            shutil.rmtree(stale)


def test_committed_output_is_a_fresh_compile_of_the_examples(examples: Examples):
    if UPDATE:
        record(examples)
    fresh: dict[str, bytes] = {}
    for example in examples.all():
        fresh.update(example.tree())
    committed = committed_tree()
    hint = "FWC_UPDATE_GOLDEN=1 python3 -m pytest tests/test_compile_golden.py records it"
    assert sorted(committed) == sorted(fresh), f"output/ holds other files than a compile: {hint}"
    for name, content in fresh.items():
        assert committed[name] == content, f"output/{name} is stale: {hint}"


def test_scripts_are_executable_in_output(examples: Examples):
    """git keeps the exec bit: output/ must carry the mode the node gets for scripts."""
    for example in examples.all():
        for cluster in example.clusters:
            for f in cluster.files:
                path: Path = OUTPUT / cluster.name / f.path
                assert bool(path.stat().st_mode & 0o100) == bool(f.mode & 0o100), path
