"""The guardrails' fast path through real processes: what the prefilter skips, and what it must not.

A clean prompt costs one pass of the compiled prefilter over its bytes and one over its answer's, and
nothing else: not decoded, not copied, no state kept but its guard (on the request itself). The
prefilter looks for each needle at its rarest three bytes (its anchor: ``jec`` of "project phoenix"),
skips 16 positions at a time where no pair of bytes says anything, and looks for a number only after a
byte that some enabled numeric detector accepts. These tests hold the behaviour those shortcuts must
keep, through a gateway and an upstream that records what it received:

- text that trips a trigger but holds nothing (the words "token" and "secret", an ``@``, numbers, two
  capitals) reaches the upstream byte for byte, and its answer comes back byte for byte;
- a deny phrase in any case, personal data and keys at any offset of a long prompt (first bytes, last
  bytes, after a long quiet run, next to JSON punctuation) are still found;
- personal data split across stream chunks is still caught;
- a request's restore state is its own: a clean request after a masked one gets its answer untouched.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from .conftest import Gateway, _launch
from .helpers import HOST, sse_events
from .tiny_upstream import TinyUpstream

EMAIL = "alice.smith@example.com"
CARD = "4111 1111 1111 1111"
IBAN = "DE89 3704 0044 0532 0130 00"
KEY = "sk-proj-" + "aB3dE6gH9jK2mN5pQ8sT1vW4yZ7" * 2
QUIET = ("The team reviewed the release notes, fixed the retry loop, and agreed to ship after the smoke "
         "tests pass; the dashboard looked fine and nobody raised anything else worth a second look. ")

POLICY = """
[guardrails.policies.typical]
input = { email = "mask", phone = "mask", iban = "mask", card = "block", api_key = "block" }
output = { email = "mask", card = "block", api_key = "block" }
deny = { words = ["project phoenix", "internal only", "confidential draft"], action = "block" }

[guardrails.policies.keyed]
input = { email = "mask" }

[guardrails.apply]
gateway = "typical"

[guardrails.apply.models]
keyed = "keyed"
"""


def _answer(path: str, headers: dict[str, str], body: bytes) -> tuple[int, str, bytes]:
    """Echo the last user message (``ANSWER <text>``: answer <text>, with ``{email}`` and ``{card}``
    filled in by the upstream), whole or as 12 content events."""
    req = json.loads(body)
    content = req["messages"][-1]["content"]
    text = "echo: " + content
    if content.startswith("ANSWER "):
        text = content[len("ANSWER "):].replace("{email}", EMAIL).replace("{card}", CARD)
    if not req.get("stream"):
        out = {"id": "c1", "object": "chat.completion", "created": 1733512345, "model": req["model"],
               "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                            "finish_reason": "stop"}],
               "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4,
                         "prompt_tokens_details": {"cached_tokens": 0}}}
        return 200, "application/json", json.dumps(out).encode()
    size = -(-len(text) // 12)
    head = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": req["model"]}
    events = [{**head, "choices": [{"index": 0, "delta": {"content": text[i:i + size]},
                                    "finish_reason": None}]} for i in range(0, len(text), size)]
    events.append({**head, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    data = b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events) + b"data: [DONE]\n\n"
    return 200, "text/event-stream", data


@pytest.fixture(scope="module")
def upstream() -> Iterator[TinyUpstream]:
    up = TinyUpstream(_answer)
    try:
        yield up
    finally:
        up.close()


@pytest.fixture(scope="module")
def gateway(upstream: TinyUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    text = f'[providers.up]\ntype = "openai"\nbase_url = "http://{HOST}:{upstream.port}/v1"\n'
    text += 'api_key = "env:MOCK_KEY"\nread_timeout = 10.0\n'
    for model in ("m", "keyed"):
        text += f'\n[models.{model}]\nprovider = "up"\n'
    gw = _launch("guard-fastpath", tmp_path_factory.mktemp("guard-fastpath"), config_text=text + POLICY,
                 workers=1, frontend="native")
    try:
        yield gw
    finally:
        gw.process.stop()


def _post(gw: Gateway, body: bytes) -> httpx.Response:
    return httpx.post(f"http://{HOST}:{gw.port}/v1/chat/completions", content=body,
                      headers={"content-type": "application/json"}, timeout=30)


def _body(content: str, *, model: str = "m", stream: bool = False) -> bytes:
    return json.dumps({"model": model, "messages": [{"role": "user", "content": content}],
                       "stream": stream}).encode()


def _sent_content(up: TinyUpstream) -> str:
    return str(json.loads(up.seen[-1][2])["messages"][-1]["content"])


def _streamed(raw: bytes) -> tuple[str, list[dict[str, Any]]]:
    text, errors = "", []
    for data in sse_events(raw):
        if data == b"[DONE]":
            continue
        event = json.loads(data)
        if "error" in event:
            errors.append(event["error"])
        for choice in event.get("choices") or ():
            text += choice.get("delta", {}).get("content") or ""
    return text, errors


#: prompts that trip a trigger of the prefilter (a needle's anchor, a number, two capitals, an ``@``, an
#: escape) and hold nothing any detector finds
TRIPPING = [
    "the tokens and the secrets of good tests, a password-less login, api keys rotate yearly",
    "mail me @ noon, or at the usual place @home; the @ sign alone is no address",
    "order 48213, invoice INV-2024-0042, version 2.4.1 on 2024-03-15 at 10:30, 99.5% uptime",
    "project phoenixes and internal-only-ish drafts, confidentially drafted, the jeckyll project",
    "IN 2024 THE UK GDP GREW; AB 12 is no IBAN and DE 89 is not one either",
    "x = [1, 22, 333, 4444]; {\"a\": 12345678, \"b\": 4111} and a JSON number 12345",
    "quote \" backslash \\ tab \t slash / unicode caf\u00e9 \u6771\u4eac and an emoji \U0001f600",
    QUIET * 12 + "the end",
]


@pytest.mark.parametrize("content", TRIPPING)
def test_a_prompt_that_only_trips_the_prefilter_passes_byte_for_byte(
        gateway: Gateway, upstream: TinyUpstream, content: str) -> None:
    body = _body(content)
    r = _post(gateway, body)
    assert r.status_code == 200, r.text
    assert upstream.seen[-1][2] == body  # not decoded, not re-encoded: the client's bytes
    assert r.json()["choices"][0]["message"]["content"] == "echo: " + content


@pytest.mark.parametrize("content", TRIPPING)
def test_an_answer_that_only_trips_the_prefilter_comes_back_unchanged(gateway: Gateway, content: str) -> None:
    r = _post(gateway, _body("ANSWER " + content))
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == content
    streamed = _post(gateway, _body("ANSWER " + content, stream=True))
    assert _streamed(streamed.content) == (content, [])


def _placements(value: str) -> list[str]:
    """``value`` at the first bytes, the last bytes, after a long quiet run, beside JSON punctuation."""
    return [value + " " + QUIET, QUIET + value, QUIET * 8 + value + " " + QUIET, f'{{"v":"{value}"}}',
            QUIET[:15] + " " + value, value]


@pytest.mark.parametrize("phrase", ["project phoenix", "PROJECT PHOENIX", "Internal Only",
                                    "cONFIDENTIAL dRAFT"])
def test_a_deny_phrase_in_any_case_at_any_place_is_blocked(
        gateway: Gateway, upstream: TinyUpstream, phrase: str) -> None:
    for content in _placements(phrase):
        before = len(upstream.seen)
        r = _post(gateway, _body(content))
        assert r.status_code == 400, (content, r.text)
        assert r.json()["error"]["code"] == "guardrail_deny"
        assert len(upstream.seen) == before  # nothing was sent


@pytest.mark.parametrize(("value", "code"), [(CARD, "guardrail_card"), (KEY, "guardrail_api_key")])
def test_a_blocked_value_at_any_place_is_blocked(gateway: Gateway, value: str, code: str) -> None:
    for content in _placements(value):
        r = _post(gateway, _body(content))
        assert r.status_code == 400, (content, r.text)
        assert r.json()["error"]["code"] == code


@pytest.mark.parametrize("value", [EMAIL, IBAN])
def test_a_masked_value_at_any_place_never_reaches_the_upstream(
        gateway: Gateway, upstream: TinyUpstream, value: str) -> None:
    for content in _placements(value):
        r = _post(gateway, _body(content))
        assert r.status_code == 200, r.text
        sent = _sent_content(upstream)
        assert value not in sent and "<" in sent, content
        assert r.json()["choices"][0]["message"]["content"] == "echo: " + content  # restored


@pytest.mark.parametrize(("value", "slot"), [(EMAIL, "{email}"), (CARD, "{card}")])
def test_a_value_split_across_stream_chunks_is_still_caught(gateway: Gateway, value: str, slot: str) -> None:
    # the upstream writes the value (the prompt holds only its slot); 12 content events: the value falls
    # across chunk boundaries at other offsets with each lead
    for lead in range(0, 24, 5):
        r = _post(gateway, _body("ANSWER " + QUIET[:lead] + " " + slot + " " + QUIET[:40], stream=True))
        assert r.status_code == 200, r.text
        got, errors = _streamed(r.content)
        assert value not in got, (lead, got)
        if value == CARD:
            assert errors and errors[0]["code"] == "guardrail_card", got
        else:
            assert "<EMAIL_1>" in got and not errors, got


def test_a_clean_request_after_a_masked_one_gets_its_answer_untouched(gateway: Gateway) -> None:
    """The restore state is the request's own: a placeholder that a clean request's answer happens to
    hold is not replaced by the value another request had masked."""
    with httpx.Client(timeout=30) as client:  # one connection, one worker: the requests follow each other
        url = f"http://{HOST}:{gateway.port}/v1/chat/completions"
        masked = client.post(url, content=_body(f"write to {EMAIL}"),
                             headers={"content-type": "application/json"})
        assert masked.json()["choices"][0]["message"]["content"] == f"echo: write to {EMAIL}"
        for _ in range(3):
            clean = client.post(url, content=_body("ANSWER say <EMAIL_1> back"),
                                headers={"content-type": "application/json"})
            assert clean.status_code == 200, clean.text
            assert clean.json()["choices"][0]["message"]["content"] == "say <EMAIL_1> back"


def test_policies_by_model_and_for_the_gateway_both_apply(gateway: Gateway, upstream: TinyUpstream) -> None:
    """The gateway's policy alone is kept as the one guard of every request; a model with its own policy
    still gets both (the strictest action)."""
    r = _post(gateway, _body(f"write to {EMAIL} about project phoenix", model="keyed"))
    assert r.status_code == 400 and r.json()["error"]["code"] == "guardrail_deny"
    r = _post(gateway, _body(f"write to {EMAIL}", model="keyed"))
    assert r.status_code == 200, r.text
    assert EMAIL not in _sent_content(upstream)
