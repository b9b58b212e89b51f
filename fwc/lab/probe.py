"""Echo server and probe clients, run *inside* lab namespaces.

This file is executed as a plain script (``python3 probe.py ...``) through
nsenter, so it imports only the standard library: a probe must not depend on
how fwc happens to be installed.

Commands:
  serve   --tcp PORT... --udp PORT... [--lifetime S]   echo lines / datagrams
  probe   --src A --dst B --proto tcp|udp|icmp [--port P] [--timeout S]
  stream  --src A --dst B --port P [--interval S] [--duration S]
  syns    --src A --dst B --port P --sport-base N [--interval S] [--duration S]
  capture --device D --dst B --port P [--duration S]
  watch   --listers JSON [--period S] [--duration S]    forwarding and the forward hook

``probe``, ``syns``, ``capture`` and ``watch`` print one JSON object (the
last three when they stop: SIGTERM or their duration; ``syns``, ``capture`` and
``watch`` print ``READY`` first). Their times are CLOCK_REALTIME, like the
logger shim's stamps in the members, so they line up with the boot script's log.
``stream`` prints one line per echo (``E seq t_sent t_recv``, CLOCK_MONOTONIC,
shared by all processes on the host) and a final ``END reason``, so the lab
can compute gaps from the log.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import ipaddress
import json
import os
import select
import signal
import socket
import struct
import subprocess
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
# What a probe's packet met, as the probe's "verdict": "allowed" (it crossed: an echo,
# or a TCP handshake that completed), "blocked" (dropped: a timeout; or refused: a
# reset or an ICMP error, which the lab's listener on every destination port leaves
# only the firewall to send), or "error" (the probe itself failed: no packet decided).
# The errors a refusal turns into: port unreachable or a reset, host or network
# unreachable or prohibited (IPv4 admin-prohibited is EHOSTUNREACH, IPv6 EACCES), and
# EPERM for a packet the prober's own OUTPUT chain dropped (a `firewall` source).
REFUSALS = frozenset({errno.ECONNREFUSED, errno.ECONNRESET, errno.EHOSTUNREACH,
                      errno.ENETUNREACH, errno.EACCES, errno.EPERM})


def _failed(exc: OSError) -> dict[str, object]:
    """A probe's socket error: a refusal by the path (blocked) or a failure of its own."""
    how = exc.strerror or str(exc)
    if exc.errno in REFUSALS:
        return {"passed": False, "verdict": "blocked", "how": f"refused ({how})"}
    return {"passed": False, "verdict": "error", "how": f"error: {how}"}


def _probe_tcp(src: str, dst: str, port: int, timeout: float) -> dict[str, object]:
    sock = socket.socket(_family(dst), socket.SOCK_STREAM)
    sock.settimeout(timeout)
    connected = False
    try:
        if src:
            sock.bind((src, 0))
        sock.connect((dst, port))
        connected = True
        sock.sendall(b"fwc-probe\n")
        data = sock.recv(64)
        ok = data.startswith(b"fwc-probe")
        # A completed handshake crossed the firewall both ways, echo or not.
        return {"passed": ok, "verdict": "allowed",
                "how": "echoed" if ok else "connected, no echo"}
    except TimeoutError:
        if connected:
            return {"passed": False, "verdict": "allowed", "how": "connected, no echo (timeout)"}
        return {"passed": False, "verdict": "blocked", "how": "timeout (dropped)"}
    except ConnectionRefusedError:
        return {"passed": False, "verdict": "blocked", "how": "refused (reset)"}
    except OSError as exc:
        if connected:  # reset after the handshake: the connection did cross
            return {"passed": False, "verdict": "allowed",
                    "how": f"connected, then {exc.strerror or exc}"}
        return _failed(exc)
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
        ok = data.startswith(b"fwc-probe")
        # Any datagram back from the destination crossed the firewall both ways.
        return {"passed": ok, "verdict": "allowed", "how": "echoed" if ok else "answered, no echo"}
    except TimeoutError:
        return {"passed": False, "verdict": "blocked", "how": "timeout (dropped)"}
    except OSError as exc:
        return _failed(exc)
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
                return {"passed": False, "verdict": "blocked", "how": "timeout (dropped)"}
            ready, _, _ = select.select([sock], [], [], left)
            if not ready:
                continue
            data, peer = sock.recvfrom(2048)
            icmp = data if v6 else data[(data[0] & 0x0F) * 4 :]
            if len(icmp) >= 8 and icmp[0] == reply and struct.unpack("!H", icmp[4:6])[0] == ident:
                return {"passed": True, "verdict": "allowed", "how": "echo reply"}
    except OSError as exc:
        return _failed(exc)
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


# ---------------------------------------------------------------- stopping
class Stop:
    """Set by SIGTERM or SIGINT; read by the loops of the probes (any thread).

    A Python signal handler runs in the main thread between any two of its
    bytecodes, so it must take no lock: `threading.Event.set()` takes the lock
    that `Event.wait()` holds just before and after it sleeps, and a SIGTERM
    handled there blocked the handler on a lock its own thread held. The probe
    hung until the lab SIGKILLed it, its summary unprinted (the reboot drill's
    sender, on a loaded machine). Here the handler only sets a flag, and
    `wait` sleeps (a signal cuts the sleep short by at most its remainder).
    """

    def __init__(self) -> None:
        self._flag = False

    def set(self) -> None:
        self._flag = True

    def is_set(self) -> bool:
        return self._flag

    def wait(self, timeout: float) -> bool:
        if not self._flag:
            time.sleep(timeout)
        return self._flag


def _stopper() -> Stop:
    stop = Stop()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    return stop


# ---------------------------------------------------------------- stream
def stream(args: argparse.Namespace) -> int:
    stop = _stopper()
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


# ---------------------------------------------------------------- reboot drill


def syns(args: argparse.Namespace) -> int:
    """One TCP SYN every INTERVAL from SRC:sport-base+i, each socket closed at once.

    Closing in SYN_SENT sends nothing (no RST), so every SYN is a fresh
    connection attempt the firewall must decide on; the source ports are
    outside the ephemeral range, so a policy route can steer only these.
    """
    stop = _stopper()
    print("READY", flush=True)  # the drill starts its clock from here, not from the spawn
    deadline = time.monotonic() + args.duration
    sent = 0
    stamps: list[float] = []
    errors: dict[str, int] = {}
    for i in range(args.count):
        if stop.is_set() or time.monotonic() >= deadline:
            break
        sock = socket.socket(_family(args.dst), socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((args.src, args.sport_base + i % args.sports))
            sock.setblocking(False)
            rc = sock.connect_ex((args.dst, args.port))
            if rc in (0, errno.EINPROGRESS):
                sent += 1
                stamps.append(round(time.time(), 4))
            else:
                errors[os.strerror(rc)] = errors.get(os.strerror(rc), 0) + 1
        except OSError as exc:
            key = exc.strerror or str(exc)
            errors[key] = errors.get(key, 0) + 1
        finally:
            sock.close()
        stop.wait(args.interval)
    print(json.dumps({"sent": sent, "times": stamps, "errors": errors}), flush=True)
    return 0



def capture(args: argparse.Namespace) -> int:
    """Arrival times of TCP SYNs (no ACK) to DST:PORT on DEVICE (IPv4, AF_PACKET)."""
    stop = _stopper()
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0800))
    sock.bind((args.device, 0))
    sock.settimeout(0.1)
    want = socket.inet_aton(args.dst)
    seen: list[list[object]] = []
    frames = 0
    print("READY", flush=True)
    deadline = time.monotonic() + args.duration
    while not stop.is_set() and time.monotonic() < deadline and frames < args.max_frames:
        try:
            frame, meta = sock.recvfrom(2048)
        except TimeoutError:
            continue
        except InterruptedError:
            continue
        now = time.time()
        frames += 1
        if meta[2] == socket.PACKET_OUTGOING or len(frame) < 14 + 20:
            continue
        ip = frame[14:]
        ihl = (ip[0] & 0x0F) * 4
        if ip[0] >> 4 != 4 or ip[9] != 6 or ip[16:20] != want or len(ip) < ihl + 14:
            continue
        tcp = ip[ihl:]
        sport, dport = struct.unpack("!HH", tcp[:4])
        flags = tcp[13]
        if dport == args.port and flags & 0x02 and not flags & 0x10:
            seen.append([round(now, 6), socket.inet_ntoa(ip[12:16]), sport])
    sock.close()
    print(json.dumps({"syns": seen, "frames": frames}), flush=True)
    return 0


FORWARDING = {
    "4": "/proc/sys/net/ipv4/ip_forward",
    "6": "/proc/sys/net/ipv6/conf/all/forwarding",
}


def _read(path: str) -> str:
    try:
        with open(path) as fh:
            return fh.read().strip()
    except OSError:
        return "?"


def watch(args: argparse.Namespace) -> int:
    """Sample forwarding (every PERIOD) and the forward hook (as fast as it lists).

    Runs inside a member's network namespace, where /proc/sys/net is the
    member's. LISTERS gives per family the command that lists the forward hook
    (the lab's table of packet filters, fwc/lab/filters.py: `iptables -S FORWARD`,
    `nft list chains`); the rules count as loaded once a listing differs from
    what it listed first (the wiped node). For each listing the start and end
    times are kept: the rules were certainly absent when a listing that saw the
    wiped hook started, and certainly in when the first listing that saw them
    ended. Families with the same command (nft lists both) share one lister.
    """
    stop = _stopper()
    first = {fam: _read(path) for fam, path in FORWARDING.items()}
    state = dict(first)
    changes: list[list[object]] = []
    samples = 0
    chains: dict[str, dict[str, object]] = {}
    # The families each distinct listing shows (nft's `list chains` shows both).
    tools: dict[tuple[str, ...], list[str]] = {}
    for fam, argv in args.listers.items():
        tools.setdefault(tuple(str(word) for word in argv), []).append(str(fam))

    def lister(argv: tuple[str, ...], fams: list[str]) -> None:
        # One lister per listing, so that neither waits for the other's listing: the
        # boot script loads both within a few ms of switching forwarding on, and a
        # listing that ends after that proves nothing about the order. Families that
        # share a listing share its entry.
        for _ in range(int(args.duration / 0.002) + 1):
            if stop.is_set():
                return
            t0 = time.time()
            try:
                out = subprocess.run(
                    argv, capture_output=True, text=True, timeout=5
                ).stdout
            except (OSError, subprocess.TimeoutExpired):
                continue
            t1 = time.time()
            entry = chains.setdefault(fams[0], {"wiped": out, "listings": 0})
            for fam in fams[1:]:
                chains[fam] = entry
            entry["listings"] = int(str(entry["listings"])) + 1
            if out == entry["wiped"]:
                entry["absent_at"] = round(t0, 6)
            else:
                entry["in_by"] = round(t1, 6)
                entry["loaded"] = out.splitlines()[:1]
                return

    threads = [threading.Thread(target=lister, args=item, daemon=True)
               for item in tools.items()]
    for thread in threads:
        thread.start()
    # READY once each chain was listed wiped (its baseline), at most 5 s from now.
    ready_by = time.monotonic() + 5.0
    while len(chains) < len(args.listers) and time.monotonic() < ready_by:
        time.sleep(0.005)
    print(f"READY {json.dumps(first)}", flush=True)
    deadline = time.monotonic() + args.duration
    last_off: dict[str, float] = {}
    while not stop.is_set() and time.monotonic() < deadline:
        # Each read is stamped before and after, as a listing is: the listers' threads
        # can hold this one for a few ms between a stamp and its read. A value that is
        # on was certainly on by the read's end (a stamp taken before the read once put
        # forwarding on before the boot script's 'rules loaded', which came first); one
        # that is off was off at its start too (forwarding does not go off again during
        # a boot).
        before = time.time()
        read = {fam: _read(path) for fam, path in FORWARDING.items()}
        after = time.time()
        samples += 1
        for fam, val in read.items():
            if val == "0":
                last_off[fam] = before
            if val != state[fam]:
                changes.append([fam, val, round(after, 6)])
                state[fam] = val
        time.sleep(args.period)
    stop.set()
    for thread in threads:
        thread.join(5.0)
    print(
        json.dumps(
            {
                "first": first,
                "changes": changes,
                "samples": samples,
                "last_off": {k: round(v, 6) for k, v in last_off.items()},
                "chains": chains,
            }
        ),
        flush=True,
    )
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
    y = sub.add_parser("syns")
    y.add_argument("--src", required=True)
    y.add_argument("--dst", required=True)
    y.add_argument("--port", type=int, required=True)
    y.add_argument("--sport-base", type=int, default=61000)
    y.add_argument("--sports", type=int, default=1000)
    y.add_argument("--interval", type=float, default=0.005)
    y.add_argument("--count", type=int, default=6000)
    y.add_argument("--duration", type=float, default=30.0)
    k = sub.add_parser("capture")
    k.add_argument("--device", required=True)
    k.add_argument("--dst", required=True)
    k.add_argument("--port", type=int, required=True)
    k.add_argument("--duration", type=float, default=40.0)
    k.add_argument("--max-frames", type=int, default=200000)
    w = sub.add_parser("watch")
    w.add_argument("--listers", type=json.loads, required=True,
                   help='per family the argv listing its forward hook: {"4": [...], "6": [...]}')
    w.add_argument("--period", type=float, default=0.001)
    w.add_argument("--duration", type=float, default=40.0)
    args = parser.parse_args(argv)
    commands = {
        "serve": serve, "probe": probe, "stream": stream,
        "syns": syns, "capture": capture, "watch": watch,
    }
    return commands[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
