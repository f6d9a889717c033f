"""The cluster ``LeaseSource``: GCRA buckets and concurrency counters in Redis, shared by every node.

Each operation is one Lua script call, atomic on the server:

- ``_BUCKET`` (acquire, give_back, charge, refund, peek) on ``{<prefix>:lim:<key>}``, a hash of the
  bucket's ``l`` (level), ``s`` (stamp), ``r`` (rate) and ``b`` (burst). It is ``gcra`` of
  ``gateway.limits.shared_local`` written in Lua, step for step. A bucket that refills completely is
  deleted (it equals a fresh one), and every write sets the key to expire when the bucket would be full
  again, so idle limits take no memory.
- ``_COUNTER`` (enter, leave, set, count) on ``{<prefix>:lim:<key>}:c``, a hash of holder ->
  ``"<count> <expiry>"``; entries past their expiry are dropped by the next call on the key.
- ``_BUDGET`` (``BudgetOp``) on ``{<prefix>:bud:<scope>/<id>}``, a hash of the counter's ``d`` (day),
  ``m`` (month), ``sd`` and ``sm`` (their spend) and ``h:<holder>`` -> ``"<hold> <expiry>"``; it is
  ``budget_step`` of ``gateway.limits.shared_local`` written in Lua. An idle counter expires after a day
  (the store's spend re-seeds it).

Time is the server's: each script reads ``redis.call('TIME')``, so nodes with skewed clocks share one
bucket clock (seconds since an epoch of 1.7e9 s, which keeps microseconds exact in a double). Scripts
that read ``TIME`` and then write are replicated by their effects, the default since Redis 5.

Redis Cluster: the braces are a hash tag, so both keys of one limit live on one slot and each script
touches one slot. Different limits spread over the cluster; a batch is a pipeline to each master
concerned, one EVALSHA each, routed by the slot map (``_ClusterLinks``).

Sentinel: the connection comes from a ``SentinelConnectionPool`` (``gateway.redisconn``), so each time it
connects it asks the sentinels for the master. A failed round trip drops the connection; the next one
(a call, or the client's probe every second while it falls back to ``fail_mode``) connects to whatever
master the sentinels then name. A demoted master's READONLY reply counts as a failed round trip too.

Calls are EVALSHA; a NOSCRIPT reply (the script cache was flushed, or a failover to a replica that never
saw the script) sends ``SCRIPT LOAD`` and the failed calls again in one more round trip.

Client cost. Commands go over one ``redis.asyncio`` connection (hiredis parser) that this source drives
itself: RESP packed here (redis-py's packer costs about 20 us per command), one timeout per round trip
(not one per read), and group commit: calls made while a round trip is in flight are sent together in
the next one. Measured client CPU on the two-core reference machine, a loopback Redis, compiled core:

==================================================================  ==========================
EVALSHA through ``redis.asyncio.Redis.execute_command``              about 200 us
one ``batch`` of one operation through this source                   about 115 us (160 us wall)
a ``batch`` of ten operations (one pipelined round trip)             about 245 us (+15 us each)
ten concurrent single-operation callers (group commit)               about 55 us per operation
a bare asyncio Protocol with ``hiredis.Reader`` (for comparison)     about 55 us
==================================================================  ==========================

Most of a round trip's cost is the loopback socket itself and redis-py's reader; the bare Protocol line
is what dropping redis-py for the hot calls would still save.

With leases the request path sees one call per lease (per hundred requests or more); refused requests
are answered from the refusal cached in ``LeaseClient``.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import os
import secrets
import socket
from collections.abc import Sequence
from typing import Any

import redis.asyncio
import redis.exceptions

from gateway.aio import cancel_and_wait
from gateway.limits.shared import (
    BudgetGrant,
    BudgetOp,
    Grant,
    LeaseSource,
    Op,
    SharedStateUnavailable,
    check_budget_op,
    check_op,
)
from gateway.redisconn import (
    RedisTarget,
    SlotMap,
    close_pool,
    connection_pool,
    make_connection,
    moved_to,
    no_retries,
    node_connection,
    parse_url,
    redact,
    redirected,
)

__all__ = ["BUCKET_SCRIPT", "BUDGET_SCRIPT", "COUNTER_SCRIPT", "RedisLeaseSource"]

_INF = math.inf

# KEYS[1] the bucket. ARGV: op, rate, burst, amount, size, returning (Python float reprs).
# Returns {granted, wait, remaining, reset_after} as strings (%.17g: doubles survive the trip exactly).
BUCKET_SCRIPT = """
local key = KEYS[1]
local op = ARGV[1]
local rate = tonumber(ARGV[2])
local burst = tonumber(ARGV[3])
local amount = tonumber(ARGV[4])
local size = tonumber(ARGV[5])
local returning = tonumber(ARGV[6])
local t = redis.call('TIME')
local now = (tonumber(t[1]) - 1700000000) + tonumber(t[2]) / 1000000
local ceiling = burst * 1.000000001
local level, stamp = 0, -math.huge
local state = redis.call('HMGET', key, 'l', 's', 'r', 'b')
local stored = state[1] ~= false
if stored then
  level = tonumber(state[1])
  stamp = tonumber(state[2])
  local old_rate, old_burst = tonumber(state[3]), tonumber(state[4])
  if old_rate ~= rate or old_burst ~= burst then
    if level > 0 and now > stamp then
      level = level - (now - stamp) * old_rate
      if level < 0 then level = 0 end
    end
    if now > stamp then stamp = now end
    -- the units used stay used, up to the new burst; a debt keeps its proportion when the burst shrinks
    local cap = burst
    local scaled = level * (burst / old_burst)
    if scaled > cap then cap = scaled end
    if level > cap then level = cap end
  end
end
local function level_at(at)
  if level > 0 and at > stamp then
    local l = level - (at - stamp) * rate
    if l < 0 then l = 0 end
    return l
  end
  return level
end
local granted, wait = 0, 0
if op == 'acquire' then
  if returning > 0 then
    level = level_at(now) - returning
    if level < 0 then level = 0 end
    if now > stamp then stamp = now end
  end
  local current = level_at(now)
  if current + amount <= ceiling then
    granted = size
    if granted < amount then granted = amount end
    if current + granted > ceiling then
      granted = math.floor(ceiling - current)
      if granted < amount then granted = amount end
    end
    level = current + granted
    if now > stamp then stamp = now end
  elseif amount > ceiling then
    wait = math.huge
  else
    local start = now
    if stamp > now then start = stamp end
    -- whole microseconds (the clock's resolution), grown until the amount fits
    wait = math.ceil(((start - now) + (current + amount - burst) / rate) * 1000000) / 1000000
    local guard = 0
    while level_at(now + wait) + amount > ceiling and guard < 64 do
      wait = wait + 0.000001
      guard = guard + 1
    end
  end
elseif op == 'charge' then
  level = level_at(now) + amount
  if now > stamp then stamp = now end
elseif op == 'give_back' or op == 'refund' then
  level = level_at(now) - amount
  if level < 0 then level = 0 end
  if now > stamp then stamp = now end
end
if op ~= 'peek' then
  if level > 0 then
    redis.call('HSET', key, 'l', string.format('%.17g', level), 's', string.format('%.17g', stamp),
      'r', ARGV[2], 'b', ARGV[3])
    local ahead = stamp - now
    if ahead < 0 then ahead = 0 end
    local ms = math.ceil((level / rate + ahead) * 1000) + 1000
    if ms > 315360000000 then ms = 315360000000 end
    redis.call('PEXPIRE', key, string.format('%d', ms))
  elseif stored then
    redis.call('DEL', key)
  end
end
local current = level_at(now)
local remaining = ceiling - current
if remaining > burst then remaining = burst elseif remaining < 0 then remaining = 0 end
return {string.format('%.17g', granted), string.format('%.17g', wait), string.format('%.17g', remaining),
  string.format('%.17g', current / rate)}
"""

# KEYS[1] the counter hash. ARGV: op ('enter', 'leave', 'set', 'count'), holder, limit, ttl, count.
# Returns the live total after the operation, or -1 when 'enter' is refused.
COUNTER_SCRIPT = """
local key = KEYS[1]
local op, holder = ARGV[1], ARGV[2]
local ttl = tonumber(ARGV[4])
local t = redis.call('TIME')
local now = (tonumber(t[1]) - 1700000000) + tonumber(t[2]) / 1000000
local others, mine = 0, 0
local entries = redis.call('HGETALL', key)
for i = 1, #entries, 2 do
  local value = entries[i + 1]
  local space = string.find(value, ' ', 1, true)
  local count, expiry = tonumber(string.sub(value, 1, space - 1)), tonumber(string.sub(value, space + 1))
  if expiry <= now then
    redis.call('HDEL', key, entries[i])
  elseif entries[i] == holder then
    mine = count
  else
    others = others + count
  end
end
if op == 'count' then return others + mine end
if op == 'enter' then
  if others + mine >= tonumber(ARGV[3]) then return -1 end
  mine = mine + 1
elseif op == 'leave' then
  if mine > 0 then mine = mine - 1 end
else
  mine = tonumber(ARGV[5])
end
if mine > 0 then
  redis.call('HSET', key, holder, string.format('%d %.17g', mine, now + ttl))
  redis.call('PEXPIRE', key, string.format('%d', math.ceil(ttl * 1000) + 1000))
else
  redis.call('HDEL', key, holder)
end
return others + mine
"""


# KEYS[1] the budget counter. ARGV: holder, day, month, limit_day, limit_month (-1: none), spent, floor,
# need, want, seed_day, seed_month, heal (0/1), split, ttl. Returns {ok, held, spent_day, spent_month,
# holds} (%.17g strings). ``budget_step`` of gateway.limits.shared_local, operation for operation.
BUDGET_SCRIPT = """
local key = KEYS[1]
local holder = 'h:' .. ARGV[1]
local op_day, op_month = tonumber(ARGV[2]), tonumber(ARGV[3])
local limit_day, limit_month = tonumber(ARGV[4]), tonumber(ARGV[5])
local spent, floor, need, want = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[9])
local seed_day, seed_month = tonumber(ARGV[10]), tonumber(ARGV[11])
local heal, split, ttl = ARGV[12] == '1', tonumber(ARGV[13]), tonumber(ARGV[14])
local t = redis.call('TIME')
local now = (tonumber(t[1]) - 1700000000) + tonumber(t[2]) / 1000000
local fresh = true
local day, month, spent_day, spent_month = 0, 0, 0, 0
local mine, others = 0, 0
local entries = redis.call('HGETALL', key)
for i = 1, #entries, 2 do
  local field, value = entries[i], entries[i + 1]
  if field == 'd' then day = tonumber(value); fresh = false
  elseif field == 'm' then month = tonumber(value)
  elseif field == 'sd' then spent_day = tonumber(value)
  elseif field == 'sm' then spent_month = tonumber(value)
  else
    local space = string.find(value, ' ', 1, true)
    local hold, expiry = tonumber(string.sub(value, 1, space - 1)), tonumber(string.sub(value, space + 1))
    if expiry <= now then
      redis.call('HDEL', key, field)
    elseif field == holder then
      mine = hold
    else
      others = others + hold
    end
  end
end
if op_month > month then
  month = op_month
  spent_month = 0
end
if op_day > day then
  day = op_day
  spent_day = 0
end
spent_day = spent_day + spent
spent_month = spent_month + spent
if fresh or heal then
  if op_day == day and seed_day > spent_day then spent_day = seed_day end
  if op_month == month and seed_month > spent_month then spent_month = seed_month end
end
local ok = 1
if need > 0 then
  local room_day, room_month = math.huge, math.huge
  if limit_day >= 0 then room_day = limit_day - spent_day end
  if limit_month >= 0 then room_month = limit_month - spent_month end
  local room = room_day
  if room_month < room then room = room_month end
  room = room - others
  if need <= room then
    local extra = (room - need) / split
    if extra > want - need then extra = want - need end
    if extra < 0 then extra = 0 end
    mine = need + extra
  else
    ok = 0
    mine = floor
  end
else
  if mine > want then mine = want end
  if mine < floor then mine = floor end
end
redis.call('HSET', key, 'd', string.format('%d', day), 'm', string.format('%d', month),
  'sd', string.format('%.17g', spent_day), 'sm', string.format('%.17g', spent_month))
if mine > 0 then
  redis.call('HSET', key, holder, string.format('%.17g %.17g', mine, now + ttl))
else
  redis.call('HDEL', key, holder)
end
-- an idle counter is forgotten after a day; the store's seeds rebuild it on its next use
redis.call('PEXPIRE', key, string.format('%d', math.ceil(ttl * 1000) + 86400000))
return {tostring(ok), string.format('%.17g', mine), string.format('%.17g', spent_day),
  string.format('%.17g', spent_month), string.format('%.17g', others + mine)}
"""


def _bulk(value: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(value), value)


def _command(*args: bytes) -> bytes:
    return b"*%d\r\n%s" % (len(args), b"".join(_bulk(a) for a in args))


class _Script:
    """A Lua script: its body, its SHA1, and the packed head of an EVALSHA call on one key with ``argc``
    arguments."""

    __slots__ = ("body", "head", "load", "sha")

    def __init__(self, body: str, argc: int) -> None:
        self.body = body.encode()
        self.sha = hashlib.sha1(self.body).hexdigest().encode()
        self.load = _command(b"SCRIPT", b"LOAD", self.body)
        # EVALSHA sha 1 key + argc ARGV
        self.head = b"*%d\r\n" % (4 + argc) + _bulk(b"EVALSHA") + _bulk(self.sha) + _bulk(b"1")


# 6 ARGV for both (the counter's last one is unused)
_BUCKET_LUA = _Script(BUCKET_SCRIPT, 6)
_COUNTER_LUA = _Script(COUNTER_SCRIPT, 6)
_BUDGET_LUA = _Script(BUDGET_SCRIPT, 14)
_PING = _command(b"PING")
_CLUSTER_SLOTS = _command(b"CLUSTER", b"SLOTS")

#: (script or None for a plain command, the packed command, its key or None: where a cluster routes it)
_Command = tuple[_Script | None, bytes, bytes | None]



class RedisLeaseSource(LeaseSource):
    """Leases and concurrency counters in Redis at ``url`` (``redis://``, ``rediss://``, ``unix://``, or
    ``redis+sentinel://``: the master the sentinels name; see ``gateway.redisconn``).

    One instance per worker process: one connection, one holder identity. ``prefix`` starts every key.
    ``timeout``: seconds a round trip (connecting included) may take before the source is unavailable;
    keep it short, a request may wait that long once before its client falls back to ``fail_mode``.
    Nothing is retried: an operation whose reply was lost may have been applied, and its units are then
    forfeited (never counted twice).
    """

    keeps_budgets = True

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "gw",
        lease_ttl: float = 2.0,
        holder_ttl: float = 10.0,
        timeout: float = 0.5,
    ) -> None:
        if not (0.0 < lease_ttl < _INF and 0.0 < holder_ttl < _INF and 0.0 < timeout < _INF):
            raise ValueError("lease_ttl, holder_ttl and timeout must be finite numbers of seconds > 0")
        self.url = url
        self.lease_ttl = float(lease_ttl)
        self.holder_ttl = float(holder_ttl)
        self._prefix = prefix
        self._timeout = float(timeout)
        target = parse_url(url)
        options: dict[str, Any] = {
            "socket_timeout": None,  # one timeout per round trip instead (see _roundtrip)
            "socket_connect_timeout": self._timeout,
            "retry": no_retries(),
            "health_check_interval": 0,
        }
        self._cluster: _ClusterLinks | None = None
        self._pool: redis.asyncio.ConnectionPool | None = None
        if target.kind == "cluster":
            self._cluster = _ClusterLinks(target, options)
        else:
            self._pool = connection_pool(target, **options)
            self._conn = make_connection(self._pool)
        self._holder = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}".encode()
        self._mine: dict[str, int] = {}
        self._keys: dict[str, bytes] = {}
        self._jobs: list[tuple[list[_Command], asyncio.Future[list[Any]]]] = []
        self._sender: asyncio.Task[None] | None = None
        #: a round trip is in flight (by a caller or the sender task): new calls queue for the next one
        self._busy = False
        self._healthy = False
        self._closed = False

    @classmethod
    async def open(cls, url: str, **options: Any) -> RedisLeaseSource:
        """A source for ``url``, connected if Redis answers now; an unreachable Redis is not an error here
        (``healthy`` is False and the client falls back until it answers)."""
        source = cls(url, **options)
        await source.ping()
        return source

    @property
    def healthy(self) -> bool:
        return self._healthy and not self._closed

    # -- commands ---------------------------------------------------------------------------------------

    def _key(self, limit_key: str) -> bytes:
        """The packed bucket key ``{prefix:lim:key}`` (cached: the same few keys come back all the time)."""
        packed = self._keys.get(limit_key)
        if packed is None:
            if len(self._keys) >= 100_000:
                self._keys.clear()
            packed = self._keys[limit_key] = f"{{{self._prefix}:lim:{limit_key}}}".encode()
        return packed

    def _bucket_command(self, op: Op) -> _Command:
        key = self._key(op.key)
        return _BUCKET_LUA, b"".join(
            (
                _BUCKET_LUA.head,
                _bulk(key),
                _bulk(op.kind.encode()),
                _bulk(repr(op.rate).encode()),
                _bulk(repr(op.burst).encode()),
                _bulk(repr(op.amount).encode()),
                _bulk(repr(op.size).encode()),
                _bulk(repr(op.returning).encode()),
            )
        ), key

    def _budget_command(self, op: BudgetOp) -> _Command:
        def num(value: float) -> bytes:
            return repr(value).encode() if value < _INF else b"-1"

        key = f"{{{self._prefix}:bud:{op.key}}}".encode()
        return _BUDGET_LUA, b"".join(
            (
                _BUDGET_LUA.head,
                _bulk(key),
                _bulk(self._holder),
                _bulk(b"%d" % op.day),
                _bulk(b"%d" % op.month),
                _bulk(num(op.limit_day)),
                _bulk(num(op.limit_month)),
                _bulk(num(op.spent)),
                _bulk(num(op.floor)),
                _bulk(num(op.need)),
                _bulk(num(op.want)),
                _bulk(num(op.seed_day)),
                _bulk(num(op.seed_month)),
                _bulk(b"1" if op.heal else b"0"),
                _bulk(num(op.split)),
                _bulk(repr(self.holder_ttl).encode()),
            )
        ), key

    def _counter_command(self, kind: bytes, limit_key: str, limit: int = 0, count: int = 0) -> _Command:
        key = self._key(limit_key) + b":c"
        return _COUNTER_LUA, b"".join(
            (
                _COUNTER_LUA.head,
                _bulk(key),
                _bulk(kind),
                _bulk(self._holder),
                _bulk(b"%d" % limit),
                _bulk(repr(self.holder_ttl).encode()),
                _bulk(b"%d" % count),
                _bulk(b""),
            )
        ), key

    async def _execute(self, commands: list[_Command]) -> list[Any]:
        """Send ``commands`` and return their replies. When the connection is idle the caller makes the
        round trip itself; calls made while one is in flight wait and go together in the next (group
        commit), sent by a task so that a cancelled caller never fails the others."""
        if self._closed:
            raise SharedStateUnavailable("the Redis lease source is closed")
        if not self._busy:
            self._busy = True
            try:
                return await self._roundtrip(commands)
            finally:
                self._busy = False
                if self._jobs:
                    self._start_sender()
        future: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        self._jobs.append((commands, future))
        return await future

    def _start_sender(self) -> None:
        if self._closed:
            self._fail_jobs()
            return
        self._busy = True
        self._sender = asyncio.get_running_loop().create_task(self._send_jobs(), name="gateway-limits-redis")

    async def _send_jobs(self) -> None:
        try:
            while self._jobs:
                jobs, self._jobs = self._jobs, []
                commands = [command for job, _ in jobs for command in job]
                try:
                    replies = await self._roundtrip(commands)
                except BaseException as exc:  # unavailable, or cancelled by close()
                    failure = exc if isinstance(exc, SharedStateUnavailable) else None
                    for _, future in jobs:
                        if not future.done():
                            future.set_exception(
                                failure or SharedStateUnavailable("the Redis lease source is closed")
                            )
                    if failure is None:
                        raise
                    continue
                at = 0
                for job, future in jobs:
                    if not future.done():
                        future.set_result(replies[at : at + len(job)])
                    at += len(job)
        finally:
            self._sender = None
            self._busy = False
            if self._jobs:
                self._start_sender()

    def _fail_jobs(self) -> None:
        jobs, self._jobs = self._jobs, []
        for _, future in jobs:
            if not future.done():
                future.set_exception(SharedStateUnavailable("the Redis lease source is closed"))

    async def _disconnect(self) -> None:
        if self._cluster is not None:
            await self._cluster.drop()
        else:
            await self._conn.disconnect(nowait=True)

    async def _roundtrip(self, commands: list[_Command]) -> list[Any]:
        try:
            async with asyncio.timeout(self._timeout):
                if self._cluster is not None:
                    replies = await self._cluster.exchange(commands)
                else:
                    replies = await _exchange(self._conn, commands)
        except (
            TimeoutError,
            redis.exceptions.ConnectionError,
            redis.exceptions.TimeoutError,
            OSError,
            SharedStateUnavailable,  # a failed SCRIPT LOAD: replies may be left unread, the stream is lost
        ) as exc:
            await self._disconnect()
            self._healthy = False
            why = str(exc) or type(exc).__name__
            raise SharedStateUnavailable(f"Redis at {redact(self.url)}: {why}") from exc
        for reply in replies:
            if isinstance(reply, redis.exceptions.ResponseError):
                self._healthy = False
                raise SharedStateUnavailable(f"Redis at {redact(self.url)}: {reply}")
        self._healthy = True
        return replies

    # -- LeaseSource ------------------------------------------------------------------------------------

    async def batch(self, ops: Sequence[Op], now: float) -> list[Grant]:
        for op in ops:
            check_op(op)
        replies = await self._execute([self._bucket_command(op) for op in ops])
        expires_at = now + self.lease_ttl
        grants = []
        for granted, wait, remaining, reset_after in replies:
            retry_after = float(wait)
            grants.append(
                Grant(
                    float(granted),
                    retry_after,
                    float(remaining),
                    float(reset_after),
                    expires_at if retry_after == 0.0 else 0.0,
                )
            )
        return grants

    async def budget(self, ops: Sequence[BudgetOp]) -> list[BudgetGrant]:
        for op in ops:
            check_budget_op(op)
        replies = await self._execute([self._budget_command(op) for op in ops])
        return [
            BudgetGrant(ok == b"1", float(held), float(day), float(month), float(holds))
            for ok, held, day, month, holds in replies
        ]

    async def enter(self, limit_key: str, limit: int) -> bool:
        (total,) = await self._execute([self._counter_command(b"enter", limit_key, limit)])
        if total < 0:
            return False
        self._mine[limit_key] = self._mine.get(limit_key, 0) + 1
        return True

    async def leave(self, limit_key: str) -> None:
        count = self._mine.get(limit_key, 0)
        if count <= 0:
            return
        self._mine[limit_key] = count - 1  # first: a lost reply is healed by keepalive
        await self._execute([self._counter_command(b"leave", limit_key)])

    async def keepalive(self) -> None:
        if not self._mine:
            return
        counts = list(self._mine.items())
        await self._execute([self._counter_command(b"set", key, 0, count) for key, count in counts])
        for key, count in counts:
            if count <= 0 and self._mine.get(key) == 0:
                del self._mine[key]

    async def inflight(self, limit_key: str) -> int:
        (total,) = await self._execute([self._counter_command(b"count", limit_key)])
        return int(total)

    async def ping(self) -> bool:
        try:
            (reply,) = await self._execute([(None, _PING, None)])
        except SharedStateUnavailable:
            return False
        return bool(reply)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        sender = self._sender
        if sender is not None:
            await cancel_and_wait(sender)
        self._fail_jobs()
        if self._cluster is not None:
            await self._cluster.drop()
        if self._pool is not None:
            await self._conn.disconnect()
            await close_pool(self._pool)


# --------------------------------------------------------------------------------------------------------
# One connection's exchange, and a cluster's connections


async def _read(conn: Any) -> Any:
    try:
        return await conn.read_response()
    except redis.exceptions.ResponseError as exc:  # one command's error reply; the stream is intact
        return exc


async def _exchange(conn: Any, commands: Sequence[_Command]) -> list[Any]:
    """Send ``commands`` on ``conn`` (connecting it first if need be) and read their replies; a NOSCRIPT
    reply loads the scripts and sends the failed calls again, in one more round trip."""
    if not conn.is_connected:
        await conn.connect()
    await conn.send_packed_command(b"".join(packed for _, packed, _ in commands), check_health=False)
    replies = [await _read(conn) for _ in commands]
    missing = [i for i, reply in enumerate(replies) if isinstance(reply, redis.exceptions.NoScriptError)]
    if not missing:
        return replies
    scripts = list({id(s): s for i in missing if (s := commands[i][0]) is not None}.values())
    payload = b"".join(s.load for s in scripts) + b"".join(commands[i][1] for i in missing)
    await conn.send_packed_command(payload, check_health=False)
    for script in scripts:
        loaded = await _read(conn)
        if isinstance(loaded, Exception):
            raise SharedStateUnavailable(f"SCRIPT LOAD failed: {loaded}")
        if loaded != script.sha:
            raise SharedStateUnavailable(f"SCRIPT LOAD answered {loaded!r}")
    for i in missing:
        replies[i] = await _read(conn)
    return replies


class _ClusterLinks:
    """Redis Cluster: one connection per master, each command sent to the master of its key's slot.

    Every script call touches one key (the bucket, the counter, or the budget counter; the braces make
    a limit's two keys one slot), so no call spans nodes. The slot map is read with ``CLUSTER SLOTS``
    from the first node to answer (the masters last known and the URL's seed nodes, asked together)
    before the first call, and again after a connection failure (a master died: a replica is being
    promoted) or a redirection (ASK, TRYAGAIN, CLUSTERDOWN); a MOVED reply names the slot's new master,
    which the map takes at once (the rest of the cluster may learn it later). Redirected calls were not
    run, so they are sent once more; calls to a node that failed count as lost (their units forfeited,
    as with one server). A round trip sends to the nodes concurrently.
    """

    def __init__(self, target: RedisTarget, options: dict[str, Any]) -> None:
        self._target = target
        self._options = options
        self._slots = SlotMap()
        #: the masters of the last map read: asked first next time (the seed nodes may be gone)
        self._known: list[tuple[str, int]] = []
        self._links: dict[tuple[str, int], Any] = {}

    def _link(self, node: tuple[str, int]) -> Any:
        conn = self._links.get(node)
        if conn is None:
            conn = self._links[node] = node_connection(self._target, node, **self._options)
        return conn

    async def _refresh(self) -> None:
        """Read the slot map from the masters last known and the URL's seed nodes, asked together: the
        first to answer with a map wins, the others are cut. Together, so that a host that does not
        answer at all (not even a refusal) does not use up the round trip's time."""
        nodes = list(dict.fromkeys([*self._known, *self._target.hosts]))
        tasks = {asyncio.ensure_future(self._slots_of(node)): node for node in nodes}
        failures = []
        try:
            while tasks:
                done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    node = tasks.pop(task)
                    error = task.exception()
                    if error is None and task.result():
                        self._slots = task.result()
                        self._known = self._slots.masters()
                        return
                    failures.append(f"{node[0]}:{node[1]}: {error or 'no slot is served'}")
        finally:
            await cancel_and_wait(*tasks)
            for node in tasks.values():
                await self._link(node).disconnect(nowait=True)
        raise SharedStateUnavailable("no cluster node gave a slot map: " + "; ".join(failures))

    async def _slots_of(self, node: tuple[str, int]) -> SlotMap:
        conn = self._link(node)
        try:
            (reply,) = await _exchange(conn, [(None, _CLUSTER_SLOTS, None)])
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError):
            await conn.disconnect(nowait=True)
            raise
        if isinstance(reply, Exception):
            raise reply
        return SlotMap.from_reply(reply, node)

    async def exchange(self, commands: list[_Command]) -> list[Any]:
        replies: list[Any] = [None] * len(commands)
        pending = list(range(len(commands)))
        for attempt in range(2):
            if not self._slots:
                await self._refresh()
            groups: dict[tuple[str, int], list[int]] = {}
            for i in pending:
                groups.setdefault(self._slots.node_of(commands[i][2]), []).append(i)
            nodes = list(groups)
            results = await asyncio.gather(
                *(_exchange(self._link(node), [commands[i] for i in groups[node]]) for node in nodes),
                return_exceptions=True,
            )
            again = []
            stale = False
            for node, result in zip(nodes, results, strict=True):
                if isinstance(result, BaseException):
                    self._slots = SlotMap()  # a master failed: the map may be stale
                    await self._link(node).disconnect(nowait=True)
                    raise result
                for i, reply in zip(groups[node], result, strict=True):
                    replies[i] = reply
                    if attempt == 0 and redirected(reply):
                        again.append(i)
                        moved = moved_to(reply, node)
                        if moved is not None:
                            self._slots.move(*moved)
                        else:  # ASK, TRYAGAIN, CLUSTERDOWN: read the map again
                            stale = True
            if not again:
                break
            if stale:
                self._slots = SlotMap()
            pending = again
        return replies

    async def drop(self) -> None:
        """Disconnect every node; the next round trip reads the slot map again."""
        self._slots = SlotMap()
        for conn in self._links.values():
            await conn.disconnect(nowait=True)
