"""CNI mode in the lab: the plugin binary built from source, a CNI call made the way a runtime makes it, and a
pod as the injector writes it in CNI mode (``istio-validation`` instead of ``istio-init``).

The shim is compiled once per source version into the cache (``cc -static``, the way the agent image builds it),
so every test runs the same static binary a node would.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lab import netlab
from lab.shell import c_binary

ROOT = Path(__file__).resolve().parents[1]
SHIM_SOURCE = ROOT / "netinit_cni" / "shim" / "netinit-cni.c"
STATUS = json.dumps({"initContainers": ["istio-validation"], "containers": ["istio-proxy"], "volumes": []})


def shim_binary() -> Path:
    """The static plugin binary for the current source (built if missing)."""
    return c_binary(SHIM_SOURCE, "netinit-cni", static=True)


def network_config(
    socket: str, *, version: str = "1.0.0", prev_result: Mapping[str, Any] | None = None, **plugin: Any
) -> dict[str, Any]:
    """The config a runtime hands the plugin: the network's name and version, our keys, the chain's prevResult."""
    conf: dict[str, Any] = {"cniVersion": version, "name": "lab-net", "type": "netinit-cni", "agentSocket": socket}
    conf.update(plugin)
    if prev_result is not None:
        conf["prevResult"] = dict(prev_result)
    return conf


def prev_result(ip: str, gateway: str, version: str = "1.0.0") -> dict[str, Any]:
    """What the bridge plugin answers, roughly: one interface, one address, a default route."""
    return {
        "cniVersion": version,
        "interfaces": [{"name": "eth0", "sandbox": "/var/run/netns/x"}],
        "ips": [{"address": ip, "gateway": gateway, "interface": 0}],
        "routes": [{"dst": "0.0.0.0/0", "gw": gateway}],
    }


def invoke(
    command: str,
    conf: Mapping[str, Any] | bytes,
    *,
    netns: str = "",
    container_id: str = "c0ffee",
    pod: tuple[str, str] | None = None,
    ifname: str = "eth0",
    binary: Path | None = None,
    extra_env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Execute the plugin as a runtime does: ``CNI_*`` in the environment, the config on stdin."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "CNI_COMMAND": command, "CNI_CONTAINERID": container_id,
           "CNI_IFNAME": ifname, "CNI_PATH": "/opt/cni/bin"}  # fmt: skip
    if netns:
        env["CNI_NETNS"] = netns
    if pod is not None:
        env["CNI_ARGS"] = f"IgnoreUnknown=1;K8S_POD_NAMESPACE={pod[0]};K8S_POD_NAME={pod[1]}"
    env.update(extra_env or {})
    stdin = conf if isinstance(conf, bytes) else json.dumps(conf).encode()
    proc = subprocess.run(
        [str(binary or shim_binary())], input=stdin, capture_output=True, env=env, timeout=90, check=False
    )
    return subprocess.CompletedProcess(proc.args, proc.returncode, proc.stdout.decode(), proc.stderr.decode())


def cni_mode_pod(
    name: str,
    namespace: str = "default",
    *,
    capture_args: Sequence[str] = netlab.SIDECAR_ARGS,
    annotations: Mapping[str, str] | None = None,
    injected: bool = True,
    node: str = "",
) -> dict[str, Any]:
    """A pod as the API server returns it after CNI-mode injection (or, ``injected=False``, without any)."""
    containers: list[dict[str, Any]] = [{"name": "app", "image": "app:1"}]
    init: list[dict[str, Any]] = []
    ann = dict(annotations or {})
    if injected:
        containers.append({"name": "istio-proxy", "image": "proxy:1"})
        init.append({"name": "istio-validation", "image": "netinit:1",
                     "args": [*capture_args, "--run-validation", "--skip-rule-apply"]})  # fmt: skip
        ann.setdefault("sidecar.istio.io/status", STATUS)
    spec: dict[str, Any] = {"containers": containers, "initContainers": init}
    if node:
        spec["nodeName"] = node
    return {"metadata": {"name": name, "namespace": namespace, "annotations": ann}, "spec": spec}
