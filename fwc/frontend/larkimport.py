"""lark, imported without the third-party `regex` module.

lark imports `regex` whenever it is installed (on the machines measured, for other
tools: it is no fwc dependency), only to offer `Lark(regex=True)`, which fwc never asks
for; the import costs about 20 ms of every start-up of `fwc check` and `fwc compile`.
It is hidden while lark is imported, so lark takes it for not installed (it then reads
the terminals' widths with `re`, as fwc's fast path reads the terminals themselves), and
visible again right after for anything else in the process.
"""

from __future__ import annotations

import sys

_HIDDEN = "regex" not in sys.modules
if _HIDDEN:
    sys.modules["regex"] = None  # type: ignore[assignment]  # `import regex` fails
try:
    from lark import Lark, Token, Transformer  # noqa: E402
    from lark.exceptions import (  # noqa: E402
        UnexpectedCharacters,
        UnexpectedEOF,
        UnexpectedInput,
        UnexpectedToken,
    )
finally:
    if _HIDDEN:
        del sys.modules["regex"]

__all__ = ["Lark", "Token", "Transformer", "UnexpectedCharacters", "UnexpectedEOF",
           "UnexpectedInput", "UnexpectedToken"]
