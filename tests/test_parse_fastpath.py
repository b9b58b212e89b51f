"""The parser's fast path (fwc/frontend/fastpath.py) builds exactly lark's tree, or defers.

Every text is parsed both ways, with the fast path and with lark alone, and the results
(statements with every span, comments, diagnostics) must be equal.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.generate import build_site, fwc_policy
from fwc.frontend import fastpath, parse
from fwc.frontend.fastpath import FastPath
from fwc.frontend.parse import PolicyParser, parse_text

REPO = Path(__file__).resolve().parent.parent

_PARSER = PolicyParser()  # reused: building one costs more than parsing a small text


def both_ways(text: str, path: str = "t.fw"):
    fast = parse_text(text, path, _PARSER)
    slow = parse_text(text, path, _PARSER, fast=False)
    return fast, slow


def assert_same(text: str, path: str = "t.fw") -> None:
    (fast, fast_diagnostics), (slow, slow_diagnostics) = both_ways(text, path)
    assert fast_diagnostics == slow_diagnostics
    assert fast.statements == slow.statements
    assert fast.comments == slow.comments
    assert fast == slow


def fast_lines(text: str) -> int:
    """How many lines the fast path takes from lark in TEXT."""
    runs = parse._runs(text.split("\n"), FastPath(parse._tables().patterns, "t.fw"))
    return sum(len(run.rest) for run in runs)


def _texts() -> dict[str, str]:
    """Every policy file of the repository, and every code block of the docs."""
    out = {}
    for path in sorted(REPO.glob("policies/**/*.fw")) + sorted(REPO.glob("tests/**/*.fw")) \
            + sorted(REPO.glob("fwc/library/**/*.fw")):
        out[str(path.relative_to(REPO))] = path.read_text(encoding="utf-8")
    for doc in sorted(REPO.glob("docs/*.md")):
        blocks = re.findall(r"^```\n(.*?)^```", doc.read_text(encoding="utf-8"), re.M | re.S)
        out.update((f"{doc.name}#{n}", block) for n, block in enumerate(blocks))
    return out


_TEXTS = _texts()


@pytest.mark.parametrize("name", sorted(_TEXTS))
def test_every_policy_of_the_repository_parses_the_same_both_ways(name: str):
    assert_same(_TEXTS[name], name)


@pytest.mark.parametrize("shape", ["site", "groups", "interfaces"])
def test_bench_policies_parse_the_same_both_ways_and_mostly_fast(shape: str):
    text = fwc_policy(build_site(300, shape=shape))
    assert_same(text)
    rules_and_definitions = len(re.findall(
        r"^\s*(?:accept|drop|reject|host|network|group|service) ", text, re.M))
    assert fast_lines(text) > 0.9 * rules_and_definitions


def test_an_error_anywhere_gives_lark_diagnostics():
    text = "".join(f"host h{i} 192.0.2.{i}\n" for i in range(30)) + "policy c {\n" + "".join(
        f"    accept from h{i}, h{i + 1} to any service tcp/{i + 1} in a out b\n"
        for i in range(30)) + "}\n"
    assert fast_lines(text) > 50
    lines = text.split("\n")
    rule = next(i for i, line in enumerate(lines) if line.strip().startswith("accept"))
    for broken in (lines[rule] + " ,", lines[rule].replace(" to ", " to ,"), "    accept",
                   lines[rule] + ' log "\\q"', "}", "    host h 192.0.2.1"):
        changed = lines[:rule + 5] + [broken] + lines[rule + 5:]
        (fast, fast_diagnostics), (slow, slow_diagnostics) = both_ways("\n".join(changed))
        assert slow_diagnostics, broken
        assert fast_diagnostics == slow_diagnostics
        assert fast == slow


@pytest.mark.parametrize("text", [
    # a line the fast path could read, continued on the next line
    "policy c {\n accept from a to b\n service s\n accept from a to b\n accept from b to c\n}\n",
    "policy c {\n accept from a to b\n accept from a to b\n , c\n}\n",
    "group g a\ngroup h b\ngroup i c\n, d\n",
    "group g\ngroup h\nhost\nx 192.0.2.1\n",
    # a keyword where a name may stand: the next statement starts there
    "group g\ngroup h\ngroup i host a 192.0.2.1\n",
    "group g\ngroup h\ngroup i host, a\n",
    "group g\ngroup h\ngroup i include\n",
    "policy c {\n accept from a to b in accept\n accept from a to b in drop\n}\n",
    # the first line of a run is not where lark reads a statement
    "cluster c {\n log {\n group 5\n }\n}\nhost a 192.0.2.1\nhost b 192.0.2.2\n",
    "policy c {\n accept from a to b in\n accept from c to d\n accept from e to f\n x\n}\n",
    "group g a,\nhost h 192.0.2.1\nhost i 192.0.2.2\n",
    # spellings lark reads its own way
    "policy c {\n accept from a to b inside\n accept from a to b outer\n}\n",
    "policy c {\n accept from !a, ! b to any service tcp/80,ssh, udp/53 only m log\n"
    " drop from a.vip to a.vip.b, 192.0.2.1-192.0.2.9, 2001:db8::/64 log \"x\\\"y\"\n"
    " drop from a to b log \"a\\\\b\" in c\n}\n",
    "policy c {\n drop from a to b\n drop from a to b log \"x\\ty\"\n}\n",
    "service s tcp/80,443\nservice t s, udp/53\nservice u tcp/80, helper\n",
    "host h 192.0.2.1, 2001:db8::1\nnetwork n 192.0.2.0/24\nhost a 1.2.3.4.5\nhost b ::\n",
    "policy c {\n\taccept\tfrom\ta\tto\tb\r\n\taccept from a to b # c\n accept from a to b\f\n}\n",
])
def test_corner_cases_parse_the_same_both_ways(text: str):
    assert_same(text)


# -- random and mutated lines --------------------------------------------------------------
_WORDS = ["accept", "drop", "reject", "from", "to", "service", "in", "out", "only", "log",
          "with", "limit", "notrack", "any", "firewall", "host", "network", "group", "helper",
          "policy", "a", "b-1", "x_y", "any1", "in1", "h.vip", "h.vip.w", "vip", "tcp/22",
          "tcp/80,443", "udp/53", "icmp/echo-request", "192.0.2.1", "192.0.2.0/24",
          "2001:db8::1", "::", "192.0.2.1-192.0.2.9", "1.2.3.4.5", "1234.1.1.1", '"p"',
          '"a\\qb"', '"x y"', "#c", "}", "{", "->", "!", ",", "-", "a-", "_", "9"]
_SEPARATORS = [" ", " ", " ", "", ", ", ",", "\t", " ! "]
_RULES = [
    "accept from a to b", "drop from a, b to c service s", "reject from !a to any in x out y",
    "accept from any to firewall service tcp/22, udp/53 log", 'accept from a to b log "p"',
    "host h 192.0.2.1", "network n 2001:db8::/64, 192.0.2.0/24", "group g a, b, 192.0.2.1",
    "service s tcp/80,443, t", "group g", "accept from a.vip to a.vip.b service t only m",
    "accept from 192.0.2.1-192.0.2.9, ::1 to ! 2001:db8::/64",
]


@st.composite
def _line(draw: st.DrawFn) -> str:
    if draw(st.booleans()):
        words = draw(st.lists(st.sampled_from(_WORDS), min_size=1, max_size=14))
        out = words[0]
        for word in words[1:]:
            out += draw(st.sampled_from(_SEPARATORS)) + word
        return out
    line = draw(st.sampled_from(_RULES))
    for _ in range(draw(st.integers(0, 3))):  # mutate: insert, delete or replace a piece
        at = draw(st.integers(0, len(line)))
        piece = draw(st.sampled_from(_WORDS + _SEPARATORS))
        how = draw(st.sampled_from(["insert", "delete", "replace"]))
        if how == "insert":
            line = line[:at] + " " * draw(st.integers(0, 1)) + piece + line[at:]
        elif how == "delete":
            line = line[:at] + line[at + draw(st.integers(1, 6)):]
        else:
            line = line[:at] + piece + line[at + len(piece):]
    return line


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_line(), min_size=1, max_size=6), st.booleans())
def test_random_lines_parse_the_same_both_ways(lines: list[str], in_policy: bool):
    body = "\n".join("    " + line for line in lines)
    text = f"policy c {{\n{body}\n}}\n" if in_policy else body + "\n"
    # the run's first line is lark's: repeat the lines so that the others are the fast path's
    assert_same(text.replace(body, body + "\n" + body))


@settings(max_examples=200, deadline=None)
@given(_line())
def test_a_line_the_fast_path_reads_is_read_so_by_lark(line: str):
    fast = FastPath(parse._tables().patterns, "t.fw")
    rule, definition = fast.rule(line, 2), fast.definition(line, 1)
    if rule is not None:
        source, diagnostics = parse_text(f"policy c {{\n{line}\n}}\n", "t.fw", _PARSER,
                                         fast=False)
        assert diagnostics == [] and source.statements[0].rules == (rule,)
    if definition is not None:
        source, diagnostics = parse_text(line + "\n", "t.fw", _PARSER, fast=False)
        assert diagnostics == [] and source.statements == (definition,)


def test_comments_after_the_lines_lark_does_not_see_keep_their_offsets():
    # The fast lines after a run's first are emptied in the text lark parses: a comment
    # after them, on its own line or after a statement, keeps its offset in the text.
    text = ("host a 192.0.2.1\nhost b 192.0.2.2\n  host c 192.0.2.3   \n# one\n"
            "host d 192.0.2.4  # two\n\ncluster c {\n}\npolicy c {\n"
            "    accept from a to b\n    accept from b to a\n    drop from a, b to c\n"
            "    # three\n    reject from d to a # four\n}\n")
    assert fast_lines(text) >= 3
    assert_same(text)
    fast, _ = parse_text(text, "t.fw", _PARSER)
    assert [text[c.start:c.end] for c in fast.comments] == ["# one", "# two", "# three",
                                                             "# four"]


def _reference_plain_rule() -> re.Pattern[str]:
    """PLAIN_RULE written plainly (greedy quantifiers, optional groups): the same
    language and groups, several times slower to match (tests compare the two)."""
    s, w = r"[ \t\r\f]", r'[^ \t\r\f,!"#]+'
    words = f"{w}(?:{s}*,{s}*{w})*"
    names = r'[^ \t\r\f,!"#/]+' + f"(?:{s}*,{s}*" + r'[^ \t\r\f,!"#/]+)*'
    return re.compile(
        f"{s}*((" + "|".join(sorted(fastpath.ACTIONS))
        + f"){s}+from{s}+({words}){s}+to{s}+({words})"
        f"(?:{s}+service{s}+({names}))?(?:{s}+in{s}+({w}))?(?:{s}+out{s}+({w}))?"
        f'(?:{s}+(log)(?:{s}+("[^"\\\\#\n]*"))?)?(?:{s}+only{s}+({w}))?){s}*')


def _reference_definitions() -> tuple[re.Pattern[str], re.Pattern[str]]:
    """PLAIN_ADDRESS and PLAIN_GROUP written plainly (greedy, optional group)."""
    s, w = r"[ \t\r\f]", r'[^ \t\r\f,!"#]+'
    words = f"{w}(?:{s}*,{s}*{w})*"
    return (re.compile(f"{s}*(host|network){s}+({w}){s}+({w}){s}*"),
            re.compile(f"{s}*(group){s}+({w})(?:{s}+({words}))?{s}*"))


_SPACED = st.lists(st.sampled_from(_WORDS + _SEPARATORS + [" ", "\t ", " ,", "  "]),
                   min_size=1, max_size=16).map("".join)


@settings(max_examples=400, deadline=None)
@given(st.one_of(_line(), _SPACED, _line().map(lambda line: "  " + line + " \t")))
def test_the_possessive_patterns_match_as_their_plain_writing(line: str):
    """PLAIN_RULE, PLAIN_ADDRESS and PLAIN_GROUP are written for speed (possessive
    quantifiers, alternations for optional parts): each matches a line exactly when its
    plain writing does, with the same groups at the same places."""
    address, group = _reference_definitions()
    for fast, plain in ((fastpath.PLAIN_RULE, _reference_plain_rule()),
                        (fastpath.PLAIN_ADDRESS, address), (fastpath.PLAIN_GROUP, group)):
        mine, theirs = fast.fullmatch(line), plain.fullmatch(line)
        assert (mine is None) == (theirs is None), (fast.pattern, line)
        if mine is not None and theirs is not None:
            assert mine.regs == theirs.regs
    assert fastpath.PLAIN_WORD.findall(line) == re.findall(r'[^ \t\r\f,!"#]+', line)


@pytest.mark.parametrize("shape", ["site", "groups", "interfaces"])
def test_the_possessive_rule_pattern_matches_the_bench_lines_as_its_plain_writing(shape: str):
    plain = _reference_plain_rule()
    for line in fwc_policy(build_site(2000, shape=shape)).split("\n"):
        mine, theirs = fastpath.PLAIN_RULE.fullmatch(line), plain.fullmatch(line)
        assert (mine.regs if mine else None) == (theirs.regs if theirs else None), line
