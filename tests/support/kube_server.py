"""A tiny in-process Kubernetes API server for the paths the injector uses.

It speaks the real REST paths, payloads and error ``Status`` objects, applies JSON Patches for real (``jsonpatch``)
and honours ``Content-Type``, so the official client is exercised end to end without a cluster. Every request is
recorded, which lets tests assert that a restart performs no writes.
"""

from __future__ import annotations

import base64
import binascii
import copy
import itertools
import json
import re
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import jsonpatch

ADMISSION = "admissionregistration.k8s.io"
_SECRETS = re.compile(r"/api/v1/namespaces/(?P<ns>[^/]+)/secrets")
_SECRET = re.compile(r"/api/v1/namespaces/(?P<ns>[^/]+)/secrets/(?P<name>[^/]+)")
_POD = re.compile(r"/api/v1/namespaces/(?P<ns>[^/]+)/pods/(?P<name>[^/]+)")
_ALL_PODS = "/api/v1/pods"
# Discovery, as kubectl reads it before `kubectl get pod` (the core group only: pods, secrets).
_DISCOVERY: dict[str, dict[str, Any]] = {
    "/api": {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []},
    "/apis": {"kind": "APIGroupList", "apiVersion": "v1", "groups": []},
    "/api/v1": {
        "kind": "APIResourceList",
        "groupVersion": "v1",
        "resources": [
            {
                "name": "pods",
                "singularName": "pod",
                "namespaced": True,
                "kind": "Pod",
                "verbs": ["get"],
                "shortNames": ["po"],
            },
            {
                "name": "secrets",
                "singularName": "secret",
                "namespaced": True,
                "kind": "Secret",
                "verbs": ["get", "create", "update"],
            },
        ],
    },
}
_MWC = re.compile(rf"/apis/{re.escape(ADMISSION)}/v1/mutatingwebhookconfigurations/(?P<name>[^/]+)")
_VERBS = {"GET": "get", "POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}
_REASONS = {
    400: "BadRequest",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    409: "Conflict",
    415: "UnsupportedMediaType",
    422: "Invalid",
}
SERVICE_ACCOUNT = "system:serviceaccount:sidecar-injector:sidecar-injector"


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    content_type: str
    authorization: str
    body: Any


class _Failure(Exception):
    def __init__(self, code: int, message: str, reason: str | None = None, **details: str) -> None:
        super().__init__(message)
        self.code, self.message, self.reason, self.details = code, message, reason or _REASONS[code], details

    def status(self) -> dict[str, Any]:
        return {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "details": self.details,
            "code": self.code,
        }


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


class FakeKube:
    """State plus switches. ``race`` simulates another replica: ``race["POST"]`` (or ``"PUT"``) is Secret data that
    gets written, as if by someone else, just before our next create (or replace) is processed - so ours fails with
    the 409 a real server gives and a re-read returns theirs. ``forbidden`` holds (method, path) pairs answered 403."""

    def __init__(self) -> None:
        self.secrets: dict[tuple[str, str], dict[str, Any]] = {}
        self.pods: dict[tuple[str, str], dict[str, Any]] = {}
        self.deleted_pods: list[tuple[str, str]] = []
        self.mwcs: dict[str, dict[str, Any]] = {}
        self.requests: list[Request] = []
        self.race: dict[str, dict[str, bytes]] = {}
        self.forbidden: set[tuple[str, str]] = set()
        self.version = ("1", "31+")
        self.outage: list[int] = []
        self._lock = threading.Lock()
        self._rv = itertools.count(1000)
        self._server: ThreadingHTTPServer | None = None

    # --- test-side helpers -----------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def writes(self) -> list[Request]:
        return [r for r in self.requests if r.method != "GET"]

    def _meta(self, name: str, namespace: str | None = None, **extra: Any) -> dict[str, Any]:
        meta: dict[str, Any] = {
            "name": name,
            "uid": str(uuid.uuid4()),
            "resourceVersion": str(next(self._rv)),
            "creationTimestamp": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            **extra,
        }
        if namespace is not None:
            meta["namespace"] = namespace
        return meta

    def put_secret(
        self,
        namespace: str,
        name: str,
        data: dict[str, bytes],
        labels: dict[str, str] | None = None,
        annotations: dict[str, str] | None = None,
    ) -> None:
        extra = {k: v for k, v in (("labels", labels), ("annotations", annotations)) if v}
        with self._lock:
            self.secrets[(namespace, name)] = {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": self._meta(name, namespace, **extra),
                "type": "kubernetes.io/tls",
                "data": {k: _b64(v) for k, v in data.items()},
            }

    def add_pod(self, namespace: str, pod: dict[str, Any]) -> None:
        name = pod["metadata"]["name"]
        self.pods[(namespace, name)] = {"apiVersion": "v1", "kind": "Pod", **pod,
                                        "metadata": {**pod["metadata"], **self._meta(name, namespace)}}  # fmt: skip

    def secret(self, namespace: str, name: str) -> dict[str, Any]:
        return copy.deepcopy(self.secrets[(namespace, name)])

    def secret_data(self, namespace: str, name: str) -> dict[str, bytes]:
        return {k: base64.b64decode(v) for k, v in self.secrets[(namespace, name)].get("data", {}).items()}

    def add_mwc(self, name: str, webhooks: list[str], ca_bundle: bytes | None = None) -> None:
        hooks = []
        for hook in webhooks:
            client_config: dict[str, Any] = {
                "service": {"name": "sidecar-injector", "namespace": "sidecar-injector", "path": "/inject", "port": 443}
            }
            if ca_bundle is not None:
                client_config["caBundle"] = _b64(ca_bundle)
            hooks.append(
                {
                    "name": hook,
                    "clientConfig": client_config,
                    "admissionReviewVersions": ["v1"],
                    "sideEffects": "None",
                    "failurePolicy": "Fail",
                    "rules": [
                        {"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["pods"]}
                    ],
                }
            )
        with self._lock:
            self.mwcs[name] = {
                "apiVersion": f"{ADMISSION}/v1",
                "kind": "MutatingWebhookConfiguration",
                "metadata": self._meta(name),
                "webhooks": hooks,
            }

    def ca_bundles(self, name: str) -> dict[str, bytes]:
        return {w["name"]: base64.b64decode(w["clientConfig"].get("caBundle", "")) for w in self.mwcs[name]["webhooks"]}

    # --- server side -----------------------------------------------------------------------------------------

    def handle(
        self, method: str, path: str, content_type: str, body: Any, query: str = ""
    ) -> tuple[int, dict[str, Any]]:
        with self._lock:
            try:
                if self.outage:  # an API server in trouble: the next requests fail with these codes
                    code = self.outage.pop(0)
                    raise _Failure(code, f"injected failure {code}", "InternalError" if code >= 500 else None)
                if path == _ALL_PODS and method == "GET":
                    return 200, self._list_pods(query)
                return self._route(method, path, content_type, body)
            except _Failure as f:
                return f.code, f.status()

    def _route(self, method: str, path: str, content_type: str, body: Any) -> tuple[int, dict[str, Any]]:
        if (method, path) in self.forbidden:
            raise self._forbidden(method, path)
        if path in ("/version", "/version/") and method == "GET":
            return 200, {  # what a real (managed) API server answers on /version
                "major": self.version[0],
                "minor": self.version[1],
                "gitVersion": "v1.31.2-gke.1000",
                "gitCommit": "0123456789abcdef0123456789abcdef01234567",
                "gitTreeState": "clean",
                "buildDate": "2024-10-01T00:00:00Z",
                "goVersion": "go1.22.7",
                "compiler": "gc",
                "platform": "linux/amd64",
            }
        if path in _DISCOVERY and method == "GET":
            return 200, _DISCOVERY[path]
        if (m := _POD.fullmatch(path)) and method in ("GET", "DELETE"):
            pod = self.pods.get((m["ns"], m["name"]))
            if pod is None:
                raise _Failure(404, f'pods "{m["name"]}" not found', "NotFound", name=m["name"], kind="pods")
            if method == "DELETE":
                return self._delete_pod(m["ns"], m["name"], pod, body)
            return 200, pod
        if m := _SECRETS.fullmatch(path):
            if method == "GET":
                items = [s for (ns, _), s in sorted(self.secrets.items()) if ns == m["ns"]]
                return 200, {"apiVersion": "v1", "kind": "SecretList", "metadata": {}, "items": items}
            if method == "POST":
                return self._create_secret(m["ns"], content_type, body)
        elif m := _SECRET.fullmatch(path):
            if method == "GET":
                return 200, self._get_secret(m["ns"], m["name"])
            if method == "PUT":
                return self._replace_secret(m["ns"], m["name"], content_type, body)
        elif m := _MWC.fullmatch(path):
            if method == "GET":
                return 200, self._get_mwc(m["name"])
            if method == "PATCH":
                return self._patch_mwc(m["name"], content_type, body)
        else:
            raise _Failure(404, "the server could not find the requested resource")
        raise _Failure(405, f"{method} is not supported on {path}")

    def _forbidden(self, method: str, path: str) -> _Failure:
        verb = _VERBS[method]
        if m := _SECRET.fullmatch(path) or _SECRETS.fullmatch(path):
            name = m.groupdict().get("name")
            shown = f'secrets "{name}"' if name else "secrets"
            msg = (
                f'{shown} is forbidden: User "{SERVICE_ACCOUNT}" cannot {verb} resource "secrets" in API group "" '
                f'in the namespace "{m["ns"]}"'
            )
            return _Failure(403, msg, name=name or "", kind="secrets")
        m = _MWC.fullmatch(path)
        assert m is not None, path
        msg = (
            f'mutatingwebhookconfigurations.{ADMISSION} "{m["name"]}" is forbidden: User "{SERVICE_ACCOUNT}" cannot '
            f'{verb} resource "mutatingwebhookconfigurations" in API group "{ADMISSION}" at the cluster scope'
        )
        return _Failure(403, msg, name=m["name"], group=ADMISSION, kind="mutatingwebhookconfigurations")

    def _list_pods(self, query: str) -> dict[str, Any]:
        """``GET /api/v1/pods?fieldSelector=spec.nodeName=NODE`` (the only selector the agent sends)."""
        selector = dict(parse_qsl(query)).get("fieldSelector", "")
        key, _, node = selector.partition("=")
        if selector and key != "spec.nodeName":
            raise _Failure(400, f'field label not supported: "{key}"', "BadRequest")
        items = [p for _, p in sorted(self.pods.items()) if not selector or p.get("spec", {}).get("nodeName") == node]
        return {"apiVersion": "v1", "kind": "PodList", "metadata": {"resourceVersion": "1"}, "items": items}

    def _delete_pod(self, ns: str, name: str, pod: dict[str, Any], body: Any) -> tuple[int, dict[str, Any]]:
        want = ((body or {}).get("preconditions") or {}).get("uid") if isinstance(body, dict) else None
        if want and want != pod["metadata"].get("uid"):
            raise _Failure(409, f"Precondition failed: UID in precondition: {want}, UID in object meta: "
                           f"{pod['metadata'].get('uid')}", "Conflict", name=name, kind="pods")  # fmt: skip
        del self.pods[(ns, name)]
        self.deleted_pods.append((ns, name))
        return 200, pod

    @staticmethod
    def _require_json(content_type: str, body: Any) -> dict[str, Any]:
        # Like the real server: no Content-Type means the first supported type, JSON.
        if content_type.split(";")[0].strip() not in ("", "application/json"):
            raise _Failure(415, f"the body of the request was in an unknown format - accepted media types include: "
                           f"application/json, application/yaml (got {content_type!r})")  # fmt: skip
        if not isinstance(body, dict):
            raise _Failure(400, "the body of the request is not a JSON object")
        return body

    def _get_secret(self, ns: str, name: str) -> dict[str, Any]:
        if (ns, name) not in self.secrets:
            raise _Failure(404, f'secrets "{name}" not found', name=name, kind="secrets")
        return copy.deepcopy(self.secrets[(ns, name)])

    @staticmethod
    def _check_secret(obj: dict[str, Any], ns: str) -> None:
        meta = obj.get("metadata") or {}
        if obj.get("kind") != "Secret" or obj.get("apiVersion") != "v1":
            raise _Failure(400, f"expected v1 Secret, got {obj.get('apiVersion')} {obj.get('kind')}")
        if meta.get("namespace") not in (None, ns):
            raise _Failure(400, "the namespace of the provided object does not match the namespace sent on the request")
        for key, value in (obj.get("data") or {}).items():
            if not isinstance(value, str):
                raise _Failure(400, f'Secret in version "v1" cannot be handled as a Secret: data[{key}] not a string')
            try:
                base64.b64decode(value, validate=True)
            except binascii.Error as e:
                raise _Failure(400, f'Secret in version "v1" cannot be handled as a Secret: illegal base64: {e}') from e
        if obj.get("type") == "kubernetes.io/tls":
            for key in ("tls.crt", "tls.key"):
                if key not in (obj.get("data") or {}):
                    raise _Failure(422, f'Secret "{meta.get("name")}" is invalid: data[{key}]: Required value')

    def _other_replica_writes(self, method: str, ns: str, name: str) -> None:
        data = self.race.pop(method, None)
        if data is None:
            return
        current = self.secrets.get((ns, name))
        meta = current["metadata"] if current else self._meta(name, ns, labels={"written-by": "other-replica"})
        meta["resourceVersion"] = str(next(self._rv))
        self.secrets[(ns, name)] = {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": meta,
            "type": "kubernetes.io/tls",
            "data": {k: _b64(v) for k, v in data.items()},
        }

    def _create_secret(self, ns: str, content_type: str, body: Any) -> tuple[int, dict[str, Any]]:
        obj = copy.deepcopy(self._require_json(content_type, body))
        self._check_secret(obj, ns)
        meta = obj.get("metadata") or {}
        name = meta.get("name")
        if not name:
            raise _Failure(422, "Secret is invalid: metadata.name: Required value: name or generateName is required")
        self._other_replica_writes("POST", ns, name)
        if (ns, name) in self.secrets:
            raise _Failure(409, f'secrets "{name}" already exists', "AlreadyExists", name=name, kind="secrets")
        obj["metadata"] = {**meta, **self._meta(name, ns)}
        obj.setdefault("type", "Opaque")
        self.secrets[(ns, name)] = obj
        return 201, copy.deepcopy(obj)

    def _replace_secret(self, ns: str, name: str, content_type: str, body: Any) -> tuple[int, dict[str, Any]]:
        obj = copy.deepcopy(self._require_json(content_type, body))
        self._check_secret(obj, ns)
        meta = obj.get("metadata") or {}
        if meta.get("name") != name:
            raise _Failure(400, "the name of the object does not match the name on the URL")
        self._other_replica_writes("PUT", ns, name)
        current = self._get_secret(ns, name)
        rv = meta.get("resourceVersion")
        if rv is not None and rv != current["metadata"]["resourceVersion"]:
            raise _Failure(
                409,
                f'Operation cannot be fulfilled on secrets "{name}": the object has been modified; '
                "please apply your changes to the latest version and try again",
                name=name,
                kind="secrets",
            )
        if obj.get("type", "Opaque") != current.get("type", "Opaque"):
            raise _Failure(422, f'Secret "{name}" is invalid: type: Invalid value: field is immutable')
        keep = {k: current["metadata"][k] for k in ("uid", "creationTimestamp")}
        obj["metadata"] = {**meta, **keep, "namespace": ns, "resourceVersion": str(next(self._rv))}
        self.secrets[(ns, name)] = obj
        return 200, copy.deepcopy(obj)

    def _get_mwc(self, name: str) -> dict[str, Any]:
        if name not in self.mwcs:
            raise _Failure(
                404,
                f'mutatingwebhookconfigurations.{ADMISSION} "{name}" not found',
                name=name,
                group=ADMISSION,
                kind="mutatingwebhookconfigurations",
            )
        return copy.deepcopy(self.mwcs[name])

    def _patch_mwc(self, name: str, content_type: str, body: Any) -> tuple[int, dict[str, Any]]:
        current = self._get_mwc(name)
        kind = content_type.split(";")[0].strip()
        if kind == "application/json-patch+json":
            if not isinstance(body, list):
                raise _Failure(400, "json: cannot unmarshal object into Go value of type jsonpatch.Patch")
            try:
                patched = jsonpatch.JsonPatch(body).apply(current)
            except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as e:
                raise _Failure(422, str(e)) from e
        elif kind == "application/merge-patch+json":
            if not isinstance(body, dict):
                raise _Failure(400, "merge patch must be a JSON object")
            patched = _merge_patch(current, body)
        else:
            # Real servers also take strategic merge and apply patches; the client never needs them here.
            raise _Failure(415, f"the fake API server does not implement patch type {kind!r}")
        for i, hook in enumerate(patched.get("webhooks") or []):
            bundle = (hook.get("clientConfig") or {}).get("caBundle")
            if bundle is None:
                continue
            try:
                base64.b64decode(bundle, validate=True)
            except (binascii.Error, TypeError) as e:
                raise _Failure(422, f"webhooks[{i}].clientConfig.caBundle: illegal base64 data: {e}") from e
        if patched["metadata"]["name"] != name:
            raise _Failure(422, "metadata.name: Invalid value: field is immutable")
        patched["metadata"]["resourceVersion"] = str(next(self._rv))
        self.mwcs[name] = patched
        return 200, copy.deepcopy(patched)


def _merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = _merge_patch(out.get(key), value)
    return out


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as urllib3 pools connections
    server: _Server

    def _serve(self) -> None:
        fake = self.server.fake
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        content_type = self.headers.get("Content-Type", "")
        url = urlsplit(self.path)
        path = url.path
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode("utf-8", "replace")
        fake.requests.append(Request(self.command, path, content_type, self.headers.get("Authorization", ""), body))
        if raw and not isinstance(body, dict | list):
            code, doc = 400, _Failure(400, "the request body is not valid JSON").status()
        else:
            code, doc = fake.handle(self.command, path, content_type, body, url.query)
        out = json.dumps(doc).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, fake: FakeKube) -> None:
        self.fake = fake
        super().__init__(("127.0.0.1", 0), _Handler)


@contextmanager
def running(fake: FakeKube | None = None) -> Iterator[FakeKube]:
    """Serve ``fake`` on 127.0.0.1 at a free port for the duration of the block."""
    fake = fake or FakeKube()
    server = _Server(fake)
    fake._server = server
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), name="fake-kube-api", daemon=True)
    thread.start()
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
        fake._server = None
