"""Envoy's admin ``/config_dump`` and ``/clusters`` read into ``istioctl proxy-config`` tables. Pure.

Works for any Envoy: the standalone ``envoy`` template's static bootstrap and Istio's proxyv2 with xDS (dynamic
listeners, clusters and routes). Istio's cluster names (``outbound|9080|v1|reviews.default.svc.cluster.local``)
are split into their columns; other names (``PassthroughCluster``) show ``-`` there, as istioctl shows them.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any, NamedTuple

Obj = Mapping[str, Any]
TCP_PROXY = "envoy.filters.network.tcp_proxy"
HCM = "envoy.filters.network.http_connection_manager"


class Table(NamedTuple):
    headers: tuple[str, ...]
    rows: Sequence[tuple[str, ...]]

    def render(self) -> str:
        """Columns padded like istioctl's (tabwriter, two spaces), one line per row."""
        widths = [max([len(h), *(len(r[i]) for r in self.rows)]) for i, h in enumerate(self.headers)]
        lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
                 for row in [self.headers, *self.rows]]  # fmt: skip
        return "\n".join(lines) + "\n"


def section(dump: Obj, kind: str) -> Obj:
    """One ``configs`` entry of a config dump by its type (``Listeners``, ``Clusters``, ``Routes``,
    ``Bootstrap``); empty when absent. ValueError when ``dump`` is not a config dump at all."""
    configs = dump.get("configs") if isinstance(dump, Mapping) else None
    if not isinstance(configs, list):
        raise ValueError("not an Envoy config dump (no 'configs' list)")
    wanted = f"type.googleapis.com/envoy.admin.v3.{kind}ConfigDump"
    return next((c for c in configs if isinstance(c, Mapping) and c.get("@type") == wanted), {})


def _unwrap(items: Sequence[Obj], *path: str) -> Iterator[Obj]:
    for item in items:
        node: Any = item
        for key in path:
            node = node.get(key) if isinstance(node, Mapping) else None
        if isinstance(node, Mapping):
            yield node


def listeners_of(dump: Obj) -> list[Obj]:
    s = section(dump, "Listeners")
    return [*_unwrap(s.get("static_listeners") or [], "listener"),
            *_unwrap(s.get("dynamic_listeners") or [], "active_state", "listener")]  # fmt: skip


def clusters_of(dump: Obj) -> list[Obj]:
    s = section(dump, "Clusters")
    return [*_unwrap(s.get("static_clusters") or [], "cluster"),
            *_unwrap(s.get("dynamic_active_clusters") or [], "cluster")]  # fmt: skip


def routes_of(dump: Obj) -> list[Obj]:
    s = section(dump, "Routes")
    return [*_unwrap(s.get("static_route_configs") or [], "route_config"),
            *_unwrap(s.get("dynamic_route_configs") or [], "route_config")]  # fmt: skip


class ClusterName(NamedTuple):
    fqdn: str
    port: str
    subset: str
    direction: str


def split_cluster_name(name: str) -> ClusterName:
    """Istio's ``direction|port|subset|fqdn``; anything else is its own FQDN with no port/subset/direction."""
    parts = name.split("|")
    if len(parts) == 4 and parts[0] in ("inbound", "outbound") and parts[1].isdigit():
        return ClusterName(parts[3], parts[1], parts[2] or "-", parts[0])
    return ClusterName(name, "-", "-", "-")


def cluster_table(
    dump: Obj, *, fqdn: str | None = None, port: int | None = None, direction: str | None = None
) -> Table:
    rows: list[tuple[str, ...]] = []
    for c in clusters_of(dump):
        name = str(c.get("name", ""))
        n = split_cluster_name(name)
        if (fqdn and fqdn not in n.fqdn) or (port is not None and n.port != str(port)):
            continue
        if direction and n.direction != direction:
            continue
        kind = str(c.get("type") or (f"custom ({c['cluster_type'].get('name', '?')})" if c.get("cluster_type")
                                     else "STATIC"))  # fmt: skip
        rule = ((c.get("metadata") or {}).get("filter_metadata") or {}).get("istio", {}).get("config", "")
        rows.append((name, n.fqdn, n.port, n.subset, n.direction, kind, _config_name(str(rule))))
    return Table(("NAME", "SERVICE FQDN", "PORT", "SUBSET", "DIRECTION", "TYPE", "DESTINATION RULE"), rows)


def _config_name(path: str) -> str:
    """``/apis/networking.istio.io/v1/namespaces/default/destination-rule/reviews`` -> ``reviews.default``."""
    parts = path.strip("/").split("/")
    return f"{parts[-1]}.{parts[-3]}" if len(parts) >= 5 and parts[-4] == "namespaces" else (path or "")


def _address(addr: Obj) -> tuple[str, str]:
    sock = addr.get("socket_address") or {}
    if sock:
        return str(sock.get("address", "")), str(sock.get("port_value", ""))
    pipe = addr.get("pipe") or {}
    return str(pipe.get("path", "")), "-"


def _match(chain: Obj) -> str:
    m = chain.get("filter_chain_match") or {}
    parts = []
    if m.get("destination_port"):
        parts.append(f"port {m['destination_port']}")
    for key, label in (("prefix_ranges", "addr"), ("source_prefix_ranges", "src")):
        for r in m.get(key) or []:
            parts.append(f"{label} {r.get('address_prefix')}/{r.get('prefix_len', 32)}")
    if m.get("transport_protocol"):
        parts.append(f"trans: {m['transport_protocol']}")
    if m.get("application_protocols"):
        parts.append(f"app: {','.join(m['application_protocols'])}")
    if m.get("server_names"):
        parts.append(f"SNI: {','.join(m['server_names'])}")
    return "; ".join(parts) or "ALL"


def _destination(chain: Obj) -> str:
    for f in chain.get("filters") or []:
        cfg = f.get("typed_config") or {}
        if f.get("name") == TCP_PROXY or cfg.get("@type", "").endswith("TcpProxy"):
            weighted = (cfg.get("weighted_clusters") or {}).get("clusters") or []
            return "Cluster: " + (str(cfg.get("cluster")) if cfg.get("cluster") else
                                  ",".join(str(w.get("name")) for w in weighted))  # fmt: skip
        if f.get("name") == HCM or cfg.get("@type", "").endswith("HttpConnectionManager"):
            if cfg.get("rds"):
                return f"Route: {cfg['rds'].get('route_config_name', '')}"
            return f"Inline Route: {(cfg.get('route_config') or {}).get('name', '')}"
    return "Non-TCP/HTTP"


def listener_table(dump: Obj, *, port: int | None = None, address: str | None = None) -> Table:
    rows: list[tuple[str, ...]] = []
    for lst in listeners_of(dump):
        addr, lport = _address(lst.get("address") or {})
        extra = [_address(a.get("address") or {})[0] for a in lst.get("additional_addresses") or []]
        addresses = ",".join([addr, *extra])
        if (port is not None and lport != str(port)) or (address and address not in addresses):
            continue
        chains = [*(lst.get("filter_chains") or []), *([lst["default_filter_chain"]]
                                                         if lst.get("default_filter_chain") else [])]  # fmt: skip
        for chain in chains or [{}]:
            rows.append((str(lst.get("name", "")), addresses, lport, _match(chain), _destination(chain)))
    return Table(("NAME", "ADDRESSES", "PORT", "MATCH", "DESTINATION"), rows)


def _route_match(route: Obj) -> str:
    m = route.get("match") or {}
    for key in ("path", "prefix", "path_separated_prefix"):
        if key in m:
            return f"{m[key]}*" if key != "path" else str(m[key])
    if "safe_regex" in m:
        return f"regex {m['safe_regex'].get('regex', '')}"
    return "/*"


def route_table(dump: Obj, *, name: str | None = None) -> Table:
    rows: list[tuple[str, ...]] = []
    for rc in routes_of(dump):
        rc_name = str(rc.get("name", ""))
        if name and rc_name != name:
            continue
        for vh in rc.get("virtual_hosts") or []:
            domains = ",".join(vh.get("domains") or [])
            for route in vh.get("routes") or []:
                vs = ((route.get("metadata") or {}).get("filter_metadata") or {}).get("istio", {}).get("config", "")
                rows.append((rc_name, str(vh.get("name", "")), domains, _route_match(route), _config_name(str(vs))))
    return Table(("NAME", "VHOST NAME", "DOMAINS", "MATCH", "VIRTUAL SERVICE"), rows)


def endpoint_table(clusters: Obj, *, cluster: str | None = None, port: int | None = None) -> Table:
    """From ``/clusters?format=json``: one row per host of each cluster."""
    rows: list[tuple[str, ...]] = []
    for c in clusters.get("cluster_statuses") or []:
        name = str(c.get("name", ""))
        if cluster and cluster not in name:
            continue
        for h in c.get("host_statuses") or []:
            host, hport = _address(h.get("address") or {})
            if port is not None and hport != str(port):
                continue
            health = h.get("health_status") or {}
            status = str(health.get("eds_health_status") or "HEALTHY")
            outlier = "FAILED" if health.get("failed_outlier_check") else "OK"
            rows.append((f"{host}:{hport}" if hport != "-" else host, status, outlier, name))
    return Table(("ENDPOINT", "STATUS", "OUTLIER CHECK", "CLUSTER"), rows)


SECRET_COLUMNS = ("RESOURCE NAME", "TYPE", "STATUS", "VALID CERT", "SERIAL NUMBER", "NOT AFTER", "NOT BEFORE")


def secrets_of(dump: Obj) -> list[tuple[str, str, Obj]]:
    """(name, state, secret) of every secret the proxy holds: static ones (a bootstrap's) and SDS's active and
    warming ones (Istio's proxyv2: ``default`` and ``ROOTCA`` from its agent)."""
    sec = section(dump, "Secrets")
    out: list[tuple[str, str, Obj]] = []
    for key, state in (("static_secrets", "ACTIVE"), ("dynamic_active_secrets", "ACTIVE"),
                       ("dynamic_warming_secrets", "WARMING")):  # fmt: skip
        for s in sec.get(key) or []:
            out.append((str(s.get("name", "")), state, s.get("secret") or {}))
    return out


def _pem(source: Obj) -> bytes | None:
    """A DataSource's certificate text; None when it is a file in the proxy's own filesystem (or absent)."""
    if source.get("inline_bytes"):
        return base64.b64decode(str(source["inline_bytes"]))
    if source.get("inline_string"):
        return str(source["inline_string"]).encode()
    return None


def _time(at: datetime) -> str:
    return at.strftime("%Y-%m-%dT%H:%M:%SZ")


def secret_table(dump: Obj, now: datetime) -> Table:
    """istioctl's secret columns: the first certificate of each secret's chain (or trusted CA), its type from
    BasicConstraints (``CA`` / ``Cert Chain``), valid when ``now`` is inside its validity."""
    from injector.certs import crypto  # cryptography: only this kind needs it

    rows: list[tuple[str, ...]] = []
    for name, state, secret in secrets_of(dump):
        tls = secret.get("tls_certificate")
        source = tls.get("certificate_chain") if tls else (secret.get("validation_context") or {}).get("trusted_ca")
        pem = _pem(source or {})
        if pem is None:
            rows.append((name, "", state, "false", "", "", ""))
            continue
        try:
            start, end = crypto.not_before(pem), crypto.not_after(pem)
            kind = "CA" if crypto.is_ca(pem) else "Cert Chain"
            serial = crypto.serial_hex(pem)
        except ValueError:
            rows.append((name, "", state, "false", "(not a PEM certificate)", "", ""))
            continue
        rows.append((name, kind, state, str(start <= now <= end).lower(), serial, _time(end), _time(start)))
    return Table(SECRET_COLUMNS, rows)
