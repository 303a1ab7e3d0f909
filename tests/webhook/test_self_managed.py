"""`serve --cert-secret`: the webhook gets its certificate through the (fake) Kubernetes API, patches the
caBundle, serves with it, and picks up a renewal made by another replica."""

from __future__ import annotations

import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from injector.certs import crypto
from lab.shell import console_script, free_port
from tests.support.kube_server import FakeKube, running

NS, SECRET, MWC = "sidecar-injector", "sidecar-injector-tls", "sidecar-injector"
HOSTNAME = "sidecar-injector.sidecar-injector.svc"


@pytest.fixture
def kube() -> Iterator[FakeKube]:
    with running() as fake:
        fake.add_mwc(MWC, ["namespace.sidecar-injector.io", "object.sidecar-injector.io"])
        yield fake


def start(kube: FakeKube, tmp_path: Path, name: str, *extra: str) -> tuple[subprocess.Popen[bytes], int, Path]:
    port = free_port()
    log = tmp_path / f"{name}.log"
    cmd = [
        *console_script("sidecar-injector"),
        "serve",
        "--host", "127.0.0.1",
        "--port", str(port),
        "--cert-secret", SECRET,
        "--namespace", NS,
        "--cert-dir", str(tmp_path / name),
        "--kube-api-server", kube.url,
        "--reload-interval", "0.1",
        "--cert-check-interval", "0.3",
        *extra,
    ]  # fmt: skip
    with log.open("wb") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT)
    return proc, port, log


def served_cert(port: int, ca_pem: bytes) -> bytes | None:
    """The certificate the server presents, verified against ``ca_pem`` for the Service's DNS name."""
    ctx = ssl.create_default_context(cadata=ca_pem.decode())
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
            with ctx.wrap_socket(s, server_hostname=HOSTNAME) as tls:
                der = tls.getpeercert(binary_form=True)
                return ssl.DER_cert_to_PEM_cert(der).encode() if der else None
    except OSError:
        return None


def wait_for(fn: object, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if fn():  # type: ignore[operator]
            return
        time.sleep(0.1)
    raise AssertionError("condition not reached")


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()


def test_creates_secret_patches_ca_bundle_and_serves(kube: FakeKube, tmp_path: Path) -> None:
    proc, port, log = start(kube, tmp_path, "a")
    try:
        wait_for(lambda: (NS, SECRET) in kube.secrets and proc.poll() is None)
        data = kube.secret_data(NS, SECRET)
        wait_for(lambda: served_cert(port, data["ca.crt"]) is not None)
        assert served_cert(port, data["ca.crt"]) == data["tls.crt"]
        assert set(kube.ca_bundles(MWC).values()) == {data["ca.crt"]}
        # A second replica uses the same Secret and writes nothing.
        writes = len(kube.writes())
        proc2, port2, _ = start(kube, tmp_path, "b")
        try:
            wait_for(lambda: served_cert(port2, data["ca.crt"]) is not None)
            assert served_cert(port2, data["ca.crt"]) == data["tls.crt"]
            assert len(kube.writes()) == writes
        finally:
            stop(proc2)
    finally:
        stop(proc)
    # uvicorn shuts down gracefully, then re-raises the SIGTERM it captured.
    assert proc.returncode in (0, -15), log.read_text()
    assert "Traceback" not in log.read_text()


def test_picks_up_a_renewed_certificate(kube: FakeKube, tmp_path: Path) -> None:
    proc, port, log = start(kube, tmp_path, "a")
    try:
        wait_for(lambda: (NS, SECRET) in kube.secrets)
        data = kube.secret_data(NS, SECRET)
        wait_for(lambda: served_cert(port, data["ca.crt"]) == data["tls.crt"])
        ca = crypto.KeyPair(data["ca.crt"], data["ca.key"])
        renewed = crypto.make_serving_cert(ca, "sidecar-injector", NS, now=datetime.now(UTC))
        kube.put_secret(NS, SECRET, {**data, "tls.crt": renewed.cert_pem, "tls.key": renewed.key_pem})
        wait_for(lambda: served_cert(port, data["ca.crt"]) == renewed.cert_pem)
    finally:
        stop(proc)
    text = log.read_text()
    assert "serving certificate written" in text
    assert "PRIVATE KEY" not in text and "BEGIN" not in text  # no key material in logs
    assert '"version": "1.31"' in text  # asked the API server, for nativeSidecar auto


def test_forbidden_is_retried_with_backoff_then_a_clear_error(kube: FakeKube, tmp_path: Path) -> None:
    kube.forbidden.add(("GET", f"/api/v1/namespaces/{NS}/secrets/{SECRET}"))
    start_time = time.monotonic()
    proc, _, log = start(kube, tmp_path, "a", "--cert-retries", "3", "--cert-retry-delay", "0.2")
    assert proc.wait(timeout=20) == 1
    elapsed = time.monotonic() - start_time
    text = log.read_text()
    assert "attempt 1/3 failed; retrying in 0.2s" in text and "attempt 2/3 failed; retrying in 0.4s" in text
    assert "cannot obtain the serving certificate" in text and "missing RBAC permission" in text
    assert 0.6 <= elapsed < 15  # waited 0.2 + 0.4 s between tries, then gave up: no tight loop, no endless one
    gets = [r for r in kube.requests if r.method == "GET" and r.path.endswith(SECRET)]
    assert len(gets) == 3


def test_a_brief_api_outage_is_ridden_out(kube: FakeKube, tmp_path: Path) -> None:
    kube.outage = [500, 503, 500]
    proc, port, log = start(kube, tmp_path, "a", "--cert-retry-delay", "0.1")
    try:
        wait_for(lambda: (NS, SECRET) in kube.secrets)
        data = kube.secret_data(NS, SECRET)
        wait_for(lambda: served_cert(port, data["ca.crt"]) == data["tls.crt"])
    finally:
        stop(proc)
    assert "failed; retrying" in log.read_text()
