"""Echo server and probe clients, run *inside* lab namespaces.

This file is executed as a plain script (``python3 probe.py ...``) through
nsenter, so it imports only the standard library: a probe must not depend on
how fwc happens to be installed.

Commands:
  serve   --tcp PORT... --udp PORT... [--lifetime S]   echo lines / datagrams
  probe   --src A --dst B --proto tcp|udp|icmp [--port P] [--timeout S]
  stream  --src A --dst B --port P [--interval S] [--duration S]

``probe`` prints one JSON object. ``stream`` prints one line per echo
(``E seq t_sent t_recv``, CLOCK_MONOTONIC, shared by all processes on the
host) and a final ``END reason``, so the lab can compute gaps from the log.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import os
import select
import signal
import socket
import struct
import sys
import threading
import time


def _family(addr: str) -> int:
    return socket.AF_INET6 if ipaddress.ip_address(addr).version == 6 else socket.AF_INET


# ---------------------------------------------------------------- server
def _echo_conn(conn: socket.socket, deadline: float) -> None:
    conn.settimeout(1.0)
    with conn:
        while time.monotonic() < deadline:
            try:
                data = conn.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            if not data:
                return
            with contextlib.suppress(OSError):
                conn.sendall(data)


def _bind(kind: int, port: int, family: int) -> socket.socket:
    sock = socket.socket(family, kind)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    sock.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", port))
    if kind == socket.SOCK_STREAM:
        sock.listen(64)
    sock.settimeout(1.0)
    return sock


def _tcp_listener(sock: socket.socket, deadline: float) -> None:
    while time.monotonic() < deadline:
        try:
            conn, _ = sock.accept()
        except TimeoutError:
            continue
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        threading.Thread(target=_echo_conn, args=(conn, deadline), daemon=True).start()


def _udp_listener(sock: socket.socket, deadline: float) -> None:
    while time.monotonic() < deadline:
        try:
            data, peer = sock.recvfrom(4096)
        except TimeoutError:
            continue
        with contextlib.suppress(OSError):
            sock.sendto(data, peer)


def serve(args: argparse.Namespace) -> int:
    deadline = time.monotonic() + args.lifetime
    threads = []
    # Bind everything before saying "serving", so that line means ready.
    for kind, ports, loop in (
        (socket.SOCK_STREAM, args.tcp, _tcp_listener),
        (socket.SOCK_DGRAM, args.udp, _udp_listener),
    ):
        for port in ports:
            for fam in (socket.AF_INET, socket.AF_INET6):
                sock = _bind(kind, port, fam)
                threads.append(threading.Thread(target=loop, args=(sock, deadline), daemon=True))
    for t in threads:
        t.start()
    print(f"serving tcp {args.tcp} udp {args.udp}", flush=True)
    while time.monotonic() < deadline and any(t.is_alive() for t in threads):
        time.sleep(0.5)
    return 0


# ---------------------------------------------------------------- probes
def _probe_tcp(src: str, dst: str, port: int, timeout: float) -> dict[str, object]:
    sock = socket.socket(_family(dst), socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        if src:
            sock.bind((src, 0))
        sock.connect((dst, port))
        sock.sendall(b"fwc-probe\n")
        data = sock.recv(64)
        ok = data.startswith(b"fwc-probe")
        return {"passed": ok, "how": "echoed" if ok else "connected, no echo"}
    except TimeoutError:
        return {"passed": False, "how": "timeout (dropped)"}
    except ConnectionRefusedError:
        return {"passed": False, "how": "refused (reset)"}
    except OSError as exc:
        return {"passed": False, "how": f"error: {exc.strerror or exc}"}
    finally:
        sock.close()


def _probe_udp(src: str, dst: str, port: int, timeout: float) -> dict[str, object]:
    sock = socket.socket(_family(dst), socket.SOCK_DGRAM)
    sock.settimeout(timeout)
    try:
        if src:
            sock.bind((src, 0))
        sock.connect((dst, port))
        sock.send(b"fwc-probe\n")
        data = sock.recv(64)
        return {"passed": data.startswith(b"fwc-probe"), "how": "echoed"}
    except TimeoutError:
        return {"passed": False, "how": "timeout (dropped)"}
    except OSError as exc:
        return {"passed": False, "how": f"error: {exc.strerror or exc}"}
    finally:
        sock.close()


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


def _probe_icmp(src: str, dst: str, timeout: float) -> dict[str, object]:
    v6 = _family(dst) == socket.AF_INET6
    if v6:
        sock = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
    else:
        sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    ident = os.getpid() & 0xFFFF
    kind, reply = (128, 129) if v6 else (8, 0)
    payload = b"fwc-probe"
    header = struct.pack("!BBHHH", kind, 0, 0, ident, 1)
    # The kernel fills the ICMPv6 checksum (it needs the pseudo-header).
    csum = 0 if v6 else _checksum(header + payload)
    packet = struct.pack("!BBHHH", kind, 0, csum, ident, 1) + payload
    deadline = time.monotonic() + timeout
    try:
        if src:
            sock.bind((src, 0))
        sock.sendto(packet, (dst, 0))
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return {"passed": False, "how": "timeout (dropped)"}
            ready, _, _ = select.select([sock], [], [], left)
            if not ready:
                continue
            data, peer = sock.recvfrom(2048)
            icmp = data if v6 else data[(data[0] & 0x0F) * 4 :]
            if len(icmp) >= 8 and icmp[0] == reply and struct.unpack("!H", icmp[4:6])[0] == ident:
                return {"passed": True, "how": "echo reply"}
    except OSError as exc:
        return {"passed": False, "how": f"error: {exc.strerror or exc}"}
    finally:
        sock.close()


def probe(args: argparse.Namespace) -> int:
    start = time.monotonic()
    if args.proto == "tcp":
        result = _probe_tcp(args.src, args.dst, args.port, args.timeout)
    elif args.proto == "udp":
        result = _probe_udp(args.src, args.dst, args.port, args.timeout)
    else:
        result = _probe_icmp(args.src, args.dst, args.timeout)
    result["seconds"] = round(time.monotonic() - start, 3)
    print(json.dumps(result), flush=True)
    return 0


# ---------------------------------------------------------------- stream
def stream(args: argparse.Namespace) -> int:
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    sock = socket.socket(_family(args.dst), socket.SOCK_STREAM)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.settimeout(args.connect_timeout)
    try:
        sock.bind((args.src, 0))
        sock.connect((args.dst, args.port))
    except OSError as exc:
        print(f"END connect-failed {exc}", flush=True)
        return 1
    local = sock.getsockname()
    print(f"CONNECTED {local[0]} {local[1]} {time.monotonic():.6f}", flush=True)
    sock.setblocking(False)
    deadline = time.monotonic() + args.duration
    sent: dict[int, float] = {}
    seq = 0
    expect = 0
    buf = b""
    next_send = time.monotonic()
    reason = "duration"
    while True:
        now = time.monotonic()
        if stop.is_set():
            reason = "stopped"
            break
        if now >= deadline:
            break
        if now >= next_send:
            try:
                sock.send(f"{seq}\n".encode())
                sent[seq] = now
                seq += 1
            except BlockingIOError:
                pass
            except OSError as exc:
                reason = f"send-error {exc.strerror or exc}"
                break
            next_send += args.interval
        ready, _, _ = select.select(
            [sock], [], [], max(0.0, min(next_send, deadline) - time.monotonic())
        )
        if not ready:
            continue
        try:
            data = sock.recv(4096)
        except BlockingIOError:
            continue
        except OSError as exc:
            reason = f"recv-error {exc.strerror or exc}"
            break
        if not data:
            reason = "closed-by-peer"
            break
        buf += data
        recv_t = time.monotonic()
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            got = int(line)
            if got != expect:
                print(f"ORDER expected {expect} got {got}", flush=True)
            expect = got + 1
            print(f"E {got} {sent.get(got, 0.0):.6f} {recv_t:.6f}", flush=True)
    print(f"END {reason} sent={seq} echoed={expect}", flush=True)
    sock.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fwc-lab-probe")
    sub = parser.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--tcp", type=int, nargs="*", default=[])
    s.add_argument("--udp", type=int, nargs="*", default=[])
    s.add_argument("--lifetime", type=float, default=1800.0)
    p = sub.add_parser("probe")
    p.add_argument("--src", required=True)
    p.add_argument("--dst", required=True)
    p.add_argument("--proto", choices=("tcp", "udp", "icmp"), required=True)
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--timeout", type=float, default=1.5)
    c = sub.add_parser("stream")
    c.add_argument("--src", required=True)
    c.add_argument("--dst", required=True)
    c.add_argument("--port", type=int, required=True)
    c.add_argument("--interval", type=float, default=0.1)
    c.add_argument("--duration", type=float, default=120.0)
    c.add_argument("--connect-timeout", type=float, default=3.0)
    args = parser.parse_args(argv)
    return {"serve": serve, "probe": probe, "stream": stream}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
