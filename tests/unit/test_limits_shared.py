"""Deployment-wide limits: the lease sources (shared-memory table, Redis) and the worker's ``LeaseClient``.

Source tests run twice: on the local table (a file in the test's tmp_path) and on Redis (a real server
started once per test run by ``redisproc``, flushed before each test; never a fake, the Lua must meet the
real thing). "Another worker" or "another node" is a second source instance on the same file or server;
tests that need another OS process (a holder killed with SIGKILL, a lock held elsewhere) run a child
Python. The exactness and bound tests with several processes live in
``tests/integration/test_limits_cluster.py``.

Redis buckets run on the server's clock, so their tests use slow refills (a unit per hour) and compare
with a tolerance; the local table takes a clock, and its tests compare with ``limit_py.Bucket`` exactly.

No pytest-asyncio: ``run`` drives each test's coroutine with ``asyncio.run`` under a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import math
import mmap
import random
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import redisproc  # tests/ is on sys.path: the suite's conftest.py lives there, outside any package

from gateway._core import limit_py
from gateway.limits.budgets import SpendBook, SpendView
from gateway.limits.reserve import ASK as ASK_BUDGET
from gateway.limits.reserve import RESERVED, UNCHECKED, BudgetClient
from gateway.limits.shared import (
    ADMITTED,
    ASK,
    BudgetGrant,
    BudgetOp,
    Grant,
    LeaseClient,
    LeaseSource,
    Limit,
    Op,
    SharedStateUnavailable,
    check_budget_op,
)
from gateway.limits.shared_local import LocalLeaseSource, budget_step, gcra, reconfigure
from gateway.limits.shared_redis import RedisLeaseSource
from gateway.limits.stats import LimitStats

TEST_DEADLINE = 30.0
HOUR = 3600.0


def run(coro: Awaitable[Any]) -> Any:
    async def bounded() -> Any:
        return await asyncio.wait_for(coro, TEST_DEADLINE)

    return asyncio.run(bounded())


async def until(predicate: Callable[[], Awaitable[bool] | bool], what: str, timeout: float = 20.0) -> None:
    """Wait for ``predicate`` (sync or async) to hold; AssertionError if it never does within ``timeout``
    (generous: the things waited for take a fraction of a second on an idle machine)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return
        assert time.monotonic() < deadline, f"timed out after {timeout:g}s waiting for {what}"
        await asyncio.sleep(0.02)


class Clock:
    """A settable clock for the local table: its arithmetic is compared exactly."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Backend:
    """How a test opens sources of one kind, all on the same shared state."""

    def __init__(self, name: str, where: str) -> None:
        self.name = name
        self.where = where

    async def open(self, **options: Any) -> LeaseSource:
        if self.name == "local":
            return await LocalLeaseSource.open(self.where, **options)
        return await RedisLeaseSource.open(self.where, **options)

    @contextlib.asynccontextmanager
    async def source(self, **options: Any) -> AsyncIterator[LeaseSource]:
        source = await self.open(**options)
        try:
            yield source
        finally:
            await source.close()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[redisproc.RedisServer]:
    with redisproc.start(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture(params=["local", "redis"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "local":
        return Backend("local", str(tmp_path / "limits.table"))
    server: redisproc.RedisServer = request.getfixturevalue("redis_server")
    server.flushall()
    return Backend("redis", server.url)


def redis_client(server: redisproc.RedisServer) -> redis.Redis:
    return redis.Redis.from_url(server.url)


def key() -> str:
    return f"test:{uuid.uuid4().hex[:12]}"


# == the arithmetic =========================================================================================


def test_gcra_is_the_bucket_of_the_core() -> None:
    """``gcra`` on a stored (level, stamp) is ``limit_py.Bucket``, float for float, on random programs."""
    rng = random.Random(5)
    for _ in range(300):
        rate = rng.choice([1 / 60, 0.5, 1.0, 10.0, 1000 / 60, 1e4 / 86400, rng.uniform(0.001, 1e3)])
        burst = rng.choice([1.0, 3.0, 10.0, 60.0, rng.uniform(0.5, 1e4)])
        bucket = limit_py.Bucket(rate, burst)
        level, stamp = 0.0, -math.inf
        now = rng.choice([0.0, 3e7, 1e6 + 0.25])
        for _ in range(rng.randint(1, 40)):
            now += rng.choice([0.0, 0.0, 1.0, 0.5, rng.uniform(0, 3)]) / rate
            kind = rng.choice(["acquire", "acquire", "charge", "refund", "give_back", "peek"])
            amount = rng.choice([1.0, 1.0, 2.0, 0.0, rng.uniform(0, 1.3) * burst])
            level, stamp, granted, wait = gcra(kind, level, stamp, rate, burst, now, amount, amount, 0.0)
            if kind == "acquire":
                assert wait == bucket.take(now, amount)
                assert granted == (amount if wait == 0.0 else 0.0)
            elif kind == "charge":
                bucket.force(now, amount)
            elif kind in ("refund", "give_back"):
                bucket.refund(now, amount)
            current = level - (now - stamp) * rate if level > 0.0 and now > stamp else level
            assert max(current, 0.0) / rate == bucket.reset_after(now)


def test_gcra_grants_whole_units_up_to_the_size() -> None:
    # 10 fit: all of a size of 4
    level, stamp, granted, wait = gcra("acquire", 0.0, -math.inf, 1.0, 10.0, 0.0, 1.0, 4.0, 0.0)
    assert (level, granted, wait) == (4.0, 4.0, 0.0)
    # 6 left: a size of 100 gets 6 (whole units)
    level, stamp, granted, wait = gcra("acquire", level, stamp, 1.0, 10.0, 0.0, 1.0, 100.0, 0.0)
    assert (level, granted, wait) == (10.0, 6.0, 0.0)
    # 0.5 s later half a unit is back: a fractional amount fits, a unit does not
    _, _, granted, wait = gcra("acquire", level, stamp, 1.0, 10.0, 0.5, 0.5, 8.0, 0.0)
    assert (granted, wait) == (0.5, 0.0)
    _, _, granted, wait = gcra("acquire", level, stamp, 1.0, 10.0, 0.5, 1.0, 8.0, 0.0)
    assert granted == 0.0 and wait == pytest.approx(0.5)
    # returning comes first: giving back 3 lets a lease of 3 through at once
    level, stamp, granted, wait = gcra("acquire", level, stamp, 1.0, 10.0, 0.0, 1.0, 5.0, 3.0)
    assert (level, granted, wait) == (10.0, 3.0, 0.0)
    # more than the burst never fits
    assert gcra("acquire", 0.0, -math.inf, 1.0, 10.0, 0.0, 11.0, 11.0, 0.0)[3] == math.inf


# == sources ================================================================================================


def test_source_grants_leases_refuses_and_settles(backend: Backend) -> None:
    async def body() -> None:
        async with backend.source(lease_ttl=3.0) as src:
            k, rate, burst = key(), 1 / HOUR, 10.0
            grant = await src.acquire(k, rate, burst, 1, 100.0, size=4)
            assert grant == Grant(4.0, 0.0, grant.remaining, grant.reset_after, 103.0)
            assert math.floor(grant.remaining) == 6 and grant.reset_after == pytest.approx(4 * HOUR, rel=1e-3)
            grant = await src.acquire(k, rate, burst, 1, 100.0, size=100)
            assert (grant.granted, grant.ok) == (6.0, True)  # what is left, in whole units
            refused = await src.acquire(k, rate, burst, 1, 100.0, size=4)
            assert not refused.ok and refused.granted == 0.0 and refused.expires_at == 0.0
            assert refused.retry_after == pytest.approx(HOUR, rel=1e-3)
            assert math.floor(refused.remaining) == 0
            assert refused.reset_after == pytest.approx(10 * HOUR, rel=1e-3)
            await src.give_back(k, rate, burst, 3)
            remaining, reset_after = await src.peek(k, rate, burst)
            assert math.floor(remaining) == 3 and reset_after == pytest.approx(7 * HOUR, rel=1e-3)
            refused = await src.acquire(k, rate, burst, 4, 100.0)
            assert refused.retry_after == pytest.approx(HOUR, rel=1e-3)  # one more unit needed
            assert (await src.acquire(k, rate, burst, 3, 100.0, size=10)).granted == 3.0
            await src.charge(k, rate, burst, 5)  # usage beyond the reservation: into debt
            remaining, reset_after = await src.peek(k, rate, burst)
            assert remaining == 0.0 and reset_after == pytest.approx(15 * HOUR, rel=1e-3)
            assert (await src.acquire(k, rate, burst, 1, 100.0)).retry_after == pytest.approx(
                6 * HOUR, rel=1e-3
            )
            await src.refund(k, rate, burst, 100)  # never above full
            assert await src.peek(k, rate, burst) == (10.0, 0.0)
            assert (await src.acquire(k, rate, burst, 11, 100.0)).retry_after == math.inf
            # an exchange: give back 2 of a lease and take a new one in one atomic call
            assert (await src.acquire(k, rate, burst, 1, 100.0, size=10)).granted == 10.0
            grant = await src.acquire(k, rate, burst, 1, 100.0, size=2, returning=2)
            assert grant.granted == 2.0 and math.floor(grant.remaining) == 0
            with pytest.raises(ValueError):
                await src.acquire(k, 0.0, burst, 1, 100.0)
            with pytest.raises(ValueError):
                await src.charge(k, rate, burst, math.inf)

    run(body())


def test_reconfigure_keeps_the_units_used_up_to_the_new_burst() -> None:
    # raised: what was used stays used, the rest of the new burst is there at once
    assert reconfigure(5.0, 0.0, 1.0, 5.0, 100.0, 0.0) == (5.0, 0.0)
    # lowered below what was used: full (no debt is made up)
    assert reconfigure(50.0, 0.0, 1.0, 100.0, 5.0, 0.0) == (5.0, 0.0)
    assert reconfigure(3.0, 0.0, 1.0, 100.0, 5.0, 0.0) == (3.0, 0.0)
    # in debt (charged beyond the burst): kept whole when raised, in proportion when lowered
    assert reconfigure(15.0, 0.0, 1.0, 10.0, 20.0, 0.0) == (15.0, 0.0)
    assert reconfigure(15.0, 0.0, 1.0, 10.0, 5.0, 0.0) == (7.5, 0.0)
    # refilled at the old rate up to now first
    assert reconfigure(10.0, 0.0, 2.0, 10.0, 100.0, 3.0) == (4.0, 3.0)


def test_source_adopts_a_changed_policy(backend: Backend) -> None:
    async def body() -> None:
        async with backend.source() as src:
            k = key()
            assert (await src.acquire(k, 1 / HOUR, 10.0, 5, 0.0)).ok
            await src.charge(k, 1 / HOUR, 20.0, 0)  # reload: burst 10 -> 20, the 5 used stay used
            remaining, _ = await src.peek(k, 1 / HOUR, 20.0)
            assert remaining == pytest.approx(15.0, abs=0.01)
            await src.charge(k, 1 / HOUR, 3.0, 0)  # lowered below what is used: full
            remaining, reset = await src.peek(k, 1 / HOUR, 3.0)
            assert remaining == pytest.approx(0.0, abs=0.01) and reset == pytest.approx(3 * HOUR, rel=1e-3)
            await src.charge(k, 1 / HOUR, 3.0, 3)  # into debt: 6 used of 3
            await src.charge(k, 1 / HOUR, 30.0, 0)  # raised: the debt is kept whole
            remaining, _ = await src.peek(k, 1 / HOUR, 30.0)
            assert remaining == pytest.approx(24.0, abs=0.01)

    run(body())


def test_batch_runs_several_limits_in_one_call(backend: Backend) -> None:
    async def body() -> None:
        async with backend.source() as src:
            a, b, c = key(), key(), key()
            ops = [
                Op("acquire", a, 1 / HOUR, 5.0, 1.0, 3.0),
                Op("acquire", b, 1 / HOUR, 1.0, 2.0, 2.0),
                Op("charge", c, 1 / HOUR, 4.0, 1.0),
                Op("peek", c, 1 / HOUR, 4.0),
            ]
            grants = await src.batch(ops, 50.0)
            assert [g.granted for g in grants] == [3.0, 0.0, 0.0, 0.0]
            assert [g.ok for g in grants] == [True, False, True, True]
            assert grants[1].retry_after == math.inf
            assert math.floor(grants[3].remaining) == 3

    run(body())


def test_local_table_matches_the_bucket_exactly(tmp_path: Path) -> None:
    """Stored, reloaded and stepped through the table, a bucket is still ``Bucket`` to the last bit."""

    async def body() -> None:
        clock = Clock(500.0)
        async with Backend("local", str(tmp_path / "t")).source(clock=clock) as src:
            rng = random.Random(11)
            rate, burst = 7 / 60, 7.0
            bucket = limit_py.Bucket(rate, burst)
            for _ in range(400):
                clock.now += rng.choice([0.0, 0.0, 1 / rate, 0.5 / rate, rng.uniform(0, 2) / rate])
                amount = rng.choice([1.0, 1.0, 2.0, 0.5])
                if rng.random() < 0.8:
                    grant = await src.acquire("k", rate, burst, amount, 0.0)
                    assert grant.retry_after == bucket.take(clock.now, amount)
                else:
                    await src.charge("k", rate, burst, amount)
                    bucket.force(clock.now, amount)
                remaining, reset_after = await src.peek("k", rate, burst)
                assert (remaining, reset_after) == (
                    bucket.remaining(clock.now),
                    bucket.reset_after(clock.now),
                )

    run(body())


def test_redis_keys_carry_a_hash_tag_and_vanish_when_full(redis_server: redisproc.RedisServer) -> None:
    redis_server.flushall()

    async def body() -> None:
        async with Backend("redis", redis_server.url).source() as src:
            await src.acquire("tenant:a}b", 1.0, 10.0, 5, 0.0)
            await src.enter("tenant:a}b", 3)
            with redis_client(redis_server) as r:
                assert sorted(r.keys("*")) == [b"{gw:lim:tenant:a}b}", b"{gw:lim:tenant:a}b}:c"]
                # both keys hash on "gw:lim:tenant:a": one cluster slot
                assert 4000 < r.pttl("{gw:lim:tenant:a}b}") <= 6000  # full again in 5 s, plus a second
                await src.refund("tenant:a}b", 1.0, 10.0, 10)
                assert r.exists("{gw:lim:tenant:a}b}") == 0  # a full bucket is a missing one
            await src.leave("tenant:a}b")

    run(body())


def test_redis_noscript_falls_back_to_loading_the_scripts(redis_server: redisproc.RedisServer) -> None:
    redis_server.flushall()

    async def body() -> None:
        async with Backend("redis", redis_server.url).source() as src:
            k = key()
            assert (await src.acquire(k, 1 / HOUR, 10.0, 1, 0.0)).ok
            assert await src.enter(k, 5)
            with redis_client(redis_server) as r:
                r.script_flush()
                # both scripts gone at once, in one batch and in single calls
                grants = await src.batch(
                    [Op("acquire", k, 1 / HOUR, 10.0, 1.0), Op("peek", k, 1 / HOUR, 10.0)], 0.0
                )
                assert grants[0].ok and math.floor(grants[1].remaining) == 8
                r.script_flush()
                assert await src.inflight(k) == 1
                assert await src.enter(k, 5)
                assert await src.inflight(k) == 2
                r.script_flush()
                assert (await src.acquire(k, 1 / HOUR, 10.0, 1, 0.0)).ok
            assert src.healthy

    run(body())


def test_redis_group_commit_sends_concurrent_calls_together(redis_server: redisproc.RedisServer) -> None:
    redis_server.flushall()

    async def body() -> None:
        async with Backend("redis", redis_server.url).source() as src:
            assert isinstance(src, RedisLeaseSource)
            trips: list[int] = []
            roundtrip = src._roundtrip

            async def counting(commands: list[Any]) -> list[Any]:
                trips.append(len(commands))
                return await roundtrip(commands)

            src._roundtrip = counting  # type: ignore[method-assign]
            keys = [key() for _ in range(10)]
            grants = await asyncio.gather(*(src.acquire(k, 1 / HOUR, 5.0, 1, 0.0) for k in keys))
            assert all(g.ok for g in grants)
            assert sum(trips) == 10 and len(trips) <= 3  # the first alone, the rest together

    run(body())


def test_sources_on_one_state_share_the_bucket(backend: Backend) -> None:
    async def body() -> None:
        async with backend.source() as one, backend.source() as two:
            k = key()
            assert (await one.acquire(k, 1 / HOUR, 3.0, 1, 0.0, size=2)).granted == 2.0
            assert (await two.acquire(k, 1 / HOUR, 3.0, 1, 0.0, size=2)).granted == 1.0
            assert not (await one.acquire(k, 1 / HOUR, 3.0, 1, 0.0)).ok

    run(body())


# == concurrency counters ===================================================================================


def test_concurrency_counters_across_holders(backend: Backend) -> None:
    async def body() -> None:
        async with backend.source() as one, backend.source() as two:
            k = key()
            assert await one.enter(k, 3) and await two.enter(k, 3) and await one.enter(k, 3)
            assert not await two.enter(k, 3)
            assert await one.inflight(k) == 3 == await two.inflight(k)
            await two.leave(k)
            await two.leave(k)  # more leaves than enters: nothing
            assert await one.inflight(k) == 2
            await one.keepalive()
            assert await two.enter(k, 3)
            assert not await one.enter(k, 3)
            await one.leave(k)
            await one.leave(k)
            await two.leave(k)
            await one.keepalive()
            assert await one.inflight(k) == 0

    run(body())


_HOLDER_CHILD = textwrap.dedent(
    """
    import asyncio, sys, time
    from gateway.limits.shared_local import LocalLeaseSource
    from gateway.limits.shared_redis import RedisLeaseSource

    async def main(kind, where, key, count):
        cls = LocalLeaseSource if kind == "local" else RedisLeaseSource
        src = await cls.open(where, holder_ttl=2.0)
        for _ in range(count):
            assert await src.enter(key, 10)
        print("entered", flush=True)
        await asyncio.sleep(60)

    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])))
    """
)


def test_a_killed_holder_stops_counting_after_its_ttl(backend: Backend) -> None:
    k = key()
    child = subprocess.Popen(
        [sys.executable, "-c", _HOLDER_CHILD, backend.name, backend.where, k, "3"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "entered"
        child.send_signal(signal.SIGKILL)
        child.wait(10)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(10)
        if child.stdout is not None:
            child.stdout.close()

    async def body() -> None:
        async with backend.source() as src:
            assert await src.inflight(k) == 3  # the dead holder's entry still counts...
            assert not await src.enter(k, 3)
            async def expired() -> bool:
                return await src.inflight(k) == 0

            await until(expired, "the dead holder's entry to expire (holder_ttl 2 s)")  # ...until its expiry
            assert await src.enter(k, 3)
            await src.leave(k)

    run(body())


# == the local table ========================================================================================


_LOCK_CHILD = textwrap.dedent(
    """
    import fcntl, os, sys, time
    import select
    fd = os.open(sys.argv[1], os.O_RDWR)
    fcntl.lockf(fd, fcntl.LOCK_EX, 1, 0)
    print("locked", flush=True)
    select.select([sys.stdin], [], [], float(sys.argv[2]))  # until told (or, at the latest, this long)
    fcntl.lockf(fd, fcntl.LOCK_UN, 1, 0)
    """
)


def test_local_lock_held_elsewhere_never_blocks_the_loop(tmp_path: Path) -> None:
    path = tmp_path / "t"

    async def body() -> None:
        async with Backend("local", str(path)).source() as src:
            await src.peek("k", 1.0, 5.0)  # the table exists
            # the other process holds the lock until the test tells it to let go (at the latest after 20 s,
            # so that a blocked loop, which could not tell it, fails the test instead of hanging it)
            child = await asyncio.create_subprocess_exec(
                sys.executable, "-c", _LOCK_CHILD, str(path), "20", stdout=asyncio.subprocess.PIPE,
                stdin=asyncio.subprocess.PIPE,
            )
            try:
                assert child.stdout is not None and (await child.stdout.readline()).strip() == b"locked"
                ticks = 0

                async def ticker() -> None:
                    nonlocal ticks
                    while True:
                        await asyncio.sleep(0.01)
                        ticks += 1

                tick_task = asyncio.create_task(ticker())
                acquiring = asyncio.create_task(src.acquire("k", 1.0, 5.0, 2, 0.0))
                await until(lambda: ticks >= 5 or acquiring.done(), "the loop to tick while acquiring")
                assert not acquiring.done()  # it waits for the other process...
                assert ticks >= 5  # ...on the worker thread: the loop kept running
                assert child.stdin is not None
                child.stdin.write(b"go\n")
                await child.stdin.drain()
                grant = await acquiring
                tick_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await tick_task
                assert grant.granted == 2.0
            finally:
                if child.stdin is not None:
                    child.stdin.close()
                await child.wait()

    run(body())


def test_local_torn_slot_is_repaired_on_the_safe_side(tmp_path: Path) -> None:
    async def body() -> None:
        clock = Clock()
        async with Backend("local", str(tmp_path / "t")).source(clock=clock) as src:
            assert isinstance(src, LocalLeaseSource)
            assert (await src.acquire("k", 1.0, 10.0, 1, 0.0)).ok
            at, _ = src._find(src._digest("k"), 4096, 64, src._slots)
            assert at > 0
            with open(src.path, "r+b") as f, mmap.mmap(f.fileno(), 0) as m:
                m[at + 16 : at + 24] = (int.from_bytes(m[at + 16 : at + 24], "little") | 1).to_bytes(
                    8, "little"
                )
            # a writer died mid-write: the bucket is taken as empty, refilling from now
            remaining, reset_after = await src.peek("k", 1.0, 10.0)
            assert (math.floor(remaining), reset_after) == (0, 10.0)
            clock.now += 2.0
            assert math.floor((await src.peek("k", 1.0, 10.0))[0]) == 2

    run(body())


def test_local_table_full_is_unavailable_and_adopts_existing_sizes(tmp_path: Path) -> None:
    async def body() -> None:
        path = tmp_path / "t"
        async with Backend("local", str(path)).source(slots=16) as src:
            for i in range(16):
                await src.charge(f"k{i}", 1 / HOUR, 5.0, 1)
            with pytest.raises(SharedStateUnavailable, match="full"):
                await src.charge("k16", 1 / HOUR, 5.0, 1)
            await src.refund("k3", 1 / HOUR, 5.0, 1)  # a bucket full again frees its slot
            await src.charge("k16", 1 / HOUR, 5.0, 1)
            async with Backend("local", str(path)).source(slots=4096) as other:
                assert isinstance(other, LocalLeaseSource) and other._slots == 16
                assert math.floor((await other.peek("k16", 1 / HOUR, 5.0))[0]) == 4
        async with Backend("local", str(path)).source() as src:
            await src.close()
            with pytest.raises(SharedStateUnavailable):
                await src.peek("k", 1.0, 1.0)
            assert not await src.ping()

    run(body())


# == the client =============================================================================================


class Recorder:
    """Wraps a source's ``batch`` to record every operation the client sends."""

    def __init__(self, source: LeaseSource) -> None:
        self.ops: list[Op] = []
        self._batch = source.batch

        async def batch(ops: Any, now: float) -> list[Grant]:
            self.ops.extend(ops)
            return await self._batch(ops, now)

        source.batch = batch  # type: ignore[method-assign]


def test_client_spends_leases_locally_and_returns_before_asking(backend: Backend) -> None:
    async def body() -> None:
        async with backend.source() as src:
            rec = Recorder(src)
            client = LeaseClient(src, workers=1, min_size=4, max_size=4, horizon=HOUR)
            limit = Limit(key(), 100 / HOUR, 100.0)
            now = time.monotonic()
            assert client.try_take(limit.key, 1, now) is ASK  # nothing known yet
            assert (await client.take([(limit, 1)])).admitted
            assert [(op.kind, op.size, op.returning) for op in rec.ops] == [("acquire", 4.0, 0.0)]
            now = time.monotonic()
            assert [client.try_take(limit.key, 1, now) for _ in range(3)] == [ADMITTED] * 3
            assert client.try_take(limit.key, 1, now) is ASK  # the lease is spent
            assert len(rec.ops) == 1  # no source call for the three
            assert (await client.take([(limit, 2)])).admitted
            assert client.try_take(limit.key, 2.5, time.monotonic()) is ASK  # 2 left, 2.5 asked
            assert (await client.take([(limit, 2.5)])).admitted
            # the unused 2 went back in the same call that asked for the next lease
            assert [(op.kind, op.amount, op.returning) for op in rec.ops[2:]] == [("acquire", 2.5, 2.0)]
            assert client.stats.source_calls == 3 and client.stats.grants == 3
            await client.close()  # returns the 1.5 left
            assert rec.ops[-1].kind == "give_back" and rec.ops[-1].amount == 1.5
            remaining, _ = await src.peek(limit.key, limit.rate, limit.burst)
            assert remaining == pytest.approx(100 - (4 + 2 + 2.5), abs=0.1)  # what was admitted, no more

    run(body())


def test_client_exact_limit_and_cached_refusals(backend: Backend) -> None:
    async def body() -> None:
        async with backend.source() as src:
            rec = Recorder(src)
            client = LeaseClient(src, workers=4)
            limit = Limit(key(), 5 / HOUR, 5.0, lease=1)
            decisions = [await client.take([(limit, 1)]) for _ in range(8)]
            assert [d.status for d in decisions] == [200] * 5 + [429] * 3
            refused = decisions[5]
            assert refused.limit_key == limit.key and refused.retry_after == pytest.approx(HOUR / 5, rel=1e-2)
            assert len(rec.ops) == 6  # five grants of one, one refusal; the rest answered from the cache
            assert all(op.size == 1.0 for op in rec.ops)
            d = client.try_take(limit.key, 1, time.monotonic())
            assert d.status == 429 and d.retry_after > 0
            await client.close()

    run(body())


def test_client_low_limits_get_leases_of_one(backend: Backend) -> None:
    async def body() -> None:
        async with backend.source() as src:
            rec = Recorder(src)
            client = LeaseClient(src, workers=4, min_size=8, horizon=1.0)
            low = Limit(key(), 10.0, 10.0)  # share 10 x 1 s / 4 workers = 2.5 < 8: exact
            high = Limit(key(), 1000.0, 1000.0)  # share 250: leases of 8 to start with
            for _ in range(3):
                assert (await client.take([(low, 1), (high, 1)])).admitted
            sizes = {(op.key, op.size) for op in rec.ops}
            assert sizes == {(low.key, 1.0), (high.key, 8.0)}
            await client.close()

    run(body())


def test_client_is_all_or_nothing_across_limits(backend: Backend) -> None:
    async def body() -> None:
        async with backend.source() as src:
            client = LeaseClient(src, workers=1, min_size=1, max_size=1)
            wide = Limit(key(), 1 / HOUR, 10.0)
            narrow = Limit(key(), 1 / HOUR, 2.0)
            for _ in range(2):
                assert (await client.take([(wide, 1), (narrow, 1)])).admitted
            refused = await client.take([(wide, 1), (narrow, 1)])
            assert (refused.status, refused.limit_key) == (429, narrow.key)
            assert client.try_take_all([(wide.key, 1), (narrow.key, 1)], time.monotonic()).status == 429
            await client.flush()  # the unit taken from wide's new lease for the refused request goes back
            remaining, _ = await src.peek(wide.key, wide.rate, wide.burst)
            assert math.floor(remaining) == 8
            await client.close()

    run(body())


def test_client_settles_real_usage(backend: Backend) -> None:
    async def body() -> None:
        async with backend.source() as src:
            client = LeaseClient(src, workers=1, min_size=1, max_size=1)
            tokens = Limit(key(), 1 / HOUR, 1000.0, lease=1)
            assert (await client.take([(tokens, 300)])).admitted  # the reservation
            client.charge(tokens, 450, time.monotonic())  # it used 750
            client.refund(tokens, 0)
            await client.flush()
            remaining, _ = await src.peek(tokens.key, tokens.rate, tokens.burst)
            assert math.floor(remaining) == 250
            client.refund(tokens, 100)  # another call reserved more than it used
            await client.flush()
            assert math.floor((await src.peek(tokens.key, tokens.rate, tokens.burst))[0]) == 350
            await client.close()

    run(body())


def test_client_returns_leases_before_they_expire(backend: Backend) -> None:
    async def body() -> None:
        async with backend.source(lease_ttl=0.4) as src:
            client = LeaseClient(src, workers=1, min_size=8, max_size=8, horizon=HOUR, tick=0.05)
            limit = Limit(key(), 1000.0 / HOUR, 1000.0)
            assert (await client.take([(limit, 1)])).admitted
            assert client.lease_left(limit.key, time.monotonic()) == 7.0

            async def came_back() -> bool:  # units of a lease left to expire would be lost to the bucket
                remaining, _ = await src.peek(limit.key, limit.rate, limit.burst)
                return math.floor(remaining) == 999

            await until(came_back, "the 7 unused units to come back")
            assert client.lease_left(limit.key, time.monotonic()) == 0  # an idle worker holds nothing
            await client.close()

    run(body())


def test_two_nodes_share_one_limit(redis_server: redisproc.RedisServer) -> None:
    """Two LeaseClients, each with its own connection to one Redis (two nodes), hammer one limit."""
    redis_server.flushall()

    async def hammer(client: LeaseClient, limit: Limit) -> int:
        """Take until the shared state refuses (nothing refills: 1 an hour): what this node admitted."""
        admitted = 0
        deadline = time.monotonic() + 20.0
        while True:
            d = client.try_take(limit.key, 1, time.monotonic())
            if d is ASK:
                d = await client.take([(limit, 1)])
            if not d.admitted:  # asked when the node's own lease was spent: the limit is used up
                return admitted
            admitted += 1
            assert time.monotonic() < deadline, "the limit was never used up"
            await asyncio.sleep(0.001)

    async def body() -> None:
        backend = Backend("redis", redis_server.url)
        async with backend.source() as src1, backend.source() as src2:
            for lease, burst, size in [(1, 20.0, 1), (None, 40.0, 5)]:
                limit = Limit(key(), 1 / HOUR, burst, lease=lease)
                nodes = [
                    LeaseClient(s, workers=2, min_size=1, max_size=size, horizon=100 * HOUR)
                    for s in (src1, src2)
                ]
                counts = await asyncio.gather(*(hammer(c, limit) for c in nodes))
                for c in nodes:
                    await c.close()
                if lease == 1:
                    assert sum(counts) == burst  # exact
                else:
                    assert burst - 2 * size <= sum(counts) <= burst + 2 * (size - 1)
                assert all(c.stats.source_calls for c in nodes)  # both nodes took part

    run(body())


def test_fail_open_fail_closed_and_recovery(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="gateway.limits")
    server = redisproc.start(tmp_path / "redis")
    try:
        url, port = server.url, server.port

        async def body() -> None:
            nonlocal server
            async with Backend("redis", url).source(timeout=0.3) as src:
                client = LeaseClient(src, workers=4, tick=0.05, probe_interval=0.2)
                client.start()
                open_ = Limit(key(), 1 / HOUR, 40.0, lease=1)
                closed = Limit(key(), 1 / HOUR, 40.0, lease=1, fail_mode="fail_closed")
                assert (await client.take([(open_, 1)])).admitted
                assert (await client.take([(closed, 1)])).admitted
                server.stop()
                d = await client.take([(open_, 1)])
                assert client.degraded and d.admitted
                assert sum("shared state unavailable" in r.message for r in caplog.records) == 1
                # fail_open: each worker at its share, 40 / 4 workers = 10 at once (one spent just above)
                more = [await client.take([(open_, 1)]) for _ in range(10)]
                assert [d.status for d in more] == [200] * 9 + [429]
                assert client.try_take(open_.key, 1, time.monotonic()).status == 429
                d = await client.take([(closed, 1)])
                assert (d.status, d.limit_key) == (503, closed.key)
                assert client.try_take(closed.key, 1, time.monotonic()).status == 503
                assert (await client.enter(closed.key, 4, "fail_closed")).status == 503
                assert (await client.enter(open_.key, 4)).admitted  # local gate of 4 / 4 = 1
                assert (await client.enter(open_.key, 4)).status == 429
                await client.leave(open_.key)
                calls = client.stats.source_calls
                probes = 0
                ping = src.ping

                async def counted_ping() -> bool:
                    nonlocal probes
                    probes += 1
                    return await ping()

                src.ping = counted_ping  # type: ignore[method-assign]
                await until(lambda: probes >= 2, "two probes of the lost shared state")
                assert client.degraded  # still away: probes fail quietly
                assert sum("shared state unavailable" in r.message for r in caplog.records) == 1
                server = restart(server, tmp_path / "redis", port)
                await until(lambda: not client.degraded, "the client to recover")
                assert any("available again" in r.message for r in caplog.records)
                d = await client.take([(closed, 1)])
                assert d.admitted and client.stats.source_calls > calls  # the shared state decides again
                assert client.stats.degraded_transitions == 1
                await client.close()

        run(body())
    finally:
        server.stop()


def test_a_hung_redis_times_out_and_comes_back(tmp_path: Path) -> None:
    """A server that stops answering (SIGSTOP) costs one timeout, then the fallback answers at once."""
    server = redisproc.start(tmp_path / "redis")
    try:

        async def body() -> None:
            async with Backend("redis", server.url).source(timeout=0.2) as src:
                client = LeaseClient(src, workers=2, tick=0.05, probe_interval=0.2)
                limit = Limit(key(), 1 / HOUR, 10.0, lease=1)
                assert (await client.take([(limit, 1)])).admitted
                server.process.send_signal(signal.SIGSTOP)
                try:
                    # the source's 0.2 s timeout ends the wait: without it the take would hang for good,
                    # so a generous 20 s bound fails only when the mechanism is missing
                    d = await asyncio.wait_for(client.take([(limit, 1)]), 20.0)
                    assert d.admitted  # the fallback: 10 / 2 workers
                    assert client.degraded and not src.healthy
                    calls = client.stats.source_calls
                    assert (await client.take([(limit, 1)])).admitted
                    assert client.stats.source_calls == calls  # no more waiting on the source
                finally:
                    server.process.send_signal(signal.SIGCONT)
                await until(lambda: not client.degraded and src.healthy, "the client to recover")
                assert (await client.take([(limit, 1)])).admitted
                await client.close()

        run(body())
    finally:
        server.stop()


def restart(server: redisproc.RedisServer, directory: Path, port: int) -> redisproc.RedisServer:
    """Start the server again on the same port and directory (its config is still there)."""
    process = subprocess.Popen(
        [redisproc.find_binary(), str(directory / "redis.conf")],
        cwd=directory,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    again = redisproc.RedisServer(process, port, directory, owns_dir=False)
    deadline = time.monotonic() + 10.0
    while not again.ping():
        assert time.monotonic() < deadline, "the Redis server did not come back"
        time.sleep(0.05)
    return again


def test_client_rejects_bad_settings(tmp_path: Path) -> None:
    async def body() -> None:
        async with Backend("local", str(tmp_path / "t")).source() as src:
            with pytest.raises(ValueError):
                LeaseClient(src, workers=0)
            with pytest.raises(ValueError):
                LeaseClient(src, min_size=10, max_size=5)
            with pytest.raises(ValueError):
                LeaseClient(src, tick=0)
            client = LeaseClient(src)
            with pytest.raises(RuntimeError):
                await client.leave("never-entered")
            await client.close()

    run(body())


# == budget counters ========================================================================================

DAY = 20260115
MONTH = DAY // 100


def bop(
    key: str, *, spent: float = 0.0, floor: float = 0.0, need: float = 0.0, want: float = 0.0,
    seed_day: float = 0.0, seed_month: float = 0.0, heal: bool = False, limit_day: float = 10.0,
    limit_month: float = math.inf, day: int = DAY, split: float = 1.0,
) -> BudgetOp:
    return BudgetOp(key, day, day // 100, limit_day, limit_month, spent, floor, need, want, seed_day, seed_month,
                    heal, split)


def test_budget_step_reserves_within_the_limit_and_counts_spend() -> None:
    # a fresh counter starts from the store's spend (the seeds); the ask fits: need + the spare asked
    op = bop("k", need=2.0, want=5.0, seed_day=3.0, seed_month=4.0)
    assert budget_step(op, True, 0, 0, 0.0, 0.0, 0.0, 0.0) == (DAY, MONTH, 3.0, 4.0, 5.0, True)
    # room = 10 - 3 spent - 4 held by others = 3: need 2 fits, the spare is capped at (3 - 2) / split
    op = bop("k", need=2.0, want=5.0, split=2.0)
    assert budget_step(op, False, DAY, MONTH, 3.0, 4.0, 0.0, 4.0) == (DAY, MONTH, 3.0, 4.0, 2.5, True)
    # it does not fit: refused, the hold falls to the floor (the reservations in flight)
    op = bop("k", floor=1.0, need=4.0, want=8.0)
    assert budget_step(op, False, DAY, MONTH, 3.0, 4.0, 2.5, 4.0) == (DAY, MONTH, 3.0, 4.0, 1.0, False)
    # settling: the spend is added; the hold shrinks to want, never below floor, never grows
    op = bop("k", spent=1.5, floor=0.5, want=0.2)
    assert budget_step(op, False, DAY, MONTH, 3.0, 4.0, 2.0, 0.0) == (DAY, MONTH, 4.5, 5.5, 0.5, True)
    assert budget_step(bop("k", want=9.0), False, DAY, MONTH, 3.0, 4.0, 2.0, 0.0)[4] == 2.0
    # a new day starts from 0 (a new month too); the seeds count for a fresh counter or with heal only
    op = bop("k", spent=1.0, seed_day=7.0, day=20260201)
    assert budget_step(op, False, DAY, MONTH, 3.0, 4.0, 0.0, 0.0)[:4] == (20260201, 202602, 1.0, 1.0)
    op = bop("k", spent=1.0, seed_day=7.0, seed_month=9.0, heal=True)
    assert budget_step(op, False, DAY, MONTH, 3.0, 4.0, 0.0, 0.0)[:4] == (DAY, MONTH, 7.0, 9.0)
    # the spend carried by the operation is in the seed too: counted once
    op = bop("k", spent=1.0, seed_day=4.0, seed_month=5.0, heal=True)
    assert budget_step(op, False, DAY, MONTH, 3.0, 4.0, 0.0, 0.0)[2:4] == (4.0, 5.0)
    # an operation of an earlier day (a worker behind midnight) counts on the counter's day
    op = bop("k", spent=1.0, day=DAY - 1)
    assert budget_step(op, False, DAY, MONTH, 3.0, 4.0, 0.0, 0.0)[:4] == (DAY, MONTH, 4.0, 5.0)
    # a month limit holds alone
    op = bop("k", need=2.0, want=2.0, limit_day=math.inf, limit_month=5.0)
    assert budget_step(op, False, DAY, MONTH, 0.0, 4.0, 0.0, 0.0)[5] is False
    with pytest.raises(ValueError):
        check_budget_op(bop("k", need=-1.0))
    with pytest.raises(ValueError):
        check_budget_op(BudgetOp("k", DAY, MONTH + 1, 1.0, 1.0))


def test_budget_counters_run_the_step_on_both_sources(backend: Backend) -> None:
    """Random programs of several holders on a few counters: each source answers what ``budget_step``
    computes from the state the test keeps, to the last bit (the Lua is the Python)."""

    async def body() -> None:
        rng = random.Random(11)
        sources = [await backend.open(holder_ttl=HOUR) for _ in range(3)]
        try:
            keys = [key() for _ in range(3)]
            state: dict[str, tuple[int, int, float, float]] = {}
            holds: dict[tuple[str, int], float] = {}
            day = DAY
            for _ in range(150):
                k = rng.choice(keys)
                who = rng.randrange(3)
                if rng.random() < 0.05:
                    day += 1 if day % 100 < 28 else 100 - day % 100 + 101  # the next day, or month
                amounts = [round(rng.uniform(0, 3), 2) for _ in range(4)]
                floor = min(amounts[1], holds.get((k, who), 0.0))
                asks = rng.random() < 0.6
                op = bop(
                    k, spent=amounts[0] if rng.random() < 0.5 else 0.0, floor=floor,
                    need=floor + amounts[2] if asks else 0.0,
                    want=floor + amounts[2] + amounts[3] if asks else amounts[3],
                    seed_day=round(rng.uniform(0, 8), 2), seed_month=round(rng.uniform(0, 12), 2),
                    heal=rng.random() < 0.2, limit_day=rng.choice([10.0, 6.5, math.inf]),
                    limit_month=rng.choice([20.0, math.inf]), day=day, split=rng.choice([1.0, 8.0]),
                )
                fresh = k not in state
                d, m, sd, sm = state.get(k, (0, 0, 0.0, 0.0))
                mine = holds.get((k, who), 0.0)
                others = sum(h for (kk, w), h in holds.items() if kk == k and w != who)
                d, m, sd, sm, mine, ok = budget_step(op, fresh, d, m, sd, sm, mine, others)
                (grant,) = await sources[who].budget([op])
                assert grant == BudgetGrant(ok, mine, sd, sm, others + mine), (op, grant)
                state[k] = (d, m, sd, sm)
                holds[(k, who)] = mine
        finally:
            for src in sources:
                await src.close()

    run(body())


def test_a_dead_holders_budget_hold_stops_counting(tmp_path: Path, redis_server: redisproc.RedisServer) -> None:
    async def body() -> None:
        clock = Clock(5000.0)
        path = tmp_path / "t"
        async with contextlib.AsyncExitStack() as stack:
            local = [await LocalLeaseSource.open(path, holder_ttl=10.0, clock=clock) for _ in range(2)]
            redis_server.flushall()
            remote = [await RedisLeaseSource.open(redis_server.url, holder_ttl=0.5) for _ in range(2)]
            for src in local + remote:
                stack.push_async_callback(src.close)
            for a, b in (local, remote):
                k = key()
                assert (await a.budget([bop(k, need=8.0, want=8.0)]))[0].held == 8.0
                refused = (await b.budget([bop(k, need=5.0, want=5.0)]))[0]
                assert not refused.ok and refused.holds == 8.0
                if a is local[0]:
                    clock.now += 10.5  # a's hold was last written more than holder_ttl ago
                else:
                    deadline = time.monotonic() + 10.0
                    while (await b.budget([bop(k)]))[0].holds and time.monotonic() < deadline:
                        await asyncio.sleep(0.05)
                assert (await b.budget([bop(k, need=5.0, want=5.0)]))[0].ok

    run(body())


def test_a_table_made_before_budgets_gets_them_appended(tmp_path: Path) -> None:
    async def body() -> None:
        path = tmp_path / "old"
        async with Backend("local", str(path)).source(slots=16, counter_slots=16, holders=2) as src:
            await src.charge("k", 1 / HOUR, 5.0, 2)
        # what a file of the previous layout looks like: no budget slots in the header, no region
        header = bytearray(path.read_bytes()[:4096])
        header[24:28] = bytes(4)
        old_size = 4096 + 16 * 64 + 16 * (32 + 2 * 24)
        path.write_bytes(bytes(header) + path.read_bytes()[4096:old_size])
        async with Backend("local", str(path)).source(budget_slots=32) as src:
            assert isinstance(src, LocalLeaseSource) and src._budget_slots == 32 and src._slots == 16
            assert math.floor((await src.peek("k", 1 / HOUR, 5.0))[0]) == 3  # the buckets are kept
            assert (await src.budget([bop("b", need=1.0, want=1.0)]))[0].ok
            assert path.stat().st_size == old_size + 32 * (64 + 2 * 24)

    run(body())


def test_a_full_budget_region_is_unavailable_and_idle_counters_of_past_days_are_reclaimed(
    tmp_path: Path,
) -> None:
    async def body() -> None:
        async with Backend("local", str(tmp_path / "t")).source(budget_slots=16) as src:
            for i in range(16):
                await src.budget([bop(f"b{i}", spent=1.0)])
            with pytest.raises(SharedStateUnavailable, match="free budget slot"):
                await src.budget([bop("b16", spent=1.0)])
            # tomorrow, a counter without holders is reclaimed: its spend is in the store by then
            (grant,) = await src.budget([bop("b16", spent=1.0, seed_month=16.0, day=DAY + 1)])
            assert grant.spent_day == 1.0 and grant.spent_month == 16.0
            (grant,) = await src.budget([bop("b3", day=DAY + 1, seed_month=1.0)])
            assert grant.spent_month == 1.0  # found again, or re-seeded: never below the store

    run(body())


# -- the budget client ---------------------------------------------------------------------------------------


class Book:
    """What ``BudgetClient`` reads of the ``SpendBook``: today's day and the spend views (never started
    here: the store is not involved)."""

    def __init__(self) -> None:
        async def no_store() -> Any:
            raise RuntimeError("no store in this test")

        self.book = SpendBook(no_store, LimitStats())

    def view(self, id: str = "t") -> SpendView:
        return self.book.view("tenant", id)


def test_budget_client_reserves_from_its_hold_and_settles_the_real_cost(backend: Backend) -> None:
    async def body() -> None:
        async with backend.source() as src:
            books = Book()
            client = BudgetClient(src, books.book, workers=1)
            tenant = key()
            counter = client.counter(books.view(tenant), 1.0, math.inf)
            now = time.monotonic()
            assert client.try_reserve([counter], 0.01, now) == ASK_BUDGET
            assert await client.reserve([counter], 0.01) == RESERVED  # an ask: 0.01 and a spare of 7 more
            assert counter.held == pytest.approx(0.08) and client.stats.source_calls == 1
            for _ in range(7):
                assert client.try_reserve([counter], 0.01, time.monotonic()) == RESERVED
            assert client.try_reserve([counter], 0.01, time.monotonic()) == ASK_BUDGET
            assert client.stats.source_calls == 1 and counter.used == pytest.approx(0.08)
            for _ in range(8):  # each cost half its reservation
                client.spend(counter, 0.005)
                client.settle([counter], 0.01)
            assert counter.used == 0.0 and counter.pending == pytest.approx(0.04)
            await client.flush()  # the spend goes to the counter; the spare goes back
            assert counter.pending == 0.0 and counter.held == 0.0
            assert counter.spent_day == pytest.approx(0.04) and counter.holds == 0.0
            await client.close()

    run(body())


def test_budget_client_near_the_end_is_exact_and_refuses_what_does_not_fit(backend: Backend) -> None:
    async def body() -> None:
        async with backend.source() as src:
            books = Book()
            a = BudgetClient(src, books.book, workers=2)
            b = BudgetClient(await backend.open(), books.book, workers=2)
            tenant = key()
            ca = a.counter(books.view(tenant), 0.1, math.inf)
            cb = b.counter(books.view(tenant), 0.1, math.inf)
            assert await a.reserve([ca], 0.06) == RESERVED
            # another worker sees the reservation at once: 0.06 held, 0.05 does not fit
            assert await b.reserve([cb], 0.05) is cb and cb.holds == pytest.approx(ca.held)
            assert b.try_reserve([cb], 0.05, time.monotonic()) is cb  # remembered for a moment
            # the spare was capped at (0.1 - 0.06) / (8 x 2): near the end the holds are nearly exact
            assert ca.held <= 0.06 + 0.04 / 16 + 1e-12
            assert await b.reserve([cb], 0.03) == RESERVED
            a.spend(ca, 0.01)
            a.settle([ca], 0.06)
            await a.flush()  # 0.01 spent, the rest of a's reservation is free again
            assert await b.reserve([cb], 0.05) == RESERVED
            b.spend(cb, 0.08)
            b.settle([cb], 0.03)
            b.settle([cb], 0.05)
            await b.flush()
            assert cb.spent_day == pytest.approx(0.09) and cb.holds == 0.0
            await a.close()
            await b.close()
            await b.source.close()

    run(body())


def test_workers_racing_for_one_budget_never_overspend_it(backend: Backend) -> None:
    """Four clients (workers) on one counter, each with many concurrent requests of random estimates that
    cost at most their reservation: the spend never passes the budget; and it reaches the counter."""

    async def body() -> None:
        rng = random.Random(3)
        books = Book()
        sources = [await backend.open() for _ in range(4)]
        clients = [BudgetClient(src, books.book, workers=4) for src in sources]
        tenant = key()
        counters = [c.counter(books.view(tenant), 1.0, math.inf) for c in clients]
        spent: list[float] = []

        async def request(i: int) -> None:
            client, counter = clients[i % 4], counters[i % 4]
            estimate = round(rng.uniform(0.005, 0.05), 4)
            cost = estimate * rng.uniform(0.2, 1.0)
            for _ in range(100):  # refused while others' reservations hold the rest: try again later
                verdict = client.try_reserve([counter], estimate, time.monotonic())
                if verdict == ASK_BUDGET:
                    verdict = await client.reserve([counter], estimate)
                if verdict == RESERVED:
                    break
                await asyncio.sleep(0.01)
            else:
                return
            await asyncio.sleep(rng.uniform(0, 0.02))  # the call
            client.spend(counter, cost)
            client.settle([counter], estimate)
            spent.append(cost)

        for client in clients:
            client.start()
        await asyncio.gather(*(request(i) for i in range(400)))
        for client in clients:
            await client.flush()
        assert 0.9 < sum(spent) <= 1.0  # the budget was used, and never passed
        today = int(books.book.today()[0].replace("-", ""))
        (counter,) = await sources[0].budget([bop(f"tenant/{tenant}", day=today)])
        assert counter.spent_day == pytest.approx(sum(spent)) and counter.holds == 0.0
        for client, src in zip(clients, sources, strict=True):
            await client.close()
            await src.close()

    run(body())


def test_budget_client_steps_aside_while_the_source_is_unavailable(tmp_path: Path) -> None:
    async def body() -> None:
        books = Book()
        src = await LocalLeaseSource.open(tmp_path / "t")
        client = BudgetClient(src, books.book, probe_interval=0.05, tick=0.05)
        counter = client.counter(books.view(), 1.0, math.inf)
        assert await client.reserve([counter], 0.01) == RESERVED
        client.spend(counter, 0.01)
        client.settle([counter], 0.01)
        await src.close()  # every call fails from now on
        counter.expires_at = -math.inf
        assert await client.reserve([counter], 0.01) == UNCHECKED and client.degraded
        assert client.try_reserve([counter], 0.01, time.monotonic()) == UNCHECKED
        assert counter.pending == pytest.approx(0.01)  # real spend is kept for when it is back
        await client.close()
        # a source without budget counters leaves every request to the spend views
        assert not BudgetClient(DownSource(), books.book).enabled

    run(body())


class DownSource(LeaseSource):
    lease_ttl = 2.0
    holder_ttl = 10.0

    @property
    def healthy(self) -> bool:
        return False

    async def batch(self, ops: Any, now: float) -> list[Grant]:
        raise SharedStateUnavailable("down")

    async def enter(self, limit_key: str, limit: int) -> bool:
        raise SharedStateUnavailable("down")

    async def leave(self, limit_key: str) -> None:
        raise SharedStateUnavailable("down")

    async def keepalive(self) -> None:
        raise SharedStateUnavailable("down")

    async def inflight(self, limit_key: str) -> int:
        raise SharedStateUnavailable("down")

    async def ping(self) -> bool:
        return False

    async def close(self) -> None:
        return None
