"""The cluster store: Redis, shared by every node, so keys, tenants and approvals are the same everywhere.

Durability is Redis's own: run it with AOF (``appendonly yes``, ``appendfsync everysec`` or ``always``) or
RDB snapshots as the deployment requires; the gateway adds no persistence of its own.

Layout, all under one prefix (default ``gw``). Records and their indexes carry the hash tag ``{gw}`` so
that one Lua script may touch them all (in Redis Cluster they live in one slot; the data is small):

    {gw}:tenants                  hash  tenant id -> Tenant JSON
    {gw}:tenants:ids              zset  tenant ids (score 0, ordered by id)
    {gw}:keys                     hash  key id -> ApiKey JSON (without last_used_at)
    {gw}:keys:ids                 zset  key ids
    {gw}:keys:tenant:<tenant>     zset  key ids of one tenant
    {gw}:keys:last-used           hash  key id -> Unix time
    {gw}:subscriptions            hash  "<tenant>\\x1f<model>" -> Subscription JSON
    {gw}:subscriptions:ids        zset  "<tenant>\\x1f<model>"
    {gw}:subscriptions:tenant:<t> zset  "<tenant>\\x1f<model>" of one tenant
    {gw}:version                  int   change_version
    {gw}:changes                  zset  score version, member "<version>\\x1f<kind>\\x1f<tenant>\\x1f<id>"
    {gw}:audit:seq                int   last audit seq
    {gw}:audit                    zset  score seq, member AuditEntry JSON
    {gw}:audit:tenant:<tenant>    zset  the same entries of one tenant
    gw:spend:<scope>:<id>         hash  day -> USD (no hash tag: one key per counter, spread over the cluster)
    {gw}:usage:<gran>:<start>     hash  "<dims>\\x1f<field>" -> count (usage roll-ups, HINCRBY; expire)

Every write goes through one Lua script (``_COMMIT``): it checks the records the write was computed from
(compare-and-set), applies the changes, bumps the version, logs the change, appends the audit entry and
``PUBLISH``es the new version on ``gw:changes``, all atomically. A write that lost a race is recomputed
from fresh records and tried again. Watchers wake on the publication and also re-read the version at
their interval, so a notification lost while reconnecting delays a change but never hides it.

Replication. Redis replicates asynchronously: a write the master acknowledged and died before sending
to its replica is lost when Sentinel promotes that replica. With ``min_replicas_acked`` N > 0 each
commit is followed, on the same connection and in the same round trip, by ``WAIT N timeout``: the write
is reported done only once N replicas have it, so a key or tenant whose creation was answered survives a
failover. When fewer replicas confirm within ``replica_ack_timeout`` the write stays applied on the
master but the call fails with StoreUnavailable (the admin API answers 503): it was not confirmed. Spend
and last-used times are not waited for (counters sent in the background, at most the replication lag of
them lost on a failover); see docs/keys-and-tenants.md.

redis-py costs about 100 us of client CPU per call: fine here, since nothing on the request path awaits
this store (the hot path reads per-worker tables kept current by ``watch``).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Mapping, Sequence
from typing import Any, ParamSpec, TypeVar

import msgspec
import redis.exceptions
from redis.asyncio.client import PubSub

from gateway.aio import raise_lost_cancel, within
from gateway.redisconn import (
    Client,
    close_client,
    close_node_clients,
    close_pubsub,
    forget_node,
    is_cluster,
    key_pipeline,
    open_client,
    open_pubsub,
    parse_url,
    redact,
    redirected,
    run_script,
    unavailable_errors,
)
from gateway.store.base import (
    CHANGE_LOG_RETENTION,
    DEFAULT_PAGE_SIZE,
    SEP,
    AuditDraft,
    Conflict,
    NotFound,
    Store,
    StoreUnavailable,
    audit_details_for_update,
    audit_draft,
    check_limit,
    check_spend_args,
    decode_cursor,
    decode_seq_cursor,
    new_key,
    new_tenant,
    page_of,
    revoked_key,
    rotated_key,
    subscription_action,
    subscription_step,
    subscription_target,
    updated_key,
    updated_tenant,
)
from gateway.store.models import (
    ApiKey,
    AuditEntry,
    Change,
    ChangeKind,
    Decision,
    KeySource,
    KeyState,
    KeyUpdate,
    Page,
    SpendScope,
    StoredPrompt,
    Subscription,
    SubscriptionState,
    Tenant,
    TenantUpdate,
)

__all__ = ["RedisStore"]

log = logging.getLogger("gateway.store.redis")

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")

#: a write recomputed this many times without winning its race gives up with Conflict
_CAS_ATTEMPTS = 32
#: the longest pause, in seconds, before retrying a write that lost a race (jittered, growing)
_CAS_BACKOFF = 0.002
#: what a call raises while Redis (or the part of a cluster it needs) cannot answer
_DOWN = unavailable_errors()
#: the same, and the store's own word for it
_DOWN_OR_UNAVAILABLE: tuple[type[Exception], ...] = (*_DOWN, StoreUnavailable)
#: seconds a subscription's read may take beyond its own timeout before the watch drops the connection
_WATCH_STALL = 5.0
#: what makes the watch drop its subscription and make it again: the store down, or a read that stalled
_WATCH_DOWN: tuple[type[Exception], ...] = (*_DOWN_OR_UNAVAILABLE, TimeoutError)
#: records fetched per round trip when a listing filters on something without an index
_SCAN_BATCH = 200

_encode = msgspec.json.Encoder().encode
_tenant = msgspec.json.Decoder(Tenant).decode
_key = msgspec.json.Decoder(ApiKey).decode
_subscription = msgspec.json.Decoder(Subscription).decode
_prompt = msgspec.json.Decoder(StoredPrompt).decode
_audit = msgspec.json.Decoder(AuditEntry).decode

# KEYS: 1 version, 2 change log, 3 audit seq, 4 audit log, 5 tenant audit log (or 4 again), 6... op keys
# ARGV: 1 change log retention, 2 channel, 3 audit draft JSON ('' for none), 4 '1' to index it by tenant,
#       5 number of changes, then (kind, tenant, id) each, then the number of ops, then
#       (op, key index, field, value) each. Checks (absent, present, equal, count) run before any write.
_COMMIT = """
local i = 6
local changes = {}
for c = 1, tonumber(ARGV[5]) do
  changes[c] = {ARGV[i], ARGV[i + 1], ARGV[i + 2]}
  i = i + 3
end
local ops = {}
for o = 1, tonumber(ARGV[i]) do
  local at = i + 1 + (o - 1) * 4
  ops[o] = {ARGV[at], KEYS[tonumber(ARGV[at + 1])], ARGV[at + 2], ARGV[at + 3]}
end
for _, op in ipairs(ops) do
  local name, key, field, value = op[1], op[2], op[3], op[4]
  if name == 'absent' then
    if redis.call('HEXISTS', key, field) == 1 then return {'exists', field} end
  elseif name == 'present' then
    if redis.call('HEXISTS', key, field) == 0 then return {'missing', field} end
  elseif name == 'equal' then
    local current = redis.call('HGET', key, field)
    if not current then return {'missing', field} end
    if current ~= value then return {'changed', field} end
  elseif name == 'count' then
    if redis.call('ZCARD', key) ~= tonumber(value) then return {'changed', field} end
  end
end
for _, op in ipairs(ops) do
  local name, key, field, value = op[1], op[2], op[3], op[4]
  if name == 'hset' then redis.call('HSET', key, field, value)
  elseif name == 'hdel' then redis.call('HDEL', key, field)
  elseif name == 'zadd' then redis.call('ZADD', key, 0, field)
  elseif name == 'zrem' then redis.call('ZREM', key, field)
  elseif name == 'del' then redis.call('DEL', key)
  end
end
local version = 0
for _, c in ipairs(changes) do
  version = redis.call('INCR', KEYS[1])
  redis.call('ZADD', KEYS[2], version, version .. '\\31' .. c[1] .. '\\31' .. c[2] .. '\\31' .. c[3])
end
if #changes > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', version - tonumber(ARGV[1]))
  redis.call('PUBLISH', ARGV[2], version)
end
local seq = 0
if ARGV[3] ~= '' then
  seq = redis.call('INCR', KEYS[3])
  local entry = '{"seq":' .. seq .. ',' .. string.sub(ARGV[3], 2)
  redis.call('ZADD', KEYS[4], seq, entry)
  if ARGV[4] == '1' then redis.call('ZADD', KEYS[5], seq, entry) end
end
return {'ok', tostring(version), tostring(seq)}
"""

# KEYS: 1 keys hash, 2 last-used hash; ARGV: key id, time, key id, time, ...
_TOUCH = """
for i = 1, #ARGV, 2 do
  if redis.call('HEXISTS', KEYS[1], ARGV[i]) == 1 then
    local current = redis.call('HGET', KEYS[2], ARGV[i])
    if not current or tonumber(current) < tonumber(ARGV[i + 1]) then
      redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
    end
  end
end
return 0
"""


# KEYS: 1 version, 2 change log; ARGV: the version known. The current version and the changes after the
# known one, read together.
_CHANGES = """
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
return {current, redis.call('ZRANGEBYSCORE', KEYS[2], '(' .. ARGV[1], '+inf')}
"""


def _tenant_of(raw: str, _: str | None) -> Tenant:
    return _tenant(raw)


def _key_of(raw: str, last_used: str | None) -> ApiKey:
    key = _key(raw)
    return key if last_used is None else msgspec.structs.replace(key, last_used_at=float(last_used))


def _subscription_of(raw: str, _: str | None) -> Subscription:
    return _subscription(raw)


def _str(value: Any) -> str:
    """Replies are text (``decode_responses=True``); redis-py's types also allow bytes."""
    return value.decode() if isinstance(value, bytes) else str(value)


def _guarded(fn: Callable[P, Coroutine[Any, Any, R]]) -> Callable[P, Coroutine[Any, Any, R]]:
    """Connection failures surface as StoreUnavailable (the admin API answers 503), as do calls on a
    closed store (redis-py would silently reconnect)."""

    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        if args and getattr(args[0], "_closed", False):
            raise StoreUnavailable("the store is closed")
        try:
            return await fn(*args, **kwargs)
        except _DOWN as exc:
            raise StoreUnavailable(f"Redis store: {exc}") from exc

    return wrapper


class _Ops:
    """The checks and writes of one commit, in the order the script runs them."""

    def __init__(self) -> None:
        self.ops: list[tuple[str, str, str, str | bytes]] = []

    def absent(self, key: str, field: str) -> None:
        self.ops.append(("absent", key, field, ""))

    def present(self, key: str, field: str) -> None:
        self.ops.append(("present", key, field, ""))

    def equal(self, key: str, field: str, value: str) -> None:
        self.ops.append(("equal", key, field, value))

    def count(self, key: str, n: int) -> None:
        self.ops.append(("count", key, key, str(n)))

    def hset(self, key: str, field: str, value: bytes) -> None:
        self.ops.append(("hset", key, field, value))

    def hdel(self, key: str, field: str) -> None:
        self.ops.append(("hdel", key, field, ""))

    def zadd(self, key: str, member: str) -> None:
        self.ops.append(("zadd", key, member, ""))

    def zrem(self, key: str, member: str) -> None:
        self.ops.append(("zrem", key, member, ""))

    def delete(self, key: str) -> None:
        self.ops.append(("del", key, "", ""))


class _Lost(Exception):
    """A compare-and-set check failed because another writer got there first: recompute and retry."""


class RedisStore(Store):
    """The store on a Redis (or Valkey) server. Make it with ``await RedisStore.open(url)``."""

    def __init__(
        self,
        client: Client,
        *,
        prefix: str = "gw",
        poll_interval: float = 1.0,
        clock: Callable[[], float] = time.time,
        min_replicas_acked: int = 0,
        replica_ack_timeout: float = 1.0,
    ) -> None:
        if min_replicas_acked < 0 or not 0.0 < replica_ack_timeout < float("inf"):
            raise ValueError("min_replicas_acked must be >= 0, replica_ack_timeout a number of seconds > 0")
        self._r = client
        self._cluster = is_cluster(client)
        #: on a cluster, plain clients of the masters that took commits with WAIT (see key_pipeline)
        self._nodes: dict[str, Any] = {}
        self.min_replicas_acked = min_replicas_acked
        self._ack_timeout_ms = max(1, round(replica_ack_timeout * 1000))
        self._poll_interval = poll_interval
        self._clock = clock
        self._closed = False
        self.prefix = prefix
        tag = "{" + prefix + "}"
        self._tag = tag
        self._version = f"{tag}:version"
        self._changes = f"{tag}:changes"
        self._audit_seq = f"{tag}:audit:seq"
        self._audit = f"{tag}:audit"
        self._tenants = f"{tag}:tenants"
        self._tenant_ids = f"{tag}:tenants:ids"
        self._keys = f"{tag}:keys"
        self._key_ids = f"{tag}:keys:ids"
        self._used = f"{tag}:keys:last-used"
        self._subs = f"{tag}:subscriptions"
        self._sub_ids = f"{tag}:subscriptions:ids"
        self._prompts = f"{tag}:prompts"
        self.channel = f"{prefix}:changes"
        self._commit_script = client.register_script(_COMMIT)
        self._touch_script = client.register_script(_TOUCH)
        self._changes_script = client.register_script(_CHANGES)

    @classmethod
    async def open(
        cls,
        url: str,
        *,
        prefix: str = "gw",
        poll_interval: float = 1.0,
        clock: Callable[[], float] = time.time,
        min_replicas_acked: int | None = None,
        replica_ack_timeout: float = 1.0,
    ) -> RedisStore:
        """Connect to the Redis ``url`` names (``gateway.redisconn``: one server, or the master of a
        Sentinel group, or a Redis Cluster) and check it answers. ``min_replicas_acked`` None: 1 behind
        Sentinel (a replica is what a failover promotes), else 0."""
        target = parse_url(url)
        if min_replicas_acked is None:
            min_replicas_acked = 1 if target.kind == "sentinel" else 0
        client = open_client(target, decode_responses=True)
        try:
            await client.ping()
        except _DOWN as exc:
            await close_client(client)
            raise StoreUnavailable(f"Redis store at {redact(url)}: {exc}") from exc
        return cls(
            client,
            prefix=prefix,
            poll_interval=poll_interval,
            clock=clock,
            min_replicas_acked=min_replicas_acked,
            replica_ack_timeout=replica_ack_timeout,
        )

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await close_node_clients(self._nodes)
        await close_client(self._r)

    # -- key names

    def _keys_of(self, tenant: str) -> str:
        return f"{self._tag}:keys:tenant:{tenant}"

    def _subs_of(self, tenant: str) -> str:
        return f"{self._tag}:subscriptions:tenant:{tenant}"

    def _audit_of(self, tenant: str) -> str:
        return f"{self._tag}:audit:tenant:{tenant}"

    def _spend(self, scope: str, id: str) -> str:
        return f"{self.prefix}:spend:{scope}:{id}"

    # -- the commit

    async def _commit(
        self, ops: _Ops, changes: Sequence[tuple[ChangeKind, str, str]], draft: AuditDraft | None = None
    ) -> int:
        """Run one atomic write; returns the audit seq (0 without an entry).

        Raises Conflict when an ``absent`` check fails, NotFound when a ``present``/``equal`` record is
        gone, and ``_Lost`` when a record changed since it was read.
        """
        keys = [self._version, self._changes, self._audit_seq, self._audit, self._audit]
        if draft is not None and draft.tenant is not None:
            keys[4] = self._audit_of(draft.tenant)
        index: dict[str, int] = {}
        args: list[str | bytes | int] = [
            CHANGE_LOG_RETENTION,
            self.channel,
            _encode(draft) if draft is not None else "",
            "1" if draft is not None and draft.tenant is not None else "0",
            len(changes),
        ]
        for change in changes:
            args.extend(change)
        args.append(len(ops.ops))
        for name, key, field, value in ops.ops:
            if key not in index:
                keys.append(key)
                index[key] = len(keys)
            args.extend((name, index[key], field, value))
        result = [_str(x) for x in await self._run_commit(keys, args)]
        status = result[0]
        if status == "ok":
            return int(result[2])
        if status == "exists":
            raise Conflict(f"{result[1]} exists")
        if status == "missing":
            raise NotFound(f"{result[1]} does not exist")
        raise _Lost(result[1])

    async def _run_commit(self, keys: list[str], args: list[str | bytes | int]) -> Any:
        """The commit script's reply; with ``min_replicas_acked``, sent with ``WAIT`` on one connection
        (WAIT counts the replicas that have this connection's writes), StoreUnavailable when too few
        confirm in time."""
        wanted = self.min_replicas_acked
        if wanted == 0:
            return await self._commit_script(keys=keys, args=args)
        try:
            reply, acked = await self._commit_and_wait(keys, args, wanted)
        except redis.exceptions.ResponseError as exc:
            if not redirected(exc):
                raise
            # the slot moved (a cluster failover) since the cluster client last looked: a redirected call
            # ran nothing, so send it once more to the master the client finds now
            reply, acked = await self._commit_and_wait(keys, args, wanted)
        if int(acked) < wanted:
            log.warning(
                "store: a write was confirmed by %s of %s replica(s) within %s ms; answered as failed",
                acked, wanted, self._ack_timeout_ms,
            )
            raise StoreUnavailable(
                f"the write was applied on the Redis master but confirmed by {acked} of {wanted} replica(s)"
                f" within {self._ack_timeout_ms} ms: a failover could lose it ([store] min_replicas_acked)"
            )
        return reply

    async def _commit_and_wait(self, keys: list[str], args: list[str | bytes | int], wanted: int) -> Any:
        """The commit and ``WAIT`` in one pipeline on one connection to the records' master (on a cluster,
        the master of their slot: a routed read first lets the cluster client learn where that is)."""
        if self._cluster:
            await self._r.get(self._version)
        try:
            async with key_pipeline(self._r, keys[0], self._nodes) as pipe:
                await run_script(self._commit_script, keys, args, pipe)
                pipe.wait(wanted, self._ack_timeout_ms)
                return await pipe.execute()
        except _DOWN:
            await forget_node(self._nodes, keys[0], self._r)
            raise

    async def _retrying(self, attempt: Callable[[], Coroutine[Any, Any, R]]) -> R:
        """Run a read-compute-commit ``attempt`` until it does not lose a race."""
        for n in range(_CAS_ATTEMPTS):
            try:
                return await attempt()
            except _Lost:
                # jitter, so that writers that lost together do not collide again
                await asyncio.sleep(random.uniform(0, _CAS_BACKOFF) * min(n + 1, 8))
        raise Conflict("too many concurrent writes to the same record; try again")

    # -- listings

    async def _scan(
        self,
        index: str,
        records: str,
        after: str | None,
        limit: int,
        decode: Callable[[str, str | None], T],
        keep: Callable[[T], bool] | None = None,
        with_used: bool = False,
    ) -> Page[T]:
        """A page of the records named in the lex-ordered ``index`` after ``after`` and kept by ``keep``.

        ``decode`` gets each record's JSON and, ``with_used``, its last-used time.
        """
        found: list[tuple[str, T]] = []
        start = "(" + after if after is not None else "-"
        batch_size = limit + 1 if keep is None else max(limit + 1, _SCAN_BATCH)
        while True:
            ids = [_str(m) for m in await self._r.zrangebylex(index, start, "+", 0, batch_size)]
            if not ids:
                break
            async with self._r.pipeline(transaction=False) as pipe:
                pipe.hmget(records, ids)
                if with_used:
                    pipe.hmget(self._used, ids)
                replies = await pipe.execute()
            values: list[str | None] = replies[0]
            used: list[str | None] = replies[1] if with_used else [None] * len(ids)
            for id_, value, last_used in zip(ids, values, used, strict=True):
                if value is None:  # removed between the two reads
                    continue
                record = decode(value, last_used)
                if keep is None or keep(record):
                    found.append((id_, record))
                    if len(found) > limit:
                        return page_of(found, limit)
            if len(ids) < batch_size:
                break
            start = "(" + ids[-1]
        return page_of(found, limit)

    # -- tenants

    @_guarded
    async def create_tenant(
        self,
        tenant_id: str,
        *,
        name: str | None = None,
        allowed_models: Sequence[str] = ("*",),
        limit_policy: str | None = None,
        budget: str | None = None,
        labels: Mapping[str, str] | None = None,
        allowed_regions: Sequence[str] | None = None,
        required_tags: Sequence[str] = (),
        actor: str | None = None,
        reason: str | None = None,
    ) -> Tenant:
        now = self._clock()
        tenant = new_tenant(
            tenant_id, name, allowed_models, limit_policy, budget, labels, now, allowed_regions, required_tags
        )
        ops = _Ops()
        ops.absent(self._tenants, tenant_id)
        ops.hset(self._tenants, tenant_id, _encode(tenant))
        ops.zadd(self._tenant_ids, tenant_id)
        try:
            await self._commit(
                ops,
                [("tenant", tenant_id, tenant_id)],
                audit_draft(actor, "tenant.create", tenant_id, tenant_id, reason, now),
            )
        except Conflict:
            raise Conflict(f"tenant {tenant_id} exists") from None
        return tenant

    @_guarded
    async def get_tenant(self, tenant_id: str) -> Tenant:
        raw = await self._r.hget(self._tenants, tenant_id)
        if raw is None:
            raise NotFound(f"no tenant {tenant_id}")
        return _tenant(raw)

    @_guarded
    async def list_tenants(
        self, *, cursor: str | None = None, limit: int = DEFAULT_PAGE_SIZE
    ) -> Page[Tenant]:
        check_limit(limit)
        after = decode_cursor(cursor) if cursor is not None else None
        return await self._scan(self._tenant_ids, self._tenants, after, limit, _tenant_of)

    @_guarded
    async def update_tenant(
        self, tenant_id: str, update: TenantUpdate, *, actor: str | None = None, reason: str | None = None
    ) -> Tenant:
        now = self._clock()
        draft = audit_draft(
            actor, "tenant.update", tenant_id, tenant_id, reason, now, audit_details_for_update(update)
        )

        async def attempt() -> Tenant:
            raw = await self._r.hget(self._tenants, tenant_id)
            if raw is None:
                raise NotFound(f"no tenant {tenant_id}")
            tenant = updated_tenant(_tenant(raw), update, now)
            ops = _Ops()
            ops.equal(self._tenants, tenant_id, _str(raw))
            ops.hset(self._tenants, tenant_id, _encode(tenant))
            await self._commit(ops, [("tenant", tenant_id, tenant_id)], draft)
            return tenant

        try:
            return await self._retrying(attempt)
        except NotFound:
            raise NotFound(f"no tenant {tenant_id}") from None

    @_guarded
    async def delete_tenant(
        self, tenant_id: str, *, actor: str | None = None, reason: str | None = None
    ) -> None:
        now = self._clock()
        draft = audit_draft(actor, "tenant.delete", tenant_id, tenant_id, reason, now)
        keys_of, subs_of = self._keys_of(tenant_id), self._subs_of(tenant_id)

        async def attempt() -> None:
            # not atomic (a cluster runs no multi-key transaction): the commit checks what was read
            async with self._r.pipeline(transaction=False) as pipe:
                pipe.hget(self._tenants, tenant_id)
                pipe.zrange(keys_of, 0, -1)
                pipe.zrange(subs_of, 0, -1)
                raw, key_ids, sub_ids = await pipe.execute()
            if raw is None:
                raise NotFound(f"no tenant {tenant_id}")
            key_ids = [_str(k) for k in key_ids]
            sub_ids = [_str(s) for s in sub_ids]
            records = await self._r.hmget(self._keys, key_ids) if key_ids else []
            active = [k for k in records if k is not None and _key(k).state != "revoked"]
            if active:
                raise Conflict(f"tenant {tenant_id} has {len(active)} key(s) not revoked; revoke them first")
            ops = _Ops()
            ops.equal(self._tenants, tenant_id, _str(raw))
            ops.count(keys_of, len(key_ids))
            ops.count(subs_of, len(sub_ids))
            changes: list[tuple[ChangeKind, str, str]] = [("tenant", tenant_id, tenant_id)]
            for key_id in key_ids:
                ops.hdel(self._keys, key_id)
                ops.hdel(self._used, key_id)
                ops.zrem(self._key_ids, key_id)
                changes.append(("key", tenant_id, key_id))
            for sub_id in sub_ids:
                ops.hdel(self._subs, sub_id)
                ops.zrem(self._sub_ids, sub_id)
                changes.append(("subscription", tenant_id, sub_id.partition(SEP)[2]))
            ops.delete(keys_of)
            ops.delete(subs_of)
            ops.hdel(self._tenants, tenant_id)
            ops.zrem(self._tenant_ids, tenant_id)
            await self._commit(ops, changes, draft)

        try:
            await self._retrying(attempt)
        except NotFound:
            raise NotFound(f"no tenant {tenant_id}") from None

    # -- keys

    @_guarded
    async def create_key(
        self,
        *,
        key_id: str,
        tenant: str,
        name: str,
        digest: str,
        allowed_models: Sequence[str] = ("*",),
        allowed_endpoints: Sequence[str] = ("*",),
        expires_at: float | None = None,
        limit_policy: str | None = None,
        budget: str | None = None,
        labels: Mapping[str, str] | None = None,
        allowed_regions: Sequence[str] | None = None,
        required_tags: Sequence[str] = (),
        source: KeySource = "api",
        actor: str | None = None,
        reason: str | None = None,
    ) -> ApiKey:
        now = self._clock()
        key = new_key(
            key_id=key_id,
            tenant=tenant,
            name=name,
            digest=digest,
            allowed_models=allowed_models,
            allowed_endpoints=allowed_endpoints,
            expires_at=expires_at,
            limit_policy=limit_policy,
            budget=budget,
            labels=labels,
            allowed_regions=allowed_regions,
            required_tags=required_tags,
            source=source,
            now=now,
        )
        ops = _Ops()
        ops.present(self._tenants, tenant)
        ops.absent(self._keys, key_id)
        ops.hset(self._keys, key_id, _encode(key))
        ops.zadd(self._key_ids, key_id)
        ops.zadd(self._keys_of(tenant), key_id)
        try:
            await self._commit(
                ops,
                [("key", tenant, key_id)],
                audit_draft(
                    actor, "key.create", key_id, tenant, reason, now, {"name": name, "source": source}
                ),
            )
        except NotFound:
            raise NotFound(f"no tenant {tenant}") from None
        except Conflict:
            raise Conflict(f"key {key_id} exists") from None
        return key

    @_guarded
    async def get_key(self, key_id: str) -> ApiKey:
        async with self._r.pipeline(transaction=False) as pipe:
            pipe.hget(self._keys, key_id)
            pipe.hget(self._used, key_id)
            raw, used = await pipe.execute()
        if raw is None:
            raise NotFound(f"no key {key_id}")
        return _key_of(raw, used)

    @_guarded
    async def list_keys(
        self,
        *,
        tenant: str | None = None,
        state: KeyState | None = None,
        cursor: str | None = None,
        limit: int = DEFAULT_PAGE_SIZE,
    ) -> Page[ApiKey]:
        check_limit(limit)
        after = decode_cursor(cursor) if cursor is not None else None
        index = self._keys_of(tenant) if tenant is not None else self._key_ids
        keep = None if state is None else (lambda key: key.state == state)
        return await self._scan(index, self._keys, after, limit, _key_of, keep, with_used=True)

    async def _change_key(
        self,
        key_id: str,
        change: Callable[[ApiKey], ApiKey | None],
        draft: Callable[[ApiKey], AuditDraft | None],
    ) -> ApiKey:
        async def attempt() -> ApiKey:
            raw = await self._r.hget(self._keys, key_id)
            if raw is None:
                raise NotFound(f"no key {key_id}")
            key = _key(raw)
            new = change(key)
            if new is None:
                return key
            ops = _Ops()
            ops.equal(self._keys, key_id, _str(raw))
            ops.hset(self._keys, key_id, _encode(new))
            await self._commit(ops, [("key", key.tenant, key_id)], draft(key))
            return new

        try:
            key = await self._retrying(attempt)
        except NotFound:
            raise NotFound(f"no key {key_id}") from None
        used = await self._r.hget(self._used, key_id)
        return key if used is None else msgspec.structs.replace(key, last_used_at=float(used))

    @_guarded
    async def update_key(
        self, key_id: str, update: KeyUpdate, *, actor: str | None = None, reason: str | None = None
    ) -> ApiKey:
        now = self._clock()
        details = audit_details_for_update(update)
        return await self._change_key(
            key_id,
            lambda key: updated_key(key, update, now),
            lambda key: audit_draft(actor, "key.update", key_id, key.tenant, reason, now, details),
        )

    @_guarded
    async def revoke_key(self, key_id: str, *, actor: str | None = None, reason: str | None = None) -> ApiKey:
        now = self._clock()
        return await self._change_key(
            key_id,
            lambda key: revoked_key(key, now),
            lambda key: audit_draft(actor, "key.revoke", key_id, key.tenant, reason, now),
        )

    @_guarded
    async def rotate_key(
        self,
        key_id: str,
        new_digest: str,
        *,
        grace_seconds: float,
        actor: str | None = None,
        reason: str | None = None,
    ) -> ApiKey:
        now = self._clock()
        details = {"grace_seconds": repr(float(grace_seconds))}
        return await self._change_key(
            key_id,
            lambda key: rotated_key(key, new_digest, grace_seconds, now),
            lambda key: audit_draft(actor, "key.rotate", key_id, key.tenant, reason, now, details),
        )

    @_guarded
    async def touch_last_used(self, used: Mapping[str, float]) -> None:
        if not used:
            return
        args: list[str] = []
        for key_id, at in used.items():
            args.extend((key_id, repr(float(at))))
        await self._touch_script(keys=[self._keys, self._used], args=args)

    # -- subscriptions

    async def _step_subscription(
        self, tenant: str, model: str, action: str, actor: str, reason: str | None
    ) -> Subscription:
        now = self._clock()
        sub_id = tenant + SEP + model

        async def attempt() -> Subscription:
            async with self._r.pipeline(transaction=False) as pipe:
                pipe.hexists(self._tenants, tenant)
                pipe.hget(self._subs, sub_id)
                tenant_exists, raw = await pipe.execute()
            if not tenant_exists:
                raise NotFound(f"no tenant {tenant}")
            current = None if raw is None else _subscription(raw)
            new = subscription_step(current, tenant, model, action, actor, reason, now)
            ops = _Ops()
            ops.present(self._tenants, tenant)
            if raw is None:
                ops.absent(self._subs, sub_id)
            else:
                ops.equal(self._subs, sub_id, raw)
            ops.hset(self._subs, sub_id, _encode(new))
            ops.zadd(self._sub_ids, sub_id)
            ops.zadd(self._subs_of(tenant), sub_id)
            details = {"from": current.state if current is not None else "none", "to": new.state}
            draft = audit_draft(
                actor,
                f"subscription.{action}",
                subscription_target(tenant, model),
                tenant,
                reason,
                now,
                details,
            )
            try:
                await self._commit(ops, [("subscription", tenant, model)], draft)
            except Conflict:  # created meanwhile: recompute from it
                raise _Lost(sub_id) from None
            except NotFound:
                if raw is None:
                    raise NotFound(f"no tenant {tenant}") from None
                raise _Lost(sub_id) from None  # the tenant is still there: the subscription was removed
            return new

        return await self._retrying(attempt)

    @_guarded
    async def request_subscription(
        self, tenant: str, model: str, *, actor: str, reason: str | None = None
    ) -> Subscription:
        return await self._step_subscription(tenant, model, "request", actor, reason)

    @_guarded
    async def decide_subscription(
        self, tenant: str, model: str, decision: Decision, *, actor: str, reason: str | None = None
    ) -> Subscription:
        return await self._step_subscription(tenant, model, subscription_action(decision), actor, reason)

    @_guarded
    async def get_subscription(self, tenant: str, model: str) -> Subscription:
        raw = await self._r.hget(self._subs, tenant + SEP + model)
        if raw is None:
            raise NotFound(f"no subscription {subscription_target(tenant, model)}")
        return _subscription(raw)

    @_guarded
    async def list_subscriptions(
        self,
        *,
        tenant: str | None = None,
        model: str | None = None,
        state: SubscriptionState | None = None,
        cursor: str | None = None,
        limit: int = DEFAULT_PAGE_SIZE,
    ) -> Page[Subscription]:
        check_limit(limit)
        after = decode_cursor(cursor) if cursor is not None else None
        index = self._subs_of(tenant) if tenant is not None else self._sub_ids

        def keep(sub: Subscription) -> bool:
            return (model is None or sub.model == model) and (state is None or sub.state == state)

        filtered = model is not None or state is not None
        return await self._scan(index, self._subs, after, limit, _subscription_of, keep if filtered else None)

    # -- prompts

    @_guarded
    async def put_prompt(
        self, name: str, spec: Mapping[str, Any], *, actor: str | None = None, reason: str | None = None
    ) -> StoredPrompt:
        now = self._clock()

        async def attempt() -> StoredPrompt:
            raw = await self._r.hget(self._prompts, name)
            revision = 1 if raw is None else _prompt(raw).revision + 1
            new = StoredPrompt(name=name, spec=dict(spec), revision=revision, updated_at=now,
                               updated_by=actor or "")
            ops = _Ops()
            if raw is None:
                ops.absent(self._prompts, name)
            else:
                ops.equal(self._prompts, name, _str(raw))
            ops.hset(self._prompts, name, _encode(new))
            draft = audit_draft(actor, "prompt.publish", f"prompt:{name}", None, reason, now,
                                {"revision": str(revision)})
            try:
                await self._commit(ops, [("prompt", "", name)], draft)
            except (Conflict, NotFound):  # written or removed meanwhile: recompute
                raise _Lost(name) from None
            return new

        return await self._retrying(attempt)

    @_guarded
    async def delete_prompt(self, name: str, *, actor: str | None = None, reason: str | None = None) -> None:
        now = self._clock()
        ops = _Ops()
        ops.present(self._prompts, name)
        ops.hdel(self._prompts, name)
        try:
            await self._commit(ops, [("prompt", "", name)],
                               audit_draft(actor, "prompt.delete", f"prompt:{name}", None, reason, now))
        except NotFound:
            raise NotFound(f"no prompt {name}") from None

    @_guarded
    async def list_prompts(self) -> list[StoredPrompt]:
        found = await self._r.hgetall(self._prompts)
        return sorted((_prompt(raw) for raw in found.values()), key=lambda p: p.name)

    # -- audit

    @_guarded
    async def append_audit(
        self,
        *,
        actor: str,
        action: str,
        target: str,
        tenant: str | None = None,
        reason: str | None = None,
        details: Mapping[str, str] | None = None,
    ) -> AuditEntry:
        draft = AuditDraft(
            at=self._clock(),
            actor=actor,
            action=action,
            target=target,
            tenant=tenant,
            reason=reason,
            details=dict(details or {}),
        )
        seq = await self._commit(_Ops(), [], draft)
        return draft.numbered(seq)

    @_guarded
    async def list_audit(
        self,
        *,
        tenant: str | None = None,
        target: str | None = None,
        action: str | None = None,
        newest_first: bool = False,
        cursor: str | None = None,
        limit: int = DEFAULT_PAGE_SIZE,
    ) -> Page[AuditEntry]:
        check_limit(limit)
        after = decode_seq_cursor(cursor) if cursor is not None else None
        index = self._audit_of(tenant) if tenant is not None else self._audit
        filtered = target is not None or action is not None
        batch_size = max(limit + 1, _SCAN_BATCH) if filtered else limit + 1
        found: list[tuple[str, AuditEntry]] = []
        while True:
            if newest_first:
                bound = f"({after}" if after is not None else "+inf"
                members = await self._r.zrevrangebyscore(index, bound, "-inf", 0, batch_size)
            else:
                bound = f"({after}" if after is not None else "-inf"
                members = await self._r.zrangebyscore(index, bound, "+inf", 0, batch_size)
            for member in members:
                entry = _audit(_str(member))
                after = entry.seq
                if (target is None or entry.target == target) and (action is None or entry.action == action):
                    found.append((str(entry.seq), entry))
                    if len(found) > limit:
                        return page_of(found, limit)
            if len(members) < batch_size:
                return page_of(found, limit)

    # -- spend

    @_guarded
    async def add_spend(self, scope: SpendScope, id: str, day: str, usd: float) -> float:
        check_spend_args(scope, id, day, usd)
        return float(await self._r.hincrbyfloat(self._spend(scope, id), day, float(usd)))

    @_guarded
    async def add_spend_many(self, entries: Iterable[tuple[SpendScope, str, str, float]]) -> None:
        rows = list(entries)
        for scope, id_, day, usd in rows:
            check_spend_args(scope, id_, day, usd)
        if not rows:
            return
        async with self._r.pipeline(transaction=False) as pipe:
            for scope, id_, day, usd in rows:
                pipe.hincrbyfloat(self._spend(scope, id_), day, float(usd))
            await pipe.execute()

    @_guarded
    async def get_spend(self, scope: SpendScope, id: str, day: str) -> float:
        check_spend_args(scope, id, day)
        value = await self._r.hget(self._spend(scope, id), day)
        return float(value) if value is not None else 0.0

    @_guarded
    async def spend_by_day(
        self, scope: SpendScope, id: str, first_day: str, last_day: str
    ) -> dict[str, float]:
        check_spend_args(scope, id, first_day)
        check_spend_args(scope, id, last_day)
        days = await self._r.hgetall(self._spend(scope, id))
        return {
            _str(day): float(usd) for day, usd in sorted(days.items()) if first_day <= _str(day) <= last_day
        }

    # -- usage roll-ups

    def _usage(self, granularity: str, start: int) -> str:
        return f"{self._tag}:usage:{granularity}:{start}"

    @_guarded
    async def add_usage(self, cells: Iterable[tuple[str, int, str, str, int]],
                        ttl: Mapping[str, int] | None = None) -> None:
        rows = list(cells)
        if not rows:
            return
        keys: set[tuple[str, int]] = set()
        first = self._usage(rows[0][0], rows[0][1])
        if self._cluster:  # a routed read first: the cluster client learns where the slot is
            await self._r.get(first)
        # one MULTI/EXEC on one connection (the hash tag puts every usage hash in one slot): a batch is
        # applied whole or not at all, so a retried batch is never counted twice
        try:
            async with key_pipeline(self._r, first, self._nodes) as pipe:
                pipe.multi()
                for gran, start, dims, field, n in rows:
                    pipe.hincrby(self._usage(gran, start), f"{dims}{SEP}{field}", int(n))
                    keys.add((gran, start))
                for gran, start in keys:
                    seconds = (ttl or {}).get(gran)
                    if seconds:
                        pipe.expire(self._usage(gran, start), seconds)
                await pipe.execute()
        except _DOWN:
            await forget_node(self._nodes, first, self._r)
            raise

    @_guarded
    async def usage_cells(self, granularity: str, first: int, last: int
                          ) -> list[tuple[int, str, str, int]]:
        from gateway.observe.usage import GRANULARITIES

        step = GRANULARITIES[granularity]
        starts = list(range(first - first % step, last + 1, step))
        out: list[tuple[int, str, str, int]] = []
        for i in range(0, len(starts), 500):
            part = starts[i:i + 500]
            async with self._r.pipeline(transaction=False) as pipe:
                for start in part:
                    pipe.hgetall(self._usage(granularity, start))
                found = await pipe.execute()
            for start, fields in zip(part, found, strict=True):
                for name, n in fields.items():
                    dims, _, field = _str(name).rpartition(SEP)
                    out.append((start, dims, field, int(n)))
        return out

    # -- changes

    @_guarded
    async def change_version(self) -> int:
        value = await self._r.get(self._version)
        return int(value) if value is not None else 0

    @_guarded
    async def changes_since(self, version: int) -> list[Change] | None:
        current_raw, members = await self._changes_script(keys=[self._version, self._changes], args=[version])
        current = int(current_raw)
        if version >= current:
            return [] if version == current else None
        changes = []
        for member in members:
            v, kind, tenant, id_ = _str(member).split(SEP, 3)
            changes.append(Change(version=int(v), kind=kind, tenant=tenant, id=id_))  # type: ignore[arg-type]
        if not changes or changes[0].version != version + 1:
            return None
        return changes

    async def watch(self, *, since: int | None = None, interval: float | None = None) -> AsyncIterator[int]:
        pause = self._poll_interval if interval is None else interval
        last = since
        pubsub: PubSub | None = None
        try:
            while not self._closed:
                # a cancel that redis-py lost on the way (see ``cancel_and_wait``) ends the watch here
                raise_lost_cancel()
                try:
                    if pubsub is None:
                        # subscribe before reading the version, so that no publication falls in between
                        pubsub = open_pubsub(self._r)
                        await within(pubsub.subscribe(self.channel), _WATCH_STALL + pause)
                    version = await self.change_version()
                    if last is None:
                        last = version
                    if version != last:
                        last = version
                        yield version
                        continue
                    # NOTE: a read of the subscription never blocks the watch for longer than its poll
                    # (plus a margin): a connection that stalls without an error is dropped and made again,
                    # so the version is re-read at least every ``pause`` whatever the subscription does
                    message = await within(
                        pubsub.get_message(ignore_subscribe_messages=True, timeout=pause),
                        _WATCH_STALL + pause,
                    )
                    while message is not None:  # drain: one re-read covers every queued publication
                        message = await within(
                            pubsub.get_message(ignore_subscribe_messages=True, timeout=0), _WATCH_STALL
                        )
                except _WATCH_DOWN:
                    if self._closed:
                        return
                    if pubsub is not None:
                        await _close_quietly(pubsub)
                        pubsub = None
                    await asyncio.sleep(pause)
        finally:
            if pubsub is not None:
                await _close_quietly(pubsub)


async def _close_quietly(pubsub: PubSub) -> None:
    try:
        await close_pubsub(pubsub)
    except _DOWN:
        pass

