"""The cache's codec for the OpenAI Responses dialect (``POST /v1/responses``).

A Responses request carries state on both sides of the answer (``gateway.responses.service``): the
conversation of its ``previous_response_id``, fetched before the phases run, and the stored response
object written before its last part is sent. So this codec reads neither the client's bytes nor the
client-bound ones, but the request's own dialect object (``ctx.dialect``, an ``OpenAIResponses`` made
for it by the front):

    key      the body's canonical form (``keys.responses_form``): ``previous_response_id`` replaced by
             the conversation it resolved to (``ctx.dialect.previous``), so a request is keyed on what
             the model is asked, not on which stored response holds it
    store    the answer the dialect encoded: ``answer`` (a whole one) or its stream encoder's parts once
             it saw the answer's end, not failed (the phase also wants status 200 and no error: the
             front's own store may have failed)
    replay   through that same dialect object: the response object (``encode_response``), or every
             event of the stream but the last (its ``stream_encoder``). The front then does what it
             does for any answer: with ``store`` (the default), the hit is a new stored response with
             this request's new id (``GET /v1/responses/{id}`` finds it, ``previous_response_id`` can
             continue it), then the response object or ``response.completed`` goes out

So each hit is a new response (its id, ``created_at`` and the request's own echoed parameters: metadata,
instructions, tools...); only the model's output and usage come from the entry. Its rendered bytes are
never reused (``renders`` False: the memory tier keeps no alias for them).
"""

from __future__ import annotations

from typing import Any, ClassVar, Final

from gateway import ir
from gateway.cache.codec import Assembler, Codec, Stored
from gateway.cache.keys import responses_form
from gateway.providers.bridge import response_events

__all__ = ["OpenAIResponsesCodec"]

#: the stop reasons an entry may have (a refusal or a paused turn is not stored)
_STORABLE_STOPS: Final = frozenset({
    ir.StopReason.END_TURN, ir.StopReason.MAX_TOKENS, ir.StopReason.STOP_SEQUENCE, ir.StopReason.TOOL_USE,
})
_PARTS: Final = (ir.TextPart, ir.ThinkingPart, ir.RedactedThinkingPart, ir.ToolCallPart)


def _storable(resp: ir.Response) -> bool:
    """The answer replays faithfully from the IR: no refusal, only the parts the encoder writes."""
    return resp.stop_reason in _STORABLE_STOPS and all(isinstance(p, _PARTS) for p in resp.content)


class OpenAIResponsesCodec(Codec):
    """The ``openai_responses`` dialect's codec (see the module docstring)."""

    name: ClassVar[str] = "openai_responses"
    watches: ClassVar[bool] = False
    renders: ClassVar[bool] = False

    def form(self, ctx: Any) -> dict[str, Any]:
        d = ctx.dialect
        return responses_form(ctx.body, getattr(d, "previous", None))

    def answer(self, ctx: Any, body: bytes | None, assembler: Assembler | None) -> Stored | None:
        d = ctx.dialect
        resp: ir.Response | None = getattr(d, "answer", None)
        if resp is None:
            encoder = getattr(d, "encoder", None)
            if encoder is None or not encoder.finished or encoder.failed:
                return None
            resp = encoder.response()
        if not _storable(resp):
            return None
        return resp, int(getattr(d, "created_at", 0))

    def replay(self, ctx: Any, resp: ir.Response, created: int) -> bytes:
        d = ctx.dialect
        if not ctx.stream:
            body: bytes = d.encode_response(resp, created)
            return body
        encoder = d.stream_encoder(ctx, created)
        return b"".join(encoder.encode(e) for e in response_events(resp))
