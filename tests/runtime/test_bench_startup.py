"""bench.pod_startup and bench.runtime_ops under podman, briefly, so that they keep working: every variant comes
up from the shipped images and every phase is timed, with the runtime's own cost of one container measured beside
them. The figures are docs/benchmarks.md's business, not a test's."""

from __future__ import annotations

import re
import subprocess

import pytest

from bench import pod_startup, runtime_ops

pytestmark = [pytest.mark.requires_podman, pytest.mark.timeout(600)]


def test_the_startup_bench_runs_every_variant_under_podman(capsys: pytest.CaptureFixture[str]) -> None:
    pod_startup.main(["--runs", "1", "--runtime", "podman"])
    out = capsys.readouterr().out
    assert "podman + runc, the shipped images" in out
    assert re.search(r"^plain\s+-\s+-\s+[\d.]+\s+[\d.]+\s*$", out, re.M), out
    assert re.search(r"^plain \+ no-op init\s+-\s+-\s+[\d.]+\s+[\d.]+\s+[+-][\d.]+$", out, re.M), out
    for variant in ("legacy", "legacy \\+ hold", "native sidecar"):
        assert re.search(rf"^{variant}\s+[\d.]+\s+[\d.]+\s+[\d.]+\s+[\d.]+\s+[+-][\d.]+$", out, re.M), (variant, out)


def test_the_runtime_ops_bench_times_both_ways_of_starting_a_container(capsys: pytest.CaptureFixture[str]) -> None:
    """bench.runtime_ops checks what it times (exit 0 through the API, a detached container running) and leaves
    no container or API service behind."""
    from lab.runtime import kubelet, podman

    runtime_ops.main(["--runs", "2"])
    out = capsys.readouterr().out
    for what in ("cli inspect", "cli run, to exit", "cli run -d", "api create", "api start", "api wait \\(exited\\)"):
        assert re.search(rf"^{what}\s+[\d.]+\s+[\d.]+", out, re.M), (what, out)
    for what in ("api run, to exit", "api run -d"):
        assert re.search(rf"^{what}\s+[\d.]+\s+[\d.]+", out, re.M), (what, out)
    assert re.search(r"the runtime alone: [\d.]+ ms as the lab's kubelet starts them, [\d.]+ ms through", out), out
    left = podman.cli("ps", "-a", "--filter", f"label={kubelet.LABEL}", "--format", "{{.Names}}").stdout
    assert "rt-ops-" not in left, left
    procs = subprocess.run(["pgrep", "-f", "podman system service"], capture_output=True, text=True, check=False)
    assert procs.stdout.strip() == "", procs.stdout
