"""`fwc install --dry-run --format json`: the plan as data, the same commands as the text."""

from __future__ import annotations

import json
import re
import shlex

import pytest
from conftest import EDGE

from fwc.backend.files import BY_NAME, FILES
from fwc.cli import main
from fwc.install import scripts
from fwc.install.record import RECORD_DIR


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    out = tmp_path_factory.mktemp("plan") / "output"
    assert main(["compile", str(EDGE), "-o", str(out)]) == 0
    return out


def plan(capsys, compiled, *extra: str) -> tuple[int, str, str]:
    code = main(["install", "--all", "--dry-run", "--transport", "netns", "-o", str(compiled),
                 *extra, str(EDGE)])
    out, err = capsys.readouterr()
    return code, out, err


def test_json_plan_lists_order_files_and_every_command(capsys, compiled):
    code, out, err = plan(capsys, compiled, "--format", "json")
    assert code == 0, err
    report = json.loads(out)
    assert set(report) == {"dry_run", "clusters"} and report["dry_run"] is True
    [cluster] = report["clusters"]
    assert set(cluster) == {"cluster", "order", "notes", "members"}
    assert cluster["cluster"] == "edge"
    assert cluster["order"] == ["fw2", "fw1"]  # the backup first, the master last
    assert cluster["notes"] == ["cluster edge: installing fw2, fw1 in this order"]
    assert [m["member"] for m in cluster["members"]] == cluster["order"]
    for member in cluster["members"]:
        name = member["member"]
        assert set(member) == {"member", "transport", "target", "files", "steps"}
        assert member["transport"] == "netns" and member["target"] == f"{name} (netns {name})"
        # every compiled file of the member, by name, with its node path and exact size
        on_disk = sorted((compiled / "edge" / name).iterdir())
        assert member["files"] == [{"name": p.name, "path": BY_NAME[p.name].path,
                                    "bytes": p.stat().st_size} for p in on_disk]
        rows = [f for f in FILES if f.name in {p.name for p in on_disk}]
        steps = member["steps"]
        assert all(set(s) in ({"note"}, {"run", "script"}, {"run", "script", "stdin_bytes"})
                   for s in steps), steps
        runs = [s for s in steps if "run" in s]
        # each command is the script, run in the member's namespace by a shell
        assert all(s["run"] == ["ip", "netns", "exec", name, "sh", "-c", s["script"]]
                   for s in runs)
        scripts_run = [s["script"] for s in runs]
        assert scripts_run[0] == scripts.preflight(rows)
        assert scripts.refuse_if_pending() in scripts_run
        for script in (scripts.test_ruleset(rows), scripts.apply(rows)):
            assert scripts_run.count(script) == 1
        # what travels on stdin: each file once, in the table's order, with its size (never
        # its content), then the rollback and retire scripts and the install record
        sized = [(s["script"], s["stdin_bytes"]) for s in runs if "stdin_bytes" in s]
        staged = [(scripts.stage(f), (compiled / "edge" / name / f.name).stat().st_size)
                  for f in rows]
        assert sized[:len(rows)] == staged
        assert [script for script, _ in sized[len(rows):]] == [
            scripts.write(scripts.ROLLBACK_SCRIPT, 0o700),
            scripts.write(scripts.RETIRE_SCRIPT, 0o700),
            sized[-1][0]]
        assert sized[-1][0].startswith(f"mkdir -p -m 0755 {RECORD_DIR} ")
        assert all(size > 0 for _, size in sized)
        assert [s["note"] for s in steps if "note" in s] == [
            f"copying {len(rows)} files",
            "testing the new rulesets",
            "saving the running rules, ipsets and daemon configs",
            "arming the node-side rollback in 120 s unless confirmed",
            "applying",
            "reloading keepalived",
            "reloading conntrackd",
            "wait up to 30 s for one master holding every VIP and conntrackd answering",
            "wait up to 60 s for confirmation, then:",
            "without it:"]
    assert "s3cret" not in out  # contents never travel into the plan


def test_json_plan_has_the_text_plans_commands(capsys, compiled):
    _, text, _ = plan(capsys, compiled)
    _, out, _ = plan(capsys, compiled, "--format", "json")
    [cluster] = json.loads(out)["clusters"]
    lines = [f"# {note}" for note in cluster["notes"]]
    for member in cluster["members"]:
        for step in member["steps"]:
            if "note" in step:
                lines.append(f"# {member['member']}: {step['note']}")
                continue
            line = shlex.join(step["run"])
            if "stdin_bytes" in step:
                line += f"  <<< ({step['stdin_bytes']} bytes)"
            lines.append(line)
    # The install's lock token (pid-random) differs between two runs.
    token = re.compile(r"\b\d+-[0-9a-f]{12}\b")
    assert token.sub("TOKEN", "\n".join(lines) + "\n") == token.sub("TOKEN", text)


def test_json_needs_dry_run(capsys, compiled):
    code = main(["install", "--all", "--format", "json", "--transport", "netns", "-o",
                 str(compiled), str(EDGE)])
    _, err = capsys.readouterr()
    assert code == 2 and "--dry-run" in err
