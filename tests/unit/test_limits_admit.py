"""The admit phase: which limits apply, the client contract, reconciliation, budgets and fail modes.

Two ways in: small fake contexts driven straight through ``LimitService.phase`` (keys and tenants
without a key store), and the real ``Engine`` with the in-process mock provider. The shared state is the
node's table file beside a SQLite store in the test's directory; spend goes to that store.
"""

from __future__ import annotations

import asyncio
import copy
import gc
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import msgspec
import pytest
from recorder import Recorder  # tests/ is on sys.path (see tests/recorder.py)

from gateway._core.http import Request
from gateway.app import ClientGone
from gateway.auth import digest, format_key
from gateway.config import Config, load_config, load_config_text
from gateway.engine import Engine
from gateway.errors import GatewayError, RateLimited
from gateway.limits.admit import LimitService
from gateway.limits.budgets import utc_period
from gateway.limits.contract import QuotaExceeded, duration_text, retry_headers
from gateway.limits.shared import Decision, Grant, LeaseSource, Op, SharedStateUnavailable
from gateway.observe.records import RecordSink
from gateway.store import open_store
from gateway.wire import ChatRequest, EmbeddingRequest, Usage

BASE = """
[server]
workers = 2
[log]
call_records = false
[store]
url = "sqlite://{db}"
[providers.mock]
type = "mock"
[models.chat]
provider = "mock"
upstream_model = "mock-1"
[models.small]
provider = "mock"
upstream_model = "mock-small"
[models.priced]
provider = "mock"
upstream_model = "gpt-4o"
[models.embed]
provider = "mock"
upstream_model = "mock-embed-1"
endpoints = ["embeddings"]
"""


def config(tmp_path: Path, limits: str) -> Config:
    return load_config_text(BASE.format(db=tmp_path / "store.db") + limits)


def run(coro: Awaitable[Any]) -> Any:
    return asyncio.run(coro)  # type: ignore[arg-type]


# -- fake contexts ----------------------------------------------------------------------------------------


class Tenant:
    def __init__(self, id: str, limit_policy: str | None = None, budget: str | None = None) -> None:
        self.id, self.limit_policy, self.budget = id, limit_policy, budget


class Key:
    """Shaped like gateway.auth.table.KeyEntry: a key naming none has its tenant's policy and budget."""

    def __init__(self, id: str, tenant: Tenant, limit_policy: str | None = None, budget: str | None = None):
        self.id, self.tenant = id, tenant
        self.limit_policy = limit_policy if limit_policy is not None else tenant.limit_policy
        self.budget = budget if budget is not None else tenant.budget


class Target:
    def __init__(self, upstream_model: str) -> None:
        self.upstream_model = upstream_model
        self.provider = "mock"


class Ctx:
    def __init__(self, key: Key | None = None, model: str = "chat", content: str = "hello",
                 max_tokens: int | None = None, endpoint: str = "chat") -> None:
        payload: dict[str, Any] = {"model": model}
        if endpoint == "embeddings":
            payload["input"] = content
            self.fields: Any = msgspec.json.decode(json.dumps(payload), type=EmbeddingRequest)
        else:
            payload["messages"] = [{"role": "user", "content": content}]
            if max_tokens is not None:
                payload["max_tokens"] = max_tokens
            self.fields = msgspec.json.decode(json.dumps(payload), type=ChatRequest)
        self.body = json.dumps(payload).encode()
        self.key = key
        self.endpoint = endpoint
        self.response_headers: list[tuple[str, str]] = []
        self.route_model: str | None = None
        self.limits: Any = None
        self.usage: Any = None
        self.target: Any = None
        self.model: Any = None
        self.status = 0
        self.cost: float | None = None
        self.error: Any = None

    def header(self, name: str) -> str | None:
        return dict(self.response_headers).get(name)

    def answered(self, usage: Usage | None, upstream_model: str = "mock-1", status: int = 200) -> Ctx:
        self.usage, self.target, self.status = usage, Target(upstream_model), status
        return self


async def admit(service: LimitService, ctx: Ctx) -> Ctx:
    out = service.phase.on_request(ctx)  # type: ignore[arg-type]
    if isinstance(out, GatewayError):  # a refusal returned, not raised: the engine answers with it
        raise copy.copy(out)
    if out is not None:
        await out
    return ctx


async def admit_soon(service: LimitService, ctx: Ctx, timeout: float = 30.0) -> Ctx:
    """``admit``, trying again for a while as a client told to retry would."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await admit(service, ctx)
        except GatewayError:
            if time.monotonic() > deadline:
                raise
            ctx.response_headers.clear()
            await asyncio.sleep(0.05)


async def refused(service: LimitService, ctx: Ctx) -> GatewayError:
    with pytest.raises(GatewayError) as info:
        await admit(service, ctx)
    return info.value


async def started(cfg: Config, **kw: Any) -> LimitService:
    service = LimitService(cfg, worker=0, **kw)
    await service.start()
    service.phase.header_ttl = 0.0  # every answer computes its headers (the tests compare them)
    return service


async def eventually(predicate: Callable[[], Any], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


# -- the real engine --------------------------------------------------------------------------------------


async def engine_for(cfg: Config) -> Engine:
    engine = Engine(cfg, records=RecordSink(enabled=False), worker=0)
    await engine.startup()
    assert engine.limits is not None
    engine.limits.phase.header_ttl = 0.0
    return engine


async def post(engine: Engine, content: str = "hello", model: str = "chat", key: str | None = None,
               **extra: Any) -> Recorder:
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": content}], **extra}).encode()
    headers = [(b"host", b"t"), (b"content-type", b"application/json")]
    if key is not None:
        headers.append((b"authorization", b"Bearer " + key.encode()))
    req = Request("POST", "/v1/chat/completions", "", 11, headers, body, True)
    rec = Recorder()
    await engine.handle(req, rec)
    return rec


def service_of(engine: Engine) -> LimitService:
    assert engine.limits is not None
    return engine.limits


# -- which limits apply ------------------------------------------------------------------------------------


def test_the_most_restrictive_limit_refuses_and_is_named(tmp_path: Path) -> None:
    cfg = config(tmp_path, """
[limits.policies.wide]
requests_per_minute = 100
[limits.policies.narrow]
requests_per_minute = 2
[limits.policies.mid]
requests_per_minute = 50
[limits.apply]
gateway = "mid"
""")

    async def body() -> None:
        service = await started(cfg)
        key = Key("k1", Tenant("t1", limit_policy="narrow"), limit_policy="wide")
        first = await admit(service, Ctx(key))
        assert first.header("x-ratelimit-limit-requests") == "2"  # the limit with the least left
        assert first.header("x-ratelimit-remaining-requests") == "1"
        await admit(service, Ctx(key))
        err = await refused(service, Ctx(key))
        assert isinstance(err, RateLimited) and err.status == 429 and err.code == "rate_limit_exceeded"
        assert "requests_per_minute of policy narrow for tenant t1" in err.message
        headers = dict(err.headers)
        assert headers["x-ratelimit-limit-requests"] == "2"
        assert headers["x-ratelimit-remaining-requests"] == "0"
        assert 28 <= int(headers["retry-after"]) <= 30 and 28_000 <= int(headers["retry-after-ms"]) <= 30_000
        assert service.stats.refused_requests == 1 and service.stats.admitted == 2
        await service.stop()

    run(body())


def test_levels_keys_tenants_models_and_anonymous_callers(tmp_path: Path) -> None:
    cfg = config(tmp_path, """
[limits]
default_policy = "two"
apply = { models = { "small" = "one" } }
[limits.policies.two]
requests_per_minute = 2
[limits.policies.one]
requests_per_minute = 1
""")

    async def body() -> None:
        service = await started(cfg)
        team_a = Tenant("a")
        k1, k2 = Key("k1", team_a), Key("k2", team_a)
        # keys of a tenant naming no policy: the default, counted at the tenant (shared by its keys)
        await admit(service, Ctx(k1))
        await admit(service, Ctx(k2))
        err = await refused(service, Ctx(k1))
        assert "policy two for tenant a" in err.message
        # another tenant has counters of its own; a key naming its own policy is counted per key too
        team_b = Tenant("b")
        solo = Key("kb", team_b, limit_policy="one")
        await admit(service, Ctx(solo))
        err = await refused(service, Ctx(solo))
        assert "policy one for key kb" in err.message
        # a model's policy is shared by every caller of that model
        await admit(service, Ctx(Key("kc", Tenant("c")), model="small"))
        err = await refused(service, Ctx(Key("kd", Tenant("d")), model="small"))
        assert "requests_per_minute of policy one for model small" in err.message
        # no key (keys not required): the default policy, one set of counters for all such requests
        await admit(service, Ctx())
        await admit(service, Ctx())
        err = await refused(service, Ctx())
        assert "for anonymous callers" in err.message
        await service.stop()

    run(body())


def test_reload_changes_the_limits_and_keeps_the_counters(tmp_path: Path) -> None:
    policy = "[limits]\ndefault_policy = \"p\"\n[limits.policies.p]\nrequests_per_minute = {n}\n"

    async def body() -> None:
        service = await started(config(tmp_path, policy.format(n=5)))
        for _ in range(5):
            assert (await admit(service, Ctx())).header("x-ratelimit-limit-requests") == "5"
        await refused(service, Ctx())  # the refusal is cached by the worker until its retry-after
        calls = service.shared_calls
        await refused(service, Ctx())
        assert service.shared_calls == calls
        # raised to 100: admitted at once; the 5 used stay used, 95 are left
        service.reload(config(tmp_path, policy.format(n=100)))
        for _ in range(95):
            assert (await admit(service, Ctx())).header("x-ratelimit-limit-requests") == "100"
        err = await refused(service, Ctx())
        assert "(limit 100 per minute)" in err.message
        # lowered to 2 with 100 used: full until it refills at the new rate
        service.reload(config(tmp_path, policy.format(n=2)))
        err = await refused(service, Ctx())
        assert "(limit 2 per minute)" in err.message and float(dict(err.headers)["retry-after"]) >= 29
        await service.stop()

    run(body())


def test_reload_closes_the_leases_of_a_changed_limit(tmp_path: Path) -> None:
    policy = "[limits]\ndefault_policy = \"p\"\n[limits.policies.p]\nrequests_per_minute = 100\nlease = {n}\n"
    key = "p/requests_per_minute/anonymous/all"

    async def body() -> None:
        service = await started(config(tmp_path, policy.format(n=10)))
        await admit(service, Ctx())  # a lease of 10: 1 spent, 9 held by this worker
        assert service.client.lease_left(key, time.monotonic()) == 9
        remaining, _ = await service.source.peek(key, 100 / 60, 100.0)
        assert int(remaining) == 90
        # exact from now on: the lease of 10 is closed and its 9 go back to the shared bucket at once
        service.reload(config(tmp_path, policy.format(n=1)))
        assert service.client.lease_left(key, time.monotonic()) == 0
        await eventually(lambda: not service.client._queue)
        remaining, _ = await service.source.peek(key, 100 / 60, 100.0)
        assert int(remaining) == 99
        calls = service.shared_calls
        await admit(service, Ctx())
        await admit(service, Ctx())
        assert service.shared_calls == calls + 2  # a lease of 1: every admission asks
        # a policy no longer applied: its key is forgotten by the worker
        service.reload(config(tmp_path, "[limits]\n[limits.budgets.b]\nusd_per_day = 1.0\n"))
        assert service.client.lease_left(key, time.monotonic()) == 0 and key not in service.client._entries
        await service.stop()

    run(body())


# -- the client contract -----------------------------------------------------------------------------------


def test_engine_answers_with_headers_and_an_openai_shaped_429(tmp_path: Path) -> None:
    cfg = config(tmp_path, """
[limits]
default_policy = "p"
[limits.policies.p]
requests_per_minute = 2
tokens_per_minute = 100000
""")

    async def body() -> None:
        engine = await engine_for(cfg)
        ok = await post(engine)
        assert ok.status == 200
        names = [k for k, _ in ok.headers]
        for dim in ("requests", "tokens"):
            for part in ("limit", "remaining", "reset"):
                assert f"x-ratelimit-{part}-{dim}" in names
        assert ok.header("x-ratelimit-limit-tokens") == "100000"
        assert (ok.header("x-ratelimit-reset-requests") or "").endswith("s")
        await post(engine)
        no = await post(engine)
        assert no.status == 429
        err = no.json()["error"]
        assert (err["type"], err["code"]) == ("rate_limit_error", "rate_limit_exceeded")
        assert "requests_per_minute of policy p for anonymous callers" in err["message"]
        assert int(no.header("retry-after") or 0) >= 1 and int(no.header("retry-after-ms") or 0) > 0
        assert no.header("x-ratelimit-remaining-requests") == "0"
        assert no.header("x-request-id")
        await engine.shutdown()

    run(body())


#: one request a minute for everyone: the second request is refused for about a minute
ONE_A_MINUTE = """
[limits]
default_policy = "p"
[limits.policies.p]
requests_per_minute = 1
"""


def count_calls(monkeypatch: pytest.MonkeyPatch, obj: Any, name: str) -> list[int]:
    """Count the calls of ``obj.name`` (still made) for the test's length: ``[calls]``."""
    real = getattr(obj, name)
    calls = [0]

    def counting(*args: Any) -> Any:
        calls[0] += 1
        return real(*args)

    monkeypatch.setattr(obj, name, counting)
    return calls


def test_a_refusal_leaves_nothing_for_the_cyclic_collector(tmp_path: Path) -> None:
    """A 429 raised in the (Python) admit phase, whose frame holds the request's context, is kept in
    ``ctx.error`` without its traceback: no cycle per refusal for the cyclic collector to free, on the
    callback path (``begin``) and on the coroutine path (``handle``)."""
    cfg = config(tmp_path, ONE_A_MINUTE)

    async def body() -> None:
        engine = await engine_for(cfg)
        assert (await post(engine)).status == 200
        assert (await post(engine)).status == 429
        raw = json.dumps({"model": "chat", "messages": [{"role": "user", "content": "hi"}]}).encode()
        req = Request("POST", "/v1/chat/completions", "", 11,
                      [(b"host", b"t"), (b"content-type", b"application/json")], raw, True)
        gc.collect()
        gc.disable()
        try:
            for _ in range(50):
                rec = Recorder()
                assert engine.begin(req, rec) is None and rec.status == 429
                rec = Recorder()
                await engine.handle(req, rec)
                assert rec.status == 429
            assert gc.collect() == 0
        finally:
            gc.enable()
        await engine.shutdown()

    run(body())


def test_a_request_that_can_never_fit_is_not_to_be_retried(tmp_path: Path) -> None:
    cfg = config(tmp_path, """
[limits]
default_policy = "p"
[limits.policies.p]
tokens_per_minute = 5000
""")

    async def body() -> None:
        service = await started(cfg)
        err = await refused(service, Ctx(max_tokens=100_000))
        headers = dict(err.headers)
        assert err.status == 429 and headers.get("x-should-retry") == "false" and "retry-after" not in headers
        assert "estimated at" in err.message and "tokens_per_minute of policy p" in err.message
        await admit(service, Ctx(max_tokens=100))  # a smaller one still fits
        await service.stop()

    run(body())


def test_a_repeated_refusal_reads_exactly_as_one_built_anew(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Refusals by a plan's one request limit are reused while every value in them is the same (the
    waits in whole milliseconds); each reads exactly as the one built for its own decision, and counts.
    The admit phase returns the shared answer; what it raises is a copy."""
    cfg = config(tmp_path, ONE_A_MINUTE)

    async def body() -> None:
        service = await started(cfg)
        phase: Any = service.phase
        await admit(service, Ctx())
        first = await refused(service, Ctx())  # from the shared state: raised
        out = phase.on_request(Ctx())  # now known in this worker: returned, the engine answers with it
        assert isinstance(out, RateLimited) and out is not first and isinstance(first, RateLimited)
        plan = phase._anon.plans["chat"]
        assert plan.refusal is not None and plan.refusal[4] is out

        def read(err: GatewayError) -> tuple[str, list[tuple[str, str]]]:
            return err.message, err.headers

        real = phase._build_refusal
        built = count_calls(monkeypatch, phase, "_build_refusal")
        before = service.stats.refused_requests
        waits = [59.0001, 59.0004, 59.0009, 59.0011, 59.0011, 0.5, 0.5004, 3599.9, 3600.0, 0.0001]
        for i, wait in enumerate(waits):
            d = Decision(429, wait, plan.single, float(i == 4), wait + (10.0 if i != 6 else 10.5))
            now = time.monotonic()
            assert read(phase._refusal(plan, d, None, now)) == read(real(plan, d, None, now))
        assert service.stats.refused_requests == before + 2 * len(waits)  # each refusal counts once
        assert built[0] < len(waits)  # some were reused: same milliseconds to wait and to the reset
        await service.stop()

    run(body())


def test_a_refusal_answered_from_memory_reads_as_one_built_at_that_moment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fast path of a repeated 429 (no lease-client call while the refusal and its rounded waits are
    unchanged) answers exactly what the refusal built at that moment would say, across millisecond
    boundaries of both waits; anything that changes the refusal sends it back to the lease client."""
    cfg = config(tmp_path, ONE_A_MINUTE)
    import gateway.limits.admit as admit_module

    async def body() -> None:
        service = await started(cfg)
        phase: Any = service.phase
        await admit(service, Ctx())
        await refused(service, Ctx())  # from the shared state: now known in this worker
        plan = phase._anon.plans["chat"]
        entry = service.client.entries[plan.single]
        start = time.monotonic()
        clock = [start]
        monkeypatch.setattr(admit_module, "_monotonic", lambda: clock[0])
        takes = count_calls(monkeypatch, service.client, "try_take")
        steps = 400
        for i in range(steps):
            now = clock[0] = start + i * 0.00037  # about 148 ms: both waits cross many milliseconds
            out = phase.on_request(Ctx())
            assert isinstance(out, RateLimited)
            d = Decision(429, entry.refused_until - now, plan.single, 0.0, max(0.0, entry.reset_at - now))
            fresh = phase._build_refusal(plan, d, None, now)
            assert (out.message, out.headers) == (fresh.message, fresh.headers), i
        assert 0 < takes[0] < steps  # most were answered without the lease client
        # a refund (or a grant, a reload's change) clears the refusal: asked again, not answered from memory
        entry.refused_until = -math.inf
        out = phase.on_request(Ctx())
        assert not isinstance(out, GatewayError) and out is not None
        out.close()  # the slow path's coroutine, not awaited here
        await service.stop()

    run(body())


def test_durations_and_retry_headers() -> None:
    assert [duration_text(s) for s in (0, 0.0201, 1, 1.5, 59.9991, 60, 360, 3723.2)] == [
        "0s", "21ms", "1s", "1.5s", "60s", "1m0s", "6m0s", "1h2m4s",
    ]
    assert retry_headers(1.2) == [("retry-after", "2"), ("retry-after-ms", "1200")]
    assert retry_headers(float("inf")) == [("x-should-retry", "false")]


# -- reconciliation ----------------------------------------------------------------------------------------


TOKENS = """
[limits]
default_policy = "t"
default_max_tokens = 100
[limits.policies.t]
tokens_per_day = 100000
lease = 1
"""


def test_token_reservations_are_charged_and_refunded_to_the_shared_bucket(tmp_path: Path) -> None:
    async def body() -> None:
        service = await started(config(tmp_path, TOKENS))
        limit = service.phase._anon.scoped[0].limit

        async def used() -> float:
            service.phase.flush_net()
            await service.tokens.flush()
            remaining, _ = await service.source.peek(limit.key, limit.rate, limit.burst)
            return 100_000 - remaining

        big = await admit(service, Ctx(max_tokens=50))
        reserved = (len(big.body) + 3) // 4 + 50
        assert await used() == pytest.approx(reserved, abs=2)
        service.phase.on_settle(big.answered(Usage(500, 300, 800)))  # used more than reserved: charged
        assert await used() == pytest.approx(800, abs=2)
        small = await admit(service, Ctx(max_tokens=50))
        service.phase.on_settle(small.answered(Usage(5, 5, 10)))  # used less: the rest refunded
        assert await used() == pytest.approx(810, abs=2)
        failed = await admit(service, Ctx(max_tokens=50))
        service.phase.on_settle(failed.answered(None, status=502))  # failed upstream: all refunded
        assert await used() == pytest.approx(810, abs=2)
        stats = service.stats
        assert stats.tokens_charged == 800 - reserved and stats.tokens_refunded > 0
        await service.stop()

    run(body())


def test_streams_are_reconciled_from_their_usage_event(tmp_path: Path) -> None:
    async def body() -> None:
        engine = await engine_for(config(tmp_path, TOKENS))
        rec = await post(engine, stream=True)
        assert rec.status == 200 and rec.finished
        stats = service_of(engine).stats
        assert stats.tokens_refunded > 0 and stats.counted_usage == 0
        await engine.shutdown()

    run(body())


def test_a_cut_stream_is_counted_with_tiktoken_off_the_loop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "tiktoken"))

    async def body() -> None:
        engine = await engine_for(config(tmp_path, TOKENS))
        service = service_of(engine)
        rec = await post(engine, "!mock cut=2 tell me a story", stream=True)
        assert rec.status == 200  # the head was sent; the stream then broke off without usage
        await eventually(lambda: service.stats.counted_usage == 1, timeout=60)
        # settled as the counted prompt plus the completion reservation: only the prompt part moves
        assert 0 < service.stats.tokens_refunded < 100
        await engine.shutdown()

    run(body())


def test_a_failed_upstream_costs_a_request_and_no_tokens(tmp_path: Path) -> None:
    cfg = config(tmp_path, """
[limits]
default_policy = "p"
[limits.policies.p]
requests_per_minute = 10
tokens_per_minute = 100000
""")

    async def body() -> None:
        engine = await engine_for(cfg)
        rec = await post(engine, "!mock status=500")
        assert rec.status == 500
        assert service_of(engine).stats.tokens_refunded > 4096  # the whole estimate came back
        ok = await post(engine)
        assert ok.header("x-ratelimit-remaining-requests") == "8"  # the failed request still counted
        await engine.shutdown()

    run(body())


# -- concurrency -------------------------------------------------------------------------------------------


def test_concurrency_slots_are_left_on_every_path(tmp_path: Path) -> None:
    cfg = config(tmp_path, """
[limits]
default_policy = "c"
[limits.policies.c]
concurrent = 1
""")

    async def body() -> None:
        engine = await engine_for(cfg)
        service = service_of(engine)
        key = service.phase._anon.scoped[0].limit.key
        for content, stream in (("hi", False), ("!mock status=500", False), ("!mock cut=1", True),
                                ("hi", True)):
            rec = await post(engine, content, stream=stream)
            assert rec.status in (200, 500)
            await eventually(lambda: not service._leaving and (service._leaver is None or service._leaver.done()))
            assert await service.source.inflight(key) == 0
        # two at once: the second is refused while the first holds the slot, admitted once it is left
        first = await admit(service, Ctx())
        err = await refused(service, Ctx())
        assert err.status == 429 and "Too many requests in flight: concurrent of policy c" in err.message
        service.phase.on_settle(first.answered(None, status=500))
        await eventually(lambda: not service._leaving)
        await eventually(lambda: service._leaver is None or service._leaver.done())
        await admit(service, Ctx())
        assert service.stats.refused_concurrency == 1
        await engine.shutdown()

    run(body())


class GoneRecorder(Recorder):
    """A client that disconnects after the first streamed chunk."""

    async def write(self, chunk: bytes) -> None:
        raise ClientGone("the client went away")


def test_a_client_gone_mid_stream_leaves_its_slot_and_a_cancelled_entry_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "tiktoken"))
    cfg = config(tmp_path, """
[limits]
default_policy = "c"
[limits.policies.c]
concurrent = 1
""")

    async def body() -> None:
        engine = await engine_for(cfg)
        service = service_of(engine)
        key = service.phase._anon.scoped[0].limit.key
        body = json.dumps({"model": "chat", "messages": [{"role": "user", "content": "hi"}], "stream": True})
        req = Request("POST", "/v1/chat/completions", "", 11,
                      [(b"host", b"t"), (b"content-type", b"application/json")], body.encode(), True)
        with pytest.raises(ClientGone):
            await engine.handle(req, GoneRecorder())
        await eventually(lambda: service._leaver is None or service._leaver.done())
        assert await service.source.inflight(key) == 0

        # a request cancelled while it waits to enter: the slot it gets is left all the same
        entering = service.client.enter
        inside, entered = asyncio.Event(), asyncio.Event()

        async def slow_enter(*args: Any) -> Any:
            inside.set()
            await asyncio.sleep(0.05)
            out = await entering(*args)
            entered.set()
            return out

        service.client.enter = slow_enter  # type: ignore[method-assign]
        task = asyncio.ensure_future(admit(service, Ctx()))
        await asyncio.wait_for(inside.wait(), 30.0)  # it waits to enter: cancel it there
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.wait_for(entered.wait(), 30.0)  # the slot was got all the same...
        await eventually(lambda: service._leaver is None or service._leaver.done())  # ...and left
        assert await service.source.inflight(key) == 0
        await engine.shutdown()

    run(body())


# -- fail modes --------------------------------------------------------------------------------------------


class DownSource(LeaseSource):
    """A shared state that is never there."""

    lease_ttl = 2.0
    holder_ttl = 10.0

    @property
    def healthy(self) -> bool:
        return False

    async def batch(self, ops: Sequence[Op], now: float) -> list[Grant]:
        raise SharedStateUnavailable("down for the test")

    async def enter(self, limit_key: str, limit: int) -> bool:
        raise SharedStateUnavailable("down for the test")

    async def leave(self, limit_key: str) -> None:
        raise SharedStateUnavailable("down for the test")

    async def keepalive(self) -> None:
        raise SharedStateUnavailable("down for the test")

    async def inflight(self, limit_key: str) -> int:
        raise SharedStateUnavailable("down for the test")

    async def ping(self) -> bool:
        return False

    async def close(self) -> None:
        return None


def test_fail_open_admits_at_the_workers_share_and_fail_closed_answers_503(tmp_path: Path) -> None:
    cfg = config(tmp_path, """
[limits]
default_policy = "open"
apply = { models = { "small" = "closed" } }
[limits.policies.open]
requests_per_minute = 4
[limits.policies.closed]
requests_per_minute = 100
fail_mode = "fail_closed"
""")

    async def body() -> None:
        service = await started(cfg, source=DownSource())
        err = await refused(service, Ctx(model="small"))
        assert err.status == 503 and err.code == "limits_unavailable" and service.client.degraded
        assert dict(err.headers).get("retry-after")
        # fail_open: local limits, each of the 2 workers at its share (4 / 2 = 2 at once)
        await admit(service, Ctx())
        await admit(service, Ctx())
        err = await refused(service, Ctx())
        assert err.status == 429
        assert service.stats.unavailable == 1
        await service.stop()

    run(body())


# -- cost and budgets --------------------------------------------------------------------------------------


def test_cost_goes_into_the_call_and_follows_the_pricing_overrides(tmp_path: Path) -> None:
    cfg = config(tmp_path, """
[limits.budgets.b]
usd_per_day = 100.0
[pricing."gpt-4o"]
input = 2.0
output = 8.0
[pricing."chat"]
input = 1.0
""")

    async def body() -> None:
        service = await started(cfg)
        ctx = Ctx(Key("k1", Tenant("t1")), model="priced")
        service.phase.on_settle(ctx.answered(Usage(1000, 500, 1500), upstream_model="gpt-4o"))
        assert ctx.cost == pytest.approx((1000 * 2.0 + 500 * 8.0) / 1e6)
        # an upstream model without a price: the model the client asked for
        ctx = Ctx(Key("k1", Tenant("t1")), model="chat")
        service.phase.on_settle(ctx.answered(Usage(1000, 500, 1500), upstream_model="mock-1"))
        assert ctx.cost == pytest.approx(1000 * 1.0 / 1e6)
        assert service.stats.spend_usd == pytest.approx(0.007)
        await service.stop()

    run(body())


BUDGET = """
[limits.budgets.b]
usd_per_day = 0.01
action = "{action}"
{extra}
[pricing."gpt-4o"]
input = 1.0
output = 1.0
"""
#: a token costs a millionth of a dollar (BUDGET): 10,000 tokens spend the budget


def test_a_spent_budget_blocks_and_its_spend_survives_a_restart(tmp_path: Path) -> None:
    cfg = config(tmp_path, BUDGET.format(action="block", extra=""))
    key = Key("k1", Tenant("t1", budget="b"))

    async def body() -> None:
        service = await started(cfg)
        ctx = await admit(service, Ctx(key, model="priced", max_tokens=100))
        service.phase.on_settle(ctx.answered(Usage(10_000, 0, 10_000), upstream_model="gpt-4o"))  # 0.01 USD
        err = await refused(service, Ctx(key, model="priced", max_tokens=100))
        assert isinstance(err, QuotaExceeded) and err.status == 429
        body = json.loads(err.to_body())["error"]
        assert (body["type"], body["code"]) == ("insufficient_quota", "insufficient_quota")
        assert ("x-should-retry", "false") in err.headers and "Budget b of tenant t1" in err.message
        await service.stop()  # writes the pending spend

        store = await open_store(cfg.store.url)
        day = utc_period(time.time())[0]
        assert await store.get_spend("tenant", "t1", day) == pytest.approx(0.01)
        assert await store.get_spend("key", "k1", day) == pytest.approx(0.01)
        await store.close()

        again = await started(cfg)  # a restarted worker reads the spend before admitting
        err = await refused(again, Ctx(key, model="priced", max_tokens=100))
        assert isinstance(err, QuotaExceeded)
        assert again.stats.budget_blocked == 1
        await again.stop()

    run(body())


def test_reservations_are_seen_by_every_worker_at_once(tmp_path: Path) -> None:
    """Two workers (services on one table and store): a reservation in flight on one leaves the other
    only what is left, before any spend reaches the store."""
    cfg = config(tmp_path, BUDGET.format(action="block", extra=""))
    key = Key("k1", Tenant("t1", budget="b"))

    async def body() -> None:
        a = await started(cfg)
        b = await started(cfg)
        # about 0.006 USD at most each (6000 completion tokens); the budget is 0.01 a day
        ctx = await admit(a, Ctx(key, model="priced", max_tokens=6000))
        err = await refused(b, Ctx(key, model="priced", max_tokens=6000))
        assert isinstance(err, QuotaExceeded) and "held by other workers" in err.message
        assert dict(err.headers).get("retry-after") and ("x-should-retry", "false") not in err.headers
        assert json.loads(err.to_body())["error"]["code"] == "insufficient_quota"
        a.phase.on_settle(ctx.answered(Usage(1000, 0, 1000), upstream_model="gpt-4o"))  # cost 0.001
        await a.budgets.flush()
        # b remembers its refusal for a moment (a flood of refused requests is not a flood of calls)
        ctx = await admit_soon(b, Ctx(key, model="priced", max_tokens=6000))  # 0.001 spent + 0.006 fit
        # more than is left even with nothing in flight: not to be retried
        err = await refused(a, Ctx(key, model="priced", max_tokens=20_000))
        assert "cannot cover this request" in err.message and ("x-should-retry", "false") in err.headers
        b.phase.on_settle(ctx.answered(Usage(6000, 0, 6000), upstream_model="gpt-4o"))
        await b.budgets.flush()
        counter = b.budgets.counters["tenant/t1"]
        assert counter.spent_day == pytest.approx(0.007) and counter.holds == 0.0
        assert b.shared_calls >= 1
        await a.stop()
        await b.stop()

    run(body())


def test_a_reservation_that_does_not_fit_serves_the_downgrade_model(tmp_path: Path) -> None:
    cfg = config(tmp_path, BUDGET.format(action="downgrade", extra='downgrade_model = "small"'))
    key = Key("k1", Tenant("t1", budget="b"))

    async def body() -> None:
        service = await started(cfg)
        ctx = await admit(service, Ctx(key, model="priced", max_tokens=100))
        assert ctx.route_model is None and ctx.limits is not None  # reserved
        ctx = await admit(service, Ctx(key, model="priced", max_tokens=20_000))  # up to 0.02 USD: no
        assert ctx.route_model == "small" and ctx.header("x-gateway-downgraded") == "priced -> small"
        assert ctx.limits is None  # the downgrade model has no price here: nothing to reserve
        await service.stop()

    run(body())


def test_a_request_refused_by_a_rate_limit_releases_its_reservation(tmp_path: Path) -> None:
    cfg = config(tmp_path, BUDGET.format(action="block", extra="") + """
[limits]
default_policy = "p"
[limits.policies.p]
requests_per_minute = 1
""")
    key = Key("k1", Tenant("t1", budget="b"))

    async def body() -> None:
        service = await started(cfg)
        ctx = await admit(service, Ctx(key, model="priced", max_tokens=100))
        counter = service.budgets.counters["tenant/t1"]
        assert counter.inflight == 1 and counter.used > 0.0
        err = await refused(service, Ctx(key, model="priced", max_tokens=100))
        assert isinstance(err, RateLimited) and not isinstance(err, QuotaExceeded)
        assert counter.inflight == 1  # the refused request's reservation was let go
        service.phase.on_settle(ctx.answered(Usage(50, 100, 150), upstream_model="gpt-4o"))
        assert counter.inflight == 0 and counter.used == 0.0
        assert counter.pending == pytest.approx(150e-6)  # the real cost, on its way to the counter
        await service.stop()

    run(body())


def test_an_answer_without_usage_holds_its_reservation_until_counted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "tiktoken"))
    cfg = config(tmp_path, BUDGET.format(action="block", extra=""))
    key = Key("k1", Tenant("t1", budget="b"))

    async def body() -> None:
        service = await started(cfg)
        ctx = await admit(service, Ctx(key, model="priced", max_tokens=100))
        counter = service.budgets.counters["tenant/t1"]
        service.phase.on_settle(ctx.answered(None, upstream_model="gpt-4o"))  # a stream cut short
        assert counter.inflight == 1  # the reservation stands while the prompt is counted
        await eventually(lambda: service.stats.counted_usage == 1, timeout=60)
        assert counter.inflight == 0
        await service.budgets.flush()
        # the prompt counted, the completion at its reservation (100 tokens): a millionth USD each
        assert 100e-6 < counter.spent_day < 200e-6 and counter.holds == 0.0
        await service.stop()

    run(body())


def test_a_budget_alone_lets_the_upstreams_rate_limit_headers_through(tmp_path: Path) -> None:
    secret = "S" * 43
    cfg = config(tmp_path, f"""
[auth]
required = true
[[auth.keys]]
id = "budgetonlyab"
digest = "{digest(secret, b'')}"
tenant = "t1"
[tenants.t1]
budget = "b"
""" + BUDGET.format(action="block", extra=""))

    async def body() -> None:
        engine = await engine_for(cfg)
        key = format_key("budgetonlyab", secret)
        rec = await post(engine, "!mock status=429", model="priced", key=key, max_tokens=10)
        # reserved (no limit of the gateway's applies): the upstream's own x-ratelimit-* pass
        assert rec.status == 429 and rec.header("x-ratelimit-remaining-requests") == "0"
        counter = service_of(engine).budgets.counters["tenant/t1"]
        assert counter.inflight == 0 and counter.pending == 0.0  # released, nothing spent
        await engine.shutdown()

    run(body())


def test_a_spent_budget_downgrades_to_the_cheaper_model(tmp_path: Path) -> None:
    cfg = config(tmp_path, BUDGET.format(action="downgrade", extra='downgrade_model = "small"'))
    key = Key("k1", Tenant("t1", budget="b"))

    async def body() -> None:
        service = await started(cfg)
        ctx = await admit(service, Ctx(key, model="priced", max_tokens=100))
        assert ctx.route_model is None
        service.phase.on_settle(ctx.answered(Usage(20_000, 0, 20_000), upstream_model="gpt-4o"))
        ctx = await admit(service, Ctx(key, model="priced", max_tokens=100))
        assert ctx.route_model == "small"
        assert ctx.header("x-gateway-downgraded") == "priced -> small"
        assert service.stats.downgraded == 1
        await service.stop()

    run(body())


def test_a_budget_alert_fires_once_per_period_and_the_call_proceeds(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="gateway.limits")
    cfg = config(tmp_path, BUDGET.format(
        action="alert", extra='alert_at = 0.5\nalert_webhook = "http://hooks.example.com/budget"'))
    key = Key("k1", Tenant("t1"), budget="b")

    async def body() -> None:
        service = await started(cfg)
        posted: list[tuple[str, dict[str, Any]]] = []

        async def post_hook(url: str, payload: dict[str, Any]) -> None:
            posted.append((url, payload))

        service.book._post = post_hook
        for tokens in (6_000, 3_000, 5_000):  # 0.006 (over 50%), 0.009, 0.014 (over 100%): one alert
            ctx = await admit(service, Ctx(key, model="priced"))
            service.phase.on_settle(ctx.answered(Usage(tokens, 0, tokens), upstream_model="gpt-4o"))
        await admit(service, Ctx(key, model="priced"))  # "alert" never refuses
        await eventually(lambda: posted)
        await asyncio.sleep(0.05)  # no second alert follows (a slow machine can only make this pass)
        assert len(posted) == 1 and service.stats.alerts == 1
        url, payload = posted[0]
        assert url == "http://hooks.example.com/budget"
        assert (payload["budget"], payload["scope"], payload["id"], payload["period"]) == ("b", "key", "k1", "day")
        assert any("budget b: key k1 spent" in r.message for r in caplog.records)
        await service.stop()

    run(body())


def test_the_example_file_runs_keys_policies_budgets_and_prices(tmp_path: Path) -> None:
    example = Path(__file__).resolve().parents[2] / "examples" / "limits.toml"
    (tmp_path / "limits.toml").write_text(example.read_text())
    cfg = load_config(tmp_path / "limits.toml")  # its store (and the limits table) next to the copy
    trial = "gw-trialdemokey-TrialTTTTTTTTTTTTTTTTTTTTTTTTTTTTTTTTTTTTTT"
    acme = "gw-acmedemokey2-AcmeDDDDDDDDDDDDDDDDDDDDDDDDDDDDDDDDDDDDDDD"

    async def body() -> None:
        engine = await engine_for(cfg)
        ok = await post(engine, model="gpt-4o", key=acme)
        assert ok.status == 200 and ok.header("x-ratelimit-limit-tokens")
        statuses = [(await post(engine, "hi", model="gpt-4o", key=trial, max_tokens=16)).status
                    for _ in range(10)]
        # 0.001 USD a day; a call reserves about 0.00021 USD and costs about 0.00017
        assert statuses == [200] * 5 + [429] * 5, statuses
        last = await post(engine, "hi", model="gpt-4o", key=trial, max_tokens=16)
        assert last.json()["error"]["code"] == "insufficient_quota"
        # without max_tokens a call reserves 1024 completion tokens: more than the whole budget
        whole = await post(engine, "hi", model="gpt-4o", key=trial)
        assert "cannot cover this request" in whole.json()["error"]["message"]
        await engine.shutdown()

    run(body())
