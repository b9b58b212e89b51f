"""The model -> keepalived.conf, conntrackd.conf, fwc-notify.sh, sysctl.conf, boot files.

Each file has a jinja2 template in fwc/templates and a context builder here; the
builders make every decision, the templates only lay the values out.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import jinja2

from fwc import protocols as proto
from fwc.backend.render import escape
from fwc.model import Cluster, IPInterface, Member, Vrrp


@cache
def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("fwc", "templates"),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,  # noqa: S701 - config files, not HTML; fwc.backend.render.escape instead
        # Every interpolated value, filtered or not, stays on its line: a value that
        # would break a line stops the compile instead of reaching a file.
        finalize=escape.line_text,
    )
    env.filters.update(escape.FILTERS)
    return env


def render_template(name: str, context: dict[str, object]) -> str:
    return environment().get_template(name).render(**context)


# -- keepalived ---------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class VrrpInstance:
    name: str
    device: str
    vrid: int
    priority: int
    advert_int: str
    version: int | None  # written when not keepalived's default (2)
    nopreempt: bool
    preempt_delay: int | None
    garp_refresh: int | None
    auth_type: str | None
    auth_pass: str | None
    vips: tuple[str, ...]


def advert_interval(advert_ms: int) -> str:
    """keepalived's advert_int in seconds: 1, 0.1, 2.5."""
    seconds, rest = divmod(advert_ms, 1000)
    if not rest:
        return str(seconds)
    return f"{advert_ms / 1000:.2f}".rstrip("0")


def preempt_delay(vrrp: Vrrp) -> int:
    """The policy's delay, else a default long enough for conntrackd to resync (FWC221)."""
    if vrrp.preempt_delay_s is not None:
        return vrrp.preempt_delay_s
    return proto.DEFAULT_PREEMPT_DELAY_S


def vrrp_instances(cluster: Cluster, member: Member, redact: bool) -> list[VrrpInstance]:
    vrrp = cluster.vrrp
    out: list[VrrpInstance] = []
    for iface in cluster.vrrp_interfaces:
        device = member.device(iface.name) or iface.name
        for family in (4, 6):
            vips = iface.vips_of(family)
            if not vips or iface.vrid is None:
                continue
            # VRRPv3 is the only version for IPv6, and it has no authentication.
            version = 3 if family == 6 else vrrp.version
            auth = vrrp.auth if version == 2 and vrrp.password is not None else None
            password = None
            if auth is not None:
                password = proto.REDACTED_PASSWORD if redact else vrrp.password
            out.append(VrrpInstance(
                name=f"VI_{iface.name}" + ("_v6" if family == 6 else ""),
                device=device,
                vrid=iface.vrid,
                priority=member.priority,
                advert_int=advert_interval(vrrp.advert_ms),
                version=None if version == proto.DEFAULT_VRRP_VERSION else version,
                nopreempt=not vrrp.preempt,
                # keepalived: nopreempt and preempt_delay exclude each other.
                preempt_delay=preempt_delay(vrrp) if vrrp.preempt else None,
                garp_refresh=vrrp.garp_refresh_s,
                auth_type=auth.upper() if auth else None,
                auth_pass=password,
                vips=tuple(str(v) for v in vips),
            ))
    return out


def keepalived_conf(cluster: Cluster, member: Member, redact: bool = False) -> str:
    instances = vrrp_instances(cluster, member, redact)
    return escape.keepalived_file(render_template("keepalived.conf.j2", {
        "cluster": cluster.name,
        "member": member.name,
        "group_name": f"VG_{cluster.name}",
        # keepalived warns about a sync group of one ("this probably isn't what you
        # want"): a single instance carries the notify lines itself.
        "sync_group": len(instances) > 1,
        "notify": proto.NODE_NOTIFY_SCRIPT,
        "instances": instances,
    }))


def holds_secret(cluster: Cluster, redact: bool) -> bool:
    """True when keepalived.conf will carry a real VRRP password (it gets mode 0600)."""
    if redact or cluster.vrrp.password is None:
        return False
    return any(i.auth_pass for m in cluster.members[:1]
               for i in vrrp_instances(cluster, m, redact))


# -- conntrackd ----------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class SyncTransport:
    kind: str  # multicast or unicast
    device: str
    own_address: str
    port: int
    group: str | None = None
    peer_address: str | None = None


def mode_options(mode: str) -> tuple[str, tuple[tuple[str, object], ...]]:
    """The Mode block: the grammar is mode-specific (ha-daemons 1.2)."""
    if mode == "notrack":
        return "NOTRACK", (("DisableInternalCache", "Off"), ("DisableExternalCache", "Off"),
                           ("PurgeTimeout", proto.CONNTRACKD_PURGE_TIMEOUT))
    if mode == "alarm":
        return "ALARM", (("RefreshTime", proto.ALARM_REFRESH_TIME),
                         ("CacheTimeout", proto.ALARM_CACHE_TIMEOUT),
                         ("PurgeTimeout", proto.CONNTRACKD_PURGE_TIMEOUT))
    return "FTFW", (("ResendQueueSize", proto.FTFW_RESEND_QUEUE_SIZE),
                    ("PurgeTimeout", proto.CONNTRACKD_PURGE_TIMEOUT),
                    ("ACKWindowSize", proto.FTFW_ACK_WINDOW_SIZE),
                    ("DisableExternalCache", "Off"))


def _first_v4(addresses: tuple[IPInterface, ...]) -> IPInterface | None:
    return next((a for a in addresses if a.version == 4), None)


def sync_transport(cluster: Cluster, member: Member) -> SyncTransport | None:
    sync = cluster.sync
    link = member.link(sync.link) if sync.link else None
    own = _first_v4(link.addresses) if link else None
    if link is None or own is None:
        return None
    if sync.transport == "multicast":
        return SyncTransport("multicast", link.device, str(own.ip), sync.port,
                             group=str(sync.group))
    peers = [a for m in cluster.members if m.name != member.name
             for pl in [m.link(sync.link)] if pl is not None
             for a in [_first_v4(pl.addresses)] if a is not None]
    if not peers:
        return None
    return SyncTransport("unicast", link.device, str(own.ip), sync.port,
                         peer_address=str(peers[0].ip))


def ignored_addresses(cluster: Cluster) -> list[tuple[int, str]]:
    """Loopback, every member address, every VIP and the sync subnet; nothing forwarded."""
    out: list[tuple[int, str]] = [(4, "127.0.0.1"), (6, "::1")]
    for member in cluster.members:
        for link in member.links:
            out.extend((a.version, str(a.ip)) for a in link.addresses)
    for iface in cluster.interfaces:
        out.extend((v.version, str(v.ip)) for v in iface.vips)
    if cluster.sync.link:
        for member in cluster.members:
            link = member.link(cluster.sync.link)
            if link is not None:
                out.extend((a.version, str(a.network)) for a in link.addresses)
    return list(dict.fromkeys(out))


def uses_helpers(cluster: Cluster) -> bool:
    return any(s.helper for rule in cluster.all_rules() for s in rule.services)


def conntrackd_conf(cluster: Cluster, member: Member) -> str | None:
    """None when the member has no IPv4 address on the sync link (a check reports it)."""
    transport = sync_transport(cluster, member)
    if transport is None:
        return None
    protocols = [p for p in proto.SYNCED_PROTOCOLS
                 if p != proto.SYNCED_PROTOCOL_V6_ONLY or 6 in cluster.families]
    mode, options = mode_options(cluster.sync.mode)
    return render_template("conntrackd.conf.j2", {
        "cluster": cluster.name,
        "member": member.name,
        "mode": {"name": mode, "options": options},
        "transport": transport,
        "socket_buffer": proto.CONNTRACKD_SOCKET_BUFFER,
        "expectation_sync": uses_helpers(cluster),
        "hash_size": proto.CONNTRACKD_HASHSIZE,
        "hash_limit": proto.CONNTRACKD_HASHLIMIT_FACTOR * proto.NF_CONNTRACK_MAX,
        "lock_file": proto.NODE_CONNTRACKD_LOCK,
        "socket": proto.NODE_CONNTRACKD_SOCKET,
        "netlink_buffer": proto.CONNTRACKD_NETLINK_BUFFER,
        "netlink_buffer_max": proto.CONNTRACKD_NETLINK_BUFFER_MAX,
        "protocols": protocols,
        "ignore": ignored_addresses(cluster),
    })


# -- notify script and sysctl ---------------------------------------------------------------

def notify_script(cluster: Cluster, member: Member) -> str:
    return render_template("fwc-notify.sh.j2", {
        "cluster": cluster.name,
        "member": member.name,
        "config": proto.NODE_CONNTRACKD_CONF,
        "lock_file": proto.NODE_CONNTRACKD_LOCK,
        "notify_lock": proto.NODE_NOTIFY_LOCK,
        "log_tag": proto.NOTIFY_LOG_TAG,
    })


def forwarding_settings(cluster: Cluster) -> list[tuple[str, object, str]]:
    """Switched on by the boot script and by fwc install, only after the rules loaded."""
    settings: list[tuple[str, object, str]] = []
    if 4 in cluster.families:
        settings.append((proto.FORWARDING_SYSCTLS[4], 1,
                         "a firewall routes: forward IPv4 between its interfaces"))
    if 6 in cluster.families:
        settings.append((proto.FORWARDING_SYSCTLS[6], 1,
                         "the cluster carries IPv6: forward it too"))
    return settings


def sysctl_settings(cluster: Cluster) -> list[tuple[str, object, str]]:
    return [
        ("net.netfilter.nf_conntrack_events", proto.NF_CONNTRACK_EVENTS,
         "conntrackd learns about connections from conntrack events; without them "
         "nothing is replicated"),
        ("net.netfilter.nf_conntrack_max", proto.NF_CONNTRACK_MAX,
         "the connection table size; conntrackd.conf's HashLimit is twice this value"),
    ]


def sysctl_conf(cluster: Cluster, member: Member) -> str:
    return render_template("sysctl.conf.j2", {
        "cluster": cluster.name,
        "member": member.name,
        "settings": sysctl_settings(cluster),
    })


def forwarding_conf(cluster: Cluster, member: Member) -> str:
    return render_template("forwarding.conf.j2", {
        "cluster": cluster.name,
        "member": member.name,
        "script": proto.NODE_BOOT_SCRIPT,
        "settings": forwarding_settings(cluster),
    })


def keepalived_systemd_dropin(cluster: Cluster, member: Member, sync: bool = True) -> str:
    """keepalived after the boot unit (rules loaded) and, with SYNC, after conntrackd."""
    return render_template("keepalived-systemd.conf.j2", {
        "cluster": cluster.name,
        "member": member.name,
        "path": proto.NODE_KEEPALIVED_DROPIN,
        "unit": proto.BOOT_UNIT,
        "sync": sync,
    })


# -- boot ----------------------------------------------------------------------------------

def conntrackd_systemd_dropin(cluster: Cluster, member: Member) -> str:
    return render_template("conntrackd-systemd.conf.j2", {
        "cluster": cluster.name,
        "member": member.name,
        "path": proto.NODE_CONNTRACKD_DROPIN,
        "unit": proto.BOOT_UNIT,
    })


def boot_unit(cluster: Cluster, member: Member) -> str:
    return render_template("fwc-firewall.service.j2", {
        "cluster": cluster.name,
        "member": member.name,
        "path": proto.NODE_BOOT_UNIT,
        "script": proto.NODE_BOOT_SCRIPT,
    })


def boot_script(cluster: Cluster, member: Member, families: tuple[int, ...],
                ipsets: bool) -> str:
    """FAMILIES: the rules files the member has; IPSETS: whether ipsets.rules exists."""
    rules_path = {4: "/etc/fwc/iptables.rules", 6: "/etc/fwc/ip6tables.rules"}
    tool = {4: "iptables-restore", 6: "ip6tables-restore"}
    return render_template("fwc-firewall.sh.j2", {
        "cluster": cluster.name,
        "member": member.name,
        "unit": proto.BOOT_UNIT,
        "log_tag": proto.BOOT_LOG_TAG,
        # Both families always: an IPv4-only cluster has no ip6tables rules at all, so
        # IPv6 forwarding left on by anything else would route it unfiltered.
        "forwarding_off": [(key, "/proc/sys/" + key.replace(".", "/"))
                           for key in proto.FORWARDING_SYSCTLS.values()],
        "ipsets": "/etc/fwc/ipsets.rules" if ipsets else None,
        "rules": [(tool[f], rules_path[f]) for f in families],
        "failsafe": [(tool[f], proto.NODE_FAILSAFE_RULES[f]) for f in families],
        "chains": ("INPUT", "FORWARD", "OUTPUT"),
        "sysctl_conf": proto.NODE_SYSCTL_CONF,
        "forwarding_conf": proto.NODE_FORWARDING_CONF,
    })
