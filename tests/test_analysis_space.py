"""Boxes and first-match partitioning against a packet-by-packet oracle."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from fwc.analysis.engine import first_match
from fwc.analysis.index import RuleList
from fwc.analysis.space import (
    ALL_SERVICES,
    Box,
    coalesce,
    protocol_block,
    service_intervals,
)
from fwc.model import PortRange, ServiceMatch
from fwc.model.intervals import _intersect_merge, intersect, normalise, subtract

IFACES = ("a", "b", "c")
SMALL = 64  # a 6-bit address space keeps the oracle exhaustive


def _intervals(draw, limit: int = SMALL) -> tuple[tuple[int, int], ...]:
    pairs = draw(st.lists(st.tuples(st.integers(0, limit - 1), st.integers(0, 12)),
                          min_size=1, max_size=3))
    return normalise((lo, min(limit - 1, lo + width)) for lo, width in pairs)


@st.composite
def boxes(draw) -> Box:
    return Box(4, _intervals(draw), _intervals(draw), _intervals(draw, 8),
               frozenset(draw(st.sets(st.sampled_from(IFACES), min_size=1))),
               frozenset(draw(st.sets(st.sampled_from(IFACES), min_size=1))))


def _contains(box: Box, packet: tuple[int, int, int, str, str]) -> bool:
    src, dst, svc, i, o = packet
    return (any(lo <= src <= hi for lo, hi in box.src)
            and any(lo <= dst <= hi for lo, hi in box.dst)
            and any(lo <= svc <= hi for lo, hi in box.services) and i in box.in_ifaces
            and o in box.out_ifaces)


def _packets(box: Box):
    for lo, hi in box.src:
        for src in range(lo, hi + 1, 3):
            for dlo, dhi in box.dst:
                for dst in range(dlo, dhi + 1, 5):
                    for slo, shi in box.services:
                        for svc in range(slo, shi + 1):
                            for i in box.in_ifaces:
                                for o in box.out_ifaces:
                                    yield src, dst, svc, i, o


@settings(max_examples=80, deadline=None)
@given(query=boxes(), rules=st.lists(boxes(), max_size=8))
def test_first_match_agrees_with_packet_oracle(query: Box, rules: list[Box]) -> None:
    rule_list = RuleList(4, [(f"r{n}", box) for n, box in enumerate(rules)])  # type: ignore[misc]
    pieces = list(first_match(rule_list, query))
    for packet in _packets(query):
        expected = next((f"r{n}" for n, box in enumerate(rules) if _contains(box, packet)), None)
        owners = [decided for part, decided in pieces if _contains(part, packet)]
        assert len(owners) == 1, "pieces must partition the query"
        got = owners[0].rule if owners[0] is not None else None
        assert got == expected
    for part, _ in pieces:
        assert query.covers(part)


@settings(max_examples=100, deadline=None)
@given(a=boxes(), b=boxes())
def test_box_minus_is_disjoint_and_exact(a: Box, b: Box) -> None:
    common = a.intersect(b)
    rest = a.minus(common) if common is not None else [a]
    for packet in _packets(a):
        inside_b = _contains(b, packet)
        in_rest = sum(_contains(part, packet) for part in rest)
        assert in_rest == (0 if inside_b else 1)


def _minus(box: Box, other: Box) -> list[Box]:
    common = box.intersect(other)
    return [box] if common is None else box.minus(common)


@settings(max_examples=60, deadline=None)
@given(parts=st.lists(boxes(), max_size=6))
def test_coalesce_keeps_the_union(parts: list[Box]) -> None:
    disjoint: list[Box] = []
    for box in parts:  # coalesce expects disjoint boxes, as partitions produce
        pieces = [box]
        for seen in disjoint:
            pieces = [r for p in pieces for r in _minus(p, seen)]
        disjoint.extend(pieces)
    merged = coalesce(disjoint)
    assert len(merged) <= len(disjoint)
    for box in parts:
        for packet in _packets(box):
            assert sum(_contains(m, packet) for m in merged) == 1


@given(a=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 50)), max_size=40),
       b=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 50)), max_size=3))
def test_intersect_fast_path_matches_merge(a, b) -> None:
    left = normalise((lo, lo + w) for lo, w in a)
    right = normalise((lo, lo + w) for lo, w in b)
    assert intersect(left, right) == _intersect_merge(left, right)
    assert intersect(right, left) == _intersect_merge(left, right)


def test_service_axis_blocks() -> None:
    tcp = service_intervals((ServiceMatch("tcp", 6, (PortRange(22, 22), PortRange(80, 90))),), 4)
    assert tcp == ((6 << 16 | 22, 6 << 16 | 22), (6 << 16 | 80, 6 << 16 | 90))
    ping = (ServiceMatch("icmp", 1, (), 8, "echo-request"),
            ServiceMatch("icmpv6", 58, (), 128, "echo-request"))
    assert service_intervals(ping, 4) == ((1 << 16 | 8, 1 << 16 | 8),)
    assert service_intervals(ping, 6) == ((58 << 16 | 128, 58 << 16 | 128),)
    assert service_intervals((), 4) == ALL_SERVICES
    # gre has no ports: one point; the complement of tcp never invents gre ports
    assert protocol_block(47) == (47 << 16, 47 << 16)
    rest = subtract(ALL_SERVICES, tcp)
    assert intersect(rest, ((47 << 16 | 1, 47 << 16 | 5),)) == ()
