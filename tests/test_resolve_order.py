"""Definition order of groups and services: networkx only where definitions nest (issue 11).

Flat membership (no group contains a group with members) is ordered without the
graph library, in exactly the order networkx's topological sort gives; nested
definitions and cycles go through networkx, imported only then.
"""

from __future__ import annotations

import subprocess
import sys

import networkx as nx
from conftest import REPO, write_policy
from hypothesis import given, settings
from hypothesis import strategies as st

from fwc.frontend.resolve import flat_order

NAMES = list("abcdefgh")


def networkx_order(members: dict[str, list[str]]) -> list[str]:
    """What Resolver.definition_order computes with networkx for an acyclic graph."""
    graph: nx.DiGraph = nx.DiGraph()
    for name, contained in members.items():
        graph.add_node(name)
        graph.add_edges_from((name, other) for other in contained if other in members)
    return list(reversed(list(nx.topological_sort(graph))))


@st.composite
def memberships(draw: st.DrawFn) -> dict[str, list[str]]:
    names = draw(st.lists(st.sampled_from(NAMES), unique=True, min_size=1))
    # unknown names ("x", "y") are left out of the graph, as undefined members are
    return {name: draw(st.lists(st.sampled_from(NAMES + ["x", "y"]), max_size=6))
            for name in names}


@settings(max_examples=400, deadline=None)
@given(memberships())
def test_flat_order_is_the_topological_order_of_networkx(members):
    flat = flat_order(members)
    nested = any(other in members for names in members.values() for child in names
                 if child in members for other in members[child])
    if nested:
        assert flat is None
    else:
        assert flat == networkx_order(members)


def test_flat_order_of_a_typical_policy():
    members = {"client": [], "guests": [], "desktops": ["client", "guests", "client"],
               "monitor": [], "ops": ["monitor", "guests"]}
    assert flat_order(members) == networkx_order(members) == [
        "guests", "monitor", "client", "ops", "desktops"]


def test_nesting_and_self_containment_need_the_graph():
    assert flat_order({"a": [], "g": ["a"], "h": ["g"]}) is None
    assert flat_order({"g": ["g"]}) is None


def modules_loaded(*args: str) -> set[str]:
    code = ("import sys\nfrom fwc.cli import main\n"
            "try:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
            "print('\\n'.join(sys.modules), file=sys.stderr)\n")
    result = subprocess.run([sys.executable, "-c", code, *args], cwd=REPO, capture_output=True,
                            text=True, timeout=120)
    return set(result.stderr.split())


def test_version_and_a_flat_policy_do_not_import_networkx():
    assert "fwc.cli" in modules_loaded("--version")
    assert "networkx" not in modules_loaded("--version")
    loaded = modules_loaded("check", "policies/edge.fw")
    assert "fwc.frontend.resolve" in loaded
    assert "networkx" not in loaded


NESTED = """\
host    a   192.0.2.1
host    b   192.0.2.2
group   ab  a, b
group   all ab
group   loop1 loop2
group   loop2 loop1
"""


def test_nested_groups_resolve_through_networkx(tmp_path):
    path = write_policy(tmp_path, NESTED)
    loaded = modules_loaded("check", str(path))
    assert "networkx" in loaded
    from fwc.pipeline import analyse

    analysis = analyse(path)
    assert analysis.policy is not None
    assert analysis.policy.objects["all"].addresses == analysis.policy.objects["ab"].addresses
    (cycle,) = [d for d in analysis.diagnostics if d.code == "FWC108"]
    assert "loop1 -> loop2 -> loop1" in cycle.message
