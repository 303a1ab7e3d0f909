"""The FastAPI app: routes that read the body (bounded in size and time) and hand it to ``Webhook.handle``."""

from __future__ import annotations

import asyncio

from fastapi import FastAPI
from fastapi import Request as HttpRequest
from fastapi.responses import JSONResponse, Response

from injector.server.contract import MAX_BODY, Webhook

BODY_TIMEOUT = 10.0  # the MWC's timeoutSeconds: after that nobody is waiting for the answer (--request-timeout)


def create_app(webhook: Webhook, body_timeout: float = BODY_TIMEOUT) -> FastAPI:
    app = FastAPI(title="sidecar-injector", docs_url=None, redoc_url=None, openapi_url=None)

    async def read_body(request: HttpRequest) -> bytes | None:
        """The body, or None when it is over the limit (stops reading as soon as it is)."""
        declared = request.headers.get("content-length")
        if declared is not None and (declared.isascii() and declared.isdigit()) and int(declared) > MAX_BODY:
            return None
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > MAX_BODY:
                return None
            chunks.append(chunk)
        return b"".join(chunks)

    async def review(request: HttpRequest) -> Response:
        try:
            async with asyncio.timeout(body_timeout):  # no extra task per request, unlike wait_for
                body = await read_body(request)
        except TimeoutError:
            webhook.metrics.errors.labels("body_timeout").inc()
            return JSONResponse({"error": f"body not received within {body_timeout:g}s"}, status_code=408)
        if body is None:
            body = b"x" * (MAX_BODY + 1)  # let handle() answer and count it like any oversized body
        status, out = webhook.handle(body, request.headers.get("content-type"), request.url.path)
        return Response(out, status_code=status, media_type="application/json")

    app.add_api_route("/inject", review, methods=["POST"])
    app.add_api_route("/inject/{params:path}", review, methods=["POST"])

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> Response:
        ok, detail = webhook.ready
        return JSONResponse({"ready": ok, "detail": detail}, status_code=200 if ok else 503)

    @app.get("/metrics")
    async def metrics() -> Response:
        data, ctype = webhook.metrics.render()
        return Response(data, media_type=ctype)

    return app
