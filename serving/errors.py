"""The service's one error contract.

Every non-2xx answer is JSON of one shape::

    {"error": {"code": "invalid_argument", "message": "prompts[0].labels[0]: ...", "field": "prompts"}}

`code` is a stable name per status (`CODES`), `message` says what is wrong in words, `field` names
the request field, multipart part or header at fault (null when none does). Messages never carry
server paths (`scrub`) or tracebacks; 4xx answers are logged as one line (`OneLineErrors`).

Routes raise `ApiError` (or a BentoML exception); `normalize_body` turns whatever BentoML or
Starlette wrote (a JSON object, BentoML's one-element array, pydantic's validation list, plain
text) into the shape above, so the guard middleware can rewrite every error answer on its way out.
"""

from __future__ import annotations

import json
import logging
import re
from contextvars import ContextVar
from http import HTTPStatus
from typing import Any

from bentoml.exceptions import BentoMLException

CODES: dict[int, str] = {
    400: "invalid_argument",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    408: "request_timeout",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_argument",
    429: "busy",
    500: "internal",
    503: "busy",
    504: "deadline_exceeded",
}
INTERNAL_MESSAGE = "an unexpected error occurred; the server log has the details"
# an absolute path: a slash-led run of path characters after a start, space, quote or bracket
# a server path: two parts or more ("/embed", a route named in a message, is left as it is)
_PATH = re.compile(r"(?:(?<=^)|(?<=[\s'\"(\[=]))/(?:[\w.\-~+@]+/)+[\w.\-~+@]*")
# "field: message" or "field[3].sub: message", the convention of every validation message here
_FIELD = re.compile(r"^([A-Za-z_][\w]*(?:\[\d+\])*(?:\.[A-Za-z_][\w]*(?:\[\d+\])*)*)\s*[:=]")


def code_for(status: int) -> str:
    return CODES.get(status, "internal" if status >= 500 else "invalid_argument")


def scrub(message: str) -> str:
    """The message without server paths (each becomes `<path>`) and cut to 2000 characters."""
    return _PATH.sub("<path>", message)[:2000]


# the service's own 503 / 504 answers raised while serving the current request: BentoML writes a
# generic text in place of any 5xx exception's message, so the guard middleware reads the reason
# (why, and when to retry) from here (`raised_during`)
_RAISED: ContextVar[list[dict[str, Any]] | None] = ContextVar("sesam_raised_errors", default=None)
KEPT_5XX = (503, 504)


def raised_during() -> list[dict[str, Any]]:
    """A fresh record of the 503 / 504 bodies `ApiError` builds in this context from now on (the
    guard middleware calls it once per request; a route run in a worker thread shares the list)."""
    record: list[dict[str, Any]] = []
    _RAISED.set(record)
    return record


class ApiError(BentoMLException):
    """An answer other than 2xx: status, message and the request field at fault."""

    def __init__(
        self,
        status: int,
        message: str,
        field: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        # BentoML writes str(exc) into the body; the guard middleware reads this JSON back
        body = error_body(status, message, field)
        super().__init__(json.dumps(body), error_code=HTTPStatus(status))
        self.error_code = HTTPStatus(status)
        self.field = field
        self.headers = headers or {}
        self.message = message  # after BentoMLException's __init__, which sets its own
        record = _RAISED.get()
        if record is not None and status in KEPT_5XX:
            record.append(body)

    def payload(self) -> dict[str, Any]:
        status = self.error_code.value
        return error_body(status, self.message, self.field)


def error_body(status: int, message: str, field: str | None) -> dict[str, Any]:
    return {"error": {"code": code_for(status), "message": scrub(message), "field": field}}


def field_of(message: str) -> str | None:
    """The field a message names first ("images[1]: not a readable image" -> "images[1]")."""
    match = _FIELD.match(message)
    return match.group(1) if match else None


_TYPE_TAGS = frozenset({"float", "int", "str", "bool", "bytes", "none", "dict", "list", "tuple"})


def _type_tag(part: str) -> bool:
    """A union member's tag in pydantic's error location ('float', 'function-after[...]'), not a field."""
    return part in _TYPE_TAGS or "[" in part or part.startswith("function-")


def _loc_field(loc: Any) -> str | None:
    """pydantic's error location ("prompts", 0, "labels", 1) -> "prompts[0].labels[1]"."""
    if not isinstance(loc, (list, tuple)):
        return None
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif isinstance(part, str) and not _type_tag(part):
            out += ("." if out else "") + part
    return out or None


def normalize_body(status: int, raw: bytes, content_type: str = "") -> dict[str, Any]:
    """Whatever error body BentoML or Starlette wrote -> the one shape. 5xx messages are replaced
    by a generic one except the service's own 503 / 504 (they say why and when to retry)."""
    text = raw.decode("utf-8", "replace")
    data: Any = None
    if "json" in content_type or text[:1] in "[{":
        try:
            data = json.loads(text)
        except ValueError:
            data = None
    if isinstance(data, list) and len(data) == 1 and isinstance(data[0], dict):
        data = data[0]  # BentoML 1.4 wraps a 4xx message in a one-element array
    message, field, explicit = None, None, False
    if isinstance(data, dict):
        inner = data.get("error")
        if isinstance(inner, dict) and "message" in inner:  # already ours
            message, field, explicit = str(inner.get("message")), inner.get("field"), True
        elif isinstance(inner, str):
            try:
                nested = json.loads(inner)
            except ValueError:
                nested = None
            if isinstance(nested, dict) and isinstance(nested.get("error"), dict):
                message, field = str(nested["error"].get("message")), nested["error"].get("field")
                explicit = True
            else:
                message = inner
        details = data.get("detail")
        if isinstance(details, list) and details and isinstance(details[0], dict):  # pydantic
            first = details[0]
            field = _loc_field(first.get("loc"))
            message = f"{field or 'request'}: {first.get('msg', 'invalid value')}"
            if len(details) > 1:
                message += f" (and {len(details) - 1} more)"
    elif isinstance(data, list) and data and isinstance(data[0], dict) and "loc" in data[0]:
        field = _loc_field(data[0].get("loc"))
        message = f"{field or 'request'}: {data[0].get('msg', 'invalid value')}"
    if message is None:
        message = text.strip() or HTTPStatus(status).phrase
    if field is None and not explicit:
        field = field_of(message)
    if status >= 500 and status not in KEPT_5XX:
        message, field = INTERNAL_MESSAGE, None
    return error_body(status, message, field)


class OneLineErrors(logging.Filter):
    """Turns BentoML's "Exception on /route" records for client errors (4xx, validation) into one
    line without a traceback; server errors keep theirs."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is None:
            return True
        status = getattr(getattr(exc, "error_code", None), "value", None)
        is_validation = type(exc).__name__ == "ValidationError"
        if is_validation or (isinstance(status, int) and status < 500) or isinstance(exc, ApiError):
            summary = exc.message if isinstance(exc, ApiError) else str(exc).splitlines()[0]
            original = record.getMessage()
            record.msg = "%s -> %s: %s"
            record.args = (original, status or 400, scrub(summary)[:300])
            record.exc_info = None
            record.exc_text = None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def install_log_filter() -> None:
    """Attach `OneLineErrors` to BentoML's loggers (idempotent)."""
    for name in ("bentoml", "bentoml._internal.server.http_app", "bentoml.impl", "_bentoml_impl"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, OneLineErrors) for f in logger.filters):
            logger.addFilter(OneLineErrors())
