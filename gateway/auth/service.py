"""Keeps one worker's key table current, and records when keys were last used.

Theory of operation (one ``KeyService`` per worker process):

    state        | event                                  | action
    -------------+----------------------------------------+--------------------------------------------
    starting     | store opened, snapshot read            | table = snapshot + static keys; watching
    starting     | store cannot be opened                 | table = static keys only; retry every 2 s
    watching     | store reports a change (watch yields)  | new snapshot -> new table, swapped in
    watching     | resync_interval passes                 | new snapshot -> new table (a missed
                 |                                        | notification cannot outlive this)
    watching     | store fails                            | keep the last table; reopen after 2 s
    any          | config reloaded                        | static keys/tenants replaced, table rebuilt
    any          | every 5 s with keys used               | last-used times written in one batch

Change notifications come from the store: SQLite's ``PRAGMA data_version`` polled every
``poll_interval`` (0.2 s by default), Redis pub/sub at once. So a revoked key is refused by every worker
of every node within about ``poll_interval`` plus the time to read a snapshot.

Each swap of the table is also published in the worker's mark in the node's directory
(``gateway.auth.applied``): the admin API of the node reads the marks after each write and answers once
every worker's table holds it, so that a change made through it is in force on the whole node when the
answer arrives. The mark is made before the first snapshot is read (the module says why that is exact).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from gateway.aio import cancel_and_wait, within
from gateway.auth.applied import AppliedMark, node_directory
from gateway.auth.keyformat import Digester
from gateway.auth.table import KeyTable
from gateway.config import Config, resolve_secret
from gateway.store.base import NotFound, Store
from gateway.store.factory import StoreOptions, open_store
from gateway.store.models import Snapshot, StoredPrompt, Tenant

__all__ = ["KeyService"]

log = logging.getLogger("gateway.auth")

_RETRY = (0.1, 0.5, 2.0)  # waits before reopening the store: quick at first, then every 2 s
_TOUCH_EVERY = 5.0


class KeyService:
    def __init__(self, config: Config, *, store: Store | None = None) -> None:
        self._config = config
        self._digester = Digester(self._pepper(config))
        self._store = store
        self._own_store = store is None
        self.table = self._build(None)
        #: ids of the keys used since the last flush (stamped with the flush time: 5 s resolution)
        self.used: set[str] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self._snapshot_version = -1
        self._refresh_lock = asyncio.Lock()
        #: key ids the store did not know, and until when not to ask again (a flood of made-up ids
        #: costs one store lookup per id per second at most)
        self._unknown: dict[str, float] = {}
        self.stored_prompts: list[StoredPrompt] = []
        self.ready = asyncio.Event()
        #: this worker's mark in the node's directory (None outside ``gateway serve``, or when it failed)
        self._mark: AppliedMark | None = None

    @staticmethod
    def _pepper(config: Config) -> bytes:
        ref = config.auth.pepper
        return resolve_secret(ref).encode() if ref else b""

    def _build(self, snapshot: Snapshot | None) -> KeyTable:
        return KeyTable(
            self._digester,
            snapshot=snapshot,
            static_keys=self._config.auth.keys,
            static_tenants=self._config.tenants,
        )

    # -- lifecycle -----------------------------------------------------------------------------------

    async def start(self) -> None:
        self._open_mark()
        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(self._run()))
        self._tasks.append(loop.create_task(self._touch_loop()))
        # the first snapshot, if the store answers quickly: requests then never see an empty table
        with contextlib.suppress(TimeoutError):
            await within(self.ready.wait(), 5.0)

    async def stop(self) -> None:
        await cancel_and_wait(*self._tasks)
        self._tasks.clear()
        if self._mark is not None:
            self._mark.close()
            self._mark = None
        await self._flush_last_used()
        if self._store is not None and self._own_store:
            with contextlib.suppress(Exception):
                await self._store.close()
            self._store = None

    def reload(self, config: Config) -> None:
        """New static keys, tenants or pepper from a reloaded config; the store part is kept."""
        self._config = config
        self._digester = Digester(self._pepper(config))
        self._snapshot_version = -1
        if self._store is not None:
            asyncio.get_running_loop().create_task(self.refresh())
        else:
            self.table = self._build(None)

    # -- keeping the table current -------------------------------------------------------------------

    def _open_mark(self) -> None:
        directory = node_directory()
        if directory is None or self._mark is not None:
            return
        try:
            self._mark = AppliedMark.create(directory)
        except OSError as exc:
            log.warning("cannot publish this worker's key table version in %s (%s): the admin API will not "
                        "wait for this worker to apply its changes", directory, exc)

    async def _open(self) -> Store:
        st = self._config.store
        return await open_store(StoreOptions(
            url=st.url, prefix=st.prefix, poll_interval=st.poll_interval, busy_timeout=st.busy_timeout,
            min_replicas_acked=st.min_replicas_acked, replica_ack_timeout=st.replica_ack_timeout,
        ))

    async def refresh(self) -> None:
        """Read a snapshot and swap in a new table (skipped when the store's version has not moved)."""
        store = self._store
        if store is None:
            return
        async with self._refresh_lock:
            snap = await store.snapshot()
            if snap.version == self._snapshot_version:
                return
            #: prompts published through the admin API (gateway.prompts), applied with the key table
            self.stored_prompts = snap.prompts
            self.table = self._build(snap)
            self._snapshot_version = snap.version
            if self._mark is not None:
                self._publish(self._mark, snap.version)

    @staticmethod
    def _publish(mark: AppliedMark, version: int) -> None:
        try:
            mark.publish(version)
        except OSError as exc:  # the admin API then answers that this worker is late
            log.warning("cannot publish this worker's key table version: %s", exc)

    async def _run(self) -> None:
        failures = 0
        while True:
            try:
                if self._store is None:
                    self._store = await self._open()
                store = self._store
                await self.refresh()
                self.ready.set()
                failures = 0
                watcher = asyncio.get_running_loop().create_task(self._watch(store))
                try:
                    while not watcher.done():
                        await asyncio.wait({watcher}, timeout=self._config.auth.resync_interval)
                        if not watcher.done():
                            self._snapshot_version = -1  # force a full re-read
                            await self.refresh()
                    watcher.result()
                finally:
                    watcher.cancel()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                failures += 1
                if failures > 1:  # a first failure is often a race between workers opening a new file
                    log.error("key store unavailable (%s); serving with the last key table, retrying",
                              exc.__class__.__name__ + (f": {exc}" if str(exc) else ""))
                    self.ready.set()
                if self._store is not None and self._own_store:
                    with contextlib.suppress(Exception):
                        await self._store.close()
                    self._store = None
            await asyncio.sleep(_RETRY[min(failures, len(_RETRY)) - 1] if failures else _RETRY[-1])

    async def _watch(self, store: Store) -> None:
        # from the version the table was built from: a change made between that read and the watch's
        # first look at the store is not lost
        async for _version in store.watch(since=self._snapshot_version):
            await self.refresh()

    async def fetch(self, key_id: str) -> bool:
        """Ask the store for a key id this worker's table does not hold (made since the last snapshot).
        False when the store could not answer (not open yet, or unreachable): the key may well exist, so
        its caller must not be told that it does not."""
        store = self._store
        if store is None:
            return False
        now = time.monotonic()
        if self._unknown.get(key_id, 0.0) > now:
            return True
        try:
            key = await store.get_key(key_id)
        except NotFound:
            if len(self._unknown) > 10_000:
                self._unknown.clear()
            self._unknown[key_id] = now + 1.0
            return True
        except Exception as exc:
            log.warning("key lookup in the store failed: %s", exc.__class__.__name__)
            return False
        tenant: Tenant | None = None
        if key.tenant not in self.table.tenants:
            with contextlib.suppress(Exception):
                tenant = await store.get_tenant(key.tenant)
        self.table.add(key, tenant)
        return True

    # -- last-used times -----------------------------------------------------------------------------

    async def _touch_loop(self) -> None:
        while True:
            await asyncio.sleep(_TOUCH_EVERY)
            await self._flush_last_used()

    async def _flush_last_used(self) -> None:
        if not self.used or self._store is None:
            return
        now = time.time()
        used = dict.fromkeys(self.used, now)
        self.used = set()
        try:
            await self._store.touch_last_used(used)
        except Exception as exc:
            log.warning("could not record key last-used times: %s", exc.__class__.__name__)
