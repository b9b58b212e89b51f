"""Shared test fixtures.

Tests that need root and network namespaces use the `needs_root` fixture (or the
`root` marker). In CI (CI=true) they must run: a missing capability fails the
test. Off CI they are skipped with the reason printed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
POLICIES = REPO / "policies"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
REQUIRED_TOOLS = ("ip", "iptables-restore", "ip6tables-restore", "keepalived", "conntrackd",
                  "nsenter", "unshare")


def _root_problem() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespaces)"
    missing = [t for t in REQUIRED_TOOLS if shutil.which(t) is None]
    if missing:
        return f"missing tools: {', '.join(missing)} (tests/run.sh installs them)"
    probe = subprocess.run(["ip", "netns", "add", f"fwcprobe{os.getpid()}"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        return f"cannot create network namespaces: {probe.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", f"fwcprobe{os.getpid()}"], capture_output=True)
    return None


_ROOT_PROBLEM: list[str | None] = []


def root_problem() -> str | None:
    if not _ROOT_PROBLEM:
        _ROOT_PROBLEM.append(_root_problem())
    return _ROOT_PROBLEM[0]


def skip_or_fail_without_root() -> None:
    """When root tests cannot run here: fail in CI, elsewhere skip with the reason printed."""
    problem = root_problem()
    if problem is None:
        return
    if IN_CI:
        pytest.fail(f"CI must run this test, but: {problem}")
    print(f"\nSKIP (not CI): {problem}", file=sys.stderr)
    pytest.skip(problem)


@pytest.fixture
def needs_root() -> None:
    skip_or_fail_without_root()


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.get_closest_marker("root") or item.get_closest_marker("lab"):
            item.fixturenames.insert(0, "needs_root")


@pytest.fixture
def policies() -> Path:
    return POLICIES


def write_policy(tmp_path: Path, text: str, name: str = "p.fw") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path
