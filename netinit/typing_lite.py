"""``NamedTuple`` and ``Protocol`` for netinit's classes, without importing ``typing`` when netinit runs.

netinit's run time is every pod's start-up time, and ``typing`` is the most expensive import of its apply path:
with the ``re``, ``functools`` and ``contextlib`` it pulls in it took longer than the rest of netinit's imports
together, and ``typing.NamedTuple`` compiles every field's annotation into a ``ForwardRef`` (about 6x the cost of
``collections.namedtuple`` for the same record). The type checker sees ``typing``'s own classes (the
``TYPE_CHECKING`` branch); at run time a record is exactly what ``typing.NamedTuple`` makes, a
``collections.namedtuple`` subclass with the class body's defaults, methods and docstring, and a protocol is a
plain base class (netinit never checks a protocol with ``isinstance``).

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
    import collections

    # What typing.NamedTuple refuses in a class body, or takes for itself.
    _PROHIBITED = frozenset(
        {"__new__", "__init__", "__slots__", "__getnewargs__", "_fields", "_field_defaults", "_make", "_replace"}
        | {"_asdict", "_source"}
    )
    _SPECIAL = frozenset({"__module__", "__name__", "__annotations__", "__qualname__", "__doc__"})

    class _NamedTupleMeta(type):
        def __new__(mcls, name, bases, ns):
            if not bases:  # the NamedTuple base itself
                return super().__new__(mcls, name, bases, ns)
            fields = tuple(ns.get("__annotations__", {}))
            defaults = [ns[f] for f in fields if f in ns]
            if any(f in ns for f in fields[: len(fields) - len(defaults)]):
                raise TypeError(f"{name}: a field without a default follows one with a default")
            record = collections.namedtuple(name, fields, defaults=defaults, module=ns["__module__"])
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
