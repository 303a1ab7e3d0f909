"""Offline injection over manifests (``sidecar-injector kube-inject``), like ``istioctl kube-inject``.

Finds the pod (template) in every workload kind that has one, runs the same `inject` the webhook runs, and writes
the documents back in order. Everything else passes through unchanged. As in Istio's kube-inject the policy is
"enabled": a pod is injected unless it opts out (label/annotation, hostNetwork, system namespace).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from injector.core import manifest_yaml
from injector.core.config import InjectorConfig
from injector.core.inject import inject
from injector.core.policy import decide
from injector.core.request import Request, Workload
from injector.errors import Refused
from netinit.core.workloads import POD_TEMPLATES


@dataclass(frozen=True)
class Options:
    config: InjectorConfig
    revision: str = ""
    native_sidecar: str | None = None
    kube_version: tuple[int, int] | None = None


def inject_text(text: str, opts: Options, warn: Callable[[str], None] | None = None) -> str:
    """Inject every workload in a multi-document YAML stream; raises `Refused` naming the object."""
    warn = warn or (lambda m: print(f"warning: {m}", file=sys.stderr))
    try:
        docs = manifest_yaml.load_all(text)
    except manifest_yaml.YAMLError as e:
        raise Refused(f"input is not valid YAML: {e}") from e
    return manifest_yaml.dump_all(inject_object(d, opts, warn) for d in docs)


def inject_object(obj: Any, opts: Options, warn: Callable[[str], None]) -> Any:
    if not isinstance(obj, dict):
        return obj
    kind = obj.get("kind")
    if kind == "List" or (isinstance(kind, str) and kind.endswith("List") and isinstance(obj.get("items"), list)):
        return {**obj, "items": [inject_object(i, opts, warn) for i in obj.get("items") or []]}
    meta = obj.get("metadata") or {}
    namespace = meta.get("namespace") or "default"
    label = f"{kind}/{meta.get('name', meta.get('generateName', '?'))}"
    if kind == "Pod":
        return _inject_pod(obj, namespace, Workload(meta.get("name", ""), namespace), opts, warn, label)
    path = POD_TEMPLATES.get(kind) if isinstance(kind, str) else None
    if path is None:
        return obj
    holder, template = _walk(obj, path)
    if template is None:
        return obj
    workload = Workload(meta.get("name", ""), namespace, str(kind), str(obj.get("apiVersion", "")))
    holder[path[-1]] = _inject_pod(template, namespace, workload, opts, warn, label)
    return obj


def _walk(obj: dict[str, Any], path: tuple[str, ...]) -> tuple[dict[str, Any], dict[str, Any] | None]:
    holder = obj
    for key in path[:-1]:
        nxt = holder.get(key)
        if not isinstance(nxt, dict):
            return holder, None
        holder = nxt
    template = holder.get(path[-1])
    return holder, template if isinstance(template, dict) else None


def _inject_pod(
    pod: dict[str, Any], namespace: str, workload: Workload, opts: Options, warn: Callable[[str], None], label: str
) -> dict[str, Any]:
    decision = decide(pod, namespace, opts.config, policy="enabled")
    for w in decision.warnings:
        warn(f"{label}: {w}")
    if not decision.inject:
        warn(f"{label}: not injected ({decision.reason})")
        return pod
    req = Request(
        pod=pod,
        namespace=namespace,
        config=opts.config,
        revision=opts.revision,
        kube_version=opts.kube_version,
        native_sidecar=opts.native_sidecar,
        workload=workload,
    )
    try:
        return inject(req).pod
    except Refused as e:
        raise Refused(f"{label}: {e}") from e
