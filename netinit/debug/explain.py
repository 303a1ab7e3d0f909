"""``netinit explain``: walk one connection through iptables rules as the kernel would, and say why it ends where
it does.

Pure: the input is ``iptables-save`` text (read with ``netinit.rules.save``) and a ``Connection``;
the output is an ``Explanation`` - every chain entered, every rule looked at, and the verdict in words. Reading
live rules, entering namespaces and asking the kernel for routes are ``netinit.debug.cli``'s job.

The model is the *first* packet of a connection (a TCP SYN, conntrack state NEW), the only packet the nat table
ever sees:

- outbound (locally generated): raw, mangle, nat, filter OUTPUT. When the packet then leaves over ``lo`` (its
  destination is an address of this namespace, or nat OUTPUT redirected it to 127.0.0.1/::1) it comes back in
  through raw and mangle PREROUTING and mangle/filter INPUT on ``lo`` - but **not** through nat PREROUTING:
  conntrack already took this connection's NAT decision in nat OUTPUT, and the nat table is consulted once.
  Marks set in mangle OUTPUT travel with the packet over ``lo`` (TPROXY mode relies on it).
- inbound: raw, mangle, nat PREROUTING, then mangle/filter INPUT. A TPROXY target assigns the socket, which
  wins over anything later.

Matching is three-valued. A rule that depends on something the connection does not say (no ``--uid``, an
interface known only as "not lo") stops the walk with "cannot decide: ..."; a match or target this module does
not implement stops it with "unknown match ... - cannot decide". Neither is ever guessed. A condition that is
certainly false still rules a rule out, whatever else it contains.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from typing import Any, Literal, NamedTuple

from netinit.core.plan import BUILTIN_CHAINS, OWN_CHAINS, Family, Match, Rule
from netinit.rules.save import chain_policies, parse_rule, parse_save

Addr = ipaddress.IPv4Address | ipaddress.IPv6Address
Tri = bool | None  # True / False / cannot tell
Direction = Literal["inbound", "outbound"]

NOT_LO = "!lo"  # an interface known only to be something other than lo
EPHEMERAL = (32768, 60999)  # Linux's default ip_local_port_range: where an unbound client's port comes from
LISTENERS = {
    "ISTIO_REDIRECT": "outbound",
    "ISTIO_IN_REDIRECT": "inbound",
    "ISTIO_OUTPUT_DNS": "dns",
    "ISTIO_TPROXY": "inbound",
}
_HOOK_ORDER = {
    "OUTPUT": ("raw", "mangle", "nat", "filter"),
    "PREROUTING": ("raw", "mangle", "nat"),
    "INPUT": ("mangle", "filter"),
}


# --- parsing --------------------------------------------------------------------------------------------------


class Entry(NamedTuple):
    """One rule as listed by iptables-save: where it is, its text, and its structure (None if unparseable)."""

    table: str
    chain: str
    num: int  # 1-based, as `iptables -L --line-numbers` counts
    spec: str
    rule: Rule | None
    goto: bool = False
    problem: str | None = None

    def line(self) -> str:
        return f"-A {self.chain} {self.spec}"


class Tables(NamedTuple):
    """One family's tables: table -> chain -> entries, plus the built-in chains' policies."""

    family: Family
    chains: Mapping[str, Mapping[str, tuple[Entry, ...]]]
    policies: Mapping[tuple[str, str], str]

    def has_ours(self) -> bool:
        return any(c in OWN_CHAINS for t in self.chains.values() for c in t)


def load_tables(text: str, family: Family) -> Tables:
    """iptables-save text -> ``Tables``: every rule read with ``parse_rule``, and the built-in chains' policies."""
    chains: dict[str, dict[str, tuple[Entry, ...]]] = {}
    for t, st in parse_save(text).items():
        chains[t] = {}
        for c, specs in st.chains.items():
            entries = []
            for n, spec in enumerate(specs, 1):
                rule, goto, problem = parse_rule(t, c, spec)
                entries.append(Entry(t, c, n, spec, rule, goto, problem))
            chains[t][c] = tuple(entries)
    return Tables(family, chains, chain_policies(text))


# --- the connection and the packet ----------------------------------------------------------------------------


class Connection(NamedTuple):
    """What the user asks about. ``None`` means "not known": rules that depend on it cannot be decided."""

    direction: Direction
    dst: Addr
    dport: int
    proto: str = "tcp"
    src: Addr | None = None
    sport: int | None = None  # None: an ephemeral port (a client that did not bind one)
    uid: int | None = None
    gid: int | None = None
    in_iface: str | None = None  # inbound: the interface it arrives on (NOT_LO: some interface other than lo)
    out_iface: str | None = None  # outbound: the route's interface ("lo" for an address of this namespace)
    mark: int = 0  # SO_MARK of the sending socket

    def describe(self) -> str:
        parts = [
            self.direction,
            self.proto,
            f"{_hp(self.src, self.sport) if self.src else '?'} -> {_hp(self.dst, self.dport)}",
        ]
        if self.direction == "outbound":
            parts.append(f"uid {_q(self.uid)} gid {_q(self.gid)}")
            parts.append(f"out {_iface_words(self.out_iface)}")
        else:
            parts.append(f"in {_iface_words(self.in_iface)}")
        if self.mark:
            parts.append(f"mark {self.mark:#x}")
        return ", ".join(parts)

    def to_json(self) -> dict[str, Any]:
        d = self._asdict()
        for k in ("dst", "src"):
            d[k] = None if d[k] is None else str(d[k])
        return d


def _q(v: object) -> str:
    return "?" if v is None else str(v)


def _iface_words(v: str | None) -> str:
    if v is None:
        return "?"
    return {NOT_LO: "a non-lo interface", "": "-"}.get(v, v)


def _hp(a: Addr | None, port: int | None) -> str:
    host = "?" if a is None else (f"[{a}]" if a.version == 6 else str(a))
    return f"{host}:{port}" if port is not None else host


class Packet(NamedTuple):
    proto: str
    src: Addr | None
    dst: Addr
    sport: int | None
    dport: int
    in_iface: str | None
    out_iface: str | None
    uid: int | None
    gid: int | None
    local_socket: bool  # sent by a local socket: owner matches apply
    mark: int = 0
    ctmark: int = 0
    ctstate: frozenset[str] = frozenset({"NEW"})
    zone: int = 0


# --- matching -------------------------------------------------------------------------------------------------


def _neg(value: str) -> tuple[bool, str]:
    return (True, value[1:]) if value.startswith("!") else (False, value)


def _flip(v: Tri, neg: bool) -> Tri:
    return v if v is None or not neg else not v


def _net(value: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    return ipaddress.ip_network(value, strict=False)


def _iface_match(pattern: str, have: str | None) -> Tri:
    if have is None:
        return None
    wildcard = pattern.endswith("+")
    stem = pattern[:-1] if wildcard else pattern
    if have == NOT_LO:
        return False if pattern == "lo" else None
    return have.startswith(stem) if wildcard else have == pattern


def _port_spec(spec: str) -> tuple[int, int]:
    lo, _, hi = spec.partition(":")
    return int(lo), int(hi or lo)


def _port_in(port: int | None, specs: Iterable[str]) -> Tri:
    """Is ``port`` in any of the ``a`` / ``a:b`` specs? An unknown (ephemeral) port is decided when it can be."""
    ranges = [_port_spec(s) for s in specs]
    if port is not None:
        return any(lo <= port <= hi for lo, hi in ranges)
    e_lo, e_hi = EPHEMERAL
    if any(lo <= e_lo and e_hi <= hi for lo, hi in ranges):
        return True
    if all(hi < e_lo or lo > e_hi for lo, hi in ranges):
        return False
    return None


def _id_in(have: int | None, spec: str) -> Tri:
    if have is None:
        return None
    lo, _, hi = spec.partition("-")
    return int(lo) <= have <= int(hi or lo)


def _mark_match(have: int, spec: str) -> bool:
    value, _, mask = spec.partition("/")
    m = int(mask, 0) if mask else 0xFFFFFFFF
    return (have & m) == int(value, 0)


_PROTO_NUM = {"tcp": "6", "udp": "17"}


class Cond(NamedTuple):
    result: Tri
    text: str  # the condition as written in the rule
    why: str  # what the packet has, when it does not match / cannot be decided


def _conditions(rule: Rule, pkt: Packet) -> list[Cond]:
    out: list[Cond] = []
    for flag, value, addr in (("-s", rule.src, pkt.src), ("-d", rule.dst, pkt.dst)):
        if value is None:
            continue
        neg, v = _neg(value)
        text = f"{'! ' if neg else ''}{flag} {v}"
        if addr is None:
            out.append(Cond(None, text, "the source address is not known (pass --src)"))
            continue
        net = _net(v)
        inside = addr.version == net.version and addr in net
        out.append(Cond(_flip(inside, neg), text, f"{'source' if flag == '-s' else 'destination'} is {addr}"))
    for flag, value, iface in (("-i", rule.in_iface, pkt.in_iface), ("-o", rule.out_iface, pkt.out_iface)):
        if value is None:
            continue
        neg, v = _neg(value)
        text = f"{'! ' if neg else ''}{flag} {v}"
        r = _iface_match(v, iface)
        what = "arrives on" if flag == "-i" else "leaves via"
        hint = " (pass --in-iface)" if flag == "-i" else " (pass --out-iface)"
        if r is None:
            side = "input" if flag == "-i" else "output"
            known = "not lo, but which one is not known" if iface == NOT_LO else "not known"
            why = f"the {side} interface is {known}{hint}"
        else:
            why = f"{what} {_iface_words(iface)}"
        out.append(Cond(_flip(r, neg), text, why))
    if rule.proto is not None:
        neg, v = _neg(rule.proto)
        r = v == "all" or v == pkt.proto or v == _PROTO_NUM.get(pkt.proto)
        out.append(Cond(_flip(r, neg), f"{'! ' if neg else ''}-p {v}", f"protocol is {pkt.proto}"))
    for m in rule.matches:
        out.extend(_module(m, pkt))
    return out


def _module(m: Match, pkt: Packet) -> list[Cond]:
    """One ``-m`` module. Every option of a module we do not fully understand makes it "unknown"."""
    text = m.render()
    unknown = Cond(None, text, f"unknown match {text!r} - cannot decide")
    out: list[Cond] = []
    for name, value in m.opts:
        neg, v = _neg(value)
        opt = f"-m {m.module} {'! ' if neg else ''}--{name} {v}".rstrip()
        r: Tri
        if m.module in ("tcp", "udp") and name in ("dport", "sport", "destination-port", "source-port"):
            port = pkt.dport if name.startswith("d") else pkt.sport
            r = m.module == pkt.proto and _port_in(port, [v])
            side = "destination" if name.startswith("d") else "source"
            why = f"{side} port is {port if port is not None else 'ephemeral'}"
            if r is None:
                why += " (pass --src IP:PORT)"
        elif m.module == "tcp" and name == "syn":
            r, why = pkt.proto == "tcp", "the first packet of a TCP connection is a SYN"
        elif m.module == "multiport" and name in ("dports", "sports", "ports", "destination-ports", "source-ports"):
            specs = v.split(",")
            if name in ("ports",):
                r = _or(_port_in(pkt.dport, specs), _port_in(pkt.sport, specs))
            else:
                r = _port_in(pkt.dport if name.startswith("d") else pkt.sport, specs)
            why = f"ports are {pkt.sport if pkt.sport is not None else 'ephemeral'} -> {pkt.dport}"
        elif m.module == "owner" and name in ("uid-owner", "gid-owner"):
            if not pkt.local_socket:
                r, why = None, "owner matches only packets of a local socket"
            else:
                have = pkt.uid if name == "uid-owner" else pkt.gid
                r = _id_in(have, v)
                kind = "uid" if name == "uid-owner" else "gid"
                why = f"the socket's {kind} is " + (f"not known (pass --{kind})" if have is None else str(have))
        elif m.module == "owner" and name == "socket-exists":
            r, why = pkt.local_socket, "sent by a local socket" if pkt.local_socket else "no local socket"
        elif m.module in ("mark", "connmark") and name == "mark":
            have = pkt.mark if m.module == "mark" else pkt.ctmark
            r, why = _mark_match(have, v), f"{'packet' if m.module == 'mark' else 'connection'} mark is {have:#x}"
        elif m.module in ("conntrack", "state") and name in ("ctstate", "state"):
            r = bool(pkt.ctstate & set(v.split(",")))
            why = f"conntrack state is {','.join(sorted(pkt.ctstate))}"
        elif m.module == "comment" and name == "comment":
            continue
        else:
            return [*out, unknown]
        out.append(Cond(_flip(r, neg), opt, why))
    return out


def _or(a: Tri, b: Tri) -> Tri:
    if a or b:
        return True
    return None if a is None or b is None else False


def match_rule(rule: Rule, pkt: Packet) -> tuple[Tri, str]:
    """All conditions true -> True; any certainly false -> False (with that reason); else None (with why)."""
    conds = _conditions(rule, pkt)
    for c in conds:
        if c.result is False:
            return False, f"{c.text}: {c.why}"
    for c in conds:
        if c.result is None:
            return None, c.why if c.why.startswith("unknown match") else f"{c.text}: {c.why}"
    return True, ""


# --- the walk -------------------------------------------------------------------------------------------------


class Step(NamedTuple):
    """One thing the walk did, in order; ``result`` is enter/match/no/unknown/end/policy/note."""

    hook: str
    table: str
    chain: str
    result: str
    line: str = ""
    num: int = 0
    action: str = ""
    why: str = ""

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in self._asdict().items() if v not in ("", 0) or k in ("result",)}


class Verdict(NamedTuple):
    kind: Literal["captured", "bypass", "dropped", "unknown", "unroutable"]
    summary: str  # the answer in words
    port: int | None = None  # where it lands: the listener's port, or the original port on a bypass
    listener: str | None = None  # outbound | inbound | dns (captured only)
    rule: str | None = None  # the rule that decided, as iptables-save prints it
    delivered: str = ""  # where the connection goes, in words

    def to_json(self) -> dict[str, Any]:
        return self._asdict()


class Explanation(NamedTuple):
    connection: Connection
    family: Family
    steps: tuple[Step, ...]
    verdict: Verdict
    notes: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "connection": self.connection.to_json(),
            "family": self.family,
            "verdict": self.verdict.to_json(),
            "path": [s.to_json() for s in self.steps],
            "notes": list(self.notes),
        }

    def render(self, verbose: bool = False) -> str:
        """The path as text: chains entered and rules that matched (``verbose``: every rule looked at)."""
        lines = [f"connection: {self.connection.describe()}"]
        cur = ""
        for s in self.steps:
            if s.result == "note":
                lines.append(f"  ({s.why})")
                cur = ""
                continue
            if s.result == "no" and not verbose:
                continue
            head = f"{s.table} {s.chain}"
            if s.result == "enter" or head != cur:
                lines.append(head if s.result == "enter" else f"{head} (continued)")
                cur = head
            if s.result == "no":
                lines.append(f"  #{s.num} no     {s.line}    ({s.why})")
            elif s.result == "match":
                lines.append(f"  #{s.num} match  {s.line}    -> {s.action}")
            elif s.result == "unknown":
                lines.append(f"  #{s.num} ?      {s.line}    ({s.why})")
            elif s.result == "end":
                lines.append(f"  (end of {s.chain}: {s.action})")
            elif s.result == "policy":
                lines.append(f"  (end of {s.chain}: policy {s.action})")
        v = self.verdict
        lines.append(f"verdict: {v.summary}")
        if v.delivered:
            lines.append(f"         {v.delivered}")
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


class _Exit(NamedTuple):
    """How the packet left a chain of ours that a built-in chain jumped to (what decided a bypass)."""

    table: str
    hook: str
    chain: str
    entry: Entry | None  # the RETURN rule; None: fell off the end of ``chain``
    missed: tuple[str, ...] = ()  # chains of ours entered below it that did not act (e.g. ISTIO_REDIRECT for UDP)


class _State:
    def __init__(self, tables: Tables) -> None:
        self.t = tables
        self.steps: list[Step] = []
        self.notes: list[str] = []
        self.exits: list[_Exit] = []
        self.entered: set[tuple[str, str]] = set()  # (table, own chain)
        self.captured: tuple[Entry, int, str] | None = None  # rule, port, REDIRECT|TPROXY
        self.dropped: Entry | str | None = None
        self.unknown: tuple[Entry | None, str] | None = None
        self.accepted: dict[tuple[str, str], Entry] = {}  # (table, hook) -> the ACCEPT that ended it


def _int0(v: str) -> int:
    return int(v, 0)


def _xmark(pkt_mark: int, spec: str) -> int:
    value, _, mask = spec.partition("/")
    m = int(mask, 0) if mask else 0xFFFFFFFF
    return (pkt_mark & ~m & 0xFFFFFFFF) ^ int(value, 0)


def _target(st: _State, e: Entry, pkt: Packet, hook: str) -> tuple[str, Packet, str]:
    """Apply a matched rule's target: (flow, packet, words). flow: continue/jump/goto/return/accept/drop/unknown."""
    assert e.rule is not None
    t = e.rule.target
    opts = dict(e.rule.target_opts)
    chains = st.t.chains.get(e.table, {})
    if t in chains and t not in BUILTIN_CHAINS:
        return ("goto" if e.goto else "jump"), pkt, f"{'goto' if e.goto else 'jump'} {t}"
    if t in ("ACCEPT", "DROP", "RETURN"):
        return t.lower(), pkt, t
    if t == "REJECT":
        return "drop", pkt, "REJECT (refused)"
    if t in ("LOG", "NFLOG", "TRACE"):
        return "continue", pkt, f"{t} (no effect on the packet)"
    if t == "REDIRECT" and e.table == "nat" and set(opts) <= {"to-ports"}:
        port_spec = opts.get("to-ports") or str(pkt.dport)
        port = int(port_spec.split("-")[0].split(":")[0])
        if hook == "OUTPUT":
            dst: Addr = ipaddress.ip_address("127.0.0.1" if pkt.dst.version == 4 else "::1")
            where = f"{dst} port {port}"
        else:
            dst, where = pkt.dst, f"port {port} (on an address of the incoming interface)"
        st.captured = (e, port, "REDIRECT")
        states = pkt.ctstate | {"DNAT"}
        return "accept", pkt._replace(dst=dst, dport=port, ctstate=states), f"REDIRECT to {where}"
    if t == "TPROXY" and e.table == "mangle" and set(opts) <= {"on-port", "on-ip", "tproxy-mark"}:
        port = int(opts.get("on-port") or 0) or pkt.dport
        tmark = opts.get("tproxy-mark")
        mark = _xmark(pkt.mark, tmark) if tmark else pkt.mark
        st.captured = (e, port, "TPROXY")
        return "accept", pkt._replace(mark=mark), f"TPROXY to port {port}, mark {mark:#x}"
    if t == "MARK" and set(opts) == {"set-xmark"} and opts["set-xmark"]:
        mark = _xmark(pkt.mark, opts["set-xmark"])
        return "continue", pkt._replace(mark=mark), f"MARK: packet mark {pkt.mark:#x} -> {mark:#x}"
    if t == "CONNMARK":
        nfmask = _int0(opts.get("nfmask") or "0xffffffff")
        ctmask = _int0(opts.get("ctmask") or "0xffffffff")
        keys = set(opts) - {"nfmask", "ctmask"}
        if keys == {"save-mark"}:
            ct = (pkt.ctmark & ~ctmask & 0xFFFFFFFF) ^ (pkt.mark & nfmask)
            return "continue", pkt._replace(ctmark=ct), f"CONNMARK save: connection mark -> {ct:#x}"
        if keys == {"restore-mark"}:
            mark = (pkt.mark & ~nfmask & 0xFFFFFFFF) ^ (pkt.ctmark & ctmask)
            return "continue", pkt._replace(mark=mark), f"CONNMARK restore: packet mark -> {mark:#x}"
        if keys == {"set-xmark"} and opts["set-xmark"]:
            ct = _xmark(pkt.ctmark, opts["set-xmark"])
            return "continue", pkt._replace(ctmark=ct), f"CONNMARK set: connection mark -> {ct:#x}"
    if t == "CT" and set(opts) == {"zone"} and opts["zone"]:
        return "continue", pkt._replace(zone=int(opts["zone"])), f"CT: conntrack zone {opts['zone']}"
    if (t == "CT" and set(opts) == {"notrack"}) or t == "NOTRACK":
        return "continue", pkt._replace(ctstate=frozenset({"UNTRACKED"})), "not tracked (nat will not see it)"
    return "unknown", pkt, f"unknown target {e.rule.target!r} - cannot decide"


def _walk(st: _State, table: str, hook: str, pkt: Packet) -> tuple[str, Packet]:
    """One table's built-in ``hook`` chain (and what it jumps to). Returns (accept|drop|unknown, packet)."""
    chains = st.t.chains.get(table, {})
    policy = st.t.policies.get((table, hook), "ACCEPT")
    if not chains.get(hook) and policy == "ACCEPT":
        return "accept", pkt
    st.steps.append(Step(hook, table, hook, "enter"))
    stack: list[tuple[str, int]] = []
    chain, idx = hook, 0
    missed: list[str] = []
    for _ in range(100_000):  # iptables refuses loops; this only bounds a corrupt input
        rules = chains.get(chain, ())
        if idx >= len(rules):
            if not stack:
                st.steps.append(Step(hook, table, chain, "policy", action=policy))
                if policy == "DROP":
                    st.dropped = f"the policy of {table} {hook} (DROP)"
                    return "drop", pkt
                return "accept", pkt
            st.steps.append(Step(hook, table, chain, "end", action=f"back to {stack[-1][0]}"))
            chain, idx = _pop(st, table, hook, chain, None, stack, missed)
            continue
        e = rules[idx]
        idx += 1
        if e.rule is None:
            st.steps.append(Step(hook, table, chain, "unknown", e.line(), e.num, why=f"{e.problem} - cannot decide"))
            st.unknown = (e, f"{e.problem} - cannot decide")
            return "unknown", pkt
        flow, words = "unknown", ""
        try:
            matched, why = match_rule(e.rule, pkt)
            if matched:
                flow, pkt, words = _target(st, e, pkt, hook)
        except (ValueError, KeyError) as err:  # a value iptables-save would never print (hand-written dumps)
            matched, why = None, f"cannot read a value in this rule ({err}) - cannot decide"
        if matched is False:
            st.steps.append(Step(hook, table, chain, "no", e.line(), e.num, why=why))
            continue
        if matched is None:
            st.steps.append(Step(hook, table, chain, "unknown", e.line(), e.num, why=why))
            st.unknown = (e, why)
            return "unknown", pkt
        st.steps.append(Step(hook, table, chain, "match" if flow != "unknown" else "unknown", e.line(), e.num, words))
        if flow == "continue":
            continue
        if flow in ("jump", "goto"):
            target = e.rule.target
            if target in OWN_CHAINS:
                st.entered.add((table, target))
            if flow == "jump":
                stack.append((chain, idx))
            elif not stack:  # goto from a built-in chain behaves as a jump that cannot return into it
                stack.append((chain, len(rules)))
            st.steps.append(Step(hook, table, target, "enter"))
            chain, idx = target, 0
            continue
        if flow == "return":
            if not stack:
                st.exits.append(_Exit(table, hook, chain, e))
                st.steps.append(Step(hook, table, chain, "policy", action=f"{policy} (RETURN from a built-in chain)"))
                return ("drop" if policy == "DROP" else "accept"), pkt
            chain, idx = _pop(st, table, hook, chain, e, stack, missed)
            continue
        if flow == "accept":
            if e.rule.target == "ACCEPT":
                st.accepted.setdefault((table, hook), e)
            return "accept", pkt
        if flow == "drop":
            st.dropped = e
            return "drop", pkt
        st.unknown = (e, words)
        return "unknown", pkt
    raise ValueError(f"rule walk in {table} {hook} does not terminate")


def _pop(
    st: _State, table: str, hook: str, chain: str, e: Entry | None, stack: list[tuple[str, int]], missed: list[str]
) -> tuple[str, int]:
    back = stack.pop()
    if not stack:  # leaving the chain a built-in chain jumped to: this is what decided a bypass
        st.exits.append(_Exit(table, hook, chain, e, tuple(missed)))
        missed.clear()
    elif e is None and chain in OWN_CHAINS:
        missed.append(chain)
    return back


def _run_hook(st: _State, hook: str, pkt: Packet, skip_nat: bool = False) -> tuple[str, Packet]:
    for table in _HOOK_ORDER[hook]:
        if table == "nat" and (skip_nat or "UNTRACKED" in pkt.ctstate):
            if st.t.chains.get("nat", {}).get(hook):
                why = (
                    "conntrack already took this connection's NAT decision in nat OUTPUT"
                    if skip_nat
                    else "the packet is not tracked, and NAT needs conntrack"
                )
                st.steps.append(Step(hook, "nat", hook, "note", why=f"nat {hook} is not consulted: {why}"))
            continue
        mark_before = pkt.mark
        flow, pkt = _walk(st, table, hook, pkt)
        if flow != "accept":
            return flow, pkt
        if hook == "OUTPUT" and table == "mangle" and pkt.mark != mark_before:
            st.notes.append(
                f"mangle OUTPUT changed the packet mark to {pkt.mark:#x}; the kernel then re-routes it "
                "(fwmark policy routing is not modelled here)"
            )
    return "accept", pkt


def explain(tables: Tables, conn: Connection) -> Explanation:
    """Walk ``conn``'s first packet through ``tables`` and give the verdict."""
    st = _State(tables)
    fam = tables.family
    if conn.dst.version != fam:
        raise ValueError(f"IPv{conn.dst.version} destination against IPv{fam} rules")
    if conn.direction == "outbound":
        pkt = Packet(
            conn.proto,
            conn.src,
            conn.dst,
            conn.sport,
            conn.dport,
            "",
            conn.out_iface,
            conn.uid,
            conn.gid,
            True,
            conn.mark,
        )
        flow, pkt = _run_hook(st, "OUTPUT", pkt)
        loops = pkt.out_iface == "lo" or (st.captured is not None and st.captured[2] == "REDIRECT")
        if flow == "accept" and loops:
            st.steps.append(
                Step("PREROUTING", "-", "lo", "note", why="the packet loops back over lo into PREROUTING and INPUT")
            )
            pkt = pkt._replace(in_iface="lo", out_iface="", local_socket=False)
            flow, pkt = _run_hook(st, "PREROUTING", pkt, skip_nat=True)
            if flow == "accept":
                flow, pkt = _run_hook(st, "INPUT", pkt)
        elif flow == "accept" and pkt.out_iface is None:
            st.notes.append("the output interface is unknown: if it is lo, PREROUTING/INPUT on lo also apply")
    else:
        pkt = Packet(
            conn.proto, conn.src, conn.dst, conn.sport, conn.dport, conn.in_iface, "", None, None, False, conn.mark
        )
        flow, pkt = _run_hook(st, "PREROUTING", pkt)
        if flow == "accept":
            flow, pkt = _run_hook(st, "INPUT", pkt)
    verdict = _verdict(st, conn, pkt, flow)
    return Explanation(conn, fam, tuple(st.steps), verdict, tuple(st.notes))


# --- the verdict in words -------------------------------------------------------------------------------------


class _Names(NamedTuple):
    """What the rules themselves say about the settings, to name the flag behind a bypass."""

    proxy_uids: frozenset[str]
    proxy_gids: frozenset[str]
    tunnel_port: str | None
    kube_virt: frozenset[str]


def _names(t: Tables) -> _Names:
    nat = t.chains.get("nat", {})
    uids: set[str] = set()
    gids: set[str] = set()
    for e in nat.get("ISTIO_OUTPUT", ()):
        if e.rule and e.rule.target == "ISTIO_IN_REDIRECT":
            for m in e.rule.matches:
                for name, value in m.opts if m.module == "owner" else ():
                    (uids if name == "uid-owner" else gids).add(value)
    tunnel = None
    inbound = nat.get("ISTIO_INBOUND", ())
    if inbound and inbound[0].rule and inbound[0].rule.target == "RETURN":
        tunnel = _dport(inbound[0].rule)
    virt = {e.rule.in_iface for e in nat.get("PREROUTING", ()) if e.rule and e.rule.target == "ISTIO_REDIRECT"}
    return _Names(frozenset(uids), frozenset(gids), tunnel, frozenset(v for v in virt if v))


def _dport(r: Rule) -> str | None:
    for m in r.matches:
        for name, value in m.opts:
            if name == "dport":
                return value
    return None


def _owner_ids(r: Rule) -> list[tuple[str, str]]:
    return [(name[:3], value) for m in r.matches if m.module == "owner" for name, value in m.opts]


def bypass_reason(e: Entry, names: _Names) -> str:
    """A RETURN rule netinit writes -> why it lets traffic through, naming the flag (and Istio annotation)."""
    r = e.rule
    assert r is not None
    owners = _owner_ids(r)
    plain = not (r.src or r.dst or r.in_iface or r.out_iface or r.proto)
    only_owner = plain and bool(r.matches) and all(m.module == "owner" for m in r.matches)
    if (
        r.src
        and r.out_iface == "lo"
        and _net(r.src.lstrip("!")).network_address
        in (
            ipaddress.ip_address("127.0.0.6"),
            ipaddress.ip_address("::6"),
        )
    ):
        return f"bypass: from {r.src.split('/')[0]}, the proxy's inbound passthrough address (proxy -> app)"
    if r.src and r.in_iface == "lo":
        return f"bypass: from {r.src.split('/')[0]} over lo, the proxy's inbound passthrough address"
    if only_owner and len(owners) == 1 and not owners[0][1].startswith("!"):
        kind, ident = owners[0]
        if kind == "uid":
            return f"bypass: proxy UID {ident}" if ident in names.proxy_uids else f"bypass: owner UID {ident}"
        if ident in names.proxy_gids:
            return f"bypass: proxy GID {ident}"
        return f"bypass: excluded owner group {ident} (ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE)"
    if only_owner and all(k == "gid" and v.startswith("!") for k, v in owners):
        groups = ",".join(v[1:] for _, v in owners)
        return f"bypass: owner group not in ISTIO_OUTBOUND_OWNER_GROUPS ({groups})"
    if r.out_iface == "lo" and any(v.startswith("!") for _, v in owners):
        kind, ident = next((k, v[1:]) for k, v in owners if v.startswith("!"))
        return f"bypass: the app talking to this pod over lo (owner is not the proxy {kind.upper()} {ident})"
    if r.dst and not (r.src or r.proto or r.matches or r.out_iface or r.in_iface):
        net = _net(r.dst.lstrip("!"))
        if net.network_address.is_loopback:
            return f"bypass: destination is localhost ({r.dst})"
        return f"bypass: excluded CIDR {r.dst} (from -x / excludeOutboundIPRanges)"
    if e.chain == "ISTIO_OUTPUT" and _dport(r) and r.proto in ("tcp", "udp") and not owners:
        return f"bypass: excluded outbound port {_dport(r)} (from -o / excludeOutboundPorts)"
    if e.chain == "ISTIO_INBOUND" and _dport(r):
        port = _dport(r)
        if e.table == "nat" and e.num == 1 and port == names.tunnel_port:
            return f"bypass: inbound tunnel port {port} (-e: never captured)"
        return f"bypass: excluded inbound port {port} (from -d / excludeInboundPorts)"
    if e.chain == "ISTIO_INBOUND" and any(m.module == "mark" for m in r.matches):
        mark = next(v for m in r.matches if m.module == "mark" for _, v in m.opts)
        if mark.startswith("!"):
            return f"bypass: local traffic over lo that the proxy did not mark ({mark[1:]})"
        return f"bypass: already marked {mark} (TPROXY mark: a connection the proxy already handles)"
    if e.chain == "PREROUTING" and r.in_iface and not (r.dst or r.src or r.matches or r.proto):
        if r.in_iface in names.kube_virt:
            return f"bypass: arrives on kube-virt interface {r.in_iface} (-k / kubevirtInterfaces: not inbound)"
        return f"bypass: excluded interface {r.in_iface} (from -c / excludeInterfaces)"
    if e.chain == "OUTPUT" and r.out_iface and not (r.dst or r.src or r.matches or r.proto):
        return f"bypass: excluded interface {r.out_iface} (from -c / excludeInterfaces)"
    return f"bypass: RETURN by `{e.line()}`"


def _verdict(st: _State, conn: Connection, pkt: Packet, flow: str) -> Verdict:
    dst = _hp(conn.dst, conn.dport)
    if flow == "unknown":
        assert st.unknown is not None
        e, why = st.unknown
        where = f"{e.table} {e.chain} #{e.num}" if e else "?"
        return Verdict("unknown", f"cannot decide at {where}: {why}", rule=e.line() if e else None)
    if flow == "drop":
        d = st.dropped
        if isinstance(d, Entry):
            return Verdict("dropped", f"dropped by {d.table} {d.chain} #{d.num}", rule=d.line())
        return Verdict("dropped", f"dropped by {d}")
    if st.captured is not None:
        e, port, how = st.captured
        listener = LISTENERS.get(e.chain)
        if how == "TPROXY":
            summary = (
                f"captured → inbound {port} (TPROXY: original destination kept; needs a listener with "
                "IP_TRANSPARENT there, else the kernel drops the packet)"
            )
            listener = listener or "inbound"
        elif listener == "outbound":
            summary = f"captured → outbound listener {port} (original destination kept)"
        elif listener == "inbound" and conn.direction == "outbound":
            summary = f"captured → inbound {port} (the proxy calling an address of this pod: inbound policy applies)"
        elif listener == "inbound":
            summary = f"captured → inbound {port}"
        elif listener == "dns":
            summary = f"DNS → {port}"
        else:
            summary = f"redirected → port {port} by a rule that is not netinit's"
        return Verdict("captured", summary, port, listener, e.line(), f"original destination {dst}")
    # Not captured: the reason is how the packet left netinit's capture chain.
    if conn.direction == "outbound":
        decisive = [("nat", "OUTPUT")]
    else:
        mangle_pre = st.t.chains.get("mangle", {}).get("PREROUTING", ())
        tproxy = any(e.rule and e.rule.target == "ISTIO_INBOUND" for e in mangle_pre)
        decisive = [("mangle", "PREROUTING")] if tproxy else [("nat", "PREROUTING")]
    table, hook = decisive[0]
    exits = [x for x in st.exits if (x.table, x.hook) == (table, hook)]
    names = _names(st.t)
    if conn.direction == "outbound":
        via = "lo" if pkt.out_iface == "lo" else _iface_words(pkt.out_iface)
        delivered = f"delivered to {dst} in this pod (over lo)" if via == "lo" else f"goes to {dst} unchanged via {via}"
    else:
        delivered = f"delivered to {dst} unchanged (to whatever listens there)"
    if exits and exits[0].entry is not None:
        x = exits[0]
        assert x.entry is not None
        return Verdict("bypass", bypass_reason(x.entry, names), conn.dport, rule=x.entry.line(), delivered=delivered)
    if exits:
        x = exits[0]
        if any(c in ("ISTIO_REDIRECT", "ISTIO_IN_REDIRECT") for c in x.missed):
            return Verdict(
                "bypass", f"bypass: not TCP ({conn.proto}: only TCP is redirected)", conn.dport, delivered=delivered
            )
        if x.chain == "ISTIO_OUTPUT":
            why = (
                "bypass: no rule in ISTIO_OUTPUT matched (destination outside the -i CIDRs / "
                "includeOutboundIPRanges, port not in -q)"
            )
        elif x.chain == "ISTIO_INBOUND":
            why = f"bypass: port {conn.dport} is not captured inbound (not in -b / includeInboundPorts)"
        else:
            why = f"bypass: no rule of {x.chain} matched"
        return Verdict("bypass", why, conn.dport, delivered=delivered)
    accepted = st.accepted.get((table, hook))
    if accepted is not None and accepted.chain not in OWN_CHAINS:
        why = f"bypass: accepted by {table} {accepted.chain} #{accepted.num} before capture (not a netinit rule)"
        return Verdict("bypass", why, conn.dport, rule=accepted.line(), delivered=delivered)
    if not st.t.has_ours():
        why = f"bypass: no netinit rules in IPv{st.t.family}"
    elif (table, "ISTIO_INBOUND" if hook == "PREROUTING" else "ISTIO_OUTPUT") in st.entered:
        why = "bypass: not captured"
    elif conn.direction == "inbound":
        jumps = any(e.rule and e.rule.target == "ISTIO_INBOUND" for e in st.t.chains.get(table, {}).get(hook, ()))
        why = (
            f"bypass: not TCP ({conn.proto}: only TCP is captured inbound)"
            if jumps
            else "bypass: inbound capture is off (-b / includeInboundPorts is empty: nothing jumps to ISTIO_INBOUND)"
        )
    else:
        why = "bypass: nat OUTPUT does not send this traffic to ISTIO_OUTPUT"
    return Verdict("bypass", why, conn.dport, delivered=delivered)


def explain_text(texts: Mapping[Family, str], conn: Connection) -> Explanation:
    """Convenience: iptables-save text per family -> the explanation for ``conn``'s family."""
    fam: Family = 6 if conn.dst.version == 6 else 4
    return explain(load_tables(texts.get(fam, ""), fam), conn)
