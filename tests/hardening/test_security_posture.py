"""Security posture, asserted: Pod Security Standards for the webhook and for injected pods, RBAC that is
exactly what the code uses, and no key material in logs."""

from __future__ import annotations

import re
import subprocess
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from injector.certs.kube import ClientKubeApi
from injector.certs.lifecycle import ensure_serving_cert
from injector.core.config import InjectorConfig, deep_merge, load_config
from injector.core.inject import inject
from injector.core.request import Request
from tests.support.kube_server import running

ROOT = Path(__file__).resolve().parents[2]
CFG = load_config(env={})
RESTRICTED_VOLUMES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
}


def restricted_violations(pod_spec: dict[str, Any], container: dict[str, Any]) -> list[str]:
    """Pod Security Standards "restricted" (v1.2x) for one container in its pod, as the admission plugin checks."""
    out: list[str] = []
    psc, sc = pod_spec.get("securityContext") or {}, container.get("securityContext") or {}
    for f in ("hostNetwork", "hostPID", "hostIPC"):
        if pod_spec.get(f):
            out.append(f)
    if sc.get("privileged"):
        out.append("privileged")
    if sc.get("allowPrivilegeEscalation") is not False:
        out.append("allowPrivilegeEscalation != false")
    caps = sc.get("capabilities") or {}
    if "ALL" not in (caps.get("drop") or []):
        out.append("capabilities.drop lacks ALL")
    extra = set(caps.get("add") or []) - {"NET_BIND_SERVICE"}
    if extra:
        out.append(f"capabilities.add {sorted(extra)}")
    non_root = sc.get("runAsNonRoot", psc.get("runAsNonRoot"))
    if non_root is not True:
        out.append("runAsNonRoot != true")
    if sc.get("runAsUser", psc.get("runAsUser")) == 0:
        out.append("runAsUser 0")
    seccomp = (sc.get("seccompProfile") or psc.get("seccompProfile") or {}).get("type")
    if seccomp not in ("RuntimeDefault", "Localhost"):
        out.append("seccompProfile not RuntimeDefault/Localhost")
    for v in pod_spec.get("volumes") or []:
        kinds = set(v) - {"name"}
        if not kinds <= RESTRICTED_VOLUMES:
            out.append(f"volume {v['name']} {sorted(kinds)}")
    for p in container.get("ports") or []:
        if p.get("hostPort"):
            out.append("hostPort")
    return out


def manifests(path: str = "manifests/") -> list[dict[str, Any]]:
    text = subprocess.run(["kubectl", "kustomize", str(ROOT / path)], capture_output=True, text=True, check=True).stdout
    return [d for d in yaml.safe_load_all(text) if d]


@pytest.mark.parametrize("path", ["manifests/", "manifests/overlays/cert-manager"])
def test_webhook_deployment_is_restricted(path: str) -> None:
    dep = next(d for d in manifests(path) if d["kind"] == "Deployment")
    spec = dep["spec"]["template"]["spec"]
    for c in spec["containers"]:
        assert restricted_violations(spec, c) == [], c["name"]


CNI_CFG = replace(CFG, values=deep_merge(CFG.values, {"pilot": {"cni": {"enabled": True}}}), cache={})


def injected_pod(template: str, native: bool, mode: str = "REDIRECT", config: InjectorConfig = CFG) -> dict[str, Any]:
    annotations = {"inject.istio.io/templates": template, "sidecar.istio.io/interceptionMode": mode}
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "p", "annotations": annotations},
        "spec": {
            "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [
                {
                    "name": "app",
                    "image": "a:1",
                    "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
                }
            ],
        },
    }
    return inject(Request(pod=pod, namespace="ns", config=config, native_sidecar="true" if native else "false")).pod


@pytest.mark.parametrize("template", ["sidecar", "envoy"])
@pytest.mark.parametrize("native", [False, True], ids=["legacy", "native"])
def test_injected_proxy_is_restricted_and_only_istio_init_is_privileged(template: str, native: bool) -> None:
    pod = injected_pod(template, native)
    spec = pod["spec"]
    bare = {**spec, "securityContext": {}}  # the proxy must not rely on the pod's settings
    by_name = {c["name"]: c for c in [*spec.get("initContainers", []), *spec["containers"]]}
    assert restricted_violations(bare, by_name["istio-proxy"]) == []
    assert restricted_violations(spec, by_name["app"]) == []
    # istio-init needs root with NET_ADMIN/NET_RAW to program the pod's netfilter, and nothing more (it runs
    # under values global.proxy.seccompProfile, RuntimeDefault, like the proxy).
    assert restricted_violations(bare, by_name["istio-init"]) == [
        "capabilities.add ['NET_ADMIN', 'NET_RAW']",
        "runAsNonRoot != true",
        "runAsUser 0",
    ]
    assert not by_name["istio-init"]["securityContext"]["privileged"]


@pytest.mark.parametrize("template", ["sidecar", "envoy"])
@pytest.mark.parametrize("native", [False, True], ids=["legacy", "native"])
def test_an_injected_pod_in_cni_mode_is_restricted_through_and_through(template: str, native: bool) -> None:
    """pilot.cni.enabled: istio-validation replaces istio-init, and then every container of the pod passes the
    restricted checks - on its own settings, not the pod's."""
    spec = injected_pod(template, native, config=CNI_CFG)["spec"]
    bare = {**spec, "securityContext": {}}
    containers = {c["name"]: c for c in [*spec.get("initContainers", []), *spec["containers"]]}
    assert "istio-init" not in containers
    validation = containers["istio-validation"]
    assert (
        validation["securityContext"]["runAsUser"] == 1337 and validation["securityContext"]["readOnlyRootFilesystem"]
    )
    assert validation["args"][-2:] == ["--run-validation", "--skip-rule-apply"]
    assert restricted_violations(bare, validation) == []
    assert restricted_violations(bare, containers["istio-proxy"]) == []
    for c in containers.values():
        assert restricted_violations(spec, c) == [], c["name"]
    # the same pod without CNI mode does not pass: the check can fail
    plain = injected_pod(template, native)["spec"]
    init = next(c for c in plain["initContainers"] if c["name"] == "istio-init")
    assert restricted_violations(plain, init)


def test_tproxy_proxy_needs_net_admin_documented_exception() -> None:
    """TPROXY (sidecar template only) runs the proxy as root with NET_ADMIN, as in Istio: the documented exception."""
    pod = injected_pod("sidecar", native=False, mode="TPROXY")
    proxy = next(c for c in pod["spec"]["containers"] if c["name"] == "istio-proxy")
    assert restricted_violations({}, proxy) == ["capabilities.add ['NET_ADMIN']", "runAsNonRoot != true", "runAsUser 0"]


# --- RBAC: exactly what the code uses -------------------------------------------------------------------------

_PATHS = [
    (re.compile(r"/api/v1/namespaces/[^/]+/secrets"), "", "secrets", None),
    (re.compile(r"/api/v1/namespaces/[^/]+/secrets/(?P<name>[^/]+)"), "", "secrets", "name"),
    (
        re.compile(r"/apis/admissionregistration\.k8s\.io/v1/mutatingwebhookconfigurations/(?P<name>[^/]+)"),
        "admissionregistration.k8s.io",
        "mutatingwebhookconfigurations",
        "name",
    ),
]
_VERBS = {"GET": "get", "POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}


def used_permissions() -> set[tuple[str, str, str, str | None]]:
    """Every (verb, apiGroup, resource, name) the code sends, recorded by the in-test API server over the whole
    certificate life cycle: first start, second replica, renewal, CA rotation, version discovery."""
    ns, secret, mwc = "sidecar-injector", "sidecar-injector-tls", "sidecar-injector"
    now = datetime.now(UTC)
    with running() as kube:
        kube.add_mwc(mwc, ["a.sidecar-injector.io"])
        with ClientKubeApi(host=kube.url, verify=False) as api:
            for when in (now, now, now + timedelta(days=350), now + timedelta(days=3640)):
                ensure_serving_cert(
                    api, namespace=ns, secret_name=secret, service="sidecar-injector", mwc_name=mwc, now=when
                )
            api.server_version()
        used = set()
        for r in kube.requests:
            path = r.path.split("?")[0]
            if path.rstrip("/") == "/version":
                continue  # non-resource URL, readable by every authenticated client (system:public-info-viewer)
            for rx, group, resource, name_group in _PATHS:
                m = rx.fullmatch(path)
                if m:
                    used.add((_VERBS[r.method], group, resource, m[name_group] if name_group else None))
                    break
            else:
                raise AssertionError(f"unmapped API call {r.method} {path}")
    return used


def granted_permissions() -> set[tuple[str, str, str, str | None]]:
    out = set()
    for d in manifests():
        if d["kind"] not in ("Role", "ClusterRole"):
            continue
        for rule in d["rules"]:
            for verb in rule["verbs"]:
                for group in rule["apiGroups"]:
                    for resource in rule["resources"]:
                        for name in rule.get("resourceNames") or [None]:
                            out.add((verb, group, resource, name))
    return out


def test_rbac_grants_exactly_what_the_code_uses() -> None:
    used, granted = used_permissions(), granted_permissions()

    def allowed(u: tuple[str, str, str, str | None]) -> bool:
        verb, group, resource, name = u
        return (verb, group, resource, None) in granted or (verb, group, resource, name) in granted

    assert all(allowed(u) for u in used), sorted(u for u in used if not allowed(u))
    unused = {g for g in granted if not any(u[:3] == g[:3] for u in used)}
    assert not unused, f"granted but never used: {sorted(unused)}"
    # create cannot be limited by name (the object does not exist yet); everything else is.
    assert {g for g in granted if g[3] is None} == {("create", "", "secrets", None)}


@pytest.mark.parametrize("bad", ["false", "true", 1, None])
def test_a_non_boolean_cni_value_is_refused(tmp_path: Path, bad: object) -> None:
    """values pilot.cni.enabled "false" (a string) must not switch CNI mode on, nor anything but a bool pass."""
    from injector.errors import ConfigError

    (tmp_path / "values.yaml").write_text(yaml.safe_dump({"pilot": {"cni": {"enabled": bad}}}))
    with pytest.raises(ConfigError, match=r"pilot\.cni\.enabled must be true or false"):
        load_config(tmp_path, env={})
