"""The `sidecar` template against Istio's injection template at the release it records (ISTIO_RELEASE).

The expected lists below are Istio's `injection-template.yaml` rendered with default values (the golden
`hello.yaml.injected` of that release): a proxyv2 image of that tag expects every one of these. A difference
that is deliberate is in docs/compat.md ("The sidecar template and Istio's").
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from injector.core.config import DEFAULTS_DIR, load_config
from injector.core.inject import inject
from injector.core.request import ISTIO_RELEASE, Request

ROOT = Path(__file__).resolve().parents[3]
CFG = load_config(env={})

# Istio's env order (injection-template.yaml, default values, no network/bootstrap override/proxyMetadata).
ISTIO_PROXY_ENV = [
    "PILOT_CERT_PROVIDER",
    "CA_ADDR",
    "POD_NAME",
    "POD_NAMESPACE",
    "INSTANCE_IP",
    "SERVICE_ACCOUNT",
    "HOST_IP",
    "ISTIO_CPU_LIMIT",
    "PROXY_CONFIG",
    "ISTIO_META_POD_PORTS",
    "ISTIO_META_APP_CONTAINERS",
    "GOMEMLIMIT",
    "GOMAXPROCS",
    "ISTIO_META_CLUSTER_ID",
    "ISTIO_META_NODE_NAME",
    "ISTIO_META_INTERCEPTION_MODE",
    "ISTIO_META_WORKLOAD_NAME",
    "ISTIO_META_OWNER",
    "ISTIO_META_MESH_ID",
    "TRUST_DOMAIN",
]
ISTIO_PROXY_MOUNTS = [
    ("workload-socket", "/var/run/secrets/workload-spiffe-uds"),
    ("credential-socket", "/var/run/secrets/credential-uds"),
    ("workload-certs", "/var/run/secrets/workload-spiffe-credentials"),
    ("istiod-ca-cert", "/var/run/secrets/istio"),
    ("istio-ca-crl", "/var/run/secrets/istio/crl"),
    ("istio-data", "/var/lib/istio/data"),
    ("istio-envoy", "/etc/istio/proxy"),
    ("istio-token", "/var/run/secrets/tokens"),
    ("istio-podinfo", "/etc/istio/pod"),
]
# The status annotation of Istio's hello.yaml.injected lists the volumes in this order.
ISTIO_VOLUMES = [
    "workload-socket",
    "credential-socket",
    "workload-certs",
    "istio-envoy",
    "istio-data",
    "istio-podinfo",
    "istio-token",
    "istiod-ca-cert",
    "istio-ca-crl",
]
ISTIO_PROXY_ARGS = [
    "proxy",
    "sidecar",
    "--domain",
    "$(POD_NAMESPACE).svc.cluster.local",
    "--proxyLogLevel=warning",
    "--proxyComponentLogLevel=misc:error",
    "--log_output_level=default:info",
]


def _pod(annotations: dict[str, str] | None = None, **meta: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "web",
            **meta,
            "annotations": {"inject.istio.io/templates": "sidecar", **(annotations or {})},
        },
        "spec": {"containers": [{"name": "app", "image": "app:1"}]},
    }


def _inject(p: dict[str, Any], native: str = "false") -> dict[str, Any]:
    return inject(Request(pod=p, namespace="shop", config=CFG, native_sidecar=native)).pod


def _container(pod: dict[str, Any], name: str) -> dict[str, Any]:
    spec = pod["spec"]
    return next(c for c in [*spec.get("initContainers", []), *spec["containers"]] if c["name"] == name)


def _env(c: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e for e in c.get("env", [])}


def test_the_istio_release_is_recorded_once_and_named_by_values_and_docs() -> None:
    values = yaml.safe_load((DEFAULTS_DIR / "values.yaml").read_text())
    assert values["global"]["tag"] == ISTIO_RELEASE  # the proxyv2 image the template is written for
    assert f"Istio {ISTIO_RELEASE}" in (ROOT / "docs" / "compat.md").read_text()
    assert "ISTIO_RELEASE" in CFG.templates["sidecar"]


def test_default_sidecar_proxy_has_exactly_istios_env_mounts_volumes_and_args() -> None:
    pod = _inject(_pod())
    proxy = _container(pod, "istio-proxy")
    assert [e["name"] for e in proxy["env"]] == ISTIO_PROXY_ENV
    assert [(m["name"], m["mountPath"]) for m in proxy["volumeMounts"]] == ISTIO_PROXY_MOUNTS
    assert [v["name"] for v in pod["spec"]["volumes"]] == ISTIO_VOLUMES
    assert proxy["args"] == ISTIO_PROXY_ARGS
    assert proxy["ports"] == [{"containerPort": 15090, "protocol": "TCP", "name": "http-envoy-prom"}]
    assert [c["name"] for c in pod["spec"]["initContainers"]] == ["istio-init"]
    assert pod["metadata"]["annotations"]["istio.io/rev"] == "default"


def test_resource_and_node_env_come_from_the_downward_api() -> None:
    env = _env(_container(_inject(_pod()), "istio-proxy"))
    for name, resource in (
        ("ISTIO_CPU_LIMIT", "limits.cpu"),
        ("GOMAXPROCS", "limits.cpu"),
        ("GOMEMLIMIT", "limits.memory"),
    ):
        assert env[name]["valueFrom"] == {"resourceFieldRef": {"resource": resource, "divisor": "1"}}
    assert env["ISTIO_META_NODE_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}


def test_crl_volume_is_an_optional_configmap() -> None:
    volumes = {v["name"]: v for v in _inject(_pod())["spec"]["volumes"]}
    assert volumes["istio-ca-crl"] == {"name": "istio-ca-crl", "configMap": {"name": "istio-ca-crl", "optional": True}}


def test_native_drain_asks_the_pods_status_port() -> None:
    proxy = _container(_inject(_pod({"status.sidecar.istio.io/port": "15555"}), native="true"), "istio-proxy")
    assert proxy["lifecycle"]["preStop"]["exec"]["command"] == [
        "pilot-agent",
        "request",
        "--debug-port=15555",
        "POST",
        "drain",
    ]


def test_workload_name_label_wins_and_owner_needs_a_name() -> None:
    env = _env(_container(_inject(_pod(labels={"service.istio.io/workload-name": "shop-web"})), "istio-proxy"))
    assert env["ISTIO_META_WORKLOAD_NAME"]["value"] == "shop-web"
    unnamed = _pod()
    del unnamed["metadata"]["name"]
    env = _env(_container(_inject(unnamed), "istio-proxy"))
    assert "ISTIO_META_WORKLOAD_NAME" not in env and "ISTIO_META_OWNER" not in env


def test_proxy_metadata_reaches_istio_init_in_the_sidecar_template_only() -> None:
    config = {"proxy.istio.io/config": "proxyMetadata: {ISTIO_META_DNS_CAPTURE: 'true'}"}
    init = _container(_inject(_pod(config)), "istio-init")
    assert init["env"] == [{"name": "ISTIO_META_DNS_CAPTURE", "value": "true"}]
    # The standalone Envoy has no DNS listener on 15053: capturing DNS there would break name resolution.
    envoy = _container(_inject(_pod({**config, "inject.istio.io/templates": "envoy"})), "istio-init")
    assert "env" not in envoy


def test_cap_net_bind_service_runs_the_proxy_as_root_with_the_capability() -> None:
    sc = _container(_inject(_pod({"sidecar.istio.io/capNetBindService": "true"})), "istio-proxy")["securityContext"]
    assert sc["capabilities"] == {"add": ["NET_BIND_SERVICE"], "drop": ["ALL"]}
    assert (sc["runAsUser"], sc["runAsGroup"], sc["runAsNonRoot"]) == (0, 1337, False)


def test_hbone_metadata_sets_the_tunnel_label() -> None:
    pod = _inject(_pod({"proxy.istio.io/config": "proxyMetadata: {ISTIO_META_ENABLE_HBONE: 'true'}"}))
    assert pod["metadata"]["labels"]["networking.istio.io/tunnel"] == "http"
