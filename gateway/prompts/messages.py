"""A prompt called from the Anthropic Messages dialect: the prompt's chat call, answered as Messages.

A prompt call is a chat completions call underneath whatever the front (``gateway.prompts.endpoint``):
the version's parameters, the output-schema check and its one retry stay the chat call's, so a prompt
behaves the same from every front. A client of ``POST /v1/messages`` naming ``"model": "prompt:NAME"``
gets that call's answer in its own dialect through ``MessagesAnswer``, a responder between the engine
and the client:

    the engine sends                          the client gets
    ----------------------------------------+----------------------------------------------------------
    a chat.completion (send)                 | a ``message`` (``anthropic_messages.encode_response``)
    an error, status >= 400 (send)           | Anthropic's error shape, the same status
    chunk SSE (start_stream, write, end)     | Messages SSE, event by event (``ChunkStream`` → IR →
                                             | ``EventEncoder``)
    chunk SSE in one body (send)             | the same, whole

Response headers get the dialect's names (``request-id``, ``anthropic-ratelimit-*``). An answer that
is not a chat completion (an upstream's malformed pass-through body) is a 502 ``api_error``.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Final

import msgspec

from gateway.dialects.anthropic_messages import ANTHROPIC_MESSAGES, EventEncoder, encode_response, error_body
from gateway.prompts.responders import InFront
from gateway.providers.openai_translate import ChunkStream, response_from_body

if TYPE_CHECKING:
    from gateway.app import Headers, Responder

__all__ = ["MessagesAnswer"]

_JSON: Final = "application/json"
_SSE: Final = "text/event-stream"
#: headers of the chat answer replaced by the converted answer's own
_DROP: Final = frozenset(("content-type", "content-length"))
_decode: Final = msgspec.json.Decoder()


class _ErrorDetail(msgspec.Struct):
    message: str = ""
    type: str | None = None


class _Error(msgspec.Struct):
    error: _ErrorDetail


_error_decoder: Final = msgspec.json.Decoder(_Error)


class MessagesAnswer(InFront):
    """The engine's chat answer to a prompt call, sent to a Messages client as Messages."""

    def __init__(self, client: Responder, request_id: str) -> None:
        super().__init__(client)
        self._request_id = request_id
        self._stream = ChunkStream()
        self._encoder = EventEncoder(request_id)

    def send(self, status: int, headers: Headers, body: bytes) -> None:
        ctype = _JSON
        if status >= 400:
            body = self._error(status, body)
        elif any(k == "content-type" and _SSE in v for k, v in headers):
            ctype = _SSE
            body = self._events(body, final=True)
        else:
            try:
                body = encode_response(response_from_body(body))
            except (msgspec.MsgspecError, RecursionError):
                status = 502
                body = error_body(status, "The upstream provider returned a body that is not a chat "
                                          "completion", self._request_id)
        self._client.send(status, self._headers(headers, ctype), body)

    def start_stream(self, status: int, headers: Headers) -> None:
        self._client.start_stream(status, self._headers(headers, _SSE))

    async def write(self, chunk: bytes) -> None:
        out = self._events(chunk, final=False)
        if out:
            await self._client.write(out)

    def end_stream(self) -> None:
        self._client.end_stream()

    def _headers(self, headers: Headers, ctype: str) -> Headers:
        out = [("content-type", ctype), *[(k, v) for k, v in headers if k not in _DROP]]
        return ANTHROPIC_MESSAGES.response_headers(out, time.time())

    def _events(self, chunk: bytes, final: bool) -> bytes:
        events = self._stream.feed(chunk)
        if final:
            events += self._stream.close()
        return b"".join(self._encoder.encode(e) for e in events)

    def _error(self, status: int, body: bytes) -> bytes:
        """An OpenAI-shaped error (the engine's or the upstream's) in Anthropic's shape."""
        try:
            detail = _error_decoder.decode(body).error
        except (msgspec.MsgspecError, RecursionError):
            detail = _ErrorDetail(body[:300].decode("utf-8", "replace"))
        message: Any = detail.message or f"The request failed ({status})"
        return error_body(status, str(message), self._request_id, detail.type)
