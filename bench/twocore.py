"""One process against two: `python3 -m bench.twocore [--repeat 3] [--command compile|check]
POLICY...` (or `--sizes 1000,2000 --shapes site` to generate the policies).

For each policy it runs `fwc COMMAND --no-cache --jobs J` with J = 1 (everything in one
process) and J = 2 (a worker process for the checks, fwc.parallel), interleaved, each
in a fresh Python process, and prints one markdown table: the median and minimum of
wall seconds, CPU seconds (user + system of the process and its worker), the CPU
seconds of the process alone (its critical path: on two otherwise idle cores the wall
time is about this, as long as the worker finishes first; on a loaded machine the
wall time says little), the peak RSS
of the process and of its worker (MB; their sum is an upper bound of what both held at
once: the pages they share since the fork count twice) and the worker's private memory
when its checks are done (what it added: /proc/self/smaps_rollup Private_*), with the
load average before and after. The outputs of both settings are compared (every
file's SHA-256, the printed diagnostics and report, the exit status): a table is only
printed for settings that agree.

Each run is `python3 -m bench.twocore --one COMMAND POLICY JOBS OUT` (this file): it
calls `fwc.cli.main` in-process and reads its own and its reaped children's rusage.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def _private_mb() -> float:
    """This process's private memory (not shared with its parent), MB."""
    total = 0
    with open("/proc/self/smaps_rollup", encoding="ascii") as stream:
        for line in stream:
            if line.startswith(("Private_Clean:", "Private_Dirty:")):
                total += int(line.split()[1])
    return total / 1024


def _measuring_workers(into: Path) -> None:
    """Every worker writes its private memory to INTO when its task is done."""
    from fwc import parallel

    start = parallel.Worker.start.__func__  # type: ignore[attr-defined]

    def measured(cls: type[parallel.Worker], task: Any) -> parallel.Worker:
        def run() -> Any:
            value = task()
            into.write_text(f"{_private_mb():.1f}", encoding="ascii")
            return value
        return start(cls, run)

    parallel.Worker.start = classmethod(measured)  # type: ignore[method-assign,assignment]


def one(command: str, policy: str, jobs: str, out: str) -> dict[str, Any]:
    """Run one fwc command in this process; its times and peak RSS as JSON."""
    from fwc.cli import main

    private = Path(out + ".worker-private")
    private.unlink(missing_ok=True)
    _measuring_workers(private)

    argv = [command, "--no-cache", "--jobs", jobs, policy]
    if command == "compile":
        argv += ["-o", out]
    wall = time.perf_counter()
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        status = main(argv)
    wall = time.perf_counter() - wall
    me = resource.getrusage(resource.RUSAGE_SELF)
    worker = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {"status": status, "wall": wall,
            "cpu": me.ru_utime + me.ru_stime + worker.ru_utime + worker.ru_stime,
            "parent_cpu": me.ru_utime + me.ru_stime,
            "parent_mb": me.ru_maxrss / 1024, "worker_mb": worker.ru_maxrss / 1024,
            "worker_private_mb": float(private.read_text()) if private.exists() else 0.0,
            "report": stderr.getvalue() + stdout.getvalue().replace(out, "OUT")}


def run_one(command: str, policy: Path, jobs: str, out: Path) -> dict[str, Any]:
    env = dict(os.environ, FWC_NO_CACHE="1")
    got = subprocess.run([sys.executable, "-m", "bench.twocore", "--one", command,
                          str(policy), jobs, str(out)], cwd=REPO, env=env,
                         capture_output=True, text=True, check=True)
    return json.loads(got.stdout)


def tree(root: Path) -> dict[str, str]:
    """Every file's SHA-256 (not its bytes: the peak RSS a child reports includes
    this process's at the fork, so this one stays small)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def load() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def compare(command: str, policies: list[Path], repeat: int, work: Path) -> str:
    head = ["policy", "jobs", "wall s (median)", "wall s (min)", "CPU s (median)",
            "CPU s (min)", "parent CPU s (median)", "parent MB", "worker MB", "sum MB",
            "worker private MB"]
    lines = [f"`fwc {command}`, {repeat} runs each, interleaved; load average before: "
             f"{load()}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for policy in policies:
        runs: dict[str, list[dict[str, Any]]] = {"1": [], "2": []}
        outputs: dict[str, dict[str, str]] = {}
        for _ in range(repeat):
            for jobs in ("1", "2"):
                out = work / f"{policy.stem}-jobs{jobs}"
                shutil.rmtree(out, ignore_errors=True)
                runs[jobs].append(run_one(command, policy, jobs, out))
                if command == "compile":
                    outputs[jobs] = tree(out) if out.exists() else {}
        if runs["1"][0]["report"] != runs["2"][0]["report"] or outputs.get("1") != \
                outputs.get("2") or runs["1"][0]["status"] != runs["2"][0]["status"]:
            raise SystemExit(f"{policy}: --jobs 1 and --jobs 2 differ:\n"
                             f"{runs['1'][0]['report'][:2000]}\n{runs['2'][0]['report'][:2000]}")
        for jobs, got in runs.items():
            walls = [r["wall"] for r in got]
            cpus = [r["cpu"] for r in got]
            parent_cpu = statistics.median(r["parent_cpu"] for r in got)
            parent = max(r["parent_mb"] for r in got)
            worker = max(r["worker_mb"] for r in got) if jobs == "2" else 0.0
            private = max(r["worker_private_mb"] for r in got)
            lines.append(f"| {policy.name} | {jobs} | {statistics.median(walls):.2f} | "
                         f"{min(walls):.2f} | {statistics.median(cpus):.2f} | {min(cpus):.2f}"
                         f" | {parent_cpu:.2f} | {parent:.0f} | {worker:.0f} | "
                         f"{parent + worker:.0f} | {private:.0f} |")
    lines += ["", f"load average after: {load()}"]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    if argv[:1] == ["--one"]:
        print(json.dumps(one(*argv[1:5])))
        return 0
    parser = argparse.ArgumentParser(prog="python3 -m bench.twocore")
    parser.add_argument("policies", nargs="*", type=Path)
    parser.add_argument("--command", choices=("compile", "check"), default="compile")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--sizes", default="", help="generate policies of these sizes")
    parser.add_argument("--shapes", default="site")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="fwc-bench-twocore-") as folder:
        work = Path(folder)
        policies = [p.resolve() for p in args.policies]
        if args.sizes:
            from bench.generate import build_site, fwc_policy

            for shape in args.shapes.split(","):
                for size in (int(s) for s in args.sizes.split(",")):
                    path = work / f"{shape}{size}.fw"
                    path.write_text(fwc_policy(build_site(size, shape=shape)),
                                    encoding="utf-8")
                    policies.append(path)
        print(compare(args.command, policies, args.repeat, work))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
