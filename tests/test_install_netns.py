"""`fwc install` end to end against two member namespaces this test creates.

Each member is a network namespace with the policy's devices (veth pairs
between the two members) and addresses. `ip netns exec` bind-mounts
/etc/netns/NAME/{conntrackd,fwc,keepalived,sysctl.d,systemd} over /etc, so each node
has its own node paths. No daemons run here (the lab does that): the settle
check is a fake that records when it was asked.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import REPO, sh

from fwc.cli import build_parser, main
from fwc.commands import install as install_command
from fwc.diffing.rulesets import normalised
from fwc.install.paths import NETNS_PRIVATE_DIRS
from fwc.install.settle import ClusterState
from fwc.install.transport import Transport
from fwc.model import Cluster

pytestmark = pytest.mark.root

POLICY = REPO / "policies" / "edge.fw"
PRIVATE_DIRS = NETNS_PRIVATE_DIRS
# (interface, device, fw1 addresses, fw2 addresses), as in policies/edge.fw
LINKS = (
    ("eth0", ("192.0.2.1/24", "2001:db8:1::1/64"), ("192.0.2.2/24", "2001:db8:1::2/64")),
    ("eth1", ("198.51.100.1/24",), ("198.51.100.2/24",)),
    ("eth2", ("203.0.113.1/24",), ("203.0.113.2/24",)),
)
# What ran before the install: a user chain, a custom rule, a non-default policy.
OLD_RULES = """*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
:old-chain - [0:0]
-A INPUT -s 198.51.100.99/32 -p tcp -m tcp --dport 22 -j ACCEPT
-A INPUT -j old-chain
-A old-chain -s 203.0.113.99/32 -j DROP
COMMIT
"""
OLD_KEEPALIVED = "# keepalived.conf before fwc\n"


@dataclass
class Node:
    member: str
    ns: str

    def exec(self, command: str, input: str | None = None, check: bool = True) -> str:
        return sh("ip", "netns", "exec", self.ns, "sh", "-c", command, input=input,
                  check=check)

    def rules(self, save: str = "iptables-save") -> list[str]:
        return normalised(self.exec(save))

    @property
    def etc(self) -> Path:
        return Path("/etc/netns") / self.ns


@dataclass
class Lab:
    nodes: dict[str, Node]
    inventory: Path
    output: Path
    secrets: Path
    tmp: Path


def _kill_namespace_processes(ns: str) -> None:
    """Anything still living in our namespace (a watchdog), by PID."""
    for _ in range(20):
        pids = [int(p) for p in sh("ip", "netns", "pids", ns, check=False).split()]
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)


@pytest.fixture(scope="module")
def compiled_edge(tmp_path_factory: pytest.TempPathFactory) -> Path:
    output = tmp_path_factory.mktemp("edge") / "output"
    assert main(["compile", str(POLICY), "-o", str(output), "--redact-secrets"]) == 0
    return output


@pytest.fixture
def lab(tmp_path: Path, compiled_edge: Path) -> Iterator[Lab]:
    # Two test runs at once (two engineers, one machine) would race on the
    # shared /etc mount points below: one would remove what the other uses.
    with host_etc_lock():
        yield from _lab(tmp_path, compiled_edge)


@contextlib.contextmanager
def host_etc_lock(timeout: float = 300.0) -> Iterator[None]:
    with open("/tmp/fwc-install-tests.lock", "a") as lock:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TimeoutError("another run of the install tests holds the lock") \
                        from None
                time.sleep(0.1)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _lab(tmp_path: Path, compiled_edge: Path) -> Iterator[Lab]:
    prefix = f"fwci{os.getpid() % 100000}{tmp_path.name[-6:].replace('_', '')}"[:14]
    nodes = {m: Node(m, f"{prefix}-{m}") for m in ("fw1", "fw2")}
    created_etc = [d for d in PRIVATE_DIRS if not (Path("/etc") / d).exists()]
    created_netns_dir = not Path("/etc/netns").exists()
    try:
        for name in created_etc:
            (Path("/etc") / name).mkdir()
        for node in nodes.values():
            for name in PRIVATE_DIRS:
                (node.etc / name).mkdir(parents=True)
            sh("ip", "netns", "add", node.ns)
            sh("ip", "-n", node.ns, "link", "set", "lo", "up")
        fw1, fw2 = nodes["fw1"], nodes["fw2"]
        for device, first, second in LINKS:
            sh("ip", "-n", fw1.ns, "link", "add", device, "type", "veth", "peer", "name",
               device, "netns", fw2.ns)
            for node, addresses in ((fw1, first), (fw2, second)):
                for address in addresses:
                    sh("ip", "-n", node.ns, "addr", "add", address, "dev", device, "nodad")
                sh("ip", "-n", node.ns, "link", "set", device, "up")
        for node in nodes.values():
            node.exec("iptables-restore", input=OLD_RULES)
            (node.etc / "keepalived" / "keepalived.conf").write_text(OLD_KEEPALIVED)
        output = tmp_path / "output"
        shutil.copytree(compiled_edge, output)
        inventory = tmp_path / "inventory"
        inventory.write_text("".join(f"{n.member} {n.ns}\n" for n in nodes.values()))
        secrets = tmp_path / "secrets"
        secrets.write_text("# test secret\nvrrp_password = s3cret\n")
        yield Lab(nodes, inventory, output, secrets, tmp_path)
    finally:
        for node in nodes.values():
            if Path(f"/run/netns/{node.ns}").exists():
                _kill_namespace_processes(node.ns)
                sh("ip", "netns", "del", node.ns, check=False)
            shutil.rmtree(node.etc, ignore_errors=True)
        for name in created_etc:
            with contextlib.suppress(OSError):
                (Path("/etc") / name).rmdir()
        if created_netns_dir:
            with contextlib.suppress(OSError):
                Path("/etc/netns").rmdir()


class FakeSettle:
    """Settled, fw1 master; records the order in which it was asked."""

    def __init__(self, settled: bool = True) -> None:
        self.calls = 0
        self.settled = settled

    def __call__(self, cluster: Cluster, transports: Mapping[str, Transport]) -> ClusterState:
        self.calls += 1
        return ClusterState(self.settled, "fw1" if self.settled else None, "fake")


def install(lab: Lab, *extra: str, settle: FakeSettle | None = None,
            settle_timeout: float = 30.0) -> int:
    args = build_parser().parse_args([
        "install", "--transport", "netns", "--inventory", str(lab.inventory),
        "-o", str(lab.output), "--secrets", str(lab.secrets), *extra, str(POLICY)])
    return install_command.run(args, check=settle or FakeSettle(),
                               settle_timeout=settle_timeout)


def test_install_all_with_confirmation_activates_rules(lab, capsys):
    settle = FakeSettle()
    assert install(lab, "--all", "--confirm", settle=settle) == 0
    out = capsys.readouterr().out
    assert "installing fw2, fw1 in this order" in out  # backup first, master last
    assert out.index("fw2: applying") < out.index("fw1: applying")
    # once before the install, then after each node
    assert settle.calls == 3
    compiled = lab.output / "edge"
    for member, node in lab.nodes.items():
        live = "\n".join(node.rules())
        assert "fwc auto: established" in live
        assert "old-chain" not in live and "198.51.100.99" not in live
        live6 = "\n".join(node.rules("ip6tables-save"))
        assert "fwc auto: vrrp eth0" in live6
        installed = (node.etc / "fwc" / "iptables.rules").read_text()
        assert installed == (compiled / member / "iptables.rules").read_text()
        keepalived = node.etc / "keepalived" / "keepalived.conf"
        assert 'auth_pass "s3cret"' in keepalived.read_text()  # the secret was filled in
        assert "@FWCPW@" not in keepalived.read_text()
        assert keepalived.stat().st_mode & 0o777 == 0o600
        assert (node.etc / "fwc" / "snapshot" / "confirmed").exists()
        assert not (node.etc / "fwc" / "staging").exists()
        # the watchdog ended by itself once confirmed
        assert sh("ip", "netns", "pids", node.ns).split() == []
    # a second install of the same output changes nothing and is confirmed again
    assert install(lab, "--member", "fw2", "--confirm") == 0
    assert "reloading" not in capsys.readouterr().out


def test_no_confirmation_rolls_back_exactly(lab, capsys):
    fw2 = lab.nodes["fw2"]
    before = fw2.rules()
    before6 = fw2.rules("ip6tables-save")
    started = time.monotonic()
    assert install(lab, "--member", "fw2", "--confirm-timeout", "1") == 1
    assert time.monotonic() - started < 15
    captured = capsys.readouterr()
    assert "not confirmed: restoring the previous configuration" in captured.out
    assert "fw2: confirm failed: not confirmed in time (rolled back)" in captured.err
    assert fw2.rules() == before
    assert fw2.rules("ip6tables-save") == before6
    # files the install added are gone, files it replaced are back
    assert not (fw2.etc / "fwc" / "iptables.rules").exists()
    assert (fw2.etc / "keepalived" / "keepalived.conf").read_text() == OLD_KEEPALIVED
    assert (fw2.etc / "fwc" / "snapshot" / "rolled-back").exists()
    # fw1 was never part of it
    assert not (lab.nodes["fw1"].etc / "fwc" / "snapshot").exists()
    assert sh("ip", "netns", "pids", fw2.ns).split() == []


def test_watchdog_on_the_node_rolls_back_without_fwc(lab):
    """If fwc loses the node (the new rules cut it off), the node restores itself."""
    from fwc.backend.files import FILES
    from fwc.install import scripts

    fw1 = lab.nodes["fw1"]
    before = fw1.rules()
    files = [f for f in FILES if f.name == "iptables.rules"]
    fw1.exec(scripts.take_lock("t1", 60))
    fw1.exec(scripts.refuse_if_pending())
    fw1.exec(scripts.stage(files[0]),
             input=(lab.output / "edge" / "fw1" / "iptables.rules").read_text())
    fw1.exec(scripts.snapshot(files, []))
    fw1.exec(scripts.write(scripts.ROLLBACK_SCRIPT, 0o700),
             input=scripts.rollback_script(files, [], token="t1"))
    fw1.exec(scripts.arm_watchdog(0.6, token="t1"))
    fw1.exec(scripts.apply(files))
    assert fw1.rules() != before
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not (fw1.etc / "fwc/snapshot/rolled-back").exists():
        time.sleep(0.1)
    assert fw1.rules() == before
    assert not (fw1.etc / "fwc" / "iptables.rules").exists()
    # the rollback gave the node lock back: the next install may start
    assert not (fw1.etc / "fwc" / "install.owner").exists()
    fw1.exec("flock -n /etc/fwc/install.lock true")
    # a confirmation arriving after that is refused, not silently accepted
    late = subprocess.run(["ip", "netns", "exec", fw1.ns, "sh", "-c",
                           scripts.confirm(token="t1")],
                          capture_output=True, text=True, timeout=30)
    assert late.returncode == 1 and "too late" in late.stderr
    assert not (fw1.etc / "fwc" / "snapshot" / "confirmed").exists()


def test_failed_node_stops_all_and_leaves_the_rest_untouched(lab, capsys, monkeypatch):
    # An iptables-restore that fails on fw2 when it applies the installed file
    # (the test mode and the rollback's restore still work).
    fake = lab.tmp / "bin"
    fake.mkdir()
    real = shutil.which("iptables-restore")
    (fake / "iptables-restore").write_text(
        "#!/bin/sh\n"
        f'if [ "$(ip netns identify $$)" = "{lab.nodes["fw2"].ns}" ] '
        '&& [ "$(readlink /proc/$$/fd/0)" = /etc/fwc/iptables.rules ]; then\n'
        '    echo "iptables-restore: line 9 failed (simulated)" >&2; exit 1\nfi\n'
        f'exec {real} "$@"\n')
    (fake / "iptables-restore").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}:{os.environ['PATH']}")
    fw1, fw2 = lab.nodes["fw1"], lab.nodes["fw2"]
    fw1_before, fw2_before = fw1.rules(), fw2.rules()
    assert install(lab, "--all", "--confirm") == 1
    captured = capsys.readouterr()
    assert "fw2: apply failed: restoring the previous configuration" in captured.out
    assert "stopping after fw2 failed; not touched: fw1" in captured.out
    assert "fw2: apply failed: iptables-restore: line 9 failed (simulated) (rolled back)" \
        in captured.err
    assert "fw1: copying" not in captured.out
    assert fw2.rules() == fw2_before
    assert fw1.rules() == fw1_before
    assert not (fw1.etc / "fwc" / "snapshot").exists()
    assert (fw1.etc / "keepalived" / "keepalived.conf").read_text() == OLD_KEEPALIVED


def test_settle_timeout_rolls_the_node_back(lab, capsys):
    """The cluster was settled before; it does not settle after fw2: fw2 is undone."""

    class SettlesOnce(FakeSettle):
        def __call__(self, cluster, transports):
            self.calls += 1
            return ClusterState(self.calls == 1, "fw1" if self.calls == 1 else None,
                                "fw1 holds 1/3 VIPs")

    fw2 = lab.nodes["fw2"]
    before = fw2.rules()
    started = time.monotonic()
    assert install(lab, "--all", "--confirm", settle=SettlesOnce(), settle_timeout=0.6) == 1
    assert time.monotonic() - started < 10  # the wait is bounded
    captured = capsys.readouterr()
    assert "settle failed: restoring the previous configuration" in captured.out
    assert "fw2: settle failed: cluster not settled after 1 s: fw1 holds 1/3 VIPs " \
        "(rolled back)" in captured.err
    assert fw2.rules() == before
    assert not (lab.nodes["fw1"].etc / "fwc" / "snapshot").exists()


def test_diff_installed_detects_hand_made_changes(lab, capsys):
    def diff_installed(member: str) -> tuple[int, str]:
        code = main(["diff", "--no-color", "--installed", member, "--transport", "netns",
                     "--inventory", str(lab.inventory), str(POLICY)])
        return code, capsys.readouterr().out

    code, out = diff_installed("fw1")
    assert code == 1 and "drift: live iptables rules" in out  # nothing installed yet
    assert install(lab, "--all", "--confirm") == 0
    capsys.readouterr()
    code, out = diff_installed("fw1")
    assert code == 0 and out.endswith(f"fw1: runs what {POLICY} compiles to\n")
    assert out.startswith("fw1: installed ")  # from the node's install record
    fw1 = lab.nodes["fw1"]
    fw1.exec("iptables -I INPUT 3 -s 192.0.2.99/32 -p tcp --dport 2222 -j ACCEPT")
    code, out = diff_installed("fw1")
    assert code == 1
    assert "drift: live iptables rules" in out
    assert "+-A INPUT -s 192.0.2.99/32 -p tcp -m tcp --dport 2222 -j ACCEPT" in out
    assert "s3cret" not in out
    conf = fw1.etc / "keepalived" / "keepalived.conf"
    conf.write_text(conf.read_text().replace("priority 150", "priority 250"))
    code, out = diff_installed("fw1")
    assert code == 1 and "drift: /etc/keepalived/keepalived.conf" in out
    assert "+    priority 250" in out
    assert "s3cret" not in out  # secrets are masked on both sides
    conf.write_text(conf.read_text().replace('"s3cret"', '"hunter2"'))
    code, out = diff_installed("fw1")
    assert code == 1 and '+        auth_pass "(secret: not the compiled one)"' in out
    assert "s3cret" not in out and "hunter2" not in out
    assert diff_installed("fw2")[0] == 0


def test_failed_test_step_changes_nothing(lab, capsys):
    """keepalived -t refuses a VRRP interface the node lacks: nothing is applied."""
    fw2 = lab.nodes["fw2"]
    sh("ip", "-n", fw2.ns, "link", "del", "eth1")
    before = fw2.rules()
    assert install(lab, "--member", "fw2", "--confirm") == 1
    captured = capsys.readouterr()
    assert "fw2: test failed" in captured.out and "nothing was changed" in captured.out
    assert "(not changed)" in captured.err
    assert fw2.rules() == before
    assert not (fw2.etc / "fwc" / "snapshot").exists()
    assert not (fw2.etc / "fwc" / "staging").exists()
    assert (fw2.etc / "keepalived" / "keepalived.conf").read_text() == OLD_KEEPALIVED


def test_dry_run_against_the_namespaces_changes_nothing(lab, capsys):
    before = {m: (n.rules(), n.rules("ip6tables-save")) for m, n in lab.nodes.items()}
    assert install(lab, "--all", "--dry-run") == 0
    out = capsys.readouterr().out
    fw2, fw1 = lab.nodes["fw2"].ns, lab.nodes["fw1"].ns
    assert out.index(f"ip netns exec {fw2} sh -c") < out.index(f"ip netns exec {fw1} sh -c")
    # Per node: the rules and the boot script's fail-closed fallback.
    assert out.count("iptables-restore --test < /etc/fwc/staging/iptables.rules") == 2
    assert out.count("iptables-restore --test < /etc/fwc/staging/failsafe.rules") == 2
    for member, node in lab.nodes.items():
        assert (node.rules(), node.rules("ip6tables-save")) == before[member]
        assert sorted(p.name for p in (node.etc / "fwc").iterdir()) == []
        assert (node.etc / "keepalived" / "keepalived.conf").read_text() == OLD_KEEPALIVED


def test_ssh_transport_quoting_end_to_end(lab, capsys):
    """The ssh transport's commands survive a remote shell: a stand-in `ssh` that
    hands the remote command line to `sh -c` inside the member's namespace."""
    fake_ssh = lab.tmp / "fake-ssh"
    fake_ssh.write_text(
        "#!/bin/sh\n"
        'while [ "$1" = -o ]; do shift 2; done\n'
        '[ "$1" = -- ] && shift\n'
        'host=$1; shift\n'
        'exec ip netns exec "$host" sh -c "$*"\n')
    fake_ssh.chmod(0o755)
    args = build_parser().parse_args([
        "install", "--member", "fw2", "--confirm", "--ssh", str(fake_ssh),
        "--inventory", str(lab.inventory), "-o", str(lab.output),
        "--secrets", str(lab.secrets), str(POLICY)])
    assert install_command.run(args, check=FakeSettle()) == 0
    assert "fw2: confirmed" in capsys.readouterr().out
    fw2 = lab.nodes["fw2"]
    assert "fwc auto: established" in "\n".join(fw2.rules())
    assert (fw2.etc / "fwc" / "iptables.rules").read_text() == \
        (lab.output / "edge" / "fw2" / "iptables.rules").read_text()


def blocked_policy(directory: Path) -> Path:
    """edge plus a group large enough to become an ipset (fwc4-blocked)."""
    hosts = ", ".join(f"198.18.{i}.{2 * i + 1}" for i in range(20))
    text = POLICY.read_text(encoding="utf-8").replace(
        "group   desktops client, guests",
        f"group   desktops client, guests\ngroup   blocked  {hosts}").replace(
        "policy edge {\n", "policy edge {\n    drop   from blocked  to any\n")
    path = directory / "edge.fw"
    path.write_text(text, encoding="utf-8")
    return path


def test_ipsets_installed_and_rolled_back(lab, capsys):
    policy = blocked_policy(lab.tmp)
    output = lab.tmp / "ipset-output"
    assert main(["compile", str(policy), "-o", str(output)]) == 0
    assert (output / "edge" / "fw1" / "ipsets.rules").exists()
    fw1 = lab.nodes["fw1"]
    # What ran before uses a set of its own, which must come back with its members.
    fw1.exec("ipset create oldset hash:net && ipset add oldset 203.0.113.99")
    fw1.exec("iptables -A INPUT -m set --match-set oldset src -j DROP")
    fw1.exec("ipset add oldset 203.0.113.98")
    before = fw1.rules()
    old_set = fw1.exec("ipset save oldset")

    def install_blocked(*extra: str) -> int:
        args = build_parser().parse_args([
            "install", "--member", "fw1", "--transport", "netns",
            "--inventory", str(lab.inventory), "-o", str(output), *extra, str(policy)])
        return install_command.run(args, check=FakeSettle())

    assert install_blocked("--confirm-timeout", "0.5") == 1
    out = capsys.readouterr().out
    assert "fw1: applying" in out and "previous configuration restored" in out
    assert fw1.rules() == before
    assert fw1.exec("ipset list -n").split() == ["oldset"]
    assert fw1.exec("ipset save oldset") == old_set

    assert install_blocked("--confirm") == 0
    assert sorted(fw1.exec("ipset list -n").split()) == ["fwc4-blocked", "oldset"]
    members = [line for line in fw1.exec("ipset save fwc4-blocked").splitlines()
               if line.startswith("add ")]
    assert len(members) == 20
    assert "--match-set fwc4-blocked src" in "\n".join(fw1.rules())
    capsys.readouterr()
    # the node runs exactly the compiled rules (set references canonicalised too)
    drift = ["diff", "--installed", "fw1", "--transport", "netns", "--inventory",
             str(lab.inventory), str(policy)]
    assert main(drift) == 0, capsys.readouterr().out
    fw1.exec("ipset add fwc4-blocked 198.19.0.0/16")
    assert main(drift) == 1
    out = capsys.readouterr().out
    assert "drift: live ipsets" in out and "+fwc4-blocked 198.19.0.0/16" in out
