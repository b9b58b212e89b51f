"""The uplink drill: a member's first gateway stops answering, its monitor switches uplinks.

No VRRP failover is involved: one member of the cluster, its compiled ruleset,
routes script and uplink monitor (`route ... probe`, docs/language.md "Uplink
failover") in a network namespace with two upstream routers and a server behind
both:

    client ── lan ── member ── uplink  ── r1 ──┐
                           └── uplink2 ── r2 ──┴── server

Router 1 then stops answering (its own iptables drops everything it receives or
forwards; it still answers ARP, as a router whose upstream died does), and the
drill opens a new TCP connection from the client to the server every
`CONNECT_PERIOD` until one arrives through router 2 (the server sees the second
uplink's address: the policy's NAT per uplink): the *switch time*, from the
moment router 1 went silent. Router 1 answers again, and the drill waits until
new connections arrive through it again (the *return time*). Every wait is
bounded by the probe's detection time plus a margin; every namespace and process
goes at the end (by PID, `fwc.lab.netns`).
"""

from __future__ import annotations

import ipaddress
import json
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from fwc.backend.files import FILES, GeneratedFile, Reload
from fwc.install.scripts import in_load_order, ruleset_loader
from fwc.lab.adapter import LabSource
from fwc.lab.netns import PYTHON, LabRefused, LabState, Proc, run, teardown
from fwc.lab.results import UplinkResult, wait_for
from fwc.lab.topology import in_doc_ranges
from fwc.model import Cluster, IPAddress, IPNetwork, Member
from fwc.model.records import dataclass
from fwc.model.topology import route_interface, subnets
from fwc.model.uplinks import Uplink, uplinks

CONNECT_PERIOD = 0.1  # seconds between the client's new connections
CONNECT_TIMEOUT = 0.3  # a connection attempt that takes longer counts as failed
SETTLE_TIMEOUT = 10.0  # the monitor's start, the first connection
PORT = 5001  # the server's port: the policy must forward the client's TCP to it
# The server and the transit links behind the routers (198.18.0.0/15, benchmark range).
SERVER_CANDIDATES = ("198.19.250.10", "198.19.240.10", "198.18.250.10")
TRANSIT_CANDIDATES = (("198.19.251.0/30", "198.19.252.0/30"),
                      ("198.19.241.0/30", "198.19.242.0/30"),
                      ("198.18.251.0/30", "198.18.252.0/30"))

# The server: accept connections on PORT and answer each with the peer's address.
_SERVER = """\
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen(64)
print("listening", flush=True)
while True:
    c, peer = s.accept()
    try:
        c.sendall(peer[0].encode() + b"\\n")
    finally:
        c.close()
"""

# The client: one connection attempt per period for at most DURATION seconds; a JSON line
# per attempt (time, peer address the server saw or an error). Stops at the first answer
# from an address in one of the networks STOP_IN (comma-separated).
_CLIENT = """\
import ipaddress, json, socket, sys, time
host, port, period, timeout, duration, stop_in = sys.argv[1:7]
nets = [ipaddress.ip_network(n) for n in stop_in.split(",") if n]
end = time.monotonic() + float(duration)
while time.monotonic() < end:
    t = time.time()
    try:
        with socket.create_connection((host, int(port)), timeout=float(timeout)) as c:
            c.settimeout(float(timeout))
            seen = c.recv(64).decode().strip()
        print(json.dumps({"t": t, "seen": seen}), flush=True)
        if any(ipaddress.ip_address(seen) in n for n in nets):
            break
    except OSError as exc:
        print(json.dumps({"t": t, "error": type(exc).__name__}), flush=True)
    time.sleep(max(0.0, float(period) - (time.time() - t)))
"""


@dataclass(frozen=True)
class _Plan:
    member: Member
    first: Uplink
    second_interface: str
    second_gateway: IPAddress
    lan: str  # the client's logical interface
    client: ipaddress.IPv4Interface
    client_gateway: IPAddress
    server: IPAddress
    transit: tuple[IPNetwork, IPNetwork]


def drill_plan(source: LabSource) -> _Plan:
    """Which member, uplinks, client and server addresses the drill uses."""
    cluster = source.cluster
    for member in cluster.members:
        for uplink in uplinks(cluster, member):
            route = uplink.route
            if route.family != 4 or route.gateway is None or route.table is not None:
                continue
            other = next(((route_interface(cluster, member, r), r.gateway)
                          for r in uplink.fallbacks if r.gateway is not None
                          and route_interface(cluster, member, r) not in (None, uplink.interface)),
                         None)
            if other is None or other[0] is None or other[1] is None:
                continue
            return _plan_for(cluster, member, uplink, other[0], other[1])
    raise LabRefused("the policy has no probed IPv4 route in the main table with a fallback "
                     "route through another interface: nothing for the uplink drill")


def _plan_for(cluster: Cluster, member: Member, uplink: Uplink, second: str,
              gateway: IPAddress) -> _Plan:
    used = {uplink.interface, second, cluster.sync.link}
    lan = next((name for name, net in subnets(cluster, member, 4)
                if name not in used and member.link(name) is not None), None)
    if lan is None:
        raise LabRefused(f"member '{member.name}' has no IPv4 interface besides its uplinks "
                         "for the drill's client")
    link = member.link(lan)
    assert link is not None
    own = next(a for a in link.addresses if a.version == 4)
    taken = {a.ip for lk in member.links for a in lk.addresses} | {
        v.ip for i in cluster.interfaces for v in i.vips}
    client = next(ipaddress.ip_interface(f"{host}/{own.network.prefixlen}")
                  for host in list(own.network.hosts())[9:] if host not in taken)
    iface = cluster.interface(lan)
    vips = iface.vips_of(4) if iface is not None else ()
    client_gateway = vips[0].ip if vips and vips[0].ip in own.network else own.ip
    nets = [net for _, net in subnets(cluster, member, 4)]
    for server_text, (t1, t2) in zip(SERVER_CANDIDATES, TRANSIT_CANDIDATES, strict=True):
        server = ipaddress.ip_address(server_text)
        transit = (ipaddress.ip_network(t1), ipaddress.ip_network(t2))
        if not any(server in n or transit[0].overlaps(n) or transit[1].overlaps(n)
                   for n in nets):
            break
    else:
        raise LabRefused("the drill's server addresses overlap the member's networks")
    for address in (client.ip, uplink.route.gateway, gateway, server):
        if address is None or not in_doc_ranges(address):
            raise LabRefused(f"{address} is not in a documentation range: the lab sends "
                             "packets only inside those")
    return _Plan(member, uplink, second, gateway, lan, client, client_gateway, server, transit)


class _Lab:
    """The namespaces of one drill: client, member, r1, r2, server."""

    def __init__(self, state: LabState, work: Path) -> None:
        self.state = state
        self.work = work

    def ns(self, short: str) -> str:
        return self.state.ns(short)

    def ip(self, short: str, *args: str) -> None:
        run(["ip", "-n", self.ns(short), *args])

    def exec(self, short: str, *argv: str, check: bool = True, timeout: float = 15.0,
             input: str | None = None) -> str:
        return run(["ip", "netns", "exec", self.ns(short), *argv], check=check,
                   timeout=timeout, input=input).stdout

    def veth(self, a: str, dev_a: str, b: str, dev_b: str) -> None:
        run(["ip", "-n", self.ns(a), "link", "add", dev_a, "type", "veth", "peer", "name",
             dev_b, "netns", self.ns(b)])
        self.ip(a, "link", "set", dev_a, "up")
        self.ip(b, "link", "set", dev_b, "up")

    def spawn(self, name: str, short: str, argv: list[str]) -> Proc:
        (self.work / f"{name}.log").unlink(missing_ok=True)  # each run reads only its own
        return self.state.spawn(name, ["ip", "netns", "exec", self.ns(short), *argv],
                                self.work / f"{name}.log")


@contextmanager
def _namespaces(prefix: str, work: Path) -> Iterator[_Lab]:
    state = LabState(prefix)
    state.create()
    try:
        for short in ("cl", "fw", "r1", "r2", "sv"):
            state.add_netns(state.ns(short))
        yield _Lab(state, work)
    finally:
        teardown(prefix)


def _forwarding(lab: _Lab, short: str) -> None:
    lab.exec(short, "sysctl", "-qw", "net.ipv4.ip_forward=1")


def _build(lab: _Lab, plan: _Plan, source: LabSource) -> None:
    member, first = plan.member, plan.first
    dev = {name: member.device(name) for name in (plan.lan, first.interface,
                                                  plan.second_interface)}
    own = {name: next(a for a in member.link(name).addresses if a.version == 4)  # type: ignore[union-attr]
           for name in dev}
    gw1, gw2 = first.route.gateway, plan.second_gateway
    assert gw1 is not None
    # client -- member
    lab.veth("cl", "eth0", "fw", str(dev[plan.lan]))
    lab.ip("cl", "addr", "add", str(plan.client), "dev", "eth0")
    lab.ip("cl", "route", "add", "default", "via", str(plan.client_gateway))
    lab.ip("fw", "addr", "add", str(own[plan.lan]), "dev", str(dev[plan.lan]))
    # member -- r1, member -- r2
    for name, router, gateway in ((first.interface, "r1", gw1),
                                  (plan.second_interface, "r2", gw2)):
        lab.veth("fw", str(dev[name]), router, "up0")
        lab.ip("fw", "addr", "add", str(own[name]), "dev", str(dev[name]))
        prefix = own[name].network.prefixlen
        lab.ip(router, "addr", "add", f"{gateway}/{prefix}", "dev", "up0")
        _forwarding(lab, router)
    # The VIPs, as keepalived adds them on the master: source NAT may name them.
    for name in dev:
        iface = source.cluster.interface(name)
        for vip in iface.vips_of(4) if iface is not None else ():
            lab.ip("fw", "addr", "add", str(vip), "dev", str(dev[name]))
    # r1 -- server, r2 -- server
    lab.ip("sv", "addr", "add", f"{plan.server}/32", "dev", "lo")
    for router, transit, up in (("r1", plan.transit[0], own[first.interface]),
                                ("r2", plan.transit[1], own[plan.second_interface])):
        hosts = list(transit.hosts())
        lab.veth(router, "down0", "sv", f"to{router}")
        lab.ip(router, "addr", "add", f"{hosts[0]}/{transit.prefixlen}", "dev", "down0")
        lab.ip("sv", "addr", "add", f"{hosts[1]}/{transit.prefixlen}", "dev", f"to{router}")
        lab.ip(router, "route", "add", f"{plan.server}/32", "via", str(hosts[1]))
        # the server answers each uplink's address through that uplink's router
        lab.ip("sv", "route", "add", str(up.network), "via", str(hosts[0]))
    probe = first.route.probe
    assert probe is not None
    if first.pin is not None:
        # A probe target beyond router 1: on the server, reached through router 1 only.
        lab.ip("sv", "addr", "add", f"{probe.target}/32", "dev", "lo")
        lab.ip("r1", "route", "add", f"{probe.target}/32", "via",
               str(list(plan.transit[0].hosts())[1]))
    # The member: its sets and rules, forwarding, its routes script, its monitor.
    files = source.files[member.name]
    for generated in _rulesets(files):
        lab.exec("fw", *ruleset_loader(generated), input=files[generated.name])
    _forwarding(lab, "fw")
    for name in ("fwc-routes.sh", "fwc-uplinks.sh"):
        (lab.work / name).write_text(files[name], encoding="utf-8")
    lab.exec("fw", "sh", str(lab.work / "fwc-routes.sh"))


def _rulesets(files: Mapping[str, str]) -> list[GeneratedFile]:
    """The member's sets and rules among FILES, in the order `fwc install` loads them:
    the ipsets before the rules that name them."""
    return [generated for generated in in_load_order(f for f in FILES if f.name in files)
            if generated.reload in (Reload.IPSETS, Reload.RULES)]


def _default_via(lab: _Lab, gateway: IPAddress) -> bool:
    out = lab.exec("fw", "ip", "-4", "route", "show", "exact", "0.0.0.0/0", "via", str(gateway),
                   check=False)
    return bool(out.strip())


def _records(log: Path) -> list[dict[str, object]]:
    out = []
    for line in log.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def _client(lab: _Lab, plan: _Plan, name: str, duration: float, stop: str,
            nets: dict[str, list[IPNetwork]]) -> list[dict[str, object]]:
    """New connections from the client until one arrives from STOP's networks (bounded)."""
    log = lab.work / f"{name}.log"
    proc = lab.spawn(name, "cl", [PYTHON, "-c", _CLIENT, str(plan.server), str(PORT),
                                  str(CONNECT_PERIOD), str(CONNECT_TIMEOUT), str(duration),
                                  ",".join(str(n) for n in nets[stop])])
    assert proc.popen is not None
    try:
        proc.popen.wait(timeout=duration + 5)
    finally:
        proc.signal(9)
        proc.reap()
        lab.state.forget(proc)
    return _records(log)


def _silence(lab: _Lab, on: bool) -> None:
    """Router 1 drops everything it receives and forwards (it still answers ARP)."""
    action = "-I" if on else "-D"
    for chain in ("INPUT", "FORWARD"):
        lab.exec("r1", "iptables", "-w", action, chain, "-j", "DROP")


def run_uplink_drill(source: LabSource, prefix: str, work: Path) -> UplinkResult:
    """The drill on the first member with a probed route that has a fallback uplink."""
    plan = drill_plan(source)
    probe = plan.first.route.probe
    assert probe is not None
    interval = probe.interval_ms / 1000
    cluster = source.cluster
    nets = {name: [n for i, n in subnets(cluster, plan.member, 4) if i == name]
            for name in (plan.first.interface, plan.second_interface)}

    def via(record: dict[str, object], name: str) -> bool:
        seen = record.get("seen")
        try:
            address = ipaddress.ip_address(str(seen))
        except ValueError:
            return False
        return any(address in n for n in nets[name])

    result = UplinkResult(
        plan.member.name, f"{plan.first.interface} via {plan.first.route.gateway}",
        f"{plan.second_interface} via {plan.second_gateway}",
        detection_s=probe.detection_ms / 1000, restore_s=interval * (probe.rise + 1))
    work.mkdir(parents=True, exist_ok=True)
    with _namespaces(prefix, work) as lab:
        _build(lab, plan, source)
        lab.spawn("server", "sv", [PYTHON, "-c", _SERVER, str(plan.server), str(PORT)])
        monitor = lab.spawn("monitor", "fw", ["sh", str(work / "fwc-uplinks.sh")])
        first, second = plan.first.interface, plan.second_interface
        # Baseline: through uplink 1 (the monitor must not have removed it).
        seen = _client(lab, plan, "baseline", SETTLE_TIMEOUT, first, nets)
        result.baseline = next((str(r["seen"]) for r in seen if "seen" in r), "")
        if not any(via(r, first) for r in seen):
            result.notes.append(f"before the failure the server saw {result.baseline or 'nothing'}"
                                f", not an address of '{first}': does the policy forward the "
                                f"client's tcp/{PORT} with source NAT per uplink?")
            return result
        # Let the monitor see a few good probes, then silence router 1.
        time.sleep(interval * (probe.rise + 1))
        _silence(lab, True)
        failed_at = time.time()
        bound = result.detection_s + 5.0
        seen = _client(lab, plan, "switch", bound, second, nets)
        through = [r for r in seen if via(r, second)]
        if through:
            result.switch_s = round(float(through[0]["t"]) - failed_at, 3)  # type: ignore[arg-type]
        result.failed_connections = sum(1 for r in seen if "error" in r)
        gateway = plan.first.route.gateway
        assert gateway is not None
        result.route_removed = not _default_via(lab, gateway)
        # The routes script runs again during the outage (an install): the monitor must take
        # the re-added route out again within a round or two.
        # Its `ip -batch` succeeding means the route was added; the monitor may take it out
        # again before the first look, which is what is measured.
        rerun = run(["ip", "netns", "exec", lab.ns("fw"), "sh", str(work / "fwc-routes.sh")],
                    check=False)
        took = wait_for(lambda: not _default_via(lab, gateway), 2 * interval + 2.0)
        if rerun.returncode != 0:
            result.notes.append(f"fwc-routes.sh failed again: {rerun.stderr.strip()}")
        else:
            result.reapplied_s = None if took is None else round(took, 3)
        # Router 1 answers again: new connections go back to uplink 1.
        _silence(lab, False)
        back_at = time.time()
        seen = _client(lab, plan, "return", result.restore_s + 5.0, first, nets)
        back = [r for r in seen if via(r, first)]
        if back:
            result.return_s = round(float(back[0]["t"]) - back_at, 3)  # type: ignore[arg-type]
        result.route_back = _default_via(lab, gateway)
        if not monitor.alive():
            result.notes.append("the uplink monitor died during the drill")
        log = (work / "monitor.log").read_text(encoding="utf-8", errors="replace")
        result.notes += [line for line in log.splitlines() if line.strip()][:10]
    return result

