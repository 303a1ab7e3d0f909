"""Pod in, injected pod and JSON Patch out: the only module that knows the order of the steps.

The steps are Istio's, each a function of its own: `uninject` (undo a previous injection, so re-injection is
idempotent), `render` (templates -> partial pods), `merge` (strategic merge onto the pod, then the user's own
``istio-proxy``/``istio-init`` fields on top), `post_process` (container order, probe rewrite, Prometheus merge,
status metadata) and `make_patch` (a diff of before and after). Everything is pure over plain dicts: the webhook,
`kube-inject` and the tests call `inject` the same way.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import jinja2
import yaml

from injector.core import annotations as A
from injector.core import jsondiff, probes
from injector.core.annotations import Settings, capture_args, read_settings
from injector.core.config import InjectorConfig
from injector.core.envoy_bootstrap import bootstrap as envoy_bootstrap
from injector.core.merge import clone, merge_into
from injector.errors import AnnotationError, ConfigError, InjectorError, TemplateBroken, TemplateError

Obj = dict[str, Any]

PROXY = "istio-proxy"
INIT = "istio-init"
VALIDATION = "istio-validation"
CORE_DUMP = "enable-core-dump"
PROXY_UID = PROXY_GID = 1337
AUTO_IMAGE = "auto"
NATIVE_SIDECAR_MIN_VERSION = (1, 29)
NETWORK_LABEL = "topology.istio.io/network"
PROMETHEUS_ENV = "ISTIO_PROMETHEUS_ANNOTATIONS"
CLUSTER_ENV = "ISTIO_META_CLUSTER_ID"
NETWORK_ENV = "ISTIO_META_NETWORK"


@dataclass(frozen=True)
class Workload:
    """The object that owns the pod, for names in the proxy's metadata (Istio's DeploymentMeta/TypeMeta)."""

    name: str
    namespace: str
    kind: str = "Pod"
    api_version: str = "v1"


@dataclass(frozen=True)
class Request:
    pod: Mapping[str, Any]
    namespace: str
    config: InjectorConfig
    revision: str = ""
    # Kubernetes version of the API server, for nativeSidecar "auto"; None when unknown (offline).
    kube_version: tuple[int, int] | None = None
    # Overrides the config's nativeSidecar mode (kube-inject --native-sidecar): "auto" | "true" | "false".
    native_sidecar: str | None = None
    # Proxy env from the webhook URL (/inject/cluster/X/net/Y): set on the proxy, overriding the template's.
    proxy_env: Mapping[str, str] = field(default_factory=dict)
    workload: Workload | None = None


@dataclass(frozen=True)
class Result:
    pod: Obj
    patch: list[Obj]
    templates: tuple[str, ...]
    native: bool


@dataclass(frozen=True)
class Rendered:
    docs: list[Obj]  # one partial pod per template, in order
    rewrite_app_probes: bool
    prometheus_merge: bool


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
            pod = {**_CANARY, "metadata": {**_CANARY["metadata"], "annotations": {A.TEMPLATES: name}}}
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


def select_templates(config: InjectorConfig, settings: Settings) -> list[str]:
    wanted = list(settings.templates) if settings.templates is not None else list(config.default_templates)
    names = config.resolve_templates(wanted)
    for n in names:
        if n not in config.templates or n.startswith("_"):
            known = ", ".join(sorted(t for t in config.templates if not t.startswith("_")))
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
    if A.STATUS not in ann:
        return pod
    status = _parse_status(ann[A.STATUS])
    spec = pod.setdefault("spec", {})
    proxy = next((c for c in _all_containers(pod) if c.get("name") == PROXY), None)
    env = {e.get("name"): e.get("value") for e in (proxy or {}).get("env") or []}
    if isinstance(env.get(probes.ENV_NAME), str):
        probes.restore(pod, env[probes.ENV_NAME], PROXY)
    if isinstance(env.get(PROMETHEUS_ENV), str):
        scrape = json.loads(env[PROMETHEUS_ENV])
        for key, name in (("scrape", A.PROMETHEUS_SCRAPE), ("path", A.PROMETHEUS_PATH), ("port", A.PROMETHEUS_PORT)):
            if scrape.get(key):
                ann[name] = scrape[key]
            else:
                ann.pop(name, None)
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
    overrides = _parse_overrides(ann.get(A.OVERRIDES))
    for key in ("containers", "initContainers"):
        for c in overrides.get(key, []):
            spec.setdefault(key, []).append(c)
    for name in (A.STATUS, A.OVERRIDES):
        ann.pop(name, None)
    return pod


def render(req: Request, names: list[str], pod: Obj, s: Settings, native: bool, proxy_uid: int) -> Rendered:
    env = _environment(tuple(sorted(req.config.templates.items())))
    ctx = template_context(req, pod, s, native, proxy_uid)
    docs: list[Obj] = []
    rewrite = merge = False
    for name in names:
        try:
            module = env.get_template(name).make_module(ctx)
        except jinja2.TemplateError as e:  # refuse() raises our TemplateError, which passes through
            raise TemplateBroken(f"template {name!r} failed to render: {e}") from e
        docs.append(_parse_rendered(req.config, name, str(module)))
        rewrite = rewrite or bool(getattr(module, "rewrite_app_probes", False))
        merge = merge or bool(getattr(module, "prometheus_merge", False))
    return Rendered(docs, rewrite, merge)


_PARSE_CACHE_LIMIT = 512


def _parse_rendered(config: InjectorConfig, name: str, text: str) -> Obj:
    """Rendered YAML -> partial pod. Parsing is most of a render's cost and pods of one workload render the same
    text, so results are memoised per config (they are never mutated: merging copies what it takes)."""
    key = ("rendered", name, text)
    doc = config.cache.get(key)
    if doc is not None:
        return doc  # type: ignore[no-any-return]
    try:
        doc = yaml.load(text, Loader=_YAML_LOADER) or {}
    except yaml.YAMLError as e:
        raise TemplateBroken(f"template {name!r} did not render valid YAML: {e}") from e
    if not isinstance(doc, dict) or set(doc) - {"metadata", "spec"}:
        raise TemplateBroken(f"template {name!r} must render a mapping with only metadata and spec")
    doc = _drop_empty_lists(doc)
    if len(config.cache) >= _PARSE_CACHE_LIMIT:
        config.cache.clear()
    config.cache[key] = doc
    return doc


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
    pod["metadata"].setdefault("annotations", {})[A.OVERRIDES] = json.dumps(
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
            _prometheus_merge(ann, proxy, s.status_port)
    network = _network(req, labels)
    if network:
        labels[NETWORK_LABEL] = network
    ann[A.STATUS] = injection_status(template_pod, req.revision)
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


# --- template context -------------------------------------------------------------------------------------------


def template_context(req: Request, pod: Obj, s: Settings, native: bool, proxy_uid: int) -> dict[str, Any]:
    meta = pod.get("metadata") or {}
    labels = dict(meta.get("labels") or {})
    annotations = dict(meta.get("annotations") or {})
    values = req.config.values
    g = values["global"]
    workload = req.workload or workload_of(pod, req.namespace)
    app = [c["name"] for c in (pod.get("spec") or {}).get("containers") or [] if c.get("name") != PROXY]
    ports = [
        p
        for c in (pod.get("spec") or {}).get("containers") or []
        if c.get("name") != PROXY
        for p in c.get("ports") or []
    ]
    name, revision = canonical_service(labels, workload.name)
    return {
        "pod": pod,
        "labels": labels,
        "annotations": annotations,
        "values": values,
        "s": s,
        "proxy_config": s.proxy_config,
        "revision": req.revision,
        "native": native,
        "workload": workload,
        "proxy_uid": proxy_uid,
        "proxy_gid": PROXY_GID,
        "proxy_image": _image(s.proxy_image or g["proxy"]["image"], g),
        "init_image": _image(g["proxy_init"]["image"], g),
        "capture_args": capture_args(s, proxy_uid),
        "app_containers": app,
        "pod_ports": ports,
        "canonical_name": name,
        "canonical_revision": revision,
        "cluster_id": req.proxy_env.get(CLUSTER_ENV) or g["multiCluster"]["clusterName"] or "Kubernetes",
        "network": _network(req, labels),
    }


def _refuse(message: str) -> str:
    raise TemplateError(message)


@functools.cache
def _environment(templates: tuple[tuple[str, str], ...]) -> jinja2.Environment:
    """One Jinja environment per distinct template set (the config is immutable, so this is a pure cache)."""
    env = jinja2.Environment(
        loader=jinja2.DictLoader(dict(templates)),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,
    )
    env.filters["j"] = lambda v: json.dumps(v, ensure_ascii=True)
    env.filters["compact_json"] = lambda v: json.dumps(v, sort_keys=True, separators=(",", ":"))
    env.globals["envoy_bootstrap"] = envoy_bootstrap
    env.globals["refuse"] = _refuse
    return env


# libyaml when present: the pure-Python parser is most of the per-pod cost of a render.
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_LABEL_VALUE_EDGE = re.compile(r"^[^A-Za-z0-9]+|[^A-Za-z0-9]+$")


def canonical_service(labels: Mapping[str, str], workload_name: str) -> tuple[str, str]:
    """Istio's canonical service name and revision, cut to a valid (63-char) label value."""
    name = next(
        (labels[k] for k in (A.CANONICAL_NAME_LABEL, "app.kubernetes.io/name", "app") if labels.get(k)), workload_name
    )
    rev = next(
        (labels[k] for k in (A.CANONICAL_REVISION_LABEL, "app.kubernetes.io/version", "version") if labels.get(k)),
        "latest",
    )
    return _LABEL_VALUE_EDGE.sub("", name[:63]), _LABEL_VALUE_EDGE.sub("", rev[:63]) or "latest"


def workload_of(pod: Mapping[str, Any], namespace: str) -> Workload:
    """Istio's heuristic: the controller owner, with a ReplicaSet's pod-template-hash cut off to name the Deployment."""
    meta = pod.get("metadata") or {}
    labels = meta.get("labels") or {}
    name = meta.get("name") or ""
    if meta.get("generateName"):
        ref = next((r for r in meta.get("ownerReferences") or [] if r.get("controller")), None)
        if ref is not None:
            kind, api, name = ref.get("kind", "Pod"), ref.get("apiVersion", "v1"), ref.get("name", "")
            pod_hash = labels.get("pod-template-hash", "")
            if kind == "ReplicaSet" and pod_hash and name.endswith("-" + pod_hash):
                return Workload(name[: -len(pod_hash) - 1], namespace, "Deployment", "apps/v1")
            if kind == "Job" and re.fullmatch(r".+-\d{8,}", name):  # a CronJob's Job: <cronjob>-<scheduled minute>
                return Workload(name.rsplit("-", 1)[0], namespace, "CronJob", "batch/v1")
            return Workload(name, namespace, kind, api)
        name = name or meta["generateName"].rstrip("-")
    return Workload(name, namespace)


# --- helpers ----------------------------------------------------------------------------------------------------


def _image(image: str, g: Mapping[str, Any]) -> str:
    """Istio's rule: a value with "/" is a full reference, otherwise hub/<value>:tag."""
    return image if "/" in image else f"{g['hub']}/{image}:{g['tag']}"


def _network(req: Request, labels: Mapping[str, str]) -> str:
    return str(
        labels.get(NETWORK_LABEL) or req.proxy_env.get(NETWORK_ENV) or req.config.values["global"]["network"] or ""
    )


def _parse_status(value: str) -> Obj:
    try:
        status = json.loads(value)
    except ValueError:
        status = None
    if not isinstance(status, dict):
        raise AnnotationError(A.STATUS, value, "not the JSON object injection writes; remove it to re-inject")
    return status


def _parse_overrides(value: str | None) -> dict[str, list[Obj]]:
    if value is None:
        return {}
    try:
        doc = json.loads(value)
    except ValueError:
        doc = None
    if not isinstance(doc, dict) or not all(isinstance(v, list) for v in doc.values()):
        raise AnnotationError(A.OVERRIDES, value, "not the JSON object injection writes; remove it to re-inject")
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


def _drop_empty_lists(doc: Obj) -> Obj:
    """``initContainers:`` with nothing under it renders as null; to a merge that would mean 'delete'."""
    for part in ("metadata", "spec"):
        section = doc.get(part)
        if section is None:
            doc.pop(part, None)
        elif isinstance(section, dict):
            for k in [k for k, v in section.items() if v is None]:
                del section[k]
    return doc


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


def _prometheus_merge(ann: Obj, proxy: Obj, status_port: int) -> None:
    """Point Prometheus at the agent's merged metrics; the user's own scrape settings go to the agent in env."""
    if ann.get(A.PROMETHEUS_SCRAPE) == "false" or status_port == 0:
        return
    original = {
        "scrape": ann.get(A.PROMETHEUS_SCRAPE, ""),
        "path": ann.get(A.PROMETHEUS_PATH, ""),
        "port": ann.get(A.PROMETHEUS_PORT, ""),
    }
    _set_env(proxy, PROMETHEUS_ENV, json.dumps(original, separators=(",", ":")))
    ann[A.PROMETHEUS_SCRAPE] = "true"
    ann[A.PROMETHEUS_PORT] = str(status_port)
    ann[A.PROMETHEUS_PATH] = "/stats/prometheus"
