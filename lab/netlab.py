"""A throwaway network lab: namespaces, veth links and an original-destination listener.

Used by the demo and the tests (and handy by hand): everything it creates is removed on exit, also on
failure. Addresses live only inside namespaces it made.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from lab.shell import LabError, as_user, envoy_binary, in_netns

# The istio-init arguments of Istio's sidecar template: what an injected pod's init container runs.
SIDECAR_ARGS = (
    "-p",
    "15001",
    "-z",
    "15006",
    "-u",
    "1337",
    "-m",
    "REDIRECT",
    "-i",
    "*",
    "-x",
    "",
    "-b",
    "*",
    "-d",
    "15090,15021,15020",
)


def sh(
    *argv: str,
    check: bool = True,
    ns: str | None = None,
    input: str | None = None,
) -> subprocess.CompletedProcess[str]:
    cmd = ["ip", "netns", "exec", ns, *argv] if ns else list(argv)
    p = subprocess.run(cmd, capture_output=True, text=True, check=False, input=input, timeout=60)
    if check and p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({p.returncode}): {p.stderr.strip()}")
    return p


@contextmanager
def namespace(prefix: str = "ni") -> Iterator[str]:
    """A uniquely named network namespace with lo up; always deleted."""
    name = f"{prefix}-{secrets.token_hex(3)}"
    sh("ip", "netns", "add", name)
    try:
        sh("ip", "link", "set", "lo", "up", ns=name)
        yield name
    finally:
        sh("ip", "netns", "del", name, check=False)


def link(a: str, a_addr: str, b: str, b_addr: str, v6: tuple[str, str] | None = None) -> tuple[str, str]:
    """A veth pair between namespaces a and b, with addresses (CIDR) on each end; returns the device names."""
    tag = secrets.token_hex(2)
    da, db = f"va{tag}", f"vb{tag}"
    sh("ip", "link", "add", da, "netns", a, "type", "veth", "peer", "name", db, "netns", b)
    for ns, dev, addr, addr6 in ((a, da, a_addr, v6[0] if v6 else None), (b, db, b_addr, v6[1] if v6 else None)):
        sh("ip", "addr", "add", addr, "dev", dev, ns=ns)
        if addr6:
            sh("ip", "-6", "addr", "add", addr6, "dev", dev, "nodad", ns=ns)
        sh("ip", "link", "set", dev, "up", ns=ns)
    return da, db


# The listener runs as its own process (inside the namespace, as the proxy's uid), prints one JSON line per
# accepted connection: which port accepted it, the peer, and SO_ORIGINAL_DST.
_LISTENER = r"""
import json, socket, struct, select, sys
ports = [int(p) for p in sys.argv[1].split(",")]
socks = {}
for p in ports:
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", p)); s.listen(64); socks[s] = p
print(json.dumps({"ready": ports}), flush=True)
while True:
    r, _, _ = select.select(list(socks), [], [])
    for s in r:
        c, peer = s.accept()
        try:
            raw = c.getsockopt(socket.SOL_IP, 80, 16)
            port, ip = struct.unpack_from("!2xH4s", raw)
            od = [socket.inet_ntoa(ip), port]
        except OSError:
            od = None
        print(json.dumps({"port": socks[s], "peer": list(peer), "orig_dst": od}), flush=True)
        c.sendall(b"captured-by-%d\n" % socks[s]); c.close()
"""

_SERVER = r"""
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2]))); s.listen(64)
print("ready", flush=True)
while True:
    c, peer = s.accept(); c.sendall(("direct:%s:%d\n" % peer).encode()); c.close()
"""


class Proc:
    """A helper process inside a namespace, optionally as another uid/gid (setpriv)."""

    def __init__(self, ns: str, argv: Sequence[str], uid: int | None = None, gid: int | None = None) -> None:
        self.p = subprocess.Popen(
            [*in_netns(ns, uid, gid), *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        assert self.p.stdout is not None
        self.first = self.p.stdout.readline()
        if not self.first:
            raise RuntimeError(f"helper failed to start: {self.p.stderr.read() if self.p.stderr else ''}")

    def lines(self, timeout: float = 0.5) -> list[str]:
        """Lines printed so far (waits up to ``timeout`` for the first one)."""
        import select

        out: list[str] = []
        assert self.p.stdout is not None
        deadline = time.monotonic() + timeout
        while True:
            r, _, _ = select.select([self.p.stdout], [], [], max(0.0, deadline - time.monotonic()))
            if not r:
                return out
            line = self.p.stdout.readline()
            if not line:
                return out
            out.append(line)
            deadline = time.monotonic() + 0.05

    def stop(self) -> None:
        self.p.kill()
        self.p.wait(timeout=5)


def capture_listener(ns: str, ports: Sequence[int], uid: int = 1337) -> Proc:
    return Proc(ns, [sys.executable, "-c", _LISTENER, ",".join(str(p) for p in ports)], uid=uid)


def plain_server(ns: str, addr: str, port: int, uid: int = 1000) -> Proc:
    return Proc(ns, [sys.executable, "-c", _SERVER, addr, str(port)], uid=uid)


def connect(ns: str, host: str, port: int, uid: int = 1000, timeout: float = 2.0) -> str:
    """Connect from ``ns`` as ``uid``; return what the server said ('' on failure)."""
    code = (
        "import socket,sys\n"
        "s=socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3]))\n"
        "print(s.recv(200).decode().strip())"
    )
    p = subprocess.run(
        [
            *in_netns(ns, uid),
            sys.executable,
            "-c",
            code,
            host,
            str(port),
            str(timeout),
        ],
        capture_output=True,
        text=True,
        timeout=timeout + 5,
        check=False,
    )
    return p.stdout.strip()


def events(listener: Proc) -> list[dict[str, object]]:
    return [json.loads(line) for line in listener.lines()]


def iptables_save(ns: str, flavor: str, fam: int = 4) -> str:
    return sh(f"{'ip6' if fam == 6 else 'ip'}tables-{flavor}-save", ns=ns).stdout


def normalize_save(text: str) -> str:
    """iptables-save output without its comments (the dump's date), blank lines and chain counters (``[0:0]``),
    for comparisons and display."""
    lines = (re.sub(r"\s*\[\d+:\d+\]$", "", line) for line in text.splitlines() if not line.startswith("#"))
    return "\n".join(line for line in lines if line)


def netinit_cmd() -> list[str]:
    return [sys.executable, "-m", "netinit"]


def run_netinit(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    e = dict(os.environ)
    e.update(env or {})
    return subprocess.run(
        [*netinit_cmd(), *args],
        capture_output=True,
        text=True,
        env=e,
        timeout=60,
        check=False,
        cwd=Path(__file__).resolve().parent.parent,
    )


@contextmanager
def envoy(
    ns: str, boot: Mapping[str, Any], log: Path, *, wrap: Sequence[str] = (), timeout: float = 10.0
) -> Iterator[subprocess.Popen[bytes]]:
    """Envoy with bootstrap ``boot`` in ``ns`` as the proxy's uid/gid 1337, ready (admin /ready answers 200
    LIVE); killed after. ``wrap`` is a command that execs the rest (``prlimit --nofile=...``): with ``ip netns
    exec`` and setpriv also exec'ing, the process is Envoy itself."""
    cmd = ["ip", "netns", "exec", ns, *wrap, *as_user(1337)]
    cmd += [envoy_binary(), "--disable-hot-restart", "--config-yaml", json.dumps(boot)]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + timeout
        ready = ["curl", "-s", "-m", "2", "-w", "\n%{http_code}", "http://127.0.0.1:15000/ready"]
        while sh(*ready, ns=ns, check=False).stdout.split() != ["LIVE", "200"]:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise LabError(f"Envoy did not become ready (exit {proc.poll()}):\n{log.read_text()[-3000:]}")
            time.sleep(0.05)
        yield proc
    finally:
        proc.kill()
        proc.wait(timeout=10)
