"""A worker's key table follows the store from the version it was built from: a change written between
the first snapshot and the watch's first look at the store reaches the table without waiting for the full
re-read (``[auth] resync_interval``, an hour here)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from gateway.auth.service import KeyService
from gateway.config import load_config_text
from gateway.store import Snapshot
from gateway.store.factory import StoreOptions, open_store


def test_a_change_between_the_first_snapshot_and_the_watch_is_not_lost(tmp_path: Path) -> None:
    async def go() -> None:
        store = await open_store(StoreOptions(url=f"sqlite:///{tmp_path}/keys.db", poll_interval=0.05))
        config = load_config_text("[auth]\nresync_interval = 3600.0\n")
        original = store.snapshot
        calls = 0

        async def snapshot_then_a_write() -> Snapshot:
            # the store moves on right after the service read its first snapshot, before its watch began
            nonlocal calls
            snap = await original()
            calls += 1
            if calls == 1:
                await store.create_tenant("late", actor="test")
            return snap

        store.snapshot = snapshot_then_a_write  # type: ignore[method-assign]
        service = KeyService(config, store=store)
        await service.start()
        try:
            deadline = time.monotonic() + 20.0  # generous: the watch polls every 0.05 s
            while "late" not in service.table.tenants:
                assert time.monotonic() < deadline, "a change made before the watch began was never applied"
                await asyncio.sleep(0.05)
        finally:
            await service.stop()
            await store.close()

    asyncio.run(go())
