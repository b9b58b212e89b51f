"""`fwc status` without nodes: the install records come from a stand-in transport, so the
command's own logic (one compiled MANIFEST read per cluster, the lines it prints, the
exit codes) is checked fast and without root; test_install_record runs it on real nodes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import REPO

from fwc.cli import main
from fwc.commands import status
from fwc.install.record import InstallRecord, describe, parse_record, record_input
from fwc.install.transport import Result, Transport

POLICY = REPO / "policies" / "edge.fw"
MANIFEST = "sha256 0123 fw1/iptables.rules\n"


class RecordedNode(Transport):
    """A node that answers the record query with RECORDS[member] (no record: empty)."""

    def __init__(self, member: str, records: dict[str, str]) -> None:
        super().__init__(member, "stand-in")
        self.records = records

    def run(self, command: str, *, input: str | None = None, timeout: float = 60.0) -> Result:
        return Result(0, self.records.get(self.member, ""), "")


@pytest.fixture
def nodes(monkeypatch, tmp_path):
    record = InstallRecord("edge", "policies/edge.fw", "abc123", "ops@admin",
                           "2026-12-01T12:00:00Z", MANIFEST)
    records = {"fw1": record_input(record, "fw1"), "fw2": record_input(record, "fw2")}
    monkeypatch.setattr(status, "make_transport",
                        lambda kind, member, **_: RecordedNode(member, records))
    reads: list[str] = []
    real = status.compiled_manifest

    def counted(output: Path, cluster: str) -> str | None:
        reads.append(cluster)
        return real(output, cluster)

    monkeypatch.setattr(status, "compiled_manifest", counted)
    (tmp_path / "out" / "edge").mkdir(parents=True)
    (tmp_path / "out" / "edge" / "MANIFEST").write_text(MANIFEST)
    return tmp_path / "out", reads, records


def test_status_reads_each_compiled_manifest_once_and_prints_the_record(nodes, capsys):
    out, reads, _ = nodes
    assert main(["status", "-o", str(out), str(POLICY)]) == 0
    assert reads == ["edge"]  # one MANIFEST read for both members
    said = "installed 2026-12-01T12:00:00Z by ops@admin from policies/edge.fw at revision abc123"
    assert capsys.readouterr().out.splitlines() == [
        f"edge/fw1: {said}; its MANIFEST matches {out}/edge/MANIFEST",
        f"edge/fw2: {said}; its MANIFEST matches {out}/edge/MANIFEST"]


def test_status_json_and_a_node_without_record_or_with_another_manifest(nodes, capsys):
    out, reads, records = nodes
    records["fw2"] = ""
    (out / "edge" / "MANIFEST").write_text(MANIFEST + "# changed\n")
    assert main(["status", "-o", str(out), "--format", "json", str(POLICY)]) == 1
    assert reads == ["edge"]
    rows = json.loads(capsys.readouterr().out)["nodes"]
    assert rows == [
        {"cluster": "edge", "member": "fw1", "matches_compiled": False,
         "installed": {"cluster": "edge", "member": "fw1", "policy": "policies/edge.fw",
                       "revision": "abc123", "by": "ops@admin", "at": "2026-12-01T12:00:00Z",
                       "fwc": rows[0]["installed"]["fwc"]}},
        {"cluster": "edge", "member": "fw2", "installed": None}]


def test_describe_marks_missing_fields():
    record = parse_record("# fwc install record\nat 2026-12-01T12:00:00Z\n--- MANIFEST\n")
    assert record is not None
    assert describe(record) == "installed 2026-12-01T12:00:00Z by ? from ? at revision ?"
