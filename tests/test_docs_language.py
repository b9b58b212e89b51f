"""docs/language.md: its example checks clean and it documents every keyword of the grammar."""

from __future__ import annotations

import re

from conftest import REPO

from fwc.pipeline import analyse

LANGUAGE = REPO / "docs" / "language.md"
GRAMMAR = REPO / "grammar" / "fwc.lark"


def test_the_example_at_the_top_checks_clean(tmp_path):
    text = LANGUAGE.read_text(encoding="utf-8")
    example = re.search(r"```\n(# policies/edge.fw \(abridged\)\n.*?)```", text, re.S)
    assert example is not None
    path = tmp_path / "example.fw"
    path.write_text(example.group(1), encoding="utf-8")
    analysis = analyse(path)
    assert analysis.policy is not None
    assert [f"{d.code}: {d.message}" for d in analysis.diagnostics] == []


def test_every_grammar_keyword_is_documented():
    grammar = GRAMMAR.read_text(encoding="utf-8")
    keywords = set(re.findall(r'"([a-z][a-z-]*)"', grammar))
    # keywords that outrank NAME are regexes ending at a word boundary: /(?:a|b)(?!...)/
    for words in re.findall(r"/(?:\(\?:)?([a-z|-]+)\)?\(\?!", grammar):
        keywords.update(words.split("|"))
    assert {"cluster", "vrrp", "sync", "mark-bit", "only", "expect"} <= keywords
    doc = LANGUAGE.read_text(encoding="utf-8")
    missing = sorted(k for k in keywords if not re.search(rf"`[^`]*\b{re.escape(k)}\b[^`]*`", doc))
    assert missing == [], f"docs/language.md does not mention: {missing}"
