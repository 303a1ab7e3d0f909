"""The e2e tree: one real webhook for the whole session, pods built from a small template.

Every test here is ``requires_root`` (network namespaces, iptables, setpriv); tests/conftest.py turns a skip into
a failure on CI.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import kubernetes_validate  # noqa: F401 - a hard requirement here: admit() schema-checks every injected pod
import pytest

from lab import apiserver, podlab
from lab.webhook_process import WebhookProcess

ENABLED = {"istio-injection": "enabled"}


@pytest.fixture(scope="session")
def webhook() -> Iterator[WebhookProcess]:
    """`sidecar-injector serve` with the shipped ConfigMap contents (manifests/base/config), TLS on localhost."""
    with apiserver.shipped_webhook(apiserver.SHIPPED_CONFIG_DIR) as hook:
        yield hook


def make_pod(
    name: str = "web",
    *,
    labels: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
    port: int = 8080,
) -> dict[str, Any]:
    """A Pod as `kubectl apply` would send it: one app container (the podlab echo server) on ``port``."""
    meta: dict[str, Any] = {"name": name, "labels": {"app": name, **(labels or {})}}
    if annotations:
        meta["annotations"] = dict(annotations)
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": meta,
        "spec": {"containers": [{"name": name, "image": "podlab/echo:1", "ports": [{"containerPort": port}]}]},
    }


def inject(
    webhook: WebhookProcess, pod: dict[str, Any], namespace_labels: dict[str, str] | None = None, ns: str = "shop"
) -> dict[str, Any]:
    """Admit ``pod`` into a namespace labelled ``istio-injection=enabled`` (or ``namespace_labels``); asserts that
    it came back injected."""
    out = apiserver.admit(
        copy.deepcopy(pod), ENABLED if namespace_labels is None else namespace_labels, webhook, namespace=ns
    )
    assert any(c["name"] == "istio-proxy" for c in podlab.all_containers(out)), "the pod was not injected"
    return out


def delta(before: dict[str, int], after: dict[str, int], *names: str) -> dict[str, int]:
    """How much each Envoy stat grew."""
    return {n: after.get(n, 0) - before.get(n, 0) for n in names}
