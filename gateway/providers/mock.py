"""The deterministic mock LLM: the OpenAI-compatible upstream of the default config, tests and benchmarks.

Why a mock at all: the gateway must be testable and benchmarkable without network access or credentials,
and its failure handling (retries, fallbacks, circuit breakers, mid-stream errors) needs an upstream that
fails *on request*. The same request always gives the same response bytes apart from ``id`` and
``created``, so tests can compare whole bodies, and the cache and usage paths see stable numbers.

Three faces over one engine (``MockLLM``, which turns an endpoint name and request bytes into a
``MockReply``):

* ``MockApp``: an ``App`` (``gateway.app``) serving ``/v1/chat/completions``, ``/v1/completions``,
  ``/v1/embeddings``, ``/v1/models``, ``/v1/models/{id}`` and ``/healthz`` behind any front end; it is the
  upstream of the throughput benchmarks, so its common path is a cached template plus a fresh id.
* ``MockTransport``: a ``Transport`` (``gateway.providers.base``) that answers in process, no sockets, for
  ``type = "mock"`` providers.
* ``MockLLM.respond`` itself, for tests.

Content: words drawn from a fixed lorem-ipsum sequence at an offset taken from a hash of the last user
message; ``max_tokens`` (or ``max_completion_tokens``) words when given (capped at 4096,
``finish_reason = "length"``), else ``completion_words`` from the config (``"stop"``). Usage: prompt
tokens = characters of all message contents // 4 + 4 per message (min 1); completion tokens = words.
Tools, structured output and replies to tool results are decided by ``mock_content`` (its docstring has
the rules and the ``!tool`` cue); this module renders them (``_chat_turn``, ``MockLLM._turn_plan``).
Embeddings: a bag of words (``_embedding``), so that their similarity tracks shared words.

Failure injection
-----------------
A request can ask for a failure or timing. The directives are read from the *last message's content*
(chat; the text parts joined by newlines when content is a list), the *prompt* (completions; its first
string when it is a list) or the *first input string* (embeddings) when it starts with ``!mock``, and from
the request header ``x-mock`` (same syntax, the ``!mock`` prefix optional), so a gateway config can set
them per provider through ``headers``. Message directives override header directives key by key::

    !mock status=429 retry_after=2 what follows is ordinary prompt text

Directives are the ``key=value`` tokens right after ``!mock``; parsing stops at the first token without
``=``. An unknown key or a bad value is answered with 400 (``code: "invalid_mock_directive"``).

=====================  ======================================================================================
``status=CODE``        answer ``CODE`` (400-599) with an OpenAI-shaped error body (streams too, as OpenAI
                       does). For 429 also ``retry-after`` (whole seconds, rounded up), ``retry-after-ms``,
                       ``x-ratelimit-remaining-requests: 0`` and ``x-ratelimit-reset-requests``; other
                       statuses get the retry-after headers only when ``retry_after`` is given. A 2xx/3xx
                       ``CODE`` answers normally, with that status.
``retry_after=S``      seconds (may be fractional) for the retry-after headers; default 1 for 429.
``latency_ms=N``       delay before the response head (overrides the config's ``latency_ms``).
``chunks=N``           content chunks in a stream, N >= 1 (overrides ``stream_chunks``).
``chunk_delay_ms=N``   delay between stream events (overrides ``chunk_delay_ms``).
``garbage=1``          200 with a body that is not JSON; in a stream the second event's data is not JSON
                       (the others are normal, ``[DONE]`` included).
``cut=N``              stream: send the first N events, then drop the connection (never ``[DONE]``);
                       non-stream: send half the body, then drop. ``MockReply.cut_after`` says where.
``hang=1``             never answer (``MockReply.hang``; ``latency`` is ``HANG_SECONDS``).
=====================  ======================================================================================

Flags take ``1/0``, ``true/false``, ``yes/no`` or ``on/off``; numbers must be non-negative.

Dropping a connection from an app: the ``Responder`` protocol has no abort, so ``MockApp`` calls
``responder.abort()`` when the responder has one (the native front end's ``abort`` closes the transport
without finishing the chunked body) and otherwise raises ``MockAbort`` out of ``handle``, which a front
end treats like any failure after the head: it closes the connection.

Fast path: ``MockApp.fast(request)`` answers synchronously (``(status, headers, body)``) every request
that needs no waiting, no stream and no cut, or returns None; a front end that knows about it skips the
coroutine for those. ``handle`` uses the same path first.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import itertools
import math
import os
import re
import struct
import time
from collections.abc import Awaitable, Sequence
from typing import TYPE_CHECKING, Any, Literal

import msgspec
from msgspec import UNSET, UnsetType

from gateway._core.jsoncheck import TOO_DEEP, check_json
from gateway.config.schema import MockConfig
from gateway.errors import error_body
from gateway.providers import mock_content
from gateway.providers.base import UpstreamError, UpstreamResponse, UpstreamTimeout
from gateway.wire import MAX_JSON_DEPTH

if TYPE_CHECKING:
    from gateway.app import CallbackResponder, Request, Responder

__all__ = [
    "MockAbort",
    "MockApp",
    "MockDirectiveError",
    "MockDirectives",
    "MockLLM",
    "MockReply",
    "MockTransport",
    "parse_directives",
]

#: most words a completion may have, whatever max_tokens asks for
MAX_WORDS = 4096
#: the ``latency`` of a hanging reply: long enough to outlive any test or timeout
HANG_SECONDS = 1e6
#: largest embedding a request may ask for
MAX_DIMENSIONS = 8192
#: fixed ``created`` of the listed models, so /v1/models is byte-stable
MODELS_CREATED = 1700000000

_JSON = "application/json"
_SSE = "text/event-stream; charset=utf-8"
_DONE = b"data: [DONE]\n\n"
_FINGERPRINT = "fp_mock"

# PERF: the plan cache is keyed by the raw request bytes (plus endpoint and x-mock header): a hit skips the
# JSON decode as well as the content generation. Bounded in entries and in the size of a cacheable body.
_CACHE_ENTRIES = 512
_CACHE_MAX_BODY = 64 * 1024


# --- the words ---------------------------------------------------------------------------------------------

_LOREM = (
    "lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor incididunt ut labore et "
    "dolore magna aliqua enim ad minim veniam quis nostrud exercitation ullamco laboris nisi aliquip ex ea "
    "commodo consequat duis aute irure in reprehenderit voluptate velit esse cillum fugiat nulla pariatur "
    "excepteur sint occaecat cupidatat non proident sunt culpa qui officia deserunt mollit anim id est "
    "laborum"
).split()


def _word_sequence(n: int) -> tuple[str, ...]:
    # A fixed 64-bit LCG (Knuth's MMIX constants), not ``random``: the sequence must never change between
    # Python versions or processes, or recorded fixtures and cache keys would drift.
    x = 0x2545F4914F6CDD1D
    out: list[str] = []
    mask = (1 << 64) - 1
    k = len(_LOREM)
    for _ in range(n):
        x = (x * 6364136223846793005 + 1442695040888963407) & mask
        out.append(_LOREM[(x >> 33) % k])
    return tuple(out)


# PERF: built once; a completion is a slice of it at a hash-derived offset, so generating 4096 words is a
# slice and a join, not a loop.
_OFFSETS = 4096
_WORDS = _word_sequence(_OFFSETS + MAX_WORDS)


def _hash64(data: bytes) -> int:
    # blake2b, not hash(): str hashing is salted per process.
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


def _words_for(text: str, n: int) -> tuple[str, ...]:
    off = _hash64(text.encode("utf-8", "surrogatepass")) % _OFFSETS
    return _WORDS[off:off + n]


def _split_words(words: Sequence[str], parts: int) -> list[str]:
    """Split into at most ``parts`` non-empty pieces whose concatenation is ``" ".join(words)``."""
    w = len(words)
    if w == 0:
        return [""]
    k = max(1, min(parts, w))
    out: list[str] = []
    for i in range(k):
        piece = " ".join(words[i * w // k:(i + 1) * w // k])
        out.append(piece if i == 0 else " " + piece)
    return out


# --- directives --------------------------------------------------------------------------------------------


class MockDirectiveError(ValueError):
    """A ``!mock`` / ``x-mock`` directive with an unknown key or a bad value."""


class MockDirectives(msgspec.Struct, kw_only=True):
    """Parsed failure-injection directives; None/False = not given (see the module docstring)."""

    status: int | None = None
    retry_after: float | None = None
    latency_ms: float | None = None
    chunks: int | None = None
    chunk_delay_ms: float | None = None
    garbage: bool | None = None
    cut: int | None = None
    hang: bool | None = None

    def merged(self, over: MockDirectives) -> MockDirectives:
        """These directives with every key given in ``over`` replaced."""
        return MockDirectives(
            status=over.status if over.status is not None else self.status,
            retry_after=over.retry_after if over.retry_after is not None else self.retry_after,
            latency_ms=over.latency_ms if over.latency_ms is not None else self.latency_ms,
            chunks=over.chunks if over.chunks is not None else self.chunks,
            chunk_delay_ms=over.chunk_delay_ms if over.chunk_delay_ms is not None else self.chunk_delay_ms,
            garbage=over.garbage if over.garbage is not None else self.garbage,
            cut=over.cut if over.cut is not None else self.cut,
            hang=over.hang if over.hang is not None else self.hang,
        )


_NO_DIRECTIVES = MockDirectives()
_PREFIX = "!mock"
_INT_KEYS = frozenset({"status", "chunks", "cut"})
_FLOAT_KEYS = frozenset({"retry_after", "latency_ms", "chunk_delay_ms"})
_BOOL_KEYS = frozenset({"garbage", "hang"})
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


def _has_prefix(text: str) -> bool:
    return text.startswith(_PREFIX) and (len(text) == len(_PREFIX) or text[len(_PREFIX)].isspace())


def parse_directives(text: str, *, require_prefix: bool = True) -> MockDirectives:
    """Directives from a message (``require_prefix``: only when it starts with ``!mock``) or a header.

    Raises ``MockDirectiveError`` for an unknown key or a bad value.
    """
    if _has_prefix(text):
        text = text[len(_PREFIX):]
    elif require_prefix:
        return _NO_DIRECTIVES
    values: dict[str, int | float | bool] = {}
    for token in text.split():
        key, eq, raw = token.partition("=")
        if not eq:
            break
        try:
            if key in _INT_KEYS:
                iv = int(raw)
                if iv < 0:
                    raise ValueError
                values[key] = iv
            elif key in _FLOAT_KEYS:
                fv = float(raw)
                if not math.isfinite(fv) or fv < 0:
                    raise ValueError
                values[key] = fv
            elif key in _BOOL_KEYS:
                low = raw.lower()
                if low not in _TRUE and low not in _FALSE:
                    raise ValueError
                values[key] = low in _TRUE
            else:
                raise MockDirectiveError(f"unknown mock directive {key!r}")
        except ValueError as exc:
            if isinstance(exc, MockDirectiveError):
                raise
            raise MockDirectiveError(f"bad value for mock directive {key!r}: {raw!r}") from None
    status = values.get("status")
    if status is not None and not 200 <= int(status) <= 599:
        raise MockDirectiveError(f"mock directive status must be 200-599, got {status}")
    chunks = values.get("chunks")
    if chunks is not None and int(chunks) < 1:
        raise MockDirectiveError("mock directive chunks must be at least 1")
    return msgspec.convert(values, MockDirectives) if values else _NO_DIRECTIVES


# --- request wire types: only the fields the mock acts on -----------------------------------------------


class _Part(msgspec.Struct):
    type: str = "text"
    text: str | None = None


class _InFunction(msgspec.Struct):
    name: str = ""


class _InToolCall(msgspec.Struct):
    id: str = ""
    function: _InFunction = msgspec.field(default_factory=_InFunction)


class _Message(msgspec.Struct):
    role: str
    content: str | list[_Part] | None = None
    tool_call_id: str | None = None
    tool_calls: list[_InToolCall] | None = None


class _FunctionDef(msgspec.Struct):
    name: str
    parameters: dict[str, Any] | None = None


class _ToolDef(msgspec.Struct):
    function: _FunctionDef
    type: str = "function"


class _NamedChoice(msgspec.Struct):
    function: _InFunction
    type: str = "function"


class _JSONSchemaFormat(msgspec.Struct):
    schema: dict[str, Any] | None = None
    name: str | None = None
    strict: bool | None = None


class _ResponseFormat(msgspec.Struct):
    type: str
    json_schema: _JSONSchemaFormat | None = None


class _StreamOptions(msgspec.Struct):
    include_usage: bool | None = None


class _ChatRequest(msgspec.Struct):
    model: str
    messages: list[_Message]
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    stream: bool | None = None
    stream_options: _StreamOptions | None = None
    tools: list[_ToolDef] | None = None
    tool_choice: str | _NamedChoice | None = None
    parallel_tool_calls: bool | None = None
    response_format: _ResponseFormat | None = None


_Prompt = str | list[str | int | list[int]]


class _CompletionRequest(msgspec.Struct):
    model: str
    prompt: _Prompt
    max_tokens: int | None = None
    stream: bool | None = None
    stream_options: _StreamOptions | None = None


class _EmbeddingRequest(msgspec.Struct):
    model: str
    input: _Prompt
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None


_decode_chat = msgspec.json.Decoder(_ChatRequest).decode
_decode_completion = msgspec.json.Decoder(_CompletionRequest).decode
_decode_embedding = msgspec.json.Decoder(_EmbeddingRequest).decode


# --- response wire types (field order is the wire order; id, object, created come first for templating) --


class _PromptDetails(msgspec.Struct):
    cached_tokens: int = 0
    audio_tokens: int = 0


class _CompletionDetails(msgspec.Struct):
    reasoning_tokens: int = 0
    audio_tokens: int = 0
    accepted_prediction_tokens: int = 0
    rejected_prediction_tokens: int = 0


class _ChatUsage(msgspec.Struct):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: _PromptDetails
    completion_tokens_details: _CompletionDetails


class _Usage(msgspec.Struct):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class _OutFunction(msgspec.Struct):
    name: str
    arguments: str


class _OutToolCall(msgspec.Struct):
    id: str
    type: str
    function: _OutFunction


class _ChatMessage(msgspec.Struct):
    role: str
    content: str | None
    refusal: None = None
    annotations: list[str] = msgspec.field(default_factory=list)
    tool_calls: list[_OutToolCall] | UnsetType = UNSET


class _ChatChoice(msgspec.Struct):
    index: int
    message: _ChatMessage
    logprobs: None
    finish_reason: str


class _ChatCompletion(msgspec.Struct):
    id: str
    object: str
    created: int
    model: str
    choices: list[_ChatChoice]
    usage: _ChatUsage
    service_tier: str
    system_fingerprint: str


class _DeltaFunction(msgspec.Struct):
    name: str | UnsetType = UNSET
    arguments: str = ""


class _DeltaToolCall(msgspec.Struct):
    index: int
    function: _DeltaFunction
    id: str | UnsetType = UNSET
    type: str | UnsetType = UNSET


class _Delta(msgspec.Struct):
    role: str | UnsetType = UNSET
    content: str | UnsetType | None = UNSET
    refusal: UnsetType | None = UNSET
    tool_calls: list[_DeltaToolCall] | UnsetType = UNSET


class _ChunkChoice(msgspec.Struct):
    index: int
    delta: _Delta
    logprobs: None
    finish_reason: str | None


class _ChatChunk(msgspec.Struct):
    id: str
    object: str
    created: int
    model: str
    service_tier: str
    system_fingerprint: str
    choices: list[_ChunkChoice]
    usage: _ChatUsage | UnsetType | None = UNSET


class _TextChoice(msgspec.Struct):
    text: str
    index: int
    logprobs: None
    finish_reason: str | None


class _TextCompletion(msgspec.Struct):
    id: str
    object: str
    created: int
    model: str
    system_fingerprint: str
    choices: list[_TextChoice]
    usage: _Usage | UnsetType | None = UNSET


class _Embedding(msgspec.Struct):
    object: str
    index: int
    embedding: list[float] | str


class _EmbeddingUsage(msgspec.Struct):
    prompt_tokens: int
    total_tokens: int


class _EmbeddingList(msgspec.Struct):
    object: str
    data: list[_Embedding]
    model: str
    usage: _EmbeddingUsage


class _Model(msgspec.Struct):
    id: str
    object: str
    created: int
    owned_by: str


class _ModelList(msgspec.Struct):
    object: str
    data: list[_Model]


_encode = msgspec.json.Encoder().encode

_ID_LEAD = b'{"id":"'
_SSE_LEAD = b'data: {"id":"'
_CREATED0 = b'"created":0'


def _split_template(encoded: bytes) -> tuple[bytes, bytes]:
    """(mid, tail) of a response encoded with ``id=""`` and ``created=0``.

    The response is then ``lead + id + mid + created + tail``: the per-request fields are the first and
    third of the object, so the rest is computed once and cached.
    """
    assert encoded.startswith(b'{"id":""')
    end = encoded.index(_CREATED0) + len(_CREATED0)
    return encoded[len(_ID_LEAD):end - 1], encoded[end:]


# --- replies -----------------------------------------------------------------------------------------------


class MockReply:
    """One answer of the mock, for a front end or a transport to deliver.

    ``status`` and ``headers`` (lower-case names, no content-length) form the head. The body is either
    ``body`` (``chunks is None``) or the SSE events in ``chunks`` (each ``b"data: ...\\n\\n"``, normally
    ending with ``b"data: [DONE]\\n\\n"``). Deliver after ``latency`` seconds, with ``chunk_delay``
    seconds between stream events. ``cut_after`` not None: deliver only ``chunks[:cut_after]`` (stream)
    or ``body[:cut_after]`` (otherwise), then drop the connection without finishing the body. ``hang``:
    never answer at all.
    """

    __slots__ = ("body", "chunk_delay", "chunks", "cut_after", "hang", "headers", "latency", "status")

    def __init__(
        self,
        status: int,
        headers: list[tuple[str, str]],
        body: bytes = b"",
        chunks: list[bytes] | None = None,
        *,
        chunk_delay: float = 0.0,
        latency: float = 0.0,
        cut_after: int | None = None,
        hang: bool = False,
    ) -> None:
        self.status = status
        self.headers = headers
        self.body = body
        self.chunks = chunks
        self.chunk_delay = chunk_delay
        self.latency = latency
        self.cut_after = cut_after
        self.hang = hang

    @property
    def stream(self) -> bool:
        return self.chunks is not None

    def __repr__(self) -> str:
        shape = f"{len(self.chunks)} chunks" if self.chunks is not None else f"{len(self.body)}B"
        return f"<MockReply {self.status} {shape} latency={self.latency} cut_after={self.cut_after}>"


class _Plan:
    """Everything about a reply that does not change between identical requests (the cached part).

    ``parts`` are the body (one part) or the stream events. A part with ``templated[i]`` true is the tail
    of a response whose start ``head + counter + mid + created`` is rendered per request (``head`` is the
    lead-in up to the per-process id token, e.g. ``data: {"id":"chatcmpl-<token>``); the others are final.
    """

    __slots__ = (
        "chunk_delay", "cut", "hang", "head", "headers", "latency", "mid", "parts", "simple",
        "status", "stream", "templated",
    )

    def __init__(
        self,
        status: int,
        headers: list[tuple[str, str]],
        parts: tuple[bytes, ...],
        templated: tuple[bool, ...],
        *,
        stream: bool = False,
        head: bytes = b"",
        mid: bytes = b"",
        latency: float = 0.0,
        chunk_delay: float = 0.0,
        cut: int | None = None,
        hang: bool = False,
    ) -> None:
        self.status = status
        self.headers = headers
        self.parts = parts
        self.templated = templated
        self.stream = stream
        self.head = head
        self.mid = mid
        self.latency = latency
        self.chunk_delay = chunk_delay
        self.cut = cut
        self.hang = hang
        #: answerable at once with one body: the fast path
        self.simple = not stream and latency <= 0 and cut is None and not hang


def _static(status: int, headers: list[tuple[str, str]], body: bytes) -> _Plan:
    return _Plan(status, headers, (body,), (False,))


def _error_plan(status: int, message: str, type_: str, code: str | None, param: str | None = None,
                headers: list[tuple[str, str]] | None = None) -> _Plan:
    body = error_body(message, type_, code, param)
    return _static(status, [("content-type", _JSON), *(headers or [])], body)


_AT_RE = re.compile(r"at `\$\.([A-Za-z_]+)")
_FIELD_RE = re.compile(r"required field `([A-Za-z_]+)`")


def _invalid(exc: msgspec.DecodeError) -> _Plan:
    if isinstance(exc, msgspec.ValidationError):
        text = str(exc)
        m = _AT_RE.search(text) or _FIELD_RE.search(text)
        return _error_plan(400, f"Invalid request body: {text}", "invalid_request_error", None,
                           m.group(1) if m else None)
    return _error_plan(
        400,
        "We could not parse the JSON body of your request. (HINT: This likely means you aren't using your "
        "HTTP library correctly. The OpenAI API expects a JSON payload.)",
        "invalid_request_error", None,
    )


def _bad(message: str, param: str | None = None) -> _Plan:
    return _error_plan(400, message, "invalid_request_error", None, param)


def _directive_error(exc: MockDirectiveError) -> _Plan:
    return _error_plan(400, str(exc), "invalid_request_error", "invalid_mock_directive")


_STATUS_ERRORS: dict[int, tuple[str, str]] = {
    400: ("invalid_request_error", "invalid_request"),
    401: ("authentication_error", "invalid_api_key"),
    403: ("permission_error", "permission_denied"),
    404: ("invalid_request_error", "not_found"),
    408: ("invalid_request_error", "request_timeout"),
    409: ("invalid_request_error", "conflict"),
    413: ("invalid_request_error", "payload_too_large"),
    422: ("invalid_request_error", "unprocessable_entity"),
    429: ("rate_limit_error", "rate_limit_exceeded"),
    500: ("server_error", "internal_error"),
    502: ("server_error", "bad_gateway"),
    503: ("server_error", "service_unavailable"),
    504: ("server_error", "timeout"),
}


def _injected_status(status: int, retry_after: float | None) -> _Plan:
    type_, code = _STATUS_ERRORS.get(
        status, ("server_error" if status >= 500 else "invalid_request_error", f"http_{status}")
    )
    headers: list[tuple[str, str]] = []
    if status == 429 and retry_after is None:
        retry_after = 1.0
    if retry_after is not None:
        headers.append(("retry-after", str(math.ceil(retry_after))))
        headers.append(("retry-after-ms", str(round(retry_after * 1000))))
    if status == 429:
        headers.append(("x-ratelimit-remaining-requests", "0"))
        headers.append(("x-ratelimit-reset-requests", f"{retry_after:g}s"))
    return _error_plan(status, f"mock: injected HTTP {status}", type_, code, None, headers)


def _content_text(content: str | list[_Part] | None) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "\n".join(p.text for p in content if p.text is not None)


def _prompt_items(value: str | list[str | int | list[int]]) -> list[str | list[int]] | None:
    """The separate inputs of a prompt/input value, or None when it mixes token ids with other items."""
    if isinstance(value, str):
        return [value]
    if value and all(isinstance(v, int) for v in value):
        return [[v for v in value if isinstance(v, int)]]
    out: list[str | list[int]] = []
    for v in value:
        if isinstance(v, int):
            return None
        out.append(v)
    return out


def _item_tokens(item: str | list[int]) -> int:
    return len(item) // 4 if isinstance(item, str) else len(item)


def _item_key(item: str | list[int]) -> bytes:
    return b"s:" + item.encode("utf-8", "surrogatepass") if isinstance(item, str) else b"t:" + _encode(item)


def _first_text(items: list[str | list[int]]) -> str:
    return items[0] if items and isinstance(items[0], str) else ""


#: what counts as a word of an embedded text: runs of letters and digits, compared in lower case
_EMBED_WORD = re.compile(r"\w+")


@functools.lru_cache(maxsize=16384)
def _word_vector(word: bytes, dims: int) -> tuple[float, ...]:
    """A word's pseudo-random direction (each component uniform in [-1, 1), from SHAKE-256 of the word)."""
    raw = struct.unpack(f"<{dims}I", hashlib.shake_256(word).digest(4 * dims))
    return tuple(x / 2147483648.0 - 1.0 for x in raw)


def _embedding(item: str | list[int], dims: int) -> tuple[list[float], bytes]:
    """A unit vector determined by the input, rounded to float32, and its little-endian float32 bytes.

    A bag of words: the sum of each word's pseudo-random direction (``_word_vector``; a token list's ids
    are its words), normalised. Directions of distinct words are nearly orthogonal when ``dims`` is large
    (a few hundred), so the cosine of two texts tracks their shared words: the same words in another
    order or case are the same vector, one word changed in ten is about 0.9, unrelated texts about 0.
    It measures word overlap, not meaning: enough to show and test the semantic cache with the mock. A
    text without a word gets the direction of its whole bytes."""
    if isinstance(item, str):
        words = [w.encode("utf-8", "surrogatepass") for w in _EMBED_WORD.findall(item.lower())]
    else:
        words = [b"%d" % t for t in item]
    if not words:
        words = [_item_key(item)]
    vec = [0.0] * dims
    for word in words:
        for i, x in enumerate(_word_vector(word, dims)):
            vec[i] += x
    norm = math.hypot(*vec) or 1.0
    packed = struct.pack(f"<{dims}f", *(x / norm for x in vec))
    return list(struct.unpack(f"<{dims}f", packed)), packed


# --- tools and structured output (the OpenAI dialect; the decision itself is in mock_content) --------------


def _choice_of(choice: str | _NamedChoice | None) -> str:
    if choice is None:
        return "auto"
    if isinstance(choice, str):
        return choice if choice in ("none", "required") else "auto"
    return choice.function.name


def _tool_result(req: _ChatRequest, texts: list[str]) -> tuple[str | None, str] | None:
    """(tool name, result) when the last message is a ``tool`` message; the name from the call it answers."""
    last = req.messages[-1]
    if last.role != "tool":
        return None
    name = None
    for m in reversed(req.messages):
        for call in m.tool_calls or ():
            if call.id == last.tool_call_id:
                name = call.function.name
                break
        if name is not None:
            break
    return name, texts[-1]


def _turn_refusal(req: _ChatRequest) -> _Plan | None:
    """OpenAI's 400 for a tool choice without its tool, or a JSON-schema format without a schema."""
    choice = req.tool_choice
    if choice is not None and choice not in ("none", "auto") and not req.tools:
        return _bad("Invalid value for 'tool_choice': 'tool_choice' is only allowed when 'tools' are "
                    "specified.", "tool_choice")
    if isinstance(choice, _NamedChoice):
        name = choice.function.name
        if name not in {t.function.name for t in req.tools or ()}:
            return _bad(f"Invalid value for 'tool_choice': no function named '{name}' was specified in the "
                        "'tools' parameter.", "tool_choice")
    fmt = req.response_format
    if fmt is not None and fmt.type == "json_schema" and fmt.json_schema is None:
        return _error_plan(400, "Missing required parameter: 'response_format.json_schema'.",
                           "invalid_request_error", "missing_required_parameter",
                           "response_format.json_schema")
    return None


def _chat_turn(req: _ChatRequest, texts: list[str]) -> mock_content.Turn | None:
    """The turn for a chat request, or None for the plain words (see ``mock_content``)."""
    fmt = req.response_format
    schema = fmt.json_schema.schema if fmt is not None and fmt.json_schema is not None else None
    if schema is None and fmt is not None and fmt.type == "json_schema":
        schema = {"type": "object"}  # a json_schema format without its "schema": any object
    tools = [mock_content.ToolSpec(t.function.name, t.function.parameters) for t in req.tools or ()]
    if not tools and schema is None and (fmt is None or fmt.type != "json_object") \
            and req.messages[-1].role != "tool":
        return None  # PERF: the common request decides nothing here
    return mock_content.decide(
        seed="\n".join(texts),
        last_user=texts[-1] if req.messages[-1].role == "user" else None,
        tools=tools,
        choice=_choice_of(req.tool_choice),
        parallel=req.parallel_tool_calls is not False,
        tool_result=_tool_result(req, texts),
        schema=schema,
        json_mode=fmt is not None and fmt.type == "json_object",
        id_prefix="call_",
    )


def _turn_tokens(turn: mock_content.Turn) -> int:
    text = turn.text if turn.kind != "tools" else "".join(c.name + c.arguments for c in turn.calls)
    return max(1, len(text) // 4)


def _turn_deltas(turn: mock_content.Turn, chunks: int) -> list[_Delta]:
    """The deltas of a streamed turn: the role first, then content or tool calls (each call: index, id
    and name first, then its argument fragments)."""
    if turn.kind != "tools":
        pieces = mock_content.json_fragments(turn.text, chunks)
        return [_Delta("assistant", pieces[0], None), *(_Delta(content=p) for p in pieces[1:])]
    out: list[_Delta] = []
    for index, call in enumerate(turn.calls):
        head = _DeltaToolCall(index, _DeltaFunction(call.name, ""), call.id, "function")
        out.append(_Delta("assistant", None, None, [head]) if index == 0 else _Delta(tool_calls=[head]))
        for piece in mock_content.json_fragments(call.arguments, chunks):
            out.append(_Delta(tool_calls=[_DeltaToolCall(index, _DeltaFunction(arguments=piece))]))
    return out


# --- the engine --------------------------------------------------------------------------------------------


class MockLLM:
    """Turns (endpoint, request bytes, x-mock header) into a ``MockReply``; see the module docstring."""

    def __init__(self, config: MockConfig | None = None) -> None:
        cfg = config if config is not None else MockConfig()
        self.config = cfg
        self._latency = max(0.0, cfg.latency_ms) / 1000.0
        self._chunk_delay = max(0.0, cfg.chunk_delay_ms) / 1000.0
        self._stream_chunks = max(1, cfg.stream_chunks)
        self._words = max(0, min(cfg.completion_words, MAX_WORDS))
        self._dims = max(1, min(cfg.embedding_dimensions, MAX_DIMENSIONS))
        self._cache: dict[tuple[str, bytes, str | None], _Plan] = {}
        # ids: a per-process random token and a counter, unique across the workers of a node
        self._id_token = os.urandom(6).hex().encode()
        self._ids = itertools.count(1)
        self._now = -1
        self._now_b = b"0"
        models = [_Model(m, "model", MODELS_CREATED, "mock") for m in cfg.models]
        # PERF: the model endpoints never change: encode them once
        self._models_body = _encode(_ModelList("list", models))
        self._model_bodies = {m.id: _encode(m) for m in models}

    # -- public ---------------------------------------------------------------------------------------------

    def respond(self, endpoint: str, body: bytes, mock_header: str | None = None) -> MockReply:
        """The reply to one request. ``endpoint``: "chat", "completions", "embeddings", "models" or
        "model:<id>"; ``mock_header``: the value of an ``x-mock`` request header, if any."""
        return self.render(self.plan(endpoint, body, mock_header))

    # -- plans ----------------------------------------------------------------------------------------------

    def plan(self, endpoint: str, body: bytes, mock_header: str | None = None) -> _Plan:
        """The cached, request-independent part of the reply (see ``_Plan``)."""
        key = (endpoint, body, mock_header)
        plan = self._cache.get(key)
        if plan is None:
            plan = self._build(endpoint, body, mock_header)
            if len(body) <= _CACHE_MAX_BODY:
                cache = self._cache
                if len(cache) >= _CACHE_ENTRIES:
                    del cache[next(iter(cache))]  # oldest first: a FIFO is enough for a benchmark's few keys
                cache[key] = plan
        return plan

    def _build(self, endpoint: str, body: bytes, mock_header: str | None) -> _Plan:
        try:
            header = (
                parse_directives(mock_header, require_prefix=False) if mock_header else _NO_DIRECTIVES
            )
        except MockDirectiveError as exc:
            return self._timed(_directive_error(exc), _NO_DIRECTIVES)
        if endpoint in ("chat", "completions", "embeddings") and check_json(body, MAX_JSON_DEPTH) == TOO_DEEP:
            # its decoders recurse: nesting deep enough would raise RecursionError, not a decode error
            deep = f"The JSON body nests arrays and objects more than {MAX_JSON_DEPTH} levels deep."
            plan, d = _bad(deep), header
        elif endpoint == "chat":
            plan, d = self._chat(body, header)
        elif endpoint == "completions":
            plan, d = self._completions(body, header)
        elif endpoint == "embeddings":
            plan, d = self._embeddings(body, header)
        elif endpoint == "models":
            plan, d = _static(200, [("content-type", _JSON)], self._models_body), header
        elif endpoint.startswith("model:"):
            plan, d = self._model(endpoint[6:]), header
        else:
            raise ValueError(f"unknown mock endpoint {endpoint!r}")
        return self._timed(plan, d)

    def timed(self, plan: _Plan, d: MockDirectives) -> _Plan:
        """``plan`` with the latency, delays, cut and hang of the config and ``d`` (other dialects)."""
        return self._timed(plan, d)

    def _timed(self, plan: _Plan, d: MockDirectives) -> _Plan:
        """``plan`` with the latency, delays, cut and hang the config and directives ask for."""
        latency = self._latency if d.latency_ms is None else d.latency_ms / 1000.0
        delay = self._chunk_delay if d.chunk_delay_ms is None else d.chunk_delay_ms / 1000.0
        cut = d.cut
        if cut is not None and plan.stream:
            cut = min(cut, len(plan.parts) - 1)  # never the [DONE]
        hang = bool(d.hang)
        if hang:
            latency = HANG_SECONDS
        return _Plan(
            plan.status, plan.headers, plan.parts, plan.templated, stream=plan.stream, head=plan.head,
            mid=plan.mid, latency=latency, chunk_delay=delay, cut=cut, hang=hang,
        )

    def _directives(self, header: MockDirectives, text: str) -> MockDirectives:
        own = parse_directives(text)
        return header if own is _NO_DIRECTIVES else header.merged(own)

    def _injected(self, d: MockDirectives) -> _Plan | None:
        if d.status is not None and d.status >= 400:
            return _injected_status(d.status, d.retry_after)
        return None

    def _length(self, max_tokens: int | None) -> tuple[int, str]:
        if max_tokens is None:
            return self._words, "stop"
        if max_tokens > MAX_WORDS:
            return MAX_WORDS, "stop"
        return max_tokens, "length"

    def _chat(self, body: bytes, header: MockDirectives) -> tuple[_Plan, MockDirectives]:
        try:
            req = _decode_chat(body)
        except msgspec.DecodeError as exc:
            return _invalid(exc), header
        if not req.messages:
            return _bad("[] is too short - 'messages'", "messages"), header
        max_tokens = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
        if max_tokens is not None and max_tokens < 1:
            return _bad("max_tokens must be at least 1", "max_tokens"), header
        texts = [_content_text(m.content) for m in req.messages]
        try:
            d = self._directives(header, texts[-1])
        except MockDirectiveError as exc:
            return _directive_error(exc), header
        injected = self._injected(d)
        if injected is not None:
            return injected, d
        status = d.status or 200
        user = next((t for m, t in zip(reversed(req.messages), reversed(texts), strict=True)
                     if m.role == "user"), texts[-1])
        refused = _turn_refusal(req)
        if refused is not None:
            return refused, d
        turn = _chat_turn(req, texts)
        if turn is not None:  # tools, structured output, a reply to a tool result
            return self._turn_plan(req, turn, texts, status, d), d
        n, finish = self._length(max_tokens)
        words = _words_for(user, n)
        prompt = max(1, sum(map(len, texts)) // 4 + 4 * len(texts))
        usage = _ChatUsage(prompt, len(words), prompt + len(words), _PromptDetails(), _CompletionDetails())
        model = req.model
        if not req.stream:
            if d.garbage:
                return _static(status, [("content-type", _JSON)], _GARBAGE_BODY), d
            choice = _ChatChoice(0, _ChatMessage("assistant", " ".join(words)), None, finish)
            enc = _encode(_ChatCompletion("", "chat.completion", 0, model, [choice], usage, "default",
                                          _FINGERPRINT))
            mid, tail = _split_template(enc)
            return _Plan(status, [("content-type", _JSON)], (tail,), (True,),
                         head=_ID_LEAD + b"chatcmpl-" + self._id_token, mid=mid), d
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        nullable: UnsetType | None = None if include_usage else UNSET
        events: list[_ChatChunk] = []
        for i, piece in enumerate(_split_words(words, d.chunks or self._stream_chunks)):
            delta = _Delta("assistant", piece, None) if i == 0 else _Delta(content=piece)
            events.append(_ChatChunk("", "chat.completion.chunk", 0, model, "default", _FINGERPRINT,
                                     [_ChunkChoice(0, delta, None, None)], nullable))
        events.append(_ChatChunk("", "chat.completion.chunk", 0, model, "default", _FINGERPRINT,
                                 [_ChunkChoice(0, _Delta(), None, finish)], nullable))
        if include_usage:
            events.append(_ChatChunk("", "chat.completion.chunk", 0, model, "default", _FINGERPRINT, [],
                                     usage))
        return self._stream_plan(status, [_encode(e) for e in events], b"chatcmpl-", bool(d.garbage)), d

    def _turn_plan(self, req: _ChatRequest, turn: mock_content.Turn, texts: list[str], status: int,
                   d: MockDirectives) -> _Plan:
        """The plan of a chat answer that is not plain words: JSON content, tool calls or a tool reply."""
        prompt = max(1, sum(map(len, texts)) // 4 + 4 * len(texts))
        tokens = _turn_tokens(turn)
        usage = _ChatUsage(prompt, tokens, prompt + tokens, _PromptDetails(), _CompletionDetails())
        finish = "tool_calls" if turn.kind == "tools" else "stop"
        model = req.model
        if not req.stream:
            if d.garbage:
                return _static(status, [("content-type", _JSON)], _GARBAGE_BODY)
            if turn.kind == "tools":
                calls = [_OutToolCall(c.id, "function", _OutFunction(c.name, c.arguments))
                         for c in turn.calls]
                message = _ChatMessage("assistant", None, tool_calls=calls)
            else:
                message = _ChatMessage("assistant", turn.text)
            choice = _ChatChoice(0, message, None, finish)
            enc = _encode(_ChatCompletion("", "chat.completion", 0, model, [choice], usage, "default",
                                          _FINGERPRINT))
            mid, tail = _split_template(enc)
            return _Plan(status, [("content-type", _JSON)], (tail,), (True,),
                         head=_ID_LEAD + b"chatcmpl-" + self._id_token, mid=mid)
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        nullable: UnsetType | None = None if include_usage else UNSET
        events = [
            _ChatChunk("", "chat.completion.chunk", 0, model, "default", _FINGERPRINT,
                       [_ChunkChoice(0, delta, None, None)], nullable)
            for delta in _turn_deltas(turn, d.chunks or self._stream_chunks)
        ]
        events.append(_ChatChunk("", "chat.completion.chunk", 0, model, "default", _FINGERPRINT,
                                 [_ChunkChoice(0, _Delta(), None, finish)], nullable))
        if include_usage:
            events.append(_ChatChunk("", "chat.completion.chunk", 0, model, "default", _FINGERPRINT, [],
                                     usage))
        return self._stream_plan(status, [_encode(e) for e in events], b"chatcmpl-", bool(d.garbage))

    def _stream_plan(self, status: int, encoded: list[bytes], id_prefix: bytes, garbage: bool) -> _Plan:
        mid = b""
        parts: list[bytes] = []
        for enc in encoded:
            mid, tail = _split_template(enc)
            parts.append(tail + b"\n\n")
        templated = [True] * len(parts)
        if garbage:
            parts.insert(1, _GARBAGE_EVENT)
            templated.insert(1, False)
        parts.append(_DONE)
        templated.append(False)
        return _Plan(status, [("content-type", _SSE), ("cache-control", "no-cache")], tuple(parts),
                     tuple(templated), stream=True, head=_SSE_LEAD + id_prefix + self._id_token, mid=mid)

    def _completions(self, body: bytes, header: MockDirectives) -> tuple[_Plan, MockDirectives]:
        try:
            req = _decode_completion(body)
        except msgspec.DecodeError as exc:
            return _invalid(exc), header
        items = _prompt_items(req.prompt)
        if items is None or not items:
            return _bad("Invalid prompt: expected a string, strings, token ids or lists of token ids",
                        "prompt"), header
        if req.max_tokens is not None and req.max_tokens < 1:
            return _bad("max_tokens must be at least 1", "max_tokens"), header
        try:
            d = self._directives(header, _first_text(items))
        except MockDirectiveError as exc:
            return _directive_error(exc), header
        injected = self._injected(d)
        if injected is not None:
            return injected, d
        status = d.status or 200
        n, finish = self._length(req.max_tokens)
        text_key = req.prompt if isinstance(req.prompt, str) else _encode(req.prompt).decode()
        words = _words_for(text_key, n)
        prompt = max(1, sum(_item_tokens(i) for i in items))
        usage = _Usage(prompt, len(words), prompt + len(words))
        model = req.model
        if not req.stream:
            if d.garbage:
                return _static(status, [("content-type", _JSON)], _GARBAGE_BODY), d
            enc = _encode(_TextCompletion("", "text_completion", 0, model, _FINGERPRINT,
                                          [_TextChoice(" ".join(words), 0, None, finish)], usage))
            mid, tail = _split_template(enc)
            return _Plan(status, [("content-type", _JSON)], (tail,), (True,),
                         head=_ID_LEAD + b"cmpl-" + self._id_token, mid=mid), d
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        nullable: UnsetType | None = None if include_usage else UNSET
        events = [
            _TextCompletion("", "text_completion", 0, model, _FINGERPRINT,
                            [_TextChoice(piece, 0, None, None)], nullable)
            for piece in _split_words(words, d.chunks or self._stream_chunks)
        ]
        events.append(_TextCompletion("", "text_completion", 0, model, _FINGERPRINT,
                                      [_TextChoice("", 0, None, finish)], nullable))
        if include_usage:
            events.append(_TextCompletion("", "text_completion", 0, model, _FINGERPRINT, [], usage))
        return self._stream_plan(status, [_encode(e) for e in events], b"cmpl-", bool(d.garbage)), d

    def _embeddings(self, body: bytes, header: MockDirectives) -> tuple[_Plan, MockDirectives]:
        try:
            req = _decode_embedding(body)
        except msgspec.DecodeError as exc:
            return _invalid(exc), header
        items = _prompt_items(req.input)
        if items is None or not items or any(len(i) == 0 for i in items):
            return _bad("'$.input' is invalid: expected a non-empty string, strings, token ids or lists "
                        "of token ids", "input"), header
        dims = self._dims if req.dimensions is None else req.dimensions
        if not 1 <= dims <= MAX_DIMENSIONS:
            return _bad(f"dimensions must be between 1 and {MAX_DIMENSIONS}", "dimensions"), header
        try:
            d = self._directives(header, _first_text(items))
        except MockDirectiveError as exc:
            return _directive_error(exc), header
        injected = self._injected(d)
        if injected is not None:
            return injected, d
        status = d.status or 200
        if d.garbage:
            return _static(status, [("content-type", _JSON)], _GARBAGE_BODY), d
        data: list[_Embedding] = []
        for index, item in enumerate(items):
            floats, packed = _embedding(item, dims)
            value: list[float] | str = (
                base64.b64encode(packed).decode() if req.encoding_format == "base64" else floats
            )
            data.append(_Embedding("embedding", index, value))
        tokens = max(1, sum(_item_tokens(i) for i in items))
        enc = _encode(_EmbeddingList("list", data, req.model, _EmbeddingUsage(tokens, tokens)))
        return _static(status, [("content-type", _JSON)], enc), d

    def _model(self, model_id: str) -> _Plan:
        body = self._model_bodies.get(model_id)
        if body is None:
            return _error_plan(404, f"The model '{model_id}' does not exist or you do not have access to it.",
                               "invalid_request_error", "model_not_found")
        return _static(200, [("content-type", _JSON)], body)

    # -- rendering: the per-request part ---------------------------------------------------------------------

    def _created(self) -> bytes:
        now = int(time.time())
        if now != self._now:  # PERF: format the timestamp once a second
            self._now = now
            self._now_b = b"%d" % now
        return self._now_b

    def render_body(self, plan: _Plan) -> bytes:
        """The body of a non-stream plan with a fresh id and created."""
        if plan.templated[0]:
            # PERF: one formatting operation, one allocation
            return b"%s%x%s%s%s" % (plan.head, next(self._ids), plan.mid, self._created(), plan.parts[0])
        return plan.parts[0]

    def render(self, plan: _Plan) -> MockReply:
        """A ``MockReply`` for ``plan`` with a fresh id and created."""
        if plan.stream:
            # every event of a stream shares the id and created
            stamp = b"%s%x%s%s" % (plan.head, next(self._ids), plan.mid, self._created())
            chunks = [stamp + p if t else p for p, t in zip(plan.parts, plan.templated, strict=True)]
            return MockReply(plan.status, list(plan.headers), b"", chunks, chunk_delay=plan.chunk_delay,
                             latency=plan.latency, cut_after=plan.cut, hang=plan.hang)
        body = self.render_body(plan)
        cut = len(body) // 2 if plan.cut is not None else None
        return MockReply(plan.status, list(plan.headers), body, None, chunk_delay=plan.chunk_delay,
                         latency=plan.latency, cut_after=cut, hang=plan.hang)


_GARBAGE_BODY = b'{"id": "chatcmpl-mock", "object": <<mock garbage: this is not JSON>>'
_GARBAGE_EVENT = b"data: {<<mock garbage: this is not JSON>>\n\n"


# --- the App -----------------------------------------------------------------------------------------------


class MockAbort(Exception):
    """Raised out of ``MockApp.handle`` to drop the connection when the responder has no ``abort()``."""


_HEALTH = _static(200, [("content-type", _JSON)], b'{"status":"ok"}')


def _route_error(status: int, message: str, code: str, headers: list[tuple[str, str]] | None = None) -> _Plan:
    return _error_plan(status, message, "invalid_request_error", code, None, headers)


class MockApp:
    """The mock served over HTTP by a front end (``gateway mock``; the benchmarks' upstream).

    Besides ``handle`` it offers ``fast(request)``: the synchronous answer for every request that needs
    no waiting (see the module docstring).
    """

    def __init__(self, config: MockConfig | MockLLM | None = None, *, api_key: str | None = None) -> None:
        self.llm = config if isinstance(config, MockLLM) else MockLLM(config)
        #: when set, every request but /healthz must carry ``Authorization: Bearer <api_key>``
        self.api_key = api_key
        # PERF: routing is one dict lookup on the exact path
        self._routes: dict[str, tuple[str, str]] = {
            "/v1/chat/completions": ("POST", "chat"),
            "/v1/completions": ("POST", "completions"),
            "/v1/embeddings": ("POST", "embeddings"),
            "/v1/models": ("GET", "models"),
            "/healthz": ("GET", ""),
        }

    async def startup(self) -> None:
        pass

    async def shutdown(self) -> None:
        pass

    def _plan_for(self, request: Request) -> _Plan:
        path = request.path
        route = self._routes.get(path)
        if route is None:
            if path.startswith("/v1/models/") and len(path) > 11:
                route = ("GET", "model:" + path[11:])
            else:
                return _route_error(404, f"Invalid URL ({request.method} {path})", "not_found")
        method, endpoint = route
        if request.method != method:
            return _route_error(405, f"Method {request.method} not allowed on {path}", "method_not_allowed",
                                [("allow", method)])
        if not endpoint:
            return _HEALTH
        if self.api_key is not None and request.header(b"authorization") != b"Bearer " + self.api_key.encode(
        ):
            return _error_plan(401, "Incorrect API key provided.", "invalid_request_error", "invalid_api_key")
        x_mock = request.header(b"x-mock")
        return self.llm.plan(endpoint, request.body, None if x_mock is None else x_mock.decode("latin-1"))

    def fast(self, request: Request) -> tuple[int, list[tuple[str, str]], bytes] | None:
        """(status, headers, body) when the answer needs no waiting, no stream and no cut; else None."""
        plan = self._plan_for(request)
        if plan.simple:
            return plan.status, list(plan.headers), self.llm.render_body(plan)
        return None

    async def handle(self, request: Request, responder: Responder) -> None:
        plan = self._plan_for(request)
        if plan.simple:
            responder.send(plan.status, list(plan.headers), self.llm.render_body(plan))
            return
        await self._deliver(self.llm.render(plan), responder)

    def begin(self, request: Request, responder: CallbackResponder) -> Awaitable[None] | None:
        """The native front end's path (``gateway.app.FastApp``): a simple answer at once, no coroutine."""
        plan = self._plan_for(request)
        if plan.simple:
            responder.send(plan.status, list(plan.headers), self.llm.render_body(plan))
            responder.done()
            return None
        return self._deliver(self.llm.render(plan), responder)

    async def _deliver(self, reply: MockReply, responder: Responder) -> None:
        if reply.hang:
            # until the client is gone or has closed its side (a gateway that timed out closes its
            # connection: a half-closed one would otherwise be held here, and its socket, for ever)
            while not (responder.disconnected or getattr(responder, "peer_closed", False)):
                await asyncio.sleep(0.25)
            if not responder.disconnected:
                _drop(responder)  # no answer, as promised: drop the connection
            return
        if reply.latency > 0:
            await asyncio.sleep(reply.latency)
            if responder.disconnected:
                return
        if reply.chunks is None and reply.cut_after is None:
            responder.send(reply.status, reply.headers, reply.body)
            return
        # Only a stream or a cut gets here: a cut body goes out chunked so that it can be left unfinished.
        responder.start_stream(reply.status, reply.headers)
        if reply.chunks is None:
            pieces = [reply.body[:reply.cut_after]]
        else:
            pieces = reply.chunks if reply.cut_after is None else reply.chunks[:reply.cut_after]
        delay = reply.chunk_delay
        try:
            for i, piece in enumerate(pieces):
                if i and delay > 0:
                    await asyncio.sleep(delay)
                await responder.write(piece)
        except Exception as exc:
            from gateway.app import ClientGone  # not at import time: the HTTP core may not be built yet

            if isinstance(exc, ClientGone):
                return
            raise
        if reply.cut_after is not None:
            _drop(responder)
            return
        responder.end_stream()


def _drop(responder: Responder) -> None:
    """End the connection without (finishing) an answer: ``abort()`` where the responder has one."""
    abort = getattr(responder, "abort", None)
    if abort is None:
        raise MockAbort("mock: dropped the connection as a directive asked")
    abort()


# --- the Transport -----------------------------------------------------------------------------------------


def _endpoint_for(method: str, path: str) -> tuple[str | None, _Plan | None]:
    """(endpoint, None) for a known path and method, else (None, an error plan)."""
    path = path.split("?", 1)[0]
    endpoint: str
    want: str
    if path.endswith("/chat/completions"):
        endpoint, want = "chat", "POST"
    elif path.endswith("/completions"):
        endpoint, want = "completions", "POST"
    elif path.endswith("/embeddings"):
        endpoint, want = "embeddings", "POST"
    elif path.endswith("/models"):
        endpoint, want = "models", "GET"
    elif (i := path.find("/models/")) >= 0 and len(path) > i + 8:
        endpoint, want = "model:" + path[i + 8:], "GET"
    else:
        return None, _route_error(404, f"Invalid URL ({method} {path})", "not_found")
    if method.upper() != want:
        return None, _route_error(405, f"Method {method} not allowed on {path}", "method_not_allowed",
                                  [("allow", want)])
    return endpoint, None


class _MockResponse:
    """An ``UpstreamResponse`` over a ``MockReply``: one body piece or one SSE event per ``next_chunk``."""

    def __init__(self, reply: MockReply, read_timeout: float | None) -> None:
        self.status = reply.status
        self.headers: list[tuple[bytes, bytes]] = [
            (k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in reply.headers
        ]
        if reply.chunks is not None:
            self._pieces = reply.chunks if reply.cut_after is None else reply.chunks[:reply.cut_after]
        elif reply.cut_after is not None:
            self._pieces = [reply.body[:reply.cut_after]]
        else:
            self._pieces = [reply.body] if reply.body else []
        self._cut = reply.cut_after is not None
        self._delay = reply.chunk_delay
        self._read_timeout = read_timeout
        self._next = 0
        self._closed = False

    def header(self, name: bytes) -> bytes | None:
        for k, v in self.headers:
            if k == name:
                return v
        return None

    async def read(self) -> bytes:
        parts: list[bytes] = []
        while chunk := await self.next_chunk():
            parts.append(chunk)
        return b"".join(parts)

    def complete_body(self) -> bytes | None:
        if self._next or self._cut or self._closed or (self._delay > 0 and len(self._pieces) > 1):
            return None
        self._next = len(self._pieces)
        return b"".join(self._pieces)

    async def next_chunk(self) -> bytes:
        if self._closed:
            return b""
        i = self._next
        if i >= len(self._pieces):
            if self._cut:
                self._closed = True
                raise UpstreamError("mock upstream closed the connection mid-body")
            return b""
        if i and self._delay > 0:
            await _wait(self._delay, self._read_timeout)
        self._next = i + 1
        return self._pieces[i]

    def close(self) -> None:
        self._closed = True


async def _wait(seconds: float, read_timeout: float | None) -> None:
    """Sleep like a silent upstream: past ``read_timeout`` it becomes an ``UpstreamTimeout``."""
    if read_timeout is not None and seconds > read_timeout:
        await asyncio.sleep(read_timeout)
        raise UpstreamTimeout(f"mock upstream silent for more than {read_timeout}s")
    await asyncio.sleep(seconds)


class MockTransport:
    """A ``Transport`` answered by a ``MockLLM`` in process: what a ``type = "mock"`` provider uses.

    ``read_timeout`` (seconds) makes a delay longer than it (latency, chunk delay, hang) end in
    ``UpstreamTimeout`` after that long, as the real pool's read timeout would; None waits it out.
    """

    def __init__(
        self, config: MockConfig | MockLLM | None = None, *, read_timeout: float | None = None
    ) -> None:
        self.llm = config if isinstance(config, MockLLM) else MockLLM(config)
        self.read_timeout = read_timeout

    async def request(
        self,
        method: str,
        path: str,
        headers: list[tuple[str, str]],
        body: bytes,
    ) -> UpstreamResponse:
        endpoint, error = _endpoint_for(method, path)
        if endpoint is None:
            assert error is not None
            reply = self.llm.render(error)
        else:
            x_mock = next((v for k, v in headers if k.lower() == "x-mock"), None)
            reply = self.llm.respond(endpoint, body, x_mock)
        if reply.latency > 0:
            await _wait(reply.latency, self.read_timeout)
        return _MockResponse(reply, self.read_timeout)

    async def close(self) -> None:
        pass
