"""The router: strategy order, retries, fallbacks, breakers and limits in the plan, and why nothing is available.

Everything is driven with explicit times and seeded randomness; no test sleeps.
"""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import pytest

from gateway.routing.config import BreakerConfig, DeploymentConfig, RetryConfig, RoutingConfig
from gateway.routing.outcome import Outcome
from gateway.routing.router import (
    Attempts,
    NoDeploymentAvailable,
    RequestInfo,
    Router,
    build_routers,
)

OK, FAIL = Outcome.OK, Outcome.SERVER_ERROR
INFO = RequestInfo()


def model(*deployments: str | dict[str, Any], **kw: Any) -> RoutingConfig:
    ds = [DeploymentConfig(provider=d) if isinstance(d, str) else DeploymentConfig(**d) for d in deployments]
    return RoutingConfig(deployments=ds, **kw)


def router(*deployments: str | dict[str, Any], **kw: Any) -> Router:
    return build_routers({"m": model(*deployments, **kw)})["m"]


def rnd(seed: int = 1) -> Any:
    return random.Random(seed).random


def serve(attempts: Attempts, outcomes: list[Outcome], now: float = 0.0, **report: Any) -> list[str]:
    """Send each attempt, ending it with the next outcome (OK once they run out); the models/names tried."""
    tried: list[str] = []
    for a in attempts:
        tried.append(f"{a.model}/{a.deployment.name}")
        attempts.report(outcomes.pop(0) if outcomes else OK, now + a.delay, **report)
    return tried


def picks(r: Router, n: int, info: RequestInfo = INFO, seed: int = 1) -> Counter[str]:
    """Deployments chosen for ``n`` successful requests."""
    random_ = rnd(seed)
    out: Counter[str] = Counter()
    for k in range(n):
        attempts = r.plan(info, float(k), random_)
        a = next(attempts)
        out[a.deployment.name] += 1
        attempts.report(OK, float(k), ttfb=0.1, total=0.2)
    return out


# -- strategies --------------------------------------------------------------------------------------------


def test_weighted_gives_each_its_weight() -> None:
    r = router({"provider": "a", "weight": 5}, "b", {"provider": "c", "weight": 2})
    assert picks(r, 8000) == {"a": 5000, "b": 1000, "c": 2000}


def test_split_percentages_within_tolerance() -> None:
    r = router("stable", "canary", strategy="split", split={"stable": 90, "canary": 10})
    shares = picks(r, 20000)
    assert abs(shares["canary"] / 20000 - 0.10) < 0.01


def test_consistent_hash_affinity() -> None:
    r = router("a", "b", "c", "d", strategy="consistent_hash")
    first = {u: next(r.plan(RequestInfo(user=u), 0.0, rnd())).deployment.name for u in map(str, range(400))}
    again = {u: next(r.plan(RequestInfo(user=u), 1.0, rnd())).deployment.name for u in map(str, range(400))}
    assert first == again
    assert all(60 < n < 140 for n in Counter(first.values()).values())


def test_consistent_hash_removing_a_deployment_moves_only_its_keys() -> None:
    users = [f"user-{i}" for i in range(2000)]

    def owners(*names: str) -> dict[str, str]:
        r = router(*names, strategy="consistent_hash")
        return {u: next(r.plan(RequestInfo(user=u), 0.0, rnd())).deployment.name for u in users}

    before, after = owners("a", "b", "c", "d", "e"), owners("a", "b", "c", "d")
    moved = sum(before[u] != after[u] for u in users) / len(users)
    assert all(after[u] == before[u] for u in users if before[u] != "e")
    assert moved <= 1 / 5 + 0.05


def test_consistent_hash_on_header_and_key_id_and_without_a_key() -> None:
    r = router("a", "b", "c", strategy="consistent_hash", hash_on="header:x-session-id")
    seen = {next(r.plan(RequestInfo(header={b"x-session-id": b"s-42"}.get), float(t), rnd())).deployment.name
            for t in range(20)}
    assert len(seen) == 1
    keyed = router("a", "b", "c", strategy="consistent_hash", hash_on="key_id")
    assert len({next(keyed.plan(RequestInfo(key_id="k1"), 0.0, rnd())).deployment.name for _ in range(10)}) == 1
    assert picks(r, 30) == {"a": 10, "b": 10, "c": 10}  # no header: weighted round robin


def test_consistent_hash_fails_over_and_comes_back() -> None:
    r = router("a", "b", "c", strategy="consistent_hash", breaker=BreakerConfig(consecutive_failures=1, open_for=5.0))
    info = RequestInfo(user="alice")
    home = next(r.plan(info, 0.0, rnd())).deployment
    attempts = r.plan(info, 0.0, rnd())
    tried = serve(attempts, [FAIL])
    assert tried[0] == f"m/{home.name}" and len(tried) == 2 and tried[1] != tried[0]
    away = next(r.plan(info, 1.0, rnd())).deployment
    assert away is not home and f"m/{away.name}" == tried[1]  # the next on the ring, while home is open
    assert next(r.plan(info, 6.0, rnd())).deployment is home  # half-open probe goes home


def test_least_latency_prefers_the_fastest_and_explores() -> None:
    r = router("slow", "fast", strategy="least_latency")
    random_ = rnd()
    for name, t in (("slow", 1.0), ("fast", 0.1)):
        attempts = r.plan(INFO, 0.0, random_)
        a = next(attempts)
        while a.deployment.name != name:  # unobserved deployments go first; steer the two warm-ups
            attempts.report(Outcome.CLIENT_ERROR, 0.0)
            attempts = r.plan(INFO, 0.0, random_)
            a = next(attempts)
        attempts.report(OK, 0.0, ttfb=t, total=2 * t)
    counts: Counter[str] = Counter()
    for _ in range(4000):
        attempts = r.plan(INFO, 1.0, random_)
        counts[next(attempts).deployment.name] += 1
        attempts.report(Outcome.CLIENT_ERROR, 1.0)  # no latency sample: the scores stay put
    assert abs(counts["slow"] / 4000 - 0.05) < 0.015


def test_least_busy_goes_where_fewest_are_in_flight() -> None:
    r = router("a", "b", "c", strategy="least_busy")
    open_attempts = [r.plan(INFO, 0.0, rnd()) for _ in range(3)]
    firsts = [next(a) for a in open_attempts]
    assert sorted(a.deployment.name for a in firsts) == ["a", "b", "c"]
    open_attempts[1].report(OK, 1.0)
    assert next(r.plan(INFO, 1.0, rnd())).deployment is firsts[1].deployment
    assert r.inflight(firsts[0].deployment) == 1


def test_cost_picks_the_cheapest_that_fits() -> None:
    r = router(
        {"provider": "small", "cost": 1.0, "context_window": 8000},
        {"provider": "mid", "cost": 5.0, "context_window": 128000},
        {"provider": "big", "cost": 10.0, "context_window": 200000},
        strategy="cost",
    )

    def cheapest(tokens: int) -> str:
        return next(r.plan(RequestInfo(tokens=tokens), 0.0, rnd())).deployment.name

    assert [cheapest(t) for t in (1000, 100000, 150000)] == ["small", "mid", "big"]
    with pytest.raises(NoDeploymentAvailable, match="context window too small"):
        r.plan(RequestInfo(tokens=300000), 0.0, rnd())


def test_cost_from_the_pricing_table() -> None:
    prices = {("p", "m-large"): 9.0, ("p", "m-small"): 0.5}
    cfg = model({"provider": "p", "upstream_model": "m-large"}, {"provider": "p", "upstream_model": "m-small"},
                strategy="cost")
    r = build_routers({"m": cfg}, cost_of=lambda p, u: prices.get((p, u)))["m"]
    assert next(r.plan(INFO, 0.0, rnd())).deployment.upstream_model == "m-small"


def test_context_window_applies_to_every_strategy() -> None:
    r = router({"provider": "short", "context_window": 4096}, "long")
    assert picks(r, 4, RequestInfo(tokens=5000)) == {"long": 4}


# -- retries -----------------------------------------------------------------------------------------------


def test_retry_moves_to_untried_deployments_at_once_then_backs_off() -> None:
    r = router("a", "b", retry=RetryConfig(max_attempts=4, base_backoff=1.0, max_backoff=4.0),
               breaker=BreakerConfig(enabled=False))
    attempts = r.plan(INFO, 0.0, rnd())
    tried = serve(attempts, [FAIL, FAIL, FAIL])
    assert tried[:2] == ["m/a", "m/b"] and set(tried[2:]) <= {"m/a", "m/b"} and len(tried) == 4
    delays = [a.delay for a in attempts.history]
    assert delays[:2] == [0.0, 0.0] and 0.0 < delays[2] <= 2.0 and 0.0 < delays[3] <= 4.0
    assert attempts.stop_reason == "succeeded"


def test_retries_stop_after_max_attempts() -> None:
    r = router("a", retry=RetryConfig(max_attempts=3), breaker=BreakerConfig(enabled=False))
    attempts = r.plan(INFO, 0.0, rnd())
    assert serve(attempts, [FAIL] * 5) == ["m/a"] * 3
    assert attempts.stop_reason == "max_attempts (3) reached"


def test_retries_stop_at_the_deadline() -> None:
    r = router("a", deadline=2.0, retry=RetryConfig(max_attempts=10, base_backoff=1.0, max_backoff=1.0),
               breaker=BreakerConfig(enabled=False))
    attempts = r.plan(INFO, 0.0, rnd())
    a = next(attempts)
    assert a.timeout == 2.0
    attempts.report(Outcome.TIMEOUT, 1.9)
    assert list(attempts) == [] and attempts.stop_reason == "the deadline would pass"
    attempts = r.plan(INFO, 10.0, rnd())
    next(attempts)
    attempts.report(Outcome.TIMEOUT, 12.0)
    assert list(attempts) == [] and attempts.stop_reason == "the deadline passed"


def test_attempt_timeout_is_the_deployments_cut_at_the_deadline() -> None:
    r = router({"provider": "a", "total_timeout": 5.0}, deadline=30.0)
    assert next(r.plan(INFO, 0.0, rnd())).timeout == 5.0
    assert next(router("a").plan(INFO, 0.0, rnd())).timeout == float("inf")


def test_no_retry_once_the_stream_reached_the_client() -> None:
    r = router("a", "b")
    attempts = r.plan(INFO, 0.0, rnd())
    assert serve(attempts, [FAIL], sent=True) == ["m/a"]
    assert attempts.stop_reason == "the response had started"


def test_a_400_is_neither_retried_nor_fallen_back_from() -> None:
    routers = build_routers({"m": model("a", "b", fallbacks=["f"]), "f": model("x")})
    attempts = routers["m"].plan(INFO, 0.0, rnd())
    assert serve(attempts, [Outcome.CLIENT_ERROR]) == ["m/a"]
    assert attempts.stop_reason == "4xx is not retried"


def test_report_before_next() -> None:
    attempts = router("a").plan(INFO, 0.0, rnd())
    next(attempts)
    with pytest.raises(RuntimeError, match="report"):
        next(attempts)
    attempts.report(OK, 0.0)
    with pytest.raises(RuntimeError, match="no attempt"):
        attempts.report(OK, 0.0)
    assert list(attempts) == []


# -- fallbacks ---------------------------------------------------------------------------------------------


def chain(**kw: Any) -> dict[str, Router]:
    one_try = RetryConfig(max_attempts=1)
    return build_routers({
        "a": model("a1", fallbacks=["b", "c"], retry=one_try, **kw),
        "b": model("b1", fallbacks=["d"], fallback_on=["429"], retry=one_try),
        "c": model("c1", retry=one_try),
        "d": model("d1", retry=one_try),
    })


def test_fallback_chain_is_depth_first() -> None:
    routers = chain()
    assert routers["a"].fallback_models == ("b", "d", "c")
    attempts = routers["a"].plan(INFO, 0.0, rnd())
    assert serve(attempts, [FAIL, Outcome.RATE_LIMITED, FAIL]) == ["a/a1", "b/b1", "d/d1", "c/c1"]


def test_each_fallback_follows_its_parents_conditions() -> None:
    attempts = chain()["a"].plan(INFO, 0.0, rnd())
    # b fails with a 5xx: b's own fallback (d) applies only on 429; a's next fallback (c) applies
    assert serve(attempts, [FAIL, FAIL]) == ["a/a1", "b/b1", "c/c1"]


def test_fallback_only_on_listed_conditions() -> None:
    attempts = chain(fallback_on=["timeout"])["a"].plan(INFO, 0.0, rnd())
    assert serve(attempts, [FAIL]) == ["a/a1"] and attempts.stop_reason == "max_attempts (1) reached"
    attempts = chain(fallback_on=["timeout"])["a"].plan(INFO, 0.0, rnd())
    assert serve(attempts, [Outcome.TIMEOUT]) == ["a/a1", "b/b1"]


def test_context_length_goes_to_the_fallback_without_retrying() -> None:
    routers = build_routers({"small": model("s1", "s2", fallbacks=["large"]), "large": model("l1")})
    attempts = routers["small"].plan(INFO, 0.0, rnd())
    assert serve(attempts, [Outcome.CONTEXT_LENGTH]) == ["small/s1", "large/l1"]


def test_a_failed_stream_before_its_first_byte_moves_to_the_fallback() -> None:
    routers = build_routers({"m": model("a", fallbacks=["f"], retry=RetryConfig(max_attempts=1)), "f": model("x")})
    attempts = routers["m"].plan(INFO, 0.0, rnd())
    assert serve(attempts, [Outcome.CONNECT], sent=False) == ["m/a", "f/x"]


def test_an_unavailable_model_falls_back_at_once() -> None:
    routers = build_routers({
        "m": model("a", fallbacks=["f"], breaker=BreakerConfig(consecutive_failures=1)), "f": model("x"),
    })
    m = routers["m"]
    m.record(m.deployments[0], FAIL, 0.0, 0.0, 0.0)
    attempts = m.plan(INFO, 1.0, rnd())
    assert serve(attempts, []) == ["f/x"]
    assert [(u.deployment, u.reason) for u in attempts.unavailable] == [("a", "circuit open")]


# -- health of deployments in the plan ---------------------------------------------------------------------


def test_a_failing_deployment_is_drained_and_a_probe_restores_it() -> None:
    r = router("good", "bad", breaker=BreakerConfig(consecutive_failures=2, open_for=10.0))
    bad = r.by_name["bad"]
    for t in (0.0, 1.0):
        r.record(bad, Outcome.CONNECT, 0.0, 0.0, t)
    assert picks_at(r, 2.0, 20) == {"good": 20}
    seen = serve(r.plan(INFO, 11.0, rnd()), []) + serve(r.plan(INFO, 11.0, rnd()), [])
    assert sorted(seen) == ["m/bad", "m/good"]  # one of the two was the half-open probe
    assert r.breaker(bad).state.name == "CLOSED"
    assert picks_at(r, 12.0, 20) == {"good": 10, "bad": 10}


def picks_at(r: Router, now: float, n: int) -> Counter[str]:
    out: Counter[str] = Counter()
    for _ in range(n):
        attempts = r.plan(INFO, now, rnd())
        out[next(attempts).deployment.name] += 1
        attempts.report(OK, now)
    return out


def test_a_429_cools_only_that_deployment_for_its_retry_after() -> None:
    r = router("a", "b")
    r.record(r.by_name["a"], Outcome.RATE_LIMITED, 0.0, 0.0, 0.0, retry_after=5.0)
    assert picks_at(r, 1.0, 6) == {"b": 6}
    assert picks_at(r, 5.0, 6) == {"a": 3, "b": 3}


def test_upstream_rpm_and_tpm_are_respected() -> None:
    r = router({"provider": "a", "rpm": 2}, "b", breaker=BreakerConfig(enabled=False))
    assert picks_at(r, 0.0, 6) == {"a": 2, "b": 4}
    assert picks_at(r, 30.0, 2)["a"] == 1  # one more after half a minute
    t = router({"provider": "a", "tpm": 1000}, "b", strategy="cost")
    assert next(t.plan(RequestInfo(tokens=600), 0.0, rnd())).deployment.name == "a"
    assert next(t.plan(RequestInfo(tokens=600), 0.0, rnd())).deployment.name == "b"  # 400 left
    assert next(t.plan(RequestInfo(tokens=5000), 60.0, rnd())).deployment.name == "a"  # larger than tpm: full
    assert next(t.plan(RequestInfo(tokens=10), 61.0, rnd())).deployment.name == "b"  # ... and charged in full


def test_tpm_settles_with_real_usage() -> None:
    r = router({"provider": "a", "tpm": 1000}, "b", strategy="cost")
    attempts = r.plan(RequestInfo(tokens=900), 0.0, rnd())
    next(attempts)
    attempts.report(OK, 0.0, tokens=100)  # refunds 800
    assert next(r.plan(RequestInfo(tokens=800), 0.0, rnd())).deployment.name == "a"


def test_limits_are_shared_between_workers() -> None:
    cfg = model({"provider": "a", "rpm": 8}, "b", breaker=BreakerConfig(enabled=False))
    r = build_routers({"m": cfg}, workers=4)["m"]
    assert picks_at(r, 0.0, 4)["a"] == 2


# -- nothing available -------------------------------------------------------------------------------------


def test_no_deployment_available_says_why() -> None:
    routers = build_routers({
        "m": model("open", "cool", {"provider": "busy", "rpm": 1}, fallbacks=["f"],
                   breaker=BreakerConfig(consecutive_failures=1, open_for=30.0)),
        "f": model("fx", breaker=BreakerConfig(consecutive_failures=1, open_for=30.0)),
    })
    m, f = routers["m"], routers["f"]
    m.record(m.by_name["open"], FAIL, 0.0, 0.0, 0.0)
    m.record(m.by_name["cool"], Outcome.RATE_LIMITED, 0.0, 0.0, 0.0, retry_after=3.0)
    picks_at(m, 0.0, 1)  # uses busy's one request this minute
    f.record(f.by_name["fx"], Outcome.TIMEOUT, 0.0, 0.0, 0.0)
    with pytest.raises(NoDeploymentAvailable) as info:
        m.plan(INFO, 1.0, rnd())
    exc = info.value
    assert exc.status == 503 and exc.code == "no_deployment_available"
    assert [(u.model, u.deployment, u.reason) for u in exc.reasons] == [
        ("m", "open", "circuit open"), ("m", "cool", "cooling down"), ("m", "busy", "rate limited (rpm)"),
        ("f", "fx", "circuit open"),
    ]
    assert exc.message == (
        "No deployment is available for model `m`. model `m`: open circuit open, 29 s more; "
        "cool cooling down, 2 s more; busy rate limited (rpm), 59 s more. fallback `f`: fx circuit open, 29 s more."
    )
    assert exc.headers == [("retry-after", "2")]


def test_ejected_and_probing_reasons() -> None:
    r = router("a", "b", breaker=BreakerConfig(consecutive_failures=1, open_for=5.0))
    r.eject(r.by_name["a"], 0.0)
    r.record(r.by_name["b"], FAIL, 0.0, 0.0, 0.0)
    next(r.plan(INFO, 5.0, rnd()))  # b's probe, never answered
    with pytest.raises(NoDeploymentAvailable) as info:
        r.plan(INFO, 6.0, rnd())
    assert [u.reason for u in info.value.reasons] == ["ejected by the health check", "half-open, probes in flight"]
    assert info.value.retry_after is None and info.value.headers == []


# -- config reload -----------------------------------------------------------------------------------------


def test_reload_keeps_the_state_of_deployments_that_stay() -> None:
    cfg = model("a", "b", breaker=BreakerConfig(consecutive_failures=1, open_for=60.0))
    old = build_routers({"m": cfg})
    m = old["m"]
    m.record(m.by_name["a"], FAIL, 0.0, 0.0, 0.0)
    new = build_routers({"m": model("a", "b", "c", breaker=BreakerConfig(consecutive_failures=1, open_for=90.0))},
                        previous=old)["m"]
    assert new.breaker(new.by_name["a"]).until == 60.0
    assert "a" not in picks_at(new, 1.0, 9)
