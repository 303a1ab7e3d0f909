"""``netinit explain``'s matcher: does a rule match a packet? Pure.

Matching is three-valued. A rule that depends on something the connection does not say (no ``--uid``, an
interface known only as "not lo") gives "cannot decide: ..."; a match this module does not implement gives
"unknown match ... - cannot decide". Neither is ever guessed. A condition that is certainly false still rules a
rule out, whatever else it contains.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import NamedTuple

from netinit.core.plan import Match, Rule
from netinit.debug.model import NOT_LO, Packet, Tri, iface_words

EPHEMERAL = (32768, 60999)  # Linux's default ip_local_port_range: where an unbound client's port comes from


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
            why = f"{what} {iface_words(iface)}"
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
