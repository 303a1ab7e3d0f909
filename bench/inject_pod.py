"""Injection cost vs pod size: in-process `inject()`, no HTTP (performance issue, benchmark 2).

Pods with 1-64 containers and 0-2000 env vars, and a ~64 KiB pod; each timed twice: *cold* (the config's memo of
parsed template output cleared before every call - a pod unlike any seen before) and *warm* (the same pod again,
as for the replicas of one Deployment). Baseline in the same run: `copy.deepcopy` + `json.dumps` of the pod, the
floor for anything that copies and serialises it. "x/doubling" is the growth of cold time per doubling of size.

    .venv/bin/python -m bench.inject_pod [--repeat N] [--template sidecar|envoy]
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from collections.abc import Callable
from typing import Any

from injector.core.config import InjectorConfig, load_config
from injector.core.inject import inject
from injector.core.request import Request


def make_pod(containers: int, env: int, template: str, blob: int = 0) -> dict[str, Any]:
    def c(i: int) -> dict[str, Any]:
        return {
            "name": f"app-{i}",
            "image": "app:1",
            "env": [{"name": f"VAR_{j}", "value": f"value-{j}"} for j in range(env)],
            "ports": [{"name": "http", "containerPort": 8080 + i}],
            "readinessProbe": {"httpGet": {"path": "/r", "port": "http"}},
        }

    annotations = {"inject.istio.io/templates": template}
    if blob:
        annotations["example.com/blob"] = "x" * blob
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "big", "annotations": annotations},
        "spec": {"containers": [c(i) for i in range(containers)]},
    }


def median_ms(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def measure(cfg: InjectorConfig, pod: dict[str, Any], repeat: int) -> tuple[float, float, float]:
    req = Request(pod=pod, namespace="default", config=cfg)

    def cold() -> None:
        cfg.cache.clear()
        inject(req)

    inject(req)
    base = median_ms(lambda: json.dumps(copy.deepcopy(pod)), repeat)
    return base, median_ms(cold, repeat), median_ms(lambda: inject(req), repeat)


def table(title: str, rows: list[tuple[str, dict[str, Any]]], cfg: InjectorConfig, repeat: int) -> None:
    print(f"\n{title}")
    print(f"{'pod':>22} {'KiB':>6} {'baseline ms':>11} {'cold ms':>8} {'warm ms':>8} {'x/doubling':>10}")
    prev = None
    for label, pod in rows:
        base, cold, warm = measure(cfg, pod, repeat)
        growth = f"{cold / prev:10.2f}" if prev else f"{'':>10}"
        size = len(json.dumps(pod)) / 1024
        print(f"{label:>22} {size:6.1f} {base:11.3f} {cold:8.3f} {warm:8.3f} {growth}", flush=True)
        prev = cold


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=30)
    ap.add_argument("--template", default="sidecar", choices=["sidecar", "envoy"])
    args = ap.parse_args()
    cfg = load_config(env={})
    t = args.template
    print(f"# template {t}; medians of {args.repeat}")
    table(
        "containers (10 env vars each)",
        [(f"{n} containers", make_pod(n, 10, t)) for n in (1, 2, 4, 8, 16, 32, 64)],
        cfg,
        args.repeat,
    )
    table(
        "env vars (1 container)",
        [(f"{n} env vars", make_pod(1, n, t)) for n in (0, 125, 250, 500, 1000, 2000)],
        cfg,
        args.repeat,
    )
    table("a ~64 KiB pod", [("64 KiB annotation", make_pod(4, 20, t, blob=60_000))], cfg, args.repeat)


if __name__ == "__main__":
    main()
