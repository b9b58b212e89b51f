"""traffic_changes: newly allowed / denied traffic between two versions, in policy terms."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest
from conftest import EDGE_TEXT

from fwc.analysis.describe import Vocabulary
from fwc.analysis.diff import traffic_changes
from fwc.model import Cluster, Policy
from fwc.pipeline import analyse

SOURCE = EDGE_TEXT


def _load(tmp_path: Path, text: str, name: str) -> tuple[Policy, Cluster]:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    analysis = analyse(path, run_checks=False)
    assert analysis.ok and analysis.policy is not None
    return analysis.policy, analysis.policy.clusters[0]


def _changes(tmp_path: Path, new_text: str, whole: bool = False):
    _, old = _load(tmp_path, SOURCE, "old.fw")
    policy, new = _load(tmp_path, new_text, "new.fw")
    return traffic_changes(old, new, Vocabulary.of_policy(policy), whole=whole)


def test_no_change_means_no_traffic_change(tmp_path):
    assert _changes(tmp_path, SOURCE) == []


def test_added_rule_allows_traffic_named_by_objects(tmp_path):
    text = SOURCE.replace("    reject from any",
                          "    accept from any      to server   service ssh\n    reject from any")
    changes = _changes(tmp_path, text)
    assert [(c.verdict, c.text, c.member) for c in changes] == [
        ("allowed", "from any to server service ssh out uplink", None)]
    assert changes[0].where.endswith("new.fw:45")


def test_removed_rule_denies_by_default_policy(tmp_path):
    text = SOURCE.replace("    accept from client   to firewall service ssh\n", "")
    changes = _changes(tmp_path, text)
    assert [(c.verdict, c.text) for c in changes] == [
        ("denied", "from client to firewall service ssh in lan")]
    assert "INPUT" in changes[0].where


def test_widened_object_reports_only_the_new_part(tmp_path):
    text = SOURCE.replace("host    client   192.0.2.10", "network client   192.0.2.8/30")
    changes = _changes(tmp_path, text)
    assert changes and all(c.verdict == "allowed" for c in changes)
    # .10 was allowed before; only the three new addresses are news
    assert all(c.text.startswith("from client except 192.0.2.10 ") for c in changes)


def test_member_scoped_change_names_the_member(tmp_path):
    text = SOURCE.replace("snmp  only fw1", "snmp  only fw2")
    changes = {(c.verdict, c.member) for c in _changes(tmp_path, text)}
    assert changes == {("allowed", "fw2"), ("denied", "fw1")}


def test_reordered_rules_change_only_their_overlap(tmp_path):
    text = SOURCE.replace(
        '    reject from any      to any      service ident\n    drop   from any      to any'
        '      log "default"\n',
        '    drop   from any      to any      log "default"\n'
        '    reject from any      to any      service ident\n')
    changes = _changes(tmp_path, text)
    assert changes == []  # reject and drop both deny: the verdict class does not change


@pytest.mark.parametrize("edit", [
    ("198.51.100.254/24", "198.51.100.253/24"),  # a VIP moves
    ("192.0.2.1/24, 2001", "192.0.2.3/24, 2001"),  # a member address changes
    ("-> web\n", "-> client\n"),  # a dnat target changes
    ("accept from desktops", "accept from client"),  # a rule narrows
])
def test_narrowed_comparison_equals_the_whole_space(tmp_path, edit):
    text = SOURCE.replace(*edit)
    assert text != SOURCE
    narrowed = [(c.verdict, c.text, c.where, c.member) for c in _changes(tmp_path, text)]
    whole = [(c.verdict, c.text, c.where, c.member) for c in _changes(tmp_path, text, True)]
    assert narrowed == whole
    assert narrowed, "each of these edits changes some traffic"


def test_vip_move_reports_old_vip_as_plain_address(tmp_path):
    text = SOURCE.replace("198.51.100.254/24", "198.51.100.253/24")
    texts = {(c.verdict, c.text) for c in _changes(tmp_path, text)}
    assert ("denied", "from client to 198.51.100.254 (in uplink) service ssh in lan out uplink") \
        in texts
    assert ("allowed", "from client to uplink.vip service ssh in lan") in texts


def test_a_changed_default_policy_is_a_traffic_change(tmp_path):
    """`default { output drop }` added, no rule changed: the firewall's own traffic that
    no rule accepts is now dropped. The comparison looked only where rules differ, so
    `fwc diff` reported no traffic change at all (and no setting either)."""
    text = SOURCE.replace("    interface lan ", "    default { output drop }\n    interface lan ")
    changes = _changes(tmp_path, text)
    assert changes and all(c.verdict == "denied" for c in changes)
    assert all("OUTPUT (drop)" in c.where for c in changes)
    assert any(c.text.startswith("from firewall to any except ") for c in changes)
    # and back: the same traffic newly allowed
    _, old = _load(tmp_path, text, "old2.fw")
    policy, new = _load(tmp_path, SOURCE, "new2.fw")
    back = traffic_changes(old, new, Vocabulary.of_policy(policy))
    # The same traffic, but not always the same lines: allowed again, the firewall's own
    # packets from its addresses inside `lan` are also translated by edge's snat (the
    # snat source keeps the firewall's addresses, as compiled), so their lines are
    # split by source address where the denied ones are one.
    assert back and all(c.verdict == "allowed" for c in back)
    assert all(c.text.startswith("from firewall ") or " (firewall) to " in c.text
               for c in back)
    whole = [(c.verdict, c.text) for c in _changes(tmp_path, text, whole=True)]
    assert whole == [(c.verdict, c.text) for c in changes]


EDGE_WEB_RULE = "    accept from any      to web      service web   in uplink\n"


def test_a_rule_for_a_dnat_target_changes_the_published_traffic(tmp_path):
    """edge.fw publishes web on uplink.vip (`dnat ... -> web`); the filter sees those
    packets with web as their destination. Adding (or removing) the rule that accepts
    them opens (or closes) the published service, but only the direct traffic to web
    was reported: the region compared held the rule's box, not the packets to the VIP
    that the dnat translates into it."""
    assert EDGE_WEB_RULE in SOURCE
    without = SOURCE.replace(EDGE_WEB_RULE, "")
    _, old = _load(tmp_path, without, "old.fw")
    policy, new = _load(tmp_path, SOURCE, "new.fw")
    opened = traffic_changes(old, new, Vocabulary.of_policy(policy))
    vip = (int(ipaddress.ip_address("198.51.100.254")),) * 2
    assert opened and all(c.verdict == "allowed" for c in opened)
    assert any(vip in box.dst for c in opened for box in c.boxes), [str(c) for c in opened]
    closed = _changes(tmp_path, without)
    assert closed and all(c.verdict == "denied" for c in closed)
    assert any(vip in box.dst for c in closed for box in c.boxes), [str(c) for c in closed]


def test_backends_of_a_shared_dnat_are_each_compared_with_their_own(tmp_path):
    """`dnat ... -> web, client` shares load; only web is accepted. A rule that changes
    nothing for those packets (the filter sees web or client, never the VIP) made the
    comparison pair web's piece now with client's then: a newly allowed and a newly
    denied line for a change that did not happen."""
    shared = SOURCE.replace("in uplink -> web\n", "in uplink -> web, client\n")
    _, old = _load(tmp_path, shared, "old.fw")
    text = shared.replace(EDGE_WEB_RULE, EDGE_WEB_RULE
                          + "    drop   from any      to uplink.vip service web\n")
    policy, new = _load(tmp_path, text, "new.fw")
    assert traffic_changes(old, new, Vocabulary.of_policy(policy)) == []


def test_a_dnat_that_sends_accepted_traffic_elsewhere_is_reported(tmp_path):
    """`host web` moved while the filter accepts web traffic to all of lan: the published
    service now reaches another host, accepted either way. No verdict changed, so the
    summary said nothing (no statement changed either: the object did)."""
    lan_wide = SOURCE.replace(EDGE_WEB_RULE, EDGE_WEB_RULE.replace("to web ", "to lan "))
    _, old = _load(tmp_path, lan_wide, "old.fw")
    policy, new = _load(tmp_path, lan_wide.replace("host    web      192.0.2.80",
                                                   "host    web      192.0.2.81"), "new.fw")
    changes = traffic_changes(old, new, Vocabulary.of_policy(policy))
    assert [(c.verdict, c.text, c.member) for c in changes] == [
        ("allowed", "from any except 192.0.2.0/24, 203.0.113.0/24 to uplink.vip service web "
         "in uplink (now dnat to 192.0.2.81)", None)]
