"""Members' files differ only in node-specific values (issue 3).

For every example policy and every pair of members, each generated file is
compared line by line: where two lines differ, every differing word must be a
node-specific value (a member's address, device, priority or name). Lines of
member-scoped (`only`) rules are the one legitimate exception and are set aside.
"""

from __future__ import annotations

import re

import pytest
from conftest import EXAMPLE_NAMES, Examples

from fwc.backend.lower import LowerOptions, options_for, source_label
from fwc.model import Cluster


def node_values(cluster: Cluster) -> set[str]:
    values: set[str] = set()
    for member in cluster.members:
        values |= {member.name, str(member.priority)}
        for link in member.links:
            values.add(link.device)
            for address in link.addresses:
                values |= {str(address.ip), str(address)}
    return values


def only_rule_comments(cluster: Cluster, options: LowerOptions) -> set[str]:
    return {source_label(r.span.file, r.span.line, options)
            for r in cluster.all_rules() if r.only is not None}


WORD = re.compile(r'[^\s"]+')


CONTENT_NAME = re.compile(r"@?(fwc[46]|ports)\.[0-9a-f]{12}(-\d+)?")


def words(line: str) -> list[str]:
    # an nft set element ends in a comma
    return [re.sub(r"/(32|128)$", "", w.rstrip(",")) for w in WORD.findall(line)]


@pytest.mark.parametrize("name", EXAMPLE_NAMES)
def test_members_differ_only_in_node_specific_values(examples: Examples, name: str):
    example = examples[name]
    options = options_for(example.policy)
    for cluster, output in zip(example.policy.clusters, example.clusters, strict=True):
        allowed = node_values(cluster)
        scoped = only_rule_comments(cluster, options)
        files: dict[str, dict[str, str]] = {}
        for f in output.files:
            member, _, name = f.path.partition("/")
            if name:
                files.setdefault(name, {})[member] = f.content.decode()
        compared = 0
        # nft sets are named by a digest of their elements (fwc.backend.render.nftnames):
        # a set of node-specific addresses has another name on each member. Such names
        # may differ, as one consistent renaming per member (its elements are compared
        # line by line like everything else).
        renamed: dict[tuple[int, str], str] = {}  # (member, name on the first) -> name
        for name, by_member in files.items():
            assert set(by_member) == {m.name for m in cluster.members}, name
            texts = [by_member[m.name] for m in cluster.members]
            first = [line for line in texts[0].splitlines()
                     if not any(f'"{c}"' in line for c in scoped)]
            for index, other in enumerate(texts[1:]):
                lines = [line for line in other.splitlines()
                         if not any(f'"{c}"' in line for c in scoped)]
                assert len(first) == len(lines), f"{name}: different number of lines"
                for a, b in zip(first, lines, strict=True):
                    if a == b:
                        continue
                    wa, wb = words(a), words(b)
                    assert len(wa) == len(wb), f"{name}:\n{a}\n{b}"
                    for x, y in zip(wa, wb, strict=True):
                        if x != y and CONTENT_NAME.fullmatch(x) and CONTENT_NAME.fullmatch(y):
                            assert renamed.setdefault((index, x.lstrip("@")), y.lstrip("@")) \
                                == y.lstrip("@"), f"{name}: {x} is named {y} and another"
                            continue
                        if x != y:
                            assert x in allowed and y in allowed, f"{name}:\n{a}\n{b}"
                            compared += 1
        assert compared > 0  # the members really have their own values


def test_a_difference_that_is_not_node_specific_would_be_caught():
    allowed = {"fw1", "fw2", "eth0"}
    a = words("-A FORWARD -s 192.0.2.0/24 -j ACCEPT")
    b = words("-A FORWARD -s 192.0.2.0/25 -j ACCEPT")
    assert [x for x, y in zip(a, b, strict=True) if x != y and x not in allowed] == ["192.0.2.0/24"]
