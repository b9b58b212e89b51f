"""`fwc diff` on real edits in a scratch git repository."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from conftest import EDGE_TEXT as EDGE
from conftest import fwc_diff, git

from fwc.cli import main


def commit(repo: Path, message: str) -> str:
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", message)
    return git(repo, "rev-parse", "HEAD")


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text(encoding="utf-8")
    assert old in text, old
    path.write_text(text.replace(old, new, 1), encoding="utf-8")


def section(out: str, header: str) -> str:
    """The lines of the summary under `header` (up to the next less indented line)."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip().startswith(header))
    indent = len(lines[start]) - len(lines[start].lstrip())
    body = []
    for line in lines[start + 1:]:
        if len(line) - len(line.lstrip()) <= indent:
            break
        body.append(line.strip())
    return "\n".join(body)


def test_nothing_changed_exits_0_and_prints_nothing(repo, capsys):
    assert fwc_diff(capsys) == (0, "", "")
    assert fwc_diff(capsys, "policies/edge.fw") == (0, "", "")
    assert not (repo / "output").exists()


def diff_after_inserting(repo: Path, capsys, rule: str, before: str) -> str:
    """The output of `fwc diff` (which reports a change) once RULE is put before BEFORE."""
    edit(repo / "policies" / "edge.fw", before, f"{rule}\n{before}")
    code, out, _ = fwc_diff(capsys)
    assert code == 1
    return out


def test_rule_added(repo, capsys):
    out = diff_after_inserting(repo, capsys, "    accept from server   to monitor  service ssh",
                               "    reject from any      to any      service ident")
    assert "policy rules: 1 added" in out
    assert "+ accept from server to monitor service ssh" in out
    traffic = section(out, "traffic")
    assert "newly allowed: from server to monitor service ssh" in traffic
    assert "newly denied" not in traffic
    # fw1's compiled FORWARD chain gained exactly that rule; nothing moved,
    # although every rule below it now comes from a later policy line.
    fw1 = section(out, "member fw1")
    forward = re.search(r"IPv4 filter/FORWARD: (.*)", fw1)
    assert forward is not None and forward.group(1) == "1 added"
    assert "+ -s 198.51.100.10/32 -d 192.0.2.20/32 -p tcp -m tcp --dport 22" in fw1
    assert "IPv6" not in fw1  # both hosts are IPv4 only
    # then the patch of the generated files
    assert "diff --fwc a/edge/fw1/iptables.rules b/edge/fw1/iptables.rules" in out
    assert re.search(r"^\+-A FORWARD -s 198\.51\.100\.10/32 -d 192\.0\.2\.20/32", out, re.M)
    assert out.index("cluster edge") < out.index("diff --fwc")
    assert not (repo / "output").exists()


def test_a_rule_inserted_first_changes_only_its_own_lines(repo, capsys):
    """Rule chains are named by rule number (`fwc-p1-FORWARD`): a rule inserted first
    renumbers every later one, and the old side is read in the new numbers, so the
    member's chains show the new rule only, not every later rule removed and added."""
    out = diff_after_inserting(
        repo, capsys, '    drop from client to web service ssh log "nope"',
        '    accept from desktops to any      service web, dns, ping, echo  log "out"')
    for member in ("fw1", "fw2"):
        chains = section(out, f"member {member}")
        assert chains.splitlines()[0] == "IPv4 filter/FORWARD: 2 added", chains
        assert "fwc-p" not in chains  # no per-rule chain changed
        assert "-d 192.0.2.80/32 -p tcp -m tcp --dport 22" in chains
    # the files themselves did change names; the patch shows the new rule's lines and
    # counts the others, which only name a later policy line or rule number
    patch = out[out.index("diff --fwc a/edge/fw1/iptables.rules"):]
    patch = patch[:patch.index("diff --fwc", 1)]
    assert re.search(r"^fwc: \d+ lines differ only in the policy line or rule number named, "
                     r"not shown \(--exact shows them\)$", patch, re.M)
    changed = [line for line in patch.splitlines()
               if line[:1] in "+-" and not line.startswith(("---", "+++"))]
    assert len(changed) == 2 and all(line.startswith("+-A FORWARD -s 192.0.2.10/32 -d "
                                                     "192.0.2.80/32") for line in changed)
    assert re.search(r"^ -A FORWARD .* -j fwc-p2-FORWARD$", patch, re.M)  # as context
    # --exact: the byte-exact patch, the renamed chain of the rule below it too
    code, exact, _ = fwc_diff(capsys, "--exact")
    assert code == 1 and "lines differ only" not in exact
    assert re.search(r"^\+-A FORWARD .* -j fwc-p2-FORWARD$", exact, re.M)
    code, stat, _ = fwc_diff(capsys, "--stat")
    assert re.search(r"^ edge/fw1/iptables.rules\s+\|\s+2 \+\+ \(\d+ lines differ only in "
                     r"the policy line or rule number named\)$", stat, re.M)
    assert re.search(r"^ edge/fw1/failsafe.rules\s+\|\s+0 \(\d+ lines differ", stat, re.M)
    assert re.search(r"^ \d+ files changed, \d+ insertions\(\+\), \d+ deletions\(-\); \d+ "
                     r"lines differ only in the policy line or rule number named$", stat, re.M)
    code, listed, _ = fwc_diff(capsys, "--format", "json")
    files = {f["path"]: f for f in json.loads(listed)["files"]}
    assert files["edge/fw1/iptables.rules"]["renumbered"] > 0
    assert files["edge/MANIFEST"]["renumbered"] == 0  # (not a rules file: as it is)


def test_a_removed_rule_keeps_its_chain_removed(repo, capsys):
    first = '    accept from desktops to any      service ssh  log "first"\n'
    edit(repo / "policies" / "edge.fw",
         '    accept from desktops to any      service web, dns, ping, echo  log "out"\n',
         first + '    accept from desktops to any      service web, dns, ping, echo  log "out"\n')
    commit(repo, "a first rule with a chain of its own")
    edit(repo / "policies" / "edge.fw", first, "")
    code, out, _ = fwc_diff(capsys)
    assert code == 1
    chains = section(out, "member fw1")
    # the removed rule's own chain, under its own name, and the jumps to it; the next
    # rule's chain (fwc-p2 before, fwc-p1 now) is the same chain and is not reported
    assert "IPv4 filter/fwc-p1-FORWARD: 2 removed" in chains, chains
    assert "added" not in chains, chains
    assert '--log-prefix "first "' in chains and '"out "' not in chains


def test_object_widened_names_the_object(repo, capsys):
    edit(repo / "policies" / "edge.fw", "host    monitor  192.0.2.20",
         "range   monitor  192.0.2.20-192.0.2.23")
    code, out, _ = fwc_diff(capsys)
    assert code == 1
    assert "policy rules" not in out  # no statement changed, only what an object means
    allowed = [line for line in section(out, "traffic").splitlines()
               if line.startswith("newly allowed")]
    # stated by object and service (the widened part of monitor), not by rule number
    assert len(allowed) == 1
    assert re.search(r"from monitor\b.* to firewall service snmp", allowed[0])
    assert "(only fw1)" in allowed[0]  # the snmp rule exists on fw1 only
    assert "[policies/edge.fw:" in allowed[0]


def test_vip_and_priority_changed(repo, capsys):
    policy = repo / "policies" / "edge.fw"
    edit(policy, "interface uplink vip 198.51.100.254/24", "interface uplink vip 198.51.100.253/24")
    edit(policy, "member fw2 priority 100", "member fw2 priority 90")
    code, out, _ = fwc_diff(capsys)
    assert code == 1
    summary = out[:out.index("diff --fwc")]
    assert "interface uplink: VIP 198.51.100.253/24 added" in summary
    assert "interface uplink: VIP 198.51.100.254/24 removed" in summary
    assert "priority 100 -> 90" in section(summary, "member fw2")
    # NAT follows the VIP: SNAT to the new address, DNAT on it
    nat = section(summary, "member fw1")
    assert re.search(r"IPv4 nat/POSTROUTING: 1 added, 1 removed", nat)
    assert "--to-source 198.51.100.253" in nat
    assert "+        198.51.100.253/24 dev eth1" in out  # keepalived.conf patch


def test_vrid_and_sync_changes(repo, capsys):
    policy = repo / "policies" / "edge.fw"
    edit(policy, "198.51.100.254/24  vrid 52", "198.51.100.254/24  vrid 53")
    edit(policy, "multicast 225.0.0.50 port 3780", "multicast 225.0.0.51 port 3780")
    code, out, _ = fwc_diff(capsys, "--stat")
    assert code == 1
    assert "interface uplink: VRID 52 -> 53" in out
    assert "sync: group 225.0.0.50 -> 225.0.0.51" in out
    assert "diff --fwc" not in out  # --stat replaces the patch
    assert re.search(r"^ edge/fw1/keepalived.conf \|\s+\d+ \+*-*$", out, re.M)
    assert re.search(r"\d+ files changed, \d+ insertions\(\+\), \d+ deletions\(-\)", out)


def test_settings_that_change_the_automatic_rules_are_named(repo, capsys):
    """`vrrp { unicast }` and the sync link's `allow ssh` change which HA traffic the
    automatic rules accept (the traffic lines show it), but the settings said nothing:
    the reviewer saw accepted vrrp and ssh between the members with no setting that
    explains it."""
    policy = repo / "policies" / "edge.fw"
    edit(policy, "advert 1s  vrid 51 }", "advert 1s  vrid 51  unicast }")
    edit(policy, "port 3780 }", "port 3780  allow ssh }")
    code, out, _ = fwc_diff(capsys, "--stat")
    assert code == 1
    assert "  vrrp: unicast off -> on" in out
    assert "  sync: allow none -> ssh" in out
    traffic = section(out, "traffic")
    assert "service ssh in sync (only fw1)  [automatic rule 'fwc auto: sync allow ssh']" \
        in traffic


def test_a_changed_default_policy_is_reported(repo, capsys):
    """Only `default { output drop }` added: the setting and the firewall's own traffic
    it now drops are in the summary (both were missing: a change that closes traffic
    read as none)."""
    edit(repo / "policies" / "edge.fw", "    interface lan ",
         "    default { output drop }\n    interface lan ")
    code, out, _ = fwc_diff(capsys, "--stat")
    assert code == 1
    assert "  default: output accept -> drop" in out
    traffic = section(out, "traffic")
    assert "newly denied:  from firewall to any except " in traffic
    assert "newly allowed" not in traffic


def test_name_only_and_colour(repo, capsys):
    edit(repo / "policies" / "edge.fw", "member fw2 priority 100", "member fw2 priority 90")
    code, out, _ = fwc_diff(capsys, "--name-only")
    assert code == 1
    assert out.splitlines() == ["edge/MANIFEST", "edge/fw2/keepalived.conf"]
    assert main(["diff", "--color"]) == 1
    coloured = capsys.readouterr().out
    assert "\033[" in coloured
    assert main(["diff"]) == 1  # stdout is not a terminal here: no colour by default
    assert "\033[" not in capsys.readouterr().out


def test_includes_are_read_from_each_revision(repo, capsys):
    policy = repo / "policies" / "edge.fw"
    text = policy.read_text(encoding="utf-8")
    objects = "\n".join(line for line in text.splitlines()
                        if line.startswith(("network", "host", "range", "group")))
    rest = "\n".join(line for line in text.splitlines()
                     if not line.startswith(("network", "host", "range", "group")))
    (repo / "policies" / "lib").mkdir()
    (repo / "policies" / "lib" / "objects.fw").write_text(objects + "\n", encoding="utf-8")
    policy.write_text('include "lib/objects.fw"\n' + rest, encoding="utf-8")
    split = commit(repo, "objects in an include")
    assert fwc_diff(capsys) == (0, "", "")

    edit(repo / "policies" / "lib" / "objects.fw", "host    client   192.0.2.10",
         "network client   192.0.2.8/30")
    widened = commit(repo, "widen client")
    # The working tree now loses the include entirely: each revision must still
    # read its own copy of it from git.
    (repo / "policies" / "lib" / "objects.fw").unlink()
    code, out, _ = fwc_diff(capsys, f"{split}..{widened}")
    assert code == 1
    assert "cluster edge (policies/edge.fw)" in out
    assert "newly denied" not in out
    allowed = [line for line in section(out, "traffic").splitlines()
               if line.startswith("newly allowed")]
    assert any(re.search(r"from client\b.* to firewall service ssh", a) for a in allowed)
    assert all("client" in line for line in allowed)
    assert "+-A INPUT -s 192.0.2.8/30" in out


def test_default_files_are_changed_top_level_policies(repo, capsys):
    (repo / "policies" / "other.fw").write_text(EDGE.replace("cluster edge", "cluster other")
                                               .replace("policy edge", "policy other")
                                               .replace("nat edge", "nat other")
                                               .replace("expect edge", "expect other"),
                                               encoding="utf-8")
    commit(repo, "second policy")
    edit(repo / "policies" / "other.fw", "member fw2 priority 100", "member fw2 priority 90")
    code, out, _ = fwc_diff(capsys)
    assert code == 1
    assert "cluster other (policies/other.fw)" in out
    assert "cluster edge" not in out  # unchanged policies are not compiled


def test_range_of_two_revisions(repo, capsys):
    first = git(repo, "rev-parse", "HEAD")
    edit(repo / "policies" / "edge.fw", "member fw2 priority 100", "member fw2 priority 90")
    second = commit(repo, "fw2 lower")
    code, out, _ = fwc_diff(capsys, f"{first}..{second}")
    assert code == 1 and "priority 100 -> 90" in out
    assert fwc_diff(capsys, f"{second}..{second}")[0] == 0
    # REV alone compares with the working tree (clean here, so equal to HEAD)
    assert fwc_diff(capsys, first)[0] == 1
    assert fwc_diff(capsys, "HEAD")[0] == 0
    code, out, _ = fwc_diff(capsys, "HEAD~1..", "policies/edge.fw")
    assert code == 1 and "priority 100 -> 90" in out


def test_usage_errors_exit_2(repo, capsys, tmp_path, monkeypatch):
    code, _, err = fwc_diff(capsys, "no-such-rev")
    assert code == 2 and "unknown revision or path 'no-such-rev'" in err
    code, _, err = fwc_diff(capsys, "HEAD..nope")
    assert code == 2 and "unknown revision 'nope'" in err
    edit(repo / "policies" / "edge.fw", "service ssh      tcp/22", "service ssh      tcp/99999")
    code, out, err = fwc_diff(capsys)
    assert code == 2
    assert "policies/edge.fw does not compile at working tree" in err
    assert "policies/edge.fw:" in err and "error" in err
    elsewhere = tmp_path / "not-a-repo"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    code, _, err = fwc_diff(capsys)
    assert code == 2 and "not a git repository" in err


def test_a_file_name_from_the_repository_never_writes_escapes_to_the_terminal(repo, capsys):
    """A pull request adding `policies/x<ESC>[2J<ESC>[H.fw` that does not compile: its name
    was printed as it is (in the header and in the diagnostic), clearing the reviewer's
    screen."""
    (repo / "policies" / "x\x1b[2J\x1b[H.fw").write_bytes(b"\x80 not UTF-8\n")
    commit(repo, "hostile name")
    code, _, err = fwc_diff(capsys, "HEAD~1..HEAD")
    assert code == 2 and "does not compile at HEAD" in err and "cannot read" in err
    assert "\x1b" not in err and "policies/x\\x1b[2J\\x1b[H.fw" in err


def test_a_policy_whose_files_cannot_be_read_is_compared_not_passed_over(repo, capsys):
    """policies/edge.fw a symbolic link to sites/edge.fw: at a revision its blob is the
    target's name, which did not parse, so edge.fw seemed to read only itself and a change
    to sites/edge.fw was "nothing changed" (exit 0). The same for an include that is not
    UTF-8 on both sides."""
    import os

    policy = repo / "policies" / "edge.fw"
    (repo / "sites").mkdir()
    policy.rename(repo / "sites" / "edge.fw")
    os.symlink("../sites/edge.fw", policy)
    commit(repo, "edge.fw through a link")
    edit(repo / "sites" / "edge.fw", "service ssh      tcp/22", "service ssh      tcp/2222")
    commit(repo, "ssh moved")
    for args in (("HEAD~1..HEAD",), ("HEAD~1",)):
        code, _, err = fwc_diff(capsys, *args)
        assert code == 2, err
        assert "FWC011" in err and "'policies/edge.fw' is a symbolic link in HEAD~1" in err
    policy.unlink()
    policy.write_text('include "lib/odd.fw"\n' + EDGE, encoding="utf-8")
    (repo / "policies" / "lib").mkdir()
    (repo / "policies" / "lib" / "odd.fw").write_bytes(b"# \xff\n")
    commit(repo, "an include that is not UTF-8")
    (repo / "policies" / "lib" / "odd.fw").write_bytes(b"# \xfe\n")
    code, _, err = fwc_diff(capsys)
    assert code == 2 and "cannot read 'policies/lib/odd.fw'" in err


def test_rule_moved_without_changing_traffic(repo, capsys):
    edit(repo / "policies" / "edge.fw",
         "    accept from client   to firewall service ssh\n"
         "    accept from monitor  to firewall service snmp  only fw1\n",
         "    accept from monitor  to firewall service snmp  only fw1\n"
         "    accept from client   to firewall service ssh\n")
    code, out, _ = fwc_diff(capsys, "--stat")
    assert code == 1
    assert "policy rules: 1 moved" in out
    assert "~ accept from" in out
    assert "traffic:" not in out  # disjoint sources: the order does not matter
    fw1 = section(out, "member fw1")
    assert re.search(r"IPv4 filter/INPUT: \d+ moved", fw1)
    assert "member fw2" not in out  # the snmp rule exists on fw1 only


def test_new_traffic_is_named_by_an_object_no_rule_uses(repo, capsys):
    policy = repo / "policies" / "edge.fw"
    edit(policy, "range   guests   192.0.2.100-192.0.2.150",
         "range   guests   192.0.2.100-192.0.2.150\nnetwork lowhalf  192.0.2.0/25")
    commit(repo, "an object for the lower half of the LAN")
    edit(policy, "    reject from any      to any      service ident",
         "    accept from 192.0.2.0/25 to server service ssh\n"
         "    reject from any      to any      service ident")
    code, out, _ = fwc_diff(capsys)
    assert code == 1
    traffic = section(out, "traffic")
    assert "newly allowed: from lowhalf except firewall to server service ssh" in traffic, out


def test_the_member_handling_the_traffic_changed(repo, capsys):
    """fw2 above fw1: every VIP interface's traffic moves to fw2 (fwc.analysis.handling)."""
    edit(repo / "policies" / "edge.fw", "member fw2 priority 100", "member fw2 priority 200")
    code, out, _ = fwc_diff(capsys, "--stat")
    assert code == 1
    assert ("interface lan: traffic handled by fw1 (the VRRP master) -> "
            "fw2 (the VRRP master)") in out
    assert "interface sync: traffic handled" not in out  # no VIP: no VRRP master


# -- two processes (issue 12): the checks of both sides in a worker -----------------------

SHADOWED = "    drop   from desktops to any      service web\n"  # FWC401: an error
DEFAULT_RULE = '    drop   from any      to any      log "default"\n'


def both_ways(capsys, monkeypatch, *args: str, forks: bool = True) -> tuple[int, str, str]:
    """`fwc diff ARGS` with the checks in this process and in a worker: the same exit
    status, summary, patch and diagnostics, byte for byte. FORKS: whether a worker is
    started at all (not when a side does not even parse)."""
    from fwc import parallel

    monkeypatch.setenv("FWC_JOBS", "1")
    one = fwc_diff(capsys, *args)
    started: list[object] = []
    real = parallel.start

    def counted(task):  # type: ignore[no-untyped-def]
        worker = real(task)
        started.append(worker)
        return worker

    monkeypatch.setenv("FWC_JOBS", "2")  # a worker whatever the policy's size
    with monkeypatch.context() as patch:
        patch.setattr(parallel, "start", counted)
        assert fwc_diff(capsys, *args) == one
    assert (bool(started) and None not in started) == forks
    return one


def test_a_worker_gives_the_same_diff(repo, capsys, monkeypatch):
    policy = repo / "policies" / "edge.fw"
    edit(policy, "host    monitor  192.0.2.20", "range   monitor  192.0.2.20-192.0.2.23")
    edit(policy, "    reject from any      to any      service ident",
         "    accept from server   to monitor  service ssh\n"
         "    reject from any      to any      service ident")
    code, out, err = both_ways(capsys, monkeypatch)
    assert code == 1 and "newly allowed" in out and "diff --fwc" in out
    assert both_ways(capsys, monkeypatch, "--format", "json")[0] == 1
    # the option as the variable
    assert fwc_diff(capsys, "--jobs", "1") == fwc_diff(capsys, "--jobs", "2") == (code, out, err)


def test_auto_jobs_asks_the_diff_bound_not_the_compile_one(repo, capsys, monkeypatch):
    """`fwc diff` holds both sides' models and builds both: `--jobs auto` forks for its
    own, smaller bound of rules (fwc.pipeline.DIFF_FORK_RULES), never `fwc compile`'s."""
    from fwc import parallel
    from fwc.pipeline import DIFF_FORK_RULES

    edit(repo / "policies" / "edge.fw", "host    monitor  192.0.2.20",
         "range   monitor  192.0.2.20-192.0.2.23")
    asked: list[tuple[int, range]] = []
    real = parallel.wanted

    def spied(jobs, rules, bounds):  # type: ignore[no-untyped-def]
        asked.append((jobs, bounds))
        return real(jobs, rules, bounds)

    monkeypatch.delenv("FWC_JOBS", raising=False)
    monkeypatch.setattr(parallel, "wanted", spied)
    assert fwc_diff(capsys)[0] == 1
    # (the checks of each side, once the worker was refused, ask with --jobs 1)
    free = [bounds for jobs, bounds in asked if jobs != 1]
    assert len(free) == 2 and all(bounds is DIFF_FORK_RULES for bounds in free), asked


def test_a_failing_side_is_reported_the_same_with_a_worker(repo, capsys, monkeypatch):
    policy = repo / "policies" / "edge.fw"
    clean = policy.read_text(encoding="utf-8")
    assert DEFAULT_RULE in clean
    # the working tree's checks fail
    policy.write_text(clean.replace(DEFAULT_RULE, SHADOWED + DEFAULT_RULE), encoding="utf-8")
    code, out, err = both_ways(capsys, monkeypatch)
    assert (code, out) == (2, "")
    assert "does not compile at working tree" in err and "error[FWC401]" in err
    # the committed side's checks fail, the working tree's pass: the old side is named
    commit(repo, "a shadowed rule")
    policy.write_text(clean, encoding="utf-8")
    code, out, err = both_ways(capsys, monkeypatch)
    assert code == 2 and "does not compile at HEAD" in err and "error[FWC401]" in err
    # and when the working tree does not even parse, the old side's errors still come first
    policy.write_text(clean.replace("cluster edge", "cluster edge {{"), encoding="utf-8")
    code, out, err = both_ways(capsys, monkeypatch, forks=False)
    assert code == 2 and "does not compile at HEAD" in err and "working tree" not in err


@pytest.mark.parametrize("dies_at", [1, 2], ids=["old side", "new side"])
def test_a_killed_checks_worker_costs_time_not_the_diff(repo, capsys, monkeypatch, tmp_path,
                                                       dies_at):
    """The worker dies while it checks one side: both sides are checked in this process,
    and the diff says what it says without a worker."""
    import dataclasses
    import os
    import signal

    from fwc import checks as registry

    edit(repo / "policies" / "edge.fw", "member fw2 priority 100", "member fw2 priority 200")
    monkeypatch.setenv("FWC_JOBS", "1")
    expected = fwc_diff(capsys)
    assert expected[0] == 1
    registry.load_registry()
    info = registry.REGISTRY["FWC105"]
    function, parent = info.function, os.getpid()
    assert function is not None
    calls = [0]  # in the worker: its own count of the sides it checked

    def killer(policy):  # type: ignore[no-untyped-def]
        if os.getpid() != parent:
            calls[0] += 1
            if calls[0] == dies_at:
                (tmp_path / "worker-died").write_text(str(calls[0]))
                os.kill(os.getpid(), signal.SIGKILL)
        return function(policy)

    monkeypatch.setitem(registry.REGISTRY, "FWC105", dataclasses.replace(info, function=killer))
    monkeypatch.setenv("FWC_JOBS", "2")
    assert fwc_diff(capsys) == expected
    assert (tmp_path / "worker-died").read_text() == str(dies_at)


def test_a_chains_worker_that_dies_is_read_again_here(repo, capsys, monkeypatch, tmp_path):
    import os
    import signal

    import fwc.commands.diff as command

    edit(repo / "policies" / "edge.fw", "member fw2 priority 100", "member fw2 priority 200")
    edit(repo / "policies" / "edge.fw", "    reject from any      to any      service ident",
         "    accept from server   to monitor  service ssh\n"
         "    reject from any      to any      service ident")
    expected = both_ways(capsys, monkeypatch)
    assert expected[0] == 1 and "diff --fwc" in expected[1]
    real, parent = command.compiled_chain_changes, os.getpid()
    calls: list[int] = []

    def dying(*args):  # type: ignore[no-untyped-def]
        calls.append(os.getpid())
        if os.getpid() != parent:
            (tmp_path / "worker-was-here").write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)
        return real(*args)

    monkeypatch.setattr(command, "compiled_chain_changes", dying)
    monkeypatch.setenv("FWC_JOBS", "2")
    assert fwc_diff(capsys) == expected
    assert calls == [parent]  # the worker's call never returned; this one did
    assert int((tmp_path / "worker-was-here").read_text()) != parent


def test_worker_answers_are_checked_before_use():
    from fwc.diffing.semantic import ChainChange, chain_changes_json, chain_changes_of
    from fwc.diffing.sequences import ListChange

    chains = {("edge", "fw1"): [ChainChange("IPv4", "filter", "FORWARD",
                                            ListChange(["-j ACCEPT"], [], ["-j DROP"]),
                                            ("DROP", "ACCEPT"))],
              ("edge", "fw2"): []}
    assert chain_changes_of(chain_changes_json(chains)) == chains
    good = chain_changes_json(chains)
    for bad in (None, [["edge"]], [["edge", "fw1", [[1, "filter", "x", [], [], [], None]]]],
                [["edge", "fw1", [["IPv4", "filter", "x", [], [], [], "XY"]]]],
                [["edge", "fw1", [["IPv4", "filter", "x", "+abc", [], [], None]]]],
                good + good[:1]):  # a member twice
        with pytest.raises(ValueError):
            chain_changes_of(bad)


class _Answering:
    """A worker that answers VALUE."""

    def __init__(self, value: object) -> None:
        self.value = value

    def result(self) -> object:
        return self.value


def test_a_chains_answer_for_other_members_is_read_again():
    from fwc.commands.diff import _chains_answer
    from fwc.diffing.semantic import chain_changes_json

    members = [("edge", "fw1", True, True), ("edge", "fw2", True, True)]
    both = chain_changes_json({("edge", "fw1"): [], ("edge", "fw2"): []})
    assert _chains_answer(_Answering(both), members) == (  # type: ignore[arg-type]
        {("edge", "fw1"): [], ("edge", "fw2"): []})
    for value in (both[:1], both + [["edge", "fw3", []]], [both], "x"):
        assert _chains_answer(_Answering(value), members) is None  # type: ignore[arg-type]


def _site_web(repo: Path, directory: str, address: str) -> None:
    (repo / directory / "site").mkdir(parents=True, exist_ok=True)
    (repo / directory / "site" / "web.fw").write_text(f"host    web      {address}\n",
                                                      encoding="utf-8")


def _edge_with_site_web(repo: Path) -> None:
    """edge.fw taking `web` from `<site/web.fw>`, found through fwc.toml's include_path
    (lib1: 192.0.2.80), committed."""
    edit(repo / "policies" / "edge.fw", "host    web      192.0.2.80\n",
         "include <site/web.fw>\n")
    _site_web(repo, "lib1", "192.0.2.80")
    (repo / "fwc.toml").write_text('include_path = ["lib1"]\n', encoding="utf-8")
    commit(repo, "web from the site library")


def test_each_side_reads_its_own_fwc_toml(repo, capsys):
    """A commit that only points fwc.toml's include_path at another directory (where
    `web` is another host) changes what the dnat and the rule to web do. Both sides were
    read with the working tree's fwc.toml: the old one looked for lib2, which it does not
    have, and the change showed as nothing (exit 0) or as an old side that does not
    compile."""
    _edge_with_site_web(repo)
    _site_web(repo, "lib2", "192.0.2.81")
    (repo / "fwc.toml").write_text('include_path = ["lib2"]\n', encoding="utf-8")
    commit(repo, "web from lib2")
    for args in (("HEAD~1..HEAD",), ("HEAD~1..HEAD", "policies/edge.fw")):
        code, out, err = fwc_diff(capsys, "--stat", *args)
        assert (code, err) == (1, ""), err
        assert "--to-destination 192.0.2.81" in out
        assert re.search(r"newly allowed: from any except .* to web service web in uplink", out)
    # the command line's --include-path still wins, on both sides: nothing changed there
    assert fwc_diff(capsys, "HEAD~1..HEAD", "--include-path", "lib1") == (0, "", "")


def test_a_change_to_fwc_toml_alone_is_compared(repo, capsys):
    """fwc.toml edited in the working tree, nothing else: the policy whose includes it
    redirects is compared (its own files did not change)."""
    _edge_with_site_web(repo)
    _site_web(repo, "lib2", "192.0.2.81")
    commit(repo, "lib2 exists")
    (repo / "fwc.toml").write_text('include_path = ["lib2"]\n', encoding="utf-8")
    code, out, _ = fwc_diff(capsys, "--stat")
    assert code == 1
    assert "cluster edge (policies/edge.fw)" in out
    assert "--to-destination 192.0.2.81" in out


def test_each_side_is_compiled_for_its_fwc_toml_backend(repo, capsys):
    """`backend = "nftables"` in fwc.toml: `fwc compile` writes nftables.nft, but `fwc
    diff` compiled the policy's own backend (iptables), so its patch was of files no
    node loads, and a commit that only switched the backend showed no change."""
    (repo / "fwc.toml").write_text('backend = "nftables"\n', encoding="utf-8")
    commit(repo, "nftables")
    code, out, _ = fwc_diff(capsys, "--name-only", "HEAD~1..HEAD")
    assert code == 1
    assert "edge/fw1/nftables.nft" in out.splitlines()
    assert "edge/fw1/iptables.rules" in out.splitlines()  # gone on the new side
    assert fwc_diff(capsys, "--stat", "HEAD~1..HEAD")[1].count("newly") == 0
    edit(repo / "policies" / "edge.fw", "to any      service ident", "to any      service echo")
    code, out, _ = fwc_diff(capsys, "--name-only")
    assert code == 1
    assert out.splitlines() == ["edge/MANIFEST", "edge/fw1/nftables.nft",
                                "edge/fw2/nftables.nft"]


def test_drift_is_read_for_the_fwc_toml_backend(repo, capsys, monkeypatch):
    """`fwc diff --installed` compiled the policy's own backend too: on a node installed
    from an nftables compile it compared iptables-save with iptables rules nobody
    installed, never fwc's nftables table."""
    from fwc.diffing import installed

    (repo / "fwc.toml").write_text('backend = "nftables"\n', encoding="utf-8")
    seen = {}

    def compare(transport, compiled, backend, families):  # noqa: ANN001, ANN202
        seen["backend"], seen["files"] = backend, set(compiled)
        return []

    monkeypatch.setattr(installed, "compare", compare)
    monkeypatch.setattr(installed, "installed_by", lambda transport: "fw1: (test)")
    assert main(["diff", "--installed", "fw1", "--transport", "local",
                 "policies/edge.fw"]) == 0
    capsys.readouterr()
    assert seen["backend"] == "nftables"
    assert "nftables.nft" in seen["files"] and "iptables.rules" not in seen["files"]
