"""`sidecar-injector proxy-config` against a real Envoy running the bootstrap the `envoy` template injects.

The proxy's command line is taken from a pod injected by `kube-inject`; only its ports are moved to free ones
on 127.0.0.1 (this runs without a network namespace). A POD target goes through kubectl: the real kubectl,
against the in-test API server, for the "pod without a proxy" and "no such pod" answers (kubectl port-forward
itself needs a real API server, which cannot run here).
"""

from __future__ import annotations

import functools
import http.server
import json
import re
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from injector.__main__ import main
from lab.shell import console_script, envoy_binary, free_port, stop_process
from tests.support.kube_server import FakeKube, running

POD = "apiVersion: v1\nkind: Pod\nmetadata: {name: web}\nspec:\n  containers: [{name: web, image: web:1}]\n"


def _injected_bootstrap() -> dict[str, Any]:
    out = subprocess.run([*console_script("sidecar-injector"), "kube-inject", "-f", "-"], input=POD,
                         capture_output=True, text=True, check=True, timeout=60).stdout  # fmt: skip
    pod = yaml.safe_load(out)
    proxy = next(c for c in pod["spec"]["containers"] if c["name"] == "istio-proxy")
    argv = [*(proxy.get("command") or []), *proxy["args"]]
    cfg: dict[str, Any] = json.loads(argv[argv.index("--config-yaml") + 1])
    return cfg


def _move_ports(cfg: dict[str, Any]) -> dict[str, int]:
    """Every listening port (and the admin) to a free one on 127.0.0.1; old -> new."""
    moved: dict[int, int] = {}

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                if k == "port_value" and isinstance(v, int) and v >= 15000:
                    node[k] = moved.setdefault(v, free_port())
                elif k == "destination_port" and isinstance(v, int):
                    node[k] = moved.setdefault(v, free_port())
                else:
                    walk(v)
        elif isinstance(node, list):
            for x in node:
                walk(x)

    walk(cfg)
    return {str(k): v for k, v in moved.items()}


@functools.cache
def _secrets() -> tuple[tuple[dict[str, Any], ...], dict[str, bytes]]:
    """Static secrets for the test's Envoy, shaped as Istio's proxyv2 holds them: ``default`` (a serving chain),
    ``ROOTCA`` (a trusted CA), and ``old`` (a CA that expired last month); with each one's certificate."""
    from injector.certs import crypto

    ca = crypto.make_ca("test-root")
    leaf = crypto.make_serving_cert(ca, "web", "shop")
    old = crypto.make_ca("expired", days=1, now=datetime.now(UTC) - timedelta(days=30))

    def chain(pair: crypto.KeyPair, extra: bytes = b"") -> dict[str, Any]:
        return {"certificate_chain": {"inline_string": (pair.cert_pem + extra).decode()},
                "private_key": {"inline_string": pair.key_pem.decode()}}  # fmt: skip

    secrets = (
        {"name": "default", "tls_certificate": chain(leaf, ca.cert_pem)},
        {"name": "ROOTCA", "validation_context": {"trusted_ca": {"inline_string": ca.cert_pem.decode()}}},
        {"name": "old", "tls_certificate": chain(old)},
    )
    return secrets, {"default": leaf.cert_pem, "ROOTCA": ca.cert_pem, "old": old.cert_pem}


@pytest.fixture(scope="module")
def envoy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, int]]]:
    cfg = _injected_bootstrap()
    ports = _move_ports(cfg)
    cfg["static_resources"]["secrets"] = list(_secrets()[0])
    path = tmp_path_factory.mktemp("envoy") / "bootstrap.json"
    path.write_text(json.dumps(cfg))
    proc = subprocess.Popen([envoy_binary(), "--disable-hot-restart", "--config-path", str(path), "-l", "error"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    admin = f"http://127.0.0.1:{ports['15000']}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(admin + "/ready", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, "Envoy did not start"
            time.sleep(0.05)
        yield admin, ports
    finally:
        stop_process(proc)


def pc(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    rc = main(["proxy-config", *args])
    out = capsys.readouterr()
    return rc, out.out, out.err


def rows(text: str) -> list[list[str]]:
    return [line.split() for line in text.strip().splitlines()]


def test_clusters(envoy: tuple[str, dict[str, int]], capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = pc(capsys, "clusters", "--admin", envoy[0])
    assert rc == 0
    lines = rows(out)
    assert lines[0] == ["NAME", "SERVICE", "FQDN", "PORT", "SUBSET", "DIRECTION", "TYPE", "DESTINATION", "RULE"]
    types = {r[0]: r[-1] for r in lines[1:]}
    assert types["PassthroughCluster"] == "ORIGINAL_DST"
    assert types["InboundPassthroughCluster"] == "ORIGINAL_DST"
    assert types["BlackHoleCluster"] == "STATIC"


def test_listeners_show_capture_ports_and_destinations(
    envoy: tuple[str, dict[str, int]], capsys: pytest.CaptureFixture[str]
) -> None:
    admin, ports = envoy
    rc, out, _ = pc(capsys, "listeners", "--admin", admin)
    assert rc == 0
    text = out.splitlines()
    outbound = [line for line in text if line.startswith("virtualOutbound")]
    assert any(f"port {ports['15001']}" in line and "Cluster: BlackHoleCluster" in line for line in outbound)
    assert any(" ALL " in line and "Cluster: PassthroughCluster" in line for line in outbound)
    inbound = [line for line in text if line.startswith("virtualInbound")]
    assert any("Cluster: InboundPassthroughCluster" in line for line in inbound)
    rc, out, _ = pc(capsys, "listeners", "--admin", admin, "--port", str(ports["15006"]))
    assert {r[0] for r in rows(out)[1:]} == {"virtualInbound"}


def test_routes_and_endpoints(envoy: tuple[str, dict[str, int]], capsys: pytest.CaptureFixture[str]) -> None:
    admin, ports = envoy
    rc, out, _ = pc(capsys, "routes", "--admin", admin)
    assert rc == 0 and any(r[:2] == ["health", "health"] and "/healthz/ready" in r for r in rows(out))
    rc, out, _ = pc(capsys, "endpoints", "--admin", admin, "--name", "admin")
    assert rc == 0
    assert rows(out)[1] == [f"127.0.0.1:{ports['15000']}", "HEALTHY", "OK", "admin"]


def test_json_is_envoys_own_config(envoy: tuple[str, dict[str, int]], capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = pc(capsys, "clusters", "--admin", envoy[0], "-o", "json")
    assert rc == 0
    assert {c["name"] for c in json.loads(out)} >= {"PassthroughCluster", "BlackHoleCluster"}
    rc, out, _ = pc(capsys, "bootstrap", "--admin", envoy[0], "-o", "yaml")
    assert rc == 0 and "static_resources" in yaml.safe_load(out)
    rc, out, _ = pc(capsys, "all", "--admin", envoy[0], "-o", "json")
    assert rc == 0 and "configs" in json.loads(out)


def test_unreachable_admin_is_exit_1(capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = pc(capsys, "clusters", "--admin", f"http://127.0.0.1:{free_port()}", "--timeout", "2")
    assert rc == 1 and "cannot reach the Envoy admin API" in err


@pytest.mark.parametrize(("body", "says"), [(b"<html>hi</html>", "did not answer JSON"),
                                            (b'{"hello": 1}', "not an Envoy config dump")])  # fmt: skip
def test_a_non_envoy_answer_is_exit_1(capsys: pytest.CaptureFixture[str], body: bytes, says: str) -> None:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_a: Any) -> None:
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        rc, _, err = pc(capsys, "listeners", "--admin", f"http://127.0.0.1:{srv.server_address[1]}")
    finally:
        srv.shutdown()
    assert rc == 1 and says in err


@pytest.fixture
def kube(tmp_path: Path) -> Iterator[tuple[FakeKube, Path]]:
    with running() as fake:
        conf = tmp_path / "kubeconfig"
        conf.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "fake",
            "clusters": [{"name": "fake", "cluster": {"server": fake.url}}],
            "users": [{"name": "u", "user": {"token": "t"}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "u"}}],
        }))  # fmt: skip
        yield fake, conf


def test_a_pod_without_a_proxy_is_exit_1(kube: tuple[FakeKube, Path], capsys: pytest.CaptureFixture[str]) -> None:
    fake, conf = kube
    fake.add_pod("shop", {"metadata": {"name": "plain"}, "spec": {"containers": [{"name": "app", "image": "a"}]}})
    rc, _, err = pc(capsys, "clusters", "plain.shop", "--kubeconfig", str(conf))
    assert rc == 1 and "pod shop/plain has no istio-proxy container: it is not injected" in err
    rc, _, err = pc(capsys, "clusters", "ghost", "-n", "shop", "--kubeconfig", str(conf))
    assert rc == 1 and "kubectl get pod shop/ghost" in err and "NotFound" in err


def test_target_or_admin_exactly_one(capsys: pytest.CaptureFixture[str]) -> None:
    assert pc(capsys, "clusters")[0] == 2
    assert pc(capsys, "clusters", "web", "--admin", "http://127.0.0.1:1")[0] == 2


def test_istio_dynamic_config_reads_into_istioctl_columns() -> None:
    """Istio's proxyv2 holds xDS resources (dynamic_*); cluster names carry direction|port|subset|fqdn."""
    from injector.proxy import tables

    dr = "/apis/networking.istio.io/v1/namespaces/shop/destination-rule/reviews"
    dump = {"configs": [
        {"@type": "type.googleapis.com/envoy.admin.v3.ClustersConfigDump", "dynamic_active_clusters": [
            {"cluster": {"name": "outbound|9080|v1|reviews.shop.svc.cluster.local", "type": "EDS",
                         "metadata": {"filter_metadata": {"istio": {"config": dr}}}}},
            {"cluster": {"name": "inbound|8080||", "type": "ORIGINAL_DST"}}]},
        {"@type": "type.googleapis.com/envoy.admin.v3.ListenersConfigDump", "dynamic_listeners": [
            {"name": "0.0.0.0_9080", "active_state": {"listener": {
                "name": "0.0.0.0_9080", "address": {"socket_address": {"address": "0.0.0.0", "port_value": 9080}},
                "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager",
                                                "typed_config": {"rds": {"route_config_name": "9080"}}}]}]}}}]},
        {"@type": "type.googleapis.com/envoy.admin.v3.RoutesConfigDump", "dynamic_route_configs": [
            {"route_config": {"name": "9080", "virtual_hosts": [
                {"name": "reviews.shop.svc.cluster.local:9080", "domains": ["reviews.shop.svc.cluster.local"],
                 "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "x"}}]}]}}]},
    ]}  # fmt: skip
    table = tables.cluster_table(dump, direction="outbound")
    assert table.rows == [("outbound|9080|v1|reviews.shop.svc.cluster.local", "reviews.shop.svc.cluster.local",
                           "9080", "v1", "outbound", "EDS", "reviews.shop")]  # fmt: skip
    assert [r[4] for r in tables.cluster_table(dump).rows] == ["outbound", "inbound"]
    assert tables.listener_table(dump).rows == [("0.0.0.0_9080", "0.0.0.0", "9080", "ALL", "Route: 9080")]
    assert tables.route_table(dump).rows[0][3] == "/*"


# --- proxy-config log -------------------------------------------------------------------------------------------


def loggers(admin: str) -> dict[str, str]:
    """The proxy's levels now, read straight from its admin API (not through the command under test)."""
    from injector.proxy import levels

    req = urllib.request.Request(admin + "/logging", method="POST")
    with urllib.request.urlopen(req, timeout=5) as resp:
        return levels.parse_loggers(resp.read().decode())


def test_log_lists_every_logger_of_the_proxy_with_its_level(
    envoy: tuple[str, dict[str, int]], capsys: pytest.CaptureFixture[str]
) -> None:
    rc, out, _ = pc(capsys, "log", "--admin", envoy[0])
    assert rc == 0 and out.startswith("active loggers:")
    shown = dict(line.strip().split(": ") for line in out.splitlines()[1:] if line.strip())
    assert shown == loggers(envoy[0]) and len(shown) > 50
    assert {shown["admin"], shown["upstream"], shown["router"]} == {"error"}  # started with -l error


def test_log_sets_every_logger_then_named_ones_and_resets_to_the_proxys_own_levels(
    envoy: tuple[str, dict[str, int]], capsys: pytest.CaptureFixture[str]
) -> None:
    admin = envoy[0]
    try:
        rc, out, _ = pc(capsys, "log", "--admin", admin, "--level", "debug")
        assert rc == 0 and set(loggers(admin).values()) == {"debug"} and "  admin: debug" in out
        rc, out, _ = pc(capsys, "log", "--admin", admin, "--level", "upstream:trace,router=info,warn")
        now = loggers(admin)
        assert rc == 0 and (now["upstream"], now["router"], now["admin"]) == ("trace", "info", "warning"), out
        assert set(now.values()) == {"trace", "info", "warning"}
    finally:
        rc, out, _ = pc(capsys, "log", "--admin", admin, "-r")
    assert rc == 0 and set(loggers(admin).values()) == {"error"}, out  # what the fixture's Envoy was started with


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--level", "loud"], "unrecognized logging level: loud"),
        (["--level", "upstream:debug,nosuch:debug"], "unrecognized logger name: nosuch"),
        (["--level", "upstream"], "unrecognized logging level: upstream"),
        (["--level", "debug", "--reset"], "cannot be combined"),
        (["-o", "json"], "nor -o"),
    ],
)
def test_a_bad_log_level_is_exit_2_and_changes_nothing(
    envoy: tuple[str, dict[str, int]], capsys: pytest.CaptureFixture[str], args: list[str], says: str
) -> None:
    before = loggers(envoy[0])
    rc, _, err = pc(capsys, "log", "--admin", envoy[0], *args)
    assert rc == 2 and says in err, err
    assert loggers(envoy[0]) == before


def test_level_and_reset_belong_to_log(capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = pc(capsys, "clusters", "--admin", "http://127.0.0.1:1", "--level", "debug")
    assert rc == 2 and "are for proxy-config log" in err


def test_log_against_something_that_is_not_envoy_is_exit_1(capsys: pytest.CaptureFixture[str]) -> None:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"<html>hi</html>")

        def log_message(self, *_a: Any) -> None:
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        rc, _, err = pc(capsys, "log", "--admin", f"http://127.0.0.1:{srv.server_address[1]}", "--level", "debug")
    finally:
        srv.shutdown()
    assert rc == 1 and "not Envoy's /logging answer" in err


def test_the_level_spec_is_istioctls() -> None:
    from injector.proxy import levels

    known = {"http", "router", "upstream"}
    assert levels.parse_spec("debug", known) == ("debug", {})
    assert levels.parse_spec("level:info,http=trace", known) == ("info", {"http": "trace"})
    assert levels.parse_spec("envoy::router:WARN, upstream:off", known) == (
        None,
        {"router": "warning", "upstream": "off"},
    )
    for bad, says in [("", "names no level"), ("envoy::http", "expected LOGGER:LEVEL"), ("http:loud", "loud")]:
        with pytest.raises(levels.LevelError, match=says):
            levels.parse_spec(bad, known)


# --- proxy-config secret ----------------------------------------------------------------------------------------


def columns(text: str) -> list[list[str]]:
    """Table rows split on the padding (two or more spaces): values such as "Cert Chain" hold one."""
    return [re.split(r"\s{2,}", line.strip()) for line in text.strip().splitlines()]


def test_secrets_show_istioctls_columns_read_from_the_certificates(
    envoy: tuple[str, dict[str, int]], capsys: pytest.CaptureFixture[str]
) -> None:
    from injector.certs import crypto

    pems = _secrets()[1]
    rc, out, _ = pc(capsys, "secret", "--admin", envoy[0])
    assert rc == 0
    header, *body = columns(out)
    assert header == ["RESOURCE NAME", "TYPE", "STATUS", "VALID CERT", "SERIAL NUMBER", "NOT AFTER", "NOT BEFORE"]

    def expected(name: str, kind: str, valid: str) -> list[str]:
        pem = pems[name]
        when = [crypto.not_after(pem), crypto.not_before(pem)]
        return [name, kind, "ACTIVE", valid, crypto.serial_hex(pem), *(w.strftime("%Y-%m-%dT%H:%M:%SZ") for w in when)]

    want = [expected("default", "Cert Chain", "true"), expected("ROOTCA", "CA", "true"), expected("old", "CA", "false")]
    assert sorted(body) == sorted(want)  # in Envoy's order, which is not the bootstrap's
    rc, out, _ = pc(capsys, "secret", "--admin", envoy[0], "-o", "json")
    assert rc == 0 and {s["name"] for s in json.loads(out)["static_secrets"]} == set(pems)
    assert "BEGIN PRIVATE KEY" not in out  # Envoy redacts the keys; nothing of ours prints them


def test_istio_sds_secrets_read_into_istioctls_columns() -> None:
    """Istio's proxyv2 gets its secrets over SDS (dynamic_active/warming_secrets, certificates as base64
    inline_bytes); a warming one without a certificate yet is listed with empty columns, as istioctl lists it."""
    import base64

    from injector.certs import crypto
    from injector.proxy import tables

    pem = _secrets()[1]["default"]
    dump = {"configs": [{
        "@type": "type.googleapis.com/envoy.admin.v3.SecretsConfigDump",
        "dynamic_active_secrets": [{"name": "default", "secret": {"name": "default", "tls_certificate": {
            "certificate_chain": {"inline_bytes": base64.b64encode(pem).decode()},
            "private_key": {"inline_bytes": "W3JlZGFjdGVkXQ=="}}}}],
        "dynamic_warming_secrets": [{"name": "file-root:/etc/certs/root-cert.pem", "secret": {}}],
    }]}  # fmt: skip
    table = tables.secret_table(dump, datetime.now(UTC))
    assert [r[:5] for r in table.rows] == [
        ("default", "Cert Chain", "ACTIVE", "true", crypto.serial_hex(pem)),
        ("file-root:/etc/certs/root-cert.pem", "", "WARMING", "false", ""),
    ]
    later = datetime.now(UTC) + timedelta(days=400)  # past the serving certificate's 365 days
    assert tables.secret_table(dump, later).rows[0][3] == "false"
