"""`fwc fmt`: canonical layout, idempotent, comments kept, meaning and compiled output unchanged."""

from __future__ import annotations

import dataclasses
import re
import shutil
from pathlib import Path

import pytest
from conftest import REPO
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fwc.cli import main
from fwc.frontend.formatting import FormatError, format_text, tokenize
from fwc.pipeline import analyse

POLICIES = REPO / "policies"
EXAMPLES = sorted(POLICIES.rglob("*.fw"))
EDGE = POLICIES / "edge.fw"
_PATH_FIELDS = {"root", "sources", "password_file"}
_SOURCE_REF = re.compile(rb"[\w./-]+\.fw:\d+")


def semantic(value: object) -> object:
    """A model value with every source position and path removed."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return (type(value).__name__, tuple(
            (f.name, semantic(getattr(value, f.name))) for f in dataclasses.fields(value)
            if "span" not in f.name and f.name not in _PATH_FIELDS))
    if isinstance(value, dict):
        return tuple(sorted((k, semantic(v)) for k, v in value.items()))
    if isinstance(value, tuple | list):
        return tuple(semantic(v) for v in value)
    return value


def compiled(path: Path) -> dict[str, bytes]:
    from fwc.backend.output import compile_policy

    analysis = analyse(path, run_checks=False)
    assert analysis.policy is not None
    out: dict[str, bytes] = {}
    for cluster in compile_policy(analysis.policy, redact=True):
        for file in cluster.files:
            if file.path != "MANIFEST":  # holds the sources' hashes, which must change
                out[f"{cluster.name}/{file.path}"] = _SOURCE_REF.sub(b"<src>", file.content)
    return out


def meaning(path: Path) -> object:
    analysis = analyse(path, run_checks=False)
    assert analysis.policy is not None, [d.message for d in analysis.diagnostics]
    assert not [d for d in analysis.diagnostics if d.is_error]
    return semantic(analysis.policy)


def comments_of(text: str) -> list[str]:
    return [c.text for c in tokenize(text)[1]]


def assert_canonical_shape(text: str) -> None:
    lines = text.split("\n")
    assert text.endswith("\n") and not text.endswith("\n\n")
    assert "\t" not in text
    for line in lines:
        assert line == line.rstrip()
        indent = len(line) - len(line.lstrip(" "))
        assert indent % 4 == 0
    assert "\n\n\n" not in text


# -- the example policies -----------------------------------------------------------------
@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: str(p.relative_to(POLICIES)))
def test_examples_are_idempotent_and_keep_comments(path):
    text = path.read_text(encoding="utf-8")
    once = format_text(text)
    assert format_text(once) == once
    assert comments_of(once) == comments_of(text)
    assert_canonical_shape(once)


def test_formatting_the_examples_changes_neither_meaning_nor_compiled_output(tmp_path):
    mirror = tmp_path / "policies"
    shutil.copytree(POLICIES, mirror)
    for path in mirror.rglob("*.fw"):
        path.write_text(format_text(path.read_text(encoding="utf-8")), encoding="utf-8")
    for original in POLICIES.glob("*.fw"):
        formatted = mirror / original.name
        assert meaning(formatted) == meaning(original)
        assert compiled(formatted) == compiled(original)


def test_edge_is_nearly_canonical_already():
    text = EDGE.read_text(encoding="utf-8")
    changed = [(a, b) for a, b in zip(text.splitlines(), format_text(text).splitlines(),
                                      strict=True) if a != b]
    # the style is edge.fw's: only the NAT line's gap before `in uplink` differs
    assert len(changed) <= 1, changed
    assert all(b.split() == a.split() for a, b in changed)


# -- the layout ---------------------------------------------------------------------------------
def test_layout_of_a_messy_policy():
    messy = (
        "# head\n\n\nhost a 192.0.2.1   # trailing a\nhost   bbbbbb 192.0.2.2 network n1 "
        "192.0.2.0/24\n   # before service\nservice s1 tcp/22,80-90 , udp/53\n"
        "policy c {\n\n  accept from a, !bbbbbb to any service s1 log   # why\n"
        "  drop from any to\n     # odd\n     firewall\n\n\n\n  reject from any to any "
        "service tcp/1-5, s1 in lan\n  # last\n\n}\n# end\n")
    assert format_text(messy) == (
        "# head\n"
        "\n"
        "host    a      192.0.2.1  # trailing a\n"
        "host    bbbbbb 192.0.2.2\n"
        "network n1     192.0.2.0/24\n"
        "# before service\n"
        "service s1     tcp/22,80-90, udp/53\n"
        "policy c {\n"
        # `a, !bbbbbb` sticks out: it overflows instead of widening the source column;
        # `firewall` ends its line, so it does not widen the destination column
        "    accept from a, !bbbbbb to any service s1  log  # why\n"
        "    # odd\n"
        "    drop   from any to firewall\n"
        "\n"
        "    reject from any to any service tcp/1-5, s1  in lan\n"
        "    # last\n"
        "}\n"
        "# end\n")


def test_cluster_layout_inline_and_multiline_option_blocks():
    text = EDGE.read_text(encoding="utf-8")
    cluster = text[text.index("cluster edge {"):text.index("policy edge {")]
    squeezed = " ".join(cluster.split()).replace("sync {", "sync {\n")
    formatted = format_text(squeezed)
    assert "    vrrp { password \"s3cret\"  advert 1s  vrid 51 }\n" in formatted
    assert "    sync {\n        link sync\n        mode ftfw\n" in formatted
    assert "    interface uplink vip 198.51.100.254/24  vrid 52\n" in formatted
    assert "        uplink eth1 198.51.100.1/24\n" in formatted
    assert format_text(formatted) == formatted


def test_nat_targets_and_brackets():
    text = ("nat c {\n  dnat from any to 192.0.2.1 service tcp/80 -> [ 2001:db8::5 ] : 8080\n"
            "  masquerade from any to any out lan\n}\n")
    assert format_text(text) == (
        "nat c {\n"
        "    dnat       from any to 192.0.2.1 service tcp/80 -> [2001:db8::5]:8080\n"
        "    masquerade from any to any       out lan\n"
        "}\n")


# -- properties on mutated and generated policies ------------------------------------------
SEPARATORS = (" ", "  ", "\t", "\n", " \n    ", "\n\n")


def rejoin(text: str, separators: list[str], comment_at: set[int]) -> str:
    """The same tokens with other whitespace, and comments at chosen token boundaries."""
    tokens, _ = tokenize(text)
    out: list[str] = []
    for n, token in enumerate(tokens):
        out.append(str(token))
        if n in comment_at:
            out.append(f"  # c{n}\n")
        out.append(separators[n % len(separators)])
    return "".join(out)


@pytest.fixture(scope="module")
def mirror(tmp_path_factory) -> Path:
    """A copy of policies/ (includes stay resolvable) to write variants into."""
    directory = tmp_path_factory.mktemp("fmt") / "policies"
    shutil.copytree(POLICIES, directory)
    return directory


@settings(max_examples=15, deadline=None, suppress_health_check=[
    HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(separators=st.lists(st.sampled_from(SEPARATORS), min_size=1, max_size=12),
       comment_at=st.sets(st.integers(0, 250), max_size=8),
       example=st.sampled_from([p for p in EXAMPLES if p.parent == POLICIES]))
def test_mutated_examples_format_to_a_fixed_point_with_the_same_meaning(
        mirror, separators, comment_at, example):
    mutated = rejoin(example.read_text(encoding="utf-8"), separators, comment_at)
    once = format_text(mutated)
    assert format_text(once) == once
    assert comments_of(once) == comments_of(mutated)
    assert_canonical_shape(once)
    before = mirror / f"mutated-{example.name}"
    before.write_text(mutated, encoding="utf-8")
    after = mirror / f"formatted-{example.name}"
    after.write_text(once, encoding="utf-8")
    assert meaning(after) == meaning(before)
    assert compiled(after) == compiled(before)


ACTIONS = ("accept", "drop", "reject")
ENDPOINTS = ("any", "firewall", "lan", "client", "!client", "guests", "uplink.vip", "server",
             "192.0.2.7", "192.0.2.0/25", "192.0.2.3-192.0.2.9")


@st.composite
def generated_policy(draw) -> str:
    header = EDGE.read_text(encoding="utf-8").split("policy edge {")[0]
    rules = []
    for _ in range(draw(st.integers(1, 8))):
        parts = [draw(st.sampled_from(ACTIONS)), "from",
                 ", ".join(draw(st.lists(st.sampled_from(ENDPOINTS), min_size=1, max_size=2,
                                         unique=True))),
                 "to", draw(st.sampled_from(ENDPOINTS))]
        if draw(st.booleans()):
            parts += ["service", ", ".join(draw(st.lists(
                st.sampled_from(("ssh", "web", "tcp/8000-8080", "udp/53", "icmp/echo-request")),
                min_size=1, max_size=3, unique=True)))]
        for option in draw(st.lists(st.sampled_from(('in lan', 'out uplink', 'log',
                                                     'log "x y"', 'only fw1')),
                                    max_size=3, unique=True)):
            if option.split()[0] not in " ".join(parts):
                parts.append(option)
        rules.append(" ".join(parts))
    comment = draw(st.sampled_from(("", "  # note", "\n    # own line")))
    body = "\n".join(f"    {rule}{comment if n == 0 else ''}" for n, rule in enumerate(rules))
    return f"{header}policy edge {{\n{body}\n}}\n"


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=generated_policy(),
       separators=st.lists(st.sampled_from(SEPARATORS), min_size=1, max_size=6))
def test_generated_policies_format_to_a_fixed_point_with_the_same_meaning(
        tmp_path_factory, text, separators):
    directory = tmp_path_factory.mktemp("gen")
    source = directory / "p.fw"
    source.write_text(text, encoding="utf-8")
    analysis = analyse(source, run_checks=False)
    if not analysis.ok:
        return  # e.g. a log option given twice: not a valid policy, nothing to format
    mutated = rejoin(text, separators, set())
    for variant in (text, mutated):
        once = format_text(variant)
        assert format_text(once) == once
        formatted = directory / "f.fw"
        formatted.write_text(once, encoding="utf-8")
        assert meaning(formatted) == meaning(source)
        assert compiled(formatted) == compiled(source)


# -- the command ------------------------------------------------------------------------------
def test_check_lists_files_that_would_change_without_writing(tmp_path, capsys):
    clean = tmp_path / "clean.fw"
    clean.write_text(format_text(EDGE.read_text(encoding="utf-8")), encoding="utf-8")
    dirty = tmp_path / "dirty.fw"
    dirty.write_text("host   a   192.0.2.1\n", encoding="utf-8")
    assert main(["fmt", "--check", str(clean), str(dirty)]) == 1
    out, _ = capsys.readouterr()
    assert out.splitlines() == [str(dirty)]
    assert dirty.read_text(encoding="utf-8") == "host   a   192.0.2.1\n"
    assert main(["fmt", "--check", str(clean)]) == 0


def test_fmt_rewrites_in_place(tmp_path, capsys):
    dirty = tmp_path / "dirty.fw"
    dirty.write_text("host   a   192.0.2.1 # x\n", encoding="utf-8")
    assert main(["fmt", str(dirty)]) == 0
    assert dirty.read_text(encoding="utf-8") == "host a 192.0.2.1  # x\n"
    assert main(["fmt", "--check", str(dirty)]) == 0


def test_fmt_refuses_what_does_not_parse(tmp_path, capsys):
    bad = tmp_path / "bad.fw"
    bad.write_text("host a 192.0.2.1\npolicy x {\n  accept from\n}\n", encoding="utf-8")
    missing = tmp_path / "missing.fw"
    assert main(["fmt", str(bad), str(missing)]) == 1
    _, err = capsys.readouterr()
    assert "FWC001" in err and "FWC002" in err and "Traceback" not in err
    assert bad.read_text(encoding="utf-8").startswith("host a 192.0.2.1\n")


def test_the_example_policies_we_wrote_are_canonical():
    # policies/edge.fw is kept exactly as the reference text of the language issue.
    files = [str(p) for p in sorted(POLICIES.rglob("*.fw")) if p.name != "edge.fw"]
    assert len(files) >= 4
    assert main(["fmt", "--check", *files]) == 0


# -- one parser ---------------------------------------------------------------------------------
def test_the_policy_parser_keeps_the_comments_its_lexer_read():
    from fwc.frontend.parse import parse_text

    text = 'host a 192.0.2.1  # why a\n# own line\npolicy c {\n  accept from a to any # r\n}\n'
    source, diagnostics = parse_text(text, "c.fw")
    assert not diagnostics
    assert [(c.value, c.line, c.column) for c in source.comments] == [
        ("# why a", 1, 19), ("# own line", 2, 1), ("# r", 4, 24)]
    assert all(text[c.start:c.end] == c.value for c in source.comments)


def test_fmt_refuses_what_the_parser_refuses():
    # the formatter had its own parser, which did not decode strings: it laid out a
    # policy that `fwc check` rejects
    text = 'host a 192.0.2.1\npolicy c {\n    accept from a to any log "x\\q"\n}\n'
    with pytest.raises(FormatError):
        format_text(text)


@pytest.mark.parametrize("path", sorted((REPO / "tests" / "bad").glob("*.fw")),
                         ids=lambda p: p.name)
def test_bad_corpus_that_parses_formats_to_a_fixed_point(path):
    from fwc.frontend.parse import parse_text

    text = path.read_text(encoding="utf-8")
    if parse_text(text, path.name)[1]:
        with pytest.raises(FormatError):
            format_text(text)
        return
    once = format_text(text)
    assert format_text(once) == once
    assert comments_of(once) == comments_of(text)
    assert_canonical_shape(once)
