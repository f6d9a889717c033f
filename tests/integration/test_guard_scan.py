"""The guardrails' prefilter through real processes: an upstream that records the bytes it received.

Two gateways in front of the same upstream, one with a typical policy (e-mail, phone, card, IBAN, API
keys; a deny list) and one without: an ordinary request reaches the upstream byte for byte as it reaches
it without guardrails (the prefilter found nothing: the body was neither decoded nor rebuilt), whatever
its formatting; personal data written with JSON escapes (``\\u0040`` for ``@``, escaped digits) is found
all the same, where the detectors alone read past it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest

from .conftest import Gateway, _launch
from .helpers import HOST
from .tiny_upstream import TinyUpstream

POLICY = """
[guardrails.policies.typical]
input = { email = "mask", phone = "mask", iban = "mask", card = "block", api_key = "block" }
output = { email = "mask", card = "block", api_key = "block" }
deny = { words = ["project phoenix", "internal only"], action = "block" }

[guardrails.apply]
gateway = "typical"
"""


def _answer(path: str, headers: dict[str, str], body: bytes) -> tuple[int, str, bytes]:
    content = json.loads(body)["messages"][-1]["content"]
    out = {"id": "c1", "object": "chat.completion", "created": 1733512345, "model": "m",
           "choices": [{"index": 0, "message": {"role": "assistant", "content": "echo: " + content},
                        "finish_reason": "stop"}],
           "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}}
    return 200, "application/json", json.dumps(out).encode()


@pytest.fixture(scope="module")
def upstream() -> Iterator[TinyUpstream]:
    up = TinyUpstream(_answer)
    try:
        yield up
    finally:
        up.close()


def _gateway(name: str, up: TinyUpstream, tmp: pytest.TempPathFactory, extra: str) -> Gateway:
    text = f'[providers.up]\ntype = "openai"\nbase_url = "http://{HOST}:{up.port}/v1"\n'
    text += 'api_key = "env:MOCK_KEY"\nread_timeout = 10.0\n\n[models.m]\nprovider = "up"\n' + extra
    return _launch(name, tmp.mktemp(name), config_text=text, workers=1, frontend="native")


@pytest.fixture(scope="module")
def gateways(upstream: TinyUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gateway, Gateway]]:
    on = _gateway("guard-scan-on", upstream, tmp_path_factory, POLICY)
    try:
        off = _gateway("guard-scan-off", upstream, tmp_path_factory, "")
        try:
            yield on, off
        finally:
            off.process.stop()
    finally:
        on.process.stop()


def _post(gw: Gateway, body: bytes) -> httpx.Response:
    return httpx.post(f"http://{HOST}:{gw.port}/v1/chat/completions", content=body,
                      headers={"content-type": "application/json"}, timeout=30)


def _received(up: TinyUpstream, send: object) -> bytes:
    before = len(up.seen)
    resp = send()  # type: ignore[operator]
    assert resp.status_code == 200, resp.content
    assert len(up.seen) == before + 1
    return up.seen[-1][2]


#: ordinary prompts, in the shapes clients send: spaces after separators or none, escaped non-ASCII and
#: slashes, dates, order and invoice numbers, code, a version, a time, JSON numbers
ORDINARY = [
    b'{"model":"m","messages":[{"role":"user","content":"Summarise the notes of 2024-03-15: order 48213, '
    b'invoice INV-2024-0042, version 2.4.1, at 10:30, 99.5% uptime."}]}',
    b'{ "model" : "m", "temperature": 0.2, "max_tokens": 1234567890123,\n  "messages": [ {"role": "system", '
    b'"content": "You are terse."}, {"role": "user", "content": "caf\\u00e9 na\\u00efve \\u4e2d\\u6587 '
    b'https:\\/\\/example.org\\/a, \\"quoted\\", tab\\tend\\n def f(x): return x * 1000 + 42"} ] }',
    '{"model":"m","messages":[{"role":"user","content":"Grüße aus Köln — 東京 ✓ total_tokens: see '
    'the usage, token counts, secrets of cooking"}]}'.encode(),
]


@pytest.mark.parametrize("case", range(len(ORDINARY)))
def test_ordinary_request_reaches_the_upstream_byte_identical(
        gateways: tuple[Gateway, Gateway], upstream: TinyUpstream, case: int) -> None:
    on, off = gateways
    body = ORDINARY[case]
    guarded = _received(upstream, lambda: _post(on, body))
    unguarded = _received(upstream, lambda: _post(off, body))
    assert guarded == unguarded


def test_escaped_email_is_masked_like_a_plain_one(gateways: tuple[Gateway, Gateway],
                                                  upstream: TinyUpstream) -> None:
    on, _ = gateways
    body = (b'{"model":"m","messages":[{"role":"user","content":'
            b'"write to alice.smith\\u0040example.com today"}]}')
    resp = _post(on, body)
    assert resp.status_code == 200, resp.content
    sent = upstream.seen[-1][2]
    assert b"alice.smith" not in sent and b"example.com" not in sent
    assert json.loads(sent)["messages"][0]["content"] == "write to <EMAIL_1> today"
    # the client gets its own address back, as it wrote it
    answer = json.loads(resp.content)["choices"][0]["message"]["content"]
    assert answer == "echo: write to alice.smith@example.com today"


def test_escaped_card_digits_are_refused(gateways: tuple[Gateway, Gateway], upstream: TinyUpstream) -> None:
    on, _ = gateways
    before = len(upstream.seen)
    body = (b'{"model":"m","messages":[{"role":"user","content":'
            b'"pay with \\u0034111 1111 1111 1111 please"}]}')
    resp = _post(on, body)
    assert resp.status_code == 400, resp.content
    assert json.loads(resp.content)["error"]["code"] == "guardrail_card"
    assert len(upstream.seen) == before


def test_escaped_deny_word_is_refused(gateways: tuple[Gateway, Gateway], upstream: TinyUpstream) -> None:
    on, _ = gateways
    before = len(upstream.seen)
    body = b'{"model":"m","messages":[{"role":"user","content":"about Project Ph\\u006fenix"}]}'
    resp = _post(on, body)
    assert resp.status_code == 400, resp.content
    assert json.loads(resp.content)["error"]["code"] == "guardrail_deny"
    assert len(upstream.seen) == before
