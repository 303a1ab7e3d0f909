"""AdmissionReview in and out: tolerant of bad input, and every answer echoes what the API server needs.

The API server accepts a response only if it carries the request's ``apiVersion``, ``kind: AdmissionReview``
and ``response.uid``; `build_response` is the one place that makes them, so no code path can forget. Parsing
never raises anything but `BadReview`, whose message goes back as ``allowed: false``.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any, Literal, NotRequired, TypedDict

V1 = "admission.k8s.io/v1"
V1BETA1 = "admission.k8s.io/v1beta1"
API_VERSIONS = (V1, V1BETA1)


class Status(TypedDict):
    message: str
    code: NotRequired[int]


class AdmissionResponse(TypedDict):
    uid: str
    allowed: bool
    patchType: NotRequired[Literal["JSONPatch"]]
    patch: NotRequired[str]
    status: NotRequired[Status]
    warnings: NotRequired[list[str]]


class AdmissionReviewOut(TypedDict):
    apiVersion: str
    kind: Literal["AdmissionReview"]
    response: AdmissionResponse


class BadReview(Exception):
    """The body is not an AdmissionReview we can answer about; the message says why."""


@dataclass(frozen=True)
class Review:
    api_version: str
    uid: str
    namespace: str
    operation: str
    kind: str  # request.kind.kind, e.g. "Pod"
    dry_run: bool
    obj: dict[str, Any] | None

    @property
    def pod_name(self) -> str:
        meta = (self.obj or {}).get("metadata") or {}
        return str(meta.get("name") or meta.get("generateName") or "")


def parse_review(body: bytes) -> Review:
    """An AdmissionReview from the request body; `BadReview` for anything we cannot answer properly."""
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise BadReview(f"body is not JSON: {e}") from None
    except RecursionError:
        raise BadReview("body is nested too deeply to be an AdmissionReview") from None
    if not isinstance(doc, dict):
        raise BadReview("body is not a JSON object")
    api_version = doc.get("apiVersion")
    if doc.get("kind") != "AdmissionReview" or api_version not in API_VERSIONS:
        raise BadReview(f"expected kind AdmissionReview, apiVersion {' or '.join(API_VERSIONS)}")
    req = doc.get("request")
    if not isinstance(req, dict):
        raise BadReview("AdmissionReview has no request")
    uid = req.get("uid")
    if not isinstance(uid, str) or not uid:
        raise BadReview("request.uid is missing")
    obj = req.get("object")
    if obj is not None and not isinstance(obj, dict):
        raise BadReview("request.object is not an object")
    kind = req.get("kind") or {}
    return Review(
        api_version=str(api_version),
        uid=uid,
        namespace=str(req.get("namespace") or (obj or {}).get("metadata", {}).get("namespace") or ""),
        operation=str(req.get("operation") or ""),
        kind=str(kind.get("kind") or "") if isinstance(kind, dict) else "",
        dry_run=bool(req.get("dryRun")),
        obj=obj,
    )


def salvage_identity(body: bytes) -> tuple[str, str]:
    """(apiVersion, uid) from a body that failed `parse_review`, so even that answer can be matched up: each is
    taken wherever it is readable (a v1beta1 review whose ``request`` is null is still answered as v1beta1)."""
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return V1, ""
    if not isinstance(doc, dict):
        return V1, ""
    api_version = doc.get("apiVersion")
    req = doc.get("request")
    uid = req.get("uid") if isinstance(req, dict) else None
    return (api_version if api_version in API_VERSIONS else V1), (uid if isinstance(uid, str) else "")


def encode_patch(patch: list[dict[str, Any]]) -> str:
    """The response's ``patch`` field: base64 of the JSON Patch."""
    return base64.b64encode(json.dumps(patch, separators=(",", ":")).encode()).decode()


def build_response(
    api_version: str,
    uid: str,
    *,
    allowed: bool = True,
    patch: list[dict[str, Any]] | str | None = None,
    message: str | None = None,
    warnings: list[str] | None = None,
) -> AdmissionReviewOut:
    """The one place responses are made. ``patch`` is the operations, or already `encode_patch`-ed."""
    response: AdmissionResponse = {"uid": uid, "allowed": allowed}
    if patch:
        response["patchType"] = "JSONPatch"
        response["patch"] = patch if isinstance(patch, str) else encode_patch(patch)
    if message is not None:
        response["status"] = {"message": message} if allowed else {"message": message, "code": 403}
    if warnings:
        response["warnings"] = warnings
    return {"apiVersion": api_version, "kind": "AdmissionReview", "response": response}
