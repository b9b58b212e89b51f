"""Shared test fixtures.

Tests that need root and network namespaces use the `needs_root` fixture (or the
`root` marker). In CI (CI=true) they must run: a missing capability fails the
test. Off CI they are skipped with the reason printed.

The example policies are analysed and compiled once per session (`examples`);
tests that only read the result share it, tests that change a policy analyse
their own copy.

Helpers every module uses live here, once: REPO, EDGE (and EDGE_TEXT, and
`with_core_cluster` for a second cluster on its segments), the example
files; `file_tree` (a written tree with modes), `compile_to` (fwc compile in this
process), `run_fwc` (the checkout's fwc in a child process), `fwc_diff`, `git`, `sh`
and the scratch git repository `repo`. The check tests' own (a policy to mutate,
lookups by code, `compiled_files`) are in checkkit.py.
"""

from __future__ import annotations

import os
import pty
import shutil
import stat
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import pytest

from fwc.backend.output import (
    ClusterOutput,
    compile_policy,
    policy_name,
    write_output,
)
from fwc.cli import main
from fwc.model import Policy
from fwc.pipeline import Analysis, analyse

REPO = Path(__file__).resolve().parent.parent
# No test reads or fills the user's result cache (~/.cache/fwc) unless it asks to
# (tests/test_cache.py gives its commands a private one): a cache hit would also skip
# the progress and the passes other tests watch. Inherited by the fwc processes tests run.
os.environ.setdefault("FWC_NO_CACHE", "1")
POLICIES = REPO / "policies"
EDGE = POLICIES / "edge.fw"
EDGE_TEXT = EDGE.read_text(encoding="utf-8")
EXAMPLE_FILES = sorted(POLICIES.glob("*.fw"))
# edge's cluster body renumbered for a second cluster on its segments: the members' and the
# VIPs' addresses of one segment belong to one cluster only (FWC288)
_CORE_ADDRESSES = (("192.0.2.1/", "192.0.2.11/"), ("192.0.2.2/", "192.0.2.12/"),
                   ("2001:db8:1::1/", "2001:db8:1::11/"), ("2001:db8:1::2/", "2001:db8:1::12/"),
                   ("198.51.100.1/", "198.51.100.11/"), ("198.51.100.2/", "198.51.100.12/"),
                   ("203.0.113.1/", "203.0.113.11/"), ("203.0.113.2/", "203.0.113.12/"),
                   ("192.0.2.254/", "192.0.2.244/"), ("2001:db8:1::fe/", "2001:db8:1::f4/"),
                   ("198.51.100.254/", "198.51.100.244/"), ("vrid 51", "vrid 61"),
                   ("vrid 52", "vrid 62"), ("port 3780", "port 3790"))


def with_core_cluster(text: str) -> str:
    """TEXT (edge.fw's) with a second cluster `core` after it: edge's cluster on the same
    segments with VRIDs (FWC210), a sync port (FWC225) and addresses (FWC288) of its own."""
    core = text.split("cluster edge {")[1].split("policy edge {")[0]
    for old, new in _CORE_ADDRESSES:
        assert old in core, old  # edge.fw changed: keep the copy apart from it
        core = core.replace(old, new)
    return text + "\ncluster core {" + core
EXAMPLE_NAMES = [p.name for p in EXAMPLE_FILES]
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
REQUIRED_TOOLS = ("ip", "iptables-restore", "ip6tables-restore", "nft", "keepalived", "conntrackd",
                  "nsenter", "unshare")


def _root_problem() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespaces)"
    missing = [t for t in REQUIRED_TOOLS if shutil.which(t) is None]
    if missing:
        return f"missing tools: {', '.join(missing)} (tests/run.sh installs them)"
    probe = subprocess.run(["ip", "netns", "add", f"fwcprobe{os.getpid()}"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        return f"cannot create network namespaces: {probe.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", f"fwcprobe{os.getpid()}"], capture_output=True)
    return None


_ROOT_PROBLEM: list[str | None] = []


def root_problem() -> str | None:
    if not _ROOT_PROBLEM:
        _ROOT_PROBLEM.append(_root_problem())
    return _ROOT_PROBLEM[0]


BOOT_ID = Path("/proc/sys/kernel/random/boot_id").read_text().strip()


def watchdog_record(pid: int, boot_id: str = BOOT_ID) -> str:
    """What watchdog.pid holds for the watchdog PID of the boot BOOT_ID (this one unless
    told): fwc.backend.probation's record, PID, boot id and start time."""
    started = Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()[19]
    return f"{pid} {boot_id} {started}\n"


def cannot_run(problem: str) -> NoReturn:
    """A test that cannot run here: fail in CI, elsewhere skip with the reason printed."""
    if IN_CI:
        pytest.fail(f"CI must run this test, but: {problem}")
    print(f"\nSKIP (not CI): {problem}", file=sys.stderr)
    pytest.skip(problem)


def skip_or_fail_without_root() -> None:
    """When root tests cannot run here: fail in CI, elsewhere skip with the reason printed."""
    problem = root_problem()
    if problem is not None:
        cannot_run(problem)


@pytest.fixture
def needs_root() -> None:
    skip_or_fail_without_root()


# The slowest groups (namespace labs with real daemons, a real Ansible run): under
# pytest-xdist (`-n N --dist loadgroup`, tests/run.sh) they are queued first, so that
# the long ones do not start last. A module's tests share a worker (its module-scoped
# fixtures are built once), except the lab tests that do not need the edge lab fixture.
SLOW_FIRST = ("tests/test_lab.py", "tests/test_lab_gateway.py", "tests/test_ansible_netns.py",
              "tests/test_lab_groups.py", "tests/test_lab_optimised.py",
              "tests/test_lab_nft.py", "tests/test_lab_reboot.py")
ONE_GROUP_PER_TEST = ("tests/test_lab.py",)


def _group(item: pytest.Item) -> str:
    module = item.nodeid.split("::")[0]
    if module in ONE_GROUP_PER_TEST and "edge_lab" not in item.fixturenames:
        return item.nodeid
    return module


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups off the markers
def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.get_closest_marker("root") or item.get_closest_marker("lab"):
            item.fixturenames.insert(0, "needs_root")
        item.add_marker(pytest.mark.xdist_group(_group(item)))
    slow = {module: rank for rank, module in enumerate(SLOW_FIRST)}
    items.sort(key=lambda item: slow.get(item.nodeid.split("::")[0], len(slow)))


@pytest.fixture
def policies() -> Path:
    return POLICIES


# -- helpers every test module shares (one copy each) ----------------------------------------

def file_tree(directory: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under DIRECTORY by its relative path: its bytes and permission bits."""
    return {str(p.relative_to(directory)): (p.read_bytes(), stat.S_IMODE(p.stat().st_mode))
            for p in sorted(directory.rglob("*")) if p.is_file()}


def compile_to(policy: Path, out: Path, *extra: str) -> int:
    """`fwc compile POLICY -o OUT EXTRA...` in this process; its exit code."""
    return main(["compile", str(policy), "-o", str(out), *extra])


def run_on_terminal(*argv: str, cwd: Path) -> tuple[int, str, str]:
    """`python -m fwc ARGV` with stderr on a pseudo-terminal: (exit code, stdout, what
    the terminal got). Stdout goes to a file in CWD: a large report must not fill a
    pipe nobody reads while the terminal is drained."""
    master, slave = pty.openpty()
    env = dict(os.environ, PYTHONPATH=str(REPO))
    stdout = cwd / ".stdout-on-terminal"
    with open(stdout, "wb") as sink:
        child = subprocess.Popen([sys.executable, "-m", "fwc", *argv], cwd=cwd, env=env,
                                 stdin=subprocess.DEVNULL, stdout=sink, stderr=slave)
        os.close(slave)
        received = b""
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            received += chunk
        os.close(master)
        code = child.wait(timeout=120)
    out = stdout.read_text(encoding="utf-8", errors="replace")
    stdout.unlink()
    return code, out, received.decode(errors="replace")


def leftovers(*directories: Path) -> list[str]:
    """The staging copies and swapped-out trees (`.fwc-`) left in DIRECTORIES."""
    return sorted(p.name for d in directories for p in d.iterdir() if ".fwc-" in p.name)


@pytest.fixture
def cache_home(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A private $XDG_CACHE_HOME with the cache on (never under the shared temporary
    directory, which fwc refuses), removed afterwards."""
    home = Path.home() / ".cache" / f"fwc-test-{uuid.uuid4().hex[:12]}"
    home.mkdir(mode=0o700, parents=True)
    monkeypatch.setenv("XDG_CACHE_HOME", str(home))
    monkeypatch.delenv("FWC_NO_CACHE", raising=False)
    yield home
    shutil.rmtree(home, ignore_errors=True)


def run_fwc(*args: str, cwd: Path | None = None, stdin: str | None = None,
            env: dict[str, str] | None = None, clean_env: bool = False, timeout: float = 60,
            preexec_fn: Callable[[], None] | None = None) -> subprocess.CompletedProcess[str]:
    """`python -m fwc ARGS` of this checkout (PYTHONPATH=REPO) in a child process, its
    output captured as text. The child inherits this process's environment plus ENV; with
    CLEAN_ENV only PATH=/usr/bin:/bin and ENV (no fwc.toml-, cache- or CI variables)."""
    base = {"PATH": "/usr/bin:/bin"} if clean_env else dict(os.environ)
    return subprocess.run([sys.executable, "-m", "fwc", *args], input=stdin, cwd=cwd,
                          env={**base, "PYTHONPATH": str(REPO), **(env or {})},
                          capture_output=True, text=True, timeout=timeout,
                          preexec_fn=preexec_fn)


def sh(*argv: str, input: str | None = None, check: bool = True, timeout: float = 30) -> str:
    """ARGV's output (no shell); with CHECK a failure is an AssertionError naming it."""
    proc = subprocess.run(list(argv), input=input, capture_output=True, text=True,
                          timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(argv)}: {proc.stderr.strip()}")
    return proc.stdout


def git(repo: Path, *args: str) -> str:
    """`git -C REPO ARGS` (as a test identity, whatever the machine's git config), its
    output stripped; a failure raises."""
    return subprocess.run(["git", "-C", str(repo), "-c", "user.email=test@example.org",
                           "-c", "user.name=test", *args], check=True, capture_output=True,
                          text=True).stdout.strip()


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A scratch git repository (tmp/fw, the working directory) whose one commit holds
    policies/edge.fw."""
    root = tmp_path / "fw"
    (root / "policies").mkdir(parents=True)
    git(root, "init", "-q")
    git(root, "config", "user.email", "test@example.org")
    git(root, "config", "user.name", "test")
    (root / "policies" / "edge.fw").write_text(EDGE_TEXT, encoding="utf-8")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "edge policy")
    monkeypatch.chdir(root)
    return root


def fwc_diff(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """`fwc diff --no-color ARGS` in this process: exit code, stdout, stderr."""
    code = main(["diff", "--no-color", *args])
    out, err = capsys.readouterr()
    return code, out, err


def write_policy(tmp_path: Path, text: str, name: str = "p.fw") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


@dataclass(frozen=True)
class CompiledExample:
    """One example policy, analysed (checks included) and compiled as `fwc compile` does."""

    path: Path
    analysis: Analysis
    clusters: tuple[ClusterOutput, ...]
    out: Path  # the directory `fwc compile -o` would have written: out/<cluster>/...

    @property
    def policy(self) -> Policy:
        assert self.analysis.policy is not None, self.path
        return self.analysis.policy

    def tree(self) -> dict[str, bytes]:
        """Every written file by its path under `out` (`edge/fw1/iptables.rules`)."""
        return {str(p.relative_to(self.out)): p.read_bytes()
                for p in sorted(self.out.rglob("*")) if p.is_file()}

    def files(self, cluster: str | None = None) -> dict[str, bytes]:
        """The files of one cluster (the only one when not named) by `<member>/<name>`."""
        (chosen,) = [c for c in self.clusters if cluster is None or c.name == cluster]
        return {f.path: f.content for f in chosen.files}


class Examples:
    """The example policies by file name, each compiled on first use, once per session."""

    def __init__(self, base: Path) -> None:
        self._base = base
        self._done: dict[str, CompiledExample] = {}

    def __getitem__(self, name: str) -> CompiledExample:
        if name not in self._done:
            self._done[name] = self._compile(POLICIES / name)
        return self._done[name]

    def all(self) -> list[CompiledExample]:
        return [self[name] for name in EXAMPLE_NAMES]

    def _compile(self, path: Path) -> CompiledExample:
        # The three calls of `fwc compile FILE -o DIR` (fwc/commands/compile.py) with its
        # defaults, so that the written tree is byte for byte what the command writes.
        analysis = analyse(path)
        assert analysis.ok, [f"{d.code} {d.span}: {d.message}" for d in analysis.diagnostics]
        policy = analysis.policy
        assert policy is not None
        clusters = compile_policy(policy)
        out = self._base / path.stem
        write_output(out, policy_name(policy), clusters)
        return CompiledExample(path, analysis, tuple(clusters), out)


@pytest.fixture(scope="session")
def examples(tmp_path_factory: pytest.TempPathFactory) -> Examples:
    return Examples(tmp_path_factory.mktemp("examples"))


@pytest.fixture
def edge(tmp_path: Path) -> Path:
    """A private copy of policies/edge.fw (tmp/src/edge.fw) that a test may change."""
    path = tmp_path / "src" / "edge.fw"
    path.parent.mkdir()
    path.write_text(EDGE_TEXT, encoding="utf-8")
    return path


def edge_files() -> dict[str, str]:
    """policies/edge.fw compiled in memory: its cluster's files by `<member>/<file>`."""
    policy = analyse(EDGE).policy
    assert policy is not None
    return {f.path: f.content.decode() for f in compile_policy(policy)[0].files}


@contextmanager
def node_namespace(prefix: str, addresses: Mapping[str, tuple[str, ...]]) -> Iterator[str]:
    """A network namespace named PREFIX + this process's PID, holding one veth device per
    key of ADDRESSES (its peer `p<device>` inside too, both up) with those addresses, in
    that order (the first IPv4 one is the device's primary address). Deleted at the end,
    with everything in it."""
    name = f"{prefix}{os.getpid()}"
    try:
        subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
        for device, held in addresses.items():
            peer = f"p{device}"
            subprocess.run(["ip", "-n", name, "link", "add", device, "type", "veth", "peer",
                            "name", peer], check=True, capture_output=True)
            for argv in (["link", "set", peer, "up"], ["link", "set", device, "up"],
                         *(["addr", "add", a, "dev", device, "nodad"] for a in held)):
                subprocess.run(["ip", "-n", name, *argv], check=True, capture_output=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)
