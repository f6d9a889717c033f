"""Wire types: only the fields of OpenAI requests and responses that the gateway acts on.

Decoding into these Structs validates the JSON and the types of these fields and skips everything else
at C speed; the original bytes are forwarded untouched unless something must be rewritten.
"""

from __future__ import annotations

from typing import Any, ClassVar

import msgspec

from gateway._core.jsoncheck import KeyWatch

__all__ = [
    "MAX_JSON_DEPTH",
    "ChatChoice",
    "ChatCompletion",
    "ChatRequest",
    "CompletionRequest",
    "EmbeddingRequest",
    "MessagesRequest",
    "PromptTokensDetails",
    "ResponsesRequest",
    "StreamOptions",
    "TextChoice",
    "TextCompletion",
    "Usage",
    "UsageEnvelope",
    "UsageEvent",
    "completion_decoders",
    "decoders",
    "key_watches",
]

#: arrays and objects nested deeper than this in a request body are refused (400 ``invalid_json``) before
#: any decoder sees the body: msgspec decodes nesting by recursion and would fail with RecursionError
MAX_JSON_DEPTH = 128


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


class MessagesRequest(msgspec.Struct, frozen=True):
    """An Anthropic Messages request (``/v1/messages``): the fields the engine acts on."""

    model: str
    messages: list[msgspec.Raw]
    stream: bool | None = None
    max_tokens: int | None = None
    #: the Messages API has no stream options (its streams always carry usage)
    stream_options: ClassVar[None] = None
    #: read by routing's hash on "user" (``metadata.user_id`` is not looked at)
    user: ClassVar[None] = None


class ResponsesRequest(msgspec.Struct, frozen=True):
    """An OpenAI Responses request (``/v1/responses``): the fields the engine acts on."""

    model: str
    #: a string or items (the limits' token count reads the string form only)
    input: str | list[msgspec.Raw] = ""
    stream: bool | None = None
    #: ``max_output_tokens``, under the name the limits and routing read
    max_tokens: int | None = msgspec.field(default=None, name="max_output_tokens")
    user: str | None = None
    #: the Responses API has no stream options (its streams always end with the usage)
    stream_options: ClassVar[None] = None


class EmbeddingRequest(msgspec.Struct, frozen=True):
    model: str
    input: str | list[Any]
    user: str | None = None


class PromptTokensDetails(msgspec.Struct, frozen=True):
    #: prompt tokens read from the provider's prompt cache (priced at ``cached_input``)
    cached_tokens: int | None = None


class Usage(msgspec.Struct, frozen=True):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    #: the cache reads among ``prompt_tokens``, when the upstream reports them (OpenAI, Azure, DeepSeek...)
    prompt_tokens_details: PromptTokensDetails | None = None


class UsageEnvelope(msgspec.Struct, frozen=True):
    """A non-streamed response: we need its usage (and to know it is JSON at all)."""

    usage: Usage | None = None


class UsageEvent(msgspec.Struct, frozen=True):
    """A streamed chunk that mentions usage: the final usage chunk has ``choices == []``."""

    usage: Usage | None = None
    choices: list[msgspec.Raw] | None = None


#: a field the answer does not have (an empty Raw: falsy); ``null`` is ``Raw(b"null")``
_ABSENT = msgspec.Raw()


class ChatChoice(msgspec.Struct, frozen=True):
    """One choice of a chat completion; the message's fields stay raw (they become a stream's delta)."""

    index: int = 0
    message: dict[str, msgspec.Raw] = {}
    finish_reason: msgspec.Raw = _ABSENT
    logprobs: msgspec.Raw = _ABSENT


class _Completion(msgspec.Struct, frozen=True):
    """What a whole completion of either endpoint holds besides its choices."""

    id: msgspec.Raw = _ABSENT
    object: str | None = None
    created: msgspec.Raw = _ABSENT
    model: msgspec.Raw = _ABSENT
    system_fingerprint: msgspec.Raw = _ABSENT
    usage: msgspec.Raw = _ABSENT
    error: msgspec.Raw = _ABSENT


class ChatCompletion(_Completion, frozen=True):
    """A whole chat completion, as an upstream may answer a stream request (turned into a stream)."""

    service_tier: msgspec.Raw = _ABSENT
    choices: list[ChatChoice] = []


class TextChoice(msgspec.Struct, frozen=True):
    index: int = 0
    text: msgspec.Raw = _ABSENT
    finish_reason: msgspec.Raw = _ABSENT
    logprobs: msgspec.Raw = _ABSENT


class TextCompletion(_Completion, frozen=True):
    """A whole legacy completion (``/v1/completions``), as an upstream may answer a stream request."""

    choices: list[TextChoice] = []


def _watch(request: type[msgspec.Struct]) -> KeyWatch:
    """The keys of a request body that may appear only once: every field its Struct reads (what is checked
    must be what is sent: a repeated key would be read here as its last value and perhaps upstream as
    another), and the fields of ``stream_options``."""
    fields = request.__struct_encode_fields__  # the JSON names (``max_output_tokens``, not ``max_tokens``)
    nested = {"stream_options": StreamOptions.__struct_fields__} if "stream_options" in fields else None
    return KeyWatch(fields, nested)


# PERF: decoders and key watches are built once
key_watches: dict[str, KeyWatch] = {
    "chat": _watch(ChatRequest),
    "completions": _watch(CompletionRequest),
    "embeddings": _watch(EmbeddingRequest),
    "messages": _watch(MessagesRequest),
    "responses": _watch(ResponsesRequest),
}
completion_decoders: dict[str, msgspec.json.Decoder[Any]] = {
    "chat": msgspec.json.Decoder(ChatCompletion),
    "completions": msgspec.json.Decoder(TextCompletion),
}
decoders: dict[str, msgspec.json.Decoder[Any]] = {
    "chat": msgspec.json.Decoder(ChatRequest),
    "completions": msgspec.json.Decoder(CompletionRequest),
    "embeddings": msgspec.json.Decoder(EmbeddingRequest),
    "messages": msgspec.json.Decoder(MessagesRequest),
    "responses": msgspec.json.Decoder(ResponsesRequest),
}
usage_decoder = msgspec.json.Decoder(UsageEnvelope)
usage_event_decoder = msgspec.json.Decoder(UsageEvent)
top_level_decoder = msgspec.json.Decoder(dict[str, msgspec.Raw])
encode = msgspec.json.Encoder().encode
