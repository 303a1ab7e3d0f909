"""Should this pod get a sidecar? Istio's ``injectRequired`` rules, in Istio's order, with a reason for every no.

The MutatingWebhookConfiguration's selectors already filtered namespaces; this re-checks what only the pod
knows. One deliberate difference (docs/compat.md): only the exact strings ``"true"`` and ``"false"`` decide;
anything else is reported as a warning and the decision falls through to the selectors and the policy, where
Istio would read a typo as "no".
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from injector.core.annotations import INJECT
from injector.core.config import InjectorConfig

IGNORED_NAMESPACES = frozenset({"kube-system", "kube-public", "kube-node-lease", "local-path-storage"})


@dataclass(frozen=True)
class Decision:
    inject: bool
    reason: str  # for people: logs and messages
    code: str  # for machines: a short, bounded label for metrics
    warnings: tuple[str, ...] = field(default=())


def decide(pod: Mapping[str, Any], namespace: str, config: InjectorConfig, policy: str | None = None) -> Decision:
    """The injection decision for ``pod`` in ``namespace``; ``policy`` overrides the config's (kube-inject)."""
    meta = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    if spec.get("hostNetwork"):
        return Decision(False, "hostNetwork", "host_network")
    if namespace in IGNORED_NAMESPACES:
        return Decision(False, f"namespace {namespace} is never injected", "system_namespace")

    labels: Mapping[str, str] = meta.get("labels") or {}
    annotations: Mapping[str, str] = meta.get("annotations") or {}
    warnings: list[str] = []
    explicit: bool | None = None
    # The label is the newer API: when present it wins, whatever the annotation says.
    for where, source in (("label", labels), ("annotation", annotations)):
        if INJECT not in source:
            continue
        value = source[INJECT]
        if value in ("true", "false"):
            explicit = value == "true"
            if not explicit:
                return Decision(False, f'{INJECT} {where} is "false"', where, tuple(warnings))
            return Decision(True, f'{INJECT} {where} is "true"', where, tuple(warnings))
        warnings.append(f'{INJECT} {where} {value!r} is neither "true" nor "false"; ignored')

    for i, sel in enumerate(config.never_inject):
        if not sel.empty and sel.matches(labels):
            return Decision(False, f"neverInjectSelector[{i}] matches", "never_selector", tuple(warnings))
    for i, sel in enumerate(config.always_inject):
        if not sel.empty and sel.matches(labels):
            return Decision(True, f"alwaysInjectSelector[{i}] matches", "always_selector", tuple(warnings))

    policy = policy or config.policy
    if policy == "enabled":
        return Decision(True, "policy enabled", "policy", tuple(warnings))
    return Decision(False, "policy disabled and the pod does not opt in", "policy", tuple(warnings))
