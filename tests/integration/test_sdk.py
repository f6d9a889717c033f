"""The official OpenAI SDK against a real gateway in front of the real mock upstream, on every front end."""

from __future__ import annotations

import math

import openai
import pytest

from .conftest import SLASHED_MODEL_ID, Gateway
from .helpers import assert_serves

pytestmark = pytest.mark.timeout(60)

USER = [{"role": "user", "content": "Tell me something about gateways."}]


def _mock(directives: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"!mock {directives} and then some text"}]


def _assert_gateway_headers(headers: object, request_id: str | None = None) -> None:
    rid = headers.get("x-request-id")  # type: ignore[attr-defined]
    assert rid, "x-request-id missing"
    if request_id is not None:
        assert rid == request_id
    overhead = headers.get("x-gateway-overhead-ms")  # type: ignore[attr-defined]
    assert overhead is not None, "x-gateway-overhead-ms missing"
    assert float(overhead) >= 0.0
    assert math.isfinite(float(overhead))


# -- chat -----------------------------------------------------------------------------------------------


def test_chat_non_stream(client: openai.OpenAI) -> None:
    resp = client.chat.completions.create(model="chat-model", messages=USER)
    assert resp.object == "chat.completion"
    assert resp.model == "mock-1"  # as the upstream gives it, not the gateway's alias
    assert len(resp.choices) == 1
    choice = resp.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content and len(choice.message.content.split()) == 12
    assert choice.finish_reason == "stop"
    assert resp.usage is not None
    assert resp.usage.completion_tokens == 12
    assert resp.usage.prompt_tokens > 0
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + resp.usage.completion_tokens


def test_chat_max_tokens_and_model_without_alias(client: openai.OpenAI) -> None:
    resp = client.chat.completions.create(model="mock-1", messages=USER, max_tokens=5)
    assert resp.model == "mock-1"
    assert resp.choices[0].finish_reason == "length"
    assert resp.usage is not None and resp.usage.completion_tokens == 5


def test_chat_stream_without_usage(client: openai.OpenAI) -> None:
    full = client.chat.completions.create(model="chat-model", messages=USER)
    stream = client.chat.completions.create(model="chat-model", messages=USER, stream=True)
    chunks = list(stream)
    assert len(chunks) >= 3
    for chunk in chunks:
        assert chunk.object == "chat.completion.chunk"
        assert chunk.usage is None, chunk  # the client did not ask for usage: no usage anywhere
        assert chunk.choices, "a chunk with empty choices (the usage chunk) leaked to the client"
        assert chunk.model == "mock-1"
    assert len({c.id for c in chunks}) == 1
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text == full.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_chat_stream_with_usage(client: openai.OpenAI) -> None:
    full = client.chat.completions.create(model="chat-model", messages=USER)
    stream = client.chat.completions.create(
        model="chat-model", messages=USER, stream=True, stream_options={"include_usage": True},
    )
    chunks = list(stream)
    last = chunks[-1]
    assert last.choices == []
    assert last.usage is not None
    assert full.usage is not None
    assert last.usage.prompt_tokens == full.usage.prompt_tokens
    assert last.usage.completion_tokens == full.usage.completion_tokens
    assert last.usage.total_tokens == full.usage.total_tokens
    for chunk in chunks[:-1]:
        assert chunk.choices
        assert chunk.usage is None
    text = "".join(c.choices[0].delta.content or "" for c in chunks[:-1])
    assert text == full.choices[0].message.content


def test_chat_stream_many_chunks(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="chat-model", messages=_mock("chunks=20"), max_tokens=40, stream=True,
    )
    chunks = list(stream)
    content = [c for c in chunks if c.choices[0].delta.content]
    assert len(content) == 20
    assert len("".join(c.choices[0].delta.content or "" for c in chunks).split()) == 40


# -- completions, embeddings, models ----------------------------------------------------------------------


def test_completions(client: openai.OpenAI) -> None:
    resp = client.completions.create(model="chat-model", prompt="Once upon a time", max_tokens=7)
    assert resp.object == "text_completion"
    assert resp.model == "mock-1"
    assert len(resp.choices[0].text.split()) == 7
    assert resp.usage is not None and resp.usage.completion_tokens == 7


def test_completions_stream(client: openai.OpenAI) -> None:
    full = client.completions.create(model="chat-model", prompt="Once upon a time")
    chunks = list(client.completions.create(model="chat-model", prompt="Once upon a time", stream=True))
    assert all(c.choices for c in chunks)
    assert all(c.usage is None for c in chunks)
    assert "".join(c.choices[0].text for c in chunks) == full.choices[0].text


def test_embeddings_base64_default(client: openai.OpenAI) -> None:
    # the SDK asks for base64 by default and decodes it into floats
    resp = client.embeddings.create(model="embed-model", input="the quick brown fox")
    assert resp.model == "mock-embed-1"
    assert len(resp.data) == 1
    vec = resp.data[0].embedding
    assert len(vec) == 16
    assert math.isclose(math.hypot(*vec), 1.0, rel_tol=1e-5)
    assert resp.usage.prompt_tokens >= 1


def test_embeddings_float_matches_base64(client: openai.OpenAI) -> None:
    b64 = client.embeddings.create(model="embed-model", input=["alpha", "beta"])
    flt = client.embeddings.create(model="embed-model", input=["alpha", "beta"], encoding_format="float")
    assert [d.index for d in flt.data] == [0, 1]
    for a, b in zip(b64.data, flt.data, strict=True):
        assert len(b.embedding) == 16
        assert all(math.isclose(x, y, rel_tol=1e-6, abs_tol=1e-7) for x, y in zip(a.embedding, b.embedding,
                                                                                 strict=True))
    assert flt.data[0].embedding != flt.data[1].embedding


def test_embeddings_dimensions(client: openai.OpenAI) -> None:
    resp = client.embeddings.create(model="embed-model", input="x y z", dimensions=8, encoding_format="float")
    assert len(resp.data[0].embedding) == 8


def test_models_list_and_retrieve(client: openai.OpenAI) -> None:
    ids = {m.id for m in client.models.list()}
    assert {"chat-model", "embed-model", "mock-1"} <= ids
    model = client.models.retrieve("chat-model")
    assert model.id == "chat-model"
    assert model.object == "model"
    assert model.owned_by


# -- errors the SDK maps ----------------------------------------------------------------------------------


def test_unknown_model_is_not_found(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="no-such-model", messages=USER)
    assert info.value.status_code == 404
    assert info.value.code == "model_not_found"
    _assert_gateway_headers(info.value.response.headers)


def test_retrieve_unknown_model_is_not_found(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-model")


def test_embedding_model_on_chat_is_bad_request(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="embed-model", messages=USER)
    assert info.value.param == "model"


def test_missing_messages_is_bad_request(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.post("/chat/completions", body={"model": "chat-model"}, cast_to=object)
    assert info.value.status_code == 400
    assert info.value.param == "messages"
    assert info.value.code == "missing_required_parameter"


def test_wrong_type_is_bad_request(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.post("/chat/completions", body={"model": "chat-model", "messages": "hello"}, cast_to=object)
    assert info.value.param == "messages"
    with pytest.raises(openai.BadRequestError) as info:
        client.post("/chat/completions", body={"model": 42, "messages": USER}, cast_to=object)
    assert info.value.param == "model"


def test_upstream_rate_limit(client: openai.OpenAI) -> None:
    with pytest.raises(openai.RateLimitError) as info:
        client.chat.completions.create(model="chat-model", messages=_mock("status=429 retry_after=1"))
    headers = info.value.response.headers
    assert info.value.status_code == 429
    assert headers.get("retry-after") == "1"
    assert headers.get("retry-after-ms") == "1000"
    assert headers.get("x-ratelimit-remaining-requests") == "0"
    _assert_gateway_headers(headers)


def test_upstream_rate_limit_on_stream(client: openai.OpenAI) -> None:
    with pytest.raises(openai.RateLimitError) as info:
        client.chat.completions.create(
            model="chat-model", messages=_mock("status=429 retry_after=3"), stream=True,
        )
    assert info.value.response.headers.get("retry-after") == "3"


def test_upstream_500(client: openai.OpenAI) -> None:
    with pytest.raises(openai.InternalServerError) as info:
        client.chat.completions.create(model="chat-model", messages=_mock("status=500"))
    assert info.value.status_code == 500
    _assert_gateway_headers(info.value.response.headers)


def test_upstream_401(client: openai.OpenAI) -> None:
    # the provider refused the gateway's credential, not the client's: a 502, never the client's 401
    with pytest.raises(openai.InternalServerError) as info:
        client.chat.completions.create(model="chat-model", messages=_mock("status=401"))
    assert info.value.status_code == 502
    assert isinstance(info.value.body, dict) and info.value.body.get("code") == "upstream_authentication"


def test_upstream_garbage_is_bad_gateway(client: openai.OpenAI, gateway: Gateway) -> None:
    with pytest.raises(openai.InternalServerError) as info:
        client.chat.completions.create(model="chat-model", messages=_mock("garbage=1"))
    assert info.value.status_code == 502
    assert info.value.code == "upstream_invalid_response"
    _assert_gateway_headers(info.value.response.headers)
    assert_serves(gateway.port)


@pytest.mark.timeout(30)
def test_upstream_hang_is_gateway_timeout(client: openai.OpenAI, gateway: Gateway) -> None:
    # read_timeout = 2.0 for this provider: the gateway gives up and answers 504
    with pytest.raises((openai.InternalServerError, openai.APITimeoutError)) as info:
        client.chat.completions.create(model="chat-model", messages=_mock("hang=1"), timeout=15.0)
    assert isinstance(info.value, openai.InternalServerError), "the gateway did not answer 504 in time"
    assert info.value.status_code == 504
    assert info.value.code == "upstream_timeout"
    _assert_gateway_headers(info.value.response.headers)
    assert_serves(gateway.port)


def test_stream_cut_by_upstream(client: openai.OpenAI, gateway: Gateway) -> None:
    stream = client.chat.completions.create(model="chat-model", messages=_mock("cut=2"), stream=True)
    received = []
    with pytest.raises(openai.APIError) as info:
        for chunk in stream:
            received.append(chunk)
    stream.close()
    assert len(received) == 2  # the events before the cut arrived
    assert received[0].choices[0].delta.content
    assert "upstream" in info.value.message.lower()
    assert isinstance(info.value.body, dict) and info.value.body.get("code") == "upstream_stream_error"
    # and the gateway keeps serving, on the SDK's connection and on a fresh one
    resp = client.chat.completions.create(model="chat-model", messages=USER)
    assert resp.choices[0].message.content
    assert_serves(gateway.port)


def test_stream_garbage_event_is_relayed(client: openai.OpenAI) -> None:
    # garbage=1 on a stream: one event's data is not JSON; the gateway passes events through, the SDK
    # fails to decode it. Whatever happens, the gateway survives and the next request succeeds.
    stream = client.chat.completions.create(model="chat-model", messages=_mock("garbage=1"), stream=True)
    with pytest.raises(ValueError):
        for _ in stream:
            pass
    stream.close()
    assert client.chat.completions.create(model="chat-model", messages=USER).choices


# -- headers every response carries ----------------------------------------------------------------------


def test_request_id_generated_and_overhead(client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(model="chat-model", messages=USER)
    _assert_gateway_headers(raw.headers)
    first = raw.headers["x-request-id"]
    raw2 = client.chat.completions.with_raw_response.create(model="chat-model", messages=USER)
    assert raw2.headers["x-request-id"] != first
    completion = raw.parse()
    assert completion.choices[0].message.content


def test_request_id_echoed(client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="chat-model", messages=USER, extra_headers={"x-request-id": "req-abc-123"},
    )
    _assert_gateway_headers(raw.headers, "req-abc-123")


def test_headers_on_stream_models_and_errors(client: openai.OpenAI) -> None:
    with client.chat.completions.with_streaming_response.create(
        model="chat-model", messages=USER, stream=True, extra_headers={"x-request-id": "stream-1"},
    ) as raw:
        _assert_gateway_headers(raw.headers, "stream-1")
        assert raw.headers["content-type"].startswith("text/event-stream")
        body = b"".join(raw.iter_bytes())
    assert body.rstrip().endswith(b"data: [DONE]")
    models = client.models.with_raw_response.list(extra_headers={"x-request-id": "models-1"})
    _assert_gateway_headers(models.headers, "models-1")
    embeds = client.embeddings.with_raw_response.create(model="embed-model", input="hi")
    _assert_gateway_headers(embeds.headers)
    with pytest.raises(openai.RateLimitError) as info:
        client.chat.completions.create(
            model="chat-model", messages=_mock("status=429"), extra_headers={"x-request-id": "err-1"},
        )
    _assert_gateway_headers(info.value.response.headers, "err-1")


# -- model ids with a slash ---------------------------------------------------------------------------------


def test_slashed_model_id_chat_and_list(client: openai.OpenAI) -> None:
    resp = client.chat.completions.create(model=SLASHED_MODEL_ID, messages=USER)
    assert resp.model == "mock-1"
    assert SLASHED_MODEL_ID in {m.id for m in client.models.list()}


def test_slashed_model_id_retrieve(client: openai.OpenAI) -> None:
    # the SDK sends GET /v1/models/org%2Fmodel-x: the id in the path is percent-encoded
    model = client.models.retrieve(SLASHED_MODEL_ID)
    assert model.id == SLASHED_MODEL_ID
