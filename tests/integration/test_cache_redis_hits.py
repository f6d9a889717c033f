"""Redis-tier hits through real processes: what a node renders from Redis is what Redis holds now (a
refreshed entry, in either form asked for), across two nodes without memory tiers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redisproc

from .conftest import StartGateway
from .helpers import wait_for
from .test_cache import ask, outcome, redis_cache


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[redisproc.RedisServer]:
    with redisproc.start(tmp_path / "redis") as server:
        yield server


def test_a_refreshed_entry_is_what_the_other_node_renders(start_gateway: StartGateway, mock_port: int,
                                                         redis_server: redisproc.RedisServer) -> None:
    one = start_gateway(redis_cache(mock_port, redis_server.url), name="node-one")
    two = start_gateway(redis_cache(mock_port, redis_server.url), name="node-two")
    first = ask(one, "rendered from redis")
    assert outcome(first) == "miss"
    wait_for(lambda: ask(two, "rendered from redis").header("x-gateway-cache") == "hit", 10,
             what="node two's hit from Redis")
    for _ in range(3):  # rendered once, then from the render memo: the same answer, in each form
        whole = ask(two, "rendered from redis")
        assert outcome(whole) == "hit" and whole.json()["id"] == first.json()["id"]
        streamed = ask(two, "rendered from redis", stream=True)
        assert outcome(streamed) == "hit" and first.json()["id"].encode() in streamed.body
    fresh = ask(one, "rendered from redis", headers=(("Cache-Control", "no-cache"),))
    assert outcome(fresh) == "bypass" and fresh.json()["id"] != first.json()["id"]
    # the refreshed entry reaches Redis after node one's answer: node two then renders it, never the old
    wait_for(lambda: ask(two, "rendered from redis").json()["id"] == fresh.json()["id"], 10,
             what="the refreshed entry on node two")
    for _ in range(3):
        again = ask(two, "rendered from redis")
        assert outcome(again) == "hit" and again.json()["id"] == fresh.json()["id"]
