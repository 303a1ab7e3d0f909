"""The admission webhook: FastAPI on uvicorn over TLS, around the pure `inject` core.

`Webhook.handle` holds the whole HTTP contract (status codes, AdmissionReview answers, metrics, the log line)
as a plain function of (body, content type, path), so it is tested without a server; the FastAPI routes only
read the body and pass it on. Configuration and the serving certificate are re-read when their files change:
`Reloader` keeps the last good version when a new one is broken and says so in logs, metrics and /readyz.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import json
import logging
import os
import signal
import socket
import ssl
import time
from collections import OrderedDict
from collections.abc import Callable, Coroutine, Hashable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

from fastapi import FastAPI
from fastapi import Request as HttpRequest
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from injector.core.config import InjectorConfig, load_config
from injector.core.inject import CLUSTER_ENV, NETWORK_ENV, Request, check_config, inject
from injector.core.policy import decide
from injector.errors import InjectorError, Refused
from injector.server.review import V1, BadReview, build_response, encode_patch, parse_review, salvage_identity

log = logging.getLogger("sidecar_injector")

MAX_BODY = 6 * 1024 * 1024  # the API server's own request limit is 3 MiB; anything bigger is not from it
BODY_TIMEOUT = 10.0  # the MWC's timeoutSeconds: after that nobody is waiting for the answer (--request-timeout)
URL_PARAMETER_ENV = {"cluster": CLUSTER_ENV, "net": NETWORK_ENV}
MEMO_SIZE = 512  # distinct pods remembered (a pod's outcome is a few KiB)
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.5)

T = TypeVar("T")


# --- metrics --------------------------------------------------------------------------------------------------


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


# --- reloading ------------------------------------------------------------------------------------------------


def fingerprint(paths: list[Path]) -> Hashable:
    """What changes when a file or a directory's files change - also through ConfigMap ``..data`` symlink swaps."""
    out: list[tuple[str, int, int, int]] = []
    for p in paths:
        files = sorted(p.iterdir()) if p.is_dir() else [p]
        for f in files:
            try:
                st = f.stat()  # follows symlinks: a swapped ..data target changes inode/mtime
            except OSError:
                continue
            if not f.is_dir():
                out.append((str(f), st.st_ino, st.st_mtime_ns, st.st_size))
    return tuple(out)


@dataclass
class Reloader(Generic[T]):
    """Re-runs ``load`` when ``paths`` change and stay unchanged for ``debounce`` seconds; keeps the last good
    value when ``load`` fails. Poll-driven (``poll(now)``) so it needs no inotify and is tested with a clock."""

    what: str
    paths: list[Path]
    load: Callable[[], T]
    metrics: Metrics
    debounce: float = 0.5
    retry_failures: bool = False  # certs: a key written just after its cert is worth retrying
    value: T | None = None
    last_error: str | None = None
    _applied: Hashable = None
    _pending: Hashable = None
    _pending_since: float = 0.0
    _counted_failure: Hashable = field(default=None, repr=False)

    def initial(self) -> T:
        """The first load; errors propagate (a server without a config must not start)."""
        self._applied = fingerprint(self.paths)
        self.value = self.load()
        self.metrics.last_reload_ok.labels(self.what).set(1)
        return self.value

    def initial_or_wait(self) -> bool:
        """The first load, but a failure only means "not yet": the value stays None (not ready) until the
        files change and load. True when loaded."""
        try:
            self.initial()
        except Exception as e:  # noqa: BLE001 - any failure: report, wait for the files to change
            self.last_error = f"{type(e).__name__}: {e}"
            self.metrics.last_reload_ok.labels(self.what).set(0)
            log.error(
                json.dumps({"msg": f"{self.what} not loadable yet; not ready until it is", "error": self.last_error})
            )
            return False
        return True

    def poll(self, now: float) -> bool:
        """Reload if due; True when a new value was installed."""
        fp = fingerprint(self.paths)
        if fp == self._applied:
            self._pending = None
            return False
        if fp != self._pending:
            self._pending, self._pending_since = fp, now
            return False
        if now - self._pending_since < self.debounce:
            return False
        try:
            value = self.load()
        except Exception as e:  # noqa: BLE001 - any failure keeps the last good value; the message says which
            self.last_error = f"{type(e).__name__}: {e}"
            if self._counted_failure != fp:
                self._counted_failure = fp
                self.metrics.reloads.labels(self.what, "failure").inc()
                self.metrics.last_reload_ok.labels(self.what).set(0)
                msg = f"{self.what} reload failed; keeping the last good one"
                log.error(json.dumps({"msg": msg, "error": self.last_error}))
            if not self.retry_failures:
                self._applied = fp
            return False
        self.value, self._applied, self.last_error = value, fp, None
        self.metrics.reloads.labels(self.what, "success").inc()
        self.metrics.last_reload_ok.labels(self.what).set(1)
        log.info(json.dumps({"msg": f"{self.what} reloaded"}))
        return True


# --- the webhook ----------------------------------------------------------------------------------------------


def proxy_env_from_path(path: str) -> dict[str, str]:
    """Istio's /inject/<key>/<value>/... convention: cluster and net have their env names, other keys are
    upper-cased, ``--slash--`` stands for "/", and a trailing key without a value is ignored."""
    parts = path.strip("/").split("/")  # empty values stay in place, as in Istio: /net//cluster/c2
    if parts[:1] == ["inject"]:
        parts = parts[1:]
    env: dict[str, str] = {}
    for i in range(0, len(parts) - 1, 2):
        key, value = (s.replace("--slash--", "/") for s in parts[i : i + 2])
        if value:
            env[URL_PARAMETER_ENV.get(key, key.upper())] = value
    return env


@dataclass(frozen=True)
class Outcome:
    """What the webhook decided for one pod, independent of the request's uid and apiVersion."""

    decision: str  # injected | skipped | refused | error
    reason: str
    code: str  # metrics label
    patch: list[dict[str, Any]] | None = None
    warnings: tuple[str, ...] = ()
    templates: str = ""
    response_tail: bytes = b""  # the AdmissionResponse after its uid, serialised once: `"allowed":...}`

    @staticmethod
    def make(
        decision: str,
        reason: str,
        code: str,
        patch: list[dict[str, Any]] | None = None,
        warnings: tuple[str, ...] = (),
        templates: str = "",
    ) -> Outcome:
        allowed = decision in ("injected", "skipped")
        response = build_response(
            V1,
            "",
            allowed=allowed,
            patch=encode_patch(patch) if patch else None,
            message=None if allowed else reason,
            warnings=list(warnings),
        )["response"]
        fields = {k: v for k, v in response.items() if k != "uid"}
        tail = json.dumps(fields, separators=(",", ":")).encode()[1:]  # drop "{": it follows the uid
        return Outcome(decision, reason, code, patch, warnings, templates, tail)


@dataclass
class Webhook:
    config: Reloader[InjectorConfig]
    metrics: Metrics
    revision: str = ""
    kube_version: tuple[int, int] | None = None
    cert: Reloader[Any] | None = None
    clock: Callable[[], float] = time.perf_counter
    _memo: OrderedDict[tuple[bytes, str, str], Outcome] = field(default_factory=OrderedDict, repr=False)
    _memo_config: InjectorConfig | None = field(default=None, repr=False)

    @property
    def ready(self) -> tuple[bool, str]:
        if self.config.value is None:
            return False, "no config loaded"
        if self.cert is not None and self.cert.value is None:
            return False, f"no serving certificate loaded ({self.cert.last_error})"
        reloaders = [r for r in (self.config, self.cert) if r is not None]
        notes = [f"{r.what}: last reload failed ({r.last_error})" for r in reloaders if r.last_error]
        return True, "; ".join(notes) or "ok"

    def handle(self, body: bytes, content_type: str | None, path: str = "/inject") -> tuple[int, bytes]:
        """The HTTP contract: (status, JSON body). Never raises; never answers 500."""
        start = self.clock()
        self.metrics.requests.inc()
        entry: dict[str, Any] = {"uid": "", "namespace": "", "pod": "", "decision": "", "reason": ""}
        try:
            status, out = self._handle(body, content_type, path, entry)
        except Exception as e:  # noqa: BLE001 - a bug must become an answer, not a 500 the API server retries
            self.metrics.errors.labels("internal").inc()
            api_version, uid = salvage_identity(body)
            entry.update(decision="error", reason=f"internal error: {type(e).__name__}: {e}")
            status, out = 200, dict(build_response(api_version, uid, allowed=False, message=entry["reason"]))
        elapsed = self.clock() - start
        self.metrics.latency.observe(elapsed)
        entry["duration_ms"] = round(elapsed * 1000, 3)
        log.info(json.dumps(entry))
        return status, out if isinstance(out, bytes) else json.dumps(out, separators=(",", ":")).encode()

    def _handle(self, body: bytes, content_type: str | None, path: str, entry: dict[str, Any]) -> tuple[int, Any]:
        mime = (content_type or "").split(";")[0].strip().lower()
        if mime != "application/json":
            self.metrics.errors.labels("content_type").inc()
            entry.update(decision="invalid", reason=f"Content-Type {content_type!r} is not application/json")
            return 415, {"error": entry["reason"]}
        if not body:
            self.metrics.errors.labels("empty_body").inc()
            entry.update(decision="invalid", reason="empty body")
            return 400, {"error": "empty body"}
        if len(body) > MAX_BODY:
            self.metrics.errors.labels("body_too_large").inc()
            entry.update(decision="invalid", reason=f"body larger than {MAX_BODY} bytes")
            return 400, {"error": entry["reason"]}
        try:
            review = parse_review(body)
        except BadReview as e:
            self.metrics.errors.labels("bad_review").inc()
            api_version, uid = salvage_identity(body)
            entry.update(uid=uid, decision="invalid", reason=str(e))
            return 200, build_response(api_version, uid, allowed=False, message=f"invalid AdmissionReview: {e}")
        entry.update(uid=review.uid, namespace=review.namespace, pod=review.pod_name, dry_run=review.dry_run)

        def answer(**kw: Any) -> tuple[int, Any]:
            return 200, build_response(review.api_version, review.uid, **kw)

        if review.kind != "Pod" or review.operation not in ("CREATE", "") or review.obj is None:
            self.metrics.skipped.labels("not_pod_create").inc()
            entry.update(decision="skipped", reason=f"not a Pod CREATE ({review.kind} {review.operation})")
            return answer()
        quoted_uid = json.dumps(review.uid).encode()
        body_key = body.replace(quoted_uid, b"") if body.count(quoted_uid) == 1 else None
        outcome = self.outcome(review.obj, review.namespace, path, body_key)
        if outcome.decision == "injected":
            self.metrics.injected.inc()
        elif outcome.decision == "skipped":
            self.metrics.skipped.labels(outcome.code).inc()
        elif outcome.decision == "refused":
            self.metrics.refused.inc()
        else:
            self.metrics.errors.labels("injector").inc()
        entry.update(decision=outcome.decision, reason=outcome.reason)
        if outcome.decision == "injected":
            entry.update(templates=outcome.templates, patch_ops=len(outcome.patch or []))
        # The response minus its uid was serialised once with the outcome (the patch is most of its bytes).
        head = b'{"apiVersion":%s,"kind":"AdmissionReview","response":{"uid":%s,' % (
            json.dumps(review.api_version).encode(),
            json.dumps(review.uid).encode(),
        )
        return 200, head + outcome.response_tail + b"}"

    def outcome(self, pod: dict[str, Any], namespace: str, path: str, body_key: bytes | None = None) -> Outcome:
        """Decision and patch for this pod: a pure function of (pod, namespace, path) under one config, so it is
        memoised - the replicas of a Deployment arrive as identical pods. The memo empties on a config reload.
        ``body_key`` (the request body without its uid) saves re-serialising the pod for the key: equal bodies
        carry equal pods."""
        config = self.config.value
        assert config is not None  # initial() ran before serving
        if config is not self._memo_config:
            self._memo.clear()
            self._memo_config = config
        key = (body_key or json.dumps(pod, separators=(",", ":")).encode(), namespace, path)
        hit = self._memo.get(key)
        if hit is not None:
            self._memo.move_to_end(key)
            return hit
        out = self._compute(pod, namespace, path, config)
        self._memo[key] = out
        if len(self._memo) > MEMO_SIZE:
            self._memo.popitem(last=False)
        return out

    def _compute(self, pod: dict[str, Any], namespace: str, path: str, config: InjectorConfig) -> Outcome:
        decision = decide(pod, namespace, config)
        warnings = decision.warnings
        if not decision.inject:
            return Outcome.make("skipped", decision.reason, decision.code, warnings=warnings)
        req = Request(
            pod=pod,
            namespace=namespace,
            config=config,
            revision=self.revision,
            kube_version=self.kube_version,
            proxy_env=proxy_env_from_path(path),
        )
        try:
            result = inject(req)
        except Refused as e:
            return Outcome.make("refused", str(e), "refused", warnings=warnings)
        except InjectorError as e:
            return Outcome.make("error", str(e), "injector", warnings=warnings)
        templates = ",".join(result.templates)
        return Outcome.make("injected", decision.reason, decision.code, result.patch, warnings, templates)

    async def watch(self, interval: float) -> None:
        """Poll config and certificate files forever (cancelled at shutdown)."""
        while True:
            await asyncio.sleep(interval)
            now = time.monotonic()
            self.config.poll(now)
            if self.cert is not None:
                self.cert.poll(now)


# --- FastAPI app ----------------------------------------------------------------------------------------------


def create_app(webhook: Webhook, body_timeout: float = BODY_TIMEOUT) -> FastAPI:
    app = FastAPI(title="sidecar-injector", docs_url=None, redoc_url=None, openapi_url=None)

    async def read_body(request: HttpRequest) -> bytes | None:
        """The body, or None when it is over the limit (stops reading as soon as it is)."""
        declared = request.headers.get("content-length")
        if declared is not None and (declared.isascii() and declared.isdigit()) and int(declared) > MAX_BODY:
            return None
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > MAX_BODY:
                return None
            chunks.append(chunk)
        return b"".join(chunks)

    async def review(request: HttpRequest) -> Response:
        try:
            async with asyncio.timeout(body_timeout):  # no extra task per request, unlike wait_for
                body = await read_body(request)
        except TimeoutError:
            webhook.metrics.errors.labels("body_timeout").inc()
            return JSONResponse({"error": f"body not received within {body_timeout:g}s"}, status_code=408)
        if body is None:
            body = b"x" * (MAX_BODY + 1)  # let handle() answer and count it like any oversized body
        status, out = webhook.handle(body, request.headers.get("content-type"), request.url.path)
        return Response(out, status_code=status, media_type="application/json")

    app.add_api_route("/inject", review, methods=["POST"])
    app.add_api_route("/inject/{params:path}", review, methods=["POST"])

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> Response:
        ok, detail = webhook.ready
        return JSONResponse({"ready": ok, "detail": detail}, status_code=200 if ok else 503)

    @app.get("/metrics")
    async def metrics() -> Response:
        data, ctype = webhook.metrics.render()
        return Response(data, media_type=ctype)

    return app


# --- serving --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SelfManaged:
    """Where the serving certificate comes from when no files are given: a Secret this webhook creates and
    renews, and the MutatingWebhookConfiguration whose caBundle it keeps in step."""

    secret: str
    webhook_config: str
    service: str
    namespace: str
    cert_dir: Path
    api_server: str | None = None  # None: in-cluster ServiceAccount
    check_interval: float = 3600.0
    cluster_domain: str = "cluster.local"
    retries: int = 8  # start-up attempts: 1+2+4+8+16+30+30 s of waiting at most
    retry_delay: float = 1.0


class CertKeeper:
    """Fetches (or creates) the serving certificate through the Kubernetes API and writes it where the
    certificate `Reloader` watches, so renewals reach new connections like any other rotation."""

    def __init__(self, opts: SelfManaged) -> None:
        from injector.certs.kube import ClientKubeApi

        self.opts = opts
        self.api = ClientKubeApi(host=opts.api_server)
        self.cert_file = opts.cert_dir / "tls.crt"
        self.key_file = opts.cert_dir / "tls.key"

    def refresh(self) -> bool:
        """Ensure the Secret and caBundle are current; True when new files were written."""
        from datetime import UTC, datetime

        from injector.certs.kube import ensure_serving_cert

        o = self.opts
        bundle = ensure_serving_cert(
            self.api,
            namespace=o.namespace,
            secret_name=o.secret,
            service=o.service,
            mwc_name=o.webhook_config,
            now=datetime.now(UTC),
            cluster_domain=o.cluster_domain,
        )
        if self.cert_file.exists() and self.cert_file.read_bytes() == bundle.cert_pem:
            return False
        o.cert_dir.mkdir(parents=True, exist_ok=True)
        _write_private(o.cert_dir / "ca.crt", bundle.ca_pem, 0o644)
        _write_private(self.key_file, bundle.key_pem, 0o600)  # key first: the reloader retries a mismatch
        _write_private(self.cert_file, bundle.cert_pem, 0o644)
        log.info(json.dumps({"msg": "serving certificate written", "dir": str(o.cert_dir)}))
        return True

    async def keep(self, metrics: Metrics) -> None:
        while True:
            await asyncio.sleep(self.opts.check_interval)
            try:
                await asyncio.to_thread(self.refresh)
            except Exception as e:  # noqa: BLE001 - keep serving the current certificate; try again later
                metrics.errors.labels("cert_refresh").inc()
                log.error(json.dumps({"msg": "certificate refresh failed", "error": f"{type(e).__name__}: {e}"}))


def _write_private(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


@dataclass(frozen=True)
class ServeOptions:
    port: int
    cert_file: Path
    key_file: Path
    config_dir: Path | None
    host: str = "0.0.0.0"
    revision: str = ""
    kube_version: tuple[int, int] | None = None
    reload_interval: float = 1.0
    body_timeout: float = BODY_TIMEOUT
    self_managed: SelfManaged | None = None
    # Ask the API server its version (for nativeSidecar auto) when kube_version is not given.
    discover_kube_version: bool = False


def load_pair(ctx: ssl.SSLContext, cert_file: Path, key_file: Path) -> ssl.SSLContext:
    """Load a cert/key pair into ``ctx`` only if they match. Both files are read once and checked in a scratch
    context first: loading a mismatched pair straight into the live context (a rotation caught between writing
    the cert and the key) would leave it unable to complete any handshake."""
    import tempfile

    cert, key = cert_file.read_bytes(), key_file.read_bytes()
    with tempfile.TemporaryDirectory(prefix="sidecar-injector-tls-") as d:
        c, k = Path(d, "tls.crt"), Path(d, "tls.key")
        c.write_bytes(cert)
        k.touch(mode=0o600)
        k.write_bytes(key)
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(str(c), str(k))  # raises on a mismatch
        ctx.load_cert_chain(str(c), str(k))
    return ctx


def discover_kube_version(api_server: str | None) -> tuple[int, int] | None:
    """The API server's version, or None (logged) when it cannot be read: auto then means legacy sidecars."""
    from injector.certs.kube import ClientKubeApi, KubeError

    try:
        with ClientKubeApi(host=api_server) as api:
            version = api.server_version()
    except (KubeError, OSError, ValueError) as e:
        log.warning(json.dumps({"msg": "Kubernetes version unknown; nativeSidecar auto means legacy", "error": str(e)}))
        return None
    log.info(json.dumps({"msg": "Kubernetes version discovered", "version": f"{version[0]}.{version[1]}"}))
    return version


def build(opts: ServeOptions) -> tuple[Webhook, ssl.SSLContext]:
    """The webhook with its config and certificate loaded; raises on a bad config or certificate."""
    metrics = Metrics()
    config = Reloader(
        "config",
        [opts.config_dir] if opts.config_dir else [],
        lambda: check_config(load_config(opts.config_dir)),
        metrics,
    )
    config.initial()
    # TLS >= 1.2. Reloads call `load_pair` on this same context: new handshakes get the new certificate,
    # established connections keep theirs.
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    cert: Reloader[ssl.SSLContext] = Reloader(
        "certificate",
        [opts.cert_file, opts.key_file],
        lambda: load_pair(ctx, opts.cert_file, opts.key_file),
        metrics,
        retry_failures=True,
    )
    if not cert.initial_or_wait():
        # Serve anyway with a throwaway self-signed certificate, so /healthz and /readyz (503, saying what is
        # missing) answer the kubelet, which does not verify probe certificates; the real one replaces it as
        # soon as its files load.
        _load_placeholder(ctx)
    return Webhook(config, metrics, opts.revision, opts.kube_version, cert), ctx


def _load_placeholder(ctx: ssl.SSLContext) -> None:
    import tempfile

    from injector.certs import crypto

    ca = crypto.make_ca("sidecar-injector-placeholder", days=1)
    pair = crypto.make_serving_cert(ca, "sidecar-injector-placeholder", "none", days=1)
    with tempfile.TemporaryDirectory(prefix="sidecar-injector-tls-") as d:
        Path(d, "tls.crt").write_bytes(pair.cert_pem)
        Path(d, "tls.key").write_bytes(pair.key_pem)
        load_pair(ctx, Path(d, "tls.crt"), Path(d, "tls.key"))


def configure_logging() -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter('{"ts":"%(asctime)s","level":"%(levelname)s","log":%(message)s}'))
    log.handlers[:] = [handler]
    log.setLevel(logging.INFO)
    log.propagate = False


def run(opts: ServeOptions, workers: int = 1) -> int:
    """Prepare once (certificate, API server version, a config and certificate that load), then serve - in
    ``workers`` processes sharing one listening socket when more than one (the kernel spreads connections; each
    process has its own memo and reloaders). Returns the exit code."""
    keeper = None
    if opts.self_managed is not None:
        keeper = CertKeeper(opts.self_managed)
        # Before serving: a replica without a certificate must not become ready. The API server may be briefly
        # unreachable or our RBAC not applied yet: retry with backoff, then fail with the last error.
        with_backoff(keeper.refresh, opts.self_managed.retries, opts.self_managed.retry_delay, "serving certificate")
    if opts.kube_version is None and opts.discover_kube_version:
        api_server = opts.self_managed.api_server if opts.self_managed else None
        opts = dataclasses.replace(opts, kube_version=discover_kube_version(api_server))
    built = build(opts)  # once, before forking: a bad config fails here, and workers inherit it
    if workers <= 1:
        _run_loop(_serve(opts, built, keeper, None))
        return 0
    sock = _listen(opts.host, opts.port)
    children: list[int] = []
    for i in range(workers):
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child
            code = 0
            try:
                _run_loop(_serve(opts, built, keeper if i == 0 else None, sock))  # one renews the certificate
            except BaseException:  # noqa: BLE001 - report and leave with a code, never return into the parent's code
                import traceback

                traceback.print_exc()
                code = 1
            os._exit(code)
        children.append(pid)
    sock.close()

    def forward(signum: int, _frame: object) -> None:
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    codes = [os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in children]
    return 0 if all(c in (0, -signal.SIGTERM, -signal.SIGINT) for c in codes) else 1


def with_backoff(
    fn: Callable[[], object], attempts: int, delay: float, what: str, sleep: Callable[[float], None] = time.sleep
) -> None:
    """Call ``fn`` until it succeeds, at most ``attempts`` times, waiting ``delay`` seconds doubled each time (at
    most 30 s) between tries; the last error propagates. Only Kubernetes API errors are retried."""
    from injector.certs.kube import KubeError

    for attempt in range(1, attempts + 1):
        try:
            fn()
            return
        except KubeError as e:
            if attempt == attempts:
                raise
            log.error(
                json.dumps(
                    {"msg": f"{what}: attempt {attempt}/{attempts} failed; retrying in {delay:g}s", "error": str(e)}
                )
            )
            sleep(delay)
            delay = min(delay * 2, 30.0)


def _run_loop(main: Coroutine[Any, Any, None]) -> None:
    """uvloop when installed. uvicorn's ``loop="uvloop"`` applies only to loops uvicorn creates itself; we run
    our own (to share a socket and run the reloaders), and asyncio's default loop with its SSL transport is both
    slower and, measured here, kept memory for every connection it ever served."""
    if _has("uvloop"):
        import uvloop

        uvloop.run(main)
    else:
        asyncio.run(main)


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


async def _serve(
    opts: ServeOptions,
    built: tuple[Webhook, ssl.SSLContext],
    keeper: CertKeeper | None,
    sock: socket.socket | None,
) -> None:
    """One serving process, until signalled."""
    import uvicorn

    webhook, ctx = built
    app = create_app(webhook, opts.body_timeout)
    config = uvicorn.Config(
        app,
        host=opts.host,
        port=opts.port,
        loop="uvloop" if _has("uvloop") else "asyncio",
        http="httptools" if _has("httptools") else "h11",
        log_config=None,
        access_log=False,
        timeout_keep_alive=30,
        backlog=2048,
    )
    config.load()
    config.ssl = ctx  # ours, not one uvicorn builds from files: reloads reach it, and missing files wait
    server = uvicorn.Server(config)
    tasks = [asyncio.create_task(webhook.watch(opts.reload_interval))]
    if keeper is not None:
        tasks.append(asyncio.create_task(keeper.keep(webhook.metrics)))
    # Everything loaded so far (FastAPI, Jinja, the templates, the config) lives as long as the process: move it
    # out of the collector's sight, so the occasional full collection does not walk it mid-request (p99).
    gc.collect()
    gc.freeze()
    try:
        await server.serve(sockets=[sock] if sock is not None else None)
    finally:
        for t in tasks:
            t.cancel()


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None
