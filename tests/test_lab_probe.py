"""The lab probes' stop flag (fwc/lab/probe.py): a SIGTERM never hangs a probe.

The reboot drill's SYN sender used to stop on a `threading.Event` set from its
SIGTERM handler. A Python handler runs between any two bytecodes of the main
thread; when it ran while the main thread was inside `Event.wait`'s (or
`Event.set`'s) `with self._cond:`, the handler's `set()` waited for the lock its
own thread held, and the sender hung until the lab SIGKILLed it, its summary
unprinted (only under load is the signal handled there often enough to see).

The test is deterministic: a child process traces its own bytecodes and raises
SIGTERM at every single one of a call of `Stop.wait` and of `Stop.set` in turn;
each call must return with the flag set. Against the old Event this child hangs
at the first position inside the lock, and the timeout fails the test.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import REPO

PROBE = REPO / "fwc" / "lab" / "probe.py"

CHILD = r"""
import importlib.util, os, signal, sys

spec = importlib.util.spec_from_file_location("probe", sys.argv[1])
probe = importlib.util.module_from_spec(spec)
spec.loader.exec_module(probe)


def run(call, fire_at):
    # Count the opcodes CALL executes (all frames); raise SIGTERM at the FIRE_AT-th:
    # its handler runs at the next bytecode boundary, wherever that is.
    seen = 0

    def tracer(frame, event, arg):
        nonlocal seen
        frame.f_trace_opcodes = True
        if event == "opcode":
            seen += 1
            if seen == fire_at:
                os.kill(os.getpid(), signal.SIGTERM)
        return tracer

    sys.settrace(tracer)
    try:
        call()
    finally:
        sys.settrace(None)
    return seen


positions = 0
for name in ("wait", "set"):
    stop = probe._stopper()
    total = run(lambda: getattr(stop, name)(*((0.001,) if name == "wait" else ())), 0)
    for k in range(1, total + 1):
        stop = probe._stopper()
        run(lambda: getattr(stop, name)(*((0.001,) if name == "wait" else ())), k)
        assert stop.is_set(), (name, k)
        positions += 1
print(f"survived SIGTERM at {positions} positions", flush=True)
"""


def test_sigterm_at_any_bytecode_of_stop_wait_or_set_never_hangs() -> None:
    try:
        out = subprocess.run([sys.executable, "-c", CHILD, str(PROBE)],
                             capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired as exc:  # subprocess.run killed the child by its PID
        raise AssertionError("a SIGTERM handled inside the stop flag hung the probe") from exc
    assert out.returncode == 0, out.stderr
    positions = int(out.stdout.split()[3])
    assert positions >= 5, out.stdout  # both calls were traced, bytecode by bytecode


def test_watch_runs_a_listing_shared_by_both_families_once(tmp_path: Path) -> None:
    """nft's forward-hook listing (`nft list chains`) is the same command for IPv4 and
    IPv6: the watcher runs it once per round, and both families get its entry."""
    calls, hook = tmp_path / "calls", tmp_path / "hook"
    hook.write_text("wiped\n")
    lister = ["sh", "-c", f"echo . >> {calls}; cat {hook}"]
    # It stops by itself after DURATION: the listing that sees the rules must come
    # within it, however loaded the machine (one listing is a shell and a cat).
    watcher = subprocess.Popen(
        [sys.executable, str(PROBE), "watch", "--duration", "3", "--period", "0.01",
         "--listers", json.dumps({"4": lister, "6": lister})],
        stdout=subprocess.PIPE, text=True)
    try:
        assert watcher.stdout is not None
        assert watcher.stdout.readline().startswith("READY")  # the wiped hook was listed
        # The rules come in, atomically (a listing must never read a half-written
        # file): the lister stops at its next listing.
        (tmp_path / "hook.new").write_text("loaded\n")
        os.replace(tmp_path / "hook.new", hook)
        out, _ = watcher.communicate(timeout=30)
    finally:
        if watcher.poll() is None:
            watcher.kill()
            watcher.wait()
    chains = json.loads(out.splitlines()[-1])["chains"]
    assert set(chains) == {"4", "6"} and chains["4"] == chains["6"], chains
    entry = chains["4"]
    assert entry["loaded"] == ["loaded"] and entry["in_by"] > entry["absent_at"], entry
    assert len(calls.read_text().splitlines()) == entry["listings"] >= 2, entry
