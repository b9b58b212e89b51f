"""`fwc check --format sarif` (valid SARIF 2.1.0) and `--format github` (workflow commands).

The SARIF schema is the official OASIS file, vendored under tests/data/sarif (with its
notice): the test runs offline.
"""

from __future__ import annotations

import json
import subprocess
import sys

import jsonschema
from conftest import REPO

from fwc.checks import load_registry
from fwc.checks.sarif import sarif_log
from fwc.diagnostics import Related, Span, error, render_github, warning

SCHEMA = json.loads((REPO / "tests" / "data" / "sarif" / "sarif-schema-2.1.0.json")
                    .read_text(encoding="utf-8"))
BAD = sorted((REPO / "tests" / "bad").glob("*.fw"))


def fwc(*args: str, cwd=REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fwc", *args], capture_output=True,
                          text=True, timeout=120, cwd=cwd,
                          env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})


def validate(log: object) -> None:
    jsonschema.Draft4Validator(SCHEMA).validate(log)


def test_check_sarif_of_the_bad_corpus_is_valid_and_complete():
    rel = [str(p.relative_to(REPO)) for p in BAD]
    result = fwc("check", "--format", "sarif", *rel)
    assert result.returncode == 1
    log = json.loads(result.stdout)
    validate(log)
    run = log["runs"][0]
    rules = run["tool"]["driver"]["rules"]
    assert [r["id"] for r in rules] == sorted(load_registry())
    assert run["results"], "the bad corpus must produce findings"
    json_out = json.loads(fwc("check", "--format", "json", *rel).stdout)
    assert len(run["results"]) == len(json_out["diagnostics"])
    for result_, diag in zip(run["results"], json_out["diagnostics"], strict=True):
        assert result_["ruleId"] == diag["code"]
        assert rules[result_["ruleIndex"]]["id"] == diag["code"]
        assert result_["level"] == diag["severity"]
        assert result_["message"]["text"].startswith(diag["message"])
        if "file" in diag:
            region = result_["locations"][0]["physicalLocation"]["region"]
            uri = result_["locations"][0]["physicalLocation"]["artifactLocation"]["uri"]
            assert uri == diag["file"] and region["startLine"] == diag["line"]
            assert region["startColumn"] == diag["column"]


def test_clean_policy_gives_a_valid_empty_run_and_exit_0():
    result = fwc("check", "--format", "sarif", "policies/edge.fw")
    assert result.returncode == 0, result.stderr
    log = json.loads(result.stdout)
    validate(log)
    assert log["runs"][0]["results"] == []
    assert result.stderr == ""


def test_sarif_escapes_paths_and_carries_related_locations():
    span = Span("policies/caf é#1.fw", 3, 5, 3, 9)
    other = Span("/abs/lib.fw", 1, 1, 1, 2)
    log = sarif_log([error("FWC102", "'web' is defined twice", span, hint="rename",
                           related=[Related(other, "first defined here")]),
                     warning("FWC103", "unused", None)])
    validate(log)
    first, second = log["runs"][0]["results"]
    location = first["locations"][0]["physicalLocation"]
    assert location["artifactLocation"] == {"uri": "policies/caf%20%C3%A9%231.fw",
                                            "uriBaseId": "%SRCROOT%"}
    assert location["region"] == {"startLine": 3, "startColumn": 5, "endLine": 3,
                                  "endColumn": 9}
    assert first["relatedLocations"][0]["physicalLocation"]["artifactLocation"] == {
        "uri": "file:///abs/lib.fw"}
    assert first["message"]["text"] == "'web' is defined twice\nhint: rename"
    assert "locations" not in second and second["level"] == "warning"


def test_github_annotations_escape_newlines_and_separators():
    span = Span("a,b:c.fw", 2, 3, 2, 7)
    text = render_github([error("FWC101", "undefined 'x'\n::error::injected", span,
                                hint="did you mean 'y'?"),
                          warning("FWC103", "unused 50%")])
    lines = text.splitlines()
    assert lines == [
        "::error file=a%2Cb%3Ac.fw,line=2,col=3,endLine=2,endColumn=7,title=fwc FWC101::"
        "undefined 'x'%0A::error::injected%0Ahint: did you mean 'y'?",
        "::warning title=fwc FWC103::unused 50%25",
    ]


def test_check_github_format_on_the_command_line():
    result = fwc("check", "--format", "github", "tests/bad/duplicate_object.fw")
    assert result.returncode == 1
    assert result.stdout.startswith("::error file=tests/bad/duplicate_object.fw,line=4,")
    assert "title=fwc FWC102::" in result.stdout
