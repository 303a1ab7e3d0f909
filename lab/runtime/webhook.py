"""The webhook as it ships: the injector image, run by the podman kubelet from the Deployment's own pod template.

The Deployment comes from ``kubectl kustomize manifests/overlays/cert-manager`` (the shipped file-mode overlay:
the serving certificate is a mounted Secret, nothing talks to an API server), so its securityContext is the
one in manifests/base/deployment.yaml - uid/gid 65532, runAsNonRoot, read-only root filesystem, every
capability dropped, no privilege escalation, seccomp RuntimeDefault, fsGroup 65532 - and its volumes are made
as the kubelet makes them: the ``tmp`` emptyDir, the ConfigMap ``sidecar-injector-config`` (the overlay's own,
with ``global.envoy.image`` and ``global.proxy_init.image`` pointed at the locally built images) and the Secret
``sidecar-injector-tls`` (written by the lab: a fresh CA and a serving certificate for the Service the
MutatingWebhookConfiguration names, mode 0440 for the fsGroup).

:class:`WebhookContainer` is a :class:`~lab.webhook_process.WebhookProcess` whose server is that container:
``review()`` and therefore :func:`lab.apiserver.admit` speak verifying TLS to the pod IP on podman's bridge
(``sidecar-injector.sidecar-injector.svc`` checked against the lab's CA, as the API server checks the
caBundle). Not emulated: the ServiceAccount token the API server would add (file mode does not use it).
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from lab.runtime import kubelet
from lab.shell import LabError
from lab.webhook_process import WebhookProcess

REPO = Path(__file__).resolve().parents[2]
OVERLAY = REPO / "manifests" / "overlays" / "cert-manager"
CONTAINER = "sidecar-injector"
PORT_NAME = "https-webhook"


def rendered_overlay(overlay: Path = OVERLAY) -> list[dict[str, Any]]:
    """An overlay (the file-mode one by default) as ``kubectl kustomize`` renders it."""
    if shutil.which("kubectl") is None:
        raise LabError(f"kubectl is needed to render {overlay.relative_to(REPO)} (kubectl kustomize)")
    proc = subprocess.run(
        ["kubectl", "kustomize", str(overlay)], capture_output=True, text=True, timeout=60, check=False
    )
    if proc.returncode != 0:
        raise LabError(f"kubectl kustomize {overlay}: {proc.stderr.strip()}")
    return [d for d in yaml.safe_load_all(proc.stdout) if isinstance(d, dict)]


def deployment_pod(docs: list[dict[str, Any]], image: str) -> dict[str, Any]:
    """The pod the Deployment's ReplicaSet would create (its template; the image the one built here)."""
    deployment = next(d for d in docs if d.get("kind") == "Deployment")
    template = deployment["spec"]["template"]
    meta = {
        **template.get("metadata", {}),
        "name": "sidecar-injector-0",
        "namespace": deployment["metadata"]["namespace"],
    }
    spec = dict(template["spec"])
    spec["containers"] = [dict(c, image=image) if c["name"] == CONTAINER else c for c in spec["containers"]]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec}


def config_map(
    docs: list[dict[str, Any]], images: dict[str, str], values_override: Mapping[str, Any] | None = None
) -> dict[str, str]:
    """The overlay's ConfigMap data, with the proxy and init images set to the locally built ones (and
    ``values_override`` merged into its values, e.g. ``pilot.cni.enabled``)."""
    from injector.core.config import deep_merge

    cm = next(d for d in docs if d.get("kind") == "ConfigMap" and d["metadata"]["name"] == "sidecar-injector-config")
    data = {str(k): str(v) for k, v in cm["data"].items()}
    values = deep_merge(yaml.safe_load(data.get("values.yaml", "")) or {}, values_override or {})
    glob = values.setdefault("global", {})
    glob.setdefault("envoy", {})["image"] = images["envoy"]
    glob.setdefault("proxy_init", {})["image"] = images["netinit"]
    data["values.yaml"] = yaml.safe_dump(values, sort_keys=False)
    return data


class WebhookContainer(WebhookProcess):
    """``sidecar-injector serve`` in its own podman pod, under the Deployment's securityContext; a context
    manager like :class:`WebhookProcess` (``review``, ``get``, ``metric`` work the same, over the bridge)."""

    def __init__(
        self, images: dict[str, str], *, ready_timeout: float = 90.0, values: Mapping[str, Any] | None = None
    ) -> None:
        super().__init__(service="sidecar-injector", namespace="sidecar-injector")
        self.images = dict(images)
        self.values = dict(values or {})
        self.ready_timeout = ready_timeout
        self._stack = contextlib.ExitStack()
        self.pod: kubelet.PodmanPod | None = None

    def __enter__(self) -> WebhookContainer:
        super().__enter__()
        return self

    def start(self) -> None:
        import tempfile

        from injector.certs import crypto

        self._tmp = tempfile.TemporaryDirectory(prefix="lab-webhook-")
        self.workdir = Path(self._tmp.name)
        self.ca = crypto.make_ca()
        self.ca_file.write_bytes(self.ca.cert_pem)
        self.rotate(days=365, pause=0.0)
        docs = rendered_overlay()
        pod = deployment_pod(docs, self.images["injector"])
        secret = {
            "tls.crt": self.cert_file.read_text(),
            "tls.key": self.key_file.read_text(),
            "ca.crt": self.ca_file.read_text(),
        }
        self.pod = self._stack.enter_context(
            kubelet.run_pod(
                pod,
                config_maps={"sidecar-injector-config": config_map(docs, self.images, self.values)},
                secrets={"sidecar-injector-tls": secret},
                ready_timeout=self.ready_timeout,
            )
        )
        container = next(c for c in pod["spec"]["containers"] if c["name"] == CONTAINER)
        self.host = self.pod.ip
        self.port = next(int(p["containerPort"]) for p in container["ports"] if p.get("name") == PORT_NAME)
        self._ctx = self.context()
        status, body = self.get("/readyz")
        if status != 200:
            raise LabError(f"the webhook container is not ready ({status}): {body}\n{self.log_text()}")

    def log_text(self) -> str:
        if self.pod is None:
            return ""
        try:
            return self.pod.logs(CONTAINER)
        except LabError:
            return ""

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        self._stack.close()
        self.pod = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
