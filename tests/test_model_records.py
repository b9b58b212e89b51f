"""The most numerous records' `__init__` (fwc.model.records.dataclass sets each slot
through its descriptor; `quick_init`, no longer applied in the package, does the same for
a class the standard builder made): the same construction as the dataclass's own."""

from __future__ import annotations

import dataclasses
import inspect

import pytest

from fwc import model as m
from fwc.frontend import syntax as s
from fwc.model.records import quick_init

QUICK = (m.EndpointItem, m.FilterRule, m.NatRule, s.RuleDecl, s.AddressDef, s.GroupDef)


def _dataclass_signature(cls: type) -> inspect.Signature:
    """The signature dataclasses would give CLS's __init__: from its fields."""
    parameters = []
    # positional fields first, then keyword-only ones, each in field order
    for f in sorted(dataclasses.fields(cls), key=lambda f: f.kw_only):
        kind = inspect.Parameter.KEYWORD_ONLY if f.kw_only \
            else inspect.Parameter.POSITIONAL_OR_KEYWORD
        default = inspect.Parameter.empty if f.default is dataclasses.MISSING else f.default
        parameters.append(inspect.Parameter(f.name, kind, default=default))
    return inspect.Signature(parameters)


@pytest.mark.parametrize("cls", QUICK, ids=lambda c: c.__name__)
def test_quick_init_sets_every_field_as_the_dataclass_does(cls: type) -> None:
    assert cls.__init__.__qualname__ == f"{cls.__qualname__}.__init__"
    signature = inspect.signature(cls)
    assert [(p.name, p.kind, p.default) for p in signature.parameters.values()] == \
        [(p.name, p.kind, p.default) for p in _dataclass_signature(cls).parameters.values()]
    fields = dataclasses.fields(cls)
    values = {f.name: object() for f in fields}
    positional = [values[f.name] for f in fields if not f.kw_only]
    keywords = {f.name: values[f.name] for f in fields if f.kw_only}
    made = cls(*positional, **keywords)
    assert all(getattr(made, name) is value for name, value in values.items())
    # defaults apply when left out, and the value stays immutable
    required = [f for f in fields if f.default is dataclasses.MISSING]
    bare = cls(**{f.name: values[f.name] for f in required})
    for f in fields:
        expected = values[f.name] if f.default is dataclasses.MISSING else f.default
        assert getattr(bare, f.name) is expected
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(made, fields[0].name, None)
    assert dataclasses.replace(made) == made
    with pytest.raises(TypeError):
        cls(*positional, *positional)


def test_quick_init_keeps_the_signature_of_a_standard_dataclass() -> None:
    @dataclasses.dataclass(frozen=True, slots=True)
    class Point:
        x: int
        y: int = 0

    standard = str(inspect.signature(Point))
    quick = quick_init(Point)
    assert str(inspect.signature(quick)) == standard == "(x: 'int', y: 'int' = 0) -> None"
    assert quick(1) == Point(1, 0) and quick(1, y=2).y == 2


def test_quick_init_refuses_what_it_does_not_reproduce() -> None:
    @dataclasses.dataclass(frozen=True)
    class Unslotted:
        a: int

    @dataclasses.dataclass(frozen=True, slots=True)
    class Factory:
        a: tuple = dataclasses.field(default_factory=tuple)

    @dataclasses.dataclass(frozen=True, slots=True)
    class Post:
        a: int

        def __post_init__(self) -> None:
            pass

    for cls in (Unslotted, Factory, Post):
        with pytest.raises(TypeError):
            quick_init(cls)
