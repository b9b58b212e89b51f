"""A rule is lowered once for the members that read it alike (issue 12).

`lower()` shares each rule's lowering between members whose relevant facts are
equal (`fwc.backend.lower.build.SharedLowering`): a rule that names no
firewall address of any member is made once per (rule, devices of its `in`/
`out`). These tests hold the shared result equal to lowering every member on
its own, keep the shared lines the same objects across members, and check the
premise (`semantics.reads_firewall`) against `side_of` on random endpoints.
"""

from __future__ import annotations

from pathlib import Path

from conftest import Examples, write_policy
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from fwc.backend.lower import build, lower, options_for
from fwc.backend.lower.build import SharedLowering, _Lowering
from fwc.model import Endpoint, EndpointItem, Policy
from fwc.model.addresses import AddressSet
from fwc.model.semantics import reads_firewall, side_of
from fwc.model.vocabulary import BuiltinChain
from fwc.pipeline import analyse

# Three members: fw1 and fw3 share their device names, fw2 has its own. Rules that
# read the firewall (keyword, `!firewall`, a VIP, a member's address), notrack,
# a helper, logging over several lines, exclusions, `only`, in/out on each side.
POLICY = """\
network lan      192.0.2.0/24
network lan6     2001:db8:1::/64
network uplink   198.51.100.0/24
host    client   192.0.2.10
host    web      192.0.2.80
host    web6     2001:db8:1::80
host    fw1addr  192.0.2.1
host    resolver 198.51.100.53
range   guests   192.0.2.100-192.0.2.103
service ssh      tcp/22
service web      tcp/80,443
service dns      udp/53
service ping     icmp/echo-request, icmpv6/echo-request
service ftp      tcp/21 helper ftp

cluster edge {
    vrrp { password "s3cret"  advert 1s  vrid 51 }
    sync { link sync  mode notrack  multicast 225.0.0.50 port 3780 }  # FTFW is for pairs (FWC224)
    interface lan    vip 192.0.2.254/24, 2001:db8:1::fe/64
    interface uplink vip 198.51.100.254/24  vrid 52
    interface sync
    member fw1 priority 150 {
        lan    eth0 192.0.2.1/24, 2001:db8:1::1/64
        uplink eth1 198.51.100.1/24
        sync   eth2 203.0.113.1/24
    }
    member fw2 priority 100 {
        lan    lan0 192.0.2.2/24, 2001:db8:1::2/64
        uplink wan0 198.51.100.2/24
        sync   eth9 203.0.113.2/24
    }
    member fw3 priority 50 {
        lan    eth0 192.0.2.3/24, 2001:db8:1::3/64
        uplink eth1 198.51.100.3/24
        sync   eth2 203.0.113.3/24
    }
}

policy edge {
    accept from client   to firewall service ssh in lan
    accept from lan      to fw1addr  service ping only fw1
    accept from lan      to resolver service dns notrack
    accept from resolver to lan      notrack
    accept from lan, !guests to any  service web out uplink log "web"
    accept from lan6     to web6     service web
    accept from any      to firewall, web service ping
    accept from any, !firewall to uplink service ssh in lan
    accept from !client  to uplink.vip service ssh only fw1
    accept from lan      to uplink   service ftp
    accept from lan      to web      service web, ssh log
    reject from any, !lan to any     service ssh
    drop   from any      to any      log
}
"""


def _analysed(path: Path) -> Policy:
    analysis = analyse(path)
    errors = [f"{d.code} {d.message}" for d in analysis.diagnostics if d.is_error]
    assert not errors, errors
    assert analysis.policy is not None
    return analysis.policy


def _every_ruleset_equals_its_own_lowering(policy: Policy) -> int:
    options = options_for(policy)
    compared = 0
    for cluster in policy.clusters:
        for member in cluster.members:
            for family in sorted(cluster.families):
                alone = _Lowering(cluster, member, family, options).build()
                assert lower(cluster, member, family, options) == alone, \
                    (cluster.name, member.name, family)
                compared += 1
    return compared


def test_shared_lowering_equals_each_member_lowered_alone(tmp_path: Path):
    policy = _analysed(write_policy(tmp_path, POLICY))
    assert _every_ruleset_equals_its_own_lowering(policy) == 6
    cluster = policy.clusters[0]
    options = options_for(policy)
    shared = cluster.memo.get(("lower-shared", 4, options), lambda: None)
    assert isinstance(shared, SharedLowering)
    # the rules that read a firewall address are lowered per member, the others once
    per_member = [r.source.label + " -> " + r.destination.label
                  for r, alone in zip(cluster.rules, shared.per_member, strict=True) if alone]
    assert per_member == ["client -> firewall", "lan -> fw1addr", "any -> firewall, web",
                          "any, !firewall -> uplink", "!client -> uplink.vip"]


def test_every_example_lowers_as_each_member_alone(examples: Examples):
    assert sum(_every_ruleset_equals_its_own_lowering(e.policy) for e in examples.all()) > 10


def test_members_with_equal_devices_share_the_same_rule_objects(tmp_path: Path):
    policy = _analysed(write_policy(tmp_path, POLICY))
    cluster = policy.clusters[0]
    options = options_for(policy)
    fw1, fw2, fw3 = (lower(cluster, m, 4, options) for m in cluster.members)
    shared = cluster.memo.get(("lower-shared", 4, options), lambda: None)
    assert isinstance(shared, SharedLowering)
    alone = {id(rule) for rule, flag in zip(cluster.rules, shared.per_member, strict=True)
             if flag}
    forward = [r for _, chain, r in fw1.rules() if chain == BuiltinChain.FORWARD
               and r.origin.kind == "policy" and id(r.origin.rule) not in alone]
    assert len(forward) > 5
    same_devices = {id(r) for _, chain, r in fw3.rules() if chain == BuiltinChain.FORWARD}
    other_devices = {id(r) for _, chain, r in fw2.rules() if chain == BuiltinChain.FORWARD}
    # fw3 has fw1's devices: every policy line of FORWARD is fw1's own object
    assert all(id(r) in same_devices for r in forward)
    # fw2's devices differ: lines with a device are its own, lines without one shared
    with_device = [r for r in forward if r.match.in_device or r.match.out_device]
    without = [r for r in forward if not (r.match.in_device or r.match.out_device)]
    assert with_device and without
    assert not any(id(r) in other_devices for r in with_device)
    assert all(id(r) in other_devices for r in without)
    # and INPUT lines to a member's own addresses are never shared
    own = [r for _, chain, r in fw1.rules() if chain == BuiltinChain.INPUT
           and "192.0.2.1" in r.match.destination.cidrs]
    fw3_input = {id(r) for _, chain, r in fw3.rules() if chain == BuiltinChain.INPUT}
    assert own and not any(id(r) in fw3_input for r in own)


# -- the premise, against side_of on random endpoints ------------------------------------------

_spans = st.lists(st.tuples(st.integers(0, 63), st.integers(0, 7)), max_size=3)


def _set(spans: list[tuple[int, int]]) -> AddressSet:
    from fwc.model.intervals import normalise
    return AddressSet(normalise((low, min(63, low + width)) for low, width in spans))


_items = st.lists(st.tuples(st.sampled_from(["object", "object", "any", "firewall"]),
                            st.booleans(), _spans), min_size=1, max_size=4)


@settings(max_examples=300, deadline=None)
@given(_items, st.lists(_spans, min_size=1, max_size=3))
def test_a_side_that_reads_no_firewall_reads_alike_on_every_member(items, firewalls):
    endpoint = Endpoint(tuple(
        EndpointItem(kind, kind, _set(spans) if kind == "object" else AddressSet(), negated,
                     None) for kind, negated, spans in items))
    members = [_set(spans) for spans in firewalls]
    union = AddressSet.union(members)
    assume(not reads_firewall(endpoint, union, 4))
    empty = side_of(endpoint, AddressSet(), 4)
    assert empty.firewall == AddressSet()
    for fw in members:
        assert side_of(endpoint, fw, 4) == empty


def test_the_plain_verdict_shortcuts_lower_as_final_does(examples: Examples, tmp_path: Path,
                                                         monkeypatch):
    """`plain_verdict` and `plain_reject` let the lowering write a rule's verdict lines
    without `final`: every example and the policy above lower to the same rulesets with
    the shortcuts switched off, so the shortcuts leave nothing out that `final` would
    write."""
    policies = [e.policy for e in examples.all()]
    policies.append(_analysed(write_policy(tmp_path, POLICY)))
    with_shortcuts = []
    for policy in policies:
        options = options_for(policy)
        with_shortcuts.append([_Lowering(cluster, member, family, options).build()
                               for cluster in policy.clusters for member in cluster.members
                               for family in sorted(cluster.families)])
    plain = [r for p in policies for c in p.clusters for r in c.rules if build.plain_verdict(r)]
    assert len(plain) > 20  # the shortcuts are taken, not vacuous
    rejects = [r for p in policies for c in p.clusters for r in c.rules
               if build.plain_reject(r)]
    assert rejects  # (the reject shortcut too)
    monkeypatch.setattr(build, "plain_verdict", lambda rule: False)
    monkeypatch.setattr(build, "plain_reject", lambda rule: False)
    for policy, expected in zip(policies, with_shortcuts, strict=True):
        options = options_for(policy)
        assert [_Lowering(cluster, member, family, options).build()
                for cluster in policy.clusters for member in cluster.members
                for family in sorted(cluster.families)] == expected
