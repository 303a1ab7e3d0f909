"""``--run-validation``: prove the capture works with real connections, not just that rules exist.

From a non-proxy UID, a connection to a captured non-local address must arrive at the outbound port with
its original destination intact (SO_ORIGINAL_DST); from the proxy UID the same connection must not be
captured. The probe destination lies in TEST-NET-1 (192.0.2.0/24) unless the config narrows capture.
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

from netinit.core.config import CaptureConfig
from netinit.core.values import WILDCARD
from netinit.errors import ValidationFailed

SO_ORIGINAL_DST = 80


def original_dst(conn: socket.socket) -> tuple[str, int]:
    raw = conn.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
    port, packed = struct.unpack_from("!2xH4s", raw)
    return socket.inet_ntoa(packed), port


def probe_destination(cfg: CaptureConfig) -> tuple[str, int] | None:
    """A non-local IPv4 destination the config captures, or None when outbound capture is off."""
    excluded = [n for n in cfg.outbound_cidrs_exclude if n.version == 4]
    if cfg.outbound_cidrs == WILDCARD:
        candidates = [ipaddress.IPv4Address("192.0.2.1"), ipaddress.IPv4Address("198.51.100.1")]
    else:
        assert not isinstance(cfg.outbound_cidrs, str)
        candidates = [
            next(iter(n.hosts()), n.network_address)
            for n in cfg.outbound_cidrs
            if n.version == 4 and not n.network_address.is_loopback
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


def _connect_as(uid: int, gid: int, dst: tuple[str, int]) -> int:
    """Fork, drop to uid/gid, connect once; returns the child's pid."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        try:
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
            s = socket.socket()
            s.settimeout(1.0)
            s.connect(dst)
            s.close()
            os._exit(0)
        except OSError as e:
            os._exit(3 if e.errno == errno.ENETUNREACH else 1)
    return pid


def _accept(listener: socket.socket, timeout: float) -> socket.socket | None:
    r, _, _ = select.select([listener], [], [], timeout)
    if not r:
        return None
    conn, _ = listener.accept()
    return conn


def validate(cfg: CaptureConfig, log: Callable[[str], None], app_uid: int = 65534, timeout: float = 2.0) -> bool:
    """Returns False when the flags leave nothing to probe (no outbound CIDR capture on IPv4)."""
    dst = probe_destination(cfg)
    if dst is None:
        log("validation: the flags capture no probeable IPv4 destination; nothing was probed")
        return False
    proxy_uid = int(cfg.proxy_uids[0])
    proxy_gid = int(cfg.proxy_gids[0])
    if str(app_uid) in cfg.proxy_uids:
        app_uid = 65533
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind(("0.0.0.0", cfg.proxy_port))
    except OSError as e:
        raise ValidationFailed(f"netinit: validation cannot listen on {cfg.proxy_port}: {e.strerror}") from None
    listener.listen(8)
    try:
        child = _connect_as(app_uid, app_uid, dst)
        conn = _accept(listener, timeout)
        _, status = os.waitpid(child, 0)
        if conn is None and os.waitstatus_to_exitcode(status) == 3:
            raise ValidationFailed(
                f"netinit: validation failed: no route to the probe destination {dst[0]} "
                "(capture happens after routing; a pod needs a default route)"
            )
        if conn is None:
            raise ValidationFailed(
                f"netinit: validation failed: a connection from uid {app_uid} to {dst[0]}:{dst[1]} "
                f"did not reach the outbound port {cfg.proxy_port}"
            )
        got = original_dst(conn)
        conn.close()
        if got != dst:
            raise ValidationFailed(f"netinit: validation failed: original destination {got} != {dst}")
        child = _connect_as(proxy_uid, proxy_gid, dst)
        deadline = time.monotonic() + 1.2
        conn = _accept(listener, max(0.0, deadline - time.monotonic()))
        os.waitpid(child, 0)
        if conn is not None:
            conn.close()
            raise ValidationFailed(f"netinit: validation failed: traffic of the proxy uid {proxy_uid} was captured")
    finally:
        listener.close()
    return True
