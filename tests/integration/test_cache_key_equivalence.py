"""The cache key through real processes, now that an OpenAI chat body's key is written from its bytes by
the compiled canonicaliser (gateway._core._canon): the same question written differently is one entry,
and anything that changes the answer, or whose answer it is, is another.

Each body is sent as raw bytes (the way a client wrote it) to a gateway in front of the standalone mock;
``x-gateway-cache`` says whether the entry was found.
"""

from __future__ import annotations

import pytest

from gateway.auth import digest, format_key

from .conftest import Gateway, StartGateway
from .helpers import RawClient, gateway_toml, http_request

SECRET_A = "E" * 43
SECRET_B = "F" * 43
KEY_A = format_key("equivkeyaaaa", SECRET_A)
KEY_B = format_key("equivkeybbbb", SECRET_B)

CONFIG_TAIL = f"""
[auth]
required = true
[[auth.keys]]
id = "equivkeyaaaa"
digest = "{digest(SECRET_A, b'')}"
tenant = "alpha"
[[auth.keys]]
id = "equivkeybbbb"
digest = "{digest(SECRET_B, b'')}"
tenant = "beta"
[tenants.alpha]
[tenants.beta]

[cache]
enabled = true
"""

#: one question, written as different clients write it: key order, whitespace, escapes, number forms,
#: repeated keys, and the fields that never change the answer (user, stream_options' absence, metadata)
SAME = [
    b'{"model":"chat-model","messages":[{"role":"user","content":"\xc3\xa9quivalence / 1"}],'
    b'"temperature":0.7,"top_k":40,"seed":7}',
    b'{ "seed" : 7 , "top_k" : 40.0 ,\n "temperature" : 0.70 ,\t"messages" : [ { "content" : '
    b'"\\u00e9quivalence \\/ \\u0031" , "role" : "user" } ] , "model" : "chat-model" }',
    b'{"temperature":7e-1,"model":"chat-model","top_k":4e1,"seed":7,'
    b'"messages":[{"content":"\\u00E9quivalence / 1","role":"user"}],"user":"someone"}',
    b'{"messages":[{"role":"user","content":"\xc3\xa9quivalence / 1"}],"model":"chat-model",'
    b'"temperature":70E-2,"top_k":400e-1,"seed":7.0,"us\\u0065r":"x","metadata":{"a":"b"}}',
    b'{"model":"chat-model","top_k":1,"top_k":40,"messages":[{"role":"user","content":'
    b'"\xc3\xa9quivalence / 1"}],"temperature":0.7000,"seed":70e-1}',
]

#: the same question with one thing changed that changes the answer: each is its own entry
DIFFERENT = [
    b'{"model":"chat-model","messages":[{"role":"user","content":"\xc3\xa9quivalence / 1"}],'
    b'"temperature":0.71,"top_k":40,"seed":7}',
    b'{"model":"chat-model","messages":[{"role":"user","content":"\xc3\xa9quivalence / 2"}],'
    b'"temperature":0.7,"top_k":40,"seed":7}',
    b'{"model":"chat-model","messages":[{"role":"system","content":"\xc3\xa9quivalence / 1"}],'
    b'"temperature":0.7,"top_k":40,"seed":7}',
    b'{"model":"chat-model","messages":[{"role":"user","content":"\xc3\xa9quivalence / 1"}],'
    b'"temperature":0.7,"top_k":41,"seed":7}',
    b'{"model":"chat-model","messages":[{"role":"user","content":"\xc3\xa9quivalence / 1"}],'
    b'"temperature":0.7,"top_k":40,"seed":7,"x_unknown":{"b":[1,2]}}',
    b'{"model":"chat-model","messages":[{"role":"user","content":"\xc3\xa9quivalence / 1"}],'
    b'"temperature":0.7,"top_k":"40","seed":7}',
    b'{"model":"mock-1","messages":[{"role":"user","content":"\xc3\xa9quivalence / 1"}],'
    b'"temperature":0.7,"top_k":40,"seed":7}',
]


def _send(gw: Gateway, body: bytes, key: str) -> str | None:
    with RawClient(gw.port) as c:
        resp = c.request(http_request("POST", "/v1/chat/completions", body,
                                      headers=[("Authorization", f"Bearer {key}")]))
    assert resp.status == 200, (body, resp)
    return resp.header("x-gateway-cache")


@pytest.fixture
def gw(start_gateway: StartGateway, mock_port: int) -> Gateway:
    return start_gateway(gateway_toml(mock_port) + CONFIG_TAIL)


def test_the_same_question_written_differently_is_one_entry(gw: Gateway) -> None:
    assert _send(gw, SAME[0], KEY_A) == "miss"
    for body in SAME[1:]:
        assert _send(gw, body, KEY_A) == "hit", body


def test_what_changes_the_answer_changes_the_key(gw: Gateway) -> None:
    assert _send(gw, SAME[0], KEY_A) == "miss"
    for body in DIFFERENT:
        assert _send(gw, body, KEY_A) == "miss", body
    for body in DIFFERENT:  # each was stored under its own key
        assert _send(gw, body, KEY_A) == "hit", body


def test_another_tenant_never_shares_the_entry(gw: Gateway) -> None:
    assert _send(gw, SAME[0], KEY_A) == "miss"
    assert _send(gw, SAME[1], KEY_B) == "miss"  # tenant beta: its own namespace, however it is written
    assert _send(gw, SAME[2], KEY_B) == "hit"
    assert _send(gw, SAME[3], KEY_A) == "hit"


def test_a_number_past_every_range_is_a_key_not_a_crash(gw: Gateway) -> None:
    """A number whose exponent is past a double's and Decimal's default range (``1e9999999999``) in a
    field the gateway does not read: the request is answered and cached like any other (it raised
    ``decimal.Overflow`` out of the key, a 500)."""
    body = (b'{"model":"chat-model","messages":[{"role":"user","content":"huge"}],'
            b'"x_scale":1e9999999999,"x_small":-2E+99999}')
    assert _send(gw, body, KEY_A) == "miss"
    assert _send(gw, body, KEY_A) == "hit"
    other = body.replace(b"1e9999999999", b"1e9999999998")
    assert _send(gw, other, KEY_A) == "miss"
