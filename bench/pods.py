"""The pods the benchmarks bring up, and injection as a user configures it (shipped config + their knobs)."""

from __future__ import annotations

import copy
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml

from injector.core.config import deep_merge, load_config
from injector.core.inject import inject
from injector.core.request import Request
from lab import apiserver

APP_PORT = 8080
Injector = Callable[[dict[str, Any]], dict[str, Any]]


def app_pod(name: str, image: str = "bench/httpload") -> dict[str, Any]:
    """A Pod as `kubectl apply` sends it: one app container on APP_PORT."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {"containers": [{"name": "app", "image": image, "ports": [{"containerPort": APP_PORT}]}]},
    }


def shipped_images(images: Mapping[str, str]) -> dict[str, Any]:
    """Values that make injection use the images ``make images`` built (``podman.Built.images``), as an install
    that pushed them to its own registry would set them."""
    return {"global": {"envoy": {"image": images["envoy"]}, "proxy_init": {"image": images["netinit"]}}}


def injector(values: dict[str, Any], annotations: dict[str, str], native: str | None = None) -> Injector:
    """Injection as the shipped configuration does it (the pure core that `kube-inject` and the webhook share),
    with ``values`` merged over the shipped values and ``annotations`` on the pod: the knobs a user has."""
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("config.yaml", "values.yaml"):
            shutil.copy(apiserver.SHIPPED_CONFIG_DIR / name, tmp)
        shipped = yaml.safe_load((Path(tmp) / "values.yaml").read_text()) or {}
        (Path(tmp) / "values.yaml").write_text(yaml.safe_dump(deep_merge(shipped, values)))
        config = load_config(tmp, env={})

    def run(pod: dict[str, Any]) -> dict[str, Any]:
        pod = copy.deepcopy(pod)
        pod["metadata"].setdefault("annotations", {}).update(annotations)
        return inject(Request(pod=pod, namespace="bench", config=config, native_sidecar=native)).pod

    return run
