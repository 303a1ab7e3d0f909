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
import re
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
AGENT_RUN = "/run/netinit-cni"  # the DaemonSet's hostPath for the plugin's socket: the path its config names
CNI_OVERLAY = Path(__file__).resolve().parents[2] / "manifests" / "overlays" / "cni"


def daemonset_container() -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """The agent's container and the pod's volumes (by name) from ``kubectl kustomize manifests/overlays/cni``."""
    from lab.runtime.webhook import rendered_overlay

    ds = next(d for d in rendered_overlay(CNI_OVERLAY) if d.get("kind") == "DaemonSet")
    spec = ds["spec"]["template"]["spec"]
    return dict(spec["containers"][0]), {v["name"]: v for v in spec["volumes"]}


@dataclass
class CniNode:
    workdir: Path
    env: dict[str, str]
    kube_url: str
    backend: str
    socket: str
    image: str | None = None  # the agent as the DaemonSet runs it (this image), else a host process
    health_port: int = field(default_factory=free_port)
    agent: subprocess.Popen[bytes] | None = None
    container: str | None = None
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
        if self.agent is not None or self.container is not None:
            raise LabError("the agent is already running")
        if self.image is not None:
            self._start_container(repair)
        else:
            argv = [*console_script("netinit-cni"), "agent", "--socket", self.socket, "--kube-url", self.kube_url,
                    "--state-dir", str(self.workdir / "pods"), "--backend", self.backend, "--node", "lab-node",
                    "--health-port", str(self.health_port), "--no-install", "--repair-interval", "0.5",
                    *([] if repair else ["--no-repair"])]  # fmt: skip
            log = self.log_path.open("ab")
            self.agent = subprocess.Popen(argv, stdout=log, stderr=log, env={**os.environ, "PYTHONUNBUFFERED": "1"})
            log.close()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.agent is not None and self.agent.poll() is not None:
                raise LabError(f"netinit-cni agent exited {self.agent.returncode}:\n{self.log_path.read_text()}")
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(f"http://127.0.0.1:{self.health_port}/readyz", timeout=1) as r:
                    if r.status == 200 and os.path.exists(self.socket):
                        return
            time.sleep(0.1)
        raise LabError(f"netinit-cni agent not ready in 30s:\n{self._container_logs()}{self.log_path.read_text()}")

    def _start_container(self, repair: bool) -> None:
        """The DaemonSet's container as the overlay renders it, run by podman: its args, securityContext and
        hostPath volumes, mapped onto this lab node's directories; the API server is the in-test one (the lab has
        no service-account token to mount)."""
        assert self.image is not None
        c, volumes = daemonset_container()
        env = {"NODE_NAME": "lab-node", "HOST_IP": "127.0.0.1"}
        args = [re.sub(r"\$\((\w+)\)", lambda m: env[m[1]], str(a)) for a in c["args"]]
        args += ["--kube-url", self.kube_url, "--backend", self.backend, "--repair-interval", "0.5"]
        args += [] if repair else ["--no-repair"]
        sc = c["securityContext"]
        flags = ["--network", "host", "--user", f"{sc['runAsUser']}:0", "--cap-drop", "ALL"]
        flags += [f"--cap-add={cap}" for cap in sc["capabilities"]["add"]]
        if sc.get("readOnlyRootFilesystem"):
            flags += ["--read-only", "--read-only-tmpfs=false"]
        if sc.get("allowPrivilegeEscalation") is False:
            flags += ["--security-opt", "no-new-privileges"]
        host = {"/opt/cni/bin": self.bin_dir, "/etc/cni/net.d": self.conf_dir, "/var/run/netns": Path("/run/netns"),
                "/var/run/netinit-cni": Path(AGENT_RUN)}  # fmt: skip
        for m in sorted(c["volumeMounts"], key=lambda m: m["mountPath"]):
            vol = volumes[m["name"]]
            if "emptyDir" in vol:
                flags += ["--tmpfs", f"{m['mountPath']}:rw,mode=755"]
            else:
                source = host[vol["hostPath"]["path"]]
                source.mkdir(parents=True, exist_ok=True)
                prop = ",rslave" if m.get("mountPropagation") == "HostToContainer" else ""
                flags += ["-v", f"{source}:{m['mountPath']}:rw{prop}"]
        self.container = f"netinit-cni-agent-{os.getpid()}"
        podman.cli("run", "-d", "--name", self.container, *flags, "--entrypoint", c["command"][0], self.image, *args)

    def _container_logs(self) -> str:
        return podman.logs(self.container) if self.container else ""

    def stop_agent(self) -> None:
        if self.container is not None:
            podman.cli("stop", "-t", "5", self.container, check=False, timeout=60)
            with self.log_path.open("a") as f:
                f.write(self._container_logs())
            podman.cli("rm", "-f", self.container, check=False, timeout=60)
            self.container = None
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
        text = (self.log_path.read_text() if self.log_path.exists() else "") + self._container_logs()
        out = []
        for line in text.splitlines():
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
def cni_node(
    kube_url: str, backend: str = "auto", *, agent: bool = True, image: str | None = None
) -> Iterator[CniNode]:
    """The CNI node for the block, the agent running unless ``agent=False`` (with ``image``: it ran once, installed
    the plugin, and stopped); always torn down. ``image``: run the
    agent as the DaemonSet runs it, from that image (its installer then puts the plugin on the node); otherwise
    a host process, with the plugin installed by the same installer code beforehand."""
    workdir = Path(tempfile.mkdtemp(prefix="cni-node-"))
    for sub in ("bin", "net.d", "tmp", "pods", "ipam"):
        (workdir / sub).mkdir()
    socket = f"{AGENT_RUN}/agent.sock" if image else str(workdir / "agent.sock")
    node = CniNode(workdir, _engine_env(workdir), kube_url, backend, socket, image)
    if image:
        node.health_port = int(daemonset_container()[0]["readinessProbe"]["httpGet"]["port"])
    try:
        for name in ("bridge", "host-local", "loopback"):
            os.symlink(f"/usr/lib/cni/{name}", node.bin_dir / name)
        (node.conf_dir / f"10-{NETWORK}.conflist").write_text(json.dumps(_bridge_conflist(workdir / "ipam")))
        if not image:
            # What the DaemonSet's installer does on a node: the binary into the bin dir, itself last in the chain.
            install.install_binary(cni.shim_binary(), node.bin_dir)
            chained = {"type": install.PLUGIN_TYPE, "agentSocket": node.socket, "excludeNamespaces": ["kube-system"]}
            install.ensure(node.conf_dir, chained)
        with podman.using(node.env):
            if agent or image:
                node.start_agent()
            if not agent:  # installed, then gone (a crash, an upgrade): the plugin stays chained
                node.stop_agent()
            yield node
    finally:
        with podman.using(node.env):
            node.stop_agent()
            podman.cli("pod", "rm", "-af", "-t", "0", check=False, timeout=120)
            podman.cli("rm", "-af", "-t", "0", check=False, timeout=120)
        _unmount_below(workdir)
        if image:
            shutil.rmtree(AGENT_RUN, ignore_errors=True)
        subprocess.run(["ip", "link", "del", BRIDGE], capture_output=True, check=False, timeout=30)
        shutil.rmtree(workdir, ignore_errors=True)
