"""`fwc lab` on the nftables backend: every drill of the full lab, once.

policies/shop.fw is compiled for nftables (`backend nftables`); this runs the
whole lab on it, with `preempt-delay 5s` added as tests/test_lab.py does for
edge: the expectations through master and backup, the routed (SNAT exemption
in the lab's own nft table) and SNAT failover drills, the reboot drill (the
master wiped with `nft flush ruleset`, the forward hook watched with `nft list
chains` while it boots through the compiled boot script) and the control run.
About 80 s. The reboot watchers are also run against a bad boot script on an
nft variant of edge.fw in tests/test_lab_reboot.py.
"""

from __future__ import annotations

import json
import sys

import pytest
from conftest import REPO, skip_or_fail_without_root

from fwc.lab.adapter import load_source
from fwc.lab.netns import lab_namespaces
from fwc.lab.report import render_text, to_dict
from fwc.lab.runner import LabOptions, LabReport, run_lab
from fwc.model.vocabulary import Backend

SHOP_TEXT = (REPO / "policies" / "shop.fw").read_text(encoding="utf-8")
VRRP = 'vrrp { password "shop-ha1"  advert 1s  vrid 40 }'


@pytest.fixture(scope="module")
def shop_lab(tmp_path_factory: pytest.TempPathFactory) -> LabReport:
    skip_or_fail_without_root()
    tmp = tmp_path_factory.mktemp("labnft")
    assert VRRP in SHOP_TEXT
    policy = tmp / "shop.fw"
    policy.write_text(SHOP_TEXT.replace(VRRP, VRRP[:-1] + "preempt-delay 5s }"),
                      encoding="utf-8")
    source = load_source(policy)
    assert source.cluster.backend is Backend.NFTABLES
    assert "nftables.nft" in source.files["shop-1"]
    assert "iptables.rules" not in source.files["shop-1"]
    report = run_lab(source, LabOptions(logdir=tmp / "logs"))
    print(render_text(report), file=sys.stderr)
    (tmp / "report.json").write_text(json.dumps(to_dict(report), indent=2))
    assert lab_namespaces(report.prefix) == [], "lab left namespaces behind"
    return report


@pytest.mark.lab
def test_lab_nft_runs_every_drill_and_passes(shop_lab: LabReport) -> None:
    assert shop_lab.error is None, shop_lab.error
    assert shop_lab.ok, shop_lab.failures
    assert shop_lab.election["master"] == "shop-1"
    for phase, via in (("master", "shop-1"), ("backup", "shop-2")):
        results = [r for r in shop_lab.expectations if r.phase == phase]
        assert len(results) == 6, phase  # the web expectation probes tcp/80 and tcp/443
        assert all(r.via == via and r.agrees for r in results), results


@pytest.mark.lab
def test_lab_nft_failover_routed_and_snat(shop_lab: LabReport) -> None:
    runs = {f.label: f for f in shop_lab.failover}
    assert set(runs) == {"routed-1s", "snat-1s"}
    # The nft SNAT exemption held: the routed connection left the master untranslated,
    # the SNAT one translated (the drill fails otherwise).
    assert runs["routed-1s"].translated is False and runs["snat-1s"].translated is True
    for fo in runs.values():
        assert fo.ok and fo.survived_failover and fo.survived_failback, fo
        assert fo.external_flows_before >= 1, fo
        assert fo.order_errors == 0


@pytest.mark.lab
def test_lab_nft_reboot_wipes_watches_and_rejoins(shop_lab: LabReport) -> None:
    rb = shop_lab.reboot
    assert rb is not None and not rb.skipped, rb
    assert rb.ok, rb.notes
    assert (rb.master, rb.backup, rb.mode) == ("shop-1", "shop-2", "snat")
    assert rb.wiped["processes"] == 0 and rb.wiped["vips"] == [] and rb.wiped["rules"] == 0
    assert rb.wiped["conntrack_entries"] == 0
    b = rb.boot
    assert b.rc == 0 and b.ok, b.problems
    assert b.rules_before == {"4": "", "6": ""}  # `nft list chains` of a wiped node
    assert b.syns_sent_before_rules > 0 and b.forwarded_before_rules == 0, b
    assert b.forwarded_after_rules > 0, b
    assert b.rules_loaded_s is not None
    for fam in ("4", "6"):  # shop's office carries IPv6
        assert b.forwarding_on_s[fam] > b.rules_loaded_s, b
        assert b.chain_in_by_s[fam] > b.chain_absent_at_s[fam], b
    assert rb.cache_s is not None and rb.first_vip_s is not None
    assert rb.cache_s < rb.first_vip_s and rb.first_vip_s >= rb.preempt_delay_s == 5.0
    assert rb.survived_failover and rb.survived_failback and rb.backup_held_vips


@pytest.mark.lab
def test_lab_nft_control_without_sync_dies(shop_lab: LabReport) -> None:
    control = shop_lab.control
    assert control is not None and not control.sync
    assert control.connected and not control.survived_failover and control.ok
