"""The pod-level benchmarks end to end, briefly, so that they keep working: bench.sidecar_tax (six pods: plain,
injected, and injected with the C relay in Envoy's place; the bench itself fails if the injected traffic did not
cross both Envoys' passthrough clusters or the relays did not count it) and bench.pod_startup (each layout comes
up and every phase is timed). The figures themselves are docs/benchmarks.md's business, not a test's."""

from __future__ import annotations

import re

import pytest

from bench import pod_startup, proxy_buffers, proxy_memory, sidecar_tax

pytestmark = pytest.mark.requires_root


def test_the_tax_bench_runs_and_prints_every_figure(capsys: pytest.CaptureFixture[str]) -> None:
    sidecar_tax.main(["--seconds", "0.5", "--repeat", "1", "--rates", "200,1000", "--soak", "2000"])
    out = capsys.readouterr().out
    for row in ("200 rps keepalive", "1000 rps keepalive", "200 rps close", "1000 rps close", "saturation keepalive"):
        assert re.search(rf"^{row}\s+[\d.]+/[\d.]+/[\d.]+\s+[\d.]+/", out, re.M), (row, out)
    for who in ("injected client", "injected server", "relay client", "relay server", "app server"):
        assert re.search(rf"^  {who} at 1000 rps keepalive: [\d.]+", out, re.M), (who, out)
    assert re.search(r"Envoy / relay, server at 1000 rps keepalive: x[\d.]+", out)
    assert re.search(r"server: RSS idle [\d.]+ MiB", out)
    assert "soak: 2,000 requests" in out


def test_the_startup_bench_times_every_phase_of_every_layout(capsys: pytest.CaptureFixture[str]) -> None:
    pod_startup.main(["--runs", "1"])
    out = capsys.readouterr().out
    assert re.search(r"^plain\s+-\s+-\s+[\d.]+\s+[\d.]+\s*$", out, re.M), out  # no init, no proxy
    for variant in ("legacy", "legacy \\+ hold", "native sidecar"):
        assert re.search(rf"^{variant}\s+[\d.]+\s+[\d.]+\s+[\d.]+\s+[\d.]+\s+[+-][\d.]+$", out, re.M), (variant, out)


def test_the_memory_bench_shows_the_binary_shared_between_envoys(capsys: pytest.CaptureFixture[str]) -> None:
    proxy_memory.main(["--pods", "1,2"])
    out = capsys.readouterr().out
    rows = {
        int(m[0]): [float(v) for v in m[1:]]
        for m in re.findall(r"^\s+(\d) +([\d.]+) +([\d.]+) +([\d.]+) +([\d.]+) +[\d.]+$", out, re.M)
    }
    assert set(rows) == {1, 2}, out
    (rss1, private1, pss1, _), (rss2, private2, pss2, total2) = rows[1], rows[2]
    assert rss1 > pss1 > private1 and rss2 > pss2 > private2, out
    assert pss2 < pss1 - 10, out  # a second Envoy takes half of the executable's ~50 MiB of pages off the first
    assert abs(total2 - 2 * pss2) < 0.2, out
    assert re.search(r"private part of one Envoy: [\d.]+ MiB in the executable's own mappings", out), out


def test_the_buffer_bench_measures_every_limit_against_the_uncaptured_path(capsys: pytest.CaptureFixture[str]) -> None:
    proxy_buffers.main(["--stalled", "4", "--mib", "16", "--repeat", "1"])
    out = capsys.readouterr().out
    for _, label in proxy_buffers.LIMITS:
        row = re.search(rf"^{re.escape(label)}\s+([\d.]+) / ([\d.]+)\s+(-?\d+) KiB\s+(\d+) KiB\s+(\d+)$", out, re.M)
        assert row, (label, out)
        assert float(row[1]) > 5 and int(row[5]) > 0, out
        if label.startswith("Envoy's default"):  # up to 1 MiB each: Envoy's heap holds what the peers did not read
            assert float(row[2]) - float(row[1]) > 2, out
    assert re.search(r"^no Envoy \(uid 1337, not captured\)\s+\d+$", out, re.M), out
