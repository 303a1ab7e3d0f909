"""Fuzz the webhook's contract: whatever arrives, the answer is a well-formed AdmissionReview (HTTP 200) or the
documented 400/415 - never a 500, never an exception, never a hang.

Drives `Webhook.handle` in-process (the same function the HTTPS route calls) so hypothesis can run thousands of
cases; tests/webhook/ covers the same contract over real TLS. The number of cases run is printed (-s) and
recorded in docs/reliability.md.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from injector.core.config import load_config
from injector.server.contract import MAX_BODY, Webhook
from injector.server.metrics import Metrics
from injector.server.reload import Reloader

CASES = {"n": 0}


def make_hook() -> Webhook:
    metrics = Metrics()
    config = Reloader("config", [], lambda: load_config(env={}), metrics)
    config.initial()
    return Webhook(config, metrics)


HOOK = make_hook()
JSON_LEAF = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20)
ANY_JSON = st.recursive(
    JSON_LEAF,
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids, max_size=4),
    max_leaves=25,
)
ODD_TEXT = st.text(
    alphabet=st.characters(exclude_categories=["Cs"]) | st.sampled_from(["\u202e", "\ufeff", "\x00", "\n", "'", "{"])
) | st.sampled_from(["{{ values }}", "{% raw %}", "a\n  command: [sh]", "x" * 5000])


def check(status: int, out: bytes, deadline: float) -> None:
    CASES["n"] += 1
    assert time.monotonic() < deadline, "took too long"
    assert status in (200, 400, 415), status
    doc = json.loads(out)
    if status == 200:
        assert doc["kind"] == "AdmissionReview"
        assert doc["apiVersion"] in ("admission.k8s.io/v1", "admission.k8s.io/v1beta1")
        r = doc["response"]
        assert isinstance(r["uid"], str) and isinstance(r["allowed"], bool)
        if not r["allowed"]:
            assert r["status"]["message"]
        if "patch" in r:
            assert r["patchType"] == "JSONPatch" and r["allowed"] is True
    else:
        assert doc["error"]


def run(body: bytes, ctype: str = "application/json") -> None:
    deadline = time.monotonic() + 5
    status, out = HOOK.handle(body, ctype)
    check(status, out, deadline)


@st.composite
def reviews(draw: st.DrawFn) -> Any:
    """A review with any field replaced by something of the wrong type, or removed."""
    pod = {
        "metadata": {"name": draw(ODD_TEXT), "labels": {"app": "x"}, "annotations": {}},
        "spec": {"containers": [{"name": "app", "image": "a:1"}]},
    }
    review: dict[str, Any] = {
        "apiVersion": draw(st.sampled_from(["admission.k8s.io/v1", "admission.k8s.io/v1beta1", "v1", ""])),
        "kind": draw(st.sampled_from(["AdmissionReview", "Pod", ""])),
        "request": {
            "uid": draw(ODD_TEXT),
            "kind": {"group": "", "version": "v1", "kind": draw(st.sampled_from(["Pod", "Deployment", ""]))},
            "operation": draw(st.sampled_from(["CREATE", "UPDATE", "DELETE", ""])),
            "namespace": draw(ODD_TEXT),
            "object": pod,
            "dryRun": draw(st.booleans()),
        },
    }
    paths = [
        ("apiVersion",),
        ("kind",),
        ("request",),
        ("request", "uid"),
        ("request", "kind"),
        ("request", "namespace"),
        ("request", "object"),
        ("request", "object", "metadata"),
        ("request", "object", "metadata", "annotations"),
        ("request", "object", "metadata", "labels"),
        ("request", "object", "spec"),
        ("request", "object", "spec", "containers"),
    ]
    for path in draw(st.lists(st.sampled_from(paths), max_size=3, unique=True)):
        holder = review
        for key in path[:-1]:
            holder = holder.get(key) if isinstance(holder, dict) else None  # type: ignore[assignment]
            if not isinstance(holder, dict):
                break
        else:
            if draw(st.booleans()):
                holder.pop(path[-1], None)
            else:
                holder[path[-1]] = draw(ANY_JSON)
    # Annotations and labels with arbitrary keys and values (strings or not).
    meta = review.get("request", {}).get("object", {}) if isinstance(review.get("request"), dict) else {}
    if isinstance(meta, dict) and isinstance(meta.get("metadata"), dict):
        names = st.sampled_from(
            ["sidecar.istio.io/inject", "inject.istio.io/templates", "sidecar.istio.io/proxyCPU",
             "proxy.istio.io/config", "sidecar.istio.io/userVolume", "status.sidecar.istio.io/port",
             "traffic.sidecar.istio.io/includeOutboundIPRanges", "sidecar.istio.io/status"]
        )  # fmt: skip
        extra = draw(st.dictionaries(names, ODD_TEXT | ANY_JSON, max_size=3))
        if isinstance(meta["metadata"].get("annotations"), dict):
            meta["metadata"]["annotations"].update(extra)
    return review


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(reviews())
def test_structured_fuzz(review: Any) -> None:
    run(json.dumps(review).encode())


@settings(max_examples=1500, deadline=None)
@given(st.binary(max_size=300) | ANY_JSON.map(lambda v: json.dumps(v).encode()))
def test_arbitrary_bodies(body: bytes) -> None:
    run(body)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=30), st.binary(max_size=50))
def test_arbitrary_content_types(ctype: str, body: bytes) -> None:
    run(body, ctype)


CORPUS = [
    b"",
    b" ",
    b"null",
    b"[]",
    b'"AdmissionReview"',
    b"{",
    b"\xff\xfe\x00{",
    b'{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":null}',
    b'{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":1}}',
    b'{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u","object":[]}}',
    b'{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u","kind":"Pod","object":{}}}',
    b'{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u","kind":{"kind":"Pod"},'
    b'"operation":"CREATE","object":{"metadata":"x","spec":{"containers":"y"}}}}',
    b'{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u","kind":{"kind":"Pod"},'
    b'"operation":"CREATE","object":{"spec":{"containers":[{"name":1}],"initContainers":{}}}}}',
    b'{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u","kind":{"kind":"Pod"},'
    b'"operation":"CREATE","object":{"metadata":{"annotations":{"sidecar.istio.io/status":"{\\"containers\\":7}"}},'
    b'"spec":{"containers":[{"name":"a"}]}}}}',
    b"[" * 100_000 + b"]" * 100_000,  # deeper than the JSON parser's recursion limit
    b'{"a":' * 50_000 + b"1" + b"}" * 50_000,
    b'{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u","kind":{"kind":"Pod"},'
    b'"operation":"CREATE","object":{"metadata":{"name":"' + b"n" * 2_000_000 + b'"},"spec":{"containers":[]}}}}',
    b"x" * (MAX_BODY + 1),
]


@pytest.mark.parametrize("body", CORPUS, ids=[f"corpus-{i}" for i in range(len(CORPUS))])
def test_malformed_corpus(body: bytes) -> None:
    run(body)


def test_report_cases(capsys: pytest.CaptureFixture[str]) -> None:
    """Runs last in this file (pytest keeps file order): the tally for docs/reliability.md."""
    with capsys.disabled():
        print(f"\nwebhook fuzz: {CASES['n']} cases, zero 5xx, zero exceptions")
    assert CASES["n"] >= 4000
