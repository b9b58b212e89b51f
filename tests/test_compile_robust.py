"""Any policy that checks clean compiles without an exception (mutated examples)."""

from __future__ import annotations

from conftest import REPO
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from fwc.backend.files import BY_NAME
from fwc.backend.output import compile_policy
from fwc.pipeline import analyse

SOURCES = [p.read_text() for p in sorted((REPO / "policies").glob("*.fw"))
           if "include" not in p.read_text()]
WORDS = ["any", "firewall", "!lan", "lan", "web", "uplink.vip", "lan.vip", "only fw1",
         "in lan", "out uplink", "log", 'log "x"', "service web", "service ping", "!firewall",
         "192.0.2.0/25", "2001:db8:1::/64", "!client"]


@st.composite
def mutated(draw: st.DrawFn) -> str:
    lines = draw(st.sampled_from(SOURCES)).splitlines()
    for _ in range(draw(st.integers(1, 4))):
        index = draw(st.integers(0, len(lines) - 1))
        choice = draw(st.integers(0, 2))
        if choice == 0:
            del lines[index]
        elif choice == 1:
            lines.insert(index, lines[draw(st.integers(0, len(lines) - 1))])
        else:
            words = lines[index].split()
            if words:
                words[draw(st.integers(0, len(words) - 1))] = draw(st.sampled_from(WORDS))
                lines[index] = "    " + " ".join(words)
    return "\n".join(lines) + "\n"


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(text=mutated())
# shop.fw on iptables: its groups become ipsets.rules, which holds no COMMIT
@example(text="".join(line for line in (REPO / "policies" / "shop.fw").read_text()
                      .splitlines(keepends=True) if line.strip() != "backend nftables"))
def test_whatever_checks_clean_compiles(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("m") / "m.fw"
    path.write_text(text)
    analysis = analyse(path)  # never raises: bad input gives diagnostics
    if not analysis.ok:
        return
    for cluster in compile_policy(analysis.policy):
        for f in cluster.files:
            row = BY_NAME.get(f.path.rsplit("/", 1)[-1])
            # iptables-restore's files; ipsets.rules is `ipset restore`'s (no COMMIT), which
            # a mutation that drops shop.fw's `backend nftables` brings (it failed here)
            if row is not None and row.loader in ("iptables-restore", "ip6tables-restore"):
                body = f.content.decode()
                assert body.endswith("COMMIT\n")
                assert body.count("*") == body.count("COMMIT")
