"""``httpload relay``, the floor of a sidecar's cost (bench/httpload.c), between two real pods with the sidecar
capture rules: every request and every byte crosses the client's relay (outbound, 15001) and the server's
(inbound, 15006), both running as the proxy uid, and a failure at the far end reaches the app as a reset.

Topology, as bench.sidecar_tax builds it: a client pod and a server pod (lab.podlab, the app ``httpload serve``
as uid 1000), each behind its own node namespace, the two nodes routed to each other over a veth; netinit with
the sidecar template's arguments in both pods; ``httpload relay 15001 15006`` as uid 1337 in both.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from bench import pods, sidecar_tax
from lab import netlab, podlab
from lab.shell import as_user, sh

pytestmark = pytest.mark.requires_root

APP_UID, PROXY_UID = 1000, 1337
FLAVOR = "legacy"
RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n\r\nok\n"  # httpload serve's


@pytest.fixture(scope="module")
def binary() -> Iterator[Path]:
    path = sidecar_tax.httpload()  # a copy uid 1000 and 1337 can execute
    yield path
    shutil.rmtree(path.parent, ignore_errors=True)


@pytest.fixture(scope="module")
def pair(binary: Path) -> Iterator[sidecar_tax.Pair]:
    serve = sidecar_tax.app_server(binary)
    with (
        podlab.run_pod(pods.app_pod("client"), FLAVOR, subnet="10.95.1", app=serve) as client,
        podlab.run_pod(pods.app_pod("server"), FLAVOR, subnet="10.95.2", app=serve) as server,
    ):
        sidecar_tax.route(client, server, "10.95.3")
        for pod in (client, server):
            res = netlab.run_netinit(
                "--network-namespace", pod.ns, "--force-iptables-binary", FLAVOR, *netlab.SIDECAR_ARGS
            )
            assert res.returncode == 0, res.stderr
        yield sidecar_tax.Pair("relay", client, server)


@dataclass
class Relay:
    """A running ``httpload relay``; ``stats`` and ``returncode`` are filled in once it has been stopped."""

    proc: subprocess.Popen[Any]
    stats: dict[str, Any] = field(default_factory=dict)
    returncode: int | None = None


@contextmanager
def relay(binary: Path, pod: podlab.RunningPod) -> Iterator[Relay]:
    """The relay in ``pod`` as the proxy uid, as bench.sidecar_tax runs it; on exit (after a moment for the last
    closes to arrive) SIGTERM, and its counters."""
    running = Relay(sidecar_tax.start_relay(pod, binary))
    try:
        yield running
        time.sleep(0.3)
    finally:
        running.stats = sidecar_tax.stop_relay(pod, running.proc)
        running.returncode = running.proc.returncode


def request(host: str, mode: str) -> bytes:
    """What httpload load sends per request."""
    close = "Connection: close\r\n" if mode == "close" else ""
    return f"GET / HTTP/1.1\r\nHost: {host}:{pods.APP_PORT}\r\n{close}\r\n".encode()


def as_app(pod: podlab.RunningPod, code: str, *args: str, timeout: float = 30.0) -> dict[str, Any]:
    """Python ``code`` run in ``pod`` as the app's uid; the JSON it prints."""
    res = sh(*as_user(APP_UID), sys.executable, "-c", code, *args, ns=pod.ns, check=False, timeout=timeout)
    assert res.returncode == 0, res.stderr
    out: dict[str, Any] = json.loads(res.stdout)
    return out


@pytest.mark.parametrize("mode", ["keepalive", "close"])
def test_every_request_and_byte_crosses_both_relays(binary: Path, pair: sidecar_tax.Pair, mode: str) -> None:
    conns, rate, seconds = 4, 200.0, 0.5
    with relay(binary, pair.client) as outbound, relay(binary, pair.server) as inbound:
        res = sidecar_tax.load(pair, binary, rate, seconds, conns, mode)  # raises on any error or unanswered
    assert res["errors"] == 0 and res["unanswered"] == 0
    assert res["ok"] == res["recorded"] == 100 and res["sent"] == 300  # plus 1 s of warm-up, answered too:
    sent = res["sent"]
    expected = {
        "connections": conns if mode == "keepalive" else sent,
        "bytes_up": sent * len(request(pair.server.ip, mode)),
        "bytes_down": sent * len(RESPONSE),  # every response, the warm-up's too
        "errors": 0,
    }
    idle = {"connections": 0, "bytes_up": 0, "bytes_down": 0, "errors": 0}
    assert outbound.returncode == 0 and inbound.returncode == 0
    assert outbound.stats == {"outbound": expected, "inbound": idle, "open": 0}
    assert inbound.stats == {"outbound": idle, "inbound": expected, "open": 0}


# Uploads SIZE random bytes while the server is not reading yet, half-closes, waits before reading the answer.
_BULK_CLIENT = r"""
import hashlib, json, os, socket, sys, time
host, port, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
payload = os.urandom(size)
s = socket.create_connection((host, port), timeout=20)
s.sendall(payload)
s.shutdown(socket.SHUT_WR)
time.sleep(0.3)
chunks = []
while data := s.recv(1 << 16):
    chunks.append(data)
head, _, body = b"".join(chunks).partition(b"\n")
n, digest = head.split()
print(json.dumps({"sent": size, "seen": int(n), "digest_ok": digest.decode() == hashlib.sha256(payload).hexdigest(),
                  "body_ok": body == bytes(range(256)) * (size // 256), "answer": len(head) + 1 + len(body)}))
"""

# Sleeps before reading (so that every buffer on the way fills), reads to EOF, answers as much as it got, closes.
_BULK_SERVER = r"""
import hashlib, socket, sys, time
s = socket.create_server(("0.0.0.0", int(sys.argv[1])))
print("ready", flush=True)
c, _ = s.accept()
time.sleep(0.3)
h, n = hashlib.sha256(), 0
while data := c.recv(1 << 16):
    h.update(data)
    n += len(data)
c.sendall(b"%d %s\n" % (n, h.hexdigest().encode()) + bytes(range(256)) * (n // 256))
c.close()
"""


def test_bulk_both_ways_through_full_buffers_and_a_half_close(binary: Path, pair: sidecar_tax.Pair) -> None:
    """16 MiB up to a server that does not read yet (the relays' buffers fill, they stop reading and resume), the
    client's EOF passed on behind the last byte, then 16 MiB down to a client that does not read yet, and the
    server's close: everything arrives intact, in both relays' counters, and both pairs end cleanly."""
    size, port = 16 << 20, 9090
    server = netlab.Proc(pair.server.ns, [sys.executable, "-c", _BULK_SERVER, str(port)], uid=APP_UID)
    try:
        with relay(binary, pair.client) as outbound, relay(binary, pair.server) as inbound:
            res = as_app(pair.client, _BULK_CLIENT, pair.server.ip, str(port), str(size))
    finally:
        server.stop()
    assert res["seen"] == size and res["digest_ok"] and res["body_ok"], res
    expected = {"connections": 1, "bytes_up": size, "bytes_down": res["answer"], "errors": 0}
    assert outbound.stats["outbound"] == expected and outbound.stats["open"] == 0, outbound.stats
    assert inbound.stats["inbound"] == expected and inbound.stats["open"] == 0, inbound.stats


_ATTEMPT = r"""
import json, socket, sys, time
t = time.monotonic()
try:
    s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
    s.sendall(b"GET / HTTP/1.1\r\n\r\n")
    outcome = "answered" if s.recv(100) else "eof"
except (ConnectionResetError, BrokenPipeError):
    outcome = "reset"
except TimeoutError:
    outcome = "timeout"
print(json.dumps({"outcome": outcome, "seconds": time.monotonic() - t}))
"""


@pytest.mark.parametrize("where", ["server pod", "client node"])
def test_a_refused_original_destination_resets_the_app_connection(
    binary: Path, pair: sidecar_tax.Pair, where: str
) -> None:
    """Nothing listens at the original destination: on the server pod's port 8081 (the server's relay is refused
    and resets the client relay's upstream, which resets the app), or at the client's node (the client's relay is
    refused). The app's connection, accepted by its relay, is reset at once - not left hanging."""
    host = pair.server.ip if where == "server pod" else pair.client.client_ip
    with relay(binary, pair.client) as outbound, relay(binary, pair.server) as inbound:
        res = as_app(pair.client, _ATTEMPT, host, "8081")
    assert res["outcome"] == "reset" and res["seconds"] < 1.0, res
    assert outbound.stats["outbound"]["connections"] == 1 and outbound.stats["outbound"]["errors"] == 1
    assert outbound.stats["open"] == 0, outbound.stats
    reached = 1 if where == "server pod" else 0
    assert inbound.stats["inbound"]["connections"] == reached and inbound.stats["inbound"]["errors"] == reached
    assert inbound.stats["open"] == 0, inbound.stats
