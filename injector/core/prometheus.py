"""Istio's Prometheus metrics merge: point the scrape annotations at the agent's merged endpoint, and hand the
app's own scrape settings to the agent (env ``ISTIO_PROMETHEUS_ANNOTATIONS``) so it still scrapes the app.

Keys are matched as Istio matches them, after replacing every character outside ``[A-Za-z0-9_]`` with ``_``:
``prometheus.io/scrape``, ``prometheus.io.scrape`` and ``prometheus-io/scrape`` are the same annotation. Pure.
"""

from __future__ import annotations

import json
import re
from typing import Any

from injector.core.annotations import PROMETHEUS_PATH, PROMETHEUS_PORT, PROMETHEUS_SCRAPE
from netinit.core.values import go_bool

ENV_NAME = "ISTIO_PROMETHEUS_ANNOTATIONS"
MERGED_PATH = "/stats/prometheus"
_CANONICAL = {"scrape": PROMETHEUS_SCRAPE, "path": PROMETHEUS_PATH, "port": PROMETHEUS_PORT}
_NOT_LABEL_CHAR = re.compile(r"[^a-zA-Z0-9_]")


def _keys(ann: dict[str, Any]) -> dict[str, list[str]]:
    """The annotation keys that mean scrape / path / port, in the pod's order."""
    found: dict[str, list[str]] = {field: [] for field in _CANONICAL}
    for key in ann:
        sanitized = _NOT_LABEL_CHAR.sub("_", key)
        for field in _CANONICAL:
            if sanitized == f"prometheus_io_{field}":
                found[field].append(key)
    return found


def merge(ann: dict[str, Any], status_port: int) -> str | None:
    """Rewrite ``ann`` in place for the merged endpoint on ``status_port``; the value for the proxy's
    ``ISTIO_PROMETHEUS_ANNOTATIONS`` env (None: set none). Nothing changes when the pod opts out of scraping
    (the first scrape annotation that parses as a Go bool is false), when the status port is 0, or when a port
    annotation already names the status port (the user pointed it there)."""
    if status_port == 0:
        return None
    found = _keys(ann)
    scrape = next((b for b in (go_bool(str(ann[k])) for k in found["scrape"]) if b is not None), True)
    if not scrape or any(str(ann[k]) == str(status_port) for k in found["port"]):
        return None
    original = {field: next((str(ann[k]) for k in found[field]), "") for field in _CANONICAL}
    for keys in found.values():
        for key in keys:
            del ann[key]
    ann[PROMETHEUS_PORT] = str(status_port)
    ann[PROMETHEUS_PATH] = MERGED_PATH
    ann[PROMETHEUS_SCRAPE] = "true"
    return json.dumps(original, separators=(",", ":")) if any(original.values()) else None


def restore(ann: dict[str, Any], env_value: str | None) -> None:
    """Undo `merge` (re-injection): the app's own annotations back from the env, or - when it had none - the
    merged ones `merge` wrote removed."""
    if env_value is not None:
        original = json.loads(env_value)
        for field, key in _CANONICAL.items():
            if original.get(field):
                ann[key] = original[field]
            else:
                ann.pop(key, None)
    elif ann.get(PROMETHEUS_PATH) == MERGED_PATH and ann.get(PROMETHEUS_SCRAPE) == "true":
        for key in _CANONICAL.values():
            ann.pop(key, None)
