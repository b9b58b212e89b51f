"""The nftables backend (issue 13, first slice): language, files, real `nft`, refusals.

`backend nftables` in a cluster (or `fwc compile --backend nftables`) writes
nftables.nft and failsafe.nft instead of the iptables rows; `nft -c -f` accepts
them for every example, a namespace loads them for real, a second load replaces
fwc's table and a foreign table survives both. `fwc query` and the lab do not
read nft yet and refuse such a cluster (install and diff --installed:
tests/test_install_nft.py).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import EXAMPLE_FILES, POLICIES, cannot_run, skip_or_fail_without_root
from test_ipsets_netns import BIG_GROUP_POLICY
from test_realtools import in_ns, namespace

from fwc.backend.capabilities import nftables_gaps
from fwc.backend.files import FILES
from fwc.backend.output import compile_policy
from fwc.backend.render import escape
from fwc.cli import main
from fwc.model.vocabulary import Backend
from fwc.pipeline import analyse

IPTABLES_ONLY = {"iptables.rules", "ip6tables.rules", "ipsets.rules", "failsafe.rules",
                 "failsafe6.rules"}
FOREIGN = "table inet other {\n\tchain input {\n\t\ttype filter hook input priority 10;\n" \
          "\t\tcounter\n\t}\n}\n"


def _nft() -> str:
    found = shutil.which("nft")
    if found is None:
        cannot_run("nft is missing (tests/run.sh installs the nftables package)")
    return found


def _with_backend(text: str, word: str = "nftables") -> str:
    """TEXT with `backend WORD` as the first item of its first cluster."""
    brace = text.index("{", text.index("\ncluster ") + 1)
    return text[:brace + 1] + f"\n    backend {word}" + text[brace + 1:]


def _copy_policies(tmp_path: Path) -> Path:
    target = tmp_path / "policies"
    shutil.copytree(POLICIES, target)
    return target


def _compiled(path: Path, backend: Backend | None = None) -> dict[str, str]:
    analysis = analyse(path)
    assert analysis.policy is not None and analysis.ok, analysis.diagnostics
    return {f"{c.name}/{f.path}": f.content.decode()
            for c in compile_policy(analysis.policy, backend=backend) for f in c.files}


# -- the language ---------------------------------------------------------------------------

def test_backend_keyword_sets_the_cluster_backend_default_iptables(tmp_path):
    copy = _copy_policies(tmp_path)
    plain = analyse(copy / "edge.fw").policy
    assert plain is not None and plain.clusters[0].backend is Backend.IPTABLES
    path = copy / "edge.fw"
    path.write_text(_with_backend(path.read_text()))
    nft = analyse(path)
    assert nft.policy is not None and nft.ok
    assert nft.policy.clusters[0].backend is Backend.NFTABLES


def test_unknown_and_repeated_backend_are_diagnostics_with_the_line(tmp_path, capsys):
    copy = _copy_policies(tmp_path)
    path = copy / "edge.fw"
    original = path.read_text()
    path.write_text(_with_backend(original, "pf"))
    assert main(["check", str(path)]) == 1
    captured = capsys.readouterr()
    err = captured.out + captured.err
    assert "FWC109" in err and "unknown backend 'pf'" in err and "iptables, nftables" in err
    line = 1 + _with_backend(original, "pf")[:_with_backend(original, "pf").index(
        "backend pf")].count("\n")
    assert f"edge.fw:{line}:" in err
    path.write_text(_with_backend(_with_backend(original), "iptables"))
    assert main(["check", str(path)]) == 1
    captured = capsys.readouterr()
    err = captured.out + captured.err
    assert "FWC110" in err and "'backend' is given twice" in err


# -- the files ------------------------------------------------------------------------------

def test_nftables_cluster_gets_nft_files_instead_of_the_iptables_rows(tmp_path):
    copy = _copy_policies(tmp_path)
    path = copy / "edge.fw"
    path.write_text(_with_backend(path.read_text()))
    files = _compiled(path)
    names = {p.rsplit("/", 1)[1] for p in files if p.count("/") == 2}
    assert not names & IPTABLES_ONLY
    assert {"nftables.nft", "failsafe.nft", "keepalived.conf", "fwc-firewall.sh"} <= names
    # The override on the command line gives the same files as the keyword (the
    # keyword's line shifts the policy's lines, hence the comparison without comments).
    overridden = _compiled(POLICIES / "edge.fw", Backend.NFTABLES)
    assert overridden.keys() == files.keys()
    assert overridden["edge/fw1/nftables.nft"].count("\n") == \
        files["edge/fw1/nftables.nft"].count("\n")
    rules = files["edge/fw1/nftables.nft"]
    lines = rules.splitlines()
    # Only fwc's table, replaced in the same transaction; never the whole ruleset.
    assert lines[2:5] == ["table inet fwc {}", "delete table inet fwc", "table inet fwc {"]
    assert "flush ruleset" not in rules
    assert "ip daddr 224.0.0.18/32 meta l4proto 112 counter accept" in rules
    assert "ip6 daddr ff02::12/128 meta l4proto 112 counter accept" in rules
    assert "udp dport 3780" in rules  # conntrackd sync
    assert "ct state related,established counter accept" in rules
    assert 'limit rate 5/second burst 10 packets counter log prefix "default "' in rules
    assert 'comment "edge.fw:' in rules
    assert "type nat hook prerouting priority -100" in rules
    assert "type nat hook postrouting priority 100" in rules
    script = files["edge/fw1/fwc-firewall.sh"]
    assert "nft -f /etc/fwc/nftables.nft" in script and "nft -f /etc/fwc/failsafe.nft" in script
    assert "iptables" not in script
    assert subprocess.run(["sh", "-n"], input=script, text=True).returncode == 0


def test_iptables_backend_rows_are_the_old_ones():
    by_backend = {f.name: f.backend for f in FILES}
    assert {n for n, b in by_backend.items() if b is Backend.IPTABLES} == IPTABLES_ONLY
    assert {n for n, b in by_backend.items() if b is Backend.NFTABLES} == \
        {"nftables.nft", "failsafe.nft"}


def test_large_groups_become_named_interval_sets(tmp_path):
    path = tmp_path / "big.fw"
    path.write_text(BIG_GROUP_POLICY)
    rules = _compiled(path, Backend.NFTABLES)["big/fw1/nftables.nft"]
    # named after the object, as the ipset is (fwc.backend.ipsets), one per family
    assert "\tset fwc4-partners {\n\t\ttype ipv4_addr\n\t\tflags interval\n" in rules
    assert "ip saddr @fwc4-partners" in rules
    assert "ip6 saddr @fwc6-blocked" in rules
    # no anonymous sets: every list of more than one element is a named set
    assert " { " not in "".join(line for line in rules.splitlines()
                                if not line.startswith(("\t", "table")) or "saddr" in line
                                or "dport" in line)


def test_nft_escaping_refuses_what_nft_cannot_read():
    assert escape.nft_string("eth0") == '"eth0"'
    with pytest.raises(escape.UnwritableText):
        escape.nft_string('a"b')
    with pytest.raises(escape.UnwritableText):
        escape.nft_device("eth*")
    with pytest.raises(escape.UnwritableText):
        escape.nft_identifier("1chain")
    long = "x" * 200 + ".fw:42"
    comment = escape.nft_comment(long)
    assert comment.endswith('.fw:42"') and len(comment.encode()) - 2 <= escape.NFT_COMMENT_MAX


# -- the real tool --------------------------------------------------------------------------

def _nft_gaps(path: Path) -> list[str]:
    """What the example uses that the nftables backend does not write yet (FWC429)."""
    policy = analyse(path).policy
    assert policy is not None
    return [what for cluster in policy.clusters for what, _ in nftables_gaps(cluster)]


def _refused_for_nft(example: Path, tmp_path: Path) -> bool:
    """An example the nftables backend cannot write is refused, nothing written (FWC429)."""
    if not _nft_gaps(example):
        return False
    out = tmp_path / "refused"
    assert main(["compile", "--backend", "nftables", str(example), "-o", str(out)]) == 1
    assert not out.exists()
    return True


@pytest.mark.parametrize("example", EXAMPLE_FILES, ids=[p.name for p in EXAMPLE_FILES])
def test_nft_checks_every_example(example, tmp_path):
    nft = _nft()
    if _refused_for_nft(example, tmp_path):
        return
    files = _compiled(example, Backend.NFTABLES)
    nft_files = {k: v for k, v in files.items() if k.endswith(".nft")}
    assert nft_files
    for name, text in nft_files.items():
        path = tmp_path / name.replace("/", "_")
        path.write_text(text)
        checked = subprocess.run([nft, "-c", "-f", str(path)], capture_output=True, text=True)
        assert checked.returncode == 0, f"{name}: {checked.stderr}"


def _table(ns: str, name: str) -> str:
    listed = in_ns(ns, "nft", "list", "table", "inet", name)
    assert listed.returncode == 0, listed.stderr
    return listed.stdout


@pytest.mark.root
@pytest.mark.parametrize("example", [*EXAMPLE_FILES, None],
                         ids=[*(p.name for p in EXAMPLE_FILES), "big-groups"])
def test_nft_loads_replaces_only_its_table_in_a_namespace(example, tmp_path):
    skip_or_fail_without_root()
    _nft()
    if example is None:
        example = tmp_path / "big.fw"
        example.write_text(BIG_GROUP_POLICY)
    if _refused_for_nft(example, tmp_path):
        return
    files = _compiled(example, Backend.NFTABLES)
    member = next(k for k in files if k.endswith("/nftables.nft"))
    rules, fallback = files[member], files[member.replace("nftables.nft", "failsafe.nft")]
    with namespace() as ns:
        assert in_ns(ns, "nft", "-f", "-", stdin=FOREIGN).returncode == 0
        first = in_ns(ns, "nft", "-f", "-", stdin=rules)  # the table does not exist yet
        assert first.returncode == 0, first.stderr
        loaded = _table(ns, "fwc")
        second = in_ns(ns, "nft", "-f", "-", stdin=rules)  # replaces it, no duplicates
        assert second.returncode == 0, second.stderr
        assert _table(ns, "fwc") == loaded
        assert "hook input" in _table(ns, "other")
        safe = in_ns(ns, "nft", "-f", "-", stdin=fallback)
        assert safe.returncode == 0, safe.stderr
        failsafe = _table(ns, "fwc")
        assert "hook input" in _table(ns, "other")
        tables = in_ns(ns, "nft", "list", "tables").stdout.split("\n")
    assert sorted(t for t in tables if t) == ["table inet fwc", "table inet other"]
    # The fallback is a different table: no NAT, FORWARD dropping everything.
    assert "type nat" in loaded or "nat" not in rules
    assert "type nat" not in failsafe
    assert "hook forward priority filter; policy drop;" in failsafe
    assert loaded.count("chain filter-INPUT-v4 {") == 1


# Every reader takes nftables clusters: install and diff --installed
# (tests/test_install_nft.py), query, expect and diff (tests/test_nft_equivalence.py),
# the lab (tests/test_lab_nft.py).

def test_compile_backend_option_overrides_the_policy(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["compile", "--backend", "nftables", str(POLICIES / "branch.fw"),
                 "-o", str(out)]) == 0
    member = out / "branch" / "bfw1"
    assert (member / "nftables.nft").is_file() and not (member / "iptables.rules").exists()
    capsys.readouterr()
    assert main(["compile", "--backend", "iptables", str(POLICIES / "branch.fw"),
                 "-o", str(out)]) == 0
    assert (member / "iptables.rules").is_file() and not (member / "nftables.nft").exists()


@pytest.mark.root
def test_boot_scripts_last_resort_table_loads(tmp_path):
    """When even failsafe.nft fails, the boot script's here-document table must load."""
    skip_or_fail_without_root()
    _nft()
    script = _compiled(POLICIES / "edge.fw", Backend.NFTABLES)["edge/fw1/fwc-firewall.sh"]
    after = script.split("<<'EOF'", 1)[1]
    table = after.split("\n", 1)[1].split("\nEOF\n", 1)[0]
    with namespace() as ns:
        assert in_ns(ns, "nft", "-f", "-", stdin=FOREIGN).returncode == 0
        loaded = in_ns(ns, "nft", "-f", "-", stdin=table + "\n")
        assert loaded.returncode == 0, loaded.stderr
        listed = _table(ns, "fwc")
        assert "hook input" in _table(ns, "other")
    assert listed.count("policy drop;") == 3


def test_install_scripts_load_and_test_nft_rows_with_nft():
    from fwc.install import scripts

    present = [f for f in FILES if f.backend in (None, Backend.NFTABLES)]
    loads = scripts.apply(present)
    assert "nft -f /etc/fwc/nftables.nft" in loads and "iptables" not in loads
    test = scripts.test_ruleset(present)
    assert f"nft -c -f {scripts.STAGING}/nftables.nft" in test
    assert f"nft -c -f {scripts.STAGING}/failsafe.nft" in test


# -- MANIFEST and the install plan of an nftables tree --------------------------------------

def test_manifest_says_the_backend_and_refuses_rows_of_another(tmp_path):
    from fwc.backend.manifest import Manifest, ManifestError

    out = tmp_path / "out"
    assert main(["compile", "--backend", "nftables", str(POLICIES / "edge.fw"),
                 "-o", str(out)]) == 0
    text = (out / "edge" / "MANIFEST").read_text()
    assert text.splitlines()[3] == "backend nftables"
    assert Manifest.read(out / "edge").backend is Backend.NFTABLES
    assert "fw1/nftables.nft" in text and "fw1/failsafe.nft" in text
    # A MANIFEST from before the `backend` line: its rows say which backend it is.
    old = text.replace("backend nftables\n", "")
    assert Manifest.parse(old).backend is Backend.NFTABLES
    sha = "0" * 64
    wrong = text.replace("\nfile ", f"\nfile {sha}  fw1/iptables.rules\nfile ", 1)
    with pytest.raises(ManifestError, match="a file of the iptables backend"):
        Manifest.parse(wrong)
    with pytest.raises(ManifestError, match="unknown backend"):
        Manifest.parse(text.replace("backend nftables", "backend pf"))
    assert Manifest.parse((POLICIES.parent / "output" / "edge" / "MANIFEST").read_text()
                          ).backend is Backend.IPTABLES


# Where an nftables install's snapshot and rollback.sh touch iptables: only where fwc's
# earlier iptables install is still on the node (a switch on probation), and only then.
_PREVIOUS_IPTABLES = ("if [ -e /etc/fwc/iptables.rules ] && command -v iptables-save",
                      "if [ -e $S/iptables.save ]; then")


def outside_the_previous_iptables_install(text: str) -> str:
    """TEXT without the blocks guarded by _PREVIOUS_IPTABLES (each must be there)."""
    kept: list[str] = []
    end = None
    found = set()
    for line in text.splitlines():
        if end is not None:
            end = None if line == end else end
            continue
        guard = next((g for g in _PREVIOUS_IPTABLES if line.lstrip().startswith(g)), None)
        if guard is not None:
            found.add(guard)
            end = line[:len(line) - len(line.lstrip())] + "fi"
            continue
        kept.append(line)
    assert end is None and found, text
    return "\n".join(kept)


def test_install_dry_run_of_an_nftables_tree_uses_nft_only(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["compile", "--backend", "nftables", str(POLICIES / "edge.fw"),
                 "-o", str(out), "--redact-secrets"]) == 0
    secrets = tmp_path / "secrets"
    secrets.write_text("vrrp_password = s3cret\n")
    capsys.readouterr()
    assert main(["install", "--all", "--dry-run", "--transport", "netns", "-o", str(out),
                 "--secrets", str(secrets), str(POLICIES / "edge.fw")]) == 0
    captured = capsys.readouterr()
    assert "installing the nftables files" in captured.err
    printed = outside_the_previous_iptables_install(captured.out)
    for command in ("nft -c -f /etc/fwc/staging/nftables.nft",
                    "nft -c -f /etc/fwc/staging/failsafe.nft",
                    "nft list table inet fwc > /etc/fwc/snapshot.new/nft.save",
                    "nft -f /etc/fwc/nftables.nft"):
        assert printed.count(command) == 2, command  # once per member
    # Nothing of iptables is tested, saved or loaded (the retire script written for
    # the confirmation names fwc's old iptables files: it empties them, if any; the
    # snapshot saves the iptables rules only where fwc's old iptables files are).
    for command in ("iptables-save >", "iptables-restore --test", "ipset save",
                    "ipset restore", "< /etc/fwc/iptables.rules"):
        assert command not in printed, command
    assert "saving the running nftables table inet fwc and daemon configs" in printed


def test_retire_and_rollback_scripts_of_each_backend_touch_only_the_other_or_their_own():
    from fwc.install import scripts

    nft = [f for f in FILES if f.backend in (None, Backend.NFTABLES)]
    ipt = [f for f in FILES if f.backend in (None, Backend.IPTABLES)]
    for text in (scripts.retire_script(nft), scripts.rollback_script(nft, [], token="t")):
        assert subprocess.run(["sh", "-n"], input=text, text=True).returncode == 0
    # An nftables install retires fwc's iptables files and tables, never `inet fwc`...
    retire = scripts.retire_script(nft)
    assert "/etc/fwc/iptables.rules" in retire and "delete table" not in retire
    assert "flush ruleset" not in retire
    # ...and rolls back only its table, and iptables only where the snapshot saved
    # fwc's earlier iptables install (a switch).
    rollback = scripts.rollback_script(nft, [], token="t")
    assert _PREVIOUS_IPTABLES[1] in rollback
    assert "iptables" not in outside_the_previous_iptables_install(rollback)
    assert "nft -f -" in rollback
    # An iptables install retires fwc's nft table only.
    retire = scripts.retire_script(ipt)
    assert "delete table inet fwc" in retire and "iptables-restore" not in retire
    # Its rollback touches fwc's table only where the snapshot saved it (a switch).
    rollback = scripts.rollback_script(ipt, [], token="t")
    # (the rules' rollback is indented: at boot the old boot script loads instead)
    found = re.search(r"^( *)if \[ -e \$S/nft\.save \]; then\n(.*?)\n\1fi\n", rollback,
                      re.MULTILINE | re.DOTALL)
    assert found is not None
    assert "nft" not in rollback[:found.start()] and "nft" not in rollback[found.end():]
    block = found.group(2)  # the saved table back, never a deletion
    assert "cat $S/nft.save; } | nft -f -" in block and "else" not in block


def test_the_retire_script_says_what_went_even_when_the_watchdog_ran_it_first(tmp_path):
    """The node's watchdog runs the retire script silently as soon as it sees the
    confirmation, and may win the race with fwc's own run (seen on a loaded CI run):
    the later run prints what the first one did. Paths moved under TMP_PATH, `nft` a
    stand-in that succeeds."""
    from fwc.install import scripts

    ipt = [f for f in FILES if f.backend in (None, Backend.IPTABLES)]
    root = tmp_path / "root"
    text = scripts.retire_script(ipt).replace("/etc/", f"{root}/etc/")
    (root / "etc" / "fwc" / "snapshot").mkdir(parents=True)
    (root / "etc" / "fwc" / "nftables.nft").write_text("table inet fwc {}\n")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "nft").write_text("#!/bin/sh\ncat >/dev/null\n")
    (bin_dir / "nft").chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    said = "nft: deleted the table inet fwc of fwc's previous nftables install"

    def run() -> subprocess.CompletedProcess[str]:
        return subprocess.run(["sh", "-c", text], capture_output=True, text=True, env=env,
                              timeout=30, check=False)

    watchdog = run()  # its output goes to /dev/null on the node
    assert watchdog.returncode == 0 and said in watchdog.stderr
    assert not (root / "etc" / "fwc" / "nftables.nft").exists()
    confirmation = run()
    assert confirmation.returncode == 0
    assert confirmation.stderr.count(said) == 1, confirmation.stderr
