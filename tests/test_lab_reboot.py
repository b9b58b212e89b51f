"""The reboot drill's measurements (fwc/lab/reboot.py).

Unit tests feed the judges made-up timelines; the root test boots a wiped
member of a real lab once through a boot script that switches forwarding on
before its rules (the pre-issue-10 order) and once through the compiled one:
the watchers must catch the first and pass the second. The full drill runs
in the edge lab of tests/test_lab.py.
"""

from __future__ import annotations

import os
import shlex
import time
from pathlib import Path

import pytest
from conftest import REPO

from fwc.lab.filters import PACKET_FILTERS
from fwc.lab.reboot import BootWatch, RebootResult, judge_boot, judge_reboot
from fwc.lab.report import render_text, to_dict
from fwc.lab.runner import LabReport
from fwc.lab.topology import LabPlan
from fwc.model.vocabulary import Backend

T0 = 1000.0
WIPED = PACKET_FILTERS[Backend.IPTABLES].forward_wiped
WIPED_LISTING = {Backend.IPTABLES: "-P FORWARD ACCEPT", Backend.NFTABLES: ""}


def _watch(on_at: float, absent_at: float, in_by: float) -> dict[str, object]:
    return {
        "first": {"4": "0", "6": "0"},
        "changes": [["4", "1", T0 + on_at], ["6", "1", T0 + on_at]],
        "samples": 900,
        "last_off": {"4": T0 + on_at - 0.001, "6": T0 + on_at - 0.001},
        "chains": {
            fam: {"wiped": "-P FORWARD ACCEPT\n", "absent_at": T0 + absent_at, "in_by": T0 + in_by}
            for fam in ("4", "6")
        },
        "syns_sent": [T0 - 0.3 + i * 0.005 for i in range(180)],
    }


def test_judge_boot_passes_rules_then_forwarding() -> None:
    log = [(T0 + 0.049, "rules loaded"), (T0 + 0.054, "forwarding on")]
    syns = [[T0 + 0.055 + i * 0.005, "198.51.100.254", 61000 + i] for i in range(100)]
    bw = judge_boot(_watch(0.052, 0.02, 0.047), syns, log, T0, 0, forward_wiped=WIPED)
    assert bw.ok, bw.problems
    assert bw.forwarded_before_rules == 0 and bw.forwarded_after_rules == 100
    assert bw.syns_sent_before_rules == 70  # from 0.3 s before the script to 'rules loaded'
    assert bw.forwarding_on_s == {"4": 0.052, "6": 0.052}


def test_judge_boot_catches_forwarding_before_the_rules() -> None:
    # Forwarding on at 0.002 s, the chain still wiped at 0.3 s, packets through at once.
    log = [(T0 + 0.35, "rules loaded"), (T0 + 0.36, "forwarding on")]
    syns = [[T0 + 0.003 + i * 0.005, "192.0.2.10", 61000 + i] for i in range(120)]
    bw = judge_boot(_watch(0.002, 0.3, 0.34), syns, log, T0, 0, forward_wiped=WIPED)
    assert not bw.ok
    text = " | ".join(bw.problems)
    assert "before the script's 'rules loaded'" in text
    assert "while FORWARD was still empty" in text
    assert f"{bw.forwarded_before_rules} probe SYNs were forwarded before" in text
    assert bw.forwarded_before_rules == 70


def test_the_sampler_dates_forwarding_on_by_the_end_of_its_read(monkeypatch, capsys) -> None:
    # The boot script logs 'rules loaded' at 0.0565 s, then switches forwarding on at
    # 0.057 s, while the sampler's thread is held between its stamp (0.055 s) and its
    # read (the listers' threads, a busy machine). Dated by the stamp before the read,
    # forwarding was on before the rules: a false alarm once seen in CI. Dated by the
    # read's end (0.058 s), it is not.
    import argparse
    import json

    from fwc.lab import probe

    stamps = iter([T0, T0 + 0.001, T0 + 0.055, T0 + 0.058])  # before/after, two samples
    values = iter(["0", "0"] * 2 + ["1", "1"])  # first (both families), then a read each
    loop_checks = iter([0.0, 0.0, 0.0, 0.0, 99.0])  # two deadlines, two samples, out
    monkeypatch.setattr(probe.time, "time", lambda: next(stamps))
    monkeypatch.setattr(probe.time, "monotonic", lambda: next(loop_checks))
    monkeypatch.setattr(probe.time, "sleep", lambda _s: None)
    monkeypatch.setattr(probe, "_read", lambda _path: next(values))
    monkeypatch.setattr(probe, "_stopper", probe.Stop)
    assert probe.watch(argparse.Namespace(listers={}, duration=1.0, period=0.001)) == 0
    watch = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert watch["changes"] == [["4", "1", T0 + 0.058], ["6", "1", T0 + 0.058]]
    assert watch["last_off"] == {"4": T0, "6": T0}  # the start of the last read of 0
    watch["syns_sent"] = [T0 - 0.3 + i * 0.005 for i in range(180)]
    log = [(T0 + 0.0565, "rules loaded"), (T0 + 0.0575, "forwarding on")]
    bw = judge_boot(watch, [], log, T0, 0, forward_wiped=WIPED)
    assert bw.forwarding_on_s == {"4": 0.058, "6": 0.058}
    assert not any("before the script's 'rules loaded'" in p for p in bw.problems), bw.problems


def test_judge_boot_refuses_a_vacuous_probe() -> None:
    # Nothing got through at all, even after the boot: the probe missed the node.
    log = [(T0 + 0.049, "rules loaded"), (T0 + 0.054, "forwarding on")]
    bw = judge_boot(_watch(0.052, 0.02, 0.047), [], log, T0, 0, forward_wiped=WIPED)
    assert any("proves nothing" in p for p in bw.problems)
    # And a node that was not wiped (forwarding on, rules in) cannot pass either.
    watch = _watch(0.052, 0.02, 0.047)
    watch["first"] = {"4": "1", "6": "0"}
    chains = watch["chains"]
    assert isinstance(chains, dict)
    chains["4"]["wiped"] = "-P FORWARD DROP\n"
    bw = judge_boot(watch, [[T0 + 0.06, "x", 61000]], log, T0, 0, forward_wiped=WIPED)
    assert any("forwarding was 1 before" in p for p in bw.problems)
    assert any("FORWARD was not wiped" in p for p in bw.problems)


def test_judge_boot_tells_a_missing_sender_summary_from_no_syns() -> None:
    log = [(T0 + 0.049, "rules loaded"), (T0 + 0.054, "forwarding on")]
    syns = [[T0 + 0.055, "198.51.100.254", 61000]]
    watch = _watch(0.052, 0.02, 0.047)
    watch["syns_sent"] = None  # the sender's log held no JSON line
    bw = judge_boot(watch, syns, log, T0, 0, forward_wiped=WIPED)
    assert bw.problems == ["the probe sender printed no summary: when it sent is unknown"]
    watch["syns_sent"] = [T0 + 0.06]  # a summary, but every SYN after the rules
    bw = judge_boot(watch, syns, log, T0, 0, forward_wiped=WIPED)
    assert bw.problems == ["no probe SYN was sent before the rules loaded: nothing was tested"]


def _reboot_result(**kw: object) -> RebootResult:
    res = RebootResult("reboot-snat-1s", "snat", "1s", "fw1", "fw2", 5.0, connected=True)
    res.boot = BootWatch(rc=0)
    res.survived_failover = res.survived_failback = True
    res.cache_s, res.cache, res.first_vip_s, res.failback_s = 0.12, "external", 7.7, 7.7
    res.backup_held_vips = True
    for key, val in kw.items():
        setattr(res, key, val)
    return res


def test_judge_reboot_needs_resync_before_the_vips_and_the_delay() -> None:
    assert judge_reboot(_reboot_result())
    early = _reboot_result(first_vip_s=0.05)
    assert not judge_reboot(early)
    assert any("before conntrackd had the flow" in n for n in early.notes)
    assert any("within the preempt delay" in n for n in early.notes)
    nocache = _reboot_result(cache_s=None)
    assert not judge_reboot(nocache)
    lost = _reboot_result(survived_failback=False)
    assert not judge_reboot(lost) and "did not survive the return" in lost.notes[-1]
    stolen = _reboot_result(backup_held_vips=False)
    assert not judge_reboot(stolen)


def test_reboot_in_text_and_json_report() -> None:
    report = LabReport("edge", "fwc1", "/tmp/x")
    res = _reboot_result()
    res.ok = judge_reboot(res)
    res.wiped = {"processes": 0, "vips": [], "rules": 0, "ipsets": 0,
                 "conntrack_entries": 0, "forwarding": {"a": "0", "b": "0"}}
    report.reboot = res
    text = render_text(report)
    assert "reboot (drill 3): reboot-snat-1s HELD" in text
    assert "flow in fw1's external cache at 0.12s, first VIP at 7.70s" in text
    data = to_dict(report)["reboot"]
    assert data["ok"] and data["boot"]["ok"] and data["cache_s"] == 0.12
    report.reboot = RebootResult("reboot-snat-1s", "snat", "1s", skipped="no boot script")
    assert "reboot (drill 3): skipped: no boot script" in render_text(report)


@pytest.mark.root
@pytest.mark.parametrize("backend", list(Backend), ids=str)
def test_boot_watch_catches_forwarding_before_rules_and_passes_the_compiled_script(
    tmp_path: Path, backend: Backend
) -> None:
    """Per backend: edge.fw compiled for it (nftables: as `fwc lab --backend nftables`),
    wiped by its packet filter's wipe and watched by its forward-hook listing."""
    from fwc.lab.adapter import load_source
    from fwc.lab.netns import lab_namespaces, teardown
    from fwc.lab.reboot import boot_and_watch
    from fwc.lab.running import Lab
    from fwc.lab.topology import plan

    source = load_source(REPO / "policies" / "edge.fw", backend=backend)
    assert source.cluster.backend is backend
    prefix = f"fwc{os.getpid()}b"
    (tmp_path / "logs").mkdir()
    lab = Lab(plan(source.policy, source.cluster, prefix), source.files, tmp_path / "logs",
              lambda _m: None)
    try:
        lab.build()
        lab.start_members()
        lab.start_listeners()
        assert lab.flow is not None
        node = lab.node("fw1")
        script = "/etc/fwc/fwc-firewall.sh"
        # The order issue 10 removed: forwarding from /etc/sysctl.d first, the rules later.
        node.exec(["cp", script, "/etc/fwc/compiled-boot.sh"])
        node.write(
            script,
            "#!/bin/sh\nsysctl -q -p /etc/fwc/forwarding.conf\nsleep 0.4\n"
            f"exec sh {shlex.quote('/etc/fwc/compiled-boot.sh')}\n",
            0o755,
        )
        node.crash()
        wiped = node.wipe()
        assert wiped["rules"] == 0 and wiped["processes"] == 0, wiped
        if backend is Backend.NFTABLES:
            assert node.exec(["nft", "list", "ruleset"]).stdout.strip() == ""
        bad = boot_and_watch(lab, node, lab.flow, "bad-boot")
        assert bad.rc == 0 and not bad.ok
        assert bad.forwarded_before_rules > 0, bad
        assert any("before the script's 'rules loaded'" in p for p in bad.problems), bad

        node.exec(["cp", "/etc/fwc/compiled-boot.sh", script])
        node.crash()
        node.wipe()
        time.sleep(0.2)
        good = boot_and_watch(lab, node, lab.flow, "good-boot")
        assert good.ok, good.problems
        assert good.forwarded_before_rules == 0 and good.forwarded_after_rules > 0, good
        assert good.syns_sent_before_rules > 0, good
        assert good.rules_loaded_s is not None
        assert all(t > good.rules_loaded_s for t in good.forwarding_on_s.values()), good
        assert good.rules_before == {"4": WIPED_LISTING[backend], "6": WIPED_LISTING[backend]}
    finally:
        teardown(prefix)
    assert lab_namespaces(prefix) == []


class _ScriptedNode:
    """A member whose VIPs follow a script of readings (the last one repeats)."""

    def __init__(self, readings: list[set[str]]) -> None:
        self.readings = readings

    def vips_held(self) -> set[str]:
        return self.readings.pop(0) if len(self.readings) > 1 else self.readings[0]

    def ct(self, args: list[str], check: bool = False):  # type: ignore[no-untyped-def]
        class Done:
            stdout = "sport=1 dport=2\n"
        return Done()


class _Plan:
    advert = 1.0  # the policy's advert interval in seconds
    master_down_bound = LabPlan.master_down_bound  # (what the lab's plan says of it)


class _Lab:
    vip_set = {"192.0.2.1", "198.51.100.1"}
    plan = _Plan()


def _rejoin_with(master: list[set[str]], backup: list[set[str]]) -> RebootResult:
    from fwc.lab.reboot import _rejoin

    res = RebootResult("reboot-snat-1s", "snat", "1s", "fw1", "fw2", 0.0, connected=True)
    _rejoin(_Lab(), res, _ScriptedNode(master), _ScriptedNode(backup),  # type: ignore[arg-type]
            lambda lines: True, time.monotonic())
    return res


def test_a_handover_between_two_readings_is_not_a_gap() -> None:
    every = _Lab.vip_set
    # master read empty; then it took the VIPs and the backup released them before the
    # backup was read: the second reading of the master shows the handover.
    res = _rejoin_with(master=[set(), every, every], backup=[set()])
    assert res.backup_held_vips and res.failback_s is not None


def test_a_vip_nobody_holds_is_a_gap() -> None:
    every = _Lab.vip_set
    res = _rejoin_with(master=[set(), set(), every], backup=[{"192.0.2.1"}])
    assert not res.backup_held_vips


def test_judge_reboot_with_preemption_off_wants_the_node_to_stay_backup() -> None:
    # `preempt off`: the returning node must take no VIP (the lab used to fail such a
    # policy with "the returning node never took the VIPs back"), have the flow in its
    # conntrackd for the next failover, and the backup must hold every VIP throughout.
    stays = _reboot_result(preempt=False, first_vip_s=None, failback_s=None)
    assert judge_reboot(stays), stays.notes
    steals = _reboot_result(preempt=False, first_vip_s=2.5, failback_s=None)
    assert not judge_reboot(steals)
    assert any("although preemption is off" in n for n in steals.notes)
    unsynced = _reboot_result(preempt=False, first_vip_s=None, cache_s=None)
    assert not judge_reboot(unsynced)
    assert "the returning node's conntrackd never listed the connection" in unsynced.notes
    dropped = _reboot_result(preempt=False, first_vip_s=None, backup_held_vips=False)
    assert not judge_reboot(dropped)
    assert "the backup did not hold every VIP while the node returned" in dropped.notes
    lost = _reboot_result(preempt=False, first_vip_s=None, survived_failback=False)
    assert not judge_reboot(lost) and "did not survive the return" in lost.notes[-1]


def test_rejoin_with_preemption_off_watches_the_node_stay_backup(monkeypatch) -> None:
    import fwc.lab.reboot as reboot

    clock = _Clock()  # the whole watch, in no time
    monkeypatch.setattr(reboot, "time", clock)
    every = _Lab.vip_set

    def rejoin(master: list[set[str]], backup: list[set[str]]) -> RebootResult:
        res = RebootResult("reboot-snat-1s", "snat", "1s", "fw1", "fw2", 0.0, connected=True,
                           preempt=False)
        reboot._rejoin(_Lab(), res, _ScriptedNode(master),  # type: ignore[arg-type]
                       _ScriptedNode(backup), lambda lines: True, clock.monotonic())
        return res

    stayed = rejoin(master=[set()], backup=[every])
    assert stayed.backup_held_vips and stayed.first_vip_s is None
    assert stayed.failback_s is None and stayed.cache_s is not None
    took = rejoin(master=[set(), set(), {"192.0.2.1"}], backup=[every])
    assert not took.backup_held_vips and took.first_vip_s is not None
    gap = rejoin(master=[set()], backup=[every, {"192.0.2.1"}, every])
    assert not gap.backup_held_vips


class _Clock:
    """time.monotonic and time.sleep of a drill that takes no real time."""

    def __init__(self) -> None:
        self.now = 0.0

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


class _TakesBackAt(_ScriptedNode):
    """A returning member that holds every VIP from AT seconds of CLOCK on."""

    def __init__(self, clock: _Clock, at: float) -> None:
        super().__init__([set()])
        self.clock, self.at = clock, at

    def vips_held(self) -> set[str]:
        return set(_Lab.vip_set) if self.clock.now >= self.at else set()


def test_rejoin_with_preemption_off_outlasts_the_master_down_interval(monkeypatch) -> None:
    # A returning keepalived that preempts although the policy says `preempt off` (no
    # nopreempt in its keepalived.conf) takes the VIPs when its master-down timer runs
    # out: three adverts plus a skew. keepalived 2.2.7 at `advert 3s`, priority 150 over
    # 100, took them 9.56 s after its start: after the 8 s watch, and the drill passed.
    import fwc.lab.reboot as reboot

    clock = _Clock()
    monkeypatch.setattr(reboot, "time", clock)

    class SlowPlan(_Plan):
        advert = 3.0

    class SlowLab(_Lab):
        plan = SlowPlan()

    res = _reboot_result(preempt=False, first_vip_s=None, failback_s=None, cache_s=None,
                         backup_held_vips=False)
    reboot._rejoin(SlowLab(), res, _TakesBackAt(clock, 9.56),  # type: ignore[arg-type]
                   _ScriptedNode([set(_Lab.vip_set)]), lambda lines: True, clock.monotonic())
    assert res.first_vip_s is not None and res.first_vip_s >= 9.56, res
    assert not judge_reboot(res)
    assert any("although preemption is off" in n for n in res.notes), res.notes


def test_reboot_with_preemption_off_in_the_text_report() -> None:
    report = LabReport("edge", "fwc1", "/tmp/x")
    res = _reboot_result(preempt=False, first_vip_s=None, failback_s=None)
    res.ok = judge_reboot(res)
    report.reboot = res
    text = render_text(report)
    assert "rejoin as backup (from keepalived's start, preempt off)" in text
    assert "VIPs taken: none; fw2 held them throughout: yes" in text
    assert "connection through fw2 after the return survived" in text
