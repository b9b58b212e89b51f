"""The floor of a patch compile of a one-line edit (issue 12, twenty-sixth session).

A measurement, not a compiler path. The design of docs/performance.md ("Issue 12,
twenty-sixth session") would compile an in-place edit of one rule by lowering that
rule alone and splicing its lines into the files of the previous compile, while the
checks run in full in their worker. This times everything such a compile has to do,
in one whole process, with the parts it cannot skip done for real:

- the model (load, parse, resolve) and the checks' worker, forked as `fwc compile`
  forks it, whose verdict the swap waits for;
- a record of the arrangement's port cuts (the largest part of the aggregates the
  design records: every port bucket node's multiset of port lows), loaded with marshal;
- the edited rule lowered and rendered alone on every member and family
  (`_Lowering.rule_lowering`, `rule_bodies`);
- every file of the previous output read, the rules files spliced (the old rule's lines
  out, the new ones in by source order), every file written to a staging directory and
  hashed, then swapped in and the old directory removed.

What it takes from an oracle instead (the full compile of the edited policy, made
before the timing): which chains the new lines go to and their text (checked against
the rule rendered here), i.e. the routing through the recorded tree and the decisions,
both O(depth) work on the loaded aggregates; and the MANIFEST's few lines (the hashes
of every file are computed here all the same). The spliced tree is compared with the full
compile's, byte for byte, every run. Each way: the checks all in the worker (as `fwc
compile` runs them) and shared with the parent once its files are written (as `fwc check`).

How often a patch could be taken at all, with fwc's port cut rule (`halving_cuts` of
fwc.backend.arrange since the twenty-sixth session's end) or the former one
(`quantile_cuts`, --quantiles):

    python3 bench/patchfloor.py [--shapes site,groups,interfaces] [--repeat 3]
    python3 bench/patchfloor.py --locality 16 [--quantiles]  # random edits, compiled in full
    python3 bench/patchfloor.py --traversal   # rules tested per connection, both cut rules
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import marshal
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import time
from array import array
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


POLICY = "p.fw"
# a policy rule's label, also on the jump to a rule's chain of its own (share_expansions)
_LABEL = re.compile(rb'--comment "(?:fwc arrange: )?p\.fw:(\d+)[",]')


def _fwc(quantiles: bool = False) -> list[str]:
    """The `fwc` command: fwc's own, or with QUANTILES (`fwc_with_quantile_cuts`)."""
    if quantiles:
        return [sys.executable, str(Path(__file__).resolve()), QUANTILES]
    return [sys.executable, "-m", "fwc"]


def compile_into(folder: Path, out: str, quantiles: bool = False) -> float:
    """A full compile of FOLDER's policy into OUT (no cache): its wall time."""
    from bench.run import timed

    got = timed([*_fwc(quantiles), "compile", POLICY, "-o", out, "--no-cache"], cwd=folder)
    if got.returncode:
        raise SystemExit(f"compile failed in {folder}: {got.stderr[-500:]}")
    return got.seconds


def tag_of(line: int) -> bytes:
    return f'--comment "{POLICY}:{line}" '.encode()


def rule_lines(data: bytes, tag: bytes) -> list[tuple[int, int]]:
    """The byte ranges of the lines of DATA that hold TAG, in order."""
    ranges: list[tuple[int, int]] = []
    at = data.find(tag)
    while at >= 0:
        start = data.rfind(b"\n", 0, at) + 1
        end = data.find(b"\n", at) + 1
        ranges.append((start, end))
        at = data.find(tag, end)
    return ranges


_BUCKET = re.compile(rb"^:?(?:-A )?\S+-\d+ ")  # a port bucket chain's line or declaration
# a chain of share_expansions (`fwc-p42-fwd-0`: its rule's number and count; a digest of
# its label for a rule without one, `fwd-_1a2b3c-0`)
_SHARED = re.compile(rb"^:?(?:-A )?(?:fwc-p\d+-(?:fwd|in)-\d+|\S+-_[0-9a-f]+-\d+) ")


def other_lines(data: bytes, line: int) -> list[bytes]:
    """The lines of rules file DATA that are not rule LINE's own: its own are its lines,
    the jumps to its chains of share_expansions (their comments name it) and the
    declarations of those chains (the chains that hold its lines only)."""
    tag, jump = tag_of(line), f'--comment "fwc arrange: {POLICY}:{line}"'.encode()
    lines = data.split(b"\n")
    own = [tag in text or jump in text for text in lines]
    filled: dict[bytes, bool] = {}  # chain: every line of it is the rule's
    for text, mine in zip(lines, own, strict=True):
        if text.startswith(b"-A "):
            chain = text.split(b" ", 2)[1]
            filled[chain] = filled.get(chain, True) and mine
    return [text for text, mine in zip(lines, own, strict=True) if not mine and not (
        text.startswith(b":") and filled.get(text[1:].split(b" ", 1)[0], False))]


def cause(old: Path, new: Path, line: int) -> str:
    """Why NEW (the full compile after the edit of LINE) is not OLD with that rule's
    lines changed ("local": it is): the kinds of the other lines that differ, compared
    as multisets per file."""
    kinds: set[str] = set()
    for path in sorted(old.rglob("*")):
        if not path.is_file() or path.name == "MANIFEST":
            continue
        before, after = path.read_bytes(), (new / path.relative_to(old)).read_bytes()
        kept, made = other_lines(before, line), other_lines(after, line)
        if kept == made:
            continue
        a, b = Counter(kept), Counter(made)
        changed = list((a - b) + (b - a))
        if not changed:
            kinds.add("lines reordered")
        elif path.name == "ipsets.rules":
            kinds.add("ipsets")
        elif any(_SHARED.search(x) for x in changed):
            declared = any(x.startswith(b":") for x in changed)
            kinds.add("shared chains renamed" if declared else "a shared chain")
        elif all(_BUCKET.match(x) or b'"fwc arrange: ports ' in x for x in changed):
            # (a bucket is named by its lowest port: a moved cut renames one, declared
            # out and in; a new or lost bucket is declared on one side only)
            out, into = (sum(x.startswith(b":") for x in side) for side in (a - b, b - a))
            kinds.add("bucket count" if out != into else
                      f"a port cut moved ({max(map(_buckets_touched, (a - b, b - a)))} "
                      "buckets)")
        else:
            kinds.add("other lines")
    return ", ".join(sorted(kinds)) or "local"


def _buckets_touched(changed: Iterable[bytes]) -> int:
    """The most bucket chains of one port node among the CHANGED lines of one side (each
    line's chain and, for a jump, its target)."""
    chains = {word for x in changed for word in re.findall(rb"(?:^-A |-j )(\S+-\d+)\b", x)}
    per_node = Counter(name.rsplit(b"-", 1)[0] for name in chains)
    return max(per_node.values(), default=0)


def plan_of(new: Path, line: int) -> dict[str, list[str]]:
    """Per rules file of NEW (the full compile): the edited rule's lines, in order."""
    tag = tag_of(line)
    plan: dict[str, list[str]] = {}
    for path in sorted(new.rglob("*.rules")):
        data = path.read_bytes()
        plan[str(path.relative_to(new))] = [data[s:e].decode()
                                            for s, e in rule_lines(data, tag)]
    return plan


def port_record(folder: Path) -> bytes:
    """Every port bucket node's lows, their counts and its bucket count, for every member
    and family, as the design would record them (marshal of flat int arrays)."""
    from fwc.backend import arrange
    from fwc.backend.lower import lower, options_for
    from fwc.pipeline import Modelled, model

    here = Path.cwd()
    os.chdir(folder)
    try:
        front = model(POLICY, keep_syntax=False)
    finally:
        os.chdir(here)
    assert isinstance(front, Modelled)
    nodes: list[tuple[bytes, bytes, int]] = []
    options = options_for(front.policy)
    for cluster in front.policy.clusters:
        for member in cluster.members:
            rulesets = {family: lower(cluster, member, family, options)
                        for family in (4, 6)}
            # the arranger's own record of its port splits (arrange.PortNode)
            splits: dict[int, dict[str, tuple[arrange.ProtocolChild, ...]]] = {}
            arrange.optimise(member, rulesets, memo=cluster.memo, splits=splits)
            for chains in splits.values():
                for children in chains.values():
                    for node in (c.port for c in children if c.port is not None):
                        nodes.append((array("i", [low for low, _ in node.lows]).tobytes(),
                                      array("i", [n for _, n in node.lows]).tobytes(),
                                      node.target))
    return marshal.dumps(nodes)


def prepare(folder: Path, shape: str) -> tuple[int, float, int]:
    """FOLDER with the previous output (`old`), the full compile of the first local bench
    edit (`full`, timed), its plan and the port record: (edited line, the full compile's
    wall, the record's size)."""
    from bench.generate import build_site, fwc_policy
    from bench.run import one_line_edit

    folder.mkdir(parents=True, exist_ok=True)
    original = fwc_policy(build_site(20000, shape=shape))
    (folder / POLICY).write_text(original, encoding="utf-8")
    shutil.rmtree(folder / "old", ignore_errors=True)
    compile_into(folder, "old")
    for nth in range(8):
        edited = one_line_edit(original, nth)
        line = next(i for i, (a, b) in enumerate(zip(original.split("\n"), edited.split("\n"),
                                                       strict=True)) if a != b) + 1
        (folder / POLICY).write_text(edited, encoding="utf-8")
        shutil.rmtree(folder / "full", ignore_errors=True)
        wall = compile_into(folder, "full")
        if cause(folder / "old", folder / "full", line) == "local":
            break
        print(f"  {shape}: bench edit {nth} (line {line}) is not local", file=sys.stderr)
    else:
        raise SystemExit(f"{shape}: no local edit among the bench's first eight")
    files = plan_of(folder / "full", line)
    offsets = {name: chain_offsets((folder / "old" / name).read_bytes(),
                                   {piece.split(" ", 2)[1] for piece in pieces})
               for name, pieces in files.items()}
    (folder / "plan.json").write_text(json.dumps({"line": line, "files": files,
                                                  "offsets": offsets}))
    record = port_record(folder)
    (folder / "record.marshal").write_bytes(record)
    return line, wall, len(record)


def chain_offsets(data: bytes, chains: set[str]) -> dict[str, int]:
    """Where the `-A` lines of each of CHAINS start in DATA (the design records every
    chain's offset in the file it wrote; here only the ones the plan needs)."""
    return {chain: data.find(f"\n-A {chain} ".encode()) + 1 for chain in chains}


def splice(data: bytes, line: int, new: list[str], offsets: dict[str, int]) -> list[memoryview]:
    """DATA with the lines of the rule at LINE replaced by NEW (`-A chain ...` lines),
    each placed in its chain (which starts at OFFSETS[chain]) by source order: the
    pieces to write, without copying DATA."""
    view = memoryview(data)
    cuts: list[tuple[int, int, bytes]] = [(start, end, b"") for start, end
                                          in rule_lines(data, tag_of(line))]
    for piece in new:  # (each after the ones before it: their label is not greater)
        chain = piece.split(" ", 2)[1]
        head = f"-A {chain} ".encode()
        where = offsets[chain]
        last_policy = -1
        while data.startswith(head, where):
            end = data.find(b"\n", where) + 1
            found = _LABEL.search(data, where, end)
            if found is not None:
                if int(found.group(1)) > line:
                    break
                last_policy = where
            where = end
        else:
            if last_policy >= 0:
                where = data.find(b"\n", last_policy) + 1
        cuts.append((where, where, piece.encode()))
    cuts.sort(key=lambda cut: (cut[0], cut[1] != cut[0]))
    pieces: list[memoryview] = []
    at = 0
    for start, end, text in cuts:
        pieces.append(view[at:start])
        if text:
            pieces.append(memoryview(text))
        at = max(at, end)
    pieces.append(view[at:])
    return pieces


def spliced_compile(folder: Path, split: bool) -> dict[str, float]:
    """The timed process: a patch compile of FOLDER's policy into `out` (see the module's
    doc). Time stamps since the parent started it (FLOOR_T0). SPLIT: the checks shared
    between the worker and this process once its files are written, as `fwc check`
    shares them (`fwc.pipeline.checked`); else all in the worker, as `fwc compile`."""
    gc.disable()  # as the CLI runs (fwc.commands.common.without_cycle_collection)
    started = float(os.environ["FLOOR_T0"])
    stamps: dict[str, float] = {}

    def stamp(name: str) -> None:
        stamps[name] = round(time.time() - started, 3)

    stamp("interpreter")
    from fwc import parallel
    from fwc.backend.lower import options_for
    from fwc.backend.lower.build import _UNKNOWN, _Lowering
    from fwc.backend.render.iptables import rule_bodies
    from fwc.checks import check_functions, run_check
    from fwc.pipeline import PARENT_CHECKS, Modelled, _encoded, checks_in_worker, model

    front = model(POLICY, keep_syntax=False)  # (run in FOLDER, as the compile was)
    assert isinstance(front, Modelled)
    stamp("model")
    policy = front.policy
    mine = [i for i in check_functions() if split and i.code in PARENT_CHECKS]
    theirs = [i for i in check_functions() if i not in mine]
    worker = parallel.start(checks_in_worker(policy) if not split else lambda: {
        info.code: [_encoded(d) for d in run_check(info, policy)] for info in theirs})
    assert worker is not None
    stamp("fork")
    nodes = marshal.loads((folder / "record.marshal").read_bytes())
    aggregates = sum(len(lows) for lows, _, _ in nodes) // 4  # (bytes of 4-byte ints)
    plan = json.loads((folder / "plan.json").read_text())
    line, files, offsets = plan["line"], plan["files"], plan["offsets"]
    stamp("record")
    options = options_for(front.policy)
    rendered: set[str] = set()
    for cluster in front.policy.clusters:
        rule = next(r for r in cluster.rules if r.span.line == line)
        for member in cluster.members:
            for family in (4, 6):
                # the rule alone: its two sides and its services numbered 0, 1 and 0 (a
                # compile numbers every rule's, RuleKeys); no conntrack helper in the bench
                lowering = _Lowering(cluster, member, family, options)
                lowering.service_memo, lowering.helped = [_UNKNOWN], [False]
                lowered = lowering.rule_lowering(rule, lowering.fw, [None, None], (0, 1, 0))
                rendered.update(body for _, chains in lowered.appends for _, rules in chains
                                for one in rules for body in rule_bodies(one))
    stamp("lowered")
    wanted = {piece.split(" ", 2)[2].rstrip("\n") for pieces in files.values()
              for piece in pieces}
    assert wanted <= rendered, "the rule rendered here is not the full compile's"
    out, staging = folder / "out", folder / "staging"
    shutil.rmtree(staging, ignore_errors=True)
    for path in sorted(out.rglob("*")):
        relative = path.relative_to(out)
        target = staging / relative
        if path.is_dir():
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        data = path.read_bytes()
        name = str(relative)
        pieces = [memoryview(data)]
        if files.get(name):
            pieces = splice(data, line, files[name], offsets[name])
        elif path.name == "MANIFEST":
            pieces = [memoryview((folder / "full" / relative).read_bytes())]
        digest = hashlib.sha256()
        with open(target, "wb") as written:
            for piece in pieces:
                written.write(piece)
                digest.update(piece)
        os.chmod(target, path.stat().st_mode & 0o7777)
    stamp("written")
    for info in mine:
        run_check(info, policy)
    worker.result()
    worker.close()
    stamp("checked")
    os.rename(out, folder / "aside")
    os.rename(staging, out)
    shutil.rmtree(folder / "aside")
    stamp("swapped")
    stamps["aggregates"] = aggregates
    return stamps


_RULE = re.compile(r"^    (accept|drop|reject) from (\S+) to \S+ service ([^,]+?)"
                   r"(?: in (\S+))?(?: out \S+)?(?: log .*)?$")
EDIT_KINDS = ("service", "source", "action", "device")


def random_edit(lines: list[str], rules: list[int], rng: random.Random, kind: str) \
        -> tuple[int, str] | None:
    """An in-place edit of KIND of a random rule line (RULES: the lines of one-service
    rules), made from another random rule's value; None when the two picked give none."""
    where, donor = rng.choice(rules), rng.choice(rules)
    mine, theirs = _RULE.match(lines[where]), _RULE.match(lines[donor])
    assert mine is not None and theirs is not None
    text = lines[where]
    if kind == "action":
        return where, text.replace(mine[1], "drop" if mine[1] != "drop" else "accept", 1)
    group = {"source": 2, "service": 3, "device": 4}[kind]
    word = {"source": " from ", "service": " service ", "device": " in "}[kind]
    if not mine[group] or not theirs[group] or mine[group] == theirs[group] \
            or "any" in (mine[group], theirs[group]):
        return None
    return where, text.replace(f"{word}{mine[group]}", f"{word}{theirs[group]}", 1)


def _why(causes: list[str]) -> str:
    counted = Counter(c for c in causes if c != "local")
    return "; ".join(f"{c}: {n}" for c, n in counted.most_common()) or "-"


QUANTILES = "--fwc-with-quantile-cuts"  # argv[1]: run `fwc` with the former cut rule


def fwc_with_quantile_cuts(argv: list[str]) -> int:
    """`fwc ARGV` with the arrangement's port cuts made by fwc's former rule
    (`quantile_cuts`, for comparison: the output is not what fwc writes)."""
    from fwc.backend import arrange
    from fwc.cli import main as fwc_main

    arrange.PORT_CUT_RULE = arrange.quantile_cuts
    return fwc_main(argv)


def run_traversal(shapes: list[str], work: Path, sample: int = 2000) -> int:
    """Rules tested per new connection on fw1 (`bench.run.traversal`: mean and worst, in
    iptables and in nftables, and decisions that differ from the flat ruleset), with fwc's
    former cut rule and its own."""
    from bench.generate import build_site, fwc_policy
    from bench.run import traversal
    from fwc.backend import arrange

    print("| shape | cuts | arranged mean | arranged worst | nftables mean | nftables worst "
          "| decisions differing |")
    print("|---|---|---|---|---|---|---|")
    own = arrange.PORT_CUT_RULE
    for shape in shapes:
        policy = work / f"{shape}.fw"
        policy.parent.mkdir(parents=True, exist_ok=True)
        policy.write_text(fwc_policy(build_site(20000, shape=shape)), encoding="utf-8")
        for cuts in (arrange.quantile_cuts, arrange.halving_cuts):
            arrange.PORT_CUT_RULE = cuts
            try:
                got = traversal(policy, sample)
            finally:
                arrange.PORT_CUT_RULE = own
            name = cuts.__name__
            print(f"| {shape} | {name} | {got['arranged']:.0f} | {got['arranged worst']:.0f} "
                  f"| {got['nftables']:.0f} | {got['nftables worst']:.0f} "
                  f"| {got['mismatches']:.0f} |", flush=True)
    return 0


def run_locality(shapes: list[str], count: int, work: Path, quantiles: bool = False) -> int:
    """COUNT random in-place edits per shape, each compiled in full: is the output the
    previous one with only the edited rule's lines changed (a splice), and if not, why.
    QUANTILES: every compile with fwc's former cut rule (`quantile_cuts`)."""
    from bench.generate import build_site, fwc_policy
    from bench.run import timed

    print(f"one-line edits compiled in full: local (a splice) or why not ({count} per shape)\n")
    print("| shape | edit | local | why not |")
    print("|---|---|---|---|")
    for shape in shapes:
        folder = work / shape
        folder.mkdir(parents=True, exist_ok=True)
        original = fwc_policy(build_site(20000, shape=shape))
        (folder / POLICY).write_text(original, encoding="utf-8")
        shutil.rmtree(folder / "old", ignore_errors=True)
        compile_into(folder, "old", quantiles)
        lines = original.split("\n")
        rules = [i for i, text in enumerate(lines) if _RULE.match(text)]
        rng = random.Random(26)
        found: dict[str, list[str]] = {kind: [] for kind in EDIT_KINDS}
        for attempt in range(count * 2000):  # (the groups shape has 40 rules with `in`)
            kind = EDIT_KINDS[attempt % len(EDIT_KINDS)]
            if len(found[kind]) * len(EDIT_KINDS) >= count:
                if all(len(v) * len(EDIT_KINDS) >= count for v in found.values()):
                    break
                continue
            edit = random_edit(lines, rules, rng, kind)
            if edit is None:
                continue
            where, text = edit
            (folder / POLICY).write_text("\n".join([*lines[:where], text, *lines[where + 1:]]),
                                         encoding="utf-8")
            shutil.rmtree(folder / "edit", ignore_errors=True)
            got = timed([*_fwc(quantiles), "compile", POLICY, "-o", "edit", "--no-cache"],
                        cwd=folder)
            if got.returncode:
                continue  # (an edit the checks refuse: no output to compare)
            found[kind].append(cause(folder / "old", folder / "edit", where + 1))
            print(f"  {shape} {kind} line {where + 1}: {found[kind][-1]}", file=sys.stderr)
        for kind, causes in found.items():
            if not causes:
                continue
            print(f"| {shape} | {kind} | {causes.count('local')}/{len(causes)} | "
                  f"{_why(causes)} |")
    return 0


def cut_stability(record: bytes, trials: int = 10, quantiles: bool = False) \
        -> dict[str, tuple[float, float, float]]:
    """For a port record (`port_record`): how often one change of a node's lows moves at
    least one of its cuts, how many move on average, and the buckets per node against
    BUCKETS the node asked for (median), per kind of change: a rule's low SWAPped for
    another of the node's lows, a rule LEAVING the node, one ARRIVING (each low drawn by
    its count). The cuts are fwc's (`halving_cuts`), or with QUANTILES its former rule."""
    from fwc.backend.arrange import halving_cuts, quantile_cuts

    rule = quantile_cuts if quantiles else halving_cuts

    def cuts(times: dict[int, int], buckets: int) -> set[int]:
        return set(rule(times, buckets))

    rng = random.Random(26)
    moved: dict[str, list[int]] = {"swap": [], "leave": [], "arrive": []}
    ratios: list[float] = []
    for lows_bytes, counts_bytes, buckets in marshal.loads(record):
        lows, counts = array("i"), array("i")
        lows.frombytes(lows_bytes)
        counts.frombytes(counts_bytes)
        times = dict(zip(lows, counts, strict=True))
        base = cuts(times, buckets)
        ratios.append((len(base) + 1) / buckets)
        population = [low for low, n in times.items() for _ in range(n)]
        for _ in range(trials):
            for kind, results in moved.items():
                changed = dict(times)
                if kind != "arrive":
                    changed[rng.choice(population)] -= 1
                if kind != "leave":
                    low = rng.choice(population)
                    changed[low] = changed.get(low, 0) + 1
                results.append(len(cuts(changed, buckets) ^ base))
    # (a cut that moves leaves one value and takes another: two in the difference)
    return {kind: (sum(map(bool, r)) / len(r), sum(r) / 2 / len(r), statistics.median(ratios))
            for kind, r in moved.items()}


def _spliced_run(folder: Path, split: bool) -> dict[str, float]:
    """One timed patch compile (`--splice`) into a fresh copy of the previous output."""
    shutil.rmtree(folder / "out", ignore_errors=True)
    shutil.copytree(folder / "old", folder / "out")
    env = dict(os.environ, FLOOR_T0=repr(time.time()))
    got = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--splice", ".",
                          *(["--split"] if split else [])], env=env, capture_output=True,
                         text=True, cwd=folder, check=False)
    if got.returncode:
        raise SystemExit(got.stderr[-2000:])
    return json.loads(got.stdout.strip().splitlines()[-1])


def run(shapes: list[str], repeat: int, work: Path) -> int:
    """The patch floor of every shape, REPEAT times each way (the checks all in the worker,
    as `fwc compile` runs them, and shared with this process, as `fwc check`), interleaved
    with full compiles of the same edit; every spliced tree compared with the full one."""
    from bench.run import load, trees_equal

    print(f"patch compile floor (whole processes, median of {repeat}; wall s since the "
          "process started)\n")
    print("| shape | record (port lows, bytes) | full compile after the edit | model "
          "| written | patch, checks in the worker | patch, checks shared | same bytes |")
    print("|---|---|---|---|---|---|---|---|")
    failed = 0
    for shape in shapes:
        folder = work / shape
        line, full_wall, size = prepare(folder, shape)
        runs: dict[bool, list[dict[str, float]]] = {False: [], True: []}
        same = True
        fulls = [full_wall]
        for attempt in range(repeat):
            for split in (False, True):
                runs[split].append(_spliced_run(folder, split))
                same = same and trees_equal(folder / "out", folder / "full")
            if attempt:
                shutil.rmtree(folder / "again", ignore_errors=True)
                fulls.append(compile_into(folder, "again"))
            print(f"  {shape} run {attempt + 1} done (load {load()})", file=sys.stderr)
        failed += not same

        def median(key: str, split: bool = False,
                   runs: dict[bool, list[dict[str, float]]] = runs) -> str:
            return f"{statistics.median(r[key] for r in runs[split]):.2f}"
        for quantiles in (True, False):
            stability = cut_stability((folder / "record.marshal").read_bytes(),
                                      quantiles=quantiles)
            print(f"  {shape}: one change of a port node's lows moves a cut "
                  f"({'quantile_cuts' if quantiles else 'halving_cuts'}) in "
                  + ", ".join(f"{kind} {share:.0%} ({cuts:.2f} cuts)"
                              for kind, (share, cuts, _) in stability.items())
                  + f"; buckets x{stability['swap'][2]:.2f}", file=sys.stderr)
        print(f"| {shape} (line {line}) | {size:,} ({int(runs[False][0]['aggregates']):,} lows) "
              f"| {statistics.median(fulls):.2f} | {median('model')} | {median('written')} "
              f"| **{median('swapped')}** | **{median('swapped', True)}** "
              f"| {'yes' if same else 'NO'} |")
    return 1 if failed else 0


def main() -> int:
    if sys.argv[1:2] == [QUANTILES]:
        return fwc_with_quantile_cuts(sys.argv[2:])
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--shapes", default="site,groups,interfaces")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--work", type=Path, default=Path.home() / "fwc-patchfloor")
    parser.add_argument("--locality", type=int, metavar="N",
                        help="N random one-line edits per shape: which compile as a splice")
    parser.add_argument("--quantiles", action="store_true",
                        help="with --locality: compile with fwc's former port cut rule")
    parser.add_argument("--traversal", action="store_true",
                        help="rules tested per connection with quantile_cuts and halving_cuts")
    parser.add_argument("--splice", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--split", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.splice:
        print(json.dumps(spliced_compile(args.splice, args.split)))
        return 0
    if args.traversal:
        return run_traversal(args.shapes.split(","), args.work / "traversal")
    if args.locality:
        return run_locality(args.shapes.split(","), args.locality,
                            args.work / ("quantiles" if args.quantiles else "locality"),
                            args.quantiles)
    return run(args.shapes.split(","), args.repeat, args.work)


if __name__ == "__main__":
    sys.exit(main())
