"""The lowered model's most built values, built by the records builder (fwc.model.records):
the same fields, defaults, immutability and `replace` as their dataclass."""

from __future__ import annotations

import pytest
from test_model_records import (
    test_init_sets_every_field_as_the_dataclass_does as _same_as_the_dataclass,
)

from fwc.backend.lower import build, ruleset

LOWERED = (ruleset.AddressMatch, ruleset.Match, ruleset.Origin, build.Part, build.SideParts,
           build.RuleLowering)


@pytest.mark.parametrize("cls", LOWERED, ids=lambda c: c.__name__)
def test_lowered_values_build_as_their_dataclass(cls: type) -> None:
    _same_as_the_dataclass(cls)


def test_a_match_is_built_and_compared_as_before() -> None:
    source = ruleset.AddressMatch(("192.0.2.1",))
    match = ruleset.Match(source, protocol=6)
    assert match == ruleset.Match(source=ruleset.AddressMatch(("192.0.2.1",)), protocol=6)
    assert match.destination is ruleset.ANY and match.dports == () and match.limit is None
    assert hash(match) == hash(ruleset.Match(ruleset.AddressMatch(("192.0.2.1",)), protocol=6))
