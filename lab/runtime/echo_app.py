"""The runtime lab's app: an HTTP echo server that says who it is and who called, and a one-shot client.

Standard library only: the same file is the app image's ``/echo.py`` (see :mod:`lab.runtime.apps`) and is
imported on the host for the servers that play "outside the pod".

    python3 /echo.py                      serve on $ECHO_PORTS (comma list, default 8080) as $ECHO_NAME
    python3 /echo.py get HOST PORT [PATH] [TIMEOUT]   one GET, prints {"status", "body", "error", "seconds"}

Each answer is one line, ``name=<ECHO_NAME> peer=<ip>:<port> path=<path> uid=<uid>`` (the format
:func:`lab.traffic.peer_of` reads); ``/env/NAME`` answers the value of an environment variable and
``/file/PATH`` a file's text (how a test reads what the kubelet wrote into the container).
"""

from __future__ import annotations

import http.client
import http.server
import json
import os
import socketserver
import sys
import threading
import time
from typing import Any


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"
    server_version = "echo"
    name = "echo"

    def do_GET(self) -> None:
        ip, port = self.client_address[0], self.client_address[1]
        status = 200
        if self.path.startswith("/env/"):
            text = os.environ.get(self.path[5:], "") + "\n"
        elif self.path.startswith("/file/"):
            try:
                with open(self.path[5:]) as f:
                    text = f.read()
            except OSError as e:
                status, text = 404, f"{e}\n"
        else:
            text = f"name={self.name} peer={ip}:{port} path={self.path} uid={os.getuid()}\n"
        body = text.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        sys.stderr.write(f"{self.client_address[0]}:{self.client_address[1]} {format % args}\n")


class _Server(http.server.ThreadingHTTPServer):
    allow_reuse_address = True
    daemon_threads = True

    def server_bind(self) -> None:  # HTTPServer's calls getfqdn(): a DNS lookup where there may be no DNS
        socketserver.TCPServer.server_bind(self)


def _quiet(self: Any, format: str, *args: Any) -> None:
    pass


def make_server(name: str, host: str, port: int, *, quiet: bool = False) -> http.server.ThreadingHTTPServer:
    handler = type("Handler", (_Handler,), {"name": name, **({"log_message": _quiet} if quiet else {})})
    return _Server((host, port), handler)


def serve_in_thread(name: str, host: str, port: int) -> http.server.ThreadingHTTPServer:
    """An echo server on ``host:port`` in a daemon thread of this process; ``shutdown()`` and
    ``server_close()`` it."""
    srv = make_server(name, host, port, quiet=True)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


def get(host: str, port: int, path: str = "/", timeout: float = 2.0) -> dict[str, Any]:
    t = time.monotonic()
    try:
        conn = http.client.HTTPConnection(host, port, timeout=timeout)
        conn.request("GET", path)
        resp = conn.getresponse()
        out: dict[str, Any] = {"status": resp.status, "body": resp.read().decode("utf-8", "replace"), "error": ""}
    except Exception as e:  # noqa: BLE001 - reported to the caller
        out = {"status": 0, "body": "", "error": f"{type(e).__name__}: {e}"}
    out["seconds"] = time.monotonic() - t
    return out


def main(argv: list[str]) -> int:
    if argv[:1] == ["get"]:
        host, port = argv[1], int(argv[2])
        path = argv[3] if len(argv) > 3 else "/"
        timeout = float(argv[4]) if len(argv) > 4 else 2.0
        print(json.dumps(get(host, port, path, timeout)), flush=True)
        return 0
    name = os.environ.get("ECHO_NAME") or os.environ.get("HOSTNAME", "echo")
    ports = [int(p) for p in os.environ.get("ECHO_PORTS", "8080").split(",") if p]
    servers = [make_server(name, "0.0.0.0", p) for p in ports]
    for srv in servers[1:]:
        threading.Thread(target=srv.serve_forever, daemon=True).start()
    print(f"echo {name} serving on {ports} as uid {os.getuid()}", flush=True)
    servers[0].serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
