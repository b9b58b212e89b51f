"""Each side's own `fwc.toml`, for `fwc diff`.

A revision is compiled as it was committed (docs/workflow.md): its includes are read
from git, and so is the project file that says where `<...>` and relative includes are
looked up (`include_path`, docs/project.md). Reading the working tree's instead compiled
an old revision with today's search path: a commit that only pointed `include_path`
elsewhere (another `host web`, say) showed no change at all, and an old revision could
fail to compile with files it never read.

The same holds for `backend`: `fwc compile` writes the file's packet filter, so each
side is compiled for its own (a patch of iptables files for a project that installs
nftables reviewed files no node would load, and a switch of backend showed as no
change).

`--include-path` on the command line still applies to both sides, as it wins over
the file everywhere else.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from fwc.diffing.git import GitError, Side, normalise
from fwc.frontend.project import CONFIG_NAME, parse_config
from fwc.frontend.sources import Refused
from fwc.model.records import dataclass
from fwc.model.vocabulary import Backend


@dataclass(frozen=True)
class SideConfig:
    """What a side's fwc.toml says about compiling a policy."""

    path: str | None = None  # repository-relative; None: no fwc.toml applies
    include_path: tuple[Path, ...] = ()  # repository-relative directories
    backend: Backend | None = None  # None: each cluster's own


class IncludePaths:
    """Where each side looks includes up, and for which packet filter it is compiled:
    the command line's directories, or each side's fwc.toml (found like
    `fwc.frontend.project.find_config`: the policy's directory or the nearest above it,
    up to the repository root). GIVEN: the command line's `--include-path` (None: not
    given; the file's `include_path` then applies)."""

    def __init__(self, given: Sequence[Path] | None = None) -> None:
        self._given = tuple(given) if given is not None else None
        self._found: dict[tuple[str | None, str], SideConfig] = {}

    def of(self, side: Side, rel: str) -> tuple[Path, ...]:
        """The repository-relative include directories of policy REL on SIDE."""
        if self._given is not None:
            return self._given
        return self.config(side, rel).include_path

    def backend(self, side: Side, rel: str) -> Backend | None:
        """The packet filter `fwc compile` writes REL for on SIDE (None: the policy's)."""
        return self.config(side, rel).backend

    def config(self, side: Side, rel: str) -> SideConfig:
        """The fwc.toml that applies to REL on SIDE: a change to it is a change to the
        policy."""
        directory = normalise(Path(rel).parent)
        key = (side.rev, directory)
        if key not in self._found:
            self._found[key] = _read(side, directory)
        return self._found[key]


def _above(directory: str) -> list[str]:
    """DIRECTORY ("." the top) and every directory above it, up to the top."""
    parts = [] if directory in ("", ".") else directory.split("/")
    return ["/".join(parts[:n]) for n in range(len(parts), -1, -1)]


def _read(side: Side, directory: str) -> SideConfig:
    """The fwc.toml for a policy in DIRECTORY on SIDE."""
    root = side.repo.resolve()
    for candidate in _above(directory):
        rel = normalise(Path(candidate) / CONFIG_NAME)
        if not side.exists(rel):
            continue
        try:
            text = side.read(Path(rel))
        except (OSError, UnicodeDecodeError, Refused) as exc:
            raise GitError(f"{rel} in the {side.label} cannot be read: {exc}") from None
        config, problems = parse_config(
            text, root / rel, rel, lambda d: side.is_dir(_relative(d, root)),
            lambda d: _relative(d, root) is not None, root)
        errors = [d for d in problems if d.is_error]
        if errors:
            first = errors[0]
            raise GitError(f"{first.span.file}:{first.span.line}:{first.span.column}: "
                           f"error[{first.code}]: {first.message} (in the {side.label})")
        directories = config.values.get("include_path", ())
        backend = config.values.get("backend")
        assert isinstance(directories, tuple)
        return SideConfig(rel, tuple(Path(_relative(d, root) or ".") for d in directories),
                          Backend(str(backend)) if backend else None)
    return SideConfig()


def _relative(path: Path, root: Path) -> str | None:
    """PATH (absolute, under ROOT as written) repository-relative; None outside."""
    folded = Path(normalise(path))
    if not folded.is_relative_to(root):
        return None
    return normalise(folded.relative_to(root)) if folded != root else "."
