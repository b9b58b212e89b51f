"""The kernel as the oracle of `fwc query`: namespaces, probes and what each should get.

Shared by tests/test_kernel_oracle.py (small random policies) and
tests/test_kernel_oracle_optimised.py (the compiler's optimised output: ipsets,
arranged chains, nft maps and concatenated sets, the factored failsafe).

A `Topology` names the namespaces around the firewall namespace "fw" (member fw1):
one per `Side`, each reached by one device of fw1, holding the probe points of that
side as its own addresses and routing through fw1's VIPs. Probes (TCP connect, UDP
datagram, ICMP echo, GRE packet, each carrying an id; tests/kernel_probe.py) go between
every pair of sides and to and from the firewall; a listener in every namespace logs
the ids it receives with the addresses and port the receiving kernel saw. Each probe's
outcome (delivered, with its translated addresses; refused, with the errno of the reset
or ICMP error; or nothing: dropped) is compared with what `fwc query`'s answer for fw1
(`fwc.commands.query.answer`) says: verdict, reject type, DNAT and SNAT.

Bounded: every probe of a batch is sent at once and waits at most PROBE_TIMEOUT;
namespaces have unique names and are deleted in finally blocks (deleting a namespace
deletes its veths); every listener is stopped by its PID (its standard input closed,
then killed), also when the test fails.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from test_realtools import in_ns, namespace

from fwc.analysis.engine import Piece
from fwc.backend.files import FILES, Reload
from fwc.backend.output import compile_policy
from fwc.commands.query import answer, parse_question
from fwc.frontend.resolve import FragmentResolver
from fwc.install.scripts import in_load_order, ruleset_loader
from fwc.model import Endpoint, FilterRule, NatRule, Policy, PortRange, ServiceMatch
from fwc.model.vocabulary import Backend, FilterAction, NatAction

PROBE_SCRIPT = Path(__file__).with_name("kernel_probe.py")
PROBE_TIMEOUT = 1.0
FW = "fw"  # the firewall's namespace: member fw1


@dataclass(frozen=True)
class Side:
    """A namespace of the topology: the device fw1 reaches it by (None: fw itself), its
    addresses (the probe points on it), its gateway per family and the prefix lengths
    its addresses get (IPv4, IPv6): its on-link network."""

    device: str | None
    points: tuple[str, ...]
    gateways: tuple[str, ...] = ()
    prefixes: tuple[int, int] = (24, 64)


@dataclass(frozen=True)
class Topology:
    """The sides by role (FW among them: fw1's own addresses and VIPs as points, its own
    first), the addresses of each of fw1's devices (a device no side is on gets a veth
    peer in FW: the sync link), and the (protocol, port) points probed anywhere."""

    sides: Mapping[str, Side]
    fw_addresses: Mapping[str, tuple[str, ...]]
    port_points: tuple[tuple[str, int], ...]
    roles_of_points: dict[str, str] = field(init=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "roles_of_points", {
            point: role for role, side in self.sides.items() for point in side.points})

    @property
    def directions(self) -> tuple[tuple[str, str], ...]:
        """(origin, target) of every pair of sides, the firewall's among them."""
        return tuple((a, b) for a in self.sides for b in self.sides if a != b)

    @property
    def all_points(self) -> list[str]:
        return [p for side in self.sides.values() for p in side.points]

    def side_of(self, point: str) -> str:
        return self.roles_of_points[point]

    def device_address(self, device: str, family: int) -> str:
        """DEVICE's first address of FAMILY on fw1: what masquerade takes, and what fw1
        sends from on that side."""
        return next(a.split("/")[0] for a in self.fw_addresses[device]
                    if ipaddress.ip_address(a.split("/")[0]).version == family)


# -- probes -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Probe:
    ident: int
    origin: str  # the namespace it is sent from
    proto: str  # tcp, udp, icmp, gre
    src: str
    dst: str
    port: int

    def as_json(self) -> dict[str, object]:
        return {"id": self.ident, "proto": self.proto, "src": self.src, "dst": self.dst,
                "port": self.port}

    @property
    def family(self) -> int:
        return ipaddress.ip_address(self.src).version

    @property
    def service(self) -> str:
        """The probe as a `--service` of fwc query."""
        if self.proto == "icmp":
            return "icmpv6/echo-request" if self.family == 6 else "icmp/echo-request"
        return "gre" if self.proto == "gre" else f"{self.proto}/{self.port}"

    def shifted(self, by: int) -> Probe:
        return Probe(self.ident + by, self.origin, self.proto, self.src, self.dst, self.port)

    def __str__(self) -> str:
        return f"{self.src} -> {self.dst} {self.service} (from {self.origin})"


Drawn = tuple[str, str, str, tuple[str, int]]  # origin, source, destination, (proto, port)


def draw_probes(rng: random.Random, count: int, policy: Policy, topo: Topology,
                ports: tuple[tuple[str, int], ...] = ()) -> list[Probe]:
    """COUNT distinct probes: two thirds aimed at the rules (a point of each side of a
    filter or NAT rule, a corner of its services: first and last port and their
    neighbours), the rest over every direction, family and service point. PORTS
    (protocol, port) are probed as a rule's service points too when the rule may match
    them (the bucket boundaries of an arranged chain)."""
    cluster = policy.clusters[0]
    rules = [*cluster.rules, *cluster.nat]
    seen: set[tuple[str, str, str, int]] = set()
    probes: list[Probe] = []
    for attempt in range(count * 30):
        if len(probes) == count:
            break
        aimed = rules and attempt % 3 != 2
        drawn = _aimed(rng, rng.choice(rules), topo, ports) if aimed \
            else _anywhere(rng, len(probes), topo)
        if drawn is None:
            continue
        origin, src, dst, (proto, port) = drawn
        if (src, dst, proto, port) not in seen:
            seen.add((src, dst, proto, port))
            if proto == "gre":
                # GRE without a key has no ports: conntrack takes a GRE packet the other
                # way between the same addresses for the first one's reply (ESTABLISHED)
                seen.add((dst, src, proto, port))
            probes.append(Probe(len(probes) + 1, origin, proto, src, dst, port))
    return probes


def _anywhere(rng: random.Random, index: int, topo: Topology) -> Drawn:
    origin, target = topo.directions[index % len(topo.directions)]
    src = rng.choice(topo.sides[origin].points)
    family = ipaddress.ip_address(src).version
    dst = rng.choice([p for p in topo.sides[target].points
                      if ipaddress.ip_address(p).version == family])
    return origin, src, dst, rng.choice(topo.port_points)


def points(endpoint: Endpoint, topo: Topology) -> list[str]:
    """The probe points an endpoint's items name, inside or not (its corners are among
    them); `any` and `firewall` name every point of their kind."""
    out = []
    for point in topo.all_points:
        address = ipaddress.ip_address(point)
        on_fw = topo.side_of(point) == FW
        if any(item.addresses.contains_address(address)
               or (item.kind == "any" and not on_fw) or (item.kind == "firewall" and on_fw)
               for item in endpoint.items):
            out.append(point)
    return out


def service_points(services: tuple[ServiceMatch, ...], topo: Topology,
                   extra: tuple[tuple[str, int], ...] = ()) -> list[tuple[str, int]]:
    """The corners of SERVICES (every port range's ends and their neighbours) and the
    ports of EXTRA they may match; every port point for a rule without services."""
    if not services:
        return list(topo.port_points + extra)
    out: list[tuple[str, int]] = []
    for match in services:
        if match.protocol in ("icmp", "icmpv6"):
            out.append(("icmp", 0))
        elif match.number == 47:
            out.append(("gre", 0))
        elif match.protocol in ("tcp", "udp"):
            ranges = match.ports or (PortRange(1, 65535),)
            out += [(match.protocol, port) for r in ranges
                    for port in (r.low - 1, r.low, r.high, r.high + 1) if 0 < port < 65536]
            out += [(p, port) for p, port in extra if p == match.protocol
                    and any(r.low - 1 <= port <= r.high + 1 for r in ranges)]
    return out or list(topo.port_points)


def _aimed(rng: random.Random, rule: FilterRule | NatRule, topo: Topology,
           ports: tuple[tuple[str, int], ...]) -> Drawn | None:
    src = rng.choice(points(rule.source, topo) or topo.all_points)
    family = ipaddress.ip_address(src).version
    dsts = [p for p in points(rule.destination, topo) or topo.all_points
            if ipaddress.ip_address(p).version == family
            and topo.side_of(p) != topo.side_of(src)]
    if not dsts:
        return None
    return (topo.side_of(src), src, rng.choice(dsts),
            rng.choice(service_points(rule.services, topo, ports)))


# -- what fwc query says ------------------------------------------------------------------
@dataclass(frozen=True)
class Outcome:
    verdict: str  # accept, drop, reject
    detail: str = ""  # reject: the errno; accept: "src>dst:port" as the receiver saw it

    def __str__(self) -> str:
        return f"{self.verdict} {self.detail}".strip()


# What the probe's socket reports for each reject type (the kernel's icmp_err_convert
# and icmpv6_err_convert tables; a TCP reset is ECONNREFUSED).
REJECT_ERRNO = {None: {4: "ECONNREFUSED", 6: "ECONNREFUSED"},
                "tcp-reset": {4: "ECONNREFUSED", 6: "ECONNREFUSED"},
                "port-unreachable": {4: "ECONNREFUSED", 6: "ECONNREFUSED"},
                "host-unreachable": {4: "EHOSTUNREACH", 6: "EHOSTUNREACH"},
                "net-unreachable": {4: "ENETUNREACH", 6: "ENETUNREACH"},
                "admin-prohibited": {4: "EHOSTUNREACH", 6: "EACCES"}}


def query(policy: Policy, resolver: FragmentResolver, probe: Probe) -> list[Piece]:
    """fw1's pieces of `fwc query --from SRC --to DST --service S`."""
    args = argparse.Namespace(source=probe.src, destination=probe.dst, service=probe.service,
                              in_interface=None, out_interface=None)
    results, _ = answer(policy, parse_question(args, resolver), resolver)
    return [piece for _, asked, pieces in results if asked.member.name == "fw1"
            for piece in pieces]


def expected(pieces: list[Piece], probe: Probe, topo: Topology) -> Outcome:
    outcomes = {_expected(piece, probe, topo) for piece in pieces}
    assert len(outcomes) == 1, f"{probe}: fwc query answers {len(pieces)} parts: {outcomes}"
    return outcomes.pop()


def _expected(piece: Piece, probe: Probe, topo: Topology) -> Outcome:
    if piece.verdict is FilterAction.DROP:
        return Outcome("drop")
    if piece.verdict is FilterAction.REJECT:
        with_type = piece.rule.reject_with if piece.rule is not None else None
        return Outcome("reject", REJECT_ERRNO[with_type][probe.family])
    dst, port = probe.dst, probe.port
    if piece.dnat is not None and piece.dnat.address is not None:
        dst = piece.dnat.address
        port = piece.dnat.port if piece.dnat.port is not None else port
    src = probe.src
    if piece.snat is not None and piece.snat.address is not None:
        src = piece.snat.address
    if piece.snat is not None and piece.snat.kind is NatAction.MASQUERADE:
        role = next(iter(sorted(piece.box.out_ifaces)))
        src = topo.device_address(_device(topo, role), probe.family)
    return Outcome("accept", seen_as(src, dst, port if probe.proto in ("tcp", "udp") else 0))


def _device(topo: Topology, role: str) -> str:
    device = topo.sides[role].device
    assert device is not None, role
    return device


def seen_as(src: str, dst: str, port: int) -> str:
    return f"{ipaddress.ip_address(src)}>{ipaddress.ip_address(dst)}:{port}"


def expectations(policy: Policy, resolver: FragmentResolver, probes: list[Probe],
                 topo: Topology) -> dict[int, Outcome]:
    """What fwc query says each probe gets from fw1, by id."""
    return {p.ident: expected(query(policy, resolver, p), p, topo) for p in probes}


# -- the kernel ---------------------------------------------------------------------------
Ruleset = tuple[list[str], str]  # a loader's argv, and the text it reads


def member_files(policy: Policy, backend: Backend, member: str = "fw1") -> dict[str, str]:
    """Every file MEMBER gets for BACKEND, by name."""
    [output] = compile_policy(policy, backend=backend)
    return {f.path.split("/", 1)[1]: f.content.decode() for f in output.files
            if f.path.startswith(f"{member}/")}


def rulesets(policy: Policy, backend: Backend) -> list[Ruleset]:
    """(loader argv, text) of every ruleset fw1 gets for BACKEND, in install order."""
    return loaded_by_install(member_files(policy, backend))


def loaded_by_install(files: Mapping[str, str],
                      reloads: tuple[Reload, ...] = (Reload.IPSETS, Reload.RULES)) \
        -> list[Ruleset]:
    """The rulesets among FILES that an install loads (the files of RELOADS), in order."""
    return [(ruleset_loader(row), files[row.name])
            for row in in_load_order(f for f in FILES if f.name in files)
            if row.reload in reloads]


def _ip_batch(ns: str | None, lines: list[str]) -> None:
    argv = ["ip", *(["-n", ns] if ns else []), "-batch", "-"]
    done = subprocess.run(argv, input="\n".join(lines) + "\n", capture_output=True, text=True,
                          timeout=30)
    assert done.returncode == 0, f"{argv}: {done.stderr}"


def _sysctl(ns: str, *settings: str) -> None:
    # namespace-scoped keys of a namespace this test created
    done = in_ns(ns, "sysctl", "-q", "-w", *settings)
    assert done.returncode == 0, done.stderr


def _wait_addresses(names: dict[str, str]) -> None:
    """Until no address is tentative (at most 5 s): addresses added to a link that is
    down stay tentative for a moment after it comes up, `nodad` or not, and the kernel
    answers no neighbour solicitation for them meanwhile."""
    for _ in range(50):
        if not any(in_ns(ns, "ip", "-6", "address", "show", "tentative").stdout.strip()
                   for ns in names.values()):
            return
        time.sleep(0.1)
    raise AssertionError("IPv6 addresses still tentative after 5 s")


def _warm_up(names: dict[str, str], topo: Topology) -> None:
    """Pings from fw to every point until each is answered (at most 3 rounds), with no
    rules loaded: the first neighbour solicitations on a link that has just come up go
    unanswered for up to a second, rules or not, and a probe would time out waiting for
    them. The neighbours found here go stale and are probed again under the rules."""
    pings = [Probe(0, FW, "icmp", topo.device_address(_device(topo, role),
                                                      ipaddress.ip_address(dst).version),
                   dst, 0)
             for role, side in topo.sides.items() if role != FW for dst in side.points]
    with tempfile.TemporaryDirectory(prefix="fwc-oracle-") as log_dir:
        for round_ in range(3):
            batch = [p.shifted(100_000 * (round_ + 1) + n) for n, p in enumerate(pings)]
            with listeners(names, Path(log_dir) / str(round_), [], []) as logs:
                send(names, batch)
                time.sleep(0.1)
                got = receipts(logs)
            pings = [p for p, b in zip(pings, batch, strict=True) if b.ident not in got]
            if not pings:
                return
    raise AssertionError(f"no answer from {[p.dst for p in pings]} after 3 rounds")


def _address_lines(addresses: tuple[str, ...], device: str) -> list[str]:
    return [f"address add {a} dev {device} nodad" if ":" in a else
            f"address add {a} dev {device}" for a in addresses]


@contextmanager
def topology(topo: Topology) -> Iterator[dict[str, str]]:
    """The namespaces of TOPO, wired and addressed; by role."""
    with ExitStack() as stack:
        names = {role: stack.enter_context(namespace()) for role in topo.sides}
        fw = names[FW]
        for ns in names.values():
            # no duplicate address detection on the links made below
            _sysctl(ns, "net.ipv6.conf.default.accept_dad=0")
        _ip_batch(None, [f"link add {side.device} netns {fw} type veth peer name {role}0 "
                         f"netns {names[role]}"
                         for role, side in topo.sides.items() if side.device is not None])
        reached = {side.device for side in topo.sides.values()}
        fw_lines = []
        for device, addresses in topo.fw_addresses.items():
            if device not in reached:  # a link of its own (sync): its peer stays in fw
                fw_lines += [f"link add {device} type veth peer name {device}p",
                             f"link set {device}p up"]
            fw_lines += _address_lines(addresses, device) + [f"link set {device} up"]
        _ip_batch(fw, fw_lines)
        for role, side in topo.sides.items():
            if side.device is None:
                continue
            four, six = side.prefixes
            addresses = tuple(f"{p}/{six if ':' in p else four}" for p in side.points)
            _ip_batch(names[role], _address_lines(addresses, f"{role}0")
                      + [f"link set {role}0 up"]
                      + [f"route add default via {g}" for g in side.gateways])
        _wait_addresses(names)
        _warm_up(names, topo)
        _sysctl(fw, "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1",
                # every reject answered: the kernel rate-limits ICMP errors per destination
                "net.ipv4.icmp_ratelimit=0", "net.ipv6.icmp.ratelimit=0")
        yield names


def _stop(proc: subprocess.Popen[str]) -> None:
    """PROC stopped by its PID: its standard input closed (the listener's signal to
    stop), killed when it does not stop within 3 s."""
    if proc.stdin is not None:
        proc.stdin.close()
    try:
        proc.wait(timeout=3)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=3)


@contextmanager
def listeners(names: dict[str, str], log_dir: Path, tcp: list[int],
              udp: list[int]) -> Iterator[dict[str, Path]]:
    """A receipt listener in every namespace; their log files by role. Stopped by PID."""
    procs: list[subprocess.Popen[str]] = []
    log_dir.mkdir(parents=True, exist_ok=True)
    logs = {role: log_dir / f"{role}.jsonl" for role in names}
    try:
        for role, ns in names.items():
            proc = subprocess.Popen(
                ["ip", "netns", "exec", ns, sys.executable, str(PROBE_SCRIPT), "serve",
                 "--log", str(logs[role]), "--lifetime", "120",
                 "--tcp", *map(str, tcp), "--udp", *map(str, udp)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            procs.append(proc)
        for proc in procs:
            assert proc.stdout is not None and proc.stdout.readline().strip() == "READY"
        yield logs
    finally:
        for proc in procs:
            _stop(proc)


def load(fw: str, loaded: list[Ruleset]) -> None:
    """FW's filter emptied (both backends' tables, sets, conntrack), then LOADED."""
    # (the rules first: a set that a rule still names cannot be destroyed)
    flush = "; ".join(f"{tool} -t {table} -F; {tool} -t {table} -X"
                      for tool in ("iptables", "ip6tables")
                      for table in ("filter", "nat", "raw", "mangle"))
    # (nothing to flush is no failure)
    in_ns(fw, "sh", "-c", f"nft flush ruleset; {flush}; ipset destroy; conntrack -F")
    for argv, text in loaded:
        done = in_ns(fw, *argv, stdin=text)
        assert done.returncode == 0, f"{argv}: {done.stderr}"


def send(names: dict[str, str], probes: list[Probe]) -> dict[int, tuple[str, str]]:
    """Each origin's probes sent at once, the origins in parallel; outcomes by id."""
    running = []
    try:
        for origin in names:
            mine = [p.as_json() for p in probes if p.origin == origin]
            if not mine:
                continue
            proc = subprocess.Popen(["ip", "netns", "exec", names[origin], sys.executable,
                                     str(PROBE_SCRIPT), "probe", "--timeout",
                                     str(PROBE_TIMEOUT)],
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            running.append(proc)
            assert proc.stdin is not None
            proc.stdin.write(json.dumps(mine))
            proc.stdin.close()
        outcomes: dict[int, tuple[str, str]] = {}
        for proc in running:
            proc.wait(timeout=PROBE_TIMEOUT + 20)  # its few kB of output fit the pipe
            assert proc.stdout is not None
            out = proc.stdout.read()
            proc.stdout.close()
            outcomes.update({int(k): tuple(v) for k, v in json.loads(out).items()})
        return outcomes
    finally:
        for proc in running:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=3)


def receipts(logs: dict[str, Path]) -> dict[int, str]:
    got: dict[int, str] = {}
    for path in logs.values():
        if path.exists():
            for line in path.read_text(encoding="utf-8").splitlines():
                seen = json.loads(line)
                got.setdefault(seen["id"], seen_as(seen["src"], seen["dst"], seen["port"]))
    return got


def kernel_outcome(probe: Probe, sent: tuple[str, str] | None, delivered: str | None) -> Outcome:
    if delivered is not None:
        return Outcome("accept", delivered)
    assert sent is not None and sent[0] != "error", f"{probe}: the probe failed: {sent}"
    if sent[0] == "refused":
        return Outcome("reject", sent[1])
    return Outcome("drop")


def kernel_outcomes(names: dict[str, str], log_dir: Path, loaded: list[Ruleset],
                    probes: list[Probe]) -> dict[int, Outcome]:
    """PROBES through fw1 with LOADED in its namespace: what each got, by id."""
    tcp = sorted({p.port for p in probes if p.proto == "tcp"} | {80, 53, 443})
    udp = sorted({p.port for p in probes if p.proto == "udp"} | {53})
    load(names[FW], loaded)
    with listeners(names, log_dir, tcp, udp) as logs:
        sent = send(names, probes)
        time.sleep(0.1)
        got = receipts(logs)
    return {p.ident: kernel_outcome(p, sent.get(p.ident), got.get(p.ident)) for p in probes}


@dataclass(frozen=True)
class Disagreement:
    backend: str
    probe: Probe
    kernel: Outcome
    fwc: Outcome

    def __str__(self) -> str:
        return f"{self.backend}: {self.probe}: kernel {self.kernel}, fwc query {self.fwc}"


def disagreements(names: dict[str, str], log_dir: Path, runs: Mapping[str, list[Ruleset]],
                  probes: list[Probe], wanted: Callable[[str], Mapping[int, Outcome]]) \
        -> list[Disagreement]:
    """PROBES through each run's rulesets (RUNS: label -> rulesets); where the kernel
    differs from WANTED(label) (the outcomes by id of that run's probes)."""
    found = []
    for round_, (label, loaded) in enumerate(runs.items()):
        # ids differ per run: no conntrack entry or late receipt of one run counts
        shift = 1000 * round_
        got = kernel_outcomes(names, log_dir / f"{round_}", loaded,
                              [p.shifted(shift) for p in probes])
        want = wanted(label)  # (a probe it has no outcome for is not checked)
        found += [Disagreement(label, p, got[p.ident + shift], want[p.ident])
                  for p in probes if p.ident in want and got[p.ident + shift] != want[p.ident]]
    return found


def run_policy(names: dict[str, str], tmp: Path, seed: int, backends: tuple[Backend, ...],
               policy: Policy, resolver: FragmentResolver, probes: list[Probe],
               topo: Topology) -> list[Disagreement]:
    """PROBES through fw1's rules of each backend; where the kernel and fwc query differ."""
    want = expectations(policy, resolver, probes, topo)
    runs = {str(b): rulesets(policy, b) for b in backends}
    return disagreements(names, tmp / f"s{seed}", runs, probes, lambda _: want)
