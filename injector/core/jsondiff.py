"""RFC 6902 JSON Patch from a diff of two JSON documents, linear in their size.

Equal subtrees are skipped with one ``==`` (a C-level comparison), so the cost is the size of what changed plus a
comparison pass, not a serialisation of every list element as `jsonpatch.make_patch` does. Lists are diffed by
their common prefix and suffix: injection appends or prepends containers and rewrites fields in place, which
that captures exactly; anything else in the middle becomes element-wise replaces plus adds or removes.

Equality is Python's: inside containers, ``1``, ``1.0`` and ``True`` compare equal, so a change between them
below the top level is not seen. Injection never makes such a change (unchanged parts are copies of the
original values), which is why the speed is worth it; the tests pin the behaviour.
"""

from __future__ import annotations

from typing import Any

Op = dict[str, Any]


def _escape(key: str) -> str:
    return key.replace("~", "~0").replace("/", "~1")


def make_patch(src: Any, dst: Any) -> list[Op]:
    """Operations that turn ``src`` into ``dst`` (applied in order, as RFC 6902 requires)."""
    ops: list[Op] = []
    _diff(src, dst, "", ops)
    return ops


def _diff(a: Any, b: Any, path: str, ops: list[Op]) -> None:
    if a == b and type(a) is type(b):  # 1 == True and 1 == 1.0 in Python, but not in JSON
        return
    if type(a) is dict and type(b) is dict:
        for k in a:
            if k not in b:
                ops.append({"op": "remove", "path": f"{path}/{_escape(k)}"})
        for k, v in b.items():
            p = f"{path}/{_escape(k)}"
            if k in a:
                _diff(a[k], v, p, ops)
            else:
                ops.append({"op": "add", "path": p, "value": v})
    elif type(a) is list and type(b) is list:
        _diff_list(a, b, path, ops)
    else:
        ops.append({"op": "replace", "path": path, "value": b})


def _same(x: Any, y: Any) -> bool:
    return bool(x == y) and type(x) is type(y)


def _diff_list(a: list[Any], b: list[Any], path: str, ops: list[Op]) -> None:
    prefix = 0
    limit = min(len(a), len(b))
    while prefix < limit and _same(a[prefix], b[prefix]):
        prefix += 1
    suffix = 0
    while suffix < limit - prefix and _same(a[-1 - suffix], b[-1 - suffix]):
        suffix += 1
    mid_a, mid_b = a[prefix : len(a) - suffix], b[prefix : len(b) - suffix]
    common = min(len(mid_a), len(mid_b))
    for i in range(common):
        _diff(mid_a[i], mid_b[i], f"{path}/{prefix + i}", ops)
    if len(mid_b) > common:
        for i in range(common, len(mid_b)):
            # Inserting at prefix+i keeps the suffix after it, whatever the list's length.
            ops.append({"op": "add", "path": f"{path}/{prefix + i}", "value": mid_b[i]})
    else:
        for _ in range(common, len(mid_a)):
            ops.append({"op": "remove", "path": f"{path}/{prefix + common}"})
