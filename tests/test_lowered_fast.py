"""The lowered model's direct builders (`with_sides`, `with_limit`, `with_match`) give what
`dataclasses.replace` gives, for every field: a field added to Match or to the rules
without them fails here."""

from __future__ import annotations

import dataclasses

import pytest

from fwc.backend.lower import ruleset
from fwc.model import PortRange
from fwc.model.vocabulary import Target

# A value other than the default for every field of Match.
FULL = ruleset.Match(
    source=ruleset.AddressMatch(("192.0.2.0/24",)),
    destination=ruleset.AddressMatch((), "fwc4-web", True),
    in_device="eth0", out_device="eth1", protocol=6,
    dports=(PortRange(22, 22), PortRange(8000, 8080)), icmp_type=3, tcp_not_syn=True,
    ctstate=("NEW",), hop_limit=255, limit=ruleset.RateLimit("5/second", 10),
    tcp_flags=("SYN,RST", "SYN"), statistic=(3, 0), connlimit=ruleset.ConnLimit(8, 32),
    hashlimit=ruleset.HashLimit("10/second", 20, "h1", True), ttl=255)


def test_full_sets_every_field_of_match() -> None:
    default = ruleset.Match()
    for f in dataclasses.fields(ruleset.Match):
        assert getattr(FULL, f.name) != getattr(default, f.name), f.name


@pytest.mark.parametrize("match", [ruleset.Match(), FULL], ids=["default", "full"])
def test_with_sides_is_replace(match: ruleset.Match) -> None:
    source = ruleset.AddressMatch(("198.51.100.1",))
    destination = ruleset.AddressMatch((), "fwc4-db")
    got = ruleset.with_sides(match, source, destination)
    assert got == dataclasses.replace(match, source=source, destination=destination)
    for f in dataclasses.fields(ruleset.Match):
        expected = dataclasses.replace(match, source=source, destination=destination)
        assert getattr(got, f.name) is getattr(expected, f.name), f.name


@pytest.mark.parametrize("match", [ruleset.Match(), FULL], ids=["default", "full"])
def test_with_limit_is_replace(match: ruleset.Match) -> None:
    limit = ruleset.RateLimit("3/minute", 7)
    got = ruleset.with_limit(match, limit)
    expected = dataclasses.replace(match, limit=limit)
    assert got == expected
    for f in dataclasses.fields(ruleset.Match):
        assert getattr(got, f.name) is getattr(expected, f.name), f.name


@pytest.mark.parametrize("rule", [
    ruleset.FilterRule(FULL, Target.REJECT, ruleset.Origin("policy", "a.fw:3"),
                       (("reject-with", "tcp-reset"),)),
    ruleset.NatRule(ruleset.Match(), Target.SNAT, ruleset.Origin("nat", "a.fw:9"),
                    (("to-source", "203.0.113.1"),)),
], ids=["filter", "nat"])
def test_with_match_is_replace(rule: ruleset.Rule) -> None:
    match = ruleset.Match(protocol=17)
    got = ruleset.with_match(rule, match)
    expected = dataclasses.replace(rule, match=match)
    assert type(got) is type(expected) and got == expected
    for f in dataclasses.fields(rule):
        assert getattr(got, f.name) == getattr(expected, f.name), f.name
    assert got.origin is rule.origin and got.render_slot == -1



@pytest.mark.parametrize("match", [
    ruleset.Match(), FULL,
    dataclasses.replace(FULL, source=ruleset.AddressMatch(("192.0.2.1", "192.0.2.9")),
                        dports=tuple(PortRange(p, p) for p in range(1, 20))),
], ids=["default", "full", "wide"])
def test_arrange_entry_is_its_replace(match: ruleset.Match) -> None:
    from fwc.backend import arrange

    expected = dataclasses.replace(
        match,
        source=match.source if ruleset.address_width(match.source) == 1 else ruleset.ANY,
        destination=match.destination if ruleset.address_width(match.destination) == 1
        else ruleset.ANY,
        dports=match.dports if len(ruleset.port_groups(match.dports)) == 1 else (),
        limit=None, statistic=None, connlimit=None, hashlimit=None)
    assert arrange._entry(match) == expected


def test_a_rule_lines_match_built_without_init_is_matchs_own():
    # build._MATCH fills Match's fields by position, the first seven given and the rest
    # from _LINE_REST: a field added, moved or given a default_factory would shift them.
    from fwc.backend.lower import build

    fields = dataclasses.fields(ruleset.Match)
    assert [f.name for f in fields[:7]] == ["source", "destination", "in_device",
                                            "out_device", "protocol", "dports", "icmp_type"]
    assert all(f.default is not dataclasses.MISSING for f in fields[7:])
    source = ruleset.AddressMatch(("192.0.2.0/24",))
    made = build._MATCH(source, ruleset.ANY, "eth0", None, 6, (PortRange(22, 22),), None,
                        *build._LINE_REST)
    usual = ruleset.Match(source=source, destination=ruleset.ANY, in_device="eth0",
                          protocol=6, dports=(PortRange(22, 22),))
    assert made == usual and hash(made) == hash(usual) and repr(made) == repr(usual)
