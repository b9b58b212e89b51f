"""`fwc diff --format json`: the semantic summary and the changed files, as data."""

from __future__ import annotations

import json

from conftest import fwc_diff
from test_diff import edit


def test_json_summary_and_files(repo, capsys):
    edit(repo / "policies" / "edge.fw",
         "    reject from any      to any      service ident",
         "    accept from server   to monitor  service ssh\n"
         "    reject from any      to any      service ident")
    code, out, err = fwc_diff(capsys, "--format", "json")
    assert code == 1, err
    report = json.loads(out)
    assert report["changed"] is True
    [policy] = report["policies"]
    assert policy["policy"] == "policies/edge.fw"
    [cluster] = policy["clusters"]
    assert cluster["name"] == "edge" and cluster["status"] == "changed"
    assert cluster["policy_rules"]["added"] == ["accept from server to monitor service ssh"]
    allowed = [c["traffic"] for c in cluster["newly_allowed"]]
    assert any(t.startswith("from server to monitor service ssh") for t in allowed)
    assert cluster["newly_denied"] == []
    fw1 = next(m for m in cluster["members"] if m["name"] == "fw1")
    forward = next(c for c in fw1["chains"]
                   if (c["family"], c["table"], c["chain"]) == ("IPv4", "filter", "FORWARD"))
    assert len(forward["added"]) == 1 and forward["removed"] == forward["moved"] == []
    paths = {f["path"]: f for f in report["files"]}
    assert "edge/fw1/iptables.rules" in paths and "edge/MANIFEST" in paths
    assert paths["edge/fw1/iptables.rules"]["status"] == "modified"
    assert paths["edge/fw1/iptables.rules"]["insertions"] >= 1
    assert "diff --fwc" not in out  # no patch in JSON


def test_json_nothing_changed(repo, capsys):
    code, out, _ = fwc_diff(capsys, "--format", "json")
    assert code == 0
    assert json.loads(out) == {"changed": False, "policies": [], "files": []}


def test_json_refused_with_installed(repo, capsys):
    code, out, err = fwc_diff(capsys, "--format", "json", "--installed", "fw1",
                              "policies/edge.fw")
    assert code == 2 and out == "" and "--installed" in err
