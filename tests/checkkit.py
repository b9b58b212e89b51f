"""Helpers for the check tests: a small clean policy to mutate, and lookups by code."""

from __future__ import annotations

from pathlib import Path

from conftest import EXAMPLE_FILES as EXAMPLES  # noqa: F401 - the check tests' name for them

from fwc.backend.output import compile_policy
from fwc.diagnostics import Diagnostic, Severity
from fwc.pipeline import Analysis, analyse

# Clean on its own (asserted by test_base_policy_is_clean); every test changes one thing.
BASE = """\
network lan      192.0.2.0/24
network lan6     2001:db8:1::/64
host    client   192.0.2.10
host    web      192.0.2.80
host    server   198.51.100.10

cluster edge {
    vrrp { password "s3cret"  advert 1s  vrid 51 }
    sync { link sync  mode ftfw  multicast 225.0.0.50 port 3780 }

    interface lan    vip 192.0.2.254/24, 2001:db8:1::fe/64
    interface uplink vip 198.51.100.254/24  vrid 52
    interface sync

    member fw1 priority 150 {
        lan    eth0 192.0.2.1/24, 2001:db8:1::1/64
        uplink eth1 198.51.100.1/24
        sync   eth2 203.0.113.1/24
    }
    member fw2 priority 100 {
        lan    eth0 192.0.2.2/24, 2001:db8:1::2/64
        uplink eth1 198.51.100.2/24
        sync   eth2 203.0.113.2/24
    }
}

policy edge {
    accept from lan    to any      service tcp/80,443
    accept from lan6   to any      service tcp/80,443
    accept from client to firewall service tcp/22
    accept from any    to web      service tcp/80 in uplink
    accept from server to client   service tcp/5001
    drop   from any    to any
}

nat edge {
    snat from lan to any out uplink -> uplink.vip
    dnat from any to uplink.vip service tcp/80 in uplink -> web
}
"""


def run(tmp_path: Path, text: str, name: str = "p.fw") -> Analysis:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return analyse(path)


def compiled_files(tmp_path: Path, text: str, name: str = "p.fw") -> dict[str, str]:
    """TEXT, checked without errors and compiled in memory: its one cluster's files by
    `<member>/<file>`, as text."""
    analysis = run(tmp_path, text, name)
    assert analysis.policy is not None, analysis.diagnostics
    assert not [d for d in analysis.diagnostics if d.is_error], analysis.diagnostics
    [cluster] = compile_policy(analysis.policy)
    return {f.path: f.content.decode() for f in cluster.files}


def mutate(*replacements: tuple[str, str], base: str = BASE) -> str:
    """BASE with each (old, new) replaced exactly once; a missing `old` is a test bug."""
    text = base
    for old, new in replacements:
        assert text.count(old) == 1, f"{old!r} must occur exactly once"
        text = text.replace(old, new)
    return text


def second_uplink(after_sync: str) -> tuple[tuple[str, str], ...]:
    """`mutate` replacements giving BASE a second uplink: interface isp2 (VIP
    198.18.0.254, vrid 53) on eth3 of both members, with AFTER_SYNC (routes,
    route-rules) written after `interface sync`."""
    return (
        ("    interface sync\n", "    interface isp2 vip 198.18.0.254/24 vrid 53\n"
                                "    interface sync\n" + after_sync),
        ("        uplink eth1 198.51.100.1/24\n", "        uplink eth1 198.51.100.1/24\n"
                                                "        isp2   eth3 198.18.0.1/24\n"),
        ("        uplink eth1 198.51.100.2/24\n", "        uplink eth1 198.51.100.2/24\n"
                                                "        isp2   eth3 198.18.0.2/24\n"))


def line_of(text: str, needle: str) -> int:
    """1-based number of the only line containing needle."""
    hits = [n for n, line in enumerate(text.splitlines(), 1) if needle in line]
    assert len(hits) == 1, f"{needle!r} is on lines {hits}"
    return hits[0]


def with_code(analysis: Analysis, code: str) -> list[Diagnostic]:
    return [d for d in analysis.diagnostics if d.code == code]


def the_one(analysis: Analysis, code: str) -> Diagnostic:
    """The single diagnostic with this code (fails listing all diagnostics otherwise)."""
    found = with_code(analysis, code)
    assert len(found) == 1, [f"{d.code} {d.span}: {d.message}" for d in analysis.diagnostics]
    return found[0]


def assert_diagnostic(analysis: Analysis, code: str, severity: Severity, line: int,
                      *phrases: str) -> Diagnostic:
    diagnostic = the_one(analysis, code)
    assert diagnostic.severity is severity
    assert diagnostic.span is not None and diagnostic.span.line == line, diagnostic
    for phrase in phrases:
        assert phrase in diagnostic.message, (phrase, diagnostic.message)
    return diagnostic
