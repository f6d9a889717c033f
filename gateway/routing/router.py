"""Per-request routing: which deployment each attempt of a request goes to.

A ``Router`` belongs to one model and is built once per config snapshot (``build_routers``). Per request,
``plan`` returns an ``Attempts`` iterator; the engine sends each attempt it yields and ``report``s how it
ended, which feeds the breaker, the latency and in-flight trackers, and decides the next attempt::

    attempts = router.plan(RequestInfo(user=..., tokens=...), now, rnd)   # may raise NoDeploymentAvailable
    for attempt in attempts:
        if attempt.delay:
            await asyncio.sleep(attempt.delay)
        ...send to attempt.deployment within attempt.timeout...
        attempts.report(outcome, now, ttfb=..., total=..., retry_after=..., sent=...)
    # after the loop: the last report was OK, or attempts.stop_reason says why nothing follows

Order of attempts:

1. The strategy's pick among the model's *eligible* deployments: not open, not cooling down, not over its
   own rpm/tpm, and with a context window that fits the request.
2. Retries (``retry`` policy): first to eligible deployments not yet tried in this request, at once; when
   every eligible one has been tried, to one of those again after the backoff.
3. Fallbacks: when the model has failed (or has nothing eligible) and the last failure matches its
   ``fallback_on``, the fallback models in order, each with its own strategy, deployments and retries.
   A fallback's own fallbacks follow it (depth first, each model at most once), under that fallback's
   ``fallback_on``. The deadline is the requested model's, for the whole request.

A request with a data-residency constraint (``RequestInfo.residency``, see ``gateway.routing.residency``)
sees, in every step above, only the deployments it matches: the model's mask for it (``allowed``,
memoized per router) is intersected with every eligibility mask. A requested model with no matching
deployment is refused (``RegionNotAllowed``, 403) before any attempt; a fallback model with none is passed
over (its own fallbacks still apply); when matching deployments exist but none can take the request, the
503 lists those only.

All times (``now``, ``until``) are on one monotonic clock chosen by the caller; ``rnd`` returns uniform
floats in [0, 1) (``random.random``, or a seeded ``random.Random().random`` in tests). Nothing here
awaits, sleeps or reads a clock.

Each worker keeps its own routers. Breaker opens and closes reach the other workers and nodes through
``BreakerSync`` (``on_change`` / ``apply``); upstream rpm/tpm limits are split evenly between a node's
workers (``workers``), each enforcing its share locally.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from typing import NamedTuple

from gateway import errors
from gateway._core.limit import Bucket
from gateway._core.route import (
    ALL,
    STRATEGIES,
    HashRing,
    LeastBusy,
    LeastLatency,
    RequestInfo,
    RouterCore,
    SmoothWeighted,
    Split,
)
from gateway.routing.breaker import Breaker, Change, State
from gateway.routing.config import DeploymentConfig, RoutingConfig
from gateway.routing.outcome import Outcome
from gateway.routing.residency import Residency
from gateway.routing.retry import RetryPolicy
from gateway.routing.stats import deployment_stats

__all__ = [
    "Attempt",
    "Attempts",
    "Deployment",
    "NoDeploymentAvailable",
    "RegionNotAllowed",
    "RequestInfo",
    "Router",
    "Unavailable",
    "build_routers",
    "deployment_id",
]

_INF = math.inf
_NO_WINDOW = 1 << 62  # a deployment without a context_window takes any size
_HASH_VNODES = 160
#: residency masks memoized per router; past this a mask is computed each time (distinct constraints are
#: few: one per distinct regions/tags combination of the keys and tenants)
_MAX_ALLOWED = 1024

Random = Callable[[], float]
ChangeListener = Callable[["Deployment", Change], None]


def deployment_id(model: str, name: str) -> str:
    """A deployment's id across workers and nodes (breaker sync): model and name, unit-separated."""
    return f"{model}\x1f{name}"


_OK = Outcome.OK


class Deployment:
    """One deployment of a model, resolved from its config. ``index`` is its bit in eligibility masks."""

    __slots__ = (
        "config", "connect_timeout", "context_window", "cost", "first_byte_timeout", "id", "index", "model",
        "name", "provider", "region", "stats", "tags", "total_timeout", "upstream_model", "weight",
    )

    def __init__(self, model: str, index: int, config: DeploymentConfig, cost: float | None) -> None:
        self.config = config
        self.model = model
        self.index = index
        self.name = config.display_name()
        self.id = deployment_id(model, self.name)
        self.provider = config.provider
        self.upstream_model = config.upstream_model or model
        self.weight = config.weight
        self.cost = cost
        self.region = config.region
        self.tags = tuple(config.tags)
        self.connect_timeout = config.connect_timeout
        self.first_byte_timeout = config.first_byte_timeout
        self.total_timeout = config.total_timeout
        self.context_window = config.context_window
        #: the metrics' counters: one object per deployment id for the worker's life (survives reloads)
        self.stats = deployment_stats(model, self.name)

    def __repr__(self) -> str:
        return f"<Deployment {self.model}/{self.name}>"


class Unavailable(NamedTuple):
    """Why one deployment could take no request."""

    model: str
    deployment: str
    #: "circuit open", "ejected by the health check", "cooling down", "half-open, probes in flight",
    #: "rate limited (rpm)", "rate limited (tpm)" or "context window too small"
    reason: str
    #: until when (the caller's clock), when known
    until: float | None
    #: the ``fallback_on`` condition it counts as: "5xx", "429" or "context_length"
    condition: str


class NoDeploymentAvailable(errors.ServiceUnavailable):
    """503: no deployment of the model, nor of any fallback that applied, could take the request."""

    code = "no_deployment_available"

    def __init__(self, model: str, reasons: list[Unavailable], now: float) -> None:
        self.model = model
        self.reasons = reasons
        waits = [r.until - now for r in reasons if r.until is not None and math.isfinite(r.until)]
        self.retry_after = max(1, math.ceil(min(waits))) if waits else None
        headers = [("retry-after", str(self.retry_after))] if self.retry_after is not None else []
        super().__init__(_unavailable_message(model, reasons, now), headers=headers)


class RegionNotAllowed(errors.PermissionDenied):
    """403: the caller's data residency allows no deployment of the model (nothing is sent anywhere)."""

    code = "region_not_allowed"

    def __init__(self, model: str, residency: Residency, key_id: str | None = None) -> None:
        self.model = model
        self.residency = residency
        who = f"The API key {key_id}" if key_id else "This API key"
        super().__init__(
            f"{who} may only be served by deployments {residency.text}; the model `{model}` has none.",
            param="model",
        )


def _unavailable_message(model: str, reasons: list[Unavailable], now: float) -> str:
    parts: list[str] = []
    current = None
    items: list[str] = []

    def flush() -> None:
        if current is None:
            return
        what = f"model `{current}`" if current == model else f"fallback `{current}`"
        parts.append(f"{what}: " + "; ".join(items))

    for r in reasons:
        if r.model != current:
            flush()
            current = r.model
            items = []
        when = ""
        if r.until is not None and math.isfinite(r.until):
            when = f", {max(0.0, r.until - now):.3g} s more"
        items.append(f"{r.deployment} {r.reason}{when}")
    flush()
    detail = ". ".join(parts) if parts else f"model `{model}` has no deployments"
    return f"No deployment is available for model `{model}`. {detail}."


class Attempt:
    """One try of a request. Send it after ``delay`` seconds, to ``deployment``, within ``timeout``."""

    __slots__ = ("delay", "deployment", "number", "outcome", "reserved", "router", "timeout")

    def __init__(
        self, router: Router, deployment: Deployment, number: int, delay: float, timeout: float, reserved: int
    ) -> None:
        self.router = router
        self.deployment = deployment
        #: 1-based, across the whole request (fallbacks included)
        self.number = number
        self.delay = delay
        #: total time this attempt may take: the deployment's total_timeout, cut at the request deadline
        #: (``inf``: neither is set)
        self.timeout = timeout
        self.reserved = reserved
        self.outcome: Outcome | None = None

    @property
    def model(self) -> str:
        return self.router.model

    def __repr__(self) -> str:
        return f"<Attempt {self.number} {self.deployment.model}/{self.deployment.name} delay={self.delay:g}>"


class Attempts:
    """The attempts of one request, decided one at a time from the outcome of the previous one.

    Iterate it; after each attempt call ``report`` exactly once (that also releases the deployment's
    in-flight count). Iteration ends after a success, or when no further attempt is allowed:
    ``stop_reason`` says why, ``unavailable`` lists deployments found unavailable on the way.
    """

    __slots__ = (
        "_attempts", "_chain", "_entered", "_info", "_mask", "_next", "_now", "_outcome", "_pending", "_pos",
        "_retry_after", "_rnd", "_router", "_sent", "_tried", "deadline", "history", "stop_reason",
        "unavailable",
    )

    def __init__(self, router: Router, info: RequestInfo, now: float, rnd: Random, first: int = -1) -> None:
        self._router = router
        self._chain = router._chain
        self._info = info
        self._rnd = rnd
        self._now = now
        self.deadline = now + router.deadline
        self._pos = 0
        self._entered = 1
        self._tried = 0
        self._attempts = 0  # on the current model
        self._outcome: Outcome | None = None
        self._retry_after: float | None = None
        self._sent = False
        self._pending: Attempt | None = None
        self.history: list[Attempt] = []
        self.stop_reason: str | None = None
        self.unavailable: list[Unavailable] = []
        #: the deployments of the current model the request may go to at all (its residency)
        self._mask = mask = router.allowed(info.residency)
        if not mask:
            raise RegionNotAllowed(router.model, info.residency, info.key_id)
        if first < 0:
            first = router._choose(router._eligible(now, info.tokens) & mask, info, rnd, now)
        if first >= 0:
            self._next: Attempt | None = self._make(router, first, now, 0.0)
        else:
            self.unavailable.extend(router.unavailable(now, info.tokens, mask))
            self._next = self._fallback(frozenset(u.condition for u in self.unavailable), now, "")
            if self._next is None:
                raise NoDeploymentAvailable(router.model, self.unavailable, now)

    def _make(self, router: Router, i: int, now: float, delay: float) -> Attempt:
        d = router.deployments[i]
        self._tried |= 1 << i
        self._attempts += 1
        timeout = self.deadline - now - delay
        if d.total_timeout is not None and d.total_timeout < timeout:
            timeout = d.total_timeout
        return Attempt(router, d, len(self.history) + 1, delay, timeout, self._info.tokens)

    def __iter__(self) -> Iterator[Attempt]:
        return self

    def __next__(self) -> Attempt:
        if self._pending is not None:
            raise RuntimeError("report() how the previous attempt ended before asking for the next")
        nxt = self._next
        if nxt is None:
            if self._outcome is None or self.stop_reason is not None:
                raise StopIteration
            nxt = self._decide()
            if nxt is None:
                raise StopIteration
        self._next = None
        self._pending = nxt
        self.history.append(nxt)
        nxt.router.acquire(nxt.deployment.index)
        return nxt

    @property
    def current(self) -> Attempt | None:
        """The attempt handed out and not yet reported."""
        return self._pending

    def report(
        self,
        outcome: Outcome,
        now: float,
        *,
        ttfb: float = 0.0,
        total: float = 0.0,
        retry_after: float | None = None,
        sent: bool = False,
        tokens: int | None = None,
    ) -> None:
        """How the current attempt ended. ``ttfb``/``total``: its latencies in seconds; ``retry_after``:
        the upstream's wait hint (``parse_retry_after``); ``sent``: whether any byte of it reached the
        client; ``tokens``: the real usage, to settle the deployment's tpm."""
        a = self._pending
        if a is None:
            raise RuntimeError("no attempt to report on")
        self._pending = None
        a.outcome = outcome
        a.router.record(
            a.deployment, outcome, ttfb, total, now, retry_after, tokens=tokens, reserved=a.reserved
        )
        self._outcome = outcome
        self._retry_after = retry_after
        self._sent = sent
        self._now = now

    def abandon(self) -> None:
        """The current attempt will have no result (the request was cancelled, or its client left while
        it ran): release what it holds (its in-flight count) and end the plan, telling the breaker and the
        latency tracker nothing. A probe abandoned this way frees its slot after ``open_for``. No-op when
        no attempt is pending."""
        a = self._pending
        if a is None:
            return
        self._pending = None
        a.router.release(a.deployment.index)
        self.stop_reason = "abandoned"

    def _decide(self) -> Attempt | None:
        """The attempt after a reported failure, or None (``stop_reason`` set)."""
        outcome = self._outcome
        assert outcome is not None
        now = self._now
        if outcome is Outcome.OK:
            self.stop_reason = "succeeded"
            return None
        if self._sent:
            self.stop_reason = "the response had started"
            return None
        if now >= self.deadline:
            self.stop_reason = "the deadline passed"
            return None
        router = self._router
        policy = router.retry
        info = self._info
        why = policy.stop_reason(outcome, self._attempts, False)
        if why is None:
            eligible = router._eligible(now, info.tokens) & self._mask
            i = router._choose(eligible & ~self._tried, info, self._rnd, now)
            if i >= 0:
                router.deployments[i].stats.retries += 1
                return self._make(router, i, now, 0.0)
            wait, why = policy.delay(self._attempts, self._rnd(), now, self.deadline, self._retry_after)
            if outcome is Outcome.CREDENTIALS:  # the same credential would be refused again
                wait, why = None, "the provider refused the deployment's credentials"
            if wait is not None:
                at = now + wait
                mask, gated = router._eligible_at(at, info.tokens)
                i = router._choose(mask & self._mask & self._tried, info, self._rnd, at, gated)
                if i >= 0:
                    router.deployments[i].stats.retries += 1
                    return self._make(router, i, now, wait)
                why = "no deployment of the model is available for a retry"
        return self._fallback(frozenset((outcome.condition,)), now, why)

    def _fallback(self, conditions: frozenset[str], now: float, why: str) -> Attempt | None:
        """The first deployment of the next fallback model that applies, or None (``stop_reason`` set)."""
        chain = self._chain
        info = self._info
        for j in range(self._pos + 1, len(chain)):
            router, parent = chain[j]
            if not (self._entered >> parent) & 1 or not conditions & chain[parent][0].fallback_on:
                continue
            self._entered |= 1 << j
            mask = router.allowed(info.residency)
            if not mask:  # nothing of this fallback may serve the request: passed over, its own may
                continue
            self._pos = j
            self._router = router
            self._mask = mask
            self._tried = 0
            self._attempts = 0
            i = router._choose(router._eligible(now, info.tokens) & mask, info, self._rnd, now)
            if i >= 0:
                router.deployments[i].stats.fallbacks += 1
                return self._make(router, i, now, 0.0)
            reasons = router.unavailable(now, info.tokens, mask)
            self.unavailable.extend(reasons)
            conditions = frozenset(u.condition for u in reasons)
            why = f"no deployment of fallback `{router.model}` is available"
        self.stop_reason = why or "no fallback applies"
        return None


class Router(RouterCore):
    """Routing state of one model in one worker: deployments, strategy, breakers, limits, latencies.

    The first attempt's pick, its in-flight count and its success (``info``, ``pick``, ``acquire``,
    ``release``, ``ok``), and the admission of a gated deployment (``admit``) are ``RouterCore``'s,
    compiled; this class sets the fields they read."""

    _breakers: list[Breaker]

    def __init__(
        self,
        model: str,
        config: RoutingConfig,
        *,
        cost_of: Callable[[str, str], float | None] | None = None,
        workers: int = 1,
        previous: Router | None = None,
    ) -> None:
        """``cost_of(provider, upstream_model)``: the pricing table (USD per million tokens) for
        deployments without a ``cost``; ``workers``: how many workers share the upstream limits;
        ``previous``: this model's router from the last snapshot, whose breaker, cooldown, latency and
        limit state carries over to deployments of the same name (config reload)."""
        if not config.deployments:
            raise ValueError(f"model {model!r} has no deployments")
        self.model = model
        self.config = config
        deployments: list[Deployment] = []
        for i, dc in enumerate(config.deployments):
            cost = dc.cost
            if cost is None and cost_of is not None:
                cost = cost_of(dc.provider, dc.upstream_model or model)
            deployments.append(Deployment(model, i, dc, cost))
        self.deployments: tuple[Deployment, ...] = tuple(deployments)
        self.by_name = {d.name: d for d in deployments}
        n = len(deployments)
        self.n = n
        self._full = (1 << n) - 1
        self.strategy = config.strategy
        self.retry = RetryPolicy(config.retry)
        self.fallback_on = frozenset(config.fallback_on)
        self.deadline = config.deadline if config.deadline is not None else _INF
        self.health = config.health
        #: called with each breaker change worth sharing (set by ``BreakerSync.attach``)
        self.on_change: ChangeListener | None = None
        # (router, index of the entry that introduced it) in fallback order; ``link`` fills in the rest
        self._chain: tuple[tuple[Router, int], ...] = ((self, 0),)
        # PERF: residency -> mask of the deployments it matches, filled on first use (``allowed``)
        self._allowed = {}

        self._breakers = [Breaker(config.breaker) for _ in deployments]

        # eligibility: deployments blocked outright, and those to ask one by one when picked
        self._blocked = 0
        self._gated = 0
        self._recheck = -_INF
        share = max(1, workers)
        self._rpm: list[Bucket | None] = []
        self._tpm: list[Bucket | None] = []
        limited = 0
        for i, d in enumerate(deployments):
            rpm, tpm = d.config.rpm, d.config.tpm
            self._rpm.append(Bucket(rpm / 60.0 / share, max(1.0, rpm / share)) if rpm else None)
            self._tpm.append(Bucket(tpm / 60.0 / share, max(1.0, tpm / share)) if tpm else None)
            if rpm or tpm:
                limited |= 1 << i
        self._limited = limited
        self._windows = [d.context_window or _NO_WINDOW for d in deployments]
        self._min_window = min(self._windows)

        # the strategy; PERF: the pickers are built here, per request only RouterCore.pick_one runs
        weights = [d.weight for d in deployments]
        self._rr = SmoothWeighted(weights)
        self._ll = LeastLatency(n) if config.strategy == "least_latency" else None
        self._lb = LeastBusy(n) if config.strategy == "least_busy" else None
        self._tie = 0
        self._costs = [d.cost if d.cost is not None else _INF for d in deployments]
        self._split: Split | None = None
        if config.strategy == "split":
            self._split = Split([config.split.get(d.name, 0.0) for d in deployments])
        self._ring: HashRing | None = None
        self._hash_kind = 0
        self._hash_header = b""
        if config.strategy == "consistent_hash":
            g = math.gcd(*weights)
            self._ring = HashRing([d.name for d in deployments], [w // g for w in weights], _HASH_VNODES)
            kind, _, header = config.hash_on.partition(":")
            self._hash_kind = {"user": 0, "key_id": 1, "header": 2}[kind]
            self._hash_header = header.strip().lower().encode("latin-1")
        # PERF: the strategy is resolved once; per request RouterCore.pick_one runs it, compiled
        self._strategy = STRATEGIES[config.strategy]
        # what ``info`` reads of a request: 0 nothing, 1 the token estimate (context windows, tpm), 2 that
        # and the hash keys
        needs = 1 if self._min_window < _NO_WINDOW or any(t is not None for t in self._tpm) else 0
        self._needs = 2 if config.strategy == "consistent_hash" else needs
        if previous is not None:
            self._inherit(previous)

    def _inherit(self, old: Router) -> None:
        for i, d in enumerate(self.deployments):
            od = old.by_name.get(d.name)
            if od is None:
                continue
            j = od.index
            # the state is copied, not the breaker shared: each router caches what its breakers block, and
            # results still arriving on the old router must not change it behind the new one's back
            self._breakers[i].inherit(old._breakers[j])
            if d.config.rpm == od.config.rpm:
                self._rpm[i] = old._rpm[j]
            if d.config.tpm == od.config.tpm:
                self._tpm[i] = old._tpm[j]
            if self._ll is not None and old._ll is not None and old._ll.observed(j):
                self._ll.observe(i, old._ll.ttfb(j), old._ll.total(j))

    def link(self, routers: Mapping[str, Router]) -> None:
        """Resolve the fallback chain against the snapshot's routers: depth first, each model once."""
        chain: list[tuple[Router, int]] = [(self, 0)]
        seen = {self.model}

        def visit(router: Router, at: int) -> None:
            for name in router.config.fallbacks:
                target = routers.get(name)
                if target is None or name in seen:
                    continue
                seen.add(name)
                chain.append((target, at))
                visit(target, len(chain) - 1)

        visit(self, 0)
        self._chain = tuple(chain)

    @property
    def fallback_models(self) -> tuple[str, ...]:
        """The models tried after this one, in order."""
        return tuple(r.model for r, _ in self._chain[1:])

    # -- per request

    def allowed(self, residency: Residency | None) -> int:
        """The mask of the deployments a request with ``residency`` may go to (``ALL`` for None)."""
        if residency is None:
            return ALL
        mask = self._allowed.get(residency)
        if mask is None:
            mask = 0
            for d in self.deployments:
                if residency.matches(d.region, d.tags):
                    mask |= 1 << d.index
            if len(self._allowed) < _MAX_ALLOWED:
                self._allowed[residency] = mask
        return mask

    def plan(self, info: RequestInfo, now: float, rnd: Random, first: int = -1) -> Attempts:
        """The attempts of one request; raises ``NoDeploymentAvailable`` when none can even start.

        ``first``: the deployment of the first attempt, already chosen by ``pick`` (its in-flight count
        not held: the first attempt takes it as every attempt does)."""
        return Attempts(self, info, now, rnd, first)

    def _refresh(self, now: float) -> None:
        blocked = 0
        gated = self._limited
        recheck = _INF
        for i, b in enumerate(self._breakers):
            t = b.blocked_until(now)
            if t > now:
                blocked |= 1 << i
                if t < recheck:
                    recheck = t
            elif b.state is not State.CLOSED:
                gated |= 1 << i
        self._blocked = blocked
        self._gated = gated
        self._recheck = recheck

    def _eligible(self, now: float, tokens: int) -> int:
        """The mask of deployments not blocked outright and whose context window fits ``tokens``."""
        if now >= self._recheck:  # PERF: recomputed only when a block may have lifted or state changed
            self._refresh(now)
        mask = ~self._blocked
        if tokens > self._min_window:
            mask &= self._fit(tokens)
        return mask

    def _eligible_at(self, at: float, tokens: int) -> tuple[int, int]:
        """``_eligible`` at a future time, and the deployments to ask one by one then; no caching."""
        mask = ALL
        gated = self._limited
        for i, b in enumerate(self._breakers):
            if b.blocked_until(at) > at:
                mask &= ~(1 << i)
            elif b.state is not State.CLOSED:
                gated |= 1 << i
        if tokens > self._min_window:
            mask &= self._fit(tokens)
        return mask, gated

    def _fit(self, tokens: int) -> int:
        mask = 0
        for i, w in enumerate(self._windows):
            if w >= tokens:
                mask |= 1 << i
        return mask

    def _choose(self, mask: int, info: RequestInfo, rnd: Random, now: float, gated: int | None = None) -> int:
        """The strategy's pick among ``mask``, asking gated deployments (probes, limits) one by one."""
        if gated is None:
            gated = self._gated
        full = self._full
        while mask & full:
            i = self.pick_one(mask, info, rnd)
            if i < 0:
                return -1
            if not (gated >> i) & 1 or self.admit(i, now, info.tokens):
                return i
            mask &= ~(1 << i)
        return -1

    # -- results

    def record(
        self,
        deployment: Deployment,
        outcome: Outcome,
        ttfb: float,
        total: float,
        now: float,
        retry_after: float | None = None,
        *,
        tokens: int | None = None,
        reserved: int = 0,
    ) -> None:
        """Feed one attempt's result to the breaker, the cooldown, the latency and in-flight trackers and
        the tpm bucket (``tokens``: the real usage against the ``reserved`` estimate)."""
        i = deployment.index
        b = self._breakers[i]
        if self._lb is not None:  # PERF: inline, as in ``release``
            self._lb.release(i)
        if outcome is _OK:  # PERF: the common case first, no enum hashing
            deployment.stats.ok += 1
            change = b.on_success(now)
            if change is not None:
                self._changed(deployment, change)
            if self._ll is not None:
                self._ll.observe(i, ttfb, total)
        else:
            deployment.stats.failed(outcome.value)
            change = b.on_failure(now) if outcome.failed else b.on_success(now)
            if change is not None:
                self._changed(deployment, change)
            if outcome is Outcome.RATE_LIMITED or retry_after is not None:
                change = b.cool(now, retry_after)
                if change is not None:
                    self._changed(deployment, change)
        if tokens is not None:
            tpm = self._tpm[i]
            if tpm is not None:
                if tokens > reserved:
                    tpm.force(now, float(tokens - reserved))
                elif tokens < reserved:
                    tpm.refund(now, float(reserved - tokens))

    def _changed(self, deployment: Deployment, change: Change) -> None:
        self._recheck = -_INF
        if change.state == "open":
            deployment.stats.breaker_opens += 1
        if change.state == "closed" and self._ll is not None:
            self._ll.reset(deployment.index)  # measured afresh, so a recovered deployment is tried again
        listener = self.on_change
        if listener is not None:
            listener(deployment, change)

    def eject(self, deployment: Deployment, now: float) -> bool:
        """Take the deployment out until ``restore`` (the health checker's verdict)."""
        change = self._breakers[deployment.index].eject(now)
        if change is not None:
            self._changed(deployment, change)
        return change is not None

    def restore(self, deployment: Deployment, now: float) -> bool:
        """Put an ejected deployment back."""
        change = self._breakers[deployment.index].restore(now)
        if change is not None:
            self._changed(deployment, change)
        return change is not None

    def apply(self, deployment: Deployment, change: Change, now: float) -> bool:
        """Apply another worker's change to the deployment's breaker (not passed on again)."""
        applied = self._breakers[deployment.index].apply(change, now)
        if applied:
            self._recheck = -_INF
            if change.state == "closed" and self._ll is not None:
                self._ll.reset(deployment.index)
        return applied

    # -- reading

    def breaker(self, deployment: Deployment) -> Breaker:
        return self._breakers[deployment.index]

    def inflight(self, deployment: Deployment) -> int:
        """Requests in flight to the deployment (counted with strategy "least_busy" only)."""
        return self._lb.inflight(deployment.index) if self._lb is not None else 0

    def unavailable(self, now: float, tokens: int = 0, mask: int = ALL) -> list[Unavailable]:
        """Why each deployment (of ``mask``) that could not take a request of ``tokens`` now cannot."""
        out: list[Unavailable] = []
        for i, d in enumerate(self.deployments):
            if not (mask >> i) & 1:
                continue
            b = self._breakers[i]
            why: tuple[str, float | None, str] | None = None
            if self._windows[i] < tokens:
                why = ("context window too small", None, "context_length")
            elif b.ejected:
                why = ("ejected by the health check", None, "5xx")
            elif b.state is State.OPEN and b.until > now:
                why = ("circuit open", b.until, "5xx")
            elif b.cooldown_until > now:
                why = ("cooling down", b.cooldown_until, "429")
            elif not b.would_admit(now):
                why = ("half-open, probes in flight", None, "5xx")
            else:
                rpm, tpm = self._rpm[i], self._tpm[i]
                wait = rpm.retry_after(now, 1.0) if rpm is not None else 0.0
                if wait > 0.0:
                    why = ("rate limited (rpm)", now + wait, "429")
                elif tpm is not None:
                    wait = tpm.retry_after(now, min(float(tokens), tpm.burst))
                    if wait > 0.0:
                        why = ("rate limited (tpm)", now + wait, "429")
            if why is not None:
                out.append(Unavailable(self.model, d.name, why[0], why[1], why[2]))
        return out


def build_routers(
    models: Mapping[str, RoutingConfig],
    *,
    cost_of: Callable[[str, str], float | None] | None = None,
    workers: int = 1,
    previous: Mapping[str, Router] | None = None,
) -> dict[str, Router]:
    """A router per model, fallback chains linked. ``previous``: the routers of the last snapshot (state
    carries over per deployment name)."""
    old = previous or {}
    routers = {
        name: Router(name, cfg, cost_of=cost_of, workers=workers, previous=old.get(name))
        for name, cfg in models.items()
    }
    for router in routers.values():
        router.link(routers)
    return routers
