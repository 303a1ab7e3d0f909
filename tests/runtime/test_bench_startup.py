"""bench.pod_startup under podman, briefly, so that it keeps working: every variant comes up from the shipped
images and every phase is timed, with the runtime's own cost of one container measured beside them. The figures
are docs/benchmarks.md's business, not a test's."""

from __future__ import annotations

import re

import pytest

from bench import pod_startup

pytestmark = [pytest.mark.requires_podman, pytest.mark.timeout(600)]


def test_the_startup_bench_runs_every_variant_under_podman(capsys: pytest.CaptureFixture[str]) -> None:
    pod_startup.main(["--runs", "1", "--runtime", "podman"])
    out = capsys.readouterr().out
    assert "podman + runc, the shipped images" in out
    assert re.search(r"^plain\s+-\s+-\s+[\d.]+\s+[\d.]+\s*$", out, re.M), out
    assert re.search(r"^plain \+ no-op init\s+-\s+-\s+[\d.]+\s+[\d.]+\s+[+-][\d.]+$", out, re.M), out
    for variant in ("legacy", "legacy \\+ hold", "native sidecar"):
        assert re.search(rf"^{variant}\s+[\d.]+\s+[\d.]+\s+[\d.]+\s+[\d.]+\s+[+-][\d.]+$", out, re.M), (variant, out)
