"""The sidecar tax: what two injected proxies add to a client pod -> server pod request, against the same two pods
without sidecars, measured in the same run; and what each proxy costs in CPU and memory while doing it.

Six pods come up in network namespaces (lab.podlab, so each injected pod runs exactly what injection wrote:
netinit with the injected args, Envoy with the injected command line as uid 1337): a plain client and server,
an injected client and server, and the same injected pair with ``httpload relay`` (a transparent C relay, the
cheapest sidecar there can be) in Envoy's place: the same-run floor for a proxy's CPU cost and latency. Each pod
hangs off its own "node" namespace, and the client's node is routed to the server's node over a veth, so a
request crosses pod -> node -> node -> pod in every pair; with sidecars it also goes app -> client Envoy (15001,
outbound capture) -> server Envoy (15006, inbound capture) -> app. The app and the load generator are
``bench/httpload.c``: a one-thread epoll HTTP server and an open-loop generator that counts each request's
latency from the moment it was due (no coordinated omission), run as uid 1000.

Runs alternate plain / injected / relay for each rate and connection mode (HTTP/1.1 keep-alive, and one
connection per request, which exercises the capture rules and the original-destination lookup on every
request); each figure is the median over ``--repeat`` runs; "added" is injected (or relay) minus plain. Then the
proxies' cost: CPU seconds per 1000 requests from /proc/<pid>/stat over each keep-alive run (every rate and
saturation), for each Envoy, each relay, and the plain server's app (one wake-up per request and no upstream); memory
from /proc/<pid>/smaps_rollup (RSS split into the proxy's private pages and the Envoy binary's shared ones) at
idle, under load and over a ``--soak`` request run (sampled every second). The bench fails loudly if the
injected traffic did not pass through both Envoys (their passthrough cluster counters) or both relays (theirs).

    sudo .venv/bin/python -m bench.sidecar_tax [--seconds 10] [--repeat 3] [--soak 100000] [--flavor legacy]
        [--rates 100,1000] [--modes keepalive,close]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import pods
from bench.pods import Injector, app_pod, injector
from lab import podlab
from lab.shell import LabError, as_user, c_binary, in_netns, sh

ROOT = Path(__file__).resolve().parents[1]
APP_UID = 1000
PROXY_UID = 1337  # the injected proxy's uid, which netinit's rules (-u 1337) let through uncaptured
TICK = os.sysconf("SC_CLK_TCK")
PERCENTILES = ("p50_us", "p90_us", "p99_us")
# Targets of issue #17 on this machine (two hops, 1000 rps keep-alive), and Istio 1.12.3's published figures.
TARGET_ADDED_US = {"p90_us": 350.0, "p99_us": 500.0}
ISTIO_ADDED_US = {"p90_us": 1700.0, "p99_us": 2700.0}
TARGET_VCPU_PER_1000 = 0.035
ISTIO_VCPU_PER_1000 = (0.35, 0.5)
TARGET_RSS_MIB = 30.0
ISTIO_RSS_MB = 40.0


def httpload() -> Path:
    """The compiled httpload, copied where uid 1000 can execute it (the build cache is under root's home)."""
    where = Path(tempfile.mkdtemp(prefix="httpload-"))
    where.chmod(0o755)
    binary = where / "httpload"
    shutil.copy2(c_binary(ROOT / "bench" / "httpload.c", "httpload"), binary)
    return binary


@dataclass
class Pair:
    """A client pod and a server pod, routed to each other through their nodes."""

    label: str
    client: podlab.RunningPod
    server: podlab.RunningPod
    relays: dict[str, subprocess.Popen[Any]] = field(default_factory=dict)

    def proxies(self) -> dict[str, int]:
        """The proxy's pid per pod: Envoy, or the relay in its place (empty for the plain pair)."""
        out = {role: proc.pid for role, proc in self.relays.items()}
        for role, pod in (("client", self.client), ("server", self.server)):
            proc = pod.processes.get(podlab.PROXY_CONTAINER)
            if proc is not None:
                out[role] = proc.pid
        return out

    def app_pid(self) -> int:
        return self.server.processes["app"].pid


def route(a: podlab.RunningPod, b: podlab.RunningPod, link_net: str) -> None:
    """A veth between the two pods' node namespaces, with routes to each other's pod subnet."""
    dev_a, dev_b = f"tx{a.ns[-6:]}", f"tx{b.ns[-6:]}"
    sh("ip", "link", "add", dev_a, "netns", a.client_ns, "type", "veth", "peer", "name", dev_b, "netns", b.client_ns)
    for ns, dev, mine, peer, far in (
        (a.client_ns, dev_a, f"{link_net}.1", f"{link_net}.2", b.ip),
        (b.client_ns, dev_b, f"{link_net}.2", f"{link_net}.1", a.ip),
    ):
        sh("ip", "addr", "add", f"{mine}/30", "dev", dev, ns=ns)
        sh("ip", "link", "set", dev, "up", ns=ns)
        sh("ip", "route", "add", f"{far}/32", "via", peer, ns=ns)
        sh("sysctl", "-qw", "net.ipv4.ip_forward=1", ns=ns)
    for pod in (a, b):  # one connection per request leaves many TIME_WAITs behind
        sh("sysctl", "-qw", "net.ipv4.tcp_tw_reuse=1", "net.ipv4.ip_local_port_range=1024 65000", ns=pod.ns)


def without_envoy(inject_pod: Injector) -> Injector:
    """Injection minus the proxy container: netinit's rules and the app exactly as injected, for the relay."""

    def run(pod: dict[str, Any]) -> dict[str, Any]:
        out = inject_pod(pod)
        for key in ("containers", "initContainers"):
            out["spec"][key] = [c for c in out["spec"].get(key, []) if c["name"] != podlab.PROXY_CONTAINER]
        return out

    return run


def start_httpload(ns: str, uid: int, gid: int, argv: list[str], log: Path, marker: str) -> subprocess.Popen[Any]:
    """``argv`` (an httpload mode) in network namespace ``ns`` as ``uid``:``gid``, its output in a new ``log``;
    returns once the log shows ``marker`` (the mode is listening), else kills it and says why."""
    cmd = [*in_netns(ns, uid, gid), *argv]
    with log.open("wb") as out:  # a new log per process: the marker must be this one's
        proc = subprocess.Popen(cmd, stdout=out, stderr=out)
    deadline = time.monotonic() + 5
    while marker not in log.read_text(errors="replace"):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise LabError(f"httpload {argv[1]} in {ns}: {log.read_text(errors='replace')}")
        time.sleep(0.01)
    return proc


def start_relay(pod: podlab.RunningPod, binary: Path) -> subprocess.Popen[Any]:
    """``httpload relay 15001 15006`` in Envoy's place: in the pod's namespace, as the proxy's uid (which the
    capture rules let out), listening before it returns. Its log's last line is what it relayed (stop_relay)."""
    argv = [str(binary), "relay", "15001", "15006"]
    return start_httpload(pod.ns, PROXY_UID, PROXY_UID, argv, pod.workdir / "relay.log", "relaying")


def stop_relay(pod: podlab.RunningPod, proc: subprocess.Popen[Any]) -> dict[str, Any]:
    """SIGTERM, and the counters the relay prints on its way out."""
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    text = (pod.workdir / "relay.log").read_text(errors="replace").strip()
    try:
        out: dict[str, Any] = json.loads(text.splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        raise LabError(f"httpload relay: exit {proc.returncode}: {text}") from None
    return out


def app_server(binary: Path) -> podlab.AppServer:
    """The pods' app: ``httpload serve`` in place of podlab's echo server, serving before it returns."""

    def server(ns: str, port: int, uid: int, gid: int, log: Path) -> subprocess.Popen[Any]:
        return start_httpload(ns, uid, gid, [str(binary), "serve", str(port)], log, "serving")

    return server


@contextmanager
def pairs(flavor: str, binary: Path, inject_pod: Injector) -> Iterator[tuple[Pair, Pair, Pair]]:
    server = app_server(binary)
    with ExitStack() as stack:
        made = []
        kinds = (("plain", copy.deepcopy), ("injected", inject_pod), ("relay", without_envoy(inject_pod)))
        for i, (label, transform) in enumerate(kinds):
            c = stack.enter_context(
                podlab.run_pod(transform(app_pod("client")), flavor, subnet=f"10.94.{4 * i + 1}", app=server)
            )
            s = stack.enter_context(
                podlab.run_pod(transform(app_pod("server")), flavor, subnet=f"10.94.{4 * i + 2}", app=server)
            )
            route(c, s, f"10.94.{4 * i + 3}")
            made.append(Pair(label, c, s))
        relay = made[2]
        for role, pod in (("client", relay.client), ("server", relay.server)):
            relay.relays[role] = start_relay(pod, binary)
            stack.callback(relay.relays[role].kill)
        yield made[0], made[1], relay
        # The relay's own count: the load really went client app -> client relay (outbound) -> server relay
        # (inbound) -> server app.
        counts = {
            role: stop_relay(pod, relay.relays[role])
            for role, pod in (("client", relay.client), ("server", relay.server))
        }
        if not (counts["client"]["outbound"]["connections"] and counts["server"]["inbound"]["connections"]):
            raise LabError(f"the relay pair's traffic did not pass through both relays: {counts}")


def httpload_load(
    binary: Path,
    host: str,
    rate: float,
    seconds: float,
    conns: int,
    mode: str,
    *,
    what: str,
    ns: str | None = None,
    uid: int | None = None,
    timeout: float = 30.0,
) -> dict[str, Any]:
    """One ``httpload load`` run to ``host``'s app port (from ``ns`` as ``uid`` when given, else from the node):
    its JSON result; LabError naming ``what`` when it did not run, or a request failed or went unanswered."""
    prefix = as_user(uid) if uid is not None else []
    argv = [str(binary), "load", host, str(pods.APP_PORT), str(rate), str(seconds), str(conns), mode, "1"]
    res = sh(*prefix, *argv, ns=ns, check=False, timeout=seconds + timeout)
    try:
        out: dict[str, Any] = json.loads(res.stdout)
    except json.JSONDecodeError:
        raise LabError(f"httpload in {what}: exit {res.returncode}: {res.stderr.strip()}") from None
    if out["errors"] or out["unanswered"]:
        raise LabError(f"{what} {mode} at {rate} rps: {out['errors']} errors, {out['unanswered']} unanswered")
    return out


def load(pair: Pair, binary: Path, rate: float, seconds: float, conns: int, mode: str) -> dict[str, Any]:
    """One httpload run from the client pod (as the app's uid) to the server pod's app port."""
    return httpload_load(
        binary, pair.server.ip, rate, seconds, conns, mode, what=pair.label, ns=pair.client.ns, uid=APP_UID
    )


def cpu_seconds(pid: int) -> float:
    """utime + stime of the whole process (all threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def memory(pid: int) -> dict[str, float]:
    """MiB from /proc/<pid>/smaps_rollup: ``rss``; ``private``, the anonymous pages (heap, stacks, relocated data:
    this proxy's alone); ``binary``, the rest (clean pages of the Envoy executable, in the page cache and shared
    by every Envoy started from the same file); ``pss``, the proportional share."""
    rows = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        key, value = line.split(":", 1)
        rows[key] = int(value.split()[0]) / 1024
    return {
        "rss": rows["Rss"],
        "private": rows["Anonymous"],
        "binary": rows["Rss"] - rows["Anonymous"],
        "pss": rows["Pss"],
    }


def passthrough(pair: Pair) -> tuple[int, int]:
    """Upstream connections of the client Envoy's PassthroughCluster and the server Envoy's InboundPassthrough."""
    out = pair.client.envoy_stats().get("cluster.PassthroughCluster.upstream_cx_total", 0)
    inb = pair.server.envoy_stats().get("cluster.InboundPassthroughCluster.upstream_cx_total", 0)
    return out, inb


def median_of(runs: list[dict[str, Any]], key: str) -> float:
    return float(statistics.median(float(r[key]) for r in runs))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=10.0, help="recorded seconds per run (after 1 s of warm-up)")
    ap.add_argument("--repeat", type=int, default=3, help="runs per row and pair, alternating plain/injected")
    ap.add_argument("--rates", default="100,1000", help="fixed rates, requests per second")
    ap.add_argument("--modes", default="keepalive,close", help="connection modes of the fixed-rate rows")
    ap.add_argument("--conns", type=int, default=16, help="keep-alive connections (close mode: most open at once)")
    ap.add_argument("--soak", type=int, default=100_000, help="requests of the RSS soak run (0: none)")
    ap.add_argument("--flavor", default="legacy", choices=["legacy", "nft", "native-nft"])
    ap.add_argument("--proxy-config", default="", help="proxy.istio.io/config annotation of the injected pods")
    ap.add_argument("--values", default="{}", help="JSON merged over the shipped values.yaml (tuning A/B runs)")
    args = ap.parse_args(argv)
    if not set(args.modes.split(",")) <= {"keepalive", "close"}:
        ap.error(f"--modes: keepalive and/or close, got {args.modes!r}")
    rates = [float(r) for r in args.rates.split(",")]
    binary = httpload()
    try:
        run(args, rates, binary)
    finally:
        shutil.rmtree(binary.parent, ignore_errors=True)


def run(args: argparse.Namespace, rates: list[float], binary: Path) -> None:
    annotations = {"proxy.istio.io/config": args.proxy_config} if args.proxy_config else {}
    inject_pod = injector(json.loads(args.values), annotations)
    with pairs(args.flavor, binary, inject_pod) as (plain, mesh, relay):
        pids = mesh.proxies()
        proxy = next(c for c in mesh.server.pod["spec"]["containers"] if c["name"] == podlab.PROXY_CONTAINER)
        argv = [*proxy.get("command", []), *proxy.get("args", [])]
        concurrency = argv[argv.index("--concurrency") + 1] if "--concurrency" in argv else "(Envoy's default)"
        print(
            f"# {args.flavor} iptables; Envoy --concurrency {concurrency}; {args.seconds:g} s per run, "
            f"median of {args.repeat}; latencies in ms; values {args.values}; proxy config {args.proxy_config!r}"
        )
        time.sleep(1.0)
        idle = {role: memory(pid) for role, pid in pids.items()}
        print(
            f"\n{'row':<26} {'plain p50/p90/p99':>22} {'injected p50/p90/p99':>22} {'added p50/p90/p99':>22}"
            f" {'relay added p50/p90/p99':>24}"
        )
        cpu_rows: dict[str, list[float]] = {}
        # What the CPU figures are measured on: Envoy, the relay in its place (the floor for any proxy that wakes
        # up per request), and the plain pair's app server (one wake-up per request, no upstream).
        measured = {mesh.label: pids, relay.label: relay.proxies(), "app": {"server": plain.app_pid()}}
        peak_rss = {role: mem["rss"] for role, mem in idle.items()}
        rows = [(f"{int(r)} rps {m}", r, m) for m in args.modes.split(",") for r in rates]
        rows.append(("saturation keepalive", 0.0, "keepalive"))
        for label, rate, mode in rows:
            results: dict[str, list[dict[str, Any]]] = {"plain": [], "injected": [], "relay": []}
            for _ in range(args.repeat):
                for pair in (plain, mesh, relay):
                    before_cx = passthrough(pair) if pair is mesh else (0, 0)
                    watched = measured["app" if pair is plain else pair.label]
                    cpu0 = {role: cpu_seconds(pid) for role, pid in watched.items()}
                    res = load(pair, binary, rate, args.seconds, args.conns, mode)
                    if pair is mesh:
                        after_cx = passthrough(pair)
                        if not all(a > b for a, b in zip(after_cx, before_cx, strict=True)):
                            raise LabError(f"{label}: the injected traffic did not pass through both Envoys")
                        for role, pid in pids.items():
                            peak_rss[role] = max(peak_rss[role], memory(pid)["rss"])
                    if mode == "keepalive":  # every rate: the cost per request falls as requests batch
                        for role, pid in watched.items():
                            # per 1000 requests sent (the warm-up's were served too)
                            per_1000 = (cpu_seconds(pid) - cpu0[role]) / res["sent"] * 1000
                            what = "app" if pair is plain else pair.label
                            cpu_rows.setdefault(f"{what} {role} at {label}", []).append(per_1000)
                    results[pair.label].append(res)
            p, m, r = ([median_of(results[k], q) / 1000 for q in PERCENTILES] for k in ("plain", "injected", "relay"))
            added = [b - a for a, b in zip(p, m, strict=True)]
            relay_added = [b - a for a, b in zip(p, r, strict=True)]
            fmt = "/".join
            line = (
                f"{label:<26} {fmt(f'{v:.3f}' for v in p):>22} {fmt(f'{v:.3f}' for v in m):>22} "
                f"{fmt(f'{v:+.3f}' for v in added):>22} {fmt(f'{v:+.3f}' for v in relay_added):>24}"
            )
            if rate == 0:
                rps_p, rps_m = (
                    median_of(results["plain"], "achieved_rps"),
                    median_of(results["injected"], "achieved_rps"),
                )
                line += f"   throughput {rps_p:,.0f} -> {rps_m:,.0f} rps ({rps_m / rps_p:.0%})"
            print(line, flush=True)
        print(
            f"\ntarget at 1000 rps keep-alive: added p90 <= {TARGET_ADDED_US['p90_us'] / 1000:.2f} ms, "
            f"p99 <= {TARGET_ADDED_US['p99_us'] / 1000:.2f} ms (one connection per request: within 2x); "
            f"Istio 1.12.3: +{ISTIO_ADDED_US['p90_us'] / 1000:.1f} / +{ISTIO_ADDED_US['p99_us'] / 1000:.1f} ms"
        )

        print("\nCPU s per 1000 requests (= vCPU per 1000 rps) of each proxy, the relay in its place, and the app")
        for where, values in cpu_rows.items():
            target = (
                f"; target <= {TARGET_VCPU_PER_1000} at 1000 rps, Istio {ISTIO_VCPU_PER_1000[0]}-"
                f"{ISTIO_VCPU_PER_1000[1]}"
                if where.startswith(mesh.label)
                else ""
            )
            print(f"  {where}: {statistics.median(values):.4f}{target}")
        for where in cpu_rows:
            if where.startswith(f"{mesh.label} "):
                at = where.removeprefix(f"{mesh.label} ")
                envoy, floor = (statistics.median(cpu_rows[f"{k} {at}"]) for k in (mesh.label, relay.label))
                print(f"  Envoy / relay, {at}: x{envoy / floor:.2f}")
        print("memory per proxy (client / server Envoy)")
        for role, mem in idle.items():
            print(
                f"  {role}: RSS idle {mem['rss']:.1f} MiB = {mem['private']:.1f} private + {mem['binary']:.1f} of the "
                f"Envoy binary's pages (shared through the page cache; PSS {mem['pss']:.1f} MiB with {len(pids)} "
                f"Envoys running); peak under load {peak_rss[role]:.1f} MiB "
                f"(target <= {TARGET_RSS_MIB:g} MiB; Istio ~{ISTIO_RSS_MB:g} MB plus pilot-agent)"
            )
        if args.soak:
            soak(mesh, binary, args.soak, pids)


def soak(mesh: Pair, binary: Path, requests: int, pids: dict[str, int]) -> None:
    """RSS and private memory of each proxy sampled every second over a ``requests``-long keep-alive run at
    2000 rps: flat, or growing with the requests served."""
    rate = 2000.0
    samples: dict[str, list[dict[str, float]]] = {role: [] for role in pids}
    done = threading.Event()

    def sample() -> None:
        while not done.wait(1.0):
            for role, pid in pids.items():
                samples[role].append(memory(pid))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        res = load(mesh, binary, rate, requests / rate, 16, "keepalive")
    finally:
        done.set()
        sampler.join()
    print(f"\nsoak: {res['ok']:,} requests at {rate:g} rps keep-alive, p99 {res['p99_us'] / 1000:.3f} ms")
    for role, values in samples.items():
        for kind in ("rss", "private"):
            first, last = values[0][kind], values[-1][kind]
            peak = max(v[kind] for v in values)
            print(
                f"  {role}: {kind} first second {first:.1f} MiB, last {last:.1f} MiB, max {peak:.1f} MiB "
                f"(drift {last - first:+.1f} MiB)"
            )


if __name__ == "__main__":
    main()
