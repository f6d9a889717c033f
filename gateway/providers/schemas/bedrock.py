"""Amazon Bedrock Runtime wire schemas: Converse, ConverseStream events, InvokeModel embeddings, errors.

Shapes follow botocore's ``bedrock-runtime`` service model (``Converse`` input and output,
``ConverseStreamOutput``); the tests validate what we encode with botocore's own ``ParamValidator``
against the ``Converse`` input shape, so the two cannot drift.

Bedrock's unions (``ContentBlock``, ``ToolChoice``, ``ContentBlockDelta``, ...) are JSON objects with
exactly one member set (``{"text": "hi"}``, ``{"toolUse": {...}}``), not tagged on a ``type`` field: each
is one Struct with every member optional, encoded with ``omit_defaults`` so only the member set goes on
the wire. Decoding reads only the members the translator acts on; an unknown member (a block type added
later: ``citationsContent``, ``searchResult``, ...) decodes as a block with none set and is skipped.
"""

from __future__ import annotations

from typing import Any, Final, Literal

import msgspec

__all__ = [
    "CachePoint",
    "ContentBlock",
    "ContentBlockDeltaEvent",
    "ContentBlockStartEvent",
    "ContentBlockStopEvent",
    "ConverseOutput",
    "ConverseResponse",
    "DocumentBlock",
    "ErrorBody",
    "ImageBlock",
    "InferenceConfig",
    "JsonSchemaDefinition",
    "Message",
    "MessageStopEvent",
    "MetadataEvent",
    "OutputConfig",
    "OutputFormat",
    "OutputFormatStructure",
    "ReasoningContent",
    "ReasoningText",
    "Request",
    "Source",
    "SystemBlock",
    "TokenUsage",
    "Tool",
    "ToolChoice",
    "ToolConfig",
    "ToolInputSchema",
    "ToolResultBlock",
    "ToolResultContent",
    "ToolSpec",
    "ToolUseBlock",
    "decode_error",
    "decode_response",
    "encode",
]


class _Wire(msgspec.Struct, omit_defaults=True, frozen=True):
    """A Bedrock structure: members left at their default are not sent."""


class CachePoint(_Wire, frozen=True):
    #: required on the wire, so not a default (``omit_defaults`` would drop it)
    type: str


class Source(_Wire, frozen=True):
    """``ImageSource`` / ``DocumentSource``: base64 ``bytes`` (rest-json's blob) or inline ``text``."""

    bytes: str | None = None
    text: str | None = None


class ImageBlock(_Wire, frozen=True):
    #: png, jpeg, gif, webp
    format: str
    source: Source


class DocumentBlock(_Wire, frozen=True):
    #: pdf, csv, doc, docx, xls, xlsx, html, txt, md
    format: str
    #: letters, digits, spaces, hyphens, parentheses and square brackets only (Bedrock's rule)
    name: str
    source: Source


class ToolUseBlock(_Wire, frozen=True):
    toolUseId: str
    name: str
    input: Any


class ToolResultContent(_Wire, frozen=True):
    """One member of a tool result: ``text``, ``json``, ``image`` or ``document``."""

    text: str | None = None
    json: Any = None
    image: ImageBlock | None = None
    document: DocumentBlock | None = None


class ToolResultBlock(_Wire, frozen=True):
    toolUseId: str
    content: list[ToolResultContent]
    #: success or error
    status: str | None = None


class ReasoningText(_Wire, frozen=True):
    text: str
    signature: str | None = None


class ReasoningContent(_Wire, frozen=True):
    """``reasoningText`` (text and its signature) or ``redactedContent`` (opaque base64)."""

    reasoningText: ReasoningText | None = None
    redactedContent: str | None = None


class ContentBlock(_Wire, frozen=True):
    """Exactly one member set (a union of Bedrock's)."""

    text: str | None = None
    image: ImageBlock | None = None
    document: DocumentBlock | None = None
    toolUse: ToolUseBlock | None = None
    toolResult: ToolResultBlock | None = None
    reasoningContent: ReasoningContent | None = None
    cachePoint: CachePoint | None = None


class Message(msgspec.Struct, omit_defaults=True):
    role: Literal["user", "assistant"]
    content: list[ContentBlock]


class SystemBlock(_Wire, frozen=True):
    text: str | None = None
    cachePoint: CachePoint | None = None


class InferenceConfig(_Wire, frozen=True):
    maxTokens: int | None = None
    temperature: float | None = None
    topP: float | None = None
    stopSequences: list[str] | None = None


class ToolInputSchema(_Wire, frozen=True):
    json: Any


class ToolSpec(_Wire, frozen=True):
    name: str
    inputSchema: ToolInputSchema
    description: str | None = None
    strict: bool | None = None


class Tool(_Wire, frozen=True):
    toolSpec: ToolSpec | None = None
    cachePoint: CachePoint | None = None


class _Empty(_Wire, frozen=True):
    pass


class _NamedTool(_Wire, frozen=True):
    name: str


class ToolChoice(_Wire, frozen=True):
    auto: _Empty | None = None
    any: _Empty | None = None
    tool: _NamedTool | None = None

    @classmethod
    def of(cls, mode: str, name: str | None = None) -> ToolChoice:
        if mode == "any":
            return cls(any=_Empty())
        if mode == "tool":
            return cls(tool=_NamedTool(name or ""))
        return cls(auto=_Empty())


class ToolConfig(_Wire, frozen=True):
    tools: list[Tool]
    toolChoice: ToolChoice | None = None


class JsonSchemaDefinition(_Wire, frozen=True):
    #: the JSON schema as a JSON document (a string, as the service model declares it)
    schema: str
    name: str | None = None
    description: str | None = None


class OutputFormatStructure(_Wire, frozen=True):
    jsonSchema: JsonSchemaDefinition


class OutputFormat(_Wire, frozen=True):
    type: str
    structure: OutputFormatStructure


class OutputConfig(_Wire, frozen=True):
    textFormat: OutputFormat


class Request(_Wire, frozen=True):
    """``Converse`` / ``ConverseStream`` input (the model id goes in the path, not the body)."""

    messages: list[Message]
    system: list[SystemBlock] | None = None
    inferenceConfig: InferenceConfig | None = None
    toolConfig: ToolConfig | None = None
    outputConfig: OutputConfig | None = None
    #: model-specific fields Converse has no member for (``top_k``, Claude's ``thinking``)
    additionalModelRequestFields: dict[str, Any] | None = None
    requestMetadata: dict[str, str] | None = None


# ---- answers -------------------------------------------------------------------------------------


class TokenUsage(msgspec.Struct, frozen=True):
    """``inputTokens`` excludes the cache reads and writes reported beside it."""

    inputTokens: int = 0
    outputTokens: int = 0
    totalTokens: int = 0
    cacheReadInputTokens: int = 0
    cacheWriteInputTokens: int = 0


class _OutMessage(msgspec.Struct, frozen=True):
    role: str
    content: list[ContentBlock]


class ConverseOutput(msgspec.Struct, frozen=True):
    message: _OutMessage | None = None


class ConverseResponse(msgspec.Struct, frozen=True):
    output: ConverseOutput
    stopReason: str
    usage: TokenUsage = TokenUsage()


class ErrorBody(msgspec.Struct, frozen=True):
    """An error answer's body: ``message`` (``Message`` from some front ends)."""

    message: str | None = None
    Message: str | None = None
    #: the error type, when the body carries it (rest-json's ``__type``, sometimes with a namespace)
    type: str | None = msgspec.field(name="__type", default=None)

    @property
    def text(self) -> str:
        return self.message or self.Message or ""


# ---- stream event payloads (the event type is the ``:event-type`` header) ----------------------


class _ToolUseStart(msgspec.Struct, frozen=True):
    toolUseId: str
    name: str


class _BlockStart(msgspec.Struct, frozen=True):
    toolUse: _ToolUseStart | None = None


class ContentBlockStartEvent(msgspec.Struct, frozen=True):
    contentBlockIndex: int
    start: _BlockStart = _BlockStart()


class _ToolUseDelta(msgspec.Struct, frozen=True):
    input: str = ""


class _ReasoningDelta(msgspec.Struct, frozen=True):
    text: str | None = None
    signature: str | None = None
    redactedContent: str | None = None


class _BlockDelta(msgspec.Struct, frozen=True):
    text: str | None = None
    toolUse: _ToolUseDelta | None = None
    reasoningContent: _ReasoningDelta | None = None


class ContentBlockDeltaEvent(msgspec.Struct, frozen=True):
    contentBlockIndex: int
    delta: _BlockDelta


class ContentBlockStopEvent(msgspec.Struct, frozen=True):
    contentBlockIndex: int


class MessageStopEvent(msgspec.Struct, frozen=True):
    stopReason: str


class MetadataEvent(msgspec.Struct, frozen=True):
    usage: TokenUsage | None = None


_response_decoder: Final = msgspec.json.Decoder(ConverseResponse)
_error_decoder: Final = msgspec.json.Decoder(ErrorBody)
encode: Final = msgspec.json.Encoder().encode


def decode_response(body: bytes) -> ConverseResponse:
    """A ``Converse`` answer. Raises msgspec.DecodeError/ValidationError."""
    return _response_decoder.decode(body)


def decode_error(body: bytes) -> ErrorBody | None:
    """An error answer's body, or None when it is not Bedrock's ``{"message": ...}``."""
    try:
        return _error_decoder.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
        return None
