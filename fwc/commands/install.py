"""`fwc install [--member M | --all] FILE`: push a compiled cluster, with rollback.

Exit status: 0 every chosen node installed and confirmed, 1 a node failed
(or was rolled back), 2 usage errors (nothing was touched).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from fwc.backend.files import BY_NAME
from fwc.install.compiled import CompiledError, load_member_files, read_manifest
from fwc.install.node import Confirmer
from fwc.install.plan import (
    InstallOptions,
    automatic_confirmer,
    install_cluster,
    terminal_confirmer,
    waiting_confirmer,
)
from fwc.install.record import InstallRecord, make_record
from fwc.install.secrets import SecretsError, fill, read_secret_source
from fwc.install.settle import SettleCheck, check_cluster
from fwc.install.transport import (
    DryRun,
    InventoryEntry,
    InventoryError,
    PlanRecorder,
    Transport,
    make_transport,
    read_inventory,
)
from fwc.model import Cluster, Member, Policy
from fwc.model.records import dataclass
from fwc.pipeline import clean_policy

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
# The longest --confirm-timeout: the node stays locked that long. Far beyond it the node's
# shell arithmetic and Python's waits overflow (`inf`, `1e400` and NaN were a traceback
# after the plan had begun).
MAX_CONFIRM_TIMEOUT = 86400.0
# Steps that fail before the node changes.
BEFORE_APPLY = ("preflight", "lock", "stage", "test", "snapshot", "watchdog")


class UsageError(Exception):
    pass


@dataclass
class Target:
    cluster: Cluster
    members: list[Member]


def load_policy(path: str, include_path: Sequence[Path] = ()) -> Policy:
    if not Path(path).is_file():
        raise UsageError(f"cannot read '{path}'")
    policy = clean_policy(path, include_path)
    if policy is None:
        raise UsageError(f"{path} does not check clean: nothing installed")
    return policy


def choose(policy: Policy, member: str | None, everything: bool) -> list[Target]:
    if not member and not everything:
        raise UsageError("say which nodes: --member M or --all")
    if everything:
        return [Target(c, list(c.members)) for c in policy.clusters]
    for cluster in policy.clusters:
        found = cluster.member(member or "")
        if found is not None:
            return [Target(cluster, [found])]
    known = ", ".join(m.name for c in policy.clusters for m in c.members)
    raise UsageError(f"no member '{member}' in the policy (members: {known})")


def transports_for(cluster: Cluster, chosen: list[Member], args: argparse.Namespace,
                   inventory: dict[str, InventoryEntry],
                   recorder: PlanRecorder | None = None) -> dict[str, Transport]:
    if args.transport == "local" and len(cluster.members) > 1 and args.all:
        raise UsageError("the local transport installs only this node: use --member")
    out: dict[str, Transport] = {}
    # The local transport reaches only this node: the settle check sees it alone.
    reachable = chosen if args.transport == "local" else list(cluster.members)
    for member in reachable:
        transport = make_transport(args.transport, member.name, ssh_target=member.ssh,
                                   inventory=inventory, ssh=args.ssh)
        problem = None if args.dry_run else transport.preflight()
        if problem:
            raise UsageError(problem)
        out[member.name] = DryRun(transport, recorder or sys.stdout) if args.dry_run \
            else transport
    return out


def member_files(output: Path, policy: Policy, target: Target,
                 secrets: dict[str, str] | None) -> dict[str, dict[str, str]]:
    files: dict[str, dict[str, str]] = {}
    # What was compiled (and reviewed) is installed: `fwc compile --backend` wins.
    backend = read_manifest(output / target.cluster.name).backend
    if backend is not target.cluster.backend:
        print(f"fwc install: cluster {target.cluster.name}: installing the {backend} files "
              f"of {output} (compiled with --backend {backend}; the policy says "
              f"backend {target.cluster.backend})", file=sys.stderr)
    for member in target.members:
        loaded = load_member_files(output, policy, target.cluster.name, member.name)
        files[member.name] = {name: fill(target.cluster.name, name, text, secrets)
                              for name, text in loaded.items()}
    return files


def install_record(args: argparse.Namespace, cluster: str) -> InstallRecord:
    """What the nodes keep after the confirmation (fwc status): the cluster's MANIFEST as
    compiled (checked against the files before anything ran), revision, who, when."""
    manifest = Path(args.output) / cluster / "MANIFEST"
    return make_record(cluster, args.file, manifest.read_text(encoding="utf-8"),
                       dry_run=args.dry_run)


def pick_confirmer(args: argparse.Namespace) -> Confirmer:
    if args.confirm:
        return automatic_confirmer
    if sys.stdin.isatty() and sys.stdout.isatty():
        return terminal_confirmer(sys.stdin, sys.stdout)
    return waiting_confirmer


def run(args: argparse.Namespace, check: SettleCheck = check_cluster,
        settle_timeout: float | None = None) -> int:
    """The CLI entry; tests pass a fake CHECK (no daemons) and a short SETTLE_TIMEOUT
    (None: each cluster's own, fwc.install.plan.settle_timeout_for)."""
    as_json = getattr(args, "format", "text") == "json"
    if as_json and not args.dry_run:
        print("fwc install: --format json needs --dry-run (it prints the plan)", file=sys.stderr)
        return EXIT_USAGE
    recorders: list[PlanRecorder] = []
    try:
        policy = load_policy(args.file, args.include_path)
        targets = choose(policy, args.member, args.all)
        inventory = read_inventory(Path(args.inventory)) if args.inventory else {}
        secrets = read_secret_source(args.secrets, getattr(args, "secrets_env", None),
                                     getattr(args, "secrets_command", None))
        # (NaN fails both comparisons)
        if not 0 < args.confirm_timeout <= MAX_CONFIRM_TIMEOUT:
            raise UsageError(f"--confirm-timeout must be positive and at most "
                             f"{MAX_CONFIRM_TIMEOUT:.0f} seconds (a day)")
        plans = []
        for target in targets:
            recorder = PlanRecorder() if as_json else None
            if recorder is not None:
                recorders.append(recorder)
            plans.append((target, transports_for(target.cluster, target.members, args,
                                                 inventory, recorder),
                          member_files(Path(args.output), policy, target, secrets)))
    except (UsageError, InventoryError, SecretsError, CompiledError) as exc:
        print(f"fwc install: {exc}", file=sys.stderr)
        return EXIT_USAGE

    if as_json:
        return print_plan_json(args, plans, recorders, check)
    options = InstallOptions(confirm_timeout=args.confirm_timeout,
                             settle_timeout=settle_timeout,
                             systemd=args.transport != "netns", out=sys.stdout)
    failed = False
    for number, (target, transports, files) in enumerate(plans):
        recorded = replace(options, record=install_record(args, target.cluster.name))
        results = install_cluster(target.cluster, target.members, files, transports, recorded,
                                  pick_confirmer(args), check, dry_run=args.dry_run)
        for result in results:
            if not result.ok:
                failed = True
                what = "rolled back" if result.rolled_back else "not changed" \
                    if result.stage in BEFORE_APPLY else "state unknown: check it"
                print(f"fwc install: {result.member}: {result.stage} failed: "
                      f"{result.message} ({what})", file=sys.stderr)
        if failed:
            rest = [t.cluster.name for t, _, _ in plans[number + 1:]]
            if rest:
                print(f"fwc install: clusters not touched: {', '.join(rest)}", file=sys.stderr)
            break
    return EXIT_FAILED if failed else EXIT_OK


Plan = tuple[Target, dict[str, Transport], dict[str, dict[str, str]]]


def print_plan_json(args: argparse.Namespace, plans: list[Plan],
                    recorders: list[PlanRecorder], check: SettleCheck) -> int:
    """`--dry-run --format json`: per cluster the order, and per member its files (node
    path and size, never content) and every command with its step notes."""
    clusters = []
    for (target, transports, files), recorder in zip(plans, recorders, strict=True):
        options = InstallOptions(confirm_timeout=args.confirm_timeout,
                                 systemd=args.transport != "netns",
                                 out=recorder,  # type: ignore[arg-type]
                                 record=install_record(args, target.cluster.name))
        results = install_cluster(target.cluster, target.members, files, transports, options,
                                  automatic_confirmer, check, dry_run=True)
        clusters.append({
            "cluster": target.cluster.name,
            "order": [r.member for r in results],
            "notes": recorder.notes,
            "members": [{
                "member": r.member,
                "transport": args.transport,
                "target": transports[r.member].describe(),
                "files": [{"name": name, "path": BY_NAME[name].path,
                           "bytes": len(text.encode())}
                          for name, text in sorted(files[r.member].items())],
                "steps": recorder.steps.get(r.member, []),
            } for r in results],
        })
    sys.stdout.write(json.dumps({"dry_run": True, "clusters": clusters}, indent=2) + "\n")
    return EXIT_OK
