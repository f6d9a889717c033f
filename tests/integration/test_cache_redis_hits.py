"""The Redis tier across nodes, through real processes: what a node renders from Redis is what Redis
holds now (a refreshed entry, in either form asked for), a purge on one node's admin API reaches the
other nodes' memory tiers (through the Redis purge stream), and the tier comes back after an outage."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redisproc

from gateway.auth import digest

from .conftest import StartGateway
from .helpers import RawClient, Response, free_port, http_request, wait_for
from .test_cache import KEY_A, KEY_B, OPERATOR, TENANTS, ask, outcome, redis_cache


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
    # (node two's first ask may come before node one's entry reaches Redis: then its own answer is stored)
    stored = wait_for(lambda: (r := ask(two, "rendered from redis")).header("x-gateway-cache") == "hit" and r,
                      10, what="node two's hit from Redis").json()["id"]
    for _ in range(3):  # rendered once, then from the render memo: the same answer, in each form
        whole = ask(two, "rendered from redis")
        assert outcome(whole) == "hit" and whole.json()["id"] == stored
        streamed = ask(two, "rendered from redis", stream=True)
        assert outcome(streamed) == "hit" and stored.encode() in streamed.body
    fresh = ask(one, "rendered from redis", headers=(("Cache-Control", "no-cache"),))
    assert outcome(fresh) == "bypass" and fresh.json()["id"] not in (first.json()["id"], stored)
    # the refreshed entry reaches Redis after node one's answer: node two then renders it, never the old
    wait_for(lambda: ask(two, "rendered from redis").json()["id"] == fresh.json()["id"], 10,
             what="the refreshed entry on node two")
    for _ in range(3):
        again = ask(two, "rendered from redis")
        assert outcome(again) == "hit" and again.json()["id"] == fresh.json()["id"]


def test_a_purge_reaches_the_other_nodes_memory(start_gateway: StartGateway, mock_port: int,
                                               redis_server: redisproc.RedisServer, tmp_path: Path) -> None:
    admin_port = free_port()
    admin = (f'\n[admin]\nport = {admin_port}\noperator_token = "{digest(OPERATOR, b"")}"\n'
             f'\n[store]\nurl = "sqlite://{tmp_path / "store.db"}"\n')
    one = start_gateway(redis_cache(mock_port, redis_server.url, memory=1 << 20) + TENANTS + admin,
                        name="node-one")
    two = start_gateway(redis_cache(mock_port, redis_server.url, memory=1 << 20) + TENANTS, name="node-two",
                        workers=2)

    def admin_call(body: Any) -> Response:
        with RawClient(admin_port) as c:
            return c.request(http_request("POST", "/admin/v1/cache/purge", json.dumps(body).encode(),
                                          headers=[("Authorization", f"Bearer {OPERATOR}")]))

    def admin_up() -> bool:
        try:
            return admin_call({"model": "no-such-model"}).status == 404
        except OSError:
            return False

    wait_for(admin_up, 30, what="node one's admin API")
    for key, question in ((KEY_A, "alpha's question"), (KEY_B, "beta's question")):
        assert outcome(ask(two, question, key=key)) == "miss"
        # node two's workers keep it in memory (each answer may come from either worker)
        wait_for(lambda k=key, q=question: all(ask(two, q, key=k).header("x-gateway-cache") == "hit"
                                               for _ in range(4)), 10, what="node two's hits")
    purged = admin_call({"tenant": "alpha"})
    assert purged.status == 200, purged
    assert purged.json()["redis_deleted"] == 1
    # node two's memory tiers drop alpha's entries: misses from now on (no-store: nothing stored again)
    wait_for(lambda: all(ask(two, "alpha's question", key=KEY_A, headers=(("Cache-Control", "no-store"),))
                         .header("x-gateway-cache") == "miss" for _ in range(4)), 10,
             what="the purge on node two")
    assert outcome(ask(two, "beta's question", key=KEY_B)) == "hit"  # beta's entries stay
    assert outcome(ask(one, "beta's question", key=KEY_B)) == "hit"  # from Redis: only alpha's went


def test_the_tier_comes_back_after_an_outage_under_steady_traffic(
        start_gateway: StartGateway, mock_port: int, redis_server: redisproc.RedisServer) -> None:
    gw = start_gateway(redis_cache(mock_port, redis_server.url))
    assert outcome(ask(gw, "before the outage")) == "miss"
    redis_server.stop()
    for i in range(5):
        assert outcome(ask(gw, f"during the outage {i}")) == "bypass"
    # the same server back on its port; requests keep coming (each well within the tier's retry_after)
    again = subprocess.Popen([redisproc.find_binary(), str(redis_server.directory / "redis.conf")],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(redis_server.ping, 15, what="the restarted redis-server")
        wait_for(lambda: ask(gw, "after the outage").header("x-gateway-cache") == "hit", 15,
                 what="the tier back: a hit")
    finally:
        redisproc.end(again)
