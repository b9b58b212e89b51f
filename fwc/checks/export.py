"""Codes of `fwc export ansible` (fwc.install.ansible): the fleet's Ansible tree."""

from fwc.checks import describe
from fwc.diagnostics import Severity

E, W = Severity.ERROR, Severity.WARNING

describe("FWC550", "two clusters give one Ansible group", E, """
Each cluster becomes an inventory group `fwc_<cluster>` (a `-` becomes `_`, since
Ansible group names are identifiers), and its play installs that group one member at
a time. Two clusters whose names differ only by `-` and `_` would share a group, so
one play would mix the members of two pairs and could take both masters down
together.""", "export")
describe("FWC551", "member name used by two exported clusters", E, """
Ansible's hosts are one namespace across the inventory: a member `fw1` in two
clusters would be one host with one set of variables, and one cluster's files
would be installed on the other's node. fwc refuses instead of renaming hosts behind
your back; give the members of a fleet distinct names.""", "export")
describe("FWC552", "no usable inventory entry for a member", E, """
Every member needs a way in: the `ssh "user@host"` of the member in the policy, or
a line `MEMBER TARGET [key=value...]` (or `CLUSTER.MEMBER ...`) of `--inventory`,
in the format of `fwc install --inventory`. The line's options are `port=`,
`python=` (the node's interpreter), `netns=NAME` (a network namespace on the
controller, entered with `ip netns exec`) and `mount=FILE` (with netns: a
persistent mount namespace, entered with nsenter). A member without either, an
inventory line naming no exported member, an unknown option or an ssh target that
is not a plain [user@]host would give a tree that installs somewhere unintended or
nowhere.""", "export")
describe("FWC553", "cluster backend the Ansible export does not install", E, """
The role runs fwc install's steps, which snapshot and roll back iptables rulesets
(iptables-save); a cluster compiled for nftables is refused rather than installed
without a way back (the same limit as `fwc install`).""", "export")
describe("FWC554", "Ansible tree cannot be written", E, """
The output directory holds files that an earlier `fwc export ansible` did not write
(it replaces the directory as a whole, so it would delete them), it cannot be
created, or a value cannot be written to YAML safely. Nothing is written: the
directory keeps what it had.""", "export")
describe("FWC555", "Ansible tree holds the VRRP password", W, """
Without `--redact-secrets` the VRRP password is in each member's keepalived.conf
inside the tree, which usually ends up in a repository. With it, the tree holds a
placeholder and the role fills in the Ansible variable `fwc_vrrp_password`
(per cluster group, from ansible-vault), so the secret never is in the
repository.""", "export")
