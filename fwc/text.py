"""Text that users write and generated files carry: string literals and their characters.

The language's string literals know two escapes, `\\"` and `\\\\` (docs/language.md);
everything else between the quotes is taken as written, as Unicode text. The
generated files are UTF-8 and line-oriented, so some characters can never be
carried safely: `unsafe_character` names them, for literals, file names and
values read from password files alike.
"""

from __future__ import annotations

import contextlib
import os
import sys
import unicodedata

ESCAPES = {'"': '"', "\\": "\\"}

# Bidirectional formatting characters make a reviewer read a line in another order
# than the programs that consume it ("trojan source"); no policy string needs them.
_BIDI_CONTROLS = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e"
                           "\u2066\u2067\u2068\u2069")


class LiteralError(ValueError):
    """A string literal that cannot be decoded; `offset` is in the literal's text."""

    def __init__(self, message: str, offset: int, hint: str) -> None:
        super().__init__(message)
        self.message = message
        self.offset = offset
        self.hint = hint


def describe_character(char: str) -> str:
    """`U+000A (LINE FEED)`: readable in a diagnostic whatever the character is."""
    name = unicodedata.name(char, "")
    if not name:
        name = {"\n": "LINE FEED", "\r": "CARRIAGE RETURN", "\t": "TAB", "\x00": "NUL",
                "\x1b": "ESCAPE", "\x7f": "DELETE"}.get(char, "")
    code = f"U+{ord(char):04X}"
    return f"{code} ({name})" if name else code


def unsafe_character(text: str) -> tuple[int, str] | None:
    """(index, character) of the first character no generated file may carry, else None.

    Control characters (C0, DEL, C1: a newline ends a line of iptables-restore input
    and starts a new rule), line and paragraph separators (Python and editors break
    lines there), surrogates (a file name that is not UTF-8: it cannot be written
    into a UTF-8 file) and bidirectional formatting characters. Only fixed Unicode
    categories are used, so the answer does not change with the Python version.
    """
    for index, char in enumerate(text):
        if char.isprintable() or char == " ":
            if char in _BIDI_CONTROLS:
                return index, char
            continue
        category = unicodedata.category(char)
        if category in ("Cc", "Cs", "Zl", "Zp") or char in _BIDI_CONTROLS:
            return index, char
    return None


def decode_literal(body: str) -> str:
    """The value of a string literal's body (the text between the quotes).

    Raises LiteralError for an unknown escape, a backslash at the end, or a
    character that `unsafe_character` refuses.
    """
    if "\\" not in body:
        bad = unsafe_character(body)
        if bad is not None:
            raise _unsafe(bad[0], bad[1])
        return body
    out: list[str] = []
    index = 0
    while index < len(body):
        char = body[index]
        if char == "\\":
            following = body[index + 1: index + 2]
            if following in ESCAPES:
                out.append(ESCAPES[following])
                index += 2
                continue
            if not following:
                raise LiteralError("a string ends in a lone backslash", index,
                                   'write \\\\ for a backslash')
            shown = following if following.isprintable() else describe_character(following)
            raise LiteralError(f"unknown escape '\\{shown}' in a string", index,
                               'strings know only \\" and \\\\; write \\\\ for a backslash')
        if unsafe_character(char) is not None:
            raise _unsafe(index, char)
        out.append(char)
        index += 1
    return "".join(out)


def _unsafe(index: int, char: str) -> LiteralError:
    return LiteralError(f"a string contains the character {describe_character(char)}",
                        index, "strings hold printable text only: remove the character")


def encode_literal(value: str) -> str:
    """The string literal whose value is `value` (the inverse of decode_literal)."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def utf8_length(text: str) -> int:
    """Length in bytes, as the C programs reading the generated files count it."""
    return len(text.encode("utf-8", "surrogatepass"))


def cut_utf8(text: str, limit: int) -> str:
    """The longest prefix of `text` that fits in `limit` UTF-8 bytes (never half a character)."""
    encoded = text.encode("utf-8")
    if len(encoded) <= limit:
        return text
    return encoded[:limit].decode("utf-8", "ignore")


def utf8_command() -> list[str] | None:
    """This command again in Python's UTF-8 mode, when the locale's encoding is another
    one; None when it is UTF-8 (or the interpreter is not known).

    Python names files in the locale's encoding, and the mode is chosen at start-up
    only. Under a Latin-1 locale `include "lib/hé.fw"` opened another file than the
    policy names, and a policy `büro.fw` was `bÃ¼ro.fw` in its MANIFEST and every rule
    comment (another policy to the next compile). Policies, the names of their files
    and every generated file are UTF-8 (docs/language.md), whatever the locale."""
    if sys.flags.utf8_mode or sys.getfilesystemencoding() == "utf-8" or not sys.executable \
            or "utf8" in sys._xoptions \
            or os.environ.get("PYTHONUTF8") == "0" \
            or not _read_again():  # asked for, or cannot be: never started again
        return None
    # (the command line as the interpreter got it, interpreter options included)
    return [sys.executable, "-X", "utf8", *sys.orig_argv[1:]]


def _read_again() -> bool:
    """Whether a second interpreter finds this program where the first found it: a module
    (-m), a -c string or a regular file. Not standard input (`python3 - ARGS`) nor a pipe
    (/dev/stdin, /dev/fd/N), which the first read to the end: the restart found nothing,
    ran nothing and exited 0."""
    main = sys.modules.get("__main__")
    if getattr(main, "__spec__", None) is not None or sys.argv[0] == "-c":
        return True
    return sys.argv[0] not in ("", "-") and os.path.isfile(sys.argv[0])


def in_utf8_mode() -> None:
    """Start this command again in Python's UTF-8 mode when it runs in another (every
    entry point: `fwc`, `python -m fwc`, `python -m fwc.lab`)."""
    again = utf8_command()
    if again is not None:
        with contextlib.suppress(OSError):  # not started: runs on as before
            os.execv(again[0], again)
