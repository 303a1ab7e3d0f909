"""The standalone Envoy bootstrap: its shape, and the real Envoy binary's verdict on it (``--mode validate``)."""

from __future__ import annotations

import json
import subprocess
from typing import Any

import pytest

from injector.core.envoy_bootstrap import BUFFER_LIMIT, bootstrap
from injector.errors import TemplateError
from lab.shell import envoy_binary


def _listeners(cfg: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {lst["name"]: lst for lst in cfg["static_resources"]["listeners"]}


def _clusters(cfg: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in cfg["static_resources"]["clusters"]}


def _port(lst: dict[str, Any]) -> int:
    return int(lst["address"]["socket_address"]["port_value"])


def _tcp_proxies(lst: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        f["typed_config"]
        for chain in lst["filter_chains"]
        for f in chain["filters"]
        if f["name"] == "envoy.filters.network.tcp_proxy"
    ]


def _hcm_routes(lst: dict[str, Any]) -> list[dict[str, Any]]:
    (chain,) = lst["filter_chains"]
    (hcm,) = chain["filters"]
    assert hcm["name"] == "envoy.filters.network.http_connection_manager"
    return [r for vh in hcm["typed_config"]["route_config"]["virtual_hosts"] for r in vh["routes"]]


def validate(cfg: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [envoy_binary(), "--mode", "validate", "--disable-hot-restart", "--config-yaml", json.dumps(cfg)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_default_ports() -> None:
    ls = _listeners(bootstrap())
    assert {name: _port(lst) for name, lst in ls.items()} == {
        "virtualOutbound": 15001,
        "virtualInbound": 15006,
        "health": 15021,
        "prometheus": 15090,
    }
    assert all(lst["address"]["socket_address"]["address"] == "0.0.0.0" for lst in ls.values())


def test_capture_listeners_restore_the_original_destination_and_pass_through() -> None:
    ls = _listeners(bootstrap())
    for name, cluster in (("virtualOutbound", "PassthroughCluster"), ("virtualInbound", "InboundPassthroughCluster")):
        (lf,) = ls[name]["listener_filters"]
        assert lf["name"] == "envoy.filters.listener.original_dst"
        assert lf["typed_config"]["@type"].endswith("listener.original_dst.v3.OriginalDst")
        assert cluster in [p["cluster"] for p in _tcp_proxies(ls[name])]


def test_a_connection_to_the_capture_port_itself_goes_to_the_black_hole() -> None:
    ls = _listeners(bootstrap(outbound_port=16001, inbound_port=16006))
    for name, port in (("virtualOutbound", 16001), ("virtualInbound", 16006)):
        guarded = [c for c in ls[name]["filter_chains"] if c.get("filter_chain_match") == {"destination_port": port}]
        assert [f["typed_config"]["cluster"] for c in guarded for f in c["filters"]] == ["BlackHoleCluster"]


def test_passthrough_clusters_are_original_dst() -> None:
    cs = _clusters(bootstrap())
    for name in ("PassthroughCluster", "InboundPassthroughCluster"):
        assert cs[name]["type"] == "ORIGINAL_DST"
        assert cs[name]["lb_policy"] == "CLUSTER_PROVIDED"
        assert cs[name]["connect_timeout"]
    assert "upstream_bind_config" not in cs["PassthroughCluster"]  # outbound keeps the pod IP as source


def test_inbound_upstream_is_bound_to_the_passthrough_source() -> None:
    bind = _clusters(bootstrap())["InboundPassthroughCluster"]["upstream_bind_config"]["source_address"]
    assert bind == {"address": "127.0.0.6", "port_value": 0}
    custom = _clusters(bootstrap(inbound_source="127.0.0.7"))["InboundPassthroughCluster"]
    assert custom["upstream_bind_config"]["source_address"]["address"] == "127.0.0.7"


def test_admin_listens_on_loopback_only() -> None:
    cfg = bootstrap(admin_port=19000)
    assert cfg["admin"]["address"]["socket_address"] == {"address": "127.0.0.1", "port_value": 19000}
    admin = _clusters(cfg)["admin"]
    assert admin["type"] == "STATIC"
    (ep,) = admin["load_assignment"]["endpoints"][0]["lb_endpoints"]
    assert ep["endpoint"]["address"]["socket_address"] == {"address": "127.0.0.1", "port_value": 19000}


def test_health_and_prometheus_expose_only_their_admin_path() -> None:
    ls = _listeners(bootstrap())
    assert _hcm_routes(ls["health"]) == [
        {"match": {"path": "/healthz/ready"}, "route": {"cluster": "admin", "prefix_rewrite": "/ready"}}
    ]
    assert _hcm_routes(ls["prometheus"]) == [{"match": {"path": "/stats/prometheus"}, "route": {"cluster": "admin"}}]


def test_custom_ports_are_honoured() -> None:
    cfg = bootstrap(outbound_port=1, inbound_port=2, admin_port=3, stats_port=4, health_port=5)
    ports = {name: _port(lst) for name, lst in _listeners(cfg).items()}
    assert ports == {"virtualOutbound": 1, "virtualInbound": 2, "health": 5, "prometheus": 4}
    assert cfg["admin"]["address"]["socket_address"]["port_value"] == 3


def test_node_identity() -> None:
    assert bootstrap(node_id="pod.ns", cluster="app.ns")["node"] == {"id": "pod.ns", "cluster": "app.ns"}


@pytest.mark.parametrize("enabled", [True, False])
def test_access_log_to_stdout_on_both_capture_listeners(enabled: bool) -> None:
    ls = _listeners(bootstrap(access_log=enabled))
    for name in ("virtualOutbound", "virtualInbound"):
        logs = [log for p in _tcp_proxies(ls[name]) for log in p.get("access_log", [])]
        if enabled:
            assert logs and all(log["name"] == "envoy.access_loggers.stdout" for log in logs)
        else:
            assert logs == []


def test_json_round_trip_and_fresh_dicts() -> None:
    a, b = bootstrap(), bootstrap()
    assert json.loads(json.dumps(a)) == a
    a["static_resources"]["clusters"].clear()
    assert b["static_resources"]["clusters"]  # no shared state between calls


def test_passthrough_clusters_have_istios_unlimited_circuit_breakers() -> None:
    cs = _clusters(bootstrap())
    for name in ("PassthroughCluster", "InboundPassthroughCluster"):
        (thresholds,) = cs[name]["circuit_breakers"]["thresholds"]
        assert thresholds["max_connections"] == thresholds["max_requests"] == 4294967295, thresholds


CAPTURE = ("virtualOutbound", "virtualInbound", "PassthroughCluster", "InboundPassthroughCluster")


@pytest.mark.parametrize(("limit", "expected"), [(BUFFER_LIMIT, 262144), (65536, 65536), (None, None)])
def test_the_buffer_limit_is_on_the_capture_path_only(limit: int | None, expected: int | None) -> None:
    """docs/compat.md I13: 256 KiB by default (Istio's sidecars keep Envoy's 1 MiB); None is Envoy's default."""
    cfg = bootstrap(buffer_limit=limit)
    objects = {**_listeners(cfg), **_clusters(cfg)}
    for name, obj in objects.items():
        want = expected if name in CAPTURE else None
        assert obj.get("per_connection_buffer_limit_bytes") == want, name


@pytest.mark.parametrize("bad", [0, 1023, 2**32, "256k", True, 262144.0])
def test_a_bad_buffer_limit_is_refused_naming_the_value(bad: Any) -> None:
    with pytest.raises(TemplateError, match=r"global\.envoy\.perConnectionBufferLimitBytes"):
        bootstrap(buffer_limit=bad)


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"access_log": False},
        {"buffer_limit": None},
        {"outbound_port": 16001, "inbound_port": 16006, "admin_port": 19000},
    ],
)
def test_real_envoy_accepts_the_bootstrap(kwargs: dict[str, Any]) -> None:
    res = validate(bootstrap(**kwargs))
    assert res.returncode == 0, res.stdout + res.stderr
    assert "OK" in res.stdout + res.stderr


def test_real_envoy_rejects_a_broken_bootstrap() -> None:
    cfg = bootstrap()
    cfg["static_resources"]["clusters"][0]["lb_policy"] = "NO_SUCH_POLICY"
    res = validate(cfg)
    assert res.returncode != 0
    assert "NO_SUCH_POLICY" in res.stdout + res.stderr
