"""The compiled files an install pushes, checked against their MANIFEST and the policy.

An install pushes what was compiled (and reviewed), not a fresh compile; it
refuses an output tree whose MANIFEST does not match its files or whose
sources differ from the policy as it is now.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from fwc.install.paths import BY_NAME
from fwc.model import Policy

MANIFEST = "MANIFEST"


class CompiledError(Exception):
    pass


def read_manifest(cluster_dir: Path) -> tuple[dict[str, str], set[str]]:
    """({file path: sha256}, {source sha256}) from DIR/<cluster>/MANIFEST."""
    try:
        text = (cluster_dir / MANIFEST).read_text(encoding="utf-8")
    except OSError as exc:
        raise CompiledError(f"no compiled output in {cluster_dir} ({exc.strerror}): "
                            "run fwc compile first") from exc
    files: dict[str, str] = {}
    sources: set[str] = set()
    for line in text.splitlines():
        words = line.split()
        if len(words) >= 3 and words[0] == "file":
            files[words[2]] = words[1]
        elif len(words) >= 3 and words[0] == "source":
            sources.add(words[1])
    return files, sources


def load_member_files(output: Path, policy: Policy, cluster: str, member: str) \
        -> dict[str, str]:
    """{file name: content} for MEMBER, verified; CompiledError says what is wrong."""
    cluster_dir = output / cluster
    listed, sources = read_manifest(cluster_dir)
    current = {s.sha256 for s in policy.sources}
    if sources and sources != current:
        raise CompiledError(f"{cluster_dir} was compiled from another version of the policy: "
                            "run fwc compile again (and review it with fwc diff)")
    out: dict[str, str] = {}
    for rel, digest in sorted(listed.items()):
        owner, _, name = rel.partition("/")
        if owner != member or name not in BY_NAME:
            continue
        data = (cluster_dir / rel).read_bytes() if (cluster_dir / rel).is_file() else None
        if data is None:
            raise CompiledError(f"{cluster_dir / rel} is listed in MANIFEST but missing")
        if hashlib.sha256(data).hexdigest() != digest:
            raise CompiledError(f"{cluster_dir / rel} does not match its MANIFEST "
                                "(edited by hand?): run fwc compile again")
        out[name] = data.decode("utf-8")
    if "iptables.rules" not in out:
        raise CompiledError(f"no compiled files for member {member} in {cluster_dir}")
    return out
