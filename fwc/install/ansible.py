"""`fwc export ansible`: compiled clusters as a self-contained Ansible tree.

The tree installs what `fwc install` installs, the way it installs it: the
files and their node paths and modes come from the table of generated files
(`fwc.backend.files`), and every step the role runs on a node is one of
`fwc.install.scripts` (preflight, node lock, staging, the on-node test,
snapshot, rollback script and watchdog, apply in LOAD_ORDER, daemon reloads in
DAEMON_ORDER, confirm, rollback), written per member into
`roles/fwc_node/files/<cluster>/<member>/steps/`. The role is only the driver
(docs/ansible.md); nothing about files or their order is written twice.

    DIR/ansible.cfg, inventory.yml, site.yml, host_vars/<member>.yml, netns/<member>
    DIR/roles/fwc_node/{tasks,defaults,meta}/main.yml, tasks/apply.yml
    DIR/roles/fwc_node/files/<cluster>/<member>/{<compiled files>, steps/*.sh}

Every value from a policy or an inventory that reaches YAML is a `!unsafe`
scalar (`escape.yaml_unsafe`; quoted without the tag when YAML would type it, which
Ansible 2.19 does under the tag): Ansible never evaluates it as a template. The
compiled files are copied byte for byte (`copy src`), never templated; only a
file compiled with `--redact-secrets` gets the password from the Ansible
variable `fwc_vrrp_password` (a plain string replace of the placeholder).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import field
from pathlib import Path, PurePosixPath

from fwc.backend.files import DAEMON_ORDER, FILES, GeneratedFile, Reload
from fwc.backend.manifest import NAME as MANIFEST
from fwc.backend.manifest import holds_secret
from fwc.backend.output import OutputFile, compile_policy
from fwc.backend.render.escape import UnwritableText, ansible_name, yaml_key, yaml_unsafe
from fwc.diagnostics import Diagnostic, error, warning
from fwc.install import scripts, vendor
from fwc.install.node import WATCHDOG_GRACE
from fwc.install.paths import RETIRE_SCRIPT, SNAPSHOT, STAGING, STATE_DIR
from fwc.install.plan import DEFAULT_SETTLE_TIMEOUT, order, role_of
from fwc.install.record import InstallRecord, git_revision, record_input, store_command, who
from fwc.install.transport import InventoryEntry
from fwc.model import Cluster, Member, Policy
from fwc.model.records import dataclass
from fwc.model.ssh import ssh_target_problem
from fwc.model.vocabulary import Backend
from fwc.protocols import REDACTED_PASSWORD

ROLE = "fwc"  # its variables are fwc_*: the role prefix ansible-lint asks for
# Where the role keeps the member's step scripts on the node, and the run's lock token.
STEPS_DIR = f"{STATE_DIR}/ansible"
TOKEN_FILE = f"{STEPS_DIR}/token"
# The install lock's owner token, read on the node: each run writes its own (the
# role), so the lock, the watchdog and rollback.sh name this run, as fwc install's do.
TOKEN = f'"$(cat {TOKEN_FILE})"'
CHANGED_LIST = f"{SNAPSHOT}/changed.list"
# fwc install's default confirmation window: with its settle wait and grace, the
# watchdog's deadline (the role confirms as soon as a fresh connection succeeds).
CONFIRM_TIMEOUT = 60.0
# Inventory options (`MEMBER TARGET key=value`) the export understands.
INVENTORY_OPTIONS = ("netns", "mount", "port", "python")
MARKER = ".fwc-ansible"
# The install record's time, filled in on the node when the install is confirmed.
RECORD_AT = "@FWCAT@"


@dataclass
class Export:
    # Each file's path is relative to the export directory; written as `fwc compile`
    # writes its files (fwc.backend.output.write_file).
    files: list[OutputFile] = field(default_factory=list)
    diagnostics: list[Diagnostic] = field(default_factory=list)

    def add(self, path: str, text: str | bytes, mode: int = 0o644) -> None:
        data = text.encode("utf-8") if isinstance(text, str) else text
        self.files.append(OutputFile(path, data, mode))


@dataclass(frozen=True, slots=True)
class Host:
    cluster: Cluster
    member: Member
    group: str
    vars: tuple[tuple[str, str], ...]  # connection variables, already YAML values
    systemd: bool
    private_run: bool
    netns: str | None
    mount: str | None


def group_name(cluster: str) -> str:
    """The inventory group of CLUSTER: an Ansible-safe name (`fwc_` + name, `-` as `_`)."""
    return "fwc_" + re.sub(r"[^A-Za-z0-9_]", "_", cluster)


def _entry(inventory: Mapping[str, InventoryEntry], cluster: str, member: str) \
        -> InventoryEntry | None:
    return inventory.get(f"{cluster}.{member}") or inventory.get(member)


def _hosts(policies: Iterable[Policy], inventory: Mapping[str, InventoryEntry],
           out: Export) -> list[Host]:
    hosts: list[Host] = []
    groups: dict[str, Cluster] = {}
    members: dict[str, tuple[Cluster, Member]] = {}
    for policy in policies:
        for cluster in policy.clusters:
            if cluster.backend is not Backend.IPTABLES:
                out.diagnostics.append(error(
                    "FWC553", f"cluster '{cluster.name}' uses `backend {cluster.backend}`: "
                    "the Ansible export installs iptables clusters only", cluster.span,
                    hint="compile it with `backend iptables`, or install it with its own "
                    "tooling"))
                continue
            group = group_name(cluster.name)
            if group in groups:
                out.diagnostics.append(error(
                    "FWC550", f"clusters '{groups[group].name}' and '{cluster.name}' give the "
                    f"same Ansible group '{group}'", cluster.span,
                    hint="rename one of them (Ansible group names use `_` for `-`)"))
                continue
            groups[group] = cluster
            for member in order(cluster, list(cluster.members), None):
                if member.name in members:
                    other = members[member.name][0]
                    out.diagnostics.append(error(
                        "FWC551", f"member '{member.name}' of cluster '{cluster.name}' has the "
                        f"name of a member of cluster '{other.name}': Ansible hosts are one "
                        "namespace", member.span,
                        hint="give the members of a fleet distinct names"))
                    continue
                members[member.name] = (cluster, member)
                host = _host(cluster, member, group, _entry(inventory, cluster.name,
                                                            member.name), out)
                if host is not None:
                    hosts.append(host)
    known = set(members) | {f"{c.name}.{m.name}" for c, m in members.values()}
    for key in sorted(set(inventory) - known):
        out.diagnostics.append(error(
            "FWC552", f"the inventory names '{key}', which is no member of the exported "
                      "clusters", hint="write MEMBER or CLUSTER.MEMBER of an exported cluster"))
    return hosts


def _host(cluster: Cluster, member: Member, group: str, entry: InventoryEntry | None,
          out: Export) -> Host | None:
    options = dict(entry.options) if entry else {}
    unknown = sorted(set(options) - set(INVENTORY_OPTIONS))
    if unknown:
        out.diagnostics.append(error(
            "FWC552", f"inventory line of member '{member.name}': unknown option "
                      f"'{unknown[0]}'", member.span,
            hint="known: " + ", ".join(f"{o}=" for o in INVENTORY_OPTIONS)))
        return None
    variables: list[tuple[str, str]] = []
    netns = options.get("netns")
    if netns is not None:
        # A network namespace on the controller (the test's and a lab's members):
        # modules run through `ip netns exec` (or nsenter into a mount namespace).
        variables += [("ansible_connection", "local"),
                      ("ansible_python_interpreter",
                       "'{{ playbook_dir }}/netns/" + ansible_name(member.name) + "'")]
        return Host(cluster, member, group, tuple(variables), systemd=False,
                    private_run="mount" in options, netns=netns, mount=options.get("mount"))
    target = entry.target if entry else member.ssh
    if not target:
        out.diagnostics.append(error(
            "FWC552", f"no ssh host for member '{member.name}' of cluster '{cluster.name}'",
            member.span, hint="add ssh \"root@host\" to the member or a line "
                              "'MEMBER [user@]host' to --inventory"))
        return None
    problem = ssh_target_problem(target)
    if problem:
        out.diagnostics.append(error(
            "FWC552", f"ssh target of member '{member.name}' {problem}", member.span,
            hint="write [user@]host"))
        return None
    user, at, address = target.rpartition("@")
    variables.append(("ansible_host", yaml_unsafe(address)))
    if at:
        variables.append(("ansible_user", yaml_unsafe(user)))
    if "port" in options:
        if not options["port"].isdigit() or not 0 < int(options["port"]) < 65536:
            out.diagnostics.append(error(
                "FWC552", f"inventory line of member '{member.name}': port must be 1-65535",
                member.span))
            return None
        variables.append(("ansible_port", str(int(options["port"]))))
    if "python" in options:
        variables.append(("ansible_python_interpreter", yaml_unsafe(options["python"])))
    return Host(cluster, member, group, tuple(variables), systemd=True, private_run=True,
                netns=None, mount=None)


# -- the steps a member runs (fwc.install.scripts, per member) ----------------------------------

def _watchdog_seconds() -> float:
    return CONFIRM_TIMEOUT + DEFAULT_SETTLE_TIMEOUT + WATCHDOG_GRACE


def _reloads(host: Host, files: list[GeneratedFile]) -> list[tuple[str, list[str], str]]:
    """(daemon, file names that trigger it, command) in DAEMON_ORDER, as NodeInstall's."""
    out = []
    role = role_of(host.member, host.cluster)
    stale = scripts.stale_rows(files)
    for reload in DAEMON_ORDER:
        names = [f.name for f in files if f.reload is reload]
        if reload in scripts.STALE_RELOADS:  # a unit or monitor the member no longer gets
            names += [f.name for f in stale if f.reload is reload]
        if not names:
            continue
        old = None
        if reload is Reload.CONNTRACKD:
            conntrackd = next(f for f in files if f.reload is Reload.CONNTRACKD)
            old = f"{SNAPSHOT}/file.{files.index(conntrackd)}"
        command = scripts.reload_command(reload, host.systemd, host.private_run, old, role)
        if command is not None:
            daemon, text = command
            out.append((daemon, names, text))
    return out


def _guarded(names: list[str], command: str) -> str:
    """COMMAND only when the snapshot listed one of NAMES as changed (rollback.sh)."""
    tests = " || ".join(f"grep -qx {scripts.q(name)} {CHANGED_LIST}" for name in names)
    return f"if {{ {tests}; }} 2>/dev/null; then {command}; fi"


def member_steps(host: Host, files: list[GeneratedFile], contents: Mapping[str, bytes],
                 reloads: list[tuple[str, list[str], str]]) -> dict[str, str]:
    """{script name: shell text} the role runs on HOST, each a step of fwc install;
    RELOADS: the member's `_reloads`."""
    seconds = _watchdog_seconds()
    lock_seconds = scripts.LOCK_SETUP_BUDGET + seconds + scripts.LOCK_SLACK
    steps = {
        "preflight.sh": scripts.preflight(files, host.cluster.families),
        "lock.sh": scripts.take_lock(TOKEN, lock_seconds),
        "stage.sh": scripts.refuse_if_pending(),
        "test.sh": scripts.test_ruleset(files, host.cluster.families),
        "snapshot.sh": _snapshot(files, contents),
        # rollback.sh and retire.sh into the snapshot, as NodeInstall.snapshot writes them:
        # the confirmation (or the watchdog, for one made by hand) runs retire.sh.
        "arm.sh": (f"set -e\ninstall -m 0700 {STEPS_DIR}/rollback.sh {scripts.ROLLBACK_SCRIPT}\n"
                   f"install -m 0700 {STEPS_DIR}/retire.sh {RETIRE_SCRIPT}\n"
                   + scripts.arm_watchdog(seconds, token=TOKEN)),
        "retire.sh": scripts.retire_script(files),
        "rollback.sh": scripts.rollback_script(
            files, [_guarded(names, command) for _, names, command in reloads], token=TOKEN),
        "apply.sh": scripts.apply(files, host.cluster.families),
        "confirm.sh": scripts.confirm(token=TOKEN),
        "rollback-run.sh": scripts.rollback(),
        "cleanup.sh": f"rm -rf {STAGING}; {scripts.release(TOKEN)}",
    }
    for daemon, _, command in reloads:
        steps[f"reload-{daemon}.sh"] = command
    return {name: text if text.endswith("\n") else text + "\n" for name, text in steps.items()}


def _snapshot(files: list[GeneratedFile], contents: Mapping[str, bytes]) -> str:
    """fwc install's snapshot (with the keys of the sysctl files, as NodeInstall's), which
    also keeps the list of changed files for rollback.sh's reloads."""
    keys = list(dict.fromkeys(key for f in files if f.target == "sysctl"
                              for key in scripts.sysctl_keys(contents[f.name].decode())))
    return "\n".join([
        f"out=$({scripts.snapshot(files, keys)}\n) || exit 1",
        f'printf "%s\\n" "$out" | sed -n "s/^changed //p" > {CHANGED_LIST}',
        'printf "%s\\n" "$out"'])


def _record_step(record: InstallRecord, member: str) -> str:
    """fwc install's record step after the confirmation (`fwc status`, `fwc diff
    --installed`), with the node's clock for the time of the install."""
    when = "$(date -u +%Y-%m-%dT%H:%M:%SZ)"
    return (f"sed \"s/^at {RECORD_AT}$/at {when}/\" <<'FWC_RECORD' | "
            f"{{ {store_command(record, member)}; }}\n"
            f"{record_input(record, member)}FWC_RECORD\n")


def netns_wrapper(host: Host) -> str:
    """The python interpreter of a namespace member: every module runs inside the node."""
    assert host.netns is not None
    if host.mount:
        enter = (f"nsenter --mount={scripts.q(host.mount)} "
                 f"--net=/run/netns/{scripts.q(host.netns)} --")
    else:
        enter = f"ip netns exec {scripts.q(host.netns)}"
    return ("#!/bin/sh\n"
            "# Written by fwc export ansible: runs Ansible's modules inside the member's\n"
            "# network namespace, as `fwc install --transport netns` runs its steps.\n"
            f'exec {enter} "${{FWC_ANSIBLE_PYTHON:-python3}}" "$@"\n')


# -- YAML ---------------------------------------------------------------------------------------

HEADER = "# Generated by fwc export ansible: export again instead of editing.\n"


def _inventory(hosts: list[Host]) -> str:
    lines = [HEADER.rstrip("\n"), "all:", "  children:"]
    groups: dict[str, list[Host]] = {}
    for host in hosts:
        groups.setdefault(host.group, []).append(host)
    for group, members in groups.items():
        lines.append(f"    {yaml_key(group)}:")
        lines.append("      hosts:")
        for host in members:  # backups first, the master last (install's order)
            lines.append(f"        {yaml_key(host.member.name)}:")
            lines += [f"          {key}: {value}" for key, value in host.vars]
            if not host.vars:
                lines[-1] += " {}"
    return "\n".join(lines) + "\n"


def _host_vars(host: Host, files: list[GeneratedFile], redacted: set[str], secret: set[str],
               steps: Iterable[str], reloads: list[tuple[str, list[str], str]]) -> str:
    stale = scripts.stale_rows(files)
    lines = [HEADER.rstrip("\n"),
             f"fwc_cluster: {yaml_unsafe(host.cluster.name)}",
             f"fwc_member: {yaml_unsafe(host.member.name)}",
             f"fwc_role: {role_of(host.member, host.cluster)}",
             "# The member's files, from fwc's table of generated files (fwc.backend.files).",
             "fwc_files:"]
    for f in files:
        lines.append(f"  - name: {yaml_unsafe(f.name)}")
        lines.append(f"    path: {yaml_unsafe(f.path)}")
        lines.append(f"    mode: '{f.mode:04o}'")
        lines.append(f"    redacted: {'true' if f.name in redacted else 'false'}")
        lines.append(f"    secret: {'true' if f.name in secret else 'false'}")
    lines.append("# Files of the table the member no longer gets: the install removes fwc's own.")
    lines.append("fwc_stale:" + ("" if stale else " []"))
    for f in stale:
        lines.append(f"  - name: {yaml_unsafe(f.name)}")
        lines.append(f"    path: {yaml_unsafe(f.path)}")
    lines.append("fwc_steps:")
    lines += [f"  - {yaml_unsafe(n)}" for n in sorted(steps)]
    lines.append("# Daemons to reload when one of their files changed, in fwc install's order.")
    lines.append("fwc_reloads:" + ("" if reloads else " []"))
    for daemon, names, _ in reloads:
        lines.append(f"  - daemon: {daemon}")
        lines.append("    files:")  # a line each: six units' names are over yamllint's line
        lines += [f"      - {yaml_unsafe(n)}" for n in names]
    return "\n".join(lines) + "\n"


def _site(hosts: list[Host], redact: bool) -> str:
    lines = [HEADER.rstrip("\n"),
             "# One play per cluster: one member at a time, backups before the master (the",
             "# inventory's order), and the first failure stops the rollout.",
             ]
    groups = list(dict.fromkeys(host.group for host in hosts))
    if redact and groups:
        # As fwc install checks its secrets before it touches a node: a password missing
        # or refused for the master, or for a later cluster, stops the playbook before
        # the first backup changes.
        lines += ["- name: Check every member's VRRP password before any node is touched",
                  "  hosts:", *[f"    - {yaml_key(g)}" for g in groups],
                  "  gather_facts: false",
                  "  any_errors_fatal: true",
                  "  tasks:",
                  "    - name: Check the member's VRRP password",
                  "      ansible.builtin.include_role:",
                  f"        name: {ROLE}",
                  "        tasks_from: password.yml",
                  "      when: fwc_files | selectattr('redacted') | list | length > 0"]
    seen: list[str] = []
    for host in hosts:
        if host.group in seen:
            continue
        seen.append(host.group)
        lines += [f"- name: Install fwc's files on cluster group {yaml_key(host.group)}",
                  f"  hosts: {yaml_key(host.group)}",
                  "  serial: 1",
                  "  order: inventory",
                  "  max_fail_percentage: 0",
                  "  any_errors_fatal: true",
                  "  gather_facts: false",
                  "  roles:",
                  f"    - role: {ROLE}"]
    if not seen:
        lines.append("[]")
    return "\n".join(lines) + "\n"


ANSIBLE_CFG = """\
# Generated by fwc export ansible.
[defaults]
inventory = inventory.yml
roles_path = roles
retry_files_enabled = False
interpreter_python = auto_silent

[connection]
pipelining = True
"""

# Reads `NAME MODE BASE64` lines from stdin into DIR (mode, then one rename per file);
# written as a YAML literal block.
UNPACK = """\
umask 077
mkdir -p {dir}
while read -r n m d; do
  [ -n "$n" ] || continue
  base64 -d > {dir}/$n.fwc-new <<EOF || exit 1
$d
EOF
  chmod "$m" {dir}/$n.fwc-new && mv -f {dir}/$n.fwc-new {dir}/$n || exit 1
done"""


STAGE_AND_UNPACK = f"sh {STEPS_DIR}/stage.sh || exit 1\n" + UNPACK.format(dir=STAGING)


def _block(text: str, indent: int) -> str:
    pad = " " * indent
    return "|\n" + "\n".join(pad + line for line in text.splitlines())


# Only variables the role reads: a fwc_confirm_timeout here was read by nothing, and
# setting it changed nothing (the watchdog's window is written into steps/arm.sh).
DEFAULTS = """\
---
# Generated by fwc export ansible. Set fwc_vrrp_password per cluster group (ansible-vault),
# or fwc_vrrp_passwords (cluster: password), when the tree was exported with
# --redact-secrets. The node-side watchdog rolls an install back unless it is confirmed
# within {watchdog:.0f} s of being armed: fixed in steps/arm.sh, export again to change it.
fwc_vrrp_passwords: {{}}
"""

META = """\
---
galaxy_info:
  author: fwc
  description: Install fwc-compiled firewall files on one member of an HA pair
  license: MIT
  min_ansible_version: "2.15"
  platforms:
    - name: Debian
      versions:
        - all
dependencies: []
"""

# The filter the role checks a VRRP password with: fwc's own rule, carried verbatim.
PASSWORD_FILTER = "fwc_vrrp_password_problem"
PASSWORD_PLUGIN_DOC = f"""Ansible filter `{PASSWORD_FILTER}`: '' for a VRRP password fwc accepts,
else why not, never the password. The rule is fwc's own (fwc.model.passwords, as `fwc install
--secrets` checks a password), carried below with the fwc modules it needs."""
PASSWORD_PLUGIN_TAIL = f'''
def problem(value):
    if not isinstance(value, str):
        # YAML reads 12345678 as a number, 0123 as 83 and yes as true: not what was typed.
        kind = ("a boolean" if isinstance(value, bool) else
                "a number" if isinstance(value, (int, float)) else "no string")
        return ("the VRRP password is " + kind + " in YAML, not the text typed: write it "
                "quoted ('...')")
    passwords = load()
    return passwords.describe_problems(passwords.password_problems(value))


class FilterModule:
    def filters(self):
        return {{{PASSWORD_FILTER!r}: problem}}
'''

# Fills fwc_password for a member whose files were exported with --redact-secrets, and
# refuses what `fwc install --secrets` refuses; runs on the controller only.
PASSWORD_TASKS = f"""\
---
# Generated by fwc export ansible. The VRRP password a tree exported with --redact-secrets
# leaves out, checked on the controller with fwc's own rule (filter_plugins/fwc_password.py
# carries fwc.model.passwords), before any node is touched.
- name: Take the VRRP password from fwc_vrrp_password or fwc_vrrp_passwords[cluster]
  ansible.builtin.set_fact:
    fwc_password: "{{{{ fwc_vrrp_password if fwc_vrrp_password is defined
      else (fwc_vrrp_passwords | default({{}})).get(fwc_cluster) }}}}"
  no_log: true

- name: Check the VRRP password with fwc's rule (what fwc install --secrets accepts)
  ansible.builtin.set_fact:
    fwc_password_problem: "{{{{ 'not set: give fwc_vrrp_password for the cluster group,
      or fwc_vrrp_passwords (cluster: password); the tree was exported with
      --redact-secrets' if fwc_password is none else fwc_password | {PASSWORD_FILTER} }}}}"
  no_log: true

- name: Refuse a VRRP password fwc would refuse
  ansible.builtin.assert:
    that: fwc_password_problem | length == 0
    fail_msg: "the VRRP password of cluster {{{{ fwc_cluster }}}}: {{{{ fwc_password_problem }}}}"
    quiet: true
"""

# `ansible-playbook --check`: reads `NAME PATH BASE64` lines (a compiled file) and `NAME
# PATH -` lines (a file of the table the member no longer gets) and prints `changed NAME`
# where the snapshot would (scripts.snapshot), writing nothing on the node.
WOULD_CHANGE = f"""\
while read -r n p d; do
  [ -n "$n" ] || continue
  if [ "$d" = - ]; then
    if {scripts.fwcs_own('"$p"')}; then echo "changed $n"; fi
  else
    printf '%s\\n' "$d" | base64 -d | cmp -s - "$p" || echo "changed $n"
  fi
done"""

CHECK_TASKS = f"""\
---
# Generated by fwc export ansible: what `ansible-playbook --check` does on a member. It
# only reads: the programs the install needs, and which files would change (compared as
# the install's snapshot compares them) and which daemons would reload. No lock is
# taken, nothing is staged, tested or written on the node.
- name: Check the programs the install needs (check mode)
  ansible.builtin.command: sh -s
  args:
    stdin: "{{{{ lookup('ansible.builtin.file', fwc_cluster ~ '/' ~ fwc_member
      ~ '/steps/preflight.sh', rstrip=false) }}}}"
  check_mode: false
  changed_when: false

- name: List the files the install would change (check mode)
  ansible.builtin.command:
    argv:
      - sh
      - -c
      - {_block(WOULD_CHANGE, 8)}
    stdin: "{{% for f in fwc_files %}}{{{{ f.name }}}} {{{{ f.path }}}} {{{{
      lookup('ansible.builtin.file', fwc_cluster ~ '/' ~ fwc_member ~ '/' ~ f.name,
      rstrip=false) | replace('{REDACTED_PASSWORD}', fwc_password if f.redacted else
      '{REDACTED_PASSWORD}') | b64encode }}}}\\n{{% endfor %}}{{% for f in fwc_stale
      %}}{{{{ f.name }}}} {{{{ f.path }}}} -\\n{{% endfor %}}"
  check_mode: false
  register: fwc_would
  changed_when: fwc_would.stdout_lines | length > 0
  no_log: "{{{{ fwc_files | selectattr('secret') | list | length > 0 }}}}"

- name: Show what the install would change (check mode)
  ansible.builtin.debug:
    msg: "{{{{ inventory_hostname }}}} would change: {{{{ fwc_would_change | join(', ') }}}};
      would reload:{{% for r in fwc_reloads if r.files | intersect(fwc_would_change) %}}
      {{{{ r.daemon }}}}{{% else %}} nothing{{% endfor %}}"
  vars:
    fwc_would_change: "{{{{ fwc_would.stdout_lines | select('match', '^changed ')
      | map('regex_replace', '^changed ', '') | list }}}}"
  when: fwc_would.stdout_lines | length > 0
"""

TASKS = f"""\
---
# Generated by fwc export ansible. Every shell step is one of fwc install's
# (fwc.install.scripts), written per member under files/<cluster>/<member>/steps/.
# Files travel base64-encoded on a command's stdin, all of a member's at once (one
# module run instead of two per file), and are never templated.
- name: The VRRP password, checked before the node is touched
  ansible.builtin.include_tasks: password.yml
  when: fwc_files | selectattr('redacted') | list | length > 0

- name: Check mode, which changes nothing on the node
  ansible.builtin.include_tasks: check.yml
  when: ansible_check_mode

- name: Copy the member's install steps and name this run (the node lock's owner)
  when: not ansible_check_mode
  ansible.builtin.shell: {_block(UNPACK.format(dir=STEPS_DIR), 4)}
  args:
    stdin: "{{% for name in fwc_steps %}}{{{{ name }}}} 0700 {{{{ lookup('ansible.builtin.file',
      fwc_cluster ~ '/' ~ fwc_member ~ '/steps/' ~ name, rstrip=false) | b64encode }}}}\\n{{%
      endfor %}}token 0600 {{{{ ('ansible-' ~ (281474976710655 | random)) | b64encode }}}}\\n"
  changed_when: false

- name: Install, or roll back
  when: not ansible_check_mode
  block:
    - name: Check the programs the install needs
      ansible.builtin.command: sh {STEPS_DIR}/preflight.sh
      changed_when: false

    - name: Take the node's install lock
      ansible.builtin.command: sh {STEPS_DIR}/lock.sh
      changed_when: false

    - name: Remember the lock
      ansible.builtin.set_fact:
        fwc_locked: true

    - name: Stage the compiled files (a redacted password filled from the variable)
      ansible.builtin.shell: {_block(STAGE_AND_UNPACK, 8)}
      args:
        stdin: "{{% for f in fwc_files %}}{{{{ f.name }}}} {{{{ f.mode }}}} {{{{
          lookup('ansible.builtin.file', fwc_cluster ~ '/' ~ fwc_member ~ '/' ~ f.name,
          rstrip=false) | replace('{REDACTED_PASSWORD}', fwc_password if f.redacted else
          '{REDACTED_PASSWORD}') | b64encode }}}}\\n{{% endfor %}}"
      changed_when: false
      no_log: "{{{{ fwc_files | selectattr('secret') | list | length > 0 }}}}"

    - name: Test the staged files on the node (iptables-restore --test, keepalived -t)
      ansible.builtin.command: sh {STEPS_DIR}/test.sh
      changed_when: false

    - name: Save the running rules, sysctl values and the files to be replaced
      ansible.builtin.command: sh {STEPS_DIR}/snapshot.sh
      register: fwc_snapshot
      changed_when: false

    - name: List the files that change
      ansible.builtin.set_fact:
        fwc_changed: "{{{{ fwc_snapshot.stdout_lines | select('match', '^changed ')
          | map('regex_replace', '^changed ', '') | list }}}}"

    - name: Nothing changed, release the node
      ansible.builtin.command: sh {STEPS_DIR}/cleanup.sh
      changed_when: false
      when: fwc_changed | length == 0

    - name: Apply, reload, confirm
      ansible.builtin.include_tasks: apply.yml
      when: fwc_changed | length > 0

  rescue:
    - name: Roll back to the previous configuration
      ansible.builtin.command: sh {STEPS_DIR}/rollback-run.sh
      changed_when: true
      when: fwc_applied | default(false)

    - name: Release the node (nothing was changed)
      ansible.builtin.command: sh {STEPS_DIR}/cleanup.sh
      changed_when: false
      when: not (fwc_applied | default(false)) and (fwc_locked | default(false))

    - name: Stop this cluster's rollout
      ansible.builtin.fail:
        msg: "{{{{ inventory_hostname }}}}: {{{{ ansible_failed_task.name | default('a step') }}}}
          failed; {{{{ 'the previous configuration was restored'
          if fwc_applied | default(false) else 'nothing was changed' }}}}"
"""

APPLY = f"""\
---
# Generated by fwc export ansible: the part of fwc install after the snapshot.
- name: Write the rollback script and arm the node-side watchdog
  ansible.builtin.command: sh {STEPS_DIR}/arm.sh
  changed_when: false

- name: Remember that the node changes from here on
  ansible.builtin.set_fact:
    fwc_applied: true

- name: Put the files in place and load them (ipsets, rules, sysctl, forwarding)
  ansible.builtin.command: sh {STEPS_DIR}/apply.sh
  changed_when: true

- name: Reload the daemons whose files changed
  ansible.builtin.command: sh {STEPS_DIR}/reload-{{{{ item.daemon }}}}.sh
  changed_when: true
  loop: "{{{{ fwc_reloads }}}}"
  loop_control:
    label: "{{{{ item.daemon }}}}"
  when: item.files | intersect(fwc_changed) | length > 0

- name: Open a new connection (the new rules must let it in)
  ansible.builtin.meta: reset_connection

- name: Reach the node over the new connection
  ansible.builtin.ping:

- name: Confirm the new configuration
  ansible.builtin.command: sh {STEPS_DIR}/confirm.sh
  changed_when: false

# As fwc install's: the install stands whether or not its record could be written.
- name: Record the install on the node (fwc status, fwc diff --installed)
  ansible.builtin.command: sh {STEPS_DIR}/record.sh
  register: fwc_record
  changed_when: false
  failed_when: false

- name: Say that the record could not be written
  ansible.builtin.debug:
    msg: "warning: could not write the install record: {{{{ fwc_record.stderr }}}}"
  when: fwc_record.rc != 0
"""


def export_ansible(policies: list[Policy], *, redact: bool,
                   inventory: Mapping[str, InventoryEntry] | None = None) -> Export:
    """The whole tree, in memory (pure); errors in .diagnostics mean: write nothing."""
    out = Export()
    hosts = _hosts(policies, inventory or {}, out)
    if any(d.severity.name == "ERROR" for d in out.diagnostics):
        return out
    compiled: dict[tuple[str, str], dict[str, bytes]] = {}
    records: dict[str, InstallRecord] = {}
    for policy in policies:
        revision = git_revision(Path(policy.root))
        for cluster in compile_policy(policy, redact=redact):
            for f in cluster.files:
                member, _, name = f.path.partition("/")
                if name:
                    compiled.setdefault((cluster.name, member), {})[name] = f.content
                elif f.path == MANIFEST:
                    records[cluster.name] = InstallRecord(
                        cluster.name, policy.root, revision, f"{who()} (fwc export ansible)",
                        RECORD_AT, f.content.decode("utf-8"))
    try:
        _write_tree(out, hosts, compiled, records, redact)
    except UnwritableText as exc:
        out.files.clear()
        out.diagnostics.append(error("FWC554", f"a value cannot be written to the Ansible "
                                               f"tree: {exc}"))
    return out


def _write_tree(out: Export, hosts: list[Host], compiled: dict[tuple[str, str], dict[str, bytes]],
                records: Mapping[str, InstallRecord], redact: bool) -> None:
    out.add(MARKER, "fwc export ansible wrote this directory; it replaces it as a whole.\n")
    out.add("ansible.cfg", ANSIBLE_CFG)
    out.add("inventory.yml", _inventory(hosts))
    out.add("site.yml", "---\n" + _site(hosts, redact))
    role = f"roles/{ROLE}"
    out.add(f"{role}/tasks/main.yml", TASKS)
    out.add(f"{role}/tasks/password.yml", PASSWORD_TASKS)
    out.add(f"{role}/tasks/check.yml", CHECK_TASKS)
    out.add(f"{role}/filter_plugins/fwc_password.py",
            vendor.bundle("fwc.model.passwords", PASSWORD_PLUGIN_DOC, PASSWORD_PLUGIN_TAIL))
    out.add(f"{role}/tasks/apply.yml", APPLY)
    out.add(f"{role}/defaults/main.yml", DEFAULTS.format(watchdog=_watchdog_seconds()))
    out.add(f"{role}/meta/main.yml", META)
    for host in hosts:
        contents = compiled[(host.cluster.name, host.member.name)]
        files = [f for f in FILES if f.name in contents]
        redacted = {f.name for f in files
                    if f.secret and REDACTED_PASSWORD.encode() in contents[f.name]}
        if not redact and any(f.secret for f in files) and host.cluster.vrrp.password:
            out.diagnostics.append(warning(
                "FWC555", f"the Ansible tree holds the VRRP password of cluster "
                          f"'{host.cluster.name}' (in {host.member.name}'s keepalived.conf)",
                host.cluster.span, hint="export with --redact-secrets and give "
                                        "fwc_vrrp_password from ansible-vault"))
        base = f"{role}/files/{host.cluster.name}/{host.member.name}"
        for f in files:
            mode = f.output_mode(f.name not in redacted and f.secret)
            out.add(f"{base}/{f.name}", contents[f.name], mode)
        reloads = _reloads(host, files)
        steps = member_steps(host, files, contents, reloads)
        steps["record.sh"] = _record_step(records[host.cluster.name], host.member.name)
        for name, text in steps.items():
            out.add(f"{base}/steps/{name}", text, 0o700)
        # Holding the password once staged (filled in, or compiled in): the staging task
        # that carries it on stdin is no_log, or -vvv prints it in its invocation.
        secret = redacted | {f.name for f in files if holds_secret(f.name, contents[f.name])}
        out.add(f"host_vars/{ansible_name(host.member.name)}.yml",
                _host_vars(host, files, redacted, secret, steps, reloads))
        if host.netns is not None:
            out.add(f"netns/{ansible_name(host.member.name)}", netns_wrapper(host), 0o755)
    out.add("README.md", _readme(hosts, redact))
    # The files are listed once each, in a stable order: the same policies give the same tree.
    out.files.sort(key=lambda f: f.path)
    assert len({f.path for f in out.files}) == len(out.files)
    assert all(PurePosixPath(f.path).parts[0] != ".." for f in out.files)


def _readme(hosts: list[Host], redact: bool) -> str:
    clusters = list(dict.fromkeys(h.cluster.name for h in hosts))
    lines = ["# fwc Ansible tree", "",
             "Generated by `fwc export ansible`; export again instead of editing "
             "(docs/ansible.md).", "",
             "    ansible-playbook site.yml" + (" --ask-vault-pass" if redact else ""), "",
             "Clusters, one play each, one member at a time (backups first):", ""]
    for name in clusters:
        members = [h.member.name for h in hosts if h.cluster.name == name]
        lines.append(f"- {name}: {', '.join(members)}")
    if redact:
        lines += ["", "The VRRP password is not in this tree: set `fwc_vrrp_password` for "
                      "each cluster group (e.g. `group_vars/<group>/vault.yml`, encrypted "
                      "with ansible-vault)."]
    return "\n".join(lines) + "\n"
