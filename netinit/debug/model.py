"""``netinit explain``'s model: the rules as the walker reads them (``Tables`` of ``Entry``), the connection the
user asks about (``Connection``), the packet walked through the hooks (``Packet``), and the record of the walk
(``Step``, ``Trace``). Pure.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import Any, Literal, NamedTuple

from netinit.core.plan import OWN_CHAINS, Family, Rule
from netinit.rules.save import chain_policies, parse_rule, parse_save

Addr = ipaddress.IPv4Address | ipaddress.IPv6Address
Tri = bool | None  # True / False / cannot tell
Direction = Literal["inbound", "outbound"]

NOT_LO = "!lo"  # an interface known only to be something other than lo


# --- the rules ----------------------------------------------------------------------------------------------------


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
            f"{host_port(self.src, self.sport) if self.src else '?'} -> {host_port(self.dst, self.dport)}",
        ]
        if self.direction == "outbound":
            parts.append(f"uid {_q(self.uid)} gid {_q(self.gid)}")
            parts.append(f"out {iface_words(self.out_iface)}")
        else:
            parts.append(f"in {iface_words(self.in_iface)}")
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


def iface_words(v: str | None) -> str:
    if v is None:
        return "?"
    return {NOT_LO: "a non-lo interface", "": "-"}.get(v, v)


def host_port(a: Addr | None, port: int | None) -> str:
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


# --- the record of a walk -------------------------------------------------------------------------------------


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


class ChainExit(NamedTuple):
    """How the packet left a chain of ours that a built-in chain jumped to (what decided a bypass)."""

    table: str
    hook: str
    chain: str
    entry: Entry | None  # the RETURN rule; None: fell off the end of ``chain``
    missed: tuple[str, ...] = ()  # chains of ours entered below it that did not act (e.g. ISTIO_REDIRECT for UDP)


class Trace:
    """What a walk saw, filled in as it goes: the steps, and what decided (capture, drop, exit, accept)."""

    def __init__(self, tables: Tables) -> None:
        self.t = tables
        self.steps: list[Step] = []
        self.notes: list[str] = []
        self.exits: list[ChainExit] = []
        self.entered: set[tuple[str, str]] = set()  # (table, own chain)
        self.captured: tuple[Entry, int, str] | None = None  # rule, port, REDIRECT|TPROXY
        self.dropped: Entry | str | None = None
        self.unknown: tuple[Entry | None, str] | None = None
        self.accepted: dict[tuple[str, str], Entry] = {}  # (table, hook) -> the ACCEPT that ended it
