"""Anthropic Messages API wire schemas (``POST /v1/messages``): request, response, errors, stream events.

Shapes follow the official ``anthropic`` SDK's types (``anthropic.types``: ``MessageCreateParams``,
``Message``, ``RawMessageStreamEvent``, ``ErrorResponse``); the unit tests validate what we encode
against those types so the two cannot drift.

Forward compatibility: Anthropic adds block and delta types over time (server tools, citations,
containers). Response content and ``content_block_start`` blocks are decoded in two steps (raw first,
then the known union), so an unknown block becomes an opaque dict instead of failing the whole
answer; an unknown stream event type is skipped by the stream translator.
"""

from __future__ import annotations

from typing import Any, Final, Literal

import msgspec

__all__ = [
    "ANTHROPIC_VERSION",
    "Base64Source",
    "CitationsDelta",
    "ContentBlockDelta",
    "ContentBlockStart",
    "ContentBlockStop",
    "DocumentBlock",
    "ErrorDetail",
    "ErrorEvent",
    "ErrorResponse",
    "ImageBlock",
    "InputJSONDelta",
    "JSONOutputFormat",
    "Message",
    "MessageDelta",
    "MessageDeltaBody",
    "MessageDeltaUsage",
    "MessageParam",
    "MessageStart",
    "MessageStop",
    "Metadata",
    "OutputConfig",
    "Ping",
    "PlainTextSource",
    "RedactedThinkingBlock",
    "Request",
    "SignatureDelta",
    "StreamEvent",
    "TextBlock",
    "TextDelta",
    "ThinkingBlock",
    "ThinkingConfig",
    "ThinkingDelta",
    "ToolChoice",
    "ToolParam",
    "ToolResultBlock",
    "ToolUseBlock",
    "URLSource",
    "Usage",
    "decode_block",
    "decode_error",
    "decode_event",
    "decode_message",
    "encode",
]

#: the ``anthropic-version`` header value the schemas here describe
ANTHROPIC_VERSION: Final = "2023-06-01"


# ---- content blocks (request and response) -------------------------------------------------------


class Base64Source(msgspec.Struct, frozen=True, tag="base64"):
    media_type: str
    data: str


class URLSource(msgspec.Struct, frozen=True, tag="url"):
    url: str


class PlainTextSource(msgspec.Struct, frozen=True, tag="text"):
    data: str
    media_type: str = "text/plain"


class FileSource(msgspec.Struct, frozen=True, tag="file"):
    file_id: str


class TextBlock(msgspec.Struct, frozen=True, tag="text", omit_defaults=True):
    text: str
    citations: list[dict[str, Any]] | None = None
    cache_control: dict[str, Any] | None = None


class ImageBlock(msgspec.Struct, frozen=True, tag="image", omit_defaults=True):
    source: Base64Source | URLSource | FileSource
    cache_control: dict[str, Any] | None = None


class DocumentBlock(msgspec.Struct, frozen=True, tag="document", omit_defaults=True):
    source: Base64Source | URLSource | PlainTextSource | FileSource
    title: str | None = None
    context: str | None = None
    cache_control: dict[str, Any] | None = None


class ToolUseBlock(msgspec.Struct, frozen=True, tag="tool_use"):
    id: str
    name: str
    input: dict[str, Any]


class ToolResultBlock(msgspec.Struct, frozen=True, tag="tool_result", omit_defaults=True):
    tool_use_id: str
    content: list[TextBlock | ImageBlock | DocumentBlock] = []
    is_error: bool = False
    cache_control: dict[str, Any] | None = None


class ThinkingBlock(msgspec.Struct, frozen=True, tag="thinking"):
    thinking: str
    #: absent from a streamed ``content_block_start`` (it arrives as a ``signature_delta``)
    signature: str = ""


class RedactedThinkingBlock(msgspec.Struct, frozen=True, tag="redacted_thinking"):
    data: str


ContentBlock = (
    TextBlock
    | ImageBlock
    | DocumentBlock
    | ToolUseBlock
    | ToolResultBlock
    | ThinkingBlock
    | RedactedThinkingBlock
)


class MessageParam(msgspec.Struct, frozen=True):
    role: Literal["user", "assistant"]
    #: blocks, or raw dicts for blocks the IR carried opaquely
    content: list[ContentBlock | dict[str, Any]]


# ---- request -------------------------------------------------------------------------------------


class ToolParam(msgspec.Struct, frozen=True, omit_defaults=True):
    name: str
    input_schema: dict[str, Any]
    description: str | None = None
    strict: bool | None = None
    cache_control: dict[str, Any] | None = None


class ToolChoice(msgspec.Struct, frozen=True, omit_defaults=True):
    type: Literal["auto", "any", "tool", "none"]
    name: str | None = None
    disable_parallel_tool_use: bool | None = None


class ThinkingConfig(msgspec.Struct, frozen=True, omit_defaults=True):
    type: Literal["enabled", "disabled", "adaptive"]
    budget_tokens: int | None = None


class JSONOutputFormat(msgspec.Struct, frozen=True, tag="json_schema"):
    schema: dict[str, Any]


class OutputConfig(msgspec.Struct, frozen=True, omit_defaults=True):
    format: JSONOutputFormat | None = None
    effort: str | None = None


class Metadata(msgspec.Struct, frozen=True, omit_defaults=True):
    user_id: str | None = None


class Request(msgspec.Struct, frozen=True, omit_defaults=True):
    model: str
    messages: list[MessageParam]
    max_tokens: int
    system: list[TextBlock] | None = None
    stop_sequences: list[str] | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    metadata: Metadata | None = None
    tools: list[ToolParam] | None = None
    tool_choice: ToolChoice | None = None
    thinking: ThinkingConfig | None = None
    output_config: OutputConfig | None = None
    service_tier: str | None = None
    stream: bool | None = None


# ---- response ------------------------------------------------------------------------------------


class OutputTokensDetails(msgspec.Struct, frozen=True):
    thinking_tokens: int = 0


class Usage(msgspec.Struct, frozen=True):
    """``input_tokens`` EXCLUDES the cache reads and writes counted beside it."""

    input_tokens: int = 0
    output_tokens: int = 0
    cache_creation_input_tokens: int | None = None
    cache_read_input_tokens: int | None = None
    output_tokens_details: OutputTokensDetails | None = None


class Message(msgspec.Struct, frozen=True):
    id: str
    model: str
    #: decoded block by block with ``decode_block`` (unknown block types stay raw)
    content: list[msgspec.Raw]
    #: always present in an answer; a streamed ``message_start`` may omit it
    usage: Usage = Usage()
    type: Literal["message"] = "message"
    role: Literal["assistant"] = "assistant"
    stop_reason: str | None = None
    stop_sequence: str | None = None
    stop_details: dict[str, Any] | None = None


class ErrorDetail(msgspec.Struct, frozen=True):
    type: str
    message: str = ""


class ErrorResponse(msgspec.Struct, frozen=True):
    error: ErrorDetail
    type: Literal["error"] = "error"
    request_id: str | None = None


# ---- stream events (tagged union on ``type``) ----------------------------------------------------


class MessageStart(msgspec.Struct, frozen=True, tag="message_start"):
    message: Message


class ContentBlockStart(msgspec.Struct, frozen=True, tag="content_block_start"):
    index: int
    #: decoded with ``decode_block``
    content_block: msgspec.Raw


class TextDelta(msgspec.Struct, frozen=True, tag="text_delta"):
    text: str


class InputJSONDelta(msgspec.Struct, frozen=True, tag="input_json_delta"):
    partial_json: str


class ThinkingDelta(msgspec.Struct, frozen=True, tag="thinking_delta"):
    thinking: str


class SignatureDelta(msgspec.Struct, frozen=True, tag="signature_delta"):
    signature: str


class CitationsDelta(msgspec.Struct, frozen=True, tag="citations_delta"):
    citation: dict[str, Any]


class ContentBlockDelta(msgspec.Struct, frozen=True, tag="content_block_delta"):
    index: int
    delta: TextDelta | InputJSONDelta | ThinkingDelta | SignatureDelta | CitationsDelta


class ContentBlockStop(msgspec.Struct, frozen=True, tag="content_block_stop"):
    index: int


class MessageDeltaBody(msgspec.Struct, frozen=True):
    stop_reason: str | None = None
    stop_sequence: str | None = None
    stop_details: dict[str, Any] | None = None


class MessageDeltaUsage(msgspec.Struct, frozen=True):
    """Cumulative figures; fields other than ``output_tokens`` appear only when they changed."""

    output_tokens: int = 0
    input_tokens: int | None = None
    cache_creation_input_tokens: int | None = None
    cache_read_input_tokens: int | None = None
    output_tokens_details: OutputTokensDetails | None = None


class MessageDelta(msgspec.Struct, frozen=True, tag="message_delta"):
    delta: MessageDeltaBody
    usage: MessageDeltaUsage | None = None


class MessageStop(msgspec.Struct, frozen=True, tag="message_stop"):
    pass


class Ping(msgspec.Struct, frozen=True, tag="ping"):
    pass


class ErrorEvent(msgspec.Struct, frozen=True, tag="error"):
    error: ErrorDetail


StreamEvent = (
    MessageStart
    | ContentBlockStart
    | ContentBlockDelta
    | ContentBlockStop
    | MessageDelta
    | MessageStop
    | Ping
    | ErrorEvent
)

# PERF: decoders and the encoder are built once
_event_decoder: Final = msgspec.json.Decoder(StreamEvent)
_block_decoder: Final = msgspec.json.Decoder(ContentBlock)
_message_decoder: Final = msgspec.json.Decoder(Message)
_error_decoder: Final = msgspec.json.Decoder(ErrorResponse)
_dict_decoder: Final = msgspec.json.Decoder(dict[str, Any])
encode: Final = msgspec.json.Encoder().encode


#: one stream event's ``data`` payload; raises msgspec.DecodeError/ValidationError (PERF: the decoder's
#: own method, no Python call around it: it runs once per stream event)
decode_event: Final = _event_decoder.decode


def decode_block(raw: msgspec.Raw | bytes) -> ContentBlock | dict[str, Any]:
    """A content block: a known Struct, or the raw dict of a type this module does not know."""
    try:
        return _block_decoder.decode(raw)
    except msgspec.ValidationError:
        block = _dict_decoder.decode(raw)
        if block.get("type") in _KNOWN_BLOCKS:
            raise
        return block


_KNOWN_BLOCKS: Final = frozenset(
    {"text", "image", "document", "tool_use", "tool_result", "thinking", "redacted_thinking"}
)


def decode_message(body: bytes) -> Message:
    """A non-streamed response body. Raises msgspec.DecodeError/ValidationError."""
    return _message_decoder.decode(body)


def decode_error(body: bytes) -> ErrorResponse | None:
    """An error body, or None when it is not Anthropic's error shape."""
    try:
        return _error_decoder.decode(body)
    except msgspec.MsgspecError:
        return None
