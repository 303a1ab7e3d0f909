"""The injection decision: Istio's TestInjectRequired matrix plus our own cases."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from injector.core.config import load_config
from injector.core.policy import decide
from injector.core.selectors import parse_selector

BASE = load_config()


def pod(labels: dict[str, str] | None = None, annotations: dict[str, str] | None = None, **spec: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": "p", "labels": labels or {}, "annotations": annotations or {}},
        "spec": {"containers": [{"name": "app"}], **spec},
    }


NEVER = (parse_selector({"matchLabels": {"team": "legacy"}}),)
ALWAYS = (parse_selector({"matchExpressions": [{"key": "tier", "operator": "In", "values": ["web", "api"]}]}),)
ON, OFF = "sidecar.istio.io/inject", "sidecar.istio.io/inject"

CASES = [
    # (id, policy, pod, namespace, never, always, expected, reason fragment)
    ("enabled-default", "enabled", pod(), "default", (), (), True, "policy enabled"),
    ("disabled-default", "disabled", pod(), "default", (), (), False, "policy disabled"),
    ("host-network", "enabled", pod(hostNetwork=True), "default", (), (), False, "hostNetwork"),
    (
        "host-network-beats-label",
        "enabled",
        pod({ON: "true"}, hostNetwork=True),
        "default",
        (),
        (),
        False,
        "hostNetwork",
    ),
    ("kube-system", "enabled", pod({ON: "true"}), "kube-system", (), (), False, "kube-system"),
    ("kube-public", "enabled", pod(), "kube-public", (), (), False, "kube-public"),
    ("kube-node-lease", "enabled", pod(), "kube-node-lease", (), (), False, "kube-node-lease"),
    ("local-path-storage", "enabled", pod(), "local-path-storage", (), (), False, "local-path-storage"),
    ("annotation-false", "enabled", pod(annotations={ON: "false"}), "default", (), (), False, "annotation"),
    ("annotation-true-disabled", "disabled", pod(annotations={ON: "true"}), "default", (), (), True, "annotation"),
    ("label-true-disabled", "disabled", pod({ON: "true"}), "default", (), (), True, "label"),
    ("label-false-enabled", "enabled", pod({ON: "false"}), "default", (), (), False, "label"),
    ("label-beats-annotation-no", "enabled", pod({ON: "false"}, {ON: "true"}), "default", (), (), False, "label"),
    ("label-beats-annotation-yes", "disabled", pod({ON: "true"}, {ON: "false"}), "default", (), (), True, "label"),
    ("never-selector", "enabled", pod({"team": "legacy"}), "default", NEVER, (), False, "neverInjectSelector[0]"),
    ("always-selector", "disabled", pod({"tier": "api"}), "default", (), ALWAYS, True, "alwaysInjectSelector[0]"),
    ("always-no-match", "disabled", pod({"tier": "db"}), "default", (), ALWAYS, False, "policy disabled"),
    (
        "never-before-always",
        "disabled",
        pod({"team": "legacy", "tier": "web"}),
        "default",
        NEVER,
        ALWAYS,
        False,
        "never",
    ),
    ("explicit-beats-never", "enabled", pod({"team": "legacy", ON: "true"}), "default", NEVER, (), True, "label"),
    (
        "explicit-beats-always",
        "disabled",
        pod({"tier": "web"}, {ON: "false"}),
        "default",
        (),
        ALWAYS,
        False,
        "annotation",
    ),
    # Ours: only exact "true"/"false" decide; other values warn and fall through (docs/compat.md).
    ("yes-falls-through-enabled", "enabled", pod({ON: "yes"}), "default", (), (), True, "policy enabled"),
    ("TRUE-falls-through-disabled", "disabled", pod(annotations={ON: "TRUE"}), "default", (), (), False, "policy"),
    ("typo-falls-to-selector", "enabled", pod({ON: "flase", "team": "legacy"}), "default", NEVER, (), False, "never"),
    ("bad-label-then-annotation", "disabled", pod({ON: "on"}, {ON: "true"}), "default", (), (), True, "annotation"),
    ("empty-selector-ignored", "disabled", pod({"x": "y"}), "default", (), (parse_selector({}),), False, "policy"),
]


@pytest.mark.parametrize(
    ("policy", "p", "namespace", "never", "always", "expected", "reason"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_decide(
    policy: str,
    p: dict[str, Any],
    namespace: str,
    never: tuple[Any, ...],
    always: tuple[Any, ...],
    expected: bool,
    reason: str,
) -> None:
    cfg = replace(BASE, policy=policy, never_inject=never, always_inject=always)
    d = decide(p, namespace, cfg)
    assert d.inject is expected
    assert reason in d.reason


def test_non_boolean_values_warn() -> None:
    d = decide(pod({ON: "yes"}, {ON: "1"}), "default", BASE)
    assert d.warnings == (
        'sidecar.istio.io/inject label \'yes\' is neither "true" nor "false"; ignored',
        'sidecar.istio.io/inject annotation \'1\' is neither "true" nor "false"; ignored',
    )


def test_policy_argument_overrides_config() -> None:
    cfg = replace(BASE, policy="disabled")
    assert decide(pod(), "default", cfg, policy="enabled").inject


@pytest.mark.parametrize(
    ("expr", "labels", "matches"),
    [
        ({"key": "a", "operator": "In", "values": ["1", "2"]}, {"a": "2"}, True),
        ({"key": "a", "operator": "In", "values": ["1"]}, {}, False),
        ({"key": "a", "operator": "NotIn", "values": ["1"]}, {}, True),
        ({"key": "a", "operator": "NotIn", "values": ["1"]}, {"a": "1"}, False),
        ({"key": "a", "operator": "Exists"}, {"a": ""}, True),
        ({"key": "a", "operator": "DoesNotExist"}, {"a": "x"}, False),
    ],
)
def test_selector_expressions(expr: dict[str, Any], labels: dict[str, str], matches: bool) -> None:
    assert parse_selector({"matchExpressions": [expr]}).matches(labels) is matches


@pytest.mark.parametrize(
    "bad",
    [
        {"matchExpressions": [{"key": "a", "operator": "In"}]},
        {"matchExpressions": [{"key": "a", "operator": "Exists", "values": ["x"]}]},
        {"matchExpressions": [{"key": "a", "operator": "Like", "values": ["x"]}]},
        {"matchLabel": {"a": "b"}},
        ["a=b"],
    ],
)
def test_bad_selectors_are_refused(bad: Any) -> None:
    with pytest.raises(ValueError):
        parse_selector(bad)
