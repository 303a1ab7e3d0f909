"""Keep the serving certificate current while serving: fetch or create it through the Kubernetes API, write it where
the certificate reloader watches, renew it on a timer."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from injector import log
from injector.files import write_atomic


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

        from injector.certs.lifecycle import ensure_serving_cert

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
        write_atomic(o.cert_dir / "ca.crt", bundle.ca_pem, 0o644)
        write_atomic(self.key_file, bundle.key_pem, 0o600)  # key first: the reloader retries a mismatch
        write_atomic(self.cert_file, bundle.cert_pem, 0o644)
        log.info("serving certificate written", dir=str(o.cert_dir))
        return True

    async def keep(self, on_failure: Callable[[], None]) -> None:
        """Refresh every ``check_interval`` seconds, forever; ``on_failure`` counts a failed refresh (metrics)."""
        while True:
            await asyncio.sleep(self.opts.check_interval)
            try:
                await asyncio.to_thread(self.refresh)
            except Exception as e:  # noqa: BLE001 - keep serving the current certificate; try again later
                on_failure()
                log.error("certificate refresh failed", error=f"{type(e).__name__}: {e}")


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
            log.error(f"{what}: attempt {attempt}/{attempts} failed; retrying in {delay:g}s", error=str(e))
            sleep(delay)
            delay = min(delay * 2, 30.0)
