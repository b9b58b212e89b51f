"""The cases of a patch compile's property test (tests/patchcases.py), and the property.

Issue 12's patch compile (fwc.backend.patch, docs/performance.md "Issue 12,
twenty-seventh session") splices an edited rule's new lines into the previous output.
Its proof: for random policies and random in-place edits, `fwc compile` through the cache
into the output directory of the previous compile writes byte for byte what `fwc compile
--no-cache` writes into a fresh one, whether it patched or compiled in full (it falls
back on whatever it cannot decide again). These tests also pin down that the cases reach
what a patch has to get right (the arrangement's port buckets, ipsets, every edit kind,
every rule feature) and how many edits change only their own rule's lines (printed per
kind, `pytest -s`); tests/test_patch.py counts the patches taken.
"""

from __future__ import annotations

import random
import re
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import compile_to
from patchcases import (
    EDIT_KINDS,
    INVALID_KINDS,
    POLICY,
    SINGLE_RULE_KINDS,
    Compiled,
    compile_run,
    compile_tree,
    edited_line,
    parse_rule,
    random_in_place_edit,
    random_policy,
    rule_line,
    write_policy,
)

from bench.patchfloor import cause, other_lines

SEEDS = (1, 2, 3)
NFT_SEED = 4
# a port bucket chain of the arranged FORWARD chain (named by its lowest port)
_BUCKET = re.compile(r"^:(fwd-\S+-(?:tcp|udp)-(\d+)) ", re.M)
_NFT_BUCKET = re.compile(r"^\s*chain (filter-fwd-\S*(?:tcp|udp)-(\d+)-v[46]) \{", re.M)


def _compiled(tmp_path: Path, name: str, text: str, capsys: pytest.CaptureFixture[str]) \
        -> tuple[int, str, Path]:
    """TEXT compiled in this process (--no-cache) into its folder's `out`: exit code,
    stderr, the cluster's output directory."""
    folder = tmp_path / name
    write_policy(folder, text)
    capsys.readouterr()
    code = compile_to(folder / POLICY, folder / "out", "--no-cache")
    return code, capsys.readouterr().err, folder / "out" / "pc"


def test_random_policies_are_valid_and_reach_what_a_patch_must_handle(tmp_path, capsys):
    """Every random policy compiles without an error on both backends, and its output
    holds what a patch compile has to splice into: FORWARD split down to port buckets
    on both sides of the first halving cut, ipsets, and every special rule (INPUT and
    OUTPUT, `only`, LOG, REJECT types, limits, notrack, the ftp helper, IPv6, a rule on
    two lines, two rules on one line, the included file). The policy is a function of
    its seed."""
    for seed in SEEDS:
        text = random_policy(seed)
        assert text == random_policy(seed)
        lines = text.split("\n")
        assert any(line.startswith("        service ") for line in lines)  # two lines
        assert any(len(re.findall(r"(?:accept|drop|reject) from ", line)) == 2
                   for line in lines)
        assert sum(1 for line in lines if parse_rule(line)) >= 350
        code, err, out = _compiled(tmp_path, f"s{seed}", text, capsys)
        assert code == 0 and "0 error(s)" in err, err[-3000:]
        rules = (out / "fw1" / "iptables.rules").read_text()
        buckets = {int(low) for _, low in _BUCKET.findall(rules)}
        assert len(_BUCKET.findall(rules)) >= 20, rules[:2000]
        assert min(buckets) < 32768 <= max(buckets), buckets  # (the port edit crosses)
        for wanted in ("-j LOG", "--reject-with tcp-reset", "--reject-with icmp-admin-prohibited",
                       "-m limit", "-m connlimit", "-j CT --notrack", "-j CT --helper ftp",
                       "-m set --match-set fwc4-big-", '--comment "p.fw:', "-A INPUT",
                       "-A OUTPUT"):
            assert wanted in rules, wanted
        assert '--comment "p.fw:' in (out / "fw1" / "ip6tables.rules").read_text()
        assert "create fwc4-big-" in (out / "fw1" / "ipsets.rules").read_text()
        assert "198.19.1.122" in rules and "198.19.1.122" not in \
            (out / "fw2" / "iptables.rules").read_text()  # `only fw1`
    code, err, out = _compiled(tmp_path, "nft", random_policy(NFT_SEED, nftables=True), capsys)
    assert code == 0 and "0 error(s)" in err, err[-3000:]
    nft = (out / "fw1" / "nftables.nft").read_text()
    buckets = {int(low) for _, low in _NFT_BUCKET.findall(nft)}
    assert len(buckets) >= 4 and min(buckets) < 32768 <= max(buckets), buckets


def _edits(seed: int, count: int, nftables: bool = False, turn: int | None = None) \
        -> list[tuple[str, str, str]]:
    """COUNT random edits of seed SEED's policy, each applied to the text before it
    unless it is invalid: (text before, text after, kind). TURN: the kinds in turn,
    from EDIT_KINDS[TURN] on, instead of drawn."""
    rng = random.Random(seed * 7919)
    text = random_policy(seed, nftables=nftables)
    found = []
    for number in range(count):
        kinds = EDIT_KINDS if turn is None else (EDIT_KINDS[(turn + number) % len(EDIT_KINDS)],)
        edit = random_in_place_edit(text, rng, kinds) or random_in_place_edit(text, rng)
        assert edit is not None
        found.append((text, *edit))
        if edit[1] not in INVALID_KINDS:
            text = edit[0]
    return found


def test_every_edit_kind_occurs_and_keeps_the_policy_valid(tmp_path, capsys):
    """Random edits over the seeds: every kind of EDIT_KINDS occurs; each changes exactly
    one line in place; a single-rule edit leaves that line one rule (of the same line:
    every other rule keeps its `p.fw:LINE`); and the first edit of each kind compiles,
    except the deliberate mistake, which is a diagnostic (never a traceback)."""
    first: dict[str, tuple[str, str]] = {}
    for seed in (*SEEDS, NFT_SEED):
        for before, after, kind in _edits(seed, 40, nftables=seed == NFT_SEED):
            old, new = before.split("\n"), after.split("\n")
            assert len(old) == len(new)
            line = edited_line(before, after)
            assert sum(a != b for a, b in zip(old, new, strict=True)) == 1, kind
            if kind in SINGLE_RULE_KINDS:
                assert parse_rule(old[line - 1]) and parse_rule(new[line - 1]), (kind, line)
            first.setdefault(kind, (before, after))
    assert sorted(first) == sorted(EDIT_KINDS)
    for kind, (_, after) in first.items():
        code, err, out = _compiled(tmp_path, kind.replace(" ", "-"), after, capsys)
        assert "Traceback" not in err
        if kind in INVALID_KINDS:
            assert code == 1 and re.search(r"p\.fw:\d+:\d+: error\[FWC\d+\]", err), err
            assert not out.exists()
        else:
            assert code == 0, (kind, err[-3000:])


def test_a_port_edit_moves_its_rule_to_other_port_buckets(tmp_path, capsys):
    """The port edit changes a single port to one in the other half of the port space:
    the halving cuts' first cut is 32768, so a rule that sat in port buckets sits in
    others afterwards, in every node it is copied into (a bucket decision, not only a
    line's text, changes)."""
    moved = 0
    ports = [(b, a) for seed in SEEDS for b, a, kind in _edits(seed, 60) if kind == "port"]
    for number, (before, after) in enumerate(ports[:6]):
        line = edited_line(before, after)
        sides = []
        for name, text in ((f"p{number}-before", before), (f"p{number}-after", after)):
            code, err, out = _compiled(tmp_path, name, text, capsys)
            assert code == 0, err[-3000:]
            sides.append(_buckets_of(out, line))
        old, new = sides
        if old:  # (a rule in a node too short to split has no bucket)
            assert new and old.isdisjoint(new), (before.split("\n")[line - 1], old, new)
            moved += 1
    assert moved >= 3, moved


def _buckets_of(out: Path, line: int) -> set[str]:
    """The port buckets of fw1 that hold the lines of the rule of LINE (its own lines,
    or the jumps to its chains of share_expansions)."""
    own = re.compile(rf'^-A (\S+) .*--comment "(?:fwc arrange: )?p\.fw:{line}[",]', re.M)
    return {chain for family in ("iptables.rules", "ip6tables.rules")
            for chain in own.findall((out / "fw1" / family).read_text())
            if re.search(r"-(?:tcp|udp)-\d+$", chain)}


def _same_run(cached: Compiled, fresh: Compiled) -> None:
    """The cached compile into `out` against the --no-cache one into `fresh`: the same exit,
    the same diagnostics and the same files, byte for byte (a failed compile writes
    nothing: `out` keeps the previous files, `fresh` stays empty)."""
    assert cached.returncode == fresh.returncode, (cached.stderr, fresh.stderr)
    assert cached.stderr == fresh.stderr
    if fresh.returncode:
        assert fresh.files == {}
        return
    assert cached.files == fresh.files, sorted(
        name for name in {*cached.files, *fresh.files}
        if cached.files.get(name) != fresh.files.get(name))


@dataclass(frozen=True)
class Locality:
    """What an edit of one line changed besides its own rule's lines."""

    v4: int  # other lines of fw1's iptables.rules (nftables.nft) that differ, out + in
    v6: int  # the same in fw1's ip6tables.rules
    files: frozenset[str]  # the other files that differ (not MANIFEST: it always does)
    why: str  # iptables: bench.patchfloor.cause's reading of the difference ("local", ...)


def _other_count(old: bytes, new: bytes, line: int, nftables: bool) -> int:
    if nftables:  # the lines that carry the rule's label are its own
        label = f'"{POLICY}:{line}"'.encode()
        kept, made = (Counter(x for x in side.split(b"\n") if label not in x)
                      for side in (old, new))
    else:
        kept, made = Counter(other_lines(old, line)), Counter(other_lines(new, line))
    return sum(((kept - made) + (made - kept)).values())


def _locality(old: dict[str, bytes], new: dict[str, bytes], line: int, scratch: Path) \
        -> Locality:
    """The edit of LINE's changes from OLD to NEW (written under SCRATCH for `cause`)."""
    nftables = "pc/fw1/nftables.nft" in old
    rules = ("nftables.nft",) if nftables else ("iptables.rules", "ip6tables.rules")
    counts = [_other_count(old[f"pc/fw1/{name}"], new[f"pc/fw1/{name}"], line, nftables)
              for name in rules]
    files = {path.split("/", 1)[1] for path in {*old, *new} if old.get(path) != new.get(path)
             and not path.endswith(("/MANIFEST", *rules))}
    why = "-"
    if not nftables:
        for name, tree in (("old", old), ("new", new)):
            for path, data in tree.items():
                (scratch / name / path).parent.mkdir(parents=True, exist_ok=True)
                (scratch / name / path).write_bytes(data)
        why = cause(scratch / "old", scratch / "new", line)
        shutil.rmtree(scratch)
    return Locality(counts[0], sum(counts[1:]), frozenset(files), why)


def test_a_cached_compile_after_an_edit_is_the_compile_without_cache(tmp_path, cache_home):
    """The patch compile's property, run as its test will run it: the original compiled
    into `out` (cache on), the edit applied, compiled again into `out` (cache on), and
    that compared with `--no-cache` into a fresh directory: the same exit, diagnostics
    and bytes. A failed compile (the deliberate mistake) leaves `out` as it was. 30
    edits, chained, on two iptables policies and one nftables policy (about 30 s on two
    cores). Prints, per kind, how many edits change no line of fw1's rules but the
    edited rule's own: what a patch compile can expect to splice. (An object edit has
    no rule of its own: its other lines are the rules that name the object, which
    bench.patchfloor.cause reads by the chains they are in.)"""
    # (seed, edits, nftables, the first kind: over all 30 edits each kind twice)
    plan = [(SEEDS[0], 12, False, 0), (SEEDS[1], 12, False, 12), (NFT_SEED, 6, True, 24)]
    report: dict[tuple[str, str], list[Locality]] = {}
    for seed, count, nftables, turn in plan:
        folder = tmp_path / f"seed{seed}"
        write_policy(folder, random_policy(seed, nftables=nftables))
        previous = compile_tree(folder, "out")
        assert any((cache_home / "fwc").glob("out-*")), "the compile cache was not used"
        for number, (before, after, kind) in enumerate(
                _edits(seed, count, nftables, turn)):
            assert (folder / POLICY).read_text(encoding="utf-8") == before
            (folder / POLICY).write_text(after, encoding="utf-8")
            cached = compile_run(folder, "out")
            fresh = compile_run(folder, f"fresh{number}", "--no-cache")
            shutil.rmtree(folder / f"fresh{number}", ignore_errors=True)
            _same_run(cached, fresh)
            if kind in INVALID_KINDS:
                assert cached.returncode == 1 and cached.files == previous
                (folder / POLICY).write_text(before, encoding="utf-8")
                continue
            assert cached.returncode == 0, cached.stderr[-3000:]
            report.setdefault((kind, "nftables" if nftables else "iptables"), []).append(
                _locality(previous, cached.files, rule_line(after, edited_line(before, after)),
                          tmp_path / "scratch"))
            previous = cached.files
    print(_report(report))
    assert {kind for kind, _ in report} == set(EDIT_KINDS) - set(INVALID_KINDS)
    # a comment changes the policy's hash in MANIFEST and nothing else
    assert all(not (got.v4 or got.v6 or got.files)
               for (kind, _), results in report.items() if kind == "comment" for got in results)


def _report(report: dict[tuple[str, str], list[Locality]]) -> str:
    rows = ["| edit kind | backend | edits | fw1 rules: only the rule's own lines | other "
            "lines (out + in) | IPv6 other lines | other files changed | why not local |",
            "|---|---|---|---|---|---|---|---|"]
    for (kind, backend), results in sorted(report.items(),
                                           key=lambda item: (item[0][1], EDIT_KINDS.index(
                                               item[0][0]))):
        local = sum(1 for got in results if not got.v4 and not got.v6)
        files = sorted(set().union(*(got.files for got in results)))
        rows.append(f"| {kind} | {backend} | {len(results)} | {local}/{len(results)} | "
                    f"{sum(got.v4 for got in results)} | {sum(got.v6 for got in results)} | "
                    f"{', '.join(files) or '-'} | "
                    f"{'; '.join(sorted({got.why for got in results} - {'local'})) or '-'} |")
    return "\n".join(rows)
