"""A real `sidecar-injector serve` process with a generated CA, for the HTTPS tests (the lab's harness)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab.webhook_process import WebhookProcess

Server = WebhookProcess


@pytest.fixture
def server(tmp_path: Path) -> Iterator[WebhookProcess]:
    with serving(tmp_path) as srv:
        yield srv


@contextlib.contextmanager
def serving(tmp_path: Path, *extra: str, wait_ready: bool = True) -> Iterator[WebhookProcess]:
    """A `sidecar-injector serve` process (``extra`` flags appended), ready (or, with ``wait_ready=False``,
    just running and without certificate files: `WebhookProcess.rotate` writes them); terminated at the end."""
    config_dir = tmp_path / "config"
    config_dir.mkdir()
    (config_dir / "config.yaml").write_text("policy: enabled\ndefaultTemplates: [envoy]\n")
    flags = ["--reload-interval", "0.1", "--request-timeout", "1", *extra]
    with WebhookProcess(
        config_dir, workdir=tmp_path, certificate=wait_ready, extra_args=flags, start_timeout=20
    ) as srv:
        yield srv
