"""Reaching a sidecar's Envoy admin API: a URL given, or a pod's 15000 through ``kubectl port-forward``.

Why kubectl and not the ``kubernetes`` client: port-forwarding is a streaming (SPDY/WebSocket) conversation
through the API server, which is not in the injector's small ``KubeApi`` seam (certificates only), and kubectl
already carries the user's kubeconfig with its auth plugins (EKS, GKE, OIDC exec credentials). It is also what
istioctl users do by hand (``kubectl port-forward pod 15000``), so ``--admin`` after that works the same.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

ADMIN_PORT = 15000
PROXY_CONTAINER = "istio-proxy"


class ProxyConfigError(Exception):
    """The proxy cannot be read (unreachable, not a proxy, not an Envoy); exit 1 with this message."""


def _fetch(admin: str, path: str, timeout: float, method: str = "GET") -> bytes:
    url = admin.rstrip("/") + path
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method=method), timeout=timeout) as resp:
            body: bytes = resp.read()
            return body
    except urllib.error.HTTPError as e:
        first = e.read().decode(errors="replace").strip().splitlines()[:1] or [str(e.code)]
        raise ProxyConfigError(f"{method} {url}: {e.code} {first[0]}") from None
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", e)
        raise ProxyConfigError(f"cannot reach the Envoy admin API at {admin}: {reason}") from None


def post_text(admin: str, path: str, timeout: float = 10.0) -> str:
    """A POST to the admin API (Envoy takes changes, such as /logging, only by POST); its text."""
    return _fetch(admin, path, timeout, "POST").decode(errors="replace")


def get_json(admin: str, path: str, timeout: float = 10.0) -> Any:
    url = admin.rstrip("/") + path
    body = _fetch(admin, path, timeout)
    try:
        return json.loads(body)
    except ValueError:
        raise ProxyConfigError(f"{url} did not answer JSON: not an Envoy admin API? ({body[:80]!r})") from None


def _kubectl() -> str:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        raise ProxyConfigError("a POD target needs kubectl on PATH (or give --admin URL after a port-forward)")
    return kubectl


def check_pod(name: str, namespace: str, kubectl_args: list[str], timeout: float = 30.0) -> None:
    """The pod exists and has an istio-proxy container (as a container or a native sidecar)."""
    cmd = [_kubectl(), *kubectl_args, "get", "pod", name, "-n", namespace, "-o", "json"]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise ProxyConfigError(f"kubectl get pod {namespace}/{name} did not answer within {timeout:g}s") from None
    if res.returncode != 0:
        raise ProxyConfigError(f"kubectl get pod {namespace}/{name}: {res.stderr.strip() or res.returncode}")
    try:
        spec = json.loads(res.stdout).get("spec") or {}
    except (ValueError, AttributeError):
        raise ProxyConfigError(f"kubectl get pod {namespace}/{name} did not print a pod") from None
    names = [c.get("name") for c in [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]]
    if PROXY_CONTAINER not in names:
        raise ProxyConfigError(
            f"pod {namespace}/{name} has no {PROXY_CONTAINER} container: it is not injected "
            "(sidecar-injector kube-inject, or label its namespace istio-injection=enabled)"
        )


@contextlib.contextmanager
def port_forward(name: str, namespace: str, kubectl_args: list[str], timeout: float = 15.0) -> Iterator[str]:
    """``kubectl port-forward pod/NAME :15000`` for the duration; yields the admin URL on localhost."""
    cmd = [_kubectl(), *kubectl_args, "port-forward", "-n", namespace, f"pod/{name}", f":{ADMIN_PORT}",
           "--address", "127.0.0.1"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        import selectors

        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ)
            line = proc.stdout.readline() if sel.select(timeout) else ""
        m = re.search(r"Forwarding from 127\.0\.0\.1:(\d+)", line)
        if not m:
            err = proc.stderr.read() if proc.poll() is not None and proc.stderr else ""
            raise ProxyConfigError(f"kubectl port-forward to {namespace}/{name}:{ADMIN_PORT} failed: {err or line}")
        yield f"http://127.0.0.1:{m.group(1)}"
    finally:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)
        if proc.poll() is None:
            proc.kill()
