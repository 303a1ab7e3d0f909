"""The node agent: serves the plugin's calls on a unix socket, one JSON log line per call, health and metrics over
HTTP, and the repair loop. Started by ``netinit-cni agent`` (the DaemonSet's container).

A call is handled start to end on its own thread: parse (:mod:`~netinit_cni.protocol`), look the pod up
(:mod:`~netinit_cni.kube`, bounded by ``kubernetesTimeoutSeconds``), decide (:mod:`~netinit_cni.decide`), program
(:mod:`~netinit_cni.program`). Anything unexpected becomes a CNI error, never a dropped connection: the shim would
take that for "agent gone" only when it cannot connect at all.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import socketserver
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from netinit_cni.decide import decide
from netinit_cni.kube import KubeError, Pods
from netinit_cni.program import Programmer
from netinit_cni.protocol import Call, CniError, Code, add_result, parse_call, version_result

MAGIC = b"NETINIT-CNI/1\n"
MAX_CALL = 4 << 20
Log = Callable[..., None]


def log_line(**fields: Any) -> None:
    """The agent's one logger: a JSON object per line on stderr (the container log)."""
    doc = {"ts": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **fields}
    sys.stderr.write(json.dumps(doc, sort_keys=False) + "\n")
    sys.stderr.flush()


class Agent:
    def __init__(self, pods: Callable[[float], Pods], programmer: Programmer, log: Log = log_line) -> None:
        self._pods, self.programmer, self.log = pods, programmer, log
        self.calls: Counter[tuple[str, str]] = Counter()  # (command, outcome) -> count, for /metrics
        self._lock = threading.Lock()

    def handle(self, env: Mapping[str, str], stdin: bytes) -> tuple[int, bytes]:
        """One CNI call -> (exit code, stdout)."""
        started = time.monotonic()
        command, version = env.get("CNI_COMMAND", "?"), "1.0.0"
        fields: dict[str, object] = {}
        try:
            call = parse_call(env, stdin)
            command, version = call.command, call.version
            fields = {"container": call.container_id[:12], "netns": call.netns}
            if call.pod:
                fields["pod"] = "/".join(call.pod)
            out, outcome, text = self._dispatch(call)
            code = 0
        except CniError as e:
            out, outcome, text, code = e.to_json(version), "error", e.msg, 1
            fields["code"] = int(e.code)
        except Exception as e:  # noqa: BLE001 - a bug must still answer the runtime
            err = CniError(Code.IO_FAILURE, f"netinit-cni agent: internal error: {type(e).__name__}: {e}")
            out, outcome, text, code = err.to_json(version), "error", err.msg, 1
        with self._lock:
            self.calls[(command, outcome)] += 1
        ms = round((time.monotonic() - started) * 1000, 1)
        self.log(msg=text, command=command, outcome=outcome, ms=ms, **fields)
        return code, (json.dumps(out).encode() + b"\n") if out is not None else b""

    def _dispatch(self, call: Call) -> tuple[dict[str, Any] | None, str, str]:
        """(stdout document, outcome, what happened)."""
        if call.command == "VERSION":
            return version_result(call.version), "version", "version"
        if call.command == "DEL":
            return None, "deleted", self.programmer.delete(call.container_id, call.netns)
        decision_text, capture = self._decide(call)
        if call.command == "CHECK":
            if capture is None:
                return None, "checked", f"not captured: {decision_text}"
            return None, "checked", self.programmer.check(call.container_id, call.netns)
        if capture is None:
            return add_result(call), "skipped", decision_text
        args, env, pod = capture
        text = self.programmer.add(call.container_id, call.netns, args, env, pod, call.settings.validate)
        return add_result(call), "captured", f"{decision_text}: {text}"

    def _decide(self, call: Call) -> tuple[str, tuple[tuple[str, ...], Mapping[str, str], str] | None]:
        if call.pod is None:
            return "no Kubernetes pod named in CNI_ARGS (K8S_POD_NAME, K8S_POD_NAMESPACE): not ours", None
        namespace, name = call.pod
        if namespace in call.settings.exclude_namespaces:  # before the API server: kube-system starts without it
            return f"namespace {namespace} is excluded (excludeNamespaces)", None
        try:
            pod = self._pods(call.settings.kubernetes_timeout).get(namespace, name)
        except KubeError as e:
            raise CniError(
                Code.API_SERVER, f"pod {namespace}/{name}: cannot read it from the API server: {e}"
            ) from None
        if pod is None:
            raise CniError(Code.API_SERVER, f"pod {namespace}/{name} is not known to the API server", "K8S_POD_NAME")
        decision = decide(pod, namespace, call.settings)
        if not decision.capture:
            return decision.reason, None
        return decision.reason, (decision.args, decision.env, f"pod {namespace}/{name}")

    def metrics(self) -> str:
        lines = ["# TYPE netinit_cni_calls_total counter"]
        with self._lock:
            for (command, outcome), n in sorted(self.calls.items()):
                lines.append(f'netinit_cni_calls_total{{command="{command}",outcome="{outcome}"}} {n}')
        return "\n".join(lines) + "\n"


def read_call(data: bytes) -> tuple[dict[str, str], bytes]:
    """The shim's framing (see shim/netinit-cni.c) -> (env, network config)."""
    if not data.startswith(MAGIC):
        raise ValueError("not a netinit-cni/1 call")
    rest = data[len(MAGIC) :]
    env: dict[str, str] = {}
    while True:
        entry, sep, rest = rest.partition(b"\0")
        if not sep:
            raise ValueError("truncated call: no end of the environment")
        if not entry:
            return env, rest
        key, eq, value = entry.decode("utf-8", "replace").partition("=")
        if eq:
            env[key] = value


class _CallHandler(socketserver.BaseRequestHandler):
    server: _SocketServer

    def handle(self) -> None:
        sock: socket.socket = self.request
        sock.settimeout(30)
        chunks, size = [], 0
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
                size += len(chunk)
                if size > MAX_CALL:
                    raise ValueError("call larger than 4 MiB")
            env, stdin = read_call(b"".join(chunks))
        except (OSError, ValueError) as e:
            err = CniError(Code.IO_FAILURE, f"netinit-cni agent: unreadable call from the plugin: {e}")
            sock.sendall(b"1\n" + json.dumps(err.to_json("1.0.0")).encode() + b"\n")
            return
        code, out = self.server.agent.handle(env, stdin)
        sock.sendall(f"{code}\n".encode() + out)


class _SocketServer(socketserver.ThreadingUnixStreamServer):
    daemon_threads = True

    def __init__(self, path: str, agent: Agent) -> None:
        self.agent = agent
        super().__init__(path, _CallHandler)


def listen(path: str, agent: Agent) -> _SocketServer:
    """Bind the plugin's socket (replacing a stale one from a previous agent) with owner-only access."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    if os.path.exists(path):
        os.unlink(path)
    server = _SocketServer(path, agent)
    os.chmod(path, 0o600)
    return server


def _accepts(path: str) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(1)
        try:
            s.connect(path)
        except OSError:
            return False
    return True


def health_server(port: int, agent: Agent, socket_path: str, address: str = "127.0.0.1") -> ThreadingHTTPServer:
    """``/healthz`` (the process answers), ``/readyz`` (the plugin socket accepts), ``/metrics`` (Prometheus)."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/metrics":
                body, status = agent.metrics().encode(), 200
            elif self.path == "/healthz":
                body, status = b"ok\n", 200
            elif self.path == "/readyz":
                ready = _accepts(socket_path)
                body, status = (b"ok\n", 200) if ready else (b"the plugin socket does not accept\n", 503)
            else:
                body, status = b"not found\n", 404
            self.send_response(status)
            self.send_header("Content-Type", "text/plain; version=0.0.4" if self.path == "/metrics" else "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer((address, port), Handler)
    server.daemon_threads = True
    return server


def serve(
    socket_path: str,
    agent: Agent,
    *,
    health_port: int | None = None,
    health_address: str = "127.0.0.1",
    ticks: Sequence[Callable[[], object]] = (),
    interval: float = 10.0,
    stop: threading.Event | None = None,
) -> None:
    """Serve until ``stop`` is set (or forever); every ``interval`` seconds run each of ``ticks`` (the repair pass,
    keeping the plugin chained), each failure logged, none fatal."""
    stop = stop or threading.Event()
    calls = listen(socket_path, agent)
    threads = [threading.Thread(target=calls.serve_forever, args=(0.2,), name="cni-calls", daemon=True)]
    health = health_server(health_port, agent, socket_path, health_address) if health_port is not None else None
    if health is not None:
        threads.append(threading.Thread(target=health.serve_forever, args=(0.2,), name="cni-health", daemon=True))
    for t in threads:
        t.start()
    agent.log(msg="serving", socket=socket_path, health_port=health_port)
    try:
        while not stop.wait(interval):
            for tick in ticks:
                try:
                    tick()
                except Exception as e:  # noqa: BLE001 - one bad pass must not stop the agent serving calls
                    agent.log(msg=f"{getattr(tick, '__qualname__', tick)}: {type(e).__name__}: {e}", outcome="error")
    finally:
        calls.shutdown()
        calls.server_close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(socket_path)
        if health is not None:
            health.shutdown()
            health.server_close()
