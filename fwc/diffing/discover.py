"""Which policies `fwc diff` compares when no FILE is given.

The top-level policies are the `*.fw` files directly in `policies/` at the
repository root (or, in a repository without that directory, the `*.fw`
files at the root), on either side, minus those another of them includes.
Of these, a policy is compared when it or any file it includes (on either
side) changed between the two sides.
"""

from __future__ import annotations

from pathlib import Path

from fwc.diffing.git import Side, changed_paths, normalise
from fwc.diffing.project import IncludePaths
from fwc.frontend.loader import load

POLICY_DIR = "policies"


def candidates(old: Side, new: Side) -> list[str]:
    found = set(old.list_fw(POLICY_DIR)) | set(new.list_fw(POLICY_DIR))
    if not found:
        found = set(old.list_fw("")) | set(new.list_fw(""))
    return sorted(found)


# A file the load could not read or refused (fwc.frontend.sources): what the policy reads
# there is unknown (a symbolic link's target, a file over the size limit, one that is not
# UTF-8), so a change to it cannot be ruled out.
UNREAD = frozenset({"FWC002", "FWC010", "FWC011", "FWC012", "FWC013"})


def sources(side: Side, rel: str, include_path: IncludePaths | None = None) \
        -> set[str] | None:
    """Every file REL reads on SIDE (itself, its includes and the fwc.toml that says where
    they are looked up); empty if absent; None when one of them could not be read
    (UNREAD)."""
    if not side.exists(rel):
        return set()
    paths = include_path or IncludePaths(())
    program, diagnostics = load(Path(rel), reader=side.read,
                                include_path=paths.of(side, rel))
    if any(d.code in UNREAD for d in diagnostics):
        return None
    config = paths.config(side, rel).path
    return {normalise(path) for path, _ in program.hashes} | {rel} \
        | ({config} if config else set())


def changed_policies(old: Side, new: Side, include_path: IncludePaths | None = None) \
        -> list[str]:
    """The top-level policies that read a changed file on either side, and those of which
    a file could not be read (compared, so that the diff reports why, never passes over
    a change it could not see)."""
    changed = changed_paths(old, new)
    names = candidates(old, new)
    found = {rel: (sources(old, rel, include_path), sources(new, rel, include_path))
             for rel in names}
    reads = {rel: set().union(*(paths or set() for paths in sides))
             for rel, sides in found.items()}
    unread = {rel for rel, sides in found.items() if None in sides}
    included = {path for rel, paths in reads.items() for path in paths if path != rel}
    return [rel for rel in names
            if rel not in included and (rel in unread or reads[rel] & changed)]
