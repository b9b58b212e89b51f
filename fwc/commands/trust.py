"""`fwc trust`: the commands a repository's fwc.toml names run only once you said so.

fwc.toml comes with the repository, and a pull request may change it. Three of its
keys decide what fwc runs on this machine, or where: `ssh` (the command that install,
status and `diff --installed` run), `secrets_command` (run to print the VRRP password)
and `transport` (`local` installs on this machine). fwc takes their values from
fwc.toml only after `fwc trust` recorded exactly these values for this file where it
is; a file whose values changed since, or a link to a file trusted elsewhere
(`trusted_at`), is refused (FWC037) until they are trusted again, as direnv and mise
do with a directory's commands. A value on the command line (`--ssh`,
`--secrets-command`, `--transport`) needs no trust, nor one equal to the built-in
default.

The record lives in the user's private state directory ($XDG_STATE_HOME/fwc/trust,
else ~/.local/state/fwc/trust), as entries authenticated with a key of its own, like
the result cache's (fwc.cache): an entry nobody wrote through `fwc trust` is not taken,
and a directory others can change is refused.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from collections.abc import Collection, Mapping
from pathlib import Path

from fwc.cache import CacheRefused, ResultCache, open_cache
from fwc.diagnostics import Diagnostic, Span, error
from fwc.frontend.project import CONFIG_NAME, ProjectConfig, load_config
from fwc.frontend.sources import resolved

# fwc.toml keys whose value decides what fwc runs on this machine, or where
COMMAND_KEYS = ("ssh", "secrets_command", "transport")
# values that change nothing: what fwc does without the key (fwc.commands.defaults)
HARMLESS = {"ssh": "ssh", "transport": "ssh"}
KIND = "trust"


def trust_location(environ: Mapping[str, str] = os.environ) -> Path:
    """$XDG_STATE_HOME/fwc/trust (only an absolute XDG_STATE_HOME counts), else
    ~/.local/state/fwc/trust."""
    base = environ.get("XDG_STATE_HOME", "")
    if base and os.path.isabs(base):
        return Path(base) / "fwc" / "trust"
    home = environ.get("HOME") or os.path.expanduser("~")
    return Path(home) / ".local" / "state" / "fwc" / "trust"


def commands_of(config: ProjectConfig) -> dict[str, str]:
    """The command keys CONFIG sets to something else than what fwc does without them."""
    return {key: str(config.values[key]) for key in COMMAND_KEYS
            if key in config.values and str(config.values[key]) != HARMLESS.get(key)}


def trusted_at(path: Path) -> Path:
    """Where the fwc.toml PATH is, as its trust is recorded: its directory absolute with
    every link followed, and the name `fwc.toml` itself not followed. Git checks out
    symbolic links: an fwc.toml linked to a file trusted for another repository would
    otherwise borrow that trust, and its commands would run in this one."""
    return resolved(path.parent.absolute()) / path.name


def _entry(config: ProjectConfig, commands: Mapping[str, str]) -> str:
    assert config.path is not None
    what = {"file": str(trusted_at(config.path)), "commands": dict(commands)}
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()


def _store(environ: Mapping[str, str]) -> ResultCache:
    # (never pruned: an entry is a decision, not a result; a few bytes per file trusted)
    return open_cache(environ, location=trust_location(environ), what="trust record",
                      variable="XDG_STATE_HOME")


def untrusted(config: ProjectConfig, used: Collection[str],
              environ: Mapping[str, str] = os.environ) -> list[Diagnostic]:
    """FWC037 for each key of USED that CONFIG sets to a command not trusted as it is."""
    commands = commands_of(config)
    keys = [key for key in COMMAND_KEYS if key in used and key in commands]
    if not keys or config.path is None:
        return []
    reason = ""
    try:
        if _store(environ).get_json(KIND, _entry(config, commands)) is not None:
            return []
    except CacheRefused as exc:
        reason = f" (the trust record cannot be read: {exc})"
    shown = str(config.path)
    # (repr: a value holding control characters shows them escaped, never raw)
    return [error("FWC037", f"{CONFIG_NAME} sets {key} = {commands[key]!r}, "
                  f"which fwc would run, and you have not trusted it{reason}",
                  config.spans.get(key, Span(shown, 1, 1, 1, 1)),
                  hint=f"read {shown}, then run 'fwc trust {shown}' (or give "
                  f"--{key.replace('_', '-')} on the command line)")
            for key in keys]


def run(args: argparse.Namespace) -> int:
    from fwc.commands.common import report
    from fwc.frontend.project import find_config

    start = Path(args.file) if args.file else Path.cwd()
    path = start if start.name == CONFIG_NAME and start.is_file() else find_config(start)
    if path is None:
        print(f"fwc: no {CONFIG_NAME} for '{start}' (looked up to the repository root)",
              file=sys.stderr)
        return 2
    config, diagnostics = load_config(path)
    if any(d.is_error for d in diagnostics):
        report(diagnostics, {}, "text")
        return 2
    commands = commands_of(config)
    if not commands:
        print(f"{path}: names no command; nothing to trust")
        return 0
    try:
        _store(os.environ).put_json(KIND, _entry(config, commands),
                                    {"file": str(path), "commands": commands})
    except (CacheRefused, OSError) as exc:
        print(f"fwc: cannot record the trust: {exc}", file=sys.stderr)
        return 2
    for key, value in commands.items():
        print(f"{path}: trusted {key} = {value!r}")
    return 0
