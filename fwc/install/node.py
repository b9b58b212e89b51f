"""Installing one node: stage, test, snapshot, apply, reload, settle, confirm or roll back."""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Callable, Collection
from dataclasses import field
from typing import TextIO

from fwc.backend.files import DAEMON_ORDER, FILES, Reload
from fwc.install import scripts
from fwc.install.paths import CONFIRMED
from fwc.install.record import InstallRecord, store_command
from fwc.install.transport import Result, Transport, TransportError
from fwc.model.records import dataclass

# What the node-side watchdog allows on top of the confirmation window: the
# apply, the daemon reloads and the settle wait all happen after it is armed.
WATCHDOG_GRACE = 30.0


class StepFailed(Exception):
    def __init__(self, stage: str, message: str) -> None:
        super().__init__(f"{stage}: {message}")
        self.stage = stage
        self.message = message


@dataclass
class NodeResult:
    member: str
    ok: bool = False
    stage: str = ""  # the step that failed, "" when ok
    message: str = ""
    rolled_back: bool = False
    changed: list[str] = field(default_factory=list)


# (node, seconds left) -> True when the user or automation confirmed in time.
Confirmer = Callable[["NodeInstall", float], bool]
# () -> (settled, detail); run after the reload, before asking for confirmation.
SettleWait = Callable[[], tuple[bool, str]]


class NodeInstall:
    def __init__(self, transport: Transport, files: dict[str, str], *, role: str,
                 systemd: bool, confirm_timeout: float, settle_timeout: float,
                 confirmer: Confirmer, settle: SettleWait, out: TextIO,
                 record: InstallRecord | None = None,
                 families: Collection[int] = scripts.BOTH_FAMILIES) -> None:
        self.transport = transport
        self.member = transport.member
        self.files = [f for f in FILES if f.name in files]
        # The cluster's address families (`Cluster.families`): the rules of another family
        # are tested and loaded only where the kernel has it (`scripts.with_kernel`).
        self.families = families
        self.contents = files
        self.role = role
        self.systemd = systemd
        self.confirm_timeout = confirm_timeout
        self.settle_timeout = settle_timeout
        self.confirmer = confirmer
        self.settle = settle
        self.out = out
        self.record = record
        self.result = NodeResult(self.member)
        # Names this install in the node lock's owner file, so that only its own
        # confirmation, rollback or watchdog releases the lock.
        self.token = f"{os.getpid()}-{secrets.token_hex(6)}"
        self.locked = False

    # -- plumbing ---------------------------------------------------------------------
    def say(self, text: str) -> None:
        prefix = "# " if self.transport.dry_run else ""
        self.out.write(f"{prefix}{self.member}: {text}\n")
        self.out.flush()

    def step(self, stage: str, command: str, *, input: str | None = None,
             timeout: float = 60.0) -> Result:
        try:
            result = self.transport.run(command, input=input, timeout=timeout)
        except TransportError as exc:
            raise StepFailed(stage, str(exc)) from exc
        if not result.ok:
            raise StepFailed(stage, result.reason())
        return result

    def probe(self, command: str, *, fresh: bool = False) -> bool:
        transport = self.transport.fresh() if fresh else self.transport
        try:
            return transport.run(command, timeout=15).ok
        except TransportError:
            return False

    # -- the install ------------------------------------------------------------------
    def run(self) -> NodeResult:
        applied = False
        try:
            checked = self.step("preflight", scripts.preflight(self.files, self.families))
            for line in checked.stderr.splitlines():  # a firewall unit that would flush
                self.say(line)
            self.take_lock()
            self.stage_files()
            self.say("testing the new rulesets")
            self.step("test", scripts.test_ruleset(self.files, self.families))
            self.say(f"saving the running {scripts.saved_rulesets(self.files)} and daemon "
                     "configs")
            self.snapshot()
            self.arm_watchdog()
            self.say("applying")
            applied = True
            applied_result = self.step("apply", scripts.apply(self.files, self.families))
            for line in applied_result.stderr.splitlines():
                self.say(line)
            self.reload_daemons()
            self.wait_settled()
        except StepFailed as exc:
            self.result.stage, self.result.message = exc.stage, exc.message
            if applied:
                self.roll_back(f"{exc.stage} failed")
            else:
                self.say(f"{exc.stage} failed: {exc.message}; nothing was changed")
                self.cleanup_staging()
            return self.result
        except KeyboardInterrupt:
            if applied:
                self.roll_back("interrupted")
            else:
                self.cleanup_staging()
            raise
        try:
            self.decide()
        except KeyboardInterrupt:
            if not self.result.ok:
                self.roll_back("interrupted")
            raise
        return self.result

    def watchdog_seconds(self) -> float:
        return self.confirm_timeout + self.settle_timeout + WATCHDOG_GRACE

    def take_lock(self) -> None:
        """One install at a time on the node, from before staging to confirm or rollback."""
        seconds = scripts.LOCK_SETUP_BUDGET + self.watchdog_seconds() + scripts.LOCK_SLACK
        self.step("lock", scripts.take_lock(self.token, seconds))
        self.locked = True

    def stage_files(self) -> None:
        self.say(f"copying {len(self.files)} files")
        self.step("stage", scripts.refuse_if_pending())
        for file in self.files:
            self.step("stage", scripts.stage(file), input=self.contents[file.name])

    def cleanup_staging(self) -> None:
        # Only with the lock: without it the staging directory is another install's.
        if self.locked:
            self.probe(f"rm -rf {scripts.STAGING}; {scripts.release(self.token)}")
            self.locked = False

    def snapshot(self) -> None:
        # Every file of the sysctl target (sysctl.conf, and forwarding.conf with
        # ip_forward): a rollback must put all of their keys back.
        keys = list(dict.fromkeys(
            key for f in self.files if f.target == "sysctl"
            for key in scripts.sysctl_keys(self.contents[f.name])))
        result = self.step("snapshot", scripts.snapshot(self.files, keys))
        changed = [line.split(None, 1)[1] for line in result.stdout.splitlines()
                   if line.startswith("changed ")]
        self.result.changed = changed if not self.transport.dry_run else \
            [f.name for f in self.files]
        # Rolling back restores the old configs, so the same daemons reload again.
        reloads = [command for _, command in self.reload_commands(old_config=None)]
        self.step("snapshot", scripts.write(scripts.ROLLBACK_SCRIPT, 0o700),
                  input=scripts.rollback_script(self.files, reloads, token=self.token))
        # What the confirmation removes: fwc's rules of another backend (a switch).
        self.step("snapshot", scripts.write(scripts.RETIRE_SCRIPT, 0o700),
                  input=scripts.retire_script(self.files))

    def arm_watchdog(self) -> None:
        seconds = self.watchdog_seconds()
        self.say(f"arming the node-side rollback in {seconds:.0f} s unless confirmed")
        self.step("watchdog", scripts.arm_watchdog(seconds, token=self.token))

    def reload_commands(self, old_config: str | None) -> list[tuple[str, str]]:
        """(daemon, command) for each daemon whose configuration this install changes.

        Which daemons: the reload actions of the changed files' rows in the table
        of generated files (fwc.backend.files), in DAEMON_ORDER.
        """
        changed = scripts.reloads_for(self.result.changed, self.files)
        commands = []
        for reload in DAEMON_ORDER:
            command = scripts.reload_command(reload, self.systemd, self.transport.private_run,
                                             old_config, self.role) \
                if reload in changed else None
            if command is not None:
                commands.append(command)
        return commands

    def reload_daemons(self) -> None:
        snapshot_copy = None
        conntrackd = next((f for f in self.files if f.reload is Reload.CONNTRACKD
                           and f.name in self.result.changed), None)
        if conntrackd is not None:
            # The old daemon is stopped through its old config's socket (the snapshot's copy).
            snapshot_copy = f"{scripts.SNAPSHOT}/file.{self.files.index(conntrackd)}"
        for daemon, command in self.reload_commands(old_config=snapshot_copy):
            self.say(f"reloading {daemon}")
            result = self.step("reload", command)
            for line in result.stderr.splitlines():
                self.say(line)

    def wait_settled(self) -> None:
        if self.transport.dry_run:
            self.say(f"wait up to {self.settle_timeout:.0f} s for one master holding every "
                     "VIP and conntrackd answering")
            return
        settled, detail = self.settle()
        if not settled:
            raise StepFailed("settle", f"cluster not settled after "
                                       f"{self.settle_timeout:.0f} s: {detail}")
        self.say(f"cluster settled: {detail}")

    def decide(self) -> None:
        if self.transport.dry_run:
            self.say(f"wait up to {self.confirm_timeout:.0f} s for confirmation, then:")
            self.step("confirm", scripts.confirm(token=self.token))
            self.store_record()
            self.say("without it:")
            self.step("rollback", scripts.rollback())
            self.result.ok = True
            return
        if self.confirmer(self, self.confirm_timeout):
            try:
                confirmed = self.step("confirm", scripts.confirm(token=self.token))
            except StepFailed as exc:
                self.result.stage, self.result.message = exc.stage, exc.message
                self.say(f"could not confirm: {exc.message}")
                return
            self.say("confirmed: the new configuration stays")
            for line in confirmed.stderr.splitlines():  # the previous backend's rules went
                self.say(line)
            self.result.ok = True
            self.store_record()
            return
        self.result.stage, self.result.message = "confirm", "not confirmed in time"
        self.roll_back("not confirmed")

    def store_record(self) -> None:
        """After the confirmation: what was installed, from where, by whom, when (fwc
        status). The install stands either way; a failure here is only reported."""
        if self.record is None:
            return
        from fwc.install.record import record_input

        try:
            self.step("record", store_command(self.record, self.member),
                      input=record_input(self.record, self.member))
        except StepFailed as exc:
            self.say(f"warning: could not write the install record: {exc.message}")

    def confirmed_elsewhere(self) -> bool:
        """Someone confirmed on the node itself (touch .../confirmed)."""
        return self.probe(f"[ -e {CONFIRMED} ]")

    def roll_back(self, why: str) -> None:
        self.say(f"{why}: restoring the previous configuration")
        try:
            self.step("rollback", scripts.rollback(), timeout=120)
        except StepFailed as exc:
            # The watchdog still runs on the node and retries at its deadline.
            self.say(f"rollback failed: {exc.message}")
            self.result.message += f"; rollback failed: {exc.message}"
            return
        self.result.rolled_back = True
        self.say("previous configuration restored")


def wait_for_marker(node: NodeInstall, seconds: float, interval: float = 0.5,
                    clock: Callable[[], float] = time.monotonic) -> bool:
    """Poll the node for an out-of-band confirmation until SECONDS pass."""
    deadline = clock() + seconds
    while clock() < deadline:
        if node.confirmed_elsewhere():
            return True
        time.sleep(min(interval, max(0.0, deadline - clock())))
    return node.confirmed_elsewhere()

