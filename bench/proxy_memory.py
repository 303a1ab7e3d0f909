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

    sudo .venv/bin/python -m bench.proxy_memory [--pods 1,2,4,8] [--values JSON] [--settle 1]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from contextlib import ExitStack
from pathlib import Path

from bench.pods import app_pod, injector
from bench.sidecar_tax import ISTIO_RSS_MB, TARGET_RSS_MIB, memory
from lab import podlab


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


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pods", default="1,2,4,8", help="the numbers of injected pods to measure at")
    ap.add_argument("--values", default="{}", help="JSON merged over the shipped values.yaml (tuning A/B runs)")
    ap.add_argument("--settle", type=float, default=1.0, help="seconds after the last pod of a row, before reading")
    args = ap.parse_args(argv)
    counts = sorted({int(n) for n in args.pods.split(",")})
    if not 1 <= counts[0] <= counts[-1] <= 250:  # a pod subnet each: 10.95.1-250
        ap.error(f"--pods: numbers from 1 to 250, got {args.pods!r}")
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
    print(f"target: RSS <= {TARGET_RSS_MIB:g} MiB per proxy; Istio: ~{ISTIO_RSS_MB:g} MB per proxy plus pilot-agent")


if __name__ == "__main__":
    main()
