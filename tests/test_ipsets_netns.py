"""The optimised output loads into a real kernel: ipsets.rules first, then the rules.

A policy with big groups (more than IPSET_THRESHOLD prefixes) is lowered, turned into
named sets and arranged into per-interface chains, rendered, and loaded inside a
throwaway network namespace with `ipset restore` and `iptables-restore`; what
`iptables-save` lists back must be every rendered rule, and reloading the same files
(the swap in ipsets.rules) must work on a live ruleset that references the sets.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from test_arrange import mixed_policy
from test_realtools import in_ns, namespace, rules_by_table

from fwc.backend.arrange import arrange
from fwc.backend.ipsets import use_ipsets
from fwc.backend.lower import lower
from fwc.backend.render.ipset import render as render_ipsets
from fwc.backend.render.iptables import render as render_iptables
from fwc.pipeline import analyse

pytestmark = pytest.mark.root

# Prefixes that do not merge into a few larger blocks: one /28 per /24, hosts apart.
PARTNERS = ", ".join(f"198.19.{200 + i}.{(i % 4) * 64}/28" for i in range(40))
BIG_GROUP_POLICY = f"""
network lan 198.18.0.0/16
host web 198.18.0.80
group partners {PARTNERS}
group blocked {", ".join(f"2001:db8:99::{16 * i + 1:x}" for i in range(1, 30))}
service web tcp/80,443
cluster big {{
    vrrp {{ password "x" advert 1s vrid 81 }}
    sync {{ link sync }}
    interface lan    vip 198.18.0.254/16, 2001:db8:10::fe/64
    interface uplink vip 198.19.128.254/18, 2001:db8:30::fe/64 vrid 82
    interface sync
    member fw1 priority 150 {{
        lan eth0 198.18.0.1/16, 2001:db8:10::1/64
        uplink eth1 198.19.128.1/18, 2001:db8:30::1/64
        sync eth2 198.19.254.1/24
    }}
    member fw2 priority 100 {{
        lan eth0 198.18.0.2/16, 2001:db8:10::2/64
        uplink eth1 198.19.128.2/18, 2001:db8:30::2/64
        sync eth2 198.19.254.2/24
    }}
}}
policy big {{
    drop   from blocked to any in uplink
    accept from partners to web service web in uplink out lan
    accept from lan to any, !partners service web in lan out uplink
    drop   from any to any log
}}
nat big {{
    dnat from partners to uplink.vip service web in uplink -> web
}}
"""


def _optimised(path: Path) -> tuple[str, str, list[str]]:
    analysis = analyse(path, run_checks=False)
    assert analysis.policy is not None
    cluster = analysis.policy.clusters[0]
    member = cluster.members[0]
    ruleset, sets = use_ipsets(lower(cluster, member, 4))
    arranged = arrange(ruleset, {link.device: link.interface for link in member.links},
                       min_rules=8, split_min=4)
    return (render_ipsets(sets, cluster.name, member.name), render_iptables(arranged),
            [s.name for s in sets])


def test_ipsets_then_arranged_rules_load_and_list_back(tmp_path):
    path = tmp_path / "mix.fw"
    path.write_text(mixed_policy(1, 70), encoding="utf-8")
    ipsets_text, rules_text, names = _optimised(path)
    assert names and "-m set --match-set" in rules_text and "-j fwd-" in rules_text
    with namespace() as ns:
        loaded = in_ns(ns, "ipset", "restore", stdin=ipsets_text)
        assert loaded.returncode == 0, loaded.stderr
        listed = in_ns(ns, "ipset", "list", "-n").stdout.split()
        assert sorted(listed) == sorted(names)  # the temporary .new sets are gone
        restored = in_ns(ns, "iptables-restore", stdin=rules_text)
        assert restored.returncode == 0, restored.stderr
        saved = in_ns(ns, "iptables-save").stdout
        # reloading while rules reference the sets: the swap keeps them in place
        again = in_ns(ns, "ipset", "restore", stdin=ipsets_text)
        assert again.returncode == 0, again.stderr
        members = in_ns(ns, "ipset", "list", names[0]).stdout
    assert _by_chain(rules_text) == _by_chain(saved)
    assert "Number of entries: 20" in members


def _by_chain(text: str) -> dict[str, list[tuple[str, ...]]]:
    """Filter rules per chain, in order (iptables-save lists user chains by name)."""
    chains: dict[str, list[tuple[str, ...]]] = {}
    for line in rules_by_table(text)["filter"]:
        if line[0].startswith(":"):
            chains.setdefault(line[0][1:], [])
        else:
            chains.setdefault(line[1], []).append(line)
    return chains


def test_compiled_output_with_a_big_group_loads(tmp_path):
    """Through `fwc compile`: ipsets.rules is written and loads before the rules."""
    from fwc.cli import main as fwc_main

    path = tmp_path / "big.fw"
    path.write_text(BIG_GROUP_POLICY, encoding="utf-8")
    out = tmp_path / "out"
    assert fwc_main(["compile", str(path), "-o", str(out)]) == 0
    for member in sorted((out / "big").iterdir()):
        if not member.is_dir():
            continue
        with namespace() as ns:
            sets = member / "ipsets.rules"
            text = sets.read_text()
            assert "create fwc4-partners hash:net family inet" in text
            assert "create fwc6-blocked hash:net family inet6" in text
            rules = (member / "iptables.rules").read_text()
            assert "-i eth1 -p tcp -m set --match-set fwc4-partners src" in rules \
                and "-j DNAT" in rules
            loaded = in_ns(ns, "ipset", "restore", stdin=text)
            assert loaded.returncode == 0, loaded.stderr
            for name, tool in (("iptables.rules", "iptables-restore"),
                               ("ip6tables.rules", "ip6tables-restore")):
                if (member / name).exists():
                    got = in_ns(ns, tool, "--test", stdin=(member / name).read_text())
                    assert got.returncode == 0, got.stderr


def test_a_rollback_swaps_the_saved_members_in_and_never_empties_a_live_set():
    """`fwc install`'s rollback gives the sets of its snapshot (`ipset save`) their
    members back. It flushed each live set and added the members again: for the length
    of that restore a `drop from <set>` rule matched nothing and blocked hosts passed.
    Each set is now filled aside and swapped in, as the compiled ipsets.rules loads it."""
    import subprocess

    from fwc.backend.files import FILES
    from fwc.install import scripts

    with namespace() as ns:
        for argv in (["create", "blocked", "hash:net"], ["add", "blocked", "198.51.100.7"],
                     ["add", "blocked", "198.51.100.8"]):
            assert in_ns(ns, "ipset", *argv).returncode == 0
        saved = in_ns(ns, "ipset", "save").stdout
        # what the install being rolled back did to the set
        in_ns(ns, "ipset", "del", "blocked", "198.51.100.7")
        in_ns(ns, "ipset", "add", "blocked", "203.0.113.9")
        restore = subprocess.run(["awk", scripts.SWAP_SAVED_SETS], input=saved,
                                 capture_output=True, text=True, check=True).stdout
        assert "flush blocked\n" not in restore and "swap blocked.new blocked\n" in restore
        done = in_ns(ns, "ipset", "restore", stdin=restore)
        assert done.returncode == 0, done.stderr
        members = {line.split()[2] for line in in_ns(ns, "ipset", "save").stdout.splitlines()
                   if line.startswith("add ")}
        assert members == {"198.51.100.7", "198.51.100.8"}
        assert in_ns(ns, "ipset", "list", "-n").stdout.split() == ["blocked"]
    rollback = scripts.rollback_script([f for f in FILES if f.name == "iptables.rules"], [],
                                       token="t")
    assert scripts.SWAP_SAVED_SETS in rollback and "ipset flush" not in rollback
