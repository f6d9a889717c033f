"""The internal representation (IR) every dialect and every provider translates to and from.

Theory of operation
-------------------
Clients speak a *dialect* (OpenAI Chat Completions today; OpenAI Responses and Anthropic Messages
next); upstreams speak their provider's *wire format*. Instead of one converter per pair, each side
converts to and from this module's Structs:

    dialect request ──decode──▶ ir.Request ──encode──▶ provider request
    dialect answer  ◀─encode── ir.Response / ir stream events ◀─decode── provider answer / events

The IR is a superset: every field a supported provider or dialect can express has a place here, so
a feature crosses the gateway unchanged when both ends have it, and is dropped (documented in
``docs/translation.md``) only where the far end has no way to say it.

Choices that matter downstream:

- Content is a list of *parts* (a msgspec tagged union on ``type``): text, image (URL or base64 with
  its media type), document, tool call, tool result, thinking (with its signature; a signature-only
  block is a ``ThinkingPart`` with empty text) and redacted thinking. Parts a provider returns that no
  dialect can carry yet (server tool blocks, ...) travel as ``OpaquePart`` with their raw JSON.
- Tool-call ``arguments`` are the JSON text the model produced (OpenAI's shape): a stream delivers it
  piecewise, and re-encoding a parsed object could reorder keys the client compares.
- ``Usage`` splits the prompt into the three prices it is billed at: ``input_tokens`` (neither read
  from nor written to a cache), ``cache_read_tokens`` and ``cache_write_tokens``. Each token is in
  exactly one of them, so cost is a plain sum and never double counts. ``prompt_tokens`` is their sum
  (OpenAI's ``prompt_tokens``, which includes cached tokens). ``reasoning_tokens`` is a part of
  ``output_tokens``, not an addition to it.
- ``StopReason`` is one enum for every provider; each dialect maps it to its own vocabulary.
- Stream events are small frozen Structs: ``MessageStart``, ``BlockStart``/``BlockDelta``/``BlockStop``
  (indexed by the block's position in the final content), ``UsageUpdate`` (absolute, cumulative
  figures: the latest one wins), ``MessageStop`` and ``StreamError``. A stream translator turns
  provider events into these, another turns these into the client's dialect; neither buffers a whole
  answer.
- Errors are ``ProviderError`` values: the status and OpenAI error type/code the client should see,
  the provider's own error type, and whether the failure is transient (``retryable``: the routing
  layer may retry it or fail over).

Nothing here does I/O or knows about the engine; the translators are pure functions and small
state machines over these types.
"""

from __future__ import annotations

import enum
from typing import Any, Literal

import msgspec

__all__ = [
    "BlockDelta",
    "BlockStart",
    "BlockStop",
    "DocumentPart",
    "ImagePart",
    "Message",
    "MessageStart",
    "MessageStop",
    "OpaquePart",
    "Part",
    "ProviderError",
    "Reasoning",
    "RedactedThinkingPart",
    "Request",
    "Response",
    "ResponseFormat",
    "Role",
    "StopReason",
    "StreamError",
    "StreamEvent",
    "TextPart",
    "ThinkingPart",
    "Tool",
    "ToolCallPart",
    "ToolChoice",
    "ToolResultPart",
    "Usage",
    "UsageUpdate",
]

Role = Literal["system", "developer", "user", "assistant", "tool"]


class StopReason(enum.Enum):
    """Why the model stopped, in one vocabulary for every provider and dialect."""

    END_TURN = "end_turn"
    MAX_TOKENS = "max_tokens"
    STOP_SEQUENCE = "stop_sequence"
    TOOL_USE = "tool_use"
    #: the provider paused a long-running turn; sending the answer back continues it
    PAUSE_TURN = "pause_turn"
    #: a safety system stopped the answer (Anthropic ``refusal``, OpenAI ``content_filter``)
    REFUSAL = "refusal"
    #: the answer filled the model's context window
    CONTEXT_WINDOW = "context_window_exceeded"


# ---- content parts -------------------------------------------------------------------------------


class TextPart(msgspec.Struct, frozen=True, tag="text", omit_defaults=True):
    text: str
    #: provider citations, raw (Anthropic ``citations``)
    citations: list[dict[str, Any]] | None = None
    #: prompt-caching marker, raw (Anthropic ``cache_control``)
    cache_control: dict[str, Any] | None = None


class ImagePart(msgspec.Struct, frozen=True, tag="image", omit_defaults=True):
    """An image by ``url`` (http/https, never fetched by the gateway) or base64 ``data`` + ``media_type``."""

    url: str | None = None
    data: str | None = None
    media_type: str | None = None
    #: OpenAI's ``detail`` (low/high/auto)
    detail: str | None = None
    cache_control: dict[str, Any] | None = None


class DocumentPart(msgspec.Struct, frozen=True, tag="document", omit_defaults=True):
    """A document (PDF or text): by URL, base64 ``data`` + ``media_type``, inline ``text`` or ``file_id``."""

    url: str | None = None
    data: str | None = None
    media_type: str | None = None
    text: str | None = None
    file_id: str | None = None
    title: str | None = None
    filename: str | None = None
    cache_control: dict[str, Any] | None = None


class ToolCallPart(msgspec.Struct, frozen=True, tag="tool_call", omit_defaults=True):
    id: str
    name: str
    #: the arguments as the JSON text the model produced
    arguments: str = "{}"


class ToolResultPart(msgspec.Struct, frozen=True, tag="tool_result", omit_defaults=True):
    tool_call_id: str
    content: list[TextPart | ImagePart | DocumentPart] = []
    is_error: bool = False
    cache_control: dict[str, Any] | None = None


class ThinkingPart(msgspec.Struct, frozen=True, tag="thinking", omit_defaults=True):
    """Model reasoning; ``signature`` must go back to the provider byte for byte (may have empty text)."""

    text: str = ""
    signature: str | None = None


class RedactedThinkingPart(msgspec.Struct, frozen=True, tag="redacted_thinking"):
    """Encrypted reasoning; ``data`` is opaque and goes back unchanged."""

    data: str


class OpaquePart(msgspec.Struct, frozen=True, tag="opaque"):
    """A provider block with no IR meaning yet (server tools, ...), kept raw for the same provider."""

    provider: str
    raw: dict[str, Any]


Part = (
    TextPart
    | ImagePart
    | DocumentPart
    | ToolCallPart
    | ToolResultPart
    | ThinkingPart
    | RedactedThinkingPart
    | OpaquePart
)


class Message(msgspec.Struct, frozen=True, omit_defaults=True):
    role: Role
    content: list[Part] = []
    #: OpenAI's participant ``name``
    name: str | None = None


# ---- request -------------------------------------------------------------------------------------


class Tool(msgspec.Struct, frozen=True, omit_defaults=True):
    name: str
    description: str | None = None
    #: JSON schema of the arguments
    parameters: dict[str, Any] | None = None
    strict: bool | None = None
    cache_control: dict[str, Any] | None = None


class ToolChoice(msgspec.Struct, frozen=True, omit_defaults=True):
    """``auto``: the model decides; ``none``: no tool; ``required``: some tool; ``named``: tool ``name``."""

    mode: Literal["auto", "none", "required", "named"]
    name: str | None = None


class ResponseFormat(msgspec.Struct, frozen=True, omit_defaults=True):
    """Structured output: ``json_schema`` (with ``schema``), ``json_object`` (any object) or ``text``."""

    type: Literal["text", "json_object", "json_schema"]
    name: str | None = None
    schema: dict[str, Any] | None = None
    strict: bool | None = None
    description: str | None = None


class Reasoning(msgspec.Struct, frozen=True, omit_defaults=True):
    """Reasoning asked for: an ``effort`` word (OpenAI) and/or a token ``budget`` (Anthropic thinking)."""

    effort: str | None = None
    budget_tokens: int | None = None


class Request(msgspec.Struct, frozen=True, omit_defaults=True):
    model: str
    messages: list[Message]
    stream: bool = False
    #: the client wants a usage report at the end of a stream
    include_usage: bool = False
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    seed: int | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    #: number of choices asked for
    n: int | None = None
    stop: list[str] = []
    tools: list[Tool] = []
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None
    reasoning: Reasoning | None = None
    #: end-user id for abuse tracking (OpenAI ``user``, Anthropic ``metadata.user_id``)
    user: str | None = None
    metadata: dict[str, str] | None = None
    service_tier: str | None = None


# ---- response ------------------------------------------------------------------------------------


class Usage(msgspec.Struct, frozen=True):
    """Token counts; the prompt is split by price (see the module docstring)."""

    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    #: the part of ``output_tokens`` spent on reasoning
    reasoning_tokens: int = 0

    @property
    def prompt_tokens(self) -> int:
        """All prompt tokens, cached or not (OpenAI's ``prompt_tokens``)."""
        return self.input_tokens + self.cache_read_tokens + self.cache_write_tokens

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.output_tokens


class Response(msgspec.Struct, frozen=True, omit_defaults=True):
    id: str
    model: str
    content: list[Part]
    stop_reason: StopReason | None = None
    #: the stop sequence that ended the answer, if one did
    stop_sequence: str | None = None
    usage: Usage = Usage()
    #: provider detail on a refusal (category, explanation), raw
    stop_details: dict[str, Any] | None = None


class ProviderError(msgspec.Struct, frozen=True, omit_defaults=True):
    """An upstream failure as the client should see it."""

    status: int
    #: OpenAI error type and code for the client
    type: str
    code: str | None
    message: str
    #: transient: the same request may succeed later or on another deployment
    retryable: bool = False
    #: the provider's own error type (``overloaded_error``, ...)
    provider_type: str | None = None


# ---- stream events -------------------------------------------------------------------------------


class MessageStart(msgspec.Struct, frozen=True, tag="message_start"):
    id: str
    model: str
    usage: Usage = Usage()


class BlockStart(msgspec.Struct, frozen=True, tag="block_start", omit_defaults=True):
    """A content block opens at ``index``; ``kind`` says what it is."""

    index: int
    kind: Literal["text", "tool_call", "thinking", "redacted_thinking"]
    #: tool_call: its id and name
    id: str | None = None
    name: str | None = None
    #: redacted_thinking: its opaque data (it arrives whole)
    data: str | None = None


class BlockDelta(msgspec.Struct, frozen=True, tag="block_delta"):
    """More of block ``index``: ``text``, tool-call ``arguments`` JSON, ``thinking`` text or ``signature``."""

    index: int
    kind: Literal["text", "arguments", "thinking", "signature"]
    value: str


class BlockStop(msgspec.Struct, frozen=True, tag="block_stop"):
    index: int


class UsageUpdate(msgspec.Struct, frozen=True, tag="usage"):
    """Usage so far (absolute, cumulative: the latest update wins)."""

    usage: Usage


class MessageStop(msgspec.Struct, frozen=True, tag="message_stop", omit_defaults=True):
    stop_reason: StopReason
    stop_sequence: str | None = None


class StreamError(msgspec.Struct, frozen=True, tag="error"):
    error: ProviderError


StreamEvent = MessageStart | BlockStart | BlockDelta | BlockStop | UsageUpdate | MessageStop | StreamError
