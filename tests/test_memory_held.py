"""What a compile holds once a stage is done with it (issue 12: 100,000 rules in 500 MB).

The CLI runs without the cyclic collector (fwc.commands.common.without_cycle_collection),
so anything caught in a reference cycle lives to the end of the run: these tests count
live objects with the collector off, as `fwc compile` runs.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from fwc.checks import FLOWS_MEMO, NUMBERS_MEMO, SIDES_MEMO, SPENT_INDEXES, run_checks
from fwc.frontend import syntax
from fwc.frontend.loader import load
from fwc.model import Memo
from fwc.pipeline import analyse, checked


@pytest.fixture
def collector_off() -> Iterator[None]:
    was = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def _live_rule_decls() -> int:
    return sum(1 for o in gc.get_objects() if type(o) is syntax.RuleDecl)


# Counted against what was alive before (other tests of the session may hold trees).

def test_loading_leaves_no_syntax_tree_in_a_cycle(edge, collector_off):
    before = _live_rule_decls()
    program, _ = load(edge)
    assert _live_rule_decls() > before  # held by the program
    del program
    assert _live_rule_decls() == before


def test_check_and_compile_drop_the_syntax_trees_after_resolving(edge, collector_off):
    before = _live_rule_decls()
    analysis = analyse(edge, keep_syntax=False)
    assert analysis.ok
    assert _live_rule_decls() == before
    assert analysis.program.texts and all(not f.statements for f in analysis.program.files)


def test_by_default_the_syntax_trees_are_kept(edge, collector_off):
    before = _live_rule_decls()
    analysis = analyse(edge)
    assert _live_rule_decls() > before
    assert all(f.statements for f in analysis.program.files if f.path == str(edge))


def _memo_kinds(cluster) -> set[object]:
    return {key[0] for key in cluster.memo._values if isinstance(key, tuple) and key}


def test_the_checks_side_tables_are_dropped_once_they_ran(edge):
    """In one process (run_checks, as compile's worker runs them)."""
    analysis = analyse(edge, run_checks=False)
    assert analysis.policy is not None
    run_checks(analysis.policy)
    for cluster in analysis.policy.clusters:
        kinds = _memo_kinds(cluster)
        assert not kinds & {SIDES_MEMO, FLOWS_MEMO, NUMBERS_MEMO}, kinds
        assert "firewall" in kinds  # the model's own memo entries stay


def test_in_one_process_the_spent_shadowing_indexes_go_before_the_next_check(edge):
    """Above 105,000 rules and with --jobs 1 the checks and then the files run in one
    process: the shadowing check's indexes must not stay alive through the rest."""
    analysis = analyse(edge, run_checks=False)
    assert analysis.policy is not None
    clusters = analysis.policy.clusters
    held: dict[str, bool] = {}

    class Watch:
        def phase(self, name: str, share: float) -> None:
            held[name] = any(SPENT_INDEXES in c.memo._values for c in clusters)

    run_checks(analysis.policy, Watch())  # type: ignore[arg-type]
    after = [name for name in held if name > "checking (FWC401)"]
    assert "checking (FWC401)" in held and after
    assert not any(held[name] for name in after), held


def test_with_a_worker_the_parents_side_tables_go_with_the_model(edge):
    """`fwc check` with a worker (checked): the parent's side tables are not freed on its
    critical path (the process ends right after); they are the model's to free."""
    analysis = analyse(edge, run_checks=False)
    assert analysis.policy is not None
    checked(analysis.policy, jobs=2)
    for cluster in analysis.policy.clusters:
        assert FLOWS_MEMO in _memo_kinds(cluster)
        assert cluster.memo._values[SPENT_INDEXES]


def test_memo_drop_kind_drops_only_that_kind():
    memo = Memo()
    for key in [("a", 1), ("a", 2), ("b", 1), ("a",)]:
        memo.get(key, lambda: object())
    memo.drop_kind("a")
    assert list(memo._values) == [("b", 1)]
