"""No hidden state between stages or runs (issue 11).

What a run derives from a policy (firewall address sets, lowered rulesets, the
checks' flows) is memoised on that run's model, not in process-wide tables:
within one run the compiler reuses what the checks lowered, two runs of one
process never share a result, and nothing of a run outlives it.
"""

from __future__ import annotations

import gc
import shutil
from pathlib import Path

from conftest import EDGE

from fwc.backend.lower import lower, options_for
from fwc.backend.output import compile_policy
from fwc.cli import main
from fwc.model import Cluster
from fwc.pipeline import analyse


def _live_clusters(name: str) -> list[Cluster]:
    gc.collect()
    return [o for o in gc.get_objects() if isinstance(o, Cluster) and o.name == name]


def test_one_run_lowers_each_member_once():
    policy = analyse(EDGE).policy
    assert policy is not None
    cluster = policy.clusters[0]
    member = cluster.members[0]
    options = options_for(policy)
    # The checks (parity) already lowered it: compile gets that very ruleset.
    first = lower(cluster, member, 4, options)
    assert lower(cluster, member, 4, options) is first
    assert cluster.firewall_addresses(member) is cluster.firewall_addresses(member)


def test_compile_forgets_a_members_rulesets_once_its_files_are_built():
    policy = analyse(EDGE).policy
    assert policy is not None
    cluster = policy.clusters[0]
    options = options_for(policy)
    checked = [lower(cluster, m, 4, options) for m in cluster.members]  # what the checks used
    first = compile_policy(policy)
    # Not kept to the end of the compile (a 100,000-rule policy holds every member's
    # rulesets otherwise), and lowered afresh, to the same bytes, when asked again.
    assert all(lower(cluster, m, 4, options) is not r for m, r in zip(cluster.members, checked,
                                                                      strict=True))
    assert [f.content for c in compile_policy(policy) for f in c.files] == \
        [f.content for c in first for f in c.files]


def test_two_runs_share_no_result():
    one = analyse(EDGE).policy
    two = analyse(EDGE).policy
    assert one is not None and two is not None
    a, b = one.clusters[0], two.clusters[0]
    options = options_for(one)
    ruleset_a = lower(a, a.members[0], 4, options)
    ruleset_b = lower(b, b.members[0], 4, options)
    assert ruleset_a == ruleset_b  # the same meaning ...
    assert ruleset_a is not ruleset_b  # ... computed by each run for itself
    assert a.firewall_addresses(a.members[0]) is not b.firewall_addresses(b.members[0])


def test_a_changed_policy_is_lowered_again(tmp_path: Path):
    """Same path, same cluster name, new content in a later run of the same process."""
    policy_file = tmp_path / "edge.fw"
    shutil.copy(EDGE, policy_file)
    before = analyse(policy_file).policy
    assert before is not None
    old_text = "\n".join(f.content.decode() for f in compile_policy(before)[0].files
                         if f.path.endswith("iptables.rules"))
    del before
    source = policy_file.read_text()
    assert "tcp/22" in source
    policy_file.write_text(source.replace("tcp/22", "tcp/2222"))
    after = analyse(policy_file).policy
    assert after is not None
    new_text = "\n".join(f.content.decode() for f in compile_policy(after)[0].files
                         if f.path.endswith("iptables.rules"))
    assert "--dport 2222" in new_text
    assert new_text != old_text


def test_nothing_of_a_run_outlives_it(tmp_path: Path):
    """A process-wide memo kept the last clusters (and everything they hold) alive."""
    policy_file = tmp_path / "p.fw"
    text = EDGE.read_text()
    for block in ("cluster", "policy", "nat", "expect"):
        text = text.replace(f"{block} edge {{", f"{block} outlived {{")
    policy_file.write_text(text)
    assert "cluster outlived {" in text
    analysis = analyse(policy_file)
    assert analysis.ok and analysis.policy is not None
    compile_policy(analysis.policy)
    assert _live_clusters("outlived")
    del analysis
    assert _live_clusters("outlived") == []


def test_commands_leave_the_collector_as_they_found_it(tmp_path: Path):
    """`fwc check`/`compile` in-process: collection back on, nothing frozen for good."""
    frozen = gc.get_freeze_count()
    assert gc.isenabled()
    assert main(["check", str(EDGE)]) == 0
    assert main(["compile", str(EDGE), "-o", str(tmp_path / "out")]) == 0
    assert gc.isenabled()
    assert gc.get_freeze_count() == frozen
