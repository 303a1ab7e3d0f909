"""Config faults while serving: garbage, deletion, a half-written file. The last good config keeps serving,
readiness stays up, and the failure shows in the logs, in /readyz's detail and in the metrics."""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from injector.core.config import load_config
from injector.core.inject import check_config
from injector.errors import ConfigError
from injector.server.contract import Webhook
from injector.server.metrics import Metrics
from injector.server.reload import Reloader

REVIEW = json.dumps(
    {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "u",
            "kind": {"kind": "Pod"},
            "operation": "CREATE",
            "namespace": "shop",
            "object": {"metadata": {"name": "p"}, "spec": {"containers": [{"name": "app", "image": "a:1"}]}},
        },
    }
).encode()


def garbage(d: Path) -> None:
    (d / "config.yaml").write_bytes(b"\x00\xff\xfe{{{ not yaml ::")


def deleted(d: Path) -> None:
    shutil.rmtree(d)


def half_written(d: Path) -> None:
    (d / "config.yaml").write_text("policy: disabled\ndefaultTemp")  # cut mid-key: valid YAML, unknown key


def bad_values(d: Path) -> None:
    (d / "values.yaml").write_text("global: [not, a, mapping]\n")


def broken_template(d: Path) -> None:
    (d / "envoy.yaml.j2").write_text("{% if %}")  # replaces the built-in one: must not take effect half-way


@pytest.mark.parametrize("fault", [garbage, deleted, half_written, bad_values, broken_template])
def test_fault_keeps_last_good_config(
    tmp_path: Path, fault: Callable[[Path], None], caplog: pytest.LogCaptureFixture
) -> None:
    d = tmp_path / "config"
    d.mkdir()
    (d / "config.yaml").write_text("policy: enabled\n")
    metrics = Metrics()
    r = Reloader("config", [d], lambda: check_config(load_config(d, env={})), metrics, debounce=0)
    hook = Webhook(r, metrics)
    r.initial()
    good = r.value
    with caplog.at_level(logging.ERROR, logger="sidecar_injector"):
        fault(d)
        r.poll(1.0)
        r.poll(2.0)
    status, out = hook.handle(REVIEW, "application/json")
    assert status == 200 and json.loads(out)["response"]["allowed"] is True
    assert r.value is good
    ok, detail = hook.ready
    assert ok and "config: last reload failed" in detail
    assert any("reload failed; keeping the last good one" in rec.getMessage() for rec in caplog.records)
    data, _ = metrics.render()
    assert 'sidecar_injector_reloads_total{result="failure",what="config"} 1.0' in data.decode()
    assert 'sidecar_injector_last_reload_success{what="config"} 0.0' in data.decode()


def test_broken_template_is_caught_at_reload_not_at_injection(tmp_path: Path) -> None:
    """A template that does not compile fails the reload (so the last good config stays), instead of failing
    every pod later."""
    d = tmp_path / "config"
    d.mkdir()
    (d / "config.yaml").write_text("policy: enabled\n")
    (d / "envoy.yaml.j2").write_text("{% if %}")
    with pytest.raises(ConfigError, match="template 'envoy' failed to render"):
        check_config(load_config(d, env={}))
    (d / "envoy.yaml.j2").unlink()
    (d / "values.yaml").write_text("global:\n  proxy: 7\n")
    with pytest.raises(ConfigError, match="cannot inject with these values"):
        check_config(load_config(d, env={}))
