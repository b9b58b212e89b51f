"""The compiled files an install pushes, checked against their MANIFEST and the policy.

An install pushes what was compiled (and reviewed), not a fresh compile; it
refuses an output tree whose MANIFEST does not match its files or whose
sources differ from the policy as it is now.
"""

from __future__ import annotations

from pathlib import Path

from fwc.backend.files import BY_NAME, rules_file
from fwc.backend.manifest import Manifest, ManifestError
from fwc.backend.output import manifest_sources, policy_name
from fwc.model import Policy


class CompiledError(Exception):
    pass


def read_manifest(cluster_dir: Path) -> Manifest:
    if not (cluster_dir / "MANIFEST").exists():
        raise CompiledError(f"no compiled output in {cluster_dir}: run fwc compile first")
    try:
        return Manifest.read(cluster_dir)
    except ManifestError as exc:
        raise CompiledError(str(exc)) from exc


def check_compiled_from(manifest: Manifest, cluster_dir: Path, policy: Policy,
                        cluster: str) -> None:
    """The MANIFEST must name exactly this policy's sources, cluster and root file.

    Equality of the whole set, not 'no listed source differs': deleting the
    `source` lines of the files that changed must not make an old tree pass.
    """
    current = tuple(sorted(manifest_sources(policy)))
    if (manifest.sources != current or manifest.cluster != cluster
            or manifest.policy != policy_name(policy)):
        raise CompiledError(f"{cluster_dir} was compiled from another version of the policy: "
                            "run fwc compile again (and review it with fwc diff)")


def load_member_files(output: Path, policy: Policy, cluster: str, member: str) \
        -> dict[str, str]:
    """{file name: content} for MEMBER, verified; CompiledError says what is wrong."""
    cluster_dir = output / cluster
    manifest = read_manifest(cluster_dir)
    check_compiled_from(manifest, cluster_dir, policy, cluster)
    model = next(c for c in policy.clusters if c.name == cluster)
    listed = {e.path for e in manifest.files}
    member_dir = cluster_dir / member
    # A node file in the member directory that MANIFEST does not list would
    # otherwise be skipped, and the node would keep its old copy.
    for name in sorted(BY_NAME):
        if (member_dir / name).exists() and f"{member}/{name}" not in listed:
            raise CompiledError(f"{member_dir / name} is not listed in MANIFEST "
                                "(MANIFEST edited by hand?): run fwc compile again")
    out: dict[str, str] = {}
    for entry in manifest.files:
        owner, _, name = entry.path.partition("/")
        if owner != member or name not in BY_NAME:
            continue
        path = cluster_dir / entry.path
        data = path.read_bytes() if path.is_file() else None
        if data is None:
            raise CompiledError(f"{path} is listed in MANIFEST but missing")
        problem = manifest.mismatch(entry.path, data, model.vrrp.password)
        if problem is not None:
            raise CompiledError(f"{path} {problem}: run fwc compile again")
        out[name] = data.decode("utf-8")
    # Every member gets its backend's ruleset (iptables.rules, nftables.nft).
    if rules_file(manifest.backend).name not in out:
        raise CompiledError(f"no compiled files for member {member} in {cluster_dir}")
    return out
