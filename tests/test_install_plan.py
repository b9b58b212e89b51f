"""`fwc install` without root: dry run, refusals, ordering, settle, inventory, secrets."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import EDGE_TEXT as EDGE
from conftest import REPO

from fwc.cli import main
from fwc.install import plan as plan_module
from fwc.install import transport as transport_module
from fwc.install.plan import automatic_confirmer, order, settle_timeout_for, terminal_confirmer
from fwc.install.secrets import SecretsError, fill, read_secrets
from fwc.install.settle import ClusterState, check_cluster, vip_state, wait_settled
from fwc.install.transport import (
    InventoryEntry,
    InventoryError,
    NetnsTransport,
    Result,
    SshTransport,
    Transport,
    make_transport,
    read_inventory,
)
from fwc.model import Cluster
from fwc.pipeline import analyse

WITH_SSH = EDGE.replace(
    "member fw1 priority 150 {", 'member fw1 priority 150 ssh "root@192.0.2.1" {').replace(
    "member fw2 priority 100 {", 'member fw2 priority 100 ssh "root@192.0.2.2" {')


@pytest.fixture(scope="module")
def compiled_once(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("compiled")
    policy = root / "edge.fw"
    policy.write_text(WITH_SSH, encoding="utf-8")
    assert main(["compile", str(policy), "-o", str(root / "output"), "--redact-secrets"]) == 0
    return root


@pytest.fixture
def compiled(compiled_once: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    """A private copy (some tests edit it) of the policy, its output and a secrets file."""
    shutil.copytree(compiled_once, tmp_path, dirs_exist_ok=True)
    (tmp_path / "secrets").write_text("edge.vrrp_password = s3cret\n")
    capsys.readouterr()
    return tmp_path / "edge.fw"


@pytest.fixture
def no_commands(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError(f"a command ran: {args}")
    monkeypatch.setattr(transport_module.subprocess, "run", refuse)


def fwc_install(policy: Path, *args: str) -> int:
    return main(["install", "-o", str(policy.parent / "output"), *args, str(policy)])


def test_dry_run_prints_the_plan_and_runs_nothing(compiled, capsys, no_commands):
    assert fwc_install(compiled, "--all", "--dry-run", "--ssh", "ssh -F /dev/null",
                       "--secrets", str(compiled.parent / "secrets")) == 0
    out = capsys.readouterr().out
    assert "# cluster edge: installing fw2, fw1 in this order" in out
    fw2, fw1 = out.index("ssh -F /dev/null -- root@192.0.2.2"), out.index("root@192.0.2.1")
    assert fw2 < fw1
    for step in ("iptables-restore --test", "iptables-save >", "nohup sh -c",
                 "iptables-restore < /etc/fwc/iptables.rules", "pkill -HUP",
                 "touch /etc/fwc/snapshot/confirmed", "sh /etc/fwc/snapshot/rollback.sh"):
        assert step in out, step
    assert "s3cret" not in out  # files travel on stdin: only their size is shown
    assert "<<< (" in out


def test_dry_run_with_inventory_and_netns(compiled, capsys, no_commands, tmp_path):
    inventory = tmp_path / "inventory"
    inventory.write_text("# member target\nfw1 lab-fw1\nfw2 lab-fw2 mount=/run/x/fw2\n")
    assert fwc_install(compiled, "--member", "fw2", "--dry-run", "--transport", "netns",
                       "--inventory", str(inventory), "--secrets",
                       str(compiled.parent / "secrets")) == 0
    out = capsys.readouterr().out
    assert "nsenter --mount=/run/x/fw2 --net=/run/netns/lab-fw2 -- sh -c" in out
    assert "lab-fw1" not in out


@pytest.mark.parametrize(("args", "message"), [
    ((), "say which nodes: --member M or --all"),
    (("--member", "fw9"), "no member 'fw9' in the policy (members: fw1, fw2)"),
    (("--all", "--dry-run"), "holds a redacted VRRP password: give --secrets FILE"),
    (("--all", "--transport", "local"), "the local transport installs only this node"),
    (("--all", "--confirm-timeout", "0"), "--confirm-timeout must be positive"),
])
def test_refusals_touch_nothing(compiled, capsys, no_commands, args, message):
    assert fwc_install(compiled, *args) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("seconds", ["nan", "inf", "1e400", "86401"])
def test_a_confirm_timeout_out_of_range_is_refused(compiled, capsys, no_commands, seconds):
    """NaN passed `<= 0`; NaN, inf and 1e400 ended in a traceback once the plan had begun
    (after printing part of it), and far past a day the node's shell arithmetic overflows."""
    assert fwc_install(compiled, "--all", "--dry-run", "--confirm-timeout", seconds,
                       "--secrets", str(compiled.parent / "secrets")) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.endswith("\nfwc install: --confirm-timeout must be positive and at "
                                 "most 86400 seconds (a day)\n")


def test_refuses_output_not_matching_the_policy(compiled, capsys, no_commands):
    compiled.write_text(WITH_SSH.replace("priority 100", "priority 90"), encoding="utf-8")
    assert fwc_install(compiled, "--all", "--dry-run") == 2
    assert "compiled from another version of the policy" in capsys.readouterr().err
    compiled.write_text(WITH_SSH, encoding="utf-8")
    rules = compiled.parent / "output" / "edge" / "fw1" / "iptables.rules"
    rules.write_text(rules.read_text() + "# edited\n")
    assert fwc_install(compiled, "--all", "--dry-run") == 2
    assert "does not match its MANIFEST" in capsys.readouterr().err
    assert main(["install", "--all", "-o", str(compiled.parent / "nowhere"),
                 str(compiled)]) == 2
    assert "run fwc compile first" in capsys.readouterr().err


def test_ssh_needs_a_host(tmp_path, capsys, no_commands):
    policy = tmp_path / "edge.fw"
    policy.write_text(EDGE, encoding="utf-8")
    assert main(["compile", str(policy), "-o", str(tmp_path / "output")]) == 0
    capsys.readouterr()
    assert main(["install", "--all", "-o", str(tmp_path / "output"), str(policy)]) == 2
    assert 'no ssh host for member fw1: add ssh "root@host"' in capsys.readouterr().err


def test_ssh_transport_quotes_for_any_login_shell():
    argv = SshTransport("fw1", "admin@fw1", "ssh -p 2222").argv("echo 'a b' && true")
    assert argv == ["ssh", "-p", "2222", "--", "admin@fw1",
                    "sh -c 'echo '\"'\"'a b'\"'\"' && true'"]
    assert NetnsTransport("fw1", "ns1").argv("true") == ["ip", "netns", "exec", "ns1", "sh",
                                                          "-c", "true"]
    # the confirmation probe must open a new connection, not reuse a multiplexed one
    fresh = SshTransport("fw1", "admin@fw1", "ssh -o ControlMaster=auto").fresh()
    assert fresh.argv("true")[:5] == ["ssh", "-o", "ControlMaster=auto", "-o",
                                      "ControlPath=none"]


def test_inventory_errors(tmp_path):
    path = tmp_path / "inv"
    path.write_text("fw1\n")
    with pytest.raises(InventoryError, match="inv:1: expected 'MEMBER TARGET"):
        read_inventory(path)
    path.write_text("fw1 a\nfw1 b\n")
    with pytest.raises(InventoryError, match="member 'fw1' listed twice"):
        read_inventory(path)
    path.write_text("fw1 a mount\n")
    with pytest.raises(InventoryError, match="expected key=value"):
        read_inventory(path)
    with pytest.raises(InventoryError, match="cannot read inventory"):
        read_inventory(tmp_path / "missing")


def test_the_netns_transport_never_reaches_this_machines_own_namespaces(tmp_path):
    """`--transport netns` installs into a namespace with an /etc of its own. An inventory
    line (which fwc.toml may name: a pull request may change it) pointing at this
    machine's own namespaces passed the preflight, and the install ran here, as
    `--transport local` does, which fwc.toml may say only once trusted (FWC037)."""
    own = {"fw1": InventoryEntry("../../proc/self/ns/net", {"mount": "/proc/self/ns/mnt"})}
    with pytest.raises(InventoryError, match="not a network namespace name"):
        make_transport("netns", "fw1", ssh_target=None, inventory=own)
    here = NetnsTransport("fw1", "lab-fw1", mount="/proc/self/ns/mnt")
    assert "this machine's own mount namespace" in (here.preflight() or "")
    # another process's namespace is no persistent one (and the PID may be another's)
    process = NetnsTransport("fw1", "lab-fw1", mount="/proc/self/ns/net")
    assert "a process's namespace under /proc" in (process.preflight() or "")
    missing = NetnsTransport("fw1", "lab-fw1", mount=str(tmp_path / "gone"))
    assert "does not exist" in (missing.preflight() or "")
    # any other reason it cannot be read is said too (an OSError was a traceback)
    (tmp_path / "file").write_text("")
    unreadable = NetnsTransport("fw1", "lab-fw1", mount=str(tmp_path / "file" / "mnt"))
    assert "Not a directory" in (unreadable.preflight() or "")


def test_inventory_another_user_can_write_is_refused(compiled, capsys, no_commands):
    """The inventory says where the files and the VRRP password go: like fwc.toml
    (FWC033), one that another user owns or may write is refused before anything runs."""
    inventory = compiled.parent / "inventory"
    inventory.write_text("fw1 root@192.0.2.1\nfw2 evil@203.0.113.66\n")
    for mode in (0o664, 0o646):
        inventory.chmod(mode)
        assert fwc_install(compiled, "--all", "--dry-run", "--inventory", str(inventory),
                           "--secrets", str(compiled.parent / "secrets")) == 2
        captured = capsys.readouterr()
        assert "may be written by other users" in captured.err
        assert "203.0.113.66" not in captured.out
    inventory.chmod(0o644)
    if os.geteuid() == 0:
        os.chown(inventory, 65534, -1)
        with pytest.raises(InventoryError, match="is owned by another user"):
            read_inventory(inventory)
        os.chown(inventory, 0, -1)
    assert read_inventory(inventory)["fw2"].target == "evil@203.0.113.66"


def test_secrets(tmp_path):
    path = tmp_path / "s"
    path.write_text("vrrp_password = general\nedge.vrrp_password = \"special\"\n")
    secrets = read_secrets(path)
    assert fill("edge", "keepalived.conf", 'auth_pass "@FWCPW@"', secrets) == \
        'auth_pass "special"'
    assert fill("core", "keepalived.conf", 'auth_pass "@FWCPW@"', secrets) == \
        'auth_pass "general"'
    assert fill("core", "iptables.rules", "@FWCPW@", None) == "@FWCPW@"
    with pytest.raises(SecretsError, match="redacted VRRP password"):
        fill("edge", "keepalived.conf", "@FWCPW@", {})
    path.write_text("novalue\n")
    with pytest.raises(SecretsError, match="s:1: expected KEY = VALUE"):
        read_secrets(path)


# -- ordering and settling ---------------------------------------------------------------

@pytest.fixture
def cluster() -> Cluster:
    policy = analyse(REPO / "policies" / "edge.fw").policy
    assert policy is not None
    return policy.clusters[0]


def test_the_settle_wait_outlasts_a_slow_advert(cluster, monkeypatch):
    # A fixed 30 s failed (and rolled back) the install of a healthy cluster at
    # `advert 5s`: the backup hands the VIPs back only after a master-down interval
    # (4 adverts) and the preempt delay (edge.fw: the default 10 s)
    assert settle_timeout_for(cluster, 30.0) == 30.0
    slow = replace(cluster, vrrp=replace(cluster.vrrp, advert_ms=5000))
    assert settle_timeout_for(slow, 30.0) == 36.0
    no_preempt = replace(cluster, vrrp=replace(cluster.vrrp, advert_ms=10000, preempt=False))
    assert settle_timeout_for(no_preempt, 30.0) == 46.0
    # install_cluster waits that long, and the node's watchdog is armed for it
    waits: list[float] = []
    nodes: list[float] = []

    class FakeNode:
        def __init__(self, transport, files, **options):
            self.member = transport
            self.options = options
            nodes.append(options["settle_timeout"])

        def run(self):
            self.options["settle"]()
            return plan_module.NodeResult(self.member, ok=True)

    def waited(check, cluster, transports, timeout):
        waits.append(timeout)
        return ClusterState(True, "fw1", "")

    monkeypatch.setattr(plan_module, "NodeInstall", FakeNode)
    monkeypatch.setattr(plan_module, "wait_settled", waited)
    settled = lambda c, t: ClusterState(True, "fw1", "")  # noqa: E731
    results = plan_module.install_cluster(
        slow, list(slow.members), {m.name: {} for m in slow.members},
        {m.name: m.name for m in slow.members}, plan_module.InstallOptions(),
        automatic_confirmer, check=settled)
    assert all(r.ok for r in results)
    assert waits == nodes == [36.0, 36.0]
    # a value given (the tests' fake daemons) is taken as it is
    waits.clear()
    nodes.clear()
    plan_module.install_cluster(
        slow, list(slow.members), {m.name: {} for m in slow.members},
        {m.name: m.name for m in slow.members}, plan_module.InstallOptions(settle_timeout=0.6),
        automatic_confirmer, check=settled)
    assert waits == nodes == [0.6, 0.6]


def test_backups_first_and_the_current_master_last(cluster):
    fw1, fw2 = cluster.member("fw1"), cluster.member("fw2")
    assert [m.name for m in order(cluster, [fw1, fw2], None)] == ["fw2", "fw1"]
    # after a failover fw2 holds the VIPs: it goes last, so the VIPs move once
    failed_over = ClusterState(True, "fw2", "")
    assert [m.name for m in order(cluster, [fw1, fw2], failed_over)] == ["fw1", "fw2"]


class Canned(Transport):
    """Answers `ip -o addr show` with the given addresses; conntrackd per flag."""

    def __init__(self, member: str, addresses: list[str], conntrackd: bool = True) -> None:
        super().__init__(member, member)
        self.addresses = addresses
        self.conntrackd = conntrackd

    def run(self, command: str, *, input: str | None = None, timeout: float = 60.0) -> Result:
        if command.startswith("ip -o addr"):
            lines = [f"2: eth0    {'inet6' if ':' in a else 'inet'} {a} scope global"
                     for a in self.addresses]
            return Result(0, "\n".join(lines), "")
        if "conntrackd" in command:
            return Result(0 if self.conntrackd else 1, "", "")
        raise AssertionError(command)


VIPS = ["192.0.2.254/24", "2001:db8:1::fe/64", "198.51.100.254/24"]


def test_check_cluster(cluster):
    master = Canned("fw1", ["192.0.2.1/24", *VIPS])
    backup = Canned("fw2", ["192.0.2.2/24", "2001:db8:1::2/64"])
    assert check_cluster(cluster, {"fw1": master, "fw2": backup}) == \
        ClusterState(True, "fw1", "fw1 is master")
    partial = Canned("fw1", ["192.0.2.1/24", *VIPS[:2]])
    state = check_cluster(cluster, {"fw1": partial, "fw2": backup})
    assert not state.settled and state.detail == "fw1 holds 2/3 VIPs"
    split = Canned("fw2", ["198.51.100.254/24"])
    state = check_cluster(cluster, {"fw1": master, "fw2": split})
    assert not state.settled and "fw2 holds 1/3 VIPs" in state.detail
    nobody = check_cluster(cluster, {"fw1": backup, "fw2": backup})
    assert not nobody.settled and nobody.detail == "no member holds the VIPs"
    silent = Canned("fw2", ["192.0.2.2/24"], conntrackd=False)
    state = check_cluster(cluster, {"fw1": master, "fw2": silent})
    assert not state.settled and state.detail == "conntrackd does not answer -s on fw2"


BLUE = ["192.0.2.254/24", "198.51.100.126/25"]  # loadshare: lan, uplink; master fw1
RED = ["203.0.113.126/25", "198.51.100.254/25"]  # dmz, uplink2; master fw2


def _loadshare() -> Cluster:
    policy = analyse(REPO / "policies" / "loadshare.fw").policy
    assert policy is not None
    return policy.clusters[0]


def test_vip_state_of_an_active_active_cluster():
    loadshare = _loadshare()

    def state(fw1: list[str], fw2: list[str]) -> ClusterState:
        return vip_state(loadshare, {"fw1": {a.split("/")[0] for a in fw1},
                                     "fw2": {a.split("/")[0] for a in fw2}})

    assert state(BLUE, RED) == ClusterState(True, None, "fw1 masters blue, fw2 masters red")
    # fw1 holding every VIP is a takeover, not the settled split: red goes back (preempt)
    assert state(BLUE + RED, []) == ClusterState(
        False, None, "vrrp-group red is on fw1, not yet back on its master fw2")
    assert state(BLUE[:1], RED + BLUE[1:]).detail == \
        "vrrp-group blue split: fw1 holds 1/2, fw2 holds 1/2"
    assert state([], []).detail == ("no member holds the VIPs of vrrp-group blue; "
                                    "no member holds the VIPs of vrrp-group red")
    # without preempt the VIPs stay where a failover put them: settled there
    still = replace(loadshare, vrrp=replace(loadshare.vrrp, preempt=False))
    assert vip_state(still, {"fw1": {a.split("/")[0] for a in BLUE + RED}, "fw2": set()}) == \
        ClusterState(True, None, "fw1 masters blue, fw1 masters red")


def test_check_cluster_of_an_active_active_cluster():
    loadshare = _loadshare()
    fw1 = Canned("fw1", ["192.0.2.1/24", *BLUE])
    fw2 = Canned("fw2", ["192.0.2.2/24", *RED])
    assert check_cluster(loadshare, {"fw1": fw1, "fw2": fw2}) == \
        ClusterState(True, None, "fw1 masters blue, fw2 masters red")
    silent = Canned("fw2", ["192.0.2.2/24", *RED], conntrackd=False)
    assert check_cluster(loadshare, {"fw1": fw1, "fw2": silent}).detail == \
        "conntrackd does not answer -s on fw2"


def test_wait_settled_is_bounded(cluster):
    now = [0.0]
    calls = []

    def never(c: Cluster, t: Mapping[str, Transport]) -> ClusterState:
        calls.append(now[0])
        return ClusterState(False, None, "no member holds the VIPs")

    def tick(seconds: float) -> None:
        now[0] += seconds

    state = wait_settled(never, cluster, {}, timeout=3, interval=0.5,
                         clock=lambda: now[0], sleep=tick)
    assert not state.settled and now[0] == pytest.approx(3.0) and len(calls) == 7

    answers = iter([False, False, True])

    def eventually(c: Cluster, t: Mapping[str, Transport]) -> ClusterState:
        settled = next(answers)
        return ClusterState(settled, "fw1" if settled else None, "")

    now[0] = 0.0
    assert wait_settled(eventually, cluster, {}, timeout=30, interval=0.5,
                        clock=lambda: now[0], sleep=tick).settled
    assert now[0] == pytest.approx(1.0)


def test_subprocess_is_what_transports_use():
    # the no_commands fixture relies on this
    assert transport_module.subprocess is subprocess


class PromptNode:
    """Just what the confirmers use of a NodeInstall."""

    member = "fw2"

    def __init__(self, confirmed_on_node: bool = False, reachable: bool = True) -> None:
        self.confirmed_on_node = confirmed_on_node
        self.reachable = reachable
        self.said: list[str] = []

    def confirmed_elsewhere(self) -> bool:
        return self.confirmed_on_node

    def probe(self, command: str, *, fresh: bool = False) -> bool:
        assert fresh or command != "true"
        return self.reachable

    def say(self, text: str) -> None:
        self.said.append(text)


@pytest.mark.parametrize(("typed", "expected"), [
    ("yes\n", True), ("y\n", True), ("no\n", False), ("\nmaybe\nYES\n", True), ("", False)])
def test_terminal_prompt(typed, expected):
    import io
    import os

    read_end, write_end = os.pipe()
    os.write(write_end, typed.encode())
    os.close(write_end)
    out = io.StringIO()
    with os.fdopen(read_end) as stdin:
        assert terminal_confirmer(stdin, out)(PromptNode(), 2.0) is expected
    assert "fw2: keep the new configuration? type 'yes' within" in out.getvalue()


def test_terminal_prompt_times_out():
    import io
    import os

    read_end, write_end = os.pipe()
    with os.fdopen(read_end) as stdin:
        assert terminal_confirmer(stdin, io.StringIO())(PromptNode(), 0.2) is False
        # a confirmation made on the node while nobody typed still counts
        assert terminal_confirmer(stdin, io.StringIO())(PromptNode(True), 0.2) is True
    os.close(write_end)


def test_automatic_confirmation_needs_a_fresh_connection():
    assert automatic_confirmer(PromptNode(reachable=True), 60) is True
    node = PromptNode(reachable=False)
    assert automatic_confirmer(node, 60) is False
    assert node.said == ["unreachable after the change: not confirming"]
