"""Text the generated files carry: file names, device names, name lengths, comments.

Each limit here is one of the program that reads the file (the kernel, iptables,
keepalived, conntrackd, the file system): a policy that passes these checks is
never refused on the node for a name or a comment.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from fwc import protocols as proto
from fwc.backend.arrange import arrange_label, jump_label
from fwc.backend.lower.build import (
    auto_label,
    mss_label,
    options_for,
    source_label,
    sync_allow_label,
)
from fwc.backend.render import escape
from fwc.checks import check, describe
from fwc.diagnostics import Diagnostic, Severity, Span, error
from fwc.frontend.loader import LoadedProgram
from fwc.model import Cluster, FilterRule, Policy
from fwc.text import describe_character, unsafe_character, utf8_length

E = Severity.ERROR

describe("FWC005", "file name a generated file cannot carry", E, """
Every iptables rule's comment names the policy file and line it comes from
(`lib/hq.fw:12`), and MANIFEST lists the policy's files. A file name with a control
character (a newline, a tab, an escape character), a line separator, a
bidirectional or invisible format character (a zero-width space before the dot of
`rules.fw` is not seen) or bytes that are not UTF-8 would break the line it is
written on, or name another file than the one a reviewer reads: a newline in a file
name once injected `-A INPUT -j ACCEPT` into the ruleset. Such a file is refused
before anything is read from it; rename
it.""", "parse")


def file_name_diagnostics(program: LoadedProgram) -> list[Diagnostic]:
    """FWC005 for the root policy and every file it includes."""
    out: list[Diagnostic] = []
    for path, _digest in program.hashes:
        bad = unsafe_character(path)
        if bad is None:
            continue
        # The name itself is unprintable: show it escaped, never as it is.
        shown = path.encode("unicode_escape").decode("ascii")
        what = "is not UTF-8" if 0xDC80 <= ord(bad[1]) <= 0xDCFF \
            else f"contains {describe_character(bad[1])}"
        out.append(error("FWC005", f"the file name '{shown}' {what}", None,
                         hint="rename the file: its name is written into every rule's comment"))
    return out


# The kernel's dev_valid_name() allows more (anything but '/', ':' and blanks), but
# conntrackd's lexer reads an interface as [a-zA-Z][a-zA-Z0-9._-]*: one set for all.
_DEVICE = re.compile(r"[a-zA-Z][a-zA-Z0-9._-]*")


@check("FWC114", "invalid device name", E, f"""
A member maps each interface to a Linux device. The kernel keeps at most
{proto.DEVICE_NAME_MAX} bytes of a device name (IFNAMSIZ, 16 with the NUL):
`iptables-restore` refuses `-i` with a longer name and the device cannot exist.
conntrackd's configuration lexer accepts only letters, digits, `.`, `_` and `-`
in an interface name (`eth0@if12`, as `ip link` prints a veth, is a syntax error
there, and the part after `@` is not part of the name anyway). It also reads some
words as something else: its keywords (`Default`, `Sync`), `on`, `off`, `yes`, `no`,
the mode names, and one to four hex digits, an IPv6 address to it (`ae0`, `bad`).
A sync link's device named so is a syntax error in conntrackd.conf, and conntrackd
does not start.""")
def device_names(policy: Policy) -> Iterable[Diagnostic]:
    for cluster in policy.clusters:
        sync_links = cluster.sync.links
        for member in cluster.members:
            for link in member.links:
                device = link.device
                if "@" in device:
                    yield error("FWC114", f"device '{device}' of member '{member.name}' contains "
                                "'@'", link.span,
                                hint=f"'ip link' shows DEVICE@PEER: the device is "
                                f"'{device.partition('@')[0]}'")
                elif not _DEVICE.fullmatch(device):
                    yield error("FWC114", f"device '{device}' of member '{member.name}' is not "
                                "a valid device name", link.span,
                                hint="use letters, digits, '.', '_' and '-'")
                elif utf8_length(device) > proto.DEVICE_NAME_MAX:
                    yield error("FWC114", f"device '{device}' of member '{member.name}' has "
                                f"{utf8_length(device)} bytes; Linux device names have at most "
                                f"{proto.DEVICE_NAME_MAX}", link.span,
                                hint="check the name with 'ip link' on the member")
                elif link.interface in sync_links and escape.conntrackd_reserved(device):
                    yield error("FWC114", f"device '{device}' of member '{member.name}' is the "
                                f"sync link '{link.interface}', and conntrackd.conf reads "
                                f"'{device}' as a keyword or an address", link.span,
                                hint="rename the device (e.g. with a systemd .link file)")


@check("FWC115", "name too long for the generated files", E, f"""
Cluster and member names become directories of the compiled output
(`output/CLUSTER/MEMBER/`), and with interface names they become keepalived
instance and group names. A file or directory name has at most
{proto.NAME_BYTES_MAX} bytes (NAME_MAX); keepalived reads a line into a 1024-byte
buffer and takes what does not fit as a line of its own, silently. fwc keeps these
names to {proto.NAME_BYTES_MAX} bytes. (Chain and ipset names derived from names
are shortened with a hash and need no limit.)""")
def name_lengths(policy: Policy) -> Iterable[Diagnostic]:
    for cluster in policy.clusters:
        named: list[tuple[str, str, Span | None]] = [("cluster", cluster.name, cluster.span)]
        named += [("member", m.name, m.span) for m in cluster.members]
        named += [("interface", i.name, i.span) for i in cluster.interfaces]
        for kind, name, span in named:
            if utf8_length(name) > proto.NAME_BYTES_MAX:
                yield error("FWC115", f"{kind} name '{name[:20]}...' has {utf8_length(name)} "
                            f"bytes; at most {proto.NAME_BYTES_MAX} fit the generated files",
                            span, hint="use a shorter name")


@check("FWC116", "rule comment too long for iptables", E, f"""
Every generated iptables rule carries a comment naming its source
(`lib/hq.fw:12`, relative to the root policy's directory). The comment match
holds at most {proto.IPTABLES_COMMENT_MAX} bytes (XT_MAX_COMMENT_LEN, 256 with the
NUL); iptables 1.8 silently cuts a longer one, in the middle of a UTF-8 character
if it comes to that, so the rules on the node would differ from the generated ones
and the comment would no longer name the file. A policy file whose path from the
root policy is that long is reported at each of its rules instead. A filter rule's
label must leave room for `fwc arrange: ` (the comment of the jumps to a chain of its
own in an arranged chain, which a large policy gets), and the comments fwc makes of
an interface's name (`fwc arrange: out NAME`, `fwc auto: mss NAME`) and of `sync {{
allow ... }}` (`fwc auto: sync allow ssh, ntp`) must fit too: otherwise whether the
policy compiles would depend on how large its chains are.""")
def comment_lengths(policy: Policy) -> Iterable[Diagnostic]:
    options = options_for(policy)
    # A label is the file's path and the line: a file whose last rule's longest comment
    # fits has no comment too long (a shorter line number never makes it longer). One
    # path computation per file, not per rule.
    last: dict[str, int] = {}
    for cluster in policy.clusters:
        for rule in cluster.all_rules():
            last[rule.span.file] = max(last.get(rule.span.file, 0), rule.span.line)
    fits = {file for file, line in last.items()
            if utf8_length(arrange_label(source_label(file, line, options)))
            <= proto.IPTABLES_COMMENT_MAX}
    seen: set[tuple[str, int, bool]] = set()
    for cluster in policy.clusters:
        for rule in cluster.all_rules():
            if rule.span.file in fits:
                continue
            filtering = isinstance(rule, FilterRule)
            key = (rule.span.file, rule.span.line, filtering)
            if key in seen:
                continue
            seen.add(key)
            label = source_label(rule.span.file, rule.span.line, options)
            # (a NAT rule's lines are never arranged: its label is its longest comment)
            longest = arrange_label(label) if filtering else label
            if utf8_length(longest) > proto.IPTABLES_COMMENT_MAX:
                arranged = "" if longest == label else \
                    (f", {utf8_length(longest)} in the arrangement's jumps to its chain "
                     "('fwc arrange: FILE:LINE')")
                yield error("FWC116", f"the rule's comment '{label[:40]}...' has "
                            f"{utf8_length(label)} bytes{arranged}; iptables keeps at most "
                            f"{proto.IPTABLES_COMMENT_MAX}", rule.span,
                            hint="move the policy file closer to the root policy or shorten "
                            "its path")
        yield from _named_comment_lengths(cluster)


def _named_comment_lengths(cluster: Cluster) -> Iterable[Diagnostic]:
    """FWC116 for the comments fwc makes of CLUSTER's interface names and sync allowance."""
    made: list[tuple[str, Span | None, str]] = []
    for iface in cluster.interfaces:
        comments = [jump_label(dimension, iface.name) for dimension in ("in", "out")]
        if iface.mss is not None:
            comments.append(auto_label(mss_label(iface.name)))
        made.append((max(comments, key=utf8_length), iface.span,
                     "use a shorter interface name"))
    if cluster.sync.allow:
        made.append((auto_label(sync_allow_label(cluster.sync)), cluster.sync.span_of("allow"),
                     "allow fewer services, or define one service for several ports"))
    for comment, span, hint in made:
        if utf8_length(comment) > proto.IPTABLES_COMMENT_MAX:
            yield error("FWC116", f"the comment '{comment[:40]}...' fwc writes for this has "
                        f"{utf8_length(comment)} bytes; iptables keeps at most "
                        f"{proto.IPTABLES_COMMENT_MAX}", span, hint=hint)
