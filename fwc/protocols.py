"""Protocol knowledge in one place: numbers, names, ICMP types, HA defaults."""

from __future__ import annotations

from types import MappingProxyType

# IP protocol numbers for the names the language accepts bare or as `proto/NAME`.
IP_PROTOCOLS = MappingProxyType({
    "icmp": 1, "igmp": 2, "tcp": 6, "udp": 17, "gre": 47, "esp": 50, "ah": 51,
    "icmpv6": 58, "ospf": 89, "pim": 103, "vrrp": 112, "l2tp": 115, "sctp": 132,
    "dccp": 33, "ipip": 4, "ipv6": 41, "udplite": 136,
})

PORT_PROTOCOLS = frozenset({"tcp", "udp", "sctp", "dccp"})

# What IPv6 carries as extension headers (the kernel's ipv6_ext_hdr: hop-by-hop,
# routing, fragment, AH, no next header, destination options). ip6tables' `-p` and nft's
# `meta l4proto` look past them at the protocol after them, so in IPv6 a rule for one
# of these numbers matches nothing (`-p ah` lets AH-protected TCP through as TCP).
IPV6_EXTENSION_HEADERS = frozenset({0, 43, 44, 51, 59, 60})


def protocol_name(number: int) -> str:
    """The name fwc gives IP protocol NUMBER: the language's name, else the number."""
    for name, known in IP_PROTOCOLS.items():
        if known == number:
            return name
    return str(number)

# Numbers iptables reads as a wildcard, not as themselves: `-p 0` matches every protocol
# (the kernel tests the protocol only when it is not 0), and `--icmp-type 255` every ICMP
# type (ip_tables' icmp match; ip6tables' icmp6 match has no such value). nft matches
# them literally, so a service naming them would mean two things: the language refuses them.
IPTABLES_ANY_PROTOCOL = 0
IPTABLES_ANY_ICMP_TYPE = 255

ICMP_TYPES = MappingProxyType({
    "echo-reply": 0, "destination-unreachable": 3, "source-quench": 4, "redirect": 5,
    "echo-request": 8, "router-advertisement": 9, "router-solicitation": 10,
    "time-exceeded": 11, "parameter-problem": 12, "timestamp-request": 13,
    "timestamp-reply": 14, "address-mask-request": 17, "address-mask-reply": 18,
})

ICMPV6_TYPES = MappingProxyType({
    "destination-unreachable": 1, "packet-too-big": 2, "time-exceeded": 3,
    "parameter-problem": 4, "echo-request": 128, "echo-reply": 129,
    "router-solicitation": 133, "router-advertisement": 134,
    "neighbour-solicitation": 135, "neighbor-solicitation": 135,
    "neighbour-advertisement": 136, "neighbor-advertisement": 136, "redirect": 137,
})

# Conntrack helpers the kernel ships, with the protocol/port they expect.
CONNTRACK_HELPERS = MappingProxyType({
    "ftp": ("tcp", 21), "tftp": ("udp", 69), "sip": ("udp", 5060), "irc": ("tcp", 6667),
    "h323": ("tcp", 1720), "pptp": ("tcp", 1723), "snmp": ("udp", 161),
    "amanda": ("udp", 10080), "netbios-ns": ("udp", 137), "sane": ("tcp", 6566),
})

# The kernel's helper for (helper, protocol): the name `CT --helper` and an nftables
# `ct helper` object give it (H.323 is two helpers). A pair not listed has no helper
# in the kernel: FWC231.
CONNTRACK_HELPER_KERNEL_NAMES = MappingProxyType({
    ("ftp", "tcp"): "ftp", ("tftp", "udp"): "tftp", ("sip", "udp"): "sip",
    ("sip", "tcp"): "sip", ("irc", "tcp"): "irc", ("h323", "tcp"): "Q.931",
    ("h323", "udp"): "RAS", ("pptp", "tcp"): "pptp", ("snmp", "udp"): "snmp",
    ("amanda", "udp"): "amanda", ("netbios-ns", "udp"): "netbios-ns", ("sane", "tcp"): "sane",
})

# VRRP (RFC 3768 / RFC 5798).
VRRP_PROTOCOL = 112
AH_PROTOCOL = 51
VRRP_GROUP_V4 = "224.0.0.18"
VRRP_GROUP_V6 = "ff02::12"
# IPv6 adverts are sent from the interface's link-local address (RFC 5798 5.1.2.1),
# which no policy declares: this one stands for a member's (FWC222).
VRRP_V6_LINK_LOCAL_SOURCE = "fe80::1"
# Every advert leaves with TTL (hop limit) 255 and a receiver drops any other (RFC 5798
# 5.1.1.3, 5.1.2.3): no router forwards it, so an advert that arrives with it was sent on
# the link. keepalived sets it itself for IPv4 and multicast IPv6, `unicast_ttl` for
# unicast IPv6 (the kernel's default hop limit otherwise).
VRRP_TTL = 255
# A backup takes the VIPs when it heard no advert for three adverts plus a skew below
# one (RFC 5798's master-down interval): at most this many adverts.
MASTER_DOWN_ADVERTS = 4

# keepalived / VRRP defaults and limits.
DEFAULT_ADVERT_MS = 1000
DEFAULT_VRRP_VERSION = 2
VRRP_PASSWORD_MAX = 8
VRID_RANGE = (1, 255)
PRIORITY_RANGE = (1, 254)
VRRP_V3_ADVERT_RANGE_MS = (10, 40950)
VRRP_V2_ADVERT_RANGE_S = (1, 255)
MASTER_PRIORITY_STEP = 50
# Health tracking (keepalived vrrp_script / track_*): weights keepalived accepts on
# track_interface and track_script (-253..253), script intervals in whole seconds.
TRACK_WEIGHT_RANGE = (-253, 253)
TRACK_INTERVAL_RANGE_S = (1, 4294)
TRACK_COUNT_RANGE = (1, 255)  # fall, rise
DEFAULT_TRACK_INTERVAL_S = 1
DEFAULT_TRACK_FALL = 2
DEFAULT_TRACK_RISE = 2
# The gateway ping: one echo request, one second to answer, no name lookups.
PING_COMMAND = ("/usr/bin/ping", "-c", "1", "-W", "1", "-n")
# notify { STATE "command" }: the states, and the argument keepalived passes the
# notify script for each (docs/compile.md "Notify script").
NOTIFY_STATES = MappingProxyType({"master": "primary", "backup": "backup", "fault": "fault"})
# An admin's command must not hold the notify lock (and the next transition's
# conntrackd steps) for ever.
NOTIFY_ACTION_TIMEOUT_S = 30
# What the notify script waits for one conntrackd client command. Generous: a commit of
# a large external cache takes seconds, and cutting the client off does not stop it (the
# daemon finishes it and ignores a flush meanwhile); only a hung daemon meets it.
NOTIFY_CONNTRACKD_TIMEOUT_S = 60
# The distribution's own firewall units: each flushes the whole ruleset when it starts,
# reloads or stops (`nft flush ruleset` empties iptables-nft's tables and fwc's `inet fwc`
# too), which leaves a forwarding node forwarding unfiltered. The boot unit is ordered
# after them; `fwc install` warns when one is enabled or running on a node.
FLUSHING_FIREWALL_UNITS = ("nftables.service", "netfilter-persistent.service")
# Packet filters that keep a policy of their own next to fwc's: a packet must pass both,
# and theirs drops by default what they were not told about (VRRP and conntrackd sync
# among it: both members become master). firewalld with its iptables backend also
# flushes every table at its start and reload (its `build_flush_rules`). `fwc install`
# warns when one is enabled or running on a node.
COMPETING_FIREWALL_UNITS = ("firewalld.service", "ufw.service")
# Fast failover: adverts shorter than this leave a master whose CPU or link stalls
# for 3 adverts (plus skew) no margin before the backup takes over (FWC260).
VRRP_SAFE_ADVERT_MS = 50

# conntrackd defaults (conntrack-tools upstream examples).
DEFAULT_SYNC_MODE = "ftfw"
SYNC_MODES = ("ftfw", "notrack", "alarm")
DEFAULT_SYNC_GROUP = "225.0.0.50"
DEFAULT_SYNC_PORT = 3780
PORT_MAX = 65535  # the largest UDP port (conntrackd reads a larger `Group` silently)
DEFAULT_MARK_BIT = 30
NF_CONNTRACK_MAX = 262144
CONNTRACKD_HASHSIZE = 32768
CONNTRACKD_SOCKET_BUFFER = 1249280
CONNTRACKD_NETLINK_BUFFER = 2097152
CONNTRACKD_NETLINK_BUFFER_MAX = 8388608
CONNTRACKD_PURGE_TIMEOUT = 60
# Words conntrackd.conf's lexer (read_config_lex.l) takes as something other than a
# name, so an interface named so is a syntax error in `Interface NAME`: its keywords
# (case-sensitive), and, regardless of case, on/off/yes/no, the mode names (with the
# old `nack` and `persistent`) and one to four hex digits, which is an IPv6 address
# to it (`ae0`, `bad`). A longer word is a name: flex takes the longest match.
CONNTRACKD_KEYWORDS = frozenset({
    "UNIX", "IPv4_address", "IPv6_address", "IPv4_Destination_Address",
    "IPv6_Destination_Address", "IPv4_interface", "IPv6_interface", "Interface",
    "Multicast", "UDP", "TCP", "HashSize", "RefreshTime", "CacheTimeout", "CommitTimeout",
    "HashLimit", "Path", "Backlog", "Group", "Port", "LogFile", "Syslog", "LockFile",
    "General", "Sync", "Stats", "SocketBufferSize", "SocketBufferSizeMaxGrown",
    "SocketBufferSizeMaxGrowth", "NetlinkBufferSize", "NetlinkBufferSizeMaxGrowth", "Mode",
    "ResendQueueSize", "Checksum", "ACKWindowSize", "for", "SYN_SENT", "SYN_RECV",
    "ESTABLISHED", "FIN_WAIT", "CLOSE_WAIT", "LAST_ACK", "TIME_WAIT", "CLOSE", "CLOSED",
    "LISTEN", "SndSocketBuffer", "RcvSocketBuffer", "Filter", "Protocol", "Address", "State",
    "Accept", "Ignore", "PurgeTimeout", "From", "Userspace", "Kernelspace",
    "EventIterationLimit", "Default", "PollSecs", "NetlinkOverrunResync", "Nice", "Scheduler",
    "Type", "Priority", "NetlinkEventsReliable", "DisableInternalCache",
    "DisableExternalCache", "Options", "TCPWindowTracking", "ExpectationSync",
    "ErrorQueueLength", "Helper", "QueueNum", "QueueLen", "Policy", "ExpectMax",
    "ExpectTimeout", "Systemd", "StartupResync",
})
CONNTRACKD_RESERVED_PATTERN = (r"(?i:on|off|yes|no|alarm|ftfw|nack|notrack)"
                               r"|[Pp][Ee][Rr][Ss][Ii][Ss][Tt][Ee][Nn]T|[0-9a-fA-F]{1,4}")
# Protocols whose connection state conntrackd replicates. conntrackd looks the names up
# with getprotobyname(): ICMPv6 is "IPv6-ICMP" in /etc/protocols ("ICMPv6" is not found).
SYNCED_PROTOCOLS = ("TCP", "SCTP", "DCCP", "UDP", "ICMP", "IPv6-ICMP")
SYNCED_PROTOCOL_V6_ONLY = "IPv6-ICMP"
# `sync { protocols ... }`: the policy's names for conntrackd's.
# Conntrack helpers whose related connections conntrackd cannot replicate (its payload
# builders cover TCP, UDP, UDP-Lite, SCTP, DCCP, ICMP and ICMPv6 only: conntrack-tools
# 1.4.7, src/build.c), with what is lost: a failover drops them on the new master.
UNREPLICATED_HELPER_DATA = MappingProxyType({
    "pptp": "the GRE data connections of its tunnels",
})
SYNC_PROTOCOL_NAMES = MappingProxyType({
    "tcp": "TCP", "sctp": "SCTP", "dccp": "DCCP", "udp": "UDP", "icmp": "ICMP",
    "icmpv6": "IPv6-ICMP",
})
# `sync { states ... }`: TCP states conntrackd's `State Accept { ... for TCP }` knows.
SYNC_TCP_STATES = MappingProxyType({
    "syn-sent": "SYN_SENT", "syn-recv": "SYN_RECV", "established": "ESTABLISHED",
    "fin-wait": "FIN_WAIT", "close-wait": "CLOSE_WAIT", "last-ack": "LAST_ACK",
    "time-wait": "TIME_WAIT", "close": "CLOSE", "listen": "LISTEN",
})
# The same states in the order a connection goes through them (the kernel's tcp_conntracks
# order), LISTEN (simultaneous open) left out. A connection can end (be destroyed) in any of
# them: closed by a reset (CLOSE), after its FINs (TIME_WAIT) or timed out in whatever state
# it was in. conntrackd replicates the end of a connection only when the state it ends in
# passes `State Accept`; FTFW's external cache has no timeout of its own, so a connection
# whose end was filtered stays in the peer's cache and is committed at its next failover.
SYNC_TCP_STATE_ORDER = ("syn-sent", "syn-recv", "established", "fin-wait", "close-wait",
                        "last-ack", "time-wait", "close")
# The kernel's connection table (`conntrack-max`) and its hash buckets (`hash-size`):
# nf_conntrack refuses fewer than 1 bucket; more buckets than entries waste memory.
CONNTRACK_MAX_RANGE = (1024, 1 << 26)
HASH_SIZE_RANGE = (1024, 1 << 24)
NF_CONNTRACK_BUCKETS_SYSCTL = "net.netfilter.nf_conntrack_buckets"

# The kernel's LOG target keeps at most 29 bytes of prefix (30 with the NUL).
LOG_PREFIX_MAX = 29
# Limits of the programs that read the generated files, in bytes (C strings):
# `-m comment` holds 255 (XT_MAX_COMMENT_LEN 256 with the NUL); a device name 15
# (IFNAMSIZ 16 with the NUL); keepalived reads lines into a 1024-byte buffer (MAXBUF)
# and parses what does not fit as a line of its own; a file or directory name is at
# most 255 (NAME_MAX): clusters and members become directories of the output.
IPTABLES_COMMENT_MAX = 255
DEVICE_NAME_MAX = 15
KEEPALIVED_LINE_MAX = 1023
# A process's name as the kernel keeps it (/proc/PID/comm: TASK_COMM_LEN 16 with the
# NUL, the executable's file name cut to 15 bytes). keepalived's track_process compares
# its `process` with exactly that text, so a longer name never matches.
PROCESS_NAME_MAX = 15
# What a keepalived.conf string cannot hold: it has no escape for '"', and it replaces
# `$NAME` and `${NAME}` everywhere, inside quotes too, with its own definitions and
# built-ins (`${_RANDOM}`, `${_PWD}`, `${_HASH}`; keepalived 2.2): a password
# "${_PWD}" becomes the first 8 bytes of the config's directory, a script's words change.
KEEPALIVED_UNQUOTABLE = '"$'
# keepalived also skips the character after a backslash when it looks for the closing
# quote, so a string ending in an odd number of backslashes runs past its quote
# ("Unterminated quote"): the password is misread, a track script or process dropped.
KEEPALIVED_ESCAPE = "\\"
# A quoted value that is exactly this ends keepalived's block like a bare `}` would:
# `auth_pass "}"` closes `authentication`, and the rest of the instance is misread.
KEEPALIVED_BLOCK_END = "}"
# nft replaces `$name` in a quoted string with a `define` (an unknown one fails the
# whole file: "unknown identifier"); seen in log prefixes, not in comments.
NFT_LOG_PREFIX_UNQUOTABLE = '"$'
NAME_BYTES_MAX = 255
LOG_RATE = "5/second"
LOG_BURST = 10
# Rates are written COUNT/UNIT (`10/second`); iptables' limit and hashlimit take these units.
RATE_UNITS = ("second", "minute", "hour", "day")
# The LOG target's levels (syslog severities) by name, as `--log-level` takes their
# numbers; `warning` is the kernel's default.
LOG_LEVELS = MappingProxyType({
    "emerg": 0, "alert": 1, "crit": 2, "error": 3, "warning": 4, "notice": 5, "info": 6,
    "debug": 7,
})
DEFAULT_LOG_LEVEL = "warning"
# NFLOG (logging to userspace, ulogd): groups 0-65535; the prefix is at most 63 bytes.
NFLOG_GROUP_MAX = 65535
NFLOG_PREFIX_MAX = 63
# hashlimit table names (`--hashlimit-name`): at most 15 bytes in every revision.
HASHLIMIT_NAME_MAX = 15
# The burst iptables' limit and hashlimit use when none is given (and print back).
LIMIT_BURST_DEFAULT = 5
# limit's burst: the kernel refuses more than 10000 (XT_LIMIT_SCALE overflow).
LIMIT_BURST_MAX = 10000
# The fastest rate `-m limit` can express: 10000/second (one token per 100 us).
LIMIT_RATE_MAX_PER_SECOND = 10000
# Connection limits (`connlimit N`): at most N connections per source address.
CONNLIMIT_MAX = 1 << 20
# TCP MSS clamping (`mss N` on an interface): the smallest MSS IPv4 must accept (RFC 879)
# and the largest an IPv4 packet can carry (65535 - 40).
MSS_RANGE = (536, 65495)

# ipset: groups larger than this become a named hash:net set.
IPSET_THRESHOLD = 16

# --- compile (fwc compile) -------------------------------------------------------------
# iptables needs these names (not numbers) to load its per-protocol match modules.
IPTABLES_PROTOCOL_NAMES = MappingProxyType({
    1: "icmp", 6: "tcp", 17: "udp", 33: "dccp", 58: "ipv6-icmp", 132: "sctp",
})
# `-m multiport` takes at most 15 ports; a range counts as two.
MULTIPORT_MAX = 15
# iptables chain names: at most 28 characters.
CHAIN_NAME_MAX = 28
# REJECT flavours: an RST for TCP, port unreachable otherwise.
REJECT_TCP = "tcp-reset"
REJECT_OTHER = MappingProxyType({4: "icmp-port-unreachable", 6: "icmp6-port-unreachable"})
# `reject ... with TYPE`: the answer, per family, as `--reject-with` names it. tcp-reset
# answers TCP only; the ICMP types answer every protocol (TCP included). ICMPv6 has no
# "network unreachable": its closest code is "no route to destination".
REJECT_TYPES = MappingProxyType({
    "tcp-reset": MappingProxyType({4: "tcp-reset", 6: "tcp-reset"}),
    "port-unreachable": REJECT_OTHER,
    "host-unreachable": MappingProxyType({4: "icmp-host-unreachable", 6: "icmp6-addr-unreachable"}),
    "net-unreachable": MappingProxyType({4: "icmp-net-unreachable", 6: "icmp6-no-route"}),
    "admin-prohibited": MappingProxyType({4: "icmp-admin-prohibited", 6: "icmp6-adm-prohibited"}),
})
# Conntrack states in the order iptables-save prints them.
CTSTATE_ORDER = ("INVALID", "NEW", "RELATED", "ESTABLISHED", "UNTRACKED", "SNAT", "DNAT")
# IPv6 neighbour discovery (solicitation, advertisement): conntrack does not track it
# (nf_conntrack_icmpv6 leaves it UNTRACKED, no rule on ESTABLISHED matches it), and a
# node that cannot answer it has no IPv6 at all.
NDP_ICMPV6_TYPES = (135, 136)
NDP_HOP_LIMIT = 255
# MLD (RFC 2710, RFC 3810), untracked like NDP: the querier's query (130) and the
# node's reports and done (v1 131, 132; v2 143), always with hop limit 1 and, for a
# query, from a link-local address (the kernel ignores any other). An MLD-snooping
# switch forwards a group (ff02::12 and the solicited-node group of every address, the
# VIPs' included: a neighbour's solicitation goes there) only to ports that answer its
# queries: a node that drops them drops out of them once the membership times out.
MLD_QUERY_ICMPV6_TYPE = 130
MLD_REPORT_ICMPV6_TYPES = (131, 132, 143)
MLD_HOP_LIMIT = 1
IPV6_LINK_LOCAL = "fe80::/10"
# conntrackd mode options (conntrack-tools doc/sync/*/conntrackd.conf).
FTFW_RESEND_QUEUE_SIZE = 131072
FTFW_ACK_WINDOW_SIZE = 300
ALARM_REFRESH_TIME = 15
ALARM_CACHE_TIMEOUT = 180
# conntrackd wants HashLimit >= 2 x nf_conntrack_max (conntrackd.conf(5)).
CONNTRACKD_HASHLIMIT_FACTOR = 2
NF_CONNTRACK_EVENTS = 1
# Node paths the generated files use besides their own (those: fwc.backend.files).
NODE_CONNTRACKD_LOCK = "/var/lock/conntrackd.lock"
NODE_CONNTRACKD_SOCKET = "/var/run/conntrackd.ctl"
# Programs the systemd drop-ins run (a unit's command needs its absolute path; these
# hold on Debian, merged-/usr or not, and on every distribution with a merged /usr).
NODE_RM = "/bin/rm"
# conntrackd pings systemd's watchdog from its event loop once WatchdogSec is set (it is
# commented out in Debian's unit, at this value): a daemon silent this long (hung,
# stopped) is killed and started again by the drop-in.
CONNTRACKD_WATCHDOG_S = 60
# A conntrackd that did not start (its sync address not there yet) is started again
# this long after, for as long as it takes: the drop-in lifts systemd's start limit.
CONNTRACKD_RESTART_S = 2
NODE_CONNTRACKD = "/usr/sbin/conntrackd"
NODE_IP = "/sbin/ip"
NODE_NOTIFY_LOCK = "/run/fwc-notify.lock"
# Per vrrp-group, the last state the notify script was told (active-active: a member
# that still masters one group must not purge the kernel table for another).
NODE_VRRP_STATE_DIR = "/run/fwc-vrrp"
# The boot script's syslog tag (docs/compile.md "Boot").
BOOT_LOG_TAG = "fwc-firewall"
# The forwarding switches the boot script turns off first and on last.
FORWARDING_SYSCTLS = {4: "net.ipv4.ip_forward", 6: "net.ipv6.conf.all.forwarding"}
# keepalived preempt_delay (seconds after its start before it may preempt): a rebooted
# master must not take the VIPs back before conntrackd has resynchronised (FWC221).
DEFAULT_PREEMPT_DELAY_S = 10
MIN_PREEMPT_DELAY_S = 5
KEEPALIVED_PREEMPT_DELAY_MAX_S = 1000
NOTIFY_LOG_TAG = "fwc-notify"
# keepalived uses only the first 8 characters of auth_pass; the placeholder fits.
REDACTED_PASSWORD = "@FWCPW@"

# Routing (docs/compile.md, "Routes"). Tables fwc may fill: 0 and 253-255 are the
# kernel's unspec, default, main and local tables.
ROUTE_TABLE_RANGE = (1, 252)
# fwc's routes and rules carry this protocol number (`proto 94`), so that the routes
# script replaces exactly its own (unassigned in iproute2's rt_protos).
ROUTE_PROTOCOL = 94
# `route-rule` priorities: written ones 2-32765 (0 is the local table's rule, 32766 and
# 32767 main and default; fwc's `lookup main suppress_prefixlength 0` takes the one
# before the first rule); unwritten ones count from 1000 in steps of 10.
ROUTE_RULE_PRIORITY_RANGE = (2, 32765)
ROUTE_RULE_FIRST_PRIORITY = 1000
ROUTE_RULE_PRIORITY_STEP = 10
# The routes script's syslog tag.
ROUTES_LOG_TAG = "fwc-routes"

# Uplink failover (`route ... probe TARGET`, docs/language.md "Uplink failover"): the
# monitor pings TARGET every interval (a ping waits at most one interval), removes the
# route after `fall` misses in a row and puts it back after `rise` answers.
UPLINK_INTERVAL_RANGE_MS = (200, 60_000)
DEFAULT_UPLINK_INTERVAL_MS = 1000
UPLINK_COUNT_RANGE = (1, 100)  # fall, rise
DEFAULT_UPLINK_FALL = 3
DEFAULT_UPLINK_RISE = 3
# FWC279: one lost probe is not a dead gateway (fall 1 flaps on every lost echo), and a
# failure noticed only after a minute is an outage, not a failover.
UPLINK_MIN_SAFE_FALL = 2
UPLINK_SLOW_DETECTION_MS = 60_000
# The monitor's syslog tag.
UPLINKS_LOG_TAG = "fwc-uplinks"
