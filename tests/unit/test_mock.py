"""The deterministic mock LLM: wire shapes, determinism, every failure directive, the Transport, the App."""

from __future__ import annotations

import array
import asyncio
import base64
import json
import math
import re
import struct
import time
from collections.abc import Iterator
from typing import Any, cast

import httpx
import msgspec
import openai
import pytest
from openai.types import Completion, CreateEmbeddingResponse, Model
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from gateway._core.http_py import Request
from gateway.config.schema import MockConfig
from gateway.providers import mock as mock_mod
from gateway.providers.base import UpstreamError, UpstreamTimeout
from gateway.providers.mock import (
    HANG_SECONDS,
    MockAbort,
    MockApp,
    MockDirectiveError,
    MockDirectives,
    MockLLM,
    MockReply,
    MockTransport,
    parse_directives,
)


def chat_body(content: str = "hello there", **extra: Any) -> bytes:
    messages = [{"role": "user", "content": content}]
    return json.dumps({"model": "mock-1", "messages": messages, **extra}).encode()


def loads(data: bytes) -> Any:
    return json.loads(data)


def events(reply: MockReply) -> list[Any]:
    """The JSON objects of a stream's data events, without [DONE]."""
    assert reply.chunks is not None
    out = []
    for c in reply.chunks:
        assert c.startswith(b"data: ") and c.endswith(b"\n\n")
        data = c[6:-2]
        if data != b"[DONE]":
            out.append(json.loads(data))
    return out


def strip_volatile(obj: Any) -> Any:
    obj = dict(obj)
    obj.pop("id", None)
    obj.pop("created", None)
    return obj


def header(reply: MockReply, name: str) -> str | None:
    return next((v for k, v in reply.headers if k == name), None)


@pytest.fixture
def llm() -> MockLLM:
    return MockLLM(MockConfig())


# --- chat --------------------------------------------------------------------------------------------------


def test_chat_completion_shape(llm: MockLLM) -> None:
    before = time.time()
    reply = llm.respond("chat", chat_body())
    after = time.time()
    assert reply.status == 200
    assert reply.chunks is None and not reply.stream
    assert ("content-type", "application/json") in reply.headers
    obj = loads(reply.body)
    assert obj["object"] == "chat.completion"
    assert obj["id"].startswith("chatcmpl-")
    # the time of the answer in whole seconds (however long the call took)
    assert isinstance(obj["created"], int) and int(before) <= obj["created"] <= after
    assert obj["model"] == "mock-1"
    (choice,) = obj["choices"]
    assert choice["index"] == 0
    assert choice["message"]["role"] == "assistant"
    assert choice["finish_reason"] == "stop"
    assert choice["logprobs"] is None
    words = choice["message"]["content"].split(" ")
    assert len(words) == MockConfig().completion_words
    assert all(w.isalpha() for w in words)
    usage = obj["usage"]
    # "hello there": 11 chars // 4 + 4 per message
    assert usage["prompt_tokens"] == 11 // 4 + 4
    assert usage["completion_tokens"] == len(words)
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_chat_deterministic(llm: MockLLM) -> None:
    a = llm.respond("chat", chat_body("same question"))
    b = MockLLM().respond("chat", chat_body("same question"))
    oa, ob = loads(a.body), loads(b.body)
    assert oa["id"] != ob["id"]
    assert strip_volatile(oa) == strip_volatile(ob)
    # byte-identical apart from id and created
    def volatile_free(body: bytes) -> bytes:
        return re.sub(rb'^\{"id":"[^"]+","object":"chat.completion","created":\d+,', b"", body)

    assert volatile_free(a.body) == volatile_free(b.body) != a.body
    c = loads(llm.respond("chat", chat_body("another question")).body)
    assert c["choices"][0]["message"]["content"] != oa["choices"][0]["message"]["content"]


def test_chat_ids_unique(llm: MockLLM) -> None:
    ids = {loads(llm.respond("chat", chat_body()).body)["id"] for _ in range(50)}
    assert len(ids) == 50


def test_chat_hashes_last_user_message(llm: MockLLM) -> None:
    def content(messages: list[dict[str, str]]) -> str:
        body = json.dumps({"model": "m", "messages": messages}).encode()
        return str(loads(llm.respond("chat", body).body)["choices"][0]["message"]["content"])

    base = content([{"role": "user", "content": "q"}])
    assert content([{"role": "system", "content": "sys"}, {"role": "user", "content": "q"}]) == base
    assert content([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]) == base


def test_chat_max_tokens(llm: MockLLM) -> None:
    obj = loads(llm.respond("chat", chat_body(max_tokens=5)).body)
    assert obj["choices"][0]["finish_reason"] == "length"
    assert len(obj["choices"][0]["message"]["content"].split(" ")) == 5
    assert obj["usage"]["completion_tokens"] == 5
    obj = loads(llm.respond("chat", chat_body(max_tokens=50, max_completion_tokens=3)).body)
    assert obj["usage"]["completion_tokens"] == 3
    obj = loads(llm.respond("chat", chat_body(max_tokens=100000)).body)
    assert obj["usage"]["completion_tokens"] == 4096
    assert obj["choices"][0]["finish_reason"] == "stop"
    # a prefix of the same deterministic sequence
    long = loads(llm.respond("chat", chat_body(max_tokens=20)).body)["choices"][0]["message"]["content"]
    short = loads(llm.respond("chat", chat_body(max_tokens=5)).body)["choices"][0]["message"]["content"]
    assert long.startswith(short)


def test_chat_content_parts(llm: MockLLM) -> None:
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": [
        {"type": "text", "text": "abcd"}, {"type": "image_url", "image_url": {"url": "http://x"}},
    ]}]}).encode()
    reply = llm.respond("chat", body)
    assert reply.status == 200
    assert loads(reply.body)["usage"]["prompt_tokens"] == 1 + 4


def test_chat_stream(llm: MockLLM) -> None:
    plain = loads(llm.respond("chat", chat_body()).body)
    reply = llm.respond("chat", chat_body(stream=True))
    assert reply.stream and reply.chunks is not None
    assert reply.chunks[-1] == b"data: [DONE]\n\n"
    assert ("content-type", "text/event-stream; charset=utf-8") in reply.headers
    evs = events(reply)
    n = MockConfig().stream_chunks
    assert len(evs) == n + 1  # content chunks + the finish chunk, no usage chunk
    assert len({e["id"] for e in evs}) == 1 and len({e["created"] for e in evs}) == 1
    assert all(e["object"] == "chat.completion.chunk" and "usage" not in e for e in evs)
    assert evs[0]["choices"][0]["delta"]["role"] == "assistant"
    assert all("role" not in e["choices"][0]["delta"] for e in evs[1:])
    assert all(e["choices"][0]["finish_reason"] is None for e in evs[:-1])
    assert evs[-1]["choices"][0]["finish_reason"] == "stop"
    assert evs[-1]["choices"][0]["delta"] == {}
    text = "".join(e["choices"][0]["delta"].get("content", "") for e in evs)
    assert text == plain["choices"][0]["message"]["content"]
    for c in reply.chunks[:-1]:
        ChatCompletionChunk.model_validate_json(c[6:-2])


def test_chat_stream_include_usage(llm: MockLLM) -> None:
    reply = llm.respond("chat", chat_body(stream=True, stream_options={"include_usage": True}, max_tokens=3))
    evs = events(reply)
    assert len(evs) == 3 + 1 + 1  # 3 words -> 3 content chunks, finish, usage
    assert all(e["usage"] is None for e in evs[:-1])
    last = evs[-1]
    assert last["choices"] == []
    assert last["usage"]["completion_tokens"] == 3
    assert last["usage"]["total_tokens"] == last["usage"]["prompt_tokens"] + 3
    assert evs[-2]["choices"][0]["finish_reason"] == "length"
    chunk = ChatCompletionChunk.model_validate_json(json.dumps(last))
    assert chunk.usage is not None and chunk.usage.completion_tokens == 3
    no_usage = events(llm.respond("chat", chat_body(stream=True, stream_options={"include_usage": False})))
    assert all("usage" not in e for e in no_usage)


def test_chat_stream_chunk_count_config() -> None:
    llm = MockLLM(MockConfig(stream_chunks=3, completion_words=10, chunk_delay_ms=5, latency_ms=7))
    reply = llm.respond("chat", chat_body(stream=True))
    assert len(events(reply)) == 3 + 1
    assert reply.chunk_delay == pytest.approx(0.005)
    assert reply.latency == pytest.approx(0.007)


def test_chat_invalid_requests(llm: MockLLM) -> None:
    cases = [
        (b"{not json", None),
        (b"[]", None),
        (b'{"messages": [{"role": "user", "content": "x"}]}', "model"),
        (b'{"model": "m", "messages": {}}', "messages"),
        (b'{"model": "m", "messages": []}', "messages"),
        (b'{"model": "m", "messages": [{"content": "x"}]}', "messages"),
        (b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": 0}', "max_tokens"),
        (b'{"model": 5, "messages": []}', "model"),
    ]
    for body, param in cases:
        reply = llm.respond("chat", body)
        assert reply.status == 400, body
        err = loads(reply.body)["error"]
        assert set(err) == {"message", "type", "param", "code"}
        assert err["type"] == "invalid_request_error"
        assert err["param"] == param, body


# --- completions -------------------------------------------------------------------------------------------


def test_completions(llm: MockLLM) -> None:
    body = b'{"model": "mock-1", "prompt": "Say this is a test", "max_tokens": 7}'
    reply = llm.respond("completions", body)
    obj = loads(reply.body)
    assert obj["object"] == "text_completion" and obj["id"].startswith("cmpl-")
    (choice,) = obj["choices"]
    assert choice["finish_reason"] == "length" and choice["logprobs"] is None and choice["index"] == 0
    assert len(choice["text"].split(" ")) == 7
    assert obj["usage"] == {"prompt_tokens": 18 // 4, "completion_tokens": 7, "total_tokens": 18 // 4 + 7}
    Completion.model_validate_json(reply.body)


def test_completions_prompt_forms(llm: MockLLM) -> None:
    for prompt, tokens in [(["abcdefgh", "abcd"], 3), ([1, 2, 3], 3), ([[1, 2], [3]], 3), ("", 1)]:
        reply = llm.respond("completions", json.dumps({"model": "m", "prompt": prompt}).encode())
        assert reply.status == 200, prompt
        assert loads(reply.body)["usage"]["prompt_tokens"] == tokens
    for bad in [b'{"model": "m", "prompt": []}', b'{"model": "m", "prompt": ["a", 1]}', b'{"model": "m"}']:
        assert llm.respond("completions", bad).status == 400


def test_completions_stream(llm: MockLLM) -> None:
    body = b'{"model": "m", "prompt": "p", "stream": true, "stream_options": {"include_usage": true}}'
    reply = llm.respond("completions", body)
    evs = events(reply)
    assert reply.chunks is not None and reply.chunks[-1] == b"data: [DONE]\n\n"
    assert all(e["object"] == "text_completion" for e in evs)
    assert evs[-1]["choices"] == [] and evs[-1]["usage"]["completion_tokens"] == 12
    assert evs[-2]["choices"][0]["finish_reason"] == "stop"
    plain = loads(llm.respond("completions", b'{"model": "m", "prompt": "p"}').body)
    assert "".join(e["choices"][0]["text"] for e in evs[:-1]) == plain["choices"][0]["text"]


# --- embeddings --------------------------------------------------------------------------------------------


def test_embeddings_float_and_base64_agree(llm: MockLLM) -> None:
    body = b'{"model": "e", "input": ["a", "b"], "encoding_format": "%s"}'
    f = loads(llm.respond("embeddings", body % b"float").body)
    b = loads(llm.respond("embeddings", body % b"base64").body)
    assert f["object"] == "list" and f["model"] == "e"
    assert [d["index"] for d in f["data"]] == [0, 1]
    assert all(d["object"] == "embedding" for d in f["data"])
    dims = MockConfig().embedding_dimensions
    for fd, bd in zip(f["data"], b["data"], strict=True):
        vec = fd["embedding"]
        assert len(vec) == dims
        assert math.isclose(math.fsum(x * x for x in vec), 1.0, rel_tol=1e-5)
        raw = base64.b64decode(bd["embedding"])
        assert list(struct.unpack(f"<{dims}f", raw)) == vec  # little-endian float32, exactly the floats
        assert array.array("f", raw).tolist() == vec  # what the openai SDK does
    assert f["data"][0]["embedding"] != f["data"][1]["embedding"]
    assert f["usage"] == {"prompt_tokens": 1, "total_tokens": 1}
    CreateEmbeddingResponse.model_validate_json(json.dumps(f))
    # (the SDK's model types ``embedding`` as floats; a base64 answer is decoded before validation, as the
    # end-to-end test below shows)


def test_embeddings_inputs_dimensions_determinism(llm: MockLLM) -> None:
    one = loads(llm.respond("embeddings", b'{"model": "e", "input": "hello", "dimensions": 64}').body)
    assert len(one["data"]) == 1 and len(one["data"][0]["embedding"]) == 64
    again = loads(MockLLM().respond("embeddings", b'{"model": "e", "input": "hello", "dimensions": 64}').body)
    assert one == again
    body = b'{"model": "e", "input": ["x", "hello"], "dimensions": 64}'
    in_list = loads(llm.respond("embeddings", body).body)
    assert in_list["data"][1]["embedding"] == one["data"][0]["embedding"]
    tokens = loads(llm.respond("embeddings", b'{"model": "e", "input": [1, 2, 3, 4]}').body)
    assert len(tokens["data"]) == 1 and tokens["usage"]["prompt_tokens"] == 4
    lists = loads(llm.respond("embeddings", b'{"model": "e", "input": [[1, 2], [3]]}').body)
    assert len(lists["data"]) == 2 and lists["usage"]["prompt_tokens"] == 3
    small = MockLLM(MockConfig(embedding_dimensions=5))
    cfg = loads(small.respond("embeddings", b'{"model": "e", "input": "a"}').body)
    assert len(cfg["data"][0]["embedding"]) == 5


def test_embeddings_invalid(llm: MockLLM) -> None:
    for body in [
        b'{"model": "e", "input": []}',
        b'{"model": "e", "input": ""}',
        b'{"model": "e", "input": ["a", ""]}',
        b'{"model": "e", "input": ["a", 1]}',
        b'{"model": "e", "input": "a", "dimensions": 0}',
        b'{"model": "e", "input": "a", "encoding_format": "hex"}',
        b'{"model": "e"}',
    ]:
        reply = llm.respond("embeddings", body)
        assert reply.status == 400, body
        assert loads(reply.body)["error"]["type"] == "invalid_request_error"


# --- models ------------------------------------------------------------------------------------------------


def test_models(llm: MockLLM) -> None:
    lst = loads(llm.respond("models", b"").body)
    assert lst["object"] == "list"
    assert [m["id"] for m in lst["data"]] == ["mock-1", "mock-embed-1"]
    for m in lst["data"]:
        Model.model_validate(m)
        assert m["object"] == "model" and isinstance(m["created"], int) and m["owned_by"]
    one = llm.respond("model:mock-1", b"")
    assert one.status == 200 and loads(one.body) == lst["data"][0]
    missing = llm.respond("model:nope", b"")
    assert missing.status == 404
    assert loads(missing.body)["error"]["code"] == "model_not_found"
    with pytest.raises(ValueError):
        llm.respond("nonsense", b"")


# --- the openai SDK, end to end ----------------------------------------------------------------------------


def test_openai_models_parse_mock_output(llm: MockLLM) -> None:
    cc = ChatCompletion.model_validate_json(llm.respond("chat", chat_body(max_tokens=4)).body)
    assert cc.choices[0].finish_reason == "length"
    assert cc.usage is not None and cc.usage.completion_tokens == 4
    reply = llm.respond("chat", chat_body(stream=True, stream_options={"include_usage": True}))
    assert reply.chunks is not None
    chunks = [ChatCompletionChunk.model_validate_json(c[6:-2]) for c in reply.chunks[:-1]]
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    comp = Completion.model_validate_json(llm.respond("completions", b'{"model": "m", "prompt": "x"}').body)
    assert comp.choices[0].finish_reason == "stop"
    emb = CreateEmbeddingResponse.model_validate_json(
        llm.respond("embeddings", b'{"model": "e", "input": "x", "encoding_format": "float"}').body
    )
    assert len(emb.data[0].embedding) == MockConfig().embedding_dimensions


def _sdk_client(llm: MockLLM) -> openai.OpenAI:
    """The official client over an httpx transport answered by the mock: proves the SDK's own parsing."""
    paths = {"/v1/chat/completions": "chat", "/v1/completions": "completions", "/v1/embeddings": "embeddings"}

    def handler(request: httpx.Request) -> httpx.Response:
        reply = llm.respond(paths[request.url.path], request.content)
        if reply.chunks is not None:
            chunks = reply.chunks

            def gen() -> Iterator[bytes]:
                yield from chunks

            return httpx.Response(reply.status, headers=reply.headers, content=gen())
        return httpx.Response(reply.status, headers=reply.headers, content=reply.body)

    http = httpx.Client(transport=httpx.MockTransport(handler))
    # cast: newer SDKs type the client as their own httpx fork but accept a plain httpx.Client
    return openai.OpenAI(api_key="sk-test", base_url="http://mock/v1", http_client=cast(Any, http),
                         max_retries=0)


def test_openai_sdk_end_to_end(llm: MockLLM) -> None:
    with _sdk_client(llm) as client:
        cc = client.chat.completions.create(model="mock-1", messages=[{"role": "user", "content": "hi"}])
        assert cc.choices[0].message.content and cc.usage is not None
        stream = client.chat.completions.create(
            model="mock-1", messages=[{"role": "user", "content": "hi"}], stream=True,
            stream_options={"include_usage": True},
        )
        parts = list(stream)
        text = "".join(p.choices[0].delta.content or "" for p in parts if p.choices)
        assert text == cc.choices[0].message.content
        assert parts[-1].usage is not None and parts[-1].usage.completion_tokens == cc.usage.completion_tokens
        # the SDK asks for base64 by default and decodes it itself
        emb = client.embeddings.create(model="mock-embed-1", input=["a", "b"])
        floats = loads(llm.respond("embeddings", b'{"model": "e", "input": ["a", "b"]}').body)
        assert [d.embedding for d in emb.data] == [d["embedding"] for d in floats["data"]]
        comp = client.completions.create(model="mock-1", prompt="x", max_tokens=2)
        assert comp.choices[0].finish_reason == "length"
        with pytest.raises(openai.RateLimitError) as info:
            client.chat.completions.create(
                model="mock-1", messages=[{"role": "user", "content": "!mock status=429"}]
            )
        assert info.value.response.headers["retry-after"] == "1"


# --- directives --------------------------------------------------------------------------------------------


def test_parse_directives() -> None:
    d = parse_directives(
        "!mock status=503 latency_ms=12.5 chunks=2 chunk_delay_ms=3 garbage=1 cut=4 hang=0 rest"
    )
    assert d == MockDirectives(
        status=503, latency_ms=12.5, chunks=2, chunk_delay_ms=3.0, garbage=True, cut=4, hang=False
    )
    assert parse_directives("no prefix status=500") == MockDirectives()
    assert parse_directives("!mockery status=500") == MockDirectives()
    assert parse_directives("status=500", require_prefix=False).status == 500
    assert parse_directives("!mock status=500", require_prefix=False).status == 500
    # parsing stops at the first token that is not key=value
    assert parse_directives("!mock status=500 hello cut=1").cut is None
    for bad in ["!mock nope=1", "!mock status=abc", "!mock status=99", "!mock garbage=maybe",
                "!mock chunks=0", "!mock latency_ms=-1", "!mock latency_ms=nan"]:
        with pytest.raises(MockDirectiveError):
            parse_directives(bad)


def test_directive_status(llm: MockLLM) -> None:
    reply = llm.respond("chat", chat_body("!mock status=503"))
    assert reply.status == 503
    err = loads(reply.body)["error"]
    assert err["type"] == "server_error" and err["code"] == "service_unavailable"
    assert header(reply, "retry-after") is None
    reply = llm.respond("chat", chat_body("!mock status=500 retry_after=3"))
    assert reply.status == 500 and header(reply, "retry-after") == "3"
    # any status, on every endpoint, streams included (the error comes as JSON, like OpenAI's)
    assert llm.respond("chat", chat_body("!mock status=401", stream=True)).chunks is None
    assert llm.respond("completions", b'{"model": "m", "prompt": "!mock status=418"}').status == 418
    assert llm.respond("embeddings", b'{"model": "m", "input": ["!mock status=502", "x"]}').status == 502
    ok = llm.respond("chat", chat_body("!mock status=200"))
    assert ok.status == 200 and loads(ok.body)["object"] == "chat.completion"


def test_directive_429(llm: MockLLM) -> None:
    reply = llm.respond("chat", chat_body("!mock status=429"))
    assert reply.status == 429
    assert loads(reply.body)["error"]["type"] == "rate_limit_error"
    assert header(reply, "retry-after") == "1"
    assert header(reply, "x-ratelimit-remaining-requests") == "0"
    reply = llm.respond("chat", chat_body("!mock status=429 retry_after=2.5"))
    assert header(reply, "retry-after") == "3" and header(reply, "retry-after-ms") == "2500"


def test_directive_timing(llm: MockLLM) -> None:
    reply = llm.respond("chat", chat_body("!mock latency_ms=250 chunks=2 chunk_delay_ms=40", stream=True))
    assert reply.latency == pytest.approx(0.25)
    assert reply.chunk_delay == pytest.approx(0.04)
    assert len(events(reply)) == 2 + 1
    assert llm.respond("chat", chat_body("!mock latency_ms=5")).latency == pytest.approx(0.005)
    slow = MockLLM(MockConfig(latency_ms=100))
    assert slow.respond("chat", chat_body()).latency == pytest.approx(0.1)
    assert slow.respond("chat", chat_body("!mock latency_ms=0")).latency == 0


def test_directive_garbage(llm: MockLLM) -> None:
    reply = llm.respond("chat", chat_body("!mock garbage=1"))
    assert reply.status == 200
    with pytest.raises(ValueError):
        json.loads(reply.body)
    stream = llm.respond("chat", chat_body("!mock garbage=1", stream=True))
    assert stream.chunks is not None
    assert stream.chunks[-1] == b"data: [DONE]\n\n"
    json.loads(stream.chunks[0][6:-2])
    assert stream.chunks[1].startswith(b"data: ")
    with pytest.raises(ValueError):
        json.loads(stream.chunks[1][6:-2])
    emb = llm.respond("embeddings", b'{"model": "e", "input": "!mock garbage=1"}')
    with pytest.raises(ValueError):
        json.loads(emb.body)


def test_directive_cut(llm: MockLLM) -> None:
    reply = llm.respond("chat", chat_body("!mock cut=2", stream=True))
    assert reply.cut_after == 2
    reply = llm.respond("chat", chat_body("!mock cut=1000", stream=True))
    assert reply.chunks is not None and reply.cut_after == len(reply.chunks) - 1  # never [DONE]
    body = llm.respond("chat", chat_body("!mock cut=1"))
    assert body.chunks is None and body.cut_after == len(body.body) // 2


def test_directive_hang(llm: MockLLM) -> None:
    reply = llm.respond("chat", chat_body("!mock hang=1"))
    assert reply.hang and reply.latency == HANG_SECONDS


def test_directive_header_and_override(llm: MockLLM) -> None:
    reply = llm.respond("chat", chat_body(), "status=503 latency_ms=20")
    assert reply.status == 503 and reply.latency == pytest.approx(0.02)
    reply = llm.respond("chat", chat_body("!mock status=429"), "status=503 latency_ms=20")
    assert reply.status == 429 and reply.latency == pytest.approx(0.02)
    # a message can switch off what the header switched on
    assert llm.respond("chat", chat_body("!mock hang=0"), "hang=1").hang is False
    assert llm.respond("chat", chat_body(), "hang=1").hang is True
    bad = llm.respond("chat", chat_body(), "bogus=1")
    assert bad.status == 400 and loads(bad.body)["error"]["code"] == "invalid_mock_directive"
    bad = llm.respond("chat", chat_body("!mock bogus=1"))
    assert bad.status == 400 and loads(bad.body)["error"]["code"] == "invalid_mock_directive"


def test_plan_cache_bounded(llm: MockLLM, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mock_mod, "_CACHE_ENTRIES", 8)
    for i in range(30):
        llm.respond("chat", chat_body(f"q{i}"))
    assert len(llm._cache) <= 8
    first = loads(llm.respond("chat", chat_body("q29")).body)
    second = loads(llm.respond("chat", chat_body("q29")).body)
    assert first["id"] != second["id"] and strip_volatile(first) == strip_volatile(second)


# --- MockTransport -----------------------------------------------------------------------------------------


def test_transport_read_and_paths() -> None:
    async def main() -> None:
        t = MockTransport(MockConfig())
        resp = await t.request("POST", "/v1/chat/completions", [("X-Other", "1")], chat_body())
        assert resp.status == 200
        assert resp.header(b"content-type") == b"application/json"
        assert resp.header(b"nope") is None
        obj = loads(await resp.read())
        assert obj["object"] == "chat.completion"
        assert await resp.next_chunk() == b""
        resp.close()
        resp = await t.request("POST", "/openai/chat/completions?api-version=1", [], chat_body())
        assert resp.status == 200
        resp = await t.request("POST", "/v1/completions", [], b'{"model": "m", "prompt": "x"}')
        assert loads(await resp.read())["object"] == "text_completion"
        resp = await t.request("POST", "/embeddings", [], b'{"model": "m", "input": "x"}')
        assert loads(await resp.read())["object"] == "list"
        resp = await t.request("GET", "/v1/models", [], b"")
        assert loads(await resp.read())["object"] == "list"
        resp = await t.request("GET", "/v1/models/mock-1", [], b"")
        assert loads(await resp.read())["id"] == "mock-1"
        resp = await t.request("GET", "/v1/models/org/name", [], b"")
        assert resp.status == 404
        assert (await t.request("GET", "/v1/nothing", [], b"")).status == 404
        resp = await t.request("GET", "/v1/chat/completions", [], b"")
        assert resp.status == 405 and resp.header(b"allow") == b"POST"
        resp = await t.request("POST", "/v1/chat/completions", [("X-Mock", "status=502")], chat_body())
        assert resp.status == 502
        await t.close()

    asyncio.run(main())


def test_transport_stream_with_delays() -> None:
    async def main() -> None:
        # lower bounds only, from the configured delays (less a little for the timer's resolution): a
        # correct transport cannot answer sooner
        t = MockTransport(MockConfig(stream_chunks=3, latency_ms=30, chunk_delay_ms=20))
        start = time.perf_counter()
        resp = await t.request("POST", "/v1/chat/completions", [], chat_body(stream=True))
        assert time.perf_counter() - start >= 0.025  # latency before the head
        assert resp.header(b"content-type") == b"text/event-stream; charset=utf-8"
        got: list[bytes] = []
        start = time.perf_counter()
        while chunk := await resp.next_chunk():
            got.append(chunk)
        assert time.perf_counter() - start >= 0.015 * (len(got) - 1)
        assert len(got) == 3 + 1 + 1 and got[-1] == b"data: [DONE]\n\n"

    asyncio.run(main())


def test_transport_cut() -> None:
    async def main() -> None:
        t = MockTransport()
        resp = await t.request("POST", "/v1/chat/completions", [], chat_body("!mock cut=2", stream=True))
        assert resp.status == 200
        assert (await resp.next_chunk()).startswith(b"data: {")
        assert (await resp.next_chunk()).startswith(b"data: {")
        with pytest.raises(UpstreamError):
            await resp.next_chunk()
        resp = await t.request("POST", "/v1/chat/completions", [], chat_body("!mock cut=3", stream=True))
        with pytest.raises(UpstreamError):
            await resp.read()
        resp = await t.request("POST", "/v1/chat/completions", [], chat_body("!mock cut=1"))
        half = await resp.next_chunk()
        assert half and not half.endswith(b"}")
        with pytest.raises(UpstreamError):
            await resp.next_chunk()

    asyncio.run(main())


def test_transport_hang_and_timeouts() -> None:
    async def main() -> None:
        t = MockTransport(read_timeout=0.05)
        # a hang never answers: only the 0.05 s read timeout can end it, so a generous 30 s bound fails
        # only when that mechanism is missing
        with pytest.raises(UpstreamTimeout):
            await asyncio.wait_for(t.request("POST", "/v1/chat/completions", [], chat_body("!mock hang=1")),
                                   30.0)
        resp = await t.request("POST", "/v1/chat/completions", [],
                               chat_body("!mock chunk_delay_ms=200", stream=True))
        await resp.next_chunk()
        with pytest.raises(UpstreamTimeout):
            await resp.next_chunk()
        # without a read timeout a hang never answers
        forever = MockTransport()
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(forever.request("POST", "/v1/chat/completions", [],
                                                   chat_body("!mock hang=1")), 0.05)

    asyncio.run(main())


def test_transport_close_stops_reading() -> None:
    async def main() -> None:
        resp = await MockTransport().request("POST", "/v1/chat/completions", [], chat_body(stream=True))
        await resp.next_chunk()
        resp.close()
        assert await resp.next_chunk() == b""

    asyncio.run(main())


# --- MockApp -----------------------------------------------------------------------------------------------


class FakeResponder:
    def __init__(self, gone_after: int | None = None) -> None:
        self.status: int | None = None
        self.headers: list[tuple[str, str]] = []
        self.body = b""
        self.chunks: list[bytes] = []
        self.mode = ""
        self.gone_after = gone_after
        self.gone = False

    @property
    def disconnected(self) -> bool:
        return self.gone

    def send(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        assert not self.mode
        self.mode = "sent"
        self.status, self.headers, self.body = status, headers, body

    def start_stream(self, status: int, headers: list[tuple[str, str]]) -> None:
        assert not self.mode
        self.mode = "streaming"
        self.status, self.headers = status, headers

    async def write(self, chunk: bytes) -> None:
        from gateway.app import ClientGone

        assert self.mode == "streaming"
        if self.gone_after is not None and len(self.chunks) >= self.gone_after:
            self.gone = True
            raise ClientGone()
        self.chunks.append(chunk)

    def end_stream(self) -> None:
        assert self.mode == "streaming"
        self.mode = "ended"


class AbortingResponder(FakeResponder):
    def abort(self) -> None:
        assert self.mode == "streaming"
        self.mode = "aborted"


def req(
    method: str, path: str, body: bytes = b"", headers: list[tuple[bytes, bytes]] | None = None
) -> Request:
    return Request(method, path, "", 11, headers or [(b"host", b"mock")], body, True)


def serve(app: MockApp, request: Request, responder: FakeResponder | None = None) -> FakeResponder:
    r = responder or FakeResponder()

    async def main() -> None:
        await app.startup()
        await app.handle(request, r)
        await app.shutdown()

    asyncio.run(main())
    return r


def test_app_routes() -> None:
    app = MockApp(MockConfig())
    r = serve(app, req("POST", "/v1/chat/completions", chat_body()))
    assert r.mode == "sent" and r.status == 200
    ChatCompletion.model_validate_json(r.body)
    r = serve(app, req("POST", "/v1/completions", b'{"model": "m", "prompt": "x"}'))
    Completion.model_validate_json(r.body)
    r = serve(app, req("POST", "/v1/embeddings", b'{"model": "m", "input": "x"}'))
    CreateEmbeddingResponse.model_validate_json(r.body)
    r = serve(app, req("GET", "/v1/models"))
    assert [m["id"] for m in loads(r.body)["data"]] == ["mock-1", "mock-embed-1"]
    r = serve(app, req("GET", "/v1/models/mock-embed-1"))
    assert loads(r.body)["id"] == "mock-embed-1"
    r = serve(app, req("GET", "/v1/models/nope"))
    assert r.status == 404 and loads(r.body)["error"]["code"] == "model_not_found"
    r = serve(app, req("GET", "/healthz"))
    assert r.status == 200 and loads(r.body) == {"status": "ok"}
    r = serve(app, req("GET", "/v1/unknown"))
    assert r.status == 404 and loads(r.body)["error"]["type"] == "invalid_request_error"
    r = serve(app, req("GET", "/v1/chat/completions"))
    assert r.status == 405 and ("allow", "POST") in r.headers
    r = serve(app, req("POST", "/v1/models"))
    assert r.status == 405
    r = serve(app, req("POST", "/v1/chat/completions", b"{"))
    assert r.status == 400


def test_app_fast_path() -> None:
    app = MockApp(MockConfig())
    got = app.fast(req("POST", "/v1/chat/completions", chat_body()))
    assert got is not None
    status, headers, body = got
    assert status == 200 and ("content-type", "application/json") in headers
    ChatCompletion.model_validate_json(body)
    again = app.fast(req("POST", "/v1/chat/completions", chat_body()))
    assert again is not None
    assert loads(again[2])["id"] != loads(body)["id"]
    assert strip_volatile(loads(again[2])) == strip_volatile(loads(body))
    headers.append(("x-mutated", "1"))  # callers may mutate: the cached plan is not shared
    assert ("x-mutated", "1") not in app.fast(req("POST", "/v1/chat/completions", chat_body()))[1]  # type: ignore[index]
    assert app.fast(req("GET", "/healthz")) is not None
    assert app.fast(req("GET", "/v1/nothing")) is not None
    # anything that must wait, stream or cut takes the async path
    assert app.fast(req("POST", "/v1/chat/completions", chat_body(stream=True))) is None
    assert app.fast(req("POST", "/v1/chat/completions", chat_body("!mock latency_ms=1"))) is None
    assert app.fast(req("POST", "/v1/chat/completions", chat_body("!mock cut=1"))) is None
    assert app.fast(req("POST", "/v1/chat/completions", chat_body(), [(b"x-mock", b"hang=1")])) is None
    assert MockApp(MockConfig(latency_ms=1)).fast(req("POST", "/v1/chat/completions", chat_body())) is None


def test_app_stream() -> None:
    app = MockApp(MockConfig(stream_chunks=4, chunk_delay_ms=1))
    r = serve(app, req("POST", "/v1/chat/completions", chat_body(stream=True)))
    assert r.mode == "ended" and r.status == 200
    assert len(r.chunks) == 4 + 1 + 1 and r.chunks[-1] == b"data: [DONE]\n\n"
    assert ("content-type", "text/event-stream; charset=utf-8") in r.headers


def test_app_latency() -> None:
    app = MockApp(MockConfig())
    start = time.perf_counter()
    r = serve(app, req("POST", "/v1/chat/completions", chat_body("!mock latency_ms=40")))
    assert time.perf_counter() - start >= 0.035  # a lower bound only, from the configured 40 ms
    assert r.mode == "sent" and r.status == 200


def test_app_cut_aborts() -> None:
    app = MockApp()
    stream_cut = req("POST", "/v1/chat/completions", chat_body("!mock cut=2", stream=True))
    r = serve(app, stream_cut, AbortingResponder())
    assert r.mode == "aborted" and len(r.chunks) == 2
    r = serve(app, req("POST", "/v1/chat/completions", chat_body("!mock cut=1")), AbortingResponder())
    assert r.mode == "aborted" and len(r.chunks) == 1
    full = loads(app.llm.respond("chat", chat_body("x")).body)
    assert full  # a cut body is a prefix of a JSON document, not one
    with pytest.raises(ValueError):
        json.loads(r.chunks[0])
    with pytest.raises(MockAbort):
        serve(app, req("POST", "/v1/chat/completions", chat_body("!mock cut=2", stream=True)))


def test_app_client_gone_and_hang() -> None:
    app = MockApp()
    r = serve(app, req("POST", "/v1/chat/completions", chat_body(stream=True)), FakeResponder(gone_after=2))
    assert r.mode == "streaming" and len(r.chunks) == 2

    async def main() -> None:
        responder = FakeResponder()
        task = asyncio.create_task(
            app.handle(req("POST", "/v1/chat/completions", chat_body("!mock hang=1")), responder)
        )
        # the handler hangs: after it has had the loop for a while it is still waiting, unanswered (a
        # check that nothing happens: a slow machine can only make it pass, never fail)
        await asyncio.sleep(0.05)
        assert not task.done() and responder.mode == ""
        responder.gone = True
        await asyncio.wait_for(task, 30.0)  # the client's leaving ends it (generous: it checks often)
        assert responder.mode == ""

    asyncio.run(main())


def test_app_x_mock_header() -> None:
    app = MockApp()
    headers = [(b"x-mock", b"status=429 retry_after=4")]
    r = serve(app, req("POST", "/v1/chat/completions", chat_body(), headers))
    assert r.status == 429 and ("retry-after", "4") in r.headers


def test_reply_repr() -> None:
    assert "MockReply 200" in repr(MockLLM().respond("chat", chat_body()))
    assert msgspec.json.decode(MockLLM().respond("models", b"").body)
