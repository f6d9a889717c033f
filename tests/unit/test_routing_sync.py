"""BreakerSync between two instances (two workers, or two nodes), on both transports.

Each test builds two independent instances: their own routers, their own sync and transport connection,
on one SQLite file or one real Redis server (started once for the module by ``redisproc``, flushed before
each test). The two instances have different monotonic clocks and one wall clock, as two processes do.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redisproc  # tests/ is on sys.path: the suite's conftest.py lives there, outside any package

from gateway.routing.breaker import State
from gateway.routing.config import BreakerConfig, DeploymentConfig, RoutingConfig
from gateway.routing.outcome import Outcome
from gateway.routing.router import RequestInfo, Router, build_routers
from gateway.routing.sync import (
    BreakerEvent,
    BreakerSync,
    RedisSyncTransport,
    SqliteSyncTransport,
    SyncTransport,
)

WALL = 1_700_000_000.0
TEST_DEADLINE = 60.0
CONFIG = {
    "m": RoutingConfig(
        deployments=[DeploymentConfig(provider="a"), DeploymentConfig(provider="b")],
        breaker=BreakerConfig(consecutive_failures=2, open_for=30.0),
    )
}


def run(coro: Awaitable[Any]) -> Any:
    async def bounded() -> Any:
        return await asyncio.wait_for(coro, TEST_DEADLINE)

    return asyncio.run(bounded())


class Clock:
    """A process's monotonic clock (its own origin) and the shared wall clock."""

    def __init__(self, origin: float) -> None:
        self.t = 0.0
        self.origin = origin

    def mono(self) -> float:
        return self.origin + self.t

    def wall(self) -> float:
        return WALL + self.t


class Instance:
    def __init__(self, name: str, transport: SyncTransport, origin: float) -> None:
        self.clock = Clock(origin)
        self.routers = build_routers(CONFIG)
        self.router: Router = self.routers["m"]
        self.sync = BreakerSync(transport, origin=name, wall=self.clock.wall, clock=self.clock.mono,
                                poll_interval=0.05)
        self.sync.attach(self.routers)

    def fail(self, name: str, times: int = 2) -> None:
        for _ in range(times):
            self.router.record(self.router.by_name[name], Outcome.SERVER_ERROR, 0.0, 0.0, self.clock.mono())

    def state(self, name: str) -> State:
        return self.router.breaker(self.router.by_name[name]).state


Opener = Callable[[], Awaitable[SyncTransport]]


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[redisproc.RedisServer]:
    with redisproc.start(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture(params=["sqlite", "redis"])
def opener(request: pytest.FixtureRequest, tmp_path: Path) -> Opener:
    if request.param == "sqlite":
        path = str(tmp_path / "breakers.db")

        async def open_sqlite() -> SyncTransport:
            return SqliteSyncTransport(path)

        return open_sqlite
    server: redisproc.RedisServer = request.getfixturevalue("redis_server")
    server.flushall()

    async def open_redis() -> SyncTransport:
        return await RedisSyncTransport.open(server.url, prefix="test")

    return open_redis


async def pair(opener: Opener) -> tuple[Instance, Instance]:
    a = Instance("worker-a", await opener(), origin=500.0)
    b = Instance("worker-b", await opener(), origin=9000.0)
    for x in (a, b):
        await x.sync.resync()  # as start() does: subscribe, then read what is there
    return a, b


async def close(*instances: Instance) -> None:
    for x in instances:
        await x.sync.stop()


def test_an_open_reaches_the_other_instance(opener: Opener) -> None:
    async def go() -> None:
        a, b = await pair(opener)
        a.clock.t = b.clock.t = 10.0
        a.fail("a")
        assert await a.sync.flush() == 1
        assert await b.sync.poll(2.0) == 1
        breaker = b.router.breaker(b.router.by_name["a"])
        assert breaker.state is State.OPEN and breaker.until == pytest.approx(9000.0 + 40.0)
        plan = b.router.plan(RequestInfo(), b.clock.mono(), lambda: 0.5)
        assert next(plan).deployment.name == "b"  # without b paying for failures of its own
        assert await a.sync.poll(0.1) == 0  # its own change is not applied again
        await close(a, b)

    run(go())


def test_a_close_after_a_probe_travels_back(opener: Opener) -> None:
    async def go() -> None:
        a, b = await pair(opener)
        a.fail("a")
        await a.sync.flush()
        await b.sync.poll(2.0)
        b.clock.t = a.clock.t = 31.0  # open_for passed: b probes a, and it works
        probe = b.router.plan(RequestInfo(), b.clock.mono(), lambda: 0.0)
        attempt = next(probe)
        while attempt.deployment.name != "a":
            probe.report(Outcome.OK, b.clock.mono())
            probe = b.router.plan(RequestInfo(), b.clock.mono(), lambda: 0.0)
            attempt = next(probe)
        probe.report(Outcome.OK, b.clock.mono())
        assert b.state("a") is State.CLOSED
        await b.sync.flush()
        assert await a.sync.poll(2.0) == 1
        assert a.state("a") is State.CLOSED
        await close(a, b)

    run(go())


def test_cooldowns_and_ejections_travel(opener: Opener) -> None:
    async def go() -> None:
        a, b = await pair(opener)
        ra = a.router
        ra.record(ra.by_name["a"], Outcome.RATE_LIMITED, 0.0, 0.0, a.clock.mono(), retry_after=7.0)
        ra.eject(ra.by_name["b"], a.clock.mono())
        assert await a.sync.flush() == 2
        applied = 0
        while applied < 2:
            got = await b.sync.poll(2.0)
            assert got, "the changes did not arrive"
            applied += got
        rb = b.router
        assert rb.breaker(rb.by_name["a"]).cooldown_until == pytest.approx(9000.0 + 7.0)
        assert rb.breaker(rb.by_name["b"]).ejected
        await close(a, b)

    run(go())


def test_the_store_keeps_the_newest_change(opener: Opener) -> None:
    async def go() -> None:
        t = await opener()
        newer = BreakerEvent(deployment="m\x1fa", state="closed", at=WALL + 20, origin="x")
        older = BreakerEvent(deployment="m\x1fa", state="open", until=WALL + 90, at=WALL + 10, origin="y")
        cool_long = BreakerEvent(deployment="m\x1fa", state="cooldown", until=WALL + 50, at=WALL + 1, origin="x")
        cool_short = BreakerEvent(deployment="m\x1fa", state="cooldown", until=WALL + 30, at=WALL + 2, origin="y")
        await t.publish([newer, cool_long])
        await t.publish([older, cool_short])
        assert sorted(await t.snapshot(), key=lambda e: e.state) == [newer, cool_long]
        await t.close()

    run(go())


def test_a_late_instance_catches_up_from_the_snapshot(opener: Opener) -> None:
    async def go() -> None:
        a = Instance("worker-a", await opener(), origin=0.0)
        a.fail("b")
        await a.sync.flush()
        late = Instance("worker-late", await opener(), origin=100.0)
        assert await late.sync.resync() == 1 and late.state("b") is State.OPEN
        await close(a, late)

    run(go())


def test_the_background_loop_shares_changes(opener: Opener) -> None:
    async def go() -> None:
        a, b = await pair(opener)
        await a.sync.start()
        await b.sync.start()
        a.fail("a")
        for _ in range(400):  # bounded wait for the other instance to see it
            if b.state("a") is State.OPEN:
                break
            await asyncio.sleep(0.025)
        assert b.state("a") is State.OPEN and b.sync.applied == 1
        await close(a, b)

    run(go())
