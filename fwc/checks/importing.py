"""Codes of `fwc import iptables-save` (fwc.importing)."""

from fwc.checks import describe
from fwc.diagnostics import Severity

E, W = Severity.ERROR, Severity.WARNING

describe("FWC700", "rule not translated", W, """
The rule uses something the policy language cannot say the same way (a source
port, an interface wildcard, a match module fwc does not know, a conditional
RETURN, a LOG without a rule after it, a NAT range). It is kept in the policy as
a comment starting `NOT IMPORTED` with the reason, never dropped silently:
write it by hand or decide that it is not needed.""", "import")
describe("FWC701", "line or table not imported", W, """
The import reads the filter and nat tables of `iptables-save` (and `ipset save`
lines for the sets `-m set` names). Other tables (raw, mangle, security), the
tables of `ip6tables-save` (IPv6 is not imported: a table after its header or
with a rule naming IPv6), a second table of a name already read and lines
outside a table are listed with this warning so that nothing disappears
unnoticed.""", "import")
describe("FWC702", "chain policy not imported", W, """
A built-in chain's policy other than ACCEPT or DROP cannot be written as a final
rule.""", "import")
describe("FWC703", "user chain never jumped to", W, """
User chains are imported where a jump reaches them (their rules are inlined under
the jump's match). A chain nothing jumps to does nothing in the kernel either;
its rules are not imported and this says so.""", "import")
describe("FWC704", "imported cluster is a skeleton", W, """
`iptables-save` says nothing about the members, their addresses, the sync link
or VRRP, so the import writes a cluster block that checks and compiles but is
not yours: member fw1 holds the addresses the rules treat as the firewall's own
(INPUT destinations, OUTPUT sources), member fw2, the sync link and the VRRP
password are placeholders (198.18.0.0/15), each marked TODO(import). Complete it
before the first install (docs/migration.md).""", "import")
describe("FWC705", "imported policy does not do what the original did", E, """
`fwc import --verify` compiles the imported policy and compares the result with
the original ruleset packet class by packet class (the corner packets of every
rule of both, through the filter chains and NAT). Each class decided differently
is listed: usually a rule that relied on an order fwc's automatic rules change,
or a line kept as a comment.""", "import")
describe("FWC706", "input cannot be read", E, """
The file given to `fwc import` does not exist, cannot be read or is not text.""",
         "import")
