"""The cache's Redis tier against a real redis-server: get and set with a time to live, compression of
large values, a user, password and database from the URL, purge patterns, and a server that goes away."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redisproc

from gateway.cache.redis_tier import RedisTier, TierDown, pack_value, redis_key, unpack_value

PASSWORD = "s3cret-for-the-cache"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[redisproc.RedisServer]:
    # a user of its own (the default user stays open for the helper's PING)
    with redisproc.start(tmp_path / "redis", extra=[f"user cache on >{PASSWORD} ~* &* +@all"]) as s:
        yield s


def _url(server: redisproc.RedisServer, db: int = 2) -> str:
    return f"redis://cache:{PASSWORD}@127.0.0.1:{server.port}/{db}"


async def _until(predicate: object, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def test_values_are_compressed_only_when_large() -> None:
    assert pack_value(b"abc", 10) == b"rabc"
    big = b"x" * 5000
    packed = pack_value(big, 10)
    assert packed[:1] == b"z" and len(packed) < 200 and unpack_value(packed) == big
    with pytest.raises(ValueError):
        unpack_value(b"?garbage")


def test_keys_name_who_stored_them_and_escape_their_parts() -> None:
    k = redis_key("gw", "ten:ant*", None, "org/model?", b"\x01\x02")
    assert k == "gw:cache:ten%3Aant%2A:-:org%2Fmodel%3F:0102"


def test_set_get_purge_with_password_and_database(server: redisproc.RedisServer) -> None:
    async def go() -> None:
        tier = RedisTier(_url(server), "gw", 2.0, 100)
        try:
            a = redis_key("gw", "alpha", "k1", "m", b"\x01")
            b = redis_key("gw", "beta", "k2", "m", b"\x02")
            tier.set_soon(a, b"A" * 1000, 30.0)  # compressed
            tier.set_soon(b, b"small", 30.0)

            async def both() -> bool:
                return await tier.get(a) == b"A" * 1000 and await tier.get(b) == b"small"

            await _until(both, "both entries")
            assert await tier.purge(tier.purge_pattern(tenant="alpha")) == 1
            assert await tier.get(a) is None and await tier.get(b) == b"small"
            assert await tier.purge(tier.purge_pattern(model="m")) == 1
            assert await tier.get(b) is None
            tier.set_soon(a, b"short", 0.05)  # expires in Redis

            async def gone() -> bool:
                return await tier.get(a) is None

            await _until(gone, "the entry's expiry")
        finally:
            await tier.close()

    asyncio.run(go())


def test_a_wrong_password_or_a_dead_server_is_tier_down(server: redisproc.RedisServer) -> None:
    async def go() -> None:
        wrong = RedisTier(f"redis://cache:nope@127.0.0.1:{server.port}/0", "gw", 1.0, 100)
        with pytest.raises(TierDown):
            await wrong.get("gw:cache:x")
        await wrong.close()
        tier = RedisTier(_url(server, 0), "gw", 1.0, 100, retry_after=0.2)
        assert await tier.get("gw:cache:missing") is None
        server.stop()
        with pytest.raises(TierDown):
            await tier.get("gw:cache:missing")
        with pytest.raises(TierDown):  # down: refused at once, without the network
            await tier.get("gw:cache:missing")
        assert tier.errors >= 2
        await tier.close()

    asyncio.run(go())


def test_server_addresses_from_urls() -> None:
    from gateway.cache.redis_tier import ServerAddress, server_address

    assert server_address("redis://u:p%40ss@h.example:6380/3") == ServerAddress(
        host="h.example", port=6380, username="u", password="p@ss", db=3)
    assert server_address("rediss://:pw@10.0.0.1") == ServerAddress(host="10.0.0.1", password="pw", tls=True)
    assert server_address("unix://:pw@/run/redis.sock?db=4") == ServerAddress(
        path="/run/redis.sock", password="pw", db=4)
