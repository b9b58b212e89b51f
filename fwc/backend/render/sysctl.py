"""Target sysctl: sysctl.conf (conntrack settings) and forwarding.conf (after the rules)."""

from __future__ import annotations

from fwc import protocols as proto
from fwc.backend.files import GeneratedFile, Reload, path_of
from fwc.backend.render.context import MemberBuild
from fwc.backend.render.templates import render_template
from fwc.model import Cluster, Member


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
        ("net.netfilter.nf_conntrack_max", cluster.sync.conntrack_max or proto.NF_CONNTRACK_MAX,
         "the connection table size; conntrackd.conf's HashLimit is twice this value"),
        *([(proto.NF_CONNTRACK_BUCKETS_SYSCTL, cluster.sync.hash_size,
            "the connection table's hash buckets (writable in the initial network "
            "namespace only); conntrackd.conf's HashSize is the same")]
          if cluster.sync.hash_size is not None else []),
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
        "script": path_of("fwc-firewall.sh"),
        "settings": forwarding_settings(cluster),
    })


def render_file(build: MemberBuild, file: GeneratedFile) -> str:
    if file.reload is Reload.FORWARDING:
        return forwarding_conf(build.cluster, build.member)
    return sysctl_conf(build.cluster, build.member)
