"""The command line: exit codes, version, and that every sub-command's options reach it."""

from __future__ import annotations

from conftest import run_fwc

from fwc.cli import build_parser, main


def test_version_and_usage_exit_codes(capsys):
    assert main(["--version"]) == 0
    assert "fwc " in capsys.readouterr().out
    assert main([]) == 2
    assert main(["check"]) == 2
    assert main(["no-such-command"]) == 2


def test_explain_known_and_unknown_codes(capsys):
    assert main(["explain", "FWC212"]) == 0
    assert "8 characters" in capsys.readouterr().out
    assert main(["explain", "FWC999"]) == 2


def test_lab_options_are_the_ones_the_lab_reads():
    args = build_parser().parse_args(
        ["lab", "p.fw", "--json", "r.json", "--keep", "--remap", "--quick", "--compiled", "out",
         "--logdir", "logs", "--cluster", "edge", "--prefix", "fwcx"])
    assert (str(args.file), str(args.json_out), args.keep, args.remap, args.quick) == (
        "p.fw", "r.json", True, True, True)
    assert (str(args.compiled), str(args.logdir), args.cluster, args.prefix) == (
        "out", "logs", "edge", "fwcx")
    assert build_parser().parse_args(["lab", "--teardown", "fwcx"]).teardown == "fwcx"


def test_check_never_prints_a_traceback(tmp_path):
    bad = tmp_path / "bad.fw"
    bad.write_bytes(b"\xff\xfe host \x00 {{{\n")
    result = run_fwc("check", str(bad))
    assert result.returncode == 1
    assert "Traceback" not in result.stderr and "error[FWC" in result.stderr
