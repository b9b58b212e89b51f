"""`fwc status FILE`: what each node of the policy's clusters runs, from its install record.

Per member: when fwc last installed it, by whom, from which policy revision, and
whether the MANIFEST installed there is the one in the compiled output now. Exit 0
when every node asked holds a record matching the compiled output, 1 when one has
none or another, 2 for usage errors or a node that cannot be asked.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from fwc.commands.install import UsageError, load_policy
from fwc.install.record import describe, parse_record, read_command
from fwc.install.transport import (
    InventoryError,
    TransportError,
    make_transport,
    read_inventory,
)

EXIT_OK, EXIT_DIFFERENT, EXIT_USAGE = 0, 1, 2


def compiled_manifest(output: Path, cluster: str) -> str | None:
    try:
        return (output / cluster / "MANIFEST").read_text(encoding="utf-8")
    except OSError:
        return None


def run(args: argparse.Namespace) -> int:
    try:
        policy = load_policy(args.file, args.include_path)
        inventory = read_inventory(Path(args.inventory)) if args.inventory else {}
        chosen = [(c, m) for c in policy.clusters for m in c.members
                  if args.member is None or m.name == args.member]
        if not chosen:
            known = ", ".join(m.name for c in policy.clusters for m in c.members)
            raise UsageError(f"no member '{args.member}' in the policy (members: {known})")
        transports = {m.name: make_transport(args.transport, m.name, ssh_target=m.ssh,
                                             inventory=inventory, ssh=args.ssh)
                      for _, m in chosen}
    except (UsageError, InventoryError) as exc:
        print(f"fwc status: {exc}", file=sys.stderr)
        return EXIT_USAGE
    # Each cluster's compiled MANIFEST, read once for all its members.
    compiled = {name: compiled_manifest(Path(args.output), name)
                for name in dict.fromkeys(c.name for c, _ in chosen)}
    rows = []
    unreachable = False
    for cluster, member in chosen:
        row: dict[str, object] = {"cluster": cluster.name, "member": member.name}
        try:
            result = transports[member.name].run(read_command(), timeout=30)
        except TransportError as exc:
            result = None
            row["error"] = str(exc)
        if result is not None and not result.ok:
            row["error"] = result.reason()
        if "error" in row:
            unreachable = True
            rows.append(row)
            continue
        assert result is not None
        record = parse_record(result.stdout)
        if record is None:
            row["installed"] = None
        else:
            manifest = record.pop("manifest")
            row["installed"] = record
            ours = compiled[cluster.name]
            row["matches_compiled"] = ours is not None and manifest == ours
        rows.append(row)
    if args.format == "json":
        sys.stdout.write(json.dumps({"nodes": rows}, indent=2) + "\n")
    else:
        for row in rows:
            print(_line(row, args.output))
    if unreachable:
        return EXIT_USAGE
    return EXIT_OK if all(r.get("matches_compiled") for r in rows) else EXIT_DIFFERENT


def _line(row: dict[str, object], output: str) -> str:
    name = f"{row['cluster']}/{row['member']}"
    if "error" in row:
        return f"{name}: cannot ask the node: {row['error']}"
    record = row["installed"]
    if not isinstance(record, dict):
        return f"{name}: no install record (not installed by fwc, or by a version without " \
               "records)"
    same = "matches" if row["matches_compiled"] else "differs from"
    return f"{name}: {describe(record)}; its MANIFEST {same} {output}/{row['cluster']}/MANIFEST"
