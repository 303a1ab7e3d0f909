"""How injection cost grows with pod size (issue: a 2000-env-var pod must not go quadratic).

Baseline in the same run: `copy.deepcopy` + `json.dumps` of the same pod - the floor any injector that copies
and serialises the pod pays. Prints per-size medians and the ratio to the baseline; linear growth shows as a
roughly constant ratio and a per-env-var cost that does not rise with size.

    .venv/bin/python bench/inject_pod.py [--repeat N]
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from typing import Any

from injector.config import load_config
from injector.inject import Request, inject


def make_pod(n_env: int, template: str) -> dict[str, Any]:
    env = [{"name": f"VAR_{i}", "value": f"value-{i}"} for i in range(n_env)]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "big", "annotations": {"inject.istio.io/templates": template}},
        "spec": {
            "containers": [
                {
                    "name": "app",
                    "image": "app:1",
                    "env": env,
                    "ports": [{"name": "http", "containerPort": 8080}],
                    "readinessProbe": {"httpGet": {"path": "/r", "port": "http"}},
                }
            ]
        },
    }


def median_ms(fn: Any, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=30)
    args = ap.parse_args()
    cfg = load_config(env={})
    print(f"{'template':8} {'env vars':>8} {'baseline ms':>12} {'inject ms':>10} {'ratio':>6} {'us/env var':>10}")
    for template in ("sidecar", "envoy"):
        for n in (10, 500, 2000, 8000):
            pod = make_pod(n, template)
            req = Request(pod=pod, namespace="default", config=cfg)
            inject(req)  # warm the template cache
            base = median_ms(lambda pod=pod: json.dumps(copy.deepcopy(pod)), args.repeat)
            inj = median_ms(lambda req=req: inject(req), args.repeat)
            print(f"{template:8} {n:8d} {base:12.2f} {inj:10.2f} {inj / base:6.1f} {inj * 1000 / max(n, 1):10.1f}")


if __name__ == "__main__":
    main()
