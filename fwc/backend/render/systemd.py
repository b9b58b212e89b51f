"""Target systemd: the boot unit, the boot script it runs, and the daemons' drop-ins.

The boot script loads whatever rules files the member has, as the table of
generated files says (`fwc.backend.files`: the RULES, IPSETS and FAILSAFE rows
present for this member, with their loaders; a row of a family the cluster has
no address of only where the kernel has that family, `kernel_guard`), so a new
packet-filter backend only adds rows there.
"""

from __future__ import annotations

from collections.abc import Callable

from fwc import protocols as proto
from fwc.backend import probation
from fwc.backend.files import (
    BOOT_UNIT,
    LOADED_BY_INSTALL,
    GeneratedFile,
    Reload,
    kernel_guard,
    path_of,
)
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
    """conntrackd after the boot unit, restarted when it fails or its watchdog finds it
    hung, without a start limit; a start clears the lock file a crash left and sends the
    peer what the daemon found in the kernel table."""
    return render_template("conntrackd-systemd.conf.j2", {
        "cluster": cluster.name,
        "member": member.name,
        "path": path_of("conntrackd-systemd.conf"),
        "unit": BOOT_UNIT,
        "rm": proto.NODE_RM,
        "lock_file": proto.NODE_CONNTRACKD_LOCK,
        "conntrackd": proto.NODE_CONNTRACKD,
        "config": path_of("conntrackd.conf"),
        "watchdog": f"{proto.CONNTRACKD_WATCHDOG_S}s",
        "restart_sec": f"{proto.CONNTRACKD_RESTART_S}s",
    })


def boot_unit(cluster: Cluster, member: Member) -> str:
    return render_template("fwc-firewall.service.j2", {
        "cluster": cluster.name,
        "member": member.name,
        "path": path_of("fwc-firewall.service"),
        "script": path_of("fwc-firewall.sh"),
        "flushing_units": proto.FLUSHING_FIREWALL_UNITS,
    })


def _loaded(cluster: Cluster, files: tuple[GeneratedFile, ...], reload: Reload) \
        -> list[tuple[str, str, str | None]]:
    """(loader, path, the kernel path it needs: `kernel_guard`) of FILES' RELOAD rows."""
    return [(f.loader or "", f.path, kernel_guard(f, cluster.families))
            for f in files if f.reload is reload]


def boot_script(cluster: Cluster, member: Member, files: tuple[GeneratedFile, ...]) -> str:
    """FILES: the generated files the member has (their rules, ipsets and fallbacks load)."""
    ipsets = next((f.path for f in files if f.reload is Reload.IPSETS), None)
    rules, failsafe = _loaded(cluster, files, Reload.RULES), _loaded(cluster, files,
                                                                     Reload.FAILSAFE)
    return render_template("fwc-firewall.sh.j2", {
        "cluster": cluster.name,
        "member": member.name,
        "unit": BOOT_UNIT,
        "log_tag": proto.BOOT_LOG_TAG,
        "loaded_by_install": LOADED_BY_INSTALL,
        # An install the node rebooted with before it was confirmed: rolled back first.
        "probation": probation.FUNCTIONS,
        "rollback": probation.ROLLBACK_SCRIPT,
        "at_boot": probation.AT_BOOT,
        "old_boot_failed": probation.OLD_BOOT_FAILED,
        "rolling_back": probation.ROLLING_BACK_AT_BOOT,
        "confirmed": probation.CONFIRMED,
        "rolled_back": probation.ROLLED_BACK,
        # Both families always: forwarding.conf switches on only the cluster's own, so an
        # IPv4-only cluster keeps IPv6 forwarding off whatever else switched it on.
        "forwarding_off": [(key, "/proc/sys/" + key.replace(".", "/"))
                           for key in proto.FORWARDING_SYSCTLS.values()],
        "ipsets": ipsets,
        "rules": rules,
        "failsafe": failsafe,
        "guarded": any(kernel for _, _, kernel in (*rules, *failsafe)),
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
