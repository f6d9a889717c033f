"""Routing configuration of one model: its deployments, strategy, fallbacks, retries, breaker, health check.

``RoutingConfig`` holds every routing key of a ``[models.NAME]`` table. It is written to be embedded in the
main schema, either as the base of the model's Struct (the keys sit directly in ``[models.NAME]``, which is
how the documentation shows them) or as a nested table. Durations are seconds (float), like the rest of
the schema. ``routing_problems`` is the semantic check the loader runs on every model: it yields
``(path, message)`` pairs shaped like the loader's own problems, so they are rendered with file and line.

A model written the old way, with one ``provider``, is a model with one deployment: ``single_deployment``
builds it.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from difflib import get_close_matches
from typing import Literal, NamedTuple

import msgspec

__all__ = [
    "FALLBACK_CONDITIONS",
    "RETRY_CONDITIONS",
    "STRATEGIES",
    "BreakerConfig",
    "DeploymentConfig",
    "FallbackCondition",
    "HealthCheckConfig",
    "RetryCondition",
    "RetryConfig",
    "RoutingConfig",
    "RoutingProblem",
    "Strategy",
    "routing_problems",
    "single_deployment",
]

Strategy = Literal["weighted", "least_latency", "least_busy", "cost", "consistent_hash", "split"]
#: failures a retry may follow: transport errors before the response head ("connect"), timeouts, 429, 5xx
RetryCondition = Literal["connect", "timeout", "429", "5xx"]
#: failures after which the request moves on to the fallback models ("5xx" includes transport errors)
FallbackCondition = Literal["429", "5xx", "timeout", "context_length"]

STRATEGIES: tuple[str, ...] = ("weighted", "least_latency", "least_busy", "cost", "consistent_hash", "split")
RETRY_CONDITIONS: tuple[str, ...] = ("connect", "timeout", "429", "5xx")
FALLBACK_CONDITIONS: tuple[str, ...] = ("429", "5xx", "timeout", "context_length")


def _every_retry_condition() -> list[RetryCondition]:
    return ["connect", "timeout", "429", "5xx"]


def _every_fallback_condition() -> list[FallbackCondition]:
    return ["429", "5xx", "timeout", "context_length"]


class _Base(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    pass


class DeploymentConfig(_Base, frozen=True):
    """One upstream serving the model: a provider (its base URL and credential) and a model id there."""

    #: name of a [providers.*] table
    provider: str
    #: the model id sent upstream (default: the model's own name)
    upstream_model: str | None = None
    #: the deployment's name within the model: in split percentages, the consistent-hash ring, messages,
    #: call records and the variant response header (default: "provider", or "provider/upstream_model")
    name: str | None = None
    #: relative share of traffic for "weighted" (and of keys for "consistent_hash")
    weight: int = 1
    #: USD per million tokens; overrides the pricing table for the "cost" strategy
    cost: float | None = None
    #: where the deployment runs and what it is, for data residency: a key or tenant with ``regions`` or
    #: ``required_tags`` is served only by deployments that match them (docs/routing.md)
    region: str | None = None
    tags: list[str] = msgspec.field(default_factory=list)
    #: per-attempt timeouts, seconds (docs/routing.md, "Time bounds of an attempt"): opening a connection
    #: (default: the provider's connect_timeout); to the response head, or a stream's first event; the
    #: whole attempt, body or stream included (default for both: none, the provider's read_timeout only)
    connect_timeout: float | None = None
    first_byte_timeout: float | None = None
    total_timeout: float | None = None
    #: the upstream's own limits, respected so that the gateway does not earn the provider's 429s
    rpm: int | None = None
    tpm: int | None = None
    #: the largest prompt + completion the upstream accepts, in tokens
    context_window: int | None = None

    def display_name(self) -> str:
        """The name this deployment goes by (``name``, else derived from provider and upstream model)."""
        if self.name is not None:
            return self.name
        if self.upstream_model:
            return f"{self.provider}/{self.upstream_model}"
        return self.provider


class RetryConfig(_Base, frozen=True):
    #: attempts on this model's deployments, the first included (1 = no retry)
    max_attempts: int = 3
    #: full-jitter exponential backoff: the n-th retry waits a random time in [0, min(max, base * 2^(n-1))]
    base_backoff: float = 0.25
    #: the longest wait before a retry, Retry-After included; a longer Retry-After moves on instead
    max_backoff: float = 8.0
    retry_on: list[RetryCondition] = msgspec.field(default_factory=_every_retry_condition)


class BreakerConfig(_Base, frozen=True):
    """The circuit breaker of each deployment (see ``gateway.routing.breaker``)."""

    enabled: bool = True
    #: open after this many failures in a row
    consecutive_failures: int = 5
    #: ... or when this share of the requests in the last ``window`` seconds failed
    error_ratio: float = 0.5
    window: float = 30.0
    #: the ratio counts only once the window holds this many requests
    min_requests: int = 20
    #: how long an open circuit refuses requests before it lets probes through
    open_for: float = 30.0
    #: probe requests let through when half-open; that many successes close the circuit
    half_open_probes: int = 1
    #: cooldown after a 429 that carries no Retry-After
    cooldown_on_429: float = 1.0
    #: an upstream's Retry-After is honoured up to this long
    max_cooldown: float = 300.0


class HealthCheckConfig(_Base, frozen=True):
    """Active health checks: a probe request to each deployment every ``interval`` seconds."""

    enabled: bool = True
    #: path below the provider's base URL
    path: str = "/models"
    #: JSON body of the probe; with a body the probe is a POST, without one a GET
    body: str | None = None
    interval: float = 15.0
    timeout: float = 5.0
    #: failed probes in a row that eject the deployment
    unhealthy_threshold: int = 3
    #: successful probes in a row that restore an ejected deployment
    healthy_threshold: int = 2


class RoutingConfig(_Base, frozen=True):
    """Every routing key of one model."""

    deployments: list[DeploymentConfig] = msgspec.field(default_factory=list)
    strategy: Strategy = "weighted"
    #: the "consistent_hash" key: "user" (the request's user field), "key_id", or "header:<name>"
    hash_on: str = "user"
    #: "split": deployment name -> percentage of requests (summing to 100)
    split: dict[str, float] = msgspec.field(default_factory=dict)
    #: other models tried in order when this model fails (each with its own deployments and retries)
    fallbacks: list[str] = msgspec.field(default_factory=list)
    fallback_on: list[FallbackCondition] = msgspec.field(default_factory=_every_fallback_condition)
    #: overall request deadline: no attempt starts after it and none runs past it (default: none)
    deadline: float | None = None
    retry: RetryConfig = msgspec.field(default_factory=RetryConfig)
    breaker: BreakerConfig = msgspec.field(default_factory=BreakerConfig)
    health: HealthCheckConfig | None = None


def single_deployment(provider: str, upstream_model: str | None = None) -> RoutingConfig:
    """The routing of a model written with one ``provider``: one deployment, defaults for the rest."""
    return RoutingConfig(deployments=[DeploymentConfig(provider=provider, upstream_model=upstream_model)])


# --------------------------------------------------------------------------------------------------------
# Semantic checks

_Path = tuple[str | int, ...]
_MAX_RING_WEIGHT = (1 << 20) // 160  # the ring's point budget over its virtual nodes per unit of weight
_ABOVE_0 = "must be a finite number of seconds above 0"
_AT_LEAST_0 = "must be a finite number of 0 seconds or more"
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+\Z")


class RoutingProblem(NamedTuple):
    """A key path (as in the loader: ``("models", "gpt-4o", "deployments", 0, "weight")``) and a message."""

    path: _Path
    message: str


def routing_problems(
    models: Mapping[str, RoutingConfig],
    provider_names: Collection[str] | None = None,
    *,
    prefix: _Path = ("models",),
    priced: Callable[[str, str], bool] | None = None,
) -> Iterator[RoutingProblem]:
    """What the types cannot say about the routing of every model.

    ``provider_names``: the providers deployments may name (``None``: not checked, e.g. because the
    providers table itself was malformed). ``priced(provider, upstream_model)``: whether the pricing table
    knows a deployment's cost; without it, every deployment of a "cost" model needs a ``cost``.
    """
    providers = sorted(provider_names) if provider_names is not None else None
    for name, model in models.items():
        yield from _model_problems((*prefix, name), name, model, providers, priced)
    yield from _fallback_problems(models, prefix)


def _model_problems(
    path: _Path,
    name: str,
    m: RoutingConfig,
    providers: list[str] | None,
    priced: Callable[[str, str], bool] | None,
) -> Iterator[RoutingProblem]:
    if not m.deployments:
        yield RoutingProblem((*path, "deployments"), "must list at least one deployment")
    names: dict[str, int] = {}
    for i, d in enumerate(m.deployments):
        dpath: _Path = (*path, "deployments", i)
        yield from _deployment_problems(dpath, d, providers)
        shown = d.display_name()
        if shown in names:
            where = "name" if d.name is not None else "provider"
            yield RoutingProblem(
                (*dpath, where),
                f"deployment {json.dumps(shown)} is also deployments[{names[shown]}]; "
                "give each a distinct name",
            )
        else:
            names[shown] = i
        if m.strategy == "cost" and d.cost is None:
            upstream = d.upstream_model or name
            if priced is None or not priced(d.provider, upstream):
                yield RoutingProblem(
                    (*dpath, "cost"),
                    'required by strategy = "cost": the pricing table has no price for '
                    f"{json.dumps(upstream)} at provider {json.dumps(d.provider)}",
                )

    if m.strategy == "consistent_hash" and m.deployments:
        weights = [d.weight for d in m.deployments if d.weight >= 1]
        g = math.gcd(*weights) if weights else 1
        if sum(w // g for w in weights) > _MAX_RING_WEIGHT:
            yield RoutingProblem(
                (*path, "deployments"),
                f"consistent_hash weights are relative: their sum (divided by their common factor {g}) "
                f"must be at most {_MAX_RING_WEIGHT}; use smaller numbers such as 1, 2, 3",
            )
    if m.strategy == "consistent_hash" or m.hash_on != "user":
        yield from _hash_on_problems((*path, "hash_on"), m.hash_on)
    if m.hash_on != "user" and m.strategy != "consistent_hash":
        yield RoutingProblem((*path, "hash_on"), 'is only used with strategy = "consistent_hash"')

    if m.strategy == "split":
        yield from _split_problems((*path, "split"), m.split, names)
    elif m.split:
        yield RoutingProblem((*path, "split"), 'is only used with strategy = "split"')

    seen_conditions: set[str] = set()
    for i, cond in enumerate(m.fallback_on):
        if cond in seen_conditions:
            yield RoutingProblem((*path, "fallback_on", i), f'"{cond}" is listed twice')
        seen_conditions.add(cond)
    if m.deadline is not None and not (math.isfinite(m.deadline) and m.deadline > 0):
        yield RoutingProblem((*path, "deadline"), f"{_ABOVE_0}, found {_num(m.deadline)}")
    yield from _retry_problems((*path, "retry"), m.retry)
    yield from _breaker_problems((*path, "breaker"), m.breaker)
    if m.health is not None:
        yield from _health_problems((*path, "health"), m.health)


def _deployment_problems(
    path: _Path, d: DeploymentConfig, providers: list[str] | None
) -> Iterator[RoutingProblem]:
    if providers is not None and d.provider not in providers:
        hint = get_close_matches(d.provider, providers, n=1)
        suffix = f'; did you mean "{hint[0]}"?' if hint else f" (defined: {', '.join(providers) or 'none'})"
        yield RoutingProblem(
            (*path, "provider"), f"no provider named {json.dumps(d.provider)} is defined{suffix}"
        )
    if d.upstream_model is not None and not d.upstream_model:
        yield RoutingProblem(
            (*path, "upstream_model"), "must not be empty (leave it out to send the model name)"
        )
    if d.name is not None and not d.name.strip():
        yield RoutingProblem((*path, "name"), "must not be empty")
    if not 1 <= d.weight <= 1_000_000:
        yield RoutingProblem((*path, "weight"), f"must be between 1 and 1000000, found {d.weight}")
    if d.cost is not None and not (math.isfinite(d.cost) and d.cost >= 0):
        yield RoutingProblem((*path, "cost"), f"must be a finite number of 0 or more, found {_num(d.cost)}")
    for key in ("connect_timeout", "first_byte_timeout", "total_timeout"):
        v: float | None = getattr(d, key)
        if v is not None and not (math.isfinite(v) and v > 0):
            yield RoutingProblem((*path, key), f"{_ABOVE_0}, found {_num(v)}")
    if (
        d.first_byte_timeout is not None
        and d.total_timeout is not None
        and d.first_byte_timeout > d.total_timeout
    ):
        yield RoutingProblem(
            (*path, "first_byte_timeout"),
            f"must not exceed total_timeout ({_num(d.total_timeout)}), found {_num(d.first_byte_timeout)}",
        )
    for key in ("rpm", "tpm", "context_window"):
        n: int | None = getattr(d, key)
        if n is not None and n < 1:
            yield RoutingProblem((*path, key), f"must be 1 or more, found {n}")
    if d.region is not None and not d.region:
        yield RoutingProblem((*path, "region"), "must not be empty (leave it out for no region)")
    for i, tag in enumerate(d.tags):
        if not tag:
            yield RoutingProblem((*path, "tags", i), "must not be empty")


def _hash_on_problems(path: _Path, hash_on: str) -> Iterator[RoutingProblem]:
    if hash_on in ("user", "key_id"):
        return
    kind, sep, header = hash_on.partition(":")
    if kind == "header" and sep:
        if not _HEADER_NAME.match(header):
            yield RoutingProblem(path, f"{json.dumps(header)} is not a valid HTTP header name")
        return
    yield RoutingProblem(path, f'must be "user", "key_id" or "header:<name>", found {json.dumps(hash_on)}')


def _split_problems(path: _Path, split: dict[str, float], names: dict[str, int]) -> Iterator[RoutingProblem]:
    if not split:
        yield RoutingProblem(
            path, 'strategy = "split" needs percentages: split = { "<deployment>" = 90, ... }'
        )
        return
    total = 0.0
    for key, pct in split.items():
        if key not in names:
            known = sorted(names)
            hint = get_close_matches(key, known, n=1)
            listed = ", ".join(known) or "none"
            suffix = f'; did you mean "{hint[0]}"?' if hint else f" (deployments: {listed})"
            yield RoutingProblem((*path, key), f"no deployment named {json.dumps(key)} in this model{suffix}")
        if not (math.isfinite(pct) and 0 <= pct <= 100):
            yield RoutingProblem((*path, key), f"must be a percentage from 0 to 100, found {_num(pct)}")
        elif math.isfinite(pct):
            total += pct
    if abs(total - 100.0) > 1e-6:
        yield RoutingProblem(path, f"percentages must sum to 100, found {_num(round(total, 6))}")


def _retry_problems(path: _Path, r: RetryConfig) -> Iterator[RoutingProblem]:
    if r.max_attempts < 1:
        yield RoutingProblem(
            (*path, "max_attempts"), f"must be 1 or more (1 = no retry), found {r.max_attempts}"
        )
    for key in ("base_backoff", "max_backoff"):
        v: float = getattr(r, key)
        if not (math.isfinite(v) and v >= 0):
            yield RoutingProblem((*path, key), f"{_AT_LEAST_0}, found {_num(v)}")
    if math.isfinite(r.base_backoff) and math.isfinite(r.max_backoff) and r.base_backoff > r.max_backoff:
        yield RoutingProblem(
            (*path, "base_backoff"),
            f"must not exceed max_backoff ({_num(r.max_backoff)}), found {_num(r.base_backoff)}",
        )
    yield from _duplicates((*path, "retry_on"), r.retry_on)


def _breaker_problems(path: _Path, b: BreakerConfig) -> Iterator[RoutingProblem]:
    for key in ("consecutive_failures", "min_requests", "half_open_probes"):
        n: int = getattr(b, key)
        if n < 1:
            yield RoutingProblem((*path, key), f"must be 1 or more, found {n}")
    if not (math.isfinite(b.error_ratio) and 0 < b.error_ratio <= 1):
        yield RoutingProblem(
            (*path, "error_ratio"), f"must be above 0 and at most 1, found {_num(b.error_ratio)}"
        )
    for key in ("window", "open_for", "max_cooldown"):
        v: float = getattr(b, key)
        if not (math.isfinite(v) and v > 0):
            yield RoutingProblem((*path, key), f"{_ABOVE_0}, found {_num(v)}")
    if not (math.isfinite(b.cooldown_on_429) and b.cooldown_on_429 >= 0):
        yield RoutingProblem(
            (*path, "cooldown_on_429"), f"{_AT_LEAST_0}, found {_num(b.cooldown_on_429)}"
        )


def _health_problems(path: _Path, h: HealthCheckConfig) -> Iterator[RoutingProblem]:
    if not h.path.startswith("/"):
        yield RoutingProblem((*path, "path"), f'must start with "/", found {json.dumps(h.path)}')
    if h.body is not None:
        try:
            json.loads(h.body)
        except ValueError as exc:
            yield RoutingProblem((*path, "body"), f"must be JSON text: {exc}")
    for key in ("interval", "timeout"):
        v: float = getattr(h, key)
        if not (math.isfinite(v) and v > 0):
            yield RoutingProblem((*path, key), f"{_ABOVE_0}, found {_num(v)}")
    if math.isfinite(h.timeout) and math.isfinite(h.interval) and h.timeout > h.interval:
        yield RoutingProblem(
            (*path, "timeout"), f"must not exceed interval ({_num(h.interval)}), found {_num(h.timeout)}"
        )
    for key in ("unhealthy_threshold", "healthy_threshold"):
        n: int = getattr(h, key)
        if n < 1:
            yield RoutingProblem((*path, key), f"must be 1 or more, found {n}")


def _fallback_problems(models: Mapping[str, RoutingConfig], prefix: _Path) -> Iterator[RoutingProblem]:
    known = sorted(models)
    for name, m in models.items():
        seen: dict[str, int] = {}
        for i, target in enumerate(m.fallbacks):
            fpath: _Path = (*prefix, name, "fallbacks", i)
            if target == name:
                yield RoutingProblem(fpath, f"a model cannot fall back to itself ({json.dumps(name)})")
            elif target not in models:
                hint = get_close_matches(target, known, n=1)
                suffix = f'; did you mean "{hint[0]}"?' if hint else ""
                yield RoutingProblem(fpath, f"no model named {json.dumps(target)} is defined{suffix}")
            elif target in seen:
                yield RoutingProblem(fpath, f"{json.dumps(target)} is also fallbacks[{seen[target]}]")
            if target not in seen:
                seen[target] = i
    for cycle in _cycles(models):
        start = cycle[0]
        index = models[start].fallbacks.index(cycle[1])
        shown = " -> ".join(json.dumps(n) for n in cycle)
        yield RoutingProblem((*prefix, start, "fallbacks", index), f"fallbacks form a cycle: {shown}")


def _cycles(models: Mapping[str, RoutingConfig]) -> list[list[str]]:
    """Each fallback cycle once, as the path from its smallest model name back to it."""
    edges = {n: [t for t in m.fallbacks if t in models and t != n] for n, m in models.items()}
    found: list[list[str]] = []
    seen_keys: set[frozenset[str]] = set()
    state: dict[str, int] = {}  # 1: on the stack, 2: done

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in edges[node]:
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt):]
                key = frozenset(cycle)
                if key not in seen_keys:
                    seen_keys.add(key)
                    k = cycle.index(min(cycle))
                    rotated = cycle[k:] + cycle[:k]
                    found.append([*rotated, rotated[0]])
            elif nxt not in state:
                visit(nxt, stack)
        stack.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [])
    return found


def _duplicates(path: _Path, items: Sequence[str]) -> Iterator[RoutingProblem]:
    seen: set[str] = set()
    for i, item in enumerate(items):
        if item in seen:
            yield RoutingProblem((*path, i), f'"{item}" is listed twice')
        seen.add(item)


def _num(v: float) -> str:
    """``5.0`` -> ``5`` (as most likely written), other floats as Python shows them."""
    return str(int(v)) if math.isfinite(v) and v.is_integer() and abs(v) < 1e15 else repr(v)
