"""The real kernel agrees with `fwc query` on small random policies (root; runs in CI).

tests/test_analysis_vs_compile_random.py and tests/test_nft_equivalence.py prove the
engine, the iptables output and the nftables output equivalent with fwc's own reader
and evaluator of iptables and nft: a misreading of the kernel's semantics shared by the
compiler and that evaluator passes them. Here the kernel decides. Seeded random
policies over one fixed topology (objects in 198.51.100.0/24, 203.0.113.0/24 and
2001:db8::/32; accept, drop and reject with reject types; tcp, udp, icmp and gre
services with ports and port ranges; negation, groups, `in`/`out`, `firewall` and VIPs,
dnat, snat, masquerade and nonat; default policies) are compiled for both backends.
Member fw1's rules (ipsets first) are loaded into namespace "fw", which routes between
namespace "lan" and namespace "dmz" and holds fw1's addresses and the VIPs (fw1 is the
VRRP master). Probes (TCP connect, UDP datagram, ICMP echo, GRE packet, each carrying
an id) go from lan to dmz, from dmz to lan, to the firewall and from it, for points at
the corners of the policy's objects, ports and rules; a listener in every namespace
logs the ids it receives with the addresses and port the receiving kernel saw. Each
probe's outcome (delivered, with its translated addresses; refused, with the errno of
the reset or ICMP error; or nothing: dropped) must be what `fwc query`'s answer for
fw1 (`fwc.commands.query.answer`) says: verdict, reject type, DNAT and SNAT.

The machinery (topology, probes, listeners, what query says) is tests/kernel_oracle.py;
tests/test_kernel_oracle_optimised.py runs it on the compiler's optimised output. The
regression tests below are what the kernel found.
"""

from __future__ import annotations

import random
import sys
import time
from pathlib import Path

import pytest
from conftest import skip_or_fail_without_root
from kernel_oracle import FW, Side, Topology, draw_probes, rulesets, run_policy, topology
from test_realtools import in_ns, namespace

from fwc.frontend.resolve import FragmentResolver
from fwc.model import Policy
from fwc.model.vocabulary import Backend
from fwc.pipeline import analyse

pytestmark = pytest.mark.root

SEEDS = range(10)
PROBES_PER_POLICY = 70

HEAD = """\
network lanA   198.51.100.16/28
host    c1     198.51.100.10, 2001:db8:1::10
host    c2     198.51.100.70
range   cr     198.51.100.20-198.51.100.40
network c6     2001:db8:1::100/124
host    s1     203.0.113.80, 2001:db8:2::80
host    s2     203.0.113.5
network srv    203.0.113.64/27
range   sr     203.0.113.100-203.0.113.120
group   cg     c1, cr
group   sg     s1, s2, 2001:db8:2::90
group   mixgrp c2, s2
service ssh    tcp/22
service web    tcp/80,443
service high   tcp/1000-2000
service dns    udp/53, tcp/53
service ping   icmp/echo-request, icmpv6/echo-request
service tun    gre

cluster k {{
    vrrp {{ password "s3cret"  advert 1s  vrid 51 }}
    sync {{ link sync }}
    {defaults}
    interface lan  vip 198.51.100.254/24, 2001:db8:1::fe/64
    interface dmz  vip 203.0.113.254/24, 2001:db8:2::fe/64  vrid 52
    interface sync
    member fw1 priority 150 {{
        lan  eth0 198.51.100.1/24, 2001:db8:1::1/64
        dmz  eth1 203.0.113.1/24, 2001:db8:2::1/64
        sync eth2 192.0.2.1/24
    }}
    member fw2 priority 100 {{
        lan  eth0 198.51.100.2/24, 2001:db8:1::2/64
        dmz  eth1 203.0.113.2/24, 2001:db8:2::2/64
        sync eth2 192.0.2.2/24
    }}
}}
"""


SIDES = {
    "lan": Side("eth0", ("198.51.100.10", "198.51.100.70", "198.51.100.15", "198.51.100.16",
                         "198.51.100.19", "198.51.100.20", "198.51.100.31", "198.51.100.32",
                         "198.51.100.40", "198.51.100.41", "198.51.100.100",
                         "2001:db8:1::10", "2001:db8:1::ff", "2001:db8:1::100",
                         "2001:db8:1::10f", "2001:db8:1::110", "2001:db8:1::77"),
                ("198.51.100.254", "2001:db8:1::fe")),
    "dmz": Side("eth1", ("203.0.113.5", "203.0.113.80", "203.0.113.63", "203.0.113.64",
                         "203.0.113.95", "203.0.113.96", "203.0.113.99", "203.0.113.100",
                         "203.0.113.120", "203.0.113.121", "203.0.113.30",
                         "2001:db8:2::80", "2001:db8:2::90", "2001:db8:2::91",
                         "2001:db8:2::33"),
                ("203.0.113.254", "2001:db8:2::fe")),
    # fw1's own addresses first (masquerade takes the device's first address), then VIPs
    FW: Side(None, ("198.51.100.1", "203.0.113.1", "2001:db8:1::1", "2001:db8:2::1",
                    "198.51.100.254", "203.0.113.254", "2001:db8:1::fe", "2001:db8:2::fe")),
}
FW_ADDRESSES = {"eth0": ("198.51.100.1/24", "2001:db8:1::1/64", "198.51.100.254/24",
                         "2001:db8:1::fe/64"),
                "eth1": ("203.0.113.1/24", "2001:db8:2::1/64", "203.0.113.254/24",
                         "2001:db8:2::fe/64"),
                "eth2": ("192.0.2.1/24",)}

# What a rule's sides may be, and the points each name is about (its corners, inside
# and just outside; the rest of the points are drawn at random).
ENDPOINTS = ("any", "firewall", "lanA", "c1", "c2", "cr", "c6", "s1", "s2", "srv", "sr",
             "cg", "sg", "mixgrp", "lan.vip", "dmz.vip", "198.51.100.16/29",
             "203.0.113.96-203.0.113.110", "2001:db8:2::80/126", "cr, !lanA", "!s1",
             "any, !srv", "sg, !s2", "firewall, !lan.vip", "!c1, !c6")
SERVICES = ("", " service ssh", " service web, dns", " service high", " service ping",
            " service tun", " service tcp/20-25", " service udp", " service tcp",
            " service icmp/any", " service udp/5000-5010, tcp/8080", " service ssh, ping",
            " service icmpv6/echo-request", " service proto/47, udp/53",
            " service tcp/1-1000")
SCOPES = ("", "", " in lan", " in dmz", " out lan", " out dmz", " in lan out dmz",
          " only fw1", " only fw2")
ACTIONS = ("accept", "accept", "accept", "accept", "drop", "reject", "reject with host-unreachable",
           "reject with admin-prohibited", "reject with net-unreachable",
           "reject with port-unreachable")
EXTRAS = ("", "", "", " log", " limit 1000/second burst 1000", " connlimit 100")
DEFAULTS = ("", "default { forward reject }", "default { input reject  output drop }",
            "default { output reject }", "default { input reject  forward reject }")
NATS = ("dnat from any to lan.vip service tcp/8080 in lan -> s1:80",
        "dnat from {s} to dmz.vip service web in dmz -> c1",
        "dnat from {s} to any service udp/5000-5010 in lan -> s2:53",
        "dnat from {s} to lan.vip service ssh in lan -> 2001:db8:2::90",
        "dnat from {s} to {d} service tcp/20-25 -> s1:1000-1005",
        "snat from {s} to any out dmz -> dmz.vip",
        "snat from {s} to any out dmz -> dmz.vip:2000-3000",
        "snat from {s} to {d} out lan -> 198.51.100.254",
        "masquerade from {s} to any out dmz",
        "nonat from {s} to {d}",
        "nonat from {s} to {d} in lan",
        "nonat from {s} to {d} out dmz")
NAT_SOURCES = ("any", "c1", "cr", "!c1", "s1", "lanA")
NAT_DESTINATIONS = ("any", "s1", "srv", "lan.vip", "dmz.vip", "sg")
# (protocol, port) points: every port a service names, and its neighbours
PORT_POINTS = (("tcp", 1), ("tcp", 1001), ("tcp", 1005), ("tcp", 22), ("tcp", 23),
               ("tcp", 80), ("tcp", 443), ("tcp", 444), ("tcp", 999), ("tcp", 1000),
               ("tcp", 2000), ("tcp", 2001), ("tcp", 19),
               ("tcp", 20), ("tcp", 25), ("tcp", 26), ("tcp", 53), ("tcp", 8080),
               ("tcp", 5005), ("udp", 53), ("udp", 54), ("udp", 4999), ("udp", 5000),
               ("udp", 5010), ("udp", 5011), ("udp", 7000), ("icmp", 0), ("gre", 0))
ORACLE = Topology(SIDES, FW_ADDRESSES, PORT_POINTS)


def policy_text(rng: random.Random) -> str:
    """A random policy over HEAD: 3-7 rules, up to 3 NAT rules, a default policy."""
    rules = [_rule(rng, rng.choice(ACTIONS)) for _ in range(rng.randint(3, 7))]
    nats = ["    " + rng.choice(NATS).format(s=rng.choice(NAT_SOURCES),
                                          d=rng.choice(NAT_DESTINATIONS))
            for _ in range(rng.randint(0, 3))]
    return (HEAD.format(defaults=rng.choice(DEFAULTS))
            + "policy k {\n" + "\n".join(rules) + "\n}\n"
            + ("nat k {\n" + "\n".join(nats) + "\n}\n" if nats else ""))


def _rule(rng: random.Random, action: str) -> str:
    verb, _, reject_type = action.partition(" with ")
    services = rng.choice(SERVICES)
    if verb == "reject" and services in (" service ssh", " service high", " service tcp") \
            and rng.random() < 0.5:
        reject_type = "tcp-reset"
    with_type = f" with {reject_type}" if reject_type else ""
    extra = rng.choice(EXTRAS) if verb == "accept" else rng.choice(EXTRAS[:4])
    return (f"    {verb} from {rng.choice(ENDPOINTS)} to {rng.choice(ENDPOINTS)}"
            f"{services}{rng.choice(SCOPES)}{extra}{with_type}")


def checked_policy(tmp_path: Path, seed: int) -> tuple[Path, Policy, FragmentResolver]:
    """The first policy of SEED's stream that `fwc check` passes (warnings allowed)."""
    rng = random.Random(seed)
    for attempt in range(50):
        path = tmp_path / f"p{seed}-{attempt}.fw"
        path.write_text(policy_text(rng), encoding="utf-8")
        analysis = analyse(path)
        if analysis.ok and analysis.policy is not None:
            return path, analysis.policy, FragmentResolver(analysis.program, analysis.policy)
    raise AssertionError(f"seed {seed}: no policy without errors in 50 attempts")


def test_the_kernel_does_what_fwc_query_says_on_random_policies(tmp_path):
    skip_or_fail_without_root()
    start = time.monotonic()
    checked = 0
    problems: list[str] = []
    with topology(ORACLE) as names:
        for seed in SEEDS:
            path, policy, resolver = checked_policy(tmp_path, seed)
            probes = draw_probes(random.Random(1000 + seed), PROBES_PER_POLICY, policy, ORACLE)
            found = run_policy(names, tmp_path, seed, (Backend.IPTABLES, Backend.NFTABLES),
                               policy, resolver, probes, ORACLE)
            checked += 2 * len(probes)
            problems += [f"seed {seed} ({path.name}): {d}" for d in found]
    elapsed = time.monotonic() - start
    print(f"\n{len(SEEDS)} policies, {checked} probes, {elapsed:.1f} s", file=sys.stderr)
    assert not problems, "\n".join(problems[:40]) + \
        "\n(policies in " + str(tmp_path) + ")"
    assert checked == len(SEEDS) * 2 * PROBES_PER_POLICY


# -- what the kernel found ----------------------------------------------------------------
DNAT_TO_A_PORT = HEAD.format(defaults="") + """\
policy k {
    accept from any to s2 service udp/53
}
nat k {
    dnat from any to any service udp/5000 in lan -> s2:53
}
"""


def test_a_dnat_to_a_port_behind_the_firewall_returns_loads_into_nft(tmp_path):
    """`dnat from any to any ... -> s2:53` is written as a jump (`iifname "eth0" udp dport
    5000`) to a chain that first RETURNs the firewall's addresses and then translates.
    Every packet entering that chain is UDP, so the renderer left the protocol test out
    of the translating rule, and nft refused the whole file: "transport protocol mapping
    is only valid after transport protocol match" (iptables wrote `-p udp` there). The
    member could not load its rules at all; the rule now tests the protocol itself."""
    skip_or_fail_without_root()
    path = tmp_path / "dnat.fw"
    path.write_text(DNAT_TO_A_PORT, encoding="utf-8")
    policy = analyse(path).policy
    assert policy is not None
    [(argv, text)] = rulesets(policy, Backend.NFTABLES)
    [translating] = [line for line in text.splitlines() if "dnat ip to 203.0.113.5:53" in line]
    assert "return" in text.split(translating)[0].rsplit("chain ", 1)[1], text
    assert "l4proto" in translating or "udp dport" in translating, translating
    with namespace() as ns:
        checked = in_ns(ns, "nft", "-c", "-f", "-", stdin=text)
    assert checked.returncode == 0, checked.stderr
