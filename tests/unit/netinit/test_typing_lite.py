"""``netinit.typing_lite``'s run-time ``NamedTuple`` behaves as ``typing.NamedTuple`` for the same class body."""

from __future__ import annotations

import copy
import pickle
import typing
from typing import Any

import pytest

from netinit import typing_lite
from netinit.core.config import CaptureConfig
from netinit.core.plan import Rule

# The run-time class, whatever mypy is told (it sees typing's NamedTuple through the TYPE_CHECKING branch).
LITE: Any = typing_lite.NamedTuple
REAL: Any = typing.NamedTuple


def _make(base: Any) -> Any:
    class Record(base):  # type: ignore[misc]
        """A record."""

        name: str
        port: int = 80
        tags: tuple[str, ...] = ()

        def label(self) -> str:
            return f"{self.name}:{self.port}"

        @property
        def tagged(self) -> bool:
            return bool(self.tags)

    return Record


def test_same_behaviour_as_typing() -> None:
    lite, real = _make(LITE), _make(REAL)
    for cls in (lite, real):
        r = cls("web")
        with pytest.raises(AttributeError):
            r.port = 1  # immutable
        assert r == ("web", 80, ()) and r.port == 80 and r[0] == "web" and len(r) == 3
        assert r._replace(port=8080).label() == "web:8080" and not r.tagged and cls("a", 1, ("x",)).tagged
        assert cls._fields == ("name", "port", "tags") and cls._field_defaults == {"port": 80, "tags": ()}
        assert cls.__doc__ == "A record." and cls.__name__ == "Record" and cls.__module__ == __name__
        assert cls.__qualname__ == "_make.<locals>.Record"
        assert repr(r) == "Record(name='web', port=80, tags=())" and hash(r) == hash(("web", 80, ()))
        assert r._asdict() == {"name": "web", "port": 80, "tags": ()} and cls._make(["b", 2, ()]).port == 2
        assert list(cls.__annotations__) == ["name", "port", "tags"]
        assert cls(port=1, name="k") == ("k", 1, ()) and cls("k", tags=("t",)) == ("k", 80, ("t",))
        assert cls.__match_args__ == ("name", "port", "tags") and copy.deepcopy(r) == r and copy.copy(r) is not None
        for args, kwargs in (((), {}), (("a", 1, (), 2), {}), (("a",), {"nme": "b"}), (("a",), {"name": "b"})):
            with pytest.raises(TypeError):
                cls(*args, **kwargs)  # no name; too many; unknown keyword; name twice
        with pytest.raises(ValueError, match="unexpected field names"):
            r._replace(nme="x")
        with pytest.raises(TypeError):
            cls._make(["a"])
        assert isinstance(r, tuple)
    assert _make(LITE)("x", 1) == _make(REAL)("x", 1)  # both are plain tuples underneath


@pytest.mark.parametrize("base", [LITE, REAL])
def test_refusals_match_typing(base: Any) -> None:
    with pytest.raises(TypeError):

        class Bad(base):  # type: ignore[misc]
            a: int = 1
            b: int  # a field without a default after one with a default

    with pytest.raises(AttributeError):

        class Worse(base):  # type: ignore[misc]
            a: int

            def _replace(self) -> None: ...


def test_netinit_records_are_real_named_tuples() -> None:
    cfg = CaptureConfig()
    assert cfg._replace(proxy_port=15111).proxy_port == 15111 and cfg.proxy_port == 15001
    rule = Rule("nat", "OUTPUT", "RETURN")
    assert pickle.loads(pickle.dumps(rule)) == rule and {rule, rule} == {rule}
