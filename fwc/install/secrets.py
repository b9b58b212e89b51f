"""Filling redacted secrets back into compiled files at install time.

`fwc compile --redact-secrets` writes a short placeholder instead of the VRRP
password (keepalived uses only 8 characters of auth_pass; the placeholder
fits). The secrets file gives the real values:

    # KEY = VALUE; a cluster-specific key wins over the general one
    vrrp_password = s3cret
    edge.vrrp_password = other

The same text can come from an environment variable or from a command's standard
output (`pass show fwc/edge`, a vault client) instead of a file; when its first
line holds no `=`, that line is the password itself (the general `vrrp_password`)
and the rest is ignored (`pass` keeps notes below the password). A value is never
echoed: errors name the source and the line, not what it holds.
"""

from __future__ import annotations

import os
import shlex
import stat
import subprocess
import sys
from pathlib import Path

from fwc.backend.files import SECRET_FILES
from fwc.model.passwords import describe_problems, password_problems
from fwc.protocols import REDACTED_PASSWORD

__all__ = ["SECRET_FILES", "SecretsError", "fill", "is_redacted", "parse_secrets",
           "read_secret_source", "read_secrets"]
# KEY = VALUE lines, a few per cluster: this stops `--secrets /dev/zero` long before the
# memory runs out (read whole, it ended in a MemoryError traceback).
MAX_SECRETS_BYTES = 64 * 1024
# A secrets command that hangs (a pinentry nobody answers) must not hang fwc.
COMMAND_TIMEOUT = 120.0


class SecretsError(Exception):
    pass


def read_secrets(path: Path) -> dict[str, str]:
    try:
        with path.open("rb") as stream:
            mode = stat.S_IMODE(os.fstat(stream.fileno()).st_mode)
            data = stream.read(MAX_SECRETS_BYTES + 1)
        if len(data) > MAX_SECRETS_BYTES:
            raise SecretsError(f"secrets file {path} is larger than "
                               f"{MAX_SECRETS_BYTES // 1024} KiB")
        text = data.decode("utf-8")
    except OSError as exc:
        raise SecretsError(f"cannot read secrets file {path}: {exc.strerror}") from exc
    except UnicodeDecodeError:
        # Not the decoder's message: it shows a byte of the file and where it is.
        raise SecretsError(f"secrets file {path} is not UTF-8 text") from None
    if mode & 0o077:
        # Read all the same (the password is out already; refusing would only stop the
        # install), but said, as ssh says of a private key others can read.
        print(f"fwc: warning: secrets file {path} is open to other users (mode "
              f"{mode:04o}): chmod 600 {path}", file=sys.stderr)
    return parse_secrets(text, str(path))


def read_secret_source(file: str | None = None, env: str | None = None,
                       command: str | None = None) -> dict[str, str] | None:
    """The secrets from a file, an environment variable or a command (at most one of
    them); None when none is given."""
    given = [what for what in (file, env, command) if what]
    if len(given) > 1:
        raise SecretsError("give the secrets one way: a file, an environment variable or "
                           "a command")
    if file:
        return read_secrets(Path(file))
    if env:
        value = os.environ.get(env)
        if value is None:
            raise SecretsError(f"the environment variable {env} (secrets) is not set")
        return parse_secrets(value, f"${env}", bare=True)
    if command:
        return parse_secrets(_run_command(command), f"secrets command '{command}'", bare=True)
    return None


def _run_command(command: str) -> str:
    argv = shlex.split(command)
    if not argv:
        raise SecretsError("the secrets command is empty")
    try:
        # stderr goes to the user as it is (a `pass` or vault error); stdout only to fwc.
        done = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              timeout=COMMAND_TIMEOUT, check=False)
    except FileNotFoundError as exc:
        raise SecretsError(f"secrets command '{argv[0]}' not found") from exc
    except subprocess.TimeoutExpired as exc:
        raise SecretsError(f"secrets command '{command}' gave no answer within "
                           f"{COMMAND_TIMEOUT:.0f} s") from exc
    if done.returncode != 0:
        raise SecretsError(f"secrets command '{command}' exited with status {done.returncode}")
    try:
        return done.stdout.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SecretsError(f"secrets command '{command}' printed text that is not UTF-8") \
            from exc


def parse_secrets(text: str, where: str, bare: bool = False) -> dict[str, str]:
    """KEY = VALUE lines of TEXT (WHERE names the source in errors); with BARE, a first
    line without `=` is the general VRRP password."""
    first = text.split("\n", 1)[0].strip()
    if bare and first and "=" not in first:
        text = f"vrrp_password = {first}"
    path = where
    out: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise SecretsError(f"{path}:{number}: expected KEY = VALUE")
        value = value.strip().strip('"')
        if key.strip().rpartition(".")[2] == "vrrp_password":
            # The checks a password in the policy passes (never echoing the value).
            column = len(raw) - len(raw.partition("=")[2].lstrip()) + 1
            problems = password_problems(value)
            if problems:
                raise SecretsError(f"{path}:{number}:{column}: " + describe_problems(problems))
        out[key.strip()] = value
    return out


def is_redacted(content: str) -> bool:
    return REDACTED_PASSWORD in content


def fill(cluster: str, name: str, content: str, secrets: dict[str, str] | None) -> str:
    """CONTENT with placeholders replaced; SecretsError when a value is missing."""
    if name not in SECRET_FILES or not is_redacted(content):
        return content
    value = (secrets or {}).get(f"{cluster}.vrrp_password") or (secrets or {}).get(
        "vrrp_password")
    if value is None:
        raise SecretsError(
            f"{name} of cluster {cluster} holds a redacted VRRP password: give --secrets FILE "
            f"with 'vrrp_password = ...' (or '{cluster}.vrrp_password = ...')")
    problems = password_problems(value)
    if problems:
        raise SecretsError(f"the VRRP password for {cluster}: " + describe_problems(problems))
    return content.replace(REDACTED_PASSWORD, value)
