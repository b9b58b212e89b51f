"""iptables-restore / iptables-save text as tables of chains of rules.

Used to compare two compiled rulesets chain by chain, and a compiled ruleset
with what `iptables-save` reports on a node (drift).
"""

from __future__ import annotations

import re
from dataclasses import field

from fwc.model.records import dataclass

BUILTIN_CHAINS = {"INPUT", "FORWARD", "OUTPUT", "PREROUTING", "POSTROUTING"}
_COUNTERS = re.compile(r"^\[\d+:\d+\]\s*")
_CHAIN_COUNTERS = re.compile(r"\s*\[\d+:\d+\]\s*$")
_RULE_COUNTERS = re.compile(r"\s-c\s+\d+\s+\d+\b")


@dataclass
class Table:
    name: str
    policies: dict[str, str] = field(default_factory=dict)  # chain -> policy ("-" for user)
    rules: dict[str, list[str]] = field(default_factory=dict)  # chain -> rules, in order

    def chain(self, name: str) -> list[str]:
        return self.rules.setdefault(name, [])

    @property
    def is_default(self) -> bool:
        """An empty table with every built-in chain at ACCEPT: as if never loaded."""
        return (not any(self.rules.values())
                and all(p in ("ACCEPT", "-") for p in self.policies.values())
                and all(c in BUILTIN_CHAINS for c in self.policies))


@dataclass
class Ruleset:
    tables: dict[str, Table] = field(default_factory=dict)

    def lines(self) -> list[str]:
        """A canonical text: tables by name, chain declarations sorted, rules in order."""
        out: list[str] = []
        for name in sorted(self.tables):
            table = self.tables[name]
            out.append(f"*{name}")
            out.extend(f":{chain} {table.policies[chain]}" for chain in sorted(table.policies))
            for chain in sorted(table.rules):
                out.extend(f"-A {chain} {rule}" for rule in table.rules[chain])
            out.append("COMMIT")
        return out

    def without_default_tables(self) -> Ruleset:
        return Ruleset({n: t for n, t in self.tables.items() if not t.is_default})


def parse(text: str) -> Ruleset:
    """Parse iptables-restore/-save text; counters and comments are dropped."""
    ruleset = Ruleset()
    table: Table | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if line[:3] == "-A " and table is not None:  # most lines: a rule, tested first
            parts = line.split(None, 2)
            # (no counter can be in it: see _append)
            if len(parts) == 3 and parts[2].count("-c") == parts[2].count("--c"):
                rules = table.rules.get(parts[1])
                if rules is None:
                    rules = table.rules[parts[1]] = []
                rules.append(parts[2])
            else:
                _append(table, line)
            continue
        if line[:1] == "[":  # (only iptables-save -c has counters: a regex for them only)
            line = _COUNTERS.sub("", line)
        if not line or line.startswith("#"):
            continue
        if line.startswith("*"):
            table = ruleset.tables.setdefault(line[1:].strip(), Table(line[1:].strip()))
        elif line == "COMMIT":
            table = None
        elif table is None:
            continue
        elif line.startswith(":"):
            parts = _CHAIN_COUNTERS.sub("", line[1:]).split()
            table.policies[parts[0]] = parts[1] if len(parts) > 1 else "-"
            table.rules.setdefault(parts[0], [])
        elif line.startswith(("-A ", "--append ")):
            _append(table, line)
        elif line.startswith(("-N ", "--new-chain ")):
            chain = line.split()[1]
            table.policies.setdefault(chain, "-")
            table.rules.setdefault(chain, [])
        elif line.startswith(("-P ", "--policy ")):
            _, chain, policy = line.split()[:3]
            table.policies[chain] = policy
    return ruleset


def _append(table: Table, line: str) -> None:
    """The rule of an `-A CHAIN ...` line, without its counters, to its chain."""
    _, chain, *rest = line.split(None, 2)
    rule = " " + " ".join(rest)
    # A counter is `-c` after white space: every `-c` of `--comment`/`--ctstate` follows
    # a `-` (the regex only where some `-c` does not)
    if rule.count("-c") > rule.count("--c"):
        rule = _RULE_COUNTERS.sub("", rule)
    table.chain(chain).append(rule.strip())


def normalised(text: str) -> list[str]:
    """Canonical lines of an iptables-save dump, ignoring tables nobody loaded."""
    return parse(text).without_default_tables().lines()
