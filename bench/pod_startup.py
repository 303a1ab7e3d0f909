"""What injection adds to pod start-up: from the sandbox being ready (network namespace, address, route) to the
pod being Ready, for the same pod plain and injected, in the legacy and native layouts, with and without
``holdApplicationUntilProxyStarts``, split into istio-init (netinit), proxy start -> proxy ready (Envoy from the
injected command line passing its startupProbe/readinessProbe) and app started (the podlab echo server
listening).

lab.podlab runs the pods exactly as injected; its probes are polled every 10 ms here (a kubelet polls every
``periodSeconds``, 1 s for Istio's startupProbe, which would only measure the kubelet), so "proxy ready" is the
proxy's own start-up. Rows alternate between variants after one warm-up round; each figure is the median of
``--runs`` pods.

With ``--runtime podman`` the same variants run as they ship: the images ``make images`` builds (netinit, Envoy)
and the lab's echo app image, each container started by podman + runc (lab.runtime.kubelet, the runtime lab's
kubelet), its probes polled every 10 ms the same way. Then "istio-init" includes creating and running the init
container, and every phase pays podman's own cost per container - which the extra row "plain + no-op init" (the
plain pod plus an init container that runs ``true``) measures in the same run; "app started" is the app's
readinessProbe passing.

    sudo .venv/bin/python -m bench.pod_startup [--runs 10] [--flavor legacy] [--runtime podman]
"""

from __future__ import annotations

import argparse
import copy
import statistics
from collections.abc import Callable
from typing import Any

from bench.pods import APP_PORT, Injector, app_pod, injector, shipped_images
from lab import podlab

TARGET_ADDED_MS = 300.0
HOLD = {"proxy.istio.io/config": '{"holdApplicationUntilProxyStarts": true}'}
PHASES = ("istio-init", "proxy ready", "app started", "pod ready")
NOOP = "plain + no-op init"  # --runtime podman: the runtime's own cost of one more container


def variants(values: dict[str, Any] | None = None) -> list[tuple[str, Injector | None]]:
    values = values or {}
    return [
        ("plain", None),
        ("legacy", injector(values, {}, native="false")),
        ("legacy + hold", injector(values, HOLD, native="false")),
        ("native sidecar", injector(values, {}, native="true")),
    ]


def phases(events: list[str], times: list[float], runtime: str = "netns") -> dict[str, float]:
    """Milliseconds from the sandbox being ready to each phase's end (absent phases are left out), from a
    podlab (``netns``) or lab.runtime.kubelet (``podman``) pod's events."""
    netns = runtime == "netns"
    init, proxy = f"{podlab.INIT_CONTAINER}: ", f"{podlab.PROXY_CONTAINER}: "
    marks: dict[str, Callable[[str], bool]] = {
        "sandbox": (lambda e: e == "sandbox ready") if netns else (lambda e: e.startswith("sandbox: pod ")),
        "istio-init": lambda e: e == f"{init}exit 0" if netns else e.startswith(f"{init}exited 0"),
        "proxy ready": lambda e: e.startswith(proxy) and "Probe passed" in e,
        "app started": lambda e: e.startswith("app: app server on" if netns else "app: readinessProbe passed"),
        "pod ready": lambda e: e == "pod ready" if netns else e.endswith(": running and ready"),
    }
    t0 = next(t for e, t in zip(events, times, strict=True) if marks["sandbox"](e))
    found = {}
    for phase, match in marks.items():
        at = [t for e, t in zip(events, times, strict=True) if match(e)]
        if at and phase != "sandbox":
            found[phase] = (max(at) - t0) * 1000
    return found


def netns_samples(rows: list[tuple[str, Injector | None]], runs: int, flavor: str) -> dict[str, list[dict[str, float]]]:
    samples: dict[str, list[dict[str, float]]] = {label: [] for label, _ in rows}
    interval, podlab.PROBE_INTERVAL = podlab.PROBE_INTERVAL, 0.01
    try:
        for i in range(runs + 1):
            for label, inject in rows:
                pod = app_pod("web", image="podlab/echo:1")
                with podlab.run_pod(inject(pod) if inject else pod, flavor) as running:
                    if i:  # round 0 warms up: the first start of each variant pays for cold caches
                        samples[label].append(phases(running.events, running.event_times))
    finally:
        podlab.PROBE_INTERVAL = interval
    return samples


def podman_samples(
    runs: int, flavor: str
) -> tuple[dict[str, list[dict[str, float]]], list[tuple[str, Injector | None]]]:
    """The variants with the shipped images under podman (built, or found in the cache, first)."""
    from lab.runtime import apps, kubelet, podman, probes

    built = podman.build_images()
    images = shipped_images(built.images)

    def with_noop_init(pod: dict[str, Any]) -> dict[str, Any]:
        """The plain pod plus one init container that only runs ``true``: what one more container costs here."""
        out = copy.deepcopy(pod)
        out["spec"]["initContainers"] = [{"name": "noop", "image": built.images["netinit"], "command": ["true"]}]
        return out

    plain, *injected = variants(images)
    rows = [plain, (NOOP, with_noop_init), *injected]
    app = app_pod("web", image=apps.echo_image(built.base))
    container = app["spec"]["containers"][0]
    container["env"] = [{"name": "ECHO_NAME", "value": "web"}, {"name": "ECHO_PORTS", "value": str(APP_PORT)}]
    container["readinessProbe"] = {"httpGet": {"path": "/ready", "port": APP_PORT}, "periodSeconds": 1}
    samples: dict[str, list[dict[str, float]]] = {label: [] for label, _ in rows}
    interval, probes.POLL = probes.POLL, 0.01
    try:
        for i in range(runs + 1):
            for label, inject in rows:
                with kubelet.run_pod(inject(app) if inject else copy.deepcopy(app), node_iptables=flavor) as running:
                    if i:  # round 0 warms up (a first podman pod was seen to take 2.6 s)
                        samples[label].append(phases(running.events, running.event_times, "podman"))
    finally:
        probes.POLL = interval
    return samples, rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=10, help="pods per variant")
    ap.add_argument("--flavor", default="legacy", choices=["legacy", "nft", "native-nft"])
    ap.add_argument("--runtime", default="netns", choices=["netns", "podman"], help="podlab, or the shipped images")
    args = ap.parse_args(argv)
    if args.runtime == "podman":
        samples, rows = podman_samples(args.runs, args.flavor)
        how = "podman + runc, the shipped images"
    else:
        rows = variants()
        samples = netns_samples(rows, args.runs, args.flavor)
        how = "network namespaces (podlab)"
    print(
        f"# {args.flavor} iptables; {how}; ms from sandbox ready, median of {args.runs} pods; probes polled every 10 ms"
    )
    print(f"{'variant':<20} " + " ".join(f"{p:>12}" for p in PHASES) + f" {'added':>8}")
    plain = statistics.median(s["pod ready"] for s in samples["plain"])
    for label, _ in rows:
        cells = []
        for phase in PHASES:
            values = [s[phase] for s in samples[label] if phase in s]
            cells.append(f"{statistics.median(values):12.1f}" if values else f"{'-':>12}")
        ready = statistics.median(s["pod ready"] for s in samples[label])
        added = f"{ready - plain:+8.1f}" if label != "plain" else f"{'':>8}"
        print(f"{label:<20} " + " ".join(cells) + f" {added}", flush=True)
    print(
        f"target: injection adds <= {TARGET_ADDED_MS:g} ms to pod start (Istio's sidecar: seconds - agent, xDS, certs)"
    )


if __name__ == "__main__":
    main()
