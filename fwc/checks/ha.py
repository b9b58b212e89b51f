"""Failover triggers and transport (FWC250-FWC269): health tracking, notify actions,
unicast VRRP, the sync-link allowance and advert timing (issue 14).

Each check guards against a setting keepalived accepts and that then does nothing,
or does the opposite of what its author meant, when it matters: on a failure.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Iterator
from pathlib import PurePosixPath

from fwc import protocols as proto
from fwc.backend.files import FILES, path_of
from fwc.checks import check, describe
from fwc.diagnostics import Diagnostic, Related, Severity, error, warning
from fwc.model import Cluster, IPAddress, Member, Policy, Track
from fwc.model.passwords import unwritable
from fwc.model.topology import held_by_cluster, link_scoped, subnet_router_anycast
from fwc.text import cut_utf8, utf8_length

E, W = Severity.ERROR, Severity.WARNING

# fwc's own directory on the node: what is in it is what `fwc compile` wrote.
FWC_NODE_DIR = PurePosixPath(path_of("fwc-notify.sh")).parent

describe("FWC256", "track weight, interval, fall or rise out of range", E, f"""
keepalived takes track weights from {proto.TRACK_WEIGHT_RANGE[0]} to
{proto.TRACK_WEIGHT_RANGE[1]} and runs track scripts every N whole seconds
({proto.TRACK_INTERVAL_RANGE_S[0]}-{proto.TRACK_INTERVAL_RANGE_S[1]}); anything
else it rounds, clamps or ignores with a log line, so the check would not run the
way it was written. `fall` and `rise` count consecutive results,
{proto.TRACK_COUNT_RANGE[0]}-{proto.TRACK_COUNT_RANGE[1]}.""")


def _clusters(policy: Policy) -> Iterator[Cluster]:
    yield from policy.clusters


def _weighted(cluster: Cluster) -> Iterator[Track]:
    yield from (t for t in cluster.tracks if t.weight)


def priority_after(track: Track, member: Member, failed: bool) -> int:
    """MEMBER's effective priority with TRACK failed or good, capped as keepalived caps."""
    weight = track.weight or 0
    if weight < 0:
        value = member.priority + (weight if failed else 0)
    else:
        value = member.priority + (0 if failed else weight)
    low, high = proto.PRIORITY_RANGE
    return max(low, min(high, value))


@check("FWC250", "track weight too small to change the master", E, """
A weighted track moves a member's priority instead of putting it in FAULT: a
negative weight is subtracted when the check fails, a positive one added while
it is good. It only moves the VIPs when the master's priority with the check
failed falls below the next member's with the check good. With priorities 150
and 100, `weight -30` leaves the failed master at 120, still above 100: the
gateway is gone and the VIPs stay where they are. The weight must be larger
than the gap between the master and the next priority (equal priorities do not
count: VRRP then elects by address). keepalived keeps a priority within 1-254,
which the check applies too. Each track is judged alone: a failure of one
check is the case it is written for.""")
def weight_too_small(policy: Policy) -> Iterable[Diagnostic]:
    for cluster in _clusters(policy):
        members = sorted((m for m in cluster.members if m.priority >= 1),
                         key=lambda m: -m.priority)
        if len(members) < 2:
            continue
        master, second = members[0], members[1]
        for track in _weighted(cluster):
            failed = priority_after(track, master, failed=True)
            good = priority_after(track, second, failed=False)
            if failed < good:
                continue
            gap = master.priority - second.priority
            yield error("FWC250", f"track weight {track.weight} cannot move the VIPs: "
                        f"'{master.name}' with the check failed has priority {failed}, "
                        f"'{second.name}' {good}", track.span_of("weight"),
                        hint=f"use a weight beyond {'-' if (track.weight or 0) < 0 else ''}"
                        f"{gap} (the gap between {master.priority} and {second.priority}), "
                        "or no weight to put the member in FAULT")


@check("FWC251", "weighted tracking with preempt off", E, """
A weighted track lowers the master's priority below a backup's, and the backup
then has to preempt: with `preempt off` (keepalived's nopreempt) a backup never
takes the VIPs from a running master, whatever the priorities, so the weight
never moves anything. Use an unweighted track (FAULT hands the VIPs over with
or without preemption) or turn preemption on.""")
def weight_without_preempt(policy: Policy) -> Iterable[Diagnostic]:
    for cluster in _clusters(policy):
        if cluster.vrrp.preempt:
            continue
        for track in _weighted(cluster):
            yield error("FWC251", f"track weight {track.weight} never moves the VIPs with "
                        "'preempt off'", track.span_of("weight"),
                        hint="drop the weight (a failed check then puts the member in FAULT), "
                        "or remove 'preempt off'",
                        related=[Related(cluster.vrrp.span_of("preempt") or cluster.span,
                                         "preemption turned off here")])


# The longest text a track line can quote: `    process "TEXT"` within keepalived's line.
TRACK_TEXT_MAX = proto.KEEPALIVED_LINE_MAX - len('    process ""')


@check("FWC252", "track script not runnable as written", E, f"""
keepalived runs a track script by the command line written in keepalived.conf,
as root (`script_user root`, with `enable_script_security`: a script that a
non-root user could change is refused at run time, silently for `keepalived
-t`). The program must be an absolute path: keepalived's search path is not
the shell's, and a relative name is resolved differently on every node.
{FWC_NODE_DIR} holds what `fwc compile` writes, and none of those files is a
health check, so a script there does not exist in the compiled tree. A double
quote cannot be written in keepalived.conf (it has no escape), and neither can a
`$`: keepalived replaces `$NAME` and `${{NAME}}` inside quotes too, with its own
built-ins (`${{_RANDOM}}` is a random number, a long one an unterminated quote that
turns the rest of the block into unknown keywords), so the command run would not be
the one written. The same holds for a process name, which must not be empty (no
process has no name: every member would stay in FAULT). fwc's password placeholder
(`@FWCPW@`, written by `--redact-secrets`) is refused too: `fwc install` replaces it
in keepalived.conf, and would put the password on a command line. keepalived reads
lines of at most 1023 bytes: a longer command would be cut and its rest misread.
keepalived splits a script into words itself, not through a shell: single quotes
group words and must pair up (`it's` drops the script: "No script set"), and a
backslash starts an escape (`\\t` is a tab), so a script holds no backslash; a
process name that ends in a backslash would escape its closing quote, and one that
is only `}}` would end the block. keepalived compares a process name with the kernel's
(/proc/PID/comm), which keeps {proto.PROCESS_NAME_MAX} bytes of it: a longer name never
matches, and every member would stay in FAULT.""")
def script_path(policy: Policy) -> Iterable[Diagnostic]:
    generated = {PurePosixPath(f.path) for f in FILES}
    for cluster in _clusters(policy):
        for track in cluster.tracks:
            if track.kind not in ("script", "process"):
                continue
            problem = unwritable(track.target, quote_ok=False)
            if problem is not None:
                yield error("FWC252", f"track {track.kind} '{track.target}' holds {problem}, "
                            "which keepalived.conf cannot carry as written", track.span,
                            hint="move the command into a script file and name that")
                continue
            if utf8_length(track.target) > TRACK_TEXT_MAX:
                yield error("FWC252", f"track {track.kind} is {utf8_length(track.target)} "
                            f"bytes long; keepalived reads lines of at most "
                            f"{proto.KEEPALIVED_LINE_MAX} bytes", track.span,
                            hint=f"keep it under {TRACK_TEXT_MAX + 1} bytes: move the "
                            "command into a script file and name that")
                continue
            if proto.REDACTED_PASSWORD in track.target:
                yield error("FWC252", f"track {track.kind} '{track.target}' holds "
                            f"'{proto.REDACTED_PASSWORD}', the placeholder fwc install "
                            "replaces with the VRRP password", track.span,
                            hint="remove it: the password would be on a command line")
                continue
            if track.kind == "process":
                if not track.target.strip():
                    yield error("FWC252", "track process names no process", track.span,
                                hint="name the process to watch: an empty name never "
                                "runs, so every member would stay in FAULT")
                elif utf8_length(track.target) > proto.PROCESS_NAME_MAX:
                    yield _process_name_too_long(track)
                continue
            if "\\" in track.target or track.target.count("'") % 2:
                yield error("FWC252", f"track script '{track.target}' holds a backslash or an "
                            "unpaired single quote, which keepalived reads as an escape or "
                            "a quote when it splits the command into words", track.span,
                            hint="move the command into a script file and name that")
                continue
            words = track.target.split()
            program = PurePosixPath(words[0]) if words else None
            if program is None or not program.is_absolute():
                yield error("FWC252", f"track script '{track.target}' does not start with an "
                            "absolute path", track.span,
                            hint="write the program's full path, e.g. /usr/local/sbin/check-vpn")
            elif program in generated:
                yield error("FWC252", f"track script '{program}' is a file fwc generates, "
                            "not a health check", track.span,
                            hint="name the admin's own check script")
            elif FWC_NODE_DIR in program.parents:
                yield error("FWC252", f"track script '{program}' does not exist in the "
                            f"compiled tree: {FWC_NODE_DIR} holds only what fwc compile "
                            "writes", track.span,
                            hint=f"install the script outside {FWC_NODE_DIR}, e.g. in "
                            "/usr/local/sbin, and name that path")


def _process_name_too_long(track: Track) -> Diagnostic:
    kept = cut_utf8(track.target, proto.PROCESS_NAME_MAX)
    return error("FWC252", f"track process '{track.target}' has {utf8_length(track.target)} "
                 f"bytes; the kernel keeps {proto.PROCESS_NAME_MAX} bytes of a process's name, "
                 "and keepalived compares the whole name with them, so it never matches",
                 track.span, hint=f'write the name as /proc/PID/comm shows it: '
                 f'process "{kept}"')


@check("FWC253", "tracked interface is not a member device", E, """
`track { interface NAME }` names a logical interface of the cluster; each
member tracks its own device for it. A name that is not an interface (often a
device name such as `eth1`, which differs between members) tracks nothing
keepalived can find on some member, and keepalived drops the track.""")
def tracked_interface(policy: Policy) -> Iterable[Diagnostic]:
    for cluster in _clusters(policy):
        for track in cluster.tracks:
            if track.kind != "interface" or cluster.interface(track.target) is not None:
                continue
            owners = [(m.name, link.interface) for m in cluster.members for link in m.links
                      if link.device == track.target]
            hint = f"'{track.target}' is the device of " + ", ".join(
                f"'{i}' on {m}" for m, i in owners) + f"; write 'interface {owners[0][1]}'" \
                if owners else "name one of: " + ", ".join(i.name for i in cluster.interfaces)
            yield error("FWC253", f"tracked interface '{track.target}' is not an interface of "
                        f"cluster '{cluster.name}'", track.span, hint=hint)


@check("FWC254", "sync link tracked", E, """
A cut sync cable is down on every member at once. Tracked without a weight, it
puts every member in FAULT: nobody holds the VIPs (seen in the lab). With a
weight, every member loses the same amount and nothing moves. conntrackd's
own links (the sync link and its `backup-link`) are watched by conntrackd;
keepalived must not track them.""")
def sync_link_tracked(policy: Policy) -> Iterable[Diagnostic]:
    for cluster in _clusters(policy):
        for track in cluster.tracks:
            if track.kind == "interface" and track.target in cluster.sync.links:
                what = "puts every member in FAULT (no VIPs anywhere)" if not track.weight \
                    else "lowers every member alike (nothing moves)"
                yield error("FWC254", f"tracking the sync link '{track.target}': a cut cable "
                            f"{what}", track.span,
                            hint="track the user-facing interfaces or a gateway instead")


@check("FWC255", "ping target not on a segment", E, """
`track { ping ADDRESS }` pings a neighbour (the uplink gateway) from the
member's device on the segment that holds the address, so that a dead link or
gateway is what fails, not the routing table. The address must be in the
subnet of a member's interface, and must not be one of the firewall's own
addresses or VIPs (the master would ping itself), nor the Subnet-Router anycast
address of a member's IPv6 subnet, which every member holds as a router: measured
with Linux 6.18, `ping -I DEV 2001:db8:ff::` was answered by the member itself with
every other node of the link down. An IPv6 link-local target (fe80::/10) is on every
link with a link-local address: it is accepted only where each member has such
addresses on one link, which is then the ping's device (with two, fwc would ping from
the first, maybe the wrong link, and the track would measure nothing), and it is the
firewall's own only as a member's or VIP's address on that link.""")
def ping_target(policy: Policy) -> Iterable[Diagnostic]:
    for cluster in _clusters(policy):
        for track in cluster.tracks:
            if track.kind != "ping":
                continue
            address = ipaddress.ip_address(track.target)
            if _pinged_own(cluster, address):
                yield error("FWC255", f"ping target {address} is the firewall's own address",
                            track.span, hint="ping the neighbour (gateway) on the segment")
                continue
            for member in cluster.members:
                links = member.links_on(address)
                if not links:
                    yield error("FWC255", f"ping target {address} is on no segment of member "
                                f"'{member.name}'", track.span,
                                hint="ping a neighbour on one of the cluster's segments, e.g. "
                                "the uplink gateway")
                    break
                if len(links) > 1 and link_scoped(address):
                    names = " and ".join(f"'{link.interface}'" for link in links)
                    yield error("FWC255", f"ping target {address} is link-local, and member "
                                f"'{member.name}' has link-local addresses on {names}: "
                                "which link the neighbour is on is not written", track.span,
                                hint="ping the neighbour's global address, or give the "
                                "members link-local addresses only on its link")
                    break


def _pinged_own(cluster: Cluster, address: IPAddress) -> bool:
    """Whether a ping of ADDRESS reaches a node of CLUSTER: a member's address or a VIP
    (a link-local one on the link the members ping it on), or a Subnet-Router anycast."""
    links = {link.interface for m in cluster.members for link in m.links_on(address)[:1]} \
        if link_scoped(address) else {None}
    return any(held_by_cluster(cluster, address, link) for link in links) \
        or subnet_router_anycast(cluster, address) is not None


@check("FWC257", "unweighted gateway ping", W, """
A gateway is shared: when it fails, it fails for every member. An unweighted
ping puts each member whose ping fails in FAULT, so a dead gateway leaves no
member holding any VIP, and the inside segments lose their gateway too. With a
weight the members' priorities move alike and the current master stays.""")
def unweighted_ping(policy: Policy) -> Iterable[Diagnostic]:
    for cluster in _clusters(policy):
        for track in cluster.tracks:
            if track.kind == "ping" and track.weight is None:
                yield warning("FWC257", f"unweighted ping of {track.target}: if it stops "
                              "answering, every member goes to FAULT", track.span,
                              hint="give it a weight larger than the priority gap, "
                              "e.g. 'weight -60'")


@check("FWC258", "empty notify action", E, """
`notify { STATE "COMMAND" }` runs the command after fwc's conntrackd steps of
that transition. An empty command runs nothing and says so nowhere.""")
def empty_action(policy: Policy) -> Iterable[Diagnostic]:
    for cluster in _clusters(policy):
        for action in cluster.notify_actions:
            if not action.command.strip():
                yield error("FWC258", f"notify action for '{action.state}' is empty",
                            action.span, hint="write the command, or remove the line")


@check("FWC259", "sync allowance opens a whole protocol", E, """
`sync { allow ... }` opens management traffic between the members' sync
addresses on a link that carries conntrackd's unauthenticated state. It must
name what is needed (ssh, ntp, an ICMP type): a service without ports (`tcp`,
`udp`, `gre`, a bare protocol) opens everything of that protocol to the peer,
conntrackd's port included.""")
def sync_allow_bounded(policy: Policy) -> Iterable[Diagnostic]:
    for cluster in _clusters(policy):
        sync = cluster.sync
        for match in sync.allow:
            if match.ports or match.icmp_type is not None:
                continue
            yield error("FWC259", f"sync allowance '{match}' opens all of {match.protocol}",
                        sync.span_of("allow"), hint="name ports (tcp/22) or an ICMP type "
                        "(icmp/echo-request)")


@check("FWC260", "advert interval too short to be safe", W, f"""
The backup takes over when it has heard nothing for three adverts plus a skew
(keepalived's master down interval). Below {proto.VRRP_SAFE_ADVERT_MS} ms that
is a stall of a few tens of milliseconds of the master: a busy CPU, a ruleset
reload, a link renegotiation or a full queue on a loaded link. Then both
members are master for a moment and the VIPs flap, which costs more than the
failover time it saves. What shorter adverts buy is small: the lab measured
the echo gap of a crash at 0.74 s with 100 ms adverts whether the backup took
over after 0.11 s or 0.40 s (docs/lab.md, "Failover times"), because TCP's own
retransmission timer (at least 200 ms, doubling) sets the pace.""")
def advert_too_short(policy: Policy) -> Iterable[Diagnostic]:
    for cluster in _clusters(policy):
        vrrp = cluster.vrrp
        if vrrp.advert_ms < proto.VRRP_SAFE_ADVERT_MS:
            yield warning("FWC260", f"advert {vrrp.advert_ms} ms: a master stall of "
                          f"{3 * vrrp.advert_ms} ms already moves the VIPs",
                          vrrp.span_of("advert") or cluster.span,
                          hint=f"use at least {proto.VRRP_SAFE_ADVERT_MS}ms "
                          "(docs/lab.md measures the failover times)")
