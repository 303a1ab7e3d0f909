"""Envoy's memory as a node pays it: N injected pods side by side (lab.podlab, each running Envoy from the
injected command line as uid 1337), and for each N every Envoy's RSS, its private part and its PSS.

RSS counts every page a process has mapped, including the pages of the 107 MB Envoy executable that it has
touched; those sit once in the page cache however many Envoys run from the same file (one image layer on a node),
so RSS says little about what one more sidecar costs. PSS divides each shared page among the processes that map
it, so the Envoys' PSS adds up to the memory they really hold together: PSS per pod is what a node pays for each
sidecar it runs, and the growth of the sum from one row to the next is what each added pod cost it. N = 1 is
the baseline measured in the same run: one Envoy holds all its pages alone.
The private part is split by where it lives (/proc/<pid>/smaps): the executable's own mappings (data relocated and
written at start, copied on write) and anonymous memory (heap, thread stacks).

With ``--runtime podman`` the pods run as they ship (the images ``make images`` builds, started by podman + runc
through the runtime lab's kubelet) and each row also reads the istio-proxy container's memory cgroup, the way
cadvisor does: ``usage`` (``container_memory_usage_bytes``, the figure Istio's performance runs report for
istio-proxy), ``working set`` (usage less inactive page cache: ``kubectl top``, memory limits, evictions) and the
page cache charged to the container. A page of the Envoy executable is charged to the cgroup that first read it
from disk; ``--cold`` empties the page cache before the first pod (``drop_caches``), so the first row shows what
the first sidecar on a node pays after the image is pulled or its pages were reclaimed. The pods' app is
``httpload serve`` (bench/httpload.c, static, in an image of its own); after the rows ``--soak`` requests go from
the node to the first pod at ``--rate`` (keep-alive, through its Envoy's inbound listener, which must count
them) while its cgroup and Envoy's RSS are sampled every second: flat, or growing with the requests.

    sudo .venv/bin/python -m bench.proxy_memory [--pods 1,2,4,8] [--values JSON] [--settle 1]
    sudo .venv/bin/python -m bench.proxy_memory --runtime podman [--cold] [--pods 1,2,4,8] [--soak 100000 --rate 2000]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import statistics
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.pods import APP_PORT, app_pod, injector, shipped_images
from bench.sidecar_tax import ISTIO_RSS_MB, TARGET_RSS_MIB, httpload_load, memory
from injector.core.config import deep_merge
from lab import podlab
from lab.shell import LabError

if TYPE_CHECKING:
    from lab.runtime import kubelet

ROOT = Path(__file__).resolve().parents[1]


def private_split(pid: int) -> dict[str, float]:
    """MiB of the process's anonymous pages, by mapping: the Envoy executable's (copy-on-write), the rest."""
    out = {"executable": 0.0, "anonymous": 0.0}
    exe = Path(f"/proc/{pid}/exe").resolve()
    where = "anonymous"
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        head = line.split()
        if head and "-" in head[0] and len(head) >= 5:  # a mapping's header line
            where = "executable" if len(head) >= 6 and Path(head[5]) == exe else "anonymous"
        elif head and head[0] == "Anonymous:":
            out[where] += int(head[1]) / 1024
    return out


MIB = 1024 * 1024


def drop_page_cache() -> None:
    """Write back, then drop clean page cache (every process on the machine reads from disk again)."""
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("1\n")


def httpload_app(base: str) -> dict[str, Any]:
    """The pods' app: ``httpload serve`` (the sidecar-tax bench's C server, static) from an image of its own."""
    from lab.runtime import apps
    from lab.shell import c_binary

    with tempfile.TemporaryDirectory(prefix="httpload-") as d:
        binary = Path(d, "httpload")
        shutil.copy2(c_binary(ROOT / "bench" / "httpload.c", "httpload-static", static=True), binary)
        image = apps.binary_image(base, binary, "serve", str(APP_PORT))
    pod = app_pod("mem", image=image)
    pod["spec"]["containers"][0]["readinessProbe"] = {"tcpSocket": {"port": APP_PORT}, "periodSeconds": 1}
    return pod


def podman_rows(
    counts: list[int], values: dict[str, Any], settle: float, cold: bool, soak: int, rate: float
) -> Iterator[str]:
    """The rows of ``--runtime podman``: N injected pods from the shipped images, the istio-proxy containers'
    cgroups and their Envoy processes; then ``soak`` requests through the first pod's Envoy."""
    from lab.runtime import kubelet, podman

    built = podman.build_images()
    inject_pod = injector(deep_merge(shipped_images(built.images), values), {})
    app = httpload_app(built.base)
    yield (
        f"{'pods':>4} {'usage':>7} {'working set':>12} {'charged cache':>14} {'anon':>6}   "
        f"{'Envoy RSS':>9} {'PSS':>6}   (MiB, means per istio-proxy container)"
    )
    with ExitStack() as stack:
        pods: list[kubelet.PodmanPod] = []
        if cold:
            drop_page_cache()
        first: tuple[podman.CgroupMemory, dict[str, float]] | None = None
        for n in counts:
            while len(pods) < n:
                pod = copy.deepcopy(app)
                pod["metadata"]["name"] = f"mem{len(pods)}"
                pods.append(stack.enter_context(kubelet.run_pod(inject_pod(pod))))
            time.sleep(settle)
            groups = [podman.container_memory(p.ref(podlab.PROXY_CONTAINER)) for p in pods]
            procs = [memory(envoy_pid(p)) for p in pods]
            if first is None:
                first = groups[0], procs[0]
            cg = {
                k: statistics.mean(getattr(g, k) / MIB for g in groups)
                for k in ("usage", "working_set", "file", "anon")
            }
            pm = {k: statistics.mean(m[k] for m in procs) for k in ("rss", "pss")}
            yield (
                f"{n:>4} {cg['usage']:>7.1f} {cg['working_set']:>12.1f} {cg['file']:>14.1f} {cg['anon']:>6.1f}   "
                f"{pm['rss']:>9.1f} {pm['pss']:>6.1f}"
            )
        assert first is not None
        group, proc = first
        yield (
            f"\nthe first pod{' (page cache emptied before it)' if cold else ''}: usage {group.usage / MIB:.1f} MiB, "
            f"working set {group.working_set / MIB:.1f}, page cache charged to it {group.file / MIB:.1f}; its Envoy's "
            f"RSS {proc['rss']:.1f} MiB ({proc['binary']:.1f} of them the executable's pages)"
        )
        if soak:
            yield from soak_rows(pods[0], soak, rate)


def envoy_pid(pod: kubelet.PodmanPod) -> int:
    return int(pod.inspect(podlab.PROXY_CONTAINER, "{{.State.Pid}}"))


def soak_rows(pod: kubelet.PodmanPod, requests: int, rate: float) -> Iterator[str]:
    """``requests`` keep-alive requests from the node to the pod's app at ``rate``, through its Envoy (inbound
    capture); the istio-proxy container's cgroup and Envoy's RSS sampled every second: flat, or growing."""
    from lab.runtime import podman
    from lab.shell import c_binary

    cgroup = podman.memory_cgroup(pod.ref(podlab.PROXY_CONTAINER))
    pid = envoy_pid(pod)
    samples: list[tuple[podman.CgroupMemory, dict[str, float]]] = []
    done = threading.Event()

    def sample() -> None:
        while True:
            samples.append((podman.read_memory(*cgroup), memory(pid)))
            if done.wait(1.0):
                return

    inbound = "listener.0.0.0.0_15006.downstream_cx_total"
    before = pod.envoy_stats().get(inbound, 0)
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    conns = 16
    binary = c_binary(ROOT / "bench" / "httpload.c", "httpload")
    try:
        out = httpload_load(binary, pod.ip, rate, requests / rate, conns, "keepalive", what="soak", timeout=60)
    finally:
        done.set()
        sampler.join()
    carried = pod.envoy_stats().get(inbound, 0) - before
    if carried < conns:
        raise LabError(f"soak: {carried} connections via 15006, {conns} opened: the load did not go through Envoy")
    yield (
        f"\nsoak: {out['ok']:,} requests at {rate:g} rps keep-alive from the node through the first pod's Envoy "
        f"({carried} connections on its inbound listener), p99 {out['p99_us'] / 1000:.3f} ms; {len(samples)} samples"
    )
    for label, values in (
        ("usage", [s[0].usage / MIB for s in samples]),
        ("working set", [s[0].working_set / MIB for s in samples]),
        ("Envoy RSS", [s[1]["rss"] for s in samples]),
    ):
        tenth = values[len(values) // 10]  # once the connections and their buffers exist
        yield (
            f"  {label}: first second {values[0]:.1f} MiB, at 10 % {tenth:.1f}, last {values[-1]:.1f}, max "
            f"{max(values):.1f} (from 10 % to the end {values[-1] - tenth:+.1f} MiB)"
        )


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pods", default="1,2,4,8", help="the numbers of injected pods to measure at")
    ap.add_argument("--values", default="{}", help="JSON merged over the shipped values.yaml (tuning A/B runs)")
    ap.add_argument("--settle", type=float, default=1.0, help="seconds after the last pod of a row, before reading")
    ap.add_argument("--runtime", default="netns", choices=["netns", "podman"], help="podlab, or the shipped images")
    ap.add_argument("--cold", action="store_true", help="podman: empty the page cache before the first pod")
    ap.add_argument("--soak", type=int, default=100_000, help="podman: requests through the first pod (0: none)")
    ap.add_argument("--rate", type=float, default=2000.0, help="podman: the soak's requests per second")
    args = ap.parse_args(argv)
    counts = sorted({int(n) for n in args.pods.split(",")})
    if not 1 <= counts[0] <= counts[-1] <= 250:  # a pod subnet each: 10.95.1-250
        ap.error(f"--pods: numbers from 1 to 250, got {args.pods!r}")
    if args.cold and args.runtime != "podman":
        ap.error("--cold is for --runtime podman (the podlab rows read processes, not cgroups)")
    if args.runtime == "podman":
        print(f"# podman + runc, the shipped images; values {args.values}; read {args.settle:g} s after each row")
        for row in podman_rows(counts, json.loads(args.values), args.settle, args.cold, args.soak, args.rate):
            print(row, flush=True)
        print(target_line())
        return
    inject_pod = injector(json.loads(args.values), {})
    print(f"# values {args.values}; read {args.settle:g} s after each row's last pod started")
    print(
        f"{'pods':>4} {'RSS MiB':>8} {'private':>8} {'PSS MiB':>8} {'all Envoys, PSS sum':>20} {'each added pod':>15}"
        "   (means per Envoy)"
    )
    with ExitStack() as stack:
        envoys: list[int] = []
        last = (0, 0.0)  # (pods, PSS sum) at the previous row
        for n in counts:
            while len(envoys) < n:
                pod = stack.enter_context(
                    podlab.run_pod(inject_pod(app_pod(f"mem{len(envoys)}")), subnet=f"10.95.{len(envoys) + 1}")
                )
                envoys.append(pod.processes[podlab.PROXY_CONTAINER].pid)
            time.sleep(args.settle)  # start-up done, a stats flush behind it
            mems = [memory(pid) for pid in envoys]
            mean = {k: statistics.mean(m[k] for m in mems) for k in ("rss", "private", "pss")}
            total = sum(m["pss"] for m in mems)
            added = (total - last[1]) / (n - last[0])  # what the node paid for each pod since the previous row
            last = (n, total)
            print(
                f"{n:>4} {mean['rss']:>8.1f} {mean['private']:>8.1f} {mean['pss']:>8.1f} {total:>20.1f} {added:>15.1f}",
                flush=True,
            )
        split = private_split(envoys[0])
    print(
        f"\nprivate part of one Envoy: {split['executable']:.1f} MiB in the executable's own mappings (relocated "
        f"data, copied on write at start), {split['anonymous']:.1f} MiB anonymous (heap, thread stacks)"
    )
    print(target_line())


def target_line() -> str:
    return f"target: RSS <= {TARGET_RSS_MIB:g} MiB per proxy; Istio: ~{ISTIO_RSS_MB:g} MB per proxy plus pilot-agent"


if __name__ == "__main__":
    main()
