"""``--run-validation``: prove the capture works with real connections, not just that rules exist.

For each captured family (IPv4; IPv6 when IPv6 is planned):

- **outbound**: from a non-proxy UID, a connection to a captured non-local address (192.0.2.1 / 2001:db8::1
  unless the flags narrow capture) must arrive at the outbound port with its original destination intact
  (``SO_ORIGINAL_DST`` / ``IP6T_SO_ORIGINAL_DST``); from the proxy UID the same connection must not be captured;
- **inbound loopback** (istio-iptables' own probe): from the proxy UID, ``127.0.0.1 -> 127.0.0.6:PROBE_PORT``
  (``::1 -> [::6]``) must arrive at the inbound port with the probe port as its original port.

A family whose probe destination has no route is skipped when both are captured and the namespace has no address
of that family (an IPv6-only pod has no IPv4 to capture); otherwise it fails. The route lookup is a UDP
``connect()``, which sends nothing, so "no route here" is told apart from "the probe left the pod uncaptured and the
network answered unreachable".
"""

from __future__ import annotations

import errno
import ipaddress
import os
import select
import socket
import struct
import time
from collections.abc import Callable

from netinit.apply import netns
from netinit.core.config import CaptureConfig
from netinit.core.plan import Family
from netinit.core.values import WILDCARD
from netinit.errors import ValidationFailed

SO_ORIGINAL_DST = 80  # SOL_IP
IP6T_SO_ORIGINAL_DST = 80  # SOL_IPV6 (= IPPROTO_IPV6)
_CANDIDATES = {4: ("192.0.2.1", "198.51.100.1", "203.0.113.1"), 6: ("2001:db8::1", "3fff::1")}
_LOOPBACK = {4: ("127.0.0.1", "127.0.0.6"), 6: ("::1", "::6")}
_AF = {4: socket.AF_INET, 6: socket.AF_INET6}

# How the probe's child process ended (its exit code).
_CONNECTED, _FAILED, _UNREACHABLE, _REFUSED, _TIMEOUT = 0, 1, 4, 5, 6


def original_dst(conn: socket.socket, fam: Family = 4) -> tuple[str, int]:
    if fam == 6:
        raw = conn.getsockopt(socket.IPPROTO_IPV6, IP6T_SO_ORIGINAL_DST, 28)  # sockaddr_in6
        port, packed = struct.unpack_from("!2xH4x16s", raw)
        return socket.inet_ntop(socket.AF_INET6, packed), port
    raw = conn.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
    port, packed = struct.unpack_from("!2xH4s", raw)
    return socket.inet_ntoa(packed), port


def probe_destination(cfg: CaptureConfig, fam: Family = 4) -> tuple[str, int] | None:
    """A non-local destination of family ``fam`` the config captures, or None when it captures none by CIDR."""
    excluded = [n for n in cfg.outbound_cidrs_exclude if n.version == fam]
    candidates: list[ipaddress.IPv4Address | ipaddress.IPv6Address]
    if cfg.outbound_cidrs == WILDCARD:
        candidates = [ipaddress.ip_address(a) for a in _CANDIDATES[fam]]
    else:
        assert not isinstance(cfg.outbound_cidrs, str)
        candidates = [
            ipaddress.ip_address(str(next(iter(n.hosts()), n.network_address)))
            for n in cfg.outbound_cidrs
            if n.version == fam and not n.network_address.is_loopback
        ]
    addr = next((a for a in candidates if not any(a in n for n in excluded)), None)
    if addr is None:
        return None
    port = next((p for p in (80, 8080, 9080, 18080) if not _port_excluded(p, cfg.outbound_ports_exclude)), None)
    if port is None:
        return None
    return str(addr), port


def _port_excluded(port: int, specs: tuple[str, ...]) -> bool:
    for spec in specs:
        lo, _, hi = spec.partition(":")
        if int(lo) <= port <= int(hi or lo):
            return True
    return False


def route_error(fam: Family, dst: str) -> str | None:
    """The local route lookup for ``dst`` (a UDP connect sends nothing): None if there is a route, else why not."""
    with socket.socket(_AF[fam], socket.SOCK_DGRAM) as s:
        try:
            s.connect((dst, 9))
        except OSError as e:
            return e.strerror or str(e)
    return None


_CAP_SETGID, _CAP_SETUID = 6, 7


def can_switch_uid() -> bool:
    """Whether this process may setuid/setgid (root in an init container; not istio-validation's uid 1337)."""
    try:
        with open("/proc/self/status") as status:
            lines = status.read().splitlines()
        for line in lines:
            if line.startswith("CapEff:"):
                caps = int(line.split()[1], 16)
                return bool(caps >> _CAP_SETUID & 1 and caps >> _CAP_SETGID & 1)
    except (OSError, ValueError):
        pass
    return os.geteuid() == 0


def _become(uid: int, gid: int) -> None:  # pragma: no cover - runs in the probe's child
    """Drop to uid/gid (and no supplementary groups) unless the process already is them."""
    if (uid, gid) != (os.getuid(), os.getgid()):
        os.setgroups([])
        os.setgid(gid)
        os.setuid(uid)


def _connect_as(uid: int, gid: int, fam: Family, dst: tuple[str, int], src: str | None, timeout: float) -> int:
    """Fork, drop to uid/gid (unless the process already is them), connect once; returns the child's pid. Its
    exit code says how it went."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        code = _FAILED
        try:
            _become(uid, gid)
            s = socket.socket(_AF[fam], socket.SOCK_STREAM)
            s.settimeout(timeout)
            if src is not None:
                s.bind((src, 0))
            s.connect(dst)
            s.close()
            code = _CONNECTED
        except TimeoutError:
            code = _TIMEOUT
        except OSError as e:
            code = {
                errno.ENETUNREACH: _UNREACHABLE,
                errno.EHOSTUNREACH: _UNREACHABLE,
                errno.ECONNREFUSED: _REFUSED,
            }.get(e.errno or 0, _FAILED)
        os._exit(code)
    return pid


def _accept_or_exit(listener: socket.socket, child: int, deadline: float) -> tuple[socket.socket | None, int]:
    """Wait for a connection on ``listener`` until ``deadline`` or until the child gave up; reap the child."""
    conn = None
    code: int | None = None
    while conn is None and time.monotonic() < deadline:
        r, _, _ = select.select([listener], [], [], 0.05)
        if r:
            conn, _ = listener.accept()
            break
        if code is None:
            done, status = os.waitpid(child, os.WNOHANG)
            if done:
                code = os.waitstatus_to_exitcode(status)
                r, _, _ = select.select([listener], [], [], 0.05)  # a connection that raced the exit
                if r:
                    conn, _ = listener.accept()
                break
    if code is None:
        _, status = os.waitpid(child, 0)
        code = os.waitstatus_to_exitcode(status)
    return conn, code


def _listen(fam: Family, addr: str, port: int) -> socket.socket:
    s = socket.socket(_AF[fam], socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if fam == 6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    try:
        s.bind((addr, port))
    except OSError as e:
        s.close()
        raise ValidationFailed(f"netinit: validation cannot listen on [{addr}]:{port}: {e.strerror}") from None
    s.listen(8)
    return s


def _missed(what: str, port: int, code: int) -> str:
    why = {
        _UNREACHABLE: "it left the pod uncaptured and the network answered unreachable (ICMP): the capture rules are "
        "missing or do not match it",
        _REFUSED: "it left the pod uncaptured and was refused: the capture rules are missing or do not match it",
        _CONNECTED: "it reached the real destination uncaptured: the capture rules are missing or do not match it",
        _TIMEOUT: "it timed out",
    }.get(code, "the connection failed")
    return f"netinit: validation failed: {what} did not reach the port {port} ({why})"


def _outbound(cfg: CaptureConfig, fam: Family, dst: tuple[str, int], app_uid: int, timeout: float) -> None:
    proxy_uid, proxy_gid = int(cfg.proxy_uids[0]), int(cfg.proxy_gids[0])
    listener = _listen(fam, "::" if fam == 6 else "0.0.0.0", cfg.proxy_port)
    shown = f"[{dst[0]}]:{dst[1]}" if fam == 6 else f"{dst[0]}:{dst[1]}"
    try:
        child = _connect_as(app_uid, app_uid, fam, dst, None, timeout)
        conn, code = _accept_or_exit(listener, child, time.monotonic() + timeout)
        if conn is None:
            what = f"a connection from uid {app_uid} to {shown}"
            raise ValidationFailed(_missed(what, cfg.proxy_port, code).replace("the port", "the outbound port"))
        got = original_dst(conn, fam)
        conn.close()
        if got != dst:
            raise ValidationFailed(f"netinit: validation failed: original destination {got} != {dst}")
        if _bypass_captured(listener, proxy_uid, proxy_gid, fam, dst, timeout):
            raise ValidationFailed(f"netinit: validation failed: traffic of the proxy uid {proxy_uid} was captured")
    finally:
        listener.close()


_SETTLE = 0.2  # after the SYN has gone through OUTPUT, a captured handshake over lo completes in microseconds


def _bypass_captured(
    listener: socket.socket, uid: int, gid: int, fam: Family, dst: tuple[str, int], timeout: float
) -> bool:
    """Does the proxy uid's connection to ``dst`` land on the outbound port? Not waiting for the uncaptured
    connection to fail (a network that drops it silently costs a whole connect timeout): the child connects
    non-blocking and reports once connect() has returned - the SYN has then crossed OUTPUT, where the redirect is
    decided - and a captured connection is complete over lo within ``_SETTLE`` of that, whatever the child does
    next. Its exit code (or its report) is not needed beyond that."""
    started_r, started_w = os.pipe()
    done_r, done_w = os.pipe()  # closed by the parent when it has looked: the child then exits by itself (a
    # signal would need CAP_KILL, which the CNI agent's container does not have, once the child is another uid)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        try:
            os.close(started_r)
            os.close(done_w)
            _become(uid, gid)
            s = socket.socket(_AF[fam], socket.SOCK_STREAM)
            s.setblocking(False)
            try:
                s.connect(dst)
            except (BlockingIOError, OSError):
                pass
            os.write(started_w, b"x")
            select.select([done_r], [], [], timeout)  # keep the attempt alive until the parent has looked
        finally:
            os._exit(0)
    os.close(started_w)
    os.close(done_r)
    try:
        ready, _, _ = select.select([started_r], [], [], timeout)
        if not ready or not os.read(started_r, 1):
            raise ValidationFailed("netinit: validation failed: the proxy-uid probe did not start")
        got, _, _ = select.select([listener], [], [], _SETTLE)
        if got:
            listener.accept()[0].close()
        return bool(got)
    finally:
        os.close(started_r)
        os.close(done_w)
        os.waitpid(pid, 0)


def _loopback(cfg: CaptureConfig, fam: Family, probe_port: int, timeout: float) -> None:
    """istio-iptables' probe: the proxy UID dialling 127.0.0.6 / ::6 over lo lands on the inbound port."""
    src, dst = _LOOPBACK[fam]
    if fam == 6 and not netns.has_address("::6"):
        raise ValidationFailed(
            "netinit: validation failed: ::6 is not an address of lo, so the IPv6 probe to [::6] cannot work "
            "(netinit's apply adds it; with --skip-rule-apply whoever applied the rules must)"
        )
    proxy_uid, proxy_gid = int(cfg.proxy_uids[0]), int(cfg.proxy_gids[0])
    if not can_switch_uid():  # istio-validation: probe as ourselves, one of the proxy uids
        proxy_uid, proxy_gid = os.getuid(), os.getgid()
    listener = _listen(fam, src, cfg.inbound_capture_port)
    shown = f"[{dst}]:{probe_port}" if fam == 6 else f"{dst}:{probe_port}"
    try:
        child = _connect_as(proxy_uid, proxy_gid, fam, (dst, probe_port), src, timeout)
        conn, code = _accept_or_exit(listener, child, time.monotonic() + timeout)
        if conn is None:
            what = f"the proxy uid {proxy_uid}'s connection from {src} to {shown}"
            raise ValidationFailed(
                _missed(what, cfg.inbound_capture_port, code).replace("the port", "the inbound port")
            )
        got = original_dst(conn, fam)[1]
        conn.close()
        if got != probe_port:
            raise ValidationFailed(f"netinit: validation failed: the probe's original port {got} != {probe_port}")
    finally:
        listener.close()


def validate(
    cfg: CaptureConfig,
    log: Callable[[str], None],
    probe_port: int = 15002,
    timeout: float = 5.0,
    app_uid: int = 65534,
) -> bool:
    """Probe every captured family; raises ``ValidationFailed``. False when nothing could be probed.

    Without CAP_SETUID (Istio's ``istio-validation``: uid 1337, no capabilities) only the proxy uid's own probe can
    run - the loopback one, as that uid, which proves the inbound redirect is in place (Istio's coverage); the
    outbound probe needs to connect as an app uid and is skipped, saying so."""
    if str(app_uid) in cfg.proxy_uids:
        app_uid = 65533
    privileged = can_switch_uid()
    if not privileged and str(os.getuid()) not in cfg.proxy_uids:
        raise ValidationFailed(
            f"netinit: validation as uid {os.getuid()} without CAP_SETUID cannot probe: run it as a proxy uid "
            f"({','.join(cfg.proxy_uids)}), as istio-validation does, or as root"
        )
    if not privileged:
        log(f"validation: running as uid {os.getuid()} without CAP_SETUID: the outbound probe (as an app uid) "
            "is not run; the loopback probe is, as this uid")  # fmt: skip
    has = dict(zip((4, 6), netns.global_families(), strict=True))
    probed: list[str] = []
    for fam in (4, 6) if cfg.enable_ipv6 else (4,):
        dst = probe_destination(cfg, fam)
        check = dst[0] if dst else _CANDIDATES[fam][0]
        no_route = route_error(fam, check)
        if no_route is not None:
            if not has[fam] and cfg.enable_ipv6:  # the other family is captured and this one is absent
                log(f"validation: IPv{fam} not probed: this namespace has no IPv{fam} address or route")
                continue
            raise ValidationFailed(
                f"netinit: validation failed: no route to the probe destination {check} in this namespace "
                f"({no_route}; capture happens after routing, and a pod needs a default route)"
            )
        if dst is None:
            log(f"validation: the flags capture no probeable IPv{fam} destination; outbound capture not probed")
        elif not privileged:
            pass
        else:
            _outbound(cfg, fam, dst, app_uid, timeout)
            probed.append(f"IPv{fam} outbound")
        if probe_port == cfg.inbound_tunnel_port:
            log(f"validation: --iptables-probe-port {probe_port} is the tunnel port, which is never captured")
        else:
            _loopback(cfg, fam, probe_port, timeout)
            probed.append(f"IPv{fam} loopback")
    if not probed:
        log("validation: nothing was probed")
        return False
    log(f"validation probed: {', '.join(probed)}")
    return True
