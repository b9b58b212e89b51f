"""The most numerous records' `__init__` (fwc.model.records.dataclass sets each slot
through its descriptor): the same construction as the dataclass's own."""

from __future__ import annotations

import dataclasses
import inspect

import pytest

from fwc import model as m
from fwc.frontend import syntax as s

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
def test_init_sets_every_field_as_the_dataclass_does(cls: type) -> None:
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

