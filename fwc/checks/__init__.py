"""The check registry: every diagnostic code fwc can emit, with its rationale.

A check is a small function `(policy) -> Iterable[Diagnostic]` registered with
`@check`. Diagnostics emitted by the parser or resolver are registered with
`describe` so that `fwc explain` and docs/checks.md know every code.
"""

from __future__ import annotations

import importlib
import traceback
from collections.abc import Callable, Iterable

from fwc.diagnostics import SILENT, Diagnostic, Reporter, Severity, error
from fwc.model import Policy
from fwc.model.records import dataclass

CheckFunction = Callable[[Policy], Iterable[Diagnostic]]

# Kinds of the cluster memo entries that checks share with each other (names: each
# matcher's side facts; rules: the filter flows of shadowing and DNAT, and the numbers
# of the rules' sides that rules, lowering and parity key their tables by): side tables of
# the checks only, dropped once they have all run (`run_checks`).
SIDES_MEMO = "name-check-sides"
FLOWS_MEMO = "filter-flows"
# The shadowing check's used-up indexes: freeing them costs ~0.05 s at 20,000 rules, so
# `fwc check`'s parent keeps them to its exit (fwc.pipeline.checked); `run_checks` frees
# them as soon as the check is done, since the other checks and the back half follow.
SPENT_INDEXES = (FLOWS_MEMO, "spent indexes")
NUMBERS_MEMO = "side-numbers"  # fwc.checks.sides.SideNumbers: the sides of the rules numbered

# Modules that register checks; imported on first use so that start-up stays fast.
CHECK_MODULES = ("codes", "names", "cluster", "ha", "parity", "rules", "expectations", "lowering",
                 "strings", "routing", "uplinks", "groups", "vocab", "export", "importing",
                 "capability", "addressing")


@dataclass(frozen=True, slots=True)
class CheckInfo:
    code: str
    title: str
    severity: Severity
    rationale: str
    stage: str  # parse, resolve, check, compile
    function: CheckFunction | None = None


REGISTRY: dict[str, CheckInfo] = {}


def describe(code: str, title: str, severity: Severity, rationale: str,
             stage: str = "resolve") -> None:
    if code in REGISTRY:
        raise ValueError(f"diagnostic code {code} registered twice")
    REGISTRY[code] = CheckInfo(code, title, severity, rationale.strip(), stage)


def check(code: str, title: str, severity: Severity, rationale: str) \
        -> Callable[[CheckFunction], CheckFunction]:
    def register(function: CheckFunction) -> CheckFunction:
        if code in REGISTRY:
            raise ValueError(f"check code {code} registered twice")
        REGISTRY[code] = CheckInfo(code, title, severity, rationale.strip(), "check", function)
        return function
    return register


def load_registry() -> dict[str, CheckInfo]:
    for name in CHECK_MODULES:
        try:
            importlib.import_module(f"fwc.checks.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"fwc.checks.{name}":
                raise
    return REGISTRY


def check_functions() -> list[CheckInfo]:
    """The registered checks in the order `run_checks` runs them (by code)."""
    return [info for info in sorted(load_registry().values(), key=lambda i: i.code)
            if info.function is not None]


def run_check(info: CheckInfo, policy: Policy) -> list[Diagnostic]:
    """One check; a crash becomes an FWC900 diagnostic, not a traceback."""
    assert info.function is not None
    try:
        return list(info.function(policy))
    except Exception as exc:  # noqa: BLE001 - a bug in one check must not hide the others
        where = traceback.extract_tb(exc.__traceback__)[-1]
        return [error("FWC900", f"internal error in check {info.code}: "
                      f"{type(exc).__name__}: {exc} ({where.filename}:{where.lineno})",
                      hint="please report this; the other checks still ran")]


def run_checks(policy: Policy, progress: Reporter = SILENT) -> list[Diagnostic]:
    """Run every registered check; a crashing check becomes a diagnostic, not a traceback."""
    out: list[Diagnostic] = []
    checks = check_functions()
    for done, info in enumerate(checks):
        progress.phase(f"checking ({info.code})", done / len(checks))
        out.extend(run_check(info, policy))
        for cluster in policy.clusters:
            cluster.memo.drop(SPENT_INDEXES)
    drop_side_tables(policy)
    return out


def drop_side_tables(policy: Policy) -> None:
    """Forget what the checks memoised on the clusters for each other (flows, sides):
    about a tenth of the memory of a large policy's model, which `fwc compile` would
    otherwise hold while it renders (issue 12)."""
    for cluster in policy.clusters:
        cluster.memo.drop_kind(SIDES_MEMO)
        cluster.memo.drop_kind(FLOWS_MEMO)
        cluster.memo.drop_kind(NUMBERS_MEMO)
