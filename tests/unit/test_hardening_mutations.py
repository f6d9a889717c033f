"""Guarantees of the limits' client contract that earlier tests let slip (mutations they did not kill).

- ``retry-after-ms`` is the wait rounded *up* to whole milliseconds, as ``retry-after`` is rounded up to
  whole seconds: a client that waits what it is told is never early.
- While the shared state is unavailable the spend views decide alone (``docs/limits-and-budgets.md``):
  a budget they know cannot cover a request refuses it (``block``) or serves the downgrade model, as a
  reservation that did not fit would; a request that fits is still served.

The service is driven as in ``test_limits_admit.py``: small fake callers straight through
``LimitService.phase``, the shared state a real table file beside a SQLite store, made unreachable for
budgets at the test's word.
"""

from __future__ import annotations

import asyncio
import copy
import json
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgspec
import pytest

from gateway.config import Config, load_config_text
from gateway.errors import GatewayError, RateLimited
from gateway.limits.admit import LimitService
from gateway.limits.contract import QuotaExceeded, retry_headers
from gateway.limits.shared import BudgetGrant, BudgetOp, SharedStateUnavailable
from gateway.limits.shared_local import LocalLeaseSource
from gateway.wire import ChatRequest, Usage

BASE = """
[log]
call_records = false
[store]
url = "sqlite://{db}"
[providers.mock]
type = "mock"
[models.priced]
provider = "mock"
upstream_model = "gpt-4o"
[models.small]
provider = "mock"
upstream_model = "mock-small"
[pricing."gpt-4o"]
input = 1.0
output = 1.0
"""
#: a token of ``priced`` costs a millionth of a dollar: 10,000 tokens spend the budget
BUDGET = """
[limits.budgets.b]
usd_per_day = 0.01
action = "{action}"
{extra}
"""


def config(tmp_path: Path, limits: str) -> Config:
    return load_config_text(BASE.format(db=tmp_path / "store.db") + limits)


# -- fake callers (shaped like those of test_limits_admit.py) ----------------------------------------------


class Tenant:
    def __init__(self, id: str, budget: str | None = None) -> None:
        self.id, self.limit_policy, self.budget = id, None, budget


class Key:
    def __init__(self, id: str, tenant: Tenant) -> None:
        self.id, self.tenant = id, tenant
        self.limit_policy, self.budget = tenant.limit_policy, tenant.budget


class Target:
    def __init__(self, upstream_model: str) -> None:
        self.upstream_model = upstream_model
        self.provider = "mock"


class Ctx:
    def __init__(self, key: Key | None = None, model: str = "priced", max_tokens: int | None = None) -> None:
        payload: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": "hello"}]}
        if max_tokens is not None:
            payload["max_tokens"] = max_tokens
        self.fields: Any = msgspec.json.decode(json.dumps(payload), type=ChatRequest)
        self.body = json.dumps(payload).encode()
        self.key = key
        self.endpoint = "chat"
        self.response_headers: list[tuple[str, str]] = []
        self.route_model: str | None = None
        self.limits: Any = None
        self.usage: Any = None
        self.target: Any = None
        self.model: Any = None
        self.status = 0
        self.cost: float | None = None
        self.error: Any = None

    def header(self, name: str) -> str | None:
        return dict(self.response_headers).get(name)

    def answered(self, usage: Usage, upstream_model: str = "gpt-4o") -> Ctx:
        self.usage, self.target, self.status = usage, Target(upstream_model), 200
        return self


async def admit(service: LimitService, ctx: Ctx) -> Ctx:
    out = service.phase.on_request(ctx)  # type: ignore[arg-type]
    if isinstance(out, GatewayError):  # a refusal returned, not raised: the engine answers with it
        raise copy.copy(out)
    if out is not None:
        await out
    return ctx


async def refused(service: LimitService, ctx: Ctx) -> GatewayError:
    with pytest.raises(GatewayError) as info:
        await admit(service, ctx)
    return info.value


class BudgetsDown(LocalLeaseSource):
    """The node's real table, whose budget counters become unreachable when ``down`` is set (the rate
    limits keep working: only the budgets' fallback is under test)."""

    down = False

    async def budget(self, ops: Sequence[BudgetOp]) -> list[BudgetGrant]:
        if self.down:
            raise SharedStateUnavailable("budget counters down for the test")
        return await super().budget(ops)


async def started(cfg: Config, source: BudgetsDown) -> LimitService:
    service = LimitService(cfg, worker=0, source=source)
    await service.start()
    return service


# -- retry-after-ms rounds up -----------------------------------------------------------------------------


@pytest.mark.parametrize(("wait", "seconds", "ms"), [
    (0.0004, "1", "1"),         # under a millisecond: one, not zero
    (0.2501, "1", "251"),
    (1.0004, "2", "1001"),      # a hair over a whole second: both round up
    (2.9996, "3", "3000"),
    (1.2, "2", "1200"),         # whole milliseconds stay as they are
    (30.0, "30", "30000"),
])
def test_retry_after_and_retry_after_ms_round_up(wait: float, seconds: str, ms: str) -> None:
    assert retry_headers(wait) == [("retry-after", seconds), ("retry-after-ms", ms)]


def test_a_rate_limit_refusal_says_the_same_wait_in_its_message_and_its_retry_after_ms(tmp_path: Path) -> None:
    """One request at a time, three a second (the burst multiplier leaves a burst of 1). The message's
    "Try again in 334ms" and ``retry-after-ms`` come from the same wait, both rounded
    up: equal (a wait of a whole number of milliseconds would pass either way; any other kills a
    ``retry-after-ms`` rounded down)."""
    cfg = config(tmp_path, """
[limits]
default_policy = "paced"
[limits.policies.paced]
requests_per_second = 3
burst = 0.1
lease = 1
""")

    async def body() -> None:
        source = LocalLeaseSource(tmp_path / "limits-table")
        service = LimitService(cfg, worker=0, source=source)
        await service.start()
        try:
            await admit(service, Ctx(model="small"))
            err = await refused(service, Ctx(model="small"))
        finally:
            await service.stop()
            await source.close()
        assert isinstance(err, RateLimited) and err.status == 429
        said = re.search(r"Try again in (\d+)ms\.", err.message)
        assert said is not None, err.message
        headers = dict(err.headers)
        assert headers["retry-after-ms"] == said.group(1), (headers, err.message)
        assert headers["retry-after"] == str(max(1, math.ceil(int(said.group(1)) / 1000.0)))

    asyncio.run(body())


# -- budgets while the shared state is unavailable ---------------------------------------------------------


def test_a_budget_that_cannot_cover_a_request_keeps_refusing_while_the_shared_state_is_down(
    tmp_path: Path,
) -> None:
    cfg = config(tmp_path, BUDGET.format(action="block", extra=""))
    key = Key("k1", Tenant("t1", budget="b"))

    async def body() -> None:
        source = BudgetsDown(tmp_path / "limits-table")
        service = await started(cfg, source)
        try:
            ctx = await admit(service, Ctx(key, max_tokens=100))
            service.phase.on_settle(ctx.answered(Usage(9_000, 0, 9_000)))  # 0.009 of 0.01 USD spent
            err = await refused(service, Ctx(key, max_tokens=2_000))  # up to 0.002: does not fit
            assert isinstance(err, QuotaExceeded) and "cannot cover this request" in err.message

            source.down = True
            # smaller than the refused one (not answered from the memory of that refusal): it asks the
            # shared state, meets its loss, and the views decide alone
            err = await refused(service, Ctx(key, max_tokens=1_500))
            assert service.budgets.degraded
            assert isinstance(err, QuotaExceeded) and "cannot cover this request" in err.message
            assert ("x-should-retry", "false") in err.headers
            err = await refused(service, Ctx(key, max_tokens=2_000))
            assert isinstance(err, QuotaExceeded) and ("x-should-retry", "false") in err.headers
            assert json.loads(err.to_body())["error"]["code"] == "insufficient_quota"

            # what the views know is left still serves a request that fits in it
            ctx = await admit(service, Ctx(key, max_tokens=100))
            service.phase.on_settle(ctx.answered(Usage(1_500, 0, 1_500)))  # spent: 0.0105 of 0.01
            err = await refused(service, Ctx(key, max_tokens=1))
            assert isinstance(err, QuotaExceeded) and "is spent" in err.message
            assert service.budgets.degraded
        finally:
            await service.stop()
            await source.close()

    asyncio.run(body())


def test_a_downgrade_budget_that_cannot_cover_a_request_downgrades_while_the_shared_state_is_down(
    tmp_path: Path,
) -> None:
    cfg = config(tmp_path, BUDGET.format(action="downgrade", extra='downgrade_model = "small"'))
    key = Key("k1", Tenant("t1", budget="b"))

    async def body() -> None:
        source = BudgetsDown(tmp_path / "limits-table")
        service = await started(cfg, source)
        try:
            ctx = await admit(service, Ctx(key, max_tokens=100))
            service.phase.on_settle(ctx.answered(Usage(9_000, 0, 9_000)))  # 0.009 of 0.01 USD spent
            source.down = True
            ctx = await admit(service, Ctx(key, max_tokens=2_000))
            assert service.budgets.degraded
            assert ctx.route_model == "small" and ctx.header("x-gateway-downgraded") == "priced -> small"
            ctx = await admit(service, Ctx(key, max_tokens=100))  # fits: served as asked
            assert ctx.route_model is None
        finally:
            await service.stop()
            await source.close()

    asyncio.run(body())
