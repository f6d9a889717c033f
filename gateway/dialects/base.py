"""The client-dialect seam: what the engine and the translators need of the API shape a client speaks.

Theory of operation
-------------------
A *dialect* is the API a client speaks (OpenAI Chat Completions, Anthropic Messages, OpenAI Responses);
a provider's *wire* is the API its upstream speaks. The request's context carries its dialect in
``ctx.dialect``: ``None`` for OpenAI chat (the default: the pass-through hot path pays one pointer
comparison and nothing else), a ``ClientDialect`` otherwise (set by the engine from the request path,
``DIALECT_PATHS``). Every translator knows its own wire dialect (``Translator.wire``):

    ctx.dialect is translator.wire   pass-through: the client's bytes go up unchanged (model id aside),
                                     the answer comes back unchanged, usage is read on the way
    otherwise                        client body ──dialect.decode_request──▶ ir.Request
                                     ──translator.ir_request──▶ upstream body; the answer
                                     ──translator.ir_response / ir_stream / ir_error──▶ IR
                                     ──dialect.encode_response / stream_encoder / error_body──▶ client

(``gateway.providers.bridge`` is that second path, shared by every translator.)

A dialect is a stateless singleton; everything per request is in the ``StreamEncoder`` it makes. It
answers in its own shape for everything the engine says on its behalf: errors (status, body, the request
id header), the mid-stream error event and the stream's regular end, the gateway's own rate-limit
headers. Adding a dialect: subclass ``ClientDialect``, give it an ``endpoint`` name (the key scope and
the model capability it needs) and list its paths in ``gateway.dialects.DIALECT_PATHS``.
"""

from __future__ import annotations

from typing import Any, ClassVar, Protocol

from gateway import ir
from gateway.errors import GatewayError

__all__ = ["ClientDialect", "StreamEncoder"]


class StreamEncoder(Protocol):
    """One request's IR stream events in, the dialect's SSE bytes out (sans-I/O)."""

    @property
    def done(self) -> bool:
        """The stream has ended (its last event, or an error event, was encoded)."""
        ...

    def encode(self, event: ir.StreamEvent) -> bytes:
        """The bytes for one IR event (b"" when nothing is due). ``MessageStop`` ends the stream with the
        dialect's own end; ``StreamError`` with its error event."""
        ...


class ClientDialect:
    """One API shape clients speak. Subclasses override every method."""

    #: short name, in logs and call records
    name: ClassVar[str] = ""
    #: the engine's endpoint name of its generation requests: the key scope it needs
    endpoint: ClassVar[str] = ""
    #: the model capability (a model's ``endpoints`` entry) that lets a model serve it
    serves: ClassVar[str] = "chat"
    #: the response header carrying the request id
    request_id_header: ClassVar[str] = "x-request-id"

    def decode_request(self, body: bytes) -> ir.Request:
        """A request body → IR. Raises ``errors.BadRequest`` naming the offending field."""
        raise NotImplementedError

    def encode_response(self, resp: ir.Response, created: int) -> bytes:
        """A whole answer as the dialect's response body (may raise a GatewayError)."""
        raise NotImplementedError

    def stream_encoder(self, ctx: Any, created: int) -> StreamEncoder:
        """The per-request stream encoder (``ctx.include_usage`` and the like are read here)."""
        raise NotImplementedError

    def error_body(self, err: GatewayError, request_id: str) -> bytes:
        """The error answer's body in the dialect's shape (the status is ``err.status``)."""
        raise NotImplementedError

    def error_status(self, err: GatewayError) -> int:
        """The status the dialect answers ``err`` with (its own vocabulary may differ)."""
        return err.status

    def stream_error(self, err: GatewayError, request_id: str) -> bytes:
        """A stream that cannot go on: the dialect's error event and whatever ends its stream."""
        raise NotImplementedError

    def provider_error_body(self, err: ir.ProviderError, request_id: str) -> bytes:
        """An upstream's error (already in IR) as the dialect's error body."""
        raise NotImplementedError

    def response_headers(self, headers: list[tuple[str, str]], now: float) -> list[tuple[str, str]]:
        """The answer's headers as the dialect's clients expect them (the gateway's own use OpenAI's
        names: ``x-ratelimit-*``, ``x-request-id``); changed in place and returned."""
        return headers
