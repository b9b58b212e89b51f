"""keepalived's adverts leave from the address the peers' rules take (root; runs in CI).

The automatic INPUT rules take VRRP adverts only from the peers' policy addresses on
the segment (docs/ha-pitfalls.md, "Who may send adverts and states"). keepalived, left
to itself, sends from the device's primary address: the first IPv4 address the device
got, which need not be the policy's (a management address, a DHCP lease configured
before fwc's). The peer then dropped every advert, and both members became master.
keepalived.conf therefore names the source (`mcast_src_ip`).

One network namespace holds fw1's devices of policies/edge.fw, eth0 with a foreign
address added before the policy's, and the real keepalived with fw1's compiled
keepalived.conf (its notify script replaced by /bin/true). A packet socket on the
other end of eth0's veth records the source of every IPv4 advert for a bounded time.
The daemon (by its PID) and the namespace are gone at the end.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import textwrap

from conftest import edge_files, node_namespace, skip_or_fail_without_root

# eth0's first address is not the policy's: keepalived's default source would be it
ADDRESSES = {"eth0": ("203.0.113.9/24", "192.0.2.1/24", "2001:db8:1::1/64"),
             "eth1": ("198.51.100.1/24",)}
LISTEN_S = 7.0  # master after ~3.5 s, then an advert a second: a few, bounded

# Run inside the namespace: the IPv4 sources of VRRP (protocol 112) frames seen on a
# device for a bounded time, one per line.
_LISTENER = textwrap.dedent("""
    import socket, sys, time
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0800))
    s.bind((sys.argv[1], 0))
    s.settimeout(0.2)
    end = time.monotonic() + float(sys.argv[2])
    seen = set()
    while time.monotonic() < end:
        try:
            frame = s.recv(2048)
        except TimeoutError:
            continue
        ip = frame[14:]
        if len(ip) >= 20 and ip[9] == 112:
            seen.add(socket.inet_ntoa(ip[12:16]))
    print("\\n".join(sorted(seen)))
""")


def test_adverts_leave_from_the_policy_address_the_peer_takes(tmp_path):
    skip_or_fail_without_root()
    files = edge_files()
    keepalived_conf = files["fw1/keepalived.conf"]
    assert "mcast_src_ip 192.0.2.1\n" in keepalived_conf
    # the peer's rule takes exactly that source
    peer_rule = next(line for line in files["fw2/iptables.rules"].splitlines()
                     if line.startswith("-A INPUT") and "vrrp eth0" in line)
    assert re.search(r"-s 192\.0\.2\.1/32 ", peer_rule), peer_rule
    config = tmp_path / "keepalived.conf"
    config.write_text(keepalived_conf.replace("/etc/fwc/fwc-notify.sh", "/bin/true"))
    with node_namespace("fwcsrc", ADDRESSES) as ns:
        # (the device's primary address is the foreign one, as `ip` lists it first)
        shown = subprocess.run(["ip", "-n", ns, "-4", "-o", "addr", "show", "dev", "eth0"],
                               check=True, capture_output=True, text=True).stdout
        assert shown.split()[3] == "203.0.113.9/24", shown
        proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, "keepalived", "-n", "-l", "-D", "-f", str(config),
             "-p", str(tmp_path / "keepalived.pid"), "-r", str(tmp_path / "vrrp.pid"),
             "-c", str(tmp_path / "checkers.pid")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            heard = subprocess.run(
                ["ip", "netns", "exec", ns, sys.executable, "-c", _LISTENER, "peth0",
                 str(LISTEN_S)], check=True, capture_output=True, text=True,
                timeout=LISTEN_S + 20).stdout.split()
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
    assert heard == ["192.0.2.1"], heard
