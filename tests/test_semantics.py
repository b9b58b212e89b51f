"""One meaning of an endpoint and one CIDR-hull index (fwc.model.semantics, issue 11).

Lowering, the rule checks and the analysis engine read `side_of`; these tests
pin its readings against each other and against brute force, and the one
place where the checks used to differ from the compiler.
"""

from __future__ import annotations

from pathlib import Path

from conftest import Examples, write_policy
from hypothesis import given, settings
from hypothesis import strategies as st

from fwc.backend.lower import lower, options_for
from fwc.checks import run_checks
from fwc.model.addresses import AddressSet
from fwc.model.intervals import normalise
from fwc.model.semantics import (
    PrefixIndex,
    Reach,
    Side,
    SupersetIndex,
    cidr_blocks,
    endpoint_intervals,
    filter_chains,
    forwarded_and_local,
    hull,
    hull_block,
    nat_reaches,
    reach,
    side_of,
)
from fwc.pipeline import analyse


def test_the_readings_agree_on_every_example_endpoint(examples: Examples):
    """Engine set = forwarded part minus the firewall, plus the named firewall part."""
    checked = 0
    for example in examples.all():
        policy = example.policy
        for cluster in policy.clusters:
            cluster_fw = cluster.all_member_addresses | cluster.vips
            for member in cluster.members:
                fw = cluster.firewall_addresses(member)
                endpoints = [e for r in cluster.all_rules() for e in (r.source, r.destination)]
                endpoints += [e for x in cluster.expectations for e in (x.source, x.destination)]
                for endpoint in endpoints:
                    net, local = forwarded_and_local(endpoint, fw)
                    for family in (4, 6):
                        side = side_of(endpoint, fw.only(family), family)
                        exact = endpoint_intervals(endpoint, fw, family)
                        assert exact == (((net - fw) | local) - side.excluded).family(family)
                        assert side.firewall == local.only(family)
                        checked += 1
                # the checks' cluster-wide view names at least what one member names
                for endpoint in endpoints:
                    assert forwarded_and_local(endpoint, cluster_fw)[1].covers(
                        forwarded_and_local(endpoint, fw)[1])
    assert checked > 100


def test_not_any_means_nothing_everywhere(examples: Examples):
    policy = examples["edge.fw"].policy
    rule = policy.clusters[0].rules[0]
    item = rule.destination.items[0]
    assert item.kind == "any"
    negated = type(rule.destination)((type(item)("any", "any", AddressSet(), True, None),))
    fw = policy.clusters[0].firewall_addresses(policy.clusters[0].members[0])
    assert endpoint_intervals(negated, fw, 4) == ()
    assert forwarded_and_local(negated, fw) == (AddressSet(), AddressSet())


DUAL = """
host vip4 192.0.2.254
host v6host 2001:db8:1::99
group dual vip4, v6host
service ssh tcp/22
cluster c {
    vrrp { password "s3cret" advert 1s vrid 51 }
    sync { link sync mode ftfw multicast 225.0.0.50 port 3780 }
    interface lan vip 192.0.2.254/24, 2001:db8:1::fe/64
    interface sync
    member a priority 150 {
        lan eth0 192.0.2.1/24, 2001:db8:1::1/64
        sync eth2 203.0.113.1/24
    }
    member b priority 100 {
        lan eth0 192.0.2.2/24, 2001:db8:1::2/64
        sync eth2 203.0.113.2/24
    }
}
policy c {
    accept from any to any service ssh
    accept from any to dual service ssh
}
"""


def test_a_dual_family_item_is_split_per_family_as_the_compiler_does(tmp_path: Path):
    """The checks used to call `dual` forwarded traffic in both families, so they
    reported the second rule as redundant; the compiler puts its IPv4 part (a VIP)
    in INPUT, which `to any` never matches: removing the rule would cut SSH to the VIP.
    """
    policy = analyse(write_policy(tmp_path, DUAL)).policy
    assert policy is not None
    codes = {d.code for d in run_checks(policy)}
    assert "FWC402" not in codes and "FWC401" not in codes
    cluster = policy.clusters[0]
    ruleset = lower(cluster, cluster.members[0], 4, options_for(policy))
    line = f"{Path(policy.root).name}:{cluster.rules[1].span.line}"
    chains = {chain for _, chain, r in ruleset.rules() if r.origin.label == line}
    assert chains == {"INPUT"}


blocks = st.tuples(st.integers(0, 32), st.integers(0, 2 ** 32 - 1)).map(
    lambda b: (b[0], b[1] >> (32 - b[0]) << (32 - b[0]) if b[0] else 0))


@settings(max_examples=200, deadline=None)
@given(st.lists(blocks, max_size=20), blocks)
def test_prefix_index_agrees_with_brute_force(stored, query):
    index: PrefixIndex[list[int]] = PrefixIndex(4)
    for position, block in enumerate(stored):
        index.slot(block, list).append(position)

    def span(block):
        length, network = block
        return network, network + 2 ** (32 - length) - 1

    lo, hi = span(query)
    containing = sorted(p for bucket in index.containing(query) for p in bucket)
    assert containing == [p for p, b in enumerate(stored)
                          if span(b)[0] <= lo and hi <= span(b)[1]]
    count, found = index.overlapping(lo, hi)
    meeting = [p for p, b in enumerate(stored) if span(b)[0] <= hi and lo <= span(b)[1]]
    assert sorted(p for bucket in found for p in bucket) == meeting
    assert count == len(meeting)


# small sets in a small corner of the space, so that containment is common
_intervals = st.lists(st.tuples(st.integers(0, 300), st.integers(0, 40)), min_size=1,
                      max_size=6).map(lambda pairs: normalise(
                          [(2 ** 32 - 512 + low, 2 ** 32 - 512 + low + size)
                           for low, size in pairs]))


@settings(max_examples=200, deadline=None)
@given(st.lists(_intervals, min_size=1, max_size=25))
def test_superset_index_agrees_with_brute_force(sets):
    index = SupersetIndex(4)
    ids = [index.add(one) for one in sets]
    assert ids == [index.add(one) for one in sets]  # equal sets, equal ids

    def inside(inner, outer):
        return all(any(a <= low and high <= b for a, b in outer) for low, high in inner)

    for one, ident in zip(sets, ids, strict=True):
        assert index.supersets(ident) == frozenset(
            other for other, outer in enumerate(index.sets) if inside(one, outer))


@settings(max_examples=200, deadline=None)
@given(st.sampled_from((4, 6)), st.lists(st.tuples(st.integers(0, 40), st.integers(0, 2 ** 33),
                                                   st.integers(0, 40)), min_size=1, max_size=8))
def test_superset_tiles_are_the_cidr_blocks_of_every_interval(family, raw):
    # the tiles take a one-block interval (a prefix, a host) without `cidr_blocks`: the
    # same blocks, the whole space and hosts included
    top = 2 ** (32 if family == 4 else 128) - 1
    sets = [normalise([(min(low << shift, top), min((low << shift) + size, top))])
            for shift, low, size in raw] + [((0, top),), ((top, top),)]
    index = SupersetIndex(family)
    for one in sets:
        index.add(one)
    bits = 32 if family == 4 else 128
    tiles = {(bits - shift, network): ids for shift, table in index._tiles()
             for network, ids in table.items()}
    expected: dict[tuple[int, int], list[int]] = {}
    for ident, intervals in enumerate(index.sets):
        for low, high in intervals:
            for block in cidr_blocks(low, high, family):
                expected.setdefault(block, []).append(ident)
    assert tiles == expected


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 2 ** 32 - 1), st.integers(0, 2 ** 20))
def test_cidr_blocks_tile_the_interval(low, size):
    high = min(low + size, 2 ** 32 - 1)
    blocks = list(cidr_blocks(low, high, 4))
    at = low
    for length, network in blocks:
        assert network == at and network % 2 ** (32 - length) == 0  # aligned, no gap
        at = network + 2 ** (32 - length)
    assert at == high + 1


def test_hull_is_the_smallest_block():
    assert hull_block(0xC0000200, 0xC00002FF, 4) == (24, 0xC0000200)
    assert hull(AddressSet.of("192.0.2.10", "192.0.2.20"), 4) == (27, 0xC0000200)
    assert hull_block(0, 2 ** 32 - 1, 4) == (0, 0)


def test_reach_is_what_is_left_after_the_exclusions():
    fw = AddressSet.of("192.0.2.1")
    lan = AddressSet.of("198.51.100.0/24")
    host = AddressSet.of("198.51.100.7")
    empty = AddressSet()
    assert reach(Side(True, empty, empty, lan, lan)) == Reach(False, True, True)  # any, !lan
    assert reach(Side(False, lan, empty, host, host)) == Reach(False, True, True)  # lan, !host
    assert reach(Side(False, host, empty, lan, lan)) == Reach(False, False, False)  # host, !lan
    assert reach(Side(False, host, fw, lan, lan)) == Reach(True, True, False)  # +firewall
    assert reach(Side(False, empty, fw, empty, empty)) == Reach(True, True, False)


def test_filter_chains_and_nat_reaches():
    to_fw = Reach(True, True, False)
    net = Reach(False, True, True)
    nothing = Reach(False, False, False)
    assert filter_chains(net, to_fw, False, False) == (True, False, False)
    assert filter_chains(net, to_fw, False, True) == (False, False, False)  # INPUT: no out
    assert filter_chains(to_fw, net, True, False) == (False, False, False)  # OUTPUT: no in
    assert filter_chains(to_fw, net, False, False) == (False, True, False)
    assert filter_chains(net, net, True, True) == (False, False, True)
    assert filter_chains(net, nothing, False, False) == (False, False, False)
    assert nat_reaches(net, to_fw) and not nat_reaches(nothing, net)


def _normalised_by_points(intervals: list[tuple[int, int]]) -> tuple[tuple[int, int], ...]:
    """The reference: the covered points, cut into maximal runs."""
    points = sorted({p for lo, hi in intervals for p in range(lo, hi + 1)})
    runs: list[tuple[int, int]] = []
    for p in points:
        if runs and runs[-1][1] == p - 1:
            runs[-1] = (runs[-1][0], p)
        else:
            runs.append((p, p))
    return tuple(runs)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 40), st.integers(0, 40)), max_size=8))
def test_normalise_merges_overlapping_and_adjacent_intervals(intervals):
    proper = [(lo, hi) for lo, hi in intervals if lo <= hi]
    assert normalise(proper) == _normalised_by_points(proper)


def test_normalise_keeps_a_lone_interval_as_it_is():
    # (an inverted first interval, outside the contract, came out twice for a while)
    assert normalise([(5, 1)]) == ((5, 1),)
    assert normalise([(3, 3)]) == ((3, 3),)
