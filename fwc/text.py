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
import re
import sys
import unicodedata

ESCAPES = {'"': '"', "\\": "\\"}

# What a reader cannot see as it is: controls (a terminal acts on an escape sequence; a
# lone CR, a form feed or U+0085 look like a line break), format characters (the
# bidirectional controls reorder a line, "trojan source"; zero-width ones, the soft
# hyphen and the tag characters are invisible), surrogates, line and paragraph
# separators. Fixed Unicode categories, so the answer does not change with the Python
# version; every bidirectional control (U+061C, U+200E, U+200F, U+202A-U+202E,
# U+2066-U+2069) is a format character.
HIDDEN_CATEGORIES = frozenset(("Cc", "Cf", "Cs", "Zl", "Zp"))

# Invisible too, though letters and marks (Unicode's default-ignorable code points that
# are printable to Python): the Hangul fillers, the combining grapheme joiner and the
# Khmer inherent vowels. A string holding one reads as the same string without it (the
# fillers are the classic invisible JavaScript identifier).
_INVISIBLE_PRINTABLE = frozenset("\u115f\u1160\u3164\uffa0\u034f\u17b4\u17b5")

# The line-break look-alikes among them (U+2028 and U+2029 are the whole of categories
# Zl and Zp): editors, browsers and `git diff` may break the line there, fwc's lexer
# does not (only at "\n").
_LINE_BREAKS = frozenset("\r\x0b\x0c\x85\u2028\u2029")

# The bidirectional formatting characters (embeddings, overrides, isolates and marks).
_BIDI_CONTROLS = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e"
                           "\u2066\u2067\u2068\u2069")

# Candidates in a policy's text: anything outside printable ASCII, tab and line feed, and
# a carriage return that does not end a line (CR LF is a line end).
_SOURCE_CANDIDATE = re.compile(r"[^\t\n\r\x20-\x7e]|\r(?!\n)")


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
                "\x1b": "ESCAPE", "\x7f": "DELETE", "\x0b": "LINE TABULATION",
                "\x0c": "FORM FEED", "\x85": "NEXT LINE"}.get(char, "")
    code = f"U+{ord(char):04X}"
    return f"{code} ({name})" if name else code


def is_hidden(char: str) -> bool:
    """Whether a reader cannot see CHAR as it is (HIDDEN_CATEGORIES, and the few
    invisible letters and marks)."""
    return unicodedata.category(char) in HIDDEN_CATEGORIES or char in _INVISIBLE_PRINTABLE


def is_line_break_look_alike(char: str) -> bool:
    """Whether an editor or a diff may show CHAR as a line break, where fwc reads none."""
    return char in _LINE_BREAKS


def is_bidi_control(char: str) -> bool:
    """Whether CHAR is a bidirectional formatting character (reorders what is shown)."""
    return char in _BIDI_CONTROLS


def escape_hidden(text: str) -> str:
    """TEXT with each hidden character written as its Python escape (`\\u202e`), so that
    a terminal shows what is there instead of acting on it or showing nothing."""
    if text.isascii() and text.isprintable():  # (the common case, at once)
        return text
    return "".join(char.encode("unicode_escape").decode("ascii") if is_hidden(char)
                   else char for char in text)


def unsafe_character(text: str) -> tuple[int, str] | None:
    """(index, character) of the first character no generated file may carry, else None.

    Every hidden character (HIDDEN_CATEGORIES): control characters (C0, DEL, C1: a
    newline ends a line of iptables-restore input and starts a new rule), line and
    paragraph separators (Python and editors break lines there), surrogates (a file name
    that is not UTF-8: it cannot be written into a UTF-8 file), bidirectional controls
    and the other invisible format characters (`"/usr/bin/\\u200blogger"` runs another
    program than the one a reviewer reads).
    """
    if text.isascii() and text.isprintable():
        return None
    for index, char in enumerate(text):
        if is_hidden(char):
            return index, char
    return None


def hidden_in_source(text: str) -> list[tuple[int, str]]:
    """(index, character) of each character of a policy's text a reviewer cannot see:
    every hidden character but tab, line feed and the CR of a CR LF line end; in
    comments too, where a bidirectional control reorders the line shown and a line-break
    look-alike shows a rule that is part of the comment."""
    return [(match.start(), match.group()) for match in _SOURCE_CANDIDATE.finditer(text)
            if is_hidden(match.group())]


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
