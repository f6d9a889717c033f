"""Translator for Cohere upstreams (API v2: ``/v2/chat`` and ``/v2/embed``), behind a client of any dialect.

Every client dialect (OpenAI chat, Anthropic Messages, OpenAI Responses) is translated through the IR
(``gateway.providers.bridge``, the client-dialect seam of ``gateway.dialects.base``):

    client body ──dialect.decode_request──▶ ir.Request ──cohere_translate.encode_request──▶ /v2/chat
    answer      ◀─dialect.encode_response── ir.Response ◀─cohere_translate.response_from_body── body
    chunks      ◀─dialect.stream_encoder─── IR events   ◀─cohere_translate.CohereStream──────── SSE

The transport plumbing is ``OpenAITranslator``'s (prebuilt heads on the keep-alive pool, the callback
path); the credential is the same ``Authorization: Bearer`` header. Only the paths and the translating
methods differ. Embeddings: OpenAI's request becomes ``/v2/embed`` with ``embedding_types: ["float"]``
and ``input_type: "search_document"``; the vectors come back as OpenAI's ``list`` (base64 when asked).
"""

from __future__ import annotations

from typing import Any, Final

import msgspec

from gateway import errors, ir
from gateway.dialects import openai_embeddings
from gateway.dialects.openai_chat import OPENAI_CHAT
from gateway.providers import bridge
from gateway.providers import cohere_translate as xlate
from gateway.providers.base import Transport, UpstreamResponse
from gateway.providers.bridge import BridgeRelay, gateway_error, openai_usage
from gateway.providers.openai import OpenAITranslator

__all__ = ["DEFAULT_BASE_URL", "DEFAULT_FORWARD_HEADERS", "CohereTranslator"]

DEFAULT_BASE_URL: Final = "https://api.cohere.com"
#: client headers a Cohere upstream gets by default: none
DEFAULT_FORWARD_HEADERS: Final[tuple[str, ...]] = ()
_PASS: Final = (b"retry-after", b"x-ratelimit-limit", b"x-ratelimit-remaining", b"x-ratelimit-reset")
_DECODE_ERRORS: Final = (msgspec.DecodeError, msgspec.ValidationError, RecursionError)


class CohereTranslator(OpenAITranslator):
    """One per ``type = "cohere"`` provider: every client dialect's generation requests (through the IR,
    ``gateway.providers.bridge``) and OpenAI embeddings in, Cohere v2 upstream."""

    __slots__ = ()

    def __init__(self, name: str, transport: Transport, path_prefix: str, api_key: str | None,
                 extra_headers: dict[str, str]) -> None:
        chat = path_prefix + "/v2/chat"
        paths = {"chat": chat, "messages": chat, "responses": chat, "embeddings": path_prefix + "/v2/embed"}
        super().__init__(name, transport, path_prefix, api_key, extra_headers, paths=paths)
        self.forward_headers(list(DEFAULT_FORWARD_HEADERS))

    def request_body(self, ctx: Any, upstream_model: str, rewrite: bool) -> bytes:
        if ctx.endpoint == "embeddings":
            req = openai_embeddings.decode_request(ctx.body)
            return xlate.embed_request(upstream_model, req.texts, req.dimensions)
        bridge.check_endpoint(ctx, "Cohere", "/v1/chat/completions and /v1/embeddings are available for it")
        return bridge.request_body(self, ctx, upstream_model)

    def pass_headers(
        self, resp: UpstreamResponse, ratelimit: bool, out: list[tuple[str, str]]
    ) -> list[tuple[str, str]]:
        for name, value in resp.headers:
            if name == b"retry-after" or (ratelimit and name in _PASS):
                out.append((name.decode("latin-1"), value.decode("latin-1")))
        return out

    def take_body(self, ctx: Any, body: bytes) -> bytes:
        """The answer in the client's dialect (or OpenAI's embeddings ``list``); usage to ``ctx.usage``."""
        if ctx.endpoint == "embeddings":
            return self._embeddings(ctx, body)
        return bridge.answer_body(ctx, _answer(body, ctx.fields.model))

    def _embeddings(self, ctx: Any, body: bytes) -> bytes:
        req = openai_embeddings.decode_request(ctx.body)
        try:
            vectors, tokens = xlate.embeddings_from_body(body, req.texts)
        except _DECODE_ERRORS:
            raise errors.BadGateway("The upstream provider returned a body that is not a Cohere embed "
                                    "answer", code="upstream_invalid_response") from None
        ctx.usage = openai_usage(ir.Usage(input_tokens=tokens))
        return openai_embeddings.encode_response(vectors, req.model, tokens, req.encoding_format == "base64")

    def body_as_stream(self, ctx: Any, resp: UpstreamResponse, body: bytes) -> bytes:
        """A stream request answered with one JSON body: the client's stream of it."""
        return bridge.answer_as_stream(ctx, _answer(body, ctx.fields.model))

    def stream_relay(self, ctx: Any) -> BridgeRelay:
        return BridgeRelay(ctx, xlate.CohereStream(ctx.fields.model))

    def client_error(self, ctx: Any, status: int, body: bytes) -> tuple[int, bytes] | None:
        return bridge.error_answer(self, ctx, status, body)

    def error_answer(self, status: int, body: bytes) -> tuple[int, bytes] | None:
        err = xlate.error_from_response(status, body)
        return err.status, OPENAI_CHAT.provider_error_body(err, "")

    # -- this wire's IR codecs (gateway.providers.bridge) ----------------------------------------------
    #
    # A Cohere answer names no model: the per-request methods above put the client's in; the codecs
    # leave it empty.

    def ir_request(self, req: ir.Request, upstream_model: str) -> bytes:
        return xlate.encode_request(req, upstream_model)

    def ir_response(self, body: bytes) -> ir.Response:
        return _answer(body, "")

    def ir_stream(self) -> xlate.CohereStream:
        return xlate.CohereStream("")

    def ir_error(self, status: int, body: bytes) -> ir.ProviderError:
        return xlate.error_from_response(status, body)


def _answer(body: bytes, model: str) -> ir.Response:
    try:
        return xlate.response_from_body(body, model)
    except _DECODE_ERRORS:
        raise errors.BadGateway("The upstream provider returned a body that is not a Cohere chat answer",
                                code="upstream_invalid_response") from None
    except xlate.FailedAnswer as exc:
        raise gateway_error(exc.error) from None
