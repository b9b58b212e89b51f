"""Property: no text written into a string of the language changes the generated files' structure.

Arbitrary Unicode (control characters, quotes, backslashes, separators, `#`, `!`,
`{`, non-ASCII) goes into every place the language takes a string or a free
name: include file names, the VRRP password (literal and password file), log
prefixes, member ssh targets, cluster/member/interface names and `#` comments.
Either `fwc check` refuses it with diagnostics (never a traceback, never an
internal error FWC900), or the compiled files have exactly the structure they
have with a benign value: the same files, the same number of lines, rules,
tables and keepalived blocks, and every rule's comment reads back as its source.
"""

from __future__ import annotations

import contextlib
import re
import shlex
from pathlib import Path

from checkkit import BASE, mutate
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fwc.backend.output import compile_policy
from fwc.pipeline import analyse

SETTINGS = settings(max_examples=40, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow])
# Arbitrary text, with the characters that matter to some format made likely, and
# escape sequences of other languages (`\\n` in a raw literal once became a newline).
HOSTILE = st.lists(st.one_of(
    st.characters(),
    st.sampled_from(list('"\\\n\r\t\x00\x0b\x1b\x7f\x85\u2028\u202e #!{};$%\'`é日')
                    + ["\\n", "\\x0a", "\\u2028", "\\t", "\\0", "\n-A INPUT -j ACCEPT\n"]),
), max_size=30).map("".join)
NAME = st.from_regex(r"[A-Za-z_](?:[A-Za-z0-9_-]{0,300}[A-Za-z0-9_])?", fullmatch=True)
RULE = "accept from lan    to any      service tcp/80,443"
EXTRA = "policy edge {\n    accept from any to firewall service tcp/9999\n}\n"


def literal(value: str) -> str:
    """A string literal holding `value` (only the two documented escapes)."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def structure(files: dict[str, str]) -> dict[str, tuple[int, ...]]:
    """Per file: lines, rules, chains, tables, COMMITs, blocks opened and closed."""
    out = {}
    for path, text in files.items():
        lines = [x.strip() for x in text.split("\n")]
        out[path] = (len(lines), sum(x.startswith("-A ") for x in lines),
                     sum(x.startswith(":") for x in lines), sum(x.startswith("*") for x in lines),
                     lines.count("COMMIT"), sum(x.endswith("{") for x in lines),
                     lines.count("}"))
    return out


def comments_read_back(files: dict[str, str], root: Path) -> None:
    """Every `--comment` is one word naming an existing source line (or an automatic rule)."""
    for path, text in files.items():
        if not path.endswith(".rules") or "ipsets" in path:
            continue
        for line in text.splitlines():
            if not line.startswith("-A "):
                continue
            words = shlex.split(line)  # iptables-restore's quoting is POSIX's for "..."
            comment = words[words.index("--comment") + 1]
            if comment.startswith("fwc "):
                continue
            source, _, number = comment.rpartition(":")
            assert number.isdigit() and (root / source).is_file(), (path, line)


def outcome(path: Path) -> dict[str, tuple[int, ...]] | None:
    """The structure of the compiled files, or None when the policy is refused properly."""
    analysis = analyse(path)
    assert not [d for d in analysis.diagnostics if d.code == "FWC900"], analysis.diagnostics
    if not analysis.ok:
        errors = [d for d in analysis.diagnostics if d.severity.name == "ERROR"]
        assert errors and all(d.message and "\n" not in d.message for d in errors)
        return None
    files = {f"{c.name}/{f.path}": f.content.decode("utf-8")
             for c in compile_policy(analysis.policy) for f in c.files
             if f.path != "MANIFEST"}
    comments_read_back(files, path.parent)
    return structure(files)


def compare(tmp: Path, hostile_text: str, benign_text: str, name: str = "p.fw") -> None:
    (tmp / "hostile").mkdir(exist_ok=True)
    (tmp / "benign").mkdir(exist_ok=True)
    try:
        (tmp / "hostile" / name).write_text(hostile_text, encoding="utf-8")
    except UnicodeEncodeError:
        return  # (a lone surrogate: no UTF-8 file holds it, so no policy can)
    (tmp / "benign" / name).write_text(benign_text, encoding="utf-8")
    got = outcome(tmp / "hostile" / name)
    if got is None:
        return
    benign = outcome(tmp / "benign" / name)
    assert benign is not None
    # Names change file paths (cluster/member): compare the shapes, in order.
    assert sorted(got.values()) == sorted(benign.values())


@SETTINGS
@given(value=HOSTILE)
def test_log_prefix(tmp_path_factory, value):
    tmp = tmp_path_factory.mktemp("log")
    compare(tmp, mutate((RULE, f"{RULE} log {literal(value)}")),
            mutate((RULE, f"{RULE} log \"x\"")))


@SETTINGS
@given(value=HOSTILE)
def test_log_prefix_raw(tmp_path_factory, value):
    """The same text between quotes without escaping: the lexer and decoder see it raw."""
    tmp = tmp_path_factory.mktemp("lograw")
    compare(tmp, mutate((RULE, f'{RULE} log "{value}"')), mutate((RULE, f"{RULE} log \"x\"")))


@SETTINGS
@given(value=HOSTILE)
def test_password(tmp_path_factory, value):
    tmp = tmp_path_factory.mktemp("pw")
    compare(tmp, mutate(('password "s3cret"', f"password {literal(value)}")), BASE)


@SETTINGS
@given(value=HOSTILE)
def test_password_file(tmp_path_factory, value):
    tmp = tmp_path_factory.mktemp("pwfile")
    (tmp / "hostile").mkdir()
    (tmp / "hostile" / "secret").write_bytes(value.encode("utf-8", "surrogatepass"))
    compare(tmp, mutate(('password "s3cret"', 'password file "secret"')), BASE)


@SETTINGS
@given(value=HOSTILE)
def test_ssh_target(tmp_path_factory, value):
    tmp = tmp_path_factory.mktemp("ssh")
    member = "member fw1 priority 150"
    compare(tmp, mutate((member, f"{member} ssh {literal(value)}")), BASE)


@SETTINGS
@given(value=HOSTILE)
def test_comment(tmp_path_factory, value):
    tmp = tmp_path_factory.mktemp("comment")
    first_line = value.split("\n")[0].split("\r")[0]
    compare(tmp, f"# {first_line}\n" + BASE, "# x\n" + BASE)


@SETTINGS
@given(value=HOSTILE)
def test_include_file_name(tmp_path_factory, value):
    tmp = tmp_path_factory.mktemp("inc")
    (tmp / "hostile").mkdir()
    (tmp / "benign").mkdir()
    (tmp / "benign" / "inc.fw").write_text(EXTRA)
    # A name the file system refuses: the include must then be a diagnostic.
    with contextlib.suppress(OSError, ValueError, UnicodeEncodeError):
        (tmp / "hostile" / value).write_text(EXTRA)
    compare(tmp, f"include {literal(value)}\n" + BASE, 'include "inc.fw"\n' + BASE)


@SETTINGS
@given(value=HOSTILE)
def test_include_file_name_raw(tmp_path_factory, value):
    """The issue's injection: the include name written between quotes as it is."""
    tmp = tmp_path_factory.mktemp("incraw")
    (tmp / "hostile").mkdir()
    (tmp / "benign").mkdir()
    (tmp / "benign" / "inc.fw").write_text(EXTRA)
    for name in {value, value.replace("\\n", "\n"), value.replace('\\"', '"')}:
        with contextlib.suppress(OSError, ValueError, UnicodeEncodeError):
            (tmp / "hostile" / name).write_text(EXTRA)
    compare(tmp, f'include "{value}"\n' + BASE, 'include "inc.fw"\n' + BASE)


@SETTINGS
@given(cluster=NAME, member=NAME, interface=NAME)
def test_names(tmp_path_factory, cluster, member, interface):
    tmp = tmp_path_factory.mktemp("names")
    hostile = re.sub(r"\bedge\b", cluster, BASE).replace("fw2", member)
    hostile = re.sub(r"\buplink\b(?!\.vip)", interface, hostile).replace(
        "uplink.vip", f"{interface}.vip")
    compare(tmp, hostile, BASE)
