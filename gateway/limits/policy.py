"""Limit policies and budgets: the ``[limits]`` TOML schema, its semantic checks, and the compiled form.

Configuration shape (embedded in the main configuration as ``[limits]``)::

    [limits]
    default_policy = "standard"      # applies to each key and tenant that names no limit_policy
    default_max_tokens = 4096        # the output estimate of a request that gives no max_tokens
    apply = { gateway = "gateway-wide", models = { "gpt-4o" = "gpt-4o-pool" } }

    [limits.policies.standard]
    requests_per_minute = 600
    tokens_per_minute = 200000
    tokens_kind = "total"            # "total", "input" or "output": which tokens the token limits count
    concurrent = 20                  # requests in flight at once
    burst = 1.0                      # multiplier: burst = limit x burst (see PolicyConfig.burst)
    fail_mode = "fail_open"          # when the shared state is unavailable
    lease = "auto"                   # or an integer; 1 = exact (every admission asks the shared state)

    [limits.budgets.team]
    usd_per_day = 50.0
    usd_per_month = 1000.0
    action = "downgrade"             # "block", "downgrade" or "alert"
    downgrade_model = "gpt-4o-mini"
    alert_webhook = "https://hooks.example.com/budget"
    alert_at = 0.8                   # alert when 80% of a budget is spent

Who a policy applies to, and whose counters it uses:

- a key's ``limit_policy`` (or a tenant's): one set of counters per key (per tenant); keys and tenants that
  name none get ``default_policy``, again with counters of their own;
- ``apply.models``: one set of counters per model, shared by every caller of that model;
- ``apply.gateway``: one set of counters for the whole gateway.

Several policies can apply to one request; the most restrictive decides. Every limit is deployment-wide:
all workers of all nodes share each counter (through leases, see ``gateway._core.limit``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Collection, Iterable, Iterator, Mapping
from difflib import get_close_matches
from typing import Literal, NamedTuple
from urllib.parse import urlsplit

import msgspec

__all__ = [
    "ApplyConfig",
    "BudgetConfig",
    "Dimension",
    "FailMode",
    "LimitSpec",
    "LimitsConfig",
    "Path",
    "PolicyConfig",
    "Problem",
    "TokensKind",
    "Window",
    "compile_policy",
    "policy_problems",
]

TokensKind = Literal["total", "input", "output"]
FailMode = Literal["fail_open", "fail_closed"]
Dimension = Literal["requests", "tokens", "concurrent"]
Window = Literal["second", "minute", "hour", "day", "in_flight"]

#: a key path as the configuration loader reports it: table and key names, and list indices
Path = tuple[str | int, ...]


class _Base(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    pass


class PolicyConfig(_Base, frozen=True):
    """``[limits.policies.<name>]``: rate, token and concurrency limits. Every limit is optional; a policy
    must set at least one. Rates are numbers above 0 (fractions allowed: 0.5 per second is one request
    every two seconds)."""

    requests_per_second: float | None = None
    requests_per_minute: float | None = None
    requests_per_hour: float | None = None
    requests_per_day: float | None = None
    tokens_per_minute: float | None = None
    tokens_per_day: float | None = None
    #: which tokens the token limits count: prompt + completion ("total"), prompt only ("input") or
    #: completion only ("output")
    tokens_kind: TokensKind = "total"
    #: requests in flight at once, across the deployment
    concurrent: int | None = None
    #: burst MULTIPLIER, applied to every rate limit of the policy: a limit of N per period admits up to
    #: ``N x burst`` at once, then refills at N per period. 1.0 (the default) is the classic "N per
    #: period"; below 1 smooths traffic (0.1 with 600 per minute: at most 60 at once, then one every
    #: 0.1 s); above 1 lets a quiet client catch up. A request limit's burst is never below 1.
    burst: float = 1.0
    #: when the shared state (the node's store or Redis) cannot be reached: "fail_open" keeps admitting
    #: with local-only limits, each worker at its share; "fail_closed" answers 503
    fail_mode: FailMode = "fail_open"
    #: how a worker takes capacity from the shared state: "auto" sizes leases from the observed rate
    #: (few shared-state calls, a bounded over-admission); an integer is a fixed lease of that many
    #: requests' worth; 1 is exact (every admission asks the shared state)
    lease: Literal["auto"] | int = "auto"


class BudgetConfig(_Base, frozen=True):
    """``[limits.budgets.<name>]``: spend limits in US dollars, per key or per tenant that names it.

    Days and months are UTC calendar days and months. Spend is the priced cost of each call (see
    ``gateway.limits.pricing``)."""

    usd_per_day: float | None = None
    usd_per_month: float | None = None
    #: what happens once a budget is spent: "block" answers 429 (insufficient_quota, not to be retried);
    #: "downgrade" serves the request with ``downgrade_model`` instead and says so in a response header;
    #: "alert" lets the call proceed (the alert is raised, see ``alert_at``)
    action: Literal["block", "downgrade", "alert"] = "block"
    #: the cheaper model (a name under [models]) served once the budget is spent; "downgrade" only
    downgrade_model: str | None = None
    #: an http(s) URL that receives a JSON POST when an alert fires (a metric and a log line always do)
    alert_webhook: str | None = None
    #: the fraction of a budget at which the alert fires, for every action: 0.8 = at 80% spent
    alert_at: float = 1.0


class ApplyConfig(_Base, frozen=True):
    """``[limits.apply]``: policies attached to the whole gateway or to a model (shared counters)."""

    #: a policy whose counters every request shares
    gateway: str | None = None
    #: model name -> policy whose counters every request for that model shares
    models: dict[str, str] = msgspec.field(default_factory=dict)


class LimitsConfig(_Base, frozen=True):
    """``[limits]``."""

    #: the policy of each key and tenant that names no ``limit_policy`` (counters per key, per tenant)
    default_policy: str | None = None
    #: the completion tokens a request without ``max_tokens`` is assumed to use when its tokens are
    #: reserved at admission (reconciled with the real usage afterwards)
    default_max_tokens: int = 4096
    policies: dict[str, PolicyConfig] = msgspec.field(default_factory=dict)
    budgets: dict[str, BudgetConfig] = msgspec.field(default_factory=dict)
    apply: ApplyConfig = msgspec.field(default_factory=ApplyConfig)


# --------------------------------------------------------------------------------------------------------
# Compiled form


class LimitSpec(msgspec.Struct, frozen=True, kw_only=True):
    """One limit of a policy, ready for a bucket: ``Bucket(rate, burst)`` (``Gate(int(burst))`` for
    ``concurrent``).

    ``limit`` and ``window`` are what the ``x-ratelimit-limit-*`` headers and messages show ("600 per
    minute"); ``rate`` is in units per second; ``period`` is the window in seconds (0 for concurrent).
    """

    policy: str
    dimension: Dimension
    #: units refilled per second (0.0 for concurrent)
    rate: float
    #: units available at once (the concurrency cap for concurrent)
    burst: float
    window: Window
    #: the configured number per window
    limit: float
    period: float
    #: which tokens count (token limits only; None otherwise)
    tokens_kind: TokensKind | None = None
    #: fixed lease size in requests' worth, None = adaptive ("auto"); 1 = exact
    lease: int | None = None
    fail_mode: FailMode = "fail_open"

    @property
    def name(self) -> str:
        """``"requests_per_minute"``, ``"tokens_per_day"``, ``"concurrent"``: the configuration key."""
        if self.dimension == "concurrent":
            return "concurrent"
        return f"{self.dimension}_per_{self.window}"


_PERIODS: dict[Window, float] = {"second": 1.0, "minute": 60.0, "hour": 3600.0, "day": 86400.0}

# (configuration key, dimension, window), in the order compile_policy lists them
_RATE_KEYS: tuple[tuple[str, Dimension, Window], ...] = (
    ("requests_per_second", "requests", "second"),
    ("requests_per_minute", "requests", "minute"),
    ("requests_per_hour", "requests", "hour"),
    ("requests_per_day", "requests", "day"),
    ("tokens_per_minute", "tokens", "minute"),
    ("tokens_per_day", "tokens", "day"),
)


def compile_policy(policy: PolicyConfig, name: str = "") -> list[LimitSpec]:
    """The limits of ``policy`` (named ``name``), request limits first, then tokens, then concurrency.

    Assumes a policy that ``policy_problems`` accepted. A limit of N per period with burst multiplier m
    becomes ``rate = N / period``, ``burst = N * m`` (at least 1 for request limits).
    """
    lease = None if policy.lease == "auto" else policy.lease
    specs: list[LimitSpec] = []
    for key, dimension, window in _RATE_KEYS:
        limit: float | None = getattr(policy, key)
        if limit is None:
            continue
        period = _PERIODS[window]
        burst = limit * policy.burst
        if dimension == "requests" and burst < 1.0:
            burst = 1.0
        specs.append(
            LimitSpec(
                policy=name,
                dimension=dimension,
                rate=limit / period,
                burst=burst,
                window=window,
                limit=limit,
                period=period,
                tokens_kind=policy.tokens_kind if dimension == "tokens" else None,
                lease=lease,
                fail_mode=policy.fail_mode,
            )
        )
    if policy.concurrent is not None:
        specs.append(
            LimitSpec(
                policy=name,
                dimension="concurrent",
                rate=0.0,
                burst=float(policy.concurrent),
                window="in_flight",
                limit=float(policy.concurrent),
                period=0.0,
                lease=lease,
                fail_mode=policy.fail_mode,
            )
        )
    return specs


# --------------------------------------------------------------------------------------------------------
# Semantic checks


class Problem(NamedTuple):
    path: Path
    message: str


def policy_problems(
    limits: LimitsConfig,
    model_names: Collection[str],
    *,
    principals: Iterable[tuple[Path, str | None, str | None]] = (),
    base: Path = ("limits",),
) -> Iterator[Problem]:
    """Every problem of ``limits`` the types cannot express, each as (key path, message).

    ``model_names``: the names under ``[models]`` (``apply.models`` and ``downgrade_model`` must name
    one). ``principals``: the keys and tenants that name a policy or a budget, each as (path of its
    table, its ``limit_policy``, its ``budget``), so that unknown names are reported where they are
    written. ``base``: where ``[limits]`` sits in the configuration.
    """
    policies = limits.policies
    budgets = limits.budgets

    for name, policy in policies.items():
        yield from _policy_problems((*base, "policies", name), policy, limits.default_max_tokens)
    for name, budget in budgets.items():
        yield from _budget_problems((*base, "budgets", name), budget, model_names)

    if limits.default_max_tokens < 1:
        yield Problem((*base, "default_max_tokens"), f"must be 1 or more, found {limits.default_max_tokens}")
    if limits.default_policy is not None:
        yield from _reference((*base, "default_policy"), "limit policy", limits.default_policy, policies)
    if limits.apply.gateway is not None:
        yield from _reference((*base, "apply", "gateway"), "limit policy", limits.apply.gateway, policies)
    for model, policy_name in limits.apply.models.items():
        path = (*base, "apply", "models", model)
        if model not in model_names:
            yield Problem(path, _unknown("model", model, model_names, where="[models]"))
        yield from _reference(path, "limit policy", policy_name, policies)

    for where, named_policy, named_budget in principals:
        if named_policy is not None:
            yield from _reference((*where, "limit_policy"), "limit policy", named_policy, policies)
        if named_budget is not None:
            yield from _reference((*where, "budget"), "budget", named_budget, budgets)


def _policy_problems(path: Path, p: PolicyConfig, default_max_tokens: int) -> Iterator[Problem]:
    if not path[-1]:
        yield Problem(path, "the policy name must not be empty")
    any_limit = p.concurrent is not None
    for key, _dimension, _window in _RATE_KEYS:
        value: float | None = getattr(p, key)
        if value is None:
            continue
        any_limit = True
        if not (math.isfinite(value) and value > 0):
            yield Problem((*path, key), f"must be a finite number above 0, found {_num(value)}")
    if not any_limit:
        keys = ", ".join(k for k, _, _ in _RATE_KEYS)
        yield Problem(path, f"the policy sets no limit: give at least one of {keys}, concurrent")
    if p.concurrent is not None and p.concurrent < 1:
        yield Problem((*path, "concurrent"), f"must be 1 or more, found {p.concurrent}")
    burst_ok = math.isfinite(p.burst) and p.burst > 0
    if not burst_ok:
        yield Problem((*path, "burst"), f"must be a finite multiplier above 0, found {_num(p.burst)}")
    if isinstance(p.lease, int) and p.lease < 1:
        yield Problem((*path, "lease"), f'must be "auto" or 1 or more (1 = exact), found {p.lease}')
    if not burst_ok:
        return
    # A limit whose burst is smaller than one admission never admits anything.
    for key, dimension, _window in _RATE_KEYS:
        value = getattr(p, key)
        if value is None or not (math.isfinite(value) and value > 0):
            continue
        burst = value * p.burst
        if dimension == "tokens" and p.tokens_kind != "input" and burst < default_max_tokens:
            yield Problem(
                (*path, key),
                f"{key} x burst ({_num(burst)}) is below limits.default_max_tokens ({default_max_tokens}): "
                "a request without max_tokens could never be admitted",
            )
        elif dimension == "requests" and isinstance(p.lease, int) and p.lease > max(burst, 1.0):
            yield Problem(
                (*path, "lease"),
                f"a lease of {p.lease} requests is more than {key} x burst ({_num(max(burst, 1.0))}) "
                "allows at once: no lease could ever be granted",
            )


def _budget_problems(path: Path, b: BudgetConfig, model_names: Collection[str]) -> Iterator[Problem]:
    if not path[-1]:
        yield Problem(path, "the budget name must not be empty")
    if b.usd_per_day is None and b.usd_per_month is None:
        yield Problem(path, "the budget sets no limit: give usd_per_day, usd_per_month or both")
    for key in ("usd_per_day", "usd_per_month"):
        value: float | None = getattr(b, key)
        if value is not None and not (math.isfinite(value) and value >= 0):
            yield Problem(
                (*path, key), f"must be a finite number of US dollars, 0 or more, found {_num(value)}"
            )
    if b.action == "downgrade":
        if b.downgrade_model is None:
            yield Problem(
                (*path, "downgrade_model"), 'required with action = "downgrade": the model to serve instead'
            )
        elif b.downgrade_model not in model_names:
            yield Problem(
                (*path, "downgrade_model"),
                _unknown("model", b.downgrade_model, model_names, where="[models]"),
            )
    elif b.downgrade_model is not None:
        yield Problem(
            (*path, "downgrade_model"),
            f'is only used with action = "downgrade" (this budget\'s action is "{b.action}")',
        )
    if b.alert_webhook is not None:
        parts = urlsplit(b.alert_webhook)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            yield Problem((*path, "alert_webhook"), "must be an http:// or https:// URL with a host")
    if not (math.isfinite(b.alert_at) and 0 < b.alert_at <= 1):
        yield Problem(
            (*path, "alert_at"),
            f"must be a fraction above 0 and at most 1 (0.8 = 80%), found {_num(b.alert_at)}",
        )


def _reference(path: Path, kind: str, name: str, defined: Mapping[str, object]) -> Iterator[Problem]:
    if name not in defined:
        table = "[limits.policies]" if kind == "limit policy" else "[limits.budgets]"
        yield Problem(path, _unknown(kind, name, defined, where=table))


def _unknown(kind: str, name: str, defined: Iterable[str], *, where: str) -> str:
    names = sorted(defined)
    hint = get_close_matches(name, names, n=1)
    if hint:
        suffix = f'; did you mean "{hint[0]}"?'
    elif names:
        suffix = f" (defined: {', '.join(names)})"
    else:
        suffix = f" (none is defined under {where})"
    return f"no {kind} named {json.dumps(name)} is defined{suffix}"


def _num(v: float) -> str:
    """``5.0`` -> ``5`` (as most likely written), other floats as Python shows them."""
    return str(int(v)) if math.isfinite(v) and v.is_integer() and abs(v) < 1e15 else repr(v)
