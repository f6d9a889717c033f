"""Breaker state shared between the workers of a node and between nodes: ``BreakerSync``.

What is shared: each deployment's opens (with their end; an ejection is an open without end), closes, and
cooldowns (an upstream's Retry-After concerns every worker that calls it). What stays in each worker:
failure counts, the sliding window, half-open probe slots, latencies, in-flight counts. A worker that
sees a deployment fail opens its breaker and publishes the open; the others apply it and stop sending
there too, without each paying ``consecutive_failures`` failed requests first.

Semantics (eventually consistent):

- *Delivery*: a published change reaches the other instances after one check of the file (local
  transport, every ``check_interval``) or one pub/sub hop (Redis). A change missed while disconnected
  is picked up by the full re-read (``snapshot``) made on start, after every transport error and every
  ``resync_interval``. Both transports keep the *latest* change per deployment, not a log: convergence
  needs nothing more.
- *Conflicts*: per deployment, the open or close with the latest transition time wins (last writer wins),
  in the store and in every instance; cooldowns merge by the latest end. Times travel as Unix time
  (``wall``) and are mapped to and from each instance's monotonic clock (``clock``) on the way; clock
  skew between nodes of ``d`` seconds lets a transition lose to one up to ``d`` seconds older. The worst
  outcome is a deployment kept out one ``open_for`` too long, or a probe round too early, which the local
  breakers correct by themselves.
- *Half-open*: after a shared open ends, every instance lets its own ``half_open_probes`` probes through.
  The first instance whose probes succeed publishes a close, newer than the open, which closes the
  breaker everywhere; a failing probe publishes a new open.
- *No echo*: applying a remote change never publishes it again; an instance ignores its own changes.

Transports: ``SqliteSyncTransport`` (one file shared by the workers of a node; WAL mode) and
``RedisSyncTransport`` (a hash holding the latest change per deployment, and a pub/sub channel announcing
each one). Publishing runs in the background: ``Router.record`` only appends to a list.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import os
import sqlite3
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal, Protocol, TypeVar

import msgspec
from redis.asyncio.client import PubSub

from gateway.aio import cancel_and_wait
from gateway.redisconn import (
    Client,
    close_client,
    close_pubsub,
    open_client,
    open_pubsub,
    parse_url,
    unavailable_errors,
)
from gateway.routing.breaker import Change
from gateway.routing.router import Deployment, Router

__all__ = ["BreakerEvent", "BreakerSync", "RedisSyncTransport", "SqliteSyncTransport", "SyncTransport"]

log = logging.getLogger("gateway.routing.sync")

_T = TypeVar("_T")


class BreakerEvent(msgspec.Struct, frozen=True, kw_only=True):
    """One shared change of one deployment, times in Unix seconds."""

    #: the deployment id (``router.deployment_id``)
    deployment: str
    state: Literal["open", "closed", "cooldown"]
    #: end of the open or cooldown; None for a close, and for an open that lasts until restored
    until: float | None = None
    #: when the transition happened
    at: float
    #: the instance that made it
    origin: str

    @property
    def kind(self) -> str:
        """What the change replaces: the breaker state, or the cooldown."""
        return "cooldown" if self.state == "cooldown" else "breaker"


_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(BreakerEvent).decode


class SyncTransport(Protocol):
    async def publish(self, events: Sequence[BreakerEvent]) -> None:
        """Store each event unless a newer one of its deployment and kind is stored, and announce it."""
        ...

    async def receive(self, timeout: float) -> list[BreakerEvent]:
        """Events stored since the last call (maybe including this instance's own), waiting up to
        ``timeout`` seconds for the first."""
        ...

    async def snapshot(self) -> list[BreakerEvent]:
        """The latest event of every deployment and kind."""
        ...

    async def close(self) -> None: ...


class BreakerSync:
    """Publishes this worker's breaker changes and applies everyone else's (see the module docstring).

    ``attach(routers)`` after building each snapshot's routers; ``start()`` once the loop runs;
    ``stop()`` at shutdown. ``flush`` and ``poll`` are the steps ``start`` loops over (tests call them).
    """

    def __init__(
        self,
        transport: SyncTransport,
        *,
        origin: str | None = None,
        wall: Callable[[], float] = time.time,
        clock: Callable[[], float] = time.monotonic,
        poll_interval: float = 1.0,
        resync_interval: float = 30.0,
    ) -> None:
        self.transport = transport
        self.origin = origin or f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._wall = wall
        self._clock = clock
        self.poll_interval = poll_interval
        self.resync_interval = resync_interval
        self._targets: dict[str, tuple[Router, Deployment]] = {}
        self._outbox: list[BreakerEvent] = []
        self._wake: asyncio.Event | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.applied = 0

    # -- the routers' side

    def attach(self, routers: Mapping[str, Router]) -> None:
        """Share the breakers of these routers (replacing any attached before)."""
        targets: dict[str, tuple[Router, Deployment]] = {}
        for router in routers.values():
            router.on_change = self._on_change
            for d in router.deployments:
                targets[d.id] = (router, d)
        self._targets = targets

    def _on_change(self, deployment: Deployment, change: Change) -> None:
        # PERF: on the request path (a breaker transition): convert and queue, nothing else
        offset = self._wall() - self._clock()
        until = change.until + offset if change.until is not None else None
        state: Literal["open", "closed", "cooldown"] = (
            "open" if change.state == "open" else "closed" if change.state == "closed" else "cooldown"
        )
        event = BreakerEvent(
            deployment=deployment.id, state=state, until=until, at=change.at + offset, origin=self.origin
        )
        self._outbox.append(event)
        if self._wake is not None:
            self._wake.set()

    def apply(self, event: BreakerEvent) -> bool:
        """Apply one remote event to the attached breaker it names; False if unknown, own or stale."""
        if event.origin == self.origin:
            return False
        target = self._targets.get(event.deployment)
        if target is None:
            return False
        router, deployment = target
        now = self._clock()
        offset = now - self._wall()
        until = event.until + offset if event.until is not None and math.isfinite(event.until) else None
        change = Change(event.state, until, event.at + offset)
        if router.apply(deployment, change, now):
            self.applied += 1
            return True
        return False

    # -- the transport's side

    async def flush(self) -> int:
        """Publish the queued changes; on failure they stay queued. Returns how many went."""
        events, self._outbox = self._outbox, []
        if not events:
            return 0
        try:
            await self.transport.publish(events)
        except BaseException:
            self._outbox[:0] = events
            raise
        return len(events)

    async def poll(self, timeout: float = 0.0) -> int:
        """Receive and apply what others published; returns how many changes applied. Events that
        change nothing (this instance's own, or older than what is known) do not end the wait."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        applied = 0
        while True:
            events = await self.transport.receive(max(0.0, deadline - loop.time()))
            applied += sum(self.apply(e) for e in events)
            if applied or not events or loop.time() >= deadline:
                return applied

    async def resync(self) -> int:
        """Re-read every deployment's latest change (start, after errors, now and then)."""
        return sum(self.apply(e) for e in await self.transport.snapshot())

    async def start(self) -> None:
        if self._tasks:
            return
        self._wake = asyncio.Event()
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._publisher()), loop.create_task(self._receiver())]

    async def stop(self) -> None:
        tasks, self._tasks = self._tasks, []
        await cancel_and_wait(*tasks)
        with contextlib.suppress(Exception):
            await self.flush()
        await self.transport.close()

    async def _publisher(self) -> None:
        wake = self._wake
        assert wake is not None
        while True:
            await wake.wait()
            wake.clear()
            try:
                await self.flush()
            except Exception as exc:
                log.warning("breaker sync: publishing failed, will retry: %s", exc)
                await asyncio.sleep(self.poll_interval)
                wake.set()

    async def _receiver(self) -> None:
        next_resync = 0.0
        while True:
            try:
                if time.monotonic() >= next_resync:
                    await self.resync()
                    next_resync = time.monotonic() + self.resync_interval
                await self.poll(self.poll_interval)
            except Exception as exc:
                log.warning("breaker sync: receiving failed, will resync: %s", exc)
                next_resync = 0.0
                await asyncio.sleep(self.poll_interval)


# --------------------------------------------------------------------------------------------------------
# One node: a SQLite file

_SCHEMA = """
CREATE TABLE IF NOT EXISTS breaker_events (
    deployment TEXT NOT NULL,
    kind TEXT NOT NULL,
    event BLOB NOT NULL,
    until REAL,
    at REAL NOT NULL,
    seq INTEGER NOT NULL,
    PRIMARY KEY (deployment, kind)
);
CREATE INDEX IF NOT EXISTS breaker_events_seq ON breaker_events (seq);
"""

# The newer transition wins for the breaker state, the later end for a cooldown; ``seq`` orders the rows
# so that pollers read only what is new.
_UPSERT = """
INSERT INTO breaker_events (deployment, kind, event, until, at, seq)
VALUES (?, ?, ?, ?, ?, (SELECT COALESCE(MAX(seq), 0) + 1 FROM breaker_events))
ON CONFLICT (deployment, kind) DO UPDATE SET
    event = excluded.event, until = excluded.until, at = excluded.at, seq = excluded.seq
WHERE (excluded.kind = 'breaker' AND excluded.at > breaker_events.at)
   OR (excluded.kind = 'cooldown' AND excluded.until > COALESCE(breaker_events.until, -1e308))
"""


class SqliteSyncTransport:
    """The workers of one node share one SQLite file (WAL). Readers check ``PRAGMA data_version`` (a
    counter read without touching the table) every ``check_interval`` seconds and read the new rows by
    ``seq``. SQLite calls run on one thread of their own, never on the event loop."""

    def __init__(self, path: str, *, check_interval: float = 0.1, busy_timeout: float = 5.0) -> None:
        self.path = path
        self.check_interval = check_interval
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gateway-breaker-sync")
        self._conn: sqlite3.Connection | None = None
        self._busy_timeout = busy_timeout
        self._data_version = -1
        self._seq = 0
        self._closed = False

    async def _run(self, fn: Callable[..., _T], *args: Any) -> _T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args))

    def _connection(self) -> sqlite3.Connection:
        conn = self._conn
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=self._busy_timeout, isolation_level=None,
                                   check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.executescript(_SCHEMA)
            self._conn = conn
        return conn

    def _publish(self, events: Sequence[BreakerEvent]) -> None:
        conn = self._connection()
        conn.execute("BEGIN IMMEDIATE")
        try:
            for e in events:
                conn.execute(_UPSERT, (e.deployment, e.kind, _encode(e), e.until, e.at))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def _changes(self) -> list[BreakerEvent] | None:
        conn = self._connection()
        (version,) = conn.execute("PRAGMA data_version").fetchone()
        if version == self._data_version:
            return None
        self._data_version = version
        rows = conn.execute(
            "SELECT seq, event FROM breaker_events WHERE seq > ? ORDER BY seq", (self._seq,)
        ).fetchall()
        if rows:
            self._seq = rows[-1][0]
        return [_decode(row[1]) for row in rows]

    def _snapshot(self) -> list[BreakerEvent]:
        rows = self._connection().execute("SELECT seq, event FROM breaker_events ORDER BY seq").fetchall()
        if rows:
            self._seq = max(self._seq, rows[-1][0])
        return [_decode(row[1]) for row in rows]

    async def publish(self, events: Sequence[BreakerEvent]) -> None:
        await self._run(self._publish, list(events))

    async def receive(self, timeout: float) -> list[BreakerEvent]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            events = await self._run(self._changes)
            if events:
                return events
            left = deadline - loop.time()
            if left <= 0:
                return []
            await asyncio.sleep(min(left, self.check_interval))

    async def snapshot(self) -> list[BreakerEvent]:
        return await self._run(self._snapshot)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        conn = self._conn
        if conn is not None:
            await self._run(conn.close)
        self._executor.shutdown(wait=False)


# --------------------------------------------------------------------------------------------------------
# A cluster: Redis

# KEYS: the hash, the channel. ARGV: field, event JSON, kind, until ("" for none), at.
_PUBLISH_LUA = """
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if cur then
  local c = cjson.decode(cur)
  if ARGV[3] == 'cooldown' then
    if c['until'] ~= cjson.null and ARGV[4] ~= '' and tonumber(ARGV[4]) <= tonumber(c['until']) then
      return 0
    end
  elseif tonumber(ARGV[5]) <= tonumber(c['at']) then
    return 0
  end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('PUBLISH', KEYS[2], ARGV[2])
return 1
"""


_REDIS_DOWN = unavailable_errors()


class RedisSyncTransport:
    """Every node shares a Redis hash ``<prefix>:breakers`` (field: deployment and kind; value: the latest
    event as JSON) and announces each stored event on the channel ``<prefix>:breakers``. A Lua script
    makes compare-store-announce atomic, so a stale event is neither stored nor announced.

    redis-py costs about 100 us of client CPU per call: fine here, nothing on the request path awaits it.
    """

    def __init__(self, client: Client, *, prefix: str = "gw") -> None:
        self._r = client
        self.key = f"{prefix}:breakers"
        self.channel = f"{prefix}:breakers"
        self._script = client.register_script(_PUBLISH_LUA)
        self._pubsub: PubSub | None = None
        self._closed = False

    @classmethod
    async def open(cls, url: str, *, prefix: str = "gw") -> RedisSyncTransport:
        """On the Redis ``url`` names (``gateway.redisconn``: one server, a Sentinel-managed master
        followed through failovers, or a Redis Cluster: the hash and the channel share one name, so the
        script's two keys are one slot)."""
        client = open_client(parse_url(url))
        try:
            await client.ping()
        except BaseException:
            await close_client(client)
            raise
        return cls(client, prefix=prefix)

    async def _subscribed(self) -> PubSub:
        # subscribe before any snapshot read, so that no publication falls in between
        if self._pubsub is None:
            pubsub = open_pubsub(self._r)
            await pubsub.subscribe(self.channel)
            self._pubsub = pubsub
        return self._pubsub

    async def publish(self, events: Sequence[BreakerEvent]) -> None:
        for e in events:  # one script call each: changes are rare
            until = "" if e.until is None else repr(e.until)
            field = f"{e.deployment}\x1f{e.kind}"
            args: list[str | bytes] = [field, _encode(e), e.kind, until, repr(e.at)]
            await self._script(keys=[self.key, self.channel], args=args)

    async def receive(self, timeout: float) -> list[BreakerEvent]:
        try:
            pubsub = await self._subscribed()
            out: list[BreakerEvent] = []
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout
            while True:
                # None also stands for a subscription confirmation that was skipped: wait on until the
                # deadline for a first event, then take whatever else is already there
                left = 0.0 if out else max(0.0, deadline - loop.time())
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=left)
                if message is None:
                    if out or loop.time() >= deadline:
                        return out
                    continue
                if message.get("type") == "message":
                    try:
                        out.append(_decode(message["data"]))
                    except msgspec.DecodeError:
                        log.warning("breaker sync: ignoring a malformed event on %s", self.channel)
        except _REDIS_DOWN:
            await self._drop_pubsub()
            raise

    async def snapshot(self) -> list[BreakerEvent]:
        await self._subscribed()
        raw: dict[Any, Any] = await self._r.hgetall(self.key)
        out: list[BreakerEvent] = []
        for value in raw.values():
            try:
                out.append(_decode(value))
            except msgspec.DecodeError:
                log.warning("breaker sync: ignoring a malformed entry in %s", self.key)
        return out

    async def _drop_pubsub(self) -> None:
        pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None:
            with contextlib.suppress(*_REDIS_DOWN):
                await close_pubsub(pubsub)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self._drop_pubsub()
        await close_client(self._r)
