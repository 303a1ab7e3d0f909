"""The node agent's only link to the Kubernetes API: read a pod, list the node's pods, delete a pod (repair).

Standard library HTTP, not the ``kubernetes`` client: the agent ships in the small netinit image, and these are
three REST paths with a bounded timeout. ``Pods`` is the seam; :class:`HttpPods` the one implementation, in-cluster
(service-account token and CA, ``KUBERNETES_SERVICE_HOST``) or at an explicit URL (tests: the in-test API server).
The RBAC it needs: ``get``, ``list`` and ``delete`` on ``pods`` (manifests/overlays/cni).
"""

from __future__ import annotations

import json
import os
import ssl
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

SA_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")


class KubeError(Exception):
    """The API server could not answer (unreachable, timed out, refused us): the message says which."""


class Pods(Protocol):
    def get(self, namespace: str, name: str) -> Mapping[str, Any] | None: ...

    def on_node(self, node: str) -> list[Mapping[str, Any]]: ...

    def delete(self, namespace: str, name: str, uid: str) -> bool: ...


class HttpPods:
    def __init__(self, url: str, *, token: str | None = None, ca_file: str | None = None, timeout: float = 5.0):
        self.url, self.token, self.timeout = url.rstrip("/"), token, timeout
        self._ctx = ssl.create_default_context(cafile=ca_file) if url.startswith("https:") else None

    @classmethod
    def from_env(cls, url: str | None, timeout: float) -> HttpPods:
        """``url`` if given, else in-cluster: the service host and port, the service account's token and CA."""
        if url:
            return cls(url, timeout=timeout)
        host, port = os.environ.get("KUBERNETES_SERVICE_HOST"), os.environ.get("KUBERNETES_SERVICE_PORT", "443")
        if not host:
            raise KubeError("not in a cluster (no KUBERNETES_SERVICE_HOST) and no --kube-url given")
        host = f"[{host}]" if ":" in host else host
        token = (SA_DIR / "token").read_text().strip()
        return cls(f"https://{host}:{port}", token=token, ca_file=str(SA_DIR / "ca.crt"), timeout=timeout)

    def _call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method)
        req.add_header("Accept", "application/json")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout, context=self._ctx) as resp:
                return resp.status, json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as e:
            try:
                doc = json.loads(e.read() or b"null")
            except ValueError:
                doc = None
            if e.code == 404:
                return 404, doc
            message = doc.get("message") if isinstance(doc, dict) else None
            raise KubeError(f"{method} {path}: {e.code} {message or e.reason}") from None
        except (OSError, ValueError) as e:  # URLError, timeouts, refused, TLS, a non-JSON answer
            raise KubeError(f"{method} {path}: {getattr(e, 'reason', None) or e}") from None

    def get(self, namespace: str, name: str) -> Mapping[str, Any] | None:
        q = urllib.parse.quote
        status, doc = self._call("GET", f"/api/v1/namespaces/{q(namespace, '')}/pods/{q(name, '')}")
        return doc if status == 200 and isinstance(doc, dict) else None

    def on_node(self, node: str) -> list[Mapping[str, Any]]:
        selector = urllib.parse.quote(f"spec.nodeName={node}")
        _status, doc = self._call("GET", f"/api/v1/pods?fieldSelector={selector}")
        items = doc.get("items") if isinstance(doc, dict) else None
        return [p for p in items if isinstance(p, dict)] if isinstance(items, list) else []

    def delete(self, namespace: str, name: str, uid: str) -> bool:
        """Delete the pod if it is still the one we looked at (a UID precondition); False if it is gone."""
        q = urllib.parse.quote
        body = {"kind": "DeleteOptions", "apiVersion": "v1", "preconditions": {"uid": uid}}
        status, _doc = self._call("DELETE", f"/api/v1/namespaces/{q(namespace, '')}/pods/{q(name, '')}", body)
        return status != 404
