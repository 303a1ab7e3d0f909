"""``netinit explain``'s connection: what the user said (``Query``), completed into a ``Connection`` - from the
kernel's routes when the rules are live (we are in the namespace), else from assumptions it states.
"""

from __future__ import annotations

import ipaddress
from typing import NamedTuple

from netinit.apply.runner import Runner
from netinit.debug.live import route, single_link
from netinit.debug.model import NOT_LO, Addr, Connection, Direction
from netinit.errors import ConfigError


def parse_endpoint(value: str, flag: str, need_port: bool) -> tuple[Addr, int | None]:
    """``IP``, ``IP:PORT``, ``[V6]:PORT`` or a bare IPv6 address."""
    host, port = value, None
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else None
    elif value.count(":") == 1:
        host, _, port = value.partition(":")
    try:
        addr = ipaddress.ip_address(host)
        p = int(port) if port is not None else None
    except ValueError:
        raise ConfigError(f"netinit: invalid value for {flag}: {value!r} (expected IP:PORT or [IPv6]:PORT)") from None
    if need_port and p is None and addr.version == 6:
        head, _, tail = value.rpartition(":")
        example = f"[{head}]:{tail}" if _is_v6(head) and tail.isdigit() else "[fd00::1]:80"
        raise ConfigError(
            f"netinit: invalid value for {flag}: {value!r} (an IPv6 address with a port needs brackets: {example})"
        )
    if (p is not None and not 0 < p < 65536) or (need_port and p is None):
        raise ConfigError(f"netinit: invalid value for {flag}: {value!r} (expected a port 1-65535)")
    return addr, p


def _is_v6(text: str) -> bool:
    try:
        return ipaddress.ip_address(text).version == 6
    except ValueError:
        return False


class Query(NamedTuple):
    """A connection as the user describes it (``netinit explain`` arguments), before defaults are filled in."""

    direction: Direction
    dst: str  # IP:PORT or [IPv6]:PORT
    src: str | None = None  # IP or IP:PORT
    proto: str = "tcp"
    uid: int | None = None
    gid: int | None = None  # default: uid
    in_iface: str | None = None
    out_iface: str | None = None
    mark: int = 0


def build_connection(q: Query, live: bool, runner: Runner) -> tuple[Connection | None, list[str], str | None]:
    """Fill in what the user did not say - from the kernel's routes when ``live`` (we are in the namespace),
    else from stated assumptions. Returns (connection, notes, why the connection cannot be made at all)."""
    dst, dport = parse_endpoint(q.dst, "--dst", need_port=True)
    src, sport = parse_endpoint(q.src, "--src", need_port=False) if q.src else (None, None)
    if src is not None and src.version != dst.version:
        raise ConfigError("netinit: --src and --dst must be of the same IP family")
    assert dport is not None
    gid = q.gid if q.gid is not None else q.uid
    notes: list[str] = []
    conn = Connection(q.direction, dst, dport, q.proto, src, sport, q.uid, gid, mark=q.mark)
    if q.direction == "outbound":
        out_iface = q.out_iface
        if live and (out_iface is None or src is None):
            rt = route(runner, dst, src, q.mark)
            if isinstance(rt, str):
                return None, notes, f"no route to {dst}: connect() fails before any rule is consulted ({rt})"
            out_iface = out_iface or str(rt.get("dev", "")) or None
            if src is None and rt.get("prefsrc"):
                src = ipaddress.ip_address(rt["prefsrc"])
                notes.append(f"source {src} and interface {out_iface}: the kernel's route to {dst}")
        elif out_iface is None:
            out_iface = "lo" if dst.is_loopback else NOT_LO
            if not dst.is_loopback:
                notes.append(f"assuming {dst} is not an address of this pod (else pass --out-iface lo)")
        if src is None and out_iface == "lo":
            src = dst if not dst.is_loopback else ipaddress.ip_address("127.0.0.1" if dst.version == 4 else "::1")
            notes.append(f"source {src}: the kernel's choice for a local destination (pass --src to change it)")
        return conn._replace(out_iface=out_iface, src=src), notes, None
    in_iface = q.in_iface
    if in_iface is None and live:
        if src is not None:
            rt = route(runner, src)
            in_iface = str(rt["dev"]) if isinstance(rt, dict) and rt.get("dev") else None
        in_iface = in_iface or single_link(runner)
        if in_iface:
            notes.append(f"arriving on {in_iface} (the interface this namespace reaches the source by)")
    if in_iface is None:
        in_iface = NOT_LO
    if in_iface == "lo":
        notes.append("traffic from this pod to itself is outbound: explain it with --direction outbound")
    return conn._replace(in_iface=in_iface), notes, None
