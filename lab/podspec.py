"""What a kubelet reads out of a pod spec, shared by both pretend kubelets (:mod:`lab.podlab` in network
namespaces, :mod:`lab.runtime.kubelet` with podman): ``$(VAR)`` expansion, a container's environment with its
fieldRefs and resourceFieldRefs resolved, the user a container runs as, quantities, probe ports.

Pure: the facts a kubelet would look up (the pod IP, the node's name, address and allocatable resources) come in
as a :class:`Node` and a pod IP.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from lab.shell import LabError


@dataclass(frozen=True)
class Node:
    """The node a pod runs on, as the kubelet knows it (allocatable: what a resourceFieldRef of a container
    without a limit reads)."""

    name: str = "lab-node"
    ip: str = "10.89.0.1"
    cpu: Fraction = Fraction(2)  # cores
    memory: int = 4 * 1024**3  # bytes
    ephemeral_storage: int = 20 * 1024**3


def all_containers(pod: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """Init containers, then containers."""
    spec = pod.get("spec") or {}
    return [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]


def expand(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion (command, args, env values): ``$$`` is a literal ``$``, an unknown
    ``$(VAR)`` stays as written."""
    out: list[str] = []
    i = 0
    while i < len(text):
        c = text[i]
        if c == "$" and i + 1 < len(text):
            nxt = text[i + 1]
            if nxt == "$":
                out.append("$")
                i += 2
                continue
            if nxt == "(":
                end = text.find(")", i + 2)
                if end != -1:
                    name = text[i + 2 : end]
                    out.append(env[name] if name in env else text[i : end + 1])
                    i = end + 1
                    continue
        out.append(c)
        i += 1
    return "".join(out)


_SUFFIX: dict[str, Fraction | int] = {
    "": 1, "m": Fraction(1, 1000), "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18,
    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60,
}  # fmt: skip


def quantity(raw: Any) -> Fraction:
    """A Kubernetes resource quantity (``500m``, ``1Gi``, ``2``, ``1e3``) as an exact number."""
    text = str(raw).strip()
    m = re.fullmatch(r"([+-]?(?:\d+\.?\d*|\.\d+))(?:[eE]([+-]?\d+)|(Ki|Mi|Gi|Ti|Pi|Ei|m|k|M|G|T|P|E)?)", text)
    if not m:
        raise LabError(f"not a Kubernetes quantity: {raw!r}")
    value = Fraction(m.group(1))
    if m.group(2) is not None:
        return value * Fraction(10) ** int(m.group(2))
    return value * _SUFFIX[m.group(3) or ""]


def resource_value(container: Mapping[str, Any], resource: str, divisor: Any, node: Node) -> str:
    """A resourceFieldRef as the kubelet resolves it: the container's limit (a request: the request, else the
    limit the API server would have defaulted it to, else 0), else the node's allocatable; divided by
    ``divisor`` and rounded up."""
    kind, _, name = resource.partition(".")
    resources = container.get("resources") or {}
    limits, requests = resources.get("limits") or {}, resources.get("requests") or {}
    allocatable = {
        "cpu": node.cpu,
        "memory": Fraction(node.memory),
        "ephemeral-storage": Fraction(node.ephemeral_storage),
    }
    if kind not in ("limits", "requests") or name not in allocatable:
        raise LabError(f"container {container.get('name')}: resourceFieldRef {resource!r} is not a resource")
    if kind == "limits":
        value = quantity(limits[name]) if name in limits else allocatable[name]
    elif name in requests:
        value = quantity(requests[name])
    else:
        value = quantity(limits[name]) if name in limits else Fraction(0)
    return str(math.ceil(value / quantity(divisor if divisor is not None else "1")))


def field_values(pod: Mapping[str, Any], pod_ip: str, node: Node) -> dict[str, str]:
    """The fieldRef paths the kubelet resolves (besides ``metadata.labels['k']`` / ``annotations['k']``)."""
    meta = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    return {
        "metadata.name": str(meta.get("name", "")),
        "metadata.namespace": str(meta.get("namespace", "default")),
        "metadata.uid": str(meta.get("uid", "")),
        "spec.nodeName": node.name,
        "spec.serviceAccountName": str(spec.get("serviceAccountName", "default")),
        "status.podIP": pod_ip,
        "status.podIPs": pod_ip,
        "status.hostIP": node.ip,
        "status.hostIPs": node.ip,
    }


def field_ref(pod: Mapping[str, Any], path: str, pod_ip: str, node: Node, where: str) -> str:
    """One fieldRef's value; LabError naming ``where`` for a path the kubelet would not resolve."""
    meta = pod.get("metadata") or {}
    m = re.fullmatch(r"metadata\.(labels|annotations)\['(.+)'\]", path)
    if m:
        return str((meta.get(m.group(1)) or {}).get(m.group(2), ""))
    fields = field_values(pod, pod_ip, node)
    if path in fields:
        return fields[path]
    raise LabError(f"{where}: fieldRef {path!r} is not a field the kubelet resolves")


def container_env(
    container: Mapping[str, Any],
    pod: Mapping[str, Any],
    pod_ip: str,
    node: Node,
    *,
    config_maps: Mapping[str, Mapping[str, str]] | None = None,
    secrets: Mapping[str, Mapping[str, str]] | None = None,
) -> dict[str, str]:
    """A container's environment as the kubelet builds it: literal values with ``$(VAR)`` expansion against the
    variables defined before them, fieldRefs and resourceFieldRefs resolved, configMap/secret keys from the maps
    given (an absent one is an error unless ``optional``)."""
    name = str(container.get("name"))
    env: dict[str, str] = {}
    for i, var in enumerate(container.get("env") or []):
        key = str(var["name"])
        where = f"container {name}: env[{i}] ({key})"
        if "value" in var or "valueFrom" not in var:
            env[key] = expand(str(var.get("value", "")), env)
            continue
        source = var["valueFrom"]
        if "fieldRef" in source:
            env[key] = field_ref(pod, str(source["fieldRef"]["fieldPath"]), pod_ip, node, where)
        elif "resourceFieldRef" in source:
            ref = source["resourceFieldRef"]
            env[key] = resource_value(container, str(ref["resource"]), ref.get("divisor"), node)
        elif "configMapKeyRef" in source or "secretKeyRef" in source:
            kind = "configMapKeyRef" if "configMapKeyRef" in source else "secretKeyRef"
            ref = source[kind]
            store = (config_maps if kind == "configMapKeyRef" else secrets) or {}
            data = store.get(str(ref.get("name")))
            if data is not None and str(ref["key"]) in data:
                env[key] = str(data[str(ref["key"])])
            elif not ref.get("optional"):
                raise LabError(f"{where}: {kind} {ref.get('name')}/{ref.get('key')} does not exist in the lab")
        else:
            raise LabError(f"{where}: valueFrom {next(iter(source), '?')} is not supported")
    return env


def run_as(container: Mapping[str, Any], pod: Mapping[str, Any], default_uid: int) -> tuple[int, int]:
    """(uid, gid) from the container's securityContext, else the pod's, else ``default_uid`` (gid = uid)."""
    ctx = container.get("securityContext") or {}
    pod_ctx = (pod.get("spec") or {}).get("securityContext") or {}
    uid = ctx.get("runAsUser", pod_ctx.get("runAsUser", default_uid))
    gid = ctx.get("runAsGroup", pod_ctx.get("runAsGroup", uid))
    return int(uid), int(gid)


def probe_port(container: Mapping[str, Any], raw: Any) -> int:
    """A probe's or hook's port: a number, or the name of one of the container's ports."""
    ports = {str(p.get("name")): int(p["containerPort"]) for p in container.get("ports") or [] if p.get("name")}
    if str(raw) in ports:
        return ports[str(raw)]
    try:
        return int(raw)
    except ValueError:
        raise LabError(f"container {container.get('name')}: port {raw!r} is not one of its named ports") from None
