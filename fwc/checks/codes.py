"""Codes emitted by the parser, the loader and the resolver (not by check functions)."""

from fwc.checks import describe
from fwc.diagnostics import Severity

E, W = Severity.ERROR, Severity.WARNING

describe("FWC001", "syntax error", E, """
The text does not follow the grammar (grammar/fwc.lark). The diagnostic shows
what was found and what the parser expected at that point. After a syntax
error fwc skips the line and goes on, so one run shows several of them.""", "parse")
describe("FWC002", "file cannot be read", E, """
A policy file, an included file or a password file does not exist or cannot be
read. Include and password-file paths are relative to the file that names them.""", "parse")
describe("FWC003", "include cycle", E, """
A file includes itself, directly or through other files. Each file is read once;
a cycle is almost always a mistake in the include structure, so it is an error
and the cycle is printed.""", "parse")
describe("FWC004", "string literal cannot be decoded", E, """
A string knows two escapes, `\\"` and `\\\\`; any other backslash sequence (`"\\x"`,
`"\\n"`) is refused instead of guessed at. A string also cannot hold control
characters (a tab, a NUL byte, an escape character), line or paragraph separators
or bidirectional formatting characters: every string ends up in a generated file,
where a newline would end the line and start a new rule. The diagnostic points at
the character.""", "parse")
describe("FWC101", "undefined name", E, """
An object, service, interface, member or cluster is used but never defined.
Address objects, services and interfaces live in separate namespaces: `lan` the
network and `lan` the interface are different things.""")
describe("FWC102", "duplicate definition", E, """
The same name is defined twice. A second definition would silently replace the
first, so fwc refuses it and points at both.""")
describe("FWC103", "unused object or service", W, """
An object or service that no rule, group, NAT rule or expectation uses is dead
weight that reviewers still have to read. Objects whose addresses are exactly a
cluster segment's subnet are not reported: they document the topology.""")
describe("FWC104", "empty group", E, """
A group without members matches nothing; a rule using it would silently never
match.""")
describe("FWC106", "malformed address", E, """
An address, network, range or prefix that does not parse, a network written with
host bits set (192.0.2.1/24), a host with a prefix, or a range that ends before it
starts.""")
describe("FWC107", "malformed port or service", E, """
A port outside 0-65535, a reversed port range, an unknown ICMP type or an unknown
IP protocol in a service.""")
describe("FWC108", "definition cycle", E, """
A group (or service) contains itself through other groups. The cycle path is
printed; break it by removing one membership.""")
describe("FWC109", "invalid value", E, """
A keyword option has a value fwc does not know (auth kind, sync mode, on/off, a
number where a number is expected). The hint lists the accepted values.""")
describe("FWC110", "conflicting or repeated option", E, """
An option is given twice in one statement, or two options exclude each other
(multicast and unicast sync). The later one would otherwise silently win.""")
describe("FWC111", "malformed NAT rule", E, """
snat and dnat need a target (`-> ADDRESS`), masquerade needs `out IFACE` and no
target, nonat takes no target, only dnat may change the port, and a target must
be a single address per family.""")
describe("FWC900", "internal error", E, """
A check crashed. The other checks still ran; this is a bug in fwc, please report
it with the policy that triggers it.""", "check")
