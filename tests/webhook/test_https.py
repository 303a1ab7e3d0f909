"""The webhook over real HTTPS: a verifying client, keep-alive, the whole contract, hot reload."""

from __future__ import annotations

import base64
import http.client
import json
import socket
import ssl
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from injector.certs import crypto

from .conftest import Server, serving

POD = {"metadata": {"name": "web"}, "spec": {"containers": [{"name": "app", "image": "a:1"}]}}


def review(obj: Any = None, *, api: str = "admission.k8s.io/v1", uid: str = "u-1", **req: Any) -> bytes:
    request = {"uid": uid, "kind": {"group": "", "version": "v1", "kind": "Pod"}, "operation": "CREATE"}
    request.update(namespace="shop", object=POD if obj is None else obj, **req)
    return json.dumps({"apiVersion": api, "kind": "AdmissionReview", "request": request}).encode()


def post(
    conn: http.client.HTTPSConnection, body: bytes, path: str = "/inject", ctype: str = "application/json"
) -> tuple[int, Any]:
    conn.request("POST", path, body=body, headers={"Content-Type": ctype})
    resp = conn.getresponse()
    data = resp.read()
    return resp.status, json.loads(data)


def patch_text(out: dict[str, Any]) -> str:
    return base64.b64decode(out["response"].get("patch", "")).decode()


def test_contract_over_one_keepalive_connection(server: Server) -> None:
    conn = server.connection()
    status, out = post(conn, review(api="admission.k8s.io/v1", uid="a"))
    sock = conn.sock
    assert status == 200 and out["response"]["uid"] == "a" and out["response"]["patchType"] == "JSONPatch"
    status, out = post(conn, review(api="admission.k8s.io/v1beta1", uid="b"))
    assert out["apiVersion"] == "admission.k8s.io/v1beta1" and out["response"]["uid"] == "b"
    skip = {**POD, "metadata": {"name": "s", "labels": {"sidecar.istio.io/inject": "false"}}}
    assert post(conn, review(skip, uid="c"))[1]["response"] == {"uid": "c", "allowed": True}
    bad = {**POD, "metadata": {"name": "r", "annotations": {"sidecar.istio.io/interceptionMode": "magic"}}}
    out = post(conn, review(bad, uid="d"))[1]["response"]
    assert out["allowed"] is False and "interceptionMode='magic'" in out["status"]["message"]
    assert post(conn, b"")[0] == 400
    assert post(conn, b"{}", ctype="text/yaml")[0] == 415
    status, out = post(conn, b"{not json")
    assert status == 200 and out["response"]["allowed"] is False
    sidecar = {**POD, "metadata": {"name": "p", "annotations": {"inject.istio.io/templates": "sidecar"}}}
    out = post(conn, review(sidecar, uid="e"), path="/inject/cluster/west/net/n2")[1]
    assert '"value":"west"' in patch_text(out) and '"value":"n2"' in patch_text(out)
    dry = post(conn, review(uid="f", dryRun=True))[1]
    assert dry["response"]["allowed"] is True and dry["response"]["patch"]
    assert conn.sock is sock, "the connection was not kept alive"
    conn.close()


def test_oversized_body_is_400_without_reading_it_all(server: Server) -> None:
    conn = server.connection()
    conn.putrequest("POST", "/inject")
    conn.putheader("Content-Type", "application/json")
    conn.putheader("Content-Length", str(7 * 1024 * 1024))
    conn.endheaders()
    conn.send(b"{" * 1024)
    resp = conn.getresponse()
    assert resp.status == 400


def test_a_stalled_body_does_not_hang(server: Server) -> None:
    conn = server.connection()
    conn.putrequest("POST", "/inject")
    conn.putheader("Content-Type", "application/json")
    conn.putheader("Content-Length", "100")
    conn.endheaders()
    conn.send(b'{"apiVersion":')
    start = time.monotonic()
    resp = conn.getresponse()
    assert resp.status == 408
    assert time.monotonic() - start < 5


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1:DeprecationWarning")
def test_client_verification_and_tls_versions(server: Server) -> None:
    other_ca = crypto.make_ca("someone-else")
    ctx = ssl.create_default_context(cadata=other_ca.cert_pem.decode())
    with pytest.raises(ssl.SSLCertVerificationError):
        with socket.create_connection(("127.0.0.1", server.port)) as s, ctx.wrap_socket(s, server_hostname="127.0.0.1"):
            pass
    # The service DNS name is on the certificate too (what the API server checks).
    ctx = server.context()
    with socket.create_connection(("127.0.0.1", server.port)) as s:
        with ctx.wrap_socket(s, server_hostname="sidecar-injector.sidecar-injector.svc") as tls:
            assert tls.version() in ("TLSv1.2", "TLSv1.3")
    old = server.context()
    old.minimum_version = ssl.TLSVersion.TLSv1
    old.maximum_version = ssl.TLSVersion.TLSv1_1
    with pytest.raises(ssl.SSLError):
        with socket.create_connection(("127.0.0.1", server.port)) as s, old.wrap_socket(s, server_hostname="127.0.0.1"):
            pass


def test_health_ready_metrics(server: Server) -> None:
    conn = server.connection()
    conn.request("GET", "/healthz")
    assert conn.getresponse().read() == b'{"status":"ok"}'
    conn.request("GET", "/readyz")
    r = conn.getresponse()
    assert r.status == 200 and json.loads(r.read())["ready"] is True
    post(conn, review())
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    values = {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples}
    assert values["sidecar_injector_injections_total"] == 1
    assert values["sidecar_injector_requests_total"] == 1


def peer_cert(server: Server) -> bytes:
    with socket.create_connection(("127.0.0.1", server.port)) as s:
        with server.context().wrap_socket(s, server_hostname="127.0.0.1") as tls:
            der = tls.getpeercert(binary_form=True)
            assert der is not None
            return ssl.DER_cert_to_PEM_cert(der).encode()


def test_reload_config_and_rotate_cert_under_load(server: Server) -> None:
    failures: list[str] = []
    templates_seen: set[str] = set()
    stop = threading.Event()
    count = 0

    def client(keepalive: bool) -> None:
        nonlocal count
        conn = server.connection()
        while not stop.is_set():
            try:
                if not keepalive:
                    conn = server.connection()
                status, out = post(conn, review())
                if status != 200 or out["response"]["allowed"] is not True:
                    failures.append(f"{status} {out}")
                text = patch_text(out)
                templates_seen.add("sidecar" if "proxyv2" in text else "envoy")
                count += 1
            except (OSError, http.client.HTTPException) as e:
                failures.append(repr(e))
            if not keepalive:
                conn.close()

    threads = [threading.Thread(target=client, args=(ka,)) for ka in (True, False)]
    for t in threads:
        t.start()
    try:
        time.sleep(0.5)
        before = peer_cert(server)
        (server.config_path / "config.yaml").write_text("policy: enabled\ndefaultTemplates: [sidecar]\n")
        new_cert = server.rotate()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and (peer_cert(server) != new_cert or "sidecar" not in templates_seen):
            time.sleep(0.1)
        time.sleep(0.3)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=10)
    assert not failures, failures[:3]
    assert count > 20
    assert before != new_cert
    assert peer_cert(server) == new_cert, "new connections do not get the new certificate"
    assert templates_seen == {"envoy", "sidecar"}, "the new config was not observed"
    conn = server.connection()
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    samples = [(s.name, s.labels, s.value) for f in text_string_to_metric_families(text) for s in f.samples]
    ok = {
        s[1]["what"]: s[2] for s in samples if s[0] == "sidecar_injector_reloads_total" and s[1]["result"] == "success"
    }
    assert ok.get("config", 0) >= 1 and ok.get("certificate", 0) >= 1


def test_broken_config_keeps_the_last_good_one(server: Server) -> None:
    (server.config_path / "config.yaml").write_text("policy: [unclosed\n")
    conn = server.connection()
    deadline = time.monotonic() + 10
    detail = ""
    while time.monotonic() < deadline:
        conn.request("GET", "/readyz")
        r = conn.getresponse()
        detail = json.loads(r.read())["detail"]
        if "last reload failed" in detail:
            assert r.status == 200
            break
        time.sleep(0.1)
    assert "config: last reload failed" in detail
    status, out = post(conn, review())
    assert status == 200 and out["response"]["allowed"] is True  # still injecting with the last good config
    assert "reload failed; keeping the last good one" in server.log_file.read_text()


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def test_two_workers_share_the_port_and_stop_together(tmp_path: Path) -> None:
    with serving(tmp_path, "--workers", "2") as srv:
        workers = _children(srv.process.pid)
        assert len(workers) == 2
        for i in range(20):  # new connections: the kernel spreads them over both processes
            conn = srv.connection()
            status, out = post(conn, review(uid=f"w-{i}"))
            assert status == 200 and out["response"]["uid"] == f"w-{i}" and out["response"]["allowed"]
            conn.close()
        srv.process.terminate()
        assert srv.process.wait(timeout=15) == 0
        assert all(
            not Path(f"/proc/{w}").exists() or "zombie" in Path(f"/proc/{w}/status").read_text() for w in workers
        )


def test_missing_certificate_at_start_means_not_ready_until_it_appears(tmp_path: Path) -> None:
    with serving(tmp_path, wait_ready=False) as srv:
        conn = srv.unverified_connection()
        conn.request("GET", "/readyz")
        r = conn.getresponse()
        detail = json.loads(r.read())["detail"]
        assert r.status == 503 and "no serving certificate loaded" in detail and "tls.crt" in detail
        assert "certificate not loadable yet; not ready until it is" in srv.log_file.read_text()
        new_cert = srv.rotate()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if peer_cert(srv) == new_cert:
                    break
            except ssl.SSLError:
                pass  # still the placeholder, which our CA does not sign
            time.sleep(0.1)
        assert peer_cert(srv) == new_cert
        c = srv.connection()
        c.request("GET", "/readyz")
        assert c.getresponse().status == 200
