"""`fwc install --dry-run --format json`: the plan as data, the same commands as the text."""

from __future__ import annotations

import json
import re
import shlex

import pytest
from checkkit import REPO

from fwc.backend.files import BY_NAME
from fwc.cli import main

EDGE = REPO / "policies" / "edge.fw"


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
    assert report["dry_run"] is True
    [cluster] = report["clusters"]
    assert cluster["cluster"] == "edge"
    assert cluster["order"] == ["fw2", "fw1"]  # the backup first, the master last
    for member in cluster["members"]:
        names = {f["name"] for f in member["files"]}
        on_disk = {p.name for p in (compiled / "edge" / member["member"]).iterdir()}
        assert names == on_disk
        for f in member["files"]:
            assert f["path"] == BY_NAME[f["name"]].path and f["bytes"] > 0
        runs = [s for s in member["steps"] if "run" in s]
        assert all(s["run"][:4] == ["ip", "netns", "exec", member["member"]] for s in runs)
        staged = [s["stdin_bytes"] for s in runs if "stdin_bytes" in s]
        assert sorted(staged) == sorted(f["bytes"] for f in member["files"]) or \
            len(staged) > len(member["files"])  # the rollback script travels on stdin too
        notes = [s["note"] for s in member["steps"] if "note" in s]
        assert any(n.startswith("copying") for n in notes)
        assert any("confirmation" in n for n in notes)
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
