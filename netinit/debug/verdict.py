"""``netinit explain``'s answer in words: the ``Verdict`` a walk comes to, why traffic bypasses capture (naming the
flag and Istio annotation behind the rule that let it through), and the ``Explanation`` as text and JSON. Pure.
"""

from __future__ import annotations

import ipaddress
from typing import Any, Literal, NamedTuple

from netinit.core.plan import OWN_CHAINS, Family, Rule
from netinit.debug.model import Connection, Entry, Packet, Step, Tables, Trace, host_port, iface_words

LISTENERS = {
    "ISTIO_REDIRECT": "outbound",
    "ISTIO_IN_REDIRECT": "inbound",
    "ISTIO_OUTPUT_DNS": "dns",
    "ISTIO_TPROXY": "inbound",
}


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


class RuleSettings(NamedTuple):
    """What the rules themselves say about the settings, to name the flag behind a bypass."""

    proxy_uids: frozenset[str]
    proxy_gids: frozenset[str]
    tunnel_port: str | None
    kube_virt: frozenset[str]


def rule_settings(t: Tables) -> RuleSettings:
    """What the rules of ``t`` themselves say about the proxy uids/gids, tunnel port and kube-virt interfaces."""
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
    return RuleSettings(frozenset(uids), frozenset(gids), tunnel, frozenset(v for v in virt if v))


def _net(value: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    return ipaddress.ip_network(value, strict=False)


def _dport(r: Rule) -> str | None:
    for m in r.matches:
        for name, value in m.opts:
            if name == "dport":
                return value
    return None


def _owner_ids(r: Rule) -> list[tuple[str, str]]:
    return [(name[:3], value) for m in r.matches if m.module == "owner" for name, value in m.opts]


def bypass_reason(e: Entry, names: RuleSettings) -> str:
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


def decide(st: Trace, conn: Connection, pkt: Packet, flow: str) -> Verdict:
    """The verdict of a finished walk (``flow``: how it ended) for ``conn``, in words."""
    dst = host_port(conn.dst, conn.dport)
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
    names = rule_settings(st.t)
    if conn.direction == "outbound":
        via = "lo" if pkt.out_iface == "lo" else iface_words(pkt.out_iface)
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
