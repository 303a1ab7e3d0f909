"""The Secret/caBundle bootstrap, driven through the official client against an in-process API server."""

from __future__ import annotations

import base64
import copy
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import jsonpatch
import pytest

from injector.certs import crypto
from injector.certs.kube import ApiError, ClientKubeApi, KubeUnreachable, ca_bundle_patch
from injector.certs.lifecycle import SECRET_LABELS, Action, ensure_serving_cert, plan_secret, stale_webhooks
from tests.support.kube_server import FakeKube, running

NOW = datetime(2025, 6, 1, 12, 0, 0, tzinfo=UTC)
NS, SECRET, SERVICE, MWC = "sidecar-injector", "sidecar-injector-certs", "sidecar-injector", "sidecar-injector"
HOOKS = ["namespace.sidecar-injector.io", "object.sidecar-injector.io"]
SANS = crypto.expected_sans(SERVICE, NS)
SECRET_PATH = f"/api/v1/namespaces/{NS}/secrets/{SECRET}"
MWC_PATH = f"/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/{MWC}"


def secret_for(ca: crypto.KeyPair, *, now: datetime = NOW, days: int = 365) -> dict[str, bytes]:
    serving = crypto.make_serving_cert(ca, SERVICE, NS, days=days, now=now)
    return {"ca.crt": ca.cert_pem, "ca.key": ca.key_pem, "tls.crt": serving.cert_pem, "tls.key": serving.key_pem}


@pytest.fixture(scope="module")
def ca() -> crypto.KeyPair:
    return crypto.make_ca(now=NOW - timedelta(days=10))


@pytest.fixture
def kube() -> Iterator[FakeKube]:
    with running() as fake:
        fake.add_mwc(MWC, HOOKS)
        yield fake


@pytest.fixture
def api(kube: FakeKube) -> Iterator[ClientKubeApi]:
    with ClientKubeApi(host=kube.url, token="t0ken", verify=False) as client:
        yield client


def ensure(api: ClientKubeApi, now: datetime = NOW) -> tuple[bytes, bytes, bytes]:
    b = ensure_serving_cert(api, namespace=NS, secret_name=SECRET, service=SERVICE, mwc_name=MWC, now=now)
    return b.ca_pem, b.cert_pem, b.key_pem


# --- through the client ------------------------------------------------------------------------------------------


def test_fresh_install_creates_secret_and_patches_every_webhook(kube: FakeKube, api: ClientKubeApi) -> None:
    ca_pem, cert_pem, key_pem = ensure(api)

    stored = kube.secret(NS, SECRET)
    assert stored["type"] == "kubernetes.io/tls"
    assert stored["metadata"]["labels"] == SECRET_LABELS
    data = kube.secret_data(NS, SECRET)
    assert (data["ca.crt"], data["tls.crt"], data["tls.key"]) == (ca_pem, cert_pem, key_pem)
    assert crypto.matches_key(ca_pem, data["ca.key"])
    assert crypto.signed_by(cert_pem, ca_pem) and crypto.matches_key(cert_pem, key_pem)
    assert kube.ca_bundles(MWC) == {h: ca_pem for h in HOOKS}

    writes = kube.writes()
    assert [(r.method, r.path) for r in writes] == [
        ("POST", f"/api/v1/namespaces/{NS}/secrets"),
        ("PATCH", MWC_PATH),
    ]
    assert writes[0].content_type == "application/json"
    patch = writes[1]
    assert patch.content_type == "application/json-patch+json"
    assert [op["op"] for op in patch.body] == ["test", "add", "test", "add"]
    assert all(r.authorization == "Bearer t0ken" for r in kube.requests)


def test_second_start_is_read_only(kube: FakeKube, api: ClientKubeApi) -> None:
    first = ensure(api)
    writes = len(kube.writes())
    kube.requests.clear()

    assert ensure(api, NOW + timedelta(days=100)) == first
    assert kube.writes() == []
    assert [(r.method, r.path) for r in kube.requests] == [("GET", SECRET_PATH), ("GET", MWC_PATH)]
    assert writes == 2


def test_create_race_uses_the_other_replicas_secret(kube: FakeKube, api: ClientKubeApi) -> None:
    theirs = secret_for(crypto.make_ca(now=NOW))
    kube.race["POST"] = theirs

    ca_pem, cert_pem, key_pem = ensure(api)

    assert (ca_pem, cert_pem, key_pem) == (theirs["ca.crt"], theirs["tls.crt"], theirs["tls.key"])
    assert kube.secret_data(NS, SECRET) == theirs
    assert kube.ca_bundles(MWC) == {h: theirs["ca.crt"] for h in HOOKS}
    assert [r.method for r in kube.writes()] == ["POST", "PATCH"]


def test_expiring_serving_cert_is_renewed_with_the_same_ca(
    kube: FakeKube, api: ClientKubeApi, ca: crypto.KeyPair
) -> None:
    old = secret_for(ca, now=NOW - timedelta(days=340))  # 25 days left
    kube.put_secret(NS, SECRET, old, labels={"team": "mesh"}, annotations={"note": "keep me"})
    kube.add_mwc(MWC, HOOKS, ca_bundle=ca.cert_pem)
    rv = kube.secret(NS, SECRET)["metadata"]["resourceVersion"]

    ca_pem, cert_pem, key_pem = ensure(api)

    assert ca_pem == ca.cert_pem
    assert cert_pem != old["tls.crt"] and crypto.signed_by(cert_pem, ca.cert_pem)
    assert crypto.not_after(cert_pem) == NOW + timedelta(days=365)
    new = kube.secret_data(NS, SECRET)
    assert new == {"ca.crt": ca.cert_pem, "ca.key": ca.key_pem, "tls.crt": cert_pem, "tls.key": key_pem}
    meta = kube.secret(NS, SECRET)["metadata"]
    assert meta["labels"] == {"team": "mesh"} and meta["annotations"] == {"note": "keep me"}
    (put,) = kube.writes()  # no PATCH: the caBundle already trusts the unchanged CA
    assert (put.method, put.path, put.body["metadata"]["resourceVersion"]) == ("PUT", SECRET_PATH, rv)


def test_replace_race_uses_the_other_replicas_renewal(kube: FakeKube, api: ClientKubeApi, ca: crypto.KeyPair) -> None:
    kube.put_secret(NS, SECRET, secret_for(ca, now=NOW - timedelta(days=340)))
    kube.add_mwc(MWC, HOOKS, ca_bundle=ca.cert_pem)
    theirs = secret_for(ca, now=NOW)
    kube.race["PUT"] = theirs

    _, cert_pem, _ = ensure(api)

    assert cert_pem == theirs["tls.crt"]
    assert kube.secret_data(NS, SECRET) == theirs
    assert [r.method for r in kube.writes()] == ["PUT"]  # ours lost with 409, theirs was valid: nothing more


def test_expiring_ca_is_rotated_and_ca_bundle_follows(kube: FakeKube, api: ClientKubeApi) -> None:
    old_ca = crypto.make_ca(days=3650, now=NOW - timedelta(days=3630))  # 20 days left
    kube.put_secret(NS, SECRET, secret_for(old_ca, days=10))
    kube.add_mwc(MWC, HOOKS, ca_bundle=old_ca.cert_pem)

    ca_pem, cert_pem, _ = ensure(api)

    assert ca_pem != old_ca.cert_pem and crypto.signed_by(cert_pem, ca_pem)
    assert crypto.not_after(ca_pem) == NOW + timedelta(days=3650)
    assert kube.secret_data(NS, SECRET)["ca.crt"] == ca_pem
    assert kube.ca_bundles(MWC) == {h: ca_pem for h in HOOKS}
    assert [r.method for r in kube.writes()] == ["PUT", "PATCH"]


def test_one_stale_webhook_gets_the_ca_bundle(kube: FakeKube, api: ClientKubeApi, ca: crypto.KeyPair) -> None:
    kube.put_secret(NS, SECRET, secret_for(ca))
    kube.add_mwc(MWC, HOOKS, ca_bundle=ca.cert_pem)
    kube.mwcs[MWC]["webhooks"][1]["clientConfig"]["caBundle"] = base64.b64encode(b"stale").decode()

    ensure(api)

    assert kube.ca_bundles(MWC) == {h: ca.cert_pem for h in HOOKS}
    assert [r.method for r in kube.writes()] == ["PATCH"]


def test_forbidden_names_the_missing_rbac_permission(kube: FakeKube, api: ClientKubeApi) -> None:
    kube.forbidden.add(("GET", SECRET_PATH))
    with pytest.raises(ApiError) as info:
        ensure(api)
    err = info.value
    assert (err.status, err.reason) == (403, "Forbidden")
    assert "verb 'get' on resource 'secrets'" in err.message
    assert f"name {SECRET!r} in namespace {NS!r}" in err.message
    assert "cannot get resource" in err.message  # the server's own words are kept
    assert kube.writes() == []


def test_forbidden_patch_says_cluster_scoped(kube: FakeKube, api: ClientKubeApi) -> None:
    kube.forbidden.add(("PATCH", MWC_PATH))
    with pytest.raises(ApiError) as info:
        ensure(api)
    assert info.value.status == 403
    assert "verb 'patch' on resource 'mutatingwebhookconfigurations'" in info.value.message
    assert "apiGroups: ['admissionregistration.k8s.io']" in info.value.message
    assert "cluster-scoped" in info.value.message


def test_missing_webhook_configuration_is_a_404(kube: FakeKube, api: ClientKubeApi) -> None:
    del kube.mwcs[MWC]
    with pytest.raises(ApiError) as info:
        ensure(api)
    assert (info.value.status, info.value.reason) == (404, "NotFound")
    assert MWC in info.value.message
    assert info.value.details["kind"] == "mutatingwebhookconfigurations"


def test_client_round_trips_binary_secret_data(kube: FakeKube, api: ClientKubeApi) -> None:
    data = {"ca.crt": b"\x00\xff", "tls.crt": b"cert", "tls.key": b"key\n"}
    assert api.get_secret(NS, "nope") is None
    api.create_secret(NS, "s", data, {"a": "b"})
    assert api.get_secret(NS, "s") == data
    with pytest.raises(ApiError) as info:
        api.create_secret(NS, "s", data, {})
    assert (info.value.status, info.value.reason) == (409, "AlreadyExists")
    api.replace_secret(NS, "s", {**data, "tls.key": b"new"})
    assert api.get_secret(NS, "s") == {**data, "tls.key": b"new"}
    with pytest.raises(ApiError) as info:
        api.replace_secret(NS, "gone", data)
    assert info.value.status == 404


def test_renewal_window_must_be_shorter_than_lifetimes(api: ClientKubeApi) -> None:
    with pytest.raises(ValueError, match="cert_days=20 must be longer"):
        ensure_serving_cert(api, namespace=NS, secret_name=SECRET, service=SERVICE, mwc_name=MWC, now=NOW, cert_days=20)


def test_unreachable_server() -> None:
    with running() as fake:
        url = fake.url
    with ClientKubeApi(host=url, verify=False, timeout=2) as client, pytest.raises(KubeUnreachable):
        client.get_secret(NS, SECRET)


# --- pure pieces -------------------------------------------------------------------------------------------------


def test_ca_bundle_patch_sets_missing_and_present_bundles() -> None:
    doc = {"webhooks": [{"name": "a", "clientConfig": {}}, {"name": "b", "clientConfig": {"caBundle": "eA=="}}]}
    out = jsonpatch.JsonPatch(ca_bundle_patch(["a", "b"], b"PEM")).apply(copy.deepcopy(doc))
    assert [w["clientConfig"]["caBundle"] for w in out["webhooks"]] == ["UEVN", "UEVN"]
    with pytest.raises(jsonpatch.JsonPatchTestFailed):  # the list was reordered since we read it
        jsonpatch.JsonPatch(ca_bundle_patch(["b", "a"], b"PEM")).apply(copy.deepcopy(doc))


def test_stale_webhooks() -> None:
    assert stale_webhooks({"a": b"X", "b": b"", "c": b"Y"}, b"X") == ["b", "c"]
    assert stale_webhooks({}, b"X") == []


def _plan_cases() -> list[tuple[str, dict[str, bytes] | None, Action, str]]:
    good_ca = crypto.make_ca(now=NOW - timedelta(days=10))
    other_ca = crypto.make_ca(now=NOW)
    old_ca = crypto.make_ca(days=3650, now=NOW - timedelta(days=3630))
    good = secret_for(good_ca)
    other = secret_for(other_ca)
    narrow = crypto.make_serving_cert(good_ca, "other-svc", NS, now=NOW)
    return [
        ("absent", None, Action.CREATE, "does not exist"),
        ("valid", good, Action.KEEP, "valid"),
        ("expiring", secret_for(good_ca, now=NOW - timedelta(days=340)), Action.RENEW, "expires"),
        ("expired", secret_for(good_ca, now=NOW - timedelta(days=400)), Action.RENEW, "expires"),
        ("key mismatch", {**good, "tls.key": other["tls.key"]}, Action.RENEW, "does not match"),
        ("foreign cert", {**good, "tls.crt": other["tls.crt"], "tls.key": other["tls.key"]}, Action.RENEW, "signed"),
        ("wrong service", {**good, "tls.crt": narrow.cert_pem, "tls.key": narrow.key_pem}, Action.RENEW, "lacks SANs"),
        ("no tls.key", {k: v for k, v in good.items() if k != "tls.key"}, Action.RENEW, "lacks tls.key"),
        ("garbage cert", {**good, "tls.crt": b"junk"}, Action.RENEW, "unreadable"),
        ("ca expiring", secret_for(old_ca), Action.ROTATE_CA, "CA expires"),
        ("ca key mismatch", {**good, "ca.key": other_ca.key_pem}, Action.ROTATE_CA, "does not match"),
        ("ca not a CA", {**good, "ca.crt": good["tls.crt"], "ca.key": good["tls.key"]}, Action.ROTATE_CA, "not a CA"),
        ("no ca.key", {k: v for k, v in good.items() if k != "ca.key"}, Action.ROTATE_CA, "lacks ca.key"),
        ("garbage ca", {**good, "ca.crt": b"junk"}, Action.ROTATE_CA, "unreadable"),
    ]


@pytest.mark.parametrize(("case", "data", "action", "why"), _plan_cases(), ids=[c[0] for c in _plan_cases()])
def test_plan_secret(case: str, data: dict[str, bytes] | None, action: Action, why: str) -> None:
    plan = plan_secret(data, now=NOW, renew_before=timedelta(days=30), sans=SANS)
    assert plan.action is action, plan.reason
    assert why in plan.reason


def test_api_error_parses_status_and_tolerates_html() -> None:
    body = (
        '{"kind":"Status","apiVersion":"v1","status":"Failure","message":"x not found","reason":"NotFound","code":404}'
    )
    err = ApiError.from_response(404, "Not Found", body)
    assert (err.status, err.reason, err.message, str(err)) == (
        404,
        "NotFound",
        "x not found",
        "404 NotFound: x not found",
    )
    err = ApiError.from_response(502, "Bad Gateway", b"<html>upstream down</html>")
    assert (err.status, err.reason, err.message) == (502, "Bad Gateway", "<html>upstream down</html>")


def test_importing_kube_does_not_import_the_client() -> None:
    code = "import sys, injector.certs.kube; print(any(m.split('.')[0] == 'kubernetes' for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
