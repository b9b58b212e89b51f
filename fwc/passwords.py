"""What a VRRP password must be, wherever it comes from (the policy, a password file,
`fwc install --secrets`): one set of rules, so that no path writes a password the
policy checks would have refused."""

from __future__ import annotations

from dataclasses import dataclass

from fwc import protocols as proto


@dataclass(frozen=True, slots=True)
class Problem:
    code: str  # the policy check that reports it (FWC212, FWC505)
    message: str
    hint: str


def unwritable(text: str, quote_ok: bool) -> str | None:
    """What in TEXT a quoted string of a generated file cannot hold (None: nothing)."""
    for char in text:
        if ord(char) < 0x20 or ord(char) == 0x7F:
            return f"the control character {char!r}"
        if char == '"' and not quote_ok:
            return "a double quote"
    return None


def password_problems(password: str) -> list[Problem]:
    """Every reason PASSWORD cannot be a VRRP password; the messages never show it."""
    out: list[Problem] = []
    if len(password) > proto.VRRP_PASSWORD_MAX:
        out.append(Problem("FWC212", f"VRRP password has {len(password)} characters; "
                           f"keepalived uses only the first {proto.VRRP_PASSWORD_MAX}",
                           f"use at most {proto.VRRP_PASSWORD_MAX} characters"))
    problem = unwritable(password, quote_ok=False)
    if problem is not None:
        out.append(Problem("FWC505", f"the VRRP password contains {problem}, which "
                           "keepalived.conf cannot hold",
                           "use printable characters other than '\"'"))
    return out
