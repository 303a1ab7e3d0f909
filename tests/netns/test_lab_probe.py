"""lab.traffic.probe, the pretend kubelet's probe: made in-process from inside a namespace (a socket created
there), it must tell a serving port from a closed one and a 2xx/3xx from an error, and leave the calling thread
in its own namespace."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lab import traffic
from lab.shell import free_port, stop_process

pytestmark = pytest.mark.requires_root


def test_probe_is_made_in_the_namespace_it_names(netns: str, tmp_path: Path) -> None:
    own = Path("/proc/thread-self/ns/net").stat().st_ino
    port = free_port()  # free here, in the host namespace
    (tmp_path / "ready").write_text("ok")
    cmd = ["ip", "netns", "exec", netns, sys.executable, "-m", "http.server", "-b", "127.0.0.1", str(port)]
    server = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while not traffic.probe(netns, "127.0.0.1", port, None):
            assert time.monotonic() < deadline, "http.server did not start"
            time.sleep(0.05)
        assert traffic.probe(netns, "127.0.0.1", port, "/ready")  # 200
        assert not traffic.probe(netns, "127.0.0.1", port, "/missing")  # 404
        assert not traffic.probe(netns, "127.0.0.1", port + 1, "/ready")  # refused
        with socket.socket() as host_side, pytest.raises(OSError):  # the host namespace has no such server
            host_side.settimeout(1)
            host_side.connect(("127.0.0.1", port))
    finally:
        stop_process(server)
    assert Path("/proc/thread-self/ns/net").stat().st_ino == own  # this thread is back in its own namespace
