"""The `fwc lab` command-line options, importable without the lab itself (fast start-up)."""

from __future__ import annotations

import argparse
from pathlib import Path

from fwc.frontend.sources import add_include_path_argument


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


def add_lab_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "file",
        nargs="?",
        type=Path,
        help="policy file (.fw), or a lab spec (.json) together with --compiled",
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
        help="only the 100ms-advert SNAT failover drill and the control",
    )
    parser.add_argument(
        "--runs",
        type=int,
        default=0,
        metavar="N",
        help="crash the master N times per advert profile (--adverts) and report takeover "
        "and echo gap as min/median/max",
    )
    parser.add_argument(
        "--adverts",
        type=advert_list,
        default=(0.1, 0.05),
        metavar="LIST",
        help="advert profiles for --runs, VRRPv3 (default 100ms,50ms)",
    )
    parser.add_argument(
        "--compiled",
        type=Path,
        metavar="DIR",
        help="use already compiled output DIR/<cluster>/<member>/ instead of compiling",
    )
    parser.add_argument("--logdir", type=Path, help="where daemon and probe logs go")
    parser.add_argument("--cluster", help="which cluster of the policy (default: the first)")
    add_include_path_argument(parser)
    parser.add_argument("--prefix", help="namespace prefix (default fwc<pid>)")
    parser.add_argument(
        "--teardown",
        metavar="PREFIX",
        help="tear down a lab left running by --keep (or a crashed run)",
    )
