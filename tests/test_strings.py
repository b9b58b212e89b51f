"""Strings: literal decoding, file names, escaping per output format, the real programs' limits.

Issue 10, "Injection and decoding". The root tests feed the generated files to the
programs that read them (iptables-restore, iptables-save, keepalived -t).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from checkkit import BASE, line_of, mutate, run, the_one, with_code
from checkkit import compiled_files as compiled_text
from test_realtools import in_ns, namespace

from fwc import protocols as proto
from fwc.backend.lower.ruleset import FilterRule, Match, Origin
from fwc.backend.output import compile_policy
from fwc.backend.render import escape
from fwc.backend.render.iptables import rule_bodies
from fwc.cli import main
from fwc.model.vocabulary import Target
from fwc.pipeline import analyse
from fwc.text import LiteralError, cut_utf8, decode_literal

INJECTED = "x\n-A INPUT -j ACCEPT\n#.fw"
EXTRA_RULE = "policy edge {\n    accept from any to firewall service tcp/9999\n}\n"


def compiled_files(path: Path) -> dict[str, str]:
    analysis = analyse(path)
    assert analysis.ok, [f"{d.code} {d.message}" for d in analysis.diagnostics]
    return {f"{c.name}/{f.path}": f.content.decode()
            for c in compile_policy(analysis.policy) for f in c.files}


# -- item 1: the injection and the file names ---------------------------------------------------

def test_newline_escape_in_an_include_cannot_inject_a_rule(tmp_path, capsys):
    """The reproduction of the issue: before, `check` exited 0 and iptables.rules held
    a line `-A INPUT -j ACCEPT` of its own."""
    (tmp_path / INJECTED).write_text(EXTRA_RULE)
    policy = tmp_path / "p.fw"
    policy.write_text('include "x\\n-A INPUT -j ACCEPT\\n#.fw"\n' + BASE)
    assert main(["compile", str(policy), "-o", str(tmp_path / "out")]) == 1
    captured = capsys.readouterr()
    output = captured.out + captured.err
    assert "p.fw:1:11: error[FWC004]: unknown escape '\\n' in a string" in output
    assert "Traceback" not in output
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name", ["x\ny.fw", "tab\there.fw", "esc\x1b[31m.fw", "sep\u2028.fw"])
def test_a_file_name_with_a_control_character_is_refused(tmp_path, capsys, name):
    policy = tmp_path / name
    policy.write_text(BASE)
    assert main(["check", str(policy)]) == 1
    captured = capsys.readouterr()
    out = captured.out + captured.err
    assert "error[FWC005]: the file name '" in out and "contains U+" in out
    # the name is shown escaped: the diagnostic is one line like any other
    assert name not in out
    assert main(["compile", str(policy), "-o", str(tmp_path / "out")]) == 1
    assert not (tmp_path / "out").exists()


def test_a_file_name_that_is_not_utf8_is_refused(tmp_path, capsys):
    raw = bytes(tmp_path) + b"/\xff.fw"
    Path(raw.decode("utf-8", "surrogateescape")).write_text(BASE)
    result = subprocess.run([sys.executable, "-m", "fwc", "check", b"\xff.fw"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=60)
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "error[FWC005]: the file name '\\udcff.fw' is not UTF-8" in output
    assert "Traceback" not in output


def test_legal_but_awkward_file_names_reach_comments_escaped(tmp_path):
    """Quotes, backslashes, blanks, `#` and non-ASCII are fine in a name: quoted."""
    name = 'odd "name" \\ # café.fw'
    (tmp_path / name).write_text(EXTRA_RULE)
    policy = tmp_path / "p.fw"
    policy.write_text('include "odd \\"name\\" \\\\ # café.fw"\n' + BASE)
    files = compiled_files(policy)
    rules = files["edge/fw1/iptables.rules"]
    assert '--comment "odd \\"name\\" \\\\ # café.fw:2"' in rules
    plain = compiled_files(write(tmp_path / "plain", BASE + EXTRA_RULE))
    assert rules.count("\n") == plain["edge/fw1/iptables.rules"].count("\n")


def write(directory: Path, text: str, name: str = "p.fw") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / name).write_text(text, encoding="utf-8")
    return directory / name


@pytest.mark.root
def test_awkward_file_name_round_trips_through_iptables(tmp_path):
    name = 'odd "name" \\ # café.fw'
    (tmp_path / name).write_text(EXTRA_RULE)
    policy = tmp_path / "p.fw"
    policy.write_text('include "odd \\"name\\" \\\\ # café.fw"\n' + BASE)
    text = compiled_files(policy)["edge/fw1/iptables.rules"]
    with namespace(("eth0", "eth1", "eth2")) as ns:
        loaded = in_ns(ns, "iptables-restore", stdin=text)
        assert loaded.returncode == 0, loaded.stderr
        saved = in_ns(ns, "iptables-save")
    assert saved.stdout.count('odd \\"name\\" \\\\ # café.fw:2') == text.count(
        'odd \\"name\\" \\\\ # café.fw:2') > 0
    assert "-A INPUT -j ACCEPT\n" not in saved.stdout


def test_renderers_refuse_what_their_format_cannot_carry():
    """The escaping layer fails closed even if a check missed something."""
    rule = FilterRule(Match(), Target.ACCEPT, Origin("policy", "a\n-A INPUT -j ACCEPT\n#:1"))
    with pytest.raises(escape.UnwritableText):
        rule_bodies(rule)
    for function, bad in [(escape.iptables_string, "a\nb"), (escape.iptables_word, "a b"),
                          (escape.iptables_comment, "x" * 256),
                          (escape.iptables_log_prefix, "é" * 15),
                          (escape.ipset_word, "a b"), (escape.keepalived_string, 'a"b'),
                          (escape.keepalived_word, "a#b"), (escape.keepalived_word, ""),
                          (escape.conntrackd_name, "eth0@x"), (escape.shell_word, "a\rb"),
                          (escape.comment, "a\u2029b"), (escape.systemd_value, "a\\"),
                          (escape.sysctl_value, " 1"),
                          (escape.keepalived_file, "x" * 1024 + "\n")]:
        with pytest.raises(escape.UnwritableText):
            function(bad)
    assert escape.iptables_comment("x" * 255) == '"' + "x" * 255 + '"'
    assert escape.iptables_string('a"b\\c') == '"a\\"b\\\\c"'
    assert escape.shell_word("it's") == "'it'\"'\"'s'"
    assert escape.systemd_value("50%") == "50%%"


def test_every_template_value_passes_the_line_check(tmp_path):
    """jinja's finalize: an unfiltered value with a newline stops the render."""
    from fwc.backend.render.templates import render_template

    with pytest.raises(escape.UnwritableText):
        render_template("sysctl.conf.j2", {"cluster": "c", "member": "m\nx", "settings": []})


# -- item 3: decoding --------------------------------------------------------------------------

@pytest.mark.parametrize(("body", "value"), [
    ("plain", "plain"), ('a\\"b', 'a"b'), ("a\\\\b", "a\\b"), ("café", "café"),
    ("ééééé", "ééééé"), ("日本", "日本"), ("", ""), ("a#b!c", "a#b!c"),
])
def test_literals_decode_as_documented(body, value):
    assert decode_literal(body) == value


@pytest.mark.parametrize(("body", "offset", "message"), [
    ("\\x", 0, "unknown escape '\\x'"), ("ab\\n", 2, "unknown escape '\\n'"),
    ("\\u00e9", 0, "unknown escape '\\u'"), ("a\x00b", 1, "U+0000 (NUL)"),
    ("a\tb", 1, "U+0009"), ("\x85", 0, "U+0085"), ("x\u202e", 1, "U+202E"),
    ("a\\", 1, "lone backslash"),
])
def test_bad_literals_are_errors_at_the_character(body, offset, message):
    with pytest.raises(LiteralError) as caught:
        decode_literal(body)
    assert caught.value.offset == offset and message in caught.value.message


def test_non_ascii_include_finds_its_file(tmp_path):
    (tmp_path / "café.fw").write_text(EXTRA_RULE)
    policy = write(tmp_path, 'include "café.fw"\n' + BASE)
    analysis = analyse(policy)
    assert analysis.ok, [d.message for d in analysis.diagnostics]
    assert any(s.path.endswith("café.fw") for s in analysis.policy.sources)


def test_nul_and_bad_escapes_in_a_policy_are_diagnostics_not_tracebacks(tmp_path):
    text = mutate(('password "s3cret"', 'password "a\x00b"'),
                  ("accept from lan6   to any      service tcp/80,443",
                   'accept from lan6   to any      service tcp/80,443 log "\\x41"'))
    result = subprocess.run([sys.executable, "-m", "fwc", "check", "p.fw"],
                            cwd=write(tmp_path, text).parent, capture_output=True, text=True,
                            timeout=60)
    output = result.stdout + result.stderr
    assert result.returncode == 1 and "Traceback" not in output
    assert f"p.fw:{line_of(text, 'password')}:" in output
    assert "U+0000 (NUL)" in output and "unknown escape '\\x'" in output


# -- keepalived counts bytes -------------------------------------------------------------------

def test_password_of_five_e_acute_is_ten_bytes(tmp_path):
    analysis = run(tmp_path, mutate(('password "s3cret"', 'password "ééééé"')))
    d = the_one(analysis, "FWC212")
    assert "5 characters, 10 bytes in UTF-8" in d.message and "first 8 bytes" in d.message


def test_password_of_eight_bytes_is_fine(tmp_path):
    assert with_code(run(tmp_path, mutate(('password "s3cret"', 'password "abcdéfg"'))),
                     "FWC212") == []


@pytest.mark.root
@pytest.mark.parametrize(("password", "cut"), [("abcdéfg", False), ("ééééé", True)])
def test_keepalived_counts_auth_pass_in_bytes(tmp_path, password, cut):
    """What FWC212 claims, asked of keepalived itself (keepalived.conf by hand: fwc
    refuses to write the long one)."""
    conf = tmp_path / "k.conf"
    conf.write_text(
        "vrrp_instance VI_1 {\n    state BACKUP\n    interface eth0\n"
        "    virtual_router_id 51\n    priority 100\n    advert_int 1\n"
        f"    authentication {{\n        auth_type PASS\n"
        f"        auth_pass {escape.keepalived_string(password)}\n    }}\n"
        "    virtual_ipaddress {\n        192.0.2.254/24 dev eth0\n    }\n}\n",
        encoding="utf-8")
    with namespace(("eth0",)) as ns:
        result = in_ns(ns, "keepalived", "-t", "-e", "-f", str(conf))
    assert ("Truncating auth_pass to 8 characters" in result.stderr) is cut, result.stderr


@pytest.mark.parametrize(("password", "refused"), [
    ("ab\\\\", True), ("ab\\\\\\\\", False), ("ab\\\\\\\\\\\\", True), ("a\\\\b", False)])
def test_fwc505_password_ending_in_a_backslash(tmp_path, password, refused):
    text = mutate(('password "s3cret"', f'password "{password}"'))
    found = with_code(run(tmp_path, text), "FWC505")
    assert bool(found) is refused
    if refused:
        assert "backslash at its end" in found[0].message


@pytest.mark.parametrize(("password", "refused"), [("}", True), (" }", False), ("{", False)])
def test_fwc505_password_that_is_a_closing_brace(tmp_path, password, refused):
    text = mutate(('password "s3cret"', f'password "{password}"'))
    found = with_code(run(tmp_path, text), "FWC505")
    assert bool(found) is refused
    if refused:
        assert "end of the block" in found[0].message


@pytest.mark.root
@pytest.mark.parametrize(("line", "complaint"), [
    ('auth_pass "ab\\"', "Unterminated quote"),
    ('auth_pass "ab\\\\\\"', "Unterminated quote"),
    ('auth_pass "ab\\\\"', None),
    ('auth_pass "}"', "Unknown keyword 'virtual_ipaddress'"),  # the block ends there
    ('auth_pass " }"', None),
])
def test_keepalived_misreads_the_quoted_values_fwc_refuses(tmp_path, line, complaint):
    """What FWC505 and FWC252 claim, asked of keepalived (by hand: fwc refuses to write it)."""
    conf = tmp_path / "k.conf"
    conf.write_text(
        "vrrp_instance VI_1 {\n    state BACKUP\n    interface eth0\n"
        "    virtual_router_id 51\n    priority 100\n    advert_int 1\n"
        f"    authentication {{\n        auth_type PASS\n        {line}\n    }}\n"
        "    virtual_ipaddress {\n        192.0.2.254/24 dev eth0\n    }\n}\n",
        encoding="utf-8")
    with namespace(("eth0",)) as ns:
        result = in_ns(ns, "keepalived", "-t", "-e", "-f", str(conf))
    if complaint is None:
        assert result.returncode == 0 and result.stderr == "", result.stderr
    else:
        assert complaint in result.stderr
    assert escape_refuses(line.partition('"')[2][:-1]) is (complaint is not None)


def escape_refuses(text: str) -> bool:
    try:
        escape.keepalived_string(text)
    except escape.UnwritableText:
        return True
    return False


def test_log_prefix_is_cut_in_bytes_never_inside_a_character(tmp_path):
    text = mutate(("accept from lan6   to any      service tcp/80,443",
                   'accept from lan6   to any      service tcp/80,443 log "' + "é" * 15 + '"'))
    analysis = run(tmp_path, text)
    d = the_one(analysis, "FWC501")
    # an error since issue 15; what the kernel would keep is counted in bytes
    assert d.is_error and f'would keep "{"é" * 14}"' in d.message and "29 bytes" in d.message
    assert cut_utf8("é" * 15, 29) == "é" * 14
    fitting = mutate(("accept from lan6   to any      service tcp/80,443",
                      'accept from lan6   to any      service tcp/80,443 log "' + "é" * 14 + '"'))
    rules = compiled_files(write(tmp_path, fitting))["edge/fw1/ip6tables.rules"]
    assert f'--log-prefix "{"é" * 14} "' in rules  # 28 bytes and the space: it fits


@pytest.mark.root
def test_non_ascii_log_prefix_loads_into_the_kernel(tmp_path):
    text = mutate(("accept from lan    to any      service tcp/80,443",
                   'accept from lan    to any      service tcp/80,443 log "' + "é" * 14 + '"'))
    rules = compiled_files(write(tmp_path, text))["edge/fw1/iptables.rules"]
    with namespace(("eth0", "eth1", "eth2")) as ns:
        loaded = in_ns(ns, "iptables-restore", stdin=rules)
    assert loaded.returncode == 0, loaded.stderr



# 63 bytes with the trailing space fwc adds: the longest NFLOG prefix FWC501 lets through
NFLOG_PREFIX = "n" * 60 + "é"


def nflog_policy() -> str:
    rule = "accept from lan    to any      service tcp/80,443"
    return mutate((rule, f'{rule} log "{NFLOG_PREFIX}" group 5'),
                  ("    interface lan ",
                   f'    log {{ group 7  drops "{NFLOG_PREFIX}" }}\n    interface lan '))


def test_an_nflog_prefix_up_to_63_bytes_compiles_for_iptables(tmp_path):
    """FWC501 allows 63 bytes with `group`; the renderer once held every prefix to LOG's 29
    and `fwc compile` stopped with an internal error (FWC900) instead."""
    files = compiled_files(write(tmp_path, nflog_policy()))
    rules = files["edge/fw1/iptables.rules"]
    assert rules.count(f'--nflog-prefix "{NFLOG_PREFIX} "') >= 3  # the rule, INPUT, FORWARD
    with pytest.raises(escape.UnwritableText):
        escape.iptables_log_prefix(NFLOG_PREFIX + "x ", nflog=True)
    with pytest.raises(escape.UnwritableText):
        escape.iptables_log_prefix("x" * 30)


@pytest.mark.root
def test_an_nflog_prefix_of_63_bytes_loads_into_the_kernel(tmp_path):
    files = compiled_files(write(tmp_path, nflog_policy()))
    with namespace(("eth0", "eth1", "eth2")) as ns:
        for name, tool in (("iptables.rules", "iptables-restore"),
                           ("ip6tables.rules", "ip6tables-restore")):
            loaded = in_ns(ns, tool, stdin=files[f"edge/fw1/{name}"])
            assert loaded.returncode == 0, loaded.stderr
        saved = in_ns(ns, "iptables-save").stdout
    assert f'--nflog-prefix "{NFLOG_PREFIX} "' in saved

# -- item 4: limits of the real programs --------------------------------------------------------

FW1_UPLINK = "uplink eth1 198.51.100.1/24"


def test_fwc114_device_name_longer_than_15_bytes(tmp_path):
    text = mutate((FW1_UPLINK, "uplink eth1.longvlan123 198.51.100.1/24"))
    d = the_one(run(tmp_path, text), "FWC114")
    assert d.span.line == line_of(text, "eth1.longvlan123") and "16 bytes" in d.message


def test_fwc114_device_name_of_15_bytes_is_fine(tmp_path):
    text = mutate((FW1_UPLINK, "uplink eth1.longvlan12 198.51.100.1/24"))
    assert with_code(run(tmp_path, text), "FWC114") == []


def test_fwc114_device_name_with_at_sign(tmp_path):
    text = mutate((FW1_UPLINK, "uplink eth1@if7 198.51.100.1/24"))
    d = the_one(run(tmp_path, text), "FWC114")
    assert "'@'" in d.message and "'eth1'" in (d.hint or "")


FW1_SYNC = "sync   eth2 203.0.113.1/24"


@pytest.mark.parametrize("device", ["ae0", "bad", "Default", "Sync", "on", "NOTRACK"])
def test_fwc114_sync_device_conntrackd_reads_as_a_keyword_or_address(tmp_path, device):
    text = mutate((FW1_SYNC, f"sync   {device} 203.0.113.1/24"))
    d = the_one(run(tmp_path, text), "FWC114")
    assert d.span.line == line_of(text, f"sync   {device} ")
    assert "sync link 'sync'" in d.message and "conntrackd.conf reads" in d.message


@pytest.mark.parametrize(("changes"), [
    ((FW1_UPLINK, "uplink ae0 198.51.100.1/24"),),  # not in conntrackd.conf
    ((FW1_SYNC, "sync   ae0.12 203.0.113.1/24"),),  # longer than the hex: a name
    ((FW1_SYNC, "sync   ftfw0 203.0.113.1/24"),),
    ((FW1_SYNC, "sync   default 203.0.113.1/24"),),  # the keywords are case-sensitive
])
def test_fwc114_other_devices_and_longer_names_are_fine(tmp_path, changes):
    assert with_code(run(tmp_path, mutate(*changes)), "FWC114") == []


@pytest.mark.parametrize("device", ["ae0", "dead", "abcde", "Default", "default", "Sync",
                                    "on", "Off", "yes", "ftfw", "ftfw0", "persistent",
                                    "persistenT", "for", "eth2", "bond0.12"])
def test_conntrackd_reads_an_interface_name_as_fwc_says(tmp_path, device):
    """What FWC114 claims of the sync device, asked of conntrackd's parser."""
    files = compiled_files(write(tmp_path, BASE))
    conf = tmp_path / "conntrackd.conf"
    conf.write_text(files["edge/fw1/conntrackd.conf"].replace("Interface eth2",
                                                               f"Interface {device}"))
    parsed = subprocess.run(["conntrackd", "-C", str(conf), "-s"], capture_output=True,
                            text=True, timeout=30)
    refused = "parsing config file" in parsed.stdout + parsed.stderr
    assert refused is escape.conntrackd_reserved(device), parsed.stderr


@pytest.mark.root
@pytest.mark.parametrize(("device", "ok"), [("a" * 15, True), ("a" * 16, False)])
def test_iptables_restore_limit_is_ifnamsiz(device, ok):
    rules = f"*filter\n-A INPUT -i {device} -j ACCEPT\nCOMMIT\n"
    with namespace() as ns:
        assert (in_ns(ns, "iptables-restore", "--test", stdin=rules).returncode == 0) is ok


def test_fwc115_member_name_longer_than_a_file_name(tmp_path):
    long = "fw" + "x" * 254
    text = mutate(("member fw2 priority 100", f"member {long} priority 100"))
    d = the_one(run(tmp_path, text), "FWC115")
    assert d.span.line == line_of(text, long) and "256 bytes" in d.message
    assert with_code(run(tmp_path, text.replace(long, long[:-1])), "FWC115") == []


def test_fwc116_comment_too_long_for_iptables(tmp_path):
    deep = tmp_path / ("d" * 200) / ("e" * 60)
    deep.mkdir(parents=True)
    (deep / "rules.fw").write_text(EXTRA_RULE)
    include = f"{'d' * 200}/{'e' * 60}/rules.fw"
    d = the_one(run(tmp_path, f'include "{include}"\n' + BASE), "FWC116")
    assert d.span.file.endswith("rules.fw") and d.span.line == 2
    assert f"{proto.IPTABLES_COMMENT_MAX}" in d.message


def test_fwc116_silent_for_ordinary_paths(tmp_path):
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "rules.fw").write_text(EXTRA_RULE)
    assert with_code(run(tmp_path, 'include "lib/rules.fw"\n' + BASE), "FWC116") == []


# (BASE's last rule would shadow the included ones: FWC401)
_NO_DROP = mutate(("    drop   from any    to any\n", ""))


def _arranged_include(tmp_path: Path, path_bytes: int) -> str:
    """BASE including a file PATH_BYTES long (from the root policy) whose policy is large
    enough to be arranged: its line 2 is a rule of 2 x 2 lines without devices, which
    the arrangement writes once in a chain of its own and jumps to from every copy
    (`fwc arrange: FILE:2`); 80 one-line rules by interface pair follow."""
    first = f"{'d' * 200}/"
    name = "e" * (path_bytes - len(first) - len("/rules.fw"))
    (tmp_path / first / name).mkdir(parents=True)
    pairs = [("lan", "uplink"), ("uplink", "lan")]
    rules = [f"    accept from 192.0.2.{10 + i} to any service tcp/{1000 + i} "
             f"in {pairs[i % 2][0]} out {pairs[i % 2][1]}" for i in range(80)]
    (tmp_path / first / name / "rules.fw").write_text(
        "policy edge {\n    accept from client, web to server, 198.51.100.20 service tcp/22\n"
        + "\n".join(rules) + "\n}\n")
    include = f"{first}{name}/rules.fw"
    assert len(include) == path_bytes
    return include


def test_fwc116_leaves_room_for_the_arrangement_comment(tmp_path):
    """A filter rule's label of 243-255 bytes fits `--comment`, but the jumps to its shared
    chain say `fwc arrange: LABEL`: `fwc check` passed such a policy and `fwc compile`
    failed with an internal error (FWC900, UnwritableText) once its chains were large."""
    include = _arranged_include(tmp_path, 246)  # labels of 248 and 249 bytes
    analysis = run(tmp_path, f'include "{include}"\n' + _NO_DROP)
    found = [d for d in with_code(analysis, "FWC116") if d.span.line == 2]
    assert len(found) == 1 and found[0].span.file.endswith("rules.fw")
    assert "248 bytes, 261 in the arrangement's jumps" in found[0].message


def test_an_arranged_policy_within_fwc116_compiles(tmp_path):
    """The other side of the bound: 239 bytes of path (labels of 241 and 242 bytes) pass
    the check and compile, the shared chain's jumps commented within the limit."""
    include = _arranged_include(tmp_path, 239)
    files = compiled_text(tmp_path, f'include "{include}"\n' + _NO_DROP)
    comment = f'--comment "fwc arrange: {include}:2"'
    assert comment in files["fw1/iptables.rules"]
    assert len(comment) - len('--comment ""') == 254


def test_fwc116_counts_the_comments_made_of_an_interface_name(tmp_path):
    """`fwc arrange: out NAME` (a jump by device in an arranged chain) and `fwc auto: mss
    NAME` are longer than the name FWC115 allows up to 255 bytes."""
    for name, comment_bytes in (("i" * 239, 256), ("i" * 238, None)):
        text = mutate(("interface uplink vip", f"interface {name} vip"),
                      ("uplink eth1 198.51.100.1/24", f"{name} eth1 198.51.100.1/24"),
                      ("uplink eth1 198.51.100.2/24", f"{name} eth1 198.51.100.2/24"),
                      ("in uplink\n", f"in {name}\n"), ("out uplink ->", f"out {name} ->"),
                      ("service tcp/80 in uplink ->", f"service tcp/80 in {name} ->"))
        found = with_code(run(tmp_path, text), "FWC116")
        if comment_bytes is None:
            assert found == []
            continue
        [d] = found
        assert d.span.line == line_of(text, f"interface {name}")
        assert f"{comment_bytes} bytes" in d.message and "fwc arrange: out" in d.message


def test_fwc116_counts_the_comment_of_sync_allow(tmp_path):
    """`sync { allow ... }` writes every service into one comment, `fwc auto: sync allow
    ...`: thirty ports failed the compile with an internal error (FWC900)."""
    allow = ", ".join(f"tcp/{2000 + i}" for i in range(30))
    text = mutate(("port 3780 }", f"port 3780  allow {allow} }}"))
    [d] = with_code(run(tmp_path, text), "FWC116")
    assert d.span.line == line_of(text, "allow") and "319 bytes" in d.message
    fewer = mutate(("port 3780 }", f"port 3780  allow {', '.join(allow.split(', ')[:20])} }}"))
    assert with_code(run(tmp_path, fewer), "FWC116") == []


@pytest.mark.root
@pytest.mark.parametrize("size", [255, 256, 300])
def test_iptables_keeps_255_bytes_of_a_comment(size):
    """Why FWC116 is an error: both backends silently cut the comment (here inside an
    'é', leaving invalid UTF-8), so the loaded rules differ from the generated ones."""
    comment = "x" + "é" * ((size - 1) // 2) + "x" * ((size - 1) % 2)
    assert len(comment.encode()) == size
    rules = f'*filter\n-A INPUT -m comment --comment "{comment}" -j ACCEPT\nCOMMIT\n'
    with namespace() as ns:
        assert in_ns(ns, "iptables-restore", stdin=rules).returncode == 0
        saved = subprocess.run(["ip", "netns", "exec", ns, "iptables-save"],
                               capture_output=True, timeout=60).stdout
    (line,) = [x for x in saved.splitlines() if x.startswith(b"-A INPUT")]
    kept = line.split(b"--comment ", 1)[1].rsplit(b" -j ACCEPT", 1)[0].strip(b'"')
    assert len(kept) == min(size, proto.IPTABLES_COMMENT_MAX)
    assert kept == comment.encode()[:proto.IPTABLES_COMMENT_MAX]


def test_password_file_that_is_not_utf8_is_a_diagnostic(tmp_path):
    (tmp_path / "secret").write_bytes(b"s3\xffcret\n")
    text = mutate(('password "s3cret"', 'password file "secret"'))
    d = the_one(run(tmp_path, text), "FWC002")
    assert "is not UTF-8" in d.message and d.span.line == line_of(text, "password file")


def test_password_file_with_a_c1_control_is_refused(tmp_path):
    """Found by the property test: FWC505 knew only C0 controls and DEL."""
    (tmp_path / "secret").write_text("s3\x85cret\n", encoding="utf-8")
    d = the_one(run(tmp_path, mutate(('password "s3cret"', 'password file "secret"'))),
                "FWC505")
    assert "U+0085" in d.message


@pytest.mark.parametrize("password", ["${_PWD}", "${_HASH}", "a$b"])
def test_a_password_keepalived_would_expand_is_refused(tmp_path, password):
    # keepalived 2.2 replaces ${_PWD} with the config's directory, cut to 8 bytes
    d = the_one(run(tmp_path, mutate(('password "s3cret"', f'password "{password}"'))),
                "FWC505")
    assert "'$'" in d.message and password not in d.message


def test_a_password_file_keepalived_would_expand_is_refused(tmp_path):
    (tmp_path / "secret").write_text("${_PWD}\n", encoding="utf-8")
    d = the_one(run(tmp_path, mutate(('password "s3cret"', 'password file "secret"'))),
                "FWC505")
    assert "'$'" in d.message


def test_rule_text_writes_the_log_prefix_as_a_literal(tmp_path):
    """fwc diff and query show rules in the language: the prefix reads back unchanged."""
    text = mutate(("accept from lan6   to any      service tcp/80,443",
                   'accept from lan6   to any      service tcp/80,443 log "say \\"hi\\" \\\\o/"'))
    analysis = run(tmp_path, text)
    (rule,) = [r for r in analysis.policy.clusters[0].rules if r.log]
    assert rule.text().endswith('log "say \\"hi\\" \\\\o/"')
    assert decode_literal(rule.text().split("log ", 1)[1][1:-1]) == 'say "hi" \\o/'
