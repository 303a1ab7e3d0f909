"""A container of a pod spec as ``podman run`` flags: what the kubelet asks of the container runtime.

Pure (no podman call): :func:`run_flags` takes the container, the pod, the image's own USER and the volume mounts
already resolved to host paths, and returns the flags that make podman enforce the spec:

==========================================  ===================================================================
securityContext (container, else pod)       podman
==========================================  ===================================================================
runAsUser / runAsGroup                      ``--user uid:gid`` (the image's USER when unset)
runAsNonRoot                                refused (:class:`Unhonourable`) when the uid would be 0 or not numeric
fsGroup / supplementalGroups                ``--group-add`` (the volume files are given that group)
capabilities.drop / add                     ``--cap-drop`` / ``--cap-add`` (drops first, as the CRI applies them)
readOnlyRootFilesystem                      ``--read-only --read-only-tmpfs=false`` (nothing writable but volumes)
allowPrivilegeEscalation: false             ``--security-opt no-new-privileges``
privileged                                  ``--privileged``
seccompProfile RuntimeDefault               podman's default profile (no flag)
seccompProfile Unconfined, or unset         ``--security-opt seccomp=unconfined`` (the kubelet's default
                                            without ``--seccomp-default``)
resources.limits memory / cpu               ``--memory`` / ``--cpus``
==========================================  ===================================================================

Anything else a container asks for that podman here cannot honour (a seccomp Localhost profile, SELinux or
AppArmor options, procMount, a field the lab does not know) raises :class:`Unhonourable` naming the container
and the field: the lab refuses rather than running something weaker than the spec.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from lab.podspec import quantity
from lab.shell import LabError

KNOWN_CONTAINER_CONTEXT = {
    "runAsUser",
    "runAsGroup",
    "runAsNonRoot",
    "capabilities",
    "readOnlyRootFilesystem",
    "allowPrivilegeEscalation",
    "privileged",
    "seccompProfile",
}
KNOWN_POD_CONTEXT = {
    "runAsUser",
    "runAsGroup",
    "runAsNonRoot",
    "fsGroup",
    "fsGroupChangePolicy",
    "supplementalGroups",
    "seccompProfile",
    "sysctls",
}


class Unhonourable(LabError):
    """The pod spec asks for something this runtime cannot do; the message names the container and the field."""


def _where(container: Mapping[str, Any], index: str) -> str:
    return f"container {container.get('name')!r} ({index})"


def effective(container: Mapping[str, Any], pod: Mapping[str, Any], key: str) -> Any:
    """A securityContext setting: the container's, else the pod's (for the keys both have)."""
    ctx = container.get("securityContext") or {}
    if key in ctx:
        return ctx[key]
    return ((pod.get("spec") or {}).get("securityContext") or {}).get(key)


def user_flag(container: Mapping[str, Any], pod: Mapping[str, Any], image_user: str, index: str) -> tuple[str, int]:
    """``uid:gid`` for ``--user`` and the uid, checking runAsNonRoot as the kubelet does (against the image's
    USER when runAsUser is unset; a non-numeric USER cannot be verified and is refused)."""
    uid, gid = effective(container, pod, "runAsUser"), effective(container, pod, "runAsGroup")
    image_uid, _, image_gid = image_user.partition(":")
    if uid is None:
        if image_uid and not image_uid.isdigit():
            if effective(container, pod, "runAsNonRoot"):
                raise Unhonourable(
                    f"{_where(container, index)}: securityContext.runAsNonRoot is set and the image's user "
                    f"{image_uid!r} is not numeric (the kubelet cannot verify it is not root)"
                )
            return image_user if gid is None else f"{image_uid}:{int(gid)}", -1
        uid = int(image_uid or 0)
        if gid is None and image_gid.isdigit():
            gid = int(image_gid)
    if effective(container, pod, "runAsNonRoot") and int(uid) == 0:
        raise Unhonourable(
            f"{_where(container, index)}: securityContext.runAsNonRoot is set and the container would run as "
            "uid 0 (the kubelet refuses to start it: CreateContainerConfigError)"
        )
    # No runAsGroup: the runtime picks the user's primary group (from the image's /etc/passwd, else 0).
    return (f"{int(uid)}" if gid is None else f"{int(uid)}:{int(gid)}"), int(uid)


def security_flags(container: Mapping[str, Any], pod: Mapping[str, Any], index: str) -> list[str]:
    """Capabilities, read-only root, no-new-privileges, privileged, seccomp, groups."""
    ctx = container.get("securityContext") or {}
    pod_ctx = (pod.get("spec") or {}).get("securityContext") or {}
    for key in ctx:
        if key not in KNOWN_CONTAINER_CONTEXT:
            raise Unhonourable(f"{_where(container, index)}: securityContext.{key} is not supported by the runtime lab")
    for key in pod_ctx:
        if key not in KNOWN_POD_CONTEXT:
            raise Unhonourable(f"pod: spec.securityContext.{key} is not supported by the runtime lab")
    out: list[str] = []
    caps = ctx.get("capabilities") or {}
    for cap in caps.get("drop") or []:
        out += ["--cap-drop", str(cap).upper()]
    for cap in caps.get("add") or []:
        out += ["--cap-add", str(cap).upper()]
    if ctx.get("readOnlyRootFilesystem"):
        out += ["--read-only", "--read-only-tmpfs=false"]
    if ctx.get("allowPrivilegeEscalation") is False:
        if ctx.get("privileged"):
            raise Unhonourable(
                f"{_where(container, index)}: securityContext.allowPrivilegeEscalation false with privileged "
                "true is invalid (the API server rejects it)"
            )
        out += ["--security-opt", "no-new-privileges"]
    if ctx.get("privileged"):
        out += ["--privileged"]
    seccomp = effective(container, pod, "seccompProfile") or {"type": "Unconfined"}
    kind = str(seccomp.get("type"))
    if kind == "Unconfined":
        out += ["--security-opt", "seccomp=unconfined"]
    elif kind != "RuntimeDefault":
        raise Unhonourable(
            f"{_where(container, index)}: securityContext.seccompProfile type {kind!r} is not supported "
            "(RuntimeDefault and Unconfined are)"
        )
    groups = [pod_ctx["fsGroup"]] if pod_ctx.get("fsGroup") is not None else []
    groups += list(pod_ctx.get("supplementalGroups") or [])
    for group in groups:
        out += ["--group-add", str(int(group))]
    return out


def resource_flags(container: Mapping[str, Any]) -> list[str]:
    """Memory and CPU limits, enforced by the runtime's cgroup."""
    limits = (container.get("resources") or {}).get("limits") or {}
    out: list[str] = []
    if "memory" in limits:
        out += ["--memory", str(int(quantity(limits["memory"])))]
    if "cpu" in limits:
        out += ["--cpus", f"{float(quantity(limits['cpu'])):g}"]
    return out


def command_flags(container: Mapping[str, Any], expand: Any, index: str) -> tuple[list[str], list[str]]:
    """(flags before the image, arguments after it): Kubernetes' command replaces the image's ENTRYPOINT (and then
    its CMD is not used), args replace CMD; both with ``$(VAR)`` expanded."""
    command = [expand(str(a)) for a in container.get("command") or []]
    args = [expand(str(a)) for a in container.get("args") or []]
    flags = ["--entrypoint", json.dumps(command)] if command else []
    if not isinstance(container.get("command") or [], list) or not isinstance(container.get("args") or [], list):
        raise Unhonourable(f"{_where(container, index)}: command and args must be lists")
    return flags, args


def run_flags(
    container: Mapping[str, Any],
    pod: Mapping[str, Any],
    *,
    index: str,
    image_user: str,
    env: Mapping[str, str],
    mounts: Sequence[str],
    expand: Any,
) -> tuple[list[str], list[str], int]:
    """Everything for ``podman run [flags] IMAGE [args]`` but the pod and the name: (flags, args, uid; -1 when
    the uid is an image's user name)."""
    user, uid = user_flag(container, pod, image_user, index)
    flags = ["--user", user, *security_flags(container, pod, index), *resource_flags(container)]
    for key, value in env.items():
        flags += ["--env", f"{key}={value}"]
    for mount in mounts:
        flags += ["--volume", mount]
    if container.get("workingDir"):
        flags += ["--workdir", str(container["workingDir"])]
    for key in ("stdin", "tty"):
        if container.get(key):
            raise Unhonourable(f"{_where(container, index)}: {key} is not supported by the runtime lab")
    entry, args = command_flags(container, expand, index)
    return [*flags, *entry], args, uid
