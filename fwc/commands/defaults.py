"""The project's defaults (fwc.toml) under the command line's flags.

`ProjectParser` is the top-level parser: after argparse it fills every option
the user did not give from the fwc.toml that applies to the policy named on the
command line (fwc.frontend.project), then from the built-in defaults below.
Options whose defaults come from here default to None in fwc/cli.py, so that a
flag given on the command line, even one equal to the built-in default, always
wins.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from fwc.diagnostics import DIAGNOSTIC_FORMATS

# built-in defaults of the options fwc.toml may set (dest -> value)
BUILTIN: dict[str, object] = {"output": "output", "ssh": "ssh", "transport": "ssh",
                              "strict": False}
# option dest -> fwc.toml key
FROM_CONFIG = {"output": "output", "inventory": "inventory", "ssh": "ssh",
               "transport": "transport", "backend": "backend", "strict": "strict"}
SECRET_DESTS = {"secrets": "secrets_file", "secrets_env": "secrets_env",
                "secrets_command": "secrets_command"}
# Which sub-commands each option dest means the same thing in: another command's
# `-o` (a file to write, say) or `--format` is not the project's.
APPLIES_TO: dict[str, frozenset[str]] = {
    "output": frozenset({"compile", "install", "status"}),
    "inventory": frozenset({"install", "status", "diff"}),
    "ssh": frozenset({"install", "status", "diff"}),
    "transport": frozenset({"install", "status", "diff"}),
    "backend": frozenset({"compile", "diff"}),  # diff: --installed (each side: its own)
    "strict": frozenset({"check", "compile"}),
    "secrets": frozenset({"install", "diff"}),
    "secrets_env": frozenset({"install", "diff"}),
    "secrets_command": frozenset({"install", "diff"}),
}


def _applies(args: argparse.Namespace, dest: str) -> bool:
    return hasattr(args, dest) and getattr(args, "command", None) in APPLIES_TO[dest]


def policy_start(args: argparse.Namespace) -> Path:
    """Where to look for fwc.toml: the policy on the command line, else the working
    directory."""
    candidates: list[object] = []
    for name in ("file", "files", "args"):
        value = getattr(args, name, None)
        candidates.extend(value if isinstance(value, list) else [value])
    for value in candidates:
        if value and str(value) != "-" and Path(str(value)).exists():
            return Path(str(value))
    return Path.cwd()


def _reaches_nodes(args: argparse.Namespace) -> bool:
    """Whether the command runs the transport and secrets commands (plain `fwc diff`,
    which a reviewer runs on a pull request, does not)."""
    command = getattr(args, "command", None)
    return command in ("install", "status") or (
        command == "diff" and bool(getattr(args, "installed", None)))


def apply_project_defaults(args: argparse.Namespace) -> list:  # list[Diagnostic]
    """Fill ARGS from fwc.toml and the built-in defaults; the diagnostics of a bad file."""
    diagnostics = []
    config = None
    if getattr(args, "command", None) not in (None, "fmt", "explain", "completion"):
        from fwc.frontend.project import project_config

        config, diagnostics = project_config(policy_start(args))
        if any(d.is_error for d in diagnostics):
            return diagnostics
    values = config.values if config is not None else {}
    taken: set[str] = set()  # the keys of fwc.toml this command takes
    for dest, key in FROM_CONFIG.items():
        if _applies(args, dest) and getattr(args, dest) is None and key in values:
            value = values[key]
            setattr(args, dest, str(value) if isinstance(value, Path) else value)
            taken.add(key)
    if any(_applies(args, d) for d in SECRET_DESTS) and not any(
            getattr(args, d, None) for d in SECRET_DESTS):
        for dest, key in SECRET_DESTS.items():
            if key in values and _applies(args, dest):
                value = values[key]
                setattr(args, dest, str(value) if isinstance(value, Path) else value)
                taken.add(key)
    if config is not None and taken and _reaches_nodes(args):
        from fwc.commands.trust import untrusted

        diagnostics = [*diagnostics, *untrusted(config, taken)]
        if any(d.is_error for d in diagnostics):
            return diagnostics
    if hasattr(args, "include_path") and not args.include_path and "include_path" in values:
        args.include_path = list(values["include_path"])  # type: ignore[call-overload]
        # `fwc diff` reads each side's own fwc.toml instead (fwc.diffing.project)
        args.include_path_from_config = True
    for dest, value in BUILTIN.items():
        if _applies(args, dest) and getattr(args, dest) is None:
            setattr(args, dest, value)
    args.project_config = config.path if config is not None else None
    return diagnostics


class ProjectParser(argparse.ArgumentParser):
    """The `fwc` parser: parsed arguments come with the project's defaults filled in."""

    def parse_known_args(self, args=None, namespace=None):  # type: ignore[no-untyped-def]
        parsed, rest = super().parse_known_args(args, namespace)
        problems = apply_project_defaults(parsed)
        if problems:
            from fwc.commands.common import report

            # in the format asked for: a CI job reading SARIF or annotations sees it too
            fmt = getattr(parsed, "format", "text")
            report(problems, {}, fmt if fmt in DIAGNOSTIC_FORMATS else "text")
            self.exit(2)
        return parsed, rest
