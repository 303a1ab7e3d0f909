"""Where each workload kind keeps its pod template: the one table both the injector (``kube-inject``) and
``netinit verify --from-pod`` read, so a kind one of them knows the other knows too; and where an injected pod
keeps its capture flags (the ``istio-init`` or ``istio-validation`` container), for ``verify --from-pod`` and the
CNI agent. Pure."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# kind -> path from the object to its pod template
POD_TEMPLATES: dict[str, tuple[str, ...]] = {
    "Deployment": ("spec", "template"),
    "ReplicaSet": ("spec", "template"),
    "StatefulSet": ("spec", "template"),
    "DaemonSet": ("spec", "template"),
    "Job": ("spec", "template"),
    "ReplicationController": ("spec", "template"),
    "DeploymentConfig": ("spec", "template"),  # OpenShift, apps.openshift.io/v1
    "CronJob": ("spec", "jobTemplate", "spec", "template"),
}


CAPTURE_CONTAINERS = ("istio-init", "istio-validation")  # in order of preference
_LOGGING_FLAGS = ("--log_output_level", "--log_as_json")  # istio-iptables' logging flags, not capture flags


def capture_container(pod: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The container that runs netinit/istio-iptables: ``istio-init``, else ``istio-validation``."""
    spec = pod.get("spec")
    spec = spec if isinstance(spec, dict) else {}
    containers: list[Mapping[str, Any]] = []
    for key in ("initContainers", "containers"):
        listed = spec.get(key)
        containers += [c for c in listed if isinstance(c, dict)] if isinstance(listed, list) else []
    for name in CAPTURE_CONTAINERS:
        for c in containers:
            if c.get("name") == name:
                return c
    return None


def container_capture_args(init: Mapping[str, Any]) -> tuple[list[str], dict[str, str], list[str]]:
    """The capture flags and env of the container that runs netinit (see :func:`capture_container`), and notes.
    Also the CNI agent's source of a pod's flags (netinit_cni.decide)."""
    notes = []
    if init.get("name") != CAPTURE_CONTAINERS[0]:
        notes.append(f"flags from the {init.get('name')} container (the pod has no istio-init)")
    args = [str(a) for a in [*(init.get("command") or [])[1:], *(init.get("args") or [])]]
    while args and not args[0].startswith("-"):
        args.pop(0)  # istio-iptables / netinit program names
    dropped = [a for a in args if a.startswith(_LOGGING_FLAGS)]
    if dropped:
        notes.append(f"ignored logging flags netinit does not take: {' '.join(dropped)}")
    args = [a for a in args if a not in dropped]
    env = {str(e["name"]): str(e["value"]) for e in init.get("env") or [] if "name" in e and "value" in e}
    return args, env, notes
