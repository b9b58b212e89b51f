"""Target keepalived: keepalived.conf, the VRRP sync group of one member."""

from __future__ import annotations

import ipaddress
from dataclasses import replace

from fwc import protocols as proto
from fwc.backend.files import GeneratedFile, path_of
from fwc.backend.render import escape
from fwc.backend.render.context import MemberBuild
from fwc.backend.render.routes import vrrp_routing
from fwc.backend.render.templates import render_template
from fwc.model import Cluster, Member, Track, Vrrp
from fwc.model.records import dataclass
from fwc.model.topology import link_scoped


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
    # `vrrp { unicast }`: this member's address on the segment and every peer's
    unicast_src: str | None = None
    unicast_peers: tuple[str, ...] = ()
    # The TTL (hop limit) of unicast adverts: the automatic rules take a peer's only with
    # 255 (docs/ha-pitfalls.md). keepalived's own default is 255 in IPv4 but the kernel's
    # (64) in IPv6, so it is written for both.
    unicast_ttl: int | None = None
    # Multicast IPv4 adverts: the source is this member's policy address on the segment,
    # not whatever address the device holds first (keepalived's default, its "primary"
    # address): the peers' automatic rules take adverts only from the addresses the
    # policy gives the member there (docs/ha-pitfalls.md), so an address the operator
    # put first on the device (a management address, DHCP) split the cluster. IPv6
    # adverts come from the device's link-local address, which the rules take as such.
    mcast_src: str | None = None
    # The device is tracked explicitly (track { interface ... }): keepalived refuses a
    # device tracked both implicitly by its instance and by the sync group.
    dont_track_primary: bool = False
    # `follow master` routes and rules (fwc.backend.render.routes.vrrp_routing).
    virtual_routes: tuple[tuple[str, ...], ...] = ()
    virtual_rules: tuple[tuple[str, ...], ...] = ()
    # The `vrrp-group` it belongs to (None: the cluster's one group).
    group: str | None = None
    # True when the instance carries the notify lines and tracking itself (it is the
    # only instance of its group: keepalived warns about a sync group of one).
    own_notify: bool = False


@dataclass(frozen=True, slots=True)
class SyncGroup:
    """One vrrp_sync_group: its instances, and what the notify script is told."""

    name: str
    instances: tuple[str, ...]
    notify_suffix: str  # "" for the cluster's one group, " NAME" for a vrrp-group


@dataclass(frozen=True, slots=True)
class TrackScript:
    """A vrrp_script block: the gateway ping or the admin's command."""

    name: str
    command: str
    interval: int
    timeout: int
    fall: int
    rise: int


@dataclass(frozen=True, slots=True)
class TrackRef:
    """One line of a track_interface/track_script/track_process block."""

    name: str
    weight: int | None


@dataclass(frozen=True, slots=True)
class Tracking:
    """What the sync group (or the single instance) tracks, and the blocks it names."""

    scripts: tuple[TrackScript, ...] = ()
    processes: tuple[tuple[str, str], ...] = ()  # (vrrp_track_process name, process)
    interfaces: tuple[TrackRef, ...] = ()
    script_refs: tuple[TrackRef, ...] = ()
    process_refs: tuple[TrackRef, ...] = ()

    @property
    def any(self) -> bool:
        return bool(self.interfaces or self.script_refs or self.process_refs)


def track_name(cluster: Cluster, track: Track) -> str:
    """fwc_ping_1, fwc_script_2, ...: numbered per kind in policy order."""
    same = [t for t in cluster.tracks if t.kind == track.kind]
    return f"fwc_{track.kind}_{same.index(track) + 1}"


def ping_command(member: Member, track: Track) -> str:
    address = ipaddress.ip_address(track.target)
    link = member.link_on(address)
    device = ("-I", link.device) if link is not None else ()
    return " ".join((*proto.PING_COMMAND, *device, str(address)))


def tracking(cluster: Cluster, member: Member) -> Tracking:
    scripts: list[TrackScript] = []
    processes: list[tuple[str, str]] = []
    interfaces: list[TrackRef] = []
    script_refs: list[TrackRef] = []
    process_refs: list[TrackRef] = []
    for track in cluster.tracks:
        name = track_name(cluster, track)
        if track.kind == "interface":
            interfaces.append(TrackRef(member.device(track.target) or track.target,
                                       track.weight))
        elif track.kind == "process":
            processes.append((name, track.target))
            process_refs.append(TrackRef(name, track.weight))
        else:
            command = ping_command(member, track) if track.kind == "ping" else track.target
            scripts.append(TrackScript(name, command, track.interval_s, track.interval_s + 1,
                                       track.fall, track.rise))
            script_refs.append(TrackRef(name, track.weight))
    return Tracking(tuple(scripts), tuple(processes), tuple(interfaces), tuple(script_refs),
                    tuple(process_refs))


def advert_source(member: Member, interface: str, family: int) -> str | None:
    """MEMBER's first address of FAMILY on INTERFACE: where its adverts leave from."""
    link = member.link(interface)
    own = [a.ip for a in link.addresses if a.version == family] if link else []
    return str(own[0]) if own else None


def unicast_addresses(cluster: Cluster, member: Member, interface: str,
                      family: int) -> tuple[str | None, tuple[str, ...]]:
    """(this member's address, the peers' addresses) on INTERFACE in FAMILY."""
    peers = tuple(p for p in (advert_source(m, interface, family) for m in cluster.members
                              if m.name != member.name) if p is not None)
    return advert_source(member, interface, family), peers


def instance_name(interface: str, family: int) -> str:
    """The vrrp_instance of INTERFACE's VIPs of FAMILY: VI_lan, VI_lan_v6."""
    return f"VI_{interface}" + ("_v6" if family == 6 else "")


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
    tracked = {t.target for t in cluster.tracks if t.kind == "interface"}
    out: list[VrrpInstance] = []
    first_of_family = {4: True, 6: True}
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
            source, peers = unicast_addresses(cluster, member, iface.name, family) \
                if vrrp.unicast else (None, ())
            routing = vrrp_routing(cluster, member, iface.name, family, first_of_family[family])
            first_of_family[family] = False
            group = cluster.group_of(iface.name)
            out.append(VrrpInstance(
                name=instance_name(iface.name, family),
                device=device,
                vrid=iface.vrid,
                # a vrrp-group's master gets the top priority for its instances
                priority=cluster.group_priority(group, member),
                advert_int=advert_interval(vrrp.advert_ms),
                version=None if version == proto.DEFAULT_VRRP_VERSION else version,
                nopreempt=not vrrp.preempt,
                # keepalived: nopreempt and preempt_delay exclude each other.
                preempt_delay=preempt_delay(vrrp) if vrrp.preempt else None,
                garp_refresh=vrrp.garp_refresh_s,
                auth_type=auth.upper() if auth else None,
                auth_pass=password,
                # VRRPv3 advertises the first address as the virtual router's
                # link-local one (RFC 5798 5.2.9): a link-local VIP goes first wherever
                # the policy wrote it (docs/ha-pitfalls.md).
                vips=tuple(str(v) for v in sorted(vips, key=lambda v: not link_scoped(v.ip))),
                unicast_src=source,
                unicast_peers=peers,
                mcast_src=advert_source(member, iface.name, 4)
                if family == 4 and not vrrp.unicast else None,
                unicast_ttl=proto.VRRP_TTL if vrrp.unicast else None,
                dont_track_primary=iface.name in tracked,
                virtual_routes=routing.routes,
                virtual_rules=routing.rules,
                group=group.name if group is not None else None,
            ))
    return _with_notify(out)


def member_vips(cluster: Cluster, member: Member) -> list[tuple[str, str]]:
    """(VIP/prefix, device) of every address MEMBER's keepalived.conf gives keepalived."""
    return [(vip, i.device) for i in vrrp_instances(cluster, member, redact=True)
            for vip in i.vips]


def _with_notify(instances: list[VrrpInstance]) -> list[VrrpInstance]:
    """Mark the instances that are alone in their group: they carry the notify lines."""
    count: dict[str | None, int] = {}
    for instance in instances:
        count[instance.group] = count.get(instance.group, 0) + 1
    return [replace(i, own_notify=count[i.group] == 1) for i in instances]


def sync_groups(cluster: Cluster, instances: list[VrrpInstance]) -> list[SyncGroup]:
    """VG_<cluster> for the cluster's one group, or VG_<cluster>_<group> per vrrp-group;
    a group of one instance has none (the instance carries its notify lines)."""
    out: list[SyncGroup] = []
    for name in dict.fromkeys(i.group for i in instances):
        members = tuple(i.name for i in instances if i.group == name)
        if len(members) < 2:
            continue
        suffix = "" if name is None else f"_{name}"
        out.append(SyncGroup(f"VG_{cluster.name}{suffix}", members,
                             "" if name is None else f" {name}"))
    return out


def keepalived_conf(cluster: Cluster, member: Member, redact: bool = False) -> str:
    instances = vrrp_instances(cluster, member, redact)
    return escape.keepalived_file(render_template("keepalived.conf.j2", {
        "cluster": cluster.name,
        "member": member.name,
        # keepalived warns about a sync group of one ("this probably isn't what you
        # want"): a single instance carries the notify lines itself.
        "sync_groups": sync_groups(cluster, instances),
        "notify": path_of("fwc-notify.sh"),
        "instances": instances,
        "tracking": tracking(cluster, member),
    }))


def holds_secret(build: MemberBuild) -> bool:
    """True when keepalived.conf will carry a real VRRP password (it gets mode 0600)."""
    cluster = build.cluster
    if build.redact or cluster.vrrp.password is None:
        return False
    return any(i.auth_pass for m in cluster.members[:1]
               for i in vrrp_instances(cluster, m, build.redact))


def render_file(build: MemberBuild, file: GeneratedFile) -> str:
    return keepalived_conf(build.cluster, build.member, build.redact)
