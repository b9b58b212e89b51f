"""Filling redacted secrets back into compiled files at install time.

`fwc compile --redact-secrets` writes a short placeholder instead of the VRRP
password (keepalived uses only 8 characters of auth_pass; the placeholder
fits). The secrets file gives the real values:

    # KEY = VALUE; a cluster-specific key wins over the general one
    vrrp_password = s3cret
    edge.vrrp_password = other
"""

from __future__ import annotations

from pathlib import Path

from fwc.backend.files import SECRET_FILES
from fwc.model.passwords import Problem, password_problems
from fwc.protocols import REDACTED_PASSWORD

__all__ = ["SECRET_FILES", "SecretsError", "fill", "is_redacted", "read_secrets"]


class SecretsError(Exception):
    pass


def read_secrets(path: Path) -> dict[str, str]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SecretsError(f"cannot read secrets file {path}: {exc.strerror}") from exc
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
                raise SecretsError(f"{path}:{number}:{column}: " + _describe(problems))
        out[key.strip()] = value
    return out


def _describe(problems: list[Problem]) -> str:
    return "; ".join(f"{p.message} [{p.code}]: {p.hint}" for p in problems)


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
        raise SecretsError(f"the VRRP password for {cluster}: " + _describe(problems))
    return content.replace(REDACTED_PASSWORD, value)
