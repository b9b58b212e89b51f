"""Clumsy use of the command line: odd files where fwc reads or writes one, and option
values out of range, end in one line (or a diagnostic) and an exit status, never in a
traceback, a hang or a file put where something else was."""

from __future__ import annotations

import os
import resource
import stat
import subprocess
import sys

import pytest
from conftest import EDGE, REPO, run_fwc

from fwc.cli import build_parser, main

SAVE = "*filter\n:INPUT DROP [0:0]\n-A INPUT -p tcp --dport 22 -j ACCEPT\nCOMMIT\n"


@pytest.mark.parametrize("command", [
    ["graph", str(EDGE), "-o"],
    ["import", "iptables-save", "SAVE", "-o"],
])
def test_an_output_file_that_is_not_a_regular_file_is_left_alone(tmp_path, capsys, command):
    """-o FILE is renamed into place: over a FIFO, a directory or /dev/null (as root) the
    rename put a regular file where the FIFO, directory or device had been."""
    save = tmp_path / "g.save"
    save.write_text(SAVE, encoding="utf-8")
    command = [str(save) if word == "SAVE" else word for word in command]
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    (tmp_path / "link").symlink_to(fifo)
    (tmp_path / "dir").mkdir()
    for target in ("fifo", "link", "dir"):
        assert main([*command, str(tmp_path / target)]) in (1, 2)
        err = capsys.readouterr().err
        assert "Traceback" not in err and "not a regular file" in err, err
        assert stat.S_ISFIFO(os.stat(fifo).st_mode)
        assert stat.S_ISDIR(os.stat(tmp_path / "dir").st_mode)
        assert (tmp_path / "link").is_symlink()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir", "fifo", "g.save", "link"]


@pytest.mark.parametrize("command", [
    ["graph", str(EDGE), "-o"],
    ["import", "iptables-save", "SAVE", "-o"],
])
def test_an_output_file_is_written_through_its_link_with_its_mode(tmp_path, capsys, command):
    """fmt, graph and import write one way (fwc.commands.common.write_file): `graph -o`
    replaced a symbolic link with a file of its own and reset the mode to 0644."""
    save = tmp_path / "g.save"
    save.write_text(SAVE, encoding="utf-8")
    command = [str(save) if word == "SAVE" else word for word in command]
    target = tmp_path / "target"
    target.write_text("old\n", encoding="utf-8")
    target.chmod(0o640)
    (tmp_path / "link").symlink_to(target)
    assert main([*command, str(tmp_path / "link")]) == 0, capsys.readouterr().err
    assert (tmp_path / "link").is_symlink()
    assert target.read_text(encoding="utf-8") != "old\n"
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.save", "link", "target"]


def _small_memory() -> None:
    """A child's address space capped at 1 GiB: reading /dev/zero whole fails fast."""
    resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))


def test_fmt_reads_only_regular_files(tmp_path):
    """fmt read any path whole: on a FIFO it waited for ever, on /dev/zero it ended in a
    MemoryError traceback (and fed a FIFO, renamed a regular file over it). It refuses
    them as `fwc check` does (FWC011); a link to a policy is still formatted."""
    fifo = tmp_path / "p.fw"
    os.mkfifo(fifo)
    for path, kind in ((fifo, "a FIFO"), ("/dev/zero", "a character device")):
        done = run_fwc("fmt", str(path), timeout=30, preexec_fn=_small_memory)
        assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
        assert f"error[FWC011]: '{path}' is {kind}, not a regular file" in done.stderr
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)
    policy = tmp_path / "q.fw"
    policy.write_text("host  a 192.0.2.1\n", encoding="utf-8")
    (tmp_path / "link.fw").symlink_to(policy)
    assert main(["fmt", str(tmp_path / "link.fw")]) == 0
    assert (tmp_path / "link.fw").is_symlink()
    assert policy.read_text(encoding="utf-8") == "host a 192.0.2.1\n"


def test_import_reads_a_bounded_input(tmp_path):
    """import read its input whole: `/dev/zero` ended in a MemoryError traceback. A pipe
    still works (`fwc import iptables-save <(iptables-save)`); only the size is bounded."""
    done = run_fwc("import", "iptables-save", "/dev/zero", timeout=60, preexec_fn=_small_memory)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert "error[FWC706]: cannot read /dev/zero: it is larger than 64 MiB" in done.stderr
    assert done.stdout == ""
    done = run_fwc("import", "iptables-save", str(tmp_path / "none"))
    assert "error[FWC706]: cannot read " + str(tmp_path / "none") + ": No such file or " \
        "directory\n" in done.stderr


@pytest.mark.parametrize("option", ["--inventory", "--secrets"])
def test_inventory_and_secrets_files_are_read_bounded(tmp_path, option):
    """Both were read whole: `/dev/zero` ended in a MemoryError traceback (install,
    status, diff, export)."""
    done = run_fwc("install", str(EDGE), "--member", "fw1", "--dry-run", option, "/dev/zero",
                   "-o", str(tmp_path / "out"), timeout=60, preexec_fn=_small_memory)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.startswith("fwc install: ") and done.stderr.count("\n") == 1
    big = tmp_path / "big"
    big.write_bytes(b"#" * (2 << 20))
    big.chmod(0o600)
    done = run_fwc("install", str(EDGE), "--member", "fw1", "--dry-run", option, str(big),
                   "-o", str(tmp_path / "out"))
    assert done.returncode == 2 and f"{big} is larger than " in done.stderr, done.stderr


@pytest.mark.parametrize(("option", "value"), [
    ("--teardown", "/"), ("--teardown", ""), ("--teardown", "fwc1\n"), ("--prefix", "Bad/x"),
    ("--prefix", "fwcabcdefghijkl"),  # its uplink drill would run as fwcabcdefghijklu
])
def test_a_lab_prefix_is_checked_before_anything_runs(capsys, option, value):
    """`fwc lab --teardown /` was a LabError traceback (as root, once `ip`, keepalived...
    were found); `--prefix Bad/x` a FileNotFoundError once the policy was compiled; a
    12-character prefix failed the uplink drill after every other drill had run."""
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(["lab", "edge.fw", option, value])
    assert exit_.value.code == 2
    assert f"argument {option}: invalid lab prefix {value!r}" in capsys.readouterr().err
    for good in ("fwc1", "fwc4194304", "fwcabcdefghijk"):
        assert getattr(build_parser().parse_args(["lab", option, good]),
                       option.lstrip("-")) == good


def _close_stdout() -> None:
    os.close(1)


@pytest.mark.parametrize(("args", "status", "said"), [
    (["check", str(EDGE)], 0, ""),
    (["explain"], 1, "fwc: standard output is closed: what the command prints is lost\n"),
    (["check", "--format", "json", str(EDGE)], 1,
     "fwc: standard output is closed: what the command prints is lost\n"),
    (["graph", str(EDGE)], 2,
     "fwc graph: error: cannot write standard output: standard output is closed\n"),
])
def test_a_closed_standard_output_is_one_line_not_a_traceback(args, status, said):
    """Started with stdout closed (`fwc explain >&-`), sys.stdout is None: every command
    ended in an AttributeError traceback, at its first write or at the final flush."""
    done = subprocess.run([sys.executable, "-m", "fwc", *args], stdout=None,
                          stderr=subprocess.PIPE, text=True, timeout=60,
                          preexec_fn=_close_stdout, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert (done.returncode, done.stderr) == (status, said)


def _close_stdin() -> None:
    os.close(0)


@pytest.mark.parametrize(("args", "status", "said"), [
    (["fmt", "-"], 1, "fwc: error[FWC002]: cannot read standard input: standard input is "
                      "closed\n"),
    (["import", "iptables-save", "-"], 1, "fwc: error[FWC706]: cannot read -: standard input "
                                          "is closed\n"),
    (["check", str(EDGE)], 0, ""),
])
def test_a_closed_standard_input_is_a_diagnostic_not_a_traceback(args, status, said):
    """Started with stdin closed (`fwc fmt - <&-`), sys.stdin is None: fmt -, import - and
    install (is it a terminal?) ended in an AttributeError traceback."""
    done = subprocess.run([sys.executable, "-m", "fwc", *args], capture_output=True,
                          text=True, timeout=60, preexec_fn=_close_stdin,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == status and said in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
