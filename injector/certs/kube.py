"""The only module that talks to the Kubernetes API server.

``KubeApi`` is the seam (like httpx's transports): the certificate life cycle (:mod:`injector.certs.lifecycle`)
talks only to it, and :class:`ClientKubeApi` is the one implementation on the official ``kubernetes`` client,
imported lazily because it costs a second or more to import and only ``serve`` needs it.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from injector.core.config import parse_kube_version

if TYPE_CHECKING:
    from kubernetes.client import ApiException, V1MutatingWebhookConfiguration, V1Secret


T = TypeVar("T")
# The client sends POST/PUT bodies without a Content-Type (the spec lists none); servers default to JSON, but a
# proxy in front of the API server need not, so say it.
_JSON = {"Content-Type": "application/json"}


class KubeError(Exception):
    """Base of the errors raised when talking to the Kubernetes API."""


class ApiError(KubeError):
    """The API server answered with an error; carries the parsed ``Status`` so callers branch on ``status``."""

    def __init__(self, status: int, reason: str, message: str, details: Mapping[str, Any] | None = None) -> None:
        self.status, self.reason, self.message = status, reason, message
        self.details: Mapping[str, Any] = details or {}
        super().__init__(f"{status} {reason}: {message}")

    @classmethod
    def from_response(cls, status: int, http_reason: str | None, body: str | bytes | None) -> ApiError:
        """Parse a ``Status`` body; a proxy or load balancer may answer with HTML, so fall back to the raw text."""
        text = body.decode("utf-8", "replace") if isinstance(body, bytes) else (body or "")
        try:
            doc = json.loads(text) if text else None
        except ValueError:
            doc = None
        if isinstance(doc, dict) and doc.get("kind") == "Status":
            details = doc.get("details")
            code = doc.get("code")
            return cls(
                code if isinstance(code, int) and code else status,
                str(doc.get("reason") or http_reason or ""),
                str(doc.get("message") or http_reason or ""),
                details if isinstance(details, dict) else None,
            )
        return cls(status, http_reason or "", text.strip()[:500] or http_reason or "")


class KubeUnreachable(KubeError):
    """No answer from the API server at all (connection refused, TLS failure, timeout)."""


class KubeApi(Protocol):
    """The few API calls the injector needs; Secret values are raw bytes (the base64 of the wire is not seen here)."""

    def get_secret(self, namespace: str, name: str) -> dict[str, bytes] | None: ...

    def create_secret(self, namespace: str, name: str, data: dict[str, bytes], labels: dict[str, str]) -> None: ...

    def replace_secret(self, namespace: str, name: str, data: dict[str, bytes]) -> None: ...

    def get_webhook_ca_bundles(self, mwc_name: str) -> dict[str, bytes]: ...

    def patch_webhook_ca_bundle(self, mwc_name: str, ca_pem: bytes) -> None: ...


# --- the official client ----------------------------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(value: str | bytes | None) -> bytes:
    if not value:
        return b""
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as e:
        raise ValueError(f"not base64: {e}") from e


@dataclass(frozen=True)
class _Target:
    """What a call touches, so that a 403 can name the exact RBAC rule that is missing."""

    verb: str
    resource: str
    group: str
    name: str
    namespace: str | None = None

    def rbac_hint(self) -> str:
        where = f"in namespace {self.namespace!r}" if self.namespace else "(cluster-scoped, needs a ClusterRole)"
        return (
            f"missing RBAC permission: verb {self.verb!r} on resource {self.resource!r} "
            f"(apiGroups: [{self.group!r}]) name {self.name!r} {where}"
        )


class ClientKubeApi:
    """:class:`KubeApi` on the official client. ``host=None`` means in-cluster (ServiceAccount token and CA)."""

    def __init__(
        self, host: str | None = None, token: str | None = None, verify: bool | str = True, timeout: float = 10.0
    ) -> None:
        from kubernetes import client, config

        cfg = client.Configuration()
        if host is None:
            try:
                config.load_incluster_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
            except config.ConfigException as e:
                raise KubeUnreachable(
                    f"not running in a Kubernetes pod ({e}): give the API server with --kube-api-server URL"
                ) from None
        else:
            cfg.host = host.rstrip("/")
        if token is not None:
            cfg.refresh_api_key_hook = None  # the in-cluster hook would put the projected token back
            cfg.api_key = {"BearerToken": token}
            cfg.api_key_prefix = {"BearerToken": "Bearer"}
        if verify is False:
            cfg.verify_ssl = False
        elif isinstance(verify, str):
            cfg.ssl_ca_cert = verify
        self._timeout = timeout
        self._client = client.ApiClient(cfg)
        self._core = client.CoreV1Api(self._client)
        self._admission = client.AdmissionregistrationV1Api(self._client)

    def close(self) -> None:
        self._client.close()  # type: ignore[no-untyped-call]

    def server_version(self) -> tuple[int, int]:
        """(major, minor) of the API server, for nativeSidecar ``auto``; managed clusters say e.g. minor "31+"."""
        from kubernetes import client

        info = self._call(_Target("get", "/version", "", "", None), client.VersionApi(self._client).get_code)
        return parse_kube_version(f"{info.major}.{info.minor}")

    def __enter__(self) -> ClientKubeApi:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, target: _Target, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run one client call, turning the client's exceptions into ours (the client's carry the raw body)."""
        from kubernetes.client import ApiException
        from urllib3.exceptions import HTTPError

        try:
            return fn(*args, _request_timeout=self._timeout, **kwargs)
        except ApiException as e:
            raise _api_error(e, target) from e
        except HTTPError as e:
            raise KubeUnreachable(f"{target.verb} {target.resource} {target.name!r}: {e}") from e

    def _secret_target(self, verb: str, namespace: str, name: str) -> _Target:
        return _Target(verb, "secrets", "", name, namespace)

    def _read_secret(self, namespace: str, name: str) -> V1Secret:
        return self._call(
            self._secret_target("get", namespace, name), self._core.read_namespaced_secret, name, namespace
        )

    def get_secret(self, namespace: str, name: str) -> dict[str, bytes] | None:
        try:
            secret = self._read_secret(namespace, name)
        except ApiError as e:
            if e.status == 404:
                return None
            raise
        try:
            return {k: _unb64(v) for k, v in (secret.data or {}).items()}
        except ValueError as e:
            raise ApiError(500, "InternalError", f"secret {namespace}/{name} has undecodable data: {e}") from e

    def create_secret(self, namespace: str, name: str, data: dict[str, bytes], labels: dict[str, str]) -> None:
        from kubernetes import client

        body = client.V1Secret(
            api_version="v1",
            kind="Secret",
            type="kubernetes.io/tls",
            metadata=client.V1ObjectMeta(name=name, namespace=namespace, labels=dict(labels)),
            data={k: _b64(v) for k, v in data.items()},
        )
        self._call(
            self._secret_target("create", namespace, name),
            self._core.create_namespaced_secret,
            namespace,
            body,
            _headers=_JSON,
        )

    def replace_secret(self, namespace: str, name: str, data: dict[str, bytes]) -> None:
        """PUT with the resourceVersion just read: a concurrent writer makes this a 409, never a lost update, and
        labels, annotations and owners set by others survive."""
        from kubernetes import client

        current = self._read_secret(namespace, name)
        meta = current.metadata or client.V1ObjectMeta()
        body = client.V1Secret(
            api_version="v1",
            kind="Secret",
            type=current.type,
            metadata=client.V1ObjectMeta(
                name=name,
                namespace=namespace,
                labels=meta.labels,
                annotations=meta.annotations,
                owner_references=meta.owner_references,
                finalizers=meta.finalizers,
                resource_version=meta.resource_version,
            ),
            data={k: _b64(v) for k, v in data.items()},
        )
        self._call(
            self._secret_target("update", namespace, name),
            self._core.replace_namespaced_secret,
            name,
            namespace,
            body,
            _headers=_JSON,
        )

    def _read_mwc(self, mwc_name: str) -> V1MutatingWebhookConfiguration:
        target = _Target("get", "mutatingwebhookconfigurations", "admissionregistration.k8s.io", mwc_name)
        return self._call(target, self._admission.read_mutating_webhook_configuration, mwc_name)

    def get_webhook_ca_bundles(self, mwc_name: str) -> dict[str, bytes]:
        mwc = self._read_mwc(mwc_name)
        try:
            return {w.name: _unb64(w.client_config.ca_bundle) for w in mwc.webhooks or []}
        except ValueError as e:
            raise ApiError(500, "InternalError", f"{mwc_name}: caBundle is not base64: {e}") from e

    def patch_webhook_ca_bundle(self, mwc_name: str, ca_pem: bytes) -> None:
        """One JSON Patch for all webhooks; each ``add`` is guarded by a ``test`` of the webhook's name so that a
        concurrent edit that reorders the list fails the patch (422) instead of writing into the wrong webhook."""
        mwc = self._read_mwc(mwc_name)
        ops = ca_bundle_patch([w.name for w in mwc.webhooks or []], ca_pem)
        if not ops:
            return
        target = _Target("patch", "mutatingwebhookconfigurations", "admissionregistration.k8s.io", mwc_name)
        # A list body makes the client send application/json-patch+json (a dict would become a strategic merge).
        self._call(target, self._admission.patch_mutating_webhook_configuration, mwc_name, ops)


def _api_error(e: ApiException, target: _Target) -> ApiError:
    err = ApiError.from_response(int(e.status or 0), e.reason, e.body)
    if err.status == 403:
        return ApiError(
            err.status, err.reason, f"{target.rbac_hint()}; the API server said: {err.message}", err.details
        )
    return err


def ca_bundle_patch(webhook_names: Sequence[str], ca_pem: bytes) -> list[dict[str, str]]:
    """JSON Patch setting caBundle on every webhook. ``add``, not ``replace``: a freshly applied manifest has no
    caBundle at all and RFC 6902 ``replace`` fails on a missing member, while ``add`` sets or overwrites it."""
    value = _b64(ca_pem)
    ops: list[dict[str, str]] = []
    for i, name in enumerate(webhook_names):
        ops.append({"op": "test", "path": f"/webhooks/{i}/name", "value": name})
        ops.append({"op": "add", "path": f"/webhooks/{i}/clientConfig/caBundle", "value": value})
    return ops
