"""An install on probation, as its node sees it (docs/workflow.md, "On each node"; the
markers: docs/contracts.md, "fwc install's own state on the node").

`fwc install` arms a watchdog on the node that runs the snapshot's rollback.sh unless
the install is confirmed in time. An install whose watchdog was armed while neither
marker exists is *unconfirmed*. Two programs act on that one rule, so it lives here,
below both (the install may import the back end, never the other way round):

- `fwc install` refuses to stack another install on it (`fwc.install.scripts.
  refuse_if_pending`): the snapshot is the only copy of what ran before it;
- the boot script rolls it back when the node boots with it (fwc-firewall.sh.j2): a
  reboot during the probation (power loss, a panic, a power cycle by an admin the new
  rules locked out) took the watchdog with it, and an unconfirmed change must not
  outlive a reboot, as an unsaved change on a router or a commit that was never
  confirmed does not.
"""

from __future__ import annotations

# fwc's state on the node lives under /etc/fwc, which the lab (and any node) keeps
# private per member; /var/lib would be shared between lab namespaces.
STATE_DIR = "/etc/fwc"
SNAPSHOT = f"{STATE_DIR}/snapshot"
ROLLBACK_SCRIPT = f"{SNAPSHOT}/rollback.sh"
CONFIRMED = f"{SNAPSHOT}/confirmed"
ROLLED_BACK = f"{SNAPSHOT}/rolled-back"
WATCHDOG_PID = f"{SNAPSHOT}/watchdog.pid"

# `kill -0` succeeds on a zombie, and some init processes (containers) reap
# late: a watchdog that exited must count as gone.
_ALIVE = ("alive() { s=$(sed -n 's/^State:[[:space:]]*\\(.\\).*/\\1/p' /proc/$1/status "
          '2>/dev/null); [ -n "$s" ] && [ "$s" != Z ]; }')
# This boot's id: a PID is a process's name only within one boot.
BOOT_ID = "/proc/sys/kernel/random/boot_id"
# `started PID`: when PID started, in clock ticks after the boot (/proc/PID/stat's 22nd
# field; the command name before it may hold spaces and parentheses, the fields after
# it never do).
_STARTED = ("started() { sed -n 's/.*) \\([^ ]* \\)\\{19\\}\\([0-9]*\\) .*/\\2/p' "
            "/proc/$1/stat 2>/dev/null; }")
# What WATCHDOG_PID holds: "PID BOOT-ID START", the watchdog as no other process can be.
# A PID alone names another process once it is handed out again (after a reboot, or when
# PIDs wrap), and no test of that process's command line tells it from the watchdog: the
# shell that runs the test names rollback.sh in its own command line.
_RECORD = f'watchdog_record() {{ echo "$1 $(cat {BOOT_ID} 2>/dev/null) $(started "$1")"; }}'
# The watchdog of WATCHDOG_PID still runs: that very process, of this boot, not a zombie.
_WATCHDOG_RUNNING = (f"watchdog_running() {{ wd_pid= wd_boot= wd_start=; "
                     f"{{ read -r wd_pid wd_boot wd_start < {WATCHDOG_PID}; }} 2>/dev/null; "
                     '[ -n "$wd_start" ] && alive "$wd_pid" && '
                     '[ "$wd_pid $wd_boot $wd_start" = "$(watchdog_record "$wd_pid")" ]; }')
# Armed, and neither confirmed nor rolled back: the one rule.
_UNCONFIRMED = (f"unconfirmed() {{ [ -s {WATCHDOG_PID} ] && [ ! -e {CONFIRMED} ] "
                f"&& [ ! -e {ROLLED_BACK} ]; }}")
# The shell functions `alive PID`, `started PID`, `watchdog_record PID`,
# `watchdog_running` and `unconfirmed`, on one line (the boot script's template takes
# no line break in a value).
FUNCTIONS = f"{_ALIVE}; {_STARTED}; {_RECORD}; {_WATCHDOG_RUNNING}; {_UNCONFIRMED}"

# `sh rollback.sh boot`: the boot script's rollback, before the network and the daemons
# (fwc.install.scripts.rollback_script says what it does differently).
AT_BOOT = "boot"
# Set for the old configuration's boot script that `rollback.sh boot` runs: it loads its
# rules as any boot does and does not look for an unconfirmed install (the rollback that
# runs it holds the snapshot's lock, and marks the install rolled back once it loaded).
ROLLING_BACK_AT_BOOT = "FWC_ROLLING_BACK_AT_BOOT"
# `rollback.sh boot`'s status when the old files are back but the old boot script failed:
# it loaded its own fail-closed ruleset (forwarding off), so the boot script that called
# the rollback must not load one of its own on top (another backend's would drop the
# management access the old one keeps). Any other failure: nothing the rollback can
# vouch for is loaded, and the calling boot script fails closed itself.
OLD_BOOT_FAILED = 10
