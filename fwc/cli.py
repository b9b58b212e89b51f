"""The `fwc` command line. Sub-commands import their modules lazily (start-up < 0.2 s)."""

from __future__ import annotations

import argparse
import importlib
import sys

from fwc import __version__
from fwc.frontend.sources import add_include_path_argument
from fwc.lab.arguments import add_lab_arguments

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2

# sub-command -> module in fwc.commands providing `run(args) -> int`
COMMANDS = {
    "check": "check", "explain": "explain", "compile": "compile", "lab": "lab",
    "diff": "diff", "fmt": "fmt", "query": "query", "install": "install",
}


def add_no_cache_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-cache", action="store_true",
                        help="neither read nor write the result cache (~/.cache/fwc or "
                        "$XDG_CACHE_HOME/fwc)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fwc", description="Compile and check policies for HA Linux firewall clusters.")
    parser.add_argument("--version", action="version", version=f"fwc {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("check", help="parse, resolve and check policies")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("--strict", action="store_true", help="warnings fail too")
    p.add_argument("--format", choices=("text", "json"), default="text")
    add_no_cache_argument(p)
    add_include_path_argument(p)

    p = sub.add_parser("explain", help="print the rationale of a diagnostic code")
    p.add_argument("code", nargs="?", help="e.g. FWC201; without it, list every code")

    p = sub.add_parser("compile", help="write per-node iptables, keepalived, conntrackd files")
    p.add_argument("file", metavar="FILE")
    p.add_argument("-o", "--output", default="output", metavar="DIR")
    p.add_argument("--redact-secrets", action="store_true",
                   help="write a placeholder instead of VRRP passwords (for committed trees)")
    p.add_argument("--force", action="store_true",
                   help="write into an output directory that holds files fwc did not write")
    p.add_argument("--backend", choices=("iptables", "nftables"), default=None,
                   help="packet filter to write rules for (overrides the policy's `backend`)")
    p.add_argument("--strict", action="store_true", help="warnings fail too")
    p.add_argument("--format", choices=("text", "json"), default="text")
    add_no_cache_argument(p)
    add_include_path_argument(p)

    p = sub.add_parser("lab", help="bring the compiled cluster up in namespaces and test it")
    add_lab_arguments(p)

    p = sub.add_parser("diff", help="what a change does: semantic summary and file diff")
    p.add_argument("args", nargs="*", metavar="[REV] [FILE...]")
    p.add_argument("--stat", action="store_true")
    p.add_argument("--name-only", action="store_true")
    color = p.add_mutually_exclusive_group()
    color.add_argument("--color", dest="color", action="store_true", default=None)
    color.add_argument("--no-color", dest="color", action="store_false")
    p.add_argument("--installed", metavar="MEMBER",
                   help="compare what runs on MEMBER with the compiled output")
    p.add_argument("--transport", choices=("ssh", "local", "netns"), default="ssh",
                   help="how --installed reaches the node (as for install)")
    p.add_argument("--ssh", default="ssh", metavar="CMD", help="ssh command to use")
    p.add_argument("--inventory", metavar="FILE", help="member -> host file")
    p.add_argument("--secrets", metavar="FILE",
                   help="with --installed: the secrets file install was given")
    add_include_path_argument(p)

    p = sub.add_parser("fmt", help="canonical layout of *.fw files")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("--check", action="store_true", help="exit 1 and list files that would change")

    p = sub.add_parser("query", help="what happens to a packet, per member")
    p.add_argument("file", metavar="FILE")
    p.add_argument("--from", dest="source", required=True, metavar="ADDR")
    p.add_argument("--to", dest="destination", required=True, metavar="ADDR")
    p.add_argument("--service", metavar="SVC", help="e.g. tcp/5001, udp/53, icmp/echo-request")
    p.add_argument("--in", dest="in_interface", metavar="IFACE")
    p.add_argument("--out", dest="out_interface", metavar="IFACE")
    p.add_argument("--format", choices=("text", "json"), default="text")
    add_include_path_argument(p)

    p = sub.add_parser("install", help="push a compiled cluster to its nodes, with rollback")
    p.add_argument("file", metavar="FILE")
    who = p.add_mutually_exclusive_group()
    who.add_argument("--member", metavar="M")
    who.add_argument("--all", action="store_true")
    p.add_argument("--dry-run", action="store_true", help="print every command instead")
    p.add_argument("--transport", choices=("ssh", "local", "netns"), default="ssh")
    p.add_argument("--ssh", default="ssh", metavar="CMD", help="ssh command to use")
    p.add_argument("--inventory", metavar="FILE", help="member -> host file")
    p.add_argument("--confirm-timeout", type=float, default=60.0, metavar="SECONDS")
    p.add_argument("--confirm", action="store_true",
                   help="confirm non-interactively (for automation)")
    p.add_argument("--secrets", metavar="FILE", help="fill redacted secrets from FILE")
    p.add_argument("-o", "--output", default="output", metavar="DIR")
    add_include_path_argument(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on usage errors, 0 for --help/--version
        return int(exc.code or 0)
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        module = importlib.import_module(f"fwc.commands.{COMMANDS[args.command]}")
    except ModuleNotFoundError as exc:
        if exc.name != f"fwc.commands.{COMMANDS[args.command]}":
            raise
        print(f"fwc: '{args.command}' is not available in this build", file=sys.stderr)
        return EXIT_USAGE
    try:
        return int(module.run(args))
    except KeyboardInterrupt:
        print("fwc: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return EXIT_FAIL
