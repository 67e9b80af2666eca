"""ASGI guard in front of every route: optional API key and a request-body cap.

- API key: when configured, every route except liveness / readiness / metrics needs
  `Authorization: Bearer <key>`; the comparison is constant-time (`hmac.compare_digest`).
- Body cap: a declared Content-Length above the cap is refused before any byte is read; a body
  without one (chunked) is read up to the cap and refused as soon as it passes it. The app then
  gets the buffered body, so nothing downstream can be made to hold more than the cap.

Refusals are JSON `{"error": ..., "field": ...}` with 401 or 413, like the service's own 4xx.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable
from typing import Any

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

OPEN_PATHS = frozenset({"/livez", "/readyz", "/healthz", "/metrics"})


async def send_json(send: Send, status: int, body: dict, headers: list[tuple[bytes, bytes]] = ()) -> None:
    payload = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})


def bearer_token(scope: Scope) -> bytes:
    for name, value in scope.get("headers", []):
        if name == b"authorization":
            scheme, _, token = value.partition(b" ")
            return token.strip() if scheme.lower() == b"bearer" else b""
    return b""


class GuardMiddleware:
    def __init__(self, app: Callable, api_key: str | None = None, max_body_bytes: int = 64 * 1024**2) -> None:
        self.app = app
        self.key = api_key.encode() if api_key else None
        self.max_body_bytes = int(max_body_bytes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        needs_key = self.key is not None and scope["path"] not in OPEN_PATHS
        if needs_key and not hmac.compare_digest(bearer_token(scope), self.key):
            await send_json(
                send,
                401,
                {
                    "error": "missing or wrong API key: send 'Authorization: Bearer <key>'",
                    "field": "Authorization",
                },
                [(b"www-authenticate", b'Bearer realm="sesam"')],
            )
            return
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None:
            try:
                too_big = int(declared) > self.max_body_bytes
            except ValueError:
                await send_json(
                    send, 400, {"error": "Content-Length is not a number", "field": "Content-Length"}
                )
                return
            if too_big:
                await self._refuse_size(send, int(declared))
                return
            await self.app(scope, receive, send)
            return
        # no declared length: buffer up to the cap, then replay
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                await self._refuse_size(send, size)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body, replayed = b"".join(chunks), False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    async def _refuse_size(self, send: Send, size: int) -> None:
        await send_json(
            send,
            413,
            {
                "error": f"request body of {size} bytes exceeds the limit of {self.max_body_bytes} bytes",
                "field": "body",
            },
        )
