"""Where stored Responses live: ``POST /v1/responses`` with ``store`` (default true) writes one record per
response; ``GET``/``DELETE /v1/responses/{id}``, ``.../input_items`` and ``previous_response_id`` read it.

A record is opaque bytes here (``gateway.responses.service`` encodes it): the response object, its input
items and the conversation a next turn continues. Records are keyed by (tenant, id): a tenant never
reads, deletes or continues another tenant's response, and an id of another tenant is simply not found
(the same 404 as an id that never existed). Each record expires ``retention`` seconds after it was
written.

Backends follow the node's ``[store]``:

- SQLite (one node): a file beside the store's (``<file>-responses``), shared by the node's workers, WAL,
  ``synchronous=NORMAL`` (a response is not a key: losing the last second of them to a power cut is
  acceptable, a fsync per answer is not). Expired rows are deleted in small batches on writes.
- Redis (a cluster): one string per record, ``<prefix>:responses:<tenant>:<id>`` with ``PX`` = the
  retention, so Redis expires them. No hash tag: records spread over a Redis Cluster. With
  ``min_replicas_acked`` the write is followed by ``WAIT`` in the same round trip, as the key store does.

Writes complete before the client is told the response exists (the front awaits ``put`` before the
final answer or ``response.completed``), so any node reads it as soon as the client has its id.
"""

from __future__ import annotations

import abc
import asyncio
import functools
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ParamSpec, TypeVar

from gateway.store.base import StoreUnavailable

__all__ = ["RedisResponseStore", "ResponseStore", "SqliteResponseStore", "open_response_store"]

P = ParamSpec("P")
R = TypeVar("R")

#: expired rows deleted per write (SQLite); Redis expires its own
_SWEEP = 64


class ResponseStore(abc.ABC):
    """Records of stored responses, by tenant and id, each kept ``retention`` seconds."""

    @abc.abstractmethod
    async def put(self, tenant: str, response_id: str, record: bytes, retention: float) -> None: ...

    @abc.abstractmethod
    async def get(self, tenant: str, response_id: str) -> bytes | None: ...

    @abc.abstractmethod
    async def delete(self, tenant: str, response_id: str) -> bool:
        """True when a record was there (and is gone now)."""

    @abc.abstractmethod
    async def close(self) -> None: ...


class SqliteResponseStore(ResponseStore):
    """Records in one SQLite file shared by the node's workers (a thread per process owns the connection)."""

    def __init__(self, path: str, busy_timeout: float = 5.0, clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self._busy_timeout = busy_timeout
        self._clock = clock
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gateway-responses-sqlite")
        self._conn: sqlite3.Connection | None = None
        #: puts waiting for the writer (``put``): (tenant, id, record, retention, the caller's future)
        self._pending: list[tuple[str, str, bytes, float, asyncio.Future[None]]] = []
        #: the writer task is running (it takes what is pending until nothing is)
        self._writing = False
        #: transactions written, and records in them (group commit: see ``put``)
        self.commits = 0
        self.records_written = 0

    @classmethod
    async def open(cls, path: str, busy_timeout: float = 5.0) -> SqliteResponseStore:
        store = cls(path, busy_timeout)
        await store._run(store._connect)
        return store

    async def _run(self, fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, functools.partial(fn, *args, **kwargs))
        except sqlite3.OperationalError as exc:
            raise StoreUnavailable(f"SQLite response store {self.path}: {exc}") from exc

    def _connect(self) -> None:
        # several workers may create the file at once: the WAL switch is retried like the key store's
        deadline = time.monotonic() + self._busy_timeout
        while True:
            conn = sqlite3.connect(
                self.path, timeout=self._busy_timeout, isolation_level=None, check_same_thread=False
            )
            try:
                conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout * 1000)}")
                conn.execute("PRAGMA journal_mode = WAL")
                conn.execute("PRAGMA synchronous = NORMAL")
                conn.execute(
                    "CREATE TABLE IF NOT EXISTS responses (tenant TEXT NOT NULL, id TEXT NOT NULL, "
                    "expires_at REAL NOT NULL, data BLOB NOT NULL, PRIMARY KEY (tenant, id))"
                )
                conn.execute("CREATE INDEX IF NOT EXISTS responses_by_expiry ON responses (expires_at)")
            except sqlite3.OperationalError as exc:
                conn.close()
                if ("locked" in str(exc) or "busy" in str(exc)) and time.monotonic() < deadline:
                    time.sleep(0.02)
                    continue
                raise
            self._conn = conn
            return

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreUnavailable("the response store is closed")
        return self._conn

    def _sync_put(self, tenant: str, response_id: str, record: bytes, retention: float) -> None:
        self._sync_put_many([(tenant, response_id, record, retention)])

    def _sync_put_many(self, rows: list[tuple[str, str, bytes, float]]) -> None:
        """Write ``rows`` in one transaction (with one sweep of expired rows)."""
        conn = self._db()
        now = self._clock()
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.executemany(
                "INSERT OR REPLACE INTO responses (tenant, id, expires_at, data) VALUES (?, ?, ?, ?)",
                [(tenant, rid, now + retention, record) for tenant, rid, record, retention in rows],
            )
            conn.execute(
                "DELETE FROM responses WHERE rowid IN "
                "(SELECT rowid FROM responses WHERE expires_at <= ? ORDER BY expires_at LIMIT ?)",
                (now, _SWEEP),
            )
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def _sync_get(self, tenant: str, response_id: str) -> bytes | None:
        row = (
            self._db()
            .execute(
                "SELECT data FROM responses WHERE tenant = ? AND id = ? AND expires_at > ?",
                (tenant, response_id, self._clock()),
            )
            .fetchone()
        )
        return bytes(row[0]) if row is not None else None

    def _sync_delete(self, tenant: str, response_id: str) -> bool:
        cur = self._db().execute(
            "DELETE FROM responses WHERE tenant = ? AND id = ? AND expires_at > ?",
            (tenant, response_id, self._clock()),
        )
        return cur.rowcount > 0

    async def put(self, tenant: str, response_id: str, record: bytes, retention: float) -> None:
        """Store a record; returns once it is committed (a GET anywhere on the node finds it then).

        Group commit: puts that arrive while a transaction is being written wait for the next one, which
        writes them all. # PERF: one thread hand-off and one transaction per batch, not per response (a
        put per request cost a thread hop, a transaction and the GIL going back and forth: the stored
        Responses request was 120 us of CPU in process). An idle store writes a lone put at once."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((tenant, response_id, record, retention, fut))
        if not self._writing:
            self._writing = True
            asyncio.get_running_loop().create_task(self._write_pending())
        await fut

    async def _write_pending(self) -> None:
        try:
            while self._pending:
                batch, self._pending = self._pending, []
                try:
                    await self._run(self._sync_put_many, [(t, i, r, k) for t, i, r, k, _ in batch])
                except Exception as exc:  # every waiter of the batch gets the failure (StoreUnavailable)
                    for *_, fut in batch:
                        if not fut.done():
                            fut.set_exception(exc)
                    continue
                self.commits += 1
                self.records_written += len(batch)
                for *_, fut in batch:
                    if not fut.done():
                        fut.set_result(None)
        finally:
            self._writing = False

    async def get(self, tenant: str, response_id: str) -> bytes | None:
        return await self._run(self._sync_get, tenant, response_id)

    async def delete(self, tenant: str, response_id: str) -> bool:
        return await self._run(self._sync_delete, tenant, response_id)

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await asyncio.get_running_loop().run_in_executor(self._executor, conn.close)
        self._executor.shutdown(wait=False)


class RedisResponseStore(ResponseStore):
    """Records in Redis, shared by every node; Redis expires them."""

    def __init__(self, client: Any, prefix: str, min_replicas_acked: int, replica_ack_timeout: float) -> None:
        self._r = client
        self._prefix = prefix
        self._acks = min_replicas_acked
        self._ack_timeout = replica_ack_timeout

    @classmethod
    async def open(
        cls, url: str, prefix: str, min_replicas_acked: int | None, replica_ack_timeout: float
    ) -> RedisResponseStore:
        from gateway.redisconn import open_client, parse_url

        target = parse_url(url)
        acks = (
            min_replicas_acked if min_replicas_acked is not None else (1 if target.kind == "sentinel" else 0)
        )
        return cls(open_client(target), prefix, acks, replica_ack_timeout)

    def _key(self, tenant: str, response_id: str) -> str:
        return f"{self._prefix}:responses:{tenant}:{response_id}"

    async def put(self, tenant: str, response_id: str, record: bytes, retention: float) -> None:
        key = self._key(tenant, response_id)
        ms = max(int(retention * 1000), 1)
        try:
            if self._acks <= 0:
                await self._r.set(key, record, px=ms)
                return
            async with self._r.pipeline(transaction=False) as pipe:
                pipe.set(key, record, px=ms)
                pipe.wait(self._acks, int(self._ack_timeout * 1000))
                _, acked = await pipe.execute()
        except Exception as exc:
            raise StoreUnavailable(f"Redis response store: {exc}") from exc
        if int(acked) < self._acks:
            raise StoreUnavailable(f"the stored response was confirmed by {acked} of {self._acks} replicas")

    async def get(self, tenant: str, response_id: str) -> bytes | None:
        try:
            value = await self._r.get(self._key(tenant, response_id))
        except Exception as exc:
            raise StoreUnavailable(f"Redis response store: {exc}") from exc
        return bytes(value) if value is not None else None

    async def delete(self, tenant: str, response_id: str) -> bool:
        try:
            return bool(await self._r.delete(self._key(tenant, response_id)))
        except Exception as exc:
            raise StoreUnavailable(f"Redis response store: {exc}") from exc

    async def close(self) -> None:
        from gateway.redisconn import close_client

        await close_client(self._r)


async def open_response_store(options: Any) -> ResponseStore:
    """The response store beside the node's ``[store]`` (``options``: its StoreConfig)."""
    from gateway.store.factory import REDIS_SCHEMES, _split_prefix

    scheme, _, rest = options.url.partition("://")
    if scheme == "sqlite":
        return await SqliteResponseStore.open(rest + "-responses", options.busy_timeout)
    if scheme in REDIS_SCHEMES:
        url, prefix = _split_prefix(options.url, options.prefix)
        return await RedisResponseStore.open(
            url, prefix, options.min_replicas_acked, options.replica_ack_timeout
        )
    raise StoreUnavailable(f"no response store for the store URL scheme {scheme!r}")
