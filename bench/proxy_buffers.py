"""Envoy's per-connection buffer limit: what a connection whose far end stops reading costs the sidecar's memory,
and what a smaller limit costs a bulk transfer's throughput.

Envoy buffers up to ``per_connection_buffer_limit_bytes`` per connection (Envoy's default 1 MiB, kept by Istio's
sidecars; 256 KiB in the shipped bootstrap, docs/compat.md I13; Istio's edge profile for gateways uses 32 KiB)
before it stops reading from the other side. Two
namespaces, ``pod`` (netinit's sidecar rules, a real Envoy with the shipped bootstrap as uid 1337) and ``peer``,
and for each limit a fresh Envoy:

- **stalled**: the app (uid 1000) opens ``--stalled`` connections to a peer that accepts and never reads, and
  writes into each until nothing moves for a second: Envoy's anonymous memory (``/proc/<pid>/smaps_rollup``)
  before and after, per connection; and how much the app could write into each (kernel buffers included);
- **bulk**: the app sends ``--mib`` MiB over one connection to a peer that reads as fast as it can, timed to
  the peer's acknowledgement of the last byte. The same-run baseline is the same transfer sent as uid 1337, which
  the rules let past Envoy.

    sudo .venv/bin/python -m bench.proxy_buffers [--stalled 64] [--mib 256] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from injector.core.envoy_bootstrap import bootstrap
from lab import netlab
from lab.shell import LabError, in_netns

POD, PEER, PORT = "10.68.0.2", "10.68.0.1", 9090
LIMITS = (
    (None, "Envoy's default (1 MiB)"),
    (262144, "256 KiB (the shipped default)"),
    (32768, "32 KiB (Istio's edge profile)"),
)

STALL = r"""
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
s.bind(("0.0.0.0", int(sys.argv[1]))); s.listen(4096)
print("ready", flush=True)
held = []
while True:
    held.append(s.accept()[0])  # never read
"""

PUSH = r"""
import json, select, socket, sys, time
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
conns = [socket.create_connection((host, port), timeout=5) for _ in range(n)]
for c in conns:
    c.setblocking(False)
chunk, written = b"x" * 65536, [0] * n
quiet = time.monotonic()
while time.monotonic() - quiet < 1.0:
    _, ready, _ = select.select([], conns, [], 0.2)
    for c in ready:
        try:
            written[conns.index(c)] += c.send(chunk)
            quiet = time.monotonic()
        except BlockingIOError:
            pass
print(json.dumps({"written": written}), flush=True)
sys.stdin.readline()  # hold them while the bench reads Envoy's memory
"""

SINK = r"""
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1]))); s.listen(16)
print("ready", flush=True)
while True:
    c, _ = s.accept(); total = 0
    while True:
        data = c.recv(1 << 20)
        if not data:
            break
        total += len(data)
    c.sendall(b"%d\n" % total); c.close()
"""

BULK = r"""
import socket, sys, time
host, port, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
chunk, left = b"x" * (1 << 20), size
start = time.monotonic()
c = socket.create_connection((host, port), timeout=30)
while left:
    left -= c.send(chunk[: min(left, len(chunk))])
c.shutdown(socket.SHUT_WR)
acked = int(c.makefile().readline())
print(acked, time.monotonic() - start, flush=True)
"""


def anonymous_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Anonymous:"):
            return int(line.split()[1]) / 1024
    raise LabError(f"no Anonymous line for pid {pid}")


def app(ns: str, uid: int, script: str, *args: str, stdin: bool = False) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*in_netns(ns, uid), sys.executable, "-c", script, *args],
        stdin=subprocess.PIPE if stdin else None,
        stdout=subprocess.PIPE,
        text=True,
    )


def stalled(pod: str, pid: int, n: int) -> dict[str, float]:
    """Envoy's anonymous memory with ``n`` connections whose far end stopped reading."""
    before = anonymous_mib(pid)
    pusher = app(pod, 1000, PUSH, PEER, str(PORT + 1), str(n), stdin=True)
    assert pusher.stdout is not None and pusher.stdin is not None
    line = pusher.stdout.readline()
    time.sleep(0.5)
    after = anonymous_mib(pid)
    pusher.stdin.close()
    pusher.wait(timeout=30)
    if not line:
        raise LabError("the stalled-connection pusher failed")
    written = json.loads(line)["written"]
    return {
        "before": before,
        "after": after,
        "per_conn_kib": (after - before) * 1024 / n,
        "written_kib": statistics.median(written) / 1024,
    }


def bulk(pod: str, uid: int, mib: int) -> float:
    """MiB/s of one ``mib``-MiB transfer from the pod to the peer's sink, as ``uid``."""
    sender = app(pod, uid, BULK, PEER, str(PORT), str(mib << 20))
    out, _ = sender.communicate(timeout=300)
    acked, seconds = out.split()
    if int(acked) != mib << 20:
        raise LabError(f"the sink acknowledged {acked} bytes of {mib << 20}")
    return mib / float(seconds)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--stalled", type=int, default=64, help="connections whose far end stops reading")
    ap.add_argument("--mib", type=int, default=256, help="MiB of the bulk transfer")
    ap.add_argument("--repeat", type=int, default=3, help="rounds (each: every limit, then the baseline)")
    args = ap.parse_args(argv)
    results: dict[str, list[dict[str, float]]] = {label: [] for _, label in LIMITS}
    direct: list[float] = []
    with netlab.namespace("pod") as pod, netlab.namespace("peer") as peer:
        netlab.link(pod, f"{POD}/24", peer, f"{PEER}/24")
        res = netlab.run_netinit(*netlab.SIDECAR_ARGS, "--network-namespace", pod)
        if res.returncode != 0:
            raise LabError(f"netinit: {res.stderr}")
        sink = netlab.Proc(peer, [sys.executable, "-c", SINK, str(PORT)], uid=1000)
        stall = netlab.Proc(peer, [sys.executable, "-c", STALL, str(PORT + 1)], uid=1000)
        try:
            for _ in range(args.repeat):
                for limit, label in LIMITS:
                    with netlab.envoy(
                        pod, bootstrap(buffer_limit=limit), Path(f"/tmp/proxy-buffers-{limit}.log")
                    ) as proc:
                        row = stalled(pod, proc.pid, args.stalled)
                        row["bulk"] = bulk(pod, 1000, args.mib)
                        results[label].append(row)
                direct.append(bulk(pod, 1337, args.mib))  # uid 1337 is not captured: the same path without Envoy
        finally:
            sink.stop()
            stall.stop()
    print(f"# {args.stalled} stalled connections; bulk {args.mib} MiB over one connection; medians of {args.repeat}")
    print(
        f"{'limit':<32} {'Envoy anon MiB before/after':>28} {'per stalled conn':>17} {'app wrote/conn':>15} "
        f"{'bulk MiB/s':>11}"
    )
    for _, label in LIMITS:
        rows = results[label]
        med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
        print(
            f"{label:<32} {med['before']:>13.1f} / {med['after']:<12.1f} {med['per_conn_kib']:>12.0f} KiB "
            f"{med['written_kib']:>11.0f} KiB {med['bulk']:>11.0f}"
        )
    print(f"{'no Envoy (uid 1337, not captured)':<32} {'':>28} {'':>17} {'':>15} {statistics.median(direct):>11.0f}")


if __name__ == "__main__":
    main()
