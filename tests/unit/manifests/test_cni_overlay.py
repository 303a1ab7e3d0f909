"""manifests/overlays/cni as `kubectl kustomize` renders it: valid objects, the node agent's privileges limited
to what programming a pod needs, read-only RBAC (repair's delete apart), the injector switched to CNI mode."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import yaml

from injector.core.config import load_config

from .test_manifests import ROOT, kustomize, one

OVERLAY = "manifests/overlays/cni"


def _docs() -> list[dict[str, Any]]:
    return kustomize(OVERLAY)


def test_the_overlay_renders_valid_objects_on_top_of_the_base() -> None:
    docs = _docs()
    version = kubernetes_validate.latest_version()
    for obj in docs:
        kubernetes_validate.validate(obj, version, strict=True)
    base = {(o["kind"], o["metadata"]["name"]) for o in kustomize("manifests")}
    assert base <= {(o["kind"], o["metadata"]["name"]) for o in docs}


def test_the_node_agent_has_only_what_it_needs() -> None:
    ds = one(_docs(), "DaemonSet", "netinit-cni")
    assert ds["metadata"]["namespace"] == "kube-system"
    spec = ds["spec"]["template"]["spec"]
    assert spec["hostNetwork"] is True and spec["serviceAccountName"] == "netinit-cni"
    (c,) = spec["containers"]
    sc = c["securityContext"]
    assert sc["privileged"] is False and sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"]
    assert sc["capabilities"] == {"drop": ["ALL"], "add": ["NET_ADMIN", "NET_RAW", "SYS_ADMIN", "SETUID", "SETGID"]}
    assert c["command"] == ["netinit-cni"] and c["args"][0] == "agent"
    args = dict(zip(c["args"][1::2], c["args"][2::2], strict=False))
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    # the installer's paths inside the container are the node's CNI dirs
    assert volumes[mounts[args["--cni-conf-dir"]]]["hostPath"]["path"] == "/etc/cni/net.d"
    assert volumes[mounts[args["--cni-bin-dir"]]]["hostPath"]["path"] == "/opt/cni/bin"
    assert str(Path(args["--socket"]).parent) in mounts and args["--plugin-binary"].startswith("/usr/local/lib/")
    assert {"/run", "/run/netns"} <= set(mounts)
    probe_port = c["readinessProbe"]["httpGet"]["port"]
    assert probe_port == int(args["--health-port"]) and c["livenessProbe"]["httpGet"]["path"] == "/healthz"


def test_rbac_reads_pods_and_repair_is_a_separate_grant() -> None:
    docs = _docs()
    assert one(docs, "ClusterRole", "netinit-cni")["rules"] == [
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]}
    ]
    assert one(docs, "ClusterRole", "netinit-cni-repair")["rules"] == [
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["delete"]}
    ]
    for name in ("netinit-cni", "netinit-cni-repair"):
        binding = one(docs, "ClusterRoleBinding", name)
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "netinit-cni", "namespace": "kube-system"}]


def test_the_injector_runs_in_cni_mode_with_the_base_values_otherwise(tmp_path: Path) -> None:
    cm = one(_docs(), "ConfigMap", "sidecar-injector-config")
    values = yaml.safe_load(cm["data"]["values.yaml"])
    assert values.pop("pilot") == {"cni": {"enabled": True}}
    assert values == yaml.safe_load((ROOT / "manifests" / "base" / "config" / "values.yaml").read_text())
    for key, text in cm["data"].items():
        (tmp_path / key).write_text(text)
    assert load_config(tmp_path).values["pilot"]["cni"]["enabled"] is True
