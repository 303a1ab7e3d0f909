"""Our native nftables tables, as ``nft list`` prints them, read back into per-family iptables-save text. Pure.

The inverse of ``nft.render_tables`` for exactly the vocabulary the renderer writes, so that ``explain``, ``show``
and ``verify`` (which think in iptables rules) read live ``inet istio-proxy-*`` tables unchanged: each statement
becomes the planned ``Rule`` it was rendered from (``-A CHAIN spec`` as ``Rule.spec()`` prints it), in the
family or families it applies to (``ip``/``ip6`` addresses, ``meta nfproto``; neither: both).

Nothing is guessed. Every statement read is rendered again with ``nft.statements`` and must come out as listed
(counter values aside); anything else - a rule someone added by hand, an expression another nft version spells
differently, a chain or table netinit does not write - raises ``NotOurRendering`` naming the table, line and
why. ``netinit verify --native-nftables`` is the tool for tables that differ from a plan.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from netinit.core.plan import FAMILIES, OWN_CHAINS, TABLE_ORDER, Family, Match, Rule
from netinit.errors import BackendError
from netinit.rules import nft
from netinit.rules.save import render_save
from netinit.typing_lite import NamedTuple

_TABLE_OF = {name: table for table, name in nft.TABLES.items()}
_TOKEN = re.compile(r'"[^"]*"|\{[^}]*\}|\S+')
# conntrack states in the order iptables-save prints them
_IPT_STATES = ("INVALID", "NEW", "RELATED", "ESTABLISHED", "UNTRACKED")
_BOTH: frozenset[Family] = frozenset(FAMILIES)
_SIMPLE = {"return": "RETURN", "accept": "ACCEPT", "drop": "DROP"}


class NotOurRendering(BackendError):
    """A live table holds something netinit's renderer does not write (exit 1)."""


class _Bad(Exception):
    """Why one line is not ours; turned into NotOurRendering with the table and line."""


class Statement(NamedTuple):
    """One rule read back: the chain, the families it applies to, and its Rule per family."""

    table: str
    chain: str
    fams: frozenset[Family]
    rules: Mapping[Family, Rule]


# --- one statement -------------------------------------------------------------------------------------------


def _tokens(line: str) -> list[str]:
    """Words of a rule line, ``"quoted"`` names and ``{ sets }`` as one word, counter values dropped."""
    words = _TOKEN.findall(line)
    out: list[str] = []
    k = 0
    while k < len(words):
        out.append(words[k])
        if words[k] == "counter" and words[k + 1 : k + 2] == ["packets"] and words[k + 3 : k + 4] == ["bytes"]:
            k += 5
            continue
        k += 1
    return out


class _Cursor:
    def __init__(self, words: list[str]) -> None:
        self.w = words
        self.i = 0

    def at(self, *words: str) -> bool:
        return self.w[self.i : self.i + len(words)] == list(words)

    def peek(self, k: int = 0) -> str | None:
        return self.w[self.i + k] if self.i + k < len(self.w) else None

    def take(self, what: str = "a value") -> str:
        if self.i >= len(self.w):
            raise _Bad(f"expected {what} at the end of the line")
        self.i += 1
        return self.w[self.i - 1]

    def op(self) -> str:
        """``!=`` before a value -> the ``!`` of a negated iptables value."""
        if self.peek() == "!=":
            self.i += 1
            return "!"
        return ""


def _address(fam: Family, text: str) -> str:
    """As iptables-save prints it: always with the prefix length (nft drops ``/32``, ``/128``)."""
    if "/" in text:
        return text
    return f"{text}/{32 if fam == 4 else 128}"


def _ports(text: str) -> tuple[str, bool]:
    """``80`` / ``8000-8010`` / ``{ 53, 15008 }`` -> (iptables port list, whether it was a set)."""
    if text.startswith("{"):
        items = [p.strip() for p in text.strip("{} ").split(",")]
        return ",".join(p.replace("-", ":") for p in items), True
    return text.replace("-", ":"), False


def _hex(text: str) -> str:
    try:
        return hex(int(text, 0))
    except ValueError:
        raise _Bad(f"{text!r} is not a mark") from None


def _iface(text: str) -> str:
    if not (len(text) >= 2 and text.startswith('"') and text.endswith('"')):
        raise _Bad(f"interface {text!r} is not quoted")
    name = text[1:-1]
    return name[:-1] + "+" if name.endswith("*") else name


class _Parsed(NamedTuple):
    nfproto: Family | None
    addr_fam: Family | None
    fields: dict[str, str]  # src dst in_iface out_iface proto
    matches: tuple[Match, ...]
    action: list[str]
    comment: str | None


def _parse(words: list[str]) -> _Parsed:
    c = _Cursor(words)
    nfproto: Family | None = None
    if c.at("meta", "nfproto"):
        c.i += 2
        v = c.take("ipv4 or ipv6")
        if v not in ("ipv4", "ipv6"):
            raise _Bad(f"meta nfproto {v}")
        nfproto = 4 if v == "ipv4" else 6
    fields: dict[str, str] = {}
    addr_fam: Family | None = None
    while c.peek() in ("ip", "ip6") and c.peek(1) in ("saddr", "daddr"):
        fam: Family = 4 if c.take() == "ip" else 6
        key = "src" if c.take() == "saddr" else "dst"
        if addr_fam not in (None, fam) or key in fields:
            raise _Bad("addresses of two families or two of one kind")
        addr_fam = fam
        neg = c.op()
        fields[key] = neg + _address(fam, c.take("an address"))
    for word, key in (("iifname", "in_iface"), ("oifname", "out_iface")):
        if c.peek() == word:
            c.i += 1
            neg = c.op()
            fields[key] = neg + _iface(c.take("an interface name"))
    if c.at("meta", "l4proto"):
        c.i += 2
        neg = c.op()
        fields["proto"] = neg + c.take("a protocol")
    matches: list[Match] = []
    while c.peek() not in (None, "counter"):
        first, second = c.take(), c.take("a match")
        if first in ("tcp", "udp") and second in ("dport", "sport"):
            neg = c.op()
            ports, is_set = _ports(c.take("ports"))
            if fields.setdefault("proto", first) != first:
                raise _Bad(f"a {first} match in a rule for {fields['proto']}")
            if is_set:
                matches.append(Match("multiport", ((f"{second}s", neg + ports),)))
            else:
                matches.append(Match(first, ((second, neg + ports),)))
        elif first == "meta" and second in ("skuid", "skgid"):
            neg = c.op()
            matches.append(Match("owner", ((f"{second[2]}id-owner", neg + c.take("an id")),)))
        elif (first, second) in (("meta", "mark"), ("ct", "mark")):
            neg = c.op()
            module = "mark" if first == "meta" else "connmark"
            matches.append(Match(module, (("mark", neg + _hex(c.take("a mark"))),)))
        elif (first, second) == ("ct", "state"):
            neg = c.op()
            states = {s.upper() for s in c.take("states").split(",")}
            if not states <= set(_IPT_STATES):
                raise _Bad(f"conntrack states {sorted(states)}")
            matches.append(Match("conntrack", (("ctstate", neg + ",".join(s for s in _IPT_STATES if s in states)),)))
        elif first == "fib" and second in ("daddr", "saddr") and c.peek() == "type":
            c.i += 1
            neg = c.op()
            kind = "dst-type" if second == "daddr" else "src-type"
            matches.append(Match("addrtype", ((kind, neg + c.take("a type").upper()),)))
        else:
            raise _Bad(f"'{first} {second}' is not an expression netinit writes")
    if c.take("counter") != "counter":
        raise _Bad("no counter")
    action = c.w[c.i :]
    comment = None
    if "comment" in action:
        k = action.index("comment")
        if k != len(action) - 2 or not action[-1].startswith('"'):
            raise _Bad("comment")
        comment = action[-1].strip('"')
        action = action[:k]
    return _Parsed(nfproto, addr_fam, fields, tuple(matches), action, comment)


def _target(action: list[str], fam: Family) -> tuple[str, tuple[tuple[str, str | None], ...]]:
    """The verdict/action words -> (iptables target, its options) for ``fam``."""
    a = action
    if len(a) == 1 and a[0] in _SIMPLE:
        return _SIMPLE[a[0]], ()
    if len(a) == 2 and a[0] == "jump":
        chain = a[1].upper().replace("-", "_")
        if chain not in OWN_CHAINS:
            raise _Bad(f"jump to {a[1]}, not a chain of netinit's")
        return chain, ()
    if a == ["redirect"]:
        return "REDIRECT", ()
    if len(a) == 3 and a[:2] == ["redirect", "to"] and a[2].startswith(":"):
        return "REDIRECT", (("to-ports", a[2][1:]),)
    if a and a[0] == "tproxy" and a[-1] == "accept":
        c = _Cursor(a[1:-1])
        family = c.take() if c.peek() in ("ip", "ip6") else None
        if c.take("to") != "to":
            raise _Bad("tproxy without 'to'")
        dest = c.take("an address and port")
        addr, _, port = dest.rpartition(":")
        addr = addr.strip("[]")
        if not addr:
            addr = "0.0.0.0" if fam == 4 else "::"
        opts: list[tuple[str, str | None]] = [("on-port", port), ("on-ip", addr)]
        if c.at("meta", "mark", "set"):
            c.i += 3
            opts.append(("tproxy-mark", f"{_hex(c.take('a mark'))}/0xffffffff"))
        if c.peek() is not None or family not in (None, "ip" if fam == 4 else "ip6"):
            raise _Bad("tproxy statement")
        return "TPROXY", tuple(opts)
    if a == ["meta", "mark", "set", "ct", "mark"]:
        return "CONNMARK", (("restore-mark", None), ("nfmask", "0xffffffff"), ("ctmask", "0xffffffff"))
    if a == ["ct", "mark", "set", "meta", "mark"]:
        return "CONNMARK", (("save-mark", None), ("nfmask", "0xffffffff"), ("ctmask", "0xffffffff"))
    if len(a) == 4 and a[:3] == ["meta", "mark", "set"]:
        return "MARK", (("set-xmark", f"{_hex(a[3])}/0xffffffff"),)
    if len(a) == 4 and a[:3] == ["ct", "zone", "set"] and a[3].isdigit():
        return "CT", (("zone", a[3]),)
    if a == ["notrack"]:
        return "CT", (("notrack", None),)
    raise _Bad(f"'{' '.join(a)}' is not an action netinit writes")


def statement(table: str, chain: str, lines: list[str]) -> tuple[Statement, int]:
    """The rule ``lines[0]`` (and ``lines[1]``: a TPROXY's ``drop``) was rendered from, and how many lines it
    took. Raises ``_Bad`` if ``nft.statements`` would not write exactly those lines for it."""
    words = _tokens(lines[0])
    p = _parse(words)
    if p.nfproto is not None and p.addr_fam is not None:
        raise _Bad("meta nfproto and an address")
    fam1 = p.addr_fam or p.nfproto
    fams: frozenset[Family] = frozenset((fam1,)) if fam1 is not None else _BOTH
    matches = p.matches
    if p.comment is not None:
        text = p.comment if p.comment and " " not in p.comment else f'"{p.comment}"'
        matches = (*matches, Match("comment", (("comment", text),)))
    rules: dict[Family, Rule] = {}
    for fam in sorted(fams):
        target, opts = _target(p.action, fam)
        rules[fam] = Rule(
            table,
            chain,
            target,
            opts,
            src=p.fields.get("src"),
            dst=p.fields.get("dst"),
            in_iface=p.fields.get("in_iface"),
            out_iface=p.fields.get("out_iface"),
            proto=p.fields.get("proto"),
            matches=matches,
        )
    first = next(iter(rules.values()))
    if any(r != first for r in rules.values()):
        raise _Bad("a rule for both families that differs between them (netinit writes such rules per family)")
    try:
        want = nft.statements(first, fams)
    except nft.Untranslatable as e:
        raise _Bad(str(e)) from None
    got = [" ".join(_tokens(line)) for line in lines[: len(want)]]
    if got != want:
        shown = want[len(got)] if len(got) < len(want) else next(w for w, g in zip(want, got, strict=True) if w != g)
        raise _Bad(f"netinit would write it as {shown!r}")
    return Statement(table, chain, fams, rules), len(want)


# --- a table, the tables -------------------------------------------------------------------------------------


def read_table(name: str, text: str) -> list[tuple[str, list[Statement]]]:
    """One of our tables as listed -> its chains (iptables names, listing order) with their statements."""
    table = _TABLE_OF.get(name)
    lines = text.splitlines()

    def bad(n: int, why: str) -> NotOurRendering:
        return NotOurRendering(
            f"netinit: cannot read table inet {name} line {n + 1} ({lines[n].strip()!r}) as netinit's rendering: "
            f"{why}; compare it with a plan with: netinit verify --native-nftables FLAGS"
        )

    if table is None:
        raise NotOurRendering(f"netinit: table inet {name} is not one of netinit's ({', '.join(nft.TABLE_NAMES)})")
    if not lines or lines[0].strip() != f"table inet {name} {{":
        raise NotOurRendering(f"netinit: cannot read table inet {name}: no 'table inet {name} {{' line")
    chains: list[tuple[str, list[Statement]]] = []
    n = 1
    seen: set[str] = set()
    while n < len(lines):
        line = lines[n].strip()
        if not line:
            n += 1
            continue
        if line == "}":
            after = [k for k in range(n + 1, len(lines)) if lines[k].strip()]
            if after:
                raise bad(after[0], "text after the table")
            return chains
        w = line.split()
        if len(w) != 3 or w[0] != "chain" or w[2] != "{":
            raise bad(n, "not a chain")
        chain = w[1].upper().replace("-", "_")
        base = (table, chain) in nft._BASE
        if not (base or chain in OWN_CHAINS) or chain in seen or w[1] != nft.chain_name(chain):
            raise bad(n, f"chain {w[1]} is not one netinit writes in {name}")
        seen.add(chain)
        n += 1
        if base:
            header = lines[n].strip() if n < len(lines) else ""
            if nft.normalize(header) != nft.normalize(nft._BASE[(table, chain)]):
                raise bad(min(n, len(lines) - 1), f"base chain {w[1]} is not {nft._BASE[(table, chain)]!r}")
            n += 1
        stmts: list[Statement] = []
        while n < len(lines) and lines[n].strip() != "}":
            if lines[n].strip().startswith("type "):
                raise bad(n, f"{w[1]} is not a base chain of netinit's")
            try:
                s, used = statement(table, chain, [x.strip() for x in lines[n : n + 2]])
            except _Bad as e:
                raise bad(n, str(e)) from None
            stmts.append(s)
            n += used
        if n >= len(lines):
            raise bad(len(lines) - 1, f"chain {w[1]} is not closed")
        chains.append((chain, stmts))
        n += 1
    raise bad(len(lines) - 1, "the table is not closed")


def save_texts(tables: Mapping[str, str]) -> dict[Family, str]:
    """Our tables as listed (table name -> ``nft list table`` text; other names refused) -> iptables-save text
    per family, as iptables-save would list the same rules had netinit applied them with iptables.

    A family gets a chain when one of its rules is in it or jumps to it (a chain of ours that nothing uses, in
    either family, is listed in both); built-in chains with no rules of the family are left out, as in
    ``save.planned_save``."""
    unknown = sorted(set(tables) - set(nft.TABLE_NAMES))
    if unknown:
        raise NotOurRendering(f"netinit: table inet {unknown[0]} is not one of netinit's")
    read = {_TABLE_OF[name]: read_table(name, tables[name]) for name in nft.TABLE_NAMES if name in tables}
    out: dict[Family, str] = {}
    for fam in FAMILIES:
        tables_of_fam: dict[str, dict[str, list[str]]] = {}
        for table in TABLE_ORDER:
            if table not in read:
                continue
            chains = read[table]
            used = {t for _c, stmts in chains for s in stmts for f, r in s.rules.items() for t in (r.chain, r.target)}
            mine = {
                t
                for _c, stmts in chains
                for s in stmts
                for f, r in s.rules.items()
                if f == fam
                for t in (r.chain, r.target)
            }
            listed = [c for c, stmts in chains if c in mine or (c in OWN_CHAINS and c not in used and not stmts)]
            if listed:
                specs = {c: [s.rules[fam].spec() for s in stmts if fam in s.rules] for c, stmts in chains}
                tables_of_fam[table] = {c: specs[c] for c in listed}
        out[fam] = render_save(tables_of_fam)
    return out
