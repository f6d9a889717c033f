"""The Redis response store against a real server: records by tenant, deleted on demand, expired by Redis."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redisproc

from gateway.responses.store import RedisResponseStore, open_response_store
from gateway.store.factory import StoreOptions


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[redisproc.RedisServer]:
    with redisproc.start(tmp_path_factory.mktemp("redis-response-store")) as server:
        yield server


def test_records_are_per_tenant_and_expire(redis_server: redisproc.RedisServer, tmp_path: Path) -> None:
    async def run() -> None:
        store = await open_response_store(StoreOptions(url=redis_server.url + "?prefix=rt"))
        assert isinstance(store, RedisResponseStore)
        try:
            await store.put("acme", "resp_1", b"ONE", 3600)
            assert await store.get("acme", "resp_1") == b"ONE"
            assert await store.get("globex", "resp_1") is None
            assert not await store.delete("globex", "resp_1")
            assert await store.delete("acme", "resp_1")
            assert await store.get("acme", "resp_1") is None
            await store.put("acme", "resp_2", b"TWO", 0.2)
            deadline = time.monotonic() + 10
            while await store.get("acme", "resp_2") is not None:  # Redis expires it (PX)
                assert time.monotonic() < deadline, "the record outlived its retention"
                await asyncio.sleep(0.05)
        finally:
            await store.close()

    asyncio.run(run())
