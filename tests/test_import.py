"""`fwc import iptables-save`: readable policies, nothing dropped silently, and the proof
that the compiled import does what the original did (packet class by packet class)."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import REPO

from fwc.cli import main
from fwc.importing.fidelity import compare_texts
from fwc.importing.translate import import_file
from fwc.pipeline import analyse

FIXTURES = Path(__file__).resolve().parent / "import_fixtures"


def imported(tmp_path: Path, name: str, text: str) -> tuple[str, list[str], Path]:
    result = import_file(text, name, name.split(".")[0])
    policy = tmp_path / f"{name}.fw"
    policy.write_text(result.text)
    return result.text, [d.code for d in result.diagnostics], policy


def checks_clean(policy: Path) -> None:
    analysis = analyse(policy)
    errors = [d for d in analysis.diagnostics if d.severity.name == "ERROR"]
    assert analysis.policy is not None and not errors, errors


def verify(capsys: pytest.CaptureFixture[str], source: Path, cluster: str) -> tuple[int, str]:
    capsys.readouterr()
    code = main(["import", "iptables-save", str(source), "--cluster", cluster, "--verify"])
    captured = capsys.readouterr()
    return code, captured.err


def test_stateful_gateway_with_nat_and_port_forwards(tmp_path, capsys):
    text, codes, policy = imported(tmp_path, "gateway.save",
                                   (FIXTURES / "gateway.save").read_text())
    checks_clean(policy)
    assert codes == ["FWC704"]  # only the skeleton warning: every rule translated
    assert "dnat from any to host-198-51-100-254 service tcp-2222 in eth1 -> 192.0.2.22:22" \
        in text
    assert "snat from net-192-0-2-0-24 to any out eth1 -> 198.51.100.254" in text
    assert 'drop from any to any log "fw drop"' in text
    # one rule per line, under a comment quoting the original
    lines = text.splitlines()
    rule = lines.index("    accept from net-192-0-2-0-24 to firewall service tcp-22 in eth0")
    assert lines[rule - 1].startswith("    # line 18: -A INPUT -s 192.0.2.0/24")
    code, err = verify(capsys, FIXTURES / "gateway.save", "gw")
    assert code == 0, err
    assert "0 differences" in err


def test_dmz_with_user_chains_and_ipsets(tmp_path, capsys):
    text, codes, policy = imported(tmp_path, "dmz.save", (FIXTURES / "dmz.save").read_text())
    checks_clean(policy)
    assert sorted(codes) == ["FWC701", "FWC704"]  # the mangle table is named, not dropped
    assert "group   set-admins 192.0.2.10, 192.0.2.11" in text
    assert "(via line 20): -A dmz-in -d 198.18.10.80/32" in text
    assert "nonat from net-192-0-2-0-24 to net-198-18-10-0-24 out eth1" in text
    code, err = verify(capsys, FIXTURES / "dmz.save", "dmz")
    assert code == 0, err
    assert "0 differences" in err


@pytest.mark.parametrize("member", ["edge/fw1", "dmz/fw-a", "branch/bfw1"])
def test_round_trip_of_the_compiled_examples(member, tmp_path, capsys):
    source = REPO / "output" / member / "iptables.rules"
    text, codes, policy = imported(tmp_path, "rt.save", source.read_text())
    checks_clean(policy)
    assert ": NOT IMPORTED (" not in text and "FWC700" not in codes
    code, err = verify(capsys, source, "rt")
    assert code == 0, err
    compared = int(err.split("--verify: ")[1].split()[0])
    assert compared > 500 and "0 differences" in err


def test_untranslatable_lines_stay_as_comments_with_a_warning(tmp_path):
    save = ("*filter\n:INPUT DROP [0:0]\n:FORWARD DROP [0:0]\n:OUTPUT ACCEPT [0:0]\n"
            "-A FORWARD -p tcp -m tcp --sport 1024:65535 --dport 80 -j ACCEPT\n"
            "-A FORWARD -i ppp+ -j ACCEPT\n"
            "-A FORWARD -p tcp --dport 22 -m recent --set -j ACCEPT\n"
            "-A FORWARD -s 192.0.2.0/24 -j ACCEPT\nCOMMIT\n")
    text, codes, policy = imported(tmp_path, "odd.save", save)
    assert codes.count("FWC700") == 3
    assert text.count(": NOT IMPORTED (") == 3
    assert "# line 5: NOT IMPORTED (--sport (fwc matches destination ports only))" in text
    assert "interface wildcard 'ppp+'" in text and "match module 'recent'" in text
    assert "    accept from net-192-0-2-0-24 to any" in text
    checks_clean(policy)


def test_protocol_zero_is_every_protocol(tmp_path):
    # iptables reads `-p 0` as every protocol: imported as `service proto/0` it was a
    # policy fwc refuses (FWC107), and the fidelity proof read it as protocol 0 alone
    save = ("*filter\n:INPUT DROP [0:0]\n:FORWARD DROP [0:0]\n:OUTPUT ACCEPT [0:0]\n"
            "-A FORWARD -s 192.0.2.0/24 -p 0 -j ACCEPT\nCOMMIT\n")
    text, codes, policy = imported(tmp_path, "zero.save", save)
    assert "    accept from net-192-0-2-0-24 to any\n" in text and "proto" not in text
    checks_clean(policy)


def test_a_rule_to_some_own_addresses_is_not_widened_to_the_firewall(tmp_path, capsys):
    # `-d 192.0.2.1` was every own address the rules named, so it became `to firewall`:
    # on the compiled cluster that also accepted ssh on fw1's other addresses (the
    # skeleton's placeholder device and sync link, the real ones once filled in)
    established = "-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n"
    save = ("*filter\n:INPUT DROP [0:0]\n:FORWARD DROP [0:0]\n:OUTPUT ACCEPT [0:0]\n"
            f"-A INPUT {established}-A FORWARD {established}"
            "-A INPUT -d 192.0.2.1/32 -i eth1 -p tcp -m tcp --dport 22 -j ACCEPT\n"
            "-A FORWARD -i eth1 -o eth0 -j ACCEPT\nCOMMIT\n")
    text, _, policy = imported(tmp_path, "own.save", save)
    checks_clean(policy)
    assert "    accept from any to host-192-0-2-1 service tcp-22 in eth1 only fw1\n" in text
    assert "to firewall" not in text
    (tmp_path / "own.save").write_text(save)
    code, err = verify(capsys, tmp_path / "own.save", "own")
    assert code == 0 and "0 differences" in err, err


def test_a_changed_import_is_reported_packet_class_by_packet_class(tmp_path):
    original = (FIXTURES / "gateway.save").read_text()
    changed = original.replace("--dport 113 -j REJECT", "--dport 114 -j REJECT")
    _, differences = compare_texts(original, changed)
    assert differences
    assert all(d.where == "filter FORWARD" for d in differences)
    assert {d.original for d in differences} | {d.compiled for d in differences} == \
        {"REJECT", "DROP"}
    compared, none = compare_texts(original, original)
    assert compared >= 50 and none == []


def test_unreadable_input_is_a_diagnostic(tmp_path, capsys):
    assert main(["import", "iptables-save", str(tmp_path / "missing")]) == 1
    assert "FWC706" in capsys.readouterr().err


def test_rule_lines_split_as_shlex_splits_them():
    """The reader's cheaper word splitting gives shlex's words (or its error) for any
    line: quotes, escapes, odd whitespace, unbalanced quotes."""
    import random
    import shlex

    from fwc.importing.saved import _words

    rng = random.Random(7)
    alphabet = ' \t\r\nab-:/\x0b\x0c\xa0\x85,=!"""\'\\'
    lines = ['-A FORWARD -s 192.0.2.1/32 -m comment --comment "edge.fw:4" -j ACCEPT',
             '-A INPUT -j LOG --log-prefix "a \\"b\\" "', "-A X -m comment --comment ''"]
    lines += ["".join(rng.choice(alphabet) for _ in range(rng.randrange(16)))
              for _ in range(20000)]
    for line in lines:
        try:
            expected: object = shlex.split(line)
        except ValueError:
            expected = ValueError
        try:
            got: object = _words(line)
        except ValueError:
            got = ValueError
        assert got == expected, repr(line)


def test_each_chains_rules_in_order_among_many_chains():
    from fwc.importing.saved import read_saved

    text = "*filter\n:INPUT DROP [0:0]\n" + "".join(f":c{n} - [0:0]\n" for n in range(50)) \
        + "".join(f"-A c{n % 50} -s 192.0.2.{n % 250}/32 -j ACCEPT\n" for n in range(500)) \
        + "COMMIT\n"
    table = read_saved(text).tables["filter"]
    for chain in ("c0", "c7", "c49"):
        expected = [r for r in table.rules if r.chain == chain]
        assert table.chain_rules(chain) == expected and len(expected) == 10
        assert [r.line for r in expected] == sorted(r.line for r in expected)
    assert table.chain_rules("INPUT") == [] and table.chain_rules("nowhere") == []


SNAT_SKELETON = """*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
-A POSTROUTING -s 192.0.2.0/24 -o eth1 -j SNAT --to-source 198.51.100.254
COMMIT
*filter
:INPUT DROP [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
-A INPUT -s 192.0.2.10/32 -d 192.0.2.1/32 -i eth1 -p tcp -m tcp --dport 22 -j ACCEPT
-A INPUT -s 192.0.2.10/32 -d 198.51.100.1/32 -i eth1 -p tcp -m tcp --dport 22 -j ACCEPT
-A INPUT -s 192.0.2.10/32 -d 198.51.100.254/32 -i eth1 -p tcp -m tcp --dport 22 -j ACCEPT
-A FORWARD -s 192.0.2.0/24 -o eth1 -j ACCEPT
COMMIT
"""


def test_the_snat_address_network_goes_on_the_device_it_leaves_by(tmp_path):
    # `-i eth1 -d 192.0.2.1` says where the packet came in, not where 192.0.2.1 is: the
    # skeleton put the lan on eth1, where the snat of the lan then translated fw1's own
    # adverts, which the peer takes from fw1's address only (FWC222)
    text, _, policy = imported(tmp_path, "snat.save", SNAT_SKELETON)
    assert "    interface eth1 vip 198.51.100.254/24  vrid 52\n" in text
    assert "        eth1 eth1 198.51.100.1/24\n" in text
    assert "eth1 eth1 192.0.2.1/24" not in text
    checks_clean(policy)


def test_a_ttl_match_is_kept_as_a_comment(tmp_path):
    # fwc's language has no TTL match: imported without it, the rule would be wider
    save = ("*filter\n:INPUT DROP [0:0]\n:FORWARD DROP [0:0]\n:OUTPUT ACCEPT [0:0]\n"
            "-A INPUT -s 192.0.2.2/32 -i eth0 -p 112 -m ttl --ttl-eq 255 -j ACCEPT\nCOMMIT\n")
    text, codes, _ = imported(tmp_path, "ttl.save", save)
    assert codes.count("FWC700") == 1
    assert "NOT IMPORTED (a TTL match" in text
