"""The webhook's Prometheus metrics."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.5)


class Metrics:
    """The webhook's Prometheus metrics, in a registry of their own (one per app, so tests do not collide)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("sidecar_injector_requests", "Admission requests received", registry=r)
        self.injected = Counter("sidecar_injector_injections", "Pods injected", registry=r)
        self.skipped = Counter("sidecar_injector_skipped", "Pods not injected, by reason", ["reason"], registry=r)
        self.refused = Counter("sidecar_injector_refused", "Pods refused (bad annotation or template)", registry=r)
        self.errors = Counter(
            "sidecar_injector_errors", "Requests that could not be answered properly, by kind", ["kind"], registry=r
        )
        self.latency = Histogram(
            "sidecar_injector_request_duration_seconds",
            "Time to answer an admission request",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.reloads = Counter(
            "sidecar_injector_reloads", "Config/certificate reloads, by what and result", ["what", "result"], registry=r
        )
        self.last_reload_ok = Gauge(
            "sidecar_injector_last_reload_success", "1 if the last reload of <what> worked", ["what"], registry=r
        )

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
