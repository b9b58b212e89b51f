"""What every render target receives for one member: the backend-neutral input.

`MemberBuild` carries the model (cluster, member), the lowering options, whether
secrets are redacted, the generated files this member gets (so that a file can
name the others it depends on) and the lowered rulesets, the backend-neutral
form of the policy (`fwc.backend.lower`). A target derives its own forms from
these (the speed passes, `optimised`) and keeps them in `memo`, which
lives as long as this one compile of this one member.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from fwc.backend.arrange import optimise
from fwc.backend.files import GeneratedFile
from fwc.backend.ipsets import IpSet
from fwc.backend.lower import LowerOptions, NodeRuleset, lower
from fwc.model import Cluster, Member
from fwc.model.vocabulary import Backend


@dataclass(slots=True)
class MemberBuild:
    cluster: Cluster
    member: Member
    options: LowerOptions
    redact: bool = False
    # The files this member gets, in table order (fwc.backend.render.registry.member_files).
    files: tuple[GeneratedFile, ...] = ()
    memo: dict[str, object] = field(default_factory=dict)
    # The packet filter written for: the cluster's `backend` unless `fwc compile --backend`.
    backend: Backend | None = None

    def __post_init__(self) -> None:
        if self.backend is None:
            self.backend = self.cluster.backend

    @property
    def families(self) -> tuple[int, ...]:
        return (4, 6) if 6 in self.cluster.families else (4,)

    def lowered(self, family: int) -> NodeRuleset:
        """The member's ruleset for FAMILY before any backend pass."""
        return lower(self.cluster, self.member, family, self.options)

    def optimised(self, clip_ports: bool = False) \
            -> tuple[dict[int, NodeRuleset], tuple[IpSet, ...]]:
        """The rulesets after the speed passes (fwc.backend.arrange.optimise: long address
        lists as sets, long chains as per-interface chains; CLIP_PORTS: port buckets cut
        to their range, as nftables maps need), and the sets; built once per target."""
        key = f"optimised clip={clip_ports}"
        if key not in self.memo:
            self.memo[key] = optimise(self.member, {f: self.lowered(f) for f in self.families},
                                      clip_ports=clip_ports, memo=self.cluster.memo)
        return self.memo[key]  # type: ignore[return-value]

    def has(self, name: str) -> bool:
        return any(f.name == name for f in self.files)
