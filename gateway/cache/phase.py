"""The ``cache`` phase: exact-match answers from the worker's memory tier or the shared Redis tier.

Per request (a generation request of a client dialect that has a codec, ``CODECS``: OpenAI chat,
Anthropic Messages, OpenAI Responses; to a model whose policy caches it)::

    on_request   Cache-Control read; the key computed (gateway.cache.keys); when the client allows a
                 lookup: memory tier -> hit (answered here) | Redis tier (awaited) -> hit | semantic
                 tier, when the policy has one (gateway.cache.semantic: an embeddings call, awaited, and
                 the nearest stored prompt) -> hit | miss.
                 x-gateway-cache: hit | miss | bypass goes on the answer; a hit also gets ``age``.
    on_response  a complete answer about to be sent: kept (a reference) if it may be stored
    on_stream    a stream about to be sent: an assembler watches the client-bound bytes
    on_settle    after the response is sent: a complete 200 with no error is stored, as its IR
                 (``CacheEntry``), in memory now and in Redis in the background; a semantic lookup's
                 vector goes into the index (and, with Redis, onto the sync stream after the entry)

    outcome | when                                                              | counted as
    --------+-------------------------------------------------------------------+------------------------
    hit     | a live entry in memory or Redis, or a neighbour's (semantic)      | hits (by tier)
    miss    | looked up, not there (the answer is stored after it is sent)      | misses
    bypass  | not looked up: Cache-Control no-cache (the answer then refreshes  | bypasses (by reason)
            | the entry), when = "deterministic" and a request that is not, or  |
            | the Redis tier failing (the answer is then not written there)     |

A hit never reaches routing or the provider. It counts against request limits (the admit phase ran
before), and, unless ``hits_count_tokens``, not against tokens or spend: ``ctx.usage`` stays empty, so
the limits phase refunds the token reservation. Its call record says ``cache: "hit"`` and the cost the
original call had (``cost_saved_usd``).
"""

from __future__ import annotations

import asyncio
import logging
import struct
import time
from collections.abc import Awaitable
from functools import partial
from typing import TYPE_CHECKING, Any, ClassVar

import msgspec

from gateway import ir
from gateway._core.cache import LRUCache
from gateway._core.canon import KeyHash
from gateway.auth.applied import node_directory
from gateway.cache.admin import PURGE_POLL, PurgeOrder, PurgeWatch, decode_order
from gateway.cache.anthropic_messages import AnthropicMessagesCodec
from gateway.cache.codec import Assembler, Codec
from gateway.cache.config import CacheConfig, CachePolicy
from gateway.cache.keys import CHAT_FORM, KeyParts, is_deterministic, key_head, namespace
from gateway.cache.keys import _encode as _encode_form
from gateway.cache.openai_chat import OpenAIChatCodec
from gateway.cache.openai_responses import OpenAIResponsesCodec
from gateway.cache.redis_tier import Announce, RedisTier, TierDown, redis_key, redis_key_head
from gateway.phases import Phase, Reply, StreamObserver
from gateway.wire import Usage

if TYPE_CHECKING:
    from gateway.cache.semantic import SemanticTier
    from gateway.config import Config
    from gateway.context import Context

__all__ = ["CacheEntry", "CachePhase", "CacheService", "CacheState", "CacheStats", "answer_changed"]

log = logging.getLogger("gateway.cache")

_CHAT: Codec = OpenAIChatCodec()
#: the client dialect's codec (gateway.cache.codec), by the engine's endpoint name of its generation
#: requests; a request to another endpoint is not cached
CODECS: dict[str, Codec] = {
    "chat": _CHAT,
    "messages": AnthropicMessagesCodec(),
    "responses": OpenAIResponsesCodec(),
}
#: a byte per codec that begins a render memo's key (a rendered answer is one dialect's)
_RENDER_TAGS: dict[str, bytes] = {name: b"%d" % i for i, name in enumerate(CODECS)}
_JSON = ("content-type", "application/json")
_SSE = [("content-type", "text/event-stream"), ("cache-control", "no-cache")]
_MISS = ("x-gateway-cache", "miss")
_NO_DIRECTIVES = (False, False)
#: (no_cache, no_store) of the Cache-Control values clients send most, as sent (# PERF: one dict lookup;
#: any other value is parsed, ``_cache_control``)
_DIRECTIVES: dict[bytes, tuple[bool, bool]] = {}
#: the form asked for: whole, stream, (whole), stream with usage
_VARIANTS = (b"\x01", b"\x02", b"\x01", b"\x03")
#: an alias's value: the entry's key (32 bytes), then when the entry was put in memory (monotonic: the
#: alias is valid while it matches), when it was stored (wall clock: ``age``) and the cost it saves
#: (NaN: unpriced), then the rendered answer
_ALIASED = struct.Struct("<ddd")
_ALIAS_BODY = 32 + _ALIASED.size
#: what joins an alias's head and body, by the policy's ``when`` and the form asked for (an entry's key
#: is 32 bytes of hash; an alias starts with the key's head: the two never meet)
_ALIAS = {when: tuple(b"\0alias:%s:%s\0" % (when.encode(), v) for v in _VARIANTS)
          for when in ("always", "deterministic")}
#: seconds of purge orders a starting worker applies (``_stream_start``)
STREAM_LOOKBACK = 60.0
#: the render memo's byte bound (a worker with a Redis tier): the rendered answers of recent Redis hits
RENDER_MEMO_BYTES = 8 * 1024 * 1024
_NAN = float("nan")
#: what a lookup of one caller (tenant, key) and model needs, made once (``CachePhase._slot``): the
#: model's policy (None: not cached); the key's hash with its head already read (gateway._core.canon:
#: OpenAI chat's canonical form and BLAKE2b in one compiled call); the alias prefixes of the four forms
#: asked for (the head and the policy's ``when``; None: no aliases); whether ``when`` is
#: "deterministic"; whether a memory miss goes on to the Redis or the semantic tier
_Slot = tuple[CachePolicy | None, KeyHash, tuple[bytes, ...] | None, bool, bool]
_NOT_CACHED: _Slot = (None, KeyHash(b"", CHAT_FORM), None, False, False)
_monotonic = time.monotonic
_BYPASS = ("x-gateway-cache", "bypass")
_JSON_HIT = (_JSON, ("x-gateway-cache", "hit"))
_SSE_HIT = (*_SSE, ("x-gateway-cache", "hit"))


class CacheEntry(msgspec.Struct, array_like=True, frozen=True):
    """What is stored: the answer dialect-neutral, and what a hit needs besides."""

    response: ir.Response
    #: the answer's ``created`` (seconds), and when it was stored (wall clock: ``age`` on every node)
    created: int
    stored: float
    #: USD the original call cost (None: unpriced)
    cost: float | None
    tenant: str | None
    key_id: str | None
    model: str


_pack = msgspec.msgpack.Encoder().encode
_unpack = msgspec.msgpack.Decoder(CacheEntry).decode


class CacheStats:
    __slots__ = ("bypass_nocache", "bypass_policy", "bypass_redis", "hits_memory", "hits_redis",
                 "hits_semantic", "misses", "redis_errors", "stores", "too_large", "unstorable")

    def __init__(self) -> None:
        self.hits_memory = 0
        self.hits_redis = 0
        #: answered by a neighbour (gateway.cache.semantic)
        self.hits_semantic = 0
        self.misses = 0
        self.bypass_nocache = 0
        self.bypass_policy = 0
        self.bypass_redis = 0
        self.stores = 0
        self.too_large = 0
        self.unstorable = 0
        self.redis_errors = 0


class CacheState(msgspec.Struct):
    """``ctx.cache``: what the phase decided for one request (# PERF: a Struct: made in C, with its
    defaults, on every lookup)."""

    key: bytes
    policy: CachePolicy
    #: the answer may be stored (not no-store)
    store: bool
    tenant: str | None
    key_id: str | None
    model: str
    #: the client dialect's codec
    codec: Codec = _CHAT
    outcome: str = "miss"
    #: the whole answer sent (on_response) or the stream's assembler (on_stream)
    body: bytes | None = None
    assembler: Assembler | None = None
    #: a hit: the cost of the call it replays
    saved: float | None = None
    #: the Redis tier failed this request's lookup: the answer is not written there
    redis_down: bool = False
    #: the semantic tier's vector of this request, kept with its answer (gateway.cache.semantic.Pending)
    semantic: Any = None
    #: a semantic hit: the neighbour's cosine similarity
    similarity: float | None = None


def answer_changed(ctx: Context) -> None:
    """Keep this request's answer out of the cache: a phase that changes an answer on its way out (an
    output guardrail) calls it. The cache sees the answer before the phases earlier in the chain do (the
    way out runs in reverse order), so it cannot tell by itself."""
    state: CacheState | None = ctx.cache
    if state is not None:
        state.store = False


class _Watch(StreamObserver):
    __slots__ = ("assembler",)

    def __init__(self, assembler: Assembler) -> None:
        self.assembler = assembler

    def feed(self, data: bytes) -> bytes:
        self.assembler.feed(data)
        return data


def _dialect_headers(ctx: Context, headers: list[tuple[str, str]]) -> None:
    """A hit's headers as its dialect's clients read them: the request id under the dialect's own name
    too (Anthropic's ``request-id``), as the dialect's local answers have it."""
    name = ctx.dialect.request_id_header
    if name != "x-request-id":
        headers.append((name, ctx.request_id))


def _cache_control(value: bytes) -> tuple[bool, bool]:
    """(no_cache, no_store) from the request's Cache-Control header."""
    no_cache = no_store = False
    for part in value.lower().split(b","):
        d = part.strip()
        if d == b"no-cache" or d == b"max-age=0":
            no_cache = True
        elif d == b"no-store":
            no_store = True
    return no_cache, no_store


_DIRECTIVES.update((v, _cache_control(v)) for v in (
    b"no-cache", b"no-store", b"max-age=0", b"no-cache, no-store", b"no-store, no-cache",
    b"no-cache,no-store", b"no-store,no-cache"))


def _stream_start() -> bytes:
    """Where a worker starts reading the purge stream: the orders of the last ``STREAM_LOOKBACK`` seconds
    (by this host's clock; stream ids are the Redis server's milliseconds). Its memory is empty: an older
    order is moot, and one applied again only costs a miss; the lookback covers a clock running ahead of
    the server's and a first connection that takes its time."""
    return b"%d-0" % max(int((time.time() - STREAM_LOOKBACK) * 1000), 0)


class CacheService:
    """One worker's cache: its memory tier, its Redis tier, its counters. Lives across reloads."""

    def __init__(self, config: Config, engine: Any = None) -> None:
        c = config.cache
        #: the engine the semantic tier's embeddings calls go through
        self.engine = engine
        #: the semantic tier, when a policy has one (and the engine is known)
        self.semantic: SemanticTier | None = None
        self.stats = CacheStats()
        self.memory = LRUCache(c.memory_bytes) if c.memory_bytes else None
        #: the rendered answers of recent Redis hits (RedisCachePhase._redis_lookup)
        self.renders = LRUCache(RENDER_MEMO_BYTES)
        self.redis: RedisTier | None = None
        self._redis_url: str | None = None
        self.config = c
        self._set_redis(config)
        self._set_semantic()
        self.phase = self._phase()
        self._watch: asyncio.Task[None] | None = None
        node_dir = node_directory()
        watch = PurgeWatch(node_dir) if node_dir is not None else None
        if watch is not None or self.redis is not None:
            self._watch = asyncio.get_running_loop().create_task(self._apply_purges(watch))

    async def _apply_purges(self, watch: PurgeWatch | None) -> None:
        """Apply the admin API's purge orders to this worker's memory tier (gateway.cache.admin): this
        node's from its purge log, every node's from the Redis tier's purge stream."""
        last = _stream_start()  # the newest stream id read
        tier = self.redis
        while True:
            await asyncio.sleep(PURGE_POLL)
            orders: list[PurgeOrder] = []
            if watch is not None:
                try:
                    orders = watch.poll()
                except OSError as exc:
                    log.warning("cache: cannot read the purge orders (%s)", exc)
            redis = self.redis
            if redis is not None:
                if redis is not tier:  # another server (a reload)
                    tier, last = redis, _stream_start()
                try:
                    last, texts = await redis.purges_after(last)
                    orders.extend(o for o in map(decode_order, texts) if o is not None)
                except TierDown:
                    pass  # read what was missed once it answers again
            self._purge(orders)

    def _purge(self, orders: list[PurgeOrder]) -> None:
        memory = self.memory
        for order in orders:
            self.renders.purge(order.matches)
            dropped = memory.purge(order.matches) if memory is not None else 0
            if self.semantic is not None:
                self.semantic.purge(order.matches)
            log.info("cache: purge %s dropped %d memory entries", order, dropped)

    def _set_redis(self, config: Config) -> None:
        c = config.cache
        url = (c.redis_url or config.store.url) if c.redis else None
        prefix = c.prefix or config.store.prefix
        if url == self._redis_url and (self.redis is None or self.redis.prefix == prefix):
            if self.redis is not None:
                self.redis.timeout = c.redis_timeout
                self.redis.compress_above = c.compress_above
            return
        old = self.redis
        self.redis = RedisTier(url, prefix, c.redis_timeout, c.compress_above) if url else None
        self._redis_url = url
        if old is not None:
            asyncio.get_running_loop().create_task(old.close())

    def _set_semantic(self) -> None:
        """The semantic tier, made when a policy first has one (it imports numpy); kept across reloads
        (its index stays: rows of a model no longer semantic are never searched and age out)."""
        if self.semantic is None and self.engine is not None and self.config.semantic_policies():
            from gateway.cache.semantic import SemanticTier

            self.semantic = SemanticTier(self.config, self.engine)
        if self.semantic is not None:
            self.semantic.reload(self.config, self.redis)

    def _phase(self) -> CachePhase:
        waits = self.redis is not None or self.semantic is not None
        cls = RedisCachePhase if waits else CachePhase
        return cls(self)

    def reload(self, config: Config) -> None:
        c = config.cache
        self.config = c
        if c.memory_bytes == 0:
            self.memory = None
        elif self.memory is None:
            self.memory = LRUCache(c.memory_bytes)
        elif self.memory.max_bytes != c.memory_bytes:
            self.memory.resize(c.memory_bytes, 0, time.monotonic())
        self._set_redis(config)
        self._set_semantic()
        self.phase = self._phase()

    async def close(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
        if self.semantic is not None:
            self.semantic.close()
        if self.redis is not None:
            await self.redis.close()


class CachePhase(Phase):
    """The cache phase of a worker whose cache has no Redis tier: never waits."""

    name: ClassVar[str] = "cache"

    def __init__(self, service: CacheService) -> None:
        self.service = service
        self.stats = service.stats
        self.memory = service.memory
        self.renders = service.renders
        self.redis = service.redis
        self.semantic = service.semantic
        c = service.config
        self.count_tokens = c.hits_count_tokens
        # PERF: the policy of every configured model resolved once (None: not cached)
        self.policies: dict[str, CachePolicy | None] = {}
        self.config: CacheConfig = c
        #: (tenant, key id, model) -> what a lookup of that caller and model needs (``_Slot``), for OpenAI
        #: chat; the other dialects' in ``dialect_heads``, by endpoint
        self.heads: dict[tuple[str | None, str | None, str], _Slot] = {}
        self.dialect_heads: dict[str, dict[tuple[str | None, str | None, str], _Slot]] = {
            endpoint: {} for endpoint in CODECS if endpoint != "chat"}
        #: (tenant, key id, model) -> its entries' Redis key up to the hash (redis_tier.redis_key_head)
        self.rheads: dict[tuple[str | None, str | None, str], str] = {}

    def _policy(self, model: str) -> CachePolicy | None:
        try:
            return self.policies[model]
        except KeyError:
            if len(self.policies) > 4096:
                self.policies.clear()
            p = self.policies[model] = self.config.policy(model)
            return p

    def _slot(self, heads: dict[Any, _Slot], tenant: str | None, key_id: str | None, codec: Codec,
              endpoint: str, model: str) -> _Slot:
        """What a lookup of this caller, dialect and model needs (``_Slot``), made on its first request
        (# PERF: once, not per request; the phase is rebuilt on reload, and with it every slot)."""
        if len(heads) > 65536:
            heads.clear()
        policy = self._policy(model)
        if policy is None:
            slot: _Slot = _NOT_CACHED
        else:
            space = namespace(policy.scope, tenant, key_id)
            head = key_head(KeyParts(space, codec.name, endpoint, model))
            aliases = None
            if self.memory is not None and not self.count_tokens and codec.renders:
                aliases = tuple(head + tag for tag in _ALIAS[policy.when])
            more = self.redis is not None or (
                policy.semantic is not None and self.semantic is not None and codec.semantic)
            slot = (policy, KeyHash(head, CHAT_FORM), aliases, policy.when == "deterministic", more)
        heads[(tenant, key_id, model)] = slot
        return slot

    def on_request(self, ctx: Context) -> Reply | Awaitable[Reply | None] | None:
        return _lookup(self, ctx)

    def _redis_lookup(
        self, ctx: Context, state: CacheState, form: dict[str, Any] | None
    ) -> Awaitable[Reply | None]:
        """The memory tier missed: one GET. # PERF: on an open connection a future, answered from the
        reply's callback (``_redis_got``), which the engine goes on from on its callback path: no task,
        no coroutine; a coroutine (``_redis_wait``) when the connection must be opened first or the
        semantic tier may be asked after a miss."""
        redis = self.redis
        assert redis is not None
        where = self._redis_where(redis, state)
        if state.policy.semantic is None or self.semantic is None or not state.codec.semantic:
            conn = redis.connection
            if conn is not None:
                out: asyncio.Future[Reply | None] = conn.loop.create_future()
                if redis.get_cb(where, partial(self._redis_got, redis, ctx, state, out)):
                    return out
        return self._redis_wait(redis, where, ctx, state, form)

    def _redis_where(self, redis: RedisTier, state: CacheState) -> str:
        tag = (state.tenant, state.key_id, state.model)
        head = self.rheads.get(tag)
        if head is None:
            if len(self.rheads) > 65536:
                self.rheads.clear()
            head = self.rheads[tag] = redis_key_head(redis.prefix, *tag)
        return head + state.key.hex()

    def _redis_got(self, redis: RedisTier, ctx: Context, state: CacheState, out: asyncio.Future[Reply | None],
                   value: object, exc: BaseException | None) -> None:
        """The GET of ``_redis_lookup`` answered (or failed), called from the connection's
        ``data_received``: ``out`` gets the hit's answer or None."""
        if out.done():  # (cancelled: nobody waits for it)
            return
        try:
            try:
                raw = redis.entry_from(value, exc)
            except TierDown:
                self._redis_bypass(ctx, state)
                out.set_result(None)
                return
            reply = self._redis_answer(ctx, state, raw)
            if reply is None:
                self._redis_miss(ctx)
            out.set_result(reply)
        except Exception as exc:
            out.set_exception(exc)

    def _redis_bypass(self, ctx: Context, state: CacheState) -> None:
        self.stats.bypass_redis += 1
        state.outcome = "bypass"
        state.redis_down = True
        ctx.response_headers.append(_BYPASS)

    async def _redis_wait(
        self, redis: RedisTier, where: str, ctx: Context, state: CacheState, form: dict[str, Any] | None
    ) -> Reply | None:
        try:
            raw = await redis.get(where)
        except TierDown:
            self._redis_bypass(ctx, state)
            return None
        reply = self._redis_answer(ctx, state, raw)
        if reply is not None:
            return reply
        if state.policy.semantic is not None and self.semantic is not None and state.codec.semantic:
            return await self._semantic_lookup(ctx, state, form)
        self._redis_miss(ctx)
        return None

    def _redis_miss(self, ctx: Context) -> None:
        self.stats.misses += 1
        ctx.response_headers.append(_MISS)

    def _redis_answer(self, ctx: Context, state: CacheState, raw: bytes | None) -> Reply | None:
        """A hit's answer from the entry GET returned (``raw``), or None (a miss: the caller counts it, or
        asks the semantic tier first).

        # PERF: a Redis hit is one GET, then the answer rendered in the form asked for from the render
        memo (keyed by the form and the very value GET returned: it never answers what Redis does not
        hold now)."""
        if raw is not None:
            renders = self.renders
            memo = None
            if not self.count_tokens and state.codec.renders:
                memo = _RENDER_TAGS[ctx.endpoint] + _VARIANTS[ctx.stream + 2 * ctx.include_usage] + raw
                rendered = renders.get(memo, _monotonic())
                if rendered is not None:
                    self.stats.hits_redis += 1
                    value = rendered[0]
                    if self.memory is not None:
                        self._promote(state, raw, _ALIASED.unpack_from(value, 32)[1])
                    return self._rendered_hit(ctx, state, value)
            try:
                entry = _unpack(raw)
            except (msgspec.DecodeError, msgspec.ValidationError):
                entry = None
            if entry is not None:
                self.stats.hits_redis += 1
                if self.memory is not None:
                    self._promote(state, raw, entry.stored)
                reply = self._hit(ctx, state, entry)
                left = state.policy.ttl - (time.time() - entry.stored)
                if memo is not None and left > 0:
                    cost = _NAN if entry.cost is None else entry.cost
                    value = state.key + _ALIASED.pack(0.0, entry.stored, cost) + reply.body
                    renders.put(memo, value, _monotonic(), left, (state.tenant, state.key_id, state.model))
                return reply
        return None

    async def _semantic_lookup(
        self, ctx: Context, state: CacheState, form: dict[str, Any] | None
    ) -> Reply | None:
        """The exact tiers missed: a neighbour's answer (gateway.cache.semantic), else a miss."""
        tier = self.semantic
        policy = state.policy
        assert tier is not None and policy.semantic is not None
        space = namespace(policy.scope, state.tenant, state.key_id)
        codec = state.codec
        if form is None:
            form = codec.form(ctx)
        pending, found = await tier.nearest(ctx, space, state.model, policy.semantic, form, codec.name,
                                            codec.headers(ctx))
        if pending is not None and state.store:
            state.semantic = pending
        if found is not None:
            key, tag, similarity = found
            entry = await self._entry(key, tag)
            if entry is not None:
                self.stats.hits_semantic += 1
                tier.stats.hits += 1
                state.similarity = similarity
                reply = self._hit(ctx, state, entry)
                reply.headers.append(("x-gateway-cache-similarity", f"{similarity:.4f}"))
                return reply
            tier.index.remove(key)  # its answer has gone (evicted, expired, purged)
        if pending is not None:
            tier.stats.misses += 1
        self.stats.misses += 1
        ctx.response_headers.append(_MISS)
        return None

    async def _entry(self, key: bytes, tag: tuple[str | None, str | None, str]) -> CacheEntry | None:
        """The exact tier's entry ``key`` (stored by ``tag``'s request): memory, then Redis; None if gone."""
        raw = None
        if self.memory is not None:
            found = self.memory.get(key, _monotonic())
            if found is not None:
                raw = found[0]
        if raw is None and self.redis is not None:
            try:
                raw = await self.redis.get(redis_key(self.redis.prefix, *tag, key))
            except TierDown:
                return None
        if raw is None:
            return None
        try:
            return _unpack(raw)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return None

    def _promote(self, state: CacheState, raw: bytes, stored: float) -> None:
        """A Redis hit kept in the memory tier, for the rest of its time to live."""
        left = state.policy.ttl - (time.time() - stored)
        if left > 0 and self.memory is not None:
            self.memory.put(state.key, raw, _monotonic(), left, (state.tenant, state.key_id, state.model))

    def _rendered_hit(self, ctx: Context, state: CacheState, value: bytes) -> Reply:
        _, stored, cost = _ALIASED.unpack_from(value, 32)
        state.outcome = "hit"
        state.saved = None if cost != cost else cost  # NaN: unpriced
        age = str(max(int(time.time() - stored), 0))
        headers = [*(_SSE_HIT if ctx.stream else _JSON_HIT), ("age", age)]
        if ctx.dialect is not None:
            _dialect_headers(ctx, headers)
        return Reply(200, value[_ALIAS_BODY:], headers)

    def _hit(self, ctx: Context, state: CacheState, entry: CacheEntry) -> Reply:
        state.outcome = "hit"
        state.store = False
        state.saved = entry.cost
        if self.count_tokens:
            u = entry.response.usage
            ctx.usage = Usage(u.prompt_tokens, u.output_tokens, u.total_tokens)
        body = state.codec.replay(ctx, entry.response, entry.created)
        age = str(max(int(time.time() - entry.stored), 0))
        head = _SSE if ctx.stream else [_JSON]
        headers = [*head, ("x-gateway-cache", "hit"), ("age", age)]
        if ctx.dialect is not None:
            _dialect_headers(ctx, headers)
        return Reply(200, body, headers)

    # -- the way out --------------------------------------------------------------------------------

    def on_response(self, ctx: Context, body: bytes) -> bytes:
        state: CacheState | None = ctx.cache
        if state is not None and state.store and state.codec.watches:
            state.body = body
        return body

    def on_stream(self, ctx: Context) -> StreamObserver | None:
        state: CacheState | None = ctx.cache
        if state is None or not state.store or not state.codec.watches:
            return None
        state.assembler = state.codec.assembler(state.policy.max_entry_bytes * 4)
        return _Watch(state.assembler)

    def on_settle(self, ctx: Context) -> None:
        state: CacheState | None = ctx.cache
        if state is None or not state.store or ctx.status != 200 or ctx.error is not None:
            return
        codec = state.codec
        if codec.watches and state.body is None and state.assembler is None:
            return
        answer = codec.answer(ctx, state.body, state.assembler)
        if answer is None:
            self.stats.unstorable += 1
            return
        response, created = answer
        entry = CacheEntry(response, created, time.time(), ctx.cost, state.tenant, state.key_id, state.model)
        raw = _pack(entry)
        policy = state.policy
        if len(raw) > policy.max_entry_bytes:
            self.stats.too_large += 1
            return
        self.stats.stores += 1
        tag = (state.tenant, state.key_id, state.model)
        if self.memory is not None:
            self.memory.put(state.key, raw, time.monotonic(), policy.ttl, tag)
        announce: Announce | None = None
        if state.semantic is not None and self.semantic is not None:
            record = self.semantic.keep(state.semantic, state.key, tag, policy.ttl)
            if record is not None:
                announce = (self.semantic.stream, self.semantic.stream_len(), record)
        redis = self.redis
        if redis is not None and not state.redis_down:
            where = redis_key(redis.prefix, state.tenant, state.key_id, state.model, state.key)
            redis.set_soon(where, raw, policy.ttl, announce)


class RedisCachePhase(CachePhase):
    """The cache phase with a Redis tier or a semantic tier: a memory miss waits for Redis, for the
    embeddings call, or both."""

    is_async: ClassVar[bool] = True


def _lookup(phase: CachePhase, ctx: Context) -> Reply | Awaitable[Reply | None] | None:
    """``CachePhase.on_request`` (# PERF: a module function, so that the compiled module types its locals:
    phase.pxd)."""
    # PERF: a byte-identical repeat (a retry, the same SDK call) is two LRU lookups (its alias, then the
    # entry it renders); anything else, a miss included, pays the key as well (the canonical form written
    # and hashed in one compiled pass, gateway._core.canon) and one more LRU lookup
    endpoint = ctx.endpoint
    if endpoint == "chat":
        codec = _CHAT
        heads = phase.heads
    else:  # another dialect's generation request (gateway.cache.codec), or not cached
        found_codec = CODECS.get(endpoint)
        if found_codec is None:
            return None
        codec = found_codec
        heads = phase.dialect_heads[endpoint]
    key = ctx.key
    if key is None:
        tenant = key_id = None
    else:
        tenant, key_id = key.tenant.id, key.id
    model = ctx.route_model or ctx.fields.model
    slot = heads.get((tenant, key_id, model))
    if slot is None:
        slot = phase._slot(heads, tenant, key_id, codec, endpoint, model)
    policy, keyhash, aliases, deterministic, more = slot
    if policy is None:
        return None
    cc = ctx.request.header(b"cache-control")
    no_cache, no_store = (_DIRECTIVES.get(cc) or _cache_control(cc)) if cc else _NO_DIRECTIVES
    body = ctx.body
    extra = codec.headers(ctx) if codec is not _CHAT else b""
    memory = phase.memory
    alias = None
    now = 0.0
    if aliases is not None and memory is not None and not no_cache:
        # the alias of the rendered answer: this caller's head, the policy's ``when`` (an alias made
        # under "always" must not answer under "deterministic"), the form asked for and the raw body,
        # as they are (# PERF: the memory tier's dict hashes and compares them: exact, and cheaper
        # than a BLAKE2b; a worker's memory is its own, so nothing needs a hash that travels)
        alias = aliases[ctx.stream + 2 * ctx.include_usage] + extra + body
        now = _monotonic()
        rendered = memory.get(alias, now)
        if rendered is not None:
            value = rendered[0]
            digest = value[:32]
            found = memory.get(digest, now)
            # valid while its entry lives unchanged (not purged, evicted, expired or refreshed)
            if found is not None and found[1] == _ALIASED.unpack_from(value, 32)[0]:
                phase.stats.hits_memory += 1
                state = ctx.cache = CacheState(digest, policy, False, tenant, key_id, model, codec)
                return phase._rendered_hit(ctx, state, value)
            memory.delete(alias)
    # the key: an OpenAI chat body's canonical form written by the compiled canonicaliser straight from
    # its bytes and hashed where it was written (gateway._core.canon); another dialect's, or one that
    # the policy's ``when`` reads, decoded into its form first (the form the Redis and semantic tiers
    # read is made when they need it)
    form = None
    if deterministic:
        form = codec.form(ctx)
        if not is_deterministic(form):
            phase.stats.bypass_policy += 1
            ctx.response_headers.append(_BYPASS)
            return None
        digest = keyhash.digest(extra, _encode_form(form))
    else:
        found_key = keyhash.key(extra, body) if codec is _CHAT else None
        # None: another dialect's, or not a JSON object (OpenAI chat's canonical raises why)
        digest = keyhash.digest(extra, codec.canonical(ctx)) if found_key is None else found_key
    state = ctx.cache = CacheState(digest, policy, not no_store, tenant, key_id, model, codec)
    if no_cache:
        state.outcome = "bypass"
        phase.stats.bypass_nocache += 1
        ctx.response_headers.append(_BYPASS)
        return None
    if memory is not None:
        if not now:
            now = _monotonic()
        found = memory.get(digest, now)
        if found is not None:
            phase.stats.hits_memory += 1
            entry = _unpack(found[0])
            reply = phase._hit(ctx, state, entry)
            left = found[1] + policy.ttl - now
            if alias is not None and left > 0:  # the next byte-identical repeat answers from the alias
                cost = _NAN if entry.cost is None else entry.cost
                value = digest + _ALIASED.pack(found[1], entry.stored, cost) + reply.body
                memory.put(alias, value, now, left, (tenant, key_id, model))
            return reply
    if more:
        if phase.redis is not None:
            return phase._redis_lookup(ctx, state, form)
        return phase._semantic_lookup(ctx, state, form)
    phase.stats.misses += 1
    ctx.response_headers.append(_MISS)
    return None
