"""`fwc import` on small random `iptables-save` rulesets: the imported policy, compiled,
decides every sampled packet as the original did, or the import says it did not
translate a rule (FWC700/FWC701/FWC702/FWC703): an explicit refusal.

The original's decisions come from the drawn rules themselves (lowered here, not by
the import's reader), so a misreading of the input is caught too: the reader and
--verify share `fwc.importing.saved.decode`, and what it got wrong they agreed on.
The vocabulary is what a hand-written FORWARD chain holds: addresses and negated
ones, ipsets, devices and wildcards, protocols, ports and multiport ranges, NEW,
LOG, REJECT, a user chain with an optional RETURN, two matches of one kind.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fwc.backend.lower.ruleset import (
    AddressMatch,
    Chain,
    FilterRule,
    Match,
    NodeRuleset,
    Origin,
    Table,
    target_of,
)
from fwc.backend.output import compile_policy
from fwc.importing.fidelity import compare
from fwc.importing.saved import read_saved, ruleset
from fwc.importing.translate import import_file
from fwc.model import PortRange
from fwc.model.vocabulary import Table as TableName
from fwc.pipeline import analyse

SETS = {"partners": ["203.0.113.0/28", "198.51.100.7/32"]}
SET_LINES = "".join(["create partners hash:net family inet hashsize 1024 maxelem 65536\n",
                     *(f"add partners {m}\n" for m in SETS["partners"])])
ADDRESSES = ["192.0.2.0/24", "192.0.2.128/25", "198.51.100.7/32", "203.0.113.0/24", "set"]
PORTS = {"22": (PortRange(22, 22),), "80,443": (PortRange(80, 80), PortRange(443, 443)),
         "1000:2000": (PortRange(1000, 2000),)}
PROTOCOLS = {"tcp": 6, "udp": 17, "icmp": 1}
REFUSED = {"FWC700", "FWC701", "FWC702", "FWC703"}


@st.composite
def rules(draw: st.DrawFn, targets: list[str]) -> tuple[str, Match, str]:
    """(rule text without `-A CHAIN`, what it matches, its target); target `LOG` is a
    LOG rule followed by a DROP with the same match (the text holds both)."""
    words: list[str] = []
    fields: dict[str, object] = {}
    for flag, side in (("-s", "source"), ("-d", "destination")):
        address = draw(st.sampled_from([None, *ADDRESSES]))
        if address is None:
            continue
        negated = draw(st.integers(0, 3)) == 0
        bang = ["!"] if negated else []
        if address == "set":
            direction = "src" if side == "source" else "dst"
            words += ["-m", "set", *bang, "--match-set", "partners", direction]
            fields[side] = AddressMatch(set_name="partners", negated=negated)
        else:
            words += [*bang, flag, address]
            fields[side] = AddressMatch((address,), negated=negated)
    for flag, key in (("-i", "in_device"), ("-o", "out_device")):
        device = draw(st.sampled_from([None] * 4 + ["eth0", "eth1"] * 2 + ["eth+"]))
        if device is not None:
            words += [flag, device]
            fields[key] = device  # (a wildcard is refused: never compared)
    protocol = draw(st.sampled_from([None, "tcp", "udp", "icmp"]))
    if protocol is not None:
        words += ["-p", protocol]
        fields["protocol"] = PROTOCOLS[protocol]
        if protocol != "icmp" and draw(st.booleans()):
            ports = draw(st.sampled_from(sorted(PORTS)))
            multiport = "," in ports or draw(st.booleans())
            words += ["-m", "multiport", "--dports", ports] if multiport else \
                ["-m", protocol, "--dport", ports]
            fields["dports"] = PORTS[ports]
            if draw(st.integers(0, 5)) == 0:  # a second port match: both must match
                words += ["-m", protocol, "--dport", "22"]
                fields["dports"] = tuple(p for p in PORTS[ports] if p.low <= 22 <= p.high)
                fields["protocol"] = -1 if not fields["dports"] else fields["protocol"]
        elif protocol == "icmp" and draw(st.booleans()):
            words += ["-m", "icmp", "--icmp-type", "8"]
            fields["icmp_type"] = 8
    if draw(st.booleans()):
        words += ["-m", "conntrack", "--ctstate", "NEW"]
        fields["ctstate"] = ("NEW",)
    target = draw(st.sampled_from(targets))
    words += ["-j", target]
    if target == "REJECT" and fields.get("protocol") == 6 and draw(st.booleans()):
        words += ["--reject-with", "tcp-reset"]
    text = " ".join(words)
    if target == "LOG":
        text += ' --log-prefix "drop "\n-A CHAIN ' + text.replace("-j LOG", "-j DROP")
    return text, Match(**fields), target  # type: ignore[arg-type]


@st.composite
def rulesets(draw: st.DrawFn) -> tuple[str, NodeRuleset]:
    forward = draw(st.lists(rules(["ACCEPT", "DROP", "REJECT", "LOG", "sub"]), max_size=4))
    sub = draw(st.lists(rules(["ACCEPT", "DROP", "REJECT"]), max_size=3))
    ends_with_return = draw(st.booleans())
    policy = draw(st.sampled_from(["ACCEPT", "DROP"]))
    lines = [SET_LINES, "*filter", ":INPUT DROP [0:0]", f":FORWARD {policy} [0:0]",
             ":OUTPUT ACCEPT [0:0]", ":sub - [0:0]",
             "-A INPUT -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
             "-A FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"]
    if not any(target == "sub" for _, _, target in forward):
        sub, ends_with_return = [], False  # (a chain nothing jumps to: FWC703)
    lines += [f"-A FORWARD {text}".replace("-A CHAIN", "-A FORWARD") for text, _, _ in forward]
    lines += [f"-A sub {text}".replace("-A CHAIN", "-A sub") for text, _, _ in sub]
    if ends_with_return:
        lines.append("-A sub -j RETURN")
    lines.append("COMMIT")

    def chain(name: str, policy: str | None, drawn: list[tuple[str, Match, str]],
              head: tuple[FilterRule, ...] = ()) -> Chain:
        lowered = [FilterRule(match, target_of(kind), Origin("policy", name))
                   for _, match, target in drawn
                   for kind in (["LOG", "DROP"] if target == "LOG" else [target])]
        return Chain(name, target_of(policy) if policy else None,  # type: ignore[arg-type]
                     head + tuple(lowered))

    established = FilterRule(Match(ctstate=("RELATED", "ESTABLISHED")), target_of("ACCEPT"),
                             Origin("policy", "established"))
    original = NodeRuleset("drawn", "original", 4, (Table(TableName.FILTER, (
        chain("INPUT", "DROP", [], (established,)),
        chain("FORWARD", policy, forward, (established,)),
        chain("OUTPUT", "ACCEPT", []), chain("sub", None, sub))),))
    return "\n".join(lines) + "\n", original


def compiled_fw1(policy_text: str) -> tuple[str, object]:
    with tempfile.TemporaryDirectory(prefix="fwc-import-random-") as tmp:
        path = Path(tmp) / "imported.fw"
        path.write_text(policy_text)
        analysis = analyse(path)
        errors = [d for d in analysis.diagnostics if d.severity.name == "ERROR"]
        assert analysis.policy is not None and not errors, errors
        files = {f.path: f.content.decode() for f in compile_policy(analysis.policy)[0].files}
        cluster = analysis.policy.clusters[0]
        member = cluster.member("fw1")
        assert member is not None
    rules = files.get("fw1/ipsets.rules", files.get("ipsets.rules", "")) + "\n" + \
        files["fw1/iptables.rules"]
    return rules, cluster.firewall_addresses(member).v4


@settings(max_examples=200, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(rulesets())
def test_an_imported_random_ruleset_decides_as_the_original_or_says_why_not(drawn):
    text, original = drawn
    result = import_file(text, "drawn.save", "t")
    refused = [d for d in result.diagnostics if d.code in REFUSED]
    if refused:
        return  # explicit: the rule stays a comment, with a warning
    # two port matches with nothing in common match nothing: the import cannot say so
    # and must have refused the rule (the evaluator reads no port match as every port)
    assert not any(r.match.protocol == -1 for c in original.tables[0].chains
                   for r in c.rules), result.text
    rules, firewall = compiled_fw1(result.text)
    saved = read_saved(rules)
    _, differences = compare(original, ruleset(saved, "compiled"),
                             (SETS, saved.sets), firewall)
    assert differences == [], (text, result.text, differences[:5])
