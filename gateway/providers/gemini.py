"""Translators for Google upstreams: the Gemini API (``type = "gemini"``, AI Studio) and Vertex AI
(``type = "vertex"``: Gemini models, and Anthropic's Claude models on Vertex), behind a client of any
dialect. Every client dialect (OpenAI chat, Anthropic Messages, OpenAI Responses) is translated through
the IR (``gateway.providers.bridge``, the client-dialect seam of ``gateway.dialects.base``); embeddings
are OpenAI's:

    client body ──dialect.decode_request──▶ ir.Request ──gemini_translate.encode_request──▶ upstream
    answer      ◀─dialect.encode_response── ir.Response ◀─gemini_translate.response_from_body── body
    chunks      ◀─dialect.stream_encoder─── IR events   ◀─gemini_translate.GeminiStream────── SSE
    embeddings  ──gemini_translate.embed_request / predict_request──▶ :batchEmbedContents / :predict

Paths name the model, so each upstream model gets its own translator (``for_model``, built once at
config load, sharing the provider's connection pool and credentials) with its request heads prebuilt:

    gemini   {base}/models/{model}:generateContent      (base: https://generativelanguage.googleapis.com/v1beta)
             {base}/models/{model}:streamGenerateContent?alt=sse
             {base}/models/{model}:batchEmbedContents
    vertex   {base}/projects/{project}/locations/{location}/publishers/google/models/{model}:generateContent
             (base: https://{location}-aiplatform.googleapis.com/v1; the ``global`` location:
             https://aiplatform.googleapis.com/v1), :streamGenerateContent?alt=sse, :predict (embeddings)
             .../publishers/anthropic/models/{claude model}:rawPredict / :streamRawPredict

An upstream model id with a ``/`` is a resource path of its own (``tunedModels/…``, ``endpoints/…``) and
is used as it is below the base (Gemini) or the location (Vertex).

Stream or not: Gemini (and Claude on Vertex) streams on another path. The engine's ``send`` carries the
client's ``stream`` flag beside the endpoint, and a stream request goes with the prebuilt head of the
``stream`` path (``:streamGenerateContent?alt=sse``, ``:streamRawPredict``); the body is the same.

Credentials: Gemini's API key goes in ``x-goog-api-key``. Vertex takes an OAuth bearer token from
``google-auth`` (``google_auth.TokenSource``: refreshed by a background task ahead of expiry, never on a
request); a request only compares the token it has with the one its prebuilt heads carry.

Claude on Vertex: the Anthropic translator's request with ``model`` removed (the path names it) and
``anthropic_version: "vertex-2023-10-16"`` in the body; the answer and stream are Anthropic's own (a
Messages client's pass through, the other dialects' are translated). Vertex's own errors (quota,
permissions: google.rpc bodies with a ``status`` name) are read by the Gemini codec, in every dialect.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable
from typing import Any, Final
from urllib.parse import quote

import msgspec

from gateway import errors, ir
from gateway.config import ProviderConfig, resolve_secret
from gateway.dialects import openai_embeddings
from gateway.dialects.openai_chat import OPENAI_CHAT
from gateway.providers import anthropic_translate as anthropic_xlate
from gateway.providers import bridge
from gateway.providers import gemini_translate as xlate
from gateway.providers.anthropic import AnthropicTranslator
from gateway.providers.base import Transport, UpstreamResponse
from gateway.providers.bridge import BridgeRelay, gateway_error, openai_usage
from gateway.providers.google_auth import TokenSource
from gateway.providers.openai import OpenAITranslator
from gateway.providers.schemas import gemini as gemini_wire
from gateway.server.pool import HeadCallback
from gateway.wire import encode, top_level_decoder

__all__ = [
    "DEFAULT_BASE_URL",
    "DEFAULT_LOCATION",
    "VERTEX_ANTHROPIC_VERSION",
    "GeminiTranslator",
    "VertexAnthropicTranslator",
    "default_base_url",
    "google_translator",
    "vertex_base_url",
]

DEFAULT_BASE_URL: Final = "https://generativelanguage.googleapis.com/v1beta"
DEFAULT_LOCATION: Final = "us-central1"
#: the ``anthropic_version`` Claude on Vertex AI takes in the body
VERTEX_ANTHROPIC_VERSION: Final = "vertex-2023-10-16"

_PASS: Final = (b"retry-after",)
_DECODE_ERRORS: Final = (msgspec.DecodeError, msgspec.ValidationError, RecursionError)
_VERTEX_VERSION: Final = msgspec.Raw(encode(VERTEX_ANTHROPIC_VERSION))


def vertex_base_url(location: str) -> str:
    """Vertex AI's regional endpoint for ``location`` (``global`` has the host without a region)."""
    if location == "global":
        return "https://aiplatform.googleapis.com/v1"
    return f"https://{location}-aiplatform.googleapis.com/v1"


def _model_path(model: str) -> str:
    return quote(model, safe="/") if "/" in model else "models/" + quote(model, safe="")


def _vertex_path(prefix: str, project: str, location: str, publisher: str, model: str) -> str:
    where = f"{prefix}/projects/{quote(project, safe='')}/locations/{quote(location, safe='')}/"
    if "/" in model:
        return where + quote(model, safe="/@")
    return f"{where}publishers/{publisher}/models/{quote(model, safe='@')}"  # versions: claude-...@2025...


# ---- shared plumbing: the stream path and the bearer token -----------------------------------------
#
# Both Google translator classes (one derives from OpenAITranslator, the other from AnthropicTranslator)
# take these as their methods. Fields they use: ``_auth`` (TokenSource or None), ``_auth_value`` (the
# header the heads were built with), ``_base`` (the headers without it).


def _auth_ok(self: Any) -> bool:
    """The heads carry the current token (rebuilt when it changed); False when there is none yet."""
    auth: TokenSource | None = self._auth
    if auth is None:
        return True
    value = auth.header
    if value is not None and value is self._auth_value:
        return True  # PERF: the usual case, one identity check
    value = auth.current()
    if value is None:
        return False
    _set_auth(self, value)
    return True


def _set_auth(self: Any, value: str) -> None:
    self._auth_value = value
    self._headers = [*self._base, ("authorization", value)]
    pool = self._pool
    if pool is not None:
        self._heads = {ep: pool.build_head("POST", path, self._headers, -1) + b"x-request-id: "
                       for ep, path in self._paths.items()}


async def _send_later(self: Any, endpoint: str, body: bytes, request_id: str,
                      extra: list[tuple[str, str]] | None, connect_timeout: float | None) -> UpstreamResponse:
    """The first requests of a worker: wait for the first token, then send (``endpoint`` is the path key
    already: ``stream`` for a stream request)."""
    _set_auth(self, await self._auth.ready())
    if connect_timeout is not None:
        return await OpenAITranslator.send_within(self, endpoint, body, request_id, connect_timeout, extra)
    return await OpenAITranslator.send(self, endpoint, body, request_id, extra)


def _send(self: Any, endpoint: str, body: bytes, request_id: str,
          extra: list[tuple[str, str]] | None = None, stream: bool = False) -> Awaitable[UpstreamResponse]:
    endpoint = "stream" if stream else endpoint  # PERF: the stream path's prebuilt head
    if not _auth_ok(self):
        return _send_later(self, endpoint, body, request_id, extra, None)
    return OpenAITranslator.send(self, endpoint, body, request_id, extra)


def _send_cb(self: Any, endpoint: str, body: bytes, request_id: str, cb: HeadCallback,
             extra: list[tuple[str, str]] | None = None, stream: bool = False) -> bool:
    if not _auth_ok(self):
        return False  # the engine sends it by the coroutine path, which waits for the token
    return OpenAITranslator.send_cb(self, "stream" if stream else endpoint, body, request_id, cb, extra)


def _send_within(
    self: Any, endpoint: str, body: bytes, request_id: str, connect_timeout: float,
    extra: list[tuple[str, str]] | None = None, stream: bool = False,
) -> Awaitable[UpstreamResponse]:
    endpoint = "stream" if stream else endpoint
    if not _auth_ok(self):
        return _send_later(self, endpoint, body, request_id, extra, connect_timeout)
    return OpenAITranslator.send_within(self, endpoint, body, request_id, connect_timeout, extra)


async def _probe(self: Any, method: str, path: str, body: bytes) -> UpstreamResponse:
    if self._auth is not None and not _auth_ok(self):
        _set_auth(self, await self._auth.ready())
    return await OpenAITranslator.probe(self, method, path, body)


def _retry_headers(resp: UpstreamResponse, out: list[tuple[str, str]]) -> list[tuple[str, str]]:
    for name, value in resp.headers:
        if name in _PASS:
            out.append((name.decode("latin-1"), value.decode("latin-1")))
    return out


# ---- Gemini models ---------------------------------------------------------------------------------


class GeminiTranslator(OpenAITranslator):
    """``type = "gemini"`` and Gemini models on ``type = "vertex"``: every client dialect and OpenAI
    embeddings in.

    The provider's own instance (``model`` None) only answers health probes and makes the per-model
    ones (``for_model``)."""

    __slots__ = ("_auth", "_auth_value", "_base", "_model", "_vertex")

    def __init__(
        self,
        name: str,
        transport: Transport,
        path_prefix: str,
        headers: list[tuple[str, str]],
        *,
        model: str | None = None,
        auth: TokenSource | None = None,
        vertex: tuple[str, str] | None = None,
    ) -> None:
        self._auth = auth
        self._auth_value: str | None = None
        self._base = headers
        self._model = model
        #: Vertex AI: (project, location); None for the Gemini API
        self._vertex = vertex
        paths: dict[str, str] = {}
        if model is not None:
            if vertex is not None:
                project, location = vertex
                base = _vertex_path(path_prefix, project, location, "google", model)
            else:
                base = f"{path_prefix}/{_model_path(model)}"
            generate = base + ":generateContent"
            paths = {
                "chat": generate,
                "messages": generate,
                "responses": generate,
                "stream": base + ":streamGenerateContent?alt=sse",
                "embeddings": base + (":predict" if vertex is not None else ":batchEmbedContents"),
            }
        super().__init__(name, transport, path_prefix, None, {}, paths=paths, headers=list(headers))
        self.model_in_path = model is not None
        self.forward_headers([])

    send = _send
    send_cb = _send_cb
    send_within = _send_within
    probe = _probe

    def for_model(self, model: str) -> OpenAITranslator:
        """The translator of upstream ``model`` (built once; Claude models on Vertex: the Anthropic one)."""
        if self._model is not None:
            return self
        child = self._models.get(model)
        if child is None:
            if self._vertex is not None and model.rpartition("/")[2].startswith("claude"):
                child = VertexAnthropicTranslator(self.name, self.transport, self._prefix, self._base,
                                                  model, self._vertex, self._auth)
            else:
                child = GeminiTranslator(self.name, self.transport, self._prefix, self._base, model=model,
                                         auth=self._auth, vertex=self._vertex)
                child._forward = self._forward
            child.secrets = self.secrets
            self._models[model] = child
        return child

    async def close(self) -> None:
        if self._model is None and self._auth is not None:
            await self._auth.close()
        await super().close()

    # -- translating --------------------------------------------------------------------------------

    def request_body(self, ctx: Any, upstream_model: str, rewrite: bool) -> bytes:
        """The ``generateContent`` request (a stream's too: only its path differs), or the embeddings
        request."""
        if ctx.endpoint == "embeddings":
            req = openai_embeddings.decode_request(ctx.body)
            if self._vertex is not None:
                return xlate.predict_request(req.texts, req.dimensions)
            return xlate.embed_request(req.texts, upstream_model, req.dimensions)
        bridge.check_endpoint(ctx, "Gemini",
                              "use /v1/chat/completions (or /v1/embeddings with an embedding model)")
        return bridge.request_body(self, ctx, upstream_model)

    def pass_headers(
        self, resp: UpstreamResponse, ratelimit: bool, out: list[tuple[str, str]]
    ) -> list[tuple[str, str]]:
        """``retry-after`` as it is (Gemini sends no rate-limit headers)."""
        return _retry_headers(resp, out)

    def take_body(self, ctx: Any, body: bytes) -> bytes:
        if ctx.endpoint == "embeddings":
            return self._embeddings(ctx, body)
        return bridge.take_body(self, ctx, body)

    def body_as_stream(self, ctx: Any, resp: UpstreamResponse, body: bytes) -> bytes:
        """A stream request answered with one JSON body: the client's stream of it."""
        return bridge.body_as_stream(self, ctx, body)

    def stream_relay(self, ctx: Any) -> BridgeRelay:
        return BridgeRelay(ctx, xlate.GeminiStream())

    def client_error(self, ctx: Any, status: int, body: bytes) -> tuple[int, bytes] | None:
        return bridge.error_answer(self, ctx, status, body)

    def error_answer(self, status: int, body: bytes) -> tuple[int, bytes] | None:
        """The google.rpc error (or a body of another shape, by its status) as the OpenAI error."""
        err = xlate.error_from_response(status, body)
        return err.status, OPENAI_CHAT.provider_error_body(err, "")

    # -- this wire's IR codecs (gateway.providers.bridge) ----------------------------------------------

    def ir_request(self, req: ir.Request, upstream_model: str) -> bytes:
        return xlate.encode_request(req, upstream_model)

    def ir_response(self, body: bytes) -> ir.Response:
        return _answer(body)

    def ir_stream(self) -> xlate.GeminiStream:
        return xlate.GeminiStream()

    def ir_error(self, status: int, body: bytes) -> ir.ProviderError:
        return xlate.error_from_response(status, body)

    def _embeddings(self, ctx: Any, body: bytes) -> bytes:
        req = openai_embeddings.decode_request(ctx.body)
        texts = req.texts
        try:
            if self._vertex is not None:
                vectors, tokens = xlate.vectors_from_predict(body)
            else:
                vectors = xlate.vectors_from_embed(body)
                # the Gemini API reports no usage for embeddings: estimated, 4 characters a token
                tokens = sum(math.ceil(len(t) / 4) for t in texts)
        except _DECODE_ERRORS:
            raise errors.BadGateway("The upstream provider returned a body that is not an embeddings answer",
                                    code="upstream_invalid_response") from None
        if len(vectors) != len(texts):
            raise errors.BadGateway(f"The upstream provider returned {len(vectors)} embeddings for "
                                    f"{len(texts)} inputs", code="upstream_invalid_response")
        ctx.usage = openai_usage(ir.Usage(input_tokens=tokens))
        return openai_embeddings.encode_response(vectors, self._model or "", tokens,
                                                 req.encoding_format == "base64")


def _answer(body: bytes) -> ir.Response:
    try:
        answer = xlate.response_from_body(body)
    except _DECODE_ERRORS:
        raise errors.BadGateway(
            "The upstream provider returned a response body that is not a Gemini answer",
            code="upstream_invalid_response",
        ) from None
    if isinstance(answer, ir.ProviderError):
        raise gateway_error(answer)
    return answer


# ---- Claude on Vertex ------------------------------------------------------------------------------


class VertexAnthropicTranslator(AnthropicTranslator):
    """A Claude model on Vertex AI: the Anthropic translation on Vertex's paths and credentials."""

    __slots__ = ("_auth", "_auth_value", "_base", "_vertex_args")

    def __init__(
        self,
        name: str,
        transport: Transport,
        path_prefix: str,
        headers: list[tuple[str, str]],
        model: str,
        vertex: tuple[str, str],
        auth: TokenSource | None,
        sampling: anthropic_xlate.Sampling = "all",
    ) -> None:
        self._vertex_args = (name, transport, path_prefix, headers, model, vertex, auth)
        self._children: dict[str, AnthropicTranslator] = {}
        self.sampling: anthropic_xlate.Sampling = sampling
        self._auth = auth
        self._auth_value: str | None = None
        self._base = headers
        self._beta: list[str] = []
        project, location = vertex
        base = _vertex_path(path_prefix, project, location, "anthropic", model)
        raw = base + ":rawPredict"
        paths = {"chat": raw, "messages": raw, "responses": raw, "stream": base + ":streamRawPredict"}
        OpenAITranslator.__init__(self, name, transport, path_prefix, None, {}, paths=paths,
                                  headers=list(headers))
        self.model_in_path = True
        self.forward_headers(["anthropic-beta"])

    send = _send
    send_cb = _send_cb
    send_within = _send_within
    probe = _probe

    def with_sampling(self, sampling: anthropic_xlate.Sampling) -> AnthropicTranslator:
        """This translator, or one on the same paths and credentials that sends ``sampling``."""
        if sampling == self.sampling:
            return self
        child = self._children.get(sampling)
        if child is None:
            child = VertexAnthropicTranslator(*self._vertex_args, sampling=sampling)
            self._children[sampling] = child
            child._forward = self._forward
            child.secrets = self.secrets
        return child

    def request_body(self, ctx: Any, upstream_model: str, rewrite: bool) -> bytes:
        """The Messages API request without ``model`` and with Vertex's ``anthropic_version``."""
        top = top_level_decoder.decode(super().request_body(ctx, upstream_model, rewrite))
        top.pop("model", None)
        top["anthropic_version"] = _VERTEX_VERSION
        return encode(top)

    def client_error(self, ctx: Any, status: int, body: bytes) -> tuple[int, bytes] | None:
        """Vertex's own google.rpc error in the client's dialect (a Messages client's too); Anthropic's
        as the Anthropic translator answers it."""
        if _is_vertex_error(body):
            return bridge.error_answer(self, ctx, status, body)
        return super().client_error(ctx, status, body)

    def error_answer(self, status: int, body: bytes) -> tuple[int, bytes] | None:
        """Anthropic's error body, or Vertex's own google.rpc one, as the OpenAI error."""
        err = self.ir_error(status, body)
        return err.status, OPENAI_CHAT.provider_error_body(err, "")

    def ir_error(self, status: int, body: bytes) -> ir.ProviderError:
        """Anthropic's error, or Vertex's own google.rpc one as the Gemini codec reads it."""
        if _is_vertex_error(body):
            return xlate.error_from_response(status, body)
        return super().ir_error(status, body)


def _is_vertex_error(body: bytes) -> bool:
    """A google.rpc error body (it has a ``status`` name; Anthropic's errors have none)."""
    env = gemini_wire.decode_error(body)
    return env is not None and bool(env.error.status)


# ---- construction (the engine's build_translator) ----------------------------------------------------


def _headers(extra: dict[str, str], api_key: str | None) -> list[tuple[str, str]]:
    headers = [("content-type", "application/json"), ("user-agent", "llm-gateway")]
    if api_key:
        headers.append(("x-goog-api-key", api_key))
    headers.extend((k.lower(), v) for k, v in extra.items())
    return headers


def default_base_url(p: ProviderConfig) -> str:
    """A ``gemini`` or ``vertex`` provider's base URL: its own, else Google's (Vertex: by location)."""
    if p.base_url is not None:
        return p.base_url
    if p.type == "vertex":
        return vertex_base_url(p.location or DEFAULT_LOCATION)
    return DEFAULT_BASE_URL


def google_translator(name: str, p: ProviderConfig, transport: Transport, prefix: str) -> GeminiTranslator:
    """The translator of a ``type = "gemini"`` or ``"vertex"`` provider; ``prefix``: its base URL's path.

    Vertex credentials are loaded here (a key file, or Application Default Credentials, which may ask
    the metadata server once); their first token is fetched by the refresh task, not here."""
    if p.type == "gemini":
        key = resolve_secret(p.api_key) if p.api_key else None
        return GeminiTranslator(name, transport, prefix, _headers(p.headers, key))
    from google.auth.exceptions import GoogleAuthError

    from gateway.providers.google_auth import load_credentials

    try:
        credentials, found_project = load_credentials(p.credentials_file)
    except (GoogleAuthError, OSError, ValueError) as exc:
        raise ValueError(f"providers.{name}: cannot load Google credentials: {exc}") from None
    project = p.project or found_project
    if not project:
        raise ValueError(f"providers.{name}: no project: set project (the credentials name none)")
    return GeminiTranslator(name, transport, prefix, _headers(p.headers, None), auth=TokenSource(credentials),
                            vertex=(project, p.location or DEFAULT_LOCATION))
