"""Batch probes and a receipt listener for tests/test_kernel_oracle.py, run inside
network namespaces as a plain script (standard library only).

    python3 kernel_probe.py serve --tcp P... --udp P... --log FILE --lifetime S
    python3 kernel_probe.py probe --timeout S  < probes.json

`serve` listens on every given TCP and UDP port (IPv4 and IPv6), and on raw ICMP,
ICMPv6 and GRE sockets, and appends one JSON line per probe it receives to FILE:
{"id", "src", "dst", "port"} as the receiving kernel saw them (after any NAT). It
prints READY once everything is bound and stops when its standard input closes or
after its lifetime, so that a test that dies leaves no listener behind.

`probe` reads a JSON list of {"id", "proto" (tcp|udp|icmp|gre), "src", "dst", "port"}
and sends them all at once, each from its own socket bound to "src" with IP(V6)_RECVERR
on, so that every ICMP error the path sends back (host unreachable included) reaches
the socket. It prints {id: [outcome, errno name]}: "connected" (a TCP handshake
completed), "refused" (a reset or an ICMP error: the errno names which), "sent" (no
answer by the deadline, or EPERM: the sender's own OUTPUT chain dropped it) or "error"
(the probe could not be sent). Delivery itself is
the listener's word: a probe is delivered when the receiving side logged its id.
"""

from __future__ import annotations

import argparse
import errno
import ipaddress
import json
import selectors
import socket
import struct
import sys
import time

MAGIC = b"fwcK"
GRE_HEADER = struct.pack("!HH", 0, 0x0800)  # version 0, no key: a plain GRE packet
IPV6_RECVPKTINFO = getattr(socket, "IPV6_RECVPKTINFO", 49)
IPV6_PKTINFO = getattr(socket, "IPV6_PKTINFO", 50)
IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)
IPV6_RECVERR = getattr(socket, "IPV6_RECVERR", 25)
IP_RECVERR = getattr(socket, "IP_RECVERR", 11)


def _family(address: str) -> int:
    return socket.AF_INET6 if ipaddress.ip_address(address).version == 6 else socket.AF_INET


def _payload_id(data: bytes) -> int | None:
    at = data.find(MAGIC)
    if at < 0:
        return None
    digits = data[at + len(MAGIC):].split(b"\n")[0]
    return int(digits) if digits.isdigit() else None


# ---------------------------------------------------------------- listener
class Receipts:
    def __init__(self, path: str) -> None:
        self.out = open(path, "a", encoding="utf-8")  # noqa: SIM115 (closed at exit)

    def log(self, ident: int | None, src: str, dst: str, port: int) -> None:
        if ident is None:
            return
        self.out.write(json.dumps({"id": ident, "src": src, "dst": dst, "port": port}) + "\n")
        self.out.flush()


def _bound(kind: int, family: int, port: int, proto: int = 0) -> socket.socket:
    sock = socket.socket(family, kind, proto)
    sock.setblocking(False)
    if kind != socket.SOCK_RAW:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6:
        if kind != socket.SOCK_RAW:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVPKTINFO, 1)
    elif kind == socket.SOCK_DGRAM:
        sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
    if kind != socket.SOCK_RAW:
        sock.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", port))
    if kind == socket.SOCK_STREAM:
        sock.listen(256)
    return sock


def _local_of(ancillary: list, family: int) -> str:
    for level, kind, data in ancillary:
        if family == socket.AF_INET6 and level == socket.IPPROTO_IPV6 and kind == IPV6_PKTINFO:
            return socket.inet_ntop(socket.AF_INET6, data[:16])
        if family == socket.AF_INET and level == socket.IPPROTO_IP and kind == IP_PKTINFO:
            return socket.inet_ntop(socket.AF_INET, data[8:12])
    return "?"


def _on_datagram(sock: socket.socket, receipts: Receipts) -> None:
    family, kind, proto = sock.family, sock.type, sock.proto
    try:
        data, ancillary, _, peer = sock.recvmsg(4096, 256)
    except OSError:
        return
    if kind == socket.SOCK_DGRAM:
        local = _local_of(ancillary, family)
        receipts.log(_payload_id(data), peer[0], local, sock.getsockname()[1])
        return
    if family == socket.AF_INET:  # raw IPv4 sockets see the IP header
        header = (data[0] & 0x0F) * 4
        src, dst = socket.inet_ntop(family, data[12:16]), socket.inet_ntop(family, data[16:20])
        data = data[header:]
    else:
        src, dst = peer[0], _local_of(ancillary, family)
    echo_request = data[:1] in (b"\x08", b"\x80")
    if proto in (socket.IPPROTO_ICMP, socket.IPPROTO_ICMPV6) and not echo_request:
        return  # only echo requests are probes
    receipts.log(_payload_id(data), src, dst, 0)


def serve(args: argparse.Namespace) -> int:
    receipts = Receipts(args.log)
    selector = selectors.DefaultSelector()
    read = selectors.EVENT_READ
    for family in (socket.AF_INET, socket.AF_INET6):
        for port in args.tcp:
            selector.register(_bound(socket.SOCK_STREAM, family, port), read, "accept")
        for port in args.udp:
            selector.register(_bound(socket.SOCK_DGRAM, family, port), read, "dgram")
        icmp = socket.IPPROTO_ICMPV6 if family == socket.AF_INET6 else socket.IPPROTO_ICMP
        for proto in (icmp, socket.IPPROTO_GRE):
            selector.register(_bound(socket.SOCK_RAW, family, 0, proto), read, "dgram")
    selector.register(sys.stdin, selectors.EVENT_READ, "stdin")
    print("READY", flush=True)
    deadline = time.monotonic() + args.lifetime
    while time.monotonic() < deadline:
        for key, _ in selector.select(timeout=0.5):
            sock = key.fileobj
            if key.data == "stdin":
                if not sys.stdin.readline():
                    return 0
            elif key.data == "accept":
                try:
                    conn, _ = sock.accept()  # type: ignore[union-attr]
                except OSError:
                    continue
                conn.setblocking(False)
                selector.register(conn, selectors.EVENT_READ, "stream")
            elif key.data == "stream":
                _on_stream(selector, sock, receipts)  # type: ignore[arg-type]
            else:
                _on_datagram(sock, receipts)  # type: ignore[arg-type]
    return 0


def _on_stream(selector: selectors.BaseSelector, conn: socket.socket, receipts: Receipts) -> None:
    try:
        data = conn.recv(256)
        peer, local = conn.getpeername(), conn.getsockname()
    except OSError:
        data = b""
    if data:
        receipts.log(_payload_id(data), peer[0], local[0], local[1])
    selector.unregister(conn)
    conn.close()


# ---------------------------------------------------------------- prober
def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


def _echo(ident: int, v6: bool) -> bytes:
    payload = MAGIC + str(ident).encode() + b"\n"
    kind = 128 if v6 else 8
    header = struct.pack("!BBHHH", kind, 0, 0, ident & 0xFFFF, 1)
    checksum = 0 if v6 else _checksum(header + payload)  # the kernel fills ICMPv6's
    return struct.pack("!BBHHH", kind, 0, checksum, ident & 0xFFFF, 1) + payload


def _socket_for(probe: dict) -> socket.socket:
    family = _family(probe["dst"])
    v6 = family == socket.AF_INET6
    kind, proto = {"tcp": (socket.SOCK_STREAM, 0), "udp": (socket.SOCK_DGRAM, 0),
                   "gre": (socket.SOCK_RAW, socket.IPPROTO_GRE),
                   "icmp": (socket.SOCK_RAW,
                            socket.IPPROTO_ICMPV6 if v6 else socket.IPPROTO_ICMP)}[probe["proto"]]
    sock = socket.socket(family, kind, proto)
    # Every ICMP error is queued on the socket, not only the "fatal" ones; and TCP keeps
    # one that arrives while the socket is locked by its own connect() (the veth path
    # answers within it) only there, as a soft error connect() does not report.
    sock.setsockopt(*((socket.IPPROTO_IPV6, IPV6_RECVERR) if v6 else
                      (socket.IPPROTO_IP, IP_RECVERR)), 1)
    sock.bind((probe["src"], 0))
    sock.setblocking(False)
    return sock


def _start(probe: dict, sock: socket.socket) -> None:
    payload = MAGIC + str(probe["id"]).encode() + b"\n"
    port = probe.get("port", 0) if probe["proto"] in ("tcp", "udp") else 0
    if probe["proto"] == "tcp":
        code = sock.connect_ex((probe["dst"], port))
        if code not in (0, errno.EINPROGRESS):
            raise OSError(code, errno.errorcode.get(code, str(code)))
        return
    sock.connect((probe["dst"], port))
    if probe["proto"] == "icmp":
        payload = _echo(probe["id"], sock.family == socket.AF_INET6)
    elif probe["proto"] == "gre":
        payload = GRE_HEADER + payload
    sock.send(payload)


def _queued_error(sock: socket.socket) -> int | None:
    """The errno of the first ICMP error on SOCK's error queue (IP(V6)_RECVERR), if any."""
    try:
        _, ancillary, _, _ = sock.recvmsg(512, 512, socket.MSG_ERRQUEUE | socket.MSG_DONTWAIT)
    except OSError:
        return None
    for _, _, data in ancillary:
        if len(data) >= 4:
            return struct.unpack("=I", data[:4])[0]  # sock_extended_err.ee_errno
    return None


def _refused(code: int) -> tuple[str, str]:
    return ("refused", errno.errorcode.get(code, str(code)))


def _settle(probe: dict, sock: socket.socket) -> tuple[str, str] | None:
    """The outcome once SOCK is ready, or None to go on waiting (a datagram echo)."""
    if probe["proto"] == "tcp":
        code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if code:
            return _refused(code)
        queued = _queued_error(sock)
        if queued is not None:
            return _refused(queued)
        try:
            sock.getpeername()
        except OSError:
            return None  # still connecting
        sock.send(MAGIC + str(probe["id"]).encode() + b"\n")
        return ("connected", "")
    queued = _queued_error(sock)
    if queued is not None:
        return _refused(queued)
    try:
        sock.recv(4096)  # an echo reply or the listener's nothing: not an outcome
    except BlockingIOError:
        return None
    except OSError as exc:
        return ("refused", errno.errorcode.get(exc.errno or 0, str(exc.errno)))
    return None


def probe(args: argparse.Namespace) -> int:
    probes = json.load(sys.stdin)
    selector = selectors.DefaultSelector()
    outcomes: dict[int, tuple[str, str]] = {}
    sockets = []
    for item in probes:
        try:
            sock = _socket_for(item)
            sockets.append(sock)
            _start(item, sock)
        except OSError as exc:
            if exc.errno != errno.EPERM:
                outcomes[item["id"]] = ("error", errno.errorcode.get(exc.errno or 0, str(exc)))
                continue
            # EPERM: the sender's own OUTPUT chain dropped the packet; a REJECT there
            # also sends the socket its ICMP error or reset, which is waited for
            outcomes[item["id"]] = ("sent", "EPERM")
        events = selectors.EVENT_WRITE if item["proto"] == "tcp" else selectors.EVENT_READ
        selector.register(sock, events, item)
    deadline = time.monotonic() + args.timeout
    while len(selector.get_map()) and (left := deadline - time.monotonic()) > 0:
        for key, _ in selector.select(timeout=left):
            settled = _settle(key.data, key.fileobj)  # type: ignore[arg-type]
            if settled is not None:
                outcomes[key.data["id"]] = settled
                selector.unregister(key.fileobj)
    for key in list(selector.get_map().values()):
        queued = _queued_error(key.fileobj)  # type: ignore[arg-type]
        if queued is not None:
            outcomes[key.data["id"]] = _refused(queued)
        else:
            outcomes.setdefault(key.data["id"], ("sent", ""))
    time.sleep(0.1)  # the connected probes' ids reach their listeners before the close
    for sock in sockets:
        sock.close()
    print(json.dumps(outcomes))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--tcp", type=int, nargs="*", default=[])
    s.add_argument("--udp", type=int, nargs="*", default=[])
    s.add_argument("--log", required=True)
    s.add_argument("--lifetime", type=float, default=120.0)
    p = sub.add_parser("probe")
    p.add_argument("--timeout", type=float, default=1.0)
    args = parser.parse_args()
    return serve(args) if args.cmd == "serve" else probe(args)


if __name__ == "__main__":
    sys.exit(main())
