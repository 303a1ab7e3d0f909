"""Traffic inside namespaces: one HTTP GET as some uid, and the echo server apps run (who answered, which peer)."""

from __future__ import annotations

import ctypes
import json
import re
import select
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from lab.shell import LabError, in_netns, stop_process


def peer_of(body: str) -> str:
    """The peer IP in an echo server's answer (``name=web peer=127.0.0.6:41234 path=/`` -> ``127.0.0.6``)."""
    m = re.search(r"\bpeer=([^\s]+):\d+", body)
    if not m:
        raise LabError(f"not an echo server answer: {body!r}")
    return m.group(1)


def upstream_hosts(clusters_text: str, cluster: str) -> dict[str, int]:
    """Envoy admin ``/clusters`` text -> the hosts ``cluster`` has connected to and how many connections each got
    (for an ORIGINAL_DST cluster: the original destinations of the captured connections)."""
    out: dict[str, int] = {}
    for line in clusters_text.splitlines():
        parts = line.split("::")
        if len(parts) == 4 and parts[0] == cluster and parts[2] == "cx_total":
            out[parts[1]] = int(parts[3])
    return out


def parse_stats(text: str) -> dict[str, int]:
    """Envoy admin ``/stats`` text -> counters and gauges (histogram lines are skipped)."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        name, sep, value = line.partition(": ")
        if sep and (value.strip().lstrip("-").isascii() and value.strip().lstrip("-").isdigit()):
            out[name] = int(value)
    return out


_GET = r"""
import http.client, json, sys, time
host, port, path, timeout = sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4])
t = time.monotonic()
try:
    c = http.client.HTTPConnection(host, port, timeout=timeout)
    c.request("GET", path)
    r = c.getresponse()
    out = {"status": r.status, "body": r.read().decode("utf-8", "replace")}
except Exception as e:
    out = {"status": 0, "body": "", "error": "%s: %s" % (type(e).__name__, e)}
out["seconds"] = time.monotonic() - t
print(json.dumps(out))
"""

# The app containers' (and the client's) echo server.
_ECHO = r"""
import http.server, socketserver, sys
name, port = sys.argv[1], int(sys.argv[2])
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"
    def do_GET(self):
        ip, p = self.client_address[0], self.client_address[1]
        body = ("name=%s peer=%s:%d path=%s\n" % (name, ip, p, self.path)).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, fmt, *args):
        sys.stderr.write("%s:%d %s\n" % (self.client_address[0], self.client_address[1], fmt % args))
        sys.stderr.flush()
class S(http.server.ThreadingHTTPServer):
    allow_reuse_address = True
    daemon_threads = True
    def server_bind(self):  # HTTPServer's would call getfqdn(): a DNS lookup in a namespace without DNS
        socketserver.TCPServer.server_bind(self)
srv = S(("0.0.0.0", port), H)
print("ready", flush=True)
srv.serve_forever()
"""


@dataclass(frozen=True)
class HttpResult:
    status: int  # 0: nothing answered (error says why)
    body: str
    error: str = ""
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 400


def http_get(
    ns: str, host: str, port: int, path: str = "/", *, uid: int | None = None, timeout: float = 2.0
) -> HttpResult:
    """One HTTP GET from inside network namespace ``ns`` (as ``uid``/``uid`` when given, else root)."""
    cmd = [*in_netns(ns, uid), sys.executable, "-I", "-S", "-c", _GET, host, str(port), path, str(timeout)]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout + 10, check=False)
    try:
        out = json.loads(p.stdout)
    except ValueError:
        return HttpResult(0, "", f"helper failed ({p.returncode}): {p.stderr.strip()}")
    return HttpResult(int(out["status"]), str(out["body"]), str(out.get("error", "")), float(out["seconds"]))


_CLONE_NEWNET = 0x40000000


def _socket_in(ns: str, family: socket.AddressFamily) -> socket.socket:
    """A TCP socket that lives in network namespace ``ns``: this thread enters it (setns), makes the socket and
    returns to its own namespace; the socket stays where it was made."""
    libc = ctypes.CDLL(None, use_errno=True)
    with open("/proc/thread-self/ns/net", "rb") as own, open(f"/run/netns/{ns}", "rb") as target:
        if libc.setns(target.fileno(), _CLONE_NEWNET) != 0:
            raise LabError(f"setns into {ns}: errno {ctypes.get_errno()}")
        try:
            return socket.socket(family, socket.SOCK_STREAM)
        finally:
            if libc.setns(own.fileno(), _CLONE_NEWNET) != 0:
                raise LabError(f"setns back from {ns}: errno {ctypes.get_errno()}")


def probe(ns: str, host: str, port: int, path: str | None, timeout: float = 1.0) -> bool:
    """One kubelet probe attempt from namespace ``ns``, in this process as the kubelet makes it: ``path`` None is a
    tcpSocket probe (the connection is accepted), else an httpGet (an HTTP status 200-399). A process per attempt
    (:func:`http_get`) would cost more than the probe and blur what start-up benchmarks measure."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with _socket_in(ns, family) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect((host, port))
            if path is None:
                return True
            sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n".encode())
            head = b""
            while b"\r\n" not in head and len(head) < 4096:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                head += chunk
        except OSError:
            return False
    status = head.split(b" ", 2)[1:2]
    return bool(status) and status[0].isdigit() and 200 <= int(status[0]) < 400


# --- the webhook (the API server's side of the admission call) ------------------------------------------------


def start_echo(ns: str, name: str, port: int, uid: int, log: Path, gid: int | None = None) -> subprocess.Popen[str]:
    cmd = [*in_netns(ns, uid, gid), sys.executable, "-I", "-S", "-c", _ECHO, name, str(port)]
    with log.open("ab") as err:
        proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err, text=True, start_new_session=True
        )
    try:  # also on Ctrl-C/SIGTERM while waiting: the caller has not registered this process yet
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 10.0)
        if not ready or proc.stdout.readline().strip() != "ready":
            tail = log.read_text(errors="replace")[-500:]
            raise LabError(f"echo server {name} on :{port} did not start: {tail}")
    except BaseException:
        stop_process(proc)
        raise
    return proc
