"""Codes emitted by the parser, the loader and the resolver (not by check functions)."""

from fwc.checks import describe
from fwc.diagnostics import Severity
from fwc.frontend.sources import MAX_FILE_BYTES, MAX_INCLUDE_DEPTH, MAX_TOTAL_BYTES, MIB

E, W = Severity.ERROR, Severity.WARNING

describe("FWC001", "syntax error", E, """
The text does not follow the grammar (grammar/fwc.lark). The diagnostic shows
what was found and what the parser expected at that point. After a syntax
error fwc skips the line and goes on, so one run shows several of them.""", "parse")
describe("FWC020", "service written apart from its protocol", E, """
A service is one word, protocol/port: `tcp/22`, `udp/53,123`, `icmp/echo-request`.
Written apart (`service ssh tcp 22`) the parser sees a service named `tcp`
followed by a stray number. The diagnostic proposes the joined form. It is a
syntax error like FWC001: fwc skips the line and goes on.""", "parse")
describe("FWC021", "misspelled or foreign keyword", E, """
A word where the grammar expects a keyword, that is a near miss of one or the
word other firewalls use for it (`allow`/`permit` for `accept`, `deny`/`block`
for `drop` in a policy; `accept`/`drop` for `allow`/`deny` in an expectation).
The diagnostic names the keyword fwc expects instead of listing the parser's
tokens. A syntax error like FWC001: fwc skips the line and goes on.""", "parse")
describe("FWC002", "file cannot be read", E, """
A policy file, an included file or a password file does not exist or cannot be
read. Include and password-file paths are relative to the file that names them.""", "parse")
describe("FWC003", "include cycle", E, """
A file includes itself, directly or through other files. Each file is read once;
a cycle is almost always a mistake in the include structure, so it is an error
and the cycle is printed.""", "parse")
describe("FWC004", "string literal cannot be decoded", E, """
A string knows two escapes, `\\"` and `\\\\`; any other backslash sequence (`"\\x"`,
`"\\n"`) is refused instead of guessed at. A string also cannot hold a tab (nor
anything FWC006 refuses anywhere in a policy: other control characters, line or
paragraph separators, bidirectional and invisible format characters): every string
ends up in a generated file, where a newline would end the line and start a new rule.
The diagnostic points at the character.""", "parse")
describe("FWC006", "character a reviewer cannot see", E, """
Policy changes are reviewed as diffs, and a character that an editor, a browser or a
terminal does not show as it is can make the reviewed text mean something else than
what fwc compiles ("Trojan Source", CVE-2021-42574). It is an error anywhere in a
policy file and in fwc.toml, in comments too.

Bidirectional controls (U+202A-U+202E, U+2066-U+2069, U+200E, U+200F, U+061C)
reorder how a line is shown: a comment can appear to swallow a rule, or a rule to
say what it does not. Line-break look-alikes (U+2028, U+2029, U+0085, a carriage
return that does not end a line, form feed, vertical tab) are shown as a line break,
but fwc's lines end only at a newline: a rule an editor shows on the line after a
comment is part of the comment, and not compiled. Invisible format characters
(zero-width space and joiners U+200B-U+200D, word joiner U+2060, U+FEFF, soft hyphen
U+00AD, the tag characters U+E0000-U+E007F, the Hangul fillers U+3164 and U+115F,
...) change a file name, a command or a
log prefix in a string without a visible trace. Other control characters are acted
on by a terminal: an escape sequence in a comment can make `git diff` erase the
line above.

The set is fixed by Unicode category (Cc, Cf, Cs, Zl, Zp; a tab and CR LF line ends
are allowed) and a short list of invisible letters and marks (the Hangul fillers, the
combining grapheme joiner), so it does not depend on a font or an editor. Names are ASCII only,
so two objects cannot differ by a look-alike letter. The diagnostic names the
character as U+XXXX; remove it (write right-to-left text without direction controls,
end a line with a newline). Up to 10 are reported per file.""", "parse")
describe("FWC010", "include outside the policy repository", E, """
An include names a file outside the policy repository (the git work tree that
holds the top policy file, or its directory outside git), by an absolute path,
by `..` or through a symbolic link. A policy under review must not make fwc read
arbitrary files of whoever runs it, so only the repository and directories given
with `--include-path DIR` are allowed. The same holds for a VRRP `password file`,
whose content is copied into keepalived.conf. The diagnostic never shows anything
of the refused file.""", "parse")
describe("FWC011", "not a regular file", E, """
A policy, include or password file names a directory, FIFO, device or socket. Only
regular files are read: a FIFO would block fwc forever and `/dev/zero` would fill memory.""",
         "parse")
describe("FWC012", "policy file too large", E, f"""
A policy file is larger than {MAX_FILE_BYTES // MIB} MiB, or a policy with its
includes larger than {MAX_TOTAL_BYTES // MIB} MiB. A 20,000-rule policy is about 1.6 MiB;
anything far bigger is generated by mistake or hostile, and reading it whole would
exhaust memory.""", "parse")
describe("FWC013", "includes nested too deep", E, f"""
An include chain is more than {MAX_INCLUDE_DEPTH} files deep. Real policies include shared files
from one or two levels; a long chain is generated or hostile, and following it
without a limit would exhaust the stack.""", "parse")
describe("FWC030", "unknown key in fwc.toml", E, """
fwc.toml (the project's defaults, docs/project.md) names a key fwc does not know.
A misspelt key would otherwise be ignored silently and the command would run with
the built-in default instead of the one the project meant (`outptu = "build"`
would compile into `output/`). The hint lists the known keys.""", "parse")
describe("FWC031", "wrong value in fwc.toml", E, """
A key of fwc.toml has a value of the wrong type (`strict = "yes"` instead of
`strict = true`), a value outside its choices (`backend = "pf"`), an
`include_path` entry that is not a directory or lies outside the repository, or an
`output` directory outside the repository. The value would otherwise be misread or
fail later, far from the line that caused it; and the file comes with the repository
(a pull request may change it), so it may widen what fwc reads, and direct where it
writes, only within the repository: directories elsewhere are given on the command
line (`--include-path`, `-o`).""", "parse")
describe("FWC032", "fwc.toml cannot be read", E, """
fwc.toml is not valid TOML, not UTF-8, larger than 64 KiB or unreadable. The
diagnostic points at the line and column the TOML parser stopped at. No command
runs with half a configuration.""", "parse")
describe("FWC033", "fwc.toml owned or writable by another user", E, """
fwc.toml can name a command fwc runs (`secrets_command`), the ssh command and
where files are written, so a file another user owns or may write could make fwc
run that user's command with your rights (root, for `fwc install`). Like git's
`safe.directory`, fwc refuses it: own it yourself (or root) and remove the group
and world write bits.""", "parse")
describe("FWC034", "secrets named more than one way in fwc.toml", E, """
fwc.toml gives more than one of `secrets_file`, `secrets_env` and
`secrets_command`. fwc would have to pick one silently; name exactly one source
of the VRRP secrets.""", "parse")
describe("FWC037", "fwc.toml names a command not trusted", E, """
fwc.toml comes with the repository, and a pull request may change it: FWC033 only
proves that you own your checkout. Its `ssh` and `secrets_command` are commands fwc
runs on this machine with your rights (root, for `fwc install`), and `transport`
decides where install runs (`local`: on this machine). A changed `ssh = "sh -c
'...'"` would run whatever the change wants when you next install. So fwc takes
these values from fwc.toml only as `fwc trust` recorded them for that file (in your
private state directory, $XDG_STATE_HOME/fwc/trust or ~/.local/state/fwc/trust), as
direnv and mise do: read the file, then `fwc trust fwc.toml`. Plain `fwc diff`,
check and compile run none of them; a value given on the command line needs no
trust.""", "parse")
describe("FWC035", "malformed library name", E, """
`include <NAME>` names a file of the library search path (docs/library.md). NAME
must be a relative path of a `.fw` file without `.`, `..` or empty parts
(`<std/services.fw>`): the angle brackets may reach fwc's own library outside the
policy repository, so a name that could climb out of a library directory is
refused before anything is looked up.""", "parse")
describe("FWC036", "library file not found", E, """
No `--include-path` directory and not fwc's own library holds the file an
`include <NAME>` names. The hint lists the directories searched, in order; the
files shipped with fwc are listed in docs/library.md.""", "parse")
describe("FWC101", "undefined name", E, """
An object, service, interface, member or cluster is used but never defined.
Address objects, services and interfaces live in separate namespaces: `lan` the
network and `lan` the interface are different things.""")
describe("FWC102", "duplicate definition", E, """
The same name is defined twice. A second definition would silently replace the
first, so fwc refuses it and points at both. `any` and `firewall` are defined by the
language: an address object of either name would be the keyword in a rule's source
or destination (`to firewall` the nodes, not the host) and the object in a group, so
it is refused too. So is a service named like a protocol (`gre`, `tcp`, `esp`) that
is not exactly that protocol: `service gre tcp/1-65535` would make a rule's `service
gre` open every TCP port. A service, interface or member named `any` is refused for the
same reason: `drop ... service any`, `in any` and `only any` read as every protocol,
interface or member and meant that one alone.""")
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
starts. IPv4 written as IPv4-mapped IPv6 (`::ffff:192.0.2.10`, a network or range
inside `::ffff:0:0/96`) too: only the IPv6 rules get it, so it never matches the IPv4
traffic it names (a `drop` of it would drop nothing). The whole block `::ffff:0:0/96`
(a bogon, std/bogons.fw) is fine.""")
describe("FWC107", "malformed port or service", E, """
A port outside 0-65535, a reversed port range, an unknown ICMP type or an unknown
IP protocol in a service. IP protocol 0 and ICMP type 255 are refused too: iptables
reads `-p 0` as every protocol and `--icmp-type 255` as every ICMP type, where nft
(and `fwc query`) would match only that number.""")
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
describe("FWC117", "IFACE.vip is ambiguous", E, """
A NAT target must be one address per family, and `IFACE.vip` stands for every
VIP of the interface. With two VIPs of one family (`interface uplink vip
198.51.100.254/24, 198.51.100.253/24`) fwc would have to pick one, and an
address picked silently (by sort order) is not the one the reader of
`snat ... -> uplink.vip` can see. The error lists the VIPs; name them
(`vip web 198.51.100.254/24, mail 198.51.100.253/24`) and write
`uplink.vip.web`. In a rule's source or destination `IFACE.vip` stays the set
of all of them.""")
describe("FWC118", "unknown VIP name", E, """
`IFACE.vip.NAME` names one VIP of an interface by the name `vip NAME
ADDRESS/PREFIX` gave it; the interface has no VIP of that name. The hint lists
the names it has.""")
describe("FWC119", "VIP name given twice", E, """
Two VIPs of one interface carry the same name, so `IFACE.vip.NAME` would not
say which one is meant.""")
describe("FWC900", "internal error", E, """
A check crashed. The other checks still ran; this is a bug in fwc, please report
it with the policy that triggers it.""", "check")
