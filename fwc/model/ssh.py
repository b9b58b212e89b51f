"""What an ssh destination may look like: `[user@]host`, never anything ssh reads as an option.

ssh parses its arguments with getopt, so a destination such as
`-oProxyCommand=...` would run a command on the machine running fwc. The
transport passes the destination after `--`, and both the policy (FWC520)
and the transport refuse anything but a plain user and host, so that neither
ssh nor a wrapper given with `--ssh` can read it as an option.

Part of the model (it says which policy values are valid) so that the resolver
checks it without importing the installer; the ssh transport uses it too.
"""

from __future__ import annotations

import ipaddress
import re

# POSIX portable user names (no leading '-').
_USER = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*\Z")
# Host names and ssh_config Host aliases: labels of letters, digits, '_' and
# '-', a label never starting with '-'.
_HOST = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_-]*)(\.[A-Za-z0-9_][A-Za-z0-9_-]*)*\.?\Z")
# The zone of a link-local IPv6 address (`fe80::1%eth0`): a device name or an index.
# Python's ip_address takes any text after the '%', a command substitution or an
# Ansible template included, which ssh would hand to a ProxyCommand's %h.
_ZONE = re.compile(r"[A-Za-z0-9_.-]+\Z")

SSH_TARGET_FORM = "'host' or 'user@host' (a host name, ssh alias, IPv4 or IPv6 address)"


def ssh_target_problem(target: str) -> str | None:
    """Why TARGET is not a plain ssh destination, or None when it is one."""
    if not target:
        return "is empty"
    if target.startswith("-"):
        return "starts with '-', so ssh would read it as an option"
    if any(not c.isprintable() or c.isspace() for c in target):
        return "contains whitespace or control characters"
    user, at, host = target.rpartition("@")
    if at and not _USER.match(user):
        return f"has an invalid user name '{user}'"
    if not host:
        return "has no host"
    if _HOST.match(host):
        return None
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return f"has an invalid host '{host}'"
    zone = host.partition("%")[2]
    if zone and not _ZONE.match(zone):
        return f"has an IPv6 zone '{zone}' that is not a device name"
    return None
