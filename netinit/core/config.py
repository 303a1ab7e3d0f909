"""Flags and env vars -> a validated ``CaptureConfig``.

The flags, long names, env vars and defaults are istio-iptables'. Unlike istio-iptables every value is
validated before anything is touched: a bad one raises ``ConfigError`` naming the flag and the value.

Parsing is pure (``parse_options(argv, env)``); facts about the namespace (its addresses, resolv.conf,
group names) come in through ``HostFacts`` so the planner never does I/O.
"""

from __future__ import annotations

import argparse
import ipaddress
import re
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import Literal, NamedTuple, NoReturn

from netinit.errors import ConfigError

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Mode = Literal["REDIRECT", "TPROXY"]
WILDCARD = "*"

DEFAULT_PROXY_PORT = 15001
DEFAULT_INBOUND_CAPTURE_PORT = 15006
DEFAULT_INBOUND_TUNNEL_PORT = 15008
DEFAULT_PROXY_UID = "1337"
DNS_LISTENER_PORT = 15053

_IFACE_RE = re.compile(r"^[a-zA-Z][a-zA-Z0-9_.-]*$")
_NAME_RE = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_.-]*$")

# (dest, short, long, env, help)
_STR_FLAGS: tuple[tuple[str, str | None, str, str, str], ...] = (
    ("envoy_port", "-p", "--envoy-port", "ENVOY_PORT", "port all outbound TCP is redirected to (15001)"),
    (
        "inbound_capture_port",
        "-z",
        "--inbound-capture-port",
        "INBOUND_CAPTURE_PORT",
        "port all inbound TCP is redirected to (15006)",
    ),
    (
        "inbound_tunnel_port",
        "-e",
        "--inbound-tunnel-port",
        "INBOUND_TUNNEL_PORT",
        "inbound tunnel (HBONE) port, never captured (15008)",
    ),
    ("proxy_uid", "-u", "--proxy-uid", "PROXY_UID", "comma list of UIDs whose traffic is not captured (1337)"),
    ("proxy_gid", "-g", "--proxy-gid", "PROXY_GID", "comma list of GIDs whose traffic is not captured (= -u)"),
    (
        "interception_mode",
        "-m",
        "--istio-inbound-interception-mode",
        "ISTIO_INBOUND_INTERCEPTION_MODE",
        "REDIRECT (default) or TPROXY",
    ),
    ("tproxy_mark", "-t", "--istio-inbound-tproxy-mark", "ISTIO_INBOUND_TPROXY_MARK", "TPROXY packet mark (1337)"),
    (
        "tproxy_route_table",
        "-r",
        "--istio-inbound-tproxy-route-table",
        "ISTIO_INBOUND_TPROXY_ROUTE_TABLE",
        "TPROXY routing table (133)",
    ),
    (
        "inbound_ports",
        "-b",
        "--istio-inbound-ports",
        "ISTIO_INBOUND_PORTS",
        "inbound ports to capture: '*' or a comma list; empty = no inbound capture",
    ),
    (
        "local_exclude_ports",
        "-d",
        "--istio-local-exclude-ports",
        "ISTIO_LOCAL_EXCLUDE_PORTS",
        "inbound ports never captured (only with -b '*')",
    ),
    (
        "exclude_interfaces",
        "-c",
        "--istio-exclude-interfaces",
        "ISTIO_EXCLUDE_INTERFACES",
        "interfaces whose traffic is never captured",
    ),
    (
        "service_cidr",
        "-i",
        "--istio-service-cidr",
        "ISTIO_SERVICE_CIDR",
        "outbound CIDRs to capture: '*' or a comma list; empty = no outbound CIDR capture",
    ),
    (
        "service_exclude_cidr",
        "-x",
        "--istio-service-exclude-cidr",
        "ISTIO_SERVICE_EXCLUDE_CIDR",
        "outbound CIDRs never captured",
    ),
    ("outbound_ports", "-q", "--istio-outbound-ports", "ISTIO_OUTBOUND_PORTS", "outbound ports always captured"),
    (
        "outbound_ports_exclude",
        "-o",
        "--istio-local-outbound-ports-exclude",
        "ISTIO_LOCAL_OUTBOUND_PORTS_EXCLUDE",
        "outbound ports never captured",
    ),
    (
        "kube_virt_interfaces",
        "-k",
        "--kube-virt-interfaces",
        "KUBE_VIRT_INTERFACES",
        "virtual interfaces whose inbound traffic is treated as outbound",
    ),
    (
        "network_namespace",
        None,
        "--network-namespace",
        "NETWORK_NAMESPACE",
        "apply in this network namespace (name under /var/run/netns, or a path)",
    ),
    (
        "force_iptables_binary",
        None,
        "--force-iptables-binary",
        "FORCE_IPTABLES_BINARY",
        "legacy or nft: skip backend detection",
    ),
)

# (dest, short, long, env, extra env consulted when the first is unset, help)
_BOOL_FLAGS: tuple[tuple[str, str | None, str, str, str | None, str], ...] = (
    ("dry_run", "-n", "--dry-run", "DRY_RUN", None, "print the iptables-restore payloads; touch nothing"),
    (
        "redirect_dns",
        None,
        "--redirect-dns",
        "REDIRECT_DNS",
        "ISTIO_META_DNS_CAPTURE",
        "capture DNS to the resolv.conf nameservers and send it to 15053",
    ),
    (
        "capture_all_dns",
        None,
        "--capture-all-dns",
        "CAPTURE_ALL_DNS",
        None,
        "with --redirect-dns: capture all port-53 traffic",
    ),
    (
        "drop_invalid",
        None,
        "--drop-invalid",
        "DROP_INVALID",
        "INVALID_DROP",
        "drop conntrack-INVALID packets instead of letting them reset connections",
    ),
    (
        "dual_stack",
        None,
        "--dual-stack",
        "DUAL_STACK",
        "ISTIO_AGENT_DUAL_STACK",
        "program IPv6 too whenever a global IPv6 address exists",
    ),
    (
        "run_validation",
        None,
        "--run-validation",
        "RUN_VALIDATION",
        None,
        "after applying, prove capture works with real connections (exit 126 if not)",
    ),
    ("skip_rule_apply", None, "--skip-rule-apply", "SKIP_RULE_APPLY", None, "do not apply rules"),
    ("reconcile", None, "--reconcile", "RECONCILE", None, "replace drifted rules of ours"),
    ("cleanup_only", None, "--cleanup-only", "CLEANUP_ONLY", None, "remove our chains and jumps (foreign rules stay)"),
    ("force_apply", None, "--force-apply", "FORCE_APPLY", None, "re-apply even when the rules are in place"),
    (
        "native_nftables",
        None,
        "--native-nftables",
        "NATIVE_NFTABLES",
        None,
        "program native nftables (inet istio-proxy-* tables, one nft transaction) instead of iptables",
    ),
)


# Records are NamedTuples, not dataclasses: `dataclasses` imports `inspect` (about 10 ms), and netinit's start-up
# time is every pod's start-up time.
_NO_IDS: Mapping[str, int] = MappingProxyType({})


class HostFacts(NamedTuple):
    """What the planner needs to know about the target namespace, gathered at the edge."""

    has_global_ipv4: bool = True
    has_global_ipv6: bool = False
    dns_servers: tuple[str, ...] = ()
    group_ids: Mapping[str, int] = _NO_IDS
    user_ids: Mapping[str, int] = _NO_IDS


class CaptureConfig(NamedTuple):
    """Everything that decides which rules are programmed. Pure data, validated."""

    proxy_port: int = DEFAULT_PROXY_PORT
    inbound_capture_port: int = DEFAULT_INBOUND_CAPTURE_PORT
    inbound_tunnel_port: int = DEFAULT_INBOUND_TUNNEL_PORT
    proxy_uids: tuple[str, ...] = (DEFAULT_PROXY_UID,)
    proxy_gids: tuple[str, ...] = (DEFAULT_PROXY_UID,)
    mode: Mode = "REDIRECT"
    tproxy_mark: int = 1337
    tproxy_route_table: int = 133
    inbound_ports: str | tuple[str, ...] = ()  # "*" or port specs; () = no inbound capture
    inbound_ports_exclude: tuple[str, ...] = ()
    outbound_ports: tuple[str, ...] = ()
    outbound_ports_exclude: tuple[str, ...] = ()
    outbound_cidrs: str | tuple[Network, ...] = ()  # "*" or networks
    outbound_cidrs_exclude: tuple[Network, ...] = ()
    exclude_interfaces: tuple[str, ...] = ()
    kube_virt_interfaces: tuple[str, ...] = ()
    owner_groups_include: str | tuple[str, ...] = WILDCARD
    owner_groups_exclude: tuple[str, ...] = ()
    ipv4_loopback_cidr: ipaddress.IPv4Network = ipaddress.IPv4Network("127.0.0.1/32")
    redirect_dns: bool = False
    capture_all_dns: bool = False
    drop_invalid: bool = False
    dns_servers_v4: tuple[str, ...] = ()
    dns_servers_v6: tuple[str, ...] = ()
    enable_ipv6: bool = False


class RunOptions(NamedTuple):
    """How netinit runs, as opposed to what it programs."""

    dry_run: bool = False
    run_validation: bool = False
    skip_rule_apply: bool = False
    reconcile: bool = False
    cleanup_only: bool = False
    force_apply: bool = False
    dual_stack: bool = False
    force_iptables_binary: str | None = None
    network_namespace: str | None = None
    pid: int | None = None
    applier: str = "restore"
    native_nftables: bool = False


class RawOptions(NamedTuple):
    """Flags merged with env vars (flag wins), still unvalidated strings."""

    values: Mapping[str, str]
    flags: Mapping[str, bool]
    pid: str | None
    applier: str
    warnings: tuple[str, ...] = ()


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise ConfigError(f"netinit: {message}")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="netinit",
        description="Program the pod's traffic capture (istio-iptables compatible).",
        epilog="Every flag also reads its istio-iptables env var; a flag wins over its env var. "
        "Env-only: ISTIO_OUTBOUND_OWNER_GROUPS, ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE, "
        "ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR. Exit codes: 0 done, 2 bad input, 1 apply failed "
        "(rolled back), 126 validation failed. Debugging: netinit explain|show|verify --help.",
    )
    for dest, short, long, env, help_ in _STR_FLAGS:
        names = [n for n in (short, long) if n]
        p.add_argument(*names, dest=dest, default=None, metavar="VALUE", help=f"{help_} [${env}]")
    for dest, short, long, env, _fallback, help_ in _BOOL_FLAGS:
        names = [n for n in (short, long) if n]
        p.add_argument(*names, dest=dest, action="store_const", const=True, default=None, help=f"{help_} [${env}]")
    p.add_argument("--pid", default=None, metavar="PID", help="apply in the network namespace of this process")
    p.add_argument(
        "--applier",
        choices=("restore", "iptc"),
        default="restore",
        help="restore: iptables-restore (default); iptc: python-iptables in-process (legacy only)",
    )
    return p


_GO_TRUE = {"1", "t", "T", "TRUE", "true", "True"}
_GO_FALSE = {"0", "f", "F", "FALSE", "false", "False"}


def _env_bool(env: Mapping[str, str], name: str) -> bool | None:
    raw = env.get(name)
    if raw is None or raw == "":
        return None
    if raw in _GO_TRUE:
        return True
    if raw in _GO_FALSE:
        return False
    raise ConfigError(f"netinit: invalid value for env {name}: {raw!r} (expected true or false)")


def parse_options(argv: Sequence[str], env: Mapping[str, str]) -> RawOptions:
    """Merge flags and env vars; a flag wins over its env var."""
    ns = build_parser().parse_args(list(argv))
    values: dict[str, str] = {}
    for dest, _short, _long, env_name, _help in _STR_FLAGS:
        v = getattr(ns, dest)
        if v is None:
            v = env.get(env_name)
        if dest == "interception_mode" and v is None:
            v = env.get("INBOUND_INTERCEPTION_MODE")
        if dest == "tproxy_mark" and v is None:
            v = env.get("INBOUND_TPROXY_MARK")
        if v is not None:
            values[dest] = v
    flags: dict[str, bool] = {}
    for dest, _short, _long, env_name, fallback, _help in _BOOL_FLAGS:
        v = getattr(ns, dest)
        if v is None:
            v = _env_bool(env, env_name)
        if v is None and fallback:
            v = _env_bool(env, fallback)
        flags[dest] = bool(v)
    for name in (
        "ISTIO_OUTBOUND_OWNER_GROUPS",
        "ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE",
        "ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR",
    ):
        if name in env:
            values[name] = env[name]
    return RawOptions(values=values, flags=flags, pid=ns.pid, applier=ns.applier)


def split_list(s: str) -> list[str]:
    """istio-iptables' Split: comma list, empty items dropped (we also strip blanks)."""
    return [item.strip() for item in s.split(",") if item.strip()]


def _bad(flag: str, value: str, why: str) -> ConfigError:
    return ConfigError(f"netinit: invalid value for {flag}: {value!r} ({why})")


def parse_port(flag: str, value: str) -> int:
    v = value.strip()
    if not (v.isascii() and v.isdigit()) or not 1 <= int(v) <= 65535:
        raise _bad(flag, value, "port must be an integer 1-65535")
    return int(v)


def parse_port_spec(flag: str, value: str) -> str:
    """One list entry: a port or an ``a-b``/``a:b`` range; rendered the way iptables prints it."""
    m = re.fullmatch(r"(\d+)(?:[-:](\d+))?", value)
    if not m:
        raise _bad(flag, value, "expected a port 1-65535 or a range a-b")
    lo = parse_port(flag, m.group(1))
    if m.group(2) is None:
        return str(lo)
    hi = parse_port(flag, m.group(2))
    if hi < lo:
        raise _bad(flag, value, "range start is after its end")
    return f"{lo}:{hi}" if hi != lo else str(lo)


def _port_list(flag: str, value: str) -> tuple[str, ...]:
    return tuple(parse_port_spec(flag, item) for item in split_list(value))


def _interfaces(flag: str, value: str) -> tuple[str, ...]:
    out = []
    for item in split_list(value):
        if len(item) > 15 or not _IFACE_RE.match(item):
            raise _bad(flag, item, "interface names match ^[a-zA-Z][a-zA-Z0-9_.-]*$ and are at most 15 characters")
        out.append(item)
    return tuple(out)


def _networks(flag: str, value: str) -> tuple[Network, ...]:
    out: list[Network] = []
    for item in split_list(value):
        try:
            out.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise _bad(flag, item, "expected a CIDR such as 10.0.0.0/8 or fd00::/8") from None
    return tuple(out)


def _ids(flag: str, value: str, names: Mapping[str, int], kind: str) -> tuple[str, ...]:
    out = []
    items = split_list(value)
    if not items:
        raise _bad(flag, value, f"at least one {kind} is required")
    for item in items:
        if item.isascii() and item.isdigit():
            if int(item) > 2**32 - 2:
                raise _bad(flag, item, f"{kind} out of range")
            out.append(str(int(item)))
        elif _NAME_RE.match(item) and item in names:
            out.append(str(names[item]))
        else:
            raise _bad(flag, item, f"not a numeric {kind} nor a known {kind} name")
    return tuple(out)


def _uint(flag: str, value: str, lo: int, hi: int) -> int:
    v = value.strip()
    if not (v.isascii() and v.isdigit()) or not lo <= int(v) <= hi:
        raise _bad(flag, value, f"expected an integer {lo}-{hi}")
    return int(v)


def resolve(
    raw: RawOptions,
    facts: HostFacts,
    warn: Callable[[str], None] = lambda _m: None,
) -> tuple[CaptureConfig, RunOptions]:
    """Validate every value; return what to program and how to run. Raises ConfigError."""
    v = raw.values
    proxy_port = parse_port("-p/--envoy-port", v.get("envoy_port") or str(DEFAULT_PROXY_PORT))
    in_port = parse_port(
        "-z/--inbound-capture-port", v.get("inbound_capture_port") or str(DEFAULT_INBOUND_CAPTURE_PORT)
    )
    tunnel = parse_port("-e/--inbound-tunnel-port", v.get("inbound_tunnel_port") or str(DEFAULT_INBOUND_TUNNEL_PORT))
    uids = _ids("-u/--proxy-uid", v.get("proxy_uid") or DEFAULT_PROXY_UID, facts.user_ids, "uid")
    gids = _ids("-g/--proxy-gid", v["proxy_gid"], facts.group_ids, "gid") if v.get("proxy_gid") else uids

    mode_raw = (v.get("interception_mode") or "REDIRECT").strip()
    mode = mode_raw.upper()
    if mode not in ("REDIRECT", "TPROXY"):
        raise _bad("-m/--istio-inbound-interception-mode", mode_raw, "expected REDIRECT or TPROXY")
    mark = _uint("-t/--istio-inbound-tproxy-mark", v.get("tproxy_mark") or "1337", 1, 2**32 - 1)
    table = _uint("-r/--istio-inbound-tproxy-route-table", v.get("tproxy_route_table") or "133", 1, 2**32 - 1)
    if table in (253, 254, 255):
        raise _bad(
            "-r/--istio-inbound-tproxy-route-table", str(table), "253-255 are the kernel's default/main/local tables"
        )

    inbound_raw = (v.get("inbound_ports") or "").strip()
    inbound: str | tuple[str, ...] = (
        WILDCARD if inbound_raw == WILDCARD else _port_list("-b/--istio-inbound-ports", inbound_raw)
    )
    in_excl = _port_list("-d/--istio-local-exclude-ports", v.get("local_exclude_ports") or "")
    if in_excl and inbound != WILDCARD:
        warn("-d/--istio-local-exclude-ports only applies with -b '*'; it is ignored here (as in istio-iptables)")
    out_ports = _port_list("-q/--istio-outbound-ports", v.get("outbound_ports") or "")
    out_excl = _port_list("-o/--istio-local-outbound-ports-exclude", v.get("outbound_ports_exclude") or "")

    cidr_raw = (v.get("service_cidr") or "").strip()
    cidrs: str | tuple[Network, ...] = (
        WILDCARD if cidr_raw == WILDCARD else _networks("-i/--istio-service-cidr", cidr_raw)
    )
    excl_raw = (v.get("service_exclude_cidr") or "").strip()
    if WILDCARD in split_list(excl_raw):
        raise _bad("-x/--istio-service-exclude-cidr", excl_raw, "'*' would exclude everything; list CIDRs instead")
    cidrs_excl = _networks("-x/--istio-service-exclude-cidr", excl_raw)

    excl_ifaces = _interfaces("-c/--istio-exclude-interfaces", v.get("exclude_interfaces") or "")
    virt_ifaces = _interfaces("-k/--kube-virt-interfaces", v.get("kube_virt_interfaces") or "")

    og_inc_raw = v.get("ISTIO_OUTBOUND_OWNER_GROUPS", WILDCARD).strip() or WILDCARD
    og_exc_raw = v.get("ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE", "").strip()
    if og_inc_raw != WILDCARD and og_exc_raw:
        raise ConfigError(
            "netinit: ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE only applies when "
            f"ISTIO_OUTBOUND_OWNER_GROUPS is '*' (got {og_inc_raw!r})"
        )
    og_inc: str | tuple[str, ...] = (
        WILDCARD
        if og_inc_raw == WILDCARD
        else _ids("ISTIO_OUTBOUND_OWNER_GROUPS", og_inc_raw, facts.group_ids, "group")
    )
    og_exc = _ids("ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE", og_exc_raw, facts.group_ids, "group") if og_exc_raw else ()

    lo_raw = v.get("ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR", "127.0.0.1/32").strip() or "127.0.0.1/32"
    try:
        lo_net = ipaddress.IPv4Network(lo_raw, strict=False)
    except ValueError:
        raise _bad("ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR", lo_raw, "expected an IPv4 CIDR") from None
    if not lo_net.network_address.is_loopback or lo_net.prefixlen < 8:
        raise _bad("ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR", lo_raw, "must lie within 127.0.0.0/8")

    f = raw.flags
    redirect_dns = f["redirect_dns"]
    dns4: tuple[str, ...] = ()
    dns6: tuple[str, ...] = ()
    if redirect_dns and not f["capture_all_dns"]:
        addrs = []
        for s in facts.dns_servers:
            try:
                addrs.append(ipaddress.ip_address(s))
            except ValueError:
                warn(f"ignoring nameserver {s!r} from resolv.conf: not an IP address")
        dns4 = tuple(str(a) for a in addrs if a.version == 4)
        dns6 = tuple(str(a) for a in addrs if a.version == 6)
        if not dns4 and not dns6:
            warn(
                "--redirect-dns is set, but --capture-all-dns is not and resolv.conf lists no nameserver: "
                "DNS capture disabled"
            )
            redirect_dns = False

    enable_ipv6 = facts.has_global_ipv6 and (f["dual_stack"] or not facts.has_global_ipv4)

    binary = v.get("force_iptables_binary")
    if binary is not None and binary not in ("legacy", "nft"):
        raise _bad("--force-iptables-binary", binary, "expected legacy or nft")
    pid = None
    if raw.pid is not None:
        pid = _uint("--pid", raw.pid, 1, 2**22)
    netns = v.get("network_namespace") or None
    if netns and pid:
        raise ConfigError("netinit: --network-namespace and --pid are mutually exclusive")
    if netns and ("\x00" in netns or "\n" in netns):
        raise _bad("--network-namespace", netns, "control characters are not allowed")
    if f["cleanup_only"] and f["reconcile"]:
        warn("--reconcile has no effect with --cleanup-only")
    if f["native_nftables"] and raw.applier == "iptc":
        raise ConfigError("netinit: --applier iptc drives iptables; it cannot be combined with --native-nftables")
    if f["native_nftables"] and binary is not None:
        warn("--force-iptables-binary has no effect with --native-nftables")
    if raw.applier == "iptc" and binary == "nft":
        raise ConfigError(
            "netinit: --applier iptc drives libiptc, which only writes the legacy backend; "
            "it cannot be combined with --force-iptables-binary nft"
        )

    cfg = CaptureConfig(
        proxy_port=proxy_port,
        inbound_capture_port=in_port,
        inbound_tunnel_port=tunnel,
        proxy_uids=uids,
        proxy_gids=gids,
        mode=mode,  # type: ignore[arg-type]
        tproxy_mark=mark,
        tproxy_route_table=table,
        inbound_ports=inbound,
        inbound_ports_exclude=in_excl,
        outbound_ports=out_ports,
        outbound_ports_exclude=out_excl,
        outbound_cidrs=cidrs,
        outbound_cidrs_exclude=cidrs_excl,
        exclude_interfaces=excl_ifaces,
        kube_virt_interfaces=virt_ifaces,
        owner_groups_include=og_inc,
        owner_groups_exclude=og_exc,
        ipv4_loopback_cidr=lo_net,
        redirect_dns=redirect_dns,
        capture_all_dns=f["capture_all_dns"],
        drop_invalid=f["drop_invalid"],
        dns_servers_v4=dns4,
        dns_servers_v6=dns6,
        enable_ipv6=enable_ipv6,
    )
    run = RunOptions(
        dry_run=f["dry_run"],
        run_validation=f["run_validation"],
        skip_rule_apply=f["skip_rule_apply"],
        reconcile=f["reconcile"],
        cleanup_only=f["cleanup_only"],
        force_apply=f["force_apply"],
        dual_stack=f["dual_stack"],
        force_iptables_binary=binary,
        network_namespace=netns,
        pid=pid,
        applier=raw.applier,
        native_nftables=f["native_nftables"],
    )
    return cfg, run


def config_from_flags(
    argv: Sequence[str], env: Mapping[str, str] | None = None, facts: HostFacts | None = None
) -> CaptureConfig:
    """Convenience for tests and tools: flags (+env) straight to a CaptureConfig."""
    return resolve(parse_options(argv, env or {}), facts or HostFacts())[0]
