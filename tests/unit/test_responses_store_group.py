"""The SQLite response store's group commit: concurrent puts share transactions, each put returns only
once its record is committed, and a failed transaction fails every put it carried."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from gateway.responses.store import SqliteResponseStore, StoreUnavailable


def test_concurrent_puts_share_transactions_and_are_all_readable(tmp_path: Path) -> None:
    async def run() -> tuple[int, int, list[bytes | None]]:
        store = await SqliteResponseStore.open(str(tmp_path / "r.db"))
        try:
            await asyncio.gather(*(store.put("t", f"resp_{i}", b"record %d" % i, 60.0) for i in range(200)))
            got = [await store.get("t", f"resp_{i}") for i in range(200)]
            return store.commits, store.records_written, got
        finally:
            await store.close()

    commits, written, got = asyncio.run(run())
    assert got == [b"record %d" % i for i in range(200)]
    assert written == 200
    assert commits < 200  # the puts that waited for a transaction were written together


def test_a_lone_put_is_written_at_once_and_readable_from_another_store(tmp_path: Path) -> None:
    async def run() -> bytes | None:
        path = str(tmp_path / "r.db")
        a = await SqliteResponseStore.open(path)
        b = await SqliteResponseStore.open(path)  # another worker of the node
        try:
            await a.put("t", "resp_1", b"one", 60.0)
            return await b.get("t", "resp_1")  # committed when put returned
        finally:
            await a.close()
            await b.close()

    assert asyncio.run(run()) == b"one"


def test_a_failed_transaction_fails_every_put_it_carried(tmp_path: Path) -> None:
    async def run() -> list[BaseException | None]:
        store = await SqliteResponseStore.open(str(tmp_path / "r.db"))
        await store.close()  # every write now fails: the store is closed
        results = await asyncio.gather(*(store.put("t", f"resp_{i}", b"x", 60.0) for i in range(5)),
                                       return_exceptions=True)
        return list(results)

    results = asyncio.run(run())
    assert len(results) == 5
    for r in results:
        assert isinstance(r, (StoreUnavailable, RuntimeError))


@pytest.mark.parametrize("n", [1, 3])
def test_puts_after_a_batch_start_a_new_one(tmp_path: Path, n: int) -> None:
    async def run() -> list[bytes | None]:
        store = await SqliteResponseStore.open(str(tmp_path / "r.db"))
        try:
            for round_ in range(n):
                await asyncio.gather(*(store.put("t", f"{round_}-{i}", b"v", 60.0) for i in range(10)))
            return [await store.get("t", f"{r}-{i}") for r in range(n) for i in range(10)]
        finally:
            await store.close()

    assert asyncio.run(run()) == [b"v"] * (10 * n)
