"""How the parser is built (issue 10): never from a pickle others can write; one per run.

lark's `cache=True` stored the analysed grammar as a pickle at a predictable name in
the shared temp directory and loaded whatever pickle it found there: another local
user could plant one and run code as whoever runs fwc.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from conftest import EDGE, REPO

from fwc.frontend import parse, tables
from fwc.frontend.parse import PolicyParser, parse_text

# Writes, into the temp directory it is given, exactly the cache file lark's cache=True
# uses for fwc's grammar and parser options (the transformer and plugins are not part
# of lark's cache key), then replaces its pickle by one that creates MARKER when loaded.
PLANT = r"""
import glob, os, pathlib, pickle, sys, tempfile
from lark import Lark
from fwc.frontend.parse import grammar_text

Lark(grammar_text(), parser="lalr", maybe_placeholders=False, cache=True)
marker = pathlib.Path(sys.argv[1])

class Payload:
    def __reduce__(self):
        return (pathlib.Path.touch, (marker,))

names = glob.glob(os.path.join(tempfile.gettempdir(), ".lark_cache*"))
assert names, "lark wrote no cache file"
for name in names:
    with open(name, "rb") as f:
        digest = f.readline()
    with open(name, "wb") as f:
        f.write(digest)
        pickle.dump(Payload(), f)
"""

# What the parser did before: proves that the planted file is one lark would load.
OLD_PARSER = r"""
from lark import Lark
from fwc.frontend.parse import grammar_text
Lark(grammar_text(), parser="lalr", maybe_placeholders=False, cache=True)
"""


def run_python(tmpdir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TMPDIR": str(tmpdir), "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True,
                          timeout=120, cwd=REPO)


def test_a_planted_pickle_in_the_temp_dir_is_never_loaded(tmp_path: Path):
    shared_tmp = tmp_path / "shared-tmp"
    shared_tmp.mkdir()
    marker = tmp_path / "code-ran"
    planted = run_python(shared_tmp, "-c", PLANT, str(marker))
    assert planted.returncode == 0, planted.stderr
    # the plant works: lark with cache=True runs it
    run_python(shared_tmp, "-c", OLD_PARSER)
    assert marker.exists(), "the planted pickle is not one lark loads: the test proves nothing"
    marker.unlink()
    before = sorted(p.name for p in shared_tmp.iterdir())

    result = run_python(shared_tmp, "-m", "fwc", "check", str(EDGE))
    assert result.returncode == 0, result.stderr
    assert not marker.exists(), "fwc loaded a parser pickle from the shared temp directory"
    # and fwc leaves nothing there for the next run to trust
    assert sorted(p.name for p in shared_tmp.iterdir()) == before


@pytest.mark.parametrize("shipped", [True, False])
def test_the_grammar_is_analysed_once_per_process_not_per_path(
        monkeypatch: pytest.MonkeyPatch, shipped: bool):
    """With the shipped tables (fwc/frontend/tables.json) never; without them once."""
    built: list[object] = []
    real = tables.Lark

    class Counting(real):  # type: ignore[misc, valid-type]
        def __init__(self, *args: object, **kwargs: object) -> None:
            built.append(kwargs.get("transformer"))
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(tables, "Lark", Counting)
    if not shipped:
        monkeypatch.setattr(tables, "shipped", lambda: None)
    parse._tables.cache_clear()
    # No idle parser built from earlier tables: each path gets a parser built here.
    monkeypatch.setitem(parse._IDLE, False, [])
    try:
        text = EDGE.read_text(encoding="utf-8")
        for n in range(80):
            source, diagnostics = parse_text(text, f"f{n}.fw", PolicyParser())
            assert diagnostics == []
            assert {st.span.file for st in source.statements} == {f"f{n}.fw"}
        # one analysis at most, without a transformer bound to a path
        assert built == ([] if shipped else [None])
    finally:
        parse._tables.cache_clear()


def test_one_parser_names_each_file_it_parses():
    parser = PolicyParser()
    a, _ = parse_text("network a 192.0.2.0/24\n", "a.fw", parser)
    b, _ = parse_text("network b 192.0.2.0/24\n", "b.fw", parser)
    assert a.statements[0].span.file == "a.fw"
    assert b.statements[0].span.file == "b.fw"


def test_runs_in_threads_do_not_share_paths():
    text = EDGE.read_text(encoding="utf-8")
    wrong: list[str] = []
    start = threading.Barrier(4)

    def one_run(n: int) -> None:
        parser = PolicyParser()  # a parser per thread, as each load borrows its own
        start.wait(timeout=30)
        for round_ in range(15):
            name = f"t{n}-{round_}.fw"
            source, _ = parse_text(text, name, parser)
            wrong.extend(s.span.file for s in source.statements if s.span.file != name)

    _run_in_threads(one_run, 4)
    assert wrong == []


def _run_in_threads(run, count: int) -> None:
    """RUN(n) in COUNT threads at once, every one finished."""
    threads = [threading.Thread(target=run, args=(n,)) for n in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(t.is_alive() for t in threads)


@pytest.mark.parametrize("first", ["fwc.frontend.parse", "fwc.frontend.formatting"])
def test_lark_is_imported_without_the_regex_module_which_stays_importable(tmp_path, first):
    # fwc.frontend.larkimport: lark would import `regex` (~20 ms) for an option fwc never
    # uses. In a fresh process, whichever module of fwc imports lark first (compile and
    # check: the parser; fmt: the formatter): not imported, importable afterwards. A
    # stand-in `regex` makes the module installed whether or not this machine has it.
    (tmp_path / "regex.py").write_text("from re import compile  # noqa: F401\n",
                                       encoding="utf-8")
    code = ("import sys\n"
            f"import {first}\n"
            "from fwc.frontend.parse import PolicyParser, parse_text\n"
            "import lark.utils\n"
            "assert 'regex' not in sys.modules and not lark.utils._has_regex\n"
            "source, diagnostics = parse_text('host a 192.0.2.1\\n', 't.fw', PolicyParser())\n"
            "assert not diagnostics and len(source.statements) == 1\n"
            "import regex\n"
            "assert regex.compile('a').match('a')\n"
            "print('ok')\n")
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{REPO}"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, cwd=REPO, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("ok")


# -- parsers kept for the next run (fwc.frontend.parse.borrowed_parser) --------------------
def test_a_borrowed_parser_parses_as_a_new_one_after_any_run():
    # The runs before leave errors, comments, tokens and other paths behind; the run after
    # must see none of it: same tree, same spans, same comments as a parser built for it.
    text = EDGE.read_text(encoding="utf-8")
    with parse.borrowed_parser() as parser:
        parse_text("host a 192.0.2.1  # before\npolicy x {\n accept from\n}\n", "bad.fw",
                   parser)
        parse_text("host b 192.0.2.2  # other\n", "other.fw", parser)
    with parse.borrowed_parser() as again:
        assert again is parser  # idle, so taken again: this test compares something
        got, diagnostics = parse_text(text, "edge.fw", again)
    fresh, fresh_diagnostics = parse_text(text, "edge.fw", PolicyParser())
    assert diagnostics == fresh_diagnostics == []
    assert got == fresh
    assert got.comments == fresh.comments and got.comments
    assert {st.span.file for st in got.statements} == {"edge.fw"}


def test_an_idle_parser_holds_nothing_of_its_last_run():
    text = EDGE.read_text(encoding="utf-8")
    with parse.borrowed_parser(keep_tokens=True) as parser:
        parser.parse(text, "edge.fw")
        tokens, comments = parser.tokens, parser.comments
        assert tokens and comments
    assert parser.tokens == [] and parser.comments == []  # a whole file's tokens, let go
    assert tokens and comments  # what the run took stays the run's
    with parse.borrowed_parser(keep_tokens=True) as again:
        again.parse("host a 192.0.2.1\n", "a.fw")
        assert {t.value for t in again.tokens} == {"host", "a", "192.0.2.1"}


def test_two_runs_at_once_never_hold_the_same_parser():
    with parse.borrowed_parser() as outer, parse.borrowed_parser() as inner:
        assert inner is not outer
    with parse.borrowed_parser(keep_tokens=True) as tokens_kept:
        assert tokens_kept.keep_tokens and tokens_kept not in (outer, inner)


def test_analyses_in_one_process_build_the_parser_once(monkeypatch, tmp_path):
    from fwc.pipeline import analyse

    built: list[bool] = []
    original = PolicyParser.__init__

    def counting(self, keep_tokens: bool = False) -> None:
        built.append(keep_tokens)
        original(self, keep_tokens)

    monkeypatch.setattr(PolicyParser, "__init__", counting)
    monkeypatch.setitem(parse._IDLE, False, [])
    policy = tmp_path / "edge.fw"
    policy.write_text(EDGE.read_text(encoding="utf-8"), encoding="utf-8")
    first = analyse(policy, run_checks=False)
    second = analyse(policy, run_checks=False)
    assert first.ok and second.ok
    assert first.program.files == second.program.files
    assert built == [False]



def test_runs_in_threads_borrow_parsers_of_their_own():
    text = EDGE.read_text(encoding="utf-8")
    wrong: list[str] = []
    shared: list[str] = []
    held: list[PolicyParser] = []
    start = threading.Barrier(6)

    def one_run(n: int) -> None:
        start.wait(timeout=30)
        for round_ in range(10):
            name = f"b{n}-{round_}.fw"
            with parse.borrowed_parser() as parser:
                if any(other is parser for other in held):
                    shared.append(name)
                held.append(parser)
                source, _ = parse_text(text, name, parser)
                held.remove(parser)
            wrong.extend(s.span.file for s in source.statements if s.span.file != name)

    _run_in_threads(one_run, 6)
    assert shared == [] and wrong == []
