"""``sidecar-injector serve``: prepare once (certificate, API server version, a config and certificate that load),
then serve on uvicorn over TLS, in one process or several pre-forked ones sharing a socket."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import os
import signal
import socket
import ssl
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from injector import log
from injector.certs.keeper import CertKeeper, SelfManaged, with_backoff
from injector.core.config import load_config
from injector.core.inject import check_config
from injector.server.app import BODY_TIMEOUT, create_app
from injector.server.contract import Webhook
from injector.server.metrics import Metrics
from injector.server.reload import Reloader


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
        log.warning("Kubernetes version unknown; nativeSidecar auto means legacy", error=str(e))
        return None
    log.info("Kubernetes version discovered", version=f"{version[0]}.{version[1]}")
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
        tasks.append(asyncio.create_task(keeper.keep(webhook.metrics.errors.labels("cert_refresh").inc)))
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
