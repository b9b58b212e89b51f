"""The layout is the pipeline (docs/architecture.md): layers point one way (issue 11).

Read from the source with ast, every import counted (module level, inside a
function, under TYPE_CHECKING: each is a dependency between rooms). Fails when
a library module imports fwc.commands or fwc.cli, when a stage imports a stage
it may not (the table below, the same as docs/architecture.md), when modules
or stages import each other in a cycle (a package importing its own
submodules is not one), or when a module keeps state keyed by id().
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterable
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "fwc"
ARCHITECTURE_DOC = PACKAGE.parent / "docs" / "architecture.md"

# The stages in pipeline order; each may import only itself and the stages it names,
# all of them earlier in this order (test_the_table_points_one_way).
FOUNDATION = "foundation"  # fwc, fwc.diagnostics, fwc.protocols, fwc.text, fwc.cache, fwc.parallel
ORDER = ["foundation", "model", "frontend", "backend", "analysis", "checks", "pipeline",
         "importing", "install", "diffing", "lab", "commands", "cli"]
MAY_IMPORT: dict[str, set[str]] = {
    "foundation": set(),
    "model": {"foundation"},
    "frontend": {"foundation", "model"},
    "backend": {"foundation", "model"},
    "analysis": {"foundation", "model", "backend"},
    "checks": {"foundation", "model", "frontend", "backend", "analysis"},
    "pipeline": {"foundation", "model", "frontend", "checks"},
    "importing": {"foundation", "model", "backend", "analysis", "pipeline"},
    "install": {"foundation", "model", "backend"},
    "diffing": {"foundation", "model", "frontend", "backend", "analysis", "pipeline",
                "install"},
    "lab": {"foundation", "model", "frontend", "backend", "analysis", "checks", "pipeline",
            "install"},
    "commands": set(ORDER[:ORDER.index("commands")]),
    "cli": set(ORDER[:ORDER.index("cli")]),
}
FOUNDATION_MODULES = {"fwc", "fwc.diagnostics", "fwc.protocols", "fwc.text", "fwc.cache",
                      "fwc.parallel"}


def module_name(path: Path, root: Path) -> str:
    rel = path.relative_to(root.parent).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def read_modules(root: Path = PACKAGE) -> dict[str, ast.Module]:
    return {module_name(p, root): ast.parse(p.read_text(encoding="utf-8"), str(p))
            for p in sorted(root.rglob("*.py"))}


def imports(trees: dict[str, ast.Module]) -> dict[str, dict[str, int]]:
    """module -> {imported fwc module: first line}, `from P import sub` naming P.sub."""
    out: dict[str, dict[str, int]] = {}
    for name, tree in trees.items():
        found: dict[str, int] = {}
        package = name if _is_package(name, trees) else name.rpartition(".")[0]
        for node in ast.walk(tree):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")
                    anchor = anchor[:len(anchor) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                for alias in node.names:
                    full = f"{base}.{alias.name}"
                    targets.append(full if full in trees else base)
            for target in targets:
                while target and target not in trees:  # `import fwc.x.y` of a name
                    target = target.rpartition(".")[0]
                if target and target != name:
                    found.setdefault(target, node.lineno)
        out[name] = found
    return out


def _is_package(name: str, trees: dict[str, ast.Module]) -> bool:
    return any(other.startswith(name + ".") for other in trees)


def stage_of(module: str) -> str:
    if module in FOUNDATION_MODULES:
        return FOUNDATION
    if module == "fwc.__main__":
        return "cli"
    stage = module.split(".")[1]
    assert stage in MAY_IMPORT, f"{module}: a module outside every stage of the pipeline " \
        "(add it to the table here and to docs/architecture.md)"
    return stage


def layer_breaches(edges: dict[str, dict[str, int]]) -> list[str]:
    out = []
    for module, targets in sorted(edges.items()):
        here = stage_of(module)
        for target, line in sorted(targets.items()):
            there = stage_of(target)
            if there != here and there not in MAY_IMPORT[here]:
                out.append(f"{module}:{line} imports {target}: {here} may not import {there}")
    return out


def library_imports_of_the_front(edges: dict[str, dict[str, int]]) -> list[str]:
    return [f"{module}:{line} imports {target}"
            for module, targets in sorted(edges.items())
            if stage_of(module) not in ("commands", "cli")
            for target, line in sorted(targets.items())
            if target == "fwc.cli" or target == "fwc.commands"
            or target.startswith("fwc.commands.")]


def cycles(edges: dict[str, Iterable[str]]) -> list[tuple[str, ...]]:
    """Strongly connected groups of more than one node (or a node importing itself),
    after dropping the edges of a package to its own submodules."""
    graph = {m: sorted(t for t in targets if not t.startswith(m + "."))
             for m, targets in edges.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[tuple[str, ...]] = []

    def visit(start: str) -> None:  # iterative Tarjan: no recursion limit to meet
        work = [(start, iter(graph.get(start, ())))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(graph.get(child, ()))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1 or node in graph.get(node, ()):
                    found.append(tuple(sorted(component)))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(found)


def stage_edges(edges: dict[str, dict[str, int]]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for module, targets in edges.items():
        here = stage_of(module)
        out.setdefault(here, set()).update(
            stage_of(t) for t in targets if stage_of(t) != here)
    return out


# A container indexed by id(...): d[id(x)], d.get(id(x)), id(x) in d, {id(x): ...}.
def _id_call(node: ast.AST | None) -> bool:
    return (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
            and node.func.id == "id")


def id_keyed_state(tree: ast.Module) -> list[int]:
    """Lines where a container that outlives the call is keyed by id().

    A dict local to one call (built and dropped inside the function) is not state:
    nothing of it survives for a later run to find by a reused id. A module-level or
    class-level container, one declared global/nonlocal, or one on an object is.
    """
    lines: list[int] = []

    def lasting(container: ast.expr, local: set[str], in_function: bool) -> bool:
        if isinstance(container, ast.Name):
            return not in_function or container.id not in local
        return True  # an attribute or item: it lives on some object

    def scan(body: list[ast.stmt], local: set[str], in_function: bool) -> None:
        for statement in body:
            for node in _walk_scope(statement):
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
                    inner = _locals_of(node)
                    body_ = node.body if isinstance(node.body, list) else [
                        ast.Expr(node.body)]
                    scan(body_, inner, True)
                    continue
                if isinstance(node, ast.ClassDef):
                    scan(node.body, set(), False)
                    continue
                container = None
                if isinstance(node, ast.Subscript) and _id_call(node.slice):
                    container = node.value
                elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                      and node.func.attr in ("get", "setdefault", "pop", "add", "discard")
                      and node.args and _id_call(node.args[0])):
                    container = node.func.value
                elif (isinstance(node, ast.Compare) and _id_call(node.left)
                      and isinstance(node.ops[0], ast.In | ast.NotIn)):
                    container = node.comparators[0]
                elif isinstance(node, ast.Assign | ast.AnnAssign) and _keyed_literal(node.value):
                    targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                    if any(lasting(t, local, in_function) for t in targets):
                        lines.append(node.lineno)
                    continue
                if container is not None and lasting(container, local, in_function):
                    lines.append(node.lineno)

    scan(tree.body, set(), False)
    return sorted(set(lines))


def _keyed_literal(value: ast.expr | None) -> bool:
    if isinstance(value, ast.Dict):
        return any(_id_call(k) for k in value.keys)
    if isinstance(value, ast.DictComp):
        return _id_call(value.key)
    if isinstance(value, ast.Set | ast.SetComp):
        elements = value.elts if isinstance(value, ast.Set) else [value.elt]
        return any(_id_call(e) for e in elements)
    return False


def _walk_scope(node: ast.AST) -> Iterable[ast.AST]:
    """Nodes of one scope: nested functions and classes are yielded, not entered."""
    yield node
    if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda | ast.ClassDef):
        return
    for child in ast.iter_child_nodes(node):
        yield from _walk_scope(child)


def _locals_of(function: ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda) -> set[str]:
    declared: set[str] = set()
    assigned = {a.arg for a in ast.walk(function.args) if isinstance(a, ast.arg)}
    body = function.body if isinstance(function.body, list) else [function.body]
    for statement in body:
        for node in _walk_scope(statement):
            if isinstance(node, ast.Global | ast.Nonlocal):
                declared.update(node.names)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                assigned.add(node.id)
    return assigned - declared


# -- the package ------------------------------------------------------------------------

TREES = read_modules()
EDGES = imports(TREES)


def test_the_table_points_one_way():
    assert set(MAY_IMPORT) == set(ORDER)
    for stage, allowed in MAY_IMPORT.items():
        later = [s for s in allowed if ORDER.index(s) >= ORDER.index(stage)]
        assert later == [], f"{stage} may import the later stage(s) {later}"


def test_every_module_belongs_to_a_stage():
    assert len(TREES) > 50
    assert {stage_of(m) for m in TREES} == set(ORDER)


def test_library_code_never_imports_the_commands_or_the_cli():
    assert library_imports_of_the_front(EDGES) == []


def test_no_stage_imports_a_later_stage():
    assert layer_breaches(EDGES) == []


def test_the_stages_import_each_other_without_cycles():
    assert cycles(stage_edges(EDGES)) == []


def test_no_import_cycle_between_modules():
    assert cycles(EDGES) == []


def test_the_lab_points_one_way():
    """runner -> drills/reboot -> running -> results: the drills act on the running lab
    and report in result types, neither of which knows the drills or the runner (the
    cycle drills/reboot <-> runner through TYPE_CHECKING imports is gone, issue 11)."""
    below = {"fwc.lab.results": {"fwc.lab.running", "fwc.lab.drills", "fwc.lab.reboot",
                                 "fwc.lab.runner"},
             "fwc.lab.running": {"fwc.lab.drills", "fwc.lab.reboot", "fwc.lab.runner"},
             "fwc.lab.drills": {"fwc.lab.reboot", "fwc.lab.runner"},
             "fwc.lab.reboot": {"fwc.lab.runner"}}
    for module, forbidden in below.items():
        assert set(EDGES[module]) & forbidden == set(), module
    assert {"fwc.lab.drills", "fwc.lab.reboot", "fwc.lab.running"} <= set(EDGES["fwc.lab.runner"])


def test_no_module_keeps_state_keyed_by_id():
    found = {name: lines for name, tree in TREES.items() if (lines := id_keyed_state(tree))}
    assert found == {}


def test_the_architecture_page_lists_every_stage_and_what_it_may_import():
    text = ARCHITECTURE_DOC.read_text(encoding="utf-8")
    for stage in ORDER:
        match = re.search(rf"^### {re.escape(stage)}\b.*?^May import: (.*?)\.$", text,
                          re.M | re.S)
        assert match, f"docs/architecture.md has no '### {stage}' section with 'May import:'"
        written = {w.strip("` ") for w in match.group(1).replace(" and ", ", ").split(",")}
        expected = MAY_IMPORT[stage] or {"nothing of fwc"}
        if stage in ("commands", "cli"):
            expected = {"every earlier stage"}
        assert written == expected, stage


# -- the checks above are not vacuous: each catches what it is for --------------------

def synthetic(files: dict[str, str]) -> dict[str, ast.Module]:
    return {name: ast.parse(text) for name, text in files.items()}


def test_a_library_module_importing_the_cli_is_caught():
    trees = synthetic({"fwc": "", "fwc.cli": "", "fwc.model": "",
                       "fwc.model.x": "def f():\n    from fwc.cli import main\n"})
    assert library_imports_of_the_front(imports(trees)) == ["fwc.model.x:2 imports fwc.cli"]


def test_a_stage_importing_a_later_one_is_caught():
    trees = synthetic({"fwc": "", "fwc.frontend": "", "fwc.backend": "",
                       "fwc.backend.output": "", "fwc.model": "",
                       "fwc.frontend.resolve": "from fwc.backend import output\n"
                                               "from fwc import model as m\n"})
    assert layer_breaches(imports(trees)) == [
        "fwc.frontend.resolve:1 imports fwc.backend.output: frontend may not import backend"]


def test_cycles_are_caught_but_a_package_importing_its_submodules_is_not_one():
    trees = synthetic({
        "fwc": "", "fwc.lab": "from fwc.lab import a\n",
        "fwc.lab.a": "from fwc.lab import b\nfrom fwc import lab\n",
        "fwc.lab.b": "from typing import TYPE_CHECKING\n"
                     "if TYPE_CHECKING:\n    from fwc.lab.a import A\n"})
    assert cycles(imports(trees)) == [("fwc.lab.a", "fwc.lab.b")]
    trees["fwc.lab.b"] = ast.parse("")
    assert cycles(imports(trees)) == []


def test_id_keyed_state_is_caught_and_a_per_call_table_is_not():
    lasting = ast.parse(
        "_SEEN = {}\n"
        "def f(x):\n    if id(x) in _SEEN:\n        return _SEEN[id(x)]\n"
        "class C:\n    memo = {}\n    def g(self, x):\n        return self.memo.get(id(x))\n"
        "def h(x):\n    global _T\n    _T = {id(x): 1}\n")
    assert id_keyed_state(lasting) == [3, 4, 8, 11]
    per_call = ast.parse(
        "def render(items):\n    seen = {id(i): i for i in items}\n"
        "    return [seen[id(i)] for i in items if id(i) in seen]\n")
    assert id_keyed_state(per_call) == []
