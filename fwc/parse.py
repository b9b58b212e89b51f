"""Parse `*.fw` text into the syntax tree (`fwc.syntax`) with lark.

Syntax errors become diagnostics. After an error the offending line is blanked
and parsing resumes, so one run reports the syntax errors of several lines.
"""

from __future__ import annotations

import functools
from importlib import resources
from pathlib import Path

from lark import Lark, Token, Tree
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken

from fwc import syntax as s
from fwc.diagnostics import Diagnostic, Span, error

MAX_SYNTAX_ERRORS = 10

_TERMINAL_NAMES = {
    "NAME": "a name", "DEVICE": "a device name", "VIP_REF": "IFACE.vip",
    "IPV4": "an IPv4 address", "IPV6": "an IPv6 address", "ADDR_RANGE": "an address range",
    "SVC_SPEC": "a service such as tcp/22", "DURATION": "a duration such as 1s or 100ms",
    "INT": "a number", "STRING": "a quoted string", "ACTION": "accept, drop or reject",
    "NAT_KIND": "snat, dnat, masquerade or nonat", "VERDICT": "allow or deny",
    "ADDRESS_KIND": "host or network", "NEGATE": "!", "ANY": "any", "FIREWALL": "firewall",
    "LOG": "log", "$END": "end of file", "LBRACE": "'{'", "RBRACE": "'}'", "COMMA": "','",
    "SEMICOLON": "';'", "COLON": "':'", "LSQB": "'['", "RSQB": "']'",
}


def grammar_text() -> str:
    """The grammar, from the installed package or, in a checkout, from grammar/."""
    packaged = resources.files("fwc").joinpath("grammar/fwc.lark")
    if packaged.is_file():
        return packaged.read_text(encoding="utf-8")
    checkout = Path(__file__).resolve().parent.parent / "grammar" / "fwc.lark"
    return checkout.read_text(encoding="utf-8")


@functools.cache
def parser() -> Lark:
    return Lark(grammar_text(), parser="lalr", propagate_positions=True,
                maybe_placeholders=False, cache=True)


def _describe(terminal: str) -> str:
    if terminal in _TERMINAL_NAMES:
        return _TERMINAL_NAMES[terminal]
    return f'"{terminal.lower().replace("_", "-")}"' if terminal.isupper() else terminal


def _syntax_diagnostic(path: str, exc: UnexpectedInput, text: str) -> Diagnostic:
    line = getattr(exc, "line", 0) or 0
    column = getattr(exc, "column", 0) or 0
    at_end = isinstance(exc, UnexpectedToken) and exc.token.type == "$END"
    if isinstance(exc, UnexpectedEOF) or line <= 0 or at_end:
        lines = text.splitlines() or [""]
        line, column = len(lines), len(lines[-1]) + 1
        return error("FWC001", "unexpected end of file", Span(path, line, column, line, column),
                     hint="a block is not closed: check that every '{' has its '}'")
    expected: set[str] = set()
    found = ""
    width = 1
    if isinstance(exc, UnexpectedToken):
        expected = {t for t in exc.expected if not t.startswith("__")}
        found = f"'{exc.token}'" if exc.token.type != "$END" else "end of file"
        width = max(1, len(str(exc.token)))
    elif isinstance(exc, UnexpectedCharacters):
        expected = {t for t in (exc.allowed or ()) if not t.startswith("__")}
        found = f"character {text[exc.pos_in_stream]!r}" if exc.pos_in_stream < len(text) else ""
    names = sorted({_describe(t) for t in expected})
    hint = None
    if names:
        shown = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
        hint = f"expected {shown}"
    span = Span(path, line, column, line, column + width)
    return error("FWC001", f"syntax error: unexpected {found}".rstrip(), span, hint=hint)


def _blank_line(text: str, line: int) -> str:
    lines = text.split("\n")
    if 1 <= line <= len(lines):
        lines[line - 1] = " " * len(lines[line - 1])
    return "\n".join(lines)


def parse_text(text: str, path: str) -> tuple[s.SourceFile, list[Diagnostic]]:
    diagnostics: list[Diagnostic] = []
    attempt = text
    tree: Tree | None = None
    seen_lines: set[int] = set()
    while tree is None:
        try:
            tree = parser().parse(attempt)
        except UnexpectedInput as exc:
            diagnostics.append(_syntax_diagnostic(path, exc, attempt))
            line = getattr(exc, "line", 0) or 0
            at_end = isinstance(exc, UnexpectedToken) and exc.token.type == "$END"
            if (isinstance(exc, UnexpectedEOF) or at_end or line <= 0 or line in seen_lines
                    or len(diagnostics) >= MAX_SYNTAX_ERRORS):
                return s.SourceFile(path, text, ()), diagnostics
            seen_lines.add(line)
            attempt = _blank_line(attempt, line)
    if diagnostics:
        # The tree of a repaired text would hide what was removed; keep only errors.
        return s.SourceFile(path, text, ()), diagnostics
    return s.SourceFile(path, text, tuple(_Builder(path).statements(tree))), diagnostics


class _Builder:
    def __init__(self, path: str) -> None:
        self.path = path

    def span(self, node: Tree | Token) -> Span:
        if isinstance(node, Token):
            return Span(self.path, node.line or 0, node.column or 0,
                        node.end_line or node.line or 0, node.end_column or node.column or 0)
        meta = node.meta
        if getattr(meta, "empty", True):
            return Span(self.path, 0, 0, 0, 0)
        return Span(self.path, meta.line, meta.column, meta.end_line, meta.end_column)

    def word(self, token: Token | Tree) -> s.Word:
        if isinstance(token, Tree):
            token = token.children[0]  # name_ref / address / range_lit wrap one token
        text = str(token)
        if token.type == "STRING":
            text = bytes(text[1:-1], "utf-8").decode("unicode_escape")
        return s.Word(text, self.span(token))

    def statements(self, tree: Tree) -> list[s.Statement]:
        out: list[s.Statement] = []
        for node in tree.children:
            handler = getattr(self, f"_{node.data}")
            out.append(handler(node))
        return out

    def _include(self, node: Tree) -> s.Include:
        return s.Include(self.word(node.children[0]), self.span(node))

    def _address_def(self, node: Tree) -> s.AddressDef:
        kind, name, *values = node.children
        return s.AddressDef(str(kind), self.word(name), tuple(self.word(v) for v in values),
                            self.span(node))

    def _range_def(self, node: Tree) -> s.AddressDef:
        name, value = node.children
        return s.AddressDef("range", self.word(name), (self.word(value),), self.span(node))

    def _group_def(self, node: Tree) -> s.GroupDef:
        name, *items = node.children
        return s.GroupDef(self.word(name), tuple(self.endpoint_item(i, False) for i in items),
                          self.span(node))

    def endpoint_item(self, node: Tree | Token, negated: bool) -> s.Endpoint:
        if isinstance(node, Token):
            kind = {"ANY": "any", "FIREWALL": "firewall"}[node.type]
            return s.Endpoint(kind, str(node), negated, self.span(node))
        kind = {"name_ref": "name", "vip_ref": "vip", "address": "address",
                "range_lit": "range"}[node.data]
        text = str(node.children[0])
        if kind == "vip":
            text = text[: -len(".vip")]
        return s.Endpoint(kind, text, negated, self.span(node))

    def service_ref(self, node: Tree) -> s.ServiceRef:
        kind = "spec" if node.data == "svc_spec" else "name"
        return s.ServiceRef(kind, str(node.children[0]), self.span(node))

    def _service_def(self, node: Tree) -> s.ServiceDef:
        name, *rest = node.children
        helper = None
        items = []
        for child in rest:
            if child.data == "helper":
                helper = self.word(child.children[0])
            else:
                items.append(self.service_ref(child))
        return s.ServiceDef(self.word(name), tuple(items), helper, self.span(node))

    def option(self, node: Tree) -> s.Option:
        key = node.data.replace("_", "-")
        value = self.word(node.children[0]) if node.children else None
        return s.Option(key, value, self.span(node))

    def _cluster(self, node: Tree) -> s.ClusterDecl:
        name, *items = node.children
        vrrp: list[s.Option] = []
        sync: list[s.Option] = []
        vrrp_span = sync_span = None
        interfaces: list[s.InterfaceDecl] = []
        members: list[s.MemberDecl] = []
        for item in items:
            if item.data == "vrrp":
                vrrp.extend(self.option(o) for o in item.children)
                vrrp_span = vrrp_span or self.span(item)
            elif item.data == "sync":
                for o in item.children:
                    if o.data == "multicast":
                        sync.append(s.Option("multicast", self.word(o.children[0]), self.span(o)))
                        if len(o.children) > 1:
                            sync.append(s.Option("port", self.word(o.children[1]),
                                                 self.span(o.children[1])))
                    else:
                        sync.append(self.option(o))
                sync_span = sync_span or self.span(item)
            elif item.data == "interface":
                interfaces.append(self.interface(item))
            else:
                members.append(self.member(item))
        return s.ClusterDecl(self.word(name), tuple(vrrp), vrrp_span, tuple(sync), sync_span,
                             tuple(interfaces), tuple(members), self.span(node))

    def interface(self, node: Tree) -> s.InterfaceDecl:
        name, *opts = node.children
        vips: list[s.Word] = []
        vrid = None
        for o in opts:
            if o.data == "vips":
                vips.extend(self.word(a) for a in o.children)
            else:
                vrid = self.word(o.children[0])
        return s.InterfaceDecl(self.word(name), tuple(vips), vrid, self.span(node))

    def member(self, node: Tree) -> s.MemberDecl:
        name, *rest = node.children
        options = [self.option(c) for c in rest if c.data != "member_link"]
        links = [
            s.MemberLink(self.word(c.children[0]), self.word(c.children[1]),
                         tuple(self.word(a) for a in c.children[2:]), self.span(c))
            for c in rest if c.data == "member_link"
        ]
        return s.MemberDecl(self.word(name), tuple(options), tuple(links), self.span(node))

    def endpoints(self, node: Tree) -> tuple[s.Endpoint, ...]:
        out = []
        for ep in node.children:
            negated = bool(ep.children) and isinstance(ep.children[0], Token) \
                and ep.children[0].type == "NEGATE"
            target = ep.children[1] if negated else ep.children[0]
            out.append(self.endpoint_item(target, negated))
        return tuple(out)

    def rule(self, node: Tree) -> s.RuleDecl:
        action, src, dst, *rest = node.children
        options: list[s.Option] = []
        services: list[s.ServiceRef] = []
        target = None
        for child in rest:
            if child.data == "opt_service":
                services.extend(self.service_ref(c) for c in child.children)
                options.append(s.Option("service", None, self.span(child)))
            elif child.data == "opt_log":
                value = self.word(child.children[1]) if len(child.children) > 1 else None
                options.append(s.Option("log", value, self.span(child)))
            elif child.data == "nat_target":
                target = self.nat_target(child)
            else:
                key = child.data.removeprefix("opt_")
                options.append(s.Option(key, self.word(child.children[0]), self.span(child)))
        return s.RuleDecl(self.word(action), self.endpoints(src), self.endpoints(dst),
                          tuple(options), tuple(services), target, self.span(node))

    def nat_target(self, node: Tree) -> s.NatTargetDecl:
        what, *port = node.children
        if what.data == "bracket_address":
            what = what.children[0]
        kind = {"name_ref": "name", "vip_ref": "vip", "address": "address"}[what.data]
        text = str(what.children[0])
        if kind == "vip":
            text = text[: -len(".vip")]
        return s.NatTargetDecl(kind, text, self.word(port[0]) if port else None, self.span(node))

    def _block(self, node: Tree, kind: str) -> s.BlockDecl:
        name, *rules = node.children
        return s.BlockDecl(kind, self.word(name), tuple(self.rule(r) for r in rules),
                           self.span(node))

    def _policy(self, node: Tree) -> s.BlockDecl:
        return self._block(node, "policy")

    def _nat(self, node: Tree) -> s.BlockDecl:
        return self._block(node, "nat")

    def _expect(self, node: Tree) -> s.BlockDecl:
        name, *items = node.children
        rules = []
        for item in items:
            verdict, src, dst, *rest = item.children
            services: list[s.ServiceRef] = []
            options: list[s.Option] = []
            for child in rest:
                if isinstance(child, Token):
                    options.append(s.Option("in", self.word(child), self.span(child)))
                else:
                    services.append(self.service_ref(child))
            rules.append(s.RuleDecl(self.word(verdict), self.endpoints(src), self.endpoints(dst),
                                    tuple(options), tuple(services), None, self.span(item)))
        return s.BlockDecl("expect", self.word(name), tuple(rules), self.span(node))
