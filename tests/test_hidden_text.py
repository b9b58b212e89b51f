"""Text a reviewer cannot see (FWC006): "Trojan Source" bidirectional controls,
invisible characters and line-break look-alikes, in a policy (comments and strings
included), in fwc.toml, in what `fwc fmt` and `fwc import` write, and how every
report shows them (escaped, never raw)."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import EDGE_TEXT, compile_to, write_policy

from fwc.cli import main
from fwc.diagnostics import render_text
from fwc.importing.translate import import_file
from fwc.pipeline import analyse

WEB_RULE = "    accept from any      to web      service web   in uplink\n"
assert WEB_RULE in EDGE_TEXT

BIDI = ["\u202a", "\u202b", "\u202c", "\u202d", "\u202e", "\u2066", "\u2067", "\u2068",
        "\u2069", "\u200e", "\u200f", "\u061c"]
INVISIBLE = ["\u200b", "\u200c", "\u200d", "\u2060", "\ufeff", "\u00ad", "\U000e0041",
             "\U000e0001", "\u3164", "\u115f", "\u034f"]
LINE_BREAK_LOOK_ALIKES = ["\u2028", "\u2029", "\x85", "\r", "\x0b", "\x0c"]


def codes(path: Path) -> list[tuple[str, int, int]]:
    return [(d.code, d.span.line, d.span.column) for d in analyse(path).diagnostics
            if d.span is not None]


@pytest.mark.parametrize("separator", LINE_BREAK_LOOK_ALIKES,
                         ids=lambda c: f"U+{ord(c):04X}")
def test_a_drop_shown_after_a_line_break_look_alike_in_a_comment_is_refused(
        tmp_path, separator):
    """An editor or a diff shows `drop ... service ssh` on a line of its own; fwc's
    comment ran to the newline, so the drop was never compiled and the accept after it
    opened ssh to the web server. The policy checked and compiled clean."""
    text = EDGE_TEXT.replace(WEB_RULE, f"    # web from outside{separator}"
                             "    drop   from any to web service ssh\n"
                             "    accept from any to web service ssh\n" + WEB_RULE)
    path = write_policy(tmp_path, text)
    line = EDGE_TEXT[:EDGE_TEXT.index(WEB_RULE)].count("\n") + 1
    assert codes(path) == [("FWC006", line, len("    # web from outside") + 1)]
    assert compile_to(path, tmp_path / "out") == 1
    assert not (tmp_path / "out").exists()


def test_a_lone_carriage_return_between_a_rule_and_a_comment_is_refused(tmp_path):
    """On a terminal the comment after a lone CR is printed over the rule before it: the
    diff showed a comment, fwc compiled an accept from anywhere to anywhere."""
    text = EDGE_TEXT.replace(WEB_RULE, "    accept from any to any\r"
                             "    # (the web rule moved to lib/web.fw)          \n")
    path = write_policy(tmp_path, text)
    line = EDGE_TEXT[:EDGE_TEXT.index(WEB_RULE)].count("\n") + 1
    assert codes(path) == [("FWC006", line, len("    accept from any to any") + 1)]


@pytest.mark.parametrize("control", BIDI, ids=lambda c: f"U+{ord(c):04X}")
def test_a_bidirectional_control_in_a_comment_is_refused(tmp_path, control):
    text = EDGE_TEXT.replace(WEB_RULE, WEB_RULE.rstrip("\n") + f"  # ok {control}x\n")
    path = write_policy(tmp_path, text)
    analysis = analyse(path)
    [diagnostic] = analysis.diagnostics
    assert diagnostic.code == "FWC006" and diagnostic.is_error
    assert f"bidirectional control U+{ord(control):04X}" in diagnostic.message
    assert diagnostic.hint


@pytest.mark.parametrize("char", INVISIBLE, ids=lambda c: f"U+{ord(c):04X}")
@pytest.mark.parametrize("where", ["string", "comment"])
def test_an_invisible_character_is_refused_in_strings_and_comments(tmp_path, char, where):
    """`log "out"` with a zero-width space in it read as `log "out"`; in an include or a
    notify command it names another file or program than the one a reviewer reads."""
    old = 'log "out"'
    new = f'log "o{char}ut"' if where == "string" else f'log "out"  # o{char}k'
    path = write_policy(tmp_path, EDGE_TEXT.replace(old, new))
    line = EDGE_TEXT[:EDGE_TEXT.index(old)].count("\n") + 1
    column = EDGE_TEXT.splitlines()[line - 1].index(old) + 1 + new.index(char)
    assert codes(path) == [("FWC006", line, column)]
    [diagnostic] = analyse(path).diagnostics
    assert f"U+{ord(char):04X}" in diagnostic.message


def test_an_include_of_a_look_alike_file_name_is_refused(tmp_path):
    """`include "web.fw"` with a zero-width space before the dot read the file the pull
    request added next to the reviewed one, and accepted what that file says."""
    (tmp_path / "web\u200b.fw").write_text("host web2 192.0.2.81\n", encoding="utf-8")
    path = write_policy(tmp_path, 'include "web\u200b.fw"\n' + EDGE_TEXT)
    assert codes(path) == [("FWC006", 1, 13)]


def test_a_root_file_name_with_an_invisible_character_is_refused(tmp_path):
    path = write_policy(tmp_path, EDGE_TEXT, name="edge\u200b.fw")
    [diagnostic] = analyse(path).diagnostics
    assert diagnostic.code == "FWC005" and "U+200B (ZERO WIDTH SPACE)" in diagnostic.message


def test_crlf_line_ends_tabs_and_printable_text_stay_allowed(tmp_path):
    text = EDGE_TEXT.replace("\n", "\r\n").replace(
        "# policies/edge.fw", "# policies/edge.fw\t(café, Zürich, Москва, 東京, שלום)")
    path = write_policy(tmp_path, text)
    assert not [d for d in analyse(path).diagnostics if d.is_error]


def test_the_report_shows_each_character_escaped_with_the_caret_under_it(tmp_path):
    text = EDGE_TEXT.replace(WEB_RULE, WEB_RULE.rstrip("\n") + "  # \u2067x\u2069 \x1b[1A\n")
    path = write_policy(tmp_path, text)
    analysis = analyse(path)
    shown = render_text(analysis.diagnostics, analysis.program.texts)
    assert not [c for c in shown if c != "\n" and not c.isprintable()]
    lines = shown.split("\n")
    excerpts = [i for i, line in enumerate(lines)
                if line.endswith("in uplink  # \\u2067x\\u2069 \\x1b[1A")]
    assert len(excerpts) == 3
    escapes = ("\\u2067", "\\u2069", "\\x1b")
    assert [lines[i + 1].index("^") for i in excerpts] == \
        [lines[i].index(e) for i, e in zip(excerpts, escapes, strict=True)]
    assert [lines[i + 1].strip() for i in excerpts] == ["^~~~~~", "^~~~~~", "^~~~"]


def test_fmt_refuses_such_a_file_and_leaves_it_as_it_was(tmp_path, capsys):
    """fmt laid out `# note<U+2028>drop ...` as one comment line and wrote it back: the
    character went on to the next reviewer, the file was formatted clean."""
    text = EDGE_TEXT.replace(WEB_RULE, "    # note\u2028    drop from any to web\n" + WEB_RULE)
    path = write_policy(tmp_path, text)
    assert main(["fmt", str(path)]) == 1
    assert path.read_text(encoding="utf-8") == text
    err = capsys.readouterr().err
    assert "error[FWC006]: U+2028 (LINE SEPARATOR)" in err and "\u2028" not in err


def test_fwc_toml_may_not_hold_them_either(tmp_path, capsys):
    """`output = "out<U+200B>"` compiled into a directory that looks like `out/`, and
    a bidirectional control in a comment of fwc.toml passed as it was."""
    policy = write_policy(tmp_path, EDGE_TEXT)
    (tmp_path / "fwc.toml").write_text('backend = "iptables"  # \u202e note\n'
                                       'output = "out\u200b"\n', encoding="utf-8")
    assert main(["compile", str(policy)]) != 0
    err = capsys.readouterr().err
    assert "fwc.toml:1:25: error[FWC006]: bidirectional control U+202E" in err
    assert "fwc.toml:2:14: error[FWC006]: invisible character U+200B" in err
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("out")]


def test_import_quotes_a_hidden_character_escaped_and_translates_no_invisible_prefix():
    """A `--comment` holding U+202E was quoted raw into the policy's comment, and a log
    prefix holding a zero-width space or an escape character became a string: the
    imported policy hid them from its reviewer (or did not check at all)."""
    save = ("*filter\n:INPUT ACCEPT [0:0]\n:FORWARD DROP [0:0]\n:OUTPUT ACCEPT [0:0]\n"
            '-A FORWARD -s 192.0.2.0/24 -p tcp --dport 22 -m comment --comment "ok\u202e x"'
            " -j ACCEPT\n"
            '-A FORWARD -s 192.0.2.0/24 -p tcp --dport 24 -j LOG --log-prefix "c\u200bd "\n'
            "-A FORWARD -s 192.0.2.0/24 -p tcp --dport 24 -j ACCEPT\nCOMMIT\n")
    result = import_file(save, "h.save", "h")
    assert '--comment "ok\\u202e x"' in result.text
    assert "NOT IMPORTED (a log prefix holding U+200B (ZERO WIDTH SPACE))" in result.text
    assert '--log-prefix "c\\u200bd "' in result.text
    assert not [c for c in result.text if c != "\n" and not c.isprintable()]


def test_fmt_prints_a_file_name_from_a_glob_escaped(tmp_path, capsys):
    """`fwc fmt --check policies/*.fw` over a pull request: a file named with an escape
    sequence and a bidirectional override was listed as it was, and the terminal acted
    on it (cleared the screen, reordered the line)."""
    name = str(tmp_path / "x\x1b[2Jy\u202e.fw")
    Path(name).write_text("host a   192.0.2.1\nhost bb 192.0.2.2\n", encoding="utf-8")
    shown = str(tmp_path) + "/x\\x1b[2Jy\\u202e.fw"
    assert main(["fmt", "--check", name]) == 1
    assert capsys.readouterr().out == shown + "\n"
    assert main(["fmt", "--diff", name]) == 1
    assert capsys.readouterr().out.startswith(f"--- a/{shown}\n+++ b/{shown}\n")
    assert main(["fmt", name]) == 0
    assert capsys.readouterr().err == f"formatted {shown}\n"
