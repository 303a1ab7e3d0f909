"""Does this pod get capture from the node, and with which netinit flags? Pure: a pod (as the API server returns
it) in, a :class:`Decision` out, with a reason for every no.

The flags are the ones the injector rendered into the pod's ``istio-validation`` init container (the same flags
``istio-init`` would run), read by netinit's own reader and parser - so the node programs exactly the rules
netinit would program for that pod, with the same defaults and mesh-wide settings, and refuses what netinit would
refuse. The pod's author controls that container, so flags that would reach beyond the pod's own namespace, or
turn the run into something other than an apply, are refused.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from netinit.core.flags import CAPTURE_ENV, parse_options
from netinit.core.values import go_bool
from netinit.core.workloads import capture_container, container_capture_args
from netinit.errors import NetinitError
from netinit_cni.protocol import CniError, Code, Settings

STATUS = "sidecar.istio.io/status"
INJECT = "sidecar.istio.io/inject"
INTERCEPTION = "sidecar.istio.io/interceptionMode"
PROXY = "istio-proxy"
VALIDATION = "istio-validation"
# Flags that choose where or whether netinit acts: the node decides those (the pod's namespace, an apply).
_NODE_OWNED = {"network_namespace": "--network-namespace", "force_iptables_binary": "--force-iptables-binary"}
_MODES = {"dry_run": "--dry-run", "cleanup_only": "--cleanup-only"}
# Stripped: the validation container's own mode; the node applies, and validates as root if told to.
_STRIP = ("--run-validation", "--skip-rule-apply")
_STRIP_ENV = ("RUN_VALIDATION", "SKIP_RULE_APPLY")


@dataclass(frozen=True)
class Decision:
    capture: bool
    reason: str
    args: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)


def _meta(pod: Mapping[str, Any], key: str) -> Mapping[str, str]:
    meta = pod.get("metadata")
    got = meta.get(key) if isinstance(meta, dict) else None
    return {str(k): str(v) for k, v in got.items()} if isinstance(got, dict) else {}


def decide(pod: Mapping[str, Any], namespace: str, settings: Settings) -> Decision:
    """Skip (with why) or capture (with netinit's args and env); raises :class:`CniError` for a pod whose capture
    settings are refused, before anything is touched."""
    spec = pod.get("spec") if isinstance(pod.get("spec"), dict) else {}
    assert isinstance(spec, dict)
    annotations, labels = _meta(pod, "annotations"), _meta(pod, "labels")
    if namespace in settings.exclude_namespaces:
        return Decision(False, f"namespace {namespace} is excluded (excludeNamespaces)")
    if spec.get("hostNetwork") is True:
        return Decision(False, "hostNetwork pod: it shares the node's namespace, which is never captured")
    for where, found in (("annotation", annotations), ("label", labels)):
        if go_bool(found.get(INJECT, "")) is False:
            return Decision(False, f"{INJECT}: false ({where})")
    if STATUS not in annotations:
        return Decision(False, f"not injected (no {STATUS} annotation)")
    containers = [
        c for c in [*(spec.get("containers") or []), *(spec.get("initContainers") or [])] if isinstance(c, dict)
    ]
    if not any(c.get("name") == PROXY for c in containers):
        return Decision(False, f"not injected (no {PROXY} container)")
    if annotations.get(INTERCEPTION, "").strip().upper() == "NONE":
        return Decision(False, f"{INTERCEPTION}: NONE")
    init = capture_container(pod)
    if init is None:
        return Decision(False, f"injected without capture flags (no {VALIDATION} or istio-init container)")
    if init.get("name") != VALIDATION:
        return Decision(False, f"the pod programs its own capture ({init.get('name')} container); nothing to do")
    args, env, _notes = container_capture_args(init)
    args = [a for a in args if a.split("=", 1)[0] not in _STRIP]
    # Only netinit's own settings: the rest of the container's env (PATH, LD_PRELOAD, PYTHONPATH...) must not reach
    # a root process on the node.
    env = {k: v for k, v in env.items() if k in CAPTURE_ENV and k not in _STRIP_ENV}
    where = f"pod {namespace}/{(pod.get('metadata') or {}).get('name', '?')}"
    try:
        raw = parse_options(args, env)
    except NetinitError as e:
        raise CniError(Code.POD_REFUSED, f"{where}: the {VALIDATION} container's flags are refused: {e}") from None
    owned = [flag for dest, flag in _NODE_OWNED.items() if dest in raw.values] + (["--pid"] if raw.pid else [])
    owned += [flag for dest, flag in _MODES.items() if raw.flags.get(dest)]
    if owned:
        raise CniError(
            Code.POD_REFUSED,
            f"{where}: the {VALIDATION} container sets {', '.join(owned)}, which the node decides in CNI mode "
            "(the pod's own namespace, an apply); nothing was changed",
            VALIDATION,
        )
    return Decision(True, f"injected; capture flags from the {VALIDATION} container", tuple(args), env)
