"""The one table of generated files (fwc.backend.files) and the render targets behind it.

Everything that handles generated files reads the table: compile (which files a
member gets, their modes), MANIFEST (secret files), install (test, apply order,
reloads, private netns directories), `fwc diff --installed`, the lab and the docs.
"""

from __future__ import annotations

import shlex
from dataclasses import replace
from pathlib import PurePosixPath

import pytest
from conftest import REPO

from fwc.backend import files as table
from fwc.backend.files import BY_NAME, FILES, SECRET_FILES, GeneratedFile, Reload, When
from fwc.backend.manifest import Manifest
from fwc.backend.output import compile_policy
from fwc.backend.render import registry
from fwc.diffing import installed
from fwc.install import scripts
from fwc.install.node import NodeInstall
from fwc.install.paths import NETNS_PRIVATE_DIRS
from fwc.lab import daemons as lab_daemons
from fwc.model import Policy
from fwc.model.vocabulary import Backend
from fwc.pipeline import analyse


@pytest.fixture(scope="module")
def edge() -> Policy:
    policy = analyse(REPO / "policies" / "edge.fw").policy
    assert policy is not None
    return policy


def test_compile_md_shows_the_table():
    page = (REPO / "docs" / "compile.md").read_text(encoding="utf-8")
    assert table.markdown() in page, (
        "docs/compile.md is stale: replace its table of generated files with the output of "
        "`python3 -m fwc.backend.files`")


def test_every_row_is_rendered_by_a_registered_target_and_every_target_has_rows():
    assert {f.target for f in FILES} == set(registry.TARGETS)
    assert set(registry.CONDITIONS) == set(When)
    assert len(BY_NAME) == len(FILES)
    for f in FILES:
        assert f.path.startswith("/") and PurePosixPath(f.path).name, f
        # A file the node loads from stdin names the program that does it.
        assert (f.loader is not None) == (f.reload in (Reload.RULES, Reload.FAILSAFE)), f


def test_compile_writes_exactly_the_rows_a_member_gets_with_their_modes(edge):
    [cluster] = compile_policy(edge)
    by_member = cluster.members()
    # edge has IPv6, a sync link and no ipsets: every row but ipsets.rules, in table order.
    expected = [f.name for f in FILES if f.when not in (When.IPSETS, When.ROUTES, When.UPLINKS)
                and f.backend in (None, Backend.IPTABLES)]
    assert by_member == {"fw1": expected, "fw2": expected}
    modes = {f.path: f.mode for f in cluster.files}
    for member in by_member:
        for name in expected:
            assert modes[f"{member}/{name}"] == BY_NAME[name].mode, name
    assert BY_NAME["keepalived.conf"].mode == 0o600  # edge has a VRRP password


def test_a_secret_row_without_a_secret_is_world_readable(edge):
    [cluster] = compile_policy(edge, redact=True)
    modes = {f.path: f.mode for f in cluster.files}
    assert SECRET_FILES == ("keepalived.conf",)
    assert modes["fw1/keepalived.conf"] == 0o644
    assert BY_NAME["keepalived.conf"].output_mode(holds_secret=False) == 0o644


def _ipv4_only(tmp_path) -> Policy:
    """edge.fw without its IPv6 addresses (lines): a cluster with no IPv6 address."""
    from conftest import write_policy

    text = (REPO / "policies" / "edge.fw").read_text(encoding="utf-8")
    v4 = "\n".join(line for line in text.splitlines() if "2001:db8" not in line) + "\n"
    path = write_policy(tmp_path, v4)
    analysis = analyse(path)
    assert analysis.policy is not None and not [
        d for d in analysis.diagnostics if d.severity == "error"], analysis.diagnostics
    assert [c.families for c in analysis.policy.clusters] == [frozenset({4})]
    return analysis.policy


def _policies(rules: str) -> dict[str, str]:
    """chain -> policy of the built-in chains of an iptables-restore file's filter table."""
    table = rules.split("*filter\n", 1)[1]
    return {line[1:].split()[0]: line.split()[1] for line in table.splitlines()
            if line.startswith(":") and line.split()[1] != "-"}


def test_an_ipv4_only_cluster_filters_ipv6_too(tmp_path):
    """The kernel gives the node IPv6 addresses of its own (link-local; global ones from
    router advertisements while forwarding is off): IPv6 left unfiltered would reach every
    service of the firewall. Every member gets both families' rules, DROP on INPUT and
    FORWARD; forwarding stays IPv4 only."""
    [cluster] = compile_policy(_ipv4_only(tmp_path))
    names = cluster.members()["fw1"]
    assert names == [f.name for f in FILES
                     if f.when not in (When.IPSETS, When.ROUTES, When.UPLINKS)
                     and f.backend in (None, Backend.IPTABLES)]
    text = {f.path: f.content.decode() for f in cluster.files}
    for name in ("ip6tables.rules", "failsafe6.rules"):
        policies = _policies(text[f"fw1/{name}"])
        assert policies["INPUT"] == policies["FORWARD"] == "DROP", (name, policies)
    rules6 = text["fw1/ip6tables.rules"]
    assert '--icmpv6-type 135 -m hl --hl-eq 255 -m comment --comment "fwc auto: ndp"' in rules6
    assert "--dport 22" not in rules6  # the policy's ssh access is IPv4 (from admin)
    assert "--dport 22" in text["fw1/iptables.rules"]
    forwarding = text["fw1/forwarding.conf"]
    assert "net.ipv4.ip_forward = 1" in forwarding and "net.ipv6" not in forwarding
    # The IPv6 files load only where the kernel has IPv6 (a cluster without IPv6
    # addresses must boot on a kernel booted with ipv6.disable=1); the IPv4 ones always.
    boot = text["fw1/fwc-firewall.sh"]
    assert "if kernel_has /proc/sys/net/ipv6 /etc/fwc/ip6tables.rules; then" in boot
    assert "if kernel_has /proc/sys/net/ipv6 /etc/fwc/failsafe6.rules; then" in boot
    assert "kernel_has /proc/sys/net/ipv6 /etc/fwc/iptables.rules" not in boot
    assert [table.kernel_guard(BY_NAME[n], {4}) for n in names
            if BY_NAME[n].loader] == [None, "/proc/sys/net/ipv6", None, "/proc/sys/net/ipv6"]


def test_a_cluster_with_ipv6_needs_it_from_the_kernel(edge):
    """With IPv6 addresses the IPv6 rules are not optional: a kernel without IPv6 fails the
    load (closed), as before."""
    [cluster] = compile_policy(edge)
    boot = next(f.content.decode() for f in cluster.files if f.path == "fw1/fwc-firewall.sh")
    assert "kernel_has" not in boot
    assert all(table.kernel_guard(f, edge.clusters[0].families) is None for f in FILES)


def test_an_ipv4_only_nftables_cluster_filters_ipv6_too(tmp_path):
    """nft: both families' chains, and no accept of a family fwc did not compile (which let
    IPv6 through every DROP hook)."""
    [cluster] = compile_policy(_ipv4_only(tmp_path), backend=Backend.NFTABLES)
    text = {f.path: f.content.decode() for f in cluster.files}
    for name in ("nftables.nft", "failsafe.nft"):
        nft = text[f"fw1/{name}"]
        assert "family not compiled" not in nft, name
        assert "meta nfproto ipv6 accept" not in nft, name
        for hook in ("input", "forward"):
            chain = nft.split(f"\tchain filter-{hook.upper()} {{\n", 1)[1].split("\t}", 1)[0]
            assert f"type filter hook {hook} priority 0; policy drop;" in chain, (name, chain)
            assert f"meta nfproto ipv6 jump filter-{hook.upper()}-v6" in chain, (name, chain)
    # one inet table: nothing for the boot script to skip on a kernel without IPv6
    assert "kernel_has" not in text["fw1/fwc-firewall.sh"]


def test_manifest_redacts_exactly_the_secret_rows(edge):
    [cluster] = compile_policy(edge)
    manifest = Manifest.parse(next(f.content for f in cluster.files
                                   if f.path == "MANIFEST").decode())
    redacted = {e.path.split("/", 1)[1] for e in manifest.files if e.kind == "redacted"}
    assert redacted == set(SECRET_FILES)


def test_the_renderers_name_each_other_by_the_table_paths(edge):
    [cluster] = compile_policy(edge)
    text = {f.path: f.content.decode() for f in cluster.files}
    assert table.path_of("fwc-notify.sh") in text["fw1/keepalived.conf"]
    assert f"CONFIG={table.path_of('conntrackd.conf')}\n" in text["fw1/fwc-notify.sh"]
    assert f"ExecStart={table.path_of('fwc-firewall.sh')}" in text["fw1/fwc-firewall.service"]
    boot = text["fw1/fwc-firewall.sh"]
    for f in FILES:
        if f.reload in (Reload.RULES, Reload.FAILSAFE) and f.backend is Backend.IPTABLES:
            assert f"{f.loader} < {f.path}" in boot, f.name
    assert table.path_of("forwarding.conf") in boot and table.path_of("sysctl.conf") in boot


def test_install_loads_in_load_order_from_the_table():
    present = [f for f in FILES if f.backend in (None, Backend.IPTABLES)]
    lines = scripts.apply(present).splitlines()
    loads = [line for line in lines
             if not line.startswith(("mkdir", "cp", "set", "rm", "exec 9", "if command -v flock",
                                     f"if [ -e {scripts.ROLLED_BACK} ]"))]
    assert loads == [
        "ipset restore -exist < /etc/fwc/ipsets.rules",
        "iptables-restore < /etc/fwc/iptables.rules",
        "ip6tables-restore < /etc/fwc/ip6tables.rules",
        "if ! sysctl -q -p /etc/sysctl.d/90-fwc.conf; then "
        "echo 'warning: some sysctl keys were not set' >&2; fi",
        "if ! sh /etc/fwc/fwc-routes.sh; then echo 'warning: some routes were not installed' "
        ">&2; fi",
        "sysctl -q -p /etc/fwc/forwarding.conf",
    ]
    for f in present:  # every row goes to its path with its mode, or the apply stops
        new = f"{f.path}.fwc-new"
        assert f"cp {scripts.STAGING}/{f.name} {new} && chmod {f.mode:o} {new} " \
            f"&& mv -f {new} {f.path} || exit 1" in lines, f.name
    test = scripts.test_ruleset(present)
    for f in present:
        if f.reload in (Reload.RULES, Reload.FAILSAFE):
            assert f"{f.loader} --test < {scripts.STAGING}/{f.name}" in test, f.name
    assert test.startswith("unshare -n sh -c ")  # ipsets loaded in a throwaway netns first
    assert f"sh -n {scripts.STAGING}/fwc-routes.sh" in test  # the routes script parses


def _reloads(changed: list[str], *, systemd: bool = True, private: bool = True,
             gets: list[GeneratedFile] | None = None) -> list[str]:
    """What the install reloads when CHANGED files changed, for a member that GETS those
    rows (default: every row)."""
    node = NodeInstall.__new__(NodeInstall)  # only reload_commands is exercised
    node.files = list(FILES) if gets is None else gets
    node.systemd = systemd
    node.role = "backup"

    class Result:
        pass

    class Transport:
        private_run = private

    result = Result()
    result.changed = changed  # type: ignore[attr-defined]
    node.result, node.transport = result, Transport()  # type: ignore[assignment]
    return [daemon for daemon, _ in node.reload_commands(old_config=None)]


@pytest.mark.parametrize("row", FILES, ids=lambda f: f.name)
def test_install_reloads_what_the_row_says(row: GeneratedFile):
    expected = {Reload.SYSTEMD: ["systemd"], Reload.KEEPALIVED: ["keepalived"],
                Reload.CONNTRACKD: ["conntrackd"],
                Reload.UPLINKS: ["fwc-uplinks"]}.get(row.reload, [])
    assert _reloads([row.name]) == expected


def test_install_reloads_in_daemon_order_once_each():
    assert _reloads([f.name for f in reversed(FILES)]) == ["systemd", "fwc-uplinks", "keepalived",
                                                           "conntrackd"]
    # Without systemd the monitor's restart is the admin's: a warning says so.
    assert _reloads([f.name for f in FILES], systemd=False) == ["fwc-uplinks", "keepalived",
                                                               "conntrackd"]


def test_a_removed_row_reloads_only_what_forgets_it():
    # A member that no longer gets the routes, the uplink monitor or state sync: systemd
    # forgets their units, the monitor stops; conntrackd is not restarted without its
    # configuration (it would not come back), it runs on until the next boot.
    gets = [f for f in FILES if f.when not in (When.ROUTES, When.UPLINKS, When.SYNC)
            and f.backend is not Backend.NFTABLES]
    gone = scripts.stale_rows(gets)
    assert {f.name for f in gone} == {
        "conntrackd.conf", "conntrackd-systemd.conf", "fwc-routes.sh", "fwc-routes.service",
        "fwc-uplinks.sh", "fwc-uplinks.service"}
    assert _reloads([f.name for f in gone], gets=gets) == ["systemd", "fwc-uplinks"]
    assert _reloads(["conntrackd.conf"], gets=gets) == []


def test_every_generated_file_carries_the_mark_install_tells_them_by(tmp_path):
    # `fwc install` removes a file the member no longer gets only when its first lines
    # hold GENERATED_MARK: every row, every backend, must write it there.
    seen: set[str] = set()
    # the examples, and edge with a group large enough to become an ipset (none has one)
    hosts = ", ".join(f"198.18.{i}.{2 * i + 1}" for i in range(20))
    with_sets = tmp_path / "edge.fw"
    with_sets.write_text((REPO / "policies" / "edge.fw").read_text().replace(
        "policy edge {\n", f"group blocked {hosts}\npolicy edge {{\n"
        "    drop from blocked to any\n"))
    for path in [*sorted((REPO / "policies").glob("*.fw")), with_sets]:
        policy = analyse(path).policy
        assert policy is not None, path
        for backend in Backend:
            for cluster in compile_policy(policy, backend=backend):
                for f in cluster.files:
                    if f.path == "MANIFEST":
                        continue
                    head = f.content.decode().splitlines()[:table.GENERATED_MARK_LINES]
                    assert any(table.GENERATED_MARK in line for line in head), f.path
                    seen.add(f.path.rsplit("/", 1)[-1])
    assert seen == {f.name for f in FILES}


def test_netns_private_dirs_cover_every_row():
    for f in FILES:
        parts = PurePosixPath(f.path).parts
        if parts[1] == "etc":
            assert parts[2] in NETNS_PRIVATE_DIRS, f.path


def test_diff_installed_and_lab_read_the_table():
    assert installed.RULESETS == (("iptables.rules", "iptables-save", "iptables-restore"),
                                  ("ip6tables.rules", "ip6tables-save", "ip6tables-restore"))
    # The lab installs through fwc install; the paths it reads back are the table's.
    assert BY_NAME["keepalived.conf"].path == lab_daemons.KEEPALIVED_CONF
    assert BY_NAME["conntrackd.conf"].path == lab_daemons.CONNTRACKD_CONF
    assert lab_daemons.BOOT_SCRIPT is BY_NAME["fwc-firewall.sh"]


def test_diff_installed_compares_every_other_row_at_its_path(edge):
    [cluster] = compile_policy(edge)
    compiled = {f.path.split("/", 1)[1]: f.content.decode() for f in cluster.files
                if f.path.startswith("fw1/")}

    class Node:
        """The node runs exactly what was compiled, except one file."""

        member = "fw1"

        def __init__(self, files: dict[str, str]) -> None:
            self.files = files

        def run(self, command: str, input: str | None = None, timeout: float = 60):
            class Result:
                ok = True
                stderr = ""

            result = Result()
            words = shlex.split(command)
            if words[0] == "cat":
                result.stdout = self.files.get(words[1], "(fwc: absent)\n")  # type: ignore
            elif words[0] == "unshare":
                result.stdout = ""  # no canonical form here: compared as compiled
            else:
                name = "iptables.rules" if words[0].startswith("iptables") else \
                    "ip6tables.rules" if words[0].startswith("ip6tables") else None
                result.stdout = compiled.get(name, "") if name else ""  # type: ignore
            return result

    node_files = {BY_NAME[name].path: text for name, text in compiled.items()}
    assert installed.compare(Node(node_files), compiled) == []  # type: ignore[arg-type]
    for f in FILES:
        if f.reload is Reload.RULES or f.name not in compiled:
            continue
        changed = dict(node_files)
        changed[f.path] += "# edited on the node\n"
        drift = installed.compare(Node(changed), compiled)  # type: ignore[arg-type]
        assert [title for title, _ in drift] == [f.path], f.name


def test_a_new_target_is_one_module_and_a_row(edge, monkeypatch):
    """The interface the nftables backend (issue 13) will use: a target plus a row."""

    def render_file(build: registry.MemberBuild, file: GeneratedFile) -> str:
        rules = build.lowered(4)
        return f"# {file.name} for {build.member.name}: {len(rules.tables)} tables\n"

    row = GeneratedFile("example.rules", "/etc/fwc/example.rules", 0o640, "example",
                        When.ALWAYS, Reload.BOOT, "an example backend")
    monkeypatch.setattr(registry, "FILES", (*FILES, row))
    monkeypatch.setattr(registry, "TARGETS", {**registry.TARGETS,
                                              "example": registry.Target("example", render_file)})
    [cluster] = compile_policy(edge)
    got = {f.path: f for f in cluster.files}
    assert got["fw2/example.rules"].content.decode().startswith("# example.rules for fw2: ")
    assert got["fw2/example.rules"].mode == 0o640
    assert cluster.members()["fw1"][-1] == "example.rules"
    assert "example.rules" in next(f.content for f in cluster.files
                                   if f.path == "MANIFEST").decode()


def test_rows_are_frozen_data():
    row = BY_NAME["iptables.rules"]
    with pytest.raises(AttributeError):
        row.path = "/tmp/x"  # type: ignore[misc]
    assert replace(row, name="x").name == "x"


def test_install_preflight_asks_for_the_programs_of_the_rows_it_installs():
    tools = scripts.required_tools([BY_NAME["iptables.rules"], BY_NAME["keepalived.conf"]])
    assert [tool for tool, _ in tools] == ["flock", "cmp", "sync", "iptables-restore",
                                           "iptables-save",
                                           "keepalived", "pkill"]
    every = {tool for tool, _ in scripts.required_tools(list(FILES))}
    assert {"ipset", "unshare", "conntrackd", "sysctl", "ip6tables-restore"} <= every
    assert "command -v conntrackd" in scripts.preflight([BY_NAME["conntrackd.conf"]])
