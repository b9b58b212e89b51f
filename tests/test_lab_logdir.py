"""Where `fwc lab` writes its logs and the scripts it runs as root (a directory of its own),
and its JSON report (checked before the lab starts).

The default was `/tmp/fwc-lab-<prefix>`, made with `exist_ok`: another user who made that
directory first (the prefix is `fwc<pid>`) owned the place where the uplink drill writes
fwc-routes.sh and then runs it as root, and where root's log writes follow links.
"""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

import pytest
from conftest import skip_or_fail_without_root

from fwc.lab.netns import LabRefused
from fwc.lab.runner import lab_logdir


def test_the_default_is_a_new_private_directory_nobody_could_make_first(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    squatted = tmp_path / "fwc-lab-fwc4242"  # the old fixed name, made by someone else
    squatted.mkdir(mode=0o777)
    first, second = lab_logdir(None, "fwc4242"), lab_logdir(None, "fwc4242")
    assert first != second and squatted not in (first, second)
    for made in (first, second):
        assert made.parent == tmp_path and made.name.startswith("fwc-lab-fwc4242-")
        info = made.stat()
        assert stat.S_IMODE(info.st_mode) == 0o700 and info.st_uid == os.geteuid()


def test_a_given_directory_is_made_private_or_taken_when_it_is_yours(tmp_path):
    made = lab_logdir(tmp_path / "new" / "logs", "fwc1")
    assert made == tmp_path / "new" / "logs"
    assert stat.S_IMODE(made.stat().st_mode) == 0o700
    mine = tmp_path / "mine"
    mine.mkdir(mode=0o755)
    assert lab_logdir(mine, "fwc1") == mine


@pytest.mark.parametrize("mode", [0o777, 0o1777, 0o770])
def test_a_given_directory_others_may_write_to_is_refused(tmp_path, mode):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(mode)
    with pytest.raises(LabRefused, match="writable by you alone"):
        lab_logdir(shared, "fwc1")


def test_a_given_directory_another_user_owns_is_refused(tmp_path):
    skip_or_fail_without_root()
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o755)
    os.chown(theirs, 65534, 65534)
    with pytest.raises(LabRefused, match="owned by uid 65534"):
        lab_logdir(theirs, "fwc1")


def test_a_given_path_that_is_a_file_is_refused(tmp_path):
    path: Path = tmp_path / "file"
    path.write_text("")
    with pytest.raises(LabRefused, match="not a directory"):
        lab_logdir(path, "fwc1")


@pytest.mark.parametrize("where", ["missing/report.json", "dir"])
def test_a_json_report_that_cannot_be_written_is_refused_before_the_lab_starts(
        tmp_path, capsys, monkeypatch, where):
    # It was written after every drill had run, unguarded: a traceback, the report lost.
    skip_or_fail_without_root()  # (fwc lab refuses a non-root user before anything else)
    import fwc.lab.runner as runner
    from fwc.cli import main

    (tmp_path / "dir").mkdir()
    started: list[object] = []

    def instead(*args: object, **kwargs: object) -> None:
        started.append(args)
        raise LabRefused("(the test stands in for the lab: nothing starts)")

    monkeypatch.setattr(runner, "run_lab", instead)
    code = main(["lab", str(Path(__file__).parent.parent / "policies" / "edge.fw"),
                 "--json", str(tmp_path / where)])
    assert code == 2 and started == []
    err = capsys.readouterr().err
    assert "Traceback" not in err and f"--json {tmp_path / where}" in err
