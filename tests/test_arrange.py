"""The speed passes keep the ruleset's meaning: ipsets and arrangement vs the flat rules.

Every sampled packet (each rule's own corner packets and their neighbours, see
fwc.analysis.evaluate.corner_packets) must get the same verdict, the same target options and
the same LOG/CONNMARK effects from the flat lowered ruleset, from the ruleset with
ipsets, and from the arranged one. Arrangement thresholds are lowered here so that
small policies exercise every level (device pairs, protocols, port buckets).
"""

from __future__ import annotations

import random
import re
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import REPO, run_fwc

from fwc.analysis.evaluate import Evaluator, Packet, corner_packets
from fwc.backend import arrange as arrange_module
from fwc.backend.arrange import arrange, optimise
from fwc.backend.ipsets import set_contents, use_ipsets
from fwc.backend.lower import Chain, NodeRuleset, lower
from fwc.backend.lower.ruleset import rendered_lines
from fwc.backend.render.ipset import render as render_ipsets
from fwc.model import Cluster, Member
from fwc.model.vocabulary import Target
from fwc.pipeline import analyse
from fwc.protocols import CHAIN_NAME_MAX, IPSET_THRESHOLD

CLUSTER = """
cluster mix {
    vrrp { password "x" advert 1s vrid 71 }
    sync { link sync }
    interface lan    vip 198.18.0.254/16, 2001:db8:10::fe/64
    interface dmz    vip 198.19.0.254/17
    interface uplink vip 198.19.128.254/18 vrid 72
    interface sync
    member fw1 priority 150 {
        lan eth0 198.18.0.1/16, 2001:db8:10::1/64
        dmz eth1 198.19.0.1/17
        uplink eth2 198.19.128.1/18
        sync eth3 198.19.254.1/24
    }
    member fw2 priority 100 {
        lan eth0 198.18.0.2/16, 2001:db8:10::2/64
        dmz eth1 198.19.0.2/17
        uplink eth2 198.19.128.2/18
        sync eth3 198.19.254.2/24
    }
}
"""


def mixed_policy(seed: int, rules: int) -> str:
    """Objects of every shape (hosts, networks, big groups for ipsets, v6) and rules with
    and without devices, services, logging, negation, member scope and the firewall."""
    rng = random.Random(seed)
    lines = ["network lan 198.18.0.0/16", "network dmz 198.19.0.0/17",
             "network lan6 2001:db8:10::/64"]
    zones = {"lan": (198, 18), "dmz": (198, 19), "uplink": (198, 19)}
    names: dict[str, list[str]] = {z: [] for z in zones}
    for zone, (a, b) in zones.items():
        base = 128 if zone == "uplink" else 0
        for i in range(6):
            lines.append(f"host h-{zone}-{i} {a}.{b}.{base + i}.{10 + i}")
            names[zone].append(f"h-{zone}-{i}")
        lines.append(f"network n-{zone} {a}.{b}.{base + 7}.0/24")
        names[zone].append(f"n-{zone}")
        members = ", ".join(f"{a}.{b}.{base + 20 + i}.{4 * i}/30"
                            for i in range(IPSET_THRESHOLD + 4))
        lines.append(f"group big-{zone} {members}")
        names[zone].append(f"big-{zone}")
    lines.append("host h6 2001:db8:10::10")
    services = ["tcp/22", "tcp/80,443", "udp/53", "tcp/1024-2047", "icmp/echo-request",
                "tcp/8000-8100, udp/8000-8100", "gre", "tcp/25", "udp/123", "tcp/3306"]
    lines.append(CLUSTER)
    lines.append("policy mix {")
    for index in range(rules):
        src_zone, dst_zone = rng.sample(sorted(zones), 2)
        src = rng.choice(names[src_zone] + ["any"])
        dst = rng.choice(names[dst_zone] + ["any", "firewall"])
        if rng.random() < 0.15 and src == "any":
            src = f"any, !{rng.choice(names[src_zone])}"
        action = rng.choice(("accept", "accept", "accept", "drop", "reject"))
        rule = f"    {action} from {src} to {dst}"
        if rng.random() < 0.85:
            rule += " service " + ", ".join(rng.sample(services, rng.choice((1, 1, 2))))
        pin = rng.random()
        if pin < 0.8:
            rule += f" in {src_zone}"
        if pin < 0.55 and dst != "firewall":
            rule += f" out {dst_zone}"
        if rng.random() < 0.1:
            rule += ' log "mix"'
        if dst == "firewall" and rng.random() < 0.2:
            rule += " only fw1"
        lines.append(rule)
        if index == rules // 2:
            lines.append("    accept from h6 to any service tcp/22 in lan")
    lines.append("    drop from any to any log")
    lines.append("}")
    return "\n".join(lines) + "\n"


def rulesets(path: Path) -> list[tuple[Cluster, Member, int, NodeRuleset]]:
    analysis = analyse(path, run_checks=False)
    assert analysis.policy is not None, analysis.diagnostics
    assert not [d for d in analysis.diagnostics if d.is_error], analysis.diagnostics
    out = []
    for cluster in analysis.policy.clusters:
        for member in cluster.members:
            for family in sorted(cluster.families):
                out.append((cluster, member, family, lower(cluster, member, family)))
    return out


def assert_same_meaning(flat: NodeRuleset, *, min_rules: int, split_min: int,
                        device_names: dict[str, str]) -> tuple[int, float, float]:
    with_sets, sets = use_ipsets(flat)
    arranged = arrange(with_sets, device_names, min_rules=min_rules, split_min=split_min)
    contents = set_contents(sets)
    packets = corner_packets(flat)
    assert packets
    flat_eval = Evaluator(flat)
    set_eval = Evaluator(with_sets, contents)
    arranged_eval = Evaluator(arranged, contents)
    flat_total = arranged_total = 0
    for packet in packets:
        expected = flat_eval.decide(packet)
        with_sets_got = set_eval.decide(packet)
        arranged_got = arranged_eval.decide(packet)
        assert with_sets_got.meaning == expected.meaning, packet.describe()
        assert arranged_got.meaning == expected.meaning, packet.describe()
        flat_total += expected.traversed
        arranged_total += arranged_got.traversed
    for chain in arranged.table("filter").chains:  # type: ignore[union-attr]
        assert len(chain.name) <= CHAIN_NAME_MAX
    return len(packets), flat_total / len(packets), arranged_total / len(packets)


def _devices(member: Member) -> dict[str, str]:
    return {link.device: link.interface for link in member.links}


def test_reference_policy_arranged_at_every_level_decides_like_flat():
    for _, member, _, flat in rulesets(REPO / "policies" / "edge.fw"):
        assert_same_meaning(flat, min_rules=1, split_min=1, device_names=_devices(member))


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_mixed_policy_with_sets_and_arrangement_decides_like_flat(tmp_path, seed):
    path = tmp_path / "mix.fw"
    path.write_text(mixed_policy(seed, 70), encoding="utf-8")
    arranged_somewhere = False
    for _, member, family, flat in rulesets(path):
        count, flat_avg, arranged_avg = assert_same_meaning(
            flat, min_rules=8, split_min=4, device_names=_devices(member))
        if family == 4:
            assert count > 1000
            arranged_somewhere = True
            assert arranged_avg < flat_avg  # the point of it all
    assert arranged_somewhere


def test_defaults_leave_a_small_policy_flat():
    for _, member, _, flat in rulesets(REPO / "policies" / "edge.fw"):
        with_sets, sets = use_ipsets(flat)
        assert sets == ()
        assert arrange(with_sets, _devices(member)) == flat


def test_big_groups_become_one_shared_set_per_object_and_family(tmp_path):
    path = tmp_path / "mix.fw"
    path.write_text(mixed_policy(1, 70), encoding="utf-8")
    for _, member, family, flat in rulesets(path):
        with_sets, sets = use_ipsets(flat)
        if family == 6:
            assert sets == ()
            continue
        names = [s.name for s in sets]
        assert names == sorted(names) and len(set(names)) == len(names)
        assert {"fwc4-big-lan", "fwc4-big-dmz", "fwc4-big-uplink"} <= set(names)
        for s in sets:
            assert len(s.cidrs) > IPSET_THRESHOLD and len(s.name) <= 27
        # no rule keeps a long address list, nor a long cross product of two short ones
        for _, _, rule in with_sets.rules():
            widths = [1 if side.set_name else max(1, len(side.cidrs))
                      for side in (rule.match.source, rule.match.destination)]
            assert widths[0] * widths[1] <= IPSET_THRESHOLD
        text = render_ipsets(sets, "mix", member.name)
        assert "create fwc4-big-lan hash:net family inet hashsize 1024 maxelem 65536 -exist" \
            in text
        assert "swap fwc4-big-lan.new fwc4-big-lan" in text
        assert render_ipsets(sets, "mix", member.name) == text  # deterministic


def test_negated_big_group_becomes_one_return_rule(tmp_path):
    path = tmp_path / "neg.fw"
    path.write_text(mixed_policy(4, 0).replace(
        "    drop from any to any log",
        "    accept from any, !big-lan to n-dmz service tcp/22 in lan\n"
        "    drop from any to any log"), encoding="utf-8")
    for _, member, family, flat in rulesets(path):
        if family != 4:
            continue
        with_sets, sets = use_ipsets(flat)
        returns = [r for _, _, r in with_sets.rules() if r.target == "RETURN"]
        assert len(returns) == 1 and returns[0].match.source.set_name == "fwc4-big-lan"
        assert_same_meaning(flat, min_rules=1, split_min=1, device_names=_devices(member))


def test_unknown_devices_and_later_packets_take_the_flat_path():
    (_, member, _, flat), *_ = rulesets(REPO / "policies" / "edge.fw")
    arranged = arrange(flat, _devices(member), min_rules=1, split_min=1)
    evaluator, reference = Evaluator(arranged), Evaluator(flat)
    for packet in (Packet(4, 0xC000020A, 0xC6336401, 6, 80, None, "fwcx9", "eth1"),
                   Packet(4, 0xC000020A, 0xC6336401, 6, 80, None, "eth0", "fwcx9"),
                   Packet(4, 0xC000020A, 0xC6336401, 6, 80, None, "eth0", "eth1",
                          ctstate="ESTABLISHED")):
        assert evaluator.decide(packet).meaning == reference.decide(packet).meaning


# -- random lowered rulesets, straight in the rule model ----------------------------------

def _random_ruleset(seed: int, count: int, wide: bool = False) -> NodeRuleset:
    """FORWARD and INPUT with every kind of rule the arrangement must keep in order:
    devices or not, protocols or not, port lists touching 0 and 65535, LOG before a
    verdict, RETURN in a built-in chain, jumps to a user chain that RETURNs. WIDE: rules
    of several iptables lines too (short address lists on both sides, more ports than
    one multiport line takes), a negated address, rate-limited LOG and `statistic`."""
    from fwc.backend.lower import AddressMatch, Chain, Match, Origin, RateLimit, Table
    from fwc.backend.lower import FilterRule as Rule
    from fwc.model import PortRange
    from fwc.model.vocabulary import Table as TableName
    from fwc.model.vocabulary import Target

    rng = random.Random(seed)
    devices = ["eth0", "eth1", "eth2", None, None]
    protocols = [6, 6, 17, 1, None]
    cidrs = ["198.18.0.0/16", "198.18.1.0/24", "198.18.1.7", "198.19.0.0/17", "198.19.5.5",
             "198.19.128.0/18"]
    origin = Origin("policy", "random")

    def ports() -> tuple[PortRange, ...]:
        out = []
        for _ in range(rng.choice((1, 1, 2, 3))):
            low = rng.choice((0, 1, 22, 80, 443, 1024, 8080, 65535, rng.randrange(65536)))
            out.append(PortRange(low, min(65535, low + rng.choice((0, 0, 1, 100, 70000)))))
        return tuple(sorted(set(out), key=lambda p: (p.low, p.high)))

    def address() -> AddressMatch:
        if rng.random() < 0.5:
            return AddressMatch()
        if wide and rng.random() < 0.6:
            return AddressMatch(tuple(rng.sample(cidrs, rng.choice((2, 3)))))
        return AddressMatch((rng.choice(cidrs),), negated=wide and rng.random() < 0.1)

    def many_ports() -> tuple[PortRange, ...]:  # 16+ multiport slots: two lines
        low = rng.randrange(60000)
        return tuple(PortRange(low + 3 * i, low + 3 * i) for i in range(rng.choice((16, 20))))

    def rule(chain: str) -> list[Rule]:
        protocol = rng.choice(protocols)
        dports = ports() if protocol in (6, 17) and rng.random() < 0.8 else ()
        if wide and dports and rng.random() < 0.2:
            dports = many_ports()
        match = Match(
            source=address(),
            destination=address(),
            in_device=rng.choice(devices),
            out_device=rng.choice(devices) if chain == "FORWARD" else None,
            protocol=protocol,
            dports=dports,
            icmp_type=8 if protocol == 1 and rng.random() < 0.5 else None,
            statistic=(3, 0) if wide and rng.random() < 0.05 else None)
        kind = rng.random()
        if kind < 0.1:
            logged = replace(match, limit=RateLimit("5/second", 10)) if wide else match
            return [Rule(logged, Target.LOG, origin,
                         (("log-prefix", f"r{rng.randrange(99)} "),)),
                    Rule(match, Target.DROP, origin)]
        if kind < 0.15:
            return [Rule(match, Target.RETURN, origin)]
        if kind < 0.25:
            return [Rule(match, "fwc-sub", origin)]
        target = rng.choice((Target.ACCEPT, Target.ACCEPT, Target.DROP, Target.REJECT))
        return [Rule(match, target, origin)]

    forward = [Rule(Match(ctstate=("RELATED", "ESTABLISHED")), Target.ACCEPT, origin)]
    inputs: list[Rule] = [Rule(Match(in_device="lo"), Target.ACCEPT, origin)]
    for _ in range(count):
        forward.extend(rule("FORWARD"))
        inputs.extend(rule("INPUT"))
    sub = (Rule(Match(source=AddressMatch(("198.18.1.7",))), Target.RETURN, origin),
           Rule(Match(), Target.LOG, origin, (("log-prefix", "sub "),)),
           Rule(Match(), Target.ACCEPT, origin))
    table = Table(TableName.FILTER, (Chain("INPUT", Target.DROP, tuple(inputs)),
                                     Chain("FORWARD", Target.DROP, tuple(forward)),
                                     Chain("OUTPUT", Target.ACCEPT, ()),
                                     Chain("fwc-sub", None, sub)))
    return NodeRuleset("random", "fw1", 4, (table,))


@pytest.mark.parametrize("seed", range(6))
def test_random_rulesets_arranged_decide_like_flat(seed):
    flat = _random_ruleset(seed, 60)
    arranged = arrange(flat, {"eth0": "lan", "eth1": "dmz"}, min_rules=1, split_min=2)
    assert arranged != flat
    _assert_decides_like(flat, arranged, seed)


def _assert_decides_like(flat: NodeRuleset, arranged: NodeRuleset, seed: int) -> None:
    reference, evaluator = Evaluator(flat), Evaluator(arranged)
    rng = random.Random(seed)
    packets = corner_packets(flat)
    # and packets that no rule aims at: other devices, other protocols, random ports
    for _ in range(300):
        protocol = rng.choice((6, 17, 1, 47))
        packets.append(Packet(4, 0xC6120000 + rng.randrange(1 << 17),
                              0xC6120000 + rng.randrange(1 << 17), protocol,
                              rng.randrange(65536) if protocol in (6, 17) else None,
                              8 if protocol == 1 else None,
                              rng.choice(("eth0", "eth1", "eth2", "eth7", "lo")),
                              rng.choice(("eth0", "eth1", "eth2", "eth7", None))))
    for packet in packets:
        assert evaluator.decide(packet).meaning == reference.decide(packet).meaning, \
            packet.describe()


def _lines(ruleset: NodeRuleset) -> int:
    return sum(rendered_lines(r.match) for c in ruleset.table("filter").chains  # type: ignore[union-attr]
               for r in c.rules)


def _shared(ruleset: NodeRuleset) -> list[Chain]:
    return [c for c in ruleset.table("filter").chains  # type: ignore[union-attr]
            if re.fullmatch(r"fwc-p\d+-(fwd|in)-\d+|(fwd|in)-_[0-9a-f]{6}-\d+", c.name)]


@pytest.mark.parametrize("seed", range(6))
def test_copied_rules_of_several_lines_are_shared_and_decide_like_flat(seed, monkeypatch):
    """A rule of several iptables lines that the arrangement copies into several chains
    is written once, in a chain of its own, and each copy jumps there (share_expansions):
    fewer lines, every packet decided as by the flat ruleset (LOG, rate limits and
    `statistic` included)."""
    flat = _random_ruleset(seed, 80, wide=True)
    arranged = arrange(flat, {"eth0": "lan", "eth1": "dmz"}, min_rules=1, split_min=2)
    with monkeypatch.context() as patch:  # no chain saves that many lines: every copy in place
        patch.setattr(arrange_module, "SHARE_MIN_SAVING", 10**9)
        copied = arrange(flat, {"eth0": "lan", "eth1": "dmz"}, min_rules=1, split_min=2)
    shared = _shared(arranged)
    assert shared and not _shared(copied)
    assert _lines(arranged) < _lines(copied)
    names = {c.name for c in arranged.table("filter").chains}  # type: ignore[union-attr]
    jumps = [r for c in arranged.table("filter").chains for r in c.rules  # type: ignore[union-attr]
             if r.target in {c.name for c in shared}]
    for chain in shared:
        whole, = chain.rules
        assert rendered_lines(whole.match) > 1 and whole.target in names | set(Target)
        into = [r for r in jumps if r.target == chain.name]
        assert len(into) > 1 and all(r is into[0] for r in into)  # one jump object
        jump = into[0]
        assert rendered_lines(jump.match) == 1
        # the jump tests part of the rule, never a stateful match
        assert jump.match.limit is None and jump.match.statistic is None
        for field in ("in_device", "out_device", "protocol"):
            assert getattr(jump.match, field) == getattr(whole.match, field)
    _assert_decides_like(flat, arranged, seed)
    again = arrange(flat, {"eth0": "lan", "eth1": "dmz"}, min_rules=1, split_min=2)
    assert again == arranged  # deterministic, names included
    assert [c.name for c in again.table("filter").chains] == \
        [c.name for c in arranged.table("filter").chains]  # type: ignore[union-attr]


def test_rules_of_one_line_and_nftables_port_clipping_share_nothing():
    """Rules of one line each have nothing to share; nor has the nftables flavour
    (clip_ports), where an address list is one set lookup."""
    one_line = _random_ruleset(3, 80)
    assert not _shared(arrange(one_line, {}, min_rules=1, split_min=2))
    wide = _random_ruleset(3, 80, wide=True)
    assert _shared(arrange(wide, {}, min_rules=1, split_min=2))
    assert not _shared(arrange(wide, {}, min_rules=1, split_min=2, clip_ports=True))



def test_nftables_clipping_shares_one_port_list_per_service_and_bucket():
    """clip_ports: the copies, in one port bucket, of rules that name the same port list
    keep the same clipped list (one tuple, not one per rule); a rule whose ports all fall
    in its bucket stays the very rule; every packet gets the flat decision."""
    from fwc.backend.lower import AddressMatch, Match, Origin, Table
    from fwc.backend.lower import FilterRule as Rule
    from fwc.model import PortRange
    from fwc.model.vocabulary import Table as TableName

    origin = Origin("policy", "clip")
    service = (PortRange(22, 22), PortRange(443, 443), PortRange(8000, 9000),
               PortRange(50000, 50010))
    rules = [Rule(Match(source=AddressMatch((f"198.18.{i}.0/24",)), protocol=6,
                        dports=service), Target.ACCEPT, origin) for i in range(30)]
    # one port each, spread over the range (a bucket's bounds, halving cuts, may fall
    # inside a range of the service: that range is clipped to the bucket)
    rules += [Rule(Match(source=AddressMatch((f"198.19.{i}.1",)), protocol=6,
                         dports=(PortRange(2000 * i + 1, 2000 * i + 1),)), Target.DROP, origin)
              for i in range(30)]
    table = Table(TableName.FILTER, (Chain("FORWARD", Target.DROP, tuple(rules)),))
    flat = NodeRuleset("clip", "fw1", 4, (table,))
    arranged = arrange(flat, {}, min_rules=1, split_min=2, clip_ports=True)
    buckets = singles = 0
    for chain in arranged.table("filter").chains:  # type: ignore[union-attr]
        if chain.name == "FORWARD":
            continue
        mine = [r for r in chain.rules if r.target is Target.ACCEPT and r.match.dports]
        # a rule of one port is never clipped: the bucket holds the very rule
        single = [r for r in chain.rules if r.target is Target.DROP and r.match.dports]
        assert all(any(r is o for o in rules) for r in single), chain.name
        singles += len(single)
        if not mine:
            continue
        buckets += 1
        assert len(mine) == 30, chain.name
        ports = mine[0].match.dports
        assert all(r.match.dports is ports for r in mine), chain.name  # one list
        # clipped to the bucket: fewer ranges than the service, each inside one of its
        assert ports and len(ports) < len(service), chain.name
        assert all(any(s.low <= p.low and p.high <= s.high for s in service)
                   for p in ports), chain.name
    assert buckets >= 2  # the service spans several buckets: its rules were clipped
    assert singles == 30
    _assert_decides_like(flat, arranged, 7)


def test_a_policy_without_devices_is_arranged_too(tmp_path):
    """Rules without `in`/`out` are not the chain's head (issue 12): the policy is split
    by protocol and ports, and every packet gets the flat ruleset's decision."""
    text = re.sub(r" (in|out) (lan|dmz|uplink)\b", "", mixed_policy(4, 200))
    path = tmp_path / "nodev.fw"
    path.write_text(text, encoding="utf-8")
    for _, member, family, flat in rulesets(path):
        if family != 4:
            continue
        forward = flat.table("filter").chain("FORWARD")  # type: ignore[union-attr]
        assert all(r.match.in_device is None for r in forward.rules)  # type: ignore[union-attr]
        count, _, _ = assert_same_meaning(flat, min_rules=64, split_min=32,
                                          device_names=_devices(member))
        assert count > 1000
        with_sets, sets = use_ipsets(flat)
        arranged = arrange(with_sets, _devices(member))
        contents = set_contents(sets)
        packets = corner_packets(flat)
        plain = sum(Evaluator(with_sets, contents).decide(p).traversed for p in packets)
        tree = sum(Evaluator(arranged, contents).decide(p).traversed for p in packets)
        assert tree < plain / 2, (tree / len(packets), plain / len(packets))


def test_a_member_with_an_equal_chain_reuses_the_previous_arrangement(tmp_path):
    """optimise(memo=cluster.memo): the second member's FORWARD equals the first's (its
    rules are the same objects, issue 12), so it gets the same chains, not a copy; with
    other device names, or a changed chain, it is arranged anew, and every result equals
    arranging without the memo."""
    path = tmp_path / "mix.fw"
    path.write_text(mixed_policy(2, 300), encoding="utf-8")
    by_member = {(m.name, f): (c, m, flat) for c, m, f, flat in rulesets(path)}
    cluster, fw1, flat1 = by_member[("fw1", 4)]
    _, fw2, flat2 = by_member[("fw2", 4)]
    forward1 = flat1.table("filter").chain("FORWARD")  # type: ignore[union-attr]
    forward2 = flat2.table("filter").chain("FORWARD")  # type: ignore[union-attr]
    assert forward1 == forward2
    memo = cluster.memo
    first = optimise(fw1, {4: flat1}, memo=memo)[0][4]
    second = optimise(fw2, {4: flat2}, memo=memo)[0][4]
    assert first == optimise(fw1, {4: flat1})[0][4]
    assert second == optimise(fw2, {4: flat2})[0][4]
    ours = {c.name: c for c in first.table("filter").chains}  # type: ignore[union-attr]
    theirs = {c.name: c for c in second.table("filter").chains}  # type: ignore[union-attr]
    arranged = [name for name in ours if name.startswith("fwd-")]
    assert len(arranged) > 3
    assert all(theirs[name] is ours[name] for name in arranged)
    # other device names: other chain names, arranged again, as without the memo
    with_sets, _ = use_ipsets(flat2)
    renamed = {"eth0": "inside", "eth1": "dmz", "eth2": "uplink", "eth3": "sync"}
    again = arrange(with_sets, renamed, memo=memo)
    assert again == arrange(with_sets, renamed)
    assert any(c.name.startswith("fwd-inside") for c in again.table("filter").chains)  # type: ignore[union-attr]
    # a changed chain (one rule less) is not taken for the previous one
    table = flat2.table("filter")
    assert table is not None
    shorter = flat2.with_table(replace(table, chains=tuple(
        replace(c, rules=c.rules[:-1]) if c.name == "FORWARD" else c for c in table.chains)))
    with_sets, _ = use_ipsets(shorter)
    assert arrange(with_sets, _devices(fw2), memo=memo) == arrange(with_sets, _devices(fw2))
    # a table that already has a chain of one of those names: arranged anew (renamed)
    clash = flat2.with_table(replace(table, chains=(*table.chains, Chain(arranged[0], None))))
    with_sets, _ = use_ipsets(clash)
    optimise(fw1, {4: flat1}, memo=memo)
    got = arrange(with_sets, _devices(fw2), memo=memo)
    assert got == arrange(with_sets, _devices(fw2))
    renamed_chain = arranged[0][:CHAIN_NAME_MAX - 2] + "-2"  # the next free number
    assert any(c.name == renamed_chain for c in got.table("filter").chains)  # type: ignore[union-attr]


def test_shared_chains_load_into_the_kernel_and_list_back(needs_root):
    """The arranged wide ruleset, its shared chains included, rendered as iptables-restore
    input: `--test`, then loaded in a throwaway namespace; iptables-save lists every
    chain with as many rules, jumping to the same targets in the same order (the kernel
    rewrites some matches, e.g. drops a port range 0:65535)."""
    from test_ipsets_netns import _by_chain
    from test_realtools import in_ns, namespace

    from fwc.backend.render.iptables import render as render_iptables

    arranged = arrange(_random_ruleset(1, 80, wide=True), {"eth0": "lan", "eth1": "dmz"},
                       min_rules=1, split_min=2)
    assert _shared(arranged)
    text = render_iptables(arranged)
    with namespace() as ns:
        tested = in_ns(ns, "iptables-restore", "--test", stdin=text)
        assert tested.returncode == 0, tested.stderr
        loaded = in_ns(ns, "iptables-restore", stdin=text)
        assert loaded.returncode == 0, loaded.stderr
        saved = in_ns(ns, "iptables-save", "-t", "filter").stdout

    def targets(listing: str) -> dict[str, list[str]]:
        return {chain: [line[line.index("-j") + 1] for line in lines]
                for chain, lines in _by_chain(listing).items()}

    assert targets(text) == targets(saved)
    assert any(target == chain.name for chain in _shared(arranged)
               for jumps in targets(saved).values() for target in jumps)


def interfaces_whose_chain_names_meet(rules: int = 40) -> str:
    """Interfaces `lan`, `dmx` and `lan-dmx`: the chain of FORWARD's in-lan/out-dmx split
    and the chain of in-lan-dmx are both `fwd-lan-dmx`."""
    lines = [f"    accept from 192.0.2.{i + 10} to 198.18.1.{i + 10} service tcp/{1000 + i} "
             "in lan out dmx" for i in range(rules)]
    lines += [f"    accept from 198.18.2.{i + 10} to 192.0.2.{i + 10} service tcp/{2000 + i} "
              "in lan-dmx out lan" for i in range(rules)]
    members = "".join(f"""
    member fw{n} priority {200 - 50 * n} {{
        lan eth0 192.0.2.{n}/24
        dmx eth1 198.18.1.{n}/24
        lan-dmx eth2 198.18.2.{n}/24
        sync eth3 203.0.113.{n}/24
    }}""" for n in (1, 2))
    return f"""cluster edge {{
    vrrp {{ password "s3cret"  advert 1s  vrid 51 }}
    sync {{ link sync }}
    interface lan     vip 192.0.2.254/24
    interface dmx     vip 198.18.1.254/24  vrid 52
    interface lan-dmx vip 198.18.2.254/24  vrid 53
    interface sync{members}
}}
policy edge {{
""" + "\n".join(lines) + "\n}\n"


@pytest.mark.parametrize("backend", ["iptables", "nftables"])
def test_interface_names_that_make_one_chain_name_twice_compile(tmp_path, backend):
    """A chain name taken already was changed by replacing its last character with 'x',
    which never ends for a name that ends in 'x': `fwc compile` hung for ever."""
    path = tmp_path / "p.fw"
    path.write_text(interfaces_whose_chain_names_meet(), encoding="utf-8")
    result = run_fwc("compile", str(path), "-o", str(tmp_path / "out"), "--backend", backend,
                     "--no-cache", timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    if backend == "iptables":
        rules = (tmp_path / "out" / "edge" / "fw1" / "iptables.rules").read_text()
        chains = re.findall(r"^:(\S+)", rules, re.M)
        assert len(chains) == len(set(chains)) and "fwd-lan-dmx" in chains
    for _, member, _, flat in rulesets(path):
        assert_same_meaning(flat, min_rules=8, split_min=4, device_names=_devices(member))


# -- an in-place edit changes the arranged output only locally (issue 12) ----------------

def _policy_like_ruleset(seed: int, count: int) -> NodeRuleset:
    """FORWARD as a policy lowers it: most rules name both devices and one service of a
    pool (tcp or udp, a port or a short range), some name neither device or protocol,
    some have address lists (rules of several lines: shared chains), a few log; each rule
    with its own source line ("p.fw:LINE"), as a compiled policy's rules have them."""
    from fwc.backend.lower import AddressMatch, Match, Origin, Table
    from fwc.backend.lower import FilterRule as Rule
    from fwc.model import PortRange
    from fwc.model.vocabulary import Table as TableName

    rng = random.Random(seed)
    services = [(rng.choice((6, 6, 17)), PortRange(low, low + rng.choice((0, 0, 0, 9))))
                for low in rng.sample(range(1, 65000), 40)]
    cidrs = [f"198.18.{i}.0/24" for i in range(12)] + [f"198.19.{i}.7" for i in range(12)]
    devices = ["eth0", "eth1", "eth2"]
    forward = [Rule(Match(ctstate=("RELATED", "ESTABLISHED")), Target.ACCEPT,
                    Origin("auto", "fwc auto: established"))]
    for line in range(1, count + 1):
        protocol, ports = rng.choice(services)
        wide = rng.random() < 0.15
        match = Match(
            source=AddressMatch(tuple(rng.sample(cidrs, 3 if wide else 1))),
            destination=AddressMatch(tuple(rng.sample(cidrs, 2 if wide else 1))),
            in_device=rng.choice(devices) if rng.random() < 0.9 else None,
            out_device=rng.choice(devices) if rng.random() < 0.9 else None,
            protocol=None if rng.random() < 0.05 else protocol,
            dports=(ports,))
        if match.protocol is None:
            match = replace(match, dports=())
        origin = Origin("policy", f"p.fw:{line}")
        if rng.random() < 0.05:
            forward.append(Rule(match, Target.LOG, origin, (("log-prefix", f"r{line} "),)))
        forward.append(Rule(match, rng.choice((Target.ACCEPT, Target.ACCEPT, Target.DROP)),
                            origin))
    table = Table(TableName.FILTER, (Chain("FORWARD", Target.DROP, tuple(forward)),))
    return NodeRuleset("random", "fw1", 4, (table,))


def _edited(flat: NodeRuleset, rng: random.Random) -> tuple[NodeRuleset, str]:
    """FLAT with one FORWARD policy rule changed in place (its ports, source, input device
    or verdict taken from another rule, or swapped), and that rule's label."""
    table = flat.table("filter")
    assert table is not None
    forward = table.chain("FORWARD")
    assert forward is not None
    rules = list(forward.rules)
    while True:
        where, donor = rng.randrange(1, len(rules)), rules[rng.randrange(1, len(rules))]
        mine = rules[where]
        if mine.target is Target.LOG or rules[where - 1].target is Target.LOG:
            continue  # (a logged rule is two rules of one line: edit neither)
        kind = rng.choice(("ports", "source", "device", "verdict"))
        if kind == "ports" and mine.match.protocol in (6, 17) and donor.match.dports \
                and donor.match.protocol == mine.match.protocol:
            changed = replace(mine, match=replace(mine.match, dports=donor.match.dports))
        elif kind == "source":
            changed = replace(mine, match=replace(mine.match, source=donor.match.source))
        elif kind == "device":
            changed = replace(mine, match=replace(mine.match, in_device=donor.match.in_device))
        elif kind == "verdict" and mine.target in (Target.ACCEPT, Target.DROP):
            changed = replace(mine, target=Target.DROP if mine.target is Target.ACCEPT
                              else Target.ACCEPT)
        else:
            continue
        if changed != mine:
            break
    rules[where] = changed
    chains = tuple(replace(c, rules=tuple(rules)) if c.name == "FORWARD" else c
                   for c in table.chains)
    return flat.with_table(replace(table, chains=chains)), mine.origin.label


def _other_lines(text: str, label: str) -> list[str]:
    """The lines of rendered iptables-restore TEXT that are not rule LABEL's own: not its
    lines nor the jumps to its shared chains (their comments name it), nor the
    declarations of its shared chains (the chains that hold its lines only)."""
    own = re.compile(rf'{re.escape(label)}[",]')
    lines = text.splitlines()
    filled: dict[str, bool] = {}  # chain: every line of it is the rule's
    for line in lines:
        if line.startswith("-A "):
            chain = line.split(" ", 2)[1]
            filled[chain] = filled.get(chain, True) and own.search(line) is not None
    return [x for x in lines if not own.search(x)
            and not (x.startswith(":") and filled.get(x[1:].split(" ", 1)[0], False))]


def _local_share(edits: int, seed: int) -> tuple[int, int, int]:
    """How many of EDITS random in-place edits of random rulesets change the arranged
    iptables output only in the edited rule's own lines, and how many other lines they
    change in all (lines out and in, as multisets); every eighth edited ruleset,
    arranged, decides as its flat rules."""
    from fwc.backend.render.iptables import render as render_iptables

    rng = random.Random(seed)
    local = changed = 0
    names = {"eth0": "lan", "eth1": "dmz"}
    for attempt in range(edits):
        flat = _policy_like_ruleset(seed * 1000 + attempt, 400)
        before = render_iptables(arrange(flat, names, min_rules=1, split_min=16))
        edited, label = _edited(flat, rng)
        arranged = arrange(edited, names, min_rules=1, split_min=16)
        if attempt % 8 == 0:  # (the evaluator is the slow part: a sample of the edits)
            _assert_decides_like(edited, arranged, attempt)
        old, new = _other_lines(before, label), _other_lines(render_iptables(arranged), label)
        local += old == new
        changed += sum(((Counter(old) - Counter(new)) + (Counter(new) - Counter(old))).values())
    return local, changed, edits


def test_an_in_place_edit_changes_the_arranged_output_only_locally():
    """Users keep output/ in git and review its diff (issue 12): a one-rule edit must not
    rewrite lines of other rules. The port cuts (halving_cuts) stay where they are unless
    the edit makes a half cross its bound, and the chains are named by content (a bucket by
    its lowest port, a shared chain by its rule's line): most random in-place edits change
    nothing but the edited rule's own lines. Equal-count quantile cuts, as before, moved
    a cut (and renamed the buckets and shared chains after it) in most of them."""
    local, changed, edits = _local_share(40, 26)
    print(f"fully local edits: {local}/{edits}, other lines changed: {changed}")
    # 35/40 and 322 lines (as before, quantile cuts and numbered chains: 31/40 and 525);
    # the others: a half crossed its bound, or a device edit moved the rule between nodes
    assert local >= 0.8 * edits, (local, edits)
    assert changed <= 10 * edits, changed


def test_chain_names_from_content_that_meet_stay_unique_and_deterministic():
    """A bucket is named by its lowest port (`fwd-lan-dmz-tcp-1024`): an interface called
    `dmz-tcp-1024` makes the same name for its device chain. And names past CHAIN_NAME_MAX
    are cut and hashed: long interface names make buckets whose names differ only after
    the cut. Every name stays unique (the next free number, or the hash), the same in
    every run, and every packet is decided as by the flat rules."""
    from fwc.backend.lower import FilterRule as Rule
    from fwc.backend.lower import Match, Origin, Table
    from fwc.model import PortRange
    from fwc.model.vocabulary import Table as TableName

    def rule(line: int, out: str, port: int) -> Rule:
        return Rule(Match(in_device="eth0", out_device=out, protocol=6,
                          dports=(PortRange(port, port),)), Target.ACCEPT,
                    Origin("policy", f"p.fw:{line}"))

    rules = [rule(i, "eth1", 16 * i + 1) for i in range(1, 200)]
    rules += [rule(300 + i, "eth2", 5000 + i) for i in range(40)]
    flat = NodeRuleset("meet", "fw1", 4, (Table(TableName.FILTER, (
        Chain("FORWARD", Target.DROP, tuple(rules)),)),))
    for names, meeting in (({"eth0": "lan", "eth1": "dmz", "eth2": "dmz-tcp-1024"},
                            "fwd-lan-dmz-tcp-1024"),
                           ({"eth0": "a" * 12, "eth1": "b" * 12, "eth2": "c" * 12}, None)):
        arranged = arrange(flat, names, min_rules=1, split_min=8)
        chains = [c.name for c in arranged.table("filter").chains]  # type: ignore[union-attr]
        assert len(chains) == len(set(chains)), chains
        assert all(len(name) <= CHAIN_NAME_MAX for name in chains)
        if meeting is not None:  # both wanted it: the bucket, made first, has it
            assert meeting in chains and f"{meeting}-2" in chains, chains
        else:  # every bucket of a long path: cut and hashed, no two alike
            hashed = [name for name in chains if re.search(r"-[0-9a-f]{6}$", name)]
            assert len(hashed) > 3, chains
        assert arrange(flat, names, min_rules=1, split_min=8) == arranged
        _assert_decides_like(flat, arranged, 12)


def test_the_halving_cut_rule_bounds_every_bucket_it_can_split():
    """halving_cuts (the arranger's port cut rule): every bucket holds at most the bound
    of lows (the power of two nearest total / buckets) unless all its lows are one port,
    a cut is a midpoint of a halving, and a change of one low that makes no half cross
    the bound moves no cut; quantile_cuts, the former rule, moves one."""
    import math

    from fwc.backend.arrange import PORT_MAX, halving_cuts, quantile_cuts

    times = Counter({22: 40, 80: 30, 443: 30, **{port: 1 for port in range(1000, 1400, 4)}})
    cuts = halving_cuts(times, 8)
    bounds = [0, *cuts, PORT_MAX + 1]
    most = 2 ** round(math.log2(sum(times.values()) / 8))
    assert cuts and all(0 < c <= PORT_MAX for c in cuts)
    for low, high in zip(bounds, bounds[1:], strict=False):
        inside = [n for port, n in times.items() if low <= port < high]
        assert sum(inside) <= most or len(inside) == 1  # (one port cannot be cut)
        width = high - low  # a halving's part: a power of two wide, aligned to its width
        assert width & (width - 1) == 0 and low % width == 0, (low, high)
    moved = Counter(times)
    moved[1004] -= 1
    moved[1008] += 1
    assert halving_cuts(moved, 8) == cuts
    arrived = Counter(times)
    arrived[1002] += 1  # a rule more, among the others' lows: each later quantile shifts
    assert halving_cuts(arrived, 8) == cuts
    assert quantile_cuts(arrived, 8) != quantile_cuts(times, 8)


def test_shared_chains_carry_their_rule_number_and_fwc_diff_follows_an_insertion(
        tmp_path, monkeypatch):
    """A shared chain is named by its policy rule's number (`fwc-p12-fwd-0`), as the rule's
    own chains are: an edit of another rule in place renames none, and a rule inserted
    above renumbers them as `fwc diff` reads the rule's own chains (fwc.diffing.renumber),
    so its review shows the inserted rule's lines and nothing else."""
    from fwc.backend.render.iptables import render as render_iptables
    from fwc.diffing.renumber import Renumbering, comparable

    pairs = "\n".join(f"    accept from h-lan-{i}, h-lan-{i + 1} to h-dmz-{i}, h-dmz-{i + 1} "
                      f"service tcp/{2000 + i}" for i in range(4))
    text = mixed_policy(2, 300).replace("    drop from any to any log\n",
                                        pairs + "\n    drop from any to any log\n")
    inserted = text.replace("policy mix {\n", "policy mix {\n    accept from h-lan-0 to "
                            "h-dmz-0 service tcp/9999 in lan out dmz\n")
    outputs, models = {}, {}
    for name, body in (("old", text), ("new", inserted)):
        (tmp_path / name).mkdir()
        monkeypatch.chdir(tmp_path / name)  # (one name: the comments name the file)
        Path("mix.fw").write_text(body, encoding="utf-8")
        cluster, member, _, flat = rulesets(Path("mix.fw"))[0]  # fw1, IPv4, as compiled
        outputs[name] = render_iptables(optimise(member, {4: flat})[0][4])
        models[name] = cluster
    shared = set(re.findall(r"^:(fwc-p\d+-fwd-\d+) ", outputs["old"], re.M))
    assert shared, "no shared chain: the test lost its subject"
    renumbering = Renumbering.between(models["old"], models["new"])
    assert renumbering is not None
    old = comparable(outputs["old"], False, renumbering).splitlines()
    new = comparable(outputs["new"], False).splitlines()
    assert {name for name in re.findall(r"^:(fwc-p\d+-fwd-\d+) ", "\n".join(old), re.M)} == \
        set(re.findall(r"^:(fwc-p\d+-fwd-\d+) ", outputs["new"], re.M))
    changed = set(old) ^ set(new)
    assert changed and all("9999" in line for line in changed), sorted(changed)[:5]
