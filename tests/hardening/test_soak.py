"""Soak: 20,000 admission requests at concurrency 64 over TLS keep-alive, with a config change and a certificate
rotation in the middle. Zero failed requests; the server's RSS and open file descriptors stay bounded.

Uses the real server process (tests/webhook/conftest.py) and an asyncio client with 64 keep-alive connections.
The figures are printed (-s) and recorded in docs/reliability.md.
"""

from __future__ import annotations

import asyncio
import base64
import json
import ssl
import time
from pathlib import Path

from tests.webhook.conftest import Server, serving

TOTAL, CONCURRENCY = 20_000, 64
BODY = json.dumps(
    {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "UID",
            "kind": {"kind": "Pod"},
            "operation": "CREATE",
            "namespace": "shop",
            "object": {
                "metadata": {"generateName": "web-", "labels": {"app": "web"}},
                "spec": {"containers": [{"name": "app", "image": "a:1", "ports": [{"containerPort": 8080}]}]},
            },
        },
    }
)


def proc_status(pid: int) -> tuple[float, int]:
    rss = next(int(x.split()[1]) for x in Path(f"/proc/{pid}/status").read_text().splitlines() if x.startswith("VmRSS"))
    return rss / 1024, len(list(Path(f"/proc/{pid}/fd").iterdir()))


async def client(
    srv: Server, ctx: ssl.SSLContext, counter: dict[str, int], failures: list[str], seen: set[str]
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", srv.port, ssl=ctx, server_hostname="127.0.0.1")
    try:
        while counter["sent"] < TOTAL:
            counter["sent"] += 1
            uid = f"soak-{counter['sent']}"
            body = BODY.replace("UID", uid).encode()
            head = (
                "POST /inject HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n"
            )
            writer.write(head.encode() + body)
            status_line = await reader.readline()
            length = 0
            while (line := await reader.readline()) not in (b"\r\n", b""):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            data = await reader.readexactly(length)
            out = json.loads(data)
            if b" 200 " not in status_line or out["response"]["uid"] != uid or not out["response"]["allowed"]:
                failures.append(f"{status_line!r} {data[:200]!r}")
            patch = base64.b64decode(out["response"].get("patch", ""))
            seen.add("sidecar" if b"proxyv2" in patch else "envoy")
            counter["done"] += 1
    except (OSError, asyncio.IncompleteReadError, ValueError) as e:
        failures.append(repr(e))
    finally:
        writer.close()


async def soak(srv: Server) -> tuple[int, list[str], set[str]]:
    ctx = srv.context()
    ctx.check_hostname = False  # one name for every connection; the chain is still verified against our CA
    counter = {"sent": 0, "done": 0}
    failures: list[str] = []
    seen: set[str] = set()

    async def faults() -> None:
        while counter["done"] < TOTAL * 0.35:
            await asyncio.sleep(0.01)
        (srv.config_path / "config.yaml").write_text("policy: enabled\ndefaultTemplates: [sidecar]\n")
        while counter["done"] < TOTAL * 0.6:
            await asyncio.sleep(0.01)
        await asyncio.to_thread(srv.rotate)

    await asyncio.gather(faults(), *(client(srv, ctx, counter, failures, seen) for _ in range(CONCURRENCY)))
    return counter["done"], failures, seen


def test_soak_with_config_change_and_cert_rotation(tmp_path: Path) -> None:
    with serving(tmp_path) as srv:
        rss0, fds0 = proc_status(srv.process.pid)
        start = time.monotonic()
        done, failures, seen = asyncio.run(soak(srv))
        elapsed = time.monotonic() - start
        time.sleep(0.5)  # let the server notice the closed connections
        rss1, fds1 = proc_status(srv.process.pid)
        log = srv.log_file.read_text()
    print(
        f"\nsoak: {done} requests at concurrency {CONCURRENCY} in {elapsed:.1f} s, {len(failures)} failed; "
        f"RSS {rss0:.1f} -> {rss1:.1f} MiB, open fds {fds0} -> {fds1}"
    )
    assert not failures, failures[:3]
    assert done == TOTAL
    assert seen == {"envoy", "sidecar"}, "the config change was not picked up mid-run"
    assert '"msg": "certificate reloaded"' in log and '"msg": "config reloaded"' in log
    assert rss1 - rss0 < 40, "RSS grew by more than 40 MiB"
    assert fds1 <= fds0 + 4, "file descriptors leaked"
