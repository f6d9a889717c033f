"""A prompt call is a call like any other: the response cache and the guardrails apply to it (issue 21's
"limits, budgets, cache, guardrails and metrics apply as to any call"), through a real gateway process."""

from __future__ import annotations

from typing import Any

import httpx

from .conftest import StartGateway
from .helpers import HOST, gateway_toml
from .test_prompts import prompt_toml

PROMPT = prompt_toml("translate", {"v1": {
    "model": "mock-1",
    "messages": [{"role": "system", "content": "Translate into {{ target }}."},
                 {"role": "user", "content": "{{ text }}"}],
    "input_schema": {"type": "object", "required": ["text", "target"],
                     "properties": {"text": {"type": "string"}, "target": {"enum": ["French", "German"]}}},
}}, live="v1", path="/v1/translate")

PHASES = """
[cache]
enabled = true

[guardrails.policies.cards]
input = { card = "block" }

[guardrails.apply]
gateway = ["cards"]
"""


def post(port: int, body: Any) -> httpx.Response:
    return httpx.post(f"http://{HOST}:{port}/v1/translate", json=body, timeout=30.0)


def test_the_cache_answers_a_repeated_prompt_call(start_gateway: StartGateway, mock_port: int) -> None:
    gw = start_gateway(gateway_toml(mock_port) + PROMPT + PHASES)
    first = post(gw.port, {"text": "Good morning", "target": "French"})
    second = post(gw.port, {"text": "Good morning", "target": "French"})
    assert first.status_code == second.status_code == 200, (first.text, second.text)
    assert first.headers["x-gateway-cache"] == "miss"
    assert second.headers["x-gateway-cache"] == "hit"
    assert second.json()["output"] == first.json()["output"]
    assert second.json()["prompt"] == "translate" and second.json()["version"] == "v1"
    other = post(gw.port, {"text": "Good morning", "target": "German"})  # another rendering: another key
    assert other.headers["x-gateway-cache"] == "miss"


def test_guardrails_check_the_rendered_prompt(start_gateway: StartGateway, mock_port: int) -> None:
    gw = start_gateway(gateway_toml(mock_port) + PROMPT + PHASES)
    refused = post(gw.port, {"text": "my card is 4111 1111 1111 1111", "target": "French"})
    assert refused.status_code == 400, refused.text
    assert refused.json()["error"]["code"] == "guardrail_card"
