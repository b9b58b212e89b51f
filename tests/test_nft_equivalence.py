"""iptables output == nftables output, packet by packet (issue 13: equivalence proved).

For every member of every example policy, and of random policies (hypothesis,
bounded, derandomised), both compiled outputs are read back into the lowered
rule model (iptables-restore text by the test reader of
tests/test_analysis_vs_compile.py, nftables.nft by `fwc.analysis.nftread`) and
walked with the one packet evaluator (`fwc.analysis.evaluate.Evaluator`) for
the corner packets of every rule: of the flat lowered ruleset (every policy
rule) and of the nft ruleset as read (every verdict-map entry and every element
of a concatenated set). Each packet must get the same filter verdict with the
same options and LOG/CONNMARK effects, the same DNAT in PREROUTING and the same
SNAT/MASQUERADE in POSTROUTING. A difference fails with the packet.

The random policies are rendered for nft with low thresholds, so that small
policies get verdict maps (arranged chains) and concatenated sets; a sample of
them is loaded with `nft -c -f` inside a fresh network namespace.
"""

from __future__ import annotations

import itertools
import re
import shutil
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import EXAMPLE_NAMES, Examples, cannot_run, skip_or_fail_without_root
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_analysis_vs_compile import parse_rules
from test_arrange import CLUSTER, mixed_policy
from test_realtools import in_ns, namespace

from fwc.analysis.evaluate import Decision, Evaluator, Packet, corner_packets
from fwc.analysis.nftread import NftRules, evaluations, read
from fwc.backend.arrange import arrange
from fwc.backend.ipsets import use_ipsets
from fwc.backend.lower import NodeRuleset, lower
from fwc.backend.lower.ruleset import Table as LoweredTable
from fwc.backend.output import compile_policy
from fwc.backend.render import nftables, nftnames, nftplan
from fwc.backend.render.nftables import NftUnsupported
from fwc.checks import capability
from fwc.model import Cluster, Member
from fwc.model.vocabulary import Backend
from fwc.model.vocabulary import Table as TableName
from fwc.pipeline import analyse


def _normal(decision: Decision, ordered: bool = True) -> tuple[object, ...]:
    """A decision's meaning with option values compared as numbers where they are;
    `ordered=False` compares the effects as a multiset (the raw table: nft runs the
    notrack rules in a chain of their own before the helper rules, and the CT target
    never ends a packet's walk)."""

    def options(items: tuple[tuple[str, str], ...]) -> tuple[tuple[str, object], ...]:
        out: list[tuple[str, object]] = []
        for key, value in items:
            if key == "set-xmark":
                number, _, mask = value.partition("/")
                out.append((key, (int(number, 0), int(mask or "0xffffffff", 0))))
            elif key not in ("log-level",):
                out.append((key, value))
        return tuple(out)

    effects = [(str(t), options(o)) for t, o in decision.effects]
    return (str(decision.verdict), options(decision.options),
            tuple(effects if ordered else sorted(effects, key=repr)))


def ipset_contents(text: str) -> dict[str, tuple[str, ...]]:
    """ipsets.rules -> set name -> its blocks (filled as NAME.new, then swapped in)."""
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        words = line.split()
        if len(words) >= 3 and words[0] == "add":
            out.setdefault(words[1].removesuffix(".new"), []).append(words[2])
    return {name: tuple(blocks) for name, blocks in out.items()}


def compare(iptables: dict[int, NodeRuleset], nft: NftRules, flat: dict[int, NodeRuleset],
            where: str, ipsets: dict[str, tuple[str, ...]] | None = None) -> int:
    """Every corner packet decided alike by both outputs; returns how many were checked.

    Filter verdicts, DNAT in nat PREROUTING, SNAT in nat POSTROUTING, the raw table's
    CT effects (notrack, helpers) in PREROUTING and OUTPUT and the mangle table's
    (TCPMSS) in FORWARD. The corner packets are those of every table's rules."""
    checked = 0
    hooks = {TableName.NAT: ("PREROUTING", "POSTROUTING"),
             TableName.RAW: ("PREROUTING", "OUTPUT"), TableName.MANGLE: ("FORWARD",)}
    for family, ipt in iptables.items():
        packets: dict[Packet, None] = {}
        for table in (TableName.FILTER, *hooks):
            packets.update(dict.fromkeys(corner_packets(flat[family], table_name=table)))
            packets.update(dict.fromkeys(corner_packets(nft.rulesets[family], nft.sets,
                                                        table_name=table)))
        pairs = [(Evaluator(ipt, ipsets, TableName.FILTER), nft.evaluator(family), None,
                  TableName.FILTER)]
        for table, chains in hooks.items():
            if ipt.table(table) is not None or nft.rulesets[family].table(table) is not None:
                pairs += [(Evaluator(ipt, ipsets, table), nft.evaluator(family, table), chain,
                           table) for chain in chains]
        for packet in packets:
            for ipt_eval, nft_eval, chain, table in pairs:
                if chain == "POSTROUTING" and packet.out_device is None:
                    continue
                if chain == "PREROUTING" and packet.in_device is None:
                    continue
                if chain == "OUTPUT" and packet.in_device is not None:
                    continue
                if chain == "FORWARD" and packet.hook != "FORWARD":
                    continue
                ordered = table is not TableName.RAW
                want = _normal(ipt_eval.decide(packet, chain), ordered)
                got = _normal(nft_eval.decide(packet, chain), ordered)
                assert got == want, (f"{where} IPv{family} {table} {chain or 'filter'}: "
                                     f"{packet.describe()}: iptables {want}, nftables {got}")
                checked += 1
    return checked


def _iptables_rulesets(files: dict[str, str], member: str, families: set[int]) \
        -> dict[int, NodeRuleset]:
    out = {4: parse_rules(files[f"{member}/iptables.rules"], 4)}
    if 6 in families:
        out[6] = parse_rules(files[f"{member}/ip6tables.rules"], 6)
    return out


def _nft_file(target: Path, text: str) -> Path:
    """TEXT written to TARGET for the real nft in a namespace (fails in CI without it)."""
    if shutil.which("nft") is None or not Path("/proc/self/ns/net").exists():
        cannot_run("nft is missing (tests/run.sh installs the nftables package)")
    skip_or_fail_without_root()
    target.write_text(text)
    return target


def _flat(cluster: Cluster, member: Member) -> dict[int, NodeRuleset]:
    return {f: lower(cluster, member, f) for f in (4, 6)}


@pytest.mark.parametrize("name", EXAMPLE_NAMES)
def test_example_outputs_decide_alike(examples: Examples, name: str):
    example = examples[name]
    policy = example.policy
    # every example is written by both backends (busy.fw too: limits, connlimit,
    # syn-limit, notrack, MSS clamping and DNAT load sharing)
    assert capability.problems(policy, Backend.NFTABLES) == []
    nft_outputs = compile_policy(policy, backend=Backend.NFTABLES)
    ipt_outputs = compile_policy(policy, backend=Backend.IPTABLES)
    checked = 0
    for cluster, ipt_out, nft_out in zip(policy.clusters, ipt_outputs, nft_outputs,
                                         strict=True):
        ipt_files = {f.path: f.content.decode() for f in ipt_out.files}
        nft_files = {f.path: f.content.decode() for f in nft_out.files}
        for member in cluster.members:
            nft = read(nft_files[f"{member.name}/nftables.nft"])
            # both families: every member gets both (IPv4-only clusters: IPv6 dropped)
            checked += compare(_iptables_rulesets(ipt_files, member.name, {4, 6}),
                               nft, _flat(cluster, member), f"{name} {member.name}",
                               ipset_contents(ipt_files.get(f"{member.name}/ipsets.rules", "")))
    assert checked > 500


def _arranged_for_nft(cluster: Cluster, member: Member,
                      copies_max_share: int | None = None) -> str:
    """nftables.nft with thresholds low enough that a small policy gets maps and sets
    (COPIES_MAX_SHARE: arrange's bound on device copies, 0 for none)."""
    names = {link.device: link.interface for link in member.links}
    rulesets, sets = [], []
    for family in sorted(cluster.families):
        with_sets, made = use_ipsets(lower(cluster, member, family))
        sets.extend(made)
        rulesets.append(arrange(with_sets, names, min_rules=6, split_min=4, clip_ports=True,
                                copies_max_share=copies_max_share))
    return nftables.render(rulesets, "random policy", tuple(sets), min_concat=2)


def _random_members(tmp_path: Path, seed: int, rules: int) \
        -> list[tuple[Cluster, Member, dict[str, str]]]:
    path = tmp_path / f"mix{seed}.fw"
    path.write_text(mixed_policy(seed, rules))
    analysis = analyse(path, run_checks=False)
    assert analysis.policy is not None, analysis.diagnostics
    out = []
    for cluster, output in zip(analysis.policy.clusters,
                               compile_policy(analysis.policy, backend=Backend.IPTABLES),
                               strict=True):
        files = {f.path: f.content.decode() for f in output.files}
        out.extend((cluster, member, files) for member in cluster.members)
    return out


SEEDS = settings(max_examples=8, deadline=None, derandomize=True, database=None,
                 suppress_health_check=[HealthCheck.function_scoped_fixture,
                                        HealthCheck.too_slow])


@SEEDS
@given(seed=st.integers(0, 10_000), rules=st.integers(8, 40))
def test_random_policy_outputs_decide_alike(tmp_path: Path, seed: int, rules: int):
    constructs = {"vmap": 0, "concat": 0}
    for cluster, member, files in _random_members(tmp_path, seed, rules):
        # with the default bound on device copies, and split by device whatever it copies
        for copies_max_share in (None, 0):
            text = _arranged_for_nft(cluster, member, copies_max_share)
            constructs["vmap"] += text.count(" vmap @")
            constructs["concat"] += text.count(" . ")
            compare(_iptables_rulesets(files, member.name, cluster.families), read(text),
                    _flat(cluster, member),
                    f"seed {seed} rules {rules} {member.name} copies {copies_max_share}",
                    ipset_contents(files.get(f"{member.name}/ipsets.rules", "")))


def test_random_policies_use_maps_and_concatenated_sets(tmp_path: Path):
    """The random policies above do exercise what they are meant to (not vacuous)."""
    text = _arranged_for_nft(*_random_members(tmp_path, 7, 60)[0][:2], copies_max_share=0)
    assert " vmap @" in text and "iifname vmap" in text
    assert "saddr . " in text or "daddr . " in text
    assert "\t\ttype ifname : verdict" in text
    # rules that differ only in their devices share one set keyed on the devices too
    assert "iifname . " in text or "oifname . " in text
    # rules with different verdicts share one verdict map; a logged rule joins it as a
    # jump to the chain of its log line and verdict
    assert re.search(r"saddr \. [^\n]* vmap @filter-[\w.-]+-v4-rules\d+", text)
    assert re.search(r" : jump filter-[\w-]+\.log\d+-v4,", text)
    assert re.search(r"\tchain filter-[\w-]+\.log\d+-v4 \{\n\t\tlimit rate [^\n]* log prefix ",
                     text)
    # the port-bucket chains of one dispatch look up one shared map
    lookups = re.findall(r" vmap @(filter-[\w.-]+-v4-rules\d+(?:-ranges)?) ", text)
    assert any(lookups.count(name) > 1 for name in lookups)


def test_random_policy_nft_files_load_in_a_namespace(tmp_path: Path):
    """A sample of the random policies' nft files passes `nft -c -f` in a fresh namespace."""
    skip_or_fail_without_root()  # root, and the tools (nft among them)
    with namespace() as ns:
        for seed in (3, 11, 29):
            for cluster, member, _ in _random_members(tmp_path, seed, 50):
                text = _arranged_for_nft(cluster, member)
                target = tmp_path / f"{seed}-{member.name}.nft"
                target.write_text(text)
                got = in_ns(ns, "nft", "-c", "-f", str(target))
                assert got.returncode == 0, f"seed {seed} {member.name}: {got.stderr[:2000]}"


def test_a_lookup_counts_as_one_evaluation(tmp_path: Path):
    """The benchmark's nft cost: a verdict map or set lookup is one rule evaluated."""
    cluster, member, _ = _random_members(tmp_path, 7, 60)[0]
    nft = read(_arranged_for_nft(cluster, member))
    packets = [p for p in corner_packets(lower(cluster, member, 4)) if p.ctstate == "NEW"]
    worst, mean = evaluations(nft, 4, packets)
    flat = Evaluator(lower(cluster, member, 4))
    flat_worst = max(flat.decide(p).traversed for p in packets)
    assert 0 < mean <= worst < flat_worst


def test_reader_refuses_what_it_does_not_know():
    from fwc.analysis.nftread import NftReadError
    for text in ("flush ruleset\n",
                 "table inet fwc {\n\tchain filter-x-v4 {\n\t\tip saddr 1.2.3.4 counter "
                 "queue\n\t}\n}\n"):
        with pytest.raises(NftReadError):
            read(text)


SHARED_MAP = """table inet fwc {
\tmap filter-FORWARD-v4-ports {
\t\ttype inet_service : verdict
\t\tflags interval
\t\telements = {
\t\t\t1-99 : jump filter-low-v4,
\t\t\t100-199 : jump filter-high-v4,
\t\t}
\t}
\tmap rules-v4-1 {
\t\ttype ipv4_addr . inet_service : verdict
\t\tflags interval
\t\tcounter
\t\telements = {
\t\t\t192.0.2.1 . 22 comment "a.fw:1" : accept,
\t\t\t192.0.2.0/24 . 150 comment "a.fw:2" : drop,
\t\t\tOVERLAP
\t\t}
\t}
\tchain filter-FORWARD {
\t\ttype filter hook forward priority 0; policy drop;
\t\tmeta nfproto ipv4 jump filter-FORWARD-v4
\t}
\tchain filter-FORWARD-v4 {
\t\ttcp dport vmap @filter-FORWARD-v4-ports comment "fwc arrange: dispatch"
\t}
\tchain filter-high-v4 {
\t\tip saddr . tcp dport vmap @rules-v4-1 comment "a.fw:2 and 0 more rules (map rules-v4-1)"
\t}
\tchain filter-low-v4 {
\t\tip saddr . tcp dport vmap @rules-v4-1 comment "a.fw:1 and 0 more rules (map rules-v4-1)"
\t}
}
"""


def test_reader_reads_a_map_shared_by_port_buckets_per_chain():
    """Bucket chains of one port dispatch share a map: in each chain the reader keeps the
    elements a packet reaching it can match (its ports are the bucket's), which is what
    the kernel's lookup can find there."""
    rules = read(SHARED_MAP.replace("\t\t\tOVERLAP\n", ""))
    chains = {c.name: c for c in rules.rulesets[4].table(TableName.FILTER).chains}
    low, high = chains["filter-low-v4"].rules, chains["filter-high-v4"].rules
    assert [(r.match.dports[0].low, str(r.target), r.comment) for r in low] == \
        [(22, "ACCEPT", "a.fw:1")]
    assert [(r.match.dports[0].low, str(r.target), r.comment) for r in high] == \
        [(150, "DROP", "a.fw:2")]
    # the envelope comes from the jumps: a chain also reached without a port test
    # keeps every element
    both = SHARED_MAP.replace("\t\tmeta nfproto ipv4 jump filter-FORWARD-v4\n",
                              "\t\tmeta nfproto ipv4 jump filter-FORWARD-v4\n"
                              "\t\tmeta nfproto ipv4 jump filter-low-v4\n")
    chains = {c.name: c for c in read(both.replace("\t\t\tOVERLAP\n", ""))
              .rulesets[4].table(TableName.FILTER).chains}
    assert len(chains["filter-low-v4"].rules) == 2


def test_a_rule_map_keeps_every_rule_s_comment_and_verdict():
    """The lookup rule names its first policy line, each element its own (a comment that
    itself holds the word comment included), and the reader gives each rule back."""
    from fwc.backend.lower.ruleset import AddressMatch, Chain, FilterRule, Match, Origin, Table
    from fwc.model import PortRange
    from fwc.model.vocabulary import BuiltinChain, Target

    verdicts = (Target.ACCEPT, Target.DROP, Target.ACCEPT, Target.DROP)
    rules = tuple(FilterRule(Match(source=AddressMatch((f"192.0.2.{n}/32",)), protocol=6,
                                   dports=(PortRange(22, 22),)), verdict,
                             Origin("policy", f"a comment b.fw:{n}"))
                  for n, verdict in enumerate(verdicts, 1))
    ruleset = NodeRuleset("c", "m", 4, (Table(TableName.FILTER, (
        Chain(BuiltinChain.INPUT, Target.DROP, rules),)),))
    text = nftables.render([ruleset], "comments", min_concat=2)
    assert 'tcp dport vmap @filter-INPUT-v4-rules1 comment "a comment b.fw:1 and more ' \
        'rules"' in text
    assert '192.0.2.4 . 22 comment "a comment b.fw:4" : drop,' in text
    back = read(text).rulesets[4].table(TableName.FILTER).chains
    got = [(r.comment, r.target) for c in back if c.name == "filter-INPUT-v4"
           for r in c.rules]
    assert got == [(r.comment, r.target) for r in rules]


def _split_ruleset() -> NodeRuleset:
    """An INPUT chain of four rules on source . port: two exact keys (a host and one
    port), a prefix and a port range, with both verdicts (the map pair's test case)."""
    from fwc.backend.lower.ruleset import AddressMatch, Chain, FilterRule, Match, Origin, Table
    from fwc.model import PortRange
    from fwc.model.vocabulary import BuiltinChain, Target

    sources = ("192.0.2.1/32", "192.0.2.16/28", "192.0.2.2/32", "192.0.2.3/32")
    ports = (PortRange(22, 22), PortRange(22, 22), PortRange(80, 88), PortRange(443, 443))
    verdicts = (Target.ACCEPT, Target.DROP, Target.ACCEPT, Target.DROP)
    rows = enumerate(zip(sources, ports, verdicts, strict=True), 1)
    rules = tuple(FilterRule(Match(source=AddressMatch((source,)), protocol=6, dports=(port,)),
                             verdict, Origin("policy", f"b.fw:{n}"))
                  for n, (source, port, verdict) in rows)
    return NodeRuleset("c", "m", 4, (Table(TableName.FILTER, (
        Chain(BuiltinChain.INPUT, Target.DROP, rules),)),))


def test_a_rule_map_splits_into_exact_keys_and_intervals_and_reads_back_in_order():
    """Elements of host addresses and single ports go to a map of exact keys (a hash
    table, no `flags interval`), the others (a prefix, a port range) to an interval map;
    the chain looks up both, and the reader gives back every rule with its verdict."""
    from fwc.model.vocabulary import Target

    ruleset = _split_ruleset()
    text = nftables.render([ruleset], "split", min_concat=2)
    exact = text[text.index("\tmap filter-INPUT-v4-rules1 {"):
                 text.index("\tmap filter-INPUT-v4-rules1-ranges {")]
    ranged = text[text.index("\tmap filter-INPUT-v4-rules1-ranges {"):]
    assert "flags interval" not in exact and "flags interval" in ranged
    assert '192.0.2.1 . 22 comment "b.fw:1" : accept,' in exact
    assert '192.0.2.3 . 443 comment "b.fw:4" : drop,' in exact
    assert '192.0.2.16/28 . 22 comment "b.fw:2" : drop,' in ranged
    assert '192.0.2.2/32 . 80-88 comment "b.fw:3" : accept,' in ranged
    assert text.index("vmap @filter-INPUT-v4-rules1 ") < \
        text.index("vmap @filter-INPUT-v4-rules1-ranges ")
    back = read(text).rulesets[4].table(TableName.FILTER).chains
    got = [(r.comment, r.target) for c in back if c.name == "filter-INPUT-v4"
           for r in c.rules]
    # exact-key elements first, then the interval map's: disjoint, so the order is free
    assert got == [("b.fw:1", Target.ACCEPT), ("b.fw:4", Target.DROP),
                   ("b.fw:2", Target.DROP), ("b.fw:3", Target.ACCEPT)]
    assert nftables.render([ruleset], "split", min_concat=2) == text


def test_the_kernel_finds_each_key_in_one_of_the_two_maps(tmp_path):
    """Loaded for real: `nft get element` asks the kernel's lookup of each map for a
    probe key; every key a rule matches is in exactly one of the pair (the hash map
    holds the host and single-port rules, the interval map the prefix and the range),
    with that rule's verdict, and a key no rule matches is in neither."""
    ruleset = _split_ruleset()
    text = nftables.render([ruleset], "split", min_concat=2)
    target = _nft_file(tmp_path / "split.nft", text)
    probes = {"192.0.2.1 . 22": "accept", "192.0.2.20 . 22": "drop",
              "192.0.2.2 . 85": "accept", "192.0.2.3 . 443": "drop",
              "192.0.2.1 . 23": None, "192.0.2.2 . 89": None, "192.0.2.40 . 22": None}
    with namespace() as ns:
        loaded = in_ns(ns, "nft", "-f", str(target))
        assert loaded.returncode == 0, loaded.stderr
        for key, verdict in probes.items():
            found = [got.stdout for name in ("filter-INPUT-v4-rules1",
                                             "filter-INPUT-v4-rules1-ranges")
                     if (got := in_ns(ns, "nft", "get", "element", "inet", "fwc", name,
                                      f"{{ {key} }}")).returncode == 0]
            if verdict is None:
                assert found == [], key
            else:
                assert len(found) == 1 and f": {verdict}" in found[0], (key, found)


def test_logged_rules_join_a_map_each_with_its_own_log_chain():
    """A LOG line and its verdict become a jump to a chain of the two, one chain per
    rule: each keeps its own rate-limit bucket (a `limit` statement of its own), as the
    iptables rules do, and the jumps join the verdict map of their neighbours."""
    from fwc.backend.lower.ruleset import (
        AddressMatch,
        Chain,
        FilterRule,
        Match,
        Origin,
        RateLimit,
        Table,
    )
    from fwc.model import PortRange
    from fwc.model.vocabulary import BuiltinChain, Target

    rules: list[FilterRule] = []
    for n in range(1, 5):
        match = Match(source=AddressMatch((f"192.0.2.{n}/32",)), protocol=6,
                      dports=(PortRange(22, 22),))
        origin = Origin("policy", f"p.fw:{n}")
        if n % 2:
            rules.append(FilterRule(replace(match, limit=RateLimit("5/second", 10)),
                                    Target.LOG, origin, (("log-prefix", "x "),)))
        rules.append(FilterRule(match, Target.DROP, origin))
    ruleset = NodeRuleset("c", "m", 4, (Table(TableName.FILTER, (
        Chain(BuiltinChain.INPUT, Target.DROP, tuple(rules)),)),))
    text = nftables.render([ruleset], "logs", min_concat=2)
    assert text.count(" vmap @filter-INPUT-v4-rules1 ") == 1
    # each log chain is named after the chain of its rule, numbered within that chain
    assert '192.0.2.1 . 22 comment "p.fw:1" : jump filter-INPUT.log1-v4,' in \
        text.replace("/32", "")
    for name in ("filter-INPUT.log1-v4", "filter-INPUT.log2-v4"):
        chain = text.split(f"\tchain {name} {{\n", 1)[1].split("\t}", 1)[0]
        assert chain.startswith("\t\tlimit rate 5/second burst 10 packets counter log prefix ")
    assert "filter-INPUT.log3-v4" not in text
    nft = read(text)
    flat = {4: ruleset}
    compare(flat, nft, flat, "logged rules")
    # without enough neighbours to share a map, the two lines stay as they were
    alone = nftables.render([ruleset], "logs", min_concat=9)
    assert ".log" not in alone and alone.count("log prefix") == 2


def test_reader_refuses_overlapping_verdict_map_elements():
    """The kernel accepts overlapping elements in a map of concatenations, and which one
    a lookup finds is not defined: the reader refuses to guess."""
    from fwc.analysis.nftread import NftReadError
    with pytest.raises(NftReadError, match="overlapping"):
        read(SHARED_MAP.replace("OVERLAP", '192.0.2.0/28 . 20-30 comment "a.fw:3" : drop,'))
    read(SHARED_MAP.replace("OVERLAP", '192.0.2.16/28 . 20-30 comment "a.fw:3" : drop,'))




def test_query_answers_a_nftables_cluster_as_its_iptables_twin(tmp_path, capsys):
    """fwc query no longer refuses nft clusters: the engine's answer is the nft output's
    (the engine agrees with the iptables output, tests/test_analysis_vs_compile.py, and
    the iptables output with the nft output, above)."""
    import json

    from test_nftables import _copy_policies, _with_backend

    from fwc.cli import main

    copy = _copy_policies(tmp_path)
    path = copy / "edge.fw"
    plain = path.read_text()
    answers = []
    for text in (plain, _with_backend(plain)):
        path.write_text(text)
        assert main(["query", str(path), "--from", "any", "--to", "any", "--service", "tcp/22",
                     "--format", "json"]) == 0
        report = json.loads(capsys.readouterr().out)
        answers.append([(m["member"], [(p["verdict"], p["from"], p["to"], p["chain"])
                                       for p in m["pieces"]]) for m in report["members"]])
    assert answers[0] == answers[1] and answers[0][0][1]


def _pool_ruleset(family: int, targets: tuple[str, ...], protocol: int | None = 6) \
        -> NodeRuleset:
    from fwc.backend.lower.ruleset import Chain, Match, NatRule, Origin, Table
    from fwc.model.vocabulary import BuiltinChain, Target
    lines = tuple(NatRule(Match(in_device="eth0", protocol=protocol,
                                statistic=(len(targets) - n, 0) if n < len(targets) - 1
                                else None),
                          Target.DNAT, Origin("auto", "pool"), (("to-destination", target),))
                  for n, target in enumerate(targets))
    chains = (Chain(BuiltinChain.PREROUTING, Target.ACCEPT, lines),)
    return NodeRuleset("c", "m", family, (Table(TableName.NAT, chains),))


POOLS = {4: ("192.0.2.10", "192.0.2.11", "192.0.2.12"),
         6: ("[2001:db8::10]:8080", "[2001:db8::11]:8081")}


def test_dnat_load_sharing_is_one_numgen_map_read_back_as_the_nth_lines(tmp_path):
    """The statistic lines of a pool are one `numgen inc mod N` map (with ports: `addr .
    port`), and the reader gives back exactly those lines; nft loads the file."""
    rulesets = [_pool_ruleset(f, POOLS[f]) for f in (4, 6)]
    text = nftables.render(rulesets, "pools")
    assert "dnat ip to numgen inc mod 3 map { 0 : 192.0.2.10, 1 : 192.0.2.11, " \
        "2 : 192.0.2.12 }" in text
    assert "dnat ip6 addr . port to numgen inc mod 2 map { 0 : 2001:db8::10 . 8080, " \
        "1 : 2001:db8::11 . 8081 }" in text
    back = read(text)
    for ruleset in rulesets:
        want = ruleset.table(TableName.NAT).chains[0].rules
        got = [r for c in back.rulesets[ruleset.family].table(TableName.NAT).chains
               for r in c.rules if r.target == "DNAT"]
        assert [(r.match, r.target_options) for r in got] == \
            [(r.match, r.target_options) for r in want]
    target = _nft_file(tmp_path / "pools.nft", text)
    with namespace() as ns:
        got = in_ns(ns, "nft", "-c", "-f", str(target))
        assert got.returncode == 0, got.stderr


@pytest.mark.parametrize("targets,protocol", [
    (("192.0.2.10-192.0.2.11", "192.0.2.12"), 6),  # a range
    (("192.0.2.10:80", "192.0.2.12"), 6),  # with and without a port
    (("192.0.2.10:80", "192.0.2.12:80"), None),  # ports without a protocol
], ids=["range", "mixed-ports", "no-protocol"])
def test_dnat_load_sharing_nft_cannot_write_is_refused(targets, protocol):
    with pytest.raises(NftUnsupported):
        nftables.render([_pool_ruleset(4, targets, protocol)], "pools")


def test_a_statistic_line_outside_load_sharing_is_refused():
    ruleset = _pool_ruleset(4, POOLS[4])
    chain = ruleset.tables[0].chains[0]
    broken = replace(chain, rules=chain.rules[:2])  # the last line (no statistic) missing
    with pytest.raises(NftUnsupported):
        nftables.render([replace(ruleset, tables=(replace(ruleset.tables[0],
                                                          chains=(broken,)),))], "pools")


def test_sets_named_by_more_rules_are_declared_first():
    """The kernel finds the set a rule names by walking the table's sets in the order
    they were declared: sets named by more rules come first (by the power of two of
    the count: one rule more or fewer moves a set only across a power of two), in
    the order of first use within one power. Each set is named by its addresses."""
    from fwc.backend.ipsets import content_name
    from fwc.backend.lower.ruleset import AddressMatch, Chain, FilterRule, Match, Origin, Table
    from fwc.model.vocabulary import BuiltinChain, Target

    once = AddressMatch(("192.0.2.0/30", "192.0.2.8/30"))
    often = AddressMatch(("198.51.100.0/30", "198.51.100.8/30"))
    thrice = AddressMatch(("203.0.113.0/30", "203.0.113.8/30"))
    sources = (once, often, often, thrice, thrice, thrice)
    rules = tuple(FilterRule(Match(source=source, protocol=6), Target.ACCEPT,
                             Origin("policy", f"c.fw:{n}"))
                  for n, source in enumerate(sources, 1))
    ruleset = NodeRuleset("c", "m", 4, (Table(TableName.FILTER, (
        Chain(BuiltinChain.INPUT, Target.DROP, rules),)),))
    text = nftables.render([ruleset], "order")
    name = {m: content_name("fwc4", m.cidrs) for m in (once, often, thrice)}
    assert f"ip saddr @{name[once]} " in text and text.count(f"ip saddr @{name[often]} ") == 2
    declared = [text.index(f"\tset {name[m]} {{") for m in (often, thrice, once)]
    assert declared == sorted(declared), declared  # 2 and 3 uses: one power, first use
    assert nftables.render([ruleset], "order") == text


def _known_entry_ruleset() -> NodeRuleset:
    """FORWARD dispatches on the input device (eth1 -> fwd-dmz, eth2 -> fwd-up), fwd-dmz
    on the protocol (tcp -> dmz-tcp, udp -> dmz-udp); `both` is reached from dmz-tcp
    (eth1, tcp) and from fwd-up (eth2, udp), so nothing is known there."""
    from fwc.backend.lower.ruleset import AddressMatch, Chain, FilterRule, Match, Origin, Table
    from fwc.model import PortRange
    from fwc.model.vocabulary import BuiltinChain, Target

    def rule(n: int, target: object, **match: object) -> FilterRule:
        return FilterRule(Match(**match), target, Origin("policy", f"k.fw:{n}"))  # type: ignore[arg-type]

    def host(n: int) -> AddressMatch:
        return AddressMatch((f"192.0.2.{n}/32",))

    def port(n: int) -> tuple[PortRange, ...]:
        return (PortRange(n, n),)

    forward = (rule(1, "fwd-dmz", in_device="eth1"), rule(2, "fwd-up", in_device="eth2"))
    dmz = (rule(3, "dmz-tcp", protocol=6), rule(4, "dmz-udp", protocol=17))
    dmz_tcp = (rule(5, Target.ACCEPT, in_device="eth1", protocol=6, dports=port(22),
                    source=host(1)),
               rule(6, Target.DROP, protocol=6, dports=port(23), source=host(2)),
               rule(7, Target.ACCEPT, in_device="eth2", protocol=6, dports=port(24)),
               rule(8, Target.DROP, in_device="eth1", out_device="eth0", protocol=6),
               rule(9, "both", in_device="eth1", protocol=6, dports=port(25)))
    dmz_udp = (rule(10, Target.ACCEPT, in_device="eth1", protocol=17, dports=port(53)),)
    up = (rule(11, "both", protocol=17, dports=port(53)),)
    both = (rule(12, Target.ACCEPT, in_device="eth1", protocol=6, dports=port(25)),
            rule(13, Target.DROP, in_device="eth2", protocol=17, dports=port(53)))
    return NodeRuleset("c", "m", 4, (Table(TableName.FILTER, (
        Chain(BuiltinChain.FORWARD, Target.DROP, forward),
        Chain("fwd-dmz", None, dmz), Chain("dmz-tcp", None, dmz_tcp),
        Chain("dmz-udp", None, dmz_udp), Chain("fwd-up", None, up),
        Chain("both", None, both))),))


def _chain_text(text: str, name: str) -> str:
    return text.split(f"\tchain {name} {{\n", 1)[1].split("\n\t}", 1)[0]


def test_entry_matches_knows_a_chain_s_device_and_protocol_only_when_every_jump_agrees():
    table = _known_entry_ruleset().tables[0]
    known = nftables.entry_matches(table)
    assert known["fwd-dmz"] == ("eth1", None, None)
    assert known["dmz-tcp"] == ("eth1", None, 6)
    assert known["dmz-udp"] == ("eth1", None, 17)
    assert known["fwd-up"] == ("eth2", None, None)
    assert known.get("both", (None, None, None)) == (None, None, None)  # eth1/tcp, eth2/udp
    # a cycle entered from the base chain without a test: unknown where that jump
    # arrives, known below the jump that tests the device
    from fwc.backend.lower.ruleset import Chain, FilterRule, Match, Origin, Table
    from fwc.model.vocabulary import BuiltinChain, Target
    loop = Table(TableName.FILTER, (
        Chain(BuiltinChain.FORWARD, Target.DROP, (FilterRule(Match(), "a", Origin("auto", "z")),)),
        Chain("a", None, (FilterRule(Match(in_device="eth1"), "b", Origin("auto", "x")),)),
        Chain("b", None, (FilterRule(Match(), "a", Origin("auto", "y")),))))
    known = nftables.entry_matches(loop)
    assert known.get("a", (None, None, None)) == (None, None, None)
    assert known["b"] == ("eth1", None, None)
    # a jump to a chain the table does not hold, or to a built-in chain, gives no value
    odd = Table(TableName.FILTER, (
        Chain(BuiltinChain.FORWARD, Target.DROP, (
            FilterRule(Match(in_device="eth1"), "ghost", Origin("auto", "g")),
            FilterRule(Match(in_device="eth1"), "a", Origin("auto", "a")))),
        Chain("a", None, (FilterRule(Match(), "FORWARD", Origin("auto", "f")),))))
    assert nftables.entry_matches(odd) == {"a": ("eth1", None, None)} == \
        _entry_matches_by_definition(odd)


def _entry_matches_by_definition(table: LoweredTable) -> dict[str, tuple[object, ...]]:
    """`entry_matches` as its docstring defines it, written plainly: rounds over the
    chains in table order, each chain's value per field the one value all jumps to it
    agree on (a jump's own test, else its chain's value), until a round changes none."""
    fields = ("in_device", "out_device", "protocol")
    callers: dict[str, list[tuple[str, object]]] = {}
    for chain in table.chains:
        for rule in chain.rules:
            if type(rule.target) is str:
                callers.setdefault(rule.target, []).append((chain.name, rule))
    unknown = (None,) * len(fields)
    known: dict[str, tuple[object, ...]] = {}
    grew = True
    while grew:
        grew = False
        for chain in table.chains:
            if chain.builtin or chain.name not in callers:
                continue
            now = tuple(
                values.pop() if len(values := {
                    getattr(rule.match, name) if getattr(rule.match, name) is not None
                    else known.get(caller, unknown)[at]
                    for caller, rule in callers[chain.name]}) == 1 else None
                for at, name in enumerate(fields))
            if now != known.get(chain.name, unknown):
                known[chain.name] = now
                grew = True
    return known


def _random_arranged_tables(tmp_path: Path, seed: int) \
        -> Iterator[tuple[int, LoweredTable, dict[str, tuple[str, ...]]]]:
    """(family, table, its ipsets' addresses) of random members' lowered rulesets, arranged
    as the nftables backend arranges them (small thresholds: deep trees)."""
    for cluster, member, _ in _random_members(tmp_path, seed, 40):
        names = {link.device: link.interface for link in member.links}
        for family in sorted(cluster.families):
            with_sets, sets = use_ipsets(lower(cluster, member, family))
            arranged = arrange(with_sets, names, min_rules=6, split_min=4, clip_ports=True,
                               copies_max_share=0)
            ipsets = {s.name: s.cidrs for s in sets}
            for table in arranged.tables:
                yield family, table, ipsets


@SEEDS
@given(seed=st.integers(0, 10_000))
def test_entry_matches_is_its_definition_on_random_arranged_tables(tmp_path: Path, seed: int):
    found = logs = 0
    for _, table, _ in _random_arranged_tables(tmp_path, seed):
        for version in (table, nftables.fold_logs(table)[0]):
            known = nftables.entry_matches(version)
            assert known == _entry_matches_by_definition(version)
            found += sum(value != (None, None, None) for value in known.values())
        # what the renderer takes instead of asking again after the drop and fold
        before = nftables.entry_matches(table)
        dropped = nftables.drop_known_devices(table, None, None, before)
        folded_table, folded = nftables.fold_logs(dropped)
        assert nftables.entries_after_fold(before, folded) == \
            nftables.entry_matches(folded_table) == _entry_matches_by_definition(folded_table)
        logs += len(folded)
    assert found  # arranged below device and protocol dispatches: not vacuous
    assert logs  # and with logged rules folded into chains of their own


def _grouped_by_definition(rules, shapes, min_concat):
    """`_grouped` as its docstring says, written as the walk it was: each rule looks back
    entry by entry (newest first, at most WINDOW of them) for the latest entry of its
    shape, and joins it when that entry is not full and no rule of it, nor of any entry
    passed on the way, can match a packet the rule matches."""
    entries = []
    for rule in rules:
        got = shapes.shape(rule)
        mine = shapes.signature(rule)
        joined = False
        if got is not None:
            for back in range(len(entries) - 1, max(-1, len(entries) - 1 - nftplan.WINDOW),
                              -1):
                entry_key, _, members, signatures = entries[back]
                apart = all(nftplan._apart_from_all(mine, [other]) for other in signatures)
                if entry_key == got[0]:
                    if apart and len(members) < nftplan.GROUP_MAX:
                        members.append(rule)
                        signatures.append(mine)
                        joined = True
                    break
                if not apart:
                    break
        if not joined:
            entries.append((None if got is None else got[0], () if got is None else got[1],
                            [rule], [mine]))
    out = []
    for key, fields, members, _ in entries:
        if key is not None and len(members) >= min_concat:
            out.append(nftplan.Concat(fields, tuple(members), key, key[1] == "vmap"))
        else:
            out.extend(members)
    return out


@SEEDS
@given(seed=st.integers(0, 10_000))
def test_plan_joins_rules_as_its_definition_on_random_arranged_tables(tmp_path: Path,
                                                                      seed: int):
    """The plan's one lookup over every rule a rule would move past decides the joins the
    entry-by-entry walk decides, on random arranged tables (and with a small window and
    small sets, so that both limits are met)."""
    joined = 0
    for family, table, ipsets in _random_arranged_tables(tmp_path, seed):
        shapes = nftplan.Shapes(ipsets, nftables.never_returning(table.chains), family, {})
        for chain in table.chains:
            for window, group_max in ((nftplan.WINDOW, nftplan.GROUP_MAX), (3, 2)):
                with pytest.MonkeyPatch.context() as patch:
                    patch.setattr(nftplan, "WINDOW", window)
                    patch.setattr(nftplan, "GROUP_MAX", group_max)
                    got = nftplan._grouped(chain.rules, shapes, 2)
                    assert got == _grouped_by_definition(chain.rules, shapes, 2)
                joined += sum(isinstance(item, nftplan.Concat) for item in got)
    assert joined  # rules did join: not vacuous


def test_a_chain_reached_with_one_device_and_protocol_tests_neither_again():
    """Inside the chains below the input-device and protocol dispatch, a rule's test of
    that device goes and its ports are `th dport` (no `meta l4proto` test); a rule
    naming another device keeps it (it can never match there, as in iptables); a chain
    reached with different devices and protocols keeps every test. The reader gives
    every packet the decision of the rules as lowered."""
    ruleset = _known_entry_ruleset()
    text = nftables.render([ruleset], "known entry")
    dmz_tcp = _chain_text(text, "filter-dmz-tcp-v4")
    assert 'iifname "eth1"' not in dmz_tcp and "tcp dport" not in dmz_tcp
    assert 'ip saddr 192.0.2.1/32 th dport 22 counter accept comment "k.fw:5"' in dmz_tcp
    assert 'iifname "eth2" th dport 24 counter accept' in dmz_tcp
    # a protocol test with nothing else to say goes; the output device stays
    assert 'oifname "eth0" counter drop comment "k.fw:8"' in dmz_tcp
    assert "th dport 53 counter accept" in _chain_text(text, "filter-dmz-udp-v4")
    both = _chain_text(text, "filter-both-v4")
    assert 'iifname "eth1" tcp dport 25' in both and 'iifname "eth2" udp dport 53' in both
    nft = read(text)
    back = {c.name: c for c in nft.rulesets[4].table(TableName.FILTER).chains}
    assert [r.match.protocol for r in back["filter-dmz-tcp-v4"].rules] == [6, 6, 6, None, 6]
    flat = {4: ruleset}
    assert compare(flat, nft, flat, "known entry") > 20
    # the plain form (no concatenation work) writes every test, as before
    plain = nftables.render([ruleset], "known entry", concat=False)
    assert 'iifname "eth1" ip saddr 192.0.2.1/32 tcp dport 22' in plain


def test_a_rule_map_below_the_device_dispatch_keys_on_one_device_less():
    """Rules that named the chain's device and rules that named none become one shape:
    one map keyed without the input device."""
    from fwc.backend.lower.ruleset import AddressMatch, Chain, FilterRule, Match, Origin, Table
    from fwc.model import PortRange
    from fwc.model.vocabulary import BuiltinChain, Target

    rules = tuple(FilterRule(Match(in_device="eth1" if n % 2 else None, out_device="eth0",
                                   source=AddressMatch((f"192.0.2.{n}/32",)), protocol=6,
                                   dports=(PortRange(22, 22),)),
                             Target.ACCEPT if n % 3 else Target.DROP,
                             Origin("policy", f"m.fw:{n}")) for n in range(1, 9))
    ruleset = NodeRuleset("c", "m", 4, (Table(TableName.FILTER, (
        Chain(BuiltinChain.FORWARD, Target.DROP, (
            FilterRule(Match(in_device="eth1"), "dmz", Origin("auto", "dispatch")),)),
        Chain("dmz", None, rules))),))
    text = nftables.render([ruleset], "one map", min_concat=2)
    dmz = _chain_text(text, "filter-dmz-v4")
    assert dmz.count(" vmap @filter-dmz-v4-rules") == 1, dmz
    assert "\t\ttype ifname . ipv4_addr . inet_service : verdict" in text
    assert 'oifname . ip saddr . tcp dport vmap @filter-dmz-v4-rules1 ' in dmz
    flat = {4: ruleset}
    assert compare(flat, read(text), flat, "one map") > 8


def test_reader_refuses_ports_without_a_protocol_where_packets_of_several_arrive():
    """`th dport` reads as the ports of the chain's one protocol; in a chain reached by
    packets of any protocol it would match every protocol's ports: refused."""
    from fwc.analysis.nftread import NftReadError
    text = ("table inet fwc {\n\tchain filter-FORWARD {\n"
            "\t\ttype filter hook forward priority 0; policy drop;\n"
            "\t\tmeta nfproto ipv4 jump filter-FORWARD-v4\n\t}\n"
            "\tchain filter-FORWARD-v4 {\n\t\tjump filter-x-v4\n\t}\n"
            "\tchain filter-x-v4 {\n\t\tth dport 22 counter accept comment \"x:1\"\n\t}\n}\n")
    with pytest.raises(NftReadError, match="ports without a protocol"):
        read(text)
    with pytest.raises(NftReadError, match="ports without a protocol"):
        read(text.replace("\t\tjump filter-x-v4", "\t\tth dport 22 counter accept"))
    # reached only through a protocol test: read as that protocol's port
    good = read(text.replace("\t\tjump filter-x-v4", "\t\tmeta l4proto tcp jump filter-x-v4"))
    rule = good.rulesets[4].table(TableName.FILTER).chain("filter-x-v4").rules[0]
    assert rule.match.protocol == 6 and rule.match.dports[0].low == 22


def test_the_kernel_loads_chains_without_their_known_tests(tmp_path):
    """Loaded for real in a fresh namespace: the kernel takes `th dport` and the rules
    without device tests, and lists them back as written."""
    text = nftables.render([_known_entry_ruleset()], "known entry")
    target = _nft_file(tmp_path / "known.nft", text)
    with namespace() as ns:
        loaded = in_ns(ns, "nft", "-f", str(target))
        assert loaded.returncode == 0, loaded.stderr
        listed = in_ns(ns, "nft", "list", "chain", "inet", "fwc", "filter-dmz-tcp-v4")
        assert listed.returncode == 0, listed.stderr
        assert "ip saddr 192.0.2.1 th dport 22 counter" in listed.stdout
        assert 'iifname "eth1"' not in listed.stdout and "tcp dport" not in listed.stdout


def test_nft_splits_by_device_only_when_the_copies_stay_few(tmp_path: Path):
    """A device split copies every rule without a device into each device's chain: the
    nft flavour leaves it out when that adds more than 1/COPIES_MAX_SHARE of the rules
    (the other dimensions still apply), iptables splits anyway."""
    cluster, member, _ = _random_members(tmp_path, 7, 60)[0]
    bounded = _arranged_for_nft(cluster, member)
    unbounded = _arranged_for_nft(cluster, member, copies_max_share=0)
    assert "iifname vmap" not in bounded and "iifname vmap" in unbounded
    assert bounded.count(" : ") + bounded.count("\t\t") < \
        unbounded.count(" : ") + unbounded.count("\t\t")
    policy = tmp_path / "devices.fw"
    hosts = [f"host d{i} 198.19.1.{i + 1}" for i in range(80)]
    rules = [f"    accept from any to d{i} service tcp/{1000 + i} in "
             f"{'lan' if i % 2 else 'uplink'}" for i in range(80)]
    rules[40] = "    accept from any to d40 service tcp/80"  # the one without a device
    policy.write_text("\n".join([*hosts, CLUSTER, "policy mix {", *rules, "}"]) + "\n")
    analysis = analyse(policy, run_checks=False)
    assert analysis.policy is not None, analysis.diagnostics
    cluster = analysis.policy.clusters[0]
    text = _arranged_for_nft(cluster, cluster.members[0])
    # one copied rule in a chain of 80: the split by device pays and is kept
    assert "iifname vmap" in text


@pytest.mark.parametrize("shape", ["site", "interfaces"])
def test_members_reuse_what_the_previous_member_planned_without_changing_a_byte(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, shape: str):
    """The second member's nftables.nft takes the plans, folds and device drops of the
    chains it shares with the first (`_reused`, keyed on everything each one reads), and
    their texts when its writer gives the same names (`Writer.replayed`):
    every member's files are the bytes each gets computed on its own, and the reuse
    does happen (the benchmark's shapes: two and four members, logged rules, maps)."""
    from bench.generate import build_site, fwc_policy

    path = tmp_path / "bench.fw"
    path.write_text(fwc_policy(build_site(600, shape=shape)), encoding="utf-8")

    def compiled() -> dict[str, bytes]:
        analysis = analyse(path, run_checks=False)
        assert analysis.policy is not None
        return {f.path: f.content for out in compile_policy(analysis.policy,
                                                            backend=Backend.NFTABLES)
                for f in out.files}

    reused: list[str] = []
    real = nftables._reused
    replay = nftnames.Writer.replayed

    def counting(memo, key, given, compute):
        previous = memo.get(key, nftables._Previous) if memo is not None else None
        if previous is not None and previous.given == given:
            reused.append(key[0])
        return real(memo, key, given, compute)

    def replayed(writer, calls, ipsets):
        same = replay(writer, calls, ipsets)
        reused.append(nftables.TEXTS_MEMO if same else "rendered again")
        return same

    monkeypatch.setattr(nftables, "_reused", counting)
    monkeypatch.setattr(nftnames.Writer, "replayed", replayed)
    shared = compiled()
    monkeypatch.setattr(nftables, "_reused", lambda memo, key, given, compute: compute())
    monkeypatch.setattr(nftnames.Writer, "replayed", lambda writer, calls, ipsets: False)
    alone = compiled()
    assert shared == alone
    assert {nftables.PLAN_MEMO, nftables.FOLD_MEMO, nftables.TEXTS_MEMO, nftables.REFS_MEMO} \
        <= set(reused), set(reused)
    # and chains whose names came out otherwise were rendered again, their writer undone:
    # on site an address list that is an ipset of fw1 (and named after it) is none of
    # fw2's; the names of interfaces' sets and maps are their contents and places alike
    # on every member (numbered over the file, they differed after the first difference)
    if shape == "site":
        assert "rendered again" in reused
    assert sum(".log" in text for text in (c.decode() for c in alone.values())) >= 2


_LIST_CIDRS = st.lists(
    st.one_of(
        st.builds(lambda host, length: f"198.18.{host >> 8}.{host & 255}/{length}",
                  st.integers(0, 1023), st.sampled_from([32, 31, 30, 29, 24, 22, 16])),
        st.builds(lambda host: f"198.18.{host >> 8}.{host & 255}", st.integers(0, 1023))),
    min_size=1, max_size=12).map(tuple)


@settings(max_examples=300, deadline=None)
@given(_LIST_CIDRS)
def test_address_lists_are_read_without_ipaddress_exactly_as_with_it(cidrs: tuple[str, ...]):
    """The renderer reads its address lists with integer arithmetic (`cidr_span`): the
    blocks of a list are those `ipaddress.collapse_addresses` makes, and a set's
    elements (`nftnames.collapsed`) are the listed blocks with the ones inside another dropped,
    larger blocks first, so no two elements overlap (nft refuses overlapping ones)."""
    import ipaddress

    from fwc.model.intervals import normalise

    nets = [ipaddress.ip_network(c, strict=False) for c in cidrs]
    assert nftplan._collapsed_blocks(cidrs) == tuple(sorted(
        (int(n.network_address), int(n.broadcast_address))
        for n in ipaddress.collapse_addresses(nets)))
    elements = [ipaddress.ip_network(e) for e in nftnames.collapsed(cidrs)]
    assert not any(a.overlaps(b) for a, b in itertools.combinations(elements, 2))
    # the same addresses, as blocks of the list itself
    assert normalise([(int(e.network_address), int(e.broadcast_address)) for e in elements]) \
        == normalise([(int(n.network_address), int(n.broadcast_address)) for n in nets])
    assert set(elements) <= set(nets)


def test_a_list_with_nested_blocks_at_one_address_is_one_element():
    """198.18.0.0/24 inside 198.18.0.0/22, both listed: the set holds the /22 alone
    (sorting the smaller block first once kept both, which nft refuses to load)."""
    assert nftnames.collapsed(("198.18.0.0/24", "198.18.0.0/22", "198.18.1.7")) == \
        ("198.18.0.0/22",)


def _writer_state(writer: nftnames.Writer) -> tuple[object, ...]:
    return (list(writer.sets.items()), list(writer.maps.items()), list(writer.helpers.items()),
            list(writer.limits.items()), list(writer.meters.items()),
            list(writer.by_content.items()), dict(writer.counts), list(writer.counted))


def _ask(asked: nftnames.Names) -> None:
    """What a chain's texts may ask of a file's writer, of every kind."""
    asked.named_set("addresses-v4", "ipv4_addr", ("198.18.0.0/24", "198.18.2.0/24"))
    cidrs = asked.ipset({"fwc4-partners": ("198.18.4.0/22",)}, "fwc4-partners")
    assert cidrs is not None
    asked.named_set("addresses-v4", "ipv4_addr", cidrs, "fwc4-partners")
    asked.named_set("addresses-v4", "ipv4_addr", ("198.18.0.0/24", "198.18.2.0/24"))  # again
    asked.verdict_map("filter-INPUT-v4-rules1", "ipv4_addr", ("198.18.0.1 : accept",),
                      counted=True)
    asked.verdict_map("filter-FORWARD-v4-in", "ifname", ('"eth0" : accept',))
    asked.limit("ssh", 4, "10/second", 5)
    asked.connlimit(4)
    asked.helper_name("ftp", 6)


def test_a_chain_s_texts_are_replayed_only_where_every_name_comes_out_the_same():
    """`Writer.replayed`: the questions a chain's texts asked in one file (`Journal`) are
    asked again in another; when every answer is the same (and every ipset read holds
    the same addresses), the second file ends with the very declarations computing them
    would have made; when one differs, it is left exactly as it was."""
    first = nftnames.Writer()
    first.named_set("ports", "inet_service", ("22", "80"))
    journal = nftnames.Journal(first)
    _ask(journal)

    alike = nftnames.Writer()
    alike.named_set("ports", "inet_service", ("22", "80"))
    assert alike.replayed(journal.kept(), {"fwc4-partners": ("198.18.4.0/22",)})
    assert _writer_state(alike) == _writer_state(first)

    # an earlier chain of this file took the rule map's name: it comes out as NAME-2
    shifted = nftnames.Writer()
    shifted.named_set("ports", "inet_service", ("22", "80"))
    shifted.verdict_map("filter-INPUT-v4-rules1", "ipv4_addr", ("198.18.9.9 : drop",),
                        counted=True)
    before = _writer_state(shifted)
    assert not shifted.replayed(journal.kept(), {"fwc4-partners": ("198.18.4.0/22",)})
    assert _writer_state(shifted) == before

    # the same names, but the ipset holds other addresses in this file
    other = nftnames.Writer()
    other.named_set("ports", "inet_service", ("22", "80"))
    before = _writer_state(other)
    assert not other.replayed(journal.kept(), {"fwc4-partners": ("198.18.8.0/22",)})
    assert _writer_state(other) == before

    # the numbers differ only at the last questions, after a limit, a meter and a
    # helper were declared here: those go again too
    late = nftnames.Writer()
    late.named_set("ports", "inet_service", ("22", "80"))
    late.connlimit(6)
    before = _writer_state(late)
    assert not late.replayed(journal.kept(), {"fwc4-partners": ("198.18.4.0/22",)})
    assert _writer_state(late) == before

    # an answer this file cannot give (a limit of that name with another rate)
    clash = nftnames.Writer()
    clash.named_set("ports", "inet_service", ("22", "80"))
    clash.limit("ssh", 4, "1/second", 5)
    before = _writer_state(clash)
    assert not clash.replayed(journal.kept(), {"fwc4-partners": ("198.18.4.0/22",)})
    assert _writer_state(clash) == before


def test_a_writer_never_declares_a_name_twice():
    """A name already taken (here a set's content name, by an ipset's own name) is
    skipped for the next free one, not declared again over the first (`Writer.replayed`
    relies on names only being added)."""
    from fwc.backend.ipsets import content_name

    writer = nftnames.Writer()
    taken = content_name("fwc4", ("198.18.1.0/24",))
    assert writer.named_set("fwc4", "ipv4_addr", ("198.18.0.0/24",), taken) == taken
    assert writer.named_set("fwc4", "ipv4_addr", ("198.18.1.0/24",)) == f"{taken}-2"
    assert writer.sets[taken][2] == ("198.18.0.0/24",)
