"""The `fwc lab` command-line options, importable without the lab itself (fast start-up)."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from fwc.frontend.sources import add_include_path_argument

# A lab's namespaces are PREFIX-<name> and its state is /run/fwc-lab/PREFIX (removed whole
# by a teardown): nothing but this form may reach either.
PREFIX_RE = re.compile(r"fwc[0-9a-z]{1,12}")


def lab_prefix(text: str) -> str:
    """`--teardown PREFIX`, checked before anything runs (`--teardown /` was a traceback)."""
    if not PREFIX_RE.fullmatch(text):
        raise argparse.ArgumentTypeError(f"invalid lab prefix {text!r} (expected fwc and "
                                         "1 to 12 lower-case letters or digits, e.g. fwc1)")
    return text


def run_prefix(text: str) -> str:
    """`--prefix PREFIX`: one character shorter than a teardown's, as the uplink drill
    runs under PREFIXu. (A bad prefix was a traceback after the policy was compiled and
    a log directory made; a 12-character one failed the uplink drill after the drills.)"""
    if not PREFIX_RE.fullmatch(text + "u"):
        raise argparse.ArgumentTypeError(f"invalid lab prefix {text!r} (expected fwc and "
                                         "1 to 11 lower-case letters or digits, e.g. fwc1)")
    return text


def advert_list(text: str) -> tuple[float, ...]:
    """`100ms,50ms,1s` -> (0.1, 0.05, 1.0): VRRPv3 advert profiles in seconds."""
    out = []
    for word in text.split(","):
        word = word.strip()
        try:
            seconds = float(word[:-2]) / 1000 if word.endswith("ms") else \
                float(word.removesuffix("s"))
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a duration: {word!r}") from None
        if not 0.01 <= seconds <= 40.95:
            raise argparse.ArgumentTypeError(f"{word}: VRRPv3 adverts are 10ms-40.95s")
        out.append(round(seconds, 3))
    return tuple(out)


def rto_min(text: str) -> int:
    """`50ms` -> 50: iproute2's rto_min for the test hosts' routes, 1-200 ms."""
    word = text.strip()
    if not word.endswith("ms") or not word[:-2].isdigit() or not 1 <= int(word[:-2]) <= 200:
        raise argparse.ArgumentTypeError(f"{text}: give milliseconds 1ms-200ms, e.g. 50ms")
    return int(word[:-2])


def add_lab_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "file",
        nargs="?",
        type=Path,
        help="policy file (.fw)",
    )
    parser.add_argument(
        "--json",
        dest="json_out",
        type=Path,
        metavar="OUT",
        help="write the machine-readable report to OUT",
    )
    parser.add_argument(
        "--keep",
        action="store_true",
        help="leave the lab running afterwards (prints the teardown command)",
    )
    parser.add_argument(
        "--remap",
        action="store_true",
        help="map non-documentation subnets onto documentation ranges",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="one failover drill (SNAT if the policy has one) and the control; no reboot drill",
    )
    parser.add_argument(
        "--runs",
        type=int,
        default=0,
        metavar="N",
        help="crash the master (active-active: each member in turn) N times per advert "
        "profile (--adverts) and report takeover and echo gap as min/median/max",
    )
    parser.add_argument(
        "--adverts",
        type=advert_list,
        default=(0.1, 0.05),
        metavar="LIST",
        help="advert profiles for --runs (default 100ms,50ms): each a variant of the "
        "policy with `vrrp { advert X version 3 }`, checked, compiled and installed like "
        "the policy; refused when the policy does not check that way (e.g. a password)",
    )
    parser.add_argument(
        "--rto-min",
        type=rto_min,
        default=None,
        metavar="DURATION",
        help="the test hosts' routes get `rto_min DURATION` (e.g. 50ms): the probe "
        "connections retransmit sooner than Linux's 200 ms minimum, so the echo gap "
        "shows the firewall's failover more than the client's TCP backoff (docs/lab.md)",
    )
    parser.add_argument(
        "--compiled",
        type=Path,
        metavar="DIR",
        help="install the `fwc compile -o DIR` output (verified against its MANIFEST) "
        "instead of compiling in-process",
    )
    parser.add_argument(
        "--backend",
        choices=("iptables", "nftables"),  # fwc.model.vocabulary.Backend, as fwc compile's
        default=None,
        help="packet filter to compile and drill the cluster for (overrides the policy's "
        "`backend`, as with fwc compile; with --compiled the tree's must match)",
    )
    parser.add_argument(
        "--run-policy-commands",
        action="store_true",
        help="run the policy's track scripts and notify actions (as root, on this machine); "
        "without it /bin/true stands in for each and the report says so",
    )
    parser.add_argument("--logdir", type=Path, help="where daemon and probe logs go")
    parser.add_argument("--cluster", help="which cluster of the policy (default: the first)")
    add_include_path_argument(parser)
    parser.add_argument("--prefix", type=run_prefix, help="namespace prefix (default fwc<pid>)")
    parser.add_argument(
        "--teardown",
        type=lab_prefix,
        metavar="PREFIX",
        help="tear down a lab left running by --keep (or a crashed run)",
    )
