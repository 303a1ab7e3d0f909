"""``NamedTuple`` and ``Protocol`` for netinit's classes, without importing ``typing`` when netinit runs.

netinit's run time is every pod's start-up time, and ``typing`` is the most expensive import of its apply path:
with the ``re``, ``functools`` and ``contextlib`` it pulls in it took longer than the rest of netinit's imports
together, and ``typing.NamedTuple`` compiles every field's annotation into a ``ForwardRef`` (about 6x the cost of
``collections.namedtuple`` for the same record). The type checker sees ``typing``'s own classes (the
``TYPE_CHECKING`` branch); at run time a record is the class ``typing.NamedTuple`` makes - a tuple subclass with
the fields as C accessors, ``_make``, ``_replace``, ``_asdict``, the class body's defaults, methods and docstring -
built without importing ``collections`` (~2 ms) and without ``namedtuple``'s ``eval`` of a generated ``__new__``
(a compile per class: a quarter of netinit's own import time). The price: keyword construction goes through one
generic ``__new__`` (about 2 us a record, against 1 us). A protocol is a plain base class (netinit never checks
one with ``isinstance``). ``tests/unit/netinit/test_typing_lite.py`` holds both to ``typing``'s behaviour.

On the apply path, names that only annotations use are imported under ``if TYPE_CHECKING:``, with
``TYPE_CHECKING = False`` defined in the module (mypy honours the name). The debugging commands
(``netinit.debug``) import ``typing`` freely: they are not on any pod's start-up path.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import NamedTuple as NamedTuple
    from typing import Protocol as Protocol
else:
    from _collections import _tuplegetter  # CPython's C field accessor, what collections.namedtuple uses

    # What typing.NamedTuple refuses in a class body, or takes for itself.
    _PROHIBITED = frozenset(
        {"__new__", "__init__", "__slots__", "__getnewargs__", "_fields", "_field_defaults", "_make", "_replace"}
        | {"_asdict", "_source"}
    )
    _SPECIAL = frozenset({"__module__", "__name__", "__annotations__", "__qualname__", "__doc__"})
    _MISSING = object()

    def _record(name, fields, defaults, module):
        """The class ``collections.namedtuple(name, fields, defaults=defaults)`` makes, without its ``eval`` of a
        generated ``__new__`` (a compile per record class) and without importing ``collections``."""
        n = len(fields)
        index = {f: i for i, f in enumerate(fields)}
        fill = (_MISSING,) * (n - len(defaults)) + tuple(defaults)
        new_tuple = tuple.__new__

        def __new__(cls, *args, **kwargs):
            if len(args) == n and not kwargs:
                return new_tuple(cls, args)
            if len(args) > n:
                raise TypeError(f"{name}() takes {n} positional arguments but {len(args)} were given")
            values = [*args, *fill[len(args) :]]
            for key, value in kwargs.items():
                i = index.get(key)
                if i is None:
                    raise TypeError(f"{name}() got an unexpected keyword argument {key!r}")
                if i < len(args):
                    raise TypeError(f"{name}() got multiple values for argument {key!r}")
                values[i] = value
            if _MISSING in values:
                missing = [f for f, v in zip(fields, values, strict=True) if v is _MISSING]
                raise TypeError(f"{name}() missing required arguments: {', '.join(map(repr, missing))}")
            return new_tuple(cls, values)

        def _make(cls, iterable):
            result = new_tuple(cls, iterable)
            if len(result) != n:
                raise TypeError(f"Expected {n} arguments, got {len(result)}")
            return result

        def _replace(self, **changes):
            result = self._make([changes.pop(f, v) for f, v in zip(fields, self, strict=True)])
            if changes:
                raise ValueError(f"Got unexpected field names: {list(changes)!r}")
            return result

        def __repr__(self):
            return f"{self.__class__.__name__}({', '.join(f'{f}={v!r}' for f, v in zip(fields, self, strict=True))})"

        def _asdict(self):
            return dict(zip(fields, self, strict=True))

        def __getnewargs__(self):
            return tuple(self)

        ns = {
            "__doc__": f"{name}({', '.join(fields)})",
            "__slots__": (),
            "__module__": module,
            "_fields": fields,
            "_field_defaults": dict(zip(fields[n - len(defaults) :], defaults, strict=True)),
            "__match_args__": fields,
            "__new__": __new__,
            "_make": classmethod(_make),
            "_replace": _replace,
            "__repr__": __repr__,
            "_asdict": _asdict,
            "__getnewargs__": __getnewargs__,
        }
        for i, f in enumerate(fields):
            ns[f] = _tuplegetter(i, f"Alias for field number {i}")
        return type(name, (tuple,), ns)

    class _NamedTupleMeta(type):
        def __new__(mcls, name, bases, ns):
            if not bases:  # the NamedTuple base itself
                return super().__new__(mcls, name, bases, ns)
            fields = tuple(ns.get("__annotations__", {}))
            defaults = [ns[f] for f in fields if f in ns]
            if any(f in ns for f in fields[: len(fields) - len(defaults)]):
                raise TypeError(f"{name}: a field without a default follows one with a default")
            record = _record(name, fields, defaults, ns["__module__"])
            record.__qualname__ = ns.get("__qualname__", name)
            record.__doc__ = ns.get("__doc__", record.__doc__)
            record.__annotations__ = ns.get("__annotations__", {})
            for key, value in ns.items():
                if key in _PROHIBITED:
                    raise AttributeError(f"{name}: cannot overwrite NamedTuple attribute {key}")
                if key not in _SPECIAL and key not in fields:
                    setattr(record, key, value)
            return record

    class NamedTuple(metaclass=_NamedTupleMeta):
        """Base of a record: ``class Rule(NamedTuple): ...`` as with ``typing.NamedTuple``."""

    class Protocol:
        """Base of a structural type; at run time only a name."""

        __slots__ = ()
