"""The nft file's sets and maps are named by their content or their place, not counted
over the file (issue 12, twenty-seventh session): an in-place edit of one rule changes
that rule's lines in nftables.nft and nothing else, and names that meet stay unique."""

from __future__ import annotations

import random
import re
from collections import Counter

import pytest
from test_arrange import _edited, _policy_like_ruleset
from test_nft_equivalence import compare

from fwc.analysis.nftread import read
from fwc.backend.arrange import arrange
from fwc.backend.lower import NodeRuleset
from fwc.backend.lower.ruleset import AddressMatch, Chain, FilterRule, Match, Origin, Table
from fwc.backend.render import nftables
from fwc.model import PortRange
from fwc.model.vocabulary import BuiltinChain, Target
from fwc.model.vocabulary import Table as TableName

NAMES = {"eth0": "lan", "eth1": "dmz"}
# a rule map's declaration, whatever its name: the maps that count per element
RULE_MAP = re.compile(r"^\tmap \S+ \{\n\t\ttype [^\n]*\n(?:\t\tflags interval\n)?\t\tcounter\n",
                      re.M)


def _nft(flat: NodeRuleset) -> str:
    """FLAT arranged with thresholds lowered (port buckets in a 400-rule chain) and
    written as nftables.nft with its maps."""
    return nftables.render([arrange(flat, NAMES, min_rules=1, split_min=16,
                                    clip_ports=True)], "edit")


def _other_lines(text: str, label: str) -> list[str]:
    """The lines of nftables.nft TEXT that are not rule LABEL's own: neither its rule
    lines and map elements (their comments are its label) nor a lookup naming it as the
    first rule of its set (`"LABEL and more rules"`), nor the declarations of the sets
    only its lines name (an address list of its own)."""
    own = re.compile(rf'comment "{re.escape(label)}[" ]')
    lines = text.splitlines()
    named: dict[str, bool] = {}  # set: only the rule's lines name it
    for line in lines:
        if line.startswith("\t\t") and not line.startswith("\t\t\t"):
            for name in re.findall(r"@([\w.-]+)", line):
                named[name] = named.get(name, True) and own.search(line) is not None
    out: list[str] = []
    inside = False  # in the declaration of a set only the rule's lines name
    for line in lines:
        declared = re.match(r"\t(?:set|map) (\S+) \{$", line)
        if declared:
            inside = named.get(declared.group(1), False)
        if not inside and not own.search(line):
            out.append(line)
        if line == "\t}":
            inside = False
    return out


def _local_share(edits: int, seed: int) -> tuple[int, int, int, int]:
    """Of EDITS random in-place edits of random 400-rule rulesets: how many change the
    nft file only in the edited rule's own lines, how many other lines they change in
    all (out and in, as multisets), and the fewest and most rule maps of a file. Every
    eighth edited file decides as its flat rules."""
    rng = random.Random(seed)
    local = changed = 0
    maps: list[int] = []
    for attempt in range(edits):
        flat = _policy_like_ruleset(seed * 1000 + attempt, 400)
        before = _nft(flat)
        edited, label = _edited(flat, rng)
        after = _nft(edited)
        maps.append(len(RULE_MAP.findall(before)))
        if attempt % 8 == 0:  # (the evaluator is the slow part: a sample of the edits)
            compare({4: edited}, read(after), {4: edited}, f"edit {attempt}")
        old, new = _other_lines(before, label), _other_lines(after, label)
        local += old == new
        changed += sum(((Counter(old) - Counter(new)) + (Counter(new) - Counter(old))).values())
    return local, changed, min(maps), max(maps)


def test_an_in_place_edit_changes_only_its_own_lines_of_the_nft_file(monkeypatch):
    """Users keep output/ in git and review its diff (issue 12). The rule maps were
    numbered over the file (`rules-v4-N`) and the address and port sets in the order of
    first use, so one map more or fewer renamed every later one; the port buckets filled
    each shared map up to SHARED_MAX in port order, so one element more moved every
    later boundary; the sets were declared by their count of uses, so a set named once
    more moved past its equals; and each lookup counted its set's rules in its comment.
    Now a map is named by its chain and place, a set by its content, the shared maps are
    cut by halving the port space (SHARED_MAX lowered here, so that a dispatch has
    several), the declarations go by the power of two of the uses: random in-place
    edits (another rule's service, source, input device; accept and drop swapped)
    change nothing but the edited rule's own lines in most cases."""
    monkeypatch.setattr(nftables, "SHARED_MAX", 24)
    local, changed, fewest, most = _local_share(24, 27)
    print(f"fully local edits: {local}/24, other lines changed: {changed}, "
          f"rule maps per file: {fewest}-{most}")
    assert fewest >= 4  # (several maps: numbered, one more renumbered the rest)
    # 23/24 and 0 lines (the other edit moved one rule within its chain: a plan decision);
    # with the names, sharing, order and comments before: 18/24 and 88 lines. Other
    # seeds meet the arrangement's own non-local edits (a device split undone: hundreds
    # of lines), which this does not measure.
    assert local >= 21, local
    assert changed <= 2 * 24, changed


def _rule(line: int, sources: tuple[str, ...], port: int) -> FilterRule:
    return FilterRule(Match(source=AddressMatch(sources), protocol=6,
                            dports=(PortRange(port, port),)),
                      Target.ACCEPT, Origin("policy", f"n.fw:{line}"))


def test_sets_whose_content_names_meet_get_the_next_free_name_alike_every_time(monkeypatch):
    """A set is named by 48 bits of its content's digest (`fwc4.HASH`): two address lists
    whose digests meet (forced here) are two sets, the second `fwc4.HASH-2`, the same in
    every run, and every packet is decided as by the rules written out."""
    monkeypatch.setattr("fwc.backend.ipsets._hash", lambda text, length=10: "c" * length)
    first, second = ("192.0.2.0/28", "192.0.2.64/28"), ("198.51.100.0/28", "198.51.100.64/28")
    rules = (_rule(1, first, 22), _rule(2, second, 80), _rule(3, first, 443))
    flat = NodeRuleset("c", "m", 4, (Table(TableName.FILTER, (
        Chain(BuiltinChain.INPUT, Target.DROP, rules),)),))
    text = nftables.render([flat], "meet")
    name = "fwc4." + "c" * 12
    assert text.count(f"\tset {name} {{") == 1 and text.count(f"\tset {name}-2 {{") == 1
    assert text.count(f"ip saddr @{name} ") == 2 and text.count(f"ip saddr @{name}-2 ") == 1
    assert nftables.render([flat], "meet") == text
    assert compare({4: flat}, read(text), {4: flat}, "meet") > 0


def test_an_address_list_is_named_after_the_ipset_of_its_addresses_wherever_it_comes():
    """A list with the addresses of one of the member's ipsets is that ipset's set,
    whether a rule naming the ipset comes first or not (it took the name of whichever
    came first: an edit of that rule renamed the set in every other rule)."""
    from fwc.backend.ipsets import IpSet

    group = ("192.0.2.0/28", "192.0.2.64/28")
    named = FilterRule(Match(source=AddressMatch(set_name="fwc4-partners"), protocol=6),
                       Target.ACCEPT, Origin("policy", "n.fw:1"))
    listed = _rule(2, group, 22)
    sets = (IpSet("fwc4-partners", 4, group),)
    for rules in ((named, listed), (listed, named)):
        flat = NodeRuleset("c", "m", 4, (Table(TableName.FILTER, (
            Chain(BuiltinChain.INPUT, Target.DROP, rules),)),))
        text = nftables.render([flat], "object", sets)
        assert text.count("ip saddr @fwc4-partners ") == 2, text
        assert re.findall(r"^\tset (\S+) \{", text, re.M) == ["fwc4-partners"]


@pytest.mark.parametrize("comment", [
    'vmap @filter-fwd-tcp-0-v4-rules2 comment "a.fw:7 and more rules"',
    'vmap @rules-v4-3 comment "a.fw:7 and 2 more rules (map rules-v4-3)"'])
def test_fwc_diff_reads_a_lookup_s_comment_without_its_line(comment):
    """`fwc diff` compares rules without their policy lines: a lookup's comment now ends
    "and more rules"; the former "and N more rules (map M)" of older outputs too."""
    from fwc.diffing.renumber import comparable

    text = f"\t\tip saddr . tcp dport {comment}\n"
    assert '"a.fw and' in comparable(text, True, None), comparable(text, True, None)
