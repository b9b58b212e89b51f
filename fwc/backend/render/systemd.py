"""Target systemd: the boot unit, the boot script it runs, and the daemons' drop-ins.

The boot script loads whatever rules files the member has, as the table of
generated files says (`fwc.backend.files`: the RULES, IPSETS and FAILSAFE rows
present for this member, with their loaders), so a new packet-filter backend
only adds rows there.
"""

from __future__ import annotations

from collections.abc import Callable

from fwc import protocols as proto
from fwc.backend.files import BOOT_UNIT, LOADED_BY_INSTALL, GeneratedFile, Reload, path_of
from fwc.backend.render.context import MemberBuild
from fwc.backend.render.keepalived import member_vips
from fwc.backend.render.templates import render_template
from fwc.model import Cluster, Member


def keepalived_systemd_dropin(cluster: Cluster, member: Member, sync: bool = True) -> str:
    """keepalived after the boot unit (rules loaded) and, with SYNC, after conntrackd;
    restarted after a failure, its VIPs removed whenever it stops."""
    return render_template("keepalived-systemd.conf.j2", {
        "cluster": cluster.name,
        "member": member.name,
        "path": path_of("keepalived-systemd.conf"),
        "unit": BOOT_UNIT,
        "sync": sync,
        "ip": proto.NODE_IP,
        "vips": member_vips(cluster, member),
    })


def conntrackd_systemd_dropin(cluster: Cluster, member: Member) -> str:
    """conntrackd after the boot unit; a start clears the lock file a crash left and
    sends the peer what the daemon found in the kernel table."""
    return render_template("conntrackd-systemd.conf.j2", {
        "cluster": cluster.name,
        "member": member.name,
        "path": path_of("conntrackd-systemd.conf"),
        "unit": BOOT_UNIT,
        "rm": proto.NODE_RM,
        "lock_file": proto.NODE_CONNTRACKD_LOCK,
        "conntrackd": proto.NODE_CONNTRACKD,
        "config": path_of("conntrackd.conf"),
    })


def boot_unit(cluster: Cluster, member: Member) -> str:
    return render_template("fwc-firewall.service.j2", {
        "cluster": cluster.name,
        "member": member.name,
        "path": path_of("fwc-firewall.service"),
        "script": path_of("fwc-firewall.sh"),
        "flushing_units": proto.FLUSHING_FIREWALL_UNITS,
    })


def _loaded(files: tuple[GeneratedFile, ...], reload: Reload) -> list[tuple[str, str]]:
    return [(f.loader or "", f.path) for f in files if f.reload is reload]


def boot_script(cluster: Cluster, member: Member, files: tuple[GeneratedFile, ...]) -> str:
    """FILES: the generated files the member has (their rules, ipsets and fallbacks load)."""
    ipsets = next((f.path for f in files if f.reload is Reload.IPSETS), None)
    return render_template("fwc-firewall.sh.j2", {
        "cluster": cluster.name,
        "member": member.name,
        "unit": BOOT_UNIT,
        "log_tag": proto.BOOT_LOG_TAG,
        "loaded_by_install": LOADED_BY_INSTALL,
        # Both families always: an IPv4-only cluster has no ip6tables rules at all, so
        # IPv6 forwarding left on by anything else would route it unfiltered.
        "forwarding_off": [(key, "/proc/sys/" + key.replace(".", "/"))
                           for key in proto.FORWARDING_SYSCTLS.values()],
        "ipsets": ipsets,
        "rules": _loaded(files, Reload.RULES),
        "failsafe": _loaded(files, Reload.FAILSAFE),
        "chains": ("INPUT", "FORWARD", "OUTPUT"),
        "nft_table": "fwc",
        "sysctl_conf": path_of("sysctl.conf"),
        "forwarding_conf": path_of("forwarding.conf"),
    })


_RENDERERS: dict[str, Callable[[MemberBuild], str]] = {
    "keepalived-systemd.conf": lambda b: keepalived_systemd_dropin(
        b.cluster, b.member, sync=b.has("conntrackd.conf")),
    "conntrackd-systemd.conf": lambda b: conntrackd_systemd_dropin(b.cluster, b.member),
    "fwc-firewall.service": lambda b: boot_unit(b.cluster, b.member),
    "fwc-firewall.sh": lambda b: boot_script(b.cluster, b.member, b.files),
}


def render_file(build: MemberBuild, file: GeneratedFile) -> str:
    return _RENDERERS[file.name](build)
