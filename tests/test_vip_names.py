"""VIP names (issue 14): `IFACE.vip` never picks one of several VIPs silently.

`interface uplink vip web 198.51.100.254/24, mail 198.51.100.253/24` names each VIP;
`uplink.vip.web` is that address alone, in rules and as a NAT target. `uplink.vip`
as a NAT target of an interface with several VIPs of a family is FWC117.
"""

from __future__ import annotations

from checkkit import BASE, assert_diagnostic, line_of, mutate, run, with_code

from fwc.backend.output import compile_policy
from fwc.diagnostics import Severity
from fwc.frontend.formatting import format_text

E = Severity.ERROR
TWO_VIPS = ("interface uplink vip 198.51.100.254/24  vrid 52",
            "interface uplink vip 198.51.100.254/24, 198.51.100.253/24  vrid 52")
NAMED = ("interface uplink vip 198.51.100.254/24  vrid 52",
         "interface uplink vip web 198.51.100.254/24, mail 198.51.100.253/24  vrid 52")


def test_fwc117_unnamed_vips_make_iface_vip_ambiguous_as_a_nat_target(tmp_path):
    text = mutate(TWO_VIPS)
    analysis = run(tmp_path, text)
    d = assert_diagnostic(analysis, "FWC117", E, line_of(text, "-> uplink.vip"),
                          "ambiguous", "198.51.100.254/24", "198.51.100.253/24", "IPv4")
    assert d.hint and "uplink.vip.NAME" in d.hint
    assert analysis.policy is not None
    # the rule is not kept with a silently chosen address
    assert all(r.action != "snat" for r in analysis.policy.clusters[0].nat)


def test_fwc117_lists_named_choices(tmp_path):
    text = mutate(NAMED)
    d = assert_diagnostic(run(tmp_path, text), "FWC117", E, line_of(text, "-> uplink.vip"),
                          "uplink.vip.web (198.51.100.254/24)",
                          "uplink.vip.mail (198.51.100.253/24)")
    assert d.hint and "uplink.vip.web" in d.hint


def test_named_vip_is_one_address_in_nat_and_rules(tmp_path):
    text = mutate(NAMED, ("-> uplink.vip\n", "-> uplink.vip.mail\n"),
                  ("to uplink.vip service", "to uplink.vip.web service"))
    analysis = run(tmp_path, text)
    assert analysis.diagnostics == ()
    cluster = analysis.policy.clusters[0]
    snat = cluster.nat[0]
    assert snat.target is not None and snat.target.label == "uplink.vip.mail"
    assert [str(c) for c in snat.target.addresses.cidrs(4)] == ["198.51.100.253"]
    dnat = cluster.nat[1]
    assert [str(c) for c in dnat.destination.addresses.cidrs(4)] == ["198.51.100.254"]
    files = {f.path: f.content.decode() for f in compile_policy(analysis.policy)[0].files}
    rules = files["fw1/iptables.rules"]
    assert "-j SNAT --to-source 198.51.100.253" in rules
    assert "--to-source 198.51.100.254" not in rules
    # both VIPs are in the VRRP instance
    conf = files["fw1/keepalived.conf"]
    assert "198.51.100.254/24 dev eth1" in conf and "198.51.100.253/24 dev eth1" in conf


def test_fwc118_unknown_vip_name(tmp_path):
    text = mutate(NAMED, ("-> uplink.vip\n", "-> uplink.vip.wbe\n"))
    d = assert_diagnostic(run(tmp_path, text), "FWC118", E, line_of(text, "uplink.vip.wbe"),
                          "no VIP named 'wbe'")
    assert d.hint and "web" in d.hint


def test_fwc118_name_on_an_interface_without_names(tmp_path):
    text = mutate(("-> uplink.vip\n", "-> uplink.vip.web\n"))
    d = assert_diagnostic(run(tmp_path, text), "FWC118", E, line_of(text, "uplink.vip.web"),
                          "no VIP named 'web'")
    assert d.hint and "interface uplink vip web" in d.hint


def test_fwc119_vip_name_twice(tmp_path):
    text = mutate(("interface uplink vip 198.51.100.254/24  vrid 52",
                   "interface uplink vip web 198.51.100.254/24, web 198.51.100.253/24  vrid 52"),
                  ("-> uplink.vip\n", "-> uplink.vip.web\n"))
    analysis = run(tmp_path, text)
    d = assert_diagnostic(analysis, "FWC119", E, line_of(text, "interface uplink"), "'web'")
    assert d.span.column == text.splitlines()[d.span.line - 1].rindex("web ") + 1


def test_one_vip_per_family_stays_unambiguous(tmp_path):
    analysis = run(tmp_path, BASE)
    assert not with_code(analysis, "FWC117")


def test_named_vips_format_and_query_fragments(tmp_path):
    text = mutate(NAMED, ("-> uplink.vip\n", "-> uplink.vip.web\n"))
    formatted = format_text(text)
    assert "vip web 198.51.100.254/24, mail 198.51.100.253/24  vrid 52" in formatted
    assert format_text(formatted) == formatted
