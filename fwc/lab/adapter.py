"""Policy model -> LabCluster (filled in once fwc.model and fwc compile land)."""

from __future__ import annotations

from pathlib import Path

from fwc.lab.netns import LabError
from fwc.lab.topology import LabCluster


def load_policy_cluster(policy: Path, compiled: Path | None, tmp: Path) -> tuple[LabCluster, Path]:
    raise LabError(
        "fwc lab on a policy file needs fwc.model and fwc compile; "
        "use a .json lab spec with --compiled for now"
    )
