"""The plan rendered as native nftables (``--native-nftables``). Pure; no I/O.

One planned ``Rule`` becomes one nftables statement (two for TPROXY, see ``_target``), in tables named as Istio's
native-nftables mode names them (``inet istio-proxy-nat|mangle|raw``) so operators' tooling finds them. Both
address families live in one ``inet`` table: a rule the plan writes identically for IPv4 and IPv6 is written once;
a rule for one family only says so, through its address (``ip daddr``/``ip6 daddr``) or ``meta nfproto``.

The text is written the way ``nft list table`` prints it back (symbolic priorities, ``/32`` dropped, sorted
sets, ...), so a re-run compares the live listing with this text directly; ``netinit.apply.nftables`` falls back
to letting nft itself canonicalise when another nft version prints differently. A construct without an exact nftables
equivalent is refused (``Untranslatable``, exit 2) rather than approximated.
"""

from __future__ import annotations

from netinit.core.plan import OWN_CHAINS, Family, Match, Rule, RuleSet, chains_in_order
from netinit.core.values import address_text
from netinit.errors import ConfigError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

# Our table per iptables table, in apply order. Istio's names (tools/istio-nftables/pkg/constants).
TABLES: dict[str, str] = {"nat": "istio-proxy-nat", "mangle": "istio-proxy-mangle", "raw": "istio-proxy-raw"}
TABLE_NAMES: tuple[str, ...] = tuple(TABLES.values())

# Base chains at iptables' (and Istio's) hooks and priorities, as nft prints them. The mangle OUTPUT chain is of
# type ``route``: like iptables' mangle OUTPUT it re-routes a packet whose mark changed (the TPROXY restore-mark).
_BASE: dict[tuple[str, str], str] = {
    ("nat", "PREROUTING"): "type nat hook prerouting priority dstnat; policy accept;",
    ("nat", "OUTPUT"): "type nat hook output priority -100; policy accept;",
    ("mangle", "PREROUTING"): "type filter hook prerouting priority mangle; policy accept;",
    ("mangle", "OUTPUT"): "type route hook output priority mangle; policy accept;",
    ("raw", "PREROUTING"): "type filter hook prerouting priority raw; policy accept;",
    ("raw", "OUTPUT"): "type filter hook output priority raw; policy accept;",
}
_FULL_MASK = 0xFFFFFFFF
_CT_STATES = ("invalid", "established", "related", "new", "untracked")  # nft's print order (bit order)


class Untranslatable(ConfigError):
    """A planned rule has no exact nftables equivalent here; nothing was touched (exit 2)."""


class _Why:
    """The start of an Untranslatable message, formatted only when one is raised (most rules translate)."""

    __slots__ = ("rule",)

    def __init__(self, rule: Rule) -> None:
        self.rule = rule

    def __format__(self, _spec: str) -> str:
        r = self.rule
        return f"netinit: --native-nftables cannot translate {r.table} {r.chain} rule '{r.spec()}'"


def chain_name(chain: str) -> str:
    """``ISTIO_OUTPUT`` -> ``istio-output``, ``PREROUTING`` -> ``prerouting`` (Istio's nftables names)."""
    return chain.lower().replace("_", "-")


# --- one rule -> statements -----------------------------------------------------------------------------------


def _neg(value: str) -> tuple[str, str]:
    return ("!= ", value[1:]) if value.startswith("!") else ("", value)


def _address(value: str, why: _Why) -> tuple[Family, str]:
    """An address or CIDR as nft prints it: host bits cleared, no ``/32``/``/128`` (values.address_text)."""
    try:
        fam, text, prefix = address_text(value)
    except ValueError:
        raise Untranslatable(f"{why}: {value!r} is not an address or CIDR") from None
    return (6 if fam == 6 else 4), text if prefix in (None, 128 if fam == 6 else 32) else f"{text}/{prefix}"


def _ports(spec: str, why: _Why) -> list[tuple[int, int]]:
    out = []
    for item in spec.split(","):
        lo, _, hi = item.partition(":")
        if not lo.isdigit() or (hi and not hi.isdigit()):
            raise Untranslatable(f"{why}: bad port {item!r}")
        out.append((int(lo), int(hi or lo)))
    return out


def _port_expr(spec: str, why: _Why) -> str:
    """``80`` / ``8000:8010`` / ``53,15008`` -> ``80`` / ``8000-8010`` / ``{ 53, 15008 }`` (sorted, as listed)."""
    items = [f"{lo}-{hi}" if hi != lo else str(lo) for lo, hi in sorted(_ports(spec, why))]
    return items[0] if len(items) == 1 else "{ " + ", ".join(items) + " }"


def _mark(value: str, why: _Why) -> str:
    """A mark without a mask (or with the full one) -> ``0x00000539``; masked marks are refused."""
    v, _, mask = value.partition("/")
    try:
        n = int(v, 0)
        if mask and int(mask, 0) != _FULL_MASK:
            raise Untranslatable(f"{why}: masked mark {value!r} is not translated")
    except ValueError:
        raise Untranslatable(f"{why}: bad mark {value!r}") from None
    return f"0x{n:08x}"


def _match(m: Match, proto: str | None, why: _Why) -> tuple[list[str], str | None, bool]:
    """One ``-m`` module -> (expressions, trailing comment, whether it implies the l4 protocol)."""
    exprs: list[str] = []
    comment = None
    implies_proto = False
    for name, raw in m.opts:
        op, val = _neg(raw)
        if m.module in ("tcp", "udp") and name in ("dport", "sport", "destination-port", "source-port"):
            if proto != m.module:
                raise Untranslatable(f"{why}: -m {m.module} without -p {m.module}")
            exprs.append(f"{m.module} {name[0]}port {op}{_port_expr(val, why)}")
            implies_proto = True
        elif m.module == "multiport" and name in ("dports", "sports", "destination-ports", "source-ports"):
            if proto not in ("tcp", "udp"):
                raise Untranslatable(f"{why}: -m multiport without -p tcp or -p udp")
            exprs.append(f"{proto} {name[0]}port {op}{_port_expr(val, why)}")
            implies_proto = True
        elif m.module == "owner" and name in ("uid-owner", "gid-owner"):
            if not all(part.isdigit() for part in val.split("-", 1)):
                raise Untranslatable(f"{why}: owner {val!r} is not numeric")
            exprs.append(f"meta sk{name[0]}id {op}{val}")
        elif m.module == "mark" and name == "mark":
            exprs.append(f"meta mark {op}{_mark(val, why)}")
        elif m.module == "connmark" and name == "mark":
            exprs.append(f"ct mark {op}{_mark(val, why)}")
        elif (m.module, name) in (("conntrack", "ctstate"), ("state", "state")):
            states = {s.lower() for s in val.split(",")}
            if not states <= set(_CT_STATES):
                raise Untranslatable(f"{why}: conntrack state {val!r} (only {', '.join(_CT_STATES)})")
            exprs.append(f"ct state {op}{','.join(s for s in _CT_STATES if s in states)}")
        elif m.module == "addrtype" and name in ("dst-type", "src-type"):
            types = val.lower().split(",")
            if len(types) != 1 or not types[0].isalpha():
                raise Untranslatable(f"{why}: addrtype {val!r} (one type only)")
            exprs.append(f"fib {name[0]}addr type {op}{types[0]}")
        elif m.module == "comment" and name == "comment" and not op:
            text = val.strip('"')
            if '"' in text or "\\" in text or "\n" in text:
                raise Untranslatable(f"{why}: comment {val!r}")
            comment = f'comment "{text}"'
        else:
            raise Untranslatable(f"{why}: -m {m.module} --{name} has no translation")
    return exprs, comment, implies_proto


def _opts(rule: Rule) -> dict[str, str | None]:
    return dict(rule.target_opts)


def _target(rule: Rule, fam: Family | None, why: _Why) -> list[str]:
    """The verdict or action. A list: iptables' TPROXY drops a packet no socket takes, while nft's ``tproxy``
    just stops matching, so it becomes ``tproxy ... accept`` followed by the same matches with ``drop``."""
    t, o = rule.target, _opts(rule)
    simple = {"RETURN": "return", "ACCEPT": "accept", "DROP": "drop"}
    if t in OWN_CHAINS and not o:
        return [f"jump {chain_name(t)}"]
    if t in simple and not o:
        return [simple[t]]
    if t == "REDIRECT" and set(o) <= {"to-ports"}:
        if rule.proto not in ("tcp", "udp"):
            raise Untranslatable(f"{why}: REDIRECT without -p tcp or -p udp")
        ports = o.get("to-ports")
        if ports is None:
            return ["redirect"]
        (lo, hi), *rest = _ports(ports.replace("-", ":"), why)
        if rest:
            raise Untranslatable(f"{why}: REDIRECT --to-ports {ports!r}")
        return [f"redirect to :{lo}" + (f"-{hi}" if hi != lo else "")]
    if t == "TPROXY" and set(o) <= {"on-port", "on-ip", "tproxy-mark"} and o.get("on-port"):
        on_ip = o.get("on-ip") or ""
        addr = ""
        if on_ip not in ("", "0.0.0.0", "::"):
            ip_fam, addr = _address(on_ip, why)
            if fam is not None and ip_fam != fam:
                raise Untranslatable(f"{why}: --on-ip {on_ip} in an IPv{fam} rule")
            fam = ip_fam
            addr = f"[{addr}]" if ip_fam == 6 else addr
        family = {4: "ip ", 6: "ip6 ", None: ""}[fam]
        stmt = f"tproxy {family}to {addr}:{o['on-port']}"
        if o.get("tproxy-mark"):
            stmt += f" meta mark set {_mark(str(o['tproxy-mark']), why)}"
        return [f"{stmt} accept", "drop"]
    if t == "MARK" and len(o) == 1 and ("set-xmark" in o or "set-mark" in o):
        return [f"meta mark set {_mark(str(next(iter(o.values()))), why)}"]
    if t == "CONNMARK" and ("save-mark" in o or "restore-mark" in o):
        masks = [v for k, v in o.items() if k in ("nfmask", "ctmask", "mask")]
        if len(o) - len(masks) != 1 or any(int(str(v), 0) != _FULL_MASK for v in masks):
            raise Untranslatable(f"{why}: CONNMARK with partial masks")
        return ["ct mark set meta mark" if "save-mark" in o else "meta mark set ct mark"]
    if t == "CT" and set(o) == {"zone"} and str(o["zone"]).isdigit():
        return [f"ct zone set {o['zone']}"]
    if t == "CT" and set(o) == {"notrack"}:
        return ["notrack"]
    raise Untranslatable(f"{why}: target {t} {' '.join(f'--{k}' for k in o)} has no translation".rstrip())


def statements(rule: Rule, fams: frozenset[Family]) -> list[str]:
    """``rule`` as nft rule text (one line each; two for TPROXY), for the families in ``fams``."""
    why = _Why(rule)
    exprs: list[str] = []
    addr_fam: Family | None = None
    for kind, val in (("saddr", rule.src), ("daddr", rule.dst)):
        if val is None:
            continue
        op, v = _neg(val)
        f, text = _address(v, why)
        if addr_fam not in (None, f) or f not in fams:
            raise Untranslatable(f"{why}: an IPv{f} address in a rule for {_fams(fams)}")
        addr_fam = f
        exprs.append(f"{'ip' if f == 4 else 'ip6'} {kind} {op}{text}")
    for kind, iface in (("iifname", rule.in_iface), ("oifname", rule.out_iface)):
        if iface is not None:
            op, name = _neg(iface)
            if not name or any(c in name for c in '"\\ *'):
                raise Untranslatable(f"{why}: interface name {name!r}")
            name = name[:-1] + "*" if name.endswith("+") else name  # iptables' wildcard is nft's
            exprs.append(f'{kind} {op}"{name}"')
    proto_op, proto = _neg(rule.proto) if rule.proto is not None else ("", None)
    if proto is not None and proto not in ("tcp", "udp"):
        raise Untranslatable(f"{why}: protocol {proto!r}")
    tail: list[str] = []
    comment = None
    implied = False
    for m in rule.matches:
        e, c, imp = _match(m, None if proto_op else proto, why)  # -m tcp etc. need a positive -p
        tail += e
        comment = c or comment
        implied = implied or imp
    if proto is not None and not implied:
        exprs.append(f"meta l4proto {proto_op}{proto}")  # nft drops this when a tcp/udp match implies it
    exprs += tail
    fam = addr_fam if addr_fam is not None else (next(iter(fams)) if len(fams) == 1 else None)
    if addr_fam is None and len(fams) == 1:
        exprs.insert(0, f"meta nfproto ipv{fam}")
    out = []
    for action in _target(rule, fam, why):
        out.append(" ".join([*exprs, "counter", action, *([comment] if comment else [])]))
    return out


def _fams(fams: frozenset[Family]) -> str:
    return " and ".join(f"IPv{f}" for f in sorted(fams))


# --- the plan -> chains of one inet table -----------------------------------------------------------------------


Merged = list[tuple[Rule, frozenset[Family]]]
_BOTH: frozenset[Family] = frozenset((4, 6))


def _chain_rules(rules: Iterable[Rule]) -> dict[tuple[str, str], list[Rule]]:
    """(table, chain) -> final rule order (inserts applied), like ``desired_state`` but keeping the Rules."""
    out: dict[tuple[str, str], list[Rule]] = {}
    for r in rules:
        lst = out.setdefault((r.table, r.chain), [])
        if r.target in OWN_CHAINS:
            out.setdefault((r.table, r.target), [])
        plain = r._replace(insert_at=None)
        if r.insert_at is None:
            lst.append(plain)
        else:
            lst.insert(r.insert_at - 1, plain)
    return out


def merge_families(v4: Sequence[Rule], v6: Sequence[Rule]) -> Merged:
    """One inet chain from the two per-family chains: each family still sees exactly its own rules in its own
    order; rules both families have at the same place (a longest common subsequence) are written once.

    Rules with an address belong to one family and are never shared, so the LCS runs over the others only."""
    a = [i for i, r in enumerate(v4) if r.src is None and r.dst is None]
    b = [j for j, r in enumerate(v6) if r.src is None and r.dst is None]
    n, m = len(a), len(b)
    lcs = [[0] * (m + 1) for _ in range(n + 1)]
    for i in range(n - 1, -1, -1):
        for j in range(m - 1, -1, -1):
            if v4[a[i]] == v6[b[j]]:
                lcs[i][j] = lcs[i + 1][j + 1] + 1
            else:
                lcs[i][j] = max(lcs[i + 1][j], lcs[i][j + 1])
    pairs: list[tuple[int, int]] = []
    i = j = 0
    while i < n and j < m:
        if v4[a[i]] == v6[b[j]]:
            pairs.append((a[i], b[j]))
            i, j = i + 1, j + 1
        elif lcs[i + 1][j] >= lcs[i][j + 1]:
            i += 1
        else:
            j += 1
    out: Merged = []
    pi = pj = 0
    only4: frozenset[Family] = frozenset((4,))
    only6: frozenset[Family] = frozenset((6,))
    for ia, jb in [*pairs, (len(v4), len(v6))]:
        out += [(r, only4) for r in v4[pi:ia]]
        out += [(r, only6) for r in v6[pj:jb]]
        if ia < len(v4):
            out.append((v4[ia], _BOTH))
        pi, pj = ia + 1, jb + 1
    return out


def render_tables(ruleset: RuleSet) -> dict[str, str]:
    """Our table name -> its text, exactly as ``nft list table inet NAME`` prints it back (``counter`` without
    numbers). Only tables the plan uses."""
    per_fam = {fam: _chain_rules(ruleset.family(fam)) for fam in ruleset.families()}
    everything = [r for fam in ruleset.families() for r in ruleset.family(fam)]
    for table in sorted({r.table for r in everything} - set(TABLES)):
        raise Untranslatable(f"netinit: --native-nftables does not program the {table} table")
    out: dict[str, str] = {}
    for table, name in TABLES.items():
        base = [c for c in ("PREROUTING", "OUTPUT") if any(r.table == table and r.chain == c for r in everything)]
        own = chains_in_order(everything, table)  # base chains come first in the rendering anyway
        unknown = {r.chain for r in everything if r.table == table} - set(base) - OWN_CHAINS
        if unknown:
            raise Untranslatable(f"netinit: --native-nftables has no base chain for {table} {sorted(unknown)}")
        if not base and not own:
            continue
        blocks = []
        for chain in [*base, *own]:
            v4, v6 = (per_fam.get(f, {}).get((table, chain), []) for f in (4, 6))
            merged = merge_families(v4, v6)
            lines = [f"\tchain {chain_name(chain)} {{"]
            if chain in base:
                lines.append(f"\t\t{_BASE[(table, chain)]}")
            lines += [f"\t\t{s}" for r, fams in merged for s in statements(r, fams)]
            lines.append("\t}")
            blocks.append("\n".join(lines) + "\n")
        out[name] = f"table inet {name} {{\n" + "\n".join(blocks) + "}\n"
    return out


def transaction(tables: dict[str, str], existing: Iterable[str] = ()) -> str:
    """One ``nft -f`` script that makes our tables exactly ``tables``, given which of them ``existing`` now.

    A new table is just declared. An existing one is replaced whole (``add`` + ``delete`` + declaration: the
    ``delete`` also drops chains an earlier plan had); one not in ``tables`` is deleted. Deleting a table costs
    the kernel ~10 ms (it waits for an RCU grace period), so the first apply - every pod start - deletes
    nothing. nft applies a script atomically: on any error, nothing of it is applied."""
    existing = list(existing)
    parts = [f"add table inet {n}\ndelete table inet {n}\n" for n in existing if n not in tables]
    for name, text in tables.items():
        parts.append((f"add table inet {name}\ndelete table inet {name}\n" if name in existing else "") + text)
    return "".join(parts)


def render_script(ruleset: RuleSet) -> str:
    """What ``--dry-run`` prints and a first apply feeds ``nft -f -``."""
    return transaction(render_tables(ruleset))


# --- reading nft's listing back ---------------------------------------------------------------------------------


_PRIORITIES = {"raw": "-300", "mangle": "-150", "dstnat": "-100", "filter": "0", "security": "50", "srcnat": "100"}


def normalize(text: str) -> list[str]:
    """A table's listing without its name, layout and counter values, priorities as numbers: for comparing
    live with planned."""
    out = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("table "):
            continue
        if line.startswith("type "):
            w = line.split()
            for k in range(len(w) - 1):
                if w[k] == "priority":
                    p = w[k + 1].rstrip(";")
                    w[k + 1] = _PRIORITIES.get(p, p) + w[k + 1][len(p) :]
            line = " ".join(w)
        words = line.split()
        cleaned: list[str] = []
        k = 0
        while k < len(words):
            cleaned.append(words[k])
            if words[k] == "counter" and words[k + 1 : k + 2] == ["packets"] and words[k + 3 : k + 4] == ["bytes"]:
                k += 5
                continue
            k += 1
        out.append(" ".join(cleaned))
    return out


def split_tables(listing: str) -> dict[str, str]:
    """``nft list ruleset inet`` output -> table name -> its block (inet tables only)."""
    out: dict[str, str] = {}
    name: str | None = None
    lines: list[str] = []
    for line in listing.splitlines():
        if name is None:
            words = line.split()
            if len(words) == 4 and words[0] == "table" and words[1] == "inet" and words[3] == "{":
                name, lines = words[2], [line]
            continue
        lines.append(line)
        if line == "}":
            out[name] = "\n".join(lines) + "\n"
            name = None
    return out
