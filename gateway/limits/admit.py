"""The ``admit`` phase: rate limits, token limits, concurrency and budgets on the request path.

Which limits apply to a request (``docs/limits-and-budgets.md`` has the long form):

    level     | policy                                                   | counters
    ----------+----------------------------------------------------------+-------------------------------
    key       | the key's ``limit_policy`` (a key naming none has its     | one set per key id
              | tenant's, as the key table resolves it), else             |
              | ``[limits] default_policy``                              |
    tenant    | the tenant's ``limit_policy``, else ``default_policy``    | one set per tenant id
    anonymous | ``default_policy``, when keys are not required            | one set for every such request
    model     | ``[limits.apply.models]`` for the model served            | one set per model
    gateway   | ``[limits.apply] gateway``                               | one set for the whole gateway

A key whose policy is its tenant's is counted at the tenant only: the tenant's counters of the same
policy see all of the key's traffic and more, so the key's own could never refuse first. Every limit
that applies must admit the request (all or nothing); the one that refuses is named in the 429.

Theory of operation, per request (``AdmitPhase.on_request``):

1. The caller's ``_Principal`` (its limits and budget rules, built once per key table entry) and the
   ``_Plan`` for the model (principal's limits + the model's + the gateway's: limit keys, ``Limit``
   objects, header labels, all resolved when first needed and kept until reload) are two dict lookups.
2. Budgets, if the caller has any: the spend views (per worker, refreshed from the store every few
   seconds) decide ``block`` (429 insufficient_quota), ``downgrade`` (``ctx.route_model``) or nothing
   for a budget they know to be spent. A view not read recently makes this request wait for one store
   read. Then the request's estimated maximum cost (``_estimate``) is reserved in the shared counter of
   each ``block`` and ``downgrade`` budget (``BudgetClient``: from this worker's hold, or one shared
   operation); one that does not fit refuses, or downgrades and reserves for the cheaper model. While
   the shared state is unavailable nothing is reserved and the views decide alone: an estimate that
   does not fit in what they know is left refuses or downgrades the same way (``_views_alone``).
3. Rates: one request and the token estimate (``estimate_tokens``) per token limit, taken through the
   ``LeaseClient``'s synchronous fast path (``try_take`` / ``try_take_all``): a lease held by this worker
   covers it, or a refusal is known. Only ``ASK`` makes the request await ``LeaseClient.take`` (a new
   lease from the shared state).
4. Concurrency limits (``enter``; they ask the shared state for every request).
5. The ``x-ratelimit-*`` headers of the most restrictive limit of each dimension go on the answer.

After the response (``on_settle``, never failing the request): token reservations are reconciled with
the provider's usage (``charge`` the excess, ``refund`` the rest); the cost of the call goes into
``ctx.cost`` and the spend of its key and tenant (views and shared counters), and its budget reservation
ends at the same moment; concurrency slots are left. What a request costs when
things go wrong:

    outcome                                            | requests | tokens                   | spend
    ---------------------------------------------------+----------+--------------------------+-----------
    answered, usage reported (streams too)             | 1        | the usage                | priced usage
    answered, no usage (a stream cut, client gone)      | 1        | prompt counted with      | priced the
                                                       |          | tiktoken + the completion| same way
                                                       |          | reservation              |
    failed upstream, or answered by a later phase       | 1        | 0 (all refunded)         | 0
    refused by a concurrency limit                      | 0        | 0 (refunded)             | 0
    refused by a rate or token limit, or a budget       | 0        | 0 (nothing taken)        | 0
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import math
import time
from collections.abc import Awaitable, Coroutine, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, NoReturn

import msgspec

from gateway.aio import cancel_and_wait
from gateway.auth.access import check_residency
from gateway.config import Config
from gateway.errors import GatewayError, RateLimited
from gateway.limits.budgets import BudgetRule, SpendBook, SpendView
from gateway.limits.contract import QuotaExceeded, duration_text, retry_headers
from gateway.limits.policy import BudgetConfig, LimitSpec, TokensKind, compile_policy
from gateway.limits.pricing import PriceConfig, PriceTable, cached_tokens, price_of
from gateway.limits.reserve import RESERVED, UNCHECKED, BudgetClient, BudgetCounter
from gateway.limits.shared import (
    ADMITTED,
    Decision,
    LeaseClient,
    LeaseSource,
    Limit,
    SharedStateUnavailable,
)
from gateway.limits.stats import LimitStats
from gateway.limits.tokens import TokenCounter, tokens_of_kind
from gateway.phases import Phase
from gateway.server.cpus import worker_count
from gateway.store.base import Store
from gateway.wire import Usage

if TYPE_CHECKING:
    from gateway.context import Context
    from gateway.limits.shared import _Entry

__all__ = ["AdmitPhase", "LimitService"]

log = logging.getLogger("gateway.limits")

_monotonic = time.monotonic
_INF = math.inf
#: principals (key table entries) and plans (models per principal) kept before the cache starts anew
_MAX_PRINCIPALS = 50_000
_MAX_PLANS = 256
#: dollars below which a hold is rounding noise (as in ``gateway.limits.reserve``)
_HELD_EPSILON = 1e-12
#: an alert claim's bucket refills in about this long: longer than any period, so one claim per period
_CLAIM_REFILL = 40 * 86400.0


class _Scoped:
    """One limit of one policy as it applies at one level (a key, a tenant, a model...)."""

    __slots__ = ("limit", "spec", "where")

    def __init__(self, spec: LimitSpec, limit: Limit, where: str) -> None:
        self.spec = spec
        self.limit = limit
        self.where = where


class _Plan:
    """Everything the request path needs for one caller and one model, resolved once."""

    __slots__ = (
        "concurrent", "empty", "fast", "info", "items", "pairs", "refusal", "refusal_memo", "req_cache",
        "req_hdr", "req_nets", "req_until", "simple", "single", "tok_cache", "tok_hdr", "tok_until",
        "token_keys", "token_kinds", "token_limits", "token_nets", "token_single",
    )

    def __init__(self, scoped: Sequence[_Scoped]) -> None:
        seen: dict[str, _Scoped] = {}
        for s in scoped:
            seen.setdefault(s.limit.key, s)  # a key only once per request (the client requires it)
        req = [s for s in seen.values() if s.spec.dimension == "requests"]
        tok = [s for s in seen.values() if s.spec.dimension == "tokens"]
        self.concurrent = tuple(s for s in seen.values() if s.spec.dimension == "concurrent")
        self.info = seen
        #: request limits, one unit each, as ``try_take_all`` takes them (shared, never mutated)
        self.items: list[tuple[str, float]] = [(s.limit.key, 1.0) for s in req]
        #: the same as ``take`` takes them
        self.pairs: list[tuple[Limit, float]] = [(s.limit, 1.0) for s in req]
        #: the one request limit's key, when there is exactly one (``try_take``: cheaper)
        self.single = req[0].limit.key if len(req) == 1 else None
        self.token_limits = tuple(s.limit for s in tok)
        self.token_keys = tuple(s.limit.key for s in tok)
        self.token_kinds: tuple[TokensKind, ...] = tuple(s.spec.tokens_kind or "total" for s in tok)
        #: the one token limit's key and kind, when there is exactly one
        self.token_single = (tok[0].limit.key, self.token_kinds[0]) if len(tok) == 1 else None
        self.req_hdr = tuple((s.limit.key, _n(s.spec.limit)) for s in req)
        self.tok_hdr = tuple((s.limit.key, _n(s.spec.limit)) for s in tok)
        #: the last x-ratelimit-* headers of each dimension and until when they may be reused
        self.req_cache: tuple[tuple[str, str], ...] = ()
        self.req_until = -_INF
        self.tok_cache: tuple[tuple[str, str], ...] = ()
        self.tok_until = -_INF
        #: the last refusal by the one request limit, reused while it would read the same: (limit key, ms
        #: to wait, ms to the reset, remaining, the answer)
        self.refusal: tuple[str | None, int, int, int, GatewayError] | None = None
        #: a refusal by the one request limit follows from its decision alone (no token limit's headers)
        self.refusal_memo = len(req) == 1 and not tok
        #: the last refusal of a ``simple`` plan answered from this worker's memory, with what it rests on:
        #: (the lease client's entry, its refused_until and reset_at then, until when the answer reads
        #: the same, the answer); see ``on_request``
        self.fast: tuple[_Entry, float, float, float, GatewayError] | None = None
        self.empty = not seen
        #: the one request limit's key when the plan has nothing else (no tokens, no concurrency)
        self.simple = self.single if not tok and not self.concurrent else None
        #: where settlements of each request and token limit are summed (set by AdmitPhase._plan)
        self.req_nets: tuple[_Net, ...] = ()
        self.token_nets: tuple[_Net, ...] = ()


#: where a caller's spend goes: its key and its tenant, with their spend views and shared budget counters
#: when a budget applies to them
_SpendTo = tuple[tuple[Literal["key", "tenant"], str, "SpendView | None", "BudgetCounter | None"], ...]


class _Principal:
    """A caller (a key, or the anonymous caller): its own limits, its budget rules, its plans by model,
    where its spend goes, and the budgets that reserve in shared counters (``block`` and ``downgrade``
    rules, with their counters)."""

    __slots__ = ("budgets", "holds", "plans", "reserving", "scoped", "spend")

    def __init__(self, scoped: list[_Scoped], budgets: tuple[BudgetRule, ...], spend: _SpendTo = (),
                 holds: tuple[tuple[BudgetRule, BudgetCounter], ...] = ()) -> None:
        self.scoped = scoped
        self.budgets = budgets
        self.plans: dict[str, _Plan] = {}
        self.spend = spend
        self.holds = holds
        #: by model served: the counters a request reserves in (a downgrade budget whose downgrade model
        #: is served has had its say)
        self.reserving: dict[str, tuple[BudgetCounter, ...]] = {}


#: What an admitted request holds until it is settled (``ctx.limits``), when it holds anything (a plan of
#: request limits alone leaves nothing to settle): its plan (None when only a budget reservation is held),
#: the tokens reserved per token limit of the plan (None: it has none), the completion part of the
#: estimate (what a response without usage is assumed to have used), the concurrency keys entered (each
#: needs one leave), and its budget reservation (dollars, and the counters they are held in).
#: PERF: a plain tuple: a class with slots costs twice as much to make
_Reserved = tuple[float, tuple[BudgetCounter, ...]]
_Held = tuple["_Plan | None", "list[int] | None", int, "list[str] | None", "_Reserved | None"]


class _Net:
    """Units to settle with one limit's shared bucket: positive to charge, negative to refund. One per
    limit key for the life of the phase; plans hold theirs, so settling is an attribute update. It also
    says which limit of which policy the key counts (``policy``, ``name``), so that a reload can tell the
    lease clients what became of it."""

    __slots__ = ("client", "limit", "name", "policy", "units")

    def __init__(self, client: LeaseClient, limit: Limit, policy: str, name: str) -> None:
        self.client = client
        self.limit = limit
        self.policy = policy
        self.name = name
        self.units = 0.0


class AdmitPhase(Phase):
    """The request path of ``LimitService`` (see the module docstring)."""

    name = "admit"
    is_async = True

    def __init__(self, service: LimitService) -> None:
        self.service = service
        #: request and concurrency limits; token limits (leases sized in requests' worth of tokens)
        self.client = service.client
        self.tokens = service.tokens
        self.book = service.book
        self.budgets = service.budgets
        self.stats = service.stats
        #: seconds the x-ratelimit-* values of a caller and model are reused (# PERF: estimating and
        #: formatting them costs a few microseconds; at high rates most requests reuse them)
        self.header_ttl = 0.001
        self.default_max = 4096
        self.prices = PriceTable({})
        self._price_memo: dict[object, PriceConfig | None] = {}
        #: per model: the highest input and output prices any deployment it may reach charges, and whether
        #: every one of them has a price (the admission estimate's prices; see ``_estimate``)
        self._top_prices: dict[str, tuple[float, float, bool]] = {}
        self._compiled: dict[str, list[LimitSpec]] = {}
        self._budgets: dict[str, BudgetConfig] = {}
        self._default: str | None = None
        self._model_scoped: dict[str, list[_Scoped]] = {}
        self._gateway_scoped: list[_Scoped] = []
        self._anon = _Principal([], ())
        self._principals: dict[object, _Principal] = {}
        self._unknown: set[str] = set()
        self._nets: dict[str, _Net] = {}
        self._dirty: list[_Net] = []

    # -- build (startup and reload) ---------------------------------------------------------------------

    def build(self, config: Config) -> None:
        """Resolve the configuration's policies into compiled specs and limit keys (swapped in whole)."""
        lim = config.limits
        compiled = {name: compile_policy(p, name) for name, p in lim.policies.items()}
        prices = PriceTable.load(overrides=config.pricing)
        unit = lim.default_max_tokens

        def scoped(policy: str, scope: str, id: str, where: str) -> list[_Scoped]:
            return _scoped(compiled, unit, policy, scope, id, where)

        model_scoped = {
            model: scoped(policy, "model", model, f"model {model}")
            for model, policy in lim.apply.models.items() if policy in compiled
        }
        gateway = lim.apply.gateway
        gateway_scoped = scoped(gateway, "gateway", "all", "the gateway") if gateway in compiled else []
        default = lim.default_policy if lim.default_policy in compiled else None
        anon_scoped = scoped(default, "anonymous", "all", "anonymous callers") if default else []
        top_prices = _top_prices(config, prices)
        # PERF: one assignment each; requests in flight keep the plans they hold
        self.default_max = unit
        self.prices = prices
        self._price_memo = {}
        self._top_prices = top_prices
        self._compiled = compiled
        self._budgets = dict(lim.budgets)
        self._default = default
        self._model_scoped = model_scoped
        self._gateway_scoped = gateway_scoped
        self._anon = _Principal(anon_scoped, ())
        self._principals = {}
        self._unknown = set()
        self._adopt()

    def _adopt(self) -> None:
        """Tell the lease clients what became of every limit key they know (a reload): changed limits
        drop their leases and cached refusals at once, removed ones are forgotten; settlements waiting
        for the source are sent under the new limits."""
        compiled = self._compiled
        unit = self.default_max
        limits: dict[str, Limit | None] = {}
        for key, net in self._nets.items():
            spec = next((s for s in compiled.get(net.policy, ()) if s.name == net.name), None)
            limit = limits[key] = _limit(spec, unit, key) if spec is not None else None
            if limit is not None:
                net.limit = limit
        returned = self.client.adopt(limits.get)
        returned = self.tokens.adopt(limits.get) or returned
        self.budgets.reseed()
        if returned:
            with contextlib.suppress(RuntimeError):  # no running loop: nothing started yet to send
                self.service.spawn(_flush_quietly(self.client, self.tokens))

    def _known(self, kind: str, name: str | None, table: Mapping[str, object]) -> str | None:
        if name is None or name in table:
            return name
        if name not in self._unknown:  # a key or tenant of the store may name what the file lacks
            self._unknown.add(name)
            log.warning("limits: no %s named %r is configured; ignoring it", kind, name)
        return None

    def _principal(self, key: Any) -> _Principal:
        tenant = key.tenant
        default = self._default
        t_policy = self._known("limit policy", tenant.limit_policy, self._compiled) or default
        k_policy = self._known("limit policy", key.limit_policy, self._compiled) or default
        scoped: list[_Scoped] = []
        unit = self.default_max
        if k_policy is not None and k_policy != t_policy:
            scoped += _scoped(self._compiled, unit, k_policy, "key", key.id, f"key {key.id}")
        if t_policy is not None:
            scoped += _scoped(self._compiled, unit, t_policy, "tenant", tenant.id, f"tenant {tenant.id}")
        rules: list[BudgetRule] = []
        t_budget = self._known("budget", tenant.budget, self._budgets)
        k_budget = self._known("budget", key.budget, self._budgets)
        if k_budget is not None and k_budget != t_budget:
            rules.append(self._rule(k_budget, "key", key.id))
        if t_budget is not None:
            rules.append(self._rule(t_budget, "tenant", tenant.id))
        views = {(r.view.scope, r.view.id): r.view for r in rules}
        holds: list[tuple[BudgetRule, BudgetCounter]] = []
        counters: dict[tuple[str, str], BudgetCounter] = {}
        if self.budgets.enabled:
            for r in rules:
                if r.config.action != "alert":  # an alert limits nothing: it needs no reservation
                    counter = self.budgets.counter(r.view, r.limit_day, r.limit_month)
                    counters[(r.view.scope, r.view.id)] = counter
                    holds.append((r, counter))
        spend: _SpendTo = (
            ("key", key.id, views.get(("key", key.id)), counters.get(("key", key.id))),
            ("tenant", tenant.id, views.get(("tenant", tenant.id)), counters.get(("tenant", tenant.id))),
        )
        principal = _Principal(scoped, tuple(rules), spend, tuple(holds))
        if len(self._principals) >= _MAX_PRINCIPALS:
            self._principals = {}
        self._principals[key] = principal
        return principal

    def _rule(self, name: str, scope: Literal["key", "tenant"], id: str) -> BudgetRule:
        view = self.book.view(scope, id)
        rule = view.rule = BudgetRule(name, self._budgets[name], view)
        return rule

    def _plan(self, principal: _Principal, model: str) -> _Plan:
        plan = _Plan([*principal.scoped, *self._model_scoped.get(model, ()), *self._gateway_scoped])
        plan.req_nets = tuple(self._net_for(self.client, plan.info[lim.key]) for lim, _ in plan.pairs)
        plan.token_nets = tuple(self._net_for(self.tokens, plan.info[lim.key]) for lim in plan.token_limits)
        if len(principal.plans) >= _MAX_PLANS:
            principal.plans = {}
        principal.plans[model] = plan
        return plan

    # -- the request path -------------------------------------------------------------------------------

    def on_request(self, ctx: Context) -> Awaitable[None] | GatewayError | None:
        key = ctx.key
        principal: _Principal | None
        if key is None:
            principal = self._anon
        else:
            principal = self._principals.get(key)  # PERF: one lookup per request once built
            if principal is None:
                principal = self._principal(key)
        if principal.budgets:
            return self._admit_budgeted(ctx, principal)
        model: str = ctx.fields.model
        plan = principal.plans.get(model)
        if plan is None:
            plan = self._plan(principal, model)
        if plan.simple:
            # PERF: the common case inline: one request limit, covered by this worker's lease
            now = _monotonic()
            fast = plan.fast
            if fast is not None and now < fast[3]:
                # PERF: the refusal answered a moment ago still stands and would read the same: its
                # entry has no lease, the same refusal and reset, and no millisecond of either has passed
                entry = fast[0]
                if (entry.lease is None and entry.refused_until == fast[1] and entry.reset_at == fast[2]
                        and self.client.entries.get(plan.simple) is entry):
                    self.stats.refused_requests += 1
                    return fast[4]
            decision = self.client.try_take(plan.simple, 1.0, now)
            if decision is ADMITTED:
                self.stats.admitted += 1
                if now < plan.req_until:
                    ctx.response_headers.extend(plan.req_cache)
                else:
                    self._headers(plan, now, ctx.response_headers)
                return None
            if decision.status == 429:  # PERF: a refusal known locally: no second take, nothing raised
                err = self._refusal(plan, decision, None, now)
                known = self.client.entries.get(plan.simple)
                if (known is not None and known.lease is None and now < known.refused_until
                        and known.refused_amount <= 1.0):  # the refusal the decision came from
                    plan.fast = (known, known.refused_until, known.reset_at, _same_until(known, now), err)
                return err
        elif plan.empty:
            return None
        return self._admit(ctx, plan)

    def _rates(self, ctx: Context, principal: _Principal, model: str) -> Awaitable[None] | None:
        """The rate, token and concurrency limits of ``principal`` for ``model`` (after its budgets)."""
        plan = principal.plans.get(model)
        if plan is None:
            plan = self._plan(principal, model)
        if plan.empty:
            return None
        return self._admit(ctx, plan)

    def _admit(self, ctx: Context, plan: _Plan) -> Awaitable[None] | None:
        now = _monotonic()
        if plan.single is not None:
            decision = self.client.try_take(plan.single, 1.0, now)
        elif plan.items:
            decision = self.client.try_take_all(plan.items, now)
        else:
            decision = ADMITTED
        if decision is not ADMITTED and decision.status != 200:
            if decision.status == 0:  # ASK: a lease from the shared state
                return self._admit_slow(ctx, plan)
            self._refuse(plan, decision, None, now)
        amounts: list[int] | None = None
        completion = 0
        if plan.token_limits:
            completion = self._completion(ctx)
            prompt = (len(ctx.body) + 3) >> 2
            one = plan.token_single
            if one is not None:  # PERF: the usual case, without the lists of try_take_all
                amount = tokens_of_kind(one[1], prompt, completion)
                amounts = [amount]
                decision = self.tokens.try_take(one[0], amount, now)
            else:
                amounts = [tokens_of_kind(kind, prompt, completion) for kind in plan.token_kinds]
                decision = self.tokens.try_take_all(
                    [(k, a) for k, a in zip(plan.token_keys, amounts, strict=False)], now
                )
            if decision is not ADMITTED and decision.status != 200:
                if decision.status == 0:
                    return self._admit_slow(ctx, plan, amounts, completion)
                self._unrequest(plan)
                self._refuse(plan, decision, amounts, now)
        if plan.concurrent:
            return self._enter(ctx, plan, amounts, completion)
        self.stats.admitted += 1
        if amounts is not None:
            ctx.limits = (plan, amounts, completion, None, None)
        self._headers(plan, now, ctx.response_headers)
        return None

    def _completion(self, ctx: Context) -> int:
        """The completion part of the estimate: the request's max tokens, else the configured default."""
        if ctx.endpoint == "embeddings":
            return 0
        fields = ctx.fields
        n = getattr(fields, "max_completion_tokens", None)
        if n is None:
            n = fields.max_tokens
        return self.default_max if n is None else max(int(n), 0)

    async def _admit_slow(
        self, ctx: Context, plan: _Plan, amounts: list[int] | None = None, completion: int = 0
    ) -> None:
        """Admission that waits for the shared state. ``amounts`` given: the request limits are passed
        already and only the token limits need leases."""
        if amounts is None:
            if plan.pairs:
                decision = await self.client.take(plan.pairs)
                if not decision.admitted:
                    self._refuse(plan, decision, None, _monotonic())
            if plan.token_limits:
                completion = self._completion(ctx)
                prompt = (len(ctx.body) + 3) >> 2
                amounts = [tokens_of_kind(kind, prompt, completion) for kind in plan.token_kinds]
        if amounts is not None:
            pairs = [(lim, float(a)) for lim, a in zip(plan.token_limits, amounts, strict=True)]
            decision = await self.tokens.take(pairs)
            if not decision.admitted:
                self._unrequest(plan)
                self._refuse(plan, decision, amounts, _monotonic())
        self.stats.admitted_slow += 1
        if plan.concurrent:
            await self._enter(ctx, plan, amounts, completion)
            return
        self.stats.admitted += 1
        if amounts is not None:
            ctx.limits = (plan, amounts, completion, None, None)
        self._headers(plan, _monotonic(), ctx.response_headers)

    async def _enter(self, ctx: Context, plan: _Plan, amounts: list[int] | None, completion: int) -> None:
        # shielded: a request cancelled (its client gone) while entering must still leave what it entered
        task = asyncio.ensure_future(self._enter_all(plan))
        try:
            entered, refusal = await asyncio.shield(task)
        except asyncio.CancelledError:
            task.add_done_callback(self._leave_after_cancel)
            self._unrequest(plan, amounts)
            raise
        now = _monotonic()
        if refusal is not None:
            self._unrequest(plan, amounts)
            self._refuse(plan, refusal, amounts, now)
        self.stats.admitted += 1
        ctx.limits = (plan, amounts, completion, entered, None)
        self._headers(plan, now, ctx.response_headers)

    async def _enter_all(self, plan: _Plan) -> tuple[list[str], Decision | None]:
        entered: list[str] = []
        client = self.client
        for s in plan.concurrent:
            decision = await client.enter(s.limit.key, int(s.spec.limit), s.spec.fail_mode)
            if not decision.admitted:
                self.service.leave_soon(entered)
                return [], decision
            entered.append(s.limit.key)
        return entered, None

    def _leave_after_cancel(self, task: asyncio.Future[tuple[list[str], Decision | None]]) -> None:
        if not task.cancelled() and task.exception() is None:
            self.service.leave_soon(task.result()[0])

    def _unrequest(self, plan: _Plan, amounts: list[int] | None = None) -> None:
        """Give back what a request took from its rate and token limits: it was refused after all."""
        for net in plan.req_nets:
            self._settle(net, -1.0)
        if amounts is not None:
            for net, a in zip(plan.token_nets, amounts, strict=True):
                self._settle(net, -float(a))

    def _net_for(self, client: LeaseClient, scoped: _Scoped) -> _Net:
        limit = scoped.limit
        net = self._nets.get(limit.key)
        if net is None:
            net = self._nets[limit.key] = _Net(client, limit, scoped.spec.policy, scoped.spec.name)
        net.limit = limit  # a reload may have changed it
        return net

    def _settle(self, net: _Net, units: float) -> None:
        # PERF: summed per limit and sent every tick (flush_net): one operation per limit, not per request
        if net.units == 0.0:
            self._dirty.append(net)
        net.units += units

    def flush_net(self) -> None:
        """Hand the summed charges and refunds to the lease clients (which send them to the source)."""
        if not self._dirty:
            return
        dirty, self._dirty = self._dirty, []
        now = _monotonic()
        for n in dirty:
            units, n.units = n.units, 0.0
            if units > 0.0:
                n.client.charge(n.limit, units, now)
            elif units < 0.0:
                n.client.refund(n.limit, -units)
        if len(self._nets) > _MAX_PRINCIPALS:  # forget idle counters (and the plans that hold them)
            self._nets = {}
            self._principals = {}
            self._anon.plans = {}

    # -- budgets ----------------------------------------------------------------------------------------

    def _budget_gate(self, ctx: Context, principal: _Principal, model: str) -> str | None:
        """The model to serve after the caller's budgets have had their say (raises for ``block``); None
        when a spend view must be read from the store first."""
        now = _monotonic()
        book = self.book
        day = book.today()[0]
        downgrade: BudgetRule | None = None
        for rule in principal.budgets:
            view = rule.view
            if view.fresh_until < now:
                return None
            if view.day is not day:
                book.current(view)
            view.used = True
            if view.spent_day < rule.limit_day and view.spent_month < rule.limit_month:
                continue
            why = rule.exhausted()
            if why is None:
                continue
            action = rule.config.action
            if action == "block":
                self.stats.budget_blocked += 1
                raise _quota_error(rule, why)
            if action == "downgrade" and downgrade is None:
                downgrade = rule
        if downgrade is not None:
            to = downgrade.config.downgrade_model
            if to is not None and to != model:
                check_residency(ctx, to)  # a downgrade stays within the caller's data residency
                self.stats.downgraded += 1
                ctx.route_model = to
                ctx.response_headers.append(("x-gateway-downgraded", f"{model} -> {to}"))
                return to
        return model

    def _admit_budgeted(self, ctx: Context, principal: _Principal) -> Awaitable[None] | None:
        """A caller with budgets: the spend views first (a budget known to be spent refuses or downgrades
        without asking anyone), then the reservation of the request's estimated cost in the shared
        counters of its ``block`` and ``downgrade`` budgets, then the rate limits of the model served."""
        asked: str = ctx.fields.model
        served = self._budget_gate(ctx, principal, asked)
        if served is None:
            return self._load_then_admit(ctx, principal)
        return self._reserve(ctx, principal, served, asked)

    def _reserve(
        self, ctx: Context, principal: _Principal, served: str, asked: str
    ) -> Awaitable[None] | None:
        """Reserve the request's estimated cost on ``served`` in every counter that must hold it, then
        admit by the rates. A reservation that does not fit refuses (``block``) or serves the downgrade
        model (``downgrade``), which is reserved for in turn."""
        counters = principal.reserving.get(served)
        if counters is None:  # PERF: once per caller and model served
            counters = tuple(c for r, c in principal.holds if not _downgraded_by(r, served))
            if len(principal.reserving) >= _MAX_PLANS:
                principal.reserving = {}
            principal.reserving[served] = counters
        if not counters:
            return self._with_reservation(ctx, principal, served, None, 0)
        amount, completion = self._estimate(ctx, served, asked)
        if amount <= 0.0:  # no price: the call costs nothing in budgets
            return self._with_reservation(ctx, principal, served, None, completion)
        verdict = self.budgets.try_reserve(counters, amount, _monotonic())
        if isinstance(verdict, BudgetCounter):
            return self._reservation_refused(ctx, principal, verdict, served, asked, amount)
        if verdict == RESERVED:
            return self._with_reservation(ctx, principal, served, (amount, counters), completion)
        if verdict == UNCHECKED:
            return self._views_alone(ctx, principal, served, asked, amount, completion, counters)
        return self._reserve_slow(ctx, principal, served, asked, amount, completion, counters)

    async def _reserve_slow(self, ctx: Context, principal: _Principal, served: str, asked: str, amount: float,
                            completion: int, counters: tuple[BudgetCounter, ...]) -> None:
        # shielded: a request cancelled (its client gone) while its reservation is asked for must not
        # leave it held
        task = asyncio.ensure_future(self.budgets.reserve(counters, amount))
        try:
            verdict = await asyncio.shield(task)
        except asyncio.CancelledError:
            task.add_done_callback(lambda t: self._unreserve_after_cancel(t, counters, amount))
            raise
        if isinstance(verdict, BudgetCounter):
            out = self._reservation_refused(ctx, principal, verdict, served, asked, amount)
        elif verdict == RESERVED:
            out = self._with_reservation(ctx, principal, served, (amount, counters), completion)
        elif verdict == UNCHECKED:
            out = self._views_alone(ctx, principal, served, asked, amount, completion, counters)
        else:  # ASK: the counters stayed contended for every round (a very busy worker): try again soon
            raise RateLimited("Too many requests are reserving against the same budget at once. Try again "
                              "shortly.", headers=retry_headers(0.25))
        if out is not None:
            await out

    def _views_alone(self, ctx: Context, principal: _Principal, served: str, asked: str, amount: float,
                     completion: int, counters: tuple[BudgetCounter, ...]) -> Awaitable[None] | None:
        """Nothing can be reserved (the shared state is unavailable): the spend views decide alone. A budget
        whose view cannot cover the request's estimate refuses it (or downgrades), as a reservation that
        did not fit would; a budget that refused as spent before the loss keeps refusing."""
        for rule, counter in principal.holds:
            view = rule.view
            if counter in counters and (view.spent_day + amount > rule.limit_day
                                        or view.spent_month + amount > rule.limit_month):
                return self._reservation_refused(ctx, principal, counter, served, asked, amount)
        return self._with_reservation(ctx, principal, served, None, completion)

    def _unreserve_after_cancel(self, task: asyncio.Future[BudgetCounter | int],
                                counters: tuple[BudgetCounter, ...], amount: float) -> None:
        if not task.cancelled() and task.exception() is None and task.result() == RESERVED:
            self.budgets.settle(counters, amount)

    def _with_reservation(self, ctx: Context, principal: _Principal, served: str, reserved: _Reserved | None,
                          completion: int) -> Awaitable[None] | None:
        """The rates, with ``reserved`` released if they refuse; on admission the reservation joins what
        the request holds until it is settled."""
        try:
            out = self._rates(ctx, principal, served)
        except BaseException:
            if reserved is not None:
                self.budgets.settle(reserved[1], reserved[0])
            raise
        if out is None:
            if reserved is not None:
                _attach(ctx, reserved, completion)
            return None
        if reserved is None:
            return out
        return self._rates_then_attach(out, ctx, reserved, completion)

    async def _rates_then_attach(self, out: Awaitable[None], ctx: Context, reserved: _Reserved,
                                 completion: int) -> None:
        try:
            await out
        except BaseException:
            self.budgets.settle(reserved[1], reserved[0])
            raise
        _attach(ctx, reserved, completion)

    def _reservation_refused(self, ctx: Context, principal: _Principal, counter: BudgetCounter, served: str,
                             asked: str, amount: float) -> Awaitable[None] | None:
        """A counter could not hold the request's reservation: its budget's action decides."""
        rule = next(r for r, c in principal.holds if c is counter)
        cfg = rule.config
        to = cfg.downgrade_model
        if cfg.action == "downgrade" and to is not None and to != served:
            check_residency(ctx, to)  # a downgrade stays within the caller's data residency
            self.stats.downgraded += 1
            ctx.route_model = to
            ctx.response_headers.append(("x-gateway-downgraded", f"{served} -> {to}"))
            return self._reserve(ctx, principal, to, asked)
        self.stats.budget_blocked += 1
        raise _reservation_error(rule, counter, amount)

    def _estimate(self, ctx: Context, served: str, asked: str) -> tuple[float, int]:
        """The request's estimated maximum cost in US dollars (0.0: no price) and its completion estimate:
        the admission's token estimate (``ceil(body bytes / 4)`` prompt tokens, ``max_tokens`` or the
        default completion) at the highest prices of the deployments it may reach."""
        completion = self._completion(ctx)
        price = self._top_prices.get(served)
        top_in, top_out = (price[0], price[1]) if price is not None else (-1.0, -1.0)
        if price is None or not price[2]:  # some deployment is priced by the name asked for, at settle
            found = self.prices.lookup(asked)
            if found is not None:
                cached = found.input if found.cached_input is None else found.cached_input
                top_in = max(top_in, found.input, cached)
                top_out = max(top_out, found.output)
        if top_in < 0.0:
            return 0.0, completion
        prompt = (len(ctx.body) + 3) >> 2
        return (prompt * top_in + completion * top_out) * 1e-6, completion

    async def _load_then_admit(self, ctx: Context, principal: _Principal) -> None:
        for rule in principal.budgets:
            if rule.view.fresh_until < _monotonic():
                await self.book.load(rule.view)  # leaves the view usable for a while, read or not
        out = self.on_request(ctx)
        if isinstance(out, GatewayError):
            raise copy.copy(out)  # it may be shared (see _refusal)
        if out is not None:
            await out

    # -- answers ----------------------------------------------------------------------------------------

    def _headers(self, plan: _Plan, now: float, out: list[tuple[str, str]]) -> None:
        """The ``x-ratelimit-*`` trio of each dimension (reused for ``header_ttl`` seconds)."""
        if plan.req_hdr:
            if now >= plan.req_until:
                plan.req_cache = _trio(self.client, plan.req_hdr, _REQ_HEADERS, now, None)
                plan.req_until = now + self.header_ttl
            out.extend(plan.req_cache)
        if plan.tok_hdr:
            if now >= plan.tok_until:
                plan.tok_cache = _trio(self.tokens, plan.tok_hdr, _TOK_HEADERS, now, None)
                plan.tok_until = now + self.header_ttl
            out.extend(plan.tok_cache)

    def _refuse(self, plan: _Plan, decision: Decision, amounts: list[int] | None, now: float) -> NoReturn:
        """Raise the refusal ``decision`` makes (a copy: ``_refusal``'s answer may be shared)."""
        raise copy.copy(self._refusal(plan, decision, amounts, now))

    def _refusal(
        self, plan: _Plan, decision: Decision, amounts: list[int] | None, now: float
    ) -> GatewayError:
        """The answer to a refusal (429, or 503 while the shared state is unavailable), counted.

        # PERF: a client that keeps sending into a refusal of the plan's one request limit gets the same
        answer for a millisecond at a time: all of it follows from the waits in whole milliseconds and
        what remains, so it is built once for them and returned, not raised, from ``on_request`` (one
        instance for many requests: the engine answers with it and changes nothing in it).
        """
        stats = self.stats
        if decision.status == 503:
            stats.unavailable += 1
            return SharedStateUnavailable(
                "Rate limits cannot be checked right now (their shared state is unavailable); try again "
                "shortly.", headers=retry_headers(decision.retry_after),
            )
        wait = decision.retry_after
        if plan.refusal_memo and decision.limit_key == plan.single and wait != _INF:
            wait_ms = math.ceil(wait * 1000.0)
            reset_ms = math.ceil(decision.reset_after * 1000.0)
            remaining = int(decision.remaining) if decision.remaining > 0.0 else 0
            memo = plan.refusal
            if memo is not None and memo[1] == wait_ms and memo[2] == reset_ms and memo[3] == remaining:
                stats.refused_requests += 1
                return memo[4]
            err = self._build_refusal(plan, decision, amounts, now)
            plan.refusal = (decision.limit_key, wait_ms, reset_ms, remaining, err)
            return err
        return self._build_refusal(plan, decision, amounts, now)

    def _build_refusal(
        self, plan: _Plan, decision: Decision, amounts: list[int] | None, now: float
    ) -> RateLimited:
        stats = self.stats
        s = plan.info.get(decision.limit_key or "")
        headers = retry_headers(decision.retry_after)
        if plan.req_hdr:
            headers.extend(_trio(self.client, plan.req_hdr, _REQ_HEADERS, now, decision))
        if plan.tok_hdr:
            headers.extend(_trio(self.tokens, plan.tok_hdr, _TOK_HEADERS, now, decision))
        wait = decision.retry_after
        if s is None:  # not one of the plan's limits (cannot happen): say what we know
            stats.refused_requests += 1
            return RateLimited(f"Rate limit reached. Try again in {duration_text(wait)}.", headers=headers)
        spec = s.spec
        which = f"{spec.name} of policy {spec.policy} for {s.where}"
        if spec.dimension == "concurrent":
            stats.refused_concurrency += 1
            message = (f"Too many requests in flight: {which} (limit {_n(spec.limit)} at once). "
                       "Try again when one has finished.")
        elif spec.dimension == "tokens":
            stats.refused_tokens += 1
            asked = _tokens_asked(plan, s, amounts)
            if wait == _INF:
                message = (f"This request is estimated at {asked} tokens, more than {which} allows at once "
                           f"({_n(spec.burst)}). Lower max_tokens or shorten the prompt.")
            else:
                message = (f"Rate limit reached: {which} (limit {_n(spec.limit)} per {spec.window}; this "
                           f"request is estimated at {asked} tokens). Try again in {duration_text(wait)}.")
        else:
            stats.refused_requests += 1
            message = (f"Rate limit reached: {which} (limit {_n(spec.limit)} per {spec.window}). "
                       f"Try again in {duration_text(wait)}.")
        return RateLimited(message, headers=headers)

    # -- settle -----------------------------------------------------------------------------------------

    def on_settle(self, ctx: Context) -> None:
        usage = ctx.usage
        if usage is not None:
            cost = self._cost(ctx, usage.prompt_tokens, usage.completion_tokens, usage)
            if cost is not None:
                ctx.cost = cost
                key = ctx.key
                if key is not None and cost > 0.0:
                    self._spend(key, cost)
        held: _Held | None = ctx.limits
        if held is None:
            return
        ctx.limits = None
        if held[3]:
            self.service.leave_soon(held[3])
        reserved = held[4]
        if held[1] is None and reserved is None:
            return
        if usage is not None:
            self._reconcile(held, usage.prompt_tokens, usage.completion_tokens)
        elif ctx.target is not None and 200 <= ctx.status < 300:
            # answered, but the usage never came (a stream cut, the client gone): count what we can; a
            # budget reservation stands until then
            self.service.spawn(self._count_then_settle(ctx, held))
            return
        else:  # never reached the upstream, or it failed: the tokens were not used
            self._reconcile(held, 0, 0)
        if reserved is not None:  # its real cost went to the counters above (_spend), at the same moment
            self.budgets.settle(reserved[1], reserved[0])

    def _reconcile(self, held: _Held, prompt: int, completion: int) -> None:
        plan, amounts = held[0], held[1]
        if amounts is None or plan is None:
            return
        stats = self.stats
        kinds = plan.token_kinds
        nets = plan.token_nets
        for i, reserved in enumerate(amounts):
            diff = tokens_of_kind(kinds[i], prompt, completion) - reserved
            if diff:
                net = nets[i]
                if net.units == 0.0:
                    self._dirty.append(net)
                net.units += diff
                if diff > 0:
                    stats.tokens_charged += diff
                else:
                    stats.tokens_refunded -= diff

    def _cost(self, ctx: Context, prompt: int, completion: int, usage: Any = None) -> float | None:
        """US dollars of the call: priced by the answering deployment's upstream model, else by the model
        served, else by the model asked for."""
        target = ctx.target
        memo = self._price_memo
        price: PriceConfig | None = memo.get(target, _MISSING) if target is not None else _MISSING
        if price is _MISSING:
            lookup = self.prices.lookup
            found = lookup(target.upstream_model) if target is not None else None
            if found is None and ctx.model is not None:
                found = lookup(ctx.model.name)
            if found is None and ctx.fields is not None:
                found = lookup(ctx.fields.model)
            price = found
            if target is not None:  # PERF: per deployment, once; the memo is renewed on reload
                if len(memo) >= _MAX_PLANS:
                    memo.clear()
                memo[target] = found
        if price is None:
            return None
        # PERF: the pass-through's Usage read directly (cached_tokens' getattr and Mapping check cost more),
        # and the usual case needs none of price_of's clamping (builtin max/min: 0.3 us each)
        if usage is None:
            cached = 0
        elif type(usage) is Usage:
            details = usage.prompt_tokens_details
            cached = (details.cached_tokens or 0) if details is not None else 0
        else:
            cached = cached_tokens(usage)
        if cached == 0 and prompt >= 0 and completion >= 0:
            return (prompt * price.input + completion * price.output) * 1e-6
        return price_of(price, prompt, completion, cached)

    def _spend(self, key: Any, cost: float) -> None:
        self.stats.spend_usd += cost
        principal = self._principals.get(key)
        if principal is None:
            principal = self._principal(key)
        add = self.book.add
        for scope, id, view, counter in principal.spend:
            add(scope, id, cost, view, False)
            if counter is not None:
                counter.pending += cost

    async def _count_then_settle(self, ctx: Context, held: _Held) -> None:
        """Settle a response whose usage never arrived: the prompt counted with tiktoken (in the token
        counter's thread pool), the completion at its reservation (its text is not kept here)."""
        reserved = held[4]
        try:
            prompt = await self._count_prompt(ctx)
        except Exception as exc:
            log.warning("limits: could not count the tokens of a response without usage (%s); its "
                        "reservation stands", exc.__class__.__name__ + (f": {exc}" if str(exc) else ""))
            if reserved is not None:  # counted as spent in the shared counters: the safe side
                for counter in reserved[1]:
                    counter.pending += reserved[0]
                self.budgets.settle(reserved[1], reserved[0])
            return
        self.stats.counted_usage += 1
        completion = held[2]
        self._reconcile(held, prompt, completion)
        cost = self._cost(ctx, prompt, completion)
        if cost is not None and ctx.key is not None and cost > 0.0:
            self._spend(ctx.key, cost)
        if reserved is not None:
            self.budgets.settle(reserved[1], reserved[0])

    async def _count_prompt(self, ctx: Context) -> int:
        counter = self.service.token_counter()
        fields = ctx.fields
        model = ctx.target.upstream_model if ctx.target is not None else fields.model
        if ctx.endpoint == "chat" or ctx.endpoint == "messages":  # an Anthropic turn has the same texts
            messages = [m for m in map(_decode_any, fields.messages) if isinstance(m, dict)]
            return await counter.count_messages(model, messages)
        texts, extra = _texts(fields.prompt if ctx.endpoint == "completions" else fields.input)
        return extra + (await counter.count(model, texts) if texts else 0)


_MISSING: Any = object()


def _scoped(compiled: Mapping[str, list[LimitSpec]], unit: int, policy: str, scope: str, id: str,
            where: str) -> list[_Scoped]:
    """The limits of ``policy`` at one level, with their counter keys ``<policy>/<limit>/<scope>/<id>``.

    A fixed ``lease`` is in requests' worth: for a token limit, ``lease`` times ``unit`` tokens (the
    default completion estimate), except that 1 stays 1 (exact: each request asks for its amount)."""
    return [
        _Scoped(spec, _limit(spec, unit, f"{policy}/{spec.name}/{scope}/{id}"), where)
        for spec in compiled.get(policy, ())
    ]


def _limit(spec: LimitSpec, unit: int, key: str) -> Limit:
    """The lease client's ``Limit`` for ``spec`` under the counter key ``key``."""
    lease: float | None = None
    if spec.lease is not None:
        lease = float(spec.lease) if spec.dimension != "tokens" or spec.lease == 1 else spec.lease * unit
    return Limit(key, spec.rate if spec.rate > 0.0 else 1.0, spec.burst, lease, spec.fail_mode)


async def _flush_quietly(*clients: LeaseClient) -> None:
    """Send what the clients have queued (a reload's returned leases) now rather than at the next tick."""
    for client in clients:
        with contextlib.suppress(Exception):
            await client.flush()


def _top_prices(config: Config, prices: PriceTable) -> dict[str, tuple[float, float, bool]]:
    """Per model: the highest input price (cached input included) and output price of the deployments a
    request for it may reach (its own and its fallbacks', depth first), each priced as ``_cost`` prices
    it (by the deployment's upstream model, else by the model served), and whether all of them have one."""
    out: dict[str, tuple[float, float, bool]] = {}
    models = config.models
    for name in models:
        chain = [name]
        for model in chain:  # grows while walked: each model once
            chain.extend(f for f in models[model].fallbacks if f in models and f not in chain)
        top_in = top_out = -1.0
        complete = True
        for model in chain:
            for d in models[model].routing().deployments:
                price = prices.lookup(d.upstream_model or model) or prices.lookup(name)
                if price is None:
                    complete = False
                    continue
                cached = price.input if price.cached_input is None else price.cached_input
                top_in = max(top_in, price.input, cached)
                top_out = max(top_out, price.output)
        out[name] = (top_in, top_out, complete)
    return out


def _same_until(entry: _Entry, now: float) -> float:
    """Until when a refusal answered from ``entry`` at ``now`` reads the same: every value in it follows
    from the waits to ``refused_until`` and ``reset_at`` rounded up to whole milliseconds (see
    ``_refusal``), so until the first of the two drops by a millisecond (a nanosecond early: an answer
    built anew is exact anyway)."""
    wait_ms = math.ceil((entry.refused_until - now) * 1000.0)
    until = entry.refused_until - (wait_ms - 1) / 1000.0
    if entry.reset_at - now > 0.0:
        reset_ms = math.ceil((entry.reset_at - now) * 1000.0)
        until = min(until, entry.reset_at - (reset_ms - 1) / 1000.0)
    return until - 1e-9


def _trio(client: LeaseClient, hdr: tuple[tuple[str, str], ...], labels: tuple[str, str, str], now: float,
          refused: Decision | None) -> tuple[tuple[str, str], ...]:
    """The ``x-ratelimit-*`` trio of one dimension, from its most restrictive limit: the one with the
    least left (the refusing one, on a 429)."""
    best: tuple[float, float, str] | None = None
    for key, text in hdr:
        if refused is not None and key == refused.limit_key:
            best = (refused.remaining, refused.reset_after, text)
            break
        remaining, reset = client.estimate(key, now)
        if best is None or remaining < best[0]:
            best = (remaining, reset, text)
    assert best is not None
    remaining, reset, text = best
    return (
        (labels[0], text),
        (labels[1], str(int(remaining)) if remaining > 0.0 else "0"),
        (labels[2], duration_text(reset)),
    )


_REQ_HEADERS = ("x-ratelimit-limit-requests", "x-ratelimit-remaining-requests", "x-ratelimit-reset-requests")
_TOK_HEADERS = ("x-ratelimit-limit-tokens", "x-ratelimit-remaining-tokens", "x-ratelimit-reset-tokens")
_decode_any = msgspec.json.Decoder().decode


def _texts(value: Any) -> tuple[list[str], int]:
    """The strings of a prompt or an embedding input, and the tokens given as token ids."""
    if isinstance(value, str):
        return [value], 0
    texts: list[str] = []
    extra = 0
    if isinstance(value, list):
        for item in value:
            if isinstance(item, str):
                texts.append(item)
            elif isinstance(item, int):
                extra += 1
            elif isinstance(item, list):
                extra += sum(1 for t in item if isinstance(t, int))
    return texts, extra


def _tokens_asked(plan: _Plan, s: _Scoped, amounts: list[int] | None) -> int:
    if amounts is None:
        return 0
    for lim, a in zip(plan.token_limits, amounts, strict=True):
        if lim is s.limit:
            return a
    return 0


def _attach(ctx: Context, reserved: _Reserved, completion: int) -> None:
    """Add a budget reservation to what an admitted request holds until it is settled."""
    held: _Held | None = ctx.limits
    if held is None:
        ctx.limits = (None, None, completion, None, reserved)
    else:  # the completion estimate is the same (the plan's is 0 when it has no token limit)
        ctx.limits = (held[0], held[1], completion, held[3], reserved)


def _downgraded_by(rule: BudgetRule, served: str) -> bool:
    """Whether ``served`` is ``rule``'s downgrade model: that budget has had its say (spend continues)."""
    return rule.config.action == "downgrade" and rule.config.downgrade_model == served


def _reservation_error(rule: BudgetRule, counter: BudgetCounter, amount: float) -> QuotaExceeded:
    """The 429 of a reservation that did not fit: the budget is spent, or cannot cover this request (retry
    will not help: lower ``max_tokens``), or what is left is held (it may be free again in a moment).

    Held by whom, told as far as this worker knows it: its own requests in flight by count and amount;
    the other workers' holds only as a sum, since a hold may cover their requests in flight, spend they
    settled and have not counted in the shared counter yet (right after a budget runs out, it is often
    just that), or a spare they give back within seconds. Never "requests in flight" when there is none
    here and the rest is other workers' holds of unknown use."""
    view = rule.view
    spent_day = max(counter.spent_day, view.spent_day)
    spent_month = max(counter.spent_month, view.spent_month)
    if spent_day >= rule.limit_day:
        return _quota_error(rule, "daily", spent_day)
    if spent_month >= rule.limit_month:
        return _quota_error(rule, "monthly", spent_month)
    if rule.limit_day - spent_day <= rule.limit_month - spent_month:
        spent, limit, period = spent_day, rule.limit_day, "today (UTC)"
    else:
        spent, limit, period = spent_month, rule.limit_month, "this month (UTC)"
    held = _held_by(counter)
    if spent + amount > limit or not held:  # not held: the amounts alone refused it (up to rounding)
        return QuotaExceeded(
            f"Budget {rule.name} of {rule.where} cannot cover this request: it may cost up to {amount:.6f} "
            f"USD (its prompt and max_tokens at the model's prices) and {limit - spent:.6f} of {limit:.4f} "
            f"USD are left {period}. Lower max_tokens, or wait until the period ends or the budget is "
            "raised.",
            headers=[("x-should-retry", "false")],
        )
    return QuotaExceeded(
        f"Budget {rule.name} of {rule.where} has no room for this request now: {spent:.6f} USD counted as "
        f"spent {period} and {' and '.join(held)}, of {limit:.4f} USD; this request may cost up to "
        f"{amount:.6f} USD. Try again in a moment.",
        headers=retry_headers(1.0),
    )


def _held_by(counter: BudgetCounter) -> list[str]:
    """What holds part of a budget besides its counted spend, as far as this worker knows (see
    ``_reservation_error``)."""
    held: list[str] = []
    if counter.inflight > 0 and counter.used > _HELD_EPSILON:
        held.append(f"{counter.used:.6f} USD reserved by {counter.inflight} request(s) in flight on this "
                    "worker")
    others = counter.holds - counter.held
    if others > _HELD_EPSILON:
        held.append(f"{others:.6f} USD held by other workers (for their requests in flight, spend they have "
                    "not counted yet, or a spare they give back within seconds)")
    return held


def _quota_error(rule: BudgetRule, why: str, spent: float | None = None) -> QuotaExceeded:
    cfg = rule.config
    view = rule.view
    if why == "daily":
        limit, period = cfg.usd_per_day or 0.0, "today (UTC)"
        spent = view.spent_day if spent is None else spent
    else:
        limit, period = cfg.usd_per_month or 0.0, "this month (UTC)"
        spent = view.spent_month if spent is None else spent
    return QuotaExceeded(
        f"Budget {rule.name} of {rule.where} is spent: {spent:.4f} of {limit:.4f} USD {period}. "
        "Requests are refused until the period ends or the budget is raised.",
        headers=[("x-should-retry", "false")],
    )


def _n(v: float) -> str:
    """``600.0`` -> ``"600"``; other numbers as Python shows them."""
    return str(int(v)) if math.isfinite(v) and v.is_integer() else repr(v)


class LimitService:
    """One per worker: the limits and budgets of the config, and the shared state they draw on.

    ``source``: the deployment-wide lease source (default: a table file beside a SQLite store's file, or
    the Redis store's server); ``store``: the store spend is written to (default: the configured one,
    opened in the background). Both are for tests; the service closes what it opened itself.
    """

    def __init__(self, config: Config, *, worker: int, source: LeaseSource | None = None,
                 store: Store | None = None) -> None:
        self.config = config
        self.worker = worker
        self.stats = LimitStats()
        self.workers = worker_count(config.server.workers)
        self._own_source = source is None
        self.source = source if source is not None else _open_source(config)
        self.client = LeaseClient(self.source, workers=self.workers)
        # token limits count thousands of units per request: their leases are sized in requests' worth
        # (the default completion estimate), so that a lease covers several requests
        unit = float(config.limits.default_max_tokens)
        self.tokens = LeaseClient(self.source, workers=self.workers, min_size=8.0 * unit,
                                  max_size=1000.0 * unit)
        self._store = store
        self.book = SpendBook(self._open_store, self.stats, claim=self._claim, post=self._post)
        self.budgets = BudgetClient(self.source, self.book, workers=self.workers)
        self._tasks: set[asyncio.Task[Any]] = set()
        self.phase = AdmitPhase(self)
        self.phase.build(config)
        self._leaving: list[str] = []
        self._leaver: asyncio.Task[None] | None = None
        self._settler: asyncio.Task[None] | None = None
        self._counter: TokenCounter | None = None
        self._http: Any = None

    @property
    def shared_calls(self) -> int:
        """Round trips to the shared state so far (both lease clients and the budget counters): the
        metric of lease efficiency."""
        calls = self.client.stats.source_calls + self.tokens.stats.source_calls
        return calls + self.budgets.stats.source_calls

    async def start(self) -> None:
        if self._own_source:
            await self.source.ping()  # connect now when the shared state answers; unreachable is not fatal
        self.client.start()
        self.tokens.start()
        self.budgets.start()
        self.book.start()
        self._settler = asyncio.get_running_loop().create_task(self._settle_loop(), name="gateway-settle")

    async def stop(self) -> None:
        await cancel_and_wait(*self._tasks, grace=5.0)  # settles under way: a little time to finish
        if self._settler is not None:
            await cancel_and_wait(self._settler)
            self._settler = None
        self.phase.flush_net()
        await self._drain_leaves()
        await self.client.close()
        await self.tokens.close()
        await self.budgets.close()
        await self.book.stop()
        if self._own_source:
            await self.source.close()
        if self._counter is not None:
            self._counter.close(wait=False)
            self._counter = None
        if self._http is not None:
            with contextlib.suppress(Exception):
                await self._http.aclose()
            self._http = None

    def reload(self, config: Config) -> None:
        """New policies, budgets and prices (counters and spend carry on; the shared state is kept). The
        lease clients adopt changed limits at once (``AdmitPhase._adopt``)."""
        self.phase.build(config)
        self.config = config

    # -- helpers of the phase ---------------------------------------------------------------------------

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def leave_soon(self, keys: list[str]) -> None:
        """Leave concurrency slots from the background (settle cannot await)."""
        if not keys:
            return
        self._leaving.extend(keys)
        if self._leaver is None or self._leaver.done():
            self._leaver = asyncio.get_running_loop().create_task(self._drain_leaves())

    async def _drain_leaves(self) -> None:
        while self._leaving:
            key = self._leaving.pop()
            try:
                await self.client.leave(key)
            except Exception:
                log.exception("limits: leaving a concurrency slot failed")

    async def _settle_loop(self, interval: float = 0.1) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                self.phase.flush_net()
            except Exception:
                log.exception("limits: settling charges and refunds failed")

    def token_counter(self) -> TokenCounter:
        if self._counter is None:
            self._counter = TokenCounter()
        return self._counter

    async def _open_store(self) -> Store:
        if self._store is not None:
            store, self._store = self._store, None  # handed over to the book, which closes it
            return store
        from gateway.store.factory import StoreOptions, open_store

        st = self.config.store
        return await open_store(StoreOptions(
            url=st.url, prefix=st.prefix, poll_interval=st.poll_interval, busy_timeout=st.busy_timeout,
            min_replicas_acked=st.min_replicas_acked, replica_ack_timeout=st.replica_ack_timeout,
        ))

    async def _claim(self, token: str) -> bool:
        """Whether this worker is the first of the deployment to ask for ``token`` (one alert per period)."""
        grant = await self.source.acquire(token, 1.0 / _CLAIM_REFILL, 1.0, 1.0, _monotonic())
        return grant.ok

    async def _post(self, url: str, payload: dict[str, Any]) -> None:
        if self._http is None:
            import httpx

            self._http = httpx.AsyncClient(timeout=5.0)
        resp = await self._http.post(url, json=payload)
        resp.raise_for_status()


def _open_source(config: Config) -> LeaseSource:
    """The store's medium: a table file beside the SQLite store's file (the node's workers share it), or
    the Redis store's server (every node shares it)."""
    url = config.store.url
    scheme, _, rest = url.partition("://")
    if scheme == "sqlite":
        from gateway.limits.shared_local import LocalLeaseSource

        return LocalLeaseSource(rest + "-limits")
    from gateway.limits.shared_redis import RedisLeaseSource
    from gateway.store.factory import _split_prefix

    bare, prefix = _split_prefix(url, config.store.prefix)
    return RedisLeaseSource(bare, prefix=prefix)
