"""The iptables failsafe writes large address products as a jump to a chain of their own
(fwc.backend.lower.failsafe.factored), and decides every packet as the failsafe did.

The proof is the evaluator (fwc.analysis.evaluate): every example policy, the mixed
policies of tests/test_arrange.py and random policies with groups to and from the
firewall, each member and family, on every rule's corner packets (of both rulesets)
and random packets: same verdict, options and LOG/CONNMARK effects. The line counts
are exact on hand-made rulesets; tests/test_failsafe_netns.py loads one in a kernel.
"""

from __future__ import annotations

import ipaddress
import random
from pathlib import Path

import pytest
from conftest import EXAMPLE_FILES
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from test_arrange import CLUSTER, mixed_policy

from fwc.analysis.evaluate import Evaluator, Packet, corner_packets
from fwc.backend.lower import lower
from fwc.backend.lower.failsafe import factored, failsafe, iptables_failsafe
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
    rendered_lines,
)
from fwc.backend.render.iptables import render
from fwc.model import PortRange
from fwc.model.vocabulary import BuiltinChain, Target
from fwc.model.vocabulary import Table as TableName
from fwc.pipeline import analyse
from fwc.protocols import CHAIN_NAME_MAX

TCP = 6


def failsafes(path: Path) -> list[tuple[str, NodeRuleset]]:
    """(member/family, failsafe ruleset) of every member and family of the policy."""
    analysis = analyse(path, run_checks=False)
    assert analysis.policy is not None, analysis.diagnostics
    assert not [d for d in analysis.diagnostics if d.is_error], analysis.diagnostics
    return [(f"{member.name}/{family}", failsafe(lower(cluster, member, family)))
            for cluster in analysis.policy.clusters for member in cluster.members
            for family in sorted(cluster.families)]


def lines(ruleset: NodeRuleset) -> int:
    """`-A` lines of the iptables text (counted in the rendered text itself)."""
    return sum(line.startswith("-A ") for line in render(ruleset).splitlines())


def random_packets(ruleset: NodeRuleset, count: int, seed: int) -> list[Packet]:
    """COUNT packets to and from addresses near the ruleset's own CIDRs, on its ports."""
    rng = random.Random(seed)
    nets, ports, devices = [], [22, 443], [None, "lo"]
    for _, _, rule in ruleset.rules():
        m = rule.match
        nets += [ipaddress.ip_network(c, strict=False)
                 for c in (*m.source.cidrs, *m.destination.cidrs)]
        ports += [p for r in m.dports for p in (r.low, r.high)]
        devices += [m.in_device]
    if not nets:
        return []

    def address() -> int:
        net = rng.choice(nets)
        low = int(net.network_address) - rng.choice((0, 0, 0, 1))
        return max(0, low + rng.randrange(min(net.num_addresses + 1, 1 << 20)))

    out = []
    for _ in range(count):
        protocol = rng.choice((TCP, TCP, 17, 1 if ruleset.family == 4 else 58))
        out.append(Packet(ruleset.family, address(), address(), protocol,
                          rng.choice(ports) if protocol in (6, 17) else None,
                          8 if protocol in (1, 58) else None,
                          rng.choice(devices) or "eth0", None,
                          ctstate=rng.choice(("NEW", "NEW", "NEW", "ESTABLISHED", "INVALID")),
                          syn=rng.random() < 0.9))
    return out


def assert_same_decisions(before: NodeRuleset, seed: int = 0) -> NodeRuleset:
    """The factored BEFORE decides every sampled packet as BEFORE does; returns it."""
    after = factored(before)
    packets = corner_packets(before) + corner_packets(after) + random_packets(before, 300, seed)
    assert packets
    old, new = Evaluator(before), Evaluator(after)
    for packet in packets:
        assert new.decide(packet).meaning == old.decide(packet).meaning, packet.describe()
    for chain in after.table(TableName.FILTER).chains:  # type: ignore[union-attr]
        assert len(chain.name) <= CHAIN_NAME_MAX
    return after


# -- the same decisions ----------------------------------------------------------------------

@pytest.mark.parametrize("path", EXAMPLE_FILES, ids=[p.stem for p in EXAMPLE_FILES])
def test_examples_factored_failsafe_decides_like_the_failsafe(path):
    for _, ruleset in failsafes(path):
        after = assert_same_decisions(ruleset)
        assert lines(after) <= lines(ruleset)


@pytest.mark.parametrize("seed", [1, 2])
def test_mixed_policies_factored_failsafe_decides_like_the_failsafe(tmp_path, seed):
    path = tmp_path / "mix.fw"
    # big groups to the firewall: products of sources x the member's own addresses
    text = mixed_policy(seed, 60).replace(
        "    drop from any to any log",
        "    accept from big-lan to firewall service tcp/22, udp/53 in lan\n"
        "    accept from n-dmz, h-dmz-1 to firewall service tcp/1-10, tcp/20-30, tcp/40-50, "
        "tcp/60-70, tcp/80-90, tcp/100-110, tcp/120-130, tcp/140-150 log \"many\"\n"
        "    drop from any to any log")
    path.write_text(text, encoding="utf-8")
    factored_somewhere = False
    for _, ruleset in failsafes(path):
        after = assert_same_decisions(ruleset, seed)
        factored_somewhere |= lines(after) < lines(ruleset)
    assert factored_somewhere


SOURCES = ("any", "big", "small", "h1", "firewall", "any, !h1", "lan")
DESTINATIONS = ("firewall", "any", "small", "h2", "big")
SERVICES = ("", " service tcp/22", " service tcp/22, udp/53", " service icmp/echo-request",
            " service tcp/1-2, tcp/4-5, tcp/7-8, tcp/10-11, tcp/13-14, tcp/16-17, tcp/19-20,"
            " tcp/22-23, tcp/25-26")
OPTIONS = ("", "", "", ' log "x"', " limit 5/second", " connlimit 3", " in lan", " only fw1")


def group_policy(rules: list[tuple[int, int, int, int, int]]) -> str:
    """A policy of the cluster of tests/test_arrange.py: groups to and from the firewall."""
    out = ["network lan 198.18.0.0/16", "host h1 198.18.3.3", "host h2 198.19.0.9",
           "group small 198.18.1.0/24, 198.18.2.0/25, 2001:db8:10::/112",
           "group big " + ", ".join(f"198.18.{10 + i}.{4 * i}/30" for i in range(12))
           + ", 2001:db8:10::100/126, 2001:db8:10::200/127", CLUSTER, "policy mix {"]
    for source, destination, service, option, action in rules:
        out.append(f"    {('accept', 'drop', 'reject')[action]} from {SOURCES[source]} "
                   f"to {DESTINATIONS[destination]}{SERVICES[service]}{OPTIONS[option]}")
    out += ["    drop from any to any", "}"]
    return "\n".join(out) + "\n"


# "big" and "small" most often: neighbouring rules from the same sources (with and
# without `in`, other services) are what a wrong shared outer part would get wrong.
RULE = st.tuples(st.sampled_from((1, 1, 1, 2, 2, *range(len(SOURCES)))),
                 st.integers(0, len(DESTINATIONS) - 1),
                 st.integers(0, len(SERVICES) - 1), st.integers(0, len(OPTIONS) - 1),
                 st.integers(0, 2))


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(rules=st.lists(RULE, min_size=1, max_size=8))
# from big to the firewall: dropped in lan, then accepted from anywhere (two services)
@example(rules=[(1, 0, 2, 6, 1), (1, 0, 2, 0, 0)])
def test_random_group_policies_factored_failsafe_decides_like_the_failsafe(tmp_path, rules):
    path = tmp_path / "g.fw"
    path.write_text(group_policy(rules), encoding="utf-8")
    for _, ruleset in failsafes(path):  # every combination is a valid policy
        assert_same_decisions(ruleset)
        assert_the_kernel_takes_its_resets(factored(ruleset))


def assert_the_kernel_takes_its_resets(ruleset: NodeRuleset) -> None:
    """The kernel (not `iptables-restore --test`) refuses a tcp-reset without -p tcp."""
    for line in render(ruleset).splitlines():
        if "--reject-with tcp-reset" in line:
            assert " -p tcp " in line, line


def test_a_tcp_reject_from_a_group_keeps_its_protocol_in_the_chain(tmp_path):
    # the ports (one line) stay outside: the chain's REJECT still needs -p tcp
    path = tmp_path / "g.fw"
    path.write_text(group_policy([(1, 0, 1, 0, 2)]), encoding="utf-8")
    resets = 0
    for _, ruleset in failsafes(path):
        after = assert_same_decisions(ruleset)
        assert_the_kernel_takes_its_resets(after)
        resets += sum("tcp-reset" in line and line.startswith("-A fwc-f")
                      for line in render(after).splitlines())
    assert resets > 0


# -- what is factored, how, and what is not --------------------------------------------------

ORIGIN = Origin("policy", "p.fw:3")
OWN = ("198.18.0.1", "198.19.0.1", "198.19.128.1")
MANY_PORTS = tuple(PortRange(p, p + 1) for p in range(1000, 1040, 2))  # 20 ranges: 3 lines


def ruleset_of(*rules: FilterRule, extra: tuple[Chain, ...] = ()) -> NodeRuleset:
    chains = (Chain(BuiltinChain.INPUT, Target.DROP, rules),
              Chain(BuiltinChain.FORWARD, Target.DROP), Chain(BuiltinChain.OUTPUT, Target.DROP),
              *extra)
    return NodeRuleset("c", "fw1", 4, (Table(TableName.FILTER, chains),))


def sources(count: int) -> AddressMatch:
    return AddressMatch(tuple(f"198.51.100.{4 * i}/30" for i in range(count)))


def test_sources_go_outside_and_the_line_count_is_the_sum():
    rule = FilterRule(Match(sources(40), AddressMatch(OWN), protocol=TCP,
                            dports=(PortRange(22, 22),)), Target.ACCEPT, ORIGIN)
    before = ruleset_of(rule)
    assert rendered_lines(rule.match) == 120 and lines(before) == 120
    after = assert_same_decisions(before)
    assert lines(after) == 40 + 3
    chain = after.chain(TableName.FILTER, "fwc-fa")
    assert chain is not None and len(chain.rules) == 1
    outer = after.chain(TableName.FILTER, BuiltinChain.INPUT).rules  # type: ignore[union-attr]
    # the port (one line) stays outside, with the protocol: few packets enter the chain
    assert outer[0].match == Match(sources(40), protocol=TCP, dports=(PortRange(22, 22),))
    assert chain.rules[0].match == Match(destination=AddressMatch(OWN), protocol=TCP)
    assert outer[0].target == "fwc-fa" and chain.rules[0].target is Target.ACCEPT


def test_the_split_with_fewest_lines_is_chosen():
    # 5 x 3 x 3: sources outside 5 + 9, destinations outside 3 + 15, ports 3 + 15
    wide = FilterRule(Match(sources(5), AddressMatch(OWN), protocol=TCP, dports=MANY_PORTS),
                      Target.DROP, ORIGIN)
    assert lines(ruleset_of(wide)) == 45
    after = assert_same_decisions(ruleset_of(wide))
    assert lines(after) == 5 + 9
    inner = after.chain(TableName.FILTER, "fwc-fa").rules[0].match  # type: ignore[union-attr]
    assert inner == Match(destination=AddressMatch(OWN), protocol=TCP, dports=MANY_PORTS)
    # 2 x 9 x 3: destinations outside (9 + 6) beat sources (2 + 27) and ports (3 + 18)
    nine = AddressMatch(tuple(f"198.18.0.{i}" for i in range(1, 10)))
    tall = FilterRule(Match(sources(2), nine, protocol=TCP, dports=MANY_PORTS),
                      Target.REJECT, ORIGIN, (("reject-with", "tcp-reset"),))
    after = assert_same_decisions(ruleset_of(tall))
    assert lines(after) == 9 + 6
    inner_rule = after.chain(TableName.FILTER, "fwc-fa").rules[0]  # type: ignore[union-attr]
    assert inner_rule.match.source == sources(2) and inner_rule.match.destination.is_any
    assert inner_rule.target_options == (("reject-with", "tcp-reset"),)
    # 2 x 2 x 1: 2 + 2 + 1 is not fewer than 4: left as it is
    small = FilterRule(Match(sources(2), AddressMatch(OWN[:2])), Target.ACCEPT, ORIGIN)
    assert factored(ruleset_of(small)) == ruleset_of(small)


def test_the_services_of_one_rule_share_its_sources():
    # 10 sources x 1 destination, tcp/22 and udp/53: 20 lines alone, 10 + 2 shared
    host = AddressMatch(("198.18.0.1",))
    tcp = FilterRule(Match(sources(10), host, protocol=TCP, dports=(PortRange(22, 22),),
                           in_device="eth0"), Target.REJECT, ORIGIN,
                     (("reject-with", "tcp-reset"),))
    udp = FilterRule(Match(sources(10), host, protocol=17, dports=(PortRange(53, 53),),
                           in_device="eth0"), Target.REJECT, ORIGIN,
                     (("reject-with", "icmp-port-unreachable"),))
    after = assert_same_decisions(ruleset_of(tcp, udp))
    assert lines(ruleset_of(tcp, udp)) == 20 and lines(after) == 10 + 2
    outer = after.chain(TableName.FILTER, BuiltinChain.INPUT).rules  # type: ignore[union-attr]
    assert {r.match for r in outer} == {Match(sources(10), in_device="eth0")}
    inner = after.chain(TableName.FILTER, "fwc-fa").rules  # type: ignore[union-attr]
    assert [r.target_options for r in inner] == [tcp.target_options, udp.target_options]
    assert inner[0].match == Match(destination=host, protocol=TCP, dports=tcp.match.dports)
    # another rule's sources, or a rule between them: each on its own (here: unchanged)
    other = FilterRule(udp.match, Target.REJECT, Origin("policy", "p.fw:4"))
    assert factored(ruleset_of(tcp, other)) == ruleset_of(tcp, other)
    log = FilterRule(udp.match, Target.LOG, ORIGIN)
    assert factored(ruleset_of(tcp, log, udp)) == ruleset_of(tcp, log, udp)


def test_rules_whose_lines_count_or_may_return_stay_as_they_are():
    product = Match(sources(10), AddressMatch(OWN), protocol=TCP, dports=(PortRange(22, 22),))
    returning = Chain("fwc-p3-INPUT", None, (
        FilterRule(Match(source=AddressMatch(("198.51.100.0/30",))), Target.RETURN, ORIGIN),
        FilterRule(Match(), Target.ACCEPT, ORIGIN)))
    logging = Chain("fwc-p4-INPUT", None, (
        FilterRule(Match(limit=RateLimit("5/second", 5)), Target.LOG, ORIGIN,
                   (("log-prefix", "x "),)),
        FilterRule(Match(), Target.DROP, ORIGIN)))
    from dataclasses import replace
    kept = (
        FilterRule(product, Target.LOG, ORIGIN),  # goes on: each line would log
        FilterRule(product, "fwc-p3-INPUT", ORIGIN),  # may RETURN: each line would jump
        FilterRule(replace(product, limit=RateLimit("1/second", 1)), Target.ACCEPT, ORIGIN),
        FilterRule(replace(product, hashlimit=HashLimit("1/second", 1, "fwc-p9")),
                   Target.RETURN, ORIGIN),
        FilterRule(replace(product, connlimit=ConnLimit(3, 32)), Target.ACCEPT, ORIGIN),
        FilterRule(replace(product, statistic=(2, 0)), Target.ACCEPT, ORIGIN),
        FilterRule(replace(product, source=AddressMatch(sources(10).cidrs, negated=True)),
                   Target.ACCEPT, ORIGIN),
        FilterRule(replace(product, source=AddressMatch(set_name="fwc4-x")), Target.ACCEPT,
                   ORIGIN),
    )
    before = ruleset_of(*kept, extra=(returning, logging))
    assert factored(before) == before
    # a jump to a chain that always decides (it logs, then drops) is factored
    jump = ruleset_of(FilterRule(product, "fwc-p4-INPUT", ORIGIN), extra=(logging,))
    after = assert_same_decisions(jump)
    assert lines(after) == 10 + 3 + 2
    assert after.chain(TableName.FILTER, "fwc-fa").rules[0].target == "fwc-p4-INPUT"  # type: ignore[union-attr]


def test_chain_names_follow_the_policy_rule_and_never_collide(tmp_path):
    path = tmp_path / "n.fw"
    path.write_text(group_policy([(1, 0, 2, 0, 0), (1, 0, 1, 0, 1)]), encoding="utf-8")
    (_, ruleset), *_ = failsafes(path)
    after = factored(ruleset)
    names = [str(c.name) for c in after.table(TableName.FILTER).chains]  # type: ignore[union-attr]
    # rule 1 lowers to two rules (tcp, udp) that share fwc-f1; rule 2 is fwc-f2
    assert {"fwc-f1", "fwc-f2"} <= set(names)
    assert len(names) == len(set(names))
    # a chain of that name already there: the next number
    taken = replace_chains(ruleset, Chain("fwc-f1", None, ()))
    renamed = [str(c.name) for c in factored(taken).table(TableName.FILTER).chains]  # type: ignore[union-attr]
    assert renamed.count("fwc-f1") == 1 and {"fwc-f1-2", "fwc-f2"} <= set(renamed)
    assert render(after) == render(factored(ruleset))  # deterministic


def replace_chains(ruleset: NodeRuleset, extra: Chain) -> NodeRuleset:
    table = ruleset.table(TableName.FILTER)
    assert table is not None
    return ruleset.with_table(Table(TableName.FILTER, (*table.chains, extra)))


def test_only_the_iptables_failsafe_is_factored(tmp_path):
    path = tmp_path / "g.fw"
    path.write_text(group_policy([(1, 0, 1, 0, 0)]), encoding="utf-8")
    analysis = analyse(path, run_checks=False)
    cluster = analysis.policy.clusters[0]  # type: ignore[union-attr]
    lowered = lower(cluster, cluster.members[0], 4)
    assert iptables_failsafe(lowered) == factored(failsafe(lowered)) != failsafe(lowered)
    # nft matches an address list with a set: failsafe.nft is built from `failsafe` alone
