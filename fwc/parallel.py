"""A second process for independent work: fork after the model is built, JSON back.

`fwc check` and `fwc compile` of a large policy run their checks (or a share of them)
in a forked worker while the parent process does the rest (docs/performance.md,
"Two cores"). The worker sees the parent's memory as it was at the fork
(copy-on-write: nothing is serialised on the way in), computes one JSON value and
writes it to an anonymous file the two share (`_answer_file`: the worker ends, and gives
its memory back, as soon as it is done, however long the answer); it writes nothing
else, never prints, and leaves with `os._exit` (no `finally`, `atexit` or buffered
output of the parent runs twice).

Fail closed: a worker that crashes, is killed or sends something that is not the
JSON it was asked for makes `Worker.result` raise `WorkerFailed`; the caller turns
that into a diagnostic and writes nothing. Ctrl-C reaches both processes (one
process group); the parent kills and reaps its worker on the way out
(`Worker.close`, also on any exception of its own).

Where fork does not exist, or only one CPU is usable, or the caller asks for one
process (`--jobs 1`, `FWC_JOBS=1`), `start` returns None and the caller runs the work
in-process, as before.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import signal
import tempfile
from collections.abc import Callable, Mapping
from typing import Any

# `--jobs` / FWC_JOBS: "auto" forks for large work on a machine with 2+ usable CPUs;
# 1 never forks; 2 (or more) forks whenever fork exists (tests use it on small policies).
JOBS_ENV = "FWC_JOBS"
AUTO = 0
PR_SET_PDEATHSIG = 1  # linux/prctl.h


class WorkerFailed(Exception):
    """The worker did not deliver its result (crash, signal, broken answer)."""


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def parse_jobs(text: str) -> int:
    """`auto` -> AUTO (0), else a positive count; ValueError otherwise."""
    if text.strip().lower() == "auto":
        return AUTO
    value = int(text)
    if value < 1:
        raise ValueError(f"jobs must be 'auto' or at least 1, not {value}")
    return value


def jobs_from(option: int | None, environ: Mapping[str, str] = os.environ) -> int:
    """The effective jobs setting: the option, else FWC_JOBS, else auto (a bad FWC_JOBS
    is auto: an environment variable never breaks a compile)."""
    if option is not None:
        return option
    try:
        return parse_jobs(environ.get(JOBS_ENV, "auto"))
    except ValueError:
        return AUTO


def wanted(jobs: int, size: int, sizes: range) -> bool:
    """Whether to fork for work of SIZE under the JOBS setting: auto forks for SIZES
    (where a worker saves more time than it costs, and its memory is affordable)."""
    if not hasattr(os, "fork") or jobs == 1:
        return False
    if jobs >= 2:
        return True
    return size in sizes and usable_cpus() >= 2


def start(task: Callable[[], Any]) -> Worker | None:
    """A worker running TASK, or None when the system cannot fork now (no memory, too
    many processes): the caller then runs the work itself, as with `--jobs 1`."""
    try:
        return Worker.start(task)
    except OSError:
        return None


class Worker:
    """A forked process computing one JSON value; `result()` once, `close()` always."""

    def __init__(self, pid: int, fd: int) -> None:
        self.pid = pid
        self._fd = fd  # the answer file (`_answer_file`), until `result` or `close`
        self._status: int | None = None

    @classmethod
    def start(cls, task: Callable[[], Any]) -> Worker:
        """Fork a worker running TASK; its return value comes back through `result`."""
        answer = _answer_file()
        parent = os.getpid()
        # Objects alive now are not traversed by a collection in either process
        # (the collector would otherwise dirty every page the worker shares).
        gc.freeze()
        held = _HeldInterrupt.hold()
        try:
            pid = os.fork()
        except OSError:
            held.release()
            gc.unfreeze()
            os.close(answer)
            raise
        if pid == 0:  # the worker: never returns
            _serve(task, answer, parent, held)
        gc.unfreeze()
        worker = cls(pid, answer)
        held.deliver(worker)
        return worker

    def result(self) -> Any:
        """The worker's value; waits for it. WorkerFailed when it did not deliver."""
        status = self._wait()
        try:
            if self._fd < 0:
                raise WorkerFailed("the worker's answer was read or dropped already")
            if os.WIFSIGNALED(status):
                number = os.WTERMSIG(status)
                raise WorkerFailed(f"the worker process was killed by signal {number} "
                                   f"({signal.Signals(number).name})")
            code = os.waitstatus_to_exitcode(status)
            if code != 0:
                raise WorkerFailed(f"the worker process exited with status {code}")
            data = _read_all(self._fd)  # (only an answer the worker finished writing)
        finally:
            self._close_answer()
        try:
            answer = json.loads(data)
        except ValueError as exc:
            raise WorkerFailed(f"the worker's answer is not JSON: {exc}") from None
        if not isinstance(answer, dict) or "value" not in answer:
            raise WorkerFailed("the worker's answer has no value")
        return answer["value"]

    def close(self) -> None:
        """Kill the worker if it still runs, reap it and drop its answer (idempotent)."""
        if self._status is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
            self._wait()
        self._close_answer()

    def _close_answer(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def _wait(self) -> int:
        if self._status is None:
            try:  # an EINTR is retried by Python itself (PEP 475)
                _, self._status = os.waitpid(self.pid, 0)
            except ChildProcessError:  # reaped elsewhere: nothing was delivered
                self._status = 1 << 8
        return self._status


def _answer_file() -> int:
    """An anonymous file for the worker's answer, shared with it through the fork.

    Not a pipe: an answer larger than a pipe holds (64 KB; a 20,000-rule policy's
    diagnostics can be 125 KB) kept the worker waiting in `os.write`, with all its
    memory, until the parent asked for it at the end of a compile. Written to a file, the
    answer waits there and the worker ends as soon as it is done. A memfd has no name
    anyone else could open; elsewhere a temporary file, unlinked at once."""
    if hasattr(os, "memfd_create"):
        return os.memfd_create("fwc-worker-answer", os.MFD_CLOEXEC)
    with tempfile.TemporaryFile() as stream:
        return os.dup(stream.fileno())


def _read_all(fd: int) -> bytes:
    """The whole answer file, from its start (the worker's writes moved the shared offset)."""
    size = os.fstat(fd).st_size
    chunks: list[bytes] = []
    offset = 0
    while offset < size:
        chunk = os.pread(fd, min(size - offset, 1 << 24), offset)
        if not chunk:
            break
        chunks.append(chunk)
        offset += len(chunk)
    return b"".join(chunks)


def _die_with(parent: int) -> None:
    """Linux: the worker is killed when its parent dies (even by SIGKILL), instead of
    finishing work nobody will read."""
    import ctypes  # here: only a worker needs it, not every `fwc check`

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # it died before the prctl
        os._exit(1)


class _HeldInterrupt:
    """Ctrl-C held back while a worker is forked. Python runs a signal's handler in the
    main thread between two bytecodes (whichever thread the kernel picked), so a
    KeyboardInterrupt could come out of `os.fork()` before the parent holds the
    worker's PID: that worker would then be neither killed nor reaped."""

    def __init__(self) -> None:
        self.previous: Any = None
        self.installed = False
        self.came = False

    @classmethod
    def hold(cls) -> _HeldInterrupt:
        held = cls()
        with contextlib.suppress(ValueError):  # not the main thread: no handler runs here
            held.previous = signal.signal(signal.SIGINT, held._note)
            held.installed = True
        return held

    def _note(self, number: int, frame: object) -> None:
        self.came = True

    def release(self) -> None:
        """The handler of before (both processes)."""
        if self.installed:
            signal.signal(signal.SIGINT, self.previous)
            self.installed = False

    def deliver(self, worker: Worker) -> None:
        """The parent's side: the handler of before, then the interrupt that came during
        the fork, if any, now with WORKER to kill and reap."""
        self.release()
        if not self.came:
            return
        if self.previous == signal.SIG_DFL:
            worker.close()  # the default action ends this process at once
        try:
            signal.raise_signal(signal.SIGINT)
        except BaseException:
            worker.close()
            raise


def _serve(task: Callable[[], Any], fd: int, parent: int, held: _HeldInterrupt) -> None:
    """The worker's whole life: compute, write the answer, `os._exit` (0 only when all of
    it was written)."""
    status = 1
    try:
        held.release()
        if held.came:  # interrupted while being forked: stop as the parent does
            return
        # Ctrl-C goes to the whole process group: the worker just stops (a parent
        # that ignores SIGINT, started in the background, keeps a worker that does).
        if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            signal.signal(signal.SIGINT, signal.SIG_DFL)
        _die_with(parent)
        data = json.dumps({"value": task()}, separators=(",", ":")).encode()
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        status = 0
    except BaseException:  # noqa: BLE001 - the parent reports the failure, fail closed
        status = 1
    finally:
        os._exit(status)
