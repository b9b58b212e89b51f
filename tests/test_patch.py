"""The patch compile (fwc.backend.patch, issue 12): an in-place edit of one rule is
spliced into the previous output, and the result is byte for byte the full compile's.

Each test compiles in this process (`fwc.cli.main`) with a private result cache, records
whether each compile took the patch (and why not), and compares every output tree with
a `--no-cache` compile of the same text into another directory.
"""

from __future__ import annotations

import hashlib
import random
import re
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import EDGE, REPO, file_tree

from fwc.backend import patch
from fwc.cli import main

sys.path.insert(0, str(REPO))
from bench.generate import build_site, fwc_policy  # noqa: E402

RULE = re.compile(r"^    (accept|drop|reject) from (\S+) to (\S+) "
                  r"service ([^ ,]+(?:, [^ ,]+)*)(.*)$")


@pytest.fixture
def outcomes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """What each compile's patch attempt ended in: "patched" or the refusal's reason."""
    seen: list[str] = []
    real = patch.patch

    def traced(*args: object, **kwargs: object) -> patch.Patch:
        try:
            got = real(*args, **kwargs)  # type: ignore[arg-type]
        except patch.Refused as exc:
            seen.append(str(exc))
            raise
        seen.append("patched")
        return got

    monkeypatch.setattr(patch, "patch", traced)
    return seen


@pytest.fixture
def kinds(monkeypatch: pytest.MonkeyPatch) -> set[str]:
    """What the patch's reader gave for each previous file it read with `text`: "mmap"
    for a mapped file, "bytes" for one read into memory."""
    seen: set[str] = set()
    real_text = patch._Reader.text

    def text_of(reader: patch._Reader, path: str) -> object:
        got = real_text(reader, path)
        seen.add(type(got).__name__)
        return got

    monkeypatch.setattr(patch._Reader, "text", text_of)
    return seen


def _compile(folder: Path, out: str, *extra: str) -> dict[str, tuple[bytes, int]]:
    assert main(["compile", str(folder / "p.fw"), "-o", str(folder / out), *extra]) == 0
    return file_tree(folder / out)


def _site_compiled(folder: Path, *extra: str) -> str:
    """The bench's site shape at 1,500 rules, compiled into FOLDER/out: its text."""
    text = fwc_policy(build_site(1500, shape="site"))
    (folder / "p.fw").write_text(text, encoding="utf-8")
    _compile(folder, "out", *extra)
    return text


def _family(name: str) -> str:
    found = re.match(r"[a-z]+([46])-", name)
    return found[1] if found else name


def _edited(text: str, rng: random.Random) -> tuple[str, str]:
    """TEXT with one rule line changed in place (a kind of edit an operator makes)."""
    lines = text.split("\n")
    rules = [i for i, line in enumerate(lines) if RULE.match(line)]
    while True:
        where = rng.choice(rules)
        action, source, destination, services, rest = RULE.match(lines[where]).groups()
        other = RULE.match(lines[rng.choice(rules)]).groups()
        kind = rng.choice(["service", "source", "action", "device", "log"])
        if kind == "service":
            services = other[3]
        elif kind == "source":
            if _family(other[1]) != _family(source):
                continue  # (a rule of two families never matches: FWC105)
            source = other[1]
        elif kind == "action":
            action = rng.choice([a for a in ("accept", "drop", "reject") if a != action])
        elif kind == "device":
            rest = re.sub(r" in \S+", "", rest) if " in " in rest else rest + " in lan"
        else:
            rest = rest.replace(' log "bench"', "") if "log" in rest else rest + ' log "x"'
        line = f"    {action} from {source} to {destination} service {services}{rest}"
        if line != lines[where]:
            lines[where] = line
            return "\n".join(lines), kind


def _until_patched(folder: Path, text: str, rng: random.Random, outcomes: list[str],
                   before_each: Callable[[], None]) -> str:
    """Random in-place edits of TEXT compiled into FOLDER/out (BEFORE_EACH called before
    each compile), each the full compile's bytes, until one is patched: its text."""
    for _ in range(40):
        text, _kind = _edited(text, rng)
        (folder / "p.fw").write_text(text, encoding="utf-8")
        before_each()
        assert _compile(folder, "out") == _compile(folder, "full", "--no-cache")
        if outcomes[-1] == "patched":
            return text
    raise AssertionError(f"no edit of 40 was patched: {outcomes}")


def _forced_until_patched(folder: Path, text: str, rng: random.Random,
                          outcomes: list[str], before_each: Callable[[], None]) -> None:
    """Random in-place edits of TEXT compiled with --force into FOLDER/out (a test
    changes a previous file there meanwhile; BEFORE_EACH called before each compile),
    until the patch takes one."""
    for _ in range(40):
        edited, _kind = _edited(text, rng)
        (folder / "p.fw").write_text(edited, encoding="utf-8")
        outcomes.clear()
        before_each()
        assert main(["compile", str(folder / "p.fw"), "-o", str(folder / "out"),
                     "--force"]) == 0
        if outcomes == ["patched"]:
            return
        text = edited
    raise AssertionError(f"no edit of 40 was patched: {outcomes}")


@pytest.mark.parametrize("shape", ["site", "groups", "interfaces"])
def test_a_patched_compile_is_the_full_compile(tmp_path: Path, cache_home: Path,
                                               outcomes: list[str], shape: str) -> None:
    text = fwc_policy(build_site(1500, shape=shape))
    (tmp_path / "p.fw").write_text(text, encoding="utf-8")
    _compile(tmp_path, "out")
    rng = random.Random(f"patch-{shape}")
    kinds: Counter[tuple[str, str]] = Counter()
    for step in range(12):
        edited, kind = _edited(text, rng)
        (tmp_path / "p.fw").write_text(edited, encoding="utf-8")
        argv = ["compile", str(tmp_path / "p.fw"), "-o"]
        if main([*argv, str(tmp_path / "out")]) != 0:
            # an edit the checks refuse (a device the rule's addresses are not behind)
            # writes nothing, as a full compile refuses it
            assert main([*argv, str(tmp_path / "refused"), "--no-cache"]) != 0
            (tmp_path / "p.fw").write_text(text, encoding="utf-8")
            continue
        text = edited
        full = _compile(tmp_path, f"full{step}", "--no-cache")
        assert file_tree(tmp_path / "out") == full, f"step {step}: {kind} edit, {outcomes[-1]}"
        kinds[kind, outcomes[-1]] += 1
    taken = sum(n for (_, outcome), n in kinds.items() if outcome == "patched")
    # the bench's shapes: most edits of a source or an action, some of a service, patch
    assert taken >= 3, kinds


def test_what_the_patch_refuses_is_compiled_in_full(tmp_path: Path, cache_home: Path,
                                                    outcomes: list[str]) -> None:
    text = _site_compiled(tmp_path)
    lines = text.split("\n")
    rule_at = next(i for i, line in enumerate(lines)
                   if RULE.match(line) and " in " in line and "log" not in line)
    host_at = next(i for i, line in enumerate(lines) if line.startswith("host "))
    edits = {
        "the line holds no policy rule": (host_at, lines[host_at] + "  # moved"),
        # (a LOG line, then the verdict's)
        "the rule gains or loses lines": (rule_at, lines[rule_at] + ' log "x"'),
        "the rule moves to another device":
            (rule_at, re.sub(r" in \S+", "", lines[rule_at])),
    }
    for why, (where, line) in edits.items():
        changed = list(lines)
        changed[where] = line
        (tmp_path / "p.fw").write_text("\n".join(changed), encoding="utf-8")
        assert _compile(tmp_path, "out") == _compile(tmp_path, "full", "--no-cache"), why
        assert outcomes[-1].startswith(why), (why, outcomes)
        # back to the text the next edit is made of (a patch of the edit's reversal)
        (tmp_path / "p.fw").write_text(text, encoding="utf-8")
        assert _compile(tmp_path, "out") == _compile(tmp_path, "full", "--no-cache"), why


def test_a_lost_or_changed_output_is_never_patched(tmp_path: Path, cache_home: Path,
                                                   outcomes: list[str]) -> None:
    text = _site_compiled(tmp_path)
    rng = random.Random("patch-record")
    text, _ = _edited(text, rng)
    (tmp_path / "p.fw").write_text(text, encoding="utf-8")
    rules = tmp_path / "out" / "bench" / "fw1" / "iptables.rules"
    rules.write_bytes(rules.read_bytes() + b"# changed by hand\n")
    assert main(["compile", str(tmp_path / "p.fw"), "-o", str(tmp_path / "out"),
                 "--force"]) == 0
    assert outcomes == [], "a directory that is not what the last compile wrote is compiled"
    assert file_tree(tmp_path / "out") == _compile(tmp_path, "full", "--no-cache")


def test_nftables_is_compiled_in_full(tmp_path: Path, cache_home: Path,
                                      outcomes: list[str]) -> None:
    text = _site_compiled(tmp_path, "--backend", "nftables")
    text, _ = _edited(text, random.Random("patch-nft"))
    (tmp_path / "p.fw").write_text(text, encoding="utf-8")
    patched = _compile(tmp_path, "out", "--backend", "nftables")
    assert patched == _compile(tmp_path, "full", "--backend", "nftables", "--no-cache")
    # (no base is kept for files the patch does not splice: nothing to try)
    assert outcomes == [], outcomes
    assert not list((cache_home / "fwc").glob("patch-*"))


def test_the_patch_base_keeps_no_line_of_the_policy(tmp_path: Path, cache_home: Path) -> None:
    """A line may be `password "..."`: the base keeps keyed digests of lines, never the
    text, nor a plain digest that a search over short lines would undo."""
    text = EDGE.read_text(encoding="utf-8")
    assert 'password "s3cret"' in text
    (tmp_path / "p.fw").write_text(text, encoding="utf-8")
    _compile(tmp_path, "out")
    [entry] = (cache_home / "fwc").glob("patch-*")
    data = entry.read_bytes()
    line = next(line for line in text.split("\n") if "s3cret" in line)
    assert b"s3cret" not in data
    for digest in (hashlib.sha256(line.encode()).hexdigest(),
                   hashlib.blake2b(line.encode(), digest_size=16).hexdigest()):
        assert digest.encode() not in data


def test_a_base_another_fwc_wrote_is_not_patched(tmp_path: Path, cache_home: Path,
                                                 outcomes: list[str],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Another version of fwc may arrange the same rules otherwise: its base is not
    found (the key holds the code's digest), and the compile is a full one."""
    import fwc.commands.compile as compile_command

    text = _site_compiled(tmp_path)
    monkeypatch.setattr(compile_command, "code_digest", lambda: "another fwc")
    text, _ = _edited(text, random.Random("patch-version"))
    (tmp_path / "p.fw").write_text(text, encoding="utf-8")
    assert _compile(tmp_path, "out") == _compile(tmp_path, "full", "--no-cache")
    assert outcomes == []


def test_a_file_changed_while_the_patch_writes_means_a_full_compile(
        tmp_path: Path, cache_home: Path, outcomes: list[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Between the patch's plan and its write another process may change a previous file
    (another compile swapping its output in): the write stops before anything is swapped
    in, and the compile is a full one, not an internal error."""
    import fwc.commands.compile as compile_command

    text = _site_compiled(tmp_path)
    real = compile_command._write_and_store
    changed: list[str] = []

    def meanwhile(*args: object, **kwargs: object) -> object:
        if not changed:  # (the patch's write: the full compile's comes next)
            rules = tmp_path / "out" / "bench" / "fw1" / "iptables.rules"
            rules.write_bytes(rules.read_bytes() + b"# meanwhile\n")
            changed.append("yes")
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(compile_command, "_write_and_store", meanwhile)
    _forced_until_patched(tmp_path, text, random.Random("patch-meanwhile"), outcomes,
                          changed.clear)
    assert changed == ["yes"]
    assert file_tree(tmp_path / "out") == _compile(tmp_path, "full", "--no-cache")


@pytest.mark.parametrize("beside", [True, False], ids=["in-threads", "in-line"])
def test_a_file_that_is_not_what_was_written_means_a_full_compile(
        tmp_path: Path, cache_home: Path, outcomes: list[str],
        monkeypatch: pytest.MonkeyPatch, beside: bool) -> None:
    """Each previous file's bytes are checked against the digest recorded when they were
    written, a large file's in a thread beside the patch's planning, and an edited
    file's new digest (for MANIFEST) is made with that check (`_Digesting`). Every file
    counts as large here, or none: a patch is still the full compile, and a digest that
    differs is still a refusal, whichever way the digest was made."""
    monkeypatch.setattr(patch, "LARGE", 0 if beside else 1 << 60)
    threads: list[str] = []
    real_start = patch._Digesting.start
    real_run = patch._Digesting.run

    def counted(digesting: patch._Digesting) -> None:
        threads.append(digesting.path)
        real_start(digesting)

    def slow(digesting: patch._Digesting) -> None:  # still running when the plan ends
        if threads:
            time.sleep(0.02)
        real_run(digesting)

    monkeypatch.setattr(patch._Digesting, "start", counted)
    monkeypatch.setattr(patch._Digesting, "run", slow)
    rng = random.Random("patch-digests")
    text = _until_patched(tmp_path, _site_compiled(tmp_path), rng, outcomes, threads.clear)
    assert bool(threads) == beside, "the digests were made as the threshold says"

    real_hash_of = patch.hash_of

    def another(path: str, secret_hash: object) -> object:
        digest = real_hash_of(path, secret_hash)  # type: ignore[arg-type]
        if path == "fw2/iptables.rules":
            digest.update(b"not what was written")
        return digest

    monkeypatch.setattr(patch, "hash_of", another)
    for _ in range(40):  # an edit the patch would take, but for fw2's digest
        outcomes.clear()
        text, _kind = _edited(text, rng)
        (tmp_path / "p.fw").write_text(text, encoding="utf-8")
        assert _compile(tmp_path, "out") == _compile(tmp_path, "full", "--no-cache")
        if outcomes == ["fw2/iptables.rules is not what was written"]:
            break
    assert outcomes == ["fw2/iptables.rules is not what was written"], outcomes


def test_a_file_changed_while_it_is_written_means_a_full_compile(
        tmp_path: Path, cache_home: Path, outcomes: list[str], kinds: set[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A large previous rules file is mapped, not copied (`_Reader.text`): a change made
    in place while the patch writes from it would reach the new file. Its change time
    is checked again once the file is written, and the compile is then a full one."""
    monkeypatch.setattr(patch, "LARGE", 0)  # every rules file mapped
    text = _site_compiled(tmp_path)
    real_pieces, real_files = patch._pieces, patch.PatchedCluster.files
    writing: list[str] = []  # (the plan digests pieces too: only the write's count)
    changed: list[str] = []

    def files(stream: patch.PatchedCluster) -> object:
        writing.append("yes")
        yield from real_files(stream)

    def meanwhile(*args: object) -> object:
        pieces = real_pieces(*args)  # type: ignore[arg-type]
        yield next(pieces)
        if writing and not changed:  # the last byte, in a piece not yet written
            rules = tmp_path / "out" / "bench" / "fw1" / "iptables.rules"
            with rules.open("r+b") as stream:
                stream.seek(-1, 2)
                stream.write(b" ")
            changed.append("yes")
        yield from pieces

    def before_each() -> None:
        writing.clear()
        changed.clear()

    monkeypatch.setattr(patch.PatchedCluster, "files", files)
    monkeypatch.setattr(patch, "_pieces", meanwhile)
    _forced_until_patched(tmp_path, text, random.Random("patch-while-written"), outcomes,
                          before_each)
    assert changed == ["yes"]
    assert kinds == {"mmap"}, kinds
    assert file_tree(tmp_path / "out") == _compile(tmp_path, "full", "--no-cache")


def test_a_rules_file_another_user_may_write_is_read_not_mapped(
        tmp_path: Path, cache_home: Path, outcomes: list[str], kinds: set[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Only a file that no one but fwc's own user may write is mapped (a process cutting
    a mapped file short ends fwc with SIGBUS); any other is read into memory, and the
    patch is the same."""
    monkeypatch.setattr(patch, "LARGE", 0)  # every rules file large enough
    text = _site_compiled(tmp_path)
    monkeypatch.setattr(patch, "_only_ours", lambda info: False)
    _until_patched(tmp_path, text, random.Random("patch-owner"), outcomes, kinds.clear)
    assert kinds == {"bytes"}, kinds


def test_only_a_file_no_other_user_may_write_is_ours(tmp_path: Path) -> None:
    import os
    import stat as stat_module

    path = tmp_path / "f"
    path.write_bytes(b"x")
    for mode, ours in ((0o644, True), (0o600, True), (0o664, False), (0o646, False)):
        path.chmod(mode)
        assert patch._only_ours(path.stat()) is ours, oct(mode)
    info = path.stat()
    other = os.stat_result((stat_module.S_IFREG | 0o644, *info[1:4], info.st_uid + 1,
                            *info[5:]))
    assert patch._only_ours(other) is False
