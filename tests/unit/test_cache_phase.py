"""The cache phase in process (the engine and the mock transport): policies, reloads, what is stored,
and the limits interplay switch."""

from __future__ import annotations

import asyncio
import io
import json
from typing import Any

from recorder import Recorder
from test_engine import CONFIG

from gateway._core.http import Request
from gateway.cache.config import CacheConfig, CachePolicy, ModelCacheConfig
from gateway.config import load_config_text
from gateway.engine import Engine
from gateway.observe.records import RecordSink

CACHE = "\n[cache]\nenabled = true\n"


def _request(body: dict[str, Any], *headers: tuple[bytes, bytes]) -> Request:
    return Request("POST", "/v1/chat/completions", "", 11,
                   [(b"host", b"t"), (b"content-type", b"application/json"), *headers],
                   json.dumps(body).encode(), True)


async def _ask(engine: Engine, body: dict[str, Any], *headers: tuple[bytes, bytes]) -> Recorder:
    rec = Recorder()
    await engine.handle(_request(body, *headers), rec)
    await asyncio.sleep(0)
    return rec


CHAT = {"model": "chat", "messages": [{"role": "user", "content": "hello"}]}


def test_policies_merge_over_the_default() -> None:
    c = CacheConfig(enabled=True, default=CachePolicy(ttl=10.0, scope="key"),
                    models={"a": ModelCacheConfig(ttl=99.0), "b": ModelCacheConfig(enabled=False)})
    a = c.policy("a")
    assert a is not None and a.ttl == 99.0 and a.scope == "key"
    assert c.policy("b") is None
    other = c.policy("zzz")
    assert other is not None and other.ttl == 10.0
    assert CacheConfig().policy("a") is None  # the cache off: nothing cached


def test_a_reload_keeps_the_entries_and_takes_the_new_policy() -> None:
    async def go() -> None:
        engine = Engine(load_config_text(CONFIG + CACHE))
        await engine.startup()
        assert (await _ask(engine, CHAT)).header("x-gateway-cache") == "miss"
        assert (await _ask(engine, CHAT)).header("x-gateway-cache") == "hit"
        engine.reload(load_config_text(CONFIG + CACHE + '[cache.models.chat]\nwhen = "deterministic"\n'))
        assert (await _ask(engine, CHAT)).header("x-gateway-cache") == "bypass"  # the new policy
        assert (await _ask(engine, {**CHAT, "temperature": 0})).header("x-gateway-cache") == "miss"
        engine.reload(load_config_text(CONFIG + CACHE))
        assert (await _ask(engine, CHAT)).header("x-gateway-cache") == "hit"  # kept across reloads
        await engine.shutdown()

    asyncio.run(go())


def test_embeddings_are_not_cached() -> None:
    async def go() -> None:
        engine = Engine(load_config_text(CONFIG + CACHE))
        await engine.startup()
        rec = Recorder()
        body = json.dumps({"model": "embed", "input": "x"}).encode()
        headers = [(b"host", b"t"), (b"content-type", b"application/json")]
        req = Request("POST", "/v1/embeddings", "", 11, headers, body, True)
        await engine.handle(req, rec)
        assert rec.status == 200 and rec.header("x-gateway-cache") is None
        await engine.shutdown()

    asyncio.run(go())


def test_cache_control_directives() -> None:
    async def go() -> None:
        engine = Engine(load_config_text(CONFIG + CACHE))
        await engine.startup()
        nostore = (b"cache-control", b"No-Store")
        assert (await _ask(engine, CHAT, nostore)).header("x-gateway-cache") == "miss"
        assert (await _ask(engine, CHAT, nostore)).header("x-gateway-cache") == "miss"  # never stored
        assert (await _ask(engine, CHAT)).header("x-gateway-cache") == "miss"
        assert (await _ask(engine, CHAT, nostore)).header("x-gateway-cache") == "hit"  # looked up
        refresh = (b"cache-control", b"max-age=0")
        assert (await _ask(engine, CHAT, refresh)).header("x-gateway-cache") == "bypass"
        await engine.shutdown()

    asyncio.run(go())


def test_hits_count_tokens_puts_the_usage_on_the_request() -> None:
    async def go(extra: str) -> dict[str, Any]:
        sink = RecordSink(io.BytesIO(), enabled=True)
        engine = Engine(load_config_text(CONFIG + CACHE + extra), records=sink)
        await engine.startup()
        await _ask(engine, CHAT)
        hit = await _ask(engine, CHAT)
        assert hit.header("x-gateway-cache") == "hit"
        records = sink.snapshot()
        await engine.shutdown()
        return next(r for r in records if r.get("cache") == "hit")

    assert "total_tokens" not in asyncio.run(go(""))  # by default a hit is not charged tokens
    assert asyncio.run(go("hits_count_tokens = true\n"))["total_tokens"] > 0
