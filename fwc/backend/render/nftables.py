"""Lowered rulesets -> one `nft -f` file per member: the table `inet fwc`, and nothing else.

The file first creates the table empty (a no-op when it exists), deletes it and
declares it whole again: `nft -f` runs the three in one transaction, so the node
switches from the old table to the new one atomically, and the tables of other
programs (container runtimes, libvirt, fail2ban) are never touched. Never
`flush ruleset`.

The decisions stay the compiler's: the IPv4 and IPv6 rulesets that lowering
built (the ones the iptables target starts from) are written as they are, each
family's chains under its own names (`filter-INPUT-v4`), and one base chain per
netfilter hook dispatches on `meta nfproto` to them. So every rule, RETURN and
policy keeps the meaning it has in iptables. A family the cluster does not use
is not fwc's business, as with iptables (no ip6tables rules are written then):
its packets leave fwc's table accepted, for the node's other tables to decide.

Long address lists (more than IPSET_THRESHOLD blocks) become named sets with
`flags interval`, shared by every rule that names the same addresses; shorter
lists are anonymous sets inside the rule. Every rule counts (`counter`) and
carries its policy line as the comment.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from fwc import protocols as proto
from fwc.backend.files import GeneratedFile, Reload, path_of
from fwc.backend.lower.failsafe import failsafe
from fwc.backend.lower.ruleset import AddressMatch, Chain, Match, NodeRuleset, Rule
from fwc.backend.render import escape
from fwc.backend.render.context import MemberBuild
from fwc.model import PortRange
from fwc.model.vocabulary import BuiltinChain, Target
from fwc.model.vocabulary import Table as TableName

TABLE = "fwc"
TCP = proto.IP_PROTOCOLS["tcp"]
UDP = proto.IP_PROTOCOLS["udp"]
ICMP = proto.IP_PROTOCOLS["icmp"]
ICMPV6 = proto.IP_PROTOCOLS["icmpv6"]
FAMILY_WORDS = {4: ("ip", "ipv4"), 6: ("ip6", "ipv6")}

# (chain type, priority) per iptables table. The helpers of the raw table are set
# with `ct helper set`, which needs the conntrack entry: after conntrack (-200),
# still before DNAT (-100) as the raw table is, so the helper sees the same packet.
TABLE_HOOKS = {
    TableName.RAW: ("filter", "-150"),
    TableName.MANGLE: ("filter", "-150"),
    TableName.NAT: ("nat", None),
    TableName.FILTER: ("filter", "0"),
}
# The nat priorities iptables' nat chains have (dstnat -100, srcnat 100).
NAT_PRIORITIES = {
    BuiltinChain.PREROUTING: "-100",
    BuiltinChain.INPUT: "100",
    BuiltinChain.OUTPUT: "-100",
    BuiltinChain.POSTROUTING: "100",
}
CHAIN_ORDER = tuple(BuiltinChain)
STATES = {"INVALID": "invalid", "NEW": "new", "RELATED": "related",
          "ESTABLISHED": "established", "UNTRACKED": "untracked"}
REJECTS = {
    proto.REJECT_TCP: "reject with tcp reset",
    proto.REJECT_OTHER[4]: "reject with icmp type port-unreachable",
    proto.REJECT_OTHER[6]: "reject with icmpv6 type port-unreachable",
    # `reject ... with TYPE` (protocols.REJECT_TYPES)
    "icmp-host-unreachable": "reject with icmp type host-unreachable",
    "icmp6-addr-unreachable": "reject with icmpv6 type addr-unreachable",
    "icmp-net-unreachable": "reject with icmp type net-unreachable",
    "icmp6-no-route": "reject with icmpv6 type no-route",
    "icmp-admin-prohibited": "reject with icmp type admin-prohibited",
    "icmp6-adm-prohibited": "reject with icmpv6 type admin-prohibited",
}
# `--log-level N` as nft's `log level` names it.
LOG_LEVELS = ("emerg", "alert", "crit", "err", "warn", "notice", "info", "debug")
MARK_BITS = 0xFFFFFFFF


class NftUnsupported(ValueError):
    """A lowered rule that this target has no nft form for (a bug: lowering made it)."""


@dataclass
class _Writer:
    """The state of one file: its named sets and conntrack helper objects."""

    sets: dict[tuple[int, tuple[str, ...]], str] = field(default_factory=dict)
    helpers: dict[tuple[str, int], str] = field(default_factory=dict)
    # A group's blocks, collapsed once per file: thousands of rules name the same groups
    # (without it, collapsing dominated the render: 260 s for 2,000 rules of `groups`).
    collapsed: dict[tuple[str, ...], tuple[str, ...]] = field(default_factory=dict)

    def collapse(self, cidrs: tuple[str, ...]) -> tuple[str, ...]:
        found = self.collapsed.get(cidrs)
        if found is None:
            found = self.collapsed[cidrs] = _collapsed(cidrs)
        return found

    def set_name(self, family: int, cidrs: tuple[str, ...]) -> str:
        key = (family, cidrs)
        if key not in self.sets:
            self.sets[key] = f"addresses-v{family}-{len(self.sets) + 1}"
        return self.sets[key]

    def helper_name(self, helper: str, protocol: int) -> str:
        key = (helper, protocol)
        if key not in self.helpers:
            self.helpers[key] = escape.nft_identifier(f"helper-{helper}-{protocol}")
        return self.helpers[key]


def _collapsed(cidrs: tuple[str, ...]) -> tuple[str, ...]:
    # An interval set refuses overlapping elements; their union is the same set of
    # addresses, so the collapsed list matches exactly what the list matched.
    nets = [ipaddress.ip_network(c, strict=False) for c in cidrs]
    return tuple(str(n) for n in ipaddress.collapse_addresses(nets))  # type: ignore[arg-type]


def _addresses(direction: str, match: AddressMatch, family: int, writer: _Writer) -> str:
    if match.is_any:
        return ""
    if match.set_name is not None:
        raise NftUnsupported(f"ipset {match.set_name}: this target renders before the ipset pass")
    field_ = f"{FAMILY_WORDS[family][0]} {direction}"
    op = "!= " if match.negated else ""
    cidrs = writer.collapse(match.cidrs)
    if len(cidrs) == 1:
        return f"{field_} {op}{cidrs[0]}"
    if len(cidrs) > proto.IPSET_THRESHOLD:
        return f"{field_} {op}@{writer.set_name(family, cidrs)}"
    return f"{field_} {op}{{ {', '.join(cidrs)} }}"


def _merged_ports(ports: tuple[PortRange, ...]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for low, high in sorted((p.low, p.high) for p in ports):
        if out and low <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], high))
        else:
            out.append((low, high))
    return out


def _ports(ports: tuple[PortRange, ...]) -> str:
    texts = [str(lo) if lo == hi else f"{lo}-{hi}" for lo, hi in _merged_ports(ports)]
    return texts[0] if len(texts) == 1 else "{ " + ", ".join(texts) + " }"


def _protocol(match: Match) -> list[str]:
    if match.protocol is None:
        if match.dports or match.icmp_type is not None or match.tcp_not_syn:
            raise NftUnsupported("ports, ICMP types or TCP flags without a protocol")
        return []
    out: list[str] = []
    name = {TCP: "tcp", UDP: "udp"}.get(match.protocol)
    if match.dports:
        if name is not None:
            out.append(f"{name} dport {_ports(match.dports)}")
        else:
            out.append(f"meta l4proto {match.protocol} th dport {_ports(match.dports)}")
    elif match.icmp_type is not None:
        if match.protocol not in (ICMP, ICMPV6):
            raise NftUnsupported(f"an ICMP type on protocol {match.protocol}")
        word = "icmp" if match.protocol == ICMP else "icmpv6"
        out.append(f"{word} type {match.icmp_type}")
    elif not match.tcp_not_syn:
        out.append(f"meta l4proto {match.protocol}")
    if match.tcp_not_syn:
        if match.protocol != TCP:
            raise NftUnsupported("TCP flags on a protocol other than TCP")
        out.append("tcp flags & (fin | syn | rst | ack) != syn")
    return out


# The target options each statement writes: a lowered rule carrying any other one
# is refused (NftUnsupported), never written without it.
TARGET_OPTIONS: dict[Target | str, frozenset[str]] = {
    Target.REJECT: frozenset({"reject-with"}),
    Target.LOG: frozenset({"log-prefix", "log-level"}),
    Target.NFLOG: frozenset({"nflog-prefix", "nflog-group"}),
    Target.SNAT: frozenset({"to-source"}), Target.DNAT: frozenset({"to-destination"}),
    Target.CONNMARK: frozenset({"set-xmark"}), Target.CT: frozenset({"helper"}),
}


def _statement(rule: Rule, family: int, writer: _Writer, chain_names: dict[str, str]) -> str:
    target = rule.target
    options = dict(rule.target_options)
    unwritten = set(options) - TARGET_OPTIONS.get(target, frozenset())
    if unwritten:
        raise NftUnsupported(f"{target} option {sorted(unwritten)[0]}")
    if target is Target.ACCEPT:
        return "accept"
    if target is Target.DROP:
        return "drop"
    if target is Target.RETURN:
        return "return"
    if target is Target.REJECT:
        how = options.get("reject-with")
        if how not in REJECTS:
            raise NftUnsupported(f"REJECT --reject-with {how}")
        return REJECTS[how]
    if target is Target.LOG:
        level = options.get("log-level")
        suffix = f" level {LOG_LEVELS[int(level)]}" if level is not None else ""
        return f"log prefix {escape.nft_log_prefix(options['log-prefix'])}{suffix}"
    if target is Target.NFLOG:
        return (f"log prefix {escape.nft_log_prefix(options['nflog-prefix'])} "
                f"group {int(options['nflog-group'])}")
    if target is Target.MASQUERADE:
        return "masquerade"
    if target is Target.SNAT:
        return f"snat {FAMILY_WORDS[family][0]} to {escape.line_text(options['to-source'])}"
    if target is Target.DNAT:
        to = escape.line_text(options["to-destination"])
        return f"dnat {FAMILY_WORDS[family][0]} to {to}"
    if target is Target.CONNMARK:
        value_text, _, mask_text = options["set-xmark"].partition("/")
        value = int(value_text, 0)
        mask = int(mask_text, 0) if mask_text else MARK_BITS
        if value == mask:
            return f"ct mark set ct mark or {value:#010x}"
        return f"ct mark set ct mark and {MARK_BITS & ~mask:#010x} xor {value:#010x}"
    if target is Target.CT:
        if set(options) != {"helper"} or rule.match.protocol is None:
            raise NftUnsupported(f"CT {rule.target_options} without a protocol")
        return f'ct helper set "{writer.helper_name(options["helper"], rule.match.protocol)}"'
    if isinstance(target, str) and target in chain_names:
        return f"jump {chain_names[target]}"
    raise NftUnsupported(f"target {target}")


def _rule(rule: Rule, family: int, writer: _Writer, chain_names: dict[str, str]) -> str:
    match = rule.match
    # Never drop a condition silently (fwc.backend.capabilities lists what is refused).
    for name in ("hashlimit", "connlimit", "statistic", "tcp_flags"):
        if getattr(match, name) is not None:
            raise NftUnsupported(f"{name} matches")
    parts: list[str] = []
    if match.in_device:
        parts.append(f"iifname {escape.nft_device(match.in_device)}")
    if match.out_device:
        parts.append(f"oifname {escape.nft_device(match.out_device)}")
    parts.append(_addresses("saddr", match.source, family, writer))
    parts.append(_addresses("daddr", match.destination, family, writer))
    parts += _protocol(match)
    if match.hop_limit is not None:
        parts.append(f"ip6 hoplimit {match.hop_limit}")
    if match.ctstate:
        unknown = [s for s in match.ctstate if s not in STATES]
        if unknown:
            raise NftUnsupported(f"conntrack state {unknown[0]}")
        parts.append("ct state " + ",".join(STATES[s] for s in match.ctstate))
    if match.limit is not None:
        parts.append(f"limit rate {match.limit.rate} burst {match.limit.burst} packets")
    parts.append("counter")
    parts.append(_statement(rule, family, writer, chain_names))
    parts.append(f"comment {escape.nft_comment(rule.comment)}")
    return " ".join(p for p in parts if p)


def _family_chain(table: TableName, chain: str, family: int) -> str:
    return escape.nft_identifier(f"{table}-{chain}-v{family}")


def _base_chain(table: TableName, chain: BuiltinChain) -> str:
    return escape.nft_identifier(f"{table}-{chain}")


def render(rulesets: list[NodeRuleset], header: str) -> str:
    """RULESETS (one per family, lowered, without ipsets) as one `nft -f` file."""
    writer = _Writer()
    families = [r.family for r in rulesets]
    # (table, builtin chain) -> family -> its chain; plus every family's user chains.
    builtins: dict[tuple[TableName, BuiltinChain], dict[int, Chain]] = {}
    body: list[str] = []
    for ruleset in rulesets:
        for table in ruleset.tables:
            names = {c.name: _family_chain(table.name, c.name, ruleset.family)
                     for c in table.chains}
            for chain in table.chains:
                if chain.builtin:
                    builtins.setdefault((table.name, BuiltinChain(chain.name)),
                                        {})[ruleset.family] = chain
            chains = [c for c in table.chains if c.builtin] + sorted(
                (c for c in table.chains if not c.builtin), key=lambda c: c.name.encode())
            for chain in chains:
                body.append(f"\tchain {names[chain.name]} {{")
                body += [f"\t\t{_rule(r, ruleset.family, writer, names)}" for r in chain.rules]
                body.append("\t}")
    base: list[str] = []
    order = sorted(builtins, key=lambda k: (list(TableName).index(k[0]),
                                            CHAIN_ORDER.index(k[1])))
    for table_name, chain_name in order:
        per_family = builtins[(table_name, chain_name)]
        kind, priority = TABLE_HOOKS[table_name]
        if priority is None:
            priority = NAT_PRIORITIES[chain_name]
        policies = {c.policy for c in per_family.values()}
        # One policy for the hook; a family whose own policy is laxer ends with it.
        policy = Target.DROP if Target.DROP in policies else Target.ACCEPT
        base.append(f"\tchain {_base_chain(table_name, chain_name)} {{")
        base.append(f"\t\ttype {kind} hook {chain_name.lower()} priority {priority}; "
                    f"policy {policy.lower()};")
        for family in (4, 6):
            nfproto = FAMILY_WORDS[family][1]
            if family not in families:
                if policy is Target.DROP:
                    base.append(f"\t\tmeta nfproto {nfproto} accept "
                                'comment "fwc auto: family not compiled"')
                continue
            chain = per_family.get(family)
            if chain is None:
                continue
            base.append(f"\t\tmeta nfproto {nfproto} jump "
                        f"{_family_chain(table_name, chain_name, family)}")
            if chain.policy is not policy:
                base.append(f"\t\tmeta nfproto {nfproto} counter {str(chain.policy).lower()} "
                            'comment "fwc auto: policy"')
        base.append("\t}")
    out = [f"# {escape.comment(line)}" for line in header.splitlines()]
    out += [f"table inet {TABLE} {{}}", f"delete table inet {TABLE}", f"table inet {TABLE} {{"]
    for (helper, protocol), name in writer.helpers.items():
        word = {TCP: "tcp", UDP: "udp"}.get(protocol)
        if word is None:
            raise NftUnsupported(f"helper {helper} on protocol {protocol}")
        out += [f"\tct helper {name} {{",
                f"\t\ttype {escape.nft_string(helper)} protocol {word}",
                "\t\tl3proto inet", "\t}"]
    for (family, cidrs), name in writer.sets.items():
        out += [f"\tset {name} {{",
                f"\t\ttype {'ipv4_addr' if family == 4 else 'ipv6_addr'}",
                "\t\tflags interval",
                "\t\telements = {"]
        out += [f"\t\t\t{c}," for c in cidrs]
        out += ["\t\t}", "\t}"]
    out += base + body + ["}"]
    return "\n".join(out) + "\n"


def render_file(build: MemberBuild, file: GeneratedFile) -> str:
    where = f"member {build.member.name} of cluster {build.cluster.name}"
    if file.reload is Reload.FAILSAFE:
        # From the lowered rulesets: the fallback shares nothing with what failed but
        # the table's name, and replaces it whole like the real one.
        return render([failsafe(build.lowered(f)) for f in build.families],
                      f"Fail-closed nft table for {where}: loaded by "
                      f"{path_of('fwc-firewall.sh')} only when {path_of('nftables.nft')} "
                      "fails to load.\nGenerated by fwc: edit the policy, not this file.")
    return render([build.lowered(f) for f in build.families],
                  f"nft -f input for {where}: replaces only the table inet {TABLE}, "
                  "atomically;\nother tables stay. Generated by fwc: edit the policy, "
                  "not this file.")
