"""What a VRRP password must be, wherever it comes from (the policy, a password file,
`fwc install --secrets`): one set of rules, so that no path writes a password the
policy checks would have refused."""

from __future__ import annotations

from fwc import protocols as proto
from fwc.model.records import dataclass
from fwc.text import describe_character, unsafe_character, utf8_length


@dataclass(frozen=True, slots=True)
class Problem:
    code: str  # the policy check that reports it (FWC212, FWC213, FWC505)
    message: str
    hint: str


def unwritable(text: str, quote_ok: bool) -> str | None:
    """What in TEXT a quoted string of a generated file cannot hold (None: nothing).

    The same characters that string literals refuse (FWC004): values from password
    files and `--secrets` reach here without passing the parser.
    """
    bad = unsafe_character(text)
    if bad is not None:
        return f"the character {describe_character(bad[1])}"
    if not quote_ok:
        for char in proto.KEEPALIVED_UNQUOTABLE:
            if char in text:
                return _KEEPALIVED_CANNOT[char]
        if escapes_closing_quote(text):
            return "a backslash at its end (keepalived reads it with the closing quote)"
        if text == proto.KEEPALIVED_BLOCK_END:
            return "only a '}' (keepalived reads it as the end of the block)"
    return None


def escapes_closing_quote(text: str) -> bool:
    """True when TEXT ends in an odd number of backslashes: written between keepalived's
    quotes, the last one escapes the closing quote (proto.KEEPALIVED_ESCAPE)."""
    trailing = len(text) - len(text.rstrip(proto.KEEPALIVED_ESCAPE))
    return trailing % 2 == 1


# Why each of proto.KEEPALIVED_UNQUOTABLE cannot stand in a keepalived string.
_KEEPALIVED_CANNOT = {'"': "a double quote", "$": "a '$' (keepalived expands it)"}


def password_problems(password: str) -> list[Problem]:
    """Every reason PASSWORD cannot be a VRRP password; the messages never show it."""
    out: list[Problem] = []
    if not password:
        # keepalived: "Authentication specified but no password given. Ignoring"
        out.append(Problem("FWC213", "an empty VRRP password; keepalived would run without "
                           "authentication", "give a password of 1-8 bytes, or none and no "
                           "'auth'"))
    size = utf8_length(password)
    if size > proto.VRRP_PASSWORD_MAX:
        # keepalived copies strlen() bytes into an 8-byte field: it counts bytes.
        counted = f"{len(password)} characters" + (
            f", {size} bytes in UTF-8" if size != len(password) else "")
        out.append(Problem("FWC212", f"VRRP password has {counted}; keepalived uses only "
                           f"the first {proto.VRRP_PASSWORD_MAX} bytes",
                           f"use at most {proto.VRRP_PASSWORD_MAX} bytes (an ASCII "
                           "character is one byte, most others two to four)"))
    problem = unwritable(password, quote_ok=False)
    if problem is not None:
        out.append(Problem("FWC505", f"the VRRP password contains {problem}, which "
                           "keepalived.conf cannot hold",
                           "use printable characters other than '\"' and '$', and do not "
                           "end it with a backslash"))
    return out


def describe_problems(problems: list[Problem]) -> str:
    """PROBLEMS on one line, each with its check's code and how to fix it (never the
    password): what `fwc install --secrets` and the Ansible role both say."""
    return "; ".join(f"{p.message} [{p.code}]: {p.hint}" for p in problems)
