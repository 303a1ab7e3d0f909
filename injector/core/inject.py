"""Pod in, injected pod and JSON Patch out: the only module that knows the order of the steps.

The steps are Istio's, each a function of its own: `uninject` (undo a previous injection, so re-injection is
idempotent), `render` (templates -> partial pods), `merge` (strategic merge onto the pod, then the user's own
``istio-proxy``/``istio-init`` fields on top), `post_process` (container order, probe rewrite, Prometheus merge,
status metadata) and `make_patch` (a diff of before and after). Everything is pure over plain dicts: the webhook,
`kube-inject` and the tests call `inject` the same way.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from injector.core import annotations as keys
from injector.core import jsondiff, probes, prometheus
from injector.core.annotations import Settings, read_settings
from injector.core.config import InjectorConfig
from injector.core.merge import clone, merge_into
from injector.core.render import Rendered, network_of, render, revision_of
from injector.core.request import (
    AUTO_IMAGE,
    CORE_DUMP,
    INIT,
    NATIVE_SIDECAR_MIN_VERSION,
    NETWORK_LABEL,
    PROXY,
    PROXY_UID,
    VALIDATION,
    Obj,
    Request,
)
from injector.errors import AnnotationError, ConfigError, InjectorError, TemplateBroken, TemplateError


@dataclass(frozen=True)
class Result:
    pod: Obj
    patch: list[Obj]
    templates: tuple[str, ...]
    native: bool


# --- entry point ----------------------------------------------------------------------------------------------


def inject(req: Request) -> Result:
    """The injected pod and the JSON Patch that turns ``req.pod`` into it; raises `Refused` subclasses."""
    annotations = (req.pod.get("metadata") or {}).get("annotations") or {}
    settings = read_settings(annotations, req.config.values)
    names = select_templates(req.config, settings)
    native = native_sidecar(req, settings)

    stripped = _uninject_in_place(clone(dict(req.pod)))
    proxy_uid = _user_proxy_uid(stripped)
    rendered = render(req, names, stripped, settings, native, proxy_uid)
    injected_names = _container_names(rendered.docs)
    base, overrides = _split_overrides(stripped, injected_names)

    pod = base
    template_pod: Obj = {}
    for doc in rendered.docs:
        pod = merge_into(pod, doc)
        template_pod = merge_into(template_pod, doc)
    pod = apply_overrides(pod, overrides)
    post_process(pod, template_pod, req, settings, rendered, native)
    return Result(pod=pod, patch=make_patch(req.pod, pod), templates=tuple(names), native=native)


_CANARY: Obj = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {"name": "canary", "labels": {"app": "canary"}},
    "spec": {
        "containers": [
            {
                "name": "app",
                "image": "app:1",
                "ports": [{"name": "http", "containerPort": 8080}],
                "readinessProbe": {"httpGet": {"path": "/ready", "port": "http"}},
            }
        ]
    },
}


def check_config(config: InjectorConfig) -> InjectorConfig:
    """Inject a canary pod with every selectable template, legacy and native, so a broken template or values of
    the wrong shape fail the config load (the last good config stays) instead of every pod afterwards. A
    template that deliberately refuses the canary is fine; one that breaks is not."""
    for name in sorted(t for t in config.templates if not t.startswith("_")):
        for native in ("false", "true"):
            pod = {**_CANARY, "metadata": {**_CANARY["metadata"], "annotations": {keys.TEMPLATES: name}}}
            try:
                inject(Request(pod=pod, namespace="default", config=config, native_sidecar=native))
            except TemplateBroken as e:
                raise ConfigError(str(e)) from e
            except InjectorError:
                continue  # refused this pod on purpose: not a broken config
            except Exception as e:  # values of the wrong shape surface as KeyError, TypeError, ...
                raise ConfigError(f"template {name!r} cannot inject with these values: {type(e).__name__}: {e}") from e
    return config


# --- steps ----------------------------------------------------------------------------------------------------


# Istio's other injection templates (and SPIRE's well-known user template), refused by name with the reason unless
# the config defines a template of that name. docs/annotations.md ("Templates") says the same.
UNSUPPORTED_ISTIO_TEMPLATES = {
    "gateway": "it turns the pod into an Istio gateway (pilot-agent 'router' mode configured by istiod); deploy "
    "gateways with Istio's gateway chart or the Gateway API instead",
    "grpc-agent": "proxyless gRPC needs istiod's gRPC xDS generator and changes the app containers' env; there is "
    "no Envoy to inject",
    "grpc-simple": "proxyless gRPC needs istiod's gRPC xDS generator and changes the app containers' env; there is "
    "no Envoy to inject",
    "spire": "Istio ships no such template; add your SPIRE overlay (the workload-socket volume on the "
    "csi.spiffe.io driver) under config.yaml templates and list it after sidecar",
}


def select_templates(config: InjectorConfig, settings: Settings) -> list[str]:
    wanted = list(settings.templates) if settings.templates is not None else list(config.default_templates)
    names = config.resolve_templates(wanted)
    for n in names:
        if n not in config.templates or n.startswith("_"):
            known = ", ".join(sorted(t for t in config.templates if not t.startswith("_")))
            if n in UNSUPPORTED_ISTIO_TEMPLATES:
                raise TemplateError(
                    f"requested template {n!r} is one of Istio's templates and is not supported here: "
                    f"{UNSUPPORTED_ISTIO_TEMPLATES[n]}; supported templates: {known}"
                )
            raise TemplateError(f"requested template {n!r} not found; have {known}")
    return names


def native_sidecar(req: Request, settings: Settings) -> bool:
    """Annotation, else the request's/config's mode; ``auto`` means the API server is >= 1.29."""
    if settings.native_sidecar is not None:
        return settings.native_sidecar
    mode = req.native_sidecar or req.config.native_sidecar_mode
    if mode == "auto":
        return req.kube_version is not None and req.kube_version >= NATIVE_SIDECAR_MIN_VERSION
    return mode == "true"


def uninject(pod: Obj) -> Obj:
    """``pod`` as it was before a previous injection (a deep copy); an uninjected pod comes back equal.

    Uses what injection recorded: the status annotation (what was added), the proxy's
    ISTIO_KUBE_APP_PROBERS (the original probes) and ISTIO_PROMETHEUS_ANNOTATIONS (the user's scrape
    annotations), and proxy.istio.io/overrides (the user's own proxy containers).
    """
    return _uninject_in_place(clone(pod))


def _uninject_in_place(pod: Obj) -> Obj:
    meta = pod.setdefault("metadata", {})
    ann = meta.get("annotations") or {}
    if keys.STATUS not in ann:
        return pod
    status = _parse_status(ann[keys.STATUS])
    spec = pod.setdefault("spec", {})
    proxy = next((c for c in _all_containers(pod) if c.get("name") == PROXY), None)
    env = {e.get("name"): e.get("value") for e in (proxy or {}).get("env") or []}
    if isinstance(env.get(probes.ENV_NAME), str):
        probes.restore(pod, env[probes.ENV_NAME], PROXY)
    value = env.get(prometheus.ENV_NAME)
    prometheus.restore(ann, value if isinstance(value, str) else None)
    removed = set(status.get("containers") or []) | set(status.get("initContainers") or [])
    for key in ("containers", "initContainers"):
        if key in spec:
            spec[key] = [c for c in spec[key] if c.get("name") not in removed]
    for key, listed in (("volumes", "volumes"), ("imagePullSecrets", "imagePullSecrets")):
        drop = set(status.get(listed) or [])
        if key in spec:
            spec[key] = [v for v in spec[key] if v.get("name") not in drop]
            if not spec[key]:
                del spec[key]
    if not spec.get("initContainers"):
        spec.pop("initContainers", None)
    overrides = _parse_overrides(ann.get(keys.OVERRIDES))
    for key in ("containers", "initContainers"):
        for c in overrides.get(key, []):
            spec.setdefault(key, []).append(c)
    for name in (keys.STATUS, keys.OVERRIDES):
        ann.pop(name, None)
    return pod


def apply_overrides(pod: Obj, overrides: list[tuple[str, Obj]]) -> Obj:
    """The user's fields for an injected container win over the template's (``image: auto`` keeps ours)."""
    if not overrides:
        return pod
    recorded: dict[str, list[Obj]] = {}
    for user_list, c in overrides:
        recorded.setdefault(user_list, []).append(c)
        overlay = clone(c)
        if overlay.get("image") == AUTO_IMAGE:
            del overlay["image"]
        # Native sidecars move istio-proxy to initContainers: the overlay follows the container.
        target = next(
            (
                k
                for k in ("containers", "initContainers")
                if any(x.get("name") == c["name"] for x in pod["spec"].get(k) or [])
            ),
            user_list,
        )
        pod = merge_into(pod, {"spec": {target: [overlay]}})
    pod["metadata"].setdefault("annotations", {})[keys.OVERRIDES] = json.dumps(
        {k: recorded[k] for k in ("containers", "initContainers") if k in recorded},
        sort_keys=True,
        separators=(",", ":"),
    )
    return pod


def post_process(pod: Obj, template_pod: Obj, req: Request, s: Settings, r: Rendered, native: bool) -> None:
    meta = pod["metadata"]
    had_labels = "labels" in meta
    labels = meta.setdefault("labels", {})
    ann = meta.setdefault("annotations", {})
    _reorder(pod, s.hold_application)
    proxy = next((c for c in _all_containers(pod) if c.get("name") == PROXY), None)
    if proxy is not None:
        for name, value in req.proxy_env.items():
            _set_env(proxy, name, value)
        rewrite = (
            s.rewrite_probes
            if s.rewrite_probes is not None
            else req.config.values["sidecarInjectorWebhook"].get("rewriteAppHTTPProbe", True)
        )
        if r.rewrite_app_probes and rewrite and s.status_port != 0:
            probers = probes.rewrite(pod, s.status_port, PROXY)
            if probers is not None:
                _set_env(proxy, probes.ENV_NAME, probers)
        if r.prometheus_merge and s.prometheus_merge:
            scrape_env = prometheus.merge(ann, s.status_port)
            if scrape_env is not None:
                _set_env(proxy, prometheus.ENV_NAME, scrape_env)
    network = network_of(req, labels)
    if network:
        labels[NETWORK_LABEL] = network
    ann[keys.STATUS] = injection_status(template_pod, revision_of(req))
    for k, v in req.config.injected_annotations.items():
        ann.pop(k, None)  # re-set at the end, so re-injection prints the same order
        ann[k] = v
    if not labels and not had_labels:
        del meta["labels"]


def make_patch(before: Mapping[str, Any], after: Obj) -> list[Obj]:
    """RFC 6902 ops turning ``before`` into ``after``; managedFields are the API server's, never ours."""
    src = {**before, "metadata": {k: v for k, v in (before.get("metadata") or {}).items() if k != "managedFields"}}
    dst = {**after, "metadata": {k: v for k, v in (after.get("metadata") or {}).items() if k != "managedFields"}}
    if "metadata" not in before:
        src.pop("metadata")
    return jsondiff.make_patch(src, dst)


def injection_status(template_pod: Obj, revision: str) -> str:
    """The sidecar.istio.io/status value: what was injected, so it can be stripped later. Istio's field order."""
    spec = template_pod.get("spec") or {}

    def names(key: str) -> list[str] | None:
        items = [x["name"] for x in spec.get(key) or []]
        return items or None  # Go marshals an empty slice of a nil field as null

    status = {
        "initContainers": names("initContainers"),
        "containers": names("containers"),
        "volumes": names("volumes"),
        "imagePullSecrets": names("imagePullSecrets"),
        "revision": revision or "default",
    }
    return json.dumps(status, separators=(",", ":"))


def _parse_status(value: str) -> Obj:
    try:
        status = json.loads(value)
    except ValueError:
        status = None
    if not isinstance(status, dict):
        raise AnnotationError(keys.STATUS, value, "not the JSON object injection writes; remove it to re-inject")
    return status


def _parse_overrides(value: str | None) -> dict[str, list[Obj]]:
    if value is None:
        return {}
    try:
        doc = json.loads(value)
    except ValueError:
        doc = None
    if not isinstance(doc, dict) or not all(isinstance(v, list) for v in doc.values()):
        raise AnnotationError(keys.OVERRIDES, value, "not the JSON object injection writes; remove it to re-inject")
    return doc


def _all_containers(pod: Obj) -> list[Obj]:
    spec = pod.get("spec") or {}
    return [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]


def _container_names(docs: list[Obj]) -> set[str]:
    return {c["name"] for d in docs for c in _all_containers(d) if "name" in c}


def _user_proxy_uid(pod: Obj) -> int:
    """A user-set runAsUser on their istio-proxy becomes netinit's -u, so the proxy's own traffic is not captured."""
    for c in _all_containers(pod):
        if c.get("name") == PROXY:
            uid = (c.get("securityContext") or {}).get("runAsUser")
            if isinstance(uid, int) and not isinstance(uid, bool) and uid >= 0:
                return uid
    return PROXY_UID


def _split_overrides(pod: Obj, injected: set[str]) -> tuple[Obj, list[tuple[str, Obj]]]:
    """The pod without the user's containers that share an injected container's name, and those containers."""
    overrides: list[tuple[str, Obj]] = []
    spec = pod.get("spec") or {}
    for key in ("containers", "initContainers"):
        if key not in spec:
            continue
        overrides += [(key, c) for c in spec[key] if c.get("name") in injected]
        spec[key] = [c for c in spec[key] if c.get("name") not in injected]
        if not spec[key] and key == "initContainers":
            del spec[key]
    return pod, overrides


def _move(items: list[Obj], name: str, first: bool) -> list[Obj]:
    found = [c for c in items if c.get("name") == name]
    if not found:
        return items
    rest = [c for c in items if c.get("name") != name]
    return found + rest if first else rest + found


def _reorder(pod: Obj, hold: bool) -> None:
    """Istio's order: proxy last (first when holding the app); native: init, validation, proxy before the user's
    init containers; legacy: istio-init after the user's init containers so they keep their network."""
    spec = pod["spec"]
    if spec.get("containers"):
        spec["containers"] = _move(spec["containers"], PROXY, first=hold)
    inits = spec.get("initContainers")
    if not inits:
        return
    if any(c.get("name") == PROXY for c in inits):
        for name in (CORE_DUMP, PROXY, VALIDATION, INIT):
            inits = _move(inits, name, first=True)
    else:
        inits = _move(_move(inits, VALIDATION, first=True), INIT, first=False)
    spec["initContainers"] = inits


def _set_env(container: Obj, name: str, value: str) -> None:
    env = container.setdefault("env", [])
    for e in env:
        if e.get("name") == name:
            e.clear()
            e.update(name=name, value=value)
            return
    env.append({"name": name, "value": value})
