"""App probe rewrite: kubelet probes go to the proxy's status port, which forwards them to the app.

Under strict mTLS a kubelet probe cannot reach the app through the proxy, so - as Istio does - httpGet,
tcpSocket and grpc probes (and httpGet/tcpSocket lifecycle hooks) of app containers become httpGet probes of
``/app-health/<container>/<readyz|livez|startupz>`` (``/app-lifecycle/<container>/<prestopz|poststartz>``) on
the status port. The originals, named ports resolved, travel in ``ISTIO_KUBE_APP_PROBERS`` on the proxy; that
same JSON lets `restore` undo the rewrite, which is what makes re-injection idempotent.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

ENV_NAME = "ISTIO_KUBE_APP_PROBERS"
PROBES = (("readinessProbe", "readyz"), ("livenessProbe", "livez"), ("startupProbe", "startupz"))
HOOKS = (("preStop", "prestopz"), ("postStart", "poststartz"))
_HANDLERS = ("httpGet", "tcpSocket", "grpc")


def _url(container: str, kind: str) -> str:
    base = "app-lifecycle" if kind in ("prestopz", "poststartz") else "app-health"
    return f"/{base}/{container}/{kind}"


def _handlers(c: dict[str, Any]) -> Iterator[tuple[dict[str, Any], str, str]]:
    """(the dict holding the handler, field name, url) for each probe or hook of container ``c``."""
    for field, kind in PROBES:
        if isinstance(c.get(field), dict):
            yield c, field, _url(c["name"], kind)
    lifecycle = c.get("lifecycle")
    if isinstance(lifecycle, dict):
        for field, kind in HOOKS:
            if isinstance(lifecycle.get(field), dict):
                yield lifecycle, field, _url(c["name"], kind)


def _app_containers(pod: dict[str, Any], proxy_name: str) -> Iterator[dict[str, Any]]:
    spec = pod.get("spec") or {}
    for c in [*(spec.get("containers") or []), *(spec.get("initContainers") or [])]:
        if c.get("name") != proxy_name:
            yield c


def _prober(handler: dict[str, Any], ports: dict[str, int]) -> dict[str, Any] | None:
    """What the proxy needs to run the original probe; None when it cannot be forwarded (exec, sleep)."""
    out: dict[str, Any] = {}
    for kind in _HANDLERS:
        if isinstance(handler.get(kind), dict):
            action = dict(handler[kind])
            port = action.get("port")
            if isinstance(port, str) and kind != "grpc":
                if port not in ports:
                    return None  # an unknown named port: leave the probe as the user wrote it
                action["port"] = ports[port]
            out[kind] = action
            break
    else:
        return None
    if "timeoutSeconds" in handler:
        out["timeoutSeconds"] = handler["timeoutSeconds"]
    return out


def rewrite(pod: dict[str, Any], status_port: int, proxy_name: str = "istio-proxy") -> str | None:
    """Rewrite app probes in place; returns the ISTIO_KUBE_APP_PROBERS value (None if nothing was rewritten)."""
    probers: dict[str, Any] = {}
    for c in _app_containers(pod, proxy_name):
        ports = {p["name"]: p["containerPort"] for p in c.get("ports") or [] if p.get("name")}
        for holder, field, url in _handlers(c):
            handler = holder[field]
            prober = _prober(handler, ports)
            if prober is None:
                continue
            probers[url] = prober
            new = {k: v for k, v in handler.items() if k not in _HANDLERS}
            # Keep host and headers (in a fixed order, so re-injection prints the same); HTTPS becomes HTTP to
            # the agent, which speaks HTTPS to the app.
            kept = sorted((k, v) for k, v in (handler.get("httpGet") or {}).items() if k not in ("path", "port"))
            http: dict[str, Any] = {"path": url, "port": status_port, **dict(kept)}
            if http.get("scheme") == "HTTPS":
                http["scheme"] = "HTTP"
            new["httpGet"] = http
            holder[field] = new
    if not probers:
        return None
    return json.dumps(probers, sort_keys=True, separators=(",", ":"))


def restore(pod: dict[str, Any], probers_json: str, proxy_name: str = "istio-proxy") -> None:
    """Undo `rewrite` in place from its ISTIO_KUBE_APP_PROBERS value (named ports come back as numbers)."""
    probers: dict[str, Any] = json.loads(probers_json)
    for c in _app_containers(pod, proxy_name):
        for holder, field, url in _handlers(c):
            prober = probers.get(url)
            if prober is None:
                continue
            handler = {k: v for k, v in holder[field].items() if k not in _HANDLERS}
            for kind in _HANDLERS:
                if kind in prober:
                    handler[kind] = prober[kind]
            holder[field] = handler
