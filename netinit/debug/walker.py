"""``netinit explain``: walk one connection through iptables rules as the kernel would, and say why it ends where
it does.

Pure: the input is ``Tables`` (``netinit.debug.model.load_tables`` of ``iptables-save`` text) and a
``Connection``; the output is an ``Explanation`` - every chain entered, every rule looked at (``matcher``), and
the verdict in words (``verdict``). Reading live rules, entering namespaces and asking the kernel for routes are
the job of ``netinit.debug.live`` and ``netinit.debug.cli``.

The model is the *first* packet of a connection (a TCP SYN, conntrack state NEW), the only packet the nat table
ever sees:

- outbound (locally generated): raw, mangle, nat, filter OUTPUT. When the packet then leaves over ``lo`` (its
  destination is an address of this namespace, or nat OUTPUT redirected it to 127.0.0.1/::1) it comes back in
  through raw and mangle PREROUTING and mangle/filter INPUT on ``lo`` - but **not** through nat PREROUTING:
  conntrack already took this connection's NAT decision in nat OUTPUT, and the nat table is consulted once.
  Marks set in mangle OUTPUT travel with the packet over ``lo`` (TPROXY mode relies on it).
- inbound: raw, mangle, nat PREROUTING, then mangle/filter INPUT. A TPROXY target assigns the socket, which
  wins over anything later.

A rule the matcher cannot decide, or a target this module does not implement ("unknown target ... - cannot
decide"), stops the walk there: nothing is guessed.
"""

from __future__ import annotations

import ipaddress

from netinit.core.plan import BUILTIN_CHAINS, OWN_CHAINS
from netinit.debug.matcher import match_rule
from netinit.debug.model import Addr, ChainExit, Connection, Entry, Packet, Step, Tables, Trace
from netinit.debug.verdict import Explanation, decide

_HOOK_ORDER = {
    "OUTPUT": ("raw", "mangle", "nat", "filter"),
    "PREROUTING": ("raw", "mangle", "nat"),
    "INPUT": ("mangle", "filter"),
}


def _int0(v: str) -> int:
    return int(v, 0)


def _xmark(pkt_mark: int, spec: str) -> int:
    value, _, mask = spec.partition("/")
    m = int(mask, 0) if mask else 0xFFFFFFFF
    return (pkt_mark & ~m & 0xFFFFFFFF) ^ int(value, 0)


def _target(st: Trace, e: Entry, pkt: Packet, hook: str) -> tuple[str, Packet, str]:
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


def _walk(st: Trace, table: str, hook: str, pkt: Packet) -> tuple[str, Packet]:
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
                st.exits.append(ChainExit(table, hook, chain, e))
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
    st: Trace, table: str, hook: str, chain: str, e: Entry | None, stack: list[tuple[str, int]], missed: list[str]
) -> tuple[str, int]:
    back = stack.pop()
    if not stack:  # leaving the chain a built-in chain jumped to: this is what decided a bypass
        st.exits.append(ChainExit(table, hook, chain, e, tuple(missed)))
        missed.clear()
    elif e is None and chain in OWN_CHAINS:
        missed.append(chain)
    return back


def _run_hook(st: Trace, hook: str, pkt: Packet, skip_nat: bool = False) -> tuple[str, Packet]:
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
    st = Trace(tables)
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
    verdict = decide(st, conn, pkt, flow)
    return Explanation(conn, fam, tuple(st.steps), verdict, tuple(st.notes))
