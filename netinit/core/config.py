"""Validated settings: the records (``HostFacts``, ``CaptureConfig``, ``RunOptions``) and ``resolve``, which turns
``RawOptions`` (``netinit.core.flags``) into them. Pure.

Unlike istio-iptables every value is validated before anything is touched (with ``netinit.core.values``): a bad
one raises ``ConfigError`` naming the flag and the value. Facts about the namespace (its addresses, resolv.conf,
user and group names) come in through ``HostFacts`` so the planner never does I/O.
"""

from __future__ import annotations

from types import MappingProxyType

from netinit.core import values
from netinit.core.flags import RawOptions, parse_options
from netinit.core.values import WILDCARD, invalid, split_list
from netinit.errors import ConfigError
from netinit.typing_lite import NamedTuple

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence
    from typing import Literal

    from netinit.core.values import Network

    Mode = Literal["REDIRECT", "TPROXY"]

DEFAULT_PROXY_PORT = 15001
DEFAULT_INBOUND_CAPTURE_PORT = 15006
DEFAULT_INBOUND_TUNNEL_PORT = 15008
DEFAULT_PROXY_UID = "1337"
# Without -u/PROXY_UID, the proxy is the user ENVOY_USER names (default istio-proxy), else 1337: istio-iptables'
# FillConfigFromEnvironment. The injected istio-init always passes -u; this is for runs by hand, e.g. on a VM
# whose Envoy runs as an istio-proxy account.
ENVOY_USER_ENV = "ENVOY_USER"
DEFAULT_ENVOY_USER = "istio-proxy"
# Included owner groups share one rule, five words each (-m owner ! --gid-owner GID), and iptables-restore
# parses at most 255 words a line: 50 groups fail it ("Parser cannot handle more arguments") half-way through
# an apply. Istio's limit is 64 (tools/common/config ValidateOwnerGroups), which lets 50-64 fail that way.
MAX_OWNER_GROUPS_INCLUDE = 49
DNS_LISTENER_PORT = 15053
DEFAULT_PROBE_PORT = 15002
DEFAULT_PROBE_TIMEOUT = 5.0  # seconds (Istio's 5s)
DEFAULT_IPV4_LOOPBACK_CIDR = "127.0.0.1/32"

# Records are NamedTuples (netinit.typing_lite's), not dataclasses: `dataclasses` imports `inspect` (about 10 ms),
# and netinit's start-up time is every pod's start-up time.
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
    ipv4_loopback_cidr: str = DEFAULT_IPV4_LOOPBACK_CIDR  # normalised, as the rules print it
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
    probe_port: int = DEFAULT_PROBE_PORT
    probe_timeout: float = DEFAULT_PROBE_TIMEOUT


def envoy_user(v: Mapping[str, str]) -> str:
    """The account name the proxy runs as when no -u/PROXY_UID is given."""
    return v.get(ENVOY_USER_ENV, DEFAULT_ENVOY_USER)


def resolve(
    raw: RawOptions,
    facts: HostFacts,
    warn: Callable[[str], None] = lambda _m: None,
) -> tuple[CaptureConfig, RunOptions]:
    """Validate every value; return what to program and how to run. Raises ConfigError."""
    v = raw.values
    proxy_port = values.port("-p/--envoy-port", v.get("envoy_port") or str(DEFAULT_PROXY_PORT))
    in_port = values.port(
        "-z/--inbound-capture-port", v.get("inbound_capture_port") or str(DEFAULT_INBOUND_CAPTURE_PORT)
    )
    tunnel = values.port("-e/--inbound-tunnel-port", v.get("inbound_tunnel_port") or str(DEFAULT_INBOUND_TUNNEL_PORT))
    proxy_uid = v.get("proxy_uid") or str(facts.user_ids.get(envoy_user(v), DEFAULT_PROXY_UID))
    uids = values.ids("-u/--proxy-uid", proxy_uid, facts.user_ids, "uid")
    gids = values.ids("-g/--proxy-gid", v["proxy_gid"], facts.group_ids, "gid") if v.get("proxy_gid") else uids

    mode_raw = (v.get("interception_mode") or "REDIRECT").strip()
    mode = mode_raw.upper()
    if mode not in ("REDIRECT", "TPROXY"):
        raise invalid("-m/--istio-inbound-interception-mode", mode_raw, "expected REDIRECT or TPROXY")
    mark = values.bounded_int("-t/--istio-inbound-tproxy-mark", v.get("tproxy_mark") or "1337", 1, 2**32 - 1)
    table = values.bounded_int(
        "-r/--istio-inbound-tproxy-route-table", v.get("tproxy_route_table") or "133", 1, 2**32 - 1
    )
    if table in (253, 254, 255):
        raise invalid(
            "-r/--istio-inbound-tproxy-route-table", str(table), "253-255 are the kernel's default/main/local tables"
        )

    inbound_raw = (v.get("inbound_ports") or "").strip()
    inbound = values.ports_or_all("-b/--istio-inbound-ports", inbound_raw)
    in_excl = values.ports("-d/--istio-local-exclude-ports", v.get("local_exclude_ports") or "")
    if in_excl and inbound != WILDCARD:
        warn("-d/--istio-local-exclude-ports only applies with -b '*'; it is ignored here (as in istio-iptables)")
    out_ports = values.ports("-q/--istio-outbound-ports", v.get("outbound_ports") or "")
    out_excl = values.ports("-o/--istio-local-outbound-ports-exclude", v.get("outbound_ports_exclude") or "")

    cidr_raw = (v.get("service_cidr") or "").strip()
    cidrs = values.cidrs_or_all("-i/--istio-service-cidr", cidr_raw)
    excl_raw = (v.get("service_exclude_cidr") or "").strip()
    if WILDCARD in split_list(excl_raw):
        raise invalid("-x/--istio-service-exclude-cidr", excl_raw, "'*' would exclude everything; list CIDRs instead")
    cidrs_excl = values.cidrs("-x/--istio-service-exclude-cidr", excl_raw)

    excl_ifaces = values.interfaces("-c/--istio-exclude-interfaces", v.get("exclude_interfaces") or "")
    virt_ifaces = values.interfaces("-k/--kube-virt-interfaces", v.get("kube_virt_interfaces") or "")

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
        else values.ids("ISTIO_OUTBOUND_OWNER_GROUPS", og_inc_raw, facts.group_ids, "group")
    )
    og_exc = (
        values.ids("ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE", og_exc_raw, facts.group_ids, "group") if og_exc_raw else ()
    )
    if og_inc != WILDCARD and len(og_inc) > MAX_OWNER_GROUPS_INCLUDE:
        raise invalid(
            "ISTIO_OUTBOUND_OWNER_GROUPS",
            og_inc_raw,
            f"{len(og_inc)} groups, at most {MAX_OWNER_GROUPS_INCLUDE}: they share one iptables rule, which "
            "iptables-restore cannot parse with more (list the groups to leave out in "
            "ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE instead)",
        )

    lo_raw = v.get("ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR", "").strip()
    lo_net = values.loopback_cidr("ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR", lo_raw) if lo_raw else DEFAULT_IPV4_LOOPBACK_CIDR

    f = raw.flags
    redirect_dns = f["redirect_dns"]
    dns4: tuple[str, ...] = ()
    dns6: tuple[str, ...] = ()
    if redirect_dns and not f["capture_all_dns"]:
        import ipaddress  # lazy: only DNS capture reads addresses here

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
        raise invalid("--force-iptables-binary", binary, "expected legacy or nft")
    pid = None
    if raw.pid is not None:
        pid = values.bounded_int("--pid", raw.pid, 1, 2**22)
    netns = v.get("network_namespace") or None
    if netns and pid:
        raise ConfigError("netinit: --network-namespace and --pid are mutually exclusive")
    if netns and ("\x00" in netns or "\n" in netns):
        raise invalid("--network-namespace", netns, "control characters are not allowed")
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

    probe_port = values.port("--iptables-probe-port", v.get("probe_port") or str(DEFAULT_PROBE_PORT))
    probe_timeout = (
        values.duration("--probe-timeout", v["probe_timeout"]) if v.get("probe_timeout") else DEFAULT_PROBE_TIMEOUT
    )
    # pilot-agent's logging flags: no effect here, but a value Istio would refuse is refused.
    for name in ("log_output_level", "log_stacktrace_level"):
        if v.get(name):
            values.log_levels(f"--{name}", v[name])
    if v.get("vklog"):
        values.bounded_int("--vklog", v["vklog"], 0, 2**31 - 1)

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
        probe_port=probe_port,
        probe_timeout=probe_timeout,
    )
    return cfg, run


def config_from_flags(
    argv: Sequence[str], env: Mapping[str, str] | None = None, facts: HostFacts | None = None
) -> CaptureConfig:
    """Convenience for tests and tools: flags (+env) straight to a CaptureConfig."""
    return resolve(parse_options(argv, env or {}), facts or HostFacts())[0]
