"""The response cache for every client dialect, through real processes: the official ``anthropic`` SDK
on ``/v1/messages`` and the ``openai`` SDK's ``responses`` on ``/v1/responses``.

One ``gateway serve`` with the cache on, keys for two tenants, in front of ``gateway mock --dialect
anthropic`` (a Messages client is pass-through) and the standalone OpenAI-dialect mock (translated).
Miss then hit (``x-gateway-cache``), whole and stream replays equal to the original answer (text, tool
use, thinking and its signature, usage), tenant isolation, ``no-store`` / ``no-cache``, one entry per
dialect, and for Responses: a hit is a new stored response (its own id, ``GET`` finds it) and a request
continuing a conversation is keyed on that conversation.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest

from gateway.auth import digest, format_key

from .conftest import Gateway, _launch, _stop
from .helpers import HOST, call_records
from .test_anthropic_upstream import ANTH_KEY, anthropic_mock  # noqa: F401  # its fixture, shared

pytestmark = pytest.mark.timeout(180)

KEY_A = format_key("dialcacheaaa", "A" * 43)
KEY_B = format_key("dialcachebbb", "B" * 43)
WEATHER = {
    "name": "get_weather",
    "description": "The weather in a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
THINKING = {"type": "enabled", "budget_tokens": 1024}


def _config(anth_port: int, mock_port: int) -> str:
    return f"""
[server]
drain_timeout = 2.0
[log]
level = "info"
call_records = true

[auth]
required = true
[[auth.keys]]
id = "dialcacheaaa"
digest = "{digest("A" * 43, b'')}"
tenant = "alpha"
[[auth.keys]]
id = "dialcachebbb"
digest = "{digest("B" * 43, b'')}"
tenant = "beta"
[tenants.alpha]
[tenants.beta]

[providers.claude]
type = "anthropic"
base_url = "http://{HOST}:{anth_port}/v1"
api_key = "env:ANTH_KEY"
read_timeout = 10.0

[providers.openai]
type = "openai"
base_url = "http://{HOST}:{mock_port}/v1"
api_key = "env:MOCK_KEY"

[models.claude]
provider = "claude"
upstream_model = "claude-mock"

[models.gpt]
provider = "openai"
upstream_model = "mock-1"

[cache]
enabled = true
"""


@pytest.fixture(scope="module")
def gw(mock_port: int, logs_dir: Path, request: pytest.FixtureRequest) -> Iterator[Gateway]:
    anth_port = request.getfixturevalue("anthropic_mock")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ANTH_KEY", ANTH_KEY)
        gateway = _launch("gateway-cache-dialects", logs_dir, config_text=_config(anth_port, mock_port),
                          workers=1, frontend="native")
    failed = request.session.testsfailed
    try:
        yield gateway
    finally:
        _stop(gateway.process, request, failed)


Sdk = Callable[..., anthropic.Anthropic]


@pytest.fixture
def sdk(gw: Gateway) -> Iterator[Sdk]:
    made: list[anthropic.Anthropic] = []

    def make(key: str = KEY_A) -> anthropic.Anthropic:
        c = anthropic.Anthropic(base_url=f"http://{HOST}:{gw.port}", api_key=key, max_retries=0, timeout=30.0)
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()


@pytest.fixture
def oai(gw: Gateway) -> Iterator[openai.OpenAI]:
    c = openai.OpenAI(base_url=gw.base_url, api_key=KEY_A, max_retries=0, timeout=30.0)
    yield c
    c.close()


def _user(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


def _create(c: anthropic.Anthropic, headers: dict[str, str] | None = None,
            **params: Any) -> tuple[str | None, anthropic.types.Message, httpx.Headers]:
    raw = c.messages.with_raw_response.create(extra_headers=headers or {}, **params)
    return raw.headers.get("x-gateway-cache"), raw.parse(), raw.headers


def _stream(c: anthropic.Anthropic, **params: Any) -> tuple[str | None, anthropic.types.Message, str]:
    with c.messages.stream(**params) as s:
        text = "".join(s.text_stream)
        final = s.get_final_message()
        return s.response.headers.get("x-gateway-cache"), final, text


def _same(a: anthropic.types.Message) -> dict[str, Any]:
    """What a replay keeps of a message: all of it but the usage details the IR does not hold (the
    ``cache_creation`` breakdown, ``service_tier``, ``server_tool_use``): the four token counts stay."""
    u = a.usage
    return {**a.model_dump(exclude={"usage"}),
            "usage": (u.input_tokens, u.output_tokens, u.cache_read_input_tokens or 0,
                      u.cache_creation_input_tokens or 0)}


def _text(msg: anthropic.types.Message) -> str:
    return "".join(b.text for b in msg.content if b.type == "text")


# -- Anthropic Messages ------------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["claude", "gpt"])
def test_messages_miss_then_hit_whole_and_streamed(sdk: Sdk, gw: Gateway, model: str) -> None:
    """Pass-through (claude) and translated (gpt): a whole miss is stored; the repeat is a hit with the
    same message and usage; a stream of the same request replays it, read by the SDK into an equal
    message; the call record of a hit has no provider."""
    c = sdk()
    params: dict[str, Any] = {"model": model, "max_tokens": 64, "messages": _user(f"whole then stream {model}")}
    outcome, first, headers = _create(c, **params)
    assert outcome == "miss"
    outcome, again, headers = _create(c, **params)
    assert outcome == "hit" and headers.get("age") is not None
    assert headers.get("request-id")  # the dialect's own header names on a hit too
    assert _same(again) == _same(first)
    assert again.usage.input_tokens == first.usage.input_tokens and again.usage.output_tokens > 0
    outcome, streamed, text = _stream(c, **params)
    assert outcome == "hit"
    assert text == _text(first)
    assert _same(streamed) == _same(first)
    records = call_records(gw.process, lambda rs: sum(
        r.get("cache") == "hit" and r.get("path") == "/v1/messages" and r.get("model") == model
        for r in rs) >= 2)
    hit = next(r for r in records if r.get("cache") == "hit" and r.get("model") == model)
    assert hit.get("provider") is None


@pytest.mark.parametrize("model", ["claude", "gpt"])
def test_messages_a_streamed_miss_is_stored_and_replayed_both_ways(sdk: Sdk, model: str) -> None:
    c = sdk()
    params: dict[str, Any] = {"model": model, "max_tokens": 64, "messages": _user(f"stream first {model}")}
    outcome, original, text = _stream(c, **params)
    assert outcome == "miss" and text
    outcome, replayed, replayed_text = _stream(c, **params)
    assert outcome == "hit"
    assert replayed_text == text and _same(replayed) == _same(original)
    outcome, whole, _ = _create(c, **params)
    assert outcome == "hit"
    assert _same(whole) == _same(original)


def test_messages_thinking_and_tool_use_survive_the_cache(sdk: Sdk) -> None:
    """Pass-through with thinking on and a tool call: the stored answer keeps the thinking block's text
    and signature and the tool call's id and input, streamed or whole; the replayed signature is still
    one the upstream accepts on the next turn."""
    c = sdk()
    params: dict[str, Any] = {"model": "claude", "max_tokens": 2048, "thinking": THINKING, "tools": [WEATHER],
                              "messages": _user("What is the weather in Paris? !tool get_weather")}
    outcome, original, _ = _stream(c, **params)
    assert outcome == "miss"
    kinds = [b.type for b in original.content]
    assert kinds[0] == "thinking" and "tool_use" in kinds
    assert original.content[0].signature  # type: ignore[union-attr]
    outcome, replayed, _ = _stream(c, **params)
    assert outcome == "hit" and _same(replayed) == _same(original)
    outcome, whole, _ = _create(c, **params)
    assert outcome == "hit" and _same(whole) == _same(original)
    assert whole.stop_reason == "tool_use"
    call = next(b for b in whole.content if b.type == "tool_use")
    follow = c.messages.create(model="claude", max_tokens=2048, thinking=THINKING, tools=[WEATHER], messages=[
        *params["messages"],
        {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in whole.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "sunny"}]},
    ])
    assert follow.content


def test_messages_translated_tool_use_is_replayed(sdk: Sdk) -> None:
    c = sdk()
    params: dict[str, Any] = {"model": "gpt", "max_tokens": 64, "tools": [WEATHER],
                              "tool_choice": {"type": "any"}, "messages": _user("weather in Oslo")}
    outcome, original, _ = _create(c, **params)
    assert outcome == "miss" and original.stop_reason == "tool_use"
    outcome, streamed, _ = _stream(c, **params)
    assert outcome == "hit" and _same(streamed) == _same(original)


def test_messages_keys_leave_out_metadata_and_cache_control(sdk: Sdk) -> None:
    """``metadata`` and the ``cache_control`` marks do not change the answer: one entry; a different
    ``anthropic-beta`` header is another."""
    c = sdk()
    system = "You answer briefly."
    base: dict[str, Any] = {"model": "claude", "max_tokens": 64, "messages": _user("marks and metadata")}
    outcome, _, _ = _create(c, system=system, **base)
    assert outcome == "miss"
    marked = [{"type": "text", "text": system, "cache_control": {"type": "ephemeral"}}]
    outcome, second, _ = _create(c, system=marked, metadata={"user_id": "someone"}, **base)
    # a string system and one text block are different JSON: another entry; the marks alone are not
    assert outcome == "miss"
    outcome, third, _ = _create(c, system=[{"type": "text", "text": system}], **base)
    assert outcome == "hit" and _same(third) == _same(second)
    outcome, _, _ = _create(c, headers={"anthropic-beta": "some-beta-2025-01-01"}, system=marked, **base)
    assert outcome == "miss"


def test_messages_tenants_are_isolated(sdk: Sdk) -> None:
    params: dict[str, Any] = {"model": "gpt", "max_tokens": 64, "messages": _user("tenant isolation")}
    assert _create(sdk(KEY_A), **params)[0] == "miss"
    assert _create(sdk(KEY_B), **params)[0] == "miss"
    assert _create(sdk(KEY_A), **params)[0] == "hit"
    assert _create(sdk(KEY_B), **params)[0] == "hit"


def test_messages_no_store_and_no_cache(sdk: Sdk) -> None:
    c = sdk()
    params: dict[str, Any] = {"model": "claude", "max_tokens": 64, "messages": _user("client controls")}
    assert _create(c, headers={"Cache-Control": "no-store"}, **params)[0] == "miss"
    assert _create(c, **params)[0] == "miss"  # not stored by the no-store request; stored now
    assert _create(c, headers={"Cache-Control": "no-cache"}, **params)[0] == "bypass"
    assert _create(c, **params)[0] == "hit"


def test_dialects_never_share_an_entry(gw: Gateway) -> None:
    """The very same JSON body to chat completions and to messages: two entries, each answered in its
    own dialect."""
    body = json.dumps({"model": "gpt", "max_tokens": 32, "messages": _user("one body, two dialects")})
    headers = {"content-type": "application/json", "authorization": f"Bearer {KEY_A}",
               "anthropic-version": "2023-06-01"}

    def post(path: str) -> httpx.Response:
        return httpx.post(f"http://{HOST}:{gw.port}{path}", content=body, headers=headers, timeout=30.0)

    chat = post("/v1/chat/completions")
    assert chat.status_code == 200 and chat.headers["x-gateway-cache"] == "miss"
    messages = post("/v1/messages")
    assert messages.status_code == 200 and messages.headers["x-gateway-cache"] == "miss"
    assert messages.json()["type"] == "message"
    assert post("/v1/messages").headers["x-gateway-cache"] == "hit"
    again = post("/v1/chat/completions")
    assert again.headers["x-gateway-cache"] == "hit" and again.json()["object"] == "chat.completion"


# -- OpenAI Responses --------------------------------------------------------------------------------


def _responses(c: openai.OpenAI, **params: Any) -> tuple[str | None, Any]:
    raw = c.responses.with_raw_response.create(**params)
    return raw.headers.get("x-gateway-cache"), raw.parse()


def test_responses_hit_is_a_new_stored_response(oai: openai.OpenAI) -> None:
    params: dict[str, Any] = {"model": "gpt", "input": "responses cache whole", "metadata": {"run": "1"}}
    outcome, first = _responses(oai, **params)
    assert outcome == "miss" and first.output_text
    outcome, hit = _responses(oai, **{**params, "metadata": {"run": "2"}})
    assert outcome == "hit"
    assert hit.id != first.id and hit.output_text == first.output_text
    assert hit.metadata == {"run": "2"}  # the request's own echoed parameters
    assert hit.usage is not None and hit.usage.output_tokens == first.usage.output_tokens  # type: ignore[union-attr]
    stored = oai.responses.retrieve(hit.id)
    assert stored.id == hit.id and stored.output_text == hit.output_text
    # byte-identical repeats: each one a new response too (no rendered answer is reused)
    repeats = [_responses(oai, **{**params, "metadata": {"run": "2"}}) for _ in range(2)]
    assert [o for o, _ in repeats] == ["hit", "hit"]
    assert len({hit.id, *(r.id for _, r in repeats)}) == 3
    assert all(oai.responses.retrieve(r.id).output_text == first.output_text for _, r in repeats)
    # a stream of the same request: a hit too, read by the SDK to the same output
    raw = oai.responses.with_raw_response.create(stream=True, **params)
    assert raw.headers.get("x-gateway-cache") == "hit"
    events = list(raw.parse())
    done = [e for e in events if e.type == "response.completed"]
    assert len(done) == 1 and done[0].response.output_text == first.output_text
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas == first.output_text
    assert oai.responses.retrieve(done[0].response.id).output_text == first.output_text


def test_responses_streamed_miss_then_hit(oai: openai.OpenAI) -> None:
    params: dict[str, Any] = {"model": "gpt", "input": "responses cache streamed first"}
    raw = oai.responses.with_raw_response.create(stream=True, **params)
    assert raw.headers.get("x-gateway-cache") == "miss"
    original = next(e for e in raw.parse() if e.type == "response.completed").response
    outcome, hit = _responses(oai, **params)
    assert outcome == "hit" and hit.output_text == original.output_text and hit.id != original.id


def test_responses_store_false_hit_is_not_stored(oai: openai.OpenAI) -> None:
    params: dict[str, Any] = {"model": "gpt", "input": "responses cache no store"}
    assert _responses(oai, **params)[0] == "miss"
    outcome, hit = _responses(oai, store=False, **params)
    assert outcome == "hit"
    with pytest.raises(openai.NotFoundError):
        oai.responses.retrieve(hit.id)


def test_responses_keyed_on_the_conversation(oai: openai.OpenAI) -> None:
    """A request continuing a response is keyed on the conversation it resolves to: continuing the
    original or its cached copy is one question (the copy holds the same conversation)."""
    _, first = _responses(oai, model="gpt", input="conversation turn one")
    outcome, copy = _responses(oai, model="gpt", input="conversation turn one")
    assert outcome == "hit" and copy.id != first.id
    outcome, next_of_first = _responses(oai, model="gpt", input="and turn two", previous_response_id=first.id)
    assert outcome == "miss"
    outcome, next_of_copy = _responses(oai, model="gpt", input="and turn two", previous_response_id=copy.id)
    assert outcome == "hit" and next_of_copy.output_text == next_of_first.output_text
    outcome, _ = _responses(oai, model="gpt", input="and turn two")  # no previous: another question
    assert outcome == "miss"


def test_responses_tenants_are_isolated(gw: Gateway) -> None:
    a = openai.OpenAI(base_url=gw.base_url, api_key=KEY_A, max_retries=0, timeout=30.0)
    b = openai.OpenAI(base_url=gw.base_url, api_key=KEY_B, max_retries=0, timeout=30.0)
    try:
        params: dict[str, Any] = {"model": "gpt", "input": "responses tenant isolation"}
        assert _responses(a, **params)[0] == "miss"
        assert _responses(b, **params)[0] == "miss"
        assert _responses(a, **params)[0] == "hit"
    finally:
        a.close()
        b.close()
