"""Policy text that compiled without a word into rules accepting more than it says
(or less than a reader of it believes): each is now a diagnostic at its source."""

from __future__ import annotations

from checkkit import assert_diagnostic, line_of, mutate, run, with_code

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
