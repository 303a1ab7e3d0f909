"""Property: for generated pods the JSON Patch turns the original into exactly the injected pod, the result is a
valid Pod (strict OpenAPI schema), the patch touches only what injection owns, and re-injecting the result is a
fixed point."""

from __future__ import annotations

import copy
from typing import Any

import jsonpatch
import kubernetes_validate
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from injector.core.config import load_config
from injector.core.inject import inject
from injector.core.request import Request

CFG = load_config(env={})
K8S_VERSION = kubernetes_validate.latest_version()
NAME = st.from_regex(r"[a-z][a-z0-9-]{0,10}[a-z0-9]", fullmatch=True).filter(lambda n: not n.startswith("istio"))
PORT = st.integers(min_value=1, max_value=65535)
ENV = st.lists(
    st.fixed_dictionaries({"name": st.from_regex(r"[A-Z_]{1,8}", fullmatch=True), "value": st.text(max_size=8)}),
    max_size=4,
    unique_by=lambda e: e["name"],
)


@st.composite
def probe(draw: st.DrawFn, port_names: list[str]) -> dict[str, Any]:
    by_name = bool(port_names) and draw(st.booleans())
    port: Any = draw(st.sampled_from(port_names)) if by_name else draw(PORT)
    kind = draw(st.sampled_from(["httpGet", "tcpSocket", "grpc", "exec"]))
    handler: dict[str, Any] = {
        "httpGet": {"path": "/h", "port": port},
        "tcpSocket": {"port": port},
        "grpc": {"port": draw(PORT)},
        "exec": {"command": ["true"]},
    }[kind]
    return {kind: handler, "periodSeconds": draw(st.integers(1, 30))}


@st.composite
def container(draw: st.DrawFn, name: str) -> dict[str, Any]:
    ports = draw(st.lists(PORT, max_size=3, unique=True))
    port_names = [f"p{i}" for i in range(len(ports))]
    c: dict[str, Any] = {"name": name, "image": "img:1"}
    if ports:
        c["ports"] = [{"name": n, "containerPort": p} for n, p in zip(port_names, ports, strict=True)]
    env = draw(ENV)
    if env:
        c["env"] = env
    for field in ("readinessProbe", "livenessProbe", "startupProbe"):
        if draw(st.booleans()):
            c[field] = draw(probe(port_names))
    return c


@st.composite
def pods(draw: st.DrawFn) -> dict[str, Any]:
    names = draw(st.lists(NAME, min_size=1, max_size=3, unique=True))
    init_names = draw(st.lists(NAME.filter(lambda n: n not in names), max_size=2, unique=True))
    annotations = draw(
        st.dictionaries(
            st.sampled_from(
                ["inject.istio.io/templates", "sidecar.istio.io/nativeSidecar", "prometheus.io/port", "example.com/x"]
            ),
            st.just(""),
            max_size=3,
        )
    )
    fill = {
        "inject.istio.io/templates": draw(st.sampled_from(["sidecar", "envoy", "sidecar,envoy"])),
        "sidecar.istio.io/nativeSidecar": draw(st.sampled_from(["true", "false"])),
        "prometheus.io/port": str(draw(PORT)),
        "example.com/x": "y",
    }
    pod: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "gen", "labels": {"app": draw(NAME)}},
        "spec": {"containers": [draw(container(n)) for n in names]},
    }
    if annotations:
        pod["metadata"]["annotations"] = {k: fill[k] for k in annotations}
    if init_names:
        pod["spec"]["initContainers"] = [{"name": n, "image": "init:1"} for n in init_names]
    return pod


OWNED_PREFIXES = (
    "/metadata/labels",
    "/metadata/annotations",
    "/spec/containers",
    "/spec/initContainers",
    "/spec/volumes",
    "/spec/imagePullSecrets",
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pods())
def test_patch_reproduces_injection_and_touches_only_owned_fields(pod: dict[str, Any]) -> None:
    before = copy.deepcopy(pod)
    r = inject(Request(pod=pod, namespace="default", config=CFG))
    assert pod == before, "inject must not modify its input"
    assert jsonpatch.apply_patch(pod, r.patch) == r.pod
    kubernetes_validate.validate(r.pod, K8S_VERSION, strict=True)
    for op in r.patch:
        assert op["path"].startswith(OWNED_PREFIXES), op
    # Within containers, app containers only have probes/lifecycle rewritten (or move position).
    app = {c["name"]: c for c in before["spec"]["containers"]}
    for c in r.pod["spec"]["containers"]:
        if c["name"] in app:
            untouched = {k: v for k, v in c.items() if k not in ("readinessProbe", "livenessProbe", "startupProbe")}
            original = {
                k: v for k, v in app[c["name"]].items() if k not in ("readinessProbe", "livenessProbe", "startupProbe")
            }
            assert untouched == original
    again = inject(Request(pod=r.pod, namespace="default", config=CFG))
    assert again.pod == r.pod
    assert again.patch == []
