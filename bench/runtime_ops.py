"""What one container costs the container runtime here, by itself: the floor under bench.pod_startup's podman rows.

The runtime lab's kubelet starts a ``podman`` process per container; a kubelet sends requests to a runtime daemon
that stays up (CRI to containerd or CRI-O). Both are measured in the same run, in the same sandbox (one podman
pod): ``podman run`` as the lab runs it, and the same containers through podman's own daemon, its REST API
(``podman system service`` on a unix socket), which is the closest this machine has to a CRI runtime:

- run to exit - what istio-init is: ``podman run IMAGE true``, against create + start + wait (exited);
- run detached - what istio-proxy is: ``podman run -d IMAGE sleep``, against create + start;
- ``podman inspect`` (a podman process that only reads a container's state): the CLI's fixed cost per call.

Injection adds one container of each kind to a pod, so their sum is what the runtime alone charges an injected
pod's start, before netinit or Envoy does anything; the bench prints it next to issue #17's target for the whole
of injection (300 ms). Rounds interleave the ways; figures are the median and p90 of ``--runs`` rounds after one
warm-up round.

    sudo .venv/bin/python -m bench.runtime_ops [--runs 20]
"""

from __future__ import annotations

import argparse
import http.client
import json
import socket
import statistics
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench.pod_startup import TARGET_ADDED_MS
from lab.runtime import kubelet, podman

API = "/v4.0.0/libpod"


class Api:
    """podman's REST API on a unix socket: one kept-alive connection, as a kubelet keeps its CRI connection."""

    def __init__(self, sock: Path) -> None:
        self.sock = sock
        self.conn: http.client.HTTPConnection | None = None

    def _connect(self) -> http.client.HTTPConnection:
        conn = http.client.HTTPConnection("podman", timeout=60)
        conn.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        conn.sock.settimeout(60)
        conn.sock.connect(str(self.sock))
        return conn

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
        if self.conn is None:
            self.conn = self._connect()
        data = json.dumps(body).encode() if body is not None else None
        self.conn.request(method, API + path, body=data, headers={"Content-Type": "application/json"})
        resp = self.conn.getresponse()
        raw = resp.read()
        try:
            return resp.status, json.loads(raw) if raw else None
        except ValueError:
            return resp.status, raw.decode(errors="replace")

    def must(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        status, out = self.call(method, path, body)
        if status not in (200, 201, 204):
            raise podman.EngineError(f"podman API {method} {path}: {status} {out}")
        return out

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()


@contextmanager
def service() -> Iterator[Api]:
    """``podman system service`` with the project's engine settings, for the block; its API once it answers."""
    if podman.engine() != "podman":
        raise podman.EngineError("bench.runtime_ops measures podman (CONTAINER_ENGINE is not podman)")
    with tempfile.TemporaryDirectory(prefix="podman-api-") as d:
        sock = Path(d, "podman.sock")
        proc = subprocess.Popen(
            [podman.engine(), "system", "service", "--time=0", f"unix://{sock}"],
            env=dict(podman.engine_env()),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        api = Api(sock)
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    if sock.exists() and api.call("GET", "/_ping")[0] == 200:
                        break
                except OSError:
                    api.conn = None
                if proc.poll() is not None or time.monotonic() > deadline:
                    err = proc.stderr.read().decode() if proc.stderr and proc.poll() is not None else ""
                    raise podman.EngineError(f"podman system service did not answer on {sock}: {err.strip()}")
                time.sleep(0.05)
            yield api
        finally:
            api.close()
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


def _timed(samples: dict[str, list[float]], what: str, fn: Callable[[], Any]) -> Any:
    t0 = time.monotonic()
    out = fn()
    samples.setdefault(what, []).append((time.monotonic() - t0) * 1000)
    return out


def one_round(api: Api, pod: str, image: str, samples: dict[str, list[float]] | None) -> None:
    """Each way once, in the pod; containers removed afterwards (untimed). ``samples`` None: a warm-up."""
    s: dict[str, list[float]] = {} if samples is None else samples
    tag = uuid.uuid4().hex[:8]
    names = [f"{pod}-{tag}-{w}" for w in ("cli", "clid", "api", "apid")]
    label = ["--label", f"{kubelet.LABEL}={pod}"]
    try:
        res = _timed(
            s,
            "cli run, to exit",
            lambda: podman.cli(
                "run", "--pod", pod, "--name", names[0], *label, "--entrypoint", "true", image, check=False
            ),
        )
        if res.returncode != 0:
            raise podman.EngineError(f"podman run {image} true exited {res.returncode}: {res.stderr.strip()}")
        _timed(
            s,
            "cli run -d",
            lambda: podman.cli(
                "run", "-d", "--pod", pod, "--name", names[1], *label, "--entrypoint", "sleep", image, "600"
            ),
        )
        _timed(s, "cli inspect", lambda: podman.cli("inspect", "-f", "{{.State.Status}}", names[1]))

        def spec(name: str, entrypoint: list[str], command: list[str]) -> dict[str, Any]:
            return {
                "image": image,
                "name": name,
                "pod": pod,
                "labels": {kubelet.LABEL: pod},
                "entrypoint": entrypoint,
                "command": command,
            }

        t0 = time.monotonic()
        cid = _timed(s, "api create", lambda: api.must("POST", "/containers/create", spec(names[2], ["true"], [])))[
            "Id"
        ]
        _timed(s, "api start", lambda: api.must("POST", f"/containers/{cid}/start"))
        code = _timed(
            s, "api wait (exited)", lambda: api.must("POST", f"/containers/{cid}/wait?condition=exited&interval=5ms")
        )
        s.setdefault("api run, to exit", []).append((time.monotonic() - t0) * 1000)
        if code != 0:
            raise podman.EngineError(f"{names[2]}: exited {code} through the API, 0 expected")
        t0 = time.monotonic()
        cid = api.must("POST", "/containers/create", spec(names[3], ["sleep"], ["600"]))["Id"]
        api.must("POST", f"/containers/{cid}/start")
        s.setdefault("api run -d", []).append((time.monotonic() - t0) * 1000)
        state = api.must("GET", f"/containers/{cid}/json")["State"]["Status"]
        if state != "running":
            raise podman.EngineError(f"{names[3]}: {state} after its start through the API, running expected")
    finally:
        podman.cli("rm", "-f", "-t", "0", *names, check=False, timeout=120)


ROWS = (
    ("cli inspect", "a podman process that reads one container's state"),
    ("cli run, to exit", "podman run IMAGE true: the lab's istio-init"),
    ("cli run -d", "podman run -d IMAGE sleep: the lab's istio-proxy"),
    ("api create", ""),
    ("api start", ""),
    ("api wait (exited)", ""),
    ("api run, to exit", "create + start + wait, one daemon"),
    ("api run -d", "create + start"),
)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=20, help="rounds (after one warm-up round)")
    args = ap.parse_args(argv)
    image = podman.build_images().images["netinit"]
    version = podman.cli("version", "-f", "{{.Client.Version}}").stdout.strip()
    runtime = podman.cli("info", "-f", "{{.Host.OCIRuntime.Name}}").stdout.strip()
    pod = f"rt-ops-{uuid.uuid4().hex[:6]}"
    samples: dict[str, list[float]] = {}
    podman.cli("pod", "create", "--name", pod, "--label", f"{kubelet.LABEL}={pod}")
    try:
        podman.cli("pod", "start", pod)
        with service() as api:
            for i in range(args.runs + 1):
                one_round(api, pod, image, samples if i else None)
    finally:
        podman.cli("pod", "rm", "-f", "-t", "0", pod, check=False, timeout=120)
    print(
        f"# podman {version} + {runtime}, one pod as the sandbox, the {image.split('/')[-1]} image; "
        f"ms, median and p90 of {args.runs} rounds"
    )
    print(f"{'what':<20} {'p50':>8} {'p90':>8}")
    med: dict[str, float] = {}
    for what, note in ROWS:
        values = sorted(samples[what])
        med[what] = statistics.median(values)
        p90 = values[min(len(values) - 1, int(0.9 * len(values)))]
        print(f"{what:<20} {med[what]:8.1f} {p90:8.1f}  {note}".rstrip())
    cli = med["cli run, to exit"] + med["cli run -d"]
    api_ = med["api run, to exit"] + med["api run -d"]
    print(
        f"the two containers injection adds (one run to exit, one detached), the runtime alone: {cli:.1f} ms as the "
        f"lab's kubelet starts them, {api_:.1f} ms through podman's daemon; target for all of injection: "
        f"<= {TARGET_ADDED_MS:g} ms"
    )


if __name__ == "__main__":
    main()
