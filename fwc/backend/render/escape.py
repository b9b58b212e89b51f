"""Every string that reaches a generated file goes through one function here, per format.

Each function either returns the text as the reading program will take it back
(quoted where the format has quoting) or raises UnwritableText: a value the
format cannot carry is never written half-escaped. The checks (FWC004, FWC005,
FWC114-FWC116, FWC212, FWC501, FWC505) refuse such values at their line first,
so these exceptions only fire on a bug; the templates' `finalize` sends every
other interpolated value through `line_text`, so nothing reaches a file unchecked.

Formats and what their readers do with a value:

- iptables-restore: a line is split into words at blanks; `"..."` groups a word,
  inside it `\\` escapes the next character. `--comment` holds 255 bytes
  (XT_MAX_COMMENT_LEN 256 with the NUL), `--log-prefix` 29 (30 with the NUL),
  `--nflog-prefix` 63.
- ipset restore: blank-separated words, no quoting at all.
- nft -f: `"..."` has no escapes, so a string holds no `"`; a comment holds 128
  bytes (NFTNL_UDATA_COMMENT_MAXLEN), a log prefix 127; in an interface name a
  trailing `*` is a wildcard; identifiers (chains, sets) are bare words.
- keepalived.conf (2.2): `"..."` ends at the next `"`, without escapes; a bare word
  ends at a blank or `"`; `#` and `!` start a comment; lines over 1023 bytes are cut
  (MAXBUF), so the rest of the line becomes keywords of its own.
- conntrackd.conf: a flex lexer; names are `[a-zA-Z][a-zA-Z0-9._-]*`.
- sh (fwc-notify.sh): single quotes hold anything but a single quote.
- ip -batch (fwc-routes.sh): words split at blanks, `"` quotes, `#` comments: a
  word holds letters, digits and `_.:/@-` only.
- YAML read by Ansible (`fwc export ansible`): a single-quoted scalar holds anything
  on one line, `''` being a quote; Ansible evaluates `{{ }}`, `{% %}` and `{# #}` in
  every string it templates, so a value from a policy is tagged `!unsafe` (never
  templated) unless YAML would read it as a boolean, null or number (Ansible 2.19
  then does, tag or not; such a value holds no template); a mapping key is only ever
  a name, quoted when YAML 1.1 would read it as a boolean or null (`yes`, `on`...).
- systemd unit files, sysctl.conf and the `#` comment line of every format: one
  line each, so only line breaks and other control characters are a danger.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterable
from functools import lru_cache

from fwc import protocols as proto
from fwc.model.passwords import escapes_closing_quote
from fwc.text import describe_character, unsafe_character, utf8_length


class UnwritableText(ValueError):
    """A value that the target format cannot carry."""


def line_text(text: object) -> str:
    """Any value on a line of any generated file: no line break or other control character."""
    value = str(text)
    bad = unsafe_character(value)
    if bad is not None:
        raise UnwritableText(f"{value!r} contains {describe_character(bad[1])}")
    return value


# -- iptables-restore -----------------------------------------------------------------------

def _plain(text: str) -> bool:
    """Printable ASCII without `"` or `\\`: what every line format carries as it is.

    The fast path of the iptables functions (a large policy has a comment per rule):
    such a text has no control, separator or bidirectional character (line_text) and
    is as many UTF-8 bytes long as it has characters.
    """
    return text.isascii() and text.isprintable() and '"' not in text and "\\" not in text


@lru_cache(maxsize=8192)  # a large policy writes each comment on many lines
def iptables_string(text: str) -> str:
    """A quoted iptables-restore word."""
    if _plain(text):
        return '"' + text + '"'
    return '"' + line_text(text).replace("\\", "\\\\").replace('"', '\\"') + '"'


@lru_cache(maxsize=8192)
def iptables_word(text: str) -> str:
    """A bare iptables-restore word (a chain, a device, an address, a target option)."""
    if text and " " not in text and _plain(text):
        return text
    value = line_text(text)
    if not value or any(c.isspace() or c in '"\\' for c in value):
        raise UnwritableText(f"{text!r} cannot be a bare iptables-restore word")
    return value


def iptables_comment(text: str) -> str:
    if len(text) <= proto.IPTABLES_COMMENT_MAX and _plain(text):
        return '"' + text + '"'  # one per rule: not through iptables_string's cache
    if utf8_length(text) > proto.IPTABLES_COMMENT_MAX:
        raise UnwritableText(f"comment {text!r} is longer than "
                             f"{proto.IPTABLES_COMMENT_MAX} bytes")
    return iptables_string(text)


def iptables_log_prefix(text: str, nflog: bool = False) -> str:
    """`--log-prefix` (LOG keeps 29 bytes) or, with NFLOG, `--nflog-prefix` (63)."""
    limit = proto.NFLOG_PREFIX_MAX if nflog else proto.LOG_PREFIX_MAX
    if utf8_length(text) > limit:
        raise UnwritableText(f"log prefix {text!r} is longer than {limit} bytes")
    return iptables_string(text)


# -- ipset restore ---------------------------------------------------------------------------

_IPSET_WORD = re.compile(r"[A-Za-z0-9_.:/-]+")


def ipset_word(text: str) -> str:
    """A set name, type or address: ipset restore has no quoting."""
    if not _IPSET_WORD.fullmatch(text):
        raise UnwritableText(f"{text!r} cannot be an ipset restore word")
    return text


def ipset_words(texts: tuple[str, ...]) -> tuple[str, ...]:
    """`ipset_word` of each of TEXTS (a set's addresses), checked in one pass."""
    if texts and not _IPSET_WORD.fullmatch("".join(texts)):  # a joined word is a word
        for text in texts:
            ipset_word(text)
    if not all(texts):
        raise UnwritableText("an empty text cannot be an ipset restore word")
    return texts


# -- nft -f ---------------------------------------------------------------------------------

NFT_COMMENT_MAX = 128
NFT_LOG_PREFIX_MAX = 127
_NFT_IDENTIFIER = re.compile(r"[A-Za-z][A-Za-z0-9_.-]*")


def nft_string(text: str) -> str:
    """A quoted nft string: nft has no escape for '"' inside quotes."""
    if _plain(text):
        return f'"{text}"'
    if '"' in line_text(text):
        raise UnwritableText(f"{text!r}: nft cannot quote a double quote")
    return f'"{text}"'


def nft_identifier(text: str) -> str:
    """A chain, set or object name, written bare."""
    if not _NFT_IDENTIFIER.fullmatch(text):
        raise UnwritableText(f"{text!r} cannot be an nft identifier")
    return text


def nft_device(text: str) -> str:
    """An interface name for iifname/oifname: a `*` would make it a wildcard."""
    if "*" in text or "\\" in text:
        raise UnwritableText(f"{text!r} cannot be an nft interface name")
    return nft_string(text)


def nft_comment(text: str) -> str:
    """A rule comment. Longer than nft allows: the start goes, so file:line stays."""
    if len(text) <= NFT_COMMENT_MAX and _plain(text):  # as below, without the scan
        return f'"{text}"'
    value = line_text(text).replace('"', "'")  # a comment only informs: no refusal
    if utf8_length(value) > NFT_COMMENT_MAX:
        data = value.encode()[-(NFT_COMMENT_MAX - 3):]
        value = "..." + data.decode(errors="ignore")
    return nft_string(value)


def nft_log_prefix(text: str) -> str:
    if any(c in proto.NFT_LOG_PREFIX_UNQUOTABLE for c in text):
        raise UnwritableText(f"log prefix {text!r}: nft cannot quote a double quote, and "
                             "would expand a '$'")
    if utf8_length(text) > NFT_LOG_PREFIX_MAX:
        raise UnwritableText(f"log prefix {text!r} is longer than {NFT_LOG_PREFIX_MAX} bytes")
    return nft_string(text)


# -- keepalived.conf -------------------------------------------------------------------------

_KEEPALIVED_WORD_STOPS = frozenset(' "#!{}$')


def keepalived_string(text: str) -> str:
    """A quoted keepalived value: keepalived has no escape for '"' inside quotes, and
    expands '$' there (proto.KEEPALIVED_UNQUOTABLE)."""
    value = line_text(text)
    if any(c in proto.KEEPALIVED_UNQUOTABLE for c in value):
        raise UnwritableText(f"{text!r}: keepalived cannot quote a double quote or '$'")
    if value == proto.KEEPALIVED_BLOCK_END:
        raise UnwritableText(f"{text!r}: keepalived would read it as the end of the block")
    if escapes_closing_quote(value):
        raise UnwritableText(f"{text!r}: keepalived would read its last backslash with the "
                             "closing quote")
    return f'"{text}"'


def keepalived_word(text: str) -> str:
    """A bare keepalived word (names, devices, addresses)."""
    value = line_text(text)
    if not value or any(c in _KEEPALIVED_WORD_STOPS or c.isspace() for c in value):
        raise UnwritableText(f"{text!r} cannot be a bare keepalived word")
    return value


def keepalived_file(text: str) -> str:
    """A whole keepalived.conf: a longer line would be cut and its rest misread."""
    for line in text.splitlines():
        if utf8_length(line) > proto.KEEPALIVED_LINE_MAX:
            raise UnwritableText(f"keepalived.conf line {line[:40]!r}... is longer than "
                                 f"{proto.KEEPALIVED_LINE_MAX} bytes")
    return text


# -- conntrackd.conf -------------------------------------------------------------------------

_CONNTRACKD_NAME = re.compile(r"[a-zA-Z][a-zA-Z0-9._-]*")
_CONNTRACKD_RESERVED = re.compile(proto.CONNTRACKD_RESERVED_PATTERN)


def conntrackd_reserved(text: str) -> bool:
    """True when conntrackd's lexer reads TEXT as a keyword, a switch or an address."""
    return text in proto.CONNTRACKD_KEYWORDS or bool(_CONNTRACKD_RESERVED.fullmatch(text))


def conntrackd_name(text: str) -> str:
    """A name conntrackd's lexer reads as one token (an interface)."""
    if not _CONNTRACKD_NAME.fullmatch(text) or conntrackd_reserved(text):
        raise UnwritableText(f"{text!r} is not a name conntrackd.conf can hold")
    return text


# -- ip -batch (the routes script) -------------------------------------------------------------

_IP_WORD = re.compile(r"[A-Za-z0-9_.:/@-]+")


def ip_word(text: object) -> str:
    """One word of an `ip -batch` line: iproute2 splits at blanks, reads quotes and `#`
    comments, so a word holds only characters that mean nothing to it."""
    value = line_text(text)
    if not _IP_WORD.fullmatch(value):
        raise UnwritableText(f"{value!r} cannot be a word of an ip -batch line")
    return value


# -- Graphviz DOT (fwc graph) ------------------------------------------------------------------

def _dot_escaped(text: object) -> str:
    return line_text(text).replace("\\", "\\\\").replace('"', '\\"')


def dot_string(text: object) -> str:
    """A quoted DOT ID or attribute value: `"` and `\\` escaped, one line."""
    return f'"{_dot_escaped(text)}"'


def dot_label(lines: Iterable[object]) -> str:
    """A quoted DOT label of several lines (DOT's own `\\n` between them)."""
    return '"' + "\\n".join(_dot_escaped(line) for line in lines) + '"'


# -- shell, systemd, sysctl, comments ----------------------------------------------------------

def shell_word(text: str) -> str:
    """One sh word, quoted when it needs to be."""
    return shlex.quote(line_text(text))


def comment(text: str) -> str:
    """The text of a `#` comment line (every format): one line, nothing more."""
    return line_text(text)


def systemd_value(text: str) -> str:
    """A unit-file value: `%` starts a specifier, a trailing `\\` continues the line."""
    value = line_text(text).replace("%", "%%")
    if value.endswith("\\") or value != value.strip():
        raise UnwritableText(f"{text!r} cannot be a systemd value")
    return value


def sysctl_value(text: object) -> str:
    """A `key = value` setting: one line, no surrounding blanks (sysctl strips them)."""
    value = line_text(text)
    if value != value.strip() or not value:
        raise UnwritableText(f"{text!r} cannot be a sysctl value")
    return value


# -- YAML for Ansible -------------------------------------------------------------------------

_YAML_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*\Z")
# Plain words that YAML 1.1 (PyYAML, which Ansible reads its inventory with) takes as a
# boolean or null, not a string: a host named `yes` or `on` becomes the key True (two
# such hosts are one key), and Ansible refuses the inventory. The spec's y/n too.
_YAML_NOT_STRINGS = frozenset(
    word for base in ("y", "n", "yes", "no", "true", "false", "on", "off", "null")
    for word in (base, base.capitalize(), base.upper()))


# What may start a template: `{{`, `{%`, `{#`, and a `#jinja2:` header at the start.
_JINJA_STARTS = frozenset("{#")
# The first characters of YAML 1.1's plain integers, floats and timestamps.
_YAML_NUMBER_STARTS = frozenset("+-.0123456789")


def _yaml_typed(text: str) -> bool:
    """Whether YAML 1.1 may read TEXT, bare, as something other than a string (a boolean,
    null, a number, a timestamp, `<<` or `=`): an over-approximation, which is harmless."""
    return (text in _YAML_NOT_STRINGS or text in ("", "~", "<<", "=")
            or text[:1] in _YAML_NUMBER_STARTS)


def yaml_unsafe(text: str) -> str:
    """A YAML string Ansible takes literally: single-quoted and tagged `!unsafe`.

    Ansible 2.19 reads a `!unsafe` scalar as if it were bare, quotes or not: `!unsafe 'on'`
    is True, `!unsafe '1.5'` a float. A value YAML would so type holds no template (no
    `{` or `#`), so it is written quoted without the tag, a string in every version."""
    value = "'" + line_text(text).replace("'", "''") + "'"
    if _yaml_typed(text) and not _JINJA_STARTS.intersection(text):
        return value
    return "!unsafe " + value


def ansible_name(text: str) -> str:
    """An inventory host or group name as it is, in a file name or inside a quoted YAML
    string: a plain name only."""
    if not _YAML_KEY.match(text):
        raise UnwritableText(f"{text!r} cannot be an Ansible host or group name")
    return text


def yaml_key(text: str) -> str:
    """A YAML mapping key (an inventory host or group name): bare, or single-quoted when
    YAML would read the bare word as something other than a string."""
    name = ansible_name(text)
    return f"'{name}'" if name in _YAML_NOT_STRINGS else name


# Jinja filters, named after the functions, so templates say which format a value is in.
FILTERS = {
    "keepalived_string": keepalived_string,
    "keepalived_word": keepalived_word,
    "conntrackd_name": conntrackd_name,
    "ip_word": ip_word,
    "shell_word": shell_word,
    "comment": comment,
    "systemd_value": systemd_value,
    "sysctl_value": sysctl_value,
}
