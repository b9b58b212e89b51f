"""An apply killed at any point: rollback.sh brings back exactly what ran (root).

The node steps of an install (tests/test_install_netns.py's two-member namespace lab),
run by hand so that the apply can be killed with SIGKILL before each of its steps (and
between a copy and its rename), as a node loses a shell to an OOM kill: the rollback
(fwc's or the watchdog's) must restore the rules, sets, forwarding and files exactly.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import REPO
from test_install_netns import Lab, Node, _lab, blocked_policy, host_etc_lock

from fwc.backend.files import FILES
from fwc.cli import main
from fwc.install import scripts

pytestmark = pytest.mark.root

# fwc's own bookkeeping under /etc/fwc, which every install changes by design.
_BOOKKEEPING = ("snapshot", "staging", "install.lock", "install.owner")
_KILL = "kill -KILL $$"


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    with host_etc_lock():
        yield from _lab(tmp_path, REPO / "output")


def state(node: Node) -> dict[str, object]:
    """What a rollback must restore: rules, sets, forwarding and the node's files
    (a directory the apply made for a file stays, empty)."""
    files = {}
    for path in sorted(node.etc.rglob("*")):
        relative = path.relative_to(node.etc)
        if relative.parts[:1] == ("fwc",) and relative.parts[1:2] \
                and relative.parts[1] in _BOOKKEEPING:
            continue
        if path.is_file():
            files[str(relative)] = path.read_bytes()
    return {"iptables": node.rules(), "ip6tables": node.rules("ip6tables-save"),
            "ipsets": node.exec("ipset save"), "files": files,
            "forward": node.exec("sysctl -n net.ipv4.ip_forward")}


def kill_points(apply: list[str]) -> list[str]:
    """APPLY killed before each of its steps once it holds its lock (a `mkdir -p`
    aside), and in the middle of its first copy (written, not yet renamed)."""
    points = ["\n".join([*apply[:n], _KILL, *apply[n:]]) for n, line in enumerate(apply)
              if n > 3 and not line.startswith("mkdir -p ")]
    first = next(n for n, line in enumerate(apply) if " && mv -f " in line)
    points.append("\n".join([*apply[:first],
                             apply[first].replace(" && mv -f ", f" && {_KILL} && mv -f ")]))
    return points


def test_an_apply_killed_at_any_point_is_rolled_back_exactly(lab, tmp_path):
    fw1 = lab.nodes["fw1"]
    policy = blocked_policy(tmp_path)  # sets, rules, keepalived.conf: all new
    output = tmp_path / "blocked"
    assert main(["compile", str(policy), "-o", str(output)]) == 0
    member = output / "edge" / "fw1"
    files = [f for f in FILES if (member / f.name).exists()]
    contents = {f.name: (member / f.name).read_text() for f in files}
    keys = list(dict.fromkeys(k for f in files if f.target == "sysctl"
                              for k in scripts.sysctl_keys(contents[f.name])))
    fw1.exec("sysctl -q -w net.ipv4.ip_forward=0")
    before = state(fw1)
    points = kill_points(scripts.apply(files, (4, 6)).splitlines())
    assert len(points) > len(files)
    for number, apply in enumerate(points):
        fw1.exec(scripts.take_lock("t1", 60))
        fw1.exec(scripts.refuse_if_pending())
        for file in files:
            fw1.exec(scripts.stage(file), input=contents[file.name])
        fw1.exec(scripts.snapshot(files, keys))
        fw1.exec(scripts.write(scripts.ROLLBACK_SCRIPT, 0o700),
                 input=scripts.rollback_script(files, [], token="t1"))
        fw1.exec(scripts.arm_watchdog(60, token="t1"))
        fw1.exec(apply, check=False)
        assert (fw1.etc / "fwc" / "staging").exists()  # killed before the apply ended
        fw1.exec(scripts.rollback())
        assert state(fw1) == before, f"killed at point {number}:\n{apply.splitlines()[-1]}"
