"""``sidecar-injector serve`` as a real process, with a fresh CA, spoken to as the API server speaks to it.

One harness for every caller that needs a running webhook (the e2e lab, the demo, the HTTPS tests): HTTPS on
127.0.0.1 with the certificate verified for the Service name the MutatingWebhookConfiguration names, an
AdmissionReview POSTed over a keep-alive connection, and the process always stopped.
"""

from __future__ import annotations

import base64
import http.client
import json
import ssl
import subprocess
import tempfile
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from lab.shell import LabError, console_script, free_port, stop_process


class _ServiceConnection(http.client.HTTPSConnection):
    """Dials 127.0.0.1 (or ``host``) but verifies the certificate for ``server_name``: the API server calls the
    webhook's Service as ``<service>.<namespace>.svc`` and trusts only the caBundle."""

    def __init__(
        self, port: int, context: ssl.SSLContext, server_name: str, timeout: float, host: str = "127.0.0.1"
    ) -> None:
        super().__init__(host, port, context=context, timeout=timeout)
        self._tls = context
        self._server_name = server_name

    def connect(self) -> None:
        http.client.HTTPConnection.connect(self)
        self.sock = self._tls.wrap_socket(self.sock, server_hostname=self._server_name)


class WebhookProcess:
    """``sidecar-injector serve`` on 127.0.0.1 with a fresh CA and serving certificate; a context manager.

    The certificate is issued for ``<service>.<namespace>.svc`` (what the API server dials; the MWC names the
    Service) plus ``localhost`` and ``127.0.0.1``. ``workdir`` holds ``ca.crt``, ``tls.crt``, ``tls.key`` and the
    log (a temporary directory when not given). With ``certificate=False`` no serving certificate is written:
    the server starts on its placeholder and is waited for on ``/healthz`` (``rotate`` writes the real one).
    ``review(pod, namespace)`` POSTs an AdmissionReview like the API server (keep-alive, verifying TLS) and
    returns its ``response``. The process is always terminated on exit.
    """

    def __init__(
        self,
        config_dir: Path | str | None = None,
        *,
        service: str = "sidecar-injector",
        namespace: str = "sidecar-injector",
        kube_version: str | None = None,
        extra_args: Sequence[str] = (),
        workdir: Path | None = None,
        certificate: bool = True,
        start_timeout: float = 30.0,
    ) -> None:
        self.config_dir = Path(config_dir) if config_dir is not None else None
        self.kube_version = kube_version
        self.extra_args = list(extra_args)
        self.service, self.service_namespace = service, namespace
        self.server_name = f"{service}.{namespace}.svc"
        self.certificate = certificate
        self.start_timeout = start_timeout
        self.port = 0
        self.host = "127.0.0.1"  # where the server listens (a container's IP for lab.runtime.webhook)
        self.workdir = workdir or Path()
        self._own_workdir = workdir is None
        self.ca: Any = None  # injector.certs.crypto.KeyPair once started
        self.proc: subprocess.Popen[bytes] | None = None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._conn: _ServiceConnection | None = None
        self._ctx: ssl.SSLContext | None = None
        self.last_response: dict[str, Any] | None = None  # the latest AdmissionReview response, for display

    # context manager ------------------------------------------------------------------------------------------

    def __enter__(self) -> WebhookProcess:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @property
    def process(self) -> subprocess.Popen[bytes]:
        if self.proc is None:
            raise LabError("the webhook process is not running")
        return self.proc

    @property
    def config_path(self) -> Path:
        if self.config_dir is None:
            raise LabError("this webhook runs on the built-in config (no --config-dir)")
        return self.config_dir

    @property
    def log_file(self) -> Path:
        return self.workdir / "webhook.log"

    @property
    def ca_file(self) -> Path:
        return self.workdir / "ca.crt"

    @property
    def cert_file(self) -> Path:
        return self.workdir / "tls.crt"

    @property
    def key_file(self) -> Path:
        return self.workdir / "tls.key"

    @property
    def ca_pem(self) -> bytes:
        return bytes(self.ca.cert_pem) if self.ca is not None else b""

    @property
    def ca_bundle(self) -> str:
        """What ``clientConfig.caBundle`` would hold."""
        return base64.b64encode(self.ca_pem).decode("ascii")

    def log_text(self) -> str:
        try:
            return self.log_file.read_text(errors="replace")
        except OSError:
            return ""

    def start(self) -> None:
        from injector.certs import crypto  # cryptography: only when a webhook is actually started

        if self._own_workdir:
            self._tmp = tempfile.TemporaryDirectory(prefix="lab-webhook-")
            self.workdir = Path(self._tmp.name)
        self.ca = crypto.make_ca()
        self.ca_file.write_bytes(self.ca.cert_pem)
        if self.certificate:
            self.rotate(days=365, pause=0.0)
        self._ctx = self.context()
        for _attempt in range(3):  # a free port can be taken between probing and binding: try another
            self.port = free_port()
            cmd = [
                *console_script("sidecar-injector"),
                "serve",
                "--host", "127.0.0.1",
                "--port", str(self.port),
                "--tls-cert-file", str(self.cert_file),
                "--tls-key-file", str(self.key_file),
            ]  # fmt: skip
            if self.config_dir is not None:
                cmd += ["--config-dir", str(self.config_dir)]
            if self.kube_version:
                cmd += ["--kube-version", self.kube_version]
            cmd += self.extra_args
            with self.log_file.open("ab") as log:
                self.proc = subprocess.Popen(
                    cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
                )
            if self._wait_ready():
                return
            if self.proc.poll() is None:
                break  # running but never ready: not a port clash
        raise LabError(f"the webhook did not become ready:\n{self.log_text()[-3000:]}")

    def rotate(self, days: int = 30, pause: float = 0.3) -> bytes:
        """A new serving certificate from the same CA, written as a rotation writes it: the key first (the
        mismatch window a reloader must survive), then, after ``pause``, the certificate. Its PEM."""
        from injector.certs import crypto
        from injector.files import write_atomic

        pair = crypto.make_serving_cert(
            self.ca, self.service, self.service_namespace, days=days, extra_sans=["localhost", "127.0.0.1"]
        )
        write_atomic(self.key_file, pair.key_pem, 0o600)
        time.sleep(pause)
        write_atomic(self.cert_file, pair.cert_pem, 0o644)
        return bytes(pair.cert_pem)

    def context(self) -> ssl.SSLContext:
        """A client context that trusts only our CA (the caBundle) and checks the name."""
        ctx = ssl.create_default_context(cadata=self.ca_pem.decode("ascii"))
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        return ctx

    def connection(self, timeout: float = 10.0) -> http.client.HTTPSConnection:
        """A verifying connection to 127.0.0.1 (the certificate carries that SAN)."""
        return http.client.HTTPSConnection("127.0.0.1", self.port, context=self.context(), timeout=timeout)

    def unverified_connection(self, timeout: float = 5.0) -> http.client.HTTPSConnection:
        """What the kubelet's HTTPS probes do: no certificate verification."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return http.client.HTTPSConnection("127.0.0.1", self.port, context=ctx, timeout=timeout)

    def _wait_ready(self) -> bool:
        assert self.proc is not None
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                conn = self._connection(timeout=1.0) if self.certificate else self.unverified_connection(1.0)
                conn.request("GET", "/readyz" if self.certificate else "/healthz")
                resp = conn.getresponse()
                resp.read()
                conn.close()
                if resp.status == 200:
                    return True
            except (OSError, http.client.HTTPException):
                pass
            time.sleep(0.05)
        return False

    def _connection(self, timeout: float) -> _ServiceConnection:
        assert self._ctx is not None
        return _ServiceConnection(self.port, self._ctx, self.server_name, timeout, self.host)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if self.proc is not None:
            stop_process(self.proc, grace=5.0)
            self.proc = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def get(self, path: str) -> tuple[int, str]:
        """GET on the webhook (``/readyz``, ``/metrics``, ...) over a fresh verifying connection."""
        conn = self._connection(timeout=5.0)
        try:
            conn.request("GET", path)
            resp = conn.getresponse()
            return resp.status, resp.read().decode("utf-8", "replace")
        finally:
            conn.close()

    def metric(self, name: str) -> float:
        """The sum of a Prometheus metric's samples (all label sets) on ``/metrics``; 0 when absent."""
        status, text = self.get("/metrics")
        if status != 200:
            raise LabError(f"webhook /metrics answered {status}")
        total = 0.0
        for line in text.splitlines():
            sample, _, value = line.rpartition(" ")
            if sample.split("{", 1)[0] == name:
                total += float(value)
        return total

    # the API server's call ------------------------------------------------------------------------------------

    def post(self, review: Mapping[str, Any], path: str = "/inject", timeout: float = 10.0) -> dict[str, Any]:
        """POST one AdmissionReview; the parsed answer. Reuses the connection (reconnects once if it dropped)."""
        body = json.dumps(review).encode()
        for attempt in (1, 2):
            if self._conn is None:
                self._conn = self._connection(timeout)
            try:
                self._conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
                resp = self._conn.getresponse()
                data = resp.read()
            except (OSError, http.client.HTTPException) as e:
                self._conn.close()
                self._conn = None
                if attempt == 2:
                    raise LabError(f"calling the webhook failed: {type(e).__name__}: {e}") from e
                continue
            if resp.status != 200:
                raise LabError(f"the webhook answered HTTP {resp.status}: {data[:500]!r}")
            out = json.loads(data)
            if not isinstance(out, dict):
                raise LabError(f"the webhook answered {out!r}")
            return out
        raise AssertionError("unreachable")  # pragma: no cover

    def review(
        self, pod: Mapping[str, Any], namespace: str, *, path: str = "/inject", timeout: float = 10.0
    ) -> dict[str, Any]:
        """Ask the webhook about creating ``pod`` in ``namespace``: the AdmissionReview's ``response``, checked
        as the API server checks it (same apiVersion and kind, the request's uid echoed)."""
        uid = str(uuid.uuid4())
        gvk = {"group": "", "version": "v1", "kind": "Pod"}
        gvr = {"group": "", "version": "v1", "resource": "pods"}
        request = {
            "uid": uid,
            "kind": gvk,
            "resource": gvr,
            "requestKind": gvk,
            "requestResource": gvr,
            "name": str(pod.get("metadata", {}).get("name", "")),
            "namespace": namespace,
            "operation": "CREATE",
            "userInfo": {"username": "podlab", "groups": ["system:authenticated"]},
            "object": pod,
            "oldObject": None,
            "dryRun": False,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"},
        }
        answer = self.post(
            {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request}, path, timeout
        )
        if answer.get("apiVersion") != "admission.k8s.io/v1" or answer.get("kind") != "AdmissionReview":
            raise LabError(f"not an admission.k8s.io/v1 AdmissionReview: {str(answer)[:300]}")
        response = answer.get("response")
        if not isinstance(response, dict) or response.get("uid") != uid:
            raise LabError(f"the response does not echo the request uid {uid}: {str(answer)[:300]}")
        self.last_response = response
        return response


# --- admission (the API server's selectors, the patch, the schema) ---------------------------------------------
