"""`fwc lab` command-line glue: the lead's fwc/cli.py calls these two functions."""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from fwc.lab.arguments import add_lab_arguments  # noqa: F401 - re-exported
from fwc.lab.netns import LabError, lab_namespaces, leftover_labs, require_root, teardown
from fwc.lab.topology import LabCluster


def run_lab(args: argparse.Namespace) -> int:
    from fwc.lab.report import render_text, write_json
    from fwc.lab.runner import LabOptions, LabRefused, run_lab_cluster

    # The lead's `fwc lab` parser has fewer options than ours: default the rest.
    for name, default in (
        ("compiled", None),
        ("logdir", None),
        ("prefix", None),
        ("json_out", getattr(args, "json", None)),
        ("cluster", None),
        ("include_path", []),
    ):
        if getattr(args, name, None) is None:
            setattr(args, name, default)
    for name in ("compiled", "logdir", "json_out", "file"):
        if isinstance(getattr(args, name), str):
            setattr(args, name, Path(getattr(args, name)))
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
    try:
        with tempfile.TemporaryDirectory(prefix="fwc-lab-compile-") as tmp:
            cluster, compiled = _load(args, Path(tmp))
            fast = None
            if args.file.suffix != ".json":
                from fwc.lab.adapter import fast_keepalived_confs

                fast = (
                    fast_keepalived_confs(
                        args.file, cluster_name=cluster.name, include_path=args.include_path
                    )
                    or None
                )
            timing: dict[float, dict[str, str]] = {}
            if getattr(args, "runs", 0) and args.file.suffix != ".json":
                from fwc.lab.adapter import fast_keepalived_confs

                for advert in args.adverts:
                    timing[advert] = fast_keepalived_confs(
                        args.file, advert_ms=round(advert * 1000), cluster_name=cluster.name,
                        include_path=args.include_path)
            options = LabOptions(
                keep=args.keep,
                remap=args.remap,
                quick=args.quick,
                logdir=args.logdir,
                prefix=args.prefix,
                fast_keepalived=fast,
                timing_runs=getattr(args, "runs", 0) or 0,
                timing_adverts=getattr(args, "adverts", (0.1, 0.05)),
                timing_keepalived=timing or None,
            )
            report = run_lab_cluster(cluster, compiled, options)
    except LabRefused as exc:
        print(f"fwc lab: refused: {exc}", file=sys.stderr)
        return 2
    except LabError as exc:
        print(f"fwc lab: {exc}", file=sys.stderr)
        return 1
    print(render_text(report))
    if args.json_out:
        write_json(report, args.json_out)
        print(f"fwc lab: JSON report written to {args.json_out}", file=sys.stderr)
    return 0 if report.ok else 1


def _load(args: argparse.Namespace, tmp: Path) -> tuple[LabCluster, Path]:
    """(LabCluster, DIR/<cluster>) from a .json spec or a policy file."""
    from fwc.lab.spec import load_spec

    if args.file.suffix == ".json":
        if args.compiled is None:
            raise LabError("a .json lab spec needs --compiled DIR")
        cluster = load_spec(args.file)
        return cluster, args.compiled / cluster.name
    from fwc.lab.adapter import load_policy_cluster

    return load_policy_cluster(
        args.file, args.compiled, tmp, args.cluster, include_path=args.include_path
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fwc lab")
    add_lab_arguments(parser)
    return run_lab(parser.parse_args(argv))
