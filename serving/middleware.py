"""ASGI guard in front of every route: API key, body cap, request shape, and the error contract.

In order, before any route (or BentoML's own request parser) sees a request:

- API key: when configured, every route except liveness / readiness / metrics needs
  `Authorization: Bearer <key>`; the comparison is constant-time (`hmac.compare_digest`).
- Body cap: a declared Content-Length above the cap is refused before any byte is read; a body
  without one (chunked) is read up to the cap and refused as soon as it passes it.
- Shape: the buffered body is checked against the route's declared fields (`RouteSpec`). JSON must
  be one object of known keys; multipart parts must carry known names, files where a file is
  declared (BentoML would otherwise fetch a URL given as text) and text elsewhere, no repeats of a
  single field, and text of at most `max_field_bytes`; a url-encoded form holds known text fields
  only. Other content types are 415.
  This runs before BentoML's parser, which answers 500 on some of these.
- Errors: every answer of 400 or more leaving the app is rewritten to the one shape of
  `serving.errors` (BentoML's arrays and pydantic's lists included); a 503 gets `Retry-After`.
"""

from __future__ import annotations

import base64
import hmac
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from serving.errors import code_for, error_body, normalize_body, raised_during

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

OPEN_PATHS = frozenset({"/livez", "/readyz", "/healthz", "/metrics"})
# the page's static files carry no data (its API calls send the key the person types in)
OPEN_PREFIXES = ("/ui/",)
MAX_PARTS = 64  # multipart parts per request (files and text together)


@dataclass(frozen=True)
class RouteSpec:
    """What one route accepts: its fields, which are files, which files may repeat."""

    fields: frozenset[str]
    files: frozenset[str] = frozenset()
    lists: frozenset[str] = frozenset()
    max_files: int = 1


class Refusal(Exception):
    def __init__(self, status: int, message: str, field: str | None) -> None:
        super().__init__(message)
        self.status, self.message, self.field = status, message, field


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
    """The key a request presents: `Bearer <key>`, or, for the Label Studio backend (`/ls/...`,
    whose connection settings offer basic auth only), the password of `Basic <user:key>`."""
    for name, value in scope.get("headers", []):
        if name == b"authorization":
            scheme, _, token = value.partition(b" ")
            if scheme.lower() == b"bearer":
                return token.strip()
            if scheme.lower() == b"basic" and scope["path"].startswith("/ls/"):
                try:
                    return base64.b64decode(token.strip(), validate=True).partition(b":")[2]
                except ValueError:
                    return b""
            return b""
    return b""


@dataclass
class _Part:
    name: str | None = None
    filename: str | None = None
    size: int = 0
    data: list[bytes] = field(default_factory=list)
    headers: dict[bytes, bytes] = field(default_factory=dict)


def scan_multipart(body: bytes, boundary: bytes, max_text_bytes: int) -> list[_Part]:
    """Parts of a multipart body: name, filename, size, and the text of non-file parts up to
    `max_text_bytes` (a longer one is flagged by its size)."""
    parts: list[_Part] = []
    current = _Part()
    header_name: list[bytes] = []
    header_value: list[bytes] = []

    def on_part_begin() -> None:
        nonlocal current
        current = _Part()
        if len(parts) >= MAX_PARTS:
            raise Refusal(400, f"body: more than {MAX_PARTS} multipart parts", "body")

    def on_header_field(data: bytes, start: int, end: int) -> None:
        header_name.append(data[start:end])

    def on_header_value(data: bytes, start: int, end: int) -> None:
        header_value.append(data[start:end])

    def on_header_end() -> None:
        current.headers[b"".join(header_name).lower()] = b"".join(header_value)
        header_name.clear()
        header_value.clear()

    def on_headers_finished() -> None:
        disposition, options = parse_options_header(current.headers.get(b"content-disposition", b""))
        if disposition != b"form-data":
            raise Refusal(400, "body: a multipart part without Content-Disposition: form-data", "body")
        name = options.get(b"name")
        current.name = name.decode("utf-8", "replace") if name is not None else None
        filename = options.get(b"filename")
        current.filename = filename.decode("utf-8", "replace") if filename is not None else None

    def on_part_data(data: bytes, start: int, end: int) -> None:
        current.size += end - start
        if current.size <= max_text_bytes:
            current.data.append(data[start:end])

    def on_part_end() -> None:
        parts.append(current)

    parser = MultipartParser(
        boundary,
        {
            "on_part_begin": on_part_begin,
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_header_end": on_header_end,
            "on_headers_finished": on_headers_finished,
            "on_part_data": on_part_data,
            "on_part_end": on_part_end,
        },
    )
    try:
        parser.write(body)
        parser.finalize()
    except MultipartParseError as exc:
        raise Refusal(400, f"body: not valid multipart/form-data ({exc})", "body") from None
    return parts


def check_multipart(spec: RouteSpec, body: bytes, content_type: bytes, max_field_bytes: int) -> None:
    _, options = parse_options_header(content_type)
    boundary = options.get(b"boundary")
    if not boundary:
        raise Refusal(400, "Content-Type: multipart/form-data without a boundary", "Content-Type")
    counts: dict[str, int] = {}
    for part in scan_multipart(body, boundary, max_field_bytes):
        name = part.name
        if not name:
            raise Refusal(400, "body: a multipart part without a name", "body")
        if name not in spec.fields:
            raise Refusal(400, f"{name}: unknown part; this route takes {_listing(spec.fields)}", name)
        counts[name] = counts.get(name, 0) + 1
        if name in spec.files:
            if part.filename is None:
                raise Refusal(
                    400,
                    f"{name}: must be a file part (e.g. curl -F {name}=@photo.jpg); "
                    "URLs and text are not fetched",
                    name,
                )
            continue
        if part.size > max_field_bytes:
            raise Refusal(
                413, f"{name}: {part.size} bytes exceed the limit of {max_field_bytes} bytes per field", name
            )
        try:
            text = b"".join(part.data).decode("utf-8")
        except UnicodeDecodeError:
            raise Refusal(
                400, f"{name}: expected text (a number, a word or JSON), got binary data", name
            ) from None
        try:
            json.loads(text)  # what BentoML's parser does next; a too deep value must not reach it
        except RecursionError:
            raise Refusal(400, f"{name}: JSON nested too deeply", name) from None
        except ValueError:
            pass  # plain text: the route's own types decide
    for name, n in counts.items():
        if n > 1 and name not in spec.lists:
            raise Refusal(400, f"{name}: sent {n} times; this field takes one value", name)
        if name in spec.lists and n > spec.max_files:
            raise Refusal(400, f"{name}: {n} files exceed the limit of {spec.max_files}", name)


def check_json(spec: RouteSpec, body: bytes, max_field_bytes: int) -> None:
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        raise Refusal(400, "body: not valid JSON", "body") from None
    if not isinstance(data, dict):
        raise Refusal(400, f"body: expected a JSON object of fields, got {type(data).__name__}", "body")
    for name, value in data.items():
        if name not in spec.fields:
            raise Refusal(400, f"{name}: unknown field; this route takes {_listing(spec.fields)}", name)
        if name in spec.files:
            raise Refusal(
                400,
                f"{name}: a file; send multipart/form-data with a file part (URLs are not fetched)",
                name,
            )
        size = len(json.dumps(value))
        if size > max_field_bytes:
            raise Refusal(
                413, f"{name}: {size} bytes exceed the limit of {max_field_bytes} bytes per field", name
            )


def check_urlencoded(spec: RouteSpec, body: bytes, max_field_bytes: int) -> None:
    """A url-encoded form: text fields only, known names, each within the field cap."""
    try:
        pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=True)
    except (UnicodeDecodeError, ValueError):
        raise Refusal(400, "body: not a valid url-encoded form", "body") from None
    seen: set[str] = set()
    for name, value in pairs:
        if name not in spec.fields:
            raise Refusal(400, f"{name}: unknown field; this route takes {_listing(spec.fields)}", name)
        if name in spec.files:
            raise Refusal(400, f"{name}: a file; send multipart/form-data with a file part", name)
        if name in seen:
            raise Refusal(400, f"{name}: sent twice; this field takes one value", name)
        seen.add(name)
        if len(value.encode()) > max_field_bytes:
            raise Refusal(413, f"{name}: over the limit of {max_field_bytes} bytes per field", name)


def _listing(names: frozenset[str]) -> str:
    return ", ".join(sorted(names)) if names else "no fields"


class GuardMiddleware:
    def __init__(
        self,
        app: Callable,
        api_key: str | None = None,
        max_body_bytes: int = 64 * 1024**2,
        routes: dict[str, RouteSpec] | None = None,
        max_field_bytes: int = 1024**2,
        retry_after_s: int = 2,
    ) -> None:
        self.app = app
        self.key = api_key.encode() if api_key else None
        self.max_body_bytes = int(max_body_bytes)
        self.routes = routes or {}
        self.max_field_bytes = int(max_field_bytes)
        self.retry_after = str(int(retry_after_s)).encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        send = self._normalizing(send, raised_during())
        path = scope["path"]
        is_open = path in OPEN_PATHS or path == "/ui" or path.startswith(OPEN_PREFIXES)
        needs_key = self.key is not None and not is_open
        if needs_key and not hmac.compare_digest(bearer_token(scope), self.key):
            await send_json(
                send,
                401,
                error_body(
                    401, "missing or wrong API key: send 'Authorization: Bearer <key>'", "Authorization"
                ),
                [(b"www-authenticate", b'Bearer realm="sesam"')],
            )
            return
        headers = dict(scope.get("headers", []))
        declared = headers.get(b"content-length")
        if declared is not None:
            try:
                size = int(declared)
            except ValueError:
                await self._refuse(send, Refusal(400, "Content-Length is not a number", "Content-Length"))
                return
            if size > self.max_body_bytes:
                await self._refuse_size(send, size)
                return
        # buffer the body (never more than the cap), check its shape, then replay it
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
        spec = self.routes.get(scope["path"])
        if spec is not None and body:
            try:
                self._check(spec, body, headers.get(b"content-type", b""))
            except Refusal as refusal:
                await self._refuse(send, refusal)
                return

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    def _check(self, spec: RouteSpec, body: bytes, content_type: bytes) -> None:
        kind = content_type.split(b";")[0].strip().lower()
        if kind == b"multipart/form-data":
            check_multipart(spec, body, content_type, self.max_field_bytes)
        elif kind == b"application/x-www-form-urlencoded":
            check_urlencoded(spec, body, self.max_field_bytes)
        elif kind in (b"application/json", b""):
            check_json(spec, body, self.max_field_bytes)
        else:
            raise Refusal(
                415,
                f"Content-Type: {kind.decode('latin-1')!r} is not accepted; send application/json or "
                "multipart/form-data",
                "Content-Type",
            )

    def _normalizing(self, send: Send, raised: list[dict[str, Any]]) -> Send:
        """`send` that rewrites every error answer to the one error shape; a 503 / 504 the service
        raised itself (`raised`) keeps its own body, which BentoML replaced with a generic text."""
        held: dict[str, Any] = {}
        chunks: list[bytes] = []

        async def wrapped(message: Message) -> None:
            if message["type"] == "http.response.start":
                if message["status"] < 400:
                    await send(message)
                    return
                held["start"] = message
                return
            if message["type"] != "http.response.body" or "start" not in held:
                await send(message)
                return
            chunks.append(message.get("body", b""))
            if message.get("more_body", False):
                return
            start = held.pop("start")
            status = start["status"]
            headers = [(k.lower(), v) for k, v in start.get("headers", [])]
            content_type = dict(headers).get(b"content-type", b"").decode("latin-1")
            own = [b for b in raised if b["error"]["code"] == code_for(status)]
            body = own[-1] if own else normalize_body(status, b"".join(chunks), content_type)
            kept = [(k, v) for k, v in headers if k not in (b"content-type", b"content-length")]
            if status == 503 and not any(k == b"retry-after" for k, _ in kept):
                kept.append((b"retry-after", self.retry_after))
            await send_json(send, status, body, kept)

        return wrapped

    async def _refuse(self, send: Send, refusal: Refusal) -> None:
        await send_json(send, refusal.status, error_body(refusal.status, refusal.message, refusal.field))

    async def _refuse_size(self, send: Send, size: int) -> None:
        await self._refuse(
            send,
            Refusal(413, f"body: {size} bytes exceed the limit of {self.max_body_bytes} bytes", "body"),
        )
