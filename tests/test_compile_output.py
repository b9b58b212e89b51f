"""The output directory: determinism, staging safety, removal, MANIFEST, secrets."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

from conftest import EDGE_TEXT as EDGE
from conftest import REPO, compile_to, file_tree, with_core_cluster


def test_compile_twice_gives_the_same_bytes_from_any_directory(edge, tmp_path, monkeypatch):
    assert compile_to(edge, tmp_path / "a") == 0
    monkeypatch.chdir(tmp_path / "src")
    assert compile_to(Path("edge.fw"), tmp_path / "b") == 0
    a, b = file_tree(tmp_path / "a"), file_tree(tmp_path / "b")
    assert a == b
    assert set(a) == {"edge/MANIFEST"} | {
        f"edge/{m}/{f}" for m in ("fw1", "fw2")
        for f in ("iptables.rules", "ip6tables.rules", "keepalived.conf", "conntrackd.conf",
                  "keepalived-systemd.conf", "fwc-notify.sh", "sysctl.conf",
                  "failsafe.rules", "failsafe6.rules", "forwarding.conf", "fwc-firewall.sh",
                  "fwc-firewall.service", "conntrackd-systemd.conf")}
    assert a["edge/fw1/fwc-notify.sh"][1] == 0o755
    assert a["edge/fw1/fwc-firewall.sh"][1] == 0o755
    assert a["edge/fw1/iptables.rules"][1] == 0o644


def test_manifest_hashes_every_file_and_source_without_absolute_paths(edge, tmp_path):
    assert compile_to(edge, tmp_path / "out") == 0
    manifest = (tmp_path / "out" / "edge" / "MANIFEST").read_text()
    assert str(tmp_path) not in manifest
    assert "policy edge.fw" in manifest.splitlines()
    source_hash = hashlib.sha256(EDGE.encode()).hexdigest()
    assert f"source {source_hash}  edge.fw" in manifest.splitlines()
    files = [line.split() for line in manifest.splitlines()
             if line.startswith(("file ", "redacted "))]
    assert len(files) == 26  # 13 files per member
    for kind, digest, path in files:
        content = (tmp_path / "out" / "edge" / path).read_bytes()
        # keepalived.conf holds the password: hashed as if redacted (see the secrets tests)
        assert kind == ("redacted" if path.endswith("keepalived.conf") else "file")
        if kind == "file":
            assert hashlib.sha256(content).hexdigest() == digest
    for generated in (tmp_path / "out").rglob("*"):
        if generated.is_file():
            text = generated.read_text()
            assert str(tmp_path) not in text
            assert not any(y in text for y in ("2026-", "2025-", "UTC"))  # no timestamps


def test_comments_name_sources_relative_to_the_root_policy(tmp_path):
    (tmp_path / "site" / "lib").mkdir(parents=True)
    lib = tmp_path / "site" / "lib" / "rules.fw"
    root = tmp_path / "site" / "main.fw"
    head, _, tail = EDGE.partition("policy edge {")
    root.write_text(head + 'include "lib/rules.fw"\n')
    lib.write_text("policy edge {" + tail)
    assert compile_to(root, tmp_path / "out") == 0
    rules = (tmp_path / "out" / "edge" / "fw1" / "iptables.rules").read_text()
    assert '--comment "lib/rules.fw:2"' in rules
    manifest = (tmp_path / "out" / "edge" / "MANIFEST").read_text()
    assert "  lib/rules.fw\n" in manifest and "policy main.fw\n" in manifest


def test_sources_are_named_alike_from_any_directory_through_links(tmp_path, monkeypatch):
    """The generated files named a source by its path as the loader showed it: relative
    to the working directory when inside it (links followed), else as written (links
    and `..` taken literally). Through a linked directory, `include "../lib/x.fw"` was
    `../other/deep/lib/x.fw` from the repository's top and `lib/x.fw` (a file that is
    not there) from the policy's own directory; a policy reached through a link was
    named after the link or after its target, by the same rule."""
    repo = tmp_path / "repo"
    (repo / ".git").mkdir(parents=True)  # the repository: includes may go anywhere in it
    (repo / "pol").mkdir()
    (repo / "other" / "deep" / "sub").mkdir(parents=True)
    (repo / "other" / "deep" / "lib").mkdir()
    (repo / "pol" / "sub").symlink_to("../other/deep/sub")
    (repo / "other" / "deep" / "sub" / "rules.fw").write_text('include "../lib/x.fw"\n')
    head, _, tail = EDGE.partition("policy edge {")
    (repo / "other" / "deep" / "lib" / "x.fw").write_text("policy edge {" + tail)
    (repo / "pol" / "v2.fw").write_text(head + 'include "sub/rules.fw"\n')
    (repo / "pol" / "edge.fw").symlink_to("v2.fw")
    trees = []
    for cwd, named in ((repo, "pol/edge.fw"), (repo / "pol", "edge.fw"),
                       (tmp_path, str(repo / "pol" / "edge.fw"))):
        monkeypatch.chdir(cwd)
        out = tmp_path / f"out{len(trees)}"
        assert compile_to(Path(named), out) == 0
        trees.append(file_tree(out))
    assert trees[0] == trees[1] == trees[2]
    manifest = trees[0]["edge/MANIFEST"][0].decode()
    assert "policy edge.fw\n" in manifest and "  edge.fw\n" in manifest
    assert "  ../other/deep/sub/rules.fw\n" in manifest
    assert "  ../other/deep/lib/x.fw\n" in manifest
    rules = trees[0]["edge/fw1/iptables.rules"][0].decode()
    assert '--comment "../other/deep/lib/x.fw:2"' in rules


def test_an_error_leaves_the_output_untouched(edge, tmp_path, capsys):
    out = tmp_path / "out"
    assert compile_to(edge, out) == 0
    before = file_tree(out)
    edge.write_text(EDGE.replace("accept from client   to firewall service ssh",
                                 "accept from nobody   to firewall service ssh"))
    assert compile_to(edge, out) == 1
    assert "nothing written" in capsys.readouterr().err
    assert file_tree(out) == before
    assert not [p for p in tmp_path.iterdir() if "staging" in p.name]


def test_strict_makes_warnings_fatal(edge, tmp_path):
    edge.write_text(EDGE + "host unused 192.0.2.99\n")  # FWC103, a warning
    assert compile_to(edge, tmp_path / "lax") == 0
    assert compile_to(edge, tmp_path / "strict", "--strict") == 1
    assert not (tmp_path / "strict").exists()


def test_a_failure_while_writing_changes_nothing(edge, tmp_path, monkeypatch):
    out = tmp_path / "out"
    assert compile_to(edge, out) == 0
    before = file_tree(out)
    import fwc.backend.output

    def broken(directory, cluster):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(fwc.backend.output, "_write_cluster", broken)
    assert compile_to(edge, out) == 1
    assert file_tree(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "src"]


def test_vanished_members_and_clusters_go_other_policies_stay(edge, tmp_path):
    out = tmp_path / "out"
    # a second cluster in the same policy, and another policy's cluster
    # core is edge's copy on the same segments, with its own VRIDs, sync port and addresses
    edge.write_text(with_core_cluster(EDGE))
    assert compile_to(edge, out) == 0
    assert (out / "core" / "fw1").is_dir()
    other = tmp_path / "src" / "other.fw"
    other.write_text(EDGE.replace("cluster edge", "cluster branch").replace(
        "policy edge", "policy branch").replace("nat edge", "nat branch").replace(
        "expect edge", "expect branch"))
    assert compile_to(other, out) == 0
    # fw2 leaves edge, and the core cluster disappears from this policy
    lines = EDGE.splitlines()
    start = next(i for i, line in enumerate(lines) if "member fw2" in line)
    shrunk = "\n".join(lines[:start] + lines[start + 5:]) + "\n"
    shrunk = shrunk.replace("cluster edge {", "cluster edge {\n    member fw3 priority 90 {\n"
                            "        lan    eth0 192.0.2.3/24, 2001:db8:1::3/64\n"
                            "        uplink eth1 198.51.100.3/24\n"
                            "        sync   eth2 203.0.113.3/24\n    }")
    edge.write_text(shrunk)
    assert compile_to(edge, out) == 0
    assert sorted(p.name for p in (out / "edge").iterdir()) == ["MANIFEST", "fw1", "fw3"]
    assert not (out / "core").exists()
    assert (out / "branch" / "fw2" / "iptables.rules").is_file()


def test_a_cluster_of_another_policy_is_never_overwritten(edge, tmp_path, capsys):
    out = tmp_path / "out"
    assert compile_to(edge, out) == 0
    before = file_tree(out)
    clash = tmp_path / "src" / "clash.fw"
    clash.write_text(EDGE)
    assert compile_to(clash, out) == 1
    assert "belongs to policy 'edge.fw'" in capsys.readouterr().err
    assert file_tree(out) == before


def test_redact_secrets_writes_a_placeholder_that_keepalived_accepts(edge, tmp_path):
    assert compile_to(edge, tmp_path / "out", "--redact-secrets") == 0
    conf = tmp_path / "out" / "edge" / "fw1" / "keepalived.conf"
    text = conf.read_text()
    assert "s3cret" not in text
    assert 'auth_pass "@FWCPW@"' in text and len("@FWCPW@") <= 8
    assert stat.S_IMODE(conf.stat().st_mode) == 0o644
    for path in (tmp_path / "out").rglob("*"):
        if path.is_file():
            assert "s3cret" not in path.read_text()


def test_password_file_is_read_and_the_config_is_private(edge, tmp_path):
    (edge.parent / "vrrp.secret").write_text("fromfile\n")
    edge.write_text(EDGE.replace('password "s3cret"', 'password file "vrrp.secret"'))
    old_umask = os.umask(0)
    try:
        assert compile_to(edge, tmp_path / "out") == 0
    finally:
        os.umask(old_umask)
    for member in ("fw1", "fw2"):
        conf = tmp_path / "out" / "edge" / member / "keepalived.conf"
        assert 'auth_pass "fromfile"' in conf.read_text()
        assert stat.S_IMODE(conf.stat().st_mode) == 0o600
        other = tmp_path / "out" / "edge" / member / "conntrackd.conf"
        assert stat.S_IMODE(other.stat().st_mode) == 0o644


def test_summary_lists_the_files_per_member(edge, tmp_path, capsys):
    assert compile_to(edge, tmp_path / "out") == 0
    printed = capsys.readouterr().out
    assert f"{tmp_path / 'out'}/edge/fw1: iptables.rules ip6tables.rules keepalived.conf " \
        "conntrackd.conf conntrackd-systemd.conf keepalived-systemd.conf fwc-notify.sh " \
        "sysctl.conf forwarding.conf failsafe.rules failsafe6.rules fwc-firewall.sh " \
        "fwc-firewall.service\n" in printed


def test_concurrent_compiles_into_one_directory_keep_both_clusters(edge, tmp_path):
    import subprocess
    import sys

    other = tmp_path / "src" / "other.fw"
    other.write_text(EDGE.replace("cluster edge", "cluster branch").replace(
        "policy edge", "policy branch").replace("nat edge", "nat branch").replace(
        "expect edge", "expect branch"))
    out = tmp_path / "out"
    procs = [subprocess.Popen([sys.executable, "-m", "fwc", "compile", str(p), "-o", str(out)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=REPO)
             for p in (edge, other)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    assert sorted(p.name for p in out.iterdir()) == ["branch", "edge"]
