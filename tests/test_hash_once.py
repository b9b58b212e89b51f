"""A long address list computes its hash once (fwc.model.records.HashedTuple, issue 12).

The nftables writer's and planner's memos look a group's list up for every rule that
names it (and every record holding it hashes it); a plain tuple hashes all its items
each time. What must hold: the kept
hash is the tuple's own, the two are interchangeable as keys, the items are hashed once,
and the value never travels to another process (a string's hash differs there).
"""

from __future__ import annotations

import copy
import pickle

from fwc.backend.lower.ruleset import AddressMatch
from fwc.backend.render.nftnames import collapsed
from fwc.model.addresses import AddressSet
from fwc.model.records import HASH_ONCE_MIN, HashedTuple, hash_once


class _Counted:
    """An item that counts how often it is hashed."""

    hashed = 0

    def __init__(self, value: int) -> None:
        self.value = value

    def __hash__(self) -> int:
        _Counted.hashed += 1
        return hash(self.value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Counted) and other.value == self.value


def _prefixes(count: int) -> tuple[str, ...]:
    return tuple(f"198.18.{n}.0/24" for n in range(count))


def test_short_tuples_stay_plain_and_long_ones_keep_their_hash() -> None:
    short = _prefixes(HASH_ONCE_MIN - 1)
    assert hash_once(short) is short
    long = _prefixes(HASH_ONCE_MIN)
    kept = hash_once(long)
    assert type(kept) is HashedTuple
    assert kept == long and long == kept
    assert hash(kept) == hash(long) == hash(kept)
    # interchangeable as keys, either way round
    assert {long: "plain"}[kept] == "plain"
    assert {kept: "kept"}[long] == "kept"
    assert repr(kept) == repr(long)


def test_the_items_are_hashed_once() -> None:
    items = HashedTuple(_Counted(n) for n in range(HASH_ONCE_MIN))
    _Counted.hashed = 0
    for _ in range(5):
        hash(items)
    assert _Counted.hashed == HASH_ONCE_MIN
    # each tuple keeps its own value
    others = HashedTuple(_Counted(n) for n in range(1, HASH_ONCE_MIN + 1))
    assert hash(others) == hash(tuple(others)) != hash(items) == hash(tuple(items))
    # a record holding it hashes through it: no item is hashed again
    _Counted.hashed = 0
    hash((items, None))
    assert _Counted.hashed == 0


def test_the_kept_hash_is_never_pickled_or_copied() -> None:
    kept = hash_once(_prefixes(40))
    hash(kept)
    pickled = [pickle.loads(pickle.dumps(kept, protocol))
               for protocol in range(pickle.HIGHEST_PROTOCOL + 1)]
    for other in (*pickled, copy.copy(kept), copy.deepcopy(kept)):
        assert type(other) is HashedTuple and other == kept
        assert "_hash" not in vars(other)  # computed again where it is used
        assert hash(other) == hash(kept)


def test_group_lists_of_the_lowering_and_the_writer_keep_their_hash() -> None:
    many = AddressSet.of(*(f"198.18.{2 * n}.0/24" for n in range(30)))
    cidrs = many.cidr_tuple(4)
    assert type(cidrs) is HashedTuple and len(cidrs) == 30
    assert AddressMatch(cidrs) == AddressMatch(tuple(cidrs))
    assert hash(AddressMatch(cidrs)) == hash(AddressMatch(tuple(cidrs)))
    assert type(collapsed(cidrs)) is HashedTuple
    one = AddressSet.of("198.18.0.0/24").cidr_tuple(4)
    assert type(one) is tuple and type(collapsed(one)) is tuple
