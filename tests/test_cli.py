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


def test_the_collector_is_paused_while_the_command_is_imported_only(monkeypatch, capsys):
    import gc
    import importlib

    from fwc import cli

    seen: list[bool] = []
    real = importlib.import_module

    def probe(name: str):
        seen.append(gc.isenabled())
        return real(name)

    monkeypatch.setattr(cli.importlib, "import_module", probe)
    assert gc.isenabled()
    assert cli.main(["explain", "FWC101"]) == 0
    assert seen[0] is False  # the command's module (explain then imports the checks')
    assert all(seen[1:])
    assert gc.isenabled()  # as it was, for the command and after it
    gc.disable()
    try:
        assert cli.main(["explain", "FWC101"]) == 0
        assert not gc.isenabled()  # a caller's choice is kept
    finally:
        gc.enable()
