"""Where a declaration's options were written (fwc.diagnostics.OptionSpans).

One flat tuple per declaration instead of a (key, Span) pair and a Span per option: at
100,000 rules those were 35 MB of the compile's memory (issue 12: 100,000 rules in
500 MB). What it answers must not change: the Span of each option written, nothing for
the others, and the rule's own span where a diagnostic asks for an option it lacks.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from fwc.diagnostics import NO_OPTION_SPANS, OptionSpans, Span
from fwc.frontend.loader import load
from fwc.frontend.resolve import resolve

RULES = """\
    accept from lan to web service web in lan out uplink log "web"
    accept from lan to web
    accept from lan to web service web in lan limit 10/second
"""


def test_each_option_written_has_its_span_and_no_other():
    service = Span("p.fw", 3, 30, 3, 43)
    inside = Span("p.fw", 3, 44, 3, 50)
    spans = OptionSpans.of([("service", service), ("in", inside)])
    assert spans.get("service") == service and type(spans.get("service")) is Span
    assert spans.get("in") == inside
    assert spans.get("out") is None and spans.get("p.fw") is None  # the file is no key
    assert spans.keys() == ("service", "in")
    assert spans.pairs() == [("service", service), ("in", inside)]
    assert spans == OptionSpans.of(spans.pairs()) and hash(spans) == hash(
        OptionSpans.of(spans.pairs()))
    assert OptionSpans.of([]) is NO_OPTION_SPANS and NO_OPTION_SPANS.get("in") is None
    assert NO_OPTION_SPANS.keys() == () and NO_OPTION_SPANS.pairs() == []


def test_options_of_one_declaration_are_in_one_file():
    with pytest.raises(ValueError, match="'in' is in q.fw, not in p.fw"):
        OptionSpans.of([("service", Span("p.fw", 1, 1, 1, 2)),
                        ("in", Span("q.fw", 1, 3, 1, 4))])


@pytest.mark.parametrize("lines", [True, False], ids=["rule lines", "syntax trees"])
def test_a_rule_keeps_its_option_columns_flat(edge: Path, lines: bool):
    text = edge.read_text(encoding="utf-8")
    path = edge
    path.write_text(text.replace("policy edge {\n", "policy edge {\n" + RULES), encoding="utf-8")
    row = RULES.splitlines()[0]
    at = text.splitlines().index("policy edge {") + 2  # the first rule's line
    program, diagnostics = load(path, lines=lines)
    policy, resolved = resolve(program)
    assert not [d for d in [*diagnostics, *resolved] if d.severity == "error"]
    first, plain, limited = policy.clusters[0].rules[:3]
    def value(keyword: str) -> Span:  # an option's span is its value's
        column = row.index(f" {keyword} ") + len(keyword) + 3
        return Span(str(path), at, column, at, row.index(" ", column) + 1
                    if " " in row[column:] else len(row) + 1)
    assert first.span_of("service") == value("service")
    assert first.span_of("in") == value("in") and first.span_of("out") == value("out")
    assert first.span_of("log") == value("log")
    assert first.option_spans.keys() == ("from.0", "to.0", "service", "in", "out", "log")
    # flat: the file, then each key with four numbers; no pair, no Span per option
    assert type(first.option_spans) is OptionSpans
    assert all(type(value) in (str, int) for value in first.option_spans)
    assert plain.option_spans.keys() == ("from.0", "to.0")
    assert plain.span_of("in") == plain.span  # an option it lacks: the rule itself
    assert limited.span_of("limit").line == at + 2
    assert limited.option_spans.keys() == ("from.0", "to.0", "service", "in", "limit")


def column_of_negation(rules: str) -> int:
    return rules.splitlines()[3].index("!client") + 1  # the `!` is the item's


@pytest.mark.parametrize("lines", [True, False], ids=["rule lines", "syntax trees"])
def test_where_each_from_and_to_item_was_written_is_its_rules(edge: Path, lines: bool):
    """An item of a from/to list carries no span (so the rules that write the same list
    share one Endpoint); its rule knows where it was written (`item_span`)."""
    rules = ("    accept from client to web\n"  # (a block's first rule is never a plain line)
             "    accept from lan, client to web service web\n"
             "    accept from lan, client to web service ssh\n"
             "    accept from lan, !client to web service ssh\n")
    text = edge.read_text(encoding="utf-8")
    edge.write_text(text.replace("policy edge {\n", "policy edge {\n" + rules),
                    encoding="utf-8")
    at = text.splitlines().index("policy edge {") + 3
    program, _ = load(edge, lines=lines)
    policy, _ = resolve(program)
    first, second, negating = policy.clusters[0].rules[1:4]
    row = rules.splitlines()[1]
    for side, index, word in (("from", 0, "lan"), ("from", 1, "client"), ("to", 0, "web")):
        column = row.index(word) + 1
        assert first.item_span(side, index) == Span(str(edge), at, column, at,
                                                    column + len(word))
        assert second.item_span(side, index).line == at + 1
    assert first.item_span("to", 1) == first.span  # no such item: the rule
    assert negating.item_span("from", 1) == Span(str(edge), at + 2, column_of_negation(rules),
                                                 at + 2, column_of_negation(rules) + 7)
    assert first.source == second.source and first.destination == second.destination
    # one key string per item position and run, not one per rule
    assert all(a is b for a, b in zip(first.option_spans.keys()[:3],
                                      second.option_spans.keys()[:3], strict=True))
    if lines:  # read straight from the lines: one Endpoint per list text
        assert first.source is second.source and first.destination is second.destination
