"""fwc.model.records.dataclass builds every record of the package exactly as
`dataclasses.dataclass` would (issue 12: a cheaper start-up, the same classes).

Each module-level dataclass of the package is built a second time, from its own source
(the class statement alone, in a copy of its module's namespace), by the standard
builder; the two classes must agree on fields, parameters, signature, docstring,
methods made, and on what their instances do: construction, repr, ==, hash values,
immutability, dataclasses.replace/asdict, copy and pickle.
"""

from __future__ import annotations

import ast
import copy
import dataclasses
import importlib
import inspect
import pickle
import pkgutil
from pathlib import Path
from typing import Any

import pytest

import fwc
from fwc.model.records import dataclass

PACKAGE = Path(fwc.__file__).parent


def _module_names() -> list[str]:
    return sorted(m.name for m in pkgutil.walk_packages(fwc.__path__, "fwc.")
                  if not m.name.endswith("__main__"))


def _is_dataclass_decorator(node: ast.expr) -> bool:
    target = node.func if isinstance(node, ast.Call) else node
    return (isinstance(target, ast.Name) and target.id == "dataclass") or \
        (isinstance(target, ast.Attribute) and target.attr == "dataclass")


def _twins(name: str) -> list[tuple[type, type]]:
    """(the package's class, the standard builder's) for each module-level dataclass of
    module NAME, in source order."""
    module = importlib.import_module(name)
    path = Path(module.__file__ or "")
    tree = ast.parse(path.read_text(encoding="utf-8"))
    namespace = dict(vars(module))  # the class statements run here, not in the module
    namespace["dataclass"] = dataclasses.dataclass
    pairs: list[tuple[type, type]] = []
    for node in tree.body:
        if not isinstance(node, ast.ClassDef) \
                or not any(_is_dataclass_decorator(d) for d in node.decorator_list):
            continue
        node.decorator_list = [d for d in node.decorator_list if _is_dataclass_decorator(d)]
        code = compile(ast.Module(body=[node], type_ignores=[]), str(path), "exec")
        exec(code, namespace)  # noqa: S102 - the package's own source
        pairs.append((getattr(module, node.name), namespace[node.name]))
    return pairs


ALL_TWINS = [pair for name in _module_names() for pair in _twins(name)]


FOUNDATION = ("fwc.diagnostics", "fwc.cache", "fwc.parallel", "fwc.protocols", "fwc.text")


def _standard(cls: type) -> bool:
    """Whether CLS's generated `__init__` comes from the standard builder."""
    init = cls.__init__
    return init.__code__.co_filename == "<string>" and "_FACTORY" not in init.__globals__


def test_the_package_declares_its_records_with_the_cheap_builder() -> None:
    """Every module outside the foundation (which may not import fwc.model) uses it."""
    assert len(ALL_TWINS) > 150
    standard = [f"{ours.__module__}.{ours.__qualname__}" for ours, _ in ALL_TWINS
                if _standard(ours)]
    assert standard and all(name.startswith(FOUNDATION) for name in standard), standard
    assert all(_standard(theirs) for _, theirs in ALL_TWINS
               if theirs.__init__.__code__.co_filename == "<string>")


def _field_facts(cls: type) -> list[tuple[Any, ...]]:
    facts = []
    for f in dataclasses.fields(cls):
        factory = f.default_factory
        made = getattr(factory, "__qualname__", factory)  # the same function (or a twin)
        facts.append((f.name, f.type, repr(f.default), made, f.init, f.repr, f.hash, f.compare,
                      f.kw_only, dict(f.metadata)))
    return facts


_METHODS = ("__init__", "__repr__", "__eq__", "__hash__", "__setattr__", "__delattr__",
            "__getstate__", "__setstate__", "__post_init__", "__match_args__",
            "__slots__", "__lt__", "__le__", "__gt__", "__ge__")


@pytest.mark.parametrize(("ours", "theirs"), ALL_TWINS,
                         ids=[f"{o.__module__}.{o.__qualname__}" for o, _ in ALL_TWINS])
def test_a_record_is_its_dataclass(ours: type, theirs: type) -> None:
    assert _field_facts(ours) == _field_facts(theirs)
    assert repr(ours.__dataclass_params__) == repr(theirs.__dataclass_params__)
    assert str(inspect.signature(ours)) == str(inspect.signature(theirs))
    assert ours.__doc__ == theirs.__doc__
    assert ours.__qualname__ == theirs.__qualname__
    # every attribute the standard builder of this Python adds (3.13's __replace__ ...);
    # __slotnames__ is copyreg's cache, set on a class whose instance was copied
    assert set(vars(ours)) - {"__slotnames__"} == set(vars(theirs)) - {"__slotnames__"}
    for name in _METHODS:  # made (or not) alike; None (unhashable) alike
        assert (name in vars(ours)) == (name in vars(theirs)), name
        if name in vars(theirs) and not callable(vars(theirs)[name]):
            assert vars(ours)[name] == vars(theirs)[name], name
    assert (ours.__hash__ is None) == (theirs.__hash__ is None)
    _same_instances(ours, theirs)


def _arguments(cls: type) -> dict[str, Any]:
    """Made-up values for every required field (records do not check their types)."""
    return {f.name: f"{f.name}-value" for f in dataclasses.fields(cls)
            if f.init and f.default is dataclasses.MISSING
            and f.default_factory is dataclasses.MISSING}


def _build(cls: type, arguments: dict[str, Any]) -> tuple[Any, BaseException | None]:
    try:
        return cls(**arguments), None
    except Exception as exc:  # noqa: BLE001 - a __post_init__ refusing made-up values
        return None, exc


def _same_instances(ours: type, theirs: type) -> None:
    arguments = _arguments(ours)
    mine, my_error = _build(ours, arguments)
    other, other_error = _build(theirs, arguments)
    assert type(my_error) is type(other_error)
    if mine is None:
        return
    # the same values, also where a default factory reads the clock
    values = {f.name: getattr(mine, f.name) for f in dataclasses.fields(ours) if f.init}
    other = theirs(**values)
    assert repr(mine) == repr(other)
    twin = ours(**values)
    assert mine == twin
    assert (mine != twin) is False
    own_eq = theirs.__eq__.__code__.co_filename != "<string>"  # the class body's
    assert (mine == other) == (other == mine) == (own_eq and mine == twin)
    params = ours.__dataclass_params__
    if ours.__hash__ is not None:  # the same tuple of the same values (or both refuse)
        assert _outcome(hash, mine) == _outcome(hash, twin) == _outcome(hash, other)
    if arguments:
        name = next(iter(arguments))
        changed = dataclasses.replace(mine, **{name: "changed"})
        compared = next(f.compare for f in dataclasses.fields(ours) if f.name == name)
        assert own_eq or (changed == mine) is not compared
        assert repr(changed) == repr(dataclasses.replace(other, **{name: "changed"}))
    assert _outcome(dataclasses.asdict, mine) == _outcome(dataclasses.asdict, other)
    assert _outcome(dataclasses.astuple, mine) == _outcome(dataclasses.astuple, other)
    if params.frozen:
        for f in dataclasses.fields(ours):
            with pytest.raises(dataclasses.FrozenInstanceError) as mine_raised:
                setattr(mine, f.name, 1)
            with pytest.raises(dataclasses.FrozenInstanceError) as other_raised:
                setattr(other, f.name, 1)
            assert str(mine_raised.value) == str(other_raised.value)
            with pytest.raises(dataclasses.FrozenInstanceError):
                delattr(mine, f.name)
        with pytest.raises((AttributeError, TypeError)):
            mine.not_a_field = 1  # type: ignore[attr-defined]
        with pytest.raises((AttributeError, TypeError)):
            other.not_a_field = 1  # type: ignore[attr-defined]
    for duplicate in (copy.copy, copy.deepcopy):
        made, made_other = _outcome(duplicate, mine), _outcome(duplicate, other)
        assert made[0] == made_other[0]
        assert made[0] == "raised" or (made[1] == mine) == (made_other[1] == other)
    if ours.__qualname__ == ours.__name__ and _picklable(mine):
        assert pickle.loads(pickle.dumps(mine)) == mine  # noqa: S301 - our own bytes


def _outcome(function: Any, value: Any) -> tuple[str, Any]:
    """FUNCTION(VALUE), or the type of what it raised."""
    try:
        return "value", function(value)
    except Exception as exc:  # noqa: BLE001 - compared, not hidden
        return "raised", type(exc)


def _picklable(value: Any) -> bool:
    try:
        pickle.dumps(value)
    except (pickle.PicklingError, TypeError, AttributeError):
        return False
    return True


# -- the builder's own cases, beyond what the package declares today ----------------------

SOURCE = '''
from __future__ import annotations
from dataclasses import field

@dataclass(frozen=True, slots=True)
class Base:
    a: int
    b: str = "b"
    c: tuple[int, ...] = field(default_factory=tuple, kw_only=True)

@dataclass(frozen=True, slots=True)
class Derived(Base):
    d: list[int] = field(default_factory=list, compare=False)
    e: int = field(default=5, init=False, repr=False)

@dataclass(frozen=True)
class Loose:
    a: int
    b: int = field(default=0, hash=False)

    def __post_init__(self) -> None:
        if self.a < 0:
            raise ValueError("negative")

@dataclass(slots=True)
class Mutable:
    a: int
    b: list[int] = field(default_factory=list)

@dataclass(frozen=True)
class OwnHash:
    a: int

    def __hash__(self) -> int:
        return 7

@dataclass(frozen=True, slots=True)
class OwnEq:
    a: int

    def __eq__(self, other: object) -> bool:
        return True

@dataclass(frozen=True, order=True)
class Ordered:
    a: int

@dataclass
class Plain:
    """Documented."""
    a: int = 0
'''


def _build_source(builder: Any) -> dict[str, Any]:
    namespace: dict[str, Any] = {"__name__": __name__, "dataclass": builder}
    exec(compile(SOURCE, "<records>", "exec"), namespace)  # noqa: S102 - the text above
    return namespace


@pytest.mark.parametrize("name", ["Base", "Derived", "Loose", "Mutable", "OwnHash", "OwnEq",
                                  "Ordered", "Plain"])
def test_the_builder_on_its_own_cases(name: str) -> None:
    ours, theirs = _build_source(dataclass)[name], _build_source(dataclasses.dataclass)[name]
    assert _field_facts(ours) == _field_facts(theirs)
    assert repr(ours.__dataclass_params__) == repr(theirs.__dataclass_params__)
    assert str(inspect.signature(ours)) == str(inspect.signature(theirs))
    assert ours.__doc__ == theirs.__doc__
    for method in _METHODS:
        assert (method in vars(ours)) == (method in vars(theirs)), method
    assert (ours.__hash__ is None) == (theirs.__hash__ is None)
    _same_instances(ours, theirs)


def test_what_the_builder_reproduces_behaves_as_the_dataclass() -> None:
    ours = _build_source(dataclass)
    derived = ours["Derived"](1, c=(2,))
    assert (derived.a, derived.b, derived.c, derived.d, derived.e) == (1, "b", (2,), [], 5)
    assert derived == ours["Derived"](1, c=(2,), d=[9])  # d is not compared
    assert repr(derived) == "Derived(a=1, b='b', c=(2,), d=[])"
    with pytest.raises(ValueError, match="negative"):
        ours["Loose"](-1)
    assert hash(ours["Loose"](1, 2)) == hash(ours["Loose"](1, 3))  # b not hashed
    mutable = ours["Mutable"](1)
    mutable.a = 2
    assert mutable == ours["Mutable"](2) and ours["Mutable"].__hash__ is None
    assert hash(ours["OwnHash"](1)) == 7
    assert ours["OwnEq"](1) == ours["OwnEq"](2)
    assert ours["Ordered"](1) < ours["Ordered"](2)  # (handed to the standard builder)
    with pytest.raises(TypeError, match="cannot inherit frozen dataclass from a non"):
        dataclass(frozen=True)(type("Frozen", (ours["Mutable"],), {"__module__": __name__}))
    with pytest.raises(TypeError, match="cannot inherit non-frozen dataclass from a froz"):
        dataclass(type("Thawed", (ours["Base"],), {"__module__": __name__}))
    with pytest.raises(TypeError, match="non-default argument"):
        dataclass(frozen=True, slots=True)(type("Bad", (), {
            "__annotations__": {"a": "int", "b": "int"}, "a": 1, "__module__": __name__}))


class _Odd:
    """A field value whose `==` answers something other than a bool."""

    def __eq__(self, other: object) -> Any:
        return "odd"

    __hash__ = object.__hash__


def test_equality_is_the_dataclass_s_of_this_python() -> None:
    # 3.13 changed the standard __eq__ (identity first, field by field): a shared NaN
    # and a non-bool `==` tell the two forms apart
    def built(builder: Any) -> type:
        @builder(frozen=True, slots=True)
        class Point:
            x: Any
            y: Any = 0

        return Point

    ours, theirs = built(dataclass), built(dataclasses.dataclass)
    nan, odd = float("nan"), _Odd()
    for left, right in (((nan,), (nan,)), ((odd, 1), (odd, 1)), ((1, odd), (1, odd)),
                        ((1, 2), (1, 3)), ((1, 2), (1, 2))):
        assert (ours(*left) == ours(*right)) == (theirs(*left) == theirs(*right)), left
        same_ours, same_theirs = ours(*left), theirs(*left)
        assert (same_ours == same_ours) == (same_theirs == same_theirs), left


WIDE = '''
from __future__ import annotations
from dataclasses import field

@dataclass(frozen=True, slots=True)
class Wide:
    a: int
    b: int
    c: int
    d: int
    e: int
    f: int
    g: int
    h: int = 8
    i: tuple[int, ...] = field(default_factory=tuple, kw_only=True)

@dataclass(frozen=True, slots=True)
class Wider(Wide):
    j: str = "j"
    k: list[int] = field(default_factory=list, compare=False)

    def __post_init__(self) -> None:
        if self.a < 0:
            raise ValueError("negative")

@dataclass(frozen=True, slots=True)
class Narrow(Wide):
    a: bool  # re-declared, no slot of its own (as FilterRule.action)

    def __post_init__(self) -> None:
        if self.b < 0:
            raise ValueError("negative")

class Plain:
    pass

@dataclass(frozen=True, slots=True)
class OnADict(Plain):
    a: int
    b: int
    c: int
    d: int
    e: int
    f: int
    g: int
    h: int
'''


def test_a_wide_record_is_filled_as_its_twin_and_is_still_its_dataclass() -> None:
    from fwc.model import records

    ns: dict[str, Any] = {"__name__": __name__, "dataclass": dataclass}
    exec(compile(WIDE, "<wide>", "exec"), ns)  # noqa: S102 - the text above
    std: dict[str, Any] = {"__name__": __name__, "dataclass": dataclasses.dataclass}
    exec(compile(WIDE, "<wide>", "exec"), std)  # noqa: S102 - the text above
    wide, wider, narrow = ns["Wide"], ns["Wider"], ns["Narrow"]
    assert records.TWIN_FIELDS <= 9
    assert "_twin" in wide.__init__.__code__.co_names
    assert "_twin" in narrow.__init__.__code__.co_names
    # Python compares the layouts one class deep: slots added at two levels, or a base
    # with a __dict__, and the fields go through the descriptors.
    assert "_twin" not in wider.__init__.__code__.co_names
    assert "_twin" not in ns["OnADict"].__init__.__code__.co_names
    for name in ("Wide", "Wider", "Narrow", "OnADict"):
        _same_instances(ns[name], std[name])
        assert str(inspect.signature(ns[name])) == str(inspect.signature(std[name]))
    one = wider(1, 2, 3, 4, 5, 6, 7, i=(9,), k=[1])
    assert type(one) is wider
    assert (one.a, one.h, one.i, one.j, one.k) == (1, 8, (9,), "j", [1])
    thin = narrow(True, 2, 3, 4, 5, 6, 7, i=(9,))
    assert type(thin) is narrow and (thin.a, thin.g, thin.h, thin.i) == (True, 7, 8, (9,))
    assert repr(thin) == repr(std["Narrow"](True, 2, 3, 4, 5, 6, 7, i=(9,)))
    assert hash(thin) == hash(std["Narrow"](True, 2, 3, 4, 5, 6, 7, i=(9,)))
    with pytest.raises(ValueError, match="negative"):
        narrow(True, -2, 3, 4, 5, 6, 7)  # __post_init__ sees the stored fields
    with pytest.raises(dataclasses.FrozenInstanceError):
        thin.b = 3  # type: ignore[misc]
    assert one == wider(1, 2, 3, 4, 5, 6, 7, i=(9,), k=[2])  # k is not compared
    assert repr(one) == repr(std["Wider"](1, 2, 3, 4, 5, 6, 7, i=(9,), k=[1]))
    assert hash(one) == hash(std["Wider"](1, 2, 3, 4, 5, 6, 7, i=(9,)))
    with pytest.raises(dataclasses.FrozenInstanceError):
        one.a = 2  # type: ignore[misc]
    with pytest.raises(ValueError, match="negative"):
        wider(-1, 2, 3, 4, 5, 6, 7)  # __post_init__ sees the stored fields
    # A subclass that is no dataclass is filled through the slot descriptors: it stays
    # an instance of itself.
    sub = type("Sub", (wide,), {"__slots__": (), "__module__": __name__})
    got = sub(1, 2, 3, 4, 5, 6, 7)
    assert type(got) is sub and got.g == 7 and got.i == ()
    assert copy.copy(one) == one and copy.deepcopy(thin) == thin
    assert dataclasses.replace(one, a=5).a == 5 and type(dataclasses.replace(one, a=5)) is wider


def test_a_maker_builds_what_the_class_builds() -> None:
    from fwc import model as m
    from fwc.diagnostics import OptionSpans, Span
    from fwc.model.addresses import AddressSet
    from fwc.model.records import maker
    from fwc.model.vocabulary import FilterAction

    span = Span("t.fw", 1, 2, 1, 5)
    item = maker(m.EndpointItem)("object", "a", AddressSet(((1, 2),), ()), False, "a")
    assert type(item) is m.EndpointItem
    assert item == m.EndpointItem("object", "a", AddressSet(((1, 2),), ()), False, "a")
    assert repr(item) == repr(m.EndpointItem("object", "a", AddressSet(((1, 2),), ()),
                                             False, "a"))
    with pytest.raises(dataclasses.FrozenInstanceError):
        item.label = "b"  # type: ignore[misc]
    side = maker(m.Endpoint)((item,))
    assert type(side) is m.Endpoint and side == m.Endpoint((item,))
    assert side.addresses == AddressSet(((1, 2),), ())  # its cached properties work
    with pytest.raises(dataclasses.FrozenInstanceError):
        side.items = ()  # type: ignore[misc]
    values = (3, FilterAction.DROP, side, side, (), ("s",), "in", None, True, "p", None, span,
              m.LogOptions(level="info"), None, 4, None, None, True,
              OptionSpans.of([("in", span)]))
    rule = maker(m.FilterRule)(*values)
    ordinary = m.FilterRule(*values[:12], log_options=values[12], limit=None, connlimit=4,
                            syn_limit=None, reject_with=None, notrack=True,
                            option_spans=values[18])
    assert type(rule) is m.FilterRule and rule == ordinary and hash(rule) == hash(ordinary)
    assert repr(rule) == repr(ordinary)
    assert [getattr(rule, f.name) for f in dataclasses.fields(rule)] == list(values)
    # what it cannot build without __init__ it builds through the class
    ns: dict[str, Any] = {"__name__": __name__, "dataclass": dataclass}
    exec(compile(WIDE, "<wide>", "exec"), ns)  # noqa: S102 - the text above
    with pytest.raises(ValueError, match="negative"):
        maker(ns["Narrow"])(True, -2, 3, 4, 5, 6, 7, 8, ())  # its __post_init__ ran
    wider = maker(ns["Wider"])(1, 2, 3, 4, 5, 6, 7, 8, (9,), "x", [1])
    assert wider == ns["Wider"](1, 2, 3, 4, 5, 6, 7, 8, i=(9,), j="x")


def test_a_replacer_makes_what_dataclasses_replace_makes() -> None:
    """`replacer(cls, *fields)` copies a record with those fields changed, as
    `dataclasses.replace` does: the same `__init__` and `__post_init__` run, keyword-only
    fields pass by keyword, a field left out of `__init__` takes its default."""
    from fwc.backend.lower.ruleset import FilterRule, Match, Origin
    from fwc.model import PortRange
    from fwc.model.records import replacer

    @dataclass(frozen=True, slots=True, kw_only=False)
    class Checked:
        a: int
        b: str = "x"
        c: tuple[int, ...] = dataclasses.field(default=(), kw_only=True)
        scratch: int = dataclasses.field(default=-1, init=False, compare=False)

        def __post_init__(self) -> None:
            if self.a < 0:
                raise ValueError("a")

    record = Checked(1, "y", c=(2,))
    for fields, values in ((("a",), (5,)), (("b", "c"), ("z", (3, 4))), (("c",), ((),))):
        made = replacer(Checked, *fields)(record, *values)
        want = dataclasses.replace(record, **dict(zip(fields, values, strict=True)))
        assert made == want and type(made) is type(want) and made.scratch == -1
    with pytest.raises(ValueError, match="a"):
        replacer(Checked, "a")(record, -1)
    with pytest.raises(TypeError):
        replacer(Checked, "scratch")
    with pytest.raises(TypeError):
        replacer(Checked, "a", "a")
    rule = FilterRule(Match(protocol=6, dports=(PortRange(1, 5),)), "x", Origin("a", "b"))
    clipped = replacer(FilterRule, "match")(
        rule, replacer(Match, "dports")(rule.match, (PortRange(2, 3),)))
    assert clipped == dataclasses.replace(rule, match=dataclasses.replace(
        rule.match, dports=(PortRange(2, 3),)))
