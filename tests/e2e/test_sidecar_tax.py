"""bench.sidecar_tax end to end, briefly: four pods (plain and injected client/server) come up, the injected
traffic crosses both Envoys (the bench checks their passthrough counters and fails otherwise), and every figure
the issue asks for is printed. The figures themselves are docs/benchmarks.md's business, not a test's."""

from __future__ import annotations

import re

import pytest

from bench import sidecar_tax

pytestmark = pytest.mark.requires_root


def test_the_tax_bench_runs_and_prints_every_figure(capsys: pytest.CaptureFixture[str]) -> None:
    sidecar_tax.main(["--seconds", "0.5", "--repeat", "1", "--rates", "200,1000", "--soak", "2000"])
    out = capsys.readouterr().out
    for row in ("200 rps keepalive", "1000 rps keepalive", "200 rps close", "1000 rps close", "saturation keepalive"):
        assert re.search(rf"^{row}\s+[\d.]+/[\d.]+/[\d.]+\s+[\d.]+/", out, re.M), (row, out)
    assert re.search(r"client: [\d.]+ vCPU per 1000 rps", out) and re.search(r"server: RSS idle [\d.]+ MiB", out)
    assert "soak: 2,000 requests" in out
