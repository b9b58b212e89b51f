"""Policy text that compiled without a word into rules accepting more than it says
(or less than a reader of it believes): each is now a diagnostic at its source."""

from __future__ import annotations

from checkkit import assert_diagnostic, compiled_files, line_of, mutate, run, with_code

from fwc.diagnostics import Severity

E, W = Severity.ERROR, Severity.WARNING
SERVER_RULE = "accept from server to client   service tcp/5001"


def test_fwc107_protocol_zero_is_not_every_protocol(tmp_path):
    # iptables reads `-p 0` as "all": `service proto/0` compiled to an accept of every
    # protocol, while nft and `fwc query` read protocol 0 (tcp/22 "dropped")
    text = mutate((SERVER_RULE, "accept from server to client   service proto/0"))
    analysis = run(tmp_path, text)
    assert_diagnostic(analysis, "FWC107", E, line_of(text, "proto/0"),
                      "'proto/0' would match every protocol")
    # the other numbers stay what they are
    text = mutate((SERVER_RULE, "accept from server to client   service proto/47"))
    assert with_code(run(tmp_path, text), "FWC107") == []


def test_fwc102_an_object_named_like_an_endpoint_keyword(tmp_path):
    # `host firewall 192.0.2.5` was accepted and then ignored by every rule (`to firewall`
    # opened ssh to the nodes, not to the host), while a group took it by name
    text = mutate((SERVER_RULE, "accept from client to firewall service tcp/5001"),
                  ("host    web      192.0.2.80",
                   "host    web      192.0.2.80\nhost    firewall 192.0.2.5\n"
                   "host    any      192.0.2.6\ngroup   both     any, firewall"))
    analysis = run(tmp_path, text)
    refused = with_code(analysis, "FWC102")
    assert [(d.span.line, d.severity) for d in refused] == \
        [(line_of(text, "host    firewall"), E), (line_of(text, "host    any"), E)]
    assert "in a rule 'firewall' means the cluster members' own addresses" \
        in refused[0].message
    # the group's members are not reported again
    assert with_code(analysis, "FWC101") == []


def test_fwc101_endpoint_keyword_in_a_group(tmp_path):
    text = mutate(("host    web      192.0.2.80",
                   "host    web      192.0.2.80\ngroup   everyone any, web"),
                  (SERVER_RULE, "accept from server to everyone service tcp/5001"))
    analysis = run(tmp_path, text)
    assert_diagnostic(analysis, "FWC101", E, line_of(text, "group   everyone"),
                      "'any' is no object")


def test_fwc102_a_service_named_like_a_protocol_is_that_protocol(tmp_path):
    # a rule's `service gre` took the service of that name: `service gre tcp/1-65535`
    # opened every TCP port under a name that reads as GRE
    text = mutate((SERVER_RULE, "accept from server to client   service gre"),
                  ("host    web      192.0.2.80",
                   "host    web      192.0.2.80\nservice gre tcp/1-65535"))
    analysis = run(tmp_path, text)
    assert_diagnostic(analysis, "FWC102", E, line_of(text, "service gre tcp"),
                      "service 'gre' takes the name of the gre protocol (proto/47)")
    # the library's way: the name is the protocol itself
    for same in ("proto/gre", "proto/47"):
        text = mutate((SERVER_RULE, "accept from server to client   service gre"),
                      ("host    web      192.0.2.80",
                       f"host    web      192.0.2.80\nservice gre {same}"))
        assert with_code(run(tmp_path, text), "FWC102") == []


def test_fwc106_ipv4_mapped_ipv6_address(tmp_path):
    # `::ffff:c000:20a` went into the IPv6 rules only: a `drop` of it never dropped
    # 192.0.2.10, without a word (and the dotted form was a syntax error at the '.')
    for written, hint in (("::ffff:c000:20a", "write 192.0.2.10"),
                          ("::ffff:192.0.2.10", "write 192.0.2.10"),
                          ("::ffff:192.0.2.0/120", "write 192.0.2.0/24"),
                          ("::ffff:192.0.2.1-::ffff:192.0.2.5", "write 192.0.2.1-192.0.2.5")):
        text = mutate(("accept from server to client ",
                       f"drop   from {written} to client "))
        d = assert_diagnostic(run(tmp_path, text), "FWC106", E,
                              line_of(text, f"from {written}"),
                              "is IPv4 written as IPv4-mapped IPv6")
        assert d.hint == hint
    # the whole block is a bogon like any other (std/bogons.fw), and an address with
    # an embedded IPv4 tail outside it (NAT64) is plain IPv6
    for fine in ("::ffff:0:0/96", "64:ff9b::192.0.2.0/120"):
        text = mutate((SERVER_RULE, f"drop   from {fine} to lan6"))
        analysis = run(tmp_path, text)
        assert [d for d in analysis.diagnostics if d.is_error] == []


def test_fwc102_any_names_no_service_interface_or_member(tmp_path):
    # `service any tcp, udp` made `drop ... service any` drop TCP and UDP only (ICMP,
    # GRE went on to the later rules); `in any` and `only any` the same way
    text = mutate(("accept from server to client   service tcp/5001",
                   "drop   from server to client   service any in any only any"),
                  ("host    web      192.0.2.80",
                   "host    web      192.0.2.80\nservice any tcp, udp"),
                  ("member fw1 priority", "member any priority")).replace("uplink", "any")
    analysis = run(tmp_path, text)
    found = {d.message.split(":")[0]: d.span.line for d in with_code(analysis, "FWC102")}
    assert found == {"service named 'any'": line_of(text, "service any tcp"),
                     "interface named 'any'": line_of(text, "interface any vip"),
                     "member named 'any'": line_of(text, "member any priority")}


def test_fwc105_ah_is_an_extension_header_in_ipv6(tmp_path):
    # ip6tables' -p and nft's l4proto look past IPv6 extension headers (AH among them):
    # `-p 51` in ip6tables matched nothing, while fwc query said IPv6 AH was accepted
    text = mutate((SERVER_RULE, "accept from lan6 to any service ah"))
    d = assert_diagnostic(run(tmp_path, text), "FWC105", E, line_of(text, "service ah"),
                          "service ah is IPv4 only")
    assert "extension header" in (d.hint or "")
    # between both families the rule is IPv4's alone, as the kernel reads it
    text = mutate((SERVER_RULE, "accept from any to lan, lan6 service ah"))
    files = compiled_files(tmp_path, text)
    assert "-p 51" in files["fw1/iptables.rules"] or "-p ah" in files["fw1/iptables.rules"]
    assert "-p 51" not in files["fw1/ip6tables.rules"]
    assert "-p ah" not in files["fw1/ip6tables.rules"]
