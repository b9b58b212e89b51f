"""docs/ci.md's GitHub Actions workflow and GitLab CI job, run as written: every `run:` /
`script:` command, in a scratch git repository with a target branch and a feature
branch that changes a policy (`fwc` on PATH is this checkout)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO, git

DOC = (REPO / "docs" / "ci.md").read_text(encoding="utf-8")


def block(first_line: str) -> dict:
    for body in re.findall(r"```yaml\n(.*?)```", DOC, re.S):
        if body.startswith(first_line + "\n"):
            return yaml.safe_load(body)
    raise AssertionError(f"docs/ci.md has no yaml block starting with {first_line!r}")


@pytest.fixture
def work(tmp_path: Path) -> Path:
    """A clone on branch `feature` whose origin has `main`; `feature` adds a rule."""
    seed = tmp_path / "seed"
    (seed / "policies" / "lib").mkdir(parents=True)
    for policy in (REPO / "policies").glob("*.fw"):
        shutil.copy(policy, seed / "policies")
    for lib in (REPO / "policies" / "lib").glob("*.fw"):
        shutil.copy(lib, seed / "policies" / "lib")
    git(seed, "init", "-q", "-b", "main")
    fwc_bin(tmp_path)
    subprocess.run(["fwc", "fmt", *map(str, seed.glob("policies/**/*.fw"))], check=True,
                   capture_output=True, env=env(tmp_path))
    git(seed, "add", "-A")
    git(seed, "commit", "-q", "-m", "policies")
    git(tmp_path, "clone", "-q", "--bare", str(seed), str(tmp_path / "origin.git"))
    work = tmp_path / "work"
    git(tmp_path, "clone", "-q", str(tmp_path / "origin.git"), str(work))
    git(work, "checkout", "-q", "-b", "feature")
    edge = work / "policies" / "edge.fw"
    text = edge.read_text()
    marker = next(line for line in text.splitlines() if "reject from any" in line)
    edge.write_text(text.replace(marker, marker.replace("reject", "accept", 1).replace(
        "ident", "ssh ").rstrip() + "\n" + marker, 1))
    subprocess.run(["fwc", "fmt", str(edge)], check=True, capture_output=True,
                   env=env(tmp_path))
    git(work, "commit", "-q", "-am", "edge: a change to review")
    return work


def fwc_bin(tmp_path: Path) -> Path:
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    script = bindir / "fwc"
    script.write_text(f'#!/bin/sh\nPYTHONPATH={REPO} exec {sys.executable} -m fwc "$@"\n')
    script.chmod(0o755)
    return bindir


def env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {"PATH": f"{tmp_path / 'bin'}:/usr/bin:/bin", "HOME": str(tmp_path), **extra}


def run(script: str, cwd: Path, environment: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", script],
                          cwd=cwd, env=environment, capture_output=True, text=True,
                          timeout=600)


def test_github_actions_workflow_runs(work, tmp_path):
    workflow = block("# .github/workflows/fwc.yml")
    steps = workflow["jobs"]["fwc"]["steps"]
    runner = tmp_path / "runner"
    runner.mkdir()
    summary = tmp_path / "summary.md"
    environment = env(tmp_path, GITHUB_BASE_REF="main", RUNNER_TEMP=str(runner),
                      GITHUB_STEP_SUMMARY=str(summary))
    ran = []
    for step in steps:
        if "run" not in step or step.get("name") == "install fwc":
            assert "uses" in step or step.get("name") == "install fwc"
            continue
        assert step.get("if") in (None, "always()", "github.event_name == 'pull_request'")
        done = run(step["run"], work, environment)
        assert done.returncode == 0, (step["name"], done.stdout, done.stderr)
        ran.append(step["name"])
    assert ran == ["layout", "check", "SARIF for code scanning", "compile",
                   "what the change does"]
    sarif = json.loads((work / "fwc.sarif").read_text())
    assert sarif["version"] == "2.1.0" and sarif["runs"][0]["results"] == []
    for policy in ("edge", "dmz", "branch"):
        assert list((runner / "compiled" / policy).glob("*/MANIFEST"))
    report = json.loads((work / "fwc-diff.json").read_text())
    assert report["changed"] and report["policies"][0]["policy"] == "policies/edge.fw"
    assert "cluster edge (policies/edge.fw)" in summary.read_text()
    # a warning fails the check step and becomes an annotation
    edge = work / "policies" / "edge.fw"
    edge.write_text(edge.read_text() + "\nhost    stray    192.0.2.99\n")
    check = next(s for s in steps if s.get("name") == "check")
    done = run(check["run"], work, environment)
    assert done.returncode == 1
    assert done.stdout.startswith("::warning file=policies/edge.fw,line=")
    assert "title=fwc FWC103::" in done.stdout


def test_gitlab_ci_job_runs(work, tmp_path):
    job = block("# .gitlab-ci.yml")["fwc"]
    assert job["before_script"] == ["pip install fwc"]
    done = run("\n".join(job["script"]), work,
               env(tmp_path, CI_MERGE_REQUEST_TARGET_BRANCH_NAME="main",
                   CI_PIPELINE_SOURCE="merge_request_event"))
    assert done.returncode == 0, (done.stdout, done.stderr)
    assert "cluster edge (policies/edge.fw)" in done.stdout
    for artifact in job["artifacts"]["paths"]:
        assert (work / artifact).is_file()
    assert json.loads((work / "fwc-diff.json").read_text())["changed"] is True
    # a policy that does not compile at the target branch's side fails the job (exit 2)
    git(work, "checkout", "-q", "main")
    (work / "policies" / "edge.fw").write_text("host broken {\n")
    git(work, "commit", "-q", "-am", "broken")
    git(work, "push", "-q", "origin", "main")
    git(work, "checkout", "-q", "feature")
    diff_line = next(line for line in job["script"] if "--stat" in line)
    done = run(f'git fetch -q origin main\n{diff_line}', work,
               env(tmp_path, CI_MERGE_REQUEST_TARGET_BRANCH_NAME="main"))
    assert done.returncode != 0 and "does not compile at" in done.stderr
