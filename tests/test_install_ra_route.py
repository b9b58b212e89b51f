"""`fwc install` says when switching IPv6 forwarding on removes the node's default route.

With `net.ipv6.conf.all.forwarding = 1` the kernel ignores router advertisements on a
device whose accept_ra is 1 and at once removes every default route it learnt from
them. A member that took its IPv6 default route from an advertisement loses it when
the install (or the boot script) applies forwarding.conf. The preflight's warning runs
here for real in a namespace that learnt a default route from an advertisement sent by
a second one (one packet, a few tries); forwarding switched on, the route is gone, as
the warning says. Namespaces are unique and deleted in finally blocks.
"""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
from test_realtools import in_ns, namespace

from fwc import protocols as proto
from fwc.backend.files import FILES
from fwc.install import scripts

# One router advertisement (lifetime 1800 s, no options) to ff02::1 on eth0, hop limit
# 255 (a host takes no other).
SEND_RA = """
import socket, struct
s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 255)
index = socket.if_nametoindex("eth0")
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, index)
s.sendto(struct.pack("!BBHBBHII", 134, 0, 0, 64, 0, 1800, 0, 0), ("ff02::1", 0, 0, index))
"""


def _ip(*argv: str) -> None:
    subprocess.run(["ip", *argv], check=True, capture_output=True, timeout=30)


def _said(ns: str) -> str:
    done = in_ns(ns, "sh", "-c", scripts.ra_default_route_warning())
    assert done.returncode == 0 and done.stdout == ""
    return done.stderr


def _default_routes(ns: str) -> str:
    return in_ns(ns, "ip", "-6", "route", "show", "default").stdout


@pytest.mark.root
def test_a_default_route_from_an_advertisement_is_said_before_forwarding_removes_it():
    with namespace() as node, namespace() as router:
        _ip("link", "add", "eth0", "netns", node, "type", "veth", "peer", "name", "eth0",
            "netns", router)
        for ns in (node, router):
            for key in ("all", "default", "eth0"):
                in_ns(ns, "sysctl", "-qw", f"net.ipv6.conf.{key}.accept_dad=0")
            _ip("-n", ns, "link", "set", "eth0", "up")
        in_ns(node, "sysctl", "-qw", "net.ipv6.conf.all.forwarding=0",
              "net.ipv6.conf.eth0.accept_ra=1")
        for _ in range(5):
            in_ns(router, sys.executable, "-c", SEND_RA)
            time.sleep(0.5)
            if "proto ra" in _default_routes(node):
                break
        assert "proto ra" in _default_routes(node)
        said = _said(node)
        assert said.startswith("warning: the IPv6 default route via eth0 was learnt from a "
                               "router advertisement")
        assert proto.FORWARDING_SYSCTLS[6] in said
        # what the warning says: forwarding on, the route is gone and nothing is said
        in_ns(node, "sysctl", "-qw", f"{proto.FORWARDING_SYSCTLS[6]}=1")
        assert _default_routes(node) == ""
        assert _said(node) == ""
        # a route a daemon keeps itself (accept_ra 0: the kernel learns nothing) stays
        in_ns(node, "sysctl", "-qw", "net.ipv6.conf.eth0.accept_ra=0")
        _ip("-n", node, "-6", "route", "add", "default", "via", "fe80::1", "dev", "eth0",
            "proto", "ra")
        assert _said(node) == ""


def test_only_an_install_that_switches_ipv6_forwarding_on_asks():
    warning = scripts.ra_default_route_warning()
    assert warning in scripts.preflight(list(FILES), (4, 6))
    assert warning not in scripts.preflight(list(FILES), (4,))
    assert warning not in scripts.preflight([f for f in FILES if f.name != "forwarding.conf"])
