"""The one table of generated files (docs/compile.md, "Where the files go").

For every file `fwc compile` writes per member: its name in
output/<cluster>/<member>/, its path on the node, its mode there, the render
target that produces it (`fwc.backend.render.registry.TARGETS`), when it
exists, and what the node does once it changed (`Reload`). Compile, MANIFEST
(the secret-holding files), install (staging, test, apply, reload, rollback),
`fwc diff --installed`, the lab and the docs all read this table; a new file
or a new backend is a row here plus its renderer.

The table is data only: it imports no renderer, so that the renderers can ask
it where the other files live (keepalived.conf names the notify hook's path).

    python3 -m fwc.backend.files      # the Markdown table of docs/compile.md
"""

from __future__ import annotations

import sys
from enum import Enum
from pathlib import PurePosixPath
from types import MappingProxyType

from fwc.model.records import dataclass
from fwc.model.vocabulary import Backend

MODE_FILE, MODE_SECRET, MODE_SCRIPT = 0o644, 0o600, 0o755


class When(Enum):
    """When a member gets the file (`fwc.backend.render.registry.exists` decides)."""

    ALWAYS = "always"
    IPV6 = "the cluster has IPv6 addresses"
    IPSETS = "long address lists became ipsets"
    SYNC = "the member has an IPv4 address on the sync link"
    ROUTES = "the member has routes or route-rules that do not follow the master"
    UPLINKS = "the member has probed routes (`route ... probe`)"


class Reload(Enum):
    """What makes the node use a new version of the file.

    `fwc install` loads the LOAD_ORDER ones after copying the files (in that
    order: a rule naming a set needs the set, forwarding comes last) and runs
    the DAEMON_ORDER ones only for files that changed; the boot script does the
    same at boot.
    """

    IPSETS = "`ipset restore -exist`, before the rules"
    RULES = "its restore program, atomically"
    SYSCTL = "`sysctl -p` after the rules (a refused key only warns)"
    ROUTES = "the script runs: fwc's routes and rules (protocol 94) replaced"
    FORWARDING = "`sysctl -p` last: forwarding on once the rules are in"
    SYSTEMD = "`systemctl daemon-reload`"
    UPLINKS = "the uplink monitor restarts (`systemctl restart`), reading the routes' state"
    KEEPALIVED = "keepalived reloads (SIGHUP): VRRP state kept"
    CONNTRACKD = "conntrackd restarts, then resynchronises"
    FAILSAFE = "nothing: the boot script loads it only when the rules fail"
    BOOT = "nothing: read at the next boot"


LOAD_ORDER = (Reload.IPSETS, Reload.RULES, Reload.SYSCTL, Reload.ROUTES, Reload.FORWARDING)
DAEMON_ORDER = (Reload.SYSTEMD, Reload.UPLINKS, Reload.KEEPALIVED, Reload.CONNTRACKD)


@dataclass(frozen=True, slots=True)
class GeneratedFile:
    """One row: a file of output/<cluster>/<member>/ and its life on the node."""

    name: str
    path: str  # on the node
    # On the node, and in output/ whenever the file carries a secret (SECRET); a
    # SECRET file compiled without one (--redact-secrets, no password) is MODE_FILE.
    mode: int
    target: str  # key of fwc.backend.render.registry.TARGETS
    when: When
    reload: Reload
    what: str  # for the docs: what it is and who reads it
    secret: bool = False
    # Rulesets: the family, and the program that loads the file from stdin.
    family: int | None = None
    loader: str | None = None
    # (program, what for) that `fwc install` needs on the node for this file: a
    # missing one stops the install before anything changes.
    needs: tuple[tuple[str, str], ...] = ()
    # Only for clusters compiled for this packet filter (None: for every backend).
    backend: Backend | None = None

    def output_mode(self, holds_secret: bool) -> int:
        return self.mode if holds_secret or not self.secret else MODE_FILE


# In the order compile writes and lists them (its summary) and install copies them.
FILES: tuple[GeneratedFile, ...] = (
    GeneratedFile("iptables.rules", "/etc/fwc/iptables.rules", MODE_FILE, "iptables",
                  When.ALWAYS, Reload.RULES, "`iptables-restore` input",
                  family=4, loader="iptables-restore",
                  needs=(("iptables-restore", "iptables.rules"),
                         ("iptables-save", "the snapshot")),
                  backend=Backend.IPTABLES),
    GeneratedFile("ip6tables.rules", "/etc/fwc/ip6tables.rules", MODE_FILE, "iptables",
                  When.IPV6, Reload.RULES, "`ip6tables-restore` input",
                  family=6, loader="ip6tables-restore",
                  needs=(("ip6tables-restore", "ip6tables.rules"),
                         ("ip6tables-save", "the snapshot")),
                  backend=Backend.IPTABLES),
    GeneratedFile("ipsets.rules", "/etc/fwc/ipsets.rules", MODE_FILE, "ipset",
                  When.IPSETS, Reload.IPSETS, "`ipset restore` input: the sets the rules name",
                  needs=(("ipset", "ipsets.rules"), ("unshare", "testing ipsets.rules")),
                  backend=Backend.IPTABLES),
    GeneratedFile("nftables.nft", "/etc/fwc/nftables.nft", MODE_FILE, "nftables",
                  When.ALWAYS, Reload.RULES,
                  "`nft -f` input: replaces only fwc's own table `inet fwc`, atomically",
                  loader="nft", needs=(("nft", "nftables.nft"),), backend=Backend.NFTABLES),
    # It holds the VRRP password whenever authentication is on.
    GeneratedFile("keepalived.conf", "/etc/keepalived/keepalived.conf", MODE_SECRET,
                  "keepalived", When.ALWAYS, Reload.KEEPALIVED, "keepalived: the VRRP sync group",
                  secret=True, needs=(("keepalived", "keepalived.conf"),
                                      ("pkill", "reloading keepalived"))),
    GeneratedFile("conntrackd.conf", "/etc/conntrackd/conntrackd.conf", MODE_FILE,
                  "conntrackd", When.SYNC, Reload.CONNTRACKD, "conntrackd: state replication",
                  needs=(("conntrackd", "conntrackd.conf"),)),
    GeneratedFile("conntrackd-systemd.conf", "/etc/systemd/system/conntrackd.service.d/fwc.conf",
                  MODE_FILE, "systemd", When.SYNC, Reload.SYSTEMD,
                  "systemd drop-in: conntrackd requires the boot unit"),
    GeneratedFile("keepalived-systemd.conf", "/etc/systemd/system/keepalived.service.d/fwc.conf",
                  MODE_FILE, "systemd", When.ALWAYS, Reload.SYSTEMD,
                  "systemd drop-in: keepalived after the boot unit and conntrackd"),
    # keepalived runs it on every transition; it reads it again only on a reload.
    GeneratedFile("fwc-notify.sh", "/etc/fwc/fwc-notify.sh", MODE_SCRIPT, "notify",
                  When.ALWAYS, Reload.KEEPALIVED, "keepalived's notify hook"),
    GeneratedFile("sysctl.conf", "/etc/sysctl.d/90-fwc.conf", MODE_FILE, "sysctl",
                  When.ALWAYS, Reload.SYSCTL,
                  "`sysctl -p` (systemd-sysctl at boot, the boot script again after the rules)",
                  needs=(("sysctl", "sysctl.conf"),)),
    # Not in /etc/sysctl.d: systemd-sysctl runs before any rule is loaded.
    GeneratedFile("forwarding.conf", "/etc/fwc/forwarding.conf", MODE_FILE, "sysctl",
                  When.ALWAYS, Reload.FORWARDING,
                  "`sysctl -p` by the boot script and `fwc install`, after the rules loaded"),
    GeneratedFile("failsafe.rules", "/etc/fwc/failsafe.rules", MODE_FILE, "iptables",
                  When.ALWAYS, Reload.FAILSAFE, "the fail-closed IPv4 rules of the boot script",
                  family=4, loader="iptables-restore",
                  backend=Backend.IPTABLES),
    GeneratedFile("failsafe6.rules", "/etc/fwc/failsafe6.rules", MODE_FILE, "iptables",
                  When.IPV6, Reload.FAILSAFE, "the fail-closed IPv6 rules of the boot script",
                  family=6, loader="ip6tables-restore",
                  backend=Backend.IPTABLES),
    GeneratedFile("failsafe.nft", "/etc/fwc/failsafe.nft", MODE_FILE, "nftables",
                  When.ALWAYS, Reload.FAILSAFE,
                  "the fail-closed `inet fwc` table of the boot script (both families)",
                  loader="nft", backend=Backend.NFTABLES),
    GeneratedFile("fwc-firewall.sh", "/etc/fwc/fwc-firewall.sh", MODE_SCRIPT, "systemd",
                  When.ALWAYS, Reload.BOOT,
                  "the boot script: forwarding off, rules (or the fail-closed ones), forwarding"),
    GeneratedFile("fwc-firewall.service", "/etc/systemd/system/fwc-firewall.service", MODE_FILE,
                  "systemd", When.ALWAYS, Reload.SYSTEMD,
                  "systemd boot unit running the boot script before the network (`fwc install` "
                  "enables it)"),
    # Routes need configured interfaces: not the boot script's (it runs before the
    # network), but their own unit's once the network is online (docs/compile.md "Routes").
    GeneratedFile("fwc-routes.sh", "/etc/fwc/fwc-routes.sh", MODE_SCRIPT, "routes",
                  When.ROUTES, Reload.ROUTES,
                  "the routes script: the policy's routes and route-rules (`ip -batch`)",
                  needs=(("ip", "fwc-routes.sh"),)),
    GeneratedFile("fwc-routes.service", "/etc/systemd/system/fwc-routes.service", MODE_FILE,
                  "routes", When.ROUTES, Reload.SYSTEMD,
                  "systemd unit running the routes script once the network is online "
                  "(`fwc install` enables it)"),
    # Runs for as long as the node: its own unit, after the routes unit.
    GeneratedFile("fwc-uplinks.sh", "/etc/fwc/fwc-uplinks.sh", MODE_SCRIPT, "uplinks",
                  When.UPLINKS, Reload.UPLINKS,
                  "the uplink monitor: probed routes out while their gateway does not answer",
                  needs=(("ip", "fwc-uplinks.sh"), ("ping", "fwc-uplinks.sh"),
                         ("timeout", "fwc-uplinks.sh"))),
    GeneratedFile("fwc-uplinks.service", "/etc/systemd/system/fwc-uplinks.service", MODE_FILE,
                  "uplinks", When.UPLINKS, Reload.SYSTEMD,
                  "systemd unit running the uplink monitor after the routes unit "
                  "(`fwc install` enables it)"),
)
BY_NAME = MappingProxyType({f.name: f for f in FILES})
# Files that can carry a secret (MANIFEST lists them `redacted`, install fills them).
SECRET_FILES = tuple(f.name for f in FILES if f.secret)


def rules_file(backend: Backend) -> GeneratedFile:
    """The ruleset every member compiled for BACKEND gets (iptables.rules, nftables.nft)."""
    return next(f for f in FILES if f.backend is backend and f.reload is Reload.RULES
                and f.when is When.ALWAYS)


def path_of(name: str) -> str:
    """Where generated file NAME lives on the node (the files refer to each other so)."""
    return BY_NAME[name].path


def unit_name(name: str) -> str:
    """The systemd unit name of generated unit file NAME (its path's last part)."""
    return PurePosixPath(path_of(name)).name


# The boot unit's name, as `systemctl enable` and the drop-ins' After= name it.
BOOT_UNIT = unit_name("fwc-firewall.service")
# Set in systemd's environment by `fwc install` (and only there) while it starts the boot
# unit on a live node whose rules it has just loaded: the boot script then only exits 0,
# so that the unit counts as active. Otherwise the first daemon restart before the next
# boot (keepalived and conntrackd require the unit) would start it and run the whole
# load on a live node, forwarding off until it is done.
LOADED_BY_INSTALL = "FWC_RULES_LOADED_BY_INSTALL"
# The units `fwc install` enables when the member has them (the boot unit always).
ENABLED_UNITS = ("fwc-firewall.service", "fwc-routes.service", "fwc-uplinks.service")

DOC_BEGIN = "<!-- BEGIN generated by `python3 -m fwc.backend.files` -->"
DOC_END = "<!-- END generated -->"


def _mode(file: GeneratedFile) -> str:
    text = f"{file.mode:04o}"
    return text + (" with a secret, else 0644" if file.secret else "")


def markdown() -> str:
    """The table of docs/compile.md, between DOC_BEGIN and DOC_END (tests keep it current)."""
    lines = [DOC_BEGIN,
             "| file in `DIR/<cluster>/<member>/` | exists | on the node | mode | what, read by "
             "| after a change (`fwc install`) |",
             "|---|---|---|---|---|---|"]
    for f in FILES:
        when = f.when.value if f.backend is None else f"backend {f.backend}: {f.when.value}"
        lines.append(f"| `{f.name}` | {when} | {f.path} | {_mode(f)} | {f.what} "
                     f"| {f.reload.value} |")
    lines.append(DOC_END)
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.stdout.write(markdown())
