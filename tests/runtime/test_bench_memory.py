"""A container's memory as its cgroup counts it (lab.runtime.podman.container_memory, bench.proxy_memory
--runtime podman): two real containers side by side, one holding 64 MiB, so reading the wrong cgroup - the parent,
a neighbour - shows up in the figures."""

from __future__ import annotations

import re
import time

import pytest

from lab.runtime import podman

pytestmark = [pytest.mark.requires_podman, pytest.mark.timeout(300)]

HOLD = "import time; block = b'x' * (64 << 20); print('held', flush=True); time.sleep(120)"
MIB = 1 << 20


def test_container_memory_reads_each_containers_own_cgroup(built: podman.Built) -> None:
    python = podman.Opts(entrypoint="python3")
    image = built.images["netinit"]
    with (
        podman.container(image, "-c", HOLD, opts=python) as big,
        podman.container(image, "-c", "import time; time.sleep(120)", opts=python) as idle,
    ):
        deadline = time.monotonic() + 60
        while "held" not in podman.logs(big):
            assert time.monotonic() < deadline, podman.logs(big)
            time.sleep(0.1)
        held, quiet = podman.container_memory(big), podman.container_memory(idle)
    assert held.anon >= 64 * MIB, held
    assert quiet.anon < 16 * MIB, quiet
    for mem in (held, quiet):
        assert mem.usage >= mem.working_set >= mem.anon, mem


def test_the_memory_bench_reads_the_proxy_containers(capsys: pytest.CaptureFixture[str]) -> None:
    from bench import proxy_memory

    proxy_memory.main(["--runtime", "podman", "--pods", "1,2", "--settle", "0.5", "--soak", "3000", "--rate", "1000"])
    out = capsys.readouterr().out
    # the soak went through the first pod's Envoy (the bench fails if its inbound listener did not count it)
    assert re.search(r"^soak: 3,000 requests at 1000 rps .*\((\d+) connections on its inbound listener\)", out, re.M), (
        out
    )
    for label in ("usage", "working set", "Envoy RSS"):
        assert re.search(rf"^  {label}: first second [\d.]+ MiB, at 10 % [\d.]+, last [\d.]+, max [\d.]+", out, re.M), (
            out
        )
    rows = [line.split() for line in out.splitlines() if line[:4].strip() in ("1", "2")]
    assert [r[0] for r in rows] == ["1", "2"], out
    for row in rows:
        usage, working_set, cache, anon, rss, pss = map(float, row[1:7])
        assert usage >= working_set >= anon > 5 and usage >= cache, out  # Envoy's heap is in its cgroup
        assert rss > anon and pss <= rss, out
