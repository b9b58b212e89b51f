"""The iptables and nftables backends against the kernel, where the two differ in meaning.

tests/test_nft_equivalence.py walks both outputs as fwc's readers understand them; these
tests pin the places where iptables itself reads a value otherwise than nft does (and
otherwise than `fwc query`), so that a policy can never mean two things.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from fwc.backend.output import compile_policy
from fwc.model.vocabulary import Backend
from fwc.pipeline import analyse

CLUSTER = """\
network lan      192.0.2.0/24
network lan6     2001:db8:10::/64
host    web      198.18.10.11
host    web6     2001:db8:20::11

cluster c {
    vrrp { password "s3cret"  advert 1s  vrid 61 }
    sync { link sync }
    interface lan    vip 192.0.2.254/24, 2001:db8:10::fe/64
    interface dmz    vip 198.18.10.254/24, 2001:db8:20::fe/64  vrid 62
    interface sync
    member fw1 priority 150 {
        lan    eth0 192.0.2.1/24, 2001:db8:10::1/64
        dmz    eth1 198.18.10.1/24, 2001:db8:20::1/64
        sync   eth3 203.0.113.1/28
    }
    member fw2 priority 100 {
        lan    eth0 192.0.2.2/24, 2001:db8:10::2/64
        dmz    eth1 198.18.10.2/24, 2001:db8:20::2/64
        sync   eth3 203.0.113.2/28
    }
}
"""


def _analysed(tmp_path: Path, body: str):
    path = tmp_path / "p.fw"
    path.write_text(CLUSTER + body)
    return analyse(path)


@pytest.mark.parametrize("spec,said", [
    ("proto/0", "IP protocol 0 in 'proto/0' would match every protocol in iptables"),
    ("icmp/255", "ICMP type 255 in 'icmp/255' would match every ICMP type in iptables"),
])
@pytest.mark.parametrize("where", ["inline", "declared"])
def test_values_iptables_reads_as_wildcards_are_refused(tmp_path: Path, spec: str, said: str,
                                                        where: str):
    """iptables-restore reads `-p 0` as every protocol and `--icmp-type 255` as every ICMP
    type (iptables-save prints no -p and `--icmp-type any`); nft and the analysis match
    the number alone. `accept ... service proto/0` let every protocol through on the
    iptables backend while `fwc query` and nft said one protocol only: refused."""
    if where == "inline":
        body = f"policy c {{\n    accept from lan to web service {spec}\n}}\n"
    else:
        body = f"service odd {spec}\npolicy c {{\n    accept from lan to web service odd\n}}\n"
    analysis = _analysed(tmp_path, body)
    found = [d for d in analysis.diagnostics if d.code == "FWC107"]
    assert len(found) == 1 and said in found[0].message, analysis.diagnostics
    assert not analysis.ok


def test_the_numbers_next_to_the_wildcards_compile_alike(tmp_path: Path):
    """ICMPv6 type 255 and protocol 255 are no wildcard to ip6tables or iptables: both
    backends write them as numbers."""
    analysis = _analysed(tmp_path, "policy c {\n"
                         "    accept from lan6 to web6 service icmpv6/255\n"
                         "    accept from lan to web service proto/255, icmp/254\n}\n")
    assert analysis.policy is not None and analysis.ok, analysis.diagnostics
    ipt = {f.path: f.content.decode() for f in
           compile_policy(analysis.policy, backend=Backend.IPTABLES)[0].files}
    nft = {f.path: f.content.decode() for f in
           compile_policy(analysis.policy, backend=Backend.NFTABLES)[0].files}
    assert "--icmpv6-type 255" in ipt["fw1/ip6tables.rules"]
    assert "-p 255" in ipt["fw1/iptables.rules"] and "--icmp-type 254" in ipt["fw1/iptables.rules"]
    assert "icmpv6 type 255" in nft["fw1/nftables.nft"]
    assert "meta l4proto 255" in nft["fw1/nftables.nft"]
    assert "icmp type 254" in nft["fw1/nftables.nft"]


def _limit_names(tmp_path: Path, rules: str, backend: Backend) -> dict[str, str]:
    """The rate bucket names of fw1's compiled rules (hashlimit names, nft limit objects
    and meters), by the kind and number they start with (`p1`, `s1`)."""
    analysis = _analysed(tmp_path, f"policy c {{\n{rules}}}\n")
    assert analysis.policy is not None and analysis.ok, analysis.diagnostics
    files = {f.path: f.content.decode()
             for f in compile_policy(analysis.policy, backend=backend)[0].files}
    if backend is Backend.IPTABLES:
        found = re.findall(r"--hashlimit-name (\S+)", files["fw1/iptables.rules"])
    else:
        found = re.findall(r"^\t(?:limit|set) (fwc-[ps]\S+) \{", files["fw1/nftables.nft"],
                           re.M)
    return {name.split("-")[1]: name for name in found}


LIMITED = "    accept from lan to web service tcp/80  syn-limit 200/second  limit {}\n"


@pytest.mark.parametrize("backend", [Backend.IPTABLES, Backend.NFTABLES])
def test_a_changed_limit_gets_a_new_bucket_name(tmp_path: Path, backend: Backend):
    """A reload keeps a running hashlimit table, with its old rate, burst and mode, for
    a new rule of the same name (test below): a rule whose limit changed, or whose
    number another rule's limit now has, must name another bucket. Unchanged, the
    names stay (a reload keeps the buckets' state)."""
    before = _limit_names(tmp_path, LIMITED.format("10/second per-source"), backend)
    again = _limit_names(tmp_path, LIMITED.format("10/second per-source"), backend)
    assert before.keys() == {"p1", "s1"} and before == again
    for changed in ("20/second per-source", "10/second burst 9 per-source", "10/second"):
        after = _limit_names(tmp_path, LIMITED.format(changed), backend)
        assert after["p1"] != before["p1"], changed  # the limit's bucket is a new one
        assert after["s1"] == before["s1"], changed  # the syn-limit did not change
    # another rule's limit moved to this number: another name too
    moved = _limit_names(tmp_path, LIMITED.format("1/minute")
                         + LIMITED.format("10/second per-source"), backend)
    assert moved["p1"] != before["p1"]
    assert moved["p2"] == before["p1"].replace("p1", "p2", 1)


@pytest.mark.root
def test_iptables_keeps_a_running_hashlimit_s_rate_for_a_rule_of_the_same_name(
        tmp_path: Path):
    """Why the names change (the kernel's behaviour, on a real one): the ruleset with
    1/minute drops the second ping of three; reloaded with 10000/second under the name
    fwc gives that limit, every ping passes (under the old name all were dropped)."""
    from conftest import skip_or_fail_without_root
    from test_realtools import in_ns, namespace

    skip_or_fail_without_root()

    def ruleset(limit: str, rate: str, burst: int) -> str:
        name = _limit_names(tmp_path, LIMITED.format(limit), Backend.IPTABLES)["p1"]
        return ("*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n"
                "-A OUTPUT -o lo -p icmp -m icmp --icmp-type 8 -m hashlimit --hashlimit-above "
                f"{rate} --hashlimit-burst {burst} --hashlimit-name {name} -j DROP\nCOMMIT\n")

    def received(ns: str) -> int:
        got = in_ns(ns, "ping", "-c", "3", "-i", "0.2", "-W", "1", "127.0.0.1")
        found = re.search(r"(\d+) received", got.stdout)
        assert found is not None, got.stdout + got.stderr
        return int(found.group(1))

    with namespace() as ns:
        loaded = in_ns(ns, "iptables-restore", stdin=ruleset("1/minute burst 1", "1/min", 1))
        assert loaded.returncode == 0, loaded.stderr
        assert received(ns) == 1
        loaded = in_ns(ns, "iptables-restore",
                       stdin=ruleset("10000/second burst 10000", "10000/sec", 10000))
        assert loaded.returncode == 0, loaded.stderr
        assert received(ns) == 3
