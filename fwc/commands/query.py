"""`fwc query FILE --from A --to B [--service S] [--in I] [--out O]`: what happens, per member.

A and B are comma-separated lists of addresses, networks, ranges, object names,
`IFACE.vip`, `any` or `firewall` (each may be negated with `!`), exactly as in a
rule. The answer is the analysis engine's partition of that traffic: per
member, every part with its own outcome, the policy line that decides it (or
the default policy) and the NAT applied. Exit 0 with an answer, 1 when the
policy has errors, 2 on a usage error.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import sys
from dataclasses import dataclass

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
from fwc.analysis.space import LOCAL
from fwc.diagnostics import Span, has_errors, print_diagnostics
from fwc.frontend import syntax as s
from fwc.frontend.loader import LoadedProgram
from fwc.model.addresses import AddressSet
from fwc.pipeline import analyse

EXIT_OK, EXIT_POLICY, EXIT_USAGE = 0, 1, 2
COMMAND_LINE = Span("<command line>", 0, 0, 0, 0)


class UsageError(Exception):
    """A bad command-line value: reported in one line, exit status 2."""


@dataclass(frozen=True)
class Question:
    source: str
    destination: str
    services: tuple[model.ServiceMatch, ...]
    service_text: str | None
    in_interface: str | None
    out_interface: str | None


# -- parsing the command line ------------------------------------------------------------
def _address_item(text: str, policy: model.Policy, cluster: model.Cluster,
                  negated: bool) -> model.EndpointItem:
    if text in ("any", "firewall"):
        return model.EndpointItem(text, text, AddressSet(), negated, None, COMMAND_LINE)
    if text.endswith(".vip"):
        iface = cluster.interface(text[: -len(".vip")])
        if iface is None or not iface.vips:
            raise UsageError(f"'{text}': cluster '{cluster.name}' has no interface "
                             f"'{text[:-4]}' with a VIP")
        return model.EndpointItem("vip", text, AddressSet.of(*(v.ip for v in iface.vips)),
                                  negated, None, COMMAND_LINE)
    if text in policy.objects:
        return model.EndpointItem("object", text, policy.objects[text].addresses, negated, text,
                                  COMMAND_LINE)
    if "-" in text and text[0].isdigit() or ("-" in text and ":" in text):
        first, _, last = text.partition("-")
        try:
            low, high = ipaddress.ip_address(first), ipaddress.ip_address(last)
        except ValueError:
            raise UsageError(f"'{text}' is not an address range (FIRST-LAST)") from None
        if low.version != high.version or int(high) < int(low):
            raise UsageError(f"'{text}' is not a valid range (same family, FIRST <= LAST)")
        return model.EndpointItem("literal", text, AddressSet.from_range(low, high), negated,
                                  None, COMMAND_LINE)
    try:
        network = ipaddress.ip_network(text, strict=True)
    except ValueError as exc:
        if text[:1].isdigit() or ":" in text:
            raise UsageError(f"'{text}' is not a valid address or network ({exc})") from None
        raise UsageError(f"'{text}' is neither an address nor an object of the policy "
                         "(nor any, firewall, IFACE.vip)") from None
    return model.EndpointItem("literal", text, AddressSet.of(network), negated, None,
                              COMMAND_LINE)


def parse_endpoint(text: str, policy: model.Policy, cluster: model.Cluster) -> model.Endpoint:
    items = []
    for raw in text.split(","):
        word = raw.strip()
        negated = word.startswith("!")
        word = word.removeprefix("!").strip()
        if not word:
            raise UsageError(f"empty item in '{text}'")
        items.append(_address_item(word, policy, cluster, negated))
    return model.Endpoint(tuple(items))


def parse_services(text: str | None, policy: model.Policy) -> tuple[model.ServiceMatch, ...]:
    if not text:
        return ()
    from fwc.frontend.resolve import Resolver

    resolver = Resolver(LoadedProgram("", (), ()))
    out: list[model.ServiceMatch] = []
    # Specs may contain commas (tcp/80,443); split on commas that start a new item.
    items: list[str] = []
    for part in text.split(","):
        part = part.strip()
        if items and "/" in items[-1] and part and (part[0].isdigit() or "-" in part[:1]) \
                and "/" not in part:
            items[-1] += "," + part
        else:
            items.append(part)
    for item in items:
        if not item:
            raise UsageError(f"empty service in '{text}'")
        if item in policy.services:
            out.extend(policy.services[item].matches)
            continue
        kind = "spec" if "/" in item else "name"
        if kind == "name" and item not in resolver_protocols():
            raise UsageError(f"unknown service '{item}' (a service of the policy, a protocol "
                             "name, or a spec such as tcp/22, udp/53, icmp/echo-request)")
        got = resolver.service_item(s.ServiceRef(kind, item, COMMAND_LINE))
        if resolver.diagnostics or not got:
            why = resolver.diagnostics[0].message if resolver.diagnostics else "unknown"
            raise UsageError(f"bad service '{item}': {why}")
        out.extend(got)
    return tuple(out)


def resolver_protocols() -> frozenset[str]:
    from fwc.protocols import IP_PROTOCOLS

    return frozenset(IP_PROTOCOLS)


# -- answering --------------------------------------------------------------------------
def _source_line(rule: model.Rule, texts: dict[str, str]) -> str:
    text = texts.get(rule.span.file)
    if text is not None:
        lines = text.splitlines()
        if 1 <= rule.span.line <= len(lines):
            return " ".join(lines[rule.span.line - 1].split())
    return rule.text()


def _nat_json(step: NatStep | None, texts: dict[str, str]) -> dict[str, object] | None:
    if step is None:
        return None
    return {"kind": step.kind, "address": step.address, "port": step.port,
            "file": step.rule.span.file, "line": step.rule.span.line,
            "text": _source_line(step.rule, texts)}


def _interfaces(ifaces: frozenset[str]) -> list[str]:
    return sorted(i for i in ifaces if i != LOCAL)


def piece_json(piece: Piece, view: MemberView, vocabulary: Vocabulary,
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
                     f"{_source_line(piece.dnat.rule, texts)}")
    if piece.rule is not None:
        lines.append(f"{indent}  decided by {piece.rule.location}: "
                     f"{_source_line(piece.rule, texts)}")
    else:
        lines.append(f"{indent}  decided by the {piece.decided_by}")
    if piece.snat is not None:
        lines.append(f"{indent}  {piece.snat} by {piece.snat.rule.location}: "
                     f"{_source_line(piece.snat.rule, texts)}")
    return lines


def _traffic(policy: model.Policy, cluster: model.Cluster, question: Question) -> TrafficClass:
    for iface in (question.in_interface, question.out_interface):
        if iface is not None and cluster.interface(iface) is None:
            raise UsageError(f"cluster '{cluster.name}' has no interface '{iface}' "
                             f"(it has: {', '.join(i.name for i in cluster.interfaces)})")
    return TrafficClass(parse_endpoint(question.source, policy, cluster),
                        parse_endpoint(question.destination, policy, cluster),
                        question.services, question.in_interface, question.out_interface)


def answer(policy: model.Policy, question: Question) \
        -> tuple[list[tuple[model.Cluster, MemberView, list[Piece]]], list[str]]:
    """Per member of every cluster the question makes sense for; and why others were skipped.

    In a policy with several clusters an interface or `IFACE.vip` may exist in
    only some of them: those are answered, the others are named as skipped. A
    question that fits no cluster is a usage error.
    """
    out = []
    skipped: list[str] = []
    for cluster in policy.clusters:
        try:
            traffic = _traffic(policy, cluster, question)
        except UsageError as exc:
            if len(policy.clusters) == 1:
                raise
            skipped.append(str(exc))
            continue
        routed = question.in_interface is None or question.out_interface is None
        for member in cluster.members:
            view = MemberView(cluster, member)
            pieces = classify(view, traffic)
            # parts that differ only by the interface routing picked read better together
            out.append((cluster, view, merge_routed_pieces(pieces) if routed else pieces))
    if not out and skipped:
        raise UsageError(skipped[0])
    return out, skipped


def run(args: argparse.Namespace) -> int:
    analysis = analyse(args.file, run_checks=False, include_path=args.include_path)
    if analysis.policy is None or has_errors(analysis.diagnostics):
        print_diagnostics([d for d in analysis.diagnostics if d.is_error],
                          analysis.program.texts)
        return EXIT_POLICY
    policy = analysis.policy
    texts = analysis.program.texts
    try:
        question = Question(args.source, args.destination,
                            parse_services(args.service, policy), args.service,
                            args.in_interface, args.out_interface)
        results, skipped = answer(policy, question)
    except UsageError as exc:
        print(f"fwc query: error: {exc}", file=sys.stderr)
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
    return EXIT_OK
