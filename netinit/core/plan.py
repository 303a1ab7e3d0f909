"""``plan(config) -> RuleSet``: the rules istio-iptables programs, in its order. Pure; no I/O.

Each rule is structured data (addresses, interfaces, protocol, match modules, target) so that one plan
feeds several consumers: iptables-restore text (apply and ``--dry-run``), python-iptables objects, native
nftables (``netinit.rules.nft``) and the ``netinit explain`` matcher. ``Rule.spec()`` prints a rule exactly as
``iptables-save`` prints it (legacy and nft print the same text), so the live state can be compared with the plan
line by line; ``netinit.rules.save`` reads that text back.

The order of the calls below is the order of istio-iptables' ``Run()`` (tools/istio-iptables/pkg/capture),
studied from its source; the expectations in tests/unit/test_plan.py are our own.
"""

from __future__ import annotations

from netinit.core.config import DNS_LISTENER_PORT, CaptureConfig
from netinit.core.values import WILDCARD, address_text
from netinit.typing_lite import NamedTuple

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable
    from typing import Literal

    from netinit.core.values import Network

    Family = Literal[4, 6]
else:
    Family = int  # what annotations name; at run time no Literal is needed (nor typing, to make one)

FAMILIES: tuple[Family, ...] = (4, 6)
TABLE_ORDER = ("filter", "mangle", "nat", "raw")
BUILTIN_CHAINS = frozenset({"PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"})
# Every chain netinit may own; cleanup and drift detection consider exactly these.
OWN_CHAINS = frozenset(
    {
        "ISTIO_INBOUND",
        "ISTIO_REDIRECT",
        "ISTIO_IN_REDIRECT",
        "ISTIO_OUTPUT",
        "ISTIO_OUTPUT_DNS",
        "ISTIO_DIVERT",
        "ISTIO_TPROXY",
        "ISTIO_DROP",
    }
)
OUTBOUND_MARK = 1338


class Match(NamedTuple):
    """One ``-m module`` with its options; a value starting with ``!`` is negated."""

    module: str
    opts: tuple[tuple[str, str], ...]

    def render(self) -> str:
        parts = [f"-m {self.module}"]
        for name, value in self.opts:
            if value.startswith("!"):
                parts.append(f"! --{name} {value[1:]}")
            else:
                parts.append(f"--{name} {value}")
        return " ".join(parts)


class Rule(NamedTuple):
    table: str
    chain: str
    target: str
    target_opts: tuple[tuple[str, str | None], ...] = ()
    src: str | None = None  # "!" prefix negates
    dst: str | None = None
    in_iface: str | None = None
    out_iface: str | None = None
    proto: str | None = None
    matches: tuple[Match, ...] = ()
    insert_at: int | None = None  # None: append

    def spec(self) -> str:
        """The rule as ``iptables-save`` prints it, without ``-A CHAIN``."""
        parts: list[str] = []
        for flag, val in (
            ("-s", self.src),
            ("-d", self.dst),
            ("-i", self.in_iface),
            ("-o", self.out_iface),
            ("-p", self.proto),
        ):
            if val is not None:
                parts.append(f"! {flag} {val[1:]}" if val.startswith("!") else f"{flag} {val}")
        parts.extend(m.render() for m in self.matches)
        parts.append(f"-j {self.target}")
        for name, value in self.target_opts:
            parts.append(f"--{name}" if value is None else f"--{name} {value}")
        return " ".join(parts)

    def line(self) -> str:
        """The rule as a restore command (``-A``/``-I``)."""
        if self.insert_at is None:
            return f"-A {self.chain} {self.spec()}"
        return f"-I {self.chain} {self.insert_at} {self.spec()}"

    @property
    def jumps_to_own_chain(self) -> bool:
        return self.target in OWN_CHAINS


class RuleSet(NamedTuple):
    """The plan: rules per family in istio-iptables' order (appends and positional inserts)."""

    v4: tuple[Rule, ...]
    v6: tuple[Rule, ...]
    enable_ipv6: bool

    def family(self, fam: Family) -> tuple[Rule, ...]:
        return self.v4 if fam == 4 else self.v6

    def families(self) -> tuple[Family, ...]:
        return (4, 6) if self.enable_ipv6 else (4,)


def tcp(**opts: str) -> Match:
    return Match("tcp", tuple(opts.items()))


def udp(**opts: str) -> Match:
    return Match("udp", tuple(opts.items()))


def owner(kind: str, ident: str) -> Match:
    """``-m owner --uid-owner``/``--gid-owner`` (kind "uid"/"gid"); a ``!`` prefix on ident negates."""
    return Match("owner", ((f"{kind}-owner", ident),))


class _Builder:
    """Collects rules per family, like istio-iptables' rule builder (AppendRule/InsertRule/...V4/V6)."""

    def __init__(self, enable_ipv6: bool) -> None:
        self.v4: list[Rule] = []
        self.v6: list[Rule] = []
        self.enable_ipv6 = enable_ipv6

    def v4_rule(self, r: Rule) -> None:
        self.v4.append(r)

    def v6_rule(self, r: Rule) -> None:
        if self.enable_ipv6:
            self.v6.append(r)

    def both(self, r: Rule) -> None:
        self.v4_rule(r)
        self.v6_rule(r)

    def add(self, fam: Family, r: Rule) -> None:
        (self.v4_rule if fam == 4 else self.v6_rule)(r)

    def per_family(self, make: Callable[[Family], Rule]) -> None:
        """istio-iptables' AppendVersionedRule: the same rule with a family-specific address."""
        self.v4_rule(make(4))
        self.v6_rule(make(6))


def _split_networks(nets: tuple[Network, ...]) -> tuple[list[str], list[str]]:
    v4 = [str(n) for n in nets if n.version == 4]
    v6 = [f"{_v6(str(n.network_address))}/{n.prefixlen}" for n in nets if n.version == 6]
    return v4, v6


def _has_loopback(nets: tuple[Network, ...]) -> bool:
    return any(n.network_address.is_loopback for n in nets)


def plan(cfg: CaptureConfig) -> RuleSet:
    """The ordered rule set istio-iptables would program for ``cfg``."""
    b = _Builder(cfg.enable_ipv6)
    lo4 = str(cfg.ipv4_loopback_cidr)
    lo = {4: lo4, 6: "::1/128"}
    passthrough = {4: "127.0.0.6/32", 6: "::6/128"}
    tproxy = cfg.mode == "TPROXY"
    mark = hex(cfg.tproxy_mark)
    tunnel = str(cfg.inbound_tunnel_port)

    if cfg.outbound_cidrs == WILDCARD:
        inc4: list[str] | str = WILDCARD
        inc6: list[str] | str = WILDCARD
        inc_loopback = False
    else:
        assert not isinstance(cfg.outbound_cidrs, str)
        inc4, inc6 = _split_networks(cfg.outbound_cidrs)
        inc_loopback = _has_loopback(cfg.outbound_cidrs)
    exc4, exc6 = _split_networks(cfg.outbound_cidrs_exclude)

    # Excluded interfaces short-circuit everything.
    for iface in cfg.exclude_interfaces:
        b.both(Rule("nat", "PREROUTING", "RETURN", in_iface=iface))
        b.both(Rule("nat", "OUTPUT", "RETURN", out_iface=iface))
    if tproxy:
        for iface in cfg.exclude_interfaces:
            b.both(Rule("mangle", "PREROUTING", "RETURN", in_iface=iface))
            b.both(Rule("mangle", "OUTPUT", "RETURN", out_iface=iface))

    # Inbound traffic from virtual interfaces is not captured as inbound.
    for iface in cfg.kube_virt_interfaces:
        b.both(Rule("nat", "PREROUTING", "RETURN", in_iface=iface, insert_at=1))

    if cfg.drop_invalid:
        b.both(Rule("mangle", "PREROUTING", "ISTIO_DROP", matches=(Match("conntrack", (("ctstate", "INVALID"),)),)))
        b.both(Rule("mangle", "ISTIO_DROP", "DROP"))

    b.both(Rule("nat", "ISTIO_INBOUND", "RETURN", proto="tcp", matches=(tcp(dport=tunnel),)))
    b.both(Rule("nat", "ISTIO_REDIRECT", "REDIRECT", (("to-ports", str(cfg.proxy_port)),), proto="tcp"))
    b.both(Rule("nat", "ISTIO_IN_REDIRECT", "REDIRECT", (("to-ports", str(cfg.inbound_capture_port)),), proto="tcp"))

    _inbound(b, cfg, lo, mark)

    b.both(Rule("nat", "OUTPUT", "ISTIO_OUTPUT"))
    for port in cfg.outbound_ports_exclude:
        b.both(Rule("nat", "ISTIO_OUTPUT", "RETURN", proto="tcp", matches=(tcp(dport=port),)))
        b.both(Rule("nat", "ISTIO_OUTPUT", "RETURN", proto="udp", matches=(udp(dport=port),)))

    b.per_family(lambda f: Rule("nat", "ISTIO_OUTPUT", "RETURN", src=passthrough[f], out_iface="lo"))

    dns = cfg.redirect_dns
    for kind, ids in (("uid", cfg.proxy_uids), ("gid", cfg.proxy_gids)):
        for ident in ids:
            own, neg = owner(kind, ident), owner(kind, "!" + ident)
            # App calls itself through a VIP: app -> Envoy outbound -> Envoy inbound -> app.
            if dns and kind == "uid":
                port_m = Match("multiport", (("dports", f"!53,{tunnel}"),))
            else:
                port_m = tcp(dport="!" + tunnel)
            for fam in FAMILIES:
                b.add(
                    fam,
                    Rule(
                        "nat",
                        "ISTIO_OUTPUT",
                        "ISTIO_IN_REDIRECT",
                        dst="!" + lo[fam],
                        out_iface="lo",
                        proto="tcp",
                        matches=(port_m, own),
                    ),
                )
            # App talks to itself over lo by pod IP: not captured (unless loopback is explicitly included).
            if not inc_loopback:
                if dns:
                    b.both(
                        Rule(
                            "nat",
                            "ISTIO_OUTPUT",
                            "RETURN",
                            out_iface="lo",
                            proto="tcp",
                            matches=(tcp(dport="!53"), neg),
                        )
                    )
                else:
                    b.both(Rule("nat", "ISTIO_OUTPUT", "RETURN", out_iface="lo", matches=(neg,)))
            # The proxy's own traffic is never captured.
            b.both(Rule("nat", "ISTIO_OUTPUT", "RETURN", matches=(own,)))

    # Owner-group filter (env-only ISTIO_OUTBOUND_OWNER_GROUPS[_EXCLUDE]).
    if cfg.owner_groups_include == WILDCARD:
        for g in cfg.owner_groups_exclude:
            b.both(Rule("nat", "ISTIO_OUTPUT", "RETURN", matches=(owner("gid", g),)))
    else:
        groups = tuple(owner("gid", "!" + g) for g in cfg.owner_groups_include)
        b.both(Rule("nat", "ISTIO_OUTPUT", "RETURN", matches=groups))

    if dns:
        _dns(b, cfg)

    b.per_family(lambda f: Rule("nat", "ISTIO_OUTPUT", "RETURN", dst=lo[f]))
    for c in exc4:
        b.v4_rule(Rule("nat", "ISTIO_OUTPUT", "RETURN", dst=c))
    for c in exc6:
        b.v6_rule(Rule("nat", "ISTIO_OUTPUT", "RETURN", dst=c))

    for port in cfg.outbound_ports:
        b.both(Rule("nat", "ISTIO_OUTPUT", "ISTIO_REDIRECT", proto="tcp", matches=(tcp(dport=port),)))

    includes: tuple[tuple[Family, list[str] | str], ...] = ((4, inc4), (6, inc6))
    for fam, inc in includes:
        if inc == WILDCARD:
            b.add(fam, Rule("nat", "ISTIO_OUTPUT", "ISTIO_REDIRECT"))
            for iface in cfg.kube_virt_interfaces:
                b.add(fam, Rule("nat", "PREROUTING", "ISTIO_REDIRECT", in_iface=iface, insert_at=1))
            continue
        for c in inc:
            for iface in cfg.kube_virt_interfaces:
                b.add(fam, Rule("nat", "PREROUTING", "ISTIO_REDIRECT", dst=c, in_iface=iface, insert_at=1))
            b.add(fam, Rule("nat", "ISTIO_OUTPUT", "ISTIO_REDIRECT", dst=c))

    if tproxy:
        _tproxy_tail(b, cfg, lo, mark)
    return RuleSet(tuple(b.v4), tuple(b.v6), cfg.enable_ipv6)


def _inbound(b: _Builder, cfg: CaptureConfig, lo: dict[int, str], mark: str) -> None:
    if cfg.inbound_ports == () or cfg.inbound_ports == "":
        return
    tproxy = cfg.mode == "TPROXY"
    table = "mangle" if tproxy else "nat"
    if tproxy:
        b.both(Rule("mangle", "ISTIO_DIVERT", "MARK", (("set-xmark", f"{mark}/0xffffffff"),)))
        b.both(Rule("mangle", "ISTIO_DIVERT", "ACCEPT"))
        for fam in FAMILIES:
            r = Rule(
                "mangle",
                "ISTIO_TPROXY",
                "TPROXY",
                (
                    ("on-port", str(cfg.inbound_capture_port)),
                    ("on-ip", "0.0.0.0" if fam == 4 else "::"),
                    ("tproxy-mark", f"{mark}/0xffffffff"),
                ),
                dst="!" + lo[fam],
                proto="tcp",
            )
            b.add(fam, r)
    b.both(Rule(table, "PREROUTING", "ISTIO_INBOUND", proto="tcp"))
    established = Match("conntrack", (("ctstate", "RELATED,ESTABLISHED"),))
    if cfg.inbound_ports == WILDCARD:
        for port in cfg.inbound_ports_exclude:
            b.both(Rule(table, "ISTIO_INBOUND", "RETURN", proto="tcp", matches=(tcp(dport=port),)))
        if tproxy:
            b.both(Rule("mangle", "ISTIO_INBOUND", "ISTIO_DIVERT", proto="tcp", matches=(established,)))
            b.both(Rule("mangle", "ISTIO_INBOUND", "ISTIO_TPROXY", proto="tcp"))
        else:
            b.both(Rule("nat", "ISTIO_INBOUND", "ISTIO_IN_REDIRECT", proto="tcp"))
        return
    for port in cfg.inbound_ports:
        if tproxy:
            b.both(Rule("mangle", "ISTIO_INBOUND", "ISTIO_DIVERT", proto="tcp", matches=(tcp(dport=port), established)))
            b.both(Rule("mangle", "ISTIO_INBOUND", "ISTIO_TPROXY", proto="tcp", matches=(tcp(dport=port),)))
        else:
            b.both(Rule("nat", "ISTIO_INBOUND", "ISTIO_IN_REDIRECT", proto="tcp", matches=(tcp(dport=port),)))


def _dns(b: _Builder, cfg: CaptureConfig) -> None:
    """DNS to the agent on 15053, with UDP split into two conntrack zones (istio-iptables' SetupDNSRedir)."""
    to = (("to-ports", str(DNS_LISTENER_PORT)),)
    all_dns = cfg.capture_all_dns
    # The resolv.conf nameservers of each family, as host CIDRs.
    servers: tuple[tuple[Family, list[str]], ...] = (
        (4, [f"{s}/32" for s in cfg.dns_servers_v4]),
        (6, [f"{_v6(s)}/128" for s in cfg.dns_servers_v6]),
    )
    b.both(Rule("raw", "OUTPUT", "ISTIO_OUTPUT_DNS"))
    for fam, hosts in servers:
        if all_dns or hosts:
            b.add(fam, Rule("nat", "ISTIO_OUTPUT", "ISTIO_OUTPUT_DNS"))
    for proto, m in (("tcp", tcp(dport="53")), ("udp", udp(dport="53"))):
        if all_dns:
            b.both(Rule("nat", "ISTIO_OUTPUT_DNS", "REDIRECT", to, proto=proto, matches=(m,)))
            continue
        for fam, hosts in servers:
            for h in hosts:
                b.add(fam, Rule("nat", "ISTIO_OUTPUT_DNS", "REDIRECT", to, dst=h, proto=proto, matches=(m,)))
    # Conntrack zones: proxy <-> upstream resolvers in zone 1, app <-> proxy in zone 2.
    zone1, zone2 = (("zone", "1"),), (("zone", "2"),)
    for kind, ids in (("uid", cfg.proxy_uids), ("gid", cfg.proxy_gids)):
        for ident in ids:
            own = owner(kind, ident)
            b.both(Rule("raw", "ISTIO_OUTPUT_DNS", "CT", zone1, proto="udp", matches=(udp(dport="53"), own)))
            b.both(
                Rule(
                    "raw",
                    "ISTIO_OUTPUT_DNS",
                    "CT",
                    zone2,
                    proto="udp",
                    matches=(udp(sport=str(DNS_LISTENER_PORT)), own),
                )
            )
    if all_dns:
        b.both(Rule("raw", "PREROUTING", "ISTIO_INBOUND"))
        b.both(Rule("raw", "ISTIO_OUTPUT_DNS", "CT", zone2, proto="udp", matches=(udp(dport="53"),)))
        b.both(Rule("raw", "ISTIO_INBOUND", "CT", zone1, proto="udp", matches=(udp(sport="53"),)))
        return
    for fam, hosts in servers:
        if hosts:
            b.add(fam, Rule("raw", "PREROUTING", "ISTIO_INBOUND"))
        for h in hosts:
            b.add(fam, Rule("raw", "ISTIO_OUTPUT_DNS", "CT", zone2, dst=h, proto="udp", matches=(udp(dport="53"),)))
            b.add(fam, Rule("raw", "ISTIO_INBOUND", "CT", zone1, src=h, proto="udp", matches=(udp(sport="53"),)))


def _v6(s: str) -> str:
    """An IPv6 address as iptables-save prints it (libc's inet_ntop: ``::127.0.0.53``, not ``::7f00:35``)."""
    return address_text(s)[1]


def _tproxy_tail(b: _Builder, cfg: CaptureConfig, lo: dict[int, str], mark: str) -> None:
    omark = hex(OUTBOUND_MARK)
    b.both(
        Rule(
            "mangle",
            "PREROUTING",
            "CONNMARK",
            (("save-mark", None), ("nfmask", "0xffffffff"), ("ctmask", "0xffffffff")),
            proto="tcp",
            matches=(Match("mark", (("mark", mark),)),),
        )
    )
    b.both(Rule("mangle", "OUTPUT", "RETURN", out_iface="lo", proto="tcp", matches=(Match("mark", (("mark", mark),)),)))
    for kind, ids in (("uid", cfg.proxy_uids), ("gid", cfg.proxy_gids)):
        for ident in ids:
            own = owner(kind, ident)
            for fam in FAMILIES:
                r = Rule(
                    "mangle",
                    "OUTPUT",
                    "MARK",
                    (("set-xmark", f"{omark}/0xffffffff"),),
                    dst="!" + lo[fam],
                    out_iface="lo",
                    proto="tcp",
                    matches=(own,),
                )
                b.add(fam, r)
    b.both(
        Rule(
            "mangle",
            "OUTPUT",
            "CONNMARK",
            (("restore-mark", None), ("nfmask", "0xffffffff"), ("ctmask", "0xffffffff")),
            proto="tcp",
            matches=(Match("connmark", (("mark", mark),)),),
        )
    )
    b.both(
        Rule("mangle", "ISTIO_INBOUND", "RETURN", proto="tcp", matches=(Match("mark", (("mark", mark),)),), insert_at=1)
    )
    b.v4_rule(Rule("mangle", "ISTIO_INBOUND", "RETURN", src="127.0.0.6/32", in_iface="lo", proto="tcp", insert_at=2))
    b.v6_rule(Rule("mangle", "ISTIO_INBOUND", "RETURN", src="::6/128", in_iface="lo", proto="tcp", insert_at=2))
    b.both(
        Rule(
            "mangle",
            "ISTIO_INBOUND",
            "RETURN",
            in_iface="lo",
            proto="tcp",
            matches=(Match("mark", (("mark", "!" + omark),)),),
            insert_at=3,
        )
    )


def chains_in_order(rules: Iterable[Rule], table: str) -> list[str]:
    """Our chains of ``table`` in first-use order (declarations in the restore payload)."""
    seen: list[str] = []
    for r in rules:
        if r.table != table:
            continue
        for c in (r.chain, r.target):
            if c in OWN_CHAINS and c not in seen:
                seen.append(c)
    return seen
