"""`fwc query FILE --from A --to B [--service S] [--in I] [--out O]`: what happens, per member.

A and B are comma-separated lists of addresses, networks, ranges, object names,
`IFACE.vip`, `any` or `firewall` (each may be negated with `!`), exactly as in a
rule: they are parsed by the policy grammar and resolved against the policy's
names, and a mistake is reported as a diagnostic pointing into the argument
(`--from:1:5: error[FWC106]: ...`). The answer is the analysis engine's
partition of that traffic: per member, every part with its own outcome, the
policy line that decides it (or the default policy) and the NAT applied. Exit 0
with an answer, 1 when the policy has errors, 2 on a usage error.
"""

from __future__ import annotations

import argparse
import json
import sys

from fwc import model
from fwc.analysis.describe import Vocabulary, cidr_list, describe_box, service_text
from fwc.analysis.engine import (
    MemberView,
    NatStep,
    Piece,
    TrafficClass,
    classify,
    merge_routed_pieces,
)
from fwc.analysis.handling import Handling, handling, vips_held_elsewhere
from fwc.analysis.space import LOCAL
from fwc.commands.common import resolved, without_cycle_collection
from fwc.diagnostics import Diagnostic, print_diagnostics, shown_text
from fwc.frontend import syntax as s
from fwc.frontend.parse import PolicyParser, borrowed_parser, parse_fragment
from fwc.frontend.resolve import FragmentResolver
from fwc.model.addresses import AddressSet
from fwc.model.records import dataclass

EXIT_OK, EXIT_POLICY, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """A bad command-line value: reported in one line, exit status 2."""


class FragmentError(Exception):
    """A command-line value that is not valid policy text: diagnostics pointing into it."""

    def __init__(self, diagnostics: list[Diagnostic]) -> None:
        super().__init__(diagnostics[0].message)
        self.diagnostics = diagnostics


@dataclass(frozen=True)
class Question:
    source: tuple[s.Endpoint, ...]
    destination: tuple[s.Endpoint, ...]
    services: tuple[model.ServiceMatch, ...]
    in_interface: str | None
    out_interface: str | None


# -- parsing the command line ------------------------------------------------------------
# The values of --from/--to/--service are fragments of a rule: parsed with the policy
# grammar's fragment start rules and resolved by the policy's resolver, so they accept and
# mean exactly what a rule does, and a mistake is a diagnostic at its column.
def parse_argument(text: str, option: str, start: str, parser: PolicyParser) -> tuple:
    value, diagnostics = parse_fragment(text, option, start, parser)
    if diagnostics:
        raise FragmentError(diagnostics)
    return value


def parse_question(args: argparse.Namespace, resolver: FragmentResolver) -> Question:
    with borrowed_parser() as parser:
        source = parse_argument(args.source, "--from", "endpoints_fragment", parser)
        destination = parse_argument(args.destination, "--to", "endpoints_fragment", parser)
        refs = (parse_argument(args.service, "--service", "services_fragment", parser)
                if args.service is not None else None)
    services: tuple[model.ServiceMatch, ...] = ()
    if refs is not None:
        services, diagnostics = resolver.services(refs)
        if diagnostics:
            raise FragmentError(diagnostics)
    return Question(source, destination, services, args.in_interface, args.out_interface)


def _one_line(diagnostic: Diagnostic) -> str:
    where = diagnostic.span
    at = f"{where.file}:{where.line}:{where.column}: " if where else ""
    return f"{at}{diagnostic.message}"


# -- answering --------------------------------------------------------------------------
def _source_line(rule: model.Rule, texts: dict[str, str]) -> str:
    """RULE's line as written, comment included (JSON escapes it; the text answer shows
    it through `shown_text`). Lines end at "\n", as the parser counts them: a comment
    may hold a U+2028 or a form feed, where str.splitlines also ends one."""
    text = texts.get(rule.span.file)
    if text is not None:
        lines = text.split("\n")
        if 1 <= rule.span.line <= len(lines):
            return " ".join(lines[rule.span.line - 1].split())
    return rule.text()


def _shown_line(rule: model.Rule, texts: dict[str, str]) -> str:
    """RULE's line for a terminal: an escape sequence in its comment is not sent raw."""
    return shown_text(_source_line(rule, texts))


def _nat_json(step: NatStep | None, texts: dict[str, str]) -> dict[str, object] | None:
    if step is None:
        return None
    return {"kind": step.kind, "address": step.address, "port": step.port,
            "file": step.rule.span.file, "line": step.rule.span.line,
            "text": _source_line(step.rule, texts)}


def _interfaces(ifaces: frozenset[str]) -> list[str]:
    return sorted(i for i in ifaces if i != LOCAL)


def piece_json(piece: Piece, view: Asked, vocabulary: Vocabulary,
               texts: dict[str, str]) -> dict[str, object]:
    box = piece.box
    return {
        "traffic": describe_box(box, vocabulary, view.firewall, view.interfaces),
        "family": box.family,
        "from": cidr_list(box.src, box.family),
        "to": cidr_list(box.dst, box.family),
        "services": service_text(box.services),
        "in": _interfaces(box.in_ifaces),
        "out": _interfaces(box.out_ifaces),
        "chain": piece.chain,
        "verdict": piece.verdict,
        "rule": None if piece.rule is None else {
            "file": piece.rule.span.file, "line": piece.rule.span.line,
            "text": _source_line(piece.rule, texts)},
        "decided_by": piece.decided_by if piece.rule is None else "rule",
        "dnat": _nat_json(piece.dnat, texts),
        "snat": _nat_json(piece.snat, texts),
    }


def piece_lines(piece: Piece, texts: dict[str, str], indent: str) -> list[str]:
    chain = piece.chain.upper() if piece.chain != "local" else "loopback"
    lines = [f"{indent}{piece.verdict} ({chain})"]
    if piece.dnat is not None:
        lines.append(f"{indent}  {piece.dnat} by {piece.dnat.rule.location}: "
                     f"{_shown_line(piece.dnat.rule, texts)}")
    if piece.rule is not None:
        lines.append(f"{indent}  decided by {piece.rule.location}: "
                     f"{_shown_line(piece.rule, texts)}")
    else:
        lines.append(f"{indent}  decided by the {piece.decided_by}")
    if piece.snat is not None:
        lines.append(f"{indent}  {piece.snat} by {piece.snat.rule.location}: "
                     f"{_shown_line(piece.snat.rule, texts)}")
    return lines


def _traffic(cluster: model.Cluster, question: Question,
             resolver: FragmentResolver) -> TrafficClass:
    for iface in (question.in_interface, question.out_interface):
        if iface is not None and cluster.interface(iface) is None:
            raise UsageError(f"cluster '{cluster.name}' has no interface '{iface}' "
                             f"(it has: {', '.join(i.name for i in cluster.interfaces)})")
    source, problems = resolver.endpoint(question.source, cluster)
    destination, more = resolver.endpoint(question.destination, cluster)
    if source is None or destination is None:
        raise FragmentError(problems + more)
    return TrafficClass(source, destination, question.services, question.in_interface,
                        question.out_interface)


@dataclass(frozen=True)
class Asked:
    """What the answer needs of a member's view once its pieces are known: the view
    itself (every rule's boxes) is dropped member by member."""

    member: model.Member
    firewall: AddressSet
    interfaces: frozenset[str]


Results = list[tuple[model.Cluster, Asked, list[Piece]]]


def answer(policy: model.Policy, question: Question, resolver: FragmentResolver) \
        -> tuple[Results, list[str]]:
    """Per member of every cluster the question makes sense for; and why others were skipped.

    In a policy with several clusters an interface or `IFACE.vip` may exist in
    only some of them: those are answered, the others are named as skipped. A
    question that fits no cluster raises the first cluster's error.
    """
    out = []
    skipped: list[str] = []
    first_error: UsageError | FragmentError | None = None
    for cluster in policy.clusters:
        try:
            traffic = _traffic(cluster, question, resolver)
        except (UsageError, FragmentError) as exc:
            first_error = first_error or exc
            if isinstance(exc, FragmentError):
                skipped.append(f"cluster '{cluster.name}': "
                               + "; ".join(_one_line(d) for d in exc.diagnostics))
            else:
                skipped.append(str(exc))
            continue
        routed = question.in_interface is None or question.out_interface is None
        for member in cluster.members:
            view = MemberView(cluster, member, on_demand=True)
            pieces = classify(view, traffic)
            # parts that differ only by the interface routing picked read better together
            out.append((cluster, Asked(member, view.firewall, view.interfaces),
                        merge_routed_pieces(pieces) if routed else pieces))
    if not out and first_error is not None:
        raise first_error
    return out, skipped


@dataclass(frozen=True)
class Handled:
    """One arrival interface of the answer: who handles it (`fwc.analysis.handling`),
    the verdicts of its normal and its takeover member, and the out interfaces of the
    accepted part whose replies another member receives (an asymmetric path)."""

    cluster: model.Cluster
    item: Handling
    verdicts: dict[str, list[str]]
    replies: tuple[Handling, ...] = ()
    # interfaces of VIPs the traffic is sent to that another member holds meanwhile
    elsewhere: tuple[Handling, ...] = ()


def _pieces(results: Results, cluster: model.Cluster, member: str | None,
            interface: str) -> list[Piece]:
    """MEMBER's pieces of the answer that arrive on INTERFACE."""
    return [piece for c, view, pieces in results
            if c is cluster and view.member.name == member
            for piece in pieces if interface in piece.box.in_ifaces]


def who_handles(results: Results) -> list[Handled]:
    """Per cluster and arrival interface of the answer, who handles that traffic."""
    out = []
    # by name: hashing a cluster would hash every one of its rules
    clusters = {c.name: c for c, _, _ in results}
    for cluster in clusters.values():
        arrivals = {i for c, _, pieces in results if c is cluster
                    for piece in pieces for i in piece.box.in_ifaces}
        for item in handling(cluster, arrivals):
            members = [m for m in (item.normal, item.after_failover) if m is not None]
            verdicts = {m: list(dict.fromkeys(str(p.verdict) for p in
                                              _pieces(results, cluster, m, item.interface)))
                        for m in members}
            # A reply goes to the sender's gateway on the out interface (or to the SNAT
            # address, a VIP there): that interface's handler receives it.
            mine = _pieces(results, cluster, item.normal, item.interface)
            exits = {i for p in mine if p.accepted and p.chain == "forward"
                     for i in p.box.out_ifaces}
            replies = tuple(h for h in handling(cluster, exits)
                            if h.normal is not None and h.normal != item.normal)
            # VIPs the handler does not hold: its answer routes packets for them (FORWARD)
            elsewhere = {h.interface: h for p in mine if p.chain == "forward"
                         for h in vips_held_elsewhere(cluster, item.normal or "",
                                                      p.box.family, p.box.dst)}
            out.append(Handled(cluster, item, verdicts, replies,
                               tuple(elsewhere.values()) if item.normal else ()))
    return out


def _handling_json(row: Handled) -> dict[str, object]:
    item = row.item
    return {"cluster": row.cluster.name, "in": item.interface, "group": item.group,
            "normal": item.normal, "after_failover": item.after_failover,
            "order": list(item.order), "verdicts": row.verdicts,
            "replies": [{"out": h.interface, "group": h.group, "member": h.normal}
                        for h in row.replies],
            "vips_held_elsewhere": [{"interface": h.interface, "group": h.group,
                                     "member": h.normal} for h in row.elsewhere]}


def _handling_line(row: Handled) -> str:
    item = row.item

    def member(name: str) -> str:
        said = row.verdicts.get(name) or ["no such traffic"]
        return f"{name} ({' or '.join(said)})"

    where = "from the firewall" if item.interface == LOCAL else f"in {item.interface}"
    if item.normal is None:
        return f"  {where}: {item.why()}"
    line = f"  {where}: {member(item.normal)}, {item.why()}"
    for reply in row.replies:
        line += (f"; its replies reach {reply.normal} (out {reply.interface}: "
                 f"{reply.why()}), which holds no state for it (FWC266)")
    holders: dict[tuple[str | None, str], list[str]] = {}
    for held in row.elsewhere:
        holders.setdefault((held.normal, held.why()), []).append(f"{held.interface}.vip")
    for (holder, why), vips in holders.items():
        line += (f"; {' and '.join(vips)} {'is' if len(vips) == 1 else 'are'} {holder}'s "
                 f"({why}): {item.normal} routes such packets on to {holder} (FORWARD above) "
                 "instead of taking them in")
    if item.after_failover is not None:
        line += f"; after a failover of {item.normal}: {member(item.after_failover)}"
    return line


def run(args: argparse.Namespace) -> int:
    with without_cycle_collection(args):
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    analysis = resolved(args)
    if analysis is None or analysis.policy is None:
        return EXIT_POLICY
    policy = analysis.policy
    texts = analysis.program.texts
    try:
        resolver = FragmentResolver(analysis.program, policy)
        results, skipped = answer(policy, parse_question(args, resolver), resolver)
    except UsageError as exc:
        print(f"fwc query: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except FragmentError as exc:
        arguments = {"--from": args.source, "--to": args.destination,
                     "--service": args.service or ""}
        print_diagnostics(exc.diagnostics, arguments)
        return EXIT_USAGE
    if not policy.clusters:
        print("fwc query: error: the policy defines no cluster", file=sys.stderr)
        return EXIT_POLICY
    for reason in skipped:
        print(f"fwc query: skipped: {reason}", file=sys.stderr)
    base_vocabulary = Vocabulary.of_policy(policy)
    vocabularies = {c.name: base_vocabulary.with_cluster(c) for c in policy.clusters}
    if args.format == "json":
        report = {
            "query": {"from": args.source, "to": args.destination, "service": args.service,
                      "in": args.in_interface, "out": args.out_interface},
            "members": [
                {"cluster": cluster.name, "member": view.member.name,
                 "pieces": [piece_json(p, view, vocabularies[cluster.name], texts)
                            for p in pieces]}
                for cluster, view, pieces in results],
            "handling": [_handling_json(row) for row in who_handles(results)],
        }
        sys.stdout.write(json.dumps(report, indent=2) + "\n")
        return EXIT_OK
    service = f" service {args.service}" if args.service else ""
    where = "".join(f" {k} {v}" for k, v in (("in", args.in_interface),
                                             ("out", args.out_interface)) if v)
    print(f"query: from {args.source} to {args.destination}{service}{where}")
    for cluster, view, pieces in results:
        name = f"{cluster.name}/{view.member.name}"
        vocabulary = vocabularies[cluster.name]
        if not pieces:
            print(f"{name}: no such traffic passes this member (firewall-to-firewall only, "
                  "or no common address family)")
        elif len(pieces) == 1:
            piece = pieces[0]
            lines = piece_lines(piece, texts, "")
            print(f"{name}: {lines[0]}")
            print("\n".join("  " + line for line in lines[1:]))
        else:
            print(f"{name}: {len(pieces)} parts with different outcomes")
            for piece in pieces:
                print(f"  - {describe_box(piece.box, vocabulary, view.firewall, view.interfaces)}")
                print("\n".join(piece_lines(piece, texts, "    ")))
    shown = None
    for row in who_handles(results):
        if row.cluster is not shown:
            print(f"who handles it in {row.cluster.name} (by the interface it arrives on):")
            shown = row.cluster
        print(_handling_line(row))
    return EXIT_OK
