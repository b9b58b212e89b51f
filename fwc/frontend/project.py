"""`fwc.toml`: a project's defaults for the command line (docs/project.md).

An optional `fwc.toml` next to the policies holds what every command would
otherwise be told with flags: the output directory, the inventory, the ssh
command, where the VRRP secrets come from, the default back end, strictness and
include directories. It is found like git finds `.git`: in the policy's
directory or the nearest directory above it, stopping at the repository root
(the directory holding `.git`), so a file above the repository is never read.
Command-line flags override it. Relative paths in it are relative to its own
directory.

The file names a command fwc may run (`secrets_command`) and where fwc writes,
so it is refused (FWC033) when someone other than the user running fwc or root
owns it or may write it; its commands run only once the user trusted them
(`fwc trust`, FWC037: fwc.commands.trust). An unknown key, a value of the wrong type or a syntax
error is a diagnostic with the file, line and column (FWC030-FWC032).

Imported by the command line: tomllib is imported only when a file is found.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Callable
from dataclasses import field
from pathlib import Path

from fwc.diagnostics import Diagnostic, Span, error
from fwc.frontend import close_matches
from fwc.frontend.hidden import hidden_character_diagnostics
from fwc.frontend.sources import inside, repository_root, resolved
from fwc.model.records import dataclass
from fwc.text import hidden_in_source

CONFIG_NAME = "fwc.toml"
MAX_CONFIG_BYTES = 64 * 1024

# key -> (type name for messages, accepted Python type, choices or None)
STRING, PATH, BOOL, PATHS = "a string", "a path", "true or false", "a list of paths"
KEYS: dict[str, tuple[str, tuple[str, ...] | None, str]] = {
    "output": (PATH, None, "output directory of compile and install (-o)"),
    "inventory": (PATH, None, "member -> host file of install, diff --installed, status"),
    "ssh": (STRING, None, "ssh command of install, diff --installed, status (--ssh)"),
    "transport": (STRING, ("ssh", "local", "netns"), "how nodes are reached (--transport)"),
    "secrets_file": (PATH, None, "secrets file for install and diff --installed"),
    "secrets_env": (STRING, None, "environment variable holding the secrets"),
    "secrets_command": (STRING, None, "command printing the secrets (pass, a vault client)"),
    "backend": (STRING, ("iptables", "nftables"), "packet filter compile writes (--backend)"),
    "strict": (BOOL, None, "warnings fail check and compile too (--strict)"),
    "include_path": (PATHS, None, "directories includes may also come from (--include-path)"),
}
SECRET_KEYS = ("secrets_file", "secrets_env", "secrets_command")
# Paths fwc writes to. A project file comes with the repository (a pull request may change
# it): it may direct fwc's writes, as its reads of includes, only within that repository.
WRITTEN_KEYS = ("output",)


@dataclass(frozen=True)
class ProjectConfig:
    """The values of one fwc.toml (paths made absolute); empty without a file."""

    path: Path | None = None
    values: dict[str, object] = field(default_factory=dict)
    spans: dict[str, Span] = field(default_factory=dict)  # where each key is set

    def get(self, key: str) -> object:
        return self.values.get(key)


def find_config(start: Path) -> Path | None:
    """The fwc.toml for a policy in START (a file or directory): START's directory or the
    nearest one above it, up to and including the repository root (holding `.git`)."""
    directory = start if start.is_dir() else start.parent
    directory = resolved(directory.absolute())
    for candidate in (directory, *directory.parents):
        config = candidate / CONFIG_NAME
        if config.is_file():
            return config
        if (candidate / ".git").exists():
            return None
    return None


def _where(path: str, text: str, key: str | None) -> Span:
    """The span of KEY's assignment in TEXT (the file start when it cannot be found)."""
    if key is not None:
        pattern = re.compile(rf'^\s*("?){re.escape(key)}\1\s*=', re.MULTILINE)
        found = pattern.search(text)
        if found:
            line = text.count("\n", 0, found.start()) + 1
            column = found.start() - (text.rfind("\n", 0, found.start()) + 1) + 1
            column += len(found.group(0)) - len(found.group(0).lstrip())
            return Span(path, line, column, line, column + len(key))
    return Span(path, 1, 1, 1, 1)


def _unsafe(path: Path, info: os.stat_result) -> str | None:
    if info.st_uid not in (0, os.geteuid()):
        return "is owned by another user"
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return "may be written by other users (group or world writable)"
    return None


def _shown(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def load_config(path: Path) -> tuple[ProjectConfig, list[Diagnostic]]:
    shown = _shown(path)
    try:
        info = os.stat(path)
        if info.st_size > MAX_CONFIG_BYTES:
            return ProjectConfig(path), [error("FWC032", f"{CONFIG_NAME} is larger than "
                                               f"{MAX_CONFIG_BYTES // 1024} KiB",
                                               Span(shown, 1, 1, 1, 1))]
        unsafe = _unsafe(path, info)
        if unsafe:
            return ProjectConfig(path), [error(
                "FWC033", f"{CONFIG_NAME} {unsafe}: not read", Span(shown, 1, 1, 1, 1),
                hint="it may name a command fwc runs: own it yourself and "
                     "'chmod go-w' it")]
        text = path.read_bytes().decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        return ProjectConfig(path), [error("FWC032", f"cannot read {CONFIG_NAME}: {reason}",
                                           Span(shown, 1, 1, 1, 1))]
    root = repository_root(path)
    return parse_config(text, path, shown, Path.is_dir,
                        lambda where: inside(resolved(where), (root,)), root)


def parse_config(text: str, path: Path, shown: str, is_dir: Callable[[Path], bool],
                 in_repository: Callable[[Path], bool], root: Path) \
        -> tuple[ProjectConfig, list[Diagnostic]]:
    """The fwc.toml at PATH (named SHOWN in diagnostics) from its TEXT. IS_DIR and
    IN_REPOSITORY (of ROOT) say what its paths are where it is read: on the disk, or at a
    revision (`fwc diff` reads each side's own)."""
    import tomllib

    # Reviewed as a diff like a policy, and `fwc trust` trusts what was read: a
    # character a reader cannot see is refused here too, comments included.
    hidden = hidden_in_source(text)
    if hidden:
        return ProjectConfig(path), hidden_character_diagnostics(text, shown, hidden)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        found = re.search(r"\(at line (\d+), column (\d+)\)", message)
        line, column = (int(found.group(1)), int(found.group(2))) if found else (1, 1)
        reason = re.sub(r"\s*\(at (line \d+, column \d+|end of document)\)", "", message)
        return ProjectConfig(path), [error("FWC032", f"{CONFIG_NAME} is not valid TOML: "
                                           f"{reason}", Span(shown, line, column, line,
                                                             column + 1))]
    diagnostics: list[Diagnostic] = []
    values: dict[str, object] = {}
    spans: dict[str, Span] = {}
    base = path.parent
    for key, value in data.items():
        span = spans[key] = _where(shown, text, key)
        if key not in KEYS:
            close = close_matches(key.replace("-", "_").lower(), KEYS, 1, 0.6)
            diagnostics.append(error(
                "FWC030", f"unknown key '{key}' in {CONFIG_NAME}", span,
                hint=(f"did you mean '{close[0]}'? " if close else "")
                + f"known keys: {', '.join(KEYS)}"))
            continue
        kind, choices, _ = KEYS[key]
        problem = _type_problem(kind, value, choices)
        if problem:
            diagnostics.append(error("FWC031", f"'{key}' in {CONFIG_NAME} {problem}", span))
            continue
        if kind == PATH:
            where = base / str(value)
            if key in WRITTEN_KEYS and not in_repository(where):
                # (reads may go elsewhere: a secrets file is best kept out of the repository)
                diagnostics.append(error(
                    "FWC031", f"'{key}' in {CONFIG_NAME}: '{_shown(where)}' is outside "
                    f"the repository ({root})", span,
                    hint="compile inside the repository, or give that directory with -o "
                    "on the command line"))
                continue
            values[key] = where
        elif kind == PATHS:
            directories = tuple(base / str(v) for v in value)  # type: ignore[attr-defined]
            missing = [d for d in directories if not is_dir(d)]
            if missing:
                diagnostics.append(error("FWC031", f"'{key}' in {CONFIG_NAME}: "
                                         f"'{_shown(missing[0])}' is not a directory", span))
                continue
            # A project file comes with the repository (a pull request may change it):
            # it may widen what fwc reads only within that repository. Directories
            # elsewhere are the user's to give (--include-path).
            outside = [d for d in directories if not in_repository(d)]
            if outside:
                diagnostics.append(error(
                    "FWC031", f"'{key}' in {CONFIG_NAME}: '{_shown(outside[0])}' is outside "
                    f"the repository ({root})", span,
                    hint="keep shared includes inside the repository, or give that "
                    "directory with --include-path on the command line"))
                continue
            values[key] = directories
        else:
            values[key] = value
    given = [k for k in SECRET_KEYS if k in values]
    if len(given) > 1:
        diagnostics.append(error(
            "FWC034", f"{CONFIG_NAME} names the secrets {len(given)} ways "
            f"({', '.join(given)})", _where(shown, text, given[1]),
            hint="keep one of secrets_file, secrets_env and secrets_command"))
    return ProjectConfig(path, values, spans), diagnostics


def _type_problem(kind: str, value: object,
                  choices: tuple[str, ...] | None) -> str | None:
    if kind in (STRING, PATH):
        if not isinstance(value, str) or not value:
            return f"must be {kind} (a non-empty quoted string)"
        if "\0" in value:
            return "must not hold a NUL character"
        if choices and value not in choices:
            return f"must be one of {', '.join(choices)}, not '{value}'"
    elif kind == BOOL:
        if not isinstance(value, bool):
            return "must be true or false"
    elif kind == PATHS and (not isinstance(value, list) or not all(
            isinstance(v, str) and v and "\0" not in v for v in value)):
        return 'must be a list of paths (["lib", "shared"])'
    return None


def project_config(start: Path) -> tuple[ProjectConfig, list[Diagnostic]]:
    """The fwc.toml that applies to a policy in START (empty when there is none)."""
    path = find_config(start)
    if path is None:
        return ProjectConfig(), []
    return load_config(path)
