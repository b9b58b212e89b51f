"""The `fwc` command line. Sub-commands import their modules lazily (start-up < 0.2 s)."""

from __future__ import annotations

import argparse
import errno
import importlib
import io
import os
import sys
from typing import NoReturn

from fwc import __version__
from fwc.commands.defaults import ProjectParser
from fwc.commands.teach import teach
from fwc.diagnostics import DIAGNOSTIC_FORMATS
from fwc.frontend.sources import add_include_path_argument
from fwc.lab.arguments import add_lab_arguments

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2

# sub-command -> module in fwc.commands providing `run(args) -> int`
COMMANDS = {
    "check": "check", "explain": "explain", "compile": "compile", "lab": "lab",
    "diff": "diff", "fmt": "fmt", "query": "query", "install": "install", "graph": "graph",
    "status": "status", "completion": "completion", "export": "export", "import": "importing",
    "trust": "trust",
}


def add_no_cache_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-cache", action="store_true",
                        help="neither read nor write the result cache (~/.cache/fwc or "
                        "$XDG_CACHE_HOME/fwc)")


def _jobs(text: str) -> int:
    from fwc.parallel import parse_jobs

    try:
        return parse_jobs(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not 'auto' or a count of at least 1") \
            from None


def add_jobs_argument(parser: argparse.ArgumentParser, worker: str = "for the checks",
                      rules: str = "1,000 to 105,000 rules") -> None:
    parser.add_argument("--jobs", type=_jobs, default=None, metavar="N",
                        help=f"processes to use: 1 runs everything in this one; 2 forks a "
                        f"worker {worker}; auto (default, or FWC_JOBS) forks for {rules} "
                        "when two CPUs are usable")


def build_parser() -> argparse.ArgumentParser:
    parser = ProjectParser(
        prog="fwc", description="Compile and check policies for HA Linux firewall clusters.")
    parser.add_argument("--version", action="version", version=f"fwc {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND",
                                parser_class=argparse.ArgumentParser)

    p = sub.add_parser("check", help="parse, resolve and check policies")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("--strict", action=argparse.BooleanOptionalAction, default=None,
                   help="warnings fail too (default: `strict` in fwc.toml, else off)")
    p.add_argument("--format", choices=DIAGNOSTIC_FORMATS, default="text")
    add_no_cache_argument(p)
    add_jobs_argument(p)
    add_include_path_argument(p)

    p = sub.add_parser("explain", help="print the rationale of a diagnostic code")
    p.add_argument("code", nargs="?", help="e.g. FWC201; without it, list every code")

    p = sub.add_parser("compile", help="write per-node iptables, keepalived, conntrackd files")
    p.add_argument("file", metavar="FILE")
    p.add_argument("-o", "--output", default=None, metavar="DIR",
                   help="output directory (default: ./output, or `output` in fwc.toml)")
    p.add_argument("--redact-secrets", action="store_true",
                   help="write a placeholder instead of VRRP passwords (for committed trees)")
    p.add_argument("--force", action="store_true",
                   help="write into an output directory that holds files fwc did not write")
    p.add_argument("--backend", choices=("iptables", "nftables"), default=None,
                   help="packet filter to write rules for (overrides the policy's `backend`)")
    p.add_argument("--strict", action=argparse.BooleanOptionalAction, default=None,
                   help="warnings fail too (default: `strict` in fwc.toml, else off)")
    p.add_argument("--format", choices=DIAGNOSTIC_FORMATS, default="text")
    add_no_cache_argument(p)
    add_jobs_argument(p)
    add_include_path_argument(p)

    p = sub.add_parser("lab", help="bring the compiled cluster up in namespaces and test it")
    add_lab_arguments(p)

    p = sub.add_parser("diff", help="what a change does: semantic summary and file diff")
    p.add_argument("args", nargs="*", metavar="[REV] [FILE...]")
    p.add_argument("--stat", action="store_true")
    p.add_argument("--name-only", action="store_true")
    p.add_argument("--exact", action="store_true",
                   help="the byte-exact patch: also the rule lines that differ only in the "
                        "policy line or rule number they name (left out and counted by "
                        "default: an inserted rule renumbers every rule below it)")
    p.add_argument("--format", choices=("text", "json"), default="text",
                   help="json: the semantic summary and the list of changed files as one "
                        "JSON object on stdout (no patch)")
    color = p.add_mutually_exclusive_group()
    color.add_argument("--color", dest="color", action="store_true", default=None)
    color.add_argument("--no-color", dest="color", action="store_false",
                       help="never colour the output")
    p.add_argument("--installed", metavar="MEMBER",
                   help="compare what runs on MEMBER with the compiled output")
    p.add_argument("--transport", choices=("ssh", "local", "netns"), default=None,
                   help="how --installed reaches the node (as for install)")
    p.add_argument("--ssh", default=None, metavar="CMD",
                   help="ssh command to use (default: ssh, or `ssh` in fwc.toml)")
    p.add_argument("--inventory", metavar="FILE", help="member -> host file")
    add_secrets_arguments(p, "with --installed: the secrets install was given")
    add_include_path_argument(p)
    # fwc.toml's `backend` (no flag): --installed compiles for what `fwc compile` wrote
    p.set_defaults(backend=None)
    add_jobs_argument(p, "for the checks of both sides, then for reading the compiled files",
                      "1,000 to 50,000 rules in both sides together")

    p = sub.add_parser("fmt", help="canonical layout of *.fw files")
    p.add_argument("files", nargs="+", metavar="FILE",
                   help="policy files to format; '-' reads standard input and writes the "
                        "result to standard output")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true",
                      help="write nothing; list the files that would change and exit 1 if any")
    mode.add_argument("--diff", action="store_true",
                      help="write nothing; print a unified diff of what would change and "
                           "exit 1 if anything would")

    p = sub.add_parser("query", help="what happens to a packet, per member")
    p.add_argument("file", metavar="FILE")
    p.add_argument("--from", dest="source", required=True, metavar="ADDR")
    p.add_argument("--to", dest="destination", required=True, metavar="ADDR")
    p.add_argument("--service", metavar="SVC", help="e.g. tcp/5001, udp/53, icmp/echo-request")
    p.add_argument("--in", dest="in_interface", metavar="IFACE")
    p.add_argument("--out", dest="out_interface", metavar="IFACE")
    p.add_argument("--format", choices=("text", "json"), default="text")
    add_include_path_argument(p)

    p = sub.add_parser("graph", help="draw the clusters' topology (Graphviz DOT or SVG)")
    p.add_argument("file", metavar="FILE")
    p.add_argument("-o", "--output", default=None, metavar="FILE",
                   help="write here instead of stdout (.svg: SVG by Graphviz's dot)")
    p.add_argument("--format", choices=("dot", "svg"), default=None,
                   help="dot or svg (default: svg for an -o ending in .svg, else dot)")
    add_include_path_argument(p)

    p = sub.add_parser("install", help="push a compiled cluster to its nodes, with rollback")
    p.add_argument("file", metavar="FILE")
    who = p.add_mutually_exclusive_group()
    who.add_argument("--member", metavar="M")
    who.add_argument("--all", action="store_true")
    p.add_argument("--dry-run", action="store_true", help="print every command instead")
    p.add_argument("--format", choices=("text", "json"), default="text",
                   help="with --dry-run: json prints the plan (order, files, every command) "
                        "as one JSON object")
    p.add_argument("--transport", choices=("ssh", "local", "netns"), default=None)
    p.add_argument("--ssh", default=None, metavar="CMD",
                   help="ssh command to use (default: ssh, or `ssh` in fwc.toml)")
    p.add_argument("--inventory", metavar="FILE", help="member -> host file")
    p.add_argument("--confirm-timeout", type=float, default=60.0, metavar="SECONDS")
    p.add_argument("--confirm", action="store_true",
                   help="confirm non-interactively (for automation)")
    add_secrets_arguments(p, "fill redacted secrets")
    p.add_argument("-o", "--output", default=None, metavar="DIR",
                   help="output directory (default: ./output, or `output` in fwc.toml)")
    add_include_path_argument(p)

    p = sub.add_parser("export", help="the compiled clusters of FILEs for another engine")
    p.add_argument("format", choices=("ansible",), help="ansible: inventory, role, playbook")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("-o", "--output", required=True, metavar="DIR")
    p.add_argument("--redact-secrets", action="store_true",
                   help="leave VRRP passwords out; the role takes fwc_vrrp_password")
    p.add_argument("--inventory", metavar="FILE",
                   help="MEMBER TARGET [port= python= netns= mount=] lines (as for install)")
    p.add_argument("--strict", action="store_true", help="warnings fail too")
    add_include_path_argument(p)

    p = sub.add_parser("import", help="an existing ruleset as an fwc policy")
    p.add_argument("format", choices=("iptables-save",))
    p.add_argument("file", metavar="FILE", help="iptables-save output ('-': stdin)")
    p.add_argument("--cluster", default="imported", metavar="NAME",
                   help="name of the cluster (and policy) the import writes")
    p.add_argument("-o", "--output", metavar="FILE", help="write the policy here (default: stdout)")
    p.add_argument("--verify", action="store_true",
                   help="compare the original and the compiled rulesets packet class by class")

    add_toolbelt_commands(sub, parser)
    return teach(parser)


def add_toolbelt_commands(sub: argparse._SubParsersAction, parser: argparse.ArgumentParser) \
        -> None:
    """`fwc status` and `fwc completion` (issue 17)."""
    p = sub.add_parser("status", help="what each node runs: its install record")
    p.add_argument("file", metavar="FILE", help="the policy whose nodes are asked")
    p.add_argument("--member", metavar="M", help="ask this member only (default: every one)")
    p.add_argument("--transport", choices=("ssh", "local", "netns"), default=None,
                   help="how nodes are reached (as for install)")
    p.add_argument("--ssh", default=None, metavar="CMD",
                   help="ssh command to use (default: ssh, or `ssh` in fwc.toml)")
    p.add_argument("--inventory", metavar="FILE", help="member -> host file")
    p.add_argument("-o", "--output", default=None, metavar="DIR",
                   help="compiled output to compare with (default: ./output, or `output` "
                        "in fwc.toml)")
    p.add_argument("--format", choices=("text", "json"), default="text",
                   help="text, or json (one object: per node its record)")
    add_include_path_argument(p)

    p = sub.add_parser("trust", help="let fwc run the commands fwc.toml names (ssh, "
                       "secrets_command, transport)")
    p.add_argument("file", nargs="?", metavar="FILE",
                   help="the fwc.toml, or a policy or directory it applies to (default: the "
                        "working directory)")

    p = sub.add_parser("completion", help="print a shell completion script")
    p.add_argument("shell", nargs="?", choices=("bash", "zsh", "fish"),
                   help="the shell to complete for")
    p.add_argument("--members", metavar="FILE", help=argparse.SUPPRESS)
    p.set_defaults(root_parser=parser)


def add_secrets_arguments(parser: argparse.ArgumentParser, what: str) -> None:
    """--secrets FILE | --secrets-env VAR | --secrets-command CMD (docs/project.md)."""
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--secrets", metavar="FILE",
                        help=f"{what} from FILE ('vrrp_password = ...' lines)")
    source.add_argument("--secrets-env", metavar="VAR",
                        help=f"{what} from the environment variable VAR (the password, or "
                             "KEY = VALUE lines)")
    source.add_argument("--secrets-command", metavar="CMD",
                        help=f"{what} from what CMD prints, e.g. 'pass show fwc/edge' (its "
                             "first line is the password, or KEY = VALUE lines)")


def main(argv: list[str] | None = None, kept: list[object] | None = None) -> int:
    """Run the command ARGV (default: sys.argv) and return its exit code.

    KEPT: where the command puts what it built (fwc.commands.common.keep_until_exit)
    when the caller ends the process right after without freeing it (`console`); None
    (tests, any in-process caller): everything is freed when the command returns.
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on usage errors, 0 for --help/--version
        return int(exc.code or 0)
    args.kept_until_exit = kept
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        os.getcwd()  # every command resolves paths against it
    except FileNotFoundError:
        # (after `fwc compile -o .`, the shell is in the old, swapped-out directory)
        print("fwc: the current directory no longer exists (it was removed or replaced): "
              "cd into it again", file=sys.stderr)
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
        if isinstance(sys.stdout, ClosedOutput):  # no reader that went away: say it
            print("fwc: standard output is closed: what the command prints is lost",
                  file=sys.stderr)
        return EXIT_FAIL


class ClosedOutput(io.TextIOBase):
    """sys.stdout of a process started without one (`fwc graph x.fw >&-`), which Python
    leaves None: the command's first write, or the flush at the end, was an
    AttributeError traceback. Writing fails as into a pipe nobody reads (exit 1, see
    `main`, or the command's own "cannot write"); a command with nothing to print
    succeeds."""

    def write(self, text: str) -> int:
        raise BrokenPipeError(errno.EBADF, "standard output is closed")


class ClosedInput(io.TextIOBase):
    """sys.stdin of a process started without one (`fwc fmt - <&-`), which Python leaves
    None: reading it (fmt -, import -) or asking whether it is a terminal (install) was
    an AttributeError traceback. Reading fails as a closed descriptor does."""

    @property
    def buffer(self) -> ClosedInput:  # what `sys.stdin.buffer.read()` reads
        return self

    def read(self, size: int | None = -1) -> str:
        raise OSError(errno.EBADF, "standard input is closed")


def console() -> NoReturn:
    """The `fwc` command and `python -m fwc`: `main`, then the process ends at once.

    A compile of a large policy ends with millions of objects alive (model, lowered
    rulesets, check results): freeing them one by one when the command returns, and
    then tearing the interpreter down, took about 0.3 s of a 3 s compile (issue 12).
    The command hands them to KEPT instead and this function leaves with `os._exit`,
    the operating system reclaiming the memory at once. That is safe because by then
    everything a command writes is closed: output files are written, closed and renamed
    (fwc.backend.output), cache entries committed or removed (fwc.cache), a worker
    process reaped (fwc.parallel), the progress line cleared; fwc registers no `atexit`
    handler and no finaliser (the one its imports add is `logging.shutdown`, through
    lark, whose only handler writes to stderr). What stays is Python's own buffered
    stdout and stderr, flushed here. When that flush fails (a reader that went away:
    `fwc check big.fw | head`), the process takes the ordinary way out, whose messages
    and exit status (120) are Python's, as before.
    """
    kept: list[object] = []
    if sys.stdout is None:
        sys.stdout = ClosedOutput()
    if sys.stdin is None:
        sys.stdin = ClosedInput()
    try:
        code = main(kept=kept)
    except KeyboardInterrupt:  # before the command ran (parsing, fwc.toml, imports)
        print("fwc: interrupted", file=sys.stderr)
        code = 130
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):  # a broken pipe, a closed stream: Python says it
        sys.exit(code)
    os._exit(code)
