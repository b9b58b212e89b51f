"""Compile one side of a diff (a revision or the working tree) into a scratch directory."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from fwc.diagnostics import Diagnostic
from fwc.diffing.git import Side, normalise
from fwc.frontend.sources import secret_reader
from fwc.model import Policy
from fwc.model.records import dataclass
from fwc.pipeline import analyse


@dataclass
class Build:
    side: Side
    path: str  # repository-relative policy path
    policy: Policy | None  # None when the file does not exist on this side
    outdir: Path | None  # holds <cluster>/... when compiled
    texts: dict[str, str]


class BuildError(Exception):
    """The policy does not compile at this side; carries its diagnostics."""

    def __init__(self, build: Build, diagnostics: tuple[Diagnostic, ...]) -> None:
        super().__init__(f"{build.path} at {build.side.label} does not compile")
        self.build = build
        self.diagnostics = diagnostics


def compile_side(side: Side, rel: str, scratch: Path,
                 include_path: Sequence[Path] = ()) -> Build:
    """Analyse and compile REL as it is on SIDE; secrets redacted (diffs end up in logs).

    INCLUDE_PATH: repository-relative directories, read on SIDE like the policy."""
    build = Build(side, rel, None, None, {})
    if not side.exists(rel):
        return build
    analysis = analyse(Path(rel), reader=side.read, read_secret=_secret_reader(side),
                       include_path=include_path)
    build.texts = analysis.program.texts
    if not analysis.ok or analysis.policy is None:
        raise BuildError(build, analysis.diagnostics)
    from fwc.backend.output import compile_policy, write_output

    build.policy = analysis.policy
    scratch.mkdir(parents=True, exist_ok=True)
    write_output(scratch, rel, compile_policy(analysis.policy, redact=True))
    build.outdir = scratch
    return build


def _secret_reader(side: Side):  # type: ignore[no-untyped-def]
    """Password files are read from the same side as the policy when tracked there, else
    from the working tree, under the same rules as any password file (inside the
    repository, regular, small): a policy under review must not read the reviewer's files."""
    on_disk = secret_reader(side.repo / "policy.fw")

    def read(path: Path) -> str:
        try:
            return side.read(path)
        except FileNotFoundError:  # not tracked (password files rarely are)
            return on_disk(side.repo / normalise(path))
    return read
