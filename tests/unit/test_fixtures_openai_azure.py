"""OpenAI and Azure OpenAI transcripts replayed through the pass-through translator.

The fixtures (``tests/fixtures/providers/{openai,azure}/``, sources in each folder's README) are real
answers: the OpenAI ones are the ``openai`` SDK's recordings of the live API. Each is checked against the
SDK's own types, then replayed through ``OpenAITranslator`` and its stream relay as the engine drives
them: what must pass through stays byte for byte the same (whole, cut at random byte boundaries, and
byte by byte), the usage is learned right, the usage chunk is dropped only when the client did not ask
for it, a whole answer to a stream request becomes a stream the SDK reads back to the same message,
and error bodies keep their bytes and are judged right by routing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from openai.types import CreateEmbeddingResponse, ErrorObject
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from openai.types.chat import completion_create_params as ccp
from pydantic import TypeAdapter

from gateway._core.http import Request
from gateway.config import ProviderConfig
from gateway.context import Context
from gateway.providers.azure import azure_translator
from gateway.providers.openai import OpenAITranslator
from gateway.routing.outcome import Outcome, outcome_of_status

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "providers"
STREAMS = sorted((p.parent.parent.name, p.stem) for d in ("openai", "azure") for p in (FIX / d / "streams").glob("*.sse"))
RESPONSES = sorted((p.parent.parent.name, p.stem) for d in ("openai", "azure")
                   for p in (FIX / d / "responses").glob("*.json") if p.stem != "embeddings")
REQUESTS = sorted(p.stem for p in (FIX / "openai" / "requests").glob("*.json"))


class _Transport:
    async def request(self, method: str, path: str, headers: list[tuple[str, str]], body: bytes) -> Any:
        raise AssertionError("not sent")

    async def close(self) -> None:
        pass


class _Resp:
    status = 200
    headers: list[tuple[bytes, bytes]] = []

    def header(self, name: bytes) -> bytes | None:
        return b"application/json" if name == b"content-type" else None


def _translator() -> OpenAITranslator:
    return OpenAITranslator("openai", _Transport(), "/v1", "sk-test", {})


def _context(body: bytes = b'{"model":"m","messages":[]}', endpoint: str = "chat", stream: bool = False,
             include_usage: bool = False) -> Context:
    ctx = Context(Request("POST", "/v1/chat/completions", "", 11, [], body, True), "rid", None, None)
    ctx.endpoint = endpoint
    ctx.stream = stream
    ctx.include_usage = include_usage
    ctx.fields = type("F", (), {"model": json.loads(body).get("model")})()
    return ctx


def _raw(provider: str, name: str) -> bytes:
    return (FIX / provider / "streams" / f"{name}.sse").read_bytes()


def _events(sse: bytes) -> list[bytes]:
    return [e for e in sse.split(b"\n\n") if e]


def _data(event: bytes) -> Any:
    assert event.startswith(b"data: ")
    return json.loads(event[6:])


def _usage_of(sse: bytes) -> dict[str, Any]:
    """The usage the fixture reports (its last chunk that has one), read independently of the gateway."""
    return [_data(e)["usage"] for e in _events(sse) if e != b"data: [DONE]" and _data(e).get("usage")][-1]


def _relay(data: bytes, cuts: list[int], include_usage: bool) -> tuple[bytes, Context]:
    ctx = _context(stream=True, include_usage=include_usage)
    relay = _translator().stream_relay(ctx)
    out, start = [], 0
    for cut in [*cuts, len(data)]:
        out.append(relay.feed(data[start:cut]))
        start = cut
    out.append(relay.end())
    assert relay.error is None
    return b"".join(out), ctx


def _assert_usage(ctx: Context, expected: dict[str, Any]) -> None:
    u = ctx.usage
    assert (u.prompt_tokens, u.completion_tokens, u.total_tokens) == (
        expected["prompt_tokens"], expected["completion_tokens"], expected["total_tokens"])
    cached = (expected.get("prompt_tokens_details") or {}).get("cached_tokens")
    if cached:
        assert u.prompt_tokens_details is not None and u.prompt_tokens_details.cached_tokens == cached


# ---- the fixtures are the SDK's shapes -----------------------------------------------------------


@pytest.mark.parametrize(("provider", "name"), STREAMS)
def test_stream_fixtures_are_sdk_chunks(provider: str, name: str) -> None:
    events = _events(_raw(provider, name))
    assert events[-1] == b"data: [DONE]"
    for event in events[:-1]:
        obj = _data(event)
        if provider == "azure" and obj["object"] == "":
            # Azure's first chunk: no choices, the prompt's filter results (the SDK's type has no room
            # for its empty ``object``; OpenAI's SDK skips such chunks by their empty choices)
            assert obj["choices"] == [] and obj["prompt_filter_results"][0]["prompt_index"] == 0
            continue
        ChatCompletionChunk.model_validate(obj)


@pytest.mark.parametrize(("provider", "name"), RESPONSES)
def test_response_fixtures_are_sdk_completions(provider: str, name: str) -> None:
    ChatCompletion.model_validate_json((FIX / provider / "responses" / f"{name}.json").read_bytes())


def test_embeddings_fixture_is_an_sdk_embedding() -> None:
    CreateEmbeddingResponse.model_validate_json((FIX / "openai" / "responses" / "embeddings.json").read_bytes())


_create_stream = TypeAdapter(ccp.CompletionCreateParamsStreaming)
_create_plain = TypeAdapter(ccp.CompletionCreateParamsNonStreaming)


@pytest.mark.parametrize("name", REQUESTS)
def test_request_fixtures_are_sdk_params(name: str) -> None:
    obj = json.loads((FIX / "openai" / "requests" / f"{name}.json").read_bytes())
    assert set(obj) <= ccp.CompletionCreateParamsBase.__required_keys__ | ccp.CompletionCreateParamsBase.__optional_keys__ | {"stream"}
    (_create_stream if obj.get("stream") else _create_plain).validate_python(obj)


# ---- streams: pass-through, byte for byte ---------------------------------------------------------


@pytest.mark.parametrize(("provider", "name"), STREAMS)
def test_stream_passes_through_unchanged(provider: str, name: str) -> None:
    raw = _raw(provider, name)
    out, ctx = _relay(raw, [], include_usage=True)
    assert out == raw
    _assert_usage(ctx, _usage_of(raw))


@pytest.mark.parametrize(("provider", "name"), STREAMS)
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_stream_refragmented(provider: str, name: str, data: st.DataObject) -> None:
    raw = _raw(provider, name)
    cuts = sorted(data.draw(st.sets(st.integers(0, len(raw)), max_size=40)))
    for include_usage in (True, False):
        assert _relay(raw, cuts, include_usage)[0] == _relay(raw, [], include_usage)[0]
    out, ctx = _relay(raw, cuts, True)
    assert out == raw
    _assert_usage(ctx, _usage_of(raw))


@pytest.mark.parametrize(("provider", "name"), STREAMS)
def test_stream_byte_by_byte(provider: str, name: str) -> None:
    raw = _raw(provider, name)
    out, ctx = _relay(raw, list(range(1, len(raw))), True)
    assert out == raw
    _assert_usage(ctx, _usage_of(raw))


@pytest.mark.parametrize(("provider", "name"), STREAMS)
def test_stream_without_include_usage_drops_only_the_usage_chunk(provider: str, name: str) -> None:
    """The gateway asked for usage on the client's behalf: the client, who did not, gets the stream without
    the usage-only chunk (and every other byte as it came); the gateway still learns the usage."""
    raw = _raw(provider, name)
    out, ctx = _relay(raw, [], include_usage=False)
    kept = [e for e in _events(raw) if e == b"data: [DONE]" or not (_data(e).get("usage") and not _data(e)["choices"])]
    assert out == b"".join(e + b"\n\n" for e in kept)
    assert len(kept) == len(_events(raw)) - 1
    _assert_usage(ctx, _usage_of(raw))


def test_parallel_tool_calls_keep_their_index() -> None:
    """Two tool calls streamed one after the other, each under its own ``index``, pass as they came."""
    calls: dict[int, str] = {}
    for event in _events(_raw("openai", "parallel_tools"))[:-1]:
        for choice in _data(event)["choices"]:
            for tc in choice["delta"].get("tool_calls") or []:
                calls[tc["index"]] = calls.get(tc["index"], "") + tc["function"].get("arguments", "")
    assert sorted(calls) == [0, 1]
    assert json.loads(calls[0])["city"] == "Edinburgh" and json.loads(calls[1])["ticker"] == "AAPL"


# ---- whole answers ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("provider", "name"), RESPONSES)
def test_response_passes_through_unchanged(provider: str, name: str) -> None:
    body = (FIX / provider / "responses" / f"{name}.json").read_bytes()
    ctx = _context()
    assert _translator().take_body(ctx, body) is body
    _assert_usage(ctx, json.loads(body)["usage"])


def test_embeddings_pass_through_unchanged() -> None:
    body = (FIX / "openai" / "responses" / "embeddings.json").read_bytes()
    ctx = _context(b'{"model":"text-embedding-ada-002","input":"x"}', endpoint="embeddings")
    assert _translator().take_body(ctx, body) is body
    assert (ctx.usage.prompt_tokens, ctx.usage.total_tokens) == (8, 8)


@pytest.mark.parametrize(("provider", "name"), RESPONSES)
@pytest.mark.parametrize("include_usage", [True, False])
def test_whole_answer_to_a_stream_request(provider: str, name: str, include_usage: bool) -> None:
    """An upstream that ignored ``stream: true``: the client gets the stream of that answer, which reads
    back (chunk by chunk, through the SDK's types) to the same choices."""
    body = (FIX / provider / "responses" / f"{name}.json").read_bytes()
    answer = json.loads(body)
    ctx = _context(stream=True, include_usage=include_usage)
    events = _events(_translator().body_as_stream(ctx, _Resp(), body))
    assert events[-1] == b"data: [DONE]"
    chunks = [ChatCompletionChunk.model_validate(_data(e)) for e in events[:-1]]
    assert any(c.usage for c in chunks) is include_usage
    _assert_usage(ctx, answer["usage"])
    for choice in answer["choices"]:
        mine = [c.choices[0] for c in chunks if c.choices and c.choices[0].index == choice["index"]]
        message = choice["message"]
        assert "".join(c.delta.content or "" for c in mine) == (message.get("content") or "")
        assert "".join(c.delta.refusal or "" for c in mine) == (message.get("refusal") or "")
        calls = [tc for c in mine for tc in c.delta.tool_calls or []]
        assert [(tc.index, tc.id, tc.function.name, tc.function.arguments) for tc in calls] == [  # type: ignore[union-attr]
            (i, tc["id"], tc["function"]["name"], tc["function"]["arguments"])
            for i, tc in enumerate(message.get("tool_calls") or [])]
        assert mine[-1].finish_reason == choice["finish_reason"]


# ---- errors --------------------------------------------------------------------------------------

ERRORS = [
    ("openai", "invalid_api_key_401", 401, Outcome.CREDENTIALS),
    ("openai", "rate_limit_429", 429, Outcome.RATE_LIMITED),
    ("openai", "context_length_400", 400, Outcome.CONTEXT_LENGTH),
    ("azure", "unauthorized_401", 401, Outcome.CREDENTIALS),
    ("azure", "rate_limit_429", 429, Outcome.RATE_LIMITED),
    ("azure", "content_filter_400", 400, Outcome.CLIENT_ERROR),
]


@pytest.mark.parametrize(("provider", "name", "status", "outcome"), ERRORS)
def test_error_bodies(provider: str, name: str, status: int, outcome: Outcome) -> None:
    body = (FIX / provider / "errors" / f"{name}.json").read_bytes()
    if provider == "openai":
        ErrorObject.model_validate(json.loads(body)["error"])
    assert outcome_of_status(status, body) is outcome  # how routing judges it
    if outcome is not Outcome.CREDENTIALS:  # those are the gateway's own 502 (engine, credentials_rejected)
        assert _translator().error_answer(status, body) == (status, body)  # the provider's bytes, its status


# ---- requests: the client's bytes go up -------------------------------------------------------------


def test_request_with_usage_asked_goes_up_untouched() -> None:
    body = (FIX / "openai" / "requests" / "tools_vision.json").read_bytes()
    ctx = _context(body, stream=True, include_usage=True)
    assert _translator().request_body(ctx, "gpt-4o", False) is body
    # a model id to change: only the model differs
    out = json.loads(_translator().request_body(ctx, "gpt-4o-2024-08-06", True))
    assert out == {**json.loads(body), "model": "gpt-4o-2024-08-06"}


def test_stream_request_without_usage_gets_it_asked_for() -> None:
    body = (FIX / "openai" / "requests" / "stream_without_usage.json").read_bytes()
    ctx = _context(body, stream=True, include_usage=False)
    out = json.loads(_translator().request_body(ctx, "gpt-4o-mini", False))
    assert out == {**json.loads(body), "stream_options": {"include_usage": True}}


def test_non_stream_request_goes_up_untouched() -> None:
    body = (FIX / "openai" / "requests" / "json_schema.json").read_bytes()
    assert _translator().request_body(_context(body), "gpt-4o-2024-08-06", False) is body


def test_azure_deployment_request_goes_up_untouched() -> None:
    """Azure takes the model from the path: the body is not rewritten, whatever the deployment is called."""
    body = (FIX / "openai" / "requests" / "tools_vision.json").read_bytes()
    p = ProviderConfig(type="azure", base_url="https://r.openai.azure.com", api_key="env:AZURE_KEY")
    import os

    os.environ.setdefault("AZURE_KEY", "k")
    child = azure_translator("azure", p, _Transport(), "").for_model("my-gpt-4o")
    assert child.model_in_path
    assert child.request_body(_context(body, stream=True, include_usage=True), "my-gpt-4o", False) is body
