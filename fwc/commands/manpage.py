"""The man page fwc(1), generated from the argument parser (the same one `--help` and
shell completion use): docs/fwc.1, shipped in the sdist. tests/test_help.py fails when
the committed page is stale; FWC_UPDATE_GOLDEN=1 rewrites it."""

from __future__ import annotations

import argparse

from fwc import __version__
from fwc.commands.teach import EXAMPLES, subcommands

MAN_PAGE = "docs/fwc.1"


def roff(text: str) -> str:
    """TEXT safe in a roff line: backslashes, hyphens, and a leading dot or quote."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    if text.startswith((".", "'")):
        text = "\\&" + text
    return text


def _option_label(action: argparse.Action) -> str:
    if not action.option_strings:
        return f"\\fI{roff(str(action.metavar or action.dest).upper())}\\fR"
    value = ""
    if action.nargs != 0:
        metavar = action.metavar or (("{" + ",".join(map(str, action.choices)) + "}")
                                     if action.choices else action.dest.upper())
        value = f" \\fI{roff(str(metavar))}\\fR"
    return ", ".join(f"\\fB{roff(s)}\\fR{value}" for s in action.option_strings)


def _usage(parser: argparse.ArgumentParser) -> str:
    usage = parser.format_usage().strip()
    return " ".join(usage.removeprefix("usage: ").split())


def render(parser: argparse.ArgumentParser) -> str:
    out = [
        f'.TH FWC 1 "" "fwc {__version__}" "User Commands"',
        ".SH NAME",
        "fwc \\- policy compiler for highly available Linux firewall clusters",
        ".SH SYNOPSIS",
        ".B fwc",
        "[\\fB\\-\\-version\\fR] \\fICOMMAND\\fR [\\fIOPTIONS\\fR]",
        ".SH DESCRIPTION",
        roff("fwc takes one text policy (*.fw) describing objects, the cluster (members, "
             "interfaces, VIPs, sync link), rules, NAT and expectations, proves it "
             "consistent (fwc check) and compiles it, per node, into iptables or nftables "
             "rules, keepalived and conntrackd configuration, systemd units and sysctl "
             "settings (fwc compile), then installs it with rollback (fwc install)."),
        ".SH COMMANDS",
    ]
    helps: dict[str, str] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help or "" for a in action._choices_actions}
    for name, sub in subcommands(parser).items():
        out += [f".SS {roff('fwc ' + name)}", roff(helps.get(name, "")) + ".", ".PP",
                ".nf", roff(_usage(sub)), ".fi"]
        for action in sub._actions:
            if action.help in (None, argparse.SUPPRESS) or "-h" in action.option_strings:
                continue
            out += [".TP", _option_label(action), roff(" ".join(action.help.split()))]
        if name in EXAMPLES:
            out += [".PP", "Examples:", ".RS", ".nf"]
            for command, what in EXAMPLES[name]:
                out += [roff(command), f"    {roff(what)}"]
            out += [".fi", ".RE"]
    out += [
        ".SH FILES",
        ".TP", "\\fBfwc.toml\\fR",
        roff("Project defaults (output, inventory, ssh, transport, secrets_file, "
             "secrets_env, secrets_command, backend, strict, include_path), found in the "
             "policy's directory or the nearest one above it up to the repository root; "
             "flags override it (docs/project.md)."),
        ".TP", "\\fB/etc/fwc/installed/record\\fR",
        roff("On a node: what fwc install last installed there, from which revision, by "
             "whom and when (fwc status)."),
        ".SH EXIT STATUS",
        roff("0 success (fwc diff: nothing changed), 1 the policy has errors, something "
             "changed or a node failed, 2 usage errors."),
        ".SH SEE ALSO",
        roff("keepalived(8), conntrackd(8), iptables-restore(8), nft(8). The documentation "
             "under docs/: workflow.md, language.md, checks.md, compile.md, ci.md, "
             "project.md, library.md."),
        "",
    ]
    return "\n".join(out)
