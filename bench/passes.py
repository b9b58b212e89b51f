"""Time and peak memory of every pass of one compile, in one process.

`python3 -m bench.passes POLICY [BACKEND]` prints one JSON object: for each pass, in order,
wall seconds, CPU seconds (process time: less disturbed by the other users of a
shared machine) and the process's peak RSS in MB when the pass ended. bench/run.py
runs it in a fresh process per shape, size and repetition and takes medians.

The passes are the compiler's own functions, called in the order `fwc compile`
needs them, with one difference: the rulesets of every member and family are
lowered as a pass of their own before the checks, where `fwc compile` lowers them
while building the files (the parity check lowers only the rules that may differ
between members, in a copy of the cluster of its own, and "check parity" counts
it). Building and writing the files is one call, as in `fwc compile` (each file
is written as soon as it is rendered, the rule files piece by piece while they are
rendered): arrangement and ipsets are timed by wrapping
`fwc.backend.render.context.optimise`, write by wrapping
`fwc.backend.output.write_file` (less the time its pieces took to render), render
is the rest of that call. BACKEND (`iptables` or `nftables`) is the packet filter the
files are built for, as `fwc compile --backend` (default: each cluster's own).
"""

from __future__ import annotations

import dataclasses
import gc
import json
import resource
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


Clocks = tuple[float, float, float]  # wall, CPU (user + system), user seconds


def _clocks() -> Clocks:
    return (time.perf_counter(), time.process_time(),
            resource.getrusage(resource.RUSAGE_SELF).ru_utime)


def _since(start: Clocks) -> Clocks:
    wall, cpu, user = _clocks()
    return wall - start[0], cpu - start[1], user - start[2]


class Clock:
    """Per pass: wall and CPU seconds (user and system), the user part alone (what the
    pass's own code did; the system part is the kernel's, such as page faults and the
    page cache, which depend on the machine's memory too), and the peak RSS at its end."""

    def __init__(self) -> None:
        self.passes: dict[str, dict[str, float]] = {}

    def add(self, name: str, wall: float, cpu: float, user: float) -> None:
        got = self.passes.setdefault(name, {"wall": 0.0, "cpu": 0.0, "user": 0.0,
                                            "peak_mb": 0.0})
        got["wall"] += wall
        got["cpu"] += cpu
        got["user"] += user
        got["peak_mb"] = _peak_mb()

    def run(self, name: str, function: Callable[[], Any]) -> Any:
        start = _clocks()
        result = function()
        self.add(name, *_since(start))
        return result


def measure(policy_path: Path, backend: str | None = None) -> dict[str, Any]:
    from fwc.backend import output
    from fwc.backend.lower import lower, options_for
    from fwc.backend.render import context as build_context
    from fwc.backend.render.registry import Chunks
    from fwc.checks import load_registry
    from fwc.diagnostics import has_errors
    from fwc.frontend.loader import load
    from fwc.frontend.resolve import resolve
    from fwc.model.vocabulary import Backend

    clock = Clock()
    gc.disable()  # as the CLI runs (fwc.commands.common.without_cycle_collection)
    # As `fwc check` and `fwc compile` load (fwc.pipeline.model without keep_syntax): plain
    # rule lines stay as their matches and go straight into the model, the syntax trees
    # are dropped after resolve.
    program, diagnostics = clock.run("parse", lambda: load(policy_path, lines=True))
    if has_errors(diagnostics):
        raise SystemExit(f"{policy_path}: does not parse")
    policy, resolved = clock.run("resolve", lambda: resolve(program, None))
    diagnostics.extend(resolved)
    program = program.without_syntax()
    options = options_for(policy)

    def lower_all() -> None:
        for cluster in policy.clusters:
            for member in cluster.members:
                for family in sorted(cluster.families):
                    lower(cluster, member, family, options)

    clock.run("lower", lower_all)
    # One entry per check module ("family"), as the registry runs them: by code.
    for info in sorted(load_registry().values(), key=lambda i: i.code):
        if info.function is None:
            continue
        family = f"check {info.function.__module__.rsplit('.', 1)[-1]}"
        diagnostics.extend(clock.run(family, lambda f=info.function: list(f(policy))))
    if has_errors(diagnostics):
        raise SystemExit(f"{policy_path}: has errors, nothing to compile")

    # The render targets run the speed passes (MemberBuild.optimised), and
    # `fwc compile` writes each file to the staging copy as soon as it is rendered
    # (fwc.backend.output.stream_policy): both are timed inside the one write_output call.
    optimise = build_context.optimise
    write_file = output.write_file

    def timed_optimise(*args: Any, **kwargs: Any) -> Any:
        return clock.run("arrange+ipsets", lambda: optimise(*args, **kwargs))

    def timed_write_file(directory: Path, f: Any) -> Any:
        if f.chunks is None:
            return clock.run("write", lambda: write_file(directory, f))
        # A rule file is rendered while it is written (chunks): the time spent making
        # its pieces is the render's, the rest the write's.
        making = [0.0, 0.0, 0.0]

        def pieces() -> Any:
            source = iter(f.chunks)
            while True:
                start = _clocks()
                piece = next(source, None)
                making[:] = [m + d for m, d in zip(making, _since(start), strict=True)]
                if piece is None:
                    return
                yield piece

        streamed = dataclasses.replace(f, chunks=Chunks(pieces()))
        start = _clocks()
        write_file(directory, streamed)
        clock.add("write", *(d - m for d, m in zip(_since(start), making, strict=True)))
        clock.add("render+", *making)
        return None

    build_context.optimise = timed_optimise  # type: ignore[assignment]
    output.write_file = timed_write_file  # type: ignore[assignment]
    for name in ("arrange+ipsets", "render", "write"):
        clock.passes[name] = {"wall": 0.0, "cpu": 0.0, "user": 0.0, "peak_mb": 0.0}
    try:
        with tempfile.TemporaryDirectory(prefix="fwc-bench-write-") as folder:
            target = Path(folder) / "out"
            start = _clocks()
            output.write_output(
                target, output.policy_name(policy),
                output.stream_policy(policy, chunked=True,
                                     backend=Backend(backend) if backend else None))
            wall, cpu, user = _since(start)
    finally:
        build_context.optimise = optimise  # type: ignore[assignment]
        output.write_file = write_file  # type: ignore[assignment]
    spent = [clock.passes["arrange+ipsets"], clock.passes["write"]]
    clock.add("render", wall - sum(p["wall"] for p in spent),
              cpu - sum(p["cpu"] for p in spent), user - sum(p["user"] for p in spent))
    clock.passes.pop("render+", None)  # inside the render's share already
    for name in ("arrange+ipsets", "write"):  # interleaved with render: peak at its end
        clock.passes[name]["peak_mb"] = clock.passes["render"]["peak_mb"]
    return {"passes": clock.passes, "peak_mb": _peak_mb(),
            "diagnostics": len(diagnostics)}


def main(argv: list[str]) -> int:
    if len(argv) not in (1, 2) or argv[1:] not in ([], ["iptables"], ["nftables"]):
        print("usage: python3 -m bench.passes POLICY [iptables|nftables]", file=sys.stderr)
        return 2
    try:
        result = measure(Path(argv[0]), argv[1] if len(argv) == 2 else None)
    except Exception:  # noqa: BLE001 - the parent reports the failure with this text
        traceback.print_exc()
        return 1
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
