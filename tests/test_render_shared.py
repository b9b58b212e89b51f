"""Rendering reuses what it can and stays byte-identical: chains equal to the previous
member's (SharedTexts), files built as bytes, the escaping's plain-ASCII fast path."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.generate import build_site, fwc_policy
from fwc import protocols as proto
from fwc.backend import output
from fwc.backend.files import BY_NAME
from fwc.backend.lower import options_for
from fwc.backend.lower.failsafe import iptables_failsafe
from fwc.backend.render import context, escape, iptables
from fwc.backend.render.context import KeptText, MemberBuild, SharedTexts
from fwc.model import Policy
from fwc.pipeline import analyse
from fwc.text import utf8_length


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Policy:
    path = tmp_path_factory.mktemp("shared") / "site.fw"
    path.write_text(fwc_policy(build_site(600, shape="site")), encoding="utf-8")
    policy = analyse(path).policy
    assert policy is not None
    return policy


def _files(policy: Policy) -> dict[str, bytes]:
    [cluster] = output.compile_policy(policy)
    return {f.path: f.content for f in cluster.files}


def test_equal_chains_are_rendered_once_per_cluster(site, monkeypatch):
    calls: list[str] = []
    rule_pieces = iptables.rule_pieces

    def counted(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append("x")
        return rule_pieces(*args, **kwargs)

    monkeypatch.setattr(iptables, "rule_pieces", counted)
    one_line = iptables._one_line  # the single-line rules' own path

    def counted_line(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append("x")
        return one_line(*args, **kwargs)

    monkeypatch.setattr(iptables, "_one_line", counted_line)
    shared = _files(site)
    with_reuse = len(calls)
    calls.clear()
    monkeypatch.setattr(output, "SharedTexts",
                        lambda keep, raw_budget=0, spill_dir=None: SharedTexts(keep=False))
    alone = _files(site)
    assert shared == alone  # byte for byte, every file of both members
    assert len(calls) > 0
    # The second member's FORWARD chains are its first member's text.
    assert with_reuse < 0.7 * len(calls), (with_reuse, len(calls))


@pytest.fixture(scope="module")
def four_members(tmp_path_factory: pytest.TempPathFactory) -> Policy:
    path = tmp_path_factory.mktemp("shared4") / "interfaces.fw"
    path.write_text(fwc_policy(build_site(600, shape="interfaces")), encoding="utf-8")
    policy = analyse(path).policy
    assert policy is not None and len(policy.clusters[0].members) >= 3
    return policy


def test_spilled_texts_give_the_files_of_a_compile_without_sharing(four_members, monkeypatch,
                                                                   tmp_path):
    # Nothing kept in memory: every kept chain goes to the spill files, and the third
    # and fourth members read texts the second offered on from the first's file.
    made: list[object] = []
    spill = context._Spill

    def counted(directory=None):  # type: ignore[no-untyped-def]
        made.append(directory)
        return spill(directory)

    monkeypatch.setattr(context, "_Spill", counted)
    monkeypatch.setattr(output, "SHARED_RAW_BUDGET", 0)
    [cluster] = output.stream_policy(four_members, spill_dir=str(tmp_path))
    spilled = {f.path: f.content for f in cluster.files()}
    assert made and all(d == str(tmp_path) for d in made)
    assert list(tmp_path.iterdir()) == []  # unnamed files
    monkeypatch.setattr(output, "SharedTexts",
                        lambda keep, raw_budget=0, spill_dir=None: SharedTexts(keep=False))
    alone = _files(four_members)
    assert spilled.keys() == alone.keys()
    assert [name for name in spilled if spilled[name] != alone[name]] == []


def test_a_text_that_cannot_be_spilled_is_rendered_again(four_members, monkeypatch):
    def full(directory=None):  # type: ignore[no-untyped-def]
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(context, "_Spill", full)
    monkeypatch.setattr(output, "SHARED_RAW_BUDGET", 0)
    given_up = _files(four_members)
    monkeypatch.setattr(output, "SharedTexts",
                        lambda keep, raw_budget=0, spill_dir=None: SharedTexts(keep=False))
    alone = _files(four_members)
    assert given_up.keys() == alone.keys()
    assert [name for name in given_up if given_up[name] != alone[name]] == []


def test_a_chain_is_reused_only_when_its_rules_are_equal(site):
    cluster = site.clusters[0]
    first, second = cluster.members[:2]
    options = options_for(site)
    texts = SharedTexts(keep=True)
    file = BY_NAME["iptables.rules"]
    one = iptables.render_file(MemberBuild(cluster, first, options, texts=texts), file)
    texts.next_member(last=True)
    two = iptables.render_file(MemberBuild(cluster, second, options, texts=texts), file)
    fresh = MemberBuild(cluster, second, options)
    assert two == iptables.render(fresh.optimised()[0][4]).encode()
    assert one != two  # the members' own addresses differ: those chains are rendered
    texts.next_member(last=True)
    assert not texts._previous and not texts._current


def _kept(*pieces: str) -> KeptText:
    kept = KeptText()
    for piece in pieces:
        kept.add(piece)
    return kept


def _kept_size(text: str) -> int:
    return _kept(text).size


def test_shared_texts_keep_at_most_their_budget():
    # The budget counts spilled bytes: "a" fits, "a" and "b" together do not.
    texts = SharedTexts(budget=_kept_size("12345") + 5, keep=True)
    texts.offer("a", (1,), _kept("123", "45"))
    texts.offer("b", (2,), _kept("123456"))
    texts.next_member()
    assert "".join(texts.get("a", (1,)) or ()) == "12345"
    assert texts.get("a", (9,)) is None  # another value: render it
    assert texts.get("b", (2,)) is None
    texts.next_member(last=True)
    assert "".join(texts.get("a", (1,)) or ()) == "12345"  # offered again by its taker
    assert not texts._current  # the last member keeps nothing
    texts.next_member()
    assert texts.get("a", (1,)) is None


def test_kept_texts_are_spilled_and_come_back_whole(monkeypatch):
    # Text far larger than the raw room, read back in chunks of 7 bytes (multi-byte
    # characters cut across their boundaries); kept by three members in turn (the second
    # offers on what it took from the first's file).
    monkeypatch.setattr(context, "_EXPAND_CHUNK", 7)  # cuts inside é and € too
    line = "-A FORWARD -s 198.51.100.0/24 -m comment --comment \"é€ rule\" -j ACCEPT\n"
    pieces = tuple(line * 200 for _ in range(10))
    texts = SharedTexts(keep=True, raw_budget=1024)
    kept = texts.keeper()
    assert kept is not None
    for piece in pieces:
        kept.add(piece)
    assert kept.chars == 0 and kept.size == len("".join(pieces).encode())
    texts.offer("forward", (1,), kept)
    texts.next_member()
    whole = "".join(pieces)
    same = "".join(texts.get("forward", (1,)) or ()) == whole  # (no diff of 150 kB)
    assert same
    texts.next_member(last=True)
    got = list(texts.get("forward", (1,)) or ())
    assert len(got) > 1  # read back in chunks
    same = "".join(got) == whole
    assert same


def test_no_file_is_made_for_texts_kept_in_memory():
    texts = SharedTexts(keep=True, raw_budget=100)
    kept = texts.keeper()
    assert kept is not None
    kept.add("12345")
    texts.offer("small", (1,), kept)
    assert texts._spill is None
    texts.next_member()
    assert list(texts.get("small", (1,)) or ()) == ["12345"]


def test_small_texts_are_kept_as_they_are_and_large_ones_spilled():
    # Up to raw_budget characters stay text (nothing to write or read back); a part that
    # outgrows its raw room is spilled whole, and both come back piece for piece.
    texts = SharedTexts(budget=1024 * 1024, keep=True, raw_budget=12)
    small = KeptText(texts.raw_room())
    small.add("12345")
    small.add("678")
    assert small.size == 0
    texts.offer("small", (1,), small)
    assert texts.raw_room() == 4
    large = KeptText(texts.raw_room())
    large.add("abc")
    large.add("defgh" * 1000)
    assert large.size > 0 and large.chars == 0
    texts.offer("large", (2,), large)
    texts.next_member()
    assert list(texts.get("small", (1,)) or ()) == ["12345", "678"]
    assert "".join(texts.get("large", (2,)) or ()) == "abc" + "defgh" * 1000
    texts.next_member(last=True)  # offered again by their taker, then nothing is kept
    assert "".join(texts.get("small", (1,)) or ()) == "12345678"


def test_render_file_is_the_text_as_bytes(site):
    cluster = site.clusters[0]
    build = MemberBuild(cluster, cluster.members[0], options_for(site))
    main = iptables.render_file(build, BY_NAME["iptables.rules"])
    assert main == iptables.render(build.optimised()[0][4]).encode()
    fallback = iptables.render_file(build, BY_NAME["failsafe.rules"])
    safe = iptables_failsafe(build.lowered(4))  # its products factored (nft: not)
    assert fallback == iptables.render(safe, header=iptables._failsafe_header(safe)).encode()
    assert fallback.endswith(b"COMMIT\n") and main.endswith(b"COMMIT\n")


def _slow_iptables_comment(text: str) -> str:
    """What iptables_comment promises, written without its fast path."""
    if utf8_length(text) > proto.IPTABLES_COMMENT_MAX:
        raise escape.UnwritableText(text)
    return '"' + escape.line_text(text).replace("\\", "\\\\").replace('"', '\\"') + '"'


def _slow_iptables_string(text: str) -> str:
    return '"' + escape.line_text(text).replace("\\", "\\\\").replace('"', '\\"') + '"'


def _slow_iptables_word(text: str) -> str:
    value = escape.line_text(text)
    if not value or any(c.isspace() or c in '"\\' for c in value):
        raise escape.UnwritableText(text)
    return value


TEXT = st.one_of(st.text(max_size=300),
                 st.text(st.characters(min_codepoint=0, max_codepoint=127), max_size=300),
                 st.sampled_from(["", " ", "x" * 255, "x" * 256, "a b", 'a"b', "a\\b",
                                  "fw.fw:12", "a\tb", "é" * 128, "\u202e", "a\x7f"]))


@settings(max_examples=300, deadline=None)
@given(TEXT)
def test_the_fast_escapes_are_the_slow_ones(text):
    for fast, slow in ((escape.iptables_comment, _slow_iptables_comment),
                       (escape.iptables_word, _slow_iptables_word),
                       (escape.iptables_string, _slow_iptables_string)):
        try:
            expected: str | None = slow(text)
        except escape.UnwritableText:
            expected = None
        if expected is None:
            with pytest.raises(escape.UnwritableText):
                fast(text)
        else:
            assert fast(text) == expected


def test_a_rule_of_several_lines():
    """The golden output is the proof of byte identity (tests/test_compile_golden.py);
    this pins the order of a rule's lines: sources x destinations x port groups."""
    from fwc.backend.lower.ruleset import AddressMatch, FilterRule, Match, Origin
    from fwc.model import PortRange
    from fwc.model.vocabulary import Target

    ports = tuple(PortRange(p, p) for p in range(1, 17))  # 16 ports: two multiport groups
    rule = FilterRule(Match(source=AddressMatch(("192.0.2.1", "192.0.2.0/24")),
                            destination=AddressMatch(("2001:db8::1",), negated=True),
                            protocol=6, dports=ports, in_device="eth0"),
                      Target.ACCEPT, Origin("policy", "p.fw:3"))
    lines = iptables.rule_bodies(rule)
    assert len(lines) == 4
    assert lines[0] == ("-s 192.0.2.1/32 ! -d 2001:db8::1/128 -i eth0 -p tcp -m multiport "
                        "--dports " + ",".join(str(p) for p in range(1, 16))
                        + ' -m comment --comment "p.fw:3" -j ACCEPT')
    assert lines[1].startswith("-s 192.0.2.1/32 ! -d 2001:db8::1/128 -i eth0 -p tcp -m tcp "
                               "--dport 16 ")
    assert lines[3].startswith("-s 192.0.2.0/24 ! -d 2001:db8::1/128 ")


@settings(max_examples=60, deadline=None)
@given(sources=st.integers(0, 3), destinations=st.integers(0, 3), ports=st.integers(0, 20))
def test_a_rules_text_is_its_lines_joined(sources: int, destinations: int, ports: int):
    """_rule_lines (one join per source) writes exactly the lines of rule_bodies."""
    from fwc.backend.lower.ruleset import AddressMatch, FilterRule, Match, Origin
    from fwc.model import PortRange
    from fwc.model.vocabulary import Target

    rule = FilterRule(Match(source=AddressMatch(tuple(f"192.0.2.{i}" for i in range(sources))),
                            destination=AddressMatch(tuple(f"198.51.100.{i}"
                                                           for i in range(destinations))),
                            protocol=6 if ports else None,
                            dports=tuple(PortRange(p, p) for p in range(1, ports + 1))),
                      Target.DROP, Origin("policy", "p.fw:9"))
    lines = iptables.rule_bodies(rule)
    text, count = iptables._rule_lines(rule, {}, "\n-A fwd-x ", None)
    text = "-A fwd-x " + text
    assert count == len(lines) == max(1, sources) * max(1, destinations) * (2 if ports > 15
                                                                               else 1)
    assert text == "\n".join("-A fwd-x " + line for line in lines)


def test_a_sets_addresses_are_checked_together():
    good = ("192.0.2.0/24", "2001:db8::/32", "198.51.100.7")
    assert escape.ipset_words(good) == good
    assert escape.ipset_words(()) == ()
    for bad in (("192.0.2.0/24", "a b"), ("", "192.0.2.1"), ("192.0.2.1\n-exist",)):
        with pytest.raises(escape.UnwritableText):
            escape.ipset_words(bad)
