"""tests/bad/: broken policies, each with the diagnostics it must give, run through the CLI.

Each `tests/bad/NAME.fw` starts with one or more header comments:

    # expect: CODE LINE:COL ["message fragment"]
    # expect: CODE FILE:LINE:COL      (FILE relative to tests/bad, for included files)
    # args: --strict                  (extra `fwc check` arguments, e.g. for warnings)

`fwc check` must exit 1, print every expected diagnostic at its position,
report no other error, and never show a traceback. Files under tests/bad/inc/
are only included by the others.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import run_fwc

BAD = Path(__file__).resolve().parent / "bad"
CASES = sorted(BAD.glob("*.fw"))
EXPECT = re.compile(r'^# expect: (FWC\d{3}) (?:(\S+):)?(\d+):(\d+)(?: "(.*)")?\s*$')
ARGS = re.compile(r"^# args: (.*)$")
REPORTED = re.compile(r"^(\S+?):(\d+):(\d+): (error|warning|note)\[(FWC\d{3})\]: (.*)$")


@dataclass(frozen=True)
class Expected:
    code: str
    file: str
    line: int
    column: int
    fragment: str | None


def read_header(path: Path) -> tuple[list[Expected], list[str]]:
    expected: list[Expected] = []
    args: list[str] = []
    for line in path.read_bytes().decode("utf-8", "replace").splitlines():
        if not line.startswith("#"):
            break
        if match := EXPECT.match(line):
            code, file, row, col, fragment = match.groups()
            expected.append(Expected(code, file or path.name, int(row), int(col), fragment))
        elif match := ARGS.match(line):
            args += match.group(1).split()
    return expected, args


def test_corpus_is_not_empty_and_every_file_has_an_expectation():
    assert len(CASES) >= 30
    assert [p.name for p in CASES if not read_header(p)[0]] == []


@pytest.mark.parametrize("path", CASES, ids=lambda p: p.stem)
def test_bad_policy(path: Path):
    expected, args = read_header(path)
    result = run_fwc("check", *args, path.name, cwd=BAD)
    output = result.stdout + result.stderr
    assert "Traceback" not in output, output
    assert result.returncode == 1, output
    reported = [REPORTED.match(line) for line in output.splitlines()]
    found = [(m.group(5), m.group(1), int(m.group(2)), int(m.group(3)), m.group(4), m.group(6))
             for m in reported if m]
    for want in expected:
        hits = [f for f in found if f[:4] == (want.code, want.file, want.line, want.column)]
        assert hits, f"expected {want.code} at {want.file}:{want.line}:{want.column}\n{output}"
        if want.fragment:
            assert any(want.fragment in h[5] for h in hits), output
    wanted = {(w.code, w.file, w.line, w.column) for w in expected}
    other_errors = [f for f in found if f[4] == "error" and f[:4] not in wanted]
    assert other_errors == [], output
