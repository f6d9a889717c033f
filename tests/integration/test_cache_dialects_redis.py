"""The Redis tier for the Messages and Responses dialects, through real processes: two nodes sharing a
real redis-server (no memory tier), so that every hit is read from Redis and rendered (then, for
Messages, from the render memo) in the client's dialect; a Responses hit from Redis is still a new
stored response each time."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest
import redisproc

from .conftest import Gateway, StartGateway
from .helpers import HOST, wait_for
from .test_cache import redis_cache

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[redisproc.RedisServer]:
    with redisproc.start(tmp_path / "redis") as server:
        yield server


def _messages(gw: Gateway) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=f"http://{HOST}:{gw.port}", api_key="k", max_retries=0, timeout=30.0)


def test_messages_and_responses_hits_from_redis(start_gateway: StartGateway, mock_port: int,
                                               redis_server: redisproc.RedisServer) -> None:
    one = start_gateway(redis_cache(mock_port, redis_server.url), name="node-one")
    two = start_gateway(redis_cache(mock_port, redis_server.url), name="node-two")
    a, b = _messages(one), _messages(two)
    oa = openai.OpenAI(base_url=one.base_url, api_key="k", max_retries=0, timeout=30.0)
    ob = openai.OpenAI(base_url=two.base_url, api_key="k", max_retries=0, timeout=30.0)
    try:
        params: dict[str, Any] = {"model": "mock-1", "max_tokens": 64,
                                  "messages": [{"role": "user", "content": "messages through redis"}]}
        first = a.messages.with_raw_response.create(**params)
        assert first.headers["x-gateway-cache"] == "miss"
        original = first.parse()
        # node two's first asks may come before node one's entry reaches Redis (then it stores its own)
        wait_for(lambda: b.messages.with_raw_response.create(**params).headers["x-gateway-cache"] == "hit",
                 10, what="node two's Messages hit from Redis")
        for _ in range(3):  # rendered, then from the render memo: whole and streamed
            whole = b.messages.with_raw_response.create(**params)
            assert whole.headers["x-gateway-cache"] == "hit"
            assert whole.parse().content == original.content and whole.parse().id == original.id
            with b.messages.stream(**params) as s:
                assert s.response.headers["x-gateway-cache"] == "hit"
                assert s.get_final_text() == original.content[0].text  # type: ignore[union-attr]
                assert s.get_final_message().id == original.id

        resp = oa.responses.with_raw_response.create(model="mock-1", input="responses through redis")
        assert resp.headers["x-gateway-cache"] == "miss"
        text = resp.parse().output_text
        wait_for(lambda: ob.responses.with_raw_response.create(
            model="mock-1", input="responses through redis").headers["x-gateway-cache"] == "hit",
            10, what="node two's Responses hit from Redis")
        ids = set()
        for _ in range(3):
            hit = ob.responses.with_raw_response.create(model="mock-1", input="responses through redis")
            assert hit.headers["x-gateway-cache"] == "hit"
            answer = hit.parse()
            assert answer.output_text == text
            ids.add(answer.id)
            assert ob.responses.retrieve(answer.id).output_text == text
        assert len(ids) == 3  # each hit a new response
    finally:
        for c in (a, b, oa, ob):
            c.close()
