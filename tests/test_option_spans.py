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
    assert OptionSpans.of([]) == NO_OPTION_SPANS and NO_OPTION_SPANS.get("in") is None
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
    assert first.option_spans.keys() == ("service", "in", "out", "log")
    # flat: the file, then each key with four numbers; no pair, no Span per option
    assert type(first.option_spans) is OptionSpans
    assert all(type(value) in (str, int) for value in first.option_spans)
    assert plain.option_spans == NO_OPTION_SPANS
    assert plain.span_of("in") == plain.span  # an option it lacks: the rule itself
    assert limited.span_of("limit").line == at + 2
    assert limited.option_spans.keys() == ("service", "in", "limit")
