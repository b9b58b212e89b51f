"""Target notify: fwc-notify.sh, keepalived's hook that drives conntrackd on a transition."""

from __future__ import annotations

from fwc import protocols as proto
from fwc.backend.files import GeneratedFile, path_of
from fwc.backend.render.context import MemberBuild
from fwc.backend.render.templates import render_template
from fwc.model import Cluster, Member


def notify_script(cluster: Cluster, member: Member) -> str:
    return render_template("fwc-notify.sh.j2", {
        "cluster": cluster.name,
        "member": member.name,
        "config": path_of("conntrackd.conf"),
        "lock_file": proto.NODE_CONNTRACKD_LOCK,
        "notify_lock": proto.NODE_NOTIFY_LOCK,
        "log_tag": proto.NOTIFY_LOG_TAG,
        # every state present (None: no action): the templates' undefined values raise
        "actions": {state: next((a.command for a in cluster.notify_actions
                                 if a.state == state), None)
                    for state in proto.NOTIFY_STATES},
        "action_timeout": proto.NOTIFY_ACTION_TIMEOUT_S,
        "conntrackd_timeout": proto.NOTIFY_CONNTRACKD_TIMEOUT_S,
        # active-active: the vrrp-groups, each a sync group calling this script with its
        # name (empty: the cluster's one group, the upstream primary-backup steps)
        "groups": [g.name for g in cluster.groups],
        "state_dir": proto.NODE_VRRP_STATE_DIR,
        "purge_kernel": purges_kernel(cluster),
    })


def purges_kernel(cluster: Cluster) -> bool:
    """Whether a member that stops being master may purge its kernel table (`conntrackd
    -t`, as primary-backup.sh does). Not with `external-cache off`: conntrackd then keeps
    the peer's states in the kernel table itself, and the purge, which deletes every
    entry its filter passes, would delete them (measured: a connection replicated into
    the backup's kernel was gone PurgeTimeout after its `backup` transition, and its
    failover found nothing to forward it with)."""
    return cluster.sync.external_cache


def render_file(build: MemberBuild, file: GeneratedFile) -> str:
    return notify_script(build.cluster, build.member)
