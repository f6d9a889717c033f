"""The pieces behind the engine's hardening, in process: the JSON body checks (compiled core and twin),
usage taken from any stream chunk, a whole completion turned into a stream, one call record per request."""

from __future__ import annotations

import asyncio
import json
import os
from types import ModuleType
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from recorder import Recorder  # tests/ is on sys.path (see tests/recorder.py)

from gateway._core import jsoncheck_py
from gateway._core.http import Request
from gateway.admin.app import _decode
from gateway.admin.errors import AdminError
from gateway.config import load_config_text
from gateway.engine import Engine
from gateway.observe.records import RecordSink
from gateway.providers.openai import completion_as_stream, take_usage
from gateway.wire import MAX_JSON_DEPTH, ChatRequest, completion_decoders, key_watches

try:
    from gateway._core import _jsoncheck
except ImportError:  # pragma: no cover - only when the extension is not built
    if os.environ.get("GATEWAY_REQUIRE_EXTENSIONS") == "1":
        raise
    _jsoncheck = None  # type: ignore[assignment]

IMPLS = [
    pytest.param(jsoncheck_py, id="twin"),
    pytest.param(_jsoncheck, id="compiled",
                 marks=pytest.mark.skipif(_jsoncheck is None, reason="gateway._core._jsoncheck is not built")),
]
MODS = [m for m in (jsoncheck_py, _jsoncheck) if m is not None]
PROPS = settings(
    max_examples=int(os.environ.get("GATEWAY_PROPERTY_EXAMPLES", "200")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@pytest.fixture(params=IMPLS)
def impl(request: pytest.FixtureRequest) -> ModuleType:
    mod: ModuleType = request.param
    return mod


def watch(mod: ModuleType) -> Any:
    return mod.KeyWatch(["model", "stream", "stream_options"], {"stream_options": ["include_usage"]})


# -- check_json -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("data", "expected"), [
    (b'{"model": "a", "stream": true}', 0),
    (b'{"model": "a", "model": "b"}', 1),
    (b'{"stream": 1, "x": {"stream": 2}, "stream": 3}', 2),
    (b'{"mod\\u0065l": "a", "model": "b"}', 1),  # a key written with escapes is the same key
    (b'{"model\\"": "a", "model": "b"}', 0),  # not the same key
    (b'{"a": "\\"model\\":", "model": 1}', 0),  # the key's name inside a string value
    (b'{"a": "\\\\", "model": 1, "model": 2}', 1),  # an escaped backslash ends before the quote
    (b'{"stream_options": {"include_usage": true, "include_usage": false}}', 4),
    (b'{"stream_options": {"include_usage": true}, "x": {"include_usage": 1, "include_usage": 2}}', 0),
    (b'{"stream_options": [{"include_usage": 1, "include_usage": 2}]}', 0),
    (b'{"stream_options": {"a": {"include_usage": 1, "include_usage": 2}}}', 0),
    (b'{"stream_options": {}, "stream_options": {}}', 3),
    (b'[{"model": 1, "model": 2}]', 0),  # not an object at the top: the decoder refuses it
    (b'{"messages": [{"model": 1, "model": 2}], "model": "x"}', 0),
    (b'{"model": "a", "model', 0),  # a string that never ends: nothing more to look at
    (b"", 0),
    (b"[" * 128 + b"]" * 128, 0),
    (b"[" * 129, -1),
    (b'{"a": "' + b"[" * 500 + b'"}', 0),  # brackets in strings are text
    (b'{"a": ' + b'{"b": ' * 200, -1),
])
def test_check_json(impl: ModuleType, data: bytes, expected: int) -> None:
    assert impl.check_json(data, 128, watch(impl)) == expected
    assert impl.TOO_DEEP == -1


def test_key_watch_paths(impl: ModuleType) -> None:
    assert watch(impl).paths == ("model", "stream", "stream_options", "stream_options.include_usage")
    assert impl.KeyWatch([], {"o": ["a"]}).paths == ("o", "o.a")
    assert impl.check_json(b'{"o": {"a": 1, "a": 2}}', 8, impl.KeyWatch([], {"o": ["a"]})) == 2
    with pytest.raises(ValueError):
        impl.KeyWatch([f"k{i}" for i in range(65)])
    assert impl.check_json(b'{"model": 1, "model": 2}', 8) == 0  # no watch: the depth only


def test_the_request_watches_cover_every_field_the_decoders_read() -> None:
    assert key_watches["chat"].paths[:len(ChatRequest.__struct_fields__)] == ChatRequest.__struct_fields__
    assert "stream_options.include_usage" in key_watches["chat"].paths
    assert "stream_options.include_usage" in key_watches["completions"].paths
    assert key_watches["embeddings"].paths == ("model", "input", "user")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=4)
    | st.lists(st.tuples(st.sampled_from(["model", "stream", "x", "mod\\u0065l", 'q"', "include_usage",
                                           "stream_options"]), inner), max_size=4),
    max_leaves=20,
)


def encode_value(v: Any) -> str:
    """JSON text of a generated value; a list of (key, value) pairs is an object (keys may repeat)."""
    if isinstance(v, list) and v and all(isinstance(p, tuple) for p in v):
        return "{" + ",".join(f'"{k}" : {encode_value(x)}' if '"' not in k else f'"q\\"":{encode_value(x)}'
                              for k, x in v) + "}"
    if isinstance(v, list):
        return "[" + ",".join(encode_value(x) for x in v) + "]"
    return json.dumps(v)


def is_object(v: Any) -> bool:
    return isinstance(v, list) and bool(v) and all(isinstance(p, tuple) for p in v)


def key_name(key: str) -> str:
    return json.loads(f'"{key}"') if '"' not in key else 'q"'


def expected_problem(v: Any, paths: tuple[str, ...], max_depth: int, depth: int = 0,
                     seen: set[str] | None = None) -> int:
    """The reference: the first problem in document order (nesting past ``max_depth``, or a watched key
    repeated in the top-level object or in the object of ``stream_options``)."""
    if not isinstance(v, list):
        return 0
    if depth + 1 > max_depth:
        return -1
    if not is_object(v):
        for x in v:
            found = expected_problem(x, paths, max_depth, depth + 1)
            if found:
                return found
        return 0
    names: set[str] = set()
    for key, value in v:
        name = key_name(key)
        if depth == 0 and name in paths and "." not in name:
            if name in names:
                return paths.index(name) + 1
            names.add(name)
        if seen is not None and name == "include_usage":
            if name in seen:
                return paths.index("stream_options.include_usage") + 1
            seen.add(name)
        inner: set[str] | None = set() if depth == 0 and name == "stream_options" and is_object(value) else None
        found = expected_problem(value, paths, max_depth, depth + 1, inner)
        if found:
            return found
    return 0


@PROPS
@given(value=json_values, max_depth=st.sampled_from([2, 3, 128]))
def test_prop_check_json_matches_the_reference(value: Any, max_depth: int) -> None:
    data = encode_value(value).encode()
    results = [m.check_json(data, max_depth, watch(m)) for m in MODS]
    assert all(r == results[0] for r in results)
    assert results[0] == expected_problem(value, watch(jsoncheck_py).paths, max_depth), data


JSON_BYTES = b'{}[],":\\ model'
JSON_TABLE = bytes(JSON_BYTES[i % len(JSON_BYTES)] for i in range(256))


@PROPS
@given(data=st.binary(max_size=120).map(lambda b: b.translate(JSON_TABLE)), max_depth=st.sampled_from([0, 1, 2, 8]))
def test_prop_check_json_twins_agree_on_any_bytes(data: bytes, max_depth: int) -> None:
    results = [m.check_json(data, max_depth, watch(m)) for m in MODS]
    assert all(r == results[0] for r in results), data


def test_admin_bodies_nested_too_deep_are_400() -> None:
    from gateway.admin import wire

    with pytest.raises(AdminError) as info:
        _decode(b'{"name": ' + b"[" * 5000 + b"]" * 5000 + b"}", wire.TenantCreate)
    assert info.value.status == 400 and str(MAX_JSON_DEPTH) in info.value.message


# -- the engine, in process -------------------------------------------------------------------------------

CONFIG = """
[log]
call_records = false
[providers.mock]
type = "mock"
[models.chat]
provider = "mock"
"""


def engine() -> Engine:
    return Engine(load_config_text(CONFIG), records=RecordSink(enabled=True))


def request(body: bytes) -> Request:
    return Request("POST", "/v1/chat/completions", "", 11, [(b"host", b"t")], body, True)


def test_usage_is_taken_from_a_chunk_that_also_carries_choices() -> None:
    async def go() -> None:
        e = engine()
        await e.startup()
        try:
            ctx = e._context(request(b"{}"), Recorder())
            content = (b'data: {"choices":[{"index":0,"delta":{"content":"x"},"finish_reason":"stop"}],'
                       b'"usage":{"prompt_tokens":5,"completion_tokens":2,"total_tokens":7}}\n\n')
            usage_only = b'data: {"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":3,"total_tokens":8}}\n\n'
            # the content chunk reaches the client whole, and its usage is learned
            assert take_usage(ctx, content, True) == content
            assert ctx.usage is not None and (ctx.usage.prompt_tokens, ctx.usage.total_tokens) == (5, 7)
            # a usage-only chunk the client did not ask for is dropped, its usage learned
            assert take_usage(ctx, content + usage_only, True) == content
            assert ctx.usage.total_tokens == 8
            assert take_usage(ctx, usage_only, False) == usage_only
        finally:
            await e.shutdown()

    asyncio.run(go())


def test_a_request_is_recorded_once() -> None:
    async def go() -> None:
        e = engine()
        await e.startup()
        try:
            ctx = e._context(request(b"{}"), Recorder())
            e._settle(ctx)
            e._settle(ctx)
            assert e.records.emitted == 1 and ctx.settled
            # what never ended is recorded when the worker stops
            e._context(request(b"{}"), Recorder())
        finally:
            await e.shutdown()
        assert e.records.emitted == 2

    asyncio.run(go())


def test_deep_and_repeated_bodies_answered_by_the_engine() -> None:
    async def go() -> list[Recorder]:
        e = engine()
        await e.startup()
        out = []
        try:
            for body in (b'{"model": "chat", "messages": ' + b"[" * 3000 + b"]" * 3000 + b"}",
                         b'{"model": "chat", "messages": [], "model": "chat"}'):
                rec = Recorder()
                await e.handle(request(body), rec)
                out.append(rec)
        finally:
            await e.shutdown()
        return out

    deep, repeated = asyncio.run(go())
    assert deep.status == 400 and deep.error()["code"] == "invalid_json"
    assert str(MAX_JSON_DEPTH) in deep.error()["message"]
    assert repeated.status == 400 and repeated.error()["code"] == "duplicate_key"
    assert repeated.error()["param"] == "model"


# -- a whole completion as a stream -----------------------------------------------------------------------


def events(data: bytes) -> list[Any]:
    out = [e.removeprefix(b"data: ") for e in data.split(b"\n\n") if e]
    assert out[-1] == b"[DONE]"
    return [json.loads(e) for e in out[:-1]]


def test_chat_completion_as_stream() -> None:
    body = json.dumps({
        "id": "c1", "object": "chat.completion", "created": 7, "model": "m", "system_fingerprint": "fp",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "hi", "refusal": None},
             "finish_reason": "stop", "logprobs": None},
            {"index": 1, "message": {"role": "assistant", "content": None, "tool_calls": [
                {"id": "t1", "type": "function", "function": {"name": "f", "arguments": "{}"}},
                {"id": "t2", "type": "function", "function": {"name": "g", "arguments": "{}"}}]},
             "finish_reason": "tool_calls"}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3},
    }).encode()
    completion = completion_decoders["chat"].decode(body)
    data, usage = completion_as_stream(completion, True)
    assert usage is not None and usage.total_tokens == 3
    chunks = events(data)
    assert all(c["object"] == "chat.completion.chunk" and c["id"] == "c1" and c["created"] == 7
               and c["system_fingerprint"] == "fp" for c in chunks)
    assert chunks[0]["choices"] == [{"index": 0, "delta": {"role": "assistant", "content": "hi", "refusal": None},
                                     "logprobs": None, "finish_reason": None}]
    assert chunks[1]["choices"][0]["finish_reason"] == "stop" and chunks[1]["choices"][0]["delta"] == {}
    calls = chunks[2]["choices"][0]["delta"]["tool_calls"]
    assert [(c["index"], c["id"], c["function"]["name"]) for c in calls] == [(0, "t1", "f"), (1, "t2", "g")]
    assert chunks[3]["choices"][0]["finish_reason"] == "tool_calls"
    assert chunks[4]["choices"] == [] and chunks[4]["usage"]["total_tokens"] == 3
    # without include_usage: no usage chunk, the usage still learned
    data, usage = completion_as_stream(completion, False)
    assert usage is not None and all(c["choices"] for c in events(data))


def test_text_completion_as_stream() -> None:
    body = b'{"id": "t", "object": "text_completion", "created": 1, "model": "m", "choices": [{"text": "ab", ' \
           b'"index": 0, "finish_reason": "length"}]}'
    data, usage = completion_as_stream(completion_decoders["completions"].decode(body), True)
    chunks = events(data)
    assert usage is None and len(chunks) == 2
    assert chunks[0]["object"] == "text_completion" and chunks[0]["choices"][0]["text"] == "ab"
    assert chunks[1]["choices"][0] == {"text": "", "index": 0, "logprobs": None, "finish_reason": "length"}


def test_completion_fields_may_be_absent() -> None:
    completion = completion_decoders["chat"].decode(b'{"choices": [{"message": {"content": "x"}}]}')
    chunks = events(completion_as_stream(completion, True)[0])
    assert chunks[0]["id"] == "" and chunks[0]["choices"][0]["delta"] == {"content": "x"}
    assert chunks[1]["choices"][0]["finish_reason"] is None
    with pytest.raises(msgspec.ValidationError):
        completion_decoders["chat"].decode(b"[]")
