"""The install record on the node (MANIFEST, revision, who, when, a `logger` line), read
by `fwc status` and `fwc diff --installed`; in the namespaces of test_install_netns."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
from conftest import REPO
from test_install_netns import (  # noqa: F401 - fixtures
    POLICY,
    FakeSettle,
    compiled_edge,
    install,
    lab,
)

from fwc.cli import main

pytestmark = pytest.mark.root


@pytest.fixture
def logged(tmp_path, monkeypatch):
    """A `logger` first on PATH (the node commands inherit it) that records its words."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    log = tmp_path / "logger.txt"
    script = bindir / "logger"
    script.write_text(f'#!/bin/sh\nprintf "%s|" "$@" >> {log}\necho >> {log}\n')
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    return log


def status(lab, capsys, *extra: str) -> tuple[int, str]:  # noqa: F811
    code = main(["status", "--transport", "netns", "--inventory", str(lab.inventory),
                 "-o", str(lab.output), *extra, str(POLICY)])
    return code, capsys.readouterr().out


def test_record_after_a_confirmed_install_read_by_status_and_diff(lab, capsys,  # noqa: F811
                                                                  logged):
    code, out = status(lab, capsys)
    assert code == 1 and out.count("no install record") == 2
    assert install(lab, "--all", "--confirm", settle=FakeSettle()) == 0
    capsys.readouterr()
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True,
                          text=True).stdout.strip()
    manifest = (lab.output / "edge" / "MANIFEST").read_text()
    for member, node in lab.nodes.items():
        record = (node.etc / "fwc" / "installed" / "record").read_text()
        fields = dict(line.split(" ", 1) for line in record.splitlines()
                      if not line.startswith("#"))
        assert fields["cluster"] == "edge" and fields["member"] == member
        assert fields["revision"].startswith(head)
        assert fields["policy"] == str(POLICY)
        assert "@" in fields["by"] and fields["at"].endswith("Z")
        assert (node.etc / "fwc" / "installed" / "MANIFEST").read_text() == manifest
        assert "s3cret" not in record
    lines = logged.read_text().splitlines()
    assert len(lines) == 2 and all(line.startswith("-t|fwc|--|fwc install: edge/")
                                   for line in lines)
    code, out = status(lab, capsys)
    assert code == 0, out
    assert out.count("MANIFEST matches") == 2 and f"at revision {head}" in out
    code, out = status(lab, capsys, "--member", "fw2", "--format", "json")
    [node] = json.loads(out)["nodes"]
    assert code == 0 and node["member"] == "fw2" and node["matches_compiled"] is True
    assert node["installed"]["revision"].startswith(head)
    main(["diff", "--no-color", "--installed", "fw1", "--transport", "netns",
          "--inventory", str(lab.inventory), str(POLICY)])
    assert capsys.readouterr().out.startswith("fw1: installed ")
    # another compiled output than the one installed: status says so
    (lab.output / "edge" / "MANIFEST").write_text(manifest + "# changed\n")
    code, out = status(lab, capsys)
    assert code == 1 and out.count("differs from") == 2


def test_no_record_without_a_confirmation(lab, capsys, logged):  # noqa: F811
    assert install(lab, "--member", "fw2", "--confirm-timeout", "0.5",
                   settle=FakeSettle()) == 1  # nobody confirms: rolled back
    capsys.readouterr()
    assert not (lab.nodes["fw2"].etc / "fwc" / "installed").exists()
    assert not logged.exists()
