"""Translator for Cohere upstreams (API v2: ``/v2/chat`` and ``/v2/embed``), behind an OpenAI-dialect client.

    client body ──openai_chat.decode_request──▶ ir.Request ──cohere_translate.encode_request──▶ /v2/chat
    answer      ◀─openai_chat.encode_response── ir.Response ◀─cohere_translate.response_from_body── body
    chunks      ◀─openai_chat.ChunkEncoder───── IR events   ◀─cohere_translate.CohereStream──────── SSE

The transport plumbing is ``OpenAITranslator``'s (prebuilt heads on the keep-alive pool, the callback
path); the credential is the same ``Authorization: Bearer`` header. Only the paths and the translating
methods differ. Embeddings: OpenAI's request becomes ``/v2/embed`` with ``embedding_types: ["float"]``
and ``input_type: "search_document"``; the vectors come back as OpenAI's ``list`` (base64 when asked).
"""

from __future__ import annotations

import time
from typing import Any, Final

import msgspec

from gateway import errors, ir
from gateway.dialects import openai_chat, openai_embeddings
from gateway.providers import cohere_translate as xlate
from gateway.providers.anthropic import gateway_error, openai_usage, response_events
from gateway.providers.base import Transport, UpstreamResponse
from gateway.providers.openai import OpenAITranslator
from gateway.providers.relay import IRStreamRelay

__all__ = ["DEFAULT_BASE_URL", "DEFAULT_FORWARD_HEADERS", "CohereTranslator"]

DEFAULT_BASE_URL: Final = "https://api.cohere.com"
#: client headers a Cohere upstream gets by default: none
DEFAULT_FORWARD_HEADERS: Final[tuple[str, ...]] = ()
_PASS: Final = (b"retry-after", b"x-ratelimit-limit", b"x-ratelimit-remaining", b"x-ratelimit-reset")
_DECODE_ERRORS: Final = (msgspec.DecodeError, msgspec.ValidationError, RecursionError)


class CohereTranslator(OpenAITranslator):
    """One per ``type = "cohere"`` provider: OpenAI chat and embeddings in, Cohere v2 upstream."""

    __slots__ = ()

    def __init__(self, name: str, transport: Transport, path_prefix: str, api_key: str | None,
                 extra_headers: dict[str, str]) -> None:
        paths = {"chat": path_prefix + "/v2/chat", "embeddings": path_prefix + "/v2/embed"}
        super().__init__(name, transport, path_prefix, api_key, extra_headers, paths=paths)
        self.forward_headers(list(DEFAULT_FORWARD_HEADERS))

    def request_body(self, ctx: Any, upstream_model: str, rewrite: bool) -> bytes:
        if ctx.endpoint == "embeddings":
            req = openai_embeddings.decode_request(ctx.body)
            return xlate.embed_request(upstream_model, req.texts, req.dimensions)
        if ctx.endpoint != "chat":
            raise errors.BadRequest(
                f"The model `{ctx.fields.model}` is served by Cohere, which has no {ctx.endpoint} endpoint; "
                "/v1/chat/completions and /v1/embeddings are available for it",
                param="model", code="unsupported_endpoint",
            )
        return xlate.encode_request(openai_chat.decode_request(ctx.body), upstream_model)

    def pass_headers(
        self, resp: UpstreamResponse, ratelimit: bool, out: list[tuple[str, str]]
    ) -> list[tuple[str, str]]:
        for name, value in resp.headers:
            if name == b"retry-after" or (ratelimit and name in _PASS):
                out.append((name.decode("latin-1"), value.decode("latin-1")))
        return out

    def take_body(self, ctx: Any, body: bytes) -> bytes:
        if ctx.endpoint == "embeddings":
            req = openai_embeddings.decode_request(ctx.body)
            try:
                vectors, tokens = xlate.embeddings_from_body(body, req.texts)
            except _DECODE_ERRORS:
                raise errors.BadGateway("The upstream provider returned a body that is not a Cohere embed "
                                        "answer", code="upstream_invalid_response") from None
            ctx.usage = openai_usage(ir.Usage(input_tokens=tokens))
            as_base64 = req.encoding_format == "base64"
            return openai_embeddings.encode_response(vectors, req.model, tokens, as_base64)
        answer = self._answer(ctx, body)
        ctx.usage = openai_usage(answer.usage)
        return openai_chat.encode_response(answer, int(time.time()))

    def _answer(self, ctx: Any, body: bytes) -> ir.Response:
        try:
            return xlate.response_from_body(body, ctx.fields.model)
        except _DECODE_ERRORS:
            raise errors.BadGateway("The upstream provider returned a body that is not a Cohere chat answer",
                                    code="upstream_invalid_response") from None
        except xlate.FailedAnswer as exc:
            raise gateway_error(exc.error) from None

    def body_as_stream(self, ctx: Any, resp: UpstreamResponse, body: bytes) -> bytes:
        answer = self._answer(ctx, body)
        ctx.usage = openai_usage(answer.usage)
        encoder = openai_chat.ChunkEncoder(int(time.time()), ctx.include_usage)
        return encoder.encode_all(response_events(answer))

    def stream_relay(self, ctx: Any) -> IRStreamRelay:
        return IRStreamRelay(ctx, xlate.CohereStream(ctx.fields.model))

    def error_answer(self, status: int, body: bytes) -> tuple[int, bytes] | None:
        err = xlate.error_from_response(status, body)
        return err.status, openai_chat.encode_error(err)
