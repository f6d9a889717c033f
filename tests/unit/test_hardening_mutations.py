"""Guarantees of the limits' client contract that earlier tests let slip (mutations they did not kill).

- ``retry-after-ms`` is the wait rounded *up* to whole milliseconds, as ``retry-after`` is rounded up to
  whole seconds: a client that waits what it is told is never early.
- While the shared state is unavailable the spend views decide alone (``docs/limits-and-budgets.md``):
  a budget they know cannot cover a request refuses it (``block``) or serves the downgrade model, as a
  reservation that did not fit would; a request that fits is still served.

The service is driven with the fake callers of ``test_limits_admit.py`` straight through
``LimitService.phase``; the shared state is a real table file beside a SQLite store, whose budget
counters become unreachable at the test's word.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

# the fake callers and helpers of the admit phase's own tests (this directory is on sys.path in a run)
from test_limits_admit import BUDGET, Ctx, Key, Tenant, admit, config, refused, started

from gateway.config import Config
from gateway.errors import RateLimited
from gateway.limits.admit import LimitService
from gateway.limits.contract import QuotaExceeded, retry_headers
from gateway.limits.shared import BudgetGrant, BudgetOp, SharedStateUnavailable
from gateway.limits.shared_local import LocalLeaseSource
from gateway.wire import Usage


class BudgetsDown(LocalLeaseSource):
    """The node's real table, whose budget counters become unreachable when ``down`` is set (the rate
    limits keep working: only the budgets' fallback is under test)."""

    down = False

    async def budget(self, ops: Sequence[BudgetOp]) -> list[BudgetGrant]:
        if self.down:
            raise SharedStateUnavailable("budget counters down for the test")
        return await super().budget(ops)


@asynccontextmanager
async def service_on(cfg: Config, source: LocalLeaseSource) -> AsyncIterator[LimitService]:
    service = await started(cfg, source=source)
    try:
        yield service
    finally:
        await service.stop()
        await source.close()


@asynccontextmanager
async def spent_nine_tenths(
    cfg: Config, tmp_path: Path, key: Key
) -> AsyncIterator[tuple[LimitService, BudgetsDown]]:
    """A service whose budget (0.01 USD a day) has 0.009 spent by one call, and its source (still up)."""
    source = BudgetsDown(tmp_path / "limits-table")
    async with service_on(cfg, source) as service:
        ctx = await admit(service, Ctx(key, model="priced", max_tokens=100))
        service.phase.on_settle(ctx.answered(Usage(9_000, 0, 9_000), upstream_model="gpt-4o"))
        yield service, source


# -- retry-after-ms rounds up -----------------------------------------------------------------------------


def said_ms(message: str) -> int:
    """The wait a refusal's message tells ("Try again in 120ms." or "in 29.532s."), in milliseconds."""
    said = re.search(r"Try again in ([0-9.]+)(ms|s)\.", message)
    assert said is not None, message
    return int(said.group(1)) if said.group(2) == "ms" else round(float(said.group(1)) * 1000.0)


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
    """One request at a time, two a minute (the burst multiplier leaves a burst of 1): the second request
    is refused for about 30 s. The message's "Try again in 29.532s" and ``retry-after-ms`` come from the
    same wait, both rounded up to whole milliseconds: equal (a wait of a whole number of milliseconds
    would pass either way; any other kills a ``retry-after-ms`` rounded down)."""
    cfg = config(tmp_path, """
[limits]
default_policy = "paced"
[limits.policies.paced]
requests_per_minute = 2
burst = 0.1
lease = 1
""")

    async def body() -> RateLimited:
        async with service_on(cfg, LocalLeaseSource(tmp_path / "limits-table")) as service:
            await admit(service, Ctx(model="small"))
            err = await refused(service, Ctx(model="small"))
        assert isinstance(err, RateLimited)
        return err

    err = asyncio.run(body())
    assert err.status == 429
    said = said_ms(err.message)
    headers = dict(err.headers)
    assert headers["retry-after-ms"] == str(said), (headers, err.message)
    assert headers["retry-after"] == str(max(1, math.ceil(said / 1000.0)))


# -- budgets while the shared state is unavailable ---------------------------------------------------------


def test_a_budget_that_cannot_cover_a_request_keeps_refusing_while_the_shared_state_is_down(
    tmp_path: Path,
) -> None:
    cfg = config(tmp_path, BUDGET.format(action="block", extra=""))
    key = Key("k1", Tenant("t1", budget="b"))

    async def body() -> None:
        async with spent_nine_tenths(cfg, tmp_path, key) as (service, source):
            err = await refused(service, Ctx(key, model="priced", max_tokens=2_000))  # up to 0.002: no
            assert isinstance(err, QuotaExceeded) and "cannot cover this request" in err.message

            source.down = True
            # smaller than the refused one (not answered from the memory of that refusal): it asks the
            # shared state, meets its loss, and the views decide alone
            err = await refused(service, Ctx(key, model="priced", max_tokens=1_500))
            assert service.budgets.degraded
            assert isinstance(err, QuotaExceeded) and "cannot cover this request" in err.message
            assert ("x-should-retry", "false") in err.headers
            err = await refused(service, Ctx(key, model="priced", max_tokens=2_000))
            assert isinstance(err, QuotaExceeded) and ("x-should-retry", "false") in err.headers
            assert json.loads(err.to_body())["error"]["code"] == "insufficient_quota"

            # what the views know is left still serves a request that fits in it
            ctx = await admit(service, Ctx(key, model="priced", max_tokens=100))
            service.phase.on_settle(ctx.answered(Usage(1_500, 0, 1_500), upstream_model="gpt-4o"))
            err = await refused(service, Ctx(key, model="priced", max_tokens=1))  # 0.0105 of 0.01 spent
            assert isinstance(err, QuotaExceeded) and "is spent" in err.message
            assert service.budgets.degraded

    asyncio.run(body())


def test_a_downgrade_budget_that_cannot_cover_a_request_downgrades_while_the_shared_state_is_down(
    tmp_path: Path,
) -> None:
    cfg = config(tmp_path, BUDGET.format(action="downgrade", extra='downgrade_model = "small"'))
    key = Key("k1", Tenant("t1", budget="b"))

    async def body() -> None:
        async with spent_nine_tenths(cfg, tmp_path, key) as (service, source):
            source.down = True
            ctx = await admit(service, Ctx(key, model="priced", max_tokens=2_000))
            assert service.budgets.degraded
            assert ctx.route_model == "small" and ctx.header("x-gateway-downgraded") == "priced -> small"
            ctx = await admit(service, Ctx(key, model="priced", max_tokens=100))  # fits: served as asked
            assert ctx.route_model is None

    asyncio.run(body())
