"""Probes and lifecycle hooks as the kubelet runs them against a podman pod: httpGet and tcpSocket from the host
(the node) to the pod IP over podman's bridge, exec with ``podman exec`` in the container.

Every call is bounded: a probe by its ``timeoutSeconds`` (default 1 s), a wait by the lab's own deadline (the
spec's ``failureThreshold x periodSeconds`` can be ten minutes: the lab does not wait that long), a hook by
``hook_timeout``. Probes are polled every 100 ms rather than every ``periodSeconds``.
"""

from __future__ import annotations

import http.client
import socket
import ssl
import subprocess
import time
from collections.abc import Callable, Mapping
from typing import Any

from lab import podspec
from lab.runtime import podman
from lab.runtime.translate import Unhonourable
from lab.shell import LabError

POLL = 0.1


def _http(host: str, port: int, path: str, scheme: str, headers: Mapping[str, str], timeout: float) -> int:
    """The status of one GET (0: no answer). HTTPS is not verified, as the kubelet's probes do not verify."""
    try:
        if scheme == "HTTPS":
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            conn: http.client.HTTPConnection = http.client.HTTPSConnection(host, port, context=ctx, timeout=timeout)
        else:
            conn = http.client.HTTPConnection(host, port, timeout=timeout)
        try:
            conn.request("GET", path, headers={"User-Agent": "kube-probe/1.30", **headers})
            resp = conn.getresponse()
            resp.read()
            return resp.status
        finally:
            conn.close()
    except (OSError, http.client.HTTPException):
        return 0


def _exec(container_name: str, command: list[str], timeout: float) -> subprocess.CompletedProcess[str] | None:
    """``podman exec``; None when it did not finish in time."""
    try:
        return podman.cli("exec", container_name, *command, check=False, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None


def probe_once(container: Mapping[str, Any], probe: Mapping[str, Any], pod_ip: str, container_name: str) -> bool:
    """One attempt of a startup/readiness/liveness probe."""
    timeout = float(probe.get("timeoutSeconds", 1))
    if "httpGet" in probe:
        get = probe["httpGet"]
        scheme = str(get.get("scheme", "HTTP")).upper()
        headers = {str(h["name"]): str(h["value"]) for h in get.get("httpHeaders") or []}
        port = podspec.probe_port(container, get["port"])
        status = _http(str(get.get("host") or pod_ip), port, str(get.get("path", "/")), scheme, headers, timeout)
        return 200 <= status < 400
    if "tcpSocket" in probe:
        port = podspec.probe_port(container, probe["tcpSocket"]["port"])
        try:
            socket.create_connection((str(probe["tcpSocket"].get("host") or pod_ip), port), timeout=timeout).close()
        except OSError:
            return False
        return True
    if "exec" in probe:
        res = _exec(container_name, [str(a) for a in probe["exec"].get("command") or []], timeout + 5)
        return res is not None and res.returncode == 0
    kind = next((k for k in probe if k in ("grpc",)), "?")
    raise Unhonourable(f"container {container.get('name')!r}: probe handler {kind!r} is not supported by the lab")


def wait_probe(
    container: Mapping[str, Any],
    kind: str,
    pod_ip: str,
    container_name: str,
    timeout: float,
    alive: Callable[[], str | None],
) -> bool:
    """Wait until the container's ``kind`` probe passes (False when it has none). ``alive`` returns why the
    container is not running, which fails the wait; so does the deadline. The error carries the container's
    logs. ``alive`` is asked once a second, the first time a second after the wait began - the kubelet's own
    cadence (its PLEG relists containers every second) - and never between the first attempts: it is a runtime
    call (``podman inspect``, ~40 ms), and asked after the first failed attempt it made a probe that would pass
    10 ms later pass 40 ms later, which bench.pod_startup counted as the pod's start-up."""
    probe = container.get(kind)
    if not probe:
        return False
    start = time.monotonic()
    delay = float(probe.get("initialDelaySeconds", 0))
    deadline = start + max(timeout, delay + 1)
    time.sleep(min(delay, timeout))
    checked = time.monotonic()
    while not probe_once(container, probe, pod_ip, container_name):
        now = time.monotonic()
        if now - checked > 1.0:
            checked = now
            why = alive()
            if why:
                raise LabError(
                    f"container {container['name']!r} {why} before its {kind} passed:\n"
                    f"{podman.logs(container_name)[-3000:]}"
                )
        if now > deadline:
            raise LabError(
                f"container {container['name']!r}: {kind} did not pass within {timeout:g}s:\n"
                f"{podman.logs(container_name)[-3000:]}"
            )
        time.sleep(POLL)
    return True


def run_hook(container: Mapping[str, Any], phase: str, pod_ip: str, container_name: str, timeout: float) -> str | None:
    """Run the container's ``postStart`` / ``preStop`` hook to completion; what ran, or None without one. A hook
    that fails or does not finish in ``timeout`` raises (the kubelet would kill the container)."""
    hook = (container.get("lifecycle") or {}).get(phase)
    if not hook:
        return None
    name = container["name"]
    if "exec" in hook:
        command = [str(a) for a in hook["exec"].get("command") or []]
        res = _exec(container_name, command, timeout)
        if res is None:
            raise LabError(f"container {name!r}: {phase} hook did not finish within {timeout:g}s: {command}")
        if res.returncode != 0:
            raise LabError(
                f"container {name!r}: {phase} hook exited {res.returncode}: {(res.stdout + res.stderr)[-500:]}"
            )
        return f"exec {command[:2]}"
    if "httpGet" in hook:
        get = hook["httpGet"]
        port = podspec.probe_port(container, get["port"])
        scheme = str(get.get("scheme", "HTTP")).upper()
        status = _http(str(get.get("host") or pod_ip), port, str(get.get("path", "/")), scheme, {}, timeout)
        if not 200 <= status < 400:
            raise LabError(f"container {name!r}: {phase} httpGet :{port} answered {status or 'nothing'}")
        return f"httpGet :{port}"
    if "sleep" in hook:
        time.sleep(min(float(hook["sleep"]["seconds"]), timeout))
        return "sleep"
    raise Unhonourable(f"container {name!r}: lifecycle.{phase} handler {next(iter(hook), '?')!r} is not supported")
