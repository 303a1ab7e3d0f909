"""Webhook throughput and latency over TLS keep-alive, against a trivial echo baseline in the same run.

Starts `sidecar-injector serve` and bench/echo_server.py with the same certificate, then drives each with `wrk`
(POST of a realistic AdmissionReview: a Deployment-created pod with probes and 10 env vars, 1 or 3 containers)
at several concurrencies. Server pinned to CPU 0, wrk to CPU 1 (this machine has 2 cores), one wrk thread.

    .venv/bin/python -m bench.webhook_load [--duration 10] [--connections 1,16,64] [--containers 1,3]

Needs `wrk` (Debian package `wrk`; installed when missing and running as root).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from injector.certs import crypto

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

LUA = r"""
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local f = io.open(os.getenv("BODY_FILE"), "rb")
wrk.body = f:read("*a")
f:close()
done = function(summary, latency, requests)
  local errors = summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.status
    + summary.errors.timeout
  io.write(string.format('RESULT {"requests":%d,"duration_us":%d,"errors":%d,"p50":%d,"p99":%d,"p999":%d}\n',
    summary.requests, summary.duration, errors, latency:percentile(50), latency:percentile(99),
    latency:percentile(99.9)))
end
"""


def pod(containers: int) -> dict[str, Any]:
    def container(i: int) -> dict[str, Any]:
        return {
            "name": f"app-{i}",
            "image": f"registry.example.com/shop/app-{i}:1.4.2",
            "ports": [{"name": "http", "containerPort": 8080 + i, "protocol": "TCP"}],
            "env": [{"name": f"SETTING_{j}", "value": f"value-{j}"} for j in range(10)],
            "readinessProbe": {"httpGet": {"path": "/ready", "port": "http"}, "periodSeconds": 5},
            "livenessProbe": {"tcpSocket": {"port": 8080 + i}},
            "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}},
        }

    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "generateName": "shop-7d4b9c5f6-",
            "namespace": "shop",
            "labels": {"app": "shop", "version": "v1", "pod-template-hash": "7d4b9c5f6"},
            "annotations": {"inject.istio.io/templates": "sidecar"},
            "ownerReferences": [
                {
                    "apiVersion": "apps/v1",
                    "kind": "ReplicaSet",
                    "name": "shop-7d4b9c5f6",
                    "uid": "r-1",
                    "controller": True,
                }
            ],
        },
        "spec": {"serviceAccountName": "shop", "containers": [container(i) for i in range(containers)]},
    }


def review(containers: int) -> bytes:
    request = {
        "uid": "0df28fbd-5f5f-11e8-bc74-36e6bb280816",
        "kind": {"group": "", "version": "v1", "kind": "Pod"},
        "resource": {"group": "", "version": "v1", "resource": "pods"},
        "operation": "CREATE",
        "namespace": "shop",
        "object": pod(containers),
    }
    return json.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request}).encode()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(port: int, ca: Path, path: str, body: bytes) -> None:
    ctx = ssl.create_default_context(cafile=str(ca))
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            c = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=2)
            c.request("POST", path, body=body, headers={"Content-Type": "application/json"})
            if c.getresponse().status == 200:
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"server on {port} did not come up")


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def run_wrk(port: int, conns: int, duration: int, lua: Path, body_file: Path) -> dict[str, Any]:
    cmd = ["taskset", "-c", "1", "wrk", "-t1", f"-c{conns}", f"-d{duration}s", "-s", str(lua)]
    cmd.append(f"https://127.0.0.1:{port}/inject")
    out = subprocess.run(
        cmd, capture_output=True, text=True, env={**os.environ, "BODY_FILE": str(body_file)}, check=True
    )
    line = next(x for x in out.stdout.splitlines() if x.startswith("RESULT "))
    r: dict[str, Any] = json.loads(line[len("RESULT ") :])
    r["rps"] = r["requests"] / (r["duration_us"] / 1e6)
    return r


def memory_trend(port: int, pid: int, total: int, lua: Path, tmp: Path) -> None:
    """RSS of the injector at idle and after every ~10% of ``total`` requests, alternating two pods between
    batches (1 and 3 containers)."""
    bodies = []
    for n in (1, 3):
        f = tmp / f"mem-{n}.json"
        f.write_bytes(review(n))
        bodies.append(f)
    wait_ready(port, tmp / "ca.crt", "/inject", bodies[0].read_bytes())
    print(f"{'requests':>10} {'RSS MiB':>8}")
    print(f"{0:>10} {rss_kb(pid) / 1024:8.1f}  (idle, after one request)")
    done, step = 0, max(total // 10, 1)
    while done < total:
        r = run_wrk(port, 16, max(1, round(step / 4000)), lua, bodies[(done // step) % 2])
        done += r["requests"]
        print(f"{done:>10} {rss_kb(pid) / 1024:8.1f}  errors={r['errors']}", flush=True)


def ensure_wrk() -> None:
    if shutil.which("wrk"):
        return
    if os.geteuid() != 0:
        raise SystemExit("wrk is missing: apt-get install wrk")
    subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--connections", default="1,16,64")
    ap.add_argument("--containers", default="1,3")
    ap.add_argument("--workers", type=int, default=1, help="sidecar-injector serve --workers")
    ap.add_argument("--memory", type=int, default=0, metavar="N", help="instead: RSS trend over N requests (c=16)")
    args = ap.parse_args()
    ensure_wrk()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        ca = crypto.make_ca()
        pair = crypto.make_serving_cert(ca, "sidecar-injector", "sidecar-injector", extra_sans=["127.0.0.1"])
        (tmp / "ca.crt").write_bytes(ca.cert_pem)
        (tmp / "tls.crt").write_bytes(pair.cert_pem)
        (tmp / "tls.key").write_bytes(pair.key_pem)
        lua = tmp / "post.lua"
        lua.write_text(LUA)
        ours, base = free_port(), free_port()
        cpus = "0" if args.workers == 1 else "0,1"
        serve = [str(BIN / "sidecar-injector"), "serve", "--host", "127.0.0.1", "--port", str(ours)]
        serve += ["--tls-cert-file", str(tmp / "tls.crt"), "--tls-key-file", str(tmp / "tls.key")]
        if args.workers > 1:
            serve += ["--workers", str(args.workers)]
        echo = [
            sys.executable,
            str(ROOT / "bench" / "echo_server.py"),
            str(base),
            str(tmp / "tls.crt"),
            str(tmp / "tls.key"),
        ]
        procs = [
            subprocess.Popen(["taskset", "-c", cpus, *serve], stderr=subprocess.DEVNULL),
            subprocess.Popen(["taskset", "-c", cpus, *echo], stderr=subprocess.DEVNULL),
        ]
        try:
            if args.memory:
                memory_trend(ours, procs[0].pid, args.memory, lua, tmp)
                return
            print(f"# workers={args.workers} duration={args.duration}s server CPU {cpus}, wrk CPU 1 (-t1)")
            head = f"{'server':9} {'pod':8} {'conns':>5} {'req/s':>8} {'p50 ms':>7} {'p99 ms':>7} {'p99.9 ms':>8}"
            print(head + f" {'errors':>6}")
            for n in [int(x) for x in args.containers.split(",")]:
                body = review(n)
                body_file = tmp / f"review-{n}.json"
                body_file.write_bytes(body)
                wait_ready(ours, tmp / "ca.crt", "/inject", body)
                wait_ready(base, tmp / "ca.crt", "/inject", body)
                for c in [int(x) for x in args.connections.split(",")]:
                    for name, port in (("echo", base), ("injector", ours)):
                        r = run_wrk(port, c, args.duration, lua, body_file)
                        print(
                            f"{name:9} {n}-cont   {c:5d} {r['rps']:8.0f} {r['p50'] / 1000:7.2f} {r['p99'] / 1000:7.2f} "
                            f"{r['p999'] / 1000:8.2f} {r['errors']:6d}",
                            flush=True,
                        )
            print(f"# injector RSS after the run: {rss_kb(procs[0].pid) / 1024:.1f} MiB (pid {procs[0].pid})")
        finally:
            for p in procs:
                p.terminate()
                p.wait(timeout=10)


if __name__ == "__main__":
    main()
