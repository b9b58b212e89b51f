"""The single-line path of the iptables render (`_one_line`, taken by `_rule_lines` and
`rule_bodies` when a file's memos are at hand) writes what the general path writes
(`rule_pieces`, taken without memos), for rules drawn over every field that reaches
the line."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from fwc.backend.lower.ruleset import (
    AddressMatch,
    Chain,
    ConnLimit,
    FilterRule,
    HashLimit,
    Match,
    NodeRuleset,
    Origin,
    RateLimit,
    Table,
)
from fwc.backend.render import iptables
from fwc.model import PortRange
from fwc.model.vocabulary import Table as TableName
from fwc.model.vocabulary import Target

CIDRS = st.sampled_from(["192.0.2.1", "192.0.2.0/24", "2001:db8::1", "2001:db8::/48"])
SIDES = st.one_of(
    st.just(AddressMatch()),
    st.builds(AddressMatch, st.lists(CIDRS, min_size=1, max_size=3, unique=True).map(tuple),
              st.none(), st.booleans()),
    st.builds(AddressMatch, st.just(()), st.sampled_from(["fwc4-web", "fwc6.abc"]),
              st.booleans()))
PORTS = st.lists(st.builds(lambda a, b: PortRange(min(a, b), max(a, b)),
                           st.integers(1, 65535), st.integers(1, 65535)),
                 max_size=18).map(tuple)
MATCHES = st.builds(
    Match, SIDES, SIDES, st.sampled_from([None, "eth0", "bond0.7"]),
    st.sampled_from([None, "eth1"]), st.sampled_from([None, 6, 17, 1, 58, 47]), PORTS,
    st.sampled_from([None, 8]), st.booleans(),
    st.sampled_from([(), ("NEW",), ("RELATED", "ESTABLISHED")]), st.sampled_from([None, 255]),
    st.sampled_from([None, RateLimit("5/second", 10)]),
    st.sampled_from([None, ("SYN,RST", "SYN")]), st.sampled_from([None, (3, 1)]),
    st.sampled_from([None, ConnLimit(8, 32)]),
    st.sampled_from([None, HashLimit("10/minute", 5, "fwc-h1", True)]))
RULES = st.builds(
    FilterRule, MATCHES, st.sampled_from([Target.ACCEPT, Target.DROP, "fwc-accept", Target.LOG]),
    st.builds(Origin, st.just("policy"), st.sampled_from(["p.fw:3", "fwc auto: x", 'a"b'])),
    st.sampled_from([(), (("log-prefix", "fwc DROP "),), (("reject-with", "tcp-reset"),)]))


@settings(max_examples=150, deadline=None)
@given(st.lists(RULES, min_size=1, max_size=6))
def test_the_single_line_path_writes_the_general_lines(rules: list[FilterRule]) -> None:
    protocol_texts: iptables.ProtocolTexts = {}
    shapes: iptables.ShapeTexts = {}
    for rule in rules:  # one memo for several rules, as in a file
        general = iptables.rule_bodies(rule)
        assert iptables.rule_bodies(rule, protocol_texts, shapes) == general
        text, count = iptables._rule_lines(rule, protocol_texts, "\n-A fwd-x ", shapes)
        text = "-A fwd-x " + text
        assert count == len(general)
        assert text == "\n".join("-A fwd-x " + line for line in general)


def test_single_lines_take_the_fast_path(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    taken: list[str] = []
    one_line = iptables._one_line
    monkeypatch.setattr(iptables, "_one_line",
                        lambda *args: taken.append("x") or one_line(*args))
    rule = FilterRule(Match(AddressMatch(("192.0.2.1",)), protocol=6,
                            dports=(PortRange(22, 22),)), Target.ACCEPT, Origin("policy", "p:1"))
    text, count = iptables._rule_lines(rule, {}, "\n-A INPUT ", {})
    text = "-A INPUT " + text
    assert (text, count) == ('-A INPUT -s 192.0.2.1/32 -p tcp -m tcp --dport 22 -m comment '
                             '--comment "p:1" -j ACCEPT', 1)
    assert taken == ["x"]


@settings(max_examples=100, deadline=None)
@given(st.lists(RULES, min_size=1, max_size=5),
       st.lists(st.lists(st.integers(0, 4), max_size=8), min_size=1, max_size=4))
def test_a_rule_in_several_places_is_written_as_each_place_alone(
        rules: list[FilterRule], places: list[list[int]]) -> None:
    """`blocks` renders a rule met again from what it kept (the texts of the rules that
    occur more than once): the same rule object in several chains, or twice in one, is
    written as if each place were rendered on its own, and so is a rule whose slot
    another render left."""
    chains = tuple(Chain(f"c{i}", None, tuple(rules[j % len(rules)] for j in picks))
                   for i, picks in enumerate(places))
    ruleset = NodeRuleset("c", "fw1", 4, (Table(TableName.FILTER, chains),))
    expected = ["*filter", *(f":{c.name} - [0:0]" for c in chains)]
    for chain in chains:
        expected += [f"-A {chain.name} {line}" for rule in chain.rules
                     for line in iptables.rule_bodies(rule)]
    expected.append("COMMIT")
    for _ in range(2):  # the second render meets the slots the first one left
        text = iptables.render(ruleset)
        assert text.split("\n")[1:] == [*expected, ""]
