"""``netinit explain | show | verify``: the debugging commands' edge - arguments, dispatch, output. The thinking is
in the pure modules (``walker``, ``show``, ``verify``); reading the system is ``live``'s, reading a pod ``pod``'s.

Imported by ``netinit.__main__`` only when one of these words comes first, so the init container's apply path
never pays for it. The rules come from one of three places, all as iptables-save text (a ``RuleSource``):

- the live namespace (the current one, ``--network-namespace NAME|PATH`` or ``--pid PID``), read with
  ``ip(6)tables-{legacy,nft}-save`` through the ``Runner`` seam - or, when netinit's rules there are native
  nftables tables (``--native-nftables``), with ``nft list ruleset inet``, translated back by ``nft_read``
  (``netinit.debug.live.read_live``);
- a saved dump (``--rules-file``/``--rules-file6``: iptables-save output from a bug report);
- the plan for netinit capture flags given on the same command line (no privileges needed).
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import sys
from collections.abc import Mapping, Sequence
from typing import NoReturn

from netinit.apply import netns
from netinit.apply.facts import host_facts
from netinit.apply.runner import Runner
from netinit.core.config import CaptureConfig, HostFacts, resolve
from netinit.core.flags import CAPTURE_ENV, RawOptions, parse_options
from netinit.core.plan import Family, plan
from netinit.debug.connection import Query, build_connection, parse_endpoint
from netinit.debug.live import RuleSource, read_file, read_live, routing_drift, tproxy_table
from netinit.debug.model import Connection, load_tables
from netinit.debug.show import reconstruct
from netinit.debug.verdict import Explanation, Verdict
from netinit.debug.verify import Report, compare
from netinit.debug.walker import explain
from netinit.errors import ConfigError, NetinitError
from netinit.rules.save import planned_save

EXIT_DRIFT = 1


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise ConfigError(f"{self.prog}: {message}")


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
        p.add_argument(
            "--from-pod",
            metavar="FILE",
            help="take the flags from this injected pod's istio-init (JSON, e.g. kubectl get pod NAME -o json; "
            "YAML where PyYAML is installed)",
        )
        p.add_argument("--config-dir", help=argparse.SUPPRESS)  # gone: netinit no longer injects (see _verify)
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


def _rules_from(ns: argparse.Namespace, runner: Runner) -> RuleSource:
    if ns.rules_file or ns.rules_file6:
        texts: dict[Family, str] = {}
        if ns.rules_file:
            texts[4] = read_file(ns.rules_file)
        if ns.rules_file6:
            texts[6] = read_file(ns.rules_file6)
        names = " and ".join(f for f in (ns.rules_file, ns.rules_file6) if f)
        return RuleSource(texts, "file", f"saved rules from {names}")
    _enter(ns)
    return read_live(runner, ns.force_iptables_binary)


def _facts(raw: RawOptions, netns_name: str | None, pid: int | None) -> HostFacts:
    """The namespace facts apply would plan with, without apply's strictness (no privileges needed)."""
    return host_facts(raw, netns_name, pid, strict=False)


def _plan_rules(raw: RawOptions, facts: HostFacts) -> RuleSource:
    cfg, _run = resolve(raw, facts, warn=_print)
    rs = plan(cfg)
    texts = {fam: planned_save(rs.family(fam)) for fam in rs.families()}
    return RuleSource(texts, "plan", "the plan for the given flags", config=cfg)


# --- explain --------------------------------------------------------------------------------------------------


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


def _show(ns: argparse.Namespace, runner: Runner) -> int:
    rules = _rules_from(ns, runner)
    rec = reconstruct(rules.texts)
    if rules.source == "live" and "TPROXY" in rec.argv:
        mark = int(rec.argv[rec.argv.index("-t") + 1]) if "-t" in rec.argv else 1337
        rec = reconstruct(rules.texts, tproxy_table(runner, mark))
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


def _verify(ns: argparse.Namespace, extra: list[str], env: Mapping[str, str], runner: Runner) -> int:
    notes: list[str] = []
    if ns.config_dir is not None:
        raise ConfigError(
            "netinit verify: --config-dir is no longer taken: netinit reads the flags of an injected pod and never "
            "injects one; inject with sidecar-injector kube-inject --config-dir DIR -f FILE and pass its output "
            "to --from-pod"
        )
    if ns.from_pod:
        if extra:
            raise ConfigError("netinit verify: --from-pod takes the flags from the pod; do not add capture flags")
        from netinit.debug.pod import pod_capture_args

        args, pod_env, notes = pod_capture_args(ns.from_pod)
        raw = parse_options(args, pod_env)
        flags_text = _shell(args)
    else:
        if not extra and not any(e in env for e in CAPTURE_ENV):
            raise ConfigError(
                "netinit verify: no capture flags given, so there is nothing to compare the live rules with; pass the "
                "flags the pod runs netinit with (netinit verify -i '*' -b '*' ...), or --from-pod FILE, "
                "or use netinit show to read the live rules without a plan"
            )
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
        report = Report(report.drift + tuple(routing_drift(cfg, runner)), report.warnings, report.checked)
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
