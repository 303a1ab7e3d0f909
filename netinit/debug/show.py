"""``netinit show``: read the rules of a namespace back into the netinit flags (and Istio annotations) that
would produce them.

Pure: iptables-save text per family in, a ``Reconstruction`` out. The reading is heuristic - each setting is
recognised by the shape and position of the rules netinit writes for it - so it is checked rather than trusted:
the reconstructed flags are planned again and compared with the live rules (``netinit.debug.verify``). Anything that
plan does not account for is reported: foreign chains and rules (not netinit's), and rules of ours no flag
combination reproduces (hand edits, another tool, another version).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import Any, NamedTuple

from netinit.apply.engine import lookalikes
from netinit.core.config import HostFacts, config_from_flags
from netinit.core.plan import BUILTIN_CHAINS, FAMILIES, OWN_CHAINS, Family, Rule, RuleSet, plan
from netinit.debug.model import Tables, load_tables
from netinit.debug.verify import compare
from netinit.errors import ConfigError
from netinit.rules.save import parse_save

# Istio pod annotations for the flags the injector renders (injector/annotations.py: capture_args).
ANNOTATIONS = {
    "-m": "sidecar.istio.io/interceptionMode",
    "-i": "traffic.sidecar.istio.io/includeOutboundIPRanges",
    "-x": "traffic.sidecar.istio.io/excludeOutboundIPRanges",
    "-b": "traffic.sidecar.istio.io/includeInboundPorts",
    "-d": "traffic.sidecar.istio.io/excludeInboundPorts",
    "-q": "traffic.sidecar.istio.io/includeOutboundPorts",
    "-o": "traffic.sidecar.istio.io/excludeOutboundPorts",
    "-k": "traffic.sidecar.istio.io/kubevirtInterfaces",
    "-c": "traffic.sidecar.istio.io/excludeInterfaces",
}
INJECTOR_EXCLUDED_INBOUND = ("15090", "15021")  # always first in the injector's -d; the status port 15020 follows


class Reconstruction(NamedTuple):
    found: bool  # any rules of netinit's at all
    argv: tuple[str, ...]  # netinit flags
    env: Mapping[str, str]  # env-only settings
    facts: HostFacts  # what came from the namespace, not from flags (nameservers, address families)
    annotations: Mapping[str, str]  # the Istio pod annotations that render these flags
    notes: tuple[str, ...]  # how to read it (what is not visible in iptables, what annotations cannot express)
    findings: tuple[str, ...]  # not ours, or not reproducible
    reproducible: bool  # planning argv/env/facts gives exactly the live rules of ours

    def to_json(self) -> dict[str, Any]:
        return {
            "found": self.found,
            "argv": list(self.argv),
            "env": dict(self.env),
            "facts": {
                "has_global_ipv4": self.facts.has_global_ipv4,
                "has_global_ipv6": self.facts.has_global_ipv6,
                "dns_servers": list(self.facts.dns_servers),
            },
            "annotations": dict(self.annotations),
            "notes": list(self.notes),
            "findings": list(self.findings),
            "reproducible": self.reproducible,
        }


def _rules(t: Tables, table: str, chain: str) -> list[Rule]:
    return [e.rule for e in t.chains.get(table, {}).get(chain, ()) if e.rule is not None]


def _opt(r: Rule, name: str) -> str | None:
    for m in r.matches:
        for n, v in m.opts:
            if n == name:
                return v
    return None


def _topt(r: Rule, name: str) -> str | None:
    return dict(r.target_opts).get(name)


def _plain(r: Rule) -> bool:
    """No address, interface, protocol or match: only what the caller checks."""
    return not (r.src or r.dst or r.in_iface or r.out_iface or r.proto or r.matches)


def _owners(r: Rule) -> list[tuple[str, str]]:
    return [(n[:3], v) for m in r.matches if m.module == "owner" for n, v in m.opts]


def _only_owner(r: Rule) -> bool:
    return bool(r.matches) and all(m.module == "owner" for m in r.matches) and _plain(r._replace(matches=()))


def _only_dport(r: Rule) -> str | None:
    """``-p tcp|udp -m tcp|udp --dport P`` and nothing else -> P."""
    if r.src or r.dst or r.in_iface or r.out_iface or len(r.matches) != 1:
        return None
    m = r.matches[0]
    if m.module != r.proto or len(m.opts) != 1 or m.opts[0][0] != "dport" or m.opts[0][1].startswith("!"):
        return None
    return m.opts[0][1]


def _host(cidr: str) -> str:
    return str(ipaddress.ip_network(cidr, strict=False).network_address)


def _family_cidrs(t: Tables) -> tuple[list[str], list[str] | str, str | None]:
    """(excluded CIDRs, included CIDRs or '*', loopback CIDR) from one family's nat ISTIO_OUTPUT."""
    out = _rules(t, "nat", "ISTIO_OUTPUT")
    d_returns = [r.dst for r in out if r.target == "RETURN" and r.dst and _plain(r._replace(dst=None))]
    loopback = d_returns[0] if d_returns else None
    includes: list[str] | str = []
    for r in out:
        if r.target == "ISTIO_REDIRECT" and _plain(r):
            includes = "*"
        elif r.target == "ISTIO_REDIRECT" and r.dst and _plain(r._replace(dst=None)) and isinstance(includes, list):
            includes.append(r.dst)
    return [d for d in d_returns[1:] if d], includes, loopback


def reconstruct(texts: Mapping[Family, str], tproxy_route_table: int | None = None) -> Reconstruction:
    """Live rules -> the flags that plan them. ``tproxy_route_table`` comes from ``ip rule`` (not in iptables)."""
    tables: dict[Family, Tables] = {fam: load_tables(texts.get(fam, ""), fam) for fam in FAMILIES}
    has = {fam: tables[fam].has_ours() for fam in FAMILIES}
    foreign = _foreign(tables)
    if not any(has.values()):
        left = lookalikes({fam: parse_save(texts.get(fam, "")) for fam in FAMILIES}, RuleSet((), (), True))
        hint = [
            f"{x}: looks like a rule netinit writes (-c/-k, TPROXY) although no chain of netinit's is left; if netinit "
            "wrote it, remove it with netinit --cleanup-only and the flags of the original run"
            for x in left
        ]
        return Reconstruction(
            False, (), {}, HostFacts(), {}, (), ("no rules of netinit's in this namespace", *hint, *foreign), False
        )
    primary: Family = 4 if has[4] else 6
    t = tables[primary]
    notes: list[str] = []
    findings: list[str] = [
        f"IPv{fam} {e.table} {e.chain} #{e.num}: cannot read rule ({e.problem}): {e.line()}"
        for fam in (4, 6)
        for chains in tables[fam].chains.values()
        for c, es in chains.items()
        if c in OWN_CHAINS
        for e in es
        if e.rule is None
    ]

    def first_port(table: str, chain: str, target: str, opt: str, default: str) -> str:
        for r in _rules(t, table, chain):
            if r.target == target and _topt(r, opt):
                return (_topt(r, opt) or default).split("-")[0]
        return default

    proxy_port = first_port("nat", "ISTIO_REDIRECT", "REDIRECT", "to-ports", "15001")
    in_port = first_port("nat", "ISTIO_IN_REDIRECT", "REDIRECT", "to-ports", "15006")
    nat_inbound = _rules(t, "nat", "ISTIO_INBOUND")
    tunnel = (_only_dport(nat_inbound[0]) if nat_inbound and nat_inbound[0].target == "RETURN" else None) or "15008"
    mangle = t.chains.get("mangle", {})
    tproxy = (
        "ISTIO_TPROXY" in mangle
        or "ISTIO_DIVERT" in mangle
        or any(r.target == "CONNMARK" for r in _rules(t, "mangle", "PREROUTING"))
    )
    mark = 1337
    for r in _rules(t, "mangle", "ISTIO_TPROXY") + _rules(t, "mangle", "ISTIO_DIVERT"):
        spec = _topt(r, "tproxy-mark") or _topt(r, "set-xmark")
        if spec:
            mark = int(spec.split("/")[0], 0)
            break
    else:
        for r in _rules(t, "mangle", "PREROUTING"):
            if r.target == "CONNMARK" and _opt(r, "mark"):
                mark = int(_opt(r, "mark") or "0x539", 0)

    # Owners, in ISTIO_OUTPUT: per proxy uid then gid, a redirect-to-inbound rule, maybe an lo RETURN, a RETURN.
    out = _rules(t, "nat", "ISTIO_OUTPUT")
    uids = [v for r in out if r.target == "ISTIO_IN_REDIRECT" for k, v in _owners(r) if k == "uid"]
    gids = [v for r in out if r.target == "ISTIO_IN_REDIRECT" for k, v in _owners(r) if k == "gid"]
    gid_returns = [
        v for r in out if r.target == "RETURN" and _only_owner(r) for k, v in _owners(r) if k == "gid" and v[0] != "!"
    ]
    excluded_groups = list(gid_returns)
    for g in gids:
        if g in excluded_groups:
            excluded_groups.remove(g)
    included_groups = [
        [v[1:] for _, v in _owners(r)]
        for r in out
        if r.target == "RETURN" and _only_owner(r) and all(k == "gid" and v.startswith("!") for k, v in _owners(r))
    ]
    if not uids:
        findings.append("no proxy UID rule (-j ISTIO_IN_REDIRECT with --uid-owner) in nat ISTIO_OUTPUT")
        uids = ["1337"]
    out_exclude = [p for r in out if r.target == "RETURN" and r.proto == "tcp" and (p := _only_dport(r))]
    out_include = [p for r in out if r.target == "ISTIO_REDIRECT" and r.proto == "tcp" and (p := _only_dport(r))]

    excluded: list[str] = []
    included: list[str] | str = []
    loopback4 = None
    for fam in (4, 6):
        if not has[fam]:
            continue
        exc, inc, lo = _family_cidrs(tables[fam])
        excluded += exc
        if inc == "*":
            included = "*"
        elif isinstance(included, list) and isinstance(inc, list):
            included += inc
        if fam == 4:
            loopback4 = lo

    # Inbound: PREROUTING -> ISTIO_INBOUND in nat (REDIRECT) or mangle (TPROXY).
    itable = "mangle" if tproxy else "nat"
    captures_inbound = any(r.target == "ISTIO_INBOUND" for r in _rules(t, itable, "PREROUTING"))
    inbound = _rules(t, itable, "ISTIO_INBOUND")
    to = "ISTIO_TPROXY" if tproxy else "ISTIO_IN_REDIRECT"
    b: str = ""
    d: list[str] = []
    if captures_inbound:
        sends = [r for r in inbound if r.target == to]
        if any(_opt(r, "dport") is None for r in sends):
            b = "*"
        else:
            b = ",".join(_opt(r, "dport") or "" for r in sends)
        start = 1 if not tproxy else 0
        d = [p for r in inbound[start:] if r.target == "RETURN" and (p := _only_dport(r))]
        if b != "*":
            d = []

    excl_ifaces = [
        r.out_iface
        for r in _rules(t, "nat", "OUTPUT")
        if r.target == "RETURN" and r.out_iface and _plain(r._replace(out_iface=None))
    ]
    pre_returns = [
        r.in_iface
        for r in _rules(t, "nat", "PREROUTING")
        if r.target == "RETURN" and r.in_iface and _plain(r._replace(in_iface=None))
    ]
    virt = list(reversed(pre_returns[: max(0, len(pre_returns) - len(excl_ifaces))]))

    nat_dns = _rules(t, "nat", "ISTIO_OUTPUT_DNS")
    dns = "ISTIO_OUTPUT_DNS" in t.chains.get("nat", {}) or "ISTIO_OUTPUT_DNS" in t.chains.get("raw", {})
    all_dns = any(r.target == "REDIRECT" and r.dst is None for r in nat_dns)
    servers: list[str] = []
    if dns and not all_dns:
        for fam in FAMILIES:
            for table, chain in (("nat", "ISTIO_OUTPUT_DNS"), ("raw", "ISTIO_OUTPUT_DNS")):
                for r in _rules(tables[fam], table, chain):
                    if r.dst and _host(r.dst) not in servers:
                        servers.append(_host(r.dst))
    drop_invalid = "ISTIO_DROP" in mangle

    argv = ["-p", proxy_port, "-z", in_port, "-u", ",".join(uids), "-m", "TPROXY" if tproxy else "REDIRECT"]
    if gids and gids != uids:
        argv += ["-g", ",".join(gids)]
    if tunnel != "15008":
        argv += ["-e", tunnel]
    if tproxy and mark != 1337:
        argv += ["-t", str(mark)]
    if tproxy and tproxy_route_table is not None and tproxy_route_table != 133:
        argv += ["-r", str(tproxy_route_table)]
    inc_text = included if isinstance(included, str) else ",".join(included)
    for flag, value in (
        ("-i", inc_text),
        ("-x", ",".join(excluded)),
        ("-b", b),
        ("-d", ",".join(d)),
        ("-q", ",".join(out_include)),
        ("-o", ",".join(out_exclude)),
        ("-k", ",".join(virt)),
        ("-c", ",".join(excl_ifaces)),
    ):
        if value:
            argv += [flag, value]
    for flag, on in (
        ("--redirect-dns", dns),
        ("--capture-all-dns", all_dns),
        ("--drop-invalid", drop_invalid),
        ("--dual-stack", has[4] and has[6]),
    ):
        if on:
            argv.append(flag)
    env: dict[str, str] = {}
    if included_groups:
        env["ISTIO_OUTBOUND_OWNER_GROUPS"] = ",".join(included_groups[0])
    if excluded_groups:
        env["ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE"] = ",".join(excluded_groups)
    if loopback4 and loopback4 != "127.0.0.1/32":
        env["ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR"] = loopback4
    facts = HostFacts(has_global_ipv4=has[4], has_global_ipv6=has[6], dns_servers=tuple(servers))

    if servers:
        notes.append(f"--redirect-dns captures the resolv.conf nameservers {', '.join(servers)} (a fact, not a flag)")
    if has[6] and not has[4]:
        notes.append("IPv6 only: the pod has no global IPv4 address")
    if tproxy and tproxy_route_table is None:
        notes.append("-r (TPROXY route table) lives in `ip rule`, not in iptables: not read")
    if captures_inbound and b != "*":
        notes.append("-d (excludeInboundPorts) is only written with -b '*': not visible here")
    annotations, ann_notes = _annotations(argv)
    notes += ann_notes

    reproducible = True
    try:
        ruleset = plan(config_from_flags(argv, env, facts))
    except ConfigError as e:
        findings.append(f"not reproducible: the reconstructed flags are invalid: {e}")
        reproducible = False
    else:
        report = compare(ruleset, texts)
        findings += [f"not reproducible: {d.describe()}" for d in report.drift]
        reproducible = report.ok
        findings += [w for w in report.warnings if "foreign rule" not in w]
        planned = {(fam, r.table, r.chain, r.spec()) for fam in ruleset.families() for r in ruleset.family(fam)}
        foreign += _foreign_builtin(tables, planned)
    return Reconstruction(
        True, tuple(argv), env, facts, annotations, tuple(notes), tuple(foreign + findings), reproducible
    )


def _foreign(tables: Mapping[Family, Tables]) -> list[str]:
    out = []
    for fam, t in tables.items():
        for table, chains in t.chains.items():
            for chain, entries in chains.items():
                if chain not in BUILTIN_CHAINS and chain not in OWN_CHAINS:
                    out.append(f"IPv{fam} {table} {chain}: foreign chain ({len(entries)} rules): not netinit's")
    return out


def _foreign_builtin(tables: Mapping[Family, Tables], planned: set[tuple[Family, str, str, str]]) -> list[str]:
    out = []
    for fam, t in tables.items():
        for table, chains in t.chains.items():
            for chain in sorted(BUILTIN_CHAINS & set(chains)):
                for e in chains[chain]:
                    ours = (fam, table, chain, e.spec) in planned or (
                        e.rule is not None and e.rule.target in OWN_CHAINS
                    )
                    if not ours:
                        out.append(f"IPv{fam} {table} {chain} #{e.num}: foreign rule, not netinit's: {e.line()}")
    return out


def _annotations(argv: list[str]) -> tuple[dict[str, str], list[str]]:
    """The Istio annotations that make the injector render these flags, and what they cannot express."""
    values: dict[str, str] = {}
    i = 0
    while i < len(argv):
        if argv[i].startswith("--"):
            i += 1
            continue
        values[argv[i]] = argv[i + 1]
        i += 2
    ann: dict[str, str] = {}
    notes: list[str] = []
    for flag, name in ANNOTATIONS.items():
        v = values.get(flag, "")
        if flag == "-d":
            items = v.split(",") if v else []
            if items[:2] == list(INJECTOR_EXCLUDED_INBOUND):
                items = [p for p in items[2:] if p != "15020"]
            elif items:
                notes.append("-d does not start with 15090,15021: not what the injector renders")
            v = ",".join(items)
        if flag == "-m" or v:
            ann[name] = v
    if values.get("-u", "1337") != "1337":
        notes.append(f"-u {values['-u']}: the injector renders it from the istio-proxy container's runAsUser")
    unsettable = [f for f in ("-p", "-z") if values.get(f) not in ("15001", "15006")]
    unsettable += [f for f in ("-g", "-e", "-t", "-r") if f in values]
    unsettable += [f for f in ("--redirect-dns", "--capture-all-dns", "--drop-invalid") if f in argv]
    if unsettable:
        notes.append(f"not set by pod annotations (install-wide settings or env): {' '.join(unsettable)}")
    return ann, notes
