"""``gateway.dialects.ids.answer_id``: an upstream id re-prefixed for the client's dialect."""

from __future__ import annotations

import pytest

from gateway.dialects.ids import CHAT_PREFIX, MESSAGES_PREFIX, answer_id


@pytest.mark.parametrize(("upstream", "prefix", "expected"), [
    ("chatcmpl-AbC12", MESSAGES_PREFIX, "msg_AbC12"),
    ("msg_01XyZ", MESSAGES_PREFIX, "msg_01XyZ"),
    ("msg_01XyZ", CHAT_PREFIX, "chatcmpl-01XyZ"),
    ("chatcmpl-AbC12", CHAT_PREFIX, "chatcmpl-AbC12"),
    ("resp_77", MESSAGES_PREFIX, "msg_77"),
    ("cmpl-9", CHAT_PREFIX, "chatcmpl-9"),
    ("9f1c2d3e-0000-4000-8000-000000000000", MESSAGES_PREFIX, "msg_9f1c2d3e-0000-4000-8000-000000000000"),
    ("OKu1aPr3Jd", CHAT_PREFIX, "chatcmpl-OKu1aPr3Jd"),
])
def test_answer_id_keeps_the_upstream_suffix(upstream: str, prefix: str, expected: str) -> None:
    assert answer_id(upstream, prefix) == expected
    assert answer_id(upstream, prefix) == answer_id(upstream, prefix)


@pytest.mark.parametrize("upstream", ["", "msg_", "chatcmpl-"])
@pytest.mark.parametrize("prefix", [MESSAGES_PREFIX, CHAT_PREFIX])
def test_an_answer_without_an_id_gets_a_fresh_one(upstream: str, prefix: str) -> None:
    made = answer_id(upstream, prefix)
    assert made.startswith(prefix) and len(made) == len(prefix) + 24
    assert answer_id(upstream, prefix) != made
