"""Name and endpoint checks (FWC105, FWC112, FWC113)."""

from __future__ import annotations

import pytest
from checkkit import BASE, EXAMPLES, assert_diagnostic, line_of, mutate, run, with_code

from fwc.diagnostics import Severity

E, W = Severity.ERROR, Severity.WARNING
SERVER_RULE = "accept from server to client   service tcp/5001"


def test_fwc105_source_and_destination_share_no_family(tmp_path):
    text = mutate((SERVER_RULE, "accept from lan6 to server service tcp/5001"))
    analysis = run(tmp_path, text)
    d = assert_diagnostic(analysis, "FWC105", E, line_of(text, "from lan6 to server"),
                          "source is IPv6 only", "destination IPv4 only")
    # the span points at the destination, the side that does not fit
    line = text.splitlines()[d.span.line - 1]
    assert d.span.column == line.index("server") + 1


def test_fwc105_icmp_service_between_ipv6_endpoints(tmp_path):
    text = mutate((SERVER_RULE, "accept from lan6 to any service icmp/echo-request"))
    analysis = run(tmp_path, text)
    assert_diagnostic(analysis, "FWC105", E, line_of(text, "icmp/echo-request"),
                      "icmp/echo-request is IPv4 only", "endpoints are IPv6")


def test_fwc105_icmp_and_icmpv6_in_one_list_is_fine(tmp_path):
    text = mutate((SERVER_RULE, "accept from lan to any service icmp/echo-request, "
                   "icmpv6/echo-request"))
    assert with_code(run(tmp_path, text), "FWC105") == []


def test_fwc105_snat_of_ipv6_source_to_ipv4_vip(tmp_path):
    text = mutate(("snat from lan to any", "snat from lan6 to any"))
    analysis = run(tmp_path, text)
    d = assert_diagnostic(analysis, "FWC105", E, line_of(text, "snat from lan6"),
                          "target 'uplink.vip' is IPv4", "traffic is IPv6")
    line = text.splitlines()[d.span.line - 1]
    assert d.span.column == line.index("uplink.vip") + 1


def test_fwc105_dnat_target_of_the_other_family(tmp_path):
    text = mutate(("-> web", "-> 2001:db8:1::80"))
    analysis = run(tmp_path, text)
    assert_diagnostic(analysis, "FWC105", E, line_of(text, "2001:db8:1::80"),
                      "dnat target '2001:db8:1::80' is IPv6", "traffic is IPv4")


def test_fwc105_expectation_between_families(tmp_path):
    text = BASE + "\nexpect edge {\n    allow lan6 -> server service tcp/5001\n}\n"
    analysis = run(tmp_path, text)
    assert_diagnostic(analysis, "FWC105", E, line_of(text, "allow lan6"), "expectation source")


def test_fwc112_negation_removes_everything(tmp_path):
    text = mutate((SERVER_RULE, "accept from client, !lan to any service tcp/5001"))
    analysis = run(tmp_path, text)
    assert_diagnostic(analysis, "FWC112", E, line_of(text, "!lan"),
                      "source 'client, !lan' matches no address")


def test_fwc112_negated_any(tmp_path):
    text = mutate((SERVER_RULE, "accept from !any to client service tcp/5001"))
    analysis = run(tmp_path, text)
    assert_diagnostic(analysis, "FWC112", E, line_of(text, "!any"), "matches no address")


def test_fwc113_negation_that_excludes_nothing(tmp_path):
    text = mutate((SERVER_RULE, "accept from lan, !server to any service tcp/5001"))
    analysis = run(tmp_path, text)
    d = assert_diagnostic(analysis, "FWC113", W, line_of(text, "!server"),
                          "'!server' excludes nothing")
    line = text.splitlines()[d.span.line - 1]
    assert d.span.column == line.index("!server") + 1


def test_negation_inside_the_list_is_fine(tmp_path):
    text = mutate((SERVER_RULE, "accept from lan, !client to any service tcp/5001"))
    analysis = run(tmp_path, text)
    assert with_code(analysis, "FWC112") == [] and with_code(analysis, "FWC113") == []


@pytest.mark.parametrize("policy", EXAMPLES, ids=lambda p: p.name)
def test_name_checks_silent_on_examples(examples, policy):
    analysis = examples[policy.name].analysis
    codes = {"FWC105", "FWC112", "FWC113"}
    assert [d for d in analysis.diagnostics if d.code in codes] == []
