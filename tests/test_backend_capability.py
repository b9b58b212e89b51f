"""What a backend cannot express is a diagnostic with the line (FWC230-FWC232), and the
nftables renderer never drops a part of a lowered rule without saying so.
"""

from __future__ import annotations

import dataclasses
import shutil
import subprocess

import pytest
from checkkit import BASE, assert_diagnostic, line_of, mutate, run, with_code
from conftest import cannot_run

from fwc import protocols as proto
from fwc.backend.lower.ruleset import (
    AddressMatch,
    Chain,
    ConnLimit,
    FilterRule,
    HashLimit,
    Match,
    NatRule,
    NodeRuleset,
    Origin,
    RateLimit,
    Table,
)
from fwc.backend.output import compile_policy
from fwc.backend.render import nftables
from fwc.cli import main
from fwc.diagnostics import Severity
from fwc.model import PortRange
from fwc.model.vocabulary import Backend, BuiltinChain, Target
from fwc.model.vocabulary import Table as TableName

NFT_BASE = mutate(("cluster edge {\n", "cluster edge {\n    backend nftables\n"))
QUOTED_LOG = ("    drop   from any    to any\n",
              '    drop   from any    to any      log "say \\"no\\""\n')


# -- FWC230: a log prefix nftables cannot quote ------------------------------------------

def test_log_prefix_with_a_double_quote_is_refused_for_nftables(tmp_path):
    text = mutate(QUOTED_LOG, base=NFT_BASE)
    assert_diagnostic(run(tmp_path, text), "FWC230", Severity.ERROR,
                      line_of(text, 'log "say'), "nftables backend cannot write a log prefix")


def test_log_prefix_with_a_dollar_is_refused_for_nftables(tmp_path):
    # nft replaces `$x` in a string with a define: an unknown one fails the whole file
    text = mutate(("    drop   from any    to any\n",
                   '    drop   from any    to any      log "a$x"\n'), base=NFT_BASE)
    assert_diagnostic(run(tmp_path, text), "FWC230", Severity.ERROR,
                      line_of(text, 'log "a$x'), "'$'")


@pytest.mark.parametrize("prefix", ['a\\"b', "a$x"])
def test_the_drops_prefix_is_checked_for_nftables_too(tmp_path, prefix):
    # (it was FWC900, an internal error, for a double quote)
    text = mutate(("cluster edge {\n", "cluster edge {\n    backend nftables\n"
                   f'    log {{ drops "{prefix}" }}\n'))
    assert_diagnostic(run(tmp_path, text), "FWC230", Severity.ERROR,
                      line_of(text, "log { drops"), "log prefix")


def test_log_prefix_with_a_double_quote_is_fine_for_iptables(tmp_path):
    analysis = run(tmp_path, mutate(QUOTED_LOG))
    assert analysis.ok and not with_code(analysis, "FWC230")


def test_compile_backend_override_runs_the_capability_checks_for_that_backend(tmp_path, capsys):
    path = tmp_path / "p.fw"
    path.write_text(mutate(QUOTED_LOG))  # fine for the policy's own backend (iptables)
    out = tmp_path / "out"
    assert main(["compile", str(path), "-o", str(out), "--backend", "nftables"]) == 1
    err = capsys.readouterr().err
    line = line_of(path.read_text(), "log \"say")
    assert f"p.fw:{line}:5: error[FWC230]" in err
    assert "nothing written" in err and not out.exists()
    assert main(["compile", str(path), "-o", str(out), "--backend", "iptables"]) == 0


# -- FWC231: a helper on a protocol the kernel has no such helper for ---------------------

def test_helper_on_a_protocol_it_does_not_serve_is_refused(tmp_path):
    text = mutate(("host    server   198.51.100.10\n",
                   "host    server   198.51.100.10\nservice ftpish tcp/21, gre helper ftp\n"),
                  ("    drop   from any    to any\n",
                   "    accept from lan to any service ftpish\n    drop   from any    to any\n"))
    for base in (text, mutate(("cluster edge {\n", "cluster edge {\n    backend nftables\n"),
                              base=text)):
        assert_diagnostic(run(tmp_path, base), "FWC231", Severity.ERROR,
                          line_of(base, "to any service ftpish"),
                          "helper 'ftp' cannot be assigned to gre", "serves only tcp")


def test_helpers_on_their_own_protocols_are_silent_and_h323_gets_the_kernel_names(tmp_path):
    text = mutate(("host    server   198.51.100.10\n",
                   "host    server   198.51.100.10\n"
                   "service voip tcp/1720, udp/1719 helper h323\n"
                   "service sip udp/5060, tcp/5060 helper sip\n"),
                  ("    drop   from any    to any\n",
                   "    accept from lan to any service voip, sip\n"
                   "    drop   from any    to any\n"))
    analysis = run(tmp_path, text)
    assert analysis.ok and not with_code(analysis, "FWC231"), analysis.diagnostics
    assert analysis.policy is not None
    files = {f.path: f.content.decode() for c in compile_policy(analysis.policy)
             for f in c.files}
    assert "-j CT --helper Q.931" in files["fw1/iptables.rules"]
    assert "-j CT --helper RAS" in files["fw1/iptables.rules"]
    nft_files = {f.path: f.content.decode()
                 for c in compile_policy(analysis.policy, backend=Backend.NFTABLES)
                 for f in c.files}
    rules = nft_files["fw1/nftables.nft"]
    assert 'type "Q.931" protocol tcp' in rules and 'type "RAS" protocol udp' in rules
    nft = shutil.which("nft")
    if nft is None:
        cannot_run("nft is missing (tests/run.sh installs the nftables package)")
    if shutil.which("unshare") is None or subprocess.run(
            ["unshare", "-n", "true"], capture_output=True).returncode != 0:
        cannot_run("needs unshare -n (root)")
    path = tmp_path / "h323.nft"
    path.write_text(rules)
    checked = subprocess.run(["unshare", "-n", nft, "-c", "-f", str(path)],
                             capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr


def test_every_helper_the_language_accepts_has_a_kernel_name():
    for helper, (protocol, _) in proto.CONNTRACK_HELPERS.items():
        assert (helper, protocol) in proto.CONNTRACK_HELPER_KERNEL_NAMES, helper


# -- FWC232: dnat to a port for traffic without ports -------------------------------------

@pytest.mark.parametrize("service", ["service gre ", "", "service tcp/80, icmp/echo-request "])
def test_dnat_to_a_port_without_ports_is_refused(tmp_path, service):
    text = mutate(("    dnat from any to uplink.vip service tcp/80 in uplink -> web\n",
                   f"    dnat from any to uplink.vip {service}in uplink -> web:8080\n"))
    assert_diagnostic(run(tmp_path, text), "FWC232", Severity.ERROR,
                      line_of(text, "-> web:8080"), "dnat to port 8080 needs traffic with ports")


def test_dnat_to_a_port_with_ports_is_silent(tmp_path):
    text = mutate(("    dnat from any to uplink.vip service tcp/80 in uplink -> web\n",
                   "    dnat from any to uplink.vip service tcp/80, sctp/80 in uplink "
                   "-> web:8080\n"))
    analysis = run(tmp_path, text)
    assert not with_code(analysis, "FWC232"), analysis.diagnostics


def test_base_is_clean_for_both_backends(tmp_path):
    for text in (BASE, NFT_BASE):
        analysis = run(tmp_path, text)
        assert analysis.ok and not [d for d in analysis.diagnostics
                                    if d.code.startswith("FWC23")], analysis.diagnostics


# -- the renderer audit: every part of a lowered rule is written, or refused ---------------

def _ruleset(*rules: FilterRule) -> NodeRuleset:
    chains = (Chain(BuiltinChain.INPUT, Target.DROP, rules),)
    return NodeRuleset("c", "m", 4, (Table(TableName.FILTER, chains),))


def _rendered(rule: FilterRule) -> str:
    text = nftables.render([_ruleset(rule)], "audit")
    return next(line.strip() for line in text.splitlines() if 'comment "audit"' in line)


BARE = FilterRule(Match(protocol=6), Target.ACCEPT, Origin("auto", "audit"))
# One value for every field of the lowered Match, each different from the default.
FIELDS = {
    "source": AddressMatch(("192.0.2.0/24",)),
    "destination": AddressMatch(("198.51.100.0/24",), negated=True),
    "in_device": "eth0",
    "out_device": "eth1",
    "protocol": 17,
    "dports": (PortRange(53, 53),),
    "tcp_not_syn": True,
    "ctstate": ("NEW",),
    "hop_limit": 255,
    "ttl": 255,
    "limit": RateLimit("5/second", 10),
}


# Fields written on a TCP rule (tcp flags need `-p tcp`), each with the text it becomes.
TCP_FIELDS = {
    "tcp_flags": (("SYN,RST", "SYN"), "tcp flags & (syn | rst) == syn"),
    "connlimit": (ConnLimit(10, 32), "ip saddr ct count over 10"),
    "hashlimit": (HashLimit("10/second", 5, "audit"), 'limit name "audit-v4"'),
}
# A statistic match is written only as DNAT load sharing (a `Share`): anywhere else
# the renderer must raise, never write the rule without it.
REFUSED_FIELDS = {"statistic": (2, 0)}


def test_every_field_of_a_lowered_match_reaches_the_nft_rule():
    fields = {f.name for f in dataclasses.fields(Match)}
    assert fields == set(FIELDS) | set(TCP_FIELDS) | set(REFUSED_FIELDS) | {"icmp_type"}, \
        "a new Match field: add it to this audit"
    for name, (value, text) in TCP_FIELDS.items():
        assert text in _rendered(dataclasses.replace(BARE, match=dataclasses.replace(
            BARE.match, protocol=6, **{name: value})))
    for name, value in REFUSED_FIELDS.items():
        with pytest.raises(nftables.NftUnsupported):
            _rendered(dataclasses.replace(BARE, match=dataclasses.replace(
                BARE.match, protocol=6, **{name: value})))
    plain = _rendered(BARE)
    for name, value in FIELDS.items():
        changed = _rendered(dataclasses.replace(BARE, match=dataclasses.replace(
            BARE.match, **{name: value})))
        assert changed != plain, f"Match.{name} is not written"
    icmp = FilterRule(Match(protocol=1, icmp_type=8), Target.ACCEPT, Origin("auto", "audit"))
    assert "icmp type 8" in _rendered(icmp)


@pytest.mark.parametrize("rule", [
    FilterRule(Match(protocol=6), Target.REJECT, Origin("auto", "audit"),
               (("reject-with", "tcp-reset"), ("extra", "1"))),
    FilterRule(Match(), Target.LOG, Origin("auto", "audit"),
               (("log-prefix", "x "), ("log-tcp-sequence", "1"))),
    FilterRule(Match(protocol=6), Target.ACCEPT, Origin("auto", "audit"), (("x", "y"),)),
    FilterRule(Match(protocol=47, icmp_type=8), Target.ACCEPT, Origin("auto", "audit")),
    FilterRule(Match(ctstate=("SNAT",)), Target.ACCEPT, Origin("auto", "audit")),
    FilterRule(Match(protocol=47), Target.CT, Origin("auto", "audit"), (("helper", "ftp"),)),
    FilterRule(Match(source=AddressMatch(set_name="fwc4-x")), Target.ACCEPT,
               Origin("auto", "audit")),
], ids=["reject-option", "log-option", "accept-option", "icmp-type-on-gre", "ctstate-snat",
        "helper-on-gre", "ipset"])
def test_what_nft_cannot_write_is_refused_not_dropped(rule):
    with pytest.raises(nftables.NftUnsupported):
        _rendered(rule)


def test_every_kernel_target_has_an_nft_statement():
    written = {
        Target.ACCEPT: (), Target.DROP: (), Target.RETURN: (),
        Target.REJECT: (("reject-with", "tcp-reset"),), Target.LOG: (("log-prefix", "x "),),
        Target.NFLOG: (("nflog-prefix", "x"), ("nflog-group", "5")),
        Target.CONNMARK: (("set-xmark", "0x1/0x1"),), Target.CT: (("helper", "ftp"),),
    }
    nat = {Target.DNAT: (("to-destination", "192.0.2.1:80"),),
           Target.SNAT: (("to-source", "192.0.2.1"),), Target.MASQUERADE: ()}
    assert set(written) | set(nat) | {Target.TCPMSS} == set(Target), \
        "a new Target: add it to this audit"
    for options, text in (((("clamp-mss-to-pmtu", ""),), "maxseg size set rt mtu"),
                          ((("set-mss", "1400"),), "maxseg size set 1400"),
                          ((("notrack", ""),), "notrack")):
        target = Target.CT if options[0][0] == "notrack" else Target.TCPMSS
        assert text in _rendered(FilterRule(Match(protocol=6), target,
                                            Origin("auto", "audit"), options))
    with pytest.raises(nftables.NftUnsupported):  # MSS of a packet that may not be TCP
        _rendered(FilterRule(Match(), Target.TCPMSS, Origin("auto", "audit"),
                             (("set-mss", "1400"),)))
    for target, options in written.items():
        assert _rendered(FilterRule(Match(protocol=6), target, Origin("auto", "audit"),
                                    options))
    for target, options in nat.items():
        rule = NatRule(Match(protocol=6), target, Origin("auto", "audit"), options)
        chains = (Chain(BuiltinChain.PREROUTING, Target.ACCEPT, (rule,)),)
        text = nftables.render([NodeRuleset("c", "m", 4, (Table(TableName.NAT, chains),))],
                               "audit")
        assert f"{str(target).lower()}" in text.lower()

