"""A kubelet made of podman: runs an admitted pod spec with real containers, nothing hard-coded per container.

:func:`run_pod` does what the kubelet does with a pod, in its order, driven only by the spec (as
:func:`lab.apiserver.admit` returns it):

1. refuse early: every container's image must be in the local store, its securityContext, volumes, env and
   probes must be things this runtime honours (:mod:`lab.runtime.translate`); otherwise
   :class:`~lab.runtime.translate.Unhonourable` names the container and the field, before anything is created;
2. the sandbox: ``podman pod create`` (one network namespace on podman's bridge, hostname = pod name), its
   infra container started; the pod IP is the infra container's;
3. the volumes (:mod:`lab.runtime.volumes`), then the init containers one by one: a run-to-completion one must
   exit 0 (otherwise the run fails with its exit code and logs); a native sidecar (``restartPolicy: Always``) is
   started, its postStart hook run and its startupProbe awaited before the next init container;
4. the containers in order, each one's postStart hook completing before the next starts (what
   ``holdApplicationUntilProxyStarts`` relies on); then every startupProbe and readinessProbe, and one round
   of livenessProbes (:mod:`lab.runtime.probes`, from the host over the bridge, as the kubelet's come from the
   node);
5. teardown, always: ``podman pod rm -f`` (containers, infra, network namespace, netavark's per-pod state),
   tmpfs volumes unmounted, the work directory removed.

The node side of traffic capture: ``node_iptables`` (``legacy``, ``nft``, ``native-nft``) is added to the args
of the ``istio-init`` container as ``--force-iptables-binary legacy|nft`` or ``--native-nftables``. The injector
has no annotation or value that expresses it (Istio's nftables mode is a control-plane setting), so this is the
lab standing in for a node that has only one of the backends; the event log says so.

What it is not: there is no API server (no Service, no Endpoints, no restarts on failure, no status written
back), preStop hooks run only with ``run_pre_stop``, probes are polled rather than periodic.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

from lab import podspec, traffic
from lab.runtime import podman, probes, translate
from lab.runtime.translate import Unhonourable
from lab.runtime.volumes import PodVolumes, make_volumes, validate_volumes
from lab.shell import LabError

INIT_CONTAINER = "istio-init"
LABEL = "io.sidecar-injector.runtime-lab"
BACKEND_ARGS = {"legacy": ["--force-iptables-binary", "legacy"], "nft": ["--force-iptables-binary", "nft"]}
BACKEND_ARGS["native-nft"] = ["--native-nftables"]
Progress = Callable[[str], None]


def node_facts() -> podspec.Node:
    """This machine as the node: its name, the bridge gateway (the host as pods see it), CPUs and memory."""
    memory = 4 * 1024**3
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory = int(line.split()[1]) * 1024
    return podspec.Node(name=socket.gethostname(), ip="10.88.0.1", cpu=Fraction(os.cpu_count() or 1), memory=memory)


@dataclass
class Container:
    """One container of the pod as started: its spec, podman's name for it, and where it sits in the spec."""

    spec: Mapping[str, Any]
    name: str
    index: str  # spec.initContainers[0], spec.containers[1]
    init: bool
    sidecar: bool = False


@dataclass
class PodmanPod:
    """A pod brought up by :func:`run_pod`. ``ip``: the pod IP on podman's bridge; ``netns``: its network
    namespace's name under /run/netns (for ``ip netns exec``); ``events``: what happened, in order, and when
    (``event_times``)."""

    pod: dict[str, Any]
    name: str
    workdir: Path
    node: podspec.Node
    node_iptables: str | None
    config_maps: Mapping[str, Mapping[str, str]]
    secrets: Mapping[str, Mapping[str, str]]
    ready_timeout: float
    hook_timeout: float
    say: Progress
    image_users: Mapping[str, str] = field(default_factory=dict)  # image -> its USER, read once by check()
    ip: str = ""
    netns: str = ""
    volumes: PodVolumes | None = None
    containers: dict[str, Container] = field(default_factory=dict)
    init_results: dict[str, list[subprocess.CompletedProcess[str]]] = field(default_factory=dict)
    events: list[str] = field(default_factory=list)
    event_times: list[float] = field(default_factory=list)  # time.monotonic() of each event (bench.pod_startup)

    @property
    def infra(self) -> str:
        return f"{self.name}-infra"

    def event(self, text: str) -> None:
        self.events.append(text)
        self.event_times.append(time.monotonic())
        self.say(text)

    def ref(self, container: str) -> str:
        """podman's name for the pod's container ``container``."""
        if container not in self.containers:
            raise LabError(f"pod {self.name}: no container {container!r} (has {', '.join(self.containers)})")
        return self.containers[container].name

    # inspection -------------------------------------------------------------------------------------------------

    def inspect(self, container: str, fmt: str) -> str:
        return podman.cli("inspect", "-f", fmt, self.ref(container)).stdout.strip()

    def effective_caps(self, container: str) -> list[str]:
        """The capabilities the runtime really gave the container's process (``podman inspect`` EffectiveCaps)."""
        return sorted(self.inspect(container, "{{range .EffectiveCaps}}{{.}} {{end}}").split())

    def started_at(self, container: str) -> str:
        return self.inspect(container, "{{.State.StartedAt}}")

    def logs(self, container: str) -> str:
        return podman.logs(self.ref(container))

    def exec(self, container: str, *cmd: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return podman.cli("exec", self.ref(container), *cmd, check=False, timeout=timeout)

    # traffic ----------------------------------------------------------------------------------------------------

    def get(self, port: int, path: str = "/", *, timeout: float = 2.0) -> traffic.HttpResult:
        """A GET from the host (the node, 10.88.0.1 on the bridge) to the pod IP."""
        from lab.runtime import echo_app

        out = echo_app.get(self.ip, port, path, timeout)
        return traffic.HttpResult(int(out["status"]), str(out["body"]), str(out["error"]), float(out["seconds"]))

    def exec_get(
        self, container: str, host: str, port: int, path: str = "/", timeout: float = 2.0
    ) -> traffic.HttpResult:
        """A GET made inside ``container`` as its own user (the lab's echo image carries the client)."""
        import json

        res = self.exec(
            container, "python3", "/echo.py", "get", host, str(port), path, str(timeout), timeout=timeout + 20
        )
        try:
            out = json.loads(res.stdout)
        except ValueError:
            return traffic.HttpResult(0, "", f"client failed ({res.returncode}): {res.stderr.strip()}")
        return traffic.HttpResult(int(out["status"]), str(out["body"]), str(out["error"]), float(out["seconds"]))

    def admin(self, path: str) -> str:
        """GET on Envoy's admin API (127.0.0.1:15000 in the pod's namespace, from the host as root)."""
        res = traffic.http_get(self.netns, "127.0.0.1", 15000, path, timeout=5.0)
        if res.status != 200:
            raise LabError(f"Envoy admin {path}: {res.status} {res.error or res.body[:200]}")
        return res.body

    def envoy_stats(self) -> dict[str, int]:
        return traffic.parse_stats(self.admin("/stats"))

    def upstream_hosts(self, cluster: str) -> dict[str, int]:
        return traffic.upstream_hosts(self.admin("/clusters"), cluster)

    def rules(self, backend: str) -> str:
        """The pod's nat rules as the node would list them with ``backend`` (legacy, nft, native-nft)."""
        if backend == "native-nft":
            cmd = ["nft", "list", "table", "inet", "istio-proxy-nat"]
        else:
            cmd = [f"iptables-{backend}-save", "-t", "nat"]
        return subprocess.run(
            ["ip", "netns", "exec", self.netns, *cmd], capture_output=True, text=True, timeout=30
        ).stdout

    # lifecycle --------------------------------------------------------------------------------------------------

    def _alive(self, ref: str) -> Callable[[], str | None]:
        def why() -> str | None:
            state = podman.cli(
                "inspect", "-f", "{{.State.Status}} {{.State.ExitCode}}", ref, check=False
            ).stdout.split()
            return None if state[:1] == ["running"] else f"is {' '.join(state) or 'gone'}"

        return why

    def _create(self, c: Container, *, detach: bool) -> subprocess.CompletedProcess[str]:
        env = podspec.container_env(
            c.spec, self.pod, self.ip, self.node, config_maps=self.config_maps, secrets=self.secrets
        )
        assert self.volumes is not None
        flags, args, _uid = translate.run_flags(
            c.spec,
            self.pod,
            index=c.index,
            image_user=self.image_users[str(c.spec["image"])],
            env=env,
            mounts=self.volumes.mounts(c.spec, c.index),
            expand=lambda text: podspec.expand(text, env),
        )
        if c.spec["name"] == INIT_CONTAINER and self.node_iptables:
            args += BACKEND_ARGS[self.node_iptables]
        run = ["run", "--pod", self.name, "--name", c.name, "--label", f"{LABEL}={self.name}", *flags]
        if detach:
            return podman.cli(*run, "-d", str(c.spec["image"]), *args, timeout=120)
        return podman.cli(*run, str(c.spec["image"]), *args, check=False, timeout=self.ready_timeout + 60)

    def _finish_init(self, c: Container, res: subprocess.CompletedProcess[str]) -> None:
        self.init_results.setdefault(c.spec["name"], []).append(res)
        if res.returncode != 0:
            raise LabError(
                f"pod {self.name}: init container {c.spec['name']!r} ({c.index}) exited {res.returncode}; the pod "
                "stops here "
                f"(Init:Error). Its logs:\n{(res.stdout + res.stderr)[-3000:]}"
            )
        last = (res.stdout + res.stderr).strip().splitlines()[-1:] or [""]
        self.event(f"{c.spec['name']}: exited 0 ({last[0]})")

    def _start_long_running(self, c: Container) -> None:
        self._create(c, detach=True)
        self.event(f"{c.spec['name']}: started ({c.index})")
        hook = probes.run_hook(c.spec, "postStart", self.ip, c.name, self.hook_timeout)
        if hook:
            self.event(f"{c.spec['name']}: postStart hook passed ({hook})")
        if c.sidecar and probes.wait_probe(
            c.spec, "startupProbe", self.ip, c.name, self.ready_timeout, self._alive(c.name)
        ):
            self.event(f"{c.spec['name']}: startupProbe passed (native sidecar; the next container may start)")

    def _wait_ready(self) -> None:
        for c in self.containers.values():
            if c.init and not c.sidecar:
                continue
            alive = self._alive(c.name)
            if not c.sidecar and probes.wait_probe(c.spec, "startupProbe", self.ip, c.name, self.ready_timeout, alive):
                self.event(f"{c.spec['name']}: startupProbe passed")
            if probes.wait_probe(c.spec, "readinessProbe", self.ip, c.name, self.ready_timeout, alive):
                self.event(f"{c.spec['name']}: readinessProbe passed")
            if c.spec.get("livenessProbe"):
                if not probes.probe_once(c.spec, c.spec["livenessProbe"], self.ip, c.name):
                    raise LabError(f"container {c.spec['name']!r}: livenessProbe failed:\n{self.logs(c.spec['name'])}")
                self.event(f"{c.spec['name']}: livenessProbe passed")

    def _sandbox(self) -> None:
        podman.cli("start", self.infra)
        self.ip = podman.cli("inspect", "-f", "{{.NetworkSettings.IPAddress}}", self.infra).stdout.strip()
        key = podman.cli("inspect", "-f", "{{.NetworkSettings.SandboxKey}}", self.infra).stdout.strip()
        self.netns = Path(key).name
        if not self.ip or not self.netns:
            raise LabError(f"pod {self.name}: the sandbox has no IP or network namespace ({self.ip!r}, {key!r})")
        self.event(f"sandbox: pod {self.name} IP {self.ip}, network namespace {self.netns}")

    def _start_all(self) -> None:
        for c in self.containers.values():
            if c.init and not c.sidecar:
                if c.spec["name"] == INIT_CONTAINER and self.node_iptables:
                    self.event(
                        f"{INIT_CONTAINER}: the lab adds {' '.join(BACKEND_ARGS[self.node_iptables])} (the node)"
                    )
                self._finish_init(c, self._create(c, detach=False))
            else:
                self._start_long_running(c)
        self._wait_ready()
        self.event(f"pod {self.name}: running and ready")

    def restart_container(self, container: str) -> None:
        """``podman restart`` of one container (a crash and restart: nothing else re-runs), then its probes."""
        c = self.containers[container]
        podman.cli("restart", "-t", "2", c.name, timeout=60)
        self.event(f"{container}: restarted")
        alive = self._alive(c.name)
        probes.wait_probe(c.spec, "startupProbe", self.ip, c.name, self.ready_timeout, alive)
        probes.wait_probe(c.spec, "readinessProbe", self.ip, c.name, self.ready_timeout, alive)

    def rerun_init(self, container: str = INIT_CONTAINER) -> subprocess.CompletedProcess[str]:
        """Start the (exited) init container again in the same sandbox, as the kubelet does when it re-runs init
        containers without a new sandbox; its result (the exit code, its output)."""
        c = self.containers[container]
        res = podman.cli("start", "-a", c.name, check=False, timeout=self.ready_timeout + 60)
        self._finish_init(c, res)
        return res

    def restart_sandbox(self) -> None:
        """A new sandbox, as after a node reboot or a killed pause container: every container stopped and
        removed, the infra container restarted (a new network namespace, maybe a new IP), then the whole start
        sequence again: init containers re-run, sidecars and containers re-created, probes awaited."""
        for c in reversed(list(self.containers.values())):
            podman.cli("rm", "-f", "-t", "1", c.name, check=False, timeout=60)
        podman.cli("stop", "-t", "1", self.infra, timeout=60)
        self.event("sandbox: stopped; containers removed")
        self._sandbox()
        self._start_all()


def _containers(pod: Mapping[str, Any], prefix: str) -> dict[str, Container]:
    spec = pod.get("spec") or {}
    out: dict[str, Container] = {}
    for kind, init in (("initContainers", True), ("containers", False)):
        for i, c in enumerate(spec.get(kind) or []):
            name = str(c.get("name"))
            if name in out:
                raise Unhonourable(f"spec.{kind}[{i}]: container name {name!r} is used twice")
            sidecar = init and c.get("restartPolicy") == "Always"
            out[name] = Container(c, f"{prefix}-{name}", f"spec.{kind}[{i}]", init, sidecar)
    if not any(not c.init for c in out.values()):
        raise Unhonourable("spec.containers: a pod needs at least one container")
    return out


def check(
    pod: Mapping[str, Any], node: podspec.Node, config_maps: Mapping[str, Any], secrets_: Mapping[str, Any]
) -> dict[str, str]:
    """Everything that can be refused before anything is created (images, security contexts, env, probes); each
    image's USER, read here once: a kubelet has the image's config from its image status, and a ``podman image
    inspect`` per container start (25 ms) would be counted as the pod's start-up."""
    validate_volumes(pod)
    users: dict[str, str] = {}
    for c in _containers(pod, "check").values():
        image = c.spec.get("image")
        if not image:
            raise Unhonourable(f"container {c.spec['name']!r} ({c.index}.image): no image")
        if str(image) not in users:
            user = podman.local_image_user(str(image))
            if user is None:
                raise Unhonourable(
                    f"container {c.spec['name']!r} ({c.index}.image): image {image!r} is not in the local store "
                    "and no registry is reachable here (ErrImagePull); build it first (make images)"
                )
            users[str(image)] = user
        env = podspec.container_env(c.spec, pod, "0.0.0.0", node, config_maps=config_maps, secrets=secrets_)
        translate.run_flags(c.spec, pod, index=c.index, image_user=users[str(image)], env=env, mounts=(), expand=str)
        for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
            probe = c.spec.get(kind)
            if probe and not any(k in probe for k in ("httpGet", "tcpSocket", "exec")):
                raise Unhonourable(f"container {c.spec['name']!r} ({c.index}.{kind}): only httpGet, tcpSocket, exec")
    return users


@contextlib.contextmanager
def run_pod(
    pod: Mapping[str, Any],
    *,
    node_iptables: str | None = None,
    config_maps: Mapping[str, Mapping[str, str]] | None = None,
    secrets: Mapping[str, Mapping[str, str]] | None = None,
    ready_timeout: float = 30.0,
    hook_timeout: float = 60.0,
    run_pre_stop: bool = False,
    progress: Progress | None = None,
    sandbox_name: str | None = None,
    node_ip: str | None = None,
) -> Iterator[PodmanPod]:
    """Run ``pod`` (as admitted) with podman and yield it once every container is ready; always torn down.
    ``sandbox_name``: podman's name for the pod (a CNI plugin sees it as ``K8S_POD_NAME``); ``node_ip``: the
    host's address on the pods' network, when that is not podman's default bridge."""
    if node_iptables is not None and node_iptables not in BACKEND_ARGS:
        raise ValueError(f"node_iptables must be one of {', '.join(BACKEND_ARGS)}, got {node_iptables!r}")
    node = node_facts()
    if node_ip is not None:
        node = dataclasses.replace(node, ip=node_ip)
    maps, secs = dict(config_maps or {}), dict(secrets or {})
    image_users = check(pod, node, maps, secs)
    meta = pod.get("metadata") or {}
    name = sandbox_name or f"rt-{str(meta.get('name', 'pod'))[:40]}-{secrets_token()}"
    workdir = Path(tempfile.mkdtemp(prefix=f"{name}-"))
    running = PodmanPod(
        dict(pod),
        name,
        workdir,
        node,
        node_iptables,
        maps,
        secs,
        ready_timeout,
        hook_timeout,
        progress or (lambda _m: None),
        image_users,
    )
    running.pod.setdefault("metadata", {}).setdefault("namespace", "default")
    running.containers = _containers(running.pod, name)
    try:
        hostname = str(meta.get("name", "pod"))[:63]
        create = ["pod", "create", "--name", name, "--infra-name", running.infra, "--hostname", hostname]
        for sysctl in ((pod.get("spec") or {}).get("securityContext") or {}).get("sysctls") or []:
            create += ["--sysctl", f"{sysctl['name']}={sysctl['value']}"]
        podman.cli(*create, "--label", f"{LABEL}={name}", timeout=120)
        running._sandbox()
        running.volumes = make_volumes(
            running.pod, workdir / "volumes", pod_ip=running.ip, node=node, config_maps=maps, secrets=secs
        )
        running._start_all()
        yield running
    finally:
        if run_pre_stop:
            for c in reversed(list(running.containers.values())):
                with contextlib.suppress(LabError, subprocess.TimeoutExpired):
                    probes.run_hook(c.spec, "preStop", running.ip, c.name, hook_timeout)
        podman.cli("pod", "rm", "-f", "-t", "1", name, check=False, timeout=120)
        if running.volumes is not None:
            running.volumes.close()
        shutil.rmtree(workdir, ignore_errors=True)


def secrets_token() -> str:
    return secrets.token_hex(3)
