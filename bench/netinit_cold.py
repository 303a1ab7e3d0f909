"""netinit cold run vs raw iptables-restore of the same payload, measured in the same run.

Each sample: a fresh network namespace, then one process start -> exit. netinit runs as the init image runs it:
the `netinit` command of a regular (non-editable) wheel install in a throwaway venv, built at the start as
Dockerfile.init builds its venv (no pip or setuptools; netinit/launcher.py as the command; an editable install
adds ~8 ms of import-finder start-up that no image has). Rows for the default capture and
for 1000 excluded CIDRs + 100 excluded ports, both iptables backends, both appliers, and native nftables
(`--native-nftables` vs raw `nft -f` of the same script), interleaved: each round runs every row once, so that
this noisy VM's slow moments land on all rows alike. Prints p50/p90 in milliseconds, and netinit as a ratio
to the floor measured in the same run: a bare interpreter start (`python -I -S -c pass`) plus the raw restore,
and to a second floor: the interpreter importing the standard-library modules netinit's apply path imports.

    sudo .venv/bin/python -m bench.netinit_cold [--runs 30]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

from lab import netlab
from netinit.apply.engine import render_restore
from netinit.core.config import config_from_flags
from netinit.core.plan import plan
from netinit.rules import nft

ARGS = list(netlab.SIDECAR_ARGS)
# The standard-library modules netinit's apply path imports (_socket and struct for
# netlink, select for the runner, types, grp/pwd for names, fcntl for the lock): the second floor, what any
# program built on them pays before its first line of work. (Until 2026-12-03 it also imported argparse,
# ipaddress and typing, with re and enum: those alone were x2.25 of the bare floor.)
STDLIB = "import _socket, struct, select, types, grp, pwd, fcntl"
ROOT = Path(__file__).resolve().parents[1]


def big_args() -> list[str]:
    """The default capture plus 1000 excluded CIDRs and 100 excluded inbound/outbound ports."""
    cidrs = ",".join(f"10.{i // 250}.{i % 250}.0/24" for i in range(1000))
    ports = ",".join(str(20000 + i) for i in range(100))
    out = list(ARGS)
    out[out.index("-x") + 1] = cidrs
    out[out.index("-d") + 1] += "," + ports
    return [*out, "-o", ports]


def installed_venv(tmp: Path) -> Path:
    """A venv with this project installed from a wheel, as in Dockerfile.init (+ python-iptables for iptc)."""
    wheels = tmp / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheels), str(ROOT)], check=True)
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "pip"), "install", "-q"]
    subprocess.run([*pip, "--no-deps", *map(str, wheels.glob("*.whl"))], check=True)
    subprocess.run([*pip, "python-iptables"], check=True)
    # As Dockerfile.init leaves it: no pip or setuptools (setuptools' .pth hook costs ~1 ms of every start), and
    # netinit/launcher.py as the `netinit` command instead of pip's launcher (whose `import re` costs ~5 ms).
    subprocess.run([*pip[:-2], "uninstall", "-y", "-q", "pip", "setuptools"], check=True)
    launcher = venv / "bin" / "netinit"
    launcher.write_text(f"#!{venv / 'bin' / 'python'}\n" + (ROOT / "netinit" / "launcher.py").read_text())
    return venv


def timed(argv: list[str], stdin: str | None = None) -> float:
    t0 = time.perf_counter()
    p = subprocess.run(argv, input=stdin, capture_output=True, text=True, check=False)
    dt = (time.perf_counter() - t0) * 1000
    if p.returncode != 0:
        raise SystemExit(f"{argv}: {p.stderr}")
    return dt


class Row(NamedTuple):
    key: str  # how the ratios below find it
    what: str  # as printed
    lines: int
    argv: list[str]  # run inside a fresh namespace
    stdin: str | None = None


def rows(python: str, netinit: str) -> list[Row]:
    out = [
        Row("floor", "python -I -S -c pass (the floor)", 0, [python, "-I", "-S", "-c", "pass"]),
        Row("stdlib", "python -I -S -c (its stdlib imports)", 0, [python, "-I", "-S", "-c", STDLIB]),
    ]
    for label, args in (("default", ARGS), ("1000 CIDRs", big_args())):
        payload = render_restore(plan(config_from_flags(args)).v4)
        lines = payload.count("\n")
        for flavor in ("legacy", "nft"):
            forced = [netinit, "--force-iptables-binary", flavor]
            out.append(Row(f"iptables-restore ({flavor}, {label})", "", lines,
                           [f"iptables-{flavor}-restore", "--noflush"], payload))  # fmt: skip
            out.append(Row(f"netinit ({flavor}, {label})", "", lines, [*forced, *args]))
            if flavor == "legacy":  # python-iptables writes legacy tables only
                out.append(
                    Row(f"netinit --applier iptc ({flavor}, {label})", "", lines, [*forced, "--applier", "iptc", *args])
                )
        script = nft.render_script(plan(config_from_flags(args)))
        nlines = script.count("\n")
        out.append(Row(f"nft -f ({label})", "", nlines, ["nft", "-f", "-"], script))
        out.append(Row(f"netinit --native-nftables ({label})", "", nlines, [netinit, "--native-nftables", *args]))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=30)
    n = ap.parse_args().runs
    with tempfile.TemporaryDirectory() as d:
        netinit = str(installed_venv(Path(d)) / "bin" / "netinit")
        table = rows(str(Path(netinit).parent / "python"), netinit)
        print(f"netinit: {netinit} (wheel install); runs per row: {n}, the rows interleaved (one of each per round)")
        print(f"stdlib imports: python -I -S -c '{STDLIB}'")
        samples: dict[str, list[float]] = {r.key: [] for r in table}
        for _ in range(n):  # round-robin: a noisy moment of the machine lands on every row alike
            for r in table:
                with netlab.namespace("bench") as ns:
                    samples[r.key].append(timed(["ip", "netns", "exec", ns, *r.argv], r.stdin))
        print(f"{'what':<52}{'lines':>6}{'p50 ms':>9}{'p90 ms':>9}")
        medians: dict[str, float] = {}
        for r in table:
            xs = sorted(samples[r.key])
            medians[r.key] = statistics.median(xs)
            lines = str(r.lines) if r.lines else ""
            print(f"{r.what or r.key:<52}{lines:>6}{medians[r.key]:>9.1f}{xs[int(len(xs) * 0.9) - 1]:>9.1f}")
        for label in ("default", "1000 CIDRs"):
            for flavor in ("legacy", "nft"):
                over = medians[f"netinit ({flavor}, {label})"] - medians[f"iptables-restore ({flavor}, {label})"]
                print(f"netinit overhead over raw restore ({flavor}, {label}): {over:+.1f} ms (p50)")
                floor = medians["floor"] + medians[f"iptables-restore ({flavor}, {label})"]
                ratio = medians[f"netinit ({flavor}, {label})"] / floor
                print(f"netinit / (bare interpreter + raw restore) ({flavor}, {label}): x{ratio:.2f} (target <= 2)")
                stdlib = medians["stdlib"] + medians[f"iptables-restore ({flavor}, {label})"]
                ratio = medians[f"netinit ({flavor}, {label})"] / stdlib
                print(f"netinit / (interpreter + its stdlib imports + raw restore) ({flavor}, {label}): x{ratio:.2f}")
            over = medians[f"netinit --native-nftables ({label})"] - medians[f"nft -f ({label})"]
            ratio = medians[f"netinit --native-nftables ({label})"] / (medians["floor"] + medians[f"nft -f ({label})"])
            print(f"netinit --native-nftables overhead over raw nft -f ({label}): {over:+.1f} ms (p50), x{ratio:.2f}")


if __name__ == "__main__":
    main()
