"""Templates -> partial pods: the Jinja environment, the context a template sees, and the parse of its output.

Templates emit every value through ``| j`` (JSON), so annotation values can never add YAML structure.
"""

from __future__ import annotations

import functools
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

import jinja2
import yaml

from injector.core import annotations as keys
from injector.core.annotations import Settings, capture_args
from injector.core.config import InjectorConfig
from injector.core.envoy_bootstrap import bootstrap as envoy_bootstrap
from injector.core.request import CLUSTER_ENV, NETWORK_ENV, NETWORK_LABEL, PROXY, PROXY_GID, Obj, Request, Workload
from injector.errors import TemplateBroken, TemplateError


@dataclass(frozen=True)
class Rendered:
    docs: list[Obj]  # one partial pod per template, in order
    rewrite_app_probes: bool
    prometheus_merge: bool


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
        "revision": revision_of(req),
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
        "network": network_of(req, labels),
        "concurrency": envoy_concurrency(s, _user_proxy_cpu_limit(pod)),
    }


# What pilot-agent gives Envoy when ProxyConfig says nothing and the CPU limit is unknown (Istio's default).
DEFAULT_CONCURRENCY = 2
_SUFFIX = {"m": Decimal("0.001"), "": Decimal(1), "k": Decimal(10) ** 3, "M": Decimal(10) ** 6}
_SUFFIX |= {"G": Decimal(10) ** 9, "T": Decimal(10) ** 12, "P": Decimal(10) ** 15, "E": Decimal(10) ** 18}
_SUFFIX |= {s + "i": Decimal(2) ** (10 * n) for n, s in enumerate("KMGTPE", start=1)}
_CPU = re.compile(r"^\+?((?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$")


def cpu_cores(quantity: object) -> Decimal | None:
    """A Kubernetes CPU quantity ("1500m", "2", 0.5, "1e3m") in cores; None when it is not one."""
    m = _CPU.match(str(quantity).strip())
    if not m:
        return None
    try:
        return Decimal(m.group(1)) * _SUFFIX[m.group(2) or ""]
    except InvalidOperation:
        return None


def envoy_concurrency(s: Settings, cpu_limit: object = None) -> int | None:
    """Envoy's --concurrency as Istio's agent picks it: ProxyConfig ``concurrency`` when set (0: no flag, Envoy's
    own default of one worker per host core), else the proxy's CPU limit rounded up to whole cores (at least 1),
    as the agent reads it from ISTIO_CPU_LIMIT, else 2. ``cpu_limit`` is the user's own istio-proxy limit,
    which wins over the annotations and values like the rest of their container."""
    configured = s.proxy_config.get("concurrency")
    if configured is not None:
        return int(configured) or None
    for limit in (cpu_limit, s.resources.limits.get("cpu")):
        cores = cpu_cores(limit) if limit is not None else None
        if cores is not None:
            return max(1, math.ceil(cores))
    return DEFAULT_CONCURRENCY


def _user_proxy_cpu_limit(pod: Mapping[str, Any]) -> object:
    spec = pod.get("spec") or {}
    for c in [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]:
        if c.get("name") == PROXY:
            limits = (c.get("resources") or {}).get("limits") or {}
            return limits.get("cpu") if isinstance(limits, Mapping) else None
    return None


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
        (labels[k] for k in (keys.CANONICAL_NAME_LABEL, "app.kubernetes.io/name", "app") if labels.get(k)),
        workload_name,
    )
    rev = next(
        (labels[k] for k in (keys.CANONICAL_REVISION_LABEL, "app.kubernetes.io/version", "version") if labels.get(k)),
        "latest",
    )
    return _LABEL_VALUE_EDGE.sub("", name[:63]), _LABEL_VALUE_EDGE.sub("", rev[:63]) or "latest"


def workload_of(pod: Mapping[str, Any], namespace: str) -> Workload:
    """Istio's heuristic (kube.GetDeployMetaFromPod): the controller owner, with a ReplicaSet's pod-template-hash
    cut off to name the Deployment (or Argo Rollout), a ReplicationController's ``deploymentconfig`` label for an
    OpenShift DeploymentConfig, and a Job's schedule suffix cut off to name the CronJob."""
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
            rollout_hash = labels.get("rollouts-pod-template-hash", "")
            if kind == "ReplicaSet" and rollout_hash and name.endswith("-" + rollout_hash):  # an Argo Rollout
                return Workload(name[: -len(rollout_hash) - 1], namespace, "Rollout", "v1alpha1")
            if kind == "ReplicationController" and labels.get("deploymentconfig"):  # an OpenShift DeploymentConfig
                return Workload(str(labels["deploymentconfig"]), namespace, "DeploymentConfig", api)
            m = re.fullmatch(r"(.+)-\d{8,10}", name)  # a CronJob's Job: <cronjob>-<scheduled minute>
            if kind == "Job" and m:
                return Workload(m.group(1), namespace, "CronJob", "batch/v1")
            return Workload(name, namespace, kind, api)
        name = name or meta["generateName"].rstrip("-")
    return Workload(name, namespace)


# --- helpers ----------------------------------------------------------------------------------------------------


def _image(image: str, g: Mapping[str, Any]) -> str:
    """Istio's rule: a value with "/" is a full reference, otherwise hub/<value>:tag."""
    return image if "/" in image else f"{g['hub']}/{image}:{g['tag']}"


def revision_of(req: Request) -> str:
    """The control-plane revision: the webhook's/kube-inject's --revision, else values ``revision``."""
    return str(req.revision or req.config.values.get("revision") or "")


def network_of(req: Request, labels: Mapping[str, str]) -> str:
    return str(
        labels.get(NETWORK_LABEL) or req.proxy_env.get(NETWORK_ENV) or req.config.values["global"]["network"] or ""
    )


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
