"""The iptables and nftables backends against the kernel, where the two differ in meaning.

tests/test_nft_equivalence.py walks both outputs as fwc's readers understand them; these
tests pin the places where iptables itself reads a value otherwise than nft does (and
otherwise than `fwc query`), so that a policy can never mean two things.
"""

from __future__ import annotations

import ipaddress
import os
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_nft_equivalence import (
    _arranged_for_nft,
    _flat,
    _iptables_rulesets,
    compare,
    ipset_contents,
)

from fwc.analysis.nftread import read
from fwc.backend.output import compile_policy
from fwc.model.vocabulary import Backend
from fwc.pipeline import analyse

CLUSTER = """\
network lan      192.0.2.0/24
network lan6     2001:db8:10::/64
host    web      198.18.10.11
host    web6     2001:db8:20::11

cluster c {
    vrrp { password "s3cret"  advert 1s  vrid 61 }
    sync { link sync }
    interface lan    vip 192.0.2.254/24, 2001:db8:10::fe/64
    interface dmz    vip 198.18.10.254/24, 2001:db8:20::fe/64  vrid 62
    interface sync
    member fw1 priority 150 {
        lan    eth0 192.0.2.1/24, 2001:db8:10::1/64
        dmz    eth1 198.18.10.1/24, 2001:db8:20::1/64
        sync   eth3 203.0.113.1/28
    }
    member fw2 priority 100 {
        lan    eth0 192.0.2.2/24, 2001:db8:10::2/64
        dmz    eth1 198.18.10.2/24, 2001:db8:20::2/64
        sync   eth3 203.0.113.2/28
    }
}
"""


def _analysed(tmp_path: Path, body: str):
    path = tmp_path / "p.fw"
    path.write_text(CLUSTER + body)
    return analyse(path)


@pytest.mark.parametrize("spec,said", [
    ("proto/0", "IP protocol 0 in 'proto/0' would match every protocol in iptables"),
    ("icmp/255", "ICMP type 255 in 'icmp/255' would match every ICMP type in iptables"),
])
@pytest.mark.parametrize("where", ["inline", "declared"])
def test_values_iptables_reads_as_wildcards_are_refused(tmp_path: Path, spec: str, said: str,
                                                        where: str):
    """iptables-restore reads `-p 0` as every protocol and `--icmp-type 255` as every ICMP
    type (iptables-save prints no -p and `--icmp-type any`); nft and the analysis match
    the number alone. `accept ... service proto/0` let every protocol through on the
    iptables backend while `fwc query` and nft said one protocol only: refused."""
    if where == "inline":
        body = f"policy c {{\n    accept from lan to web service {spec}\n}}\n"
    else:
        body = f"service odd {spec}\npolicy c {{\n    accept from lan to web service odd\n}}\n"
    analysis = _analysed(tmp_path, body)
    found = [d for d in analysis.diagnostics if d.code == "FWC107"]
    assert len(found) == 1 and said in found[0].message, analysis.diagnostics
    assert not analysis.ok


def test_the_numbers_next_to_the_wildcards_compile_alike(tmp_path: Path):
    """ICMPv6 type 255 and protocol 255 are no wildcard to ip6tables or iptables: both
    backends write them as numbers."""
    analysis = _analysed(tmp_path, "policy c {\n"
                         "    accept from lan6 to web6 service icmpv6/255\n"
                         "    accept from lan to web service proto/255, icmp/254\n}\n")
    assert analysis.policy is not None and analysis.ok, analysis.diagnostics
    ipt = {f.path: f.content.decode() for f in
           compile_policy(analysis.policy, backend=Backend.IPTABLES)[0].files}
    nft = {f.path: f.content.decode() for f in
           compile_policy(analysis.policy, backend=Backend.NFTABLES)[0].files}
    assert "--icmpv6-type 255" in ipt["fw1/ip6tables.rules"]
    assert "-p 255" in ipt["fw1/iptables.rules"] and "--icmp-type 254" in ipt["fw1/iptables.rules"]
    assert "icmpv6 type 255" in nft["fw1/nftables.nft"]
    assert "meta l4proto 255" in nft["fw1/nftables.nft"]
    assert "icmp type 254" in nft["fw1/nftables.nft"]


def _limit_names(tmp_path: Path, rules: str, backend: Backend) -> dict[str, str]:
    """The rate bucket names of fw1's compiled rules (hashlimit names, nft limit objects
    and meters), by the kind and number they start with (`p1`, `s1`)."""
    analysis = _analysed(tmp_path, f"policy c {{\n{rules}}}\n")
    assert analysis.policy is not None and analysis.ok, analysis.diagnostics
    files = {f.path: f.content.decode()
             for f in compile_policy(analysis.policy, backend=backend)[0].files}
    if backend is Backend.IPTABLES:
        found = re.findall(r"--hashlimit-name (\S+)", files["fw1/iptables.rules"])
    else:
        found = re.findall(r"^\t(?:limit|set) (fwc-[ps]\S+) \{", files["fw1/nftables.nft"],
                           re.M)
    return {name.split("-")[1]: name for name in found}


LIMITED = "    accept from lan to web service tcp/80  syn-limit 200/second  limit {}\n"


@pytest.mark.parametrize("backend", [Backend.IPTABLES, Backend.NFTABLES])
def test_a_changed_limit_gets_a_new_bucket_name(tmp_path: Path, backend: Backend):
    """A reload keeps a running hashlimit table, with its old rate, burst and mode, for
    a new rule of the same name (test below): a rule whose limit changed, or whose
    number another rule's limit now has, must name another bucket. Unchanged, the
    names stay (a reload keeps the buckets' state)."""
    before = _limit_names(tmp_path, LIMITED.format("10/second per-source"), backend)
    again = _limit_names(tmp_path, LIMITED.format("10/second per-source"), backend)
    assert before.keys() == {"p1", "s1"} and before == again
    for changed in ("20/second per-source", "10/second burst 9 per-source", "10/second"):
        after = _limit_names(tmp_path, LIMITED.format(changed), backend)
        assert after["p1"] != before["p1"], changed  # the limit's bucket is a new one
        assert after["s1"] == before["s1"], changed  # the syn-limit did not change
    # another rule's limit moved to this number: another name too
    moved = _limit_names(tmp_path, LIMITED.format("1/minute")
                         + LIMITED.format("10/second per-source"), backend)
    assert moved["p1"] != before["p1"]
    assert moved["p2"] == before["p1"].replace("p1", "p2", 1)


@pytest.mark.root
def test_iptables_keeps_a_running_hashlimit_s_rate_for_a_rule_of_the_same_name(
        tmp_path: Path):
    """Why the names change (the kernel's behaviour, on a real one): the ruleset with
    1/minute drops the second ping of three; reloaded with 10000/second under the name
    fwc gives that limit, every ping passes (under the old name all were dropped)."""
    from conftest import skip_or_fail_without_root
    from test_realtools import in_ns, namespace

    skip_or_fail_without_root()

    def ruleset(limit: str, rate: str, burst: int) -> str:
        name = _limit_names(tmp_path, LIMITED.format(limit), Backend.IPTABLES)["p1"]
        return ("*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n"
                "-A OUTPUT -o lo -p icmp -m icmp --icmp-type 8 -m hashlimit --hashlimit-above "
                f"{rate} --hashlimit-burst {burst} --hashlimit-name {name} -j DROP\nCOMMIT\n")

    def received(ns: str) -> int:
        got = in_ns(ns, "ping", "-c", "3", "-i", "0.2", "-W", "1", "127.0.0.1")
        found = re.search(r"(\d+) received", got.stdout)
        assert found is not None, got.stdout + got.stderr
        return int(found.group(1))

    with namespace() as ns:
        loaded = in_ns(ns, "iptables-restore", stdin=ruleset("1/minute burst 1", "1/min", 1))
        assert loaded.returncode == 0, loaded.stderr
        assert received(ns) == 1
        loaded = in_ns(ns, "iptables-restore",
                       stdin=ruleset("10000/second burst 10000", "10000/sec", 10000))
        assert loaded.returncode == 0, loaded.stderr
        assert received(ns) == 3


# -- both backends over random policies of the rarer vocabulary -----------------------------

_ENDPOINTS = ("any", "lan", "lan6", "lan, lan6", "web", "web6", "web, web6", "firewall",
              "dmz.vip", "lan.vip", "any, !web", "!lan6", "lan, !192.0.2.128/25",
              "198.18.10.0/24", "2001:db8:20::/64", "mixed", "mixed, !lan")
_SERVICES = ("tcp/22", "tcp/80,443,8000-8080,9000", "udp/53", "udp/1024-65535",
             "icmp/echo-request", "icmp/destination-unreachable", "icmpv6/echo-request",
             "icmpv6/packet-too-big", "icmp/any", "icmpv6/any", "gre", "esp", "proto/132",
             "sctp/2905", "dccp/5004", "tcp", "many", "ftp", "icmp/13")
_TCP_ONLY = ("tcp/22", "tcp/80,443,8000-8080,9000", "tcp", "many", "ftp")
_REJECTS = ("", " with port-unreachable", " with host-unreachable", " with net-unreachable",
            " with admin-prohibited")
_LOGS = ("", " log", ' log "pfx \\\\ #q"', ' log "n" level notice', " log group 4",
         ' log "r" rate 2/minute burst 3', ' log level debug')
_HEAD = """\
host    mixed    192.0.2.77, 2001:db8:10::77
service many     tcp/1,3,5,7,9,11,13,15,17,19,21,23,25,27,29,31,33,35-40
service ftp      tcp/21 helper ftp
"""


@st.composite
def _rule(draw: st.DrawFn) -> str:
    action = draw(st.sampled_from(("accept", "accept", "drop", "reject")))
    source, destination = draw(st.sampled_from(_ENDPOINTS)), draw(st.sampled_from(_ENDPOINTS))
    services = draw(st.lists(st.sampled_from(_SERVICES), max_size=2, unique=True))
    text = f"    {action} from {source} to {destination}"
    if services:
        text += " service " + ", ".join(services)
    if destination != "firewall" and draw(st.booleans()):
        text += draw(st.sampled_from((" in lan", " in dmz", " in lan out dmz", " out dmz")))
    text += draw(st.sampled_from(_LOGS))
    if action == "reject":
        tcp_only = bool(services) and all(s in _TCP_ONLY for s in services)
        text += draw(st.sampled_from(_REJECTS + ((" with tcp-reset",) if tcp_only else ())))
    if action == "accept":
        if draw(st.integers(0, 3)) == 0:
            text += draw(st.sampled_from((" limit 5/second", " limit 3/minute burst 7",
                                          " limit 10/second per-source", " connlimit 4",
                                          " limit 1/second connlimit 2")))
        if services and all(s in _TCP_ONLY for s in services) and draw(st.integers(0, 4)) == 0:
            text += " syn-limit 50/second burst 60"
    if destination == "firewall" and draw(st.integers(0, 4)) == 0:
        text += draw(st.sampled_from((" only fw1", " only fw2")))
    return text + "\n"


_NAT = ("    nonat from lan to 198.18.10.0/25\n",
        "    snat from lan to any out dmz -> dmz.vip\n",
        "    snat from any to any service udp out dmz -> dmz.vip:2000-3000\n",
        "    snat from lan6 to any out dmz -> 2001:db8:20::f0-2001:db8:20::f3\n",
        "    dnat from any to dmz.vip service tcp/8080 in dmz -> web:80\n",
        "    dnat from any to dmz.vip service tcp/8081 in dmz -> web6\n",
        "    dnat from lan to any service tcp/3128 in lan -> 198.18.10.30\n",
        "    masquerade from lan6 to any out dmz\n",
        "    nonat from any to web out dmz\n",
        "    dnat from any to dmz.vip service tcp/80 in dmz -> 198.18.10.11, 198.18.10.12\n")
_CLUSTER_OPTIONS = ("", "    default { input reject  output drop }\n",
                    '    log { level info  rate 10/second  burst 20  drops "d" }\n',
                    "    log { group 7  drops }\n", "    default { forward reject }\n")


@st.composite
def _policy(draw: st.DrawFn) -> str:
    cluster = CLUSTER.replace("    sync { link sync }\n", "    sync { link sync }\n"
                              + draw(st.sampled_from(_CLUSTER_OPTIONS)))
    if draw(st.booleans()):
        cluster = cluster.replace('password "s3cret"', 'password "s3cret" unicast')
    if draw(st.booleans()):
        cluster = cluster.replace("vrid 62", "vrid 62  mss 1400")
    rules = draw(st.lists(_rule(), min_size=1, max_size=12))
    nat = draw(st.lists(st.sampled_from(_NAT), max_size=4, unique=True))
    return (_HEAD + cluster + "policy c {\n" + "".join(rules) + "}\n"
            + ("nat c {\n" + "".join(nat) + "}\n" if nat else ""))


# (FWC_RARER_EXAMPLES=400 for a longer hunt)
RARER = settings(max_examples=int(os.environ.get("FWC_RARER_EXAMPLES", "40")), deadline=None,
                 derandomize=True, database=None,
                 suppress_health_check=[HealthCheck.function_scoped_fixture,
                                        HealthCheck.too_slow])


@RARER
@given(text=_policy())
def test_random_policies_of_the_rarer_vocabulary_decide_alike(tmp_path: Path, text: str):
    """Reject types, ICMP and ICMPv6 types, port lists past multiport's 15, exclusions,
    mixed and empty groups, log prefixes, levels, groups and rates, limits, connlimit,
    syn-limit, helpers, member-scoped rules, default policies and `log { drops }`,
    unicast VRRP, MSS clamping, and NAT (nonat, snat with ports, pools, masquerade, dnat
    from `any` leaving out the firewall, load sharing): every member's iptables and
    nftables outputs (as compiled, and with nft's maps and sets at low thresholds)
    decide every corner packet alike. tests/test_nft_equivalence.py's random policies
    cover arrangement shapes; these the statements."""
    path = tmp_path / "r.fw"
    path.write_text(text)
    analysis = analyse(path, run_checks=False)
    assert analysis.policy is not None, analysis.diagnostics
    assert not [d for d in analysis.diagnostics if d.is_error], analysis.diagnostics
    cluster = analysis.policy.clusters[0]
    ipt = {f.path: f.content.decode()
           for f in compile_policy(analysis.policy, backend=Backend.IPTABLES)[0].files}
    nft = {f.path: f.content.decode()
           for f in compile_policy(analysis.policy, backend=Backend.NFTABLES)[0].files}
    checked = 0
    for member in cluster.members:
        iptables = _iptables_rulesets(ipt, member.name, cluster.families)
        sets = ipset_contents(ipt.get(f"{member.name}/ipsets.rules", ""))
        for kind, nft_text in (("compiled", nft[f"{member.name}/nftables.nft"]),
                               ("maps", _arranged_for_nft(cluster, member, 0))):
            checked += compare(iptables, read(nft_text), _flat(cluster, member),
                               f"{member.name} {kind}\n{text}", sets)
    assert checked > 100  # the HA rules alone give that many corner packets


def test_the_nft_reader_counts_costs_per_table(tmp_path: Path):
    """raw, nat and filter each have built-in chains of one name (PREROUTING, INPUT);
    the reader's per-rule costs were kept by chain name alone, so the nat table's
    PREROUTING costs were the raw table's: walking raw PREROUTING of an IPv6 ruleset
    with a helper rule and no IPv6 NAT rule raised IndexError in the evaluator."""
    from fwc.analysis.evaluate import Packet
    from fwc.model.vocabulary import Table as TableName

    analysis = _analysed(tmp_path, "service ftp tcp/21 helper ftp\npolicy c {\n"
                         "    accept from any to any service udp/53, ftp\n}\n"
                         "nat c {\n    nonat from lan to 198.18.10.0/25\n}\n")
    assert analysis.policy is not None and analysis.ok, analysis.diagnostics
    nft = {f.path: f.content.decode() for f in
           compile_policy(analysis.policy, backend=Backend.NFTABLES)[0].files}
    rules = read(nft["fw1/nftables.nft"])
    packet = Packet(6, int(ipaddress.ip_address("2001:db8:10::5")),
                    int(ipaddress.ip_address("2001:db8:20::11")), 6, 21, None, "eth0", None)
    raw = rules.evaluator(6, TableName.RAW).decide(packet, "PREROUTING")
    assert [(str(t), o) for t, o in raw.effects] == [("CT", (("helper", "ftp"),))]
    nat = rules.evaluator(6, TableName.NAT).decide(packet, "PREROUTING")
    assert str(nat.verdict) == "ACCEPT" and not nat.effects
    for family in (4, 6):  # every rule of every chain has its cost, table by table
        for table in rules.rulesets[family].tables:
            costs = rules.costs[family][table.name]
            assert {c.name: len(c.rules) for c in table.chains} == \
                {name: len(weights) for name, weights in costs.items()}
