"""Characters a reviewer cannot see (FWC006), in a policy file or in fwc.toml.

Policies and fwc.toml are reviewed as diffs; `fwc.text.hidden_in_source` says which
characters a diff does not show as they are, this module says so in a diagnostic.
Imported by the command line (fwc.toml), so no heavy imports here.
"""

from __future__ import annotations

import unicodedata

from fwc.diagnostics import Diagnostic, Span, error
from fwc.text import describe_character, is_bidi_control, is_line_break_look_alike

# A file full of them (a paste through a word processor) needs no thousand diagnostics.
MAX_REPORTED = 10


def hidden_character_diagnostics(text: str, path: str, hidden: list[tuple[int, str]],
                                 limit: int = MAX_REPORTED) -> list[Diagnostic]:
    """FWC006 for each of HIDDEN (`hidden_in_source(text)`), the first LIMIT of them;
    PATH names the file in the spans."""
    out: list[Diagnostic] = []
    for index, char in hidden[:limit]:
        line = text.count("\n", 0, index) + 1
        column = index - text.rfind("\n", 0, index)
        message, hint = _hidden_explained(char)
        out.append(error("FWC006", message, Span(path, line, column, line, column + 1),
                         hint=hint))
    return out


def _hidden_explained(char: str) -> tuple[str, str]:
    """What CHAR does to a reader of the policy, and how to fix it."""
    named = describe_character(char)
    if is_bidi_control(char):
        return (f"bidirectional control {named}: editors and diffs show this line in "
                "another order than fwc reads it",
                "remove it: right-to-left text is shown right to left without direction controls")
    if is_line_break_look_alike(char):
        return (f"{named} looks like a line break to editors and diffs, but fwc's lines end "
                "only at a newline: what follows it stays on this line (in a comment, "
                "a rule shown after it is part of the comment)",
                "end the line with a newline (LF or CR LF), or remove the character")
    if unicodedata.category(char) in ("Cc", "Cs"):
        return (f"control character {named}: a terminal acts on it instead of showing "
                "it (an escape sequence can erase lines of a diff)",
                "remove it")
    return (f"invisible character {named}: a reviewer cannot see it",
            "remove it" + (" (save the file as UTF-8 without a byte order mark)"
                           if char == "\ufeff" else ""))
