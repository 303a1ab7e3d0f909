"""The webhook's HTTP contract and metrics, driven through `Webhook.handle` (no server needed).

The same contract is exercised over real HTTPS in tests/webhook/.
"""

from __future__ import annotations

import base64
import json
import logging
from pathlib import Path
from typing import Any

import jsonpatch
import pytest
from prometheus_client.parser import text_string_to_metric_families

from injector.core.config import load_config
from injector.server.contract import MAX_BODY, Webhook, proxy_env_from_path
from injector.server.metrics import Metrics
from injector.server.reload import Reloader

POD = {"metadata": {"name": "web", "labels": {"app": "web"}}, "spec": {"containers": [{"name": "app", "image": "a:1"}]}}


def review(obj: Any = None, *, api: str = "admission.k8s.io/v1", uid: str = "u-1", **req: Any) -> bytes:
    request = {"uid": uid, "kind": {"group": "", "version": "v1", "kind": "Pod"}, "operation": "CREATE"}
    request.update(namespace="shop", object=POD if obj is None else obj)
    request.update(req)
    return json.dumps({"apiVersion": api, "kind": "AdmissionReview", "request": request}).encode()


@pytest.fixture
def hook() -> Webhook:
    metrics = Metrics()
    config = Reloader("config", [], lambda: load_config(env={}), metrics)
    config.initial()
    return Webhook(config, metrics)


def call(hook: Webhook, body: bytes, ctype: str | None = "application/json", path: str = "/inject") -> tuple[int, Any]:
    status, out = hook.handle(body, ctype, path)
    return status, json.loads(out)


def patch_of(resp: dict[str, Any]) -> list[dict[str, Any]]:
    patch: list[dict[str, Any]] = json.loads(base64.b64decode(resp["response"]["patch"]))
    return patch


@pytest.mark.parametrize("api", ["admission.k8s.io/v1", "admission.k8s.io/v1beta1"])
def test_inject_echoes_version_kind_uid_and_patches(hook: Webhook, api: str) -> None:
    status, out = call(hook, review(api=api, uid="abc-123"))
    assert status == 200
    assert out["apiVersion"] == api and out["kind"] == "AdmissionReview"
    r = out["response"]
    assert r["uid"] == "abc-123" and r["allowed"] is True and r["patchType"] == "JSONPatch"
    pod = jsonpatch.apply_patch(POD, patch_of(out))
    assert [c["name"] for c in pod["spec"]["containers"]] == ["app", "istio-proxy"]


def test_reinvocation_gives_the_same_patch(hook: Webhook) -> None:
    _, first = call(hook, review())
    _, again = call(hook, review())
    assert patch_of(first) == patch_of(again)
    injected = jsonpatch.apply_patch(POD, patch_of(first))
    _, third = call(hook, review(injected))
    assert "patch" not in third["response"]  # already injected: nothing to change
    assert third["response"]["allowed"] is True


def test_skip_is_allowed_without_patch(hook: Webhook) -> None:
    obj = {**POD, "metadata": {"name": "x", "labels": {"sidecar.istio.io/inject": "false"}}}
    status, out = call(hook, review(obj))
    assert status == 200 and out["response"] == {"uid": "u-1", "allowed": True}


def test_refused_annotation_is_allowed_false_with_the_message(hook: Webhook) -> None:
    obj = {**POD, "metadata": {"name": "x", "annotations": {"sidecar.istio.io/proxyCPU": "lots"}}}
    status, out = call(hook, review(obj))
    assert status == 200
    r = out["response"]
    assert r["allowed"] is False and "patch" not in r
    assert "sidecar.istio.io/proxyCPU='lots'" in r["status"]["message"]


def test_unknown_template_is_refused(hook: Webhook) -> None:
    obj = {**POD, "metadata": {"name": "x", "annotations": {"inject.istio.io/templates": "nope"}}}
    _, out = call(hook, review(obj))
    assert out["response"]["allowed"] is False
    assert "have envoy, sidecar" in out["response"]["status"]["message"]


@pytest.mark.parametrize(
    ("body", "ctype", "status"),
    [
        (b"", "application/json", 400),
        (b"x" * (MAX_BODY + 1), "application/json", 400),
        (b"{}", "text/plain", 415),
        (b"{}", None, 415),
    ],
    ids=["empty", "oversized", "wrong-content-type", "no-content-type"],
)
def test_http_contract_errors(hook: Webhook, body: bytes, ctype: str | None, status: int) -> None:
    got, out = call(hook, body, ctype)
    assert got == status
    assert "error" in out


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"not json", "body is not JSON"),
        (b"[1]", "not a JSON object"),
        (b'{"apiVersion":"v1","kind":"Pod"}', "expected kind AdmissionReview"),
        (b'{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}', "has no request"),
        (b'{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{}}', "uid is missing"),
        (
            b'{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"z","object":7}}',
            "not an object",
        ),
    ],
)
def test_undecodable_review_is_200_allowed_false(hook: Webhook, body: bytes, message: str) -> None:
    status, out = call(hook, body)
    assert status == 200
    assert out["kind"] == "AdmissionReview" and out["apiVersion"] == "admission.k8s.io/v1"
    assert out["response"]["allowed"] is False
    assert message in out["response"]["status"]["message"]


def test_uid_is_salvaged_from_a_broken_review(hook: Webhook) -> None:
    body = b'{"apiVersion":"admission.k8s.io/v1beta1","kind":"AdmissionReview","request":{"uid":"keep-me","object":1}}'
    _, out = call(hook, body)
    assert out["apiVersion"] == "admission.k8s.io/v1beta1"
    assert out["response"]["uid"] == "keep-me"


@pytest.mark.parametrize("request_value", ["null", "0", "[]", '"x"'])
def test_broken_v1beta1_review_is_answered_as_v1beta1(hook: Webhook, request_value: str) -> None:
    body = b'{"apiVersion":"admission.k8s.io/v1beta1","kind":"AdmissionReview","request":%s}' % request_value.encode()
    _, out = call(hook, body)
    assert out["apiVersion"] == "admission.k8s.io/v1beta1"
    assert out["response"]["allowed"] is False and "has no request" in out["response"]["status"]["message"]


@pytest.mark.parametrize(
    ("ctype", "says"),
    [(None, "no Content-Type header; expected application/json"), ("text/plain", "'text/plain'; expected")],
)
def test_content_type_error_says_what_came(hook: Webhook, ctype: str | None, says: str) -> None:
    _, out = call(hook, b"{}", ctype)
    assert says in out["error"] and "None" not in out["error"]


def test_a_review_without_object_is_logged_as_such(hook: Webhook, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="sidecar_injector"):
        _, out = call(hook, review(obj={}, object=None))
    assert out["response"] == {"uid": "u-1", "allowed": True}
    (line,) = [json.loads(r.getMessage()) for r in caplog.records if r.name == "sidecar_injector"]
    assert line["reason"] == "not a Pod CREATE with an object (no object in the request)"


def test_non_pod_or_non_create_is_allowed_untouched(hook: Webhook) -> None:
    _, out = call(hook, review(operation="UPDATE"))
    assert out["response"] == {"uid": "u-1", "allowed": True}
    _, out = call(hook, review(kind={"kind": "Deployment"}))
    assert out["response"] == {"uid": "u-1", "allowed": True}


def test_dry_run_gets_the_same_patch(hook: Webhook) -> None:
    _, normal = call(hook, review())
    _, dry = call(hook, review(dryRun=True))
    assert patch_of(dry) == patch_of(normal)


def test_path_parameters_become_proxy_env(hook: Webhook) -> None:
    obj = {**POD, "metadata": {"name": "x", "annotations": {"inject.istio.io/templates": "sidecar"}}}
    _, out = call(hook, review(obj), path="/inject/cluster/east--slash--1/net/n1/extra/v")
    pod = jsonpatch.apply_patch(obj, patch_of(out))
    proxy = next(c for c in pod["spec"]["containers"] if c["name"] == "istio-proxy")
    env = {e["name"]: e.get("value") for e in proxy["env"]}
    assert env["ISTIO_META_CLUSTER_ID"] == "east/1"
    assert env["ISTIO_META_NETWORK"] == "n1"
    assert env["EXTRA"] == "v"


@pytest.mark.parametrize(
    ("path", "env"),
    [
        ("/inject", {}),
        ("/inject/", {}),
        ("/inject/cluster/c1", {"ISTIO_META_CLUSTER_ID": "c1"}),
        ("/inject/cluster/c1/net", {"ISTIO_META_CLUSTER_ID": "c1"}),  # trailing key without value ignored
        ("/inject/net//cluster/c2", {"ISTIO_META_CLUSTER_ID": "c2"}),
    ],
)
def test_proxy_env_from_path(path: str, env: dict[str, str]) -> None:
    assert proxy_env_from_path(path) == env


def test_internal_error_is_an_answer_not_a_500(hook: Webhook, monkeypatch: pytest.MonkeyPatch) -> None:
    import injector.server.contract as w

    def boom(*a: Any, **k: Any) -> Any:
        raise RuntimeError("kaboom")

    monkeypatch.setattr(w, "inject", boom)
    status, out = call(hook, review(uid="u-9"))
    assert status == 200
    assert out["response"]["uid"] == "u-9" and out["response"]["allowed"] is False
    assert "kaboom" in out["response"]["status"]["message"]


def metric(hook: Webhook, name: str, labels: dict[str, str] | None = None) -> float:
    data, _ = hook.metrics.render()
    for fam in text_string_to_metric_families(data.decode()):
        for s in fam.samples:
            if s.name == name and (labels is None or all(s.labels.get(k) == v for k, v in labels.items())):
                return float(s.value)
    return 0.0


def test_metrics_after_a_known_sequence(hook: Webhook) -> None:
    skip = {**POD, "metadata": {"name": "s", "labels": {"sidecar.istio.io/inject": "false"}}}
    bad = {**POD, "metadata": {"name": "b", "annotations": {"sidecar.istio.io/logLevel": "loud"}}}
    call(hook, review())
    call(hook, review())
    call(hook, review(skip))
    call(hook, review(bad))
    call(hook, b"nope")
    call(hook, b"{}", "text/plain")
    assert metric(hook, "sidecar_injector_requests_total") == 6
    assert metric(hook, "sidecar_injector_injections_total") == 2
    assert metric(hook, "sidecar_injector_skipped_total", {"reason": "label"}) == 1
    assert metric(hook, "sidecar_injector_refused_total") == 1
    assert metric(hook, "sidecar_injector_errors_total", {"kind": "bad_review"}) == 1
    assert metric(hook, "sidecar_injector_errors_total", {"kind": "content_type"}) == 1
    assert metric(hook, "sidecar_injector_request_duration_seconds_count") == 6
    assert metric(hook, "sidecar_injector_request_duration_seconds_bucket", {"le": "+Inf"}) == 6


def test_one_json_log_line_per_request(hook: Webhook, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="sidecar_injector"):
        call(hook, review(uid="log-1"))
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "sidecar_injector"]
    assert len(lines) == 1
    line = lines[0]
    assert line["uid"] == "log-1" and line["namespace"] == "shop" and line["pod"] == "web"
    assert line["decision"] == "injected" and line["reason"] == "policy enabled"
    assert line["duration_ms"] >= 0


def test_request_log_carries_no_pod_contents(hook: Webhook, caplog: pytest.LogCaptureFixture) -> None:
    secret = {
        **POD,
        "spec": {"containers": [{"name": "app", "image": "a:1", "env": [{"name": "P", "value": "s3cr3t"}]}]},
    }
    with caplog.at_level(logging.INFO, logger="sidecar_injector"):
        call(hook, review(secret, uid="log-2"))
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "log-2" in text and "s3cr3t" not in text


def test_reloader_debounces_and_keeps_last_good(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text("policy: enabled\n")
    metrics = Metrics()
    r = Reloader("config", [tmp_path], lambda: load_config(tmp_path, env={}), metrics, debounce=0.5)
    assert r.initial().policy == "enabled"
    (tmp_path / "config.yaml").write_text("policy: disabled\n")
    assert r.poll(10.0) is False  # change seen, debounce starts
    assert r.poll(10.2) is False  # still settling
    assert r.poll(10.6) is True
    assert r.value is not None and r.value.policy == "disabled"
    (tmp_path / "config.yaml").write_text("policy: sometimes\n")
    r.poll(20.0)
    assert r.poll(21.0) is False
    assert r.value.policy == "disabled" and r.last_error is not None and "policy must be one of" in r.last_error
    assert r.poll(30.0) is False  # a failed fingerprint is not retried for config
    (tmp_path / "config.yaml").write_text("policy: enabled\n")
    r.poll(40.0)
    assert r.poll(41.0) is True and r.last_error is None


def test_readyz_reports_a_failed_reload(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text("policy: enabled\n")
    metrics = Metrics()
    r = Reloader("config", [tmp_path], lambda: load_config(tmp_path, env={}), metrics, debounce=0)
    r.initial()
    hook = Webhook(r, metrics)
    assert hook.ready == (True, "ok")
    (tmp_path / "config.yaml").write_text("[broken")
    r.poll(1.0)
    r.poll(2.0)
    ok, detail = hook.ready
    assert ok and "config: last reload failed" in detail
    assert metric(hook, "sidecar_injector_reloads_total", {"what": "config", "result": "failure"}) == 1
    assert metric(hook, "sidecar_injector_last_reload_success", {"what": "config"}) == 0


def test_reloader_follows_a_configmap_symlink_swap(tmp_path: Path) -> None:
    """A mounted ConfigMap: files are symlinks into ..data, which the kubelet swaps atomically to a new dir."""
    v1, v2 = tmp_path / "..2026_11_26_01", tmp_path / "..2026_11_26_02"
    v1.mkdir()
    (v1 / "config.yaml").write_text("policy: enabled\n")
    (tmp_path / "..data").symlink_to(v1.name)
    (tmp_path / "config.yaml").symlink_to("..data/config.yaml")
    metrics = Metrics()
    r = Reloader("config", [tmp_path], lambda: load_config(tmp_path, env={}), metrics, debounce=0)
    assert r.initial().policy == "enabled"
    v2.mkdir()
    (v2 / "config.yaml").write_text("policy: disabled\n")
    (tmp_path / "..data_tmp").symlink_to(v2.name)
    (tmp_path / "..data_tmp").rename(tmp_path / "..data")  # the kubelet's atomic swap
    r.poll(1.0)
    assert r.poll(2.0) is True
    assert r.value is not None and r.value.policy == "disabled"
