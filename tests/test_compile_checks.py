"""Parity (FWC301/302) and the compile-stage checks (FWC501-504), each both ways."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import EXAMPLE_NAMES, Examples

from fwc.pipeline import analyse

HEAD = """\
network lan      192.0.2.0/24
host    client   192.0.2.10
host    web      192.0.2.80
host    fw1lan   192.0.2.1
service ssh      tcp/22
service web      tcp/80,443

cluster edge {
    vrrp { password "s3cret"  advert 1s  vrid 51 }
    sync { link sync }
    interface lan    vip 192.0.2.254/24
    interface uplink vip 198.51.100.254/24  vrid 52
    interface sync
    member fw1 priority 150 {
        lan    eth0 192.0.2.1/24
        uplink eth1 198.51.100.1/24
        sync   eth2 203.0.113.1/24
    }
    member fw2 priority 100 {
        lan    eth0 192.0.2.2/24
        uplink eth1 198.51.100.2/24
        sync   eth2 203.0.113.2/24
    }
}
"""


def diagnostics(tmp_path: Path, policy: str, nat: str = "") -> list:
    path = tmp_path / "p.fw"
    path.write_text(HEAD + "policy edge {\n" + policy + "\n    drop from any to any\n}\n"
                    + (f"nat edge {{\n{nat}\n}}\n" if nat else ""))
    analysis = analyse(path)
    assert analysis.policy is not None
    return list(analysis.diagnostics)


def codes(diags: list) -> list[str]:
    return sorted(d.code for d in diags if d.code.startswith(("FWC3", "FWC5")))


@pytest.mark.parametrize("name", EXAMPLE_NAMES)
def test_examples_have_no_parity_or_compile_findings(examples: Examples, name: str):
    assert codes(list(examples[name].analysis.diagnostics)) == []


def test_only_rule_for_the_firewall_itself_is_fine(tmp_path):
    diags = diagnostics(tmp_path, "    accept from client to firewall service ssh only fw1\n"
                        "    accept from firewall to client service ssh only fw2")
    assert codes(diags) == []


def test_only_rule_on_forwarded_traffic_names_both_places(tmp_path):
    diags = diagnostics(tmp_path, "    accept from lan to web service web only fw1\n"
                        "    accept from any to web service web in uplink")
    (found,) = [d for d in diags if d.code == "FWC301"]
    assert found.span.line == HEAD.count("\n") + 2
    assert "only for fw1" in found.message and "forwarded" in found.message
    assert [r.span.line for r in found.related] == [HEAD.count("\n") + 3]
    assert "on fw2" in found.related[0].message


def test_only_rule_without_a_later_rule_names_the_chain_policy(tmp_path):
    path = tmp_path / "p.fw"
    path.write_text(HEAD + "policy edge {\n    accept from lan to web service web only fw2\n}\n")
    (found,) = [d for d in analyse(path).diagnostics if d.code == "FWC301"]
    assert "on fw1 this traffic meets the FORWARD policy (DROP)" in found.message


def test_only_nat_rule_is_an_error(tmp_path):
    diags = diagnostics(tmp_path, "", "    snat from lan to any out uplink only fw2 -> uplink.vip")
    (found,) = [d for d in diags if d.code == "FWC301"]
    assert "NATed" in found.message and "on fw1 this traffic meets no NAT rule" in found.message


def test_rule_naming_one_members_address_differs_between_members(tmp_path):
    diags = diagnostics(tmp_path, "    accept from lan to fw1lan service web")
    (found,) = [d for d in diags if d.code == "FWC302"]
    assert "0 on fw1, 1 on fw2" in found.message
    assert codes(diags) == ["FWC302"]


def test_log_prefix_too_long_is_an_error_and_a_fitting_one_is_not(tmp_path):
    long = "x" * 30
    diags = diagnostics(tmp_path, f'    accept from lan to web service web log "{long}"\n'
                        f'    accept from lan to client service web log "{"y" * 28}"')
    (found,) = [d for d in diags if d.code == "FWC501"]
    assert found.severity == "error" and "x" * 29 in found.message


def test_nat_interfaces_the_chain_cannot_see(tmp_path):
    diags = diagnostics(tmp_path, "", "    dnat from any to uplink.vip out lan -> web\n"
                        "    snat from lan to any in lan -> uplink.vip\n"
                        "    dnat from any to uplink.vip in uplink -> web\n"
                        "    snat from lan to any out uplink -> uplink.vip")
    assert [d.span.line for d in diags if d.code == "FWC502"] == [
        HEAD.count("\n") + 6, HEAD.count("\n") + 7]


def test_nonat_with_in_and_out_warns(tmp_path):
    diags = diagnostics(tmp_path, "", "    nonat from lan to any in lan out uplink\n"
                        "    nonat from lan to client out uplink\n"
                        "    snat from lan to any out uplink -> uplink.vip")
    assert [d.code for d in diags if d.code == "FWC503"] == ["FWC503"]


def test_rule_that_gives_no_kernel_rule_warns(tmp_path):
    diags = diagnostics(tmp_path, "    accept from any to firewall service ssh out lan\n"
                        "    accept from any to firewall service ssh in lan")
    found = [d for d in diags if d.code == "FWC504"]
    assert [d.span.line for d in found] == [HEAD.count("\n") + 2]


def test_compile_refuses_a_policy_with_parity_errors(tmp_path):
    from fwc.cli import main

    path = tmp_path / "p.fw"
    path.write_text(HEAD + "policy edge {\n    accept from lan to web service web only fw1\n}\n")
    assert main(["compile", str(path), "-o", str(tmp_path / "out")]) == 1
    assert not (tmp_path / "out").exists()


def test_text_the_generated_files_cannot_hold(tmp_path):
    path = tmp_path / "p.fw"
    path.write_text(HEAD.replace('password "s3cret"', r'password "pass\"x"')
                    + "policy edge {\n    drop from any to any\n}\n")
    found = [d for d in analyse(path).diagnostics if d.code == "FWC505"]
    assert len(found) == 1 and "keepalived.conf cannot hold" in found[0].message
    diags = diagnostics(tmp_path, r'    accept from lan to web service web log "a\"b"')
    assert [d.code for d in diags if d.severity.name == "ERROR"] == []


def test_control_characters_in_strings_are_refused_at_the_character(tmp_path):
    # `\t` and `\n` were never escapes of the language (docs/language.md); Python's
    # unicode_escape used to turn them into control characters that FWC505 caught
    # late. Now the literal itself is refused, pointing at the backslash.
    for bad in (r"pa\tss", "pa\tss"):
        path = tmp_path / "p.fw"
        path.write_text(HEAD.replace('password "s3cret"', f'password "{bad}"')
                        + "policy edge {\n    drop from any to any\n}\n")
        (found,) = [d for d in analyse(path).diagnostics if d.code == "FWC004"]
        line = HEAD.replace('password "s3cret"', f'password "{bad}"').splitlines()[
            found.span.line - 1]
        assert found.span.column == line.index('"pa') + 4, (bad, found)  # the 3rd character
    path.write_text(HEAD + "policy edge {\n" + r'    accept from lan to client log "a\nb"'
                    + "\n}\n")
    assert [(d.code, d.span.line) for d in analyse(path).diagnostics] == [
        ("FWC004", HEAD.count("\n") + 2)]


def test_password_file_with_an_inner_newline_is_refused(tmp_path):
    (tmp_path / "secret").write_text("ab\ncd\n")
    path = tmp_path / "p.fw"
    path.write_text(HEAD.replace('password "s3cret"', 'password file "secret"')
                    + "policy edge {\n    drop from any to any\n}\n")
    assert [d.code for d in analyse(path).diagnostics if d.code == "FWC505"] == ["FWC505"]
