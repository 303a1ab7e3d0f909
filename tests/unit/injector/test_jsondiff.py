"""Our linear JSON diff produces patches that `jsonpatch` (the reference implementation) applies exactly."""

from __future__ import annotations

import copy
import json
from typing import Any

import jsonpatch
from hypothesis import given, settings
from hypothesis import strategies as st

from injector.core.jsondiff import make_patch

# Leaves without bool/float: Python's 1 == True == 1.0 is the documented blind spot (see the module docstring).
LEAF = st.none() | st.integers(-5, 5) | st.text(alphabet="ab/~", max_size=3)
JSON = st.recursive(
    LEAF,
    lambda kids: st.lists(kids, max_size=5) | st.dictionaries(st.text(alphabet="ab/~", max_size=3), kids, max_size=5),
    max_leaves=30,
)


def canon(x: Any) -> str:
    return json.dumps(x, sort_keys=True)


@settings(max_examples=500, deadline=None)
@given(JSON, JSON)
def test_patch_turns_a_into_b(a: Any, b: Any) -> None:
    before = copy.deepcopy(a)
    ops = make_patch(a, b)
    assert a == before
    assert canon(jsonpatch.apply_patch(copy.deepcopy(a), ops)) == canon(b)


@settings(max_examples=300, deadline=None)
@given(st.lists(JSON, max_size=6), st.lists(JSON, max_size=3), st.integers(0, 6))
def test_insertions_are_adds_not_rewrites(items: list[Any], new: list[Any], at: int) -> None:
    at = min(at, len(items))
    after = items[:at] + new + items[at:]
    ops = make_patch({"l": items}, {"l": after})
    assert canon(jsonpatch.apply_patch({"l": items}, ops)) == canon({"l": after})
    if new and all(n not in items for n in new):
        assert all(op["op"] == "add" for op in ops), ops


def test_equal_documents_give_no_ops() -> None:
    pod = {"spec": {"containers": [{"name": "a", "env": [{"name": f"E{i}", "value": "v"} for i in range(2000)]}]}}
    assert make_patch(pod, copy.deepcopy(pod)) == []


def test_paths_are_escaped() -> None:
    ops = make_patch({"metadata": {"annotations": {}}}, {"metadata": {"annotations": {"a/b~c": "1"}}})
    assert ops == [{"op": "add", "path": "/metadata/annotations/a~1b~0c", "value": "1"}]


def test_bool_int_float_inside_containers_is_the_documented_blind_spot() -> None:
    assert make_patch(1, True) == [{"op": "replace", "path": "", "value": True}]
    assert make_patch({"x": 1}, {"x": True}) == []
    assert make_patch({"x": {"y": [1]}}, {"x": {"y": [1.0]}}) == []
