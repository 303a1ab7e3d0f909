"""``netinit explain | show | verify``: the debugging commands' edge - arguments, where the rules come from,
output. The thinking is in the pure modules (``explain``, ``show``, ``verify``); this module only does I/O.

Imported by ``netinit.__main__`` only when one of these words comes first, so the init container's apply path
never pays for it. Rules come from one of three places, all as iptables-save text:

- the live namespace (the current one, ``--network-namespace NAME|PATH`` or ``--pid PID``), read with
  ``ip(6)tables-{legacy,nft}-save`` through the ``Runner`` seam - or, when netinit's rules there are native
  nftables tables (``--native-nftables``), with ``nft list ruleset inet``, translated back by ``nft_read``;
- a saved dump (``--rules-file``/``--rules-file6``: iptables-save output from a bug report);
- the plan for netinit capture flags given on the same command line (no privileges needed).
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import sys
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple, NoReturn

from netinit.apply import netns
from netinit.apply.facts import host_facts
from netinit.apply.iptables import Backend
from netinit.apply.runner import Runner, find_executable
from netinit.core.config import CaptureConfig, HostFacts, resolve
from netinit.core.flags import RawOptions, parse_options
from netinit.core.plan import FAMILIES, Family, plan
from netinit.debug.model import NOT_LO, Addr, Connection, Direction, load_tables
from netinit.debug.show import reconstruct
from netinit.debug.verdict import Explanation, Verdict
from netinit.debug.verify import Drift, Report, compare
from netinit.debug.walker import explain
from netinit.errors import BackendError, ConfigError, NetinitError
from netinit.rules.save import planned_save

COMMANDS = ("explain", "show", "verify")
EXIT_DRIFT = 1


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise ConfigError(f"{self.prog}: {message}")


class Rules(NamedTuple):
    """The rules to look at: iptables-save text per family, and where it came from."""

    texts: Mapping[Family, str]
    source: str  # live | file | plan
    origin: str  # in words, for the output
    flavor: str | None = None
    notes: tuple[str, ...] = ()
    config: CaptureConfig | None = None  # the plan's config (source "plan")


def _print(msg: str) -> None:
    print(f"netinit: {msg}", file=sys.stderr)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--network-namespace", metavar="NAME|PATH", help="read the rules of this namespace")
    p.add_argument("--pid", metavar="PID", help="read the rules of this process's network namespace")
    p.add_argument("--force-iptables-binary", choices=("legacy", "nft"), help="read this flavour (default: detect)")
    p.add_argument("--rules-file", metavar="FILE", help="IPv4 iptables-save output to read instead ('-': stdin)")
    p.add_argument("--rules-file6", metavar="FILE", help="IPv6 ip6tables-save output to read instead")
    p.add_argument("--json", action="store_true", help="machine-readable output")


_FLAGS_EPILOG = (
    "Any netinit capture flag (see `netinit --help`) may be added: the rules then come from the plan for "
    "those flags instead of the live namespace."
)


def build_parser(cmd: str) -> argparse.ArgumentParser:
    if cmd == "explain":
        p = _Parser(
            prog="netinit explain",
            allow_abbrev=False,
            description="Walk one connection through the capture rules and say where it ends up, and why.",
            epilog=_FLAGS_EPILOG,
        )
        p.add_argument("--direction", choices=("inbound", "outbound"), required=True)
        p.add_argument("--dst", required=True, metavar="IP:PORT", help="destination ([v6]:PORT for IPv6)")
        p.add_argument("--src", metavar="IP[:PORT]", help="source address (and port); outbound: the bound address")
        p.add_argument("--proto", choices=("tcp", "udp"), default="tcp")
        p.add_argument("--uid", type=int, help="outbound: the sending socket's uid")
        p.add_argument("--gid", type=int, help="outbound: the sending socket's gid (default: --uid)")
        p.add_argument("--in-iface", metavar="IFACE", help="inbound: the interface it arrives on")
        p.add_argument("--out-iface", metavar="IFACE", help="outbound: the interface it leaves by (lo: to this pod)")
        p.add_argument("--mark", type=lambda v: int(v, 0), default=0, help="the socket's SO_MARK")
        p.add_argument("-v", "--verbose", action="store_true", help="also list every rule that did not match")
    elif cmd == "show":
        p = _Parser(
            prog="netinit show",
            allow_abbrev=False,
            description="Read the live capture rules back into the netinit flags and Istio annotations that "
            "produce them; flag anything that is not netinit's or not reproducible.",
        )
    else:
        p = _Parser(
            prog="netinit verify",
            allow_abbrev=False,
            description="Compare the live rules with the plan for the given capture flags (or a pod's istio-init); "
            "report missing, extra, reordered and changed rules. Exit 0: as planned; 1: drift; 2: bad input.",
            epilog="Capture flags and their env vars are read as `netinit` reads them.",
        )
        p.add_argument("--from-pod", metavar="FILE", help="take the flags from this pod manifest's istio-init")
        p.add_argument("--config-dir", metavar="DIR", help="with --from-pod: the injector config of the cluster")
    _common(p)
    return p


def run(cmd: str, argv: Sequence[str], env: Mapping[str, str], runner: Runner) -> int:
    """Entry from ``netinit.__main__``: ``netinit CMD ARGS``. Returns the exit code."""
    try:
        ns, extra = build_parser(cmd).parse_known_args(list(argv))
        if cmd == "show":
            if extra:
                raise ConfigError(f"netinit show: unrecognized arguments: {' '.join(extra)}")
            return _show(ns, runner)
        if cmd == "explain":
            return _explain(ns, extra, env, runner)
        return _verify(ns, extra, env, runner)
    except NetinitError as e:
        print(str(e), file=sys.stderr)
        return e.exit_code


# --- where the rules come from --------------------------------------------------------------------------------


def _enter(ns: argparse.Namespace) -> tuple[str | None, int | None]:
    pid = None
    if ns.pid is not None:
        if not (str(ns.pid).isascii() and str(ns.pid).isdigit()):
            raise ConfigError(f"netinit: invalid value for --pid: {ns.pid!r} (expected a process id)")
        pid = int(ns.pid)
    if pid is not None and ns.network_namespace:
        raise ConfigError("netinit: --network-namespace and --pid are mutually exclusive")
    path = netns.netns_path(ns.network_namespace, pid)
    if path is not None:
        netns.enter(path)
    return ns.network_namespace, pid


def _read_file(path: str) -> str:
    try:
        if path == "-":
            return sys.stdin.read()
        with open(path) as f:
            return f.read()
    except OSError as e:
        raise ConfigError(f"netinit: cannot read {path}: {e.strerror}") from None


def read_live(runner: Runner, forced: str | None = None) -> Rules:
    """Both families of the flavour that holds the rules (the one holding netinit's, else any, else nft).

    Both flavours are read because the kernel evaluates both: rules in the other one are reported, not hidden.
    Without netinit's chains in either flavour (and no ``forced`` flavour), netinit's native nftables tables are
    read instead when present, as the iptables rules they were rendered from.
    """
    got: dict[str, dict[Family, str]] = {}
    problems: list[str] = []
    for flavor in [forced] if forced else ["legacy", "nft"]:
        b = Backend(flavor)
        cmds = [b.save_cmd(f)[0] for f in FAMILIES]
        missing = [c for c in cmds if find_executable(c) is None]
        if missing:
            problems.append(f"{', '.join(missing)} not found")
            continue
        texts: dict[Family, str] = {}
        for fam in FAMILIES:
            res = runner.run(b.save_cmd(fam))
            if res.returncode != 0:
                problems.append(f"{' '.join(b.save_cmd(fam))} failed: {res.stderr.strip()}")
                break
            texts[fam] = res.stdout
        else:
            got[flavor] = texts

    def holds(flavor: str, what: str) -> bool:
        return any(line.startswith(what) for t in got[flavor].values() for line in t.splitlines())

    ours = [f for f in got if holds(f, ":ISTIO_")]
    anything = [f for f in got if holds(f, "-A ")]
    native = None if ours or forced else _native_tables(runner)
    if native:
        return _read_native(native, anything)
    if not got:
        raise BackendError(f"netinit: cannot read the rules: {'; '.join(problems)}")
    flavor = (ours or anything or (["nft"] if "nft" in got else list(got)))[0]
    notes = [
        f"iptables-{other} also holds rules: the kernel evaluates both flavours, these results read only "
        f"iptables-{flavor}"
        for other in got
        if other != flavor and other in anything
    ]
    if native is None and _native_nft_tables(runner):
        notes.append(
            "this namespace also has netinit's native nftables tables (inet istio-proxy-*), which these results do "
            "not read (they read netinit's iptables rules); check them with: netinit verify --native-nftables FLAGS"
        )
    return Rules(got[flavor], "live", f"live rules (iptables-{flavor})", flavor, tuple(notes))


def _native_nft_tables(runner: Runner) -> bool:
    """Whether netinit's native nftables tables are here (False when nft is not installed)."""
    from netinit.apply.nftables import nft_binary

    try:
        res = runner.run([nft_binary(), "list", "tables", "inet"])
    except BackendError:
        return False
    return res.returncode == 0 and "istio-proxy-" in res.stdout


def _native_tables(runner: Runner) -> dict[str, str]:
    """netinit's native nftables tables as ``nft`` lists them; none when nft is not installed or fails."""
    from netinit.apply.nftables import NftApplier, nft_binary

    try:
        return NftApplier(runner, nft_binary()).live()
    except BackendError:
        return {}


def _read_native(tables: Mapping[str, str], iptables_flavors: Sequence[str]) -> Rules:
    """Our native tables read back into the iptables rules they were rendered from (``nft_read``), so that
    explain/show/verify read them as they read iptables; a table that is not netinit's rendering is an error."""
    from netinit.rules.nft_read import save_texts

    texts = save_texts(tables)
    notes = [
        "read from netinit's native nftables tables (inet istio-proxy-*) with nft, as the iptables rules they were "
        "rendered from; netinit verify --native-nftables FLAGS compares the tables themselves with a plan"
    ]
    notes += [
        f"iptables-{f} also holds rules: the kernel evaluates them too, these results read only the native tables"
        for f in iptables_flavors
    ]
    return Rules(texts, "live", "live rules (native nftables)", "native-nftables", tuple(notes))


def _rules_from(ns: argparse.Namespace, runner: Runner) -> Rules:
    if ns.rules_file or ns.rules_file6:
        texts: dict[Family, str] = {}
        if ns.rules_file:
            texts[4] = _read_file(ns.rules_file)
        if ns.rules_file6:
            texts[6] = _read_file(ns.rules_file6)
        names = " and ".join(f for f in (ns.rules_file, ns.rules_file6) if f)
        return Rules(texts, "file", f"saved rules from {names}")
    _enter(ns)
    return read_live(runner, ns.force_iptables_binary)


def _facts(raw: RawOptions, netns_name: str | None, pid: int | None) -> HostFacts:
    """The namespace facts apply would plan with, without apply's strictness (no privileges needed)."""
    return host_facts(raw, netns_name, pid, strict=False)


def _plan_rules(raw: RawOptions, facts: HostFacts) -> Rules:
    cfg, _run = resolve(raw, facts, warn=_print)
    rs = plan(cfg)
    texts = {fam: planned_save(rs.family(fam)) for fam in rs.families()}
    return Rules(texts, "plan", "the plan for the given flags", config=cfg)


# --- explain --------------------------------------------------------------------------------------------------


def parse_endpoint(value: str, flag: str, need_port: bool) -> tuple[Addr, int | None]:
    """``IP``, ``IP:PORT``, ``[V6]:PORT`` or a bare IPv6 address."""
    host, port = value, None
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else None
    elif value.count(":") == 1:
        host, _, port = value.partition(":")
    try:
        addr = ipaddress.ip_address(host)
        p = int(port) if port is not None else None
    except ValueError:
        raise ConfigError(f"netinit: invalid value for {flag}: {value!r} (expected IP:PORT or [IPv6]:PORT)") from None
    if (p is not None and not 0 < p < 65536) or (need_port and p is None):
        raise ConfigError(f"netinit: invalid value for {flag}: {value!r} (expected a port 1-65535)")
    return addr, p


def _route(runner: Runner, dst: Addr, src: Addr | None = None, mark: int = 0) -> dict[str, Any] | str:
    """The kernel's route for ``dst`` (``ip -j route get``): a dict, or the error text."""
    argv = ["ip", "-j", "route", "get", str(dst)]
    if src is not None:
        argv += ["from", str(src)]
    if mark:
        argv += ["mark", str(mark)]
    res = runner.run(argv)
    if res.returncode != 0:
        return res.stderr.strip() or f"exit {res.returncode}"
    try:
        routes = json.loads(res.stdout)
        return dict(routes[0])
    except (ValueError, IndexError, TypeError):
        return f"unreadable `ip route get` output: {res.stdout[:80]!r}"


def _single_link(runner: Runner) -> str | None:
    res = runner.run(["ip", "-j", "link", "show", "up"])
    try:
        links = [link["ifname"] for link in json.loads(res.stdout) if link.get("ifname") != "lo"]
    except (ValueError, TypeError, KeyError):
        return None
    return links[0].split("@")[0] if len(links) == 1 else None


class Query(NamedTuple):
    """A connection as the user describes it (``netinit explain`` arguments), before defaults are filled in."""

    direction: Direction
    dst: str  # IP:PORT or [IPv6]:PORT
    src: str | None = None  # IP or IP:PORT
    proto: str = "tcp"
    uid: int | None = None
    gid: int | None = None  # default: uid
    in_iface: str | None = None
    out_iface: str | None = None
    mark: int = 0


def build_connection(q: Query, live: bool, runner: Runner) -> tuple[Connection | None, list[str], str | None]:
    """Fill in what the user did not say - from the kernel's routes when ``live`` (we are in the namespace),
    else from stated assumptions. Returns (connection, notes, why the connection cannot be made at all)."""
    dst, dport = parse_endpoint(q.dst, "--dst", need_port=True)
    src, sport = parse_endpoint(q.src, "--src", need_port=False) if q.src else (None, None)
    if src is not None and src.version != dst.version:
        raise ConfigError("netinit: --src and --dst must be of the same IP family")
    assert dport is not None
    gid = q.gid if q.gid is not None else q.uid
    notes: list[str] = []
    conn = Connection(q.direction, dst, dport, q.proto, src, sport, q.uid, gid, mark=q.mark)
    if q.direction == "outbound":
        out_iface = q.out_iface
        if live and (out_iface is None or src is None):
            route = _route(runner, dst, src, q.mark)
            if isinstance(route, str):
                return None, notes, f"no route to {dst}: connect() fails before any rule is consulted ({route})"
            out_iface = out_iface or str(route.get("dev", "")) or None
            if src is None and route.get("prefsrc"):
                src = ipaddress.ip_address(route["prefsrc"])
                notes.append(f"source {src} and interface {out_iface}: the kernel's route to {dst}")
        elif out_iface is None:
            out_iface = "lo" if dst.is_loopback else NOT_LO
            if not dst.is_loopback:
                notes.append(f"assuming {dst} is not an address of this pod (else pass --out-iface lo)")
        if src is None and out_iface == "lo":
            src = dst if not dst.is_loopback else ipaddress.ip_address("127.0.0.1" if dst.version == 4 else "::1")
            notes.append(f"source {src}: the kernel's choice for a local destination (pass --src to change it)")
        return conn._replace(out_iface=out_iface, src=src), notes, None
    in_iface = q.in_iface
    if in_iface is None and live:
        if src is not None:
            route = _route(runner, src)
            in_iface = str(route["dev"]) if isinstance(route, dict) and route.get("dev") else None
        in_iface = in_iface or _single_link(runner)
        if in_iface:
            notes.append(f"arriving on {in_iface} (the interface this namespace reaches the source by)")
    if in_iface is None:
        in_iface = NOT_LO
    if in_iface == "lo":
        notes.append("traffic from this pod to itself is outbound: explain it with --direction outbound")
    return conn._replace(in_iface=in_iface), notes, None


def _explain(ns: argparse.Namespace, extra: list[str], env: Mapping[str, str], runner: Runner) -> int:
    if extra:
        raw = parse_options(extra, env)
        name, pid = _enter(ns)  # a no-op without --network-namespace/--pid
        rules = _plan_rules(raw, _facts(raw, name, pid))
    else:
        rules = _rules_from(ns, runner)
    in_namespace = rules.source == "live" or bool(ns.network_namespace or ns.pid)
    q = Query(ns.direction, ns.dst, ns.src, ns.proto, ns.uid, ns.gid, ns.in_iface, ns.out_iface, ns.mark)
    conn, notes, unroutable = build_connection(q, in_namespace, runner)
    fam: Family = 6 if ipaddress.ip_address(parse_endpoint(ns.dst, "--dst", True)[0]).version == 6 else 4
    if conn is None:
        assert unroutable is not None
        dst, _ = parse_endpoint(ns.dst, "--dst", True)
        c = Connection(ns.direction, dst, 0)
        x = Explanation(c, fam, (), Verdict("unroutable", unroutable), ())
    else:
        if fam not in rules.texts and rules.source == "file":
            raise ConfigError(f"netinit: an IPv{fam} destination needs --rules-file{'6' if fam == 6 else ''}")
        if fam not in rules.texts and rules.source == "plan":
            notes.append("these flags program no IPv6 rules here (--dual-stack, or an IPv6-only pod)")
        x = explain(load_tables(rules.texts.get(fam, ""), fam), conn)
    all_notes = [*notes, *rules.notes, *x.notes]
    if ns.json:
        doc = x.to_json()
        doc["rules"] = {"source": rules.source, "origin": rules.origin, "flavor": rules.flavor}
        doc["notes"] = all_notes
        print(json.dumps(doc, indent=2))
    else:
        print(f"rules: {rules.origin}, IPv{fam}")
        print(x._replace(notes=tuple(all_notes)).render(verbose=ns.verbose))
    return 0


# --- show -----------------------------------------------------------------------------------------------------


def _tproxy_table(runner: Runner, mark: int) -> int | None:
    res = runner.run(["ip", "-j", "rule", "show"])
    try:
        for r in json.loads(res.stdout):
            if int(str(r.get("fwmark", "-1")), 0) == mark and str(r.get("table", "")).isdigit():
                return int(r["table"])
    except (ValueError, TypeError):
        return None
    return None


def _show(ns: argparse.Namespace, runner: Runner) -> int:
    rules = _rules_from(ns, runner)
    rec = reconstruct(rules.texts)
    if rules.source == "live" and "TPROXY" in rec.argv:
        mark = int(rec.argv[rec.argv.index("-t") + 1]) if "-t" in rec.argv else 1337
        rec = reconstruct(rules.texts, _tproxy_table(runner, mark))
    if ns.json:
        doc = rec.to_json()
        doc["rules"] = {"source": rules.source, "origin": rules.origin, "flavor": rules.flavor}
        doc["notes"] = [*rules.notes, *rec.notes]
        print(json.dumps(doc, indent=2))
        return 0
    print(f"rules: {rules.origin}")
    for n in rules.notes:
        print(f"note: {n}")
    if not rec.found:
        for f in rec.findings:
            print(f)
        return 0
    print(f"flags: {_shell(rec.argv)}")
    if rec.env:
        print("env:   " + " ".join(f"{k}={_shell([v])}" for k, v in rec.env.items()))
    fams = [f"IPv{f}" for f, on in ((4, rec.facts.has_global_ipv4), (6, rec.facts.has_global_ipv6)) if on]
    print(f"families: {', '.join(fams)}")
    print("annotations:")
    for k, v in rec.annotations.items():
        print(f"  {k}: {json.dumps(v)}")
    for n in rec.notes:
        print(f"note: {n}")
    print(
        "reproducible: yes - these flags plan exactly the live rules of netinit's"
        if rec.reproducible
        else "reproducible: NO - see below"
    )
    for f in rec.findings:
        print(f"! {f}")
    return 0


def _shell(argv: Sequence[str]) -> str:
    import shlex

    return " ".join(shlex.quote(a) for a in argv)


# --- verify ---------------------------------------------------------------------------------------------------


def pod_capture_args(path: str, config_dir: str | None) -> tuple[list[str], dict[str, str], list[str]]:
    """A pod manifest -> its istio-init's args and env; an un-injected pod is injected first (the injector's
    own rendering, with ``config_dir``). Imports the injector: only this path pays for it."""
    import yaml

    from injector.core.config import load_config
    from injector.core.workloads import Options, inject_object, iter_pods
    from injector.errors import InjectorError

    try:
        docs = [d for d in yaml.safe_load_all(_read_file(path)) if d is not None]
    except yaml.YAMLError as e:
        raise ConfigError(f"netinit: {path} is not valid YAML: {e}") from None
    pods = [p for d in docs for p in iter_pods(d)]
    if not pods:
        raise ConfigError(f"netinit: {path} holds no pod or pod template")
    notes = [f"{path} holds {len(pods)} pods; using the first"] if len(pods) > 1 else []
    pod = pods[0]
    init = _istio_init(pod)
    if init is None:
        warnings: list[str] = []
        try:
            cfg = load_config(config_dir)
            doc = {"apiVersion": "v1", "kind": "Pod", "metadata": pod.get("metadata") or {}, "spec": pod.get("spec")}
            injected = inject_object(doc, Options(cfg), warnings.append)
        except InjectorError as e:
            raise ConfigError(f"netinit: cannot render the pod's istio-init: {e}") from None
        init = _istio_init(injected)
        if init is None:
            why = "; ".join(warnings) or "the injector adds no istio-init (interceptionMode NONE?)"
            raise ConfigError(f"netinit: {path}: no istio-init to verify against: {why}")
        notes.append("istio-init args rendered by the injector from the pod's annotations")
    args = [str(a) for a in [*(init.get("command") or [])[1:], *(init.get("args") or [])]]
    while args and not args[0].startswith("-"):
        args.pop(0)  # istio-iptables / netinit program names
    dropped = [a for a in args if a.startswith(("--log_output_level", "--log_as_json"))]
    if dropped:
        notes.append(f"ignored logging flags netinit does not take: {' '.join(dropped)}")
    args = [a for a in args if a not in dropped]
    env = {str(e["name"]): str(e["value"]) for e in init.get("env") or [] if "name" in e and "value" in e}
    return args, env, notes


def _istio_init(pod: Mapping[str, Any]) -> Mapping[str, Any] | None:
    spec = pod.get("spec") or {}
    for c in [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]:
        if isinstance(c, dict) and c.get("name") == "istio-init":
            return c
    return None


def _routing_drift(cfg: CaptureConfig, runner: Runner) -> list[Drift]:
    """What apply sets up outside iptables: the TPROXY policy route, and ::6 on lo for IPv6."""
    out: list[Drift] = []
    fams: tuple[Family, ...] = (4, 6) if cfg.enable_ipv6 else (4,)
    if cfg.mode == "TPROXY" and cfg.inbound_ports:
        for fam in fams:
            flag = ["-6"] if fam == 6 else []
            rules = runner.run(["ip", *flag, "-j", "rule", "show"])
            want = f"fwmark {cfg.tproxy_mark:#x} lookup {cfg.tproxy_route_table}"
            try:
                found = any(
                    int(str(r.get("fwmark", "-1")), 0) == cfg.tproxy_mark
                    and str(r.get("table")) == str(cfg.tproxy_route_table)
                    for r in json.loads(rules.stdout or "[]")
                )
            except ValueError:
                found = False
            if not found:
                out.append(Drift(fam, "routing", "ip rule", "missing", planned=want, planned_pos=1))
            routes = runner.run(["ip", *flag, "-j", "route", "show", "table", str(cfg.tproxy_route_table)])
            try:
                local = any(
                    r.get("type") == "local" and r.get("dst") == "default" for r in json.loads(routes.stdout or "[]")
                )
            except ValueError:
                local = False
            if not local:
                want = f"local default dev lo table {cfg.tproxy_route_table}"
                out.append(Drift(fam, "routing", "ip route", "missing", planned=want, planned_pos=1))
    if cfg.enable_ipv6:
        res = runner.run(["ip", "-6", "-j", "addr", "show", "dev", "lo"])
        if '"::6"' not in res.stdout:
            out.append(Drift(6, "routing", "lo", "missing", planned="address ::6/128", planned_pos=1))
    return out


def _verify(ns: argparse.Namespace, extra: list[str], env: Mapping[str, str], runner: Runner) -> int:
    notes: list[str] = []
    if ns.from_pod:
        if extra:
            raise ConfigError("netinit verify: --from-pod takes the flags from the pod; do not add capture flags")
        args, pod_env, notes = pod_capture_args(ns.from_pod, ns.config_dir)
        raw = parse_options(args, pod_env)
        flags_text = _shell(args)
    else:
        raw = parse_options(extra, env)
        flags_text = _shell(extra)
    if raw.flags.get("native_nftables") and not (ns.rules_file or ns.rules_file6):
        name, pid = _enter(ns)
        cfg, _run = resolve(raw, _facts(raw, name, pid), warn=_print)
        return _verify_nft(cfg, runner, flags_text, notes, ns.json)
    if ns.rules_file or ns.rules_file6:
        # A dump has no addresses to look at: the families are the files given.
        facts = _facts(raw, None, None)._replace(
            has_global_ipv4=bool(ns.rules_file), has_global_ipv6=bool(ns.rules_file6)
        )
        rules = _rules_from(ns, runner)
    else:
        name, pid = _enter(ns)
        facts = _facts(raw, name, pid)
        rules = read_live(runner, ns.force_iptables_binary)
    cfg, _run = resolve(raw, facts, warn=_print)
    report = compare(plan(cfg), rules.texts)
    if rules.source == "live":
        report = Report(report.drift + tuple(_routing_drift(cfg, runner)), report.warnings, report.checked)
    notes += rules.notes
    if ns.json:
        doc = report.to_json()
        doc["flags"] = flags_text
        doc["rules"] = {"source": rules.source, "origin": rules.origin, "flavor": rules.flavor}
        doc["notes"] = notes
        print(json.dumps(doc, indent=2))
    else:
        print(f"rules: {rules.origin}; plan: netinit {flags_text}")
        print(f"checked: {', '.join(report.checked) or 'nothing'}")
        for d in report.drift:
            print(f"DRIFT {d.describe()}")
        for w in report.warnings:
            print(f"warning: {w}")
        for note in notes:
            print(f"note: {note}")
        n = len(report.drift)
        print("ok: the live rules are as planned" if report.ok else f"drift: {n} difference{'s' * (n != 1)}")
    return 0 if report.ok else EXIT_DRIFT


def _verify_nft(cfg: CaptureConfig, runner: Runner, flags_text: str, notes: list[str], as_json: bool) -> int:
    """verify --native-nftables: our inet tables as nft lists them against the plan's rendering, table by
    table, with the same tolerance for this nft's spelling that apply uses."""
    import difflib

    from netinit.apply.nftables import NftApplier, differing_tables, nft_binary
    from netinit.rules import nft

    applier = NftApplier(runner, nft_binary())
    want, live = nft.render_tables(plan(cfg)), applier.live()
    differing = differing_tables(want, live)
    canon = applier.canonical({n: want[n] for n in differing if n in want and n in live}) if differing else None
    if canon is not None:
        differing = [n for n in differing if not (n in canon and canon[n] == nft.normalize(live[n]))]
    drift = []
    for name in differing:
        if name not in live:
            drift.append({"table": name, "kind": "missing", "diff": []})
        elif name not in want:
            drift.append({"table": name, "kind": "extra", "diff": []})
        else:
            lines = difflib.unified_diff(
                nft.normalize(want[name]), nft.normalize(live[name]), "plan", "live", lineterm=""
            )
            drift.append({"table": name, "kind": "changed", "diff": list(lines)[2:]})
    if as_json:
        doc = {"ok": not drift, "drift": drift, "flags": flags_text, "rules": {"source": "live", "flavor": "nft"}}
        print(json.dumps({**doc, "notes": notes}, indent=2))
    else:
        print(f"rules: nft list ruleset inet (native nftables); plan: netinit {flags_text}")
        print(f"checked: {', '.join(f'inet {n}' for n in sorted(set(want) | set(live))) or 'nothing'}")
        for d in drift:
            print(f"DRIFT table inet {d['table']}: {d['kind']}")
            for line in d["diff"]:
                print(f"    {line}")
        for note in notes:
            print(f"note: {note}")
        print("ok: the live rules are as planned" if not drift else f"drift: {len(drift)} table(s) differ")
    return 0 if not drift else EXIT_DRIFT
