"""Kubernetes label selectors (``matchLabels`` + ``matchExpressions``) with apimachinery's semantics."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist")


@dataclass(frozen=True)
class Requirement:
    key: str
    operator: str
    values: frozenset[str]

    def matches(self, labels: Mapping[str, str]) -> bool:
        if self.operator == "Exists":
            return self.key in labels
        if self.operator == "DoesNotExist":
            return self.key not in labels
        if self.operator == "In":
            return self.key in labels and labels[self.key] in self.values
        # NotIn matches a missing key too, as in Kubernetes.
        return self.key not in labels or labels[self.key] not in self.values


@dataclass(frozen=True)
class LabelSelector:
    requirements: tuple[Requirement, ...]

    @property
    def empty(self) -> bool:
        """Istio skips empty selectors instead of letting them match every pod."""
        return not self.requirements

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(r.matches(labels) for r in self.requirements)


def parse_selector(raw: Any) -> LabelSelector:
    """A selector from its API form; raises ValueError for shapes the API server would reject."""
    if not isinstance(raw, Mapping):
        raise ValueError(f"a label selector must be a mapping, got {raw!r}")
    unknown = set(raw) - {"matchLabels", "matchExpressions"}
    if unknown:
        raise ValueError(f"unknown label selector field(s) {', '.join(sorted(unknown))}")
    reqs: list[Requirement] = []
    for k, v in sorted((raw.get("matchLabels") or {}).items()):
        reqs.append(Requirement(str(k), "In", frozenset([str(v)])))
    for expr in raw.get("matchExpressions") or []:
        if not isinstance(expr, Mapping) or "key" not in expr or "operator" not in expr:
            raise ValueError(f"a matchExpression needs key and operator, got {expr!r}")
        op, values = expr["operator"], [str(x) for x in (expr.get("values") or [])]
        if op not in OPERATORS:
            raise ValueError(f"operator {op!r} is not one of {', '.join(OPERATORS)}")
        if op in ("In", "NotIn") and not values:
            raise ValueError(f"operator {op} on {expr['key']!r} needs at least one value")
        if op in ("Exists", "DoesNotExist") and values:
            raise ValueError(f"operator {op} on {expr['key']!r} takes no values")
        reqs.append(Requirement(str(expr["key"]), op, frozenset(values)))
    return LabelSelector(tuple(reqs))
