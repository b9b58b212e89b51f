"""`fwc lab` command-line glue: `fwc lab` (fwc.commands.lab) and `python3 -m fwc.lab`."""

from __future__ import annotations

import argparse
import os
import stat
import sys
from pathlib import Path

from fwc.lab.arguments import add_lab_arguments  # noqa: F401 - re-exported
from fwc.lab.netns import (
    LabError,
    LabRefused,
    lab_namespaces,
    leftover_labs,
    require_root,
    teardown,
)


def run_lab(args: argparse.Namespace) -> int:
    from fwc.lab.adapter import load_source
    from fwc.lab.report import render_text, write_json
    from fwc.lab.runner import LabOptions, run_lab
    from fwc.model.vocabulary import Backend

    why = require_root()
    if why:
        print(f"fwc lab: {why}", file=sys.stderr)
        return 2
    if args.teardown:
        notes = teardown(args.teardown)
        for note in notes:
            print(note)
        left = lab_namespaces(args.teardown)
        print(f"teardown of {args.teardown}: {len(notes)} steps, {len(left)} namespaces left")
        return 0 if not left else 1
    for prefix in leftover_labs():
        print(
            f"fwc lab: note: lab {prefix} is still up (--keep or a killed run); "
            f"remove it with: fwc lab --teardown {prefix}",
            file=sys.stderr,
        )
    if args.file is None:
        print("fwc lab: a policy FILE is required", file=sys.stderr)
        return 2
    unwritable = _unwritable_report(args.json_out) if args.json_out else None
    if unwritable:  # said now, not after the minutes of drills whose report it would lose
        print(f"fwc lab: --json {args.json_out}: {unwritable}", file=sys.stderr)
        return 2
    try:
        source = load_source(args.file, args.compiled, args.cluster, args.include_path,
                             Backend(args.backend) if args.backend else None,
                             run_policy_commands=args.run_policy_commands)
        options = LabOptions(
            keep=args.keep,
            remap=args.remap,
            quick=args.quick,
            logdir=args.logdir,
            prefix=args.prefix,
            timing_runs=args.runs,
            timing_adverts=args.adverts,
            rto_min_ms=args.rto_min,
        )
        report = run_lab(source, options)
    except LabRefused as exc:
        print(f"fwc lab: refused: {exc}", file=sys.stderr)
        return 2
    except LabError as exc:
        print(f"fwc lab: {exc}", file=sys.stderr)
        return 1
    print(render_text(report))
    if report.error:
        # progress lines only reach a terminal: the error itself always reaches stderr
        print(f"fwc lab: {report.error}", file=sys.stderr)
    if args.json_out:
        try:
            write_json(report, args.json_out)
        except OSError as exc:
            print(f"fwc lab: cannot write the JSON report to {args.json_out}: "
                  f"{exc.strerror or exc}", file=sys.stderr)
            return 1
        print(f"fwc lab: JSON report written to {args.json_out}", file=sys.stderr)
    return 0 if report.ok else 1


def _unwritable_report(path: Path) -> str | None:
    """Why the JSON report could not be written to PATH, or None."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        parent = path.parent if str(path.parent) else Path(".")
        return None if parent.is_dir() else f"no directory {parent}"
    except OSError as exc:
        return exc.strerror or str(exc)
    return None if stat.S_ISREG(mode) else "exists and is not a regular file"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fwc lab")
    add_lab_arguments(parser)
    return run_lab(parser.parse_args(argv))
