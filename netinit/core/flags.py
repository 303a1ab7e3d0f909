"""The command line: istio-iptables' flags, long names, env vars and defaults -> ``RawOptions``. Pure.

A flag wins over its env var; some settings are env-only (``ISTIO_OUTBOUND_OWNER_GROUPS``,
``ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE``, ``ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR``, ``ENVOY_USER``). The values stay
unvalidated strings here; ``netinit.core.config.resolve`` validates them.
"""

from __future__ import annotations

from netinit.core.values import GO_FALSE, GO_TRUE
from netinit.errors import ConfigError
from netinit.typing_lite import NamedTuple

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from typing import NoReturn

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
    + ["ENVOY_USER"]
)


class RawOptions(NamedTuple):
    """Flags merged with env vars (flag wins), still unvalidated strings."""

    values: Mapping[str, str]
    flags: Mapping[str, bool]
    pid: str | None
    applier: str
    warnings: tuple[str, ...] = ()


_APPLIERS = ("restore", "iptc")
# (dest, short, long, help) of the flags istio-iptables does not have; their values are parsed here.
_OWN_FLAGS: tuple[tuple[str, str | None, str, str], ...] = (
    ("log_target", None, "--log_target", "accepted for Istio (repeatable); no effect"),
    ("pid", None, "--pid", "apply in the network namespace of this process"),
    ("applier", None, "--applier", "restore: iptables-restore (default); iptc: python-iptables (legacy only)"),
)
_DESCRIPTION = "Program the pod's traffic capture (istio-iptables compatible)."
_EPILOG = (
    "Every flag also reads its istio-iptables env var; a flag wins over its env var. "
    "Env-only: ISTIO_OUTBOUND_OWNER_GROUPS, ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE, "
    "ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR, ENVOY_USER (the proxy's account without -u: istio-proxy, else 1337). "
    "Exit codes: 0 done, 2 bad input, 1 apply failed "
    "(rolled back), 126 validation failed. Debugging: netinit explain|show|verify --help."
)


def _names() -> dict[str, tuple[str, bool]]:
    """Every flag name (``-p``, ``--envoy-port``) -> (dest, is a boolean)."""
    out: dict[str, tuple[str, bool]] = {}
    for dest, short, long, _env, _help in _STR_FLAGS:
        out[long] = (dest, False)
        if short:
            out[short] = (dest, False)
    for dest, short, long, _env, _fallback, _help in _BOOL_FLAGS:
        out[long] = (dest, True)
        if short:
            out[short] = (dest, True)
    for dest, _short, long, _help in _OWN_FLAGS:
        out[long] = (dest, False)
    return out


def _fail(message: str) -> NoReturn:
    raise ConfigError(f"netinit: {message} (netinit --help lists the flags)")


def _go_bool(name: str, value: str) -> bool:
    """pflag's boolean (Go's strconv.ParseBool, no blanks); ``name`` words the error (a flag, or ``env NAME``)."""
    if value in GO_TRUE:
        return True
    if value in GO_FALSE:
        return False
    raise ConfigError(f"netinit: invalid value for {name}: {value!r} (expected true or false)")


def parse_flags(argv: Sequence[str]) -> tuple[dict[str, str], dict[str, bool], list[str]]:
    """istio-iptables' command line, read the way its flag library (spf13/pflag) reads it: ``--name value``,
    ``--name=value``, ``-p value``, ``-pVALUE``, ``-p=VALUE``; a boolean is ``--name`` or ``--name=true|false``
    and never takes the next argument; a value flag takes the next argument whatever it looks like; the last
    occurrence wins; no abbreviations; ``--`` ends the flags. Returns (values, booleans given, log targets).
    ``-h``/``--help`` prints the help and exits 0; anything else unknown is a ``ConfigError``.

    Not argparse: pflag's grammar differs from it (argparse takes ``--env`` for ``--envoy-port`` and refuses
    ``-x -1``), and argparse with the ``re``/``gettext`` it imports cost more start-up than netinit's own modules."""
    names = _names()
    values: dict[str, str] = {}
    given: dict[str, bool] = {}
    targets: list[str] = []
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
        if arg == "--":
            if args[i:]:
                _fail(f"unexpected argument {args[i]!r}: netinit takes flags only")
            break
        if arg in ("-h", "--help"):
            print(help_text())
            raise SystemExit(0)
        if arg.startswith("--"):
            name, eq, inline = arg.partition("=")
            if name == "--" or name.startswith("---"):
                _fail(f"bad flag syntax: {arg}")
        elif arg.startswith("-") and len(arg) > 1:
            name, rest = arg[:2], arg[2:]
            if names.get(name, ("", False))[1] and rest and not rest.startswith("="):
                args.insert(i, "-" + rest)  # grouped shorthands: -nX is -n -X
                rest = ""
            eq = "=" if rest else ""
            inline = rest[1:] if rest.startswith("=") else rest
        else:
            _fail(f"unexpected argument {arg!r}: netinit takes flags only (explain, show and verify come first)")
        if name not in names:
            _fail(f"unknown flag: {name}")
        dest, boolean = names[name]
        if boolean:
            given[dest] = _go_bool(name, inline) if eq else True
            continue
        if eq:
            value = inline
        elif i < len(args):
            value = args[i]
            i += 1
        else:
            _fail(f"flag needs an argument: {name}")
        if dest == "log_target":
            targets.append(value)
        else:
            values[dest] = value
    applier = values.get("applier", "restore")
    if applier not in _APPLIERS:
        raise ConfigError(f"netinit: invalid value for --applier: {applier!r} (expected restore or iptc)")
    return values, given, targets


def help_text() -> str:
    """``netinit --help``: every flag with its env var, wrapped to the terminal (the help path may import)."""
    import shutil
    import textwrap

    rows: list[tuple[str, str]] = []
    for _dest, short, long, env, help_ in _STR_FLAGS:
        rows.append((f"{short + ', ' if short else '    '}{long} VALUE", f"{help_} [${env}]" if env else help_))
    rows += [(f"    {long} VALUE", help_) for _d, _s, long, help_ in _OWN_FLAGS]
    for _dest, short, long, env, _fallback, help_ in _BOOL_FLAGS:
        rows.append((f"{short + ', ' if short else '    '}{long}", f"{help_} [${env}]" if env else help_))
    rows.append(("-h, --help", "print this help and exit"))
    width = max(shutil.get_terminal_size().columns - 2, 60)
    column = 24  # where the help starts, as argparse's; a longer flag puts its help on the next line
    lines = ["usage: netinit [FLAGS]", "       netinit explain|show|verify [ARGS]  (see their --help)", ""]
    lines += [_DESCRIPTION, "", "flags:"]
    for left, right in rows:
        first = f"  {left}"
        if len(first) > column - 2:
            lines.append(first)
            first = ""
        lines.append(
            textwrap.fill(
                right,
                width,
                initial_indent=first.ljust(column),
                subsequent_indent=" " * column,
                break_long_words=False,
                break_on_hyphens=False,
            )
        )
    lines += ["", textwrap.fill(_EPILOG, width, break_long_words=False, break_on_hyphens=False)]
    return "\n".join(lines)


def _env_bool(env: Mapping[str, str], name: str) -> bool | None:
    raw = env.get(name)
    if raw is None or raw == "":
        return None
    return _go_bool(f"env {name}", raw)


def parse_options(argv: Sequence[str], env: Mapping[str, str]) -> RawOptions:
    """Merge flags and env vars as istio-iptables binds them: a flag wins over its env var, and an additional env
    var (``ISTIO_META_DNS_CAPTURE``, ``INVALID_DROP``, ``ISTIO_DUAL_STACK``) wins over the primary one."""
    given, explicit, _log_targets = parse_flags(argv)
    values: dict[str, str] = {}
    for dest, _short, _long, env_name, _help in _STR_FLAGS:
        v = given.get(dest)
        if v is None and env_name:
            v = env.get(env_name)
        if v is not None:
            values[dest] = v
    flags: dict[str, bool] = {}
    for dest, _short, _long, env_name, additional, _help in _BOOL_FLAGS:
        b = explicit.get(dest)
        if b is None and additional:
            b = _env_bool(env, additional)
        if b is None and env_name:
            b = _env_bool(env, env_name)
        flags[dest] = bool(b)
    for name in (
        "ISTIO_OUTBOUND_OWNER_GROUPS",
        "ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE",
        "ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR",
        "ENVOY_USER",
    ):
        if name in env:
            values[name] = env[name]
    return RawOptions(values=values, flags=flags, pid=given.get("pid"), applier=given.get("applier", "restore"))
