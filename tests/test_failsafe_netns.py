"""A factored failsafe (fwc.backend.lower.failsafe.factored) in a real kernel.

iptables-restore --test and a real load in throwaway namespaces (iptables-save lists
every chain and line back), and traffic: a node that loaded it still answers its
management access from a large group (the rule is factored into a chain) and drops
the same service from an address outside the group. Every namespace is created
with a unique name and deleted in a finally block; each probe is one connection
attempt with a 2-second timeout.
"""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
from test_failsafe_factor import failsafes, group_policy, lines
from test_realtools import in_ns, namespace

from fwc.backend.lower.failsafe import factored
from fwc.backend.render.iptables import render

pytestmark = pytest.mark.root


def test_factored_failsafe_loads_in_a_namespace(tmp_path):
    path = tmp_path / "g.fw"
    # (1, 0, 1, 0, 2): a reject of tcp from a group, ports outside: its chain's
    # REJECT --reject-with tcp-reset loads only with -p tcp on its own line
    path.write_text(group_policy([(1, 0, 2, 0, 0), (2, 0, 4, 3, 2), (1, 2, 1, 6, 0),
                                  (1, 4, 0, 0, 1), (1, 0, 1, 0, 2)]), encoding="utf-8")
    checked = 0
    for label, ruleset in failsafes(path):
        after = factored(ruleset)
        # IPv4: the member has 3 own addresses and 3 VIPs, IPv6 one of each
        assert lines(after) < lines(ruleset) or ruleset.family == 6, label
        text = render(after)
        tool = "iptables" if ruleset.family == 4 else "ip6tables"
        with namespace() as ns:
            tested = in_ns(ns, f"{tool}-restore", "--test", stdin=text)
            assert tested.returncode == 0, f"{label}: {tested.stderr}"
            loaded = in_ns(ns, f"{tool}-restore", stdin=text)
            assert loaded.returncode == 0, f"{label}: {loaded.stderr}"
            saved = in_ns(ns, f"{tool}-save", "-t", "filter")
            assert saved.returncode == 0, saved.stderr
        chains = [line.split()[0] for line in text.splitlines() if line.startswith(":fwc-f")]
        assert chains or ruleset.family == 6, label
        for chain in chains:
            assert chain in saved.stdout, f"{label}: {chain} not loaded"
        assert sum(line.startswith("-A ") for line in saved.stdout.splitlines()) == \
            lines(after), label
        checked += 1
    assert checked >= 2


def listen_script(dual_stack: bool = False) -> str:
    """A TCP listener on port 22 for argv[1] seconds: IPv4, or IPv4 and IPv6 in one
    socket as sshd listening on `::` is (DUAL_STACK)."""
    opened = ("s = socket.socket(socket.AF_INET6)\n"
              "s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)\n" if dual_stack
              else "s = socket.socket()\n")
    return ("import socket, sys, time\n" + opened +
            "s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
            f"s.bind(({'::' if dual_stack else '0.0.0.0'!r}, 22))\n" + """s.listen(8)
s.settimeout(1.0)
print("READY", flush=True)
end = time.monotonic() + float(sys.argv[1])
while time.monotonic() < end:
    try:
        conn, _ = s.accept()
        conn.close()
    except OSError:
        pass
""")


LISTEN = listen_script()

# argv: the address to connect to (port 22), and the source address to connect from
# (optional: the kernel's choice without it).
CONNECT = """
import socket, sys
source = (sys.argv[2], 0) if len(sys.argv) > 2 else None
try:
    socket.create_connection((sys.argv[1], 22), timeout=2, source_address=source).close()
    print("open")
except OSError as error:
    print("closed", error)
"""


def test_management_access_from_a_factored_group_still_works(tmp_path):
    # accept from big (12 prefixes) to firewall service tcp/22: 12 x 6 lines, factored
    path = tmp_path / "g.fw"
    path.write_text(group_policy([(1, 0, 1, 0, 0)]), encoding="utf-8")
    label, ruleset = failsafes(path)[0]
    assert label == "fw1/4"
    after = factored(ruleset)
    assert lines(after) < lines(ruleset)
    text = render(after)
    assert "-j fwc-f1" in text
    with namespace() as fw, namespace() as client:
        for argv in (["ip", "link", "add", "eth0", "netns", fw, "type", "veth", "peer",
                      "name", "peer0", "netns", client],
                     ["ip", "-n", fw, "address", "add", "198.18.0.1/16", "dev", "eth0"],
                     ["ip", "-n", fw, "link", "set", "eth0", "up"],
                     # 198.18.10.1 is in `big` (198.18.10.0/30), 198.18.3.3 is not
                     ["ip", "-n", client, "address", "add", "198.18.10.1/16", "dev", "peer0"],
                     ["ip", "-n", client, "address", "add", "198.18.3.3/16", "dev", "peer0"],
                     ["ip", "-n", client, "link", "set", "peer0", "up"]):
            subprocess.run(argv, check=True, capture_output=True)
        loaded = in_ns(fw, "iptables-restore", stdin=text)
        assert loaded.returncode == 0, loaded.stderr
        server = subprocess.Popen(["ip", "netns", "exec", fw, sys.executable, "-c", LISTEN,
                                   "20"], stdout=subprocess.PIPE, text=True)
        try:
            assert server.stdout is not None and server.stdout.readline().strip() == "READY"
            time.sleep(0.2)
            inside = in_ns(client, sys.executable, "-c", CONNECT, "198.18.0.1", "198.18.10.1")
            outside = in_ns(client, sys.executable, "-c", CONNECT, "198.18.0.1", "198.18.3.3")
            counters = in_ns(fw, "iptables", "-L", "fwc-f1", "-n", "-v", "-x")
        finally:
            server.terminate()
            server.wait(timeout=10)
    assert inside.stdout.startswith("open"), inside.stdout + inside.stderr
    assert outside.stdout.startswith("closed"), outside.stdout + outside.stderr
    # the accepted connection went through the factored chain
    packets = [int(line.split()[0]) for line in counters.stdout.splitlines()[2:] if line.strip()]
    assert sum(packets) >= 1, counters.stdout
