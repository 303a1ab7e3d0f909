"""``netinit verify --from-pod FILE``: the capture flags of an injected pod, as its ``istio-init`` runs them.

The flags are read from the pod's ``istio-init`` init container (or, in Istio's CNI mode, ``istio-validation``,
which runs the same flags to check them): its command/args and env. netinit never injects a pod itself - the
injector is not part of the init image - so an un-injected pod is refused with a pointer to
``sidecar-injector kube-inject``. The manifest is JSON (``kubectl get pod NAME -o json``, read with the standard
library) or YAML (only where PyYAML is installed). A workload (Deployment, ...) stands for its pod template; a
List for its items.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from typing import Any

from netinit.core.workloads import POD_TEMPLATES, capture_container, container_capture_args
from netinit.debug.live import read_file
from netinit.errors import ConfigError


def load_manifest(text: str, path: str) -> list[Any]:
    """The documents of a manifest: JSON with the standard library, else YAML if PyYAML is importable."""
    try:
        return [json.loads(text)]
    except ValueError:
        pass
    try:
        import yaml
    except ImportError:
        raise ConfigError(
            f"netinit: {path} is not JSON, and reading YAML needs PyYAML, which is not installed here: "
            "pass the pod as JSON (kubectl get pod NAME -o json)"
        ) from None
    try:
        return [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as e:
        raise ConfigError(f"netinit: {path} is not valid JSON or YAML: {e}") from None


def iter_pods(obj: Any) -> Iterator[Mapping[str, Any]]:
    """Every pod or pod template in a loaded document."""
    if not isinstance(obj, dict):
        return
    if obj.get("kind") == "Pod":
        yield obj
    items = obj.get("items")
    for item in items if isinstance(items, list) else []:
        yield from iter_pods(item)
    node: Any = obj
    for key in POD_TEMPLATES.get(str(obj.get("kind")), ()):
        node = node.get(key) if isinstance(node, dict) else None
    if node is not obj and isinstance(node, dict):
        yield node


def pod_capture_args(path: str) -> tuple[list[str], dict[str, str], list[str]]:
    """An injected pod manifest -> its istio-init's capture flags, env, and notes for the output."""
    pods = [p for d in load_manifest(read_file(path), path) for p in iter_pods(d)]
    if not pods:
        raise ConfigError(f"netinit: {path} holds no pod or pod template")
    notes = [f"{path} holds {len(pods)} pods; using the first"] if len(pods) > 1 else []
    init = capture_container(pods[0])
    if init is None:
        raise ConfigError(
            f"netinit: {path}: the pod has no istio-init (or istio-validation) container: it is not injected. "
            f"Pass the injected pod: the live one (kubectl get pod NAME -o json), or "
            f"sidecar-injector kube-inject -f {path}"
        )
    args, env, more = container_capture_args(init)
    return args, env, notes + more
