"""What a reload loosens: ``weakenings(old, new)``, one line per change, for the supervisor's warning.

A reload that turns authentication off or drops an admin token is valid (an operator may mean it), but a
file cut short before its ``[auth]`` table is valid too and means nothing of the kind. So the reload goes
ahead and every loosening is logged as a warning that names it:

    what                         | loosened when
    -----------------------------+---------------------------------------------------------------------
    ``[auth] required``          | true -> false (data-plane requests are no longer authenticated)
    admin tokens                 | the operator token or a tenant's token removed
    ``[metrics] token``          | removed (scrapes need no token)
    a static key, a tenant       | removed from the file is not loosening; its ``models`` or ``endpoints``
                                 | gain entries, its expiry is removed or later, its ``limit_policy`` or
                                 | ``budget`` is removed or replaced by another
    ``[limits]``                 | ``default_policy`` or an ``apply`` entry removed or replaced; a policy's
                                 | limit removed or raised, its burst raised, fail_closed -> fail_open; a
                                 | budget's amount removed or raised, its action no longer ``block``

Nothing here is on the request path; the comparison runs once per reload, in the supervisor.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from typing import TypeVar

from gateway.config.schema import Config, StaticKeyConfig, TenantConfig
from gateway.limits.policy import BudgetConfig, PolicyConfig

__all__ = ["weakenings"]

_POLICY_LIMITS = (
    "requests_per_second", "requests_per_minute", "requests_per_hour", "requests_per_day",
    "tokens_per_minute", "tokens_per_day", "concurrent",
)
_BUDGET_LIMITS = ("usd_per_day", "usd_per_month")

T = TypeVar("T")


def weakenings(old: Config, new: Config) -> list[str]:
    """Each way ``new`` is less strict than ``old``, as ``KEY.PATH: what changed``."""
    return [*_auth(old, new), *_admin(old, new), *_principals(old, new), *_limits(old, new)]


def _q(value: object) -> str:
    return json.dumps(value) if isinstance(value, str) else str(value)


def _auth(old: Config, new: Config) -> Iterator[str]:
    if old.auth.required and not new.auth.required:
        yield "auth.required: true -> false: data-plane requests are no longer authenticated"
    if old.metrics.token is not None and new.metrics.token is None:
        yield "metrics.token: removed: scrapes need no token"


def _admin(old: Config, new: Config) -> Iterator[str]:
    if old.admin.operator_token is not None and new.admin.operator_token is None:
        yield "admin.operator_token: removed"
    for tenant in sorted(set(old.admin.tenant_tokens) - set(new.admin.tenant_tokens)):
        yield f"admin.tenant_tokens.{tenant}: removed"


def _principals(old: Config, new: Config) -> Iterator[str]:
    new_keys = {k.id: k for k in new.auth.keys}
    for key in old.auth.keys:
        now = new_keys.get(key.id)
        if now is not None:
            yield from _principal(f"auth.keys[id={_q(key.id)}]", key, now)
    for name, tenant in old.tenants.items():
        if name in new.tenants:
            yield from _principal(f"tenants.{name}", tenant, new.tenants[name])


def _principal(
    where: str, old: StaticKeyConfig | TenantConfig, new: StaticKeyConfig | TenantConfig
) -> Iterator[str]:
    added = [m for m in new.models if m not in old.models]
    if added and "*" not in old.models:
        yield f"{where}.models: now also {', '.join(_q(m) for m in added)}"
    if isinstance(old, StaticKeyConfig) and isinstance(new, StaticKeyConfig):
        more = [e for e in new.endpoints if e not in old.endpoints]
        if more and "*" not in old.endpoints:
            yield f"{where}.endpoints: now also {', '.join(_q(e) for e in more)}"
        if old.expires_at is not None and (new.expires_at is None or new.expires_at > old.expires_at):
            after = "removed" if new.expires_at is None else f"{old.expires_at:g} -> {new.expires_at:g}"
            yield f"{where}.expires_at: {after}"
    yield from _named(f"{where}.limit_policy", old.limit_policy, new.limit_policy)
    yield from _named(f"{where}.budget", old.budget, new.budget)


def _named(where: str, old: str | None, new: str | None) -> Iterator[str]:
    if old is not None and new != old:
        yield f"{where}: {_q(old)} -> {'none' if new is None else _q(new)}"


def _limits(old: Config, new: Config) -> Iterator[str]:
    lo, ln = old.limits, new.limits
    yield from _named("limits.default_policy", lo.default_policy, ln.default_policy)
    yield from _named("limits.apply.gateway", lo.apply.gateway, ln.apply.gateway)
    for model, policy in lo.apply.models.items():
        yield from _named(f"limits.apply.models.{_q(model)}", policy, ln.apply.models.get(model))
    yield from _tables("limits.policies", lo.policies, ln.policies, _policy)
    yield from _tables("limits.budgets", lo.budgets, ln.budgets, _budget)


def _tables(
    where: str, old: Mapping[str, T], new: Mapping[str, T], compare: Callable[[str, T, T], Iterator[str]]
) -> Iterator[str]:
    for name, before in old.items():
        after = new.get(name)
        if after is not None:
            yield from compare(f"{where}.{name}", before, after)


def _raised(where: str, old: object, new: object, fields: tuple[str, ...]) -> Iterator[str]:
    for field in fields:
        before, after = getattr(old, field), getattr(new, field)
        if before is not None and (after is None or after > before):
            yield f"{where}.{field}: {before:g} -> {'none' if after is None else format(after, 'g')}"


def _policy(where: str, old: PolicyConfig, new: PolicyConfig) -> Iterator[str]:
    yield from _raised(where, old, new, (*_POLICY_LIMITS, "burst"))
    if old.fail_mode == "fail_closed" and new.fail_mode != "fail_closed":
        yield f"{where}.fail_mode: fail_closed -> {new.fail_mode}"


def _budget(where: str, old: BudgetConfig, new: BudgetConfig) -> Iterator[str]:
    yield from _raised(where, old, new, _BUDGET_LIMITS)
    if old.action == "block" and new.action != "block":
        yield f"{where}.action: block -> {new.action}"
