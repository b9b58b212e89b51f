"""FWC6xx: `expect` blocks, evaluated by the analysis engine on every member.

An `allow` expectation fails when any part of the traffic it describes is not
accepted on some member; a `deny` expectation fails when any part is
accepted. The diagnostic names the members, the failing part of the traffic in
policy terms and the rule that decides it (or the chain's default policy).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from fwc.analysis.describe import Vocabulary, describe_box
from fwc.analysis.engine import (
    FAMILIES,
    MemberView,
    Piece,
    TrafficClass,
    classify,
    merge_routed_pieces,
)
from fwc.analysis.handling import handling
from fwc.analysis.space import LOCAL
from fwc.checks import check, describe
from fwc.diagnostics import Diagnostic, Related, Severity, error, warning
from fwc.model import Cluster, Expectation, Policy
from fwc.model.records import dataclass
from fwc.model.semantics import endpoint_intervals
from fwc.model.topology import has_default
from fwc.model.vocabulary import Verdict

# Failing parts reported per expectation; the rest are counted.
MAX_REPORTS_PER_EXPECTATION = 4

_VERDICT_WORDS = {"accept": "accepted", "drop": "dropped", "reject": "rejected"}


@dataclass(frozen=True, slots=True)
class Failure:
    """Part of an expectation's traffic that breaks it on one member."""

    member: str
    piece: Piece
    text: str  # the part in policy terms
    unrouted: bool = False  # it leaves by a guessed interface: the member has no default route
    takeover: bool = False  # found after the member took over every vrrp-group's VIPs

    @property
    def where(self) -> str:
        return f"{self.member} (after takeover)" if self.takeover else self.member


def evaluate(expectation: Expectation, view: MemberView) -> list[Piece]:
    # Without `in`, an expectation holds for traffic arriving on any interface
    # (docs/language.md); the out interface is where routing sends it.
    traffic = TrafficClass(expectation.source, expectation.destination, expectation.services,
                           expectation.in_interface, route_in=False)
    return merge_routed_pieces(classify(view, traffic))


def failures(expectation: Expectation, view: MemberView, pieces: Iterable[Piece],
             vocabulary: Vocabulary) -> Iterator[Failure]:
    want_accept = expectation.verdict is Verdict.ALLOW
    for piece in pieces:
        if piece.accepted != want_accept:
            unrouted = piece.chain in ("forward", "output") and \
                not has_default(view.routing[piece.box.family])
            yield Failure(view.member.name, piece,
                          describe_box(piece.box, vocabulary, view.firewall, view.interfaces),
                          unrouted, view.takeover)


def _decider(piece: Piece) -> tuple[object, ...]:
    return (piece.rule.span if piece.rule else piece.chain, piece.verdict)


def _diagnose(expectation: Expectation, found: list[Failure]) -> list[Diagnostic]:
    groups: dict[tuple[object, ...], list[Failure]] = {}
    for failure in found:
        groups.setdefault(_decider(failure.piece), []).append(failure)
    code = "FWC601" if expectation.verdict is Verdict.ALLOW else "FWC602"
    out: list[Diagnostic] = []
    for group in list(groups.values())[:MAX_REPORTS_PER_EXPECTATION]:
        members = list(dict.fromkeys(f.where for f in group))
        first = group[0]
        piece = first.piece
        verdict = _VERDICT_WORDS.get(piece.verdict, piece.verdict)
        where = "member" if len(members) == 1 else "members"
        if piece.rule is not None:
            by = f"rule {piece.rule.location}"
            related = [Related(piece.rule.span, f"this rule decides it: {piece.rule.text()}")]
        elif piece.chain == "local":
            by = "the automatic loopback rule"
            related = []
        elif piece.auto is not None:
            by = f"the automatic rule '{piece.auto}'"
            related = []
        else:
            by = f"the default policy of {piece.chain.upper()} ({piece.verdict})"
            related = []
        nat = f" after {piece.dnat}" if piece.dnat is not None and piece.dnat.address else ""
        more = len({f.text for f in group}) - 1
        extra = f" (and {more} more part{'s' if more > 1 else ''})" if more > 0 else ""
        message = (f"{expectation.verdict} expectation fails on {where} "
                   f"{', '.join(members)}: {first.text}{extra} is {verdict}{nat} by {by}")
        if expectation.verdict is Verdict.ALLOW:
            hint = ("add an accept rule for this traffic before the deciding rule, "
                    "or correct the expectation")
        else:
            hint = "add a drop or reject rule before the deciding rule, or correct the expectation"
        if any(f.unrouted for f in group):
            hint += ("; fwc knows no default route of this member, so traffic no subnet holds "
                     "may leave by any interface but the sync link: 'route default via "
                     "GATEWAY' tells it the exit (docs/language.md, \"Routes\")")
        if any(f.takeover for f in group):
            hint += ("; after takeover: the member holds every vrrp-group's VIPs, as when the "
                     "other members have failed, and a failover must not change what the "
                     "policy promises (docs/analysis.md, \"Who handles it\")")
        out.append(error(code, message, expectation.span, hint=hint, related=related))
    hidden = len(groups) - MAX_REPORTS_PER_EXPECTATION
    if hidden > 0:
        out.append(error(code, f"{expectation.verdict} expectation also fails in {hidden} more "
                         "way(s); run 'fwc query' on it for the full picture",
                         expectation.span))
    return out


def check_cluster(cluster: Cluster, vocabulary: Vocabulary) -> Iterator[Diagnostic]:
    if not cluster.expectations:
        return
    views = [MemberView(cluster, member, on_demand=True) for member in cluster.members]
    # Active-active: a member holds only its groups' VIPs while every member is well;
    # after a failover it holds them all and meets traffic it never met before. The
    # expectation is proved in both states (a member holding every VIP, or none, in
    # normal operation has one state: its view is already the after-failover one).
    takeovers = {view.member.name: MemberView(cluster, view.member, takeover=True,
                                                 on_demand=True)
                 for view in views if view.elsewhere_vips}
    for expectation in cluster.expectations:
        found: list[Failure] = []
        empty_on: list[str] = []
        for view in views:
            pieces = evaluate(expectation, view)
            normal = list(failures(expectation, view, pieces, vocabulary))
            found.extend(normal)
            empty = _describes_nothing(pieces)
            after = takeovers.get(view.member.name)
            if after is not None:
                after_pieces = evaluate(expectation, after)
                # Only what the failover changes: a part failing in both states is reported once.
                known = {(_decider(f.piece), f.text) for f in normal}
                found.extend(f for f in failures(expectation, after, after_pieces, vocabulary)
                             if (_decider(f.piece), f.text) not in known)
                # The traffic a member meets only after it takes over a group is proved
                # there (above): not vacuous, so no FWC603 for it.
                empty = empty and _describes_nothing(after_pieces)
            if empty:
                empty_on.append(view.member.name)
        if found:
            yield from _diagnose(expectation, found)
        if expectation.via is not None:
            yield from _check_via(cluster, expectation, views)
        if empty_on and views and _shares_family(expectation, views[0]):
            yield warning(
                "FWC603", f"expectation describes no traffic on {', '.join(empty_on)}",
                expectation.span,
                hint="the traffic is firewall-to-firewall only, or the interface does not "
                     "exist on that member")


def _describes_nothing(pieces: list[Piece]) -> bool:
    return all(piece.chain == "local" for piece in pieces)


def _check_via(cluster: Cluster, expectation: Expectation,
               views: list[MemberView]) -> Iterator[Diagnostic]:
    """`via M`: M handles the traffic in normal operation, on every interface it arrives
    by (`in`, else where the member routes its source back to, as `fwc query` infers)."""
    via = expectation.via
    span = expectation.via_span or expectation.span
    view = next((v for v in views if v.member.name == via), None)
    if view is None:
        yield error("FWC287", f"'via {via}': cluster '{cluster.name}' has no member '{via}'",
                    span, hint="members: " + ", ".join(m.name for m in cluster.members))
        return
    traffic = TrafficClass(expectation.source, expectation.destination, expectation.services,
                           expectation.in_interface)
    arrivals = {i for piece in classify(view, traffic) for i in piece.box.in_ifaces}
    for item in handling(cluster, arrivals):
        if item.normal == via:
            continue
        where = ("traffic from the firewall" if item.interface == LOCAL
                 else f"traffic arriving on {item.interface}")
        if item.normal is None:
            message = f"expectation says via {via}, but no VRRP master handles {where} " \
                      f"({item.why()})"
        else:
            message = (f"expectation says via {via}, but {where} is handled by "
                       f"{item.normal} ({item.why()})")
            if via in item.order:
                message += f"; {via} takes it over only after a failover"
        yield error("FWC286", message, span,
                    hint="name the member that masters the arrival interface's vrrp-group "
                         "(fwc query shows it), or state the arrival with 'in IFACE'")


def _shares_family(expectation: Expectation, view: MemberView) -> bool:
    """False when source and destination have no family in common (FWC105 says so)."""
    return any(endpoint_intervals(expectation.source, view.firewall, family)
               and endpoint_intervals(expectation.destination, view.firewall, family)
               for family in FAMILIES)


@check("FWC601", "allow expectation fails", Severity.ERROR, """
An `expect` block states what the policy must do. `allow A -> B service S`
fails when some of that traffic is not accepted on some member: the message
names the member, the part of the traffic, and the rule (file:line, shown as a
note) or the default policy that decides it. Expectations are evaluated on
intervals over the packet fields, first match wins, with DNAT applied before the
filter as the kernel does. On an active-active cluster (`vrrp-group`s) each member
is proved twice: in normal operation, holding its groups' VIPs, and after it has
taken over every group, since a failover must not change what the policy
promises; a part that fails only then names the member as `fw1 (after
takeover)`. One run reports every failing expectation (this check also emits
FWC602 and FWC603).""")
def check_expectations(policy: Policy) -> Iterable[Diagnostic]:
    vocabulary = Vocabulary.of_policy(policy)
    for cluster in policy.clusters:
        yield from check_cluster(cluster, vocabulary.with_cluster(cluster))


describe("FWC602", "deny expectation fails", Severity.ERROR, """
`deny A -> B service S` fails when some of that traffic is accepted on some
member. The message names the member, the accepted part and the rule that
accepts it (a drop or reject counts as denied; so does the default policy).""",
         "check")
describe("FWC286", "expectation's member does not handle its traffic", Severity.ERROR, """
`allow A -> B service S in IFACE via M` also states which member handles that
traffic while every member is well: the member that holds the VIPs of the
interface it arrives on (the master of that interface's `vrrp-group`, or the
cluster's VRRP master), since senders reach the cluster through those VIPs.
Without `in`, the arrival interfaces are where the member routes the source back
to, as `fwc query` infers them. The check fails when another member handles the
traffic (say, the expectation pins group A's traffic on group B's master, which
only gets it after a failover), or when the traffic arrives where no VIP decides
who gets it (an interface without VIPs, the firewall's own traffic). Whether the
traffic is allowed is still checked on every member (FWC601): after a failover
the other member's rules decide.""", "check")
describe("FWC287", "expectation's via names no member", Severity.ERROR, """
`via M` must name a member of the expectation's cluster; the message lists
them.""", "check")
describe("FWC603", "expectation describes no traffic", Severity.WARNING, """
An expectation that only describes firewall-to-firewall traffic, or whose `in`
interface does not exist on a member, is true of nothing: it can
never fail, so it proves nothing. Fix the expectation. On an active-active cluster
traffic a member does not meet while the groups are split (it arrives through
another group's VIPs, whose master handles it) is not reported: that member
meets it after it takes the group over, and the expectation is proved there
(FWC601). The warning names only members that meet none of the traffic in
either state.""", "check")
