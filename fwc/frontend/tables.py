"""The analysed grammar (LALR tables, terminals, rules) as plain data, shipped with the package.

Analysing grammar/fwc.lark costs lark about 0.3-0.5 s of CPU, which every fwc process
would pay. The analysis is instead done once, at development time, and committed as a
JSON file, fwc/frontend/tables.json (plain data like lark's standalone tool's literals,
never a pickle; JSON because it loads in ~15 ms where a 0.8 MB Python literal compiles in
~0.2 s whenever no bytecode is cached):

    python3 -m fwc.frontend.tables > fwc/frontend/tables.json

(or `FWC_UPDATE_GOLDEN=1` with tests/test_parse_tables.py, which fails while the
committed tables are stale). The data is keyed by a hash of the grammar text and the lark
version; `load` uses it only when the key matches and otherwise analyses the grammar in
memory, so a changed grammar or another lark is slower, never wrong.

The data is made with the pure-Python lark and holds no lark-cython class: lark's
serialised options would name the plugin classes, so the analysis runs without plugins
and the parser objects get lark-cython's classes when they are built
(`Lark._load_from_dict(..., _plugins=...)` in `fwc.frontend.parse`).
"""

from __future__ import annotations

import hashlib
import json
import sys
from importlib import resources
from pathlib import Path
from typing import NamedTuple

import lark
from lark import Lark
from lark.grammar import Rule
from lark.lexer import TerminalDef

from fwc.frontend.fastpath import Patterns, TerminalInfo

# Start rules of grammar/fwc.lark: a whole file, and the fragments of a rule that
# `fwc query` takes on its command line.
STARTS = ("start", "endpoints_fragment", "services_fragment")
DATA = "tables.json"  # in this package


def grammar_text() -> str:
    """The grammar, from the installed package or, in a checkout, from grammar/."""
    packaged = resources.files("fwc").joinpath("grammar/fwc.lark")
    if packaged.is_file():
        return packaged.read_text(encoding="utf-8")
    checkout = Path(__file__).resolve().parents[2] / "grammar" / "fwc.lark"
    return checkout.read_text(encoding="utf-8")


def key(grammar: str) -> str:
    """What the shipped tables must have been made from: this grammar text and this lark."""
    return hashlib.sha256(f"lark {lark.__version__}\0{grammar}".encode()).hexdigest()


class Tables(NamedTuple):
    data: dict
    memo: dict
    fragment_terminals: dict[str, frozenset[str]]  # per start rule
    terminals: tuple[str, ...]  # the terminals the parser sees (not whitespace, comments)
    patterns: Patterns  # the fast path's lexer, from the same terminals


def analyse(grammar: str) -> dict:
    """GRAMMAR analysed by the pure-Python lark, as plain literal data (see `render`)."""
    base = Lark(grammar, parser="lalr", maybe_placeholders=False, start=list(STARTS))
    data, memo = base.memo_serialize([TerminalDef, Rule])
    data["parser"]["parser"] = _canonical(data["parser"]["parser"])
    if data["options"].get("_plugins"):  # never ship a class; the loader adds the plugins
        raise ValueError("serialised lark options name plugin classes")
    fragments = _terminals_of_starts(base.rules)
    return {
        "key": key(grammar),
        "lark": lark.__version__,
        "data": data,
        "memo": memo,
        "fragment_terminals": {start: tuple(sorted(fragments[start])) for start in STARTS},
        "terminals": tuple(t.name for t in base.terminals if t.name not in base.ignore_tokens),
        "patterns": tuple(tuple(TerminalInfo(t.name, t.pattern.to_regexp(), t.priority,
                                             t.pattern.max_width, len(t.pattern.value)))
                          for t in base.terminals),
    }


def tables(raw: dict) -> Tables:
    """The parser's view of RAW (from `analyse` or the shipped module)."""
    return Tables(raw["data"], raw["memo"],
                  {start: frozenset(names) for start, names in raw["fragment_terminals"].items()},
                  tuple(raw["terminals"]),
                  Patterns(tuple(TerminalInfo(*t) for t in raw["patterns"])))


def shipped() -> dict | None:
    """The committed analysis, or None when there is none or it cannot be read."""
    try:
        text = resources.files("fwc.frontend").joinpath(DATA).read_text(encoding="utf-8")
        raw = json.loads(text, object_hook=_decode_object)
    except (OSError, ValueError):
        return None
    return raw if isinstance(raw, dict) else None


def load(grammar: str) -> Tables:
    """GRAMMAR's tables: the shipped ones when made from this grammar and lark, else analysed."""
    raw = shipped()
    if raw is None or raw.get("key") != key(grammar):
        raw = analyse(grammar)
    return tables(raw)


def render(raw: dict) -> str:
    """RAW as the text of fwc/frontend/tables.json: deterministic, one value a line.

    JSON objects have string keys only; a dict with integer keys (lark's memo, its
    parse table's tokens and states) becomes {"#": [[key, value], ...]}, and tuples
    become lists (lark reads both).
    """
    return json.dumps(_encode(raw), indent=0, separators=(",", ":"), ensure_ascii=True) + "\n"


def _encode(value: object) -> object:
    if isinstance(value, dict):
        if all(isinstance(k, str) for k in value):
            if "#" in value:
                raise ValueError("a key '#' is reserved by the encoding")
            return {k: _encode(v) for k, v in value.items()}
        return {"#": [[k, _encode(v)] for k, v in value.items()]}
    if isinstance(value, list | tuple):
        return [_encode(v) for v in value]
    return value


def _decode_object(obj: dict) -> dict:
    if len(obj) == 1 and "#" in obj:
        return {k: v for k, v in obj["#"]}
    return obj


def _canonical(table: dict) -> dict:
    """The serialised LALR TABLE with its states and tokens numbered in a fixed order.

    lark numbers states and tokens in an order that depends on string hashing, so two
    analyses of one grammar differ in numbering only. Here tokens are numbered by name
    and states in breadth-first order from the start states (`STARTS` order), each
    state's actions visited by token name: one grammar and one lark give the same bytes.
    """
    names = table["tokens"]
    token_index = {name: i for i, name in enumerate(sorted(names.values()))}
    order: dict[int, int] = {}
    todo = [table["start_states"][start] for start in STARTS]
    for state in todo:  # grows while it is walked: breadth first
        if state in order:
            continue
        order[state] = len(order)
        actions = table["states"][state]
        for token in sorted(actions, key=lambda t: names[t]):
            kind, arg = actions[token]
            if kind == 0:
                todo.append(arg)
    if len(order) != len(table["states"]):
        raise ValueError("LALR states unreachable from the start states")
    states = {}
    for old, new in sorted(order.items(), key=lambda item: item[1]):
        actions = table["states"][old]
        states[new] = {
            token_index[names[token]]: (kind, order[arg] if kind == 0 else arg)
            for token, (kind, arg) in sorted(actions.items(), key=lambda a: names[a[0]])}
    return {
        "tokens": {i: name for name, i in token_index.items()},
        "states": states,
        "start_states": {start: order[table["start_states"][start]] for start in STARTS},
        "end_states": {start: order[table["end_states"][start]] for start in STARTS},
    }


def _terminals_of_starts(rules: list[Rule]) -> dict[str, frozenset[str]]:
    """Per start rule, the terminals its text can hold.

    LALR shares states between contexts, so the terminals a syntax error lists
    include those of a whole rule even when only an endpoint list was parsed; a
    fragment's hint keeps only the terminals the fragment can contain.
    """
    expansions: dict[str, list] = {}
    for rule in rules:
        expansions.setdefault(rule.origin.name, []).append(rule.expansion)
    out = {}
    for start in STARTS:
        seen, todo, terminals = {start}, [start], set()
        while todo:
            for expansion in expansions.get(todo.pop(), ()):
                for symbol in expansion:
                    if symbol.is_term:
                        terminals.add(symbol.name)
                    elif symbol.name not in seen:
                        seen.add(symbol.name)
                        todo.append(symbol.name)
        out[start] = frozenset(terminals)
    return out


if __name__ == "__main__":
    sys.stdout.write(render(analyse(grammar_text())))
