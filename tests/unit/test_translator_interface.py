"""The engine's translator interface, as the two translators implement it, without sockets.

``OpenAITranslator`` passes bytes through; ``AnthropicTranslator`` turns an OpenAI chat request into a
Messages API request and Anthropic's answers (bodies, streams, errors, heads) back into OpenAI's.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest

from gateway import errors
from gateway._core.http import Request
from gateway.cli import main
from gateway.config import load_config
from gateway.context import Context
from gateway.providers.anthropic import AnthropicTranslator, TranslatedUsage
from gateway.providers.openai import OpenAITranslator
from gateway.providers.translator import StreamRelay, Translator

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
CHAT = json.dumps({"model": "claude", "messages": [{"role": "user", "content": "hi"}]}).encode()


class _Transport:
    async def request(self, method: str, path: str, headers: list[tuple[str, str]], body: bytes) -> Any:
        raise AssertionError("not sent")

    async def close(self) -> None:
        pass


def _context(body: bytes = CHAT, endpoint: str = "chat", stream: bool = False,
         include_usage: bool = False) -> Context:
    """A request's context as the engine makes it (the compiled translators take nothing else)."""
    ctx = Context(Request("POST", "/v1/chat/completions", "", 11, [], body, True), "rid", None, None)
    ctx.endpoint = endpoint
    ctx.stream = stream
    ctx.include_usage = include_usage
    ctx.fields = type("F", (), {"model": json.loads(body).get("model")})()
    return ctx


class _Resp:
    def __init__(self, headers: list[tuple[bytes, bytes]], status: int = 200) -> None:
        self.status = status
        self.headers = headers

    def header(self, name: bytes) -> bytes | None:
        return next((v for k, v in self.headers if k == name), None)


def anthropic() -> AnthropicTranslator:
    return AnthropicTranslator("claude", _Transport(), "/v1", "sk-ant", {}, "2023-06-01", ["b1", "b2"])


def test_both_translators_have_the_interface() -> None:
    for t in (anthropic(), OpenAITranslator("o", _Transport(), "/v1", None, {})):
        translator: Translator = t
        relay: StreamRelay = t.stream_relay(_context())
        assert translator.name and relay.error is None


def test_anthropic_headers_and_path() -> None:
    t = anthropic()
    headers = dict(t._headers)
    assert headers["x-api-key"] == "sk-ant"
    assert headers["anthropic-version"] == "2023-06-01"
    assert headers["anthropic-beta"] == "b1,b2"
    assert "authorization" not in headers
    assert t._paths == {"chat": "/v1/messages", "messages": "/v1/messages", "responses": "/v1/messages",
                        "count_tokens": "/v1/messages/count_tokens"}


def test_openai_request_body_passes_bytes_through() -> None:
    t = OpenAITranslator("o", _Transport(), "/v1", None, {})
    ctx = _context()
    assert t.request_body(ctx, "claude", False) is ctx.body
    rewritten = json.loads(t.request_body(ctx, "up-1", True))
    assert rewritten["model"] == "up-1"
    streamed = json.loads(t.request_body(_context(stream=True), "claude", False))
    assert streamed["stream_options"] == {"include_usage": True}


def test_anthropic_request_body() -> None:
    body = json.loads(anthropic().request_body(_context(), "claude-up", False))
    assert body["model"] == "claude-up"
    assert body["messages"] == [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]
    assert body["max_tokens"] == 4096


@pytest.mark.parametrize("endpoint", ["completions", "embeddings"])
def test_anthropic_refuses_other_endpoints(endpoint: str) -> None:
    with pytest.raises(errors.BadRequest) as info:
        anthropic().request_body(_context(endpoint=endpoint), "claude", False)
    assert info.value.code == "unsupported_endpoint"


def test_anthropic_body_and_usage() -> None:
    ctx = _context()
    message = {
        "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-up",
        "content": [{"type": "text", "text": "hello"}], "stop_reason": "end_turn", "stop_sequence": None,
        "usage": {"input_tokens": 10, "output_tokens": 3, "cache_read_input_tokens": 100,
                  "cache_creation_input_tokens": 20},
    }
    out = json.loads(anthropic().take_body(ctx, json.dumps(message).encode()))
    assert out["choices"][0]["message"]["content"] == "hello"
    assert out["usage"]["prompt_tokens"] == 130
    assert out["usage"]["prompt_tokens_details"]["cached_tokens"] == 100
    assert isinstance(ctx.usage, TranslatedUsage)
    assert (ctx.usage.prompt_tokens, ctx.usage.completion_tokens, ctx.usage.total_tokens) == (130, 3, 133)
    assert ctx.usage.prompt_tokens_details.cached_tokens == 100 and ctx.usage.cache_write_tokens == 20


def test_anthropic_body_not_a_message_is_a_502() -> None:
    with pytest.raises(errors.BadGateway):
        anthropic().take_body(_context(), b"<html>")


def test_anthropic_errors() -> None:
    t = anthropic()
    overloaded = b'{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}'
    answer = t.error_answer(529, overloaded)
    assert answer is not None
    status, body = answer
    assert status == 503 and json.loads(body)["error"]["code"] == "upstream_overloaded"
    answer = t.error_answer(500, b"oops")
    assert answer is not None and answer[0] == 502


def test_anthropic_ratelimit_headers() -> None:
    resp = _Resp([(b"anthropic-ratelimit-requests-limit", b"50"), (b"anthropic-ratelimit-requests-remaining", b"0"),
                  (b"retry-after", b"7"), (b"request-id", b"req_1")])
    out = dict(anthropic().pass_headers(resp, True, []))
    assert out == {"x-ratelimit-limit-requests": "50", "x-ratelimit-remaining-requests": "0", "retry-after": "7"}
    assert dict(anthropic().pass_headers(resp, False, [])) == {"retry-after": "7"}


STREAM = b"".join(
    b"event: %s\ndata: %s\n\n" % (json.loads(e)["type"].encode(), e.encode())
    for e in [
        '{"type":"message_start","message":{"id":"msg_1","type":"message","role":"assistant","model":"c",'
        '"content":[],"stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":9,"output_tokens":1,'
        '"cache_read_input_tokens":4}}}',
        '{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}',
        '{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hello"}}',
        '{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":" world"}}',
        '{"type":"content_block_stop","index":0}',
        '{"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},'
        '"usage":{"output_tokens":2}}',
        '{"type":"message_stop"}',
    ]
)


def _relay_all(pieces: list[bytes], include_usage: bool) -> tuple[bytes, Context, StreamRelay]:
    ctx = _context(stream=True, include_usage=include_usage)
    relay = anthropic().stream_relay(ctx)
    out = b"".join(relay.feed(p) for p in pieces) + relay.end()
    return out, ctx, relay


def test_anthropic_stream_event_by_event_at_any_boundary() -> None:
    whole, ctx, relay = _relay_all([STREAM], True)
    assert relay.error is None
    datas = [ln[6:] for ln in whole.split(b"\n\n") if ln.startswith(b"data: ")]
    assert datas[-1] == b"[DONE]"
    chunks = [json.loads(d) for d in datas[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == "Hello world"
    assert chunks[-1]["usage"]["prompt_tokens"] == 13 and chunks[-1]["usage"]["completion_tokens"] == 2
    assert ctx.usage.prompt_tokens == 13 and ctx.usage.completion_tokens == 2
    rng = random.Random(7)
    for _ in range(20):
        cuts = sorted(rng.sample(range(1, len(STREAM)), 12))
        pieces = [STREAM[a:b] for a, b in zip([0, *cuts], [*cuts, len(STREAM)], strict=True)]
        again, _, _ = _relay_all(pieces, True)
        # the same chunks apart from ``created`` (the clock may tick between runs)
        assert len(again.split(b"\n\n")) == len(whole.split(b"\n\n"))


def test_anthropic_stream_emits_before_the_end() -> None:
    ctx = _context(stream=True)
    relay = anthropic().stream_relay(ctx)
    first_two = STREAM.split(b"\n\n", 3)
    out = relay.feed(first_two[0] + b"\n\n" + first_two[1] + b"\n\n" + first_two[2] + b"\n\n")
    assert b'"content":"Hello"' in out  # translated as it came, not buffered


def test_anthropic_stream_cut_sets_the_error() -> None:
    out, _, relay = _relay_all([STREAM[: len(STREAM) // 2]], False)
    assert relay.error is not None and relay.error.status == 502
    assert b"[DONE]" not in out


def test_anthropic_stream_error_event() -> None:
    event = b'event: error\ndata: {"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}\n\n'
    _, _, relay = _relay_all([STREAM.split(b"\n\n")[0] + b"\n\n" + event], False)
    assert relay.error is not None and relay.error.status == 503
    assert json.loads(relay.error.body)["error"]["code"] == "upstream_overloaded"


def test_anthropic_whole_answer_to_a_stream_request() -> None:
    ctx = _context(stream=True, include_usage=True)
    message = {
        "id": "msg_1", "type": "message", "role": "assistant", "model": "c",
        "content": [{"type": "tool_use", "id": "toolu_1", "name": "f", "input": {"a": 1}}],
        "stop_reason": "tool_use", "stop_sequence": None, "usage": {"input_tokens": 5, "output_tokens": 2},
    }
    out = anthropic().body_as_stream(ctx, _Resp([]), json.dumps(message).encode())
    datas = [ln[6:] for ln in out.split(b"\n\n") if ln.startswith(b"data: ")]
    assert datas[-1] == b"[DONE]"
    chunks = [json.loads(d) for d in datas[:-1]]
    calls = [tc for c in chunks if c["choices"] for tc in c["choices"][0]["delta"].get("tool_calls") or ()]
    assert calls[0]["id"] == "toolu_1" and calls[0]["index"] == 0
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "tool_calls"
    assert ctx.usage.total_tokens == 7


def test_example_anthropic_toml(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    config = load_config(EXAMPLES / "anthropic.toml")
    p = config.providers["anthropic"]
    assert p.type == "anthropic" and p.base_url is None and p.anthropic_version == "2023-06-01"
    assert main(["check", "--config", str(EXAMPLES / "anthropic.toml")]) == 0


def _problems(text: str) -> list[str]:
    from gateway.config import ConfigError, load_config_text

    try:
        load_config_text(text)
    except ConfigError as exc:
        return list(exc.errors)
    return []


def test_forward_headers_are_checked() -> None:
    base = "[providers.a]\ntype = \"anthropic\"\n[models.m]\nprovider = \"a\"\n"
    assert _problems(base) == []
    bad = '[providers.a]\ntype = "anthropic"\nforward_headers = ["Authorization", "bad header"]\n'
    problems = _problems(bad)
    assert any("forward_headers[0]" in p and "set by the gateway" in p for p in problems)
    assert any("forward_headers[1]" in p and "not a valid HTTP header name" in p for p in problems)
    assert any("beta[0]" in p for p in _problems('[providers.a]\ntype = "anthropic"\nbeta = ["a b"]\n'))


def test_forwarded_client_headers_merge() -> None:
    t = anthropic()
    t.forward_headers(["anthropic-beta", "anthropic-version"])
    request = Request("POST", "/v1/chat/completions", "", 11, [
        (b"anthropic-beta", b"b3, b1"), (b"x-other", b"1"), (b"anthropic-version", b"2026-10-21")], b"{}", True)
    extra = t.forwarded(request)
    assert extra == [("anthropic-beta", "b3, b1"), ("anthropic-version", "2026-10-21")]
    merged = dict(t.merge_headers(extra))
    assert merged["anthropic-beta"] == "b1,b2,b3"
    assert merged["anthropic-version"] == "2026-10-21"
    assert t.forwarded(Request("POST", "/", "", 11, [(b"x-other", b"1")], b"", True)) is None
