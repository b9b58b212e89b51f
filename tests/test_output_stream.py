"""`fwc compile` writes each file as soon as it is rendered and keeps no member's texts.

A 20,000-rule policy on four members is about 300 MB of output: holding it all
until the write (as compile_policy does for the commands that compare files)
was most of the back end's peak memory (docs/performance.md).
"""

from __future__ import annotations

import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from types import MappingProxyType

import pytest
from conftest import POLICIES, compile_to, file_tree

from bench.generate import build_site, fwc_policy
from fwc.backend import output
from fwc.backend.files import GeneratedFile
from fwc.backend.lower import NodeRuleset, options_for
from fwc.backend.lower.failsafe import failsafe
from fwc.backend.render import iptables, registry
from fwc.backend.render.context import MemberBuild
from fwc.backend.render.registry import Rendered, render_member
from fwc.pipeline import analyse


def test_compile_writes_each_file_before_rendering_the_next(edge, tmp_path, monkeypatch):
    events: list[tuple[str, str]] = []
    write_file = output.write_file

    def rendering(build: MemberBuild, chunked: bool = False) -> Iterator[Rendered]:
        for rendered in render_member(build, chunked):
            events.append(("render", f"{build.member.name}/{rendered.file.name}"))
            yield rendered

    def writing(directory: Path, f: output.OutputFile) -> None:
        events.append(("write", f.path))
        write_file(directory, f)

    monkeypatch.setattr(output, "render_member", rendering)
    monkeypatch.setattr(output, "write_file", writing)
    assert compile_to(edge, tmp_path / "out") == 0
    rendered = [path for kind, path in events if kind == "render"]
    assert len(rendered) > 20  # two members' files
    expected = [event for path in rendered for event in (("render", path), ("write", path))]
    assert events == [*expected, ("write", "MANIFEST")]


def test_streamed_output_is_the_in_memory_output(edge, tmp_path):
    policy = analyse(edge).policy
    assert policy is not None
    name = output.policy_name(policy)
    output.write_output(tmp_path / "memory", name, output.compile_policy(policy))
    streams = output.stream_policy(policy)
    output.write_output(tmp_path / "stream", name, streams)
    assert file_tree(tmp_path / "memory") == file_tree(tmp_path / "stream")
    [cluster] = output.compile_policy(policy)
    assert [s.members() for s in streams] == [cluster.members()]


def test_a_compile_failure_midway_leaves_the_output_as_it_was(edge, tmp_path, monkeypatch,
                                                               capsys):
    out = tmp_path / "out"
    assert compile_to(edge, out) == 0
    before = file_tree(out)
    def failing(build: MemberBuild, file: GeneratedFile) -> str:
        if build.member.name == "fw2":  # after every file of fw1 was written to staging
            raise RuntimeError("render exploded")
        return iptables.render_file(build, file)

    monkeypatch.setattr(registry, "TARGETS", MappingProxyType(
        {**registry.TARGETS, "iptables": registry.Target("iptables", failing)}))
    assert compile_to(edge, out) == 1
    err = capsys.readouterr()
    assert "FWC900" in err.out + err.err and "render exploded" in err.out + err.err
    assert file_tree(out) == before
    assert not [p for p in tmp_path.iterdir() if ".fwc-" in p.name]


@pytest.fixture(scope="module")
def large_failsafe(tmp_path_factory: pytest.TempPathFactory) -> NodeRuleset:
    path = tmp_path_factory.mktemp("stream") / "site.fw"
    path.write_text(fwc_policy(build_site(2000, shape="site")), encoding="utf-8")
    policy = analyse(path).policy
    assert policy is not None
    cluster = policy.clusters[0]
    build = MemberBuild(cluster, cluster.members[0], options_for(policy))
    return failsafe(build.lowered(4))


def test_render_peak_stays_near_twice_the_text(large_failsafe, monkeypatch):
    # The text and its final join are needed; every line as its own object, every rule's
    # lines kept for reuse and a copy for the final newline made the peak 4-5 times it.
    monkeypatch.setattr(iptables, "BLOCK_LINES", 512)  # the default's share of 100,000 rules
    text = iptables.render(large_failsafe)
    assert text.count("\n") > 10 * iptables.BLOCK_LINES
    tracemalloc.start()
    try:
        again = iptables.render(large_failsafe)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert again == text
    assert peak < 2.6 * len(text), (peak, len(text))


def test_a_file_built_as_bytes_is_held_once():
    # What render_file does with the pieces: one buffer that grows in place and is handed
    # over, never the pieces and their join at once (at 64 MB, where it matters).
    pieces = ("-A INPUT -s 192.0.2.1/32 -j ACCEPT\n" * 128 for _ in range(16384))
    size = 16384 * 128 * len("-A INPUT -s 192.0.2.1/32 -j ACCEPT\n")
    tracemalloc.start()
    try:
        content = iptables._encoded(pieces)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(content) == size
    assert peak < 1.2 * size, (peak, size)


def test_a_chain_is_rendered_as_it_is_written(large_failsafe, monkeypatch):
    # The failsafe's INPUT chain is nearly the whole file: its first lines are passed on
    # before its last rules are rendered (no chain is collected when nothing is shared).
    monkeypatch.setattr(iptables, "BLOCK_LINES", 512)
    rendered: list[object] = []
    rule_pieces = iptables.rule_pieces
    monkeypatch.setattr(iptables, "rule_pieces",
                        lambda *args: rendered.append(1) or rule_pieces(*args))
    one_line = iptables._one_line  # the single-line rules' own path
    monkeypatch.setattr(iptables, "_one_line",
                        lambda *args: rendered.append(1) or one_line(*args))
    pieces = iptables.blocks(large_failsafe)
    next(pieces), next(pieces), next(pieces)
    during = len(rendered)
    list(pieces)
    assert 0 < during < len(rendered) / 4, (during, len(rendered))


def test_blocks_join_to_the_lines(large_failsafe, monkeypatch):
    whole = iptables.render(large_failsafe)
    for size in (1, 7, 4096):
        monkeypatch.setattr(iptables, "BLOCK_LINES", size)
        assert iptables.render(large_failsafe) == whole
    assert whole.endswith("COMMIT\n") and not whole.endswith("\n\n")


def test_chunked_stream_writes_the_in_memory_output(edge, tmp_path, monkeypatch):
    """`fwc compile` (chunked=True) writes the rule files as they are rendered: same tree,
    same MANIFEST, and the rule files never exist whole as one bytes object."""
    policy = analyse(edge).policy
    assert policy is not None
    name = output.policy_name(policy)
    output.write_output(tmp_path / "memory", name, output.compile_policy(policy))
    chunked: list[str] = []
    write_file = output.write_file

    def writing(directory: Path, f: output.OutputFile) -> None:
        if f.chunks is not None:
            assert f.content == b""
            chunked.append(f.path)
        write_file(directory, f)

    monkeypatch.setattr(output, "write_file", writing)
    output.write_output(tmp_path / "chunked", name, output.stream_policy(policy, chunked=True))
    assert file_tree(tmp_path / "memory") == file_tree(tmp_path / "chunked")
    assert "fw1/iptables.rules" in chunked and "fw2/failsafe.rules" in chunked
    assert not any(p.endswith(("keepalived.conf", "MANIFEST")) for p in chunked)


def test_chunks_are_read_once_and_know_their_digest_after():
    chunks = registry.Chunks(iter([b"a", b"bc"]))
    with pytest.raises(RuntimeError):
        chunks.sha256()
    assert b"".join(chunks) == b"abc"
    assert chunks.size == 3
    assert chunks.sha256() == __import__("hashlib").sha256(b"abc").hexdigest()
    with pytest.raises(RuntimeError):
        list(chunks)



def test_pieces_are_hashed_in_order_as_they_pass():
    import hashlib

    pieces = [bytes([65 + i % 26]) * (1 + (i * 7919) % 5000) for i in range(300)]
    chunks = registry.Chunks(iter(pieces))
    assert b"".join(chunks) == b"".join(pieces)
    assert chunks.sha256() == hashlib.sha256(b"".join(pieces)).hexdigest()
    assert chunks.size == len(b"".join(pieces))


def test_nftables_files_are_streamed_too(tmp_path, monkeypatch):
    """With `--backend nftables`, nftables.nft and failsafe.nft are written in pieces
    too (chunked=True): the tree is the in-memory one byte for byte, and however small
    the pieces, they are whole lines that join to `render`'s text."""
    from fwc.backend.render import nftables
    from fwc.model.vocabulary import Backend

    policy = analyse(POLICIES / "shop.fw").policy
    assert policy is not None
    name = output.policy_name(policy)
    output.write_output(tmp_path / "memory", name,
                        output.compile_policy(policy, backend=Backend.NFTABLES))
    chunked: list[str] = []
    write_file = output.write_file

    def writing(directory: Path, f: output.OutputFile) -> None:
        if f.chunks is not None:
            chunked.append(f.path)
        write_file(directory, f)

    monkeypatch.setattr(output, "write_file", writing)
    monkeypatch.setattr(nftables, "PIECE_CHARS", 100)  # many pieces
    output.write_output(tmp_path / "chunked", name, output.stream_policy(
        policy, chunked=True, backend=Backend.NFTABLES))
    assert file_tree(tmp_path / "memory") == file_tree(tmp_path / "chunked")
    assert "shop-1/nftables.nft" in chunked and "shop-2/failsafe.nft" in chunked
    # (pieces of about 100 characters: each file came in many, and joined exactly)
    written = next((tmp_path / "chunked").glob("*/shop-1/nftables.nft"))
    assert written.read_text().count("\n") > 50
