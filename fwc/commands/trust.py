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

The trust covers the files of the repository a command names too (`named_files`: a
`./get-secret`, an `ssh -F ./ssh_config` whose ProxyCommand runs anything): a pull
request that changes one of them, and not fwc.toml, would otherwise run its new content
under the old trust. A file that such a file runs in turn is not covered (direnv has the
same limit): keep what a trusted command runs outside the repository, or in one file.

The record lives in the user's private state directory ($XDG_STATE_HOME/fwc/trust,
else ~/.local/state/fwc/trust), as entries authenticated with a key of its own, like
the result cache's (fwc.cache): an entry nobody wrote through `fwc trust` is not taken,
and a directory others can change is refused.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shlex
import sys
from collections.abc import Collection, Mapping
from pathlib import Path

from fwc.cache import CacheRefused, ResultCache, open_cache
from fwc.diagnostics import Diagnostic, Span, error
from fwc.frontend.project import CONFIG_NAME, ProjectConfig, load_config
from fwc.frontend.sources import repository_root, resolved

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


def _words(command: str) -> list[str]:
    """The words of COMMAND that may name a file: each shell word, the words of a word
    that is itself a command line (`sh -c '...'`), the value of `--option=value` and of a
    glued short option (`-F./cfg`)."""
    try:
        words = shlex.split(command)
    except ValueError:
        return []
    out: list[str] = []
    for word in words:
        inner = [word]
        if any(c.isspace() for c in word):
            with contextlib.suppress(ValueError):
                inner += shlex.split(word, comments=True)
        for part in inner:
            out.append(part)
            if "=" in part:
                out.append(part.split("=", 1)[1])
            if part.startswith("-") and not part.startswith("--") and len(part) > 2:
                out.append(part[2:])
    return out


def named_files(config: ProjectConfig, commands: Mapping[str, str],
                cwd: Path | None = None) -> dict[str, str]:
    """(path in the repository -> SHA-256) of every regular file of the repository holding
    CONFIG that a word of COMMANDS names, as the command would find it from CWD (the
    commands run in fwc's working directory)."""
    assert config.path is not None
    root = repository_root(config.path)
    here = cwd or Path.cwd()
    found: dict[str, str] = {}
    for command in commands.values():
        for word in _words(command):
            if not word or "\0" in word:
                continue
            path = resolved(here / Path(word).expanduser())
            if not path.is_relative_to(root) or not path.is_file():
                continue
            try:
                with open(path, "rb") as stream:
                    digest = hashlib.file_digest(stream, "sha256").hexdigest()
            except OSError:
                continue  # (unreadable: the command cannot run it either)
            found[str(path.relative_to(root))] = digest
    return found


def _entry(config: ProjectConfig, commands: Mapping[str, str],
           files: Mapping[str, str]) -> str:
    assert config.path is not None
    what = {"file": str(trusted_at(config.path)), "commands": dict(commands)}
    if files:  # (an entry made before files were covered stays valid for no file)
        what["files"] = dict(files)
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
    files = named_files(config, commands)
    try:
        if _store(environ).get_json(KIND, _entry(config, commands, files)) is not None:
            return []
    except CacheRefused as exc:
        reason = f" (the trust record cannot be read: {exc})"
    else:
        if files:
            reason = (" as it is now, with the files of the repository it names ("
                      + ", ".join(repr(name) for name in sorted(files)) + ")")
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
    files = named_files(config, commands)
    try:
        _store(os.environ).put_json(KIND, _entry(config, commands, files),
                                    {"file": str(path), "commands": commands, "files": files})
    except (CacheRefused, OSError) as exc:
        print(f"fwc: cannot record the trust: {exc}", file=sys.stderr)
        return 2
    for key, value in commands.items():
        print(f"{path}: trusted {key} = {value!r}")
    for name in sorted(files):
        print(f"{path}: trusted the file {name!r} as it is now (sha256 {files[name][:16]}...)")
    return 0
