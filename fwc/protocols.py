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

# VRRP (RFC 3768 / RFC 5798).
VRRP_PROTOCOL = 112
AH_PROTOCOL = 51
VRRP_GROUP_V4 = "224.0.0.18"
VRRP_GROUP_V6 = "ff02::12"
IGMP_PROTOCOL = 2

# keepalived / VRRP defaults and limits.
DEFAULT_ADVERT_MS = 1000
DEFAULT_VRRP_VERSION = 2
VRRP_PASSWORD_MAX = 8
VRID_RANGE = (1, 255)
PRIORITY_RANGE = (1, 254)
VRRP_V3_ADVERT_RANGE_MS = (10, 40950)
VRRP_V2_ADVERT_RANGE_S = (1, 255)
MASTER_PRIORITY_STEP = 50

# conntrackd defaults (conntrack-tools upstream examples).
DEFAULT_SYNC_MODE = "ftfw"
SYNC_MODES = ("ftfw", "notrack", "alarm")
DEFAULT_SYNC_GROUP = "225.0.0.50"
DEFAULT_SYNC_PORT = 3780
DEFAULT_MARK_BIT = 30
NF_CONNTRACK_MAX = 262144
CONNTRACKD_HASHSIZE = 32768
CONNTRACKD_SOCKET_BUFFER = 1249280
CONNTRACKD_NETLINK_BUFFER = 2097152
CONNTRACKD_NETLINK_BUFFER_MAX = 8388608
CONNTRACKD_PURGE_TIMEOUT = 60
# Protocols whose connection state conntrackd replicates.
SYNCED_PROTOCOLS = ("TCP", "SCTP", "DCCP", "UDP", "ICMP", "ICMPv6")

# The kernel's LOG target keeps at most 29 characters of prefix.
LOG_PREFIX_MAX = 29
LOG_RATE = "5/second"
LOG_BURST = 10

# ipset: groups larger than this become a named hash:net set.
IPSET_THRESHOLD = 16
