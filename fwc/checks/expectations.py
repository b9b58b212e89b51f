"""FWC6xx: `expect` blocks, evaluated by the analysis engine on every member.

An `allow` expectation fails when any part of the traffic it describes is not
accepted on some member; a `deny` expectation fails when any part is
accepted. The diagnostic names the members, the failing part of the traffic in
policy terms and the rule that decides it (or the chain's default policy).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from fwc.analysis.describe import Vocabulary, describe_box
from fwc.analysis.engine import (
    FAMILIES,
    MemberView,
    Piece,
    TrafficClass,
    classify,
    merge_routed_pieces,
)
from fwc.checks import check, describe
from fwc.diagnostics import Diagnostic, Related, Severity, error, warning
from fwc.model import Cluster, Expectation, Policy
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
                          unrouted)


def _decider(piece: Piece) -> tuple[object, ...]:
    return (piece.rule.span if piece.rule else piece.chain, piece.verdict)


def _diagnose(expectation: Expectation, found: list[Failure]) -> list[Diagnostic]:
    groups: dict[tuple[object, ...], list[Failure]] = {}
    for failure in found:
        groups.setdefault(_decider(failure.piece), []).append(failure)
    code = "FWC601" if expectation.verdict is Verdict.ALLOW else "FWC602"
    out: list[Diagnostic] = []
    for group in list(groups.values())[:MAX_REPORTS_PER_EXPECTATION]:
        members = list(dict.fromkeys(f.member for f in group))
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
    views = [MemberView(cluster, member) for member in cluster.members]
    for expectation in cluster.expectations:
        found: list[Failure] = []
        empty_on: list[str] = []
        for view in views:
            pieces = evaluate(expectation, view)
            if all(piece.chain == "local" for piece in pieces):
                empty_on.append(view.member.name)
            found.extend(failures(expectation, view, pieces, vocabulary))
        if found:
            yield from _diagnose(expectation, found)
        if empty_on and views and _shares_family(expectation, views[0]):
            yield warning(
                "FWC603", f"expectation describes no traffic on {', '.join(empty_on)}",
                expectation.span,
                hint="the traffic is firewall-to-firewall only, or the interface does not "
                     "exist on that member")


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
filter as the kernel does. One run reports every failing expectation (this check
also emits FWC602 and FWC603).""")
def check_expectations(policy: Policy) -> Iterable[Diagnostic]:
    vocabulary = Vocabulary.of_policy(policy)
    for cluster in policy.clusters:
        yield from check_cluster(cluster, vocabulary.with_cluster(cluster))


describe("FWC602", "deny expectation fails", Severity.ERROR, """
`deny A -> B service S` fails when some of that traffic is accepted on some
member. The message names the member, the accepted part and the rule that
accepts it (a drop or reject counts as denied; so does the default policy).""",
         "check")
describe("FWC603", "expectation describes no traffic", Severity.WARNING, """
An expectation that only describes firewall-to-firewall traffic, or whose `in`
interface does not exist on a member, is true of nothing: it can
never fail, so it proves nothing. Fix the expectation.""", "check")
