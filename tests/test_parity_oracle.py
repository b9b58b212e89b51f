"""Parity decided on the model equals parity by lowering every rule on every member.

`fwc.checks.parity.cluster_parity` lowers only the rules that may differ between the
members (`member_dependent`); `compared_parity` lowers and compares all of them, as
the check did before. On small random policies both must report the same.
"""

from __future__ import annotations

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from fwc.backend.lower import options_for
from fwc.checks import parity
from fwc.pipeline import analyse

_MEMBERS = {
    # the same devices on both members
    "same": ("lan eth0 192.0.2.1/24, 2001:db8:1::1/64\n uplink eth1 198.51.100.1/24",
             "lan eth0 192.0.2.2/24, 2001:db8:1::2/64\n uplink eth1 198.51.100.2/24"),
    # fw2's devices swapped: a device name stands for another interface there
    "swapped": ("lan eth0 192.0.2.1/24, 2001:db8:1::1/64\n uplink eth1 198.51.100.1/24",
                "lan eth1 192.0.2.2/24, 2001:db8:1::2/64\n uplink eth0 198.51.100.2/24"),
    # fw2 has no uplink link, and its lan device is named like fw1's uplink interface
    "missing": ("lan eth0 192.0.2.1/24, 2001:db8:1::1/64\n uplink eth1 198.51.100.1/24",
                "lan uplink 192.0.2.2/24, 2001:db8:1::2/64"),
}

_HEAD = """\
network lan      192.0.2.0/24
network lan6     2001:db8:1::/64
host    client   192.0.2.10
host    web      192.0.2.80
host    fw1lan   192.0.2.1
host    fw2lan   192.0.2.2
host    fw2up    198.51.100.2
group   mixed    192.0.2.1, 192.0.2.80
group   both     192.0.2.1, 192.0.2.2

cluster edge {{
    vrrp {{ password "s3cret"  advert 1s  vrid 51 }}
    sync {{ link sync }}
    interface lan    vip 192.0.2.254/24, 2001:db8:1::fe/64
    interface uplink vip 198.51.100.254/24  vrid 52
    interface sync
    member fw1 priority 150 {{
        {fw1}
        sync   eth2 203.0.113.1/24
    }}
    member fw2 priority 100 {{
        {fw2}
        sync   eth2 203.0.113.2/24
    }}
}}
"""

_SIDES = ("any", "firewall", "!firewall", "lan", "client", "web", "fw1lan", "fw2lan",
          "fw2up", "mixed", "both", "lan6", "lan.vip", "uplink.vip", "lan, !fw1lan",
          "any, !client")
_SERVICES = ("", " service tcp/80", " service udp/53, tcp/22")
_SCOPES = ("", " in lan", " out uplink", " in uplink out lan", " only fw1", " only fw2",
           " in sync", " log")
_NAT = ("snat from lan to any out uplink -> uplink.vip",
        "snat from {src} to any out uplink -> fw2up",
        "dnat from any to uplink.vip service tcp/80 in uplink -> {dst}",
        "dnat from any to {dst} service tcp/80 in uplink -> web",
        "nonat from {src} to {dst}",
        "masquerade from {src} to any out uplink{only}")


def _clean(side: str) -> str:
    return side if side not in ("firewall", "!firewall") else "lan"


@settings(max_examples=60, deadline=None, suppress_health_check=[
    HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(st.sampled_from(sorted(_MEMBERS)),
       st.lists(st.tuples(st.sampled_from(("accept", "drop")), st.sampled_from(_SIDES),
                          st.sampled_from(_SIDES), st.sampled_from(_SERVICES),
                          st.sampled_from(_SCOPES)), min_size=1, max_size=8),
       st.lists(st.tuples(st.sampled_from(_NAT), st.sampled_from(_SIDES),
                          st.sampled_from(_SIDES), st.sampled_from(("", " only fw1"))),
                max_size=3))
def test_parity_on_the_model_equals_lowering_everything(tmp_path, members, drawn, nats):
    fw1, fw2 = _MEMBERS[members]
    lines = [f"    {action} from {src} to {dst}{svc}{scope}"
             for action, src, dst, svc, scope in drawn]
    nat = [f"    {form.format(src=_clean(src), dst=_clean(dst), only=only)}"
           for form, src, dst, only in nats]
    text = (_HEAD.format(fw1=fw1, fw2=fw2) + "policy edge {\n" + "\n".join(lines) + "\n}\n"
            + ("nat edge {\n" + "\n".join(nat) + "\n}\n" if nat else ""))
    path = tmp_path / "oracle.fw"
    path.write_text(text, encoding="utf-8")
    analysis = analyse(path, run_checks=False)
    assume(analysis.policy is not None)
    cluster = analysis.policy.clusters[0]
    options = options_for(analysis.policy)
    fast = list(parity.cluster_parity(cluster, options))
    assert fast == list(parity.compared_parity(cluster, options))


def test_the_oracle_sees_both_codes(tmp_path):
    """The random policies above do reach FWC301 and FWC302 (the oracle is not vacuous)."""
    fw1, fw2 = _MEMBERS["same"]
    text = (_HEAD.format(fw1=fw1, fw2=fw2) + "policy edge {\n"
            "    accept from lan to fw1lan service tcp/80\n"
            "    accept from lan to web only fw1\n"
            "    accept from client to web\n}\n")
    path = tmp_path / "p.fw"
    path.write_text(text, encoding="utf-8")
    analysis = analyse(path, run_checks=False)
    assert analysis.policy is not None
    cluster = analysis.policy.clusters[0]
    options = options_for(analysis.policy)
    fast = list(parity.cluster_parity(cluster, options))
    assert sorted(d.code for d in fast) == ["FWC301", "FWC302"]
    assert fast == list(parity.compared_parity(cluster, options))


def test_neutral_rules_are_not_lowered(tmp_path):
    """Rules that cannot differ between members stay out of the lowered copy."""
    fw1, fw2 = _MEMBERS["same"]
    text = (_HEAD.format(fw1=fw1, fw2=fw2) + "policy edge {\n"
            "    accept from lan to web service tcp/80 in lan\n"
            "    accept from client to uplink.vip\n"
            "    accept from lan to fw1lan\n"
            "    accept from client to firewall service tcp/22\n"
            "    accept from client to web only fw2\n}\n")
    path = tmp_path / "p.fw"
    path.write_text(text, encoding="utf-8")
    analysis = analyse(path, run_checks=False)
    assert analysis.policy is not None
    kept = parity.member_dependent(analysis.policy.clusters[0])
    assert [r.destination.label for r in kept.rules] == ["fw1lan", "web"]
