"""Cohere API v2 wire schemas: ``POST /v2/chat`` (request, answer, stream events), ``POST /v2/embed``, errors.

Shapes follow the ``cohere`` SDK's v2 types (``V2ChatRequest``, ``V2ChatResponse``,
``V2ChatStreamResponse``, ``EmbedByTypeResponse``); the tests validate what the mock sends and what the
translator encodes against those pydantic types. Stream events are a msgspec tagged union on ``type``
(``message-start``, ``content-delta``, ``tool-call-start``, ...); events the translator does not act on
(``citation-start``, ``citation-end``, ``debug``) decode to nothing and are skipped.
"""

from __future__ import annotations

from typing import Any, Final

import msgspec

__all__ = [
    "ChatResponse",
    "ContentDelta",
    "ContentEnd",
    "ContentStart",
    "EmbedResponse",
    "ErrorBody",
    "Function",
    "ImageURL",
    "JSONFormat",
    "Message",
    "MessageEnd",
    "MessageStart",
    "Request",
    "StreamEvent",
    "Thinking",
    "Tool",
    "ToolCall",
    "ToolCallDelta",
    "ToolCallEnd",
    "ToolCallStart",
    "ToolDef",
    "ToolPlanDelta",
    "Usage",
    "decode_error",
    "decode_event",
    "decode_response",
    "encode",
]


class _Wire(msgspec.Struct, omit_defaults=True, frozen=True):
    """A Cohere object: fields left at their default are not sent."""


# ---- request -------------------------------------------------------------------------------------


class ImageURL(_Wire, frozen=True):
    url: str
    detail: str | None = None


class TextContent(_Wire, frozen=True, tag="text", tag_field="type"):
    text: str


class ImageContent(_Wire, frozen=True, tag="image_url", tag_field="type"):
    image_url: ImageURL


class DocumentContent(_Wire, frozen=True, tag="document", tag_field="type"):
    document: dict[str, Any]


class Function(_Wire, frozen=True):
    name: str
    arguments: str = ""


class ToolCall(_Wire, frozen=True):
    id: str
    #: required fields have no default: ``omit_defaults`` would drop them
    type: str
    function: Function


class Message(msgspec.Struct, omit_defaults=True):
    role: str
    content: str | list[TextContent | ImageContent | DocumentContent] | None = None
    tool_plan: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None


class ToolDef(_Wire, frozen=True):
    name: str
    parameters: dict[str, Any]
    description: str | None = None


class Tool(_Wire, frozen=True):
    type: str
    function: ToolDef


class JSONFormat(_Wire, frozen=True):
    type: str
    json_schema: dict[str, Any] | None = None


class Thinking(_Wire, frozen=True):
    type: str
    token_budget: int | None = None


class Request(_Wire, frozen=True):
    model: str
    messages: list[Message]
    stream: bool | None = None
    tools: list[Tool] | None = None
    strict_tools: bool | None = None
    tool_choice: str | None = None
    response_format: JSONFormat | None = None
    max_tokens: int | None = None
    stop_sequences: list[str] | None = None
    temperature: float | None = None
    seed: int | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    k: int | None = None
    p: float | None = None
    thinking: Thinking | None = None


# ---- answers -------------------------------------------------------------------------------------


class _Tokens(msgspec.Struct, frozen=True):
    input_tokens: float = 0
    output_tokens: float = 0


class Usage(msgspec.Struct, frozen=True):
    """``tokens`` are the tokens the model saw; ``billed_units`` what is billed (no system prompt, ...)."""

    billed_units: _Tokens | None = None
    tokens: _Tokens | None = None
    cached_tokens: float | None = None


class _Content(msgspec.Struct, frozen=True):
    type: str
    text: str | None = None
    thinking: str | None = None


class _OutFunction(msgspec.Struct, frozen=True):
    name: str | None = None
    arguments: str | None = None


class _OutToolCall(msgspec.Struct, frozen=True):
    id: str | None = None
    function: _OutFunction | None = None


class _OutMessage(msgspec.Struct, frozen=True):
    role: str = "assistant"
    content: list[_Content] | None = None
    tool_plan: str | None = None
    tool_calls: list[_OutToolCall] | None = None
    citations: list[dict[str, Any]] | None = None


class ChatResponse(msgspec.Struct, frozen=True):
    id: str
    finish_reason: str
    message: _OutMessage
    usage: Usage | None = None


class ErrorBody(msgspec.Struct, frozen=True):
    message: str | None = None
    id: str | None = None


# ---- stream events -------------------------------------------------------------------------------


class _StartDelta(msgspec.Struct, frozen=True):
    message: dict[str, Any] | None = None


class MessageStart(msgspec.Struct, frozen=True, tag="message-start", tag_field="type"):
    id: str | None = None


class _ContentPiece(msgspec.Struct, frozen=True):
    type: str | None = None
    text: str | None = None
    thinking: str | None = None


class _ContentMessage(msgspec.Struct, frozen=True):
    content: _ContentPiece | None = None


class _ContentDeltaBody(msgspec.Struct, frozen=True):
    message: _ContentMessage | None = None


class ContentStart(msgspec.Struct, frozen=True, tag="content-start", tag_field="type"):
    index: int
    delta: _ContentDeltaBody | None = None


class ContentDelta(msgspec.Struct, frozen=True, tag="content-delta", tag_field="type"):
    index: int
    delta: _ContentDeltaBody | None = None


class ContentEnd(msgspec.Struct, frozen=True, tag="content-end", tag_field="type"):
    index: int


class _PlanMessage(msgspec.Struct, frozen=True):
    tool_plan: str = ""


class _PlanDelta(msgspec.Struct, frozen=True):
    message: _PlanMessage | None = None


class ToolPlanDelta(msgspec.Struct, frozen=True, tag="tool-plan-delta", tag_field="type"):
    delta: _PlanDelta | None = None


class _CallMessage(msgspec.Struct, frozen=True):
    tool_calls: _OutToolCall | None = None


class _CallDelta(msgspec.Struct, frozen=True):
    message: _CallMessage | None = None


class ToolCallStart(msgspec.Struct, frozen=True, tag="tool-call-start", tag_field="type"):
    index: int
    delta: _CallDelta | None = None


class ToolCallDelta(msgspec.Struct, frozen=True, tag="tool-call-delta", tag_field="type"):
    index: int
    delta: _CallDelta | None = None


class ToolCallEnd(msgspec.Struct, frozen=True, tag="tool-call-end", tag_field="type"):
    index: int


class _EndDelta(msgspec.Struct, frozen=True):
    finish_reason: str | None = None
    usage: Usage | None = None
    error: str | None = None


class MessageEnd(msgspec.Struct, frozen=True, tag="message-end", tag_field="type"):
    delta: _EndDelta | None = None


class _Skipped(msgspec.Struct, frozen=True, tag="citation-start", tag_field="type"):
    pass


class _SkippedEnd(msgspec.Struct, frozen=True, tag="citation-end", tag_field="type"):
    pass


class _Debug(msgspec.Struct, frozen=True, tag="debug", tag_field="type"):
    pass


StreamEvent = (
    MessageStart | ContentStart | ContentDelta | ContentEnd | ToolPlanDelta | ToolCallStart | ToolCallDelta
    | ToolCallEnd | MessageEnd | _Skipped | _SkippedEnd | _Debug
)
SKIPPED: Final = (_Skipped, _SkippedEnd, _Debug)


class _EmbedFloats(msgspec.Struct, frozen=True):
    vectors: list[list[float]] = msgspec.field(name="float")


class _Meta(msgspec.Struct, frozen=True):
    billed_units: _Tokens | None = None


class EmbedResponse(msgspec.Struct, frozen=True):
    embeddings: _EmbedFloats
    meta: _Meta | None = None


_response_decoder: Final = msgspec.json.Decoder(ChatResponse)
_event_decoder: Final = msgspec.json.Decoder(StreamEvent)
_error_decoder: Final = msgspec.json.Decoder(ErrorBody)
embed_decoder: Final = msgspec.json.Decoder(EmbedResponse)
encode: Final = msgspec.json.Encoder().encode


def decode_response(body: bytes) -> ChatResponse:
    return _response_decoder.decode(body)


def decode_event(data: bytes) -> StreamEvent:
    return _event_decoder.decode(data)


def decode_error(body: bytes) -> ErrorBody | None:
    try:
        return _error_decoder.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
        return None
