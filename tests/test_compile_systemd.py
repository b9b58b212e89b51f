"""keepalived starts after conntrackd (ha-daemons P11): a systemd drop-in per member."""

from __future__ import annotations

import configparser

from fwc.install.node import NodeInstall
from fwc.output import compile_policy
from fwc.pipeline import analyse
from fwc.protocols import NODE_FILES_BY_NAME


def test_every_member_gets_the_ordering_dropin(policies):
    policy = analyse(policies / "edge.fw").policy
    files = {f.path: f for cluster in compile_policy(policy) for f in cluster.files}
    for member in ("fw1", "fw2"):
        unit = configparser.ConfigParser()
        unit.read_string(files[f"{member}/keepalived-systemd.conf"].content.decode())
        assert unit["Unit"]["After"] == "conntrackd.service"
        assert unit["Unit"]["Wants"] == "conntrackd.service"
    assert NODE_FILES_BY_NAME["keepalived-systemd.conf"].path == \
        "/etc/systemd/system/keepalived.service.d/fwc.conf"


def test_install_reloads_systemd_units_before_keepalived_when_the_dropin_changed():
    node = NodeInstall.__new__(NodeInstall)  # only reload_commands is exercised
    node.systemd = True
    node.role = "backup"

    class Result:
        changed = ["keepalived-systemd.conf", "keepalived.conf"]

    class Transport:
        private_run = True

    node.result, node.transport = Result(), Transport()
    daemons = [daemon for daemon, _ in node.reload_commands(old_config=None)]
    assert daemons == ["systemd", "keepalived"]
    node.systemd = False
    assert [d for d, _ in node.reload_commands(old_config=None)] == ["keepalived"]
