"""The envoy template's proxy command line, exactly as injected, passes the real Envoy's `--mode validate`."""

from __future__ import annotations

import subprocess
from typing import Any

import pytest

from injector.core.config import load_config
from injector.core.inject import inject
from injector.core.request import Request
from lab.shell import envoy_binary

CFG = load_config(env={})


def proxy_command(annotations: dict[str, str], native: str = "false") -> list[str]:
    pod: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "web", "annotations": {"inject.istio.io/templates": "envoy", **annotations}},
        "spec": {"containers": [{"name": "app", "image": "app:1"}]},
    }
    r = inject(Request(pod=pod, namespace="shop", config=CFG, native_sidecar=native))
    spec = r.pod["spec"]
    proxy = next(c for c in [*spec.get("initContainers", []), *spec["containers"]] if c["name"] == "istio-proxy")
    assert proxy["command"] == ["envoy"]
    # What kubelet does with $(VAR) references to the container's env before exec.
    return [a.replace("$(POD_NAME)", "web-0").replace("$(POD_NAMESPACE)", "shop") for a in proxy["args"]]


@pytest.mark.parametrize(
    "annotations",
    [
        {},
        {"sidecar.istio.io/logLevel": "debug", "sidecar.istio.io/componentLogLevel": "upstream:trace,http:debug"},
        {"sidecar.istio.io/logLevel": "warning", "sidecar.istio.io/componentLogLevel": "misc:error"},
        {"proxy.istio.io/config": "concurrency: 3"},
        {"sidecar.istio.io/proxyCPULimit": "1500m"},
    ],
    ids=["defaults", "debug-levels", "istio-default-levels", "concurrency", "cpu-limit-concurrency"],
)
@pytest.mark.parametrize("native", ["false", "true"])
def test_injected_envoy_command_line_validates(annotations: dict[str, str], native: str) -> None:
    args = proxy_command(annotations, native)
    p = subprocess.run([envoy_binary(), "--mode", "validate", *args], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]


def test_validation_rejects_a_broken_command_line() -> None:
    args = proxy_command({})
    i = args.index("--log-level")
    args[i + 1] = "chatty"
    p = subprocess.run([envoy_binary(), "--mode", "validate", *args], capture_output=True, text=True, timeout=60)
    assert p.returncode != 0
