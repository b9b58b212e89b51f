"""Plain rule lines read straight into the model (s.RuleLine, `Resolver.line_rule`).

`load(..., lines=True)` (what `fwc check` and `fwc compile` use) must give the same
resolved policy, and the same diagnostics, as the ordinary way through RuleDecl: on every
policy of the repository, the bench shapes, and random rule lines (plain and unusual).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.generate import build_site, fwc_policy
from fwc.frontend import parse
from fwc.frontend import syntax as s
from fwc.frontend.fastpath import FastPath
from fwc.frontend.loader import LoadedProgram, load
from fwc.frontend.parse import PolicyParser, parse_text
from fwc.frontend.resolve import resolve
from fwc.pipeline import analyse
from fwc.text import hidden_in_source

REPO = Path(__file__).resolve().parent.parent
_PARSER = PolicyParser()


def _resolved_both_ways(path: Path):
    """(ordinary, with rule lines): each (repr of the policy, diagnostics), and the
    number of RuleLine records the second load made."""
    out = []
    lines = 0
    for plain in (False, True):
        program, diagnostics = load(path, lines=plain)
        if plain:
            lines = _rule_lines(program.files)
        policy, resolved = resolve(program)
        out.append((repr(policy), [*diagnostics, *resolved]))
    return out[0], out[1], lines


def _rule_lines(files) -> int:
    return sum(type(rule) is s.RuleLine for f in files for statement in f.statements
               if isinstance(statement, s.BlockDecl) for rule in statement.rules)


def _policy_files() -> list[Path]:
    return sorted(REPO.glob("policies/**/*.fw")) + sorted(REPO.glob("tests/**/*.fw"))


@pytest.mark.parametrize("path", _policy_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_every_policy_of_the_repository_resolves_the_same_with_rule_lines(path: Path):
    ordinary, lines, _ = _resolved_both_ways(path)
    assert lines == ordinary


def test_the_examples_have_rule_lines():
    counts = [_resolved_both_ways(p)[2] for p in sorted(REPO.glob("policies/*.fw"))]
    assert sum(counts) >= 20


@pytest.mark.parametrize("shape", ["site", "groups", "interfaces"])
def test_bench_shapes_resolve_the_same_and_almost_every_rule_is_a_line(shape, tmp_path):
    policy = tmp_path / "p.fw"
    policy.write_text(fwc_policy(build_site(400, shape=shape)), encoding="utf-8")
    ordinary, lines, count = _resolved_both_ways(policy)
    assert lines == ordinary
    assert count > 0.95 * 400


def test_check_gives_the_same_diagnostics_with_and_without_syntax_trees(tmp_path):
    """`analyse(keep_syntax=False)` loads with rule lines: same diagnostics, text included."""
    policy = tmp_path / "p.fw"
    text = fwc_policy(build_site(200, shape="groups"))
    # an undefined object, an undefined service and interface, an unknown member: errors
    # the rule-line path leaves to the ordinary one, in the middle of runs of plain lines
    rules = text.index("policy bench {\n") + len("policy bench {\n")
    second = text.index("\n", rules) + 1
    text = text[:second] + "".join(
        f"    accept from {a} to any service {b} in {c}\n    drop from any to any\n"
        for a, b, c in [("nothere", "svc1", "lan"), ("any", "nosvc", "lan"),
                        ("any", "svc1", "nowhere")]) + text[second:]
    policy.write_text(text, encoding="utf-8")
    with_trees = analyse(policy, keep_syntax=True)
    without = analyse(policy, keep_syntax=False)
    assert [str(d) for d in without.diagnostics] == [str(d) for d in with_trees.diagnostics]
    assert without.diagnostics == with_trees.diagnostics
    assert sum(d.code == "FWC101" for d in without.diagnostics) == 3
    assert without.program.files[0].statements == ()  # the trees are dropped


# -- random rule lines ----------------------------------------------------------------------
_PREAMBLE = """host h1 192.0.2.1
host h2 192.0.2.2
network n1 198.51.100.0/24
group g1 h1, n1
group empty
service web tcp/80, tcp/443
service ssh tcp/22
service loop loop2
service loop2 loop
cluster c {
    vrrp { password "x" advert 1s vrid 61 }
    interface lan vip 192.0.2.254/24
    interface dmz vip 198.51.100.254/24
    member fw1 priority 150 {
        lan eth0 192.0.2.10/24
        dmz eth1 198.51.100.10/24
    }
    member fw2 priority 100 {
        lan eth0 192.0.2.11/24
        dmz eth1 198.51.100.11/24
    }
}
"""
_ENDPOINTS = ["h1", "h2", "n1", "g1", "empty", "any", "firewall", "nothere", "web", "in",
              "from", "to", "log", "any1", "anyx", "lan.vip", "192.0.2.5", "!h1", "! h2",
              "192.0.2.1-192.0.2.3", "h1,h2", "lan.vip.x", '"q"', "h1#c"]
_SERVICES = ["web", "ssh", "loop", "nosvc", "tcp/22", "tcp/80,443", "icmp", "h1", "in",
             "service", "udp/99999"]
_NAMES = ["lan", "dmz", "nowhere", "fw1", "fw2", "fw3", "in", "out", "only", "a/b"]
_PREFIXES = ['"p"', '"two words"', '"a\\qb"', '"#x"', '""', '"a\\"b"', '"x"y', '"é"']
_SPACES = [" ", " ", " ", "  ", "\t", " \t ", "\f"]
_COMMAS = [", ", ", ", ",", " , ", " ,"]


@st.composite
def _list(draw: st.DrawFn, words: list[str]) -> str:
    items = draw(st.lists(st.sampled_from(words), min_size=1, max_size=3))
    out = items[0]
    for item in items[1:]:
        out += draw(st.sampled_from(_COMMAS)) + item
    return out


# What a plain line (s.RuleLine) may hold; the rest is for the unusual lines.
# Mostly defined names, so that most plain lines resolve without the ordinary way.
_PLAIN_ENDPOINTS = ["h1", "h2", "n1", "g1", "any", "firewall"] * 4 + _ENDPOINTS[4:14]
_PLAIN_SERVICES = ["web", "ssh"] * 5 + [w for w in _SERVICES[2:] if "/" not in w]
_PLAIN_NAMES = ["lan", "dmz", "fw1", "fw2"] * 3 + _NAMES[2:-1]
_PLAIN_PREFIXES = ['"p"', '"two words"', '""', '"é"']


@st.composite
def _rule_line(draw: st.DrawFn) -> str:
    """A rule line: half of them plain (what a RuleLine holds, defined or not), the
    others with anything unusual (negations, literals, other options, order, comments,
    odd strings, syntax errors)."""
    plain = draw(st.booleans())
    endpoints = _PLAIN_ENDPOINTS if plain else _ENDPOINTS
    space = st.sampled_from(_SPACES)
    parts = [draw(st.sampled_from(["accept", "drop", "reject"] if plain else
                                  ["accept", "drop", "reject", "allow"])), "from",
             draw(_list(endpoints)), "to", draw(_list(endpoints))]
    options = []
    if draw(st.booleans()):
        options.append(["service", draw(_list(_PLAIN_SERVICES if plain else _SERVICES))])
    for keyword in ("in", "out"):
        if draw(st.integers(0, 2)) == 0:
            options.append([keyword, draw(st.sampled_from(_PLAIN_NAMES if plain else _NAMES))])
    if draw(st.booleans()):
        options.append(["log"] + ([draw(st.sampled_from(_PLAIN_PREFIXES if plain else _PREFIXES))]
                                  if draw(st.booleans()) else []))
    if draw(st.integers(0, 2)) == 0:
        options.append(["only", draw(st.sampled_from(_PLAIN_NAMES if plain else _NAMES))])
    if plain:
        parts += [word for option in options for word in option]
        line = draw(st.sampled_from(["    ", "", "\t"])) + parts[0]
        for part in parts[1:]:
            line += draw(space) + part
        return line
    if draw(st.integers(0, 5)) == 0:
        options.append(draw(st.sampled_from([["notrack"], ["with", "tcp-reset"],
                                             ["limit", "10/second"], ["in", "dmz"],
                                             ["service", "ssh"], ["log", "level", "info"]])))
    if draw(st.integers(0, 3)) == 0:
        options = draw(st.permutations(options))
    for option in options:
        parts.extend(option)
    line = draw(st.sampled_from(["", "    ", "\t", " \f"])) + parts[0]
    for part in parts[1:]:
        line += draw(space) + part
    line += draw(st.sampled_from(["", "", " ", "  # comment", "\r"]))
    if draw(st.integers(0, 6)) == 0:  # mutate: cut or double a piece
        at = draw(st.integers(0, len(line)))
        line = line[:at] + (line[at:at + 3] if draw(st.booleans()) else "") + line[at + 3:]
    return line


def _resolve_text(text: str, plain: bool):
    source, diagnostics = parse_text(text, "t.fw", _PARSER, lines=plain)
    program = LoadedProgram("t.fw", (source,), (("t.fw", "0"),))
    if diagnostics:
        return source, None, diagnostics
    policy, resolved = resolve(program)
    return source, repr(policy), [*diagnostics, *resolved]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_rule_line(), min_size=1, max_size=8))
def test_random_rule_lines_resolve_the_same_both_ways(lines: list[str]):
    # the run's first line stays a RuleDecl (lark checks it): lead with a plain rule
    body = "\n".join(["    accept from h1 to h2 service web", *lines,
                      "    drop from any to any log"])
    text = f"{_PREAMBLE}policy c {{\n{body}\n}}\n"
    ordinary_source, ordinary, ordinary_diagnostics = _resolve_text(text, False)
    source, policy, diagnostics = _resolve_text(text, True)
    assert diagnostics == ordinary_diagnostics
    assert [str(d) for d in diagnostics] == [str(d) for d in ordinary_diagnostics]
    assert policy == ordinary
    # each RuleLine stands where the ordinary parse has the RuleDecl it reads into
    for block, ordinary_block in zip(source.statements, ordinary_source.statements,
                                     strict=True):
        if isinstance(block, s.BlockDecl):
            assert block.span == ordinary_block.span
            assert [r.decl() if type(r) is s.RuleLine else r for r in block.rules] \
                == list(ordinary_block.rules)
            for rule, decl in zip(block.rules, ordinary_block.rules, strict=True):
                assert rule.span == decl.span


@settings(max_examples=200, deadline=None)
@given(_rule_line())
def test_a_line_read_as_a_rule_line_is_one_the_fast_path_reads(line: str):
    fast = FastPath(parse._tables().patterns, "t.fw")
    plain = fast.plain_rule(line, 3)
    if plain is not None:
        # what lark reads from the same line (line 2 of the text, as number 2 says)
        plain = fast.plain_rule(line, 2)
        assert plain is not None
        source, diagnostics = parse_text(f"policy c {{\n{line}\n}}\n", "t.fw",
                                         fast=False)
        if hidden_in_source(line):
            # (a form feed the fast path takes for a blank: parse_text scans for such
            # characters before either parser runs, and refuses the file, FWC006)
            assert diagnostics and {d.code for d in diagnostics} == {"FWC006"}
            with_blanks = parse_text(f"policy c {{\n{line}\n}}\n", "t.fw", fast=True)[1]
            assert {d.code for d in with_blanks} == {"FWC006"}
            return
        assert diagnostics == [] and source.statements[0].rules == (plain.decl(),)
        assert plain.decl().span == plain.span


def test_lines_the_rule_line_path_takes_and_leaves():
    fast = FastPath(parse._tables().patterns, "t.fw")
    takes = ["accept from a to b", "  drop from a, b ,c to any service s, t in x out y log",
             'reject from firewall to a log "p" only fw1', "accept from a\tto b service s\r",
             "accept from a to b service in"]  # a service named `in`: NAME reads it there
    leaves = ["accept from !a to b", "accept from a to b service tcp/22",
              "accept from a to b out y in x", "accept from a to b in x in y",
              "accept from a to b with tcp-reset", "accept from a to b # c",
              "accept from 192.0.2.1 to b", "accept from a.vip to b",
              'accept from a to b log "\\q"', "accept from a to b log level info"]
    assert all(fast.plain_rule(line, 1) is not None for line in takes)
    assert [line for line in leaves if fast.plain_rule(line, 1) is not None] == []
