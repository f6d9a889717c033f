# cython: boundscheck=True, wraparound=True, cdivision=False
"""The translated path of every translator: the client's dialect → IR → the provider's wire, and back.

A translator whose wire is not the request's dialect (``ctx.dialect is not translator.wire``, see
``gateway.dialects.base``) hands the request to these functions, which need only its four IR codecs:

    translator.ir_request(req, upstream_model) -> bytes        IR request → its wire's body
    translator.ir_response(body) -> ir.Response                its answer → IR (raises BadGateway)
    translator.ir_stream() -> IRStream                         its SSE → IR events (sans-I/O)
    translator.ir_error(status, body) -> ir.ProviderError|None its error answer → IR

and the client's ``ClientDialect`` for the other half. Usage reaches the limits, budgets and call
records in OpenAI's terms (``TranslatedUsage``) whatever the two ends speak.
"""

from __future__ import annotations

import time
from typing import Any, Protocol

import msgspec

from gateway import errors, ir
from gateway.dialects.base import ClientDialect, StreamEncoder
from gateway.dialects.openai_chat import OPENAI_CHAT

__all__ = [
    "BridgeRelay",
    "CachedTokens",
    "IRStream",
    "TranslatedUsage",
    "answer_as_stream",
    "answer_body",
    "body_as_stream",
    "check_endpoint",
    "client_dialect",
    "error_answer",
    "gateway_error",
    "openai_usage",
    "request_body",
    "response_events",
    "take_body",
]


class IRStream(Protocol):
    """A provider's stream as IR events: ``feed(chunk)`` per upstream body piece, ``close()`` at its end."""

    def feed(self, chunk: bytes) -> list[ir.StreamEvent]: ...

    def close(self) -> list[ir.StreamEvent]: ...


class CachedTokens(msgspec.Struct, frozen=True):
    cached_tokens: int = 0


class TranslatedUsage(msgspec.Struct, frozen=True):
    """A translated answer's usage as the limits, budgets, pricing and call records read it."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    #: cache reads (a part of ``prompt_tokens``)
    prompt_tokens_details: CachedTokens = CachedTokens()
    #: cache writes (a part of ``prompt_tokens``)
    cache_write_tokens: int = 0


def openai_usage(u: ir.Usage) -> TranslatedUsage:
    """IR usage in OpenAI's terms: each prompt token counted once, cache reads apart."""
    return TranslatedUsage(u.prompt_tokens, u.output_tokens, u.total_tokens,
                           CachedTokens(u.cache_read_tokens), u.cache_write_tokens)


def client_dialect(ctx: Any) -> ClientDialect:
    """The request's dialect (``ctx.dialect``; None is OpenAI chat)."""
    d: ClientDialect | None = ctx.dialect
    return OPENAI_CHAT if d is None else d


def gateway_error(err: ir.ProviderError) -> errors.GatewayError:
    """An IR error as the GatewayError the engine ends a stream with (its body is the OpenAI error; a
    dialect renders its own from ``status``, ``type``, ``message`` and ``provider_type``)."""
    out = errors.GatewayError(err.message, code=err.code)
    out.status = err.status
    out.type = err.type
    out.body = OPENAI_CHAT.provider_error_body(err, "")
    out.provider_type = err.provider_type  # type: ignore[attr-defined]
    return out


def response_events(resp: ir.Response) -> list[ir.StreamEvent]:
    """The IR stream events of a whole answer (an upstream that answered a stream request whole)."""
    out: list[ir.StreamEvent] = [ir.MessageStart(resp.id, resp.model, resp.usage)]
    for i, part in enumerate(resp.content):
        if isinstance(part, ir.TextPart):
            out += [ir.BlockStart(i, "text"), ir.BlockDelta(i, "text", part.text)]
        elif isinstance(part, ir.ToolCallPart):
            out += [ir.BlockStart(i, "tool_call", part.id, part.name),
                    ir.BlockDelta(i, "arguments", part.arguments)]
        elif isinstance(part, ir.ThinkingPart):
            out.append(ir.BlockStart(i, "thinking"))
            if part.text:
                out.append(ir.BlockDelta(i, "thinking", part.text))
            if part.signature:
                out.append(ir.BlockDelta(i, "signature", part.signature))
        elif isinstance(part, ir.RedactedThinkingPart):
            out.append(ir.BlockStart(i, "redacted_thinking", data=part.data))
        else:
            continue
        out.append(ir.BlockStop(i))
    out.append(ir.UsageUpdate(resp.usage))
    out.append(ir.MessageStop(resp.stop_reason or ir.StopReason.END_TURN, resp.stop_sequence))
    return out


# ---- the translator interface's methods, translated ----------------------------------------------


def request_body(translator: Any, ctx: Any, upstream_model: str) -> bytes:
    """The upstream request: the client's body decoded by its dialect, encoded by the translator."""
    body: bytes = translator.ir_request(client_dialect(ctx).decode_request(ctx.body), upstream_model)
    return body


def check_endpoint(ctx: Any, served_by: str, available: str) -> None:
    """An OpenAI client's request to an endpoint the provider has no counterpart of (``/v1/completions``
    on a translated upstream): 400 ``unsupported_endpoint``. Every dialect's generation request and
    OpenAI chat pass."""
    if ctx.endpoint != "chat" and ctx.dialect is None:
        raise errors.BadRequest(
            f"The model `{ctx.fields.model}` is served by {served_by}, which has no {ctx.endpoint} endpoint; "
            f"{available}", param="model", code="unsupported_endpoint",
        )


def take_body(translator: Any, ctx: Any, body: bytes) -> bytes:
    """A 2xx answer in the client's dialect; its usage goes to ``ctx.usage``."""
    return answer_body(ctx, translator.ir_response(body))


def body_as_stream(translator: Any, ctx: Any, body: bytes) -> bytes:
    """A stream request answered whole: the client's stream of that answer."""
    return answer_as_stream(ctx, translator.ir_response(body))


def answer_body(ctx: Any, answer: ir.Response) -> bytes:
    """``take_body`` of an answer already in IR (a wire whose answers lack the id or the model, which
    its translator fills in from the request); its usage goes to ``ctx.usage``."""
    ctx.usage = openai_usage(answer.usage)
    return client_dialect(ctx).encode_response(answer, int(time.time()))


def answer_as_stream(ctx: Any, answer: ir.Response) -> bytes:
    """``body_as_stream`` of an answer already in IR."""
    ctx.usage = openai_usage(answer.usage)
    encoder = client_dialect(ctx).stream_encoder(ctx, int(time.time()))
    return b"".join(encoder.encode(e) for e in response_events(answer))


def error_answer(translator: Any, ctx: Any, status: int, body: bytes) -> tuple[int, bytes] | None:
    """An upstream error answer in the client's dialect: (status, body); None when the body is not an
    error of the translator's wire (the engine answers 502, or 429 for a 429)."""
    err: ir.ProviderError | None = translator.ir_error(status, body)
    if err is None:
        return None
    return err.status, client_dialect(ctx).provider_error_body(err, ctx.request_id)


class BridgeRelay:
    """The provider's SSE bytes in, the client dialect's SSE bytes out, as they come; the usage kept on
    the request (the settle phase reads it even when the stream fails). An error event, a grammar
    violation or a cut stream sets ``error``: the engine ends the client's stream with it
    (``ClientDialect.stream_error``).

    A stream that fails before any content (a throttling exception right after its start) gives nothing
    at all, not even the message's start: the engine then counts the attempt as refused before its
    first byte, and a routed model fails over."""

    __slots__ = ("_content", "_ctx", "_encoder", "_machine", "error")

    def __init__(self, ctx: Any, machine: IRStream, encoder: StreamEncoder | None = None) -> None:
        self._ctx = ctx
        self._machine = machine
        self._encoder = encoder or client_dialect(ctx).stream_encoder(ctx, int(time.time()))
        self.error: errors.GatewayError | None = None
        #: bytes of more than the message's start were produced
        self._content = False

    def feed(self, chunk: bytes) -> bytes:
        return self._emit(self._machine.feed(chunk))

    def end(self) -> bytes:
        return self._emit(self._machine.close())

    def _emit(self, events: list[ir.StreamEvent]) -> bytes:
        out: list[bytes] = []
        encode = self._encoder.encode
        for ev in events:
            if type(ev) is ir.BlockDelta:  # PERF: the most common event, checked first
                data = encode(ev)
                if data:
                    out.append(data)
                    self._content = True
                continue
            kind = type(ev)
            if kind is ir.UsageUpdate or kind is ir.MessageStart:
                self._ctx.usage = openai_usage(ev.usage)  # type: ignore[union-attr]
            elif isinstance(ev, ir.StreamError):
                self.error = gateway_error(ev.error)
                if not self._content:
                    out.clear()  # only the message's start so far: the attempt failed before its content
                    rewind = getattr(self._encoder, "rewind", None)
                    if rewind is not None:  # an encoder that outlives the attempt: its start was not sent
                        rewind()
                break
            data = encode(ev)
            if data:
                out.append(data)
                self._content = self._content or not isinstance(ev, ir.MessageStart)
        if len(out) == 1:
            return out[0]
        return b"".join(out)
