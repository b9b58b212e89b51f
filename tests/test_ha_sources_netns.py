"""The automatic VRRP and conntrackd rules on a real kernel: only the peer's adverts with
TTL (hop limit) 255 and only the peer's states come in (root; runs in CI).

Member fw1 of the checkkit policy (VIPs on lan and uplink, IPv6 on lan, multicast FTFW
sync) gets its compiled rules, iptables and nftables alike, in a namespace whose three
devices are veths to a second namespace standing for the segments. That one sends
hand-made frames (AF_PACKET: any source address, any TTL) to the VRRP groups and to
conntrackd's group; a receiver in fw1's namespace joins the groups on their devices as
keepalived and conntrackd do and logs what its sockets get, which is what passed INPUT.
The peer's adverts and states must arrive; a stranger's on the segment (another
address, or the peer's address of another segment), an advert with TTL 64 (sent from
off the link, or by a spoofer) and an IPv6 advert from a global address must not.
`fwc query`'s engine must say the same for each (the TTL cases aside: it answers for
adverts as keepalived sends them, TTL 255). A failover with these rules is the lab's
(tests/test_lab.py, `fwc lab`).

Bounded: every frame is sent once, the receiver stops at most RECEIVE_S after it is
ready; the namespaces (and the veths in them) are deleted and the receiver stopped by
its PID in finally blocks.
"""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from checkkit import BASE, run
from conftest import skip_or_fail_without_root

from fwc.analysis.engine import MemberView, TrafficClass, classify
from fwc.backend.output import compile_policy
from fwc.model import PortRange, ServiceMatch
from fwc.model.addresses import AddressSet

RECEIVE_S = 8.0
VRRP = 112
UDP = 17
SYNC_PORT = 3780
# fw1's devices (checkkit.BASE) and the addresses the receiver's namespace gives them
DEVICES = {"eth0": ("lan", ("192.0.2.1/24", "2001:db8:1::1/64")),
           "eth1": ("uplink", ("198.51.100.1/24",)),
           "eth2": ("sync", ("203.0.113.1/24",))}


@dataclass(frozen=True)
class Probe:
    """One frame sent to fw1 on DEVICE, and whether INPUT must let it in."""

    name: str
    device: str
    source: str
    destination: str
    protocol: int
    ttl: int
    passes: bool

    @property
    def genuine_ttl(self) -> bool:
        """TTL as the daemon sends it: VRRP 255, conntrackd's multicast 1."""
        return self.ttl == (255 if self.protocol == VRRP else 1)


PROBES = (
    Probe("peer advert lan", "eth0", "192.0.2.2", "224.0.0.18", VRRP, 255, True),
    Probe("stranger advert lan", "eth0", "192.0.2.9", "224.0.0.18", VRRP, 255, False),
    Probe("peer address ttl 64 lan", "eth0", "192.0.2.2", "224.0.0.18", VRRP, 64, False),
    Probe("peer advert uplink", "eth1", "198.51.100.2", "224.0.0.18", VRRP, 255, True),
    Probe("stranger advert uplink", "eth1", "198.51.100.9", "224.0.0.18", VRRP, 255, False),
    Probe("peer's lan address on uplink", "eth1", "192.0.2.2", "224.0.0.18", VRRP, 255,
          False),
    Probe("peer states", "eth2", "203.0.113.2", "225.0.0.50", UDP, 1, True),
    Probe("stranger states", "eth2", "203.0.113.9", "225.0.0.50", UDP, 1, False),
    Probe("peer advert v6", "eth0", "fe80::2", "ff02::12", VRRP, 255, True),
    Probe("link-local hop limit 64 v6", "eth0", "fe80::2", "ff02::12", VRRP, 64, False),
    Probe("global source v6", "eth0", "2001:db8:1::9", "ff02::12", VRRP, 255, False),
)

# Joins the groups on fw1's devices (as keepalived and conntrackd) and prints one JSON
# line per packet a socket gets: the probe's name (its payload), source and TTL.
RECEIVER = textwrap.dedent("""
    import json, select, socket, struct, sys, time
    def index(dev):
        return socket.if_nametoindex(dev)
    v4 = socket.socket(socket.AF_INET, socket.SOCK_RAW, 112)
    for dev in ("eth0", "eth1"):
        v4.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, struct.pack(
            "4s4si", socket.inet_aton("224.0.0.18"), b"\\0" * 4, index(dev)))
    sync = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sync.bind(("0.0.0.0", 3780))
    sync.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, struct.pack(
        "4s4si", socket.inet_aton("225.0.0.50"), b"\\0" * 4, index("eth2")))
    v6 = socket.socket(socket.AF_INET6, socket.SOCK_RAW, 112)
    v6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP,
                  socket.inet_pton(socket.AF_INET6, "ff02::12") + struct.pack("I", index("eth0")))
    v6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVHOPLIMIT, 1)
    print("ready", flush=True)
    end = time.monotonic() + float(sys.argv[1])
    while (left := end - time.monotonic()) > 0:
        for sock in select.select([v4, sync, v6], [], [], left)[0]:
            if sock is v4:
                data = sock.recv(2048)
                got = (data[20:].decode(), socket.inet_ntoa(data[12:16]), data[8])
            elif sock is sync:
                data, (source, _) = sock.recvfrom(2048)
                got = (data.decode(), source, None)
            else:
                data, ancillary, _, (source, *_) = sock.recvmsg(2048, 64)
                hops = [struct.unpack("i", d)[0] for level, kind, d in ancillary
                        if kind == socket.IPV6_HOPLIMIT]
                got = (data.decode(), source.split("%")[0], hops[0] if hops else None)
            print(json.dumps(got), flush=True)
""")


def _checksum(data: bytes) -> int:
    total = sum(int.from_bytes(data[i:i + 2], "big") for i in range(0, len(data), 2))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def frame(probe: Probe) -> bytes:
    """The IP packet of PROBE (header and payload), its payload the probe's name."""
    payload = probe.name.encode()
    if probe.protocol == UDP:  # an IPv4 UDP checksum of 0: none
        payload = (40000).to_bytes(2, "big") + SYNC_PORT.to_bytes(2, "big") \
            + (8 + len(payload)).to_bytes(2, "big") + b"\0\0" + payload
    source = ipaddress.ip_address(probe.source)
    destination = ipaddress.ip_address(probe.destination)
    if source.version == 6:
        return bytes([0x60, 0, 0, 0]) + len(payload).to_bytes(2, "big") \
            + bytes([probe.protocol, probe.ttl]) + source.packed + destination.packed + payload
    header = bytearray(bytes([0x45, 0]) + (20 + len(payload)).to_bytes(2, "big")
                       + b"\0\0\0\0" + bytes([probe.ttl, probe.protocol]) + b"\0\0"
                       + source.packed + destination.packed)
    header[10:12] = _checksum(bytes(header)).to_bytes(2, "big")
    return bytes(header) + payload


def multicast_mac(group: str) -> bytes:
    address = ipaddress.ip_address(group)
    if address.version == 6:
        return b"\x33\x33" + address.packed[-4:]
    return b"\x01\x00\x5e" + bytes([address.packed[1] & 0x7F]) + address.packed[2:]


SENDER = textwrap.dedent("""
    import json, socket, sys
    for device, ethertype, mac, packet in json.loads(sys.stdin.read()):
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ethertype))
        sock.sendto(bytes.fromhex(packet), (device, ethertype, 0, 0, bytes.fromhex(mac)))
        sock.close()
""")


def _ip(*argv: str) -> None:
    subprocess.run(["ip", *argv], check=True, capture_output=True, timeout=30)


@contextmanager
def segments() -> Iterator[tuple[str, str]]:
    """(fw1's namespace, the segments' namespace), each device of fw1 a veth to the other
    (named seg0, seg1, seg2 there)."""
    prefix = f"fwchs{os.getpid()}"
    fw, seg = f"{prefix}f", f"{prefix}s"
    made: list[str] = []
    try:
        for name in (fw, seg):
            _ip("netns", "add", name)
            made.append(name)
            _ip("-n", name, "link", "set", "lo", "up")
        # strict reverse-path filtering would drop the wrong-segment probe before INPUT
        for key in ("all", "default"):
            subprocess.run(["ip", "netns", "exec", fw, "sysctl", "-qw",
                            f"net.ipv4.conf.{key}.rp_filter=0"], check=True, timeout=30)
        for index, (device, (_, addresses)) in enumerate(DEVICES.items()):
            _ip("link", "add", device, "netns", fw, "type", "veth", "peer", "name",
                f"seg{index}", "netns", seg)
            for address in addresses:
                _ip("-n", fw, "addr", "add", address, "dev", device, "nodad")
            _ip("-n", fw, "link", "set", device, "up")
            _ip("-n", seg, "link", "set", f"seg{index}", "up")
        yield fw, seg
    finally:
        for name in made:
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30)


def _compiled(tmp_path: Path, backend: str) -> tuple[dict[str, str], object]:
    text = BASE if backend == "iptables" else \
        BASE.replace("cluster edge {\n", "cluster edge {\n    backend nftables\n")
    analysis = run(tmp_path, text)
    assert not [d for d in analysis.diagnostics if d.is_error], analysis.diagnostics
    assert analysis.policy is not None
    files = {f.path: f.content.decode() for r in compile_policy(analysis.policy)
             for f in r.files}
    return files, analysis.policy.clusters[0]


def _load(fw: str, files: dict[str, str], backend: str, tmp_path: Path) -> None:
    loads = [("nft", "-f", "fw1/nftables.nft")] if backend == "nftables" else \
        [("iptables-restore", "fw1/iptables.rules"), ("ip6tables-restore", "fw1/ip6tables.rules")]
    for tool, *rest in loads:
        path = tmp_path / rest[-1].replace("/", "-")
        path.write_text(files[rest[-1]])
        argv = ["ip", "netns", "exec", fw, tool, *rest[:-1]]
        if tool == "nft":
            done = subprocess.run([*argv, str(path)], capture_output=True, text=True,
                                  timeout=60)
        else:
            done = subprocess.run(argv, stdin=path.open(), capture_output=True, text=True,
                                  timeout=60)
        assert done.returncode == 0, (tool, done.stderr)


def _received(fw: str, seg: str) -> dict[str, tuple[str, int | None]]:
    """{probe name: (source, TTL)} of every probe a socket of fw1's got."""
    receiver = subprocess.Popen(
        ["ip", "netns", "exec", fw, sys.executable, "-c", RECEIVER, str(RECEIVE_S)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert receiver.stdout is not None
        assert receiver.stdout.readline().strip() == "ready", receiver.stderr
        frames = [[f"seg{list(DEVICES).index(p.device)}",
                   0x86DD if ":" in p.source else 0x0800,
                   multicast_mac(p.destination).hex(), frame(p).hex()] for p in PROBES]
        sent = subprocess.run(["ip", "netns", "exec", seg, sys.executable, "-c", SENDER],
                              input=json.dumps(frames), capture_output=True, text=True,
                              timeout=30)
        assert sent.returncode == 0, sent.stderr
        out, err = receiver.communicate(timeout=RECEIVE_S + 30)
        assert receiver.returncode == 0, err
    finally:
        if receiver.poll() is None:
            receiver.kill()
            receiver.wait(timeout=30)
    got: dict[str, tuple[str, int | None]] = {}
    for line in out.splitlines():
        name, source, ttl = json.loads(line)
        got[name] = (source, ttl)
    return got


def _engine_says(cluster: object, probe: Probe) -> str:
    """What `fwc query`'s engine does on fw1 with PROBE (as keepalived/conntrackd send it)."""
    fw1 = cluster.members[0]  # type: ignore[attr-defined]
    services = (ServiceMatch("udp", UDP, (PortRange(SYNC_PORT, SYNC_PORT),)),) \
        if probe.protocol == UDP else (ServiceMatch("proto", probe.protocol),)
    traffic = TrafficClass(AddressSet.of(ipaddress.ip_address(probe.source)),
                           AddressSet.of(ipaddress.ip_address(probe.destination)), services,
                           DEVICES[probe.device][0])
    pieces = classify(MemberView(cluster, fw1), traffic)  # type: ignore[arg-type]
    verdicts = {str(p.verdict) for p in pieces}
    assert len(verdicts) == 1, (probe.name, [p.decided_by for p in pieces])
    return verdicts.pop()


@pytest.mark.parametrize("backend", ["iptables", "nftables"])
def test_only_the_peers_adverts_and_states_pass_input(tmp_path, backend):
    skip_or_fail_without_root()
    files, cluster = _compiled(tmp_path, backend)
    with segments() as (fw, seg):
        _load(fw, files, backend, tmp_path)
        time.sleep(0.2)  # the receiver's joins and the veths' carrier
        got = _received(fw, seg)
    passed = sorted(p.name for p in PROBES if p.name in got)
    assert passed == sorted(p.name for p in PROBES if p.passes), got
    for probe in PROBES:
        if probe.name in got and probe.protocol == VRRP:
            assert got[probe.name][1] == 255, (probe.name, got[probe.name])
        if probe.genuine_ttl:
            expected = "accept" if probe.passes else "drop"
            assert _engine_says(cluster, probe) == expected, probe.name
