"""The checks' fast paths equal the plain computations they replace, on random policies.

- FWC504 asks the lowering's predicates (`filter_chains`, `nat_reaches`) on side
  shapes computed once per distinct side (`_Shapes`) instead of calling
  `filter_parts`/`nat_part` per rule (`_produces_something` below);
- the shadowing flows split each distinct side once (`PartsMemo`);
- the sides are numbered by what was written, checked against their address sets
  (`SideNumbers`): equal numbers exactly when the sides mean the same (`endpoint_key`);
- the name checks walk each list once (`SideFacts`) instead of `Endpoint`'s properties;
- service lists are numbered by their labels, checked against the lists
  (`ServiceNumbers`), and FWC504 reads a list's families (`names.service_families`)
  instead of building its matches (`service_matches`).
"""

from __future__ import annotations

from checkkit import mutate
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from fwc.backend.lower.build import filter_parts, nat_part, service_matches
from fwc.checks import lowering, names, rules, sides
from fwc.diagnostics import Span, error, warning
from fwc.model import Cluster, Endpoint, EndpointItem, FilterRule, PortRange, Rule, ServiceMatch
from fwc.model.addresses import AddressSet
from fwc.model.vocabulary import FilterAction
from fwc.pipeline import analyse

SERVER_RULE = "accept from server to client   service tcp/5001"
_OBJECTS = """\
host    fw1lan   192.0.2.1
group   pair     192.0.2.0/31, 198.51.100.0/24
group   vips     192.0.2.254, 198.51.100.254
"""
_SIDES = ("any", "firewall", "!firewall", "lan", "lan6", "client", "server", "fw1lan", "pair",
          "vips", "lan.vip", "uplink.vip", "lan, !client", "!client", "client, firewall",
          "any, !firewall", "lan6, !lan6", "firewall, !fw1lan")
_SERVICES = ("", " service tcp/80", " service icmp/8", " service icmpv6/128",
             " service icmp/8, udp/53")
_SCOPES = ("", " in lan", " out uplink", " in lan out uplink", " only fw1", " only fw2")
_NAT = ("snat from {src} to {dst} out uplink -> uplink.vip",
        "dnat from {src} to {dst} service tcp/80 in uplink -> web",
        "nonat from {src} to {dst}{scope}",
        "masquerade from {src} to {dst} out uplink")

_rules = st.lists(st.tuples(st.sampled_from(("accept", "drop")), st.sampled_from(_SIDES),
                            st.sampled_from(_SIDES), st.sampled_from(_SERVICES),
                            st.sampled_from(_SCOPES)), min_size=1, max_size=10)
_nats = st.lists(st.tuples(st.sampled_from(_NAT), st.sampled_from(_SIDES),
                           st.sampled_from(_SIDES),
                           st.sampled_from(("", " in lan", " out uplink"))), max_size=4)
_SNAT = "snat from lan to any out uplink -> uplink.vip"
_settings = settings(max_examples=60, deadline=None, suppress_health_check=[
    HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


def _policy(tmp_path, drawn, nats):
    lines = [f"{action} from {src} to {dst}{svc}{scope}"
             for action, src, dst, svc, scope in drawn]
    nat = [form.format(src=src, dst=dst, scope=scope) for form, src, dst, scope in nats]
    text = _OBJECTS + mutate((SERVER_RULE, "\n    ".join(lines)),
                             (_SNAT, "\n    ".join([*nat, _SNAT])))
    path = tmp_path / "fast.fw"
    path.write_text(text, encoding="utf-8")
    analysis = analyse(path, run_checks=False)
    assume(analysis.policy is not None)
    return analysis.policy


def _produces_something(cluster: Cluster, rule: Rule) -> bool:
    """Does RULE give a kernel rule on some member? By the lowering itself, per rule."""
    for member in cluster.members:
        if rule.only is not None and rule.only != member.name:
            continue
        fw = cluster.firewall_addresses(member)
        for family in (4, 6):
            fw_family = fw.only(family)
            if service_matches(rule.services, family) is None:
                continue
            if rule.target is not None and not rule.target.addresses.family(family):
                continue
            if isinstance(rule, FilterRule):
                if filter_parts(rule, fw_family, family):
                    return True
            elif nat_part(rule, fw_family, family, "") is not None:
                return True
    return False


@_settings
@given(_rules, _nats)
def test_fwc504_side_shapes_equal_the_lowering(tmp_path, drawn, nats):
    policy = _policy(tmp_path, drawn, nats)
    for cluster in policy.clusters:
        shapes = lowering._Shapes(cluster)
        for rule in cluster.all_rules():
            assert shapes.produces_something(rule) == \
                _produces_something(cluster, rule), rule.span


@_settings
@given(_rules, _nats)
def test_shadowing_flows_equal_without_the_memo(tmp_path, drawn, nats):
    policy = _policy(tmp_path, drawn, nats)
    for cluster in policy.clusters:
        firewall = rules._firewall(cluster)
        memo = rules.PartsMemo(firewall)
        for rule in cluster.rules:
            assert rules.flow_of(rule, rules.FILTER_HOOKS, firewall, memo) == \
                rules.flow_of(rule, rules.FILTER_HOOKS, firewall)
        memo = rules.PartsMemo(firewall)
        for nat in cluster.nat:
            hooks = rules._nat_hooks(nat)
            assert rules.flow_of(nat, hooks, firewall, memo) == \
                rules.flow_of(nat, hooks, firewall)


@_settings
@given(_rules, _nats)
def test_side_numbers_are_equal_exactly_for_equal_sides(tmp_path, drawn, nats):
    policy = _policy(tmp_path, drawn, nats)
    for cluster in policy.clusters:
        numbers = sides.SideNumbers()
        ends = [side for rule in cluster.all_rules() for side in (rule.source, rule.destination)]
        got = [numbers.number(side) for side in ends]
        assert got == [numbers.number(side) for side in reversed(ends)][::-1]
        keys = [sides.endpoint_key(side) for side in ends]
        for a in range(len(ends)):
            for b in range(len(ends)):
                assert (got[a] == got[b]) == (keys[a] == keys[b])


def test_side_numbers_check_the_sets_behind_a_label():
    """The same text with other addresses (another cluster's object of that name, a
    literal) is another side; equal sets in other objects are the same side."""
    def side(label: str, *addresses: str, negated: bool = False) -> Endpoint:
        item = EndpointItem("object", label, AddressSet.of(*addresses), negated, label)
        return Endpoint((item,))

    numbers = sides.SideNumbers()
    first = numbers.number(side("web", "192.0.2.1"))
    assert numbers.number(side("web", "192.0.2.2")) != first
    assert numbers.number(side("web", "192.0.2.1")) == first  # equal set, another object
    assert numbers.number(side("www", "192.0.2.1")) == first  # the same meaning
    assert numbers.number(side("web", "192.0.2.1", negated=True)) != first
    pair = Endpoint((*side("web", "192.0.2.1").items, *side("db", "192.0.2.9").items))
    other = Endpoint((*side("web", "192.0.2.1").items, *side("db", "192.0.2.8").items))
    assert numbers.number(pair) != numbers.number(other)
    assert numbers.number(pair) == numbers.number(
        Endpoint((*side("web", "192.0.2.1").items, *side("db", "192.0.2.9").items)))


def _families_by_properties(endpoint: Endpoint, cluster) -> frozenset[int]:
    """side_families as it was written on `Endpoint`'s properties."""
    if endpoint.is_any:
        return names.BOTH
    families = set((endpoint.addresses - endpoint.excluded).families)
    if endpoint.firewall:
        families |= names.firewall_families(cluster)
    return frozenset(families)


@_settings
@given(_rules, _nats)
def test_side_facts_equal_the_endpoint_properties(tmp_path, drawn, nats):
    policy = _policy(tmp_path, drawn, nats)
    for cluster in policy.clusters:
        for rule in cluster.all_rules():
            for side in (rule.source, rule.destination):
                facts = names.SideFacts.of(side)
                assert names.side_families(facts, cluster) == \
                    _families_by_properties(side, cluster)
                assert facts.is_any == side.is_any and facts.firewall == side.firewall
                assert facts.remaining() == side.addresses - side.excluded
                assert facts.matches_no_address() == (not side.addresses - side.excluded)


def _names_by_matcher(policy) -> dict[str, list]:
    """FWC105, FWC112 and FWC113 as they were written before they went by side number:
    every matcher asked by itself, its facts made from its own sides."""
    out: dict[str, list] = {"FWC105": [], "FWC112": [], "FWC113": []}
    for cluster in policy.clusters:
        matchers = [*(("rule", r) for r in cluster.rules),
                    *(("NAT rule", r) for r in cluster.nat),
                    *(("expectation", e) for e in cluster.expectations)]
        for what, item in matchers:
            source, destination = names.SideFacts.of(item.source), \
                names.SideFacts.of(item.destination)
            found = names._family_finding(what, item, names.side_families(source, cluster),
                                          names.side_families(destination, cluster))
            out["FWC105"] += [found] if found is not None else []
            for side_name, key, side, facts in (
                    ("source", "from", item.source, source),
                    ("destination", "to", item.destination, destination)):
                empty = (not facts.is_any and not facts.firewall and not facts.broken
                         and facts.matches_no_address())
                if facts.negated_any or empty:
                    out["FWC112"].append(error(
                        "FWC112", f"{what} {side_name} '{side.label}' matches no address",
                        item.item_span(key, 0),
                        hint="the negated items remove everything the list names"))
                if facts.is_any or facts.firewall or not facts.negated:
                    continue
                positives = AddressSet.union(facts.positive)
                for index, negated in enumerate(side.items):
                    if negated.negated and negated.kind not in ("any", "firewall") \
                            and not negated.addresses.overlaps(positives):
                        out["FWC113"].append(warning(
                            "FWC113", f"'!{negated.label}' excludes nothing from "
                            f"this {what}'s list", item.item_span(key, index),
                            hint=f"'{negated.label}' does not overlap "
                            f"{names._positive_labels(side)}"))
    return out


@_settings
@given(_rules, _nats)
def test_name_checks_by_side_number_equal_them_per_matcher(tmp_path, drawn, nats):
    """The name checks derive their findings once per side number (and FWC105 a filter
    rule's from bits per number): the same diagnostics, in the same order."""
    policy = _policy(tmp_path, drawn, nats)
    expected = _names_by_matcher(policy)
    assert list(names.family_mismatch(policy)) == expected["FWC105"]
    assert list(names.empty_endpoint(policy)) == expected["FWC112"]
    assert list(names.useless_negation(policy)) == expected["FWC113"]


# -- service lists: numbered once per run, their families without building matches -------

# low ports close together, and ranges across the index's blocks of 1,024 ports, up to
# wider than the blocks it keys one by one
_ports = st.lists(st.tuples(st.one_of(st.integers(1, 40), st.integers(1000, 1100),
                                      st.integers(1, 65000)),
                            st.sampled_from((0, 1, 3, 30, 3000, 5000))).map(
    lambda p: PortRange(p[0], min(p[0] + p[1], 65535))), max_size=2).map(tuple)
_match = st.one_of(
    st.builds(lambda proto, ports: ServiceMatch(proto[0], proto[1], ports),
              st.sampled_from((("tcp", 6), ("udp", 17), ("gre", 47))), _ports),
    st.builds(lambda proto, kind: ServiceMatch(proto[0], proto[1], (), kind),
              st.sampled_from((("icmp", 1), ("icmpv6", 58))), st.sampled_from((None, 8))))
_lists = st.lists(_match, max_size=3).map(tuple)


@settings(max_examples=300, deadline=None)
@given(_lists)
def test_service_families_are_where_the_lowering_finds_matches(services):
    for family in (4, 6):
        assert (family in names.service_families(services)) == \
            (service_matches(services, family) is not None), (services, family)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(("a", "b", "c")), _lists), min_size=1,
                max_size=8))
def test_service_numbers_are_equal_exactly_for_equal_lists(labelled):
    """Labels find a number only when the list behind them is the same (another
    cluster's service of that name is another list)."""
    numbers = sides.ServiceNumbers()

    def rule(label: str, services: tuple[ServiceMatch, ...]) -> FilterRule:
        return FilterRule(0, FilterAction.ACCEPT, Endpoint(()), Endpoint(()), services,
                          (label,), None, None, False, None, None, Span("x.fw", 1, 1, 1, 2))

    got = [numbers.number(rule(label, services)) for label, services in labelled]
    for a, (_, first) in enumerate(labelled):
        for b, (_, second) in enumerate(labelled):
            assert (got[a] == got[b]) == (first == second)
        assert numbers.lists[got[a]] == first


@_settings
@given(_rules, _nats)
def test_shadowing_flows_with_service_numbers_equal_without_the_memo(tmp_path, drawn, nats):
    policy = _policy(tmp_path, drawn, nats)
    for cluster in policy.clusters:
        firewall = rules._firewall(cluster)
        assert rules._filter_flows(cluster, firewall) == \
            [rules.flow_of(rule, rules.FILTER_HOOKS, firewall) for rule in cluster.rules]
        assert rules._nat_flows(cluster, firewall) == \
            [rules.flow_of(nat, rules._nat_hooks(nat), firewall) for nat in cluster.nat]


def _plain_service_keys(services: tuple[ServiceMatch, ...], family: int) -> set[int]:
    """`rules._service_keys` as it was written, through the key functions."""
    if not services:
        return {rules.ALL_SERVICES}
    keys: set[int] = set()
    for match in rules._in_family(services, family):
        if rules._whole_protocol(match):
            keys.add(rules._protocol_key(match.number))
        elif match.icmp_type is not None:
            keys.add(rules._type_key(match.number, match.icmp_type))
        else:
            for ports in match.ports:
                if ports.low == ports.high:
                    keys.add(rules._port_key(match.number, ports.low))
                else:
                    keys.update(rules._wide_keys(match.number, ports.low, ports.high))
    return keys


@settings(max_examples=500, deadline=None)
@given(_lists, _lists)
# single ports that together hold a range (the case the index once missed)
@example((ServiceMatch("tcp", 6, (PortRange(80, 80), PortRange(81, 81))),),
         (ServiceMatch("tcp", 6, (PortRange(80, 81),)),))
def test_a_covering_list_is_stored_under_a_key_the_covered_one_probes(outer, inner):
    """The shadowing index's completeness for services: whenever OUTER covers INNER in a
    family, OUTER's index keys and INNER's probe keys share a key (else the covering rule
    would never be a candidate)."""
    covering, covered = rules.Services(outer), rules.Services(inner)
    for family in (4, 6):
        matches, _, probes = covered.keys(family)
        if matches and covering.covers(covered, family):
            assert set(covering.keys(family)[1]) & set(probes), (outer, inner, family)


@settings(max_examples=300, deadline=None)
@given(_lists)
def test_service_keys_written_out_equal_the_key_functions(services):
    summary = rules.Services(services)
    for family in (4, 6):
        assert rules._service_keys(services, family) == _plain_service_keys(services, family)
        matches, index_keys, probe_keys = summary.keys(family)
        assert matches == rules._in_family(services, family)
        assert index_keys == tuple(sorted(_plain_service_keys(services, family)))
        assert probe_keys == rules._probe_keys(services, family)
