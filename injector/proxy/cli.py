"""``sidecar-injector proxy-config {listeners,routes,clusters,endpoints,secret,bootstrap,all,log} TARGET``,
like ``istioctl proxy-config``: TARGET is ``POD[.NAMESPACE]`` (reached with ``kubectl port-forward``) or
``--admin URL`` (an admin API you can already reach). ``log`` lists the proxy's loggers and sets their levels
(``--level``, ``--reset``). Exit 0 shown, 1 the proxy could not be read, 2 bad usage (a bad ``--level`` included:
nothing was changed)."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Iterator
from typing import Any

from injector.proxy import admin as admin_api
from injector.proxy import levels, tables

KINDS = ("listeners", "routes", "clusters", "endpoints", "secret", "bootstrap", "all", "log")


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "proxy-config",
        help="show what a sidecar's Envoy holds (like istioctl proxy-config)",
        description="Listeners > Routes > Clusters > Endpoints of a sidecar, read from its Envoy admin API.",
    )
    p.add_argument("kind", choices=KINDS)
    p.add_argument("target", nargs="?", help="POD[.NAMESPACE] (kubectl port-forward to its :15000)")
    p.add_argument("--admin", metavar="URL", help="an Envoy admin API to read instead, e.g. http://127.0.0.1:15000")
    p.add_argument("-n", "--namespace", default=None, help="the pod's namespace (default: default)")
    p.add_argument("--context", help="kubectl --context")
    p.add_argument("--kubeconfig", help="kubectl --kubeconfig")
    p.add_argument("-o", "--output", choices=("short", "json", "yaml"), default="short")
    p.add_argument("--port", type=int, help="only this port (listeners, clusters, endpoints)")
    p.add_argument("--fqdn", help="clusters whose service FQDN contains this")
    p.add_argument("--direction", choices=("inbound", "outbound"), help="clusters of this direction")
    p.add_argument("--address", help="listeners on this address")
    p.add_argument("--name", help="routes: this route configuration; endpoints: clusters whose name contains it")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the admin API (default 10)")
    p.add_argument(
        "--level",
        help="log: [LOGGER:]LEVEL,... - LEVEL alone for every logger; levels trace, debug, info, warning, error, "
        "critical, off",
    )
    p.add_argument("-r", "--reset", action="store_true", help="log: back to the levels the proxy was started with")


@contextlib.contextmanager
def _admin_url(args: argparse.Namespace) -> Iterator[str]:
    if args.admin:
        yield args.admin
        return
    name, _, ns = str(args.target).partition(".")
    namespace = args.namespace or ns or "default"
    kubectl = [f"--{k}={getattr(args, k)}" for k in ("context", "kubeconfig") if getattr(args, k)]
    admin_api.check_pod(name, namespace, kubectl)
    with admin_api.port_forward(name, namespace, kubectl) as url:
        yield url


def _selected(args: argparse.Namespace, dump: Any, clusters: Any) -> tuple[list[tables.Table], Any]:
    """The tables to print and the raw configuration for -o json/yaml."""
    k = args.kind
    out: list[tables.Table] = []
    raw: dict[str, Any] = {}
    if k in ("clusters", "all"):
        out.append(tables.cluster_table(dump, fqdn=args.fqdn, port=args.port, direction=args.direction))
        raw["clusters"] = [c for c in tables.clusters_of(dump)
                           if c.get("name") in {r[0] for r in out[-1].rows}]  # fmt: skip
    if k in ("listeners", "all"):
        out.append(tables.listener_table(dump, port=args.port, address=args.address))
        raw["listeners"] = [x for x in tables.listeners_of(dump) if x.get("name") in {r[0] for r in out[-1].rows}]
    if k in ("routes", "all"):
        out.append(tables.route_table(dump, name=args.name))
        raw["routes"] = [r for r in tables.routes_of(dump) if not args.name or r.get("name") == args.name]
    if k in ("endpoints", "all"):
        out.append(tables.endpoint_table(clusters, cluster=args.name, port=args.port))
        raw["endpoints"] = clusters.get("cluster_statuses") or []
    if k in ("secret", "all"):
        from datetime import UTC, datetime

        out.append(tables.secret_table(dump, datetime.now(UTC)))
        raw["secret"] = tables.section(dump, "Secrets")
    if k == "bootstrap":
        raw["bootstrap"] = tables.section(dump, "Bootstrap").get("bootstrap") or {}
    if k == "all":
        raw = dump
    elif len(raw) == 1:
        raw = next(iter(raw.values()))
    return out, raw


def _log(args: argparse.Namespace, url: str) -> str:
    """List the loggers, or change levels and list them after: every logger first, then the named ones (as
    istioctl does). ``--reset``: the proxy's own command line (``--log-level``, ``--component-log-level``), from
    /server_info - the level that pod was injected with, whatever the mesh's default."""
    current = levels.parse_loggers(admin_api.post_text(url, "/logging", args.timeout))
    if args.reset:
        options = admin_api.get_json(url, "/server_info", args.timeout).get("command_line_options") or {}
        spec = ",".join(
            x for x in (str(options.get("log_level") or "warning"), options.get("component_log_level")) if x
        )
    elif args.level:
        spec = args.level
    else:
        return admin_api.post_text(url, "/logging", args.timeout)
    every, per = levels.parse_spec(spec, set(current))
    answer = ""
    if every is not None:
        answer = admin_api.post_text(url, f"/logging?level={every}", args.timeout)
    if per:
        paths = ",".join(f"{name}:{lvl}" for name, lvl in per.items())
        answer = admin_api.post_text(url, f"/logging?paths={paths}", args.timeout)
    levels.parse_loggers(answer)  # Envoy's list after the change, or ValueError
    return answer


def run(args: argparse.Namespace) -> int:
    if bool(args.admin) == bool(args.target):
        print("sidecar-injector proxy-config: give a POD[.NAMESPACE] or --admin URL (one of them)", file=sys.stderr)
        return 2
    if (args.level or args.reset) and args.kind != "log":
        print("sidecar-injector proxy-config: --level and --reset are for proxy-config log", file=sys.stderr)
        return 2
    if args.kind == "log" and ((args.level and args.reset) or args.output != "short"):
        print("sidecar-injector proxy-config log: --level cannot be combined with --reset, nor -o", file=sys.stderr)
        return 2
    what = "/logging" if args.kind == "log" else "/config_dump"
    try:
        with _admin_url(args) as url:
            if args.kind == "log":
                sys.stdout.write(_log(args, url))
                return 0
            dump = admin_api.get_json(url, "/config_dump", args.timeout)
            tables.section(dump, "Bootstrap")  # ValueError when it is not a config dump
            needs_clusters = args.kind in ("endpoints", "all")
            clusters = admin_api.get_json(url, "/clusters?format=json", args.timeout) if needs_clusters else {}
    except levels.LevelError as e:
        print(f"sidecar-injector proxy-config log: {e}; nothing was changed", file=sys.stderr)
        return 2
    except admin_api.ProxyConfigError as e:
        print(f"sidecar-injector proxy-config: {e}", file=sys.stderr)
        return 1
    except ValueError as e:
        print(f"sidecar-injector proxy-config: {url}{what}: {e}", file=sys.stderr)
        return 1
    shown, raw = _selected(args, dump, clusters)
    if args.output == "json":
        print(json.dumps(raw, indent=2))
    elif args.output == "yaml":
        from injector.core import manifest_yaml

        sys.stdout.write(manifest_yaml.dump_all([raw]))
    elif args.kind == "bootstrap":
        print(json.dumps(raw, indent=2))
    else:
        sys.stdout.write("\n".join(t.render() for t in shown))
    return 0
