"""A cluster without IPv6 addresses filters IPv6 on a real kernel (root; runs in CI).

The kernel gives a node IPv6 addresses of its own: link-local ones, and global ones from
router advertisements, which it accepts while IPv6 forwarding is off (the boot script
switches it off). Every service of the firewall listening on :: answers over them unless
the node's rules cover IPv6 too. Here member fw1 of policies/loadshare.fw (IPv4 only;
ssh is allowed from `client` 192.0.2.10 on lan) loads its compiled rules, each backend's,
the way `fwc install` does (every ruleset row of the member, in load order), in a
throwaway namespace whose lan device also has 2001:db8::1 (as from an advertisement):
ssh from the client over IPv4 passes, over IPv6 (global and link-local) it is dropped.

Every namespace has a unique name and is deleted in a finally block (test_realtools
`namespace`); the listener is stopped by its PID; each probe is one connection attempt
with a 2-second timeout.
"""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
from conftest import REPO
from test_failsafe_netns import CONNECT, listen_script
from test_realtools import in_ns, namespace

from fwc.backend.files import FILES, Reload
from fwc.backend.output import compile_policy
from fwc.install.scripts import in_load_order, ruleset_loader
from fwc.model.vocabulary import Backend
from fwc.pipeline import analyse

pytestmark = pytest.mark.root

LISTEN = listen_script(dual_stack=True)


def _rulesets(backend: Backend) -> list[tuple[list[str], str]]:
    """(loader argv, text) of every ruleset member fw1 of loadshare.fw gets for BACKEND,
    in the order `fwc install` loads them."""
    policy = analyse(REPO / "policies" / "loadshare.fw").policy
    assert policy is not None and policy.clusters[0].families == frozenset({4})
    [output] = compile_policy(policy, backend=backend)
    files = {f.path.split("/", 1)[1]: f.content.decode() for f in output.files
             if f.path.startswith("fw1/")}
    return [(ruleset_loader(row), files[row.name])
            for row in in_load_order(f for f in FILES if f.name in files)
            if row.reload in (Reload.IPSETS, Reload.RULES)]


def _ip(*argv: str) -> None:
    subprocess.run(["ip", *argv], check=True, capture_output=True, timeout=30)


def _link_local(ns: str, device: str) -> str:
    shown = in_ns(ns, "ip", "-6", "-o", "address", "show", "dev", device, "scope", "link")
    return shown.stdout.split("inet6 ")[1].split("/")[0]


@pytest.mark.parametrize("backend", [Backend.IPTABLES, Backend.NFTABLES], ids=str)
def test_an_ipv4_only_cluster_drops_ipv6_to_the_firewall(backend):
    rulesets = _rulesets(backend)
    with namespace() as fw, namespace() as client:
        _ip("link", "add", "eth0", "netns", fw, "type", "veth", "peer", "name", "peer0",
            "netns", client)
        for ns, device, v4, v6 in ((fw, "eth0", "192.0.2.1/24", "2001:db8::1/64"),
                                   (client, "peer0", "192.0.2.10/24", "2001:db8::10/64")):
            _ip("-n", ns, "address", "add", v4, "dev", device)
            _ip("-n", ns, "address", "add", v6, "dev", device, "nodad")
            _ip("-n", ns, "link", "set", device, "up")
        for argv, text in rulesets:
            loaded = in_ns(fw, *argv, stdin=text)
            assert loaded.returncode == 0, f"{argv}: {loaded.stderr}"
        server = subprocess.Popen(["ip", "netns", "exec", fw, sys.executable, "-c", LISTEN,
                                   "30"], stdout=subprocess.PIPE, text=True)
        try:
            assert server.stdout is not None and server.stdout.readline().strip() == "READY"
            # the veth's link-local addresses need their DAD (about a second) done
            for _ in range(40):
                if "tentative" not in in_ns(fw, "ip", "-6", "address", "show").stdout + \
                        in_ns(client, "ip", "-6", "address", "show").stdout:
                    break
                time.sleep(0.1)
            link_local = f"{_link_local(fw, 'eth0')}%peer0"
            probes = {target: in_ns(client, sys.executable, "-c", CONNECT, target).stdout
                      for target in ("192.0.2.1", "2001:db8::1", link_local)}
            # the node's own IPv6 is not touched: loopback still answers
            local = in_ns(fw, sys.executable, "-c", CONNECT, "::1").stdout
        finally:
            server.terminate()
            server.wait(timeout=10)
    assert probes["192.0.2.1"].startswith("open"), probes  # the policy's ssh access
    assert probes["2001:db8::1"].startswith("closed"), probes
    assert probes[link_local].startswith("closed"), probes
    assert local.startswith("open"), local
    assert len(rulesets) == (2 if backend is Backend.IPTABLES else 1)
