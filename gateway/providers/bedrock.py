"""Translator for Amazon Bedrock upstreams (Converse, ConverseStream, InvokeModel embeddings).

Every client dialect (OpenAI chat, Anthropic Messages, OpenAI Responses) is translated through the IR
(``gateway.providers.bridge``, the client-dialect seam of ``gateway.dialects.base``); embeddings are
OpenAI's:

    client body ──dialect.decode_request──▶ ir.Request ──bedrock_translate.encode_request──▶ /converse
    answer      ◀─dialect.encode_response── ir.Response ◀─bedrock_translate.response_from_body── body
    chunks      ◀─dialect.stream_encoder─── IR events   ◀─bedrock_translate.BedrockStream── event-stream

Theory of operation
-------------------
The model id is in Bedrock's paths (``/model/{modelId}/converse``), so, like Azure's deployments, each
upstream model gets its own translator (``for_model``, built once at config load) with its request heads
prebuilt: one for ``converse``, one for ``converse-stream``, one for ``invoke`` (embeddings).

Converse and ConverseStream take the same body at different paths: the engine's ``send`` carries the
client's ``stream`` flag beside the endpoint, and a stream request is signed for and sent to the
``stream`` path (``converse-stream``).

Per request, the body is signed (``gateway.providers.aws.SigV4Signer``, botocore's SigV4) with the
credentials frozen by the refresh task, and the signature headers are added to the prebuilt head:
signing costs a payload hash and an HMAC chain, and nothing else (no credential lookup, no STS call). A
provider with ``api_key`` (a Bedrock API key) sends ``Authorization: Bearer`` instead and signs nothing.

ConverseStream answers ``application/vnd.amazon.eventstream`` (binary framing, parsed by the compiled
``gateway._core.awsevent`` decoder), translated to OpenAI chunks as each message arrives.
"""

from __future__ import annotations

import os
from typing import Any, Final
from urllib.parse import quote

import msgspec

from gateway import errors, ir
from gateway._core.http import build_request
from gateway.dialects import openai_embeddings
from gateway.dialects.openai_chat import OPENAI_CHAT
from gateway.providers import bedrock_translate as xlate
from gateway.providers import bridge
from gateway.providers.aws import AwsCredentials, SigV4Signer
from gateway.providers.base import Transport, UpstreamResponse
from gateway.providers.bridge import BridgeRelay, gateway_error, openai_usage
from gateway.providers.openai import OpenAITranslator

__all__ = [
    "DEFAULT_FORWARD_HEADERS",
    "BedrockTranslator",
    "bedrock_translator",
    "default_base_url",
]

#: client headers a Bedrock upstream gets by default: none (Bedrock reads no client header)
DEFAULT_FORWARD_HEADERS: Final[tuple[str, ...]] = ()
#: upstream headers passed to the client as they are
_PASS: Final = (b"retry-after", b"x-amzn-requestid", b"x-amzn-bedrock-invocation-latency")
_DECODE_ERRORS: Final = (msgspec.DecodeError, msgspec.ValidationError, RecursionError)


def default_base_url(region: str) -> str:
    return f"https://bedrock-runtime.{region}.amazonaws.com"


class BedrockTranslator(OpenAITranslator):
    """One per ``type = "bedrock"`` provider, and one per upstream model (``for_model``)."""

    __slots__ = ("_credentials", "_signer", "_upstream", "region")

    def __init__(
        self,
        name: str,
        transport: Transport,
        path_prefix: str,
        region: str,
        credentials: AwsCredentials | None,
        api_key: str | None,
        extra_headers: dict[str, str],
        model: str | None = None,
    ) -> None:
        headers = [("content-type", "application/json"), ("accept", "application/json"),
                   ("user-agent", "llm-gateway")]
        if api_key:
            headers.append(("authorization", f"Bearer {api_key}"))
        headers.extend((k.lower(), v) for k, v in extra_headers.items())
        self.region = region
        self._credentials = credentials
        self._upstream = model
        paths: dict[str, str] = {}
        if model is not None:
            base = f"{path_prefix}/model/{quote(model, safe='')}"
            paths = {"chat": base + "/converse", "messages": base + "/converse",
                     "responses": base + "/converse", "stream": base + "/converse-stream",
                     "embeddings": base + "/invoke"}
        super().__init__(name, transport, path_prefix, None, {}, paths=paths, headers=headers)
        self.model_in_path = model is not None
        self.forward_headers(list(DEFAULT_FORWARD_HEADERS))
        self._build_heads()
        pool = self._pool
        self._signer: SigV4Signer | None = None
        if credentials is not None and not api_key:
            host = pool.host_header if pool is not None else "localhost"
            scheme = pool.scheme if pool is not None else "https"
            self._signer = SigV4Signer(credentials, region, f"{scheme}://{host}", host)

    def for_model(self, model: str) -> BedrockTranslator:
        """The translator of upstream model ``model`` (its paths and heads), built once per model."""
        child = self._models.get(model)
        if child is None:
            child = BedrockTranslator(self.name, self.transport, self._prefix, self.region, self._credentials,
                                      None, {}, model)
            child._headers = self._headers
            child._signer = self._signer
            child._forward = self._forward
            child.secrets = self.secrets
            child._build_heads()
            self._models[model] = child
        return child  # type: ignore[return-value]

    def _build_heads(self) -> None:
        # PERF: request line and fixed headers per path, built once; the signature is added per request
        pool = self._pool
        self._heads = {} if pool is None else {
            k: pool.build_head("POST", p, self._headers, -1) for k, p in self._paths.items()}

    # -- sending: the path by the stream flag, the signature headers per request ----------------------

    def _request(self, endpoint: str, body: bytes, stream: bool,
                 extra: list[tuple[str, str]] | None) -> tuple[str, bytes | None, list[tuple[str, str]]]:
        """(path key, prebuilt head or None, signature headers) of one request."""
        key = "stream" if stream else endpoint
        if key not in self._paths:
            raise errors.BadRequest(f"Bedrock has no {endpoint} endpoint", code="unsupported_endpoint")
        signer = self._signer
        signed: list[tuple[str, str]] = []
        if signer is not None:
            creds = self._credentials
            if creds is not None:
                creds.start()  # PERF: an attribute check once started
            signed = signer.headers(self._paths[key], body)
        head = self._heads.get(key) if extra is None else None
        return key, head, signed

    def _wire(self, endpoint: str, body: bytes, request_id: str,
              extra: list[tuple[str, str]] | None, stream: bool) -> bytes:
        key, head, signed = self._request(endpoint, body, stream, extra)
        pool = self._pool
        assert pool is not None
        if head is None:
            head = pool.build_head("POST", self._paths[key], self.merge_headers(extra or []), -1)
        tail = "".join(f"{k}: {v}\r\n" for k, v in signed).encode("latin-1")
        return build_request(head + tail + b"x-request-id: ", request_id, body)

    def send(self, endpoint: str, body: bytes, request_id: str,
             extra: list[tuple[str, str]] | None = None, stream: bool = False) -> Any:
        pool = self._pool
        if pool is not None:
            return pool.send_data(self._wire(endpoint, body, request_id, extra, stream))
        key, _, signed = self._request(endpoint, body, stream, extra)
        headers = [*self.merge_headers(extra or []), *signed, ("x-request-id", request_id)]
        return self.transport.request("POST", self._paths[key], headers, body)

    def send_cb(self, endpoint: str, body: bytes, request_id: str, cb: Any,
                extra: list[tuple[str, str]] | None = None, stream: bool = False) -> bool:
        pool = self._pool
        if pool is None:
            return False
        return bool(pool.send_cb(self._wire(endpoint, body, request_id, extra, stream), cb))

    def send_within(self, endpoint: str, body: bytes, request_id: str, connect_timeout: float,
                    extra: list[tuple[str, str]] | None = None, stream: bool = False) -> Any:
        pool = self._pool
        if pool is not None:
            return pool.send_within(self._wire(endpoint, body, request_id, extra, stream), connect_timeout)
        return self.send(endpoint, body, request_id, extra, stream)

    async def close(self) -> None:
        if self._credentials is not None and self._upstream is None:
            await self._credentials.close()
        await super().close()

    # -- translating ----------------------------------------------------------------------------------

    def request_body(self, ctx: Any, upstream_model: str, rewrite: bool) -> bytes:
        """The Converse request (a ConverseStream one's too: only its path differs), or the InvokeModel
        embeddings body."""
        if ctx.endpoint == "embeddings":
            req = openai_embeddings.decode_request(ctx.body)
            return xlate.embedding_request(upstream_model, req.texts, req.dimensions)
        bridge.check_endpoint(ctx, "Amazon Bedrock",
                              "/v1/chat/completions and /v1/embeddings are available for it")
        return bridge.request_body(self, ctx, upstream_model)

    def pass_headers(
        self, resp: UpstreamResponse, ratelimit: bool, out: list[tuple[str, str]]
    ) -> list[tuple[str, str]]:
        for name, value in resp.headers:
            if name in _PASS:
                out.append((name.decode("latin-1"), value.decode("latin-1")))
        return out

    def take_body(self, ctx: Any, body: bytes) -> bytes:
        """The answer in the client's dialect (or OpenAI's embeddings ``list``); usage to ``ctx.usage``."""
        if ctx.endpoint == "embeddings":
            return self._embeddings(ctx, body)
        return bridge.answer_body(ctx, _answer(body, "chatcmpl-" + ctx.request_id, ctx.fields.model))

    def _embeddings(self, ctx: Any, body: bytes) -> bytes:
        req = openai_embeddings.decode_request(ctx.body)
        model = self._upstream or req.model
        try:
            answer = xlate.embeddings_from_body(model, body, req.texts)
        except _DECODE_ERRORS:
            raise errors.BadGateway("The upstream provider returned a body that is not a Bedrock embedding "
                                    "answer", code="upstream_invalid_response") from None
        ctx.usage = openai_usage(ir.Usage(input_tokens=answer.prompt_tokens))
        return openai_embeddings.encode_response(answer.vectors, req.model, answer.prompt_tokens,
                                                 req.encoding_format == "base64")

    def body_as_stream(self, ctx: Any, resp: UpstreamResponse, body: bytes) -> bytes:
        """A stream request answered with one JSON body: the client's stream of it."""
        return bridge.answer_as_stream(ctx, _answer(body, "chatcmpl-" + ctx.request_id, ctx.fields.model))

    def stream_relay(self, ctx: Any) -> BridgeRelay:
        return BridgeRelay(ctx, xlate.BedrockStream("chatcmpl-" + ctx.request_id, ctx.fields.model))

    def client_error(self, ctx: Any, status: int, body: bytes) -> tuple[int, bytes] | None:
        return bridge.error_answer(self, ctx, status, body)

    def error_answer(self, status: int, body: bytes) -> tuple[int, bytes] | None:
        """Bedrock's error as the OpenAI error (``bedrock_translate.ERROR_TYPES``)."""
        err = xlate.error_from_response(status, body)
        return err.status, OPENAI_CHAT.provider_error_body(err, "")

    # -- this wire's IR codecs (gateway.providers.bridge) ----------------------------------------------
    #
    # A Converse answer carries neither an id nor the model: the per-request methods above put the
    # request's in; the codecs leave them empty.

    def ir_request(self, req: ir.Request, upstream_model: str) -> bytes:
        return xlate.encode_request(req, upstream_model)

    def ir_response(self, body: bytes) -> ir.Response:
        return _answer(body, "", "")

    def ir_stream(self) -> xlate.BedrockStream:
        return xlate.BedrockStream("", "")

    def ir_error(self, status: int, body: bytes) -> ir.ProviderError:
        return xlate.error_from_response(status, body)

    def credential_failure(self, status: int, body: bytes) -> bool:
        """AWS answers an unknown key, a bad signature or an expired token with 403 too."""
        return xlate.credential_failure(status, body)


def _answer(body: bytes, response_id: str, model: str) -> ir.Response:
    try:
        return xlate.response_from_body(body, response_id, model)
    except _DECODE_ERRORS:
        raise errors.BadGateway("The upstream provider returned a body that is not a Converse answer",
                                code="upstream_invalid_response") from None
    except xlate.MalformedAnswer as exc:
        raise gateway_error(exc.error) from None


def bedrock_translator(name: str, p: Any, transport: Transport) -> BedrockTranslator:
    """The translator of a ``type = "bedrock"`` provider (``gateway.engine.build_translator``): a Bedrock
    API key (``api_key``) as a bearer token, else SigV4 with credentials resolved now (config load)."""
    from gateway.config.loader import resolve_secret
    from gateway.providers.aws import resolve_credentials

    region = p.region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or ""
    prefix = getattr(transport, "prefix", "")
    if p.api_key:
        return BedrockTranslator(name, transport, prefix, region, None, resolve_secret(p.api_key), p.headers)
    key_id, secret, token = (resolve_secret(ref) if ref else None
                             for ref in (p.aws_access_key_id, p.aws_secret_access_key, p.aws_session_token))
    creds = resolve_credentials(p.aws_profile, key_id, secret, token)
    return BedrockTranslator(name, transport, prefix, region, AwsCredentials(creds), None, p.headers)
