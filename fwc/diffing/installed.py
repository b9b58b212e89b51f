"""`fwc diff --installed MEMBER FILE`: does the node run what the policy compiles to?

Compares, normalised, the node's live rulesets (iptables-save / ip6tables-save,
or for `backend nftables` only fwc's own table, `nft list table inet fwc`) and
its installed files (keepalived, conntrackd, notify hook, sysctl, ipsets) with
a fresh compile of FILE. Exit 1 on drift, 0 when they agree.

iptables-save prints rules in its own canonical form (`-m tcp`, `/32`,
option order), so the compiled ruleset is put in that form by the node's own
iptables: restored and saved in a throwaway network namespace (`unshare -n`).
The nftables table is put in `nft list` form the same way: the compiled file is
loaded into a throwaway namespace and listed there by the node's own nft, so
both sides are printed by one program; other tables on the node are not
fwc's and never drift. Counters, comments-only lines and tables nobody loaded are ignored; VRRP
passwords are never printed: both sides show `"(secret)"` where the node holds
the password the policy (or `--secrets FILE`, as for install) gives, and the
node's side shows `"(secret: not the compiled one)"` where it holds another.
"""

from __future__ import annotations

import argparse
import difflib
import ipaddress
import re
import shlex
import sys
from collections.abc import Collection
from pathlib import Path

from fwc.backend.files import BY_NAME, FILES, Reload, kernel_guard, rules_file
from fwc.backend.manifest import mask_secrets as _mask
from fwc.backend.manifest import secret_values
from fwc.diffing.colour import Palette, wants_colour
from fwc.diffing.rulesets import normalised
from fwc.install.record import describe, parse_record, read_command
from fwc.install.scripts import NFT_TABLE, nft_list_table
from fwc.install.secrets import SecretsError, fill, read_secret_source
from fwc.install.transport import (
    InventoryError,
    Transport,
    TransportError,
    make_transport,
    read_inventory,
)
from fwc.model.vocabulary import Backend
from fwc.pipeline import clean_policy

EXIT_SAME, EXIT_DRIFT, EXIT_USAGE = 0, 1, 2
# (file, save, restore) of every iptables ruleset the node runs: compared live, not
# as a file. An nftables cluster's ruleset is fwc's table (NFT_RULESET), listed live.
RULESETS = tuple((f.name, f.loader.replace("-restore", "-save"), f.loader)
                 for f in FILES if f.reload is Reload.RULES and f.loader
                 and f.backend is Backend.IPTABLES)
NFT_RULESET = rules_file(Backend.NFTABLES).name
_NFT_COUNTER = re.compile(r"\bcounter packets \d+ bytes \d+")
OTHER_SECRET = "(secret: not the compiled one)"


def mask_secrets(text: str, known: tuple[str, ...] = ()) -> str:
    """TEXT without its secrets; one that is not in KNOWN is marked as different."""
    return _mask(text, known, other=OTHER_SECRET if known else "(secret)")


class Usage(Exception):
    pass


def run_installed(args: argparse.Namespace) -> int:
    try:
        return _run(args)
    except (Usage, InventoryError, SecretsError) as exc:
        print(f"fwc diff --installed: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except TransportError as exc:
        print(f"fwc diff --installed: {exc}", file=sys.stderr)
        return EXIT_USAGE


def _run(args: argparse.Namespace) -> int:
    if len(args.args) != 1:
        raise Usage("give exactly one policy FILE")
    path = args.args[0]
    if not Path(path).is_file():
        raise Usage(f"cannot read '{path}'")
    policy = clean_policy(path, args.include_path)
    if policy is None:
        raise Usage(f"{path} does not check clean")
    cluster = next((c for c in policy.clusters if c.member(args.installed)), None)
    if cluster is None:
        raise Usage(f"no member '{args.installed}' in {path}")
    member = cluster.member(args.installed)
    assert member is not None
    inventory = read_inventory(Path(args.inventory)) if args.inventory else {}
    transport = make_transport(args.transport, member.name, ssh_target=member.ssh,
                               inventory=inventory, ssh=args.ssh)
    from fwc.backend.output import compile_policy

    # The passwords install would have written: the policy's, or the --secrets* source's.
    secrets = read_secret_source(args.secrets, getattr(args, "secrets_env", None),
                                 getattr(args, "secrets_command", None))
    # What `fwc compile` wrote and install loaded: fwc.toml's backend wins over the policy's.
    backend = Backend(args.backend) if getattr(args, "backend", None) else None
    compiled = {}
    for output in compile_policy(policy, redact=secrets is not None, backend=backend):
        if output.name == cluster.name:
            prefix = f"{member.name}/"
            compiled = {f.path[len(prefix):]: fill(cluster.name, f.path[len(prefix):],
                                                   f.content.decode("utf-8"), secrets)
                        for f in output.files if f.path.startswith(prefix)}
    palette = Palette(wants_colour(args.color, sys.stdout))
    sys.stdout.write(installed_by(transport) + "\n")
    drift = compare(transport, compiled, backend or cluster.backend, cluster.families)
    for title, lines in drift:
        sys.stdout.write(palette.bold(f"drift: {title}") + "\n")
        for line in lines:
            paint = palette.green if line.startswith("+") and not line.startswith("+++") \
                else palette.red if line.startswith("-") and not line.startswith("---") \
                else palette.cyan if line.startswith("@@") else str
            sys.stdout.write(paint(line) + "\n")
    if not drift:
        print(f"{member.name}: runs what {path} compiles to")
    return EXIT_DRIFT if drift else EXIT_SAME


def installed_by(transport: Transport) -> str:
    """One line from the node's install record (fwc.install.record): who installed what."""
    result = transport.run(read_command(), timeout=30)
    record = parse_record(result.stdout) if result.ok else None
    if record is None:
        return f"{transport.member}: no install record on the node"
    return f"{transport.member}: {describe(record)}"


def compare(transport: Transport, compiled: dict[str, str],
            backend: Backend = Backend.IPTABLES,
            families: Collection[int] = (4, 6)) -> list[tuple[str, list[str]]]:
    """[(what drifted, unified diff lines compiled -> node)].

    BACKEND: the packet filter COMPILED is written for; with nftables only fwc's
    table is compared, never the node's iptables or other nftables tables. FAMILIES:
    the cluster's (`Cluster.families`): a ruleset the node loads only where its kernel
    has the family (`kernel_guard`) is not compared on a node whose kernel lacks it.
    """
    out: list[tuple[str, list[str]]] = []
    if backend is Backend.NFTABLES:
        expected, how = nft_canonical(transport, compiled.get(NFT_RULESET, ""))
        live = nft_normalised(node_output(transport, nft_list_table()))
        lines = _udiff(expected, live, f"compiled/{NFT_RULESET}{how}",
                       f"nft list table {NFT_TABLE} on node")
        if lines:
            out.append((f"live nftables table {NFT_TABLE}", lines))
    for name, save, restore in RULESETS if backend is Backend.IPTABLES else ():
        kernel = kernel_guard(BY_NAME[name], families)
        if kernel is not None and not transport.run(f"[ -d {kernel} ]", timeout=30).ok:
            continue  # (the boot script and install skip it there too)
        expected = canonical(transport, compiled.get(name, ""), save, restore,
                             compiled.get("ipsets.rules", ""))
        live = node_output(transport, f"{save} 2>/dev/null || :")
        lines = _udiff(expected, normalised(live), f"compiled/{name}", f"{save} on node")
        if lines:
            out.append((f"live {save.split('-')[0]} rules", lines))
    for file in FILES:
        name = file.name
        if file.reload is Reload.RULES:
            continue
        want = compiled.get(name)
        have = node_output(transport, f"cat {file.path} 2>/dev/null || echo '(fwc: absent)'")
        if want is None and have.strip() == "(fwc: absent)":
            continue
        known = tuple(secret_values(name, want or ""))
        want_lines = mask_secrets(want, known).splitlines() if want is not None \
            else ["(fwc: absent)"]
        lines = _udiff(want_lines, mask_secrets(have, known).splitlines(), f"compiled/{name}",
                       f"node:{file.path}")
        if lines:
            out.append((file.path, lines))
    sets = set_members(compiled.get("ipsets.rules", ""))
    if sets:
        live = node_output(transport, "ipset save 2>/dev/null || :")
        lines = _udiff(set_lines(sets), set_lines(set_members(live, only=set(sets))),
                       "compiled/ipsets.rules", "ipset save on node")
        if lines:
            out.append(("live ipsets", lines))
    return out


def set_members(text: str, only: set[str] | None = None) -> dict[str, set[str]]:
    """{set: members} from ipset restore/save text; `NAME.new` (the swap copy) is NAME."""
    members: dict[str, set[str]] = {}
    for line in text.splitlines():
        words = line.split()
        if len(words) < 2 or words[0] not in ("create", "add"):
            continue
        name = words[1].removesuffix(".new")
        if only is not None and name not in only:
            continue
        entries = members.setdefault(name, set())
        if words[0] == "add" and len(words) >= 3:
            try:
                entries.add(str(ipaddress.ip_network(words[2], strict=False)))
            except ValueError:
                entries.add(words[2])
    return members


def set_lines(members: dict[str, set[str]]) -> list[str]:
    return [f"{name} {entry}" for name in sorted(members) for entry in sorted(members[name])]


SPLIT = "# fwc-split"


def canonical(transport: Transport, rules: str, save: str, restore: str,
              ipsets: str = "") -> list[str]:
    """The compiled ruleset as the node's iptables-save would print it.

    Rules naming a set only load where the set exists, so the compiled sets go
    into the throwaway namespace first; both travel on stdin (a set can be
    too large for a command line).
    """
    if not rules.strip():
        return []
    script = (
        'd=$(mktemp -d) && trap \'rm -rf "$d"\' EXIT && touch "$d/sets" "$d/rules" && '
        f'awk -v d="$d" \'$0 == "{SPLIT}" {{ f = 1; next }} '
        '{ print > (d (f ? "/rules" : "/sets")) }\' && '
        f'{{ [ ! -s "$d/sets" ] || ipset restore < "$d/sets"; }} && '
        f'{restore} < "$d/rules" && {save}')
    payload = f"{ipsets}\n{SPLIT}\n{rules}"
    result = transport.run(f"unshare -n sh -c {shlex.quote(script)}", input=payload,
                           timeout=60)
    if result.ok and result.stdout.strip():
        return normalised(result.stdout)
    # No unshare on the node (or no privileges): compare the text as compiled.
    return normalised(rules)


def nft_normalised(text: str) -> list[str]:
    """`nft list table` text without counter values and blank lines."""
    return [_NFT_COUNTER.sub("counter", line.rstrip()) for line in text.splitlines()
            if line.strip()]


def nft_canonical(transport: Transport, rules: str) -> tuple[list[str], str]:
    """The compiled table as the node's nft lists it, and a note on how it was made.

    Loaded into a throwaway network namespace (`unshare -n`), which has no
    tables of its own, and listed there; the file travels on stdin.
    """
    if not rules.strip():
        return [], ""
    script = f"nft -f - && nft list table {NFT_TABLE}"
    result = transport.run(f"unshare -n sh -c {shlex.quote(script)}", input=rules, timeout=60)
    if result.ok and result.stdout.strip():
        return nft_normalised(result.stdout), ""
    # No unshare on the node (or no privileges): the text as compiled, which nft
    # prints differently; the diff then shows the format too.
    return nft_normalised(rules), " (as written: unshare -n failed on the node)"


def node_output(transport: Transport, command: str) -> str:
    result = transport.run(command, timeout=60)
    if not result.ok:
        raise TransportError(f"{transport.member}: {command.split()[0]} failed: "
                             f"{result.reason()}")
    return result.stdout


def _udiff(expected: list[str], actual: list[str], a: str, b: str) -> list[str]:
    return list(difflib.unified_diff(expected, actual, a, b, lineterm=""))
