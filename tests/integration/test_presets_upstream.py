"""Preset body quirks on the wire: a ``gateway serve`` in front of an upstream that records every request
(``RecordingUpstream``), with providers ``preset = "mistral"``, ``preset = "groq"`` and a plain ``openai``
one side by side, so the bytes each gets can be compared with what the client sent."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from .conftest import Gateway, StartGateway
from .helpers import HOST, RawClient, RecordingUpstream, call_records, http_request, sse_events
from .tiny_upstream import TinyUpstream

pytestmark = pytest.mark.timeout(60)


def _config(port: int) -> str:
    base = f'base_url = "http://{HOST}:{port}/v1"\napi_key = "env:MOCK_KEY"\n'
    return (
        '[server]\ndrain_timeout = 2.0\n[log]\nlevel = "info"\ncall_records = true\n'
        f'\n[providers.mistral]\ntype = "openai"\npreset = "mistral"\n{base}'
        f'\n[providers.groq]\ntype = "openai"\npreset = "groq"\n{base}'
        f'\n[providers.plain]\ntype = "openai"\n{base}'
        '\n[models.mistral-small]\nprovider = "mistral"\nupstream_model = "mistral-small-latest"\n'
        '\n[models.llama]\nprovider = "groq"\n'
        '\n[models.plain]\nprovider = "plain"\n'
        # a routed model: the quirks apply on the routing path too
        '\n[models.llama-routed]\nretry = { max_attempts = 2 }\n'
        'deployments = [{ provider = "groq", upstream_model = "llama-3.3-70b" }]\n'
    )


@pytest.fixture(scope="module")
def upstream() -> Iterator[RecordingUpstream]:
    with RecordingUpstream() as up:
        yield up


@pytest.fixture
def gateway(start_gateway: StartGateway, upstream: RecordingUpstream) -> Gateway:
    return start_gateway(_config(upstream.port), name="presets")


def _post(gw: Gateway, body: bytes, request_id: str) -> tuple[int, bytes]:
    with RawClient(gw.port) as c:
        resp = c.request(http_request("POST", "/v1/chat/completions", body,
                                      headers=[("X-Request-Id", request_id)]))
    return resp.status, resp.body


def _sent(up: RecordingUpstream, request_id: str) -> Any:
    (req,) = [r for r in up.requests if r.headers.get("x-request-id") == request_id]
    return req


def test_mistral_gets_no_stream_options_and_max_tokens(gateway: Gateway, upstream: RecordingUpstream) -> None:
    # the client does not ask for usage: the gateway does not ask Mistral (it refuses stream_options) ...
    body = b'{"model":"mistral-small","stream":true,"max_completion_tokens":32,"messages":[{"role":"user","content":"hi"}]}'
    status, out = _post(gateway, body, "mistral-1")
    assert status == 200
    sent = _sent(upstream, "mistral-1").json()
    assert "stream_options" not in sent and "max_completion_tokens" not in sent
    assert sent["max_tokens"] == 32 and sent["model"] == "mistral-small-latest"
    events = sse_events(out)
    assert events[-1] == b"[DONE]" and not any(b'"usage":{' in e for e in events)  # not asked for: stripped
    # ... and a client's own stream_options is dropped too; the usage Mistral sends anyway reaches it
    body = (b'{"model":"mistral-small","stream":true,"stream_options":{"include_usage":true},'
            b'"messages":[{"role":"user","content":"hi"}]}')
    status, out = _post(gateway, body, "mistral-2")
    assert status == 200 and "stream_options" not in _sent(upstream, "mistral-2").json()
    assert any(json.loads(e).get("usage") for e in sse_events(out) if e != b"[DONE]")
    recs = call_records(gateway.process, lambda rs: {"mistral-1", "mistral-2"} <= {r.get("request_id") for r in rs})
    assert all(r["total_tokens"] == 4 for r in recs if r.get("request_id") in ("mistral-1", "mistral-2"))


@pytest.mark.parametrize("model", ["llama", "llama-routed"])
def test_groq_drops_the_fields_it_refuses(gateway: Gateway, upstream: RecordingUpstream, model: str) -> None:
    body = json.dumps({"model": model, "logprobs": True, "top_logprobs": 2, "logit_bias": {"1": 5},
                       "messages": [{"role": "user", "content": "hi"}], "seed": 3}).encode()
    status, _ = _post(gateway, body, f"groq-{model}")
    assert status == 200
    sent = _sent(upstream, f"groq-{model}").json()
    assert set(sent) == {"model", "messages", "seed"}


def test_without_a_quirk_field_the_bytes_pass_through(gateway: Gateway, upstream: RecordingUpstream) -> None:
    body = b'{ "model" : "llama",  "messages": [{"role": "user", "content": "what are logprobs?"}] }'
    assert _post(gateway, body, "groq-plain")[0] == 200
    assert _sent(upstream, "groq-plain").body == body


def test_plain_openai_is_byte_for_byte(gateway: Gateway, upstream: RecordingUpstream) -> None:
    body = b'{"model":"plain","logprobs":true,"top_logprobs":2,"max_completion_tokens":9,"messages":[]}'
    assert _post(gateway, body, "plain-1")[0] == 200
    assert _sent(upstream, "plain-1").body == body


def _openrouter_stream() -> bytes:
    """A stream as OpenRouter sends it: SSE comment lines (``: OPENROUTER PROCESSING``) between the events,
    the usage on a last chunk without choices."""
    head = {"id": "gen-1", "object": "chat.completion.chunk", "created": 1, "model": "openai/gpt-4o"}
    chunks = [
        {**head, "choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hel"}}]},
        {**head, "choices": [{"index": 0, "delta": {"content": "lo"}, "finish_reason": "stop"}]},
        {**head, "choices": [], "usage": {"prompt_tokens": 6, "completion_tokens": 2, "total_tokens": 8}},
    ]
    events = [b"data: " + json.dumps(c).encode() + b"\n\n" for c in chunks]
    comment = b": OPENROUTER PROCESSING\n\n"
    return comment + events[0] + comment + events[1] + events[2] + b"data: [DONE]\n\n"


def test_openrouter_stream_comments_reach_the_sdk_harmlessly(start_gateway: StartGateway) -> None:
    up = TinyUpstream(lambda path, headers, body: (200, "text/event-stream", _openrouter_stream()))
    try:
        text = ('[log]\nlevel = "info"\ncall_records = true\n[providers.or]\ntype = "openai"\npreset = "openrouter"\n'
                f'base_url = "http://{HOST}:{up.port}/api/v1"\napi_key = "env:MOCK_KEY"\n'
                '[models.gpt]\nprovider = "or"\nupstream_model = "openai/gpt-4o"\n')
        gw = start_gateway(text, name="openrouter")
        with gw.client() as client:
            raw = client.chat.completions.with_raw_response.create(
                model="gpt", messages=[{"role": "user", "content": "hi"}], stream=True)
            chunks = list(raw.parse())
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello"
        assert all(c.usage is None for c in chunks)  # not asked for: the usage chunk is removed
        request_id = raw.headers["x-request-id"]
        recs = call_records(gw.process, lambda rs: any(r.get("request_id") == request_id for r in rs))
        (rec,) = [r for r in recs if r.get("request_id") == request_id]
        assert rec["total_tokens"] == 8 and rec["status"] == 200
    finally:
        up.close()
