"""The resolver's shortcuts mean exactly what the general code means."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fwc.diagnostics import Span
from fwc.frontend import resolve
from fwc.frontend import syntax as s
from fwc.frontend.loader import LoadedProgram, load

_OCTETS = st.one_of(st.integers(0, 300).map(str), st.sampled_from(["00", "01", "010", "255",
                                                                    "256", "1a", "", "٣", " 1"]))
_PREFIXES = st.one_of(st.just(""), st.integers(0, 40).map(lambda n: f"/{n}"),
                      st.sampled_from(["/024", "/", "/x", "/33", "/0", "/32", "/²"]))


@st.composite
def _address(draw: st.DrawFn) -> str:
    octets = draw(st.lists(_OCTETS, min_size=3, max_size=5))
    return ".".join(octets) + draw(_PREFIXES)


def _both_ways(text: str, want: str, monkeypatch) -> tuple[object, object]:
    program = LoadedProgram("/", (), ())
    word = s.Word(text, Span("t.fw", 1, 1, 1, 1 + len(text)))
    fast = resolve.Resolver(program)
    got_fast = fast.parse_address(word, want=want)
    with monkeypatch.context() as patch:
        patch.setattr(resolve, "_plain_ipv4", lambda _text: None)
        slow = resolve.Resolver(program)
        got_slow = slow.parse_address(word, want=want)
    return (got_fast, fast.diagnostics), (got_slow, slow.diagnostics)


@settings(max_examples=400, deadline=None)
@given(_address(), st.sampled_from(["host", "network", "any"]))
def test_plain_ipv4_addresses_resolve_as_ipaddress_does(text: str, want: str):
    with pytest.MonkeyPatch.context() as monkeypatch:
        fast, slow = _both_ways(text, want, monkeypatch)
    assert fast == slow


def test_the_shortcut_takes_the_common_forms(monkeypatch):
    for text, want in (("192.0.2.1", "host"), ("192.0.2.0/24", "network"),
                       ("0.0.0.0/0", "any"), ("192.0.2.1/32", "host")):
        assert resolve._plain_ipv4(text) is not None
        fast, slow = _both_ways(text, want, monkeypatch)
        assert fast == slow and fast[0] is not None and fast[1] == []
    for text in ("192.0.2.01", "192.0.2.1/33", "2001:db8::1", "192.0.2", "1.2.3.256"):
        assert resolve._plain_ipv4(text) is None


def test_an_object_naming_an_interface_subnet_is_not_unused(tmp_path):
    edge = Path(__file__).resolve().parent.parent / "policies" / "edge.fw"
    policy = tmp_path / "p.fw"
    policy.write_text(edge.read_text(encoding="utf-8")
                      + "network sync_net 203.0.113.0/24\nnetwork elsewhere 203.0.113.128/25\n")
    program, diagnostics = load(policy)
    assert diagnostics == []
    _, found = resolve.resolve(program)
    unused = {d.message for d in found if d.code == "FWC103"}
    assert "object 'elsewhere' is never used" in unused
    assert "object 'sync_net' is never used" not in unused


def _edge_with_rules(tmp_path: Path, rules: str, head: str = "") -> tuple[object, list]:
    edge = Path(__file__).resolve().parent.parent / "policies" / "edge.fw"
    text = head + edge.read_text(encoding="utf-8").replace(
        "policy edge {\n", "policy edge {\n" + rules, 1)
    policy = tmp_path / "p.fw"
    policy.write_text(text, encoding="utf-8")
    program, diagnostics = load(policy)
    assert diagnostics == []
    return resolve.resolve(program)


def test_an_inline_service_resolved_once_per_text_still_reports_every_bad_one(tmp_path):
    policy, found = _edge_with_rules(tmp_path, "    accept from any to web service tcp/8443\n"
                                     "    accept from any to web service tcp/99999\n"
                                     "    accept from any to web service tcp/8443\n"
                                     "    accept from any to web service tcp/99999\n")
    bad = [d for d in found if d.code == "FWC107"]
    assert [d.span.line for d in bad] == [42, 44]
    rules = policy.clusters[0].rules
    assert rules[0].services == rules[1].services != ()
    assert rules[0].services[0].ports[0].low == 8443


def test_one_named_service_resolves_as_a_list_of_services_does(tmp_path):
    policy, found = _edge_with_rules(tmp_path, "    accept from any to web service web\n"
                                     "    accept from any to web service web, web\n")
    rules = policy.clusters[0].rules
    assert rules[0].services * 2 == rules[1].services
    assert rules[0].service_labels == ("web",)
    assert not [d for d in found if d.code == "FWC101"]
    # and a service no other rule uses counts as used through the short way
    head = "service extra tcp/7000\n"
    _, found = _edge_with_rules(tmp_path, "", head)
    assert any("'extra'" in d.message for d in found)  # unused without the rule
    _, found = _edge_with_rules(tmp_path, "    accept from any to web service extra\n", head)
    assert not any("'extra'" in d.message for d in found)


@settings(max_examples=400, deadline=None)
@given(_address())
def test_a_plain_group_member_resolves_as_parse_address_does(text: str):
    # `_plain_address` (group members) is parse_address(want="any") where it answers.
    program = LoadedProgram("/", (), ())
    ordinary = resolve.Resolver(program)
    expected = ordinary.parse_address(s.Word(text, Span("t.fw", 1, 1, 1, 1 + len(text))),
                                      want="any")
    got = resolve._plain_address(text)
    assert got is None or (got == expected and not ordinary.diagnostics)
    if resolve._plain_ipv4(text) is not None and not ordinary.diagnostics:
        assert got == expected  # every plain form that resolves cleanly is taken
