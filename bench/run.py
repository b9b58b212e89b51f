"""The benchmark: `python3 bench/run.py [--sizes 1000,5000,20000] [--shapes site,groups] [--quick]`.

Per-pass scaling (always, unless `--no-passes`): for every shape (bench/generate.py
SHAPES) and size, `python3 -m bench.passes` compiles the policy in a fresh process
`--repeat` times; the table shows the median CPU seconds and the peak RSS of every
pass. The run exits 1 when a pass grows faster than allowed: from one size to the
next (ratio r), its CPU time may grow at most 2.3 ** log2(r) times (2.3x per
doubling of the rules); passes under MIN_JUDGED seconds at the larger size are too
small to judge on a shared machine. The verdict judges the minimum CPU time of the
runs (what other users of a shared machine inflate least), and a pass that fails is
measured again, both sizes interleaved (`--confirm` more runs each), and judged by the
median ratio of those pairs of runs before it counts: a superlinear pass fails every
time, a burst of load on one run, or one lucky run, does not. `--passes-backend
nftables` builds the files for nftables (the render pass is then the nft files').

Whole processes (also run unless `--passes-only`), on every shape of `--shapes`:

For each size it generates the synthetic site (bench/generate.py, fixed seed),
then times whole processes, as a user would run them:

- `fwc check` and `fwc compile` (wall time, peak memory: `timed`),
- the size of what compile wrote (member fw1: iptables lines, bytes, ipsets),
- `ipset restore` + `iptables-restore --test` of fw1's output inside a throwaway
  network namespace (root only; the table says when skipped),
- Aerleon's `aclgen` on the equivalent policy when Aerleon is installed
  (`pip install '.[bench]'`), with the ratio aclgen / fwc compile,
- rules traversed by a sample of new connections: flat lowered ruleset, with
  ipsets, and as fwc arranges it (fwc.backend.arrange),

and `fwc --version` start-up.

`--edit`: the edit loop through the result cache. `--diff`: `fwc diff` of a policy
edited in a git working tree (one rule's service changed; one rule inserted, which
moves every later rule's location), next to `fwc compile --no-cache` of it.
`--import`: `fwc import iptables-save` of member fw1's compiled `iptables.rules`.

Backends (unless `--no-backends`; `--backends-only` for just this table): for every
shape at the largest size, `fwc compile --backend iptables|nftables` (wall time,
peak RSS) and the time to load member fw1's output into a fresh network namespace
(root only): `ipset restore` + `iptables-restore` + `ip6tables-restore` for
iptables, one `nft -f` for nftables, with the counts that decide the load time
(rules, named and anonymous sets). Nothing here runs inside the unit tests: speed
is measured here only. Output is a Markdown table (docs/performance.md keeps the
last one). The machine is shared: the load average is printed with the table.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.generate import SHAPES, build_site, fwc_policy, write_aerleon  # noqa: E402

DEFAULT_SIZES = (1000, 5000, 20000)
ALL_SIZES = (1000, 5000, 20000, 50000, 100000)
TRAVERSAL_SAMPLE = 300
GROWTH_PER_DOUBLING = 2.3
MIN_JUDGED = 0.1  # CPU seconds: below this a pass is noise on a shared machine
CONFIRM_RUNS = 3  # pairs of runs again before a suspected growth counts (--confirm)


@dataclass
class Run:
    seconds: float
    peak_mb: float
    returncode: int
    stderr: str = ""
    cpu: float = 0.0  # user + system seconds of exactly this child
    timed_out: bool = False  # killed after `timed`'s TIMEOUT: seconds is a lower bound


@dataclass
class Row:
    rules: int
    shape: str = "site"
    check: Run | None = None
    compile: Run | None = None
    iptables_lines: int = 0
    output_kb: float = 0.0
    ipsets: int = 0
    restore_test: float | None = None  # iptables-restore --test
    restore_load: float | None = None  # the real load into the namespace
    ipset_restore: float | None = None
    restore_note: str = ""
    aclgen: Run | None = None
    traversal: dict[str, float] = field(default_factory=dict)


# Runs the measured command as its child and writes, to the pipe whose descriptor is its
# first argument, that child's peak RSS (KiB), user and system CPU seconds, wall seconds
# (from just before the fork to the reaping) and the largest summed PSS (KiB) of the
# child's process tree seen while it had more than one process, then ends as the command
# did (the same exit status, or the same signal).
#
# The summed PSS is what `fwc` with a worker (fwc.parallel) holds at once: the peak RSS
# of wait4 is only the larger of the two processes (Linux reports a child's own peak or
# its reaped children's, whichever is higher), and the sum of their RSS counts the pages
# they still share since the fork twice. It is sampled every SAMPLE seconds by a thread
# while the main thread waits in wait4 (the wall time is read when wait4 returns, at
# worst a GIL switch interval, 5 ms, later), and only while there is a second process:
# reading smaps_rollup walks a process's page tables, about 8 ms for 450 MB here, CPU
# taken from the cores the command runs on (a forked 100,000-rule compile: about 9 % of
# one core while its worker lives); a single process's own peak is the kernel's exact
# figure. Growth between two samples can be missed, and a process is found through its
# parent's /proc/PID/task/PID/children, which lists the children of the main thread only
# (fwc's worker is one of them).
#
# A process started straight from this one (vfork, then exec) carries this process's
# peak RSS at the exec into its own (Linux keeps the old address space's high-water mark
# in the process's maxrss): a 0.2 s `fwc check` showed the 272 MB this script held after
# generating a policy. The launcher is small (`-I -S`: no site, nothing from the working
# directory), so its child's peak is the command's own (at least the launcher's ~10 MB),
# and the times are the command's, without the launcher's own start.
_LAUNCHER = """
import os, signal, sys, threading, time
SAMPLE = 0.1
report = int(sys.argv[1])
start = time.perf_counter()
pid = os.fork()
if pid == 0:
    try:
        os.close(report)
        # as subprocess leaves them for a program it starts (Python ignores these two)
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
        signal.signal(signal.SIGXFSZ, signal.SIG_DFL)
        os.execvp(sys.argv[2], sys.argv[2:])
    except OSError as exc:
        os.write(2, f"cannot run {sys.argv[2]}: {exc}\\n".encode())
    finally:
        os._exit(127)

def tree(root):
    found, todo = [], [root]
    while todo:
        at = todo.pop()
        found.append(at)
        try:
            with open(f"/proc/{at}/task/{at}/children") as listing:
                todo += [int(child) for child in listing.read().split()]
        except (OSError, ValueError):
            pass
    return found

def pss(at):
    try:
        with open(f"/proc/{at}/smaps_rollup") as rollup:
            for line in rollup:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0

summed = [0]
ended = threading.Event()

def sample():
    while not ended.wait(SAMPLE):
        members = tree(pid)
        if len(members) > 1:
            summed[0] = max(summed[0], sum(pss(at) for at in members))

sampler = threading.Thread(target=sample, daemon=True)
sampler.start()
_, status, usage = os.wait4(pid, 0)
wall = time.perf_counter() - start
ended.set()
sampler.join()
os.write(report, f"{usage.ru_maxrss} {usage.ru_utime} {usage.ru_stime} {wall} "
                 f"{summed[0]}".encode())
code = os.waitstatus_to_exitcode(status)
if code < 0:
    if -code not in (signal.SIGKILL, signal.SIGSTOP):
        signal.signal(-code, signal.SIG_DFL)
    os.kill(os.getpid(), -code)
    os._exit(128 - code)  # (a signal that does not end a process)
sys.exit(code)
"""


def timed(argv: list[str], cwd: Path | None = None, stdin: Path | None = None,
          timeout: float | None = None, env: dict[str, str] | None = None) -> Run:
    """Wall time, CPU time and the peak memory of exactly this command (wait4 in a small
    launcher, `_LAUNCHER`). The CPU time includes the processes the command waited for
    (Aerleon's renderer workers, fwc's worker); the peak is the larger of the command's
    own peak RSS and the largest summed PSS of its process tree (`_LAUNCHER`): what a
    command and its workers held at once.

    TIMEOUT: the command is killed after so many seconds (returncode -9, "timed out").
    """
    start = time.perf_counter()
    report_in, report_out = os.pipe()
    with os.fdopen(report_in, "rb") as reported:
        try:
            status, usage, killed, tail = _launched(argv, cwd, stdin, timeout, env,
                                                    report_out)
        finally:
            os.close(report_out)  # (the launcher has ended: its figures wait in the pipe)
        # (nothing when the launcher was killed: then the launcher's own figures)
        figures = reported.read().decode().split()
    if len(figures) == 5:
        peak_kib, cpu, wall = max(int(figures[0]), int(figures[4])), \
            float(figures[1]) + float(figures[2]), float(figures[3])
    else:
        peak_kib, cpu = usage.ru_maxrss, usage.ru_utime + usage.ru_stime
        wall = time.perf_counter() - start
    return Run(wall, peak_kib / 1024, os.waitstatus_to_exitcode(status), tail, cpu, killed)


def _launched(argv: list[str], cwd: Path | None, stdin: Path | None, timeout: float | None,
              env: dict[str, str] | None, report: int) \
        -> tuple[int, Any, bool, str]:
    """ARGV run under `_LAUNCHER` (which reports to the descriptor REPORT): the launcher's
    wait status and usage, whether TIMEOUT stopped it, the end of its stderr."""
    start = time.perf_counter()
    killed = False
    with open(stdin, "rb") if stdin else open(os.devnull, "rb") as feed, \
            tempfile.TemporaryFile() as err:
        # A session of its own: at the limit the whole group goes (aclgen runs behind a
        # pyenv shim and forks renderer workers; killing the first process alone left
        # them running).
        child = subprocess.Popen([sys.executable, "-I", "-S", "-c", _LAUNCHER, str(report),
                                  *argv], cwd=cwd, stdin=feed, stdout=subprocess.DEVNULL,
                                 stderr=err, env=env, start_new_session=timeout is not None,
                                 pass_fds=(report,))
        try:
            while True:
                pid, status, usage = os.wait4(child.pid, os.WNOHANG if timeout else 0)
                if pid:
                    break
                if timeout is not None and time.perf_counter() - start > timeout:
                    killed = True
                    os.killpg(child.pid, signal.SIGKILL)
                    _, status, usage = os.wait4(child.pid, 0)
                    err.write(f"timed out after {timeout:.0f} s".encode())
                    break
                time.sleep(0.05)
        except BaseException:
            # Ctrl-C no longer reaches a child in a session of its own: take it along
            if timeout is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(child.pid, signal.SIGKILL)
                with contextlib.suppress(ChildProcessError):
                    os.wait4(child.pid, 0)
            raise
        err.seek(0)
        tail = err.read().decode(errors="replace")[-2000:]
    return status, usage, killed, tail


def fwc_command() -> list[str]:
    return [sys.executable, "-m", "fwc"]


def machine() -> dict[str, str]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    except OSError:
        pass
    return {"nproc": str(os.cpu_count()), "cpu": model, "memory": mem,
            "python": platform.python_version(), "kernel": platform.release()}


def timed_fwc_package() -> str:
    """The directory of the fwc package that a timed `python3 -m fwc` process imports
    outside this checkout (the edit, diff and import loops run in work folders, the
    others in the caller's directory): the installed one, or PYTHONPATH's ("" when there
    is none; "namespace" when `fwc` is only a directory, as a stale editable install
    pointing to a removed tree leaves it)."""
    with tempfile.TemporaryDirectory(prefix="fwc-bench-where-") as neutral:
        try:
            where = subprocess.run([sys.executable, "-c", "import fwc, os; print("
                                    "os.path.dirname(fwc.__file__) if fwc.__file__ else "
                                    "'namespace')"], cwd=neutral, capture_output=True,
                                   text=True, check=False, timeout=60)
        except subprocess.TimeoutExpired:
            return ""
    return where.stdout.strip() if where.returncode == 0 else ""


def byte_compile_fwc() -> str:
    """Compile to bytecode this checkout's fwc package, which the timed processes import
    (`main` makes sure), before anything is timed: an installed fwc is (pip compiles a
    wheel's modules when it installs them), while a checkout run with
    PYTHONDONTWRITEBYTECODE=1 (as on the machines this project runs on) compiles every
    module again in every process: 0.35 s more for `fwc check` of a small policy, about
    5 % of a 20,000-rule compile (docs/performance.md)."""
    import compileall

    package = REPO / "fwc"
    done = compileall.compile_dir(package, quiet=1)
    return f"{package} byte-compiled" + ("" if done else " in part (some files not writable)")


def foreign_fwc() -> str | None:
    """Why the timed `python3 -m fwc` processes would not run this checkout's fwc, or
    None when they would (`timed_fwc_package`)."""
    timed = timed_fwc_package()
    if timed and os.path.realpath(timed) == os.path.realpath(REPO / "fwc"):
        return None
    found = {"": "no fwc", "namespace": "only a directory named fwc (a stale install?)"}.get(
        timed, timed)
    return (f"`python3 -m fwc` outside this checkout imports {found}, not {REPO / 'fwc'}: "
            "run `python3 -m pip install -e .` here first, so that what is timed is this code")


def startup() -> tuple[float, float]:
    """`fwc --version`: best and median of 7 runs, via the interpreter (no shim)."""
    times = [timed([*fwc_command(), "--version"]).seconds for _ in range(7)]
    return min(times), statistics.median(times)


def output_stats(out: Path) -> tuple[int, float, int]:
    member = next(iter(sorted((out / "bench").glob("fw1"))), None)
    if member is None:
        return 0, 0.0, 0
    rules = member / "iptables.rules"
    lines = sum(1 for line in rules.read_text().splitlines() if line.startswith("-A"))
    size = sum(f.stat().st_size for f in member.iterdir()) / 1024
    sets_file = member / "ipsets.rules"
    sets = sum(1 for line in sets_file.read_text().splitlines()
               if line.startswith("create ") and not line.split()[1].endswith(".new")) \
        if sets_file.exists() else 0
    return lines, size, sets


def restore_test(out: Path) -> tuple[float | None, float | None, float | None, str]:
    """fw1's files in a throwaway network namespace: `ipset restore`, then
    `iptables-restore --test`, then the real load (what a node does at boot or reload).
    Returns (test s, ipset s, load s, note)."""
    if os.geteuid() != 0:
        return None, None, None, "skipped: not root"
    for tool in ("ip", "iptables-restore"):
        if shutil.which(tool) is None:
            return None, None, None, f"skipped: no {tool}"
    member = out / "bench" / "fw1"
    namespace = f"fwcbench{os.getpid()}"
    if subprocess.run(["ip", "netns", "add", namespace], capture_output=True).returncode:
        return None, None, None, "skipped: cannot create a network namespace"
    try:
        ipset_seconds = None
        sets = member / "ipsets.rules"
        if sets.exists():
            if shutil.which("ipset") is None:
                return None, None, None, "skipped: no ipset"
            got = timed(["ip", "netns", "exec", namespace, "ipset", "restore"], stdin=sets)
            if got.returncode:
                return None, None, None, f"ipset restore failed: {got.stderr.strip()[:200]}"
            ipset_seconds = got.seconds
        got = timed(["ip", "netns", "exec", namespace, "iptables-restore", "--test"],
                    stdin=member / "iptables.rules")
        if got.returncode:
            return None, ipset_seconds, None, \
                f"iptables-restore failed: {got.stderr.strip()[:200]}"
        loaded = timed(["ip", "netns", "exec", namespace, "iptables-restore"],
                       stdin=member / "iptables.rules")
        return got.seconds, ipset_seconds, loaded.seconds if loaded.returncode == 0 else None, \
            "" if loaded.returncode == 0 else f"load failed: {loaded.stderr.strip()[:200]}"
    finally:
        # Deleting the namespace drops its rules and sets with it.
        subprocess.run(["ip", "netns", "del", namespace], capture_output=True)


BACKENDS = ("iptables", "nftables")
# A load slower than this is reported as such, not waited for (the kernel's time for
# anonymous sets grows with their square: see docs/performance.md).
LOAD_TIMEOUT = 600.0


@dataclass
class BackendRow:
    shape: str
    rules: int
    backend: str
    compile: Run | None = None
    lines: int = 0  # fw1: -A lines, or nft rules
    named_sets: int = 0  # ipsets, or nft named sets
    anonymous_sets: int = 0  # nft only: `{ ... }` inside a rule, one kernel set each
    load: float | None = None
    note: str = ""


def nft_counts(text: str) -> tuple[int, int, int]:
    """(rules, named sets, anonymous sets) of an nftables.nft file. A map is a set to
    the kernel (found by name alike) and counts as one; a set's elements are no rules."""
    rules = named = anonymous = 0
    for line in text.splitlines():
        if line.startswith(("\tset ", "\tmap ")):
            named += 1
        elif line.startswith("\t\t") and not line.startswith("\t\t\t") and \
                " comment " in line:
            rules += 1
            anonymous += line.count("{ ")
    return rules, named, anonymous


def load_output(member: Path, backend: str) -> tuple[float | None, str]:
    """Seconds to load MEMBER's ruleset files into a fresh namespace (None: see the note)."""
    if os.geteuid() != 0:
        return None, "skipped: not root"
    steps: list[tuple[list[str], Path]] = []
    if backend == "nftables":
        steps.append((["nft", "-f", "-"], member / "nftables.nft"))
    else:
        if (member / "ipsets.rules").exists():
            steps.append((["ipset", "restore"], member / "ipsets.rules"))
        steps.append((["iptables-restore"], member / "iptables.rules"))
        if (member / "ip6tables.rules").exists():
            steps.append((["ip6tables-restore"], member / "ip6tables.rules"))
    missing = [argv[0] for argv, _ in steps if shutil.which(argv[0]) is None]
    if missing or shutil.which("ip") is None:
        return None, f"skipped: no {', '.join(missing) or 'ip'}"
    namespace = f"fwcbenchb{os.getpid()}"
    if subprocess.run(["ip", "netns", "add", namespace], capture_output=True).returncode:
        return None, "skipped: cannot create a network namespace"
    try:
        total = 0.0
        for argv, path in steps:
            got = timed(["ip", "netns", "exec", namespace, *argv], stdin=path,
                        timeout=LOAD_TIMEOUT)
            if got.returncode:
                return None, f"{argv[0]} failed: {got.stderr.strip()[:200]}"
            total += got.seconds
        return total, ""
    finally:
        subprocess.run(["ip", "netns", "del", namespace], capture_output=True)


def run_backends(shapes: list[str], size: int, work: Path) -> list[BackendRow]:
    rows: list[BackendRow] = []
    for shape in shapes:
        folder = work / "backends" / shape
        folder.mkdir(parents=True, exist_ok=True)
        policy = folder / "bench.fw"
        policy.write_text(fwc_policy(build_site(size, shape=shape)), encoding="utf-8")
        for backend in BACKENDS:
            row = BackendRow(shape, size, backend)
            out = folder / backend
            # the work itself: a second run of the same code would answer from the cache
            row.compile = timed([*fwc_command(), "compile", str(policy), "-o", str(out),
                                 "--backend", backend], env=dict(os.environ, FWC_NO_CACHE="1"))
            member = out / "bench" / "fw1"
            if row.compile.returncode:
                row.note = f"compile failed: {row.compile.stderr.strip()[-200:]}"
            elif backend == "nftables":
                row.lines, row.named_sets, row.anonymous_sets = nft_counts(
                    (member / "nftables.nft").read_text())
            else:
                row.lines, _, row.named_sets = output_stats(out)
            if not row.compile.returncode:
                row.load, row.note = load_output(member, backend)
            rows.append(row)
            print(f"  {shape} {backend} done (load {load()})", file=sys.stderr)
    return rows


def backend_table(rows: list[BackendRow]) -> str:
    head = ["shape", "rules", "backend", "compile s", "compile MB", "fw1 rules",
            "named sets", "anonymous sets", "load s (fresh namespace)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        lines.append("| " + " | ".join([
            r.shape, str(r.rules), r.backend,
            fmt(r.compile.seconds) if r.compile else "-",
            fmt(r.compile.peak_mb, 0) if r.compile else "-",
            str(r.lines), str(r.named_sets),
            str(r.anonymous_sets) if r.backend == "nftables" else "-",
            fmt(r.load) if r.load is not None else (r.note or "-")]) + " |")
    return "\n".join(lines)


def aclgen_available() -> bool:
    return shutil.which("aclgen") is not None


# Aerleon on the groups shape ran for more than 9 minutes at 20,000 rules (4.5 GB):
# past this limit it is stopped and its cell says "> LIMIT", the ratio a lower bound.
ACLGEN_TIMEOUT = 600.0


def run_aclgen(root: Path, timeout: float = ACLGEN_TIMEOUT) -> Run:
    (root / "out").mkdir(exist_ok=True)
    return timed(["aclgen", "--base_directory", "policies", "--definitions_directory", "def",
                  "--output_directory", "out"], cwd=root, timeout=timeout)



def traversal(policy: Path, sample: int) -> dict[str, float]:
    """Average kernel rules tested by sampled new connections on fw1, IPv4."""
    from fwc.analysis.evaluate import Evaluator, corner_packets
    from fwc.analysis.nftread import evaluations
    from fwc.backend.arrange import arrange
    from fwc.backend.ipsets import set_contents, use_ipsets
    from fwc.backend.lower import Chain, NodeRuleset, Table, lower
    from fwc.backend.lower.ruleset import rendered_lines
    from fwc.pipeline import analyse

    analysis = analyse(policy, run_checks=False)
    assert analysis.policy is not None
    cluster = analysis.policy.clusters[0]
    member = cluster.members[0]
    flat = lower(cluster, member, 4)
    with_sets, sets = use_ipsets(flat)
    arranged = arrange(with_sets, {link.device: link.interface for link in member.links})
    contents = set_contents(sets)
    # Packets aimed at a random sample of FORWARD rules (their corners and neighbours):
    # connections that the policy is about, not random noise that all hits the last rule.
    rng = random.Random(7)
    table = flat.table("filter")
    assert table is not None
    forward = table.chain("FORWARD")
    assert forward is not None
    picked = tuple(sorted(rng.sample(range(len(forward.rules)),
                                     min(len(forward.rules), sample))))
    reduced = NodeRuleset(flat.cluster, flat.member, flat.family, (
        Table("filter", (Chain("FORWARD", "DROP", tuple(forward.rules[i] for i in picked)),)),))
    packets = [p for p in corner_packets(reduced) if p.ctstate == "NEW" and p.syn]
    packets = rng.sample(packets, min(len(packets), sample))
    out: dict[str, float] = {"packets": float(len(packets))}
    # Kernel rules of the flat FORWARD chain (a rule with address lists is one line per
    # source x destination CIDR): the arranged worst case is judged against it.
    out["flat rules"] = float(_kernel_rules(forward.rules))
    sets_table = with_sets.table("filter")
    assert sets_table is not None
    sets_forward = sets_table.chain("FORWARD")
    assert sets_forward is not None
    out["ipsets rules"] = float(_kernel_rules(sets_forward.rules))
    meanings: dict[str, list[object]] = {}
    for name, ruleset, known in (("flat", flat, {}), ("ipsets", with_sets, contents),
                                 ("arranged", arranged, contents)):
        evaluator = Evaluator(ruleset, known)
        decisions = [evaluator.decide(p) for p in packets]
        out[name] = sum(d.traversed for d in decisions) / len(packets)
        out[f"{name} worst"] = float(max(d.traversed for d in decisions))
        meanings[name] = [d.meaning for d in decisions]
    out["flat list"] = float(sum(rendered_lines(r.match) for _, _, r in flat.rules()))
    # nftables: fw1's nftables.nft read back, a map or set lookup counting as one rule
    nft = nft_rules(cluster, member)
    worst, mean = evaluations(nft, 4, packets)
    out["nftables"], out["nftables worst"] = mean, float(worst)
    nft_eval = nft.evaluator(4)
    meanings["nftables"] = [nft_eval.decide(p).meaning for p in packets]
    out["accepted"] = float(sum(1 for m in meanings["flat"] if "ACCEPT" in str(m)))
    # The same packets double as a check at scale: fwc's output must decide like flat.
    out["mismatches"] = float(sum(
        1 for f, s, a, n in zip(meanings["flat"], meanings["ipsets"], meanings["arranged"],
                                meanings["nftables"], strict=True) if not f == s == a == n))
    return out


def nft_rules(cluster: object, member: object) -> object:
    """The member's nftables.nft as `fwc compile --backend nftables` writes it, read back."""
    from fwc.analysis.nftread import read
    from fwc.backend.lower import LowerOptions
    from fwc.backend.render import nftables
    from fwc.backend.render.context import MemberBuild
    from fwc.model.vocabulary import Backend

    build = MemberBuild(cluster, member, LowerOptions(), backend=Backend.NFTABLES)  # type: ignore[arg-type]
    rulesets, sets = build.optimised(clip_ports=True)
    return read(nftables.render([rulesets[f] for f in build.families], "bench", sets))


def _kernel_rules(rules: object) -> int:
    """iptables rules of a chain: one per source x destination CIDR (a set is one)."""
    return sum(max(1, len(r.match.source.cidrs)) * max(1, len(r.match.destination.cidrs))
               for r in rules)  # type: ignore[attr-defined]


def pass_run(policy: Path, backend: str | None = None) -> dict[str, object] | None:
    argv = [sys.executable, "-m", "bench.passes", str(policy), *([backend] if backend else [])]
    got = subprocess.run(argv, cwd=REPO, capture_output=True, text=True)
    if got.returncode:
        print(f"{policy}: bench.passes failed:\n{got.stderr[-2000:]}", file=sys.stderr)
        return None
    return json.loads(got.stdout)


def pass_medians(runs: list[dict[str, object]]) -> dict[str, tuple[float, float, float]]:
    """pass -> (median CPU s, median wall s, median peak MB at its end)."""
    out: dict[str, tuple[float, float, float]] = {}
    names = list(runs[0]["passes"])  # type: ignore[arg-type]
    for name in names:
        values = [r["passes"][name] for r in runs]  # type: ignore[index]
        out[name] = (statistics.median(v["cpu"] for v in values),
                     statistics.median(v["wall"] for v in values),
                     statistics.median(v["peak_mb"] for v in values))
    return out


def pass_minima(runs: list[dict[str, object]]) -> dict[str, tuple[float, float, float]]:
    """pass -> (minimum CPU s, 0, 0): the figure the growth verdict judges."""
    names = list(runs[0]["passes"])  # type: ignore[arg-type]
    return {name: (min(r["passes"][name]["cpu"] for r in runs), 0.0, 0.0)  # type: ignore[index]
            for name in names}


def growth_findings(shape: str, times: dict[int, dict[str, tuple[float, float, float]]]) \
        -> list[tuple[int, int, str, str]]:
    """(smaller size, larger size, pass, message) for every pass that grew too fast."""
    failures: list[tuple[int, int, str, str]] = []
    sizes = sorted(times)
    for small, large in zip(sizes, sizes[1:], strict=False):
        allowed = GROWTH_PER_DOUBLING ** math.log2(large / small)
        for name, (cpu, _, _) in times[large].items():
            before = times[small].get(name, (0.0, 0.0, 0.0))[0]
            if cpu < MIN_JUDGED:
                continue
            grew = cpu / max(before, 1e-3)
            if grew > allowed:
                failures.append((small, large, name,
                                 f"{shape}: {name} grew {grew:.1f}x from {small} to {large} "
                                 f"rules ({before:.2f} -> {cpu:.2f} s CPU; allowed "
                                 f"{allowed:.1f}x)"))
    return failures


def pass_table(shape: str, medians: dict[int, dict[str, tuple[float, float, float]]],
               totals: dict[int, tuple[float, float]]) -> str:
    sizes = sorted(medians)
    names = list(medians[sizes[0]])
    head = ["pass"] + [f"{size} s" for size in sizes] + [f"{size} MB" for size in sizes]
    lines = [f"shape {shape}: median CPU seconds of each pass, and peak RSS (MB) when it "
             "ended", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name in names:
        cells = [name] + [fmt(medians[s].get(name, (0.0,) * 3)[0]) for s in sizes] \
            + [fmt(medians[s].get(name, (0.0,) * 3)[2], 0) for s in sizes]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("| total (wall s / peak MB) | "
                 + " | ".join(fmt(totals[s][0]) for s in sizes) + " | "
                 + " | ".join(fmt(totals[s][1], 0) for s in sizes) + " |")
    return "\n".join(lines)


def run_passes(shapes: list[str], sizes: tuple[int, ...], repeat: int, work: Path,
               confirm: int = CONFIRM_RUNS, backend: str | None = None) -> int:
    """The per-pass table of every shape and its growth verdict (1: a pass grew too
    fast); BACKEND: the files built for it (`fwc compile --backend`), else the policy's."""
    failures: list[str] = []
    if backend:
        print(f"backend: {backend} (render: the {backend} files)")
        print()
    for shape in shapes:
        medians: dict[int, dict[str, tuple[float, float, float]]] = {}
        totals: dict[int, tuple[float, float]] = {}
        all_runs: dict[int, list[dict[str, object]]] = {}
        policies: dict[int, Path] = {}
        for size in sizes:
            folder = work / shape / str(size)
            folder.mkdir(parents=True, exist_ok=True)
            policy = policies[size] = folder / "bench.fw"
            policy.write_text(fwc_policy(build_site(size, shape=shape)), encoding="utf-8")
            runs = [r for r in (pass_run(policy, backend) for _ in range(repeat))
                    if r is not None]
            if len(runs) != repeat:
                failures.append(f"{shape}: {size} rules did not compile")
                break
            all_runs[size] = runs
            medians[size] = pass_medians(runs)
            totals[size] = (statistics.median(sum(p["wall"] for p in r["passes"].values())
                                              for r in runs),  # type: ignore[union-attr]
                            statistics.median(r["peak_mb"] for r in runs))  # type: ignore[misc]
            print(f"  {shape} {size} rules done (load {load()})", file=sys.stderr)
        if medians:
            print(pass_table(shape, medians, totals))
            print()
            failures.extend(confirmed_failures(shape, all_runs, policies, confirm, backend))
    for failure in failures:
        print(f"FAIL: {failure}")
    if not failures:
        print(f"every pass grew at most {GROWTH_PER_DOUBLING}x per doubling of the rules")
    return 1 if failures else 0


def confirmed_failures(shape: str, runs: dict[int, list[dict[str, object]]],
                       policies: dict[int, Path], confirm: int,
                       backend: str | None = None) -> list[str]:
    """The growth failures that persist when both sizes are measured again, interleaved
    (CONFIRM runs each; every run is kept in RUNS).

    Judged on the pairs of runs again alone, by the median of their ratios (larger run's
    CPU / the smaller run's just before it): the machine's speed drifts over minutes (by
    1.6x from one day to the next), and a minimum of each size let one lucky run of the
    smaller size decide (groups' render, 50,000 -> 100,000 rules: 1.18 -> 2.80 s CPU,
    where three interleaved pairs measured 1.56-1.74 -> 2.79-3.20 s)."""
    suspects = growth_findings(shape, {size: pass_minima(r) for size, r in runs.items()})
    pairs = sorted({(small, large) for small, large, _, _ in suspects})
    if not pairs or confirm <= 0:
        return [text for _, _, _, text in suspects]
    confirmed: list[str] = []
    for small, large in pairs:
        print(f"  {shape}: measuring {small} and {large} rules again ({confirm} runs each, "
              f"load {load()})", file=sys.stderr)
        fresh: list[tuple[dict[str, object], dict[str, object]]] = []
        for _ in range(confirm):
            got = {size: pass_run(policies[size], backend) for size in (small, large)}
            for size, run in got.items():
                if run is not None:
                    runs[size].append(run)
            if got[small] is None or got[large] is None:
                confirmed.append(f"{shape}: {small} or {large} rules did not compile when "
                                 "measured again")
                break
            fresh.append((got[small], got[large]))
        else:
            names = {name for low, high, name, _ in suspects if (low, high) == (small, large)}
            confirmed.extend(paired_growth(shape, small, large, fresh, names))
    return confirmed


def paired_growth(shape: str, small: int, large: int,
                  pairs: list[tuple[dict[str, object], dict[str, object]]],
                  names: set[str]) -> list[str]:
    """The passes of NAMES whose median ratio over PAIRS (a run of SMALL rules, the run of
    LARGE rules after it) is above the allowed growth."""
    allowed = GROWTH_PER_DOUBLING ** math.log2(large / small)
    out: list[str] = []
    for name in sorted(names):
        before = [float(a["passes"][name]["cpu"]) for a, _ in pairs]  # type: ignore[index]
        after = [float(b["passes"][name]["cpu"]) for _, b in pairs]  # type: ignore[index]
        if min(after) < MIN_JUDGED:  # as growth_findings: too small to judge
            continue
        grew = statistics.median(b / max(a, 1e-3) for a, b in zip(before, after, strict=True))
        if grew > allowed:
            out.append(f"{shape}: {name} grew {grew:.1f}x from {small} to {large} rules "
                       f"(median of {len(pairs)} interleaved pairs; CPU s "
                       f"{', '.join(f'{a:.2f}' for a in before)} -> "
                       f"{', '.join(f'{b:.2f}' for b in after)}; allowed {allowed:.1f}x"
                       f"{_user_part(pairs, name)})")
    return out


def _user_part(pairs: list[tuple[dict[str, object], dict[str, object]]], name: str) -> str:
    """The user part of a failing pass's CPU seconds (system = the kernel's share: page
    faults and the page cache, which the machine's free memory decides too), when the
    runs recorded it."""
    try:
        before = [float(a["passes"][name]["user"]) for a, _ in pairs]  # type: ignore[index]
        after = [float(b["passes"][name]["user"]) for _, b in pairs]  # type: ignore[index]
    except KeyError:
        return ""
    grew = statistics.median(b / max(a, 1e-3) for a, b in zip(before, after, strict=True))
    return (f"; of it user CPU s {', '.join(f'{a:.2f}' for a in before)} -> "
            f"{', '.join(f'{b:.2f}' for b in after)}, {grew:.1f}x")


EDIT_STEPS = (
    ("compile --no-cache", "compile", ["--no-cache"], False),
    ("compile, empty cache", "compile", [], False),
    ("compile, unchanged", "compile", [], False),
    # the cache records the files, it holds no copy: another directory is compiled in full
    ("compile, unchanged, to another directory", "compile", ["-o", "elsewhere"], False),
    ("compile after a one-line edit", "compile", [], True),
    ("check after that compile", "check", [], False),
    ("check after a one-line edit", "check", [], True),
    ("compile after that check", "compile", [], False),
)


def one_line_edit(text: str, nth: int) -> str:
    """The policy with one rule's service changed: its NTH accept rule with one service
    from the middle of the policy block names the service of the rule after it."""
    lines = text.split("\n")
    start = next(i for i, line in enumerate(lines) if line.startswith("policy "))
    candidates = [i for i in range(start + 1, len(lines))
                  if lines[i].strip().startswith("accept from ") and " service svc" in lines[i]
                  and "," not in lines[i].split(" service ", 1)[1]]
    where = candidates[len(candidates) // 2 + nth]
    word = lines[where].split(" service ", 1)[1].split()[0]
    other = next(lines[i].split(" service ", 1)[1].split()[0] for i in candidates
                 if i > where and lines[i].split(" service ", 1)[1].split()[0] != word)
    lines[where] = lines[where].replace(f" service {word}", f" service {other}", 1)
    return "\n".join(lines)


def run_edits(shapes: list[str], sizes: tuple[int, ...], repeat: int, work: Path) -> int:
    """The edit loop through the result cache: whole `fwc` processes in a private cache
    directory, each step's median wall and CPU time; output byte-identical to --no-cache."""
    failures: list[str] = []
    print("one-line edit (whole processes; median of "
          f"{repeat}; wall s / CPU s / peak MB)")
    print()
    head = ["shape", "rules"] + [name for name, _, _, _ in EDIT_STEPS] + ["same bytes"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for shape in shapes:
        for size in sizes:
            results: dict[str, list[Run]] = {name: [] for name, _, _, _ in EDIT_STEPS}
            same = True
            original = fwc_policy(build_site(size, shape=shape))  # seeded: one text per size
            for attempt in range(repeat):
                folder = work / "edit" / shape / str(size) / str(attempt)
                folder.mkdir(parents=True, exist_ok=True)
                for left in ("out", "elsewhere", "fresh"):  # a kept folder of an earlier run
                    shutil.rmtree(folder / left, ignore_errors=True)
                # Never in the shared temporary directory (fwc refuses a cache there).
                cache_home = Path.home() / ".cache" / f"fwc-bench-{os.getpid()}-{attempt}"
                shutil.rmtree(cache_home, ignore_errors=True)
                cache_home.mkdir(mode=0o700, parents=True)
                env = dict(os.environ, XDG_CACHE_HOME=str(cache_home))
                env.pop("FWC_NO_CACHE", None)
                policy = folder / "bench.fw"
                text = original
                policy.write_text(text, encoding="utf-8")
                edits = 0
                for name, command, extra, edit in EDIT_STEPS:
                    if edit:
                        text = one_line_edit(text, edits)
                        edits += 1
                        policy.write_text(text, encoding="utf-8")
                    argv = [*fwc_command(), command, "bench.fw"]
                    if command == "compile":
                        argv += ["-o", "out"]  # a step's own -o (in EXTRA) comes last
                    argv += extra
                    got = timed(argv, cwd=folder, env=env)
                    if got.returncode:
                        failures.append(f"{shape} {size}: {name} failed: {got.stderr[-300:]}")
                    results[name].append(got)
                fresh = timed([*fwc_command(), "compile", "bench.fw", "--no-cache", "-o",
                               "fresh"], cwd=folder, env=env)
                same = same and fresh.returncode == 0 and trees_equal(folder / "out",
                                                                     folder / "fresh")
                shutil.rmtree(cache_home, ignore_errors=True)
                print(f"  {shape} {size} edit run {attempt + 1} done (load {load()})",
                      file=sys.stderr)
            if not same:
                failures.append(f"{shape} {size}: the cached compile differs from --no-cache")
            cells = [shape, str(size)]
            for name, _, _, _ in EDIT_STEPS:
                runs = results[name]
                cells.append(f"{statistics.median(r.seconds for r in runs):.2f} / "
                             f"{statistics.median(r.cpu for r in runs):.2f} / "
                             f"{statistics.median(r.peak_mb for r in runs):.0f}")
            cells.append("yes" if same else "NO")
            print("| " + " | ".join(cells) + " |")
    print()
    for failure in failures:
        print(f"FAIL: {failure}")
    return 1 if failures else 0


def inserted_rule(text: str) -> str:
    """The policy with one rule inserted in the middle of its policy block (a copy of the
    accept rule there, which makes that one redundant: a warning, no error): every later
    rule's file:line comment moves, the whole patch's worst case."""
    lines = text.split("\n")
    start = next(i for i, line in enumerate(lines) if line.startswith("policy "))
    rules = [i for i in range(start + 1, len(lines))
             if lines[i].strip().startswith("accept from ")]
    where = rules[len(rules) // 2]
    lines.insert(where, lines[where])
    return "\n".join(lines)


DIFF_EDITS = (
    ("one rule's service changed", lambda text: one_line_edit(text, 0)),
    ("one rule inserted", inserted_rule),
)


def run_diffs(shapes: list[str], sizes: tuple[int, ...], repeat: int, work: Path) -> int:
    """`fwc diff` of an edited working tree against the commit before it (whole processes,
    median of REPEAT; wall s / CPU s of both processes / peak MB of the first process
    only: a worker's own pages are not in it), next to `fwc compile --no-cache` of the
    edited policy. Exit 1 unless every compile succeeds and every diff reports a change
    (exit status 1, as `git diff --exit-code`)."""
    failures: list[str] = []
    print(f"fwc diff after an edit (whole processes; median of {repeat}; "
          "wall s / CPU s / peak MB of the first process)")
    print()
    head = ["shape", "rules", "compile --no-cache"] + [f"diff: {name}" for name, _ in DIFF_EDITS]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    env = dict(os.environ, FWC_NO_CACHE="1", GIT_CONFIG_NOSYSTEM="1",
               GIT_CONFIG_GLOBAL=os.devnull,  # (a user's commit.gpgsign, hooks: not here)
               GIT_AUTHOR_NAME="bench", GIT_AUTHOR_EMAIL="bench@example.org",
               GIT_COMMITTER_NAME="bench", GIT_COMMITTER_EMAIL="bench@example.org")
    for shape in shapes:
        for size in sizes:
            original = fwc_policy(build_site(size, shape=shape))
            cells = [shape, str(size)]
            columns: list[list[Run]] = [[] for _ in range(len(DIFF_EDITS) + 1)]
            for attempt in range(repeat):
                for index, (name, edit) in enumerate(DIFF_EDITS):
                    folder = work / "diff" / shape / str(size) / f"{attempt}-{index}"
                    folder.mkdir(parents=True, exist_ok=True)
                    (folder / "bench.fw").write_text(original, encoding="utf-8")
                    for argv in (["init", "-q"], ["add", "bench.fw"],
                                 ["commit", "-q", "-m", "bench"]):
                        subprocess.run(["git", *argv], cwd=folder, env=env, check=True,
                                       capture_output=True)
                    (folder / "bench.fw").write_text(edit(original), encoding="utf-8")
                    if index == 0:
                        compiled = timed([*fwc_command(), "compile", "bench.fw", "-o", "out"],
                                         cwd=folder, env=env)
                        if compiled.returncode:
                            failures.append(f"{shape} {size}: compile exited "
                                            f"{compiled.returncode}: {compiled.stderr[-300:]}")
                        columns[0].append(compiled)
                    got = timed([*fwc_command(), "diff", "--no-color", "bench.fw"],
                                cwd=folder, env=env)
                    if got.returncode != 1:
                        failures.append(f"{shape} {size}: diff ({name}) exited "
                                        f"{got.returncode}: {got.stderr[-300:]}")
                    columns[index + 1].append(got)
                    shutil.rmtree(folder, ignore_errors=True)
                print(f"  {shape} {size} diff run {attempt + 1} done (load {load()})",
                      file=sys.stderr)
            for runs in columns:
                cells.append(f"{statistics.median(r.seconds for r in runs):.2f} / "
                             f"{statistics.median(r.cpu for r in runs):.2f} / "
                             f"{statistics.median(r.peak_mb for r in runs):.0f}")
            print("| " + " | ".join(cells) + " |")
    print()
    for failure in failures:
        print(f"FAIL: {failure}")
    return 1 if failures else 0


def run_imports(shapes: list[str], sizes: tuple[int, ...], repeat: int, work: Path) -> int:
    """`fwc import iptables-save` of member fw1's compiled `iptables.rules` (whole
    processes, median of REPEAT; wall s / CPU s / peak MB, and wall ms per 1,000 input
    lines, which stays flat when the import is linear). fwc's own output is a hard
    input: thousands of chains, every rule quoted, most rules kept as comments (ipset
    matches). Exit 1 unless every compile and import succeeds."""
    failures: list[str] = []
    print(f"fwc import iptables-save of fw1's iptables.rules (whole processes; median of "
          f"{repeat})")
    print()
    print("| shape | rules | input lines | import wall s / CPU s / peak MB | ms per 1,000 lines |")
    print("|---|---|---|---|---|")
    env = dict(os.environ, FWC_NO_CACHE="1")
    for shape in shapes:
        for size in sizes:
            folder = work / "import" / shape / str(size)
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "bench.fw").write_text(fwc_policy(build_site(size, shape=shape)),
                                             encoding="utf-8")
            compiled = timed([*fwc_command(), "compile", "bench.fw", "-o", "out"],
                             cwd=folder, env=env)
            rules = folder / "out" / "bench" / "fw1" / "iptables.rules"
            if compiled.returncode or not rules.is_file():
                failures.append(f"{shape} {size}: compile exited {compiled.returncode}: "
                                f"{compiled.stderr[-300:]}")
                continue
            lines = rules.read_bytes().count(b"\n")
            runs: list[Run] = []
            for _ in range(repeat):
                got = timed([*fwc_command(), "import", "iptables-save", str(rules), "-o",
                             "imported.fw"], cwd=folder, env=env)
                if got.returncode:
                    failures.append(f"{shape} {size}: import exited {got.returncode}: "
                                    f"{got.stderr[-300:]}")
                runs.append(got)
            wall = statistics.median(r.seconds for r in runs)
            print(f"| {shape} | {size} | {lines} | {wall:.2f} / "
                  f"{statistics.median(r.cpu for r in runs):.2f} / "
                  f"{statistics.median(r.peak_mb for r in runs):.0f} | "
                  f"{1000 * wall / max(lines, 1) * 1000:.1f} |")
            shutil.rmtree(folder, ignore_errors=True)
            print(f"  {shape} {size} import done (load {load()})", file=sys.stderr)
    print()
    for failure in failures:
        print(f"FAIL: {failure}")
    return 1 if failures else 0


def trees_equal(a: Path, b: Path) -> bool:
    """Same files with the same bytes and modes below A and B."""
    def listing(root: Path) -> dict[str, tuple[bytes, int]]:
        return {str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mode)
                for p in sorted(root.rglob("*")) if p.is_file()}
    return listing(a) == listing(b)


def load() -> str:
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "?"


def fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def table(rows: list[Row], with_aclgen: bool) -> str:
    head = ["shape", "rules", "check s", "check CPU s", "check MB", "compile s",
            "compile CPU s", "compile MB", "check / compile (CPU)", "fw1 -A lines", "fw1 KB",
            "ipsets", "ipset restore s",
            "iptables-restore --test s", "iptables-restore (load) s"]
    if with_aclgen:
        head += ["aclgen s", "aclgen CPU s", "aclgen MB", "aclgen / fwc compile (wall)",
                 "(CPU)"]
    head += ["rules tested: flat", "with ipsets", "arranged mean", "arranged worst",
             "nftables mean", "nftables worst",
             "FORWARD rules: flat", "with ipsets", "worst / FORWARD rules with ipsets"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r.shape, str(r.rules),
                 fmt(r.check.seconds) if r.check else "-",
                 fmt(r.check.cpu) if r.check else "-",
                 fmt(r.check.peak_mb, 0) if r.check else "-",
                 fmt(r.compile.seconds) if r.compile else "-",
                 fmt(r.compile.cpu) if r.compile else "-",
                 fmt(r.compile.peak_mb, 0) if r.compile else "-",
                 f"{100 * r.check.cpu / r.compile.cpu:.0f}%"
                 if r.check and r.compile and r.compile.cpu else "-",
                 str(r.iptables_lines), fmt(r.output_kb, 0), str(r.ipsets),
                 fmt(r.ipset_restore), fmt(r.restore_test) if r.restore_test is not None
                 else (r.restore_note or "-"),
                 fmt(r.restore_load) if r.restore_load is not None else (r.restore_note or "-")]
        if with_aclgen and r.aclgen is not None and r.aclgen.timed_out:
            # stopped at the limit: its time and the ratios are lower bounds
            cells += [f"> {r.aclgen.seconds:.0f}", f"> {r.aclgen.cpu:.0f}", "-",
                      f"> {r.aclgen.seconds / r.compile.seconds:.1f}x" if r.compile else "-",
                      f"> {r.aclgen.cpu / r.compile.cpu:.1f}x"
                      if r.compile and r.compile.cpu else "-"]
        elif with_aclgen:
            ok = r.aclgen is not None and r.aclgen.returncode == 0
            cells += [fmt(r.aclgen.seconds) if ok and r.aclgen else "failed",
                      fmt(r.aclgen.cpu) if ok and r.aclgen else "-",
                      fmt(r.aclgen.peak_mb, 0) if ok and r.aclgen else "-",
                      f"{r.aclgen.seconds / r.compile.seconds:.1f}x"
                      if ok and r.aclgen and r.compile else "-",
                      f"{r.aclgen.cpu / r.compile.cpu:.1f}x"
                      if ok and r.aclgen and r.compile and r.compile.cpu else "-"]
        t = r.traversal
        worst = t.get("arranged worst")
        set_rules = t.get("ipsets rules")
        cells += [fmt(t.get("flat"), 0), fmt(t.get("ipsets"), 0), fmt(t.get("arranged"), 1),
                  fmt(worst, 0), fmt(t.get("nftables"), 1), fmt(t.get("nftables worst"), 0),
                  fmt(t.get("flat rules"), 0), fmt(set_rules, 0),
                  f"{100 * worst / set_rules:.2f}%" if worst is not None and set_rules
                  else "-"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def whole_processes(shape: str, size: int, work: Path, with_aclgen: bool,
                    sample: int, aclgen_timeout: float = ACLGEN_TIMEOUT) -> Row:
    """One row of the whole-process table: check, compile, output, load, Aerleon, traversal."""
    row = Row(size, shape)
    site = build_site(size, shape=shape)
    folder = work / shape / str(size)
    folder.mkdir(parents=True, exist_ok=True)
    policy = folder / "bench.fw"
    policy.write_text(fwc_policy(site), encoding="utf-8")
    env = dict(os.environ, FWC_NO_CACHE="1")  # the work itself, not the result cache
    row.check = timed([*fwc_command(), "check", str(policy)], env=env)
    out = folder / "output"
    row.compile = timed([*fwc_command(), "compile", str(policy), "-o", str(out)], env=env)
    if row.compile.returncode:
        print(f"{shape} {size}: fwc compile failed:\n{row.compile.stderr}", file=sys.stderr)
    else:
        row.iptables_lines, row.output_kb, row.ipsets = output_stats(out)
        row.restore_test, row.ipset_restore, row.restore_load, row.restore_note = \
            restore_test(out)
    if with_aclgen:
        aerleon_root = folder / "aerleon"
        write_aerleon(site, aerleon_root)
        row.aclgen = run_aclgen(aerleon_root, aclgen_timeout)
        if row.aclgen.timed_out:
            print(f"{shape} {size}: aclgen stopped after {aclgen_timeout:.0f} s",
                  file=sys.stderr)
        elif row.aclgen.returncode:
            print(f"{shape} {size}: aclgen failed:\n{row.aclgen.stderr}", file=sys.stderr)
    if sample:
        row.traversal = traversal(policy, sample)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default=None,
                        help=f"comma-separated rule counts (default {DEFAULT_SIZES})")
    parser.add_argument("--quick", action="store_true",
                        help="1,000 rules only, small traversal sample, no Aerleon")
    parser.add_argument("--no-aerleon", action="store_true")
    parser.add_argument("--aclgen-timeout", type=float, default=ACLGEN_TIMEOUT,
                        metavar="SECONDS",
                        help="stop Aerleon after so many seconds per run; its time and "
                        "the ratio are then printed as lower bounds (default %(default).0f)")
    parser.add_argument("--no-traversal", action="store_true")
    parser.add_argument("--sample", type=int, default=TRAVERSAL_SAMPLE,
                        help="packets for the traversal average")
    parser.add_argument("--keep", metavar="DIR", help="keep generated policies and outputs")
    parser.add_argument("--shapes", default="site,groups,interfaces",
                        help="comma-separated shapes for the per-pass table "
                        f"(of {', '.join(SHAPES)})")
    parser.add_argument("--repeat", type=int, default=3,
                        help="runs per shape and size for the per-pass medians")
    parser.add_argument("--confirm", type=int, default=CONFIRM_RUNS,
                        help="runs of each size again, interleaved, before a pass that grew "
                        "too fast fails the verdict (0: judge the first runs)")
    parser.add_argument("--all-sizes", action="store_true",
                        help=f"sizes {', '.join(map(str, ALL_SIZES))}")
    parser.add_argument("--passes-only", action="store_true",
                        help="only the per-pass table and its scaling verdict")
    parser.add_argument("--passes-backend", choices=("iptables", "nftables"), default=None,
                        help="build the per-pass table's files for this backend (default: "
                        "the policy's own, iptables)")
    parser.add_argument("--no-passes", action="store_true",
                        help="only whole processes (the original table)")
    parser.add_argument("--no-backends", action="store_true",
                        help="without the per-backend compile and load table")
    parser.add_argument("--backends-only", action="store_true",
                        help="only the per-backend table (default size 20000)")
    parser.add_argument("--edit", action="store_true",
                        help="only the one-line edit loop through the result cache")
    parser.add_argument("--diff", action="store_true",
                        help="only `fwc diff` of an edited policy against its commit")
    parser.add_argument("--import", dest="import_", action="store_true",
                        help="only `fwc import iptables-save` of a compiled ruleset")
    args = parser.parse_args(argv)
    sizes = tuple(int(s) for s in args.sizes.split(",")) if args.sizes else \
        ALL_SIZES if args.all_sizes else ((1000,) if args.quick else DEFAULT_SIZES)
    if args.backends_only and not args.sizes:
        sizes = (DEFAULT_SIZES[-1],)
    shapes = [s for s in args.shapes.split(",") if s]
    unknown = [s for s in shapes if s not in SHAPES]
    if unknown:
        parser.error(f"unknown shape(s) {', '.join(unknown)}: use {', '.join(SHAPES)}")
    sample = min(args.sample, 100) if args.quick else args.sample
    with_aclgen = aclgen_available() and not args.no_aerleon and not args.quick
    info = machine()
    # (--passes-only runs `bench.passes` in this checkout, which imports its own fwc)
    refused = None if args.passes_only else foreign_fwc()
    if refused:
        print(f"bench: {refused}", file=sys.stderr)
        return 2
    print(f"fwc: {byte_compile_fwc()}")
    if args.backends_only:
        print(f"machine: {info['nproc']} cores, {info['cpu']}, Python {info['python']}, "
              f"kernel {info['kernel']}; load average at start: {load()}")
        work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="fwc-bench-"))
        try:
            print(backend_table(run_backends(shapes, max(sizes), work)))
        finally:
            if not args.keep:
                shutil.rmtree(work, ignore_errors=True)
        print(f"load average at end: {load()}")
        return 0
    if args.edit or args.diff or args.import_:
        print(f"machine: {info['nproc']} cores, {info['cpu']}, Python {info['python']}; "
              f"load average at start: {load()}")
        work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="fwc-bench-"))
        try:
            run = run_edits if args.edit else run_diffs if args.diff else run_imports
            verdict = run(shapes, sizes, args.repeat, work)
        finally:
            if not args.keep:
                shutil.rmtree(work, ignore_errors=True)
        print(f"load average at end: {load()}")
        return verdict
    if args.passes_only:
        print(f"machine: {info['nproc']} cores, {info['cpu']}, Python {info['python']}; "
              f"load average at start: {load()}")
        work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="fwc-bench-"))
        try:
            verdict = run_passes(shapes, sizes, args.repeat, work, args.confirm,
                                 args.passes_backend)
        finally:
            if not args.keep:
                shutil.rmtree(work, ignore_errors=True)
        print(f"load average at end: {load()}")
        return verdict
    print(f"machine: {info['nproc']} cores, {info['cpu']}, {info['memory']}, "
          f"Python {info['python']}, kernel {info['kernel']}")
    print(f"load average at start: {load()}")
    best, median = startup()
    print(f"fwc --version: best {best:.3f} s, median {median:.3f} s (target < 0.2 s)")
    if not with_aclgen:
        reason = "--quick" if args.quick else "--no-aerleon" if args.no_aerleon \
            else "not installed (pip install '.[bench]')"
        print(f"Aerleon: skipped ({reason})")
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="fwc-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    rows: list[Row] = []
    backend_rows: list[BackendRow] = []
    verdict = 0
    try:
        if not args.no_passes:
            verdict = run_passes(shapes, sizes, args.repeat, work / "passes",
                                 args.confirm, args.passes_backend)
        for shape in shapes:
            for size in sizes:
                rows.append(whole_processes(shape, size, work, with_aclgen,
                                            0 if args.no_traversal else sample,
                                            args.aclgen_timeout))
                print(f"  {shape} {size} rules done (load {load()})", file=sys.stderr)
        if not args.no_backends:
            backend_rows = run_backends(shapes, max(sizes), work)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print()
    print(table(rows, with_aclgen))
    print()
    if backend_rows:
        print(backend_table(backend_rows))
        print()
    if rows and rows[-1].traversal:
        print(f"rules tested: mean and worst over {int(rows[-1].traversal['packets'])} sampled "
              "new connections per shape and size (fw1, IPv4, aimed at random FORWARD rules; "
              "accepted: " + ", ".join(f"{int(r.traversal['accepted'])}" for r in rows
                                       if r.traversal)
              + "); decisions differing from the flat ruleset: "
              + ", ".join(f"{int(r.traversal['mismatches'])} at {r.shape} {r.rules}"
                          for r in rows if r.traversal))
    print(f"load average at end: {load()}")
    return verdict


if __name__ == "__main__":
    raise SystemExit(main())
