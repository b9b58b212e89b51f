"""`fwc import` on hostile or odd `iptables-save` input: whatever a line holds, the
policy written means what the translated rules mean (nothing of the input is written
unchecked into policy text), and nothing ends in a traceback."""

from __future__ import annotations

from fwc.cli import main
from fwc.frontend.parse import parse_text
from fwc.importing.translate import import_file


def statements(text: str) -> list[str]:
    """The policy's rules and top-level statement kinds, comments aside."""
    tree, diagnostics = parse_text(text, "imported.fw")
    assert not diagnostics, diagnostics
    out = []
    for statement in tree.statements:
        out.append(type(statement).__name__)
        out += [f"  {type(rule).__name__}" for rule in getattr(statement, "rules", ())]
    return out


def nat_save(target: str) -> str:
    return ("*filter\n:INPUT DROP [0:0]\n:FORWARD DROP [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n"
            "*nat\n:PREROUTING ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n"
            "-A PREROUTING -i eth0 -p tcp --dport 80 -j DNAT --to-destination 192.0.2.8:8080\n"
            f"-A PREROUTING -i eth0 -p tcp --dport 81 -j DNAT --to-destination {target}\n"
            "COMMIT\n")


def test_a_quoted_nat_target_cannot_add_statements_to_the_policy():
    """A quoted `--to-destination` held `}` and a whole policy block: written after `->`
    as it was, it closed the nat block and accepted everything (and checked clean)."""
    hostile = '"10.0.0.1 } policy imported { accept from any to any } nat imported {"'
    result = import_file(nat_save(hostile), "hostile.save", "imported")
    assert "-> 192.0.2.8:8080" in result.text
    assert "accept from any to any\n" not in result.text
    assert result.text.count("NOT IMPORTED (NAT target ") == 1
    assert [d.code for d in result.diagnostics].count("FWC700") == 1
    # the policy block stays empty, the nat block holds the one good rule
    assert statements(result.text) == ["ServiceDef", "ServiceDef", "ClusterDecl", "BlockDecl",
                                       "BlockDecl", "  RuleDecl"]


def test_nat_targets_are_written_from_their_values():
    for target, written in (("192.0.2.9", "-> 192.0.2.9\n"),
                            ("192.0.2.9:0443", "-> 192.0.2.9:443\n")):
        assert written in import_file(nat_save(target), "t.save", "t").text
    for target in ('"192.0.2.9 # x"', "192.0.2.9:99999", "192.0.2.9:" + "1" * 5000, "web",
                   "192.0.2.9:²"):
        text = import_file(nat_save(target), "t.save", "t").text
        assert "NOT IMPORTED (NAT target" in text, target
        statements(text)




def test_a_device_name_the_policy_cannot_hold_is_not_written_into_a_member_link():
    """Linux allows `eth#0`; written into `lan eth#0 198.18.0.1/24` it read as device
    `eth` and a comment: the import checked clean with the address commented out."""
    save = ("*filter\n:INPUT DROP [0:0]\n:FORWARD DROP [0:0]\n:OUTPUT ACCEPT [0:0]\n"
            "-A INPUT -i eth#0 -j ACCEPT\n-A INPUT -i eth1 -d 192.0.2.1/32 -j ACCEPT\n"
            "-A INPUT -i eth#0 -d 192.0.2.9/32 -j ACCEPT\n"
            "-A FORWARD -o averyveryverylongname -j ACCEPT\nCOMMIT\n")
    result = import_file(save, "dev.save", "dev")
    code = [line for line in result.text.splitlines() if not line.lstrip().startswith("#")]
    assert not [line for line in code if "eth#0" in line or "averyvery" in line]
    assert result.text.count("NOT IMPORTED (device name ") == 3
    assert "        eth1 eth1 192.0.2.1/24" in code
    statements(result.text)


def test_lines_end_where_iptables_restore_ends_them():
    """A comment holding U+2028 (or U+0085, a lone CR, ...) is one line to
    iptables-restore; split there, its second half read as `-A FORWARD -j ACCEPT` and
    a ruleset that drops everything was imported as `accept from any to any`."""
    for separator in ("\u2028", "\x85", "\x1c", "\r", "\x0b"):
        save = ("*filter\n:INPUT DROP [0:0]\n:FORWARD DROP [0:0]\n:OUTPUT ACCEPT [0:0]\n"
                f'-A FORWARD -m comment --comment "a{separator}-A FORWARD -j ACCEPT -m comment '
                f'--comment " -j DROP -m comment --comment "{separator}x"\nCOMMIT\n')
        result = import_file(save, "sep.save", "sep")
        assert "accept from any to any" not in result.text, repr(separator)
        assert "    drop from any to any\n" in result.text, repr(separator)
        assert "# line 5: -A FORWARD -m comment" in result.text
        statements(result.text)


def test_a_lone_carriage_return_in_the_input_file_is_not_a_line_break(tmp_path, capsys):
    save = tmp_path / "cr.save"
    save.write_bytes(b"*filter\n:FORWARD DROP [0:0]\n-A FORWARD -m comment --comment "
                     b'"a\r-A FORWARD -j ACCEPT -m comment --comment " -j DROP -m comment '
                     b'--comment "\rx"\nCOMMIT\n')
    out = tmp_path / "cr.fw"
    assert main(["import", "iptables-save", str(save), "-o", str(out)]) == 0
    assert "accept from any" not in out.read_text(encoding="utf-8")
    assert "    drop from any to any\n" in out.read_text(encoding="utf-8")


def test_odd_numbers_and_set_members_are_untranslatable_not_a_traceback(tmp_path, capsys):
    """int() refused what str.isdigit() let through ('²', 5000 digits) and a value that
    is no number at all (`--limit-burst -j`); `add admins foo` was no address: each
    was a ValueError traceback."""
    rules = ["-A INPUT -p tcp --dport ² -j ACCEPT",
             "-A INPUT -p tcp --dport 1:" + "1" * 5000 + " -j ACCEPT",
             "-A INPUT -p ² -j ACCEPT",
             "-A INPUT -p icmp --icmp-type ² -j ACCEPT",
             "-A INPUT -m limit --limit 3/min --limit-burst abc -j LOG",
             "-A INPUT -m set --match-set admins src -j ACCEPT"]
    save = tmp_path / "odd.save"
    save.write_text("create admins hash:net\nadd admins foo\n*filter\n:INPUT DROP [0:0]\n"
                    + "".join(r + "\n" for r in rules) + "-A INPUT -j DROP\nCOMMIT\n",
                    encoding="utf-8")
    out = tmp_path / "odd.fw"
    assert main(["import", "iptables-save", str(save), "-o", str(out)]) == 0
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("FWC700") == len(rules)
    text = out.read_text(encoding="utf-8")
    assert "ipset member 'foo'" in text and "--limit-burst 'abc' (not a number)" in text
    statements(text)


def test_verify_of_a_ruleset_the_proof_cannot_read_is_a_diagnostic(tmp_path, capsys):
    """--verify reads the whole original ruleset: a rule the import kept as a comment
    (`-m recent`), a set member that is no address, DNAT in the filter table ended in
    an Untranslatable or ValueError traceback."""
    head = "create s hash:net\nadd s foo\n*filter\n:INPUT DROP [0:0]\n"
    for rule in ("-A INPUT -m recent --name x -j DROP",
                 "-A INPUT -m set --match-set s src -j DROP",
                 "-A INPUT -j DNAT --to-destination 192.0.2.1"):
        save = tmp_path / "v.save"
        save.write_text(head + "-A INPUT -p tcp --dport 22 -j ACCEPT\n" + rule + "\nCOMMIT\n",
                        encoding="utf-8")
        assert main(["import", "iptables-save", str(save), "--verify",
                     "-o", str(tmp_path / "v.fw")]) == 1
        err = capsys.readouterr().err
        assert "Traceback" not in err
        assert f"{save}:6:1: error[FWC705]: the original ruleset cannot be compared" in err


def test_output_is_written_all_or_nothing(tmp_path, capsys, monkeypatch):
    """-o wrote in place: a missing directory was a FileNotFoundError traceback, and a
    full disk cut an existing policy short."""
    import errno
    import os

    save = tmp_path / "g.save"
    save.write_text("*filter\n:INPUT DROP [0:0]\n-A INPUT -p tcp --dport 22 -j ACCEPT\n"
                    "COMMIT\n", encoding="utf-8")
    assert main(["import", "iptables-save", str(save), "-o", str(tmp_path / "no" / "g.fw")]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and "cannot write" in err and "nothing was written" in err

    policy = tmp_path / "g.fw"
    policy.write_text("# my policy\n", encoding="utf-8")

    def no_space(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", no_space)  # (fwc.commands.common.write_file's)
    assert main(["import", "iptables-save", str(save), "-o", str(policy)]) == 1
    assert "No space left on device" in capsys.readouterr().err
    assert policy.read_text(encoding="utf-8") == "# my policy\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.fw", "g.save"]
    monkeypatch.undo()
    assert main(["import", "iptables-save", str(save), "-o", str(policy)]) == 0
    assert "accept from any to firewall service tcp-22" in policy.read_text(encoding="utf-8")


def test_the_input_name_and_the_cluster_name_cannot_add_statements(tmp_path, capsys):
    """The header comment named the input as it was: a file name with a newline wrote
    `accept from any to any` as a line of its own. `--cluster` was written as given."""
    save = tmp_path / "x\naccept from any to any\n.save"
    save.write_text("*filter\n:INPUT DROP [0:0]\n-A INPUT -p tcp --dport 22 -j ACCEPT\n"
                    "COMMIT\n", encoding="utf-8")
    text = import_file(save.read_text(encoding="utf-8"), str(save), "c").text
    assert "\naccept from any to any" not in text and "x\\naccept from any to any\\n.save" in text
    statements(text)
    out = tmp_path / "c.fw"
    for cluster in ("x { } policy y", "a-", "", "1a"):
        assert main(["import", "iptables-save", str(save), "--cluster", cluster,
                     "-o", str(out)]) == 2
        assert "is not a name" in capsys.readouterr().err and not out.exists()
    assert main(["import", "iptables-save", str(save), "--cluster", "edge-1", "-o", str(out)]) == 0
