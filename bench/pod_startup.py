"""What injection adds to pod start-up: from the sandbox being ready (network namespace, address, route) to the
pod being Ready, for the same pod plain and injected, in the legacy and native layouts, with and without
``holdApplicationUntilProxyStarts``, split into istio-init (netinit), proxy start -> proxy ready (Envoy from the
injected command line passing its startupProbe/readinessProbe) and app started (the podlab echo server
listening).

lab.podlab runs the pods exactly as injected; its probes are polled every 10 ms here (a kubelet polls every
``periodSeconds``, 1 s for Istio's startupProbe, which would only measure the kubelet), so "proxy ready" is the
proxy's own start-up. Rows alternate between variants; each figure is the median of ``--runs`` pods.

    sudo .venv/bin/python -m bench.pod_startup [--runs 10] [--flavor legacy]
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable

from bench.pods import Injector, app_pod, injector
from lab import podlab

TARGET_ADDED_MS = 300.0
HOLD = {"proxy.istio.io/config": '{"holdApplicationUntilProxyStarts": true}'}
PHASES = ("istio-init", "proxy ready", "app started", "pod ready")


def variants() -> list[tuple[str, Injector | None]]:
    return [
        ("plain", None),
        ("legacy", injector({}, {}, native="false")),
        ("legacy + hold", injector({}, HOLD, native="false")),
        ("native sidecar", injector({}, {}, native="true")),
    ]


def phases(pod: podlab.RunningPod) -> dict[str, float]:
    """Milliseconds from "sandbox ready" to each phase's end (absent phases are left out)."""
    t0 = pod.event_times[pod.events.index("sandbox ready")]

    def at(match: Callable[[str], bool]) -> float | None:
        times = [t for e, t in zip(pod.events, pod.event_times, strict=True) if match(e)]
        return (max(times) - t0) * 1000 if times else None

    found = {
        "istio-init": at(lambda e: e == f"{podlab.INIT_CONTAINER}: exit 0"),
        "proxy ready": at(lambda e: e.startswith(f"{podlab.PROXY_CONTAINER}: ") and e.endswith("Probe passed")),
        "app started": at(lambda e: e.startswith("app: app server on")),
        "pod ready": at(lambda e: e == "pod ready"),
    }
    return {k: v for k, v in found.items() if v is not None}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=10, help="pods per variant")
    ap.add_argument("--flavor", default="legacy", choices=["legacy", "nft", "native-nft"])
    args = ap.parse_args(argv)
    rows = variants()
    samples: dict[str, list[dict[str, float]]] = {label: [] for label, _ in rows}
    interval, podlab.PROBE_INTERVAL = podlab.PROBE_INTERVAL, 0.01
    try:
        for _ in range(args.runs):
            for label, inject in rows:
                pod = app_pod("web", image="podlab/echo:1")
                with podlab.run_pod(inject(pod) if inject else pod, args.flavor) as running:
                    samples[label].append(phases(running))
    finally:
        podlab.PROBE_INTERVAL = interval
    print(f"# {args.flavor} iptables; ms from sandbox ready, median of {args.runs} pods; probes polled every 10 ms")
    print(f"{'variant':<16} " + " ".join(f"{p:>12}" for p in PHASES) + f" {'added':>8}")
    plain = statistics.median(s["pod ready"] for s in samples["plain"])
    for label, _ in rows:
        cells = []
        for phase in PHASES:
            values = [s[phase] for s in samples[label] if phase in s]
            cells.append(f"{statistics.median(values):12.1f}" if values else f"{'-':>12}")
        ready = statistics.median(s["pod ready"] for s in samples[label])
        added = f"{ready - plain:+8.1f}" if label != "plain" else f"{'':>8}"
        print(f"{label:<16} " + " ".join(cells) + f" {added}", flush=True)
    print(
        f"target: injection adds <= {TARGET_ADDED_MS:g} ms to pod start (Istio's sidecar: seconds - agent, xDS, certs)"
    )


if __name__ == "__main__":
    main()
