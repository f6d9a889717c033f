"""Routing's cost per request: what a routed model's request pays over a direct one, in the router.

A routed request that succeeds at its first attempt costs, over a direct model, exactly this much
routing work (the engine's callback path, ``Engine._route_now``): the facts the strategy needs of the
request (``Router.info``), one pick (``Router.pick``), one in-flight count (``Router.acquire``) and one
recorded success (``Router.ok``). This script runs those calls in a loop for one model per strategy,
against the same loop with the calls left out, and prints the difference per request::

    python -m bench.routing                 # every strategy, best of 5 runs of 200,000 requests
    python -m bench.routing -n 500000 --runs 7
    python -m bench.routing --json

The end-to-end figure (the same requests through the listener, the engine and the pool, routed vs
direct) is ``python -m bench.inproc --config FILE`` with a routed and a direct config in the same run;
it carries the engine's glue around these calls as well (docs/routing.md, "Cost on the request path").
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from typing import Any

from gateway.routing.config import BreakerConfig, DeploymentConfig, RoutingConfig
from gateway.routing.outcome import Outcome
from gateway.routing.router import Router, build_routers

#: what every strategy's model has: two deployments with breakers (the defaults of a deployments list)
STRATEGIES: dict[str, dict[str, Any]] = {
    "weighted": {"strategy": "weighted"},
    "least_latency": {"strategy": "least_latency"},
    "least_busy": {"strategy": "least_busy"},
    "consistent_hash": {"strategy": "consistent_hash", "hash_on": "user"},
    "split": {"strategy": "split", "split": {"a": 90, "b": 10}},
    "cost": {"strategy": "cost"},
    "weighted+windows+tpm": {"strategy": "weighted", "context_window": 128000, "tpm": 10_000_000},
}


class FakeRequest:
    """What ``Router.info`` reads of a request: the decoded fields, the key, the body, the headers."""

    __slots__ = ("body", "fields", "header", "key")

    def __init__(self) -> None:
        self.body = b'{"model":"m","messages":[{"role":"user","content":"hello there"}]}'
        self.fields = _Fields()
        self.key = None
        self.header = {b"x-user": b"alice"}.get


class _Fields:
    __slots__ = ("max_tokens", "model", "user")

    def __init__(self) -> None:
        self.model = "m"
        self.user = "user-4711"
        self.max_tokens = 256


def router_for(name: str) -> Router:
    spec = dict(STRATEGIES[name])
    window = spec.pop("context_window", None)
    tpm = spec.pop("tpm", None)
    deployments = [
        DeploymentConfig(provider="p", name=n, upstream_model="m", weight=w, cost=c,
                         context_window=window, tpm=tpm)
        for n, w, c in (("a", 3, 1.0), ("b", 1, 2.0))
    ]
    cfg = RoutingConfig(deployments=deployments, breaker=BreakerConfig(enabled=True), **spec)
    return build_routers({"m": cfg})["m"]


def _loop(router: Router | None, n: int) -> float:
    """Seconds for ``n`` requests' routing calls (``router`` None: the loop alone)."""
    req = FakeRequest()
    body, fields, key, header = req.body, req.fields, req.key, req.header
    rnd = random.random
    clock = time.monotonic
    ok = Outcome.OK
    t0 = time.perf_counter()
    if router is None:
        for _ in range(n):
            now = clock()
            clock()
    else:
        info_of, pick, acquire, done = router.info, router.pick, router.acquire, router.ok
        deployments = router.deployments
        for _ in range(n):
            now = clock()
            info = info_of(fields, key, header, len(body))
            i = pick(info, now, rnd)
            acquire(i)
            end = clock()
            done(deployments[i], end - now, end)
    del ok
    return time.perf_counter() - t0


def measure(name: str, n: int, runs: int) -> float:
    """Microseconds of routing per request: best of ``runs`` of (routed loop - empty loop)."""
    router = router_for(name)
    _loop(router, min(n, 20_000))
    best = []
    for _ in range(runs):
        empty = _loop(None, n)
        full = _loop(router, n)
        best.append((full - empty) / n * 1e6)
    return min(best)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", "--requests", type=int, default=200_000)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--strategies", default=",".join(STRATEGIES))
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    results = {}
    for name in args.strategies.split(","):
        results[name] = round(measure(name, args.requests, args.runs), 3)
        if not args.json:
            print(f"{name:24s} {results[name]:6.2f} us routing per request", flush=True)
    if args.json:
        json.dump({"us_per_request": results, "median": statistics.median(results.values())}, sys.stdout)
        print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
