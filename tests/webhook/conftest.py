"""A real `sidecar-injector serve` process with a generated CA, for the HTTPS tests."""

from __future__ import annotations

import contextlib
import http.client
import os
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from injector.certs import crypto

SERVICE, NAMESPACE = "sidecar-injector", "sidecar-injector"


@dataclass
class Server:
    port: int
    ca_file: Path
    cert_file: Path
    key_file: Path
    config_dir: Path
    log_file: Path
    ca: crypto.KeyPair
    proc: subprocess.Popen[bytes]

    def context(self) -> ssl.SSLContext:
        """A client that trusts only our CA and checks the name."""
        ctx = ssl.create_default_context(cafile=str(self.ca_file))
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        return ctx

    def connection(self, timeout: float = 10.0) -> http.client.HTTPSConnection:
        return http.client.HTTPSConnection("127.0.0.1", self.port, context=self.context(), timeout=timeout)

    def unverified_connection(self) -> http.client.HTTPSConnection:
        """What the kubelet's HTTPS probes do: no certificate verification."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return http.client.HTTPSConnection("127.0.0.1", self.port, context=ctx, timeout=5)

    def rotate(self, days: int = 30) -> bytes:
        """A new serving certificate from the same CA; the key is written first (a real rotation's mismatch
        window), then the cert. Returns the new cert's PEM."""
        pair = crypto.make_serving_cert(self.ca, SERVICE, NAMESPACE, days=days, extra_sans=["localhost", "127.0.0.1"])
        _atomic_write(self.key_file, pair.key_pem)
        time.sleep(0.3)
        _atomic_write(self.cert_file, pair.cert_pem)
        return pair.cert_pem


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    with serving(tmp_path) as srv:
        yield srv


@contextlib.contextmanager
def serving(tmp_path: Path, *extra: str, wait_ready: bool = True) -> Iterator[Server]:
    """A `sidecar-injector serve` process (``extra`` flags appended), ready (or, with ``wait_ready=False``,
    just running and without certificate files: `Server.rotate` writes them); terminated at the end."""
    ca = crypto.make_ca()
    (tmp_path / "ca.crt").write_bytes(ca.cert_pem)
    if wait_ready:
        pair = crypto.make_serving_cert(ca, SERVICE, NAMESPACE, extra_sans=["localhost", "127.0.0.1"])
        (tmp_path / "tls.crt").write_bytes(pair.cert_pem)
        (tmp_path / "tls.key").write_bytes(pair.key_pem)
    config_dir = tmp_path / "config"
    config_dir.mkdir()
    (config_dir / "config.yaml").write_text("policy: enabled\ndefaultTemplates: [envoy]\n")
    port = _free_port()
    log_file = tmp_path / "server.log"
    cmd = [
        str(Path(sys.executable).parent / "sidecar-injector"),
        "serve",
        "--host", "127.0.0.1",
        "--port", str(port),
        "--tls-cert-file", str(tmp_path / "tls.crt"),
        "--tls-key-file", str(tmp_path / "tls.key"),
        "--config-dir", str(config_dir),
        "--reload-interval", "0.1",
        "--request-timeout", "1",
        *extra,
    ]  # fmt: skip
    with log_file.open("wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    srv = Server(port, tmp_path / "ca.crt", tmp_path / "tls.crt", tmp_path / "tls.key", config_dir, log_file, ca, proc)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                c = srv.connection(timeout=1) if wait_ready else srv.unverified_connection()
                c.request("GET", "/readyz" if wait_ready else "/healthz")
                if c.getresponse().status == 200:
                    c.close()
                    break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"server did not start: {log_file.read_text()}")
            time.sleep(0.05)
        yield srv
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
