"""Target conntrackd: conntrackd.conf, the state replication of one member."""

from __future__ import annotations

from fwc import protocols as proto
from fwc.backend.files import GeneratedFile
from fwc.backend.render.context import MemberBuild
from fwc.backend.render.templates import render_template
from fwc.model import Cluster, IPInterface, Member, Sync
from fwc.model.records import dataclass


@dataclass(frozen=True, slots=True)
class SyncTransport:
    kind: str  # multicast or unicast
    device: str
    own_address: str
    port: int
    group: str | None = None
    peer_address: str | None = None


def mode_options(mode: str, sync: Sync | None = None) -> tuple[str, tuple[tuple[str, object], ...]]:
    """The Mode block: the grammar is mode-specific (docs/ha-pitfalls.md). SYNC's tuning adds
    CommitTimeout (every mode) and DisableExternalCache (FTFW and NOTRACK only: ALARM's
    grammar has no such clause, FWC272).

    StartupResync (FTFW and NOTRACK): a conntrackd that starts asks its peer for every
    state. Without it a restarted daemon (a crash under `Restart=on-failure`, a package
    upgrade) holds only what changes after it started; an idle long-lived connection
    is then missing from its external cache and lost at the next failover (measured:
    0 of 1 entries three seconds after a restart without it, 1 of 1 with it)."""
    external = "Off" if sync is None or sync.external_cache else "On"
    commit: tuple[tuple[str, object], ...] = ()
    if sync is not None and sync.commit_timeout_s is not None:
        commit = (("CommitTimeout", sync.commit_timeout_s),)
    if mode == "notrack":
        return "NOTRACK", (("DisableInternalCache", "Off"), ("DisableExternalCache", external),
                           *commit, ("PurgeTimeout", proto.CONNTRACKD_PURGE_TIMEOUT),
                           ("StartupResync", "On"))
    if mode == "alarm":
        return "ALARM", (("RefreshTime", proto.ALARM_REFRESH_TIME),
                         ("CacheTimeout", proto.ALARM_CACHE_TIMEOUT), *commit,
                         ("PurgeTimeout", proto.CONNTRACKD_PURGE_TIMEOUT))
    return "FTFW", (("ResendQueueSize", proto.FTFW_RESEND_QUEUE_SIZE), *commit,
                    ("PurgeTimeout", proto.CONNTRACKD_PURGE_TIMEOUT),
                    ("ACKWindowSize", proto.FTFW_ACK_WINDOW_SIZE),
                    ("DisableExternalCache", external), ("StartupResync", "On"))


def _first_v4(addresses: tuple[IPInterface, ...]) -> IPInterface | None:
    return next((a for a in addresses if a.version == 4), None)


def sync_transport(cluster: Cluster, member: Member, name: str | None = None) \
        -> SyncTransport | None:
    """The transport over link NAME (default: the sync link); None when the member has no
    IPv4 address on it (a check reports it)."""
    sync = cluster.sync
    name = name or sync.link
    link = member.link(name) if name else None
    own = _first_v4(link.addresses) if link else None
    if link is None or own is None or name is None:
        return None
    if sync.transport == "multicast":
        return SyncTransport("multicast", link.device, str(own.ip), sync.port_of(name),
                             group=str(sync.group))
    peers = [a for m in cluster.members if m.name != member.name
             for pl in [m.link(name)] if pl is not None
             for a in [_first_v4(pl.addresses)] if a is not None]
    if not peers:
        return None
    return SyncTransport("unicast", link.device, str(own.ip), sync.port_of(name),
                         peer_address=str(peers[0].ip))


def sync_transports(cluster: Cluster, member: Member) -> list[SyncTransport]:
    """Every dedicated link's transport, the default one first; empty without the first."""
    first = sync_transport(cluster, member)
    if first is None:
        return []
    out = [first]
    for name in cluster.sync.links[1:]:
        backup = sync_transport(cluster, member, name)
        if backup is not None:
            out.append(backup)
    return out


def hash_size(cluster: Cluster) -> int:
    return cluster.sync.hash_size or proto.CONNTRACKD_HASHSIZE


def conntrack_max(cluster: Cluster) -> int:
    return cluster.sync.conntrack_max or proto.NF_CONNTRACK_MAX


def synced_protocols(cluster: Cluster) -> list[str]:
    """conntrackd's Protocol Accept list: the policy's `protocols`, else every protocol."""
    if cluster.sync.protocols:
        return [proto.SYNC_PROTOCOL_NAMES[p] for p in cluster.sync.protocols]
    return [p for p in proto.SYNCED_PROTOCOLS
            if p != proto.SYNCED_PROTOCOL_V6_ONLY or 6 in cluster.families]


def ignored_addresses(cluster: Cluster) -> list[tuple[int, str]]:
    """Loopback, every member address and every VIP, one address each: nothing forwarded.

    conntrackd leaves out a connection whose original or reply source is in the list.
    A network here (the sync link's subnet, as conntrack-tools' example has it) would
    also cover any forwarded host or routed network inside it: a sync link numbered
    10.0.0.0/8 next to a LAN 10.1.0.0/24 silently kept every LAN connection from the
    peer. The members' own sync addresses are listed like every member address, and
    nothing else talks on the dedicated link (FWC217, FWC218)."""
    out: list[tuple[int, str]] = [(4, "127.0.0.1"), (6, "::1")]
    for member in cluster.members:
        for link in member.links:
            out.extend((a.version, str(a.ip)) for a in link.addresses)
    for iface in cluster.interfaces:
        out.extend((v.version, str(v.ip)) for v in iface.vips)
    return list(dict.fromkeys(out))


def uses_helpers(cluster: Cluster) -> bool:
    """A rule of the cluster names a conntrack helper: a walk over every rule's services,
    once per run (on the cluster's memo), not once per member."""
    return cluster.memo.get(("uses-helpers",), lambda: any(
        s.helper for rule in cluster.all_rules() for s in rule.services))


def conntrackd_conf(cluster: Cluster, member: Member) -> str | None:
    """None when the member has no IPv4 address on the sync link (a check reports it)."""
    transports = sync_transports(cluster, member)
    if not transports:
        return None
    mode, options = mode_options(cluster.sync.mode, cluster.sync)
    return render_template("conntrackd.conf.j2", {
        "cluster": cluster.name,
        "member": member.name,
        "mode": {"name": mode, "options": options},
        "transport": transports[0],
        "transports": transports,
        "socket_buffer": proto.CONNTRACKD_SOCKET_BUFFER,
        "expectation_sync": uses_helpers(cluster),
        "hash_size": hash_size(cluster),
        "hash_limit": proto.CONNTRACKD_HASHLIMIT_FACTOR * conntrack_max(cluster),
        "states": [proto.SYNC_TCP_STATES[s] for s in cluster.sync.states],
        "lock_file": proto.NODE_CONNTRACKD_LOCK,
        "socket": proto.NODE_CONNTRACKD_SOCKET,
        "netlink_buffer": proto.CONNTRACKD_NETLINK_BUFFER,
        "netlink_buffer_max": proto.CONNTRACKD_NETLINK_BUFFER_MAX,
        "protocols": synced_protocols(cluster),
        "ignore": ignored_addresses(cluster),
    })


def synced(build: MemberBuild) -> bool:
    """The member replicates state (it gets conntrackd.conf and its drop-in)."""
    return sync_transport(build.cluster, build.member) is not None


def render_file(build: MemberBuild, file: GeneratedFile) -> str:
    text = conntrackd_conf(build.cluster, build.member)
    if text is None:  # registry.exists asked synced() first
        raise ValueError(f"{build.member.name} has no sync transport for {file.name}")
    return text
