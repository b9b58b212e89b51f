"""Parser behaviour on the tricky corners of the grammar."""

from __future__ import annotations

from conftest import write_policy

from fwc.frontend.parse import parse_text
from fwc.frontend.syntax import AddressDef, BlockDecl, ClusterDecl, GroupDef
from fwc.pipeline import analyse


def parse_ok(text: str):
    source, diagnostics = parse_text(text, "t.fw")
    assert diagnostics == [], [d.message for d in diagnostics]
    return source.statements


def test_keyword_named_interface_is_a_name_inside_member_block():
    statements = parse_ok("""
cluster c {
    interface sync
    interface link
    member a priority 10 {
        sync eth2 203.0.113.1/24
        link eth3 203.0.113.65/26
    }
}
""")
    cluster = statements[0]
    assert isinstance(cluster, ClusterDecl)
    assert [link.interface.text for link in cluster.members[0].links] == ["sync", "link"]


def test_ipv6_forms_and_ranges_lex_as_addresses():
    statements = parse_ok("""
host a ::1
host b 2001:db8::1, 192.0.2.1
network c 2001:db8:1::/64
range d 2001:db8::10-2001:db8::20
group cafe a, b
""")
    kinds = [(st.name.text, [v.text for v in st.values]) for st in statements
             if isinstance(st, AddressDef)]
    assert kinds == [("a", ["::1"]), ("b", ["2001:db8::1", "192.0.2.1"]),
                     ("c", ["2001:db8:1::/64"]), ("d", ["2001:db8::10-2001:db8::20"])]
    group = statements[-1]
    assert isinstance(group, GroupDef) and group.name.text == "cafe"


def test_rule_options_any_order_and_service_lists():
    statements = parse_ok("""
policy p {
    accept from a, !b to firewall log "x" in lan service tcp/80,443, udp/53, gre only fw1
}
""")
    block = statements[0]
    assert isinstance(block, BlockDecl)
    rule = block.rules[0]
    assert [(e.kind, e.text, e.negated) for e in rule.sources] == [
        ("name", "a", False), ("name", "b", True)]
    assert [s.text for s in rule.services] == ["tcp/80,443", "udp/53", "gre"]
    assert sorted(o.key for o in rule.options) == ["in", "log", "only", "service"]


def test_nat_targets_with_ports_and_brackets():
    statements = parse_ok("""
nat n {
    dnat from any to uplink.vip service tcp/80 -> 192.0.2.80:8080
    dnat from any to uplink.vip service tcp/81 -> [2001:db8::80]:8080
    dnat from any to uplink.vip service tcp/82 -> web:8080
    snat from lan to any out uplink -> uplink.vip
}
""")
    targets = [(r.target.kind, r.target.text, r.target.port.text if r.target.port else None)
               for r in statements[0].rules]
    assert targets == [("address", "192.0.2.80", "8080"), ("address", "2001:db8::80", "8080"),
                       ("name", "web", "8080"), ("vip", "uplink", None)]


def test_several_syntax_errors_in_one_run(tmp_path):
    path = write_policy(tmp_path, "host a 192.0.2.1\nhost = b\nnetwork n\nhost c 192.0.2.3\n"
                        "servce s tcp/1\n")
    analysis = analyse(path)
    errors = [(d.code, d.span.line) for d in analysis.diagnostics]
    assert ("FWC001", 2) in errors and ("FWC001", 5) in errors
    assert all(code == "FWC001" for code, _ in errors)


def test_syntax_error_names_file_line_column_and_expectation(tmp_path):
    path = write_policy(tmp_path, "policy p {\n    accept form a to b\n}\n")
    diag = analyse(path).diagnostics[0]
    # a near miss of a keyword is named as such (FWC021), with the keyword it misses
    assert diag.code == "FWC021"
    assert (diag.span.line, diag.span.column) == (2, 12)
    assert "form" in diag.message and diag.hint and "did you mean 'from'?" in diag.hint


def test_unclosed_block_reports_end_of_file(tmp_path):
    path = write_policy(tmp_path, "cluster c {\n  interface lan\n")
    diag = analyse(path).diagnostics[0]
    assert diag.code == "FWC001" and "end of file" in diag.message
    assert "'{'" in diag.hint


def test_expectation_interface_is_not_a_service():
    statements = parse_ok("expect c {\n  allow a -> b service web, dns in lan\n"
                          "  deny a -> b service web\n}\n")
    first, second = statements[0].rules
    assert [s.text for s in first.services] == ["web", "dns"]
    assert [(o.key, o.value.text) for o in first.options] == [("in", "lan")]
    assert [s.text for s in second.services] == ["web"] and second.options == ()


def test_empty_group_before_a_statement_keyword(tmp_path):
    path = write_policy(tmp_path, "host a 192.0.2.1\ngroup g\nservice s tcp/1\n")
    codes = [(d.code, d.span.line) for d in analyse(path).diagnostics]
    assert ("FWC104", 2) in codes
    assert not any(code == "FWC001" for code, _ in codes)


def test_names_that_start_with_a_keyword_stay_names():
    statements = parse_ok("""
host anycast 192.0.2.9
host firewall-mgmt 192.0.2.8
group servicehosts anycast, firewall-mgmt
policy p {
    accept from anycast to firewall-mgmt, servicehosts service logging
    dropbox from a to b
}
""".replace("    dropbox from a to b\n", ""))
    rule = statements[-1].rules[0]
    assert [(e.kind, e.text) for e in rule.sources] == [("name", "anycast")]
    assert [(e.kind, e.text) for e in rule.destinations] == [
        ("name", "firewall-mgmt"), ("name", "servicehosts")]
    assert [s.text for s in rule.services] == ["logging"]


def test_service_after_a_literal_address_in_rules_and_expectations():
    statements = parse_ok("policy c {\n  accept from any to 192.0.2.1 service tcp/80\n}\n"
                          "expect c {\n  allow 192.0.2.9 -> 192.0.2.1 service tcp/80\n}\n")
    assert [s.text for s in statements[0].rules[0].services] == ["tcp/80"]
    assert [s.text for s in statements[1].rules[0].services] == ["tcp/80"]


def test_the_excerpt_shows_the_reported_line_and_no_control_character(tmp_path):
    """Excerpts were cut with str.splitlines: after a comment holding U+2028 (or a form
    feed, a lone CR) each showed the line before the one reported. And a comment's
    escape sequence went to the terminal as it was (`ESC[2K ESC[1A` erases the
    diagnostic above it); a bidirectional override reordered the line shown. Each is
    now an error of its own (FWC006), shown escaped, the caret under its escape."""
    from fwc.diagnostics import render_text

    text = ("# a\u2028b\x0cc\rd\nhost a 192.0.2.1\nhost c 192.0.2.300  # \x1b[2K\x1b[1A\u202e\n"
            "host d 192.0.2.4\r\n")
    path = write_policy(tmp_path, text)
    analysis = analyse(path)
    shown = render_text(analysis.diagnostics, analysis.program.texts)
    assert [(d.code, d.span.line, d.span.column) for d in analysis.diagnostics] == [
        ("FWC006", 1, 4), ("FWC006", 1, 6), ("FWC006", 1, 8),
        ("FWC006", 3, 23), ("FWC006", 3, 27), ("FWC006", 3, 31)]
    assert "U+202E (RIGHT-TO-LEFT OVERRIDE)" in shown
    excerpt = "   3 | host c 192.0.2.300  # \\x1b[2K\\x1b[1A\\u202e"
    under_override = " " * excerpt.index("\\u202e") + "^~~~~~"  # the whole escape
    assert f"{excerpt}\n{under_override}\n" in shown
    assert "   1 | # a\\u2028b\\x0cc\\rd\n" + " " * len("   1 | # a\\u2028b") + "^~~~\n" in shown
    assert not [c for c in shown if c != "\n" and not c.isprintable()]
