"""Frozen slotted records, built cheaply, with a faster `__init__`.

`dataclass` is a drop-in for `dataclasses.dataclass` (same signature, same classes) that
the package's records are declared with. The standard builder `exec`s a separate piece
of generated source for each of six methods and asks `inspect.signature` for the class's
docstring: 1.3-1.8 ms a class, half the CPU time of importing fwc for `fwc check`
(about 190 records). Here the standard builder only collects the fields and makes the
slots (asked for no methods); `__init__`, `__eq__` and `__hash__` are generated as the
standard builder writes them, in one `exec` per class, `__repr__` and the frozen
`__setattr__`/`__delattr__` are closures, the docstring is formatted from the fields.
A class is handed to the standard builder unchanged when it asks for something this
one does not reproduce (order, unsafe_hash, kw_only=True, weakref_slot, match_args=False,
init/repr/eq=False, InitVar fields, a field named `self`, a frozen class with its own
`__setattr__`, frozen and non-frozen dataclasses mixed in one hierarchy): behaviour is the
dataclass's in every case. tests/test_records.py compares, for every dataclass in the
package, the class built here with the one `dataclasses.dataclass` builds.

The generated `__init__` of a frozen slotted record sets each field through its slot's
descriptor (`object.__setattr__` looks the slot up by name each time: a `FilterRule` of
20 fields took 4.4 us to build instead of about 2); `__eq__` and `__hash__` are the
standard builder's code (the checks hash records a lot: the same tuples, hence the same
hash values and set orders). A frozen slotted record of `TWIN_FIELDS` fields or more is
filled as its twin instead (`_twin`: plain slot stores, then its class back), and
`maker(cls)` builds a record without an `__init__` call for the few made per rule.
"""

from __future__ import annotations

import abc
import dataclasses
import functools
import inspect
import reprlib
import sys
import types
from collections.abc import Callable
from typing import Any, TypeVar, overload

C = TypeVar("C", bound=type)
R = TypeVar("R")


class _Factory:
    """Stands for "use the default factory" in a generated `__init__` signature."""

    def __repr__(self) -> str:
        return "<factory>"  # as the standard builder's marker reads in a signature


_FACTORY = _Factory()


@overload
def dataclass(cls: C, /) -> C: ...
@overload
def dataclass(cls: None = None, /, **options: Any) -> Callable[[C], C]: ...


def dataclass(cls: Any = None, /, **options: Any) -> Any:
    """`dataclasses.dataclass`, cheaper to build (this module's docstring)."""
    if cls is None:
        return lambda c: _build(c, options)
    return _build(cls, options)


# The options built here; any other value goes to the standard builder.
_DEFAULTS = {"init": True, "repr": True, "eq": True, "order": False, "unsafe_hash": False,
             "match_args": True, "kw_only": False, "weakref_slot": False}


def _build(cls: C, options: dict[str, Any]) -> C:
    frozen = bool(options.get("frozen", False))
    slots = bool(options.get("slots", False))
    others = options.keys() - {"frozen", "slots"}
    if (others and (others - _DEFAULTS.keys()
                    or any(options[k] != _DEFAULTS[k] for k in others))) or not _plain(cls):
        return dataclasses.dataclass(cls, **options)  # type: ignore[no-any-return]
    own = cls.__dict__
    if frozen and ("__setattr__" in own or "__delattr__" in own):
        return dataclasses.dataclass(cls, **options)  # type: ignore[no-any-return]  # its TypeError
    documented = bool(own.get("__doc__"))
    if not documented:
        cls.__doc__ = "-"  # spares the standard builder's inspect.signature; set below
    # A subclass of a frozen dataclass must say frozen to the standard builder (which
    # then writes __setattr__/__delattr__ itself); otherwise it makes no method.
    bases = [b.__dataclass_params__ for b in cls.__mro__[1:]
             if "__dataclass_params__" in b.__dict__]
    frozen_base = any(params.frozen for params in bases)
    if bases and frozen != frozen_base:  # the standard builder's TypeError
        return dataclasses.dataclass(cls, **options)  # type: ignore[no-any-return]
    built = None if bases else _simple(cls, slots)
    if built is None:
        built = dataclasses.dataclass(cls, init=False, repr=False, eq=False,
                                      frozen=frozen and frozen_base, slots=slots)
    built.__dataclass_params__ = _params(frozen, slots)
    fields = dataclasses.fields(built)
    _add_methods(built, own, fields, frozen, slots, frozen_base)
    if frozen and slots and not frozen_base:  # (with a frozen base the builder added them)
        if "__getstate__" not in own:
            built.__getstate__ = _getstate
        if "__setstate__" not in own:
            built.__setstate__ = _setstate
    if not documented:
        built.__doc__ = built.__name__ + _signature_text(fields)
    abc.update_abstractmethods(built)
    return built  # type: ignore[no-any-return]


def _simple(cls: type, slots: bool) -> type | None:
    """What `dataclasses.dataclass(CLS, init=False, repr=False, eq=False, slots=SLOTS)`
    makes of a simple record (right under `object`, no dataclass base, every annotation a
    string naming no ClassVar, InitVar or KW_ONLY, defaults that are plain hashable values,
    no `field(...)`, no `__slots__` of its own): its fields, `__match_args__` and, with
    SLOTS, the class made again with them as slots. None for anything else (the standard
    builder makes it, with its checks and errors). The standard builder recognises a
    ClassVar in a string annotation with a regular expression and a module look-up per
    field, and makes every Field through `field()`: about two thirds of building a
    record's class once its methods are made lazily (tests/test_records.py compares both
    builders on every record of the package)."""
    own = cls.__dict__
    if cls.__bases__ != (object,) or "__slots__" in own:
        return None
    fields: dict[str, dataclasses.Field[Any]] = {}
    for name, kind in own.get("__annotations__", {}).items():
        if type(kind) is not str or "ClassVar" in kind or "InitVar" in kind \
                or "KW_ONLY" in kind or name.startswith("__"):
            return None
        default = own.get(name, dataclasses.MISSING)
        if isinstance(default, dataclasses.Field | types.MemberDescriptorType) \
                or default.__class__.__hash__ is None:
            return None  # field(...), or a mutable default (the builder's ValueError)
        made = dataclasses.field(default=default)
        made.name, made.type, made.kw_only = name, kind, False
        made._field_type = dataclasses._FIELD  # type: ignore[attr-defined]  # as _get_field
        fields[name] = made
    if any(isinstance(value, dataclasses.Field) for value in own.values()):
        return None  # a field without an annotation: the builder's TypeError
    cls.__dataclass_fields__ = fields  # type: ignore[attr-defined]
    if "__match_args__" not in own:
        cls.__match_args__ = tuple(fields)  # type: ignore[attr-defined]
    replace = getattr(dataclasses, "_replace", None)
    if replace is not None and "__replace__" not in own:  # 3.13+: `copy.replace`
        cls.__replace__ = replace  # type: ignore[attr-defined]
    if not slots:
        return cls
    made_again = dict(own)
    made_again["__slots__"] = tuple(fields)
    for name in fields:
        made_again.pop(name, None)
    made_again.pop("__dict__", None)
    made_again.pop("__weakref__", None)
    built = type(cls)(cls.__name__, cls.__bases__, made_again)
    built.__qualname__ = cls.__qualname__
    return built


def _plain(cls: type) -> bool:
    """Whether CLS declares only fields this builder makes (no InitVar, none named self)."""
    annotations = cls.__dict__.get("__annotations__", {})
    if "self" in annotations or "__dataclass_self__" in annotations:
        return False
    return not any(isinstance(a, dataclasses.InitVar) or a is dataclasses.InitVar
                   or (isinstance(a, str) and "InitVar" in a) for a in annotations.values())


@functools.cache
def _params(frozen: bool, slots: bool) -> Any:
    """The `__dataclass_params__` the standard builder gives a class of these options
    (a pure function of two flags: computed once each, from an empty class)."""
    return dataclasses.dataclass(type("_", (), {}), frozen=frozen, slots=slots) \
        .__dataclass_params__


def _getstate(self: Any) -> list[Any]:
    """Pickling and copying a frozen slotted record (as the standard builder's)."""
    return [getattr(self, f.name) for f in dataclasses.fields(self)]


def _setstate(self: Any, state: list[Any]) -> None:
    for f, value in zip(dataclasses.fields(self), state):  # noqa: B905 - as the builder
        object.__setattr__(self, f.name, value)


def _signature_text(fields: tuple[dataclasses.Field[Any], ...]) -> str:
    """`(a: 'int', b: 'str' = '', *, c: 'bool' = False)`: the text of the signature of
    the generated `__init__`, as `inspect.signature` prints it."""
    parts: list[str] = []
    star = False
    for f in sorted((f for f in fields if f.init), key=lambda f: f.kw_only):
        if f.kw_only and not star:
            parts.append("*")
            star = True
        text = f"{f.name}: {inspect.formatannotation(f.type)}"
        if f.default_factory is not dataclasses.MISSING:
            text += f" = {_FACTORY!r}"
        elif f.default is not dataclasses.MISSING:
            text += f" = {f.default!r}"
        parts.append(text)
    return f"({', '.join(parts)})"


def _add_methods(cls: type, own: Any, fields: tuple[dataclasses.Field[Any], ...],
                 frozen: bool, slots: bool, frozen_base: bool) -> None:
    """__init__, __eq__ and __hash__ of CLS (the hot ones), generated in one `exec` when
    the class first needs one of them (`_Lazy`); __repr__ and, when frozen, __setattr__
    and __delattr__ as closures: each only where the class body does not define it (as
    the standard builder does)."""
    made: list[str] = []
    if "__init__" not in own:
        _check_order(fields)  # the standard builder's TypeError, when the class is made
        made.append("__init__")
    if "__eq__" not in own:
        made.append("__eq__")
    explicit_hash = "__hash__" in own and not (own["__hash__"] is None and "__eq__" in own)
    if frozen and not explicit_hash:
        made.append("__hash__")
    methods: dict[str, Any] = {}
    if made:
        generate = _Generator(cls, tuple(made), fields, frozen, slots)
        methods.update((name, _Lazy(name, generate)) for name in made)
    if "__repr__" not in own:
        methods["__repr__"] = _repr_method(tuple(f.name for f in fields if f.repr))
    if frozen and not frozen_base:
        methods.update(_frozen_methods(cls, tuple(f.name for f in fields)))
    for name, method in methods.items():
        if not isinstance(method, _Lazy):
            _own(cls, name, method)
        setattr(cls, name, reprlib.recursive_repr()(method) if name == "__repr__" else method)
    if not frozen and not explicit_hash:
        cls.__hash__ = None  # type: ignore[assignment]  # eq without frozen: unhashable


def _own(cls: type, name: str, method: Any) -> None:
    method.__qualname__ = f"{cls.__qualname__}.{name}"
    method.__module__ = cls.__module__


class _Generator:
    """Generates the methods MADE of one class in one `exec` and sets them on it, once.

    Compiling them was about half of building a record's class (~0.4 ms each, a third of
    the package's import time for `fwc compile`), and a run uses a few of the classes it
    imports before the model is built (`fwc check` far from all): a class's methods are
    compiled when the first of them is looked up (an instance made, compared or hashed,
    `cls.__init__` read), from the same source as before, so they are the same methods."""

    __slots__ = ("cls", "made", "fields", "frozen", "slots", "methods")

    def __init__(self, cls: type, made: tuple[str, ...],
                 fields: tuple[dataclasses.Field[Any], ...], frozen: bool, slots: bool) -> None:
        self.cls, self.made, self.fields = cls, made, fields
        self.frozen, self.slots = frozen, slots
        self.methods: dict[str, Any] | None = None

    def __call__(self) -> dict[str, Any]:
        methods = self.methods
        if methods is not None:
            return methods
        cls, fields = self.cls, self.fields
        names: dict[str, Any] = {"_FACTORY": _FACTORY, "_object_setattr": object.__setattr__}
        source: list[str] = []
        if "__init__" in self.made:
            source += _init_source(cls, fields, self.frozen, self.slots, names)
        if "__eq__" in self.made:
            source += _eq_source([f.name for f in fields if f.compare])
        if "__hash__" in self.made:
            hashed = "".join(f"self.{f.name}," for f in fields
                             if (f.compare if f.hash is None else f.hash))
            source += ["def __hash__(self):", f"  return hash(({hashed}))"]
        exec("\n".join(source) + "\n", names)  # noqa: S102 - generated, as the builder's
        methods = {name: names[name] for name in self.made}
        for name, method in methods.items():
            _own(cls, name, method)
            setattr(cls, name, method)
        self.methods = methods
        return methods


class _Lazy:
    """Stands in the class for a method `_Generator` has not made yet: looking it up (on
    the class, or by Python for an instance: `__init__`, `==`, `hash`) makes it first.
    Afterwards the class holds the function itself, and this is never seen again."""

    __slots__ = ("name", "generate")

    def __init__(self, name: str, generate: _Generator) -> None:
        self.name, self.generate = name, generate

    def __get__(self, instance: Any, owner: type | None = None) -> Any:
        method = self.generate()[self.name]
        return method if instance is None else method.__get__(instance, owner)


def _check_order(fields: tuple[dataclasses.Field[Any], ...]) -> None:
    """The standard builder's refusal of a required positional parameter after one with
    a default (raised when the class is made, not when its `__init__` is generated)."""
    seen_default = False
    for f in fields:
        if not f.init or f.kw_only:
            continue
        if f.default is not dataclasses.MISSING \
                or f.default_factory is not dataclasses.MISSING:
            seen_default = True
        elif seen_default:
            raise TypeError(f"non-default argument {f.name!r} follows default argument")


def _repr_method(shown: tuple[str, ...]) -> Callable[[Any], str]:
    """`Name(a=1, b='x')`, the standard builder's `__repr__` (its recursion guard too)."""
    def __repr__(self: Any) -> str:
        return self.__class__.__qualname__ + \
            f"({', '.join(f'{name}={getattr(self, name)!r}' for name in shown)})"
    return __repr__


def _frozen_methods(cls: type, names: tuple[str, ...]) -> dict[str, Callable[..., None]]:
    """The standard builder's `__setattr__` and `__delattr__` of a frozen class."""
    def __setattr__(self: Any, name: str, value: Any) -> None:
        if type(self) is cls or name in names:
            raise dataclasses.FrozenInstanceError(f"cannot assign to field {name!r}")
        super(cls, self).__setattr__(name, value)

    def __delattr__(self: Any, name: str) -> None:
        if type(self) is cls or name in names:
            raise dataclasses.FrozenInstanceError(f"cannot delete field {name!r}")
        super(cls, self).__delattr__(name)
    return {"__setattr__": __setattr__, "__delattr__": __delattr__}


def _eq_source(compared: list[str]) -> list[str]:
    """The standard builder's `__eq__` for this Python: tuples up to 3.12; from 3.13
    identity first, then field by field (a shared NaN, a field whose `==` is not a bool
    compare differently)."""
    if sys.version_info < (3, 13):
        mine = "".join(f"self.{n}," for n in compared)
        theirs = "".join(f"other.{n}," for n in compared)
        return ["def __eq__(self, other):",
                "  if other.__class__ is self.__class__:",
                f"    return ({mine}) == ({theirs})",
                "  return NotImplemented"]
    terms = " and ".join(f"self.{n}==other.{n}" for n in compared) or "True"
    return ["def __eq__(self, other):",
            "  if self is other:",
            "   return True",
            "  if other.__class__ is self.__class__:",
            f"   return {terms}",
            "  return NotImplemented"]


def _init_source(cls: type, fields: tuple[dataclasses.Field[Any], ...], frozen: bool,
                 slots: bool, names: dict[str, Any]) -> list[str]:
    """The generated `__init__`: each field set through its slot's descriptor when CLS is
    frozen and slotted (or as its twin, `_twin`), into the instance's `__dict__` when only
    frozen (through `object.__setattr__` where a data descriptor of the class takes the
    name), else assigned."""
    positional: list[str] = []
    keywords: list[str] = []
    body: list[str] = []
    stores: list[tuple[str, str]] = []  # (field, value) of the descriptor stores in BODY
    annotations: dict[str, Any] = {}
    for f in fields:
        factory = f.default_factory is not dataclasses.MISSING
        if factory:
            names[f"_f_{f.name}"] = f.default_factory
        elif f.default is not dataclasses.MISSING:
            names[f"_d_{f.name}"] = f.default
        if f.init:
            annotations[f.name] = f.type
            parameter = f.name
            if factory:
                parameter += "=_FACTORY"
                value = f"_f_{f.name}() if {f.name} is _FACTORY else {f.name}"
            elif f.default is not dataclasses.MISSING:
                parameter += f"=_d_{f.name}"
                value = f.name
            else:  # (a required one after a default: refused by _check_order)
                value = f.name
            (keywords if f.kw_only else positional).append(parameter)
        elif factory:
            value = f"_f_{f.name}()"
        elif slots and f.default is not dataclasses.MISSING:
            value = f"_d_{f.name}"
        else:
            continue  # read from the class attribute that holds the default
        descriptor = getattr(cls, f.name, None)
        if frozen and slots and isinstance(descriptor, types.MemberDescriptorType):
            names[f"_s_{f.name}"] = descriptor.__set__
            body.append(f"  _s_{f.name}(self, {value})")
            stores.append((f.name, value))
        elif frozen and not slots and not hasattr(type(descriptor), "__set__"):
            # what object.__setattr__ does for a name no data descriptor of the class
            # takes (a default, a cached_property), without calling it
            body.append(f"  self.__dict__[{f.name!r}] = {value}")
        elif frozen:
            body.append(f"  _object_setattr(self, {f.name!r}, {value})")
        else:
            body.append(f"  self.{f.name} = {value}")
    annotations["return"] = None
    names["_init_annotations"] = annotations
    parameters = ", ".join(["self", *positional, *(["*", *keywords] if keywords else [])])
    twin = _twin(cls) if frozen and slots and len(stores) >= TWIN_FIELDS \
        and len(stores) == len(body) else None
    if twin is not None:
        # The instance is a `twin` while its fields are stored (a plain slot store), then
        # CLS again; an instance of a subclass of CLS is filled through the descriptors.
        setters = tuple(names[f"_s_{name}"] for name, _ in stores)

        def fill(self: Any, values: tuple[Any, ...]) -> None:
            for setter, value in zip(setters, values):  # noqa: B905 - as many
                setter(self, value)

        names["_cls"], names["_twin"], names["_fill"] = cls, twin, fill
        body = ["  if self.__class__ is _cls:",
                "    _object_setattr(self, '__class__', _twin)",
                *(f"    self.{name} = {value}" for name, value in stores),
                "    _object_setattr(self, '__class__', _cls)",
                "  else:",
                f"    _fill(self, ({''.join(f'{value}, ' for _, value in stores)}))"]
    if hasattr(cls, "__post_init__"):
        body.append("  self.__post_init__()")
    return [f"def __init__({parameters}):", *(body or ["  pass"]),
            "__init__.__annotations__ = _init_annotations"]


# A frozen slotted record of at least this many fields is filled as its twin (`_twin`):
# a slot descriptor's `__set__` costs about ten plain slot stores, the two class changes
# about two descriptor calls (a FilterRule, 19 fields: 4.5 us -> 2 us to build).
TWIN_FIELDS = 8


def _twin(cls: type) -> type | None:
    """A class of the same instance layout as CLS without its frozen `__setattr__`: an
    instance may change from one to the other by `__class__` assignment. Python compares
    the layouts one class deep, so CLS must have its slots from one class right under
    `object` (a subclass may add none: FilterRule under BaseRule); None otherwise (then
    the fields go through the descriptors). The assignment is tried once here."""
    chain = cls.__mro__[:-1]
    solid = chain[-1]
    slots = solid.__dict__.get("__slots__")
    if slots is None or solid.__bases__ != (object,) or any(
            len(klass.__bases__) != 1 or klass.__dict__.get("__slots__") != ()
            for klass in chain[:-1]):
        return None  # slots at several levels, several bases, or a __dict__
    slots = (slots,) if isinstance(slots, str) else tuple(slots)
    if any(name.startswith("__") for name in slots):
        return None  # __dict__, __weakref__, or a private name (mangled per class)
    twin = type(f"{solid.__name__}Twin", (object,), {"__slots__": slots,
                                                    "__module__": solid.__module__})
    try:
        probe = object.__new__(twin)
        object.__setattr__(probe, "__class__", cls)
        object.__setattr__(probe, "__class__", twin)
    except TypeError:
        return None
    return twin


def maker(cls: type[R]) -> Callable[..., R]:
    """A function that builds a CLS instance from every init field, positionally in field
    order (keyword-only ones too): what `CLS(...)` builds, for the few records made once
    per rule or per endpoint item. A frozen slotted instance is born its twin (`_twin`)
    and changes class once, a frozen one without slots gets its `__dict__` filled: no
    `__init__` call. A class with `__post_init__`, fields left out of `__init__` or a
    layout the twin cannot take gets a function that calls CLS."""
    fields = dataclasses.fields(cls)  # type: ignore[arg-type]
    names = [f.name for f in fields]
    params = cls.__dataclass_params__  # type: ignore[attr-defined]
    slotted = "__slots__" in cls.__dict__
    twin = _twin(cls) if params.frozen and slotted else None
    plain = params.frozen and not slotted and "__dict__" not in names and not any(
        hasattr(type(getattr(cls, n, None)), "__set__") for n in names)
    if hasattr(cls, "__post_init__") or not all(f.init for f in fields) \
            or (twin is None and not plain) or any(n.startswith("_") for n in names):
        keywords = [f.name for f in fields if f.kw_only]
        positional = [n for n in names if n not in keywords]

        def make(*values: Any) -> R:
            given = dict(zip(names, values, strict=True))
            return cls(*(given[n] for n in positional), **{k: given[k] for k in keywords})
        return make
    if twin is not None:
        body = ["  self = _new(_twin)", *(f"  self.{n} = {n}" for n in names),
                "  _set(self, '__class__', _cls)"]
    else:
        body = ["  self = _new(_cls)", "  d = self.__dict__",
                *(f"  d[{n!r}] = {n}" for n in names)]
    source = "\n".join([f"def make({', '.join(names)}):", *body, "  return self"])
    namespace: dict[str, Any] = {"_new": object.__new__, "_twin": twin, "_cls": cls,
                                 "_set": object.__setattr__}
    exec(source + "\n", namespace)  # noqa: S102 - generated from the field names
    made: Callable[..., R] = namespace["make"]
    made.__qualname__ = f"maker({cls.__qualname__})"
    return made


def replacer(cls: type[R], *changed: str) -> Callable[..., R]:
    """A function (record of CLS, *new values of CHANGED) -> what `dataclasses.replace(
    record, **changes)` makes, for a pass that copies many records with a field or two
    changed: `replace` builds a dict of every field and looks the fields up on each
    call; this calls CLS with the record's other init fields, read directly (the same
    generated `__init__` and `__post_init__` run; fields left out of `__init__` take
    their defaults, as with `replace`). It always makes a CLS, whatever the record's
    class: a caller with records of several classes keeps one per class. Not for a
    class with its own `__init__` or with InitVar fields."""
    fields = [f for f in dataclasses.fields(cls) if f.init]  # type: ignore[arg-type]
    names = [f.name for f in fields]
    if set(changed) - set(names) or len(set(changed)) != len(changed):
        raise TypeError(f"{cls.__name__}: {changed} are not distinct init fields")
    value = {n: f"new_{n}" if n in changed else f"record.{n}" for n in names}
    arguments = [value[f.name] if not f.kw_only else f"{f.name}={value[f.name]}"
                 for f in fields]
    source = (f"def replaced(record, {', '.join(f'new_{n}' for n in changed)}):\n"
              f"  return _cls({', '.join(arguments)})\n")
    namespace: dict[str, Any] = {"_cls": cls}
    exec(source, namespace)  # noqa: S102 - generated from the field names
    made: Callable[..., R] = namespace["replaced"]
    made.__qualname__ = f"replacer({cls.__qualname__}, {', '.join(changed)})"
    return made


class HashedTuple(tuple[Any, ...]):
    """A tuple that computes its hash once (`hash_once`).

    A long address list is a dict key many times over per rule: the nftables writer's
    and planner's memos (`Writer.collapsed_memo` and `by_content`, `Shapes.memo` and
    `spans`), and every record holding it (an `AddressMatch`, its `Match`) hashes it as
    part of its own hash: a group of hundreds of prefixes, on every rule naming it. A
    tuple hashes all its items each time; this one keeps the value. It equals, and
    hashes like, the plain tuple of the same items, so the two are interchangeable as
    keys. The value is never pickled or copied (`__reduce__`): a string's hash differs
    between processes, so another process computes its own.
    """

    # (in the instance's __dict__: a subclass of tuple can have no slot of its own)
    _hash: int

    def __hash__(self) -> int:
        try:
            return self._hash
        except AttributeError:
            found = self._hash = tuple.__hash__(self)
            return found

    def __reduce__(self) -> tuple[type[HashedTuple], tuple[tuple[Any, ...]]]:
        return HashedTuple, (tuple(self),)


# From this many items on, a kept hash is cheaper than hashing the items (strings: the
# address lists) at every lookup; shorter tuples stay plain.
HASH_ONCE_MIN = 16


def hash_once(items: tuple[R, ...]) -> tuple[R, ...]:
    """ITEMS as a `HashedTuple` when long enough to gain from it, else as it is."""
    return HashedTuple(items) if len(items) >= HASH_ONCE_MIN else items
