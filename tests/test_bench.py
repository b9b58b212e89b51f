"""bench/: the shapes stay valid policies and the growth verdict fails when it should.

Speed itself is measured by bench/run.py only, never here."""

from __future__ import annotations

import os
import sys
import time

import pytest

from bench.generate import SHAPES, build_site, fwc_policy
from bench.run import growth_findings
from fwc.diagnostics import Severity
from fwc.pipeline import analyse


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_every_shape_checks_without_errors(tmp_path, shape):
    path = tmp_path / f"{shape}.fw"
    path.write_text(fwc_policy(build_site(400, shape=shape)), encoding="utf-8")
    analysis = analyse(path)
    errors = [d for d in analysis.diagnostics if d.severity is Severity.ERROR]
    assert analysis.policy is not None and errors == []
    cluster = analysis.policy.clusters[0]
    if shape == "interfaces":
        assert len(cluster.members) == 4 and len(cluster.interfaces) == 13
    if shape == "groups":
        assert all(r.in_interface is None and r.out_interface is None
                   for r in cluster.rules[20:])  # after the DNAT accepts


def _medians(times: dict[int, float]) -> dict[int, dict[str, tuple[float, float, float]]]:
    return {size: {"render": (cpu, cpu, 100.0)} for size, cpu in times.items()}


def growth_failures(shape: str, medians: dict[int, dict[str, tuple[float, float, float]]]) \
        -> list[str]:
    return [text for _, _, _, text in growth_findings(shape, medians)]


def test_growth_verdict():
    linear = _medians({1000: 0.2, 2000: 0.4, 4000: 0.8})
    assert growth_failures("s", linear) == []
    quadratic = _medians({1000: 0.2, 2000: 0.8})
    assert growth_failures("s", quadratic) == [
        "s: render grew 4.0x from 1000 to 2000 rules (0.20 -> 0.80 s CPU; allowed 2.3x)"]
    # 5x the rules may take 2.3 ** log2(5) = 6.9x the time
    assert growth_failures("s", _medians({1000: 0.2, 5000: 1.3})) == []
    assert len(growth_failures("s", _medians({1000: 0.2, 5000: 1.5}))) == 1
    # too small to judge on a shared machine
    assert growth_failures("s", _medians({1000: 0.001, 2000: 0.05})) == []


@pytest.mark.parametrize("backend", [[], ["iptables"], ["nftables"]])
def test_the_per_pass_harness_runs_every_pass(tmp_path, backend):
    # bench/passes.py hooks into the compiler's own functions: a rename there must fail
    # here, not in the next benchmark run.
    import json
    import subprocess
    import sys

    from bench.passes import REPO

    path = tmp_path / "site.fw"
    path.write_text(fwc_policy(build_site(400)), encoding="utf-8")
    result = subprocess.run([sys.executable, "-m", "bench.passes", str(path), *backend],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    passes = json.loads(result.stdout)["passes"]
    for name in ("parse", "resolve", "lower", "check rules", "arrange+ipsets", "render",
                 "write"):
        assert passes[name]["cpu"] >= 0 and passes[name]["peak_mb"] > 0, name
        # (by difference, at the clocks' resolution: a few ms either way)
        assert -0.02 <= passes[name]["user"] <= passes[name]["cpu"] + 0.02, name
    assert passes["arrange+ipsets"]["wall"] > 0  # the hook really wrapped the speed passes


def test_the_per_pass_harness_builds_the_backend_asked(monkeypatch):
    """`bench.passes POLICY nftables` builds nftables files (the render pass is theirs);
    an unknown backend is refused."""
    import gc

    from bench import passes
    from fwc.backend import output

    asked = []
    real = output.stream_policy

    def spy(policy, *args, **kwargs):
        asked.append(kwargs.get("backend"))
        return real(policy, *args, **kwargs)

    monkeypatch.setattr(output, "stream_policy", spy)
    policy = passes.REPO / "policies" / "dmz.fw"
    try:
        passes.measure(policy, "nftables")
        passes.measure(policy)
    finally:
        gc.enable()  # measure runs as the CLI does, without the cycle collector
    assert [str(b) if b else None for b in asked] == ["nftables", None]
    assert passes.main([str(policy), "pf"]) == 2


def test_nft_counts_rules_named_and_anonymous_sets():
    from bench.run import nft_counts

    text = ("table inet fwc {\n\tset addresses-v4-1 {\n\t\ttype ipv4_addr\n\t}\n"
            "\tchain a {\n\t\ttcp dport { 1, 2 } ip saddr { 192.0.2.0/24, 198.51.100.0/24 } "
            "counter accept comment \"p.fw:3\"\n"
            "\t\tip saddr @addresses-v4-1 counter drop comment \"p.fw:4\"\n\t}\n}\n")
    assert nft_counts(text) == (2, 1, 2)
    # a map is a kernel set; its elements (with their comments) are not rules
    rule_map = ("\tmap rules-v4-1 {\n\t\ttype ipv4_addr : verdict\n\t\telements = {\n"
                "\t\t\t192.0.2.1 comment \"p.fw:5\" : accept,\n\t\t}\n\t}\n")
    assert nft_counts(text.replace("\tchain a", rule_map + "\tchain a")) == (2, 2, 2)


def _run(cpu: float) -> dict[str, object]:
    return {"passes": {"render": {"cpu": cpu, "wall": cpu, "peak_mb": 100.0}}, "peak_mb": 100.0}


def test_a_confirmed_growth_failure_says_how_much_of_it_was_user_time():
    """The kernel's part of a pass (page faults, the page cache) depends on the machine's
    memory too: a failure prints the user part of the CPU seconds beside them."""
    import bench.run as run

    def measured(cpu: float, user: float) -> dict[str, object]:
        got = _run(cpu)
        got["passes"]["write"] = {"cpu": cpu, "user": user, "wall": cpu,  # type: ignore[index]
                                  "peak_mb": 100.0}
        return got

    pairs = [(measured(0.03, 0.025), measured(0.19, 0.05)),
             (measured(0.03, 0.025), measured(0.12, 0.045)),
             (measured(0.03, 0.028), measured(0.14, 0.05))]
    assert run.paired_growth("site", 50000, 100000, pairs, {"write"}) == [
        "site: write grew 4.7x from 50000 to 100000 rules (median of 3 interleaved pairs; "
        "CPU s 0.03, 0.03, 0.03 -> 0.19, 0.12, 0.14; allowed 2.3x; of it user CPU s "
        "0.03, 0.03, 0.03 -> 0.05, 0.04, 0.05, 1.8x)"]


def test_a_growth_failure_counts_only_when_measuring_again_repeats_it(monkeypatch, tmp_path):
    import bench.run as run

    policies = {1000: tmp_path / "1000.fw", 2000: tmp_path / "2000.fw"}

    def measured_again(small: list[float], large: list[float]) -> None:
        again = {policies[1000]: iter(small), policies[2000]: iter(large)}
        monkeypatch.setattr(run, "pass_run",
                            lambda policy, backend=None: _run(next(again[policy])))

    # A burst of load on the larger size's first runs: the runs again are linear.
    measured_again([0.2, 0.2, 0.2], [0.4, 0.41, 0.4])
    noisy = {1000: [_run(0.2), _run(0.21)], 2000: [_run(0.9), _run(1.0)]}
    assert run.confirmed_failures("s", noisy, policies, confirm=3) == []
    assert len(noisy[2000]) == 5  # measured again, interleaved with the smaller size
    # One lucky run of the smaller size, among the first runs or the runs again: the
    # median of the pairs' ratios decides.
    measured_again([0.12, 0.2, 0.21], [0.44, 0.45, 0.44])
    lucky = {1000: [_run(0.12), _run(0.2)], 2000: [_run(0.45), _run(0.46)]}
    assert run.confirmed_failures("s", lucky, policies, confirm=3) == []
    # Quadratic every time: still a failure, every pair printed.
    measured_again([0.2, 0.2, 0.21], [0.85, 0.9, 0.8])
    quadratic = {1000: [_run(0.2), _run(0.21)], 2000: [_run(0.9), _run(1.0)]}
    assert run.confirmed_failures("s", quadratic, policies, confirm=3) == [
        "s: render grew 4.2x from 1000 to 2000 rules (median of 3 interleaved pairs; CPU s "
        "0.20, 0.20, 0.21 -> 0.85, 0.90, 0.80; allowed 2.3x)"]
    # A run again that does not compile is a failure, not a pass.
    again = {policies[1000]: iter([0.2]), policies[2000]: iter([None])}
    monkeypatch.setattr(run, "pass_run", lambda policy, backend=None:
                        None if (v := next(again[policy])) is None else _run(v))
    assert run.confirmed_failures("s", {1000: [_run(0.2)], 2000: [_run(0.9)]}, policies,
                                  confirm=3) == [
        "s: 1000 or 2000 rules did not compile when measured again"]
    # --confirm 0 judges the first runs' minima
    assert len(run.confirmed_failures("s", {1000: [_run(0.2)], 2000: [_run(0.9)]}, policies,
                                      confirm=0)) == 1


def test_a_run_past_its_limit_is_stopped_and_printed_as_a_lower_bound(tmp_path):
    from bench.run import Row, Run, table, timed

    # the child forks a process of its own (as aclgen does): both must be gone
    grandchild = tmp_path / "pid"
    script = ("import subprocess, sys, time; "
              "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(30)']); "
              f"open({str(grandchild)!r}, 'w').write(str(p.pid)); time.sleep(30)")
    stopped = timed([sys.executable, "-c", script], timeout=1.5)
    assert stopped.timed_out and stopped.returncode != 0
    assert 1.5 <= stopped.seconds < 10
    pid = int(grandchild.read_text())
    deadline = time.monotonic() + 5
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(pid), "the stopped run's own child is still running"
    finished = timed([sys.executable, "-c", "pass"], timeout=30)
    assert not finished.timed_out and finished.returncode == 0
    row = Row(20000, "groups")
    row.compile = Run(2.0, 100.0, 0, cpu=2.5)
    row.aclgen = Run(600.0, 1000.0, -9, "timed out after 600 s", cpu=590.0, timed_out=True)
    cells = table([row], with_aclgen=True).splitlines()[2].split(" | ")
    assert "> 600" in cells and "> 300.0x" in cells and "> 236.0x" in cells


def test_a_runs_peak_memory_is_its_own_not_this_process(tmp_path):
    """A command started from a large process reports its own peak RSS: straight from
    this one (vfork, exec) it would carry this process's high-water mark."""
    from bench.run import timed

    held = bytearray(256 << 20)
    held[::4096] = b"\1" * len(held[::4096])  # resident, not only reserved
    small = timed([sys.executable, "-c", "pass"])
    large = timed([sys.executable, "-c", "x = bytearray(128 << 20); x[::4096] = b'1' * "
                   "len(x[::4096]); raise SystemExit(3)"])
    del held
    assert small.returncode == 0 and small.peak_mb < 100, small
    assert large.returncode == 3 and 128 <= large.peak_mb < 230, large
    for sig in (15, 9):  # (SIGKILL: as the out-of-memory killer ends a run)
        ended = timed([sys.executable, "-c", f"import os; os.kill(os.getpid(), {sig})"])
        assert ended.returncode == -sig, ended
    missing = timed([str(tmp_path / "nothing-here")])
    assert missing.returncode == 127 and "cannot run" in missing.stderr
    # the command's own time, not the launcher's start; the signals a program expects
    sleeper = timed(["sleep", "0.3"])
    assert 0.3 <= sleeper.seconds < 0.3 + 0.25 and sleeper.cpu < 0.1, sleeper
    ignored = timed(["sh", "-c", "grep SigIgn /proc/self/status >&2"])
    assert int(ignored.stderr.split()[-1], 16) & ((1 << 12) | (1 << 24)) == 0, ignored.stderr
    # a working directory's modules do not reach the launcher
    (tmp_path / "signal.py").write_text("raise SystemExit(99)\n")
    assert timed([sys.executable, "-c", "pass"], cwd=tmp_path).returncode == 0


def test_a_runs_peak_memory_sums_the_processes_it_forked():
    """A command whose worker holds memory at the same time as it (fwc's checks worker)
    reports what both held at once, not the larger of the two."""
    from bench.run import timed

    script = ("import os, time\n"
              "pid = os.fork()\n"
              "x = bytearray(96 << 20)\n"
              "x[::4096] = b'1' * len(x[::4096])\n"
              "time.sleep(0.8)\n"
              "if pid == 0:\n"
              "    os._exit(0)\n"
              "os.waitpid(pid, 0)\n")
    both = timed([sys.executable, "-c", script], timeout=30)
    assert both.returncode == 0 and 2 * 96 <= both.peak_mb < 2 * 96 + 100, both
    # the worker's own child counts too
    nested = script.replace("pid = os.fork()\n",
                            "pid = os.fork()\nif pid == 0:\n    pid = os.fork()\n")
    three = timed([sys.executable, "-c", nested], timeout=30)
    assert three.returncode == 0 and 3 * 96 <= three.peak_mb < 3 * 96 + 150, three
    # what was allocated before the fork and only read since is shared: counted once
    shared = timed([sys.executable, "-c", "import os, time\n"
                    "x = bytearray(96 << 20)\n"
                    "x[::4096] = b'1' * len(x[::4096])\n"
                    "pid = os.fork()\n"
                    "time.sleep(0.8)\n"
                    "if pid == 0:\n"
                    "    os._exit(0)\n"
                    "os.waitpid(pid, 0)\n"], timeout=30)
    assert shared.returncode == 0 and 96 <= shared.peak_mb < 96 + 50, shared


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie waiting for init to reap it counts as gone
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:  # reaped in between
        return False


def test_an_interrupted_run_with_a_limit_takes_its_processes_along(tmp_path, monkeypatch):
    import bench.run as run

    marker = tmp_path / "pid"
    script = ("import subprocess, sys, time; "
              "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(30)']); "
              f"open({str(marker)!r}, 'w').write(str(p.pid)); time.sleep(30)")
    real_sleep = time.sleep

    def interrupt_once_started(seconds: float) -> None:
        real_sleep(seconds)
        if marker.exists() and marker.read_text():
            raise KeyboardInterrupt  # as Ctrl-C arrives in the waiting loop

    monkeypatch.setattr(run.time, "sleep", interrupt_once_started)
    with pytest.raises(KeyboardInterrupt):
        run.timed([sys.executable, "-c", script], timeout=20)
    monkeypatch.undo()
    pid = int(marker.read_text())
    deadline = time.monotonic() + 5
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(pid), "the interrupted run's own child is still running"


@pytest.mark.parametrize("found", ["", "namespace", "/elsewhere/site-packages/fwc"])
def test_the_bench_refuses_to_time_another_fwc_than_this_checkout(monkeypatch, capsys, found):
    """The timed processes run `python3 -m fwc` in work folders, so they import the
    installed fwc: when that is not this checkout's (a stale editable install, another
    tree), the bench says so and times nothing."""
    import bench.run as run

    monkeypatch.setattr(run, "timed_fwc_package", lambda: found)
    monkeypatch.setattr(run, "byte_compile_fwc", lambda: pytest.fail("went on"))
    assert run.main(["--edit", "--sizes", "1000"]) == 2
    assert "pip install -e ." in capsys.readouterr().err


def test_the_fwc_the_bench_times_is_this_checkouts():
    """A check of the setup, not of the code: tests/run.sh installs this checkout
    (`pip install -e .`), so in CI the bench times it. Elsewhere another install may be
    the one `python3 -m fwc` finds: then the bench refuses (test above), and this skips."""
    import bench.run as run

    found = run.timed_fwc_package()
    if os.environ.get("CI") != "true" and \
            os.path.realpath(found) != os.path.realpath(run.REPO / "fwc"):
        pytest.skip(f"off CI: `python3 -m fwc` imports {found or 'no fwc'}, not this "
                    "checkout's (run `pip install -e .` here)")
    assert os.path.realpath(found) == os.path.realpath(run.REPO / "fwc")


_BEFORE = """*filter
:FORWARD DROP [0:0]
:fwd-tcp-0 - [0:0]
:fwd-tcp-100 - [0:0]
:fwc-p6-fwd-0 - [0:0]
-A FORWARD -p tcp --dport 0:99 -m comment --comment "fwc arrange: ports 0-99" -j fwd-tcp-0
-A FORWARD -p tcp --dport 100:65535 -m comment --comment "fwc arrange: ports 100-65535" -j fwd-tcp-100
-A fwd-tcp-0 -p tcp -m tcp --dport 22 -m comment --comment "p.fw:3" -j ACCEPT
-A fwd-tcp-0 -p tcp -m tcp --dport 53 -m comment --comment "p.fw:5" -j ACCEPT
-A fwd-tcp-0 -m comment --comment "fwc arrange: FORWARD policy" -j DROP
-A fwd-tcp-100 -p tcp -m tcp --dport 443 -m comment --comment "p.fw:4" -j ACCEPT
-A fwd-tcp-100 -p tcp --dport 993 -m comment --comment "fwc arrange: p.fw:6" -j fwc-p6-fwd-0
-A fwd-tcp-100 -m comment --comment "fwc arrange: FORWARD policy" -j DROP
-A fwc-p6-fwd-0 -s 192.0.2.1/32 -p tcp -m tcp --dport 993 -m comment --comment "p.fw:6" -j ACCEPT
-A fwc-p6-fwd-0 -s 192.0.2.9/32 -p tcp -m tcp --dport 993 -m comment --comment "p.fw:6" -j ACCEPT
COMMIT
"""  # noqa: E501


def test_the_patch_floor_splices_a_rule_into_its_new_bucket_by_source_order():
    """bench/patchfloor.py times a splice that must equal the full compile: the rule of
    line 5 leaves bucket 0 for bucket 100, between the rules of lines 4 and 6 (a jump to a
    shared chain carries its rule's line too), and the other lines stay as they were."""
    from bench.patchfloor import chain_offsets, splice

    moved = '-A fwd-tcp-100 -p tcp -m tcp --dport 5353 -m comment --comment "p.fw:5" -j ACCEPT\n'
    data = _BEFORE.encode()
    pieces = splice(data, 5, [moved], chain_offsets(data, {"fwd-tcp-100"}))
    lines = _BEFORE.splitlines(keepends=True)
    expected = [*lines[:8], *lines[9:11], moved, *lines[11:]]
    assert b"".join(pieces).decode() == "".join(expected)


def test_the_patch_floor_tells_a_local_edit_from_a_moved_cut(tmp_path):
    """`cause`: only the edited rule's lines changed (local); a port cut moved (the jumps'
    ranges: two buckets); a chain of share_expansions renamed (named by its rule's line
    and count since the twenty-sixth session: only an edit of that rule renames it)."""
    from bench.patchfloor import cause

    def tree(name: str, text: str):
        for member in ("fw1", "fw2"):  # (each file of the tree is compared)
            (tmp_path / name / "c" / member).mkdir(parents=True)
            (tmp_path / name / "c" / member / "iptables.rules").write_text(text)
        (tmp_path / name / "c" / "MANIFEST").write_text(name)  # never compared
        return tmp_path / name

    old = tree("old", _BEFORE)
    local = tree("local", _BEFORE.replace("--dport 53 ", "--dport 54 "))
    cut = tree("cut", _BEFORE.replace("0:99", "0:199").replace("100:65535", "200:65535")
               .replace("ports 0-99", "ports 0-199").replace("ports 100-", "ports 200-")
               .replace("fwd-tcp-100", "fwd-tcp-200"))  # (a bucket is named by its low)
    more = tree("more", _BEFORE.replace(":fwc-p6-fwd-0", ":fwd-tcp-300 - [0:0]\n:fwc-p6-fwd-0"))
    renamed = tree("renamed", _BEFORE.replace("fwc-p6-fwd-0", "fwc-p6-fwd-1"))
    assert cause(old, local, 5) == "local"
    assert cause(old, cut, 5) == "a port cut moved (2 buckets)"
    assert cause(old, more, 5) == "bucket count"
    assert cause(old, renamed, 5) == "shared chains renamed"
    assert cause(old, renamed, 6) == "local"  # its own rule's edit


