"""The semantic tier: a request the exact cache missed is answered by a stored neighbour whose prompt
means nearly the same.

Theory of operation (per chat request to a model whose policy has a ``semantic`` table; the cache phase
calls ``SemanticTier.nearest`` after the exact tiers missed, and ``SemanticTier.keep`` after it stored the
answer)::

    step          | what                                                        | when it stops here
    --------------+-------------------------------------------------------------+------------------------
    eligible      | no tools (``tools``, ``functions``, tool messages), text    | bypass, by reason:
                  | content only, temperature (absent: 1.0) <= max_temperature, | tools, content,
                  | the prompt within max_chars                                 | temperature, too_long
    embed         | the prompt's text through the configured embeddings model,  | error (counted): the
                  | the gateway's own engine path (any provider, the mock too), | request goes on as a
                  | bounded by ``timeout``; the call has its own call record    | miss, never fails
    search        | the worker's index, in the request's partition (namespace,  | miss
                  | model, embeddings model, every field but the messages)      |
    answer        | the neighbour's entry from the exact tier (memory, then     | miss (the row is
                  | Redis), replayed as an exact hit is, plus                   | dropped: its answer
                  | ``x-gateway-cache-similarity``                              | has gone)
    keep          | after the answer is stored: its vector in the index, and    |
                  | with a Redis tier, announced on the sync stream             |

What is embedded: the canonical prompt, one line per message, ``role: text`` (text parts joined), in
the order sent (OpenAI chat's and Anthropic Messages' ``messages`` alike; a Messages ``system`` is a field
of the partition, so it must match exactly; OpenAI Responses requests are not looked up). What must
match exactly: everything else the request says (the partition), so a
neighbour is never an answer to other sampling parameters or another response format.

The cluster. Redis 7 (what the gateway's clusters run) has no vector search, and none of the engines
that have one is a package this project's machines can install and test on loopback (no Redis Stack, no
Redis 8 vector sets, no pgvector in the distribution). So the shared index is Redis itself as a log:
every stored vector is appended (``XADD``, capped near the sum of the models' ``max_entries``) to the
stream ``<prefix>:cache-semantic`` right after its answer's ``SET``, and every worker of every node reads
the stream (``XREAD`` past the last record it read, every ``SYNC_POLL`` seconds) into its own index. A
starting worker reads the whole stream (the live part of it). The search stays in process (no network
round trip per lookup beyond the embeddings call); a neighbour stored on node A is found on node B
within ``SYNC_POLL`` plus a Redis round trip; the answer itself comes from the Redis tier.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

import msgspec
import numpy as np

from gateway import errors
from gateway.app import Headers, Request
from gateway.cache.config import CacheConfig, SemanticPolicy
from gateway.cache.keys import _encode as _encode_form
from gateway.cache.redis_tier import RedisTier, TierDown
from gateway.cache.semantic_index import SemanticIndex, Tag
from gateway.cache.semantic_stats import SemanticStats

if TYPE_CHECKING:
    from gateway.context import Context

__all__ = ["SYNC_POLL", "Pending", "SemanticTier", "SyncRecord", "partition_of", "prompt_text"]

log = logging.getLogger("gateway.cache")

#: seconds between two reads of the sync stream (the bound on a neighbour's propagation, with a round trip)
SYNC_POLL: Final = 0.25
#: records read per XREAD
SYNC_BATCH: Final = 1000
_EMBED_PATH: Final = "/v1/embeddings"


class Pending(msgspec.Struct):
    """What a miss keeps until its answer is stored (``CacheState.semantic``)."""

    partition: bytes
    vector: Any  # np.ndarray, unit length, float32
    policy: SemanticPolicy


class SyncRecord(msgspec.Struct, array_like=True, frozen=True):
    """One row on the sync stream."""

    partition: bytes
    key: bytes
    #: wall clock
    expires: float
    #: little-endian float32
    vector: bytes
    tenant: str | None
    key_id: str | None
    model: str
    #: the worker that wrote it (it has the row already)
    origin: str


_pack_record = msgspec.msgpack.Encoder().encode
_unpack_record = msgspec.msgpack.Decoder(SyncRecord).decode


class _EmbedCall(msgspec.Struct, omit_defaults=True):
    model: str
    input: str
    dimensions: int | None = None


class _Vector(msgspec.Struct):
    embedding: list[float]


class _Embeddings(msgspec.Struct):
    data: list[_Vector]


_encode_call = msgspec.json.Encoder().encode
_decode_embeddings = msgspec.json.Decoder(_Embeddings).decode


# -- what is embedded, and what must match ------------------------------------------------------------


def _text_of(content: Any) -> str | None:
    """A message's text: a string, or its text parts joined; None when it holds anything else."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return None
    parts: list[str] = []
    for part in content:
        if not (isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)):
            return None
        parts.append(part["text"])
    return "\n".join(parts)


_TOOL_BLOCKS: Final = frozenset({"tool_use", "tool_result", "server_tool_use"})


def _tool_blocks(message: dict[str, Any]) -> bool:
    """An Anthropic Messages turn with a tool call or a tool result among its blocks."""
    content = message.get("content")
    return isinstance(content, list) and any(
        isinstance(b, dict) and b.get("type") in _TOOL_BLOCKS for b in content)


def prompt_text(form: dict[str, Any], policy: SemanticPolicy) -> tuple[str | None, str | None]:
    """(the text to embed, None) or (None, why the request is not looked up: a ``BYPASS_REASONS``)."""
    if form.get("tools") or form.get("functions"):
        return None, "tools"
    temperature = form.get("temperature", 1.0)
    if not isinstance(temperature, int | float) or temperature > policy.max_temperature:
        return None, "temperature"
    messages = form.get("messages")
    if not isinstance(messages, list) or not messages:
        return None, "content"
    lines: list[str] = []
    for m in messages:
        if not isinstance(m, dict):
            return None, "content"
        role = m.get("role")
        if role in ("tool", "function") or m.get("tool_calls") or m.get("function_call") or _tool_blocks(m):
            return None, "tools"
        text = _text_of(m.get("content"))
        if text is None or not isinstance(role, str):
            return None, "content"
        lines.append(f"{role}: {text}")
    text = "\n".join(lines)
    if len(text) > policy.max_chars:
        return None, "too_long"
    return text, None


def partition_of(namespace: str, model: str, policy: SemanticPolicy, form: dict[str, Any],
                 dialect: str = "openai_chat", headers: bytes = b"") -> bytes:
    """The partition a request searches and stores in: its namespace, client dialect (as for exact keys,
    two dialects never share), model, embeddings model and the canonical form of every field but the
    messages (``form`` is the dialect's canonical form, ``keys.request_form``'s or ``keys.messages_form``'s:
    an Anthropic ``system`` must match exactly), and the request headers that change the answer, as for
    exact keys (``keys.header_part``: Anthropic's betas)."""
    rest = {k: v for k, v in form.items() if k != "messages"}
    fields = (namespace, dialect, model, policy.embeddings_model)
    head = "".join(f"{len(p)}:{p}" for p in fields).encode()
    return hashlib.blake2b(b"gw-semantic-v1\0" + head + headers + _encode_form(rest), digest_size=32).digest()


def _unit(values: list[float]) -> np.ndarray[Any, Any] | None:
    v = np.asarray(values, dtype=np.float32)
    norm = float(np.linalg.norm(v))
    if v.ndim != 1 or v.shape[0] == 0 or not np.isfinite(norm) or norm == 0.0:
        return None
    return v / np.float32(norm)


# -- the embeddings call, through the engine ------------------------------------------------------------


class _Capture:
    """A responder that keeps the embeddings call's answer (it never streams)."""

    started = False
    keep_alive = True
    disconnected = False

    def __init__(self) -> None:
        self.status = 0
        self.body = b""

    def send(self, status: int, headers: Headers, body: bytes) -> None:
        self.started = True
        self.status = status
        self.body = body

    def start_stream(self, status: int, headers: Headers) -> None:
        raise errors.BadGateway("the embeddings call was answered with a stream", code="upstream_error")

    async def write(self, chunk: bytes) -> None:
        raise errors.BadGateway("the embeddings call was answered with a stream", code="upstream_error")

    def end_stream(self) -> None:
        pass


class _Embedder:
    """Embeds a prompt with a model the gateway serves, as the engine serves any embeddings request:
    parse, the model's deployment or router (retries, fallbacks, breakers), the provider's translator.
    Not the phase chain: the call is the gateway's, made for a request already admitted, so it takes no
    request limit; it is settled like any call (the limits phase prices it and charges the caller's
    budgets its cost) and has its own call record (endpoint ``embeddings``, the caller's key and tenant,
    request id ``<the chat request's>-semantic``)."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine

    async def embed(self, ctx: Context, policy: SemanticPolicy, text: str) -> np.ndarray[Any, Any] | None:
        engine = self.engine
        body = _encode_call(_EmbedCall(policy.embeddings_model, text, policy.dimensions))
        rid = (ctx.request_id + "-semantic").encode("latin-1", "replace")
        request = Request("POST", _EMBED_PATH, "", ctx.request.version,
                          [(b"content-type", b"application/json"), (b"x-request-id", rid)], body, True)
        capture = _Capture()
        inner = engine._context(request, capture)
        inner.endpoint = "embeddings"
        inner.key = ctx.key
        try:
            engine._parse(inner)
            model = inner.runtime.models.get(policy.embeddings_model)
            if model is None or "embeddings" not in model.endpoints:
                raise errors.BadRequest(f"The model `{policy.embeddings_model}` does not serve embeddings",
                                        param="model", code="unsupported_endpoint")
            inner.model = model
            async with asyncio.timeout(policy.timeout):
                await engine._upstream(inner, capture, model)
        except TimeoutError:
            inner.error = errors.GatewayTimeout(
                f"The embeddings call of the semantic cache took more than {policy.timeout} s",
                code="semantic_embeddings_timeout")
            inner.status = inner.error.status
            return None
        except errors.GatewayError as exc:
            exc.__traceback__ = None
            inner.error = exc
            inner.status = exc.status
            return None
        finally:
            engine._settle(inner)
        if capture.status != 200:
            return None
        try:
            data = _decode_embeddings(capture.body).data
        except (msgspec.DecodeError, msgspec.ValidationError):
            return None
        return _unit(data[0].embedding) if data else None


# -- the tier -------------------------------------------------------------------------------------------


class SemanticTier:
    """One worker's semantic tier: its index, its embeddings calls, its sync with the other workers."""

    def __init__(self, config: CacheConfig, engine: Any) -> None:
        self.index = SemanticIndex()
        self.stats = SemanticStats()
        self.embedder = _Embedder(engine)
        self.config = config
        #: this worker's mark on the rows it announces
        self.origin = f"{os.getpid()}-{os.urandom(4).hex()}"
        self.redis: RedisTier | None = None
        self._sync: asyncio.Task[None] | None = None

    def reload(self, config: CacheConfig, redis: RedisTier | None) -> None:
        self.config = config
        if redis is not self.redis:
            self.redis = redis
            if self._sync is not None:
                self._sync.cancel()
                self._sync = None
            if redis is not None:
                self._sync = asyncio.get_running_loop().create_task(self._follow(redis))

    @property
    def stream(self) -> bytes:
        assert self.redis is not None
        return f"{self.redis.prefix}:cache-semantic".encode()

    def stream_len(self) -> int:
        """About how many rows the sync stream keeps: every semantic model's bound."""
        return max(sum(p.max_entries for p in self.config.semantic_policies()), 1000)

    # -- the request path ---------------------------------------------------------------------------

    async def nearest(self, ctx: Context, namespace: str, model: str, policy: SemanticPolicy,
                      form: dict[str, Any], dialect: str = "openai_chat", headers: bytes = b"",
                      ) -> tuple[Pending | None, tuple[bytes, Tag, float] | None]:
        """(what to keep once the answer is stored, the neighbour above the threshold: (its entry's key,
        its tag, the similarity)). (None, None): not looked up (bypassed or the embeddings call failed)."""
        text, why = prompt_text(form, policy)
        if text is None:
            self.stats.bypass[why or "content"] += 1
            return None, None
        try:
            vector = await self.embedder.embed(ctx, policy, text)
        except Exception:  # never the client's problem
            log.exception("cache: the semantic tier's embeddings call failed")
            vector = None
        if vector is None:
            self.stats.errors += 1
            return None, None
        partition = partition_of(namespace, model, policy, form, dialect, headers)
        pending = Pending(partition, vector, policy)
        found = self.index.search(partition, vector, time.time())
        if found is None or found[2] < policy.threshold:
            return pending, None
        return pending, found

    def keep(self, pending: Pending, key: bytes, tag: Tag, ttl: float) -> bytes | None:
        """The stored answer's vector into the index; its sync record (to announce) when there is Redis."""
        expires = time.time() + ttl
        p = pending.policy
        self.index.add(pending.partition, key, pending.vector, expires, tag, tag[2], p.max_entries)
        if self.redis is None:
            return None
        vector = pending.vector.astype("<f4").tobytes()
        return _pack_record(SyncRecord(pending.partition, key, expires, vector, *tag, self.origin))

    # -- the cluster: following the sync stream -------------------------------------------------------

    async def _follow(self, redis: RedisTier) -> None:
        """Read every row the other workers announce into this worker's index (see the module docstring)."""
        last = b"0-0"
        while True:
            try:
                while True:  # catch up in batches, then wait
                    last, values = await redis.stream_after(self.stream, last, b"e", SYNC_BATCH)
                    self._apply(values)
                    if len(values) < SYNC_BATCH:
                        break
            except TierDown:
                pass  # read what was missed once it answers again
            except Exception:
                log.exception("cache: the semantic sync stream could not be read")
            await asyncio.sleep(SYNC_POLL)

    def _apply(self, values: list[bytes]) -> None:
        now = time.time()
        for value in values:
            try:
                r = _unpack_record(value)
            except (msgspec.DecodeError, msgspec.ValidationError):
                continue
            if r.origin == self.origin or r.expires <= now:
                continue
            policy = self.config.policy(r.model)
            sem = policy.semantic if policy is not None else None
            if sem is None or len(r.vector) % 4:
                continue
            vector = np.frombuffer(r.vector, dtype="<f4").astype(np.float32)
            self.index.add(r.partition, r.key, vector, r.expires, (r.tenant, r.key_id, r.model), r.model,
                           sem.max_entries)
            self.stats.synced += 1

    def purge(self, matches: Callable[[Tag], bool]) -> int:
        return self.index.purge(matches)

    def close(self) -> None:
        if self._sync is not None:
            self._sync.cancel()
            self._sync = None
