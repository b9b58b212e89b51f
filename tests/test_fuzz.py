"""Property-based: any input, however broken, ends in clean diagnostics, never an exception.

Mutated example policies (tokens and lines deleted, duplicated, swapped; random
characters inserted; truncated) and random text go through the parser, the
resolver and every check via `fwc.pipeline.analyse`; a few through the CLI.
"""

from __future__ import annotations

import re
from pathlib import Path

from checkkit import BASE, EXAMPLES
from conftest import run_fwc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fwc.checks import load_registry
from fwc.diagnostics import Severity, render_json, render_text
from fwc.pipeline import analyse

ROOT = Path("fuzz.fw")
SEEDS = [BASE] + [p.read_text(encoding="utf-8") for p in EXAMPLES]
CODE = re.compile(r"^FWC\d{3}$")
TOKENS = re.compile(r"\s+|[^\s,{}]+|[,{}]")
# Characters a policy is made of, plus a few that it is not.
ALPHABET = st.sampled_from(list("abcdefxyz0123456789.:/-,{}!\"# \n\t>;[]") + ["\x00", "é", "\\"])
FAST = settings(max_examples=200, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def check_clean(text: str, base_dir: Path | None = None) -> None:
    """Analyse `text` as a policy file; every outcome must be a well-formed diagnostic."""

    def reader(path: Path) -> str:
        if path == ROOT:
            return text
        # includes of the examples (policies/lib/...) are read from the checkout
        return ((base_dir or Path(".")) / path).read_text(encoding="utf-8")

    analysis = analyse(ROOT, reader=reader)
    registry = load_registry()
    for d in analysis.diagnostics:
        assert CODE.match(d.code), d
        assert d.code != "FWC900", f"a check crashed: {d.message}"
        assert d.code in registry, f"{d.code} is not registered"
        assert isinstance(d.severity, Severity)
        assert d.message and "\n" not in d.message, d
        if d.span is not None:
            assert d.span.line >= 0 and d.span.column >= 0, d
    render_text(analysis.diagnostics, analysis.program.texts)
    render_json(analysis.diagnostics)


@st.composite
def mutated_policy(draw) -> str:
    text = draw(st.sampled_from(SEEDS))
    for _ in range(draw(st.integers(1, 4))):
        operation = draw(st.sampled_from(
            ["delete_token", "duplicate_token", "swap_tokens", "delete_line", "duplicate_line",
             "swap_lines", "insert", "truncate", "renumber"]))
        if operation.endswith("token") or operation == "swap_tokens":
            parts = TOKENS.findall(text)
            if not parts:
                continue
            i = draw(st.integers(0, len(parts) - 1))
            j = draw(st.integers(0, len(parts) - 1))
            if operation == "delete_token":
                del parts[i]
            elif operation == "duplicate_token":
                parts.insert(i, parts[i])
            else:
                parts[i], parts[j] = parts[j], parts[i]
            text = "".join(parts)
        elif operation.endswith("line") or operation == "swap_lines":
            lines = text.split("\n")
            i = draw(st.integers(0, len(lines) - 1))
            j = draw(st.integers(0, len(lines) - 1))
            if operation == "delete_line":
                del lines[i]
            elif operation == "duplicate_line":
                lines.insert(i, lines[i])
            else:
                lines[i], lines[j] = lines[j], lines[i]
            text = "\n".join(lines)
        elif operation == "renumber":
            numbers = list(re.finditer(r"\d+", text))
            if not numbers:
                continue
            hit = numbers[draw(st.integers(0, len(numbers) - 1))]
            value = draw(st.sampled_from(["0", "1", "255", "256", "65536", "4294967296",
                                          "99999999999999999999999", "00", "3"]))
            text = text[:hit.start()] + value + text[hit.end():]
        elif operation == "insert":
            at = draw(st.integers(0, len(text)))
            text = text[:at] + draw(st.text(ALPHABET, min_size=1, max_size=6)) + text[at:]
        else:
            text = text[:draw(st.integers(0, len(text)))]
    return text


@FAST
@given(mutated_policy())
def test_mutated_examples_give_only_diagnostics(text: str) -> None:
    check_clean(text, EXAMPLES[0].parent if EXAMPLES else None)


@settings(max_examples=100, deadline=None)
@given(st.text(ALPHABET, max_size=300))
def test_random_text_gives_only_diagnostics(text: str) -> None:
    check_clean(text)


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=200))
def test_arbitrary_unicode_gives_only_diagnostics(text: str) -> None:
    check_clean(text)


def test_cli_on_broken_input_prints_diagnostics_not_tracebacks(tmp_path):
    broken = {
        "truncated.fw": BASE[: len(BASE) // 2],
        "shuffled.fw": "\n".join(reversed(BASE.splitlines())),
        "binary.fw": "cluster \x00\x01 { vrrp { advert 0.0001ms version 99 } }",
    }
    for name, text in broken.items():
        (tmp_path / name).write_text(text, encoding="utf-8")
    (tmp_path / "latin1.fw").write_bytes("host caf\xe9 192.0.2.1\n".encode("latin-1"))
    for name in [*broken, "latin1.fw"]:
        result = run_fwc("check", name, cwd=tmp_path)
        output = result.stdout + result.stderr
        assert "Traceback" not in output, output
        assert result.returncode == 1, (name, output)
        assert re.search(r"error\[FWC\d{3}\]", output), output


def test_huge_numbers_are_diagnostics(tmp_path):
    # Found by the fuzzer: float('9' * 400) is inf (round() raised OverflowError) and
    # int() refuses strings of more than 4300 digits.
    nines = "9" * 5000
    for old, new in [("advert 1s", f"advert {nines[:400]}s"),
                     ("advert 1s", f"advert {nines[:400]}.5ms"),
                     ("tcp/5001", f"tcp/{nines}"), ("tcp/5001", f"tcp/1-{nines}"),
                     ("tcp/5001", f"icmp/{nines}"), ("tcp/5001", f"proto/{nines}")]:
        assert BASE.count(old) == 1
        check_clean(BASE.replace(old, new))
        path = tmp_path / "huge.fw"
        path.write_text(BASE.replace(old, new), encoding="utf-8")
        assert not analyse(path).ok


@settings(max_examples=3, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(mutated_policy())
def test_cli_on_mutated_examples(tmp_path, text: str) -> None:
    path = tmp_path / "mutated.fw"
    path.write_text(text, encoding="utf-8")
    result = run_fwc("check", str(path), cwd=tmp_path)
    assert "Traceback" not in result.stdout + result.stderr
    assert result.returncode in (0, 1), result.stderr
