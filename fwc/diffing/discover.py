"""Which policies `fwc diff` compares when no FILE is given.

The top-level policies are the `*.fw` files directly in `policies/` at the
repository root (or, in a repository without that directory, the `*.fw`
files at the root), on either side, minus those another of them includes.
Of these, a policy is compared when it or any file it includes (on either
side) changed between the two sides.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from fwc.diffing.git import Side, changed_paths, normalise
from fwc.frontend.loader import load

POLICY_DIR = "policies"


def candidates(old: Side, new: Side) -> list[str]:
    found = set(old.list_fw(POLICY_DIR)) | set(new.list_fw(POLICY_DIR))
    if not found:
        found = set(old.list_fw("")) | set(new.list_fw(""))
    return sorted(found)


def sources(side: Side, rel: str, include_path: Sequence[Path] = ()) -> set[str]:
    """Every file REL reads on SIDE (itself and its includes); empty if absent."""
    if not side.exists(rel):
        return set()
    program, _ = load(Path(rel), reader=side.read, include_path=include_path)
    return {normalise(path) for path, _ in program.hashes} | {rel}


def changed_policies(old: Side, new: Side, include_path: Sequence[Path] = ()) -> list[str]:
    changed = changed_paths(old, new)
    names = candidates(old, new)
    reads = {rel: sources(old, rel, include_path) | sources(new, rel, include_path)
             for rel in names}
    included = {path for rel, paths in reads.items() for path in paths if path != rel}
    return [rel for rel in names if rel not in included and reads[rel] & changed]
