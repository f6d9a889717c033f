"""Every error the gateway answers with, carrying its HTTP meaning.

Each class knows its HTTP status, the OpenAI error ``type`` and a stable ``code``; ``to_body()`` renders
the OpenAI error shape ``{"error": {"message", "type", "param", "code"}}``. Raise these anywhere in the
request path; the engine turns them into responses, the front ends into connection-level answers.
"""

from __future__ import annotations

import os
import uuid

import msgspec

__all__ = [
    "BadGateway",
    "BadRequest",
    "ClientClosed",
    "GatewayError",
    "GatewayTimeout",
    "HeadersTooLarge",
    "MethodNotAllowed",
    "NotFound",
    "NotImplementedHTTP",
    "PayloadTooLarge",
    "PermissionDenied",
    "RateLimited",
    "RequestTimeout",
    "ServiceUnavailable",
    "Unauthorized",
    "UnsupportedMediaType",
    "VersionNotSupported",
    "error_body",
]


class _ErrorDetail(msgspec.Struct, omit_defaults=False):
    message: str
    type: str
    param: str | None
    code: str | None


class _ErrorEnvelope(msgspec.Struct):
    error: _ErrorDetail


_encode = msgspec.json.Encoder().encode


# PERF: the same refusals repeat (a client with a wrong key, an unknown model, a rate limit): their bodies
# are encoded once (~1 us each here) and then looked up; cleared when it holds many distinct messages
_BODIES: dict[tuple[str, str, str | None, str | None], bytes] = {}
_MAX_BODIES = 4096


def error_body(message: str, type_: str, code: str | None, param: str | None = None) -> bytes:
    """The OpenAI-shaped error body as JSON bytes."""
    key = (message, type_, code, param)
    body = _BODIES.get(key)
    if body is None:
        body = _encode(_ErrorEnvelope(_ErrorDetail(message, type_, param, code)))
        if len(_BODIES) >= _MAX_BODIES:
            _BODIES.clear()
        _BODIES[key] = body
    return body


class _RefusedIds:
    """Ids of requests refused before the engine (``refused_id``): a random prefix per process (made in
    the process that uses it: workers forked from one parent must not share it) and a count."""

    __slots__ = ("n", "pid", "prefix")

    def __init__(self) -> None:
        self.pid, self.n, self.prefix = 0, 0, ""

    def next(self) -> str:
        pid = os.getpid()
        if pid != self.pid:
            self.pid, self.n, self.prefix = pid, 0, f"refused-{uuid.uuid4().hex[:12]}-"
        self.n += 1
        return f"{self.prefix}{self.n}"


#: the id a front end's refusal carries and its log line names
refused_id = _RefusedIds().next


def refusal(status: int, message: str, type_: str, code: str, path: str = "",
            request_id: str | None = None) -> tuple[list[tuple[str, str]], bytes]:
    """(headers, body) of a front end's refusal of a request it could not hand to the engine (a body too
    large, a head it could not read): in the dialect of the endpoint its ``path`` names (Anthropic's on
    ``/v1/messages``, with ``request-id``), else OpenAI's; ``x-request-id`` when ``request_id`` is given."""
    headers = [("content-type", "application/json")]
    if path.startswith("/v1/messages"):
        from gateway.dialects.anthropic_messages import error_body as messages_error_body

        rid = request_id or ""
        body = messages_error_body(status, message, rid)
        return [*headers, ("x-request-id", rid), ("request-id", rid)], body
    if request_id is not None:
        headers.append(("x-request-id", request_id))
    return headers, error_body(message, type_, code)


class GatewayError(Exception):
    """Base class: an error with an HTTP status and an OpenAI error type/code."""

    status: int = 500
    type: str = "server_error"
    code: str | None = "internal_error"
    #: the connection must be closed after answering (framing can no longer be trusted)
    close: bool = False

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: list[tuple[str, str]] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        self.headers = headers or []
        #: the JSON body, rendered once: an answer may be sent many times (a refusal returned by a phase)
        # PERF: the engine reads this attribute; a call to to_body() from the compiled engine costs more
        self.body = error_body(message, self.type, self.code, param)

    def to_body(self) -> bytes:
        return self.body


class BadRequest(GatewayError):
    status = 400
    type = "invalid_request_error"
    code = "invalid_request"


class Unauthorized(GatewayError):
    status = 401
    type = "authentication_error"
    code = "invalid_api_key"


class PermissionDenied(GatewayError):
    status = 403
    type = "permission_error"
    code = "permission_denied"


class NotFound(GatewayError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"


class MethodNotAllowed(GatewayError):
    status = 405
    type = "invalid_request_error"
    code = "method_not_allowed"


class RequestTimeout(GatewayError):
    status = 408
    type = "invalid_request_error"
    code = "request_timeout"
    close = True


class PayloadTooLarge(GatewayError):
    status = 413
    type = "invalid_request_error"
    code = "payload_too_large"
    close = True


class UnsupportedMediaType(GatewayError):
    status = 415
    type = "invalid_request_error"
    code = "unsupported_media_type"


class RateLimited(GatewayError):
    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"


class HeadersTooLarge(GatewayError):
    status = 431
    type = "invalid_request_error"
    code = "headers_too_large"
    close = True


class NotImplementedHTTP(GatewayError):
    status = 501
    type = "invalid_request_error"
    code = "not_implemented"
    close = True


class ClientClosed(GatewayError):
    """The client left before its response was complete. Never sent (nobody is there to read it): what a
    call record says, with nginx's status for it."""

    status = 499
    type = "invalid_request_error"
    code = "client_closed"


class BadGateway(GatewayError):
    status = 502
    type = "upstream_error"
    code = "bad_gateway"


class ServiceUnavailable(GatewayError):
    status = 503
    type = "server_error"
    code = "service_unavailable"


class GatewayTimeout(GatewayError):
    status = 504
    type = "upstream_error"
    code = "upstream_timeout"


class VersionNotSupported(GatewayError):
    status = 505
    type = "invalid_request_error"
    code = "http_version_not_supported"
    close = True
