"""ASGI middleware in front of every route: the API key check and the request metrics.

With an API key set, every request but the health checks (/healthz, /readyz) and the page shell
(/ and /static/, which hold no model data; the page asks for the key) must carry
``Authorization: Bearer KEY`` or ``X-API-Key: KEY``.
"""

from __future__ import annotations

import hmac
import json
import time

from seglab.apps.serve.metrics import ServeMetrics

__all__ = ["GuardMiddleware"]

_PUBLIC = {"/healthz", "/readyz", "/", "/favicon.ico"}
_KNOWN = {"/healthz", "/readyz", "/", "/docs", "/openapi.json", "/metrics", "/v1/models", "/v1/samples",
          "/v1/segment"}


def _metric_path(path: str) -> str:
    """A bounded set of path labels, so junk URLs cannot grow the metrics without end."""
    if path in _KNOWN:
        return path
    if path.startswith("/static/"):
        return "/static"
    if path.startswith("/v1/samples/"):
        return "/v1/samples/{name}"
    return "other"


def _presented_key(headers: list[tuple[bytes, bytes]]) -> str | None:
    for name, value in headers:
        if name == b"x-api-key":
            return value.decode("latin-1")
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer":
                return token.strip()
    return None


class GuardMiddleware:
    def __init__(self, app, api_key: str | None, metrics: ServeMetrics) -> None:
        self.app = app
        self.api_key = api_key
        self.metrics = metrics

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        path = scope.get("path", "")
        status = {"code": 500}

        async def send_recording(message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            if self.api_key and path not in _PUBLIC and not path.startswith("/static/"):
                key = _presented_key(scope.get("headers", []))
                if key is None or not hmac.compare_digest(key.encode(), self.api_key.encode()):
                    await self._unauthorised(send_recording, key is None)
                    return
            await self.app(scope, receive, send_recording)
        finally:
            self.metrics.observe_request(scope.get("method", "GET"), _metric_path(path), status["code"],
                                         time.perf_counter() - started)

    @staticmethod
    async def _unauthorised(send, missing: bool) -> None:
        detail = ("This server needs an API key." if missing else "The API key given is not this server's.")
        body = json.dumps({"status": 401, "error": "unauthorised", "detail": detail,
                           "accepted": "header `Authorization: Bearer KEY` or `X-API-Key: KEY`"}).encode()
        await send({"type": "http.response.start", "status": 401,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"www-authenticate", b'Bearer realm="seglab"')]})
        await send({"type": "http.response.body", "body": body})
