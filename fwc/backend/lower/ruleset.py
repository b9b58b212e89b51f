"""The lowered rule model: what one member's kernel gets, per address family.

Structured, not text: every later pass (ipsets for large groups, per-interface
chains) rewrites these values, and only `fwc.backend.render.iptables` turns them into
iptables-restore lines. Everything is frozen so that passes return new values.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import field, replace

from fwc import protocols as proto
from fwc.model import PortRange, vocabulary
from fwc.model import Rule as PolicyRule
from fwc.model.records import dataclass
from fwc.model.vocabulary import BuiltinChain, Target

# Targets that end a packet's walk through the chains (RETURN only ends the chain); the
# evaluator and the ipset pass both read it from here, the lowered model's vocabulary.
TERMINAL = frozenset({Target.ACCEPT, Target.DROP, Target.REJECT, Target.DNAT, Target.SNAT,
                      Target.MASQUERADE})
# The filter table's verdicts: a chain whose last rule gives one never returns.
VERDICTS = frozenset({Target.ACCEPT, Target.DROP, Target.REJECT})
# What only the nat table may do (translate), and what it may not (filter: the kernel
# refuses DROP and REJECT there; CT belongs to raw): the two rule types below keep to it.
NAT_TARGETS = frozenset({Target.DNAT, Target.SNAT, Target.MASQUERADE})
NOT_NAT_TARGETS = frozenset({Target.DROP, Target.REJECT, Target.CT})
_TARGET_NAMES = frozenset(t.value for t in Target)

# A rule's target: a kernel target, or the name of one of fwc's user chains (a jump).
JumpTarget = Target | str
ChainName = BuiltinChain | str


def target_of(word: str) -> JumpTarget:
    """A target as iptables writes it: the kernel target's member, else the user chain."""
    return Target(word) if word in _TARGET_NAMES else word


def _check_target(rule: FilterRule | NatRule, refused: frozenset[Target]) -> None:
    # Invariants of the lowered model, not user errors: a failure here is a bug in a pass.
    target = rule.target
    if target in refused:
        raise ValueError(f"{type(rule).__name__} cannot jump to {target}")
    if type(target) is str and target in _TARGET_NAMES:
        raise TypeError(f"kernel target {target!r} must be Target.{target}, not a string")


@dataclass(frozen=True, slots=True)
class AddressMatch:
    """A source or destination: CIDR blocks, or a named set. Neither means any address."""

    cidrs: tuple[str, ...] = ()
    set_name: str | None = None  # an ipset holding the addresses (replaces cidrs)
    negated: bool = False  # `! -s`: everything except these

    @property
    def is_any(self) -> bool:
        return not self.cidrs and self.set_name is None


ANY = AddressMatch()


@dataclass(frozen=True, slots=True)
class RateLimit:
    rate: str  # e.g. 5/second
    burst: int


@dataclass(frozen=True, slots=True)
class HashLimit:
    """`-m hashlimit --hashlimit-above`: matches packets beyond the rate (so that they
    RETURN, or are dropped for syn-limit); one bucket per NAME, shared by every line of
    a rule, per source address with `per_source`."""

    rate: str  # e.g. 10/second
    burst: int
    name: str
    per_source: bool = False


@dataclass(frozen=True, slots=True)
class ConnLimit:
    """`-m connlimit --connlimit-above N`: the source has more than N connections."""

    above: int
    mask: int  # 32 or 128: per source address


@dataclass(frozen=True, slots=True)
class Match:
    source: AddressMatch = ANY
    destination: AddressMatch = ANY
    in_device: str | None = None
    out_device: str | None = None
    protocol: int | None = None  # IP protocol number; None: every protocol
    dports: tuple[PortRange, ...] = ()
    icmp_type: int | None = None
    tcp_not_syn: bool = False  # `! --syn`: a TCP packet that does not open a connection
    ctstate: tuple[str, ...] = ()  # conntrack states, in iptables-save order
    hop_limit: int | None = None  # IPv6 hop limit must equal this (NDP: 255)
    limit: RateLimit | None = None
    # `--tcp-flags MASK SET` (e.g. ("SYN,RST", "SYN") for MSS clamping)
    tcp_flags: tuple[str, str] | None = None
    statistic: tuple[int, int] | None = None  # `--mode nth --every N --packet P`
    connlimit: ConnLimit | None = None
    hashlimit: HashLimit | None = None
    # IPv4 TTL must equal this (VRRP: 255): IPv4's hop limit, a field of its own because
    # the two families' matches differ (`-m ttl` and `ip ttl`, `-m hl` and `ip6 hoplimit`)
    ttl: int | None = None


def with_sides(match: Match, source: AddressMatch, destination: AddressMatch) -> Match:
    """`replace(match, source=SOURCE, destination=DESTINATION)`, built directly: the
    passes that put address lists into sets or chains rewrite tens of thousands of
    matches, and `dataclasses.replace` (fields read by name, keywords) cost several
    times the build. tests/test_lowered_fast.py keeps it equal to `replace` for
    every field of Match."""
    return Match(source, destination, match.in_device, match.out_device, match.protocol,
                 match.dports, match.icmp_type, match.tcp_not_syn, match.ctstate,
                 match.hop_limit, match.limit, match.tcp_flags, match.statistic,
                 match.connlimit, match.hashlimit, match.ttl)


def with_limit(match: Match, limit: RateLimit) -> Match:
    """`replace(match, limit=LIMIT)`, built directly (see `with_sides`): the LOG line of
    every logged rule."""
    return Match(match.source, match.destination, match.in_device, match.out_device,
                 match.protocol, match.dports, match.icmp_type, match.tcp_not_syn,
                 match.ctstate, match.hop_limit, limit, match.tcp_flags, match.statistic,
                 match.connlimit, match.hashlimit, match.ttl)


def with_match(rule: Rule, match: Match) -> Rule:
    """`replace(rule, match=MATCH)`, built directly (see `with_sides`)."""
    return type(rule)(match, rule.target, rule.origin, rule.target_options)


def address_width(side: AddressMatch) -> int:
    """iptables lines this side of a match takes: one per CIDR, one for a set or any."""
    return 1 if side.set_name is not None else max(1, len(side.cidrs))


def port_groups(ports: tuple[PortRange, ...]) -> list[tuple[PortRange, ...]]:
    """PORTS split, in order, so that each multiport match holds at most
    MULTIPORT_MAX slots (a range takes two)."""
    groups: list[list[PortRange]] = [[]]
    used = 0
    for port in ports:
        cost = 1 if port.low == port.high else 2
        if used + cost > proto.MULTIPORT_MAX:
            groups.append([])
            used = 0
        groups[-1].append(port)
        used += cost
    return [tuple(g) for g in groups]


def rendered_lines(match: Match) -> int:
    """The iptables lines a rule with MATCH is written as: one per source x destination
    CIDR (a set is one) and per multiport group of its ports (`port_groups`)."""
    ports = match.dports
    groups = 1 if 2 * len(ports) <= proto.MULTIPORT_MAX else len(port_groups(ports))
    return address_width(match.source) * address_width(match.destination) * groups


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a lowered rule comes from: a policy/NAT rule, or an automatic one."""

    kind: str  # policy, nat or auto
    label: str  # "edge.fw:42" or "fwc auto: vrrp eth0"
    rule: PolicyRule | None = field(default=None, compare=False)

    @property
    def only(self) -> str | None:
        return self.rule.only if self.rule is not None else None


@dataclass(frozen=True, slots=True)
class FilterRule:
    """A rule of the raw, mangle or filter table: it decides, marks or logs, never translates."""

    match: Match
    target: JumpTarget
    origin: Origin
    # Target options in order, as (option, value); e.g. (("reject-with", "tcp-reset"),).
    target_options: tuple[tuple[str, str], ...] = ()

    # A renderer's scratch index (see fwc.backend.render.iptables.render): not part of
    # the rule's value, never read without checking it against that render's own list.
    render_slot: int = field(default=-1, init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        # The usual target passes in two C-level tests, without a call per rule built
        # (every pass of the back half builds rules); `_check_target` says what is wrong.
        target = self.target
        if target in NAT_TARGETS or (type(target) is str and target in _TARGET_NAMES):
            _check_target(self, NAT_TARGETS)

    @property
    def comment(self) -> str:
        return self.origin.label


@dataclass(frozen=True, slots=True)
class NatRule:
    """A rule of the nat table: it translates (DNAT, SNAT, MASQUERADE), exempts from the
    translations after it (ACCEPT, RETURN), logs or jumps, never filters."""

    match: Match
    target: JumpTarget
    origin: Origin
    # e.g. (("to-source", "198.51.100.254"),).
    target_options: tuple[tuple[str, str], ...] = ()

    render_slot: int = field(default=-1, init=False, compare=False, repr=False)  # as above

    def __post_init__(self) -> None:
        target = self.target  # (as FilterRule's)
        if target in NOT_NAT_TARGETS or (type(target) is str and target in _TARGET_NAMES):
            _check_target(self, NOT_NAT_TARGETS)

    @property
    def comment(self) -> str:
        return self.origin.label


Rule = FilterRule | NatRule


@dataclass(frozen=True, slots=True)
class Chain:
    name: ChainName
    policy: Target | None  # ACCEPT/DROP for built-in chains, None for user chains
    rules: tuple[Rule, ...] = ()
    # Scratch, not part of the value: the rule type `Table` found every rule of this
    # chain to be. A chain never changes, and the passes build several tables around the
    # same chains (lowering, ipsets, arrangement, for every member that shares them): each
    # chain's rules are checked once, not once per table.
    checked: type | None = field(default=None, init=False, compare=False, repr=False)

    @property
    def builtin(self) -> bool:
        return self.policy is not None


@dataclass(frozen=True, slots=True)
class Table:
    name: vocabulary.Table
    chains: tuple[Chain, ...]

    def __post_init__(self) -> None:
        # The nat table holds NAT rules, every other table filter rules: a pass that
        # moves a rule across tables fails here, not in iptables-restore on the node.
        kind = NatRule if self.name == vocabulary.Table.NAT else FilterRule
        for chain in self.chains:
            if chain.checked is kind or not chain.rules:
                continue
            if set(map(type, chain.rules)) != {kind}:  # (one C-level pass)
                rule = next(r for r in chain.rules if type(r) is not kind)
                raise TypeError(f"{type(rule).__name__} in the {self.name} table "
                                f"(chain {chain.name})")
            object.__setattr__(chain, "checked", kind)  # frozen: scratch only

    def chain(self, name: str) -> Chain | None:
        for chain in self.chains:
            if chain.name == name:
                return chain
        return None

    @property
    def empty(self) -> bool:
        return not any(chain.rules for chain in self.chains)


@dataclass(frozen=True, slots=True)
class NodeRuleset:
    """Everything one member's kernel gets for one address family."""

    cluster: str
    member: str
    family: int  # 4 or 6
    tables: tuple[Table, ...]

    def table(self, name: vocabulary.Table) -> Table | None:
        for table in self.tables:
            if table.name == name:
                return table
        return None

    def chain(self, table: vocabulary.Table, chain: str) -> Chain | None:
        found = self.table(table)
        return found.chain(chain) if found else None

    def rules(self) -> Iterator[tuple[vocabulary.Table, ChainName, Rule]]:
        """Every rule as (table, chain, rule), in file order."""
        for table in self.tables:
            for chain in table.chains:
                for rule in chain.rules:
                    yield table.name, chain.name, rule

    def with_table(self, new: Table) -> NodeRuleset:
        """A copy with `new` replacing the table of the same name (for later passes)."""
        tables = tuple(new if t.name == new.name else t for t in self.tables)
        return replace(self, tables=tables)


# What a rule may do on its way to a verdict without ending the walk or returning.
_GOES_ON_QUIETLY = frozenset({Target.LOG, Target.NFLOG, Target.CONNMARK})


def never_returning(chains: tuple[Chain, ...]) -> frozenset[str]:
    """User chains every packet leaves with a final verdict (fwc-accept, a log chain): a
    jump to one decides like a verdict (the nft renderer lets rules jumping to one share
    a set or map; the failsafe factors their address products into a chain).
    Such a chain logs or marks (never ending a packet's walk) and then ends in an
    unconditional accept, drop, reject or jump to another such chain."""
    out: set[str] = set()
    grew = True
    while grew:
        grew = False
        for chain in chains:
            if chain.builtin or not chain.rules or chain.name in out:
                continue
            last = chain.rules[-1]
            final = last.target in VERDICTS or \
                (type(last.target) is str and last.target in out)
            if last.match == Match() and final and all(
                    r.target in _GOES_ON_QUIETLY for r in chain.rules[:-1]):
                out.add(str(chain.name))
                grew = True
    return frozenset(out)
