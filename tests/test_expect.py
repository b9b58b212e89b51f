"""`expect` blocks are proved by `fwc check` on every member (FWC601-FWC603)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from conftest import EDGE, EXAMPLE_FILES, REPO, run_fwc

from fwc.diagnostics import render_text
from fwc.pipeline import analyse

SOURCE = EDGE.read_text(encoding="utf-8")
EXPECT_CODES = ("FWC601", "FWC602", "FWC603")


def _with_expectations(tmp_path: Path, lines: str, text: str = SOURCE) -> Path:
    start = text.index("expect edge {")
    path = tmp_path / "p.fw"
    path.write_text(text[:start] + "expect edge {\n" + lines + "}\n", encoding="utf-8")
    return path


def _expect_diagnostics(path: Path):
    analysis = analyse(path)
    return [d for d in analysis.diagnostics if d.code in EXPECT_CODES], analysis


@pytest.mark.parametrize("policy", EXAMPLE_FILES, ids=lambda p: p.name)
def test_example_expectations_hold(policy):
    analysis = analyse(policy)
    assert analysis.policy is not None
    assert any(c.expectations for c in analysis.policy.clusters)
    assert [d.message for d in analysis.diagnostics if d.code in EXPECT_CODES] == []


def test_failing_allow_names_member_rule_and_span(tmp_path):
    path = _with_expectations(tmp_path, "    allow server -> client service echo\n")
    found, analysis = _expect_diagnostics(path)
    assert [d.code for d in found] == ["FWC601"]
    diag = found[0]
    assert "fw1, fw2" in diag.message
    assert "from server to client service echo" in diag.message
    assert "dropped by rule" in diag.message and "p.fw:46" in diag.message
    expect_line = path.read_text(encoding="utf-8").splitlines().index(
        "    allow server -> client service echo") + 1
    assert diag.span is not None and diag.span.line == expect_line
    assert len(diag.related) == 1
    related = diag.related[0]
    assert related.span.line == 46
    assert 'drop from any to any log "default"' in related.message
    rendered = render_text([diag], analysis.program.texts)
    assert "note: this rule decides it" in rendered


def test_failing_allow_by_default_policy_names_the_chain(tmp_path):
    path = _with_expectations(tmp_path, "    allow guests -> firewall service ssh\n")
    found, _ = _expect_diagnostics(path)
    assert [d.code for d in found] == ["FWC601"]
    assert "default policy of INPUT (drop)" in found[0].message
    assert found[0].related == ()


def test_failing_deny_names_the_accepting_rule(tmp_path):
    path = _with_expectations(tmp_path, "    deny client -> server service web\n")
    found, _ = _expect_diagnostics(path)
    assert [d.code for d in found] == ["FWC602"]
    assert "is accepted by rule" in found[0].message
    assert found[0].related[0].span.line == 41


def test_partial_failure_reports_only_the_failing_part(tmp_path):
    # desktops -> server: web is accepted by line 41, ssh falls to the final drop
    path = _with_expectations(tmp_path, "    allow desktops -> server service web, ssh\n")
    found, _ = _expect_diagnostics(path)
    assert len(found) == 1
    assert "service ssh" in found[0].message and "p.fw:46" in found[0].message


def test_member_specific_failure_names_only_that_member(tmp_path):
    path = _with_expectations(tmp_path, "    allow monitor -> firewall service snmp\n")
    found, _ = _expect_diagnostics(path)
    assert [d.code for d in found] == ["FWC601"]
    assert "on member fw2:" in found[0].message and "fw1" not in found[0].message


def test_reject_counts_as_denied(tmp_path):
    path = _with_expectations(tmp_path, "    deny server -> client service ident\n"
                                        "    allow server -> client service ident\n")
    found, _ = _expect_diagnostics(path)
    assert [d.code for d in found] == ["FWC601"]
    assert "rejected by rule" in found[0].message


def test_dnat_is_applied_before_the_filter(tmp_path):
    path = _with_expectations(tmp_path, "    allow any -> uplink.vip service web in uplink\n"
                                        "    deny  any -> uplink.vip service web in lan\n")
    found, _ = _expect_diagnostics(path)
    assert found == []


def test_expectation_about_no_traffic_warns(tmp_path):
    path = _with_expectations(tmp_path, "    allow firewall -> firewall service ssh\n")
    found, _ = _expect_diagnostics(path)
    assert [(d.code, d.severity.value) for d in found] == [("FWC603", "warning")]


def test_nothing_is_forwarded_from_an_ipv6_link_local_source(tmp_path):
    """Linux drops a packet from fe80::/10 in ip6_forward before the FORWARD rules
    (measured: the accepting rule's counter stayed 0), so `accept from any` does not let
    it through: `allow` fails naming that (it passed before) and `deny` holds (it failed
    as accepted, FWC602). The same traffic from a global source is still accepted, and
    VRRP adverts, which come from a member's link-local address, are still taken in."""
    text = SOURCE.replace("policy edge {\n", "policy edge {\n"
                          "    accept from any to lan6 service tcp/5001\n", 1)
    path = _with_expectations(tmp_path, "    allow fe80::/10 -> lan6 service tcp/5001\n"
                                        "    deny  fe80::/10 -> lan6 service tcp/5001\n"
                                        "    allow 2001:db8:ff::5 -> lan6 service tcp/5001\n"
                                        "    allow fe80::5 -> ff02::12 service vrrp in lan\n",
                              text)
    found, _ = _expect_diagnostics(path)
    line = path.read_text().splitlines().index("    allow fe80::/10 -> lan6 service tcp/5001")
    assert [(d.code, d.span.line) for d in found] == [("FWC601", line + 1)]
    assert "automatic rule 'kernel: nothing is forwarded from a link-local source'" \
        in found[0].message


def test_fwc_check_exit_status(tmp_path):
    bad = _with_expectations(tmp_path, "    deny client -> server service echo\n")
    result = run_fwc("check", str(bad), cwd=REPO)
    assert result.returncode == 1
    assert "error[FWC602]" in result.stderr and "Traceback" not in result.stderr


def test_many_expectations_on_a_large_policy_are_fast(tmp_path):
    # 2,000 rules, 200 expectations on two members: well under a second of engine time
    rules = [f"    accept from 198.18.{i // 250}.{i % 250 + 1} to 198.19.{i // 250}.{i % 250 + 1}"
             f" service tcp/{1000 + i % 500}" for i in range(2000)]
    expectations = [f"    allow 198.18.{i // 250}.{i % 250 + 1} -> 198.19.{i // 250}.{i % 250 + 1}"
                    f" service tcp/{1000 + i % 500}" for i in range(0, 2000, 10)]
    head = SOURCE[:SOURCE.index("policy edge {")]
    text = (head + "policy edge {\n" + "\n".join(rules) + "\n    drop from any to any\n}\n"
            + "expect edge {\n" + "\n".join(expectations) + "\n}\n")
    path = tmp_path / "big.fw"
    path.write_text(text, encoding="utf-8")
    analysis = analyse(path, run_checks=False)
    assert analysis.policy is not None
    from fwc.analysis.describe import Vocabulary
    from fwc.checks.expectations import check_cluster

    started = time.perf_counter()
    found = list(check_cluster(analysis.policy.clusters[0],
                               Vocabulary.of_policy(analysis.policy)))
    elapsed = time.perf_counter() - started
    assert found == []
    assert elapsed < 5.0, f"expectations took {elapsed:.2f}s"


def test_without_in_an_expectation_covers_every_arrival_interface(tmp_path):
    # the dnat and rule 44 need `in uplink`: from lan the VIP is just the firewall
    path = _with_expectations(tmp_path, "    allow server -> uplink.vip service web\n")
    found, _ = _expect_diagnostics(path)
    assert [d.code for d in found] == ["FWC601"]
    assert " in lan" in found[0].message or " in sync" in found[0].message
    assert "default policy of INPUT" in found[0].message
