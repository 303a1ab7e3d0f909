"""The baseline for bench/webhook_load.py: a trivial AdmissionReview echo on the same stack and TLS settings.

Parses the review and answers ``allowed: true`` with its uid - what any Python webhook on FastAPI + uvicorn
(uvloop, httptools) pays before doing real work.

    python bench/echo_server.py PORT CERT KEY
"""

from __future__ import annotations

import json
import ssl
import sys

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import Response

app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)


@app.post("/inject")
async def inject(request: Request) -> Response:
    review = json.loads(await request.body())
    out = {
        "apiVersion": review["apiVersion"],
        "kind": "AdmissionReview",
        "response": {"uid": review["request"]["uid"], "allowed": True},
    }
    return Response(json.dumps(out, separators=(",", ":")).encode(), media_type="application/json")


def main() -> None:
    port, cert, key = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        loop="uvloop",
        http="httptools",
        log_config=None,
        access_log=False,
        timeout_keep_alive=30,
        ssl_certfile=cert,
        ssl_keyfile=key,
    )
    config.load()
    assert config.ssl is not None
    config.ssl.minimum_version = ssl.TLSVersion.TLSv1_2
    uvicorn.Server(config).run()


if __name__ == "__main__":
    main()
