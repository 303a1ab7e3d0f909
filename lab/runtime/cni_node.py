"""A node in CNI mode, made of podman: podman's CNI network backend runs a conflist that chains the project's
plugin (the static ``netinit-cni`` shim, installed and chained by the agent's own installer code) after Debian's
``bridge``, and the node agent runs as its own process (``netinit-cni agent``), reading pods from the in-test API
server. podman then invokes the plugin with the pod's namespace when it creates each pod's sandbox, as a kubelet's
runtime does.

Kept apart from the rest of the host, because a second network backend on one machine is how tests break each
other: its own storage (``--root``/``--runroot``, the main store as a read-only additional image store, so no
image is copied), its own ``tmp_dir`` and network config dir, its own bridge and subnet (Debian's podman ships
``/etc/cni/net.d/87-podman-bridge.conflist``, a ``cni-podman0`` on 10.88.0.0/16 - the subnet of netavark's
``podman0``; a CNI-backend podman left to its defaults creates that bridge and takes the host's route to every
other test's pods), no masquerading and no portmap (nothing written to the host's iptables). Teardown removes
pods, mounts, the bridge and the directory.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lab import cni
from lab.runtime import podman
from lab.shell import LabError, console_script, free_port
from netinit_cni import install

NETWORK = "sidecar-cni-lab"
BRIDGE = "hcni77"
SUBNET, GATEWAY = "10.91.77.0/24", "10.91.77.1"
MAIN_STORE = "/var/lib/containers/storage"


@dataclass
class CniNode:
    workdir: Path
    env: dict[str, str]
    kube_url: str
    backend: str
    socket: str
    health_port: int = field(default_factory=free_port)
    agent: subprocess.Popen[bytes] | None = None
    log_path: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log_path = self.workdir / "agent.log"

    @property
    def conf_dir(self) -> Path:
        return self.workdir / "net.d"

    @property
    def bin_dir(self) -> Path:
        return self.workdir / "bin"

    def start_agent(self, *, repair: bool = False) -> None:
        if self.agent is not None:
            raise LabError("the agent is already running")
        argv = [*console_script("netinit-cni"), "agent", "--socket", self.socket, "--kube-url", self.kube_url,
                "--state-dir", str(self.workdir / "pods"), "--backend", self.backend, "--node", "lab-node",
                "--health-port", str(self.health_port), "--no-install", "--repair-interval", "0.5",
                *([] if repair else ["--no-repair"])]  # fmt: skip
        log = self.log_path.open("ab")
        self.agent = subprocess.Popen(argv, stdout=log, stderr=log, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        log.close()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.agent.poll() is not None:
                raise LabError(f"netinit-cni agent exited {self.agent.returncode}:\n{self.log_path.read_text()}")
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(f"http://127.0.0.1:{self.health_port}/readyz", timeout=1) as r:
                    if r.status == 200 and os.path.exists(self.socket):
                        return
            time.sleep(0.1)
        raise LabError(f"netinit-cni agent not ready in 20s:\n{self.log_path.read_text()}")

    def stop_agent(self) -> None:
        if self.agent is None:
            return
        self.agent.send_signal(signal.SIGTERM)
        try:
            self.agent.wait(10)
        except subprocess.TimeoutExpired:
            self.agent.kill()
            self.agent.wait(5)
        self.agent = None

    def logs(self) -> list[dict[str, Any]]:
        """The agent's JSON log lines so far (one per CNI call, plus its own)."""
        if not self.log_path.exists():
            return []
        out = []
        for line in self.log_path.read_text().splitlines():
            with contextlib.suppress(ValueError):
                doc = json.loads(line)
                if isinstance(doc, dict):
                    out.append(doc)
        return out

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.health_port}/metrics", timeout=2) as r:
            return str(r.read().decode())

    def conflist(self) -> dict[str, Any]:
        path = install.primary_conf(self.conf_dir)
        assert path is not None
        return dict(json.loads(path.read_text()))


def _bridge_conflist(ipam_dir: Path) -> dict[str, Any]:
    bridge = {"type": "bridge", "bridge": BRIDGE, "isGateway": True, "ipMasq": False, "hairpinMode": True,
              "ipam": {"type": "host-local", "dataDir": str(ipam_dir), "routes": [{"dst": "0.0.0.0/0"}],
                       "ranges": [[{"subnet": SUBNET, "gateway": GATEWAY}]]}}  # fmt: skip
    return {"cniVersion": "1.0.0", "name": NETWORK, "plugins": [bridge]}


def _engine_env(workdir: Path) -> dict[str, str]:
    base = dict(podman.base_env())
    if base.get("CONTAINER_ENGINE") != "podman":
        raise LabError("CNI mode in the lab needs podman (its CNI network backend)")
    text = Path(base["CONTAINERS_CONF"]).read_text()
    text = text.replace("[engine]\n", f'[engine]\ntmp_dir = "{workdir / "tmp"}"\n', 1)
    text += (
        f'[network]\nnetwork_backend = "cni"\ncni_plugin_dirs = ["{workdir / "bin"}"]\n'
        f'network_config_dir = "{workdir / "net.d"}"\ndefault_network = "{NETWORK}"\ndefault_subnet = "{SUBNET}"\n'
    )
    (workdir / "containers.conf").write_text(text)
    (workdir / "storage.conf").write_text(
        f'[storage]\ndriver = "overlay"\ngraphroot = "{workdir / "storage"}"\nrunroot = "{workdir / "run"}"\n'
        f'[storage.options]\nadditionalimagestores = ["{MAIN_STORE}"]\n'
    )
    return {**base, "CONTAINERS_CONF": str(workdir / "containers.conf"),
            "CONTAINERS_STORAGE_CONF": str(workdir / "storage.conf")}  # fmt: skip


def _unmount_below(path: Path) -> None:
    mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines() if len(line.split()) > 1]
    for m in sorted((m for m in mounts if m.startswith(str(path) + "/")), key=len, reverse=True):
        subprocess.run(["umount", "-l", m], capture_output=True, check=False, timeout=30)


@contextlib.contextmanager
def cni_node(kube_url: str, backend: str = "auto", *, agent: bool = True) -> Iterator[CniNode]:
    """The CNI node for the block, the agent started unless ``agent=False``; always torn down."""
    workdir = Path(tempfile.mkdtemp(prefix="cni-node-"))
    for sub in ("bin", "net.d", "tmp", "pods", "ipam"):
        (workdir / sub).mkdir()
    node = CniNode(workdir, _engine_env(workdir), kube_url, backend, str(workdir / "agent.sock"))
    try:
        for name in ("bridge", "host-local", "loopback"):
            os.symlink(f"/usr/lib/cni/{name}", node.bin_dir / name)
        (node.conf_dir / f"10-{NETWORK}.conflist").write_text(json.dumps(_bridge_conflist(workdir / "ipam")))
        # What the DaemonSet's installer does on a node: the binary into the bin dir, itself last in the chain.
        install.install_binary(cni.shim_binary(), node.bin_dir)
        chained = {"type": install.PLUGIN_TYPE, "agentSocket": node.socket, "excludeNamespaces": ["kube-system"]}
        install.ensure(node.conf_dir, chained)
        if agent:
            node.start_agent()
        with podman.using(node.env):
            yield node
    finally:
        node.stop_agent()
        with podman.using(node.env):
            podman.cli("pod", "rm", "-af", "-t", "0", check=False, timeout=120)
            podman.cli("rm", "-af", "-t", "0", check=False, timeout=120)
        _unmount_below(workdir)
        subprocess.run(["ip", "link", "del", BRIDGE], capture_output=True, check=False, timeout=30)
        shutil.rmtree(workdir, ignore_errors=True)
