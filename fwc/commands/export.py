"""`fwc export ansible FILE... -o DIR`: the clusters of FILEs as one Ansible tree.

The tree is built in memory (fwc.install.ansible), written next to DIR and
swapped in whole: a failure leaves DIR as it was.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import tempfile
from pathlib import Path

from fwc.backend.output import OutputFile, write_file
from fwc.commands.common import without_cycle_collection
from fwc.diagnostics import Diagnostic, error, failed, print_diagnostics
from fwc.install.ansible import MARKER, export_ansible
from fwc.install.transport import InventoryEntry, InventoryError, read_inventory
from fwc.pipeline import analyse


class TreeError(Exception):
    pass


def run(args: argparse.Namespace) -> int:
    with without_cycle_collection(args):
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    texts: dict[str, str] = {}
    diagnostics: list[Diagnostic] = []
    policies = []
    for path in args.files:
        analysis = analyse(path, include_path=args.include_path)
        texts.update(analysis.program.texts)
        diagnostics += analysis.diagnostics
        if analysis.policy is not None:
            policies.append(analysis.policy)
    if failed(diagnostics, args.strict) or len(policies) != len(args.files):
        print_diagnostics(diagnostics, texts)
        print("fwc: nothing written: fix the errors above first", file=sys.stderr)
        return 1
    inventory: dict[str, InventoryEntry] = {}
    if args.inventory:
        try:
            inventory = read_inventory(Path(args.inventory))
        except InventoryError as exc:
            print_diagnostics([*diagnostics, error("FWC552", str(exc))], texts)
            return 1
    tree = export_ansible(policies, redact=args.redact_secrets, inventory=inventory)
    diagnostics += tree.diagnostics
    if failed(diagnostics, args.strict):
        print_diagnostics(diagnostics, texts)
        print("fwc: nothing written: fix the errors above first", file=sys.stderr)
        return 1
    try:
        write_tree(Path(args.output), tree.files)
    except TreeError as exc:
        print_diagnostics([*diagnostics, error("FWC554", str(exc),
                                               hint="nothing was written")], texts)
        return 1
    print_diagnostics(diagnostics, texts)
    hosts = sum(1 for f in tree.files if f.path.startswith("host_vars/"))
    print(f"{args.output}: Ansible tree for {hosts} members "
          f"(ansible-playbook -i {args.output}/inventory.yml {args.output}/site.yml)")
    return 0


def write_tree(directory: Path, files: list[OutputFile]) -> None:
    """Write FILES as DIRECTORY, swapping the whole directory in at the end."""
    directory = directory.absolute()
    if directory.exists() and not directory.is_dir():
        raise TreeError(f"{directory} exists and is not a directory")
    if directory.is_dir() and any(directory.iterdir()) and not (directory / MARKER).is_file():
        raise TreeError(f"{directory} holds files fwc export did not write; give an empty "
                        "or new directory")
    try:
        directory.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.fwc-new-",
                                        dir=directory.parent))
    except OSError as exc:
        raise TreeError(f"cannot create {directory}: {exc.strerror}") from exc
    old = directory.parent / f".{directory.name}.fwc-old-{os.getpid()}"
    try:
        os.chmod(staging, 0o755)
        for f in files:
            write_file(staging, f)
        if directory.exists():
            directory.rename(old)
        staging.rename(directory)
    except OSError as exc:
        if old.exists() and not directory.exists():
            old.rename(directory)
        raise TreeError(f"cannot write {directory}: {exc.strerror}") from exc
    finally:
        with contextlib.suppress(OSError):
            shutil.rmtree(staging)
        with contextlib.suppress(OSError):
            shutil.rmtree(old)
