"""Bootstrap of the standalone Envoy sidecar: transparent TCP passthrough with no control plane.

The standalone template runs Envoy with this dict as ``--config-yaml '<json>'`` (JSON is YAML), so the whole
proxy is defined here, statically:

- ``virtualOutbound`` (15001) and ``virtualInbound`` (15006) receive what netinit's REDIRECT rules capture.
  The ``original_dst`` listener filter restores the pre-NAT destination and a ``tcp_proxy`` forwards to an
  ``ORIGINAL_DST`` cluster, i.e. straight to where the application meant to go. The names are Istio's, so
  dashboards and ``istioctl``-trained habits (``cluster.PassthroughCluster.*``) carry over.
- 15021 answers ``/healthz/ready`` (Istio's readiness path, used by the injected readinessProbe) from the admin
  ``/ready`` endpoint; 15090 serves ``/stats/prometheus`` (Istio's scrape port). Both forward to the admin
  interface, which itself listens on loopback only so that nothing outside the pod can reach
  ``/quitquitquit`` and friends.

Pure: no I/O, no globals mutated; the result is a fresh plain dict, ``json.dumps``-able.

Envoy has no bootstrap field for the drain time: it is the ``--drain-time-s`` command-line option, so the
template sets it there and this function does not take it.
"""

from __future__ import annotations

from typing import Any

from injector.errors import TemplateError

_T = "type.googleapis.com/envoy."
ORIGINAL_DST_FILTER = _T + "extensions.filters.listener.original_dst.v3.OriginalDst"
TCP_PROXY = _T + "extensions.filters.network.tcp_proxy.v3.TcpProxy"
HTTP_CONNECTION_MANAGER = _T + "extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
ROUTER = _T + "extensions.filters.http.router.v3.Router"
STDOUT_ACCESS_LOG = _T + "extensions.access_loggers.stream.v3.StdoutAccessLog"

PASSTHROUGH = "PassthroughCluster"
INBOUND_PASSTHROUGH = "InboundPassthroughCluster"
BLACKHOLE = "BlackHoleCluster"
ADMIN = "admin"

# Istio's value for its passthrough clusters: long enough for a slow peer, short enough to fail visibly.
PASSTHROUGH_CONNECT_TIMEOUT = "10s"
ADMIN_CONNECT_TIMEOUT = "1s"
# Istio's circuit-breaker thresholds for every cluster it builds, the passthrough ones included: the maximum.
# Envoy's defaults (1024 connections per cluster) would have the sidecar close an app's 1025th concurrent
# connection (upstream_cx_overflow), a limit the app never asked for.
UNLIMITED = 4294967295
# What Envoy buffers per connection before it stops reading the other side (its default: 1 MiB, which Istio's
# sidecars keep). At 256 KiB a connection whose peer stops reading costs Envoy 3.6x less heap, for 2-15 % of one
# connection's bulk throughput at ~1 GiB/s (docs/benchmarks.md §8, bench.proxy_buffers; docs/compat.md I13);
# values global.envoy.perConnectionBufferLimitBytes.
BUFFER_LIMIT = 262144


def _circuit_breakers() -> dict[str, Any]:
    thresholds = ("max_connections", "max_pending_requests", "max_requests", "max_retries")
    return {"thresholds": [{**dict.fromkeys(thresholds, UNLIMITED), "track_remaining": True}]}


def bootstrap(
    *,
    outbound_port: int = 15001,
    inbound_port: int = 15006,
    admin_port: int = 15000,
    stats_port: int = 15090,
    health_port: int = 15021,
    inbound_source: str = "127.0.0.6",
    access_log: bool = True,
    buffer_limit: int | None = BUFFER_LIMIT,
    node_id: str = "sidecar",
    cluster: str = "sidecar",
) -> dict[str, Any]:
    """The complete Envoy v3 bootstrap for a standalone sidecar.

    ``inbound_source`` is the address inbound upstream connections are made from. It must be one netinit's
    ISTIO_OUTPUT chain lets through (127.0.0.6 by default): otherwise Envoy's connection to the application
    (uid 1337, over lo, to the pod IP) is captured again by ISTIO_IN_REDIRECT and loops until Envoy runs out of
    file descriptors.

    ``buffer_limit`` is ``per_connection_buffer_limit_bytes`` of the capture listeners and the passthrough
    clusters (None: Envoy's default, 1 MiB).
    """
    if buffer_limit is not None and (
        isinstance(buffer_limit, bool) or not isinstance(buffer_limit, int) or not 1024 <= buffer_limit <= UNLIMITED
    ):
        raise TemplateError(
            f"global.envoy.perConnectionBufferLimitBytes: expected bytes from 1024 to {UNLIMITED} (or null for "
            f"Envoy's default), got {buffer_limit!r}"
        )
    limit = {} if buffer_limit is None else {"per_connection_buffer_limit_bytes": buffer_limit}
    return {
        "node": {"id": node_id, "cluster": cluster},
        "admin": {"address": _addr("127.0.0.1", admin_port)},
        "static_resources": {
            "listeners": [
                {**_passthrough_listener("virtualOutbound", outbound_port, PASSTHROUGH, access_log), **limit},
                {**_passthrough_listener("virtualInbound", inbound_port, INBOUND_PASSTHROUGH, access_log), **limit},
                _admin_proxy_listener(
                    "health",
                    health_port,
                    {"path": "/healthz/ready"},
                    {"cluster": ADMIN, "prefix_rewrite": "/ready"},
                ),
                _admin_proxy_listener("prometheus", stats_port, {"path": "/stats/prometheus"}, {"cluster": ADMIN}),
            ],
            "clusters": [
                {**_original_dst_cluster(PASSTHROUGH), **limit},
                {
                    **_original_dst_cluster(INBOUND_PASSTHROUGH),
                    **limit,
                    "upstream_bind_config": {"source_address": {"address": inbound_source, "port_value": 0}},
                },
                # No endpoints: a connection routed here is closed at once (and counted as upstream_cx_none_healthy).
                {"name": BLACKHOLE, "type": "STATIC", "connect_timeout": ADMIN_CONNECT_TIMEOUT},
                {
                    "name": ADMIN,
                    "type": "STATIC",
                    "connect_timeout": ADMIN_CONNECT_TIMEOUT,
                    "load_assignment": {
                        "cluster_name": ADMIN,
                        "endpoints": [{"lb_endpoints": [{"endpoint": {"address": _addr("127.0.0.1", admin_port)}}]}],
                    },
                },
            ],
        },
    }


def _addr(ip: str, port: int) -> dict[str, Any]:
    return {"socket_address": {"address": ip, "port_value": port}}


def _tcp_proxy_chain(stat_prefix: str, cluster: str, access_log: bool) -> dict[str, Any]:
    config: dict[str, Any] = {"@type": TCP_PROXY, "stat_prefix": stat_prefix, "cluster": cluster}
    if access_log:
        config["access_log"] = [{"name": "envoy.access_loggers.stdout", "typed_config": {"@type": STDOUT_ACCESS_LOG}}]
    return {"filters": [{"name": "envoy.filters.network.tcp_proxy", "typed_config": config}]}


def _passthrough_listener(name: str, port: int, cluster: str, access_log: bool) -> dict[str, Any]:
    """A capture listener: restore the original destination, forward the bytes there unchanged.

    A connection whose original destination is the listener's own port (someone dialled 127.0.0.1:15001 or
    podIP:15006 directly) would otherwise be forwarded to the listener itself, again and again; as in Istio it
    is matched by a more specific filter chain and sent to the black hole instead.
    """
    return {
        "name": name,
        "address": _addr("0.0.0.0", port),
        "listener_filters": [
            {"name": "envoy.filters.listener.original_dst", "typed_config": {"@type": ORIGINAL_DST_FILTER}}
        ],
        "filter_chains": [
            {"filter_chain_match": {"destination_port": port}, **_tcp_proxy_chain(BLACKHOLE, BLACKHOLE, access_log)},
            _tcp_proxy_chain(name, cluster, access_log),
        ],
    }


def _original_dst_cluster(name: str) -> dict[str, Any]:
    """Upstream = the connection's restored destination; Envoy needs no endpoint list, only this policy."""
    return {
        "name": name,
        "type": "ORIGINAL_DST",
        "lb_policy": "CLUSTER_PROVIDED",
        "connect_timeout": PASSTHROUGH_CONNECT_TIMEOUT,
        "circuit_breakers": _circuit_breakers(),
    }


def _admin_proxy_listener(name: str, port: int, match: dict[str, str], route: dict[str, str]) -> dict[str, Any]:
    """Expose one admin path on a pod-reachable port; everything else there is a 404, not the admin API."""
    hcm = {
        "@type": HTTP_CONNECTION_MANAGER,
        "stat_prefix": name,
        "route_config": {
            "name": name,
            "virtual_hosts": [{"name": name, "domains": ["*"], "routes": [{"match": match, "route": route}]}],
        },
        "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER}}],
    }
    return {
        "name": name,
        "address": _addr("0.0.0.0", port),
        "filter_chains": [
            {"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]}
        ],
    }
