"""bench/httpload.c, the sidecar-tax benchmark's load generator and app server, against real sockets on
localhost: it answers what it is asked, counts every request, and is open loop - a server stall shows up as the
queueing it causes for every request due during it, not as one slow sample (no coordinated omission)."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lab.shell import c_binary, free_port

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def httpload() -> Path:
    return c_binary(ROOT / "bench" / "httpload.c", "httpload")


@pytest.fixture
def server(httpload: Path) -> Iterator[int]:
    port = free_port()
    proc = subprocess.Popen([str(httpload), "serve", str(port)], stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    assert "serving" in proc.stderr.readline()
    yield port
    proc.kill()
    proc.wait()


def load(httpload: Path, port: int, *args: str) -> tuple[int, dict[str, Any]]:
    res = subprocess.run([str(httpload), "load", "127.0.0.1", str(port), *args], capture_output=True, text=True)
    return res.returncode, json.loads(res.stdout) if res.stdout else {"stderr": res.stderr}


@pytest.mark.parametrize("mode", ["keepalive", "close"])
def test_open_loop_sends_exactly_the_scheduled_requests(httpload: Path, server: int, mode: str) -> None:
    rc, out = load(httpload, server, "400", "1", "4", mode, "0.25")
    assert rc == 0, out
    assert out["mode"] == mode and out["errors"] == 0 and out["unanswered"] == 0
    assert out["recorded"] == out["ok"] == 400  # one request due every 2.5 ms for the recorded second
    assert out["sent"] == 500  # plus the warm-up's, sent but not recorded
    assert 0 < out["p50_us"] <= out["p90_us"] <= out["p99_us"] <= out["max_us"]


def test_saturation_is_closed_loop_and_reports_throughput(httpload: Path, server: int) -> None:
    rc, out = load(httpload, server, "0", "0.5", "2", "keepalive", "0.1")
    assert rc == 0, out
    assert out["errors"] == 0 and out["ok"] > 1000 and out["achieved_rps"] > 2000


def test_a_stall_delays_every_request_due_during_it(httpload: Path) -> None:
    """A keep-alive server that stalls 300 ms once: at 200 rps about 60 requests fall due during the stall, and
    each one's latency counts from its due time. A closed-loop generator would see one slow request (p90 small)."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    answered = 0

    def serve() -> None:
        nonlocal answered
        conn, _ = listener.accept()
        buf = b""
        while True:
            data = conn.recv(4096)
            if not data:
                return
            buf += data
            while b"\r\n\r\n" in buf:
                _, buf = buf.split(b"\r\n\r\n", 1)
                answered += 1
                if answered == 150:  # 0.75 s in: inside the recorded window
                    time.sleep(0.3)
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    threading.Thread(target=serve, daemon=True).start()
    rc, out = load(httpload, port, "200", "1", "1", "keepalive", "0.5")
    listener.close()
    assert rc == 0, out
    assert out["ok"] == 200
    assert out["max_us"] >= 290_000
    assert out["p90_us"] >= 100_000, out  # the queue behind the stall, not one outlier
    assert out["p50_us"] < 20_000, out


def test_bad_arguments_are_refused(httpload: Path) -> None:
    rc, out = load(httpload, 1, "100", "1", "1", "pipelined")
    assert rc == 2 and "keepalive or close" in out["stderr"]
    res = subprocess.run(
        [str(httpload), "load", "localhost", "80", "1", "1", "1", "close"], capture_output=True, text=True
    )
    assert res.returncode == 2 and "IPv4 address" in res.stderr


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["15001"],
        ["15001", "15006", "1"],
        ["x", "15006"],
        ["0", "15006"],
        ["15001", "65536"],
        ["15001", "15001"],
        ["15001", "15006x"],
    ],
)
def test_relay_refuses_bad_arguments(httpload: Path, args: list[str]) -> None:
    res = subprocess.run([str(httpload), "relay", *args], capture_output=True, text=True, timeout=5)
    assert res.returncode == 2 and "usage: httpload relay OUT_PORT IN_PORT" in res.stderr


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_relay_resets_what_was_not_redirected_and_reports_on_a_signal(httpload: Path, sig: signal.Signals) -> None:
    """Without a REDIRECT there is no original destination (or it is the relay itself): the connection is reset,
    counted as an error of its port, and the counters come out as one JSON line when the relay is stopped."""
    out_port, in_port = free_port(), free_port()
    proc = subprocess.Popen([str(httpload), "relay", str(out_port), str(in_port)], stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    try:
        assert f"relaying on :{out_port} (outbound) and :{in_port} (inbound)" in proc.stderr.readline()
        with pytest.raises(ConnectionResetError), socket.create_connection(("127.0.0.1", in_port), timeout=5) as s:
            s.sendall(b"hello")  # the reset may already be what connect() returns
            s.recv(10)
    finally:
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=5)
    assert proc.returncode == 0, err
    idle = {"connections": 0, "bytes_up": 0, "bytes_down": 0, "errors": 0}
    refused = {"connections": 1, "bytes_up": 0, "bytes_down": 0, "errors": 1}
    assert json.loads(err.strip().splitlines()[-1]) == {"outbound": idle, "inbound": refused, "open": 0}
