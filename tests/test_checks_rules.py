"""Rule checks (FWC401-FWC404): shadowing, DNAT without accept, masquerade."""

from __future__ import annotations

import time

import pytest
from checkkit import EXAMPLES, assert_diagnostic, line_of, mutate, run, with_code
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from fwc.checks import rules
from fwc.diagnostics import Severity
from fwc.model import PortRange, ServiceMatch
from fwc.model.intervals import IntervalSet
from fwc.pipeline import analyse

E, W = Severity.ERROR, Severity.WARNING
SERVER_RULE = "accept from server to client   service tcp/5001"
LAST_RULE = "drop   from any    to any\n"


def add_rules(*lines: str, before: str = LAST_RULE) -> str:
    return mutate((before, "".join(f"    {line}\n" for line in lines) + before))


def test_fwc401_shadowed_by_earlier_rule_with_other_action(tmp_path):
    text = add_rules("drop from client to server service tcp/443")
    analysis = run(tmp_path, text)
    d = assert_diagnostic(analysis, "FWC401", E, line_of(text, "drop from client to server"),
                          "can never match",
                          f"line {line_of(text, 'accept from lan    to any')} (accept)")
    assert d.related[0].span.line == line_of(text, "accept from lan    to any")


def test_fwc402_redundant_with_same_action(tmp_path):
    text = add_rules("accept from client to server service tcp/80")
    analysis = run(tmp_path, text)
    d = assert_diagnostic(analysis, "FWC402", W, line_of(text, "accept from client to server"),
                          "redundant")
    assert d.related[0].span.line == line_of(text, "accept from lan    to any")
    assert with_code(analysis, "FWC401") == []


def test_a_notrack_rule_behind_a_tracked_accept_is_not_redundant(tmp_path):
    """Its `notrack` works in the raw table, before every filter rule: removing it, as
    FWC402 said to, would track (and replicate) the traffic it exempts."""
    notracked = "accept from lan to server service udp/53 notrack"
    text = add_rules("accept from lan to server service udp/53", notracked,
                     "accept from server to lan service udp/1024-65535 notrack")
    analysis = run(tmp_path, text)
    assert with_code(analysis, "FWC402") == []
    assert with_code(analysis, "FWC401") == []
    # an earlier notrack accept does cover a later tracked one: that one changes nothing
    text = add_rules(notracked, "accept from lan to server service udp/53",
                     "accept from server to lan service udp/1024-65535 notrack")
    assert_diagnostic(run(tmp_path, text), "FWC402", W,
                      line_of(text, notracked) + 1, "redundant")


def test_final_catch_all_is_shadowed_by_accept_any(tmp_path):
    text = mutate((SERVER_RULE, "accept from any to any"))
    analysis = run(tmp_path, text)
    assert_diagnostic(analysis, "FWC401", E, line_of(text, "drop   from any    to any"),
                      "can never match")


@pytest.mark.parametrize("later", [
    "drop from client to server service tcp/80-90",   # wider port range
    "drop from client to server service udp/80",      # other protocol
    "drop from client to server",                     # every protocol
    "drop from 192.0.2.0/23 to server service tcp/80",  # wider source
    "drop from client to firewall service tcp/80",    # the firewall is not `any`
])
def test_not_covered_by_a_narrower_rule(tmp_path, later):
    text = add_rules("accept from client to any service tcp/80 in lan", later)
    analysis = run(tmp_path, text)
    shadow = [d for d in with_code(analysis, "FWC401") + with_code(analysis, "FWC402")
              if d.span.line == line_of(text, later)]
    assert shadow == []


def test_only_scoping(tmp_path):
    # A rule for fw1 alone cannot cover a rule for every member, but covers one for fw1.
    text = add_rules("accept from client to firewall service tcp/161 only fw1",
                     "drop from client to firewall service tcp/161",
                     "drop from client to firewall service tcp/161 only fw1")
    analysis = run(tmp_path, text)
    hits = {d.span.line for d in with_code(analysis, "FWC401")}
    assert hits == {line_of(text, "drop from client to firewall service tcp/161 only fw1")}


def test_in_interface_scoping(tmp_path):
    text = add_rules("accept from any to web service tcp/8080 in uplink",
                     "drop from client to web service tcp/8080",
                     "drop from client to web service tcp/8080 in uplink")
    analysis = run(tmp_path, text)
    hits = {d.span.line for d in with_code(analysis, "FWC401")}
    assert hits == {line_of(text, "drop from client to web service tcp/8080 in uplink")}


def test_icmp_types(tmp_path):
    text = add_rules("accept from lan to any service icmp/echo-request",
                     "drop from client to server service icmp/echo-request",
                     "drop from client to server service icmp/echo-reply")
    analysis = run(tmp_path, text)
    hits = {d.span.line for d in with_code(analysis, "FWC401")}
    assert hits == {line_of(text, "drop from client to server service icmp/echo-request")}


def test_vip_destinations_are_firewall_traffic(tmp_path):
    # `any` is not the firewall: a rule to a VIP is INPUT, which `to any` never covers,
    # while `to firewall` covers every VIP.
    text = add_rules("accept from client to any service tcp/8080",
                     "drop from client to lan.vip service tcp/8080",
                     "accept from client to firewall service tcp/8081",
                     "drop from client to uplink.vip service tcp/8081")
    analysis = run(tmp_path, text)
    hits = {d.span.line for d in with_code(analysis, "FWC401")}
    assert hits == {line_of(text, "drop from client to uplink.vip service tcp/8081")}


def test_out_interface_drops_the_firewall_part(tmp_path):
    # With `out uplink` the `firewall` part of the later rule does not exist (INPUT has
    # no outgoing interface), so the earlier forwarding rule covers all that is left.
    text = add_rules("accept from client to any service tcp/2000 out uplink",
                     "drop from client to firewall, server service tcp/2000 out uplink")
    analysis = run(tmp_path, text)
    assert_diagnostic(analysis, "FWC401", E, line_of(text, "drop from client to firewall, "),
                      "can never match")


def test_nonat_with_out_only_does_not_shadow_dnat(tmp_path):
    text = mutate(("    snat from lan to any out uplink -> uplink.vip\n",
                   "    nonat from any to any out uplink\n"
                   "    snat from lan to any out uplink -> uplink.vip\n"))
    analysis = run(tmp_path, text)
    found = {d.span.line for d in with_code(analysis, "FWC401")}
    assert found == {line_of(text, "snat from lan")}


def test_negation_in_the_earlier_rule(tmp_path):
    text = add_rules("accept from lan, !client to any service tcp/25",
                     "drop from client to server service tcp/25",
                     "drop from web to server service tcp/25")
    analysis = run(tmp_path, text)
    hits = {d.span.line for d in with_code(analysis, "FWC401")}
    assert hits == {line_of(text, "drop from web to server service tcp/25")}


def test_nat_rules_are_checked_separately(tmp_path):
    # snat and dnat work in different hooks: they never shadow each other.
    text = mutate(("-> web\n", "-> web\n    snat from client to any out uplink -> "
                   "198.51.100.253\n    dnat from any to uplink.vip service tcp/80 in uplink "
                   "-> 192.0.2.81\n"))
    analysis = run(tmp_path, text)
    found = {d.span.line: d.message for d in with_code(analysis, "FWC401")}
    assert set(found) == {line_of(text, "snat from client"), line_of(text, "192.0.2.81")}
    assert f"line {line_of(text, 'snat from lan')} (snat)" in found[line_of(text, "snat from c")]
    assert f"line {line_of(text, 'dnat from any to uplink.vip service tcp/80 in uplink -> web')}" \
        " (dnat)" in found[line_of(text, "192.0.2.81")]


def test_fwc403_dnat_without_accept(tmp_path):
    text = mutate(("dnat from any to uplink.vip service tcp/80 in uplink -> web",
                   "dnat from any to uplink.vip service tcp/25 in uplink -> web"))
    analysis = run(tmp_path, text)
    d = assert_diagnostic(analysis, "FWC403", W, line_of(text, "tcp/25"),
                          "traffic translated to 'web' is dropped by the rule at line "
                          f"{line_of(text, 'drop   from any')}")
    assert d.related[0].span.line == line_of(text, "drop   from any")


def test_fwc403_no_rule_at_all(tmp_path):
    text = mutate((LAST_RULE, ""), ("dnat from any to uplink.vip service tcp/80 in uplink -> web",
                                     "dnat from any to uplink.vip service tcp/25 in uplink -> web"))
    analysis = run(tmp_path, text)
    assert_diagnostic(analysis, "FWC403", W, line_of(text, "tcp/25"),
                      "no policy rule accepts the traffic translated to 'web'")


def test_fwc403_port_translation_uses_the_new_port(tmp_path):
    # The filter sees tcp/80 on web (translated), which the policy accepts.
    text = mutate(("service tcp/80 in uplink -> web", "service tcp/8080 in uplink -> web:80"))
    assert with_code(run(tmp_path, text), "FWC403") == []


def test_fwc404_masquerade(tmp_path):
    text = mutate(("snat from lan to any out uplink -> uplink.vip",
                   "masquerade from lan to any out uplink"))
    analysis = run(tmp_path, text)
    d = assert_diagnostic(analysis, "FWC404", W, line_of(text, "masquerade"), "failover")
    assert d.hint == "write 'snat from lan to any out uplink -> uplink.vip'"


@pytest.mark.parametrize("policy", EXAMPLES, ids=lambda p: p.name)
def test_rule_checks_silent_on_examples(examples, policy):
    analysis = examples[policy.name].analysis
    codes = {"FWC401", "FWC402", "FWC403", "FWC404"}
    assert [d for d in analysis.diagnostics if d.code in codes] == []


def _big_policy(count: int) -> str:
    lines = [f"    accept from 10.{i // 250}.{i % 250}.0/24 to 198.19.{i % 200}.{i // 200} "
             f"service tcp/{1000 + i}" for i in range(count)]
    lines += [f"    accept from any to any service tcp/{20000 + i}" for i in range(count)]
    lines.append("    drop from 10.1.2.0/24 to 198.19.52.1 service tcp/1252")  # shadowed
    return mutate((SERVER_RULE, "\n".join(lines).strip()))


def test_shadowing_is_not_quadratic(tmp_path):
    small = run(tmp_path, _big_policy(100), "small.fw").policy
    large = run(tmp_path, _big_policy(1000), "large.fw").policy
    assert small is not None and large is not None

    def timed(policy) -> tuple[float, list]:
        # this process's CPU time, not the wall clock: the suite runs in parallel
        # workers, and a neighbour's burst once made a wall-clock run 88x (1.01 s).
        # One call each: later calls reuse the cluster's per-run memo.
        start = time.process_time()
        found = list(rules.shadowed_rules(policy))
        return time.process_time() - start, found

    small_time, _ = timed(small)
    large_time, found = timed(large)
    assert [d.code for d in found] == ["FWC401"]
    # 10x the rules: a quadratic check would take ~100x; allow generous noise.
    assert large_time < 30 * small_time + 0.5, (small_time, large_time)


def _shared_hull_policy(rules_per_group: int) -> str:
    """Twenty groups of scattered prefixes that share one CIDR hull (198.18.0.0/15), each
    the source of many rules with distinct ports: no rule covers another. Then five rules
    from one prefix of the first group, each covered by one of its rules."""
    groups = [f"group partners{g} " + ", ".join(
        f"198.{18 + (i % 2)}.{(g * 7 + i * 13) % 256}.{16 * ((g + i) % 16)}/28"
        for i in range(12)) for g in range(20)]
    lines = [f"    accept from partners{g} to any service tcp/{2000 + r}"
             for r in range(rules_per_group) for g in range(20)]
    lines += [f"    accept from 198.18.0.0/28 to any service tcp/{2000 + r}" for r in range(5)]
    return "\n".join(groups) + "\n" + mutate((SERVER_RULE, "\n".join(lines).strip()))


def test_shadowing_tests_few_candidates_when_groups_share_a_hull(tmp_path, monkeypatch):
    # Regression (issue 12): candidates were every earlier rule whose address hull
    # contains the rule's hull, so groups of scattered prefixes inside one hull made
    # every rule a candidate of every later one with the same port: quadratic.
    policy = run(tmp_path, _shared_hull_policy(60)).policy
    assert policy is not None
    tested = 0
    real = rules._scope_covers  # the first test of every candidate, on either path

    def counting(outer, inner):
        nonlocal tested
        tested += 1
        return real(outer, inner)

    monkeypatch.setattr(rules, "_scope_covers", counting)
    found = list(rules.shadowed_rules(policy))
    count = len(policy.clusters[0].rules)
    assert count > 1200
    partner_lines = {r.span.line for r in policy.clusters[0].rules
                     if r.source.label.startswith("partners")}
    assert len(partner_lines) == 1200
    assert [d for d in found if d.span.line in partner_lines] == []
    assert len([d for d in found if d.code == "FWC402"]) >= 5  # the five covered ones
    # Each rule meets at most the few earlier rules whose sets contain its own.
    assert 5 <= tested < 3 * count, (tested, count)


def _scattered_ranges_policy(count: int) -> str:
    """COUNT rules with port ranges scattered over 2048-22087, none covering another, then
    COUNT rules with a single port each, in the same blocks of ports but outside every
    range: no rule covers another."""
    lines = [f"    accept from 198.18.0.0/16 to 198.19.0.0/16 service tcp/{low}-{low + 40}"
             for low in range(2048, 2048 + 100 * count, 100)]
    lines += [f"    accept from 198.18.0.0/16 to 198.19.0.0/16 service tcp/{low + 60}"
              for low in range(2048, 2048 + 100 * count, 100)]
    return mutate((SERVER_RULE, "\n".join(lines).strip()))


def test_shadowing_meets_only_the_ranges_in_a_ports_block(tmp_path, monkeypatch):
    # Regression (issue 12): every port range of a protocol was stored under one key that
    # every rule with ports asks, so each rule met every earlier uncovered range: on 100,000
    # rules with scattered ranges, 175,000 failing coverage tests. Ranges are keyed by their
    # blocks of 1,024 ports now.
    policy = run(tmp_path, _scattered_ranges_policy(200)).policy
    assert policy is not None
    tested = 0
    real = rules._scope_covers

    def counting(outer, inner):
        nonlocal tested
        tested += 1
        return real(outer, inner)

    monkeypatch.setattr(rules, "_scope_covers", counting)
    assert [d for d in rules.shadowed_rules(policy) if d.code in ("FWC401", "FWC402")] == []
    # each rule meets the earlier ranges of its block (a range every 100 ports: at most
    # 11); with one key per protocol each met every earlier range (about 60,000 in all)
    assert 200 <= tested <= 400 * 11, tested


# -- the indexed shadowing search equals a brute-force oracle ------------------------------

_OBJECTS = """\
group scattered1 198.18.0.0/28, 198.18.9.16/28, 198.19.3.0/29
group scattered2 198.18.0.0/28, 198.19.3.0/29
group scattered3 198.18.9.16/28, 198.19.200.0/24
host  inside1   198.18.0.5
host  inside2   198.19.3.4
network wide    198.18.0.0/15
"""
_SIDES = ("any", "firewall", "lan", "client", "server", "web", "scattered1", "scattered2",
          "scattered3", "inside1", "inside2", "wide", "lan6", "uplink.vip", "!client",
          "scattered1, !inside1")
# single ports that together hold a range, ranges across and inside the index's port
# blocks, and a range wider than the blocks the index keys it by
_SERVICES = ("", " service tcp/80", " service tcp/80,443", " service tcp/1-1000",
             " service udp/53", " service tcp/80, udp/53", " service icmp/8", " service icmp",
             " service tcp/80,81", " service tcp/80-81", " service tcp/1000-1100",
             " service tcp/1020-1030", " service tcp/1000-1023,1024-2000", " service tcp/1-65535",
             " service tcp/5000-6000")
_SCOPES = ("", " in lan", " in uplink", " out uplink", " only fw1", " in lan out uplink")


def _oracle(flows: list[rules.Flow]) -> list[tuple[int, int]]:
    """Every earlier flow is a candidate: the first that covers a flow is its finding."""
    out = []
    for at, flow in enumerate(flows):
        if not flow.parts:
            continue
        for earlier in flows[:at]:
            if rules.covers(earlier, flow):
                out.append((flow.position, earlier.position))
                break
    return out


def _to_server(*rows: tuple[str, str, str, str]) -> list[tuple[str, str, str, str, str]]:
    """Rules as drawn (action, source, destination, service, scope), from rows without
    the destination: it is `server`."""
    return [(action, src, "server", svc, scope) for action, src, svc, scope in rows]


_UDP53 = " service udp/53"
# The cases of the shadowing index's storage that random policies seldom reach, each
# ending with a rule the earlier ones cover (its finding is the first of them).
_INDEX_CASES = [
    # one source with a second destination (its index entry turns from a pair into a
    # dict), and a third rule that only the first covers
    [("accept", "client", "server", "", ""), ("accept", "client", "web", "", ""),
     ("drop", "client", "server", _UDP53, "")],
    # a second flow of the same source and destination under the same service key (the
    # pair then holds a list), and a third rule both cover
    _to_server(("accept", "client", " service tcp/1020-1030", ""),
               ("accept", "client", " service tcp/1000-1100", ""),
               ("drop", "client", " service tcp/1020-1030", "")),
    # two earlier flows held alone in their pairs, both covering a third
    [("accept", "lan", "server", _UDP53, ""), ("accept", "client", "any", _UDP53, ""),
     ("drop", "client", "server", _UDP53, "")],
    # flows of one source and destination that cover one another only in part (`in`,
    # `only`), so a pair holds a list of them, merged with other sources' flows in rule
    # order
    _to_server(("accept", "client", _UDP53, " in lan"), ("accept", "client", _UDP53, " in uplink"),
               ("accept", "client", _UDP53, ""), ("drop", "client", _UDP53, "")),
    _to_server(("accept", "client", _UDP53, " in lan"), ("accept", "client", _UDP53, ""),
               ("accept", "lan", _UDP53, ""), ("drop", "client", _UDP53, "")),
    _to_server(("accept", "lan", _UDP53, " only fw1"), ("accept", "client", _UDP53, " in lan"),
               ("accept", "client", _UDP53, ""), ("drop", "client", _UDP53, " only fw1")),
]


def _with_index_cases(test):  # type: ignore[no-untyped-def]
    for drawn in reversed(_INDEX_CASES):
        test = example(drawn=drawn)(test)
    return test


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                   HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.sampled_from(("accept", "drop")), st.sampled_from(_SIDES),
                          st.sampled_from(_SIDES), st.sampled_from(_SERVICES),
                          st.sampled_from(_SCOPES)), min_size=1, max_size=14))
@_with_index_cases
def test_shadowing_equals_brute_force(tmp_path, drawn):
    lines = [f"    {action} from {src} to {dst}{svc}{scope}"
             for action, src, dst, svc, scope in drawn]
    text = _OBJECTS + mutate((SERVER_RULE, "\n".join(lines).strip()))
    analysis = analyse_text(tmp_path, text)
    assume(analysis.policy is not None)
    cluster = analysis.policy.clusters[0]
    flows = rules._filter_flows(cluster, rules._firewall(cluster))
    fast = [(shadowed.position, by.position) for shadowed, by in rules.shadowing(flows)]
    assert fast == _oracle(flows)


def analyse_text(tmp_path, text: str):
    path = tmp_path / "oracle.fw"
    path.write_text(text, encoding="utf-8")
    return analyse(path, run_checks=False)


# -- the per-list service coverage equals its plain definition ----------------------------

def _plain_match_covered(inner: ServiceMatch, outer: tuple[ServiceMatch, ...]) -> bool:
    same = [o for o in outer if o.number == inner.number
            and (inner.helper is None or o.helper == inner.helper)]
    if any(not o.ports and o.icmp_type is None for o in same):
        return True
    if inner.icmp_type is not None:
        return any(o.icmp_type == inner.icmp_type for o in same)
    if inner.ports:
        return IntervalSet.of(p for o in same for p in o.ports).covers(
            IntervalSet.of(inner.ports))
    return False


def _plain_services_cover(outer: tuple[ServiceMatch, ...], inner: tuple[ServiceMatch, ...],
                          family: int) -> bool:
    """The coverage of service lists as the shadowing check first wrote it."""
    if not outer:
        return True
    if not inner:
        return False
    return all(_plain_match_covered(m, outer) for m in inner
               if rules.PROTOCOL_FAMILY.get(m.protocol, family) == family)


_ports = st.lists(st.tuples(st.integers(1, 40), st.integers(0, 12)).map(
    lambda p: PortRange(p[0], p[0] + p[1])), min_size=1, max_size=3).map(tuple)
_match = st.one_of(
    st.builds(lambda proto, ports, helper: ServiceMatch(proto[0], proto[1], ports,
                                                        helper=helper),
              st.sampled_from((("tcp", 6), ("udp", 17))), st.one_of(st.just(()), _ports),
              st.sampled_from((None, None, "ftp"))),
    st.builds(lambda proto, kind: ServiceMatch(proto[0], proto[1], (), kind),
              st.sampled_from((("icmp", 1), ("icmpv6", 58))),
              st.sampled_from((None, 0, 8, 128))))
_list = st.lists(_match, max_size=4).map(tuple)


@settings(max_examples=400, deadline=None)
@given(_list, _list)
def test_service_coverage_equals_its_plain_definition(outer, inner):
    fast = rules.Services(outer)
    for family in (4, 6):
        assert fast.covers(rules.Services(inner), family) == \
            _plain_services_cover(outer, inner, family), (outer, inner, family)


@pytest.mark.parametrize(("outer", "inner"), [
    ("tcp/80,81", "tcp/80-81"),  # single ports that together hold a range
    ("tcp/1000-1023,1024-2000", "tcp/1000-1100"),  # ranges in two port blocks
    ("tcp/1-65535", "tcp/5000-6000"),  # a range wider than the blocks keyed one by one
    ("tcp/900-1100", "tcp/1030"),  # a single port in a range's second block
])
def test_shadowing_finds_ports_covered_however_the_index_keys_them(tmp_path, outer, inner):
    # Regression (issue 12): single ports joined into a range were never asked for a
    # rule whose first match is a range, so such a rule was never reported as shadowed.
    drawn = [("accept", "client", "server", f" service {outer}", ""),
             ("accept", "client", "server", f" service {inner}", "")]
    lines = [f"    {action} from {src} to {dst}{svc}{scope}"
             for action, src, dst, svc, scope in drawn]
    analysis = analyse_text(tmp_path, _OBJECTS + mutate((SERVER_RULE, "\n".join(lines).strip())))
    assert analysis.policy is not None
    cluster = analysis.policy.clusters[0]
    flows = rules._filter_flows(cluster, rules._firewall(cluster))
    fast = [(shadowed.position, by.position) for shadowed, by in rules.shadowing(flows)]
    assert len(fast) == 1
    assert fast == _oracle(flows)
