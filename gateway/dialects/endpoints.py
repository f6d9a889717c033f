"""Endpoints a dialect has besides generation, answered by the engine on the dialect's behalf.

- ``POST /v1/messages/count_tokens`` (Anthropic): the tokens of a Messages request's system prompt,
  tools and messages. Exact when the model's upstream has its own endpoint (an Anthropic upstream:
  the request goes to its ``/v1/messages/count_tokens`` with the model id rewritten, and its answer
  comes back as it is); otherwise a local estimate (``estimate_input_tokens``), documented in
  ``docs/dialects.md``. The caller's key needs the ``messages`` scope and access to the model; no
  limit or budget is charged (Anthropic rate-limits counting apart from generation).
- ``GET /v1/models`` in Anthropic's shape, for the ``anthropic`` SDK (it sends ``anthropic-version``).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import unquote

import msgspec

from gateway import errors, ir
from gateway.dialects.anthropic_messages import decode_count_request
from gateway.phases import Reply
from gateway.providers.base import UpstreamError, UpstreamTimeout
from gateway.wire import encode, top_level_decoder

if TYPE_CHECKING:
    from gateway.app import Responder
    from gateway.context import Context
    from gateway.engine import Engine, Runtime, Target
    from gateway.limits.tokens import TokenCounter

__all__ = ["IMAGE_TOKENS", "anthropic_models", "dialect_endpoint", "estimate_input_tokens"]

#: the local estimate of one image: Anthropic's ceiling for an image it does not downscale
#: (about 1.15 megapixels, width x height / 750)
IMAGE_TOKENS: Final = 1600
#: the local estimate's framing per message and per tool definition (role markers, separators)
_PER_MESSAGE: Final = 4
_PER_TOOL: Final = 8
_COUNT_ENDPOINT: Final = "count_tokens"

_counter: TokenCounter | None = None


async def dialect_endpoint(engine: Engine, ctx: Context, responder: Responder, endpoint: str) -> None:
    """Answer a dialect's own endpoint (the only one today: ``count_tokens``)."""
    if endpoint != _COUNT_ENDPOINT:
        raise errors.NotFound(f"Unknown request URL: POST {ctx.request.path}", code="unknown_url")
    await _count_tokens(engine, ctx, responder)


async def _count_tokens(engine: Engine, ctx: Context, responder: Responder) -> None:
    access = engine._access
    if access is not None:
        await access.check(ctx, "messages")  # the scope of the dialect's requests
    ctx.endpoint = "messages"
    engine._parse(ctx)  # the checks of every request body: type, emptiness, depth, repeated keys
    ctx.endpoint = _COUNT_ENDPOINT
    req = decode_count_request(ctx.body)
    runtime: Runtime = ctx.runtime
    model = runtime.models.get(req.model)
    key = ctx.key
    if model is None or (key is not None and not (key.models.allows(req.model)
                                                   and key.tenant.models.allows(req.model))):
        raise runtime.unknown_model(req.model)
    ctx.model = model
    target = model.target or next(iter(model.targets.values()), None)
    if target is not None and _COUNT_ENDPOINT in getattr(target.translator, "_paths", {}):
        await _upstream_count(engine, ctx, responder, target)
        return
    tokens = await estimate_input_tokens(req)
    headers = [("content-type", "application/json"), ("request-id", ctx.request_id)]
    engine._reply(ctx, responder, Reply(200, encode({"input_tokens": tokens}), headers))


async def _upstream_count(engine: Engine, ctx: Context, responder: Responder, target: Target) -> None:
    """The upstream's own count: the client's body, the model id rewritten when it differs."""
    ctx.target = target
    body = ctx.body
    if target.upstream_model != ctx.model.name:  # type: ignore[union-attr]
        top = top_level_decoder.decode(body)
        top["model"] = msgspec.Raw(encode(target.upstream_model))
        body = encode(top)
    translator = target.translator
    ctx.t_up = time.perf_counter()
    try:
        resp = await translator.send(_COUNT_ENDPOINT, body, ctx.request_id, translator.forwarded(ctx.request))
        try:
            data = await resp.read()
        finally:
            resp.close()
    except UpstreamTimeout as exc:
        raise errors.GatewayTimeout(f"The upstream provider timed out: {exc}") from None
    except UpstreamError as exc:
        raise errors.BadGateway(f"The upstream provider failed: {exc}") from None
    finally:
        ctx.up_ms = (time.perf_counter() - ctx.t_up) * 1000.0
    ctx.upstream_status = resp.status
    if resp.status >= 400:
        engine._relay_error(ctx, responder, resp, data)
        return
    try:
        _count_decoder.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
        raise errors.BadGateway(
            "The upstream provider returned a response body that is not a token count",
            code="upstream_invalid_response",
        ) from None
    ctx.status = resp.status
    headers = engine._pass_headers(ctx, resp)
    headers.append(("content-type", "application/json"))
    responder.send(resp.status, headers, data)


class _Count(msgspec.Struct):
    """An upstream's ``count_tokens`` answer, as far as it is checked before it is relayed."""

    input_tokens: int


_count_decoder: Final = msgspec.json.Decoder(_Count)


def _texts(req: ir.Request) -> tuple[list[str], int]:
    """The texts a request's prompt holds, and the tokens counted without text (framing, images)."""
    texts: list[str] = []
    extra = 0
    for tool in req.tools:
        texts.append(tool.name)
        if tool.description:
            texts.append(tool.description)
        if tool.parameters:
            texts.append(encode(tool.parameters).decode())
        extra += _PER_TOOL
    for msg in req.messages:
        extra += _PER_MESSAGE
        for part in msg.content:
            extra += _part_texts(part, texts)
    return texts, extra


def _part_texts(part: ir.Part, texts: list[str]) -> int:
    if isinstance(part, ir.TextPart):
        texts.append(part.text)
    elif isinstance(part, ir.ThinkingPart):
        texts.append(part.text)
    elif isinstance(part, ir.ToolCallPart):
        texts += [part.name, part.arguments]
    elif isinstance(part, ir.ToolResultPart):
        return sum(_part_texts(p, texts) for p in part.content)
    elif isinstance(part, ir.ImagePart):
        return IMAGE_TOKENS
    elif isinstance(part, ir.DocumentPart):
        if part.text is not None:
            texts.append(part.text)
        elif part.data is not None:
            return len(part.data) * 3 // 4 // 4  # decoded bytes, four per token
    elif isinstance(part, ir.OpaquePart):
        texts.append(encode(part.raw).decode())
    return 0


async def estimate_input_tokens(req: ir.Request) -> int:
    """The local estimate: tiktoken's ``o200k_base`` over every text of the prompt (system, messages,
    tool definitions, tool calls and results, thinking), plus a fixed framing per message and per tool
    and ``IMAGE_TOKENS`` per image; a base64 document counts one token per four decoded bytes.
    Counted off the event loop."""
    global _counter
    if _counter is None:
        from gateway.limits.tokens import TokenCounter

        _counter = TokenCounter()
    texts, extra = _texts(req)
    return extra + await _counter.count("gpt-4o", texts) if texts else extra


# ---- the model list in Anthropic's shape ---------------------------------------------------------


def _model(name: str, created: str) -> dict[str, Any]:
    return {"type": "model", "id": name, "display_name": name, "created_at": created}


def anthropic_models(runtime: Runtime, path: str, key: Any) -> bytes:
    """``GET /v1/models`` (or ``/v1/models/{id}``) as Anthropic answers it, for the models ``key`` may
    call (all without a key)."""
    created = datetime.fromtimestamp(int(time.time()), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

    def allowed(name: str) -> bool:
        return key is None or bool(key.models.allows(name) and key.tenant.models.allows(name))

    if path != "/v1/models":
        name = unquote(path[len("/v1/models/"):])
        if name not in runtime.models or not allowed(name):
            raise errors.NotFound(f"The model `{name}` does not exist", param="model", code="model_not_found")
        return encode(_model(name, created))
    data = [_model(n, created) for n in runtime.models if allowed(n)]
    return encode({
        "data": data,
        "has_more": False,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
    })

