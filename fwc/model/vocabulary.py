"""The words every stage shares: address families, actions, NAT stages, verdicts, chains.

Enums whose value is what fwc writes (StrEnum/IntEnum), so a member formats, compares
and hashes exactly like the text or number it stands for: generated files and
diagnostics do not change when a plain string becomes a member, and a typo in a
name becomes an AttributeError instead of a rule that silently never matches.
"""

from __future__ import annotations

from enum import IntEnum, StrEnum


class Family(IntEnum):
    """An IP address family, as the version number iptables/ip6tables and ipaddress use."""

    V4 = 4
    V6 = 6

    @property
    def bits(self) -> int:
        return 32 if self is Family.V4 else 128


FAMILIES: tuple[Family, ...] = (Family.V4, Family.V6)


class FilterAction(StrEnum):
    """What a rule of a `rules` block does with the packets it matches."""

    ACCEPT = "accept"
    DROP = "drop"
    REJECT = "reject"


class NatStage(StrEnum):
    """Where a NAT rule works: the netfilter hook, named like its iptables nat chain.

    PREROUTING runs before routing (only the incoming interface is known),
    POSTROUTING after it (only the outgoing interface is still matchable).
    """

    PREROUTING = "PREROUTING"
    POSTROUTING = "POSTROUTING"

    @property
    def chain(self) -> BuiltinChain:
        return BuiltinChain(self.value)

    @property
    def sees_in(self) -> bool:
        return self is NatStage.PREROUTING

    @property
    def sees_out(self) -> bool:
        return self is NatStage.POSTROUTING


class NatAction(StrEnum):
    """What a rule of a `nat` block does."""

    SNAT = "snat"
    DNAT = "dnat"
    MASQUERADE = "masquerade"
    NONAT = "nonat"

    @property
    def has_target(self) -> bool:
        """snat and dnat translate to an address written after `->`."""
        return self in (NatAction.SNAT, NatAction.DNAT)

    def stages(self, in_interface: str | None = None,
               out_interface: str | None = None) -> tuple[NatStage, ...]:
        """The stages this action works in, for a rule with these interfaces.

        The one statement of it: lowering places rules here, the analysis engine
        applies them here, the checks compare and refuse by it. dnat rewrites the
        destination before routing, snat/masquerade the source after it. nonat exempts
        from the NAT rules after it in the stage(s) its interfaces imply: only `in`
        from dnat, only `out` from snat, otherwise from both.
        """
        if self is NatAction.DNAT:
            return (NatStage.PREROUTING,)
        if self is not NatAction.NONAT:
            return (NatStage.POSTROUTING,)
        stages: list[NatStage] = []
        if in_interface is not None or out_interface is None:
            stages.append(NatStage.PREROUTING)
        if out_interface is not None or in_interface is None:
            stages.append(NatStage.POSTROUTING)
        return tuple(stages)


Action = FilterAction | NatAction


class Verdict(StrEnum):
    """What an `expect` line says must happen to its traffic."""

    ALLOW = "allow"
    DENY = "deny"


class Backend(StrEnum):
    """The packet filter a cluster's rules are written for (`backend` in `cluster { }`)."""

    IPTABLES = "iptables"
    NFTABLES = "nftables"


class Table(StrEnum):
    """The netfilter tables fwc writes, in iptables-restore order."""

    RAW = "raw"
    MANGLE = "mangle"
    NAT = "nat"
    FILTER = "filter"


class BuiltinChain(StrEnum):
    """The kernel's own chains (every other chain name is a user chain of fwc's)."""

    PREROUTING = "PREROUTING"
    INPUT = "INPUT"
    FORWARD = "FORWARD"
    OUTPUT = "OUTPUT"
    POSTROUTING = "POSTROUTING"


class Target(StrEnum):
    """The kernel targets a lowered rule can jump to (else it names a user chain)."""

    ACCEPT = "ACCEPT"
    DROP = "DROP"
    REJECT = "REJECT"
    RETURN = "RETURN"
    LOG = "LOG"
    DNAT = "DNAT"
    SNAT = "SNAT"
    MASQUERADE = "MASQUERADE"
    CONNMARK = "CONNMARK"
    CT = "CT"
    NFLOG = "NFLOG"
    TCPMSS = "TCPMSS"
