"""The packet-filter commands the drills run on a member themselves, per backend.

Everything the lab installs goes through `fwc install`, whatever the backend. Three
drill steps act on the kernel's packet filter directly, and this table is the only
place that knows how for each backend:

* the reboot drill's power-loss wipe (`Node.wipe`): what a fresh kernel has, no
  rules, every hook accepting (and its count of the rules left, for the report);
* the reboot drill's watcher (`probe.py watch`): a listing of the forward hook per
  family, and what it shows on a wiped node; the rules count as loaded once the
  listing differs from that;
* the routed drill's SNAT exemption (`Lab.prepare_mode`): the drill flow leaves
  the master unchanged although the policy SNATs its segment.

A backend the lab drills is a row here (`PACKET_FILTERS`); `packet_filter` refuses
the others.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from ipaddress import IPv4Address, IPv6Address
from types import MappingProxyType

from fwc.backend.render.nftables import NAT_PRIORITIES
from fwc.model.records import dataclass
from fwc.model.vocabulary import Backend, BuiltinChain

Argv = tuple[str, ...]
# (argv, stdin): one command run in the member
Command = tuple[Argv, str | None]
# Runs ARGV in the member (check=False) and returns its stdout.
Exec = Callable[[Sequence[str]], str]
IPAddress = IPv4Address | IPv6Address

# iptables: the built-in chains of each table, as a fresh kernel has them (ACCEPT).
BUILTIN_CHAINS = {
    "filter": ("INPUT", "FORWARD", "OUTPUT"),
    "nat": ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"),
    "mangle": ("PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"),
    "raw": ("PREROUTING", "OUTPUT"),
    "security": ("INPUT", "FORWARD", "OUTPUT"),
}
IPTABLES_TOOLS = ("iptables", "ip6tables")
# nftables: the lab's own table for the SNAT exemption. fwc's table (`inet fwc`) is
# the installed policy and stays as compiled, so `fwc diff --installed` on a kept lab
# shows no drift.
NFT_LAB_TABLE = "fwc-lab"


@dataclass(frozen=True)
class PacketFilter:
    """What the drills need of one backend's packet filter on a member."""

    backend: Backend
    tools: tuple[str, ...]  # on PATH for the lab (the member runs them)
    wipe: Callable[[Exec], list[Command]]  # from the member's listings: reset to a fresh kernel
    rules_left: Callable[[Exec], int]  # rules still loaded (0 after the wipe)
    forward: Mapping[str, Argv]  # family ("4", "6") -> a listing of its forward hook
    forward_wiped: str  # that listing on a wiped node (stripped)
    exempt: Callable[[IPAddress, IPAddress], tuple[list[Command], list[Command]]]
    # (add, remove): SRC -> DST leaves the member without source NAT


# ------------------------------------------------------------------ iptables
def _iptables_wipe(run: Exec) -> list[Command]:
    """Every table the member has, restored with its built-in chains empty and ACCEPT."""
    out: list[Command] = []
    for tool in IPTABLES_TOOLS:
        tables = run([f"{tool}-save"])
        empty = "".join(
            f"*{table}\n" + "".join(f":{c} ACCEPT [0:0]\n" for c in BUILTIN_CHAINS[table])
            + "COMMIT\n"
            for table in re.findall(r"^\*(\S+)", tables, re.M)
            if table in BUILTIN_CHAINS
        )
        if empty:
            out.append(((f"{tool}-restore",), empty))
    return out


def _iptables_rules(run: Exec) -> int:
    return sum(line.startswith("-A ") for tool in IPTABLES_TOOLS
               for line in run([f"{tool}-save"]).splitlines())


def _iptables_exempt(src: IPAddress, dst: IPAddress) -> tuple[list[Command], list[Command]]:
    # First in nat POSTROUTING: ACCEPT ends the table for the flow before any SNAT rule.
    tool = "iptables" if src.version == 4 else "ip6tables"
    bits = src.max_prefixlen
    rule = ("-s", f"{src}/{bits}", "-d", f"{dst}/{bits}", "-j", "ACCEPT")
    return ([((tool, "-t", "nat", "-I", "POSTROUTING", "1", *rule), None)],
            [((tool, "-t", "nat", "-D", "POSTROUTING", *rule), None)])


# ------------------------------------------------------------------ nftables
def _nft_wipe(run: Exec) -> list[Command]:
    """A fresh kernel has no nftables tables at all: fwc's, the lab's, anyone's."""
    return [(("nft", "flush", "ruleset"), None)]


def _nft_rules(run: Exec) -> int:
    text = run(["nft", "-j", "list", "ruleset"])
    try:
        items = json.loads(text).get("nftables", []) if text.strip() else []
    except (ValueError, AttributeError):
        return -1  # unreadable: never taken for "wiped"
    return sum(1 for item in items if isinstance(item, dict) and "rule" in item)


def _nft_exempt(src: IPAddress, dst: IPAddress) -> tuple[list[Command], list[Command]]:
    # In nftables an `accept` ends only its own table's chain: every nat chain of the
    # hook still runs. The kernel stops at the first nat chain that binds the
    # connection, so a chain of the lab's table just before fwc's srcnat chain binds
    # the flow to its own source: what the iptables exemption's ACCEPT leaves (an
    # identity binding), without touching fwc's table.
    family = "ip" if src.version == 4 else "ip6"
    priority = int(NAT_PRIORITIES[BuiltinChain.POSTROUTING]) - 1
    table = (
        f"table {family} {NFT_LAB_TABLE} {{\n"
        "\tchain snat-exemption {\n"
        f"\t\ttype nat hook postrouting priority {priority}; policy accept;\n"
        f"\t\t{family} saddr {src} {family} daddr {dst} counter snat {family} to {src}\n"
        "\t}\n"
        "}\n"
    )
    return ([(("nft", "-f", "-"), table)],
            [(("nft", "delete", "table", family, NFT_LAB_TABLE), None)])


PACKET_FILTERS: Mapping[Backend, PacketFilter] = MappingProxyType({
    Backend.IPTABLES: PacketFilter(
        Backend.IPTABLES,
        tools=("iptables-restore", "ip6tables-restore", "iptables-save", "ip6tables-save"),
        wipe=_iptables_wipe,
        rules_left=_iptables_rules,
        forward={"4": ("iptables", "-S", "FORWARD"), "6": ("ip6tables", "-S", "FORWARD")},
        forward_wiped="-P FORWARD ACCEPT",
        exempt=_iptables_exempt,
    ),
    # One `inet` table holds both families' chains and `nft -f` loads it in one
    # transaction: every chain of every table is listed, and nothing on a wiped node.
    # Both families' listing is that one command: the watcher runs it once for both.
    Backend.NFTABLES: PacketFilter(
        Backend.NFTABLES,
        tools=("nft",),
        wipe=_nft_wipe,
        rules_left=_nft_rules,
        forward={"4": ("nft", "list", "chains"), "6": ("nft", "list", "chains")},
        forward_wiped="",
        exempt=_nft_exempt,
    ),
})


def packet_filter(backend: Backend) -> PacketFilter | None:
    """BACKEND's row (None: the drills do not know that packet filter)."""
    return PACKET_FILTERS.get(backend)
