"""``"model": "prompt:NAME"`` from the Anthropic Messages dialect (``POST /v1/messages``), through real
processes and the official ``anthropic`` SDK: the prompt's chat call, answered as Messages (non-stream,
stream, errors in Anthropic's shape, the output-schema retry), with ordinary Messages requests unchanged.
"""

from __future__ import annotations

import json
from typing import Any

import anthropic
import httpx
import jsonschema
import pytest

from . import test_dialects_new_providers
from .conftest import Gateway, StartGateway
from .helpers import HOST, call_records, gateway_toml, provider_toml, sse_events
from .test_prompts import FILE_PROMPTS, SENTIMENT_OUT, _chat_answer, prompt_toml, version
from .tiny_upstream import TinyUpstream

pytestmark = pytest.mark.timeout(120)

#: the ``anthropic`` client's fixture, on this module's ``gw``
claude = test_dialects_new_providers.claude


@pytest.fixture
def gw(start_gateway: StartGateway, mock_port: int) -> Gateway:
    return start_gateway(gateway_toml(mock_port) + FILE_PROMPTS)


def _messages(port: int, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"http://{HOST}:{port}/v1/messages", json=body, timeout=30.0,
                      headers={"anthropic-version": "2023-06-01"})


def test_the_anthropic_sdk_calls_a_prompt_as_a_model(claude: anthropic.Anthropic, gw: Gateway) -> None:
    raw = claude.messages.with_raw_response.create(
        model="prompt:sentiment", max_tokens=200, messages=[],
        extra_body={"prompt_variables": {"text": "great service"}})
    assert raw.headers["x-gateway-prompt"] == "sentiment" and raw.headers["x-gateway-prompt-version"] == "v1"
    assert raw.headers["request-id"] == raw.headers["x-request-id"]
    msg = raw.parse()
    assert msg.type == "message" and msg.role == "assistant" and msg.id.startswith("msg_")
    assert msg.stop_reason == "end_turn"
    text = "".join(b.text for b in msg.content if b.type == "text")
    jsonschema.validate(json.loads(text), SENTIMENT_OUT)  # the chat call's output schema held
    assert msg.usage.input_tokens > 0 and msg.usage.output_tokens > 0
    records = call_records(gw.process, lambda rs: any(r.get("prompt") == "sentiment" for r in rs))
    served = [r for r in records if r.get("prompt") == "sentiment"]
    assert served[0]["status"] == 200 and served[0]["prompt_version"] == "v1"


def test_a_streamed_prompt_call_is_a_messages_stream(claude: anthropic.Anthropic) -> None:
    with claude.messages.stream(model="prompt:translate", max_tokens=200, messages=[],
                                extra_body={"prompt_variables": {"text": "hello", "target": "French"}}) as s:
        text = "".join(s.text_stream)
        final = s.get_final_message()
    assert text and final.content[0].type == "text" and final.content[0].text == text
    assert final.id.startswith("msg_") and final.stop_reason == "end_turn"
    assert final.usage.output_tokens > 0


def test_the_stream_has_the_messages_event_sequence(gw: Gateway) -> None:
    r = _messages(gw.port, {"model": "prompt:translate", "max_tokens": 100, "messages": [], "stream": True,
                            "prompt_variables": {"text": "hello", "target": "German"}})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    kinds = [json.loads(e)["type"] for e in sse_events(r.content)]
    assert kinds[:3] == ["message_start", "ping", "content_block_start"]
    assert kinds[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert "content_block_delta" in kinds and b"data: [DONE]" not in r.content


def test_prompt_errors_are_in_anthropics_shape(claude: anthropic.Anthropic, gw: Gateway) -> None:
    with pytest.raises(anthropic.BadRequestError) as bad:
        claude.messages.create(model="prompt:sentiment", max_tokens=10, messages=[],
                               extra_body={"prompt_variables": {"text": ""}})
    body: Any = bad.value.body
    assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
    assert "variables.text" in body["error"]["message"]
    with pytest.raises(anthropic.NotFoundError) as missing:
        claude.messages.create(model="prompt:nothing", max_tokens=10, messages=[])
    assert missing.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]
    with pytest.raises(anthropic.BadRequestError) as given:
        claude.messages.create(model="prompt:sentiment", max_tokens=10,
                               messages=[{"role": "user", "content": "hi"}],
                               extra_body={"prompt_variables": {"text": "fine"}})
    assert "takes no messages" in given.value.body["error"]["message"]  # type: ignore[index]
    system = _messages(gw.port, {"model": "prompt:sentiment", "max_tokens": 10, "messages": [],
                                 "system": "be rude", "prompt_variables": {"text": "fine"}})
    assert system.status_code == 400 and system.json()["error"]["type"] == "invalid_request_error"


def test_ordinary_messages_requests_are_unchanged(claude: anthropic.Anthropic) -> None:
    msg = claude.messages.create(model="mock-1", max_tokens=50,
                                 messages=[{"role": "user", "content": 'say "prompt:x"'}])
    assert msg.type == "message" and msg.content


def test_an_answer_failing_the_output_schema_twice_is_an_anthropic_502(start_gateway: StartGateway) -> None:
    always_bad = TinyUpstream(lambda p, h, b: (200, "application/json", _chat_answer("I think it is positive")))
    try:
        config = (provider_toml("bad", always_bad.port) + '\n[models.bad-model]\nprovider = "bad"\n'
                  + prompt_toml("strict", {"v1": version("bad-model", output_schema=SENTIMENT_OUT)}, live="v1"))
        gw = start_gateway(config)
        r = _messages(gw.port, {"model": "prompt:strict", "max_tokens": 10, "messages": [],
                                "prompt_variables": {"text": "hm"}})
        assert r.status_code == 502, r.text
        body = r.json()
        assert body["type"] == "error" and body["error"]["type"] == "api_error"
        assert "output schema" in body["error"]["message"] and body["request_id"]
        assert len(always_bad.seen) == 2  # once, then once more
    finally:
        always_bad.close()
