"""RouterCore, the compiled per-request part of a router, against its twin: the same picks, the same
bookkeeping, for every strategy, through the real ``Router`` built on each of them."""

from __future__ import annotations

import os
import random
from typing import Any

import pytest

from gateway._core import route, route_py
from gateway.routing.config import BreakerConfig, DeploymentConfig, RoutingConfig
from gateway.routing.outcome import Outcome
from gateway.routing.router import Router

try:
    from gateway._core import _route
except ImportError:  # pragma: no cover - only when the extension is not built
    if os.environ.get("GATEWAY_REQUIRE_EXTENSIONS") == "1":
        raise
    _route = None  # type: ignore[assignment]
if not route.COMPILED:  # twins forced: the router's pickers are the twins', which the compiled core refuses
    _route = None  # type: ignore[assignment]

CORES = [pytest.param(route_py, id="twin"),
         pytest.param(_route, id="compiled",
                      marks=pytest.mark.skipif(_route is None, reason="gateway._core._route is not built or not in use"))]

STRATEGIES: dict[str, dict[str, Any]] = {
    "weighted": {},
    "least_latency": {},
    "least_busy": {},
    "consistent_hash": {"hash_on": "user"},
    "split": {"split": {"a": 70, "b": 20, "c": 10}},
    "cost": {},
}


def router_on(core: Any, strategy: str, **deployment: Any) -> Router:
    """The real Router, its per-request core taken from ``core`` (the twin or the compiled module)."""
    cls = type("R", (core.RouterCore,), {k: v for k, v in Router.__dict__.items()
                                        if k not in ("__dict__", "__weakref__", "__slots__")})
    deployments = [DeploymentConfig(provider="p", name=n, weight=w, cost=c, **deployment)
                   for n, w, c in (("a", 3, 3.0), ("b", 2, 1.0), ("c", 1, 2.0))]
    cfg = RoutingConfig(deployments=deployments, strategy=strategy,  # type: ignore[arg-type]
                        breaker=BreakerConfig(enabled=True, consecutive_failures=2), **STRATEGIES[strategy])
    router: Router = cls("m", cfg)
    router.link({"m": router})
    return router


class Fields:
    def __init__(self, user: str | None, max_tokens: object) -> None:
        self.user = user
        self.max_tokens = max_tokens


class Key:
    id = "k1"


def run(core: Any, strategy: str, seed: int, **deployment: Any) -> list[tuple[int, int]]:
    """A mixed sequence through ``info``, ``pick``, ``acquire`` and ``ok`` or a failed ``record``."""
    router = router_on(core, strategy, **deployment)
    rnd = random.Random(seed)
    out = []
    now = 1000.0
    for n in range(300):
        now += rnd.random() * 0.5
        fields = Fields(rnd.choice(["u1", "u2", "u3", None]), rnd.choice([None, 16, 4000, True]))
        info = router.info(fields, rnd.choice([None, Key()]), {b"x-user": b"h"}.get, rnd.randrange(4000))
        i = router.pick(info, now, rnd.random)
        out.append((i, info.tokens))
        if i < 0:
            continue
        router.acquire(i)
        dep = router.deployments[i]
        if n % 7 == 3:  # a failure now and then: breakers open and close, picks move
            router.record(dep, Outcome.SERVER_ERROR, 0.01, 0.01, now)
        else:
            router.ok(dep, 0.001 * (i + 1), now)
    return out


@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_twin_and_compiled_pick_the_same(strategy: str) -> None:
    if _route is None:
        pytest.skip("gateway._core._route is not built")
    for seed in range(3):
        assert run(route_py, strategy, seed) == run(_route, strategy, seed)
        # context windows and a tpm limit: info carries tokens, picks take the full path
        assert run(route_py, strategy, seed, context_window=3000, tpm=600_000) == run(
            _route, strategy, seed, context_window=3000, tpm=600_000
        )
        # upstream limits that run out: deployments refused one by one, and none at all (-1)
        tight = run(_route, strategy, seed, rpm=30, tpm=200_000)
        assert tight == run(route_py, strategy, seed, rpm=30, tpm=200_000)
        assert any(i < 0 for i, _ in tight) and len({i for i, _ in tight}) > 2


@pytest.mark.parametrize("core", CORES)
def test_info_reads_only_what_the_strategy_needs(core: Any) -> None:
    fields = Fields("alice", 100)
    plain = router_on(core, "weighted")
    assert plain.info(fields, Key(), None, 400) is plain.info(Fields("bob", 5), None, None, 8)  # shared, empty
    assert plain.info(fields, Key(), None, 400).tokens == 0
    windows = router_on(core, "weighted", context_window=8000)
    info = windows.info(fields, Key(), None, 400)
    assert (info.user, info.key_id, info.tokens) == (None, None, 200)
    hashed = router_on(core, "consistent_hash")
    info = hashed.info(fields, Key(), None, 400)
    assert (info.user, info.key_id, info.tokens) == ("alice", "k1", 200)
    assert hashed.info(Fields(None, "many"), None, None, 7).tokens == 1  # a non-int max_tokens counts 0


@pytest.mark.parametrize("core", CORES)
def test_least_busy_counts_in_flight_through_acquire_ok_and_release(core: Any) -> None:
    router = router_on(core, "least_busy")
    info = router.info(Fields(None, None), None, None, 0)
    first = router.pick(info, 1.0, random.random)
    router.acquire(first)
    second = router.pick(info, 1.0, random.random)
    assert second != first  # the busy one is avoided
    router.acquire(second)
    router.release(second)
    router.ok(router.deployments[first], 0.01, 1.0)
    assert router._lb is not None
    assert [router._lb.inflight(i) for i in range(3)] == [0, 0, 0]


@pytest.mark.parametrize("core", CORES)
def test_ok_counts_and_keeps_a_closed_breaker_closed(core: Any) -> None:
    router = router_on(core, "least_latency")
    dep = router.deployments[1]
    before = dep.stats.ok
    router.record(dep, Outcome.SERVER_ERROR, 0.01, 0.01, 5.0)  # one failure of two allowed
    router.ok(dep, 0.2, 5.1)
    router.record(dep, Outcome.SERVER_ERROR, 0.01, 0.01, 5.2)  # the success reset the run: still closed
    assert router.breaker(dep).state.name == "CLOSED"
    assert dep.stats.ok == before + 1
    assert router._ll is not None and router._ll.observed(1)
