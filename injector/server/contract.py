"""The webhook's HTTP contract, as a plain function of (body, content type, path).

``Webhook.handle`` holds it all (status codes, AdmissionReview answers, metrics, the log line), so it is tested
without a server; the FastAPI routes only read the body and pass it on. A pod's outcome is memoised per config.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from injector import log
from injector.core.config import InjectorConfig
from injector.core.inject import inject
from injector.core.policy import decide
from injector.core.request import CLUSTER_ENV, NETWORK_ENV, Request
from injector.errors import InjectorError, Refused
from injector.server.metrics import Metrics
from injector.server.reload import Reloader
from injector.server.review import V1, BadReview, build_response, encode_patch, parse_review, salvage_identity

MAX_BODY = 6 * 1024 * 1024  # the API server's own request limit is 3 MiB; anything bigger is not from it
URL_PARAMETER_ENV = {"cluster": CLUSTER_ENV, "net": NETWORK_ENV}
MEMO_SIZE = 512  # distinct pods remembered (a pod's outcome is a few KiB)


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
        log.emit(logging.INFO, entry)
        return status, out if isinstance(out, bytes) else json.dumps(out, separators=(",", ":")).encode()

    def _handle(self, body: bytes, content_type: str | None, path: str, entry: dict[str, Any]) -> tuple[int, Any]:
        mime = (content_type or "").split(";")[0].strip().lower()
        if mime != "application/json":
            self.metrics.errors.labels("content_type").inc()
            got = f"Content-Type {content_type!r}" if content_type else "no Content-Type header"
            entry.update(decision="invalid", reason=f"{got}; expected application/json")
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
            what = "no object in the request" if review.obj is None else f"{review.kind} {review.operation}"
            entry.update(decision="skipped", reason=f"not a Pod CREATE with an object ({what})")
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
