"""Wire types: only the fields of OpenAI requests and responses that the gateway acts on.

Decoding into these Structs validates the JSON and the types of these fields and skips everything else
at C speed; the original bytes are forwarded untouched unless something must be rewritten.
"""

from __future__ import annotations

from typing import Any

import msgspec

__all__ = [
    "ChatRequest",
    "CompletionRequest",
    "EmbeddingRequest",
    "StreamOptions",
    "Usage",
    "UsageEnvelope",
    "UsageEvent",
    "decoders",
]


class StreamOptions(msgspec.Struct, frozen=True):
    include_usage: bool | None = None


class ChatRequest(msgspec.Struct, frozen=True):
    model: str
    messages: list[msgspec.Raw]
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    user: str | None = None


class CompletionRequest(msgspec.Struct, frozen=True):
    model: str
    prompt: str | list[Any]
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    max_tokens: int | None = None
    user: str | None = None


class EmbeddingRequest(msgspec.Struct, frozen=True):
    model: str
    input: str | list[Any]
    user: str | None = None


class Usage(msgspec.Struct, frozen=True):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class UsageEnvelope(msgspec.Struct, frozen=True):
    """A non-streamed response: we need its usage (and to know it is JSON at all)."""

    usage: Usage | None = None


class UsageEvent(msgspec.Struct, frozen=True):
    """A streamed chunk that mentions usage: the final usage chunk has ``choices == []``."""

    usage: Usage | None = None
    choices: list[msgspec.Raw] | None = None


# PERF: decoders are built once
decoders: dict[str, msgspec.json.Decoder[Any]] = {
    "chat": msgspec.json.Decoder(ChatRequest),
    "completions": msgspec.json.Decoder(CompletionRequest),
    "embeddings": msgspec.json.Decoder(EmbeddingRequest),
}
usage_decoder = msgspec.json.Decoder(UsageEnvelope)
usage_event_decoder = msgspec.json.Decoder(UsageEvent)
top_level_decoder = msgspec.json.Decoder(dict[str, msgspec.Raw])
encode = msgspec.json.Encoder().encode
