"""What a cluster's packet filter can express (FWC230-FWC234, FWC429).

A policy feature the chosen backend (`backend iptables|nftables`, or `fwc
compile --backend`) has no form for is an error with the rule's line, before
anything is written: never a rule silently left out, never a file that the
node's loader refuses at install time, never an internal error of a renderer.

`problems(policy, backend)` runs them all for one backend; the registered
checks run them for each cluster's own `backend`, and `fwc compile --backend`
runs them again for the backend it writes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from fwc import protocols as proto
from fwc.backend.capabilities import nftables_gaps
from fwc.backend.lower.build import log_prefix
from fwc.checks import check
from fwc.diagnostics import Diagnostic, Severity, error
from fwc.model import Cluster, Policy
from fwc.model.vocabulary import Backend, FilterAction, NatAction

# What each backend's rule text cannot hold, as data: the characters a log prefix
# cannot contain (nft strings have no escape for a double quote, and nft expands '$';
# iptables-restore quotes and escapes both).
LOG_PREFIX_UNWRITABLE = {Backend.IPTABLES: "", Backend.NFTABLES: proto.NFT_LOG_PREFIX_UNQUOTABLE}

ClusterCheck = Callable[[Cluster, Backend], Iterator[Diagnostic]]


def _clusters(policy: Policy, backend: Backend | None, one: ClusterCheck) \
        -> Iterator[Diagnostic]:
    for cluster in policy.clusters:
        yield from one(cluster, backend or cluster.backend)


# -- FWC230 -------------------------------------------------------------------------------

def _log_prefix(cluster: Cluster, backend: Backend) -> Iterator[Diagnostic]:
    bad = LOG_PREFIX_UNWRITABLE[backend]
    if not bad:
        return
    prefixes = [(log_prefix(rule)[0], rule.span) for rule in cluster.all_rules() if rule.log]
    logging = cluster.logging
    if logging.drops and logging.drops_prefix is not None:
        prefixes.append((logging.drops_prefix, logging.span_of("log-drops")))
    for prefix, span in prefixes:
        found = sorted({c for c in prefix if c in bad})
        if found:
            yield error("FWC230", f"the {backend} backend cannot write a log prefix containing "
                        f"{' or '.join(repr(c) for c in found)}", span,
                        hint="remove the character from the log text, or use "
                        "`backend iptables`")


@check("FWC230", "log prefix the backend cannot write", Severity.ERROR, """
The log prefix is copied into the rule as a quoted string. nftables has no
escape for a double quote inside a string (`log prefix "..."`), and it replaces
`$name` there with a `define` (an unknown name fails the whole file, and with it
the boot: the fallback table then has no management access), so a prefix holding
either cannot be written for `backend nftables` (iptables-restore quotes and
escapes both). The cluster's `log { drops "..." }` prefix too. Leaving the log
out, or cutting the text, would change what the rule does without a word: the
rule is refused instead.""")
def log_prefix_backend(policy: Policy) -> Iterable[Diagnostic]:
    return _clusters(policy, None, _log_prefix)


# -- FWC231 -------------------------------------------------------------------------------

def _helpers(cluster: Cluster, backend: Backend) -> Iterator[Diagnostic]:
    for rule in cluster.rules:
        if rule.action is not FilterAction.ACCEPT:
            continue  # helpers are assigned for accepted traffic only
        seen: set[tuple[str, str]] = set()
        for match in rule.services:
            if match.helper is None:
                continue
            pair = (match.helper, match.protocol)
            if pair in proto.CONNTRACK_HELPER_KERNEL_NAMES or pair in seen:
                continue
            seen.add(pair)
            served = sorted(p for h, p in proto.CONNTRACK_HELPER_KERNEL_NAMES
                            if h == match.helper)
            yield error("FWC231", f"conntrack helper '{match.helper}' cannot be assigned to "
                        f"{match}: the kernel's {match.helper} helper serves only "
                        f"{', '.join(served)}", rule.span,
                        hint=f"give the helper only to the {'/'.join(served)} part: a service "
                        "of its own for the other protocols")


@check("FWC231", "conntrack helper on a protocol it does not serve", Severity.ERROR, """
`helper NAME` applies to every protocol of the service. The kernel has each
helper only for its own protocol(s) (ftp for TCP, tftp for UDP, sip for both,
h323 as Q.931 over TCP and RAS over UDP, ...). Neither backend can express the
assignment for another protocol: iptables' `CT --helper` is refused by the
kernel when the rules load (at install time, after `iptables-restore --test`
passed), and an nftables `ct helper` object exists per protocol. Split the
service so that the helper names only the protocol it serves.""")
def helper_protocols(policy: Policy) -> Iterable[Diagnostic]:
    return _clusters(policy, None, _helpers)


# -- FWC232 -------------------------------------------------------------------------------

def _dnat_ports(cluster: Cluster, backend: Backend) -> Iterator[Diagnostic]:
    for rule in cluster.nat:
        if rule.action is not NatAction.DNAT or rule.target is None \
                or rule.target.port is None:
            continue
        portless = sorted({m.protocol for m in rule.services
                           if m.protocol not in proto.PORT_PROTOCOLS})
        if not rule.services or portless:
            what = ", ".join(portless) if rule.services else "every protocol (no service)"
            yield error("FWC232", f"dnat to port {rule.target.port} needs traffic with ports; "
                        f"this rule also translates {what}", rule.span,
                        hint="name only tcp, udp, sctp or dccp services in a dnat with a port, "
                        "or drop the port")


@check("FWC232", "dnat to a port for traffic without ports", Severity.ERROR, """
`dnat ... -> ADDR:PORT` rewrites the destination port, which only TCP, UDP,
SCTP and DCCP have. iptables refuses such a DNAT rule for any other protocol
(or without a protocol) when the rules load, so the install would fail on the
node; nftables would take the port as the other protocol's own field (a GRE
key, say) and translate something else than written. The rule must name only
services with ports.""")
def dnat_port_protocols(policy: Policy) -> Iterable[Diagnostic]:
    return _clusters(policy, None, _dnat_ports)


# -- FWC429 -------------------------------------------------------------------------------

def _unwritten(cluster: Cluster, backend: Backend) -> Iterator[Diagnostic]:
    if backend is not Backend.NFTABLES:
        return
    for what, span in nftables_gaps(cluster):
        yield error("FWC429", f"{what} is not yet supported by the nftables backend", span,
                    hint="use `backend iptables` for this cluster (or compile without "
                    "--backend nftables)")


@check("FWC429", "not yet supported by the nftables backend", Severity.ERROR, """
Some of the vocabulary is written for iptables only so far. The nftables backend
writes limits, connection limits, `syn-limit`, `notrack`, MSS clamping and DNAT
load sharing; what is left is load sharing that nft's `numgen` map cannot hold:
a backend that is an address or port range, or a pool where some backends have a
port and others keep the packet's own. A cluster with `backend nftables` (or
`fwc compile --backend nftables`) that uses it is refused rather than compiled
without it: a backend never drops a rule's condition silently. Use `backend
iptables` for that cluster, or give every backend a single address (and port).""")
def nftables_unwritten(policy: Policy) -> Iterable[Diagnostic]:
    return _clusters(policy, None, _unwritten)


CHECKS: tuple[ClusterCheck, ...] = (_log_prefix, _helpers, _dnat_ports, _unwritten)


def problems(policy: Policy, backend: Backend | None = None) -> list[Diagnostic]:
    """Every capability diagnostic of POLICY written for BACKEND (None: each cluster's own)."""
    return [d for one in CHECKS for d in _clusters(policy, backend, one)]

