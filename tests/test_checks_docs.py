"""docs/checks.md is generated from the registry and must be current."""

from __future__ import annotations

from conftest import REPO

from fwc.checks import load_registry
from fwc.checks.docs import REGENERATE, render


def test_checks_md_is_current():
    committed = (REPO / "docs" / "checks.md").read_text(encoding="utf-8")
    assert committed == render(load_registry()), (
        f"docs/checks.md is stale: run `{REGENERATE}` and commit the result")


def test_every_code_is_documented_with_a_rationale():
    registry = load_registry()
    page = render(registry)
    for code, info in registry.items():
        assert f"### {code}" in page
        assert len(info.rationale) > 40, f"{code} needs a real rationale"
