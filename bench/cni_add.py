"""CNI mode's cost where a pod pays it - while its sandbox is created: one CNI ADD through the static plugin, the
agent's API read and netinit in the pod's namespace, against the same netinit apply run directly (what an
``istio-init`` container runs, minus the container start), measured in the same run.

Rows (each sample a fresh pod namespace with an address and a default route, as the bridge plugin leaves it, to a
peer that silently drops what it cannot deliver):
  netinit direct              python -m netinit --network-namespace NS FLAGS (the baseline)
  ADD, pod skipped            plugin -> socket -> agent -> API read -> pass-through (the hop's own cost)
  ADD, captured               ... + netinit with the pod's flags (validate: false)
  ADD, captured + validated   ... + the agent's root validation (the default)
  DEL                         cleanup of what ADD recorded

    sudo .venv/bin/python -m bench.cni_add [--runs 20]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from lab import cni, netlab
from netinit_cni.agent import Agent, serve
from netinit_cni.kube import HttpPods
from netinit_cni.program import Programmer
from tests.support.kube_server import running

ARGS = list(netlab.SIDECAR_ARGS)


@contextlib.contextmanager
def pod_namespace() -> Iterator[str]:
    with netlab.namespace("bp") as pod, netlab.namespace("bq") as peer:
        netlab.link(pod, "10.84.0.2/24", peer, "10.84.0.1/24")
        netlab.sh("ip", "route", "add", "default", "via", "10.84.0.1", ns=pod)
        # Like a real network: what leaves the pod uncaptured for the validation's TEST-NET-1 probe is dropped
        # without an answer (no ICMP), as a cluster network drops traffic to nowhere.
        netlab.sh("sysctl", "-qw", "net.ipv4.ip_forward=1", ns=peer)
        netlab.sh("ip", "route", "add", "blackhole", "192.0.2.0/24", ns=peer)
        yield pod


def sample(runs: int, body: Callable[[str], None]) -> list[float]:
    out = []
    for _ in range(runs):
        with pod_namespace() as ns:
            t = time.perf_counter()
            body(ns)
            out.append((time.perf_counter() - t) * 1000)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=20)
    runs = ap.parse_args().runs
    shim = cni.shim_binary()
    with running() as kube, tempfile.TemporaryDirectory() as tmp:
        kube.add_pod("shop", cni.cni_mode_pod("web", "shop"))
        kube.add_pod("shop", cni.cni_mode_pod("plain", "shop", injected=False))
        sock, stop = f"{tmp}/agent.sock", threading.Event()
        agent = Agent(
            lambda t: HttpPods(kube.url, timeout=t), Programmer(Path(tmp) / "pods", "nft"), log=lambda **f: None
        )
        thread = threading.Thread(target=serve, args=(sock, agent), kwargs={"stop": stop}, daemon=True)
        thread.start()
        while not Path(sock).exists():
            time.sleep(0.01)
        prev = cni.prev_result("10.84.0.2/24", "10.84.0.1")

        def skipped(ns: str) -> None:
            conf = cni.network_config(sock, prev_result=prev)
            res = cni.invoke("ADD", conf, netns=f"/run/netns/{ns}", pod=("shop", "plain"), binary=shim)
            assert res.returncode == 0, res.stdout + res.stderr

        def direct(ns: str) -> None:
            res = netlab.run_netinit("--network-namespace", ns, "--force-iptables-binary", "nft", *ARGS)
            assert res.returncode == 0, res.stderr

        rows: dict[str, list[float]] = {"netinit direct (baseline)": sample(runs, direct)}
        rows["ADD, pod skipped"] = sample(runs, skipped)
        for validate in (False, True):
            name = "ADD, captured" + (" + validated" if validate else "")
            times = []
            for _ in range(runs):  # ADD alone timed; its DEL after
                with pod_namespace() as ns:
                    conf = cni.network_config(sock, prev_result=prev, validate=validate)
                    t = time.perf_counter()
                    res = cni.invoke("ADD", conf, netns=f"/run/netns/{ns}", pod=("shop", "web"), binary=shim)
                    times.append((time.perf_counter() - t) * 1000)
                    assert res.returncode == 0, res.stdout
                    t = time.perf_counter()
                    cni.invoke("DEL", conf, netns=f"/run/netns/{ns}", binary=shim)
                    rows.setdefault("DEL", []).append((time.perf_counter() - t) * 1000)
            rows[name] = times
        stop.set()
        thread.join(5)
    base = statistics.median(rows["netinit direct (baseline)"])
    print(f"CNI ADD cost, {runs} runs each, nft backend; ms (p50 / p90), x = p50 / netinit direct p50")
    for name, times in rows.items():
        q = statistics.quantiles(times, n=10)
        print(f"  {name:32s} {statistics.median(times):7.1f} / {q[8]:7.1f}   x{statistics.median(times) / base:.2f}")


if __name__ == "__main__":
    main()
