"""The lab passes on the optimised output: ipsets and arranged chains under real traffic.

The reference policy plus a 40-prefix partner group and 70 rules using it: compiled,
it has ipsets.rules and FORWARD arranged into per-interface chains. The quick lab
(every expectation on master and backup, a failover run, the control run) must pass
exactly as it does for the flat reference policy.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from conftest import REPO

pytestmark = pytest.mark.lab


def edge_with_big_group() -> str:
    text = (REPO / "policies" / "edge.fw").read_text(encoding="utf-8")
    partners = ", ".join(f"198.18.{i}.{(i % 4) * 64}/28" for i in range(40))
    text = text.replace("service ident    tcp/113\n",
                        f"service ident    tcp/113\ngroup   partners {partners}\n")
    filler = "\n".join(f"    accept from partners to web service tcp/{10000 + i} in uplink "
                       "out lan" for i in range(70))
    marker = "    reject from any      to any      service ident\n"
    assert marker in text
    # 100 ms adverts (a policy setting; VRRPv3 has no password) keep the quick lab short.
    vrrp = 'vrrp { password "s3cret"  advert 1s '
    assert vrrp in text
    text = text.replace(vrrp, "vrrp { advert 100ms  version 3 ")
    return text.replace(marker, filler + "\n" + marker)


def test_quick_lab_passes_on_ipsets_and_arranged_chains(tmp_path: Path) -> None:
    from fwc.lab.adapter import load_source
    from fwc.lab.report import render_text
    from fwc.lab.runner import LabOptions, run_lab

    policy = tmp_path / "edge.fw"
    policy.write_text(edge_with_big_group(), encoding="utf-8")
    source = load_source(policy)
    for member in ("fw1", "fw2"):
        rules = source.files[member]["iptables.rules"]
        assert "-j fwd-uplink" in rules and "--match-set fwc4-partners src" in rules
        assert "ipsets.rules" in source.files[member]
    report = run_lab(source, LabOptions(
        quick=True, prefix=f"fwc{os.getpid()}o", logdir=tmp_path / "logs"))
    print(render_text(report), file=sys.stderr)
    assert report.ok, (report.error, report.failures)
    assert all(r.agrees for r in report.expectations), report.expectations
    assert {r.phase for r in report.expectations} == {"master", "backup"}
