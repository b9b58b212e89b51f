"""Two processes (fwc.parallel, issue 12): the same files and diagnostics as one, fail closed.

`--jobs 2` forks the worker whatever the policy's size, so that the examples and a
2,000-rule generated policy are compiled and checked both ways and compared byte for
byte (files, printed report, exit status). A policy whose checks fail, and a worker
that is killed, leave the output directory exactly as it was.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import time
from pathlib import Path

import pytest
from conftest import EDGE_TEXT, EXAMPLE_FILES, EXAMPLE_NAMES, file_tree, leftovers, run_on_terminal

from fwc import checks as registry
from fwc import parallel
from fwc.cli import main
from fwc.pipeline import DIFF_FORK_RULES, FORK_RULES

SHADOWED = "    drop   from desktops to any      service web\n"
DEFAULT_RULE = '    drop   from any      to any      log "default"\n'


def _compile(policy: Path, out: Path, jobs: str, capsys, *extra: str) -> tuple[int, str, str]:
    status = main(["compile", "--no-cache", "--jobs", jobs, str(policy), "-o", str(out),
                   *extra])
    got = capsys.readouterr()
    return status, got.out.replace(str(out), "OUT"), got.err.replace(str(out), "OUT")


def _check(policy: Path, jobs: str, capsys, *extra: str) -> tuple[int, str, str]:
    status = main(["check", "--no-cache", "--jobs", jobs, str(policy), *extra])
    got = capsys.readouterr()
    return status, got.out, got.err


def _same_compile(policy: Path, tmp_path: Path, capsys, *extra: str) -> tuple[int, str, str]:
    one = _compile(policy, tmp_path / "one", "1", capsys, *extra)
    two = _compile(policy, tmp_path / "two", "2", capsys, *extra)
    assert two == one
    assert file_tree(tmp_path / "two") == file_tree(tmp_path / "one")
    return one


@pytest.fixture(scope="module")
def large_policy(tmp_path_factory) -> Path:
    """2,000 rules of the `groups` shape: redundant rules give FWC402 warnings."""
    from bench.generate import build_site, fwc_policy

    path = tmp_path_factory.mktemp("large") / "groups2000.fw"
    path.write_text(fwc_policy(build_site(2000, shape="groups")), encoding="utf-8")
    return path


@pytest.mark.parametrize("policy", EXAMPLE_FILES, ids=EXAMPLE_NAMES)
def test_examples_compile_the_same_with_a_worker(policy, tmp_path, capsys):
    status, printed, _ = _same_compile(policy, tmp_path, capsys)
    assert status == 0 and "OUT/" in printed


def test_large_policy_compiles_and_checks_the_same_with_a_worker(large_policy, tmp_path,
                                                                 capsys):
    status, _, report = _same_compile(large_policy, tmp_path, capsys)
    assert status == 0 and "warning[FWC402]" in report  # diagnostics, in order, compared
    json_one = _check(large_policy, "1", capsys, "--format", "json")
    assert _check(large_policy, "2", capsys, "--format", "json") == json_one
    assert any(d["code"] == "FWC402" for d in json.loads(json_one[1])["diagnostics"])


def _with_errors(tmp_path: Path) -> Path:
    """edge.fw with a rule shadowed by one with another action (FWC401, an error)."""
    assert DEFAULT_RULE in EDGE_TEXT
    path = tmp_path / "repo" / "edge.fw"
    path.parent.mkdir()
    (path.parent / ".git").mkdir()
    path.write_text(EDGE_TEXT.replace(DEFAULT_RULE, SHADOWED + DEFAULT_RULE), encoding="utf-8")
    return path


def test_failed_checks_write_nothing_with_a_worker(tmp_path, capsys):
    policy = _with_errors(tmp_path)
    clean = tmp_path / "repo" / "clean.fw"
    clean.write_text(EDGE_TEXT, encoding="utf-8")
    out = tmp_path / "out"
    assert main(["compile", "--no-cache", "--jobs", "1", str(clean), "-o", str(out)]) == 0
    capsys.readouterr()
    before = file_tree(out)
    one = _compile(policy, out, "1", capsys)
    two = _compile(policy, out, "2", capsys)
    assert two == one and one[0] == 1
    assert "error[FWC401]" in one[2] and "nothing written" in one[2]
    assert file_tree(out) == before  # the staged files were thrown away
    assert leftovers(out.parent) == []
    assert _check(policy, "2", capsys) == _check(policy, "1", capsys)


def _killing(code: str, parent: int) -> registry.CheckInfo:
    """The check CODE, made to kill the process it runs in unless that is PARENT."""
    info = registry.load_registry()[code]
    function = info.function
    assert function is not None

    def killer(policy):  # type: ignore[no-untyped-def]
        if os.getpid() != parent:
            os.kill(os.getpid(), signal.SIGKILL)
        return function(policy)

    return dataclasses.replace(info, function=killer)


def test_a_killed_worker_is_an_internal_error_and_nothing_is_written(tmp_path, capsys,
                                                                      monkeypatch):
    registry.load_registry()
    code = "FWC105"  # a check the worker runs for `fwc check` too
    monkeypatch.setitem(registry.REGISTRY, code, _killing(code, os.getpid()))
    policy = tmp_path / "edge.fw"
    policy.write_text(EDGE_TEXT, encoding="utf-8")
    out = tmp_path / "out"
    status, printed, report = _compile(policy, out, "2", capsys)
    assert status == 1 and printed == ""
    assert "error[FWC900]" in report and "killed by signal 9 (SIGKILL)" in report
    assert "nothing written" in report
    assert not out.exists()
    assert leftovers(out.parent) == []
    status, _, report = _check(policy, "2", capsys)
    assert status == 1 and "error[FWC900]" in report and "SIGKILL" in report
    # in one process the check runs in this process, which it does not kill
    assert _compile(policy, out, "1", capsys)[0] == 0


def test_a_killed_worker_is_not_kept_in_the_result_cache(tmp_path, capsys, monkeypatch,
                                                         cache_home):
    policy = tmp_path / "repo" / "edge.fw"
    policy.parent.mkdir()
    (policy.parent / ".git").mkdir()
    policy.write_text(EDGE_TEXT, encoding="utf-8")
    with monkeypatch.context() as patch:
        registry.load_registry()
        patch.setitem(registry.REGISTRY, "FWC105", _killing("FWC105", os.getpid()))
        assert main(["compile", "--jobs", "2", str(policy), "-o", str(tmp_path / "a")]) == 1
    capsys.readouterr()
    # the next compile neither answers from a cached failure nor differs
    assert main(["compile", "--jobs", "2", str(policy), "-o", str(tmp_path / "b")]) == 0
    assert main(["compile", "--jobs", "2", str(policy), "-o", str(tmp_path / "c")]) == 0
    assert main(["compile", "--no-cache", str(policy), "-o", str(tmp_path / "d")]) == 0
    assert file_tree(tmp_path / "b") == file_tree(tmp_path / "c") == file_tree(tmp_path / "d")


def test_worker_answers_and_fails_closed():
    assert parallel.Worker.start(lambda: {"a": [1, "x"]}).result() == {"a": [1, "x"]}

    def boom() -> None:
        raise RuntimeError("boom")

    worker = parallel.Worker.start(boom)
    with pytest.raises(parallel.WorkerFailed, match="status 1"):
        worker.result()
    worker = parallel.Worker.start(lambda: object())  # not JSON: nothing is sent
    with pytest.raises(parallel.WorkerFailed, match="status 1"):
        worker.result()


def test_a_worker_with_a_long_answer_ends_before_its_answer_is_asked():
    """An answer larger than a pipe holds (the checks' diagnostics of a large policy)
    waits in the answer file: the worker ends, its memory given back, while the parent
    still builds the files, not when `result()` is asked at the end. (Sent over a pipe,
    such a worker waited for its reader.)"""
    answer = ["x" * 1000] * 2000  # about 2 MB of JSON
    worker = parallel.Worker.start(lambda: answer)
    try:
        deadline = time.monotonic() + 20
        ended = None
        while ended is None and time.monotonic() < deadline:
            # (WNOWAIT: seen, not reaped: `result()` still reaps it)
            ended = os.waitid(os.P_PID, worker.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            if ended is None:
                time.sleep(0.01)
        assert ended is not None, "the worker did not end before its answer was asked"
        assert (ended.si_code, ended.si_status) == (os.CLD_EXITED, 0)
        assert worker.result() == answer
        with pytest.raises(parallel.WorkerFailed, match="read or dropped already"):
            worker.result()  # once: a second call says so, nothing is read again
    finally:
        worker.close()


def test_without_memfd_the_answer_waits_in_an_unlinked_temporary_file(monkeypatch):
    """Where the system has no memfd, the answer file is a temporary file with no name
    left: the worker still answers, and fails closed, the same way."""
    monkeypatch.delattr(os, "memfd_create")
    assert parallel.Worker.start(lambda: {"a": [1, "x"]}).result() == {"a": [1, "x"]}
    worker = parallel.Worker.start(lambda: object())  # not JSON: nothing is written
    with pytest.raises(parallel.WorkerFailed, match="status 1"):
        worker.result()


def test_close_kills_a_running_worker():
    worker = parallel.Worker.start(lambda: time.sleep(30))
    started = time.monotonic()
    worker.close()
    worker.close()  # idempotent
    assert time.monotonic() - started < 5
    with pytest.raises(ChildProcessError):
        os.waitpid(worker.pid, os.WNOHANG)  # reaped


def test_jobs_setting(monkeypatch):
    assert parallel.jobs_from(None, {}) == parallel.AUTO
    assert parallel.jobs_from(None, {"FWC_JOBS": "1"}) == 1
    assert parallel.jobs_from(None, {"FWC_JOBS": "nonsense"}) == parallel.AUTO
    assert parallel.jobs_from(2, {"FWC_JOBS": "1"}) == 2  # the option wins
    with pytest.raises(ValueError):
        parallel.parse_jobs("0")
    low, high = FORK_RULES.start, FORK_RULES.stop
    assert not parallel.wanted(1, low, FORK_RULES)
    assert parallel.wanted(2, 1, FORK_RULES) and parallel.wanted(2, high, FORK_RULES)
    monkeypatch.setattr(parallel, "usable_cpus", lambda: 1)
    assert not parallel.wanted(parallel.AUTO, low, FORK_RULES)
    monkeypatch.setattr(parallel, "usable_cpus", lambda: 2)
    assert parallel.wanted(parallel.AUTO, low, FORK_RULES)
    assert parallel.wanted(parallel.AUTO, high - 1, FORK_RULES)
    assert not parallel.wanted(parallel.AUTO, low - 1, FORK_RULES)
    assert not parallel.wanted(parallel.AUTO, high, FORK_RULES)  # the memory target
    assert parallel.wanted(parallel.AUTO, 100_031, FORK_RULES)  # the bench's 100k policies
    # `fwc diff` holds both sides: two sides of 50,000 rules stay in one process
    assert not parallel.wanted(parallel.AUTO, 2 * 50_031, DIFF_FORK_RULES)


def test_bad_jobs_option_is_a_usage_error(capsys):
    assert main(["check", "--jobs", "0", "x.fw"]) == 2
    assert "argument --jobs: '0' is not 'auto'" in capsys.readouterr().err


SLOW_WORKER = """
import os, sys, time
from fwc import checks
from fwc.cli import main
registry = checks.load_registry()
info = registry["FWC105"]
parent = os.getpid()
def slow(policy):
    if os.getpid() != parent:
        time.sleep(60)
    return info.function(policy)
import contextlib
import dataclasses
registry["FWC105"] = dataclasses.replace(info, function=slow)
sys.exit(main(sys.argv[1:]))
"""


def _workers(pid: int) -> list[int]:
    """PID's children that are forks of it (the same command line: not a git run)."""
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text(encoding="ascii")
        mine = Path(f"/proc/{pid}/cmdline").read_bytes()
        return [int(w) for w in text.split()
                if Path(f"/proc/{w}/cmdline").read_bytes() == mine]
    except OSError:
        return []


def _alive(pid: int) -> bool:
    """PID runs (a zombie left to a parent that does not reap does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii")
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def _started_workers(pid: int) -> list[int]:
    """The worker processes of PID, once it has forked them (bounded wait)."""
    deadline = time.monotonic() + 30
    while not _workers(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    workers = _workers(pid)
    assert workers, "the worker did not start"
    return workers


def test_ctrl_c_stops_both_processes_and_writes_nothing(tmp_path):
    import subprocess
    import sys

    from conftest import REPO

    policy = tmp_path / "edge.fw"
    policy.write_text(EDGE_TEXT, encoding="utf-8")
    out = tmp_path / "out"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    process = subprocess.Popen(
        [sys.executable, "-c", SLOW_WORKER, "compile", "--no-cache", "--jobs", "2",
         str(policy), "-o", str(out)], env=env, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        workers = _started_workers(process.pid)
        os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C does: the whole group
        _, err = process.communicate(timeout=20)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 130 and "interrupted" in err
    # The parent reaps its worker (tested at the fork itself below); a worker that the
    # signal itself ended may still be inside its exit for a moment on a loaded machine.
    deadline = time.monotonic() + 5
    while any(_alive(w) for w in workers) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not any(_alive(w) for w in workers)
    assert not out.exists()
    assert leftovers(out.parent) == []


def test_the_worker_dies_with_a_killed_parent(tmp_path):
    import subprocess
    import sys

    from conftest import REPO

    policy = tmp_path / "edge.fw"
    policy.write_text(EDGE_TEXT, encoding="utf-8")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    process = subprocess.Popen(
        [sys.executable, "-c", SLOW_WORKER, "compile", "--no-cache", "--jobs", "2",
         str(policy), "-o", str(tmp_path / "out")], env=env, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        workers = _started_workers(process.pid)
        process.kill()  # the parent alone, by SIGKILL: no finally runs there
        process.wait()
        deadline = time.monotonic() + 10
        while any(_alive(w) for w in workers) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(_alive(w) for w in workers)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_one_progress_line_with_a_worker(tmp_path):
    code, _, screen = run_on_terminal("compile", "--no-cache", "--jobs", "2", str(EXAMPLE_FILES[0]),
                                "-o", str(tmp_path / "out"), cwd=tmp_path)
    assert code == 0
    assert "fwc: compiling" in screen and "fwc: checking  95%" in screen
    # only the parent's line, redrawn in place and erased: no line of its own
    assert "\n" not in screen and screen.endswith("\r")
    code, _, screen = run_on_terminal("check", "--no-cache", "--jobs", "2", str(EXAMPLE_FILES[0]),
                                cwd=tmp_path)
    assert code == 0 and "fwc: checking (FWC401)" in screen
    assert "fwc: checking (the other checks) 100%" in screen and "\n" not in screen


def test_no_fork_possible_runs_in_one_process(tmp_path, capsys, monkeypatch):
    forks: list[int] = []

    def cannot_fork() -> int:
        forks.append(1)
        raise BlockingIOError(11, "Resource temporarily unavailable")

    policy = EXAMPLE_FILES[0]
    one = _compile(policy, tmp_path / "one", "1", capsys)
    monkeypatch.setattr(os, "fork", cannot_fork)
    assert _compile(policy, tmp_path / "two", "2", capsys) == one
    assert len(forks) == 1  # a failed fork is not tried again for the checks
    assert file_tree(tmp_path / "two") == file_tree(tmp_path / "one")
    assert _check(policy, "2", capsys) == _check(policy, "1", capsys)


def test_options_compile_the_same_with_a_worker(tmp_path, capsys):
    policy = next(p for p in EXAMPLE_FILES if p.name == "dmz.fw")
    status, _, _ = _same_compile(policy, tmp_path, capsys, "--backend", "nftables",
                                 "--redact-secrets")
    assert status == 0


def test_failed_checks_come_before_an_output_error_with_a_worker(tmp_path, capsys):
    # One process stops at the checks and never looks at the output directory.
    policy = _with_errors(tmp_path)
    for jobs in ("1", "2"):
        (tmp_path / f"out{jobs}").mkdir()
        (tmp_path / f"out{jobs}" / "notes.txt").write_text("mine\n", encoding="utf-8")
    one = _compile(policy, tmp_path / "out1", "1", capsys)
    two = _compile(policy, tmp_path / "out2", "2", capsys)
    assert one == two and "error[FWC401]" in one[2] and "nothing written" in one[2]
    assert [p.name for p in (tmp_path / "out2").iterdir()] == ["notes.txt"]
    clean = tmp_path / "repo" / "clean.fw"
    clean.write_text(EDGE_TEXT, encoding="utf-8")
    one = _compile(clean, tmp_path / "out1", "1", capsys)
    assert _compile(clean, tmp_path / "out2", "2", capsys) == one
    assert one[0] == 1 and "holds files fwc did not write" in one[2]


def _fork_then_interrupt(monkeypatch) -> list[int]:
    """os.fork as in a Ctrl-C that lands just as fork returns in the parent (as in CI)."""
    real_fork = os.fork
    forked: list[int] = []

    def fork_then_interrupt() -> int:
        pid = real_fork()
        if pid:
            forked.append(pid)
            os.kill(os.getpid(), signal.SIGINT)
        return pid

    monkeypatch.setattr(os, "fork", fork_then_interrupt)
    return forked


@pytest.fixture
def interrupt_handler():
    """SIGINT's handler for one test, restored after it (another test may have left its
    own: the lab's probe sets one)."""
    before = signal.getsignal(signal.SIGINT)
    yield lambda handler: signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGINT, before)


def _reap(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, ChildProcessError):
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)


def test_a_ctrl_c_during_the_fork_still_kills_and_reaps_the_worker(monkeypatch,
                                                                   interrupt_handler):
    """The interrupt is raised only once the parent holds the Worker, which kills and
    reaps it; nothing is left running."""
    interrupt_handler(signal.default_int_handler)
    forked = _fork_then_interrupt(monkeypatch)
    try:
        with pytest.raises(KeyboardInterrupt):
            parallel.Worker.start(lambda: time.sleep(60))
        assert len(forked) == 1
        with pytest.raises(ChildProcessError):  # reaped: not even a zombie is left
            os.waitpid(forked[0], os.WNOHANG)
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        _reap(forked)


def test_an_ignored_ctrl_c_during_the_fork_leaves_the_worker_running(monkeypatch,
                                                                     interrupt_handler):
    """A parent that ignores SIGINT (started in the background) keeps its worker."""
    interrupt_handler(signal.SIG_IGN)
    forked = _fork_then_interrupt(monkeypatch)
    try:
        worker = parallel.Worker.start(lambda: "done")
        try:
            assert worker.result() == "done"
        finally:
            worker.close()
        assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    finally:
        _reap(forked)


def test_starting_a_worker_leaves_the_interrupt_handler_as_it_was():
    before = signal.getsignal(signal.SIGINT)
    worker = parallel.Worker.start(lambda: True)
    try:
        assert worker.result() is True
    finally:
        worker.close()
    assert signal.getsignal(signal.SIGINT) is before
