"""netinit cold run vs raw iptables-restore of the same payload, measured in the same run.

Each sample: a fresh network namespace, then one process start -> exit (the interpreter is called
directly, no shim). Prints medians and p90 in milliseconds for both backends.

    sudo .venv/bin/python bench/netinit_cold.py [--runs 30]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

from netinit import lab
from netinit.config import config_from_flags
from netinit.plan import plan
from netinit.redirect import render_apply

ARGS = list(lab.SIDECAR_ARGS)


def timed(argv: list[str], stdin: str | None = None) -> float:
    t0 = time.perf_counter()
    p = subprocess.run(argv, input=stdin, capture_output=True, text=True, check=False)
    dt = (time.perf_counter() - t0) * 1000
    if p.returncode != 0:
        raise SystemExit(f"{argv}: {p.stderr}")
    return dt


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=30)
    n = ap.parse_args().runs
    payload = render_apply(plan(config_from_flags(ARGS)).v4)
    print(f"payload: {payload.count(chr(10))} lines; runs per row: {n}")
    print(f"{'what':<44}{'p50 ms':>9}{'p90 ms':>9}")
    rows: dict[str, list[float]] = {}
    for flavor in ("legacy", "nft"):
        for what in ("iptables-restore", "netinit", "netinit --applier iptc"):
            if what.endswith("iptc") and flavor == "nft":
                continue
            key = f"{what} ({flavor})"
            rows[key] = []
            for _ in range(n):
                with lab.namespace("bench") as ns:
                    if what == "iptables-restore":
                        argv = ["ip", "netns", "exec", ns, f"iptables-{flavor}-restore", "--noflush"]
                        rows[key].append(timed(argv, payload))
                    else:
                        extra = ["--applier", "iptc"] if what.endswith("iptc") else ["--force-iptables-binary", flavor]
                        argv = ["ip", "netns", "exec", ns, sys.executable, "-m", "netinit", *extra, *ARGS]
                        rows[key].append(timed(argv))
    for key, xs in rows.items():
        xs.sort()
        print(f"{key:<44}{statistics.median(xs):>9.1f}{xs[int(len(xs) * 0.9) - 1]:>9.1f}")
    for flavor in ("legacy", "nft"):
        d = statistics.median(rows[f"netinit ({flavor})"]) - statistics.median(rows[f"iptables-restore ({flavor})"])
        print(f"netinit overhead over raw restore ({flavor}): {d:+.1f} ms (p50)")


if __name__ == "__main__":
    main()
