"""Help that teaches: help text for every option, and examples at the end of every
sub-command's `--help` (used by fwc/cli.py, the man page and shell completion).

One function, `teach(parser)`, applied to the finished parser, so that the argument
definitions in fwc/cli.py stay as they are: it fills the help of any option declared
without one from OPTION_HELP and appends EXAMPLES to each sub-command's epilog.
tests/test_help.py fails when an option has no help or a sub-command no examples.
"""

from __future__ import annotations

import argparse

# (sub-command, option dest) -> help, for options fwc/cli.py declares without one
OPTION_HELP: dict[tuple[str, str], str] = {
    ("check", "files"): "policy files to check (each with everything it includes)",
    ("check", "format"): "text (compiler style, stderr), json, sarif (SARIF 2.1.0 for code "
                         "scanning) or github (workflow annotations) on stdout",
    ("compile", "file"): "the policy file to compile",
    ("compile", "format"): "how diagnostics are printed: text, json, sarif or github",
    ("diff", "args"): "a revision (REV, A..B; default HEAD against the working tree) and "
                      "the policies to compare (default: every changed top-level policy)",
    ("diff", "stat"): "a diffstat of the generated files instead of the patch",
    ("diff", "name_only"): "only the names of the generated files that change",
    ("diff", "color"): "colour the output (default: only on a terminal)",
    ("query", "file"): "the policy file to ask",
    ("query", "source"): "source: addresses, networks, ranges, objects, IFACE.vip, any, "
                         "firewall (comma-separated, ! negates)",
    ("query", "destination"): "destination, written like --from",
    ("query", "in_interface"): "the interface the traffic arrives on (default: by address)",
    ("query", "out_interface"): "the interface the traffic leaves by (default: by address)",
    ("query", "format"): "text, or json (one object: per member the parts and verdicts)",
    ("install", "file"): "the policy whose compiled output is installed",
    ("install", "member"): "install this member only",
    ("install", "all"): "install every member of every cluster, backups first",
    ("install", "transport"): "how nodes are reached: ssh (default, or `transport` in "
                              "fwc.toml), local (this machine), netns (namespace labs)",
    ("graph", "file"): "the policy whose clusters are drawn",
    ("export", "files"): "the policies whose clusters go into the tree",
    ("export", "output"): "the directory the Ansible tree is written to (swapped in whole)",
    ("import", "format"): "iptables-save: the output of iptables-save (filter and nat)",
    ("install", "confirm_timeout"): "seconds to wait for the confirmation before rolling "
                                    "back (default 60)",
}

# sub-command -> (command line, what it does); two or three each
EXAMPLES: dict[str, tuple[tuple[str, str], ...]] = {
    "check": (
        ("fwc check policies/edge.fw", "every problem of one policy, compiler style"),
        ("fwc check --strict policies/*.fw", "CI: warnings fail too"),
        ("fwc check --format sarif policies/edge.fw > fwc.sarif", "for code scanning"),
    ),
    "explain": (
        ("fwc explain FWC212", "why the 8-character VRRP password check exists"),
        ("fwc explain", "list every diagnostic code"),
    ),
    "compile": (
        ("fwc compile policies/edge.fw", "write ./output/edge/<member>/... and MANIFEST"),
        ("fwc compile policies/edge.fw --redact-secrets", "a tree to commit, no password"),
        ("fwc compile policies/edge.fw -o /srv/fwc --backend nftables", "nftables files"),
    ),
    "lab": (
        ("sudo fwc lab policies/edge.fw", "the whole drill set in network namespaces"),
        ("sudo fwc lab --quick --json report.json policies/edge.fw", "the short drill"),
        ("sudo fwc lab --teardown fwc1234", "remove a lab left by --keep"),
    ),
    "diff": (
        ("fwc diff", "what the uncommitted change does, then the generated files' diff"),
        ("fwc diff origin/main..HEAD --stat", "review a branch"),
        ("fwc diff --installed fw1 policies/edge.fw", "drift: the node against the policy"),
    ),
    "fmt": (
        ("fwc fmt policies/*.fw", "rewrite in the canonical layout"),
        ("fwc fmt --check policies/*.fw", "CI: list files that would change, exit 1"),
        ("fwc fmt - < edge.fw", "editors: standard input to standard output"),
    ),
    "query": (
        ("fwc query policies/edge.fw --from 192.0.2.10 --to 198.51.100.10 --service tcp/22",
         "what each member does with it, and which line decides"),
        ("fwc query policies/edge.fw --from any --to uplink.vip --service web --in uplink",
         "traffic to a VIP from outside"),
        ("fwc query policies/loadshare.fw --from web --to partner --service echo",
         "active-active: which member handles it (its group's master), and after a failover"),
    ),
    "graph": (
        ("fwc graph policies/edge.fw", "the topology as Graphviz DOT on stdout"),
        ("fwc graph policies/edge.fw -o edge.svg", "drawn as SVG (needs Graphviz's dot)"),
    ),
    "install": (
        ("fwc install --all policies/edge.fw --secrets-command 'pass show fwc/edge'",
         "every node, backups first, with the password from pass"),
        ("fwc install --member fw2 --dry-run policies/edge.fw", "print every command"),
        ("fwc install --all --dry-run --format json policies/edge.fw", "the plan as JSON"),
    ),
    "export": (
        ("fwc export ansible policies/*.fw -o ansible/", "every cluster as one Ansible tree"),
        ("fwc export ansible --redact-secrets --inventory hosts policies/edge.fw -o ansible/",
         "passwords from Ansible variables, hosts from an inventory file"),
    ),
    "import": (
        ("fwc import iptables-save running.rules -o edge.fw",
         "a ruleset saved on the node with iptables-save, as a policy"),
        ("fwc import iptables-save running.rules --cluster edge --verify -o edge.fw",
         "and prove the compiled result decides every packet class the same"),
    ),
    "status": (
        ("fwc status policies/edge.fw", "what each node runs: revision, who, when"),
        ("fwc status --member fw1 --format json policies/edge.fw", "one node, as JSON"),
    ),
    "trust": (
        ("fwc trust", "after reading it: let fwc run the commands the fwc.toml here names"),
        ("fwc trust policies/edge.fw", "the fwc.toml that applies to this policy"),
    ),
    "completion": (
        ("source <(fwc completion bash)", "bash, for this shell"),
        ("fwc completion zsh > ~/.zfunc/_fwc", "zsh (with ~/.zfunc in $fpath)"),
        ("fwc completion fish > ~/.config/fish/completions/fwc.fish", "fish"),
    ),
}


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """The sub-command parsers of PARSER, by name, in definition order."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def examples_text(name: str) -> str:
    lines = ["examples:"]
    for command, what in EXAMPLES.get(name, ()):
        lines.append(f"  {command}")
        lines.append(f"      {what}")
    return "\n".join(lines)


def teach(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Fill missing option help from OPTION_HELP and end each sub-command's --help with
    its examples. Returns PARSER."""
    helps = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help for a in action._choices_actions}
    for name, sub in subcommands(parser).items():
        for action in sub._actions:
            if action.help is None:
                action.help = OPTION_HELP.get((name, action.dest))
        if sub.description is None and helps.get(name):
            sub.description = helps[name]
        if name in EXAMPLES:
            sub.epilog = (f"{sub.epilog}\n\n" if sub.epilog else "") + examples_text(name)
            sub.formatter_class = argparse.RawDescriptionHelpFormatter
    return parser
