"""The command line: istio-iptables' flags, long names, env vars and defaults -> ``RawOptions``. Pure.

A flag wins over its env var; some settings are env-only (``ISTIO_OUTBOUND_OWNER_GROUPS``,
``ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE``, ``ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR``). The values stay unvalidated
strings here; ``netinit.core.config.resolve`` validates them.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence
from typing import NamedTuple, NoReturn

from netinit.core.values import GO_FALSE, GO_TRUE
from netinit.errors import ConfigError

# (dest, short, long, env, help)
_STR_FLAGS: tuple[tuple[str, str | None, str, str, str], ...] = (
    ("envoy_port", "-p", "--envoy-port", "", "port all outbound TCP is redirected to (15001)"),
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
    (
        "probe_port",
        None,
        "--iptables-probe-port",
        "IPTABLES_PROBE_PORT",
        "--run-validation: the port of 127.0.0.6 / ::6 the inbound probe dials (15002)",
    ),
    (
        "probe_timeout",
        None,
        "--probe-timeout",
        "PROBE_TIMEOUT",
        "--run-validation: how long to wait, a Go duration (5s)",
    ),
    # pilot-agent's logging flags, which the injection template passes: validated, no effect here (no env var).
    ("log_output_level", None, "--log_output_level", "", "accepted for Istio: [scope:]level list; no effect"),
    ("log_stacktrace_level", None, "--log_stacktrace_level", "", "accepted for Istio: [scope:]level list; no effect"),
    ("log_caller", None, "--log_caller", "", "accepted for Istio; no effect"),
    ("vklog", None, "--vklog", "", "accepted for Istio: klog verbosity (an integer); no effect"),
)

# (dest, short, long, env ('' = none), additional env that wins over the first one when set, help)
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
        "ISTIO_DUAL_STACK",
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
    (
        "cni_mode",
        None,
        "--cni-mode",
        "CNI_MODE",
        None,
        "accepted for Istio (run from the host for a CNI plugin); no effect: netinit always locks per namespace",
    ),
    ("log_as_json", None, "--log_as_json", "", None, "accepted for Istio (JSON logs); no effect"),
)

# The settings that decide the plan, read from the environment: ``netinit verify`` refuses to compare with
# a plan made of none of them.
CAPTURE_ENV = frozenset(
    [e for d, _s, _l, e, _h in _STR_FLAGS if e and not d.startswith(("log_", "vklog", "probe"))]
    + ["REDIRECT_DNS", "CAPTURE_ALL_DNS", "DROP_INVALID", "DUAL_STACK"]
    + ["ISTIO_META_DNS_CAPTURE", "INVALID_DROP", "ISTIO_DUAL_STACK"]
    + ["ISTIO_OUTBOUND_OWNER_GROUPS", "ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE", "ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR"]
)


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


def _help_width() -> int:
    """What argparse's help formatter computes (``shutil.get_terminal_size().columns - 2``) without importing
    ``shutil`` (and with it zlib, bz2, lzma: ~2 ms) on every run - argparse makes a formatter per added flag."""
    try:
        columns = int(os.environ.get("COLUMNS", ""))
    except ValueError:
        columns = 0
    stdout = sys.__stdout__
    if columns <= 0:
        try:
            columns = os.get_terminal_size(stdout.fileno()).columns if stdout is not None else 80
        except (ValueError, OSError):  # not a terminal, or closed
            columns = 80
    return (columns or 80) - 2


class _Formatter(argparse.HelpFormatter):
    def __init__(self, prog: str) -> None:
        super().__init__(prog, width=_help_width())


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="netinit",
        formatter_class=_Formatter,
        description="Program the pod's traffic capture (istio-iptables compatible).",
        epilog="Every flag also reads its istio-iptables env var; a flag wins over its env var. "
        "Env-only: ISTIO_OUTBOUND_OWNER_GROUPS, ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE, "
        "ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR. Exit codes: 0 done, 2 bad input, 1 apply failed "
        "(rolled back), 126 validation failed. Debugging: netinit explain|show|verify --help.",
    )
    for dest, short, long, env, help_ in _STR_FLAGS:
        names = [n for n in (short, long) if n]
        p.add_argument(*names, dest=dest, default=None, metavar="VALUE", help=f"{help_} [${env}]" if env else help_)
    p.add_argument("--log_target", action="append", metavar="PATH", help="accepted for Istio (repeatable); no effect")
    for dest, short, long, env, _fallback, help_ in _BOOL_FLAGS:
        names = [n for n in (short, long) if n]
        p.add_argument(
            *names,
            dest=dest,
            action="store_const",
            const=True,
            default=None,
            help=f"{help_} [${env}]" if env else help_,
        )
    p.add_argument("--pid", default=None, metavar="PID", help="apply in the network namespace of this process")
    p.add_argument(
        "--applier",
        choices=("restore", "iptc"),
        default="restore",
        help="restore: iptables-restore (default); iptc: python-iptables in-process (legacy only)",
    )
    return p


def _env_bool(env: Mapping[str, str], name: str) -> bool | None:
    raw = env.get(name)
    if raw is None or raw == "":
        return None
    if raw in GO_TRUE:
        return True
    if raw in GO_FALSE:
        return False
    raise ConfigError(f"netinit: invalid value for env {name}: {raw!r} (expected true or false)")


_BOOL_LONG = {long: dest for dest, _s, long, _e, _f, _h in _BOOL_FLAGS}


def _go_bools(argv: Sequence[str]) -> tuple[list[str], dict[str, bool]]:
    """pflag's ``--flag=true|false`` form of the booleans: ``--x=true`` becomes ``--x``; ``--x=false`` is taken
    out and recorded (an explicit false wins over the env var). A bool never consumes the next argument."""
    out: list[str] = []
    given: dict[str, bool] = {}
    for i, arg in enumerate(argv):
        if arg == "--":
            out += argv[i:]
            break
        name, eq, value = arg.partition("=")
        if eq and name in _BOOL_LONG:
            if value in GO_TRUE:
                out.append(name)
            elif value in GO_FALSE:
                given[_BOOL_LONG[name]] = False
            else:
                raise ConfigError(f"netinit: invalid value for {name}: {value!r} (expected true or false)")
        else:
            out.append(arg)
    return out, given


def parse_options(argv: Sequence[str], env: Mapping[str, str]) -> RawOptions:
    """Merge flags and env vars as istio-iptables binds them: a flag wins over its env var, and an additional env
    var (``ISTIO_META_DNS_CAPTURE``, ``INVALID_DROP``, ``ISTIO_DUAL_STACK``) wins over the primary one."""
    args, explicit = _go_bools(argv)
    ns = build_parser().parse_args(args)
    values: dict[str, str] = {}
    for dest, _short, _long, env_name, _help in _STR_FLAGS:
        v = getattr(ns, dest)
        if v is None and env_name:
            v = env.get(env_name)
        if v is not None:
            values[dest] = v
    flags: dict[str, bool] = {}
    for dest, _short, _long, env_name, additional, _help in _BOOL_FLAGS:
        v = explicit.get(dest, getattr(ns, dest))
        if v is None and additional:
            v = _env_bool(env, additional)
        if v is None and env_name:
            v = _env_bool(env, env_name)
        flags[dest] = bool(v)
    for name in (
        "ISTIO_OUTBOUND_OWNER_GROUPS",
        "ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE",
        "ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR",
    ):
        if name in env:
            values[name] = env[name]
    return RawOptions(values=values, flags=flags, pid=ns.pid, applier=ns.applier)
