"""The kernel agrees with `fwc query` where the compiler optimises (root; runs in CI).

tests/test_kernel_oracle.py proves the kernel and `fwc query` agree on small random
policies: too small for the speed passes. Here the policies are compiled where they
change the output: address lists become ipsets (`hash:net`, one per object and family,
shared by the rules that use it, a hash-named one for an inline list or an object less
an address; nft sets), FORWARD and INPUT are arranged into per-device, per-protocol and
per-port-bucket chains (fwc.backend.arrange; nft verdict maps and concatenated sets),
and the iptables failsafe factors address products into chains of their own
(fwc.backend.lower.failsafe.factored). Two ways:

- small random policies with the passes' thresholds lowered (`lowered_thresholds`: an
  ipset from 4 addresses, arranged from 6 rules, split from 4, nft maps from 2 rules);
- large random policies (140 rules, groups of 18 to 38 prefixes) at the real thresholds.

The topology has three sides (lan, dmz and ext, with groups of more than 16 prefixes in
ext and lan), so every device split has an "other" path and rules without `in`/`out`
are copied into every device chain. Probes go between every pair of sides and to and
from the firewall, at the corners of every group member (first and last address, and
the neighbours outside), of every rule's ports and of every port bucket's bounds the
compiled files show; the policies start with broad drops before narrow accepts in other
buckets, and use negated groups. Every run must show the optimisation it is meant to
cover (asserted on the generated text), and every probe must get what fwc query says:
from the rules of both backends, and from the failsafe (fail-closed: INPUT as compiled,
no forwarding, no NAT, only fwc's own output).
"""

from __future__ import annotations

import functools
import ipaddress
import random
import re
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import skip_or_fail_without_root
from kernel_oracle import (
    FW,
    Outcome,
    Probe,
    Ruleset,
    Side,
    Topology,
    disagreements,
    draw_probes,
    expectations,
    loaded_by_install,
    member_files,
    query,
    topology,
)

from fwc.backend import arrange
from fwc.backend.files import FILES, Reload
from fwc.backend.render import context, nftables
from fwc.frontend.resolve import FragmentResolver
from fwc.model import Policy
from fwc.model.vocabulary import Backend
from fwc.pipeline import analyse

pytestmark = pytest.mark.root

LOW_SEEDS = range(6)  # small policies, thresholds lowered
BIG_SEEDS = range(2)  # large policies, the real thresholds
PROBES_PER_POLICY = 90
BIG_RULES = 140  # FORWARD is arranged from 64 rules, after the broad and shadowed ones


def _net(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    return ipaddress.ip_network(text)


# Groups of more than IPSET_THRESHOLD (16) prefixes, and the members whose corners are
# probed (first and last address, and the addresses just outside).
PARTNERS4 = tuple(f"198.18.{i}.{16 * (i % 8)}/28" for i in range(20))
PARTNERS6 = tuple(f"2001:db8:3:{i:x}::/64" for i in range(18))
CLIENTS = tuple(f"198.51.100.{16 + 8 * i}/30" for i in range(18))
SERVERS = tuple(f"203.0.113.{10 + 5 * i}" for i in range(17))


def corners(prefixes: tuple[str, ...], indexes: tuple[int, ...]) -> tuple[str, ...]:
    out: list[str] = []
    for index in indexes:
        net = _net(prefixes[index])
        out += [str(net.network_address - 1), str(net.network_address),
                str(net.broadcast_address), str(net.broadcast_address + 1)]
    return tuple(dict.fromkeys(out))


HEAD = f"""\
group   partners {", ".join(PARTNERS4 + PARTNERS6)}
range   prange   198.18.100.3-198.18.100.60
host    x1       198.18.50.5
group   outside  partners, prange, x1
group   clients  {", ".join(CLIENTS)}
host    h1       198.51.100.9, 2001:db8:1::9
group   servers  {", ".join(SERVERS)}, 2001:db8:2::10
network web      203.0.113.128/26
network extnet   198.18.0.0/15
network dmznet   203.0.113.0/25
service ssh      tcp/22
service www      tcp/80,443
service db       tcp/3306, tcp/5432
service dns      udp/53, tcp/53
service ping     icmp/echo-request, icmpv6/echo-request
service mail     tcp/25, tcp/110, tcp/143

cluster k {{
    vrrp {{ password "s3cret"  advert 1s  vrid 51 }}
    sync {{ link sync }}
    @DEFAULTS@
    interface lan  vip 198.51.100.254/24, 2001:db8:1::fe/64
    interface dmz  vip 203.0.113.254/24, 2001:db8:2::fe/64  vrid 52
    interface ext  vip 198.19.255.254/15, 2001:db8:3::fe/48  vrid 53
    interface sync
    member fw1 priority 150 {{
        lan  eth0 198.51.100.1/24, 2001:db8:1::1/64
        dmz  eth1 203.0.113.1/24, 2001:db8:2::1/64
        ext  eth3 198.19.255.1/15, 2001:db8:3::1/48
        sync eth2 192.0.2.1/24
    }}
    member fw2 priority 100 {{
        lan  eth0 198.51.100.2/24, 2001:db8:1::2/64
        dmz  eth1 203.0.113.2/24, 2001:db8:2::2/64
        ext  eth3 198.19.255.2/15, 2001:db8:3::2/48
        sync eth2 192.0.2.2/24
    }}
}}
"""

SIDES = {
    "lan": Side("eth0", (*corners(CLIENTS, (0, 1, 9, 17)), "198.51.100.9", "198.51.100.200",
                         "2001:db8:1::9", "2001:db8:1::77"),
                ("198.51.100.254", "2001:db8:1::fe")),
    "dmz": Side("eth1", ("203.0.113.9", "203.0.113.10", "203.0.113.11", "203.0.113.15",
                         "203.0.113.16", "203.0.113.50", "203.0.113.90", "203.0.113.91",
                         "203.0.113.127", "203.0.113.128", "203.0.113.191", "203.0.113.192",
                         "2001:db8:2::10", "2001:db8:2::11"),
                ("203.0.113.254", "2001:db8:2::fe")),
    "ext": Side("eth3", (*corners(PARTNERS4, (1, 10, 19)), "198.18.0.0", "198.18.0.15",
                         "198.18.0.16", "198.18.50.5", "198.18.50.6", "198.18.100.2",
                         "198.18.100.3", "198.18.100.31", "198.18.100.32", "198.18.100.60",
                         "198.18.100.61", "198.19.1.1",
                         "2001:db8:3::5", "2001:db8:3:1:ffff:ffff:ffff:ffff", "2001:db8:3:11::1",
                         "2001:db8:3:12::", "2001:db8:3:ffff::1"),
                ("198.19.255.254", "2001:db8:3::fe"), (15, 48)),
    # fw1's own addresses, then the VIPs
    FW: Side(None, ("198.51.100.1", "203.0.113.1", "198.19.255.1", "2001:db8:1::1",
                    "2001:db8:2::1", "2001:db8:3::1", "198.51.100.254", "203.0.113.254",
                    "198.19.255.254", "2001:db8:1::fe", "2001:db8:2::fe", "2001:db8:3::fe")),
}
FW_ADDRESSES = {"eth0": ("198.51.100.1/24", "2001:db8:1::1/64", "198.51.100.254/24",
                         "2001:db8:1::fe/64"),
                "eth1": ("203.0.113.1/24", "2001:db8:2::1/64", "203.0.113.254/24",
                         "2001:db8:2::fe/64"),
                "eth3": ("198.19.255.1/15", "2001:db8:3::1/48", "198.19.255.254/15",
                         "2001:db8:3::fe/48"),
                "eth2": ("192.0.2.1/24",)}
PORT_POINTS = (("tcp", 22), ("tcp", 23), ("tcp", 80), ("tcp", 443), ("tcp", 3306),
               ("tcp", 5432), ("tcp", 1023), ("tcp", 1024), ("tcp", 8000), ("tcp", 8101),
               ("tcp", 110), ("tcp", 65535), ("udp", 53), ("udp", 5000), ("udp", 5011),
               ("icmp", 0), ("gre", 0))
OPTIMISED = Topology(SIDES, FW_ADDRESSES, PORT_POINTS)

ENDPOINTS = ("any", "any", "firewall", "partners", "partners", "!partners", "prange", "x1",
             "outside", "partners, !198.18.1.20", "clients", "clients", "!clients",
             "clients, !198.51.100.25", "h1", "servers", "servers", "!servers",
             "servers, !203.0.113.15", "web", "any, !web", "ext.vip", "lan.vip",
             "198.18.0.0/28, 198.18.1.16/28, 198.18.2.32/28, 198.18.3.48/28, 198.18.50.5",
             "firewall, !lan.vip", "extnet", "dmznet", "any, !extnet")
SERVICES = ("", " service ssh", " service www", " service db", " service dns",
            " service ping", " service mail", " service tcp/1000-2000", " service tcp/8000-8100",
            " service udp/5000-5010", " service tcp/1-1023", " service gre", " service tcp",
            " service tcp/6000-6010, udp/6000-6010")
DEVICES = ("lan", "dmz", "ext")
ACTIONS = ("accept", "accept", "accept", "accept", "drop", "reject",
           "reject with host-unreachable", "reject with admin-prohibited")
EXTRAS = ("", "", "", "", "", " log")
ACCEPT_EXTRAS = (" limit 1000/second burst 1000", " connlimit 100")
DEFAULTS = ("", "default { forward reject }", "default { input reject }")
# Broad rules without devices first: a later narrow accept in another chain or bucket
# must not undo them.
BROAD = ("drop from any to any service tcp/3306", "reject from partners to any service db",
         "drop from any to servers service tcp/8000-8100", "reject from !clients to web",
         "drop from prange to any", "reject from any to any service tcp/1000-1500",
         "drop from any to firewall service tcp/1-1023")
NATS = ("snat from partners to any out dmz -> dmz.vip",
        "masquerade from clients to any out ext",
        "dnat from outside to ext.vip service tcp/8080 in ext -> 203.0.113.10:80",
        "nonat from partners to servers")
# The ports big policies' rules name one by one: enough distinct ports per device pair
# for port buckets.
BIG_PORTS = (21, 22, 25, 53, 80, 110, 143, 443, 993, 995, 1433, 1521, 2049, 3306, 3389,
             5432, 5900, 6379, 8080, 8443, 9000, 9200, 11211, 27017)


def _scope(rng: random.Random, destination: str, big: bool) -> str:
    """`in X`, `in X out Y`, `out Y` or none; never `out` to the firewall. Big policies
    mostly name ext -> dmz (a long chain for one device pair: protocol, port buckets)."""
    to_fw = "firewall" in destination or ".vip" in destination
    if big:
        roll = rng.random()
        if roll < 0.03:
            return ""
        if to_fw or roll < 0.1:
            return f" in {rng.choice(DEVICES)}"
        if roll < 0.65:
            return " in ext out dmz"
    elif rng.random() < 0.3:
        return "" if to_fw or rng.random() < 0.6 else f" out {rng.choice(DEVICES)}"
    src, dst = rng.sample(DEVICES, 2)
    return f" in {src}" if to_fw else f" in {src} out {dst}"


# Single addresses and networks: rules between them that differ only in their values
# share one nft verdict map (concatenated keys); a set is no key part.
SMALL = (("x1", "web", "198.51.100.200", "203.0.113.50", "203.0.113.90", "198.19.1.1",
          "198.18.100.32/29"), ("2001:db8:3::5", "2001:db8:2::11", "2001:db8:1::77"))


# (a reject is a jump to a chain of its own in a map; a logged rule too, with its log)
PLAIN_VERDICTS = ("accept", "accept", "accept", "drop", "reject", "reject with tcp-reset")


def _plain(rng: random.Random, big: bool) -> str:
    """A rule nft writes as a map element: one verdict, small sides, one port."""
    small = SMALL[rng.random() < 0.3]
    scope = " in ext out dmz" if big and rng.random() < 0.6 else \
        " in {} out {}".format(*rng.sample(DEVICES, 2))
    verb, _, reject_type = rng.choice(PLAIN_VERDICTS).partition(" with ")
    return (f"    {verb} from {rng.choice(small)} to {rng.choice(small)}"
            f" service tcp/{rng.choice(BIG_PORTS)}{scope}{rng.choice(EXTRAS)}"
            + (f" with {reject_type}" if reject_type else ""))


def _rule(rng: random.Random, big: bool) -> str:
    if rng.random() < 0.4:
        return _plain(rng, big)
    verb, _, reject_type = rng.choice(ACTIONS).partition(" with ")
    with_type = f" with {reject_type}" if reject_type else ""
    destination = rng.choice(ENDPOINTS)
    services = rng.choice(SERVICES)
    if big and rng.random() < 0.7:
        services = f" service tcp/{rng.choice(BIG_PORTS)}"
    extra = rng.choice(EXTRAS + (ACCEPT_EXTRAS if verb == "accept" else ()))
    return (f"    {verb} from {rng.choice(ENDPOINTS)} to {destination}{services}"
            f"{_scope(rng, destination, big)}{extra}{with_type}")


def _fw2_first(head: str) -> str:
    """HEAD with member fw2 declared before fw1: fw1's sets and arranged chains are then
    the ones the compiler reuses from the member before it, where its chains are equal
    (the cluster's memo: use_ipsets, arrange)."""
    fw1 = head[head.index("    member fw1"):head.index("    member fw2")]
    fw2 = head[head.index("    member fw2"):head.rindex("}")]
    return head.replace(fw1 + fw2, fw2 + fw1)


def policy_text(rng: random.Random, big: bool) -> str:
    broad = ["    " + b for b in rng.sample(BROAD, rng.randint(1, 3))]
    rules = [_rule(rng, big) for _ in range(BIG_RULES if big else rng.randint(14, 24))]
    nats = ["    " + n for n in rng.sample(NATS, rng.randint(0, 2))]
    head = _fw2_first(HEAD) if rng.random() < 0.5 else HEAD
    return (head.replace("@DEFAULTS@", rng.choice(DEFAULTS))
            + "policy k {\n" + "\n".join(broad + rules) + "\n}\n"
            + ("nat k {\n" + "\n".join(nats) + "\n}\n" if nats else ""))


def checked_policy(tmp_path: Path, seed: int, big: bool) \
        -> tuple[Path, Policy, FragmentResolver]:
    """The first policy of SEED's stream that `fwc check` passes (warnings allowed)."""
    rng = random.Random(seed + (1000 if big else 0))
    for attempt in range(50):
        path = tmp_path / f"{'big' if big else 'low'}{seed}-{attempt}.fw"
        lines = policy_text(rng, big).splitlines()
        for _ in range(5):
            path.write_text("\n".join(lines) + "\n", encoding="utf-8")
            analysis = analyse(path)
            if analysis.ok and analysis.policy is not None:
                return path, analysis.policy, FragmentResolver(analysis.program, analysis.policy)
            # A rule that can never match (shadowed: FWC401; its sides of two families:
            # FWC105) is an error: left out, the rest stays.
            errors = [d for d in analysis.diagnostics if d.is_error]
            if any(d.code not in ("FWC401", "FWC105") or d.span is None for d in errors):
                break
            shadowed = {d.span.line for d in errors if d.span is not None}
            lines = [line for number, line in enumerate(lines, 1) if number not in shadowed]
    raise AssertionError(f"seed {seed}: no policy without errors in 50 attempts")


@contextmanager
def lowered_thresholds(copies_max_share: int | None = None) -> Iterator[None]:
    """Compiles meanwhile with the speed passes' thresholds low enough for small
    policies: ipsets from 4 addresses, chains arranged from 6 rules and split from 4,
    nft maps and concatenated sets from 2 rules (as tests/test_nft_equivalence.py);
    COPIES_MAX_SHARE: arrange's bound on nft's device copies (0: none)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(context, "optimise", functools.partial(
            arrange.optimise, ipset_threshold=3, min_rules=6, split_min=4,
            copies_max_share=copies_max_share))
        patch.setattr(nftables, "render_pieces",
                      functools.partial(nftables.render_pieces, min_concat=2))
        yield


# -- what a run covers ----------------------------------------------------------------------
def _has(name: str, pattern: str) -> Callable[[dict[str, str]], bool]:
    """Whether the file NAME (of a member's files) has a line matching PATTERN."""
    return lambda files: re.search(pattern, files.get(name, ""), re.M) is not None


CONSTRUCTS = {
    # iptables
    "ipsets": _has("ipsets.rules", r"^create fwc[46]-"),
    "hash-named set": _has("ipsets.rules", r"^create fwc[46]\.[0-9a-f]"),
    "set in a negation": _has("iptables.rules", r"-m set --match-set \S+ (src|dst) .*-j RETURN$"),
    "device chains": _has("iptables.rules", r"^-A (fwd|in)-(lan|dmz|ext)"),
    "port buckets": _has("iptables.rules", r"fwc arrange: ports"),
    "factored failsafe": _has("failsafe.rules", r"^-A fwc-f"),
    # nftables
    "nft sets": _has("nftables.nft", r"^\tset fwc[46]-"),
    "nft device chains": _has("nftables.nft", r"^\tchain filter-(fwd|in)-(lan|dmz|ext)"),
    "nft port buckets": _has("nftables.nft", r"^\tmap filter-\S+-ports \{"),
    # policy rules (named by their line) looked up in a verdict map
    "nft verdict maps": _has("nftables.nft",
                             r'vmap @\S+-v[46]-rules\d+(-ranges)? comment "[^"]*\.fw:\d+ and'),
    "nft concatenations": _has("nftables.nft",
                               r'(saddr|daddr) \. [^\n]*comment "[^"]*\.fw:\d+ and'),
}
# What each backend's runs must show between them (the failsafe: the iptables runs').
WANTED = {Backend.IPTABLES: ("ipsets", "set in a negation", "hash-named set", "device chains",
                             "port buckets", "factored failsafe"),
          Backend.NFTABLES: ("nft sets", "nft device chains", "nft port buckets",
                             "nft verdict maps", "nft concatenations")}
AFTER_FW2 = "fw1 compiled after fw2"  # (see _fw2_first)
# What a big policy must show at the real thresholds, in each backend.
BIG_WANTED = {Backend.IPTABLES: ("ipsets", "device chains", "port buckets"),
              Backend.NFTABLES: ("nft sets", "nft port buckets", "nft verdict maps")}


def shown(files: dict[str, str]) -> set[str]:
    return {name for name, test in CONSTRUCTS.items() if test(files)}


def bucket_ports(files: dict[str, str]) -> tuple[tuple[str, int], ...]:
    """(protocol, port) at both bounds of every port bucket of the arranged chains: the
    iptables jumps' comments, the elements of nft's port dispatch maps."""
    bounds = re.findall(r"fwc arrange: ports (\d+)-(\d+)", files.get("iptables.rules", ""))
    bounds += re.findall(r"^\t\t\t(\d+)-(\d+) : jump filter-\S+-v[46],$",
                         files.get("nftables.nft", ""), re.M)
    return tuple(sorted({(proto, port) for low, high in bounds for proto in ("tcp", "udp")
                         for port in (int(low), int(high)) if 0 < port < 65536}))


def failsafe_rulesets(files: dict[str, str]) -> list[Ruleset]:
    """The failsafe files among FILES as the boot script loads them."""
    return [(["nft", "-f", "-"] if row.loader == "nft" else [str(row.loader)], files[row.name])
            for row in FILES if row.reload is Reload.FAILSAFE and row.name in files]


def failsafe_expected(policy: Policy, resolver: FragmentResolver, probes: list[Probe],
                      normal: dict[int, Outcome]) -> dict[int, Outcome]:
    """What the failsafe gives each probe it decides alone: the compiled INPUT chain for
    the firewall's addresses (as query says, unless query translates the probe: the
    failsafe has no NAT), nothing forwarded, nothing the policy sends out."""
    out = {}
    for probe in probes:
        if OPTIMISED.side_of(probe.dst) != FW or probe.origin == FW:
            out[probe.ident] = Outcome("drop")
        elif not any(piece.dnat is not None for piece in query(policy, resolver, probe)):
            out[probe.ident] = normal[probe.ident]
    return out


@dataclass
class Tally:
    policies: int = 0
    probes: int = 0
    covered: dict[str, int] | None = None

    def cover(self, what: set[str]) -> None:
        self.covered = self.covered or {}
        for name in what:
            self.covered[name] = self.covered.get(name, 0) + 1


def _one_policy(names: dict[str, str], tmp_path: Path, seed: int, big: bool,
                tally: Tally) -> list[str]:
    path, policy, resolver = checked_policy(tmp_path, seed, big)
    kind = "big" if big else "low"
    files: dict[Backend, dict[str, str]] = {}
    for backend in (Backend.IPTABLES, Backend.NFTABLES):
        if big:
            files[backend] = member_files(policy, backend)
        else:
            # nft split by device whatever it copies, every other policy
            with lowered_thresholds(0 if seed % 2 else None):
                files[backend] = member_files(policy, backend)
    covered = shown(files[Backend.IPTABLES]) | shown(files[Backend.NFTABLES])
    text = path.read_text(encoding="utf-8")
    if text.index("member fw2") < text.index("member fw1"):
        covered.add(AFTER_FW2)
    print(f"{kind} seed {seed} ({path.name}): {', '.join(sorted(covered))}", file=sys.stderr)
    tally.cover(covered)
    if big:
        missing = [c for b, wanted in BIG_WANTED.items() for c in wanted if c not in covered]
        assert not missing, f"{path}: at the real thresholds, no {missing}"
    ports = bucket_ports(files[Backend.IPTABLES]) + bucket_ports(files[Backend.NFTABLES])
    probes = draw_probes(random.Random(2000 + seed + (1000 if big else 0)), PROBES_PER_POLICY,
                         policy, OPTIMISED, ports)
    normal = expectations(policy, resolver, probes, OPTIMISED)
    runs = {str(b): loaded_by_install(files[b]) for b in files}
    # the failsafe of one backend per policy, in turn (half the time, the same proof)
    safe = (Backend.IPTABLES, Backend.NFTABLES)[seed % 2]
    runs[f"{safe} failsafe"] = failsafe_rulesets(files[safe])
    fallback = failsafe_expected(policy, resolver, probes, normal)
    found = disagreements(names, tmp_path / f"{kind}{seed}", runs, probes,
                          lambda label: fallback if "failsafe" in label else normal)
    tally.policies += 1
    tally.probes += 2 * len(probes) + len(fallback)
    return [f"{kind} seed {seed} ({path.name}): {d}" for d in found]


def test_the_kernel_does_what_fwc_query_says_on_optimised_output(tmp_path):
    skip_or_fail_without_root()
    start = time.monotonic()
    tally = Tally()
    problems: list[str] = []
    with topology(OPTIMISED) as names:
        for seed in LOW_SEEDS:
            problems += _one_policy(names, tmp_path, seed, False, tally)
        for seed in BIG_SEEDS:
            problems += _one_policy(names, tmp_path, seed, True, tally)
    elapsed = time.monotonic() - start
    print(f"\n{tally.policies} policies, {tally.probes} probes, {elapsed:.1f} s; runs showing "
          f"each optimisation: {tally.covered}", file=sys.stderr)
    assert not problems, "\n".join(problems[:40]) + "\n(policies in " + str(tmp_path) + ")"
    missing = [c for wanted in (*WANTED.values(), (AFTER_FW2,)) for c in wanted
               if not (tally.covered or {}).get(c)]
    assert not missing, f"no run showed {missing}: the test no longer covers them"
    assert tally.policies == len(LOW_SEEDS) + len(BIG_SEEDS)
