"""Front end: policy text -> model.

Reads the policy files (`sources`, `loader`: confined to the policy repository,
bounded), parses them with the lark grammar into the syntax tree (`parse`,
`syntax`), resolves names into the typed, immutable model (`resolve`), and lays
the text out canonically (`formatting`, for `fwc fmt`). Imports only the model,
`fwc.diagnostics`, `fwc.protocols` and `fwc.text`.
"""

from __future__ import annotations

from collections.abc import Sequence


def close_matches(word: str, possibilities: Sequence[str], n: int = 3,
                  cutoff: float = 0.6) -> list[str]:
    """`difflib.get_close_matches`, for the "did you mean" hints of the front end's
    diagnostics. difflib is imported when a hint is asked for: a policy without mistakes
    never needs it, and its import (with a regular expression compiled) was part of every
    `fwc check` and `fwc compile`."""
    import difflib

    return difflib.get_close_matches(word, possibilities, n, cutoff)
