"""The shell commands an install runs on a node, one function per step.

Kept apart from the code that runs them so that `--dry-run` prints exactly
these, and tests can read them.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable, Collection, Iterable
from pathlib import PurePosixPath
from types import MappingProxyType
from typing import NamedTuple

from fwc import protocols as proto
from fwc.backend.files import (
    BOOT_UNIT,
    BY_NAME,
    ENABLED_UNITS,
    FILES,
    GENERATED_MARK,
    GENERATED_MARK_LINES,
    KERNEL_FAMILY_PATHS,
    LOAD_ORDER,
    LOADED_BY_INSTALL,
    GeneratedFile,
    Reload,
    kernel_guard,
    path_of,
    rules_file,
    unit_name,
)
from fwc.backend.probation import AT_BOOT, FUNCTIONS, OLD_BOOT_FAILED, ROLLING_BACK_AT_BOOT
from fwc.backend.render.nftables import TABLE as NFT_TABLE_NAME
from fwc.install.paths import (
    CONFIRMED,
    CONNTRACKD,
    CONNTRACKD_RAN,
    INSTALL_LOCK,
    LOCK_OWNER,
    RETIRE_SCRIPT,
    RETIRED,
    ROLLBACK_SCRIPT,
    ROLLED_BACK,
    SNAPSHOT,
    STAGING,
    WATCHDOG_PID,
)
from fwc.model.vocabulary import Backend

q = shlex.quote
# The address families of a cluster with both: no row is skipped (`kernel_guard`).
BOTH_FAMILIES = (4, 6)

# The one nftables table an nftables install owns (nftables.nft replaces only it).
NFT_TABLE = f"inet {NFT_TABLE_NAME}"

# Programs every install needs; each file's own are in its row (GeneratedFile.needs).
# A missing one must stop the install before anything changes: skipping the
# `keepalived -t` it would have run, or a reload, is not an install.
_ALWAYS_NEEDED = (("flock", "the install lock"), ("cmp", "the snapshot"),
                  ("sync", "a probation that outlives a power loss"))

# Flushes what the install wrote so far to disk. Written files reach it seconds later
# (ext4 commits every 5 s, and allocates the blocks of a new file up to 30 s later):
# a power loss in between leaves them empty or absent, and a boot that rolls back an
# unconfirmed install (fwc.backend.probation) would put an empty snapshot back (an
# empty old boot script "loads" nothing and exits 0), or roll back an install whose
# confirmation was lost.
_DURABLE = "sync"


# What may pass between taking the node lock and arming the watchdog (staging,
# test and snapshot: a few steps of at most 60 s each), and how long after the
# watchdog's deadline its rollback may still run: the lock outlives both.
LOCK_SETUP_BUDGET = 600
LOCK_SLACK = 120

# How long a restart of conntrackd may take (it takes well under a second when its
# config is good): systemd would go on starting a daemon that fails for ever.
CONNTRACKD_RESTART_WAIT_S = 30


def backends(files: list[GeneratedFile]) -> set[Backend]:
    """The packet filters FILES are written for (the rows that name one)."""
    return {f.backend for f in files if f.backend is not None}


# `nft -f` lines that remove fwc's table whether it exists or not (creating an empty
# one first makes the delete safe): a file starting with them replaces only that table.
NFT_REPLACE_HEAD = (f"table {NFT_TABLE} {{}}", f"delete table {NFT_TABLE}")
_PRINT_HEAD = f"printf '%s\\n' {' '.join(q(line) for line in NFT_REPLACE_HEAD)}"


# What a row the member no longer gets makes the node do once its file is gone: systemd
# forgets the unit (and its enablement link goes), the uplink monitor stops. The rest
# stays as it runs (old IPv6 rules, sets no rule names, a conntrackd without its sync
# link) until the next boot, which loads only what the member gets; fwc's routes of a
# removed routes script are flushed by the apply (`apply`).
STALE_RELOADS = frozenset({Reload.SYSTEMD, Reload.UPLINKS})


def stale_rows(files: list[GeneratedFile]) -> list[GeneratedFile]:
    """The rows of the table of generated files an earlier install may have put on the
    node that FILES no longer hold (routes or IPv6 taken out of the policy): of the
    packet filter FILES are for, or of none; another packet filter's are retire.sh's.
    The install removes them, its snapshot keeps them, a rollback puts them back."""
    using = backends(files)
    names = {f.name for f in files}
    return [f for f in FILES
            if f.name not in names and (f.backend is None or f.backend in using)]


def reloads_for(changed: Iterable[str], files: list[GeneratedFile]) -> set[Reload]:
    """The reload actions the snapshot's CHANGED names call for: a file of FILES its
    row's; a stale one (removed) only those of STALE_RELOADS."""
    names = {f.name for f in files}
    return {BY_NAME[name].reload for name in changed if name in BY_NAME
            and (name in names or BY_NAME[name].reload in STALE_RELOADS)}


def saved_rulesets(files: list[GeneratedFile]) -> str:
    """What the snapshot of FILES' install saves, for the user."""
    using = backends(files)
    return " and ".join(([f"nftables table {NFT_TABLE}"] if Backend.NFTABLES in using else [])
                        + (["rules, ipsets"] if Backend.IPTABLES in using else [])) \
        or "files"


def nft_drop_table() -> str:
    """Remove fwc's nftables table, whether it exists or not; never another table."""
    return f"{_PRINT_HEAD} | nft -f -"


def nft_list_table() -> str:
    """Print fwc's nftables table as the node's nft lists it; nothing when there is none.

    Fails when nft itself fails: an unreadable ruleset is not an absent table.
    """
    return (f"t=$(nft list tables) && if printf '%s\\n' \"$t\" "
            f"| grep -qx {q(f'table {NFT_TABLE}')}; then nft list table {NFT_TABLE}; fi")


def required_tools(files: list[GeneratedFile]) -> list[tuple[str, str]]:
    """(program, what needs it) for installing FILES."""
    return [*_ALWAYS_NEEDED, *(need for f in files for need in f.needs)]


def _unit_warning(unit: str, why: str) -> str:
    """Say (on stderr) when UNIT is enabled or running on a systemd node, and WHY that
    is a problem."""
    return (f"if systemctl -q is-enabled {unit} 2>/dev/null || systemctl -q is-active {unit} "
            f'2>/dev/null; then echo "warning: {unit} is enabled or running on this node: '
            f'{why}; disable it: systemctl disable --now {unit}" >&2; fi')


_FLUSHES = "its start, reload or stop flushes every rule, fwc's too, while forwarding stays on"
_COMPETES = ("its own policy filters next to fwc's and drops what it was not told about, "
             "VRRP and conntrackd sync too (both members become master)")
_WHY = {"firewalld.service": f"{_COMPETES}; with its iptables backend, its start and reload "
                             "also flush fwc's rules"}


def flushing_units_warning() -> str:
    """Say (on stderr) which of the distribution's firewall units is enabled or running on
    the node: a start, reload or stop of it flushes fwc's rules while forwarding stays
    on, and fwc cannot order that (docs/migration.md, step 6); or it keeps a policy of
    its own next to fwc's (`proto.COMPETING_FIREWALL_UNITS`)."""
    checks = [_unit_warning(unit, _FLUSHES) for unit in proto.FLUSHING_FIREWALL_UNITS]
    checks += [_unit_warning(unit, _WHY.get(unit, _COMPETES))
               for unit in proto.COMPETING_FIREWALL_UNITS]
    return f"if [ -d /run/systemd/system ]; then {'; '.join(checks)}; fi"


def ra_default_route_warning() -> str:
    """Say (on stderr) which IPv6 default route of the node the kernel learnt from a router
    advertisement. Switching IPv6 forwarding on (forwarding.conf) makes the kernel remove
    such routes at once and ignore advertisements from then on (on a device whose
    accept_ra is 1; 2 keeps them), so the node would route IPv6 nowhere, and after a
    reboot (forwarding on before the network) it never learns one again. Only the
    kernel's own (accept_ra 1 on their device) are said: a route a daemon added itself
    (NetworkManager handles advertisements with accept_ra 0) stays."""
    key = proto.FORWARDING_SYSCTLS[6]
    return ("ip -6 -o route show default proto ra 2>/dev/null "
            "| sed -n 's/.* dev \\([^ ]*\\).*/\\1/p' | sort -u | while read -r d; do "
            'if [ "$(cat "/proc/sys/net/ipv6/conf/$d/accept_ra" 2>/dev/null)" = 1 ]; then '
            'echo "warning: the IPv6 default route via $d was learnt from a router '
            f"advertisement: switching {key} on removes it, and the kernel then ignores "
            "advertisements: declare it in the policy (route default via GATEWAY) or set it "
            'statically" >&2; fi; done')


def preflight(files: list[GeneratedFile], families: Collection[int] = BOTH_FAMILIES) -> str:
    """Refuse (exit 3) when a program the install needs is missing on the node; warn of a
    firewall unit that would flush the rules (`flushing_units_warning`) and, where the
    install switches IPv6 forwarding on (FAMILIES: the cluster's, `Cluster.families`), of
    an IPv6 default route that this removes (`ra_default_route_warning`)."""
    lines = [flushing_units_warning()]
    if 6 in families and any(f.name == "forwarding.conf" for f in files):
        lines.append(ra_default_route_warning())
    lines.append("m=")
    for tool, why in required_tools(files):
        lines.append(f"command -v {tool} >/dev/null 2>&1 || m=\"$m, {tool} (for {why})\"")
    lines.append('if [ -n "$m" ]; then echo "not installed on this node: ${m#, }: '
                 'install them first" >&2; exit 3; fi')
    return "\n".join(lines)


def _read_owner() -> str:
    return f"p= t= s=; {{ read -r p t s < {LOCK_OWNER}; }} 2>/dev/null; "


def take_lock(token: str, seconds: float) -> str:
    """Take the node's install lock (exit 3 when another install holds it).

    flock(1) on INSTALL_LOCK; a detached `sleep` inherits the locked descriptor
    and keeps the lock after this command returns, until release() kills it
    or SECONDS pass (an fwc that died before arming the watchdog). The kernel
    drops the lock with its holder, so a dead holder never leaves a stale lock.
    """
    return (f"mkdir -p -m 0700 {INSTALL_LOCK.rsplit('/', 1)[0]} && exec 8>>{INSTALL_LOCK} "
            "|| exit 3\n"
            "if ! flock -n 8; then "
            f"{_read_owner()}"
            "echo \"another fwc install is running on this node (it holds "
            f"{INSTALL_LOCK}, holder pid $p, install $t): wait until it is confirmed or "
            "rolled back; if that fwc died, the lock ends with the holder\" >&2; exit 3; fi\n"
            f"nohup sleep {max(1, round(seconds))} </dev/null >/dev/null 2>&1 &\n"
            f'echo "$! {token} $(date +%s)" > {LOCK_OWNER}')


def _lock_is_ours(token: str) -> str:
    """Shell test: this install still holds the node lock, taken recently enough."""
    return (f'{{ {_read_owner()}[ "$t" = {token} ] && '
            '[ "$(cat /proc/$p/comm 2>/dev/null)" = sleep ] && '
            f"[ $(( $(date +%s) - ${{s:-0}} )) -le {LOCK_SETUP_BUDGET} ]; }}")


def _forget_lock(token: str) -> str:
    """At boot, release() without its kill: the holder died with the earlier boot, and
    the PID install.owner names may be any process of this one (a `sleep` too)."""
    return f'{_read_owner()}if [ "$t" = {token} ]; then rm -f {LOCK_OWNER}; fi'


def release(token: str) -> str:
    """Give the node lock back, when it is this install's (idempotent)."""
    # Waits (at most 1 s) until the holder is gone, so that the lock is free
    # when this returns; a zombie no longer holds it.
    return (f'{_read_owner()}if [ -n "$p" ] && [ "$t" = {token} ]; then rm -f {LOCK_OWNER}; '
            'if [ "$(cat /proc/$p/comm 2>/dev/null)" = sleep ]; then kill "$p" 2>/dev/null; '
            "i=0; while [ $i -lt 20 ] && grep -q '^State:[[:space:]]*[^Z]' /proc/$p/status "
            "2>/dev/null; do sleep 0.05; i=$((i+1)); done; fi; fi; :")


def refuse_if_pending() -> str:
    """An earlier install armed its watchdog and was neither confirmed nor rolled back
    (`fwc.backend.probation`, the rule the boot script reads too): do not stack another.

    While the watchdog lives, that install waits for its confirmation. Once it is gone
    without a marker, the node runs what nobody confirmed, and the snapshot is the only
    copy of what ran before: this install's snapshot would replace it, and its rollback
    would come back to the unconfirmed configuration. A node that rebooted during the
    probation rolls back at boot (fwc-firewall.sh): what is left here is a rollback
    that failed (at boot, or the watchdog's), or a boot that ran no fwc-firewall.sh;
    the admin decides.
    """
    return (f"{FUNCTIONS}; if unconfirmed; then "
            "if watchdog_running; then "
            'echo "an earlier fwc install is still waiting for its confirmation" >&2; '
            'else echo "an earlier fwc install was neither confirmed nor rolled back: its '
            "watchdog is gone and its rollback failed, or the node went down during the "
            "probation and its boot did not roll it back (the boot log of fwc-firewall "
            f"says why); on the node, sh {ROLLBACK_SCRIPT} restores what ran before it, "
            f'touch {CONFIRMED} keeps what runs now" >&2; fi; exit 3; fi; '
            f"rm -rf {STAGING} && mkdir -p -m 0700 {STAGING}")


def stage(file: GeneratedFile) -> str:
    """Write stdin to the staging copy of FILE."""
    staged = f"{STAGING}/{file.name}"
    return f"cat > {staged} && chmod {file.mode:o} {staged}"


def _new_copy(path: str) -> str:
    """Where the file for PATH is written before the rename that puts it in place."""
    return f"{path}.fwc-new"


def write(path: str, mode: int) -> str:
    """Write stdin to PATH on the node, replacing it in one rename."""
    tmp = _new_copy(path)
    return (f"mkdir -p {q(path.rsplit('/', 1)[0])} && cat > {tmp} && chmod {mode:o} {tmp} "
            f"&& mv -f {tmp} {path}")


def with_kernel(file: GeneratedFile, families: Collection[int], command: str,
                what: str) -> str:
    """COMMAND, or, for a row the cluster's FAMILIES make optional (`kernel_guard`: a
    family the cluster has no address of), COMMAND only where the kernel has the family,
    saying so on stderr where it does not (WHAT: what is skipped, `loaded`, `tested`)."""
    kernel = kernel_guard(file, families)
    if kernel is None:
        return command
    return (f"if [ -d {kernel} ]; then {command}; else echo 'this kernel has no {kernel}: "
            f"{file.name} not {what}' >&2; fi")


def test_ruleset(files: list[GeneratedFile], families: Collection[int] = BOTH_FAMILIES) -> str:
    """Test the staged FILES on the node; FAMILIES: the cluster's (`Cluster.families`)."""
    names = {f.name for f in files}
    # The boot fallback is only loaded when something already went wrong: test it now.
    steps = [f"nft -c -f {STAGING}/{f.name}" if f.loader == "nft"
             else with_kernel(f, families, f"{f.loader} --test < {STAGING}/{f.name}", "tested")
             for reload in (Reload.RULES, Reload.FAILSAFE) for f in files if f.reload is reload]
    ipsets = [f for f in files if f.reload is Reload.IPSETS]
    if ipsets:
        # A rule naming a set that does not exist yet fails the test, and creating
        # the sets here would change the node: test in a throwaway network
        # namespace (sets are per namespace) with the new sets loaded.
        isolated = " && ".join([*(f"ipset restore < {STAGING}/{f.name}" for f in ipsets),
                                *steps])
        steps = [f"unshare -n sh -c {q(isolated)}"]
    # The routes script must at least parse; what it installs only the node can tell.
    steps += [f"sh -n {STAGING}/{f.name}" for f in files
              if f.reload in (Reload.ROUTES, Reload.UPLINKS)]
    if "keepalived.conf" in names:
        # Also catches a VRRP interface this node does not have. keepalived is
        # known to be there (preflight).
        steps.append(f"keepalived -t -f {STAGING}/keepalived.conf")
    return " && ".join(steps)


def sysctl_keys(conf: str) -> list[str]:
    """The keys a sysctl.conf (`sysctl -p` format) sets, in order."""
    keys: list[str] = []
    for line in conf.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")) or "=" not in line:
            continue
        key = line.split("=", 1)[0].strip().lstrip("-")
        if key and key not in keys:
            keys.append(key)
    return keys


def _save_iptables(new: str) -> list[str]:
    return [
        f"iptables-save > {new}/iptables.save",
        # (nothing to save where the kernel has no IPv6, and ip6tables-save fails there;
        # without ip6tables.save the rollback leaves IPv6 alone)
        f"if command -v ip6tables-save >/dev/null 2>&1 && [ -d {KERNEL_FAMILY_PATHS[6]} ]; "
        f"then ip6tables-save > {new}/ip6tables.save; fi",
        "if command -v ipset >/dev/null 2>&1; then "
        f"ipset save > {new}/ipsets.save 2>/dev/null || :; fi",
    ]


def _save_nftables(new: str) -> list[str]:
    # Only fwc's own table: the install replaces nothing else. No nft.save means
    # there was no such table, and a rollback deletes the new one.
    return ["t=$(nft list tables)",
            f"if printf '%s\\n' \"$t\" | grep -qx {q(f'table {NFT_TABLE}')}; then "
            f"nft list table {NFT_TABLE} > {new}/nft.save; fi"]


def _previous_install(backend: Backend) -> str:
    """Shell test: fwc's earlier install of BACKEND left its ruleset on the node (not yet
    retired), and the node can save it."""
    return (f"[ -e {rules_file(backend).path} ] "
            f"&& command -v {_SAVED_RULES[backend].saver} >/dev/null 2>&1")


def snapshot(files: list[GeneratedFile], sysctls: list[str]) -> str:
    """Save the running rules, ipsets, sysctl values and every file the install replaces.

    SYSCTLS are the keys the new sysctl.conf sets: their current values go to
    sysctl.save (`key=value` lines) for rollback.sh. Prints `changed NAME` for
    each staged file that differs from the one in place, so that only the
    daemons whose configuration changed are reloaded.
    """
    new = f"{SNAPSHOT}.new"
    lines = ["set -e", f"rm -rf {new}", f"mkdir -p -m 0700 {new}"]
    using = backends(files)
    for backend in Backend:
        if backend in using:
            lines += _SAVED_RULES[backend].save(new)
        else:
            # fwc's earlier install of another backend still runs (a switch): a node that
            # reboots on probation loads only the new backend, and the rollback must then
            # bring the old one back (`rollback_script`), from what runs now.
            lines += [f"if {_previous_install(backend)}; then",
                      *(f"    {line}" for line in _SAVED_RULES[backend].save(new)), "fi"]
    if any(f.reload is Reload.CONNTRACKD for f in files):
        # (the running daemon answers on the socket of the config in place, the old one)
        ran = f"{new}/{PurePosixPath(CONNTRACKD_RAN).name}"
        lines.append(f"if {CONNTRACKD} -s >/dev/null 2>&1; then if [ -d /run/systemd/system ] "
                     f"&& systemctl -q is-active conntrackd; then echo systemd > {ran}; "
                     f"else echo plain > {ran}; fi; fi")
    if sysctls:
        lines.append(f": > {new}/sysctl.save")
    for key in sysctls:
        # A key this kernel does not have cannot be set by the install either.
        lines.append(f"if v=$(sysctl -n {q(key)} 2>/dev/null); then "
                     f"printf '%s=%s\\n' {q(key)} \"$v\" >> {new}/sysctl.save; fi")
    for index, file in enumerate(files):
        lines.append(
            f"if [ -e {file.path} ]; then cp -p {file.path} {new}/file.{index}; fi; "
            f"cmp -s {STAGING}/{file.name} {file.path} || echo changed {file.name}")
    for index, row in enumerate(stale_rows(files)):
        # Only fwc's own file: an admin's conntrackd.conf on a node whose cluster has no
        # sync link is not the install's to remove (the apply removes what is kept here).
        lines.append(f"if {fwcs_own(row.path)}; then "
                     f"cp -p {row.path} {new}/gone.{index}; echo changed {row.name}; fi")
    lines.append(f"rm -rf {SNAPSHOT}")
    lines.append(f"mv {new} {SNAPSHOT}")
    return "\n".join(lines)


def fwcs_own(path: str) -> str:
    """Shell test: PATH (a word, or "$var") is a file fwc generated (GENERATED_MARK in its
    first lines), so an install may remove it; an admin's file at that path stays."""
    return (f"[ -f {path} ] && head -n {GENERATED_MARK_LINES} {path} "
            f"| grep -qF {q(GENERATED_MARK)}")


def in_load_order(files: Iterable[GeneratedFile]) -> list[GeneratedFile]:
    """FILES in the order the apply step loads them (LOAD_ORDER: sets before the rules
    that name them, rules before forwarding)."""
    listed = list(files)
    return [f for reload in LOAD_ORDER for f in listed if f.reload is reload]


def ruleset_loader(file: GeneratedFile) -> list[str]:
    """The program that loads the sets or rules FILE from its standard input."""
    if file.reload is Reload.IPSETS:
        return ["ipset", "restore", "-exist"]
    if file.reload is Reload.RULES and file.loader is not None:
        return ["nft", "-f", "-"] if file.loader == "nft" else [file.loader]
    raise ValueError(f"{file.name} is not a set or rules file")


def load(file: GeneratedFile, families: Collection[int] = BOTH_FAMILIES) -> str:
    """The command that makes the node use FILE at once (its row's LOAD_ORDER reload), on a
    node of a cluster with addresses of FAMILIES (`with_kernel`)."""
    if file.reload is Reload.RULES and file.loader == "nft":
        # nft reads a file by name (`-f`): its diagnostics then name the file.
        return f"nft -f {file.path}"
    if file.reload in (Reload.IPSETS, Reload.RULES):
        return with_kernel(file, families, f"{' '.join(ruleset_loader(file))} < {file.path}",
                           "loaded")
    if file.reload is Reload.SYSCTL:
        # A key the kernel refuses (per-namespace limits, removed knobs) must not
        # undo a good ruleset: report it and carry on.
        return (f"if ! sysctl -q -p {file.path}; then "
                "echo 'warning: some sysctl keys were not set' >&2; fi")
    if file.reload is Reload.ROUTES:
        # A route the kernel refuses (a gateway whose interface is down) must not undo
        # a good ruleset: the script installs what it can and says what it could not.
        return (f"if ! sh {file.path}; then "
                "echo 'warning: some routes were not installed' >&2; fi")
    if file.reload is Reload.FORWARDING:
        # Forwarding is not in /etc/sysctl.d (the boot unit switches it on after the
        # rules): switch it on here, after the rules were applied above.
        return f"sysctl -q -p {file.path}"
    raise ValueError(f"{file.name} is not loaded by the apply step ({file.reload.name})")


def apply(files: list[GeneratedFile], families: Collection[int] = BOTH_FAMILIES) -> str:
    """Put the staged files in place, then load them in LOAD_ORDER (each load atomic);
    FAMILIES: the cluster's (`Cluster.families`, for `load`).

    Holds rollback.sh's lock throughout: an apply whose connection dropped goes on
    on the node (sshd does not stop it), and the rollback fwc or the watchdog then
    runs must come after it, never before it finishes. An apply that arrives once
    the node rolled back changes nothing.
    """
    lines = ["set -e", f"exec 9>>{SNAPSHOT}/lock",
             "if command -v flock >/dev/null 2>&1; then flock 9; fi",
             f"if [ -e {ROLLED_BACK} ]; then echo 'the node already restored the previous "
             "configuration: nothing applied' >&2; exit 1; fi"]
    for file in files:
        tmp = _new_copy(file.path)
        lines.append(f"mkdir -p {q(file.path.rsplit('/', 1)[0])}")
        # `set -e` ignores a failure inside an && list but its last command: a copy
        # that fails (a full disk) must stop the apply, not load a mix of old and new.
        lines.append(f"cp {STAGING}/{file.name} {tmp} && chmod {file.mode:o} {tmp} "
                     f"&& mv -f {tmp} {file.path} || exit 1")
    gone = list(enumerate(stale_rows(files)))
    # What fwc installed before and the member no longer gets goes, as the snapshot kept
    # it (`snapshot`): a routes unit left behind would add the old routes again at
    # every boot.
    lines += [f"if [ -e {SNAPSHOT}/gone.{index} ]; then rm -f {row.path}; fi"
              for index, row in gone]
    lines += [load(f, families) for f in in_load_order(files)]
    lines += [f"if [ -e {SNAPSHOT}/gone.{index} ]; then {{ {_flush_routes()}; }} "
              "2>/dev/null || :; fi" for index, row in gone if row.reload is Reload.ROUTES]
    lines.append(f"rm -rf {STAGING}")
    return "\n".join(lines)


def reload_systemd_units() -> str:
    """Re-read changed units; enable the boot unit so the next boot loads the rules.

    The boot unit is then marked active without loading anything (its script exits 0
    when LOADED_BY_INSTALL is set in systemd's environment): the rules are in already,
    and running the load again would switch forwarding off for the moment it takes.
    Left inactive, it would be started by the first restart of keepalived or
    conntrackd (both require it), which would run that load on a live node. On a
    rollback that removed the unit, its enablement link goes too.
    """
    steps = []
    for unit in ENABLED_UNITS:
        name = PurePosixPath(path_of(unit)).name
        steps.append(f"if [ -e {path_of(unit)} ]; then systemctl enable -q {name}; "
                     f"else rm -f {_wants_link(unit)}; fi")
    boot = path_of("fwc-firewall.service")
    steps.append(f"if [ -e {boot} ] && ! systemctl -q is-active {BOOT_UNIT}; then "
                 f"systemctl set-environment {LOADED_BY_INSTALL}=1 && "
                 f"{{ systemctl start {BOOT_UNIT}; rc=$?; "
                 f"systemctl unset-environment {LOADED_BY_INSTALL}; [ $rc -eq 0 ]; }}; fi")
    return ("if [ -d /run/systemd/system ]; then systemctl daemon-reload && "
            + "; ".join(steps) + "; fi")


def _wants_link(unit: str) -> str:
    """The link `systemctl enable` makes for fwc's UNIT (their [Install] section says
    WantedBy=multi-user.target)."""
    return f"/etc/systemd/system/multi-user.target.wants/{PurePosixPath(path_of(unit)).name}"


def reload_uplinks(systemd: bool) -> str:
    """The uplink monitor reads its script at start: restart it, or stop it when its unit
    went (a rollback to a policy without probed routes). The routes stay as they are."""
    unit = path_of("fwc-uplinks.service")
    name = PurePosixPath(unit).name
    if not systemd:
        return ("echo 'warning: fwc-uplinks.sh changed but this node has no systemd: "
                "restart the uplink monitor yourself' >&2")
    return (f"if [ -d /run/systemd/system ]; then if [ -e {unit} ]; then "
            f"systemctl restart {name}; else systemctl stop {name} 2>/dev/null || :; fi; fi")


def reload_keepalived(systemd: bool) -> str:
    """SIGHUP makes keepalived re-read its config without dropping VRRP state."""
    signal = ("pkill -HUP --oldest -x keepalived --ns $$ --nslist net "
              "|| echo 'keepalived is not running: nothing to reload' >&2")
    if not systemd:
        return signal
    return ("if [ -d /run/systemd/system ] && systemctl -q is-active keepalived; then "
            f"systemctl reload keepalived; else {signal}; fi")


def reload_command(reload: Reload, systemd: bool, private_run: bool, old_config: str | None,
                   role: str) -> tuple[str, str] | None:
    """(daemon, the command that makes it read its changed configuration), None: nothing
    to run on this node. Used by fwc install (fwc.install.node) and the Ansible role."""
    if reload is Reload.SYSTEMD:
        return ("systemd", reload_systemd_units()) if systemd else None
    if reload is Reload.UPLINKS:
        return "fwc-uplinks", reload_uplinks(systemd)
    if reload is Reload.KEEPALIVED:
        return "keepalived", reload_keepalived(systemd)
    if reload is Reload.CONNTRACKD and not private_run:
        # Its UNIX socket path is shared with the host (docs/ha-pitfalls.md): a restart
        # could hit another node's daemon.
        return "conntrackd", ("echo 'warning: conntrackd.conf changed but this node shares "
                              "/run: restart its conntrackd yourself' >&2")
    if reload is Reload.CONNTRACKD:
        return "conntrackd", reload_conntrackd(systemd, old_config, role)
    return None


def reload_conntrackd(systemd: bool, old_config: str | None, role: str) -> str:
    """conntrackd cannot re-read its config: restart it, then resynchronise.

    The old daemon is stopped through the *old* config's socket. A backup then
    asks the master for a full resync (-n); the master re-reads the kernel
    table (-R) and sends its cache to the backups (-B), as the notify hook
    does on a transition (docs/ha-pitfalls.md, "What a transition does").
    """
    stop_conf = q(old_config) if old_config else path_of("conntrackd.conf")
    resync = f"{CONNTRACKD} -n" if role == "backup" else f"{CONNTRACKD} -R && {CONNTRACKD} -B"
    wait_socket = (f"i=0; until {CONNTRACKD} -s >/dev/null 2>&1; do i=$((i+1)); "
                   "[ $i -gt 50 ] && { echo 'conntrackd did not come back' >&2; exit 1; }; "
                   "sleep 0.1; done")
    start = f"{CONNTRACKD} -d; {wait_socket}; {resync}"
    # Not running, but it ran when the snapshot was taken: a restart of this install
    # failed (a new conntrackd.conf is only tested by running it), and the rollback
    # must start the old one again, not leave the node without state sync.
    plain = (f"if conntrackd -C {stop_conf} -s >/dev/null 2>&1; then "
             f"conntrackd -C {stop_conf} -k >/dev/null 2>&1 || :; "
             "i=0; while [ -e /var/lock/conntrackd.lock ] && [ $i -lt 50 ]; do "
             "i=$((i+1)); sleep 0.1; done; "
             f"{start}; "
             f"elif [ -e {CONNTRACKD_RAN} ]; then {start}; "
             "else echo 'conntrackd is not running: nothing to restart' >&2; fi")
    if not systemd:
        return plain
    # (its drop-in requires the boot unit: never start that with it on a live node)
    # (its drop-in has systemd start a failing conntrackd again without end, and the
    # restart waits for that start job: a new conntrackd.conf it cannot start with must
    # fail this step, not hold the install until its watchdog's deadline)
    return ("if [ -d /run/systemd/system ] && { systemctl -q is-active conntrackd "
            f"|| grep -qx systemd {CONNTRACKD_RAN} 2>/dev/null; }}; then "
            f"timeout -k 5 {CONNTRACKD_RESTART_WAIT_S} systemctl "
            "--job-mode=ignore-requirements restart conntrackd && "
            f"{wait_socket} && {resync}; else {plain}; fi")


def _flush_routes() -> str:
    """Remove fwc's routes and rules (its protocol number), of both families."""
    return "; ".join(f"ip -{family} route flush table all proto {proto.ROUTE_PROTOCOL}; "
                     f"ip -{family} rule flush protocol {proto.ROUTE_PROTOCOL}"
                     for family in (4, 6))


def _restore_routes(files: list[GeneratedFile]) -> list[str]:
    """The routes as they were: the old script again, or none of fwc's without one."""
    return [f"if [ -e {file.path} ]; then sh {file.path} || rc=1; "
            f"else {{ {_flush_routes()}; }} 2>/dev/null || :; fi"
            for file in files if file.reload is Reload.ROUTES]


# `ipset save` output turned into a restore that gives each saved set its members back
# atomically, as the compiled ipsets.rules loads them: filled under NAME.new, then
# swapped in. Flushing the live set and adding its members again (as the rollback did)
# left it empty for the length of the restore, and a `drop from <set>` rule then
# matched nothing: blocked hosts passed while the rollback ran. A name too long for the
# suffix (31 characters at most; not one of fwc's) is still flushed and refilled.
SWAP_SAVED_SETS = (
    '$1 == "create" { n++; name[n] = $2; into[$2] = $2; '
    'if (length($2) <= 27) into[$2] = $2 ".new"; '
    'print $0 " -exist"; '
    'if (into[$2] != $2) { line = $0; sub(/^create [^ ]+/, "create " into[$2], line); '
    'print line " -exist" } '
    'print "flush " into[$2]; next } '
    '$1 == "add" { line = $0; sub(/^add [^ ]+/, "add " into[$2], line); print line; next } '
    'END { for (i = 1; i <= n; i++) if (into[name[i]] != name[i]) { '
    'print "swap " into[name[i]] " " name[i]; print "destroy " into[name[i]] } }')


def _iptables_rollback() -> list[str]:
    return [
        # Sets the snapshot had get their saved members back before the restored
        # rules use them again, each filled aside and swapped in (SWAP_SAVED_SETS).
        "if [ -e $S/ipsets.save ] && command -v ipset >/dev/null 2>&1; then",
        f"    awk '{SWAP_SAVED_SETS}' $S/ipsets.save | ipset restore || rc=1",
        "fi",
        # Restoring a save leaves tables it does not mention alone: a nat table the
        # install created would keep its rules. Add those tables back empty.
        "loaded_only() {",
        '    for t in $($1 | sed -n "s/^\\*//p"); do',
        '        grep -qx "\\*$t" "$2" && continue',
        '        echo "*$t"',
        '        $1 -t "$t" | sed -n "s/^:\\([A-Z]*\\) [A-Z]* .*/:\\1 ACCEPT [0:0]/p"',
        "        echo COMMIT",
        "    done",
        "}",
        "{ cat $S/iptables.save; loaded_only iptables-save $S/iptables.save; } "
        "| iptables-restore || rc=1",
        "if [ -e $S/ip6tables.save ]; then",
        "    { cat $S/ip6tables.save; loaded_only ip6tables-save $S/ip6tables.save; } "
        "| ip6tables-restore || rc=1",
        "fi",
        # Sets only the new rules used are referenced by nothing now.
        "if [ -e $S/ipsets.save ] && command -v ipset >/dev/null 2>&1; then",
        "    for set in $(ipset list -n); do",
        '        grep -q "^create $set " $S/ipsets.save || ipset destroy "$set" 2>/dev/null || :',
        "    done",
        "fi",
    ]


def _nft_restore() -> list[str]:
    # The previous fwc table in one transaction; the node's other tables are not touched.
    return [f"{{ {_PRINT_HEAD}; cat $S/nft.save; }} | nft -f - || rc=1"]


def _nft_rollback() -> list[str]:
    # The previous fwc table, or none when there was none.
    return ["if [ -e $S/nft.save ]; then", *(f"    {line}" for line in _nft_restore()),
            "else", f"    {nft_drop_table()} || rc=1", "fi"]


class _SavedRules(NamedTuple):
    """How a snapshot keeps a backend's running rules, and a rollback puts them back."""

    save: Callable[[str], list[str]]  # the lines that save them into a snapshot directory
    saver: str  # the program those lines need (and that restores them)
    saved: str  # the snapshot's file that says they were saved
    rollback: Callable[[], list[str]]  # the install's own backend: its saved rules, or none
    restore_previous: Callable[[], list[str]]  # fwc's earlier install of the other backend


_SAVED_RULES = MappingProxyType({
    Backend.IPTABLES: _SavedRules(_save_iptables, "iptables-save", "iptables.save",
                                  _iptables_rollback, _iptables_rollback),
    Backend.NFTABLES: _SavedRules(_save_nftables, "nft", "nft.save", _nft_rollback,
                                  _nft_restore),
})


def _rules_rollback(using: set[Backend]) -> list[str]:
    """Restore the rules of the backends of the install, and those of fwc's earlier
    install of another backend when the snapshot saved them (a switch): untouched by
    the install, they are gone once the node rebooted on probation (its new boot script
    loads only the new backend). The old backend first, while the new rules still
    filter."""
    lines: list[str] = []
    for backend in sorted(Backend, key=lambda b: b in using):
        rules = _SAVED_RULES[backend]
        if backend in using:
            lines += rules.rollback()
        else:
            lines += [f"if [ -e $S/{rules.saved} ]; then",
                      *(f"    {line}" for line in rules.restore_previous()), "fi"]
    return lines


def _put_back(saved: str, path: str) -> str:
    """Copy the snapshot's SAVED to PATH. In place (on a full disk the truncation frees
    what the copy needs), but the boot script in one rename: at boot the boot script
    running the rollback is that file, and its shell must read on in the file it started,
    never in a mix of both."""
    if path != path_of("fwc-firewall.sh"):
        return f"cp -p {saved} {path} || rc=1"
    tmp = _new_copy(path)
    return f"cp -p {saved} {tmp} && mv -f {tmp} {path} || rc=1"


# The keys the boot script switches off first and on last (`proto.FORWARDING_SYSCTLS`).
_FORWARDING_KEYS = "|".join(proto.FORWARDING_SYSCTLS.values())


def _sysctl_restore() -> list[str]:
    """sysctl.save's values back; at boot (`$at_boot`) not forwarding, which stays off
    until rules are loaded, and not a key the kernel does not have yet (net.netfilter.*
    before the rules load nf_conntrack: this boot never set it either)."""
    return [
        "if [ -e $S/sysctl.save ]; then",
        "    while IFS= read -r kv; do",
        '        k=${kv%%=*}; v=${kv#*=}',
        '        if [ -n "$at_boot" ]; then',
        f"            case $k in {_FORWARDING_KEYS}) continue ;; esac",
        '            sysctl -n "$k" >/dev/null 2>&1 || continue',
        "        fi",
        '        [ "$(sysctl -n "$k" 2>/dev/null)" = "$v" ] '
        '|| sysctl -q -w "$k=$v" >/dev/null || rc=1',
        "    done < $S/sysctl.save",
        "fi",
    ]


def _forwarding_restore() -> list[str]:
    """sysctl.save's forwarding values back, once rules are in (at boot)."""
    return [
        "if [ -e $S/sysctl.save ]; then",
        "    while IFS= read -r kv; do",
        '        k=${kv%%=*}; v=${kv#*=}',
        f'        case $k in {_FORWARDING_KEYS}) sysctl -q -w "$k=$v" >/dev/null || rc=1 ;; esac',
        "    done < $S/sysctl.save",
        "fi",
    ]


def _boot_units(rows: list[GeneratedFile]) -> list[str]:
    """At boot, fwc's units among ROWS (the install's and its stale ones) enabled or not
    as the rollback left their files, as `reload_systemd_units` would after a rollback,
    but without `daemon-reload` and without waiting for a job: systemd already read the
    units of this boot, and the boot unit runs before the units that would wait for it.
    A unit that went is stopped (its start job of this boot is dropped), one that came
    back is started once its ordering allows; a changed unit's new definition serves
    until the next boot (which reads the restored one)."""
    lines = []
    for row in rows:
        if row.name not in ENABLED_UNITS:
            continue
        wants = _wants_link(row.name)
        name = unit_name(row.name)
        # (the boot unit is the one running this: only its link changes)
        start, stop = ("", "") if name == BOOT_UNIT else (
            f"; systemctl --no-block start {name} 2>/dev/null || :",
            f"; systemctl --no-block stop {name} 2>/dev/null || :")
        lines.append(f"    if [ -d /run/systemd/system ]; then if [ -e {row.path} ]; then "
                     f"mkdir -p {PurePosixPath(wants).parent} && ln -sf {row.path} {wants}"
                     f"{start}; else rm -f {wants}{stop}; fi; fi")
    return lines


def _boot_files_back(files: list[GeneratedFile], gone: list[GeneratedFile]) -> list[str]:
    """At boot, once the files and sysctl values are back: stop when one did not come
    back (nothing here can vouch for the mix: unmarked, the next install refuses, and the
    calling boot script fails closed); else fwc's units as the files now say."""
    return ["    [ $rc -eq 0 ] || exit $rc", *_boot_units([*files, *gone])]


def rollback_script(files: list[GeneratedFile], reloads: list[str], *, token: str) -> str:
    """The node restores itself with this, from the watchdog or from fwc; at boot, from
    the boot script (`rollback.sh boot`, `fwc.backend.probation`).

    Idempotent and serialised: the watchdog and fwc may both reach it. Once
    the old configuration is back it releases install TOKEN's node lock.

    At boot it runs before the network and the daemons: the files and sysctl values
    come back (forwarding stays off), then the old configuration's boot script loads
    its rules as any boot does (without one, fwc's first install: the saved rules, then
    forwarding), and only then is the install marked rolled back. No routes (their unit
    runs them once the network is up) and no daemon reloads (none runs yet; a systemctl
    that waits for a job would wait for the boot unit running this).
    """
    lines = [
        "#!/bin/sh",
        "# Written by fwc install: restores what ran before the install.",
        f"# `sh {ROLLBACK_SCRIPT} {AT_BOOT}`: the boot script's rollback of an install",
        "# the node rebooted with before it was confirmed (before the network and daemons).",
        f"S={SNAPSHOT}",
        f'at_boot=; [ "${{1:-}}" = {AT_BOOT} ] && at_boot=1',
        "exec 9>>$S/lock",
        "if command -v flock >/dev/null 2>&1; then flock 9; fi",
        "[ -e $S/confirmed ] && exit 0",
        "[ -e $S/rolled-back ] && exit 0",
        "rc=0",
    ]
    for index, file in enumerate(files):
        # (and the copy an apply killed before its rename left next to it)
        lines.append(f"if [ -e $S/file.{index} ]; then {_put_back(f'$S/file.{index}', file.path)}; "
                     f"else rm -f {file.path}; fi; rm -f {_new_copy(file.path)}")
    gone = stale_rows(files)
    for index, row in enumerate(gone):
        lines.append(f"if [ -e $S/gone.{index} ]; then "
                     f"{_put_back(f'$S/gone.{index}', row.path)}; fi")
    # Before the rules: a node where forwarding was off must not keep forwarding.
    lines += _sysctl_restore()
    boot = path_of("fwc-firewall.sh")
    lines += [
        'if [ -n "$at_boot" ]; then',
        *_boot_files_back(files, gone),
        "fi",
        f'if [ -n "$at_boot" ] && [ -e {boot} ]; then',
        # The old configuration boots as any boot does: its rules, or its own fail-closed
        # ones, then forwarding (an earlier fwc's boot script too).
        f"    {ROLLING_BACK_AT_BOOT}=1 sh {boot} || exit {OLD_BOOT_FAILED}",
        "else",
        # (at boot: fwc's first install on the node, and what ran before it was saved)
        *(f"    {line}" for line in _rules_rollback(backends(files))),
        '    if [ -n "$at_boot" ]; then',
        "        [ $rc -eq 0 ] || exit $rc",
        *(f"        {line}" for line in _forwarding_restore()),
        "    else",
        *(f"        {line}" for line in [*_restore_routes([*files, *gone]), *reloads]),
        "    fi",
        "fi",
        # Without the marker the watchdog tries again at its deadline.
        f"if [ $rc -eq 0 ]; then touch $S/rolled-back; if [ -n \"$at_boot\" ]; then "
        f"{_forget_lock(token)}; else {release(token)}; fi; fi",
        "exit $rc",
    ]
    return "\n".join(lines) + "\n"


def _retire_iptables() -> list[str]:
    """Flush the tables fwc's previous iptables install loaded, then its sets and files.

    That install replaced whole tables (iptables-restore), so every table its
    files name was fwc's: each is restored empty with ACCEPT policies (user
    chains go). The files stay when that fails, so that a second run (the
    watchdog, or the next install) can try again and `fwc diff --installed`
    shows them.
    """
    rows = [f for f in FILES if f.backend is Backend.IPTABLES]
    lines = [
        "owned_empty() {",
        '    for t in $(sed -n "s/^\\*//p" "$2"); do',
        '        echo "*$t"',
        '        $1 -t "$t" | sed -n "s/^:\\([A-Z]*\\) [A-Z]* .*/:\\1 ACCEPT [0:0]/p"',
        "        echo COMMIT",
        "    done",
        "}",
        "old=0",
    ]
    for row in rows:
        if row.reload is not Reload.RULES or row.loader is None:
            continue
        save = row.loader.replace("-restore", "-save")
        program = row.loader.split("-")[0]
        # A kernel without the row's family holds none of its tables (and its restore
        # fails): nothing to empty there.
        present = f"[ -e {row.path} ]" + (f" && [ -d {row.kernel} ]" if row.kernel else "")
        lines += [
            f"if {present}; then",
            f"    tables=$(sed -n 's/^\\*//p' {row.path} | tr '\\n' ' ')",
            f"    if command -v {row.loader} >/dev/null 2>&1 "
            f"&& owned_empty {save} {row.path} | {row.loader}; then",
            f"        echo \"{program}: emptied the tables of fwc's previous iptables "
            "install: $tables\" >&2",
            "    else",
            f"        echo \"warning: could not empty the {program} tables $tables of fwc's "
            "previous iptables install\" >&2; old=1",
            "    fi",
            "fi",
        ]
    sets = next(f for f in rows if f.reload is Reload.IPSETS)
    lines += [
        # Referenced by no rule of fwc's any more; a set someone else uses stays.
        f"if [ $old -eq 0 ] && [ -e {sets.path} ] && command -v ipset >/dev/null 2>&1; then",
        f"    for set in $(sed -n 's/^create \\([^ ]*\\) .*/\\1/p' {sets.path}); do",
        '        ipset destroy "$set" 2>/dev/null || :',
        "    done",
        "fi",
        f"if [ $old -eq 0 ]; then rm -f {' '.join(f.path for f in rows)}; else rc=1; fi",
    ]
    return lines


def _retire_nftables() -> list[str]:
    """Delete fwc's table of a previous nftables install, then its files."""
    rows = [f for f in FILES if f.backend is Backend.NFTABLES]
    rules = next(f for f in rows if f.reload is Reload.RULES)
    return [
        f"if [ -e {rules.path} ]; then",
        f"    if command -v nft >/dev/null 2>&1 && {nft_drop_table()}; then",
        f"        echo \"nft: deleted the table {NFT_TABLE} of fwc's previous nftables "
        "install\" >&2",
        f"        rm -f {' '.join(f.path for f in rows)}",
        "    else",
        f"        echo \"warning: could not delete the table {NFT_TABLE} of fwc's previous "
        "nftables install\" >&2; rc=1",
        "    fi",
        "fi",
    ]


_RETIRE = {Backend.IPTABLES: _retire_iptables, Backend.NFTABLES: _retire_nftables}


def retire_script(files: list[GeneratedFile]) -> str:
    """Run once FILES' install is confirmed: what fwc's earlier install of another backend
    still runs goes (docs/workflow.md, "Switching to nftables").

    Until then the old rules stay: both rulesets see every packet, so nothing the
    old policy refused gets through while the new one is on probation, and a
    rollback has nothing of the old backend to restore. Idempotent and
    serialised (fwc's confirmation and the watchdog may both run it); prints
    what it did on stderr, and again on every later run: the watchdog runs it
    silently, and when it wins the race the confirmation must still say what went.
    """
    using = backends(files)
    lines = [
        "#!/bin/sh",
        "# Written by fwc install: after the confirmation, removes what fwc's previous",
        "# install of another packet filter left running.",
        f"S={SNAPSHOT}",
        "exec 8>>$S/retire.lock",
        "if command -v flock >/dev/null 2>&1; then flock 8; fi",
        f"if [ -e {RETIRED} ]; then cat {RETIRED} >&2; exit 0; fi",
        "rc=0",
        "{ :",  # (a group may not be empty)
    ]
    for backend in Backend:
        if backend not in using:
            lines += _RETIRE[backend]()
    lines += ["} 2>$S/retire.log", "cat $S/retire.log >&2",
              f"if [ $rc -eq 0 ]; then mv $S/retire.log {RETIRED}; fi", "exit $rc"]
    return "\n".join(lines) + "\n"


def _retire_now() -> str:
    return (f"if [ -e {RETIRE_SCRIPT} ]; then sh {RETIRE_SCRIPT} || echo 'warning: the previous "
            "backend was not removed completely; fwc install runs it again' >&2; fi")


def arm_watchdog(seconds: float, *, token: str) -> str:
    """A node-side dead man's switch: rolls back unless confirmed in time.

    It keeps working when the new rules cut fwc off the node. It polls the
    markers, so confirming or rolling back ends it within 0.2 s, and then
    releases install TOKEN's node lock (a confirmation made by hand on the node
    must free the node too). Refused when TOKEN no longer holds the lock: the
    lock must outlive the watchdog's deadline.
    """
    ticks = max(1, round(seconds * 5))
    # Confirmed by hand on the node: the old backend goes as with fwc's confirm. Under
    # rollback.sh's lock, and not once it restored the old configuration: a touch made
    # while fwc rolls back must not retire the old backend the rollback just put back.
    retire = (f"(exec 9>>{SNAPSHOT}/lock; if command -v flock >/dev/null 2>&1; then flock 9; "
              f"fi; [ -e {ROLLED_BACK} ] || {_retire_now()}) >/dev/null 2>&1")
    body = (f"i=0; while [ $i -lt {ticks} ]; do "
            f"if [ -e {CONFIRMED} ]; then {retire}; {release(token)}; "
            "exit 0; fi; "
            f"if [ -e {ROLLED_BACK} ]; then {release(token)}; exit 0; fi; "
            "sleep 0.2; i=$((i+1)); done; "
            f"sh {ROLLBACK_SCRIPT} >/dev/null 2>&1")
    return (f"if ! {_lock_is_ours(token)}; then echo 'this install no longer holds the node "
            f"lock {INSTALL_LOCK} (it expired or was taken): nothing was applied, "
            "run fwc install again' >&2; exit 1; fi; "
            # The snapshot on disk before the watchdog.pid that makes a boot use it, and
            # both before the apply changes anything.
            f"{_DURABLE} && rm -f {CONFIRMED} {ROLLED_BACK} && "
            # (PID, boot id and start time: fwc.backend.probation's record)
            f"{{ {FUNCTIONS}; nohup sh -c {q(body)} </dev/null >/dev/null 2>&1 & "
            f"watchdog_record $! > {WATCHDOG_PID}; }}"
            f" && {_DURABLE}")


def _watchdog_gone() -> str:
    """Wait (at most 2 s) for the watchdog to see a marker and exit by itself."""
    return (f"{FUNCTIONS}; i=0; while watchdog_running && [ $i -lt 20 ]; do "
            "sleep 0.1; i=$((i+1)); done")


def confirm(*, token: str) -> str:
    """Keep the new configuration, unless the watchdog already restored the old one.

    Takes rollback.sh's lock, so a confirmation and a rollback never cross;
    then gives install TOKEN's node lock back.
    """
    return (f"exec 9>>{SNAPSHOT}/lock; "
            "if command -v flock >/dev/null 2>&1; then flock 9; fi; "
            f"if [ -e {ROLLED_BACK} ]; then "
            "echo 'too late: the node already restored the previous configuration' >&2; "
            f"exit 1; fi; touch {CONFIRMED} && {_DURABLE}; {_retire_now()}; exec 9>&-; "
            f"{_watchdog_gone()}; {release(token)}")


def rollback() -> str:
    return f"sh {ROLLBACK_SCRIPT} && [ -e {ROLLED_BACK} ] && {{ {_watchdog_gone()}; :; }}"


def rolled_back() -> str:
    return f"[ -e {ROLLED_BACK} ]"
