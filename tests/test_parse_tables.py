"""The grammar tables shipped in fwc/frontend/tables.json (fwc.frontend.tables)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from fwc.frontend import parse, tables
from fwc.frontend.parse import PolicyParser

DATA = Path(tables.__file__).with_name(tables.DATA)
ROOT = Path(__file__).resolve().parents[1]


def test_committed_tables_are_those_of_the_grammar_and_lark() -> None:
    """Stale tables only cost speed at run time, so this test is what notices them."""
    fresh = tables.render(tables.analyse(tables.grammar_text()))
    if os.environ.get("FWC_UPDATE_GOLDEN") == "1":
        DATA.write_text(fresh, encoding="utf-8")
    assert DATA.read_text(encoding="utf-8") == fresh, (
        "fwc/frontend/tables.json is stale: run `python3 -m fwc.frontend.tables > "
        "fwc/frontend/tables.json` or this test with FWC_UPDATE_GOLDEN=1")


def test_analysis_is_the_same_bytes_under_any_string_hash_seed() -> None:
    outs = {subprocess.run([sys.executable, "-m", "fwc.frontend.tables"], check=True,
                           capture_output=True, text=True, cwd=ROOT,
                           env={**os.environ, "PYTHONHASHSEED": seed, "PYTHONPATH": str(ROOT)}
                           ).stdout for seed in ("1", "2")}
    assert len(outs) == 1


def test_shipped_tables_load_and_hold_no_class() -> None:
    raw = tables.shipped()
    assert raw is not None and raw["key"] == tables.key(tables.grammar_text())
    assert raw["data"]["options"]["_plugins"] == {}
    assert "lark_cython" not in DATA.read_text(encoding="utf-8")
    assert tables.load(tables.grammar_text())[:4] == tables.tables(raw)[:4]


def test_loaded_tables_equal_a_fresh_analysis() -> None:
    loaded = tables.tables(tables.shipped())
    fresh = tables.tables(tables.analyse(tables.grammar_text()))
    assert loaded.fragment_terminals == fresh.fragment_terminals
    assert loaded.terminals == fresh.terminals
    assert tables.render(tables.analyse(tables.grammar_text())) == \
        tables.render(tables.shipped())


def test_a_foreign_key_falls_back_to_analysing(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = tables.analyse

    def counting(grammar: str) -> dict:
        calls.append(grammar)
        return real(grammar)

    monkeypatch.setattr(tables, "analyse", counting)
    tables.load(tables.grammar_text())
    assert calls == []  # the shipped tables match
    other = tables.grammar_text() + "\n// changed\n"
    got = tables.load(other)
    assert calls == [other]
    assert got.terminals == tables.load(tables.grammar_text()).terminals


def test_unreadable_data_is_ignored(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(tables, "DATA", "no-such-file.json")
    assert tables.shipped() is None
    assert tables.load(tables.grammar_text()).terminals


def test_parsers_from_shipped_and_analysed_tables_build_the_same_tree(
        monkeypatch: pytest.MonkeyPatch) -> None:
    texts = [p.read_text(encoding="utf-8") for p in sorted((ROOT / "policies").rglob("*.fw"))]
    assert texts
    shipped = [PolicyParser().parse(t, "x.fw") for t in texts]
    parse._tables.cache_clear()
    monkeypatch.setattr(tables, "shipped", lambda: None)
    try:
        analysed = [PolicyParser().parse(t, "x.fw") for t in texts]
    finally:
        parse._tables.cache_clear()
    assert shipped == analysed


def test_lark_cython_builds_the_parser_when_installed() -> None:
    pytest.importorskip("lark_cython")
    parser = PolicyParser()
    assert type(parser._lark.parser.parser).__module__.startswith("lark_cython")
